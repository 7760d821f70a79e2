"""The dynamic mixture in training: batch composition, hosts, logging, exact resumption."""
import dataclasses
import functools
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import seqio

from test_tools import _tool
import toy_model
from vlpretrain import dynamic_mixture
from vlpretrain import mixing
from vlpretrain import models
from vlpretrain import optimizers
from vlpretrain import partitioning
from vlpretrain import train as train_lib
from vlpretrain import utils
from vlpretrain.data import features

TASKS = ("dyn_toy_a", "dyn_toy_b", "dyn_toy_c")


def _toy_dynamic_mixture(name="dyn_toy"):
  if name not in seqio.MixtureRegistry.names():
    dynamic_mixture.register_dynamic_mixture(
        name, [toy_model.register_toy_task(t) for t in TASKS])
  return name


def _task_datasets(batch_size=16):
  cfg = utils.DatasetConfig(_toy_dynamic_mixture(), toy_model.TASK_FEATURE_LENGTHS,
                            "train", batch_size, True, 0)
  return utils.get_task_datasets(cfg, 0, 1, features.VLEncDecFeatureConverter)


def test_registered_as_seqio_mixture():
  mixture = seqio.get_mixture_or_task(_toy_dynamic_mixture())
  assert isinstance(mixture, dynamic_mixture.DynamicMixture)
  assert mixture.task_names == list(TASKS)
  with pytest.raises(ValueError, match="'dyn_toy_a' does not know its size"):
    mixture.num_examples("train")  # FunctionDataSource has no size.


def test_input_pipelines_run_without_tf_data_autotuning(clean_gin):
  """utils.input_options() reaches the training pipelines (per task and single) and the
  inference ones: autotuning off by default (its threads held up each run's exit),
  on with the binding utils.input_options.autotune = True."""
  import gin  # pylint: disable=g-import-not-at-top
  from vlpretrain import inference  # pylint: disable=g-import-not-at-top
  cfg = utils.DatasetConfig(_toy_dynamic_mixture(), toy_model.TASK_FEATURE_LENGTHS,
                            "train", 4, False, 0)
  single = dataclasses.replace(cfg, mixture_or_task_name=TASKS[0])

  def autotune_flags():
    datasets = utils.get_task_datasets(cfg, 0, 1, features.VLEncDecFeatureConverter)
    datasets.append(utils.get_dataset(single, 0, 1, features.VLEncDecFeatureConverter))
    datasets.append(inference._task_dataset(seqio.get_mixture_or_task(TASKS[0]), single))  # pylint: disable=protected-access
    return [ds.options().autotune.enabled for ds in datasets]

  assert autotune_flags() == [False] * 5
  gin.bind_parameter("utils.input_options.autotune", True)
  assert autotune_flags() == [True] * 5


def test_batches_follow_the_sampler_counts():
  """Each batch holds exactly `counts[t]` examples of task t, in task order."""
  sampler = mixing.Sampler(3, "fixed", min_per_task=2, rates=[0.7, 0.2, 0.1])
  batches = dynamic_mixture.DynamicBatches(_task_datasets(), sampler, 16)
  batch = batches.next()
  np.testing.assert_array_equal(sampler.counts(16), [9, 4, 3])
  np.testing.assert_array_equal(batch["task_id"], [0] * 9 + [1] * 4 + [2] * 3)
  assert batch["image"].shape == (16, toy_model.IMAGE_SIZE, toy_model.IMAGE_SIZE, 3)
  np.testing.assert_array_equal(batches.last_counts, [9, 4, 3])
  batches.close()


def test_round_robin_gives_batch_n_to_task_n_mod_t_through_the_lag():
  """Through DynamicBatches' protocol (next, record a step late, prefetch), batch n is
  all task n mod 3, also after a restore of its state."""
  def run(batches, steps, first=0):
    seen = []
    for n in range(first, first + steps):
      batch = batches.next()
      seen.append(np.bincount(batch["task_id"], minlength=3).tolist())
      batches.record(np.ones(3) * (n + 1), np.ones(3))
      if n < first + steps - 1:
        batches.prefetch()
    return seen

  make = lambda: dynamic_mixture.DynamicBatches(
      _task_datasets(6), mixing.Sampler(3, "round_robin", min_per_task=1), 6)
  batches = make()
  want = [[6, 0, 0], [0, 6, 0], [0, 0, 6]] * 2
  assert run(batches, 6) == want
  # Resumed after 4 batches: the 5th is task 4 mod 3 = 1.
  state = make()
  run(state, 4)
  restored = make()
  restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
  assert restored.batches_composed == 4
  assert run(restored, 2, first=4) == want[4:]
  for b in (batches, state, restored):
    b.close()


def test_leftover_rows_survive_a_checkpoint(tmp_path):
  """Chunks of 5 for counts [6, 4, 2]: rows wait in buffers; a restored copy (iterators
  + leftover rows) composes exactly the batches the original goes on to compose."""
  def make():
    sampler = mixing.Sampler(3, "fixed", min_per_task=1, rates=[0.55, 0.33, 0.12])
    return dynamic_mixture.DynamicBatches(_task_datasets(), sampler, 12, chunk_size=5)
  original = make()
  first = original.next()
  np.testing.assert_array_equal(np.bincount(first["task_id"]), [6, 4, 2])
  original.write_iterators(str(tmp_path / "host0"))
  restored = make()
  restored.read_iterators(str(tmp_path / "host0"))
  for _ in range(4):
    a, b = original.next(), restored.next()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  fresh = make()
  fresh.next()
  assert not np.array_equal(fresh.next()["encoder_input_tokens"], first[
      "encoder_input_tokens"])  # Batches move on through the data.
  for batches in (original, restored, fresh):
    batches.close()


def test_hosts_split_the_global_layout():
  """Hosts' slices add up to the global counts, whatever the weights."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    num_hosts = int(rng.choice([1, 2, 4, 8]))
    batch = num_hosts * int(rng.integers(8, 40))
    num_tasks = int(rng.integers(1, 6))
    counts = mixing.batch_counts(rng.exponential(size=num_tasks) + 1e-3, batch,
                                 min_per_task=batch // (4 * num_tasks))
    per_host = [dynamic_mixture.host_counts(counts, h, num_hosts)
                for h in range(num_hosts)]
    assert all(c.sum() == batch // num_hosts for c in per_host)
    np.testing.assert_array_equal(np.sum(per_host, axis=0), counts)


def test_every_host_computes_the_same_counts():
  """Hosts fed the same (globally reduced) metrics compose with identical counts."""
  hosts = [dynamic_mixture.DynamicBatches(_task_datasets(), mixing.Sampler(
      3, "difficulty", window=2, min_per_task=1), 12, h, 2) for h in range(2)]
  rng = np.random.default_rng(1)
  for _ in range(6):
    metrics = (rng.uniform(1, 9, 3), rng.uniform(5, 9, 3))
    for host in hosts:
      host.next()
      host.record(*metrics)
      host.prefetch()
    np.testing.assert_array_equal(hosts[0].last_counts, hosts[1].last_counts)
    np.testing.assert_array_equal(hosts[0].last_weights, hosts[1].last_weights)
  for host in hosts:
    host.next()
    host.close()
  assert hosts[0].sampler.step == 5  # One step of lag: the 6th metrics are unapplied.


def test_loss_reweight_scales_decoder_loss_weights():
  sampler = mixing.Sampler(3, "loss_reweight", window=1, min_per_task=4)
  batches = dynamic_mixture.DynamicBatches(_task_datasets(), sampler, 12)
  batches.next()
  batches.record([3.0, 1.0, 2.0], [1.0, 1.0, 1.0])
  batches.record([3.0, 1.0, 2.0], [1.0, 1.0, 1.0])  # Applies the first.
  batches.prefetch()
  batch = batches.next()
  plain = next(iter(_task_datasets()[0].batch(1)))["decoder_loss_weights"].numpy()[0]
  for task_id, factor in enumerate([1.5, 0.5, 1.0]):  # 3 * L_t / sum L
    rows = batch["decoder_loss_weights"][batch["task_id"] == task_id]
    np.testing.assert_allclose(rows, np.tile(plain * factor, (4, 1)))
  batches.close()


def test_make_sampler_errors_name_the_binding():
  with pytest.raises(ValueError, match="make_sampler.rates"):
    dynamic_mixture.make_sampler(3, strategy="fixed")
  with pytest.raises(ValueError, match="only read by strategy='fixed'"):
    dynamic_mixture.make_sampler(3, strategy="uniform", rates=[1, 1, 1])
  sampler = dynamic_mixture.make_sampler(3, lambda: [10, 30, 60], strategy="size",
                                         min_per_task=0)
  np.testing.assert_array_equal(sampler.counts(10), [1, 3, 6])


# -------------------------------------------------------------- in the trainer


def _train(model_dir, steps, *, period=4, save_dataset=True, model=None, log_period=1):
  lr = utils.create_learning_rate_scheduler(base_learning_rate=1e-2, warmup_steps=2,
                                            decay_steps=30)
  return train_lib.train(
      model=model or toy_model.ToyModel(),
      train_dataset_cfg=utils.DatasetConfig(
          _toy_dynamic_mixture(), toy_model.TASK_FEATURE_LENGTHS, "train", 16, True, 0),
      partitioner=partitioning.PjitPartitioner(),
      model_dir=str(model_dir), total_steps=steps,
      checkpoint_cfg=utils.CheckpointConfig(
          save=utils.SaveCheckpointConfig(period=period, keep=2,
                                          save_dataset=save_dataset)),
      log_period=log_period, optimizer=optimizers.adamw(lr), learning_rate_fn=lr,
      make_sampler=functools.partial(dynamic_mixture.make_sampler, window=3,
                                     min_per_task=1))


@pytest.fixture
def record_batches(monkeypatch):
  """Every batch the trainer takes, as (task ids, inputs) pairs, in order."""
  recorded = []
  original = dynamic_mixture.DynamicBatches.next

  def next_and_record(self):
    batch = original(self)
    recorded.append((batch["task_id"].copy(), batch["encoder_input_tokens"].copy()))
    return batch

  monkeypatch.setattr(dynamic_mixture.DynamicBatches, "next", next_and_record)
  return recorded


@pytest.mark.parametrize("save_dataset", [True, False],
                         ids=["iterator_state", "skip_consumed"])
def test_resumed_run_sees_the_uninterrupted_batches(clean_gin, tmp_path, record_batches,
                                                    save_dataset):
  """24 steps in one go vs 4 steps, then a resumed run to 24: the 20 batches after the
  checkpoint are identical (task ids and examples), and so are the final params. Without
  iterator state, each task skips the examples the checkpoint says were consumed."""
  _, full = _train(tmp_path / "full", 24)
  full_batches = list(record_batches)
  counts = [np.bincount(t, minlength=3) for t, _ in full_batches]
  assert len({tuple(c) for c in counts}) > 1, "the weights never moved the counts"
  record_batches.clear()
  _train(tmp_path / "split", 4, save_dataset=save_dataset)
  assert (tmp_path / "split/checkpoints/4/dataset").exists() == save_dataset
  record_batches.clear()
  _, resumed = _train(tmp_path / "split", 24, save_dataset=save_dataset)
  assert len(record_batches) == 20
  for (t_full, x_full), (t_res, x_res) in zip(full_batches[4:], record_batches):
    np.testing.assert_array_equal(t_full, t_res)
    np.testing.assert_array_equal(x_full, x_res)
  for a, b in zip(np.asarray(full["params"]["logits"]["kernel"]).ravel(),
                  np.asarray(resumed["params"]["logits"]["kernel"]).ravel()):
    assert a == b


def test_sampling_weights_logged(clean_gin, tmp_path):
  _train(tmp_path, 5)
  lines = [json.loads(l) for l in (tmp_path / "sampling.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2, 3, 4, 5]
  for line in lines:
    assert sorted(line["weights"]) == sorted(TASKS)
    assert sum(line["counts"].values()) == 16
    assert sum(line["weights"].values()) == pytest.approx(1.0)
  assert lines[0]["weights"] == {t: pytest.approx(1 / 3) for t in TASKS}  # Warm start.

  plot_sampling = _tool("plot_sampling")
  steps, shares = plot_sampling.series(plot_sampling.read_sampling_log(str(tmp_path)),
                                       "share")
  assert steps == [1, 2, 3, 4, 5]
  np.testing.assert_allclose(np.sum(list(shares.values()), axis=0), 100.0)
  np.testing.assert_allclose(shares["dyn_toy_b"],
                             [100 * l["counts"]["dyn_toy_b"] / 16 for l in lines])
  out = plot_sampling.plot(str(tmp_path), str(tmp_path / "weights.png"))
  assert PIL.Image.open(out).size == (1000, 550)
  assert plot_sampling.main([str(tmp_path / "missing")]) == 2


def test_resumed_run_rewinds_the_sampling_log(clean_gin, tmp_path):
  """Steps 3-4 were logged but their checkpoint never landed (a crash): the resumed
  run starts from step 2 and each step appears once, with the resumed run's values."""
  _train(tmp_path / "full", 6)
  _train(tmp_path, 4, period=2)
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  with open(tmp_path / "sampling.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 5, "wei')  # And a line the crash cut off.
  _train(tmp_path, 6, period=2)
  read = lambda d: [json.loads(l) for l in (d / "sampling.jsonl").read_text().splitlines()]
  assert [l["step"] for l in read(tmp_path)] == [1, 2, 3, 4, 5, 6]
  assert read(tmp_path) == read(tmp_path / "full")


class _KnownLossModel(toy_model.ToyModel):
  """Every target token of an example of task t costs t + 1 + the example's first input
  id / 100: per-task sums the test can compute from the batch itself."""

  def loss_fn_with_example_losses(self, params, batch, dropout_rng):
    del dropout_rng
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    per_token = (batch["task_id"] + 1 + batch["encoder_input_tokens"][:, 0] / 100.0)
    example = models.ExampleLosses(loss_sum=jnp.sum(weights, 1) * per_token,
                                   weight=jnp.sum(weights, 1))
    loss = jnp.sum(example.loss_sum) / jnp.sum(weights) + 0.0 * params["gate"]
    return loss, {"loss": models.average(loss)}, example


def test_train_step_per_task_loss_sums_are_the_batch_sums(tmp_path, record_batches):
  """The sampler's inputs (checkpointed with the sampler state) are, per step and task,
  the sums of the task's example losses and target tokens in that step's batch."""
  lr = utils.create_learning_rate_scheduler("constant", 1e-3)
  train_lib.train(
      model=_KnownLossModel(),
      train_dataset_cfg=utils.DatasetConfig(
          _toy_dynamic_mixture(), toy_model.TASK_FEATURE_LENGTHS, "train", 16, True, 0),
      partitioner=partitioning.PjitPartitioner(), model_dir=str(tmp_path),
      total_steps=3, log_period=1, optimizer=optimizers.adamw(lr), learning_rate_fn=lr,
      make_sampler=functools.partial(dynamic_mixture.make_sampler, strategy="fixed",
                                     rates=[0.7, 0.2, 0.1], min_per_task=2, window=5))
  want_sums, want_tokens = [], []
  for task_ids, inputs in record_batches:
    np.testing.assert_array_equal(np.bincount(task_ids, minlength=3), [9, 4, 3])
    per_token = task_ids + 1 + inputs[:, 0] / 100.0
    tokens = toy_model.TARGET_LEN  # 4 targets + EOS, no padding.
    want_sums.append([tokens * per_token[task_ids == t].sum() for t in range(3)])
    want_tokens.append([tokens * (task_ids == t).sum() for t in range(3)])
  state = json.loads((tmp_path / "checkpoints" / "3" / "sampler" / "metadata").read_text())
  # Steps 1 and 2 were applied to the sampler; step 3's wait (the one-step lag).
  np.testing.assert_allclose(state["loss_sums"][:2], want_sums[:2], rtol=1e-6)
  np.testing.assert_allclose(state["token_counts"][:2], want_tokens[:2])
  np.testing.assert_allclose(state["unapplied"][0], want_sums[2], rtol=1e-6)
  np.testing.assert_allclose(state["unapplied"][1], want_tokens[2])
  logged = [json.loads(l) for l in (tmp_path / "sampling.jsonl").read_text().splitlines()]
  for line, sums, tokens in zip(logged, want_sums, want_tokens):
    assert [line["task_loss"][t] for t in TASKS] == pytest.approx(
        [s / n for s, n in zip(sums, tokens)], rel=1e-6)


class _NanModel(toy_model.ToyModel):
  """Every loss and per-example loss is NaN."""

  def loss_fn_with_example_losses(self, params, batch, dropout_rng):
    loss, metrics, example = super().loss_fn_with_example_losses(params, batch,
                                                                 dropout_rng)
    return loss * jnp.nan, metrics, example._replace(loss_sum=example.loss_sum * jnp.nan)


def test_non_finite_loss_stops_before_the_sampler_sees_it(clean_gin, tmp_path):
  """On a dynamic mixture the trainer names the step; the sampler never gets the NaN
  (it would refuse it with a ValueError that names no step)."""
  with pytest.raises(FloatingPointError, match="Non-finite loss nan at step 1"):
    _train(tmp_path, 4, model=_NanModel(), log_period=10)  # Not caught by a log line.
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))
