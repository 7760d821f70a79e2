"""T5 relative position buckets and attention details."""
import jax
import jax.numpy as jnp
import numpy as np

from vlpretrain.network import t5

# Hand-computed (memory_position - query_position) -> bucket for 32 buckets, max
# distance 128. Bidirectional: 16 buckets a side, 8 exact; log-spaced beyond:
# bucket = 8 + int(log(n / 8) / log(128 / 8) * 8), capped at 15, +16 for keys ahead.
BIDIRECTIONAL = {
    0: 0, -1: 1, -7: 7, -8: 8, -12: 9, -16: 10, -64: 14, -127: 15, -128: 15,
    -1000: 15, 1: 17, 7: 23, 8: 24, 20: 26, 128: 31, 5000: 31,
}
# Causal: 16 exact buckets, then 16 + int(log(n / 16) / log(128 / 16) * 16), cap 31;
# keys after the query all go to bucket 0.
CAUSAL = {0: 0, 5: 0, 1000: 0, -3: 3, -15: 15, -16: 16, -32: 21, -127: 31, -128: 31,
          -4000: 31}


def test_bidirectional_buckets_match_hand_computed_values():
  rel = np.array(list(BIDIRECTIONAL))
  got = t5.relative_position_bucket(rel, bidirectional=True)
  np.testing.assert_array_equal(np.asarray(got), np.array(list(BIDIRECTIONAL.values())))


def test_causal_buckets_match_hand_computed_values():
  rel = np.array(list(CAUSAL))
  got = t5.relative_position_bucket(rel, bidirectional=False)
  np.testing.assert_array_equal(np.asarray(got), np.array(list(CAUSAL.values())))


def test_relative_bias_table_is_shared_and_offset_rows_match():
  bias = t5.RelativePositionBias(num_heads=2, bidirectional=False)
  variables = bias.init(jax.random.PRNGKey(0), 5, 5)
  assert variables["params"]["rel_embedding"].unbox().shape == (2, 32)
  full = bias.apply(variables, 5, 5)
  # The decode-time row for query position 3 equals row 3 of the full matrix.
  row = bias.apply(variables, 1, 5, query_offset=3)
  np.testing.assert_allclose(np.asarray(row[0, :, 0]), np.asarray(full[0, :, 3]))


def test_rmsnorm_has_no_mean_subtraction():
  from vlpretrain.network import layers
  x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
  y, _ = layers.RMSNorm().init_with_output(jax.random.PRNGKey(0), x)
  expected = np.array([1.0, 2.0, 3.0, 4.0]) / np.sqrt(np.mean(np.square([1, 2, 3, 4])) + 1e-6)
  np.testing.assert_allclose(np.asarray(y[0]), expected, rtol=1e-5)
