"""Image-only and text-only sources, for the stages of seed 002 sec. 3.4.

  image_folder_source  split -> a folder of images (searched recursively: .jpg, .jpeg,
                       .png, .webp, .bmp, .gif), no captions needed; examples
                       {id: the path relative to the folder, image: the file's bytes}.
                       img2dataset shards need no new source: image-only Tasks read
                       `caption_sources.img2dataset_source` and drop the caption.
  text_source          split -> a file glob of .txt (one text per non-empty line) or
                       .jsonl (one JSON object per line, its `text_field`) shards;
                       examples {id: '<file>:<line>', text}.

Unreadable or corrupt images, empty lines and malformed JSON lines are counted and
skipped (`bad_data`), never fatal; files are read in sorted order, so example order is
deterministic.
"""
import glob
import json
import os
from typing import Iterator, Mapping, Optional

import gin
import tensorflow as tf

from vlpretrain import errors
from vlpretrain.data import bad_data
from vlpretrain.data import caption_sources
from vlpretrain.data import file_source

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
_STRING = tf.TensorSpec([], tf.string)


def _splits(mapping: Optional[Mapping[str, str]], binding: str) -> dict:
  if not mapping:
    raise errors.ConfigError(f"No splits given: set the gin binding {binding}, e.g. "
                             "{'train': '/data/...'}.")
  return dict(mapping)


@gin.configurable
def image_folder_source(split_dirs: Optional[Mapping[str, str]] = None,
                        name: str = "image_folder") -> file_source.FileSource:
  """Images without captions, one folder per split (see the module docstring)."""
  binding = "image_folder_source.split_dirs"
  split_dirs = _splits(split_dirs, binding)
  for directory in split_dirs.values():
    file_source.require_dir(directory, binding)
  counter = bad_data.SkipCounter(name)

  def read(split: str) -> Iterator[dict]:
    root = split_dirs[split]
    for folder, dirs, files in os.walk(root):
      dirs.sort()
      for file_name in sorted(files):
        if not file_name.lower().endswith(IMAGE_EXTENSIONS):
          continue
        path = os.path.join(folder, file_name)
        image = caption_sources._read_image(path, counter)  # pylint: disable=protected-access
        if image is not None:
          yield {"id": os.path.relpath(path, root), "image": image}

  source = file_source.FileSource(name, tuple(split_dirs), read,
                                  {"id": _STRING, "image": _STRING})
  source.skipped = counter
  return source


@gin.configurable
def text_source(split_patterns: Optional[Mapping[str, str]] = None,
                text_field: str = "text", name: str = "text") -> file_source.FileSource:
  """Text without images: .txt lines or .jsonl records (see the module docstring)."""
  binding = "text_source.split_patterns"
  split_patterns = _splits(split_patterns, binding)
  for split, pattern in split_patterns.items():
    if not glob.glob(pattern):
      raise errors.MissingPathError(f"{name}: no files match {pattern!r} for split "
                                    f"{split!r}: check the gin binding {binding}.")
  counter = bad_data.SkipCounter(name)

  def read(split: str) -> Iterator[dict]:
    for path in sorted(glob.glob(split_patterns[split])):
      jsonl = path.endswith(".jsonl")
      with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
          where = f"{path}:{number}"
          if jsonl:
            try:
              text = json.loads(line).get(text_field) if line.strip() else ""
            except (json.JSONDecodeError, AttributeError):
              counter.skip("malformed_json", where)
              continue
          else:
            text = line
          text = (text or "").strip() if isinstance(text, str) else ""
          if not bad_data.text_ok(text):
            counter.skip("empty_text", where)
            continue
          yield {"id": where, "text": text}

  source = file_source.FileSource(name, tuple(split_patterns), read,
                                  {"id": _STRING, "text": _STRING})
  source.skipped = counter
  return source
