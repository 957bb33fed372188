"""mix_with_expectation: scope semantics, frequencies, gradients and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import estimators as est

B, T, D = 6, 2, 3
SAMPLED = jnp.ones((B, T, D))
EXPECTED = jnp.zeros((B, T, D))
NUM_KEYS = 4000


def _uses_expected(scope, probability):
  mix = lambda key: est.mix_with_expectation(key, SAMPLED, EXPECTED, probability, scope)
  mixed_NxBxTxD = jax.jit(jax.vmap(mix))(jax.random.split(jax.random.key(0), NUM_KEYS))
  return np.asarray(mixed_NxBxTxD == 0.0)


@pytest.mark.parametrize("scope", [est.MixScope.PER_EXAMPLE, "per_batch"])
def test_each_example_takes_the_expectation_with_probability_p(scope):
  used = _uses_expected(scope, 0.3)
  # A whole example is replaced or kept, never part of it.
  assert np.all(used.all(axis=(2, 3)) | ~used.any(axis=(2, 3)))
  used_NxB = used[:, :, 0, 0]
  # Binomial frequency over NUM_KEYS draws: 4.5 standard errors.
  std_err = np.sqrt(0.3 * 0.7 / NUM_KEYS)
  assert np.all(np.abs(used_NxB.mean(axis=0) - 0.3) < 4.5 * std_err)
  same_coin = np.all(used_NxB == used_NxB[:, :1], axis=1)
  if est.MixScope.parse(scope) is est.MixScope.PER_BATCH:
    assert np.all(same_coin)
  else:  # B independent coins agree with probability 0.3^6 + 0.7^6 ≈ 0.12.
    assert same_coin.mean() < 0.2


def test_extreme_probabilities_and_consistency_with_expectation_mask():
  key = jax.random.key(4)
  np.testing.assert_array_equal(
    est.mix_with_expectation(key, SAMPLED, EXPECTED, 0.0, "per_example"), SAMPLED
  )
  np.testing.assert_array_equal(
    est.mix_with_expectation(key, SAMPLED, EXPECTED, 1.0, "per_batch"), EXPECTED
  )
  sampled = jax.random.normal(jax.random.key(5), (B, T, D))
  mixed = est.mix_with_expectation(key, sampled, EXPECTED, 0.5, "per_example")
  use_B = est.expectation_mask(key, B, 0.5, "per_example")
  for b in range(B):
    np.testing.assert_array_equal(mixed[b], EXPECTED[b] if use_B[b] else sampled[b])


def test_gradient_reaches_only_the_selected_branch():
  key = jax.random.key(6)
  grads = jax.grad(
    lambda s, e: jnp.sum(est.mix_with_expectation(key, s, e, 0.5, "per_example")), argnums=(0, 1)
  )(SAMPLED, EXPECTED)
  use_B = np.asarray(est.expectation_mask(key, B, 0.5, "per_example"))
  assert 0 < use_B.sum() < B  # this key mixes both kinds
  np.testing.assert_array_equal(np.asarray(grads[1])[:, 0, 0], use_B.astype(float))
  np.testing.assert_array_equal(np.asarray(grads[0])[:, 0, 0], (~use_B).astype(float))


def test_errors_name_the_bad_value():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="scope='per_image' is invalid; .*per_example"):
    est.mix_with_expectation(key, SAMPLED, EXPECTED, 0.5, "per_image")
  with pytest.raises(ValueError, match="probability"):
    est.mix_with_expectation(key, SAMPLED, EXPECTED, 1.5, "per_batch")
  with pytest.raises(ValueError, match="same shape"):
    est.mix_with_expectation(key, SAMPLED, EXPECTED[:, :1], 0.5, "per_batch")
