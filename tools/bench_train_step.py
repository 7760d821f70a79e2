"""Train-step time and MFU of the models gin files define, on this machine.

    python tools/bench_train_step.py --gin_file=gin/jar_base.gin \
        --gin_file=gin/vlmo_base.gin --batch_size=2 --json=/tmp/train_step.json

For each gin file: its MODEL and optimizer (`train_script.train.optimizer`), a
synthetic batch of `--batch_size` examples with the model's features at the gin's
TASK_FEATURE_LENGTHS and image size, and one jitted train step as the trainer runs it
(value_and_grad of `model.loss_fn` with dropout, then the optax update). The step is
compiled once, run `--warmup` times, then timed `--steps` times (the median is
reported). FLOPs per step come from XLA's cost analysis of the compiled step; MFU is
FLOPs per second over `--peak_gflops` (default: cores x clock x 32 float32 FLOPs per
cycle, two 256-bit FMA units, e.g. AMD Zen 4; set it for your machine). Prints a
table and the ratio of each model's step time to the first's, measured in the same run.

`--stand_in_vocabulary` (default on) points `vocab.t5_vocabulary.path` at the
embedded shapes vocabulary so the base gins build offline: the network keeps its
gin-bound vocabulary size, and step time does not depend on which ids the tokens are.
"""
import json
import os
import statistics
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import flags
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlpretrain import gin_utils
from vlpretrain.data import vocab

_BATCH = flags.DEFINE_integer("batch_size", 2, "Examples per step.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per model.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_PEAK = flags.DEFINE_float("peak_gflops", None, "Peak float32 GFLOP/s of the machine.")
_STAND_IN = flags.DEFINE_bool("stand_in_vocabulary", True,
                              "Bind vocab.t5_vocabulary.path to the shapes vocabulary.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")


def default_peak_gflops() -> float:
  """cores x clock (GHz, /proc/cpuinfo) x 32: an estimate, said so in the output."""
  mhz = []
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      mhz = [float(l.split(":")[1]) for l in f if l.startswith("cpu MHz")]
  ghz = (statistics.mean(mhz) / 1e3) if mhz else 2.5
  return len(os.sched_getaffinity(0)) * ghz * 32


def synthetic_batch(model, lengths, image_size, batch_size):
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  rng = np.random.RandomState(0)
  batch = {}
  for name, length in converter.get_model_feature_lengths(lengths).items():
    tokens = rng.randint(3, 100, size=(batch_size, length)).astype(np.int32)
    tokens[:, -1] = 1  # EOS last: every position is real text.
    batch[name] = tokens
  if "decoder_loss_weights" in batch:
    batch["decoder_loss_weights"] = np.ones_like(batch["decoder_loss_weights"])
  batch["image"] = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(
      np.float32)
  return {k: jnp.asarray(v) for k, v in batch.items()}


def bench(gin_file: str, batch_size: int, steps: int, warmup: int) -> dict:
  gin.clear_config(clear_constants=True)
  bindings = list(flags.FLAGS.gin_bindings or [])
  if _STAND_IN.value:
    bindings.append("vocab.t5_vocabulary.path = "
                    f"'{vocab.shapes_vocabulary().sentencepiece_model_file}'")
  gin_utils.parse_gin_flags(flags.FLAGS.gin_search_paths, [gin_file], bindings)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  optimizer = gin.query_parameter(
      "vlpretrain.train.train.optimizer").scoped_configurable_fn()
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  image_size = gin.query_parameter("%IMAGE_SIZE")
  batch = synthetic_batch(model, lengths, image_size, batch_size)
  shapes = {k: v.shape for k, v in batch.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]
  state = (params, optimizer.init(params))

  def train_step(state, batch, rng):
    params, opt_state = state
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  start = time.time()
  compiled = jax.jit(train_step, donate_argnums=(0,)).lower(
      state, batch, jax.random.PRNGKey(1)).compile()
  compile_s = time.time() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, loss = compiled(state, batch, jax.random.PRNGKey(i))
    jax.block_until_ready(loss)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  return {"gin_file": gin_file, "model": type(model).__name__,
          "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
          "batch_size": batch_size, "feature_lengths": dict(lengths),
          "image_size": image_size, "step_seconds": step_s,
          "step_seconds_all": times, "gflops_per_step": float(cost["flops"]) / 1e9,
          "compile_seconds": round(compile_s, 1)}


def main(argv):
  del argv
  peak = _PEAK.value or default_peak_gflops()
  results = [bench(g, _BATCH.value, _STEPS.value, _WARMUP.value)
             for g in flags.FLAGS.gin_file]
  first = results[0]["step_seconds"]
  print(f"{'gin file':<28}{'params':>14}{'step s':>10}{'GFLOP/step':>12}"
        f"{'GFLOP/s':>10}{'MFU %':>8}{'time / first':>14}")
  for r in results:
    r["gflops_per_second"] = r["gflops_per_step"] / r["step_seconds"]
    r["mfu"] = r["gflops_per_second"] / peak
    r["step_time_ratio_to_first"] = r["step_seconds"] / first
    print(f"{os.path.basename(r['gin_file']):<28}{r['params']:>14,}"
          f"{r['step_seconds']:>10.2f}{r['gflops_per_step']:>12.1f}"
          f"{r['gflops_per_second']:>10.1f}{100 * r['mfu']:>8.1f}"
          f"{r['step_time_ratio_to_first']:>14.2f}")
  print(f"peak {peak:.0f} GFLOP/s ({'given' if _PEAK.value else 'estimated: cores x clock x 32'}"
        f"), batch {_BATCH.value}, median of {_STEPS.value} steps")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"peak_gflops": peak, "peak_given": bool(_PEAK.value),
                 "results": results}, f, indent=2)
  sys.stdout.flush()


if __name__ == "__main__":
  gin_utils.run(main)
