"""Vocabularies: the shapes world's own SentencePiece model, and the standard T5 one.

`shapes_vocabulary()` trains a small BPE SentencePiece model on all the text the shapes
world produces (captions, labels, questions, answers) plus the task prompts in PROMPTS,
with T5's ids (pad 0, eos 1, unk 2, no bos) and byte fallback (any text encodes).
Every word of the world is one piece. The model is trained on first use, written
atomically to <cache_dir>/vocab/shapes_spm_<hash>.model and reused; the hash covers the
corpus and the options, so adding a prompt below makes a new model. Training is
single-threaded on a fixed corpus: the same bytes every time.

In gin (dynamic registration, as in t5x): `from __gin__ import dynamic_registration`,
`from vlpretrain.data import vocab`, then `@vocab.shapes_vocabulary()` or
`@vocab.t5_vocabulary()`.
"""
import functools
import hashlib
import io
import json
import os
import tempfile
from typing import List, Optional, Tuple

import seqio
import sentencepiece as spm

from vlpretrain.data import shapes

T5_VOCAB = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
# Task prompts that use the shapes vocabulary. Add new ones here.
PROMPTS = ("caption:", "question:")
_PROMPT_REPEATS = 100  # so that BPE merges prompts into whole words, like the rest.
_OPTIONS = dict(model_type="bpe", vocab_size=512, hard_vocab_limit=False,
                pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=True,
                character_coverage=1.0, num_threads=1, input_sentence_size=0,
                shuffle_input_sentence=False, minloglevel=2)


@functools.lru_cache(maxsize=1)
def _corpus() -> Tuple[Tuple[str, ...], str]:
  """The training sentences and a hash of them and of the options."""
  text = shapes.all_text() + [p for p in PROMPTS for _ in range(_PROMPT_REPEATS)]
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


def t5_vocabulary(path: str = T5_VOCAB,
                  extra_ids: int = 100) -> seqio.SentencePieceVocabulary:
  """The standard T5 SentencePiece vocabulary; `path` is only read when first used."""
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
