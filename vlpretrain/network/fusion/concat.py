"""The concatenation baseline (seed 000 Table 2a, "Concat")."""
import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers


class Concat(nn.Module):
  """Project the M image tokens to D and run the T5 encoder on [image tokens; text
  embeddings] (M + L tokens: the cost JAR avoids)."""

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    width = text_encoder.config.emb_dim
    dtype = text_encoder.config.dtype
    prefix = layers.dense(width, ("image_embed", "embed"), dtype=dtype,
                          name="image_projection")(image_features.astype(dtype))
    prefix_mask = jnp.ones(prefix.shape[:2], dtype=bool)
    return text_encoder(text_tokens, prefix=prefix, prefix_mask=prefix_mask,
                        deterministic=deterministic)
