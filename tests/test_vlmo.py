"""VLMo (seed 002): Multiway routing, the alignment losses, freezing, retrieval metrics."""
import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from vlpretrain import alignment_losses
from vlpretrain import evaluators
from vlpretrain import optimizers
from vlpretrain import vlmo_models
from vlpretrain.data import label_vocab
from vlpretrain.data import vocab
from vlpretrain.network import multiway
from vlpretrain.network import vlmo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE, LENGTH = 16, 10


def _model(**overrides):
  cfg = multiway.multiway_config("test", image_size=IMAGE, patch_size=8, **overrides)
  return vlmo_models.VLMoModel(vlmo.VLMo(cfg), vocab.shapes_vocabulary())


def _batch(batch_size=8, seed=0, duplicate=True):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(3, 200, size=(batch_size, LENGTH))
  lengths = rng.randint(3, LENGTH, size=batch_size)
  for i, n in enumerate(lengths):
    tokens[i, n] = 1
    tokens[i, n + 1:] = 0
  if duplicate:
    tokens[1] = tokens[0]  # Two images with the same caption.
  return {"image": jnp.asarray(rng.uniform(-1, 1, (batch_size, IMAGE, IMAGE, 3)),
                               jnp.float32),
          "text_tokens": jnp.asarray(tokens, jnp.int32)}


def _params(model, batch):
  shapes = {k: v.shape for k, v in batch.items()}
  return model.get_initial_variables(jax.random.PRNGKey(0), shapes)["params"]


def _perturb(params, pattern):
  """params + 1 on every leaf whose path matches `pattern`."""
  mask = optimizers.decay_mask(params, pattern)
  return jax.tree.map(lambda p, m: p + 1.0 if m else p, params, mask)


def _encode(model, params, batch, method):
  if method == "pair":
    return model.module.apply({"params": params}, batch["image"], batch["text_tokens"],
                              method=lambda m, i, t: m.encoder.encode_pair(i, t)[0])
  if method == "image":
    return model.module.apply({"params": params}, batch["image"],
                              method=lambda m, i: m.encoder.encode_image(i))
  return model.module.apply({"params": params}, batch["text_tokens"],
                            method=lambda m, t: m.encoder.encode_text(t)[0])


# ----------------------------------------------------------------- routing
def test_image_only_output_ignores_language_and_vl_experts():
  model, batch = _model(), _batch()
  params = _params(model, batch)
  base = _encode(model, params, batch, "image")
  same = _encode(model, _perturb(params, r"encoder/layer_\d+/(l_ffn|vl_ffn)/.*"), batch,
                 "image")
  np.testing.assert_array_equal(np.asarray(base), np.asarray(same))
  moved = _encode(model, _perturb(params, r"encoder/layer_0/v_ffn/.*"), batch, "image")
  assert not np.allclose(base, moved)


def test_text_only_output_ignores_vision_and_vl_experts():
  model, batch = _model(), _batch()
  params = _params(model, batch)
  base = _encode(model, params, batch, "text")
  same = _encode(model, _perturb(params, r"encoder/(layer_\d+/(v_ffn|vl_ffn)/.*|"
                                         r"patch_embedding/.*|image_.*)"), batch, "text")
  np.testing.assert_array_equal(np.asarray(base), np.asarray(same))
  assert not np.allclose(base, _encode(model, _perturb(params, r".*l_ffn/.*"), batch,
                                       "text"))


def test_pair_mode_routes_image_positions_to_the_vision_expert():
  """Without VL experts, the last layer sends image positions through V-FFN only: its
  L-FFN changes the text positions and leaves the image positions bit-identical."""
  model, batch = _model(num_vl_layers=0), _batch()
  params = _params(model, batch)
  num_image = (IMAGE // 8) ** 2 + 1
  base = np.asarray(_encode(model, params, batch, "pair"))
  out = np.asarray(_encode(model, _perturb(params, r"encoder/layer_1/l_ffn/.*"), batch,
                           "pair"))
  np.testing.assert_array_equal(base[:, :num_image], out[:, :num_image])
  assert not np.allclose(base[:, num_image:], out[:, num_image:])


def test_vl_experts_only_in_the_top_layers_and_the_standard_variant_shares_one_ffn():
  params = _params(_model(depth=4, num_vl_layers=2), _batch())
  layers = params["encoder"]
  assert [("vl_ffn" in layers[f"layer_{i}"]) for i in range(4)] == [False, False, True,
                                                                      True]
  std = _params(_model(multiway=False), _batch())["encoder"]["layer_0"]
  assert sorted(std) == ["attention", "ffn", "pre_attention_norm"]


def test_base_and_large_parameter_counts_are_the_papers():
  """Seed 002 sec. 4.1: 175M and 562M parameters (ours: T5's 32k vocabulary, the ITC
  projections and the ITM / MLM heads; tools/model_stats.py prints the breakdown)."""
  for size, paper in (("base", 175e6), ("large", 562e6)):
    cfg = multiway.multiway_config(size, image_size=224, patch_size=16,
                                   max_text_length=40, vocab_size=32128)
    shapes = jax.eval_shape(lambda: vlmo.VLMo(cfg).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 40), jnp.int32)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert abs(count / paper - 1) < 0.03, (size, count)


# ------------------------------------------------------------------ losses
def test_itc_loss_is_equation_4():
  rng = np.random.RandomState(1)
  image = rng.randn(5, 4)
  text = rng.randn(5, 4)
  image /= np.linalg.norm(image, axis=1, keepdims=True)
  text /= np.linalg.norm(text, axis=1, keepdims=True)
  per_example, _ = alignment_losses.itc_loss(jnp.asarray(image), jnp.asarray(text), 10.0)
  logits = 10.0 * image @ text.T
  log_softmax = lambda x: x - np.log(np.exp(x).sum(axis=1, keepdims=True))
  i2t = -np.diag(log_softmax(logits))
  t2i = -np.diag(log_softmax(logits.T))
  np.testing.assert_allclose(per_example, (i2t + t2i) / 2, rtol=1e-5)


def test_itc_with_identical_texts_targets_both_copies():
  image = jnp.eye(3)
  text = jnp.asarray([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
  same = alignment_losses.same_rows(jnp.asarray([[5, 1], [5, 1], [7, 1]]))
  per_example, _ = alignment_losses.itc_loss(image, text, 1.0, same)
  # Image 0's targets: texts 0 and 1, 1/2 each.
  logits = np.asarray(image @ text.T)
  ls = logits[0] - np.log(np.exp(logits[0]).sum())
  ls_t = logits[:, 0] - np.log(np.exp(logits[:, 0]).sum())
  expected = (-(ls[0] + ls[1]) / 2 - (ls_t[0] + ls_t[1]) / 2) / 2
  assert float(per_example[0]) == pytest.approx(expected, rel=1e-5)


def test_hard_negative_is_never_the_positive_nor_an_identical_text():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(6, 6) * 3)
  exclude = np.zeros((6, 6), bool)
  exclude[0, 1] = exclude[1, 0] = True  # Rows 0 and 1 have the same caption.
  for seed in range(200):
    neg = alignment_losses.hard_negatives(jax.random.PRNGKey(seed), logits,
                                          jnp.asarray(exclude))
    index = np.asarray(neg.index)
    assert np.all(index != np.arange(6)) and index[0] != 1 and index[1] != 0
    assert np.all(neg.valid)
  # Deterministic: the most similar admissible column.
  logits = jnp.asarray(np.where(np.eye(4), 9.0, 0.0) + np.diag([5.0, 5.0, 5.0], 1))
  neg = alignment_losses.hard_negatives(None, logits, jnp.zeros((4, 4), bool))
  assert list(np.asarray(neg.index)[:3]) == [1, 2, 3]
  # A row whose every other column is excluded has no valid negative.
  neg = alignment_losses.hard_negatives(None, jnp.zeros((2, 2)), jnp.ones((2, 2), bool))
  assert not np.any(neg.valid) and np.all(np.asarray(neg.index) != np.arange(2))


def test_bert_mask_rates_and_whole_words():
  rng = jax.random.PRNGKey(0)
  tokens = jnp.asarray(np.random.RandomState(0).randint(10, 100, size=(2000, 30)),
                       jnp.int32)
  word_starts = jnp.asarray(np.tile([True, False, False], 10))[None].repeat(2000, 0)
  candidates = jnp.ones(tokens.shape, bool).at[:, 27:].set(False)
  masked = alignment_losses.bert_mask(rng, tokens, candidates, word_starts, mask_id=5,
                                      random_low=10, random_high=100)
  chosen = np.asarray(masked.weights) > 0
  assert not chosen[:, 27:].any()
  assert chosen[:, :27].mean() == pytest.approx(0.15, abs=0.008)  # 3 sd of 18k words
  words = chosen[:, :27].reshape(2000, 9, 3)
  assert np.all(words.all(axis=2) == words.any(axis=2))  # Whole words or nothing.
  inputs = np.asarray(masked.inputs)[chosen]
  original = np.asarray(tokens)[chosen]
  assert (inputs == 5).mean() == pytest.approx(0.8, abs=0.03)
  assert (inputs == original).mean() == pytest.approx(0.1 + 0.1 / 90, abs=0.03)
  np.testing.assert_array_equal(np.asarray(masked.inputs)[~chosen],
                                np.asarray(tokens)[~chosen])


_SHARDED_WORKER = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from vlpretrain import alignment_losses
from vlpretrain import partitioning

rng = np.random.RandomState(0)
image = rng.randn(16, 8).astype(np.float32)
text = rng.randn(16, 8).astype(np.float32)
image /= np.linalg.norm(image, axis=1, keepdims=True)
text /= np.linalg.norm(text, axis=1, keepdims=True)
# Row i's most similar other text lives on another device: i + 8 (mod 16).
boost = np.zeros((16, 16), np.float32)
boost[np.arange(16), (np.arange(16) + 8) % 16] = 50.0

def loss_and_negatives(image, text, boost):
  per_example, logits = alignment_losses.itc_loss(image, text, 10.0)
  neg = alignment_losses.hard_negatives(None, logits + boost, jnp.zeros((16, 16), bool))
  return jnp.mean(per_example), neg.index

single = jax.jit(loss_and_negatives)(image, text, boost)
p = partitioning.PjitPartitioner(num_partitions=1)
sharding = p.batch_sharding()
with p.activate():
  sharded = jax.jit(loss_and_negatives, out_shardings=p.replicated)(
      jax.device_put(image, sharding), jax.device_put(text, sharding), boost)
print("RESULT " + json.dumps({"devices": jax.device_count(),
                              "single": float(single[0]), "sharded": float(sharded[0]),
                              "single_neg": np.asarray(single[1]).tolist(),
                              "sharded_neg": np.asarray(sharded[1]).tolist()}))
"""


def test_itc_and_hard_negatives_over_8_devices_equal_the_global_batch(tmp_path):
  """The batch sharded over 8 devices (2 examples each): the ITC loss is the
  single-device loss of the global batch, and a row's hard negative comes from another
  device's shard."""
  script = tmp_path / "worker.py"
  script.write_text(_SHARDED_WORKER)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  result = json.loads(lines[-1][len("RESULT "):])
  assert result["devices"] == 8
  assert result["sharded"] == pytest.approx(result["single"], rel=1e-5)
  expected = [(i + 8) % 16 for i in range(16)]
  assert result["single_neg"] == expected and result["sharded_neg"] == expected


# ------------------------------------------------------------- the models
def test_vlmo_loss_logs_each_objective_and_its_gradient_is_finite():
  model, batch = _model(), _batch()
  params = _params(model, batch)
  loss, metrics, example = model.loss_fn_with_example_losses(params, batch,
                                                            jax.random.PRNGKey(1))
  values = {k: float(v.compute()) for k, v in metrics.items()}
  assert float(loss) == pytest.approx(values["itc_loss"] + values["itm_loss"]
                                      + values["mlm_loss"], rel=1e-5)
  assert example.loss_sum.shape == (8,)
  grads = jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  only_itc = _model()
  only_itc.objectives = ("itc",)
  loss_itc, metrics, _ = only_itc.loss_fn_with_example_losses(params, batch, None)
  assert set(metrics) >= {"itc_loss"} and "itm_loss" not in metrics
  assert float(loss_itc) == pytest.approx(float(metrics["itc_loss"].compute()))


def test_frozen_params_are_bit_identical_after_a_text_stage_step():
  """Seed 002 sec. 3.4's text stage: self-attention and V-FFN frozen, L-FFN trained."""
  model, batch = _model(), _batch()
  params = _params(model, batch)
  frozen = r"encoder/layer_\d+/(attention|pre_attention_norm|v_ffn)/.*"
  opt = optimizers.adamw(1e-2, weight_decay=0.1, frozen_pattern=frozen)
  state = opt.init(params)
  grads = jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(params)
  updates, _ = opt.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  mask = flax.traverse_util.flatten_dict(optimizers.decay_mask(params, frozen), sep="/")
  flat_old = flax.traverse_util.flatten_dict(params, sep="/")
  flat_new = flax.traverse_util.flatten_dict(new, sep="/")
  assert any(mask.values())
  for path, is_frozen in mask.items():
    if is_frozen:
      np.testing.assert_array_equal(flat_old[path], flat_new[path], err_msg=path)
  assert not np.array_equal(flat_old["encoder/layer_0/l_ffn/mlp/fc1/kernel"],
                            flat_new["encoder/layer_0/l_ffn/mlp/fc1/kernel"])


def test_classifier_predicts_label_ids_that_decode_to_label_text():
  labels = label_vocab.LabelVocabulary(("red", "green", "blue"))
  cfg = multiway.multiway_config("test", image_size=IMAGE, patch_size=8)
  model = vlmo_models.VLMoClassifierModel(vlmo.VLMo(cfg), vocab.shapes_vocabulary(),
                                          labels)
  batch = dict(_batch(4), labels=jnp.asarray([0, 2, -1, 1], jnp.int32))
  params = _params(model, {k: v for k, v in batch.items() if k != "labels"})
  loss, metrics, example = model.loss_fn_with_example_losses(params, batch, None)
  assert float(example.weight.sum()) == 3.0 and float(example.loss_sum[2]) == 0.0
  assert float(loss) == pytest.approx(float(example.loss_sum.sum()) / 3, rel=1e-5)
  ids, aux = model.predict_batch_with_aux(params, batch)
  assert ids.shape == (4, 1) and aux["scores"].shape == (4,)
  assert labels.decode(np.asarray(ids[0]).tolist()) in ("red", "green", "blue")


def test_label_vocabulary_round_trip_in_python_and_tf():
  labels = label_vocab.LabelVocabulary(("yes", "no", "red"))
  assert labels.encode("red") == [2] and labels.encode("teal") == [-1]
  assert labels.decode([1]) == "no" and labels.decode([-1]) == ""
  assert labels.encode_tf(tf.constant("no")).numpy().tolist() == [1]
  assert labels.decode_tf(tf.constant([2])).numpy() == b"red"
  with pytest.raises(ValueError, match="distinct"):
    label_vocab.LabelVocabulary(("a", "a"))


def test_word_starts_of_the_shapes_vocabulary():
  v = vocab.shapes_vocabulary()
  starts = label_vocab.word_starts(v, 1024)
  for word in ("red", "circle", "triangle"):
    ids = v.encode(word)
    assert starts[ids[0]] and not any(starts[i] for i in ids[1:])


# ----------------------------------------------------------------- retrieval
def test_recall_at_k_against_a_hand_computed_similarity_matrix():
  # 3 images x 4 texts; image 0 -> text 0, image 1 -> text 1, image 2 -> texts 2 and 3.
  similarity = np.array([[0.9, 0.8, 0.1, 0.0],    # image 0: rank of text 0 is 1
                         [0.7, 0.2, 0.3, 0.1],    # image 1: text 1 ranks 3rd
                         [0.1, 0.5, 0.2, 0.4]])   # image 2: best positive (3) ranks 2nd
  positives = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], bool)
  out = evaluators.recall_at_k(similarity, positives, ks=(1, 2, 3))
  assert out["i2t_recall@1"] == pytest.approx(100 / 3)
  assert out["i2t_recall@2"] == pytest.approx(200 / 3)
  assert out["i2t_recall@3"] == pytest.approx(100.0)
  # Texts as queries: text 0 -> image 0 first (hit); text 1 -> image 0, 2, 1 (rank 3);
  # text 2 -> image 1 (0.3) then image 2 (rank 2); text 3 -> image 2 first (hit).
  assert out["t2i_recall@1"] == pytest.approx(50.0)
  assert out["t2i_recall@2"] == pytest.approx(75.0)
  assert out["t2i_recall@3"] == pytest.approx(100.0)


def test_chance_recall():
  positives = np.eye(10, dtype=bool)
  out = evaluators.chance_recall_at_k(positives, ks=(1, 5))
  assert out["chance_i2t_recall@1"] == pytest.approx(10.0)
  assert out["chance_t2i_recall@5"] == pytest.approx(50.0)
  # One text with two of four images: 1 - C(2,1)/C(4,1) = 1/2 at K=1.
  positives = np.array([[1], [1], [0], [0]], bool)
  positives = np.concatenate([positives, ~positives], axis=1)
  assert evaluators.chance_recall_at_k(positives, ks=(1,))["chance_t2i_recall@1"] == \
      pytest.approx(50.0)
