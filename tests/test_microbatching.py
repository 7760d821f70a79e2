"""Gradient accumulation: vlpretrain/microbatching.py and train_script.train's
`num_microbatches` (t5x's name)."""
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

import toy_model
from vlpretrain import dynamic_mixture
from vlpretrain import errors
from vlpretrain import losses
from vlpretrain import microbatching
from vlpretrain import models
from vlpretrain import optimizers
from vlpretrain import partitioning
from vlpretrain import train as train_lib
from vlpretrain import utils
from vlpretrain.network import fusion
from vlpretrain.network import t5
from vlpretrain.network import transformer
from vlpretrain.network import vit


def _loss_and_aux(model):
  """The trainer's shape of loss function: (loss, (metrics, additive sums, mutables))."""
  def loss_and_aux(params, batch, rng, mutables):
    loss, metrics, example = model.loss_fn_with_example_losses(params, batch, rng)
    return loss, (metrics, (example.loss_sum, example.weight), mutables)
  return loss_and_aux


def _sums(aux):
  """Per-example sums come back per microbatch position; compare their totals."""
  return [float(jnp.sum(x)) for x in aux[1]]


def _toy_batch(batch_size=8, seed=0):
  """Targets of different lengths (1 to 5 real tokens), so microbatches hold different
  numbers of tokens and an unweighted combination is not the full batch's mean."""
  rng = np.random.RandomState(seed)
  lengths = rng.randint(1, toy_model.TARGET_LEN + 1, batch_size)
  weights = (np.arange(toy_model.TARGET_LEN)[None] < lengths[:, None]).astype(np.float32)
  targets = rng.randint(2, toy_model.VOCAB, (batch_size, toy_model.TARGET_LEN)) * weights
  return {
      "image": jnp.asarray(rng.uniform(-1, 1, (batch_size, 8, 8, 3)), jnp.float32),
      "encoder_input_tokens": jnp.asarray(
          rng.randint(2, toy_model.VOCAB, (batch_size, toy_model.INPUT_LEN)), jnp.int32),
      "decoder_input_tokens": jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
                                          jnp.int32),
      "decoder_target_tokens": jnp.asarray(targets, jnp.int32),
      "decoder_loss_weights": jnp.asarray(weights),
  }


def _init(model, batch):
  return model.get_initial_variables(
      jax.random.PRNGKey(0), {k: v.shape for k, v in batch.items()})["params"]


def _assert_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def test_four_microbatches_give_the_full_batch_loss_gradient_metrics_and_sums():
  model = toy_model.ToyModel(dropout_rate=0.0)
  batch = _toy_batch()
  params = _init(model, batch)
  fn = _loss_and_aux(model)
  (loss, aux), grads = jax.value_and_grad(fn, has_aux=True)(params, batch, None, None)
  accumulate = microbatching.value_and_grad(fn, model.loss_denominator, 4)
  (m_loss, m_aux), m_grads = jax.jit(accumulate)(params, batch, None, None)
  np.testing.assert_allclose(float(m_loss), float(loss), rtol=1e-6)
  _assert_close(m_grads, grads, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(_sums(m_aux), _sums(aux), rtol=1e-6)
  # clu metrics merge over microbatches: token accuracy is exactly the full batch's.
  assert float(m_aux[0]["accuracy"].compute()) == pytest.approx(
      float(aux[0]["accuracy"].compute()), abs=1e-7)
  # Summing the microbatches' mean losses (no denominator) is not the full gradient.
  naive = microbatching.value_and_grad(fn, lambda b: None, 4)
  (_, _), naive_grads = jax.jit(naive)(params, batch, None, None)
  assert not np.allclose(np.asarray(naive_grads["wi"]["kernel"]) / 4,
                         np.asarray(grads["wi"]["kernel"]), rtol=1e-3)


def _encoder_decoder(factor):
  network = transformer.VLTransformer(vit.vit_config("test/8", 32), t5.t5_config("test"),
                                      fusion.JAR(num_latents=4, num_iterations=1))
  vocab = seqio.PassThroughVocabulary(size=200, eos_id=1)
  return models.VLEncoderDecoderModel(network, vocab, vocab,
                                      loss_normalizing_factor=factor)


def _encoder_decoder_batch():
  rng = np.random.RandomState(1)
  targets = np.array([[5, 6, 7, 1, 0], [9, 1, 0, 0, 0], [4, 1, 0, 0, 0],
                      [3, 8, 2, 6, 1]], np.int32)
  return {
      "image": jnp.asarray(rng.uniform(-1, 1, (4, 32, 32, 3)), jnp.float32),
      "encoder_input_tokens": jnp.asarray(rng.randint(2, 200, (4, 4)), jnp.int32),
      "decoder_input_tokens": jnp.asarray(np.pad(targets, ((0, 0), (1, 0)))[:, :-1]),
      "decoder_target_tokens": jnp.asarray(targets),
      "decoder_loss_weights": jnp.asarray(targets > 0, jnp.float32),
  }


@pytest.mark.parametrize("factor", [None, 2.0, "NUM_REAL_TARGET_TOKENS",
                                    "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"])
def test_encoder_decoder_accumulates_exactly_for_every_normalizing_factor(factor):
  """Microbatches {0, 2} and {1, 3} have 4 + 2 and 2 + 5 real target tokens."""
  model = _encoder_decoder(factor)
  batch = _encoder_decoder_batch()
  params = _init(model, batch)
  fn = _loss_and_aux(model)
  (loss, _), grads = jax.value_and_grad(fn, has_aux=True)(params, batch, None, None)
  accumulate = microbatching.value_and_grad(fn, model.loss_denominator, 2)
  (m_loss, _), m_grads = jax.jit(accumulate)(params, batch, None, None)
  np.testing.assert_allclose(float(m_loss), float(loss), rtol=1e-5)
  _assert_close(m_grads, grads, rtol=2e-4, atol=1e-6)


def test_loss_denominators_by_hand():
  batch = _encoder_decoder_batch()  # 4, 2, 2 and 5 real target tokens; length 5.
  assert losses.loss_denominator(None, batch) is None
  assert losses.loss_denominator(2.0, batch) is None
  assert float(losses.loss_denominator("NUM_REAL_TARGET_TOKENS", batch)) == 13
  assert float(losses.loss_denominator("NUM_TOTAL_TARGET_TOKENS", batch)) == 20
  assert float(losses.loss_denominator("AVERAGE_PER_SEQUENCE", batch)) == 4
  empty = dict(batch, decoder_loss_weights=jnp.zeros((4, 5)))
  assert float(losses.loss_denominator("NUM_REAL_TARGET_TOKENS", empty)) == 0


def test_microbatch_counts_that_do_not_divide_name_the_binding():
  assert microbatching.check(None, 16, 2) == 1
  assert microbatching.check(4, 16, 2) == 4
  with pytest.raises(errors.ConfigError, match="num_microbatches=3 .* 16"):
    microbatching.check(3, 16, 1)
  with pytest.raises(errors.ConfigError, match="multiple of 8"):
    microbatching.check(4, 16, 8)


def test_vlmo_refuses_microbatches():
  from vlpretrain import vlmo_models  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match="negatives"):
    vlmo_models.VLMoModel.loss_denominator(None, {})


# -------------------------------------------------------------- in the trainer


def _train(model_dir, record, **train_kw):
  """3 steps of the toy model (no dropout) on a 3-task dynamic mixture, batch 16."""
  name = "microbatch_toy"
  if name not in seqio.MixtureRegistry.names():
    dynamic_mixture.register_dynamic_mixture(
        name, [toy_model.register_toy_task(f"microbatch_toy_{t}") for t in "abc"])
  lr = utils.create_learning_rate_scheduler(base_learning_rate=1e-2, warmup_steps=2,
                                            decay_steps=30)
  original = dynamic_mixture.DynamicBatches.record

  def record_and_apply(self, sums, counts):
    record.append((np.asarray(sums), np.asarray(counts)))
    return original(self, sums, counts)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(dynamic_mixture.DynamicBatches, "record", record_and_apply)
    return train_lib.train(
        model=toy_model.ToyModel(dropout_rate=0.0),
        train_dataset_cfg=utils.DatasetConfig(name, toy_model.TASK_FEATURE_LENGTHS,
                                              "train", 16, True, 0),
        partitioner=partitioning.PjitPartitioner(), model_dir=str(model_dir),
        total_steps=3, log_period=1, optimizer=optimizers.adamw(lr),
        learning_rate_fn=lr,
        checkpoint_cfg=utils.CheckpointConfig(
            save=utils.SaveCheckpointConfig(period=10, save_dataset=False)),
        make_sampler=functools.partial(dynamic_mixture.make_sampler, window=3,
                                       min_per_task=1), **train_kw)


def test_trainer_with_four_microbatches_equals_one_batch(clean_gin, tmp_path, caplog):
  """Same params after 3 steps, and the dynamic sampler gets the same per-task loss
  sums and token counts (so it draws the same batches)."""
  full_record, micro_record = [], []
  _, full = _train(tmp_path / "full", full_record)
  with caplog.at_level(logging.INFO):
    _, micro = _train(tmp_path / "micro", micro_record, num_microbatches=4)
  assert "4 microbatches of 4 examples" in caplog.text
  _assert_close(micro["params"], full["params"], rtol=1e-5, atol=1e-6)
  assert len(micro_record) == len(full_record) == 3
  for (m_sums, m_counts), (sums, counts) in zip(micro_record, full_record):
    np.testing.assert_allclose(m_sums, sums, rtol=1e-5)
    np.testing.assert_array_equal(m_counts, counts)
  assert full_record[0][0].shape == (3,) and np.all(full_record[0][1] > 0)
