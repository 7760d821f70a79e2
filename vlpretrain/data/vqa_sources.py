"""Downstream question sources read from the datasets' own files: VQA v2, GQA, SNLI-VE.

Each source is a `file_source.FileSource` built by a gin-configurable function that takes
the directory holding the dataset as it ships:

- `vqa_v2_source(data_dir)` (binding `vqa_v2_source.data_dir`)::

    <data_dir>/v2_OpenEnded_mscoco_train2014_questions.json
    <data_dir>/v2_OpenEnded_mscoco_val2014_questions.json
    <data_dir>/v2_OpenEnded_mscoco_test2015_questions.json          (no annotations)
    <data_dir>/v2_OpenEnded_mscoco_test-dev2015_questions.json      (no annotations)
    <data_dir>/v2_mscoco_train2014_annotations.json
    <data_dir>/v2_mscoco_val2014_annotations.json
    <data_dir>/train2014/COCO_train2014_000000xxxxxx.jpg   (12-digit zero-padded image_id)
    <data_dir>/val2014/COCO_val2014_000000xxxxxx.jpg
    <data_dir>/test2015/COCO_test2015_000000xxxxxx.jpg     (test and test-dev)

  The questions JSON is {"info", "task_type", "data_type", "data_subtype", "license",
  "questions": [{"image_id", "question", "question_id"}]}; the annotations JSON is
  {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
  "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"}]}]}
  (10 answers per question). Splits: train, validation, test, test_dev.
  Yields {"id": str(question_id), "image": JPEG bytes, "question",
  "answer": multiple_choice_answer (the training target), "answers": the annotators'
  answers (tf.string vector, for the VQA accuracy), "answer_type"}. The test splits have
  no annotations: "answer" and "answer_type" are "" and "answers" is empty.

- `gqa_source(data_dir)` (binding `gqa_source.data_dir`)::

    <data_dir>/train_balanced_questions.json
    <data_dir>/val_balanced_questions.json
    <data_dir>/testdev_balanced_questions.json
    <data_dir>/test_balanced_questions.json
    <data_dir>/images/<imageId>.jpg

  Each questions JSON is a dict question_id -> {"imageId", "question", "answer",
  "fullAnswer", "types", ...}. Splits: train, validation, test_dev, test (file names per
  split are the binding `gqa_source.question_files`). Yields {"id": question_id,
  "image", "question", "answer"} ("answer" is "" where the file has none, as in test).

- `snli_ve_source(data_dir)` (binding `snli_ve_source.data_dir`)::

    <data_dir>/snli_ve_train.jsonl
    <data_dir>/snli_ve_dev.jsonl
    <data_dir>/snli_ve_test.jsonl
    <data_dir>/flickr30k_images/<Flickr30K_ID>.jpg

  One JSON object a line with "Flickr30K_ID" (e.g. "3416050480"), "sentence2" (the
  hypothesis), "gold_label" (entailment / neutral / contradiction), "pairID",
  "sentence1", ... Splits: train, validation (dev), test. Yields {"id": pairID, "image",
  "hypothesis": sentence2, "label": gold_label}.

Bad data is counted on `source.skipped` (a `bad_data.SkipCounter`) and skipped: a missing
image file ("missing_image"), an undecodable image ("corrupt_image"), an empty question or
hypothesis ("empty_question" / "empty_hypothesis"), a question without an annotation in an
annotated VQA split ("missing_annotation"), an SNLI-VE gold_label other than the three
labels ("bad_label", e.g. "-") and an unparsable JSONL line ("bad_json").

A missing data directory fails when the source is built; a missing questions/annotations
file fails when its split's dataset is requested (`get_dataset`); both errors name the gin
binding to set. Images are yielded as encoded bytes; decoding is `images.py`'s job.
"""
import json
import os
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence

import gin
import tensorflow as tf

from vlpretrain.data import bad_data
from vlpretrain.data import file_source

SNLI_VE_LABELS = ("entailment", "neutral", "contradiction")

_STRING = tf.TensorSpec([], tf.string)

VQA_V2_SIGNATURE = {"id": _STRING, "image": _STRING, "question": _STRING,
                    "answer": _STRING, "answers": tf.TensorSpec([None], tf.string),
                    "answer_type": _STRING}
GQA_SIGNATURE = {"id": _STRING, "image": _STRING, "question": _STRING, "answer": _STRING}
SNLI_VE_SIGNATURE = {"id": _STRING, "image": _STRING, "hypothesis": _STRING,
                     "label": _STRING}

# split -> (questions file, annotations file or None, image folder, image file prefix).
VQA_V2_FILES = {
    "train": ("v2_OpenEnded_mscoco_train2014_questions.json",
              "v2_mscoco_train2014_annotations.json", "train2014", "COCO_train2014_"),
    "validation": ("v2_OpenEnded_mscoco_val2014_questions.json",
                   "v2_mscoco_val2014_annotations.json", "val2014", "COCO_val2014_"),
    "test": ("v2_OpenEnded_mscoco_test2015_questions.json", None, "test2015",
             "COCO_test2015_"),
    "test_dev": ("v2_OpenEnded_mscoco_test-dev2015_questions.json", None, "test2015",
                 "COCO_test2015_"),
}

GQA_QUESTION_FILES = {
    "train": "train_balanced_questions.json",
    "validation": "val_balanced_questions.json",
    "test_dev": "testdev_balanced_questions.json",
    "test": "test_balanced_questions.json",
}

SNLI_VE_FILES = {
    "train": "snli_ve_train.jsonl",
    "validation": "snli_ve_dev.jsonl",
    "test": "snli_ve_test.jsonl",
}


class CheckedFileSource(file_source.FileSource):
  """A FileSource that checks a split's annotation files when its dataset is requested.

  `check(split)` raises (naming the gin binding) before any tf.data work, so the error
  is not wrapped in a tf.data iterator error. `skipped` counts the skipped examples.
  """

  def __init__(self, name: str, splits: Sequence[str],
               read: Callable[[str], Iterator[Mapping]],
               output_signature: Mapping[str, tf.TensorSpec],
               check: Callable[[str], None], skipped: bad_data.SkipCounter):
    super().__init__(name=name, splits=splits, read=read,
                     output_signature=output_signature)
    self._check = check
    self.skipped = skipped

  def get_dataset(self, split: str = "train", *args, **kwargs) -> tf.data.Dataset:
    if split in self.splits:
      self._check(split)
    return super().get_dataset(split, *args, **kwargs)


def _read_image(path: str, counter: bad_data.SkipCounter,
                bad_images: Dict[str, str], where: str) -> Optional[bytes]:
  """The file's bytes, or None (counted) if it is missing or does not decode.

  `bad_images` remembers failures per path, so an image shared by several questions is
  decoded once when bad; good images are re-read (and re-checked) per question.
  """
  reason = bad_images.get(path)
  data = None
  if reason is None:
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError:
      reason = "missing_image"
    except OSError:
      reason = "corrupt_image"
    else:
      if not bad_data.image_ok(data):
        reason = "corrupt_image"
    if reason is not None:
      bad_images[path] = reason
  if reason is not None:
    counter.skip(reason, f"{path} ({where})")
    return None
  return data


def _load_json(path: str):
  with open(path, "r", encoding="utf-8") as f:
    return json.load(f)


def _check_splits(splits: Sequence[str], known: Mapping, name: str) -> None:
  unknown = [s for s in splits if s not in known]
  if unknown:
    raise ValueError(f"{name}: unknown splits {unknown}; use some of {list(known)}.")


# ----------------------------------------------------------------------------- VQA v2
@gin.configurable
def vqa_v2_source(data_dir: Optional[str] = None,
                  splits: Sequence[str] = ("train", "validation", "test", "test_dev")
                  ) -> CheckedFileSource:
  """VQA v2 from the official questions/annotations JSON and the COCO image folders."""
  binding = "vqa_v2_source.data_dir"
  data_dir = file_source.require_dir(data_dir, binding)
  _check_splits(splits, VQA_V2_FILES, "vqa_v2_source")
  counter = bad_data.SkipCounter("vqa_v2")

  def paths(split):
    questions, annotations, _, _ = VQA_V2_FILES[split]
    return (os.path.join(data_dir, questions),
            os.path.join(data_dir, annotations) if annotations else None)

  def check(split):
    questions, annotations = paths(split)
    file_source.require_file(questions, binding)
    if annotations:
      file_source.require_file(annotations, binding)

  def read(split):
    questions_path, annotations_path = paths(split)
    _, _, image_dir, prefix = VQA_V2_FILES[split]
    questions = _load_json(questions_path)["questions"]
    annotations = None
    if annotations_path:
      annotations = {a["question_id"]: a
                     for a in _load_json(annotations_path)["annotations"]}
    bad_images = {}
    for q in questions:
      where = f"{questions_path} question_id={q['question_id']}"
      if not bad_data.text_ok(q.get("question")):
        counter.skip("empty_question", where)
        continue
      answer, answers, answer_type = "", [], ""
      if annotations is not None:
        annotation = annotations.get(q["question_id"])
        if annotation is None:
          counter.skip("missing_annotation", f"{annotations_path} ({where})")
          continue
        answer = annotation["multiple_choice_answer"]
        answers = [a["answer"] for a in annotation["answers"]]
        answer_type = annotation.get("answer_type", "")
      image_path = os.path.join(data_dir, image_dir,
                                f"{prefix}{int(q['image_id']):012d}.jpg")
      image = _read_image(image_path, counter, bad_images, where)
      if image is None:
        continue
      yield {"id": str(q["question_id"]), "image": image, "question": q["question"],
             "answer": answer, "answers": answers, "answer_type": answer_type}

  return CheckedFileSource("vqa_v2", splits, read, VQA_V2_SIGNATURE, check, counter)


# -------------------------------------------------------------------------------- GQA
@gin.configurable
def gqa_source(data_dir: Optional[str] = None,
               question_files: Optional[Mapping[str, str]] = None) -> CheckedFileSource:
  """GQA from `<split>_balanced_questions.json` and the `images/` folder.

  `question_files` maps split -> questions JSON file name (default
  `GQA_QUESTION_FILES`); its keys are the source's splits.
  """
  binding = "gqa_source.data_dir"
  data_dir = file_source.require_dir(data_dir, binding)
  files = dict(question_files or GQA_QUESTION_FILES)
  counter = bad_data.SkipCounter("gqa")

  def check(split):
    file_source.require_file(os.path.join(data_dir, files[split]), binding)

  def read(split):
    questions_path = os.path.join(data_dir, files[split])
    bad_images = {}
    for question_id, q in _load_json(questions_path).items():
      where = f"{questions_path} question {question_id}"
      if not bad_data.text_ok(q.get("question")):
        counter.skip("empty_question", where)
        continue
      image_path = os.path.join(data_dir, "images", f"{q['imageId']}.jpg")
      image = _read_image(image_path, counter, bad_images, where)
      if image is None:
        continue
      yield {"id": str(question_id), "image": image, "question": q["question"],
             "answer": q.get("answer") or ""}

  return CheckedFileSource("gqa", tuple(files), read, GQA_SIGNATURE, check, counter)


# ---------------------------------------------------------------------------- SNLI-VE
@gin.configurable
def snli_ve_source(data_dir: Optional[str] = None,
                   splits: Sequence[str] = ("train", "validation", "test")
                   ) -> CheckedFileSource:
  """SNLI-VE from `snli_ve_{train,dev,test}.jsonl` and the `flickr30k_images/` folder."""
  binding = "snli_ve_source.data_dir"
  data_dir = file_source.require_dir(data_dir, binding)
  _check_splits(splits, SNLI_VE_FILES, "snli_ve_source")
  counter = bad_data.SkipCounter("snli_ve")

  def check(split):
    file_source.require_file(os.path.join(data_dir, SNLI_VE_FILES[split]), binding)

  def read(split):
    path = os.path.join(data_dir, SNLI_VE_FILES[split])
    bad_images = {}
    with open(path, "r", encoding="utf-8") as f:
      for line_number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        where = f"{path}:{line_number}"
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          counter.skip("bad_json", where)
          continue
        where = f"{where} pairID={record.get('pairID')}"
        label = record.get("gold_label")
        if label not in SNLI_VE_LABELS:
          counter.skip("bad_label", f"{where} gold_label={label!r} (expected one of "
                       f"{', '.join(SNLI_VE_LABELS)})")
          continue
        if not bad_data.text_ok(record.get("sentence2")):
          counter.skip("empty_hypothesis", where)
          continue
        image_path = os.path.join(data_dir, "flickr30k_images",
                                  f"{record['Flickr30K_ID']}.jpg")
        image = _read_image(image_path, counter, bad_images, where)
        if image is None:
          continue
        yield {"id": str(record["pairID"]), "image": image,
               "hypothesis": record["sentence2"], "label": label}

  return CheckedFileSource("snli_ve", splits, read, SNLI_VE_SIGNATURE, check, counter)
