"""What every fusion but Concat starts from (seed 000 sec. 3.1's first step)."""
from typing import NamedTuple, Optional

import jax.numpy as jnp

from vlpretrain.network import layers


class FusionInputs(NamedTuple):
  text: jnp.ndarray       # (B, L, D) the T5-encoded text
  text_mask: jnp.ndarray  # (B, L) True = a real token
  image: jnp.ndarray      # (B, M, D) the image tokens projected to the text width
  num_heads: int
  mlp_dim: int


def fusion_inputs(image_features, text_tokens, text_encoder, num_heads: Optional[int],
                  mlp_dim: Optional[int], deterministic: bool) -> FusionInputs:
  """T5-encodes the text and projects the image tokens to its width D with a param
  `image_projection` of the calling fusion (P(X_im) = W1 X_im); heads default to
  D // 64 and the MLP width to the T5 encoder's. Call it from a fusion's compact
  __call__."""
  text, text_mask = text_encoder(text_tokens, deterministic=deterministic)
  width, dtype = text.shape[-1], text.dtype
  image = layers.dense(width, ("image_embed", "embed"), dtype=dtype,
                       name="image_projection")(image_features.astype(dtype))
  return FusionInputs(text, text_mask, image, num_heads or max(1, width // 64),
                      mlp_dim or text_encoder.config.mlp_dim)
