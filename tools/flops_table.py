r"""Forward GFLOPs and parameters of every fusion of seed 000 Tables 1-2 and Fig. 3.

    python tools/flops_table.py [--json=OUT.json] [--png=OUT.png] [--tables=1,2,fig3]

Every row is `gin/models/jar_base.gin` (ViT-B/32 at 224 + T5 v1.1 base, JAR N=64 K=4)
with one change, the fusion chosen by gin exactly as a user would
(`--gin.FUSION=@fusion.Perceiver()`). GFLOPs per example come from XLA's cost analysis
of the compiled teacher-forced forward pass (inputs 64 / targets 64 tokens, nothing is
run: `vlpretrain/model_cost.py`, as tools/model_stats.py); "non-image" is the same pass minus the ViT alone, i.e.
what the fusion, the T5 encoder and the decoder cost. Fig. 3 repeats concat,
cross-attention, Perceiver, CoTok and JAR at 224, 288, 384 and 480 px for ViT-B/32 and
ViT-B/16.

Table 1's baselines are seed 000's own implementations and not specified further;
ours are in vlpretrain/network/fusion/ (their docstrings say what is our reading).
CoTok selects 8 tokens per iteration (the co-tokenization paper's number for each
stream), Perceiver and JAR 64 latents, all four iterate 4 times.
"""
import json
import os
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # Compile only: stay off accelerators.

from absl import app
from absl import flags
import gin
import jax
import jax.numpy as jnp

from vlpretrain import gin_utils
from vlpretrain import model_cost
from vlpretrain import text_table

_JSON = flags.DEFINE_string("json", None, "Write every row to this JSON file.")
_PNG = flags.DEFINE_string("png", None, "Plot Fig. 3 (GFLOPs against image size) here.")
_TABLES = flags.DEFINE_list("tables", ["1", "2", "fig3"], "Which of 1, 2, fig3.")

BASE_GIN = "models/jar_base.gin"
LENGTHS = {"inputs": 64, "targets": 64}

_JAR = "FUSION = @fusion.JAR()"
FUSIONS = {  # Name -> the bindings that choose it (on top of models/jar_base.gin).
    "concat": ["FUSION = @fusion.Concat()"],
    "cross_attention": ["FUSION = @fusion.CrossAttention()",
                        "fusion.CrossAttention.num_layers = 4"],
    "perceiver": ["FUSION = @fusion.Perceiver()", "fusion.Perceiver.num_latents = 64",
                  "fusion.Perceiver.num_iterations = 4"],
    "cotok": ["FUSION = @fusion.CoTok()", "fusion.CoTok.num_tokens = 8",
              "fusion.CoTok.num_iterations = 4"],
    "jar": [_JAR],
}
# (table, row label, bindings). JAR's own settings are models/jar_base.gin's.
ROWS = [
    ("1", "Perceiver", FUSIONS["perceiver"]),
    ("1", "CoTok*", FUSIONS["cotok"]),
    ("1", "Ours", FUSIONS["jar"]),
    ("2a", "Concat", FUSIONS["concat"]),
    ("2a", "Cross-attention (text queries)", FUSIONS["cross_attention"]),
    ("2a", "Ours add", [_JAR, "fusion.JAR.gating = 'add'"]),
    ("2a", "Ours gated", [_JAR]),
    ("2b", "N = 16", [_JAR, "fusion.JAR.num_latents = 16"]),
    ("2b", "N = 32", [_JAR, "fusion.JAR.num_latents = 32"]),
    ("2b", "N = 64", [_JAR]),
    ("2c", "K = 1", [_JAR, "fusion.JAR.num_iterations = 1"]),
    ("2c", "K = 2", [_JAR, "fusion.JAR.num_iterations = 2"]),
    ("2c", "K = 4", [_JAR]),
    ("2d", "Spatial", [_JAR, "fusion.JAR.resampler = 'spatial'"]),
    ("2d", "Latent", [_JAR]),
    ("2e", "None", [_JAR, "fusion.JAR.iterative_combine = 'none'"]),
    ("2e", "Residual", [_JAR, "fusion.JAR.iterative_combine = 'residual'"]),
    ("2e", "Weighted", [_JAR]),
    ("2f", "1 layer per iteration", [_JAR]),
    ("2f", "2 layers per iteration", [_JAR, "fusion.JAR.num_layers = 2"]),
    ("2f", "3 layers per iteration", [_JAR, "fusion.JAR.num_layers = 3"]),
]
FIG3_SIZES = (224, 288, 384, 480)
FIG3_VITS = ("B/32", "B/16")


def measure(bindings, vit: str = "B/32", size: int = 224) -> dict:
  """Params, forward GFLOPs and the ViT's GFLOPs of jar_base with `bindings` and the
  ViT variant and image size given."""
  gin.clear_config(clear_constants=True)
  gin_utils.parse_gin_flags([], [BASE_GIN], [
      f"VIT_VARIANT = '{vit}'", f"IMAGE_SIZE = {size}"] + list(bindings))
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  stats = model_cost.model_stats(model, LENGTHS)
  size = model.module.vit_config.image_size
  image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  module = model.module
  vit_params = jax.eval_shape(
      lambda x: module.init(jax.random.PRNGKey(0), x, method=_image_tower), image)
  tower = jax.jit(lambda p, x: module.apply(p, x, method=_image_tower))
  vit_gflops = model_cost.compiled_gflops(tower.lower(vit_params, image).compile())
  total = stats["forward_gflops_per_example"]
  return {"params": stats["params"], "gflops": total, "image_tower_gflops": vit_gflops,
          "non_image_gflops": total - vit_gflops,
          "fusion_params": stats["params_by_module"].get("fusion", 0),
          "image_size": size, "vit": vit,
          "compile_seconds": stats["compile_seconds"]}


def _image_tower(module, image):
  return module.image_encoder(image)


def _table(results) -> str:
  head = ["table", "row", "GFLOPs", "non-image GFLOPs", "params (M)",
          "fusion params (M)"]
  return text_table.format_table(head, [
      [r["table"], r["row"], f"{r['gflops']:.2f}", f"{r['non_image_gflops']:.2f}",
       f"{r['params'] / 1e6:.1f}", f"{r['fusion_params'] / 1e6:.1f}"]
      for r in results])


def _plot(fig3, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # Files only; no display.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(FIG3_VITS), figsize=(6 * len(FIG3_VITS), 4.5))
  for ax, vit in zip(list(axes), FIG3_VITS):
    for method in FUSIONS:
      points = sorted((r["image_size"], r["gflops"]) for r in fig3
                      if r["vit"] == vit and r["method"] == method)
      ax.plot(*zip(*points), marker="o", label=method)
    ax.set(title=f"ViT-{vit} + T5 base", xlabel="image size (px)",
           ylabel="forward GFLOPs per example", xticks=FIG3_SIZES)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  start, out = time.time(), {"tables": [], "fig3": []}
  if {"1", "2"} & set(_TABLES.value):
    for table, row, bindings in ROWS:
      if table[0] in _TABLES.value:
        result = dict(table=table, row=row, bindings=bindings, **measure(bindings))
        out["tables"].append(result)
        print(f"  {table} {row}: {result['gflops']:.2f} GFLOPs", flush=True)
    print(_table(out["tables"]))
  if "fig3" in _TABLES.value:
    for vit in FIG3_VITS:
      for size in FIG3_SIZES:
        for method, bindings in FUSIONS.items():
          result = dict(method=method, **measure(bindings, vit, size))
          out["fig3"].append(result)
          print(f"  fig3 {vit} {size}px {method}: {result['gflops']:.2f} GFLOPs",
                flush=True)
    rows = []
    for vit in FIG3_VITS:
      for size in FIG3_SIZES:
        by_method = {r["method"]: r["gflops"] for r in out["fig3"]
                     if r["vit"] == vit and r["image_size"] == size}
        rows.append([vit, str(size)] + [f"{by_method[m]:.1f}" for m in FUSIONS] +
                    [f"{by_method['jar'] / by_method['concat']:.2f}"])
    print(text_table.format_table(["ViT", "px"] + list(FUSIONS) + ["jar / concat"],
                                  rows))
    if _PNG.value:
      _plot(out["fig3"], _PNG.value)
      print(f"Plot: {_PNG.value}")
  out["seconds"] = round(time.time() - start, 1)
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
    print(f"JSON: {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
