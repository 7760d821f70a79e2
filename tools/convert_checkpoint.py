"""Writes a model's params, read from any checkpoint vlpretrain reads, as a t5x or a
vlpretrain checkpoint.

    # vlpretrain -> t5x (t5x.eval / t5x.infer / t5x.train's INITIAL_CHECKPOINT_PATH):
    python tools/convert_checkpoint.py --gin_file=gin/models/jar_tiny.gin \
        --input=runs/jar_tiny/checkpoints --output=/tmp/t5x_jar_tiny --to=t5x
    # public T5 v1.1 + ViT -> one vlpretrain checkpoint of jar_base (fusion fresh):
    python tools/convert_checkpoint.py --gin_file=gin/models/jar_base.gin \
        --input=/ckpt/t5_1_1_base/checkpoint_1000000 --input=/ckpt/ViT-B_32.npz \
        --assignment_map=jar_warm_start --output=/tmp/jar_base_init --to=vlpretrain

`--gin_file` names the model (a gin that defines MODEL, e.g. gin/models/*.gin, or a
run gin). `--input` is read as `utils.RestoreCheckpointConfig.path` is: vlpretrain's or
t5x's MODEL_DIR or step directory, t5x's msgpack checkpoints, big_vision .npz; several
are read in order. `--assignment_map` is a preset of vlpretrain/assignment_maps.py;
params it leaves out start from the model's initialisation (`--seed`).

--to=t5x writes t5x's checkpoint_<step> in its msgpack + TensorStore format (with
t5x's own `checkpoints.Checkpointer`, so t5x must be importable; t5x reads this format
in every version) holding params and step, no optimizer state: t5x's eval and infer
need none, and t5x's trainer starts a fresh optimizer from it, as from the public T5
checkpoints. vlpretrain reads t5x's checkpoints directly, so t5x -> vlpretrain needs no
conversion; --to=vlpretrain writes <output>/checkpoints/<step>/state with 'params' (and
'step'), which `vlpretrain eval`/`infer`/`export` and a warm start read.
"""
import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # A conversion: stay off accelerators.

from absl import flags
from absl import logging
import gin
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vlpretrain import assignment_maps
from vlpretrain import checkpoints
from vlpretrain import errors
from vlpretrain import gin_utils

_INPUT = flags.DEFINE_multi_string("input", None, "Checkpoint(s) to read.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write.", required=True)
_TO = flags.DEFINE_enum("to", None, ["t5x", "vlpretrain"], "Format to write.",
                        required=True)
_MAP = flags.DEFINE_enum("assignment_map", None,
                         ["t5_1_1", "big_vision_vit", "jar_warm_start"],
                         "Assignment-map preset (vlpretrain/assignment_maps.py).")
_MODE = flags.DEFINE_enum("mode", "latest", ["latest", "specific"],
                          "How --input paths are read (RestoreCheckpointConfig.mode).")
_STEP = flags.DEFINE_integer("step", None, "Step to write (default: the input's step, "
                             "else 0).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the params no input holds.")


def _input_shapes(model) -> dict:
  """Shapes to trace the model's init with (batch 1): the lengths of the gin, else 8."""
  try:
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  except ValueError:
    lengths = {"inputs": 8, "targets": 8}
  size = model.module.vit_config.image_size
  return {"image": (1, size, size, 3), "encoder_input_tokens": (1, lengths["inputs"]),
          "decoder_input_tokens": (1, lengths["targets"]),
          "decoder_target_tokens": (1, lengths["targets"])}


def read_params(model, paths, mode="latest", assignment_map=None, seed=0):
  """(params, params_axes, step) of `model`, read from `paths`."""
  shapes = _input_shapes(model)
  abstract, shardings = checkpoints.abstract_params(model, shapes)
  step_dirs = checkpoints.resolve_each(paths, mode)
  variables = model.get_initial_variables(jax.random.PRNGKey(seed), shapes)
  params = checkpoints.restore_params(step_dirs, abstract, shardings,
                                      assignment_map=assignment_map,
                                      fresh=variables["params"],
                                      strict=assignment_map is None)
  steps = [checkpoints.step_dir_step(d) for d in step_dirs]
  return params, variables.get("params_axes"), steps[0] if len(steps) == 1 else None


def import_t5x():
  """t5x's checkpoint modules; imported before gin is parsed and locked (t5x registers
  gin configurables when imported)."""
  try:
    from t5x import checkpoints as t5x_checkpoints  # pylint: disable=g-import-not-at-top
    from t5x import partitioning as t5x_partitioning
    from t5x import train_state as t5x_train_state
  except ImportError as e:
    raise errors.ConfigError(f"--to=t5x needs t5x importable ({e}): put t5x, airio and "
                             "jestimator on PYTHONPATH (docs/running_under_t5x.md).") from e
  return t5x_checkpoints, t5x_partitioning, t5x_train_state


def write_t5x(params, params_axes, step: int, output: str) -> str:
  """t5x's checkpoint_<step> (msgpack + TensorStore), by t5x's own Checkpointer."""
  t5x_checkpoints, t5x_partitioning, t5x_train_state = import_t5x()
  variables = {"params": params}
  if params_axes is not None:
    variables["params_axes"] = params_axes
  state = t5x_train_state.InferenceState.create(variables).replace(
      step=jnp.asarray(step, jnp.int32))
  partitioner = t5x_partitioning.PjitPartitioner(num_partitions=1)
  t5x_checkpoints.Checkpointer(state, partitioner, output).save(state)
  return os.path.join(output, f"checkpoint_{step}")


def write_vlpretrain(params, step: int, output: str) -> str:
  """<output>/checkpoints/<step>/state = {'step', 'params'} (orbax)."""
  directory = os.path.join(os.path.abspath(output), "checkpoints")
  with ocp.CheckpointManager(directory) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(
        {"step": jnp.asarray(step, jnp.int32), "params": params})))
    manager.wait_until_finished()
  return os.path.join(directory, str(step))


def main(argv):
  del argv
  if _TO.value == "t5x":
    import_t5x()
  gin_utils.parse_gin_flags_from_command_line()
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()  # Built by gin.
  assignment_map = getattr(assignment_maps, _MAP.value)() if _MAP.value else None
  params, params_axes, step = read_params(model, _INPUT.value, _MODE.value,
                                          assignment_map, _SEED.value)
  step = _STEP.value if _STEP.value is not None else (step or 0)
  if _TO.value == "t5x":
    written = write_t5x(params, params_axes, step, _OUTPUT.value)
  else:
    written = write_vlpretrain(params, step, _OUTPUT.value)
  logging.info("Wrote %s.", written)
  print(written)
  sys.stdout.flush()


if __name__ == "__main__":
  gin_utils.run(main)
