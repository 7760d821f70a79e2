r"""Inference entry point (t5x's `infer.py`): one greedy prediction per example, as JSONL.

    vlpretrain infer --gin_file=gin/jar_tiny.gin --gin_file=runs/infer.gin \
        --gin.MIXTURE_OR_TASK_NAME="'easy_vqa'" --gin.CHECKPOINT_PATH=/tmp/run/checkpoints \
        --gin.INFER_OUTPUT_DIR=/tmp/infer

`infer()` restores the params (only) of a checkpoint written by `vlpretrain train`, decodes
every example of the split once, in dataset order (the final batch is padded and the
padding dropped), and writes INFER_OUTPUT_DIR/<task>-<split>-step<step>.jsonl: one line
per example with its index, id (if the Task keeps one), inputs text, prediction (the
decoded text, before any postprocessing), targets (if the split has them) and the
generation log-probability ('score'). No metrics: that is `vlpretrain eval`.
"""
import os

from absl import logging
import gin
import jax

from vlpretrain import errors
from vlpretrain import gin_utils
from vlpretrain import inference
from vlpretrain import partitioning
from vlpretrain import utils
from vlpretrain.data import bad_data


@gin.configurable
def infer(*,
          model,
          dataset_cfg: utils.DatasetConfig,
          partitioner: partitioning.PjitPartitioner,
          restore_checkpoint_cfg: utils.RestoreCheckpointConfig,
          output_dir: str,
          log_every_s: float = 10.0) -> dict[str, str]:
  """Writes the predictions of each Task of `dataset_cfg`; returns {task: jsonl path}."""
  inference.check_dataset_cfg(dataset_cfg, "infer_script.infer")
  if restore_checkpoint_cfg is None or not restore_checkpoint_cfg.path:
    raise errors.ConfigError("CHECKPOINT_PATH is unset: pass --gin.CHECKPOINT_PATH="
                             "/path/to/MODEL_DIR/checkpoints (or a step directory with "
                             "--gin.utils.RestoreCheckpointConfig.mode=\"'specific'\").")
  if not output_dir:
    raise errors.ConfigError("INFER_OUTPUT_DIR is unset: pass --gin.INFER_OUTPUT_DIR=/path/to/dir.")
  utils.check_writable_dir(output_dir, "INFER_OUTPUT_DIR")
  inference.hide_gpus_from_tf()
  is_primary = jax.process_index() == 0
  generator = inference.Generator(model, partitioner, dataset_cfg.batch_size,
                                  log_every_s)
  _, step, params = next(iter(generator.load_params(dataset_cfg, restore_checkpoint_cfg)))
  if is_primary:  # The checkpoint and the data load: now INFER_OUTPUT_DIR is written.
    utils.make_output_dir(output_dir, "INFER_OUTPUT_DIR")
    if gin.config_str():
      gin_utils.write_config(output_dir, "config.gin")
  paths = {}
  for task in inference.tasks_of(dataset_cfg):
    preds = generator.predict_task(params, task, dataset_cfg)
    path = os.path.join(output_dir,
                        inference.output_name(task.name, dataset_cfg.split, step))
    if is_primary:
      n = inference.write_jsonl(path, inference.prediction_records(preds))
      logging.info("Wrote %d predictions of %s [%s] to %s.", n, task.name,
                   dataset_cfg.split, path)
    paths[task.name] = path
  skipped = bad_data.totals()
  if skipped:
    logging.info("Input: %s.", bad_data.summary(skipped))
  return paths


# absl main: parse the gin flags, then `infer()` with everything bound by gin.
main = gin_utils.gin_main(infer)


if __name__ == "__main__":
  from vlpretrain import infer as _infer_module  # pylint: disable=import-self
  gin_utils.run(_infer_module.main)
