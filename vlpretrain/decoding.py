"""Autoregressive decoding with a KV cache: greedy, temperature sampling, beam search.

Both decoders take `tokens_to_logits(tokens (N, 1), cache) -> (logits (N, V), cache)`,
one step of the cached decoder, and an initial cache for N = batch (* beams) rows.
Decoding starts from token 0 (T5's BOS is the pad id) and stops at `eos_id` or after
`max_decode_len` steps; positions after EOS hold 0.

The loops are hand-written `lax.while_loop`s: neither flax nor optax ships a decoder.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = np.array(-1.0e7, dtype=np.float32)

TokensToLogits = Callable[[jnp.ndarray, dict], tuple]


def temperature_sample(tokens_to_logits: TokensToLogits, initial_cache, batch_size: int,
                       max_decode_len: int, eos_id: int, rng: Optional[jax.Array] = None,
                       temperature: float = 0.0, topk: int = 0,
                       return_logits: bool = False):
  """Greedy (`temperature=0`) or temperature sampling, optionally from the top-k.

  Returns (sequences (B, L) int32, log_probs (B,) float32) and, with `return_logits`,
  the logits of every step (B, L, V) (zeros for steps not run).
  """
  if temperature > 0 and rng is None:
    raise ValueError("temperature_sample with temperature > 0 needs an rng.")
  rng = jax.random.PRNGKey(0) if rng is None else rng

  def step_logits(token, cache):
    logits, cache = tokens_to_logits(token, cache)
    return logits.astype(jnp.float32), cache

  # One traced call (abstract) to learn the vocabulary size for the logits buffer.
  vocab = jax.eval_shape(step_logits, jnp.zeros((batch_size, 1), jnp.int32),
                         initial_cache)[0].shape[-1]

  def cond(state):
    i, _, _, _, ended, _, _, _ = state
    return (i < max_decode_len) & ~jnp.all(ended)

  def body(state):
    i, token, sequences, cache, ended, log_prob, rng, all_logits = state
    logits, cache = step_logits(token, cache)
    rng, sample_rng = jax.random.split(rng)
    if temperature > 0:
      scaled = logits / temperature
      if topk:
        kth = jax.lax.top_k(scaled, topk)[0][:, -1:]
        scaled = jnp.where(scaled < kth, NEG_INF, scaled)
      next_token = jax.random.categorical(sample_rng, scaled).astype(jnp.int32)
    else:
      next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    token_log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         next_token[:, None], axis=-1)[:, 0]
    next_token = jnp.where(ended, 0, next_token)
    log_prob = log_prob + jnp.where(ended, 0.0, token_log_prob)
    sequences = sequences.at[:, i].set(next_token)
    if return_logits:
      all_logits = jax.lax.dynamic_update_slice(all_logits, logits[:, None], (0, i, 0))
    ended = ended | (next_token == eos_id)
    return i + 1, next_token[:, None], sequences, cache, ended, log_prob, rng, all_logits

  init = (jnp.array(0), jnp.zeros((batch_size, 1), jnp.int32),
          jnp.zeros((batch_size, max_decode_len), jnp.int32), initial_cache,
          jnp.zeros((batch_size,), bool), jnp.zeros((batch_size,), jnp.float32), rng,
          jnp.zeros((batch_size, max_decode_len, vocab) if return_logits else (0,),
                    jnp.float32))
  _, _, sequences, _, _, log_prob, _, all_logits = jax.lax.while_loop(cond, body, init)
  if return_logits:
    return sequences, log_prob, all_logits
  return sequences, log_prob


def brevity_penalty(alpha: float, length):
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
  return jnp.power((5.0 + length) / 6.0, alpha)


def _gather_beams(tree, beam_indices, batch_size, old_beams, new_beams):
  """Selects beams: leaves (batch*old_beams, ...) -> (batch*new_beams, ...).

  Scalars (such as a cache's write index) are shared by all beams and kept as they are.
  """
  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape((batch_size, old_beams) + x.shape[1:])
    x = jnp.take_along_axis(
        x, beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2)), axis=1)
    return x.reshape((batch_size * new_beams,) + x.shape[2:])
  return jax.tree_util.tree_map(gather, tree)


def beam_search(tokens_to_logits: TokensToLogits, initial_cache, batch_size: int,
                beam_size: int, max_decode_len: int, eos_id: int, alpha: float = 0.6):
  """Beam search with a length penalty; the cache rows are (batch * beam_size).

  Keeps `beam_size` alive (no EOS yet) and `beam_size` finished hypotheses per example;
  stops when no alive beam can beat the worst finished one. Returns (sequences
  (B, beam, L), scores (B, beam)): finished hypotheses best first, then (if fewer than
  `beam_size` finished) alive ones; scores are log-probabilities divided by
  `brevity_penalty(alpha, length)`.
  """
  b, k, length = batch_size, beam_size, max_decode_len

  def cond(state):
    i, alive_seqs, alive_logp, fin_seqs, fin_scores, _ = state
    best_possible = alive_logp[:, 0] / brevity_penalty(alpha, length)
    worst_finished = jnp.min(fin_scores, axis=1)
    can_improve = ~jnp.all(worst_finished > best_possible)
    return (i < length) & can_improve

  def body(state):
    i, alive_seqs, alive_logp, fin_seqs, fin_scores, cache = state
    prev = jnp.where(i > 0, alive_seqs[:, :, jnp.maximum(i - 1, 0)], 0)
    logits, cache = tokens_to_logits(prev.reshape(b * k, 1), cache)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, vocab)
    candidates = (alive_logp[:, :, None] + log_probs).reshape(b, k * vocab)
    top_logp, top_index = jax.lax.top_k(candidates, 2 * k)
    parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seqs, parent[:, :, None], axis=1)
    seqs = seqs.at[:, :, i].set(token)
    is_eos = token == eos_id

    # The best k candidates that did not end become the new alive beams.
    alive_score = jnp.where(is_eos, NEG_INF, top_logp)
    alive_score, keep = jax.lax.top_k(alive_score, k)
    alive_seqs = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
    cache = _gather_beams(cache, jnp.take_along_axis(parent, keep, axis=1), b, k, k)

    # Candidates that ended join the finished pool; keep the best k.
    ended_score = jnp.where(is_eos, top_logp / brevity_penalty(alpha, i + 1), NEG_INF)
    pool_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
    pool_scores = jnp.concatenate([fin_scores, ended_score], axis=1)
    fin_scores, best = jax.lax.top_k(pool_scores, k)
    fin_seqs = jnp.take_along_axis(pool_seqs, best[:, :, None], axis=1)
    return i + 1, alive_seqs, alive_score, fin_seqs, fin_scores, cache

  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  init = (jnp.array(0), jnp.zeros((b, k, length), jnp.int32), alive_logp,
          jnp.zeros((b, k, length), jnp.int32), jnp.full((b, k), NEG_INF), initial_cache)
  _, alive_seqs, alive_logp, fin_seqs, fin_scores, _ = jax.lax.while_loop(
      cond, body, init)
  # Finished hypotheses rank first, then alive ones (cut at max_decode_len), then
  # empty slots: an example with fewer than k finished beams is topped up with alive ones.
  alive_scores = alive_logp / brevity_penalty(alpha, length)
  pool_seqs = jnp.concatenate([fin_seqs, alive_seqs], axis=1)
  pool_scores = jnp.concatenate([fin_scores, alive_scores], axis=1)
  rank_key = jnp.concatenate([
      jnp.where(fin_scores > NEG_INF / 2, fin_scores, 2 * NEG_INF),
      alive_scores + NEG_INF / 10], axis=1)
  order = jax.lax.top_k(rank_key, k)[1]
  sequences = jnp.take_along_axis(pool_seqs, order[:, :, None], axis=1)
  scores = jnp.take_along_axis(pool_scores, order, axis=1)
  return sequences, scores
