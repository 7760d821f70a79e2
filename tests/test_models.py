"""The model contract (t5x's BaseModel) and the encoder-decoder: loss values and their
normalisation, clu metrics, per-example sums, params_axes, vocabulary checks."""
import flax
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from vlpretrain import losses
from vlpretrain import models
from vlpretrain.network import fusion, t5, transformer, vit


def test_cross_entropy_without_smoothing_is_log_softmax():
  logits = jnp.array([[[2.0, 0.5, -1.0, 0.0]]])
  targets = jnp.array([[1]])
  loss, z = losses.cross_entropy_with_logits(logits, targets)
  expected = -jax.nn.log_softmax(logits)[0, 0, 1]
  np.testing.assert_allclose(float(loss[0, 0]), float(expected), rtol=1e-6)
  assert float(z[0, 0]) == 0.0
  # Uniform logits: log V.
  loss, _ = losses.cross_entropy_with_logits(jnp.zeros((1, 1, 8)), jnp.array([[3]]))
  np.testing.assert_allclose(float(loss[0, 0]), np.log(8), rtol=1e-6)


def test_smoothed_loss_is_zero_at_the_smoothed_target():
  vocab, smoothing = 10, 0.1
  soft = np.full(vocab, smoothing / (vocab - 1))
  soft[4] = 1 - smoothing
  logits = jnp.log(jnp.asarray(soft))[None, None]
  loss, _ = losses.cross_entropy_with_logits(logits, jnp.array([[4]]), smoothing)
  np.testing.assert_allclose(float(loss[0, 0]), 0.0, atol=1e-5)
  worse, _ = losses.cross_entropy_with_logits(jnp.zeros((1, 1, vocab)), jnp.array([[4]]),
                                              smoothing)
  assert float(worse[0, 0]) > 0.5


def test_z_loss_term():
  logits = jnp.zeros((1, 1, 16))  # log Z = log 16
  loss, z = losses.cross_entropy_with_logits(logits, jnp.array([[0]]), z_loss=1e-2)
  np.testing.assert_allclose(float(z[0, 0]), 1e-2 * np.log(16) ** 2, rtol=1e-5)
  np.testing.assert_allclose(float(loss[0, 0]), np.log(16) + 1e-2 * np.log(16) ** 2,
                             rtol=1e-5)


def _model(vocab_size=None, **kwargs):
  network = transformer.VLTransformer(vit.vit_config("test/8", 32),
                                      t5.t5_config("test", vocab_size=vocab_size),
                                      fusion.JAR(num_latents=4, num_iterations=1))
  vocab = seqio.PassThroughVocabulary(size=200, eos_id=1)
  return models.VLEncoderDecoderModel(network, vocab, vocab, **kwargs)


def _batch():
  rng = np.random.RandomState(0)
  targets = np.array([[5, 6, 7, 1, 0], [9, 1, 0, 0, 0]], np.int32)
  return {
      "image": jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32),
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 200, (2, 4)), jnp.int32),
      "decoder_input_tokens": jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1]),
      "decoder_target_tokens": jnp.asarray(targets),
      "decoder_loss_weights": jnp.asarray(targets > 0, jnp.float32),
  }


def test_vocab_is_padded_to_a_multiple_of_128():
  assert _model().module.t5_config.vocab_size == 256


def test_too_small_vocab_size_is_a_clear_error():
  model = _model(vocab_size=128)
  with pytest.raises(ValueError, match="t5.t5_config.vocab_size"):
    model.get_initial_variables(jax.random.PRNGKey(0), {
        "image": (1, 32, 32, 3), "encoder_input_tokens": (1, 4),
        "decoder_input_tokens": (1, 5)})


def test_initial_variables_carry_logical_axes_as_params_axes():
  """t5x's layout: unboxed 'params' and a 'params_axes' collection naming the axes."""
  model = _model()
  variables = model.get_initial_variables(jax.random.PRNGKey(0), {
      "image": (1, 32, 32, 3), "encoder_input_tokens": (1, 4),
      "decoder_input_tokens": (1, 5)})
  assert not any(isinstance(x, nn.meta.AxisMetadata) for x in jax.tree.leaves(
      variables["params"], is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)))
  specs = flax_partitioning.get_axis_names(variables["params_axes"])
  assert tuple(specs["token_embedder"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")
  assert tuple(specs["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["text_encoder"]["layers_0"]["attention"]["query"]["kernel"]) == (
      "embed", "heads", "kv")
  assert tuple(specs["fusion"]["image_resampler"]["latents"]) == ("latents", "embed")
  # Every param has its names (t5x's TrainState checks this).
  flat = lambda t: set(flax.traverse_util.flatten_dict(flax.core.unfreeze(t)))
  assert flat(specs) == flat(variables["params"])


def _params(model, batch):
  return model.get_initial_variables(
      jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()})["params"]


def test_loss_is_t5x_weighted_cross_entropy_and_per_example_sums_add_up():
  model = _model(label_smoothing=0.1, z_loss=1e-4,
                 loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  batch = _batch()
  params = _params(model, batch)
  loss, metrics, example = model.loss_fn_with_example_losses(params, batch, None)
  np.testing.assert_array_equal(np.asarray(example.weight), [4, 2])
  np.testing.assert_allclose(float(jnp.sum(example.loss_sum)) / 6, float(loss),
                             rtol=1e-6)
  # The same loss by hand (numpy) from the network's logits: smoothed cross-entropy
  # minus the entropy of the smoothed targets, plus z_loss * log(Z)^2, token-mean.
  logits = np.asarray(model.module.apply(
      {"params": params}, batch["image"], batch["encoder_input_tokens"],
      batch["decoder_input_tokens"]), np.float64)
  targets = np.asarray(batch["decoder_target_tokens"])
  weights = np.asarray(batch["decoder_loss_weights"])
  vocab = logits.shape[-1]
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + \
      logits.max(-1)
  log_p = logits - log_z[..., None]
  q = np.full(logits.shape, 0.1 / (vocab - 1))
  np.put_along_axis(q, targets[..., None], 0.9, axis=-1)
  entropy = -np.sum(q * np.log(q), -1)
  token = -np.sum(q * log_p, -1) - entropy + 1e-4 * log_z ** 2
  np.testing.assert_allclose(float(loss), np.sum(token * weights) / 6, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(example.loss_sum), np.sum(token * weights, 1),
                             rtol=1e-5)
  values = {k: float(m.compute()) for k, m in metrics.items()}
  np.testing.assert_allclose(values["z_loss"], np.sum(1e-4 * log_z ** 2 * weights) / 6,
                             rtol=1e-5)
  np.testing.assert_allclose(values["loss"], np.sum(token * weights) / 6, rtol=1e-5)
  correct = (np.argmax(logits, -1) == targets) & (weights > 0)
  np.testing.assert_allclose(values["accuracy"], correct.sum() / 6, rtol=1e-6)
  assert values["num_tokens"] == 6 and values["num_examples"] == 2
  # score_batch: the targets' log-likelihood without smoothing, per example.
  target_log_p = np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)),
                             np.sum(target_log_p * weights, 1), rtol=1e-5)
  scores, intermediates = model.score_batch(params, batch, return_intermediates=True)
  np.testing.assert_allclose(np.asarray(intermediates["decoder"]["token_scores"][0]),
                             target_log_p * weights, rtol=1e-5, atol=1e-6)
  # The other factors: t5x's default sum, a constant, per sequence, all tokens.
  for factor, want in ((None, np.sum(token * weights)),
                       (4.0, np.sum(token * weights) / 4),
                       ("NUM_TOTAL_TARGET_TOKENS", np.sum(token * weights) / 10),
                       ("AVERAGE_PER_SEQUENCE",
                        np.mean(np.sum(token * weights, 1) / weights.sum(1)))):
    model_f = _model(label_smoothing=0.1, z_loss=1e-4, loss_normalizing_factor=factor)
    np.testing.assert_allclose(float(model_f.loss_fn(params, batch, None)[0]), want,
                               rtol=1e-5, err_msg=str(factor))
  with pytest.raises(ValueError, match="loss_normalizing_factor='PER_TOKEN'"):
    _model(loss_normalizing_factor="PER_TOKEN")


def test_metrics_merge_over_batches_like_one_batch():
  """loss_fn's clu metrics merged over two half batches equal those of the whole one
  (t5x merges microbatches so); eval_fn is the loss without dropout."""
  model = _model(loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  batch = _batch()
  params = _params(model, batch)
  _, whole = model.loss_fn(params, batch, None)
  halves = [model.loss_fn(params, {k: v[i:i + 1] for k, v in batch.items()}, None)[1]
            for i in (0, 1)]
  merged = {k: halves[0][k].merge(halves[1][k]) for k in whole}
  for name in ("accuracy", "loss_per_nonpadding_target_token", "num_tokens",
               "num_examples"):
    np.testing.assert_allclose(float(merged[name].compute()),
                               float(whole[name].compute()), rtol=1e-6, err_msg=name)
  eval_loss, eval_metrics = model.eval_fn(params, batch)
  np.testing.assert_allclose(float(eval_loss), float(model.loss_fn(params, batch, None)[0]))
  assert set(eval_metrics) == set(whole)
