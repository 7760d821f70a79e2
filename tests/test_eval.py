"""eval.py and infer.py on a tiny easy-VQA copy (21 test questions) with a tiny JAR model
and checkpoints in vlpretrain.train's layout (tests/tiny_vqa.py)."""
import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import pytest
import seqio

import tiny_vqa
from vlpretrain import checkpoints
from vlpretrain import eval as eval_lib
from vlpretrain import infer as infer_lib
from vlpretrain import metrics
from vlpretrain import models
from vlpretrain import partitioning
from vlpretrain import utils
from vlpretrain.data import easy_vqa
from vlpretrain.data import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = tiny_vqa.TASK


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return tiny_vqa.shared(tmp_path_factory)


def _evaluate(tiny, output_dir, model=None, batch_size=tiny_vqa.BATCH_SIZE, **kwargs):
  return eval_lib.evaluate(
      model=model or tiny_vqa.tiny_model(),
      dataset_cfg=tiny_vqa.eval_dataset_cfg(batch_size=batch_size),
      partitioner=partitioning.PjitPartitioner(),
      restore_checkpoint_cfg=utils.RestoreCheckpointConfig(path=tiny["checkpoints"]),
      output_dir=str(output_dir),
      extra_metric_fns={TASK: [eval_lib.easy_vqa_accuracy_by_type]}, **kwargs)


@pytest.fixture(scope="module")
def first_eval(tiny):
  out = tiny["root"] / "eval_a"
  shutil.rmtree(out, ignore_errors=True)
  return out, _evaluate(tiny, out)


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _predictions_path(out, step=2):
  return os.path.join(out, "predictions", f"{TASK}-test-step{step}.jsonl")


def test_eval_twice_gives_identical_files_and_metrics_of_its_predictions(
    tiny, first_eval, tmp_path, caplog):
  out_a, result = first_eval
  with caplog.at_level(logging.INFO):
    _evaluate(tiny, tmp_path / "b")
  assert "examples/s | ETA" in caplog.text and f"{tiny_vqa.N_TEST}/{tiny_vqa.N_TEST}" \
      in caplog.text  # The progress line.
  for name in ("metrics.json", os.path.join("predictions", f"{TASK}-test-step2.jsonl")):
    with open(os.path.join(out_a, name)) as a, open(tmp_path / "b" / name) as b:
      assert a.read() == b.read(), name

  assert result["step"] == 2 and result["split"] == "test"
  assert result["tasks"][TASK]["num_examples"] == tiny_vqa.N_TEST
  with open(os.path.join(out_a, "metrics.json")) as f:
    assert json.load(f) == result

  # One line per example, in order, with the example's text; the metrics recomputed
  # from these lines by hand equal the written ones.
  lines = _lines(_predictions_path(out_a))
  questions = tiny_vqa.questions(tiny["data_dir"])
  assert [l["index"] for l in lines] == list(range(tiny_vqa.N_TEST))
  assert [l["inputs"] for l in lines] == [f"question: {q}" for q, _, _ in questions]
  assert [l["targets"] for l in lines] == [a for _, a, _ in questions]
  right = [metrics.normalize_text(l["prediction"]) == l["targets"] for l in lines]
  got = result["tasks"][TASK]["metrics"]
  assert got["exact_match"] == pytest.approx(100.0 * sum(right) / len(right))
  for kind in ("yes/no", "color", "shape"):
    idx = [i for i, (_, a, _) in enumerate(questions) if easy_vqa.answer_type(a) == kind]
    assert got[f"exact_match/{kind}"] == pytest.approx(
        100.0 * sum(right[i] for i in idx) / len(idx))
  assert glob.glob(os.path.join(out_a, "events.out.tfevents.*"))
  assert os.path.exists(os.path.join(out_a, "metrics_history.json"))


class _AlwaysYes(models.VLEncoderDecoderModel):
  """Answers "yes" to everything, whatever the params: metrics known by hand."""

  def predict_batch_with_aux(self, params, batch, rng=None, **kwargs):
    batch_size, length = batch["decoder_input_tokens"].shape
    ids = self.output_vocabulary.encode("yes") + [self.output_vocabulary.eos_id]
    row = jnp.zeros((length,), jnp.int32).at[:len(ids)].set(jnp.asarray(ids))
    return jnp.tile(row, (batch_size, 1)), {"scores": jnp.zeros((batch_size,))}


def test_constant_answer_metrics_match_hand_count_for_every_step(tiny, tmp_path):
  """21 questions: 4 'yes', 11 'no', 4 colours, 2 shapes (checked below)."""
  result = _evaluate(tiny, tmp_path, model=tiny_vqa.tiny_model(_AlwaysYes),
                     checkpoint_steps="all")
  answers = [a for _, a, _ in tiny_vqa.questions(tiny["data_dir"])]
  assert (answers.count("yes"), answers.count("no")) == (4, 11)
  assert [easy_vqa.answer_type(a) for a in answers].count("color") == 4
  assert result["tasks"][TASK]["metrics"] == pytest.approx({
      "exact_match": 100.0 * 4 / 21, "exact_match/yes/no": 100.0 * 4 / 15,
      "exact_match/color": 0.0, "exact_match/shape": 0.0})
  with open(tmp_path / "metrics_history.json") as f:
    history = json.load(f)
  assert sorted(history) == ["1", "2"] and result["step"] == 2
  assert history["1"]["tasks"] == history["2"]["tasks"]
  for step in (1, 2):
    assert {l["prediction"] for l in _lines(_predictions_path(tmp_path, step))} == {"yes"}


def test_infer_writes_one_line_per_example_whatever_the_batch_padding(
    tiny, first_eval, tmp_path):
  """Batch 4 pads the last of 6 batches with 3 copies; eval used batch 8 (3 padded)."""
  paths = infer_lib.infer(
      model=tiny_vqa.tiny_model(), dataset_cfg=tiny_vqa.eval_dataset_cfg(batch_size=4),
      partitioner=partitioning.PjitPartitioner(),
      restore_checkpoint_cfg=utils.RestoreCheckpointConfig(
          path=os.path.join(tiny["checkpoints"], "2"), mode="specific"),
      output_dir=str(tmp_path))
  assert paths == {TASK: str(tmp_path / f"{TASK}-test-step2.jsonl")}
  lines = _lines(paths[TASK])
  assert len(lines) == tiny_vqa.N_TEST
  assert [l["index"] for l in lines] == list(range(tiny_vqa.N_TEST))
  eval_lines = _lines(_predictions_path(first_eval[0]))
  assert [l["prediction"] for l in lines] == [l["prediction"] for l in eval_lines]


def test_configuration_errors_are_clear(tiny, tmp_path):
  with pytest.raises(ValueError, match="CHECKPOINT_PATH is unset"):
    eval_lib.evaluate(model=None, dataset_cfg=tiny_vqa.eval_dataset_cfg(),
                      partitioner=None, restore_checkpoint_cfg=utils.RestoreCheckpointConfig(),
                      output_dir=str(tmp_path))
  with pytest.raises(ValueError, match="shuffle"):
    eval_lib.evaluate(model=None, dataset_cfg=utils.DatasetConfig(
        TASK, tiny_vqa.LENGTHS, "test", 8, True, 0), partitioner=None,
                      restore_checkpoint_cfg=utils.RestoreCheckpointConfig(path="x"),
                      output_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"extra_metric_fns names \['vqa2_vqa'\]"):
    eval_lib.evaluate(model=None, dataset_cfg=tiny_vqa.eval_dataset_cfg(),
                      partitioner=None,
                      restore_checkpoint_cfg=utils.RestoreCheckpointConfig(path="x"),
                      output_dir=str(tmp_path), extra_metric_fns={"vqa2_vqa": []})
  with pytest.raises(FileNotFoundError, match="not a checkpoint step directory"):
    eval_lib.evaluate(
        model=tiny_vqa.tiny_model(), dataset_cfg=tiny_vqa.eval_dataset_cfg(),
        partitioner=partitioning.PjitPartitioner(),
        restore_checkpoint_cfg=utils.RestoreCheckpointConfig(
            path=tiny["checkpoints"], mode="specific"), output_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"steps \[7\] are not in"):
    _evaluate(tiny, tmp_path, checkpoint_steps=[2, 7])
  # A model gin that does not match the checkpoint (T5 'tiny' instead of 'test').
  from vlpretrain.network import fusion, t5, transformer, vit  # pylint: disable=g-import-not-at-top
  from vlpretrain.data import vocab  # pylint: disable=g-import-not-at-top
  bigger = models.VLEncoderDecoderModel(
      transformer.VLTransformer(vit.vit_config("test/8", 64), t5.t5_config("tiny"),
                                fusion.JAR(num_latents=4, num_iterations=1)),
      vocab.shapes_vocabulary(), vocab.shapes_vocabulary())
  with pytest.raises(ValueError, match="does not (fit|match)"):
    _evaluate(tiny, tmp_path, model=bigger)


def test_restore_params_of_a_train_checkpoint(clean_gin, toy_task, tmp_path):
  """checkpoints.restore_params reads the params (only) that vlpretrain.train saved."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import toy_model  # pylint: disable=g-import-not-at-top
  from vlpretrain import optimizers  # pylint: disable=g-import-not-at-top
  from vlpretrain import train as train_lib  # pylint: disable=g-import-not-at-top
  model = toy_model.ToyModel()
  _, state = train_lib.train(
      model=model, train_dataset_cfg=utils.DatasetConfig(
          toy_task, toy_model.TASK_FEATURE_LENGTHS, "train", 8, True, 0),
      partitioner=partitioning.PjitPartitioner(), model_dir=str(tmp_path),
      total_steps=1, optimizer=optimizers.adamw(1e-2), log_period=1)
  shapes = {"image": (1, 8, 8, 3), "encoder_input_tokens": (1, 6),
            "decoder_input_tokens": (1, 5)}
  partitioner = partitioning.PjitPartitioner()
  abstract, shardings = checkpoints.abstract_params(model, shapes, None, partitioner)
  [(step_dir, step)] = checkpoints.resolve(str(tmp_path), "latest")  # MODEL_DIR works.
  assert (step_dir, step) == (str(tmp_path / "checkpoints" / "1"), 1)
  params = checkpoints.restore_params(step_dir, abstract, shardings)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  half = checkpoints.restore_params(step_dir, abstract, shardings, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(half)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("gin_file,task,split", [
    ("eval_easy_vqa.gin", "easy_vqa", "test"), ("eval_vqa2.gin", "vqa2_vqa", "validation"),
    ("eval_gqa.gin", "gqa_vqa", "test_dev"),
    ("eval_snli_ve.gin", "snlive_entailment", "test")])
def test_eval_gins(clean_gin, gin_file, task, split):
  import gin  # pylint: disable=g-import-not-at-top
  from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin_flags([], [gin_file], ["CHECKPOINT_PATH = '/ckpt'"])
  cfg = utils.DatasetConfig()
  assert (cfg.mixture_or_task_name, cfg.split, cfg.shuffle) == (task, split, False)
  assert utils.RestoreCheckpointConfig().path == "/ckpt"
  assert gin.query_parameter("%EVAL_OUTPUT_DIR") is None


def test_finetune_gins_require_the_initial_checkpoint(clean_gin):
  import gin  # pylint: disable=g-import-not-at-top
  from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin_flags([], ["finetune_easy_vqa.gin"], [])
  with pytest.raises(ValueError, match="INITIAL_CHECKPOINT_PATH is required: pass"):
    utils.CheckpointConfig()
  gin.clear_config(clear_constants=True)
  gin_utils.parse_gin_flags([], ["finetune_vqa2.gin"], ["INITIAL_CHECKPOINT_PATH = '/p'"])
  restore = utils.CheckpointConfig().restore
  assert (restore.path, restore.mode) == ("/p", "latest")
  assert gin.query_parameter("%TRAIN_STEPS") == 50000
  assert utils.create_learning_rate_scheduler()(10**6) == 0.0  # Decays to 0 by 50k.
  assert float(utils.create_learning_rate_scheduler()(1000)) == pytest.approx(1e-5)


def test_easy_vqa_loop_pretraining_gin(clean_gin):
  """gin/jar_tiny_shape_questions.gin: jar_tiny's network and run on the shapes world's
  shape questions, whose answers fit its 4 target positions."""
  import gin  # pylint: disable=g-import-not-at-top
  from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin_flags([], ["jar_tiny_shape_questions.gin"], [])
  with gin.config_scope("train"):
    cfg = utils.DatasetConfig()
  assert cfg.mixture_or_task_name == "shapes_vqa_shape" and cfg.split == "train"
  assert gin.query_parameter("%T5_SIZE") == "tiny"
  assert gin.query_parameter("%VIT_VARIANT") == "mini/8"
  assert utils.CheckpointConfig().restore.path is None  # Pretraining: from scratch.
  vocabulary = seqio.get_mixture_or_task("shapes_vqa_shape").output_features[
      "targets"].vocabulary
  for answer in shapes.SHAPES:  # One piece + EOS.
    assert len(vocabulary.encode(answer)) + 1 <= cfg.task_feature_lengths["targets"]


def _console_script() -> str:
  script = os.path.join(os.path.dirname(sys.executable), "vlpretrain")
  script = script if os.path.exists(script) else shutil.which("vlpretrain")
  assert script, "The `vlpretrain` console script is not installed: pip install -e ."
  return script


@pytest.mark.slow
def test_cli_eval_on_the_easy_vqa_gin(tiny, first_eval, tmp_path):
  """`vlpretrain eval --gin_file=eval_easy_vqa.gin` (model sizes and the easy-VQA
  folder set by gin) gives the metrics and predictions of the in-process evaluation."""
  (tmp_path / "tiny_easy_vqa.gin").write_text(
      "from __gin__ import dynamic_registration\n"
      "from vlpretrain.data import easy_vqa\n"
      f"easy_vqa.easy_vqa_source.data_dir = '{tiny['data_dir']}'\n"
      "easy_vqa.easy_vqa_source.validation_fraction = 0.0\n"
      "include 'eval_easy_vqa.gin'\n")
  out = tmp_path / "eval"
  proc = subprocess.run(
      [_console_script(), "eval", f"--gin_search_paths={tmp_path}",
       "--gin_file=tiny_easy_vqa.gin", f"--gin.CHECKPOINT_PATH={tiny['checkpoints']}",
       f"--gin.EVAL_OUTPUT_DIR={out}", *tiny_vqa.GIN_SIZE_FLAGS],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-5000:]
  with open(out / "metrics.json") as f:
    cli = json.load(f)
  _, in_process = first_eval
  assert cli["tasks"]["easy_vqa"] == in_process["tasks"][TASK]
  assert [l["prediction"] for l in _lines(out / "predictions" / "easy_vqa-test-step2.jsonl")] \
      == [l["prediction"] for l in _lines(_predictions_path(first_eval[0]))]
  assert "MIXTURE_OR_TASK_NAME = 'easy_vqa'" in (out / "config.gin").read_text()

  # `python -m vlpretrain.infer` needs a checkpoint: the hint names the flag.
  proc = subprocess.run(
      [sys.executable, "-m", "vlpretrain.infer", "--gin_file=jar_tiny.gin",
       "--gin_file=runs/infer.gin", f"--gin.INFER_OUTPUT_DIR={tmp_path}/infer"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode != 0
  assert "CHECKPOINT_PATH is unset: pass --gin.CHECKPOINT_PATH=" in proc.stderr, \
      proc.stderr[-3000:]
