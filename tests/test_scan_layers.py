"""scan_layers: the ViT and T5 stacks under nn.scan compute what the unrolled stacks
compute (loss, gradients, cached greedy and beam decoding), with params stacked on a
leading 'layers' axis that the partitioner maps."""
import dataclasses
import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from vlpretrain import decoding, models, partitioning
from vlpretrain.network import fusion, t5, transformer, vit

# Unrolled name -> scanned name: `layers_<i>` / `encoderblock_<i>` become one module.
_LAYER = re.compile(r"^(layers|encoderblock)_(\d+)$")


def _network(scan, remat=False):
  """ViT of 2 blocks, T5 encoder of 3 layers and decoder of 2, JAR."""
  return transformer.VLTransformer(
      dataclasses.replace(vit.vit_config("test/8", 32), depth=2, scan_layers=scan,
                          remat=remat),
      dataclasses.replace(t5.t5_config("test"), num_encoder_layers=3,
                          num_decoder_layers=2, scan_layers=scan, remat=remat),
      fusion.JAR(num_latents=4, num_iterations=2))


def _model(scan, decode_fn=decoding.temperature_sample):
  network = _network(scan)
  vocab = seqio.PassThroughVocabulary(size=100, eos_id=1)
  return models.VLEncoderDecoderModel(network, vocab, vocab, decode_fn=decode_fn)


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  targets = rng.randint(2, 100, (3, 8)).astype(np.int32)
  return {
      "image": jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 3)), jnp.float32),
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 100, (3, 6)), jnp.int32),
      "decoder_input_tokens": jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1]),
      "decoder_target_tokens": jnp.asarray(targets),
      "decoder_loss_weights": jnp.ones((3, 8), jnp.float32),
  }


def _stack(tree):
  """Unrolled params -> the scanned layout: sibling `layers_<i>` stacked on axis 0."""
  if not isinstance(tree, dict):
    return tree
  out, groups = {}, {}
  for name, value in tree.items():
    match = _LAYER.match(name)
    if match:
      groups.setdefault(match.group(1), {})[int(match.group(2))] = value
    else:
      out[name] = _stack(value)
  for name, layers in groups.items():
    out[name] = jax.tree.map(lambda *x: jnp.stack(x), *[layers[i] for i in sorted(layers)])
  return out


@functools.lru_cache(maxsize=None)
def _params():
  batch = _batch()
  shapes = {k: v.shape for k, v in batch.items()}
  unrolled = jax.jit(lambda r: _model(False).get_initial_variables(r, shapes)["params"])(
      jax.random.PRNGKey(1))
  return unrolled, _stack(unrolled)


def test_scanned_params_have_the_unrolled_shapes_stacked():
  unrolled, stacked = _params()
  shapes = {k: v.shape for k, v in _batch().items()}
  variables = jax.eval_shape(
      lambda r: _model(True).get_initial_variables(r, shapes), jax.random.PRNGKey(1))
  got = jax.tree.map(jnp.shape, variables["params"])
  assert got == jax.tree.map(jnp.shape, stacked)
  assert got["decoder"]["layers"]["mlp"]["wi_0"]["kernel"] == (2, 32, 64)
  assert {x[0] for x in jax.tree.leaves(got["image_encoder"]["encoderblock"],
                                      is_leaf=lambda x: isinstance(x, tuple))} == {2}
  # The layer axis is named, and FSDP still shards 'embed' over 'data'.
  axes = variables["params_axes"]["text_encoder"]["layers"]["attention"]["query"]
  assert axes["kernel_axes"].names == ("layers", "embed", "heads", "kv")
  fsdp = partitioning.PjitPartitioner(
      logical_axis_rules=partitioning.standard_logical_axis_rules(2))
  shardings = fsdp.param_shardings(variables["params"], variables["params_axes"])
  assert tuple(shardings["text_encoder"]["layers"]["attention"]["query"]["kernel"].spec
               ) == (None, "data", "model", None)


@functools.lru_cache(maxsize=None)
def _loss_and_grads(scan, remat=False):
  unrolled, stacked = _params()
  model = models.VLEncoderDecoderModel(_network(scan, remat), *[
      seqio.PassThroughVocabulary(size=100, eos_id=1)] * 2)
  batch = _batch()
  return jax.jit(jax.value_and_grad(lambda q: model.loss_fn(q, batch, None)[0]))(
      stacked if scan else unrolled)


def test_scanned_loss_and_gradients_equal_the_unrolled():
  want_loss, want_grads = _loss_and_grads(False)
  loss, grads = _loss_and_grads(True)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(_stack(want_grads))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("decode_fn", [
    decoding.temperature_sample,
    functools.partial(decoding.beam_search, alpha=0.6)], ids=["greedy", "beam"])
def test_scanned_cached_decoding_equals_the_unrolled(decode_fn):
  """The scanned decoder's cache has its batch on axis 1 (cache_offset=1), which the
  decoders expand and reorder by beam."""
  unrolled, stacked = _params()
  batch = dict(_batch(seed=1), decoder_input_tokens=jnp.zeros((3, 8), jnp.int32))
  num_decodes = 1 if decode_fn is decoding.temperature_sample else 3
  predict = lambda model, p: jax.jit(functools.partial(
      model.predict_batch_with_aux, num_decodes=num_decodes, return_all_decodes=True))(
          p, batch)
  want, want_aux = predict(_model(False, decode_fn), unrolled)
  scanned = _model(True, decode_fn)
  assert scanned._cache_offset == 1
  got, aux = predict(scanned, stacked)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(aux["scores"], want_aux["scores"], atol=1e-5)
  assert (got[..., :2] != 0).any()  # Something was decoded.


@pytest.mark.slow
def test_remat_with_scan_gives_the_same_gradients():
  loss, grads = _loss_and_grads(True, remat=True)
  want_loss, want_grads = _loss_and_grads(True)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ VLMo (Multiway)
def _vlmo(scan, remat=False):
  from vlpretrain import vlmo_models  # pylint: disable=g-import-not-at-top
  from vlpretrain.data import vocab  # pylint: disable=g-import-not-at-top
  from vlpretrain.network import multiway, vlmo  # pylint: disable=g-import-not-at-top
  cfg = multiway.multiway_config("test", image_size=16, patch_size=8, depth=3,
                                 num_vl_layers=1, scan_layers=scan, remat=remat)
  return vlmo_models.VLMoModel(vlmo.VLMo(cfg), vocab.shapes_vocabulary())


def _vlmo_batch():
  rng = np.random.RandomState(0)
  tokens = rng.randint(3, 200, (6, 10))
  tokens[:, 7], tokens[:, 8:] = 1, 0
  return {"image": jnp.asarray(rng.uniform(-1, 1, (6, 16, 16, 3)), jnp.float32),
          "text_tokens": jnp.asarray(tokens, jnp.int32)}


def _stack_multiway(encoder):
  """layer_0..layer_{b-1} stacked as `layers`, the VL-expert ones as `vl_layers`."""
  out = {k: v for k, v in encoder.items() if not k.startswith("layer_")}
  blocks = [encoder[f"layer_{i}"] for i in range(3)]
  out["layers"] = jax.tree.map(lambda *x: jnp.stack(x), *blocks[:2])
  out["vl_layers"] = jax.tree.map(lambda *x: jnp.stack(x), *blocks[2:])
  return out


@pytest.mark.slow
@pytest.mark.parametrize("remat", [False, True], ids=["scan", "scan+remat"])
def test_scanned_multiway_loss_and_gradients_equal_the_unrolled(remat):
  """VLMo's ITC + ITM + MLM loss (its masking and hard-negative draws from one rng)
  and its gradients: the two scanned stacks (V/L experts, then VL experts) compute
  what the three unrolled blocks compute; the param shapes are the stacked ones."""
  batch = _vlmo_batch()
  shapes = {k: v.shape for k, v in batch.items()}
  unrolled = _vlmo(False).get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]
  stacked = dict(unrolled, encoder=_stack_multiway(unrolled["encoder"]))
  scanned = _vlmo(True, remat)
  variables = jax.eval_shape(lambda r: scanned.get_initial_variables(r, shapes),
                             jax.random.PRNGKey(1))
  assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(jnp.shape, stacked)
  assert "vl_ffn" in variables["params"]["encoder"]["vl_layers"]
  assert "vl_ffn" not in variables["params"]["encoder"]["layers"]
  rng = jax.random.PRNGKey(2)
  loss_grad = lambda model, p: jax.jit(jax.value_and_grad(
      lambda q: model.loss_fn(q, batch, rng)[0]))(p)
  want_loss, want_grads = loss_grad(_vlmo(False), unrolled)
  loss, grads = loss_grad(scanned, stacked)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  want_grads = dict(want_grads, encoder=_stack_multiway(want_grads["encoder"]))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("stage_gin", ["vlmo_tiny_stage1_images.gin",
                                       "vlmo_tiny_stage2_texts.gin"])
def test_the_stage_gins_freeze_the_same_params_in_both_layouts(stage_gin):
  """The stage gins' frozen_pattern names blocks as `layer_<i>` or as the scanned
  `layers` / `vl_layers`: the frozen params are the same ones either way."""
  from vlpretrain import optimizers  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "gin", stage_gin), encoding="utf-8") as f:
    text = f.read()
  pattern = re.search(r"frozen_pattern = r'(.*)'", text).group(1)
  shapes = {k: v.shape for k, v in _vlmo_batch().items()}
  init = lambda scan: jax.eval_shape(
      lambda r: _vlmo(scan).get_initial_variables(r, shapes)["params"],
      jax.random.PRNGKey(0))
  unrolled = optimizers.decay_mask(init(False), pattern)
  stacked = dict(unrolled, encoder=_stack_multiway(
      jax.tree.map(jnp.asarray, unrolled["encoder"])))
  scanned = optimizers.decay_mask(init(True), pattern)
  got = jax.tree.map(bool, scanned)
  want = jax.tree.map(lambda x: bool(np.all(x)), stacked)
  assert got == want
  assert 0 < sum(jax.tree.leaves(got)) < len(jax.tree.leaves(got))
