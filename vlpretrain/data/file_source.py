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

Record files (TFRecord shards: img2dataset, the shapes cache) are split over hosts by
`host_files` and read with `tfrecord_records`, which survives truncated or corrupt
shards (counted and named, design.md "Sources").
"""
import os
from typing import Callable, Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from vlpretrain import errors
from vlpretrain.data import bad_data

_RECORD_OVERHEAD = 16  # TFRecord framing: 8-byte length, 4-byte CRC, 4-byte data CRC.


def require_dir(path: Optional[str], binding: str) -> str:
  """`path` if it is an existing directory, else an error naming the gin binding to set."""
  if not path:
    raise errors.ConfigError(f"No data directory given: set the gin binding {binding} to the "
                             "directory that holds the dataset.")
  if not os.path.isdir(path):
    raise errors.MissingPathError(f"{path!r} (gin binding {binding}) is not a directory: "
                                  "point it at the dataset's files.")
  return path


def require_file(path: str, binding: str) -> str:
  """`path` if it is an existing file, else an error naming the file and the binding."""
  if not os.path.isfile(path):
    raise errors.MissingPathError(f"Missing {path!r}: check the gin binding {binding}.")
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


def tfrecord_records(path: tf.Tensor, counter: bad_data.SkipCounter) -> tf.data.Dataset:
  """(index, record) of one TFRecord file, stopping cleanly at a truncated/corrupt record.

  TFRecordDataset raises DataLossError at a record cut short or with a bad CRC, which
  would end a run. Here the records before it are kept and the rest of the file is
  skipped: the error is ignored (`ignore_errors`), and at the end of the file the bytes
  read (payloads + 16 bytes of framing per record) are compared with the file's size;
  a shortfall is counted on `counter` as "corrupt_record_file" with a warning that
  names the file. The check costs one `stat` per file and no extra reading. `path` is a
  scalar tf.string (use inside `flat_map`/`interleave` over file names).
  """
  records = tf.data.TFRecordDataset(path).ignore_errors()
  records = records.map(lambda r: (r, False)).concatenate(
      tf.data.Dataset.from_tensors((tf.constant(b""), True)))  # End-of-file marker.

  def count(state, x):
    index, consumed = state
    record, end = x
    size = tf.cast(tf.strings.length(record), tf.int64) + _RECORD_OVERHEAD
    new = (index + 1, consumed + size)
    return (tf.where(end, index, new[0]), tf.where(end, consumed, new[1])), (
        index, record, end, consumed)

  def report(path_value, num_records, consumed):
    name = path_value.decode("utf-8", "replace")
    size = tf.io.gfile.stat(name).length
    if consumed != size:
      counter.skip("corrupt_record_file",
                   f"{name} (truncated or corrupt after record {num_records}, at byte "
                   f"{consumed} of {size}; the rest of the file is skipped)")
    return True

  def keep(index, record, end, consumed):
    del record
    checked = lambda: tf.logical_not(tf.numpy_function(
        report, [path, index, consumed], tf.bool, stateful=False))
    return tf.ensure_shape(tf.cond(end, checked, lambda: tf.constant(True)), [])

  records = records.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count)
  return records.filter(keep).map(lambda index, record, end, consumed: (index, record))


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
      raise errors.ConfigError(f"{self._name}: unknown split {split!r}; use one of "
                               f"{list(self.splits)}.")
    index, num_shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)

    def generate():
      for i, example in enumerate(self._read(split)):
        if i % num_shards == index:
          yield {k: example[k] for k in self._signature}

    return tf.data.Dataset.from_generator(generate, output_signature=self._signature)
