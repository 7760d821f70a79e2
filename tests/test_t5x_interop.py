"""vlpretrain's model under real t5x: `t5x.train` on gin/t5x/jar_tiny.gin, its resume,
`t5x.eval` and `t5x.infer`; checkpoints across the two trainers, both ways.

t5x is not on PyPI and not a dependency: these tests run when `import t5x` works
(t5x, airio and jestimator on PYTHONPATH, docs/running_under_t5x.md) and skip
otherwise. Run them with:

    PYTHONPATH=/path/to/t5x:/path/to/airio:/path/to/jestimator \
        pytest tests/test_t5x_interop.py -m slow
"""
import glob
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
  import t5x  # noqa: F401  pylint: disable=unused-import
  import t5x.train  # noqa: F401  (its dependencies: airio, jestimator, fiddle, ...)
  T5X_ERROR = None
except Exception as e:  # pylint: disable=broad-except
  T5X_ERROR = f"real t5x is not importable here ({type(e).__name__}: {e})"

needs_t5x = pytest.mark.skipif(T5X_ERROR is not None, reason=str(T5X_ERROR))
pytestmark = pytest.mark.slow

# Small and fast: batch 8, checkpoints every 5 steps.
T5X_TRAIN = ["--gin_search_paths=gin", "--gin_file=gin/t5x/jar_tiny.gin",
             "--gin.BATCH_SIZE=8", "--gin.utils.SaveCheckpointConfig.period=5"]
VQA_EVAL = ["--gin.MIXTURE_OR_TASK_NAME='shapes_vqa'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 24, 'targets': 8}",
            "--gin.utils.DatasetConfig.split='validation'"]


def _run(args, timeout=900):
  proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stderr[-4000:]}"
  return proc.stderr


def _t5x(script, *args):
  return _run([sys.executable, "-m", f"t5x.{script}", *args])


def _vlpretrain(*args):
  # The console script's code, in this interpreter (the one that imports t5x).
  return _run([sys.executable, "-m", "vlpretrain.cli", *args])


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
  """A t5x MODEL_DIR: 10 steps of t5x.train, then resumed to 12."""
  model_dir = str(tmp_path_factory.mktemp("t5x") / "model")
  first = _t5x("train", *T5X_TRAIN, f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=10")
  second = _t5x("train", *T5X_TRAIN, f"--gin.MODEL_DIR='{model_dir}'",
                "--gin.TRAIN_STEPS=12")
  return model_dir, first, second


@needs_t5x
def test_t5x_trains_and_resumes(t5x_run):
  model_dir, first, second = t5x_run
  assert "Starting main loop over steps 0-10" in first
  assert "Starting main loop over steps 10-12" in second
  assert f"Restoring checkpoint from {model_dir}/checkpoint_10" in second
  steps = sorted(int(p.rsplit("_", 1)[1]) for p in glob.glob(f"{model_dir}/checkpoint_*"))
  assert steps == [0, 5, 10, 12]


@needs_t5x
def test_t5x_eval_and_infer_run_on_its_checkpoint(t5x_run, tmp_path):
  model_dir, _, _ = t5x_run
  checkpoint = f"--gin.CHECKPOINT_PATH='{model_dir}/checkpoint_12'"
  _t5x("eval", "--gin_search_paths=gin", "--gin_file=gin/t5x/eval_jar_tiny.gin",
       checkpoint, f"--gin.EVAL_OUTPUT_DIR='{tmp_path}/eval'")
  [line] = open(f"{tmp_path}/eval/inference_eval/shapes_vqa-metrics.jsonl").readlines()
  assert json.loads(line)["step"] == 12 and "exact_match" in json.loads(line)
  _t5x("infer", "--gin_search_paths=gin", "--gin_file=gin/t5x/infer_jar_tiny.gin",
       checkpoint, f"--gin.INFER_OUTPUT_DIR='{tmp_path}/infer'")
  [predictions] = glob.glob(f"{tmp_path}/infer/shapes_vqa-predict.jsonl-*-of-*[0-9]")
  rows = [json.loads(l) for l in open(predictions)]
  assert len(rows) == 5000 and "prediction" in rows[0]
  # Tasks keep no float copy of the image: the rows hold the text features only.
  assert set(rows[0]["inputs"]) == {"inputs_pretokenized", "targets_pretokenized"}


def _vlpretrain_eval(checkpoint, output_dir):
  _vlpretrain("eval", "--gin_file=gin/jar_tiny.gin", "--gin_file=runs/eval.gin", *VQA_EVAL,
              f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--gin.EVAL_OUTPUT_DIR='{output_dir}'")
  metrics = json.load(open(os.path.join(output_dir, "metrics.json")))
  [predictions] = glob.glob(os.path.join(output_dir, "predictions", "*.jsonl"))
  return (metrics["tasks"]["shapes_vqa"]["metrics"]["exact_match"],
          [json.loads(l)["prediction"] for l in open(predictions)])


def _t5x_eval(checkpoint, output_dir):
  _t5x("eval", "--gin_search_paths=gin", "--gin_file=gin/t5x/eval_jar_tiny.gin",
       f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--gin.EVAL_OUTPUT_DIR='{output_dir}'")
  [line] = open(f"{output_dir}/inference_eval/shapes_vqa-metrics.jsonl").readlines()
  [predictions] = glob.glob(f"{output_dir}/inference_eval/shapes_vqa-0*.jsonl")
  return (json.loads(line)["exact_match"],
          [json.loads(l)["prediction"] for l in open(predictions)])


@needs_t5x
def test_vlpretrain_evaluates_a_t5x_checkpoint_as_t5x_does(t5x_run, tmp_path):
  model_dir, _, _ = t5x_run
  ours = _vlpretrain_eval(model_dir, str(tmp_path / "vlpretrain"))  # Its latest: 12.
  theirs = _t5x_eval(f"{model_dir}/checkpoint_12", str(tmp_path / "t5x"))
  assert ours[0] == theirs[0]
  assert ours[1] == theirs[1]


@needs_t5x
def test_vlpretrain_checkpoint_converted_for_t5x_evaluates_the_same(tmp_path):
  model_dir = str(tmp_path / "run")
  _vlpretrain("train", "--gin_file=gin/jar_tiny.gin", f"--gin.MODEL_DIR='{model_dir}'",
              "--gin.TRAIN_STEPS=40", "--gin.MIXTURE_OR_TASK_NAME='shapes_vqa'",
              "--gin.BATCH_SIZE=16")
  _run([sys.executable, "tools/convert_checkpoint.py", "--gin_file=gin/models/jar_tiny.gin",
        f"--input={model_dir}/checkpoints", f"--output={tmp_path}/t5x", "--to=t5x"])
  ours = _vlpretrain_eval(f"{model_dir}/checkpoints", str(tmp_path / "eval_vlpretrain"))
  theirs = _t5x_eval(f"{tmp_path}/t5x/checkpoint_40", str(tmp_path / "eval_t5x"))
  assert ours[0] == theirs[0]
  assert ours[1] == theirs[1]


@needs_t5x
def test_gin_short_names_are_t5x_alone_under_t5x():
  """The model gins import no vlpretrain run configurable, so t5x's `utils.*` are not
  ambiguous in a t5x run (vlpretrain.utils registers the same short names)."""
  code = (
      "import os, sys, gin\n"
      "import t5x.train\n"
      "sys.modules['__main__'] = t5x.train  # t5x's run gins: import __main__ as train_script\n"
      "gin.add_config_file_search_path(os.path.dirname(os.path.dirname(t5x.__file__)))\n"
      "gin.add_config_file_search_path('gin')\n"
      "gin.parse_config_files_and_bindings(['gin/t5x/jar_tiny.gin'], "
      "['utils.SaveCheckpointConfig.period = 7', \"MODEL_DIR = '/tmp/x'\"])\n"
      "assert gin.query_parameter('t5x.utils.SaveCheckpointConfig.period') == 7\n"
      "assert 'vlpretrain.utils' not in sys.modules, 'vlpretrain.utils was imported'\n"
      "assert 'vlpretrain.train' not in sys.modules\n")
  _run([sys.executable, "-c", code])
