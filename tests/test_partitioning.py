"""Partitioning: logical axis rules, shardings, and sharded step == single-device step."""
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from vlpretrain import optimizers, partitioning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_standard_rules_map_names():
  rules = partitioning.standard_logical_axis_rules()
  to_mesh = lambda *names: tuple(nn.logical_to_mesh_axes(names, rules))
  assert to_mesh("batch", "length", "embed") == ("data", None, None)
  assert to_mesh("embed", "mlp") == (None, "model")
  assert to_mesh("vocab", "embed") == ("model", None)
  assert to_mesh("embed", "heads", "kv") == (None, "model", None)
  assert to_mesh("heads", "relpos_buckets") == ("model", None)
  assert to_mesh("embed", "joined_kv") == (None, "model")
  assert to_mesh("latents", "embed") == (None, None)
  assert to_mesh("image_embed", "embed") == (None, None)
  fsdp = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
  to_mesh = lambda *names: tuple(nn.logical_to_mesh_axes(names, fsdp))
  assert to_mesh("embed", "mlp") == ("data", "model")      # A param: over both axes.
  assert to_mesh("vocab", "embed") == ("model", "data")
  assert to_mesh("batch", "length", "embed") == ("data", None, None)  # Activations.
  with pytest.raises(ValueError, match="parameter_partitioning_dims=3"):
    partitioning.standard_logical_axis_rules(parameter_partitioning_dims=3)


def test_partitioner_single_device_and_errors():
  p = partitioning.PjitPartitioner()
  assert dict(p.mesh.shape) == {"data": jax.device_count(), "model": 1}
  assert p.mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
  with pytest.raises(ValueError, match="num_partitions=3 does not divide"):
    partitioning.PjitPartitioner(num_partitions=3 * jax.device_count())
  with pytest.raises(ValueError, match="disagrees with model_parallel_submesh"):
    partitioning.PjitPartitioner(num_partitions=2, model_parallel_submesh=(1, 1, 1, 1))


# Runs in a subprocess with 8 CPU devices: trains 3 steps on a 1-device mesh, then on
# each layout given (tp<N>: an (8/N, N) ('data', 'model') mesh; fsdp) from the same
# seed and data, and prints what differs, one RESULT line per layout.
_WORKER = textwrap.dedent(r"""
  import json, logging, re, sys
  sys.path.insert(0, "tests")
  import jax, numpy as np, optax
  from vlpretrain import optimizers, partitioning, train, utils

  model_dir, gin_file, opt, microbatches, layouts = sys.argv[1:4] + [
      int(sys.argv[4]), sys.argv[5].split(",")]
  if gin_file == "toy":
    import toy_model
    task, lengths, model = (toy_model.register_toy_task(),
                            toy_model.TASK_FEATURE_LENGTHS,
                            # Microbatches draw their own dropout masks: none here.
                            toy_model.ToyModel(dropout_rate=0.1 if microbatches == 1
                                               else 0.0))
  else:
    import gin
    from vlpretrain import gin_utils
    gin_utils.parse_gin_flags(["."], [gin_file], [
        "MIXTURE_OR_TASK_NAME = 'shapes_cap'",
        "shapes.shapes_settings.num_train = 64",
        "shapes.shapes_settings.num_validation = 16"], finalize_config=False)
    macro = lambda name: gin.query_parameter(f"{name}/macro.value")
    model = macro("MODEL").scoped_configurable_fn()
    task, lengths = macro("MIXTURE_OR_TASK_NAME"), macro("TASK_FEATURE_LENGTHS")

  losses, logged = [], []
  class Grab(logging.Handler):
    def emit(self, record):
      m = re.search(r"\| loss ([0-9.]+) ", record.getMessage())
      if m: losses.append(float(m.group(1)))
      if "microbatches of" in record.getMessage(): logged.append(record.getMessage())
  logging.getLogger("absl").addHandler(Grab())
  logging.getLogger("absl").setLevel(logging.INFO)

  def run(name, partitioner, **kw):
    lr = utils.create_learning_rate_scheduler("constant", 1e-3)
    cfg = utils.DatasetConfig(task, lengths, "train", 8, True, 0)
    _, state = train.train(
        model=model, train_dataset_cfg=cfg, partitioner=partitioner,
        model_dir=f"{model_dir}/{name}", total_steps=3, log_period=1,
        optimizer=optimizers.adamw(lr) if opt == "adamw" else optax.sgd(0.1),
        learning_rate_fn=lr,
        checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(
            period=10, save_dataset=False)), **kw)
    return state

  single = partitioning.PjitPartitioner()
  single.mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1],
                              axis_types=(jax.sharding.AxisType.Auto,) * 2)
  start = len(losses)
  ref = run("single", single)
  single_losses = losses[start:]
  for layout in layouts:
    if layout == "fsdp":  # 8-way data parallel, params and Adam moments over 'data'.
      sharded_partitioner = partitioning.PjitPartitioner(
          num_partitions=1, logical_axis_rules=partitioning.standard_logical_axis_rules(
              parameter_partitioning_dims=2))
    else:  # 'tp<N>': a (8/N, N) ('data', 'model') mesh.
      sharded_partitioner = partitioning.PjitPartitioner(num_partitions=int(layout[2:]))
    start = len(losses)
    out = run(layout, sharded_partitioner, num_microbatches=microbatches)
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
             for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out))]
    scale = max(float(np.max(np.abs(np.asarray(a)), initial=0.0))
                for a in jax.tree.leaves(ref["params"]))
    specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(out)})
    params = jax.tree.leaves(out["params"])
    replicated = [x for x in params if all(a is None for a in x.sharding.spec)]
    param_bytes = {"total": sum(x.nbytes for x in params),
                   "replicated": sum(x.nbytes for x in replicated),
                   "device0": sum(x.addressable_shards[0].data.nbytes for x in params)}
    adam_specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(out["opt_state"])
                         if x.ndim >= 1})
    print("RESULT " + json.dumps({
        "layout": layout, "mesh": dict(sharded_partitioner.mesh.shape),
        "max_diff": max(diffs), "param_scale": scale,
        "losses": single_losses + losses[start:], "specs": specs, "logged": logged,
        "param_bytes": param_bytes, "adam_specs": adam_specs}), flush=True)
""")


def _run_worker(tmp_path, gin_file, optimizer, microbatches=1, layouts=("tp2",)):
  """The worker's results, one per layout, all against one single-device run."""
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(script), str(tmp_path), gin_file, optimizer,
                         str(microbatches), ",".join(layouts)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and len(lines) == len(layouts), proc.stderr[-5000:]
  return {r["layout"]: r for r in (json.loads(l[len("RESULT "):]) for l in lines)}


# Each ('data', 'model') mesh of 8 devices, and FSDP over 8.
_MESHES = {"tp1": {"data": 8, "model": 1}, "tp2": {"data": 4, "model": 2},
           "tp4": {"data": 2, "model": 4}, "fsdp": {"data": 8, "model": 1}}


def _check_sharded_equals_single(result, mesh=None):
  assert result["mesh"] == (mesh or {"data": 4, "model": 2})
  if (mesh or {"model": 2})["model"] > 1:  # Some params really are split over 'model'.
    assert any("'model'" in s for s in result["specs"]), result["specs"]
  single_losses, sharded_losses = result["losses"][:3], result["losses"][3:]
  assert len(sharded_losses) == 3
  assert sharded_losses == pytest.approx(single_losses, abs=2e-4)
  assert single_losses[0] != single_losses[1]  # The first step changed the params.
  assert result["max_diff"] < 1e-5, result


def test_a_dimension_its_mesh_axis_does_not_divide_stays_whole(caplog):
  """2 heads on a 4-way 'model' axis cannot be split evenly: that dimension is
  replicated (with a warning naming the param); 8 heads are split."""
  from flax.linen import partitioning as flax_partitioning
  partitioner = partitioning.PjitPartitioner()
  partitioner.mesh = jax.sharding.AbstractMesh((2, 4), ("data", "model"))
  params = {"two": jax.ShapeDtypeStruct((128, 2, 64), jnp.float32),
            "eight": jax.ShapeDtypeStruct((128, 8, 64), jnp.float32)}
  names = flax_partitioning.AxisMetadata(names=("embed", "heads", "kv"))
  axes = {"two_axes": names, "eight_axes": names}
  with caplog.at_level("WARNING"):
    shardings = partitioner.param_shardings(params, axes)
  assert tuple(shardings["eight"].spec) == (None, "model", None)
  assert tuple(shardings["two"].spec) == (None, None, None)
  assert "two (dim 1 = 2 over model = 4)" in caplog.text and "eight" not in caplog.text


def test_optimizer_state_shardings_follow_the_optimizer_init():
  """Each params-shaped copy in the optax state gets its param's sharding, whatever the
  chain (clipped AdamW with a decay mask and frozen params, Adafactor); the rest is
  replicated, and the shardings fit `jit(optimizer.init)`'s output tree."""
  partitioner = partitioning.PjitPartitioner()
  spec = lambda *names: jax.sharding.NamedSharding(partitioner.mesh,
                                                   jax.sharding.PartitionSpec(*names))
  params = {"enc": {"kernel": jnp.ones((4, 6))}, "frozen": {"kernel": jnp.ones((6, 8))},
            "bias": jnp.ones((6,))}
  shardings = {"enc": {"kernel": spec("data", None)},
               "frozen": {"kernel": spec(None, "model")}, "bias": spec("model")}
  abstract = jax.eval_shape(lambda: params)
  want = {"mu/enc/kernel": ("data", None), "nu/enc/kernel": ("data", None),
          "mu/bias": ("model",), "nu/bias": ("model",), "count": ()}
  got = {}
  for name, optimizer in [("adamw", optimizers.adamw(1e-3, frozen_pattern="frozen/.*")),
                          ("adafactor", optax.adafactor(1e-3))]:
    state = jax.eval_shape(optimizer.init, abstract)
    out = partitioner.optimizer_state_shardings(optimizer, state, abstract, shardings)
    assert jax.tree.structure(out) == jax.tree.structure(state)
    jax.jit(optimizer.init, out_shardings=out)(params)  # The tree jit expects.
    got[name] = {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path
                          if not isinstance(k, jax.tree_util.SequenceKey)): tuple(s.spec)
                 for path, s in jax.tree_util.tree_flatten_with_path(out)[0]}
  adamw_got = {k.split("inner_state/")[-1]: v for k, v in got["adamw"].items()}
  assert adamw_got == want  # The frozen kernel has no Adam slots.
  assert got["adafactor"]["v/frozen/kernel"] == (None, "model")
  assert got["adafactor"]["v_row/frozen/kernel"] == ()  # Factored: not the param's shape.
  assert got["adafactor"]["v/bias"] == ("model",)


def test_sharded_steps_equal_single_device_toy(tmp_path):
  """3 steps of the toy model with AdamW (so the optimizer state's shardings are
  exercised too) on the 8x1, 4x2 and 2x4 meshes and under FSDP over 8 (t5x's
  parameter_partitioning_dims=2) equal the single-device run; under FSDP only the
  toy's scalar gate is replicated and a device holds an eighth of the rest."""
  results = _run_worker(tmp_path, "toy", "adamw", layouts=tuple(_MESHES))
  for layout, mesh in _MESHES.items():
    _check_sharded_equals_single(results[layout], mesh=mesh)
  fsdp = results["fsdp"]
  assert fsdp["param_bytes"]["replicated"] == 4  # The float32 gate.
  b = fsdp["param_bytes"]
  assert b["device0"] == (b["total"] - b["replicated"]) // 8 + b["replicated"], b
  assert any("'data'" in s for s in fsdp["adam_specs"]), fsdp["adam_specs"]


@pytest.mark.slow
def test_sharded_microbatched_step_equals_single_device_one_batch(tmp_path):
  """Two microbatches of 4 over the 4x2 mesh (each device keeps its rows) give the
  single-device full-batch update: vlpretrain/microbatching.py."""
  result = _run_worker(tmp_path, "toy", "adamw", microbatches=2)["tp2"]
  assert any("2 microbatches of 4" in line for line in result["logged"]), result
  _check_sharded_equals_single(result)


@pytest.mark.slow
def test_sharded_steps_equal_single_device_jar_tiny(tmp_path):
  """The real tiny JAR model (gin/jar_tiny.gin) on shapes_cap, 3 steps on each mesh
  and under FSDP (a device then holds under a seventh of the param bytes: the params
  without an 'embed' axis, about 1%, stay replicated).

  Plain SGD: Adam's first step is ~lr * g / |g|, which turns float noise in near-zero
  gradients (different reduction order when sharded) into visible parameter changes.
  """
  results = _run_worker(tmp_path, "gin/jar_tiny.gin", "sgd", layouts=tuple(_MESHES))
  for layout, mesh in _MESHES.items():
    _check_sharded_equals_single(results[layout], mesh=mesh)
  b = results["fsdp"]["param_bytes"]
  assert b["replicated"] < 0.02 * b["total"] and b["device0"] < b["total"] / 7, b
