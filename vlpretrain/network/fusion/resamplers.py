"""Token resamplers: M input tokens -> N output tokens.

- `LatentResampler`: seed 000 eq. 1, N learned latents attend once to the inputs.
- `SpatialResampler`: TokenLearner (Ryoo et al. 2021), N spatial attention maps
  computed from the inputs themselves; seed 000 Table 2d's "spatial" row and the
  tokenizer of iterative co-tokenization (Table 1's CoTok).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlpretrain.network import layers


class LatentResampler(nn.Module):
  """Seed 000 eq. 1: f_N = W2 Phi(X_N, X): N learned (DETR-style) latents attend once
  to the input tokens X; W2 is a linear map. Returns (B, N, D).

  The latents start as N(0, 1), like DETR's query embeddings: the queries are not
  normalised, so latents of scale 0.02 (the usual init for embeddings that pass through
  a LayerNorm) give attention logits near 0, every latent the same uniform average of X,
  and gradients too small to separate them.
  """
  num_latents: int
  num_heads: int
  latent_init_std: float = 1.0

  @nn.compact
  def __call__(self, x, mask=None, deterministic=True):
    batch, _, width = x.shape
    init = nn.initializers.normal(self.latent_init_std)
    latents = self.param("latents", layers.partitioned(init, ("latents", "embed")),
                         (self.num_latents, width), jnp.float32)
    queries = jnp.broadcast_to(latents.astype(x.dtype), (batch,) + latents.shape)
    attention_mask = None if mask is None else mask[:, None, None, :]
    out = layers.MultiHeadAttention(self.num_heads, width // self.num_heads, style="vit",
                                    dtype=x.dtype, name="attention")(
                                        queries, x, attention_mask,
                                        deterministic=deterministic)
    return layers.constrain(layers.dense(width, dtype=x.dtype, name="w2")(out))


class SpatialResampler(nn.Module):
  """TokenLearner (Ryoo et al. 2021): an MLP over each input token gives N logits; a
  softmax over the M positions turns each of the N columns into a spatial attention
  map, and output token n is the map-weighted sum of the inputs. Returns (B, N, D).

  `condition` (B, D), when given, is added to every token before the MLP: how
  iterative co-tokenization lets the current text/fused features choose what to
  select. Softmax over positions (TokenLearner v1.1) rather than v1's sigmoid and
  mean: our choice, so that each map is a distribution over the M positions.
  """
  num_tokens: int
  hidden_dim: int = 64

  @nn.compact
  def __call__(self, x, mask=None, condition=None):
    dtype = x.dtype
    y = layers.LayerNorm(dtype=dtype, name="norm")(x)
    if condition is not None:
      y = y + layers.dense(x.shape[-1], (None, "embed"), dtype=dtype,
                           name="condition")(condition)[:, None, :]
    y = jax.nn.gelu(layers.dense(self.hidden_dim, ("embed", "mlp"), dtype=dtype,
                                 name="map_hidden")(y))
    logits = layers.dense(self.num_tokens, ("mlp", None), dtype=dtype,
                          name="map_logits")(y).astype(jnp.float32)  # (B, M, N)
    if mask is not None:
      logits = jnp.where(mask[..., None], logits, -1e9)
    maps = jax.nn.softmax(logits, axis=1).astype(dtype)
    return layers.constrain(jnp.einsum("bmn,bmd->bnd", maps, x))
