"""The model contract, t5x's `BaseModel`, and the image + text -> text family.

vlpretrain's trainer, evaluators and exporter know a model only through `BaseModel`,
whose methods have the names, signatures and semantics of t5x's (t5x/models.py), so
the same objects run under t5x's own trainer (`python -m t5x.train`; README,
docs/running_under_t5x.md). t5x is not imported: a t5x optimizer, decoding function or
`DecoderParams` is accepted where t5x would pass one.

* `loss_fn(params, batch, dropout_rng) -> (loss, metrics)`: the loss is summed over
  the target tokens and divided by `loss_normalizing_factor` when one is given (t5x's
  convention, `vlpretrain.losses`); `metrics` is a mapping of clu `Metric`s, which
  callers merge over steps and microbatches (`a.merge(b)`) and `compute()`.
* `loss_fn_with_example_losses`: the same loss and metrics, plus `ExampleLosses` (each
  example's summed token loss and target weight), one forward pass. vlpretrain's
  trainer calls it when training on a dynamic mixture: summed by `task_id` these are
  the per-task losses that dynamic difficulty sampling feeds on (seed 001 sec. 3.1).
  Optional: a model without it trains on everything but dynamic mixtures.
* `export_functions(task_feature_lengths)` (vlpretrain's, optional): what
  `vlpretrain export` serves, name -> `ExportFunction` (inputs among 'image' and
  'tokens', a function of (params, *inputs), the kind of output).
* `eval_fn`, `predict_batch(_with_aux)`, `score_batch`, `get_initial_variables` (its
  `params_axes` collection gives every param's logical axis names, as t5x's
  partitioner reads them), `FEATURE_CONVERTER_CLS`, and `optimizer_def` (read by t5x's
  trainer; vlpretrain's takes its optimizer from `train_script.train.optimizer`, and
  from `optimizer_def` when that is unset).
"""
import abc
import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple

from clu import metrics as clu_metrics
import flax
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import seqio

from vlpretrain import decoding
from vlpretrain import errors
from vlpretrain import losses
from vlpretrain.data import features
from vlpretrain.network import t5

MetricsMap = Mapping[str, clu_metrics.Metric]


@flax.struct.dataclass
class Sum(clu_metrics.Metric):
  """A sum over steps (clu has Average and Accuracy, but no plain sum)."""
  total: jnp.ndarray

  def merge(self, other: "Sum") -> "Sum":
    return type(self)(total=self.total + other.total)

  def compute(self) -> jnp.ndarray:
    return self.total


def average(total, count=1) -> clu_metrics.Average:
  """clu's Average of `total` over `count` (count 1: the per-step value's mean)."""
  return clu_metrics.Average(total=jnp.asarray(total, jnp.float32),
                             count=jnp.asarray(count, jnp.float32))


class ExampleLosses(NamedTuple):
  """Per example: the summed (unnormalised) token losses and the summed loss weights."""
  loss_sum: jnp.ndarray  # (B,)
  weight: jnp.ndarray    # (B,)


@dataclasses.dataclass(frozen=True)
class ExportFunction:
  """One function of a serving artifact: `fn(params, *inputs)` on a batch, where each
  input is 'image' (float32 [B, S, S, 3] in [-1, 1]) or 'tokens' (int32 [B, L]: ids +
  EOS, 0-padded); `output` is 'tokens' (generated ids), 'label' (class ids, int32 [B]),
  'embedding' (float32 [B, D]) or 'score' (float32 [B])."""
  inputs: Tuple[str, ...]
  fn: Callable[..., jnp.ndarray]
  output: str


def require_lengths(task_feature_lengths, names, example) -> None:
  """Raises unless TASK_FEATURE_LENGTHS gives every one of `names`."""
  if not task_feature_lengths or not set(names) <= set(task_feature_lengths):
    raise errors.ConfigError(f"TASK_FEATURE_LENGTHS must give {sorted(names)}, e.g. "
                             f"--gin.TASK_FEATURE_LENGTHS=\"{example}\".")


@dataclasses.dataclass(frozen=True)
class DecoderParams:
  """t5x's `DecoderParams`: the defaults of `predict_batch_with_aux`."""
  return_all_decodes: bool = False
  num_decodes: int = 1


def params_axes_of(boxed_params) -> Any:
  """The `params_axes` collection of boxed params (`nn.LogicallyPartitioned`): each
  param's logical axis names as `<name>_axes: AxisMetadata(names)`, flax's and t5x's
  layout. An unboxed param gets no entry (t5x then reports it by name)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(boxed_params),
                                         is_leaf=lambda _, v: isinstance(
                                             v, nn.meta.AxisMetadata))
  axes = {}
  for path, value in flat.items():
    if isinstance(value, nn.LogicallyPartitioned):
      axes[path[:-1] + (f"{path[-1]}_axes",)] = flax_partitioning.AxisMetadata(
          names=tuple(value.names))
  return flax.traverse_util.unflatten_dict(axes)


class BaseModel(abc.ABC):
  """t5x's BaseModel contract; see the module docstring."""

  FEATURE_CONVERTER_CLS: Callable[..., seqio.FeatureConverter]
  # How `vlpretrain eval` and the trainer's inference evals score it (evaluators.py):
  # 'generation', 'classification' or 'retrieval'.
  EVALUATOR = "generation"

  def __init__(self, optimizer_def: Any = None):
    self.optimizer_def = optimizer_def

  @abc.abstractmethod
  def loss_fn(self, params, batch: Mapping[str, jnp.ndarray],
              dropout_rng: Optional[jax.Array]) -> Tuple[jnp.ndarray, MetricsMap]:
    """(loss, metrics) of a batch; dropout is on iff `dropout_rng` is given."""

  def loss_fn_with_example_losses(
      self, params, batch: Mapping[str, jnp.ndarray], dropout_rng: Optional[jax.Array]
  ) -> Tuple[jnp.ndarray, MetricsMap, ExampleLosses]:
    """`loss_fn` and each example's loss and weight (the dynamic sampler's signal)."""
    raise NotImplementedError(
        f"{type(self).__name__} has no loss_fn_with_example_losses, which dynamic "
        "mixtures need for their per-task losses: train it on a Task or a seqio "
        "Mixture instead.")

  def loss_denominator(self, batch: Mapping[str, jnp.ndarray]) -> Optional[jnp.ndarray]:
    """What `loss_fn`'s loss is divided by on this batch, for gradient accumulation.

    vlpretrain's, optional: the trainer's `num_microbatches` weights microbatch m by
    d_m / sum(d) so the accumulated gradient is the full batch's (microbatching.py).
    Return the batch-dependent count the loss is a mean over, or None when the loss is
    a sum over examples (or divided by a constant). A loss that is not a sum over
    examples over a denominator cannot be accumulated: leave this unimplemented.
    """
    raise errors.ConfigError(
        f"{type(self).__name__} does not define loss_denominator, so its loss cannot "
        "be accumulated over microbatches: unset train_script.train.num_microbatches.")

  def eval_fn(self, params, batch: Mapping[str, jnp.ndarray]
              ) -> Tuple[jnp.ndarray, MetricsMap]:
    """The loss and metrics without dropout (t5x's default eval_fn)."""
    return self.loss_fn(params, batch, dropout_rng=None)

  def predict_batch(self, params, batch: Mapping[str, jnp.ndarray],
                    rng: Optional[jax.Array] = None) -> jnp.ndarray:
    return self.predict_batch_with_aux(params, batch, rng=rng)[0]

  @abc.abstractmethod
  def predict_batch_with_aux(self, params, batch: Mapping[str, jnp.ndarray],
                             rng: Optional[jax.Array] = None
                             ) -> Tuple[jnp.ndarray, Mapping[str, jnp.ndarray]]:
    """(predictions, aux): the model's outputs for the batch."""

  @abc.abstractmethod
  def score_batch(self, params, batch: Mapping[str, jnp.ndarray],
                  return_intermediates: bool = False):
    """Per-example scores (e.g. log-likelihoods of the targets)."""

  @abc.abstractmethod
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Any],
                            input_types: Optional[Mapping[str, Any]] = None):
    """{'params': ..., 'params_axes': ..., other collections} for these input shapes."""


class VLEncoderDecoderModel(BaseModel):
  """Image + text -> text encoder-decoder (t5x's `EncoderDecoderModel` with an image).

  Args:
    module: the network (`transformer.VLTransformer`). If its `t5_config.vocab_size` is
      None it is set to the output vocabulary's size padded to a multiple of 128.
    input_vocabulary, output_vocabulary: seqio vocabularies (shared embedding: they
      must have the same size).
    optimizer_def: the optimizer t5x's trainer uses (e.g. t5x's
      `optimizers.OptaxWrapper` around `optimizers.adamw()`); vlpretrain's trainer uses
      it when `train_script.train.optimizer` is unset.
    decode_fn: a t5x-style decoding function: `decoding.temperature_sample` (greedy at
      its defaults), `decoding.beam_search`, or t5x's own.
    feature_converter_cls: replaces `FEATURE_CONVERTER_CLS` (t5x's argument).
    label_smoothing, z_loss: loss options (seed 001, appendix B: smoothing 0.1).
    loss_normalizing_factor: t5x's; None sums the token losses, vlpretrain's gins bind
      'NUM_REAL_TARGET_TOKENS' (the mean token loss); see `vlpretrain.losses`.
    default_decoder_params: a `DecoderParams` (t5x's or this module's).
  """
  FEATURE_CONVERTER_CLS = features.VLEncDecFeatureConverter

  def __init__(self, module: nn.Module, input_vocabulary: seqio.Vocabulary,
               output_vocabulary: seqio.Vocabulary, optimizer_def: Any = None,
               decode_fn: Callable = decoding.temperature_sample,
               feature_converter_cls: Optional[Callable[..., Any]] = None,
               label_smoothing: float = 0.0, z_loss: float = 0.0,
               loss_normalizing_factor: Any = None,
               default_decoder_params: Optional[Any] = None):
    super().__init__(optimizer_def=optimizer_def)
    if module.t5_config.vocab_size is None:
      if input_vocabulary.vocab_size != output_vocabulary.vocab_size:
        raise errors.ConfigError(
            "Input and output vocabularies differ in size "
            f"({input_vocabulary.vocab_size} vs {output_vocabulary.vocab_size}) but "
            "share one embedding: use the same vocabulary for both.")
      vocab_size = t5.padded_vocab_size(output_vocabulary.vocab_size)
      module = module.clone(
          t5_config=dataclasses.replace(module.t5_config, vocab_size=vocab_size))
    if feature_converter_cls is not None:
      self.FEATURE_CONVERTER_CLS = feature_converter_cls  # pylint: disable=invalid-name
    losses.check_normalizing_factor(loss_normalizing_factor)
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self._decode_fn = decode_fn
    self._label_smoothing = label_smoothing
    self._z_loss = z_loss
    self._loss_normalizing_factor = loss_normalizing_factor
    self._default_decoder_params = default_decoder_params or DecoderParams()

  @property
  def decode_fn(self):
    return self._decode_fn

  # --------------------------------------------------------------------- init
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Any],
                            input_types: Optional[Mapping[str, Any]] = None):
    """{'params': arrays, 'params_axes': logical axis names} (t5x's layout).

    `input_shapes` needs 'image' (B, H, W, 3), 'encoder_input_tokens' (B, Li) and
    'decoder_input_tokens' (B, Lt).
    """
    missing = {"image", "encoder_input_tokens", "decoder_input_tokens"} - set(input_shapes)
    if missing:
      raise errors.ConfigError(
          f"get_initial_variables: input_shapes lacks {sorted(missing)}.")
    self._check_vocabulary()
    input_types = input_types or {}
    dummy = lambda name, default: jnp.zeros(input_shapes[name],
                                            input_types.get(name, default))
    params_rng, dropout_rng = jax.random.split(rng)
    boxed = self.module.init(
        {"params": params_rng, "dropout": dropout_rng}, dummy("image", jnp.float32),
        dummy("encoder_input_tokens", jnp.int32), dummy("decoder_input_tokens", jnp.int32),
        enable_dropout=False)
    variables = dict(nn.meta.unbox(boxed))
    variables["params_axes"] = params_axes_of(boxed["params"])
    return variables

  def _check_vocabulary(self):
    needed = self.output_vocabulary.vocab_size
    if self.module.t5_config.vocab_size < needed:
      raise errors.ConfigError(
          f"t5_config.vocab_size={self.module.t5_config.vocab_size} is smaller than the "
          f"vocabulary ({needed} ids): fix the gin binding t5.t5_config.vocab_size or "
          "leave it unset to derive it.")

  # --------------------------------------------------------------------- loss
  def _compute_logits(self, params, batch, dropout_rng=None):
    rngs = None if dropout_rng is None else {"dropout": dropout_rng}
    return self.module.apply(
        {"params": params}, batch["image"], batch["encoder_input_tokens"],
        batch["decoder_input_tokens"], enable_dropout=dropout_rng is not None, rngs=rngs)

  def loss_fn_with_example_losses(self, params, batch, dropout_rng):
    """t5x's weighted cross-entropy (label smoothing, z-loss), normalised by
    `loss_normalizing_factor`; metrics as `_compute_metrics`; per-example losses."""
    logits = self._compute_logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    factor, weights = losses.normalizing_factor_and_weights(
        self._loss_normalizing_factor, batch)
    token_loss, token_z = losses.cross_entropy_with_logits(
        logits, targets, self._label_smoothing, self._z_loss)
    # Summed per example, then over the batch (the order vlpretrain always summed in).
    loss = jnp.sum(jnp.sum(token_loss * weights, axis=1))
    z_loss = jnp.sum(token_z * weights)
    if factor is not None:
      loss, z_loss = loss / factor, z_loss / factor
    _, raw_weights = losses.normalizing_factor_and_weights(None, batch)
    example = ExampleLosses(loss_sum=jnp.sum(token_loss * raw_weights, axis=1),
                            weight=jnp.sum(raw_weights, axis=1))
    metrics = self._compute_metrics(logits, targets, raw_weights, loss, z_loss, example)
    return loss, metrics, example

  def loss_fn(self, params, batch, dropout_rng):
    loss, metrics, _ = self.loss_fn_with_example_losses(params, batch, dropout_rng)
    return loss, metrics

  def loss_denominator(self, batch):
    """The special `loss_normalizing_factor`'s count on this batch (unclipped), None
    for a sum or a fixed number."""
    return losses.loss_denominator(self._loss_normalizing_factor, batch)

  def _compute_metrics(self, logits, targets, weights, loss, z_loss,
                       example: ExampleLosses) -> MetricsMap:
    """t5x's names where the concept is t5x's (compute_base_metrics)."""
    num_tokens = jnp.sum(weights)
    return {
        "loss": average(loss),
        "cross_ent_loss": average(loss - z_loss),
        "z_loss": average(z_loss),
        "accuracy": clu_metrics.Accuracy.from_model_output(
            logits=logits, labels=targets.astype(jnp.int32), mask=weights > 0),
        "loss_per_nonpadding_target_token": average(jnp.sum(example.loss_sum),
                                                    num_tokens),
        "num_tokens": Sum(total=num_tokens),
        "num_examples": Sum(total=jnp.asarray(targets.shape[0], jnp.float32)),
    }

  # ------------------------------------------------------------------- export
  def export_functions(self, task_feature_lengths) -> dict:
    """'generate': (image, prompt tokens of length inputs) -> greedy ids (targets)."""
    require_lengths(task_feature_lengths, ("inputs", "targets"),
                    "{'inputs': 24, 'targets': 4}")
    target_len = task_feature_lengths["targets"]

    def generate(params, image, tokens):
      batch = {"image": image, "encoder_input_tokens": tokens,
               "decoder_input_tokens": jnp.zeros((tokens.shape[0], target_len),
                                                 jnp.int32)}
      return self.predict_batch(params, batch)
    return {"generate": ExportFunction(("image", "tokens"), generate, "tokens")}

  # ------------------------------------------------------------------ scoring
  def score_batch(self, params, batch: Mapping[str, jnp.ndarray],
                  return_intermediates: bool = False):
    """Log-likelihood of each example's targets (B,), without smoothing or z-loss.

    With `return_intermediates`, (scores, {'decoder': {'token_scores': (per-token
    scores,), 'target_tokens': (...,), 'loss_weights': (...,)}}), t5x's layout.
    """
    logits = self._compute_logits(params, batch)
    targets = batch["decoder_target_tokens"]
    _, weights = losses.normalizing_factor_and_weights(None, batch)
    token_scores = -losses.cross_entropy_with_logits(logits, targets)[0] * weights
    scores = jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      return scores, {"decoder": {"token_scores": (token_scores,),
                                  "target_tokens": (targets,),
                                  "loss_weights": (weights,)}}
    return scores

  # ----------------------------------------------------------------- decoding
  @property
  def _cache_offset(self) -> int:
    """The cache's batch axis: 1 when the decoder scans its layers (t5x's)."""
    config = getattr(self.module, "t5_config", None)
    return 1 if getattr(config, "scan_layers", False) else 0

  def _initial_cache(self, params, memory, memory_mask, max_decode_length):
    dummy = jnp.zeros((memory.shape[0], max_decode_length), jnp.int32)
    _, variables = self.module.apply(
        {"params": params}, memory, memory_mask, dummy, decode=True,
        max_decode_length=max_decode_length, method=self.module.decode,
        mutable=["cache"])
    return variables["cache"]

  def _tokens_to_logits_fn(self, params, memory, memory_mask, max_decode_length):
    """One cached decoder step on a `decoding.DecodingState` (or t5x's)."""
    def tokens_to_logits(state):
      logits, new_vars = self.module.apply(
          {"params": params, "cache": state.cache}, memory, memory_mask,
          state.cur_token, decode=True, max_decode_length=max_decode_length,
          method=self.module.decode, mutable=["cache"])
      return logits[:, 0], new_vars["cache"]
    return tokens_to_logits

  def predict_batch_with_aux(self, params, batch: Mapping[str, jnp.ndarray],
                             rng: Optional[jax.Array] = None,
                             decoder_params: Optional[Mapping[str, Any]] = None,
                             return_all_decodes: Optional[bool] = None,
                             num_decodes: Optional[int] = None,
                             prompt_with_targets: bool = False):
    """Decodes targets from image + inputs with the KV-cached decoder (t5x semantics).

    The decode length is `batch['decoder_input_tokens'].shape[1]`; `num_decodes` is the
    beam size (beam search) or the number of samples. With `prompt_with_targets` the
    decoder inputs (EOS removed) are forced as a prefix. Returns (tokens, aux): the
    best decode (B, L), or with `return_all_decodes` all of them (B, num_decodes, L) in
    increasing order of score, the best last; aux['scores'] likewise.
    """
    defaults = self._default_decoder_params
    if return_all_decodes is None:
      return_all_decodes = defaults.return_all_decodes
    if num_decodes is None:
      num_decodes = defaults.num_decodes
    image, inputs = batch["image"], batch["encoder_input_tokens"]
    decoder_inputs = batch["decoder_input_tokens"]
    eos_id = self.output_vocabulary.eos_id
    prompt = (decoder_inputs * (decoder_inputs != eos_id) if prompt_with_targets
              else jnp.zeros_like(decoder_inputs))
    memory, memory_mask = self.module.apply(
        {"params": params}, image, inputs, method=self.module.encode)
    max_length = decoder_inputs.shape[1]
    cache = self._initial_cache(params, memory, memory_mask, max_length)
    tokens_to_logits = self._tokens_to_logits_fn(
        params, decoding.flat_batch_beam_expand(memory, num_decodes),
        decoding.flat_batch_beam_expand(memory_mask, num_decodes), max_length)
    decoder_params = dict(decoder_params or {})
    if rng is not None:
      if decoder_params.get("decode_rng") is not None:
        raise ValueError("Got an rng both as `rng` and as decoder_params['decode_rng'].")
      decoder_params["decode_rng"] = rng
    decoder_params.setdefault("eos_id", eos_id)
    decodes, scores = self._decode_fn(
        inputs=prompt, cache=cache, tokens_to_logits=tokens_to_logits,
        num_decodes=num_decodes, cache_offset=self._cache_offset, **decoder_params)
    if return_all_decodes:
      return decodes, {"scores": scores}
    return decodes[:, -1], {"scores": scores[:, -1]}
