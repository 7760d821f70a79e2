r"""Training entry point (t5x's `train.py`), configured with gin.

    vlpretrain train --gin_file=gin/jar_tiny.gin --gin.MODEL_DIR=/tmp/jar_tiny
    python -m vlpretrain.train --gin_file=gin/jar_tiny.gin --gin.TRAIN_STEPS=100

`train()` reads top to bottom in sections: mesh, input, model and optimizer (created
directly sharded), checkpoint restore, train step, evals, loop. It resumes by itself from
the latest checkpoint in MODEL_DIR/checkpoints: params, optimizer state, step and each
host's tf.data iterator are restored, and dropout keys are `fold_in(key, step)`, so a
resumed run trains on exactly the batches, with exactly the randomness, of an
uninterrupted one.

Two evals run every `eval_period` steps and at the last step: `train_eval_dataset_cfg`
(mean teacher-forced loss/accuracy over `eval_steps` batches, MODEL_DIR/training_eval)
and `infer_eval_dataset_cfg` (greedy decoding of a whole split and the Tasks' metrics,
the code path of `vlpretrain eval`, MODEL_DIR/inference_eval).
"""
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
from clu import metric_writers
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import seqio
import tensorflow as tf

from vlpretrain import assignment_maps  # noqa: F401  (gin: @assignment_maps.*)
from vlpretrain import checkpoints
from vlpretrain import dynamic_mixture
from vlpretrain import errors
from vlpretrain import evaluators
from vlpretrain import gin_utils
from vlpretrain import inference
from vlpretrain import microbatching
from vlpretrain import models  # noqa: F401  (gin: @models.*)
from vlpretrain import partitioning
from vlpretrain import preemption
from vlpretrain import run_lock
from vlpretrain import train_step as train_step_lib
from vlpretrain import utils
from vlpretrain.data import bad_data

# tf.data ops that run Python with state; an iterator over them cannot be saved.
_UNSAVEABLE_OPS = frozenset({"GeneratorDataset", "PyFunc", "EagerPyFunc"})


# -----------------------------------------------------------------------------
# Checkpointing the tf.data iterator: one tf.train.Checkpoint per host, written as an
# orbax item ("dataset") inside each step directory, so it is saved, kept and deleted
# atomically together with the model state.
# -----------------------------------------------------------------------------
def _iterator_prefix(directory) -> str:
  return os.path.join(os.fspath(directory),
                      f"process_{jax.process_index():03d}-of-{jax.process_count():03d}")


class DatasetIteratorHandler(ocp.CheckpointHandler):
  """Saves/restores this host's input position: a tf.data iterator
  (`tf.train.Checkpoint`), or a `dynamic_mixture.DynamicBatches` (its task iterators and
  leftover rows)."""

  def save(self, directory, args: "DatasetIteratorArgs"):
    prefix = _iterator_prefix(directory)
    try:
      if isinstance(args.iterator, dynamic_mixture.DynamicBatches):
        args.iterator.write_iterators(prefix)
      else:
        tf.train.Checkpoint(iterator=args.iterator).write(prefix)
    except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as e:
      raise RuntimeError(
          "Could not save the tf.data iterator state: the input pipeline has an op that "
          "cannot be checkpointed (e.g. tf.py_function). Set "
          "--gin.utils.SaveCheckpointConfig.save_dataset=False; a resumed run then skips "
          f"the batches already seen instead. ({e})") from e

  def restore(self, directory, args: "DatasetIteratorArgs"):
    prefix = _iterator_prefix(directory)
    if not tf.io.gfile.exists(prefix + ".index"):
      raise errors.MissingPathError(
          f"No data iterator state for process {jax.process_index()} of "
          f"{jax.process_count()} in {directory}: the checkpoint was written with a "
          "different number of hosts. Resume with the same number of hosts, or set "
          "--gin.utils.RestoreCheckpointConfig.restore_dataset=False.")
    if isinstance(args.iterator, dynamic_mixture.DynamicBatches):
      args.iterator.read_iterators(prefix)
    else:
      tf.train.Checkpoint(iterator=args.iterator).read(prefix).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(DatasetIteratorHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DatasetIteratorArgs(ocp.args.CheckpointArgs):
  iterator: Any  # A tf.data iterator, or a dynamic_mixture.DynamicBatches.


def _unsaveable_ops(datasets: Sequence[tf.data.Dataset]) -> set[str]:
  """The ops of `datasets`' graphs that keep their iterators from being checkpointed
  (e.g. `from_generator` sources that read files in Python)."""
  found = set()
  for ds in datasets:
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())  # pylint: disable=protected-access
    ops = {n.op for n in graph.node}
    for fn in graph.library.function:
      ops |= {n.op for n in fn.node_def}
    found |= ops & _UNSAVEABLE_OPS
  return found


def _warm_start_dirs(restore_cfg) -> list[str]:
  """The checkpoints a warm start reads; [] (a fresh init) when none is found and
  `fallback_to_scratch` (t5x's name) allows it."""
  try:
    return checkpoints.resolve_each(restore_cfg.path, restore_cfg.mode)
  except errors.MissingPathError as e:
    if not restore_cfg.fallback_to_scratch:
      raise
    logging.warning("No checkpoint to warm-start from (%s); fallback_to_scratch=True: "
                    "initialising from scratch.", e)
    return []


def _cast_floats(tree, dtype):
  """Casts floating-point leaves (arrays or ShapeDtypeStructs) to `dtype`."""
  def cast(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype), sharding=x.sharding)
    return x.astype(dtype)
  return jax.tree.map(cast, tree)


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _task_names(provider) -> Optional[list[str]]:
  """Names indexed by `task_id` when training on a Mixture (None for a single Task)."""
  tasks = getattr(provider, "tasks", None)
  if tasks is None or isinstance(provider, seqio.Task):
    return None
  return [t.name for t in tasks]


class InferenceEvaluator:
  """Inference evals during training (t5x's `infer_eval_dataset_cfg`).

  Each call evaluates every example of `dataset_cfg.split` of each Task with the
  params as the trainer holds them (sharded by the partitioner; no checkpoint round
  trip) with the model's evaluator (evaluators.py: greedy generation and the Tasks'
  metrics, classification, or retrieval Recall@K), the code path of `vlpretrain eval`.
  The evaluator is built once, so its jitted functions are compiled by the first eval
  and reused. The primary process writes TensorBoard scalars
  '<task>/<metric>' and metrics_history.json to `output_dir`, in `vlpretrain eval`'s
  layout: {step: {step, split, mixture_or_task_name, tasks: {task: {num_examples,
  metrics}}}} (a resumed run keeps the earlier steps).
  """

  def __init__(self, model, partitioner: partitioning.PjitPartitioner,
               dataset_cfg: utils.DatasetConfig, tasks: Sequence[seqio.Task],
               metric_fns: Mapping[str, Sequence[inference.MetricFn]], output_dir: str,
               is_primary: bool):
    self.evaluator = evaluators.make(model, partitioner, dataset_cfg.batch_size)
    self.dataset_cfg, self.tasks, self.metric_fns = dataset_cfg, tasks, metric_fns
    self.is_primary = is_primary
    self.writer = metric_writers.AsyncMultiWriter(
        [metric_writers.SummaryWriter(output_dir)] if is_primary else [])
    self.history_path = os.path.join(output_dir, "metrics_history.json")
    self.history = inference.read_json(self.history_path, {}) if is_primary else {}

  def __call__(self, step: int, params) -> dict:
    """Evaluates `params` at `step`; returns the step's metrics_history entry."""
    start = time.time()
    cfg = self.dataset_cfg
    result = {"step": step, "split": cfg.split,
              "mixture_or_task_name": cfg.mixture_or_task_name, "tasks": {}}
    scalars = {}
    for ev in self.evaluator.evaluate_tasks(params, cfg, self.tasks, self.metric_fns,
                                            step, "infer_eval"):
      result["tasks"][ev.task.name] = ev.summary()
      scalars.update(ev.scalars())
    self.writer.write_scalars(step, scalars)
    if self.is_primary:
      self.history[str(step)] = result
      inference.write_json(self.history_path, self.history)
    logging.info("infer_eval step %d took %s.", step,
                 _format_duration(time.time() - start))
    return result

  def close(self):
    self.writer.close()


@gin.configurable
def train(*,
          model,
          train_dataset_cfg: utils.DatasetConfig,
          partitioner: partitioning.PjitPartitioner,
          model_dir: str,
          total_steps: int,
          checkpoint_cfg: Optional[utils.CheckpointConfig] = None,
          train_eval_dataset_cfg: Optional[utils.DatasetConfig] = None,
          infer_eval_dataset_cfg: Optional[utils.DatasetConfig] = None,
          infer_eval_metric_fns: Optional[
              Mapping[str, Sequence[inference.MetricFn]]] = None,
          eval_steps: int = 20,
          eval_period: int = 1000,
          log_period: int = 100,
          random_seed: Optional[int] = 0,
          optimizer: Optional[optax.GradientTransformation] = None,
          learning_rate_fn: Optional[Callable[[int], Any]] = None,
          make_sampler: Callable[..., Any] = dynamic_mixture.make_sampler,
          non_finite_loss: str = "stop",
          num_microbatches: Optional[int] = None):
  """Trains `model` for `total_steps` steps, resuming from MODEL_DIR if it can.

  Args:
    model: t5x-style model (`loss_fn`, `get_initial_variables`, FEATURE_CONVERTER_CLS).
    train_dataset_cfg: the training data (global batch size; each host reads its shard).
    partitioner: the mesh and logical axis rules.
    model_dir: where checkpoints, TensorBoard events and config.gin go.
    total_steps: train until the step counter reaches this (a resumed run continues).
    checkpoint_cfg: save period/keep and an optional warm-start checkpoint.
    train_eval_dataset_cfg: if set, every `eval_period` steps the mean loss/accuracy
      over `eval_steps` batches of it is logged (deterministic, no dropout) and
      written to MODEL_DIR/training_eval.
    infer_eval_dataset_cfg: if set (shuffle=False), every `eval_period` steps and at
      the last step every example of its split is greedy-decoded with the current
      params and each Task's metrics are logged and written to MODEL_DIR/inference_eval
      (TensorBoard '<task>/<metric>', metrics_history.json): see `InferenceEvaluator`.
    infer_eval_metric_fns: task name -> more `fn(targets, predictions)` to run after
      that Task's own metric_fns in the inference evals (as eval's extra_metric_fns).
    eval_steps: batches per train_eval.
    eval_period: steps between evals (both kinds).
    log_period: steps between log lines and metric writes.
    random_seed: seeds init and dropout (None: a fresh seed, logged).
    optimizer: an optax transformation (pretrain.gin: `optimizers.adamw`); None takes
      the model's `optimizer_def` if that is one.
    learning_rate_fn: the schedule the optimizer uses; only for logging.
    make_sampler: builds the per-batch task sampler when the training data is a
      `dynamic_mixture.DynamicMixture` (gin: dynamic_mixture.make_sampler.strategy).
    non_finite_loss: a step whose loss or gradient norm is not finite: 'stop' raises,
      naming the step; 'skip' leaves params and optimizer state as they were, counts
      it (logged, and `skipped/non_finite_steps` in TensorBoard) and goes on. Either
      way no non-finite state is checkpointed and the dynamic sampler never sees it.
    num_microbatches: t5x's: accumulate the gradient over this many microbatches of
      the global batch run one after another (activation memory of one microbatch);
      the loss, gradient and per-task loss sums are the full batch's (the model's
      `loss_denominator` weights each microbatch; see vlpretrain/microbatching.py).
      None or 1: one pass over the batch.

  Returns:
    (final step, final train state dict with 'step', 'params', 'opt_state', and
    'flax_mutables' when the model's variables have collections besides params).
  """
  t_start = time.time()
  # ---------------------------------------------------------------------------
  # Check the configuration before touching devices or data.
  # ---------------------------------------------------------------------------
  if non_finite_loss not in ("stop", "skip"):
    raise errors.ConfigError(
        f"train_script.train.non_finite_loss={non_finite_loss!r}: use 'stop' or 'skip'.")
  skip_non_finite = non_finite_loss == "skip"
  if not train_dataset_cfg.mixture_or_task_name:
    raise errors.ConfigError(
        "MIXTURE_OR_TASK_NAME is unset: pass --gin.MIXTURE_OR_TASK_NAME=\"'<name>'\" "
        "(e.g. 'shapes_cap') or bind it in your gin file.")
  if not train_dataset_cfg.task_feature_lengths:
    raise errors.ConfigError(
        "TASK_FEATURE_LENGTHS is unset: pass e.g. "
        "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 32, 'targets': 32}\".")
  if optimizer is None:
    optimizer = getattr(model, "optimizer_def", None)
  if not isinstance(optimizer, optax.GradientTransformation):
    raise errors.ConfigError(
        "train_script.train.optimizer is unset and the model's optimizer_def is not an "
        "optax transformation: bind train_script.train.optimizer = @optimizers.adamw() "
        "(runs/pretrain.gin does).")
  if not model_dir:
    raise errors.ConfigError("MODEL_DIR is empty: pass --gin.MODEL_DIR=/path/to/run.")
  utils.check_writable_dir(model_dir, "MODEL_DIR")
  infer_eval_tasks = []
  if infer_eval_dataset_cfg:
    if not hasattr(model, "predict_batch_with_aux"):
      raise errors.ConfigError(f"train_script.train.infer_eval_dataset_cfg is set, but the model "
                               f"({type(model).__name__}) has no predict_batch_with_aux to "
                               "decode with: set it to None.")
    inference.check_dataset_cfg(infer_eval_dataset_cfg,
                                "train_script.train.infer_eval_dataset_cfg")
    infer_eval_tasks = inference.tasks_of(infer_eval_dataset_cfg)
    infer_eval_metric_fns = inference.check_extra_metric_fns(
        infer_eval_metric_fns, infer_eval_tasks,
        "train_script.train.infer_eval_metric_fns")
  elif infer_eval_metric_fns:
    logging.warning("train_script.train.infer_eval_metric_fns is set but "
                    "infer_eval_dataset_cfg is None: no inference evals run.")
  checkpoint_cfg = checkpoint_cfg or utils.CheckpointConfig()
  save_cfg = checkpoint_cfg.save or utils.SaveCheckpointConfig()
  extra_save_steps = set(int(s) for s in (save_cfg.checkpoint_steps or ()))
  restore_cfg = checkpoint_cfg.restore or utils.RestoreCheckpointConfig()
  if random_seed is None:
    random_seed = int(time.time_ns() % 2**31)
    logging.info("random_seed=None: using %d.", random_seed)
  try:
    tf.config.set_visible_devices([], "GPU")  # tf.data only; accelerators are jax's.
  except RuntimeError:  # TF already initialised its devices (e.g. a second run).
    pass
  is_primary = jax.process_index() == 0

  # ---------------------------------------------------------------------------
  # Mesh.
  # ---------------------------------------------------------------------------
  mesh = partitioner.mesh
  logging.info("Mesh %s over %d devices (%d processes).", dict(mesh.shape),
               jax.device_count(), jax.process_count())
  global_batch_size = train_dataset_cfg.batch_size
  partitioner.check_batch_size(global_batch_size)
  num_microbatches = microbatching.check(num_microbatches, global_batch_size,
                                         partitioner.data_axis_size)
  if num_microbatches > 1:
    logging.info("Gradient accumulation: %d microbatches of %d examples per step.",
                 num_microbatches, global_batch_size // num_microbatches)

  # ---------------------------------------------------------------------------
  # Checkpoints to resume from. Looked at before building the input pipeline, because
  # a checkpoint without data iterator state means the pipeline must skip batches.
  # Nothing is written to MODEL_DIR until the data and the model are known to build.
  # ---------------------------------------------------------------------------
  ckpt_dir = os.path.join(os.path.abspath(model_dir), "checkpoints")
  # A run resuming in a local MODEL_DIR locks it before reading its checkpoints.
  lock = run_lock.acquire(model_dir) if is_primary and os.path.isdir(ckpt_dir) else None
  manager = resume_step = None
  if tf.io.gfile.isdir(ckpt_dir):
    manager = _checkpoint_manager(ckpt_dir, save_cfg)
    resume_step = manager.latest_step()
  resume_data = resume_step is not None and restore_cfg.restore_dataset
  has_data_state = (resume_step is not None and
                    (manager.directory / str(resume_step) / "dataset").exists())

  # ---------------------------------------------------------------------------
  # Input: this host's shard of the global batch, as model features.
  # ---------------------------------------------------------------------------
  # A DynamicMixture is composed per step from the task losses (dynamic_mixture.py);
  # anything else is one seqio tf.data pipeline.
  shard = partitioner.get_data_shard_info()
  feature_converter_cls = model.FEATURE_CONVERTER_CLS
  provider = utils.get_mixture_or_task(train_dataset_cfg)
  batches = train_iter = None
  if isinstance(provider, dynamic_mixture.DynamicMixture):
    task_datasets = utils.get_task_datasets(train_dataset_cfg, shard.index,
                                            shard.num_shards, feature_converter_cls)
    unsaveable = _unsaveable_ops(task_datasets)
    if resume_data and not has_data_state:
      # Fallback for pipelines without iterator state: every task skips the examples
      # this host took from it (recorded with the sampler), exact for fixed seeds.
      consumed = manager.restore(resume_step, args=ocp.args.Composite(
          sampler=ocp.args.JsonRestore()))["sampler"]["consumed"][shard.index]
      logging.info("Checkpoint %d has no data iterator state: skipping %s examples "
                   "of the tasks.", resume_step, consumed)
      task_datasets = [ds.skip(n) for ds, n in zip(task_datasets, consumed)]
    sampler = make_sampler(num_tasks=len(task_datasets), dataset_sizes=functools.partial(
        provider.num_examples, train_dataset_cfg.split))
    batches = dynamic_mixture.DynamicBatches(task_datasets, sampler, global_batch_size,
                                             shard.index, shard.num_shards)
    example_spec = task_datasets[0].element_spec
  else:
    train_ds = utils.get_dataset(train_dataset_cfg, shard.index, shard.num_shards,
                                 feature_converter_cls)
    if resume_data and not has_data_state:
      # Fallback for checkpoints saved with save_dataset=False: a deterministic pipeline
      # (fixed seed) re-read from the start, skipping the batches already trained on.
      logging.info("Checkpoint %d has no data iterator state: skipping %d batches.",
                   resume_step, resume_step)
      train_ds = train_ds.skip(resume_step)
    train_iter = iter(train_ds)
    unsaveable = _unsaveable_ops([train_ds])
    example_spec = {k: tf.TensorSpec(v.shape[1:], v.dtype)
                    for k, v in train_ds.element_spec.items()}
  save_dataset = save_cfg.save_dataset and not unsaveable
  if save_cfg.save_dataset and unsaveable:
    logging.warning(
        "The input pipeline has ops that run Python (%s: e.g. a source that reads files "
        "in Python), so tf.data cannot checkpoint its position. Checkpoints record how "
        "far it got instead, and a resumed run skips ahead (the same batches for a fixed "
        "seed, but slower to restart).", ", ".join(sorted(unsaveable)))
  task_names = (_task_names(provider) if dynamic_mixture.TASK_ID in example_spec
                else None)

  # ---------------------------------------------------------------------------
  # Model and optimizer, created directly sharded. Shapes come from eval_shape (no
  # memory); the params' logical axis names (the `params_axes` collection of
  # get_initial_variables) give their shardings.
  # ---------------------------------------------------------------------------
  init_batch = partitioner.data_axis_size  # Param shapes do not depend on it.
  init_features = inference.model_features(example_spec)  # All of them, as t5x.
  input_shapes = {k: (init_batch,) + tuple(example_spec[k].shape) for k in init_features}
  input_types = {k: example_spec[k].dtype.as_numpy_dtype for k in init_features}
  init_rng, dropout_key = jax.random.split(jax.random.PRNGKey(random_seed))
  if num_microbatches > 1:  # The model says how its loss combines, or refuses now.
    jax.eval_shape(model.loss_denominator,
                   {k: jax.ShapeDtypeStruct(input_shapes[k], input_types[k])
                    for k in init_features})

  def init_params(rng):
    return model.get_initial_variables(rng, input_shapes, input_types)["params"]

  def init_mutables(rng):
    return train_step_lib.flax_mutables_of(
        model.get_initial_variables(rng, input_shapes, input_types))

  def init_state(rng):
    variables = model.get_initial_variables(rng, input_shapes, input_types)
    params = variables["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": optimizer.init(params)}
    if has_mutables:
      state["flax_mutables"] = train_step_lib.flax_mutables_of(variables)
    return state

  abstract_variables, abstract_state, state_shardings = train_step_lib.abstract_train_state(
      model, optimizer, partitioner, input_shapes, input_types, init_rng)
  abstract_params, param_shardings = abstract_variables["params"], state_shardings["params"]
  has_mutables = "flax_mutables" in abstract_state
  if has_mutables:  # EMA / momentum params, queues: t5x's flax_mutables.
    logging.info("Train state carries flax_mutables: %s.",
                 sorted(abstract_state["flax_mutables"]))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params))
  logging.info("Model: %s parameters.", f"{num_params:,}")

  # ---------------------------------------------------------------------------
  # Restore, in this order: (1) the latest checkpoint in MODEL_DIR (resume: state,
  # step and data iterator), else (2) RestoreCheckpointConfig.path (warm start:
  # params only), else (3) fresh init.
  # ---------------------------------------------------------------------------
  if resume_step is not None:
    logging.info("Resuming from checkpoint at step %d (%s).", resume_step, ckpt_dir)
    target = abstract_state
    if restore_cfg.dtype:
      target = dict(target, params=_cast_floats(target["params"], restore_cfg.dtype))
    items = {"state": ocp.args.StandardRestore(target)}
    if resume_data and batches is not None:
      items["sampler"] = ocp.args.JsonRestore()
    if resume_data and has_data_state:
      items["dataset"] = DatasetIteratorArgs(_data_iterators(train_iter, batches))
    elif not resume_data:
      logging.warning("restore_dataset=False: the data restarts from the beginning.")
    resume_step, restored = _restore_latest_loadable(manager, resume_step, items,
                                                     has_data_state, is_primary)
    state = restored["state"]
    if "sampler" in items:
      batches.load_state_dict(restored["sampler"])
  elif restore_cfg.path and (step_dirs := _warm_start_dirs(restore_cfg)):
    # A warm start: params only, from the latest (or the given) step, and a fresh
    # optimizer state for them. Only the optimizer's init is compiled, not the model's
    # forward pass that a fresh init traces (for jar_tiny that compile took 23.5 s of
    # a 5-step run on 2 busy CPU cores).
    logging.info("Initialising params from %s.", ", ".join(step_dirs))
    sources = checkpoints.assign(abstract_params, restore_cfg.assignment_map)
    fresh = None
    if None in sources.values() or not restore_cfg.strict:
      fresh_names = [p for p, s in sources.items() if s is None]
      if fresh_names:
        logging.info("assignment_map: %d of %d params left at their fresh initialisation "
                     "(in %s).", len(fresh_names), len(sources),
                     ", ".join(sorted({p.split("/")[0] for p in fresh_names})))
      with partitioner.activate():
        fresh = jax.jit(init_params, out_shardings=param_shardings)(init_rng)
    params = checkpoints.restore_params(step_dirs, abstract_params, param_shardings,
                                        restore_cfg.dtype, restore_cfg.assignment_map,
                                        fresh, strict=restore_cfg.strict)
    with partitioner.activate():
      opt_state = jax.jit(  # From float32 params, as a fresh init's, whatever the dtype.
          lambda p: optimizer.init(jax.tree.map(lambda x, a: x.astype(a.dtype), p,
                                                abstract_params)),
          out_shardings=state_shardings["opt_state"])(params)
    state = {"step": jax.device_put(jnp.zeros((), jnp.int32), partitioner.replicated),
             "params": params, "opt_state": opt_state}
    if has_mutables:  # Fresh, as a fresh init's (e.g. an EMA starts at its init).
      with partitioner.activate():
        state["flax_mutables"] = jax.jit(
            init_mutables, out_shardings=state_shardings["flax_mutables"])(init_rng)
  else:
    with partitioner.activate():
      state = jax.jit(init_state, out_shardings=state_shardings)(init_rng)
  start_step = int(jax.device_get(state["step"]))

  # The data, the model and the state build: now MODEL_DIR is written.
  if is_primary:
    utils.make_output_dir(model_dir, "MODEL_DIR")
    if lock is None:  # Refuses a second run in this MODEL_DIR.
      lock = run_lock.acquire(model_dir)
    problem = utils.write_problem(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    if problem:  # E.g. a read-only mount: orbax would only time out on it.
      raise errors.ConfigError(
          f"The checkpoint directory {ckpt_dir} is not writable ({problem}). Make it "
          "writable, or pass another --gin.MODEL_DIR (warm-start from these "
          "checkpoints with --gin.INITIAL_CHECKPOINT_PATH).")
    if gin.config_str():
      gin_utils.write_config(model_dir)
  if manager is None:
    manager = _checkpoint_manager(ckpt_dir, save_cfg)

  # ---------------------------------------------------------------------------
  # Train step: grad of the model's loss, optax update; state donated.
  # ---------------------------------------------------------------------------
  train_step = train_step_lib.make_train_step(
      model, optimizer, partitioner, dropout_key=dropout_key, has_mutables=has_mutables,
      task_names=task_names, num_microbatches=num_microbatches,
      skip_non_finite=skip_non_finite)
  p_train_step = jax.jit(train_step, donate_argnums=(0,),
                         out_shardings=(state_shardings, partitioner.replicated,
                                        partitioner.replicated))

  # ---------------------------------------------------------------------------
  # Evals: mean deterministic loss over `eval_steps` batches of a held-out split;
  # greedy decoding of a whole split and its metrics (InferenceEvaluator).
  # ---------------------------------------------------------------------------
  def eval_step_metrics(params, batch, mutables):
    if not has_mutables:
      return model.eval_fn(params, batch)[1]
    return model.eval_fn(params, batch, mutables)[1]  # t5x's call with flax_mutables.

  p_eval_step = jax.jit(eval_step_metrics, out_shardings=partitioner.replicated)

  def run_train_eval(params, mutables) -> dict[str, float]:
    """The model's eval_fn metrics, merged over `eval_steps` batches (clu)."""
    ds = utils.get_dataset(train_eval_dataset_cfg, shard.index, shard.num_shards,
                           feature_converter_cls, num_epochs=1).take(eval_steps)
    results = [p_eval_step(params, partitioner.shard_batch(b), mutables)
               for b in ds.as_numpy_iterator()]
    if not results:
      raise errors.ConfigError(f"train_eval dataset {train_eval_dataset_cfg.split!r} of "
                               f"{train_eval_dataset_cfg.mixture_or_task_name!r} gave no "
                               "full batch: lower its batch_size.")
    return compute_metrics(merge_metrics(jax.device_get(results)))

  infer_eval = None
  if infer_eval_dataset_cfg:
    infer_eval = InferenceEvaluator(
        model, partitioner, infer_eval_dataset_cfg, infer_eval_tasks,
        infer_eval_metric_fns, os.path.join(model_dir, "inference_eval"), is_primary)

  # ---------------------------------------------------------------------------
  # Loop. The loss of step s is checked while step s+1 runs, so a non-finite loss
  # stops training one step later without stalling the device every step.
  # ---------------------------------------------------------------------------
  writer = metric_writers.AsyncMultiWriter(
      [metric_writers.SummaryWriter(os.path.join(model_dir, "train"))]
      if is_primary else [])
  eval_writer = metric_writers.AsyncMultiWriter(
      [metric_writers.SummaryWriter(os.path.join(model_dir, "training_eval"))]
      if is_primary and train_eval_dataset_cfg else [])
  sampling_log = (_open_sampling_log(os.path.join(model_dir, "sampling.jsonl"),
                                     start_step)
                  if is_primary and batches is not None else None)
  if is_primary and gin.config_str():  # The operative config, as t5x shows it.
    writer.write_texts(start_step, {"config": gin.markdown(gin.config_str())})
  if start_step >= total_steps:
    logging.info("Checkpoint step %d >= TRAIN_STEPS=%d: nothing to train.",
                 start_step, total_steps)
  stopped_by = None  # A signal's name when SIGTERM / SIGINT stopped the run early.
  skipped_steps = []  # Steps whose update non_finite_loss='skip' left out.

  def check_finite(step_and_stats):
    """Stops on a non-finite loss, or with 'skip' counts it (once per step)."""
    if not skip_non_finite:
      _raise_if_not_finite(step_and_stats)
    elif step_and_stats is not None and step_and_stats[0] not in skipped_steps:
      step_, stats = step_and_stats
      if bool(stats["update_skipped"]):
        skipped_steps.append(step_)
        logging.warning("Non-finite loss at step %d: its update was skipped (%d so far; "
                        "train_script.train.non_finite_loss='skip').", step_,
                        len(skipped_steps))

  with partitioner.activate(), preemption.StopRequests() as stop_requests:
    last_saved, saves = resume_step, _CommittedSaves(manager)
    pending, prev = [], None  # Metrics since the last log line; the previous step's.
    batch_seconds = 0.0  # Training thread's time getting batches since the last log.
    t_log, step_log = time.time(), start_step
    step = start_step
    compiled_step, summary = None, {}
    while step < total_steps:
      t_batch = time.perf_counter()
      host_batch = (batches.next() if batches is not None else
                    jax.tree.map(lambda t: t.numpy(), next(train_iter)))
      batch_seconds += time.perf_counter() - t_batch
      device_batch = partitioner.shard_batch(host_batch)
      if compiled_step is None:
        compiled_step = _compile("train step", p_train_step, state, device_batch)
        t_log = time.time()
      state, metrics, step_stats = compiled_step(state, device_batch)
      step += 1
      check_finite(prev)  # Before the sampler reads that step's losses.
      if batches is not None:  # Applies step-1's losses; keeps this step's.
        batches.record(step_stats["task_loss_sum"], step_stats["task_token_count"])
      prev = (step, step_stats)
      pending.append((metrics, step_stats))
      if step == start_step + 1 and step % log_period and step != total_steps:
        jax.block_until_ready(metrics)  # Keep the first step out of steps/s.
        t_log, step_log = time.time(), step

      if step % log_period == 0 or step == total_steps:
        check_finite(prev)
        summary = _summarize(jax.device_get(pending), task_names)
        period_steps, pending = len(pending), []
        dt = time.time() - t_log
        steps_per_s = (step - step_log) / max(dt, 1e-9)
        t_log, step_log = time.time(), step
        summary["learning_rate"] = (float(learning_rate_fn(step - 1))
                                    if learning_rate_fn else float("nan"))
        summary["steps_per_sec"] = steps_per_s
        summary["examples_per_sec"] = steps_per_s * global_batch_size
        # Host-side input cost per step, e.g. the dynamic sampler's overhead.
        summary["timing/batch_ms_per_step"] = 1e3 * batch_seconds / period_steps
        summary["timing/step_ms"] = 1e3 / max(steps_per_s, 1e-9)
        batch_seconds = 0.0
        skipped = bad_data.totals()
        summary.update({f"skipped/{k}": float(v) for k, v in skipped.items()})
        if skip_non_finite:
          summary["skipped/non_finite_steps"] = float(len(skipped_steps))
        if batches is not None:
          for k, v in batches.pop_timings().items():
            summary[f"timing/{k}_ms_per_step"] = 1e3 * v / period_steps
          summary.update(_sampling_summary(step, batches, task_names, summary,
                                           sampling_log))
        writer.write_scalars(step, summary)
        logging.info(_log_line(step, total_steps, summary, task_names, skipped))

      eval_due = step % eval_period == 0 or step == total_steps
      if train_eval_dataset_cfg and eval_due:
        eval_metrics = run_train_eval(state["params"], state.get("flax_mutables"))
        eval_writer.write_scalars(step, eval_metrics)
        logging.info("eval step %d | %s", step,
                     " | ".join(f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items())))
      if infer_eval is not None and eval_due:
        infer_eval(step, state["params"])

      if ((save_cfg.period and step % save_cfg.period == 0) or step == total_steps
          or step in extra_save_steps):
        check_finite(prev)  # Never checkpoint a non-finite state.
        saves.poll(wait=True)  # (orbax would wait for it anyway.)
        _save_checkpoint(manager, step, state, train_iter, batches, save_cfg,
                         save_dataset)
        saves.started(step)
        last_saved = step
      stopped_by = stop_requests.requested() if step < total_steps else None
      if stopped_by:  # A preemption notice or Ctrl-C: keep this step, then stop.
        check_finite(prev)  # Never checkpoint a non-finite state.
        if last_saved != step:
          saves.poll(wait=True)
          _save_checkpoint(manager, step, state, train_iter, batches, save_cfg,
                           save_dataset)
          saves.started(step)
          last_saved = step
        break
      saves.poll()
      if batches is not None and step < total_steps:
        batches.prefetch()  # Batch step+1, composed while this step runs.

  # ---------------------------------------------------------------------------
  # Finish: a checkpoint of the final step exists and everything is flushed.
  # ---------------------------------------------------------------------------
  if last_saved != step:  # Only when no step ran and MODEL_DIR had no checkpoint.
    saves.poll(wait=True)
    _save_checkpoint(manager, step, state, train_iter, batches, save_cfg,
                     save_dataset)
    saves.started(step)
  saves.poll(wait=True)
  manager.wait_until_finished()
  manager.close()
  writer.close()
  eval_writer.close()
  if infer_eval is not None:
    infer_eval.close()
  if batches is not None:
    batches.close()
  if sampling_log is not None:
    sampling_log.close()
  run_lock.release(lock)
  logging.info(
      "%s: steps %d-%d of %d in %s%s; checkpoints in %s (latest %d).%s",
      f"Stopped by {stopped_by}" if stopped_by else "Done", start_step,
      step, total_steps, _format_duration(time.time() - t_start),
      f", final loss {summary['loss']:.4f}" if "loss" in summary else "", ckpt_dir,
      step, f" {bad_data.summary(bad_data.totals())}." if bad_data.totals() else "")
  if stopped_by:
    logging.info("The same command resumes from step %d.", step)
  return step, state


def _compile(what: str, jitted, *args):
  """Compiles `jitted` for `args` ahead of time, logging when it starts and its time."""
  logging.info("Compiling the %s ...", what)
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  logging.info("Compiled the %s in %.1f s.", what, time.perf_counter() - start)
  return compiled


def _restore_latest_loadable(manager, latest, items, has_data_state, is_primary):
  """(step, restored items) of the newest checkpoint up to `latest` that loads.

  A checkpoint that raises on restore (files damaged or deleted after orbax committed
  it) is reported, moved aside to `<step>.unreadable` (kept for inspection; orbax
  ignores it, so a later save of that step does not collide) and the previous one is
  tried. One whose input-position item differs from `latest`'s is passed over: the
  input pipeline was built for that kind. None loads: an error saying what to move.
  """
  for step in sorted((s for s in manager.all_steps() if s <= latest), reverse=True):
    if (manager.directory / str(step) / "dataset").exists() != has_data_state:
      logging.warning("Checkpoint %d has %s input-pipeline state than checkpoint %d: "
                      "passed over.", step, "no" if has_data_state else "more", latest)
      continue
    try:
      return step, manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-exception-caught
      aside = manager.directory / f"{step}.unreadable"
      if aside.exists():
        aside = manager.directory / f"{step}.unreadable.{int(time.time())}"
      logging.warning("Checkpoint %d in %s does not load (%s: %s); it is moved to %s "
                      "and the previous checkpoint is used.", step, manager.directory,
                      type(e).__name__, errors.first_line(e), aside)
      if is_primary:
        os.replace(manager.directory / str(step), aside)
      manager.reload()
  raise errors.MissingPathError(
      f"No checkpoint in {manager.directory} loads (see the warnings above). Move the "
      "directory away to train from scratch, or restore it from a backup.")


def _checkpoint_manager(ckpt_dir: str, save_cfg) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=save_cfg.keep,
                                                     create=True))


def _data_iterators(train_iter, batches):
  """What the "dataset" checkpoint item holds: the iterator, or the dynamic batches."""
  return train_iter if batches is None else batches


def _save_checkpoint(manager, step, state, train_iter, batches, save_cfg, save_dataset):
  """Saves state (+ this host's data iterators, + the sampler) as checkpoints/<step>."""
  to_save = state if not save_cfg.dtype else dict(
      state, params=_cast_floats(state["params"], save_cfg.dtype))
  items = {"state": ocp.args.StandardSave(to_save)}
  if save_dataset:
    items["dataset"] = DatasetIteratorArgs(_data_iterators(train_iter, batches))
  if batches is not None:
    items["sampler"] = ocp.args.JsonSave(batches.state_dict())
  if utils.write_problem(str(manager.directory)):  # Else orbax times out after 300 s.
    raise CheckpointWriteError(_write_failure(manager, step, None))
  try:
    manager.save(step, args=ocp.args.Composite(**items), force=True)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise CheckpointWriteError(_write_failure(manager, step, e)) from e


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; the previous one is intact."""


def _write_failure(manager, step, error) -> str:
  previous = [s for s in manager.all_steps() if s < step]
  kept = (f"checkpoint {max(previous)} is intact and the same command resumes from it"
          if previous else "no earlier checkpoint exists")
  # Orbax creates the step directory in a background thread; when that fails, the
  # error the trainer sees is a timeout. A probe of the directory says why.
  problem = utils.write_problem(str(manager.directory))
  cause = (f"the directory is not writable ({problem})" if problem else
           f"{type(error).__name__}: {errors.first_line(error)}")
  return (f"Writing checkpoint {step} to {manager.directory} failed: {cause}. Training "
          f"stopped; {kept}. Free disk space or fix the directory's permissions first.")


class _CommittedSaves:
  """Logs "Saved checkpoint for step N" once orbax has committed it (its writes run in
  the background), and stops the run with `CheckpointWriteError`, naming the directory
  and the cause, when a background write failed. Orbax only renames a finished
  checkpoint into place, so a failed one is never restored from."""

  def __init__(self, manager):
    self.manager, self.pending = manager, None

  def started(self, step):
    self.pending = step

  def poll(self, wait=False):
    if self.pending is None or (not wait and self.manager.is_saving_in_progress()):
      return
    step, self.pending = self.pending, None
    try:
      if wait:
        self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise CheckpointWriteError(_write_failure(self.manager, step, e)) from e
    logging.info("Saved checkpoint for step %d.", step)


def _open_sampling_log(path: str, start_step: int):
  """sampling.jsonl for appending, rewound to `start_step`: the lines of steps after
  the checkpoint a run resumes from (logged before a crash, and about to be trained
  again) are dropped, so every step appears once. The rewrite is atomic (a rename)."""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= start_step:
          kept.append(line)
      except (ValueError, KeyError, TypeError):  # A line cut off by a crash.
        pass
    if len(kept) != len(lines):
      logging.info("sampling.jsonl: dropped %d lines after step %d (the resumed run "
                   "logs those steps again).", len(lines) - len(kept), start_step)
      with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
      os.replace(path + ".tmp", path)
  return open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with


def _sampling_summary(step, batches, task_names, summary, sampling_log):
  """Sampling weights and batch shares per task (seed 001 Fig. 2); one JSONL line."""
  weights = batches.last_weights
  shares = batches.last_counts / max(batches.global_batch_size, 1)
  scalars = {}
  for name, w, share in zip(task_names, weights, shares):
    scalars[f"sampling_weight/{name}"] = float(w)
    scalars[f"batch_share/{name}"] = float(share)
  if sampling_log is not None:
    record = {"step": step,
              "weights": dict(zip(task_names, map(float, weights))),
              "counts": dict(zip(task_names, map(int, batches.last_counts))),
              "task_loss": {name: summary.get(f"task_loss/{name}")
                            for name in task_names}}
    sampling_log.write(json.dumps(record) + "\n")
    sampling_log.flush()
  return scalars


def _raise_if_not_finite(step_and_stats):
  if step_and_stats is None:
    return
  step, stats = step_and_stats
  loss, grad_norm = float(stats["loss"]), float(stats["grad_norm"])
  if not np.isfinite(loss) or not np.isfinite(grad_norm):
    what = f"loss {loss}" if not np.isfinite(loss) else f"gradient norm {grad_norm}"
    raise FloatingPointError(
        f"Non-finite {what} at step {step}; it was not checkpointed. Lower the learning "
        "rate (utils.create_learning_rate_scheduler.base_learning_rate), check the data, "
        "skip such steps (train_script.train.non_finite_loss='skip'), or resume from an "
        "earlier checkpoint in MODEL_DIR/checkpoints.")


def merge_metrics(per_step: Sequence[Mapping[str, Any]]) -> dict:
  """clu metrics of several steps (or batches) merged into one per name."""
  return {k: functools.reduce(lambda a, b: a.merge(b), [m[k] for m in per_step])
          for k in per_step[0]}


def compute_metrics(merged: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(np.asarray(m.compute())) for k, m in merged.items()}


def _summarize(per_step: Sequence[tuple], task_names) -> dict[str, float]:
  """The period's clu metrics merged and computed, and per-task token-weighted losses."""
  summary = compute_metrics(merge_metrics([metrics for metrics, _ in per_step]))
  stats = [s for _, s in per_step]
  if task_names is not None and "task_loss_sum" in stats[0]:
    loss_sum = np.sum([m["task_loss_sum"] for m in stats], axis=0)
    count = np.sum([m["task_token_count"] for m in stats], axis=0)
    for name, l, c in zip(task_names, loss_sum, count):
      if c > 0:
        summary[f"task_loss/{name}"] = float(l / c)
  return summary


def _log_line(step, total_steps, summary, task_names, skipped=None) -> str:
  eta = (total_steps - step) / max(summary["steps_per_sec"], 1e-9)
  parts = [f"step {step}/{total_steps}", f"loss {summary['loss']:.4f}",
           f"lr {summary['learning_rate']:.3g}", f"{summary['steps_per_sec']:.2f} steps/s",
           f"{summary['examples_per_sec']:.1f} examples/s", f"ETA {_format_duration(eta)}"]
  if task_names:
    parts.append(" ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in summary.items()
                          if k.startswith("task_loss/")))
  if skipped:
    parts.append(bad_data.summary(skipped))
  return " | ".join(parts)


# absl main: parse the gin flags, then `train()` with everything bound by gin.
main = gin_utils.gin_main(train)


if __name__ == "__main__":
  # Run the imported module's main, not this __main__ copy: gin binds `train` under
  # the module name `vlpretrain.train` (see gin/runs/pretrain.gin).
  from vlpretrain import train as _train_module  # pylint: disable=import-self
  gin_utils.run(_train_module.main)
