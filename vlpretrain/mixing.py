"""Dynamic difficulty sampling: each batch's per-task composition from recent losses.

Seed 001 sec. 3.1 ("dynamic difficulty sampling") and seed 000 sec. 4.1, eq. 4: task t's
share of the next batch is its recent mean per-token loss over the sum of all tasks' ones,

    w_t = L_t / sum_s L_s,

with at least `min_per_task` (4) examples of every task in every batch, so that every L_t
stays measurable, and L_t accumulated over the last K (100) steps for stability.

The other strategies are the seed 001 Table 4 ablations; `STRATEGIES` maps a name to each.

No randomness anywhere: every host feeds `Sampler` the same globally reduced metrics and
so computes the same counts; sums use `math.fsum` (correctly rounded, order-independent).
"""
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from vlpretrain import errors


def _check_vector(name, x, length=None):
  """`x` as a float64 1-D array of finite, non-negative values, or a ValueError naming it."""
  try:
    x = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"`{name}` must be an array of numbers: {e}") from e
  if x.ndim != 1 or x.size == 0 or (length is not None and x.size != length):
    want = f"length {length}" if length is not None else "at least one entry"
    raise ValueError(f"`{name}` must be a 1-D array with {want}, got shape {x.shape}.")
  if not np.all(np.isfinite(x)) or np.any(x < 0):
    raise ValueError(f"`{name}` must be finite and non-negative, got {x.tolist()}.")
  return x


def _check_int(name, x, minimum):
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < minimum:
    raise ValueError(f"`{name}` must be an integer >= {minimum}, got {x!r}.")
  return int(x)


def _normalise(w):
  """`w / sum(w)`; uniform when `w` is all zero. `w` is finite and non-negative."""
  if w.max() > 0:
    w = w / w.max()  # Keeps the sum finite for huge weights.
    return w / math.fsum(w)
  return np.full(w.size, 1.0 / w.size)


def batch_counts(weights, batch_size: int, min_per_task: int = 4) -> np.ndarray:
  """Exact per-task example counts of one batch (seed 001 sec. 3.1).

  Every task gets `min_per_task` examples; the remainder `batch_size - T * min_per_task` is
  split by the normalised `weights` with largest-remainder (Hamilton) rounding: each task
  gets the floor of its quota, and the examples left over go to the largest fractional
  parts, ties to the lowest task index. So `sum(counts) == batch_size` and every count is
  within 1 of its exact quota `min_per_task + w_t * remainder`.

  `weights`: length T, finite, non-negative (all zero -> uniform). Returns int64 counts.
  """
  w = _normalise(_check_vector("weights", weights))
  batch_size = _check_int("batch_size", batch_size, 1)
  min_per_task = _check_int("min_per_task", min_per_task, 0)
  num_tasks = w.size
  if batch_size < num_tasks * min_per_task:
    raise errors.ConfigError(f"batch_size={batch_size} is smaller than {num_tasks} tasks x "
                             f"min_per_task={min_per_task} = {num_tasks * min_per_task}.")
  rest = batch_size - num_tasks * min_per_task
  quota = rest * w
  counts = np.floor(quota).astype(np.int64)
  left = rest - int(counts.sum())
  order = np.argsort(-(quota - counts), kind="stable")  # Stable: ties -> lowest index.
  counts[order[:left]] += 1
  return counts + min_per_task


class LossTracker:
  """Per-task mean token loss over the last `window` steps (K = 100 in seed 001 sec. 3.1).

  A ring buffer holds each step's (loss_sum, token_count) per task; L_t = sum(loss_sum) /
  sum(token_count) over the window (token-weighted, not a mean of per-step means). A task
  is "seen" once it has had a token; before that it has no loss.
  """

  def __init__(self, num_tasks: int, window: int = 100):
    num_tasks = _check_int("num_tasks", num_tasks, 1)
    window = _check_int("window", window, 1)
    self.loss_sums = np.zeros((window, num_tasks))
    self.token_counts = np.zeros((window, num_tasks))
    self.seen = np.zeros(num_tasks, dtype=bool)
    self.num_updates = 0

  @property
  def num_tasks(self) -> int:
    return self.loss_sums.shape[1]

  @property
  def window(self) -> int:
    return self.loss_sums.shape[0]

  def update(self, task_loss_sums, task_token_counts):
    """Adds one step's per-task loss sums and token counts; drops the step K ago."""
    loss = _check_vector("task_loss_sums", task_loss_sums, self.num_tasks)
    tokens = _check_vector("task_token_counts", task_token_counts, self.num_tasks)
    row = self.num_updates % self.window
    self.loss_sums[row], self.token_counts[row] = loss, tokens
    self.seen |= tokens > 0
    self.num_updates += 1

  def mean_losses(self) -> np.ndarray:
    """L_t per task; NaN for a task without tokens in the window."""
    loss = np.array([math.fsum(col) for col in self.loss_sums.T])
    tokens = np.array([math.fsum(col) for col in self.token_counts.T])
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(tokens > 0, loss / tokens, np.nan)


def _warm_losses(tracker: LossTracker) -> Optional[np.ndarray]:
  """L_t for all tasks, or None during the warm start (some task never seen yet).

  A seen task without tokens in the window (only with a zero floor or all-padding
  examples) gets the mean of the other tasks' losses.
  """
  if not tracker.seen.all():
    return None
  losses = tracker.mean_losses()
  known = ~np.isnan(losses)
  if not known.any():
    return None
  return np.where(known, losses, math.fsum(losses[known]) / known.sum())


class Strategy:
  """Per-task sampling weights (and loss weights) from the tracker state and the step."""

  def weights(self, tracker: LossTracker, step: int) -> np.ndarray:
    raise NotImplementedError

  def counts(self, tracker, step, batch_size, min_per_task) -> np.ndarray:
    return batch_counts(self.weights(tracker, step), batch_size, min_per_task)

  def loss_weights(self, tracker: LossTracker, step: int) -> np.ndarray:
    """Per-task multipliers of the training loss; 1 except for `loss_reweight`."""
    return np.ones(tracker.num_tasks)


@dataclasses.dataclass
class Difficulty(Strategy):
  """w_t = L_t / sum_s L_s: seed 000 eq. 4, seed 001 sec. 3.1 (S_t = L_t / L).

  Warm start: uniform until every task has been seen at least once.
  """

  def weights(self, tracker, step):
    losses = _warm_losses(tracker)
    return _normalise(np.ones(tracker.num_tasks) if losses is None else losses)


@dataclasses.dataclass
class Uniform(Strategy):
  def weights(self, tracker, step):
    return np.full(tracker.num_tasks, 1.0 / tracker.num_tasks)


@dataclasses.dataclass
class Size(Strategy):
  """Proportional to the datasets' sizes (number of examples per task)."""
  sizes: Sequence[float]

  def weights(self, tracker, step):
    return _normalise(_check_vector("sizes", self.sizes, tracker.num_tasks))


@dataclasses.dataclass
class Fixed(Strategy):
  """Fixed mixing rates, normalised to sum to 1."""
  rates: Sequence[float]

  def weights(self, tracker, step):
    return _normalise(_check_vector("rates", self.rates, tracker.num_tasks))


@dataclasses.dataclass
class RoundRobin(Strategy):
  """The whole batch from one task, task `step % T` (Lu et al., 2020, in seed 001 Table 4).

  The only strategy that ignores `min_per_task`: a single-task batch has no floor.
  """

  def weights(self, tracker, step):
    return np.eye(tracker.num_tasks)[step % tracker.num_tasks]

  def counts(self, tracker, step, batch_size, min_per_task):
    batch_size = _check_int("batch_size", batch_size, 1)
    return (self.weights(tracker, step) * batch_size).astype(np.int64)


@dataclasses.dataclass
class Easiest(Strategy):
  """Floor for all; the rest to the lowest-loss task (ties: lowest index; warm: uniform)."""
  pick = staticmethod(np.argmin)

  def weights(self, tracker, step):
    losses = _warm_losses(tracker)
    if losses is None:
      return Uniform().weights(tracker, step)
    return np.eye(tracker.num_tasks)[int(self.pick(losses))]


@dataclasses.dataclass
class Hardest(Easiest):
  """Floor for all; the rest to the highest-loss task (ties: lowest index; warm: uniform)."""
  pick = staticmethod(np.argmax)


@dataclasses.dataclass
class LossReweight(Strategy):
  """Uniform batches; the difficulty weights reweight the loss instead (seed 001 Table 4).

  `loss_weights` is `T * w_t` (w_t as in `Difficulty`): mean 1, so the loss scale matches
  an unweighted run. The trainer multiplies each token's loss by `loss_weights[task_id]`
  before the usual normalisation; the per-task loss sums it feeds to `Sampler.update` stay
  *unweighted*, so the difficulty is measured on the raw loss.
  """

  def weights(self, tracker, step):
    return Uniform().weights(tracker, step)

  def loss_weights(self, tracker, step):
    return Difficulty().weights(tracker, step) * tracker.num_tasks


STRATEGIES = {"difficulty": Difficulty, "uniform": Uniform, "size": Size, "fixed": Fixed,
              "round_robin": RoundRobin, "easiest": Easiest, "hardest": Hardest,
              "loss_reweight": LossReweight}


def make_strategy(name: str, **kwargs) -> Strategy:
  """The strategy registered as `name`, e.g. `make_strategy("size", sizes=[...])`."""
  if name not in STRATEGIES:
    raise errors.ConfigError(f"Unknown `strategy` {name!r}; choose one of {sorted(STRATEGIES)}.")
  return STRATEGIES[name](**kwargs)


class Sampler:
  """Strategy + loss tracker + step: the per-task counts of each training batch.

  `counts(batch_size)` is the composition of batch `step`; `update(...)` with that step's
  globally reduced per-task metrics advances `step`. `state_dict()` / `from_state_dict()`
  checkpoint it, so a resumed run sees the counts an uninterrupted one would have seen.
  """

  def __init__(self, num_tasks: int, strategy="difficulty", window: int = 100,
               min_per_task: int = 4, **strategy_kwargs):
    if isinstance(strategy, str):
      strategy = make_strategy(strategy, **strategy_kwargs)
    elif not isinstance(strategy, Strategy):
      raise ValueError(f"`strategy` must be a name or a Strategy, got {strategy!r}.")
    self.strategy = strategy
    self.tracker = LossTracker(num_tasks, window)
    self.min_per_task = _check_int("min_per_task", min_per_task, 0)
    self.weights()  # Fails now on a bad strategy config, e.g. a wrong number of sizes.

  @property
  def step(self) -> int:
    return self.tracker.num_updates

  def update(self, task_loss_sums, task_token_counts):
    """One train step's per-task loss sums and token counts (length-T arrays, unweighted)."""
    self.tracker.update(task_loss_sums, task_token_counts)

  def weights(self, step: Optional[int] = None) -> np.ndarray:
    """The strategy's weights for batch `step` (default: `self.step`, the number of
    updates; a trainer whose losses arrive a step late passes the batch index)."""
    return self.strategy.weights(self.tracker, self.step if step is None else step)

  def loss_weights(self, step: Optional[int] = None) -> np.ndarray:
    return self.strategy.loss_weights(self.tracker, self.step if step is None else step)

  def counts(self, batch_size: int, step: Optional[int] = None) -> np.ndarray:
    return self.strategy.counts(self.tracker, self.step if step is None else step,
                                batch_size, self.min_per_task)

  def state_dict(self) -> dict:
    """Plain numpy arrays and an int (copies), for an orbax checkpoint."""
    t = self.tracker
    return {"step": t.num_updates, "loss_sums": t.loss_sums.copy(),
            "token_counts": t.token_counts.copy(), "seen": t.seen.copy()}

  def from_state_dict(self, state: dict) -> "Sampler":
    """Restores `state_dict()` into this (identically configured) sampler; returns it."""
    t, shape = self.tracker, self.tracker.loss_sums.shape
    for key in ("loss_sums", "token_counts"):
      if np.shape(state[key]) != shape:
        raise ValueError(f"state[{key!r}] has shape {np.shape(state[key])}, but this "
                         f"sampler has (window, num_tasks) = {shape}.")
    t.loss_sums = np.array(state["loss_sums"], dtype=np.float64)
    t.token_counts = np.array(state["token_counts"], dtype=np.float64)
    t.seen = np.array(state["seen"], dtype=bool).reshape(t.num_tasks)
    t.num_updates = int(np.asarray(state["step"]))
    return self
