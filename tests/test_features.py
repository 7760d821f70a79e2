"""VLEncDecFeatureConverter: exact tokens, static shapes, the trainer's input path."""
import numpy as np
import pytest
import seqio

from vlpretrain.data import features
import tensorflow as tf
import vlpretrain.tasks  # pylint: disable=unused-import  # registers shapes_*


def dataset(with_task_id=False, image_shape=(4, 4, 3)):
  ex = {"image": np.full(image_shape, 0.5, np.float32),
        "inputs": np.array([7, 8, 5, 1], np.int32),
        "targets": np.array([3, 9, 1], np.int32),
        "inputs_pretokenized": "extra features are dropped"}
  if with_task_id:
    ex["task_id"] = np.int32(2)
  return tf.data.Dataset.from_tensors(ex)


def test_known_example_exact_tokens_shapes_dtypes():
  conv = features.VLEncDecFeatureConverter(pack=False)
  ds = conv(dataset(), {"inputs": 6, "targets": 5})
  assert set(ds.element_spec) == {
      "encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
      "decoder_loss_weights", "image"}
  ex = next(iter(ds.as_numpy_iterator()))
  np.testing.assert_array_equal(ex["encoder_input_tokens"], [7, 8, 5, 1, 0, 0])
  np.testing.assert_array_equal(ex["decoder_target_tokens"], [3, 9, 1, 0, 0])
  np.testing.assert_array_equal(ex["decoder_input_tokens"], [0, 3, 9, 1, 0])
  np.testing.assert_array_equal(ex["decoder_loss_weights"], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(ex["image"], np.full((4, 4, 3), 0.5))
  for k in ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
            "decoder_loss_weights"):
    assert ex[k].dtype == np.int32, k
  assert ex["image"].dtype == np.float32
  assert ds.element_spec["image"].shape == (4, 4, 3)
  assert ds.element_spec["encoder_input_tokens"].shape == (6,)


def test_task_id_passes_through():
  conv = features.VLEncDecFeatureConverter()
  ds = conv(dataset(with_task_id=True), {"inputs": 6, "targets": 5})
  ex = next(iter(ds.as_numpy_iterator()))
  assert ex["task_id"] == 2 and ex["task_id"].dtype == np.int32
  assert ds.element_spec["task_id"].shape == ()


def test_model_feature_lengths():
  conv = features.VLEncDecFeatureConverter()
  assert conv.get_model_feature_lengths({"inputs": 6, "targets": 5}) == {
      "encoder_input_tokens": 6, "decoder_target_tokens": 5,
      "decoder_input_tokens": 5, "decoder_loss_weights": 5}


def test_clear_errors():
  conv = features.VLEncDecFeatureConverter()
  no_image = dataset().map(lambda ex: {k: v for k, v in ex.items() if k != "image"})
  with pytest.raises(ValueError, match="no 'image' feature"):
    conv(no_image, {"inputs": 6, "targets": 5})
  dynamic = dataset().map(lambda ex: {**ex, "image": tf.py_function(
      lambda x: x, [ex["image"]], tf.float32)})
  with pytest.raises(ValueError, match="static"):
    conv(dynamic, {"inputs": 6, "targets": 5})
  with pytest.raises(tf.errors.InvalidArgumentError, match="inputs"):
    list(conv(dataset(), {"inputs": 2, "targets": 5}))  # Too long for 2.


@pytest.mark.parametrize("task", ["shapes_cap", "shapes_vqa"])
def test_trainer_input_path(small_shapes, task):
  """get_dataset as the trainer calls it, convert, batch: static shapes."""
  ds = seqio.get_mixture_or_task(task).get_dataset(
      sequence_length={"inputs": 32, "targets": 32}, split="train", shuffle=True,
      seed=7, shard_info=seqio.ShardInfo(1, 2), num_epochs=None)
  ds = features.VLEncDecFeatureConverter(pack=False)(
      ds, {"inputs": 32, "targets": 32}).batch(8, drop_remainder=True)
  assert {k: tuple(v.shape) for k, v in ds.element_spec.items()} == {
      "encoder_input_tokens": (8, 32), "decoder_target_tokens": (8, 32),
      "decoder_input_tokens": (8, 32), "decoder_loss_weights": (8, 32),
      "image": (8, 64, 64, 3)}
  batches = list(ds.take(30).as_numpy_iterator())  # Repeats: more than one epoch.
  assert len(batches) == 30
  b = batches[0]
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 0], 0)
  np.testing.assert_array_equal(b["decoder_input_tokens"][:, 1:],
                                b["decoder_target_tokens"][:, :-1])
  np.testing.assert_array_equal(b["decoder_loss_weights"],
                                b["decoder_target_tokens"] > 0)
  assert np.all(np.sum(b["decoder_target_tokens"] == 1, axis=1) == 1)  # One EOS.
  assert b["image"].min() >= -1 and b["image"].max() <= 1
  assert b["image"].std() > 0.1


def test_tasks_keep_one_copy_of_the_image(small_shapes):
  """No registered Task runs seqio's tokenize, which keeps `image_pretokenized` (a second
  float copy of each image); the text features keep their pretokenized copies."""
  from vlpretrain.data import preprocessors  # pylint: disable=g-import-not-at-top
  for name in seqio.TaskRegistry.names():
    task = seqio.get_mixture_or_task(name)
    if "image" in task.output_features:
      assert seqio.preprocessors.tokenize not in task.preprocessors, name
  ds = seqio.get_mixture_or_task("shapes_cap").get_dataset(
      {"inputs": 8, "targets": 24}, split="validation", shuffle=False)
  assert "image_pretokenized" not in ds.element_spec
  assert {"inputs_pretokenized", "targets_pretokenized", "image"} <= set(ds.element_spec)
  # Directly: the continuous feature passes through once, the text one is copied.
  ex = {"image": tf.zeros((2, 2, 3)), "inputs": tf.constant([3, 4])}
  out = preprocessors.tokenize(tf.data.Dataset.from_tensors(ex), {
      "image": seqio.ContinuousFeature(dtype=tf.float32, rank=3),
      "inputs": seqio.Feature(seqio.PassThroughVocabulary(10))})
  assert set(out.element_spec) == {"image", "inputs", "inputs_pretokenized"}


def test_packing_is_refused_naming_the_binding():
  with pytest.raises(ValueError, match=r"train/utils.DatasetConfig.pack = False"):
    features.VLEncDecFeatureConverter(pack=True)
