"""export.py: a jax.export artifact served by its own serve.py in a fresh process
(no vlpretrain, no TensorFlow) answers exactly what the framework's greedy decode does."""
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf

import tiny_vqa
from vlpretrain import export as export_lib
from vlpretrain import inference
from vlpretrain import partitioning
from vlpretrain import utils
from vlpretrain.data import images

# In a fresh interpreter: load the artifact's serve.py, answer each request, and report
# which of vlpretrain / tensorflow got imported.
_SERVE_REQUESTS = """
import json, sys
artifact, requests = sys.argv[1], json.load(open(sys.argv[2]))
sys.path.insert(0, artifact)
import serve
predictor = serve.load(artifact)
answers = predictor.predict_batch(
    [(open(path, "rb").read(), prompt) for path, prompt in requests[:4]])
answers += [predictor.predict(open(path, "rb").read(), prompt)
            for path, prompt in requests[4:]]
print(json.dumps({"answers": answers, "modules": sorted(
    m for m in ("vlpretrain", "tensorflow") if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
  tiny = tiny_vqa.shared(tmp_path_factory)
  out = str(tmp_path_factory.mktemp("export") / "artifact")
  export_lib.export(
      model=tiny_vqa.tiny_model(),
      restore_checkpoint_cfg=utils.RestoreCheckpointConfig(path=tiny["checkpoints"]),
      output_dir=out, task_feature_lengths=tiny_vqa.LENGTHS, platforms=("cpu",))
  return tiny, out


def _load_serve(artifact_dir):
  """The artifact's serve.py, imported from its file (as a server would)."""
  spec = importlib.util.spec_from_file_location(
      "serve_under_test", os.path.join(artifact_dir, "serve.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_artifact_layout(artifact):
  _, out = artifact
  assert sorted(os.listdir(out)) == ["config.json", "params.npz", "serve.py",
                                     "serving_fn.jax_export", "spm.model"]
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert (config["image_size"], config["input_length"], config["target_length"]) == \
      (64, 24, 4)
  assert config["step"] == 2 and config["eos_id"] == 1 and config["platforms"] == ["cpu"]
  with np.load(os.path.join(out, "params.npz")) as npz:
    assert len(npz.files) == config["num_params"] == len(config["param_names"])


@pytest.mark.slow
def test_fresh_process_answers_like_the_framework(artifact, tmp_path):
  tiny, out = artifact
  # The framework: the Task's tf.data pipeline and jitted model.predict_batch.
  generator = inference.Generator(tiny_vqa.tiny_model(), partitioning.PjitPartitioner(),
                                  tiny_vqa.BATCH_SIZE)
  [(_, _, params)] = list(generator.load_params(
      tiny_vqa.eval_dataset_cfg(), utils.RestoreCheckpointConfig(path=tiny["checkpoints"])))
  [task] = inference.tasks_of(tiny_vqa.eval_dataset_cfg())
  expected = generator.predict_task(params, task, tiny_vqa.eval_dataset_cfg()).predictions
  # The artifact, fed the PNG files and prompts.
  requests = [(os.path.join(tiny["data_dir"], "test", "images", f"{image_id}.png"),
               f"question: {question}")
              for question, _, image_id in tiny_vqa.questions(tiny["data_dir"])]
  (tmp_path / "requests.json").write_text(json.dumps(requests))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SERVE_REQUESTS, out,
                         str(tmp_path / "requests.json")],
                        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-5000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["modules"] == []          # Neither vlpretrain nor TensorFlow.
  assert len(result["answers"]) == tiny_vqa.N_TEST
  assert result["answers"] == expected

  # The CLI: a good request prints the answer; a bad one a JSON error and exit code 2.
  serve_py = os.path.join(out, "serve.py")
  proc = subprocess.run([sys.executable, serve_py, out, "--image", requests[0][0],
                         "--prompt", requests[0][1]],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout) == {"prediction": expected[0]}
  proc = subprocess.run([sys.executable, serve_py, out, "--image", serve_py,
                         "--prompt", "question: what is it?"],
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "not a readable image" in json.loads(proc.stdout)["error"]


def _png(array) -> bytes:
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def test_bad_requests_are_clear_value_errors(artifact):
  _, out = artifact
  serve = _load_serve(out)
  predictor = serve.load(out)
  good = _png(np.full((64, 64, 3), 128))
  cases = [
      (b"not an image", "question: what?", "not a readable image"),
      (b"", "question: what?", "empty"),
      (good[:60], "question: what?", "truncated or corrupt|not a readable image"),
      (_png(np.zeros((64, 65, 3))), "question: what?", None),  # fine: resized
      (good, "", "prompt is empty"),
      (good, "   ", "prompt is empty"),
      (good, "question: " + "what color is the shape " * 10, "at most 23"),
      (good, None, "prompt must be text"),
  ]
  buffer = io.BytesIO()
  PIL.Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
  cases.append((buffer.getvalue(), "question: what?", "format TIFF is not supported"))
  for data, prompt, error in cases:
    if error is None:
      assert isinstance(predictor.predict(data, prompt), str)
      continue
    with pytest.raises(ValueError, match=error):
      predictor.predict(data, prompt)
  # A batch with bad requests names each by its index, and answers none.
  batch = [(good, "question: what?"), (b"not an image", "question: what?"),
           (good, "question: what?"), (good, "")]
  with pytest.raises(ValueError) as raised:
    predictor.predict_batch(batch)
  message = str(raised.value)
  assert message.startswith("2 of 4 requests are bad, so none was answered")
  assert "request 1: image is not a readable image" in message
  assert "request 3: prompt is empty" in message
  assert "request 0" not in message and "request 2" not in message
  # Size caps: bytes, and pixels (read from the header, before decoding).
  predictor.config["max_image_bytes"] = len(good) - 1
  with pytest.raises(ValueError, match=f"{len(good)} bytes; the limit is"):
    predictor.predict(good, "question: what?")
  predictor.config["max_image_bytes"] = 1 << 20
  predictor.config["max_image_pixels"] = 64 * 64 - 1
  with pytest.raises(ValueError, match="64x64 = 4096 pixels; the limit is 4095"):
    predictor.predict(good, "question: what?")


@pytest.mark.parametrize("height,width", [(64, 64), (100, 80), (30, 50), (500, 333)])
def test_serve_preprocessing_is_the_training_pipeline_bit_for_bit(artifact, height, width):
  """PNG -> [-1, 1] floats equal images.preprocess (tf) exactly, resized or not."""
  serve = _load_serve(artifact[1])
  rng = np.random.RandomState(height * width)
  data = _png(rng.randint(0, 256, (height, width, 3)))
  want = images.preprocess(tf.constant(data), 64).numpy()
  got = serve.preprocess_image(data, 64, 1 << 30, 1 << 30)
  assert got.dtype == np.float32 and got.shape == (64, 64, 3)
  np.testing.assert_array_equal(got, want)
  # Grey, palette and alpha PNGs decode as tf.io.decode_image(channels=3) does.
  image = PIL.Image.fromarray(rng.randint(0, 256, (height, width, 4)).astype(np.uint8))
  for mode in ("L", "P", "RGBA", "LA"):
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG")
    np.testing.assert_array_equal(
        serve.decode_image(buffer.getvalue(), 1 << 30, 1 << 30),
        tf.io.decode_image(buffer.getvalue(), channels=3, expand_animations=False).numpy())
