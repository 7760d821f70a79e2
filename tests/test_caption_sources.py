"""Caption sources read img2dataset TFRecords, COCO captions JSON and Localized Narratives."""
import io
import json
import os

import gin
import numpy as np
import PIL.Image
import pytest
import seqio
import tensorflow as tf

from vlpretrain.data import caption_sources


def _jpeg(value: int) -> bytes:
  out = io.BytesIO()
  PIL.Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(out, format="JPEG")
  return out.getvalue()


def _examples(source, split, **kwargs):
  return [(ex["id"].decode(), ex["caption"].decode(), ex["image"])
          for ex in source.get_dataset(split, shuffle=False, **kwargs).as_numpy_iterator()]


# ---------------------------------------------------------------- img2dataset
def _record(**features) -> bytes:
  feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
             for k, v in features.items()}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path, records):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)


def _img2dataset_dir(tmp_path):
  """Two shards as img2dataset writes them (with extra url/width/height features)."""
  train = tmp_path / "cc3m" / "train"
  train.mkdir(parents=True)
  good = {i: _jpeg(40 * i) for i in range(6)}
  extra = dict(url=b"http://x/y.jpg", width=b"6", height=b"6")
  _write_shard(train / "00000.tfrecord", [
      _record(jpg=good[0], txt=b"a dog on a beach", key=b"000000000", **extra),
      _record(jpg=good[1][:40] + b"garbage", txt=b"a corrupt one", key=b"000000001"),
      _record(jpg=good[2], txt=b"  ", key=b"000000002", **extra),
      _record(jpg=good[3], txt=b"a red bus", key=b"000000003", **extra),
  ])
  _write_shard(train / "00001.tfrecord", [
      _record(txt=b"no image at all", key=b"000010000"),
      _record(jpg=good[4], txt=b"two cats", key=b"000010001", **extra),
      _record(jpg=good[5], txt=b"a keyless record"),
  ])
  val = tmp_path / "cc3m" / "validation"
  val.mkdir()
  _write_shard(val / "00000.tfrecord", [_record(jpg=good[0], txt=b"val", key=b"v0")])
  return str(tmp_path / "cc3m"), good


def test_img2dataset_skips_and_counts_bad_records_and_goes_on(tmp_path, caplog):
  root, good = _img2dataset_dir(tmp_path)
  source = caption_sources.img2dataset_source(
      {"train": f"{root}/train/*.tfrecord", "validation": f"{root}/validation/*.tfrecord"})
  assert source.splits == ("train", "validation")
  assert _examples(source, "train") == [
      ("000000000", "a dog on a beach", good[0]),
      ("000000003", "a red bus", good[3]),
      ("000010001", "two cats", good[4]),
      ("00001.tfrecord:2", "a keyless record", good[5]),
  ]
  assert source.skipped.counts() == {"corrupt_image": 1, "empty_caption": 1,
                                     "missing_jpg": 1}
  assert "00000.tfrecord record 1 key=000000001" in caplog.text
  assert "00001.tfrecord record 0 key=000010000" in caplog.text
  assert _examples(source, "validation") == [("v0", "val", good[0])]
  assert set(source.get_dataset("train").element_spec) == {"id", "image", "caption"}


def test_img2dataset_host_sharding(tmp_path):
  root, _ = _img2dataset_dir(tmp_path)
  source = caption_sources.img2dataset_source({"train": f"{root}/train/*.tfrecord"})
  # As many files as hosts: whole files per host.
  by_files = [[i for i, _, _ in _examples(source, "train",
                                          shard_info=seqio.ShardInfo(h, 2))]
              for h in range(2)]
  assert by_files == [["000000000", "000000003"], ["000010001", "00001.tfrecord:2"]]
  # More hosts than files: every third record (before filtering) per host.
  by_records = [[i for i, _, _ in _examples(source, "train",
                                            shard_info=seqio.ShardInfo(h, 3))]
                for h in range(3)]
  assert by_records == [["000000000", "000000003", "00001.tfrecord:2"],
                        [], ["000010001"]]


def test_img2dataset_missing_files_name_the_binding(tmp_path, clean_gin):
  with pytest.raises(ValueError, match="img2dataset_source.split_patterns"):
    caption_sources.img2dataset_source()
  with pytest.raises(FileNotFoundError, match="img2dataset_source.split_patterns"):
    caption_sources.img2dataset_source({"train": str(tmp_path / "nope" / "*.tfrecord")})
  root, _ = _img2dataset_dir(tmp_path)
  gin.parse_config(f"img2dataset_source.split_patterns = "
                   f"{{'train': '{root}/validation/*.tfrecord'}}")
  assert [i for i, _, _ in _examples(caption_sources.img2dataset_source(), "train")] == [
      "v0"]


# ---------------------------------------------------------------- COCO
def _coco_dir(tmp_path):
  root = tmp_path / "coco"
  (root / "annotations").mkdir(parents=True)
  (root / "train2017").mkdir()
  (root / "val2017").mkdir()
  images = {"000000000009.jpg": _jpeg(10), "000000000025.jpg": _jpeg(90)}
  for name, data in images.items():
    (root / "train2017" / name).write_bytes(data)
  (root / "train2017" / "000000000030.jpg").write_bytes(b"not a jpeg")
  (root / "val2017" / "000000000139.jpg").write_bytes(_jpeg(120))
  train = {
      "info": {"year": 2017}, "licenses": [],
      "images": [
          {"id": 9, "file_name": "000000000009.jpg", "width": 6, "height": 6},
          {"id": 25, "file_name": "000000000025.jpg", "width": 6, "height": 6},
          {"id": 30, "file_name": "000000000030.jpg", "width": 6, "height": 6},
          {"id": 42, "file_name": "000000000042.jpg", "width": 6, "height": 6},
      ],
      "annotations": [
          {"id": 661611, "image_id": 9, "caption": "Closeup of bins of food. "},
          {"id": 5, "image_id": 25, "caption": "A giraffe eating leaves."},
          {"id": 6, "image_id": 30, "caption": "Corrupt image."},
          {"id": 7, "image_id": 25, "caption": " \n"},
          {"id": 8, "image_id": 42, "caption": "Image file missing."},
          {"id": 661612, "image_id": 9, "caption": "A meal in containers."},
      ],
  }
  (root / "annotations" / "captions_train2017.json").write_text(json.dumps(train))
  val = {"images": [{"id": 139, "file_name": "000000000139.jpg", "width": 6,
                     "height": 6}],
         "annotations": [{"id": 1, "image_id": 139, "caption": "A living room."}]}
  (root / "annotations" / "captions_val2017.json").write_text(json.dumps(val))
  return str(root), images


def test_coco_captions(tmp_path):
  root, images = _coco_dir(tmp_path)
  source = caption_sources.coco_captions_source(root)
  assert _examples(source, "train") == [
      ("661611", "Closeup of bins of food.", images["000000000009.jpg"]),
      ("5", "A giraffe eating leaves.", images["000000000025.jpg"]),
      ("661612", "A meal in containers.", images["000000000009.jpg"]),
  ]
  assert source.skipped.counts() == {"corrupt_image": 1, "empty_caption": 1,
                                     "missing_image": 1}
  assert [(i, c) for i, c, _ in _examples(source, "validation")] == [
      ("1", "A living room.")]


def test_coco_missing_data_names_the_binding(tmp_path):
  with pytest.raises(ValueError, match="coco_captions_source.data_dir"):
    caption_sources.coco_captions_source()
  with pytest.raises(FileNotFoundError, match="coco_captions_source.data_dir"):
    caption_sources.coco_captions_source(str(tmp_path / "nope"))
  root, _ = _coco_dir(tmp_path)
  os.remove(os.path.join(root, "annotations", "captions_val2017.json"))
  with pytest.raises(FileNotFoundError, match="captions_val2017.json"):
    caption_sources.coco_captions_source(root)
  assert caption_sources.coco_captions_source(root, splits=("train",)).splits == (
      "train",)


# ---------------------------------------------------------------- Localized Narratives
def _narrative(image_id, annotator_id, caption):
  return json.dumps({"dataset_id": "open_images", "image_id": image_id,
                     "annotator_id": annotator_id, "caption": caption,
                     "timed_caption": [{"utterance": "In", "start_time": 0.0,
                                        "end_time": 0.4}],
                     "traces": [[{"x": 0.5, "y": 0.5, "t": 0.1}]],
                     "voice_recording": f"open_images_train/{image_id}_{annotator_id}.ogg"})


def _ln_dirs(tmp_path):
  ann, img = tmp_path / "ln", tmp_path / "open_images"
  ann.mkdir()
  (img / "train").mkdir(parents=True)
  jpegs = {"0000b9fc6ea18a7e": _jpeg(30), "00010bf498b64bab": _jpeg(200)}
  for image_id, data in jpegs.items():
    (img / "train" / f"{image_id}.jpg").write_bytes(data)
  (ann / "open_images_train_v6_localized_narratives-00000-of-00010.jsonl").write_text(
      "\n".join([_narrative("0000b9fc6ea18a7e", 93, "In this picture we can see a car."),
                 _narrative("ffff000000000000", 12, "The image file is missing."),
                 _narrative("00010bf498b64bab", 7, "")]) + "\n")
  (ann / "open_images_train_v6_localized_narratives-00001-of-00010.jsonl").write_text(
      _narrative("00010bf498b64bab", 24, "In this image there is a tree.") + "\n")
  (ann / "open_images_validation_localized_narratives.jsonl").write_text(
      _narrative("0000b9fc6ea18a7e", 5, "A validation narrative.") + "\n")
  return str(ann), str(img), jpegs


def test_localized_narratives(tmp_path):
  ann, img, jpegs = _ln_dirs(tmp_path)
  source = caption_sources.localized_narratives_source(ann, img)
  assert _examples(source, "train") == [
      ("0000b9fc6ea18a7e_93", "In this picture we can see a car.",
       jpegs["0000b9fc6ea18a7e"]),
      ("00010bf498b64bab_24", "In this image there is a tree.",
       jpegs["00010bf498b64bab"]),
  ]
  assert source.skipped.counts() == {"missing_image": 1, "empty_caption": 1}
  # No validation/ folder under images_dir: images are looked up in images_dir itself.
  assert _examples(source, "validation") == []
  assert source.skipped.counts()["missing_image"] == 2


def test_localized_narratives_missing_data_names_the_binding(tmp_path):
  ann, img, _ = _ln_dirs(tmp_path)
  with pytest.raises(ValueError, match="localized_narratives_source.annotations_dir"):
    caption_sources.localized_narratives_source(None, img)
  with pytest.raises(FileNotFoundError, match="localized_narratives_source.images_dir"):
    caption_sources.localized_narratives_source(ann, str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="localized_narratives_source.annotations_dir"):
    caption_sources.localized_narratives_source(ann, img, splits=("test",))


def test_img2dataset_truncated_shard_is_counted_and_skipped(tmp_path, caplog):
  """A shard cut mid-record (DataLossError in TFRecordDataset) next to a good one."""
  root, good = _img2dataset_dir(tmp_path)
  shard = os.path.join(root, "train", "00000.tfrecord")
  with open(shard, "rb") as f:
    data = f.read()
  record_3 = len(_record(jpg=good[3], txt=b"a red bus", key=b"000000003",
                         url=b"http://x/y.jpg", width=b"6", height=b"6")) + 16
  with open(shard, "wb") as f:  # Cut the last record (000000003) in its middle.
    f.write(data[:len(data) - record_3 // 2])
  source = caption_sources.img2dataset_source({"train": f"{root}/train/*.tfrecord"})
  # Shard 0 up to the cut (record 0 good, 1 corrupt JPEG, 2 empty caption), then the
  # whole of shard 1: nothing raised.
  assert [i for i, _, _ in _examples(source, "train")] == [
      "000000000", "000010001", "00001.tfrecord:2"]
  assert source.skipped.counts() == {"corrupt_image": 1, "empty_caption": 1,
                                     "missing_jpg": 1, "corrupt_record_file": 1}
  cut = len(data) - record_3
  assert (f"{shard} (truncated or corrupt after record 3, at byte {cut} of "
          f"{cut + record_3 - record_3 // 2}") in caplog.text
