"""seqio-style metric functions for generated (open-vocabulary) answers.

Every metric is `fn(targets, predictions) -> {name: value}` with values in percent, ready
for a seqio Task's `metric_fns`. Strings may be `str` or `bytes` (decoded as UTF-8).

  * `vqa_accuracy` (VQA v2): targets are the 10 annotator answers of each question.
  * `vqa_accuracy_by_type`: the same plus a breakdown per answer type.
  * `exact_match` (GQA, SNLI-VE, MSRVTT-QA, MSVD-QA): normalised string equality.
  * `ivqa_accuracy` (iVQA): targets are the 5 annotator answers of each question.
  * `box_accuracy` (RefCOCO/+/g): predictions are boxes written as text (`box_to_text`).
"""
import math
import re
from typing import Callable, Optional, Sequence

# ------------------------------------------------------------------ strings


def _to_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _answers(target) -> list:
  """A target as a list of answer strings: one string, or a sequence of them."""
  if isinstance(target, (str, bytes)):
    return [_to_str(target)]
  return [_to_str(t) for t in target]


def _check_lengths(targets, predictions):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def _percent(scores: Sequence[float]) -> float:
  return 100.0 * sum(scores) / len(scores) if scores else 0.0


# ------------------------------------------------------- VQA normalisation
# The official VQA v2 evaluation (GT-Vision-Lab/VQA, PythonEvaluationTools/
# vqaEvaluation/vqaEval.py), rule for rule:
#  * the prediction: newlines and tabs become spaces, surrounding whitespace is
#    stripped, then `process_punctuation` and `process_digit_article`;
#  * the annotators' answers: left as they are when all ten are the same string, else
#    `process_punctuation` only (no lower-casing, number words or articles: the
#    released annotations are already normalised that way);
#  * accuracy: for each annotator, min(#other annotators whose answer equals the
#    prediction / 3, 1), averaged over the annotators (leave-one-out).
# So a prediction "2" scores 0 against ten "two" (those are not normalised) and "two"
# scores 1 against ten "2" (the prediction becomes "2").
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
              ">", "<", "@", "`", ",", "?", "!"]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The script's pattern as written: a period not followed by a digit (its leading
# "(?!<=\d)" is a lookahead that never fails on a period). It calls
# `sub("", text, re.UNICODE)`, whose third argument is `count`, so at most
# re.UNICODE = 32 periods go; kept for exactness.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The script's contraction table, every entry (the capitalised keys such as "Im" can
# never match a lower-cased word; they are there in the original too).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've"}


def process_punctuation(text: str) -> str:
  """The script's processPunctuation: each mark of _VQA_PUNCT is deleted if it touches
  a space in the text, or if the text has a comma between two digits ("1,000" ->
  "1000"), else replaced by a space ("red,blue" -> "red blue"); then periods not
  before a digit are deleted ("2.5" keeps its period)."""
  out = text
  delete_all = _COMMA_STRIP.search(text) is not None
  for p in _VQA_PUNCT:
    if delete_all or p + " " in text or " " + p in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
  """The script's processDigitArticle: lower-case, split into words, number words to
  digits, articles dropped, apostrophe-less contractions restored, joined by spaces."""
  words = [_NUMBERS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(answer) -> str:
  """A prediction normalised as the official VQA v2 evaluation normalises it."""
  text = _to_str(answer).replace("\n", " ").replace("\t", " ").strip()
  return process_digit_article(process_punctuation(text))


def vqa_score(answers: Sequence, prediction) -> float:
  """VQA v2 accuracy of one prediction against its annotator answers, in [0, 1], as the
  official evaluation computes it (rules above).

  With 10 answers, m equal to the prediction give 0.3, 0.6, 0.9, 1.0 for m = 1, 2, 3,
  >= 4. One answer alone (which VQA v2 never has: the script would give 0, as it
  leaves that annotator out) scores 1 on a match, else 0.
  """
  pred = normalize_vqa_answer(prediction)
  answers = [_to_str(a) for a in answers]
  if len(set(answers)) > 1:
    answers = [process_punctuation(a) for a in answers]
  matches = [a == pred for a in answers]
  if len(matches) == 1:
    return float(matches[0])
  total = sum(matches)
  subsets = [min((total - m) / 3.0, 1.0) for m in matches]  # drop one annotator each
  return sum(subsets) / len(subsets)


def vqa_accuracy(targets, predictions) -> dict:
  """VQA v2 accuracy (%), `vqa_score` averaged over questions."""
  _check_lengths(targets, predictions)
  scores = [vqa_score(_answers(t), p) for t, p in zip(targets, predictions)]
  return {"vqa_accuracy": _percent(scores)}


def vqa_accuracy_by_type(targets, predictions, answer_types) -> dict:
  """`vqa_accuracy` plus "vqa_accuracy/<type>" per answer type ("yes/no", "number",
  "other" in VQA v2), each the mean over the questions of that type only."""
  _check_lengths(targets, predictions)
  _check_lengths(targets, answer_types)
  by_type = {}
  for t, p, kind in zip(targets, predictions, answer_types):
    by_type.setdefault(_to_str(kind), []).append(vqa_score(_answers(t), p))
  result = vqa_accuracy(targets, predictions)
  for kind, scores in sorted(by_type.items()):
    result[f"vqa_accuracy/{kind}"] = _percent(scores)
  return result


# -------------------------------------------------- exact match and iVQA


def normalize_text(text) -> str:
  """Lower-case, strip, collapse whitespace runs, drop one trailing period."""
  text = " ".join(_to_str(text).lower().split())
  return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(targets, predictions) -> dict:
  """Accuracy (%) of `normalize_text(prediction) == normalize_text(target)` (GQA,
  SNLI-VE, MSRVTT-QA, MSVD-QA). A list target accepts any of its answers."""
  _check_lengths(targets, predictions)
  scores = [float(normalize_text(p) in {normalize_text(a) for a in _answers(t)})
            for t, p in zip(targets, predictions)]
  return {"exact_match": _percent(scores)}


def ivqa_accuracy(targets, predictions) -> dict:
  """iVQA accuracy (%) (Yang et al., 2021, "Just Ask"): each question has 5 annotator
  answers and a prediction a scores min(#answers equal to a / 2, 1), so two agreeing
  annotators give full credit (no leave-one-out averaging, unlike VQA v2). Answers are
  compared after `normalize_text`."""
  _check_lengths(targets, predictions)
  scores = []
  for t, p in zip(targets, predictions):
    pred = normalize_text(p)
    scores.append(min(sum(normalize_text(a) == pred for a in _answers(t)) / 2.0, 1.0))
  return {"ivqa_accuracy": _percent(scores)}


# ------------------------------------------------------------ boxes (RefCOCO)
# Box-as-text (seed 001, appendix B, after Pix2Seq): a box [ymin, xmin, ymax, xmax] of
# coordinates normalised to [0, 1] is written in the order [ymax, xmax, ymin, xmin],
# each coordinate quantised to one of `bins` integers 0..bins-1 as round(v * (bins - 1))
# (so 0 -> 0 and 1 -> bins - 1), and the integers are joined by single spaces. The
# tokenizer appends EOS. Reading the text back maps an integer i to i / (bins - 1).
# The round trip moves each coordinate by at most half a bin (0.5 / 99); the IoU it
# costs grows as boxes shrink: mean 0.983 for sides uniform in [0.3, 1], 0.980 in
# [0.2, 1], 0.911 over all random boxes, where tiny ones can vanish (tests/test_metrics.py).


_UNSIGNED_INT = re.compile(r"[0-9]+")


def box_to_text(box: Sequence[float], bins: int = 100) -> str:
  """[ymin, xmin, ymax, xmax] in [0, 1] -> "ymax xmax ymin xmin" as integers."""
  ymin, xmin, ymax, xmax = (min(max(float(v), 0.0), 1.0) for v in box)
  return " ".join(str(math.floor(v * (bins - 1) + 0.5)) for v in (ymax, xmax, ymin, xmin))


def text_to_box(text, bins: int = 100) -> Optional[list]:
  """Inverse of `box_to_text`: [ymin, xmin, ymax, xmax], or None unless the text is
  exactly 4 whitespace-separated integers in 0..bins-1."""
  fields = _to_str(text).split()
  if len(fields) != 4 or not all(_UNSIGNED_INT.fullmatch(f) for f in fields):
    return None
  ymax, xmax, ymin, xmin = (int(f) for f in fields)
  if max(ymax, xmax, ymin, xmin) > bins - 1:
    return None
  return [v / (bins - 1) for v in (ymin, xmin, ymax, xmax)]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  """Intersection over union of two [ymin, xmin, ymax, xmax] boxes; an inverted box
  (max < min) has zero area. Returns 0 when the union is empty."""
  def area(ymin, xmin, ymax, xmax):
    return max(ymax - ymin, 0.0) * max(xmax - xmin, 0.0)
  inter = area(max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
  union = area(*a) + area(*b) - inter
  return inter / union if union > 0 else 0.0


def box_accuracy(targets, predictions, iou_threshold: float = 0.5,
                 parse_fn: Callable = text_to_box) -> dict:
  """RefCOCO accuracy (%): the share of predictions whose box has IoU >= `iou_threshold`
  with the target box (the "AP50"/Acc@0.5 of referring expression comprehension, one
  box per expression). Targets are [ymin, xmin, ymax, xmax] floats or box text;
  predictions are text read by `parse_fn` (text -> box or None). A prediction that does
  not parse (None, or the parser raises) counts as wrong. Bind other arguments with
  functools.partial for seqio."""
  _check_lengths(targets, predictions)
  scores = []
  for t, p in zip(targets, predictions):
    target = parse_fn(t) if isinstance(t, (str, bytes)) else [float(v) for v in t]
    if target is None:
      raise ValueError(f"unparsable target box: {t!r}")
    try:
      box = parse_fn(p)
    except Exception:  # pylint: disable=broad-except
      box = None
    scores.append(float(box is not None and iou(target, box) >= iou_threshold))
  return {"box_accuracy": _percent(scores)}
