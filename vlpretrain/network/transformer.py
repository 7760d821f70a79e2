"""The vision-language encoder-decoder network: ViT + T5 encoder -> fusion -> T5 decoder.

    image (B,H,W,3) --ViT--> (B,M,Dv) --\
                                         fusion --> memory (B,N,D) --> T5 decoder --> logits
    text tokens (B,L) --T5 encoder-----/

The fusion module (JAR by default, or a baseline) is chosen by gin:
`transformer.VLTransformer.fusion = @fusion.JAR()`.
"""
import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import fusion as fusion_lib
from vlpretrain.network import layers
from vlpretrain.network import t5
from vlpretrain.network import vit


class VLTransformer(nn.Module):
  """Image + text -> text. Methods `encode`, `decode` and `__call__` (teacher forcing).

  Attributes:
    vit_config: the image encoder (`vit.vit_config('B/32', image_size=224)`).
    t5_config: text encoder/decoder (`t5.t5_config('base')`); its `vocab_size` must be
      set (the training model fills it in from the vocabulary when it is None).
    fusion: a fusion module (see `vlpretrain.network.fusion`).
  """
  vit_config: vit.ViTConfig
  t5_config: t5.T5Config
  fusion: nn.Module = dataclasses.field(default_factory=fusion_lib.JAR)

  def setup(self):
    if self.t5_config.vocab_size is None:
      raise ValueError("t5_config.vocab_size is not set: bind t5.t5_config.vocab_size "
                       "in gin, or let models.VLEncoderDecoderModel derive it from its "
                       "vocabulary.")
    self.token_embedder = nn.Embed(
        self.t5_config.vocab_size, self.t5_config.emb_dim, dtype=self.t5_config.dtype,
        param_dtype=jnp.float32,
        embedding_init=layers.partitioned(nn.initializers.normal(1.0),
                                          ("vocab", "embed")))
    self.image_encoder = vit.ViT(self.vit_config)
    self.text_encoder = t5.Encoder(self.t5_config, self.token_embedder)
    self.decoder = t5.Decoder(self.t5_config, self.token_embedder)

  def encode(self, image, encoder_input_tokens, enable_dropout: bool = False):
    """Returns the decoder memory (B, N, D) and its mask (B, N)."""
    deterministic = not enable_dropout
    image_features = self.image_encoder(image, deterministic=deterministic)
    memory, mask = self.fusion(image_features, encoder_input_tokens, self.text_encoder,
                               deterministic=deterministic)
    return layers.constrain(memory), mask

  def decode(self, memory, memory_mask, decoder_input_tokens,
             enable_dropout: bool = False, decode: bool = False,
             max_decode_length: Optional[int] = None):
    """Logits (B, L, vocab) in float32. With `decode=True`, one step of cached decoding."""
    return self.decoder(decoder_input_tokens, memory, memory_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, image, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens=None, enable_dropout: bool = False,
               decode: bool = False, max_decode_length: Optional[int] = None):
    """Teacher-forced logits. (`decoder_target_tokens` is accepted for t5x parity.)"""
    del decoder_target_tokens
    memory, mask = self.encode(image, encoder_input_tokens, enable_dropout)
    return self.decode(memory, mask, decoder_input_tokens, enable_dropout, decode,
                       max_decode_length)
