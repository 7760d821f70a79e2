"""seqio Tasks on the embedded shapes world (vlpretrain.data.shapes).

  shapes_cap  inputs "caption:"            -> targets: the caption
              ("a large red circle and a small blue square", objects left to right)
  shapes_vqa  inputs "question: <question>" -> targets: the answer, one example per
              question (5 per scene: color, shape, size, count, exist)
              ("question: what color is the circle?" -> "red")
  shapes_vqa_<type>  shapes_vqa's questions of one type in shapes.QUESTION_TYPES
              (shapes_vqa_shape: "question: what shape is the red object?" -> "circle"),
              to train or evaluate one skill alone

Splits train and validation; features image (float32 (S, S, 3) in [-1, 1]), inputs and
targets (shapes vocabulary, EOS appended). Scenes are written to TFRecords when a
dataset is first requested, with the gin settings `shapes_settings.*` in force then
(image_size, num_train, num_validation, seed, cache_dir).
"""
import functools
from typing import Dict, Optional

import seqio

from vlpretrain import metrics
from vlpretrain.data import images
from vlpretrain.data import preprocessors
from vlpretrain.data import shapes
from vlpretrain.data import vocab
import tensorflow as tf  # After vlpretrain.data, which hides GPUs from it.

CAPTION_PROMPT, QUESTION_PROMPT = "caption:", "question:"
assert CAPTION_PROMPT in vocab.PROMPTS and QUESTION_PROMPT in vocab.PROMPTS


def output_features() -> Dict[str, seqio.Feature]:
  v = vocab.shapes_vocabulary()
  return {
      "image": seqio.ContinuousFeature(dtype=tf.float32, rank=3),
      "inputs": seqio.Feature(vocabulary=v, add_eos=True),
      "targets": seqio.Feature(vocabulary=v, add_eos=True),
  }


def shapes_image(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Decodes the PNG, resizes to shapes_settings.image_size, scales to [-1, 1]."""
  return images.preprocess_dataset(dataset, shapes.shapes_settings().image_size)


@seqio.map_over_dataset
def caption_example(ex):
  return {"image": ex["image"], "inputs": tf.constant(CAPTION_PROMPT),
          "targets": ex["caption"]}


def vqa_examples(dataset: tf.data.Dataset,
                 question_type: Optional[str] = None) -> tf.data.Dataset:
  """One example per (question, answer) of each scene; only `question_type`'s if set."""
  def unroll(ex):
    questions, answers = ex["questions"], ex["answers"]
    if question_type is not None:
      keep = tf.equal(ex["question_types"], question_type)
      questions = tf.boolean_mask(questions, keep)
      answers = tf.boolean_mask(answers, keep)
    n = tf.shape(questions)[0]
    return tf.data.Dataset.from_tensor_slices({
        "image": tf.fill([n], ex["image"]),
        "inputs": tf.strings.join([QUESTION_PROMPT + " ", questions]),
        "targets": answers,
    })
  return dataset.flat_map(unroll)


def _register(name, task_preprocessor, metric_fns=()):
  seqio.TaskRegistry.add(
      name,
      source=shapes.ShapesSource(),
      preprocessors=[
          task_preprocessor,
          shapes_image,
          preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features(),
      metric_fns=list(metric_fns),
  )


_register("shapes_cap", caption_example)
_register("shapes_vqa", vqa_examples, metric_fns=[metrics.exact_match])
for _type in shapes.QUESTION_TYPES:
  _register(f"shapes_vqa_{_type}",
            functools.partial(vqa_examples, question_type=_type),
            metric_fns=[metrics.exact_match])
