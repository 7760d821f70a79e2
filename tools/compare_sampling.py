r"""Pretrains once per sampling strategy, fine-tunes each the same way, compares.

    python tools/compare_sampling.py --out /tmp/compare \
        [--strategies difficulty,uniform,size,round_robin] [--pretrain_steps 300] \
        [--double uniform] [--finetune_steps 300] [--eval_batch_size 256] \
        [--gin BATCH_SIZE=32] [--json /tmp/compare/results.json]

The small-scale version of seed 001 Table 4 (strategy -> downstream accuracy after the
same pretraining budget) and of seed 000 Table 4 (`--double uniform`: the uniform
mixture again at twice the steps, against difficulty at one budget). Every run is one
vlpretrain command, printed before it starts, with the same seed and step budget:

  1. `vlpretrain train --gin_file=gin/jar_tiny.gin` (the dynamic mixture
     shapes_pretrain) with --gin.dynamic_mixture.make_sampler.strategy='<strategy>';
  2. `vlpretrain train --gin_file=gin/finetune_easy_vqa.gin` from its last checkpoint;
  3. `vlpretrain eval --gin_file=gin/eval_easy_vqa.gin` on the validation split (the
     test split is kept for final numbers), reading `--metric` from metrics.json.

Runs already finished under --out are reused (the trainer resumes by itself), so an
interrupted comparison picks up where it stopped. The table goes to stdout, the results
(with each run's wall time and final pretraining loss) to --json.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from vlpretrain import text_table

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _run(cmd: list[str], log_path: str) -> float:
  """Runs `cmd`, its output to `log_path`; returns wall seconds; raises on failure."""
  print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
  start = time.time()
  with open(log_path, "a", encoding="utf-8") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  if rc:
    raise RuntimeError(f"Command failed (exit {rc}); see its output in {log_path}.")
  return time.time() - start


def _last_loss(log_path: str):
  """The loss of the last 'step N/M | loss X' line in a training log (or None)."""
  loss = None
  with open(log_path, encoding="utf-8") as f:
    for line in f:
      if "| loss " in line and " step " in line:
        loss = float(line.split("| loss ")[1].split()[0])
  return loss


def _read_metric(metrics_path: str, task: str, metric: str) -> float:
  with open(metrics_path, encoding="utf-8") as f:
    result = json.load(f)
  values = result["tasks"][task]["metrics"]
  if metric not in values:
    raise KeyError(f"{metrics_path} has no metric {metric!r} for {task!r} (it has "
                   f"{sorted(values)}); pass --metric.")
  return float(values[metric])


def compare(out: str, strategies: list[str], pretrain_steps: int, double: list[str],
            finetune_steps: int, downstream_task: str, finetune_gin: str,
            eval_gin: str, eval_split: str, metric: str, extra: list[str],
            eval_batch_size: int = 256) -> list[dict]:
  out = os.path.abspath(out)  # The runs' working directory is the repository.
  os.makedirs(out, exist_ok=True)
  exe = [sys.executable, "-m", "vlpretrain.cli"]
  runs = [(s, pretrain_steps) for s in strategies]
  runs += [(s, 2 * pretrain_steps) for s in double]
  results = []
  for strategy, steps in runs:
    name = f"{strategy}_{steps}"
    pre_dir, ft_dir = os.path.join(out, "pretrain", name), os.path.join(out, "finetune",
                                                                         name)
    eval_dir = os.path.join(ft_dir, "eval_" + eval_split)
    for d in (pre_dir, ft_dir):
      os.makedirs(d, exist_ok=True)
    row = {"strategy": strategy, "pretrain_steps": steps,
           "finetune_steps": finetune_steps, "downstream": downstream_task,
           "split": eval_split, "metric": metric}
    pre_log = os.path.join(pre_dir, "log.txt")
    row["pretrain_seconds"] = _run(
        exe + ["train", "--gin_file=gin/jar_tiny.gin", f"--gin.MODEL_DIR={pre_dir}",
               f"--gin.TRAIN_STEPS={steps}",
               f"--gin.dynamic_mixture.make_sampler.strategy='{strategy}'"] + extra,
        pre_log)
    row["pretrain_final_loss"] = _last_loss(pre_log)
    row["finetune_seconds"] = _run(
        exe + ["train", f"--gin_file={finetune_gin}", f"--gin.MODEL_DIR={ft_dir}",
               f"--gin.INITIAL_CHECKPOINT_PATH={os.path.join(pre_dir, 'checkpoints')}",
               f"--gin.TRAIN_STEPS={finetune_steps}",
               "--gin.train_script.train.train_eval_dataset_cfg=None"] + extra,
        os.path.join(ft_dir, "log.txt"))
    row["eval_seconds"] = _run(
        exe + ["eval", f"--gin_file={eval_gin}",
               f"--gin.CHECKPOINT_PATH={os.path.join(ft_dir, 'checkpoints')}",
               f"--gin.EVAL_OUTPUT_DIR={eval_dir}",
               f"--gin.utils.DatasetConfig.split='{eval_split}'"] + extra +
        [f"--gin.BATCH_SIZE={eval_batch_size}"],
        os.path.join(eval_dir + ".log"))
    row["accuracy"] = _read_metric(os.path.join(eval_dir, "metrics.json"),
                                   downstream_task, metric)
    results.append(row)
    print(f"  -> {name}: {downstream_task} {metric} {row['accuracy']:.2f}", flush=True)
  return results


def table(results: list[dict]) -> str:
  head = ("strategy", "pretrain steps", "final pretrain loss", "downstream accuracy",
          "minutes")
  rows = [(r["strategy"], str(r["pretrain_steps"]),
           "-" if r["pretrain_final_loss"] is None else f"{r['pretrain_final_loss']:.3f}",
           f"{r['accuracy']:.2f} ({r['downstream']} {r['split']})",
           f"{(r['pretrain_seconds'] + r['finetune_seconds'] + r['eval_seconds']) / 60:.1f}")
          for r in results]
  return text_table.format_table(head, rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="Directory for every run.")
  parser.add_argument("--strategies", default="difficulty,uniform,size,round_robin")
  parser.add_argument("--pretrain_steps", type=int, default=300)
  parser.add_argument("--double", default="uniform",
                      help="Strategies also pretrained for 2x the steps ('' for none).")
  parser.add_argument("--finetune_steps", type=int, default=300)
  parser.add_argument("--downstream_task", default="easy_vqa")
  parser.add_argument("--finetune_gin", default="gin/finetune_easy_vqa.gin")
  parser.add_argument("--eval_gin", default="gin/eval_easy_vqa.gin")
  parser.add_argument("--eval_split", default="validation")
  parser.add_argument("--metric", default="exact_match")
  parser.add_argument("--eval_batch_size", type=int, default=256)
  parser.add_argument("--json", default=None, help="Default: OUT/results.json.")
  parser.add_argument("--gin", action="append", default=[],
                      help="Extra --gin.NAME=VALUE flags for every run (repeatable).")
  args = parser.parse_args(argv)
  split = lambda s: [x for x in s.split(",") if x]
  start = time.time()
  results = compare(args.out, split(args.strategies), args.pretrain_steps,
                    split(args.double), args.finetune_steps, args.downstream_task,
                    args.finetune_gin, args.eval_gin, args.eval_split, args.metric,
                    [f"--gin.{g}" for g in args.gin], args.eval_batch_size)
  print()
  print(table(results))
  print(f"\nTotal {(time.time() - start) / 60:.1f} minutes.")
  path = args.json or os.path.join(args.out, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"results": results, "total_seconds": time.time() - start}, f, indent=2)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
