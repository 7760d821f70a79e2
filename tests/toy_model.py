"""A throwaway model and seqio Task with the real interfaces, for fast trainer tests.

`ToyModel` implements `models.BaseModel` (t5x's contract: `get_initial_variables` with
`params_axes`, `loss_fn` with clu metrics, `loss_fn_with_example_losses`,
FEATURE_CONVERTER_CLS) and greedy `predict_batch_with_aux` for inference evals. Its
params carry logical axis names (but one, the scalar gate), include a 1-D scale and the
gate (no weight decay), and it uses dropout, so sharding, decay masks and dropout-key
handling are all exercised. `ToyModel(vocab_size=...)` fits a real Task's vocabulary.
`register_toy_task()` registers 'toy_task': 64 deterministic image+text examples, no
tokenizer needed.
"""
from clu import metrics as clu_metrics
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf

from vlpretrain import models
from vlpretrain.data import features

VOCAB, EMBED, MLP = 32, 16, 32
IMAGE_SIZE, INPUT_LEN, TARGET_LEN = 8, 6, 5
TASK_FEATURE_LENGTHS = {"inputs": INPUT_LEN, "targets": TARGET_LEN}


def _p(init, axes):
  return nn.with_logical_partitioning(init, axes)


class ToyNet(nn.Module):
  dropout_rate: float = 0.1
  vocab_size: int = VOCAB

  @nn.compact
  def __call__(self, image, encoder_tokens, decoder_tokens, enable_dropout=False):
    embedding = self.param("embedding", _p(nn.initializers.normal(1.0), ("vocab", "embed")),
                           (self.vocab_size, EMBED))
    image_proj = nn.Dense(EMBED, kernel_init=_p(nn.initializers.lecun_normal(),
                                                ("image_embed", "embed")),
                          bias_init=_p(nn.initializers.zeros, ("embed",)), name="image")
    context = image_proj(jnp.mean(image, axis=(1, 2)))                     # (B, E)
    context += jnp.mean(embedding[encoder_tokens], axis=1)                 # (B, E)
    x = embedding[decoder_tokens] + context[:, None, :]                    # (B, L, E)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    scale = self.param("norm_scale", _p(nn.initializers.ones, ("embed",)), (EMBED,))
    gate = self.param("gate", nn.initializers.zeros, ())
    x = x * scale
    h = nn.Dense(MLP, use_bias=False, kernel_init=_p(nn.initializers.lecun_normal(),
                                                     ("embed", "mlp")), name="wi")(x)
    h = nn.Dropout(self.dropout_rate, deterministic=not enable_dropout)(nn.gelu(h))
    x = x + jnp.tanh(gate + 0.5) * nn.Dense(
        EMBED, use_bias=False, kernel_init=_p(nn.initializers.lecun_normal(),
                                              ("mlp", "embed")), name="wo")(h)
    logits = nn.Dense(self.vocab_size, use_bias=False, kernel_init=_p(
        nn.initializers.lecun_normal(), ("embed", "vocab")), name="logits")(x)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class ToyModel(models.BaseModel):
  FEATURE_CONVERTER_CLS = features.VLEncDecFeatureConverter

  def __init__(self, vocab_size: int = VOCAB, dropout_rate: float = 0.1):
    super().__init__()
    self.module = ToyNet(vocab_size=vocab_size, dropout_rate=dropout_rate)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    zeros = lambda k, d: jnp.zeros(input_shapes[k], d)
    boxed = self.module.init(rng, zeros("image", jnp.float32),
                             zeros("encoder_input_tokens", jnp.int32),
                             zeros("decoder_input_tokens", jnp.int32))
    return {"params": nn.meta.unbox(boxed["params"]),
            "params_axes": models.params_axes_of(boxed["params"])}

  def loss_fn_with_example_losses(self, params, batch, dropout_rng):
    """The mean token loss; metrics 'loss' and 'accuracy' (clu); per-example losses."""
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    logits = self.module.apply({"params": params}, batch["image"],
                               batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                               enable_dropout=dropout_rng is not None, rngs=rngs)
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    token_loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None],
                                      axis=-1)[..., 0]
    example = models.ExampleLosses(loss_sum=jnp.sum(token_loss * weights, axis=1),
                                   weight=jnp.sum(weights, axis=1))
    loss = jnp.sum(example.loss_sum) / jnp.maximum(jnp.sum(example.weight), 1.0)
    accuracy = clu_metrics.Accuracy.from_model_output(
        logits=logits, labels=targets.astype(jnp.int32), mask=weights > 0)
    return loss, {"loss": models.average(loss), "accuracy": accuracy}, example

  def loss_fn(self, params, batch, dropout_rng):
    return self.loss_fn_with_example_losses(params, batch, dropout_rng)[:2]

  def loss_denominator(self, batch):
    """The loss is the mean over the real target tokens."""
    return jnp.sum(batch["decoder_loss_weights"])

  def score_batch(self, params, batch, return_intermediates=False):
    raise NotImplementedError("The toy model does not score.")

  def predict_batch_with_aux(self, params, batch, rng=None):
    """Greedy decoding, the network re-run per position (no cache); stops at EOS (1).

    Returns (tokens (B, L), {'scores': log-probability of the tokens (B,)}).
    """
    del rng
    shape = batch["decoder_input_tokens"].shape
    tokens, inputs = jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.int32)
    scores, ended = jnp.zeros(shape[:1]), jnp.zeros(shape[:1], bool)
    for i in range(shape[1]):
      logits = self.module.apply({"params": params}, batch["image"],
                                 batch["encoder_input_tokens"], inputs)[:, i]
      token = jnp.where(ended, 0, jnp.argmax(logits, -1)).astype(jnp.int32)
      log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], -1)
      scores += jnp.where(ended, 0.0, log_prob[:, 0])
      tokens = tokens.at[:, i].set(token)
      ended |= token == 1
      if i + 1 < shape[1]:
        inputs = inputs.at[:, i + 1].set(token)  # Decoder input: BOS 0, then shifted.
    return tokens, {"scores": scores}


def _toy_examples(split, shuffle_files=False, seed=None):
  del shuffle_files, seed
  rng = np.random.RandomState(0 if split == "train" else 1)
  n = 64
  return tf.data.Dataset.from_tensor_slices({
      "image": rng.uniform(-1, 1, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
      "inputs": rng.randint(2, VOCAB, (n, INPUT_LEN)).astype(np.int32),
      "targets": rng.randint(2, VOCAB, (n, TARGET_LEN - 1)).astype(np.int32),
  })


def register_toy_task(name: str = "toy_task", task_id=None) -> str:
  """Registers (once) the toy task and returns its name; `task_id` adds that feature."""
  if name in seqio.TaskRegistry.names():
    return name
  vocab = seqio.PassThroughVocabulary(size=VOCAB, eos_id=1)
  add_id = [] if task_id is None else [seqio.map_over_dataset(
      lambda ex: dict(ex, task_id=tf.constant(task_id, tf.int32)))]
  id_feature = {} if task_id is None else {
      "task_id": seqio.ContinuousFeature(dtype=tf.int32, rank=0)}
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(_toy_examples, splits=["train", "validation"]),
      preprocessors=[seqio.preprocessors.append_eos_after_trim] + add_id,
      output_features={
          "inputs": seqio.Feature(vocab, add_eos=False),
          "targets": seqio.Feature(vocab, add_eos=True),
          "image": seqio.ContinuousFeature(dtype=tf.float32, rank=3),
          **id_feature,
      })
  return name


def register_toy_mixture(name: str = "toy_mixture") -> str:
  """Two toy tasks with task_id 0 and 1 (their order in `Mixture.tasks`), mixed 1:1."""
  if name not in seqio.MixtureRegistry.names():
    tasks = [register_toy_task(f"{name}_a", 0), register_toy_task(f"{name}_b", 1)]
    seqio.MixtureRegistry.add(name, [(t, 1.0) for t in tasks])
  return name


class EmaToyModel(ToyModel):
  """ToyModel whose train state also carries an exponential moving average of its
  params (a 'momentum' flax_mutables collection, as SIMLA's momentum encoder needs),
  updated in `loss_fn` with t5x's flax_mutables signature: ema <- decay * ema +
  (1 - decay) * params, the params the loss was computed with."""

  def __init__(self, decay: float = 0.5, **kw):
    super().__init__(**kw)
    self.decay = decay

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    variables = super().get_initial_variables(rng, input_shapes, input_types)
    return dict(variables, momentum=jax.tree.map(jnp.copy, variables["params"]))

  def _update(self, params, flax_mutables):
    ema = jax.tree.map(lambda e, p: self.decay * e + (1 - self.decay)
                       * jax.lax.stop_gradient(p), flax_mutables["momentum"], params)
    return {"momentum": ema}

  def loss_fn(self, params, batch, dropout_rng, flax_mutables=None):
    loss, metrics = super().loss_fn(params, batch, dropout_rng)
    return loss, (metrics, self._update(params, flax_mutables))

  def loss_fn_with_example_losses(self, params, batch, dropout_rng, flax_mutables=None):
    loss, metrics, example = super().loss_fn_with_example_losses(params, batch,
                                                                 dropout_rng)
    if flax_mutables is None:  # Called by ToyModel.loss_fn.
      return loss, metrics, example
    return loss, (metrics, self._update(params, flax_mutables)), example

  def eval_fn(self, params, batch, flax_mutables=None):
    return super().loss_fn(params, batch, None)
