"""attnlab.dot_product_attention as a drop-in for jax.nn.dot_product_attention.

Every case calls both with the same arguments (positional ``bias``, jax.nn's keywords,
unbatched inputs, grouped K/V heads, low-rank masks) and compares outputs and gradients, for
each of attnlab's CPU implementations; jit and vmap apply to it as to jax.nn's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import attnlab
from attnlab.efficient import Implementation, dispatch_implementation

TOL = dict(atol=2e-5, rtol=2e-5)
B, T, S, N, H = 2, 5, 7, 4, 8


def _arrays(seed=0, q_heads=N, kv_heads=N, batch=(B,), t=T, s=S, dtype=np.float32):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(dtype))
  return (
    normal(*batch, t, q_heads, H),
    normal(*batch, s, kv_heads, H),
    normal(*batch, s, kv_heads, H),
    rng,
  )


def _case(name):
  """(args, kwargs) of one jax.nn.dot_product_attention call; no query sees zero keys."""
  q, k, v, rng = _arrays()
  bias4 = jnp.asarray(rng.standard_normal((B, N, T, S)).astype(np.float32))
  mask2 = rng.random((T, S)) < 0.7
  mask2[:, 0] = True
  if name == "plain":
    return (q, k, v), {}
  if name == "scale":
    return (q, k, v), dict(scale=0.3)
  if name == "bias_positional":
    return (q, k, v, bias4), {}
  if name == "bias_rank2_and_mask":
    return (q, k, v, bias4[0, 0], jnp.asarray(mask2)), {}
  if name == "mask_rank2":
    return (q, k, v), dict(mask=jnp.asarray(mask2))
  if name == "mask_per_head":
    mask = rng.random((B, N, T, S)) < 0.6
    mask[..., 0] = True
    return (q, k, v), dict(mask=jnp.asarray(mask))
  if name == "causal":
    return (q, k, v), dict(is_causal=True)
  if name == "gqa":
    q, k, v, _ = _arrays(1, q_heads=4, kv_heads=2)
    return (q, k, v), dict(is_causal=True)
  if name == "mqa_with_head_mask_and_bias":
    q, k, v, _ = _arrays(2, q_heads=4, kv_heads=1)
    mask = rng.random((B, 4, T, S)) < 0.6
    mask[..., 0] = True
    return (q, k, v, bias4), dict(mask=jnp.asarray(mask))
  if name == "unbatched":
    q, k, v, _ = _arrays(3, batch=())
    return (q, k, v, bias4[0]), dict(mask=jnp.asarray(mask2))
  if name == "seq_lengths":
    return (q, k, v), dict(
      query_seq_lengths=jnp.array([3, 5], jnp.int32),
      key_value_seq_lengths=jnp.array([7, 2], jnp.int32),
    )
  if name == "window":
    return (q, k, v), dict(local_window_size=(1, 2))
  if name == "window_int_causal":
    return (q, k, v), dict(local_window_size=2, is_causal=True)
  raise KeyError(name)


CASES = [
  "plain", "scale", "bias_positional", "bias_rank2_and_mask", "mask_rank2", "mask_per_head",
  "causal", "gqa", "mqa_with_head_mask_and_bias", "unbatched", "seq_lengths", "window",
  "window_int_causal",
]  # fmt: skip


def _value_and_grads(fn, args, kwargs):
  cotangent = jax.random.normal(jax.random.key(7), args[0].shape)

  def loss(q, k, v):
    out = fn(q, k, v, *args[3:], **kwargs)
    return jnp.sum(out * cotangent), out

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(*args[:3])


# The chunked kernel takes no bias (the dispatcher never sends one there).
_WITH_BIAS = ("bias_positional", "bias_rank2_and_mask", "mqa_with_head_mask_and_bias", "unbatched")


@pytest.mark.parametrize(
  "name, impl",
  [
    (name, impl)
    for name in CASES
    for impl in (None, "soft", "chunked", "xla")
    if not (impl == "chunked" and name in _WITH_BIAS)
  ],
)
def test_matches_jax_nn_values_and_gradients(name, impl):
  args, kwargs = _case(name)
  ours = functools.partial(attnlab.dot_product_attention, implementation=impl)
  (grads, out), (ref_grads, ref_out) = (
    _value_and_grads(ours, args, kwargs),
    _value_and_grads(jax.nn.dot_product_attention, args, kwargs),
  )
  assert out.shape == ref_out.shape == args[0].shape
  np.testing.assert_allclose(out, ref_out, **TOL)
  for got, want in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, want, **TOL)
  choice = dispatch_implementation(*args, **kwargs, implementation=impl)
  assert isinstance(choice, Implementation)


def test_jit_and_vmap_apply_as_to_jax_nn():
  q, k, v, _ = _arrays(4, batch=(3, B))  # an extra leading axis to vmap over
  mask = jnp.asarray(np.random.default_rng(0).random((T, S)) < 0.7).at[:, 0].set(True)
  ours = jax.jit(jax.vmap(functools.partial(attnlab.dot_product_attention, mask=mask)))(q, k, v)
  ref = jax.vmap(functools.partial(jax.nn.dot_product_attention, mask=mask))(q, k, v)
  np.testing.assert_allclose(ours, ref, **TOL)
  jitted = jax.jit(attnlab.dot_product_attention)(q[0], k[0], v[0])
  np.testing.assert_allclose(jitted, jax.nn.dot_product_attention(q[0], k[0], v[0]), **TOL)


@pytest.mark.parametrize("impl", ["soft", "chunked", "xla"])
def test_query_with_no_visible_key_is_zero_where_jax_nn_averages(impl):
  q, k, v, _ = _arrays(5)
  lengths = jnp.array([S, 0], jnp.int32)  # example 1 has no keys at all
  mask = jnp.ones((B, 1, T, S), bool).at[0, 0, 2].set(False)  # query 2 of example 0 too

  def ours(q, k, v):
    return attnlab.dot_product_attention(
      q, k, v, mask=mask, key_value_seq_lengths=lengths, implementation=impl
    )

  out = jax.jit(ours)(q, k, v)
  ref = jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=lengths)
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(out[0, 2], 0.0)
  assert float(jnp.abs(ref[1]).max()) > 0  # jax.nn: the uniform average of all values
  np.testing.assert_allclose(out[0, :2], ref[0, :2], **TOL)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) ** 2), argnums=(0, 1, 2)))(q, k, v)
  assert all(bool(jnp.isfinite(g).all()) for g in grads)
  np.testing.assert_array_equal(grads[0][1], 0.0)
  np.testing.assert_array_equal(grads[0][0, 2], 0.0)


@pytest.mark.parametrize("impl", ["soft", "chunked"])
def test_check_grads_float64_with_masks_window_and_groups(impl):
  with jax.enable_x64(True):
    q, k, v, rng = _arrays(6, q_heads=4, kv_heads=2, dtype=np.float64)
    mask = jnp.asarray(rng.random((B, 1, T, S)) < 0.6).at[0, 0, 1].set(False)

    def fn(q, k, v):
      return attnlab.dot_product_attention(
        q, k, v, mask=mask, is_causal=True, local_window_size=(3, 0), implementation=impl
      )

    assert fn(q, k, v).dtype == jnp.float64
    check_grads(
      jax.jit(fn),
      (q, k, v),
      order=1,
      modes=("fwd", "rev") if impl == "soft" else ("rev",),
      eps=1e-6,
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_huge_logits_and_half_precision_stay_finite(dtype):
  q, k, v, _ = _arrays(8)
  q, k, v = (q * 1e4).astype(dtype), k.astype(dtype), v.astype(dtype)
  for impl in ("soft", "chunked"):
    fn = functools.partial(attnlab.dot_product_attention, is_causal=True, implementation=impl)
    out = jax.jit(fn)(q, k, v)
    assert out.dtype == dtype
    loss = lambda *a, fn=fn: jnp.sum(fn(*a).astype(jnp.float32))
    grads = jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)
    for x in (out, *grads):
      assert bool(jnp.isfinite(x.astype(jnp.float32)).all()), impl


def test_bad_inputs_name_the_value_and_the_expectation():
  q, k, v, _ = _arrays(9)
  with pytest.raises(TypeError, match="got dtype float32; pass an additive float mask as `bias`"):
    attnlab.dot_product_attention(q, k, v, mask=jnp.zeros((T, S)))
  with pytest.raises(ValueError, match=r"multiple of K"):
    attnlab.dot_product_attention(q, k[:, :, :3], v[:, :, :3])
  with pytest.raises(ValueError, match=r"all unbatched \[T, N, H\]"):
    attnlab.dot_product_attention(q[0], k, v)
  with pytest.raises(ValueError, match=r"mask of shape \(1, 1, 3, 7\) does not broadcast"):
    attnlab.dot_product_attention(q, k, v, mask=jnp.ones((3, S), bool))
  with pytest.raises(ValueError, match=r"key_value_seq_lengths must be an int array \[B\]"):
    attnlab.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.ones((3,), jnp.int32))
  with pytest.raises(ValueError, match="local_window_size must be an int or"):
    attnlab.dot_product_attention(q, k, v, local_window_size=(1, -1))
