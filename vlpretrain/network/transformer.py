"""The vision-language encoder-decoder network: image tower + T5 encoder -> fusion -> T5
decoder.

    image (B,H,W,3) --ViT or ResNet--> (B,M,Dv) --\
                                                  fusion --> memory (B,N,D)
    text tokens (B,L) --T5 encoder---------------/               |
                                            logits <-- T5 decoder <--'

The fusion module (JAR by default, or a baseline) is chosen by gin:
`transformer.VLTransformer.fusion = @fusion.JAR()`. So is the image tower, by the type
of `vit_config`: a `vit.ViTConfig` builds a ViT, a `resnet.ResNetConfig` a ResNet
(`transformer.VLTransformer.vit_config = @resnet.resnet_config()`, docs/image_towers.md).
"""
import dataclasses
from typing import Optional, Union

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import fusion as fusion_lib
from vlpretrain.network import layers
from vlpretrain.network import resnet
from vlpretrain.network import t5
from vlpretrain.network import vit


class VLTransformer(nn.Module):
  """Image + text -> text. Methods `encode`, `decode` and `__call__` (teacher forcing).

  Attributes:
    vit_config: the image encoder's config (the name is historical): a ViT's
      (`vit.vit_config('B/32', image_size=224)`) or a ResNet's
      (`resnet.resnet_config(50, 'conv4', image_size=224)`). Either has `image_size`;
      the tower's params are `image_encoder/...` in both cases.
    t5_config: text encoder/decoder (`t5.t5_config('base')`); its `vocab_size` must be
      set (the training model fills it in from the vocabulary when it is None).
    fusion: a fusion module (see `vlpretrain.network.fusion`).
  """
  vit_config: Union[vit.ViTConfig, resnet.ResNetConfig]
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
    self.image_encoder = image_tower(self.vit_config)
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


IMAGE_TOWERS = {vit.ViTConfig: vit.ViT, resnet.ResNetConfig: resnet.ResNet}


def image_tower(config) -> nn.Module:
  """The image encoder module for a config: (B, H, W, 3) -> (B, M, Dv) tokens."""
  if type(config) not in IMAGE_TOWERS:
    raise TypeError(
        f"transformer.VLTransformer.vit_config is a {type(config).__name__}: bind it to "
        "@vit.vit_config() or @resnet.resnet_config().")
  return IMAGE_TOWERS[type(config)](config)
