"""The fusions of seed 000 Tables 1-2 behind JAR's call signature: shapes, masks,
the Table 2 options of JAR, and one iteration of eqs. 2-3 against numpy."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpretrain.network import fusion, t5, transformer, vit

WIDTH, LENGTH, PATCHES = 32, 7, 16  # T5 "test" width; ViT test/8 at 32 px: 4x4 patches.


def _network(fusion_module):
  return transformer.VLTransformer(vit.vit_config("test/8", 32),
                                   t5.t5_config("test", vocab_size=128), fusion_module)


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  image = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  tokens = jnp.asarray(rng.randint(2, 128, (2, LENGTH)), jnp.int32)
  return image, tokens.at[0, -3:].set(0).at[1, -1:].set(0)  # Padded text.


def _init(module, image, tokens):
  return nn.unbox(module.init(jax.random.PRNGKey(0), image, tokens, tokens))


# Each fusion, its memory length and whether the memory carries the text's mask.
FUSIONS = {
    "jar": (lambda: fusion.JAR(num_latents=4, num_iterations=2, gate_init=1.0), 4, False),
    "jar_spatial": (lambda: fusion.JAR(num_latents=4, num_iterations=2, gate_init=1.0,
                                       resampler="spatial"), 4, False),
    "jar_text_queries": (lambda: fusion.JAR(num_iterations=2, gate_init=1.0,
                                            resample_image=False, resample_text=False),
                         LENGTH, True),
    "concat": (fusion.Concat, PATCHES + LENGTH, None),
    "cross_attention": (lambda: fusion.CrossAttention(num_layers=2), LENGTH, True),
    "perceiver": (lambda: fusion.Perceiver(num_latents=4, num_iterations=2), 4, False),
    "cotok": (lambda: fusion.CoTok(num_tokens=3, num_iterations=2), 3 + LENGTH, True),
}


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_memory_shape_mask_and_padding(name):
  """Memory (B, len, D) and its mask; the image matters; and what sits at a padded text
  position (here: a different padding embedding) changes nothing at a real position."""
  make, length, text_mask = FUSIONS[name]
  module = _network(make())
  image, tokens = _inputs()
  variables = _init(module, image, tokens)
  memory, mask = module.apply(variables, image, tokens, method=module.encode)
  assert memory.shape == (2, length, WIDTH) and mask.shape == (2, length)
  real_text = np.asarray(tokens) != 0
  if text_mask is True:  # The text's mask, after any all-valid image tokens.
    np.testing.assert_array_equal(np.asarray(mask)[:, length - LENGTH:], real_text)
    assert np.asarray(mask)[:, :length - LENGTH].all()
  elif text_mask is False:
    assert np.asarray(mask).all()
  real = np.asarray(mask)

  params = flax.core.unfreeze(variables)
  embedding = params["params"]["token_embedder"]["embedding"]
  params["params"]["token_embedder"]["embedding"] = embedding.at[0].add(3.0)
  other, _ = module.apply(params, image, tokens, method=module.encode)
  np.testing.assert_allclose(np.asarray(other)[real], np.asarray(memory)[real],
                             atol=2e-5)

  flipped, _ = module.apply(variables, image[::-1], tokens, method=module.encode)
  assert np.max(np.abs(np.asarray(flipped) - np.asarray(memory))) > 1e-3


def test_spatial_resampler_maps_are_distributions_over_the_valid_positions():
  x = jnp.asarray(np.random.RandomState(1).normal(size=(2, 6, 8)), jnp.float32)
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  resampler = fusion.SpatialResampler(num_tokens=3, hidden_dim=16)
  variables = resampler.init(jax.random.PRNGKey(0), x, mask)
  out = resampler.apply(variables, x, mask)
  assert out.shape == (2, 3, 8)
  # Token n = sum_m map[m, n] x[m] with each map summing to 1 over the valid m: with
  # every valid input the same vector v, every output token is v.
  same = jnp.broadcast_to(x[:, :1], x.shape).at[0, 4:].set(100.0)
  np.testing.assert_allclose(resampler.apply(variables, same, mask),
                             jnp.broadcast_to(same[:, :1], (2, 3, 8)), rtol=1e-5)
  moved = x.at[0, 4:].add(5.0)  # Masked positions: no weight.
  np.testing.assert_allclose(resampler.apply(variables, moved, mask)[0], out[0],
                             atol=1e-6)


def test_jar_layers_per_iteration_and_shared_iteration_weights():
  image, tokens = _inputs()
  params = _init(_network(fusion.JAR(num_latents=4, num_iterations=3, num_layers=2)),
                 image, tokens)["params"]["fusion"]
  assert {"transformer_0", "transformer_0_1", "transformer_2_1"} <= set(params)
  assert "transformer_0_2" not in params
  shared = _network(fusion.JAR(num_latents=4, num_iterations=3,
                               share_iteration_weights=True))
  variables = _init(shared, image, tokens)
  names = set(variables["params"]["fusion"])
  assert {"cross_attention_0", "alpha_0", "combine_weight_0"} <= names
  assert not {"cross_attention_1", "alpha_1", "combine_weight_1", "mlp_2"} & names
  unshared = _network(fusion.JAR(num_latents=4, num_iterations=3))
  count = lambda v: sum(x.size for x in jax.tree.leaves(v["params"]["fusion"]))
  per_iteration = count(_init(unshared, image, tokens)) - count(variables)
  assert per_iteration > 0
  # Shared: all three iterations run the same modules, so the gradient of a shared
  # param sums three contributions; one iteration's value differs from three.
  one = _network(fusion.JAR(num_latents=4, num_iterations=1,
                            share_iteration_weights=True))
  single = dict(flax.core.unfreeze(variables))
  out_3 = shared.apply(single, image, tokens, method=shared.encode)[0]
  out_1 = one.apply(single, image, tokens, method=one.encode)[0]
  assert np.max(np.abs(np.asarray(out_3) - np.asarray(out_1))) > 1e-3


def test_perceiver_shares_all_but_the_first_iteration_when_asked():
  image, tokens = _inputs()
  names = set(_init(_network(fusion.Perceiver(num_latents=4, num_iterations=3,
                                              share_iteration_weights=True)),
                    image, tokens)["params"]["fusion"])
  assert {"cross_attention_0", "cross_attention_1", "latents"} <= names
  assert "cross_attention_2" not in names


# ---------------------------------------------------------- eqs. 2-3 in numpy
def _ln(x, p):
  p = p["LayerNorm_0"]  # layers.LayerNorm wraps flax's.
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _mha(q_in, kv_in, p):
  proj = lambda x, name: (np.einsum("bld,dhk->blhk", x, p[name]["kernel"])
                          + p[name]["bias"])
  q, k, v = proj(q_in, "query"), proj(kv_in, "key"), proj(kv_in, "value")
  logits = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(q.shape[-1]), k)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", weights, v)
  return np.einsum("bqhd,hdo->bqo", out, p["out"]["kernel"]) + p["out"]["bias"]


def _mlp(x, p):
  h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
  return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def test_one_iteration_of_equations_2_and_3_against_numpy():
  """K = 1 with alpha = 0.3 and beta = -0.7: P = Ln(t_N) + tanh(alpha) MHA(Ln(t_N),
  Ln(f_N)); F = P + tanh(beta) MLP(P); F_1 = T(F) (pre-LN Transformer layer); memory =
  Ln(F_1). t_N and f_N are the resamplers' outputs in the same forward pass."""
  module = _network(fusion.JAR(num_latents=4, num_iterations=1))
  image, tokens = _inputs()
  variables = flax.core.unfreeze(_init(module, image, tokens))
  variables["params"]["fusion"]["alpha_0"] = jnp.float32(0.3)
  variables["params"]["fusion"]["beta_0"] = jnp.float32(-0.7)
  seen = {}

  def record(next_fn, args, kwargs, context):
    out = next_fn(*args, **kwargs)
    if context.method_name == "__call__" and context.module.name in (
        "image_resampler", "text_resampler"):
      seen[context.module.name] = np.asarray(out, np.float64)
    return out

  with nn.intercept_methods(record):
    memory, _ = module.apply(variables, image, tokens, method=module.encode)
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"]["fusion"])
  t_n, f_n = seen["text_resampler"], seen["image_resampler"]
  h = _ln(t_n, p["query_norm_0"])
  attended = _mha(h, _ln(f_n, p["image_norm_0"]), p["cross_attention_0"])
  big_p = h + np.tanh(0.3) * attended
  f = big_p + np.tanh(-0.7) * _mlp(big_p, p["mlp_0"])
  layer = p["transformer_0"]
  y = _ln(f, layer["pre_attention_norm"])
  f = f + _mha(y, y, layer["attention"])
  f = f + _mlp(_ln(f, layer["pre_mlp_norm"]), layer["mlp"])
  want = _ln(f, p["output_norm"])
  np.testing.assert_allclose(np.asarray(memory), want, rtol=2e-4, atol=2e-5)
  assert abs(np.tanh(0.3)) * np.abs(attended).max() > 1e-2  # The image term counts.


@pytest.mark.parametrize("choice", ["JAR", "Concat", "CrossAttention", "Perceiver",
                                    "CoTok"])
def test_each_fusion_is_chosen_by_a_command_line_binding(clean_gin, choice):
  """`--gin.FUSION=@fusion.<choice>()` on gin/jar_tiny.gin builds that model (gin knows
  every fusion from gin/models/vl_encdec.gin, without an import on the command line)."""
  import gin  # pylint: disable=g-import-not-at-top
  from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin_flags([], ["jar_tiny.gin"], [f"FUSION = @fusion.{choice}()"])
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  assert type(model.module.fusion).__name__ == choice
  shapes = {"image": (1, 64, 64, 3), "encoder_input_tokens": (1, 8),
            "decoder_input_tokens": (1, 4), "decoder_target_tokens": (1, 4)}
  params = jax.eval_shape(lambda r: model.get_initial_variables(r, shapes),
                          jax.random.PRNGKey(0))["params"]
  own = {"JAR": "alpha_0", "Concat": "image_projection", "CrossAttention": "layer_0",
         "Perceiver": "latents", "CoTok": "tokenizer_0"}[choice]
  assert own in params["fusion"], sorted(params["fusion"])


@pytest.mark.parametrize("fragment, resamplers", [
    (None, {"image_resampler"}),
    ("fusions/jar_text_query.gin", set())])
def test_jar_tiny_resamples_the_image_and_the_text_query_fragment_does_not(
    clean_gin, fragment, resamplers):
  """gin/jar_tiny.gin is JAR with eq. 1 on the image (16 latents of the 64 ViT tokens);
  gin/fusions/jar_text_query.gin after it turns eq. 1 off (text-query cross-attention
  with gates): the resampler params exist exactly as configured."""
  import gin  # pylint: disable=g-import-not-at-top
  from vlpretrain import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.parse_gin_flags([], ["jar_tiny.gin"] + ([fragment] if fragment else []), [])
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  shapes = {"image": (1, 64, 64, 3), "encoder_input_tokens": (1, 8),
            "decoder_input_tokens": (1, 4), "decoder_target_tokens": (1, 4)}
  params = jax.eval_shape(lambda r: model.get_initial_variables(r, shapes),
                          jax.random.PRNGKey(0))["params"]
  assert {"image_resampler", "text_resampler"} & set(params["fusion"]) == resamplers
  if resamplers:
    assert params["fusion"]["image_resampler"]["latents"].shape == (16, 128)
