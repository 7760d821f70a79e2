"""Dynamic difficulty sampling: exact batch counts, the loss window, strategies, state."""
import io

import numpy as np
import pytest

from vlpretrain import mixing


def _feed(sampler, per_token_losses, counts, tokens_per_example=7):
  """Feeds one step's metrics: `counts` examples per task at fixed per-token losses."""
  tokens = np.asarray(counts, np.float64) * tokens_per_example
  sampler.update(tokens * np.asarray(per_token_losses), tokens)


# ------------------------------------------------------------------ batch_counts
def test_batch_counts_property_random_cases():
  """500 seeded random cases (hypothesis is not installed in this env)."""
  rng = np.random.default_rng(0)
  for case in range(500):
    num_tasks = int(rng.integers(1, 25))
    floor = int(rng.integers(0, 7))
    kind = case % 5
    if kind == 0:
      weights = rng.exponential(size=num_tasks)
    elif kind == 1:  # Some exact zeros.
      weights = rng.exponential(size=num_tasks) * (rng.random(num_tasks) < 0.5)
    elif kind == 2:
      weights = np.zeros(num_tasks)
    elif kind == 3:  # Extreme scales.
      weights = rng.random(num_tasks) * 10.0 ** rng.choice([-300, -5, 5, 300])
    else:  # Ties.
      weights = rng.integers(0, 3, size=num_tasks).astype(np.float64)
    batch_size = max(1, num_tasks * floor + int(rng.integers(0, 300)))
    counts = mixing.batch_counts(weights, batch_size, floor)
    share = weights / weights.sum() if weights.sum() > 0 else np.full(num_tasks, 1 / num_tasks)
    quota = floor + share * (batch_size - num_tasks * floor)
    assert counts.dtype == np.int64 and counts.shape == (num_tasks,)
    assert counts.sum() == batch_size, (case, weights, batch_size, floor)
    assert counts.min() >= floor, (case, counts)
    assert np.abs(counts - quota).max() < 1, (case, counts, quota)


def test_batch_counts_hand_checked_largest_remainder():
  # Remainder 20 - 3*4 = 8; quotas 4, 2.4, 1.6 -> floors 4, 2, 1 (7); the one left goes
  # to the largest fraction (.6, task 2) -> 4, 2, 2 -> plus the floor: 8, 6, 6.
  np.testing.assert_array_equal(mixing.batch_counts([0.5, 0.3, 0.2], 20, 4), [8, 6, 6])
  # Quotas 2.6, 2.6, 4.8: floors 2, 2, 4; two left -> .8 (task 2), then the .6 tie goes
  # to the lowest index. Rounding each quota would give 3, 3, 5 = 11 != 10.
  np.testing.assert_array_equal(mixing.batch_counts([0.26, 0.26, 0.48], 10, 0), [3, 2, 5])
  # Ties everywhere: 13 over 3 -> 4.33 each -> the extra one to task 0.
  np.testing.assert_array_equal(mixing.batch_counts([1, 1, 1], 13, 0), [5, 4, 4])
  np.testing.assert_array_equal(mixing.batch_counts([0, 0, 0, 0], 14, 1), [4, 4, 3, 3])
  np.testing.assert_array_equal(mixing.batch_counts([0, 5, 0], 12, 4), [4, 4, 4])
  np.testing.assert_array_equal(mixing.batch_counts([0, 5, 0], 13, 4), [4, 5, 4])


@pytest.mark.parametrize("args, name", [
    (([1, 1, 1], 11, 4), "min_per_task"),
    (([1, -1], 8, 0), "weights"),
    (([1, np.nan], 8, 0), "weights"),
    (([1, np.inf], 8, 0), "weights"),
    (([], 8, 0), "weights"),
    (([[1, 1]], 8, 0), "weights"),
    (([1, 1], 0, 0), "batch_size"),
    (([1, 1], 8.0, 0), "batch_size"),
    (([1, 1], 8, -1), "min_per_task"),
])
def test_batch_counts_bad_input_names_the_argument(args, name):
  with pytest.raises(ValueError, match=name):
    mixing.batch_counts(*args)


def test_batch_counts_too_small_batch_message():
  with pytest.raises(ValueError, match=r"batch_size=11 .* 3 tasks x min_per_task=4 = 12"):
    mixing.batch_counts([1, 1, 1], 11, 4)


# ------------------------------------------------------------------ tracker
def test_window_drops_losses_older_than_k_steps():
  tracker = mixing.LossTracker(2, window=3)
  tracker.update([30, 10], [10, 10])  # Means 3, 1.
  np.testing.assert_allclose(tracker.mean_losses(), [3, 1])
  expected = [(30 + 10) / 20, (30 + 20) / 30, 30 / 30]  # The old step falls out at K.
  for want in expected:
    tracker.update([10, 10], [10, 10])  # Means 1, 1.
    np.testing.assert_allclose(tracker.mean_losses(), [want, 1])
  tracker.update([0, 0], [0, 0])
  np.testing.assert_allclose(tracker.mean_losses(), [1, 1])


def test_window_matches_brute_force_over_a_random_stream():
  rng = np.random.default_rng(2)
  tracker = mixing.LossTracker(3, window=7)
  loss_hist, token_hist = [], []
  for _ in range(40):
    tokens = rng.integers(1, 50, 3).astype(np.float64)
    loss_hist.append(tokens * rng.uniform(0.1, 5.0, 3))
    token_hist.append(tokens)
    tracker.update(loss_hist[-1], tokens)
    want = np.sum(loss_hist[-7:], axis=0) / np.sum(token_hist[-7:], axis=0)
    np.testing.assert_allclose(tracker.mean_losses(), want, rtol=1e-12)


def test_tracker_is_token_weighted_and_unseen_has_no_loss():
  tracker = mixing.LossTracker(3, window=2)
  assert np.isnan(tracker.mean_losses()).all()
  tracker.update([40, 0, 0], [10, 5, 0])  # Step means 4 (task 0); task 1 loss 0.
  tracker.update([20, 0, 0], [30, 0, 0])  # Step mean 0.67.
  losses = tracker.mean_losses()
  np.testing.assert_allclose(losses[:2], [60 / 40, 0])  # Not (4 + 0.67) / 2.
  assert np.isnan(losses[2])
  np.testing.assert_array_equal(tracker.seen, [True, True, False])


def test_warm_start_uniform_until_every_task_was_seen():
  sampler = mixing.Sampler(3, "difficulty", window=5)
  np.testing.assert_allclose(sampler.weights(), [1 / 3] * 3)
  sampler.update([10, 5, 0], [10, 10, 0])  # Task 2 not seen yet.
  np.testing.assert_allclose(sampler.weights(), [1 / 3] * 3)
  np.testing.assert_array_equal(sampler.counts(24), [8, 8, 8])
  sampler.update([0, 0, 20], [0, 0, 10])  # L = 1, 0.5, 2.
  np.testing.assert_allclose(sampler.weights(), np.array([1, 0.5, 2]) / 3.5)
  # Remainder 12: quotas 3.43, 1.71, 6.86 -> 3, 1, 6 + the two left to tasks 2, 1.
  np.testing.assert_array_equal(sampler.counts(24), [7, 6, 11])


@pytest.mark.parametrize("num_tasks", [2, 4, 8])
def test_hard_task_share_of_examples_converges_to_its_loss_share(num_tasks):
  batch_size, steps = 4096, 600
  losses = np.full(num_tasks, 0.5)
  losses[1] = 5.0  # 10x the others.
  sampler = mixing.Sampler(num_tasks, "difficulty", window=100, min_per_task=4)
  total = np.zeros(num_tasks, np.int64)
  for step in range(steps):
    counts = sampler.counts(batch_size)
    if step > 0:  # Step 0 is the uniform warm start.
      total += counts
    _feed(sampler, losses, counts)
  share = total[1] / total.sum()
  want = 10 / (10 + num_tasks - 1)
  assert abs(share - want) < 0.005, (share, want)
  floored = (4 + want * (batch_size - 4 * num_tasks)) / batch_size  # The exact quota.
  assert abs(share - floored) < 1 / batch_size, (share, floored)


# ------------------------------------------------------------------ strategies
LOSSES = np.array([2.0, 1.0, 4.0, 3.0])  # Sum 10: difficulty weights .2, .1, .4, .3.


def _sampler_at_losses(strategy, **kwargs):
  sampler = mixing.Sampler(4, strategy, window=10, min_per_task=4, **kwargs)
  sampler.update(LOSSES * 10, np.full(4, 10.0))
  return sampler


@pytest.mark.parametrize("strategy, kwargs, counts", [
    # Remainder 16: quotas 3.2, 1.6, 6.4, 4.8 -> 3, 1, 6, 4 + two left to tasks 3, 1.
    ("difficulty", {}, [7, 6, 10, 9]),
    ("uniform", {}, [8, 8, 8, 8]),
    ("easiest", {}, [4, 20, 4, 4]),
    ("hardest", {}, [4, 4, 20, 4]),
    ("size", {"sizes": [100, 300, 0, 400]}, [6, 10, 4, 12]),  # 16 * (1/8, 3/8, 0, 1/2).
    ("fixed", {"rates": [1, 1, 2, 4]}, [6, 6, 8, 12]),
    ("loss_reweight", {}, [8, 8, 8, 8]),
])
def test_strategy_counts_on_known_losses(strategy, kwargs, counts):
  sampler = _sampler_at_losses(strategy, **kwargs)
  np.testing.assert_array_equal(sampler.counts(32), counts)


def test_difficulty_weights_are_the_loss_shares():
  np.testing.assert_allclose(_sampler_at_losses("difficulty").weights(), [.2, .1, .4, .3])
  np.testing.assert_allclose(_sampler_at_losses("uniform").loss_weights(), [1, 1, 1, 1])


def test_loss_reweight_weights_average_one():
  sampler = mixing.Sampler(4, "loss_reweight", window=10)
  np.testing.assert_allclose(sampler.loss_weights(), [1, 1, 1, 1])  # Warm start.
  sampler.update(LOSSES * 10, np.full(4, 10.0))
  loss_weights = sampler.loss_weights()
  np.testing.assert_allclose(loss_weights, [0.8, 0.4, 1.6, 1.2])
  assert loss_weights.mean() == pytest.approx(1.0)
  np.testing.assert_allclose(sampler.weights(), [0.25] * 4)  # The batch stays uniform.


def test_easiest_hardest_ties_and_warm_start():
  sampler = mixing.Sampler(3, "hardest", window=10)
  np.testing.assert_array_equal(sampler.counts(24), [8, 8, 8])  # Nothing seen yet.
  sampler.update([30, 30, 10], [10, 10, 10])  # Tasks 0 and 1 tie for the hardest.
  np.testing.assert_array_equal(sampler.counts(24), [16, 4, 4])
  sampler = mixing.Sampler(3, "easiest", window=10)
  sampler.update([30, 10, 10], [10, 10, 10])
  np.testing.assert_array_equal(sampler.counts(24), [4, 16, 4])


def test_round_robin_cycles_whole_batches_without_floor():
  sampler = mixing.Sampler(3, "round_robin", window=10, min_per_task=4)
  for step in range(7):
    want = np.zeros(3, np.int64)
    want[step % 3] = 10  # 10 < 3 * 4: the floor does not apply.
    np.testing.assert_array_equal(sampler.counts(10), want)
    sampler.update(want * 2.0, want.astype(float))


# ------------------------------------------------------------------ determinism / state
def _metric_stream(num_tasks, steps, seed=1):
  rng = np.random.default_rng(seed)
  base = rng.uniform(0.5, 4.0, num_tasks)
  for step in range(steps):
    yield base * (1 + 0.3 * np.sin(step / 7 + np.arange(num_tasks))) + rng.normal(0, .1, num_tasks)


def test_same_metric_stream_gives_same_counts_and_restore_is_exact():
  num_tasks, batch_size = 6, 256
  a = mixing.Sampler(num_tasks, window=20)
  b = mixing.Sampler(num_tasks, window=20)
  restored, seen_counts = None, []
  for step, losses in enumerate(_metric_stream(num_tasks, 120)):
    losses = np.abs(losses)
    counts = a.counts(batch_size)
    np.testing.assert_array_equal(counts, b.counts(batch_size))
    if restored is not None:
      np.testing.assert_array_equal(counts, restored.counts(batch_size))
    seen_counts.append(counts)
    for s in (a, b, restored):
      if s is not None:
        _feed(s, losses, counts)
    if step == 50:  # Checkpoint through a plain-array serialisation, into a fresh sampler.
      buf = io.BytesIO()
      np.savez(buf, **a.state_dict())
      buf.seek(0)
      state = dict(np.load(buf))
      restored = mixing.Sampler(num_tasks, window=20).from_state_dict(state)
      assert restored.step == a.step == 51
  assert len({tuple(c) for c in seen_counts}) > 10  # The counts actually moved.


def test_state_dict_is_plain_arrays_and_a_copy():
  sampler = _sampler_at_losses("difficulty")
  state = sampler.state_dict()
  assert isinstance(state["step"], int) and state["step"] == 1
  assert all(isinstance(state[k], np.ndarray) for k in ("loss_sums", "token_counts", "seen"))
  sampler.update(np.ones(4), np.ones(4))
  assert state["loss_sums"][1].sum() == 0  # Not aliased to the live buffer.
  with pytest.raises(ValueError, match="loss_sums"):
    mixing.Sampler(5, window=10).from_state_dict(state)


@pytest.mark.parametrize("build, name", [
    (lambda: mixing.Sampler(3, "nope"), "strategy"),
    (lambda: mixing.Sampler(3, "size", sizes=[1, 2]), "sizes"),
    (lambda: mixing.Sampler(3, "fixed", rates=[1, -2, 1]), "rates"),
    (lambda: mixing.Sampler(3, window=0), "window"),
    (lambda: mixing.Sampler(0), "num_tasks"),
    (lambda: mixing.Sampler(3, min_per_task=-1), "min_per_task"),
    (lambda: mixing.Sampler(3).update([1, 1], [1, 1, 1]), "task_loss_sums"),
    (lambda: mixing.Sampler(3).update([1, 1, 1], [1, -1, 1]), "task_token_counts"),
    (lambda: mixing.Sampler(3).update([1, np.nan, 1], [1, 1, 1]), "task_loss_sums"),
    (lambda: mixing.Sampler(3, min_per_task=4).counts(11), "min_per_task"),
])
def test_bad_input_errors_name_the_argument(build, name):
  with pytest.raises(ValueError, match=name):
    build()
