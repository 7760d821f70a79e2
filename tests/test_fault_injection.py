"""A training process SIGKILLed again and again, restarted each time with the same
command, ends exactly where an uninterrupted run ends (SIGTERM and SIGINT, which save
and exit: tests/test_preemption.py).

The toy model trains 40 steps on shuffled data, checkpointing every 4 steps. The
interrupted run is killed at random moments (seeded), at least once while orbax is
writing a checkpoint (its temporary directory exists), and restarted until it
finishes. Then its final params and optimizer state equal the uninterrupted run's
bit for bit, every checkpoint left in MODEL_DIR restores, and none was moved aside as
unreadable.
"""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 40

_WORKER = textwrap.dedent(r"""
  import sys
  sys.path.insert(0, "tests")
  import jax, numpy as np
  import toy_model
  from vlpretrain import optimizers, partitioning, train, utils

  model_dir, out, total_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
  lr = utils.create_learning_rate_scheduler("constant", 1e-2)
  _, state = train.train(
      model=toy_model.ToyModel(), partitioner=partitioning.PjitPartitioner(),
      train_dataset_cfg=utils.DatasetConfig(toy_model.register_toy_task(),
                                            toy_model.TASK_FEATURE_LENGTHS, "train", 8,
                                            True, 0),
      model_dir=model_dir, total_steps=total_steps, log_period=1, learning_rate_fn=lr,
      optimizer=optimizers.adamw(lr),
      checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(period=4)))
  leaves = jax.tree_util.tree_flatten_with_path(
      {"params": state["params"], "opt_state": state["opt_state"]})[0]
  np.savez(out, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves})
""")


def _start(script, model_dir, out):
  return subprocess.Popen(
      [sys.executable, str(script), str(model_dir), str(out), str(TOTAL_STEPS)],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)


def _steps(ckpt_dir):
  names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
  return sorted(int(n) for n in names if n.isdigit())


def _writing(ckpt_dir) -> bool:
  """True while orbax writes a checkpoint (`<step>.orbax-checkpoint-tmp-<n>`)."""
  return os.path.isdir(ckpt_dir) and any("tmp" in n for n in os.listdir(ckpt_dir))


def _kill_when(proc, ready, timeout=300) -> bool:
  """Polls `ready()`; SIGKILLs `proc` when it holds. False if the run ended first."""
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    if ready():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.0005)
  return False


@pytest.mark.slow
def test_sigkill_at_random_moments_and_during_a_write_then_resume_is_exact(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  reference = tmp_path / "reference.npz"
  proc = _start(script, tmp_path / "uninterrupted", reference)
  assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]

  run, ckpts = tmp_path / "interrupted", tmp_path / "interrupted" / "checkpoints"
  final = tmp_path / "final.npz"
  rng = random.Random(0)
  kills, during_write, restarts = [], 0, 0
  while len(kills) < 4 or not during_write:
    assert restarts < 12, f"never caught a write in progress: {kills}"
    restarts += 1
    proc = _start(script, run, final)
    before = _steps(ckpts)
    if len(kills) == 2 or (len(kills) >= 4 and not during_write):
      killed = _kill_when(proc, lambda: _writing(ckpts))  # Mid-write.
      during_write += killed
    else:  # Some random time after the next checkpoint commits.
      wait = rng.uniform(0.0, 0.5)
      target = lambda: _steps(ckpts)[-1:] != before[-1:] and bool(_steps(ckpts))
      started = []
      killed = _kill_when(proc, lambda: (target() and not started and started.append(
          time.time())) or (started and time.time() - started[0] >= wait))
    if not killed:
      assert proc.returncode == 0, proc.stderr.read()[-3000:]
      pytest.fail(f"The run finished before kill {len(kills) + 1}; kills so far: {kills}")
    kills.append(_steps(ckpts)[-1] if _steps(ckpts) else None)

  proc = _start(script, run, final)  # The same command, to the end.
  assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
  assert len(kills) >= 4 and during_write >= 1
  print(f"{len(kills)} SIGKILLs (latest checkpoint at each: {kills}), {during_write} "
        f"during a write, {restarts + 1} starts")
  want, got = np.load(reference), np.load(final)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # Every checkpoint left restores; nothing was found unreadable.
  assert not [n for n in os.listdir(ckpts) if n.endswith(".unreadable")]
  assert _steps(ckpts)[-1] == TOTAL_STEPS
  checkpointer = ocp.StandardCheckpointer()
  for step in _steps(ckpts):
    restored = checkpointer.restore(ckpts / str(step) / "state")
    assert int(restored["step"]) == step
