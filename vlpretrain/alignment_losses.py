"""Image-text alignment objectives of the encoder families (seed 002 sec. 3.3).

All functions take the *global* batch: under `jax.jit` over a device mesh a (B, D)
array sharded on its batch axis is one logical array, so `image @ text.T` has every
pair of the global batch and XLA gathers what it needs across devices and hosts. The
negatives of ITC and the hard-negative candidates of ITM are therefore the whole global
batch (seed 002 Table 6's "global hard negative mining") with no explicit all-gather;
tests/test_vlmo.py checks that 8 devices give the single-device loss.

  itc_loss          symmetric InfoNCE over the global batch (eqs. 3-4);
  hard_negatives    one negative per row, sampled from the ITC similarities (ALBEF's
                    recipe, seed 002's ITM);
  bert_mask         BERT's masked-LM corruption, whole words where the vocabulary
                    marks word starts.
"""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp


def same_rows(tokens) -> jnp.ndarray:
  """(B, B) True where two rows of `tokens` (B, L) are identical."""
  return jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)


def itc_loss(image_emb, text_emb, logit_scale, positives=None):
  """Per-example symmetric contrastive loss (B,), and the (B, B) image-text logits.

  image_emb, text_emb: L2-normalised (B, D); logits = scale * image @ text.T. The
  target of row i is text i (image i for the text->image side), or, with `positives`
  (B, B) bool (e.g. identical captions, `same_rows`), the uniform distribution over
  row i's positives: identical texts of different images are then not pushed apart.
  That is our addition for data with repeated captions; with all-distinct texts it is
  exactly eq. 4's cross-entropy. Each example's loss is (i2t + t2i) / 2.
  """
  logits = logit_scale * jnp.einsum("id,jd->ij", image_emb.astype(jnp.float32),
                                    text_emb.astype(jnp.float32))
  n = logits.shape[0]
  if positives is None:
    positives = jnp.eye(n, dtype=bool)
  positives = positives | jnp.eye(n, dtype=bool)
  target = positives / jnp.sum(positives, axis=1, keepdims=True)
  i2t = -jnp.sum(target * jax.nn.log_softmax(logits, axis=1), axis=1)
  t2i = -jnp.sum(target.T * jax.nn.log_softmax(logits.T, axis=1), axis=1)
  return (i2t + t2i) / 2, logits


class HardNegatives(NamedTuple):
  index: jnp.ndarray  # (B,) int32: the negative chosen for each row.
  valid: jnp.ndarray  # (B,) bool: False when the row had no admissible candidate.


def hard_negatives(rng: Optional[jax.Array], logits, exclude) -> HardNegatives:
  """For each row i of `logits` (B, B), a column j != i drawn with probability
  softmax(logits[i]) over the admissible columns (`exclude[i, j]` False), as ALBEF and
  seed 002 sample hard negatives; the arg-max when `rng` is None (deterministic evals).
  Never the positive (the diagonal) nor an excluded column; a row with no admissible
  column gets valid=False, and the caller drops its pair. The similarities are not
  differentiated through (stop_gradient), as in ALBEF.
  """
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  n = logits.shape[0]
  blocked = exclude | jnp.eye(n, dtype=bool)
  masked = jnp.where(blocked, -jnp.inf, logits)
  if rng is None:
    index = jnp.argmax(masked, axis=1)
  else:
    index = jax.random.categorical(rng, masked, axis=1)
  valid = ~jnp.all(blocked, axis=1)
  # With no admissible column categorical/argmax may return anything: keep it off i.
  index = jnp.where(valid, index, (jnp.arange(n) + 1) % n)
  return HardNegatives(index.astype(jnp.int32), valid)


class MaskedTokens(NamedTuple):
  inputs: jnp.ndarray   # (B, L) the corrupted tokens the model reads.
  targets: jnp.ndarray  # (B, L) the original tokens.
  weights: jnp.ndarray  # (B, L) 1.0 at the positions chosen for prediction.


def bert_mask(rng: jax.Array, tokens, candidates, word_starts, mask_id: int,
              random_low: int, random_high: int, rate: float = 0.15) -> MaskedTokens:
  """BERT's corruption (Devlin et al. 2019, sec. 3.1; seed 002: 15%).

  Each word of the `candidates` positions (B, L bool: real text, not padding or EOS)
  is chosen with probability `rate`; a word is a word-start token (`word_starts`
  (B, L) bool, e.g. sentencepiece pieces beginning with '▁') and the pieces after it
  (whole-word masking; all-True `word_starts` masks single tokens). Of the chosen
  tokens 80% become `mask_id`, 10% a uniform random id in [random_low, random_high)
  and 10% stay as they are; all of them are predicted.
  """
  choose_rng, kind_rng, random_rng = jax.random.split(rng, 3)
  starts = word_starts & candidates
  # Word index of each position: the number of word starts up to and including it.
  word = jnp.cumsum(starts, axis=1) - 1
  word_chosen = jax.random.uniform(choose_rng, tokens.shape) < rate
  chosen = jnp.take_along_axis(word_chosen, jnp.maximum(word, 0), axis=1)
  chosen = chosen & candidates & (word >= 0)
  kind = jax.random.uniform(kind_rng, tokens.shape)
  random_ids = jax.random.randint(random_rng, tokens.shape, random_low, random_high)
  corrupted = jnp.where(kind < 0.8, mask_id, jnp.where(kind < 0.9, random_ids, tokens))
  inputs = jnp.where(chosen, corrupted, tokens).astype(tokens.dtype)
  return MaskedTokens(inputs, tokens, chosen.astype(jnp.float32))
