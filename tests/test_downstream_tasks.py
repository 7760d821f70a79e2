"""Downstream Tasks (tasks/downstream.py) on tiny fixtures in each dataset's own layout:
exact inputs/targets, the metric targets from postprocess_fn, and the metrics."""
import json

import numpy as np
import pytest
import seqio

from vlpretrain import metrics
from vlpretrain.data import video
import vlpretrain.tasks  # pylint: disable=unused-import
from vlpretrain.tasks import downstream
from fixture_images import write_jpeg
from real_task_helpers import IMAGE_SIZE, bind_test_settings, examples, texts


def _json(path, obj):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj))


def test_vqa2(tmp_path, clean_gin):
  _json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": [
      {"image_id": 9, "question": "What color is the bus?", "question_id": 9000},
      {"image_id": 9, "question": "How many cats?", "question_id": 9001}]})
  answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i}
             for i, a in enumerate(["red"] * 8 + ["orange", "dark red"])]
  _json(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": [
      {"question_id": 9000, "image_id": 9, "answer_type": "other",
       "multiple_choice_answer": "red", "answers": answers},
      {"question_id": 9001, "image_id": 9, "answer_type": "number",
       "multiple_choice_answer": "2",
       "answers": [{"answer": "2", "answer_id": i} for i in range(10)]}]})
  write_jpeg(str(tmp_path / "val2014" / "COCO_val2014_000000000009.jpg"))
  bind_test_settings(f"vqa_v2_source.data_dir = '{tmp_path}'")
  got = examples("vqa2_vqa", split="validation")
  assert [(i, t) for i, t, _ in got] == [("question: What color is the bus?", "red"),
                                         ("question: How many cats?", "2")]
  task = seqio.get_mixture_or_task("vqa2_vqa")
  targets = [task.postprocess_fn(t, example=ex, is_target=True) for _, t, ex in got]
  assert targets[0] == ["red"] * 8 + ["orange", "dark red"]
  assert task.metric_fns == [metrics.vqa_accuracy]
  assert metrics.vqa_accuracy(targets, ["orange", "two"]) == {
      "vqa_accuracy": pytest.approx((0.3 + 1.0) / 2 * 100)}


def test_gqa_and_snli_ve(tmp_path, clean_gin):
  gqa, snli = tmp_path / "gqa", tmp_path / "snli"
  _json(gqa / "val_balanced_questions.json", {
      "201307251": {"imageId": "n161313", "question": "Is the sky dark?",
                    "answer": "yes", "fullAnswer": "Yes, the sky is dark."}})
  write_jpeg(str(gqa / "images" / "n161313.jpg"))
  (snli).mkdir()
  (snli / "snli_ve_dev.jsonl").write_text("\n".join(json.dumps(r) for r in [
      {"Flickr30K_ID": "3416050480", "sentence1": "x", "sentence2": "A dog runs.",
       "gold_label": "entailment", "pairID": "3416050480.jpg#4r1e"},
      {"Flickr30K_ID": "3416050480", "sentence1": "x", "sentence2": "A cat sleeps.",
       "gold_label": "contradiction", "pairID": "3416050480.jpg#4r1c"}]))
  write_jpeg(str(snli / "flickr30k_images" / "3416050480.jpg"))
  bind_test_settings(f"gqa_source.data_dir = '{gqa}'", f"snli_ve_source.data_dir = '{snli}'")
  assert texts("gqa_vqa", split="validation") == [("question: Is the sky dark?", "yes")]
  assert texts("snlive_entailment", split="validation") == [
      ("hypothesis: A dog runs.", "entailment"),
      ("hypothesis: A cat sleeps.", "contradiction")]
  for name in ("gqa_vqa", "snlive_entailment"):
    assert seqio.get_mixture_or_task(name).metric_fns == [metrics.exact_match]


def _refcoco(root, split):
  name = "COCO_train2014_000000000009.jpg"
  _json(root / "instances.json", {
      "images": [{"id": 9, "file_name": name, "width": 200, "height": 100}],
      "annotations": [{"id": 101, "image_id": 9, "bbox": [20.0, 10.0, 100.0, 50.0],
                       "category_id": 1}]})
  _json(root / "refs.json", [
      {"ref_id": 1, "ann_id": 101, "image_id": 9, "split": split, "category_id": 1,
       "sentences": [{"sent": "man on the left", "sent_id": 11, "raw": "", "tokens": []}],
       "file_name": name}])
  write_jpeg(str(root / "train2014" / name), size=(20, 10))


@pytest.mark.parametrize("name,function,split", [
    ("refcoco_grounding", "refcoco_source", "testA"),
    ("refcocoplus_grounding", "refcoco_plus_source", "val"),
    ("refcocog_grounding", "refcocog_source", "test")])
def test_refcoco_family(tmp_path, clean_gin, name, function, split):
  _refcoco(tmp_path, split)
  bind_test_settings(f"{function}.data_dir = '{tmp_path}'")
  # bbox [x, y, w, h] = [20, 10, 100, 50] in 200 x 100: [ymin, xmin, ymax, xmax] =
  # [0.1, 0.1, 0.6, 0.6] -> "ymax xmax ymin xmin" = 0.6 * 99, 0.1 * 99 rounded.
  got = examples(name, split=split)
  assert [(i, t) for i, t, _ in got] == [("refer: man on the left", "59 59 10 10")]
  if split == "val":
    assert texts(name, split="validation") == [("refer: man on the left", "59 59 10 10")]
  task = seqio.get_mixture_or_task(name)
  ex = got[0][2]
  target = task.postprocess_fn("59 59 10 10", example=ex, is_target=True)
  assert target == pytest.approx([0.1, 0.1, 0.6, 0.6])
  predictions = [task.postprocess_fn(p) for p in ("59 59 10 10", "30 30 10 10", "oops")]
  assert predictions[2] is None
  assert task.metric_fns == [downstream.box_accuracy_at_05]
  assert task.metric_fns[0]([target] * 3, predictions) == {
      "box_accuracy": pytest.approx(100 / 3)}


def test_box_text_matches_metrics_box_to_text():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  boxes = np.sort(rng.uniform(-0.1, 1.1, (200, 2, 2)), axis=1).reshape(200, 4)
  boxes = boxes[:, [0, 2, 1, 3]].astype(np.float32)
  boxes[:4] = [[0, 0, 1, 1], [0.005, 0.5, 0.015, 0.995], [0.5 / 99, 1.5 / 99, 0.25, 0.75],
               [0.1, 0.1, 0.6, 0.6]]
  for box in boxes:
    assert downstream.box_text(tf.constant(box)).numpy().decode() == (
        metrics.box_to_text(box.tolist()))


def test_msrvtt_frames_are_tiled_into_one_image(tmp_path, clean_gin):
  colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0)]
  for i, colour in enumerate(colours * 2):  # 8 frames; 4 are sampled (1, 3, 5, 7).
    write_jpeg(str(tmp_path / "frames" / "video7" / f"frame{i}.jpg"), colour, (16, 16))
  _json(tmp_path / "test_qa.json", [
      {"id": 3, "video_id": 7, "question": "what is a man doing?", "answer": "cook"}])
  for split in ("train", "val"):
    _json(tmp_path / f"{split}_qa.json", [])
  bind_test_settings(f"msrvtt_qa_source.data_dir = '{tmp_path}'",
                     "msrvtt_qa_source.num_frames = 4")
  got = examples("msrvtt_videoqa", split="test")
  assert [(i, t) for i, t, _ in got] == [("question: what is a man doing?", "cook")]
  image = got[0][2]["image"]
  _, size = video.grid(4, IMAGE_SIZE)
  assert size == 8
  sampled = [colours[1], colours[3], colours[1], colours[3]]  # Frames 1, 3, 5, 7.
  for t, colour in enumerate(sampled):
    r, c = divmod(t, 2)
    tile = (image[r * size:(r + 1) * size, c * size:(c + 1) * size] + 1) * 127.5
    np.testing.assert_allclose(tile.mean(axis=(0, 1)), colour, atol=12)
  task = seqio.get_mixture_or_task("msrvtt_videoqa")
  assert task.metric_fns == [metrics.vqa_accuracy]
  assert metrics.vqa_accuracy(["cook"], ["Cook"]) == {"vqa_accuracy": 100.0}
