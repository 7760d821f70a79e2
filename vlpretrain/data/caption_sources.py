"""Image-caption sources over the files users already have: examples {id, image, caption}.

Every source yields raw examples: `id` (tf.string), `image` (the encoded image bytes,
tf.string; decoding and resizing happen later, in `images.py`) and `caption` (tf.string).
Corrupt images, empty captions and missing image files are counted on `source.skipped`
(a `bad_data.SkipCounter`), warned about with the file named, and skipped; so is the
rest of a truncated or corrupt TFRecord shard (`file_source.tfrecord_records`).

1. img2dataset TFRecords (CC3M, CC12M, any image-text set) -- `img2dataset_source`:
   shards `*.tfrecord`, each record a `tf.train.Example` with bytes features `jpg` (the
   JPEG), `txt` (the caption) and `key` (e.g. "000010003"); other features (`url`,
   `width`, `height`, `original_width`, ...) are ignored. `id` is the `key` (or
   "<shard file>:<record index>" when a record has none).

       img2dataset_source.split_patterns = {
           'train': '/data/cc3m/train/*.tfrecord',
           'validation': '/data/cc3m/validation/*.tfrecord'}

2. COCO captions -- `coco_captions_source(data_dir)`:
   <data_dir>/annotations/captions_train2017.json (and captions_val2017.json), top-level
   `images` [{`id`, `file_name`, `width`, `height`, ...}] and `annotations`
   [{`id`, `image_id`, `caption`}]; images in <data_dir>/train2017/<file_name> (and
   val2017/). One example per annotation, `id` = the annotation `id`.

3. Localized Narratives, Open Images subset -- `localized_narratives_source(
   annotations_dir, images_dir)`: <annotations_dir>/
   open_images_train_v6_localized_narratives-000NN-of-00010.jsonl,
   open_images_validation_localized_narratives.jsonl and
   open_images_test_localized_narratives.jsonl; each line {"dataset_id", "image_id",
   "annotator_id", "caption", "timed_caption", "traces", "voice_recording"}. Images are
   Open Images JPEGs `<image_id>.jpg` in <images_dir>/<split folder> (`train`,
   `validation`, `test`, as Open Images ships them) or, when that folder does not
   exist, directly in <images_dir>. `id` = "<image_id>_<annotator_id>".
"""
import glob
import json
import os
from typing import Iterator, List, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from vlpretrain.data import bad_data
from vlpretrain.data import file_source

OUTPUT_SIGNATURE = {"id": tf.TensorSpec([], tf.string),
                    "image": tf.TensorSpec([], tf.string),
                    "caption": tf.TensorSpec([], tf.string)}


# ---------------------------------------------------------------------------
# img2dataset TFRecords.
# ---------------------------------------------------------------------------
class Img2DatasetSource(seqio.DataSource):
  """{id, image, caption} from img2dataset TFRecord shards (`jpg`, `txt`, `key`).

  Shards are read in sorted order. Per-host sharding (`shard_info`) splits the files
  when there are at least as many files as hosts, else the records. `shuffle` shuffles
  the file order (only when sharding by files); the Task shuffles examples.
  """

  BINDING = "img2dataset_source.split_patterns"

  def __init__(self, split_patterns: Mapping[str, str], name: str = "img2dataset"):
    if not split_patterns:
      raise ValueError(f"No TFRecord shards given: set the gin binding {self.BINDING} to "
                       "a dict split -> file glob, e.g. {'train': "
                       "'/data/cc3m/train/*.tfrecord'}.")
    self.name = name
    self._files = {}
    for split, pattern in split_patterns.items():
      files = sorted(tf.io.gfile.glob(pattern))
      if not files:
        raise FileNotFoundError(f"{name}: no files match {pattern!r} for split "
                                f"{split!r}: check the gin binding {self.BINDING}.")
      self._files[split] = files
    self.skipped = bad_data.SkipCounter(name)
    super().__init__(splits=tuple(split_patterns), caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> List[str]:
    if split not in self._files:
      raise ValueError(f"{self.name}: unknown split {split!r}; use one of "
                       f"{list(self._files)}.")
    return list(self._files[split])

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  *args, **kwargs) -> tf.data.Dataset:
    del args, kwargs
    files = self.list_shards(split)
    ds, shard_records = file_source.host_files(files, shard_info, shuffle, seed)
    # One file after the other, records in file order, each tagged with its shard.
    # A truncated/corrupt shard is read up to the bad record, counted and named.
    ds = ds.flat_map(lambda path: file_source.tfrecord_records(path, self.skipped).map(
        lambda i, record: (path, i, record)))
    if shard_records:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    ds = ds.map(_parse_img2dataset, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = bad_data.filter_examples(ds, _img2dataset_problem, self.skipped,
                                  where_key="where")
    return ds.map(lambda ex: {k: ex[k] for k in OUTPUT_SIGNATURE})


_IMG2DATASET_FEATURES = {k: tf.io.VarLenFeature(tf.string) for k in ("jpg", "txt", "key")}


def _parse_img2dataset(path, index, record):
  """Parses `jpg`, `txt`, `key` only; notes which are missing for the filter."""
  parsed = tf.io.parse_single_example(record, _IMG2DATASET_FEATURES)
  values = {k: tf.sparse.to_dense(v, default_value=b"") for k, v in parsed.items()}
  first = {k: tf.concat([v, [b""]], 0)[0] for k, v in values.items()}
  where = tf.strings.join([path, " record ", tf.strings.as_string(index)])
  fallback_id = tf.strings.join([tf.strings.split(path, "/")[-1], ":",
                                 tf.strings.as_string(index)])
  key = first["key"]
  return {"id": tf.where(tf.strings.length(key) > 0, key, fallback_id),
          "image": first["jpg"], "caption": first["txt"],
          "has_jpg": tf.size(values["jpg"]) > 0, "has_txt": tf.size(values["txt"]) > 0,
          "where": tf.strings.join([where, " key=", key])}


def _img2dataset_problem(example) -> Optional[str]:
  if not example["has_jpg"]:
    return "missing_jpg"
  if not example["has_txt"]:
    return "missing_txt"
  if not bad_data.image_ok(example["image"]):
    return "corrupt_image"
  if not bad_data.text_ok(example["caption"]):
    return "empty_caption"
  return None


@gin.configurable
def img2dataset_source(split_patterns: Optional[Mapping[str, str]] = None,
                       name: str = "img2dataset") -> Img2DatasetSource:
  """img2dataset TFRecords; `split_patterns` maps split -> file glob."""
  return Img2DatasetSource(split_patterns, name=name)


# ---------------------------------------------------------------------------
# Helpers for the Python-read (FileSource) formats.
# ---------------------------------------------------------------------------
def _read_image(path: str, counter: bad_data.SkipCounter) -> Optional[bytes]:
  """The file's bytes, or None after counting a missing/unreadable/corrupt image."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    counter.skip("missing_image", path)
    return None
  except OSError:
    counter.skip("unreadable_image", path)
    return None
  if not bad_data.image_ok(data):
    counter.skip("corrupt_image", path)
    return None
  return data


def _check_splits(splits: Sequence[str], known: Sequence[str], name: str):
  unknown = [s for s in splits if s not in known]
  if unknown or not splits:
    raise ValueError(f"{name}: unknown splits {unknown}; use some of {list(known)}.")


# ---------------------------------------------------------------------------
# COCO captions.
# ---------------------------------------------------------------------------
COCO_SPLITS = {"train": "train2017", "validation": "val2017"}


@gin.configurable
def coco_captions_source(data_dir: Optional[str] = None,
                         splits: Sequence[str] = ("train", "validation"),
                         name: str = "coco_captions") -> file_source.FileSource:
  """COCO 2017 captions: annotations/captions_{train,val}2017.json + {train,val}2017/.

  One example per entry of `annotations` (`id`, `image_id`, `caption`); the image is
  <data_dir>/<train2017|val2017>/<file_name> with `file_name` from `images`.
  """
  binding = "coco_captions_source.data_dir"
  data_dir = file_source.require_dir(data_dir, binding)
  splits = tuple(splits)
  _check_splits(splits, tuple(COCO_SPLITS), name)
  for split in splits:
    file_source.require_file(os.path.join(
        data_dir, "annotations", f"captions_{COCO_SPLITS[split]}.json"), binding)
    file_source.require_dir(os.path.join(data_dir, COCO_SPLITS[split]), binding)
  counter = bad_data.SkipCounter(name)

  def read(split: str) -> Iterator[dict]:
    folder = COCO_SPLITS[split]
    path = os.path.join(data_dir, "annotations", f"captions_{folder}.json")
    with open(path) as f:
      coco = json.load(f)
    file_names = {image["id"]: image["file_name"] for image in coco["images"]}
    for ann in coco["annotations"]:
      where = f"{path} annotation id={ann.get('id')}"
      if ann.get("image_id") not in file_names:
        counter.skip("unknown_image_id", where)
        continue
      caption = (ann.get("caption") or "").strip()
      if not bad_data.text_ok(caption):
        counter.skip("empty_caption", where)
        continue
      image = _read_image(os.path.join(data_dir, folder, file_names[ann["image_id"]]),
                          counter)
      if image is None:
        continue
      yield {"id": str(ann["id"]), "image": image, "caption": caption}

  source = file_source.FileSource(name, splits, read, OUTPUT_SIGNATURE)
  source.skipped = counter
  return source


# ---------------------------------------------------------------------------
# Localized Narratives (Open Images).
# ---------------------------------------------------------------------------
LN_PATTERNS = {
    "train": "open_images_train_v6_localized_narratives-*-of-*.jsonl",
    "validation": "open_images_validation_localized_narratives.jsonl",
    "test": "open_images_test_localized_narratives.jsonl",
}


@gin.configurable
def localized_narratives_source(annotations_dir: Optional[str] = None,
                                images_dir: Optional[str] = None,
                                splits: Sequence[str] = ("train", "validation"),
                                name: str = "localized_narratives"
                                ) -> file_source.FileSource:
  """Localized Narratives on Open Images: JSONL narratives + `<image_id>.jpg` images.

  One example per JSONL line (`image_id`, `annotator_id`, `caption`; `timed_caption`,
  `traces` and `voice_recording` are not read).
  """
  ann_binding = "localized_narratives_source.annotations_dir"
  img_binding = "localized_narratives_source.images_dir"
  annotations_dir = file_source.require_dir(annotations_dir, ann_binding)
  images_dir = file_source.require_dir(images_dir, img_binding)
  splits = tuple(splits)
  _check_splits(splits, tuple(LN_PATTERNS), name)
  files, image_dirs = {}, {}
  for split in splits:
    pattern = os.path.join(annotations_dir, LN_PATTERNS[split])
    files[split] = sorted(glob.glob(pattern))
    if not files[split]:
      raise FileNotFoundError(f"{name}: no files match {pattern!r} for split {split!r}: "
                              f"check the gin binding {ann_binding}.")
    split_dir = os.path.join(images_dir, split)
    image_dirs[split] = split_dir if os.path.isdir(split_dir) else images_dir
  counter = bad_data.SkipCounter(name)

  def read(split: str) -> Iterator[dict]:
    for path in files[split]:
      with open(path) as f:
        for line_number, line in enumerate(f, 1):
          if not line.strip():
            continue
          where = f"{path} line {line_number}"
          try:
            narrative = json.loads(line)
            image_id, annotator_id = narrative["image_id"], narrative["annotator_id"]
          except (ValueError, KeyError, TypeError):
            counter.skip("bad_json_line", where)
            continue
          caption = (narrative.get("caption") or "").strip()
          if not bad_data.text_ok(caption):
            counter.skip("empty_caption", where)
            continue
          image = _read_image(os.path.join(image_dirs[split], f"{image_id}.jpg"), counter)
          if image is None:
            continue
          yield {"id": f"{image_id}_{annotator_id}", "image": image, "caption": caption}

  source = file_source.FileSource(name, splits, read, OUTPUT_SIGNATURE)
  source.skipped = counter
  return source
