"""Masked softmax / log-softmax against jax.nn, temperature, dtypes, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attnlab import normalizers


def _scores_and_mask(seed: int, shape=(2, 3, 6)):
  # numpy for test data: each new shape of jax.random.normal costs an XLA compile.
  rng = np.random.default_rng(seed)
  mask = rng.random(shape) < 0.6
  mask[..., 0] = True
  return jnp.asarray(3.0 * rng.standard_normal(shape).astype(np.float32)), jnp.asarray(mask)


def test_matches_jax_nn_softmax():
  s, mask = _scores_and_mask(0)
  np.testing.assert_allclose(normalizers.softmax(s), jax.nn.softmax(s, axis=-1), atol=1e-7)
  weights = normalizers.softmax(s, mask)
  np.testing.assert_allclose(weights, jax.nn.softmax(s, axis=-1, where=mask), atol=1e-7)
  np.testing.assert_array_equal(np.asarray(weights)[~np.asarray(mask)], 0.0)
  np.testing.assert_allclose(jnp.sum(weights, axis=-1), 1.0, atol=1e-6)


def test_masked_log_softmax():
  s, mask = _scores_and_mask(1)
  log_probs, valid = normalizers.masked_log_softmax(s, mask)
  np.testing.assert_array_equal(valid, mask)
  np.testing.assert_allclose(
      log_probs, jnp.where(mask, jax.nn.log_softmax(jnp.where(mask, s, -jnp.inf), -1), 0.0),
      atol=1e-6,
  )  # fmt: skip
  log_probs, valid = normalizers.masked_log_softmax(s)
  assert bool(jnp.all(valid))
  np.testing.assert_allclose(log_probs, jax.nn.log_softmax(s, -1), atol=1e-6)


def test_temperature():
  s, mask = _scores_and_mask(2)
  np.testing.assert_allclose(
    normalizers.softmax(s, mask, temperature=0.25), normalizers.softmax(4.0 * s, mask), atol=1e-6
  )
  np.testing.assert_allclose(
    normalizers.softmax(s, temperature=3.0), jax.nn.softmax(s / 3.0, -1), atol=1e-7
  )
  sharp = normalizers.softmax(s, mask, temperature=1e-4)
  argmax = jnp.argmax(jnp.where(mask, s, -jnp.inf), -1)
  np.testing.assert_allclose(sharp, jax.nn.one_hot(argmax, s.shape[-1]), atol=1e-6)
  for bad in (0.0, -1.0):
    with pytest.raises(ValueError, match=f"temperature must be > 0, got {bad}"):
      normalizers.softmax(s, mask, temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
      normalizers.softmax(s, temperature=bad)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_dtype_roundtrip(dtype):
  s, mask = _scores_and_mask(3)
  weights = normalizers.softmax(s.astype(dtype), mask)
  assert weights.dtype == dtype
  reference = normalizers.softmax(s.astype(dtype).astype(jnp.float32), mask)
  np.testing.assert_array_equal(weights, reference.astype(dtype))  # float32 inside, one rounding


def test_check_grads_float64():
  with jax.enable_x64(True):
    s, mask = _scores_and_mask(4)
    s = s.astype(jnp.float64)
    assert normalizers.softmax(s, mask).dtype == jnp.float64
    check_grads(lambda x: normalizers.softmax(x, mask), (s,), order=1, modes=("fwd", "rev"))
    check_grads(lambda x: normalizers.softmax(x), (s,), order=1, modes=("fwd", "rev"))
    check_grads(
      lambda x: normalizers.masked_log_softmax(x, mask)[0], (s,), order=1, modes=("fwd", "rev")
    )
