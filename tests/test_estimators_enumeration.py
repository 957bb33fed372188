"""Exact enumeration: brute-force sums, Jensen, masking, gradients, jit and vmap."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from attnlab import estimators as est


def _inputs(seed, shape):
  key_a, key_l = jax.random.split(jax.random.key(seed))
  scores = 2.0 * jax.random.normal(key_a, shape)
  log_lik = -jax.random.uniform(key_l, shape, minval=0.1, maxval=6.0)
  return scores, log_lik


def test_marginal_and_bound_equal_brute_force_float64_sums():
  scores_S, log_lik_S = _inputs(0, (6,))
  mask_S = jnp.array([1, 1, 0, 1, 1, 0], bool)
  log_alpha_S = jax.nn.log_softmax(jnp.where(mask_S, scores_S, -jnp.inf))  # -inf at padding
  s = np.asarray(scores_S, np.float64)
  m = np.asarray(mask_S)
  alpha = np.where(m, np.exp(s), 0.0)
  alpha /= alpha.sum()
  lik = np.exp(np.asarray(log_lik_S, np.float64))
  brute_marginal = np.log(sum(alpha[z] * lik[z] for z in range(6) if m[z]))
  brute_bound = sum(alpha[z] * np.log(lik[z]) for z in range(6) if m[z])
  marginal = est.marginal_log_likelihood(log_alpha_S, log_lik_S, mask_S)
  bound = est.enumerated_bound(log_alpha_S, log_lik_S, mask_S)
  np.testing.assert_allclose(marginal, brute_marginal, rtol=1e-5)
  np.testing.assert_allclose(bound, brute_bound, rtol=1e-5)
  assert bound <= marginal  # Jensen


def test_marginal_is_stable_for_tiny_likelihoods():
  log_alpha_S = jax.nn.log_softmax(jnp.array([0.0, 1.0, 2.0]))
  log_lik_S = jnp.array([-1000.0, -1001.0, -1002.0])  # exp underflows in float32
  expected = -1000.0 + np.log(np.sum(np.exp(np.asarray(log_alpha_S, np.float64) - [0, 1, 2])))
  np.testing.assert_allclose(est.marginal_log_likelihood(log_alpha_S, log_lik_S, None), expected)


def test_garbage_at_masked_positions_and_fully_masked_rows():
  log_alpha_S = jnp.array([jnp.log(0.25), jnp.log(0.75), jnp.nan, -jnp.inf])
  log_lik_S = jnp.array([-1.0, -2.0, jnp.inf, jnp.nan])
  mask_S = jnp.array([True, True, False, False])
  for fn in (est.marginal_log_likelihood, est.enumerated_bound):
    value, grads = jax.value_and_grad(fn, argnums=(0, 1))(log_alpha_S, log_lik_S, mask_S)
    assert jnp.isfinite(value)
    for g in grads:
      assert jnp.all(jnp.isfinite(g)) and jnp.all(g[2:] == 0.0)
    value, grads = jax.value_and_grad(fn, argnums=(0, 1))(
      log_alpha_S, log_lik_S, ~jnp.ones(4, bool)
    )
    assert value == 0.0 and all(jnp.all(g == 0.0) for g in grads)


def test_bound_gradient_is_the_exact_expectation_of_the_score_function_term():
  # ∇_θ Σ_z α_z f_z = Σ_z α_z f_z ∇log α_z = E_z[f(z) ∇log α_z], enumerated by hand.
  scores_S, f_S = _inputs(1, (5,))
  grad = jax.grad(lambda s: est.enumerated_bound(jax.nn.log_softmax(s), f_S, None))(scores_S)
  alpha_S = jax.nn.softmax(scores_S)
  by_hand = sum(alpha_S[z] * f_S[z] * (jax.nn.one_hot(z, 5) - alpha_S) for z in range(5))
  np.testing.assert_allclose(grad, by_hand, rtol=1e-5, atol=1e-6)


def test_check_grads_of_both_objectives():
  scores_S, log_lik_S = _inputs(2, (4,))
  mask_S = jnp.array([True, False, True, True])
  for fn in (est.marginal_log_likelihood, est.enumerated_bound):
    objective = lambda s, lik, f=fn: f(jax.nn.log_softmax(s), lik, mask_S)
    check_grads(objective, (scores_S, log_lik_S), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_sequence_of_steps_under_jit_and_vmap_equals_brute_force_over_alignments():
  # With T independent steps, Σ_t log Σ_z α_tz p(y_t|z) = log Σ over all S^T alignments of
  # Π_t α_{t z_t} p(y_t | z_t): the per-step enumeration is the exact sequence marginal.
  scores_TxS, log_lik_TxS = _inputs(3, (3, 4))
  log_alpha_TxS = jax.nn.log_softmax(scores_TxS)
  per_step = jax.jit(jax.vmap(est.marginal_log_likelihood, in_axes=(0, 0, None)))
  total = jnp.sum(per_step(log_alpha_TxS, log_lik_TxS, None))
  joint = np.asarray(log_alpha_TxS + log_lik_TxS, np.float64)
  alignments = itertools.product(range(4), repeat=3)
  brute = np.log(sum(np.exp(sum(joint[t, z[t]] for t in range(3))) for z in alignments))
  np.testing.assert_allclose(total, brute, rtol=1e-5)
  loop = [est.marginal_log_likelihood(log_alpha_TxS[t], log_lik_TxS[t], None) for t in range(3)]
  np.testing.assert_allclose(per_step(log_alpha_TxS, log_lik_TxS, None), loop, rtol=1e-6)
