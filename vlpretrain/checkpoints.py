"""Reading checkpoints that `vlpretrain.train` writes: their steps, and params only.

Layout (orbax `CheckpointManager`)::

    MODEL_DIR/checkpoints/<step>/state      {'step', 'params', 'opt_state'} (PyTree)
    MODEL_DIR/checkpoints/<step>/dataset    per-host tf.data iterator state

Eval, infer and export need the params alone:

    abstract, shardings = checkpoints.abstract_params(model, input_shapes, partitioner)
    step_dir, step = checkpoints.resolve(path, mode="latest")
    params = checkpoints.restore_params(step_dir, abstract, shardings)

`restore_params` reads only the 'params' subtree (partial restore): the optimizer state
is never loaded, so a checkpoint evaluates in the memory of the model alone.
"""
import contextlib
import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import tensorflow as tf

STATE_ITEM = "state"


def _abspath(path: str) -> str:
  """Absolute local path; URIs (gs://...) unchanged."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def _isdir(path: str) -> bool:
  return tf.io.gfile.isdir(path)
MODES = ("latest", "specific")


@gin.configurable
def required_path(path: Optional[str] = None,
                  macro: str = "INITIAL_CHECKPOINT_PATH") -> str:
  """`path`, or a clear error naming the gin macro that must be set (runs/finetune.gin:
  `utils.RestoreCheckpointConfig.path = @checkpoints.required_path()`)."""
  if not path or path is gin.REQUIRED:
    raise ValueError(
        f"{macro} is required: pass --gin.{macro}=/path/to/pretraining/MODEL_DIR/"
        "checkpoints (the run whose params to start from).")
  return path


def checkpoint_steps(directory: str) -> list[int]:
  """The finished checkpoint steps in a `MODEL_DIR/checkpoints` directory, ascending."""
  if not _isdir(directory):
    raise FileNotFoundError(f"Checkpoint directory {directory!r} does not exist.")
  options = ocp.CheckpointManagerOptions(read_only=True, create=False)
  with ocp.CheckpointManager(_abspath(directory), options=options) as manager:
    return sorted(int(s) for s in manager.all_steps())


def _manager_dir(path: str) -> str:
  """MODEL_DIR itself is accepted in place of MODEL_DIR/checkpoints."""
  nested = os.path.join(path, "checkpoints")
  if _isdir(nested) and not _isdir(os.path.join(path, STATE_ITEM)):
    return nested
  return path


def step_dir_step(step_dir: str) -> Optional[int]:
  """The step of a step directory (its name), or None if the name is not a number."""
  name = os.path.basename(os.fspath(step_dir).rstrip("/"))
  return int(name) if name.isdigit() else None


def resolve(path: Optional[str], mode: str = "latest",
            steps: Optional[Sequence[int]] = None) -> list[tuple[str, Optional[int]]]:
  """Which step directories to read: [(step_dir, step)].

  mode='latest': `path` is a MODEL_DIR/checkpoints directory (or the MODEL_DIR); its
    latest step, or each of `steps` (a list, or 'all') when given.
  mode='specific': `path` is one step directory (holding 'state').
  """
  if not path:
    raise ValueError(
        "No checkpoint given: pass --gin.CHECKPOINT_PATH=/path/to/MODEL_DIR/checkpoints "
        "(mode 'latest') or a step directory such as .../checkpoints/1000 "
        "(utils.RestoreCheckpointConfig.mode='specific').")
  if mode not in MODES:
    raise ValueError(f"utils.RestoreCheckpointConfig.mode={mode!r} is not supported; "
                     f"use one of {list(MODES)}.")
  path = _abspath(path).rstrip("/")
  if mode == "specific":
    if steps is not None:
      raise ValueError("checkpoint steps were given with mode='specific' (one step "
                       "directory): use mode='latest' with the checkpoints directory.")
    if not _isdir(os.path.join(path, STATE_ITEM)):
      raise FileNotFoundError(
          f"{path!r} is not a checkpoint step directory (it has no {STATE_ITEM!r}). "
          "With utils.RestoreCheckpointConfig.mode='specific' point CHECKPOINT_PATH at "
          "MODEL_DIR/checkpoints/<step>; or use mode='latest' with MODEL_DIR/checkpoints.")
    return [(path, step_dir_step(path))]
  directory = _manager_dir(path)
  if _isdir(os.path.join(directory, STATE_ITEM)):
    raise ValueError(
        f"{directory!r} is a single step directory: use "
        "utils.RestoreCheckpointConfig.mode='specific' for it, or point the path at its "
        "parent (MODEL_DIR/checkpoints) for mode='latest'.")
  available = checkpoint_steps(directory)
  if not available:
    raise FileNotFoundError(
        f"{directory!r} holds no finished checkpoint steps. Point CHECKPOINT_PATH at a "
        "MODEL_DIR/checkpoints directory written by `vlpretrain train`.")
  if steps is None:
    chosen = [available[-1]]
  elif steps == "all":
    chosen = available
  else:
    missing = sorted(set(int(s) for s in steps) - set(available))
    if missing:
      raise FileNotFoundError(f"Checkpoint steps {missing} are not in {directory!r} "
                              f"(it has {available}).")
    chosen = sorted(set(int(s) for s in steps))
  return [(os.path.join(directory, str(s)), s) for s in chosen]


def abstract_params(model, input_shapes: Mapping[str, tuple],
                    input_types: Optional[Mapping[str, Any]] = None,
                    partitioner=None) -> tuple[Any, Any]:
  """Abstract (ShapeDtypeStruct) params of `model` and their shardings; no memory used.

  With `partitioner` the shardings come from the params' logical axis names; without
  one every param lives on the first device (single-device eval/export).
  """
  def init(rng):
    return model.get_initial_variables(rng, input_shapes, input_types)["params"]

  ctx = partitioner.activate() if partitioner is not None else contextlib.nullcontext()
  with ctx:
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
  abstract = jax.tree.map(
      lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, boxed,
      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  if partitioner is not None:
    shardings = partitioner.variable_shardings(boxed)
  else:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  return abstract, shardings


def _target(abstract, shardings, dtype: Optional[str]):
  def leaf(x, s):
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    return jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype) if dtype and floating
                                else x.dtype, sharding=s)
  return jax.tree.map(leaf, abstract, shardings)


def restore_params(step_dir: str, abstract, shardings, dtype: Optional[str] = None):
  """The 'params' of the checkpoint in `step_dir` (a MODEL_DIR/checkpoints/<step>).

  `abstract`/`shardings` (from `abstract_params`) give the tree, shapes and placement;
  a param missing from the checkpoint, or with another shape, is an error naming it.
  `dtype` casts floating-point params (e.g. 'bfloat16'); None keeps the model's dtype.
  """
  state_dir = os.path.join(_abspath(step_dir), STATE_ITEM)
  if not _isdir(state_dir):
    raise FileNotFoundError(f"No checkpoint state at {state_dir!r}.")
  target = {"params": _target(abstract, shardings, dtype)}
  logging.info("Restoring params from %s.", state_dir)
  try:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      restored = checkpointer.restore(
          state_dir, args=ocp.args.PyTreeRestore(
              item=target,
              restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True))
  except (ValueError, KeyError) as e:
    raise ValueError(
        f"The checkpoint {step_dir!r} does not fit the configured model (a parameter is "
        f"missing or has another shape): check that the model gin matches the one it "
        f"was trained with. ({str(e)[:1000]})") from e
  _check_shapes(restored["params"], abstract, step_dir)
  return restored["params"]


def _check_shapes(params, abstract, step_dir):
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree.leaves(abstract)):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(
          f"Checkpoint {step_dir!r}: param {jax.tree_util.keystr(path)} has shape "
          f"{tuple(got.shape)}, the model expects {tuple(want.shape)}: the model gin "
          "does not match the one the checkpoint was trained with.")
