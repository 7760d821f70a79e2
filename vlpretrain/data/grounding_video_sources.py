"""Sources for referring expressions (RefCOCO, RefCOCO+, RefCOCOg) and MSRVTT-QA.

Both read the datasets' own annotation files with a folder of images (or of decoded
video frames) next to them, and yield raw examples: images as encoded bytes, text as
shipped. Decoding, resizing and turning boxes into text are later preprocessing steps.
Bad examples (missing or corrupt image, empty text, an annotation the expression points
to that is not there) are counted in `source.skipped` (a `bad_data.SkipCounter`) and
skipped; a missing data directory or annotation file raises at construction, naming the
gin binding to set.

RefCOCO / RefCOCO+ / RefCOCOg  (`refcoco_source`, `refcoco_plus_source`,
`refcocog_source`)
---------------------------------------------------------------------------------------
`data_dir` holds the files of one dataset as the `refer` toolkit lays them out:

    <data_dir>/instances.json   COCO format:
        "images":      [{"id", "file_name", "width", "height", ...}]
        "annotations": [{"id", "image_id", "bbox": [x, y, w, h] (pixels),
                         "category_id", ...}]
    <data_dir>/refs.json        a JSON list of the refs records, as `refs(unc).p` (RefCOCO,
                                RefCOCO+) or `refs(umd).p` / `refs(google).p` (RefCOCOg)
                                hold them:
        [{"ref_id", "ann_id", "image_id", "split" ("train", "val", "testA", "testB",
          "test"), "sentences": [{"sent", "raw", "sent_id", "tokens"}],
          "category_id", "file_name"}]

and `image_dir` is the COCO `train2014/` folder (default `<data_dir>/train2014`); an
image's file is its image record's `file_name` (e.g. COCO_train2014_000000581857.jpg).

The official refs file is a pickle, which this source never loads (unpickling runs
code). Convert it to refs.json yourself, once, on a file you trust:

    import json, pickle
    refs = pickle.load(open("refcoco/refs(unc).p", "rb"))
    json.dump(refs, open("refcoco/refs.json", "w"))

Examples, one per sentence:
    id          f"{ref_id}_{sent_id}"
    image       the encoded image file (bytes)
    expression  the sentence's "sent"
    box         float32 [4], normalised [ymin, xmin, ymax, xmax] in [0, 1]: the
                annotation's pixel bbox divided by the image record's height/width
                (clipped to [0, 1]).
Splits are named as in refs.json: RefCOCO and RefCOCO+ ("unc") have train, val, testA,
testB; RefCOCOg ("umd") has train, val, test (for the "google" split bind
`refcocog_source.splits = ("train", "val")`).
The target text of the task, "ymax xmax ymin xmin" quantised to 100 bins, is made from
`box` by `vlpretrain.metrics.box_to_text` in the task's preprocessing, not here.
Skip reasons: missing_annotation, missing_image_record, bad_box (no area or no image
size), empty_expression, missing_image, corrupt_image.

MSRVTT-QA  (`msrvtt_qa_source`)
-------------------------------
    <data_dir>/train_qa.json, val_qa.json, test_qa.json
        each a JSON list of {"id", "video_id" (int: 0 is video0), "question", "answer"}
    <frames_dir>/video<video_id>/   the video's decoded frames as JPEG files (default
        `<data_dir>/frames`). Any file names: the frames are the folder's non-hidden
        files in sorted order (digit runs compare as numbers, so "frame2.jpg" comes
        before "frame10.jpg"; zero-padded names sort the same either way).
Splits: "train" (train_qa.json), "validation" (val_qa.json), "test" (test_qa.json).
Examples:
    id        the QA record's "id", as a string
    frames    tf.string [num_frames] (default 8): encoded bytes of frames sampled
              uniformly over the video: the frame at the centre of each of `num_frames`
              equal segments, index floor((2i + 1) * n / (2 * num_frames)). With fewer
              than `num_frames` frames, all of them in order, then the last one repeated.
    question  the "question" text
    answer    the "answer" text
Skip reasons (counted once per skipped question, warned with the file or folder named):
missing_video (no folder), no_frames (empty folder), corrupt_frame (a sampled frame that
does not decode), empty_question, empty_answer.
"""
import collections
import json
import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf

from vlpretrain.data import bad_data
from vlpretrain.data import file_source

REFCOCO_SPLITS = ("train", "val", "testA", "testB")
REFCOCOG_SPLITS = ("train", "val", "test")
MSRVTT_QA_FILES = {"train": "train_qa.json", "validation": "val_qa.json",
                   "test": "test_qa.json"}

REFCOCO_SIGNATURE = {
    "id": tf.TensorSpec([], tf.string),
    "image": tf.TensorSpec([], tf.string),
    "expression": tf.TensorSpec([], tf.string),
    "box": tf.TensorSpec([4], tf.float32),
}


def _read_bytes(path: str) -> Optional[bytes]:
  """The file's bytes, or None if it cannot be read."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return None


def _load_json(path: str):
  with open(path, "r", encoding="utf-8") as f:
    return json.load(f)


# ------------------------------------------------------------------------------ RefCOCO
def normalised_box(bbox: Sequence[float], width: float, height: float
                   ) -> Optional[np.ndarray]:
  """COCO pixel [x, y, w, h] -> float32 [ymin, xmin, ymax, xmax] in [0, 1], or None for
  a box with no area or an image with no size."""
  x, y, w, h = (float(v) for v in bbox)
  if not (width and height and width > 0 and height > 0 and w > 0 and h > 0):
    return None
  box = np.array([y / height, x / width, (y + h) / height, (x + w) / width], np.float32)
  return np.clip(box, 0.0, 1.0)


def _refcoco_like_source(name: str, data_dir: Optional[str], image_dir: Optional[str],
                         splits: Sequence[str], function: str) -> file_source.FileSource:
  data_dir = file_source.require_dir(data_dir, f"{function}.data_dir")
  instances_path = file_source.require_file(os.path.join(data_dir, "instances.json"),
                                            f"{function}.data_dir")
  refs_path = file_source.require_file(os.path.join(data_dir, "refs.json"),
                                       f"{function}.data_dir")
  if image_dir is None:
    image_dir = os.path.join(data_dir, "train2014")
  image_dir = file_source.require_dir(image_dir, f"{function}.image_dir")
  counter = bad_data.SkipCounter(name)
  loaded = {}  # Parsed lazily, once: instances.json is large.

  def load():
    if not loaded:
      instances = _load_json(instances_path)
      loaded["images"] = {im["id"]: im for im in instances.get("images", [])}
      loaded["annotations"] = {a["id"]: a for a in instances.get("annotations", [])}
      loaded["refs"] = _load_json(refs_path)
    return loaded["images"], loaded["annotations"], loaded["refs"]

  def read(split: str) -> Iterator[Dict]:
    images, annotations, refs = load()
    for ref in refs:
      if ref.get("split") != split:
        continue
      where = f"{refs_path} ref_id={ref.get('ref_id')}"
      sentences = ref.get("sentences") or []
      annotation = annotations.get(ref.get("ann_id"))
      if annotation is None:
        for _ in sentences:
          counter.skip("missing_annotation", where)
        continue
      image_record = images.get(annotation.get("image_id", ref.get("image_id")))
      if image_record is None:
        for _ in sentences:
          counter.skip("missing_image_record", where)
        continue
      box = normalised_box(annotation["bbox"], image_record.get("width"),
                           image_record.get("height"))
      if box is None:
        for _ in sentences:
          counter.skip("bad_box", where)
        continue
      kept = [s for s in sentences if bad_data.text_ok(s.get("sent"))]
      for _ in range(len(sentences) - len(kept)):
        counter.skip("empty_expression", where)
      if not kept:
        continue
      image_path = os.path.join(image_dir, image_record["file_name"])
      image = _read_bytes(image_path)
      if image is None:
        for _ in kept:
          counter.skip("missing_image", image_path)
        continue
      if not bad_data.image_ok(image):
        for _ in kept:
          counter.skip("corrupt_image", image_path)
        continue
      for sentence in kept:
        yield {"id": f"{ref['ref_id']}_{sentence['sent_id']}", "image": image,
               "expression": sentence["sent"], "box": box}

  source = file_source.FileSource(name, tuple(splits), read, REFCOCO_SIGNATURE)
  source.skipped = counter
  return source


@gin.configurable
def refcoco_source(data_dir: Optional[str] = None, image_dir: Optional[str] = None,
                   splits: Sequence[str] = REFCOCO_SPLITS) -> file_source.FileSource:
  """RefCOCO (unc splits): see the module docstring for the files and the fields."""
  return _refcoco_like_source("refcoco", data_dir, image_dir, splits, "refcoco_source")


@gin.configurable
def refcoco_plus_source(data_dir: Optional[str] = None, image_dir: Optional[str] = None,
                        splits: Sequence[str] = REFCOCO_SPLITS
                        ) -> file_source.FileSource:
  """RefCOCO+ (unc splits): see the module docstring for the files and the fields."""
  return _refcoco_like_source("refcoco+", data_dir, image_dir, splits,
                              "refcoco_plus_source")


@gin.configurable
def refcocog_source(data_dir: Optional[str] = None, image_dir: Optional[str] = None,
                    splits: Sequence[str] = REFCOCOG_SPLITS) -> file_source.FileSource:
  """RefCOCOg (umd splits by default): see the module docstring."""
  return _refcoco_like_source("refcocog", data_dir, image_dir, splits,
                              "refcocog_source")


# ---------------------------------------------------------------------------- MSRVTT-QA
def _natural_key(name: str) -> Tuple:
  """Sort key comparing digit runs as numbers: frame2 < frame10."""
  return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
               for part in re.split(r"(\d+)", name) if part)


def frame_files(video_dir: str) -> List[str]:
  """The non-hidden files of `video_dir` in (natural) sorted order."""
  names = [n for n in os.listdir(video_dir) if not n.startswith(".") and
           os.path.isfile(os.path.join(video_dir, n))]
  return [os.path.join(video_dir, n) for n in sorted(names, key=_natural_key)]


def sample_indices(num_available: int, num_frames: int) -> List[int]:
  """`num_frames` indices spread uniformly over `num_available` frames (segment
  centres); with fewer frames, all of them and then the last repeated."""
  if num_available <= 0:
    return []
  if num_available < num_frames:
    return list(range(num_available)) + [num_available - 1] * (num_frames -
                                                               num_available)
  return [((2 * i + 1) * num_available) // (2 * num_frames) for i in range(num_frames)]


@gin.configurable
def msrvtt_qa_source(data_dir: Optional[str] = None, frames_dir: Optional[str] = None,
                     num_frames: int = 8,
                     splits: Sequence[str] = tuple(MSRVTT_QA_FILES),
                     cache_videos: int = 32) -> file_source.FileSource:
  """MSRVTT-QA over decoded frames: see the module docstring for files and fields.

  `cache_videos` videos' sampled frames are kept in memory, since questions come many
  per video.
  """
  if num_frames < 1:
    raise ValueError(f"msrvtt_qa_source.num_frames must be >= 1, got {num_frames}.")
  unknown = [s for s in splits if s not in MSRVTT_QA_FILES]
  if unknown:
    raise ValueError(f"msrvtt_qa_source.splits: unknown {unknown}; use some of "
                     f"{list(MSRVTT_QA_FILES)}.")
  data_dir = file_source.require_dir(data_dir, "msrvtt_qa_source.data_dir")
  qa_paths = {s: file_source.require_file(os.path.join(data_dir, MSRVTT_QA_FILES[s]),
                                          "msrvtt_qa_source.data_dir") for s in splits}
  if frames_dir is None:
    frames_dir = os.path.join(data_dir, "frames")
  frames_dir = file_source.require_dir(frames_dir, "msrvtt_qa_source.frames_dir")
  counter = bad_data.SkipCounter("msrvtt_qa")

  def load_video(video_id) -> Tuple[Optional[List[bytes]], Optional[str], str]:
    """(frames, None, dir) or (None, skip reason, file or folder to name)."""
    video_dir = os.path.join(frames_dir, f"video{video_id}")
    if not os.path.isdir(video_dir):
      return None, "missing_video", video_dir
    files = frame_files(video_dir)
    if not files:
      return None, "no_frames", video_dir
    chosen = sample_indices(len(files), num_frames)
    decoded = {}
    for index in sorted(set(chosen)):
      data = _read_bytes(files[index])
      if data is None or not bad_data.image_ok(data):
        return None, "corrupt_frame", files[index]
      decoded[index] = data
    return [decoded[i] for i in chosen], None, video_dir

  def read(split: str) -> Iterator[Dict]:
    cache = collections.OrderedDict()
    for record in _load_json(qa_paths[split]):
      video_id = record.get("video_id")
      if video_id in cache:
        cache.move_to_end(video_id)
        frames, reason, where = cache[video_id]
      else:
        frames, reason, where = cache[video_id] = load_video(video_id)
        if len(cache) > cache_videos:
          cache.popitem(last=False)
      if reason is not None:
        counter.skip(reason, where)
        continue
      where = f"{qa_paths[split]} id={record.get('id')}"
      if not bad_data.text_ok(record.get("question")):
        counter.skip("empty_question", where)
        continue
      if not bad_data.text_ok(record.get("answer")):
        counter.skip("empty_answer", where)
        continue
      yield {"id": str(record["id"]), "frames": frames,
             "question": record["question"], "answer": str(record["answer"])}

  signature = {"id": tf.TensorSpec([], tf.string),
               "frames": tf.TensorSpec([num_frames], tf.string),
               "question": tf.TensorSpec([], tf.string),
               "answer": tf.TensorSpec([], tf.string)}
  source = file_source.FileSource("msrvtt_qa", tuple(splits), read, signature)
  source.skipped = counter
  return source
