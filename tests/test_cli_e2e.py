"""End to end through the real console script: `vlpretrain train` on gin/jar_tiny.gin."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Few steps on a small shapes world, one log line per step; the smallest batch of the
# dynamic mixture shapes_pretrain (9 tasks x min_per_task 2).
TINY_RUN = ["--gin_file=gin/jar_tiny.gin", "--gin.BATCH_SIZE=18",
            "--gin.shapes.shapes_settings.num_train=64",
            "--gin.shapes.shapes_settings.num_validation=16",
            "--gin.train_script.train.log_period=1"]


def _console_script() -> str:
  script = os.path.join(os.path.dirname(sys.executable), "vlpretrain")
  script = script if os.path.exists(script) else shutil.which("vlpretrain")
  assert script, "The `vlpretrain` console script is not installed: pip install -e ."
  return script


def _run(*args, timeout=600):
  return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_help_lists_subcommands():
  proc = _run(_console_script(), "--help", timeout=60)
  assert proc.returncode == 0
  assert "train" in proc.stdout and "--gin_file" in proc.stdout
  proc = _run(_console_script(), "fly", timeout=60)
  assert proc.returncode == 2 and "unknown subcommand 'fly'" in proc.stderr


def test_missing_task_name_fails_with_hint(tmp_path):
  """Also checks that `python -m vlpretrain.train` applies the gin bindings to `train`."""
  (tmp_path / "no_task.gin").write_text("include 'runs/pretrain.gin'\nMODEL = None\n")
  proc = _run(sys.executable, "-m", "vlpretrain.train", f"--gin_search_paths={tmp_path}",
              "--gin_file=no_task.gin", f"--gin.MODEL_DIR={tmp_path}/run", timeout=120)
  assert proc.returncode != 0
  assert "MIXTURE_OR_TASK_NAME is unset: pass --gin.MIXTURE_OR_TASK_NAME=" in proc.stderr, \
      proc.stderr[-3000:]


@pytest.mark.slow
def test_train_then_resume(tmp_path):
  model_dir = str(tmp_path / "run")
  proc = _run(_console_script(), "train", *TINY_RUN, f"--gin.MODEL_DIR={model_dir}",
              "--gin.TRAIN_STEPS=2")
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert "step 2/2 | loss" in proc.stderr
  assert os.path.isdir(os.path.join(model_dir, "checkpoints", "2", "state"))
  assert os.path.isdir(os.path.join(model_dir, "checkpoints", "2", "dataset"))
  assert os.path.isdir(os.path.join(model_dir, "checkpoints", "2", "sampler"))
  assert glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))
  assert "MIXTURE_OR_TASK_NAME = 'shapes_pretrain'" in open(
      os.path.join(model_dir, "config.gin")).read()
  with open(os.path.join(model_dir, "sampling.jsonl")) as f:
    assert len(f.readlines()) == 2  # One line per log period (1 step here).

  proc = _run(_console_script(), "train", *TINY_RUN, f"--gin.MODEL_DIR={model_dir}",
              "--gin.TRAIN_STEPS=3")
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert "Resuming from checkpoint at step 2" in proc.stderr
  assert "step 3/3 | loss" in proc.stderr and "step 1/" not in proc.stderr
  assert os.path.isdir(os.path.join(model_dir, "checkpoints", "3", "state"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunable")
def test_console_command_restarts_once_with_huge_page_malloc(monkeypatch):
  """The console command re-executes itself with glibc's hugetlb malloc tunable, unless
  GLIBC_TUNABLES is already set (the restarted process) or the user opts out."""
  from vlpretrain import cli  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
  monkeypatch.setattr(sys, "argv", ["/venv/bin/vlpretrain", "train", "--gin_file=x.gin"])
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv(cli.HUGETLB_OPT_OUT, raising=False)
  cli._reexec_with_huge_pages()  # pylint: disable=protected-access
  [(exe, args, env)] = calls
  assert exe == sys.executable
  assert args == [sys.executable, "-m", "vlpretrain.cli", "train", "--gin_file=x.gin"]
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
  cli._reexec_with_huge_pages()  # pylint: disable=protected-access
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setenv(cli.HUGETLB_OPT_OUT, "0")
  cli._reexec_with_huge_pages()  # pylint: disable=protected-access
  assert len(calls) == 1
