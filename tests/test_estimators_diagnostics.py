"""gradient_estimate_stats on estimators with known mean and covariance, and on REINFORCE."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import estimators as est

EXACT = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "b": jnp.array([0.0])}  # ‖g*‖ = 5
SIGMA = jnp.array([0.5, 1.0, 1.5, 2.0, 0.0])  # per-entry noise std (flattened order)
TRACE = float(jnp.sum(SIGMA**2))  # 7.5
M = 4000
# jit: one compile per estimator instead of an op-by-op eager vmap.
stats_jit = jax.jit(
  est.gradient_estimate_stats, static_argnums=(0, 2), static_argnames="batch_size"
)


def _noisy(key, bias):
  """exact + bias + independent noise of std SIGMA, as a pytree like EXACT."""
  flat = jnp.concatenate([EXACT["b"], EXACT["w"].reshape(-1)])  # leaves in key order
  flat = flat + bias + SIGMA * jax.random.normal(key, (5,))
  return {"b": flat[:1], "w": flat[1:].reshape(2, 2)}


def test_leaf_order_assumption():
  assert [x.shape for x in jax.tree.leaves(EXACT)] == [(1,), (2, 2)]


def test_unbiased_noisy_estimator():
  stats = stats_jit(functools.partial(_noisy, bias=0.0), jax.random.key(0), M, EXACT)
  # Sample trace of covariance: relative std ≈ sqrt(2 Σσ⁴ / (M-1)) / Σσ² ≈ 0.015; allow 5%.
  np.testing.assert_allclose(stats["variance"], TRACE, rtol=0.05)
  np.testing.assert_allclose(stats["bias_sq_floor"], stats["variance"] / M, rtol=1e-6)
  # Unbiased: E[bias_sq] = TRACE / M; allow 5x for a chi-square-like draw.
  assert stats["bias_sq"] < 5 * TRACE / M
  np.testing.assert_allclose(stats["snr"], 5.0 / np.sqrt(TRACE), rtol=0.05)
  np.testing.assert_allclose(stats["mean_sq_norm"], 25.0, rtol=0.01)
  assert 0.7 < stats["cosine"] < 0.95  # noise of norm ~2.7 around a norm-5 signal


def test_biased_estimator_bias_is_measured():
  bias = jnp.array([0.0, 1.0, 0.0, 0.0, -2.0])  # ‖bias‖² = 5
  stats = stats_jit(
    functools.partial(_noisy, bias=bias), jax.random.key(1), M, EXACT, batch_size=1000
  )
  # bias_sq - bias_sq_floor estimates ‖bias‖² (std ≈ 2·sqrt(Σ b²σ²/M) ≈ 0.03).
  np.testing.assert_allclose(stats["bias_sq"] - stats["bias_sq_floor"], 5.0, atol=0.2)


def test_deterministic_estimators_exact_values_and_no_nan():
  twice_fn = lambda k: jax.tree.map(lambda x: 2 * x, EXACT)
  twice = stats_jit(twice_fn, jax.random.key(0), 8, EXACT)
  np.testing.assert_allclose(twice["variance"], 0.0, atol=1e-10)
  np.testing.assert_allclose(twice["bias_sq"], 25.0)
  np.testing.assert_allclose(twice["cosine"], 1.0, rtol=1e-6)
  assert np.isfinite(twice["snr"]) and twice["snr"] > 1e6
  flipped_fn = lambda k: jax.tree.map(jnp.negative, EXACT)
  flipped = stats_jit(flipped_fn, jax.random.key(0), 8, EXACT)
  np.testing.assert_allclose(flipped["cosine"], -1.0, rtol=1e-6)
  zero = jax.tree.map(jnp.zeros_like, EXACT)
  stats = stats_jit(lambda k: zero, jax.random.key(0), 8, zero)
  assert all(np.isfinite(v) for v in stats.values()) and stats["cosine"] == 0.0


def test_without_exact_bias_and_cosine_are_absent_and_batching_does_not_change_results():
  fn = functools.partial(_noisy, bias=0.0)
  full = stats_jit(fn, jax.random.key(2), 64)
  chunked = stats_jit(fn, jax.random.key(2), 64, batch_size=16)
  assert set(full) == {"variance", "snr", "mean_sq_norm"}
  for name in full:
    np.testing.assert_allclose(full[name], chunked[name], rtol=1e-5)


def test_reinforce_diagnostics_against_enumeration():
  # One categorical, reward f + 50: without a baseline the estimate is mostly noise; the
  # leave-one-out baseline is far better aligned with the exact (enumerated) gradient.
  theta_S = jnp.array([0.5, -0.5, 0.0, 1.0])
  reward_S = jnp.array([1.0, -1.0, 2.0, 0.0]) + 50.0
  exact = jax.grad(lambda t: est.enumerated_bound(jax.nn.log_softmax(t), reward_S, None))(theta_S)

  def reinforce(key, baseline_fn):
    z_K = jax.random.categorical(key, theta_S, shape=(4,))
    reward_K = reward_S[z_K]
    surrogate = lambda t: est.score_function_surrogate(
      jax.nn.log_softmax(t)[z_K], reward_K, baseline_fn(reward_K)
    )
    return -jax.grad(surrogate)(theta_S) / 4

  plain = stats_jit(lambda k: reinforce(k, lambda r: 0.0), jax.random.key(0), 2000, exact)
  rloo = stats_jit(
    lambda k: reinforce(k, est.leave_one_out_baseline), jax.random.key(0), 2000, exact
  )
  for stats in (plain, rloo):  # both unbiased: bias within a few Monte Carlo floors
    assert stats["bias_sq"] < 6 * stats["bias_sq_floor"]
  assert plain["variance"] > 100 * rloo["variance"]
  assert rloo["cosine"] > 0.5 > plain["cosine"]
  assert rloo["snr"] > 5 * plain["snr"]


def test_errors():
  fn = functools.partial(_noisy, bias=0.0)
  with pytest.raises(ValueError, match="num_samples"):
    est.gradient_estimate_stats(fn, jax.random.key(0), 1)
  with pytest.raises(ValueError, match="structure"):
    stats_jit(fn, jax.random.key(0), 4, {"w": EXACT["w"]})  # raises while tracing
