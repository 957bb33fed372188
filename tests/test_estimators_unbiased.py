"""Unbiasedness, variance reduction and sign of REINFORCE with every baseline.

Problem: B = 2 examples, each a categorical over S = 5 positions (logits θ_b, through
``attnlab.hard_attention`` with a fixed score table) and a known reward table ``f_b[z]``
read as the hard-attention context. The exact gradient of ``Σ_b E[f_b(z)]`` is ``jax.grad``
of ``enumerated_bound`` with ``log p(y | z) := f``. Every estimator of one key is computed
by one jitted function (one compile for the whole file's statistics).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import attnlab
from attnlab import estimators as est

B, S, K = 2, 5, 4
NUM_ESTIMATES = 20_000
# Each of the B·S = 10 components of an estimator's mean must lie within this many
# standard errors of the exact gradient (two-sided normal tail 7e-6 per component).
NUM_STANDARD_ERRORS = 4.5
THETA_BxS = jnp.array([[0.3, -0.5, 1.0, 0.0, -1.2], [-0.4, 0.8, 0.1, -0.9, 0.5]])
TABLE_BxS = jnp.array([[1.0, -2.0, 0.5, 3.0, -1.0], [-1.5, 0.5, 2.0, -0.5, 1.0]])
OFFSET = 100.0  # a large shared reward offset: what baselines are for.
UNBIASED = ("none", "none_k", "ema", "learned", "rloo", "soft")
# WRONG on purpose: the mean over all K samples includes the sample itself (expectation
# (1 - 1/K) ∇E[r]); the flipped sign (cf. the Show, Attend and Tell code) ascends the surrogate.
BIASED = ("self_inclusive_mean", "flipped_sign")


def _sample(theta_BxS, key, offset):
  """One hard-attention draw per example: (log_prob [B], reward [B], probs [B, S])."""

  def one(theta_S, table_S, key):
    # One query whose scores are θ (a fixed score table); the values are the rewards.
    score_fn = lambda q, k: theta_S[None, :]
    values_Sx1 = (table_S + offset)[:, None]
    out = attnlab.hard_attention(
      key, jnp.zeros((1, 1)), jnp.zeros((S, 1)), values_Sx1, score_fn=score_fn
    )
    return out.log_prob[0], out.context[0, 0], out.probs[0]

  return jax.vmap(one)(theta_BxS, TABLE_BxS, jax.random.split(key, B))


def _exact_grad(theta_BxS, offset):
  def objective(theta_BxS):
    bound_B = jax.vmap(est.enumerated_bound, in_axes=(0, 0, None))(
      jax.nn.log_softmax(theta_BxS), TABLE_BxS + offset, None
    )
    return jnp.sum(bound_B)

  return jax.grad(objective)(theta_BxS)


def _expected_reward(theta_BxS):
  return float(jnp.sum(jax.nn.softmax(theta_BxS) * TABLE_BxS))


def estimates(theta_BxS, key, offset, ema_state, learned_B):
  """Every estimator's draw of ∇Σ_b E[r_b] from the same K draws: dict kind -> [B, S].

  The draws are made once; each kind's gradient is the chain rule through them
  (``jax.vjp``), which equals ``jax.grad`` of the composed surrogate and compiles faster.
  """
  keys = jax.random.split(key, K)
  draws = lambda theta: jax.vmap(_sample, in_axes=(None, 0, None))(theta, keys, offset)
  (log_prob_KxB, reward_KxB, probs_KxBxS), pullback = jax.vjp(draws, theta_BxS)

  def one_sample_loss(kind, log_prob_KxB, reward_KxB, probs_KxBxS):
    log_prob_B, reward_B = log_prob_KxB[0], reward_KxB[0]
    if kind == "soft":  # reward of the expected context Σ_z α_z v_z, v_z = f(z) + offset.
      soft_B = jnp.sum(probs_KxBxS[0] * (TABLE_BxS + offset), axis=-1)
      baseline_B = est.select_baseline("soft", reward_B, soft_reward=soft_B)
    elif kind == "ema":  # one decoder step: rewards [B, T=1].
      baseline_B = est.select_baseline("ema", reward_B[:, None], ema_state=ema_state)[:, 0]
    elif kind == "learned":
      baseline_B = est.select_baseline("learned", reward_B, prediction=learned_B)
    else:
      baseline_B = est.select_baseline("none", reward_B)
    surrogate = est.score_function_surrogate(log_prob_B, reward_B, baseline_B)
    return -surrogate if kind == "flipped_sign" else surrogate

  def k_sample_loss(baseline_fn, log_prob_KxB, reward_KxB, probs_KxBxS):
    del probs_KxBxS
    return est.score_function_surrogate(log_prob_KxB, reward_KxB, baseline_fn(reward_KxB)) / K

  mean_all = lambda r: jnp.broadcast_to(jnp.mean(r, axis=0, keepdims=True), r.shape)
  losses = {
    "none_k": functools.partial(k_sample_loss, lambda r: 0.0),
    "rloo": functools.partial(k_sample_loss, est.leave_one_out_baseline),
    "self_inclusive_mean": functools.partial(k_sample_loss, mean_all),
  }
  for kind in ("none", "ema", "learned", "soft", "flipped_sign"):
    losses[kind] = functools.partial(one_sample_loss, kind)
  out = {}
  for kind, loss in losses.items():
    cotangents = jax.grad(loss, argnums=(0, 1, 2))(log_prob_KxB, reward_KxB, probs_KxBxS)
    # The surrogate's gradient estimates -∇E[r]; negate it to estimate ∇E[r].
    out[kind] = -pullback(cotangents)[0]
  return out


@jax.jit
def _baseline_inputs(offset):
  """EMA state, and an input-dependent value head ``b_ψ(x_b) = ψ · onehot(b)`` trained
  by its own loss, both after 300 earlier batches: neither has seen the samples it is
  later applied to."""
  features_BxB = jnp.eye(B)
  # SGD on Σ(b - r)² with step 0.25 is an EMA of decay 0.5 (fast); then decay 0.95.
  opt = optax.sgd(optax.piecewise_constant_schedule(0.25, {200: 0.1}))

  def step(carry, key):
    ema_state, psi_B, opt_state = carry
    _, reward_B, _ = _sample(THETA_BxS, key, offset)
    ema_state = est.ema_baseline_update(ema_state, reward_B[:, None], jnp.ones((B, 1), bool))
    loss_fn = lambda psi: est.learned_baseline_loss(features_BxB @ psi, reward_B)
    updates, opt_state = opt.update(jax.grad(loss_fn)(psi_B), opt_state)
    return (ema_state, optax.apply_updates(psi_B, updates), opt_state), None

  psi_B = jnp.zeros((B,))
  keys = jax.random.split(jax.random.key(3), 300)
  init = (est.ema_baseline_init(1), psi_B, opt.init(psi_B))
  ema_state, psi_B, _ = jax.lax.scan(step, init, keys)[0]
  return ema_state, features_BxB @ psi_B


_draw_all = jax.jit(jax.vmap(estimates, in_axes=(None, 0, None, None, None)))


@functools.cache
def _draws(offset):
  """kind -> NUM_ESTIMATES draws [N, B, S] (float64 numpy) at THETA_BxS."""
  ema_state, learned_B = _baseline_inputs(offset)
  keys = jax.random.split(jax.random.key(0), NUM_ESTIMATES)
  draws = _draw_all(THETA_BxS, keys, offset, ema_state, learned_B)
  return {kind: np.asarray(d, np.float64) for kind, d in draws.items()}


def _z_scores(offset, kind):
  """(mean of the draws - exact gradient) / standard error, per component [B, S]."""
  draws_NxBxS = _draws(offset)[kind]
  std_err = draws_NxBxS.std(axis=0, ddof=1) / np.sqrt(NUM_ESTIMATES)
  assert np.all(std_err > 0), kind
  exact = np.asarray(_exact_grad(THETA_BxS, offset), np.float64)
  return (draws_NxBxS.mean(axis=0) - exact) / std_err


@pytest.mark.parametrize("kind", UNBIASED)
@pytest.mark.parametrize("offset", [0.0, OFFSET])
def test_mean_of_estimates_matches_exact_gradient(kind, offset):
  z = _z_scores(offset, kind)
  assert np.max(np.abs(z)) < NUM_STANDARD_ERRORS, z


@pytest.mark.parametrize("kind", BIASED)
def test_the_unbiasedness_check_detects_biased_estimators(kind):
  # The check has power: a 25% bias (or the flipped sign) is many standard errors away.
  z = _z_scores(0.0, kind)
  assert np.max(np.abs(z)) > 3 * NUM_STANDARD_ERRORS, z


@pytest.mark.parametrize(
  ("kind", "reference"),
  [("ema", "none"), ("learned", "none"), ("soft", "none"), ("rloo", "none_k")],
)
def test_baselines_reduce_variance_under_a_large_offset(kind, reference):
  # Trace of the covariance of the draws. Rewards ~100 ± 3: removing the offset cuts the
  # variance by a factor in the hundreds; require at least 10x (the issue asks for >= 2x).
  # RLOO is compared with no baseline at equal K.
  draws = _draws(OFFSET)
  variance = lambda d: float(np.sum(np.var(d, axis=0, ddof=1)))
  assert variance(draws[reference]) > 10.0 * variance(draws[kind])


SIGN_KINDS = ("none", "rloo", "ema", "flipped_sign")


@functools.cache
def _train_by_descent():
  """40 steps of descent on each kind's surrogate from θ = 0, one θ per kind (vmapped).
  The EMA state is read before and updated after each step, as in a training loop."""
  learned_B = jnp.zeros((B,))
  pick = lambda d: jnp.stack([d[kind][i] for i, kind in enumerate(SIGN_KINDS)])
  per_theta = jax.vmap(estimates, in_axes=(0, None, None, None, None))

  @jax.jit
  def train():
    def step(carry, key):
      thetas_NxBxS, ema_state = carry
      estimate_NxBxS = pick(per_theta(thetas_NxBxS, key, 0.0, ema_state, learned_B))
      ema_index = SIGN_KINDS.index("ema")
      _, reward_B, _ = _sample(thetas_NxBxS[ema_index], jax.random.split(key, K)[0], 0.0)
      ema_state = est.ema_baseline_update(ema_state, reward_B[:, None], jnp.ones((B, 1), bool))
      # estimate = -∇surrogate, so adding it IS gradient descent on the surrogate.
      return (thetas_NxBxS + 0.2 * estimate_NxBxS, ema_state), None

    thetas = jnp.zeros((len(SIGN_KINDS), B, S))
    keys = jax.random.split(jax.random.key(5), 40)
    return jax.lax.scan(step, (thetas, est.ema_baseline_init(1)), keys)[0][0]

  return dict(zip(SIGN_KINDS, train(), strict=True))


@pytest.mark.parametrize("kind", ["none", "rloo", "ema"])
def test_gradient_descent_on_the_surrogate_increases_expected_reward(kind):
  before = _expected_reward(jnp.zeros((B, S)))
  assert _expected_reward(_train_by_descent()[kind]) > before + 1.0


def test_flipped_sign_decreases_expected_reward():
  before = _expected_reward(jnp.zeros((B, S)))
  assert _expected_reward(_train_by_descent()["flipped_sign"]) < before - 1.0
