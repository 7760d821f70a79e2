r"""Export for serving: the model's `export_functions` (models.py) as one artifact.

For the encoder-decoder: (encoded image bytes, prompt text) -> generated text
('generate'); for VLMo's dual encoder: image -> embedding, text -> embedding and
(image, text) -> log p(match) ('embed_image', 'embed_text', 'match'); for a classifier:
(image, text) -> label ('classify').

    vlpretrain export --gin_file=gin/export_easy_vqa.gin \
        --gin.CHECKPOINT_PATH=/tmp/easy_vqa/checkpoints --gin.EXPORT_DIR=/tmp/easy_vqa_export
    python /tmp/easy_vqa_export/serve.py /tmp/easy_vqa_export --image x.png \
        --prompt "question: what color is the shape?"

The artifact directory is loadable without vlpretrain or TensorFlow (numpy, jax, Pillow,
sentencepiece only); see `vlpretrain/export_serve.py`, copied into it as `serve.py`.

Format: `jax.export`. Each function is `f(params: list of arrays, *inputs)` with inputs
image f32[B,S,S,3] and / or tokens i32[B,L] (for 'generate': the model's own encoder
and KV-cached greedy decoding, `model.predict_batch`, -> i32[B,T]), with a symbolic
batch size B, lowered for each of `platforms` (default cpu and cuda) and serialized
with `Exported.serialize()` (StableHLO with compatibility guarantees: a newer jax loads
it) to `<name>.jax_export` ('generate': `serving_fn.jax_export`). The params are stored next to it (params.npz, in
`jax.tree.leaves` order) so the function stays small and the weights stay plain
arrays. Why not a TF SavedModel via jax2tf: it would need TensorFlow at serving time,
and SavedModels from this jax's jax2tf are not guaranteed to load in the pinned
TensorFlow; `jax.export` needs only jax.
"""
import json
import os
import shutil
from typing import Optional, Sequence

from absl import logging
import gin
import jax
import jax.numpy as jnp
import numpy as np

from vlpretrain import checkpoints
from vlpretrain import errors
from vlpretrain import gin_utils
from vlpretrain import utils

FORMAT = "vlpretrain-jax-export"
FORMAT_VERSION = 2  # 2: several functions ("functions"); 1: one "serving_fn".
SERVING_FN = "serving_fn.jax_export"  # The 'generate' function's file.
PARAMS = "params.npz"
SERVE_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_serve.py")


def _sp_model_bytes(vocabulary, which: str) -> bytes:
  sp_model = getattr(vocabulary, "sp_model", None)
  if not sp_model:
    raise errors.ConfigError(
        f"The model's {which} vocabulary ({type(vocabulary).__name__}) is not a "
        "SentencePiece vocabulary: the serving artifact tokenises with SentencePiece.")
  return sp_model


@gin.configurable
def export(*,
           model,
           restore_checkpoint_cfg: utils.RestoreCheckpointConfig,
           output_dir: str,
           task_feature_lengths: dict,
           image_size: Optional[int] = None,
           platforms: Sequence[str] = ("cpu", "cuda"),
           max_image_bytes: int = 20 * 1024 * 1024,
           max_image_pixels: int = 4096 * 4096) -> str:
  """Writes the serving artifact of a checkpoint to `output_dir`; returns its path.

  Args:
    model: the t5x-style model the checkpoint was trained with.
    restore_checkpoint_cfg: CHECKPOINT_PATH and mode ('latest' or 'specific'); `dtype`
      casts the exported params (e.g. 'bfloat16' halves the artifact).
    output_dir: EXPORT_DIR; replaced if it holds an older export.
    task_feature_lengths: the encoder-decoder's {'inputs': L, 'targets': T} (prompt
      length with EOS, generated tokens), an encoder model's {'text': L}.
    image_size: the model's input size S (default: its network config's).
    platforms: jax.export lowering platforms ('cpu', 'cuda', 'rocm', 'tpu').
    max_image_bytes, max_image_pixels: requests above these are rejected.
  """
  if restore_checkpoint_cfg is None or not restore_checkpoint_cfg.path:
    raise errors.ConfigError("CHECKPOINT_PATH is unset: pass --gin.CHECKPOINT_PATH="
                             "/path/to/MODEL_DIR/checkpoints (or a step directory with "
                             "--gin.utils.RestoreCheckpointConfig.mode=\"'specific'\").")
  if not output_dir:
    raise errors.ConfigError("EXPORT_DIR is unset: pass --gin.EXPORT_DIR=/path/to/artifact.")
  if not hasattr(model, "export_functions"):
    raise errors.ConfigError(f"{type(model).__name__} has no export_functions: it cannot "
                             "be exported.")
  functions = model.export_functions(task_feature_lengths)
  output_dir = os.path.abspath(output_dir)
  utils.check_writable_dir(output_dir, "EXPORT_DIR")
  if os.path.isdir(output_dir) and os.listdir(output_dir) and not os.path.exists(
      os.path.join(output_dir, "config.json")):
    raise errors.ConfigError(f"EXPORT_DIR {output_dir!r} exists and is not an export "
                             "artifact: choose an empty or new directory.")
  if image_size is None:
    module = model.module
    image_size = (module.vit_config if hasattr(module, "vit_config")
                  else module.config).image_size
  generates = any(f.output == "tokens" for f in functions.values())
  input_len = task_feature_lengths.get("inputs", task_feature_lengths.get("text"))
  target_len = task_feature_lengths.get("targets") if generates else None
  input_sp = _sp_model_bytes(model.input_vocabulary, "input")
  output_sp = _sp_model_bytes(model.output_vocabulary, "output") if generates else None

  # Params (only) of the checkpoint, on one device.
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  shapes = {k: (1, n) for k, n in
            converter.get_model_feature_lengths(task_feature_lengths).items()}
  shapes["image"] = (1, image_size, image_size, 3)
  abstract, shardings = checkpoints.abstract_params(model, shapes)
  (step_dir, step), = checkpoints.resolve(restore_checkpoint_cfg.path,
                                          restore_checkpoint_cfg.mode)
  params = checkpoints.restore_params(step_dir, abstract, shardings,
                                      restore_checkpoint_cfg.dtype)
  leaves, treedef = jax.tree.flatten(params)
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]

  # The serving functions, exported with a symbolic batch size.
  (b,) = jax.export.symbolic_shape("b")
  specs = {"image": jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.float32),
           "tokens": jax.ShapeDtypeStruct((b, input_len), jnp.int32)}
  param_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
  logging.info("Exporting %s for platforms %s (step %s).", sorted(functions),
               list(platforms), step)
  exported, files = {}, {}
  for name, function in functions.items():
    def serving_fn(flat_params, *inputs, fn=function.fn):
      return fn(jax.tree.unflatten(treedef, flat_params), *inputs)
    exported[name] = jax.export.export(jax.jit(serving_fn), platforms=tuple(platforms))(
        param_specs, *[specs[i] for i in function.inputs])
    files[name] = SERVING_FN if name == "generate" else f"{name}.jax_export"

  # Write into a fresh directory, then move it into place.
  tmp = output_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for name, function in exported.items():
    with open(os.path.join(tmp, files[name]), "wb") as f:
      f.write(function.serialize())
  np.savez(os.path.join(tmp, PARAMS),
           **{f"p{i:05d}": np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)})
  vocab_files = {"input_vocabulary": "spm.model", "output_vocabulary": "spm.model"}
  with open(os.path.join(tmp, "spm.model"), "wb") as f:
    f.write(input_sp)
  if output_sp is not None and output_sp != input_sp:
    vocab_files["output_vocabulary"] = "output_spm.model"
    with open(os.path.join(tmp, "output_spm.model"), "wb") as f:
      f.write(output_sp)
  shutil.copyfile(SERVE_PY, os.path.join(tmp, "serve.py"))
  if output_sp is None:
    del vocab_files["output_vocabulary"]
  config = {
      "format": FORMAT, "format_version": FORMAT_VERSION,
      "functions": {name: {"file": files[name], "inputs": list(f.inputs),
                           "output": f.output} for name, f in functions.items()},
      "params": PARAMS, "num_params": len(leaves), "param_names": names, **vocab_files,
      "image_size": image_size, "input_length": input_len, "target_length": target_len,
      "eos_id": int(model.input_vocabulary.eos_id), "pad_id": 0,
      "max_image_bytes": int(max_image_bytes), "max_image_pixels": int(max_image_pixels),
      "platforms": list(platforms), "jax_version": jax.__version__,
      "checkpoint": step_dir, "step": step,
      "preprocessing": "decode to RGB uint8; tf.image.resize(bilinear, antialias=True) "
                       "to image_size (identity if already that size); x/127.5-1 "
                       "clipped to [-1,1]; prompt: SentencePiece ids + EOS, 0-padded",
  }
  if "generate" in functions:
    config["serving_fn"] = SERVING_FN  # format 1's key, for older readers.
  labels = getattr(model.output_vocabulary, "labels", None)
  if labels is not None:  # A classifier: its ids' label texts.
    config["labels"] = list(labels)
  with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
  if os.path.isdir(output_dir):
    shutil.rmtree(output_dir)
  os.replace(tmp, output_dir)
  logging.info("Exported step %s to %s (%d params, %.1f MB).", step, output_dir,
               len(leaves), sum(x.nbytes for x in leaves) / 1e6)
  return output_dir


# absl main: parse the gin flags, then `export()` with everything bound by gin (one
# process: export reads a checkpoint and writes files).
main = gin_utils.gin_main(export, multiprocess=False)


if __name__ == "__main__":
  from vlpretrain import export as _export_module  # pylint: disable=import-self
  gin_utils.run(_export_module.main)
