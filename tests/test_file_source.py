"""FileSource: Python-read examples as a sharded tf.data source; clear missing-data errors."""
import pytest
import seqio
import tensorflow as tf

from vlpretrain.data import file_source

SIGNATURE = {"id": tf.TensorSpec([], tf.string), "n": tf.TensorSpec([], tf.int64)}


def _read(split):
  for i in range(10 if split == "train" else 3):
    yield {"id": f"{split}-{i}", "n": i, "ignored": "x"}


def test_shards_partition_the_examples():
  source = file_source.FileSource("toy", ("train", "validation"), _read, SIGNATURE)
  seen = []
  for index in range(3):
    ds = source.get_dataset("train", shard_info=seqio.ShardInfo(index, 3))
    seen.append([int(ex["n"]) for ex in ds.as_numpy_iterator()])
  assert seen == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
  assert [ex["id"] for ex in source.get_dataset("validation").as_numpy_iterator()] == [
      b"validation-0", b"validation-1", b"validation-2"]
  with pytest.raises(ValueError, match="unknown split 'test'"):
    source.get_dataset("test")


def test_missing_data_names_the_gin_binding(tmp_path):
  with pytest.raises(ValueError, match="coco.data_dir"):
    file_source.require_dir(None, "coco.data_dir")
  with pytest.raises(FileNotFoundError, match="coco.data_dir"):
    file_source.require_dir(str(tmp_path / "nope"), "coco.data_dir")
  assert file_source.require_dir(str(tmp_path), "x") == str(tmp_path)
  with pytest.raises(FileNotFoundError, match="captions.json"):
    file_source.require_file(str(tmp_path / "captions.json"), "coco.data_dir")


def _write_records(path, records):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage"])
def test_tfrecord_records_survive_a_damaged_file(tmp_path, caplog, damage):
  from vlpretrain.data import bad_data  # pylint: disable=g-import-not-at-top
  records = [bytes([i]) * (10 + i) for i in range(5)]  # 26..30 bytes each on disk:
  _write_records(tmp_path / "good", records)
  _write_records(tmp_path / "bad", records)
  data = (tmp_path / "bad").read_bytes()
  # records start at bytes 0, 26, 53, 81, 110; the file ends at 140.
  assert len(data) == sum(len(r) + 16 for r in records) == 140
  if damage == "truncate":  # Mid-record 3.
    data, kept = data[:90], 3
  elif damage == "flip_byte":  # Payload of record 2 (bytes 65..76): its CRC fails.
    data, kept = data[:70] + bytes([data[70] ^ 0xFF]) + data[71:], 2
  else:
    data, kept = b"not a tfrecord file at all", 0
  (tmp_path / "bad").write_bytes(data)
  counter = bad_data.SkipCounter("toy")
  paths = tf.data.Dataset.from_tensor_slices([str(tmp_path / "bad"), str(tmp_path / "good")])
  ds = paths.flat_map(lambda p: file_source.tfrecord_records(p, counter))
  got = list(ds.as_numpy_iterator())
  assert got == [(i, r) for i, r in enumerate(records[:kept])] + list(enumerate(records))
  assert counter.counts() == {"corrupt_record_file": 1}
  offset = sum(len(r) + 16 for r in records[:kept])
  assert (f"{tmp_path / 'bad'} (truncated or corrupt after record {kept}, at byte "
          f"{offset} of {len(data)}") in caplog.text
