"""Token losses and their normalisation, with t5x's semantics (t5x/losses.py).

`loss_normalizing_factor` is t5x's: None sums the token losses (t5x's default), a
number divides by it, and the special names divide by a count of the batch:
'NUM_REAL_TARGET_TOKENS' (the sum of `decoder_loss_weights`: the mean token loss,
vlpretrain's gin default), 'NUM_TOTAL_TARGET_TOKENS' (batch x target length) or
'AVERAGE_PER_SEQUENCE' (each sequence's mean token loss, averaged over sequences).
t5x's `SpecialLossNormalizingFactor` members are accepted by name.
"""
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vlpretrain import errors

SPECIAL_FACTORS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS",
                   "AVERAGE_PER_SEQUENCE")


def cross_entropy_with_logits(logits, targets, label_smoothing: float = 0.0,
                              z_loss: float = 0.0):
  """Per-token cross-entropy with label smoothing and z-loss.

  Smoothed targets put `1 - label_smoothing` on the target and spread the rest over
  the other V-1 tokens; the entropy of that distribution is subtracted so a perfect
  prediction has loss 0 (as t5x's compute_weighted_cross_entropy). The z-loss
  `z_loss * log(Z)^2` keeps the softmax normaliser near 1 (PaLM, Chowdhery et al.,
  2022). Returns (loss, z_loss_term), each (B, L).
  """
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab - 1)
  normalizer = -(confidence * np.log(confidence) +
                 (vocab - 1) * low_confidence * np.log(low_confidence + 1e-20))
  soft_targets = (jax.nn.one_hot(targets, vocab) * (confidence - low_confidence) +
                  low_confidence)
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  loss = log_z - jnp.sum(soft_targets * logits, axis=-1) - normalizer
  z_term = z_loss * jnp.square(log_z)
  return loss + z_term, z_term


def check_normalizing_factor(factor: Any) -> None:
  """Raises ConfigError for a `loss_normalizing_factor` that is none of t5x's kinds."""
  if factor is not None and not isinstance(factor, (int, float)):
    _factor_name(factor)


def _factor_name(factor: Any) -> Optional[str]:
  """The special factor's name for a string or an enum member (t5x's), else None."""
  name = getattr(factor, "name", factor)
  if isinstance(name, str):
    name = name.upper()
    if name not in SPECIAL_FACTORS:
      raise errors.ConfigError(
          f"loss_normalizing_factor={factor!r} is not supported: use None (sum), a "
          f"number, or one of {list(SPECIAL_FACTORS)}.")
    return name
  return None


def normalizing_factor_and_weights(
    loss_normalizing_factor: Any, batch: Mapping[str, jnp.ndarray]
) -> Tuple[Any, jnp.ndarray]:
  """(the number the summed loss is divided by, or None; the per-token weights).

  The weights are `decoder_loss_weights`, or the non-padding targets when the batch
  has none; 'AVERAGE_PER_SEQUENCE' divides each sequence's weights by their sum.
  """
  weights = batch.get("decoder_loss_weights")
  if weights is None:
    weights = batch["decoder_target_tokens"] > 0
  weights = jnp.asarray(weights, jnp.float32)
  name = _factor_name(loss_normalizing_factor)
  if name is None:
    return loss_normalizing_factor, weights
  if name == "NUM_REAL_TARGET_TOKENS":  # (At least a tiny number: a batch of padding
    return jnp.maximum(jnp.sum(weights), 1e-8), weights  # has loss 0, not NaN.)
  if name == "NUM_TOTAL_TARGET_TOKENS":
    return float(np.prod(batch["decoder_target_tokens"].shape)), weights
  per_sequence = jnp.sum(weights, axis=-1, keepdims=True)
  weights = jnp.where(per_sequence > 0, weights / jnp.maximum(per_sequence, 1e-30), 0.0)
  return jnp.maximum(jnp.sum(weights), 1e-8), weights


def loss_denominator(loss_normalizing_factor: Any,
                     batch: Mapping[str, jnp.ndarray]) -> Optional[jnp.ndarray]:
  """The count a special factor divides this batch's summed loss by, without the
  clipping at 1e-8 (zero for a batch of padding), or None for None and numbers: the
  weight of a microbatch in gradient accumulation (vlpretrain.microbatching)."""
  name = _factor_name(loss_normalizing_factor)
  if name is None:
    return None
  if name == "NUM_TOTAL_TARGET_TOKENS":
    return jnp.asarray(np.prod(batch["decoder_target_tokens"].shape), jnp.float32)
  return jnp.sum(normalizing_factor_and_weights(name, batch)[1])
