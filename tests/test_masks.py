"""Masks: padding, causal (both alignments), local windows, combination, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import masks


def test_padding_mask_any_leading_dims():
  lengths = jnp.array([[0, 2], [5, 3]])
  mask = masks.padding_mask(lengths, 4)
  assert mask.shape == (2, 2, 4) and mask.dtype == jnp.bool_
  expected = np.arange(4)[None, None, :] < np.minimum(np.asarray(lengths), 4)[..., None]
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(masks.padding_mask(2, 3), [True, True, False])


@pytest.mark.parametrize("q_len,k_len", [(4, 4), (3, 5), (5, 3)])
def test_causal_default_is_top_left_like_jax_nn(q_len, k_len):
  mask = masks.causal_mask(q_len, k_len)
  np.testing.assert_array_equal(mask, np.tril(np.ones((q_len, k_len), bool)))
  # jax.nn's is_causal has no public mask; compare the attention it computes.
  rng = np.random.default_rng(0)
  q, k, v = (
    jnp.asarray(rng.standard_normal((1, n, 2, 8)).astype(np.float32)) for n in (q_len, k_len, k_len)
  )
  np.testing.assert_allclose(
    jax.nn.dot_product_attention(q, k, v, mask=mask[None, None]),
    jax.nn.dot_product_attention(q, k, v, is_causal=True),
    atol=1e-6,
  )


@pytest.mark.parametrize("q_len,k_len", [(2, 5), (5, 5), (1, 4)])
def test_causal_offset_bottom_right(q_len, k_len):
  mask = masks.causal_mask(q_len, k_len, offset=k_len - q_len)
  # Queries are the last q_len positions of a k_len-long sequence.
  np.testing.assert_array_equal(mask, masks.causal_mask(k_len, k_len)[k_len - q_len :])
  np.testing.assert_array_equal(mask, np.tril(np.ones((q_len, k_len), bool), k=k_len - q_len))
  assert bool(jnp.all(mask[-1]))  # the newest query sees every key


def _local_reference(q_len, k_len, left, right, offset):
  out = np.zeros((q_len, k_len), bool)
  for i in range(q_len):
    for j in range(k_len):
      out[i, j] = -left <= j - (i + offset) <= right
  return out


@pytest.mark.parametrize(
  "q_len,k_len,left,right,offset", [(5, 5, 1, 0, 0), (4, 6, 2, 1, 0), (3, 7, 0, 2, 4)]
)
def test_local_mask_matches_loop(q_len, k_len, left, right, offset):
  np.testing.assert_array_equal(
    masks.local_mask(q_len, k_len, left=left, right=right, offset=offset),
    _local_reference(q_len, k_len, left, right, offset),
  )


def test_local_mask_limits_and_errors():
  # A window wider than the sequence with right=0 is the causal mask.
  np.testing.assert_array_equal(masks.local_mask(4, 6, left=10), masks.causal_mask(4, 6))
  with pytest.raises(ValueError, match="left=-1"):
    masks.local_mask(3, 3, left=-1)
  with pytest.raises(ValueError, match="right=-2"):
    masks.local_mask(3, 3, left=1, right=-2)


def test_combine_masks():
  causal = masks.causal_mask(3, 4)
  padding = masks.padding_mask(2, 4)  # [Tk], broadcast over queries
  combined = masks.combine_masks(causal, None, padding)
  np.testing.assert_array_equal(combined, np.asarray(causal) & np.asarray(padding)[None, :])
  assert masks.combine_masks(None, None) is None
  np.testing.assert_array_equal(masks.combine_masks(padding), padding)
  with pytest.raises(ValueError):
    masks.combine_masks(causal, jnp.ones((5,), bool))


def test_as_query_key_mask_validation():
  np.testing.assert_array_equal(
    masks.as_query_key_mask(jnp.array([True, False]), 3, 2),
    np.broadcast_to([True, False], (3, 2)),
  )
  assert masks.as_query_key_mask(None, 3, 2) is None
  with pytest.raises(TypeError, match="boolean"):
    masks.as_query_key_mask(jnp.ones((3, 2)), 3, 2)
  with pytest.raises(ValueError, match=r"\(2, 3\).*Tq=3, Tk=2"):
    masks.as_query_key_mask(jnp.ones((2, 3), bool), 3, 2)
