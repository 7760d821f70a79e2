"""Look at what a seqio Task or Mixture feeds the model: an image grid and a JSONL file.

    python tools/show_task.py shapes_cap --n 16 --out /tmp/show_shapes_cap
    python tools/show_task.py shapes_pretrain --n 16 --out /tmp/show_pretrain \
        --gin_bindings="shapes.shapes_settings.image_size = 128"

Writes
  OUT/grid.png        the first N examples (split --split, unshuffled: the same ones
                      every time) in a grid; under each image its decoded `inputs` and
                      `targets` text and, for a Mixture, the Task it came from.
  OUT/examples.jsonl  one JSON object per example: index, inputs, targets, task (the
                      Task's name; for a Task, its own name), image_shape.

Examples are the Task's output features (after all its preprocessors, before the
feature converter): images float32 in [-1, 1] (shown as (x + 1) * 127.5), text decoded
with the feature's vocabulary (EOS dropped). A Mixture's examples are drawn from its
Tasks with the Mixture's rates (`tf.data.Dataset.sample_from_datasets`, seed --seed),
as seqio mixes them. Tasks register by importing `vlpretrain.tasks` (and --module).
`--gin_file`/`--gin_bindings`/`--gin.NAME=VALUE` work as in training.
"""
import importlib
import json
import math
import os
import sys
import textwrap
from typing import List, Optional, Sequence

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # Data only: stay off accelerators.

from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import seqio

from vlpretrain import gin_utils

_N = flags.DEFINE_integer("n", 16, "Number of examples to show.")
_OUT = flags.DEFINE_string("out", None, "Output directory (created).")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of a Mixture's task sampling.")
_MODULE = flags.DEFINE_string("module", None, "Extra module registering Tasks.")

CELL = 192  # Minimum width of a grid cell (images are upscaled by an integer factor).
TEXT_LINES, LINE_HEIGHT, MARGIN = 6, 12, 4


def read_examples(name: str, n: int, split: str = "train", seed: int = 0) -> List[dict]:
  """The first `n` examples of Task/Mixture `name` as dicts with numpy values + 'task'."""
  if n < 1:
    raise ValueError(f"--n must be >= 1, got {n}.")
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    raise ValueError(f"{name!r} is not a registered seqio Task or Mixture (after "
                     "importing vlpretrain.tasks); pass --module=<module that "
                     "registers it>.") from None
  if isinstance(provider, seqio.Mixture):
    tasks = list(provider.tasks)
    weights = [float(provider.get_rate(t)) for t in tasks]
  else:
    tasks, weights = [provider], [1.0]
  datasets = [
      task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
      .map(lambda ex, i=i: {**ex, "_task": i}) for i, task in enumerate(tasks)]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = datasets[0] if len(datasets) == 1 else tf.data.Dataset.sample_from_datasets(
      datasets, weights=[w / sum(weights) for w in weights], seed=seed)
  examples = []
  for ex in ds.take(n).as_numpy_iterator():
    task = tasks[int(ex.pop("_task"))]
    ex["task"] = task.name
    for key in ("inputs", "targets"):
      vocab = task.output_features[key].vocabulary
      ex[key + "_text"] = vocab.decode([int(t) for t in ex[key]])
    examples.append(ex)
  if not examples:
    raise ValueError(f"{name!r} split {split!r} yielded no examples.")
  return examples


def to_uint8(image: np.ndarray) -> np.ndarray:
  """float [-1, 1] (H, W, 3) -> uint8 [0, 255]."""
  return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0,
                 255).astype(np.uint8)


def cell_size(image_hw: Sequence[int]):
  """(width, height, scale) of one grid cell for images of (H, W)."""
  h, w = image_hw
  scale = max(1, CELL // max(h, w))
  width = max(w * scale, CELL) + 2 * MARGIN
  return width, h * scale + 2 * MARGIN + TEXT_LINES * LINE_HEIGHT, scale


def draw_grid(examples: Sequence[dict], show_task: bool) -> PIL.Image.Image:
  """Images in a ceil(sqrt(n))-column grid, each with its text underneath."""
  h, w = examples[0]["image"].shape[:2]
  cell_w, cell_h, scale = cell_size((h, w))
  cols = math.ceil(math.sqrt(len(examples)))
  rows = math.ceil(len(examples) / cols)
  grid = PIL.Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
  draw = PIL.ImageDraw.Draw(grid)
  font = PIL.ImageFont.load_default()
  chars = max(10, (cell_w - 2 * MARGIN) // 6)
  for i, ex in enumerate(examples):
    x0, y0 = (i % cols) * cell_w + MARGIN, (i // cols) * cell_h + MARGIN
    image = PIL.Image.fromarray(to_uint8(ex["image"]))
    if image.size != (w, h):
      raise ValueError(f"Example {i} has image shape {ex['image'].shape}, the first has "
                       f"{examples[0]['image'].shape}: a Task must resize its images.")
    grid.paste(image.resize((w * scale, h * scale), PIL.Image.NEAREST), (x0, y0))
    lines = _cell_lines(ex, chars, show_task)
    for j, line in enumerate(lines):
      draw.text((x0, y0 + h * scale + 2 + j * LINE_HEIGHT), line, fill=(0, 0, 0),
                font=font)
  return grid


def _cell_lines(ex: dict, chars: int, show_task: bool) -> List[str]:
  """At most TEXT_LINES lines: the task, then the target, then the input get the room
  they need in that order; a cut text ends in '...' (the JSONL has it whole)."""
  task = [f"[{ex['task']}]"] if show_task else []
  parts = [textwrap.wrap(f"in: {ex['inputs_text']}", chars) or ["in:"],
           textwrap.wrap(f"out: {ex['targets_text']}", chars) or ["out:"]]
  room = TEXT_LINES - len(task)
  out_room = max(1, room - 1)
  if len(parts[1]) > out_room:
    parts[1] = parts[1][:out_room - 1] + [parts[1][out_room - 1][:chars - 3] + "..."]
  in_room = max(1, room - len(parts[1]))
  if len(parts[0]) > in_room:
    parts[0] = parts[0][:in_room - 1] + [parts[0][in_room - 1][:chars - 3] + "..."]
  return parts[0] + parts[1] + task


def show(name: str, n: int = 16, out_dir: str = ".", split: str = "train",
         seed: int = 0) -> List[dict]:
  """Writes out_dir/grid.png and out_dir/examples.jsonl; returns the JSONL records."""
  examples = read_examples(name, n, split, seed)
  is_mixture = isinstance(seqio.get_mixture_or_task(name), seqio.Mixture)
  os.makedirs(out_dir, exist_ok=True)
  draw_grid(examples, is_mixture).save(os.path.join(out_dir, "grid.png"))
  records = [{"index": i, "inputs": ex["inputs_text"], "targets": ex["targets_text"],
              "task": ex["task"], "image_shape": list(ex["image"].shape)}
             for i, ex in enumerate(examples)]
  with open(os.path.join(out_dir, "examples.jsonl"), "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  return records


def main(argv):
  if len(argv) != 2:
    raise ValueError("Usage: show_task.py TASK_OR_MIXTURE --out DIR [--n 16] "
                     f"[--split train]; got arguments {argv[1:]}.")
  if not _OUT.value:
    raise ValueError("Pass --out=<directory> for grid.png and examples.jsonl.")
  import vlpretrain.tasks  # pylint: disable=g-import-not-at-top,unused-import
  if _MODULE.value:
    importlib.import_module(_MODULE.value)
  gin_utils.parse_gin_flags(flags.FLAGS.gin_search_paths, flags.FLAGS.gin_file,
                            flags.FLAGS.gin_bindings, require_gin_file=False)
  records = show(argv[1], _N.value, _OUT.value, _SPLIT.value, _SEED.value)
  for r in records:
    print(f"{r['index']:>3} [{r['task']}] {r['inputs']!r} -> {r['targets']!r}")
  print(f"Wrote {os.path.join(_OUT.value, 'grid.png')} and examples.jsonl "
        f"({len(records)} examples, image {records[0]['image_shape']}).")
  sys.stdout.flush()


if __name__ == "__main__":
  gin_utils.run(main)
