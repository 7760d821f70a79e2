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
