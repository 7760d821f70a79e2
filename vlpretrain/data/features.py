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


class _Unpacked:
  """A seqio converter that refuses `pack=True`: every example has its own image."""

  def __init__(self, pack: bool = False, use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = 0):
    if pack:
      raise errors.ConfigError(
          f"{type(self).__name__} cannot pack examples (each has its own image): bind "
          "pack = False in the DatasetConfig (t5x's runs/pretrain.gin packs: "
          "train/utils.DatasetConfig.pack = False and "
          "train_eval/utils.DatasetConfig.pack = False; gin/t5x/*.gin do so).")
    super().__init__(pack=False, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id)


class VLEncDecFeatureConverter(_Unpacked, seqio.EncDecFeatureConverter):
  """seqio.EncDecFeatureConverter plus the image (and task_id). No packing."""

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


class VLEncoderFeatureConverter(_Unpacked, seqio.FeatureConverter):
  """For encoder models (VLMo's family): image + text (+ a class label).

  Task features:  image (float32 (H, W, 3)), text (int32 tokens, EOS appended: the
                  [T_SEP]), optional targets (one id of a `label_vocab.LabelVocabulary`),
                  optional task_id. An image-only or a text-only Task (the stages of
                  seed 002 sec. 3.4) has just one of image and text.
  Model features: image, text_tokens (text padded with 0 / trimmed to
                  task_feature_lengths['text']), labels (int32 scalar, targets[0], when
                  the Task has targets), task_id.
  No packing: each example has its own image.
  """
  TASK_FEATURES = {"text": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {"text_tokens": FeatureSpec(dtype=tf.int32)}
  PACKING_FEATURE_DTYPES = {}

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    spec = ds.element_spec
    if "image" not in spec and "text" not in spec:
      raise ValueError(f"VLEncoderFeatureConverter: the dataset has neither 'image' nor "
                       f"'text' (it has {sorted(spec)}); encoder models read an 'image' "
                       "and / or a tokenized 'text' (tasks/image_text.py).")
    image_shape = spec["image"].shape if "image" in spec else None
    if image_shape is not None and (image_shape.rank != 3 or
                                    not image_shape.is_fully_defined()):
      raise ValueError(f"'image' must have a static (H, W, C) shape, got {image_shape}"
                       "; resize it in a preprocessor (vlpretrain.data.images).")
    if "text" in spec and "text" not in task_feature_lengths:
      raise ValueError("task_feature_lengths needs 'text' for an encoder model, e.g. "
                       "TASK_FEATURE_LENGTHS = {'text': 24}; got "
                       f"{dict(task_feature_lengths)}.")
    return self._convert_features(ds, task_feature_lengths)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    spec = ds.element_spec
    has_labels, has_text = "targets" in spec, "text" in spec
    length = task_feature_lengths["text"] if has_text else None

    def convert(ex):
      out = {"image": ex["image"]} if "image" in ex else {}
      if has_text:
        text = ex["text"][:length]
        if self._apply_length_check:
          tf.debugging.assert_less_equal(
              tf.size(ex["text"]), length,
              message=f"'text' is longer than task_feature_lengths['text']={length}")
        out["text_tokens"] = tf.ensure_shape(
            tf.cast(tf.pad(text, [[0, length - tf.size(text)]]), tf.int32), [length])
      if has_labels:
        out["labels"] = tf.cast(tf.reshape(ex["targets"], [-1])[0], tf.int32)
      if "task_id" in ex:
        out["task_id"] = tf.cast(ex["task_id"], tf.int32)
      return out
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(
      self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    return ({"text_tokens": task_feature_lengths["text"]}
            if "text" in task_feature_lengths else {})
