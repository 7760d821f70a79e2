"""Optimizers (optax). Seed 001: AdamW, lr 1e-4, warmup 10k, weight decay 0.1, clip 1.0."""
from typing import Optional, Union

import gin
import jax
import optax


def decay_mask(params):
  """True for the params weight decay applies to: matrices and kernels (ndim >= 2).

  Norm scales, biases and scalar gates (tanh(alpha), tanh(beta)) are not decayed.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


@gin.configurable
def adamw(learning_rate: Union[float, optax.Schedule],
          weight_decay: float = 0.1,
          b1: float = 0.9,
          b2: float = 0.999,
          eps: float = 1e-8,
          clip_norm: Optional[float] = 1.0) -> optax.GradientTransformation:
  """Global-norm clipping (skipped if clip_norm is None or 0) then AdamW.

  `learning_rate` is a float or an optax schedule (see
  `utils.create_learning_rate_scheduler`). Weight decay is decoupled and skips 0-D/1-D
  params (see `decay_mask`).
  """
  adam = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                     weight_decay=weight_decay, mask=decay_mask)
  if not clip_norm:
    return adam
  return optax.chain(optax.clip_by_global_norm(clip_norm), adam)
