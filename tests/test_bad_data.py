"""Bad examples are counted, named in a warning and skipped."""
import io

import numpy as np
import PIL.Image
import tensorflow as tf

from vlpretrain.data import bad_data


def _jpeg():
  out = io.BytesIO()
  PIL.Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(out, format="JPEG")
  return out.getvalue()


def test_image_and_text_checks():
  good = _jpeg()
  assert bad_data.image_ok(good)
  assert not bad_data.image_ok(good[: len(good) // 2])  # truncated
  assert not bad_data.image_ok(b"not an image")
  assert not bad_data.image_ok(b"")
  assert bad_data.text_ok(b"a red circle") and not bad_data.text_ok(b"  ")
  assert not bad_data.text_ok("")


def test_filter_examples_skips_and_counts(caplog):
  good = _jpeg()
  ds = tf.data.Dataset.from_tensor_slices({
      "jpg": [good, b"garbage", good, good],
      "txt": [b"a cat", b"a dog", b" ", b"a bird"],
      "key": [b"k0", b"k1", b"k2", b"k3"],
  })
  counter = bad_data.SkipCounter("test_source")

  def predicate(ex):
    if not bad_data.image_ok(ex["jpg"]):
      return "corrupt_image"
    if not bad_data.text_ok(ex["txt"]):
      return "empty_caption"
    return None

  kept = list(bad_data.filter_examples(ds, predicate, counter, where_key="key")
              .as_numpy_iterator())
  assert [ex["key"] for ex in kept] == [b"k0", b"k3"]
  assert counter.counts() == {"corrupt_image": 1, "empty_caption": 1}
  assert counter.total() == 2
  assert "k1" in caplog.text and "corrupt_image" in caplog.text


def test_totals_add_up_every_counter_of_the_process():
  before = bad_data.totals()
  a, b = bad_data.SkipCounter("totals_a"), bad_data.SkipCounter("totals_a")
  c = bad_data.SkipCounter("totals_c")
  a.skip("corrupt_image", "x")
  b.skip("corrupt_image", "y")
  b.skip("empty_caption", "z")
  c.skip("missing_image", "w")
  after = bad_data.totals()
  new = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
  assert new == {"totals_a/corrupt_image": 2, "totals_a/empty_caption": 1,
                 "totals_c/missing_image": 1}
  assert bad_data.summary(new) == ("4 skipped (totals_a/corrupt_image 2, "
                                   "totals_a/empty_caption 1, totals_c/missing_image 1)")
  assert bad_data.summary({}) == ""
