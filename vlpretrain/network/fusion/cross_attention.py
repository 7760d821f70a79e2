"""Text-query cross-attention fusion (ALBEF / BLIP style; seed 000 sec. 2 and Fig. 1b).

The T5-encoded text attends to the projected image tokens; the memory has the text's L
tokens, so the whole image is squeezed into as many vectors as the question has
tokens: the dependence on text length that seed 000 sec. 3 argues against.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers
from vlpretrain.network.fusion.inputs import fusion_inputs


class CrossAttentionLayer(nn.Module):
  """ALBEF's fusion layer, pre-LN: text self-attention, cross-attention to the image,
  MLP, each residual."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, text, text_mask, image, deterministic=True):
    width, heads = text.shape[-1], self.num_heads
    attention = lambda name: layers.MultiHeadAttention(
        heads, width // heads, style="vit", dropout_rate=self.dropout_rate,
        dtype=self.dtype, name=name)
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = layers.LayerNorm(dtype=self.dtype, name="self_attention_norm")(text)
    text = text + drop(attention("self_attention")(
        y, y, text_mask[:, None, None, :], deterministic=deterministic))
    y = layers.LayerNorm(dtype=self.dtype, name="cross_attention_norm")(text)
    text = text + drop(attention("cross_attention")(y, image,
                                                    deterministic=deterministic))
    y = layers.LayerNorm(dtype=self.dtype, name="mlp_norm")(text)
    text = text + drop(layers.GeluMlp(self.mlp_dim, self.dropout_rate, self.dtype,
                                      name="mlp")(y, deterministic=deterministic))
    return layers.constrain(text)


class CrossAttention(nn.Module):
  """`num_layers` CrossAttentionLayers over the encoded text (default 4, as many as
  JAR's default iterations, so the two differ in what they attend over, not in depth).
  Memory: (B, L, D) with the text's padding mask."""
  num_layers: int = 4
  num_heads: Optional[int] = None
  mlp_dim: Optional[int] = None
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    text, text_mask, image, heads, mlp_dim = fusion_inputs(
        image_features, text_tokens, text_encoder, self.num_heads, self.mlp_dim,
        deterministic)
    dtype = text.dtype
    image = layers.LayerNorm(dtype=dtype, name="image_norm")(image)
    for j in range(self.num_layers):
      text = CrossAttentionLayer(heads, mlp_dim, self.dropout_rate, dtype,
                                 name=f"layer_{j}")(text, text_mask, image,
                                                    deterministic)
    return layers.LayerNorm(dtype=dtype, name="output_norm")(text), text_mask
