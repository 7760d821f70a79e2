"""ResNet image encoder (He et al., 2016), the image tower of seed 001 (appendix B).

`resnet_config(50, output_stage='conv4', image_size=224)` is seed 001's backbone: "We
take the feature map from conv_4, which has shape of 14x14 as the visual feature. We
use an image size of 224x224". The encoder returns the flattened feature map,
(B, H' * W', C) tokens, so it is a drop-in for the ViT in `transformer.VLTransformer`
(at 224: (B, 196, 1024) after conv4, (B, 49, 2048) after conv5).

Ours, not the paper's (it says only "ResNet-50"):
- GroupNorm (32 groups) + weight-standardised convolutions, as BiT (Kolesnikov et al.,
  2020) and big_vision's `bit` ResNet, instead of BatchNorm: no mutable `batch_stats`
  collection in the train state, and no dependence on the per-device batch. GroupNorm
  has a scale and a bias per channel, as BatchNorm has, so the parameter count equals
  the BatchNorm ResNet's (ResNet-50: 23,508,032 without the classifier; torchvision's
  25,557,032 with its 1000-class fc). BatchNorm's running statistics are buffers, not
  parameters, in both counts.
- ResNet v1.5 (torchvision's layout): the stride-2 of a stage is on its first block's
  3x3 conv, not on the 1x1.
- The last norm of each residual branch starts with a zero scale (big_vision's `bit`;
  Goyal et al., 2017), so every block starts as the identity (trained from scratch).
"""
import dataclasses
import math
from typing import Any, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers

# name -> (blocks per stage, base width). All bottleneck ResNets; `test` is a tiny size
# for unit tests and the tiny gin.
RESNET_SIZES = {
    "test": ((1, 1, 1, 1), 8),
    "26": ((2, 2, 2, 2), 64),
    "50": ((3, 4, 6, 3), 64),
    "101": ((3, 4, 23, 3), 64),
    "152": ((3, 8, 36, 3), 64),
}
# The original paper's stage names: conv1 is the 7x7 stem (+ max pool), conv2..conv5
# the four stages of bottleneck blocks. `output_stage` is the last one run.
OUTPUT_STAGES = {"conv2": 1, "conv3": 2, "conv4": 3, "conv5": 4}
EXPANSION = 4  # Bottleneck: the block's output is 4x its 3x3 conv's channels.


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  block_sizes: Tuple[int, ...]  # Blocks of the stages that are run.
  width: int = 64               # Base width: the stem's channels (64 x multiplier).
  image_size: int = 224
  num_groups: int = 32          # GroupNorm groups (fewer where a layer is narrower).
  dtype: Any = jnp.float32
  remat: bool = False

  @property
  def num_stages(self) -> int:
    return len(self.block_sizes)

  @property
  def stride(self) -> int:
    """Total downsampling: 4 (stem) x 2 per stage after the first."""
    return 4 * 2 ** (self.num_stages - 1)

  @property
  def num_tokens(self) -> int:
    return (self.image_size // self.stride) ** 2

  @property
  def output_dim(self) -> int:
    return self.width * EXPANSION * 2 ** (self.num_stages - 1)


def resnet_config(size: Union[int, str] = 50, output_stage: str = "conv4",
                  image_size: int = 224, width_multiplier: int = 1,
                  **overrides) -> ResNetConfig:
  """Config from a depth (26, 50, 101, 152, or 'test'). Extra keywords override fields."""
  if str(size) not in RESNET_SIZES:
    raise ValueError(f"Unknown ResNet size {size!r} (gin: resnet.resnet_config.size): "
                     f"use one of {list(RESNET_SIZES)}.")
  if output_stage not in OUTPUT_STAGES:
    raise ValueError(f"Unknown ResNet output_stage {output_stage!r} (gin: "
                     f"resnet.resnet_config.output_stage): use one of "
                     f"{list(OUTPUT_STAGES)} (seed 001: 'conv4', 14x14 at 224).")
  if not isinstance(width_multiplier, int) or width_multiplier < 1:
    raise ValueError(f"ResNet width_multiplier {width_multiplier!r} (gin: "
                     "resnet.resnet_config.width_multiplier) must be a positive integer.")
  blocks, width = RESNET_SIZES[str(size)]
  config = ResNetConfig(block_sizes=blocks[:OUTPUT_STAGES[output_stage]],
                        width=width * width_multiplier, image_size=image_size,
                        **overrides)
  if image_size % config.stride:
    raise ValueError(f"ResNet image_size {image_size} (gin: resnet.resnet_config."
                     f"image_size) is not a multiple of {config.stride}, the stride of "
                     f"output_stage {output_stage!r}.")
  return config


def standardize(x, axis, eps=1e-5):
  x = x - jnp.mean(x, axis=axis, keepdims=True)
  return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


class StdConv(nn.Conv):
  """A convolution with a weight-standardised kernel (Qiao et al., 2019; BiT): each
  output channel's kernel has zero mean and unit variance over its fan-in."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return standardize(value, axis=(0, 1, 2)) if name == "kernel" else value


def _conv(features, kernel, strides, dtype, name):
  pad = (kernel - 1) // 2  # Symmetric, as torchvision's (flax's SAME is not, stride 2).
  return StdConv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32,
                 kernel_init=layers.partitioned(nn.initializers.he_normal(),
                                                (None, None, None, "image_embed")),
                 name=name)


def _norm(features, config, name, scale_init=nn.initializers.ones):
  return nn.GroupNorm(num_groups=math.gcd(config.num_groups, features), epsilon=1e-5,
                      dtype=config.dtype, param_dtype=jnp.float32,
                      scale_init=layers.partitioned(scale_init, ("image_embed",)),
                      bias_init=layers.partitioned(nn.initializers.zeros,
                                                   ("image_embed",)),
                      name=name)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride here: v1.5) -> 1x1 (x4 channels), norm after each, ReLU after
  the sum with the (projected when the shape changes) shortcut."""
  features: int
  strides: int
  config: ResNetConfig

  @nn.compact
  def __call__(self, x):
    cfg, out = self.config, self.features * EXPANSION
    residual = x
    if x.shape[-1] != out or self.strides != 1:
      residual = _conv(out, 1, self.strides, cfg.dtype, "conv_proj")(x)
      residual = _norm(out, cfg, "gn_proj")(residual)
    y = nn.relu(_norm(self.features, cfg, "gn1")(
        _conv(self.features, 1, 1, cfg.dtype, "conv1")(x)))
    y = nn.relu(_norm(self.features, cfg, "gn2")(
        _conv(self.features, 3, self.strides, cfg.dtype, "conv2")(y)))
    y = _norm(out, cfg, "gn3", nn.initializers.zeros)(
        _conv(out, 1, 1, cfg.dtype, "conv3")(y))
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """Stem (7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max pool) + bottleneck stages;
  returns the last stage's map flattened to (B, H' * W', C)."""
  config: ResNetConfig

  @nn.compact
  def __call__(self, image, deterministic=True):
    del deterministic  # No dropout in the tower.
    cfg = self.config
    layers.check_image_size(image, cfg.image_size, "resnet.resnet_config.image_size (gin)")
    x = image.astype(cfg.dtype)
    x = _conv(cfg.width, 7, 2, cfg.dtype, "conv_root")(x)
    x = nn.relu(_norm(cfg.width, cfg, "gn_root")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = nn.remat(Bottleneck) if cfg.remat else Bottleneck
    for stage, num_blocks in enumerate(cfg.block_sizes):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block(cfg.width * 2 ** stage, strides, cfg,
                  name=f"block{stage + 1}_unit{i + 1}")(x)
    batch, h, w, channels = x.shape
    return layers.constrain(jnp.reshape(x, (batch, h * w, channels)))
