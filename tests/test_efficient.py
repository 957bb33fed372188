"""Chunked (online-softmax), linear and local attention against the plain references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from attnlab import efficient

TOL = dict(atol=1e-5, rtol=1e-5)


def _qkv(q_len, k_len, depth=8, value_dim=5, seed=0, dtype=jnp.float32):
  key_q, key_k, key_v = jax.random.split(jax.random.key(seed), 3)
  return (
    jax.random.normal(key_q, (q_len, depth), dtype),
    jax.random.normal(key_k, (k_len, depth), dtype),
    jax.random.normal(key_v, (k_len, value_dim), dtype),
  )


def _reference_lse(q, k, mask_QxK):
  scores = attnlab.scaled_dot(q, k)
  return jnp.where(
    mask_QxK.any(-1),
    jax.nn.logsumexp(jnp.where(mask_QxK, scores, -jnp.inf), axis=-1, where=mask_QxK),
    jnp.finfo(jnp.float32).min,
  )


def _subjaxprs(params):
  for param in params.values():
    for item in param if isinstance(param, (list, tuple)) else [param]:
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(getattr(item, "jaxpr", None), "eqns"):
        yield item.jaxpr


def _max_intermediate_size(fn, *args) -> int:
  """Largest array (in elements) any equation produces, nested jaxprs (loops) included."""

  def walk(jaxpr):
    size = 0
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        size = max(size, int(np.prod(getattr(var.aval, "shape", ()))))
      for sub in _subjaxprs(eqn.params):
        size = max(size, walk(sub))
    return size

  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


# ---- chunked ------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
_PAIR = _RNG.random((13, 17)) < 0.6
_PAIR[2] = False  # a query that sees nothing
_KEYPAD = _RNG.random(17) < 0.7
_CASES = {  # name: (mask, causal, offset, local window)
  "none": (None, False, 0, None),
  "pair": (_PAIR, False, 0, None),
  "key_padding": (_KEYPAD, False, 0, None),
  "causal": (None, True, 0, None),
  "causal_bottom_right_and_pair": (_PAIR, True, 4, None),
  "causal_negative_offset": (_KEYPAD, True, -3, None),
  "window": (None, False, 0, (3, 2)),  # tiles outside the band are skipped
  "window_causal_offset_padding": (_KEYPAD, True, 2, (5, 0)),
}


def _case_mask(name, q_len, k_len):
  mask, causal, offset, window = _CASES[name]
  full = jnp.ones((q_len, k_len), bool) if mask is None else jnp.broadcast_to(mask, (q_len, k_len))
  if causal:
    full = full & attnlab.causal_mask(q_len, k_len, offset=offset)
  if window is not None:
    full = full & attnlab.local_mask(q_len, k_len, left=window[0], right=window[1], offset=offset)
  return mask, causal, offset, window, full


@pytest.mark.parametrize(
  "case, blocks",
  [(case, (4, 5)) for case in sorted(_CASES)] + [("none", (13, 17)), ("pair", (13, 17))],
)  # (4, 5): ragged multi-tile; (13, 17): one tile
def test_chunked_equals_soft_attention_outputs_and_gradients(case, blocks):
  q, k, v = _qkv(13, 17)
  mask, causal, offset, window, full = _case_mask(case, 13, 17)
  mask = None if mask is None else jnp.asarray(mask)
  w_ctx = jax.random.normal(jax.random.key(5), (13, 5))
  w_lse = jax.random.normal(jax.random.key(6), (13,))
  nonempty = full.any(-1)

  @jax.jit
  def chunked(q, k, v):
    def loss(q, k, v):
      ctx, lse = efficient.chunked_soft_attention(
          q, k, v, mask, causal=causal, causal_offset=offset, local_window_size=window,
          block_q=blocks[0], block_k=blocks[1],
      )  # fmt: skip
      return jnp.sum(ctx * w_ctx) + jnp.sum(jnp.where(nonempty, lse, 0.0) * w_lse), (ctx, lse)

    return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)

  @jax.jit
  def reference(q, k, v):
    def loss(q, k, v):
      ctx, lse = attnlab.soft_attention(q, k, v, full)[0], _reference_lse(q, k, full)
      return jnp.sum(ctx * w_ctx) + jnp.sum(jnp.where(nonempty, lse, 0.0) * w_lse), (ctx, lse)

    return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)

  (grads, outs), (ref_grads, ref_outs) = chunked(q, k, v), reference(q, k, v)
  for got, want in zip(outs + grads, ref_outs + ref_grads, strict=True):
    np.testing.assert_allclose(got, want, **TOL)


def test_chunked_fully_masked_query_gives_zeros_and_zero_gradient():
  q, k, v = _qkv(6, 9)
  mask = jnp.ones((6, 9), bool).at[3].set(False)
  ctx, lse = jax.jit(efficient.chunked_soft_attention, static_argnames=("block_q", "block_k"))(
    q, k, v, mask, block_q=2, block_k=4
  )
  np.testing.assert_array_equal(ctx[3], 0.0)
  assert lse[3] == jnp.finfo(jnp.float32).min
  dq = jax.jit(
    jax.grad(lambda q: efficient.chunked_soft_attention(q, k, v, mask, block_k=4)[0].sum())
  )(q)
  np.testing.assert_array_equal(dq[3], 0.0)
  assert bool(jnp.isfinite(dq).all())


def test_chunked_fully_masked_key_padding_is_finite():
  q, k, v = _qkv(5, 7)
  mask = jnp.zeros((7,), bool)
  fn = jax.jit(lambda *a: efficient.chunked_soft_attention(*a, mask, block_k=3)[0])
  ctx = fn(q, k, v)
  grads = jax.jit(jax.grad(lambda *a: fn(*a).sum(), (0, 1, 2)))(q, k, v)
  np.testing.assert_array_equal(ctx, 0.0)
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


def test_chunked_huge_logits_and_bfloat16_are_finite_and_close():
  q, k, v = _qkv(16, 24)
  fn = jax.jit(lambda *a: efficient.chunked_soft_attention(*a, block_q=8, block_k=8)[0])
  ctx = fn(q * 1e4, k, v)
  np.testing.assert_allclose(ctx, jax.jit(attnlab.soft_attention)(q * 1e4, k, v)[0], **TOL)
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
  ctx16 = fn(q16, k16, v16)
  assert ctx16.dtype == jnp.bfloat16
  ref = jax.jit(attnlab.soft_attention)(q, k, v)[0]
  np.testing.assert_allclose(ctx16.astype(jnp.float32), ref, atol=5e-2, rtol=5e-2)
  grads = jax.jit(jax.grad(lambda q: fn(q, k16, v16).astype(jnp.float32).sum()))(q16)
  assert bool(jnp.isfinite(grads.astype(jnp.float32)).all())


def test_chunked_jit_matches_eager_and_multi_head_matches_loop():
  batch, heads = 2, 3
  keys = jax.random.split(jax.random.key(1), 4)
  q = jax.random.normal(keys[0], (batch, 10, heads, 8))
  k = jax.random.normal(keys[1], (batch, 12, heads, 8))
  v = jax.random.normal(keys[2], (batch, 12, heads, 4))
  mask = jax.random.bernoulli(keys[3], 0.7, (batch, 1, 1, 12))
  ctx, lse = jax.jit(
    functools.partial(efficient.multi_head_chunked_attention, causal=True, block_q=4, block_k=5)
  )(q, k, v, mask)
  for heads_per_step in (4, 6):  # 6 pairs: a remainder step, and all at once
    other_ctx, other_lse = efficient.multi_head_chunked_attention(
        q, k, v, mask, causal=True, block_q=4, block_k=5, heads_per_step=heads_per_step
    )  # fmt: skip
    np.testing.assert_allclose(other_ctx, ctx, **TOL)
    np.testing.assert_allclose(other_lse, lse, **TOL)
  per_head = functools.partial(efficient.chunked_soft_attention, causal=True, block_q=4, block_k=5)
  eager_ctx, eager_lse = per_head(q[0, :, 0], k[0, :, 0], v[0, :, 0], mask[0, 0, 0])
  np.testing.assert_allclose(ctx[0, :, 0], eager_ctx, **TOL)
  np.testing.assert_allclose(lse[0, 0], eager_lse, **TOL)
  per_head = jax.jit(per_head)
  for b in range(batch):
    for h in range(heads):
      ref_ctx, ref_lse = per_head(q[b, :, h], k[b, :, h], v[b, :, h], mask[b, 0, 0])
      np.testing.assert_allclose(ctx[b, :, h], ref_ctx, **TOL)
      np.testing.assert_allclose(lse[b, h], ref_lse, **TOL)


def test_chunked_forward_and_backward_never_build_the_score_matrix():
  q_len = k_len = 512
  q, k, v = _qkv(q_len, k_len, depth=4, value_dim=4)

  def fwd_bwd(q, k, v):
    loss = lambda q, k, v: efficient.chunked_soft_attention(q, k, v, block_q=64, block_k=64)[
      0
    ].sum()
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  plain = lambda q, k, v: jax.grad(lambda *a: attnlab.soft_attention(*a)[0].sum(), (0, 1, 2))(
    q, k, v
  )
  assert _max_intermediate_size(plain, q, k, v) >= q_len * k_len  # the probe sees T² arrays
  assert _max_intermediate_size(fwd_bwd, q, k, v) <= 64 * 64


@pytest.mark.parametrize(
  "kwargs, error",
  [
    (dict(block_q=0), ValueError),
    (dict(block_k=2.5), ValueError),
    (dict(mask=jnp.ones((3, 4), bool)), ValueError),
    (dict(mask=jnp.ones((6, 7), jnp.int32)), TypeError),
  ],
)
def test_chunked_rejects_bad_arguments(kwargs, error):
  q, k, v = _qkv(6, 7)
  with pytest.raises(error, match=r"block_q|block_k|mask"):
    efficient.chunked_soft_attention(q, k, v, **kwargs)


# ---- linear -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "causal, padded, chunk",
    [(False, True, 8), (True, False, 64), (True, True, 1), (True, True, 8)],
)  # fmt: skip
def test_linear_matches_quadratic_reference(causal, padded, chunk):
  q, k, v = _qkv(37, 37, seed=3)
  mask = jnp.asarray(_RNG.random(37) < 0.7) if padded else None
  w = jax.random.normal(jax.random.key(7), (37, 5))
  fn = jax.jit(
    functools.partial(efficient.linear_attention, mask=mask, causal=causal, chunk_size=chunk)
  )
  ref = jax.jit(functools.partial(efficient.linear_attention_reference, mask=mask, causal=causal))
  for got, want in zip(fn(q, k, v), ref(q, k, v), strict=True):
    np.testing.assert_allclose(got, want, **TOL)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)[0] * w), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a)[0] * w), argnums=(0, 1, 2)))(q, k, v)
  for g, r in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=2e-5)


def test_linear_reference_is_the_kernel_formula():
  q, k, v = _qkv(5, 6, seed=4)
  phi_q, phi_k = jax.nn.elu(q) + 1, jax.nn.elu(k) + 1
  kernel = np.asarray(phi_q) @ np.asarray(phi_k).T
  np.testing.assert_allclose(
    efficient.linear_attention_reference(q, k, v)[0],
    kernel @ v / kernel.sum(1, keepdims=True),
    **TOL,
  )
  q6, k6, v6 = _qkv(6, 6, seed=4)
  phi_q6 = jax.nn.elu(q6) + 1
  causal = np.tril(np.asarray(phi_q6) @ np.asarray(jax.nn.elu(k6) + 1).T)
  np.testing.assert_allclose(
    efficient.linear_attention(q6, k6, v6, causal=True, chunk_size=4)[0],
    causal @ v6 / causal.sum(1, keepdims=True),
    **TOL,
  )


def test_linear_all_padding_is_zero_and_finite():
  q, k, v = _qkv(4, 6)
  mask = jnp.zeros((6,), bool)
  ctx, log_norm = jax.jit(efficient.linear_attention)(q, k, v, mask)
  np.testing.assert_array_equal(ctx, 0.0)
  assert bool(jnp.isfinite(log_norm).all())
  grads = jax.jit(jax.grad(lambda *a: efficient.linear_attention(*a, mask)[0].sum(), (0, 1, 2)))(
    q, k, v
  )
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


def test_linear_memory_is_linear_in_length():
  t = 1024
  q, k, v = _qkv(t, t, depth=4, value_dim=4)
  fwd_bwd = jax.grad(
    lambda *a: efficient.linear_attention(*a, causal=True, chunk_size=32)[0].sum(), (0, 1, 2)
  )
  assert _max_intermediate_size(fwd_bwd, q, k, v) <= 8 * t * 4


def test_linear_rejects_dense_mask_and_causal_cross_attention():
  q, k, v = _qkv(4, 6)
  with pytest.raises(ValueError, match="key-padding"):
    efficient.linear_attention(q, k, v, jnp.ones((4, 6), bool))
  with pytest.raises(ValueError, match="Tq == Tk"):
    efficient.linear_attention(q, k, v, causal=True)


def test_multi_head_linear_matches_loop():
  keys = jax.random.split(jax.random.key(2), 3)
  q, k, v = (jax.random.normal(kk, (2, 9, 3, 4)) for kk in keys)
  ctx, _ = jax.jit(
    functools.partial(efficient.multi_head_linear_attention, causal=True, chunk_size=4)
  )(q, k, v)
  per_head = jax.jit(functools.partial(efficient.linear_attention, causal=True))
  for b in range(2):
    for h in range(3):
      ref, _ = per_head(q[b, :, h], k[b, :, h], v[b, :, h])
      np.testing.assert_allclose(ctx[b, :, h], ref, **TOL)


# ---- local --------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "left, right, offset, block, padded",
  [(3, 0, 0, None, False), (4, 2, 0, 8, True), (5, 1, 3, 4, True), (0, 0, 0, None, True)],
)
def test_local_equals_soft_attention_with_local_mask(left, right, offset, block, padded):
  q, k, v = _qkv(29, 33, seed=6)
  key_mask = jnp.asarray(_RNG.random(33) < 0.6) if padded else None
  full = attnlab.local_mask(29, 33, left=left, right=right, offset=offset)
  if padded:
    full = full & key_mask[None, :]
  fn = jax.jit(
      functools.partial(
          efficient.local_attention, mask=key_mask, left=left, right=right, offset=offset,
          block_size=block,
      )
  )  # fmt: skip
  ctx, lse = fn(q, k, v)
  np.testing.assert_allclose(ctx, jax.jit(attnlab.soft_attention)(q, k, v, full)[0], **TOL)
  np.testing.assert_allclose(lse, jax.jit(_reference_lse)(q, k, full), **TOL)
  w = jax.random.normal(jax.random.key(8), ctx.shape)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)[0] * w), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.jit(
    jax.grad(lambda *a: jnp.sum(attnlab.soft_attention(*a, full)[0] * w), argnums=(0, 1, 2))
  )(q, k, v)
  for g, r in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(g, r, **TOL)


def test_local_work_is_linear_in_length():
  t, left = 1024, 16
  q, k, v = _qkv(t, t, depth=4, value_dim=4)
  fwd_bwd = jax.grad(lambda *a: efficient.local_attention(*a, left=left)[0].sum(), (0, 1, 2))
  # Scores are [T / Bq, Bq, Bq + left] with Bq = 32: 3 T-sized rows per query, not T.
  assert _max_intermediate_size(fwd_bwd, q, k, v) <= t * (32 + left)


def test_multi_head_local_matches_loop_and_rejects_dense_mask():
  keys = jax.random.split(jax.random.key(3), 3)
  q, k, v = (jax.random.normal(kk, (2, 11, 2, 4)) for kk in keys)
  ctx, _ = jax.jit(functools.partial(efficient.multi_head_local_attention, left=2, right=1))(
    q, k, v
  )
  per_head = jax.jit(functools.partial(efficient.local_attention, left=2, right=1))
  for b in range(2):
    for h in range(2):
      ref, _ = per_head(q[b, :, h], k[b, :, h], v[b, :, h])
      np.testing.assert_allclose(ctx[b, :, h], ref, **TOL)
  with pytest.raises(ValueError, match="key-padding"):
    efficient.multi_head_local_attention(q, k, v, jnp.ones((2, 1, 11, 11), bool), left=2)
  with pytest.raises(ValueError, match="window sizes"):
    efficient.local_attention(q[0, :, 0], k[0, :, 0], v[0, :, 0], left=-1)
