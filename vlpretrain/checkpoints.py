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
import re
from typing import Any, Mapping, Optional, Sequence, Tuple

from absl import logging
from flax import traverse_util
import gin
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import tensorflow as tf

from vlpretrain import errors

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
    raise errors.ConfigError(
        f"{macro} is required: pass --gin.{macro}=/path/to/pretraining/MODEL_DIR/"
        "checkpoints (the run whose params to start from).")
  return path


def checkpoint_steps(directory: str) -> list[int]:
  """The finished checkpoint steps in a `MODEL_DIR/checkpoints` directory, ascending."""
  if not _isdir(directory):
    raise errors.MissingPathError(f"Checkpoint directory {directory!r} does not exist.")
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
    raise errors.ConfigError(
        "No checkpoint given: pass --gin.CHECKPOINT_PATH=/path/to/MODEL_DIR/checkpoints "
        "(mode 'latest') or a step directory such as .../checkpoints/1000 "
        "(utils.RestoreCheckpointConfig.mode='specific').")
  if mode not in MODES:
    raise errors.ConfigError(f"utils.RestoreCheckpointConfig.mode={mode!r} is not supported; "
                             f"use one of {list(MODES)}.")
  path = _abspath(path).rstrip("/")
  if mode == "specific":
    if steps is not None:
      raise errors.ConfigError("checkpoint steps were given with mode='specific' (one step "
                               "directory): use mode='latest' with the checkpoints directory.")
    if not _isdir(os.path.join(path, STATE_ITEM)):
      raise errors.MissingPathError(
          f"{path!r} is not a checkpoint step directory (it has no {STATE_ITEM!r}). "
          "With utils.RestoreCheckpointConfig.mode='specific' point CHECKPOINT_PATH at "
          "MODEL_DIR/checkpoints/<step>; or use mode='latest' with MODEL_DIR/checkpoints.")
    return [(path, step_dir_step(path))]
  directory = _manager_dir(path)
  if _isdir(os.path.join(directory, STATE_ITEM)):
    raise errors.ConfigError(
        f"{directory!r} is a single step directory: use "
        "utils.RestoreCheckpointConfig.mode='specific' for it, or point the path at its "
        "parent (MODEL_DIR/checkpoints) for mode='latest'.")
  available = checkpoint_steps(directory)
  if not available:
    raise errors.MissingPathError(
        f"{directory!r} holds no finished checkpoint steps. Point CHECKPOINT_PATH at a "
        "MODEL_DIR/checkpoints directory written by `vlpretrain train`.")
  if steps is None:
    chosen = [available[-1]]
  elif steps == "all":
    chosen = available
  else:
    missing = sorted(set(int(s) for s in steps) - set(available))
    if missing:
      raise errors.MissingPathError(f"Checkpoint steps {missing} are not in {directory!r} "
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
    return model.get_initial_variables(rng, input_shapes, input_types)

  ctx = partitioner.activate() if partitioner is not None else contextlib.nullcontext()
  with ctx:
    variables = jax.eval_shape(init, jax.random.PRNGKey(0))
  abstract = variables["params"]
  if partitioner is not None:
    shardings = partitioner.param_shardings(abstract, variables.get("params_axes"))
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


def param_path(key_path) -> str:
  """A param's name as assignment maps match it: its keys joined by '/', e.g.
  'image_encoder/embedding/kernel'."""
  return "/".join(str(getattr(k, "key", k)) for k in key_path)


def assign(abstract, assignment_map: Optional[Sequence[Tuple[str, Optional[str]]]] = None,
           binding: str = "utils.RestoreCheckpointConfig.assignment_map"
           ) -> dict[str, Optional[str]]:
  """For each param of `abstract`, the checkpoint param it is read from (None: not read).

  t5x's `RestoreCheckpointConfig.assignment_map`: (regex, replacement) pairs over the
  params' paths (`param_path`); the first pattern that matches a whole path decides. A
  replacement of None leaves that param at its fresh initialisation; a string names the
  checkpoint param (`re.sub` groups allowed: (r'decoder/(.*)', r'text_decoder/\1')).
  Unmatched params are read under their own name. A pattern that matches no param is an
  error naming `binding`: a typo would otherwise restore everything.
  """
  paths = [param_path(kp) for kp, _ in jax.tree_util.tree_leaves_with_path(abstract)]
  assignment_map = [tuple(pair) for pair in (assignment_map or ())]
  for pair in assignment_map:
    if len(pair) != 2 or not isinstance(pair[0], str) or not (
        pair[1] is None or isinstance(pair[1], str)):
      raise errors.ConfigError(f"{binding}: each entry must be a (regex, replacement or None) "
                               f"pair, got {pair!r}.")
  compiled = [(re.compile(pattern), pattern, replacement)
              for pattern, replacement in assignment_map]
  sources, used = {}, set()
  for path in paths:
    sources[path] = path
    for regex, pattern, replacement in compiled:
      if regex.fullmatch(path):
        used.add(pattern)
        sources[path] = None if replacement is None else regex.sub(replacement, path)
        break
  unused = [pattern for _, pattern, _ in compiled if pattern not in used]
  if unused:
    tops = sorted({path.split("/")[0] for path in paths})
    raise errors.ConfigError(f"{binding}: the patterns {unused} match no param of the model "
                             f"(its params are named like {paths[0]!r}; top-level modules: "
                             f"{tops}).")
  return sources


def restore_params(step_dir: str, abstract, shardings, dtype: Optional[str] = None,
                   assignment_map: Optional[Sequence[Tuple[str, Optional[str]]]] = None,
                   fresh=None):
  """The 'params' of the checkpoint in `step_dir` (a MODEL_DIR/checkpoints/<step>).

  `abstract`/`shardings` (from `abstract_params`) give the tree, shapes and placement;
  a param missing from the checkpoint, or with another shape, is an error naming it.
  `dtype` casts floating-point params (e.g. 'bfloat16'); None keeps the model's dtype.
  `assignment_map` (see `assign`) renames params or leaves some unread; those come from
  `fresh` (a params tree like `abstract`, e.g. a fresh initialisation), required then.
  """
  state_dir = os.path.join(_abspath(step_dir), STATE_ITEM)
  if not _isdir(state_dir):
    raise errors.MissingPathError(f"No checkpoint state at {state_dir!r}.")
  sources = assign(abstract, assignment_map)
  targets = _target(abstract, shardings, dtype)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(targets)
  names = [param_path(key_path) for key_path, _ in leaves]
  if fresh is None and None in sources.values():
    raise ValueError("restore_params: the assignment map leaves params unread; pass "
                     "`fresh` params for them.")
  stored = _stored_shapes(state_dir)
  read = {}  # Checkpoint path -> target leaf, nested below as the checkpoint stores it.
  for name, (_, leaf) in zip(names, leaves):
    source = sources[name]
    if source is None:
      continue
    if source not in stored:
      raise errors.ConfigError(
          f"The checkpoint {step_dir!r} has no param {source!r} (for the model's "
          f"{name!r}): check that the model gin matches the one it was trained with, or "
          "map the param elsewhere with utils.RestoreCheckpointConfig.assignment_map.")
    if stored[source] != tuple(leaf.shape):
      raise errors.ConfigError(
          f"Checkpoint {step_dir!r}: param {source!r} has shape {stored[source]}, the "
          f"model's {name!r} expects {tuple(leaf.shape)}: the model gin does not match "
          "the one the checkpoint was trained with.")
    read[tuple(source.split("/"))] = leaf
  logging.info("Restoring %d of %d params from %s.", len(read), len(leaves), state_dir)
  target = {"params": traverse_util.unflatten_dict(read)}
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        state_dir, args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
  got = traverse_util.flatten_dict(restored["params"])
  fresh_leaves = jax.tree.leaves(fresh) if fresh is not None else [None] * len(leaves)
  params = []
  for name, (_, leaf), fresh_leaf in zip(names, leaves, fresh_leaves):
    source = sources[name]
    params.append(jnp.asarray(fresh_leaf, leaf.dtype) if source is None
                  else got[tuple(source.split("/"))])
  return jax.tree_util.tree_unflatten(treedef, params)


def _stored_shapes(state_dir: str) -> dict[str, tuple]:
  """The shapes of the params stored in a checkpoint's state, by `param_path`."""
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    metadata = checkpointer.metadata(state_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  return {param_path(key_path): tuple(leaf.shape)
          for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree["params"])}
