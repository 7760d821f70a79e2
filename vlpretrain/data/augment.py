"""RandAugment-style training augmentation in pure TensorFlow, deterministic per example.

RandAugment (Cubuk et al., 2020): apply `num_ops` operations, each drawn uniformly (with
replacement) from a fixed list, all at one global `magnitude` M in [0, 10]; the sign of
signed ops (brighter/darker, left/right, ...) is drawn per op. Here every draw comes
from `tf.random.stateless_*` with an int64 [2] seed that `images.preprocess_dataset`
derives from the example itself (its encoded image bytes) and a fixed integer, like the
text preprocessors (vlpretrain.data.preprocessors): the same example is augmented the
same way in every epoch, on every host and at any num_parallel_calls.

Images are float32 (H, W, 3) in [0, 255] (after the resize, before scaling to [-1, 1])
and stay in that range. Every op is the identity at magnitude 0. At M = 10:

  photometric (PHOTOMETRIC_OPS, the default list)
    brightness    x * f, f = 1 +- 0.9 (PIL ImageEnhance.Brightness)
    contrast      mean + f (x - mean), mean of the grey image, f = 1 +- 0.9
    saturation    grey + f (x - grey), f = 1 +- 0.9 (PIL ImageEnhance.Color)
    hue           hue rotated by +-0.25 of the colour circle (tf.image.adjust_hue)
    posterize     drops the round(4 m) lowest of the 8 bits (m = M / 10)
    solarize      inverts (255 - x) the values >= 256 (1 - m)
    autocontrast  per channel stretch to [0, 255], blended with the image by m
    equalize      per channel histogram equalisation, blended with the image by m
  geometric (GEOMETRIC_OPS; `geometric=True` adds them)
    translate_x, translate_y   +-0.3 of the width / height
    shear_x, shear_y           shear factor +-0.3, about the image centre
    rotate                     +-30 degrees about the image centre
  Geometric ops fill uncovered pixels with `fill_value` (127.5 = 0 in [-1, 1]) and
  use bilinear sampling (tf.raw_ops.ImageProjectiveTransformV3; tensorflow-addons is
  not used).

Geometric ops move the content, so boxes and referring expressions with positions
("the left circle") would no longer match the image: they are **off by default**; turn
them on only for tasks without boxes or spatial words. Likewise `hue` (and strong
`saturation`) change colour names: a "green circle" may come out pink, so for text
that names colours (the shapes world's captions and questions, VQA colour questions)
choose the ops with `augment.rand_augment.ops = [...]` and leave those out. Preprocessors do not see the
split, so bind augmentation only in training configs (see images.preprocess_dataset).

Gin: `images.preprocess_dataset.augment = @augment.rand_augment` with
`augment.rand_augment.num_ops = 2`, `augment.rand_augment.magnitude = 9`.
"""
import math
from typing import Callable, Dict, Optional, Sequence

import gin
import tensorflow as tf

MAX_MAGNITUDE = 10.0
_FACTOR, _HUE, _TRANSLATE, _SHEAR, _DEGREES = 0.9, 0.25, 0.3, 0.3, 30.0


def _clip(x):
  return tf.clip_by_value(x, 0.0, 255.0)


def _grey(x):
  return tf.image.rgb_to_grayscale(x)  # (H, W, 1), ITU-R 601 weights.


# Photometric ops: (image, m in [0, 1], sign +-1) -> image.
def brightness(x, m, sign):
  return _clip(x * (1.0 + sign * _FACTOR * m))


def contrast(x, m, sign):
  mean = tf.reduce_mean(_grey(x))
  return _clip(mean + (1.0 + sign * _FACTOR * m) * (x - mean))


def saturation(x, m, sign):
  grey = _grey(x)
  return _clip(grey + (1.0 + sign * _FACTOR * m) * (x - grey))


def hue(x, m, sign):
  return _clip(tf.image.adjust_hue(x / 255.0, sign * _HUE * m) * 255.0)


def posterize(x, m, sign):
  del sign
  step = tf.pow(2.0, tf.round(4.0 * m))
  return tf.where(step > 1.0, tf.floor(x / step) * step, x)


def solarize(x, m, sign):
  del sign
  return tf.where(x >= 256.0 * (1.0 - m), 255.0 - x, x)


def autocontrast(x, m, sign):
  del sign
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  stretched = tf.where(hi > lo, (x - lo) * 255.0 / tf.maximum(hi - lo, 1e-6), x)
  return x + m * (stretched - x)


def _equalize_channel(c):
  """PIL ImageOps.equalize of one channel (values rounded to 0..255)."""
  c = tf.cast(tf.clip_by_value(tf.round(c), 0, 255), tf.int32)
  hist = tf.math.bincount(tf.reshape(c, [-1]), minlength=256, maxlength=256)
  last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))  # count of the top value.
  step = (tf.reduce_sum(hist) - last) // 255
  lut = tf.clip_by_value((tf.cumsum(hist) - hist + step // 2) // tf.maximum(step, 1),
                         0, 255)
  out = tf.gather(lut, c)
  return tf.cast(tf.where(step > 0, out, c), tf.float32)


def equalize(x, m, sign):
  del sign
  eq = tf.stack([_equalize_channel(x[..., i]) for i in range(3)], axis=-1)
  return x + m * (eq - x)


# Geometric ops: an affine map from output pixel (x, y) to input pixel.
def _affine(x, a, fill_value):
  """Samples x at A [col, row, 1] for each output pixel; A is [a0, a1, a2, b0, b1, b2]."""
  transform = tf.concat([tf.cast(tf.stack(a), tf.float32), tf.zeros([2])], 0)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None], transforms=transform[None], output_shape=tf.shape(x)[:2],
      fill_value=tf.cast(fill_value, tf.float32), interpolation="BILINEAR",
      fill_mode="CONSTANT")
  return out[0]


def _centre(x):
  shape = tf.cast(tf.shape(x), tf.float32)
  return (shape[1] - 1) / 2, (shape[0] - 1) / 2, shape[1], shape[0]


def translate_x(x, m, sign, fill_value=127.5):
  _, _, w, _ = _centre(x)
  return _affine(x, [1., 0., -sign * _TRANSLATE * m * w, 0., 1., 0.], fill_value)


def translate_y(x, m, sign, fill_value=127.5):
  _, _, _, h = _centre(x)
  return _affine(x, [1., 0., 0., 0., 1., -sign * _TRANSLATE * m * h], fill_value)


def shear_x(x, m, sign, fill_value=127.5):
  _, cy, _, _ = _centre(x)
  s = sign * _SHEAR * m
  return _affine(x, [1., s, -s * cy, 0., 1., 0.], fill_value)


def shear_y(x, m, sign, fill_value=127.5):
  cx, _, _, _ = _centre(x)
  s = sign * _SHEAR * m
  return _affine(x, [1., 0., 0., s, 1., -s * cx], fill_value)


def rotate(x, m, sign, fill_value=127.5):
  cx, cy, _, _ = _centre(x)
  theta = sign * _DEGREES * m * math.pi / 180.0
  c, s = tf.cos(theta), tf.sin(theta)
  return _affine(x, [c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy],
                 fill_value)


PHOTOMETRIC_OPS: Dict[str, Callable] = {
    "brightness": brightness, "contrast": contrast, "saturation": saturation,
    "hue": hue, "posterize": posterize, "solarize": solarize,
    "autocontrast": autocontrast, "equalize": equalize}
GEOMETRIC_OPS: Dict[str, Callable] = {
    "translate_x": translate_x, "translate_y": translate_y, "shear_x": shear_x,
    "shear_y": shear_y, "rotate": rotate}
ALL_OPS = {**PHOTOMETRIC_OPS, **GEOMETRIC_OPS}


def op_list(ops: Optional[Sequence[str]] = None, geometric: bool = False):
  """The (name, fn) pairs drawn from: `ops` if given, else photometric (+ geometric)."""
  if ops is None:
    ops = list(PHOTOMETRIC_OPS) + (list(GEOMETRIC_OPS) if geometric else [])
  unknown = [o for o in ops if o not in ALL_OPS]
  if unknown or not ops:
    raise ValueError(f"augment.rand_augment.ops={list(ops)!r}: unknown ops {unknown}; "
                     f"use a non-empty list of {list(ALL_OPS)}.")
  return [(o, ALL_OPS[o]) for o in ops]


def apply_op(name: str, image: tf.Tensor, magnitude: float, sign: float = 1.0,
             fill_value: float = 127.5) -> tf.Tensor:
  """One named op at `magnitude` in [0, 10] (for tests and single-op use)."""
  (_, fn), = op_list([name])
  m = tf.constant(magnitude / MAX_MAGNITUDE, tf.float32)
  kwargs = {"fill_value": fill_value} if name in GEOMETRIC_OPS else {}
  return fn(tf.cast(image, tf.float32), m, tf.constant(sign, tf.float32), **kwargs)


@gin.configurable
def rand_augment(image: tf.Tensor, seed: tf.Tensor, num_ops: int = 2,
                 magnitude: float = 9.0, geometric: bool = False,
                 ops: Optional[Sequence[str]] = None,
                 fill_value: float = 127.5) -> tf.Tensor:
  """`num_ops` random ops at `magnitude` (0..10) on a float (H, W, 3) image in [0, 255].

  seed: int32/int64 [2] for the stateless draws: op i uses fold_in(seed, i) for its op
  index and sign. Returns float32 in [0, 255], same shape.
  """
  if not 0.0 <= magnitude <= MAX_MAGNITUDE or num_ops < 0:
    raise ValueError(f"augment.rand_augment: need 0 <= magnitude <= {MAX_MAGNITUDE} and "
                     f"num_ops >= 0, got magnitude={magnitude}, num_ops={num_ops}.")
  chosen = op_list(ops, geometric)
  m = tf.constant(magnitude / MAX_MAGNITUDE, tf.float32)
  x = tf.cast(image, tf.float32)
  seed = tf.cast(seed, tf.int64)
  for i in range(num_ops):
    s = tf.random.experimental.stateless_fold_in(seed, i)
    index = tf.random.stateless_uniform([], s, 0, len(chosen), dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(s, 1)) < 0.5, -1.0, 1.0)
    branches = [
        (lambda fn=fn, name=name: fn(x, m, sign, fill_value=fill_value)
         if name in GEOMETRIC_OPS else fn(x, m, sign)) for name, fn in chosen]
    x = tf.ensure_shape(tf.switch_case(index, branches), image.shape)
  return x
