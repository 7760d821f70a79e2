"""seqio Task and Mixture registrations. Importing this package registers them all."""

from vlpretrain.tasks import shapes  # shapes_cap, shapes_vqa.
from vlpretrain.tasks import easy_vqa  # easy_vqa (train / validation / test).
from vlpretrain.tasks import shapes_pretrain  # shapes_cmp ... shapes_which_objects, mixture shapes_pretrain.
