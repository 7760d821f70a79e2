"""Serving a vlpretrain export: (encoded image bytes, prompt text) -> generated text or
a label; for a dual encoder, image or text -> embedding and (image, text) -> match.

This file is copied into every export artifact as `serve.py`. It is self-contained: it
needs numpy, jax, Pillow and sentencepiece, never vlpretrain or TensorFlow.

    import serve                                   # from the artifact directory
    predictor = serve.load("/path/to/artifact")
    predictor.predict(open("x.png", "rb").read(), "question: what color is the circle?")

    python serve.py /path/to/artifact --image x.png --prompt "question: what shape is it?"
    -> {"prediction": "circle"}            (a bad request: {"error": "..."}, exit code 2)

    A dual encoder (VLMo): `predictor.embed_image(bytes)`, `.embed_text(text)` (unit
    vectors) and `.match(bytes, text)` (log p(match)); the CLI prints
    {"image_embedding": [...]} for --image alone, {"text_embedding": [...]} for
    --prompt alone, and {"similarity": ..., "match_log_prob": ...} for both.

Artifact files (written by `vlpretrain export`):
  config.json            sizes, limits, token ids, file names, "functions": each
                         function's file, inputs and kind of output ("labels" for a
                         classifier)
  serving_fn.jax_export  `jax.export` serialization of 'generate':
                         f(params: list of arrays, image f32[B,S,S,3], tokens i32[B,L])
                         -> i32[B,T], greedy decoding with the KV cache; B is symbolic
  <name>.jax_export      the other functions: classify (-> i32[B]), embed_image,
                         embed_text (-> f32[B,D]), match (-> f32[B])
  params.npz             the params, `p00000`, `p00001`, ... in jax.tree.leaves order
  spm.model              the SentencePiece model as seqio uses it (extra ids included)
  serve.py               this file

Preprocessing reproduces the training pipeline (vlpretrain.data.images,
seqio.preprocessors.tokenize, append_eos_after_trim):
  * image: decoded to 8-bit RGB (grey is replicated, alpha dropped, palette expanded,
    16-bit samples keep their high byte, as tf.io.decode_image(channels=3) does); an
    image of the model's size is used as is (tf's antialiased bilinear resize is the
    identity then, bit for bit); any other size is resized by a numpy port of
    tf.image.resize(method='bilinear', antialias=True) (TensorFlow's
    ScaleAndTranslate with the triangle kernel, in float32, same order of operations);
    then x / 127.5 - 1 clipped to [-1, 1].
  * prompt: SentencePiece ids + EOS, padded with 0 to the input length. Training trims
    long inputs silently; serving rejects them instead.
  * output: ids cut after the first EOS, ids beyond the SentencePiece model as UNK, then
    decoded (seqio's `Vocabulary.decode`).
"""
import argparse
import io
import json
import os
import sys
import warnings

import numpy as np

# Formats tf.io.decode_image reads (the training pipeline's decoder).
SUPPORTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP")


# ----------------------------------------------------------------------------- image
def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
  """Encoded bytes -> uint8 (H, W, 3) RGB, as tf.io.decode_image(channels=3).

  Raises ValueError for anything that is not one whole PNG/JPEG/GIF/BMP image within
  the size limits. The pixel limit is checked from the header, before decoding.
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise ValueError(f"image must be bytes, got {type(data).__name__}.")
  data = bytes(data)
  if not data:
    raise ValueError("image is empty (0 bytes).")
  if len(data) > max_bytes:
    raise ValueError(f"image is {len(data)} bytes; the limit is {max_bytes} bytes.")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
    try:
      image = PIL.Image.open(io.BytesIO(data))
    except PIL.Image.DecompressionBombError as e:
      raise ValueError(f"image has too many pixels ({e}).") from None
    except Exception:  # pylint: disable=broad-except  (PIL raises several types)
      raise ValueError("image is not a readable image file (expected PNG, JPEG, GIF or "
                       "BMP bytes).") from None
    if image.format not in SUPPORTED_FORMATS:
      raise ValueError(f"image format {image.format} is not supported; use one of "
                       f"{', '.join(SUPPORTED_FORMATS)}.")
    width, height = image.size
    if width < 1 or height < 1:
      raise ValueError(f"image has no pixels ({width}x{height}).")
    if width * height > max_pixels:
      raise ValueError(f"image is {width}x{height} = {width * height} pixels; the limit "
                       f"is {max_pixels} pixels.")
    try:
      image.load()
      return _to_rgb8(image)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"image data is truncated or corrupt ({type(e).__name__}: "
                       f"{e}).") from None


def _to_rgb8(image) -> np.ndarray:
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    # 16-bit grey: tf keeps the high byte (convert_image_dtype uint16 -> uint8).
    grey = (np.asarray(image, np.uint32) >> 8).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
  return np.asarray(image.convert("RGB"), np.uint8)


def _spans(in_size: int, out_size: int):
  """Start index and normalised weights of each output pixel (TensorFlow's
  ComputeSpansCore for the triangle kernel, antialiased, translation 0)."""
  f32 = np.float32
  scale = f32(out_size) / f32(in_size)
  inv_scale = f32(1.0 / float(scale))      # C++: float inv_scale = 1.0 / scale;
  inv_translate = f32(-inv_scale * f32(0.0))
  kernel_scale = max(inv_scale, f32(1.0))
  one_over_kernel_scale = f32(f32(1.0) / kernel_scale)
  radius = f32(1.0)
  span_size = min(2 * int(np.ceil(radius * kernel_scale)) + 1, in_size)
  starts = np.zeros(out_size, np.int64)
  weights = np.zeros((out_size, span_size), np.float32)
  for x in range(out_size):
    sample = f32(f32(f32(x) + f32(0.5)) * inv_scale) + inv_translate
    if sample < 0 or sample > in_size:
      continue
    start = int(np.ceil(f32(f32(sample - f32(radius * kernel_scale)) - f32(0.5))))
    end = int(np.floor(f32(f32(sample + f32(radius * kernel_scale)) - f32(0.5))))
    start = min(max(start, 0), in_size - 1)
    end = min(max(end, 0), in_size - 1) + 1
    total = f32(0.0)
    raw = []
    for source in range(start, end):
      pos = f32(f32(f32(source) + f32(0.5)) - sample)
      z = abs(f32(pos * one_over_kernel_scale))
      w = f32(1.0) - z if z < f32(1.0) else f32(0.0)
      total = f32(total + w)
      raw.append(w)
    if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
      inv_total = f32(f32(1.0) / total)
      weights[x, :len(raw)] = [f32(w * inv_total) for w in raw]
    starts[x] = start
  return starts, weights


def _gather(image: np.ndarray, axis: int, starts, weights) -> np.ndarray:
  """Weighted sums along `axis` in float32, in TensorFlow's order of accumulation."""
  size = image.shape[axis]
  out_shape = list(image.shape)
  out_shape[axis] = len(starts)
  out = np.zeros(out_shape, np.float32)
  for i in range(weights.shape[1]):
    index = np.minimum(starts + i, size - 1)   # Weight 0 where the span is shorter.
    w = weights[:, i]
    shape = [1, 1, 1]
    shape[axis] = len(starts)
    out += w.reshape(shape) * np.take(image, index, axis=axis)
  return out


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """float32 (H, W, C) -> (size, size, C), tf.image.resize(bilinear, antialias=True).

  Height first, then width, as TensorFlow's GatherSpans does; an image already of
  `size` x `size` is returned unchanged (what tf computes then, exactly).
  """
  image = np.asarray(image, np.float32)
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  image = _gather(image, 0, *_spans(h, size))
  return _gather(image, 1, *_spans(w, size))


def preprocess_image(data: bytes, size: int, max_bytes: int,
                     max_pixels: int) -> np.ndarray:
  """Encoded bytes -> float32 (size, size, 3) in [-1, 1], as the training pipeline."""
  rgb = decode_image(data, max_bytes, max_pixels).astype(np.float32)
  x = resize(rgb, size)
  return np.clip(x / np.float32(127.5) - np.float32(1.0), -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------ predictor
def _functions(config) -> dict:
  """name -> {file, inputs, output}; format 1 artifacts have one 'generate'."""
  if "functions" in config:
    return config["functions"]
  return {"generate": {"file": config["serving_fn"], "inputs": ["image", "tokens"],
                       "output": "tokens"}}


class Predictor:
  """Loaded artifact: `predict(image_bytes, prompt) -> text` (generation or a label);
  `embed_image`, `embed_text`, `match` for a dual encoder."""

  def __init__(self, artifact_dir: str):
    import jax  # pylint: disable=g-import-not-at-top
    from jax import export as jax_export  # pylint: disable=g-import-not-at-top
    import sentencepiece  # pylint: disable=g-import-not-at-top
    self.artifact_dir = artifact_dir
    with open(os.path.join(artifact_dir, "config.json"), encoding="utf-8") as f:
      self.config = json.load(f)
    cfg = self.config
    self.functions = _functions(cfg)
    self._exported = {}
    for name, spec in self.functions.items():
      with open(os.path.join(artifact_dir, spec["file"]), "rb") as f:
        self._exported[name] = jax_export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(artifact_dir, cfg["params"])) as npz:
      self._params = [jax.device_put(npz[f"p{i:05d}"]) for i in range(cfg["num_params"])]
    self._input_sp = sentencepiece.SentencePieceProcessor()
    self._input_sp.LoadFromSerializedProto(
        open(os.path.join(artifact_dir, cfg["input_vocabulary"]), "rb").read())
    self._output_sp = None
    if "output_vocabulary" in cfg:  # Generation; a classifier has "labels".
      self._output_sp = sentencepiece.SentencePieceProcessor()
      self._output_sp.LoadFromSerializedProto(
          open(os.path.join(artifact_dir, cfg["output_vocabulary"]), "rb").read())

  # ------------------------------------------------------------- preprocessing
  def image(self, data: bytes) -> np.ndarray:
    cfg = self.config
    return preprocess_image(data, cfg["image_size"], cfg["max_image_bytes"],
                            cfg["max_image_pixels"])

  def tokens(self, prompt: str) -> np.ndarray:
    """Prompt -> int32 (input_length,): ids + EOS, zero-padded."""
    if not isinstance(prompt, str):
      raise ValueError(f"prompt must be text, got {type(prompt).__name__}.")
    if not prompt.strip():
      raise ValueError("prompt is empty.")
    ids = list(self._input_sp.EncodeAsIds(prompt))
    length = self.config["input_length"]
    if len(ids) + 1 > length:
      raise ValueError(
          f"prompt is {len(ids)} tokens; the model takes at most {length - 1} (plus EOS).")
    out = np.zeros(length, np.int32)
    out[:len(ids)] = ids
    out[len(ids)] = self.config["eos_id"]
    return out

  def decode(self, ids) -> str:
    """seqio's Vocabulary.decode: ids >= the model's pieces are UNK; cut after EOS."""
    sp = self._output_sp
    size, unk, eos = sp.GetPieceSize(), sp.unk_id(), self.config["eos_id"]
    ids = [unk if int(i) >= size else int(i) for i in ids]
    if eos in ids:
      ids = ids[:ids.index(eos) + 1]
    return sp.DecodeIds(ids)

  # ------------------------------------------------------------------- predict
  def _call(self, name: str, *inputs) -> np.ndarray:
    if name not in self._exported:
      raise ValueError(f"this artifact serves {sorted(self._exported)}, not {name!r}.")
    return np.asarray(self._exported[name].call(self._params, *inputs))

  def _answer_function(self) -> str:
    for name in ("generate", "classify"):
      if name in self._exported:
        return name
    raise ValueError(f"this artifact serves {sorted(self._exported)}: it answers no "
                     "prompts (a dual encoder: use embed_image / embed_text / match).")

  def predict_ids(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Preprocessed batch -> generated ids (B, target_length), or label ids (B,)."""
    return self._call(self._answer_function(), np.asarray(images, np.float32),
                      np.asarray(tokens, np.int32))

  def _answer(self, ids) -> str:
    if self._answer_function() == "classify":
      labels = self.config["labels"]
      return labels[int(ids)] if 0 <= int(ids) < len(labels) else ""
    return self.decode(ids)

  def predict_batch(self, requests) -> list:
    """[(image_bytes, prompt), ...] -> [text, ...] in one batch.

    If any request is bad, none is answered: the ValueError names every bad request
    by its index and says why.
    """
    requests = list(requests)
    if not requests:
      return []
    images, tokens, bad = [], [], []
    for i, (data, prompt) in enumerate(requests):
      try:
        images.append(self.image(data))
        tokens.append(self.tokens(prompt))
      except ValueError as e:
        bad.append(f"request {i}: {e}")
    if bad:
      raise ValueError(f"{len(bad)} of {len(requests)} requests are bad, so none was "
                       f"answered: {'; '.join(bad)}")
    return [self._answer(row) for row in self.predict_ids(np.stack(images),
                                                          np.stack(tokens))]

  def predict(self, image_bytes: bytes, prompt: str) -> str:
    """(encoded image bytes, prompt text) -> generated text (greedy), or the label."""
    image, tokens = self.image(image_bytes), self.tokens(prompt)
    return self._answer(self.predict_ids(image[None], tokens[None])[0])

  # -------------------------------------------------------------- dual encoder
  def embed_image(self, image_bytes: bytes) -> np.ndarray:
    """(D,) unit-norm image embedding."""
    return self._call("embed_image", self.image(image_bytes)[None])[0]

  def embed_text(self, text: str) -> np.ndarray:
    """(D,) unit-norm text embedding."""
    return self._call("embed_text", self.tokens(text)[None])[0]

  def match(self, image_bytes: bytes, text: str) -> float:
    """log p(the text matches the image), from the matching head."""
    return float(self._call("match", self.image(image_bytes)[None],
                            self.tokens(text)[None])[0])


def load(artifact_dir: str) -> Predictor:
  """Loads an export artifact directory."""
  return Predictor(artifact_dir)


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description="Answer a prompt about an image with an exported vlpretrain model.")
  parser.add_argument("artifact", help="the export directory (holds config.json)")
  parser.add_argument("--image", help="image file (PNG, JPEG, GIF, BMP)")
  parser.add_argument("--prompt", help='the text, e.g. "question: what is it?"')
  args = parser.parse_args(argv)
  if args.image is None and args.prompt is None:
    parser.error("give --image and/or --prompt")
  data = None
  if args.image is not None:
    try:
      with open(args.image, "rb") as f:
        data = f.read()
    except OSError as e:
      print(json.dumps({"error": f"cannot read image file {args.image!r}: "
                                 f"{e.strerror or e}"}))
      return 2
  try:
    predictor = load(args.artifact)
  except (OSError, ValueError, KeyError) as e:
    print(json.dumps({"error": f"cannot load artifact {args.artifact!r}: {e}"}))
    return 2
  try:
    if "embed_image" in predictor.functions:  # A dual encoder.
      out = {}
      if data is not None:
        out["image_embedding"] = predictor.embed_image(data).tolist()
      if args.prompt is not None:
        out["text_embedding"] = predictor.embed_text(args.prompt).tolist()
      if data is not None and args.prompt is not None:
        out = {"similarity": float(np.dot(out["image_embedding"], out["text_embedding"])),
               "match_log_prob": predictor.match(data, args.prompt)}
    elif data is None or args.prompt is None:
      raise ValueError("this model answers a prompt about an image: give --image and "
                       "--prompt.")
    else:
      out = {"prediction": predictor.predict(data, args.prompt)}
  except ValueError as e:
    print(json.dumps({"error": str(e)}))
    return 2
  print(json.dumps(out, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
