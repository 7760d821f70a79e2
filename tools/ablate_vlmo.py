r"""VLMo's ablations (seed 002 Tables 3 and 5) at the embedded size, over seeds.

    python tools/ablate_vlmo.py --out ./runs/ablate_vlmo \
        [--rows itc,itc_mlm,itc_itm,std_trm,multiway_no_vl_experts,multiway,stagewise] \
        [--seeds 0,1,2] [--gin TRAIN_STEPS=300] [--json OUT/results.json]

Every row pretrains `gin/vlmo_tiny.gin` (the shapes world's image-caption pairs, batch
64, 600 steps) with one change, once per seed, and reads the image->text (TR) and
text->image (IR) Recall@1/5/10 of the last step's retrieval eval on the 1000 held-out
validation scenes (MODEL_DIR/inference_eval/metrics_history.json):

  Table 5 (pretraining tasks and Transformer; all rows start from random init here,
  where the paper starts from ViT-Base):
    itc                     objectives ('itc',)
    itc_mlm                 objectives ('itc', 'mlm')
    itc_itm                 objectives ('itc', 'itm')
    std_trm                 ITC + ITM + MLM, one FFN shared by all modalities (ViLT)
    multiway_no_vl_experts  ITC + ITM + MLM, Multiway without the VL-FFN layers
    multiway                ITC + ITM + MLM, Multiway (the default: VLMo)
  Table 3 (stagewise pretraining; `multiway` is its from-scratch counterpart):
    stagewise               gin/vlmo_tiny_stage1_images.gin (masked-pixel regression),
                            then gin/vlmo_tiny_stage2_texts.gin (text MLM, attention
                            and V-FFN frozen), then gin/vlmo_tiny_stagewise.gin, each
                            warm-started from the previous stage's last checkpoint.

The paper's columns are the mean of R@1, R@5 and R@10 (its "TR" and "IR" for Flickr30k);
the table prints those, R@1 of both directions and chance, each as mean +- sample
standard deviation over the seeds. The paper's classification column (NLVR2) is not
run: fine-tuning every row would multiply the cost; `gin/finetune_vlmo_easy_vqa.gin`
fine-tunes any of the runs by hand.

Each run is one `vlpretrain train` command, printed before it starts, its output in
RUN/log.txt. A finished run leaves RUN/done.json and is reused; an interrupted one is
resumed by the trainer from its last checkpoint, so a long study can be stopped and
restarted with the same command. The table goes to stdout, the per-seed results to
--json.
"""
import argparse
import json
import os
import statistics
import sys

from vlpretrain import study_runs
from vlpretrain import text_table

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TASK = "shapes_pairs"
RECALLS = ("i2t_recall@1", "i2t_recall@5", "i2t_recall@10",
           "t2i_recall@1", "t2i_recall@5", "t2i_recall@10")

_OBJECTIVES = "--gin.vlmo_models.VLMoModel.objectives="
# Each row: its stages, each (gin file, extra gin flags); the last stage is evaluated.
ROWS = {
    "itc": [("gin/vlmo_tiny.gin", [_OBJECTIVES + "('itc',)"])],
    "itc_mlm": [("gin/vlmo_tiny.gin", [_OBJECTIVES + "('itc','mlm')"])],
    "itc_itm": [("gin/vlmo_tiny.gin", [_OBJECTIVES + "('itc','itm')"])],
    "std_trm": [("gin/vlmo_tiny.gin", ["--gin.multiway.multiway_config.multiway=False"])],
    "multiway_no_vl_experts": [
        ("gin/vlmo_tiny.gin", ["--gin.multiway.multiway_config.num_vl_layers=0"])],
    "multiway": [("gin/vlmo_tiny.gin", [])],
    "stagewise": [("gin/vlmo_tiny_stage1_images.gin", []),
                  ("gin/vlmo_tiny_stage2_texts.gin", []),
                  ("gin/vlmo_tiny_stagewise.gin", [])],
}


def last_retrieval_metrics(model_dir: str) -> tuple[int, dict]:
  """The (step, metrics) of the latest retrieval eval in MODEL_DIR/inference_eval."""
  path = os.path.join(model_dir, "inference_eval", "metrics_history.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the run did not evaluate retrieval "
                            "(train_script.train.infer_eval_dataset_cfg).")
  with open(path, encoding="utf-8") as f:
    history = json.load(f)
  step = max(history, key=int)
  return int(step), history[step]["tasks"][TASK]["metrics"]


def run_row(out: str, row: str, seed: int, extra: list[str]) -> dict:
  exe = [sys.executable, "-m", "vlpretrain.cli", "train"]
  seconds, previous = 0.0, None
  stages = ROWS[row]
  for i, (gin_file, flags) in enumerate(stages):
    name = f"seed{seed}" if len(stages) == 1 else f"seed{seed}_stage{i + 1}"
    model_dir = os.path.join(out, row, name)
    warm = ([f"--gin.INITIAL_CHECKPOINT_PATH={os.path.join(previous, 'checkpoints')}"]
            if previous else [])
    seconds += study_runs.run_once(
        exe + [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={model_dir}",
               f"--gin.RANDOM_SEED={seed}"] + warm + flags + extra, model_dir, REPO)
    previous = model_dir
  step, metrics = last_retrieval_metrics(previous)
  result = {"row": row, "seed": seed, "step": step, "seconds": seconds}
  result.update({k: float(metrics[k]) for k in RECALLS})
  result.update({"chance_" + k: float(metrics["chance_" + k]) for k in RECALLS})
  print(f"  -> {row} seed {seed} step {step}: TR R@1 {result['i2t_recall@1']:.2f}, "
        f"IR R@1 {result['t2i_recall@1']:.2f}", flush=True)
  return result


def summarize(results: list[dict]) -> list[dict]:
  """Per row: mean and sample sd over seeds of TR, IR (mean of R@1/5/10) and R@1."""
  rows = []
  for row in dict.fromkeys(r["row"] for r in results):
    runs = [r for r in results if r["row"] == row]
    values = {
        "TR": [statistics.mean(r[f"i2t_recall@{k}"] for k in (1, 5, 10)) for r in runs],
        "IR": [statistics.mean(r[f"t2i_recall@{k}"] for k in (1, 5, 10)) for r in runs],
        "TR R@1": [r["i2t_recall@1"] for r in runs],
        "IR R@1": [r["t2i_recall@1"] for r in runs],
    }
    summary = {"row": row, "seeds": [r["seed"] for r in runs],
               "steps": sorted({r["step"] for r in runs}),
               "chance TR R@1": runs[0]["chance_i2t_recall@1"],
               "chance IR R@1": runs[0]["chance_t2i_recall@1"],
               "minutes per seed": statistics.mean(r["seconds"] for r in runs) / 60}
    for name, v in values.items():
      summary[name] = study_runs.mean_sd(v)
    rows.append(summary)
  return rows


def table(summaries: list[dict]) -> str:
  head = ("row", "seeds", "TR (R@1/5/10)", "IR (R@1/5/10)", "TR R@1", "IR R@1",
          "chance R@1 TR / IR", "min/seed")
  pm = lambda v: f"{v[0]:.2f} +- {v[1]:.2f}"
  rows = [(s["row"], ",".join(map(str, s["seeds"])), pm(s["TR"]), pm(s["IR"]),
           pm(s["TR R@1"]), pm(s["IR R@1"]),
           f"{s['chance TR R@1']:.2f} / {s['chance IR R@1']:.2f}",
           f"{s['minutes per seed']:.1f}") for s in summaries]
  return text_table.format_table(head, rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="Directory for every run.")
  parser.add_argument("--rows", default=",".join(ROWS), help=f"Some of {list(ROWS)}.")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--json", default=None, help="Default: OUT/results.json.")
  parser.add_argument("--gin", action="append", default=[],
                      help="Extra --gin.NAME=VALUE flags for every run (repeatable).")
  args = parser.parse_args(argv)
  rows = [r for r in args.rows.split(",") if r]
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    parser.error(f"--rows: unknown {unknown}; choose from {list(ROWS)}.")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  out = os.path.abspath(args.out)  # The runs' working directory is the repository.
  extra = [f"--gin.{g}" for g in args.gin]
  results = []
  for seed in seeds:  # Seed-major: a stopped study has every row at the first seeds.
    for row in rows:
      results.append(run_row(out, row, seed, extra))
  summaries = summarize(results)
  print()
  print(table(summaries))
  path = args.json or os.path.join(out, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"runs": results, "summary": summaries}, f, indent=2)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
