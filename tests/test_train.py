"""Trainer tests: exact resumption, LR schedule, optimizer mask, gin flag rewriting."""
import logging
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import seqio
import tensorflow as tf

import toy_model
from vlpretrain import checkpoints
from vlpretrain import errors
from vlpretrain import gin_utils
from vlpretrain import optimizers
from vlpretrain import partitioning
from vlpretrain import train as train_lib
from vlpretrain import utils

# ------------------------------------------------------------------ gin flags


def test_rewrite_gin_args():
  args = ["prog", "--gin_file=gin/jar_tiny.gin", "--gin.TRAIN_STEPS=10",
          "--gin.MIXTURE_OR_TASK_NAME='shapes_cap'", "--gin.MODEL_DIR=/tmp/run 1",
          "--gin.utils.SaveCheckpointConfig.period=5", "--gin.OPT=@optimizers.adamw()",
          "--gin.LENGTHS={'inputs': 8, 'targets': %T}", "--gin.X=None", "--gin.Y=%Z"]
  assert gin_utils.rewrite_gin_args(args) == [
      "prog", "--gin_file=gin/jar_tiny.gin", "--gin_bindings=TRAIN_STEPS = 10",
      "--gin_bindings=MIXTURE_OR_TASK_NAME = 'shapes_cap'",
      "--gin_bindings=MODEL_DIR = '/tmp/run 1'",  # A bare path becomes a string.
      "--gin_bindings=utils.SaveCheckpointConfig.period = 5",
      "--gin_bindings=OPT = @optimizers.adamw()",
      "--gin_bindings=LENGTHS = {'inputs': 8, 'targets': %T}",
      "--gin_bindings=X = None", "--gin_bindings=Y = %Z"]
  with pytest.raises(ValueError, match="--gin.NAME=VALUE"):
    gin_utils.rewrite_gin_args(["--gin.TRAIN_STEPS"])


def test_pretrain_gin_parses_and_requires_task(clean_gin, tmp_path):
  """runs/pretrain.gin binds seed-001 defaults; an unset task fails with a clear hint."""
  import gin  # pylint: disable=g-import-not-at-top
  (tmp_path / "toy.gin").write_text("include 'runs/pretrain.gin'\nMODEL = None\n")
  gin_utils.parse_gin_flags([str(tmp_path)], ["toy.gin"],
                            ["TRAIN_STEPS = 7", f"MODEL_DIR = '{tmp_path}/run'"])
  assert utils.SaveCheckpointConfig().period == 1000
  assert gin.query_parameter("optimizers.adamw.weight_decay") == 0.1
  lr = utils.create_learning_rate_scheduler()
  assert float(lr(10_000)) == pytest.approx(1e-4)
  with pytest.raises(ValueError, match=r"--gin.MIXTURE_OR_TASK_NAME="):
    train_lib.train()  # pylint: disable=missing-kwoa


# --------------------------------------------------------------- LR schedules


def test_learning_rate_schedule_values():
  lr = utils.create_learning_rate_scheduler(
      base_learning_rate=1e-4, warmup_steps=100, decay_steps=1100, min_learning_rate=1e-6)
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 50, 100, 600, 1100, 5000)],
      [0.0, 5e-5, 1e-4, (1e-4 + 1e-6) / 2, 1e-6, 1e-6], rtol=1e-5, atol=1e-12)
  linear = utils.create_learning_rate_scheduler(
      factors="constant*linear_warmup*linear_decay", base_learning_rate=1.0,
      warmup_steps=10, decay_steps=30)
  np.testing.assert_allclose([float(linear(s)) for s in (5, 10, 20, 30)],
                             [0.5, 1.0, 0.5, 0.0], atol=1e-6)
  assert float(utils.create_learning_rate_scheduler("constant", 3e-4)(123)) == \
      pytest.approx(3e-4)
  with pytest.raises(ValueError, match="factors"):
    utils.create_learning_rate_scheduler("constant * rsqrt_decay")


def test_t5x_schedule_parameters_give_t5x_values_in_the_first_cycle():
  """steps_per_cycle and step_offset mean what they mean in t5x: t5x's formula,
  min(1, s/warmup) * 0.5 (1 + cos(pi * max(0, s - warmup) / steps_per_cycle)) at
  s = max(0, step - step_offset), for steps in the first cycle."""
  lr = utils.create_learning_rate_scheduler(
      base_learning_rate=2.0, warmup_steps=10, steps_per_cycle=40, step_offset=5)
  def t5x(step):
    s = max(0, step - 5)
    return 2.0 * min(1.0, s / 10) * 0.5 * (1 + np.cos(np.pi * max(0, s - 10) / 40))
  steps = (0, 5, 10, 15, 25, 35, 45, 55)
  np.testing.assert_allclose([float(lr(s)) for s in steps], [t5x(s) for s in steps],
                             atol=1e-6)


def test_decay_mask_selects_kernels_by_name():
  """Weight decay hits kernels only: not latents, embeddings, rel-pos tables, norms."""
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  params = {
      "image_encoder": {"pos_embedding": shape(64, 8),
                        "embedding": {"kernel": shape(3, 3, 3, 8), "bias": shape(8)}},
      "fusion": {"image_resampler": {"latents": shape(16, 8),
                                     "w2": {"kernel": shape(8, 8)}},
                 "alpha_0": shape(), "query_norm_0": {"scale": shape(8)}},
      "token_embedder": {"embedding": shape(128, 8)},
      "text_encoder": {"relpos_bias": {"rel_embedding": shape(2, 32)},
                       "layers_0": {"mlp": {"wi_0": {"kernel": shape(8, 16)}}}},
  }
  mask = optimizers.decay_mask(params)
  decayed = sorted(checkpoints.param_path(p) for p, m in
                   jax.tree_util.tree_leaves_with_path(mask) if m)
  assert decayed == ["fusion/image_resampler/w2/kernel", "image_encoder/embedding/kernel",
                     "text_encoder/layers_0/mlp/wi_0/kernel"]
  # The real tiny model: every decayed param is a kernel, and JAR's latents are not.
  import tiny_vqa  # pylint: disable=g-import-not-at-top
  model = tiny_vqa.tiny_model()
  abstract = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), {"image": (1, 64, 64, 3), "encoder_input_tokens": (1, 8),
                              "decoder_input_tokens": (1, 4)}))["params"]
  abstract = nn.meta.unbox(abstract)
  flat = {checkpoints.param_path(p): m for p, m in
          jax.tree_util.tree_leaves_with_path(optimizers.decay_mask(abstract))}
  assert flat and all(m == name.endswith("/kernel") for name, m in flat.items())
  assert any(name.endswith("/kernel") for name in flat)


def test_adamw_decays_kernels_only_and_clips_the_global_norm():
  params = {"dense": {"kernel": jnp.ones((2, 2))}, "scale": jnp.ones((2,)),
            "latents": jnp.ones((2, 2))}
  tx = optimizers.adamw(1.0, weight_decay=0.5, clip_norm=1.0)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.5 * np.ones((2, 2)))
  np.testing.assert_allclose(updates["scale"], 0.0)
  np.testing.assert_allclose(updates["latents"], 0.0)

  # Clipping: Adam's first update is scale-free, its second is not. A large first
  # gradient (norm 200, clipped to 1) and a small second one give the update of Adam on
  # the clipped gradients, computed here by hand (lr 0.1, no decay).
  b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
  p = {"kernel": jnp.zeros((2, 2))}
  g1, g2 = 100.0 * np.ones((2, 2)), 0.3 * np.array([[1.0, -1.0], [2.0, 0.5]])
  c1 = g1 * min(1.0, 1.0 / np.linalg.norm(g1))
  m = (1 - b1) * c1
  v = (1 - b2) * c1 ** 2
  m = b1 * m + (1 - b1) * g2
  v = b2 * v + (1 - b2) * g2 ** 2
  want = -lr * (m / (1 - b1 ** 2)) / (np.sqrt(v / (1 - b2 ** 2)) + eps)

  def second_update(clip_norm):
    tx = optimizers.adamw(lr, weight_decay=0.0, clip_norm=clip_norm)
    state = tx.init(p)
    _, state = tx.update({"kernel": jnp.asarray(g1)}, state, p)
    return tx.update({"kernel": jnp.asarray(g2)}, state, p)[0]["kernel"]

  np.testing.assert_allclose(second_update(1.0), want, rtol=1e-4)
  assert not np.allclose(second_update(None), want, rtol=1e-2)  # Clipping mattered.


# ------------------------------------------------------------------ training


def _train(model_dir, steps, task, *, save_dataset=True, period=2, model=None,
           restore_path=None, assignment_map=None, random_seed=None, save_kw=None,
           restore_kw=None, **train_kw):
  lr = utils.create_learning_rate_scheduler(base_learning_rate=1e-2, warmup_steps=2,
                                            decay_steps=8)
  return train_lib.train(
      model=model or toy_model.ToyModel(),
      train_dataset_cfg=utils.DatasetConfig(task, toy_model.TASK_FEATURE_LENGTHS,
                                            "train", 8, True, 0),
      partitioner=partitioning.PjitPartitioner(),
      model_dir=str(model_dir), total_steps=steps,
      checkpoint_cfg=utils.CheckpointConfig(
          save=utils.SaveCheckpointConfig(period=period, keep=2,
                                          save_dataset=save_dataset, **(save_kw or {})),
          restore=utils.RestoreCheckpointConfig(path=restore_path,
                                                assignment_map=assignment_map,
                                                **(restore_kw or {}))),
      log_period=1, optimizer=optimizers.adamw(lr), learning_rate_fn=lr,
      **({} if random_seed is None else {"random_seed": random_seed}), **train_kw)


def _assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _restore_state(model_dir, step):
  with ocp.CheckpointManager(model_dir / "checkpoints") as manager:
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]


def test_flax_mutables_are_carried_updated_checkpointed_and_resumed(clean_gin, toy_task,
                                                                    tmp_path):
  """A model with a 'momentum' collection (t5x's flax_mutables): the state carries it,
  its loss_fn updates it every step (EMA with decay 0.5 of the params the loss saw),
  checkpoints hold it and a resumed run continues it exactly."""
  step, state = _train(tmp_path / "full", 3, toy_task, period=1,
                       model=toy_model.EmaToyModel(decay=0.5))
  assert step == 3 and set(state) == {"step", "params", "opt_state", "flax_mutables"}
  ckpt = {s: _restore_state(tmp_path / "full", s) for s in (2, 3)}  # keep=2
  expected = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * p,
                          ckpt[2]["flax_mutables"]["momentum"], ckpt[2]["params"])
  for got, want in zip(jax.tree.leaves(ckpt[3]["flax_mutables"]["momentum"]),
                       jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
  assert not np.allclose(jax.tree.leaves(ckpt[3]["flax_mutables"])[0],
                         jax.tree.leaves(ckpt[3]["params"])[0])
  _train(tmp_path / "split", 2, toy_task, period=1, model=toy_model.EmaToyModel(0.5))
  _, resumed = _train(tmp_path / "split", 3, toy_task, period=1,
                      model=toy_model.EmaToyModel(0.5))
  _assert_same_params(resumed["flax_mutables"], state["flax_mutables"])
  _assert_same_params(resumed["params"], state["params"])


@pytest.mark.parametrize("save_dataset", [True, False],
                         ids=["iterator_state", "skip_fallback"])
def test_resumed_run_equals_uninterrupted(clean_gin, toy_task, tmp_path, caplog,
                                          save_dataset):
  """4 steps in one go == 2 steps, then a new run that resumes to 4 (params and loss).

  The data is shuffled with a 64-example buffer over 64 examples, so resuming with
  fresh data (or a wrong offset) would change the batches and the params.
  """
  step, full = _train(tmp_path / "full", 4, toy_task)
  assert step == 4
  _train(tmp_path / "split", 2, toy_task, save_dataset=save_dataset)
  with caplog.at_level(logging.INFO):
    step, resumed = _train(tmp_path / "split", 4, toy_task, save_dataset=save_dataset)
  assert step == 4 and int(resumed["step"]) == 4
  assert "Resuming from checkpoint at step 2" in caplog.text
  _assert_same_params(full["params"], resumed["params"])
  _assert_same_params(full["opt_state"], resumed["opt_state"])


def _register_generator_task(name="toy_generator_task"):
  """The toy examples through `from_generator`, as sources that read files in Python."""
  if name not in seqio.TaskRegistry.names():
    def examples(split, shuffle_files=False, seed=None):
      ds = toy_model._toy_examples(split, shuffle_files, seed)  # pylint: disable=protected-access
      return tf.data.Dataset.from_generator(ds.as_numpy_iterator,
                                            output_signature=ds.element_spec)
    toy = seqio.get_mixture_or_task(toy_model.register_toy_task())
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(examples, splits=["train"]),
        preprocessors=toy.preprocessors, output_features=toy.output_features)
  return name


def test_python_source_resumes_by_skipping(clean_gin, tmp_path, caplog):
  """tf.data cannot save a from_generator iterator: the trainer says so once, saves
  checkpoints without it, and a resumed run skips to the same batches."""
  task = _register_generator_task()
  _, full = _train(tmp_path / "full", 4, task)
  with caplog.at_level(logging.WARNING):
    _train(tmp_path / "split", 2, task)
  assert "GeneratorDataset" in caplog.text and "cannot checkpoint" in caplog.text
  assert not (tmp_path / "split/checkpoints/2/dataset").exists()
  _, resumed = _train(tmp_path / "split", 4, task)
  _assert_same_params(full["params"], resumed["params"])


class _NanModel(toy_model.ToyModel):

  def loss_fn(self, params, batch, dropout_rng):
    loss, metrics = super().loss_fn(params, batch, dropout_rng)
    return loss * jnp.nan, metrics


def test_non_finite_loss_raises(clean_gin, toy_task, tmp_path):
  with pytest.raises(FloatingPointError, match="Non-finite loss nan at step 1"):
    _train(tmp_path, 3, toy_task, model=_NanModel())


def test_non_finite_steps_are_skipped_and_counted(clean_gin, toy_task, tmp_path, caplog):
  """non_finite_loss='skip': a NaN step leaves params and optimizer state as they were
  (here every step: the state stays the fresh init's) and is counted; the checkpoint
  holds finite values. On finite steps 'skip' changes nothing, bit for bit."""
  _, fresh = _train(tmp_path / "fresh", 0, toy_task)
  with caplog.at_level(logging.WARNING):
    step, state = _train(tmp_path / "nan", 3, toy_task, model=_NanModel(),
                         non_finite_loss="skip")
  assert step == 3 and int(state["step"]) == 3
  _assert_same_params(fresh["params"], state["params"])
  assert caplog.text.count("its update was skipped") == 3
  assert "(3 so far" in caplog.text
  saved = checkpoints.restore_params(
      str(tmp_path / "nan" / "checkpoints" / "3"), fresh["params"],
      jax.tree.map(lambda x: x.sharding, fresh["params"]))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(saved))
  _, plain = _train(tmp_path / "plain", 3, toy_task)
  _, skip = _train(tmp_path / "skip", 3, toy_task, non_finite_loss="skip")
  _assert_same_params(plain["params"], skip["params"])
  with pytest.raises(ValueError, match="non_finite_loss='ignore'"):
    _train(tmp_path / "bad", 1, toy_task, non_finite_loss="ignore")


def test_warm_start_takes_params_only(clean_gin, toy_task, tmp_path):
  """RestoreCheckpointConfig.path: params from another run; step and optimizer fresh."""
  _, source = _train(tmp_path / "source", 2, toy_task)
  step, state = _train(tmp_path / "warm", 0, toy_task,
                       restore_path=str(tmp_path / "source" / "checkpoints"))
  assert step == 0 and int(state["step"]) == 0
  _assert_same_params(source["params"], state["params"])
  mu = state["opt_state"][1][0].mu  # chain(clip, adamw(scale_by_adam, ...))
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(mu))
  # The fresh optimizer state has a fresh init's structure, dtypes and shardings.
  assert (jax.tree.structure(state["opt_state"]) ==
          jax.tree.structure(source["opt_state"]))
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(source)):
    assert (got.dtype, got.shape, got.sharding) == (want.dtype, want.shape,
                                                    want.sharding)


def test_warm_start_assignment_map_leaves_matched_params_fresh(clean_gin, toy_task,
                                                               tmp_path):
  """assignment_map (t5x's): params mapped to None keep a fresh init's values (the same
  seed's), the others come from the checkpoint; a pattern matching nothing is an error."""
  _, source = _train(tmp_path / "source", 2, toy_task, random_seed=1)
  _, fresh = _train(tmp_path / "fresh", 0, toy_task, random_seed=7)
  ckpt = str(tmp_path / "source" / "checkpoints")
  _, state = _train(tmp_path / "warm", 0, toy_task, restore_path=ckpt, random_seed=7,
                    assignment_map=(("image/.*", None), ("(gate)", r"\1")))
  compared = 0
  for (path, got), want_source, want_fresh in zip(
      jax.tree_util.tree_leaves_with_path(state["params"]),
      jax.tree.leaves(source["params"]), jax.tree.leaves(fresh["params"])):
    name = checkpoints.param_path(path)
    want = want_fresh if name.startswith("image/") else want_source
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    compared += name.startswith("image/")
  assert compared == 2  # image/kernel, image/bias
  assert not np.array_equal(np.asarray(source["params"]["image"]["kernel"]),
                            np.asarray(fresh["params"]["image"]["kernel"]))
  with pytest.raises(ValueError, match=r"assignment_map.*\['decoder/.\*'\] match no param"):
    _train(tmp_path / "typo", 0, toy_task, restore_path=ckpt,
           assignment_map=(("decoder/.*", None),))


def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_one(
    clean_gin, toy_task, tmp_path, caplog, monkeypatch):
  """Writing checkpoint 4 fails (a full disk, injected into the input-state item):
  the run stops with one message naming the directory, the cause and the intact
  checkpoint; "Saved" was logged for 2 only; the same command then resumes from 2 and
  ends where an uninterrupted run ends."""
  original = train_lib.DatasetIteratorHandler.save

  def full_disk_at_step_4(self, directory, args):
    if os.path.basename(os.path.dirname(os.fspath(directory))).split(".")[0] == "4":
      raise OSError(28, "No space left on device")
    return original(self, directory, args)

  monkeypatch.setattr(train_lib.DatasetIteratorHandler, "save", full_disk_at_step_4)
  with caplog.at_level(logging.INFO), pytest.raises(train_lib.CheckpointWriteError) as e:
    _train(tmp_path / "run", 6, toy_task, period=2)
  ckpt_dir = tmp_path / "run" / "checkpoints"
  assert f"Writing checkpoint 4 to {ckpt_dir} failed" in str(e.value)
  assert "No space left on device" in str(e.value)
  assert "checkpoint 2 is intact" in str(e.value)
  assert "Saved checkpoint for step 2." in caplog.text
  assert "Saved checkpoint for step 4." not in caplog.text
  assert checkpoints.checkpoint_steps(str(ckpt_dir)) == [2]
  monkeypatch.setattr(train_lib.DatasetIteratorHandler, "save", original)
  step, resumed = _train(tmp_path / "run", 6, toy_task, period=2)
  _, full = _train(tmp_path / "full", 6, toy_task, period=2)
  assert step == 6
  _assert_same_params(resumed["params"], full["params"])


def _make_read_only(directory):
  """Makes `directory` read-only for this process, its files still there: chmod for a
  normal user; for root (whom permissions do not stop) a read-only bind mount of it
  onto itself. Returns an undo, or skips when neither works here."""
  if os.geteuid() != 0:
    os.chmod(directory, 0o555)
    return lambda: os.chmod(directory, 0o755)
  undo = lambda: subprocess.run(["umount", str(directory)], check=True)
  for i, cmd in enumerate((["mount", "--bind", str(directory), str(directory)],
                           ["mount", "-o", "remount,ro,bind", str(directory)])):
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode:
      if i:
        undo()
      pytest.skip(f"cannot make a directory read-only as root here: {done.stderr!r}")
  return undo


@pytest.mark.parametrize("read_only", ["checkpoints", "model_dir"])
def test_a_read_only_directory_is_refused_at_start_naming_it(clean_gin, toy_task,
                                                             tmp_path, read_only):
  """A MODEL_DIR, or its checkpoints directory, that cannot be written stops the run
  before its first step with one message naming the directory and the cause (orbax
  alone waits 300 s for its background directory creation and then raises a timeout
  naming neither)."""
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  target = run / "checkpoints" if read_only == "checkpoints" else run
  undo = _make_read_only(target)
  try:
    with pytest.raises(errors.ConfigError) as e:
      _train(run, 2, toy_task)
  finally:
    undo()
  message = str(e.value)
  assert "not writable" in message and str(target) in message, message
  assert re.search("Read-only file system|Permission denied", message), message
  if read_only == "model_dir":
    assert message.startswith(f"MODEL_DIR='{run}' cannot be written"), message
  step, _ = _train(run, 2, toy_task)  # Writable again: the same command trains.
  assert step == 2


def test_a_checkpoint_directory_made_read_only_mid_run_stops_the_next_save(
    clean_gin, toy_task, tmp_path, monkeypatch):
  """The checkpoints directory turns read-only after checkpoint 2 (a remount, a quota):
  saving 4 stops the run at once with a message naming the directory, the cause and
  the intact checkpoint 2, which the same command resumes from once it is writable."""
  run, undo = tmp_path / "run", []
  original = train_lib._save_checkpoint  # pylint: disable=protected-access

  def read_only_from_step_4(manager, step, *args):
    if step == 4 and not undo:
      undo.append(_make_read_only(run / "checkpoints"))
    return original(manager, step, *args)

  monkeypatch.setattr(train_lib, "_save_checkpoint", read_only_from_step_4)
  try:
    with pytest.raises(train_lib.CheckpointWriteError) as e:
      _train(run, 6, toy_task, period=2)
  finally:
    for u in undo:
      u()
  message = str(e.value)
  assert message.startswith(f"Writing checkpoint 4 to {run / 'checkpoints'} failed: "
                            "the directory is not writable ("), message
  assert "checkpoint 2 is intact" in message, message
  monkeypatch.setattr(train_lib, "_save_checkpoint", original)
  step, _ = _train(run, 6, toy_task, period=2)
  assert step == 6


def test_a_second_run_in_the_same_model_dir_is_refused(clean_gin, toy_task, tmp_path):
  """Another process holds MODEL_DIR's lock: this run stops with a message naming it
  and writes nothing; once the holder is SIGKILLed the same command resumes."""
  run = tmp_path / "run"
  _train(run, 2, toy_task)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys; from vlpretrain import run_lock; "
       "run_lock.acquire(sys.argv[1]); print('locked', flush=True); sys.stdin.read()",
       str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  try:
    assert holder.stdout.readline().strip() == b"locked"
    with pytest.raises(errors.ConfigError,
                       match=rf"in use by another training run .*\"pid\": {holder.pid}"):
      _train(run, 4, toy_task)
    assert checkpoints.checkpoint_steps(str(run / "checkpoints")) == [2]
  finally:
    holder.kill()
    holder.wait()
  step, _ = _train(run, 4, toy_task)
  assert step == 4


def test_a_latest_checkpoint_that_does_not_load_is_reported_and_the_previous_used(
    clean_gin, toy_task, tmp_path, caplog):
  """Checkpoint 4's array files are truncated after it was committed: the resumed run
  says so, moves it aside, resumes from 2 and ends where an uninterrupted run ends."""
  run = tmp_path / "run"
  _train(run, 4, toy_task, period=2)
  damaged = [f for f in (run / "checkpoints" / "4" / "state").rglob("*")
             if f.is_file() and f.stat().st_size > 0 and "d" in f.parent.name]
  assert damaged
  for f in damaged:
    f.write_bytes(b"")
  with caplog.at_level(logging.INFO):
    step, resumed = _train(run, 6, toy_task, period=2)
  assert step == 6
  assert "Checkpoint 4 in" in caplog.text and "does not load" in caplog.text
  assert "Resuming from checkpoint at step 4" in caplog.text  # What it found first.
  assert (run / "checkpoints" / "4.unreadable").is_dir()
  assert checkpoints.checkpoint_steps(str(run / "checkpoints")) == [4, 6]
  _, full = _train(tmp_path / "full", 6, toy_task, period=2)
  _assert_same_params(resumed["params"], full["params"])


def test_checkpoint_steps_saves_at_those_steps_too(clean_gin, toy_task, tmp_path):
  """SaveCheckpointConfig.checkpoint_steps (t5x's): saves besides every `period`."""
  _train(tmp_path / "run", 4, toy_task, period=100, save_kw={"checkpoint_steps": [1, 3]})
  assert checkpoints.checkpoint_steps(str(tmp_path / "run" / "checkpoints")) == [3, 4]  # keep=2


def test_fallback_to_scratch_when_the_warm_start_has_no_checkpoint(clean_gin, toy_task,
                                                                 tmp_path, caplog):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    _train(tmp_path / "strict", 0, toy_task, restore_path=missing)
  with caplog.at_level(logging.WARNING):
    step, _ = _train(tmp_path / "fallback", 1, toy_task, restore_path=missing,
                     restore_kw={"fallback_to_scratch": True})
  assert step == 1 and "fallback_to_scratch=True" in caplog.text


def test_warm_start_from_a_t5x_model_dir(clean_gin, toy_task, tmp_path):
  """t5x's orbax layout, MODEL_DIR/checkpoint_<step>/state = {'target': params, 'state':
  ...}: its latest step's params are read (the optimizer state is not)."""
  _, source = _train(tmp_path / "source", 2, toy_task)
  t5x_dir = tmp_path / "t5x"
  with ocp.PyTreeCheckpointer() as checkpointer:
    for step, scale in ((3, 0.0), (5, 1.0)):  # The latest, 5, must be the one read.
      checkpointer.save(t5x_dir / f"checkpoint_{step}" / "state", {
          "target": jax.tree.map(lambda x: x * scale, source["params"]),
          "state": {"step": np.int32(step)}})
  [(step_dir, step)] = checkpoints.resolve(str(t5x_dir))
  assert step == 5 and step_dir.endswith("checkpoint_5")
  _, state = _train(tmp_path / "warm", 0, toy_task, restore_path=str(t5x_dir))
  _assert_same_params(source["params"], state["params"])


def test_assignment_map_renames_and_checks_shapes(clean_gin, toy_task, tmp_path):
  """A replacement reads another checkpoint param (re.sub groups); one of another
  shape is an error naming both params."""
  abstract = {"enc": {"kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32)},
              "dec": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32)}}
  assert checkpoints.assign(abstract, ((r"enc/(.*)", r"old_enc/\1"),
                                       ("dec/.*", None))) == {
      "dec/kernel": None, "enc/kernel": "old_enc/kernel"}
  assert checkpoints.assign(abstract) == {"dec/kernel": "dec/kernel",
                                          "enc/kernel": "enc/kernel"}
  with pytest.raises(ValueError, match="must be a .regex, replacement or None. pair"):
    checkpoints.assign(abstract, (("enc/.*",),))
  _train(tmp_path / "source", 2, toy_task)
  with pytest.raises(ValueError, match="param 'wo/kernel' has shape .* the model's "
                                       "'wi/kernel' expects"):
    _train(tmp_path / "warm", 0, toy_task,
           restore_path=str(tmp_path / "source" / "checkpoints"),
           assignment_map=(("wi/kernel", "wo/kernel"),))


def test_per_task_losses_logged(clean_gin, tmp_path, caplog):
  """On a Mixture whose examples carry task_id, the log line has one loss per task."""
  mixture = toy_model.register_toy_mixture()
  with caplog.at_level(logging.INFO):
    _train(tmp_path, 1, mixture)
  line = next(l for l in caplog.text.splitlines() if "step 1/1 | loss" in l)
  assert "toy_mixture_a " in line and "toy_mixture_b " in line, line
