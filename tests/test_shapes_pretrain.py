"""The shapes pretraining Tasks (tasks/shapes_pretrain.py) and the shapes_pretrain mixture.

One pass over the mixture (through VLEncDecFeatureConverter) gives examples of all nine
Tasks; building the pipelines dominates the time, so the new Tasks' examples are checked
there rather than Task by Task. Each example's scene is found by its image (the 200
train scenes have distinct images, rendered exactly: no anti-aliasing), and its decoded
inputs/targets are checked against that scene's caption and labels.
"""
import math
import re

import numpy as np
import pytest
import seqio

from vlpretrain.data import features
from vlpretrain.data import shapes
import vlpretrain.tasks  # pylint: disable=unused-import  # registers shapes_cap, _vqa
from vlpretrain.tasks import shapes_pretrain

LENGTHS = {"inputs": 32, "targets": 32}
NEW_TASKS = ("shapes_cmp", "shapes_mlm", "shapes_itm", "shapes_list_objects",
             "shapes_object_exists", "shapes_objects_exist_any", "shapes_which_objects")
ALL_TASKS = ("shapes_cap", "shapes_vqa") + NEW_TASKS
SENTINEL = re.compile(r"<extra_id_(\d+)>")


def family(inputs: str) -> str:
  """Which Task an example comes from, by the form of its inputs."""
  patterns = [
      ("shapes_cap", r"caption:"), ("shapes_vqa", r"question: .+\?"),
      ("shapes_cmp", r"complete:( .+)?"), ("shapes_mlm", r"mlm: .*<extra_id_0>.*"),
      ("shapes_itm", r"match: .+"), ("shapes_list_objects", r"list all objects"),
      ("shapes_object_exists", r"does [a-z]+ [a-z]+ exist\?"),
      ("shapes_objects_exist_any", r"does [a-z]+ [a-z]+, [a-z]+ [a-z]+ or [a-z]+ [a-z]+ exist\?"),
      ("shapes_which_objects", r"which of [a-z]+ [a-z]+, [a-z]+ [a-z]+ and [a-z]+ [a-z]+ exist\?"),
  ]
  found = [name for name, p in patterns if re.fullmatch(p, inputs)]
  assert len(found) == 1, (inputs, found)
  return found[0]


def test_label_set_is_every_colour_shape_pair():
  labels = shapes_pretrain.SHAPES_LABEL_SET
  assert len(labels) == len(set(labels)) == len(shapes.COLORS) * len(shapes.SHAPES) == 40
  assert "red circle" in labels and "black cross" in labels
  scenes = [shapes.make_scene(0, "train", i, draw=False) for i in range(50)]
  assert all(l in labels for s in scenes for l in s.labels)


NUM_EXAMPLES = 300  # About 33 per Task.


def _scenes_by_image():
  scenes = [shapes.make_scene(0, "train", i) for i in range(200)]
  by_image = {s.image.tobytes(): s for s in scenes}
  assert len(by_image) == 200
  return by_image, {s.caption for s in scenes}


def check_cmp(examples, captions):
  for inputs, targets, scene in examples:
    words, first = scene.caption.split(), inputs[len("complete:"):].split()
    last = targets.split()
    assert first + last == words, (scene.caption, inputs, targets)
    n, k = len(words), len(last)
    lo, hi = max(math.ceil(0.2 * n), 1), min(math.floor(0.6 * n), n - 1)
    assert lo <= k <= hi, (scene.caption, inputs, targets)


def check_mlm(examples, captions):
  for inputs, targets, scene in examples:
    words = inputs[len("mlm: "):].split()
    spans = SENTINEL.split(targets)  # "", "0", span 0, "1", span 1, ..., "m", "".
    assert spans[0] == "" and spans[-1] == "", targets
    ids = [int(x) for x in spans[1::2]]
    fill = dict(zip(ids, [s.split() for s in spans[2::2]]))
    assert ids == list(range(len(ids))) and all(fill[i] for i in ids[:-1]), targets
    in_ids = [int(SENTINEL.fullmatch(w).group(1)) for w in words if SENTINEL.fullmatch(w)]
    assert in_ids == ids[:-1], (inputs, targets)
    rebuilt = [x for w in words for x in (fill[int(SENTINEL.fullmatch(w).group(1))]
                                          if SENTINEL.fullmatch(w) else [w])]
    assert rebuilt == scene.caption.split(), (scene.caption, inputs, targets)
    n, m = len(rebuilt), sum(len(fill[i]) for i in ids[:-1])
    assert 1 <= m <= max(math.floor(0.25 * n), 1), (inputs, targets)


def check_itm(examples, captions):
  for inputs, targets, scene in examples:
    caption = inputs[len("match: "):]
    assert caption in captions, inputs
    assert targets == ("yes" if caption == scene.caption else "no"), (scene.caption, inputs)
  return [t for _, t, _ in examples]


def check_list_objects(examples, captions):
  for inputs, targets, scene in examples:
    assert inputs == "list all objects"
    assert targets.split(", ") == list(scene.labels), (scene.labels, targets)


def check_object_exists(examples, captions):
  for inputs, targets, scene in examples:
    obj = re.fullmatch(r"does (.+) exist\?", inputs).group(1)
    assert obj in shapes_pretrain.SHAPES_LABEL_SET, inputs
    assert targets == ("yes" if obj in scene.labels else "no"), (scene.labels, inputs)
  return [t for _, t, _ in examples]


def check_objects_exist_any(examples, captions):
  for inputs, targets, scene in examples:
    asked = re.fullmatch(r"does (.+), (.+) or (.+) exist\?", inputs).groups()
    assert len(set(asked)) == 3, inputs
    assert set(asked) <= set(shapes_pretrain.SHAPES_LABEL_SET), inputs
    want = "yes" if set(asked) & set(scene.labels) else "no"
    assert targets == want, (scene.labels, inputs, targets)
  return [t for _, t, _ in examples]


def check_which_objects(examples, captions):
  for inputs, targets, scene in examples:
    asked = re.fullmatch(r"which of (.+), (.+) and (.+) exist\?", inputs).groups()
    assert len(set(asked)) == 3, inputs
    assert set(asked) <= set(shapes_pretrain.SHAPES_LABEL_SET), inputs
    present = [o for o in asked if o in scene.labels]
    assert targets == (", ".join(present) if present else "none"), (scene.labels, inputs)
  return [str(min(targets.count(",") + 1, 2)) if targets != "none" else "0"
          for _, targets, _ in examples]


CHECKS = {"shapes_cmp": check_cmp, "shapes_mlm": check_mlm, "shapes_itm": check_itm,
          "shapes_list_objects": check_list_objects,
          "shapes_object_exists": check_object_exists,
          "shapes_objects_exist_any": check_objects_exist_any,
          "shapes_which_objects": check_which_objects}


def test_tasks_registered_like_shapes_cap():
  cap = seqio.get_mixture_or_task("shapes_cap")
  for name in NEW_TASKS:
    task = seqio.get_mixture_or_task(name)
    assert task.output_features == cap.output_features
    assert isinstance(task.source, shapes.ShapesSource)
    assert task.preprocessors[1:] == cap.preprocessors[1:]  # Image, tokenize, EOS.
  mixture = seqio.get_mixture_or_task("shapes_pretrain")
  assert sorted(t.name for t in mixture.tasks) == sorted(ALL_TASKS)
  assert len({mixture.get_rate(t) for t in mixture.tasks}) == 1  # Equal rates.


def test_mixture_examples_agree_with_their_scenes(small_shapes):
  mixture = seqio.get_mixture_or_task("shapes_pretrain")
  # shuffle=False: the mixture still picks Tasks at random (seeded); shuffling each
  # Task's examples too would fill nine 1000-example buffers first (slow on 2 cores).
  ds = mixture.get_dataset(LENGTHS, split="train", shuffle=False, seed=3,
                           num_epochs=None)
  conv = features.VLEncDecFeatureConverter(pack=False)(ds, LENGTHS)
  assert {k: tuple(v.shape) for k, v in conv.element_spec.items()} == {
      "encoder_input_tokens": (32,), "decoder_target_tokens": (32,),
      "decoder_input_tokens": (32,), "decoder_loss_weights": (32,),
      "image": (64, 64, 3)}
  vocab = mixture.output_features["inputs"].vocabulary
  by_image, captions = _scenes_by_image()
  by_task = {name: [] for name in ALL_TASKS}
  for i, ex in enumerate(conv.take(NUM_EXAMPLES).as_numpy_iterator()):
    text = []
    for key in ("encoder_input_tokens", "decoder_target_tokens"):
      tokens = ex[key]
      assert np.sum(tokens == 1) == 1, tokens  # One EOS, then padding.
      eos = int(np.argmax(tokens == 1))
      assert not tokens[eos + 1:].any()
      text.append(vocab.decode(tokens[:eos].tolist()))
    np.testing.assert_array_equal(ex["decoder_input_tokens"][1:],
                                  ex["decoder_target_tokens"][:-1])
    image = ex["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert image.min() >= -1 and image.max() <= 1
    pixels = np.round((image + 1) * 127.5).astype(np.uint8)
    np.testing.assert_allclose(pixels / 127.5 - 1, image, atol=1e-5)
    scene = by_image[pixels.tobytes()]  # The image is exactly a scene's.
    name = family(text[0])
    by_task[name].append((text[0], text[1], scene))
    if i == 199:  # Every Task within the first 200 examples.
      assert all(by_task.values()), {k: len(v) for k, v in by_task.items()}

  counts = {k: len(v) for k, v in by_task.items()}
  assert min(counts.values()) >= 15, counts
  for name, check in CHECKS.items():
    answers = check(by_task[name], captions)
    if answers is not None:  # Both answers (which: 0, 1 and 2+ present) occur.
      assert len(set(answers)) >= (3 if name == "shapes_which_objects" else 2), (
          name, answers)
  for inputs, targets, scene in by_task["shapes_cap"]:
    assert (inputs, targets) == ("caption:", scene.caption)
  for inputs, targets, scene in by_task["shapes_vqa"]:
    qa = dict(zip(scene.questions, scene.answers))
    assert qa[inputs[len("question: "):]] == targets
