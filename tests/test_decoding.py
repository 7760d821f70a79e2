"""Decoding with t5x's decoder contract: cached decoding equals teacher forcing, beam
search finds the best sequence, decodes come in t5x's order (best last), prompts are
forced."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from vlpretrain import decoding, models
from vlpretrain.network import fusion, t5, transformer, vit

EOS = 1


def _model(decode_fn=decoding.temperature_sample):
  network = transformer.VLTransformer(vit.vit_config("test/8", 32),
                                      t5.t5_config("test"),
                                      fusion.JAR(num_latents=4, num_iterations=2))
  vocab = seqio.PassThroughVocabulary(size=100, eos_id=EOS)
  return models.VLEncoderDecoderModel(network, vocab, vocab, decode_fn=decode_fn)


def _batch(length=10, seed=0):
  rng = np.random.RandomState(seed)
  return {
      "image": jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 3)), jnp.float32),
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 100, (3, 6)), jnp.int32),
      "decoder_input_tokens": jnp.zeros((3, length), jnp.int32),
  }


def _params(model, batch):
  shapes = {k: v.shape for k, v in batch.items()}
  return model.get_initial_variables(jax.random.PRNGKey(1), shapes)["params"]


def _teacher_forced(model, params, batch, sequences):
  inputs = jnp.pad(sequences, ((0, 0), (1, 0)))[:, :-1]  # shift right, BOS = 0
  return model.module.apply({"params": params}, batch["image"],
                            batch["encoder_input_tokens"], inputs)


def test_cached_greedy_decoding_equals_teacher_forced_logits():
  model = _model()
  batch = _batch()
  params = _params(model, batch)
  memory, mask = model.module.apply({"params": params}, batch["image"],
                                    batch["encoder_input_tokens"],
                                    method=model.module.encode)
  cache = model._initial_cache(params, memory, mask, 10)
  step = model._tokens_to_logits_fn(params, memory, mask, 10)
  sequences, log_probs, step_logits = decoding.temperature_sample(
      inputs=jnp.zeros((3, 10), jnp.int32), cache=cache, tokens_to_logits=step,
      eos_id=EOS, return_logits=True)
  assert sequences.shape == (3, 1, 10) and log_probs.shape == (3, 1)
  sequences, step_logits = sequences[:, 0], step_logits[:, 0]
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
  batch = _batch()
  model = _model(functools.partial(decoding.temperature_sample, temperature=1.0, topk=1))
  params = _params(model, batch)
  greedy = _model().predict_batch(params, batch)
  sampled = model.predict_batch(params, batch, rng=jax.random.PRNGKey(3))
  np.testing.assert_array_equal(np.asarray(sampled), np.asarray(greedy))  # top-1 = argmax
  hot = _model(functools.partial(decoding.temperature_sample, temperature=5.0, topk=0))
  a = hot.predict_batch(params, batch, rng=jax.random.PRNGKey(3))
  b = hot.predict_batch(params, batch, rng=jax.random.PRNGKey(3))
  c = hot.predict_batch(params, batch, rng=jax.random.PRNGKey(4))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))
  # Several samples per example come sorted by log-probability, the best last.
  samples, aux = hot.predict_batch_with_aux(params, batch, rng=jax.random.PRNGKey(3),
                                            num_decodes=4, return_all_decodes=True)
  assert samples.shape == (3, 4, 10)
  assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)


def _markov_tokens_to_logits(table):
  """A decoder whose next-token distribution depends only on the previous token."""
  log_table = jnp.log(jnp.asarray(table, jnp.float32) + 1e-12)
  def tokens_to_logits(state):
    return log_table[state.cur_token[:, 0]], {"steps": state.cache["steps"] + 1}
  return tokens_to_logits


def test_beam_search_finds_the_most_likely_sequence_that_greedy_misses():
  # tokens: 0 = BOS/pad, 1 = EOS, 2 = a, 3 = b.
  table = np.zeros((4, 4))
  table[0] = [0, 0, 0.6, 0.4]      # start: a 0.6, b 0.4
  table[2] = [0, 0.1, 0.45, 0.45]  # after a: mostly keeps going
  table[3] = [0, 0.9, 0.05, 0.05]  # after b: ends
  step = _markov_tokens_to_logits(table)
  inputs, cache = jnp.zeros((1, 5), jnp.int32), {"steps": jnp.zeros((1,))}
  greedy, _ = decoding.temperature_sample(inputs, cache, step, EOS)
  assert greedy[0, 0, 0] == 2  # greedy commits to "a"
  sequences, scores = decoding.beam_search(inputs, cache, step, EOS, num_decodes=2,
                                           alpha=0.0)
  np.testing.assert_array_equal(np.asarray(sequences[0, -1]), [3, 1, 0, 0, 0])
  np.testing.assert_allclose(float(scores[0, -1]), np.log(0.4 * 0.9), rtol=1e-5)
  assert float(scores[0, -1]) >= float(scores[0, 0])  # t5x's order: best last.
  # A forced prompt: "a" first; the best continuation of it ends with EOS after "b".
  prompt = jnp.array([[0, 2, 0, 0, 0]], jnp.int32)
  sequences, scores = decoding.beam_search(prompt, cache, step, EOS, num_decodes=2,
                                           alpha=0.0)
  np.testing.assert_array_equal(np.asarray(sequences[0, -1]), [2, 3, 1, 0, 0])
  forced, _ = decoding.temperature_sample(prompt, cache, step, EOS)
  np.testing.assert_array_equal(np.asarray(forced[0, 0, :1]), [2])


def test_beam_search_scores_match_teacher_forced_scores():
  model = _model(functools.partial(decoding.beam_search, alpha=0.0))
  batch = _batch(length=6)
  params = _params(model, batch)
  sequences, aux = model.predict_batch_with_aux(params, batch, num_decodes=3,
                                                return_all_decodes=True)
  assert sequences.shape == (3, 3, 6)
  assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)  # Increasing.
  for beam in range(3):
    seq = sequences[:, beam]
    scored = model.score_batch(params, {
        **batch, "decoder_target_tokens": seq,
        "decoder_input_tokens": jnp.pad(seq, ((0, 0), (1, 0)))[:, :-1],
        "decoder_loss_weights": _weights_through_eos(seq)})
    np.testing.assert_allclose(np.asarray(aux["scores"][:, beam]), np.asarray(scored),
                               rtol=1e-4, atol=1e-4)
  best, best_aux = model.predict_batch_with_aux(params, batch, num_decodes=3)
  np.testing.assert_array_equal(np.asarray(best), np.asarray(sequences[:, -1]))
  np.testing.assert_allclose(np.asarray(best_aux["scores"]),
                             np.asarray(aux["scores"][:, -1]))


def test_prompt_with_targets_forces_the_prefix():
  """prompt_with_targets: the decoder inputs (EOS dropped) are the first tokens."""
  model = _model()
  batch = _batch()
  params = _params(model, batch)
  prefix = np.array([[7, 8, EOS], [9, EOS, 0], [5, 6, 7]], np.int32)
  decoder_inputs = np.zeros((3, 10), np.int32)
  decoder_inputs[:, 1:4] = prefix  # Shifted right: BOS 0, then the prefix.
  tokens = model.predict_batch_with_aux(
      params, dict(batch, decoder_input_tokens=jnp.asarray(decoder_inputs)),
      prompt_with_targets=True)[0]
  tokens = np.asarray(tokens)
  np.testing.assert_array_equal(tokens[0, :2], [7, 8])
  np.testing.assert_array_equal(tokens[1, :1], [9])
  np.testing.assert_array_equal(tokens[2, :3], [5, 6, 7])


def _weights_through_eos(seq):
  ended_before = jnp.cumsum(seq == EOS, axis=1) - (seq == EOS)
  return (ended_before == 0).astype(jnp.float32)
