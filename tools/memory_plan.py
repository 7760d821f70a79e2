"""Per-device memory of a gin config's train step on a given number of devices.

    python tools/memory_plan.py --gin_file=gin/jar_large.gin --devices=8,16 --fsdp \
        --hbm_gib=16 --json=/tmp/memory_plan.json

For each device count the tool starts itself again on that many fake CPU devices
(`--xla_force_host_platform_device_count`), builds the gin's MODEL, optimizer and
partitioner, and compiles the trainer's own train step (`train_step.make_train_step`,
state donated, shardings from the logical axis rules: `train_step.abstract_train_state`)
for the global batch, without allocating any of it. It prints, per device: params,
optimizer state and batch bytes (from the shardings), the step's temporary bytes
(activations, gradients, the update: XLA's memory analysis of the compiled step), their
sum, and whether that fits `--hbm_gib`; and the compile time.

XLA compiles for CPU here: an accelerator's compiler fuses and schedules differently,
so read the temporary bytes as an estimate of the right order (params, optimizer and
batch bytes are exact). The mesh is the trainer's: `--num_partitions` sizes `model`,
`--fsdp` shards params and optimizer state over `data` as well (t5x's
`parameter_partitioning_dims=2`). Any other `--gin.NAME=VALUE` binding applies
(`--gin.REMAT=True`, `--gin.ACTIVATION_DTYPE="'bfloat16'"`, ...).
`--stand_in_vocabulary` (default on): as in tools/bench_train_step.py, the embedded
shapes vocabulary stands in for the gin's SentencePiece model file (offline); the
network keeps its gin-bound vocabulary size.
"""
import json
import os
import subprocess
import sys
import time

_CHILD_ENV = "VLPRETRAIN_MEMORY_PLAN_CHILD"
if os.environ.get(_CHILD_ENV):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={os.environ[_CHILD_ENV]}")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags
import gin
import jax
import numpy as np

from vlpretrain import gin_utils
from vlpretrain import microbatching
from vlpretrain import partitioning
from vlpretrain import train_step as train_step_lib
from vlpretrain.data import vocab

_DEVICES = flags.DEFINE_list("devices", ["8"], "Device counts to plan for.")
_FSDP = flags.DEFINE_bool("fsdp", False, "Shard params and optimizer state over 'data'.")
_PARTITIONS = flags.DEFINE_integer("num_partitions", 1, "Size of the 'model' mesh axis.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (default: the gin's).")
_MICRO = flags.DEFINE_integer("num_microbatches", None, "Gradient accumulation.")
_HBM = flags.DEFINE_float("hbm_gib", None, "Memory per device, GiB (e.g. 16 for v5e).")
_STAND_IN = flags.DEFINE_bool("stand_in_vocabulary", True,
                              "Bind vocab.t5_vocabulary.path to the shapes vocabulary.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")

GIB = 2**30


def _bindings() -> list[str]:
  bindings = list(flags.FLAGS.gin_bindings or [])
  if _STAND_IN.value:
    bindings.append("vocab.t5_vocabulary.path = "
                    f"'{vocab.shapes_vocabulary().sentencepiece_model_file}'")
  bindings.append(f"partitioning.PjitPartitioner.num_partitions = {_PARTITIONS.value}")
  if _FSDP.value:
    bindings.append("partitioning.standard_logical_axis_rules.parameter_partitioning_dims"
                    " = 2")
  return bindings


def _batch_spec(model, lengths, image_size, batch_size, sharding=None):
  """The train batch's features as ShapeDtypeStructs (what the feature converter and
  the image preprocessing give the trainer)."""
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  spec = {name: jax.ShapeDtypeStruct((batch_size, length), np.int32, sharding=sharding)
          for name, length in converter.get_model_feature_lengths(lengths).items()}
  spec["image"] = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3),
                                       np.float32, sharding=sharding)
  return spec


def _device_bytes(tree) -> int:
  """Bytes one device holds of `tree` (ShapeDtypeStructs with shardings)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return total


def plan_here() -> dict:
  """The plan on this process's devices (the child)."""
  gin_utils.parse_gin_flags(flags.FLAGS.gin_search_paths, flags.FLAGS.gin_file,
                            _bindings())
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  optimizer = gin.query_parameter(
      "vlpretrain.train.train.optimizer").scoped_configurable_fn()
  partitioner = partitioning.PjitPartitioner()
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  image_size = gin.query_parameter("%IMAGE_SIZE")
  batch_size = _BATCH.value or gin.query_parameter("%BATCH_SIZE")
  partitioner.check_batch_size(batch_size)
  num_microbatches = microbatching.check(_MICRO.value, batch_size,
                                         partitioner.data_axis_size)

  init = _batch_spec(model, lengths, image_size, partitioner.data_axis_size)
  _, state, state_shardings = train_step_lib.abstract_train_state(
      model, optimizer, partitioner, {k: v.shape for k, v in init.items()},
      {k: v.dtype for k, v in init.items()}, jax.random.PRNGKey(0))
  batch = _batch_spec(model, lengths, image_size, batch_size, partitioner.batch_sharding())
  step = train_step_lib.make_train_step(
      model, optimizer, partitioner, dropout_key=jax.random.PRNGKey(1),
      has_mutables="flax_mutables" in state, num_microbatches=num_microbatches)
  jitted = jax.jit(step, donate_argnums=(0,),
                   out_shardings=(state_shardings, partitioner.replicated,
                                  partitioner.replicated))
  start = time.perf_counter()
  with partitioner.activate():
    compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  params = _device_bytes(state["params"])
  opt = _device_bytes(state["opt_state"]) + _device_bytes(state.get("flax_mutables", {}))
  batch_bytes = _device_bytes(batch)
  temp = int(memory.temp_size_in_bytes)
  return {
      "gin_file": flags.FLAGS.gin_file, "devices": jax.device_count(),
      "mesh": dict(partitioner.mesh.shape), "fsdp": _FSDP.value,
      "batch_size": batch_size, "num_microbatches": num_microbatches,
      "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"]))),
      "param_bytes_per_device": params, "optimizer_bytes_per_device": opt,
      "batch_bytes_per_device": batch_bytes, "temp_bytes_per_device": temp,
      "total_bytes_per_device": params + opt + batch_bytes + temp,
      "xla_argument_bytes": int(memory.argument_size_in_bytes),
      "xla_output_bytes": int(memory.output_size_in_bytes),
      "xla_alias_bytes": int(memory.alias_size_in_bytes),
      "compile_seconds": round(compile_s, 1)}


def _run_child(devices: int) -> dict:
  env = dict(os.environ, **{_CHILD_ENV: str(devices)})
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                        env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("PLAN ")]
  if proc.returncode or not lines:
    sys.exit(f"memory_plan: the plan for {devices} devices failed:\n"
             f"{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("PLAN "):])


def main(argv):
  del argv
  if os.environ.get(_CHILD_ENV):
    print("PLAN " + json.dumps(plan_here()), flush=True)
    return
  plans = [_run_child(int(d)) for d in _DEVICES.value]
  hbm = _HBM.value
  print(f"{'devices':>8} {'mesh':>14} {'params GiB':>11} {'optimizer':>10} "
        f"{'batch':>8} {'temp':>8} {'total':>8} {'fits' if hbm else '':>6} "
        f"{'compile s':>10}")
  for p in plans:
    total = p["total_bytes_per_device"]
    fits = ("yes" if total <= hbm * GIB else "no") if hbm else ""
    if hbm:
      p["fits"] = total <= hbm * GIB
    mesh = "x".join(str(v) for v in p["mesh"].values())
    print(f"{p['devices']:>8} {mesh:>14} {p['param_bytes_per_device'] / GIB:>11.2f} "
          f"{p['optimizer_bytes_per_device'] / GIB:>10.2f} "
          f"{p['batch_bytes_per_device'] / GIB:>8.2f} "
          f"{p['temp_bytes_per_device'] / GIB:>8.2f} {total / GIB:>8.2f} {fits:>6} "
          f"{p['compile_seconds']:>10.1f}")
  first = plans[0]
  print(f"{', '.join(first['gin_file'])}: {first['params']:,} params, global batch "
        f"{first['batch_size']}, {first['num_microbatches']} microbatch(es), "
        f"{'FSDP' if first['fsdp'] else 'params replicated over data'}; GiB per device"
        f"{f', fits: <= {hbm} GiB' if hbm else ''}; temp: XLA's CPU estimate")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"hbm_gib": hbm, "plans": plans}, f, indent=2)


if __name__ == "__main__":
  gin_utils.run(main)
