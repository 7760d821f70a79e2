"""Image ops in TensorFlow: decode, resize, scale to [-1, 1]; eager or in tf.data.

The model takes images as float32 (H, W, 3) in [-1, 1] (design.md "Model"), with the
same static shape in every example so batches stack. Two ways to get there:

  resize="stretch" (default)  bilinear resize to (H, W), ignoring the aspect ratio.
  resize="fit"                aspect-preserving: the **longer** side becomes S (so
                              nothing is cropped), the image sits in the **top-left**
                              corner of an S x S square and the rest is `pad_value`
                              (in [-1, 1]; 0 = mid grey). Top-left keeps box
                              coordinates simple: see `fit_boxes`. Needs a square size.

An optional augmentation (vlpretrain.data.augment.rand_augment) runs on the resized
image in [0, 255], before padding, with a per-example stateless seed.
"""
from typing import Callable, Optional, Sequence, Union

import gin
import tensorflow as tf

from vlpretrain.data import augment as _augment  # Registers @augment.rand_augment (gin).

del _augment

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
  """Bilinear resize (antialiased when shrinking) to `size` = S or (H, W); float32.

  An image already of that size is returned as is (the resize would be the exact
  identity, and it costs more than the PNG decode at 224 px: tools/bench_input.py).
  """
  h, w = _hw(size)
  image = tf.cast(image, tf.float32)
  shape = tf.shape(image)
  image = tf.cond(
      tf.logical_and(tf.equal(shape[0], h), tf.equal(shape[1], w)), lambda: image,
      lambda: tf.image.resize(image, (h, w), method="bilinear", antialias=True))
  return tf.ensure_shape(image, (h, w, image.shape[-1]))


def fit_size(height: tf.Tensor, width: tf.Tensor, size: int):
  """(h, w) with the longer side `size`, the aspect ratio kept (rounded, >= 1)."""
  height, width = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  scale = size / tf.maximum(height, width)
  as_int = lambda v: tf.maximum(tf.cast(tf.round(v * scale), tf.int32), 1)
  return as_int(height), as_int(width)


def resize_fit(image: tf.Tensor, size: int) -> tf.Tensor:
  """Aspect-preserving bilinear resize: the longer side becomes `size`; float32."""
  size = _square(size)
  shape = tf.shape(image)
  h, w = fit_size(shape[0], shape[1], size)
  return tf.image.resize(tf.cast(image, tf.float32), tf.stack([h, w]),
                         method="bilinear", antialias=True)


def pad_to_square(image: tf.Tensor, size: int, pad_value: float = 0.0) -> tf.Tensor:
  """Pads an (h, w, C) image with h, w <= size at the bottom and right to (size, size)."""
  size = _square(size)
  shape = tf.shape(image)
  image = tf.pad(image, [[0, size - shape[0]], [0, size - shape[1]], [0, 0]],
                 constant_values=tf.cast(pad_value, image.dtype))
  return tf.ensure_shape(image, (size, size, image.shape[-1]))


def fit_boxes(boxes: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
              size: int) -> tf.Tensor:
  """Boxes [..., 4] (ymin, xmin, ymax, xmax) normalised to the original image ->
  normalised to the padded square of resize="fit" (y scaled by h/S, x by w/S)."""
  h, w = fit_size(height, width, _square(size))
  sy, sx = tf.cast(h, tf.float32) / size, tf.cast(w, tf.float32) / size
  return tf.cast(boxes, tf.float32) * tf.stack([sy, sx, sy, sx])


def _square(size: Size) -> int:
  h, w = _hw(size)
  if h != w:
    raise ValueError(f"resize='fit' pads to a square; got size {size!r}. Use one int "
                     "(images.preprocess_dataset / the task's image size).")
  return h


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
  """[0, 255] -> [-1, 1] (clipped)."""
  return tf.clip_by_value(tf.cast(image, tf.float32) / 127.5 - 1.0, -1.0, 1.0)


RESIZE_METHODS = ("stretch", "fit")
Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (image [0, 255], seed) -> image.


def _check_options(resize_method: str, pad_value: float):
  if resize_method not in RESIZE_METHODS:
    raise ValueError(f"images.preprocess_dataset.resize={resize_method!r} is not "
                     f"supported; use one of {RESIZE_METHODS}.")
  if not -1.0 <= pad_value <= 1.0:
    raise ValueError(f"images.preprocess_dataset.pad_value={pad_value} must lie in "
                     "[-1, 1] (the model's image range).")


def preprocess(data: tf.Tensor, size: Size, resize_method: str = "stretch",
               pad_value: float = 0.0, augment: Optional[Augment] = None,
               seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Encoded image bytes -> float32 (H, W, 3) in [-1, 1] (see the module docstring).

  augment: called as augment(image in [0, 255], seed) after the resize; needs `seed`
  (int64 [2], e.g. `example_seed(data)`).
  """
  _check_options(resize_method, pad_value)
  image = decode(data)
  image = resize(image, size) if resize_method == "stretch" else resize_fit(image, size)
  if augment is not None:
    if seed is None:
      raise ValueError("An augmentation needs a per-example seed; got seed=None.")
    image = augment(image, seed)
  image = to_unit_range(image)
  if resize_method == "fit":
    image = pad_to_square(image, _square(size), pad_value)
  return image


def example_seed(data: tf.Tensor, seed: int = 0) -> tf.Tensor:
  """int64 [2] stateless seed of one example: (seed, fingerprint of its image bytes)."""
  return tf.stack([tf.constant(seed, tf.int64),
                   tf.strings.to_hash_bucket_fast(data, 2**62)])


@gin.configurable(denylist=["dataset", "size"])
def preprocess_dataset(dataset: tf.data.Dataset, size: Size, key: str = "image",
                       resize: str = "stretch", pad_value: float = 0.0,
                       augment: Optional[Augment] = None,
                       augment_seed: int = 0) -> tf.data.Dataset:
  """seqio-style preprocessor: replaces the encoded `key` feature by `preprocess`.

  Gin-configurable for every Task that decodes its images here (the shapes Tasks,
  easy_vqa): `images.preprocess_dataset.resize = 'fit'`, `.pad_value = -1.0`,
  `.augment = @augment.rand_augment` (seed per example: `example_seed(bytes,
  augment_seed)`). Preprocessors do not know the split, so a binding applies to
  every split read in that process: bind `augment` in training configs only, and note
  that the trainer's own train-eval datasets are then augmented too.
  Runs with num_parallel_calls=AUTOTUNE; results do not depend on it.
  """
  _check_options(resize, pad_value)

  def fn(ex):
    if key not in ex:
      raise ValueError(f"No {key!r} feature to preprocess; got {sorted(ex)}.")
    seed = example_seed(ex[key], augment_seed) if augment is not None else None
    return {**ex, key: preprocess(ex[key], size, resize, pad_value, augment, seed)}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
