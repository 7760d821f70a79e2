"""Building blocks shared by the ViT, T5 and fusion modules.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) and the
main activations carry logical constraints, so `vlpretrain.partitioning` can map them
onto a ('data', 'model') mesh. Names used: batch, length, embed, mlp, heads, kv,
vocab, relpos_buckets, latents.
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jnp.ndarray]

ACTIVATION_AXES = ("batch", "length", "embed")


def constrain(x, axes: Sequence[Optional[str]] = ACTIVATION_AXES):
  """Logical sharding constraint on an activation (no-op outside a mesh)."""
  return nn.with_logical_constraint(x, tuple(axes))


def check_image_size(image, size: int, binding: str) -> None:
  """Raises if `image` (B, H, W, C) is not `size` x `size`, naming the gin binding."""
  if image.shape[1] != size or image.shape[2] != size:
    raise ValueError(f"Image of shape {image.shape[1:3]} given to a network configured for "
                     f"{size}x{size}: set {binding} to the size the task produces.")


def partitioned(init: Initializer, axes: Sequence[Optional[str]]) -> Initializer:
  return nn.with_logical_partitioning(init, tuple(axes))


class RMSNorm(nn.Module):
  """T5's layer norm: no mean subtraction, no bias, computed in float32."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x32 = jnp.asarray(x, jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + self.epsilon)
    scale = self.param("scale", partitioned(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    return jnp.asarray(y * scale, self.dtype)


class LayerNorm(nn.Module):
  """Standard LayerNorm (ViT, JAR's `Ln`), statistics in float32."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm(
        epsilon=self.epsilon, dtype=self.dtype, param_dtype=jnp.float32,
        scale_init=partitioned(nn.initializers.ones, ("embed",)),
        bias_init=partitioned(nn.initializers.zeros, ("embed",)))(x)


def _attention_init(style: str, d_model: int, num_heads: int, head_dim: int):
  """Initialisers for (query, key/value, output) projections.

  `t5`: T5 v1.1 / Mesh TF style: no 1/sqrt(d) scaling in the attention logits; it is
  folded into the query initialisation (std (d_model * head_dim)^-1/2).
  `vit`: Xavier-uniform everywhere, logits scaled by 1/sqrt(head_dim).
  """
  if style == "t5":
    q = nn.initializers.normal((d_model * head_dim) ** -0.5)
    kv = nn.initializers.normal(d_model ** -0.5)
    out = nn.initializers.normal((num_heads * head_dim) ** -0.5)
    return q, kv, out
  return (nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)),) * 2 + (
      nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),)


class DenseGeneral(nn.Module):
  """x @ kernel over the last `num_contracted` axes, kernel shaped (*in, *features).

  Hand-written rather than `nn.DenseGeneral`, which initialises a flattened kernel and
  reshapes it: that breaks logical-axis boxing of multi-axis kernels under a mesh.
  """
  features: Sequence[int]
  num_contracted: int
  kernel_axes: Sequence[Optional[str]]
  use_bias: bool = False
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n = self.num_contracted
    shape = tuple(x.shape[-n:]) + tuple(self.features)
    kernel = self.param("kernel", partitioned(self.kernel_init, self.kernel_axes), shape,
                        jnp.float32)
    y = jnp.tensordot(jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype),
                      axes=(tuple(range(x.ndim - n, x.ndim)), tuple(range(n))))
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros, self.kernel_axes[n:]),
                        tuple(self.features), jnp.float32)
      y = y + jnp.asarray(bias, self.dtype)
    return y


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with an optional autoregressive KV cache.

  Attributes:
    num_heads, head_dim: attention geometry.
    style: 't5' (no biases, no logit scaling) or 'vit' (biases, 1/sqrt(d) scaling).
    out_features: output width (defaults to the query width).

  Call: `(inputs_q, inputs_kv, mask=None, bias=None, decode=False, deterministic,
  static_kv=False)`. `mask` broadcasts to (B, heads, Lq, Lk) with True = attend; `bias`
  is added to the logits. With `decode=True` the key/value of each new query token are
  written into a 'cache' collection at `cache_index` and the query attends to positions
  <= it; the cache is created when the module is first called with `decode=True` on the
  full-length input (shape (B, max_length, ...)). With `decode=True, static_kv=True`
  (cross-attention to a memory that is the same at every step) the memory's keys and
  values are projected once, when the cache is created, and read from it afterwards.
  """
  num_heads: int
  head_dim: int
  style: str = "t5"
  out_features: Optional[int] = None
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, bias=None, decode=False,
               deterministic=True, static_kv=False):
    use_bias = self.style != "t5"
    q_init, kv_init, out_init = _attention_init(
        self.style, inputs_q.shape[-1], self.num_heads, self.head_dim)
    proj = lambda name, init: DenseGeneral(
        (self.num_heads, self.head_dim), 1, ("embed", "heads", "kv"), use_bias, init,
        self.dtype, name=name)
    query = proj("query", q_init)(inputs_q)
    if self.style != "t5":
      query = query / np.sqrt(self.head_dim).astype(np.float32)
    if decode and static_kv:
      key, value = self._static_key_value(proj("key", kv_init), proj("value", kv_init),
                                          inputs_kv)
    else:
      key = proj("key", kv_init)(inputs_kv)
      value = proj("value", kv_init)(inputs_kv)
      if decode:
        key, value, mask = self._update_cache(key, value, mask)

    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if not deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
    return DenseGeneral((self.out_features or inputs_q.shape[-1],), 2,
                        ("heads", "kv", "embed"), use_bias, out_init, self.dtype,
                        name="out")(out)

  def _static_key_value(self, key_proj, value_proj, inputs_kv):
    """The memory's keys and values: projected on the call that creates the cache and
    kept in it ('memory_key', 'memory_value'), read from it on every later step."""
    if self.has_variable("cache", "memory_key"):
      return (self.get_variable("cache", "memory_key"),
              self.get_variable("cache", "memory_value"))
    key, value = key_proj(inputs_kv), value_proj(inputs_kv)
    if self.is_mutable_collection("cache"):
      self.put_variable("cache", "memory_key", key)
      self.put_variable("cache", "memory_value", value)
    return key, value

  def _update_cache(self, key, value, mask):
    """Writes one step's key/value into the cache; returns the full cached tensors."""
    initialised = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                 value.dtype)
    cache_index = self.variable("cache", "cache_index",
                                lambda: jnp.array(0, dtype=jnp.int32))
    if not initialised:  # The call that creates the cache only sets shapes.
      return key, value, mask
    batch, max_length, num_heads, head_dim = cached_key.value.shape
    if key.shape != (batch, 1, num_heads, head_dim):
      raise ValueError(
          f"Cached decoding takes one token per step; got key shape {key.shape}, "
          f"cache shape {cached_key.value.shape}.")
    index = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(
        cached_key.value, key.astype(cached_key.value.dtype), (0, index, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(
        cached_value.value, value.astype(cached_value.value.dtype), (0, index, 0, 0))
    cache_index.value = index + 1
    step_mask = (jnp.arange(max_length) <= index)[None, None, None, :]
    mask = step_mask if mask is None else jnp.logical_and(mask, step_mask)
    return cached_key.value, cached_value.value, mask


class GatedGeluMlp(nn.Module):
  """T5 v1.1 feed-forward: (gelu(x W0) * (x W1)) W_out, no biases."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    d_model = x.shape[-1]
    dense = lambda features, axes, name: nn.DenseGeneral(
        features, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=partitioned(nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal"), axes), name=name)
    h = nn.gelu(dense(self.mlp_dim, ("embed", "mlp"), "wi_0")(x), approximate=True)
    h = h * dense(self.mlp_dim, ("embed", "mlp"), "wi_1")(x)
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return dense(d_model, ("mlp", "embed"), "wo")(h)


class GeluMlp(nn.Module):
  """ViT / Transformer feed-forward: Dense(mlp_dim) -> GELU -> Dense(d), with biases."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    d_model = x.shape[-1]
    dense = lambda features, axes, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=jnp.float32, name=name,
        kernel_init=partitioned(nn.initializers.xavier_uniform(), axes),
        bias_init=partitioned(nn.initializers.normal(1e-6), axes[1:]))
    h = nn.gelu(dense(self.mlp_dim, ("embed", "mlp"), "fc1")(x))
    h = constrain(h, ("batch", "length", "mlp"))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return dense(d_model, ("mlp", "embed"), "fc2")(h)


class TransformerLayer(nn.Module):
  """A standard pre-LN Transformer layer (self-attention + MLP), used by ViT and JAR.

  `gated_mlp` swaps the ViT MLP for T5 v1.1's gated-GELU one (`GatedGeluMlp`).
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  gated_mlp: bool = False

  @nn.compact
  def __call__(self, x, mask=None, deterministic=True):
    d_model = x.shape[-1]
    y = LayerNorm(dtype=self.dtype, name="pre_attention_norm")(x)
    y = MultiHeadAttention(self.num_heads, d_model // self.num_heads, style="vit",
                           dtype=self.dtype, name="attention")(
                               y, y, mask=mask, deterministic=deterministic)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = LayerNorm(dtype=self.dtype, name="pre_mlp_norm")(x)
    mlp = GatedGeluMlp if self.gated_mlp else GeluMlp
    y = mlp(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(
        y, deterministic=deterministic)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return constrain(x)


def dense(features: int, axes=(None, "embed"), use_bias=True, dtype=jnp.float32,
          name=None, kernel_init=nn.initializers.xavier_uniform()) -> nn.Dense:
  """A projection with logical axes on its kernel (and bias)."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=partitioned(kernel_init, axes),
                  bias_init=partitioned(nn.initializers.zeros, axes[1:]), name=name)


def scanned_stack(layer_cls, num_layers: int, remat: bool = False,
                  static_kwargs: Optional[dict] = None, static_argnums: tuple = ()):
  """A module class that applies `num_layers` copies of `layer_cls` with `nn.scan`
  (t5x / flaxformer's `scan_layers`): one layer is traced and compiled, whatever the
  depth. Build it with `layer_cls`'s fields and call it as the layer is called, minus
  the keywords in `static_kwargs` (Python values such as deterministic, decode):
  `scanned_stack(EncoderLayer, 24)(cfg, name="layers")(x, bias, mask)`. Every call
  argument after `x` is shared by all layers. Params and the decoding cache get a
  leading `layers` axis (logical name 'layers'), so the layout differs from the
  unrolled `layers_<i>` one and checkpoints do not carry over between the two.
  `remat` recomputes each layer's activations in the backward pass; Python values
  among the call arguments (a mode string) are then named by `static_argnums`, as for
  `nn.remat` of the layer (self is 0, x is 1).
  """
  static_kwargs = dict(static_kwargs or {})

  class Step(layer_cls):  # (carry, *broadcast) -> (carry, None), as nn.scan wants.
    def __call__(self, x, *args):  # pylint: disable=arguments-differ
      return super().__call__(x, *args, **static_kwargs), None

  step = nn.remat(Step, prevent_cse=False, static_argnums=static_argnums) if remat \
      else Step
  scanned = nn.scan(step, variable_axes={"params": 0, "cache": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=nn.broadcast, length=num_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})

  class Stack(scanned):
    def __call__(self, x, *args):  # pylint: disable=arguments-differ
      return super().__call__(x, *args)[0]
  Stack.__name__ = f"Scanned{layer_cls.__name__}"
  return Stack
