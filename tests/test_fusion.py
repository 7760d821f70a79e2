"""JAR fusion (seed 000 eqs. 1-3) and the concat baseline."""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlpretrain.network import fusion, t5, transformer, vit


def _network(fusion_module):
  return transformer.VLTransformer(vit.vit_config("test/8", 32),
                                   t5.t5_config("test", vocab_size=128), fusion_module)


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  images = jnp.asarray(rng.uniform(-1, 1, (2, 2, 32, 32, 3)), jnp.float32)
  tokens = jnp.asarray(rng.randint(2, 128, (2, 7)), jnp.int32).at[:, -2:].set(0)
  return images[0], images[1], tokens


def _encode(module, variables, image, tokens):
  return module.apply(variables, image, tokens, method=module.encode)[0]


def _set_param(variables, name, value):
  params = flax.core.unfreeze(nn.unbox(variables))
  params["params"]["fusion"][name] = jnp.asarray(value, jnp.float32)
  return params


@pytest.mark.parametrize("mlp", ["gelu", "gated_gelu"])
def test_gates_at_zero_make_the_output_independent_of_the_image(mlp):
  module = _network(fusion.JAR(num_latents=4, num_iterations=2, mlp=mlp))
  image_a, image_b, tokens = _inputs()
  variables = nn.unbox(module.init(jax.random.PRNGKey(0), image_a, tokens, tokens))
  for i in range(2):  # Gates are zero-initialised parameters.
    assert float(variables["params"]["fusion"][f"alpha_{i}"]) == 0.0
    assert float(variables["params"]["fusion"][f"beta_{i}"]) == 0.0
  out_a = _encode(module, variables, image_a, tokens)
  out_b = _encode(module, variables, image_b, tokens)
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
  assert out_a.shape == (2, 4, 32)

  # Opening one alpha gate lets the image through.
  opened = _set_param(variables, "alpha_1", 0.5)
  out_a = _encode(module, opened, image_a, tokens)
  out_b = _encode(module, opened, image_b, tokens)
  assert np.max(np.abs(np.asarray(out_a) - np.asarray(out_b))) > 1e-3


def test_gates_receive_gradients():
  module = _network(fusion.JAR(num_latents=4, num_iterations=2))
  image, _, tokens = _inputs()
  variables = nn.unbox(module.init(jax.random.PRNGKey(0), image, tokens, tokens))
  loss = lambda p: jnp.sum(module.apply({"params": p}, image, tokens, tokens) ** 2)
  grads = jax.grad(loss)(variables["params"])["fusion"]
  assert abs(float(grads["alpha_0"])) > 0
  assert abs(float(grads["beta_1"])) > 0


def test_add_gating_uses_the_image_from_the_start():
  module = _network(fusion.JAR(num_latents=4, num_iterations=2, gating="add"))
  image_a, image_b, tokens = _inputs()
  variables = module.init(jax.random.PRNGKey(0), image_a, tokens, tokens)
  assert "alpha_0" not in variables["params"]["fusion"]
  diff = _encode(module, variables, image_a, tokens) - _encode(module, variables,
                                                               image_b, tokens)
  assert float(jnp.max(jnp.abs(diff))) > 1e-3


def test_open_gates_pass_the_image_and_its_gradient():
  """gate_init=1 (from-scratch configs): tanh(1) gates, so the image matters at init and
  the image projection gets a gradient; with the paper's zero gates it gets exactly 0."""
  image_a, image_b, tokens = _inputs()

  def projection_grad(module, variables):
    loss = lambda p: jnp.sum(module.apply({"params": p}, image_a, tokens, tokens) ** 2)
    grads = jax.grad(loss)(variables["params"])["fusion"]["image_projection"]
    return max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))

  closed = _network(fusion.JAR(num_latents=4, num_iterations=2))
  variables = nn.unbox(closed.init(jax.random.PRNGKey(0), image_a, tokens, tokens))
  assert projection_grad(closed, variables) == 0.0
  opened = _network(fusion.JAR(num_latents=4, num_iterations=2, gate_init=1.0))
  variables = nn.unbox(opened.init(jax.random.PRNGKey(0), image_a, tokens, tokens))
  assert float(variables["params"]["fusion"]["alpha_0"]) == 1.0
  assert projection_grad(opened, variables) > 0.0
  diff = _encode(opened, variables, image_a, tokens) - _encode(opened, variables,
                                                               image_b, tokens)
  assert float(jnp.max(jnp.abs(diff))) > 1e-3


@pytest.mark.parametrize("combine, has_weight", [("none", False), ("residual", False),
                                                 ("weighted", True)])
def test_iterative_combine_options(combine, has_weight):
  """Each iteration's input h_i (what query_norm_i receives) is t_N for i = 0, then
  F_i ('none'), F_i + t_N ('residual') or F_i + w_i t_N ('weighted', w_i = 0.5 here),
  with F_i the previous iteration's Transformer layer output, all from one forward
  pass."""
  module = _network(fusion.JAR(num_latents=4, num_iterations=3, iterative_combine=combine))
  image, _, tokens = _inputs()
  variables = nn.unbox(module.init(jax.random.PRNGKey(0), image, tokens, tokens))
  assert ("combine_weight_1" in variables["params"]["fusion"]) == has_weight
  assert "combine_weight_0" not in variables["params"]["fusion"]  # h_0 = t_N.
  if has_weight:
    for i in (1, 2):
      variables = _set_param(variables, f"combine_weight_{i}", 0.5)
  seen = {}

  def record(next_fn, args, kwargs, context):
    out = next_fn(*args, **kwargs)
    name = context.module.name or ""
    if context.method_name == "__call__":
      if name.startswith("query_norm_"):
        seen[f"h_{name[-1]}"] = args[0]
      elif name.startswith("transformer_"):
        seen[f"F_{int(name[-1]) + 1}"] = out
      elif name == "text_resampler":
        seen["t_N"] = out
    return out

  with nn.intercept_methods(record):
    _encode(module, variables, image, tokens)
  t_n = seen["t_N"]
  np.testing.assert_array_equal(seen["h_0"], t_n)
  weight = {"none": 0.0, "residual": 1.0, "weighted": 0.5}[combine]
  for i in (1, 2):
    np.testing.assert_allclose(seen[f"h_{i}"], seen[f"F_{i}"] + weight * t_n,
                               rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(t_n))) > 0.1  # The combine options really differ.


def test_weighted_combine_at_one_equals_residual():
  image, _, tokens = _inputs()
  weighted = _network(fusion.JAR(num_latents=4, num_iterations=3))
  residual = _network(fusion.JAR(num_latents=4, num_iterations=3,
                                 iterative_combine="residual"))
  variables = nn.unbox(weighted.init(jax.random.PRNGKey(0), image, tokens, tokens))
  params = flax.core.unfreeze(variables)
  for i in (1, 2):
    del params["params"]["fusion"][f"combine_weight_{i}"]
  np.testing.assert_allclose(np.asarray(_encode(weighted, variables, image, tokens)),
                             np.asarray(_encode(residual, params, image, tokens)),
                             atol=1e-6)


def test_gated_mlp_option_gates_both_mlps_of_each_iteration():
  """mlp='gated_gelu': eq. 2's MLP and the Transformer layer's MLP are T5 v1.1's
  gated-GELU (wi_0, wi_1, wo); the default keeps ViT's (fc1, fc2)."""
  image, _, tokens = _inputs()
  for mlp, names in (("gelu", {"fc1", "fc2"}), ("gated_gelu", {"wi_0", "wi_1", "wo"})):
    module = _network(fusion.JAR(num_latents=4, num_iterations=2, mlp=mlp))
    params = module.init(jax.random.PRNGKey(0), image, tokens, tokens)["params"]["fusion"]
    for i in range(2):
      assert set(params[f"mlp_{i}"]) == names, (mlp, set(params[f"mlp_{i}"]))
      assert set(params[f"transformer_{i}"]["mlp"]) == names


def test_without_resampling_the_memory_is_the_text_tokens_with_their_mask():
  """resample_text=False: the L encoded text tokens are eq. 2's queries and the memory,
  padding masked (also inside the fusion's self-attention: changing what sits at a
  padded position changes nothing at the real ones); resample_image=False: the queries
  attend to all projected image tokens, and no resampler parameters exist."""
  image, _, tokens = _inputs()
  module = _network(fusion.JAR(num_iterations=2, resample_image=False,
                               resample_text=False, gate_init=1.0))
  variables = nn.unbox(module.init(jax.random.PRNGKey(0), image, tokens, tokens))
  assert not {"image_resampler", "text_resampler"} & set(variables["params"]["fusion"])
  memory, mask = module.apply(variables, image, tokens, method=module.encode)
  assert memory.shape == (2, 7, 32)
  np.testing.assert_array_equal(np.asarray(mask), np.asarray(tokens) != 0)

  # The padded positions' features enter only through the masked keys: perturb them
  # inside the fusion by giving the padding token a different embedding.
  params = flax.core.unfreeze(variables)
  params["params"]["token_embedder"]["embedding"] = (
      params["params"]["token_embedder"]["embedding"].at[0].add(3.0))
  other, _ = module.apply(params, image, tokens, method=module.encode)
  real = np.asarray(tokens) != 0
  np.testing.assert_allclose(np.asarray(memory)[real], np.asarray(other)[real], atol=1e-5)
  assert np.max(np.abs(np.asarray(memory)[~real] - np.asarray(other)[~real])) > 1e-3

  only_text = _network(fusion.JAR(num_latents=4, num_iterations=1, resample_text=False))
  params = only_text.init(jax.random.PRNGKey(0), image, tokens, tokens)["params"]
  assert "image_resampler" in params["fusion"] and "text_resampler" not in params["fusion"]


@pytest.mark.parametrize("field, value", [("gating", "sigmoid"), ("mlp", "relu")])
def test_bad_options_name_the_field(field, value):
  module = _network(fusion.JAR(**{field: value}))
  image, _, tokens = _inputs()
  with pytest.raises(ValueError, match=f"JAR.{field}"):
    module.init(jax.random.PRNGKey(0), image, tokens, tokens)


def test_concat_memory_is_image_tokens_plus_text():
  module = _network(fusion.Concat())
  image_a, image_b, tokens = _inputs()
  variables = module.init(jax.random.PRNGKey(0), image_a, tokens, tokens)
  memory, mask = module.apply(variables, image_a, tokens, method=module.encode)
  assert memory.shape == (2, 16 + 7, 32)  # (32/8)^2 image tokens + 7 text tokens.
  np.testing.assert_array_equal(np.asarray(mask[:, 16:]), np.asarray(tokens > 0))
  assert bool(jnp.all(mask[:, :16]))
  other = module.apply(variables, image_b, tokens, method=module.encode)[0]
  assert float(jnp.max(jnp.abs(memory - other))) > 1e-3


def test_remat_and_bfloat16_options_keep_the_function():
  image, _, tokens = _inputs()
  plain = _network(fusion.JAR(num_latents=4, num_iterations=1))
  variables = plain.init(jax.random.PRNGKey(0), image, tokens, tokens)
  expected = plain.apply(variables, image, tokens, tokens)
  remat = transformer.VLTransformer(vit.vit_config("test/8", 32, remat=True),
                                    t5.t5_config("test", vocab_size=128, remat=True),
                                    fusion.JAR(num_latents=4, num_iterations=1))
  np.testing.assert_allclose(np.asarray(remat.apply(variables, image, tokens, tokens)),
                             np.asarray(expected), atol=1e-5)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, image, tokens, tokens) ** 2)
  g_plain = jax.grad(loss(plain))(variables)
  g_remat = jax.grad(loss(remat))(variables)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4,
                                                                 rtol=1e-4),
                         nn.unbox(g_plain), nn.unbox(g_remat))
  bf16 = transformer.VLTransformer(vit.vit_config("test/8", 32, dtype="bfloat16"),
                                   t5.t5_config("test", vocab_size=128, dtype="bfloat16"),
                                   fusion.JAR(num_latents=4, num_iterations=1))
  logits = bf16.apply(variables, image, tokens, tokens)
  assert logits.dtype == jnp.float32  # The logits layer stays float32.
  assert float(jnp.max(jnp.abs(logits - expected))) < 0.25


def test_resampler_latents_attend_differently_at_init():
  """N(0, 1) latents (DETR's query init) give distinct queries from the first step; at
  scale 0.02 all latents would be the same near-uniform average of the inputs."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.normal(size=(2, 64, 128)), jnp.float32)
  spread = {}
  for std in (1.0, 0.02):
    module = fusion.LatentResampler(num_latents=16, num_heads=2, latent_init_std=std)
    out = module.apply(module.init(jax.random.PRNGKey(0), x), x)
    assert out.shape == (2, 16, 128)
    # How different the 16 outputs are, relative to their size.
    spread[std] = float(jnp.mean(jnp.std(out, axis=1)) / jnp.mean(jnp.abs(out)))
  assert spread[1.0] > 5 * spread[0.02], spread
