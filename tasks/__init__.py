"""seqio Task and Mixture registrations. Importing this package registers them all."""

from vlpretrain.tasks import shapes  # shapes_cap, shapes_vqa.
from vlpretrain.tasks import easy_vqa  # easy_vqa (train / validation / test).
from vlpretrain.tasks import shapes_pretrain  # shapes_cmp ... shapes_which_objects, mixture shapes_pretrain.
from vlpretrain.tasks import pretrain  # The 24 tasks <dataset>_<task>, mixtures pretrain_{4,8,12,16,24}.
from vlpretrain.tasks import downstream  # vqa2_vqa, gqa_vqa, snlive_entailment, refcoco*_grounding, msrvtt_videoqa.
from vlpretrain.tasks import shapes_downstream  # shapes_gqa, shapes_entailment, shapes_refer, shapes_videoqa.
from vlpretrain.tasks import image_text  # shapes_pairs, easy_vqa_classes, shapes_entailment_classes (encoder models).
