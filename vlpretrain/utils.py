"""Gin-configurable run pieces with t5x's names: dataset/checkpoint configs, LR schedules."""
import dataclasses
import difflib
import importlib
import os
import tempfile
from typing import Mapping, Optional, Sequence, Tuple, Union

from absl import logging
import gin
import jax.numpy as jnp
import optax
import seqio
import tensorflow as tf

from vlpretrain import errors


# -----------------------------------------------------------------------------
# Configs.
# -----------------------------------------------------------------------------
@gin.configurable
@dataclasses.dataclass
class DatasetConfig:
  """Which seqio Task/Mixture to read and how (t5x's `utils.DatasetConfig`).

  `batch_size` is global: each of the N hosts reads `batch_size // N` examples per step.
  `module` is imported first so that its Task/Mixture registrations run.
  `trim_output_features` and `use_custom_packing_ops` are t5x's: the first is passed to
  seqio (False keeps features longer than `task_feature_lengths`, which the feature
  converter then refuses); the second only matters with packing, which vlpretrain's
  converters refuse, so it is accepted and unused, as in t5x without packing.
  """
  mixture_or_task_name: Optional[str]
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool
  seed: Optional[int]
  use_cached: bool = False
  pack: bool = False
  module: Optional[str] = None
  trim_output_features: bool = True
  use_custom_packing_ops: bool = False


@gin.configurable
@dataclasses.dataclass
class SaveCheckpointConfig:
  """When and what to checkpoint.

  period: save every `period` steps (and always at the end of training).
  keep: number of most recent checkpoints kept; None keeps all.
  dtype: cast floating-point params to this dtype when writing (None: as trained).
  save_dataset: also save each host's tf.data iterator state, so a resumed run reads
    exactly the batches an uninterrupted run would have read.
  checkpoint_steps: steps to save at besides every `period` (t5x's name).
  """
  period: int = 1000
  keep: Optional[int] = None
  dtype: Optional[str] = None
  save_dataset: bool = True
  checkpoint_steps: Optional[Sequence[int]] = None


@gin.configurable
@dataclasses.dataclass
class RestoreCheckpointConfig:
  """Where to start from when MODEL_DIR holds no checkpoint yet.

  path: a checkpoint directory written by `train` (mode='latest': MODEL_DIR/checkpoints
    or any orbax CheckpointManager directory; mode='specific': one step directory), a
    t5x MODEL_DIR or checkpoint_<step> (its orbax or msgpack format: the public T5
    checkpoints), or a big_vision ViT .npz; or a list of them (e.g. T5 and ViT), each
    param read from the first that has it. Only the params are taken (a warm start);
    step, optimizer and data start fresh. A checkpoint in MODEL_DIR always wins:
    training resumes from it. vlpretrain's 'latest' is the default, where t5x's
    pretrain.gin uses 'specific' for INITIAL_CHECKPOINT_PATH.
  dtype: cast restored floating-point params to this dtype (None: the model's dtype).
  restore_dataset: when resuming from MODEL_DIR, restore the data iterator state too.
  assignment_map: for a warm start, t5x's (regex, replacement) pairs over the params'
    paths ('image_encoder/embedding/kernel'): replacement None leaves the matching
    params at their fresh initialisation, a string reads them from that checkpoint
    param (checkpoints.assign). E.g. only the ViT: (('(image_encoder/.*)', r'\1'),
    (r'.*', None)). Ignored when resuming from MODEL_DIR. Presets for the public
    checkpoints: `assignment_maps.py`.
  strict: (t5x's) a model param that no checkpoint holds is an error; False initialises
    it afresh (logged).
  fallback_to_scratch: (t5x's) when `path` holds no checkpoint, initialise from scratch
    (logged) instead of failing.
  """
  path: Optional[Union[str, Sequence[str]]] = None
  mode: str = "latest"
  dtype: Optional[str] = None
  restore_dataset: bool = True
  assignment_map: Optional[Sequence[Tuple[str, Optional[str]]]] = None
  strict: bool = True
  fallback_to_scratch: bool = False

  def __post_init__(self):
    if self.mode not in ("latest", "specific"):
      raise errors.ConfigError(
          f"utils.RestoreCheckpointConfig.mode={self.mode!r} is not supported; use "
          "'latest' or 'specific'.")


@gin.configurable
@dataclasses.dataclass
class CheckpointConfig:
  """t5x's `utils.CheckpointConfig`: the save and restore halves."""
  save: Optional[SaveCheckpointConfig] = None
  restore: Optional[RestoreCheckpointConfig] = None


# -----------------------------------------------------------------------------
# Output directories.
# -----------------------------------------------------------------------------
def check_writable_dir(path: str, macro: str) -> None:
  """Raises ConfigError, naming `macro`, if directory `path` could not be created or
  written; creates nothing. Remote paths (gs://...) are not checked."""
  if "://" in os.fspath(path):
    return
  path = os.path.abspath(path)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  problem = None
  if os.path.exists(path) and not os.path.isdir(path):
    problem = "it is a file"
  elif not os.path.isdir(existing):
    problem = f"{existing!r} is a file"
  elif cause := write_problem(existing):
    problem = f"{existing!r} is not writable ({cause})"
  if problem:
    raise errors.ConfigError(
        f"{macro}={path!r} cannot be written: {problem}. Pass --gin.{macro}= a "
        "directory you can write.")


def make_output_dir(path: str, macro: str) -> None:
  """`os.makedirs(path)` (or tf.io.gfile for remote paths), the failure naming `macro`."""
  try:
    tf.io.gfile.makedirs(path)
  except (OSError, tf.errors.OpError) as e:
    raise errors.ConfigError(f"{macro}={path!r} cannot be created ({e}). Pass "
                             f"--gin.{macro}= a directory you can write.") from None


def write_problem(directory: str) -> Optional[str]:
  """Why nothing can be created in the existing local `directory` (None if something
  can, and for remote paths), by creating and removing a probe directory in it: a real
  probe, since permission bits do not tell for root or read-only mounts."""
  if "://" in os.fspath(directory):
    return None
  try:
    os.rmdir(tempfile.mkdtemp(prefix=".vlpretrain_write_check_", dir=directory))
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


# -----------------------------------------------------------------------------
# Datasets.
# -----------------------------------------------------------------------------
def get_mixture_or_task(cfg: DatasetConfig):
  """Imports `cfg.module` (or vlpretrain.tasks) and returns the seqio Task/Mixture."""
  if not cfg.mixture_or_task_name:
    raise errors.ConfigError(
        "No dataset given: MIXTURE_OR_TASK_NAME is unset. Pass "
        "--gin.MIXTURE_OR_TASK_NAME=\"'<task or mixture>'\" (e.g. 'shapes_cap') or bind "
        "it in your gin file.")
  # Gin is locked by now; a module imported here may still register configurables
  # (its sources), which gin allows only while unlocked.
  with gin.unlock_config():
    if cfg.module:
      importlib.import_module(cfg.module)
    name = cfg.mixture_or_task_name
    if (name not in seqio.TaskRegistry.names() and
        name not in seqio.MixtureRegistry.names()):
      importlib.import_module("vlpretrain.tasks")  # The project's own registrations.
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if name not in known:
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise errors.ConfigError(
        f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio Task or Mixture.{hint} "
        "Register your own in a module and pass "
        "--gin.MIXTURE_OR_TASK_MODULE=\"'my.module'\" (README, \"Register a new task\").")
  return seqio.get_mixture_or_task(name)


@gin.configurable
def input_options(autotune: bool = False) -> tf.data.Options:
  """The tf.data options of every input pipeline vlpretrain builds (train, evals, infer).

  autotune: tf.data's autotuning, a model thread per iterator that tunes parallelism and
    buffer sizes. Off by default: with it on, deleting the training iterators at the end
    of a run waited 30-67 s for those threads in 4 of 5 easy-VQA runs (2 CPU cores,
    TensorFlow 2.21; the process stayed alive that long after its last checkpoint), and
    0.4-0.5 s with it off. Off, AUTOTUNE map parallelism is the host's core count and
    AUTOTUNE prefetch buffers still grow when they run dry. Bind
    `utils.input_options.autotune = True` for an input-bound accelerator host.
  """
  options = tf.data.Options()
  options.autotune.enabled = autotune
  return options


def get_dataset(cfg: DatasetConfig,
                shard_id: int,
                num_shards: int,
                feature_converter_cls,
                num_epochs: Optional[int] = None) -> tf.data.Dataset:
  """This host's batched dataset of model features (t5x's `utils.get_dataset`).

  Reads shard `shard_id` of `num_shards`, converts task features to model features with
  `feature_converter_cls` (no packing unless cfg.pack) and batches `batch_size //
  num_shards` examples per step (remainder dropped).
  """
  if cfg.batch_size % num_shards:
    raise errors.ConfigError(
        f"Global batch size {cfg.batch_size} (BATCH_SIZE / DatasetConfig.batch_size) is "
        f"not divisible by the number of hosts {num_shards}.")
  mixture_or_task = get_mixture_or_task(cfg)
  ds = mixture_or_task.get_dataset(
      sequence_length=cfg.task_feature_lengths,
      split=cfg.split,
      use_cached=cfg.use_cached,
      shuffle=cfg.shuffle,
      seed=cfg.seed,
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
      num_epochs=num_epochs,
      trim_output_features=cfg.trim_output_features)
  ds = feature_converter_cls(pack=cfg.pack)(
      ds, task_feature_lengths=cfg.task_feature_lengths)
  ds = ds.batch(cfg.batch_size // num_shards, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(input_options())


def get_task_datasets(cfg: DatasetConfig,
                      shard_id: int,
                      num_shards: int,
                      feature_converter_cls) -> list[tf.data.Dataset]:
  """This host's unbatched, repeated model-feature datasets, one per task of the
  `dynamic_mixture.DynamicMixture` named by `cfg` (its examples carry `task_id`)."""
  if cfg.pack:
    raise errors.ConfigError("A dynamic mixture composes batches example by example: set "
                             "pack = False in its DatasetConfig.")
  mixture = get_mixture_or_task(cfg)
  datasets = mixture.task_datasets(
      sequence_length=cfg.task_feature_lengths, split=cfg.split,
      use_cached=cfg.use_cached, shuffle=cfg.shuffle, seed=cfg.seed,
      shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards))
  converter = feature_converter_cls(pack=False)
  return [converter(ds, task_feature_lengths=cfg.task_feature_lengths).with_options(
      input_options()) for ds in datasets]


# -----------------------------------------------------------------------------
# Learning rate.
# -----------------------------------------------------------------------------
_SCHEDULES = ("constant", "constant * linear_warmup",
              "constant * linear_warmup * cosine_decay",
              "constant * linear_warmup * linear_decay")


@gin.configurable
def create_learning_rate_scheduler(
    factors: str = "constant * linear_warmup * cosine_decay",
    base_learning_rate: float = 1e-4,
    warmup_steps: int = 10_000,
    decay_steps: Optional[int] = None,
    min_learning_rate: float = 0.0,
    steps_per_cycle: Optional[int] = None,
    step_offset: int = 0) -> optax.Schedule:
  """An optax schedule named like t5x's factor strings.

  factors: one of 'constant', 'constant * linear_warmup',
    'constant * linear_warmup * cosine_decay', 'constant * linear_warmup * linear_decay'.
  The rate rises linearly from 0 at step 0 to `base_learning_rate` at `warmup_steps`,
  then decays to `min_learning_rate` at `decay_steps` (the total length *including*
  warmup, optax's convention; pretrain.gin binds it to TRAIN_STEPS) and stays there.
  t5x's parameters: `steps_per_cycle` (the cosine's length after warmup) stands for
  `decay_steps = warmup_steps + steps_per_cycle`; t5x's cosine then starts a new cycle
  where vlpretrain's stays at `min_learning_rate`. `step_offset` shifts the schedule
  (the rate at step s is the rate at max(0, s - step_offset)), as in t5x. t5x's other
  factors (rsqrt_decay, decay_every, its linear_decay) and their `decay_factor` and
  `steps_per_decay` are not offered.
  """
  schedule = _schedule(factors, base_learning_rate, warmup_steps,
                       decay_steps if steps_per_cycle is None or decay_steps is not None
                       else warmup_steps + steps_per_cycle, min_learning_rate)
  if not step_offset:
    return schedule
  return lambda step: schedule(jnp.maximum(0, step - step_offset))


def _schedule(factors, base_learning_rate, warmup_steps, decay_steps, min_learning_rate):
  key = " * ".join(f.strip() for f in factors.split("*"))
  if key not in _SCHEDULES:
    raise errors.ConfigError(
        f"utils.create_learning_rate_scheduler.factors={factors!r} is not supported; "
        f"use one of {list(_SCHEDULES)}.")
  if key == "constant":
    return optax.constant_schedule(base_learning_rate)
  if key == "constant * linear_warmup":
    return optax.warmup_constant_schedule(0.0, base_learning_rate, max(warmup_steps, 1))
  if decay_steps is None:
    raise errors.ConfigError(
        f"utils.create_learning_rate_scheduler.decay_steps is required for {factors!r}; "
        "bind it (pretrain.gin uses %TRAIN_STEPS), or t5x's steps_per_cycle.")
  if decay_steps <= warmup_steps:
    # The run ends inside warmup: the decay part is never reached. Keep it well-defined.
    logging.log_first_n(logging.WARNING, "Learning rate: warmup_steps=%d >= "
                        "decay_steps=%d, so training ends during warmup.", 1,
                        warmup_steps, decay_steps)
    decay_steps = warmup_steps + 1
  if key.endswith("cosine_decay"):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base_learning_rate, warmup_steps=warmup_steps,
        decay_steps=decay_steps, end_value=min_learning_rate)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base_learning_rate, warmup_steps),
       optax.linear_schedule(base_learning_rate, min_learning_rate,
                             decay_steps - warmup_steps)],
      boundaries=[warmup_steps])
