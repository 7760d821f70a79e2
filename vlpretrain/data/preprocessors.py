"""seqio preprocessors: raw examples -> {"image", "inputs", "targets"} text.

Put these first in a Task's preprocessors, before the image is decoded and before
`tokenize` (below; see tasks/shapes.py). Raw features read:
  image       passed through unchanged (and hashed for seeds, see below).
  caption     tf.string scalar (text tasks: cap, cmp, mlm, itm).
  labels      tf.string vector of image-level class names (object-aware tasks).
  question, answer        (vqa);   hypothesis, label  (visual_entailment).

Text prompts are plain text in `inputs` (design.md "Tasks (seqio)"; seed 001 sec. 3,
seed 000 A.3); they are lower case like the shapes Tasks' "caption:" and "question:".
Captions are split into words on whitespace and re-joined with single spaces.

Randomness is stateless: every draw comes from `tf.random.stateless_*` seeded with
(seed, fingerprint64(salt + key)), where salt names the preprocessor and key is the
example's `id` feature if it has one, else its encoded `image` bytes, else its text.
An example's result therefore depends on neither the order of the stream nor
num_parallel_calls (except image_text_matching's choice of negative caption, which
comes from earlier examples of the stream). The same example gets the same mask in
every epoch (static masking).
"""
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
CAPTION_PROMPT = "caption:"  # = tasks/shapes.py CAPTION_PROMPT.
QUESTION_PROMPT = "question:"  # = tasks/shapes.py QUESTION_PROMPT.
COMPLETE_PROMPT = "complete:"
MLM_PROMPT = "mlm:"
MATCH_PROMPT = "match:"
LIST_PROMPT = "list all objects"
HYPOTHESIS_PROMPT = "hypothesis:"
YES, NO, NONE = "yes", "no", "none"
ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")
CONJUNCTIONS = {"or": tf.reduce_any, "and/or": tf.reduce_any, "and": tf.reduce_all}
_EPS = 1e-9  # Float slack when turning fractions of a word count into bounds.


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------
_map = lambda ds, fn, calls=AUTOTUNE: ds.map(fn, num_parallel_calls=calls)


def _out(ex, inputs, targets):
  return {"image": ex["image"], "inputs": inputs, "targets": targets}


def _example_seed(ex, seed: int, salt: str, text_key: str) -> tf.Tensor:
  """int64 [2] seed for stateless ops: (seed, fingerprint of salt + example key)."""
  if "id" in ex:
    key = ex["id"]
  elif "image" in ex and ex["image"].dtype == tf.string:
    key = ex["image"]
  else:
    key = ex[text_key]
  if key.dtype != tf.string:
    key = tf.strings.as_string(key)
  key = tf.strings.reduce_join(tf.reshape(key, [-1]), separator="\x1f")
  h = tf.strings.to_hash_bucket_fast(tf.strings.join([salt, key], "/"), 2**62)
  return tf.stack([tf.constant(seed, tf.int64), h])


_fold = tf.random.experimental.stateless_fold_in  # (seed, i) -> an independent seed.


def _uniform(seed, i):
  """A float64 scalar in [0, 1), the i-th independent draw of `seed`."""
  return tf.random.stateless_uniform([], _fold(seed, i), dtype=tf.float64)


def _randint(seed, i, lo, hi):
  """An int32 uniform in [lo, hi] (lo <= hi)."""
  span = tf.cast(hi - lo + 1, tf.float64)
  return lo + tf.minimum(tf.cast(tf.floor(_uniform(seed, i) * span), tf.int32), hi - lo)


def _sample(x, k, seed):
  """k distinct elements of vector x (k <= size), in random order."""
  scores = tf.random.stateless_uniform(tf.shape(x), seed)
  return tf.gather(x, tf.math.top_k(scores, k=k).indices)


def _count(frac, n, lo_frac, hi_frac):
  """round(frac * n), moved into [ceil(lo_frac n), floor(hi_frac n)] if non-empty."""
  nf = tf.cast(n, tf.float64)
  k = tf.cast(tf.round(frac * nf), tf.int32)
  lo = tf.cast(tf.math.ceil(lo_frac * nf - _EPS), tf.int32)
  hi = tf.cast(tf.math.floor(hi_frac * nf + _EPS), tf.int32)
  return tf.where(lo <= hi, tf.minimum(tf.maximum(k, lo), hi), k)


def _check_range(lo, hi, name):
  if not 0.0 <= lo <= hi <= 1.0:
    raise ValueError(f"Need 0 <= min_{name} <= max_{name} <= 1, got {lo}, {hi}.")


def _words(text):
  return tf.strings.split(text)  # On whitespace; no empty words.


def _join(words, sep=" "):
  return tf.strings.reduce_join(words, separator=sep)


def _prompt(prompt, text):
  """"prompt text", or just "prompt" when text is empty."""
  return tf.strings.strip(tf.strings.join([prompt, text], " "))


# ---------------------------------------------------------------------------
# Cross-modal tasks (seed 001 sec. 3 and app. B; seed 000 A.3).
# ---------------------------------------------------------------------------
def tokenize(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
             copy_pretokenized: bool = True, with_eos: bool = False) -> tf.data.Dataset:
  """seqio.preprocessors.tokenize for the text features only.

  seqio's tokenizes every output feature and, with `copy_pretokenized`, keeps each one
  as `<name>_pretokenized`: for the image (a `seqio.ContinuousFeature`) that is a second
  float copy of every image, in shuffle buffers and in what t5x's infer writes.
  Continuous features here pass through as they are, once; a Task that wants the
  `image_pretokenized` copy uses seqio.preprocessors.tokenize itself.
  """
  text = {k: f for k, f in output_features.items()
          if not isinstance(f, seqio.ContinuousFeature)}
  return seqio.preprocessors.tokenize(dataset, text, copy_pretokenized=copy_pretokenized,
                                      with_eos=with_eos)


def drop_empty_captions(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Drops examples whose caption is empty or whitespace.

  A hook only: counting and warning about dropped captions belongs to the data
  sources (a later increment).
  """
  return ds.filter(lambda ex: tf.strings.length(tf.strings.strip(ex["caption"])) > 0)


def caption(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Cap (seed 001 sec. 3): "caption:" -> the whole caption (as given)."""
  return _map(ds, lambda ex: _out(ex, tf.constant(CAPTION_PROMPT), ex["caption"]))


def caption_completion(ds: tf.data.Dataset, min_fraction: float = 0.2,
                       max_fraction: float = 0.6, seed: int = 0,
                       num_parallel_calls: int = AUTOTUNE) -> tf.data.Dataset:
  """CMP (seed 001 sec. 3, app. B): "complete: <first words>" -> the last words.

  Per example a fraction f ~ U[min_fraction, max_fraction]; the target is the last
  k = round(f n) of the caption's n words, with k moved into [ceil(min n), floor(max n)]
  when that range holds an integer (so k / n stays in range) and then into [1, n - 1]:
  at least one word on each side when n >= 2. A one-word caption is all target
  (inputs "complete:").
  """
  _check_range(min_fraction, max_fraction, "fraction")

  def fn(ex):
    words = _words(ex["caption"])
    n = tf.size(words)
    s = _example_seed(ex, seed, "cmp", "caption")
    f = min_fraction + (max_fraction - min_fraction) * _uniform(s, 0)
    k = _count(f, n, min_fraction, max_fraction)
    k = tf.where(n >= 2, tf.minimum(tf.maximum(k, 1), n - 1), n)
    return _out(ex, _prompt(COMPLETE_PROMPT, _join(words[:n - k])),
                _join(words[n - k:]))
  return _map(ds, fn, num_parallel_calls)


def masked_language_modeling(ds: tf.data.Dataset, min_rate: float = 0.15,
                             max_rate: float = 0.25, seed: int = 0,
                             max_words: int = 128,
                             num_parallel_calls: int = AUTOTUNE) -> tf.data.Dataset:
  """MLM (seed 001 sec. 3 and app. B; seed 000 A.3) with T5 span-corruption text.

  Per example a rate r ~ U[min_rate, max_rate] (seed 000: 15%, seed 001: 20% / 25%;
  they say tokens, we mask words); m = round(r n) of the caption's n words (only its
  first `max_words`) are masked, with m moved into [ceil(min n), floor(max n)]
  when that range holds an integer, and m >= 1. The masked positions are a uniform
  random subset. Each run of consecutive masked words becomes one sentinel, numbered
  from 0 left to right, in inputs; targets list each sentinel followed by its words and
  end with the next sentinel, exactly as T5 span corruption does:
    caption  "a large red circle and a small blue square"  (masked: red circle, blue)
    inputs   "mlm: a large <extra_id_0> and a small <extra_id_1> square"
    targets  "<extra_id_0> red circle <extra_id_1> blue <extra_id_2>"
  Sentinels are seqio's "<extra_id_i>" strings (extra_ids=100: one token each).
  max_words=128 bounds the spans to 64, so sentinels never run out.
  """
  _check_range(min_rate, max_rate, "rate")
  if not 1 <= max_words <= 198:
    raise ValueError(f"max_words must be in [1, 198] (100 sentinels), got {max_words}.")

  def fn(ex):
    words = _words(ex["caption"])[:max_words]
    n = tf.size(words)
    s = _example_seed(ex, seed, "mlm", "caption")
    r = min_rate + (max_rate - min_rate) * _uniform(s, 0)
    m = tf.minimum(tf.maximum(_count(r, n, min_rate, max_rate), 1), n)
    chosen = _sample(tf.range(n), m, _fold(s, 1))
    masked = tf.scatter_nd(chosen[:, None], tf.ones([m], tf.int32), [n]) > 0
    start = masked & ~tf.concat([[False], masked[:-1]], 0)
    span = tf.cumsum(tf.cast(start, tf.int32)) - 1
    sentinel = tf.strings.join(["<extra_id_", tf.strings.as_string(span), ">"])
    inputs = tf.boolean_mask(tf.where(start, sentinel, words), ~masked | start)
    targets = tf.where(start, tf.strings.join([sentinel, words], " "), words)
    num_spans = tf.reduce_sum(tf.cast(start, tf.int32))
    last = tf.strings.join(["<extra_id_", tf.strings.as_string(num_spans), ">"])
    targets = tf.concat([tf.boolean_mask(targets, masked), [last]], 0)
    return _out(ex, _prompt(MLM_PROMPT, _join(inputs)), _join(targets))
  return _map(ds, fn, num_parallel_calls)


def image_text_matching(ds: tf.data.Dataset, negative_rate: float = 0.5,
                        buffer_size: int = 64, seed: int = 0) -> tf.data.Dataset:
  """ITM (seed 001 sec. 3): "match: <caption>" -> "yes", or "no" for another caption.

  A per-example coin (probability negative_rate) picks a negative. Its caption comes
  from a ring buffer of the captions of the last `buffer_size` examples of the stream
  (a `Dataset.scan`): starting at a random slot, the first caption that differs from
  the example's own. If none differs (e.g. the stream's first example), the example
  stays positive, so the realised rate is a little under negative_rate on streams with
  many repeated captions. Captions are whitespace-normalised so that positives and
  negatives look alike. Which caption a negative gets depends on the stream's order
  (shuffle the source first); the coin and slot do not. Keeps no other features.
  """
  if not 0.0 <= negative_rate <= 1.0 or buffer_size < 1:
    raise ValueError(f"Need 0 <= negative_rate <= 1 and buffer_size >= 1, got "
                     f"{negative_rate}, {buffer_size}.")

  def step(state, ex):
    buf, count = state
    text = _join(_words(ex["caption"]))
    s = _example_seed(ex, seed, "itm", "caption")
    filled = tf.cast(tf.minimum(count, buffer_size), tf.int32)
    start = _randint(s, 1, 0, tf.maximum(filled - 1, 0))
    slots = (start + tf.range(filled)) % tf.maximum(filled, 1)
    candidates = tf.concat([tf.gather(buf, slots), [text]], 0)
    differs = tf.not_equal(candidates, text)
    negative = (_uniform(s, 0) < negative_rate) & tf.reduce_any(differs)
    other = candidates[tf.argmax(tf.cast(differs, tf.int32), output_type=tf.int32)]
    buf = tf.tensor_scatter_nd_update(buf, [[count % buffer_size]], [text])
    inputs = _prompt(MATCH_PROMPT, tf.where(negative, other, text))
    return (buf, count + 1), _out(ex, inputs, tf.where(negative, NO, YES))
  return ds.scan((tf.fill([buffer_size], ""), tf.constant(0, tf.int64)), step)


# ---------------------------------------------------------------------------
# Object-aware tasks from image-level labels (seed 001 sec. 3, tasks 1-4; app. C).
# ---------------------------------------------------------------------------
def _label_set(label_set: Sequence[str]) -> tf.Tensor:
  unique = list(dict.fromkeys(label_set))
  if not unique:
    raise ValueError("label_set is empty: pass the dataset's class names.")
  return tf.constant(unique, tf.string)


def _present_absent(ex, labels_set):
  """The image's labels (unique, in given order) and label_set minus them."""
  present = tf.unique(tf.reshape(ex["labels"], [-1])).y
  hit = tf.reduce_any(tf.equal(labels_set[:, None], present[None, :]), axis=1)
  return present, tf.boolean_mask(labels_set, ~hit)


def _ask(present, absent, p, q, s):
  """p present and q absent objects, shuffled; returns (objects, is_present)."""
  objects = tf.concat([_sample(present, p, _fold(s, 10)),
                       _sample(absent, q, _fold(s, 11))], 0)
  is_present = tf.concat([tf.ones([p], tf.bool), tf.zeros([q], tf.bool)], 0)
  order = _sample(tf.range(p + q), p + q, _fold(s, 12))
  return tf.gather(objects, order), tf.gather(is_present, order)


def _enumerate(items, conjunction):
  """"a", "a <conj> b", "a, b <conj> c"."""
  last = _join(items[-1:])
  both = tf.strings.join([_join(items[:-1], ", "), conjunction, last], " ")
  return tf.where(tf.size(items) > 1, both, last)


def list_objects(ds: tf.data.Dataset,
                 num_parallel_calls: int = AUTOTUNE) -> tf.data.Dataset:
  """Task 1 (seed 001 sec. 3): "list all objects" -> "a, b, c".

  The image's labels in the order the source gives them (shapes: left to right),
  duplicates dropped after their first occurrence. Examples without labels are dropped.
  """
  def fn(ex):
    labels = tf.unique(tf.reshape(ex["labels"], [-1])).y
    return _out(ex, tf.constant(LIST_PROMPT), _join(labels, ", "))
  ds = ds.filter(lambda ex: tf.size(ex["labels"]) > 0)
  return _map(ds, fn, num_parallel_calls)


def object_exists(ds: tf.data.Dataset, label_set: Sequence[str],
                  negative_rate: float = 0.5, seed: int = 0,
                  num_parallel_calls: int = AUTOTUNE) -> tf.data.Dataset:
  """Task 2 (seed 001 sec. 3): "does <object> exist?" -> "yes" / "no".

  With probability negative_rate the object is drawn from label_set minus the image's
  labels (answer "no"), else from the image's labels ("yes"); when one side is empty
  the other is used.
  """
  return _exists(ds, label_set, 1, "or", negative_rate, seed, num_parallel_calls,
                 "exists")


def objects_exist_any(ds: tf.data.Dataset, label_set: Sequence[str],
                      num_objects: int = 3, conjunction: str = "or",
                      negative_rate: float = 0.5, seed: int = 0,
                      num_parallel_calls: int = AUTOTUNE) -> tf.data.Dataset:
  """Task 3 (seed 001 sec. 3): "does X, Y <conjunction> Z exist?" -> "yes" / "no".

  Seed 001 writes "Does [obj1], [obj2] and/or [obj3] exist?"; seed 000 A.3 spells out
  the two variants ("Does object X and Object Y exist", "Does object X or object Y"):
    "or"      yes iff at least one of the objects is among the image's labels;
    "and"     yes iff all of them are;
    "and/or"  the seed's literal wording, with the meaning of "or".
  n = min(num_objects, |label_set ∪ labels|) objects are asked, in random order.
  With probability negative_rate the answer is "no": "or" asks only absent objects;
  "and" asks 1..n absent ones (more if the image has too few labels), the rest
  present. Otherwise "yes": "or" asks 1..n present objects, the rest absent; "and"
  asks only present ones (fewer than n if the image has fewer labels). Absent objects
  come from label_set minus the image's labels.
  """
  return _exists(ds, label_set, num_objects, conjunction, negative_rate, seed,
                 num_parallel_calls, "multi_exists")


def _exists(ds, label_set, num_objects, conjunction, negative_rate, seed,
            num_parallel_calls, salt):
  if conjunction not in CONJUNCTIONS:
    raise ValueError(f"conjunction must be one of {sorted(CONJUNCTIONS)}, "
                     f"got {conjunction!r}.")
  if num_objects < 1 or not 0.0 <= negative_rate <= 1.0:
    raise ValueError(f"Need num_objects >= 1 and 0 <= negative_rate <= 1, got "
                     f"{num_objects}, {negative_rate}.")
  labels_set, want_all = _label_set(label_set), conjunction == "and"

  def fn(ex):
    present, absent = _present_absent(ex, labels_set)
    npos, nneg = tf.size(present), tf.size(absent)
    n = tf.minimum(num_objects, npos + nneg)
    s = _example_seed(ex, seed, salt, "labels")
    no = ((_uniform(s, 0) < negative_rate) & (nneg > 0)) | (npos == 0)
    if want_all:
      q = tf.where(no, _randint(s, 1, 1, tf.maximum(tf.minimum(n, nneg), 1)), 0)
      p = tf.where(no, tf.minimum(n - q, npos), tf.minimum(n, npos))
      q = tf.where(no, tf.minimum(n - p, nneg), 0)  # Tops up when few are present.
    else:
      p = tf.where(no, 0, _randint(s, 1, 1, tf.maximum(tf.minimum(n, npos), 1)))
      q = tf.minimum(n - p, nneg)
    objects, is_present = _ask(present, absent, p, q, s)
    answer = CONJUNCTIONS[conjunction](is_present)
    question = tf.strings.join(["does ", _enumerate(objects, conjunction), " exist?"])
    return _out(ex, question, tf.where(answer, YES, NO))
  return _map(ds, fn, num_parallel_calls)


def which_objects_exist(ds: tf.data.Dataset, label_set: Sequence[str],
                        num_objects: int = 3, seed: int = 0,
                        num_parallel_calls: int = AUTOTUNE) -> tf.data.Dataset:
  """Task 4 (seed 001 sec. 3): "which of X, Y and Z exist?" -> "X, Z" (or "none").

  n = min(num_objects, |label_set ∪ labels|) objects: p ~ U{0..min(n, #labels)} of the
  image's labels, the rest from label_set minus them (more present ones if too few
  are absent), in random order. The target lists the present ones in the order asked,
  joined by ", " like task 1 (the seed's "[obj1], [obj2]."; its final "." is read as
  the sentence's), or "none" when none is present.
  """
  if num_objects < 1:
    raise ValueError(f"num_objects must be >= 1, got {num_objects}.")
  labels_set = _label_set(label_set)

  def fn(ex):
    present, absent = _present_absent(ex, labels_set)
    npos, nneg = tf.size(present), tf.size(absent)
    n = tf.minimum(num_objects, npos + nneg)
    s = _example_seed(ex, seed, "which", "labels")
    q = tf.minimum(n - _randint(s, 1, 0, tf.minimum(n, npos)), nneg)
    objects, is_present = _ask(present, absent, n - q, q, s)
    found = tf.boolean_mask(objects, is_present)
    targets = tf.where(tf.size(found) > 0, _join(found, ", "), NONE)
    question = tf.strings.join(["which of ", _enumerate(objects, "and"), " exist?"])
    return _out(ex, question, targets)
  return _map(ds, fn, num_parallel_calls)


# ---------------------------------------------------------------------------
# Downstream formatting.
# ---------------------------------------------------------------------------
def vqa(ds: tf.data.Dataset) -> tf.data.Dataset:
  """VQA2 / GQA: "question: <question>" -> answer (as in tasks/shapes.py).

  Reads scalar `question` and `answer`; choosing one answer among annotators' (VQA2)
  is the source's job.
  """
  return _map(ds, lambda ex: _out(ex, _prompt(QUESTION_PROMPT, ex["question"]),
                                  ex["answer"]))


def visual_entailment(ds: tf.data.Dataset) -> tf.data.Dataset:
  """SNLI-VE: "hypothesis: <hypothesis>" -> entailment / neutral / contradiction.

  `label` is that string, or an integer index into ENTAILMENT_LABELS (0, 1, 2).
  """
  def fn(ex):
    label = ex["label"]
    if label.dtype != tf.string:
      label = tf.gather(tf.constant(ENTAILMENT_LABELS), tf.cast(label, tf.int32))
    return _out(ex, _prompt(HYPOTHESIS_PROMPT, ex["hypothesis"]), label)
  return _map(ds, fn)
