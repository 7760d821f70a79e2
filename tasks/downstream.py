"""Downstream Tasks of seed 001 sec. 4 / app. B, over the datasets' own files.

  task                   source (vlpretrain.data), main gin binding
                         inputs -> targets; metric
  vqa2_vqa               vqa_sources.vqa_v2_source, vqa_v2_source.data_dir
                         "question: <question>" -> multiple_choice_answer;
                         VQA accuracy against the 10 annotator answers
  gqa_vqa                vqa_sources.gqa_source, gqa_source.data_dir
                         "question: <question>" -> answer; exact match
  snlive_entailment      vqa_sources.snli_ve_source, snli_ve_source.data_dir
                         "hypothesis: <sentence2>" -> entailment / neutral /
                         contradiction; exact match
  refcoco_grounding      grounding_video_sources.refcoco_source, refcoco_source.data_dir
  refcocoplus_grounding  .refcoco_plus_source, refcoco_plus_source.data_dir
  refcocog_grounding     .refcocog_source, refcocog_source.data_dir
                         "refer: <expression>" -> "ymax xmax ymin xmin" (100 bins,
                         metrics.box_to_text; app. B "Box-As-Text"); accuracy at
                         IoU >= 0.5 of the predicted box (text_to_box) against the
                         source's exact box (`box_accuracy_at_05`)
  msrvtt_videoqa         grounding_video_sources.msrvtt_qa_source, msrvtt_qa_source.data_dir
                         "question: <question>" -> answer; VQA accuracy with the one
                         answer (= exact match after VQA answer normalisation). The
                         sampled frames (msrvtt_qa_source.num_frames, default 8) are
                         tiled into one image (vlpretrain.data.video): the model reads
                         one (S, S, 3) image.

Splits are the sources' ("train", "validation", "test", ...; the RefCOCO family keeps
refs.json's "val", "testA", "testB", "test", with "validation" accepted for "val").
Targets postprocessing for metrics (`postprocess_fn`): VQA2 scores against the
example's `answers`; RefCOCO against its `box`. Images: real_data_settings, vocabulary:
T5 (tasks/real_data.py).
"""
from vlpretrain import metrics
from vlpretrain.data import grounding_video_sources as gvs
from vlpretrain.data import preprocessors
from vlpretrain.data import video
from vlpretrain.data import vqa_sources
from vlpretrain.tasks import real_data
import tensorflow as tf  # After vlpretrain.data, which hides GPUs from it.

REFER_PROMPT = "refer:"
QUESTION_PROMPT = preprocessors.QUESTION_PROMPT


def _prompt(prompt: str, text: tf.Tensor) -> tf.Tensor:
  """"prompt text" (as preprocessors.vqa writes it)."""
  return tf.strings.strip(tf.strings.join([prompt, text], " "))


def vqa2_example(ds: tf.data.Dataset) -> tf.data.Dataset:
  """preprocessors.vqa's text, keeping the annotators' `answers` for the metric."""
  return ds.map(lambda ex: {"image": ex["image"],
                            "inputs": _prompt(QUESTION_PROMPT, ex["question"]),
                            "targets": ex["answer"], "answers": ex["answers"]},
                num_parallel_calls=tf.data.AUTOTUNE)


def box_text(box: tf.Tensor, bins: int = 100) -> tf.Tensor:
  """TF twin of metrics.box_to_text: [ymin, xmin, ymax, xmax] -> "ymax xmax ymin xmin".

  Same arithmetic in float64 (floor(v * (bins - 1) + 0.5) of the clipped value), so
  both give the same text for the same float32 box.
  """
  v = tf.clip_by_value(tf.cast(box, tf.float64), 0.0, 1.0)
  q = tf.cast(tf.floor(v * (bins - 1) + 0.5), tf.int64)
  q = tf.gather(q, [2, 3, 0, 1])
  return tf.strings.reduce_join(tf.strings.as_string(q), separator=" ")


def refer_example(ds: tf.data.Dataset) -> tf.data.Dataset:
  """"refer: <expression>" -> the box as text (box_text), keeping `box`."""
  return ds.map(lambda ex: {"image": ex["image"],
                            "inputs": _prompt(REFER_PROMPT, ex["expression"]),
                            "targets": box_text(ex["box"]), "box": ex["box"]},
                num_parallel_calls=tf.data.AUTOTUNE)


def videoqa_example(ds: tf.data.Dataset) -> tf.data.Dataset:
  """"question: <question>" -> answer, frames kept for `frames_image`."""
  return ds.map(lambda ex: {"frames": ex["frames"],
                            "inputs": _prompt(QUESTION_PROMPT, ex["question"]),
                            "targets": ex["answer"]},
                num_parallel_calls=tf.data.AUTOTUNE)


def frames_image(ds: tf.data.Dataset) -> tf.data.Dataset:
  """The sampled frames tiled into one (S, S, 3) image (vlpretrain.data.video)."""
  return video.frames_to_image(ds, real_data.image_size())


# ---------------------------------------------------------------- metrics
def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def vqa2_postprocess(output, example=None, is_target=False):
  """Targets: the example's annotator answers (list of str); predictions: as is."""
  if is_target and example is not None and "answers" in example:
    return [_text(a) for a in example["answers"]]
  return _text(output)


def refer_postprocess(output, example=None, is_target=False):
  """Targets: the example's exact `box` if it has one, else the target text read back;
  predictions: the box read from the text (metrics.text_to_box), None if unreadable."""
  if is_target and example is not None and "box" in example:
    return [float(v) for v in example["box"]]
  return metrics.text_to_box(_text(output))


def _box_or_text(x):
  return x if x is None or isinstance(x, list) else metrics.text_to_box(x)


def box_accuracy_at_05(targets, predictions):
  """RefCOCO accuracy at IoU >= 0.5 (seed 001 app. B: "AP50"), on postprocessed boxes."""
  return metrics.box_accuracy(targets, predictions, iou_threshold=0.5,
                              parse_fn=_box_or_text)


# ---------------------------------------------------------------- registration
LazySource = real_data.LazySource
REFCOCO_ALIASES = {"validation": "val"}

real_data.register(
    "vqa2_vqa",
    LazySource("vqa2", vqa_sources.vqa_v2_source,
               ("train", "validation", "test", "test_dev"), "vqa_v2_source.data_dir"),
    [vqa2_example], metric_fns=[metrics.vqa_accuracy], postprocess_fn=vqa2_postprocess)
real_data.register(
    "gqa_vqa",
    LazySource("gqa", vqa_sources.gqa_source, ("train", "validation", "test_dev", "test"),
               "gqa_source.data_dir"),
    [preprocessors.vqa], metric_fns=[metrics.exact_match])
real_data.register(
    "snlive_entailment",
    LazySource("snlive", vqa_sources.snli_ve_source, ("train", "validation", "test"),
               "snli_ve_source.data_dir"),
    [preprocessors.visual_entailment], metric_fns=[metrics.exact_match])
for _name, _fn, _splits in (
    ("refcoco", gvs.refcoco_source, gvs.REFCOCO_SPLITS),
    ("refcocoplus", gvs.refcoco_plus_source, gvs.REFCOCO_SPLITS),
    ("refcocog", gvs.refcocog_source, gvs.REFCOCOG_SPLITS)):
  real_data.register(
      f"{_name}_grounding",
      LazySource(_name, _fn, _splits, f"{_fn.__name__}.data_dir", REFCOCO_ALIASES),
      [refer_example], metric_fns=[box_accuracy_at_05], postprocess_fn=refer_postprocess)
real_data.register(
    "msrvtt_videoqa",
    LazySource("msrvtt", gvs.msrvtt_qa_source, ("train", "validation", "test"),
               "msrvtt_qa_source.data_dir"),
    [videoqa_example], metric_fns=[metrics.vqa_accuracy], image=frames_image)
