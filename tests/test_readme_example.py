"""docs/register_a_task.md's example runs, and the gin snippets of it and of the README
name real configurables."""
import json
import os
import re

import gin
import seqio

import vlpretrain.tasks  # pylint: disable=unused-import
from fixture_images import write_jpeg
from real_task_helpers import bind_test_settings, texts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
REGISTER_DOC = os.path.join(REPO, "docs", "register_a_task.md")


def _blocks(section: str, kind: str, path: str = README):
  text = open(path).read()
  body = text.split(f"{section}\n", 1)[1].split("\n## ", 1)[0]
  return [code for lang, code in re.findall(r"```(\w*)\n(.*?)```", body, re.S)
          if lang == kind]


def test_register_a_new_task_example(tmp_path, clean_gin):
  (code,) = _blocks("# Register a new task", "python", REGISTER_DOC)
  namespace = {"__name__": "readme_example"}
  exec(compile(code, REGISTER_DOC, "exec"), namespace)  # pylint: disable=exec-used
  try:
    write_jpeg(str(tmp_path / "a.jpg"))
    write_jpeg(str(tmp_path / "b.jpg"), (0, 0, 200))
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"image": "a.jpg", "caption": "a red square"}) + "\n" +
        json.dumps({"image": "b.jpg", "caption": "a blue sky over the sea"}) + "\n")
    bind_test_settings(f"my_captions_source.data_dir = '{tmp_path}'")
    assert texts("my_captions_cap") == [("caption:", "a red square"),
                                        ("caption:", "a blue sky over the sea")]
    mixture = seqio.get_mixture_or_task("my_pretrain")
    assert [t.name for t in mixture.tasks] == sorted(
        ["my_captions_cap", "cc3m_mlm", "oi_list_objects"])
  finally:
    seqio.MixtureRegistry.remove("my_pretrain")
    seqio.TaskRegistry.remove("my_captions_cap")


def test_readme_gin_bindings_name_real_configurables(clean_gin):
  snippets = _blocks("## Registered tasks and mixtures", "gin") + [
      b for b in _blocks("# Register a new task", "gin", REGISTER_DOC)
      if "my_captions_source" in b]
  assert len(snippets) == 2
  for snippet in snippets:
    lines = [l for l in snippet.splitlines()
             if l and not l.startswith("import") and "my_captions_source" not in l]
    gin.parse_config(["IMAGE_SIZE = 32", *lines])  # Unknown names would raise.
    gin.clear_config()
