"""Input pipeline: seqio glue, image ops, the embedded shapes world, vocabularies.

TensorFlow is used here for data only. Importing this package hides every GPU from it,
so it never takes accelerator memory that JAX needs; modules that use TensorFlow import
it through this package (``from vlpretrain.data import ...``) for that reason.
"""
import tensorflow as tf

try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF's runtime was already started: too late to hide them.
  pass
