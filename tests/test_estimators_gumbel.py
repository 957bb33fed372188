"""Gumbel-softmax: argmax frequencies, straight-through forward/backward, masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import estimators as est

SCORES_S = jnp.array([1.0, -0.5, 0.3, -jnp.inf, 2.0])
MASK_S = jnp.array([True, True, True, False, True])
NUM = 20_000


@pytest.mark.parametrize("straight_through", [False, True])
def test_argmax_frequencies_match_the_masked_softmax(straight_through):
  sample = lambda key: est.gumbel_softmax(
    key, SCORES_S, MASK_S, temperature=0.5, straight_through=straight_through
  )
  samples_NxS = jax.jit(jax.vmap(sample))(jax.random.split(jax.random.key(0), NUM))
  freq_S = np.bincount(np.argmax(np.asarray(samples_NxS), axis=-1), minlength=5) / NUM
  probs_S = np.asarray(jax.nn.softmax(jnp.where(MASK_S, SCORES_S, -jnp.inf)), np.float64)
  # Binomial standard error per position; 4.5 of them (and 0 exactly at the masked one).
  std_err_S = np.sqrt(probs_S * (1 - probs_S) / NUM)
  assert np.all(np.abs(freq_S - probs_S) <= 4.5 * std_err_S + 1e-12), (freq_S, probs_S)
  assert np.all(np.asarray(samples_NxS)[:, 3] == 0.0)
  np.testing.assert_allclose(samples_NxS.sum(-1), 1.0, rtol=1e-5)


def test_straight_through_forward_is_one_hot_of_the_soft_sample_argmax():
  for seed in range(5):
    key = jax.random.key(seed)
    soft = est.gumbel_softmax(key, SCORES_S, MASK_S, temperature=2.0)
    hard = est.gumbel_softmax(key, SCORES_S, MASK_S, temperature=2.0, straight_through=True)
    np.testing.assert_array_equal(hard, jax.nn.one_hot(jnp.argmax(soft), 5))


def test_straight_through_backward_is_the_soft_gradient():
  key = jax.random.key(3)
  scores_S = jnp.where(MASK_S, SCORES_S, 0.0)
  f = lambda y: jnp.sum(jnp.array([1.0, -2.0, 0.5, 3.0, 0.25]) * y**2)
  soft_fn = lambda s: est.gumbel_softmax(key, s, MASK_S, temperature=0.7)
  st_fn = lambda s: est.gumbel_softmax(key, s, MASK_S, temperature=0.7, straight_through=True)
  hard_S = st_fn(scores_S)
  # ST gradient = (∂soft/∂s)ᵀ ∇f evaluated at the one-hot forward value.
  _, soft_vjp = jax.vjp(soft_fn, scores_S)
  np.testing.assert_allclose(
    jax.grad(lambda s: f(st_fn(s)))(scores_S), soft_vjp(jax.grad(f)(hard_S))[0], rtol=1e-6
  )
  # For a linear f the ST and the soft sample have exactly the same gradient.
  c_S = jnp.arange(5.0)
  np.testing.assert_allclose(
    jax.grad(lambda s: c_S @ st_fn(s))(scores_S),
    jax.grad(lambda s: c_S @ soft_fn(s))(scores_S),
    rtol=1e-6,
  )


@pytest.mark.parametrize("straight_through", [False, True])
def test_masking_fully_masked_rows_batch_axes_and_dtype(straight_through):
  scores_BxTxS = jnp.broadcast_to(SCORES_S, (2, 3, 5)).astype(jnp.bfloat16)
  mask_Bx1xS = jnp.stack([MASK_S, jnp.zeros(5, bool)])[:, None, :]  # example 1 fully masked
  fn = lambda s: est.gumbel_softmax(
    jax.random.key(1), s, mask_Bx1xS, temperature=0.3, straight_through=straight_through
  )
  weights_BxTxS = jnp.broadcast_to(jnp.arange(5.0), (2, 3, 5))

  def loss(s):
    out = fn(s)
    return jnp.sum(out.astype(jnp.float32) * weights_BxTxS), out

  (_, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(scores_BxTxS)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 3, 5)
  np.testing.assert_array_equal(out[1], 0.0)
  np.testing.assert_array_equal(out[0, :, 3], 0.0)
  np.testing.assert_allclose(out[0].astype(jnp.float32).sum(-1), 1.0, rtol=1e-2)
  assert jnp.all(jnp.isfinite(grad.astype(jnp.float32)))
  np.testing.assert_array_equal(grad[1], 0.0)
  np.testing.assert_array_equal(grad[0, :, 3], 0.0)


def test_vmap_over_keys_equals_loop_and_errors():
  keys = jax.random.split(jax.random.key(2), 3)
  fn = lambda k: est.gumbel_softmax(k, SCORES_S, MASK_S)
  np.testing.assert_allclose(jax.vmap(fn)(keys), jnp.stack([fn(k) for k in keys]), rtol=1e-6)
  with pytest.raises(ValueError, match="temperature"):
    est.gumbel_softmax(keys[0], SCORES_S, MASK_S, temperature=0.0)
  with pytest.raises(ValueError, match="does not broadcast"):
    est.gumbel_softmax(keys[0], SCORES_S, jnp.ones(4, bool))
