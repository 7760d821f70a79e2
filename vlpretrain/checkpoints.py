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
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from vlpretrain import checkpoint_formats
from vlpretrain import errors

STATE_ITEM = checkpoint_formats.STATE_ITEM
T5X_PREFIX = "checkpoint_"  # t5x names its step directories checkpoint_<step>.


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
  name = name[len(T5X_PREFIX):] if name.startswith(T5X_PREFIX) else name
  return int(name) if name.isdigit() else None


def _is_step_dir(path: str) -> bool:
  """A step directory of any format checkpoint_formats reads, or an .npz file."""
  return (path.endswith(".npz") or _isdir(os.path.join(path, STATE_ITEM))
          or tf.io.gfile.exists(os.path.join(path, checkpoint_formats.LEGACY_FILE)))


def t5x_checkpoint_steps(directory: str) -> list[int]:
  """The steps of the `checkpoint_<step>` directories t5x writes in its MODEL_DIR."""
  steps = []
  for name in tf.io.gfile.listdir(directory):
    name = name.rstrip("/")
    step = step_dir_step(name) if name.startswith(T5X_PREFIX) else None
    if step is not None and _is_step_dir(os.path.join(directory, name)):
      steps.append(step)
  return sorted(steps)


def resolve(path: Optional[str], mode: str = "latest",
            steps: Optional[Sequence[int]] = None) -> list[tuple[str, Optional[int]]]:
  """Which step directories to read: [(step_dir, step)].

  mode='latest': `path` is a MODEL_DIR/checkpoints directory (or the MODEL_DIR); its
    latest step, or each of `steps` (a list, or 'all') when given.
  mode='specific': `path` is one step directory (holding 'state'), or a checkpoint of
    another format that checkpoint_formats reads (t5x's checkpoint_<step>, big_vision's
    .npz).
  t5x's MODEL_DIR (checkpoint_<step> directories) is read as well, in either mode.
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
  if path.endswith(".npz") or (os.path.basename(path).startswith(T5X_PREFIX)
                               and _is_step_dir(path)):
    if steps is not None:
      raise errors.ConfigError(f"checkpoint steps were given for {path!r}, one checkpoint.")
    checkpoint_formats.detect(path)  # A missing .npz file: a clear error here.
    return [(path, step_dir_step(path))]  # One checkpoint of t5x or big_vision: either mode.
  if mode == "specific":
    if steps is not None:
      raise errors.ConfigError("checkpoint steps were given with mode='specific' (one step "
                               "directory): use mode='latest' with the checkpoints directory.")
    if not _is_step_dir(path):
      raise errors.MissingPathError(
          f"{path!r} is not a checkpoint step directory (it has no {STATE_ITEM!r}, nor "
          f"t5x's {checkpoint_formats.LEGACY_FILE!r} file). "
          "With utils.RestoreCheckpointConfig.mode='specific' point CHECKPOINT_PATH at "
          "MODEL_DIR/checkpoints/<step>; or use mode='latest' with MODEL_DIR/checkpoints.")
    return [(path, step_dir_step(path))]
  directory = _manager_dir(path)
  if _isdir(directory) and not _isdir(os.path.join(directory, STATE_ITEM)):
    t5x_steps = t5x_checkpoint_steps(directory)
    if t5x_steps:  # A t5x MODEL_DIR.
      return _choose(directory, t5x_steps, steps, lambda s: f"{T5X_PREFIX}{s}")
  if _is_step_dir(directory):
    raise errors.ConfigError(
        f"{directory!r} is a single step directory: use "
        "utils.RestoreCheckpointConfig.mode='specific' for it, or point the path at its "
        "parent (MODEL_DIR/checkpoints) for mode='latest'.")
  available = checkpoint_steps(directory)
  if not available:
    raise errors.MissingPathError(
        f"{directory!r} holds no finished checkpoint steps. Point CHECKPOINT_PATH at a "
        "MODEL_DIR/checkpoints directory written by `vlpretrain train`.")
  return _choose(directory, available, steps, str)


def _choose(directory, available, steps, dirname) -> list[tuple[str, int]]:
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
  return [(os.path.join(directory, dirname(s)), s) for s in chosen]


def resolve_each(paths, mode: str = "latest") -> list[str]:
  """The step directory of each of `paths` (one path or a list: a warm start from a
  T5 checkpoint and a ViT .npz), in order."""
  paths = [paths] if isinstance(paths, str) else list(paths)
  return [resolve(p, mode)[0][0] for p in paths]


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


param_path = checkpoint_formats.param_path  # 'image_encoder/embedding/kernel'


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


def restore_params(step_dirs, abstract, shardings, dtype: Optional[str] = None,
                   assignment_map: Optional[Sequence[Tuple[str, Optional[str]]]] = None,
                   fresh=None, strict: bool = True):
  """The params of the checkpoint(s) `step_dirs`, as the model `abstract` names them.

  `step_dirs`: one checkpoint or a list, in any format `checkpoint_formats` reads
  (vlpretrain's or t5x's step directories, t5x's msgpack checkpoints, big_vision
  .npz files); each param is read from the first that holds its source name (a T5
  checkpoint and a ViT .npz warm-start one model). `abstract`/`shardings` (from
  `abstract_params`) give the tree, shapes and placement. `assignment_map` (see
  `assign`) renames params or leaves some unread; those come from `fresh` (a params
  tree like `abstract`, e.g. a fresh initialisation). A param in no checkpoint is an
  error naming it, or with `strict=False` (t5x's `RestoreCheckpointConfig.strict`)
  comes from `fresh` too. A stored shape that is not the model's is an error unless it
  is the same array with axes merged (t5x's flattened attention kernels), or a ViT
  position embedding with one extra (class token) row, which is dropped.
  `dtype` casts floating-point params (e.g. 'bfloat16'); None keeps the model's dtype.
  """
  if isinstance(step_dirs, str):
    step_dirs = [step_dirs]
  readers = [checkpoint_formats.open_reader(d) for d in step_dirs]
  where = " or ".join(repr(d) for d in step_dirs)
  sources = assign(abstract, assignment_map)
  targets = _target(abstract, shardings, dtype)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(targets)
  names = [param_path(key_path) for key_path, _ in leaves]
  plan = {}  # Model param -> (reader, checkpoint param), for the params read.
  for name, (_, leaf) in zip(names, leaves):
    source = sources[name]
    if source is None:
      continue
    reader = next((r for r in readers if source in r.shapes), None)
    if reader is None:
      if not strict:
        sources[name] = None
        continue
      raise errors.ConfigError(
          f"The checkpoint {where} has no param {source!r} (for the model's {name!r}): "
          "check that the model gin matches the one it was trained with, map the param "
          "elsewhere with utils.RestoreCheckpointConfig.assignment_map, or set "
          "utils.RestoreCheckpointConfig.strict=False to initialise such params afresh.")
    stored = reader.shapes[source]
    if not (checkpoint_formats.reshapes_to(stored, leaf.shape)
            or _is_class_token_posemb(name, stored, leaf.shape)):
      raise errors.ConfigError(
          f"Checkpoint {reader.path!r}: param {source!r} has shape {stored}, the "
          f"model's {name!r} expects {tuple(leaf.shape)}: the model gin does not match "
          "the checkpoint's model (sizes, vocabulary, image or patch size).")
    plan[name] = (reader, source)
  if fresh is None and None in (sources[n] for n in names):
    raise ValueError("restore_params: some params are not read from the checkpoint; pass "
                     "`fresh` params for them.")
  got = {}
  target_of = dict(zip(names, (leaf for _, leaf in leaves)))  # Model param -> target.
  for reader in readers:
    mine = {n: s for n, (r, s) in plan.items() if r is reader}
    if not mine:
      continue
    logging.info("Restoring %d of %d params from %s (%s checkpoint).", len(mine),
                 len(leaves), reader.path, reader.kind)
    posemb = {n: s for n, s in mine.items()
              if _is_class_token_posemb(n, reader.shapes[s], target_of[n].shape)}
    read = reader.read({s: target_of[n] for n, s in mine.items() if n not in posemb})
    for n, s in mine.items():
      if n in posemb:
        logging.info("%s: dropping the class token's row of %s %s.", n, s,
                     reader.shapes[s])
        got[n] = checkpoint_formats.place(
            np.asarray(reader.read_host([s])[s])[:, 1:], target_of[n])
      else:
        got[n] = read[s]
  fresh_leaves = jax.tree.leaves(fresh) if fresh is not None else [None] * len(leaves)
  params = [jnp.asarray(fresh_leaf, leaf.dtype) if name not in got else got[name]
            for name, (_, leaf), fresh_leaf in zip(names, leaves, fresh_leaves)]
  return jax.tree_util.tree_unflatten(treedef, params)


def _is_class_token_posemb(name: str, stored: tuple, target: tuple) -> bool:
  """A ViT position embedding stored with a class token's row first (big_vision's
  'token' pooling, vision_transformer's checkpoints) for vlpretrain's ViT, which has
  no class token."""
  return (name.endswith("pos_embedding") and len(stored) == 3 and len(target) == 3
          and stored[0] == target[0] and stored[2] == target[2]
          and stored[1] == target[1] + 1)
