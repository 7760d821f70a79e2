"""The concatenation baseline (seed 000 Table 2a, "Concat"), and seed 001's late
concatenation (appendix B: "After the encoder layers, we concatenate the 196 vision
features with the text features ... used as the input to the decoder layers")."""
import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers
from vlpretrain.network.fusion import inputs


class Concat(nn.Module):
  """Project the M image tokens to D and run the T5 encoder on [image tokens; text
  embeddings] (M + L tokens: the cost JAR avoids).

  `after_encoder=True` (seed 001): the T5 encoder runs on the text alone and the
  decoder's memory is [projected image tokens; encoded text] (M + L tokens). The same
  params (`image_projection`) either way.
  """
  after_encoder: bool = False

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    if self.after_encoder:
      x = inputs.fusion_inputs(image_features, text_tokens, text_encoder, None, None,
                               deterministic)
      image_mask = jnp.ones(x.image.shape[:2], dtype=bool)
      return (jnp.concatenate([x.image, x.text], axis=1),
              jnp.concatenate([image_mask, x.text_mask.astype(bool)], axis=1))
    width = text_encoder.config.emb_dim
    dtype = text_encoder.config.dtype
    prefix = layers.dense(width, ("image_embed", "embed"), dtype=dtype,
                          name="image_projection")(image_features.astype(dtype))
    prefix_mask = jnp.ones(prefix.shape[:2], dtype=bool)
    return text_encoder(text_tokens, prefix=prefix, prefix_mask=prefix_mask,
                        deterministic=deterministic)
