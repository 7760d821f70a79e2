r"""What dynamic difficulty sampling costs a training step, measured in one run.

    python tools/bench_sampler.py [--gin_file gin/jar_tiny.gin] [--steps 300]
        [--log_period 50] [--out /tmp/bench_sampler] [--json PATH]

Trains the same model twice for --steps steps with `vlpretrain train`: on the dynamic
mixture `shapes_pretrain` (batches composed on the host from the sampler's counts) and
on `shapes_pretrain_static` (the same nine tasks mixed by seqio in tf.data at equal
rates). From each run's TensorBoard scalars, over the log periods after the first (so
compilation and pipeline warm-up are left out), it reports the step time and the host
time per step of the sampler's own work (weights, counts, loss-window update), of the
training thread waiting for a composed batch, and of composing it (background thread),
and the end-to-end ratio of the two runs' steps per second. Prints a table and writes
JSON.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
RUNS = {"dynamic": "shapes_pretrain", "static": "shapes_pretrain_static"}


def read_scalars(model_dir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the scalars in MODEL_DIR/train's TensorBoard event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  scalars = {}
  for path in sorted(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField("tensor"):
          array = tf.make_ndarray(value.tensor)
          if array.dtype.kind not in "fiu" or array.size != 1:
            continue  # Not a scalar: the gin config (text), say.
          number = float(array)
        else:
          number = float(value.simple_value)
        scalars.setdefault(value.tag, {})[event.step] = number
  if not scalars:
    raise FileNotFoundError(f"No TensorBoard scalars under {model_dir}/train.")
  return scalars


def summarize(scalars: dict[str, dict[int, float]]) -> dict[str, float]:
  """Means over the log periods after the first."""
  steps = sorted(scalars["steps_per_sec"])[1:]
  if not steps:
    raise ValueError("Need at least two log periods: raise --steps or lower --log_period.")
  mean = lambda tag: float(np.mean([scalars[tag][s] for s in steps])) if tag in \
      scalars else float("nan")
  out = {"steps_per_sec": mean("steps_per_sec"), "step_ms": mean("timing/step_ms"),
         "batch_ms_per_step": mean("timing/batch_ms_per_step"),
         "sampler_ms_per_step": mean("timing/sampler_ms_per_step"),
         "batch_wait_ms_per_step": mean("timing/batch_wait_ms_per_step"),
         "compose_ms_per_step": mean("timing/compose_ms_per_step"),
         "periods": len(steps)}
  return out


def run(out: str, gin_file: str, steps: int, log_period: int, extra: list[str]) -> dict:
  results = {}
  for mode, mixture in RUNS.items():
    model_dir = os.path.join(os.path.abspath(out), mode)
    cmd = [sys.executable, "-m", "vlpretrain.cli", "train", f"--gin_file={gin_file}",
           f"--gin.MODEL_DIR={model_dir}", f"--gin.MIXTURE_OR_TASK_NAME='{mixture}'",
           f"--gin.TRAIN_STEPS={steps}",
           f"--gin.train_script.train.log_period={log_period}",
           f"--gin.utils.SaveCheckpointConfig.period={10 * steps}"] + extra
    print("$ " + " ".join(cmd), flush=True)
    with open(model_dir + ".log", "w", encoding="utf-8") as log:
      if subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO):
        raise RuntimeError(f"The {mode} run failed; see {model_dir}.log.")
    results[mode] = summarize(read_scalars(model_dir))
  dyn, static = results["dynamic"], results["static"]
  results["sampler_fraction_of_step"] = dyn["sampler_ms_per_step"] / dyn["step_ms"]
  results["batch_wait_fraction_of_step"] = dyn["batch_wait_ms_per_step"] / dyn["step_ms"]
  results["dynamic_over_static_step_time"] = static["steps_per_sec"] / dyn["steps_per_sec"]
  return results


def table(results: dict) -> str:
  rows = [("", "steps/s", "step ms", "sampler ms", "batch wait ms", "compose ms")]
  for mode in RUNS:
    r = results[mode]
    rows.append((mode, f"{r['steps_per_sec']:.3f}", f"{r['step_ms']:.1f}",
                 f"{r['sampler_ms_per_step']:.2f}", f"{r['batch_wait_ms_per_step']:.1f}",
                 f"{r['compose_ms_per_step']:.1f}"))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
  lines.insert(1, "-+-".join("-" * w for w in widths))
  lines.append(f"sampler: {100 * results['sampler_fraction_of_step']:.2f}% of the "
               f"dynamic step; waiting for batches: "
               f"{100 * results['batch_wait_fraction_of_step']:.1f}%; dynamic step time / "
               f"static: {results['dynamic_over_static_step_time']:.3f}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gin_file", default="gin/jar_tiny.gin")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--log_period", type=int, default=50)
  parser.add_argument("--out", default="/tmp/bench_sampler")
  parser.add_argument("--json", default=None, help="Default: OUT/results.json.")
  parser.add_argument("--gin", action="append", default=[],
                      help="Extra --gin.NAME=VALUE flags for both runs (repeatable).")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  results = run(args.out, args.gin_file, args.steps, args.log_period,
                [f"--gin.{g}" for g in args.gin])
  print(table(results))
  path = args.json or os.path.join(args.out, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
