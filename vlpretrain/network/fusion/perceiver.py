"""Perceiver-style fusion (Jaegle et al. 2021; seed 000 Table 1 and Fig. 1c).

N latents attend to the raw inputs, [projected image tokens; encoded text tokens],
again in every one of K iterations, each followed by latent self-attention layers.
Seed 000 sec. 6.2: "both iteratively recompute the visual features based on the raw
inputs, which increase FLOPs"; JAR attends to the M + L inputs once (eq. 1). The
paper's Perceiver is its own implementation and not specified further: per-iteration
weights and one latent Transformer layer per iteration are our choices (the
Perceiver paper shares the weights of all but the first cross-attention: an option).
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers
from vlpretrain.network.fusion.inputs import fusion_inputs


class Perceiver(nn.Module):
  """Memory: the N latents after K iterations of
       z = z + MHA(Ln(z), Ln([P(X_im); X_text]))      (the inputs' padding masked)
       z = z + MLP(Ln(z))
       z = TransformerLayer(z)  x num_layers
  then a LayerNorm; (B, N, D), all valid."""
  num_latents: int = 64
  num_iterations: int = 4
  num_layers: int = 1
  share_iteration_weights: bool = False  # Iterations after the first share weights.
  num_heads: Optional[int] = None
  mlp_dim: Optional[int] = None
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    text, text_mask, image, heads, mlp_dim = fusion_inputs(
        image_features, text_tokens, text_encoder, self.num_heads, self.mlp_dim,
        deterministic)
    width, dtype = text.shape[-1], text.dtype
    inputs = jnp.concatenate([image, text], axis=1)
    inputs_mask = jnp.concatenate([jnp.ones(image.shape[:2], bool), text_mask], axis=1)
    latents = self.param("latents", layers.partitioned(
        nn.initializers.normal(1.0), ("latents", "embed")), (self.num_latents, width),
                         jnp.float32)
    z = jnp.broadcast_to(latents.astype(dtype), (text.shape[0],) + latents.shape)
    blocks = {}
    for i in range(self.num_iterations):
      k = min(i, 1) if self.share_iteration_weights else i
      if k not in blocks:
        blocks[k] = self._iteration(k, width, heads, mlp_dim, dtype)
      block = blocks[k]
      y = block["attention"](block["latent_norm"](z), block["input_norm"](inputs),
                             inputs_mask[:, None, None, :], deterministic=deterministic)
      z = z + y
      z = z + block["mlp"](block["mlp_norm"](z), deterministic=deterministic)
      for layer in block["transformer"]:
        z = layer(z, deterministic=deterministic)
    memory = layers.LayerNorm(dtype=dtype, name="output_norm")(z)
    return memory, jnp.ones(memory.shape[:2], bool)

  def _iteration(self, i, width, heads, mlp_dim, dtype) -> dict:
    return {
        "latent_norm": layers.LayerNorm(dtype=dtype, name=f"latent_norm_{i}"),
        "input_norm": layers.LayerNorm(dtype=dtype, name=f"input_norm_{i}"),
        "attention": layers.MultiHeadAttention(heads, width // heads, style="vit",
                                               dtype=dtype, name=f"cross_attention_{i}"),
        "mlp_norm": layers.LayerNorm(dtype=dtype, name=f"mlp_norm_{i}"),
        "mlp": layers.GeluMlp(mlp_dim, self.dropout_rate, dtype, name=f"mlp_{i}"),
        "transformer": [layers.TransformerLayer(
            heads, mlp_dim, self.dropout_rate, dtype,
            name=f"transformer_{i}" + (f"_{j}" if j else ""))
                        for j in range(self.num_layers)],
    }
