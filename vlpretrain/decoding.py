"""Autoregressive decoding with a KV cache: greedy, temperature sampling, beam search.

Both decoders have the call signature of t5x's decoding functions (t5x's
`models.DecodeFnCallable`), so a model can take either vlpretrain's or t5x's:

    decodes, scores = decode_fn(inputs=prompt (B, L), cache=cache for B rows,
                                tokens_to_logits=fn, eos_id=1, num_decodes=n,
                                decode_rng=key, cache_offset=0, **decoder_params)

* `tokens_to_logits(state: DecodingState) -> (logits (B*n, V), new cache)`: one step of
  the cached decoder; `state.cur_token` is (B*n, 1), `state.cache` the cache of B*n
  rows (the decoder repeats each row of the model's cache n times, t5x's
  `flat_batch_beam_expand` layout: row b*n + j is decode j of example b).
* `inputs`: the decoder's input tokens as teacher forcing would give them (BOS = 0 at
  position 0, then the targets shifted right). A non-zero `inputs[:, i + 1]` forces
  output token i (a prompt); zeros are generated. Decoding stops at `eos_id`.
* Returns `decodes` (B, n, L) int32, positions after EOS holding 0, and `scores`
  (B, n), both sorted by increasing score: `decodes[:, -1]` is the best (t5x's order).
  Temperature sampling scores are the log-probabilities of the generated tokens (the
  forced ones not counted); beam search scores are log-probabilities over the GNMT
  brevity penalty.

The loops are hand-written `lax.while_loop`s: neither flax nor optax ships a decoder,
and t5x is not a dependency.
"""
from typing import Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = np.array(-1.0e7, dtype=np.float32)


@flax.struct.dataclass
class DecodingState:
  """What `tokens_to_logits` sees at each step (the fields of t5x's DecodingState).

  cur_index: (B*n,) position of the step; sequences: (B*n, L) tokens so far;
  cur_token: (B*n, 1) the token to feed; cache: the decoder's cache.
  """
  cur_index: jnp.ndarray
  sequences: jnp.ndarray
  cur_token: jnp.ndarray
  cache: Mapping[str, jnp.ndarray]


TokensToLogits = Callable[[DecodingState], tuple]


def flat_batch_beam_expand(x, num_decodes: int):
  """(B, ...) -> (B*n, ...), each row repeated n times in place (t5x's layout)."""
  return jnp.repeat(x, num_decodes, axis=0)


def expand_cache(cache, num_decodes: int, cache_offset: int = 0):
  """Repeats every per-row leaf of a cache n times along its batch axis, axis
  `cache_offset` (t5x's: 1 when the decoder scans its layers, the cache then having
  a leading layer axis); leaves with no batch axis (write indices, per layer under a
  scan) stay."""
  return jax.tree_util.tree_map(
      lambda x: x if jnp.ndim(x) <= cache_offset else jnp.repeat(
          x, num_decodes, axis=cache_offset), cache)


def _check_no_prefill(initial_index) -> None:
  if initial_index is not None:
    raise ValueError("vlpretrain's decoders do not support prefilled prompts "
                     "(initial_index); prompts are forced step by step.")


def temperature_sample(inputs: jnp.ndarray,
                       cache: Mapping[str, jnp.ndarray],
                       tokens_to_logits: TokensToLogits,
                       eos_id: int,
                       decode_rng: Optional[jax.Array] = None,
                       num_decodes: int = 1,
                       temperature: float = 1.0,
                       topk: int = 1,
                       cache_offset: int = 0,
                       initial_index: Optional[jnp.ndarray] = None,
                       return_logits: bool = False):
  """Temperature sampling from the top-k (t5x's defaults: topk=1, greedy).

  `temperature=0` or `topk=1` is greedy decoding. With `return_logits` a third output,
  the logits of every step (B, n, L, V), in the row order of `decodes` (zeros for
  steps not run).
  """
  _check_no_prefill(initial_index)
  greedy = topk == 1 or temperature == 0
  if not greedy and decode_rng is None:
    raise ValueError("temperature_sample with temperature > 0 and topk != 1 needs a "
                     "decode_rng.")
  rng = jax.random.PRNGKey(0) if decode_rng is None else decode_rng
  batch, length = inputs.shape
  rows = batch * num_decodes
  prompt = flat_batch_beam_expand(inputs, num_decodes)
  forced = jnp.concatenate([prompt[:, 1:], jnp.zeros((rows, 1), prompt.dtype)], axis=1)
  cache = expand_cache(cache, num_decodes, cache_offset)

  def step_logits(i, sequences, token, cache):
    state = DecodingState(cur_index=jnp.full((rows,), i), sequences=sequences,
                          cur_token=token, cache=cache)
    logits, cache = tokens_to_logits(state)
    return logits.astype(jnp.float32), cache

  # One abstract call to learn the vocabulary size for the logits buffer.
  vocab = jax.eval_shape(step_logits, 0, jnp.zeros((rows, length), jnp.int32),
                         jnp.zeros((rows, 1), jnp.int32), cache)[0].shape[-1]

  def cond(state):
    i, _, _, _, ended, _, _, _ = state
    return (i < length) & ~jnp.all(ended)

  def body(state):
    i, token, sequences, cache, ended, log_prob, rng, all_logits = state
    logits, cache = step_logits(i, sequences, token, cache)
    rng, sample_rng = jax.random.split(rng)
    if greedy:
      sampled = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      scaled = logits / temperature
      if topk:
        kth = jax.lax.top_k(scaled, topk)[0][:, -1:]
        scaled = jnp.where(scaled < kth, NEG_INF, scaled)
      sampled = jax.random.categorical(sample_rng, scaled).astype(jnp.int32)
    prompt_token = forced[:, i]
    is_forced = prompt_token != 0
    next_token = jnp.where(is_forced, prompt_token, sampled)
    token_log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         next_token[:, None], axis=-1)[:, 0]
    next_token = jnp.where(ended, 0, next_token)
    log_prob = log_prob + jnp.where(ended | is_forced, 0.0, token_log_prob)
    sequences = sequences.at[:, i].set(next_token)
    if return_logits:
      all_logits = jax.lax.dynamic_update_slice(all_logits, logits[:, None], (0, i, 0))
    ended = ended | ((next_token == eos_id) & ~is_forced)
    return i + 1, next_token[:, None], sequences, cache, ended, log_prob, rng, all_logits

  init = (jnp.array(0), jnp.zeros((rows, 1), jnp.int32),
          jnp.zeros((rows, length), jnp.int32), cache, jnp.zeros((rows,), bool),
          jnp.zeros((rows,), jnp.float32), rng,
          jnp.zeros((rows, length, vocab) if return_logits else (0,), jnp.float32))
  _, _, sequences, _, _, log_prob, _, all_logits = jax.lax.while_loop(cond, body, init)
  sequences = sequences.reshape(batch, num_decodes, length)
  log_prob = log_prob.reshape(batch, num_decodes)
  order = jnp.argsort(log_prob, axis=1)  # Increasing: the best decode last.
  sequences = jnp.take_along_axis(sequences, order[:, :, None], axis=1)
  log_prob = jnp.take_along_axis(log_prob, order, axis=1)
  if return_logits:
    all_logits = all_logits.reshape(batch, num_decodes, length, vocab)
    return sequences, log_prob, jnp.take_along_axis(all_logits,
                                                    order[:, :, None, None], axis=1)
  return sequences, log_prob


def brevity_penalty(alpha: float, length):
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
  return jnp.power((5.0 + length) / 6.0, alpha)


def _gather_beams(tree, beam_indices, batch_size, old_beams, new_beams,
                  batch_axis: int = 0):
  """Selects beams: leaves (batch*old_beams, ...) -> (batch*new_beams, ...), the
  batch at axis `batch_axis` (a cache's `cache_offset`).

  Leaves with no batch axis (a cache's write indices) are shared by all beams and
  kept as they are.
  """
  def gather(x):
    if x.ndim <= batch_axis:
      return x
    x = jnp.moveaxis(x, batch_axis, 0)
    x = x.reshape((batch_size, old_beams) + x.shape[1:])
    x = jnp.take_along_axis(
        x, beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2)), axis=1)
    return jnp.moveaxis(x.reshape((batch_size * new_beams,) + x.shape[2:]), 0,
                        batch_axis)
  return jax.tree_util.tree_map(gather, tree)


def beam_search(inputs: jnp.ndarray,
                cache: Mapping[str, jnp.ndarray],
                tokens_to_logits: TokensToLogits,
                eos_id: int,
                num_decodes: int = 4,
                alpha: float = 0.6,
                max_decode_len: Optional[int] = None,
                decode_rng: Optional[jax.Array] = None,
                cache_offset: int = 0,
                initial_index: Optional[jnp.ndarray] = None):
  """Beam search with a length penalty; `num_decodes` is the beam size.

  Keeps `num_decodes` alive (no EOS yet) and as many finished hypotheses per example;
  stops when no alive beam can beat the worst finished one. Finished hypotheses rank
  above alive ones (cut at the length); the result is in increasing order, best last.
  Forced prompt tokens (non-zero `inputs[:, i + 1]`) are taken by every beam.
  """
  del decode_rng  # Deterministic.
  _check_no_prefill(initial_index)
  b, k = inputs.shape[0], num_decodes
  length = inputs.shape[1] if max_decode_len is None else max_decode_len
  forced = jnp.concatenate([inputs[:, 1:], jnp.zeros((b, 1), inputs.dtype)],
                           axis=1)[:, :length]
  cache = expand_cache(cache, k, cache_offset)

  def cond(state):
    i, alive_seqs, alive_logp, fin_seqs, fin_scores, _ = state
    best_possible = alive_logp[:, -1] / brevity_penalty(alpha, length)
    worst_finished = jnp.min(fin_scores, axis=1)
    can_improve = ~jnp.all(worst_finished > best_possible)
    return (i < length) & can_improve

  def body(state):
    i, alive_seqs, alive_logp, fin_seqs, fin_scores, cache = state
    prev = jnp.where(i > 0, alive_seqs[:, :, jnp.maximum(i - 1, 0)], 0)
    step = DecodingState(cur_index=jnp.full((b * k,), i),
                         sequences=alive_seqs.reshape(b * k, length),
                         cur_token=prev.reshape(b * k, 1), cache=cache)
    logits, cache = tokens_to_logits(step)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    prompt_token = forced[:, i]
    is_forced = prompt_token != 0
    only_prompt = jnp.arange(vocab)[None, None, :] == prompt_token[:, None, None]
    log_probs = jnp.where(is_forced[:, None, None] & ~only_prompt, NEG_INF, log_probs)
    candidates = (alive_logp[:, :, None] + log_probs).reshape(b, k * vocab)
    top_logp, top_index = jax.lax.top_k(candidates, 2 * k)
    parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seqs, parent[:, :, None], axis=1)
    seqs = seqs.at[:, :, i].set(token)
    is_eos = (token == eos_id) & ~is_forced[:, None]

    # The best k candidates that did not end become the new alive beams (ascending).
    alive_score = jnp.where(is_eos, NEG_INF, top_logp)
    alive_score, keep = jax.lax.top_k(alive_score, k)
    alive_score, keep = alive_score[:, ::-1], keep[:, ::-1]
    alive_seqs = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(parent, keep, axis=1), b, k, k,
                          cache_offset)

    # Candidates that ended join the finished pool; keep the best k.
    ended_score = jnp.where(is_eos, top_logp / brevity_penalty(alpha, i + 1), NEG_INF)
    pool_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
    pool_scores = jnp.concatenate([fin_scores, ended_score], axis=1)
    fin_scores, best = jax.lax.top_k(pool_scores, k)
    fin_seqs = jnp.take_along_axis(pool_seqs, best[:, :, None], axis=1)
    return i + 1, alive_seqs, alive_score, fin_seqs, fin_scores, cache

  alive_logp = jnp.tile(jnp.array([NEG_INF] * (k - 1) + [0.0], jnp.float32), (b, 1))
  init = (jnp.array(0), jnp.zeros((b, k, length), jnp.int32), alive_logp,
          jnp.zeros((b, k, length), jnp.int32), jnp.full((b, k), NEG_INF), cache)
  _, alive_seqs, alive_logp, fin_seqs, fin_scores, _ = jax.lax.while_loop(
      cond, body, init)
  # Finished hypotheses rank first, then alive ones (cut at the length), then empty
  # slots: an example with fewer than k finished beams is topped up with alive ones.
  alive_scores = alive_logp / brevity_penalty(alpha, length)
  pool_seqs = jnp.concatenate([fin_seqs, alive_seqs], axis=1)
  pool_scores = jnp.concatenate([fin_scores, alive_scores], axis=1)
  rank_key = jnp.concatenate([
      jnp.where(fin_scores > NEG_INF / 2, fin_scores, 2 * NEG_INF),
      alive_scores + NEG_INF / 10], axis=1)
  order = jax.lax.top_k(rank_key, k)[1][:, ::-1]  # Increasing: the best last.
  sequences = jnp.take_along_axis(pool_seqs, order[:, :, None], axis=1)
  scores = jnp.take_along_axis(pool_scores, order, axis=1)
  return sequences, scores
