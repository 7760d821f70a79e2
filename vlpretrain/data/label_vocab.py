"""Class labels as a seqio vocabulary, and the word starts of a token vocabulary.

`LabelVocabulary(labels)` encodes a label string to its one id (its index) and decodes
an id back, so a classification Task is an ordinary seqio Task whose `targets` feature
is one token: a classifier's predicted id decodes to the label text, and the Task's
string metric_fns (exact match, VQA accuracy over the answer vocabulary) score it, in
`vlpretrain eval` and the trainer's evals alike. A label outside the list encodes to
-1, which classification losses ignore and which decodes to ''. No EOS, no padding
ids: ids are exactly 0 .. len(labels) - 1.

`word_starts(vocabulary, size)` marks the ids that begin a word (SentencePiece pieces
starting with '▁'), for whole-word masking; every id counts as a word start for a
vocabulary that is not SentencePiece.
"""
from typing import Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

UNKNOWN = -1


class LabelVocabulary(seqio.Vocabulary):
  """`labels[i]` <-> id i (see the module docstring)."""

  def __init__(self, labels: Sequence[str]):
    labels = tuple(labels)
    if len(set(labels)) != len(labels) or not labels:
      raise ValueError(f"LabelVocabulary needs distinct, non-empty labels; got {labels}.")
    self.labels = labels
    self._index = {label: i for i, label in enumerate(labels)}
    super().__init__(extra_ids=0)

  @property
  def eos_id(self):
    return None

  @property
  def unk_id(self):
    return None

  @property
  def _base_vocab_size(self) -> int:
    return len(self.labels)

  def _encode(self, s):
    return [self._index.get(s, UNKNOWN)]

  def _decode(self, ids):
    ids = [int(i) for i in ids]
    return " ".join(self.labels[i] for i in ids if 0 <= i < len(self.labels))

  def _table(self):
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(list(self.labels),
                                            np.arange(len(self.labels), dtype=np.int32)),
        default_value=UNKNOWN)

  def _encode_tf(self, s):
    return tf.reshape(self._table().lookup(s), [1])

  def _decode_tf(self, ids):
    labels = tf.constant(("",) + self.labels)
    ids = tf.where((ids >= 0) & (ids < len(self.labels)), ids + 1, 0)
    return tf.strings.reduce_join(tf.gather(labels, ids), axis=-1, separator=" ")

  def decode(self, ids):  # seqio's would drop ids after an EOS; there is none.
    return self._decode(ids)

  def __eq__(self, other):
    return isinstance(other, LabelVocabulary) and other.labels == self.labels

  def __hash__(self):
    return hash(self.labels)

  def __repr__(self):
    return f"LabelVocabulary({len(self.labels)} labels)"


def word_starts(vocabulary: seqio.Vocabulary, size: int) -> np.ndarray:
  """(size,) bool: True for ids that begin a word; True beyond the vocabulary."""
  starts = np.ones((size,), bool)
  sp = getattr(vocabulary, "vocabulary", vocabulary)  # A DeferredVocabulary's real one.
  if not isinstance(sp, seqio.SentencePieceVocabulary):
    return starts
  processor = sp.tokenizer
  for i in range(min(processor.get_piece_size(), size)):
    piece = processor.id_to_piece(i)
    # Pieces continuing a word have no '▁'; control / byte pieces count as starts.
    starts[i] = (piece.startswith("\u2581") or processor.is_control(i)
                 or processor.is_byte(i) or processor.is_unknown(i))
  return starts


@gin.configurable
def of_task(name: str) -> LabelVocabulary:
  """The LabelVocabulary of Task `name`'s 'targets' (gin: `@label_vocab.of_task()` with
  `of_task.name = %MIXTURE_OR_TASK_NAME`); a clear error for a Task that has none."""
  import vlpretrain.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  task = seqio.get_mixture_or_task(name)
  tasks = getattr(task, "tasks", [task])
  vocabularies = {t.output_features["targets"].vocabulary for t in tasks
                  if "targets" in t.output_features}
  if len(vocabularies) != 1 or not isinstance(next(iter(vocabularies)), LabelVocabulary):
    raise ValueError(f"Task {name!r} has no single LabelVocabulary 'targets' feature: a "
                     "classifier needs a classification Task (e.g. 'easy_vqa_classes').")
  return next(iter(vocabularies))
