"""The shapes world: determinism, text agrees with pixels, TFRecords, source, Tasks."""
import collections
import os
import re

import gin
import numpy as np
import pytest
import seqio

from vlpretrain.data import images
from vlpretrain.data import shapes
import tensorflow as tf
import vlpretrain.tasks  # pylint: disable=unused-import  # registers shapes_*


def scene_tuple(s):
  return (s.caption, s.labels, s.questions, s.answers, s.background,
          s.boxes.tolist())


def test_same_seed_same_scene_other_seed_or_split_differs():
  a = [shapes.make_scene(0, "train", i) for i in range(20)]
  b = [shapes.make_scene(0, "train", i) for i in range(20)]
  assert all(np.array_equal(x.image, y.image) and scene_tuple(x) == scene_tuple(y)
             for x, y in zip(a, b))
  for other in ([shapes.make_scene(1, "train", i) for i in range(20)],
                [shapes.make_scene(0, "validation", i) for i in range(20)]):
    assert sum(scene_tuple(x) != scene_tuple(y) for x, y in zip(a, other)) >= 18
  # Image size changes the pixels only, not the scene.
  small = shapes.make_scene(0, "train", 3, image_size=32)
  assert small.image.shape == (32, 32, 3) and a[3].image.shape == (64, 64, 3)
  assert scene_tuple(small) == scene_tuple(a[3])


# The shapes by definition, in box coordinates u (right), v (down) in [-1, 1].
SHAPE_SETS = {
    "rectangle": lambda u, v: np.ones_like(u * v, bool),
    "circle": lambda u, v: np.hypot(u, v) <= 1,
    "diamond": lambda u, v: abs(u) + abs(v) <= 1,
    "triangle": lambda u, v: abs(u) <= (v + 1) / 2,
    "cross": lambda u, v: np.minimum(abs(u), abs(v)) <= 0.4,
}


def coverage_error_of_each_shape(image, background, obj, fine=10):
  """Mean |drawn coverage - shape's coverage| over obj's box, for each shape.

  The drawn coverage of a pixel is where its colour lies between the background and
  obj's colour; a shape's coverage is measured on a finer grid than the renderer's.
  """
  size = image.shape[0]
  bg, color = np.float32(background), np.float32(shapes.COLORS[obj.color])
  drawn = (image - bg) @ (color - bg) / np.sum((color - bg) ** 2)
  (cy, cx) = obj.center
  hy, hx = (obj.box[2] - obj.box[0]) / 2, (obj.box[3] - obj.box[1]) / 2
  pts = (np.arange(size * fine) + 0.5) / (size * fine)
  u, v = ((pts - cx) / hx)[None, :], ((pts - cy) / hy)[:, None]
  in_box = (abs(u) <= 1) & (abs(v) <= 1)
  y0, x0 = (max(0, int(c * size) - 1) for c in obj.box[:2])
  y1, x1 = (min(size, int(c * size) + 2) for c in obj.box[2:])
  errors = {}
  for k, f in SHAPE_SETS.items():
    cover = (f(u, v) & in_box).reshape(size, fine, size, fine).mean((1, 3))
    errors[k] = np.abs(drawn - cover)[y0:y1, x0:x1].mean()
  return errors


def test_caption_and_boxes_agree_with_pixels():
  counts, aspects = collections.Counter(), []
  for i in range(200):
    s = shapes.make_scene(0, "train", i, image_size=64)
    n = len(s.objects)
    counts[n] += 1
    phrases = [f"a {o.size} {o.color} {o.shape}" for o in s.objects]
    assert s.caption == (phrases[0] if n == 1 else
                         ", ".join(phrases[:-1]) + " and " + phrases[-1])
    assert s.labels == tuple(f"{o.color} {o.shape}" for o in s.objects)
    assert len({o.shape for o in s.objects}) == n == len({o.color for o in s.objects})
    xs = [o.center[1] for o in s.objects]
    assert xs == sorted(xs) and np.all(np.diff(xs) >= shapes.MIN_DX)
    assert np.all(s.boxes >= 0) and np.all(s.boxes <= 1)
    for o in s.objects:
      hy, hx = (o.box[2] - o.box[0]) / 2, (o.box[3] - o.box[1]) / 2
      low, high = shapes.SIZES[o.size]
      assert low - 1e-6 <= max(hy, hx) <= high + 1e-6, (i, o)
      if o.shape == "rectangle":
        assert min(hy, hx) >= shapes.MIN_HALF - 1e-6, (i, o)
        assert max(hy, hx) / min(hy, hx) <= shapes.MAX_ASPECT + 1e-6, (i, o)
        aspects.append(max(hy, hx) / min(hy, hx))
      else:
        assert hy == pytest.approx(hx), (i, o)
      cy, cx = int(o.center[0] * 64), int(o.center[1] * 64)
      assert tuple(s.image[cy, cx]) == shapes.COLORS[o.color], (i, o)
      errors = coverage_error_of_each_shape(s.image, s.background, o)
      assert errors[o.shape] < 0.06, (i, o, errors)
      assert min(errors, key=errors.get) == o.shape, (i, o, errors)
    # Outside every box is background.
    mask = np.ones((64, 64), bool)
    for o in s.objects:
      ymin, xmin, ymax, xmax = (v * 64 for v in o.box)
      mask[int(ymin):int(np.ceil(ymax)), int(xmin):int(np.ceil(xmax))] = False
    assert np.all(s.image[mask] == np.array(s.background))
  assert set(counts) == {1, 2, 3, 4} and min(counts.values()) >= 8, counts
  # Rectangles range from square to long, as easy-VQA's do.
  assert min(aspects) < 1.2 and max(aspects) > 2.2, sorted(aspects)


def test_answers_follow_from_the_scene_and_yes_no_is_balanced():
  answers = collections.Counter()
  for i in range(1000):
    s = shapes.make_scene(0, "train", i, draw=False)
    by_shape = {o.shape: o for o in s.objects}
    by_color = {o.color: o for o in s.objects}
    assert s.question_types == shapes.QUESTION_TYPES
    for t, q, a in zip(s.question_types, s.questions, s.answers):
      answers[t, a] += 1
      if t == "color":
        assert a == by_shape[re.fullmatch(r"what color is the (\w+)\?", q)[1]].color
      elif t == "shape":
        assert a == by_color[
            re.fullmatch(r"what shape is the (\w+) object\?", q)[1]].shape
      elif t == "size":
        assert a == by_shape[re.fullmatch(r"what size is the (\w+)\?", q)[1]].size
      elif t == "count":
        assert q == "how many shapes are there?"
        assert a == shapes.NUMBERS[len(s.objects)]
      else:
        m = re.fullmatch(r"is there an? (\w+) (\w+)\?", q)
        present = (m[1], m[2]) in {(o.color, o.shape) for o in s.objects}
        assert a == ("yes" if present else "no")
        assert q.startswith("is there an ") == (m[1][0] in "aeiou")
  assert 450 <= answers["exist", "yes"] <= 550, answers
  # OBJECT_COUNT_WEIGHTS: 70% one object, 10% each of two to four.
  assert 650 <= answers["count", "one"] <= 750, answers
  assert all(answers["count", w] >= 60 for w in ("two", "three", "four")), answers


def test_png_decodes_to_the_same_pixels():
  image = shapes.make_scene(0, "train", 5).image
  decoded = tf.io.decode_png(shapes.encode_png(image)).numpy()
  np.testing.assert_array_equal(decoded, image)


def test_write_tfrecords_is_deterministic_and_reused(tmp_path):
  a = shapes.write_tfrecords(str(tmp_path / "a"), "train", 60, 32, 0,
                             examples_per_shard=25)
  b = shapes.write_tfrecords(str(tmp_path / "b"), "train", 60, 32, 0,
                             examples_per_shard=25)
  c = shapes.write_tfrecords(str(tmp_path / "c"), "train", 60, 32, 1,
                             examples_per_shard=25)
  assert len(a) == 3
  read = lambda fs: [open(f, "rb").read() for f in fs]
  assert read(a) == read(b) and read(a) != read(c)
  mtime = os.path.getmtime(a[0])
  assert shapes.write_tfrecords(str(tmp_path / "a"), "train", 60, 32, 0,
                                examples_per_shard=25) == a
  assert os.path.getmtime(a[0]) == mtime
  assert not [p for p in os.listdir(os.path.dirname(os.path.dirname(a[0])))
              if ".tmp-" in p]
  # Records hold the scenes.
  records = list(tf.data.TFRecordDataset(a).map(shapes.parse_example))
  assert [int(r["id"]) for r in records] == list(range(60))
  scene = shapes.make_scene(0, "train", 7, image_size=32)
  r = records[7]
  assert r["caption"].numpy().decode() == scene.caption
  assert [x.decode() for x in r["labels"].numpy()] == list(scene.labels)
  assert [x.decode() for x in r["answers"].numpy()] == list(scene.answers)
  np.testing.assert_allclose(r["boxes"].numpy(), scene.boxes)
  np.testing.assert_array_equal(tf.io.decode_png(r["image"]).numpy(), scene.image)


def test_unknown_split_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown shapes split 'test'"):
    shapes.ShapesSource().list_shards("test")


def test_source_shards_are_disjoint_and_complete(small_shapes):
  source = shapes.ShapesSource()
  ids = [sorted(int(ex["id"]) for ex in source.get_dataset(
      "train", shuffle=False, shard_info=seqio.ShardInfo(k, 3))) for k in range(3)]
  assert sorted(sum(ids, [])) == list(range(200))
  assert [len(x) for x in ids] == [67, 67, 66]
  assert source.num_input_examples("validation") == 100


def test_images_ops():
  pixels = np.zeros((4, 6, 3), np.uint8)
  pixels[:, 3:] = 255
  png = tf.io.encode_png(pixels)
  out = images.preprocess(png, (4, 6)).numpy()
  assert out.dtype == np.float32 and out.shape == (4, 6, 3)
  np.testing.assert_allclose(out[:, :3], -1.0)
  np.testing.assert_allclose(out[:, 3:], 1.0)
  jpeg = tf.io.encode_jpeg(np.full((10, 10, 3), 128, np.uint8), quality=100)
  out = images.preprocess(jpeg, 5).numpy()
  assert out.shape == (5, 5, 3) and np.allclose(out, 128 / 127.5 - 1, atol=0.02)
  # The same inside tf.data, with a static output shape.
  ds = images.preprocess_dataset(tf.data.Dataset.from_tensors({"image": png}), 8)
  assert ds.element_spec["image"].shape == (8, 8, 3)
  out = next(iter(ds))["image"].numpy()
  assert out.min() >= -1 and out.max() <= 1
  assert out[0, 0, 0] == -1 and out[0, -1, 0] == 1
  with pytest.raises(ValueError, match="positive"):
    images.resize(out, 0)


def test_shapes_cap_task(small_shapes):
  task = seqio.get_mixture_or_task("shapes_cap")
  ds = task.get_dataset({"inputs": 32, "targets": 32}, split="validation",
                        shuffle=False)
  examples = list(ds.as_numpy_iterator())
  assert len(examples) == 100
  ex = examples[0]
  assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.float32
  assert ex["image"].min() >= -1 and ex["image"].max() <= 1
  scene = shapes.make_scene(0, "validation", 0)
  np.testing.assert_allclose(ex["image"], scene.image / 127.5 - 1, atol=1e-5)
  vocab = task.output_features["targets"].vocabulary
  assert ex["targets"][-1] == 1 and ex["inputs"][-1] == 1
  assert vocab.decode(ex["targets"].tolist()) == scene.caption
  assert vocab.decode(ex["inputs"].tolist()) == "caption:"


def test_shapes_vqa_task_and_metric(small_shapes):
  task = seqio.get_mixture_or_task("shapes_vqa")
  examples = list(task.get_dataset({"inputs": 32, "targets": 8},
                                   split="validation", shuffle=False))
  assert len(examples) == 100 * len(shapes.QUESTION_TYPES)
  scene = shapes.make_scene(0, "validation", 0)
  got = [(ex["inputs_pretokenized"].numpy().decode(),
          ex["targets_pretokenized"].numpy().decode()) for ex in examples[:5]]
  assert got == [("question: " + q, a) for q, a in zip(scene.questions, scene.answers)]
  assert examples[0]["image"].shape == (64, 64, 3)
  metric = task.metric_fns[0]
  assert metric(["red", "yes"], ["red", "no"]) == {"exact_match": 50.0}
  assert metric([b"Two"], [" two "]) == {"exact_match": 100.0}


def test_shapes_vqa_by_question_type_tasks(small_shapes):
  scenes = [shapes.make_scene(0, "validation", i, draw=False) for i in range(100)]
  for qtype in shapes.QUESTION_TYPES:
    task = seqio.get_mixture_or_task(f"shapes_vqa_{qtype}")
    examples = list(task.get_dataset({"inputs": 32, "targets": 8},
                                     split="validation", shuffle=False))
    expected = [("question: " + q, a) for s in scenes
                for t, q, a in zip(s.question_types, s.questions, s.answers)
                if t == qtype]
    assert len(expected) == 100
    got = [(ex["inputs_pretokenized"].numpy().decode(),
            ex["targets_pretokenized"].numpy().decode()) for ex in examples]
    assert got == expected, qtype
  answers = {a for _, a in got}  # exist: yes and no both occur.
  assert answers == {"yes", "no"}


def test_gin_settings_are_read_when_the_dataset_is_built(small_shapes):
  gin.parse_config("shapes_settings.image_size = 32")
  task = seqio.get_mixture_or_task("shapes_cap")
  ds = task.get_dataset({"inputs": 8, "targets": 32}, split="validation",
                        shuffle=False)
  assert ds.element_spec["image"].shape == (32, 32, 3)
  assert len(list(ds)) == 100


def test_backgrounds_are_light_and_most_scenes_have_one_object():
  counts = collections.Counter()
  for i in range(1000):
    s = shapes.make_scene(0, "train", i, draw=False)
    assert 197 <= min(s.background) and max(s.background) <= 248, s.background
    counts[len(s.objects)] += 1
  assert 0.65 <= counts[1] / 1000 <= 0.75, counts  # OBJECT_COUNT_WEIGHTS: 70%.
  assert all(60 <= counts[n] <= 140 for n in (2, 3, 4)), counts  # 10% each.
  # Every colour stands out from every background.
  for rgb in shapes.COLORS.values():
    assert max(abs(c - 222) for c in rgb) >= 80, rgb
