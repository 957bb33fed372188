"""EMA (per step, padding ignored), leave-one-out, learned and soft baselines; the switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import estimators as est


def test_ema_is_per_step_ignores_padding_and_keeps_unseen_steps():
  state = est.ema_baseline_init(4)
  rewards_BxT = jnp.array([[1.0, 2.0, 1e9], [3.0, jnp.nan, -1e9]])
  mask_BxT = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
  state = est.ema_baseline_update(state, rewards_BxT, mask_BxT, decay=0.9)
  # First observation of a step sets it to the masked batch mean; step 2 (all padded) and
  # step 3 (beyond T) are unseen and keep value 0.
  np.testing.assert_allclose(state.value, [2.0, 2.0, 0.0, 0.0])
  np.testing.assert_array_equal(state.count, [1, 1, 0, 0])
  rewards_BxT = jnp.array([[5.0, 4.0, 7.0], [7.0, 0.0, 99.0]])
  mask_BxT = jnp.array([[1, 1, 1], [1, 0, 0]], bool)
  state = est.ema_baseline_update(state, rewards_BxT, mask_BxT, decay=0.9)
  np.testing.assert_allclose(state.value, [0.9 * 2 + 0.1 * 6, 0.9 * 2 + 0.1 * 4, 7.0, 0.0])
  np.testing.assert_array_equal(state.count, [2, 2, 1, 0])
  np.testing.assert_allclose(est.ema_baseline_value(state, 2), state.value[:2])


def test_ema_update_under_jit_and_scan_converges_to_the_per_step_mean():
  means_T = jnp.array([10.0, -3.0, 0.5])

  def step(state, key):
    rewards_BxT = jnp.broadcast_to(means_T, (8, 3)) + jax.random.normal(key, (8, 3))
    return est.ema_baseline_update(state, rewards_BxT, jnp.ones((8, 3), bool)), None

  keys = jax.random.split(jax.random.key(0), 200)
  state = jax.jit(lambda: jax.lax.scan(step, est.ema_baseline_init(3), keys)[0])()
  # Stationary EMA of 8-sample means (σ = 1/√8): std √(0.1/1.9)/√8 ≈ 0.08; allow 5σ.
  np.testing.assert_allclose(state.value, means_T, atol=0.4)


def test_ema_errors():
  with pytest.raises(ValueError, match="initialised for 2"):
    est.ema_baseline_update(est.ema_baseline_init(2), jnp.zeros((1, 3)), jnp.ones((1, 3), bool))
  with pytest.raises(ValueError, match="decay"):
    est.ema_baseline_update(
      est.ema_baseline_init(2), jnp.zeros((1, 2)), jnp.ones((1, 2), bool), 1.0
    )
  with pytest.raises(ValueError, match="num_steps"):
    est.ema_baseline_init(0)


def test_leave_one_out_by_hand_and_independent_of_own_sample():
  rewards_KxN = jnp.array([[1.0, 10.0], [2.0, 20.0], [6.0, 60.0]])
  baseline = est.leave_one_out_baseline(rewards_KxN)
  np.testing.assert_allclose(baseline, [[4.0, 40.0], [3.5, 35.0], [1.5, 15.0]])
  # b_k must not depend on r_k: its Jacobian diagonal is 0 (and stop_gradient'ed anyway).
  jac = jax.jacfwd(lambda r: est.leave_one_out_baseline(r))(rewards_KxN[:, 0])
  np.testing.assert_array_equal(jnp.diag(jac), 0.0)
  # Works on [K, B, T] and under jit/vmap.
  rewards_KxBxT = jax.random.normal(jax.random.key(1), (4, 2, 3))
  by_vmap = jax.vmap(est.leave_one_out_baseline, in_axes=1, out_axes=1)(rewards_KxBxT)
  np.testing.assert_allclose(jax.jit(est.leave_one_out_baseline)(rewards_KxBxT), by_vmap, rtol=1e-6)
  k = 1
  others = jnp.delete(rewards_KxBxT, k, axis=0).mean(axis=0)
  np.testing.assert_allclose(by_vmap[k], others, rtol=1e-5)


def test_leave_one_out_needs_two_samples():
  with pytest.raises(ValueError, match="K >= 2"):
    est.leave_one_out_baseline(jnp.zeros((1, 5)))


def test_learned_baseline_loss_trains_only_the_prediction():
  prediction = jnp.array([1.0, 2.0, 3.0])
  reward = jnp.array([2.0, 2.0, 100.0])
  mask = jnp.array([True, True, False])
  loss, (g_pred, g_reward) = jax.value_and_grad(est.learned_baseline_loss, argnums=(0, 1))(
    prediction, reward, mask
  )
  np.testing.assert_allclose(loss, 1.0)
  np.testing.assert_allclose(g_pred, [-2.0, 0.0, 0.0])
  np.testing.assert_array_equal(g_reward, 0.0)


def test_select_baseline_switch():
  reward_BxT = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  state = est.ema_baseline_update(est.ema_baseline_init(3), reward_BxT, jnp.ones((2, 2), bool))
  np.testing.assert_array_equal(est.select_baseline("none", reward_BxT), 0.0)
  np.testing.assert_allclose(
    est.select_baseline("ema", reward_BxT, ema_state=state), [[2.0, 3.0], [2.0, 3.0]]
  )
  np.testing.assert_allclose(est.select_baseline("rloo", reward_BxT), [[3.0, 4.0], [1.0, 2.0]])
  pred = jnp.array([[0.5, 0.5], [1.0, 1.0]])
  learned = lambda p: est.select_baseline("learned", reward_BxT, prediction=p)
  soft = lambda p: est.select_baseline("soft", reward_BxT, soft_reward=p)
  for baseline_fn in (learned, soft):
    np.testing.assert_allclose(baseline_fn(pred), pred)
    # Baselines are constants for the surrogate: no gradient flows back through them.
    np.testing.assert_array_equal(jax.grad(lambda p, f=baseline_fn: jnp.sum(f(p)))(pred), 0.0)
  with pytest.raises(ValueError, match="baseline='mean' is invalid; .*rloo"):
    est.select_baseline("mean", reward_BxT)
  with pytest.raises(ValueError, match="needs the ema_state"):
    est.select_baseline(est.BaselineKind.EMA, reward_BxT)
  with pytest.raises(ValueError, match="expected reward's"):
    est.select_baseline("soft", reward_BxT, soft_reward=jnp.zeros(2))
