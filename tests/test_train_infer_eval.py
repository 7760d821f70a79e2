"""Inference evals during training (train.py's `infer_eval_dataset_cfg`) on the tiny
easy-VQA copy of tests/tiny_vqa.py (the real Task: vocabulary, exact match, per answer
type) with the toy model of tests/toy_model.py (compiles in seconds; the JAR model's
decoding is covered by test_eval.py): the metrics of each eval during training are
those `vlpretrain eval` computes on the checkpoint of that step."""
import glob
import json
import logging
import os
import zlib

import gin
import pytest

import tiny_vqa
import toy_model
from vlpretrain import eval as eval_lib
from vlpretrain import gin_utils
from vlpretrain import optimizers
from vlpretrain import partitioning
from vlpretrain import train as train_lib
from vlpretrain import utils
from vlpretrain.data import vocab

TASK = tiny_vqa.TASK


def predictions_crc32(targets, predictions):
  """A checksum of all predictions, so equal metrics mean equal predictions."""
  del targets
  return {"predictions_crc32": float(zlib.crc32("\n".join(predictions).encode()))}


EXTRA_METRIC_FNS = {TASK: [eval_lib.easy_vqa_accuracy_by_type, predictions_crc32]}


def _model():
  return toy_model.ToyModel(vocab_size=vocab.shapes_vocabulary().vocab_size)


def test_infer_evals_during_training_equal_eval_of_the_checkpoints(
    clean_gin, tmp_path_factory, tmp_path, caplog):
  """4 steps, eval_period 2: infer evals with the live (sharded) params at steps 2 and
  4, equal to `eval.evaluate` on the checkpoints of steps 2 and 4 (restored params)."""
  tiny_vqa.shared_data_dir(tmp_path_factory)  # Registers TASK on the tiny copy.
  model_dir = tmp_path / "run"
  infer_cfg = tiny_vqa.eval_dataset_cfg()  # test split: 21 questions, last batch padded.
  with caplog.at_level(logging.INFO):
    step, _ = train_lib.train(
        model=_model(), train_dataset_cfg=utils.DatasetConfig(
            TASK, tiny_vqa.LENGTHS, "train", tiny_vqa.BATCH_SIZE, True, 0),
        partitioner=partitioning.PjitPartitioner(), model_dir=str(model_dir),
        total_steps=4, eval_period=2, log_period=2, optimizer=optimizers.adamw(3e-2),
        checkpoint_cfg=utils.CheckpointConfig(save=utils.SaveCheckpointConfig(period=2)),
        infer_eval_dataset_cfg=infer_cfg, infer_eval_metric_fns=EXTRA_METRIC_FNS)
  assert step == 4
  for s in (2, 4):
    assert f"infer_eval {TASK} [test] step {s} | {tiny_vqa.N_TEST} examples | " \
        "exact_match " in caplog.text

  out = model_dir / "inference_eval"
  with open(out / "metrics_history.json") as f:
    history = json.load(f)
  assert sorted(history) == ["2", "4"]
  assert (history["4"]["step"], history["4"]["split"]) == (4, "test")
  assert set(history["4"]["tasks"][TASK]["metrics"]) == {
      "exact_match", "exact_match/yes/no", "exact_match/color", "exact_match/shape",
      "predictions_crc32"}
  assert glob.glob(str(out / "events.out.tfevents.*"))

  evaluated = eval_lib.evaluate(
      model=_model(), dataset_cfg=infer_cfg, partitioner=partitioning.PjitPartitioner(),
      restore_checkpoint_cfg=utils.RestoreCheckpointConfig(
          path=str(model_dir / "checkpoints")),
      output_dir=str(tmp_path / "eval"), checkpoint_steps="all",
      extra_metric_fns=EXTRA_METRIC_FNS, write_predictions=False)
  assert evaluated["step"] == 4
  with open(tmp_path / "eval" / "metrics_history.json") as f:
    eval_history = json.load(f)
  for s in ("2", "4"):  # The same numbers, exactly.
    assert history[s]["tasks"] == eval_history[s]["tasks"], s


def test_infer_eval_configuration_errors_name_the_binding(clean_gin, toy_task, tmp_path):
  """Raised before any device or data work."""
  def train(model, shuffle=False, **kwargs):
    return train_lib.train(
        model=model, train_dataset_cfg=utils.DatasetConfig(
            toy_task, toy_model.TASK_FEATURE_LENGTHS, "train", 8, True, 0),
        partitioner=None, model_dir=str(tmp_path), total_steps=1,
        optimizer=optimizers.adamw(1e-2), infer_eval_dataset_cfg=utils.DatasetConfig(
            toy_task, toy_model.TASK_FEATURE_LENGTHS, "validation", 8, shuffle, 0),
        **kwargs)

  with pytest.raises(ValueError, match="infer_eval_dataset_cfg is set, but the model "
                     r"\(object\) has no predict_batch_with_aux"):
    train(object())
  with pytest.raises(ValueError, match="train_script.train.infer_eval_dataset_cfg: "
                     "the dataset config has shuffle=True"):
    train(toy_model.ToyModel(), shuffle=True)
  with pytest.raises(ValueError, match=r"train_script.train.infer_eval_metric_fns names "
                     r"\['easy_vqa'\], which are not among the evaluated tasks"):
    train(toy_model.ToyModel(), infer_eval_metric_fns={"easy_vqa": []})
  assert not os.listdir(tmp_path)


def test_gins_bind_infer_eval(clean_gin, tmp_path):
  """runs/pretrain.gin: off by default; finetune_easy_vqa.gin: easy_vqa validation,
  whatever the training mixture, with the per-answer-type exact match."""
  (tmp_path / "toy.gin").write_text("include 'runs/pretrain.gin'\nMODEL = None\n")
  gin_utils.parse_gin_flags([str(tmp_path)], ["toy.gin"], [])
  assert gin.query_parameter("vlpretrain.train.train.infer_eval_dataset_cfg") is None
  assert gin.query_parameter("vlpretrain.train.train.infer_eval_metric_fns") is None
  gin.clear_config(clear_constants=True)

  gin_utils.parse_gin_flags([], ["finetune_easy_vqa.gin"], [
      "INITIAL_CHECKPOINT_PATH = '/p'", "MIXTURE_OR_TASK_NAME = 'other_mixture'"])
  bindings = gin.get_bindings(train_lib.train)
  cfg = bindings["infer_eval_dataset_cfg"]
  assert (cfg.mixture_or_task_name, cfg.split, cfg.shuffle, cfg.batch_size) == (
      "easy_vqa", "validation", False, 256)
  assert cfg.task_feature_lengths == {"inputs": 24, "targets": 4}
  [(task, [fn])] = bindings["infer_eval_metric_fns"].items()
  assert (task, fn.__name__) == ("easy_vqa", "easy_vqa_accuracy_by_type")
  assert bindings["eval_period"] == gin.query_parameter("%TRAIN_STEPS") == 1500  # At the end.
