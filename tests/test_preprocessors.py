"""Task preprocessors (vlpretrain.data.preprocessors): exact text, seeded randomness."""
import math
import random

import numpy as np
import pytest

from vlpretrain.data import preprocessors as pp
from vlpretrain.data import vocab
import tensorflow as tf
from vlpretrain.tasks import shapes as shapes_tasks

MIN_F, MAX_F = 0.2, 0.6  # caption_completion defaults.
MIN_R, MAX_R = 0.15, 0.25  # masked_language_modeling defaults.
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
LABEL_SET = [f"{c} {s}" for c in COLORS for s in SHAPES]  # 40 labels.
WORDS = ("a", "large", "small", "dog", "on", "the", "grass", "with", "ball") + COLORS


def text_ds(captions, ids=True):
  d = {"image": [f"img{i}" for i in range(len(captions))], "caption": list(captions)}
  if ids:
    d["id"] = np.arange(len(captions), dtype=np.int64)
  return tf.data.Dataset.from_tensor_slices(d)


def label_ds(labels):
  """Examples with a tf.string vector `labels` of varying length."""
  return tf.data.Dataset.from_tensor_slices({
      "id": np.arange(len(labels), dtype=np.int64),
      "image": [f"img{i}" for i in range(len(labels))],
      "labels": tf.ragged.constant([list(ls) for ls in labels], dtype=tf.string)})


def run(ds, **options):
  if options:
    opts = tf.data.Options()
    opts.deterministic = options["deterministic"]
    ds = ds.with_options(opts)
  return [{k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def by_image(out):
  return {ex["image"]: (ex["inputs"], ex["targets"]) for ex in out}


def random_captions(n, seed=0, max_words=30):
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words)))
          for _ in range(n)]


def random_labels(n, seed=0):
  rng = random.Random(seed)
  return [rng.sample(LABEL_SET, rng.randint(0, 4)) for _ in range(n)]


def io(out):
  return [(ex["inputs"], ex["targets"]) for ex in out]


# ----------------------------------------------------------------- captions
def test_caption_uses_the_shapes_prompt():
  assert pp.CAPTION_PROMPT == shapes_tasks.CAPTION_PROMPT
  assert pp.QUESTION_PROMPT == shapes_tasks.QUESTION_PROMPT
  out = run(pp.caption(text_ds(["a red circle", "a dog"])))
  assert out == [{"image": "img0", "inputs": "caption:", "targets": "a red circle"},
                 {"image": "img1", "inputs": "caption:", "targets": "a dog"}]


def test_drop_empty_captions():
  out = run(pp.drop_empty_captions(text_ds(["a", "", "  \t", "b c"])))
  assert [ex["caption"] for ex in out] == ["a", "b c"]


def test_caption_completion_exact_examples():
  caps = ["a large red circle and a small blue square", "one", "two words",
          "  spaced   out\tcaption here  "]
  assert io(run(pp.caption_completion(text_ds(caps)))) == [
      ("complete: a large red circle and", "a small blue square"),  # 4 / 9 words.
      ("complete:", "one"),
      ("complete: two", "words"),
      ("complete: spaced out", "caption here"),
  ]
  assert io(run(pp.caption_completion(text_ds(caps[:1]), seed=3))) == [
      ("complete: a large red circle and a small", "blue square")]


def test_caption_completion_split_fraction_and_determinism():
  caps = random_captions(200)
  ds = text_ds(caps)
  out = run(pp.caption_completion(ds, seed=7))
  fractions = []
  for cap, (inputs, targets) in zip(caps, io(out)):
    words, first, last = cap.split(), inputs.split()[1:], targets.split()
    assert inputs.split()[0] == "complete:" and first + last == words
    n, k = len(words), len(last)
    if n >= 2:
      assert first and last
      assert MIN_F - 1e-9 <= k / n <= MAX_F + 1e-9, (cap, k)
      fractions.append(k / n)
  assert min(fractions) < 0.3 and max(fractions) > 0.5  # Drawn per example.
  # Same split on a second run, with other parallelism, and in another order.
  again = pp.caption_completion(ds, seed=7, num_parallel_calls=1)
  assert run(again) == out
  parallel = pp.caption_completion(ds.shuffle(200, seed=1), seed=7, num_parallel_calls=4)
  assert by_image(run(parallel, deterministic=False)) == by_image(out)
  other_seed = io(run(pp.caption_completion(ds, seed=8)))
  assert sum(a != b for a, b in zip(other_seed, io(out))) > 30
  # Extreme fractions still leave at least one word on each side.
  for inputs, targets in io(run(pp.caption_completion(ds, 0.0, 1.0, seed=7))):
    if len(inputs.split()) + len(targets.split()) >= 3:
      assert len(inputs.split()) >= 2 and targets


# ---------------------------------------------------------------------- MLM
def parse_mlm(inputs, targets):
  """(inputs words with sentinels, {sentinel: words}, final sentinel)."""
  words = inputs.split()
  assert words[0] == "mlm:"
  spans, current, tokens = {}, None, targets.split()
  for t in tokens[:-1]:
    if t.startswith("<extra_id_"):
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  return words[1:], spans, tokens[-1]


def test_mlm_exact_examples():
  caps = ["a large red circle and a small blue square", "dog",
          "x y z w v u t s r q p"]
  assert io(run(pp.masked_language_modeling(text_ds(caps)))) == [
      ("mlm: a large red circle and a <extra_id_0> blue <extra_id_1>",
       "<extra_id_0> small <extra_id_1> square <extra_id_2>"),
      ("mlm: <extra_id_0>", "<extra_id_0> dog <extra_id_1>"),  # At least one word.
      ("mlm: x y z <extra_id_0> v <extra_id_1> t s r q p",
       "<extra_id_0> w <extra_id_1> u <extra_id_2>"),
  ]


def test_mlm_rate_spans_and_determinism():
  caps = random_captions(200, seed=1, max_words=40)
  ds = text_ds(caps)
  out = run(pp.masked_language_modeling(ds, seed=5))
  rates = []
  for cap, (inputs, targets) in zip(caps, io(out)):
    words, (masked_in, spans, final) = cap.split(), parse_mlm(inputs, targets)
    n, m = len(words), sum(len(v) for v in spans.values())
    # Sentinels numbered 0.. left to right, each span non-empty, final one next.
    assert list(spans) == [f"<extra_id_{i}>" for i in range(len(spans))]
    assert all(spans.values()) and final == f"<extra_id_{len(spans)}>"
    assert [w for w in masked_in if w.startswith("<extra")] == list(spans)
    # Consecutive masked words share one sentinel: no two sentinels are adjacent.
    assert not any(a.startswith("<extra") and b.startswith("<extra")
                   for a, b in zip(masked_in, masked_in[1:]))
    restored = [w for t in masked_in for w in (spans[t] if t in spans else [t])]
    assert restored == words
    lo, hi = math.ceil(MIN_R * n - 1e-9), math.floor(MAX_R * n + 1e-9)
    if lo <= hi:  # Some integer count gives a rate in range: it is used.
      assert lo <= m <= hi and (m >= 1), (cap, m)
      assert MIN_R - 1e-9 <= m / n <= MAX_R + 1e-9
    else:  # Nearest count, but at least one word.
      assert m in (max(hi, 1), lo), (cap, m)
    rates.append(m / n)
  assert 0.15 <= np.mean(rates) <= 0.3
  assert run(pp.masked_language_modeling(ds, seed=5, num_parallel_calls=1)) == out
  parallel = pp.masked_language_modeling(ds.shuffle(200, seed=2), seed=5,
                                         num_parallel_calls=4)
  assert by_image(run(parallel, deterministic=False)) == by_image(out)


def test_mlm_sentinels_are_single_shapes_tokens_and_round_trip():
  v = vocab.shapes_vocabulary()
  assert v.extra_ids == 100
  for i in (0, 1, 2, 99):
    assert v.encode(f"<extra_id_{i}>") == [v.vocab_size - 1 - i]
  caps = ["a large red circle and a small blue square", "a small green cross"]
  for ex in run(pp.masked_language_modeling(text_ds(caps), seed=1)):
    for text in (ex["inputs"], ex["targets"]):
      ids = v.encode(text)
      tf_ids = v.encode_tf(tf.constant(text)).numpy().tolist()
      assert ids == tf_ids and v.decode(ids) == text
      sentinels = [t for t in text.split() if t.startswith("<extra_id_")]
      assert [i for i in ids if i >= v.vocab_size - 100] == [
          v.vocab_size - 1 - int(t[len("<extra_id_"):-1]) for t in sentinels]


# ---------------------------------------------------------------------- ITM
def test_itm_exact_examples():
  caps = ["a red circle", "a blue  square", "a red circle", "a dog"]
  assert io(run(pp.image_text_matching(text_ds(caps), seed=0))) == [
      ("match: a red circle", "yes"),
      ("match: a red circle", "no"),
      ("match: a blue square", "no"),  # Whitespace-normalised.
      ("match: a red circle", "no"),
  ]


def test_itm_negatives_differ_and_rate():
  caps = list(dict.fromkeys(random_captions(300, seed=3)))[:200]
  assert len(set(caps)) == 200
  ds = text_ds(caps)
  out = io(run(pp.image_text_matching(ds, negative_rate=0.5, seed=11)))
  negatives = 0
  for i, (cap, (inputs, targets)) in enumerate(zip(caps, out)):
    assert inputs.startswith("match: ")
    text = inputs[len("match: "):]
    if targets == "yes":
      assert text == cap
    else:
      assert targets == "no" and text != cap
      assert text in caps[max(0, i - 64):i]  # From the buffer of earlier examples.
      negatives += 1
  assert 0.4 <= negatives / 200 <= 0.6
  assert io(run(pp.image_text_matching(ds, negative_rate=0.5, seed=11))) == out
  assert 0.15 <= sum(t == "no" for _, t in io(run(
      pp.image_text_matching(ds, negative_rate=0.2, seed=11)))) / 200 <= 0.25
  # Few distinct captions: a negative still never gets the example's own caption.
  dup = [random.Random(i).choice(["a dog", "a cat"]) for i in range(100)]
  for cap, (inputs, targets) in zip(dup, io(run(pp.image_text_matching(text_ds(dup))))):
    assert (inputs == "match: " + cap) == (targets == "yes")
  # No other caption in the buffer: every example stays positive.
  same = io(run(pp.image_text_matching(text_ds(["a  dog"] * 20), negative_rate=1.0)))
  assert same == [("match: a dog", "yes")] * 20


# ------------------------------------------------------------ object-aware
def split_objects(text, prefix, conjunction):
  assert text.startswith(prefix) and text.endswith(" exist?"), text
  body = text[len(prefix):-len(" exist?")]
  head, _, last = body.rpartition(f" {conjunction} ")
  return (head.split(", ") if head else []) + [last]


def test_list_objects_exact():
  labels = [["red circle", "blue square", "red circle"], [], ["black cross"]]
  assert run(pp.list_objects(label_ds(labels))) == [
      {"image": "img0", "inputs": "list all objects",
       "targets": "red circle, blue square"},
      {"image": "img2", "inputs": "list all objects", "targets": "black cross"}]


def test_object_exists_exact_and_negatives():
  labels = [["red circle", "blue square"], ["green cross"], [], ["black diamond"]]
  assert io(run(pp.object_exists(label_ds(labels), LABEL_SET, seed=0))) == [
      ("does red circle exist?", "yes"), ("does purple diamond exist?", "no"),
      ("does green diamond exist?", "no"), ("does black diamond exist?", "yes")]
  labels = random_labels(200)
  out = io(run(pp.object_exists(label_ds(labels), LABEL_SET, seed=1)))
  for ls, (inputs, targets) in zip(labels, out):
    (obj,) = split_objects(inputs, "does ", "or")
    assert obj in LABEL_SET
    assert targets == ("yes" if obj in ls else "no")
    if not ls:
      assert targets == "no"
  assert 0.4 <= sum(t == "no" for _, t in out) / 200 <= 0.6
  # An image with every label of the set can only be asked about its own.
  full = io(run(pp.object_exists(label_ds([LABEL_SET[:3]] * 5), LABEL_SET[:3])))
  assert all(t == "yes" for _, t in full)


@pytest.mark.parametrize("conjunction", ["or", "and", "and/or"])
def test_objects_exist_any_semantics(conjunction):
  labels = random_labels(200, seed=2)
  out = io(run(pp.objects_exist_any(label_ds(labels), LABEL_SET,
                                    conjunction=conjunction, seed=3)))
  for ls, (inputs, targets) in zip(labels, out):
    objs = split_objects(inputs, "does ", conjunction)
    assert len(set(objs)) == len(objs) and set(objs) <= set(LABEL_SET)
    assert len(objs) == 3 or (conjunction == "and" and targets == "yes"
                              and objs and set(objs) <= set(ls))
    present = [o in ls for o in objs]
    expected = all(present) if conjunction == "and" else any(present)
    assert targets == ("yes" if expected else "no"), (ls, inputs, targets)
  assert 0.4 <= sum(t == "no" for _, t in out) / 200 <= 0.6


def test_objects_exist_any_exact():
  labels = [["red circle", "blue square"], ["green cross"],
            ["white circle", "black square", "red cross"], ["yellow diamond"]]
  assert io(run(pp.objects_exist_any(label_ds(labels), LABEL_SET, seed=0))) == [
      ("does white square, black circle or orange square exist?", "no"),
      ("does purple diamond, green circle or black circle exist?", "no"),
      ("does orange circle, orange square or yellow square exist?", "no"),
      ("does red diamond, blue circle or yellow diamond exist?", "yes")]
  assert io(run(pp.objects_exist_any(label_ds(labels), LABEL_SET, seed=0,
                                     conjunction="and"))) == [
      ("does orange square, blue square and black circle exist?", "no"),
      ("does purple diamond, green circle and black circle exist?", "no"),
      ("does orange square, white circle and red cross exist?", "no"),
      ("does yellow diamond exist?", "yes")]  # "and" asks only what there is.
  with pytest.raises(ValueError, match="conjunction"):
    pp.objects_exist_any(label_ds(labels), LABEL_SET, conjunction="nor")
  with pytest.raises(ValueError, match="label_set"):
    pp.object_exists(label_ds(labels), [])


def test_which_objects_exist():
  labels = [["red circle", "blue square"], ["green cross"], []]
  assert io(run(pp.which_objects_exist(label_ds(labels), LABEL_SET, seed=0))) == [
      ("which of purple square, white square and orange square exist?", "none"),
      ("which of orange diamond, green square and green cross exist?", "green cross"),
      ("which of green circle, orange circle and yellow circle exist?", "none")]
  labels = random_labels(200, seed=4)
  out = io(run(pp.which_objects_exist(label_ds(labels), LABEL_SET, seed=5)))
  answers = set()
  for ls, (inputs, targets) in zip(labels, out):
    objs = split_objects(inputs, "which of ", "and")
    assert len(objs) == 3 and len(set(objs)) == 3 and set(objs) <= set(LABEL_SET)
    subset = [o for o in objs if o in ls]
    assert targets == (", ".join(subset) if subset else "none")
    answers.add(len(subset))
  assert answers == {0, 1, 2, 3}
  again = pp.which_objects_exist(label_ds(labels), LABEL_SET, seed=5,
                                 num_parallel_calls=1)
  assert io(run(again)) == out


# --------------------------------------------------------------- downstream
def test_vqa_and_visual_entailment():
  ds = tf.data.Dataset.from_tensor_slices({
      "image": ["i0"], "question": ["what color is the circle?"], "answer": ["red"]})
  assert io(run(pp.vqa(ds))) == [("question: what color is the circle?", "red")]
  for label in (["neutral"], [1]):
    ds = tf.data.Dataset.from_tensor_slices(
        {"image": ["i0"], "hypothesis": ["a dog runs"], "label": label})
    assert io(run(pp.visual_entailment(ds))) == [("hypothesis: a dog runs", "neutral")]
