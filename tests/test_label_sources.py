"""Label sources: Visual Genome objects.json, Open Images label CSVs, ImageNet-21k folders."""
import json
import os

import pytest
import seqio

from vlpretrain.data import label_sources
from fixture_images import write_corrupt_jpeg as _corrupt
from fixture_images import write_jpeg as _jpeg


def _examples(source, split="train"):
  return [(ex["id"].decode(), [l.decode() for l in ex["labels"]], ex["image"])
          for ex in source.get_dataset(split).as_numpy_iterator()]


# ------------------------------------------------------------------- Visual Genome
def _vg_fixture(root):
  objects = [
      {"image_id": 1, "objects": [
          {"object_id": 10, "x": 1, "y": 2, "w": 3, "h": 4, "names": [" Man "],
           "synsets": ["man.n.01"]},
          {"object_id": 11, "x": 0, "y": 0, "w": 5, "h": 5, "names": ["Tree", "plant"],
           "synsets": ["tree.n.01"]},
          {"object_id": 12, "x": 0, "y": 0, "w": 2, "h": 2, "names": ["man"],
           "synsets": ["man.n.01"]}]},
      # Older release: "name" instead of "names"; image in VG_100K_2.
      {"image_id": 2, "objects": [
          {"object_id": 20, "x": 1, "y": 1, "w": 1, "h": 1, "name": "Zebra",
           "synsets": []}]},
      {"image_id": 3, "objects": [  # Corrupt image.
          {"object_id": 30, "x": 1, "y": 1, "w": 1, "h": 1, "names": ["cat"]}]},
      {"image_id": 4, "objects": [  # Missing image.
          {"object_id": 40, "x": 1, "y": 1, "w": 1, "h": 1, "names": ["dog"]}]},
      {"image_id": 5, "objects": []},  # No labels.
  ]
  with open(root / "objects.json", "w") as f:
    json.dump(objects, f)
  img1 = _jpeg(str(root / "VG_100K" / "1.jpg"))
  img2 = _jpeg(str(root / "VG_100K_2" / "2.jpg"), (0, 0, 255))
  _corrupt(str(root / "VG_100K" / "3.jpg"))
  _jpeg(str(root / "VG_100K" / "5.jpg"))
  return img1, img2


def test_visual_genome(tmp_path):
  img1, img2 = _vg_fixture(tmp_path)
  source = label_sources.visual_genome_objects_source(data_dir=str(tmp_path))
  got = _examples(source)
  assert [(i, l) for i, l, _ in got] == [("1", ["man", "tree"]), ("2", ["zebra"])]
  assert got[0][2] == img1 and got[1][2] == img2
  assert source.skipped.counts() == {"corrupt_image": 1, "missing_image": 1,
                                     "no_labels": 1}
  assert source.label_set() == ["cat", "dog", "man", "tree", "zebra"]
  assert source.splits == ("train",)


def test_visual_genome_sharded(tmp_path):
  _vg_fixture(tmp_path)
  source = label_sources.visual_genome_objects_source(data_dir=str(tmp_path))
  ids = [[ex["id"] for ex in source.get_dataset(
      "train", shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()] for i in range(2)]
  assert ids == [[b"1"], [b"2"]]


def test_visual_genome_missing_data(tmp_path):
  with pytest.raises(ValueError, match="visual_genome_objects_source.data_dir"):
    label_sources.visual_genome_objects_source()
  with pytest.raises(FileNotFoundError, match="visual_genome_objects_source.data_dir"):
    label_sources.visual_genome_objects_source(data_dir=str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="objects.json"):
    label_sources.visual_genome_objects_source(data_dir=str(tmp_path))
  (tmp_path / "objects.json").write_text("[]")
  with pytest.raises(FileNotFoundError, match="VG_100K"):
    label_sources.visual_genome_objects_source(data_dir=str(tmp_path))


# --------------------------------------------------------------------- Open Images
OI_LABELS = """ImageID,Source,LabelName,Confidence
000002b66c9c498e,verification,/m/014trl,0
000002b66c9c498e,crowdsource-verification,/m/01g317,1
000002b66c9c498e,verification,/m/0284d,1
000002b66c9c498e,verification,/m/0284d,1
000002b97e5471a0,verification,/m/05_4_,1
000002b97e5471a0,verification,/m/0zzz9,1
000002c707c9895e,verification,/m/0zzz9,1
000013ba71c12506,verification,/m/01g317,1
00001bcc92282a38,verification,/m/0284d,0
00001e0d2ee0dd9f,verification,/m/05_4_,1
"""


def _oi_fixture(root, header=True):
  (root / "oidv6-train-annotations-human-imagelabels.csv").write_text(OI_LABELS)
  rows = ["/m/0284d,Dairy Product", "/m/01g317,Person", '/m/05_4_,"Hat, sun"',
          "/m/014trl,Tench"]
  if header:
    (root / "oidv7-class-descriptions.csv").write_text(
        "\n".join(["LabelName,DisplayName"] + rows) + "\n")
  else:
    (root / "class-descriptions.csv").write_text("\n".join(rows) + "\n")
  img_a = _jpeg(str(root / "train" / "000002b66c9c498e.jpg"))
  img_b = _jpeg(str(root / "train" / "000002b97e5471a0.jpg"), (0, 255, 0))
  _jpeg(str(root / "train" / "000002c707c9895e.jpg"))  # Only an unknown label.
  _corrupt(str(root / "train" / "000013ba71c12506.jpg"))
  # 00001e0d2ee0dd9f.jpg is missing.
  return img_a, img_b


@pytest.mark.parametrize("header", [True, False])
def test_open_images(tmp_path, header):
  img_a, img_b = _oi_fixture(tmp_path, header)
  source = label_sources.open_images_labels_source(data_dir=str(tmp_path))
  got = _examples(source)
  # Labels are deduplicated and sorted, not in file order (Person comes first there).
  assert [(i, l) for i, l, _ in got] == [
      ("000002b66c9c498e", ["Dairy Product", "Person"]),
      ("000002b97e5471a0", ["Hat, sun"])]
  assert got[0][2] == img_a and got[1][2] == img_b
  assert source.skipped.counts() == {"unknown_label": 2, "no_labels": 1,
                                     "corrupt_image": 1, "missing_image": 1}
  # Positive labels only: Tench (/m/014trl) occurs with Confidence 0 only.
  assert source.label_set() == ["Dairy Product", "Hat, sun", "Person"]


def test_open_images_images_dir_and_unsorted(tmp_path):
  _oi_fixture(tmp_path)
  images = tmp_path / "elsewhere"
  os.makedirs(images)
  os.rename(tmp_path / "train", images / "train")
  source = label_sources.open_images_labels_source(data_dir=str(tmp_path),
                                                   images_dir=str(images))
  assert [i for i, _, _ in _examples(source)] == ["000002b66c9c498e",
                                                  "000002b97e5471a0"]
  lines = OI_LABELS.splitlines()
  (tmp_path / "oidv6-train-annotations-human-imagelabels.csv").write_text(
      "\n".join(lines[:1] + lines[5:] + lines[1:5]) + "\n")
  source = label_sources.open_images_labels_source(data_dir=str(tmp_path),
                                                   images_dir=str(images))
  with pytest.raises(Exception, match="sorted by ImageID"):
    _examples(source)


def test_open_images_missing_data(tmp_path):
  with pytest.raises(FileNotFoundError, match="open_images_labels_source.data_dir"):
    label_sources.open_images_labels_source(data_dir=str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError,
                     match="oidv6-train-annotations-human-imagelabels.csv"):
    label_sources.open_images_labels_source(data_dir=str(tmp_path))
  (tmp_path / "oidv6-train-annotations-human-imagelabels.csv").write_text(OI_LABELS)
  with pytest.raises(FileNotFoundError, match="class-descriptions"):
    label_sources.open_images_labels_source(data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="validation-annotations"):
    label_sources.open_images_labels_source(data_dir=str(tmp_path),
                                            splits=("train", "validation"))


# -------------------------------------------------------------------- ImageNet-21k
def test_imagenet21k(tmp_path):
  (tmp_path / "words.txt").write_text(
      "n01440764\ttench, Tinca tinca\n"
      "n02084071\tdog, domestic dog, Canis familiaris\n"
      "n09999999\tunused synset\n")
  dog2 = _jpeg(str(tmp_path / "n02084071" / "n02084071_2.JPEG"))
  dog1 = _jpeg(str(tmp_path / "n02084071" / "n02084071_1.JPEG"), (9, 9, 9))
  tench = _jpeg(str(tmp_path / "n01440764" / "n01440764_10026.JPEG"))
  _corrupt(str(tmp_path / "n01440764" / "n01440764_3.JPEG"))
  _jpeg(str(tmp_path / "n01234567" / "n01234567_1.JPEG"))  # Synset not in words.txt.
  (tmp_path / "n02084071" / "README.txt").write_text("not an image")
  source = label_sources.imagenet21k_source(data_dir=str(tmp_path))
  got = _examples(source)
  assert got == [("n01440764_10026", ["tench"], tench),
                 ("n02084071_1", ["dog"], dog1),
                 ("n02084071_2", ["dog"], dog2)]
  assert source.skipped.counts() == {"corrupt_image": 1, "no_labels": 1}
  assert source.label_set() == ["dog", "tench"]


def test_imagenet21k_missing_data(tmp_path):
  with pytest.raises(ValueError, match="imagenet21k_source.data_dir"):
    label_sources.imagenet21k_source()
  with pytest.raises(FileNotFoundError, match="imagenet21k_source.data_dir"):
    label_sources.imagenet21k_source(data_dir=str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="words.txt"):
    label_sources.imagenet21k_source(data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="imagenet21k_source.words_file"):
    label_sources.imagenet21k_source(data_dir=str(tmp_path),
                                     words_file=str(tmp_path / "synsets.txt"))
