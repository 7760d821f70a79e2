"""The embedded shapes world: seeded scenes of coloured shapes, with text about them.

A scene has 1-4 objects (one in 70% of scenes) on a plain, light, slightly tinted
background, as drawings and easy-VQA's images are. Rectangles range from square to three
times as long as wide. Objects have distinct shapes and distinct colours, so every
caption and question below has exactly one right answer, and they never overlap. Their
centres are at least `MIN_DX` apart horizontally, and everything about a scene is listed
**left to right** (by centre x).

Each scene carries:
  image      uint8 (S, S, 3), anti-aliased: an object's inner pixels have its exact
             colour, its edge pixels a blend with the background.
  caption    "a large red circle, a small blue rectangle and a small green cross"
  labels     ("red circle", "blue rectangle", "green cross")
  boxes      float32 (n, 4): normalised (ymin, xmin, ymax, xmax)
  questions  one per type in QUESTION_TYPES, with their answers:
               color  "what color is the circle?"        -> "red"
               shape  "what shape is the blue object?"   -> "rectangle"
               size   "what size is the cross?"          -> "small"
               count  "how many shapes are there?"       -> "three"
               exist  "is there a green diamond?"        -> "yes" / "no" (50/50; half
                      of the "no"s swap two objects' colours, so binding matters)

Scene i of a split comes from its own generator, seeded with "shapes/{seed}/{split}/{i}"
(the same scene at any image size, different scenes in different splits).
`write_tfrecords` stores a split once in the cache dir; `ShapesSource` reads it as a
seqio DataSource.
Settings (size, counts, seed, cache dir) are the gin-configurable `shapes_settings`.
"""
import dataclasses
import json
import os
import random
import shutil
import struct
import tempfile
import zlib
from typing import List, Optional, Sequence, Tuple

import gin
import numpy as np
import seqio
import tensorflow as tf

from vlpretrain.data import bad_data
from vlpretrain.data import file_source

SHAPES = ("circle", "rectangle", "triangle", "diamond", "cross")
COLORS = {  # name -> RGB; all far from each other and from the light backgrounds.
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 190),
    "orange": (250, 140, 30),
    "teal": (20, 140, 140),
    "black": (20, 20, 20),
}
SIZES = {"small": (0.06, 0.11), "large": (0.15, 0.26)}  # half extent range, image fraction.
MAX_ASPECT = 3.0  # a rectangle's long side over its short side is 1 to this.
MIN_HALF = 0.035  # no side shorter than twice this.
NUMBERS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4
OBJECT_COUNT_WEIGHTS = (0.7, 0.1, 0.1, 0.1)  # of 1, 2, 3, 4 objects.
MIN_DX = 0.08  # minimum horizontal distance between object centres.
QUESTION_TYPES = ("color", "shape", "size", "count", "exist")
SPLITS = ("train", "validation")
VERSION = 7  # bump when scenes change: cached TFRecords are keyed by it.
SKIPPED = bad_data.SkipCounter("shapes")  # A damaged cache shard is counted here.


@dataclasses.dataclass(frozen=True)
class ShapesSettings:
  """What the shapes Tasks read when a dataset is first requested (not at import)."""
  image_size: int = 64
  num_train: int = 20000
  num_validation: int = 1000
  seed: int = 0
  cache_dir: Optional[str] = None

  def num_examples(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation}[
        _check_split(split)]

  def resolved_cache_dir(self) -> str:
    return self.cache_dir or default_cache_dir()


@gin.configurable
def shapes_settings(image_size: int = 64, num_train: int = 20000,
                    num_validation: int = 1000, seed: int = 0,
                    cache_dir: Optional[str] = None) -> ShapesSettings:
  """The current settings; bind them in gin, e.g. `shapes_settings.image_size = 32`.

  cache_dir None means $VLPRETRAIN_CACHE, else ~/.cache/vlpretrain.
  """
  return ShapesSettings(image_size, num_train, num_validation, seed, cache_dir)


def default_cache_dir() -> str:
  return os.environ.get("VLPRETRAIN_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "vlpretrain")


def _check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"Unknown shapes split {split!r}; use one of {SPLITS}.")
  return split


# ---------------------------------------------------------------------------
# Scenes.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  color: str
  size: str
  box: Tuple[float, float, float, float]  # normalised ymin, xmin, ymax, xmax.

  @property
  def label(self) -> str:
    return f"{self.color} {self.shape}"

  @property
  def phrase(self) -> str:
    return f"a {self.size} {self.color} {self.shape}"

  @property
  def center(self) -> Tuple[float, float]:
    return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclasses.dataclass(frozen=True)
class Scene:
  objects: Tuple[Obj, ...]  # left to right.
  background: Tuple[int, int, int]
  question_types: Tuple[str, ...]
  questions: Tuple[str, ...]
  answers: Tuple[str, ...]
  image: Optional[np.ndarray] = None  # uint8 (S, S, 3); None if not rendered.

  @property
  def caption(self) -> str:
    phrases = [o.phrase for o in self.objects]
    if len(phrases) == 1:
      return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]

  @property
  def labels(self) -> Tuple[str, ...]:
    return tuple(o.label for o in self.objects)

  @property
  def boxes(self) -> np.ndarray:
    return np.array([o.box for o in self.objects], np.float32).reshape(-1, 4)


def _layout(rng: random.Random) -> Tuple[Obj, ...]:
  """Samples 1-4 non-overlapping objects with distinct shapes and colours."""
  n = rng.choices(range(1, MAX_OBJECTS + 1), OBJECT_COUNT_WEIGHTS)[0]
  while True:  # Restart if placement gets stuck (rare).
    shapes = rng.sample(SHAPES, n)
    colors = rng.sample(list(COLORS), n)
    objects = []
    for shape, color in zip(shapes, colors):
      size = rng.choice(list(SIZES))
      hy = hx = rng.uniform(*SIZES[size])
      if shape == "rectangle":
        short = hy / rng.uniform(1.0, min(MAX_ASPECT, hy / MIN_HALF))
        hy, hx = rng.choice([(hy, short), (short, hy)])
      for _ in range(100):
        cy, cx = rng.uniform(hy, 1 - hy), rng.uniform(hx, 1 - hx)
        box = (cy - hy, cx - hx, cy + hy, cx + hx)
        if all(_apart(box, o.box) for o in objects):
          objects.append(Obj(shape, color, size, box))
          break
      else:
        break
    if len(objects) == n:
      return tuple(sorted(objects, key=lambda o: o.center[1]))


def _apart(a, b, margin=0.02) -> bool:
  if abs((a[1] + a[3]) - (b[1] + b[3])) / 2 < MIN_DX:
    return False
  return (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
          a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _questions(objects, rng) -> List[Tuple[str, str, str]]:
  """One (type, question, answer) per QUESTION_TYPES entry."""
  pick = lambda: rng.choice(objects)
  o = pick()
  qa = [("color", f"what color is the {o.shape}?", o.color)]
  o = pick()
  qa.append(("shape", f"what shape is the {o.color} object?", o.shape))
  o = pick()
  qa.append(("size", f"what size is the {o.shape}?", o.size))
  qa.append(("count", "how many shapes are there?", NUMBERS[len(objects)]))
  if rng.random() < 0.5:
    o = pick()
    qa.append(("exist", f"is there {_a(o.color)} {o.color} {o.shape}?", "yes"))
  else:
    present = {(o.color, o.shape) for o in objects}
    if len(objects) > 1 and rng.random() < 0.5:  # Swap: both words are present.
      a, b = rng.sample(objects, 2)
      color, shape = a.color, b.shape
    else:
      absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
      color, shape = rng.choice(absent)
    qa.append(("exist", f"is there {_a(color)} {color} {shape}?", "no"))
  return qa


def _a(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


# Each shape as a set in box coordinates u (right), v (down), both in [-1, 1].
_SHAPE_MASKS = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "rectangle": lambda u, v: np.ones_like(u * v, bool),
    "triangle": lambda u, v: np.abs(u) <= (v + 1) / 2,  # Apex up.
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1,
    "cross": lambda u, v: (np.abs(u) <= 0.4) | (np.abs(v) <= 0.4),
}


SUPERSAMPLE = 4  # anti-aliasing: SUPERSAMPLE x SUPERSAMPLE points per pixel.


def render(objects: Sequence[Obj], background, image_size: int) -> np.ndarray:
  """Paints each object over its pixels' covered fraction (anti-aliased edges)."""
  image = np.empty((image_size, image_size, 3), np.float32)
  image[:] = background
  n = SUPERSAMPLE
  offsets = (np.arange(n) + 0.5) / n  # sample points inside a pixel.
  for o in objects:
    if o.shape not in _SHAPE_MASKS:
      raise ValueError(f"Unknown shape {o.shape!r}; known: {SHAPES}.")
    (cy, cx) = o.center
    hy, hx = (o.box[2] - o.box[0]) / 2, (o.box[3] - o.box[1]) / 2
    # Only the pixels around the box: (y0, x0) is the box's top-left pixel.
    y0, x0 = (max(0, int(c * image_size) - 1) for c in o.box[:2])
    y1, x1 = (min(image_size, int(c * image_size) + 2) for c in o.box[2:])
    xs = (np.arange(x0, x1)[:, None] + offsets).reshape(-1) / image_size
    ys = (np.arange(y0, y1)[:, None] + offsets).reshape(-1) / image_size
    u, v = ((xs - cx) / hx)[None, :], ((ys - cy) / hy)[:, None]
    inside = (np.abs(u) <= 1) & (np.abs(v) <= 1) & _SHAPE_MASKS[o.shape](u, v)
    cover = inside.reshape(y1 - y0, n, x1 - x0, n).mean((1, 3))[..., None]
    patch = image[y0:y1, x0:x1]
    patch[:] = patch * (1 - cover) + np.float32(COLORS[o.color]) * cover
  return np.round(image).astype(np.uint8)


def make_scene(seed: int, split: str, index: int, image_size: int = 64,
               draw: bool = True) -> Scene:
  """Scene `index` of `split`: a pure function of its arguments."""
  rng = random.Random(f"shapes/{seed}/{split}/{index}")  # Seeded by SHA-512.
  # Light backgrounds and mostly single large-ish objects, as in easy-VQA: on the
  # earlier mid-grey, four-object scenes jar_tiny learnt no shapes in 600 steps
  # (docs/shape_questions_pretraining.md).
  objects = _layout(rng)
  grey = rng.randint(205, 240)
  background = tuple(min(255, grey + rng.randint(-8, 8)) for _ in range(3))
  types, questions, answers = zip(*_questions(objects, rng))
  image = render(objects, background, image_size) if draw else None
  return Scene(objects, background, types, questions, answers, image)


def all_text(num_scenes: int = 2000) -> List[str]:
  """Every word and phrase the world uses, plus sample captions (vocab corpus)."""
  text = [f"a {z} {c} {s}" for z in SIZES for c in COLORS for s in SHAPES]
  text += list(NUMBERS) + ["yes", "no"] + list(SIZES)
  for i in range(num_scenes):
    scene = make_scene(0, "vocab", i, draw=False)
    text += [scene.caption, *scene.labels, *scene.questions, *scene.answers]
  return text


# ---------------------------------------------------------------------------
# TFRecords.
# ---------------------------------------------------------------------------
FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.int64),
    "image": tf.io.FixedLenFeature([], tf.string),  # PNG bytes.
    "caption": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.VarLenFeature(tf.string),
    "sizes": tf.io.VarLenFeature(tf.string),
    "boxes": tf.io.VarLenFeature(tf.float32),  # flattened (n, 4).
    "question_types": tf.io.VarLenFeature(tf.string),
    "questions": tf.io.VarLenFeature(tf.string),
    "answers": tf.io.VarLenFeature(tf.string),
}


def encode_png(image: np.ndarray) -> bytes:
  """uint8 (H, W, 3) -> PNG bytes. Written out by hand: PIL's save costs 4x more."""
  h, w, _ = image.shape
  rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], 1)
  chunk = lambda tag, data: (struct.pack(">I", len(data)) + tag + data +
                             struct.pack(">I", zlib.crc32(tag + data)))
  return (b"\x89PNG\r\n\x1a\n" +
          chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
          chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def to_example(scene: Scene, index: int) -> tf.train.Example:
  b = lambda xs: tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[x.encode() if isinstance(x, str) else x for x in xs]))
  return tf.train.Example(features=tf.train.Features(feature={
      "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
      "image": b([encode_png(scene.image)]),
      "caption": b([scene.caption]),
      "labels": b(scene.labels),
      "sizes": b([o.size for o in scene.objects]),
      "boxes": tf.train.Feature(float_list=tf.train.FloatList(
          value=scene.boxes.reshape(-1).tolist())),
      "question_types": b(scene.question_types),
      "questions": b(scene.questions),
      "answers": b(scene.answers),
  }))


def parse_example(serialized: tf.Tensor) -> dict:
  """Serialized tf.train.Example -> dict of dense tensors (image still PNG)."""
  ex = tf.io.parse_single_example(serialized, FEATURES)
  ex = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v
        for k, v in ex.items()}
  ex["boxes"] = tf.reshape(ex["boxes"], [-1, 4])
  return ex


def write_tfrecords(cache_dir: Optional[str] = None, split: str = "train",
                    num_examples: int = 20000, image_size: int = 64,
                    seed: int = 0, examples_per_shard: int = 2500) -> List[str]:
  """Writes `split` once to TFRecord shards and returns their paths.

  The files live in <cache_dir>/shapes/v<VERSION>/<split>-n<num>-s<size>-seed<seed>/
  with a metadata.json; they are written to a temporary directory that is renamed
  into place, so readers never see a partial split. An existing split with the same
  parameters is reused.
  """
  if num_examples < 1 or image_size < 8:
    raise ValueError(f"Need num_examples >= 1 and image_size >= 8, got "
                     f"num_examples={num_examples}, image_size={image_size}.")
  params = dict(version=VERSION, split=split, num_examples=num_examples,
                image_size=image_size, seed=seed)
  parent = os.path.join(cache_dir or default_cache_dir(), "shapes", f"v{VERSION}")
  final = os.path.join(parent, f"{split}-n{num_examples}-s{image_size}-seed{seed}")
  if not os.path.exists(final):
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=parent)
    try:
      _write_split(tmp, params, examples_per_shard)
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(final):  # A real failure, not a lost race.
        raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  with open(os.path.join(final, "metadata.json")) as f:
    meta = json.load(f)
  if meta["params"] != params:
    raise ValueError(f"{final} holds {meta['params']}, expected {params}; "
                     "delete that directory to regenerate it.")
  return [os.path.join(final, name) for name in meta["files"]]


def _write_split(directory: str, params: dict, examples_per_shard: int):
  n = params["num_examples"]
  num_shards = -(-n // examples_per_shard)
  files = [f"{params['split']}.tfrecord-{i:05d}-of-{num_shards:05d}"
           for i in range(num_shards)]
  for shard, name in enumerate(files):
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
      for i in range(shard * examples_per_shard,
                     min(n, (shard + 1) * examples_per_shard)):
        scene = make_scene(params["seed"], params["split"], i, params["image_size"])
        writer.write(to_example(scene, i).SerializeToString())
  with open(os.path.join(directory, "metadata.json"), "w") as f:
    json.dump({"params": params, "files": files}, f, indent=1)


# ---------------------------------------------------------------------------
# seqio source.
# ---------------------------------------------------------------------------
class ShapesSource(seqio.DataSource):
  """Parsed shapes scenes (see FEATURES); writes the split on first use.

  Per-host sharding (`shard_info`) splits the files when there are at least as many
  files as shards, else the records (after a fixed-order read, so hosts never
  overlap). `shuffle` shuffles the file order; the Task shuffles examples.
  """

  def __init__(self):
    super().__init__(splits=SPLITS, caching_permitted=False)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def num_input_examples(self, split: str) -> int:
    return shapes_settings().num_examples(split)

  def list_shards(self, split: str) -> List[str]:
    s = shapes_settings()
    return write_tfrecords(s.resolved_cache_dir(), _check_split(split),
                           s.num_examples(split), s.image_size, s.seed)

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
    files = self.list_shards(split)
    ds, shard_records = file_source.host_files(files, shard_info, shuffle, seed)
    ds = ds.interleave(
        lambda path: file_source.tfrecord_records(path, SKIPPED).map(lambda i, r: r),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE)
    if shard_records:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
