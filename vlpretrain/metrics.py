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
# The rules of the official VQA v2 evaluation, applied in this order:
#  1. newlines and tabs become spaces, surrounding whitespace is stripped;
#  2. each mark of _VQA_PUNCT is deleted if it touches a space in the answer, or if the
#     answer contains a comma between two digits (so "1,000" -> "1000"); otherwise the
#     mark is replaced by a space ("red,blue" -> "red blue", "yes!" -> "yes ");
#  3. a period not followed by a digit is deleted (so "2.5" keeps its period);
#  4. lower-case and split into words; number words become digits (_NUMBERS, which
#     includes the official "none" -> "0"); the articles "a", "an", "the" are dropped;
#     apostrophe-less contractions are restored (_CONTRACTIONS); words joined by one space.
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
              ">", "<", "@", "`", ",", "?", "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The common entries of the standard VQA contraction mapping (not all of its variants:
# entries whose keys carry stray apostrophes, e.g. "couldnt've", and capitalised keys
# such as "Im", which can never match after lower-casing, are left out).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't",
    "itd": "it'd", "itll": "it'll", "lets": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "oclock": "o'clock", "shant": "shan't",
    "shed": "she'd", "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "somebodys": "somebody's", "someones": "someone's", "thats": "that's",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "wasnt": "wasn't", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whod": "who'd", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd",
    "youll": "you'll", "youre": "you're", "youve": "you've"}


def normalize_vqa_answer(answer) -> str:
  """Normalises an answer as the official VQA v2 evaluation does (rules above)."""
  text = _to_str(answer).replace("\n", " ").replace("\t", " ").strip()
  delete = bool(_DIGIT_COMMA_DIGIT.search(text))
  out = text
  for p in _VQA_PUNCT:
    if delete or p + " " in text or " " + p in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  out = _PERIOD_NOT_BEFORE_DIGIT.sub("", out)
  words = [_NUMBERS.get(w, w) for w in out.lower().split()]
  words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
  return " ".join(words)


def vqa_score(answers: Sequence, prediction) -> float:
  """VQA v2 accuracy of one prediction against its annotator answers, in [0, 1].

  Both sides are normalised (`normalize_vqa_answer`). For each of the n leave-one-out
  subsets of n - 1 annotators the score is min(#annotators in the subset who gave the
  prediction / 3, 1); the accuracy is the mean over the n subsets (n = 10 in VQA v2).
  With 10 answers, m matching ones give 0.3, 0.6, 0.9, 1.0 for m = 1, 2, 3, >= 4.
  A single answer (no subsets to form) scores 1 on a match, else 0.
  """
  pred = normalize_vqa_answer(prediction)
  matches = [normalize_vqa_answer(a) == pred for a in answers]
  if len(matches) == 1:
    return float(matches[0])
  total = sum(matches)
  subsets = [min((total - m) / 3.0, 1.0) for m in matches]  # drop one annotator each
  return sum(subsets) / len(subsets)


def vqa_accuracy(targets, predictions) -> dict:
  """VQA v2 accuracy (%), `vqa_score` averaged over questions.

  Note: the official script normalises the prediction only when the annotators'
  answers are not all identical; here both sides are always normalised, so e.g. "Two"
  also matches ten "2" answers (it would score 0 with the official script).
  """
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
