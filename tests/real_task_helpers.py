"""Helpers for the tests of the real-data Tasks (tasks/pretrain.py, tasks/downstream.py).

The T5 SentencePiece model is not available offline: `bind_test_settings` points the
binding `t5_vocabulary.path` at the shapes SentencePiece model (byte fallback, so any
text round-trips) and shrinks images to 16x16.
"""
import gin
import numpy as np
import seqio

from vlpretrain.data import vocab

IMAGE_SIZE = 16
LENGTHS = {"inputs": 64, "targets": 32}


def bind_test_settings(*bindings: str) -> None:
  gin.parse_config([f"t5_vocabulary.path = '{vocab.shapes_model_file()}'",
                    f"real_data_settings.image_size = {IMAGE_SIZE}", *bindings])


def examples(name: str, split: str = "train", n: int = 100):
  """(inputs text, targets text, example) of the Task's first n examples, in order;
  checks the tokens decode to the text with one EOS and the image's shape and range."""
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False, num_epochs=1)
  v = task.output_features["targets"].vocabulary
  out = []
  for ex in ds.take(n).as_numpy_iterator():
    texts = []
    for key in ("inputs", "targets"):
      tokens = ex[key].tolist()
      assert tokens[-1] == 1 and 1 not in tokens[:-1], tokens
      texts.append(v.decode(tokens[:-1]))
      assert texts[-1] == ex[f"{key}_pretokenized"].decode()
    image = ex["image"]
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.float32
    assert -1 <= image.min() <= image.max() <= 1
    out.append((texts[0], texts[1], ex))
  return out


def texts(name: str, split: str = "train", n: int = 100):
  return [(i, t) for i, t, _ in examples(name, split, n)]
