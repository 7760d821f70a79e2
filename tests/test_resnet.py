"""The ResNet image tower (vlpretrain/network/resnet.py): golden parameter counts and
token shapes of ResNet-50 (jax.eval_shape: no weights are made), the tiny size training
inside the VL model, the gin choice and the clear errors."""
import os

import flax
from flax.linen import partitioning as flax_partitioning
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

from vlpretrain import model_cost
from vlpretrain import models
from vlpretrain.network import fusion, resnet, t5, transformer, vit


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _abstract(config, batch=2):
  """(token shape, param shapes) of the real module, without making either."""
  size = config.image_size
  tokens, variables = jax.eval_shape(
      lambda: resnet.ResNet(config).init_with_output(
          jax.random.PRNGKey(0), jnp.zeros((batch, size, size, 3))))
  return tokens.shape, variables["params"]


@pytest.fixture(scope="module")
def resnet50():
  return {stage: _abstract(resnet.resnet_config(50, stage, image_size=224))
          for stage in ("conv4", "conv5")}


def _bottleneck_stage_params(cin, mid, blocks):
  """Parameters of one stage of bottleneck blocks by hand: convs without bias, a
  norm (scale + bias) after each conv, a projection shortcut on the first block."""
  out = 4 * mid
  block = lambda c: c * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * out + 2 * out
  return (block(cin) + cin * out + 2 * out) + (blocks - 1) * block(out)


# torchvision's resnet50: 25,557,032 parameters with its 1000-class fc (BatchNorm's
# running statistics are buffers, not parameters). Our GroupNorm has the same scale and
# bias per channel, so the count carries over.
RESNET50_WITH_FC = 25_557_032
FC_1000 = 2048 * 1000 + 1000
RESNET50_TRUNK = 23_508_032        # conv1 .. conv5, no fc
RESNET50_LAYER4 = 14_964_736       # conv5_x (torchvision's layer4), norms included
RESNET50_CONV4 = 8_543_296         # conv1 .. conv4: seed 001's tower


def test_resnet50_golden_parameter_counts(resnet50):
  assert RESNET50_TRUNK + FC_1000 == RESNET50_WITH_FC
  assert RESNET50_TRUNK - RESNET50_LAYER4 == RESNET50_CONV4
  stem = 7 * 7 * 3 * 64 + 2 * 64
  by_hand = [_bottleneck_stage_params(64, 64, 3), _bottleneck_stage_params(256, 128, 4),
             _bottleneck_stage_params(512, 256, 6), _bottleneck_stage_params(1024, 512, 3)]
  assert by_hand[3] == RESNET50_LAYER4
  assert stem + sum(by_hand[:3]) == RESNET50_CONV4
  assert stem + sum(by_hand) == RESNET50_TRUNK

  _, conv5 = resnet50["conv5"]
  _, conv4 = resnet50["conv4"]
  assert _count(conv5) == RESNET50_TRUNK
  config = resnet.resnet_config(50, "conv5")
  assert _count(conv5) + config.output_dim * 1000 + 1000 == RESNET50_WITH_FC
  assert _count(conv4) == RESNET50_CONV4
  # The truncation drops exactly the last stage.
  assert {k for k in conv5 if k.startswith("block4_")} == {
      "block4_unit1", "block4_unit2", "block4_unit3"}
  assert _count({k: v for k, v in conv5.items() if k.startswith("block4_")}) == (
      RESNET50_LAYER4)
  assert not any(k.startswith("block4_") for k in conv4)
  assert "batch_stats" not in jax.eval_shape(
      lambda: resnet.ResNet(resnet.resnet_config("test", image_size=32)).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))


def test_resnet50_tokens_at_224(resnet50):
  assert resnet50["conv4"][0] == (2, 196, 1024)   # 14 x 14, seed 001's visual feature
  assert resnet50["conv5"][0] == (2, 49, 2048)
  for stage, tokens, width in (("conv4", 196, 1024), ("conv5", 49, 2048)):
    config = resnet.resnet_config(50, stage)
    assert (config.num_tokens, config.output_dim) == (tokens, width)


def test_weight_standardisation():
  """A conv kernel's scale and offset do not change the output (random params, all
  norms open, so every block's branch counts)."""
  config = resnet.resnet_config("test", "conv3", image_size=32)
  module = resnet.ResNet(config)
  image = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  _, shapes = _abstract(config)
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.5, 1.0, x.shape), jnp.float32),
                        flax.linen.meta.unbox(shapes))
  apply = jax.jit(lambda p: module.apply({"params": p}, image))
  tokens = apply(params)
  assert tokens.shape == (2, 16, config.output_dim) and config.output_dim == 64
  assert bool(jnp.all(jnp.isfinite(tokens)))
  params = flax.core.unfreeze(params)
  kernel = params["block1_unit1"]["conv2"]["kernel"]
  params["block1_unit1"]["conv2"]["kernel"] = 3.0 * kernel + 0.5
  np.testing.assert_allclose(apply(params), tokens, rtol=1e-4, atol=1e-4)
  params["block1_unit1"]["conv2"]["kernel"] = kernel[..., ::-1]  # Not a scaling: moves.
  assert float(jnp.abs(apply(params) - tokens).max()) > 1e-2


def _model(image_config, fusion_module):
  network = transformer.VLTransformer(image_config, t5.t5_config("test", vocab_size=None),
                                      fusion_module)
  vocab = seqio.PassThroughVocabulary(size=200, eos_id=1)
  return models.VLEncoderDecoderModel(network, vocab, vocab)


def _batch(size=32):
  rng = np.random.RandomState(0)
  targets = np.array([[5, 6, 7, 1, 0], [9, 1, 0, 0, 0]], np.int32)
  return {
      "image": jnp.asarray(rng.uniform(-1, 1, (2, size, size, 3)), jnp.float32),
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 200, (2, 4)), jnp.int32),
      "decoder_input_tokens": jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1]),
      "decoder_target_tokens": jnp.asarray(targets),
      "decoder_loss_weights": jnp.asarray(targets > 0, jnp.float32),
  }


@pytest.mark.slow
def test_tiny_vl_model_with_a_resnet_tower_trains():
  """Seed 001's layout at tiny size (ResNet -> concatenated after the T5 encoder; conv3,
  a plain and a strided v1.5 stage, to keep the compile short): params under
  image_encoder/ with logical axes, the loss falls on a fixed batch, and every ResNet
  param gets a gradient (the zero-scale norms open after the first step)."""
  model = _model(resnet.resnet_config("test", "conv3", image_size=32),
                 fusion.Concat(after_encoder=True))
  batch = _batch()
  shapes = {k: v.shape for k, v in batch.items()}
  variables = jax.jit(lambda r: model.get_initial_variables(r, shapes))(
      jax.random.PRNGKey(0))
  params = variables["params"]
  # Each residual branch's last norm starts at zero scale (big_vision's bit).
  assert not np.asarray(params["image_encoder"]["block2_unit1"]["gn3"]["scale"]).any()
  specs = flax_partitioning.get_axis_names(variables["params_axes"])
  assert tuple(specs["image_encoder"]["conv_root"]["kernel"]) == (
      None, None, None, "image_embed")
  assert tuple(specs["image_encoder"]["block2_unit1"]["gn3"]["scale"]) == ("image_embed",)
  flat = lambda t: set(flax.traverse_util.flatten_dict(flax.core.unfreeze(t)))
  assert flat(specs) == flat(params)

  # The memory is [16 image tokens (4x4: 32 / 8); 4 text tokens].
  memory, mask = jax.eval_shape(lambda p: model.module.apply(
      {"params": p}, batch["image"], batch["encoder_input_tokens"],
      method=model.module.encode), params)
  assert memory.shape[:2] == mask.shape == (2, 20)

  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, state):
    (loss, _), grads = jax.value_and_grad(
        lambda p: model.loss_fn(p, batch, None), has_aux=True)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, grads

  state = optimizer.init(params)
  start, losses = jax.device_get(params["image_encoder"]), []
  for _ in range(6):
    params, state, loss, grads = step(params, state)
    losses.append(float(loss))
    if len(losses) == 1:
      first_grads = jax.device_get(grads["image_encoder"])
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.1, losses
  # (numpy from here: an eager jnp op per param shape would compile each.)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(first_grads))
  assert sum(float(np.square(g).sum()) for g in jax.tree.leaves(first_grads)) > 0
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), start,
                       jax.device_get(params["image_encoder"]))
  assert all(jax.tree.leaves(moved)), moved


def test_model_cost_reads_the_resnet_image_size():
  model = _model(resnet.resnet_config("test", "conv5", image_size=64), fusion.Concat())
  stats = model_cost.model_stats(model, {"inputs": 4, "targets": 4})
  assert stats["image_size"] == 64
  conv5 = _abstract(resnet.resnet_config("test", "conv5", image_size=64))[1]
  assert stats["params_by_module"]["image_encoder"] == _count(conv5)


def test_vit_path_keeps_its_param_names():
  network = transformer.VLTransformer(vit.vit_config("test/8", 32),
                                      t5.t5_config("test", vocab_size=256), fusion.Concat())
  params = jax.eval_shape(network.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                          jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"]
  assert {"embedding", "pos_embedding", "encoderblock_0", "encoder_norm"} == set(
      params["image_encoder"])


def test_clear_errors():
  with pytest.raises(ValueError, match=r"Unknown ResNet size 34 .*resnet_config.size"):
    resnet.resnet_config(34)
  with pytest.raises(ValueError, match=r"output_stage 'conv6' .*resnet_config.output_st"):
    resnet.resnet_config(50, "conv6")
  with pytest.raises(ValueError, match=r"image_size 200 .*not a multiple of 16"):
    resnet.resnet_config(50, "conv4", image_size=200)
  with pytest.raises(ValueError, match="width_multiplier"):
    resnet.resnet_config(50, width_multiplier=0)
  module = resnet.ResNet(resnet.resnet_config("test", image_size=32))
  with pytest.raises(ValueError, match=r"configured for 32x32: set "
                                       r"resnet.resnet_config.image_size \(gin\)"):
    module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(TypeError, match=r"@vit.vit_config\(\) or @resnet.resnet_config"):
    transformer.image_tower({"image_size": 224})


GIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


def _gin_config(size, stage, image_size):  # vl_encdec.gin's ACTIVATION_DTYPE
  return resnet.resnet_config(size, stage, image_size=image_size, dtype="float32")


def _gin_module(path, bindings=()):
  gin.add_config_file_search_path(GIN)
  gin.parse_config_files_and_bindings([os.path.join(GIN, path)], bindings)
  return gin.query_parameter("models.VLEncoderDecoderModel.module").scoped_configurable_fn()


def test_seed_001_gin_model_and_its_parameter_count(clean_gin):
  """gin/models/resnet50_t5_base.gin: ResNet-50 conv4 at 224 + T5 v1.1 base, image and
  text concatenated after the T5 encoder; 256.9M parameters = the tower + T5 base
  (test_network_sizes: 247,577,856 with the 32128 vocabulary) + the 1024 -> 768
  projection."""
  module = _gin_module("models/resnet50_t5_base.gin")
  assert module.vit_config == _gin_config(50, "conv4", 224)
  assert isinstance(module.fusion, fusion.Concat) and module.fusion.after_encoder
  params = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                          jnp.ones((1, 32), jnp.int32), jnp.ones((1, 32), jnp.int32))
  params = params["params"]
  assert _count(params["image_encoder"]) == RESNET50_CONV4
  assert _count(params["fusion"]) == 1024 * 768 + 768
  assert _count(params) == RESNET50_CONV4 + 247_577_856 + 1024 * 768 + 768 == 256_908_352


def test_the_tower_fragment_swaps_jar_base_to_a_resnet(clean_gin):
  module = _gin_module("models/jar_resnet50_base.gin")
  assert module.vit_config == _gin_config(50, "conv4", 224)
  assert isinstance(module.fusion, fusion.JAR) and module.fusion.gate_init == 1.0
  gin.clear_config(clear_constants=True)
  module = _gin_module("models/jar_base.gin", ["include 'towers/resnet.gin'",
                                               "RESNET_OUTPUT_STAGE = 'conv5'"])
  assert module.vit_config == _gin_config(50, "conv5", 224)
  gin.clear_config(clear_constants=True)
  module = _gin_module("models/resnet_concat_tiny.gin")
  assert module.vit_config == _gin_config("test", "conv4", 64)
