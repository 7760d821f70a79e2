"""Resumable command runs for the study tools (tools/ablate_*.py).

A study is many `vlpretrain train|eval` commands; each runs in its own directory and
leaves DIR/done.json when it finishes, so rerunning the study's command skips what is
done and lets the trainer resume what was interrupted.
"""
import json
import os
import shlex
import statistics
import subprocess
import time
from typing import Sequence, Tuple


def run_once(cmd: Sequence[str], run_dir: str, cwd: str) -> float:
  """Runs `cmd` in `cwd` unless RUN_DIR/done.json says it finished; returns its wall
  seconds. Its output goes to RUN_DIR/log.txt; a failure raises, naming that file."""
  done = os.path.join(run_dir, "done.json")
  if os.path.exists(done):
    with open(done, encoding="utf-8") as f:
      return json.load(f)["seconds"]
  os.makedirs(run_dir, exist_ok=True)
  log_path = os.path.join(run_dir, "log.txt")
  print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
  start = time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    rc = subprocess.call(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
  if rc:
    raise RuntimeError(f"Command failed (exit {rc}); see its output in {log_path}. "
                       "Rerun the same command to resume.")
  seconds = time.time() - start
  with open(done, "w", encoding="utf-8") as f:
    json.dump({"seconds": seconds, "command": list(cmd)}, f)
  return seconds


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  values = list(values)
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
