"""Parameters and forward FLOPs of a model, from shapes and a compile only.

Parameters come from `jax.eval_shape` of the network's init (no weights are made);
FLOPs from XLA's cost analysis of a compiled forward pass. Used by tools/model_stats.py
and tools/flops_table.py.
"""
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlpretrain import models


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def model_stats(model: models.VLEncoderDecoderModel, feature_lengths, batch_size=1):
  """{'params', 'params_by_module', 'forward_gflops_per_example', ...} for a model."""
  module = model.module
  size = module.vit_config.image_size
  inputs = (jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch_size, feature_lengths["inputs"]), jnp.int32),
            jax.ShapeDtypeStruct((batch_size, feature_lengths["targets"]), jnp.int32))
  variables = jax.eval_shape(lambda *x: module.init(jax.random.PRNGKey(0), *x), *inputs)
  params = nn.unbox(variables["params"])

  start = time.time()
  forward = jax.jit(lambda p, *x: module.apply({"params": p}, *x))
  compiled = forward.lower(params, *inputs).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
      "params": count_params(params),
      "params_by_module": {k: count_params(v) for k, v in params.items()},
      "forward_gflops_per_example": float(cost["flops"]) / batch_size / 1e9,
      "image_size": size,
      "feature_lengths": dict(feature_lengths),
      "fusion": type(module.fusion).__name__,
      "compile_seconds": round(time.time() - start, 1),
  }


def encoder_model_stats(model, feature_lengths, batch_size=1):
  """model_stats for an encoder model (`vlmo_models`): params by top-level module and,
  for the Multiway Transformer, by expert kind summed over layers."""
  cfg = model.module.config
  shapes = {"image": (batch_size, cfg.image_size, cfg.image_size, 3),
            "text_tokens": (batch_size, feature_lengths["text"])}
  # The network's own init: no vocabulary file is read (vocab_size is in the config).
  params = nn.unbox(jax.eval_shape(
      lambda r: model.module.init(r, jnp.zeros(shapes["image"]),
                                  jnp.zeros(shapes["text_tokens"], jnp.int32)),
      jax.random.PRNGKey(0))["params"])
  by_module = {k: count_params(v) for k, v in params.items() if k != "encoder"}
  for name, sub in params.get("encoder", {}).items():
    kind = "encoder/" + (name if not name.startswith("layer_") else "layers")
    by_module[kind] = by_module.get(kind, 0) + count_params(sub)
  by_expert = {}
  for name, layer in params.get("encoder", {}).items():
    if name.startswith("layer_"):
      for part, sub in layer.items():
        by_expert[part] = by_expert.get(part, 0) + count_params(sub)
  batch = {k: jax.ShapeDtypeStruct(v, jnp.float32 if k == "image" else jnp.int32)
           for k, v in shapes.items()}
  start = time.time()
  module = model.module

  def flops(method):
    fn = lambda p, b: module.apply({"params": p}, b["image"], b["text_tokens"],
                                   method=method)
    return compiled_gflops(jax.jit(fn).lower(params, batch).compile()) / batch_size

  embed = lambda m, image, tokens: (m.image_embedding(image), m.text_embedding(tokens))
  stats = {
      "params": count_params(params),
      "params_by_module": by_module,
      "params_by_expert": by_expert,
      # Every head once: image-only, text-only and two image-text (ITM, MLM) passes.
      "forward_gflops_per_example": flops(None),
      "embedding_gflops_per_pair": flops(embed),  # Dual encoder: one image + one text.
      "fusion_gflops_per_pair": flops(type(module).itm_logits),  # One fusion pass.
      "image_size": cfg.image_size,
      "feature_lengths": dict(feature_lengths),
      "fusion": "multiway" if cfg.multiway else "standard transformer",
  }
  stats["compile_seconds"] = round(time.time() - start, 1)
  return stats


def compiled_gflops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / 1e9
