"""Device mesh, logical axis rules and shardings (t5x's `PjitPartitioner`, on `jax.jit`).

Parameters and activations name their axes logically (`batch`, `embed`, `mlp`, ...); the
rules below map those names onto the two mesh axes `('data', 'model')`. Data parallelism
shards the batch over `data`; `num_partitions > 1` shards the wide dimensions (vocab,
mlp, heads) over `model`; `parameter_partitioning_dims=2` also shards the params' and
optimizer state's `embed` dimension over `data` (FSDP).

    partitioner = PjitPartitioner(num_partitions=2)
    variables = jax.eval_shape(init_fn)
    shardings = partitioner.param_shardings(variables["params"], variables["params_axes"])
    with partitioner.activate():                  # mesh + rules while tracing
      params = jax.jit(lambda: init_fn()["params"], out_shardings=shardings)()
"""
import contextlib
import math
import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import flax
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import gin
import jax
import numpy as np
import optax
import seqio

from vlpretrain import errors

LogicalAxisRules = Sequence[tuple[str, Optional[str]]]
DATA_AXIS, MODEL_AXIS = "data", "model"


@gin.configurable
def standard_logical_axis_rules(parameter_partitioning_dims: int = 1) -> LogicalAxisRules:
  """Logical axis name -> mesh axis. Names not listed here are replicated (None).

  `parameter_partitioning_dims` is t5x's: 1 shards params over 'model' only; 2 also
  shards every param's 'embed' dimension over 'data' (fully sharded data parallelism,
  ZeRO-3: params and optimizer state split over the data-parallel devices and gathered
  by XLA where a layer needs them). Activations keep 'batch' on 'data': flax gives a
  mesh axis to the first of a tensor's dimensions that claims it, so an activation's
  'embed' falls through to the replicated rule.
  """
  if parameter_partitioning_dims not in (1, 2):
    raise errors.ConfigError(
        f"standard_logical_axis_rules.parameter_partitioning_dims="
        f"{parameter_partitioning_dims}: use 1 (model parallel only) or 2 (also shard "
        "params over 'data', FSDP).")
  fsdp = ((("embed", DATA_AXIS),) if parameter_partitioning_dims == 2 else ())
  return (
      ("batch", DATA_AXIS),
      ("vocab", MODEL_AXIS),
      ("mlp", MODEL_AXIS),
      ("heads", MODEL_AXIS),
      ("joined_kv", MODEL_AXIS),
      *fsdp,
      # Replicated: the model dimension, sequence axes and the small ViT/JAR axes.
      ("embed", None),
      ("kv", None),
      ("length", None),
      ("relpos_buckets", None),
      ("latents", None),
      ("image_embed", None),
      ("image_tokens", None),
      ("patch", None),
      ("channels", None),
      ("height", None),
      ("width", None),
      ("layers", None),
      ("stack", None),
  )


def initialize_distributed() -> None:
  """`jax.distributed.initialize()` for a multi-process (multi-host) run.

  Call it before anything touches the devices. On Cloud TPU, SLURM and Open MPI jax
  finds the coordinator by itself; elsewhere set JAX_COORDINATOR_ADDRESS (host:port of
  process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID in every process (jax reads only the
  first; vlpretrain passes the other two); on CPUs jax's collectives are gloo's.
  Each process then reads its own input shard (`get_data_shard_info`).
  """
  kwargs = {}
  for name, key in (("JAX_NUM_PROCESSES", "num_processes"),
                    ("JAX_PROCESS_ID", "process_id")):
    if os.environ.get(name):
      try:
        kwargs[key] = int(os.environ[name])
      except ValueError:
        raise errors.ConfigError(f"{name}={os.environ[name]!r} is not an integer.") from None
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed initialised: process %d of %d, %d devices in all.",
               jax.process_index(), jax.process_count(), jax.device_count())


@gin.configurable
class PjitPartitioner:
  """Builds the ('data', 'model') mesh over all devices and hands out shardings.

  Args:
    num_partitions: size of the `model` mesh axis (1 = pure data parallelism).
    model_parallel_submesh: t5x's alternative to `num_partitions`: a tuple whose product
      is the `model` axis size (the physical layout is left to `jax.make_mesh`).
    logical_axis_rules: logical name -> mesh axis pairs; default
      `standard_logical_axis_rules()`.
  """

  def __init__(self,
               num_partitions: Optional[int] = 1,
               model_parallel_submesh: Optional[Sequence[int]] = None,
               logical_axis_rules: Optional[LogicalAxisRules] = None):
    if model_parallel_submesh is not None:
      submesh_size = math.prod(model_parallel_submesh)
      if num_partitions not in (None, 1, submesh_size):
        raise errors.ConfigError(
            f"PjitPartitioner: num_partitions={num_partitions} disagrees with "
            f"model_parallel_submesh={tuple(model_parallel_submesh)} (product "
            f"{submesh_size}). Set only one of them.")
      num_partitions = submesh_size
    num_partitions = num_partitions or 1
    num_devices = jax.device_count()
    if num_devices % num_partitions:
      raise errors.ConfigError(
          f"PjitPartitioner.num_partitions={num_partitions} does not divide the "
          f"{num_devices} available devices. Bind "
          f"--gin.partitioning.PjitPartitioner.num_partitions to a divisor of "
          f"{num_devices}.")
    self.num_partitions = num_partitions
    self.logical_axis_rules = tuple(
        logical_axis_rules if logical_axis_rules is not None
        else standard_logical_axis_rules())
    self.mesh = jax.make_mesh(
        (num_devices // num_partitions, num_partitions), (DATA_AXIS, MODEL_AXIS),
        axis_types=(jax.sharding.AxisType.Auto,) * 2)

  # ---------------------------------------------------------------------------
  # Sizes and per-host input sharding.
  # ---------------------------------------------------------------------------
  @property
  def data_axis_size(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  def get_data_shard_info(self) -> seqio.ShardInfo:
    """Which slice of the data this host reads: one shard per process."""
    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())

  def check_batch_size(self, global_batch_size: int) -> None:
    """Raises if the global batch cannot be split over hosts and the data axis."""
    if global_batch_size % self.data_axis_size or global_batch_size % jax.process_count():
      raise errors.ConfigError(
          f"Batch size {global_batch_size} must be divisible by the data-parallel "
          f"mesh size {self.data_axis_size} and the number of processes "
          f"{jax.process_count()}. Change --gin.BATCH_SIZE or "
          f"partitioning.PjitPartitioner.num_partitions.")

  # ---------------------------------------------------------------------------
  # Shardings.
  # ---------------------------------------------------------------------------
  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

  def batch_sharding(self) -> jax.sharding.NamedSharding:
    """Leading (batch) dimension over 'data', everything else replicated."""
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(DATA_AXIS))

  def param_shardings(self, params: Any, params_axes: Optional[Any] = None) -> Any:
    """`NamedSharding`s for `params` (arrays or ShapeDtypeStructs) from their logical
    axis names: the `params_axes` collection of `get_initial_variables` (t5x's and
    flax's `<name>_axes: AxisMetadata(names)` layout). A param without names is
    replicated."""
    specs = (flax_partitioning.get_axis_names(params_axes) if params_axes else {})
    flat_specs = flax.traverse_util.flatten_dict(flax.core.unfreeze(specs))
    flat_params = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    logical = {path: flat_specs.get(path, jax.sharding.PartitionSpec())
               for path in flat_params}
    shardings = nn.logical_to_mesh_sharding(logical, self.mesh, self.logical_axis_rules)
    shardings, replicated = self._divisible(shardings, flat_params)
    if replicated:
      logging.warning(
          "%d params keep a dimension whole that their logical axes map to a mesh axis "
          "not dividing it (e.g. %s); they are replicated along it.", len(replicated),
          ", ".join(replicated[:3]))
    return flax.traverse_util.unflatten_dict(shardings)

  def _divisible(self, shardings: dict, params: dict):
    """Drops each mesh axis from a param's spec where it does not divide that dimension
    (a 2-head attention on a 4-way 'model' axis): jax cannot split it evenly, so that
    dimension stays whole on every device. Returns the shardings and the affected
    params ('path (dim i = size over axis = n)')."""
    out, replicated = {}, []
    for path, sharding in shardings.items():
      shape = getattr(params[path], "shape", ())
      spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
      for i, axes in enumerate(spec):
        names = axes if isinstance(axes, tuple) else (axes,)
        size = math.prod(self.mesh.shape[a] for a in names if a is not None)
        if size > 1 and shape[i] % size:
          replicated.append(f"{'/'.join(path)} (dim {i} = {shape[i]} over {axes} = {size})")
          spec[i] = None
      out[path] = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))
    return out, replicated

  def optimizer_state_shardings(self, optimizer: optax.GradientTransformation,
                                abstract_opt_state: Any, abstract_params: Any,
                                param_shardings: Any) -> Any:
    """Shardings for the optimizer state: each copy of the params tree inside it (Adam's
    `mu` and `nu`, Adafactor's unfactored `v`, ...) sharded like the params, found from
    `optimizer.init` by `optax.tree_map_params`; everything else (counters, Adafactor's
    factored row and column statistics, whose shapes are not the param's) replicated.
    Frozen params' empty slots (`optax.MaskedNode`) stay as they are."""
    def like_param(leaf, param, sharding):
      if isinstance(leaf, optax.MaskedNode):
        return leaf
      return sharding if getattr(leaf, "shape", None) == param.shape else self.replicated

    return optax.tree_map_params(
        optimizer, like_param, abstract_opt_state, abstract_params, param_shardings,
        transform_non_params=lambda _: self.replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode))

  def shard_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's batch slice (numpy) -> global `jax.Array`s sharded over 'data'."""
    sharding = self.batch_sharding()
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}

  @contextlib.contextmanager
  def activate(self):
    """The mesh and the logical axis rules, active while model code is traced."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.logical_axis_rules):
      yield
