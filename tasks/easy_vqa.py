"""seqio Task on easy-VQA (vlpretrain.data.easy_vqa), the embedded real VQA set.

  easy_vqa  inputs "question: <question>" -> targets: the answer (one of 13 words)
            ("question: what is the blue shape?" -> "rectangle")

Also `easy_vqa_yesno`, `easy_vqa_color`, `easy_vqa_shape` (the questions of one answer
type each) and the dynamic mixture `easy_vqa_by_type` of the three, for fine-tuning.

Splits train and validation (validation: 10% of the package's train images, chosen by
a stable hash of the image id) and test (the package's test split: final evaluation
only). Features image (float32 (64, 64, 3) in [-1, 1]), inputs and targets (shapes
vocabulary, EOS appended); metric: exact match. The source reads the installed
`easy-vqa` package's files (gin: `easy_vqa_source.*`, applied when this module is
imported).
"""
from typing import Dict

import seqio

from vlpretrain import dynamic_mixture
from vlpretrain import metrics
from vlpretrain.data import easy_vqa
from vlpretrain.data import images
from vlpretrain.data import preprocessors
from vlpretrain.data import vocab
import tensorflow as tf  # After vlpretrain.data, which hides GPUs from it.

QUESTION_PROMPT = "question:"
assert QUESTION_PROMPT in vocab.PROMPTS
IMAGE_SIZE = 64  # The PNGs' own size.


def output_features() -> Dict[str, seqio.Feature]:
  v = vocab.shapes_vocabulary()
  return {
      "image": seqio.ContinuousFeature(dtype=tf.float32, rank=3),
      "inputs": seqio.Feature(vocabulary=v, add_eos=True),
      "targets": seqio.Feature(vocabulary=v, add_eos=True),
  }


@seqio.map_over_dataset
def vqa_example(ex):
  return {"image": ex["image"],
          "inputs": tf.strings.join([QUESTION_PROMPT + " ", ex["question"]]),
          "targets": ex["answer"]}


def easy_vqa_image(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Decodes the PNG, resizes to 64x64, scales to [-1, 1]."""
  return images.preprocess_dataset(dataset, IMAGE_SIZE)


_PREPROCESSORS = [
    vqa_example,
    easy_vqa_image,
    preprocessors.tokenize,
    seqio.preprocessors.append_eos_after_trim,
]

seqio.TaskRegistry.add(
    "easy_vqa",
    source=easy_vqa.easy_vqa_source(),
    preprocessors=_PREPROCESSORS,
    output_features=output_features(),
    metric_fns=[metrics.exact_match],
)

# easy-VQA by answer type: the same questions in three Tasks, mixed by the running loss.
# Colour is in every pixel of the one shape and is learnt in ~100 steps; shape needs the
# image's layout and is learnt several times slower. In easy_vqa's natural mix (74%
# yes/no, 13% colour, 13% shape answers) jar-sized models trained from scratch stayed
# near chance on shape questions for 2000 steps; the difficulty sampler (seed 001,
# sec. 3.1) moves the batch towards the task whose loss stays high. Each Task's source
# lists only its own questions and reads only their images.
BY_TYPE_TASKS = {kind: f"easy_vqa_{kind.replace('/', '')}"
                 for kind in easy_vqa.ANSWER_TYPES}
for _kind, _name in BY_TYPE_TASKS.items():
  seqio.TaskRegistry.add(
      _name,
      source=easy_vqa.easy_vqa_source(answer_type=_kind),
      preprocessors=_PREPROCESSORS,
      output_features=output_features(),
      metric_fns=[metrics.exact_match],
  )
dynamic_mixture.register_dynamic_mixture("easy_vqa_by_type", list(BY_TYPE_TASKS.values()))
