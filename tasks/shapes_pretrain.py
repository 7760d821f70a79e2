"""Every pretraining task family on the embedded shapes world, and their mixture.

Tasks (names `shapes_<task>`; the text formats are those of
vlpretrain.data.preprocessors, which documents each family):

  shapes_cmp                "complete: a large red circle and a"  -> "small blue square"
  shapes_mlm                "mlm: a large <extra_id_0> and a small blue square"
                            -> "<extra_id_0> red circle <extra_id_1>"
  shapes_itm                "match: <caption>" -> "yes" (its own) / "no" (another scene's)
  shapes_list_objects       "list all objects" -> "red circle, blue square" (left to right)
  shapes_object_exists      "does red circle exist?" -> "yes" / "no"
  shapes_objects_exist_any  "does red circle, green cross or blue square exist?"
                            -> "yes" iff at least one is in the scene (the "or" variant)
  shapes_which_objects      "which of red circle, green cross and blue square exist?"
                            -> "red circle, blue square" (in the order asked) or "none"

Raw features read from ShapesSource (`shapes.parse_example`): `caption`, `labels`
("<colour> <shape>", left to right), `id` (int64 scene index: the per-example seed of
the stateless preprocessors) and `image` (PNG). The names already match what the
preprocessors read, so no renaming map is needed. Negatives of the object tasks come
from SHAPES_LABEL_SET (every colour + shape combination) minus the scene's labels.

Images, vocabulary and output features are those of shapes_cap (tasks/shapes.py): the
task preprocessor first, then `shapes_image` (PNG -> float32 (S, S, 3) in [-1, 1]), then
tokenize with EOS appended after trimming.

The mixture `shapes_pretrain` covers these seven plus shapes_cap and shapes_vqa.
"""
import functools
from typing import Tuple

import seqio

from vlpretrain import dynamic_mixture
from vlpretrain.data import preprocessors
from vlpretrain.data import shapes
from vlpretrain.tasks import shapes as shapes_tasks


def shapes_label_set() -> Tuple[str, ...]:
  """Every label a shapes scene can carry: "<colour> <shape>" for all combinations."""
  return tuple(shapes.Obj(shape=s, color=c, size="small", box=(0., 0., 0., 0.)).label
               for c in shapes.COLORS for s in shapes.SHAPES)


SHAPES_LABEL_SET = shapes_label_set()

TASK_PREPROCESSORS = {
    "shapes_cmp": preprocessors.caption_completion,
    "shapes_mlm": preprocessors.masked_language_modeling,
    "shapes_itm": preprocessors.image_text_matching,
    "shapes_list_objects": preprocessors.list_objects,
    "shapes_object_exists": functools.partial(
        preprocessors.object_exists, label_set=SHAPES_LABEL_SET),
    "shapes_objects_exist_any": functools.partial(
        preprocessors.objects_exist_any, label_set=SHAPES_LABEL_SET,
        conjunction="or"),
    "shapes_which_objects": functools.partial(
        preprocessors.which_objects_exist, label_set=SHAPES_LABEL_SET),
}
PRETRAIN_TASKS = ("shapes_cap", "shapes_vqa") + tuple(TASK_PREPROCESSORS)


def _register(name, task_preprocessor):
  seqio.TaskRegistry.add(
      name,
      source=shapes.ShapesSource(),
      preprocessors=[
          task_preprocessor,
          shapes_tasks.shapes_image,
          preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=shapes_tasks.output_features(),
  )


for _name, _fn in TASK_PREPROCESSORS.items():
  _register(_name, _fn)

# The dynamic-difficulty mixture: the trainer composes each batch from the recent
# per-task losses (vlpretrain.mixing); seqio tools read it as an equal-rate mixture.
dynamic_mixture.register_dynamic_mixture("shapes_pretrain", PRETRAIN_TASKS)
# The same tasks mixed by seqio itself (tf.data sampling at equal rates, no feedback):
# the baseline that tools/bench_sampler.py times the dynamic mixture against.
seqio.MixtureRegistry.add("shapes_pretrain_static", list(PRETRAIN_TASKS),
                          default_rate=1.0)
