"""Greedy generation over whole seqio splits: the core that eval.py, infer.py and the
trainer's inference evals (train.py's `infer_eval_dataset_cfg`) share.

For each Task (each member of a Mixture) and split:

1. one pass over the Task's dataset (no shuffle, one epoch) collects each example's text
   fields (`inputs_pretokenized`, `targets_pretokenized`, ids, answer lists...) and
   counts the examples, so the progress line can give an ETA;
2. a second pass converts the same dataset with the model's feature converter and feeds
   global batches of `DatasetConfig.batch_size` to the jitted `model.predict_batch`;
   the final partial batch is padded (with copies of its last example) and the padding
   is dropped, so every example is predicted exactly once;
3. the tokens are decoded with the Task's output vocabulary.

Every host reads the whole split and builds the same global batches (the batch axis is
sharded over the mesh's 'data' axis); predictions come back replicated, and process 0
writes the files. Results are in dataset order and deterministic.

`evaluate_tasks` adds the metrics (the Task's seqio metric_fns on postprocessed
predictions and targets, plus extra fns per Task): `vlpretrain eval` runs it on restored
checkpoints, the trainer on its live params.
"""
import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf

from vlpretrain import checkpoints
from vlpretrain import errors
from vlpretrain import partitioning
from vlpretrain import utils

# Model features that are bookkeeping, not model inputs.
NON_MODEL_FEATURES = ("task_id",)

MetricFn = Callable[..., Mapping[str, float]]


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """One log line every `every_s` seconds (and at the end): done/total, rate, ETA."""

  def __init__(self, name: str, total: int, every_s: float = 10.0):
    self.name, self.total, self.every_s = name, total, every_s
    self.start = self.last = time.time()
    self.done = 0

  def update(self, n: int) -> None:
    self.done += n
    now = time.time()
    if self.done >= self.total or now - self.last >= self.every_s:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      logging.info("%s: %d/%d examples (%.0f%%) | %.1f examples/s | ETA %s", self.name,
                   self.done, self.total, 100.0 * self.done / max(self.total, 1), rate,
                   format_duration(eta))


def tasks_of(cfg: utils.DatasetConfig) -> list[seqio.Task]:
  """The Task, or the leaf Tasks of a Mixture, named by `cfg`."""
  provider = utils.get_mixture_or_task(cfg)
  if isinstance(provider, seqio.Task):
    return [provider]
  return list(provider.tasks)


def to_python(value: Any) -> Any:
  """numpy/bytes values of an example -> JSON-friendly Python (bytes as UTF-8 text)."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    return [to_python(v) for v in value.tolist()] if value.ndim else to_python(
        value.item())
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  return value


def _is_text_field(name: str, spec: tf.TensorSpec) -> bool:
  """Kept for the outputs: strings of any rank and numeric scalars (ids), no images."""
  if name == "image":
    return False
  return spec.dtype == tf.string or spec.shape.rank == 0


def model_features(element_spec) -> list[str]:
  """The features of a model dataset that the model reads (all but NON_MODEL_FEATURES):
  `get_initial_variables` gets all their shapes and `predict_batch` all of them."""
  return [k for k in element_spec if k not in NON_MODEL_FEATURES]


def _task_dataset(task: seqio.Task, cfg: utils.DatasetConfig) -> tf.data.Dataset:
  return task.get_dataset(sequence_length=cfg.task_feature_lengths, split=cfg.split,
                          use_cached=cfg.use_cached, shuffle=False, num_epochs=1,
                          seed=cfg.seed).with_options(utils.input_options())


@dataclasses.dataclass
class TaskPredictions:
  """Predictions of one Task's split, in dataset order."""
  task: seqio.Task
  split: str
  examples: list[dict]        # The text fields of each example (numpy values).
  tokens: np.ndarray          # (N, target length) int32 generated ids.
  predictions: list[str]      # Decoded with the output vocabulary (not postprocessed).
  scores: Optional[np.ndarray] = None          # Generation log-probabilities (N,).
  target_scores: Optional[np.ndarray] = None   # Log-likelihood of the targets (N,).

  def __len__(self):
    return len(self.examples)

  def inputs_text(self, i: int) -> str:
    ex = self.examples[i]
    for name in ("inputs", "text"):  # Encoder-decoder Tasks, encoder Tasks.
      if f"{name}_pretokenized" in ex:
        return to_python(ex[f"{name}_pretokenized"])
    name = "inputs" if "inputs" in ex else "text"
    return self.task.output_features[name].vocabulary.decode(to_python(ex[name]))

  def targets_raw(self, i: int):
    """The target as the example carries it (text, or a list of texts), or None."""
    ex = self.examples[i]
    if "targets_pretokenized" in ex:
      return to_python(ex["targets_pretokenized"])
    if "targets" in ex:
      return self.task.output_features["targets"].vocabulary.decode(
          to_python(ex["targets"]))
    return None


class Generator:
  """Restores params and runs jitted greedy decoding over Task splits.

  `predict_task` takes the model's params as they are placed: restored by `load_params`,
  or the trainer's live params (sharded by the same partitioner). The jitted decode is
  compiled on first use and reused while the Generator lives.

  Args:
    model: a t5x-style model with `predict_batch` (and `score_batch` for score metrics).
    partitioner: the mesh; batches are sharded over its 'data' axis.
    batch_size: global batch size (the final partial batch is padded).
    log_every_s: seconds between progress lines.
  """

  def __init__(self, model, partitioner: partitioning.PjitPartitioner, batch_size: int,
               log_every_s: float = 10.0):
    partitioner.check_batch_size(batch_size)
    self.model = model
    self.partitioner = partitioner
    self.batch_size = batch_size
    self.log_every_s = log_every_s
    self._predict = jax.jit(
        lambda params, batch: model.predict_batch_with_aux(params, batch),
        out_shardings=partitioner.replicated)
    self._score = jax.jit(lambda params, batch: model.score_batch(params, batch),
                          out_shardings=partitioner.replicated)

  # ------------------------------------------------------------------- params
  def load_params(self, cfg: utils.DatasetConfig,
                  restore_cfg: utils.RestoreCheckpointConfig,
                  steps: Optional[Sequence[int]] = None):
    """Yields (step_dir, step, params) for each checkpoint to evaluate, in step order.

    The checkpoint paths are checked first, then the data, before any params are read.
    """
    chosen = checkpoints.resolve(restore_cfg.path, restore_cfg.mode, steps)
    element_spec = self._model_dataset(tasks_of(cfg)[0], cfg).element_spec
    names = model_features(element_spec)
    shapes = {k: (self.partitioner.data_axis_size,) + tuple(element_spec[k].shape[1:])
              for k in names}
    types = {k: element_spec[k].dtype.as_numpy_dtype for k in names}
    abstract, shardings = checkpoints.abstract_params(self.model, shapes, types,
                                                      self.partitioner)
    for step_dir, step in chosen:
      yield step_dir, step, checkpoints.restore_params(step_dir, abstract, shardings,
                                                       restore_cfg.dtype)

  # -------------------------------------------------------------------- data
  def _model_dataset(self, task: seqio.Task, cfg: utils.DatasetConfig):
    ds = _task_dataset(task, cfg)
    ds = self.model.FEATURE_CONVERTER_CLS(pack=False)(
        ds, task_feature_lengths=cfg.task_feature_lengths)
    return ds.batch(self.batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)

  def _examples(self, task: seqio.Task, cfg: utils.DatasetConfig) -> list[dict]:
    ds = _task_dataset(task, cfg)
    keep = [k for k, s in ds.element_spec.items() if _is_text_field(k, s)]
    for name in ("inputs", "text"):
      if f"{name}_pretokenized" not in keep and name in ds.element_spec:
        keep.append(name)
    if "targets_pretokenized" not in keep and "targets" in ds.element_spec:
      keep.append("targets")
    ds = ds.map(lambda ex: {k: ex[k] for k in keep}, num_parallel_calls=tf.data.AUTOTUNE)
    return list(ds.as_numpy_iterator())

  def _global_batches(self, ds: tf.data.Dataset,
                      features: Sequence[str]) -> Iterator[tuple[dict, int]]:
    """(global batch of jax Arrays, number of real rows) for each batch of `ds`."""
    sharding = self.partitioner.batch_sharding()
    for batch in ds.as_numpy_iterator():
      n = len(batch[features[0]])
      arrays = {}
      for k in features:
        x = batch[k]
        if n < self.batch_size:  # Pad with copies of the last example; dropped below.
          x = np.concatenate([x, np.repeat(x[-1:], self.batch_size - n, axis=0)])
        arrays[k] = jax.make_array_from_callback(x.shape, sharding,
                                                 lambda idx, x=x: x[idx])
      yield arrays, n

  # -------------------------------------------------------------- generation
  def predict_task(self, params, task: seqio.Task, cfg: utils.DatasetConfig,
                   with_target_scores: bool = False) -> TaskPredictions:
    """Greedy predictions for every example of `cfg.split` of `task`, in order."""
    examples = self._examples(task, cfg)
    progress = Progress(f"{task.name} [{cfg.split}]", len(examples), self.log_every_s)
    tokens, scores, target_scores = [], [], []
    ds = self._model_dataset(task, cfg)
    with self.partitioner.activate():
      for batch, n in self._global_batches(ds, model_features(ds.element_spec)):
        out, aux = jax.device_get(self._predict(params, batch))
        tokens.append(np.asarray(out)[:n])
        scores.append(np.asarray(aux["scores"])[:n])
        if with_target_scores:
          target_scores.append(np.asarray(jax.device_get(self._score(params, batch)))[:n])
        progress.update(n)
    if sum(len(t) for t in tokens) != len(examples):
      raise RuntimeError(
          f"{task.name}: the model dataset gave {sum(len(t) for t in tokens)} examples "
          f"but the task dataset {len(examples)}: is a preprocessor nondeterministic?")
    if not examples:
      raise errors.ConfigError(f"Split {cfg.split!r} of task {task.name!r} has no examples.")
    tokens = np.concatenate(tokens)
    vocab = task.output_features["targets"].vocabulary
    predictions = [vocab.decode(row.tolist()) for row in tokens]
    return TaskPredictions(
        task=task, split=cfg.split, examples=examples, tokens=tokens,
        predictions=predictions, scores=np.concatenate(scores),
        target_scores=np.concatenate(target_scores) if with_target_scores else None)

  def evaluate_tasks(self, params, cfg: utils.DatasetConfig, tasks: Sequence[seqio.Task],
                     extra_metric_fns: Mapping[str, Sequence["MetricFn"]],
                     step: Optional[int], log_name: str = "eval"):
    """The evaluator protocol (evaluators.py): `evaluate_tasks` below."""
    return evaluate_tasks(self, params, cfg, tasks, extra_metric_fns, step, log_name)


# -----------------------------------------------------------------------------
# Metrics of the predictions, seqio style: one code path for `vlpretrain eval` and the
# trainer's inference evals.
# -----------------------------------------------------------------------------
def task_metrics(preds: TaskPredictions, extra_metric_fns: Sequence[MetricFn] = ()):
  """(metrics dict, postprocessed predictions, postprocessed targets) of one Task."""
  task = preds.task
  examples = preds.examples
  targets = [task.postprocess_fn(to_python(preds.targets_raw(i)),
                                 example=examples[i], is_target=True)
             for i in range(len(preds))]
  predictions = [task.postprocess_fn(p, example=ex, is_target=False)
                 for p, ex in zip(preds.predictions, examples)]
  results = {}
  for fn in list(task.predict_metric_fns) + list(extra_metric_fns):
    results.update(fn(targets, predictions))
  for fn in task.predict_with_aux_metric_fns:
    results.update(fn(targets, predictions, {"scores": preds.scores.tolist()}))
  for fn in task.score_metric_fns:
    results.update(fn(targets, preds.target_scores.tolist()))
  if not (task.predict_metric_fns or task.predict_with_aux_metric_fns or
          task.score_metric_fns or extra_metric_fns):
    logging.warning("Task %r has no metric_fns: it gets no metrics.", task.name)
  return ({k: metric_value(v) for k, v in sorted(results.items())},
          predictions, targets)


def check_extra_metric_fns(extra_metric_fns: Optional[Mapping[str, Sequence[MetricFn]]],
                           tasks: Sequence[seqio.Task],
                           binding: str) -> dict[str, Sequence[MetricFn]]:
  """`extra_metric_fns` as a dict; raises if it names a task that is not evaluated."""
  extra_metric_fns = dict(extra_metric_fns or {})
  unknown = sorted(set(extra_metric_fns) - {t.name for t in tasks})
  if unknown:
    raise errors.ConfigError(f"{binding} names {unknown}, which are not among the evaluated "
                             f"tasks {[t.name for t in tasks]}.")
  return extra_metric_fns


@dataclasses.dataclass
class TaskEvaluation:
  """One Task's predictions and metrics with one set of params."""
  preds: TaskPredictions
  metrics: dict[str, Any]     # Metric name -> value (floats, or JSON-ready values).
  predictions: list           # Postprocessed predictions, in dataset order.
  targets: list               # Postprocessed targets, in dataset order.

  @property
  def task(self) -> seqio.Task:
    return self.preds.task

  def summary(self) -> dict:
    """What metrics.json / metrics_history.json hold per task."""
    return {"num_examples": len(self.preds), "metrics": self.metrics}

  def scalars(self) -> dict[str, float]:
    """The float metrics as TensorBoard scalars '<task>/<metric>'."""
    return scalars(self.task.name, self.metrics)

  def records(self) -> Iterator[dict]:
    """predictions/<task>-<split>-step<step>.jsonl's records."""
    return prediction_records(self.preds, self.predictions, self.targets)


def scalars(task_name: str, metrics: Mapping[str, Any]) -> dict[str, float]:
  """The float metrics as TensorBoard scalars '<task>/<metric>'."""
  return {f"{task_name}/{k}": v for k, v in metrics.items() if isinstance(v, float)}


def evaluate_tasks(generator: Generator, params, cfg: utils.DatasetConfig,
                   tasks: Sequence[seqio.Task],
                   extra_metric_fns: Mapping[str, Sequence[MetricFn]],
                   step: Optional[int], log_name: str = "eval") -> Iterator[TaskEvaluation]:
  """Greedy-decodes `cfg.split` of each Task with `params` and computes its metrics.

  Yields one `TaskEvaluation` per Task, in order, after logging its line
  '<log_name> <task> [<split>] step <step> | <n> examples | <metric> <value> | ...'.
  `extra_metric_fns[task.name]` run after the Task's own metric_fns.
  """
  for task in tasks:
    preds = generator.predict_task(params, task, cfg, bool(task.score_metric_fns))
    values, predictions, targets = task_metrics(preds,
                                                extra_metric_fns.get(task.name, ()))
    shown = " | ".join(f"{k} {v:.2f}" for k, v in values.items() if isinstance(v, float))
    logging.info("%s %s [%s] step %s | %d examples | %s", log_name, task.name, cfg.split,
                 step, len(preds), shown)
    yield TaskEvaluation(preds, values, predictions, targets)


def prediction_records(preds: TaskPredictions,
                       postprocessed: Optional[Sequence[Any]] = None,
                       targets: Optional[Sequence[Any]] = None) -> Iterator[dict]:
  """One JSON-ready record per example: index, id (if any), inputs, prediction, targets."""
  for i, ex in enumerate(preds.examples):
    record = {"index": i}
    if "id" in ex:
      record["id"] = to_python(ex["id"])
    record["inputs"] = preds.inputs_text(i)
    record["prediction"] = preds.predictions[i]
    if postprocessed is not None and to_python(postprocessed[i]) != preds.predictions[i]:
      record["prediction_postprocessed"] = to_python(postprocessed[i])
    target = targets[i] if targets is not None else preds.targets_raw(i)
    if target is not None:
      record["targets"] = to_python(target)
    record["score"] = float(preds.scores[i])
    yield record


def write_jsonl(path: str, records) -> int:
  """Writes records (temp file + rename, local or gs://); returns the number of lines."""
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = path + ".tmp"
  n = 0
  with tf.io.gfile.GFile(tmp, "w") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
      n += 1
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return n


def write_json(path: str, obj: Mapping) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path: str, default=None):
  if not tf.io.gfile.exists(path):
    return default
  with tf.io.gfile.GFile(path, "r") as f:
    return json.load(f)


def output_name(task_name: str, split: str, step: Optional[int]) -> str:
  return f"{task_name}-{split}-step{step if step is not None else 'unknown'}.jsonl"


def check_dataset_cfg(cfg: Optional[utils.DatasetConfig], what: str) -> None:
  if cfg is None:
    raise errors.ConfigError(f"{what}.dataset_cfg is unset: bind it to @utils.DatasetConfig() "
                             f"(runs/{what.split('.')[0].replace('_script', '')}.gin does).")
  if not cfg.mixture_or_task_name:
    raise errors.ConfigError(
        "MIXTURE_OR_TASK_NAME is unset: pass --gin.MIXTURE_OR_TASK_NAME=\"'<name>'\" "
        "(e.g. 'easy_vqa') or bind it in your gin file.")
  if not cfg.task_feature_lengths:
    raise errors.ConfigError("TASK_FEATURE_LENGTHS is unset: pass e.g. "
                             "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 32, 'targets': 8}\".")
  if cfg.shuffle:
    raise errors.ConfigError(f"{what}: the dataset config has shuffle=True; evaluation and "
                             "inference read each split once, in order (set shuffle = False).")


def hide_gpus_from_tf() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")  # tf.data only; accelerators are jax's.
  except RuntimeError:  # TF already initialised its devices.
    pass


def metric_value(value: Any) -> Any:
  """A metric fn's value as a JSON number (seqio metric objects carry `.value`)."""
  value = getattr(value, "value", value)
  if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
    return float(value)
  if isinstance(value, (int, float)):
    return float(value)
  return to_python(value)
