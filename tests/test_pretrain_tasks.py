"""The 24 pretraining Tasks (tasks/pretrain.py) on tiny fixtures in each dataset's own
layout, and the 4/8/12/16/24-task mixtures against seed 001 app. C."""
import json

import gin
import pytest
import seqio
import tensorflow as tf

from vlpretrain import dynamic_mixture
import vlpretrain.tasks  # pylint: disable=unused-import
from vlpretrain.tasks import pretrain
from fixture_images import write_jpeg
from real_task_helpers import bind_test_settings, examples, texts

# Seed 001, appendix C ("Table 5 Mixtures"), as written there.
APPENDIX_C = {
    4: "CC12M MLM, CC12M ITM, OI List Objs, OI Which Objs",
    8: "LN MLM, LN ITM, IN21k Which Objs, IN21k List Objs",
    12: "VG Which Objs, VG List Objs, CC3M MLM, CC3M ITM",
    16: "OI Exists, VG Exists, IN21k Exists, LN CMP",
    24: ("LN Cap, CC3M Cap, CC12M Cap, CC3M CMP, CC12M CMP, VG Multi-Exists, "
         "IN21k Multi-Exists, OI Multi-Exists"),
}
DATASETS = {"CC12M": "cc12m", "CC3M": "cc3m", "LN": "ln", "OI": "oi", "IN21k": "in21k",
            "VG": "vg"}
TASKS = {"MLM": "mlm", "ITM": "itm", "CMP": "cmp", "Cap": "cap",
         "List Objs": "list_objects", "Which Objs": "which_objects",
         "Exists": "object_exists", "Multi-Exists": "objects_exist_any"}


def _appendix_tasks(size):
  names = set()
  for s in (4, 8, 12, 16, 24):
    if s > size:
      break
    for item in APPENDIX_C[s].split(", "):
      dataset, task = item.split(" ", 1)
      names.add(f"{DATASETS[dataset]}_{TASKS[task]}")
  return names


@pytest.mark.parametrize("size", [4, 8, 12, 16, 24])
def test_mixtures_are_the_appendix_lists(size):
  mixture = seqio.get_mixture_or_task(f"pretrain_{size}")
  assert isinstance(mixture, dynamic_mixture.DynamicMixture)
  names = {t.name for t in mixture.tasks}
  assert len(names) == size and names == _appendix_tasks(size)
  assert len({mixture.get_rate(t) for t in mixture.tasks}) == 1


def test_24_tasks_are_every_dataset_times_its_four_tasks():
  assert set(pretrain.PRETRAIN_TASKS) == {
      f"{d}_{t}" for d in ("cc3m", "cc12m", "ln")
      for t in ("cap", "cmp", "mlm", "itm")} | {
      f"{d}_{t}" for d in ("oi", "in21k", "vg")
      for t in ("list_objects", "object_exists", "objects_exist_any", "which_objects")}
  assert _appendix_tasks(24) == set(pretrain.PRETRAIN_TASKS)


def test_missing_data_fails_on_first_read_naming_the_binding(clean_gin, tmp_path):
  bind_test_settings()
  task = seqio.get_mixture_or_task("cc3m_cap")  # Registered; nothing read yet.
  with pytest.raises(ValueError, match=r"cc3m/img2dataset_source\.split_patterns"):
    task.get_dataset({"inputs": 8, "targets": 8}, split="train")
  gin.parse_config([f"open_images_labels_source.data_dir = '{tmp_path / 'nope'}'"])
  with pytest.raises(FileNotFoundError, match=r"open_images_labels_source\.data_dir"):
    seqio.get_mixture_or_task("oi_list_objects").get_dataset(
        {"inputs": 8, "targets": 8}, split="train")


# ------------------------------------------------------------------ img2dataset
def _shard(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for key, jpg, txt in records:
      feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
                 for k, v in (("key", key), ("jpg", jpg), ("txt", txt),
                              ("url", b"http://example.com/x.jpg"))}
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())


@pytest.fixture
def img2dataset_dirs(tmp_path, clean_gin):
  """cc3m and cc12m, each one img2dataset shard; bound under their own gin scopes."""
  jpg = write_jpeg(str(tmp_path / "a.jpg"))
  _shard(tmp_path / "cc3m" / "00000.tfrecord", [
      (b"000000000", jpg, b"a dog runs on the beach"),
      (b"000000001", jpg, b"two red buses parked in a row near the station")])
  _shard(tmp_path / "cc12m" / "00000.tfrecord", [
      (b"000000007", jpg, b"a bowl of soup on a wooden table")])
  bind_test_settings(
      f"cc3m/img2dataset_source.split_patterns = "
      f"{{'train': '{tmp_path}/cc3m/*.tfrecord'}}",
      f"cc12m/img2dataset_source.split_patterns = "
      f"{{'train': '{tmp_path}/cc12m/*.tfrecord'}}")


def test_cc3m_and_cc12m_cross_modal_tasks(img2dataset_dirs):
  assert texts("cc3m_cap") == [("caption:", "a dog runs on the beach"),
                               ("caption:", "two red buses parked in a row near the station")]
  assert texts("cc12m_cap") == [("caption:", "a bowl of soup on a wooden table")]
  assert texts("cc3m_cmp") == [
      ("complete: a dog runs on", "the beach"),  # 2 of 6 words.
      ("complete: two red buses parked in a", "row near the station")]  # 4 of 10.
  assert texts("cc12m_mlm") == [
      ("mlm: <extra_id_0> bowl of soup on a wooden <extra_id_1>",  # 2 of 8 words.
       "<extra_id_0> a <extra_id_1> table <extra_id_2>")]
  assert texts("cc3m_itm") == [  # The negative takes the previous example's caption.
      ("match: a dog runs on the beach", "yes"),
      ("match: a dog runs on the beach", "no")]


# ------------------------------------------------------- Localized Narratives
def test_localized_narratives_tasks(tmp_path, clean_gin):
  ann, img = tmp_path / "ln", tmp_path / "oi_images"
  ann.mkdir()
  lines = [{"dataset_id": "open_images", "image_id": "0a1b", "annotator_id": 7,
            "caption": "In this picture we can see a cat sitting on a sofa.",
            "timed_caption": [], "traces": [], "voice_recording": "x.ogg"}]
  (ann / "open_images_train_v6_localized_narratives-00000-of-00010.jsonl").write_text(
      "\n".join(json.dumps(l) for l in lines) + "\n")
  (ann / "open_images_validation_localized_narratives.jsonl").write_text("")
  write_jpeg(str(img / "train" / "0a1b.jpg"))
  bind_test_settings(f"localized_narratives_source.annotations_dir = '{ann}'",
                     f"localized_narratives_source.images_dir = '{img}'")
  caption = "In this picture we can see a cat sitting on a sofa."
  assert texts("ln_cap") == [("caption:", caption)]
  assert texts("ln_mlm") == [
      ("mlm: In <extra_id_0> we can see a cat sitting on a sofa.",
       "<extra_id_0> this picture <extra_id_1>")]
  assert texts("ln_cmp") == [("complete: In this picture we can see a cat",
                              "sitting on a sofa.")]
  assert texts("ln_itm") == [("match: " + caption, "yes")]


# ----------------------------------------------------------- object-aware tasks
def test_open_images_object_tasks(tmp_path, clean_gin):
  (tmp_path / "oidv6-train-annotations-human-imagelabels.csv").write_text(
      "ImageID,Source,LabelName,Confidence\n"
      "000a,verification,/m/01,1\n000a,verification,/m/02,1\n"
      "000a,verification,/m/03,0\n"
      "000b,verification,/m/03,1\n000b,verification,/m/04,1\n")
  (tmp_path / "oidv7-class-descriptions.csv").write_text(
      "LabelName,DisplayName\n/m/01,Cat\n/m/02,Sofa\n/m/03,Dog\n/m/04,Ball\n")
  write_jpeg(str(tmp_path / "train" / "000a.jpg"))
  write_jpeg(str(tmp_path / "train" / "000b.jpg"), (0, 0, 200))
  bind_test_settings(f"open_images_labels_source.data_dir = '{tmp_path}'")
  assert texts("oi_list_objects") == [("list all objects", "Cat, Sofa"),
                                      ("list all objects", "Ball, Dog")]
  got = texts("oi_object_exists") + texts("oi_objects_exist_any") + texts(
      "oi_which_objects")
  # Label set: the positives' names {Ball, Cat, Dog, Sofa} (Dog's Confidence 0 row on
  # 000a is not a label of 000a). Negatives are drawn from it minus the image's labels.
  assert got == [
      ("does Sofa exist?", "yes"), ("does Cat exist?", "no"),
      ("does Ball or Dog exist?", "no"), ("does Cat or Sofa exist?", "no"),
      ("which of Ball, Dog and Sofa exist?", "Sofa"),
      ("which of Cat, Sofa and Dog exist?", "Dog")]


def test_visual_genome_and_imagenet21k_object_tasks(tmp_path, clean_gin):
  vg, inet = tmp_path / "vg", tmp_path / "in21k"
  vg.mkdir()
  (vg / "objects.json").write_text(json.dumps([
      {"image_id": 1, "objects": [{"object_id": 1, "x": 0, "y": 0, "w": 2, "h": 2,
                                   "names": ["Man"]},
                                  {"object_id": 2, "x": 1, "y": 1, "w": 2, "h": 2,
                                   "names": ["tree"]}]},
      {"image_id": 2, "objects": [{"object_id": 3, "x": 0, "y": 0, "w": 2, "h": 2,
                                   "names": ["zebra"]}]}]))
  write_jpeg(str(vg / "VG_100K" / "1.jpg"))
  write_jpeg(str(vg / "VG_100K_2" / "2.jpg"))
  write_jpeg(str(inet / "n01440764" / "n01440764_10026.JPEG"))
  write_jpeg(str(inet / "n02084071" / "n02084071_7.JPEG"))
  (inet / "words.txt").write_text("n01440764\ttench, Tinca tinca\nn02084071\tdog, domestic dog\n")
  bind_test_settings(f"visual_genome_objects_source.data_dir = '{vg}'",
                     f"imagenet21k_source.data_dir = '{inet}'")
  assert texts("vg_list_objects") == [("list all objects", "man, tree"),
                                      ("list all objects", "zebra")]
  assert texts("vg_which_objects") == [("which of man, zebra and tree exist?", "man, tree"),
                                       ("which of man, zebra and tree exist?", "zebra")]
  assert texts("in21k_list_objects") == [("list all objects", "tench"),
                                         ("list all objects", "dog")]
  assert texts("in21k_object_exists") + texts("in21k_objects_exist_any") == [
      ("does dog exist?", "no"), ("does tench exist?", "no"),
      ("does dog or tench exist?", "yes"), ("does dog or tench exist?", "yes")]
  # Images come through at the bound size.
  assert examples("vg_objects_exist_any")[0][2]["image"].shape == (16, 16, 3)
