"""tools/show_task.py and tools/bench_input.py on the shapes world (small splits)."""
import functools
import importlib.util
import json
import math
import os

import numpy as np
import PIL.Image
import pytest

from vlpretrain.data import shapes

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")


@functools.lru_cache(maxsize=None)  # Once per process: the tools define absl flags.
def _tool(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_show_task_shapes_cap(tmp_path, small_shapes):
  import vlpretrain.tasks  # pylint: disable=g-import-not-at-top,unused-import
  show_task = _tool("show_task")
  records = show_task.show("shapes_cap", n=5, out_dir=str(tmp_path))
  with open(tmp_path / "examples.jsonl") as f:
    lines = [json.loads(line) for line in f]
  assert lines == records and len(lines) == 5
  # Unshuffled, one shard of 200 scenes: scenes 0..4 of the train split, in order.
  captions = [shapes.make_scene(0, "train", i, draw=False).caption for i in range(5)]
  assert [l["targets"] for l in lines] == captions
  assert {(l["inputs"], l["task"]) for l in lines} == {("caption:", "shapes_cap")}
  assert all(l["image_shape"] == [64, 64, 3] for l in lines)
  # 5 examples: 3 columns x 2 rows of cells; 64 px images are shown 3x (192 px).
  assert show_task.cell_size((64, 64)) == (200, 272, 3)
  with PIL.Image.open(tmp_path / "grid.png") as grid:
    assert grid.size == (3 * 200, 2 * 272)
    pixels = np.asarray(grid.convert("RGB"))
  scene = shapes.make_scene(0, "train", 1, image_size=64)  # Second cell, top row.
  np.testing.assert_array_equal(pixels[4:196:3, 204:396:3], scene.image)


def test_show_task_mixture_names_tasks(tmp_path, small_shapes):
  import vlpretrain.tasks  # pylint: disable=g-import-not-at-top,unused-import
  from vlpretrain.tasks import shapes_pretrain  # pylint: disable=g-import-not-at-top
  records = _tool("show_task").show("shapes_pretrain", n=12, out_dir=str(tmp_path))
  assert len(records) == 12
  assert {r["task"] for r in records} <= set(shapes_pretrain.PRETRAIN_TASKS)
  assert len({r["task"] for r in records}) >= 4


def test_bench_input_writes_its_json(tmp_path, clean_gin):
  bench = _tool("bench_input")
  path = tmp_path / "bench.json"
  result = bench.run("shapes_cap", image_size=32, json_path=str(path),
                     gin_bindings=["shapes.shapes_settings.num_train = 64"],
                     batch_size=4, steps=3, warmup=1, repeats=2,
                     feature_lengths={"inputs": 8, "targets": 24})
  with open(path) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(result))
  assert saved["image_shape"] == [32, 32, 3]
  assert (saved["batch_size"], saved["steps"], saved["warmup"], saved["repeats"]) == (
      4, 3, 1, 2)
  assert len(saved["examples_per_second_runs"]) == 2
  assert all(v > 0 and math.isfinite(v) for v in saved["examples_per_second_runs"])
  assert saved["examples_per_second"] == np.median(saved["examples_per_second_runs"])
  assert saved["batches_per_second"] == saved["examples_per_second"] / 4
  assert saved["model_features"] == [
      "decoder_input_tokens", "decoder_loss_weights", "decoder_target_tokens",
      "encoder_input_tokens", "image"]
  assert saved["gin_bindings"] == ["shapes.shapes_settings.num_train = 64",
                                   "shapes.shapes_settings.image_size = 32"]


def test_bench_sampler_reads_the_scalars_beside_the_gin_config_text(tmp_path):
  """The trainer's TensorBoard events hold the gin config as text: bench_sampler's
  reader keeps the scalars only."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.SummaryWriter(str(tmp_path / "train"))
  writer.write_texts(0, {"config": "from __gin__ import dynamic_registration"})
  writer.write_scalars(50, {"steps_per_sec": 4.0, "timing/step_ms": 250.0})
  writer.write_scalars(100, {"steps_per_sec": 5.0, "timing/step_ms": 200.0})
  writer.close()
  scalars = _tool("bench_sampler").read_scalars(str(tmp_path))
  assert scalars == {"steps_per_sec": {50: 4.0, 100: 5.0},
                     "timing/step_ms": {50: 250.0, 100: 200.0}}


@pytest.mark.slow
def test_memory_plan_shards_params_and_optimizer_under_fsdp(tmp_path):
  """tools/memory_plan.py compiles jar_tiny's train step (its towers shrunk to the
  test sizes) on 2 fake devices under FSDP: a device holds about half of the float32
  params and twice that in Adam moments; XLA reports the step's temporary bytes."""
  import subprocess
  import sys
  out = tmp_path / "plan.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(TOOLS, "memory_plan.py"), "--gin_file=gin/jar_tiny.gin",
       "--devices=2", "--fsdp", "--batch_size=4", "--hbm_gib=1", f"--json={out}",
       "--gin.T5_SIZE='test'", "--gin.VIT_VARIANT='test/8'"],
      cwd=os.path.join(TOOLS, ".."), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "compile s" in proc.stdout
  (plan,) = json.loads(out.read_text())["plans"]
  assert (plan["devices"], plan["mesh"], plan["batch_size"]) == (
      2, {"data": 2, "model": 1}, 4)
  full = 4 * plan["params"]  # float32
  assert 0.5 * full <= plan["param_bytes_per_device"] < 0.6 * full
  # Adam's mu and nu are params-shaped and sharded alike; the rest is counters.
  assert 2 * plan["param_bytes_per_device"] <= plan["optimizer_bytes_per_device"] < (
      2 * plan["param_bytes_per_device"] + 1024)
  assert plan["batch_bytes_per_device"] > 0 and plan["temp_bytes_per_device"] > 0
  assert plan["fits"] and plan["compile_seconds"] > 0


def test_format_table_aligns_columns_under_a_rule():
  from vlpretrain import text_table
  assert text_table.format_table(("row", "R@1"), [("itc", "35.20"), ("multiway", "4")]) == (
      "row      | R@1  \n"
      "---------+------\n"
      "itc      | 35.20\n"
      "multiway | 4    ")


@pytest.mark.slow
def test_flops_table_rows_scale_as_the_methods_should(clean_gin):
  """tools/flops_table.py's measure() on jar_base (compile only): the ViT's FLOPs are
  the same under every fusion; from 224 to 480 px (49 -> 225 B/32 patches) concat's
  non-image FLOPs about double (its T5 encoder runs over every patch) and JAR's grow
  by a few percent (eq. 1 resamples the patches to 64 latents once)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = ("import json, sys; sys.argv = sys.argv[:1]; from absl import flags; "
            "flags.FLAGS(sys.argv); import flops_table as t; print(json.dumps("
            "[t.measure(t.FUSIONS[m], 'B/32', s) for m in ('concat', 'jar') "
            "for s in (224, 480)]))")
  proc = subprocess.run([sys.executable, "-c", script], cwd=os.path.join(TOOLS, ".."),
                        env=dict(os.environ, PYTHONPATH=TOOLS), capture_output=True,
                        text=True, timeout=900)  # Own process: the tool's absl flags.
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(proc.stdout.strip().splitlines()[-1])
  got = dict(zip([(m, s) for m in ("concat", "jar") for s in (224, 480)], rows))
  for size in (224, 480):
    assert got["concat", size]["image_tower_gflops"] == pytest.approx(
        got["jar", size]["image_tower_gflops"])
  growth = {m: got[m, 480]["non_image_gflops"] / got[m, 224]["non_image_gflops"]
            for m in ("concat", "jar")}
  assert growth["concat"] > 1.8 and growth["jar"] < 1.05, growth  # 1.97 and 1.02.
  # Only the ViT's position table grows with the image: (225 - 49) rows of 768.
  assert got["jar", 480]["params"] - got["jar", 224]["params"] == 176 * 768


def _finished_fusion_run(out, row, seed, exact, by_type):
  """The directories of one finished ablate_fusion run: done.json in each stage, the
  eval's metrics.json as `vlpretrain eval` writes it."""
  base = out / row / f"seed{seed}"
  for stage in ("pretrain", "finetune", "eval"):
    (base / stage).mkdir(parents=True)
    (base / stage / "done.json").write_text(json.dumps({"seconds": 60.0, "command": []}))
  metrics = {"exact_match": exact}
  metrics.update({f"exact_match/{k}": v for k, v in by_type.items()})
  (base / "eval" / "metrics.json").write_text(json.dumps(
      {"step": 1500, "split": "test", "tasks": {"easy_vqa": {"metrics": metrics}}}))


def test_ablate_fusion_rebuilds_its_table_from_finished_runs(tmp_path, clean_gin, capsys):
  """A finished study's command trains nothing again (each stage's done.json): it reads
  every run's test metrics and prints mean +- sample sd per row, next to the row's
  forward GFLOPs (the compiled tiny model: concat's memory is longer, so it costs more
  than JAR's resampled one)."""
  tool = _tool("ablate_fusion")
  for seed, exact in enumerate((99.0, 97.0, 98.0)):
    _finished_fusion_run(tmp_path, "jar", seed, exact,
                         {"yes/no": exact, "color": 100.0, "shape": 96.0})
    _finished_fusion_run(tmp_path, "concat", seed, 90.0 + seed,
                         {"yes/no": 88.0, "color": 99.0, "shape": 95.0})
  assert tool.main(["--out", str(tmp_path), "--rows", "jar,concat"]) == 0
  printed = capsys.readouterr().out
  assert "$ " not in printed  # No command was run.
  result = json.loads((tmp_path / "results.json").read_text())
  jar, concat = result["summary"]
  assert jar["row"] == "jar" and jar["seeds"] == [0, 1, 2]
  assert jar["exact_match"] == pytest.approx([98.0, 1.0])  # mean, sample sd
  assert concat["exact_match"] == pytest.approx([91.0, 1.0])
  assert concat["gflops"] > jar["gflops"] > 0
  assert "98.00 +- 1.00" in printed and "91.00 +- 1.00" in printed


def test_ablate_fusion_refuses_a_validation_metrics_file(tmp_path):
  tool = _tool("ablate_fusion")
  (tmp_path / "metrics.json").write_text(json.dumps({"split": "validation", "tasks": {}}))
  with pytest.raises(ValueError, match="not 'test'"):
    tool.test_metrics(str(tmp_path))
