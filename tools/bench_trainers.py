"""Steady-state training speed of vlpretrain's trainer and of real t5x's, same model,
Task, batch and feature lengths, run one after the other in alternating pairs.

    PYTHONPATH=/path/to/t5x:/path/to/airio:/path/to/jestimator \
        python tools/bench_trainers.py --pairs=3 --steps=400 --json=/tmp/trainers.json

Both train gin/models/jar_tiny.gin on the seqio mixture `shapes_pretrain_static` (the
nine shapes tasks at equal rates: t5x has no dynamic sampling), batch 32, lengths
24/24, with no evaluation during training, one log summary and one checkpoint at
the end. A run's speed is measured from its own log timestamps: steps / seconds from
the end of compilation to the summary of the last step. Prints a table and the ratio of the medians; needs t5x importable.
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
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--gin.MIXTURE_OR_TASK_NAME='shapes_pretrain_static'", "--gin.BATCH_SIZE=32",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 24}"]
_STAMP = re.compile(r"^I(\d{4} \d\d:\d\d:\d\d\.\d+) .*?\] (.*)$")


def _time(line):
  m = _STAMP.match(line)
  return (datetime.strptime(m.group(1), "%m%d %H:%M:%S.%f"), m.group(2)) if m else None


def vlpretrain_command(model_dir, steps):
  return [sys.executable, "-m", "vlpretrain.cli", "train", "--gin_file=gin/jar_tiny.gin",
          *COMMON, f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
          f"--gin.train_script.train.log_period={steps}",
          f"--gin.utils.SaveCheckpointConfig.period={10 * steps}"]


def t5x_command(model_dir, steps):
  return [sys.executable, "-m", "t5x.train", "--gin_search_paths=gin",
          "--gin_file=gin/t5x/jar_tiny.gin", *COMMON, f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={steps}", "--gin.train.train_eval_dataset_cfg=None",
          f"--gin.utils.SaveCheckpointConfig.period={10 * steps}"]


def steady_steps_per_second(stderr: str, trainer: str) -> float:
  """Steps per second from the end of compilation to the last step's summary, by the
  log's timestamps: vlpretrain's "Compiled the train step" to its last "step N/M |"
  line; t5x's "Training for N steps." (logged once compiled) to its "[N]
  collection=train accuracy=..." summary. Both summaries are written once the
  metrics of the last step are computed, i.e. every step has run."""
  if trainer == "t5x":
    begin, end = r"Training for \d+ steps\.", r"\[(\d+)\] collection=train accuracy="
  else:
    begin, end = r"Compiled the train step", r"step (\d+)/\d+ \|"
  t0 = t1 = steps = None
  for line in stderr.splitlines():
    parsed = _time(line)
    if not parsed:
      continue
    if t0 is None and re.match(begin, parsed[1]):
      t0 = parsed[0]
    m = re.match(end, parsed[1])
    if m and t0 is not None:
      t1, steps = parsed[0], int(m.group(1))
  if t1 is None:
    raise ValueError(f"{trainer}: no compile mark or final summary in the log.")
  return steps / (t1 - t0).total_seconds()


def run_once(trainer, steps):
  model_dir = tempfile.mkdtemp(prefix=f"bench_{trainer}_")
  try:
    make = vlpretrain_command if trainer == "vlpretrain" else t5x_command
    proc = subprocess.run(make(model_dir, steps), cwd=REPO, capture_output=True,
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
      speed = run_once(trainer, _STEPS.value)
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
                 "steps": _STEPS.value}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
