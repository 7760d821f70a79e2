"""VLMo (seed 002) on the model contract of `models.BaseModel`.

`VLMoModel` pretrains and fine-tunes the Multiway Transformer as in sec. 3.3 / 3.5:

  itc  image-text contrast on the image-only [I_CLS] and text-only [T_CLS] embeddings,
       the global batch's N^2 - N pairs as negatives (eqs. 3-4);
  itm  image-text matching on the fusion [T_CLS]: each pair, plus for each image a hard
       negative text and for each text a hard negative image sampled from the ITC
       similarities over the global batch (Table 6's global hard negative mining);
  mlm  BERT's masked LM (15%, 80/10/10, whole words) on image + masked text, in fusion
       mode.

The loss is their sum (the paper weights them equally); each is logged separately.
`objectives=('itc',)` is the retrieval fine-tuning of sec. 3.5 (dual encoder), and
Table 5's ablations are `('itc',)`, `('itc', 'itm')`, `('itc', 'itm', 'mlm')`. Its
evaluator is retrieval: `embed_images` / `embed_texts` give the dual-encoder embeddings.

`VLMoClassifierModel` is the fusion encoder with a classifier on [T_CLS] (sec. 3.5:
VQA, NLVR2, SNLI-VE): cross-entropy over the classes of the Task's
`label_vocab.LabelVocabulary` (easy-VQA's answers: one right answer per question, so
softmax cross-entropy where VQA v2's soft scores would use a sigmoid; our choice for
single-answer data). Its predictions are label ids that decode to the label text, so
the Task's string metrics score them.

Dropout randomness, the MLM corruption and the hard negatives all come from the
`dropout_rng` the trainer folds per step. Without one (evals) no dropout is applied,
the corruption uses a fixed key and the hardest negatives are taken.
"""
import dataclasses
import functools
from typing import Any, Sequence

from clu import metrics as clu_metrics
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from vlpretrain import alignment_losses
from vlpretrain import errors
from vlpretrain import models
from vlpretrain.data import features
from vlpretrain.data import label_vocab
from vlpretrain.network import t5
from vlpretrain.network import vlmo

OBJECTIVES = ("itc", "itm", "mlm")            # Image-text pairs (sec. 3.3).
STAGE_OBJECTIVES = ("mim", "text_mlm")        # Image-only / text-only stages (sec. 3.4).
PAIR_FEATURES = {"itc": ("image", "text_tokens"), "itm": ("image", "text_tokens"),
                 "mlm": ("image", "text_tokens"), "mim": ("image",),
                 "text_mlm": ("text_tokens",)}
_EVAL_MASK_SEED = 17  # The fixed corruption of deterministic (eval) MLM losses.


def _init_inputs(config, input_shapes, input_types):
  """Dummy image and tokens; a modality the batch lacks (an image-only or text-only
  stage) gets the config's shape, so every stage has the same parameters."""
  if not {"image", "text_tokens"} & set(input_shapes):
    raise errors.ConfigError(
        f"get_initial_variables: input_shapes has neither 'image' nor 'text_tokens' "
        f"(it has {sorted(input_shapes)}): encoder models read the features of "
        "data.features.VLEncoderFeatureConverter.")
  batch = next(iter(input_shapes.values()))[0]
  image_shape = input_shapes.get("image",
                                 (batch, config.image_size, config.image_size, 3))
  text_shape = input_shapes.get("text_tokens", (batch, config.max_text_length))
  input_types = input_types or {}
  return (jnp.zeros(image_shape, input_types.get("image", jnp.float32)),
          jnp.zeros(text_shape, jnp.int32))


def _with_vocab_size(module: vlmo.VLMo, vocabulary: seqio.Vocabulary) -> vlmo.VLMo:
  cfg = module.config
  if cfg.vocab_size is None:
    module = module.clone(config=dataclasses.replace(
        cfg, vocab_size=t5.padded_vocab_size(vocabulary.vocab_size)))
  return module


class _VLMoBase(models.BaseModel):
  """Shared by the VLMo models: the network, init and dropout keys."""
  FEATURE_CONVERTER_CLS = features.VLEncoderFeatureConverter

  def __init__(self, module: vlmo.VLMo, vocabulary: seqio.Vocabulary,
               optimizer_def: Any = None):
    super().__init__(optimizer_def=optimizer_def)
    self.module = _with_vocab_size(module, vocabulary)
    self.vocabulary = vocabulary
    # t5x's trainer and infer read these names.
    self.input_vocabulary = self.output_vocabulary = vocabulary

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    """{'params', 'params_axes'} from the shapes of 'image' and 'text_tokens'."""
    image, tokens = _init_inputs(self.module.config, input_shapes, input_types)
    size = self.module.config.vocab_size
    if size < self.vocabulary.vocab_size:
      raise errors.ConfigError(
          f"multiway_config.vocab_size={size} is smaller than the vocabulary "
          f"({self.vocabulary.vocab_size} ids): leave it unset to derive it.")
    params_rng, dropout_rng = jax.random.split(rng)
    boxed = self.module.init({"params": params_rng, "dropout": dropout_rng}, image,
                             tokens)
    variables = dict(nn.meta.unbox(boxed))
    variables["params_axes"] = models.params_axes_of(boxed["params"])
    return variables

  def _apply(self, params, method, *args, rng=None):
    rngs = None if rng is None else {"dropout": rng}
    return self.module.apply({"params": params}, *args, deterministic=rng is None,
                             rngs=rngs, method=method)

  def loss_fn(self, params, batch, dropout_rng):
    loss, metrics, _ = self.loss_fn_with_example_losses(params, batch, dropout_rng)
    return loss, metrics


class VLMoModel(_VLMoBase):
  """Pretraining (ITC + ITM + MLM) and dual-encoder retrieval; see the module docstring.

  Args:
    module: `network.vlmo.VLMo` (its config's vocab_size None: derived, padded to 128).
    vocabulary: the text vocabulary (its last extra id, T5's `<extra_id_0>`, is
      [MASK]; word starts come from its SentencePiece pieces).
    objectives: a subset of ('itc', 'itm', 'mlm'), summed.
      'mim' (image-only stage) and 'text_mlm' (text-only stage) train the stages of
      sec. 3.4 on image-only / text-only data.
    mlm_rate: BERT's masking probability (15%).
    mim_rate: the share of patches the image stage masks (BEiT's 40%; uniformly at
      random here, not BEiT's blocks).
    whole_word_masking: mask whole words (seed 002 sec. 4.1) rather than pieces.
    identical_texts_are_positives: identical captions of different images count as
      positives in ITC and are never drawn as ITM hard negatives (see
      `alignment_losses.itc_loss`); False is the paper's diagonal-only target.
  """
  EVALUATOR = "retrieval"

  def __init__(self, module: vlmo.VLMo, vocabulary: seqio.Vocabulary,
               optimizer_def: Any = None, objectives: Sequence[str] = OBJECTIVES,
               mlm_rate: float = 0.15, whole_word_masking: bool = True,
               identical_texts_are_positives: bool = True, mim_rate: float = 0.4):
    super().__init__(module, vocabulary, optimizer_def)
    objectives = tuple(objectives)
    unknown = sorted(set(objectives) - set(OBJECTIVES + STAGE_OBJECTIVES))
    if unknown or not objectives:
      raise errors.ConfigError(f"VLMoModel.objectives={objectives}: choose a non-empty "
                               f"subset of {OBJECTIVES + STAGE_OBJECTIVES}.")
    self.objectives = objectives
    self.mlm_rate = mlm_rate
    self.mim_rate = mim_rate
    self.whole_word_masking = whole_word_masking
    self.identical_texts_are_positives = identical_texts_are_positives

  # The vocabulary is read when a loss is first traced, not here: building the model
  # (model_stats, a t5x config) needs no vocabulary file when vocab_size is bound.
  @functools.cached_property
  def _word_starts(self) -> np.ndarray:
    size = self.module.config.vocab_size
    if not self.whole_word_masking:
      return np.ones((size,), bool)
    return label_vocab.word_starts(self.vocabulary, size)

  @functools.cached_property
  def mask_id(self) -> int:
    """[MASK]: seqio's <extra_id_0>, the vocabulary's highest id."""
    if not self.vocabulary.extra_ids:
      raise errors.ConfigError("VLMoModel's MLM needs a [MASK] id: use a vocabulary with "
                               "extra ids (seqio's sentinels), e.g. "
                               "vocab.shapes_vocabulary(), or drop 'mlm' from objectives.")
    return self.vocabulary.vocab_size - 1

  @property
  def _random_range(self) -> tuple[int, int]:
    """Random replacements: real pieces only (not pad/eos/unk, not the sentinels)."""
    return (3, self.vocabulary.vocab_size - self.vocabulary.extra_ids)

  # ------------------------------------------------------------ dual encoder
  def embed_images(self, params, batch):
    """(B, D) L2-normalised image embeddings of batch['image']."""
    return self._apply(params, vlmo.VLMo.image_embedding, batch["image"])

  def embed_texts(self, params, batch):
    """(B, D) L2-normalised text embeddings of batch['text_tokens']."""
    return self._apply(params, vlmo.VLMo.text_embedding, batch["text_tokens"])

  # ------------------------------------------------------------------- loss
  def _rngs(self, dropout_rng):
    if dropout_rng is None:
      return None, None, None, None, jax.random.PRNGKey(_EVAL_MASK_SEED)
    return tuple(jax.random.split(dropout_rng, 5))

  def _mask_text(self, rng, tokens):
    candidates = (tokens != 0) & (tokens != self.vocabulary.eos_id)
    return alignment_losses.bert_mask(
        rng, tokens, candidates, jnp.asarray(self._word_starts)[tokens], self.mask_id,
        *self._random_range, rate=self.mlm_rate)

  def _masked_token_loss(self, logits, masked, name, metrics):
    """Mean cross-entropy over the masked tokens; its metrics; per-example means."""
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), masked.targets[..., None],
                              axis=-1)[..., 0]
    num_masked = jnp.sum(masked.weights)
    loss = jnp.sum(ce * masked.weights) / jnp.maximum(num_masked, 1.0)
    metrics[f"{name}_loss"] = models.average(loss)
    metrics[f"{name}_accuracy"] = clu_metrics.Accuracy.from_model_output(
        logits=logits, labels=masked.targets, mask=masked.weights > 0)
    metrics[f"{name}_masked_tokens"] = models.Sum(total=num_masked)
    per_example = (jnp.sum(ce * masked.weights, 1) /
                   jnp.maximum(jnp.sum(masked.weights, 1), 1.0))
    return loss, per_example

  def _mim_loss(self, params, image, rng, dropout_rng, metrics):
    """Masked image modelling: MSE of the masked patches' pixels, each patch normalised
    by its own mean and variance (MAE's normalised-pixel target; seed 004 regresses
    pixels too)."""
    cfg = self.module.config
    batch, size, p = image.shape[0], cfg.image_size, cfg.patch_size
    patch_mask = jax.random.uniform(rng, (batch, cfg.num_patches)) < self.mim_rate
    patches = image.reshape(batch, size // p, p, size // p, p, 3)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, cfg.num_patches, -1)
    mean = jnp.mean(patches, -1, keepdims=True)
    var = jnp.var(patches, -1, keepdims=True)
    target = (patches - mean) / jnp.sqrt(var + 1e-6)
    pred = self._apply(params, vlmo.VLMo.patch_pixels, image, patch_mask,
                       rng=dropout_rng)
    error = jnp.mean(jnp.square(pred - target), -1)
    weights = patch_mask.astype(jnp.float32)
    loss = jnp.sum(error * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    metrics["mim_loss"] = models.average(loss)
    metrics["mim_masked_patches"] = models.Sum(total=jnp.sum(weights))
    return loss, jnp.sum(error * weights, 1) / jnp.maximum(jnp.sum(weights, 1), 1.0)

  def _check_features(self, batch):
    for objective in self.objectives:
      missing = [f for f in PAIR_FEATURES[objective] if f not in batch]
      if missing:
        raise errors.ConfigError(
            f"VLMoModel objective {objective!r} needs the batch features {missing} "
            f"(the batch has {sorted(batch)}): train it on a Task that has them "
            "(image-only stages: 'mim'; text-only: 'text_mlm').")

  def loss_fn_with_example_losses(self, params, batch, dropout_rng):
    self._check_features(batch)
    image, tokens = batch.get("image"), batch.get("text_tokens")
    drop_rng, text_neg_rng, image_neg_rng, drop_rng2, mask_rng = self._rngs(dropout_rng)
    batch_size = (tokens if tokens is not None else image).shape[0]
    zeros = jnp.zeros((batch_size,), jnp.float32)
    per_example, metrics, total = zeros, {}, 0.0
    if tokens is not None:
      identical = (alignment_losses.same_rows(tokens)
                   if self.identical_texts_are_positives
                   else jnp.eye(batch_size, dtype=bool))

    needs_similarity = "itc" in self.objectives or "itm" in self.objectives
    if needs_similarity:
      image_emb = self._apply(params, vlmo.VLMo.image_embedding, image, rng=drop_rng)
      text_emb = self._apply(params, vlmo.VLMo.text_embedding, tokens, rng=drop_rng)
      scale = self._apply(params, vlmo.VLMo.logit_scale)
      itc, logits = alignment_losses.itc_loss(image_emb, text_emb, scale, identical)
      metrics["temperature"] = models.average(1.0 / scale)
      metrics["i2t_accuracy"] = models.average(
          jnp.mean(identical[jnp.arange(batch_size), jnp.argmax(logits, axis=1)]))
    if "itc" in self.objectives:
      itc_loss = jnp.mean(itc)
      total += itc_loss
      per_example += itc
      metrics["itc_loss"] = models.average(itc_loss)

    if "itm" in self.objectives:
      text_neg = alignment_losses.hard_negatives(text_neg_rng, logits, identical)
      image_neg = alignment_losses.hard_negatives(image_neg_rng, logits.T, identical)
      pair_images = jnp.concatenate([image, image, image[image_neg.index]])
      pair_tokens = jnp.concatenate([tokens, tokens[text_neg.index], tokens])
      labels = jnp.concatenate([jnp.ones((batch_size,), jnp.int32),
                                jnp.zeros((2 * batch_size,), jnp.int32)])
      weights = jnp.concatenate([jnp.ones((batch_size,)), text_neg.valid,
                                 image_neg.valid]).astype(jnp.float32)
      itm_logits = self._apply(params, vlmo.VLMo.itm_logits, pair_images, pair_tokens,
                               rng=drop_rng2)
      ce = -jnp.take_along_axis(jax.nn.log_softmax(itm_logits), labels[:, None],
                                axis=1)[:, 0]
      itm_loss = jnp.sum(ce * weights) / jnp.sum(weights)
      total += itm_loss
      per_pair = (ce * weights).reshape(3, batch_size)
      per_example += jnp.sum(per_pair, 0) / jnp.sum(weights.reshape(3, batch_size), 0)
      metrics["itm_loss"] = models.average(itm_loss)
      metrics["itm_accuracy"] = models.average(
          jnp.sum((jnp.argmax(itm_logits, -1) == labels) * weights), jnp.sum(weights))

    if "mlm" in self.objectives:
      masked = self._mask_text(mask_rng, tokens)
      logits = self._apply(params, vlmo.VLMo.mlm_logits, image, masked.inputs,
                           rng=drop_rng2)
      loss, example = self._masked_token_loss(logits, masked, "mlm", metrics)
      total, per_example = total + loss, per_example + example

    if "text_mlm" in self.objectives:
      masked = self._mask_text(mask_rng, tokens)
      logits = self._apply(params, vlmo.VLMo.text_mlm_logits, masked.inputs,
                           rng=drop_rng)
      loss, example = self._masked_token_loss(logits, masked, "text_mlm", metrics)
      total, per_example = total + loss, per_example + example

    if "mim" in self.objectives:
      loss, example = self._mim_loss(params, image, mask_rng, drop_rng, metrics)
      total, per_example = total + loss, per_example + example

    metrics["loss"] = models.average(total)
    metrics["num_examples"] = models.Sum(total=jnp.asarray(batch_size, jnp.float32))
    example = models.ExampleLosses(loss_sum=per_example, weight=jnp.ones_like(zeros))
    return total, metrics, example

  def export_functions(self, task_feature_lengths) -> dict:
    """The dual encoder ('embed_image', 'embed_text') and the matching head ('match':
    log p(match) of each (image, text) pair)."""
    models.require_lengths(task_feature_lengths, ("text",), "{'text': 24}")
    return {
        "embed_image": models.ExportFunction(
            ("image",), lambda p, image: self.embed_images(p, {"image": image}),
            "embedding"),
        "embed_text": models.ExportFunction(
            ("tokens",), lambda p, tokens: self.embed_texts(p, {"text_tokens": tokens}),
            "embedding"),
        "match": models.ExportFunction(
            ("image", "tokens"), lambda p, image, tokens: self.score_batch(
                p, {"image": image, "text_tokens": tokens}), "score"),
    }

  # ------------------------------------------------------ matching as output
  def score_batch(self, params, batch, return_intermediates: bool = False):
    """log p(match) of each (image, text) pair from the ITM head (B,)."""
    logits = self._apply(params, vlmo.VLMo.itm_logits, batch["image"],
                         batch["text_tokens"])
    scores = jax.nn.log_softmax(logits)[:, 1]
    return (scores, {}) if return_intermediates else scores

  def predict_batch_with_aux(self, params, batch, rng=None):
    """(B, 1) ITM decision (1: the text matches the image) and aux {'scores': log p}."""
    logits = self._apply(params, vlmo.VLMo.itm_logits, batch["image"],
                         batch["text_tokens"])
    log_probs = jax.nn.log_softmax(logits)
    return (jnp.argmax(logits, -1)[:, None].astype(jnp.int32),
            {"scores": jnp.max(log_probs, -1)})

  def loss_denominator(self, batch):
    raise errors.ConfigError(
        "VLMoModel cannot accumulate gradients over microbatches: ITC's negatives and "
        "ITM's hard negatives are the whole global batch (seed 002 Table 6) and the "
        "masked losses are means over a random number of masked tokens, so "
        "microbatches would train a different loss. Unset "
        "train_script.train.num_microbatches; to fit memory use more devices or "
        "bfloat16 activations.")


class VLMoClassifierModel(_VLMoBase):
  """Fusion-encoder classification (sec. 3.5); see the module docstring.

  Args:
    module: `network.vlmo.VLMo`; its num_classes None is set from `label_vocabulary`.
    vocabulary: the text vocabulary.
    label_vocabulary: the Task's targets vocabulary (`label_vocab.LabelVocabulary`;
      gin: `@label_vocab.of_task()` reads it from the Task).
  """
  EVALUATOR = "classification"

  def __init__(self, module: vlmo.VLMo, vocabulary: seqio.Vocabulary,
               label_vocabulary: label_vocab.LabelVocabulary,
               optimizer_def: Any = None):
    if not isinstance(label_vocabulary, label_vocab.LabelVocabulary):
      raise errors.ConfigError(
          f"VLMoClassifierModel.label_vocabulary is {label_vocabulary!r}, not a "
          "label_vocab.LabelVocabulary: use a classification Task (e.g. "
          "'easy_vqa_classes') and @label_vocab.of_task().")
    if module.num_classes is None:
      module = module.clone(num_classes=label_vocabulary.vocab_size)
    elif module.num_classes != label_vocabulary.vocab_size:
      raise errors.ConfigError(
          f"VLMo.num_classes={module.num_classes} but the label vocabulary has "
          f"{label_vocabulary.vocab_size} labels: leave num_classes unset.")
    super().__init__(module, vocabulary, optimizer_def)
    self.label_vocabulary = label_vocabulary
    self.output_vocabulary = label_vocabulary

  def _logits(self, params, batch, rng=None):
    return self._apply(params, vlmo.VLMo.class_logits, batch["image"],
                       batch["text_tokens"], rng=rng)

  def loss_fn_with_example_losses(self, params, batch, dropout_rng):
    """Mean cross-entropy over the examples with a known label (labels >= 0)."""
    logits = self._logits(params, batch, dropout_rng)
    labels = batch["labels"]
    known = labels >= 0
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits),
                              jnp.maximum(labels, 0)[:, None], axis=1)[:, 0]
    ce = jnp.where(known, ce, 0.0)
    count = jnp.sum(known)
    loss = jnp.sum(ce) / jnp.maximum(count, 1)
    metrics = {
        "loss": models.average(loss),
        "accuracy": clu_metrics.Accuracy.from_model_output(
            logits=logits, labels=jnp.maximum(labels, 0), mask=known),
        "num_examples": models.Sum(total=jnp.asarray(labels.shape[0], jnp.float32)),
    }
    return loss, metrics, models.ExampleLosses(loss_sum=ce,
                                               weight=known.astype(jnp.float32))

  def loss_denominator(self, batch):
    """The examples with a known label (the loss is their mean)."""
    return jnp.sum(batch["labels"] >= 0)

  def export_functions(self, task_feature_lengths) -> dict:
    """'classify': (image, text tokens) -> the arg-max label id (B,)."""
    models.require_lengths(task_feature_lengths, ("text",), "{'text': 24}")
    return {"classify": models.ExportFunction(
        ("image", "tokens"), lambda p, image, tokens: self.predict_batch(
            p, {"image": image, "text_tokens": tokens})[:, 0], "label")}

  def score_batch(self, params, batch, return_intermediates: bool = False):
    """log p(label) of each example (B,)."""
    log_probs = jax.nn.log_softmax(self._logits(params, batch))
    scores = jnp.take_along_axis(log_probs, jnp.maximum(batch["labels"], 0)[:, None],
                                 axis=1)[:, 0]
    return (scores, {}) if return_intermediates else scores

  def predict_batch_with_aux(self, params, batch, rng=None):
    """(B, 1) the arg-max label id, aux {'scores': its log-probability}."""
    log_probs = jax.nn.log_softmax(self._logits(params, batch))
    return (jnp.argmax(log_probs, -1)[:, None].astype(jnp.int32),
            {"scores": jnp.max(log_probs, -1)})
