"""The training-facing model: t5x's BaseModel method names and signatures.

`VLEncoderDecoderModel` wraps the network (`vlpretrain.network.transformer`) with the
loss, decoding and scoring that the trainer, evaluator and exporter call:
`get_initial_variables`, `loss_fn`, `predict_batch_with_aux`, `score_batch`, and
`FEATURE_CONVERTER_CLS`.
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from vlpretrain import decoding
from vlpretrain import errors
from vlpretrain.data import features
from vlpretrain.network import t5


def cross_entropy_with_logits(logits, targets, label_smoothing: float = 0.0,
                              z_loss: float = 0.0):
  """Per-token cross-entropy with label smoothing and z-loss.

  Smoothed targets put `1 - label_smoothing` on the target and spread the rest over
  the other V-1 tokens; the entropy of that distribution is subtracted so a perfect
  prediction has loss 0. The z-loss `z_loss * log(Z)^2` keeps the softmax normaliser
  near 1 (PaLM, Chowdhery et al., 2022). Returns (loss, z_loss_term), each (B, L).
  """
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = label_smoothing / (vocab - 1)
  normalizer = -(confidence * np.log(confidence) +
                 (vocab - 1) * low_confidence * np.log(low_confidence + 1e-20))
  soft_targets = (jax.nn.one_hot(targets, vocab) * (confidence - low_confidence) +
                  low_confidence)
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  loss = log_z - jnp.sum(soft_targets * logits, axis=-1) - normalizer
  z_term = z_loss * jnp.square(log_z)
  return loss + z_term, z_term


class VLEncoderDecoderModel:
  """Image + text -> text encoder-decoder model.

  Args:
    module: the network (`transformer.VLTransformer`). If its `t5_config.vocab_size` is
      None it is set to the output vocabulary's size padded to a multiple of 128.
    input_vocabulary, output_vocabulary: seqio vocabularies (shared embedding: they
      must have the same size).
    decode_fn: `decoding.temperature_sample` (greedy by default) or
      `decoding.beam_search`.
    label_smoothing, z_loss: loss options (seed 001 appendix B: smoothing 0.1).
    default_decoder_params: keyword arguments for `decode_fn` (e.g. temperature).
  """
  FEATURE_CONVERTER_CLS = features.VLEncDecFeatureConverter

  def __init__(self, module: nn.Module, input_vocabulary: seqio.Vocabulary,
               output_vocabulary: seqio.Vocabulary,
               decode_fn: Callable = decoding.temperature_sample,
               label_smoothing: float = 0.0, z_loss: float = 0.0,
               default_decoder_params: Optional[Mapping[str, Any]] = None):
    if module.t5_config.vocab_size is None:
      if input_vocabulary.vocab_size != output_vocabulary.vocab_size:
        raise errors.ConfigError(
            "Input and output vocabularies differ in size "
            f"({input_vocabulary.vocab_size} vs {output_vocabulary.vocab_size}) but "
            "share one embedding: use the same vocabulary for both.")
      vocab_size = t5.padded_vocab_size(output_vocabulary.vocab_size)
      module = module.clone(
          t5_config=dataclasses.replace(module.t5_config, vocab_size=vocab_size))
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self._decode_fn = decode_fn
    self._label_smoothing = label_smoothing
    self._z_loss = z_loss
    self._default_decoder_params = dict(default_decoder_params or {})

  # --------------------------------------------------------------------- init
  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, tuple],
                            input_types: Optional[Mapping[str, Any]] = None):
    """Initial variables, boxed with their logical axis names (`nn.Partitioned`).

    `input_shapes` needs 'image' (B, H, W, 3), 'encoder_input_tokens' (B, Li) and
    'decoder_input_tokens' (B, Lt).
    """
    missing = {"image", "encoder_input_tokens", "decoder_input_tokens"} - set(input_shapes)
    if missing:
      raise ValueError(f"get_initial_variables: input_shapes lacks {sorted(missing)}.")
    self._check_vocabulary()
    input_types = input_types or {}
    dummy = lambda name, default: jnp.zeros(input_shapes[name],
                                            input_types.get(name, default))
    params_rng, dropout_rng = jax.random.split(rng)
    return self.module.init(
        {"params": params_rng, "dropout": dropout_rng}, dummy("image", jnp.float32),
        dummy("encoder_input_tokens", jnp.int32), dummy("decoder_input_tokens", jnp.int32),
        enable_dropout=False)

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

  def loss_fn(self, params, batch: Mapping[str, jnp.ndarray],
              dropout_rng: Optional[jax.Array]):
    """Mean per-token loss over the batch, and metrics.

    aux: 'loss', 'cross_ent_loss', 'z_loss', 'accuracy', 'num_tokens' (scalars) and
    per example 'example_loss_sum', 'example_token_count' (B,): per-task losses are a
    segment-sum of these by `task_id`.
    """
    logits = self._compute_logits(params, batch, dropout_rng)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    weights = weights.astype(jnp.float32)
    token_loss, token_z = cross_entropy_with_logits(
        logits, targets, self._label_smoothing, self._z_loss)
    example_loss_sum = jnp.sum(token_loss * weights, axis=1)
    example_token_count = jnp.sum(weights, axis=1)
    num_tokens = jnp.maximum(jnp.sum(example_token_count), 1.0)
    loss = jnp.sum(example_loss_sum) / num_tokens
    z_loss = jnp.sum(token_z * weights) / num_tokens
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    aux = {
        "loss": loss,
        "cross_ent_loss": loss - z_loss,
        "z_loss": z_loss,
        "accuracy": jnp.sum(correct * weights) / num_tokens,
        "num_tokens": jnp.sum(example_token_count),
        "example_loss_sum": example_loss_sum,
        "example_token_count": example_token_count,
    }
    return loss, aux

  # ------------------------------------------------------------------ scoring
  def score_batch(self, params, batch: Mapping[str, jnp.ndarray],
                  return_intermediates: bool = False):
    """Log-likelihood of each example's targets (B,), without smoothing or z-loss."""
    logits = self._compute_logits(params, batch)
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    token_scores = -cross_entropy_with_logits(logits, targets)[0] * weights
    scores = jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      return scores, {"token_scores": token_scores}
    return scores

  # ----------------------------------------------------------------- decoding
  def _tokens_to_logits_fn(self, params, memory, memory_mask, max_decode_length):
    def tokens_to_logits(tokens, cache):
      logits, new_vars = self.module.apply(
          {"params": params, "cache": cache}, memory, memory_mask, tokens,
          decode=True, max_decode_length=max_decode_length,
          method=self.module.decode, mutable=["cache"])
      return logits[:, 0], new_vars["cache"]
    return tokens_to_logits

  def _initial_cache(self, params, memory, memory_mask, max_decode_length):
    dummy = jnp.zeros((memory.shape[0], max_decode_length), jnp.int32)
    _, variables = self.module.apply(
        {"params": params}, memory, memory_mask, dummy, decode=True,
        max_decode_length=max_decode_length, method=self.module.decode,
        mutable=["cache"])
    return variables["cache"]

  def predict_batch_with_aux(self, params, batch: Mapping[str, jnp.ndarray],
                             rng: Optional[jax.Array] = None,
                             decoder_params: Optional[Mapping[str, Any]] = None,
                             return_all_decodes: bool = False, num_decodes: int = 1,
                             prompt_with_targets: bool = False):
    """Decodes targets from image + inputs with the KV-cached decoder.

    The decode length is `batch['decoder_input_tokens'].shape[1]`. With beam search,
    `num_decodes` is the beam size. Returns (tokens, aux): tokens (B, L), or
    (B, num_decodes, L) best first with `return_all_decodes`; aux['scores'] holds the
    log-probabilities (sampling) or length-normalised scores (beam search).
    """
    if prompt_with_targets:
      raise ValueError("prompt_with_targets=True (forced decoder prefixes) is not "
                       "supported by VLEncoderDecoderModel.")
    params_kwargs = {**self._default_decoder_params, **(decoder_params or {})}
    image, inputs = batch["image"], batch["encoder_input_tokens"]
    batch_size, max_length = batch["decoder_input_tokens"].shape
    memory, memory_mask = self.module.apply(
        {"params": params}, image, inputs, method=self.module.encode)
    if num_decodes > 1:
      memory = jnp.repeat(memory, num_decodes, axis=0)
      memory_mask = jnp.repeat(memory_mask, num_decodes, axis=0)
    cache = self._initial_cache(params, memory, memory_mask, max_length)
    tokens_to_logits = self._tokens_to_logits_fn(params, memory, memory_mask, max_length)
    eos_id = self.output_vocabulary.eos_id

    if self._decode_fn is decoding.beam_search or getattr(
        self._decode_fn, "func", None) is decoding.beam_search:
      sequences, scores = self._decode_fn(
          tokens_to_logits, cache, batch_size=batch_size, beam_size=num_decodes,
          max_decode_len=max_length, eos_id=eos_id, **params_kwargs)
    else:
      sequences, scores = self._decode_fn(
          tokens_to_logits, cache, batch_size=batch_size * num_decodes,
          max_decode_len=max_length, eos_id=eos_id, rng=rng, **params_kwargs)
      sequences = sequences.reshape(batch_size, num_decodes, max_length)
      scores = scores.reshape(batch_size, num_decodes)
      order = jnp.argsort(-scores, axis=1)
      sequences = jnp.take_along_axis(sequences, order[:, :, None], axis=1)
      scores = jnp.take_along_axis(scores, order, axis=1)
    if return_all_decodes:
      return sequences, {"scores": scores}
    return sequences[:, 0], {"scores": scores[:, 0]}

  def predict_batch(self, params, batch, rng=None):
    """Decoded tokens (B, L) only."""
    return self.predict_batch_with_aux(params, batch, rng=rng)[0]
