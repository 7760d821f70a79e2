"""Gradient accumulation over microbatches (t5x's `num_microbatches`).

The global batch is split into `num_microbatches` microbatches that run one after
another in a `jax.lax.scan`, so activations are held for one microbatch at a time,
and their gradients are combined into the full batch's gradient.

Exactness: t5x sums the microbatches' gradients, which is the full batch's gradient
only when the loss is a sum over examples. vlpretrain weights each microbatch by its
share of the loss's denominator instead: a model whose loss is `S(batch) / d(batch)`
with S a sum over examples declares d through `BaseModel.loss_denominator` (e.g. the
number of real target tokens for 'NUM_REAL_TARGET_TOKENS'; None for a sum or a constant
divisor), and microbatch m's loss and gradient count `d_m / sum(d)` (or 1). Then the
accumulated loss and gradient equal the full batch's up to float summation order,
whatever the normalisation. A loss that is not a sum over examples (a contrastive loss
whose negatives are the batch) cannot be accumulated this way; such models refuse.

Microbatch m holds the examples m, m + M, m + 2M, ... of the global batch: the batch is
reshaped to (B / M, M, ...), which keeps every device's rows on that device when the
batch axis is sharded over the mesh's data axis, and the microbatch is constrained to
the same batch sharding.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from vlpretrain import errors


def check(num_microbatches: Optional[int], global_batch_size: int,
          data_axis_size: int) -> int:
  """The number of microbatches (1 when unset); ConfigError when it cannot split."""
  m = num_microbatches or 1
  if m < 1 or global_batch_size % m or (global_batch_size // m) % data_axis_size:
    raise errors.ConfigError(
        f"train_script.train.num_microbatches={num_microbatches} does not split the "
        f"global batch of {global_batch_size} into equal microbatches that divide "
        f"over the mesh's {data_axis_size} data-parallel devices: choose a divisor of "
        f"{global_batch_size} for which {global_batch_size} / num_microbatches is a "
        f"multiple of {data_axis_size} (or change BATCH_SIZE).")
  return m


def value_and_grad(loss_and_aux: Callable, denominator_fn: Callable,
                   num_microbatches: int,
                   constrain: Callable[[Any], Any] = lambda x: x) -> Callable:
  """Like `jax.value_and_grad(loss_and_aux, has_aux=True)`, over microbatches.

  `loss_and_aux(params, batch, dropout_rng, mutables) -> (loss, (metrics, sums,
  mutables))`: metrics a mapping of clu Metrics (merged over the microbatches), sums a
  pytree of additive quantities or None (summed), mutables a pytree or None (threaded
  through the microbatches in order, as t5x does). `denominator_fn(batch)` is the
  model's `loss_denominator`. `constrain` places a microbatch (the batch sharding).
  """
  grad_fn = jax.value_and_grad(loss_and_aux, has_aux=True)
  if num_microbatches == 1:
    return grad_fn

  m_count = num_microbatches

  def microbatch(batch, m):
    return constrain({
        k: jax.lax.dynamic_index_in_dim(
            v.reshape((v.shape[0] // m_count, m_count) + v.shape[1:]), m, axis=1,
            keepdims=False)
        for k, v in batch.items()})

  def accumulated(params, batch, dropout_rng, mutables):
    denominators = [denominator_fn(microbatch(batch, m)) for m in range(m_count)]
    if any(d is None for d in denominators):
      weights = jnp.ones((m_count,), jnp.float32)
    else:
      d = jnp.stack([jnp.asarray(x, jnp.float32) for x in denominators])
      weights = d / jnp.maximum(jnp.sum(d), 1e-30)

    def body(carry, m):
      grads_sum, loss_sum, mutables = carry
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, m)
      (loss, (metrics, sums, mutables)), grads = grad_fn(params, microbatch(batch, m),
                                                         rng, mutables)
      w = weights[m]
      grads_sum = jax.tree.map(lambda a, g: a + (w * g).astype(a.dtype), grads_sum,
                               grads)
      return (grads_sum, loss_sum + w * loss, mutables), (metrics, sums)

    zeros = jax.tree.map(jnp.zeros_like, params)
    (grads, loss, mutables), (metrics, sums) = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), mutables), jnp.arange(m_count))
    metrics = {k: v.reduce() for k, v in metrics.items()}
    sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), sums)
    return (loss, (metrics, sums, mutables)), grads

  return accumulated
