"""Evaluators: how `vlpretrain eval` and the trainer's inference evals score a model.

One protocol, three kinds, chosen by the model's `EVALUATOR` (or eval's `evaluator`
binding):

  generation      decode every example (`predict_batch_with_aux`), decode the tokens with
                  the Task's output vocabulary, run its metric_fns (inference.Generator)
  classification  the same path: the model predicts label ids, the Task's targets
                  vocabulary (`label_vocab.LabelVocabulary`) decodes them to label text
                  and its metric_fns score them (accuracy as exact match, VQA accuracy
                  over an answer vocabulary)
  retrieval       dual-encoder embeddings of every image and every distinct text of the
                  split, computed once (`embed_images` / `embed_texts`), then
                  image->text and text->image Recall@1/5/10 over the whole split

An evaluator has `load_params(cfg, restore_cfg, steps)` (yields (step_dir, step,
params)) and `evaluate_tasks(params, cfg, tasks, extra_metric_fns, step, log_name)`,
which yields per Task an object with `.task`, `.metrics`, `.summary()`, `.scalars()`
and `.records()` (the predictions file's lines); eval.py and train.py use nothing else.
"""
import dataclasses
from typing import Iterator, Optional, Sequence

from absl import logging
import jax
import numpy as np
import seqio

from vlpretrain import errors
from vlpretrain import inference
from vlpretrain import partitioning
from vlpretrain import utils
from vlpretrain.data import label_vocab

RECALL_AT = (1, 5, 10)


# -----------------------------------------------------------------------------
# Recall@K over a similarity matrix.
# -----------------------------------------------------------------------------
def recall_at_k(similarity: np.ndarray, positives: np.ndarray,
                ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
  """Image->text and text->image Recall@K (%) of `similarity` (images x texts).

  `positives[i, j]` is True when text j describes image i. i2t: the share of images
  with a positive text among their K most similar texts; t2i: the share of texts
  with a positive image among their K most similar images. Every image and every text
  needs at least one positive.
  """
  similarity, positives = np.asarray(similarity), np.asarray(positives, bool)
  if similarity.shape != positives.shape:
    raise ValueError(f"similarity {similarity.shape} and positives {positives.shape} "
                     "differ in shape.")
  if not positives.any(axis=1).all() or not positives.any(axis=0).all():
    raise ValueError("Every image and every text needs a positive.")
  out = {}
  for name, sim, pos in (("i2t", similarity, positives),
                         ("t2i", similarity.T, positives.T)):
    order = np.argsort(-sim, axis=1, kind="stable")
    hit_rank = np.argmax(np.take_along_axis(pos, order, axis=1), axis=1)
    for k in ks:
      out[f"{name}_recall@{k}"] = 100.0 * float(np.mean(hit_rank < k))
  return out


def chance_recall_at_k(positives: np.ndarray,
                       ks: Sequence[int] = RECALL_AT) -> dict[str, float]:
  """The expected Recall@K (%) of a random ranking: for a query with p positives among
  n candidates, 1 - C(n - p, K) / C(n, K)."""
  positives = np.asarray(positives, bool)
  out = {}
  for name, pos in (("i2t", positives), ("t2i", positives.T)):
    n = pos.shape[1]
    for k in ks:
      p = pos.sum(axis=1)
      miss = np.ones(len(p))
      for r in range(min(k, n)):  # prod_{r<K} (n - p - r) / (n - r)
        miss *= np.clip(n - p - r, 0, None) / (n - r)
      out[f"chance_{name}_recall@{k}"] = 100.0 * float(np.mean(1.0 - miss))
  return out


# -----------------------------------------------------------------------------
# The evaluators.
# -----------------------------------------------------------------------------
@dataclasses.dataclass
class RetrievalEvaluation:
  """One Task's retrieval results with one set of params."""
  task: seqio.Task
  split: str
  metrics: dict[str, float]
  examples: list[dict]
  texts: list[str]            # The distinct texts, the text side of the ranking.
  top_texts: np.ndarray       # (N images, 5) indices into `texts`, best first.
  positive_text: np.ndarray   # (N images,) index of each image's own text.

  def summary(self) -> dict:
    return {"num_examples": len(self.examples), "num_texts": len(self.texts),
            "metrics": self.metrics}

  def scalars(self) -> dict[str, float]:
    return inference.scalars(self.task.name, self.metrics)

  def records(self) -> Iterator[dict]:
    """Per image: index, id, its text, the 5 most similar texts and the rank-1 hit."""
    for i, ex in enumerate(self.examples):
      record = {"index": i}
      if "id" in ex:
        record["id"] = inference.to_python(ex["id"])
      record["text"] = self.texts[self.positive_text[i]]
      record["top_texts"] = [self.texts[j] for j in self.top_texts[i]]
      record["hit@1"] = bool(self.top_texts[i][0] == self.positive_text[i])
      yield record


class RetrievalEvaluator(inference.Generator):
  """Dual-encoder retrieval over whole splits (the module docstring). Restoring params
  and batching the split are inference.Generator's; texts are told apart by their
  pretokenized string (`text_pretokenized`), so a caption shared by several images is
  one text with several positive images."""

  def __init__(self, model, partitioner: partitioning.PjitPartitioner, batch_size: int,
               log_every_s: float = 10.0):
    for method in ("embed_images", "embed_texts"):
      if not hasattr(model, method):
        raise errors.ConfigError(f"The retrieval evaluator needs {type(model).__name__}."
                                 f"{method}: use a dual-encoder model.")
    super().__init__(model, partitioner, batch_size, log_every_s)
    self._embed_images = jax.jit(model.embed_images, out_shardings=partitioner.replicated)
    self._embed_texts = jax.jit(model.embed_texts, out_shardings=partitioner.replicated)

  def _embeddings(self, params, task, cfg, num_examples):
    progress = inference.Progress(f"{task.name} [{cfg.split}] embeddings", num_examples,
                                  self.log_every_s)
    images, texts = [], []
    ds = self._model_dataset(task, cfg)
    with self.partitioner.activate():
      for batch, n in self._global_batches(ds, inference.model_features(ds.element_spec)):
        images.append(np.asarray(jax.device_get(self._embed_images(params, batch)))[:n])
        texts.append(np.asarray(jax.device_get(self._embed_texts(params, batch)))[:n])
        progress.update(n)
    return np.concatenate(images), np.concatenate(texts)

  def evaluate_task(self, params, task: seqio.Task,
                    cfg: utils.DatasetConfig) -> RetrievalEvaluation:
    examples = self._examples(task, cfg)
    if not examples:
      raise errors.ConfigError(f"Split {cfg.split!r} of task {task.name!r} has no examples.")
    image_emb, text_emb = self._embeddings(params, task, cfg, len(examples))
    if len(image_emb) != len(examples):
      raise RuntimeError(f"{task.name}: {len(image_emb)} embeddings for "
                         f"{len(examples)} examples: is a preprocessor nondeterministic?")
    preds = inference.TaskPredictions(task, cfg.split, examples, np.zeros((0,)), [])
    keys = [preds.inputs_text(i) for i in range(len(examples))]
    texts, first_example, index = [], [], {}
    positive_text = np.zeros(len(keys), np.int64)
    for i, key in enumerate(keys):
      if key not in index:
        index[key] = len(texts)
        texts.append(key)
        first_example.append(i)
      positive_text[i] = index[key]
    distinct = text_emb[first_example]
    similarity = image_emb @ distinct.T
    positives = np.zeros(similarity.shape, bool)
    positives[np.arange(len(keys)), positive_text] = True
    metrics = recall_at_k(similarity, positives)
    metrics.update(chance_recall_at_k(positives))
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    return RetrievalEvaluation(task, cfg.split, metrics, examples, texts, top,
                               positive_text)

  def evaluate_tasks(self, params, cfg, tasks, extra_metric_fns, step,
                     log_name: str = "eval") -> Iterator[RetrievalEvaluation]:
    if any(extra_metric_fns.get(t.name) for t in tasks):
      raise errors.ConfigError("extra_metric_fns apply to generated text; the retrieval "
                               "evaluator has none to run them on: unset them.")
    for task in tasks:
      ev = self.evaluate_task(params, task, cfg)
      shown = " | ".join(f"{k} {v:.2f}" for k, v in ev.metrics.items()
                         if not k.startswith("chance"))
      logging.info("%s %s [%s] step %s | %d images, %d texts | %s", log_name, task.name,
                   cfg.split, step, len(ev.examples), len(ev.texts), shown)
      yield ev


class ClassificationEvaluator(inference.Generator):
  """Generation over a label vocabulary: predicted ids decode to label text (the module
  docstring); refuses a Task whose targets are not a LabelVocabulary."""

  def evaluate_tasks(self, params, cfg, tasks, extra_metric_fns, step,
                     log_name: str = "eval"):
    for task in tasks:
      vocabulary = task.output_features.get("targets")
      if not isinstance(getattr(vocabulary, "vocabulary", None),
                        label_vocab.LabelVocabulary):
        raise errors.ConfigError(
            f"Task {task.name!r} has no LabelVocabulary 'targets': a classifier is "
            "evaluated on a classification Task (e.g. 'easy_vqa_classes').")
    return super().evaluate_tasks(params, cfg, tasks, extra_metric_fns, step, log_name)


EVALUATORS = {"generation": inference.Generator,
              "classification": ClassificationEvaluator,
              "retrieval": RetrievalEvaluator}


def make(model, partitioner: partitioning.PjitPartitioner, batch_size: int,
         log_every_s: float = 10.0, kind: Optional[str] = None):
  """The evaluator of `kind` (default: the model's EVALUATOR) for `model`."""
  kind = kind or getattr(model, "EVALUATOR", "generation")
  if kind not in EVALUATORS:
    raise errors.ConfigError(f"Unknown evaluator {kind!r} (gin: eval_script.evaluate."
                             f"evaluator): use one of {sorted(EVALUATORS)}.")
  return EVALUATORS[kind](model, partitioner, batch_size, log_every_s)

