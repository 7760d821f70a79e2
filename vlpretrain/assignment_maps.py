"""Assignment maps (t5x's `RestoreCheckpointConfig.assignment_map`) for warm-starting
vlpretrain's encoder-decoder from the ecosystem's public checkpoints.

Each preset is a tuple of (regex over vlpretrain's param path, checkpoint param path)
pairs; `checkpoints.assign` applies them. Seed 000 (JAR, sec. 4) starts its text
encoder and decoder from T5 v1.1 and its image encoder from an ImageNet ViT, and the
fusion from scratch:

    utils.RestoreCheckpointConfig:
      path = ['/ckpt/t5_1_1_base/checkpoint_1000000', '/ckpt/ViT-B_32.npz']
      mode = 'specific'
      assignment_map = @assignment_maps.jar_warm_start()

vlpretrain's T5 (network/t5.py) has the names of t5x's `examples/t5/network.py`, under
`text_encoder/` where t5x has `encoder/`; t5x stores attention kernels flattened to
(D, H*K), which the reader reshapes. Its ViT (network/vit.py) has big_vision's
structure (models/vit.py) under vlpretrain's names.
"""
import gin

T5_1_1 = (
    (r"text_encoder/(.*)", r"encoder/\1"),
    (r"decoder/(.*)", r"decoder/\1"),
    (r"token_embedder/(.*)", r"token_embedder/\1"),
)


@gin.configurable
def t5_1_1(fresh_rest: bool = True) -> tuple:
  """The text encoder, decoder and token embedding from a t5x T5 v1.1 checkpoint;
  with `fresh_rest` every other param (ViT, fusion) starts from its initialisation."""
  return T5_1_1 + (((r".*", None),) if fresh_rest else ())


@gin.configurable
def big_vision_vit(mlp_block: str = "MlpBlock_0", fresh_rest: bool = True) -> tuple:
  """The image encoder from a big_vision ViT .npz (models/vit.py's names). The
  checkpoints of google-research/vision_transformer name the MLP `MlpBlock_3`: pass
  `mlp_block='MlpBlock_3'`. A stored position embedding with a class token's row (the
  'token' classifier) loses that row; the classifier head is not read."""
  block = r"image_encoder/encoderblock_(\d+)/"
  source = r"Transformer/encoderblock_\1/"
  pairs = (
      (r"image_encoder/embedding/(kernel|bias)", r"embedding/\1"),
      (r"image_encoder/pos_embedding", "pos_embedding"),
      (block + r"pre_attention_norm/LayerNorm_0/(scale|bias)", source + r"LayerNorm_0/\2"),
      (block + r"attention/(query|key|value|out)/(kernel|bias)",
       source + r"MultiHeadDotProductAttention_0/\2/\3"),
      (block + r"pre_mlp_norm/LayerNorm_0/(scale|bias)", source + r"LayerNorm_1/\2"),
      (block + r"mlp/fc1/(kernel|bias)", source + mlp_block + r"/Dense_0/\2"),
      (block + r"mlp/fc2/(kernel|bias)", source + mlp_block + r"/Dense_1/\2"),
      (r"image_encoder/encoder_norm/LayerNorm_0/(scale|bias)", r"Transformer/encoder_norm/\1"),
  )
  return pairs + (((r".*", None),) if fresh_rest else ())


@gin.configurable
def jar_warm_start(mlp_block: str = "MlpBlock_0") -> tuple:
  """Seed 000's initialisation: T5 v1.1 text towers, a big_vision ViT, a fresh fusion.
  `RestoreCheckpointConfig.path` lists the T5 checkpoint and the ViT .npz."""
  return (t5_1_1(fresh_rest=False) + big_vision_vit(mlp_block, fresh_rest=False)
          + ((r".*", None),))
