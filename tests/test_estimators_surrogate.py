"""score_function_surrogate and entropy_bonus: hand values, sign, masks, jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import estimators as est


def test_gradient_is_minus_advantage_times_score():
  logits_S = jnp.array([0.2, -1.0, 0.5, 0.0])
  index, reward, baseline = 2, 3.0, 1.25

  def surrogate(logits_S):
    log_prob = jax.nn.log_softmax(logits_S)[index]
    return est.score_function_surrogate(log_prob, jnp.float32(reward), baseline)

  grad_S = jax.grad(surrogate)(logits_S)
  # ∇ log softmax(θ)_i = onehot(i) - softmax(θ): hand-computed REINFORCE term, negated.
  expected_S = -(reward - baseline) * (jax.nn.one_hot(index, 4) - jax.nn.softmax(logits_S))
  np.testing.assert_allclose(grad_S, expected_S, rtol=1e-6, atol=1e-7)
  # A positive advantage: descent raises the chosen logit relative to the others.
  assert grad_S[index] < 0 and jnp.all(jnp.delete(grad_S, index) > 0)


def test_value_is_the_negated_sum_and_no_gradient_reaches_reward_or_baseline():
  log_prob_BxT = jnp.array([[-0.5, -1.0, -2.0], [-0.1, -0.3, -0.7]])
  reward_BxT = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  baseline_T = jnp.array([0.5, 1.0, 1.5])  # per-step baseline, broadcast along B
  value = est.score_function_surrogate(log_prob_BxT, reward_BxT, baseline_T)
  advantage = reward_BxT - jnp.broadcast_to(baseline_T, (2, 3))
  np.testing.assert_allclose(value, -jnp.sum(advantage * log_prob_BxT), rtol=1e-6)
  grads = jax.grad(est.score_function_surrogate, argnums=(0, 1, 2))(
    log_prob_BxT, reward_BxT, baseline_T
  )
  np.testing.assert_allclose(grads[0], -advantage, rtol=1e-6)
  np.testing.assert_array_equal(grads[1], 0.0)
  np.testing.assert_array_equal(grads[2], 0.0)


def test_masked_elements_contribute_nothing_even_when_nan():
  log_prob = jnp.array([-0.5, -1.0, jnp.nan, -jnp.inf])
  reward = jnp.array([2.0, 1.0, jnp.inf, jnp.nan])
  mask = jnp.array([True, True, False, False])
  fn = lambda lp: est.score_function_surrogate(lp, reward, 0.5, mask=mask)
  value, grad = jax.value_and_grad(fn)(log_prob)
  np.testing.assert_allclose(value, -(1.5 * -0.5 + 0.5 * -1.0), rtol=1e-6)
  np.testing.assert_array_equal(grad, jnp.array([-1.5, -0.5, 0.0, 0.0]))


def test_jit_and_vmap_agree_with_eager_loop():
  key_l, key_r = jax.random.split(jax.random.key(0))
  log_prob_BxT = -jax.random.uniform(key_l, (3, 4))
  reward_BxT = jax.random.normal(key_r, (3, 4))
  mask_BxT = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)
  per_row = lambda lp, r, m: est.score_function_surrogate(lp, r, 0.1, mask=m)
  loop = jnp.stack([per_row(log_prob_BxT[b], reward_BxT[b], mask_BxT[b]) for b in range(3)])
  vmapped = jax.vmap(per_row)(log_prob_BxT, reward_BxT, mask_BxT)
  jitted = jax.jit(jax.vmap(per_row))(log_prob_BxT, reward_BxT, mask_BxT)
  np.testing.assert_allclose(vmapped, loop, rtol=1e-6)
  np.testing.assert_allclose(jitted, loop, rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(loop), per_row(log_prob_BxT, reward_BxT, mask_BxT), rtol=1e-5)


def test_low_precision_inputs_give_float32():
  value = est.score_function_surrogate(
    jnp.array([-1.0, -2.0], jnp.bfloat16), jnp.array([1e4, 2.0], jnp.bfloat16)
  )
  assert value.dtype == jnp.float32 and jnp.isfinite(value)


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match="same shape"):
    est.score_function_surrogate(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(ValueError, match="baseline of shape"):
    est.score_function_surrogate(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2))
  with pytest.raises(TypeError, match="boolean"):
    est.score_function_surrogate(jnp.zeros(3), jnp.zeros(3), mask=jnp.ones(3))


def test_entropy_bonus_value_mask_and_direction():
  logits_BxS = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  mask_B = jnp.array([True, False])

  def entropy(logits):
    log_p = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)

  bonus = est.entropy_bonus(entropy(logits_BxS), mask_B, 0.002)
  np.testing.assert_allclose(bonus, 0.002 * entropy(logits_BxS[0]), rtol=1e-6)
  grad = jax.grad(lambda x: -est.entropy_bonus(entropy(x), mask_B, 0.002))(logits_BxS)
  np.testing.assert_array_equal(grad[1], 0.0)  # masked row: no gradient
  # Descent on -bonus raises the entropy of the unmasked row.
  assert entropy(logits_BxS[0] - 10.0 * grad[0]) > entropy(logits_BxS[0])
  np.testing.assert_allclose(jax.jit(est.entropy_bonus)(entropy(logits_BxS), mask_B, 0.002), bonus)
  with pytest.raises(ValueError, match="coefficient"):
    est.entropy_bonus(entropy(logits_BxS), None, -0.1)
