"""Soft attention: jax.nn and numpy references, vmap/jit invariance, gradients, dropout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attnlab import masks, multihead, normalizers, scores, soft
from attnlab import sparse_normalizers as sn

TQ, TK, D, A = 4, 6, 8, 5
SCORE_FNS = {
  "dot": scores.dot,
  "scaled_dot": scores.scaled_dot,
  "general": scores.general,
  "additive": scores.additive,
}
NORMALIZERS = {"softmax": normalizers.softmax, "sparsemax": sn.sparsemax, "entmax15": sn.entmax15}


# numpy for test data: each new shape of jax.random.normal costs an XLA compile.
def _normal(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.standard_normal(shape).astype(dtype))


def _score_params(name, seed, dtype=np.float32):
  rng = np.random.default_rng(seed)
  if name == "general":
    return {"w": _normal(rng, (D, D), dtype) / np.sqrt(D)}
  if name == "additive":
    return {
      "w_q": _normal(rng, (D, A), dtype) / np.sqrt(D),
      "w_k": _normal(rng, (D, A), dtype) / np.sqrt(D),
      "v": _normal(rng, (A,), dtype),
    }
  return {}


def _qkv_mask(seed, dtype=np.float32, scale=1.0):
  rng = np.random.default_rng(seed)
  q, k, v = _normal(rng, (TQ, D), dtype), _normal(rng, (TK, D), dtype), _normal(rng, (TK, D), dtype)
  mask = rng.random((TQ, TK)) < 0.6
  mask[np.arange(TQ), np.arange(TQ)] = True  # no fully masked rows here
  return scale * q, k, v, jnp.asarray(mask)


MASKS = {
  "none": lambda m: None,
  "random": lambda m: m,
  "padding": lambda m: masks.padding_mask(4, TK),
  "causal": lambda m: masks.causal_mask(TQ, TK),
}


@pytest.mark.parametrize("mask_kind", list(MASKS))
def test_scaled_dot_matches_jax_nn_per_head(mask_kind):
  q, k, v, mask = _qkv_mask(0)
  mask = MASKS[mask_kind](mask)
  context, weights = soft.soft_attention(q, k, v, mask)
  mask_4d = None if mask is None else jnp.broadcast_to(mask, (TQ, TK))[None, None]
  expected = jax.nn.dot_product_attention(
    q[None, :, None], k[None, :, None], v[None, :, None], mask=mask_4d
  )[0, :, 0]
  np.testing.assert_allclose(context, expected, atol=1e-5)
  np.testing.assert_allclose(jnp.sum(weights, axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("mask_shape", [None, (2, 1, TQ, TK), (1, 3, TQ, TK), (2, 3, TQ, TK)])
def test_multi_head_matches_jax_nn(mask_shape):
  rng = np.random.default_rng(1)
  q, k, v = _normal(rng, (2, TQ, 3, D)), _normal(rng, (2, TK, 3, D)), _normal(rng, (2, TK, 3, D))
  mask = None
  if mask_shape is not None:
    mask = rng.random(mask_shape) < 0.5
    mask[..., 0] = True
    mask = jnp.asarray(mask)
  context, weights = jax.jit(multihead.multi_head_soft_attention)(q, k, v, mask)
  assert context.shape == (2, TQ, 3, D) and weights.shape == (2, 3, TQ, TK)
  np.testing.assert_allclose(context, jax.nn.dot_product_attention(q, k, v, mask=mask), atol=1e-5)


def _numpy_soft_attention(name, q, k, v, mask, params):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  p = {n: np.asarray(a, np.float64) for n, a in params.items()}
  context = np.zeros((TQ, v.shape[1]))
  for i in range(TQ):
    row = np.zeros(TK)
    for j in range(TK):
      if name == "dot":
        row[j] = q[i] @ k[j]
      elif name == "general":
        row[j] = q[i] @ p["w"] @ k[j]
      else:
        row[j] = p["v"] @ np.tanh(q[i] @ p["w_q"] + k[j] @ p["w_k"])
    exp = np.where(mask[i], np.exp(row - row[mask[i]].max()), 0.0)
    context[i] = (exp / exp.sum()) @ v
  return context


@pytest.mark.parametrize("name", ["dot", "general", "additive"])
def test_score_fns_match_numpy_loop(name):
  q, k, v, mask = _qkv_mask(2)
  params = _score_params(name, 3)
  score_fn = functools.partial(SCORE_FNS[name], **params)
  context, _ = soft.soft_attention(q, k, v, mask, score_fn=score_fn)
  expected = _numpy_soft_attention(name, q, k, v, np.asarray(mask), params)
  np.testing.assert_allclose(context, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", list(NORMALIZERS))
def test_vmap_over_heads_equals_loop_and_jit_equals_eager(norm):
  heads = 3
  rng = np.random.default_rng(4)
  q_HxQxD = _normal(rng, (heads, TQ, D))
  k_HxKxD = _normal(rng, (heads, TK, D))
  v_HxKxD = _normal(rng, (heads, TK, D))
  mask = masks.causal_mask(TQ, TK, offset=TK - TQ)
  attend = functools.partial(soft.soft_attention, mask=mask, normalizer=NORMALIZERS[norm])
  vmapped = jax.vmap(attend)(q_HxQxD, k_HxKxD, v_HxKxD)
  looped = [attend(q_HxQxD[h], k_HxKxD[h], v_HxKxD[h]) for h in range(heads)]
  for i in range(2):  # context, weights
    np.testing.assert_allclose(vmapped[i], jnp.stack([out[i] for out in looped]), atol=1e-6)
  jitted = jax.jit(jax.vmap(attend))(q_HxQxD, k_HxKxD, v_HxKxD)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), jitted, vmapped)


@pytest.mark.parametrize("norm", list(NORMALIZERS))
@pytest.mark.parametrize("name", list(SCORE_FNS))
def test_check_grads_every_soft_path(name, norm):
  with jax.enable_x64(True):
    # Scores of moderate size, so sparse normalisers keep several keys in the support.
    q, k, v, mask = _qkv_mask(5, np.float64, scale=0.3)
    params = _score_params(name, 6, np.float64)

    def attend(q, k, v, params):
      fn = functools.partial(SCORE_FNS[name], **params)
      context, weights = soft.soft_attention(
        q, k, v, mask, score_fn=fn, normalizer=NORMALIZERS[norm]
      )
      return context, weights

    context, weights = attend(q, k, v, params)
    assert context.dtype == jnp.float64
    # Enough keys in the support that the weights actually depend on q and k.
    assert int(jnp.sum((weights > 0) & (weights < 1))) >= 2
    # jit: one compile per transformation instead of op-by-op dispatch on every probe.
    check_grads(jax.jit(attend), (q, k, v, params), order=1, modes=("fwd", "rev"), eps=1e-6)


def test_dropout():
  q, k, v, mask = _qkv_mask(7)
  context, weights = soft.soft_attention(q, k, v, mask)
  same, _ = soft.soft_attention(q, k, v, mask, dropout_rate=0.0, dropout_key=jax.random.key(0))
  np.testing.assert_array_equal(same, context)
  # Inverted dropout is unbiased: the mean over many keys is the no-dropout context.
  # Each entry is a mean of n=4000 draws; its std is < 0.03 here, so 0.1 is > 3 sigma.
  keys = jax.random.split(jax.random.key(8), 4000)
  dropped = jax.vmap(
    lambda key: soft.soft_attention(q, k, v, mask, dropout_rate=0.5, dropout_key=key)
  )(keys)
  np.testing.assert_array_equal(dropped[1][0], weights)  # returned weights are pre-dropout
  assert float(jnp.max(jnp.abs(dropped[0][0] - context))) > 0.05  # dropout did something
  np.testing.assert_allclose(jnp.mean(dropped[0], axis=0), context, atol=0.1)
  with pytest.raises(ValueError, match="needs a dropout_key"):
    soft.soft_attention(q, k, v, dropout_rate=0.1)
  with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\), got 1.0"):
    soft.soft_attention(q, k, v, dropout_rate=1.0, dropout_key=jax.random.key(0))


def test_shape_errors():
  q, k, v, _ = _qkv_mask(9)
  with pytest.raises(ValueError, match=r"k \(6, 8\), v \(5, 8\)"):
    soft.soft_attention(q, k, v[:5])
  with pytest.raises(ValueError, match=r"mask of shape \(4, 5\)"):
    soft.soft_attention(q, k, v, jnp.ones((TQ, 5), bool))
