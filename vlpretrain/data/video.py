"""Videos as one image: T frames tiled in a square grid, for the image-only model.

The model reads one float32 (S, S, 3) image (`features.VLEncDecFeatureConverter` passes
a rank-3 `image`; the ViT needs S x S), so a clip's frames are resized to tiles of
S // g pixels (g = ceil(sqrt(T)) tiles a side) and laid out row-major in time order:
frame t sits in row t // g, column t % g. The grid's unused cells and the right/bottom
margin left when g does not divide S are 0 (mid grey in [-1, 1]). The ViT's patches of
one tile then cover one frame only when the patch size divides S // g, e.g. 4 frames at
S = 64 with patches of 8 (tiles 32), or at S = 224 with patches of 16 (tiles 112).
This stands in for seed 001 app. B.1 ("We apply the ResNet per-frame, then concatenate
the frames together to form the visual feature"): per-frame tokens end up side by side
along the ViT's token axis.
"""
import math
from typing import Tuple

import tensorflow as tf

from vlpretrain.data import images


def grid(num_frames: int, image_size: int) -> Tuple[int, int]:
  """(g, tile): tiles per side and tile size in pixels."""
  if num_frames < 1:
    raise ValueError(f"Need at least one frame, got {num_frames}.")
  g = math.ceil(math.sqrt(num_frames))
  tile = image_size // g
  if tile < 1:
    raise ValueError(f"{num_frames} frames do not fit in a {image_size}x{image_size} "
                     "image; raise the image size.")
  return g, tile


def tile(frames: tf.Tensor, image_size: int) -> tf.Tensor:
  """(T, tile, tile, C) frames, already tile-sized -> (S, S, C), zeros elsewhere."""
  num_frames = frames.shape[0]
  g, size = grid(num_frames, image_size)
  channels = frames.shape[-1]
  frames = tf.ensure_shape(frames, (num_frames, size, size, channels))
  blank = tf.zeros([g * g - num_frames, size, size, channels], frames.dtype)
  cells = tf.reshape(tf.concat([frames, blank], 0), [g, g, size, size, channels])
  image = tf.reshape(tf.transpose(cells, [0, 2, 1, 3, 4]), [g * size, g * size, channels])
  margin = image_size - g * size
  return tf.pad(image, [[0, margin], [0, margin], [0, 0]])


def encoded_frames_to_image(frames: tf.Tensor, image_size: int) -> tf.Tensor:
  """tf.string [T] encoded frames (static T) -> float32 (S, S, 3) in [-1, 1]."""
  num_frames = frames.shape[0]
  if num_frames is None:
    raise ValueError("The number of frames must be static (the source's num_frames).")
  _, size = grid(num_frames, image_size)
  tiles = tf.map_fn(lambda f: images.preprocess(f, size), frames,
                    fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
  return tile(tiles, image_size)


def frames_to_image(dataset: tf.data.Dataset, image_size: int,
                    key: str = "frames") -> tf.data.Dataset:
  """seqio-style preprocessor: replaces `frames` (encoded, [T]) by the tiled `image`."""
  def fn(ex):
    if key not in ex:
      raise ValueError(f"No {key!r} feature to tile; got {sorted(ex)}.")
    ex = dict(ex)
    ex["image"] = encoded_frames_to_image(ex.pop(key), image_size)
    return ex
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
