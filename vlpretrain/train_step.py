"""The train state's layout and the train step, for any `models.BaseModel`.

The trainer (`train.train`) and the memory planner (`tools/memory_plan.py`) build both
from here, so the planner compiles the very step the trainer runs.

The state is t5x's: `{step, params, opt_state}` plus `flax_mutables` when the model's
variables have collections besides params (EMA / momentum params, queues). Shardings
come from the partitioner: params' from their logical axis names (`params_axes`), the
optimizer state's from `optimizer.init` (`PjitPartitioner.optimizer_state_shardings`),
mutables' from their own `<collection>_axes`.
"""
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from vlpretrain import microbatching
from vlpretrain import models
from vlpretrain import partitioning


def flax_mutables_of(variables) -> dict:
  """The collections of `get_initial_variables` the train state carries besides params:
  all but 'params' and the axis-name collections ('params_axes', '<name>_axes')."""
  return {k: v for k, v in variables.items()
          if k != "params" and not k.endswith("_axes")}


def abstract_train_state(model, optimizer: optax.GradientTransformation,
                         partitioner: partitioning.PjitPartitioner, input_shapes,
                         input_types, rng):
  """Shapes and shardings of the train state, from `jax.eval_shape` (no memory).

  Returns (abstract_variables: the model's variables as ShapeDtypeStructs, unsharded;
  abstract_state: the state as ShapeDtypeStructs carrying their shardings;
  state_shardings: the same tree of `NamedSharding`s).
  """
  with partitioner.activate():
    abstract_variables = jax.eval_shape(
        lambda r: model.get_initial_variables(r, input_shapes, input_types), rng)
    abstract_params = abstract_variables["params"]
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
  param_shardings = partitioner.param_shardings(
      abstract_params, abstract_variables.get("params_axes"))
  state_shardings = {
      "step": partitioner.replicated,
      "params": param_shardings,
      "opt_state": partitioner.optimizer_state_shardings(
          optimizer, abstract_opt_state, abstract_params, param_shardings),
  }
  abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32),
                    "params": abstract_params, "opt_state": abstract_opt_state}
  abstract_mutables = flax_mutables_of(abstract_variables)
  if abstract_mutables:
    abstract_state["flax_mutables"] = abstract_mutables
    state_shardings["flax_mutables"] = {
        k: partitioner.param_shardings(v, abstract_variables.get(f"{k}_axes"))
        for k, v in abstract_mutables.items()}
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_state, state_shardings)
  return abstract_variables, abstract_state, state_shardings


def make_train_step(model, optimizer: optax.GradientTransformation,
                    partitioner: partitioning.PjitPartitioner, *, dropout_key,
                    has_mutables: bool, task_names: Optional[Sequence[str]] = None,
                    num_microbatches: int = 1, skip_non_finite: bool = False):
  """`train_step(state, batch) -> (new_state, metrics, step_stats)`: the gradient of
  the model's loss (over `num_microbatches`), the optax update, the step counter.

  step_stats: `loss`, `grad_norm`; `update_skipped` with `skip_non_finite`; with
  `task_names` (a mixture whose batches carry `task_id`) the per-task loss sums and
  token counts that dynamic sampling reads (seed 001 sec. 3.1's difficulty signal).
  With `skip_non_finite` a step whose loss or gradient norm is not finite keeps the
  old state and contributes nothing to the metrics or the task losses.
  """

  def loss_and_aux(params, batch, dropout_rng, mutables):
    """The model's loss; aux: its clu metrics, on a mixture with task ids the per-task
    loss sums and token counts, and the new flax_mutables. With mutables the model is
    called as t5x calls it: `loss_fn(params, batch, dropout_rng, flax_mutables) ->
    (loss, (metrics, flax_mutables))` (and `loss_fn_with_example_losses` likewise, +
    the examples)."""
    extra = (mutables,) if has_mutables else ()
    if task_names is None:
      loss, aux = model.loss_fn(params, batch, dropout_rng, *extra)
      metrics, mutables = aux if has_mutables else (aux, None)
      return loss, (metrics, None, mutables)
    loss, aux, example = model.loss_fn_with_example_losses(params, batch, dropout_rng,
                                                           *extra)
    metrics, mutables = aux if has_mutables else (aux, None)
    seg = lambda x: jax.ops.segment_sum(x, batch["task_id"], len(task_names))
    return loss, (metrics, (seg(example.loss_sum), seg(example.weight)), mutables)

  grad_fn = microbatching.value_and_grad(
      loss_and_aux, model.loss_denominator, num_microbatches,
      lambda mb: jax.lax.with_sharding_constraint(mb, partitioner.batch_sharding()))

  def train_step(state, batch):
    dropout_rng = jax.random.fold_in(dropout_key, state["step"])
    (loss, (metrics, task_losses, mutables)), grads = grad_fn(
        state["params"], batch, dropout_rng, state.get("flax_mutables"))
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    metrics = dict(metrics, grad_norm=models.average(grad_norm))
    if skip_non_finite:
      # Keep the old state, as optax.apply_if_finite would; done here so that the
      # step's metrics and the sampler's task losses are dropped with it (zeros add
      # nothing to clu's merges) and the state keeps the same tree in both modes.
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params, opt_state = keep(params, state["params"]), keep(opt_state,
                                                              state["opt_state"])
      if has_mutables:
        mutables = keep(mutables, state["flax_mutables"])
      metrics = jax.tree.map(lambda m: jnp.where(finite, m, jnp.zeros_like(m)), metrics)
      if task_losses is not None:
        task_losses = jax.tree.map(lambda x: jnp.where(finite, x, 0), task_losses)
    step_stats = {"loss": loss, "grad_norm": grad_norm}
    if skip_non_finite:
      step_stats["update_skipped"] = ~finite
    if task_losses is not None:
      step_stats["task_loss_sum"], step_stats["task_token_count"] = task_losses
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    if has_mutables:
      new_state["flax_mutables"] = mutables
    return new_state, metrics, step_stats

  return train_step
