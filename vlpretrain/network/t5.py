"""T5 v1.1 text encoder and decoder (Raffel et al., 2020; Roberts et al., 2022).

RMSNorm, gated-GELU MLP, no biases, one relative-position-bias table per stack
(32 buckets, max distance 128; bidirectional in the encoder, causal in the decoder),
none in cross-attention, untied float32 logits. Sizes by name: `t5_config("base")`.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlpretrain.network import layers

# name -> (emb_dim, num_heads, num_layers (per stack), head_dim, mlp_dim)
T5_SIZES = {
    "test": (32, 2, 1, 16, 64),
    "tiny": (128, 4, 2, 32, 256),
    "small": (512, 6, 8, 64, 1024),
    "base": (768, 12, 12, 64, 2048),
    "large": (1024, 16, 24, 64, 2816),
    "xl": (2048, 32, 24, 64, 5120),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  emb_dim: int
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
  head_dim: int
  mlp_dim: int
  vocab_size: Optional[int] = None  # None: the model pads its vocabulary's size.
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  # nn.scan over each stack's layers (params `layers/...` with a leading layer axis
  # instead of `layers_<i>/...`): compile time independent of depth.
  scan_layers: bool = False


def t5_config(size: str = "base", **overrides) -> T5Config:
  """Config by name ('small', 'base', 'large', ...). Keywords override fields."""
  if size not in T5_SIZES:
    raise ValueError(f"Unknown T5 size {size!r}; choose one of {sorted(T5_SIZES)}.")
  emb, heads, num_layers, head_dim, mlp = T5_SIZES[size]
  return T5Config(emb_dim=emb, num_heads=heads, num_encoder_layers=num_layers,
                  num_decoder_layers=num_layers, head_dim=head_dim, mlp_dim=mlp,
                  **overrides)


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """Vocabulary size rounded up to a multiple of 128 (fast matmuls on accelerators)."""
  return -(-vocab_size // multiple) * multiple


def relative_position_bucket(relative_position, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128):
  """Maps (memory_position - query_position) to a bucket id, as T5 does.

  Half the buckets (or all, when causal) hold exact offsets 0..max_exact-1; the rest
  grow logarithmically up to `max_distance`, beyond which everything shares the last
  bucket. Bidirectional: the upper half of the buckets is for keys after the query.
  Causal: keys after the query (positive offsets) all map to bucket 0.
  """
  n = -jnp.asarray(relative_position, jnp.int32)
  ret = 0
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps) /
      np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """One learned [heads, buckets] table per stack, shared by all its layers."""
  num_heads: int
  bidirectional: bool
  num_buckets: int = 32
  max_distance: int = 128

  @nn.compact
  def __call__(self, q_len: int, k_len: int, query_offset=0):
    """Bias of shape (1, heads, q_len, k_len); `query_offset`: first query position."""
    context = jnp.arange(q_len, dtype=jnp.int32)[:, None] + query_offset
    memory = jnp.arange(k_len, dtype=jnp.int32)[None, :]
    buckets = relative_position_bucket(memory - context, self.bidirectional,
                                       self.num_buckets, self.max_distance)
    table = self.param("rel_embedding",
                       layers.partitioned(nn.initializers.variance_scaling(
                           1.0, "fan_avg", "uniform"), ("heads", "relpos_buckets")),
                       (self.num_heads, self.num_buckets), jnp.float32)
    return table[:, buckets][None]


class EncoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, bias, mask, deterministic=True):
    cfg = self.config
    y = layers.RMSNorm(dtype=cfg.dtype, name="pre_attention_layer_norm")(x)
    y = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, style="t5",
                                  dropout_rate=cfg.dropout_rate, dtype=cfg.dtype,
                                  name="attention")(y, y, mask, bias,
                                                    deterministic=deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=cfg.dtype, name="pre_mlp_layer_norm")(x)
    y = layers.GatedGeluMlp(cfg.mlp_dim, cfg.dropout_rate, cfg.dtype, name="mlp")(
        y, deterministic=deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    return layers.constrain(x)


class DecoderLayer(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x, memory, self_bias, self_mask, memory_mask,
               deterministic=True, decode=False):
    cfg = self.config
    attention = lambda name: layers.MultiHeadAttention(
        cfg.num_heads, cfg.head_dim, style="t5", dropout_rate=cfg.dropout_rate,
        dtype=cfg.dtype, name=name)
    y = layers.RMSNorm(dtype=cfg.dtype, name="pre_self_attention_layer_norm")(x)
    y = attention("self_attention")(y, y, self_mask, self_bias, decode=decode,
                                    deterministic=deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=cfg.dtype, name="pre_cross_attention_layer_norm")(x)
    y = attention("encoder_decoder_attention")(y, memory, memory_mask,
                                               deterministic=deterministic,
                                               decode=decode, static_kv=True)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    y = layers.RMSNorm(dtype=cfg.dtype, name="pre_mlp_layer_norm")(x)
    y = layers.GatedGeluMlp(cfg.mlp_dim, cfg.dropout_rate, cfg.dtype, name="mlp")(
        y, deterministic=deterministic)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    return layers.constrain(x)


class Encoder(nn.Module):
  """T5 encoder over token embeddings, optionally after a prefix of given embeddings.

  `prefix` (B, P, D) with `prefix_mask` (B, P) is how the `concat` fusion feeds image
  tokens into the text encoder. Returns (encoded (B, P+L, D), mask (B, P+L)).
  """
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, prefix=None, prefix_mask=None, deterministic=True):
    cfg = self.config
    x = self.shared_embedding(tokens.astype(jnp.int32)).astype(cfg.dtype)
    mask = tokens > 0
    if prefix is not None:
      x = jnp.concatenate([prefix.astype(cfg.dtype), x], axis=1)
      mask = jnp.concatenate([prefix_mask.astype(bool), mask], axis=1)
    x = nn.Dropout(cfg.dropout_rate)(layers.constrain(x), deterministic=deterministic)
    length = x.shape[1]
    bias = RelativePositionBias(cfg.num_heads, True, cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance,
                                name="relpos_bias")(length, length)
    attention_mask = mask[:, None, None, :] & mask[:, None, :, None]
    if cfg.scan_layers:
      x = layers.scanned_stack(EncoderLayer, cfg.num_encoder_layers, cfg.remat,
                               {"deterministic": deterministic})(cfg, name="layers")(
                                   x, bias, attention_mask)
    else:
      layer = nn.remat(EncoderLayer, static_argnums=(4,)) if cfg.remat else EncoderLayer
      for i in range(cfg.num_encoder_layers):
        x = layer(cfg, name=f"layers_{i}")(x, bias, attention_mask, deterministic)
    x = layers.RMSNorm(dtype=cfg.dtype, name="encoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return x, mask


class Decoder(nn.Module):
  """T5 decoder: causal self-attention (KV-cached when decoding), cross-attention to
  the fused memory, untied float32 logits."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, memory, memory_mask, deterministic=True, decode=False,
               max_decode_length: Optional[int] = None):
    cfg = self.config
    x = self.shared_embedding(tokens.astype(jnp.int32)).astype(cfg.dtype)
    x = nn.Dropout(cfg.dropout_rate)(layers.constrain(x), deterministic=deterministic)
    relpos = RelativePositionBias(cfg.num_heads, False, cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, name="relpos_bias")
    length = tokens.shape[1]
    if decode and self.has_variable("cache", "position"):
      # One token at a time: its bias row against every cached position.
      position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      self_bias = relpos(1, max_decode_length, query_offset=position.value)
      position.value = position.value + 1
      self_mask = None  # The attention cache masks positions not yet written.
    else:
      if decode:  # Cache creation: remember where decoding starts.
        self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      self_bias = relpos(length, length)
      self_mask = nn.make_causal_mask(tokens, dtype=bool)
    cross_mask = memory_mask[:, None, None, :]
    if cfg.scan_layers:
      x = layers.scanned_stack(DecoderLayer, cfg.num_decoder_layers,
                               cfg.remat and not decode,
                               {"deterministic": deterministic, "decode": decode})(
                                   cfg, name="layers")(
                                       x, memory, self_bias, self_mask, cross_mask)
    else:
      layer = DecoderLayer
      if cfg.remat and not decode:
        layer = nn.remat(DecoderLayer, static_argnums=(6, 7))
      for i in range(cfg.num_decoder_layers):
        x = layer(cfg, name=f"layers_{i}")(
            x, memory, self_bias, self_mask, cross_mask, deterministic, decode)
    x = layers.RMSNorm(dtype=cfg.dtype, name="decoder_norm")(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    logits = nn.DenseGeneral(
        cfg.vocab_size, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
        kernel_init=layers.partitioned(nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal"), ("embed", "vocab")),
        name="logits_dense")(x.astype(jnp.float32))
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
