"""Image ops in TensorFlow: decode, resize, scale to [-1, 1]; eager or in tf.data.

The model takes images as float32 (H, W, 3) in [-1, 1].
"""
from typing import Sequence, Union

import tensorflow as tf

Size = Union[int, Sequence[int]]


def _hw(size: Size):
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  if h < 1 or w < 1:
    raise ValueError(f"Image size must be positive, got {size!r}.")
  return int(h), int(w)


def decode(data: tf.Tensor) -> tf.Tensor:
  """PNG/JPEG/GIF/BMP bytes -> float32 (H, W, 3) in [0, 255] (grey becomes RGB)."""
  image = tf.io.decode_image(data, channels=3, expand_animations=False)
  return tf.cast(image, tf.float32)


def resize(image: tf.Tensor, size: Size) -> tf.Tensor:
  """Bilinear resize (antialiased when shrinking) to `size` = S or (H, W); float32."""
  h, w = _hw(size)
  image = tf.image.resize(tf.cast(image, tf.float32), (h, w),
                          method="bilinear", antialias=True)
  return tf.ensure_shape(image, (h, w, image.shape[-1]))


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
  """[0, 255] -> [-1, 1] (clipped)."""
  return tf.clip_by_value(tf.cast(image, tf.float32) / 127.5 - 1.0, -1.0, 1.0)


def preprocess(data: tf.Tensor, size: Size) -> tf.Tensor:
  """Encoded image bytes -> float32 (H, W, 3) in [-1, 1]."""
  return to_unit_range(resize(decode(data), size))


def preprocess_dataset(dataset: tf.data.Dataset, size: Size,
                       key: str = "image") -> tf.data.Dataset:
  """seqio-style preprocessor: replaces the encoded `key` feature by `preprocess`."""
  def fn(ex):
    if key not in ex:
      raise ValueError(f"No {key!r} feature to preprocess; got {sorted(ex)}.")
    return {**ex, key: preprocess(ex[key], size)}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
