"""reward_to_go and assign_credit against hand computations with padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import estimators as est

REWARDS_BxT = jnp.array([[1.0, 2.0, 3.0, 4.0, 99.0], [-1.0, 0.5, jnp.nan, jnp.inf, -jnp.inf]])
MASK_BxT = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
# Hand computation: G_t = Σ_{s >= t, s real} r_s at real steps, 0 at padding.
RTG_BxT = np.array([[10.0, 9.0, 7.0, 4.0, 0.0], [-0.5, 0.5, 0.0, 0.0, 0.0]])


def test_reward_to_go_by_hand_with_padding():
  for b in range(2):
    np.testing.assert_array_equal(est.reward_to_go(REWARDS_BxT[b], MASK_BxT[b]), RTG_BxT[b])


def test_discounted_reward_to_go_by_hand():
  got = est.reward_to_go(
    jnp.array([1.0, 2.0, 4.0, 8.0]), jnp.array([1, 1, 1, 0], bool), discount=0.5
  )
  # G_2 = 4; G_1 = 2 + 0.5·4 = 4; G_0 = 1 + 0.5·4 = 3; padded step 3 -> 0.
  np.testing.assert_allclose(got, [3.0, 4.0, 4.0, 0.0])


def test_vmap_and_jit_equal_the_loop():
  vmapped = jax.vmap(est.reward_to_go)(REWARDS_BxT, MASK_BxT)
  jitted = jax.jit(jax.vmap(est.reward_to_go))(REWARDS_BxT, MASK_BxT)
  np.testing.assert_array_equal(vmapped, RTG_BxT)
  np.testing.assert_array_equal(jitted, RTG_BxT)


def test_padded_steps_get_no_gradient():
  grad = jax.grad(lambda r: jnp.sum(est.reward_to_go(r, MASK_BxT[0])))(REWARDS_BxT[0])
  # Real step s appears in G_0..G_s: s + 1 times; padding never.
  np.testing.assert_array_equal(grad, [1.0, 2.0, 3.0, 4.0, 0.0])


@pytest.mark.parametrize(
  ("credit", "expected_row0"),
  [
    ("per_step", [1.0, 2.0, 3.0, 4.0, 0.0]),
    ("reward_to_go", [10.0, 9.0, 7.0, 4.0, 0.0]),
    (est.CreditAssignment.TOTAL, [10.0, 10.0, 10.0, 10.0, 0.0]),
  ],
)
def test_assign_credit(credit, expected_row0):
  got = jax.vmap(est.assign_credit, in_axes=(0, 0, None))(REWARDS_BxT, MASK_BxT, credit)
  np.testing.assert_array_equal(got[0], expected_row0)
  assert np.all(np.isfinite(got)) and np.all(np.asarray(got)[~np.asarray(MASK_BxT)] == 0.0)


def test_errors_name_the_bad_value():
  with pytest.raises(ValueError, match="credit='future' is invalid; valid choices: .*reward_to_go"):
    est.assign_credit(REWARDS_BxT[0], MASK_BxT[0], "future")
  with pytest.raises(TypeError, match="boolean"):
    est.reward_to_go(REWARDS_BxT[0], jnp.ones(5))
  with pytest.raises(ValueError, match="discount"):
    est.reward_to_go(REWARDS_BxT[0], MASK_BxT[0], discount=1.5)
  with pytest.raises(AssertionError):
    est.reward_to_go(REWARDS_BxT, MASK_BxT)  # [B, T]: vmap it instead
