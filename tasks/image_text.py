"""seqio Tasks for encoder models (VLMo, seed 002): image + text, and class labels.

Features: image (float32 (S, S, 3) in [-1, 1]), text (shapes vocabulary, EOS appended:
the [T_SEP] of seed 002 sec. 3.1), and for classification targets (one id of a
`label_vocab.LabelVocabulary`). Read by `data.features.VLEncoderFeatureConverter`
with e.g. TASK_FEATURE_LENGTHS = {'text': 24}.

  shapes_pairs               image + its caption: ITC / ITM / MLM pretraining (train),
                             and the retrieval split (validation: 1000 held-out scenes,
                             `shapes_settings.num_validation`) for image->text and
                             text->image Recall@K (evaluators.py)
  easy_vqa_classes           easy_vqa's images and "question: <question>" -> the answer
                             as one of its 13 answers (VQA as classification, sec. 3.5);
                             splits train / validation / test; exact match
  shapes_entailment_classes  shapes_entailment's "hypothesis: ..." -> entailment /
                             neutral / contradiction (the SNLI-VE stand-in); exact match
  shapes_images              image only (the image stage of seed 002 sec. 3.4)
  shapes_texts               text only: each scene's caption and its questions, one text
                             per example (the text stage)
  image_folder_images        image only, from folders of images without captions
                             (gin: image_folder_source.split_dirs); T5 vocabulary /
                             real_data_settings.image_size, like the real-data Tasks
  cc3m_images, cc12m_images  image only, from the img2dataset shards of cc3m / cc12m
  text_corpus                text only, from .txt / .jsonl shards
                             (gin: text_source.split_patterns), T5 vocabulary
  cc3m_pairs, cc12m_pairs, ln_pairs
                             the real caption datasets of tasks/pretrain.py (same sources
                             and gin bindings) as image + caption, T5 vocabulary, images
                             at real_data_settings.image_size; the dynamic mixture
                             `image_text_pairs` of the three (seed 002 pretrains on four
                             caption sets: CC, SBU, COCO, VG)
"""
import seqio

from vlpretrain import dynamic_mixture
from vlpretrain import metrics
from vlpretrain.data import easy_vqa as easy_vqa_data
from vlpretrain.data import label_vocab
from vlpretrain.data import preprocessors
from vlpretrain.data import shapes
from vlpretrain.data import unimodal_sources
from vlpretrain.data import vocab
from vlpretrain.tasks import easy_vqa
from vlpretrain.tasks import pretrain
from vlpretrain.tasks import real_data
from vlpretrain.tasks import shapes as shapes_tasks
from vlpretrain.tasks import shapes_downstream
import tensorflow as tf  # After vlpretrain.data, which hides GPUs from it.

EASY_VQA_ANSWERS = easy_vqa_data.YES_NO + easy_vqa_data.COLORS + easy_vqa_data.SHAPES
ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")


def output_features(labels=None, vocabulary=None, image=True, text=True):
  vocabulary = vocabulary or vocab.shapes_vocabulary()
  out = {}
  if image:
    out["image"] = seqio.ContinuousFeature(dtype=tf.float32, rank=3)
  if text:
    out["text"] = seqio.Feature(vocabulary=vocabulary, add_eos=True)
  if labels is not None:
    out["targets"] = seqio.Feature(vocabulary=label_vocab.LabelVocabulary(labels),
                                   add_eos=False)
  return out


@seqio.map_over_dataset
def caption_pair(ex):
  return {"image": ex["image"], "text": ex["caption"], "id": ex["id"]}


@seqio.map_over_dataset
def as_classification(ex):
  """An encoder-decoder example (inputs -> targets) as text -> label."""
  return {"image": ex["image"], "text": ex["inputs"], "targets": ex["targets"]}


@seqio.map_over_dataset
def image_only(ex):
  return {"image": ex["image"], "id": ex["id"]}


@seqio.map_over_dataset
def text_only(ex):
  return {"text": ex["text"], "id": ex["id"]}


def scene_texts(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """A shapes scene's caption and its questions, one text per example."""
  def unroll(ex):
    texts = tf.concat([ex["caption"][None], ex["questions"]], axis=0)
    return tf.data.Dataset.from_tensor_slices({"text": texts})
  return dataset.flat_map(unroll)


_TOKENIZE = [preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]

seqio.TaskRegistry.add(
    "shapes_pairs",
    source=shapes.ShapesSource(),
    preprocessors=[caption_pair, shapes_tasks.shapes_image] + _TOKENIZE,
    output_features=output_features())

seqio.TaskRegistry.add(
    "easy_vqa_classes",
    source=easy_vqa_data.easy_vqa_source(),
    preprocessors=[easy_vqa.vqa_example, easy_vqa.easy_vqa_image, as_classification]
    + _TOKENIZE,
    output_features=output_features(EASY_VQA_ANSWERS),
    metric_fns=[metrics.exact_match])

seqio.TaskRegistry.add(
    "shapes_entailment_classes",
    source=shapes.ShapesSource(),
    preprocessors=[shapes_downstream.entailment_example, shapes_tasks.shapes_image,
                   as_classification] + _TOKENIZE,
    output_features=output_features(ENTAILMENT_LABELS),
    metric_fns=[metrics.exact_match])

for _dataset in pretrain.CAPTION_DATASETS:
  seqio.TaskRegistry.add(
      f"{_dataset}_pairs",
      source=pretrain.SOURCES[_dataset],
      preprocessors=[preprocessors.drop_empty_captions, caption_pair,
                     real_data.image_preprocessor] + _TOKENIZE,
      output_features=output_features(vocabulary=real_data.VOCABULARY))
dynamic_mixture.register_dynamic_mixture(
    "image_text_pairs", [f"{d}_pairs" for d in pretrain.CAPTION_DATASETS])

# ------------------------------------------------------- image-only / text-only stages
seqio.TaskRegistry.add(
    "shapes_images",
    source=shapes.ShapesSource(),
    preprocessors=[image_only, shapes_tasks.shapes_image],
    output_features=output_features(text=False))

seqio.TaskRegistry.add(
    "shapes_texts",
    source=shapes.ShapesSource(),
    preprocessors=[scene_texts] + _TOKENIZE,
    output_features=output_features(image=False))

seqio.TaskRegistry.add(
    "image_folder_images",
    source=real_data.LazySource("image_folder", unimodal_sources.image_folder_source,
                                ("train",), "image_folder_source.split_dirs"),
    preprocessors=[image_only, real_data.image_preprocessor],
    output_features=output_features(text=False))

for _dataset in ("cc3m", "cc12m"):
  seqio.TaskRegistry.add(
      f"{_dataset}_images",
      source=pretrain.SOURCES[_dataset],
      preprocessors=[image_only, real_data.image_preprocessor],
      output_features=output_features(text=False))

seqio.TaskRegistry.add(
    "text_corpus",
    source=real_data.LazySource("text", unimodal_sources.text_source, ("train",),
                                "text_source.split_patterns"),
    preprocessors=[text_only] + _TOKENIZE,
    output_features=output_features(vocabulary=real_data.VOCABULARY, image=False))
