"""easy-VQA: a small, real VQA dataset embedded in the PyPI package `easy-vqa` (1.0).

The package ships its data inside the wheel (nothing is downloaded); this module reads
the files by path, never through the package's functions. Layout (`data_dir` defaults to
the installed package's `easy_vqa/data` folder)::

    <data_dir>/answers.txt                 13 answers, one a line
    <data_dir>/train/questions.json        38,575 questions on 4,000 images
    <data_dir>/train/images/<image_id>.png 64x64 RGB PNG, e.g. 0.png ... 3999.png
    <data_dir>/test/questions.json         9,673 questions on 1,000 images
    <data_dir>/test/images/<image_id>.png

Each questions.json is a JSON list of [question, answer, image_id] triples, e.g.
["what is the blue shape?", "rectangle", 0]. The answers are yes/no, eight colours (red,
green, blue, black, gray, teal, brown, yellow) and three shapes (circle, rectangle,
triangle).

Splits of `easy_vqa_source()` (binding `easy_vqa_source.data_dir`,
`easy_vqa_source.validation_fraction`; `easy_vqa_source(answer_type="shape")` keeps the
questions of one answer type, read without the others' images):

- `train`: the package's train questions whose image is not held out;
- `validation`: the package's train questions whose image is held out: a fixed fraction
  (default 10%) of the train images, chosen by a stable hash (SHA-256) of the image id,
  so all questions of one image fall in the same split and no image is in both;
- `test`: the package's test split. For final evaluation only: never tune on it.

Yields {"id": "<package split>/<index in questions.json>" (e.g. "train/0"),
"image": PNG bytes, "question", "answer", "answer_type"} where answer_type is "yes/no",
"color" or "shape", derived from the answer. The Python reader (`source.read(split)`)
also yields "image_id" (int); `source.questions(split)` lists the questions of a split
without reading images (for counting).

Bad data is counted on `source.skipped` and skipped: a missing image ("missing_image"),
an undecodable one ("corrupt_image"), an empty question ("empty_question"), an answer not
in answers.txt or of no known type ("unknown_answer") and a malformed entry
("bad_entry"). A missing data directory fails when the source is built; a missing
answers.txt or questions.json fails when a split's dataset is requested; both errors name
`easy_vqa_source.data_dir`.
"""
import hashlib
import importlib.util
import json
import os
from typing import Dict, Iterator, List, Optional, Tuple

import gin
import tensorflow as tf

from vlpretrain.data import bad_data
from vlpretrain.data import file_source

BINDING = "easy_vqa_source.data_dir"
SPLITS = ("train", "validation", "test")
YES_NO = ("yes", "no")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
ANSWER_TYPES = ("yes/no", "color", "shape")
_STRING = tf.TensorSpec([], tf.string)
SIGNATURE = {"id": _STRING, "image": _STRING, "question": _STRING, "answer": _STRING,
             "answer_type": _STRING}


def answer_type(answer: str) -> Optional[str]:
  """"yes/no", "color" or "shape" for an easy-VQA answer; None if it is none of them."""
  if answer in YES_NO:
    return "yes/no"
  if answer in COLORS:
    return "color"
  if answer in SHAPES:
    return "shape"
  return None


def package_data_dir() -> Optional[str]:
  """The `data` folder of the installed `easy_vqa` package, or None if not installed."""
  spec = importlib.util.find_spec("easy_vqa")
  if spec is None or not spec.submodule_search_locations:
    return None
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def in_validation(image_id, fraction: float) -> bool:
  """Whether a package-train image is held out for validation (stable across runs)."""
  digest = hashlib.sha256(str(image_id).encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


class EasyVqaSource(file_source.FileSource):
  """easy-VQA questions with their PNG images; see the module docstring."""

  def __init__(self, data_dir: str, validation_fraction: float,
               answer_type: Optional[str] = None):
    if not 0.0 <= validation_fraction < 1.0:
      raise ValueError("easy_vqa_source.validation_fraction must be in [0, 1), got "
                       f"{validation_fraction!r}.")
    if answer_type is not None and answer_type not in ANSWER_TYPES:
      raise ValueError(f"easy_vqa_source.answer_type must be None or one of "
                       f"{list(ANSWER_TYPES)}, got {answer_type!r}.")
    self.data_dir = data_dir
    self.validation_fraction = validation_fraction
    self.answer_type = answer_type
    self.skipped = bad_data.SkipCounter("easy_vqa")
    name = "easy_vqa" if answer_type is None else f"easy_vqa[{answer_type}]"
    super().__init__(name=name, splits=SPLITS, read=self.read,
                     output_signature=SIGNATURE)

  def _package_split(self, split: str) -> str:
    if split not in SPLITS:
      raise ValueError(f"easy_vqa: unknown split {split!r}; use one of {list(SPLITS)}.")
    return "test" if split == "test" else "train"

  def _questions_path(self, split: str) -> str:
    return os.path.join(self.data_dir, self._package_split(split), "questions.json")

  def check(self, split: str) -> None:
    file_source.require_file(os.path.join(self.data_dir, "answers.txt"), BINDING)
    file_source.require_file(self._questions_path(split), BINDING)

  def answers(self) -> List[str]:
    """The answers of answers.txt, in file order."""
    path = file_source.require_file(os.path.join(self.data_dir, "answers.txt"), BINDING)
    with open(path, "r", encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]

  def questions(self, split: str) -> List[Tuple[str, str, str, int]]:
    """(id, question, answer, image_id) of the split's valid questions, in file order.

    Reads no image; entries with an empty question, an unknown answer or a bad shape
    are counted on `skipped` and left out; with `answer_type` set, only questions with
    an answer of that type are listed.
    """
    package_split = self._package_split(split)
    path = file_source.require_file(self._questions_path(split), BINDING)
    known = set(self.answers())
    with open(path, "r", encoding="utf-8") as f:
      entries = json.load(f)
    out = []
    for i, entry in enumerate(entries):
      qid = f"{package_split}/{i}"
      where = f"{path} entry {i}"
      if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
        self.skipped.skip("bad_entry", where)
        continue
      question, answer, image_id = entry
      if not bad_data.text_ok(question):
        self.skipped.skip("empty_question", where)
        continue
      if answer not in known or answer_type(answer) is None:
        self.skipped.skip("unknown_answer", where)
        continue
      if package_split == "train" and (
          in_validation(image_id, self.validation_fraction) != (split == "validation")):
        continue
      if self.answer_type is not None and answer_type(answer) != self.answer_type:
        continue
      out.append((qid, question, answer, image_id))
    return out

  def read(self, split: str) -> Iterator[Dict]:
    """The split's examples (with "image_id"), images read as PNG bytes."""
    image_dir = os.path.join(self.data_dir, self._package_split(split), "images")
    images: Dict[str, Optional[bytes]] = {}  # Each image is read and checked once.
    for qid, question, answer, image_id in self.questions(split):
      path = os.path.join(image_dir, f"{image_id}.png")
      if path not in images:
        data = None
        try:
          with open(path, "rb") as f:
            data = f.read()
          reason = None if bad_data.image_ok(data) else "corrupt_image"
        except FileNotFoundError:
          reason = "missing_image"
        except OSError:
          reason = "corrupt_image"
        images[path] = data if reason is None else reason
      data = images[path]
      if isinstance(data, str):
        self.skipped.skip(data, f"{path} ({qid})")
        continue
      yield {"id": qid, "image": data, "question": question, "answer": answer,
             "answer_type": answer_type(answer), "image_id": image_id}

  def get_dataset(self, split: str = "train", *args, **kwargs) -> tf.data.Dataset:
    if split in self.splits:
      self.check(split)  # Fails here, naming the binding, not inside tf.data.
    return super().get_dataset(split, *args, **kwargs)


@gin.configurable
def easy_vqa_source(data_dir: Optional[str] = None,
                    validation_fraction: float = 0.1,
                    answer_type: Optional[str] = None) -> EasyVqaSource:
  """easy-VQA from `data_dir` (default: the installed `easy_vqa` package's data); with
  `answer_type` ("yes/no", "color" or "shape"), only the questions of that type."""
  if data_dir is None:
    data_dir = package_data_dir()
    if data_dir is None:
      raise ValueError(f"The easy-vqa package is not installed: `pip install "
                       f"easy-vqa==1.0`, or set the gin binding {BINDING}.")
  return EasyVqaSource(file_source.require_dir(data_dir, BINDING), validation_fraction,
                       answer_type)
