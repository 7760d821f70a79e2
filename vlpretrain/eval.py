r"""Evaluation entry point (t5x's `eval.py`): the model's evaluator + the Tasks' metrics.

    vlpretrain eval --gin_file=gin/eval_easy_vqa.gin \
        --gin.CHECKPOINT_PATH=/tmp/easy_vqa/checkpoints --gin.EVAL_OUTPUT_DIR=/tmp/eval
    python -m vlpretrain.eval --gin_file=gin/eval_easy_vqa.gin ...

`evaluate()` restores the params (only) of a checkpoint written by `vlpretrain train`,
decodes every example of the split once (no shuffle, final batch padded), decodes the
tokens with the Task's output vocabulary, applies the Task's `postprocess_fn` to
predictions and targets (seqio's convention, `example=` and `is_target=`), and runs the
Task's seqio `metric_fns` (per Task for a Mixture), plus any `extra_metric_fns` named
per Task in gin. Outputs in EVAL_OUTPUT_DIR:

    metrics.json                 the last evaluated checkpoint: step, split, per task
                                 {num_examples, metrics}
    metrics_history.json         {step: the same}, for every checkpoint evaluated there
    predictions/<task>-<split>-step<step>.jsonl
                                 index, id, inputs, prediction, targets, score
    events.out.tfevents.*        TensorBoard scalars '<task>/<metric>' at the step

Evaluating the same checkpoint twice gives the same files (greedy decoding, fixed order).
"""
import os
from typing import Mapping, Optional, Sequence, Union

from absl import logging
from clu import metric_writers
import gin
import jax

from vlpretrain import errors
from vlpretrain import evaluators
from vlpretrain import gin_utils
from vlpretrain import inference
from vlpretrain import partitioning
from vlpretrain import utils
from vlpretrain.data import bad_data
from vlpretrain.data import easy_vqa as easy_vqa_data

MetricFn = inference.MetricFn


# -----------------------------------------------------------------------------
# Breakdowns that need more than (targets, predictions) of the Task's own metrics.
# -----------------------------------------------------------------------------
def exact_match_by_type(targets, predictions, answer_types) -> dict:
  """`metrics.exact_match` overall and per answer type: "exact_match/<type>" (%)."""
  from vlpretrain import metrics  # pylint: disable=g-import-not-at-top
  if not len(targets) == len(predictions) == len(answer_types):
    raise ValueError(f"{len(targets)} targets, {len(predictions)} predictions, "
                     f"{len(answer_types)} answer types")
  result = metrics.exact_match(targets, predictions)
  for kind in sorted(set(answer_types)):
    idx = [i for i, k in enumerate(answer_types) if k == kind]
    result[f"exact_match/{kind}"] = metrics.exact_match(
        [targets[i] for i in idx], [predictions[i] for i in idx])["exact_match"]
  return result


def easy_vqa_accuracy_by_type(targets, predictions) -> dict:
  """easy-VQA exact match per answer type: yes/no, color, shape.

  The answer type is a function of the answer (`vlpretrain.data.easy_vqa.answer_type`,
  the same function the source uses for its "answer_type" field), so it is derived
  from the target here; the easy_vqa Task does not keep the source's field.
  """
  types = [easy_vqa_data.answer_type(inference.to_python(t)) or "other" for t in targets]
  return exact_match_by_type(targets, predictions, types)


@gin.configurable
def evaluate(*,
             model,
             dataset_cfg: utils.DatasetConfig,
             partitioner: partitioning.PjitPartitioner,
             restore_checkpoint_cfg: utils.RestoreCheckpointConfig,
             output_dir: str,
             checkpoint_steps: Optional[Union[str, Sequence[int]]] = None,
             extra_metric_fns: Optional[Mapping[str, Sequence[MetricFn]]] = None,
             write_predictions: bool = True,
             log_every_s: float = 10.0,
             evaluator: Optional[str] = None) -> dict:
  """Evaluates checkpoint(s) of `model` on `dataset_cfg.split`; returns metrics.json's dict.

  Args:
    model: t5x-style model with `predict_batch_with_aux` (and `score_batch`).
    dataset_cfg: the Task/Mixture, split, feature lengths and global batch size
      (shuffle must be False).
    partitioner: mesh and logical axis rules.
    restore_checkpoint_cfg: `path` (CHECKPOINT_PATH) and `mode`: 'latest' (a
      MODEL_DIR/checkpoints directory) or 'specific' (one step directory); `dtype`.
    output_dir: EVAL_OUTPUT_DIR.
    checkpoint_steps: with mode 'latest', evaluate these steps (a list, or 'all')
      instead of the latest one; each gets its entry in metrics_history.json.
    extra_metric_fns: task name -> more `fn(targets, predictions)` to run after the
      Task's own (e.g. the easy-VQA per-answer-type breakdown).
    write_predictions: write predictions/<task>-<split>-step<step>.jsonl.
    log_every_s: seconds between progress lines.
    evaluator: 'generation', 'classification' or 'retrieval' (evaluators.py); None
      takes the model's EVALUATOR.
  """
  # Check the configuration before touching devices or data.
  inference.check_dataset_cfg(dataset_cfg, "eval_script.evaluate")
  if restore_checkpoint_cfg is None or not restore_checkpoint_cfg.path:
    raise errors.ConfigError("CHECKPOINT_PATH is unset: pass --gin.CHECKPOINT_PATH="
                             "/path/to/MODEL_DIR/checkpoints (or a step directory with "
                             "--gin.utils.RestoreCheckpointConfig.mode=\"'specific'\").")
  if not output_dir:
    raise errors.ConfigError("EVAL_OUTPUT_DIR is unset: pass --gin.EVAL_OUTPUT_DIR=/path/to/dir.")
  tasks = inference.tasks_of(dataset_cfg)
  extra_metric_fns = inference.check_extra_metric_fns(
      extra_metric_fns, tasks, "eval_script.evaluate.extra_metric_fns")
  utils.check_writable_dir(output_dir, "EVAL_OUTPUT_DIR")
  inference.hide_gpus_from_tf()
  is_primary = jax.process_index() == 0

  evaluator = evaluators.make(model, partitioner, dataset_cfg.batch_size, log_every_s,
                              kind=evaluator)
  history_path = os.path.join(output_dir, "metrics_history.json")
  result = writer = None
  for step_dir, step, params in evaluator.load_params(dataset_cfg, restore_checkpoint_cfg,
                                                      checkpoint_steps):
    if writer is None:  # The checkpoint and the data load: now EVAL_OUTPUT_DIR is written.
      if is_primary:
        utils.make_output_dir(output_dir, "EVAL_OUTPUT_DIR")
        if gin.config_str():
          gin_utils.write_config(output_dir, "config.gin")
      writer = metric_writers.create_default_writer(
          output_dir, just_logging=not is_primary, asynchronous=False)
      history = inference.read_json(history_path, {}) if is_primary else {}
    result = {"checkpoint": step_dir, "step": step, "split": dataset_cfg.split,
              "mixture_or_task_name": dataset_cfg.mixture_or_task_name, "tasks": {}}
    scalars = {}
    for ev in evaluator.evaluate_tasks(params, dataset_cfg, tasks, extra_metric_fns,
                                       step):
      name = ev.task.name
      result["tasks"][name] = ev.summary()
      scalars.update(ev.scalars())
      if is_primary and write_predictions:
        path = os.path.join(output_dir, "predictions",
                            inference.output_name(name, dataset_cfg.split, step))
        n = inference.write_jsonl(path, ev.records())
        logging.info("Wrote %d predictions to %s.", n, path)
    writer.write_scalars(step if step is not None else 0, scalars)
    if is_primary:
      inference.write_json(os.path.join(output_dir, "metrics.json"), result)
      history[str(step)] = result
      inference.write_json(history_path, history)
  writer.flush()
  writer.close()
  skipped = bad_data.totals()
  if skipped:
    logging.info("Input: %s.", bad_data.summary(skipped))
  return result


# absl main: parse the gin flags, then `evaluate()` with everything bound by gin.
main = gin_utils.gin_main(evaluate)


if __name__ == "__main__":
  # Run the imported module's main so gin binds `evaluate` under `vlpretrain.eval`.
  from vlpretrain import eval as _eval_module  # pylint: disable=import-self
  gin_utils.run(_eval_module.main)
