"""The 24 pretraining Tasks of seed 001 and its 4/8/12/16/24-task mixtures.

Seed 001 app. B ("Tasks"): the 4 cross-modal tasks (Cap, CMP, ITM, MLM) on CC3M, CC12M
and Localized Narratives, and the 4 object-aware tasks (sec. 3, tasks 1-4) on Open
Images, ImageNet-21k and Visual Genome, "3 * 4 + 3 * 4 = 24 tasks". Names are
`<dataset>_<task>`:

  dataset  source (vlpretrain.data)                 gin scope / main binding
  cc3m     caption_sources.img2dataset_source       cc3m/img2dataset_source.split_patterns
  cc12m    caption_sources.img2dataset_source       cc12m/img2dataset_source.split_patterns
  ln       caption_sources.localized_narratives_source
                                 localized_narratives_source.annotations_dir, .images_dir
  oi       label_sources.open_images_labels_source  open_images_labels_source.data_dir
                                                    (and .images_dir)
  in21k    label_sources.imagenet21k_source         imagenet21k_source.data_dir
  vg       label_sources.visual_genome_objects_source
                                                    visual_genome_objects_source.data_dir

  task               text (vlpretrain.data.preprocessors documents each)
  cap                "caption:" -> the caption
  cmp                "complete: <first words>" -> the last 20-60% of the words (app. B)
  mlm                "mlm: ... <extra_id_0> ..." -> T5 span-corruption targets, 15-25% of
                     the words masked (app. B: 25%, sec. 3: 20%)
  itm                "match: <caption>" -> "yes" / "no" (another example's caption)
  list_objects       "list all objects" -> "a, b, c"                         (task 1)
  object_exists      "does X exist?" -> "yes" / "no"                         (task 2)
  objects_exist_any  "does X, Y or Z exist?" -> "yes" / "no"                 (task 3,
                     "Multi-Exists"; the seed's "and/or" read as "or", worded as the
                     shapes stand-in shapes_objects_exist_any)
  which_objects      "which of X, Y and Z exist?" -> "X, Z" / "none"         (task 4)

Object-task negatives come from the dataset's label set minus the image's labels
(`label_set()` of the source, computed once per dataset). Images: real_data_settings,
vocabulary: T5 (tasks/real_data.py).

Mixtures (seed 001 app. C, "Table 5 Mixtures"), each a dynamic-difficulty mixture
(vlpretrain.dynamic_mixture): `pretrain_4`, `pretrain_8`, `pretrain_12`, `pretrain_16`,
`pretrain_24` (= all 24 Tasks).
"""
import functools

from vlpretrain import dynamic_mixture
from vlpretrain.data import caption_sources
from vlpretrain.data import label_sources
from vlpretrain.data import preprocessors
from vlpretrain.tasks import real_data

CROSS_MODAL = {
    "cap": preprocessors.caption,
    "cmp": preprocessors.caption_completion,
    "mlm": preprocessors.masked_language_modeling,
    "itm": preprocessors.image_text_matching,
}
OBJECT_AWARE = {
    "list_objects": None,  # Needs no label set.
    "object_exists": preprocessors.object_exists,
    "objects_exist_any": functools.partial(preprocessors.objects_exist_any,
                                           conjunction="or"),
    "which_objects": preprocessors.which_objects_exist,
}

SOURCES = {
    "cc3m": real_data.LazySource(
        "cc3m", functools.partial(caption_sources.img2dataset_source, name="cc3m"),
        ("train", "validation"), "img2dataset_source.split_patterns"),
    "cc12m": real_data.LazySource(
        "cc12m", functools.partial(caption_sources.img2dataset_source, name="cc12m"),
        ("train", "validation"), "img2dataset_source.split_patterns"),
    "ln": real_data.LazySource(
        "ln", caption_sources.localized_narratives_source, ("train", "validation"),
        "localized_narratives_source.annotations_dir"),
    "oi": real_data.LazySource(
        "oi", label_sources.open_images_labels_source, ("train",),
        "open_images_labels_source.data_dir"),
    "in21k": real_data.LazySource(
        "in21k", label_sources.imagenet21k_source, ("train",),
        "imagenet21k_source.data_dir"),
    "vg": real_data.LazySource(
        "vg", label_sources.visual_genome_objects_source, ("train",),
        "visual_genome_objects_source.data_dir"),
}
CAPTION_DATASETS = ("cc3m", "cc12m", "ln")
LABEL_DATASETS = ("oi", "in21k", "vg")


def _register_all():
  names = []
  for dataset in CAPTION_DATASETS:
    for task, fn in CROSS_MODAL.items():
      names.append(f"{dataset}_{task}")
      real_data.register(names[-1], SOURCES[dataset], [fn])
  for dataset in LABEL_DATASETS:
    for task, fn in OBJECT_AWARE.items():
      names.append(f"{dataset}_{task}")
      if fn is None:
        fn = preprocessors.list_objects
      else:
        fn = real_data.object_preprocessor(SOURCES[dataset], fn)
      real_data.register(names[-1], SOURCES[dataset], [fn])
  return tuple(names)


PRETRAIN_TASKS = _register_all()

# Seed 001 app. C, "Table 5 Mixtures", in the order the appendix adds them.
MIXTURE_ADDITIONS = (
    (4, ("cc12m_mlm", "cc12m_itm", "oi_list_objects", "oi_which_objects")),
    (8, ("ln_mlm", "ln_itm", "in21k_which_objects", "in21k_list_objects")),
    (12, ("vg_which_objects", "vg_list_objects", "cc3m_mlm", "cc3m_itm")),
    (16, ("oi_object_exists", "vg_object_exists", "in21k_object_exists", "ln_cmp")),
    (24, ("ln_cap", "cc3m_cap", "cc12m_cap", "cc3m_cmp", "cc12m_cmp",
          "vg_objects_exist_any", "in21k_objects_exist_any", "oi_objects_exist_any")),
)


def _mixtures():
  out, tasks = {}, ()
  for size, added in MIXTURE_ADDITIONS:
    tasks += added
    assert len(tasks) == size, (size, tasks)
    out[f"pretrain_{size}"] = tasks
  assert sorted(out["pretrain_24"]) == sorted(PRETRAIN_TASKS)
  return out


MIXTURES = _mixtures()
for _name, _tasks in MIXTURES.items():
  dynamic_mixture.register_dynamic_mixture(_name, _tasks)
