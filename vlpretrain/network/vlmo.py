"""VLMo (seed 002): the Multiway Transformer and the heads of its objectives.

  image_embedding / text_embedding  [I_CLS] / [T_CLS] of the image-only / text-only
                      encoding, a linear projection, L2-normalised (sec. 3.3, ITC);
  logit_scale         1/sigma of eq. 4, learned; stored as log(1/sigma), initialised
                      to 1/0.07 and clipped at 100 (CLIP's choices: the paper gives
                      neither);
  itm_logits          the fusion encoding's [T_CLS], a tanh pooler, a 2-way classifier;
  mlm_logits          the fusion encoding's text positions, BERT's transform (dense,
                      GELU, LayerNorm), then the tied token embedding plus a bias;
  text_mlm_logits     the same MLM head on the text-only encoding (the text stage,
                      sec. 3.4);
  patch_pixels        the image-only encoding of masked patches, a linear head to the
                      P x P x 3 pixels of each patch (the image stage's masked image
                      modelling: pixel regression as MoMo, seed 004, since BEiT's
                      tokenizer is a downloaded model);
  class_logits        the pooled fusion [T_CLS] through VLMo's classifier head
                      (dense 2D, LayerNorm, GELU, dense) (sec. 3.5; only when
                      `num_classes` is set).
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlpretrain.network import layers
from vlpretrain.network import multiway

INITIAL_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


def _l2_normalize(x):
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


class VLMo(nn.Module):
  """Attributes: config (multiway.MultiwayConfig); embed_dim: the ITC projection width
  (None: the model width); num_classes: the classifier's classes (None: no head)."""
  config: multiway.MultiwayConfig
  embed_dim: Optional[int] = None
  num_classes: Optional[int] = None

  def setup(self):
    cfg = self.config
    embed_dim = self.embed_dim or cfg.width
    self.encoder = multiway.MultiwayTransformer(cfg)
    self.image_projection = layers.dense(embed_dim, ("embed", None), use_bias=False,
                                         dtype=cfg.dtype)
    self.text_projection = layers.dense(embed_dim, ("embed", None), use_bias=False,
                                        dtype=cfg.dtype)
    self.log_logit_scale = self.param(
        "log_logit_scale", nn.initializers.constant(np.log(1 / INITIAL_TEMPERATURE)),
        (), jnp.float32)
    self.pooler = layers.dense(cfg.width, ("embed", "mlp"), dtype=cfg.dtype)
    self.itm_head = layers.dense(2, ("mlp", None), dtype=cfg.dtype)
    self.mlm_transform = layers.dense(cfg.width, ("embed", "mlp"), dtype=cfg.dtype)
    self.mlm_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.mlm_bias = self.param("mlm_bias", layers.partitioned(nn.initializers.zeros,
                                                              ("vocab",)),
                               (cfg.vocab_size,), jnp.float32)
    patch = cfg.patch_size
    self.pixel_head = layers.dense(patch * patch * 3, ("embed", None), dtype=cfg.dtype)
    if self.num_classes:
      self.classifier_hidden = layers.dense(2 * cfg.width, ("mlp", "embed"),
                                            dtype=cfg.dtype)
      self.classifier_norm = layers.LayerNorm(dtype=cfg.dtype)
      self.classifier_out = layers.dense(self.num_classes, ("embed", None),
                                         dtype=cfg.dtype)

  # ------------------------------------------------------------- dual encoder
  def image_embedding(self, image, deterministic=True):
    cls = self.encoder.encode_image(image, deterministic)[:, 0]
    return _l2_normalize(self.image_projection(cls))

  def text_embedding(self, tokens, deterministic=True):
    cls = self.encoder.encode_text(tokens, deterministic)[0][:, 0]
    return _l2_normalize(self.text_projection(cls))

  def logit_scale(self, deterministic=True):  # pylint: disable=unused-argument
    return jnp.minimum(jnp.exp(self.log_logit_scale), MAX_LOGIT_SCALE)

  # ----------------------------------------------------------- fusion encoder
  def _pooled_text_cls(self, image, tokens, deterministic):
    hidden, _ = self.encoder.encode_pair(image, tokens, deterministic)
    text_cls = hidden[:, self.config.num_patches + 1]  # After the N + 1 image tokens.
    return jnp.tanh(self.pooler(text_cls))

  def itm_logits(self, image, tokens, deterministic=True):
    return self.itm_head(self._pooled_text_cls(image, tokens, deterministic))

  def mlm_logits(self, image, tokens, deterministic=True):
    """(B, L, V) logits at the text token positions (not [T_CLS])."""
    hidden, _ = self.encoder.encode_pair(image, tokens, deterministic)
    return self._mlm_head(hidden[:, self.config.num_patches + 2:])

  def _mlm_head(self, text_hidden):
    h = self.mlm_norm(nn.gelu(self.mlm_transform(text_hidden)))
    return self.encoder.attend_token_embedding(h).astype(jnp.float32) + self.mlm_bias

  def text_mlm_logits(self, tokens, deterministic=True):
    """(B, L, V) logits of the text-only encoding at the token positions."""
    hidden, _ = self.encoder.encode_text(tokens, deterministic)
    return self._mlm_head(hidden[:, 1:])

  def patch_pixels(self, image, patch_mask, deterministic=True):
    """(B, N, P*P*3) predicted pixels of every patch from the image-only encoding with
    the `patch_mask` (B, N) patches replaced by [MASK]."""
    hidden = self.encoder.encode_image(image, deterministic, patch_mask)
    return self.pixel_head(hidden[:, 1:]).astype(jnp.float32)

  def class_logits(self, image, tokens, deterministic=True):
    if not self.num_classes:
      raise ValueError("VLMo.class_logits needs num_classes (gin: the model's "
                       "num_classes, set from the Task's label vocabulary).")
    h = self._pooled_text_cls(image, tokens, deterministic)
    h = nn.gelu(self.classifier_norm(self.classifier_hidden(h)))
    return self.classifier_out(h).astype(jnp.float32)

  def __call__(self, image, tokens, deterministic=True):
    """Every head once (what `init` runs to create all parameters)."""
    outputs = [self.image_embedding(image, deterministic),
               self.text_embedding(tokens, deterministic), self.logit_scale(),
               self.itm_logits(image, tokens, deterministic),
               self.mlm_logits(image, tokens, deterministic),
               self.patch_pixels(image, jnp.zeros((image.shape[0],
                                                   self.config.num_patches), bool),
                                 deterministic)]
    if self.num_classes:
      outputs.append(self.class_logits(image, tokens, deterministic))
    return outputs
