"""JAR: the Joint Adaptive Representation (seed 000, sec. 3.1, eqs. 1-3)."""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from vlpretrain.network import layers
from vlpretrain.network.fusion.inputs import fusion_inputs
from vlpretrain.network.fusion.resamplers import LatentResampler, SpatialResampler


class JAR(nn.Module):
  """Joint Adaptive Representation (seed 000, sec. 3.1).

  1. P(X_im) = W1 X_im projects the image tokens to the text width D.
  2. f_N, t_N: N latents per modality resample image and (T5-encoded) text, once (eq. 1).
  3. K iterations (eqs. 2-3), with h_0 = t_N and h_i = combine(F_i, t_N):
       P       = Ln(h) + tanh(alpha_i) * MHA(Ln(h), Ln(f_N))
       F       = P + tanh(beta_i) * MLP(P)
       F_{i+1} = TransformerLayer(F)
  The gates alpha_i, beta_i are zero-initialised parameters, so at initialisation the
  output does not depend on the image (as in Flamingo-style gating).

  The paper's: the projection, eq. 1's latents and W2, the LayerNorms and the order of
  eqs. 2-3, tanh gating, K = 4, N = 64, one Transformer layer per iteration. Our
  readings, each an option where the other is plausible: per-iteration gates and
  weights (eq. 3 "repeats the same process": `share_iteration_weights=True` uses one
  set), the 'weighted' combine F_i + w_i t_N (Table 2e names it, the text gives no
  formula), gate_init (0 in the paper, whose towers start pretrained), the LayerNorm
  on the output (the memory the T5 decoder attends to).

  Attributes:
    num_latents: N (paper default 64; Table 2b).
    num_iterations: K (paper default 4; Table 2c).
    num_layers: Transformer layers T per iteration (Table 2f; default 1).
    gating: 'tanh' (eq. 2) or 'add' (no gate: the "Ours add" row of Table 2a).
    gate_init: the initial alpha_i, beta_i (0 in the paper, whose towers start
      pretrained). A ViT trained from scratch gets no gradient through a zero gate, so
      models trained from scratch start the gates open (e.g. 1: tanh(1) = 0.76).
    iterative_combine: how F_i and t_N form the next input (Table 2e): 'none' (F_i),
      'residual' (F_i + t_N, as written in eq. 3) or 'weighted' (F_i + w_i * t_N with
      a learned scalar w_i initialised to 1: the setting selected in Table 2e).
    resampler: 'latent' (eq. 1) or 'spatial' (TokenLearner maps, Table 2d).
    share_iteration_weights: one set of norms, attention, MLP, Transformer layers,
      gates and combine weight for all K iterations.
    num_heads: attention heads (default: width // 64).
    mlp_dim: MLP width (default: the T5 encoder's mlp_dim).
    mlp: the MLP of eq. 2 and of each Transformer layer T: 'gelu' (ViT's
      Dense-GELU-Dense) or 'gated_gelu' (T5 v1.1's (gelu(x W0) * x W1) W_out). The
      gated one multiplies two projections of the same token, so a token holding the
      question's colour and the attended image colour can compare them directly.
    resample_image, resample_text: whether eq. 1 resamples that modality to N
      latents. Off, its tokens enter eqs. 2-3 as they are: the M projected image
      tokens as keys, or the L encoded text tokens as queries (then the memory has L
      tokens and the text's padding mask). Both off, JAR is text-query cross-attention
      with gates and iterations (what gin/models/jar_tiny.gin sets today).

  Params (per iteration i; `_0` for all when shared): image_projection,
  image_resampler, text_resampler, query_norm_i, image_norm_i, cross_attention_i,
  mlp_i, transformer_i (and transformer_i_j for the j-th further layer), alpha_i,
  beta_i, combine_weight_i, output_norm.
  """
  num_latents: int = 64
  num_iterations: int = 4
  num_layers: int = 1
  gating: str = "tanh"
  gate_init: float = 0.0
  iterative_combine: str = "weighted"
  resampler: str = "latent"
  share_iteration_weights: bool = False
  num_heads: Optional[int] = None
  mlp_dim: Optional[int] = None
  mlp: str = "gelu"
  resample_image: bool = True
  resample_text: bool = True
  dropout_rate: float = 0.0

  def _check(self):
    choices = {"gating": ("tanh", "add"), "iterative_combine": ("none", "residual",
                                                                "weighted"),
               "mlp": ("gelu", "gated_gelu"), "resampler": ("latent", "spatial")}
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"JAR.{field} must be one of {allowed}, got "
                         f"{getattr(self, field)!r} (gin: fusion.JAR.{field}).")
    if self.num_layers < 1 or self.num_iterations < 1:
      raise ValueError("JAR.num_layers and JAR.num_iterations must be >= 1, got "
                       f"{self.num_layers} and {self.num_iterations}.")

  def _resample(self, x, mask, heads, name, deterministic):
    if self.resampler == "spatial":
      return SpatialResampler(self.num_latents, name=name)(x, mask)
    return LatentResampler(self.num_latents, heads, name=name)(x, mask, deterministic)

  @nn.compact
  def __call__(self, image_features, text_tokens, text_encoder, deterministic=True):
    self._check()
    text, text_mask, projected, heads, mlp_dim = fusion_inputs(
        image_features, text_tokens, text_encoder, self.num_heads, self.mlp_dim,
        deterministic)
    width, dtype = text.shape[-1], text.dtype
    f_n = projected
    if self.resample_image:
      f_n = self._resample(projected, None, heads, "image_resampler", deterministic)
    t_n, memory_mask = text, text_mask
    if self.resample_text:
      t_n = self._resample(text, text_mask, heads, "text_resampler", deterministic)
      memory_mask = jnp.ones(t_n.shape[:2], dtype=bool)

    shared = self._iteration(0, width, heads, mlp_dim, dtype) if (
        self.share_iteration_weights) else None
    features = None
    for i in range(self.num_iterations):
      step = shared or self._iteration(i, width, heads, mlp_dim, dtype)
      h = t_n if features is None else self._combine(features, t_n, step["combine"])
      features = self._fuse(step, h, f_n, memory_mask, deterministic)
    memory = layers.LayerNorm(dtype=dtype, name="output_norm")(features)
    return memory, memory_mask

  def _iteration(self, i, width, heads, mlp_dim, dtype) -> dict:
    """The modules and gates of iteration i (eqs. 2-3)."""
    gated = self.mlp == "gated_gelu"
    gate = lambda name: 1.0 if self.gating == "add" else jnp.tanh(self.param(
        name, layers.partitioned(nn.initializers.constant(self.gate_init), ()), (),
        jnp.float32))
    combine = None  # Iteration 0 combines nothing; shared, the one w serves all.
    if self.iterative_combine == "weighted" and (i or self.share_iteration_weights):
      combine = self.param(f"combine_weight_{i}", layers.partitioned(
          nn.initializers.ones, ()), (), jnp.float32)
    return {
        "query_norm": layers.LayerNorm(dtype=dtype, name=f"query_norm_{i}"),
        "image_norm": layers.LayerNorm(dtype=dtype, name=f"image_norm_{i}"),
        "attention": layers.MultiHeadAttention(
            heads, width // heads, style="vit", dtype=dtype,
            name=f"cross_attention_{i}"),
        "mlp": (layers.GatedGeluMlp if gated else layers.GeluMlp)(
            mlp_dim, self.dropout_rate, dtype, name=f"mlp_{i}"),
        "transformer": [layers.TransformerLayer(
            heads, mlp_dim, self.dropout_rate, dtype, gated_mlp=gated,
            name=f"transformer_{i}" + (f"_{j}" if j else ""))
                        for j in range(self.num_layers)],
        "alpha": gate(f"alpha_{i}"), "beta": gate(f"beta_{i}"), "combine": combine,
    }

  def _combine(self, features, t_n, weight):
    if self.iterative_combine == "none":
      return features
    if self.iterative_combine == "residual":
      return features + t_n
    return features + weight.astype(t_n.dtype) * t_n

  def _fuse(self, step, h, f_n, mask, deterministic):
    """One iteration of eqs. 2-3; `mask` (B, len(h)) marks h's real tokens."""
    h = step["query_norm"](h)
    attended = step["attention"](h, step["image_norm"](f_n), deterministic=deterministic)
    p = h + step["alpha"] * attended
    f = p + step["beta"] * step["mlp"](p, deterministic=deterministic)
    for layer in step["transformer"]:
      f = layer(f, mask[:, None, None, :], deterministic=deterministic)
    return f
