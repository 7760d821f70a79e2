"""Feature converter for image + text -> text encoder-decoder models.

Task features:  image (float32, static (H, W, 3)), inputs, targets (int32 tokens),
                optional task_id (int32 scalar).
Model features: encoder_input_tokens, decoder_target_tokens, decoder_input_tokens,
                decoder_loss_weights exactly as seqio.EncDecFeatureConverter makes them
                (unpacked: padded with 0 to the task feature lengths; decoder inputs are
                the targets shifted right, starting with 0), plus image and task_id
                passed through unchanged.

`task_feature_lengths` needs only inputs and targets; image and task_id shapes are read
from the dataset.
"""
import copy
from typing import Mapping

import seqio
import tensorflow as tf

from vlpretrain import errors

FeatureSpec = seqio.FeatureConverter.FeatureSpec
IMAGE = FeatureSpec(dtype=tf.float32, rank=3)
TASK_ID = FeatureSpec(dtype=tf.int32, rank=0)


class VLEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """seqio.EncDecFeatureConverter plus the image (and task_id). No packing."""

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = 0):
    if pack:
      raise errors.ConfigError(
          "VLEncDecFeatureConverter cannot pack examples (each has its own image): bind "
          "pack = False in the DatasetConfig (t5x's runs/pretrain.gin packs: "
          "train/utils.DatasetConfig.pack = False and "
          "train_eval/utils.DatasetConfig.pack = False; gin/t5x/*.gin do so).")
    super().__init__(pack=False, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id)

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    spec = ds.element_spec
    if "image" not in spec:
      raise ValueError(f"Dataset has no 'image' feature; got {sorted(spec)}. Add a "
                       "preprocessor that decodes the image (vlpretrain.data.images).")
    image_shape = spec["image"].shape
    if image_shape.rank != 3 or not image_shape.is_fully_defined():
      raise ValueError(f"'image' must have a static (H, W, C) shape, got {image_shape}"
                       "; resize it in a preprocessor (vlpretrain.data.images).")
    extra = {"image": IMAGE}
    lengths = {**task_feature_lengths, "image": image_shape[0]}
    if "task_id" in spec:
      extra["task_id"] = TASK_ID
      lengths["task_id"] = 1  # Unused: scalars are neither padded nor length-checked.
    # seqio's pass-through features, decided per dataset on a copy of self.
    converter = copy.copy(self)
    converter._passthrough_features = extra  # pylint: disable=protected-access
    return super(VLEncDecFeatureConverter, converter).__call__(ds, lengths)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    # Pads tokens (and the image's first axis, a no-op that fixes its static shape);
    # never the scalar task_id.
    lengths = {k: v for k, v in task_feature_lengths.items() if k != "task_id"}
    return super()._convert_features(ds, lengths)

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    for k in ("image", "task_id"):
      if k in task_feature_lengths:
        lengths[k] = task_feature_lengths[k]
    return lengths
