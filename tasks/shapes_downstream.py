"""Shapes stand-ins for the downstream families without an embedded dataset.

Offline twins of gqa_vqa, snlive_entailment, refcoco_grounding and msrvtt_videoqa
(tasks/downstream.py), with the same prompts and metrics, on the shapes scenes
(texts: vlpretrain.data.shapes_downstream, which documents every form):

  shapes_gqa         "question: what color is the shape left of the red circle?"
                     -> "blue" (relations, counts, comparisons; exact match)
  shapes_entailment  "hypothesis: the red circle is left of the blue square"
                     -> entailment / neutral / contradiction (exact match)
  shapes_refer       "refer: the red circle" -> "ymax xmax ymin xmin" in 100 bins
                     (metrics.box_to_text of the object's box; box accuracy at
                     IoU >= 0.5). Colours and shapes are distinct within a scene, so
                     every expression names one object.
  shapes_videoqa     "question: which way does the red circle move?" -> "left";
                     "question: how many shapes move up?" -> "one" (VQA accuracy).
                     The video is 4 frames of the scene's objects moving, rendered at
                     S // 2 and tiled 2 x 2 into one (S, S, 3) image (row-major, time
                     order; vlpretrain.data.video): the model and the feature converter
                     read one rank-3 image, so frames are not a (T, S, S, 3) feature.

One example per scene, a pure function of the scene (seeded by its id). Splits, image
size, vocabulary and output features are those of tasks/shapes.py (`shapes_settings.*`,
shapes vocabulary). These are downstream tasks: they are not in `shapes_pretrain`.
"""
import numpy as np
import seqio

from vlpretrain import metrics
from vlpretrain.data import images
from vlpretrain.data import preprocessors
from vlpretrain.data import shapes
from vlpretrain.data import shapes_downstream as sd
from vlpretrain.data import video
from vlpretrain.tasks import downstream
from vlpretrain.tasks import shapes as shapes_tasks
import tensorflow as tf  # After vlpretrain.data, which hides GPUs from it.

QUESTION_PROMPT, HYPOTHESIS_PROMPT, REFER_PROMPT = "question:", "hypothesis:", "refer:"


def scene_objects(labels, sizes, boxes):
  """The scene's objects (left to right) from the stored labels, sizes and boxes."""
  out = []
  for label, size, box in zip(labels, sizes, boxes):
    color, shape = (label.decode() if isinstance(label, bytes) else label).split()
    size = size.decode() if isinstance(size, bytes) else size
    out.append(shapes.Obj(shape, color, size, tuple(float(v) for v in box)))
  return tuple(out)


def _py(fn, ex, kind, out_types):
  """Runs fn(objects, rng) on the example's scene inside tf.data."""
  def call(scene_id, labels, sizes, boxes):
    result = fn(scene_objects(labels, sizes, boxes), sd.scene_rng(kind, int(scene_id)))
    return tuple(np.asarray(r.encode() if isinstance(r, str) else r) for r in result)
  return tf.numpy_function(call, [ex["id"], ex["labels"], ex["sizes"], ex["boxes"]],
                           out_types, stateful=False)


def _join(prompt, text):
  return tf.strings.join([prompt, " ", tf.ensure_shape(text, [])])


def gqa_example(ds: tf.data.Dataset) -> tf.data.Dataset:
  def fn(ex):
    question, answer = _py(lambda o, r: sd.gqa_question(o, r)[1:], ex, "gqa",
                           [tf.string, tf.string])
    return {"image": ex["image"], "inputs": _join(QUESTION_PROMPT, question),
            "targets": tf.ensure_shape(answer, [])}
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def entailment_example(ds: tf.data.Dataset) -> tf.data.Dataset:
  def fn(ex):
    hypothesis, label = _py(sd.entailment_pair, ex, "entailment", [tf.string, tf.string])
    return {"image": ex["image"], "inputs": _join(HYPOTHESIS_PROMPT, hypothesis),
            "targets": tf.ensure_shape(label, [])}
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def refer_example(ds: tf.data.Dataset) -> tf.data.Dataset:
  def expression(objects, rng):
    text, index = sd.referring_expression(objects, rng)
    return text, np.int64(index)

  def fn(ex):
    text, index = _py(expression, ex, "refer", [tf.string, tf.int64])
    box = tf.ensure_shape(tf.gather(ex["boxes"], index), [4])
    return {"image": ex["image"], "inputs": _join(REFER_PROMPT, text),
            "targets": downstream.box_text(box), "box": box}
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def video_clip(objects, rng, image_size: int, background=(128, 128, 128)):
  """(frames uint8 (T, tile, tile, 3), question, answer) of a scene's objects."""
  directions = sd.motion(objects, rng)
  _, size = video.grid(sd.NUM_FRAMES, image_size)
  frames = np.stack([shapes.render(f, background, size)
                     for f in sd.video_frames(objects, directions)])
  question, answer = sd.video_question(objects, directions, rng)
  return frames, question, answer


def videoqa_examples(ds: tf.data.Dataset) -> tf.data.Dataset:
  """The clip tiled into `image` (float32 (S, S, 3) in [-1, 1]) with its question."""
  image_size = shapes.shapes_settings().image_size  # Read when the dataset is built.
  _, size = video.grid(sd.NUM_FRAMES, image_size)

  def fn(ex):
    frames, question, answer = _py(
        lambda o, r: video_clip(o, r, image_size), ex, "video",
        [tf.uint8, tf.string, tf.string])
    frames = images.to_unit_range(tf.ensure_shape(frames, [sd.NUM_FRAMES, size, size, 3]))
    return {"image": video.tile(frames, image_size),
            "inputs": _join(QUESTION_PROMPT, question),
            "targets": tf.ensure_shape(answer, [])}
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _register(name, task_preprocessor, metric_fns, postprocess_fn=None, image=True):
  seqio.TaskRegistry.add(
      name,
      source=shapes.ShapesSource(),
      preprocessors=[task_preprocessor] + [shapes_tasks.shapes_image] * image + [
          preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=shapes_tasks.output_features(),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
  )


_register("shapes_gqa", gqa_example, [metrics.exact_match])
_register("shapes_entailment", entailment_example, [metrics.exact_match])
_register("shapes_refer", refer_example, [downstream.box_accuracy_at_05],
          postprocess_fn=downstream.refer_postprocess)
_register("shapes_videoqa", videoqa_examples, [metrics.vqa_accuracy], image=False)
