"""A seqio DataSource over examples that Python code reads from a dataset's own files.

Annotation formats (JSON, JSONL, CSV, folders of images) are read in Python; the image
bytes are read lazily per example. Sources for each dataset format provide a
`read(split) -> Iterator[dict]` generator and the output signature:

    source = file_source.FileSource(
        name="coco_captions", splits=("train", "validation"), read=read_examples,
        output_signature={"id": tf.TensorSpec([], tf.string),
                          "image": tf.TensorSpec([], tf.string),
                          "caption": tf.TensorSpec([], tf.string)})

Each host reads every `num_shards`-th example from `index` (deterministic). Shuffling
happens later, in seqio's pipeline, with its seed.
"""
import os
from typing import Callable, Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf


def require_dir(path: Optional[str], binding: str) -> str:
  """`path` if it is an existing directory, else an error naming the gin binding to set."""
  if not path:
    raise ValueError(f"No data directory given: set the gin binding {binding} to the "
                     "directory that holds the dataset.")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} (gin binding {binding}) is not a directory: "
                            "point it at the dataset's files.")
  return path


def require_file(path: str, binding: str) -> str:
  """`path` if it is an existing file, else an error naming the file and the binding."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Missing {path!r}: check the gin binding {binding}.")
  return path


def host_files(files: Sequence[str], shard_info: Optional[seqio.ShardInfo],
               shuffle: bool, seed: Optional[int]):
  """This host's part of a list of record files, as (file dataset, shard_records).

  With at least as many files as hosts each host reads whole files (optionally in a
  shuffled order); otherwise every host reads all files and the caller must keep every
  `num_shards`-th record (`shard_records` is True).
  """
  files = list(files)
  shard_records = False
  if shard_info and shard_info.num_shards > 1:
    if len(files) >= shard_info.num_shards:
      files = files[shard_info.index::shard_info.num_shards]
    else:
      shard_records = True
  ds = tf.data.Dataset.from_tensor_slices(files)
  if shuffle and not shard_records:
    ds = ds.shuffle(len(files), seed=seed)
  return ds, shard_records


class FileSource(seqio.DataSource):
  """Examples from `read(split)`, sharded by example index over hosts."""

  def __init__(self, name: str, splits: Sequence[str],
               read: Callable[[str], Iterator[Mapping]],
               output_signature: Mapping[str, tf.TensorSpec],
               num_input_examples: Optional[Mapping[str, int]] = None):
    self._name = name
    self._read = read
    self._signature = dict(output_signature)
    self._num_examples = dict(num_input_examples or {})
    super().__init__(splits=splits, num_input_examples=num_input_examples)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  *args, **kwargs) -> tf.data.Dataset:
    del shuffle, seed, args, kwargs  # Shuffled downstream by seqio.
    if split not in self.splits:
      raise ValueError(f"{self._name}: unknown split {split!r}; use one of "
                       f"{list(self.splits)}.")
    index, num_shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)

    def generate():
      for i, example in enumerate(self._read(split)):
        if i % num_shards == index:
          yield {k: example[k] for k in self._signature}

    return tf.data.Dataset.from_generator(generate, output_signature=self._signature)
