"""Image-level label sources for the object-aware tasks, read from the datasets' own files.

Every source yields raw examples

    {"id": tf.string, "image": tf.string (the encoded file's bytes),
     "labels": tf.string vector of label display names}

`labels` is deduplicated and sorted (Python string order), so it does not depend on the
order of the annotation file. Each source also has `label_set()`: the sorted list of all
display names in the dataset (the object-aware tasks draw negatives from it, minus the
image's own labels), and `skipped`, the `bad_data.SkipCounter` of what was left out.

Supported layouts (files named as the datasets ship them):

* Visual Genome (`visual_genome_objects_source`, binding
  `visual_genome_objects_source.data_dir`)::

      <data_dir>/objects.json       [{"image_id": 1, "objects": [{"object_id": 1058498,
                                      "x": 421, "y": 91, "w": 79, "h": 339,
                                      "names": ["clock"], "synsets": ["clock.n.01"]}, ...]},
                                     ...]
      <data_dir>/VG_100K/<image_id>.jpg   and/or   <data_dir>/VG_100K_2/<image_id>.jpg

  Older releases have "name" (a string) instead of "names" and may key the image as "id";
  both are accepted. Label = the object's first name, lower-cased and stripped.

* Open Images image-level labels (`open_images_labels_source`, bindings
  `open_images_labels_source.data_dir` and `.images_dir`)::

      <data_dir>/oidv6-train-annotations-human-imagelabels.csv
          ImageID,Source,LabelName,Confidence     (rows with Confidence 1 are kept)
      <data_dir>/validation-annotations-human-imagelabels.csv   (split "validation")
      <data_dir>/test-annotations-human-imagelabels.csv         (split "test")
      <data_dir>/oidv7-class-descriptions.csv   LabelName,DisplayName
          (or oidv6-class-descriptions.csv, same header, or the older header-less
           class-descriptions.csv: /m/011k07,Tortoise)
      <images_dir>/<split>/<ImageID>.jpg   (images_dir defaults to data_dir)

  Label = the DisplayName as shipped (not lower-cased). A LabelName missing from the
  descriptions is counted (reason "unknown_label") and only that label is dropped. The
  label CSVs ship sorted by ImageID and are streamed as such (an unsorted file is an
  error, not silently duplicated images).

* ImageNet-21k as one folder per synset (`imagenet21k_source`, bindings
  `imagenet21k_source.data_dir` and `.words_file`)::

      <data_dir>/n01440764/n01440764_10026.JPEG
      <data_dir>/words.txt     n01440764<TAB>tench, Tinca tinca

  Label = the first comma-separated name of the folder's synset ("tench"). Order:
  sorted wnids, then sorted files; id = the file name without extension. Two synsets can
  share a first name (e.g. "crane"); they then share the label.

Bad data (never a crash): a missing image file ("missing_image"), an unreadable or
corrupt image ("corrupt_image"), an image left with no labels ("no_labels") are counted
and skipped. A missing data directory or annotation file fails when the source is built,
naming the gin binding to set.
"""
import csv
import json
import os
import re
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from vlpretrain.data import bad_data
from vlpretrain.data import file_source

OUTPUT_SIGNATURE = {
    "id": tf.TensorSpec([], tf.string),
    "image": tf.TensorSpec([], tf.string),
    "labels": tf.TensorSpec([None], tf.string),
}


class LabelSource(file_source.FileSource):
  """A FileSource of {"id", "image", "labels"} with the dataset's label set."""

  def __init__(self, name: str, splits: Sequence[str],
               read: Callable[[str], Iterator[Dict]],
               label_set: Callable[[], List[str]], skipped: bad_data.SkipCounter):
    super().__init__(name=name, splits=splits, read=read,
                     output_signature=OUTPUT_SIGNATURE)
    self._label_set_fn = label_set
    self._label_set = None
    self.skipped = skipped

  def label_set(self) -> List[str]:
    """Sorted display names of all labels in the dataset (computed once, then cached)."""
    if self._label_set is None:
      self._label_set = sorted(set(self._label_set_fn()))
    return list(self._label_set)


def _read_image(path: str, counter: bad_data.SkipCounter) -> Optional[bytes]:
  """The file's bytes if it is a readable image, else None (counted under a reason)."""
  if not os.path.isfile(path):
    counter.skip("missing_image", path)
    return None
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError:
    counter.skip("corrupt_image", path)
    return None
  if not bad_data.image_ok(data):
    counter.skip("corrupt_image", path)
    return None
  return data


def _example(example_id: str, image: bytes, labels) -> Dict:
  return {"id": example_id, "image": image, "labels": sorted(set(labels))}


# ------------------------------------------------------------------- Visual Genome
VG_IMAGE_DIRS = ("VG_100K", "VG_100K_2")


def _vg_object_name(obj) -> str:
  names = obj.get("names")
  if names is None:
    names = obj.get("name")
  if isinstance(names, str):
    names = [names]
  if not names:
    return ""
  return str(names[0]).strip().lower()


@gin.configurable
def visual_genome_objects_source(data_dir: Optional[str] = None) -> LabelSource:
  """Visual Genome `objects.json` + `VG_100K[_2]/<image_id>.jpg`, split "train"."""
  binding = "visual_genome_objects_source.data_dir"
  file_source.require_dir(data_dir, binding)
  objects_path = file_source.require_file(os.path.join(data_dir, "objects.json"), binding)
  image_dirs = [os.path.join(data_dir, d) for d in VG_IMAGE_DIRS]
  if not any(os.path.isdir(d) for d in image_dirs):
    raise FileNotFoundError(f"Neither {image_dirs[0]!r} nor {image_dirs[1]!r} exists: "
                            f"check the gin binding {binding}.")
  counter = bad_data.SkipCounter("visual_genome_objects")
  cache: Dict[str, List[Tuple[str, Tuple[str, ...]]]] = {}

  def annotations() -> List[Tuple[str, Tuple[str, ...]]]:
    # objects.json is parsed once and kept only as (image_id, labels) pairs.
    if "images" not in cache:
      with open(objects_path, encoding="utf-8") as f:
        records = json.load(f)
      images = []
      for record in records:
        image_id = record.get("image_id", record.get("id"))
        labels = {_vg_object_name(o) for o in record.get("objects") or ()}
        labels.discard("")
        images.append((str(image_id), tuple(sorted(labels))))
      cache["images"] = images
    return cache["images"]

  def read(split: str) -> Iterator[Dict]:
    del split  # Visual Genome ships one set of images.
    for image_id, labels in annotations():
      if not labels:
        counter.skip("no_labels", f"{objects_path} image_id={image_id}")
        continue
      paths = [os.path.join(d, f"{image_id}.jpg") for d in image_dirs]
      path = next((p for p in paths if os.path.isfile(p)), paths[0])
      image = _read_image(path, counter)
      if image is not None:
        yield _example(image_id, image, labels)

  def label_set() -> List[str]:
    return [label for _, labels in annotations() for label in labels]

  return LabelSource("visual_genome_objects", ("train",), read, label_set, counter)


# --------------------------------------------------------------------- Open Images
OPEN_IMAGES_LABEL_FILES = {
    "train": "oidv6-train-annotations-human-imagelabels.csv",
    "validation": "validation-annotations-human-imagelabels.csv",
    "test": "test-annotations-human-imagelabels.csv",
}
OPEN_IMAGES_DESCRIPTION_FILES = ("oidv7-class-descriptions.csv",
                                 "oidv6-class-descriptions.csv",
                                 "class-descriptions.csv")


def _read_class_descriptions(path: str) -> Dict[str, str]:
  """LabelName -> DisplayName; a `LabelName,DisplayName` header is skipped if present."""
  names = {}
  with open(path, newline="", encoding="utf-8") as f:
    for i, row in enumerate(csv.reader(f)):
      if len(row) < 2:
        continue
      if i == 0 and row[0].strip() == "LabelName":
        continue
      names[row[0].strip()] = row[1].strip()
  return names


def _positive_rows(path: str) -> Iterator[Tuple[str, str]]:
  """(ImageID, LabelName) of the rows with Confidence 1."""
  with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      try:
        positive = float(row["Confidence"]) == 1.0
      except (TypeError, ValueError):
        positive = False
      if positive:
        yield row["ImageID"].strip(), row["LabelName"].strip()


def _grouped_by_image(path: str) -> Iterator[Tuple[str, List[str]]]:
  """(ImageID, [LabelName, ...]) per image, from a CSV sorted by ImageID (as shipped).

  Streams the file (the train CSV has tens of millions of rows); an ImageID smaller than
  the previous one is an error, so an unsorted file cannot yield an image twice.
  """
  current, labels = None, []
  for image_id, label in _positive_rows(path):
    if image_id != current:
      if current is not None:
        if image_id < current:
          raise ValueError(f"{path}: ImageID {image_id} follows {current}; the file must "
                           "be sorted by ImageID as shipped (sort it, keeping the header).")
        yield current, labels
      current, labels = image_id, []
    labels.append(label)
  if current is not None:
    yield current, labels


@gin.configurable
def open_images_labels_source(data_dir: Optional[str] = None,
                              images_dir: Optional[str] = None,
                              splits: Sequence[str] = ("train",)) -> LabelSource:
  """Open Images human-verified image-level labels; images `<images_dir>/<split>/<ImageID>.jpg`."""
  binding = "open_images_labels_source.data_dir"
  file_source.require_dir(data_dir, binding)
  images_dir = images_dir or data_dir
  file_source.require_dir(images_dir, "open_images_labels_source.images_dir")
  label_files = {}
  for split in splits:
    if split not in OPEN_IMAGES_LABEL_FILES:
      raise ValueError(f"open_images_labels_source: unknown split {split!r}; use one of "
                       f"{list(OPEN_IMAGES_LABEL_FILES)}.")
    label_files[split] = file_source.require_file(
        os.path.join(data_dir, OPEN_IMAGES_LABEL_FILES[split]), binding)
  descriptions = [os.path.join(data_dir, n) for n in OPEN_IMAGES_DESCRIPTION_FILES]
  descriptions_path = next((p for p in descriptions if os.path.isfile(p)), None)
  if descriptions_path is None:
    raise FileNotFoundError(f"Missing class descriptions (one of "
                            f"{list(OPEN_IMAGES_DESCRIPTION_FILES)}) in {data_dir!r}: "
                            f"check the gin binding {binding}.")
  display_names = _read_class_descriptions(descriptions_path)
  counter = bad_data.SkipCounter("open_images_labels")

  def read(split: str) -> Iterator[Dict]:
    path = label_files[split]
    for image_id, label_names in _grouped_by_image(path):
      labels = []
      for label_name in label_names:
        if label_name in display_names:
          labels.append(display_names[label_name])
        else:
          counter.skip("unknown_label", f"{path} ImageID={image_id} LabelName={label_name}")
      if not labels:
        counter.skip("no_labels", f"{path} ImageID={image_id}")
        continue
      image = _read_image(os.path.join(images_dir, split, f"{image_id}.jpg"), counter)
      if image is not None:
        yield _example(image_id, image, labels)

  def label_set() -> List[str]:
    # Names of the labels that occur as positives in the source's splits (not every
    # class in the descriptions file).
    used = {label for path in label_files.values() for _, label in _positive_rows(path)}
    return [display_names[label] for label in used if label in display_names]

  return LabelSource("open_images_labels", tuple(splits), read, label_set, counter)


# -------------------------------------------------------------------- ImageNet-21k
WNID_PATTERN = re.compile(r"^n\d{8}$")
IMAGE_EXTENSIONS = (".jpeg", ".jpg")


def _read_words(path: str) -> Dict[str, str]:
  """wnid -> first comma-separated name, from `n01440764<TAB>tench, Tinca tinca` lines."""
  words = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      wnid, _, names = line.rstrip("\n").partition("\t")
      name = names.split(",")[0].strip()
      if wnid.strip() and name:
        words[wnid.strip()] = name
  return words


@gin.configurable
def imagenet21k_source(data_dir: Optional[str] = None,
                       words_file: Optional[str] = None) -> LabelSource:
  """ImageNet-21k folders `<data_dir>/<wnid>/<file>.JPEG` + `words.txt`, split "train"."""
  binding = "imagenet21k_source.data_dir"
  file_source.require_dir(data_dir, binding)
  words_path = file_source.require_file(
      words_file or os.path.join(data_dir, "words.txt"),
      "imagenet21k_source.words_file" if words_file else binding)
  words = _read_words(words_path)
  wnids = sorted(d for d in os.listdir(data_dir)
                 if WNID_PATTERN.match(d) and os.path.isdir(os.path.join(data_dir, d)))
  counter = bad_data.SkipCounter("imagenet21k")

  def read(split: str) -> Iterator[Dict]:
    del split  # One split: the folders as given.
    for wnid in wnids:
      folder = os.path.join(data_dir, wnid)
      files = sorted(f for f in os.listdir(folder)
                     if f.lower().endswith(IMAGE_EXTENSIONS))
      for name in files:
        path = os.path.join(folder, name)
        if wnid not in words:
          counter.skip("no_labels", f"{path} (synset {wnid} not in {words_path})")
          continue
        image = _read_image(path, counter)
        if image is not None:
          yield _example(os.path.splitext(name)[0], image, [words[wnid]])

  def label_set() -> List[str]:
    return [words[wnid] for wnid in wnids if wnid in words]

  return LabelSource("imagenet21k", ("train",), read, label_set, counter)
