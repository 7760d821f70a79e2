"""VQA v2, GQA and SNLI-VE sources on tiny fixtures in each dataset's real file layout."""
import json
import os

import pytest

from vlpretrain.data import vqa_sources
from fixture_images import write_corrupt_jpeg as _corrupt_jpeg
from fixture_images import write_jpeg as _jpeg


def _write_json(path, obj):
  with open(path, "w") as f:
    json.dump(obj, f)


def _examples(source, split):
  return list(source.get_dataset(split, shuffle=False).as_numpy_iterator())


def _vqa_answers(*answers):
  return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
          for i, a in enumerate(answers)]


# ----------------------------------------------------------------------------- VQA v2
@pytest.fixture
def vqa_dir(tmp_path):
  d = tmp_path / "vqa"
  d.mkdir()
  header = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
            "license": {}}
  _write_json(d / "v2_OpenEnded_mscoco_train2014_questions.json", dict(
      header, data_subtype="train2014", questions=[
          {"image_id": 9, "question": "What color is the bus?", "question_id": 9000},
          {"image_id": 9, "question": "Is it raining?", "question_id": 9001},
          {"image_id": 25, "question": "How many cats?", "question_id": 25000},
          {"image_id": 30, "question": "   ", "question_id": 30000},       # empty
          {"image_id": 77, "question": "Where is it?", "question_id": 77000},  # no image
          {"image_id": 88, "question": "What is it?", "question_id": 88000},   # corrupt
      ]))
  yes10 = ["yes"] * 9 + ["no"]
  _write_json(d / "v2_mscoco_train2014_annotations.json", {
      "info": {}, "license": {}, "data_subtype": "train2014", "annotations": [
          {"question_id": 9000, "image_id": 9, "question_type": "what color is the",
           "answer_type": "other", "multiple_choice_answer": "red",
           "answers": _vqa_answers(*(["red"] * 8 + ["orange", "dark red"]))},
          {"question_id": 9001, "image_id": 9, "question_type": "is it",
           "answer_type": "yes/no", "multiple_choice_answer": "yes",
           "answers": _vqa_answers(*yes10)},
          {"question_id": 25000, "image_id": 25, "question_type": "how many",
           "answer_type": "number", "multiple_choice_answer": "2",
           "answers": _vqa_answers(*(["2"] * 7 + ["3"] * 3))},
          {"question_id": 30000, "image_id": 30, "question_type": "none of the above",
           "answer_type": "other", "multiple_choice_answer": "x",
           "answers": _vqa_answers(*(["x"] * 10))},
          {"question_id": 77000, "image_id": 77, "question_type": "where is the",
           "answer_type": "other", "multiple_choice_answer": "park",
           "answers": _vqa_answers(*(["park"] * 10))},
          {"question_id": 88000, "image_id": 88, "question_type": "what is the",
           "answer_type": "other", "multiple_choice_answer": "dog",
           "answers": _vqa_answers(*(["dog"] * 10))},
      ]})
  _jpeg(str(d / "train2014" / "COCO_train2014_000000000009.jpg"))
  _jpeg(str(d / "train2014" / "COCO_train2014_000000000025.jpg"), (0, 0, 250))
  _jpeg(str(d / "train2014" / "COCO_train2014_000000000030.jpg"))
  _corrupt_jpeg(str(d / "train2014" / "COCO_train2014_000000000088.jpg"))
  _write_json(d / "v2_OpenEnded_mscoco_test2015_questions.json", dict(
      header, data_subtype="test2015", questions=[
          {"image_id": 1, "question": "Is this a cat?", "question_id": 1000}]))
  _jpeg(str(d / "test2015" / "COCO_test2015_000000000001.jpg"))
  return d


def test_vqa_v2_train_examples_and_bad_data(vqa_dir):
  source = vqa_sources.vqa_v2_source(str(vqa_dir))
  examples = _examples(source, "train")
  assert [e["id"] for e in examples] == [b"9000", b"9001", b"25000"]
  assert [e["question"] for e in examples] == [
      b"What color is the bus?", b"Is it raining?", b"How many cats?"]
  assert [e["answer"] for e in examples] == [b"red", b"yes", b"2"]
  assert [e["answer_type"] for e in examples] == [b"other", b"yes/no", b"number"]
  assert examples[0]["answers"].tolist() == [b"red"] * 8 + [b"orange", b"dark red"]
  assert examples[2]["answers"].tolist() == [b"2"] * 7 + [b"3"] * 3
  image_25 = (vqa_dir / "train2014" / "COCO_train2014_000000000025.jpg").read_bytes()
  assert examples[2]["image"] == image_25
  assert source.skipped.counts() == {"empty_question": 1, "missing_image": 1,
                                     "corrupt_image": 1}


def test_vqa_v2_test_split_has_no_answers(vqa_dir):
  source = vqa_sources.vqa_v2_source(str(vqa_dir))
  [example] = _examples(source, "test")
  assert example["id"] == b"1000"
  assert example["question"] == b"Is this a cat?"
  assert example["answer"] == b"" and example["answer_type"] == b""
  assert example["answers"].tolist() == []
  assert source.skipped.total() == 0


def test_vqa_v2_missing_files_name_the_binding(vqa_dir, tmp_path):
  with pytest.raises(ValueError, match="vqa_v2_source.data_dir"):
    vqa_sources.vqa_v2_source(None)
  with pytest.raises(FileNotFoundError, match="vqa_v2_source.data_dir"):
    vqa_sources.vqa_v2_source(str(tmp_path / "nowhere"))
  source = vqa_sources.vqa_v2_source(str(vqa_dir))
  with pytest.raises(FileNotFoundError,
                     match="v2_OpenEnded_mscoco_val2014_questions.json"):
    source.get_dataset("validation")
  os.remove(vqa_dir / "v2_mscoco_train2014_annotations.json")
  with pytest.raises(FileNotFoundError, match="v2_mscoco_train2014_annotations.json"):
    source.get_dataset("train")


# -------------------------------------------------------------------------------- GQA
def test_gqa_examples_and_bad_data(tmp_path):
  d = tmp_path / "gqa"
  (d / "images").mkdir(parents=True)
  questions = {
      "201307251": {"imageId": "2407890", "question": "Is the sky blue?",
                    "answer": "yes", "fullAnswer": "Yes, the sky is blue.",
                    "isBalanced": True, "types": {"structural": "verify"}},
      "20515808": {"imageId": "n161313", "question": "What is on the table?",
                   "answer": "laptop", "fullAnswer": "The laptop is on the table.",
                   "types": {"structural": "query"}},
      "05451384": {"imageId": "2354786", "question": "Which color is the car?",
                   "answer": "white", "fullAnswer": "The car is white.", "types": {}},
      "111": {"imageId": "2407890", "question": "", "answer": "no",
              "fullAnswer": "No.", "types": {}},
  }
  _write_json(d / "testdev_balanced_questions.json", questions)
  image = _jpeg(str(d / "images" / "2407890.jpg"))
  _jpeg(str(d / "images" / "n161313.jpg"), (1, 2, 3))
  # images/2354786.jpg is missing.
  source = vqa_sources.gqa_source(str(d))
  examples = _examples(source, "test_dev")
  assert [(e["id"], e["question"], e["answer"]) for e in examples] == [
      (b"201307251", b"Is the sky blue?", b"yes"),
      (b"20515808", b"What is on the table?", b"laptop")]
  assert examples[0]["image"] == image
  assert source.skipped.counts() == {"missing_image": 1, "empty_question": 1}
  with pytest.raises(FileNotFoundError, match="train_balanced_questions.json"):
    source.get_dataset("train")
  with pytest.raises(ValueError, match="gqa_source.data_dir"):
    vqa_sources.gqa_source()
  with pytest.raises(FileNotFoundError, match="gqa_source.data_dir"):
    vqa_sources.gqa_source(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------- SNLI-VE
def test_snli_ve_examples_and_bad_data(tmp_path, caplog):
  d = tmp_path / "snli_ve"
  (d / "flickr30k_images").mkdir(parents=True)
  premise = "Two women are embracing while holding to go packages."

  def line(pair_id, flickr_id, hypothesis, label):
    return json.dumps({"Flickr30K_ID": flickr_id, "pairID": pair_id,
                       "sentence1": premise, "sentence2": hypothesis,
                       "gold_label": label, "annotator_labels": [label],
                       "captionID": f"{flickr_id}.jpg#2"})

  lines = [
      line("4705552913.jpg#2r1n", "4705552913", "The sisters are hugging.", "neutral"),
      line("4705552913.jpg#2r1e", "4705552913", "Two women are holding packages.",
           "entailment"),
      line("3416050480.jpg#4r1c", "3416050480", "The men are fighting.",
           "contradiction"),
      line("3416050480.jpg#4r1x", "3416050480", "Nobody agreed.", "-"),  # bad label
      line("1111.jpg#0r1e", "1111", "A dog runs.", "entailment"),  # corrupt image
      line("3416050480.jpg#4r2e", "3416050480", "", "entailment"),  # empty
      "{not json",
  ]
  (d / "snli_ve_dev.jsonl").write_text("\n".join(lines) + "\n")
  _jpeg(str(d / "flickr30k_images" / "4705552913.jpg"))
  _jpeg(str(d / "flickr30k_images" / "3416050480.jpg"), (9, 9, 9))
  _corrupt_jpeg(str(d / "flickr30k_images" / "1111.jpg"))
  source = vqa_sources.snli_ve_source(str(d))
  with caplog.at_level("WARNING"):
    examples = _examples(source, "validation")
  # The warning shows the label it rejected.
  assert "pairID=3416050480.jpg#4r1x gold_label='-' (expected one of entailment, " \
      "neutral, contradiction)" in caplog.text
  assert [(e["id"], e["hypothesis"], e["label"]) for e in examples] == [
      (b"4705552913.jpg#2r1n", b"The sisters are hugging.", b"neutral"),
      (b"4705552913.jpg#2r1e", b"Two women are holding packages.", b"entailment"),
      (b"3416050480.jpg#4r1c", b"The men are fighting.", b"contradiction")]
  assert examples[2]["image"] == (d / "flickr30k_images" / "3416050480.jpg").read_bytes()
  assert source.skipped.counts() == {"bad_label": 1, "corrupt_image": 1,
                                     "empty_hypothesis": 1, "bad_json": 1}
  with pytest.raises(FileNotFoundError, match="snli_ve_train.jsonl"):
    source.get_dataset("train")
  with pytest.raises(ValueError, match="snli_ve_source.data_dir"):
    vqa_sources.snli_ve_source()
  with pytest.raises(FileNotFoundError, match="snli_ve_source.data_dir"):
    vqa_sources.snli_ve_source(str(tmp_path / "nowhere"))
