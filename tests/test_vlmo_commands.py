"""VLMo through the real console commands: pretrain (with the retrieval eval during
training), `vlpretrain eval` retrieval, fine-tune the classifier from the pretraining
checkpoint, and evaluate it on easy-VQA's test split. Test-sized network, small splits."""
import json
import os
import shutil
import subprocess
import sys

import flax
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--gin.multiway.multiway_config.size='test'", "--gin.BATCH_SIZE=8",
         "--gin.shapes_settings.num_train=64", "--gin.shapes_settings.num_validation=40"]


def _vlpretrain(*args, timeout=600):
  script = os.path.join(os.path.dirname(sys.executable), "vlpretrain")
  script = script if os.path.exists(script) else shutil.which("vlpretrain")
  proc = subprocess.run([script, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-5000:]
  return proc


def _serve(artifact, *args):
  """The artifact's own serve.py CLI, in a fresh process; its JSON answer."""
  proc = subprocess.run([sys.executable, os.path.join(artifact, "serve.py"),
                         str(artifact), *map(str, args)], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout
  return json.loads(proc.stdout)


def _png_file(path):
  """A 64x64 PNG of a red square on white."""
  pixels = np.full((64, 64, 3), 255, np.uint8)
  pixels[16:48, 16:48] = (220, 40, 40)
  PIL.Image.fromarray(pixels).save(path)
  return path


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_vlmo_pretrain_retrieval_eval_finetune_and_classification_eval(tmp_path):
  pretrain, finetune = tmp_path / "vlmo", tmp_path / "vlmo_easy_vqa"
  _vlpretrain("train", "--gin_file=gin/vlmo_tiny.gin", f"--gin.MODEL_DIR={pretrain}",
              "--gin.TRAIN_STEPS=4", "--gin.train_script.train.eval_period=4",
              "--gin.infer_eval/utils.DatasetConfig.batch_size=20", *SMALL)
  history = _read(pretrain / "inference_eval" / "metrics_history.json")
  metrics = history["4"]["tasks"]["shapes_pairs"]["metrics"]
  assert 0.0 <= metrics["i2t_recall@1"] <= metrics["i2t_recall@5"] <= 100.0
  assert metrics["chance_i2t_recall@1"] > 0

  out = tmp_path / "retrieval"
  _vlpretrain("eval", "--gin_file=gin/eval_vlmo_retrieval.gin",
              f"--gin.CHECKPOINT_PATH={pretrain}/checkpoints",
              f"--gin.EVAL_OUTPUT_DIR={out}", "--gin.BATCH_SIZE=20", *SMALL[:1], *SMALL[2:])
  result = _read(out / "metrics.json")["tasks"]["shapes_pairs"]
  assert result["num_examples"] == 40 and 1 <= result["num_texts"] <= 40
  # The same params and split: the eval's figures are the trainer's last eval's.
  assert result["metrics"] == metrics
  with open(out / "predictions" / "shapes_pairs-validation-step4.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert len(records) == 40 and len(records[0]["top_texts"]) == 5

  # The dual encoder's serving artifact, answered by its own serve.py.
  export = tmp_path / "export"
  _vlpretrain("export", "--gin_file=gin/export_vlmo_retrieval.gin",
              f"--gin.CHECKPOINT_PATH={pretrain}/checkpoints", f"--gin.EXPORT_DIR={export}",
              "--gin.export_script.export.platforms=('cpu',)", *SMALL[:1])
  config = _read(export / "config.json")
  assert sorted(config["functions"]) == ["embed_image", "embed_text", "match"]
  image = _png_file(tmp_path / "scene.png")
  image_out = _serve(export, "--image", image)
  text_out = _serve(export, "--prompt", "a large red circle")
  both = _serve(export, "--image", image, "--prompt", "a large red circle")
  embedding = np.asarray(image_out["image_embedding"])
  assert embedding.shape == (32,) and abs(np.linalg.norm(embedding) - 1) < 1e-4
  assert both["similarity"] == pytest.approx(
      float(embedding @ np.asarray(text_out["text_embedding"])), abs=1e-5)
  assert both["match_log_prob"] <= 0.0

  _vlpretrain("train", "--gin_file=gin/finetune_vlmo_easy_vqa.gin",
              f"--gin.INITIAL_CHECKPOINT_PATH={pretrain}/checkpoints",
              f"--gin.MODEL_DIR={finetune}", "--gin.TRAIN_STEPS=3",
              "--gin.train_script.train.eval_period=3", "--gin.train_script.train.eval_steps=1",
              "--gin.train_script.train.infer_eval_dataset_cfg=None", *SMALL)
  out = tmp_path / "easy_vqa"
  _vlpretrain("eval", "--gin_file=gin/eval_vlmo_easy_vqa.gin",
              f"--gin.CHECKPOINT_PATH={finetune}/checkpoints",
              f"--gin.EVAL_OUTPUT_DIR={out}", *SMALL[:1])
  result = _read(out / "metrics.json")["tasks"]["easy_vqa_classes"]
  assert set(result["metrics"]) >= {"exact_match", "exact_match/yes/no",
                                    "exact_match/color", "exact_match/shape"}
  with open(out / "predictions" / "easy_vqa_classes-test-step3.jsonl") as f:
    record = json.loads(f.readline())
  answers = {"yes", "no", "red", "green", "blue", "black", "gray", "teal", "brown",
             "yellow", "circle", "rectangle", "triangle"}
  assert record["prediction"] in answers and record["targets"] in answers

  # The classifier's artifact answers with a label.
  export = tmp_path / "export_classifier"
  _vlpretrain("export", "--gin_file=gin/export_vlmo_easy_vqa.gin",
              f"--gin.CHECKPOINT_PATH={finetune}/checkpoints", f"--gin.EXPORT_DIR={export}",
              "--gin.export_script.export.platforms=('cpu',)", *SMALL[:1])
  config = _read(export / "config.json")
  assert list(config["functions"]) == ["classify"] and len(config["labels"]) == 13
  out = _serve(export, "--image", image, "--prompt", "question: what color is the shape?")
  assert out["prediction"] in answers


def _params(model_dir, step):
  """The params of checkpoint `step` in MODEL_DIR, flat by path."""
  with ocp.CheckpointManager(os.path.join(model_dir, "checkpoints")) as manager:
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
  return flax.traverse_util.flatten_dict(state["params"], sep="/")


@pytest.mark.slow
def test_stagewise_pretraining_freezes_attention_and_vision_in_the_text_stage(tmp_path):
  """Seed 002 sec. 3.4 through the three stage gins: the text stage starts from the
  image stage's params, leaves attention, V-FFN and the image side bit-identical and
  trains L-FFN; the image-text stage starts from the text stage."""
  stage1, stage2, stage3 = (tmp_path / f"stage{i}" for i in (1, 2, 3))
  _vlpretrain("train", "--gin_file=gin/vlmo_tiny_stage1_images.gin",
              f"--gin.MODEL_DIR={stage1}", "--gin.TRAIN_STEPS=2", *SMALL)
  _vlpretrain("train", "--gin_file=gin/vlmo_tiny_stage2_texts.gin",
              f"--gin.MODEL_DIR={stage2}", f"--gin.INITIAL_CHECKPOINT_PATH={stage1}",
              "--gin.TRAIN_STEPS=2", *SMALL)
  proc = _vlpretrain("train", "--gin_file=gin/vlmo_tiny_stagewise.gin",
                     f"--gin.MODEL_DIR={stage3}",
                     f"--gin.INITIAL_CHECKPOINT_PATH={stage2}", "--gin.TRAIN_STEPS=1",
                     "--gin.train_script.train.infer_eval_dataset_cfg=None", *SMALL)
  assert f"Initialising params from {stage2}/checkpoints/2" in proc.stderr
  after_image, after_text = _params(stage1, 2), _params(stage2, 2)
  frozen = [p for p in after_text if "/attention/" in p or "/v_ffn/" in p
            or p.startswith("encoder/patch_embedding")]
  assert len(frozen) > 10
  for path in frozen:
    np.testing.assert_array_equal(after_image[path], after_text[path], err_msg=path)
  trained = "encoder/layer_0/l_ffn/mlp/fc1/kernel"
  assert not np.array_equal(after_image[trained], after_text[trained])
