"""A seqio Mixture whose training batches are composed by the running per-task loss.

Seed 001 sec. 3.1 ("dynamic difficulty sampling") and seed 000 sec. 4.1: every batch
holds `counts[t]` examples of task t, with the counts drawn up by `vlpretrain.mixing`
from each task's recent loss. tf.data cannot take feedback from the train step, so this
module composes the batches on the host (written by hand: neither seqio nor tf.data mixes
by a signal computed during training):

  * `DynamicMixture` is a `seqio.Mixture`, registered in `seqio.MixtureRegistry` with
    `register_dynamic_mixture`, so MIXTURE_OR_TASK_NAME picks it like any mixture and
    every seqio tool reads it as an equal-rate mixture. The trainer recognises the class
    and asks it for one dataset per task instead (`task_datasets`), each example tagged
    with its `task_id`.
  * `DynamicBatches` takes `counts[t]` examples of each task per step. Each task's
    iterator yields chunks of `chunk_size` examples (one Python call per chunk, not per
    example); rows left over from a chunk wait in a per-task buffer for the next step.
    The global batch is laid out task by task; host h takes its slice of that layout, so
    the global counts are exact on any number of hosts, and every host computes them
    from the same globally reduced metrics.
  * One step of lag: the batch of step n+1 is composed while step n runs, from the losses
    of steps <= n-1 (the window is K = 100 steps, so one step of staleness is immaterial,
    and the device never waits for the host).
  * `make_sampler` (gin) chooses the strategy: `dynamic_mixture.make_sampler.strategy =
    'uniform'` etc. (seed 001 Table 4 ablations).

Exact resumption: the checkpoint holds each task iterator's tf.data state and leftover
rows (per host), the sampler's state, the last step's not-yet-applied losses and how many examples every host
has taken from every task (`state_dict`). Pipelines that tf.data cannot checkpoint
(sources that read files in Python) resume by skipping each task's consumed examples.
"""
import concurrent.futures
import io
import time
from typing import Callable, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from vlpretrain import errors
from vlpretrain import mixing

TASK_ID = "task_id"


class DynamicMixture(seqio.Mixture):
  """A seqio Mixture (equal rates for seqio tools) whose training batches the trainer
  composes per step with a `mixing.Sampler` (seed 001 sec. 3.1)."""

  @property
  def task_names(self) -> list[str]:
    """Task names indexed by `task_id`."""
    return [t.name for t in self.tasks]

  def num_examples(self, split: str) -> list[int]:
    """Each task's number of source examples in `split` (for the `size` strategy)."""
    sizes = []
    for task in self.tasks:
      n = task.num_input_examples(split)
      if n is None:
        raise errors.ConfigError(
            f"Task {task.name!r} does not know its size for split {split!r} (its source "
            "has no num_input_examples), so the 'size' strategy cannot weigh it. Use "
            "dynamic_mixture.make_sampler.strategy = 'fixed' with explicit `rates`.")
      sizes.append(int(n))
    return sizes

  def task_datasets(self, sequence_length: Mapping[str, int], split: str,
                    use_cached: bool = False, shuffle: bool = True,
                    seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None,
                    num_epochs: Optional[int] = None) -> list[tf.data.Dataset]:
    """One repeated dataset of task features per task, each example with `task_id`.

    Task t is shuffled with seed `seed + t`, so tasks reading the same source (the shapes
    world) do not walk it in lockstep.
    """
    datasets = []
    for task_id, task in enumerate(self.tasks):
      ds = task.get_dataset(
          sequence_length=sequence_length, split=split, use_cached=use_cached,
          shuffle=shuffle, seed=None if seed is None else seed + task_id,
          shard_info=shard_info, num_epochs=num_epochs)
      datasets.append(ds.map(
          lambda ex, i=task_id: dict(ex, **{TASK_ID: tf.constant(i, tf.int32)}),
          num_parallel_calls=tf.data.AUTOTUNE))
    return datasets


def register_dynamic_mixture(name: str, tasks: Sequence[str]) -> DynamicMixture:
  """Registers `tasks` (registered seqio Task names) as the dynamic mixture `name`."""
  return seqio.MixtureRegistry.add(name, list(tasks), default_rate=1.0,
                                   mixture_cls=DynamicMixture)


@gin.configurable
def make_sampler(num_tasks: int,
                 dataset_sizes: Optional[Callable[[], Sequence[int]]] = None,
                 strategy: str = "difficulty", window: int = 100,
                 min_per_task: int = 4,
                 rates: Optional[Sequence[float]] = None) -> mixing.Sampler:
  """The training sampler; gin chooses `strategy` (one of `mixing.STRATEGIES`).

  `dataset_sizes` (the tasks' sizes, e.g. `DynamicMixture.num_examples`) is passed by the
  trainer and called for 'size' only; 'fixed' needs `rates` (bind
  dynamic_mixture.make_sampler.rates = [...], one per task).
  """
  kwargs = {}
  if strategy == "size":
    if dataset_sizes is None:
      raise errors.ConfigError("strategy='size' needs the tasks' dataset sizes.")
    kwargs["sizes"] = dataset_sizes()
  if strategy == "fixed":
    if rates is None:
      raise errors.ConfigError("strategy='fixed' needs rates: bind "
                               "dynamic_mixture.make_sampler.rates = [one rate per task].")
    kwargs["rates"] = rates
  elif rates is not None:
    raise errors.ConfigError(f"dynamic_mixture.make_sampler.rates is set, but strategy is "
                             f"{strategy!r}; rates are only read by strategy='fixed'.")
  return mixing.Sampler(num_tasks, strategy, window=window, min_per_task=min_per_task,
                        **kwargs)


def host_counts(global_counts: np.ndarray, shard_index: int,
                num_shards: int) -> np.ndarray:
  """Host `shard_index`'s per-task counts: its slice of the task-by-task global layout."""
  layout = np.repeat(np.arange(len(global_counts)), global_counts)
  per_host = len(layout) // num_shards
  mine = layout[shard_index * per_host:(shard_index + 1) * per_host]
  return np.bincount(mine, minlength=len(global_counts))


class DynamicBatches:
  """This host's training batches, composed per step from the sampler's counts.

  Protocol, per training step n (see the module docstring for the lag):

      batch = batches.next()       # composed in the background during step n-1
      ...dispatch step n...
      batches.record(loss_sums, token_counts)   # step n's (device) metrics
      ...log, evaluate, checkpoint (state_dict)...
      batches.prefetch()           # start composing batch n+1

  `record` applies the previous step's metrics to the sampler (reading them waits for
  step n-1 only) and keeps step n's for the next call.
  """

  def __init__(self, datasets: Sequence[tf.data.Dataset], sampler: mixing.Sampler,
               global_batch_size: int, shard_index: int = 0, num_shards: int = 1,
               chunk_size: int = 8):
    if len(datasets) != sampler.tracker.num_tasks:
      raise ValueError(f"{len(datasets)} task datasets but the sampler has "
                       f"{sampler.tracker.num_tasks} tasks.")
    if global_batch_size % num_shards:
      raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                       f"number of hosts {num_shards}.")
    self.sampler = sampler
    self.global_batch_size = global_batch_size
    self.shard_index, self.num_shards = shard_index, num_shards
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    # Plain tf iterators (not numpy ones): `tf.train.Checkpoint` saves their position.
    self.iterators = [iter(ds.batch(chunk_size).prefetch(tf.data.AUTOTUNE))
                      for ds in datasets]
    # Rows of the last chunk not yet used, per task ({feature: array} or None).
    self._leftover = [None] * len(datasets)
    self._unapplied = None  # The last recorded step's metrics, applied at the next call.
    self._executor = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="dynamic_batches")
    self._future = None
    self.last_weights = sampler.weights()
    self.last_counts = np.zeros(len(datasets), np.int64)
    # consumed[h, t]: examples host h has taken from task t (every host knows all rows).
    self.consumed = np.zeros((num_shards, len(datasets)), np.int64)
    # Seconds since the last `pop_timings()`: the sampler's own work and waiting for a
    # batch (training thread), and composing batches (background thread, overlapped).
    self._timings = {"sampler": 0.0, "batch_wait": 0.0, "compose": 0.0}

  @property
  def num_tasks(self) -> int:
    return len(self.iterators)

  @property
  def batches_composed(self) -> int:
    """Batches composed so far (every batch holds exactly global_batch_size examples)."""
    return int(self.consumed.sum()) // self.global_batch_size

  def prefetch(self) -> None:
    """Starts composing the next batch from the sampler's current state."""
    if self._future is not None:
      raise RuntimeError("prefetch() called twice without next().")
    start = time.perf_counter()
    # The index of the batch being composed. The sampler has seen the losses of one
    # step fewer (the lag), so its own update count would be one behind from batch 1
    # on: strategies that follow the step (round_robin) take the batch index.
    step = self.batches_composed
    self.last_weights = self.sampler.weights(step)
    self.last_counts = self.sampler.counts(self.global_batch_size, step)
    loss_weights = self.sampler.loss_weights(step)
    for h in range(self.num_shards):
      self.consumed[h] += host_counts(self.last_counts, h, self.num_shards)
    counts = host_counts(self.last_counts, self.shard_index, self.num_shards)
    self._timings["sampler"] += time.perf_counter() - start
    self._future = self._executor.submit(self._compose, counts, loss_weights)

  def next(self) -> dict[str, np.ndarray]:
    """The next host-local batch (numpy), task by task in `task_id` order."""
    if self._future is None:
      self.prefetch()
    future, self._future = self._future, None
    start = time.perf_counter()
    batch = future.result()
    self._timings["batch_wait"] += time.perf_counter() - start
    return batch

  def pop_timings(self) -> dict[str, float]:
    """Seconds spent since the last call: sampler, batch_wait and compose."""
    timings = dict(self._timings)
    self._timings = dict.fromkeys(timings, 0.0)
    return timings

  def _take(self, task: int, n: int) -> list[dict[str, np.ndarray]]:
    """The next `n` rows of `task`: its leftover rows first, then new chunks."""
    parts, rows = [], self._leftover[task]
    while n > 0:
      if rows is None or len(rows[TASK_ID]) == 0:
        rows = {k: v.numpy() for k, v in next(self.iterators[task]).items()}
      m = min(n, len(rows[TASK_ID]))
      parts.append({k: v[:m] for k, v in rows.items()})
      rows = {k: v[m:] for k, v in rows.items()}
      n -= m
    self._leftover[task] = rows
    return parts

  def _compose(self, counts, loss_weights) -> dict[str, np.ndarray]:
    start = time.perf_counter()
    parts = [p for task, n in enumerate(counts) for p in self._take(task, int(n))]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if np.any(loss_weights != 1.0) and "decoder_loss_weights" in batch:
      # loss_reweight (seed 001 Table 4): each task's tokens weighted by its difficulty.
      w = loss_weights[batch[TASK_ID]].astype(np.float32)[:, None]
      batch["decoder_loss_weights"] = batch["decoder_loss_weights"] * w
    self._timings["compose"] += time.perf_counter() - start
    return batch

  def record(self, task_loss_sums, task_token_counts) -> None:
    """Keeps this step's per-task metrics; applies the previous step's to the sampler.

    With `loss_reweight` the sums are of weighted tokens, but every token of a task has
    the same weight in a step, so their ratio, the task's mean loss, is unweighted.
    """
    previous, self._unapplied = self._unapplied, (task_loss_sums, task_token_counts)
    if previous is not None:
      host = [np.asarray(x, np.float64) for x in previous]  # Waits for that step only.
      start = time.perf_counter()
      self.sampler.update(*host)
      self._timings["sampler"] += time.perf_counter() - start

  def state_dict(self) -> dict:
    """The sampler's state and the unapplied metrics (the same on every host: JSON-able)."""
    state = {k: np.asarray(v).tolist() for k, v in self.sampler.state_dict().items()}
    state["unapplied"] = (None if self._unapplied is None else
                          [np.asarray(x, np.float64).tolist() for x in self._unapplied])
    state["consumed"] = self.consumed.tolist()
    return state

  def load_state_dict(self, state: dict) -> None:
    if self._future is not None:
      raise RuntimeError("load_state_dict() while a batch is being composed.")
    self.sampler.from_state_dict({k: np.asarray(v) for k, v in state.items()
                                  if k not in ("unapplied", "consumed")})
    consumed = np.asarray(state["consumed"], np.int64)
    if consumed.shape != self.consumed.shape:
      raise errors.ConfigError(
          f"The checkpoint's dynamic mixture state is for {consumed.shape[0]} hosts and "
          f"{consumed.shape[1]} tasks; this run has {self.consumed.shape[0]} hosts and "
          f"{self.consumed.shape[1]} tasks.")
    self.consumed = consumed
    unapplied = state.get("unapplied")
    self._unapplied = None if unapplied is None else tuple(
        np.asarray(x, np.float64) for x in unapplied)

  def write_iterators(self, prefix: str) -> None:
    """This host's input position: every task iterator (`tf.train.Checkpoint` at
    `prefix`) and the leftover rows of their last chunks (`prefix`.leftover.npz)."""
    self._checkpoint().write(prefix)
    arrays = {f"task_{t:03d}__{k}": v for t, rows in enumerate(self._leftover)
              if rows is not None for k, v in rows.items()}
    buffer = io.BytesIO()  # np.savez needs a seekable file; GFile (gs://) is not.
    np.savez(buffer, **arrays)
    with tf.io.gfile.GFile(prefix + ".leftover.npz", "wb") as f:
      f.write(buffer.getvalue())

  def read_iterators(self, prefix: str) -> None:
    """Restores what `write_iterators(prefix)` wrote."""
    self._checkpoint().read(prefix).assert_consumed()
    with tf.io.gfile.GFile(prefix + ".leftover.npz", "rb") as f:
      arrays = dict(np.load(io.BytesIO(f.read())))
    self._leftover = [None] * self.num_tasks
    for key, value in arrays.items():
      task, feature = key.split("__", 1)
      task = int(task[len("task_"):])
      self._leftover[task] = dict(self._leftover[task] or {}, **{feature: value})

  def _checkpoint(self) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(**{f"task_{i:03d}": it
                                  for i, it in enumerate(self.iterators)})

  def close(self) -> None:
    self._executor.shutdown(wait=True)
