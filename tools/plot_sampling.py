r"""Plots a dynamic mixture's per-task sampling over training (seed 001 Fig. 2).

    python tools/plot_sampling.py MODEL_DIR [--out MODEL_DIR/sampling.png]
        [--value share|weight]

Reads MODEL_DIR/sampling.jsonl (one line per log period, written by the trainer when
MIXTURE_OR_TASK_NAME is a dynamic mixture) and draws, per task, the percent of the batch
(`share`, the default, as in the paper's figure) or the sampling weight w_t (`weight`)
over the steps, stacked so each vertical slice is one batch's composition. A resumed run may have logged a step twice; the last line wins.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # Files only; no display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def read_sampling_log(model_dir: str) -> list[dict]:
  """The log's records in step order, one per step (the last written wins)."""
  path = os.path.join(model_dir, "sampling.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No {path}: the trainer writes it only when MIXTURE_OR_TASK_NAME is a dynamic "
        "mixture (e.g. 'shapes_pretrain'). Pass the MODEL_DIR of such a run.")
  by_step = {}
  with open(path) as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        by_step[int(record["step"])] = record
      except (ValueError, KeyError) as e:
        raise ValueError(f"{path}:{line_number} is not a sampling record: {e}") from e
  if not by_step:
    raise ValueError(f"{path} has no records yet: train for at least one log period.")
  return [by_step[s] for s in sorted(by_step)]


def series(records: list[dict], value: str) -> tuple[list[int], dict[str, list[float]]]:
  """Steps and, per task, the percent of the batch or the weight (in percent)."""
  steps = [r["step"] for r in records]
  tasks = list(records[0]["counts"])
  out = {}
  for task in tasks:
    if value == "share":
      out[task] = [100.0 * r["counts"][task] / sum(r["counts"].values()) for r in records]
    else:
      out[task] = [100.0 * r["weights"][task] for r in records]
  return steps, out


def plot(model_dir: str, out: str, value: str = "share") -> str:
  steps, per_task = series(read_sampling_log(model_dir), value)
  fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
  names = sorted(per_task)
  cmap = plt.get_cmap("tab20")
  # Stacked, so the composition of every batch reads as bands summing to 100%.
  ax.stackplot(steps, [per_task[n] for n in names], labels=names,
               colors=[cmap(i % 20) for i in range(len(names))], alpha=0.9)
  ax.set_xlim(steps[0], steps[-1])
  ax.set_ylim(0, 100)
  ax.set_xlabel("training step")
  ax.set_ylabel("percent of the batch (stacked)" if value == "share"
                else "sampling weight w_t, % (stacked)")
  ax.set_title(f"Per-task sampling: {os.path.basename(os.path.normpath(model_dir))}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("model_dir")
  parser.add_argument("--out", default=None, help="PNG path (default MODEL_DIR/"
                      "sampling.png).")
  parser.add_argument("--value", choices=("share", "weight"), default="share")
  args = parser.parse_args(argv)
  out = args.out or os.path.join(args.model_dir, "sampling.png")
  try:
    print(plot(args.model_dir, out, args.value))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
