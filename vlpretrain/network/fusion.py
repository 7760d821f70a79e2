"""Image-text fusion modules. All share one call signature:

    memory, memory_mask = fusion(image_features, text_tokens, text_encoder,
                                 deterministic=True)

`image_features` (B, M, Dv) come from the ViT; `text_tokens` (B, L) are the encoder
input tokens; `text_encoder(tokens, prefix=None, prefix_mask=None, deterministic)` is the
T5 encoder (it returns (encoded, mask)). The result is the T5 decoder's memory.

- `JAR`: the Joint Adaptive Representation of seed 000, sec. 3.1, eqs. 1-3.
- `Concat`: the concatenation baseline (seed 000, Table 2a): image tokens projected to
  the text width and prepended to the text embeddings in the T5 encoder.
"""
from typing import Optional

import flax.linen as nn
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


class JAR(nn.Module):
  """Joint Adaptive Representation (seed 000, sec. 3.1).

  1. P(X_im) = W1 X_im projects the image tokens to the text width D.
  2. f_N, t_N: N latents per modality resample image and (T5-encoded) text, once (eq. 1).
  3. K iterations (eqs. 2-3), with h_0 = t_N and h_i = combine(F_i, t_N):
       P       = Ln(h) + tanh(alpha_i) * MHA(Ln(h), Ln(f_N))
       F       = P + tanh(beta_i) * MLP(P)
       F_{i+1} = TransformerLayer(F)
  The gates alpha_i, beta_i are zero-initialised parameters, so at initialisation the
  output does not depend on the image (as in Flamingo-style gating).

  Attributes:
    num_latents: N (paper default 64; Table 2b).
    num_iterations: K (paper default 4; Table 2c).
    gating: 'tanh' (eq. 2) or 'add' (no gate: the "Ours add" row of Table 2a).
    gate_init: the initial alpha_i, beta_i (0 in the paper, whose towers start
      pretrained). A ViT trained from scratch gets no gradient through a zero gate, so
      models trained from scratch start the gates open (e.g. 1: tanh(1) = 0.76).
    iterative_combine: how F_i and t_N form the next input (Table 2e): 'none' (F_i),
      'residual' (F_i + t_N, as written in eq. 3) or 'weighted' (F_i + w_i * t_N with
      a learned scalar w_i initialised to 1: the setting selected in Table 2e).
    num_heads: attention heads (default: width // 64).
    mlp_dim: MLP width (default: the T5 encoder's mlp_dim).
    mlp: the MLP of eq. 2 and of each Transformer layer T: 'gelu' (ViT's
      Dense-GELU-Dense) or 'gated_gelu' (T5 v1.1's (gelu(x W0) * x W1) W_out). The
      gated one multiplies two projections of the same token, so a token holding the
      question's colour and the attended image colour can compare them directly.
    resample_image, resample_text: whether eq. 1 resamples that modality to N
      latents. Off, its tokens enter eqs. 2-3 as they are: the M projected image
      tokens as keys, or the L encoded text tokens as queries (then the memory has L
      tokens and the text's padding mask). Resampling pays off where tokens are many
      ("particularly important for the visual features", sec. 3.1); with few tokens
      and towers trained from scratch, the resampled question loses the one word an
      answer hinges on (docs/jar_tiny_comparison_questions.md).
  """
  num_latents: int = 64
  num_iterations: int = 4
  gating: str = "tanh"
  gate_init: float = 0.0
  iterative_combine: str = "weighted"
  num_heads: Optional[int] = None
  mlp_dim: Optional[int] = None
  mlp: str = "gelu"
  resample_image: bool = True
  resample_text: bool = True
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    if self.gating not in ("tanh", "add"):
      raise ValueError(f"JAR.gating must be 'tanh' or 'add', got {self.gating!r}.")
    if self.iterative_combine not in ("none", "residual", "weighted"):
      raise ValueError("JAR.iterative_combine must be 'none', 'residual' or "
                       f"'weighted', got {self.iterative_combine!r}.")
    if self.mlp not in ("gelu", "gated_gelu"):
      raise ValueError(f"JAR.mlp must be 'gelu' or 'gated_gelu', got {self.mlp!r}.")
    text, text_mask = text_encoder(text_tokens, deterministic=deterministic)
    width, dtype = text.shape[-1], text.dtype
    heads = self.num_heads or max(1, width // 64)
    mlp_dim = self.mlp_dim or text_encoder.config.mlp_dim

    projected = layers.dense(width, ("image_embed", "embed"), dtype=dtype,
                             name="image_projection")(image_features.astype(dtype))
    f_n = projected
    if self.resample_image:
      f_n = LatentResampler(self.num_latents, heads, name="image_resampler")(
          projected, deterministic=deterministic)
    t_n, memory_mask = text, text_mask
    if self.resample_text:
      t_n = LatentResampler(self.num_latents, heads, name="text_resampler")(
          text, text_mask, deterministic=deterministic)
      memory_mask = jnp.ones(t_n.shape[:2], dtype=bool)

    features = None
    for i in range(self.num_iterations):
      h = t_n if features is None else self._combine(features, t_n, i)
      features = self._fuse(h, f_n, memory_mask, heads, mlp_dim, i, deterministic)
    memory = layers.LayerNorm(dtype=dtype, name="output_norm")(features)
    return memory, memory_mask

  def _gate(self, name):
    if self.gating == "add":
      return 1.0
    return jnp.tanh(self.param(
        name, layers.partitioned(nn.initializers.constant(self.gate_init), ()), (),
        jnp.float32))

  def _combine(self, features, t_n, i):
    if self.iterative_combine == "none":
      return features
    if self.iterative_combine == "residual":
      return features + t_n
    weight = self.param(f"combine_weight_{i}", layers.partitioned(
        nn.initializers.ones, ()), (), jnp.float32)
    return features + weight.astype(t_n.dtype) * t_n

  def _fuse(self, h, f_n, mask, heads, mlp_dim, i, deterministic):
    """One iteration of eqs. 2-3; `mask` (B, len(h)) marks h's real tokens."""
    dtype = h.dtype
    h = layers.LayerNorm(dtype=dtype, name=f"query_norm_{i}")(h)
    image = layers.LayerNorm(dtype=dtype, name=f"image_norm_{i}")(f_n)
    attended = layers.MultiHeadAttention(heads, h.shape[-1] // heads, style="vit",
                                         dtype=dtype, name=f"cross_attention_{i}")(
                                             h, image, deterministic=deterministic)
    p = h + self._gate(f"alpha_{i}") * attended
    gated = self.mlp == "gated_gelu"
    mlp = (layers.GatedGeluMlp if gated else layers.GeluMlp)(
        mlp_dim, self.dropout_rate, dtype, name=f"mlp_{i}")(p, deterministic=deterministic)
    f = p + self._gate(f"beta_{i}") * mlp
    return layers.TransformerLayer(heads, mlp_dim, self.dropout_rate, dtype,
                                   gated_mlp=gated, name=f"transformer_{i}")(
                                       f, mask[:, None, None, :],
                                       deterministic=deterministic)


class Concat(nn.Module):
  """Concatenation baseline: project the M image tokens to D and run the T5 encoder on
  [image tokens; text embeddings] (M + L tokens: the cost JAR avoids)."""

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    width = text_encoder.config.emb_dim
    dtype = text_encoder.config.dtype
    prefix = layers.dense(width, ("image_embed", "embed"), dtype=dtype,
                          name="image_projection")(image_features.astype(dtype))
    prefix_mask = jnp.ones(prefix.shape[:2], dtype=bool)
    return text_encoder(text_tokens, prefix=prefix, prefix_mask=prefix_mask,
                        deterministic=deterministic)
