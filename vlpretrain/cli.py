"""The `vlpretrain` console command: `vlpretrain <subcommand> [flags]`.

    vlpretrain train --gin_file=gin/jar_tiny.gin --gin.MODEL_DIR=/tmp/run
    vlpretrain eval --gin_file=gin/eval_easy_vqa.gin --gin.CHECKPOINT_PATH=... --gin.EVAL_OUTPUT_DIR=...
    vlpretrain train --help      # the subcommand's flags
"""
import contextlib
import importlib
import os
import re
import sys
import tempfile
from typing import Optional, Sequence

# name -> (module with `main(argv)`, one-line description).
SUBCOMMANDS = {
    "train": ("vlpretrain.train", "Train (or resume training) a model configured by gin."),
    "eval": ("vlpretrain.eval",
             "Evaluate checkpoint(s) on a split: greedy decoding + the Tasks' metrics."),
    "infer": ("vlpretrain.infer", "Write one greedy prediction per example as JSONL."),
    "export": ("vlpretrain.export",
               "Export a checkpoint for serving (jax.export + serve.py, no TensorFlow)."),
}

USAGE = """usage: vlpretrain <subcommand> [--gin_file=FILE ...] [--gin_bindings=BINDING ...]
                  [--gin.NAME=VALUE ...] [--gin_search_paths=DIR,...]

subcommands:
{subcommands}

Run `vlpretrain <subcommand> --help` for its flags. Example:
  vlpretrain train --gin_file=gin/jar_tiny.gin --gin.MODEL_DIR=/tmp/jar_tiny
"""


def _usage() -> str:
  width = max(len(name) for name in SUBCOMMANDS)
  lines = [f"  {name:<{width}}  {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
  return USAGE.format(subcommands="\n".join(lines))


# glibc's malloc on transparent huge pages (glibc >= 2.35; older ones ignore the
# tunable). XLA's CPU runtime allocates and frees its buffers every step; on 4 KiB pages
# a jar_tiny fine-tuning step spent a quarter of its time in the kernel on ~83k page
# faults. Measured on 2 cores: train step 528 ms with it, 670-790 ms without
# (docs/cpu_speed.md). glibc reads tunables only at process start, hence the re-exec.
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
HUGETLB_OPT_OUT = "VLPRETRAIN_MALLOC_HUGETLB"


def _reexec_with_huge_pages() -> None:
  """Restarts this console command once with `HUGETLB_TUNABLE` in GLIBC_TUNABLES,
  unless the user set GLIBC_TUNABLES or VLPRETRAIN_MALLOC_HUGETLB=0."""
  if (not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ
      or os.environ.get(HUGETLB_OPT_OUT, "1") == "0"):
    return
  env = dict(os.environ, GLIBC_TUNABLES=HUGETLB_TUNABLE)
  os.execve(sys.executable, [sys.executable, "-m", "vlpretrain.cli"] + sys.argv[1:], env)


# What TensorFlow's and XLA's C++ code writes to stderr while they load on a machine
# without accelerators, on every command: before absl's C++ logging is initialised,
# TF_CPP_MIN_LOG_LEVEL does not reach these lines, so they are filtered here.
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"cudart_stub\.cc.*Could not find cuda drivers|failed call to cuInit|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|"
    r"computation placer already registered")


def _verbosity_requested(args: Sequence[str]) -> bool:
  """--verbosity=N / -v N with N >= 1 (absl's flag), read before absl parses it."""
  for i, arg in enumerate(args):
    value = None
    if arg.startswith(("--verbosity=", "-v=")):
      value = arg.split("=", 1)[1]
    elif arg in ("--verbosity", "-v") and i + 1 < len(args):
      value = args[i + 1]
    if value is not None:
      try:
        return int(value) >= 1
      except ValueError:
        return False
  return False


@contextlib.contextmanager
def _startup_noise_hidden(enabled: bool):
  """Captures file descriptor 2 while the libraries load and writes back every line
  but `_STARTUP_NOISE`; all of it if the import fails."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    failed = True
    try:
      yield
      failed = False
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
        if failed or not _STARTUP_NOISE.search(line):
          sys.stderr.write(line)
      sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Dispatches `vlpretrain <subcommand> ...` to that subcommand's absl main."""
  if argv is None:  # The console command itself (not a call from Python).
    _reexec_with_huge_pages()
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1]
  if name not in SUBCOMMANDS:
    print(f"vlpretrain: unknown subcommand {name!r}.\n\n{_usage()}", file=sys.stderr)
    sys.exit(2)
  with _startup_noise_hidden(not _verbosity_requested(argv[2:])):
    module = importlib.import_module(SUBCOMMANDS[name][0])
    from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
    # TensorFlow probes for GPUs when vlpretrain.data hides them from it.
    import vlpretrain.data  # pylint: disable=g-import-not-at-top,unused-import
  gin_utils.run(module.main, argv=[f"vlpretrain {name}"] + argv[2:])


if __name__ == "__main__":
  main()
