"""Variational estimators: KL and ELBO against float64 sums, masking, and VIMCO's gradient.

VIMCO is checked exactly, not by Monte Carlo: with S positions and K samples there are S^K
joint draws, so the estimator's expectation is a finite sum that must equal the gradient of
the expected multi-sample bound.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attnlab import estimators as est


def _log_probs(seed, size, mask=None):
  logits = 1.5 * jax.random.normal(jax.random.key(seed), (size,))
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  return jax.nn.log_softmax(logits)


def test_exports_and_positional_order():
  assert est.categorical_kl.__code__.co_varnames[:3] == ("log_q_S", "log_p_S", "mask_S")
  assert est.enumerated_elbo.__code__.co_varnames[:4] == (
    "log_q_S",
    "log_p_S",
    "log_lik_S",
    "mask_S",
  )
  assert est.vimco_surrogate.__code__.co_varnames[:2] == ("log_q_K", "log_weight_K")


def test_kl_and_elbo_equal_float64_sums_with_masked_padding():
  mask_S = jnp.array([1, 1, 0, 1, 1, 0], bool)
  log_q_S, log_p_S = _log_probs(0, 6, mask_S), _log_probs(1, 6, mask_S)  # -inf at padding
  log_lik_S = jnp.where(mask_S, -jax.random.uniform(jax.random.key(2), (6,), maxval=5.0), jnp.nan)
  m = np.asarray(mask_S)
  q = np.where(m, np.exp(np.asarray(log_q_S, np.float64)), 0.0)
  p = np.where(m, np.exp(np.asarray(log_p_S, np.float64)), 0.0)
  lik = np.asarray(log_lik_S, np.float64)
  kl = sum(q[z] * np.log(q[z] / p[z]) for z in range(6) if m[z])
  elbo = sum(q[z] * lik[z] for z in range(6) if m[z]) - kl
  np.testing.assert_allclose(est.categorical_kl(log_q_S, log_p_S, mask_S), kl, rtol=1e-5)
  np.testing.assert_allclose(
    est.enumerated_elbo(log_q_S, log_p_S, log_lik_S, mask_S), elbo, rtol=1e-5
  )
  half = est.enumerated_elbo(log_q_S, log_p_S, log_lik_S, mask_S, kl_weight=0.5)
  np.testing.assert_allclose(half, elbo + 0.5 * kl, rtol=1e-5)


def test_elbo_is_a_bound_tight_at_the_true_posterior_and_hard_bound_at_the_prior():
  log_p_S = _log_probs(3, 5)
  log_lik_S = -jax.random.uniform(jax.random.key(4), (5,), minval=0.1, maxval=4.0)
  log_marginal = est.marginal_log_likelihood(log_p_S, log_lik_S, None)
  true_posterior_S = jax.nn.log_softmax(log_p_S + log_lik_S)
  for seed in range(5):
    log_q_S = _log_probs(10 + seed, 5)
    assert est.enumerated_elbo(log_q_S, log_p_S, log_lik_S) <= log_marginal + 1e-6
    assert est.categorical_kl(log_q_S, log_p_S) >= 0.0
  np.testing.assert_allclose(
    est.enumerated_elbo(true_posterior_S, log_p_S, log_lik_S), log_marginal, rtol=1e-6
  )
  np.testing.assert_allclose(
    est.enumerated_elbo(log_p_S, log_p_S, log_lik_S),
    est.enumerated_bound(log_p_S, log_lik_S, None),
    rtol=1e-6,
  )
  assert est.categorical_kl(log_p_S, log_p_S) == 0.0


def test_fully_masked_row_and_zero_probabilities_give_finite_values_and_gradients():
  mask_S = jnp.zeros(4, bool)
  junk_S = jnp.array([jnp.nan, -jnp.inf, jnp.inf, 1.0])
  fns = {
    "kl": lambda a, b, c: est.categorical_kl(a, b, mask_S),
    "elbo": lambda a, b, c: est.enumerated_elbo(a, b, c, mask_S),
  }
  for name, fn in fns.items():
    value, grads = jax.value_and_grad(fn, argnums=(0, 1, 2))(junk_S, junk_S, junk_S)
    assert value == 0.0, name
    for g in grads:
      np.testing.assert_array_equal(g, jnp.zeros(4))
  # q is exactly 0 where p is 0 too: 0 log(0/0) = 0, no NaN in value or gradient.
  log_q_S = jnp.array([0.0, -jnp.inf, -jnp.inf])
  log_p_S = jnp.array([-0.1, -jnp.inf, jnp.log(1 - jnp.exp(-0.1))])
  log_lik_S = jnp.array([-1.0, -jnp.inf, -2.0])
  value, grads = jax.value_and_grad(est.enumerated_elbo, argnums=(0, 1, 2))(
    log_q_S, log_p_S, log_lik_S
  )
  np.testing.assert_allclose(value, -1.0 - 0.1, rtol=1e-6)
  for g in grads:
    assert np.all(np.isfinite(g))


def test_elbo_gradients_are_exact():
  mask_S = jnp.array([1, 1, 1, 0, 1], bool)

  def elbo(q_logits, p_logits, log_lik):
    log_q = jax.nn.log_softmax(jnp.where(mask_S, q_logits, -1e9))
    log_p = jax.nn.log_softmax(jnp.where(mask_S, p_logits, -1e9))
    return est.enumerated_elbo(log_q, log_p, log_lik, mask_S)

  args = [jax.random.normal(jax.random.key(i), (5,)) for i in range(3)]
  check_grads(elbo, args, order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_vimco_value_and_gradient_match_the_formula_by_hand():
  log_q_K = jnp.log(jnp.array([0.5, 0.2, 0.1]))
  log_w_K = jnp.array([-1.0, -3.0, -0.5])
  value, (g_q, g_w) = jax.value_and_grad(est.vimco_surrogate, argnums=(0, 1))(log_q_K, log_w_K)
  w = np.exp(np.array([-1.0, -3.0, -0.5], np.float64))
  bound = np.log(w.mean())
  np.testing.assert_allclose(value, -bound, rtol=1e-6)
  np.testing.assert_allclose(g_w, -w / w.sum(), rtol=1e-5)
  log_w = np.log(w)
  for k in range(3):
    others = np.delete(log_w, k)
    loo = np.log((np.exp(others).sum() + np.exp(others.mean())) / 3)
    np.testing.assert_allclose(g_q[k], -(bound - loo), rtol=1e-5)
  with pytest.raises(ValueError, match="K >= 2"):
    est.vimco_surrogate(log_q_K[:1], log_w_K[:1])


def _vimco_check(num_positions, num_samples, seed):
  """Exact expectation of the VIMCO estimate vs the gradient of the expected bound."""
  keys = jax.random.split(jax.random.key(seed), 3)
  params = {
    "q": jax.random.normal(keys[0], (num_positions,)),
    "p": jax.random.normal(keys[1], (num_positions,)),
    "lik": -jax.random.uniform(keys[2], (num_positions,), minval=0.1, maxval=3.0),
  }

  def log_terms(theta, z_K):
    log_q_S = jax.nn.log_softmax(theta["q"])
    log_p_S = jax.nn.log_softmax(theta["p"])
    log_q_K = log_q_S[z_K]
    return log_q_K, log_p_S[z_K] + theta["lik"][z_K] - log_q_K

  draws = jnp.array(list(itertools.product(range(num_positions), repeat=num_samples)))

  def draw_prob(theta, z_K):
    return jnp.exp(jnp.sum(jax.nn.log_softmax(theta["q"])[z_K]))

  def expected_bound(theta):
    bound_N = jax.vmap(lambda z: est.multi_sample_bound(log_terms(theta, z)[1]))(draws)
    return jnp.sum(jax.vmap(lambda z: draw_prob(theta, z))(draws) * bound_N)

  def estimate(z_K):
    return jax.grad(lambda t: -est.vimco_surrogate(*log_terms(t, z_K)))(params)

  probs_N = jax.vmap(lambda z: draw_prob(params, z))(draws)
  estimates = jax.vmap(estimate)(draws)
  expected = jax.tree.map(lambda g: jnp.tensordot(probs_N, g, axes=1), estimates)
  exact = jax.grad(expected_bound)(params)
  for name in params:
    np.testing.assert_allclose(expected[name], exact[name], rtol=1e-4, atol=1e-6)
  # Not a trivially zero estimator: the posterior's gradient is non-zero.
  assert np.abs(exact["q"]).max() > 1e-3


def test_vimco_is_unbiased_for_the_multi_sample_bound_exactly():
  _vimco_check(num_positions=3, num_samples=2, seed=0)
  _vimco_check(num_positions=3, num_samples=4, seed=1)


def test_descending_the_vimco_surrogate_ascends_the_bound():
  log_lik_S = jnp.array([-0.1, -3.0, -3.0, -3.0])  # position 0 explains y best
  log_p_S = jnp.log(jnp.full(4, 0.25))
  z_NxK = jax.random.categorical(jax.random.key(0), jnp.zeros(4), shape=(2000, 3))

  def mean_surrogate(q_logits):
    def one(z_K):
      log_q_K = jax.nn.log_softmax(q_logits)[z_K]
      return est.vimco_surrogate(log_q_K, log_p_S[z_K] + log_lik_S[z_K] - log_q_K)

    return jnp.mean(jax.vmap(one)(z_NxK))

  grad_S = jax.grad(mean_surrogate)(jnp.zeros(4))  # draws were made from q = uniform
  # A descent step moves q's mass towards position 0 (2000 draws: far beyond the noise).
  assert grad_S[0] < 0 and np.all(np.asarray(grad_S[1:]) > 0)


def test_jit_and_vmap_agree_with_eager():
  log_q_BxS = jax.vmap(lambda s: _log_probs(s, 5))(jnp.arange(3))
  log_p_BxS = jax.vmap(lambda s: _log_probs(s + 7, 5))(jnp.arange(3))
  log_lik_BxS = -jnp.abs(jax.random.normal(jax.random.key(9), (3, 5)))
  batched = jax.jit(jax.vmap(est.enumerated_elbo))(log_q_BxS, log_p_BxS, log_lik_BxS)
  loop = [est.enumerated_elbo(log_q_BxS[i], log_p_BxS[i], log_lik_BxS[i]) for i in range(3)]
  np.testing.assert_allclose(batched, loop, rtol=1e-6)
  v_batched = jax.jit(jax.vmap(est.vimco_surrogate))(log_q_BxS[:, :4], log_lik_BxS[:, :4])
  v_loop = [est.vimco_surrogate(log_q_BxS[i, :4], log_lik_BxS[i, :4]) for i in range(3)]
  np.testing.assert_allclose(v_batched, v_loop, rtol=1e-6)
