"""The training-facing model: loss values, per-example sums, init and vocabulary checks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from vlpretrain import models
from vlpretrain.network import fusion, t5, transformer, vit


def test_cross_entropy_without_smoothing_is_log_softmax():
  logits = jnp.array([[[2.0, 0.5, -1.0, 0.0]]])
  targets = jnp.array([[1]])
  loss, z = models.cross_entropy_with_logits(logits, targets)
  expected = -jax.nn.log_softmax(logits)[0, 0, 1]
  np.testing.assert_allclose(float(loss[0, 0]), float(expected), rtol=1e-6)
  assert float(z[0, 0]) == 0.0
  # Uniform logits: log V.
  loss, _ = models.cross_entropy_with_logits(jnp.zeros((1, 1, 8)), jnp.array([[3]]))
  np.testing.assert_allclose(float(loss[0, 0]), np.log(8), rtol=1e-6)


def test_smoothed_loss_is_zero_at_the_smoothed_target():
  vocab, smoothing = 10, 0.1
  soft = np.full(vocab, smoothing / (vocab - 1))
  soft[4] = 1 - smoothing
  logits = jnp.log(jnp.asarray(soft))[None, None]
  loss, _ = models.cross_entropy_with_logits(logits, jnp.array([[4]]), smoothing)
  np.testing.assert_allclose(float(loss[0, 0]), 0.0, atol=1e-5)
  worse, _ = models.cross_entropy_with_logits(jnp.zeros((1, 1, vocab)), jnp.array([[4]]),
                                              smoothing)
  assert float(worse[0, 0]) > 0.5


def test_z_loss_term():
  logits = jnp.zeros((1, 1, 16))  # log Z = log 16
  loss, z = models.cross_entropy_with_logits(logits, jnp.array([[0]]), z_loss=1e-2)
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


def test_initial_variables_carry_logical_axes():
  model = _model()
  variables = model.get_initial_variables(jax.random.PRNGKey(0), {
      "image": (1, 32, 32, 3), "encoder_input_tokens": (1, 4),
      "decoder_input_tokens": (1, 5)})
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["token_embedder"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")
  assert tuple(specs["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["text_encoder"]["layers_0"]["attention"]["query"]["kernel"]) == (
      "embed", "heads", "kv")
  assert tuple(specs["fusion"]["image_resampler"]["latents"]) == ("latents", "embed")


def test_loss_is_the_mean_token_loss_and_per_example_sums_add_up():
  model = _model(label_smoothing=0.1, z_loss=1e-4)
  batch = _batch()
  params = nn.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()}))["params"]
  loss, aux = model.loss_fn(params, batch, dropout_rng=None)
  np.testing.assert_array_equal(np.asarray(aux["example_token_count"]), [4, 2])
  np.testing.assert_allclose(float(jnp.sum(aux["example_loss_sum"])) / 6, float(loss),
                             rtol=1e-6)
  assert float(aux["num_tokens"]) == 6
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
  np.testing.assert_allclose(np.asarray(aux["example_loss_sum"]),
                             np.sum(token * weights, 1), rtol=1e-5)
  np.testing.assert_allclose(float(aux["z_loss"]),
                             np.sum(1e-4 * log_z ** 2 * weights) / 6, rtol=1e-5)
  # score_batch: the targets' log-likelihood without smoothing, per example.
  target_log_p = np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(model.score_batch(params, batch)),
                             np.sum(target_log_p * weights, 1), rtol=1e-5)
