"""Examples per second of the whole training input pipeline of a seqio Task or Mixture.

    python tools/bench_input.py --mixture shapes_pretrain --image_size 64 \
        --batch_size 32 --steps 200 --repeats 3 --json /tmp/bench_64.json

The dataset is built exactly as training reads it (design.md "Tests and benchmarks"):
`utils.get_dataset` with a `utils.DatasetConfig` (the train split, shuffled, seed 0,
one host) and the model's feature converter `features.VLEncDecFeatureConverter`, then
batched. After `--warmup` batches (buffers filled, autotuning settled), each of
`--repeats` timed runs pulls `--steps` batches and converts them to numpy, as the
trainer does; the table prints each run and the JSON holds every figure. Wall-clock
numbers depend on the machine's load: compare runs made on the same machine.

`--image_size` binds `shapes.shapes_settings.image_size` (the shapes world's size; other
Tasks take their size from their own gin bindings). The shapes data is rendered once per
size into TFRecords under $VLPRETRAIN_CACHE: that first build is timed separately as
`setup_seconds`. `--gin_file`/`--gin_bindings`/`--gin.NAME=VALUE` work as in training.
"""
import json
import os
import resource
import statistics
import sys
import time
from typing import Dict, Optional, Sequence

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # Input only: stay off accelerators.

from absl import flags  # pylint: disable=g-import-not-at-top
import gin

from vlpretrain import gin_utils
from vlpretrain import utils
from vlpretrain.data import features

_MIXTURE = flags.DEFINE_string("mixture", None, "seqio Task or Mixture name.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Binds shapes.shapes_settings.image_size (shapes Tasks).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size (one host).")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed batches per repeat.")
_WARMUP = flags.DEFINE_integer("warmup", 20, "Untimed batches before timing.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs (the machine may be shared).")
_INPUTS = flags.DEFINE_integer("inputs_length", 32, "Task feature length of inputs.")
_TARGETS = flags.DEFINE_integer("targets_length", 32, "Task feature length of targets.")
_JSON = flags.DEFINE_string("json", None, "Write the results to this JSON file.")


def bench(mixture: str, batch_size: int = 32, steps: int = 100, warmup: int = 20,
          repeats: int = 3, split: str = "train",
          feature_lengths: Optional[Dict[str, int]] = None) -> dict:
  """Times the batched training pipeline of `mixture` (gin already parsed)."""
  if min(batch_size, steps, repeats) < 1 or warmup < 0:
    raise ValueError(f"Need batch_size, steps, repeats >= 1 and warmup >= 0, got "
                     f"{batch_size}, {steps}, {repeats}, {warmup}.")
  lengths = dict(feature_lengths or {"inputs": 32, "targets": 32})
  cfg = utils.DatasetConfig(mixture_or_task_name=mixture, task_feature_lengths=lengths,
                            split=split, batch_size=batch_size, shuffle=True, seed=0)
  start = time.perf_counter()
  ds = utils.get_dataset(cfg, 0, 1, features.VLEncDecFeatureConverter)
  it = ds.as_numpy_iterator()
  batch = next(it)  # Builds the pipeline (and renders shapes data if not cached).
  setup = time.perf_counter() - start
  for _ in range(warmup):
    batch = next(it)
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      batch = next(it)
    runs.append(steps * batch_size / (time.perf_counter() - start))
  return {
      "mixture": mixture,
      "split": split,
      "image_shape": list(batch["image"].shape[1:]),
      "batch_size": batch_size,
      "steps": steps,
      "warmup": warmup,
      "repeats": repeats,
      "feature_lengths": lengths,
      "examples_per_second": statistics.median(runs),
      "examples_per_second_runs": runs,
      "batches_per_second": statistics.median(runs) / batch_size,
      "setup_seconds": setup,
      "cpu_count": os.cpu_count(),
      "load_average": list(os.getloadavg()),
      # Peak resident memory of this process (shuffle buffers hold decoded images).
      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      "model_features": sorted(batch),
  }


def print_table(result: dict) -> None:
  shape = "x".join(str(d) for d in result["image_shape"])
  print(f"{'mixture':<20}{'image':>12}{'batch':>7}{'steps':>7}{'ex/s':>10}"
        f"{'batch/s':>9}")
  for i, ex_s in enumerate(result["examples_per_second_runs"]):
    print(f"{result['mixture'] + f' #{i + 1}':<20}{shape:>12}{result['batch_size']:>7}"
          f"{result['steps']:>7}{ex_s:>10.1f}{ex_s / result['batch_size']:>9.2f}")
  print(f"median {result['examples_per_second']:.1f} ex/s; setup "
        f"{result['setup_seconds']:.1f}s; peak RSS {result['peak_rss_gib']:.2f} GiB; "
        f"{result['cpu_count']} CPUs, load average {result['load_average'][0]:.2f}")


def run(mixture: str, image_size: Optional[int] = None, gin_files: Sequence[str] = (),
        gin_bindings: Sequence[str] = (), gin_search_paths: Sequence[str] = (".",),
        json_path: Optional[str] = None, **kwargs) -> dict:
  """Parses gin (files, bindings, then --image_size), benchmarks, writes JSON."""
  import vlpretrain.tasks  # pylint: disable=g-import-not-at-top,unused-import
  bindings = list(gin_bindings)
  if image_size is not None:
    bindings.append(f"shapes.shapes_settings.image_size = {int(image_size)}")
  gin_utils.parse_gin_flags(gin_search_paths, gin_files, bindings,
                            require_gin_file=False)
  result = bench(mixture, **kwargs)
  result.update(gin_files=list(gin_files), gin_bindings=bindings)
  if json_path:
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
  return result


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}")
  if not _MIXTURE.value:
    raise ValueError("Pass --mixture=<seqio Task or Mixture>, e.g. shapes_pretrain.")
  result = run(_MIXTURE.value, _IMAGE_SIZE.value, flags.FLAGS.gin_file,
               flags.FLAGS.gin_bindings, flags.FLAGS.gin_search_paths, _JSON.value,
               batch_size=_BATCH.value, steps=_STEPS.value, warmup=_WARMUP.value,
               repeats=_REPEATS.value,
               feature_lengths={"inputs": _INPUTS.value, "targets": _TARGETS.value})
  print_table(result)
  sys.stdout.flush()


if __name__ == "__main__":
  gin_utils.run(main)
