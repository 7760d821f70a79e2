r"""The fusions of seed 000 Tables 1-2 at the embedded size, over seeds: easy-VQA
accuracy next to forward FLOPs.

    python tools/ablate_fusion.py --out ./runs/ablate_fusion \
        [--rows jar,jar_text_query,concat,cross_attention,perceiver,cotok] \
        [--seeds 0,1,2] [--gin TRAIN_STEPS=300] [--json OUT/results.json]

Every row runs the README's easy-VQA loop with one change of fusion, once per seed,
the same budget for all: pretrain `gin/jar_tiny_shape_questions.gin` (600 steps on
the shapes world's shape questions), fine-tune `gin/finetune_easy_vqa.gin` (1500
steps; only the image tower is carried over, so the fusion is trained on easy-VQA),
and evaluate `gin/eval_easy_vqa.gin` on the whole test split (9,673 questions). The
rows (the tiny model: ViT mini/8 at 64 px, T5 tiny, gin/models/jar_tiny.gin):

    jar              the tiny default: JAR with eq. 1's latent resampling (16 image and
                     16 text latents), K=2 gated iterations (Table 1 "Ours")
    jar_text_query   JAR without eq. 1: the encoded text queries the 64 image tokens
                     through the gated iterations (text-query cross-attention)
    jar_spatial      JAR with TokenLearner resampling instead of latents (Table 2d)
    jar_add          JAR without the tanh gates (Table 2a "add")
    concat           image tokens concatenated to the text before the T5 encoder
    cross_attention  text queries image, 2 layers (ALBEF/BLIP style)
    perceiver        16 latents re-attend to image and text, K=2 (Jaegle et al.)
    cotok            8 TokenLearner tokens recomputed each iteration, K=2

The table prints test exact match (all, yes/no, colour, shape) as mean +- sample
standard deviation over the seeds, and each row's forward GFLOPs per example and
parameter count at this size (XLA cost analysis of the compiled forward pass, inputs
24 / targets 4 tokens; tools/flops_table.py gives the base-size figures).

Each command is printed before it starts, its output in RUN/log.txt; a finished one
leaves RUN/done.json and is reused, an interrupted one resumes from its checkpoint,
so a stopped study continues with the same command. Seeds run seed-major: a stopped
study has every row at the first seeds. `--gin NAME=VALUE` is added to every command
of every row (e.g. a shorter budget: `--gin TRAIN_STEPS=300` applies to both training
stages).
"""
import argparse
import json
import os
import sys

from vlpretrain import study_runs
from vlpretrain import text_table

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
PRETRAIN, FINETUNE, EVAL = ("gin/jar_tiny_shape_questions.gin",
                            "gin/finetune_easy_vqa.gin", "gin/eval_easy_vqa.gin")
FEATURE_LENGTHS = {"inputs": 24, "targets": 4}  # easy-VQA's (gin/finetune_easy_vqa.gin)
ANSWER_TYPES = ("yes/no", "color", "shape")

_JAR = "fusion.JAR."
ROWS = {
    "jar": [],
    "jar_text_query": [_JAR + "resample_image=False", _JAR + "resample_text=False"],
    "jar_spatial": [_JAR + "resampler='spatial'"],
    "jar_add": [_JAR + "gating='add'"],
    "concat": ["FUSION=@fusion.Concat()"],
    "cross_attention": ["FUSION=@fusion.CrossAttention()",
                        "fusion.CrossAttention.num_layers=2"],
    "perceiver": ["FUSION=@fusion.Perceiver()", "fusion.Perceiver.num_latents=16",
                  "fusion.Perceiver.num_iterations=2"],
    "cotok": ["FUSION=@fusion.CoTok()", "fusion.CoTok.num_iterations=2"],
}
DEFAULT_ROWS = ("jar", "jar_text_query", "concat", "cross_attention", "perceiver",
                "cotok")


def test_metrics(eval_dir: str) -> dict:
  """Exact match (%) overall and by answer type from EVAL_DIR/metrics.json."""
  path = os.path.join(eval_dir, "metrics.json")
  with open(path, encoding="utf-8") as f:
    result = json.load(f)
  if result.get("split") != "test":
    raise ValueError(f"{path} evaluates split {result.get('split')!r}, not 'test'.")
  metrics = result["tasks"]["easy_vqa"]["metrics"]
  out = {"exact_match": float(metrics["exact_match"]), "step": result["step"]}
  out.update({kind: float(metrics[f"exact_match/{kind}"]) for kind in ANSWER_TYPES})
  return out


def run_row(out: str, row: str, seed: int, extra: list[str]) -> dict:
  """The loop's three commands for one row and seed; returns its test metrics."""
  cli = [sys.executable, "-m", "vlpretrain.cli"]
  flags = [f"--gin.{b}" for b in ROWS[row] + extra] + [f"--gin.RANDOM_SEED={seed}"]
  base = os.path.join(out, row, f"seed{seed}")
  pre, fine, ev = (os.path.join(base, name) for name in ("pretrain", "finetune", "eval"))
  seconds = study_runs.run_once(
      cli + ["train", f"--gin_file={PRETRAIN}", f"--gin.MODEL_DIR={pre}"] + flags, pre,
      REPO)
  seconds += study_runs.run_once(
      cli + ["train", f"--gin_file={FINETUNE}", f"--gin.MODEL_DIR={fine}",
             f"--gin.INITIAL_CHECKPOINT_PATH={os.path.join(pre, 'checkpoints')}"] + flags,
      fine, REPO)
  seconds += study_runs.run_once(
      cli + ["eval", f"--gin_file={EVAL}", f"--gin.EVAL_OUTPUT_DIR={ev}",
             f"--gin.CHECKPOINT_PATH={os.path.join(fine, 'checkpoints')}"] + flags, ev,
      REPO)
  result = {"row": row, "seed": seed, "seconds": seconds, **test_metrics(ev)}
  print(f"  -> {row} seed {seed}: test exact match {result['exact_match']:.2f} "
        f"(yes/no {result['yes/no']:.2f})", flush=True)
  return result


def row_cost(row: str, extra: list[str]) -> dict:
  """Forward GFLOPs per example and params of the row's fine-tuned model (compile
  only, in this process)."""
  import gin  # pylint: disable=g-import-not-at-top
  from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
  from vlpretrain import model_cost  # pylint: disable=g-import-not-at-top
  gin.clear_config(clear_constants=True)
  gin_utils.parse_gin_flags([os.path.join(REPO, "gin")],
                            [os.path.join(REPO, FINETUNE)], ROWS[row] + extra)
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  stats = model_cost.model_stats(model, FEATURE_LENGTHS)
  return {"gflops": stats["forward_gflops_per_example"], "params": stats["params"],
          "fusion_params": stats["params_by_module"].get("fusion", 0)}


def summarize(results: list[dict], costs: dict) -> list[dict]:
  rows = []
  for row in dict.fromkeys(r["row"] for r in results):
    runs = [r for r in results if r["row"] == row]
    summary = {"row": row, "seeds": [r["seed"] for r in runs], **costs[row],
               "minutes per seed": sum(r["seconds"] for r in runs) / len(runs) / 60}
    for key in ("exact_match",) + ANSWER_TYPES:
      summary[key] = study_runs.mean_sd(r[key] for r in runs)
    rows.append(summary)
  return rows


def table(summaries: list[dict]) -> str:
  head = ("row", "seeds", "test exact match", "yes/no", "colour", "shape",
          "GFLOPs/example", "params", "min/seed")
  pm = lambda v: f"{v[0]:.2f} +- {v[1]:.2f}"
  rows = [(s["row"], ",".join(map(str, s["seeds"])), pm(s["exact_match"]),
           pm(s["yes/no"]), pm(s["color"]), pm(s["shape"]), f"{s['gflops']:.4f}",
           f"{s['params']:,}", f"{s['minutes per seed']:.1f}") for s in summaries]
  return text_table.format_table(head, rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="Directory for every run.")
  parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                      help=f"Some of {list(ROWS)}.")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--json", default=None, help="Default: OUT/results.json.")
  parser.add_argument("--gin", action="append", default=[],
                      help="Extra NAME=VALUE gin bindings for every command (repeatable).")
  args = parser.parse_args(argv)
  rows = [r for r in args.rows.split(",") if r]
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    parser.error(f"--rows: unknown {unknown}; choose from {list(ROWS)}.")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  out = os.path.abspath(args.out)  # The runs' working directory is the repository.
  costs = {row: row_cost(row, args.gin) for row in rows}
  results = []
  for seed in seeds:
    for row in rows:
      results.append(run_row(out, row, seed, args.gin))
  summaries = summarize(results, costs)
  print()
  print(table(summaries))
  path = args.json or os.path.join(out, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"runs": results, "summary": summaries}, f, indent=2)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
