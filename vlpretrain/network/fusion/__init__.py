"""Image-text fusion modules, one per method of seed 000's Tables 1-2. All share one
call signature:

    memory, memory_mask = fusion(image_features, text_tokens, text_encoder,
                                 deterministic=True)

`image_features` (B, M, Dv) come from the ViT; `text_tokens` (B, L) are the encoder
input tokens; `text_encoder(tokens, prefix=None, prefix_mask=None, deterministic)` is the
T5 encoder (it returns (encoded, mask)). The result is the T5 decoder's memory. Chosen
by gin: `FUSION = @fusion.JAR()` (gin/models/vl_encdec.gin).

- `JAR` (jar.py): the Joint Adaptive Representation, sec. 3.1 eqs. 1-3, with the
  Table 2 settings as options (gating, N, K, resampler, combine, layers).
- `Concat` (concat.py): image tokens prepended to the text in the T5 encoder (Table 2a).
- `CrossAttention` (cross_attention.py): the text queries the image (ALBEF / BLIP).
- `Perceiver` (perceiver.py): latents re-attend to the raw inputs every iteration.
- `CoTok` (cotok.py): TokenLearner maps recomputed every iteration (Table 1).
"""
from vlpretrain.network.fusion.concat import Concat
from vlpretrain.network.fusion.cotok import CoTok
from vlpretrain.network.fusion.cross_attention import CrossAttention
from vlpretrain.network.fusion.jar import JAR
from vlpretrain.network.fusion.perceiver import Perceiver
from vlpretrain.network.fusion.resamplers import LatentResampler, SpatialResampler

__all__ = ["Concat", "CoTok", "CrossAttention", "JAR", "LatentResampler", "Perceiver",
           "SpatialResampler"]
