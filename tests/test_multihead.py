"""Multi-head wrappers: mask broadcasting, per-head parameters, hard outputs, shape errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import hard, multihead, scores, soft

B, T, S, H, D, DV = 2, 3, 5, 4, 6, 7
# jit: one compile per configuration instead of one per primitive in eager mode.
_soft = jax.jit(multihead.multi_head_soft_attention, static_argnames=("score_fn",))
_hard = jax.jit(multihead.multi_head_hard_attention, static_argnames=("mode",))
_one_hard = jax.jit(hard.hard_attention, static_argnames=("mode",))


# numpy for test data: each new shape of jax.random.normal costs an XLA compile.
def _normal(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.standard_normal(shape).astype(dtype))


def _qkv(seed):
  rng = np.random.default_rng(seed)
  return _normal(rng, (B, T, H, D)), _normal(rng, (B, S, H, D)), _normal(rng, (B, S, H, DV))


@jax.jit
def _one_head(q, k, v, mask, w):
  fn = scores.scaled_dot if w is None else functools.partial(scores.general, w=w)
  return soft.soft_attention(q, k, v, mask, score_fn=fn)


def _loop_soft(q, k, v, mask_BxHxTxS, w_HxDxD=None):
  """Reference: a Python loop over batch and heads calling the per-head function."""
  contexts, weights = np.zeros((B, T, H, DV)), np.zeros((B, H, T, S))
  for b in range(B):
    for h in range(H):
      w = None if w_HxDxD is None else w_HxDxD[h]
      c, a = _one_head(q[b, :, h], k[b, :, h], v[b, :, h], mask_BxHxTxS[b, h], w)
      contexts[b, :, h], weights[b, h] = c, a
  return contexts, weights


@pytest.mark.parametrize(
  "mask_shape", [(1, 1, T, S), (B, 1, 1, S), (1, H, T, S), (B, H, 1, S), (B, H, T, S)]
)
def test_mask_broadcasting_equals_loop(mask_shape):
  q, k, v = _qkv(0)
  mask = np.random.default_rng(1).random(mask_shape) < 0.6
  mask[..., 0] = True
  mask = jnp.asarray(mask)
  context, weights = _soft(q, k, v, mask)
  expected = _loop_soft(q, k, v, jnp.broadcast_to(mask, (B, H, T, S)))
  np.testing.assert_allclose(context, expected[0], atol=1e-6)
  np.testing.assert_allclose(weights, expected[1], atol=1e-6)


def test_per_head_score_params():
  q, k, v = _qkv(2)
  w_HxDxD = _normal(np.random.default_rng(3), (H, D, D)) / np.sqrt(D)
  mask = jnp.ones((1, 1, T, S), bool)
  context, weights = _soft(q, k, v, mask, score_fn=scores.general, score_params={"w": w_HxDxD})
  expected = _loop_soft(q, k, v, jnp.broadcast_to(mask, (B, H, T, S)), w_HxDxD)
  np.testing.assert_allclose(context, expected[0], atol=1e-5)
  np.testing.assert_allclose(weights, expected[1], atol=1e-6)
  # Heads really use their own w: sharing head 0's w changes the result.
  shared = jnp.broadcast_to(w_HxDxD[:1], w_HxDxD.shape)
  other, _ = _soft(q, k, v, mask, score_fn=scores.general, score_params={"w": shared})
  assert float(jnp.max(jnp.abs(other[:, :, 1:] - context[:, :, 1:]))) > 1e-3


def test_hard_shapes_and_per_head_equivalence():
  q, k, v = _qkv(4)
  mask = jnp.ones((B, 1, 1, S), bool).at[0, 0, 0, 3:].set(False)
  out = _hard(None, q, k, v, mask, mode="argmax")
  assert out.context.shape == (B, T, H, DV)
  for field in (out.index, out.log_prob, out.entropy, out.valid):
    assert field.shape == (B, H, T)
  assert out.probs.shape == (B, H, T, S)
  for b in range(B):
    for h in range(H):
      ref = _one_hard(None, q[b, :, h], k[b, :, h], v[b, :, h], mask[b, 0, 0],
                                mode="argmax")  # fmt: skip
      np.testing.assert_array_equal(out.index[b, h], ref.index)
      np.testing.assert_allclose(out.context[b, :, h], ref.context, atol=1e-6)
      np.testing.assert_allclose(out.log_prob[b, h], ref.log_prob, atol=1e-6)
  assert int(jnp.max(out.index[0])) < 3  # batch 0 only sees keys 0..2
  sampled = _hard(jax.random.key(5), q, k, v, mask)
  assert sampled.context.shape == (B, T, H, DV) and sampled.index.shape == (B, H, T)
  np.testing.assert_array_equal(
    jnp.take_along_axis(v, jnp.transpose(sampled.index, (0, 2, 1))[..., None], axis=1),
    sampled.context,
  )
  with pytest.raises(ValueError, match="needs a PRNG key"):
    multihead.multi_head_hard_attention(None, q, k, v)


def test_hard_heads_get_independent_keys():
  # Identical heads and batch elements: with one shared key they would draw identical indices.
  q = jnp.zeros((B, 16, H, D))
  k = jnp.zeros((B, S, H, D))
  v = jnp.zeros((B, S, H, 1))
  out = _hard(jax.random.key(6), q, k, v)
  flat = np.asarray(out.index).reshape(B * H, 16)
  assert len({tuple(row) for row in flat}) == B * H


def test_bad_shapes_raise_with_shapes():
  q, k, v = _qkv(7)
  with pytest.raises(ValueError, match=r"q must be .* got shape \(2, 3, 4\)"):
    multihead.multi_head_soft_attention(q[..., 0], k, v)
  with pytest.raises(ValueError, match=r"q \(2, 3, 4, 6\), k \(2, 5, 3, 6\), v \(2, 5, 4, 7\)"):
    multihead.multi_head_soft_attention(q, k[:, :, :3], v)
  with pytest.raises(ValueError, match=r"k \(2, 5, 4, 6\), v \(2, 4, 4, 7\)"):
    multihead.multi_head_soft_attention(q, k, v[:, :4])
  with pytest.raises(ValueError, match=r"mask of shape \(2, 4, 5\).*\[2, 4, 3, 5\]"):
    multihead.multi_head_soft_attention(q, k, v, jnp.ones((B, H, S), bool))
  with pytest.raises(ValueError, match=r"mask of shape \(2, 2, 3, 5\)"):
    multihead.multi_head_hard_attention(None, q, k, v, jnp.ones((B, 2, T, S), bool), mode="argmax")
