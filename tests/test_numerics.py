"""Shared semantics for every score function × normaliser: empty rows, huge logits, dtypes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import hard, normalizers, scores, soft
from attnlab import sparse_normalizers as sn

TQ, TK, D, A = 3, 5, 4, 3
SCORE_FNS = {
  "dot": scores.dot,
  "scaled_dot": scores.scaled_dot,
  "general": scores.general,
  "additive": scores.additive,
}
NORMALIZERS = {"softmax": normalizers.softmax, "sparsemax": sn.sparsemax, "entmax15": sn.entmax15}
# Row 1 is fully masked; rows 0 and 2 see some keys.
MASK = jnp.array([[True, False, True, True, False], [False] * 5, [False, True, True, False, True]])


# numpy for test data: each new shape of jax.random.normal costs an XLA compile.
def _normal(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.standard_normal(shape).astype(dtype))


def _params(name, seed):
  rng = np.random.default_rng(seed)
  if name == "general":
    return {"w": _normal(rng, (D, D)) / D}
  if name == "additive":
    return {"w_q": _normal(rng, (D, A)), "w_k": _normal(rng, (D, A)), "v": _normal(rng, (A,)) / A}
  return {}


def _qkv(seed, dtype=np.float32, scale=1.0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray((scale * rng.standard_normal((TQ, D))).astype(dtype))
  return q, _normal(rng, (TK, D), dtype), _normal(rng, (TK, 2), dtype)


def _attend_and_grads(name, norm):
  """jit(value and gradients of a scalar that touches every output) for one combination."""

  def attend(q, k, v, params):
    fn = functools.partial(SCORE_FNS[name], **params)
    return soft.soft_attention(q, k, v, MASK, score_fn=fn, normalizer=NORMALIZERS[norm])

  def loss(q, k, v, params):
    context, weights = attend(q, k, v, params)
    proj = jnp.arange(1.0, 1.0 + context.size).reshape(context.shape)
    return jnp.sum(context.astype(jnp.float32) * proj) + jnp.sum(
      weights.astype(jnp.float32) * jnp.arange(1.0, 1.0 + TK)[None, :]
    )

  return jax.jit(lambda *args: (attend(*args), jax.grad(loss, argnums=(0, 1, 2, 3))(*args)))


@pytest.mark.parametrize("norm", list(NORMALIZERS))
@pytest.mark.parametrize("name", list(SCORE_FNS))
def test_fully_masked_row_zero_weights_context_and_gradient(name, norm):
  q, k, v = _qkv(0, scale=0.3)  # moderate scores: sparse supports keep >1 key
  params = _params(name, 1)
  (context, weights), (grad_q, grad_k, grad_v, grad_p) = _attend_and_grads(name, norm)(
    q, k, v, params
  )
  for x in jax.tree.leaves((context, weights, grad_q, grad_k, grad_v, grad_p)):
    assert bool(jnp.all(jnp.isfinite(x)))
  np.testing.assert_array_equal(weights[1], 0.0)
  np.testing.assert_array_equal(context[1], 0.0)
  np.testing.assert_array_equal(grad_q[1], 0.0)
  np.testing.assert_array_equal(np.asarray(weights)[~np.asarray(MASK)], 0.0)
  np.testing.assert_allclose(jnp.sum(weights[::2], axis=-1), 1.0, atol=1e-6)
  # The empty row contributes nothing: the other rows' gradients w.r.t. k, v and the score
  # parameters equal those of the same problem without that query at all.
  rows = jnp.array([0, 2])
  assert float(jnp.max(jnp.abs(grad_q[rows]))) > 0

  def without_row(k, v, params):
    fn = functools.partial(SCORE_FNS[name], **params)
    c, w = soft.soft_attention(q[rows], k, v, MASK[rows], score_fn=fn, normalizer=NORMALIZERS[norm])
    proj = jnp.arange(1.0, 1.0 + context.size).reshape(context.shape)[rows]
    return jnp.sum(c * proj) + jnp.sum(w * jnp.arange(1.0, 1.0 + TK)[None, :])

  expected = jax.jit(jax.grad(without_row, argnums=(0, 1, 2)))(k, v, params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
    (grad_k, grad_v, grad_p),
    expected,
  )


@pytest.mark.parametrize("norm", list(NORMALIZERS))
def test_masked_inf_and_huge_logits(norm):
  fn = NORMALIZERS[norm]
  s = jnp.array([[1e4, -jnp.inf, -1e4, 1e4 - 0.5], [jnp.inf, 0.0, 1.0, jnp.nan]])
  mask = jnp.array([[True, False, True, True], [False, True, True, False]])
  weights, vjp = jax.vjp(lambda x: fn(x, mask), s)
  (grad,) = vjp(jnp.ones_like(weights))
  assert bool(jnp.all(jnp.isfinite(weights))) and bool(jnp.all(jnp.isfinite(grad)))
  np.testing.assert_array_equal(np.asarray(weights)[~np.asarray(mask)], 0.0)
  np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(mask)], 0.0)
  np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, atol=1e-6)
  assert float(weights[0, 0]) > float(weights[0, 3]) and float(weights[0, 2]) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("norm", list(NORMALIZERS))
def test_large_scores_and_low_precision_are_finite(norm, dtype):
  # q scaled by 2000: dot scores reach ~1e4, far beyond where a naive float16 softmax overflows.
  q, k, v = _qkv(2, dtype, scale=2000.0)
  assert float(jnp.max(jnp.abs(scores.dot(q, k)))) > 5e3

  def loss(q, k, v):
    context, weights = soft.soft_attention(
      q, k, v, MASK, score_fn=scores.dot, normalizer=NORMALIZERS[norm]
    )
    return jnp.sum(context.astype(jnp.float32)), (context, weights)

  grads, (context, weights) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  assert context.dtype == dtype and weights.dtype == dtype
  for x in (context, weights, *grads):
    assert x.dtype == dtype and bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
  np.testing.assert_array_equal(np.asarray(weights.astype(jnp.float32))[~np.asarray(MASK)], 0.0)
  np.testing.assert_array_equal(context[1], 0.0)
  tol = {jnp.float32: 1e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}[dtype]
  np.testing.assert_allclose(jnp.sum(weights.astype(jnp.float32)[::2], -1), 1.0, atol=tol)


@pytest.mark.parametrize("mode", ["sample", "argmax"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_hard_fully_masked_rows_and_low_precision(mode, dtype):
  q, k, v = _qkv(3, dtype, scale=500.0)

  def run(q, k, v):
    return hard.hard_attention(jax.random.key(4), q, k, v, MASK, score_fn=scores.dot, mode=mode)

  def objective(q, k):
    out = run(q, k, v)
    return jnp.sum(out.log_prob) + jnp.sum(out.entropy)

  out = run(q, k, v)
  grad_q, grad_k = jax.jit(jax.grad(objective, argnums=(0, 1)))(q, k)
  np.testing.assert_array_equal(out.valid, [True, False, True])
  for field in (out.log_prob, out.entropy, out.index):
    assert int(jnp.sum(field[1] != 0)) == 0
  np.testing.assert_array_equal(out.context[1], 0.0)
  np.testing.assert_array_equal(out.probs[1], 0.0)
  np.testing.assert_array_equal(grad_q[1], 0.0)
  assert out.context.dtype == dtype and out.log_prob.dtype == jnp.float32
  for x in (out.log_prob, out.entropy, out.probs, grad_q, grad_k):
    assert bool(jnp.all(jnp.isfinite(jnp.asarray(x, jnp.float32))))
  assert bool(jnp.all(MASK[jnp.array([0, 2]), out.index[::2]]))
  np.testing.assert_allclose(jnp.sum(out.probs[::2], -1), 1.0, atol=1e-6)
