"""Optimizers (optax). Seed 001: AdamW, lr 1e-4, warmup 10k, weight decay 0.1, clip 1.0."""
import re
from typing import Optional, Union

import gin
import jax
import optax

from vlpretrain import checkpoints

# The params weight decay applies to, by path: every dense and convolution kernel
# (`.../kernel`), as big_vision decays (`wd_mults` default `('.*/kernel$', 1.0)`).
# Embedding tables (token, ViT position), JAR's latents, T5's relative-position tables,
# norm scales, biases and gates are not decayed: decay would pull learned queries and
# lookup tables towards zero, which is not the regularisation AdamW's decay is for.
KERNELS = r"(.*/)?kernel"


def decay_mask(params, pattern: str = KERNELS):
  """True for the params whose path (`checkpoints.param_path`, e.g.
  'fusion/image_resampler/latents') fully matches `pattern`."""
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bool(regex.fullmatch(checkpoints.param_path(path))), params)


@gin.configurable
def adamw(learning_rate: Union[float, optax.Schedule],
          weight_decay: float = 0.1,
          b1: float = 0.9,
          b2: float = 0.999,
          eps: float = 1e-8,
          clip_norm: Optional[float] = 1.0,
          weight_decay_pattern: str = KERNELS,
          frozen_pattern: Optional[str] = None) -> optax.GradientTransformation:
  """Global-norm clipping (skipped if clip_norm is None or 0) then AdamW.

  `learning_rate` is a float or an optax schedule (see
  `utils.create_learning_rate_scheduler`). Weight decay is decoupled and applies to the
  params whose path matches `weight_decay_pattern` (default: kernels; `decay_mask`).
  `frozen_pattern`: params whose path fully matches it are frozen (`freeze`).
  """
  adam = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                     mask=lambda params: decay_mask(params, weight_decay_pattern))
  if clip_norm:
    adam = optax.chain(optax.clip_by_global_norm(clip_norm), adam)
  return freeze(adam, frozen_pattern) if frozen_pattern else adam


def freeze(transform: optax.GradientTransformation,
           frozen_pattern: str) -> optax.GradientTransformation:
  """`transform` for the params whose path does not fully match `frozen_pattern`; zero
  updates (and no optimizer state) for those that do: optax.multi_transform with
  set_to_zero, so frozen params stay bit-identical, are not decayed and do not count
  in the gradient-norm clipping of the others (seed 002 sec. 3.4's text stage freezes
  self-attention and V-FFN this way)."""
  labels = lambda params: jax.tree.map(
      lambda frozen: "frozen" if frozen else "trained",
      decay_mask(params, frozen_pattern))
  return optax.multi_transform({"trained": transform, "frozen": optax.set_to_zero()},
                               labels)
