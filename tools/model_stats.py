"""Parameter count and forward GFLOPs of the model a gin file defines.

    python tools/model_stats.py --gin_file=gin/jar_base.gin [--json]
    python tools/model_stats.py --gin_file=gin/models/vlmo_base.gin \
        --gin.TASK_FEATURE_LENGTHS="{'text': 40}"

Parameters come from `jax.eval_shape` of the network's init (no weights are made);
FLOPs from XLA's cost analysis of a compiled forward pass for one example at the gin's
image size: for the encoder-decoder the teacher-forced pass (image encoder, text
encoder, fusion and decoder over TASK_FEATURE_LENGTHS); for an encoder model (VLMo)
the network with every head once (image-only, text-only and two fusion passes), the
dual-encoder embedding of one image and one text, and one fusion pass. With --json the last line printed is one JSON
object.
"""
import json
import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # Stats only: stay off accelerators.

from absl import flags
import gin

from vlpretrain import gin_utils
from vlpretrain import model_cost

_JSON = flags.DEFINE_bool("json", False, "Print one JSON object as the last line.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Examples in the analysed forward pass.")


def main(argv):
  del argv
  gin_utils.parse_gin_flags_from_command_line()
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()  # Built by gin.
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  if hasattr(model.module, "vit_config"):
    stats = model_cost.model_stats(model, lengths, _BATCH.value)
  else:
    stats = model_cost.encoder_model_stats(model, lengths, _BATCH.value)
  stats["gin_files"] = flags.FLAGS.gin_file
  print(f"{'module':<24}{'parameters':>16}")
  for name, count in stats["params_by_module"].items():
    print(f"{name:<24}{count:>16,}")
  print(f"{'total':<24}{stats['params']:>16,}")
  for name, count in stats.get("params_by_expert", {}).items():
    print(f"{'  all layers: ' + name:<24}{count:>16,}")
  print(f"forward GFLOPs per example: {stats['forward_gflops_per_example']:.2f} "
        f"(image {stats['image_size']}px, lengths {stats['feature_lengths']}, "
        f"fusion {stats['fusion']})")
  if _JSON.value:
    print(json.dumps(stats))
  sys.stdout.flush()


if __name__ == "__main__":
  gin_utils.run(main)
