"""Vision Transformer image encoder (Dosovitskiy et al., 2021), sizes by name.

`vit_config("B/32", image_size=224)` gives the backbone of seed 000 (appendix A.1).
The encoder returns all patch tokens, (B, M, D) with M = (H/P) * (W/P): the fusion
module resamples them, so no class token is needed.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers

# name -> (width, depth, mlp_dim, num_heads). Ti..H as in the ViT / big_vision tables;
# `test` and `mini` are tiny sizes for unit tests and the embedded jar_tiny config.
VIT_SIZES = {
    "test": (32, 1, 64, 2),
    "mini": (128, 3, 256, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}


# "patch": one P x P stride-P convolution (the ViT paper's patch embedding); "conv":
# the convolutional stem of Xiao et al. (2021), see ConvStem.
STEMS = ("patch", "conv")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  image_size: int = 224
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  stem: str = "patch"
  scan_layers: bool = False  # nn.scan over the blocks (params `encoderblock/...`).

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


def vit_config(variant: str = "B/32", image_size: int = 224, **overrides) -> ViTConfig:
  """Config from a name like 'B/32' (size/patch). Extra keywords override fields."""
  try:
    size, patch = variant.split("/")
    width, depth, mlp_dim, heads = VIT_SIZES[size]
    patch = int(patch)
  except (ValueError, KeyError):
    raise ValueError(f"Unknown ViT variant {variant!r}: use '<size>/<patch>' with size "
                     f"one of {sorted(VIT_SIZES)}, e.g. 'B/32'.") from None
  if image_size % patch:
    raise ValueError(f"ViT image_size {image_size} is not a multiple of the patch "
                     f"size {patch} (variant {variant!r}).")
  if overrides.get("stem", "patch") not in STEMS:
    raise ValueError(f"Unknown ViT stem {overrides['stem']!r} (gin: vit.vit_config.stem): "
                     f"use one of {STEMS}.")
  return ViTConfig(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads,
                   patch_size=patch, image_size=image_size, **overrides)


class ViT(nn.Module):
  """Patch embedding (or a convolutional stem, `stem='conv'`) + learned position
  embedding + pre-LN Transformer blocks."""
  config: ViTConfig

  @nn.compact
  def __call__(self, image, deterministic=True):
    cfg = self.config
    layers.check_image_size(image, cfg.image_size, "vit.vit_config.image_size (gin)")
    x = image.astype(cfg.dtype)
    if cfg.stem == "conv":
      x = ConvStem(cfg.width, cfg.patch_size, cfg.dtype, name="conv_stem")(x)
      kernel = 1
    else:
      kernel = cfg.patch_size
    x = nn.Conv(cfg.width, (kernel,) * 2, strides=(kernel,) * 2,
                padding="VALID", dtype=cfg.dtype, param_dtype=jnp.float32,
                kernel_init=layers.partitioned(nn.initializers.lecun_normal(),
                                               (None, None, None, "embed")),
                bias_init=layers.partitioned(nn.initializers.zeros, ("embed",)),
                name="embedding")(x)
    batch, h, w, width = x.shape
    x = jnp.reshape(x, (batch, h * w, width))
    pos = self.param("pos_embedding",
                     layers.partitioned(nn.initializers.normal(0.02),
                                        (None, "length", "embed")),
                     (1, h * w, width), jnp.float32)
    x = layers.constrain(x + pos.astype(cfg.dtype))
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if cfg.scan_layers:
      x = layers.scanned_stack(layers.TransformerLayer, cfg.depth, cfg.remat,
                               {"deterministic": deterministic})(
                                   cfg.num_heads, cfg.mlp_dim, cfg.dropout_rate, cfg.dtype,
                                   name="encoderblock")(x, None)
    else:
      block = nn.remat(layers.TransformerLayer, static_argnums=(3,)) if cfg.remat \
          else layers.TransformerLayer
      for i in range(cfg.depth):
        x = block(cfg.num_heads, cfg.mlp_dim, cfg.dropout_rate, cfg.dtype,
                  name=f"encoderblock_{i}")(x, None, deterministic)
    return layers.LayerNorm(dtype=cfg.dtype, name="encoder_norm")(x)


class ConvStem(nn.Module):
  """Xiao et al. (2021), "Early convolutions help transformers see better": log2(P)
  3x3 stride-2 convolutions (LayerNorm + ReLU after each) instead of the P x P patch
  projection; the channels double up to width / 2 and a 1x1 conv (the ViT's
  `embedding`) maps them to the width."""
  width: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    steps = self.patch_size.bit_length() - 1
    if 2 ** steps != self.patch_size:
      raise ValueError(f"ViT stem='conv' needs a power-of-two patch size, got "
                       f"{self.patch_size}.")
    for i in range(steps):
      channels = self.width // 2 ** (steps - i)
      x = nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                  param_dtype=jnp.float32,
                  kernel_init=layers.partitioned(nn.initializers.he_normal(),
                                                 (None, None, None, "image_embed")),
                  bias_init=layers.partitioned(nn.initializers.zeros, ("image_embed",)),
                  name=f"conv_{i}")(x)
      x = nn.relu(layers.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(x))
    return x
