"""Warm starts from the public checkpoint formats: t5x's T5 v1.1 (msgpack + TensorStore)
and big_vision's ViT .npz, through `checkpoints.restore_params` and the trainer.

The fixtures in tests/fixtures/public_checkpoints were written by t5x's and big_vision's
own code (tests/fixtures/make_public_checkpoints.py), with those implementations'
outputs on fixed inputs: vlpretrain's T5 and ViT, given the loaded params, must
reproduce them.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpretrain import assignment_maps
from vlpretrain import checkpoint_formats
from vlpretrain import checkpoints
from vlpretrain import errors
from vlpretrain import models
from vlpretrain.data import vocab
from vlpretrain.network import fusion, t5, transformer, vit

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "public_checkpoints")
T5_CKPT = os.path.join(FIXTURES, "t5x_t5_1_1_test", "checkpoint_0")
VIT_NPZ = os.path.join(FIXTURES, "big_vision_vit_test.npz")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def expected():
  return dict(np.load(os.path.join(FIXTURES, "expected.npz")))


def _model(vocab_size=None):
  net = transformer.VLTransformer(
      vit_config=vit.vit_config("test/8", image_size=32),
      t5_config=t5.t5_config("test", vocab_size=vocab_size),
      fusion=fusion.JAR(num_iterations=1, num_latents=8))
  return models.VLEncoderDecoderModel(net, vocab.shapes_vocabulary(),
                                      vocab.shapes_vocabulary())


SHAPES = {"image": (2, 32, 32, 3), "encoder_input_tokens": (2, 8),
          "decoder_input_tokens": (2, 6), "decoder_target_tokens": (2, 6)}


def _restore(model, paths, assignment_map, strict=True):
  abstract, shardings = checkpoints.abstract_params(model, SHAPES)
  fresh = model.get_initial_variables(jax.random.PRNGKey(3), SHAPES)["params"]
  params = checkpoints.restore_params(paths, abstract, shardings,
                                      assignment_map=assignment_map, fresh=fresh,
                                      strict=strict)
  return params, fresh


def test_formats_are_detected():
  assert checkpoint_formats.detect(T5_CKPT) == "t5x_legacy"
  assert checkpoint_formats.detect(VIT_NPZ) == "npz"
  reader = checkpoint_formats.open_reader(T5_CKPT)
  # t5x stores attention kernels flattened: (D, H*K), where vlpretrain's are (D, H, K).
  assert reader.shapes["encoder/layers_0/attention/query/kernel"] == (32, 32)
  assert reader.shapes["token_embedder/embedding"] == (1152, 32)


def test_t5_1_1_checkpoint_reproduces_t5x_encoder_and_decoder(expected):
  model = _model()
  params, fresh = _restore(model, T5_CKPT, assignment_maps.t5_1_1())
  net = model.module
  tokens = jnp.asarray(expected["t5_encoder_tokens"])
  encoded, mask = net.apply({"params": params}, tokens,
                            method=lambda m, t: m.text_encoder(t))
  np.testing.assert_allclose(encoded, expected["t5_encoded"], atol=2e-5, rtol=1e-5)
  logits = net.apply({"params": params}, jnp.asarray(expected["t5_encoded"]), mask,
                     jnp.asarray(expected["t5_decoder_tokens"]), method=net.decode)
  np.testing.assert_allclose(logits, expected["t5_logits"], atol=2e-4, rtol=1e-4)
  # What the map leaves out (the ViT, the fusion) is the fresh initialisation.
  np.testing.assert_array_equal(params["fusion"]["image_projection"]["kernel"],
                                fresh["fusion"]["image_projection"]["kernel"])
  np.testing.assert_array_equal(params["image_encoder"]["pos_embedding"],
                                fresh["image_encoder"]["pos_embedding"])


def test_big_vision_npz_reproduces_big_vision_vit(expected):
  model = _model()
  params, _ = _restore(model, VIT_NPZ, assignment_maps.big_vision_vit())
  encoded = model.module.apply({"params": params}, jnp.asarray(expected["vit_image"]),
                               method=lambda m, x: m.image_encoder(x))
  np.testing.assert_allclose(encoded, expected["vit_encoded"], atol=2e-5, rtol=1e-5)


def test_jar_warm_start_reads_each_param_from_the_checkpoint_that_has_it():
  model = _model()
  params, fresh = _restore(model, [T5_CKPT, VIT_NPZ], assignment_maps.jar_warm_start())
  npz = np.load(VIT_NPZ)
  np.testing.assert_array_equal(params["image_encoder"]["encoderblock_0"]["mlp"]["fc2"]["kernel"],
                                npz["Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel"])
  t5_reader = checkpoint_formats.open_reader(T5_CKPT)
  query = t5_reader.read_host(["encoder/layers_0/attention/query/kernel"])
  np.testing.assert_array_equal(
      params["text_encoder"]["layers_0"]["attention"]["query"]["kernel"],
      np.asarray(query["encoder/layers_0/attention/query/kernel"]).reshape(32, 2, 16))
  np.testing.assert_array_equal(params["fusion"]["output_norm"]["LayerNorm_0"]["scale"],
                                fresh["fusion"]["output_norm"]["LayerNorm_0"]["scale"])


def test_shape_and_name_mismatches_name_the_param():
  with pytest.raises(errors.ConfigError, match=r"param 'decoder/logits_dense/kernel' has "
                     r"shape \(32, 1152\).*expects \(32, 1280\)"):
    _restore(_model(vocab_size=1280), T5_CKPT, assignment_maps.t5_1_1())
  # Without the map, the T5 checkpoint has no 'text_encoder/...' params.
  with pytest.raises(errors.ConfigError, match=r"no param 'text_encoder/.*strict=False"):
    _restore(_model(), T5_CKPT, ((r"(image_encoder|fusion)/.*", None),))


def test_not_strict_initialises_what_no_checkpoint_has():
  model = _model()
  params, fresh = _restore(model, T5_CKPT, (), strict=False)
  # Only the shared names (token_embedder, decoder) are read; the rest is fresh.
  np.testing.assert_array_equal(params["text_encoder"]["encoder_norm"]["scale"],
                                fresh["text_encoder"]["encoder_norm"]["scale"])
  reader = checkpoint_formats.open_reader(T5_CKPT)
  stored = reader.read_host(["decoder/decoder_norm/scale"])["decoder/decoder_norm/scale"]
  np.testing.assert_array_equal(params["decoder"]["decoder_norm"]["scale"], stored)


def test_class_token_row_of_a_position_embedding_is_dropped(tmp_path):
  arrays = dict(np.load(VIT_NPZ))
  posemb = arrays["pos_embedding"]
  with_cls = np.concatenate([np.full_like(posemb[:, :1], 7.0), posemb], axis=1)
  path = str(tmp_path / "vit_with_cls.npz")
  np.savez(path, **dict(arrays, pos_embedding=with_cls))
  params, _ = _restore(_model(), path, assignment_maps.big_vision_vit())
  np.testing.assert_array_equal(params["image_encoder"]["pos_embedding"], posemb)


@pytest.mark.parametrize("stored,target,ok", [
    ((32, 32), (32, 2, 16), True), ((32, 32), (2, 16, 32), True),
    ((32, 32), (32, 1, 32), True), ((64, 16), (32, 2, 16), True), ((16, 64), (32, 2, 16), False),
    ((32, 2, 16), (32, 2, 16), True), ((1024,), (32, 32), True), ((16, 64), (32, 32), False)])
def test_reshapes_to(stored, target, ok):
  assert checkpoint_formats.reshapes_to(stored, target) == ok


@pytest.mark.slow
def test_train_warm_starts_from_t5_and_vit_checkpoints(tmp_path):
  """The console command with the README's warm-start bindings: step 0's checkpoint
  holds the T5 and ViT params."""
  model_dir = str(tmp_path / "run")
  cmd = [os.path.join(os.path.dirname(sys.executable), "vlpretrain"), "train",
         "--gin_file=gin/jar_tiny.gin",
         f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=0",
         "--gin.T5_SIZE='test'", "--gin.VIT_VARIANT='test/8'", "--gin.IMAGE_SIZE=32",
         "--gin.vit.vit_config.stem='patch'",
         f"--gin.INITIAL_CHECKPOINT_PATH=['{T5_CKPT}', '{VIT_NPZ}']",
         "--gin.utils.RestoreCheckpointConfig.mode='specific'",
         "--gin.utils.RestoreCheckpointConfig.assignment_map="
         "@assignment_maps.jar_warm_start()"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "(t5x_legacy checkpoint)" in proc.stderr and "(npz checkpoint)" in proc.stderr
  reader = checkpoint_formats.open_reader(os.path.join(model_dir, "checkpoints", "0"))
  saved = reader.read_host(["image_encoder/embedding/kernel"])
  np.testing.assert_array_equal(saved["image_encoder/embedding/kernel"],
                                np.load(VIT_NPZ)["embedding/kernel"])
