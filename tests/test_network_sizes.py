"""Golden parameter counts of the named sizes (via jax.eval_shape: no weights made)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpretrain.network import fusion, t5, transformer, vit


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("variant, expected", [
    ("Ti/16", 5_524_032),
    ("S/16", 21_664_896),
    ("B/32", 87_453_696),  # ~87.5M: the ViT-B/32 encoder of seed 000, without a head.
    ("B/16", 85_797_120),
    ("L/16", 303_299_584),
])
def test_vit_parameter_counts(variant, expected):
  config = vit.vit_config(variant, image_size=224)
  shapes = jax.eval_shape(vit.ViT(config).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 224, 224, 3)))
  assert _count(shapes) == expected


def _t5_count(size):
  module = transformer.VLTransformer(vit.vit_config("test/8", 32),
                                     t5.t5_config(size, vocab_size=32128), fusion.Concat())
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                          jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8), jnp.int32))
  params = shapes["params"]
  return _count([params["token_embedder"], params["text_encoder"], params["decoder"]])


@pytest.mark.parametrize("size, expected", [
    ("small", 76_961_152),
    ("base", 247_577_856),  # T5 v1.1 base: 247.6M with the 32128-entry vocabulary.
    ("large", 783_150_080),
])
def test_t5_parameter_counts(size, expected):
  assert _t5_count(size) == expected


def test_vit_rejects_bad_variant_and_image_size():
  with pytest.raises(ValueError, match="Unknown ViT variant"):
    vit.vit_config("Q/16")
  with pytest.raises(ValueError, match="not a multiple"):
    vit.vit_config("B/32", image_size=100)
  module = vit.ViT(vit.vit_config("test/8", image_size=32))
  with pytest.raises(ValueError, match="configured for 32x32"):
    module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def test_vocab_padding():
  assert t5.padded_vocab_size(32100) == 32128
  assert t5.padded_vocab_size(128) == 128
  assert t5.padded_vocab_size(129) == 256


def test_vit_conv_stem_tokens_parameters_and_receptive_field():
  """stem='conv' (Xiao et al., 2021): log2(P) 3x3 stride-2 convs, channels width/8,
  /4, /2 for P=8, then a 1x1 embedding: the same (B, M, D) tokens, a known parameter
  count, and token (0, 0) sees only the pixels near its own 8x8 patch."""
  config = vit.vit_config("mini/8", image_size=64, stem="conv")
  image = jnp.zeros((2, 64, 64, 3))
  params = vit.ViT(config).init(jax.random.PRNGKey(0), image)["params"]
  tokens = vit.ViT(config).apply({"params": params}, image)
  assert tokens.shape == (2, 64, 128)
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  stem = (conv(3, 3, 16) + 2 * 16 + conv(3, 16, 32) + 2 * 32 + conv(3, 32, 64) + 2 * 64)
  assert _count(params["conv_stem"]) == stem
  assert _count(params["embedding"]) == conv(1, 64, 128)
  patch = vit.ViT(vit.vit_config("mini/8", image_size=64)).init(
      jax.random.PRNGKey(0), image)["params"]
  assert _count(params) - _count(patch) == stem + conv(1, 64, 128) - conv(8, 3, 128)

  stem_module = vit.ConvStem(128, 8)
  stem_params = stem_module.init(jax.random.PRNGKey(1), image)
  features = lambda x: stem_module.apply(stem_params, x)[0, 0, 0]
  base = jax.random.uniform(jax.random.PRNGKey(2), (1, 64, 64, 3), minval=-1, maxval=1)
  near = base.at[0, 5, 5, 0].add(1.0)    # Inside token (0, 0)'s 8x8 patch.
  far = base.at[0, 30, 30, 0].add(1.0)   # Four patches away.
  assert not np.allclose(features(near), features(base))
  np.testing.assert_array_equal(features(far), features(base))
  with pytest.raises(ValueError, match="power-of-two patch size"):
    vit.ViT(vit.vit_config("mini/6", image_size=48, stem="conv")).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))
  with pytest.raises(ValueError, match="stem"):
    vit.vit_config("mini/8", image_size=64, stem="convolutional")
