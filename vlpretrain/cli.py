"""The `vlpretrain` console command: `vlpretrain <subcommand> [flags]`.

    vlpretrain train --gin_file=gin/jar_tiny.gin --gin.MODEL_DIR=/tmp/run
    vlpretrain eval --gin_file=gin/eval_easy_vqa.gin --gin.CHECKPOINT_PATH=... --gin.EVAL_OUTPUT_DIR=...
    vlpretrain train --help      # the subcommand's flags
"""
import importlib
import os
import sys
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
# faults. Measured on 2 cores: train step 528 ms with it, 670-790 ms without (README,
# "Speed on a CPU"). glibc reads tunables only at process start, hence the re-exec.
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
  module = importlib.import_module(SUBCOMMANDS[name][0])
  from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.run(module.main, argv=[f"vlpretrain {name}"] + argv[2:])


if __name__ == "__main__":
  main()
