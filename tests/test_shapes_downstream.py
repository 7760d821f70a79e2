"""Shapes downstream stand-ins (tasks/shapes_downstream.py): every example is checked
against its scene with logic written independently of vlpretrain.data.shapes_downstream
(questions are parsed back and answered from the scene's objects; videos are checked on
the rendered pixels)."""
import re

import numpy as np
import pytest
import seqio

from vlpretrain import metrics
from vlpretrain.data import shapes
from vlpretrain.data import shapes_downstream as sd
from vlpretrain.data import video
import vlpretrain.tasks  # pylint: disable=unused-import

LENGTHS = {"inputs": 32, "targets": 16}
NUM = 100  # small_shapes: 100 validation scenes.


def _find(objects, color, shape):
  found = [o for o in objects if o.color == color and o.shape == shape]
  assert len(found) == 1, (color, shape, objects)
  return found[0]


def _cx(o):
  return (o.box[1] + o.box[3]) / 2


def _on_side(objects, ref, side):
  return [o for o in objects if (_cx(o) < _cx(ref) if side == "left" else _cx(o) > _cx(ref))]


def gqa_answer(objects, question):
  """The right answer to a shapes_gqa question, from the scene."""
  m = re.fullmatch(r"what (color|shape) is (?:the shape )?(left|right) of the (\w+) (\w+)\?",
                   question)
  if m:
    others = _on_side(objects, _find(objects, *m.group(3, 4)), m.group(2))
    assert len(others) == 1, question
    return others[0].color if m.group(1) == "color" else others[0].shape
  m = re.fullmatch(r"is the (\w+) (\w+) (left|right) of the (\w+) (\w+)\?", question)
  if m:
    a, b = _find(objects, *m.group(1, 2)), _find(objects, *m.group(4, 5))
    return "yes" if a in _on_side(objects, b, m.group(3)) else "no"
  m = re.fullmatch(r"how many shapes are (left|right) of the (\w+) (\w+)\?", question)
  if m:
    return shapes.NUMBERS[len(_on_side(objects, _find(objects, *m.group(2, 3)),
                                       m.group(1)))]
  m = re.fullmatch(r"is there an? (\w+) shape (left|right) of the (\w+) (\w+)\?", question)
  assert m, question
  others = _on_side(objects, _find(objects, *m.group(3, 4)), m.group(2))
  return "yes" if any(o.color == m.group(1) for o in others) else "no"


def entailment_label(objects, hypothesis):
  """The right label of a shapes_entailment hypothesis, from the scene."""
  if re.fullmatch(r"the \w+ \w+ (will move (left|right|up|down)|is made of \w+)",
                  hypothesis):
    return "neutral"
  verdict = lambda ok: "entailment" if ok else "contradiction"
  m = re.fullmatch(r"there is an? (\w+) (\w+)", hypothesis)
  if m and m.group(2) != "shape":
    return verdict(any((o.color, o.shape) == m.groups() for o in objects))
  m = re.fullmatch(r"there (?:is|are) (\w+) shapes?", hypothesis)
  if m:
    return verdict(shapes.NUMBERS.index(m.group(1)) == len(objects))
  m = re.fullmatch(r"the (\w+) (\w+) is (small|large)", hypothesis)
  if m:
    return verdict(_find(objects, *m.group(1, 2)).size == m.group(3))
  m = re.fullmatch(r"the (\w+) (\w+) is (left|right) of the (\w+) (\w+)", hypothesis)
  assert m, hypothesis
  a, b = _find(objects, *m.group(1, 2)), _find(objects, *m.group(4, 5))
  return verdict(a in _on_side(objects, b, m.group(3)))


def referent(objects, expression):
  """The one object a shapes_refer expression names."""
  if expression in ("the leftmost shape", "the rightmost shape"):
    assert len(objects) >= 2
    return objects[0] if "left" in expression else objects[-1]
  words = expression.split()[1:]
  match = [o for o in objects if words in ([o.color, o.shape], [o.shape],
                                           [o.color, "shape"])]
  assert len(match) == 1, (expression, objects)
  return match[0]


def _dataset(name, n=NUM):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(LENGTHS, split="validation", shuffle=False)
  vocab = task.output_features["inputs"].vocabulary
  out = []
  for ex in ds.take(n).as_numpy_iterator():
    # Tokens decode back to the text, with one EOS at the end.
    for key in ("inputs", "targets"):
      assert ex[key][-1] == 1 and 1 not in ex[key][:-1]
      assert vocab.decode(ex[key][:-1].tolist()) == ex[f"{key}_pretokenized"].decode()
    out.append(ex)
  assert len(out) == n
  scenes = [shapes.make_scene(0, "validation", i, image_size=64) for i in range(n)]
  return out, scenes


def _check_image(ex, scene):
  np.testing.assert_allclose(ex["image"], scene.image / 127.5 - 1, atol=1e-6)


def test_whole_pieces_in_the_shapes_vocabulary(small_shapes):
  vocab = seqio.get_mixture_or_task("shapes_gqa").output_features["inputs"].vocabulary
  text = ("question: what color is the shape left of the orange diamond? hypothesis: "
          "the teal cross will move down contradiction neutral entailment refer: the "
          "leftmost shape 0 7 42 99 which way does the black triangle move?")
  assert len(vocab.encode(text)) == len(text.replace("?", " ?").replace(":", " :").split())


def test_gqa_answers_are_right_for_the_scene(small_shapes):
  examples, scenes = _dataset("shapes_gqa")
  kinds = set()
  for ex, scene in zip(examples, scenes):
    _check_image(ex, scene)
    question = ex["inputs_pretokenized"].decode()
    assert question.startswith("question: ")
    assert gqa_answer(scene.objects, question[len("question: "):]) == (
        ex["targets_pretokenized"].decode()), question
    kinds.add(question.split()[1:3].__repr__())
  assert len(kinds) >= 4, kinds
  assert seqio.get_mixture_or_task("shapes_gqa").metric_fns[0] is metrics.exact_match
  # The first example exactly (scene 0 of validation).
  assert (examples[0]["inputs_pretokenized"], examples[0]["targets_pretokenized"]) == (
      b"question: what shape is left of the blue rectangle?", b"diamond")


def test_entailment_labels_are_right_for_the_scene(small_shapes):
  examples, scenes = _dataset("shapes_entailment")
  labels = []
  for ex, scene in zip(examples, scenes):
    _check_image(ex, scene)
    hypothesis = ex["inputs_pretokenized"].decode()[len("hypothesis: "):]
    label = ex["targets_pretokenized"].decode()
    assert entailment_label(scene.objects, hypothesis) == label, hypothesis
    labels.append(label)
  assert sorted(set(labels)) == ["contradiction", "entailment", "neutral"]
  assert min(labels.count(l) for l in set(labels)) >= 20


def test_referring_box_round_trips_to_the_object(small_shapes):
  examples, scenes = _dataset("shapes_refer")
  forms = set()
  task = seqio.get_mixture_or_task("shapes_refer")
  for ex, scene in zip(examples, scenes):
    _check_image(ex, scene)
    expression = ex["inputs_pretokenized"].decode()[len("refer: "):]
    obj = referent(scene.objects, expression)
    forms.add(expression.split()[-1] == "shape")
    text = ex["targets_pretokenized"].decode()
    want = [round(v * 99) for v in (obj.box[2], obj.box[3], obj.box[0], obj.box[1])]
    assert max(abs(int(t) - w) for t, w in zip(text.split(), want)) <= 1, (text, want)
    assert text == metrics.box_to_text(ex["box"].tolist())
    # 1/99 quantisation: IoU > 0.8 even for the thinnest rectangles (0.07 wide).
    assert metrics.iou(metrics.text_to_box(text), obj.box) > 0.8
    # Metric path: target -> the exact box, prediction -> parsed text.
    target = task.postprocess_fn(text, example=ex, is_target=True)
    assert target == pytest.approx(list(obj.box), abs=1e-6)
  assert forms == {True, False}
  targets = [task.postprocess_fn("", example=ex, is_target=True) for ex in examples[:2]]
  predictions = [task.postprocess_fn(ex["targets_pretokenized"].decode())
                 for ex in examples[:1]] + [task.postprocess_fn("not a box")]
  assert task.metric_fns[0](targets, predictions) == {"box_accuracy": 50.0}


def _moves(image, obj, size):
  """The direction the object's pixels move from the first tile to the last."""
  colour = np.asarray(shapes.COLORS[obj.color]) / 127.5 - 1
  centres = []
  for t in (0, sd.NUM_FRAMES - 1):
    r, c = divmod(t, 2)
    tile = image[r * size:(r + 1) * size, c * size:(c + 1) * size]
    ys, xs = np.nonzero(np.all(np.abs(tile - colour) < 1e-6, axis=-1))
    assert len(ys), (obj, t)
    centres.append((ys.mean(), xs.mean()))
  dy, dx = np.subtract(centres[1], centres[0])
  if abs(dx) > abs(dy):
    return "right" if dx > 0 else "left"
  return "down" if dy > 0 else "up"


def test_videoqa_answers_follow_the_rendered_motion(small_shapes):
  examples, scenes = _dataset("shapes_videoqa", n=40)
  _, size = video.grid(sd.NUM_FRAMES, 64)
  assert size == 32
  answers = set()
  for ex, scene in zip(examples, scenes):
    image = ex["image"]
    assert image.shape == (64, 64, 3)
    moves = {o.label: _moves(image, o, size) for o in scene.objects}
    question = ex["inputs_pretokenized"].decode()
    answer = ex["targets_pretokenized"].decode()
    m = re.fullmatch(r"question: which way does the (\w+ \w+) move\?", question)
    if m:
      assert moves[m.group(1)] == answer, (question, moves)
    else:
      m = re.fullmatch(r"question: how many shapes move (\w+)\?", question)
      assert m, question
      assert shapes.NUMBERS[list(moves.values()).count(m.group(1))] == answer
    answers.add(answer)
    # Frame 0 shows the scene's objects where the scene has them.
    for o in scene.objects:
      y, x = (int(v * size) for v in o.center)
      np.testing.assert_allclose(image[y, x], np.asarray(shapes.COLORS[o.color]) / 127.5 - 1,
                                 atol=1e-6)
  assert len(answers) >= 4, answers


def test_stand_ins_are_not_in_the_pretraining_mixture():
  pretrain = {t.name for t in seqio.get_mixture_or_task("shapes_pretrain").tasks}
  assert not pretrain & {"shapes_gqa", "shapes_entailment", "shapes_refer",
                         "shapes_videoqa"}
