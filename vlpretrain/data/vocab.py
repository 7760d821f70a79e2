"""Vocabularies: the shapes world's own SentencePiece model, and the standard T5 one.

`shapes_vocabulary()` trains a small BPE SentencePiece model on all the text the shapes
world produces (captions, labels, questions, answers; the GQA-style questions,
entailment hypotheses, referring expressions with their box numbers and video questions
of `shapes_downstream`) plus the task prompts in PROMPTS, with T5's ids (pad 0, eos 1,
unk 2, no bos) and byte fallback (any text encodes). Every word of the world is one
piece. The model is trained on first use, written
atomically to <cache_dir>/vocab/shapes_spm_<hash>.model and reused; the hash covers the
corpus and the options, so adding a prompt below makes a new model. Training is
single-threaded on a fixed corpus: the same bytes every time.

In gin (dynamic registration, as in t5x): `from __gin__ import dynamic_registration`,
`from vlpretrain.data import vocab`, then `@vocab.shapes_vocabulary()` or
`@vocab.t5_vocabulary()`. `t5_vocabulary` is also gin-configurable by name
(`t5_vocabulary.path = '/data/spm/cc_all.32000.model'`), and the real-data Tasks
(tasks/real_data.py) hold a `DeferredVocabulary` that calls it on first use, so a
binding parsed after `import vlpretrain.tasks` still applies.
"""
import functools
import hashlib
import io
import json
import os
import tempfile
from typing import Callable, List, Optional, Tuple

import gin
import seqio
import sentencepiece as spm
import tensorflow as tf

from vlpretrain import errors
from vlpretrain.data import shapes
from vlpretrain.data import shapes_downstream

T5_VOCAB = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
# Task prompts and fixed phrases that use the shapes vocabulary. Add new ones here.
PROMPTS = ("caption:", "question:", "complete:", "mlm:", "match:", "hypothesis:",
           "refer:", "list all objects", "none")
_PROMPT_REPEATS = 100  # so that BPE merges prompts into whole words, like the rest.
# 1024: room for the downstream stand-ins' words and the box numbers 0..99 as whole
# pieces next to the 256 byte pieces.
_OPTIONS = dict(model_type="bpe", vocab_size=1024, hard_vocab_limit=False,
                pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True,
                character_coverage=1.0, num_threads=1, input_sentence_size=0,
                shuffle_input_sentence=False, minloglevel=2)


@functools.lru_cache(maxsize=1)
def _corpus() -> Tuple[Tuple[str, ...], str]:
  """The training sentences and a hash of them and of the options."""
  text = (shapes.all_text() + shapes_downstream.all_text() +
          [p for p in PROMPTS for _ in range(_PROMPT_REPEATS)])
  digest = hashlib.sha256(json.dumps([text, _OPTIONS]).encode()).hexdigest()
  return tuple(text), digest[:16]


def train_model(sentences: List[str]) -> bytes:
  """Serialized SentencePiece model trained on `sentences` with _OPTIONS."""
  out = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences),
                                 model_writer=out, **_OPTIONS)
  return out.getvalue()


def shapes_model_file(cache_dir: Optional[str] = None) -> str:
  """Path of the shapes SentencePiece model in `cache_dir`, trained if missing."""
  text, digest = _corpus()
  directory = os.path.join(cache_dir or shapes.default_cache_dir(), "vocab")
  path = os.path.join(directory, f"shapes_spm_{digest}.model")
  if not os.path.exists(path):
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".shapes_spm.tmp-", dir=directory)
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(train_model(list(text)))
      os.replace(tmp, path)  # Atomic: readers see no file or a whole one.
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  return path


class ShapesVocabulary(seqio.SentencePieceVocabulary):
  """seqio.SentencePieceVocabulary whose model file is found or trained on first use.

  Creating it (e.g. when Tasks register at import) touches no file; the cache dir is
  read when the model is first needed, after gin bindings are applied.
  """

  def __init__(self, extra_ids: int = 100, cache_dir: Optional[str] = None):
    super().__init__("", extra_ids=extra_ids)
    self._cache_dir = cache_dir

  def _model_context(self):
    if self._model is None:
      cache_dir = self._cache_dir or shapes.shapes_settings().resolved_cache_dir()
      self._sentencepiece_model_file = shapes_model_file(cache_dir)
    return super()._model_context()

  @property
  def sentencepiece_model_file(self) -> str:
    self._model_context()
    return self._sentencepiece_model_file

  def __eq__(self, other):
    return (isinstance(other, ShapesVocabulary) and
            (self._extra_ids, self._cache_dir) == (other._extra_ids, other._cache_dir))


def shapes_vocabulary(extra_ids: int = 100,
                      cache_dir: Optional[str] = None) -> seqio.SentencePieceVocabulary:
  """The shapes world's vocabulary (about 512 pieces + extra_ids sentinels)."""
  return ShapesVocabulary(extra_ids=extra_ids, cache_dir=cache_dir)


@gin.configurable
def t5_vocabulary(path: str = T5_VOCAB,
                  extra_ids: int = 100) -> seqio.SentencePieceVocabulary:
  """The standard T5 SentencePiece vocabulary; `path` is only read when first used.

  One object per (path, extra_ids), so repeated calls share the loaded model.
  """
  return _sentencepiece_vocabulary(path, extra_ids)


class _NamedPathSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's vocabulary, with a missing or unreadable model file reported as the gin
  binding to fix rather than as the file system's error (a network error for gs://)."""

  def __init__(self, path: str, extra_ids: int, binding: str):
    super().__init__(path, extra_ids=extra_ids)
    self._binding = binding

  def _model_context(self):
    try:
      return super()._model_context()
    except (tf.errors.OpError, OSError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise errors.MissingPathError(
          f"Cannot read the SentencePiece model {self.sentencepiece_model_file!r} "
          f"({first}): bind {self._binding} to a local copy of the T5 vocabulary "
          "(sentencepiece.model of gs://t5-data/vocabs/cc_all.32000/).") from None


@functools.lru_cache(maxsize=8)
def _sentencepiece_vocabulary(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  return _NamedPathSentencePieceVocabulary(path, extra_ids, "vocab.t5_vocabulary.path")


class DeferredVocabulary(seqio.Vocabulary):
  """A vocabulary that asks `factory()` for the real one at every use (not at creation).

  Tasks registered at import hold one, so gin bindings parsed later (e.g.
  `t5_vocabulary.path`) still decide which vocabulary they tokenize with. The factory
  should be cheap to call again (t5_vocabulary caches its objects).
  """

  def __init__(self, factory: Callable[[], seqio.Vocabulary], name: str = ""):
    self._factory = factory
    self._name = name or getattr(factory, "__name__", "vocabulary")
    super().__init__(extra_ids=0)

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    return self._factory()

  # Everything below delegates to the real vocabulary.
  @property
  def eos_id(self) -> Optional[int]:
    return self.vocabulary.eos_id

  @property
  def pad_id(self) -> int:
    return self.vocabulary.pad_id

  @property
  def unk_id(self) -> Optional[int]:
    return self.vocabulary.unk_id

  @property
  def extra_ids(self) -> int:
    return self.vocabulary.extra_ids

  @property
  def vocab_size(self) -> int:
    return self.vocabulary.vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.vocabulary.vocab_size - self.vocabulary.extra_ids

  def encode(self, s):
    return self.vocabulary.encode(s)

  def decode(self, ids):
    return self.vocabulary.decode(ids)

  def encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self.vocabulary.encode_tf(s)

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return self.vocabulary.decode_tf(ids)

  def _encode(self, s):
    return self.vocabulary.encode(s)

  def _decode(self, ids):
    return self.vocabulary.decode(ids)

  def _encode_tf(self, s):
    return self.vocabulary.encode_tf(s)

  def _decode_tf(self, ids):
    return self.vocabulary.decode_tf(ids)

  def __eq__(self, other):
    return isinstance(other, DeferredVocabulary) and self._factory == other._factory

  def __hash__(self):
    return hash(self._factory)

  def __repr__(self):
    return f"DeferredVocabulary({self._name})"
