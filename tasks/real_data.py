"""What the real-data Tasks (tasks/pretrain.py, tasks/downstream.py) share.

* **Lazy sources.** `LazySource` is a seqio DataSource that builds the dataset's real
  source (vlpretrain.data.*_sources, gin-configurable functions) only when a dataset is
  first requested, inside the gin scope named after the dataset. Importing
  `vlpretrain.tasks` therefore touches no file, and bindings parsed after the import
  apply. Unscoped bindings apply to every dataset read by that function; the two
  img2dataset datasets need scoped ones:

      cc3m/img2dataset_source.split_patterns = {'train': '/data/cc3m/train/*.tfrecord'}
      cc12m/img2dataset_source.split_patterns = {'train': '/data/cc12m/*.tfrecord'}
      localized_narratives_source.annotations_dir = '/data/ln'

  A missing binding or directory raises when the dataset is first read, with the
  source's message (naming the binding) and the scoped form of the binding.
  The built source is kept (one per LazySource, so the four Tasks of a dataset share
  its label set) until the gin config changes.
* **Vocabulary.** `output_features()` tokenizes with `vocab.t5_vocabulary()` through a
  `vocab.DeferredVocabulary`: the standard T5 SentencePiece model (seed 001 app. B: "the
  standard 32,000 token vocabulary"), path from the binding `t5_vocabulary.path`, read
  when first used.
* **Images.** `real_data_settings.image_size` (default 224, seed 001 app. B "an image
  size of 224x224"); bind it to the model's macro: `real_data_settings.image_size =
  %IMAGE_SIZE`. `image_preprocessor` decodes, resizes and scales to [-1, 1]
  (vlpretrain.data.images).
"""
import functools
from typing import Callable, Dict, Mapping, Optional, Sequence

import gin
import seqio

from vlpretrain import errors
from vlpretrain.data import images
from vlpretrain.data import preprocessors
from vlpretrain.data import vocab
import tensorflow as tf  # After vlpretrain.data, which hides GPUs from it.


@gin.configurable
def real_data_settings(image_size: int = 224) -> Dict[str, int]:
  """Settings of the real-data Tasks, read when a dataset is built (not at import)."""
  if image_size < 1:
    raise errors.ConfigError(f"real_data_settings.image_size must be positive, got {image_size}.")
  return {"image_size": image_size}


def image_size() -> int:
  return real_data_settings()["image_size"]


def image_preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Encoded `image` -> float32 (S, S, 3) in [-1, 1], S = real_data_settings.image_size."""
  return images.preprocess_dataset(dataset, image_size())


VOCABULARY = vocab.DeferredVocabulary(vocab.t5_vocabulary, name="t5_vocabulary")


def output_features() -> Dict[str, seqio.Feature]:
  return {
      "image": seqio.ContinuousFeature(dtype=tf.float32, rank=3),
      "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
      "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
  }


class LazySource(seqio.DataSource):
  """Builds `factory()` in gin scope `scope` when a dataset is first requested.

  `splits` are the splits the Task declares (the real source's own defaults);
  `aliases` maps extra split names to the source's (e.g. "validation" -> "val").
  `binding` names the main gin binding, shown scoped in errors.
  """

  def __init__(self, scope: str, factory: Callable[[], seqio.DataSource],
               splits: Sequence[str], binding: str,
               aliases: Optional[Mapping[str, str]] = None):
    self.scope = scope
    self._factory = factory
    self._binding = binding
    self._aliases = dict(aliases or {})
    self._built = None
    self._built_for = None
    super().__init__(splits=tuple(splits) + tuple(self._aliases),
                     caching_permitted=False)

  def get(self) -> seqio.DataSource:
    """The real source, built (or rebuilt after a gin change) now."""
    try:
      config = gin.config_str()
    except Exception:  # pylint: disable=broad-except  # Unprintable values: rebuild.
      config = None
    if self._built is None or config is None or self._built_for != config:
      try:
        with gin.config_scope(self.scope):
          self._built = self._factory()
      except (ValueError, FileNotFoundError) as e:
        cls = (errors.MissingPathError if isinstance(e, FileNotFoundError)
               else errors.ConfigError)
        raise cls(f"{errors.first_line(e)} [dataset '{self.scope}': bind it for this "
                  f"dataset only as '{self.scope}/{self._binding}' in gin]") from e
      self._built_for = config
    return self._built

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def num_input_examples(self, split: str) -> Optional[int]:
    return None  # Unknown without reading the files.

  def list_shards(self, split: str) -> Sequence[str]:
    return self.get().list_shards(self._aliases.get(split, split))

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  *args, **kwargs) -> tf.data.Dataset:
    del args, kwargs
    return self.get().get_dataset(self._aliases.get(split, split), shuffle=shuffle,
                                  seed=seed, shard_info=shard_info)


def with_label_set(dataset: tf.data.Dataset, source: LazySource,
                   preprocessor: Callable, **kwargs) -> tf.data.Dataset:
  """Runs an object-aware preprocessor with `label_set` = the source's label set
  (negatives come from the dataset's labels minus the image's; seed 001 sec. 3)."""
  return preprocessor(dataset, label_set=source.get().label_set(), **kwargs)


def object_preprocessor(source: LazySource, preprocessor: Callable, **kwargs):
  """`with_label_set` bound to a source and an object-aware preprocessor."""
  fn = functools.partial(with_label_set, source=source, preprocessor=preprocessor,
                         **kwargs)
  fn.__name__ = getattr(preprocessor, "__name__", "object_preprocessor")
  return fn


def register(name: str, source: seqio.DataSource, task_preprocessors: Sequence[Callable],
             metric_fns: Sequence[Callable] = (), postprocess_fn=None,
             image: Callable = image_preprocessor) -> seqio.Task:
  """A Task: task preprocessors, then the image, tokenize, EOS after trimming."""
  return seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          *task_preprocessors,
          image,
          preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features(),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
  )
