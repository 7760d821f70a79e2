"""A tiny easy-VQA copy, a tiny JAR model and a checkpoint of it, for eval/infer/export tests.

`make_data_dir(root)` copies the first questions of the installed easy-vqa package (and
their PNGs) into the package's layout; `register_task(data_dir)` registers 'easy_vqa_tiny'
with the real easy_vqa preprocessors and vocabulary on that copy; `tiny_model()` is a JAR
model at test sizes (the same sizes the CLI test selects with gin flags, GIN_SIZE_FLAGS);
`write_checkpoint(model_dir)` writes checkpoints of it at steps 1 and 2 in the layout of
`vlpretrain.train`.
"""
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import seqio

from vlpretrain import metrics
from vlpretrain import models
from vlpretrain import optimizers
from vlpretrain import utils
from vlpretrain.data import easy_vqa
from vlpretrain.data import preprocessors
from vlpretrain.data import vocab
from vlpretrain.network import fusion, t5, transformer, vit

TASK = "easy_vqa_tiny"
LENGTHS = {"inputs": 24, "targets": 4}
N_TEST, N_TRAIN = 21, 32
BATCH_SIZE = 8
# gin flags that make gin/eval_easy_vqa.gin's jar_tiny model the model of tiny_model().
GIN_SIZE_FLAGS = ["--gin.VIT_VARIANT='test/8'", "--gin.T5_SIZE='test'",
                  "--gin.fusion.JAR.num_iterations=1",
                  "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 4}",
                  f"--gin.BATCH_SIZE={BATCH_SIZE}"]


def make_data_dir(root: str) -> str:
  """The first N_TEST test / N_TRAIN train questions of easy-VQA, with their images."""
  src = easy_vqa.package_data_dir()
  os.makedirs(root, exist_ok=True)
  shutil.copyfile(os.path.join(src, "answers.txt"), os.path.join(root, "answers.txt"))
  for split, n in (("test", N_TEST), ("train", N_TRAIN)):
    with open(os.path.join(src, split, "questions.json")) as f:
      questions = json.load(f)[:n]
    os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
    with open(os.path.join(root, split, "questions.json"), "w") as f:
      json.dump(questions, f)
    for image_id in {q[2] for q in questions}:
      shutil.copyfile(os.path.join(src, split, "images", f"{image_id}.png"),
                      os.path.join(root, split, "images", f"{image_id}.png"))
  return root


def questions(data_dir: str, split: str = "test"):
  with open(os.path.join(data_dir, split, "questions.json")) as f:
    return json.load(f)


def register_task(data_dir: str) -> str:
  """'easy_vqa_tiny': the easy_vqa Task's preprocessors and features on `data_dir`."""
  from vlpretrain.tasks import easy_vqa as easy_vqa_task  # pylint: disable=g-import-not-at-top
  if TASK in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(TASK)
  seqio.TaskRegistry.add(
      TASK,
      source=easy_vqa.EasyVqaSource(data_dir, validation_fraction=0.0),
      preprocessors=[easy_vqa_task.vqa_example, easy_vqa_task.easy_vqa_image,
                     preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=easy_vqa_task.output_features(),
      metric_fns=[metrics.exact_match])
  return TASK


def tiny_model(model_cls=models.VLEncoderDecoderModel):
  # gin/jar_tiny.gin's stem and fusion at test size (GIN_SIZE_FLAGS give gin the same
  # model).
  network = transformer.VLTransformer(
      vit.vit_config("test/8", 64, stem="conv"), t5.t5_config("test"),
      fusion.JAR(num_latents=16, num_iterations=1, mlp="gated_gelu",
                 resample_image=True, resample_text=False))
  v = vocab.shapes_vocabulary()
  return model_cls(network, v, v, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")


def write_checkpoint(model_dir: str, model=None) -> str:
  """MODEL_DIR/checkpoints/{1,2} as `vlpretrain.train` lays them out: item 'state' =
  {'step', 'params', 'opt_state'} (AdamW state), params from init seeds 1 and 0.

  (Training the model a few steps instead costs about a minute of compilation on a
  small CPU; test_restore_params_of_a_train_checkpoint reads one that train wrote.)
  """
  model = model or tiny_model()
  shapes = {"image": (1, 64, 64, 3), "encoder_input_tokens": (1, LENGTHS["inputs"]),
            "decoder_input_tokens": (1, LENGTHS["targets"])}
  init = jax.jit(lambda rng: nn.meta.unbox(
      model.get_initial_variables(rng, shapes)["params"]))
  optimizer = optimizers.adamw(1e-3)
  directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
  with ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=True)) as manager:
    for step, seed in ((1, 1), (2, 0)):
      params = init(jax.random.PRNGKey(seed))
      state = {"step": jnp.asarray(step, jnp.int32), "params": params,
               "opt_state": optimizer.init(params)}
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    manager.wait_until_finished()
  return directory


def shared_data_dir(tmp_path_factory) -> str:
  """The data dir, made once per pytest session, with TASK registered on it."""
  data_dir = str(tmp_path_factory.getbasetemp() / "tiny_vqa_shared" / "data")
  if not os.path.isdir(data_dir):
    make_data_dir(data_dir)
  register_task(data_dir)
  return data_dir


def shared(tmp_path_factory) -> dict:
  """Data dir and checkpoints, made once per pytest session (test modules share them)."""
  root = tmp_path_factory.getbasetemp() / "tiny_vqa_shared"
  data_dir = shared_data_dir(tmp_path_factory)
  ckpt_dir = os.path.join(str(root / "model"), "checkpoints")
  if not os.path.isdir(os.path.join(ckpt_dir, "2", "state")):
    shutil.rmtree(str(root / "model"), ignore_errors=True)
    write_checkpoint(str(root / "model"))
  return {"root": root, "data_dir": data_dir, "checkpoints": ckpt_dir}


def eval_dataset_cfg(split: str = "test", batch_size: int = BATCH_SIZE):
  return utils.DatasetConfig(TASK, LENGTHS, split, batch_size, False, 0)
