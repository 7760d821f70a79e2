"""Parameter count and forward GFLOPs of the model a gin file defines.

    python tools/model_stats.py --gin_file=gin/jar_base.gin [--json]

Parameters come from `jax.eval_shape` of the network's init (no weights are made);
FLOPs from XLA's cost analysis of the compiled teacher-forced forward pass (image
encoder, text encoder, fusion and decoder over TASK_FEATURE_LENGTHS) for one example at
the gin's image size. With --json the last line printed is one JSON object.
"""
import json
import os
import sys
import time

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # Stats only: stay off accelerators.

from absl import flags
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from vlpretrain import gin_utils
from vlpretrain import models

_JSON = flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Examples in the analysed forward pass.")


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def model_stats(model: models.VLEncoderDecoderModel, feature_lengths, batch_size=1):
  """{'params', 'params_by_module', 'forward_gflops_per_example', ...} for a model."""
  module = model.module
  size = module.vit_config.image_size
  inputs = (jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch_size, feature_lengths["inputs"]), jnp.int32),
            jax.ShapeDtypeStruct((batch_size, feature_lengths["targets"]), jnp.int32))
  variables = jax.eval_shape(lambda *x: module.init(jax.random.PRNGKey(0), *x), *inputs)
  params = nn.unbox(variables["params"])

  start = time.time()
  forward = jax.jit(lambda p, *x: module.apply({"params": p}, *x))
  compiled = forward.lower(params, *inputs).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      "params": _count(params),
      "params_by_module": {k: _count(v) for k, v in params.items()},
      "forward_gflops_per_example": float(cost["flops"]) / batch_size / 1e9,
      "image_size": size,
      "feature_lengths": dict(feature_lengths),
      "fusion": type(module.fusion).__name__,
      "compile_seconds": round(time.time() - start, 1),
  }


def main(argv):
  del argv
  gin_utils.parse_gin_flags_from_command_line()
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()  # Built by gin.
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  stats = model_stats(model, lengths, _BATCH.value)
  stats["gin_files"] = flags.FLAGS.gin_file
  print(f"{'module':<24}{'parameters':>16}")
  for name, count in stats["params_by_module"].items():
    print(f"{name:<24}{count:>16,}")
  print(f"{'total':<24}{stats['params']:>16,}")
  print(f"forward GFLOPs per example: {stats['forward_gflops_per_example']:.2f} "
        f"(image {stats['image_size']}px, lengths {stats['feature_lengths']}, "
        f"fusion {stats['fusion']})")
  if _JSON.value:
    print(json.dumps(stats))
  sys.stdout.flush()


if __name__ == "__main__":
  gin_utils.run(main)
