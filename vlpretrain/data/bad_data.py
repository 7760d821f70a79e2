"""Counting and skipping bad examples, so a long run never dies on one bad file.

Every source routes its checks through one `SkipCounter`: an unreadable or corrupt
image, an empty caption or a missing file is counted under a reason, warned about with
the file (or record) named, and skipped. Warnings are rate-limited per reason.

    counter = bad_data.SkipCounter("cc3m")
    if not bad_data.image_ok(jpeg_bytes):
      counter.skip("corrupt_image", f"{shard_path} key={key}")

Inside tf.data, `filter_examples` applies a Python predicate to each element and counts
the rejected ones. `totals()` sums every counter of the process: the trainer logs it and
writes it to TensorBoard (`skipped/<source>/<reason>`), eval and infer log it at the end.
The counts are of reads: an example skipped in each of two epochs counts twice.
"""
import collections
import io
import threading
from typing import Callable, Dict, Optional

from absl import logging
import PIL.Image

MAX_WARNINGS_PER_REASON = 20
_ALL_COUNTERS = []  # Every SkipCounter of this process, for `totals()`.
_ALL_COUNTERS_LOCK = threading.Lock()


class SkipCounter:
  """Thread-safe counts of skipped examples by reason, with named warnings."""

  def __init__(self, source: str):
    self.source = source
    self._counts = collections.Counter()
    self._lock = threading.Lock()
    with _ALL_COUNTERS_LOCK:
      _ALL_COUNTERS.append(self)

  def skip(self, reason: str, where: str) -> None:
    with self._lock:
      self._counts[reason] += 1
      n = self._counts[reason]
    if n <= MAX_WARNINGS_PER_REASON:
      logging.warning("%s: skipped an example (%s) in %s.%s", self.source, reason, where,
                      " Further ones are counted, not logged." if
                      n == MAX_WARNINGS_PER_REASON else "")

  def counts(self) -> Dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def total(self) -> int:
    with self._lock:
      return sum(self._counts.values())


def totals() -> Dict[str, int]:
  """Skipped reads so far in this process, over every source: {'<source>/<reason>': n}."""
  result = collections.Counter()
  with _ALL_COUNTERS_LOCK:
    counters = list(_ALL_COUNTERS)
  for counter in counters:
    for reason, n in counter.counts().items():
      result[f"{counter.source}/{reason}"] += n
  return dict(sorted(result.items()))


def summary(counts: Dict[str, int]) -> str:
  """'3 skipped (vqa_v2/corrupt_image 2, vqa_v2/missing_image 1)', or '' for none."""
  if not counts:
    return ""
  parts = ", ".join(f"{k} {v}" for k, v in counts.items())
  return f"{sum(counts.values())} skipped ({parts})"


def image_ok(data: bytes) -> bool:
  """True if `data` decodes as an image (PIL reads the whole file, not just the header)."""
  if not data:
    return False
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()
    return True
  except Exception:  # pylint: disable=broad-except  (any decoder failure means corrupt)
    return False


def text_ok(text) -> bool:
  """True for a caption/question with a non-space character."""
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  return bool(text and text.strip())


def filter_examples(dataset, predicate: Callable[[dict], Optional[str]],
                    counter: SkipCounter, where_key: Optional[str] = None):
  """Drops elements for which `predicate(numpy_example)` returns a reason string.

  The predicate runs in Python (`tf.numpy_function`) on the example's numpy values and
  returns None to keep it. `where_key` names a feature (file name, key) quoted in the
  warning.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  keys = sorted(dataset.element_spec)

  def check(*values):
    example = dict(zip(keys, values))
    reason = predicate(example)
    if reason is None:
      return True
    where = example.get(where_key, b"?") if where_key else b"?"
    where = where.decode("utf-8", "replace") if isinstance(where, bytes) else str(where)
    counter.skip(reason, where)
    return False

  def keep(example):
    ok = tf.numpy_function(check, [example[k] for k in keys], tf.bool, stateful=False)
    return tf.ensure_shape(ok, [])

  return dataset.filter(keep)
