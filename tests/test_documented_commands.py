"""What the README and the gin files show a user, run as they show it.

* The README's main command, `vlpretrain train --gin_file=gin/jar_tiny.gin`, twice from
  the repository root with its default MODEL_DIR (./runs/jar_tiny): the second run
  resumes, although the first left a `runs/` folder in the working directory.
* Every gin file in gin/ (not the included fragments in models/ and runs/) parses and
  builds its model (`jax.eval_shape`) and its dataset config, up to the point where
  data would be read, with the data bindings the README gives.
* A `runs/` or `models/` folder in the working directory changes nothing.
* The mistakes users make get one line on stderr, exit code 2, and leave nothing
  behind.
"""
import glob
import os
import re
import subprocess
import sys

import gin
import jax
import pytest

from vlpretrain import errors
from vlpretrain import gin_utils
from vlpretrain import models
from vlpretrain import utils
from vlpretrain.data import vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
MAIN_COMMAND = "vlpretrain train --gin_file=gin/jar_tiny.gin"


def _console_script() -> str:
  script = os.path.join(os.path.dirname(sys.executable), "vlpretrain")
  assert os.path.exists(script), "The `vlpretrain` console script is not installed."
  return script


def _vlpretrain(*args, cwd, timeout=600):
  return subprocess.run([_console_script(), *args], cwd=cwd, capture_output=True,
                        text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _checkout(tmp_path):
  """A working directory that looks like the repository root to the commands: gin/
  (linked), so the README's relative paths resolve, and nothing else."""
  root = tmp_path / "repo"
  root.mkdir()
  os.symlink(os.path.join(REPO, "gin"), root / "gin")
  return root


# --------------------------------------------------------------- the main command
def test_readme_shows_the_main_command():
  assert f"\n{MAIN_COMMAND}\n" in open(README).read()


@pytest.mark.slow
def test_main_command_twice_from_the_repository_root(tmp_path):
  """The first run writes ./runs/jar_tiny; the second, with the `runs/` folder now in
  the working directory, resumes from it (t5x's behaviour, README "Train")."""
  root = _checkout(tmp_path)
  args = MAIN_COMMAND.split()[1:]
  first = _vlpretrain(*args, "--gin.TRAIN_STEPS=2", cwd=root)
  assert first.returncode == 0, first.stderr[-5000:]
  run = root / "runs" / "jar_tiny"
  for item in ("state", "dataset", "sampler"):  # Model, input position, sampler.
    assert os.path.isdir(run / "checkpoints" / "2" / item), item
  assert "MIXTURE_OR_TASK_NAME = 'shapes_pretrain'" in (run / "config.gin").read_text()
  assert len((run / "sampling.jsonl").read_text().splitlines()) == 1  # The last step.
  # What a user sees: a compile line, the step line, the closing summary; no
  # library noise.
  assert re.search(r"Compiled the train step in [\d.]+ s", first.stderr)
  assert re.search(r"step 2/2 \| loss [\d.]+", first.stderr)
  assert re.search(r"Done: steps 0-2 of 2 in \S+, final loss [\d.]+; checkpoints in "
                   r"\S+runs/jar_tiny/checkpoints \(latest 2\)", first.stderr)
  for noise in ("oneDNN", "cudart_stub", "cuInit", "libtpu", "Sharding callback",
                "absl::InitializeLog"):
    assert noise not in first.stderr, noise
  second = _vlpretrain(*args, "--gin.TRAIN_STEPS=3", cwd=root)
  assert second.returncode == 0, second.stderr[-5000:]
  assert "Resuming from checkpoint at step 2" in second.stderr
  assert "step 3/3 | loss" in second.stderr
  assert "step 1/" not in second.stderr and "step 2/" not in second.stderr
  assert os.path.isdir(run / "checkpoints" / "3" / "state")
  assert glob.glob(str(run / "train" / "events.out.tfevents.*"))


# ------------------------------------------------------------ every gin file builds
# The README's data bindings ("Registered tasks and mixtures"), each folder made empty.
def _readme_data_bindings(data_root):
  block = open(README).read().split("Gin bindings for the real datasets", 1)[1]
  block = re.search(r"```gin\n(.*?)```", block, re.S).group(1)
  bindings = []
  for line in block.splitlines():
    line = line.split("#", 1)[0].strip()
    if not line or "%" in line:
      continue
    name, value = (s.strip() for s in line.split("=", 1))
    if name.endswith(".path"):  # The T5 vocabulary: set below.
      continue
    local = lambda m: repr(str(data_root) + m.group(1)[len("/data"):])
    value = re.sub(r"'(/data/[^']*)'", local, value)
    for path in re.findall(r"'(%s[^']*)'" % re.escape(str(data_root)), value):
      if "*" in path:  # A file pattern: one (empty) file matches it.
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path.replace("*", "shard-00000"), "w").close()
      else:
        os.makedirs(path, exist_ok=True)
    bindings.append(f"{name} = {value}")
  return bindings


def _top_level_gins():
  return sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "gin", "*.gin")))


# The entry point a gin file configures: its alias in the gin files, its full name.
ENTRIES = {"eval_script.evaluate": "vlpretrain.eval.evaluate",
           "infer_script.infer": "vlpretrain.infer.infer",
           "export_script.export": "vlpretrain.export.export",
           "train_script.train": "vlpretrain.train.train"}


def _entry(config: str) -> str:
  return next(e for e in ENTRIES if e in config)


def test_every_top_level_gin_is_covered():
  assert set(_top_level_gins()) >= {"jar_tiny.gin", "jar_base.gin", "eval_vqa2.gin",
                                    "eval_gqa.gin", "eval_snli_ve.gin"}


@pytest.mark.parametrize("gin_file", _top_level_gins())
def test_gin_file_builds_its_model_and_dataset(clean_gin, tmp_path, gin_file):
  data_root = tmp_path / "data"
  shapes_spm = vocab.shapes_vocabulary().sentencepiece_model_file
  required = {"CHECKPOINT_PATH": "'/checkpoints'", "EVAL_OUTPUT_DIR": "'/tmp/eval'",
              "INFER_OUTPUT_DIR": "'/tmp/infer'", "EXPORT_DIR": "'/tmp/export'",
              "INITIAL_CHECKPOINT_PATH": "'/pretrain/checkpoints'"}
  gin_utils.parse_gin_flags([], [gin_file], [], finalize_config=False)
  defined = {m for m in required if _defined(m)}
  bindings = [f"{m} = {required[m]}" for m in defined]
  if gin.query_parameter("MIXTURE_OR_TASK_NAME/gin.macro.value") is None:
    # The base gins name none: a real-data Task of the model's family.
    task = "cc3m_pairs" if gin_file.startswith("vlmo") else "cc3m_cap"
    bindings.append(f"MIXTURE_OR_TASK_NAME = '{task}'")
  bindings += _readme_data_bindings(data_root)
  bindings.append(f"vocab.t5_vocabulary.path = '{shapes_spm}'")
  gin.clear_config(clear_constants=True)
  gin_utils.parse_gin_flags([], [gin_file], bindings)
  entry = _entry(gin.config_str())

  model = gin.query_parameter(f"{ENTRIES[entry]}.model").scoped_configurable_fn()
  image = gin.query_parameter("IMAGE_SIZE/gin.macro.value")
  lengths = gin.query_parameter("TASK_FEATURE_LENGTHS/gin.macro.value")
  # The model features its feature converter makes from the gin's lengths.
  converter = model.FEATURE_CONVERTER_CLS(pack=False)
  shapes = {k: (1, n) for k, n in converter.get_model_feature_lengths(lengths).items()}
  shapes["image"] = (1, image, image, 3)
  params = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), shapes))["params"]
  encoder_decoder = isinstance(model, models.VLEncoderDecoderModel)
  assert ({"image_encoder", "token_embedder", "decoder"} if encoder_decoder
          else {"encoder"}) <= set(params)
  if entry == "export_script.export":
    return  # No dataset: the artifact takes images and prompts.
  with gin.config_scope("train" if entry == "train_script.train" else ""):
    cfg = utils.DatasetConfig()
  provider = utils.get_mixture_or_task(cfg)
  tasks = getattr(provider, "tasks", [provider])
  for task in tasks:
    source = task.source
    if hasattr(source, "get"):  # A real dataset: its folder binding must resolve.
      source.get()
  assert set(lengths) >= ({"inputs", "targets"} if encoder_decoder else {"text"})


def _defined(macro: str) -> bool:
  try:
    gin.query_parameter(f"{macro}/gin.macro.value")
    return True
  except ValueError:
    return False


# -------------------------------------------------------- a runs/ folder is harmless
def test_runs_and_models_folders_in_the_working_directory_change_nothing(
    clean_gin, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  gin_utils.parse_gin_flags([], ["jar_tiny.gin"], [], finalize_config=False)
  want = gin.config_str()
  gin.clear_config(clear_constants=True)
  for name in ("runs", "models", "gin"):
    (tmp_path / name).mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # As `python -m` puts the cwd first.
  gin_utils.parse_gin_flags(["."], ["jar_tiny.gin"], [], finalize_config=False)
  assert gin.config_str() == want


# ------------------------------------------------------------------ user mistakes
def test_a_misspelled_macro_names_the_closest_one(clean_gin):
  with pytest.raises(errors.ConfigError,
                     match=r"Gin macro TRAIN_STEPSS .* did you mean TRAIN_STEPS\?"):
    gin_utils.parse_gin_flags([], ["jar_tiny.gin"], ["TRAIN_STEPSS = 10"])
  gin.clear_config(clear_constants=True)
  with pytest.raises(errors.ConfigError, match="define it in a gin file first"):
    gin_utils.parse_gin_flags([], ["jar_tiny.gin"], ["ZZZ_QQQ = 10"])


# (mistake, arguments after `vlpretrain`, the start of the error message). {tmp} is the
# test's directory; {ckpt} an existing empty folder.
MISTAKES = [
    ("unknown task", ["train", "--gin_file=gin/jar_tiny.gin",
                      "--gin.MIXTURE_OR_TASK_NAME='shapes_captions'",
                      "--gin.MODEL_DIR={tmp}/run"],
     "MIXTURE_OR_TASK_NAME='shapes_captions' is not a registered seqio Task or Mixture. "
     "Did you mean 'shapes_cap'"),
    ("missing data dir", ["train", "--gin_file=gin/finetune_vqa2.gin",
                          "--gin.INITIAL_CHECKPOINT_PATH={tmp}/pretrain/checkpoints",
                          "--gin.MODEL_DIR={tmp}/run",
                          "--gin.vqa_v2_source.data_dir='{tmp}/no_vqa2'"],
     "'{tmp}/no_vqa2' (gin binding vqa_v2_source.data_dir) is not a directory"),
    ("missing checkpoint dir", ["eval", "--gin_file=gin/eval_easy_vqa.gin",
                                "--gin.CHECKPOINT_PATH={tmp}/nowhere",
                                "--gin.EVAL_OUTPUT_DIR={tmp}/run"],
     "Checkpoint directory '{tmp}/nowhere' does not exist"),
    ("empty checkpoint dir", ["eval", "--gin_file=gin/eval_easy_vqa.gin",
                              "--gin.CHECKPOINT_PATH={ckpt}",
                              "--gin.EVAL_OUTPUT_DIR={tmp}/run"],
     "'{ckpt}' holds no finished checkpoint steps"),
    ("unwritable MODEL_DIR", ["train", "--gin_file=gin/jar_tiny.gin",
                              "--gin.MODEL_DIR=/proc/vlpretrain_run"],
     "MODEL_DIR='/proc/vlpretrain_run' cannot be written"),
    ("unknown gin file", ["train", "--gin_file=gin/jar_tiny_typo.gin"],
     "Unable to open file: gin/jar_tiny_typo.gin."),
    ("unknown binding", ["train", "--gin_file=gin/jar_tiny.gin",
                         "--gin.vqa_sources.vqa2_source.data_dir=/data"],
     "Gin: No configurable matching 'vqa_sources.vqa2_source'"),
    ("macro typo", ["train", "--gin_file=gin/jar_tiny.gin", "--gin.TRAIN_STEPSS=10",
                    "--gin.MODEL_DIR={tmp}/run"],
     "Gin macro TRAIN_STEPSS (binding 'TRAIN_STEPSS = 10') is not defined by any of the "
     "gin files: did you mean TRAIN_STEPS?"),
]


@pytest.mark.parametrize("mistake,args,message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_exit_2_and_leaves_nothing(tmp_path, mistake, args,
                                                         message):
  del mistake
  root = _checkout(tmp_path)
  (tmp_path / "ckpt").mkdir()
  fill = lambda s: s.format(tmp=tmp_path, ckpt=tmp_path / "ckpt")
  proc = _vlpretrain(*map(fill, args), cwd=root, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"vlpretrain {args[0]}: error: {fill(message)}"), last
  assert not os.path.exists(tmp_path / "run")  # Nothing left behind.
  assert not os.path.exists(root / "runs")
  # --verbosity=1 shows where it came from.
  if "macro" in message:
    verbose = _vlpretrain(*map(fill, args), "--verbosity=1", cwd=root, timeout=300)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_model_gins_import_no_entry_point():
  """gin/models/*.gin define MODEL for vlpretrain's runs and for t5x's: parsing one
  imports neither vlpretrain's trainer (its absl flags collide with t5x's) nor
  vlpretrain.utils (its gin names, `utils.DatasetConfig` ..., are t5x's too)."""
  code = (
      "import glob, sys, gin\n"
      "gin.add_config_file_search_path('gin')\n"
      "for path in sorted(glob.glob('gin/models/*.gin')):\n"
      "  gin.clear_config(clear_constants=True)\n"
      "  gin.parse_config_file(path)\n"
      "  gin.query_parameter('%MODEL')\n"
      "loaded = [m for m in ('vlpretrain.train', 'vlpretrain.utils', 'vlpretrain.gin_utils',"
      " 'vlpretrain.eval', 'vlpretrain.infer') if m in sys.modules]\n"
      "assert not loaded, loaded\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
