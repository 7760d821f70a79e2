"""easy-VQA source and Task on the real data shipped in the `easy-vqa` package, plus a
tiny fixture in the package's layout for the bad-data cases."""
import io
import json
import os

import numpy as np
import PIL.Image
import pytest

from vlpretrain.data import easy_vqa

ANSWERS = ["circle", "green", "red", "gray", "yes", "teal", "black", "rectangle",
           "yellow", "triangle", "brown", "blue", "no"]  # answers.txt, in file order.


@pytest.fixture(scope="module")
def source():
  return easy_vqa.easy_vqa_source()


def _first(source, split, n):
  out = []
  for ex in source.read(split):
    out.append(ex)
    if len(out) == n:
      return out
  return out


def test_reads_the_installed_package(source):
  assert source.data_dir == easy_vqa.package_data_dir()
  assert source.data_dir.endswith(os.path.join("easy_vqa", "data"))
  assert source.answers() == ANSWERS


def test_split_sizes_and_no_shared_image(source):
  train, val, test = (source.questions(s) for s in ("train", "validation", "test"))
  assert (len(train), len(val), len(test)) == (34647, 3928, 9673)
  assert len(train) + len(val) == 38575  # The package's train questions, all kept.
  train_images = {q[3] for q in train}
  val_images = {q[3] for q in val}
  assert (len(train_images), len(val_images)) == (3592, 408)
  assert not train_images & val_images
  assert train_images | val_images == set(range(4000))
  assert {q[3] for q in test} == set(range(1000))
  # Every package-train question is in exactly one split.
  assert sorted(int(q[0].split("/")[1]) for q in train + val) == list(range(38575))
  assert source.skipped.total() == 0


def test_validation_fraction_is_a_setting():
  src = easy_vqa.easy_vqa_source(validation_fraction=0.0)
  assert len(src.questions("validation")) == 0
  assert len(src.questions("train")) == 38575
  with pytest.raises(ValueError, match="validation_fraction"):
    easy_vqa.easy_vqa_source(validation_fraction=1.0)


def test_answer_type_keeps_the_questions_of_one_type():
  everything = easy_vqa.easy_vqa_source().questions("validation")
  total = 0
  for kind in easy_vqa.ANSWER_TYPES:
    src = easy_vqa.easy_vqa_source(answer_type=kind)
    kept = src.questions("validation")
    assert kept == [q for q in everything if easy_vqa.answer_type(q[2]) == kind]
    total += len(kept)
    first = _first(src, "validation", 2)
    assert [e["id"] for e in first] == [q[0] for q in kept[:2]]
    assert {e["answer_type"] for e in first} == {kind}
  assert total == len(everything) == 3928
  with pytest.raises(ValueError, match="easy_vqa_source.answer_type.*'colour'"):
    easy_vqa.easy_vqa_source(answer_type="colour")


def test_first_examples(source):
  strip = lambda ex: {k: ex[k] for k in ("id", "question", "answer", "answer_type",
                                         "image_id")}
  assert [strip(e) for e in _first(source, "train", 3)] == [
      {"id": "train/0", "question": "what is the blue shape?", "answer": "rectangle",
       "answer_type": "shape", "image_id": 0},
      {"id": "train/1", "question": "what color is the shape?", "answer": "blue",
       "answer_type": "color", "image_id": 0},
      {"id": "train/2", "question": "does the image contain a rectangle?",
       "answer": "yes", "answer_type": "yes/no", "image_id": 0},
  ]
  assert strip(_first(source, "validation", 1)[0]) == {
      "id": "train/91", "question": "what shape is in the image?",
      "answer": "rectangle", "answer_type": "shape", "image_id": 9}
  assert [strip(e) for e in _first(source, "test", 2)] == [
      {"id": "test/0", "question": "what is the red shape?", "answer": "triangle",
       "answer_type": "shape", "image_id": 0},
      {"id": "test/1", "question": "what is the color of the triangle?",
       "answer": "red", "answer_type": "color", "image_id": 0},
  ]


def test_tf_dataset_matches_reader_and_images_decode(source):
  ds = source.get_dataset("test", shuffle=False).take(12)
  examples = list(ds.as_numpy_iterator())
  assert [e["id"].decode() for e in examples] == [f"test/{i}" for i in range(12)]
  assert sorted(examples[0]) == ["answer", "answer_type", "id", "image", "question"]
  for ex in examples:
    image = np.asarray(PIL.Image.open(io.BytesIO(ex["image"])).convert("RGB"))
    assert image.shape == (64, 64, 3)


def test_answers_and_types(source):
  for split in ("validation", "test"):
    answers = {q[2] for q in source.questions(split)}
    assert answers == set(ANSWERS)
  assert easy_vqa.answer_type("no") == "yes/no"
  assert easy_vqa.answer_type("teal") == "color"
  assert easy_vqa.answer_type("triangle") == "shape"
  assert {easy_vqa.answer_type(a) for a in ANSWERS} == {"yes/no", "color", "shape"}
  assert easy_vqa.answer_type("maybe") is None


def test_hash_split_is_stable():
  held = [i for i in range(20) if easy_vqa.in_validation(i, 0.1)]
  assert held == [9]  # Fixed by SHA-256 of "9": changes would reshuffle the splits.


# ------------------------------------------------------------ fixture: bad data
def _png(path, color=(0, 128, 128)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.new("RGB", (64, 64), color).save(path, format="PNG")


def _fixture(root):
  data = os.path.join(root, "data")
  os.makedirs(os.path.join(data, "test", "images"))
  with open(os.path.join(data, "answers.txt"), "w") as f:
    f.write("\n".join(ANSWERS) + "\n")
  questions = [["what color is the shape?", "teal", 0],
               ["", "yes", 0],                              # empty question
               ["is there a circle?", "maybe", 0],          # unknown answer
               ["what shape is in the image?", "circle", 1],  # corrupt PNG
               ["is there a red shape?", "no", 2],           # missing PNG
               ["is there not a red shape?", "yes", 0]]
  with open(os.path.join(data, "test", "questions.json"), "w") as f:
    json.dump(questions, f)
  _png(os.path.join(data, "test", "images", "0.png"))
  with open(os.path.join(data, "test", "images", "1.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n not really a png")
  return data


def test_bad_data_is_skipped_and_counted(tmp_path):
  src = easy_vqa.easy_vqa_source(data_dir=_fixture(str(tmp_path)))
  examples = list(src.get_dataset("test", shuffle=False).as_numpy_iterator())
  assert [(e["id"], e["question"], e["answer"], e["answer_type"]) for e in examples] == [
      (b"test/0", b"what color is the shape?", b"teal", b"color"),
      (b"test/5", b"is there not a red shape?", b"yes", b"yes/no")]
  assert src.skipped.counts() == {"empty_question": 1, "unknown_answer": 1,
                                  "corrupt_image": 1, "missing_image": 1}


def test_missing_files_name_the_binding(tmp_path):
  with pytest.raises(FileNotFoundError, match="easy_vqa_source.data_dir"):
    easy_vqa.easy_vqa_source(data_dir=str(tmp_path / "nowhere"))
  src = easy_vqa.easy_vqa_source(data_dir=str(tmp_path))  # Exists, but empty.
  with pytest.raises(FileNotFoundError, match="easy_vqa_source.data_dir"):
    src.get_dataset("train")
  with pytest.raises(ValueError, match="unknown split"):
    src.get_dataset("dev")


# ------------------------------------------------------------------------ Task
def test_task_yields_images_and_tokens():
  import seqio  # pylint: disable=g-import-not-at-top
  from vlpretrain import metrics  # pylint: disable=g-import-not-at-top
  from vlpretrain.tasks import easy_vqa as easy_vqa_task  # pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task("easy_vqa")
  assert task.metric_fns == [metrics.exact_match]
  assert set(task.splits) == {"train", "validation", "test"}
  ds = task.get_dataset(sequence_length=None, split="test", shuffle=False,
                        use_cached=False).take(3)
  vocabulary = task.output_features["targets"].vocabulary
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 3
  expected = [("question: what is the red shape?", "triangle"),
              ("question: what is the color of the triangle?", "red"),
              ("question: what is the color of the shape?", "red")]
  for ex, (inputs, targets) in zip(examples, expected):
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.float32
    assert ex["image"].min() >= -1.0 and ex["image"].max() <= 1.0
    assert ex["image"].min() < 0.0 < ex["image"].max()  # A real picture, not blank.
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS.
    assert vocabulary.decode(ex["inputs"].tolist()) == inputs
    assert vocabulary.decode(ex["targets"].tolist()) == targets


def test_tasks_by_answer_type_read_one_type_each():
  # That the three types partition the questions is the source's test
  # (test_answer_type_keeps_the_questions_of_one_type); here: each Task reads its type.
  import seqio  # pylint: disable=g-import-not-at-top
  from vlpretrain import dynamic_mixture  # pylint: disable=g-import-not-at-top
  from vlpretrain.tasks import easy_vqa as easy_vqa_task  # pylint: disable=g-import-not-at-top
  mixture = seqio.get_mixture_or_task("easy_vqa_by_type")
  assert isinstance(mixture, dynamic_mixture.DynamicMixture)
  assert [t.name for t in mixture.tasks] == sorted(easy_vqa_task.BY_TYPE_TASKS.values())
  vocabulary = seqio.get_mixture_or_task("easy_vqa").output_features["targets"].vocabulary
  for kind, name in easy_vqa_task.BY_TYPE_TASKS.items():
    task = seqio.get_mixture_or_task(name)
    assert task.source.answer_type == kind
    ds = task.get_dataset(sequence_length=None, split="validation", shuffle=False,
                          use_cached=False).take(16)
    answers = [vocabulary.decode(ex["targets"].tolist())
               for ex in ds.as_numpy_iterator()]
    assert len(answers) == 16 and {easy_vqa.answer_type(a) for a in answers} == {kind}
