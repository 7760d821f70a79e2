"""Steady-state training speed of vlpretrain's trainer and of real t5x's, same model,
Task, batch and feature lengths, run one after the other in alternating pairs.

    PYTHONPATH=/path/to/t5x:/path/to/airio:/path/to/jestimator \
        python tools/bench_trainers.py --pairs=3 --steps=400 --json=/tmp/trainers.json

Both train gin/models/jar_tiny.gin on the seqio mixture `shapes_pretrain_static` (the
nine shapes tasks at equal rates: t5x has no dynamic sampling), batch 32, lengths
24/24, with no evaluation during training and one checkpoint at the end. A run's
speed is measured from its own log timestamps: steps / seconds between the end of the
first `--period` steps (compilation and input warm-up fall before it) and the last
one, as each trainer logs its period summaries. Prints a table and the ratio of the medians; needs t5x importable.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime

from absl import app
from absl import flags

_PAIRS = flags.DEFINE_integer("pairs", 3, "Alternating (vlpretrain, t5x) pairs.")
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps per run.")
_PERIOD = flags.DEFINE_integer("period", 100, "Steps between the timestamps read.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--gin.MIXTURE_OR_TASK_NAME='shapes_pretrain_static'", "--gin.BATCH_SIZE=32",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 24}"]
_STAMP = re.compile(r"^I(\d{4} \d\d:\d\d:\d\d\.\d+) .*?\] (.*)$")


def _time(line):
  m = _STAMP.match(line)
  return (datetime.strptime(m.group(1), "%m%d %H:%M:%S.%f"), m.group(2)) if m else None


def vlpretrain_command(model_dir, steps, period):
  return [sys.executable, "-m", "vlpretrain.cli", "train", "--gin_file=gin/jar_tiny.gin",
          *COMMON, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
          f"--gin.train_script.train.log_period={period}",
          f"--gin.utils.SaveCheckpointConfig.period={10 * steps}"]


def t5x_command(model_dir, steps, period):
  return [sys.executable, "-m", "t5x.train", "--gin_search_paths=gin",
          "--gin_file=gin/t5x/jar_tiny.gin", *COMMON, f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={steps}", f"--gin.train_script.train.eval_period={period}",
          "--gin.train_script.train.train_eval_dataset_cfg=None",
          f"--gin.utils.SaveCheckpointConfig.period={10 * steps}"]


def steady_steps_per_second(stderr: str, trainer: str) -> float:
  """Steps per second between the first and the last period's summary in the log:
  vlpretrain's "step N/M |" lines, t5x's "[N] collection=train accuracy=..." (both
  written once the period's metrics are computed, i.e. its steps have run)."""
  pattern = (r"\[(\d+)\] collection=train accuracy=" if trainer == "t5x"
             else r"step (\d+)/\d+ \|")
  marks = []
  for line in stderr.splitlines():
    parsed = _time(line)
    m = parsed and re.match(pattern, parsed[1])
    if m:
      marks.append((parsed[0], int(m.group(1))))
  if len(marks) < 2:
    raise ValueError(f"{trainer}: fewer than two period summaries in the log; raise "
                     "--steps.")
  (t0, s0), (t1, s1) = marks[0], marks[-1]
  return (s1 - s0) / (t1 - t0).total_seconds()


def run_once(trainer, steps, period):
  model_dir = tempfile.mkdtemp(prefix=f"bench_{trainer}_")
  try:
    make = vlpretrain_command if trainer == "vlpretrain" else t5x_command
    proc = subprocess.run(make(model_dir, steps, period), cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode:
      raise RuntimeError(f"{trainer} failed:\n{proc.stderr[-3000:]}")
    return steady_steps_per_second(proc.stderr, trainer)
  finally:
    shutil.rmtree(model_dir, ignore_errors=True)


def main(argv):
  del argv
  runs = {"vlpretrain": [], "t5x": []}
  for pair in range(_PAIRS.value):
    for trainer in ("vlpretrain", "t5x") if pair % 2 == 0 else ("t5x", "vlpretrain"):
      speed = run_once(trainer, _STEPS.value, _PERIOD.value)
      runs[trainer].append(speed)
      print(f"pair {pair}: {trainer:<10} {speed:.3f} steps/s", flush=True)
  medians = {k: statistics.median(v) for k, v in runs.items()}
  print(f"\n{'trainer':<12}{'median steps/s':>16}{'runs':>32}")
  for k, v in runs.items():
    print(f"{k:<12}{medians[k]:>16.3f}{', '.join(f'{x:.3f}' for x in v):>32}")
  ratio = medians["vlpretrain"] / medians["t5x"]
  print(f"vlpretrain / t5x: {ratio:.3f}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"runs": runs, "medians": medians, "ratio_vlpretrain_over_t5x": ratio,
                 "steps": _STEPS.value, "period": _PERIOD.value}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
