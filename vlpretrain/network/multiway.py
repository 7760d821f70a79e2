"""VLMo's Multiway Transformer (seed 002 sec. 3.1-3.2), with its standard-Transformer
baseline as an option.

Inputs (sec. 3.1):
  image  [I_CLS] + linearly projected P x P patches, + learned 1-D position embedding
         (N + 1 rows) + the image type embedding.
  text   [T_CLS] + word embeddings of the tokens, + learned position embedding + the
         text type embedding. The tokens end with the vocabulary's EOS, which plays
         [T_SEP]; [T_CLS] is a learned vector (the seqio vocabularies have no CLS
         piece). Padding (id 0) is masked out of attention.

Each block (eqs. 1-2): H' = MSA(LN(H)) + H, shared by both modalities; H = FFN(LN(H'))
+ H' where the FFN is chosen by hard routing on the modality:
  image-only input   V-FFN in every layer;
  text-only input    L-FFN in every layer;
  image-text input   V-FFN on the image positions and L-FFN on the text positions in the
                     bottom `depth - num_vl_layers` layers, VL-FFN on all positions in
                     the top `num_vl_layers` (base: top 2, large: top 3).
Each expert is LayerNorm + a GELU MLP (LN inside the expert, as in VLMo's released
code: our reading of "FFN(LN(.))" when the FFN differs by modality). The top layers
hold all three experts, the bottom ones V-FFN and L-FFN.

`multiway=False` gives the standard Transformer of seed 002 Table 5 ("Std TRM", ViLT):
one FFN shared by all positions in all modes. `num_vl_layers=0` with `multiway=True`
is Table 5's "Multiway-VLExp" row (no vision-language experts).

Parameter names: patch_embedding, image_cls, patch_mask_embedding (the [MASK] patch of
the image-only stage), image_pos_embedding, token_embedding,
text_cls, text_pos_embedding, type_embedding, layer_<i>/{pre_attention_norm,
attention, v_ffn, l_ffn, vl_ffn | ffn}, final_norm. With `scan_layers` (t5x's
scan_layers, `--gin.SCAN_LAYERS=True`) the blocks are two `nn.scan` stacks, `layers`
(the bottom `depth - num_vl_layers`) and `vl_layers` (the top ones), their params on a
leading 'layers' axis: one block of each kind is compiled whatever the depth.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers

# name -> (width, depth, mlp_dim, num_heads, num_vl_layers). base and large are seed
# 002 sec. 4.1 (ViT-B / ViT-L geometry); tiny is the embedded config, test unit tests'.
MULTIWAY_SIZES = {
    "test": (32, 2, 64, 2, 1),
    "tiny": (128, 4, 256, 4, 1),
    "base": (768, 12, 3072, 12, 2),
    "large": (1024, 24, 4096, 16, 3),
}
MODES = ("image", "text", "pair")


@dataclasses.dataclass(frozen=True)
class MultiwayConfig:
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  num_vl_layers: int
  image_size: int = 224
  patch_size: int = 16
  vocab_size: Optional[int] = None  # None: derived from the vocabulary by the model.
  max_text_length: int = 40         # Text position table rows (seed 002: length 40).
  multiway: bool = True             # False: one shared FFN (standard Transformer).
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  scan_layers: bool = False         # nn.scan over the blocks (params `layers/...`).
  remat: bool = False               # Recompute each block's activations in backward.

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


def multiway_config(size: str = "base", image_size: int = 224, patch_size: int = 16,
                    **overrides) -> MultiwayConfig:
  """Config by size name (MULTIWAY_SIZES); keywords override fields."""
  if size not in MULTIWAY_SIZES:
    raise ValueError(f"Unknown Multiway size {size!r} (gin: multiway.multiway_config.size):"
                     f" use one of {sorted(MULTIWAY_SIZES)}.")
  if image_size % patch_size:
    raise ValueError(f"image_size {image_size} is not a multiple of patch_size "
                     f"{patch_size} (gin: multiway.multiway_config).")
  width, depth, mlp_dim, heads, vl = MULTIWAY_SIZES[size]
  fields = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
                num_vl_layers=vl, image_size=image_size, patch_size=patch_size)
  fields.update(overrides)
  cfg = MultiwayConfig(**fields)
  if not 0 <= cfg.num_vl_layers <= cfg.depth:
    raise ValueError(f"num_vl_layers={cfg.num_vl_layers} must be in [0, depth="
                     f"{cfg.depth}] (gin: multiway.multiway_config.num_vl_layers).")
  return cfg


class Expert(nn.Module):
  """One modality expert: LayerNorm + GELU MLP (seed 002 eq. 2's FFN(LN(.)))."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic=True):
    y = layers.LayerNorm(dtype=self.dtype, name="norm")(x)
    return layers.GeluMlp(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(
        y, deterministic=deterministic)


class MultiwayBlock(nn.Module):
  """Shared self-attention, then the FFN chosen by modality (eqs. 1-2)."""
  config: MultiwayConfig
  has_vl_expert: bool

  def setup(self):
    cfg = self.config
    self.pre_attention_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.attention = layers.MultiHeadAttention(
        cfg.num_heads, cfg.width // cfg.num_heads, style="vit",
        dropout_rate=cfg.dropout_rate, dtype=cfg.dtype)
    expert = lambda: Expert(cfg.mlp_dim, cfg.dropout_rate, cfg.dtype)
    if cfg.multiway:
      self.v_ffn, self.l_ffn = expert(), expert()
      if self.has_vl_expert:
        self.vl_ffn = expert()
    else:
      self.ffn = expert()
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def __call__(self, x, mask, mode: str, num_image_tokens: int = 0,
               deterministic: bool = True):
    """x (B, T, D); mask (B, T) True = real token; mode in MODES. In 'pair' mode the
    first `num_image_tokens` positions are the image's."""
    y = self.pre_attention_norm(x)
    y = self.attention(y, y, mask=mask[:, None, None, :], deterministic=deterministic)
    x = x + self.dropout(y, deterministic=deterministic)
    x = x + self.dropout(self._ffn(x, mode, num_image_tokens, deterministic),
                         deterministic=deterministic)
    return layers.constrain(x)

  def _ffn(self, x, mode, num_image_tokens, deterministic):
    if not self.config.multiway:
      return self.ffn(x, deterministic)
    if mode == "image":
      return self.v_ffn(x, deterministic)
    if mode == "text":
      return self.l_ffn(x, deterministic)
    if self.has_vl_expert:
      return self.vl_ffn(x, deterministic)
    # Hard routing: the image positions see only V-FFN, the text positions only L-FFN.
    image, text = x[:, :num_image_tokens], x[:, num_image_tokens:]
    return jnp.concatenate([self.v_ffn(image, deterministic),
                            self.l_ffn(text, deterministic)], axis=1)


class MultiwayTransformer(nn.Module):
  """Image-only, text-only and image-text encoders with shared parameters.

  `encode_image(image)` -> (B, N + 1, D), [I_CLS] first; `encode_text(tokens)` ->
  (B, L + 1, D), [T_CLS] first, and its mask; `encode_pair(image, tokens)` ->
  (B, N + 1 + L + 1, D) image positions first, and its mask. Calling the module runs all
  three (so `init` creates every parameter).
  """
  config: MultiwayConfig

  def setup(self):
    cfg = self.config
    if cfg.vocab_size is None:
      raise ValueError("MultiwayConfig.vocab_size is unset: the model sets it from the "
                       "vocabulary (models.VLMoModel), or bind "
                       "multiway.multiway_config.vocab_size.")
    embed_init = layers.partitioned(nn.initializers.normal(0.02), (None, "embed"))
    self.patch_embedding = nn.Conv(
        cfg.width, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2, padding="VALID",
        dtype=cfg.dtype, param_dtype=jnp.float32,
        kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                       (None, None, None, "embed")),
        bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)))
    self.image_cls = self.param("image_cls", embed_init, (1, cfg.width), jnp.float32)
    self.patch_mask_embedding = self.param("patch_mask_embedding", embed_init,
                                           (1, cfg.width), jnp.float32)
    self.image_pos_embedding = self.param(
        "image_pos_embedding", layers.partitioned(nn.initializers.normal(0.02),
                                                  ("length", "embed")),
        (cfg.num_patches + 1, cfg.width), jnp.float32)
    self.token_embedding = nn.Embed(
        cfg.vocab_size, cfg.width, dtype=cfg.dtype, param_dtype=jnp.float32,
        embedding_init=layers.partitioned(nn.initializers.normal(0.02),
                                          ("vocab", "embed")))
    self.text_cls = self.param("text_cls", embed_init, (1, cfg.width), jnp.float32)
    self.text_pos_embedding = self.param(
        "text_pos_embedding", layers.partitioned(nn.initializers.normal(0.02),
                                                 ("length", "embed")),
        (cfg.max_text_length + 1, cfg.width), jnp.float32)
    self.type_embedding = self.param("type_embedding", embed_init, (2, cfg.width),
                                     jnp.float32)
    first_vl = cfg.depth - cfg.num_vl_layers
    static = (3, 4, 5)  # mode, num_image_tokens, deterministic: Python values.
    if cfg.scan_layers:  # One stack per kind of block; a kind with no block is absent.
      self.blocks = [
          layers.scanned_stack(MultiwayBlock, n, cfg.remat, static_argnums=static)(
              cfg, has_vl_expert=vl, name=name)
          for n, vl, name in ((first_vl, False, "layers"),
                              (cfg.num_vl_layers, True, "vl_layers")) if n]
    else:
      block = (nn.remat(MultiwayBlock, static_argnums=static) if cfg.remat
               else MultiwayBlock)
      self.blocks = [block(cfg, has_vl_expert=i >= first_vl, name=f"layer_{i}")
                     for i in range(cfg.depth)]
    self.final_norm = layers.LayerNorm(dtype=cfg.dtype)
    self.embed_dropout = nn.Dropout(cfg.dropout_rate)

  # ------------------------------------------------------------------ inputs
  def embed_image(self, image, patch_mask=None):
    """[I_CLS] + patches + position + type; where `patch_mask` (B, N) is True the patch
    embedding is replaced by the learned [MASK] vector (masked image modelling)."""
    cfg = self.config
    layers.check_image_size(image, cfg.image_size,
                            "multiway.multiway_config.image_size (gin)")
    x = self.patch_embedding(image.astype(cfg.dtype))
    batch = x.shape[0]
    x = jnp.reshape(x, (batch, -1, cfg.width))
    if patch_mask is not None:
      x = jnp.where(patch_mask[..., None], self.patch_mask_embedding.astype(cfg.dtype), x)
    cls = jnp.broadcast_to(self.image_cls.astype(cfg.dtype), (batch, 1, cfg.width))
    x = jnp.concatenate([cls, x], axis=1)
    x = x + (self.image_pos_embedding + self.type_embedding[0]).astype(cfg.dtype)
    return x, jnp.ones(x.shape[:2], bool)

  def embed_text(self, tokens):
    cfg = self.config
    if tokens.shape[1] > cfg.max_text_length:
      raise ValueError(
          f"Text of {tokens.shape[1]} tokens is longer than the position table "
          f"({cfg.max_text_length}): lower TASK_FEATURE_LENGTHS['text'] or raise "
          "multiway.multiway_config.max_text_length.")
    x = self.token_embedding(tokens)
    batch, length = tokens.shape
    cls = jnp.broadcast_to(self.text_cls.astype(cfg.dtype), (batch, 1, cfg.width))
    x = jnp.concatenate([cls, x], axis=1)
    x = x + (self.text_pos_embedding[:length + 1] + self.type_embedding[1]).astype(
        cfg.dtype)
    mask = jnp.concatenate([jnp.ones((batch, 1), bool), tokens != 0], axis=1)
    return x, mask

  def _encode(self, x, mask, mode, num_image_tokens, deterministic):
    x = self.embed_dropout(layers.constrain(x), deterministic=deterministic)
    for block in self.blocks:
      x = block(x, mask, mode, num_image_tokens, deterministic)
    return self.final_norm(x)

  # ------------------------------------------------------------------ modes
  def encode_image(self, image, deterministic=True, patch_mask=None):
    x, mask = self.embed_image(image, patch_mask)
    return self._encode(x, mask, "image", 0, deterministic)

  def encode_text(self, tokens, deterministic=True):
    x, mask = self.embed_text(tokens)
    return self._encode(x, mask, "text", 0, deterministic), mask

  def encode_pair(self, image, tokens, deterministic=True):
    image_x, image_mask = self.embed_image(image)
    text_x, text_mask = self.embed_text(tokens)
    x = jnp.concatenate([image_x, text_x], axis=1)
    mask = jnp.concatenate([image_mask, text_mask], axis=1)
    return self._encode(x, mask, "pair", image_x.shape[1], deterministic), mask

  def attend_token_embedding(self, x):
    """Logits over the vocabulary with the (tied) token embedding."""
    return self.token_embedding.attend(x)

  def __call__(self, image, tokens, deterministic=True):
    return (self.encode_image(image, deterministic,
                              jnp.zeros((image.shape[0], self.config.num_patches), bool)),
            self.encode_text(tokens, deterministic)[0],
            self.encode_pair(image, tokens, deterministic)[0])
