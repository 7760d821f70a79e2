"""RefCOCO-family and MSRVTT-QA sources, on tiny fixtures in the datasets' own layouts."""
import io
import json

import numpy as np
import PIL.Image
import pytest

from vlpretrain import metrics
from vlpretrain.data import grounding_video_sources as gvs


def _jpeg(colour=(200, 30, 30), size=(8, 6)) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.new("RGB", size, colour).save(buffer, format="JPEG")
  return buffer.getvalue()


def _examples(source, split):
  return list(source.get_dataset(split, shuffle=False).as_numpy_iterator())


# ------------------------------------------------------------------------------ RefCOCO
def _sentence(sent_id, sent):
  return {"sent": sent, "raw": sent.upper(), "sent_id": sent_id, "tokens": sent.split()}


def _ref(ref_id, ann_id, image_id, split, sentences):
  return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
          "sentences": sentences, "category_id": 1,
          "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg"}


@pytest.fixture
def refcoco_dir(tmp_path):
  """instances.json + refs.json in <tmp>/refcoco, images in <tmp>/train2014."""
  data_dir = tmp_path / "refcoco"
  image_dir = tmp_path / "train2014"
  data_dir.mkdir()
  image_dir.mkdir()
  name = "COCO_train2014_{:012d}.jpg".format
  (image_dir / name(9)).write_bytes(_jpeg((10, 200, 10), (200, 100)))
  (image_dir / name(25)).write_bytes(_jpeg((10, 10, 200), (50, 80)))
  (image_dir / name(30)).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  instances = {
      "images": [
          {"id": 9, "file_name": name(9), "width": 200, "height": 100},
          {"id": 25, "file_name": name(25), "width": 50, "height": 80},
          {"id": 30, "file_name": name(30), "width": 10, "height": 10},
          {"id": 31, "file_name": name(31), "width": 10, "height": 10},  # No file.
      ],
      "annotations": [
          {"id": 101, "image_id": 9, "bbox": [20.0, 10.0, 100.0, 50.0], "category_id": 1},
          {"id": 102, "image_id": 25, "bbox": [0, 40, 50, 40], "category_id": 1},
          {"id": 103, "image_id": 30, "bbox": [1, 1, 2, 2], "category_id": 1},
          {"id": 104, "image_id": 31, "bbox": [1, 1, 2, 2], "category_id": 1},
          {"id": 105, "image_id": 9, "bbox": [190, 90, 30, 30], "category_id": 1},
      ]}
  refs = [
      _ref(1, 101, 9, "train", [_sentence(11, "man on the left"),
                                _sentence(12, "guy in red")]),
      _ref(2, 102, 25, "testA", [_sentence(21, "bottom half")]),
      _ref(3, 103, 30, "train", [_sentence(31, "corrupt one")]),
      _ref(4, 104, 31, "train", [_sentence(41, "missing file")]),
      _ref(5, 105, 9, "val", [_sentence(51, "  "), _sentence(52, "right corner")]),
      _ref(6, 999, 9, "train", [_sentence(61, "no such annotation")]),
  ]
  (data_dir / "instances.json").write_text(json.dumps(instances))
  (data_dir / "refs.json").write_text(json.dumps(refs))
  return data_dir, image_dir


def test_refcoco_examples_boxes_and_bad_data(refcoco_dir):
  data_dir, image_dir = refcoco_dir
  source = gvs.refcoco_source(data_dir=str(data_dir), image_dir=str(image_dir))
  assert tuple(source.splits) == ("train", "val", "testA", "testB")

  train = _examples(source, "train")
  assert [ex["id"] for ex in train] == [b"1_11", b"1_12"]
  assert [ex["expression"] for ex in train] == [b"man on the left", b"guy in red"]
  image = (image_dir / "COCO_train2014_000000000009.jpg").read_bytes()
  assert all(ex["image"] == image for ex in train)
  # bbox [x=20, y=10, w=100, h=50] in a 200 (w) x 100 (h) image.
  for ex in train:
    assert ex["box"].dtype == np.float32
    np.testing.assert_allclose(ex["box"], [0.1, 0.1, 0.6, 0.6], rtol=1e-6)
  assert source.skipped.counts() == {"corrupt_image": 1, "missing_image": 1,
                                     "missing_annotation": 1}

  (test_a,) = _examples(source, "testA")
  assert test_a["id"] == b"2_21" and test_a["expression"] == b"bottom half"
  np.testing.assert_allclose(test_a["box"], [0.5, 0.0, 1.0, 1.0])
  assert metrics.box_to_text(test_a["box"]) == "99 99 50 0"  # The task's target form.

  (val,) = _examples(source, "val")  # Box past the image edge is clipped.
  assert val["id"] == b"5_52" and val["expression"] == b"right corner"
  np.testing.assert_allclose(val["box"], [0.9, 0.95, 1.0, 1.0], rtol=1e-6)
  assert source.skipped.counts()["empty_expression"] == 1
  assert _examples(source, "testB") == []


def test_refcoco_variants_and_missing_data(refcoco_dir, tmp_path):
  data_dir, image_dir = refcoco_dir
  g = gvs.refcocog_source(data_dir=str(data_dir), image_dir=str(image_dir))
  assert tuple(g.splits) == ("train", "val", "test")
  assert [ex["id"] for ex in _examples(g, "train")] == [b"1_11", b"1_12"]
  plus = gvs.refcoco_plus_source(data_dir=str(data_dir), image_dir=str(image_dir))
  assert [ex["id"] for ex in _examples(plus, "val")] == [b"5_52"]

  with pytest.raises(ValueError, match="refcoco_source.data_dir"):
    gvs.refcoco_source()
  with pytest.raises(FileNotFoundError, match="refcoco_plus_source.data_dir"):
    gvs.refcoco_plus_source(data_dir=str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="refcocog_source.image_dir"):
    gvs.refcocog_source(data_dir=str(data_dir))  # No <data_dir>/train2014.
  (data_dir / "refs.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"refs\.json.*refcoco_source\.data_dir"):
    gvs.refcoco_source(data_dir=str(data_dir), image_dir=str(image_dir))


def test_normalised_box_rejects_empty_boxes():
  assert gvs.normalised_box([1, 1, 0, 5], 10, 10) is None
  assert gvs.normalised_box([1, 1, 5, 5], 0, 10) is None
  np.testing.assert_allclose(gvs.normalised_box([2, 4, 6, 4], 10, 8),
                             [0.5, 0.2, 1.0, 0.8])


# ---------------------------------------------------------------------------- MSRVTT-QA
def _video(frames_dir, video_id, names):
  """Frames whose colour encodes their index, so the sampled ones can be told apart."""
  folder = frames_dir / f"video{video_id}"
  folder.mkdir()
  frames = {}
  for i, name in enumerate(names):
    frames[name] = _jpeg((i * 20, 0, 0))
    (folder / name).write_bytes(frames[name])
  return frames


@pytest.fixture
def msrvtt_dir(tmp_path):
  data_dir = tmp_path / "msrvtt_qa"
  frames_dir = data_dir / "frames"
  frames_dir.mkdir(parents=True)
  names = [f"{i}.jpg" for i in range(1, 11)]  # 1.jpg .. 10.jpg: natural order matters.
  long_video = _video(frames_dir, 0, names)
  short_video = _video(frames_dir, 7, ["frame_a.jpg", "frame_b.jpg", "frame_c.jpg"])
  (frames_dir / "video3").mkdir()  # No frames.
  _video(frames_dir, 4, ["00.jpg", "01.jpg"])
  (frames_dir / "video4" / "01.jpg").write_bytes(b"\xff\xd8 truncated")
  train = [
      {"id": 0, "video_id": 0, "question": "what is a man doing?", "answer": "sing"},
      {"id": 1, "video_id": 7, "question": "who is talking?", "answer": "woman"},
      {"id": 2, "video_id": 3, "question": "what is shown?", "answer": "car"},
      {"id": 3, "video_id": 4, "question": "what is shown?", "answer": "dog"},
      {"id": 4, "video_id": 0, "question": "", "answer": "man"},
      {"id": 5, "video_id": 5, "question": "where?", "answer": "room"},  # No folder.
      {"id": 6, "video_id": 0, "question": "what is he holding?", "answer": "guitar"},
  ]
  (data_dir / "train_qa.json").write_text(json.dumps(train))
  (data_dir / "val_qa.json").write_text(json.dumps(
      [{"id": 158581, "video_id": 7, "question": "what plays?", "answer": "music"}]))
  (data_dir / "test_qa.json").write_text(json.dumps([]))
  return data_dir, long_video, short_video


def test_msrvtt_qa_examples_frames_and_bad_data(msrvtt_dir):
  data_dir, long_video, short_video = msrvtt_dir
  source = gvs.msrvtt_qa_source(data_dir=str(data_dir), num_frames=4)
  assert tuple(source.splits) == ("train", "validation", "test")
  train = _examples(source, "train")
  assert [(ex["id"], ex["question"], ex["answer"]) for ex in train] == [
      (b"0", b"what is a man doing?", b"sing"),
      (b"1", b"who is talking?", b"woman"),
      (b"6", b"what is he holding?", b"guitar")]
  # 10 frames, 4 segments: centres at indices 1, 3, 6, 8 -> files 2, 4, 7, 9.jpg.
  assert list(train[0]["frames"]) == [long_video[f"{i}.jpg"] for i in (2, 4, 7, 9)]
  assert list(train[2]["frames"]) == list(train[0]["frames"])
  # 3 frames, 4 wanted: all of them, then the last repeated.
  assert list(train[1]["frames"]) == [short_video[n] for n in (
      "frame_a.jpg", "frame_b.jpg", "frame_c.jpg", "frame_c.jpg")]
  assert source.skipped.counts() == {"no_frames": 1, "corrupt_frame": 1,
                                     "empty_question": 1, "missing_video": 1}
  (val,) = _examples(source, "validation")
  assert val["id"] == b"158581" and val["frames"].shape == (4,)
  assert _examples(source, "test") == []


def test_msrvtt_qa_default_frames_and_missing_data(msrvtt_dir, tmp_path):
  data_dir, long_video, _ = msrvtt_dir
  source = gvs.msrvtt_qa_source(data_dir=str(data_dir))
  first = _examples(source, "train")[0]
  assert first["frames"].shape == (8,)
  # 10 frames, 8 segments: indices 0, 1, 3, 4, 5, 6, 8, 9.
  assert list(first["frames"]) == [long_video[f"{i + 1}.jpg"]
                                   for i in (0, 1, 3, 4, 5, 6, 8, 9)]
  assert gvs.sample_indices(8, 8) == list(range(8))
  assert gvs.sample_indices(1, 3) == [0, 0, 0]

  with pytest.raises(ValueError, match="msrvtt_qa_source.data_dir"):
    gvs.msrvtt_qa_source()
  with pytest.raises(FileNotFoundError, match="msrvtt_qa_source.data_dir"):
    gvs.msrvtt_qa_source(data_dir=str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="msrvtt_qa_source.frames_dir"):
    gvs.msrvtt_qa_source(data_dir=str(data_dir), frames_dir=str(tmp_path / "nope"))
  (data_dir / "test_qa.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"test_qa\.json"):
    gvs.msrvtt_qa_source(data_dir=str(data_dir))
  only_train = gvs.msrvtt_qa_source(data_dir=str(data_dir), splits=("train",))
  assert tuple(only_train.splits) == ("train",)
