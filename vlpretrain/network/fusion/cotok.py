"""Iterative co-tokenization (Piergiovanni et al. 2022b), adapted to one image as
seed 000 Table 1's "CoTok*" is (one input stream instead of several video streams).

Every iteration recomputes TokenLearner spatial attention maps over all M image tokens,
conditioned on the current text-side features, selects N visual tokens with them, and
fuses those with the text in a Transformer layer over the N + L joint tokens; the
text half of its output conditions the next selection. Seed 000 sec. 6.2: the spatial
maps and the per-iteration recomputation from the raw inputs are what cost FLOPs.
Our reading where the paper is silent: the condition is the masked mean of the text
half, added to every image token before the map MLP (`SpatialResampler`); the memory
is the last iteration's N + L joint tokens, LayerNormed.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers
from vlpretrain.network.fusion.inputs import fusion_inputs
from vlpretrain.network.fusion.resamplers import SpatialResampler


class CoTok(nn.Module):
  """Memory: (B, N + L, D), the selected image tokens (all valid) then the text tokens
  (the text's padding mask)."""
  num_tokens: int = 8
  num_iterations: int = 4
  num_layers: int = 1
  map_hidden_dim: int = 64
  num_heads: Optional[int] = None
  mlp_dim: Optional[int] = None
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    text, text_mask, image, heads, mlp_dim = fusion_inputs(
        image_features, text_tokens, text_encoder, self.num_heads, self.mlp_dim,
        deterministic)
    dtype = text.dtype
    mask = jnp.concatenate([jnp.ones(image.shape[:1] + (self.num_tokens,), bool),
                            text_mask], axis=1)
    weights = text_mask.astype(dtype)[..., None]
    h = text
    for i in range(self.num_iterations):
      condition = (h * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
      selected = SpatialResampler(self.num_tokens, self.map_hidden_dim,
                                  name=f"tokenizer_{i}")(image, condition=condition)
      joint = jnp.concatenate([selected, h], axis=1)
      for j in range(self.num_layers):
        joint = layers.TransformerLayer(
            heads, mlp_dim, self.dropout_rate, dtype,
            name=f"transformer_{i}" + (f"_{j}" if j else ""))(
                joint, mask[:, None, None, :], deterministic=deterministic)
      h = joint[:, self.num_tokens:]
    return layers.LayerNorm(dtype=dtype, name="output_norm")(joint), mask
