"""tools/bench_decode.py: decoding by recomputing the prefix gives the KV-cached
decoder's tokens (greedy and beam search, a random jar_tiny), and the tool's command
writes its JSON. No assertion on speed."""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")
REPO = os.path.join(TOOLS, "..")


@functools.lru_cache(maxsize=None)
def _tool():
  spec = importlib.util.spec_from_file_location(
      "bench_decode", os.path.join(TOOLS, "bench_decode.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # Defines no flags: those come with the script.
  return module


def _random_params(model, batch, seed=0):
  """Random params of the model's shapes, drawn with numpy: kernels and embeddings
  normal (std 1/sqrt(fan-in), embeddings 1), norm scales and scalar gates 1, biases 0.
  (The model's own init compiles ~190 random draws, on CPU more than the rest of this
  test; any params do for comparing two ways of decoding.)"""
  shapes = {k: v.shape for k, v in batch.items()}
  abstract = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, shapes)["params"],
      jax.random.PRNGKey(seed))
  rng = np.random.RandomState(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']"):
      return np.zeros(leaf.shape, leaf.dtype)
    if len(leaf.shape) < 2:
      return np.ones(leaf.shape, leaf.dtype)
    std = 1.0 if "embedding" in name else 1 / np.sqrt(np.prod(leaf.shape[:-1]))
    return rng.normal(0, std, leaf.shape).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, abstract)


def test_recompute_path_decodes_what_the_kv_cache_decodes(clean_gin):
  """A real check of the cache: every step of the cached decoder (one token against
  the cached keys/values of the prefix, in both decoder layers) picks what a full
  decoder pass over the prefix picks, over 10 steps, for greedy decoding and a beam
  search of 3 (whose cache is reordered among the beams at every step)."""
  bench = _tool()
  model, lengths, image_size = bench.build_model("gin/jar_tiny.gin")
  batch = bench.synthetic_batch(model, lengths["inputs"], image_size, batch_size=2,
                                decode_length=10)
  params = _random_params(model, batch)
  for method, beams in (("greedy", 1), ("beam", 3)):
    cached = jax.jit(bench.cached_decode_fn(model, method, num_beams=3))(params, batch)
    recomputed = jax.jit(bench.recompute_decode_fn(model, method, num_beams=3))(
        params, batch)
    tokens, scores = (np.asarray(x) for x in cached)
    assert tokens.shape == (2, beams, 10) and scores.shape == (2, beams)
    # NO_EOS: every decode runs all 10 steps (beam search's alive beams, full length).
    assert np.all(np.isfinite(scores)) and np.all(scores > -1e6)
    assert len(np.unique(tokens)) > 5  # A varied decode, not one token repeated.
    np.testing.assert_array_equal(np.asarray(recomputed[0]), tokens)
    np.testing.assert_allclose(np.asarray(recomputed[1]), scores, atol=1e-3)
    check = bench.compare(method, cached, recomputed)
    assert check["tokens_equal"] and check["beams_equal"] == 2 * beams
  # The tool's own check fails loudly on a difference in the best beam.
  wrong = (cached[0].at[0, -1, 3].add(1), cached[1])
  with pytest.raises(AssertionError, match="decoded differently"):
    bench.compare("beam", cached, wrong)


@pytest.mark.slow  # About a minute: a process, jar_tiny's init and 5 compiles.
def test_command_writes_its_json(tmp_path):
  """The command on jar_tiny (8 tokens, 2 beams, one timed run) prints the table and
  writes every figure; speed is not asserted."""
  out = tmp_path / "decode.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(TOOLS, "bench_decode.py"),
       "--gin_file=gin/jar_tiny.gin", "--batch_size=2", "--decode_length=8",
       "--num_beams=2", "--repeats=1", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "recompute tok/s" in proc.stdout and "speedup" in proc.stdout
  report = json.loads(out.read_text())
  assert set(report) == {"settings", "machine", "results"}
  assert report["settings"]["decode_length"] == 8 and report["settings"]["eos_id"] == -1
  assert report["machine"]["cpu_count"] >= 1 and report["machine"]["devices"]
  assert [(r["method"], r["num_beams"]) for r in report["results"]] == [
      ("greedy", 1), ("beam", 2)]
  for r in report["results"]:
    assert r["gin_file"] == "gin/jar_tiny.gin" and r["batch_size"] == 2
    assert r["check"]["best_tokens_equal"]
    for name in ("cached", "recompute"):
      assert len(r[f"{name}_seconds_all"]) == 1
      assert r[f"{name}_seconds"] > 0 and r[f"{name}_compile_seconds"] > 0
      assert r[f"{name}_tokens_per_second"] == 2 * 8 / r[f"{name}_seconds"]
      assert r[f"{name}_step_gflops"] > 0
    assert r["speedup"] == r["recompute_seconds"] / r["cached_seconds"]
    assert "decoder_only_speedup" in r and r["encode_seconds"] > 0
