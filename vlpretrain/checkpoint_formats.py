"""Reading params from the checkpoint formats a vlpretrain user has.

    vlpretrain     <step>/state: orbax PyTree {'step', 'params', 'opt_state'} (train.py)
    t5x            checkpoint_<step>/state: orbax PyTree {'target': params, 'state': ...}
                   (t5x's trainer since its orbax checkpoints)
    t5x_legacy     checkpoint_<step>/checkpoint: msgpack {'version', 'optimizer':
                   {'target': params, 'state': ...}}, large arrays as TensorStore (zarr)
                   specs relative to the step directory: the format of the public T5 /
                   T5 v1.1 / mT5 checkpoints (t5x's `checkpoints.Checkpointer`)
    npz            a `.npz` file of arrays keyed by '/'-joined param paths: big_vision's
                   and vision_transformer's ViT checkpoints ('Transformer/encoderblock_0/
                   MlpBlock_0/Dense_0/kernel', ...)

Each format is a `Reader`: the stored shapes by param path, and `read` for the ones a
model asks for. The two orbax formats are read with orbax's partial restore, placed by
the model's shardings; the others are read on the host (warm starts). t5x's legacy
layout has no reader outside t5x, so its msgpack + TensorStore reading is written here
(flax.serialization and tensorstore do the decoding).
"""
import abc
import os
from typing import Any, Mapping

from flax import serialization
from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf

from vlpretrain import errors

STATE_ITEM = "state"
LEGACY_FILE = "checkpoint"


def detect(path: str) -> str:
  """The format of the checkpoint at `path` (a step directory or an .npz file)."""
  if path.endswith(".npz"):
    if not tf.io.gfile.exists(path):
      raise errors.MissingPathError(f"Checkpoint file {path!r} does not exist.")
    return "npz"
  state = os.path.join(path, STATE_ITEM)
  if tf.io.gfile.isdir(state):
    root = _orbax_root(state)
    return "vlpretrain" if root == "params" else "t5x"
  if tf.io.gfile.exists(os.path.join(path, LEGACY_FILE)) and not tf.io.gfile.isdir(
      os.path.join(path, LEGACY_FILE)):
    return "t5x_legacy"
  raise errors.MissingPathError(
      f"{path!r} is not a checkpoint step directory: it holds neither {STATE_ITEM!r} "
      f"(vlpretrain's or t5x's orbax checkpoints) nor a {LEGACY_FILE!r} file (t5x's "
      "msgpack checkpoints), and it is not an .npz file.")


def open_reader(path: str) -> "Reader":
  if not path.endswith(".npz") and tf.io.gfile.isdir(os.path.join(path, STATE_ITEM)):
    return OrbaxReader(path)  # Reads the metadata once, for the format and the shapes.
  kind = detect(path)
  if kind == "t5x_legacy":
    return LegacyT5xReader(path)
  return NpzReader(path)


class Reader(abc.ABC):
  """`shapes`: {param path: shape}; `read({path: target})` -> {path: jax.Array}.

  A target is a `jax.ShapeDtypeStruct` with a sharding. A stored array whose shape is
  not the target's but reshapes to it (`reshapes_to`) is reshaped: t5x stores
  attention kernels flattened, (D, H*K) where vlpretrain's are (D, H, K).
  """
  kind: str
  path: str
  shapes: Mapping[str, tuple]

  def read(self, targets: Mapping[str, jax.ShapeDtypeStruct]) -> dict[str, jax.Array]:
    host = self.read_host(list(targets))
    return {name: place(host[name], target) for name, target in targets.items()}

  @abc.abstractmethod
  def read_host(self, names) -> dict[str, np.ndarray]:
    """The stored arrays `names`, as numpy, in their stored shapes."""


def place(array, target):
  """A host array as the model's param `target`: reshaped (see `reshapes_to`), cast
  and put on the target's sharding."""
  array = np.asarray(array)
  if array.shape != tuple(target.shape):
    array = array.reshape(target.shape)
  return jax.device_put(array.astype(target.dtype), target.sharding)


def reshapes_to(stored: tuple, target: tuple) -> bool:
  """Whether `stored` is `target` with runs of adjacent axes merged ((32, 32) for
  (32, 2, 16) or (2, 16, 32)); the reshape then keeps every element in place."""
  stored, target = tuple(stored), tuple(target)
  if stored == target:
    return True
  if int(np.prod(stored)) != int(np.prod(target)):
    return False
  i = 0
  for size in stored:
    product = 1
    while i < len(target) and product < size:
      product *= target[i]
      i += 1
    while i < len(target) and target[i] == 1 and product == size:
      i += 1  # Size-1 axes go with the run before them.
    if product != size:
      return False
  return i == len(target)


def param_path(key_path) -> str:
  """A param's name as assignment maps match it: its keys joined by '/', e.g.
  'image_encoder/embedding/kernel'."""
  return "/".join(str(getattr(k, "key", k)) for k in key_path)


def _orbax_tree(state_dir: str):
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    metadata = checkpointer.metadata(state_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  return getattr(tree, "tree", tree)


def _orbax_root(state_dir: str, tree=None) -> str:
  tree = _orbax_tree(state_dir) if tree is None else tree
  for root in ("params", "target"):
    if root in tree:
      return root
  raise errors.ConfigError(f"The checkpoint state at {state_dir!r} holds neither 'params' "
                           f"(vlpretrain) nor 'target' (t5x); its keys: {sorted(tree)}.")


class OrbaxReader(Reader):
  """vlpretrain's and t5x's orbax checkpoints: the 'params' / 'target' subtree only."""

  def __init__(self, path: str):
    self.path = path
    self.state_dir = os.path.join(path, STATE_ITEM)
    tree = _orbax_tree(self.state_dir)
    self.root = _orbax_root(self.state_dir, tree)
    self.kind = "vlpretrain" if self.root == "params" else "t5x"
    leaves = jax.tree_util.tree_leaves_with_path(tree[self.root])
    self.shapes = {param_path(kp): tuple(leaf.shape) for kp, leaf in leaves}
    self.dtypes = {param_path(kp): leaf.dtype for kp, leaf in leaves}

  def read_host(self, names):
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    targets = {n: jax.ShapeDtypeStruct(self.shapes[n], self.dtypes[n], sharding=device)
               for n in names}
    return {n: np.asarray(v) for n, v in self.read(targets).items()}

  def read(self, targets):
    # Same-shape params are restored straight into their shardings (no host copy: a
    # sharded multi-host restore); reshaped ones through the first device.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {}
    for name, target in targets.items():
      stored = self.shapes[name]
      sharding = target.sharding if stored == tuple(target.shape) else device
      item[tuple(name.split("/"))] = jax.ShapeDtypeStruct(stored, target.dtype,
                                                          sharding=sharding)
    item = {self.root: traverse_util.unflatten_dict(item)}
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      restored = checkpointer.restore(
          self.state_dir, args=ocp.args.PyTreeRestore(
              item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
              partial_restore=True))
    got = traverse_util.flatten_dict(restored[self.root])
    out = {}
    for name, target in targets.items():
      value = got[tuple(name.split("/"))]
      out[name] = value if value.shape == tuple(target.shape) else place(value, target)
    return out


class LegacyT5xReader(Reader):
  """t5x's msgpack + TensorStore checkpoints (the public T5 ones), 'target' only."""
  kind = "t5x_legacy"

  def __init__(self, path: str):
    self.path = path
    if "://" in path:
      raise errors.ConfigError(
          f"{path!r}: vlpretrain reads t5x's msgpack checkpoints from a local directory; "
          "copy it first (gsutil -m cp -r <checkpoint_dir> .).")
    with tf.io.gfile.GFile(os.path.join(path, LEGACY_FILE), "rb") as f:
      contents = serialization.msgpack_restore(f.read())
    state = contents.get("optimizer", contents)
    if "target" not in state:
      raise errors.ConfigError(f"{os.path.join(path, LEGACY_FILE)!r} has no 'target' "
                               f"params (keys: {sorted(state)}): not a t5x checkpoint.")
    flat = traverse_util.flatten_dict(state["target"], keep_empty_nodes=False,
                                      is_leaf=lambda _, v: _is_spec(v))
    self.leaves = {"/".join(k): v for k, v in flat.items()}
    self.shapes = {name: _leaf_shape(v) for name, v in self.leaves.items()}

  def read_host(self, names):
    import tensorstore as ts  # Installed with orbax.
    out = {}
    for name in names:
      leaf = self.leaves[name]
      if _is_spec(leaf):
        spec = _absolute_spec(leaf, self.path)
        out[name] = ts.open(spec, open=True, read=True).result().read().result()
      else:
        out[name] = np.asarray(leaf)
    return out


def _is_spec(value) -> bool:
  return isinstance(value, dict) and "driver" in value


def _leaf_shape(leaf) -> tuple:
  if _is_spec(leaf):
    return tuple(leaf["metadata"]["shape"])
  return tuple(np.shape(leaf))


def _absolute_spec(spec: dict, directory: str) -> dict:
  """t5x writes TensorStore paths relative to the step directory (and a placeholder
  GCS bucket for checkpoints written to GCS); read them from the local copy."""
  spec = dict(spec)
  kvstore = dict(spec.get("kvstore", {}))
  relative = kvstore.pop("path", None) or spec.pop("path", None)
  if relative is None:
    raise errors.ConfigError(f"{directory!r}: a TensorStore spec without a path: {spec}.")
  spec["kvstore"] = {"driver": "file", "path": os.path.join(os.path.abspath(directory),
                                                            relative)}
  return spec


class NpzReader(Reader):
  """An .npz of '/'-joined param paths (big_vision's ViT checkpoints); a leading
  'params/' is dropped."""
  kind = "npz"

  def __init__(self, path: str):
    self.path = path
    with tf.io.gfile.GFile(path, "rb") as f:
      self.arrays = dict(np.load(f, allow_pickle=False))
    self.arrays = {(k[len("params/"):] if k.startswith("params/") else k): v
                   for k, v in self.arrays.items()}
    self.shapes = {k: tuple(v.shape) for k, v in self.arrays.items()}

  def read_host(self, names):
    return {name: self.arrays[name] for name in names}
