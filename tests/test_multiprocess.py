"""Two processes on this machine (jax's CPU multi-process runtime, one device each)
train together as two hosts would: `partitioning.initialize_distributed` from the
environment, each process reading its own shard of the data, one global batch."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains the toy model 3 steps on batch 8 (multi: 4 examples read per process) and
# writes what it read and the final params to OUT/<process>. Unshuffled, so that the
# two hosts' shards (seqio's ShardInfo: examples 0, 2, 4, ... and 1, 3, 5, ...) make up
# the single process's batches: the same global batch, its rows in another order.
_WORKER = textwrap.dedent(r"""
  import json, os, sys
  sys.path.insert(0, "tests")
  from vlpretrain import partitioning
  if os.environ.get("JAX_NUM_PROCESSES"):
    partitioning.initialize_distributed()
  import jax, numpy as np
  import toy_model
  from vlpretrain import optimizers, train, utils

  out, model_dir = sys.argv[1:3]
  seen = []
  shard_batch = partitioning.PjitPartitioner.shard_batch
  def record(self, local_batch):
    seen.append(np.asarray(local_batch["encoder_input_tokens"]).tolist())
    return shard_batch(self, local_batch)
  partitioning.PjitPartitioner.shard_batch = record

  lr = utils.create_learning_rate_scheduler("constant", 1e-2)
  _, state = train.train(
      model=toy_model.ToyModel(dropout_rate=0.0), partitioner=partitioning.PjitPartitioner(),
      train_dataset_cfg=utils.DatasetConfig(toy_model.register_toy_task(),
                                            toy_model.TASK_FEATURE_LENGTHS, "train", 8,
                                            False, 0),
      model_dir=model_dir, total_steps=3, log_period=1, learning_rate_fn=lr,
      optimizer=optimizers.adamw(lr),
      checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(period=2)))
  me = jax.process_index()
  params = {"/".join(str(k.key) for k in path): np.asarray(x.addressable_data(0))
            for path, x in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
  np.savez(f"{out}/params_{me}.npz", **params)
  with open(f"{out}/seen_{me}.json", "w") as f:
    json.dump({"seen": seen, "processes": jax.process_count(),
               "devices": jax.device_count()}, f)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(script, out, model_dir, **env):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **env)
  return subprocess.Popen([sys.executable, str(script), str(out), str(model_dir)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  output, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, output[-5000:]
  return output


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  single, multi = tmp_path / "single", tmp_path / "multi"
  single.mkdir()
  multi.mkdir()
  _finish(_start(script, single, tmp_path / "run_single"))
  address = f"localhost:{_free_port()}"
  procs = [_start(script, multi, tmp_path / "run_multi", JAX_COORDINATOR_ADDRESS=address,
                  JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]
  for p in procs:
    _finish(p)

  read = lambda d, i: json.loads((d / f"seen_{i}.json").read_text())
  full, hosts = read(single, 0), [read(multi, i) for i in range(2)]
  assert [h["processes"] for h in hosts] == [2, 2] and hosts[0]["devices"] == 2
  for step in range(3):
    rows = [h["seen"][step] for h in hosts]
    assert [len(r) for r in rows] == [4, 4]           # Each read half the batch...
    assert not {tuple(x) for x in rows[0]} & {tuple(x) for x in rows[1]}  # ...its own...
    assert sorted(rows[0] + rows[1]) == sorted(full["seen"][step])  # ...of one batch.
  want = np.load(single / "params_0.npz")
  for i in range(2):
    got = np.load(multi / f"params_{i}.npz")
    assert sorted(got) == sorted(want)
    for k in want:
      np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0)
  # Process 0 alone writes summaries; the checkpoints are one set for both processes,
  # each holding both processes' input positions.
  run = tmp_path / "run_multi"
  assert len(list((run / "train").glob("events.out.tfevents.*"))) == 1
  ckpts = run / "checkpoints"
  assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [2, 3]
  assert sorted(p.name for p in (ckpts / "3" / "dataset").glob("*.index")) == [
      "process_000-of-002.index", "process_001-of-002.index"]
