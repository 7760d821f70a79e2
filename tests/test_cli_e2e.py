"""The real console script: help, unknown subcommands, hints, the malloc restart.

Training through it, twice from the repository root, is in test_documented_commands.py.
"""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
