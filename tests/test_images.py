"""Image ops: aspect-preserving resize with padding, and the RandAugment-style ops,
eagerly and inside tf.data (parallel), with exact numbers."""
import io

import gin
import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

from vlpretrain.data import augment
from vlpretrain.data import images


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  PIL.Image.fromarray(array.astype(np.uint8)).save(out, format="PNG")
  return out.getvalue()


def _pattern(h, w, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


# ------------------------------------------------------------------ resize="fit"
def test_fit_wide_image_keeps_content_top_left_and_pads_the_rest():
  wide = _pattern(4, 8)  # 2:1, longer side already 8: the content is not resampled.
  out = images.preprocess(tf.constant(_png(wide)), 8, resize_method="fit",
                          pad_value=-0.5).numpy()
  assert out.shape == (8, 8, 3)
  np.testing.assert_allclose(out[:4], wide / 127.5 - 1.0, atol=1e-6)
  assert np.all(out[4:] == -0.5)


def test_fit_tall_image_shrinks_by_the_longer_side():
  tall = np.zeros((16, 8, 3), np.uint8)
  tall[..., 0] = 255  # Solid red, 1:2: becomes 8 x 4 in the left half.
  out = images.preprocess(tf.constant(_png(tall)), 8, resize_method="fit").numpy()
  np.testing.assert_allclose(out[:, :4], np.broadcast_to([1., -1., -1.], (8, 4, 3)),
                             atol=1e-6)
  assert np.all(out[:, 4:] == 0.0)  # Default pad value: 0 (mid grey).


def test_fit_sizes_and_boxes():
  sizes = [tuple(int(v) for v in images.fit_size(h, w, 224))
           for h, w in [(480, 640), (640, 480), (100, 100), (1, 1000), (300, 600)]]
  assert sizes == [(168, 224), (224, 168), (224, 224), (1, 224), (112, 224)]
  # A box over the whole 300x600 image covers the top half of the padded square.
  boxes = images.fit_boxes([[0., 0., 1., 1.], [0.5, 0.25, 1., 0.75]], 300, 600, 224)
  np.testing.assert_allclose(boxes.numpy(), [[0, 0, 0.5, 1], [0.25, 0.25, 0.5, 0.75]])


def test_stretch_is_unchanged_by_default():
  wide = _pattern(4, 8)
  stretched = images.preprocess(tf.constant(_png(wide)), (4, 8)).numpy()
  np.testing.assert_allclose(stretched, wide / 127.5 - 1.0, atol=1e-6)


def test_bad_options_name_the_binding():
  with pytest.raises(ValueError, match="images.preprocess_dataset.resize='crop'"):
    images.preprocess_dataset(tf.data.Dataset.range(1), 8, resize="crop")
  with pytest.raises(ValueError, match="pad_value=2"):
    images.preprocess_dataset(tf.data.Dataset.range(1), 8, pad_value=2)
  with pytest.raises(ValueError, match="pads to a square"):
    images.preprocess(tf.constant(_png(_pattern(4, 8))), (4, 8), resize_method="fit")
  with pytest.raises(ValueError, match="augment.rand_augment.ops"):
    augment.rand_augment(tf.zeros([4, 4, 3]), [0, 0], ops=["blur"])


# ---------------------------------------------------------------- augmentation
@pytest.mark.parametrize("name", sorted(augment.ALL_OPS))
def test_every_op_is_identity_at_magnitude_zero(name):
  x = tf.constant(_pattern(16, 12, seed=1) * 0.99 + 0.25, tf.float32)  # Non-integer.
  for sign in (-1.0, 1.0):
    out = augment.apply_op(name, x, 0.0, sign)
    np.testing.assert_allclose(out.numpy(), x.numpy(), atol=1e-4)


@pytest.mark.parametrize("name", sorted(augment.ALL_OPS))
def test_every_op_changes_the_image_at_full_magnitude_and_stays_in_range(name):
  # Low contrast, and >= 256 pixels (else PIL's equalize, copied here, does nothing).
  x = tf.constant(_pattern(32, 24, seed=2) * 0.4 + 50, tf.float32)
  out = augment.apply_op(name, x, 10.0, 1.0).numpy()
  assert out.shape == (32, 24, 3)
  assert out.min() >= 0.0 and out.max() <= 255.0
  assert np.abs(out - x.numpy()).mean() > 1.0


def test_op_values():
  x = tf.constant([[[10., 100., 200.], [0., 128., 255.]]])  # (1, 2, 3)
  # posterize M=10: 4 bits dropped (multiples of 16); solarize M=5: >= 128 inverted.
  np.testing.assert_array_equal(augment.apply_op("posterize", x, 10.).numpy(),
                                [[[0., 96., 192.], [0., 128., 240.]]])
  np.testing.assert_array_equal(augment.apply_op("solarize", x, 5.).numpy(),
                                [[[10., 100., 55.], [0., 127., 0.]]])
  np.testing.assert_allclose(augment.apply_op("brightness", x, 5., -1.).numpy(),
                             x.numpy() * 0.55, rtol=1e-6)
  # autocontrast M=10, per channel min -> 0 and max -> 255.
  np.testing.assert_allclose(augment.apply_op("autocontrast", x, 10.).numpy(),
                             [[[255., 0., 0.], [0., 255., 255.]]], atol=1e-4)
  # translate_x by 0.3 * 10 px = 3 px to the right, filled with 127.5.
  img = tf.constant(_pattern(4, 10, seed=3), tf.float32)
  out = augment.apply_op("translate_x", img, 10.).numpy()
  np.testing.assert_array_equal(out[:, 3:], img.numpy()[:, :7])
  assert np.all(out[:, :3] == 127.5)


def test_equalize_matches_pil():
  import PIL.ImageOps  # pylint: disable=g-import-not-at-top
  x = np.random.RandomState(4).randint(40, 120, (20, 20, 3)).astype(np.uint8)
  expected = np.asarray(PIL.ImageOps.equalize(PIL.Image.fromarray(x)), np.float32)
  np.testing.assert_array_equal(
      augment.apply_op("equalize", tf.constant(x, tf.float32), 10.).numpy(), expected)


def _augment(x, seed, **kwargs):
  return augment.rand_augment(tf.constant(x, tf.float32), tf.constant(seed, tf.int64),
                              **kwargs).numpy()


def test_rand_augment_is_deterministic_per_seed_and_differs_across_seeds():
  x = _pattern(16, 16, seed=5)
  a = _augment(x, [0, 1], num_ops=2, magnitude=9, geometric=True)
  np.testing.assert_array_equal(a, _augment(x, [0, 1], num_ops=2, magnitude=9,
                                            geometric=True))
  outs = [_augment(x, [0, s], num_ops=2, magnitude=9, geometric=True) for s in range(8)]
  distinct = {o.tobytes() for o in outs}
  assert len(distinct) == 8
  assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
  np.testing.assert_array_equal(_augment(x, [0, 1], num_ops=3, magnitude=0,
                                         geometric=True).round(3), x)
  np.testing.assert_array_equal(_augment(x, [0, 1], num_ops=0), x)


def test_augmented_dataset_is_deterministic_in_parallel_and_in_range(clean_gin):
  pngs = [_png(_pattern(12, 20, seed=s)) for s in range(16)]
  gin.parse_config(["augment.rand_augment.num_ops = 3",
                    "augment.rand_augment.magnitude = 10",
                    "augment.rand_augment.geometric = True"])

  def run(augment_seed, order=slice(None)):
    ds = tf.data.Dataset.from_tensor_slices({"image": pngs[order]})
    ds = images.preprocess_dataset(ds, 16, resize="fit", augment=augment.rand_augment,
                                   augment_seed=augment_seed)
    return [ex["image"] for ex in ds.as_numpy_iterator()]

  first, again, other = run(0), run(0), run(1)
  reverse = run(0, slice(None, None, -1))[::-1]  # Same example -> same augmentation.
  for a, b, r in zip(first, again, reverse):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, r)
  assert sum(not np.array_equal(a, o) for a, o in zip(first, other)) >= 14
  for image in first:
    assert image.shape == (16, 16, 3) and image.min() >= -1.0 and image.max() <= 1.0
    assert np.all(image[10:] == 0.0)  # 12x20 -> 10x16 content; padding untouched.
  plain = images.preprocess_dataset(tf.data.Dataset.from_tensor_slices({"image": pngs}),
                                    16, resize="fit")
  assert sum(not np.array_equal(a, p["image"])
             for a, p in zip(first, plain.as_numpy_iterator())) == 16


def test_gin_binding_reaches_preprocess_dataset(clean_gin):
  # As the project's gin files write it (dynamic registration, module imports).
  gin.parse_config("""
      from __gin__ import dynamic_registration
      from vlpretrain.data import augment
      from vlpretrain.data import images
      images.preprocess_dataset.resize = 'fit'
      images.preprocess_dataset.pad_value = -1.0
      images.preprocess_dataset.augment = @augment.rand_augment
      augment.rand_augment.num_ops = 1
      augment.rand_augment.magnitude = 10
      augment.rand_augment.ops = ['solarize']
  """)
  ds = tf.data.Dataset.from_tensor_slices({"image": [_png(np.full((4, 8, 3), 200))]})
  out = next(images.preprocess_dataset(ds, 8).as_numpy_iterator())["image"]
  np.testing.assert_allclose(out[:4], (255 - 200) / 127.5 - 1, atol=1e-6)  # Solarized.
  assert np.all(out[4:] == -1.0)
