"""Downstream stand-ins on the shapes world: GQA-style questions, entailment, referring
expressions and videos of moving shapes (design.md "Embedded data").

Pure Python over a scene's objects (`shapes.Obj`, left to right); tasks/shapes_downstream.py
runs them inside tf.data on the objects stored in the shapes TFRecords. Every function
takes a `random.Random`; `scene_rng(kind, scene_id)` seeds one per (task, scene), so an
example is a pure function of its scene. Objects in a scene have distinct colours and
distinct shapes and their centres are at least `shapes.MIN_DX` apart horizontally, so
"the red circle", "the circle", "the red shape" each name exactly one object, and "left
of" / "right of" (by centre x) are never ties.

  gqa_question       compositional relation questions, one per example (GQA, seed 001
                     sec. 4 / Table 1):
                       "what color is the shape left of the red circle?"  -> "blue"
                       "what shape is right of the red circle?"           -> "cross"
                         (asked only when exactly one object is on that side)
                       "is the red circle left of the blue diamond?"      -> "yes"/"no"
                       "how many shapes are left of the red circle?"      -> "two"
                       "is there a green shape right of the red circle?"  -> "yes"/"no"
  entailment_pair    a hypothesis about the scene and its label (SNLI-VE):
                       entailment / contradiction: true / false statements about the
                       objects, their sizes, the count or a left-right relation;
                       neutral: statements a still image cannot decide (where an
                       object will move, what it is made of).
  referring_expression  "the red circle" / "the circle" / "the red shape" / "the
                     leftmost shape" / "the rightmost shape" -> the object; the task's
                     target is `metrics.box_to_text(object.box)` (RefCOCO, seed 001
                     app. B "Box-As-Text").
  video              NUM_FRAMES frames of the scene's objects, each moving STEP per frame
                     in its own direction (left/right/up/down), never leaving the frame;
                     questions "which way does the red circle move?" -> "left" and
                     "how many shapes move up?" -> "one" (VideoQA, seed 001 app. B.1).
"""
import random
from typing import List, Sequence, Tuple

from vlpretrain import metrics
from vlpretrain.data import shapes

Obj = shapes.Obj
SIDES = ("left", "right")
DIRECTIONS = ("left", "right", "up", "down")
MATERIALS = ("wood", "metal", "glass", "paper")
ENTAILMENT, NEUTRAL, CONTRADICTION = "entailment", "neutral", "contradiction"
NUM_FRAMES = 4  # Tiled 2 x 2 (tasks/shapes_downstream.py).
STEP = 0.06  # Displacement per frame, as a fraction of the image.


def scene_rng(kind: str, scene_id) -> random.Random:
  """The generator of task `kind` for scene `scene_id` (seeded by SHA-512 of both)."""
  return random.Random(f"shapes_downstream/{kind}/{scene_id}")


def _x(o: Obj) -> float:
  return o.center[1]


def _side(objects: Sequence[Obj], ref: Obj, side: str) -> List[Obj]:
  """The objects left (or right) of `ref` by centre x, in left-to-right order."""
  if side == "left":
    return [o for o in objects if _x(o) < _x(ref)]
  return [o for o in objects if _x(o) > _x(ref)]


def _a(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _the(o: Obj) -> str:
  return f"the {o.color} {o.shape}"


# --------------------------------------------------------------------- GQA-style
def gqa_question(objects: Sequence[Obj], rng: random.Random) -> Tuple[str, str, str]:
  """(type, question, answer): one relation question about the scene (see module doc)."""
  candidates = []  # (type, question, answer)
  for ref in objects:
    for side in SIDES:
      others = _side(objects, ref, side)
      if len(others) == 1:
        candidates.append(("relate_color",
                           f"what color is the shape {side} of {_the(ref)}?",
                           others[0].color))
        candidates.append(("relate_shape", f"what shape is {side} of {_the(ref)}?",
                           others[0].shape))
      candidates.append(("count_side", f"how many shapes are {side} of {_the(ref)}?",
                         shapes.NUMBERS[len(others)]))
  kinds = sorted({c[0] for c in candidates}) + ["compare", "exist_side"] * (
      len(objects) >= 2)
  kind = rng.choice(kinds)
  if kind == "compare":
    a, b = rng.sample(list(objects), 2)
    side = rng.choice(SIDES)
    answer = "yes" if a in _side(objects, b, side) else "no"
    return kind, f"is {_the(a)} {side} of {_the(b)}?", answer
  if kind == "exist_side":
    ref, side = rng.choice(list(objects)), rng.choice(SIDES)
    others = _side(objects, ref, side)
    if others and rng.random() < 0.5:
      color = rng.choice(others).color
    else:
      color = rng.choice([c for c in shapes.COLORS if c != ref.color])
    answer = "yes" if any(o.color == color for o in others) else "no"
    return kind, f"is there {_a(color)} {color} shape {side} of {_the(ref)}?", answer
  return rng.choice([c for c in candidates if c[0] == kind])


# --------------------------------------------------------------------- entailment
def entailment_pair(objects: Sequence[Obj], rng: random.Random) -> Tuple[str, str]:
  """(hypothesis, label), the label uniform over the three (SNLI-VE's classes)."""
  label = rng.choice((ENTAILMENT, NEUTRAL, CONTRADICTION))
  o = rng.choice(list(objects))
  if label == NEUTRAL:
    if rng.random() < 0.5:
      return f"{_the(o)} will move {rng.choice(DIRECTIONS)}", label
    return f"{_the(o)} is made of {rng.choice(MATERIALS)}", label
  true = label == ENTAILMENT
  kinds = ["exist", "size", "count"] + ["relation"] * (len(objects) >= 2)
  kind = rng.choice(kinds)
  if kind == "exist":
    if true:
      color, shape = o.color, o.shape
    else:
      present = {(x.color, x.shape) for x in objects}
      color, shape = rng.choice([(c, s) for c in shapes.COLORS for s in shapes.SHAPES
                                 if (c, s) not in present])
    return f"there is {_a(color)} {color} {shape}", label
  if kind == "size":
    size = o.size if true else next(s for s in shapes.SIZES if s != o.size)
    return f"{_the(o)} is {size}", label
  if kind == "count":
    n = len(objects) if true else rng.choice(
        [k for k in range(1, shapes.MAX_OBJECTS + 1) if k != len(objects)])
    if n == 1:
      return "there is one shape", label
    return f"there are {shapes.NUMBERS[n]} shapes", label
  a, b = rng.sample(list(objects), 2)
  side = "left" if _x(a) < _x(b) else "right"
  if not true:
    side = "right" if side == "left" else "left"
  return f"{_the(a)} is {side} of {_the(b)}", label


# ----------------------------------------------------------- referring expressions
def referring_expression(objects: Sequence[Obj], rng: random.Random) -> Tuple[str, int]:
  """(expression, index of the object it names); the expression is unique in the scene."""
  i = rng.randrange(len(objects))
  o = objects[i]
  forms = [_the(o), f"the {o.shape}", f"the {o.color} shape"]
  if len(objects) >= 2 and i in (0, len(objects) - 1):
    forms.append("the leftmost shape" if i == 0 else "the rightmost shape")
  return rng.choice(forms), i


def box_text(o: Obj) -> str:
  """The referring target: the box as "ymax xmax ymin xmin" in 100 bins."""
  return metrics.box_to_text(o.box)


# -------------------------------------------------------------------------- video
def _moved(o: Obj, direction: str, distance: float) -> Obj:
  dy, dx = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[direction]
  b = o.box
  box = (b[0] + dy * distance, b[1] + dx * distance, b[2] + dy * distance,
         b[3] + dx * distance)
  return Obj(o.shape, o.color, o.size, box)


def _inside(o: Obj) -> bool:
  return min(o.box) >= 0.0 and max(o.box) <= 1.0


def _disjoint(a: Obj, b: Obj) -> bool:
  return (a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or
          a.box[3] <= b.box[1] or b.box[3] <= a.box[1])


def motion(objects: Sequence[Obj], rng: random.Random,
           num_frames: int = NUM_FRAMES) -> Tuple[str, ...]:
  """A direction per object such that every object stays in the frame; tries to keep
  objects apart in every frame (up to 50 draws; rarely, the last draw overlaps)."""
  total = STEP * (num_frames - 1)
  for _ in range(50):
    directions = tuple(rng.choice([d for d in DIRECTIONS if _inside(_moved(o, d, total))])
                       for o in objects)
    frames = video_frames(objects, directions, num_frames)
    if all(_disjoint(a, b) for frame in frames
           for i, a in enumerate(frame) for b in frame[i + 1:]):
      break
  return directions


def video_frames(objects: Sequence[Obj], directions: Sequence[str],
                 num_frames: int = NUM_FRAMES) -> List[Tuple[Obj, ...]]:
  """The objects in each frame: frame t moves each object t * STEP its way."""
  return [tuple(_moved(o, d, t * STEP) for o, d in zip(objects, directions))
          for t in range(num_frames)]


def video_question(objects: Sequence[Obj], directions: Sequence[str],
                   rng: random.Random) -> Tuple[str, str]:
  """(question, answer) about the motion."""
  if rng.random() < 0.6:
    i = rng.randrange(len(objects))
    return f"which way does {_the(objects[i])} move?", directions[i]
  direction = rng.choice(DIRECTIONS)
  count = sum(d == direction for d in directions)
  return f"how many shapes move {direction}?", shapes.NUMBERS[count]


# ------------------------------------------------------------------ vocabulary text
def all_text(num_scenes: int = 1000) -> List[str]:
  """Sample questions, answers, hypotheses, labels, expressions and box numbers (for
  the shapes vocabulary's corpus); box numbers 0..99 also appear on their own."""
  text = [str(i) for i in range(100) for _ in range(20)]
  text += [ENTAILMENT, NEUTRAL, CONTRADICTION, *DIRECTIONS, *MATERIALS] * 50
  for i in range(num_scenes):
    objects = shapes.make_scene(0, "vocab", i, draw=False).objects
    rng = scene_rng("vocab", i)
    text += list(gqa_question(objects, rng)[1:])
    text += list(entailment_pair(objects, rng))
    expression, index = referring_expression(objects, rng)
    text += [expression, box_text(objects[index])]
    directions = motion(objects, rng)
    text += list(video_question(objects, directions, rng))
    labels = [o.label for o in objects]
    text += [f"does {labels[0]} exist?", f"which of {', '.join(labels)} exist?"]
  return text
