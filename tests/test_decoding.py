"""Cached decoding equals teacher forcing; beam search finds the best sequence."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from vlpretrain import decoding, models
from vlpretrain.network import fusion, t5, transformer, vit

EOS = 1


def _model(decode_fn=decoding.temperature_sample, **decoder_params):
  network = transformer.VLTransformer(vit.vit_config("test/8", 32),
                                      t5.t5_config("test"),
                                      fusion.JAR(num_latents=4, num_iterations=2))
  vocab = seqio.PassThroughVocabulary(size=100, eos_id=EOS)
  return models.VLEncoderDecoderModel(network, vocab, vocab, decode_fn=decode_fn,
                                      default_decoder_params=decoder_params)


def _batch(length=10, seed=0):
  rng = np.random.RandomState(seed)
  return {
      "image": jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 3)), jnp.float32),
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 100, (3, 6)), jnp.int32),
      "decoder_input_tokens": jnp.zeros((3, length), jnp.int32),
  }


def _unbox(model, batch):
  shapes = {k: v.shape for k, v in batch.items()}
  return nn.unbox(model.get_initial_variables(jax.random.PRNGKey(1), shapes))["params"]


def _teacher_forced(model, params, batch, sequences):
  inputs = jnp.pad(sequences, ((0, 0), (1, 0)))[:, :-1]  # shift right, BOS = 0
  return model.module.apply({"params": params}, batch["image"],
                            batch["encoder_input_tokens"], inputs)


def test_cached_greedy_decoding_equals_teacher_forced_logits():
  model = _model()
  batch = _batch()
  params = _unbox(model, batch)
  memory, mask = model.module.apply({"params": params}, batch["image"],
                                    batch["encoder_input_tokens"],
                                    method=model.module.encode)
  cache = model._initial_cache(params, memory, mask, 10)
  step = model._tokens_to_logits_fn(params, memory, mask, 10)
  sequences, log_probs, step_logits = decoding.temperature_sample(
      step, cache, batch_size=3, max_decode_len=10, eos_id=EOS, return_logits=True)
  forced = _teacher_forced(model, params, batch, sequences)
  np.testing.assert_allclose(np.asarray(step_logits), np.asarray(forced), atol=2e-5,
                             rtol=1e-5)
  # The greedy tokens are the argmax of the teacher-forced logits.
  np.testing.assert_array_equal(np.asarray(sequences),
                                np.asarray(jnp.argmax(forced, axis=-1)))
  # And predict_batch_with_aux gives the same tokens and log-probabilities.
  tokens, aux = model.predict_batch_with_aux(params, batch)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(sequences))
  expected = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(forced),
                                         sequences[..., None], -1)[..., 0], axis=1)
  np.testing.assert_allclose(np.asarray(aux["scores"]), np.asarray(expected), rtol=1e-4)


def test_sampling_is_reproducible_and_respects_topk():
  model = _model(temperature=1.0, topk=1)
  batch = _batch()
  params = _unbox(model, batch)
  greedy = _model().predict_batch(params, batch)
  sampled = model.predict_batch(params, batch, rng=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(np.asarray(sampled), np.asarray(greedy))  # top-1 = argmax
  hot = _model(temperature=5.0)
  a = hot.predict_batch(params, batch, rng=jax.random.PRNGKey(3))
  b = hot.predict_batch(params, batch, rng=jax.random.PRNGKey(3))
  c = hot.predict_batch(params, batch, rng=jax.random.PRNGKey(4))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


def _markov_tokens_to_logits(table):
  """A decoder whose next-token distribution depends only on the previous token."""
  log_table = jnp.log(jnp.asarray(table, jnp.float32) + 1e-12)
  def tokens_to_logits(tokens, cache):
    return log_table[tokens[:, 0]], {"steps": cache["steps"] + 1}
  return tokens_to_logits


def test_beam_search_finds_the_most_likely_sequence_that_greedy_misses():
  # tokens: 0 = BOS/pad, 1 = EOS, 2 = a, 3 = b.
  table = np.zeros((4, 4))
  table[0] = [0, 0, 0.6, 0.4]      # start: a 0.6, b 0.4
  table[2] = [0, 0.1, 0.45, 0.45]  # after a: mostly keeps going
  table[3] = [0, 0.9, 0.05, 0.05]  # after b: ends
  step = _markov_tokens_to_logits(table)
  greedy, _ = decoding.temperature_sample(step, {"steps": jnp.zeros((1,))}, 1, 5, EOS)
  assert greedy[0, 0] == 2  # greedy commits to "a"
  sequences, scores = decoding.beam_search(step, {"steps": jnp.zeros((2,))}, 1, 2, 5, EOS,
                                           alpha=0.0)
  np.testing.assert_array_equal(np.asarray(sequences[0, 0]), [3, 1, 0, 0, 0])
  np.testing.assert_allclose(float(scores[0, 0]), np.log(0.4 * 0.9), rtol=1e-5)
  assert float(scores[0, 0]) >= float(scores[0, 1])


def test_beam_search_scores_match_teacher_forced_scores():
  model = _model(decode_fn=decoding.beam_search, alpha=0.0)
  batch = _batch(length=6)
  params = _unbox(model, batch)
  sequences, aux = model.predict_batch_with_aux(params, batch, num_decodes=3,
                                                return_all_decodes=True)
  assert sequences.shape == (3, 3, 6)
  for beam in range(3):
    seq = sequences[:, beam]
    scored = model.score_batch(params, {
        **batch, "decoder_target_tokens": seq,
        "decoder_input_tokens": jnp.pad(seq, ((0, 0), (1, 0)))[:, :-1],
        "decoder_loss_weights": _weights_through_eos(seq)})
    np.testing.assert_allclose(np.asarray(aux["scores"][:, beam]), np.asarray(scored),
                               rtol=1e-4, atol=1e-4)


def _weights_through_eos(seq):
  ended_before = jnp.cumsum(seq == EOS, axis=1) - (seq == EOS)
  return (ended_before == 0).astype(jnp.float32)
