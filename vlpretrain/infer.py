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
import tensorflow as tf

from vlpretrain import gin_utils
from vlpretrain import inference
from vlpretrain import partitioning
from vlpretrain import utils


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
    raise ValueError("CHECKPOINT_PATH is unset: pass --gin.CHECKPOINT_PATH="
                     "/path/to/MODEL_DIR/checkpoints (or a step directory with "
                     "--gin.utils.RestoreCheckpointConfig.mode=\"'specific'\").")
  if not output_dir:
    raise ValueError("INFER_OUTPUT_DIR is unset: pass --gin.INFER_OUTPUT_DIR=/path/to/dir.")
  inference.hide_gpus_from_tf()
  is_primary = jax.process_index() == 0
  if is_primary:
    tf.io.gfile.makedirs(output_dir)
    if gin.config_str():
      gin_utils.write_config(output_dir, "config.gin")
  generator = inference.Generator(model, partitioner, dataset_cfg.batch_size,
                                  log_every_s)
  _, step, params = next(iter(generator.load_params(dataset_cfg, restore_checkpoint_cfg)))
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
  return paths


# absl main: parse the gin flags, then `infer()` with everything bound by gin.
main = gin_utils.gin_main(infer)


if __name__ == "__main__":
  from vlpretrain import infer as _infer_module  # pylint: disable=import-self
  gin_utils.run(_infer_module.main)
