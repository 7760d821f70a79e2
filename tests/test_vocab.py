"""The shapes SentencePiece vocabulary and the T5 vocabulary handle."""
import os

import gin
import numpy as np
import seqio

from vlpretrain.data import shapes
from vlpretrain.data import vocab
import tensorflow as tf


def test_ids_size_and_exact_round_trip():
  v = vocab.shapes_vocabulary()
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  assert v.tokenizer.bos_id() == -1
  assert v.vocab_size == 961 + 100  # BPE pieces (incl. 256 bytes) + sentinels.
  assert v.encode("<extra_id_0>") == [1060]  # seqio's T5 sentinels, last first.
  for i in range(200):
    s = shapes.make_scene(0, "validation", i, draw=False)
    for text in (s.caption, *s.labels, *s.questions, *s.answers,
                 "question: " + s.questions[0], "caption:"):
      ids = v.encode(text)
      assert 2 not in ids, text  # No unknown pieces.
      assert v.decode(ids) == text
  # Every word of the world is one piece; punctuation is its own piece.
  caption = "a small red circle, a large blue rectangle and a small green cross"
  assert len(v.encode(caption)) == 14
  assert len(v.encode("question: is there an orange diamond?")) == 8
  assert len(v.encode("caption:")) == 2
  # Byte fallback: unseen text still round-trips.
  assert v.decode(v.encode("Hello, 42 ümlauts")) == "Hello, 42 ümlauts"
  # TF (tokenize preprocessor) and Python agree.
  text = shapes.make_scene(0, "train", 1, draw=False).caption
  np.testing.assert_array_equal(v.encode_tf(tf.constant(text)).numpy(), v.encode(text))


def test_model_is_deterministic_cached_and_lazy(tmp_path):
  a = vocab.shapes_model_file(str(tmp_path / "a"))
  b = vocab.shapes_model_file(str(tmp_path / "b"))
  assert open(a, "rb").read() == open(b, "rb").read()
  mtime = os.path.getmtime(a)
  assert vocab.shapes_model_file(str(tmp_path / "a")) == a
  assert os.path.getmtime(a) == mtime
  assert os.listdir(os.path.dirname(a)) == [os.path.basename(a)]  # No temp files.
  lazy = vocab.shapes_vocabulary(cache_dir=str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "c")  # Nothing happens until first use.
  assert lazy.encode("a red circle") == vocab.shapes_vocabulary().encode("a red circle")
  assert lazy.sentencepiece_model_file.startswith(str(tmp_path / "c"))
  assert lazy == vocab.shapes_vocabulary(cache_dir=str(tmp_path / "c"))


def test_default_cache_dir_is_the_env_var(vlpretrain_cache):
  v = vocab.shapes_vocabulary()
  assert v.sentencepiece_model_file.startswith(vlpretrain_cache)


def test_t5_vocabulary_is_lazy():
  v = vocab.t5_vocabulary()
  assert isinstance(v, seqio.SentencePieceVocabulary)
  assert v.sentencepiece_model_file == vocab.T5_VOCAB
  assert v.extra_ids == 100
  assert vocab.t5_vocabulary("/some/path.model").sentencepiece_model_file == (
      "/some/path.model")


def uses_vocab(vocabulary=None):
  return vocabulary


def test_usable_from_gin():
  try:
    gin.parse_config(f"""
        from __gin__ import dynamic_registration
        from vlpretrain.data import vocab
        import {__name__}
        {__name__}.uses_vocab.vocabulary = @vocab.shapes_vocabulary()
    """)
    v = gin.get_configurable(uses_vocab)()
    assert isinstance(v, vocab.ShapesVocabulary) and v.extra_ids == 100
    text = "what color is the circle?"
    assert v.decode(v.encode(text)) == text
  finally:
    gin.clear_config()
