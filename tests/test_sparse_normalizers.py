"""sparsemax / entmax-1.5: hand values, a bisection reference, gradients, masks, temperature."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attnlab import sparse_normalizers as sn

NORMALIZERS = {"sparsemax": sn.sparsemax, "entmax15": sn.entmax15}
# Power of the thresholded score in the closed form p = [x - τ]_+^power, and x = z / scale.
FORMS = {"sparsemax": (1.0, 1.0), "entmax15": (2.0, 2.0)}


def _reference(name: str, z: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Float64 bisection on τ such that Σ [z/scale - τ]_+^power = 1 over unmasked keys."""
  power, scale = FORMS[name]
  out = np.zeros_like(z, dtype=np.float64)
  for row in np.ndindex(z.shape[:-1]):
    m = mask[row]
    if not m.any():
      continue
    x = z[row][m].astype(np.float64) / scale
    lo, hi = x.max() - 1.0, x.max()  # total mass >= 1 at lo, 0 at hi
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      if np.sum(np.maximum(x - mid, 0.0) ** power) >= 1.0:
        lo = mid
      else:
        hi = mid
    out[row][m] = np.maximum(x - lo, 0.0) ** power
  return out


def _random(seed: int, shape, scale: float = 2.0, dtype=np.float32):
  # numpy for test data: each new shape of jax.random.normal costs an XLA compile.
  rng = np.random.default_rng(seed)
  z = (scale * rng.standard_normal(shape)).astype(dtype)
  mask = rng.random(shape) < 0.7
  mask[..., 0] = True  # at least one key per row
  return jnp.asarray(z), jnp.asarray(mask)


def test_sparsemax_hand_values():
  # z = [1, 0.5, -1], sorted: k=1: 1 + 1*1 > 1 ✓; k=2: 1 + 2*0.5 = 2 > 1.5 ✓;
  # k=3: 1 + 3*(-1) = -2 > 0.5 ✗  ->  τ = (1 + 0.5 - 1) / 2 = 0.25, p = [0.75, 0.25, 0].
  np.testing.assert_allclose(sn.sparsemax(jnp.array([1.0, 0.5, -1.0])), [0.75, 0.25, 0.0])
  # z = [3, 0, 0]: k=2: 1 + 0 > 3 ✗ -> τ = 2, p = [1, 0, 0] (one-hot without a huge gap).
  np.testing.assert_array_equal(sn.sparsemax(jnp.array([3.0, 0.0, 0.0])), [1.0, 0.0, 0.0])
  # Ties: z = [0, 0, 0, 0] -> τ = -1/4, uniform.
  np.testing.assert_allclose(sn.sparsemax(jnp.zeros(4)), np.full(4, 0.25))


def test_entmax15_hand_values():
  # z = [1, 0.5, -1], x = z/2 = [0.5, 0.25, -0.5]. Support {0, 1}: mean = 0.375,
  # ss = (0.5-0.375)² + (0.25-0.375)² = 0.03125, τ = 0.375 - sqrt((1 - 0.03125)/2) = -0.3209714;
  # -0.5 < τ so key 2 is out. p = (x - τ)² = [0.8209714², 0.5709714²] = [0.6739926, 0.3260074].
  np.testing.assert_allclose(
    sn.entmax15(jnp.array([1.0, 0.5, -1.0])), [0.6739926, 0.3260074, 0.0], atol=1e-6
  )
  # z = [4, 0]: x = [2, 0], τ = 1 from the top key alone, p = [1, 0].
  np.testing.assert_array_equal(sn.entmax15(jnp.array([4.0, 0.0])), [1.0, 0.0])
  np.testing.assert_allclose(sn.entmax15(jnp.full(5, 3.0)), np.full(5, 0.2), atol=1e-7)


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_matches_bisection_reference_with_masks_and_leading_dims(name):
  z, mask = _random(0, (3, 4, 9))
  mask = mask.at[1, 2].set(False)  # one fully masked row
  weights = NORMALIZERS[name](z, mask)
  np.testing.assert_allclose(weights, _reference(name, np.asarray(z), np.asarray(mask)), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(weights)[~np.asarray(mask)], 0.0)
  np.testing.assert_array_equal(weights[1, 2], 0.0)
  sums = jnp.sum(weights, axis=-1)
  np.testing.assert_allclose(np.delete(np.asarray(sums).reshape(-1), 1 * 4 + 2), 1.0, atol=1e-6)
  assert int(jnp.sum((weights == 0) & mask)) > 0, "expected exact zeros on unmasked keys"


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_jit_vmap_and_dtype(name):
  fn = NORMALIZERS[name]
  z, mask = _random(1, (4, 7))
  eager = fn(z, mask)
  np.testing.assert_allclose(jax.jit(fn)(z, mask), eager, atol=1e-7)
  np.testing.assert_allclose(jax.vmap(fn)(z, mask), eager, atol=1e-7)
  np.testing.assert_allclose(fn(z[0], mask[0]), eager[0], atol=1e-7)
  for dtype in (jnp.bfloat16, jnp.float16):
    assert fn(z.astype(dtype), mask).dtype == dtype
  # No mask = all keys unmasked; a [Tk] mask broadcasts over rows.
  np.testing.assert_array_equal(fn(z), fn(z, jnp.ones_like(mask)))
  np.testing.assert_array_equal(fn(z, mask[0]), fn(z, jnp.broadcast_to(mask[0], z.shape)))


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_check_grads_float64(name):
  fn = NORMALIZERS[name]
  with jax.enable_x64(True):
    z, mask = _random(2, (3, 6), dtype=np.float64)
    weights = fn(z, mask)
    assert weights.dtype == jnp.float64
    # Several keys in the support, so the Jacobian is not trivially zero.
    assert int(jnp.min(jnp.sum(weights > 0, axis=-1))) >= 1
    assert int(jnp.max(jnp.sum(weights > 0, axis=-1))) >= 2
    # A weighted sum makes the test sensitive to every output coordinate.
    proj = jnp.asarray(np.random.default_rng(3).standard_normal(z.shape))
    check_grads(lambda s: jnp.sum(proj * fn(s, mask)), (z,), order=1, modes=("fwd", "rev"),
                eps=1e-6)  # fmt: skip
    check_grads(lambda s: fn(s, mask), (z,), order=1, modes=("fwd", "rev"), eps=1e-6)


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_jacobian_closed_form_and_support(name):
  z = jnp.array([1.0, 0.5, -1.0, 0.8, -3.0])
  mask = jnp.array([True, True, True, False, True])
  p = NORMALIZERS[name](z, mask)
  jac = jax.jacobian(NORMALIZERS[name])(z, mask)
  support = np.asarray(p > 0)
  np.testing.assert_array_equal(support, [True, True, False, False, False])
  if name == "sparsemax":
    expected = np.diag(support * 1.0) - np.outer(support, support) / support.sum()
  else:
    s = np.sqrt(np.asarray(p, np.float64))
    expected = np.diag(s) - np.outer(s, s) / s.sum()
  np.testing.assert_allclose(jac, expected, atol=1e-6)
  # Rows of the Jacobian sum to 0: shifting all scores changes nothing.
  np.testing.assert_allclose(jnp.sum(jac, axis=-1), 0.0, atol=1e-6)


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_temperature(name):
  fn = NORMALIZERS[name]
  z, _ = _random(4, (5, 8))
  np.testing.assert_allclose(fn(z, temperature=0.5), fn(z / 0.5), atol=1e-6)
  # Support size (over 5 rows of 8 keys) grows with the temperature.
  support = [int(jnp.sum(fn(z, temperature=t) > 0)) for t in (0.01, 0.5, 2.0, 50.0)]
  assert support == sorted(support) and support[0] < support[-1] == 40
  # Sharp limit: one-hot on the argmax.
  np.testing.assert_array_equal(
    fn(z, temperature=1e-3), jax.nn.one_hot(jnp.argmax(z, -1), z.shape[-1])
  )
  with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
    fn(z, temperature=0.0)


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_bad_mask_raises(name):
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=r"mask must be bool.*\(2, 3\).*float32"):
    NORMALIZERS[name](z, jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"shape \(4,\)"):
    NORMALIZERS[name](z, jnp.ones((4,), bool))


@pytest.mark.parametrize("name", list(NORMALIZERS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_extreme_logits_finite_with_zero_gradient_on_masked_and_empty_rows(name, dtype):
  fn = functools.partial(NORMALIZERS[name])
  z = jnp.array([[1e4, -1e4, 1e4, 0.0], [-1e4, -1e4, 1e4, 1e4], [1e4, 1e4, 1e4, 1e4]])
  if dtype == jnp.float16:
    z = jnp.clip(z, -6e4, 6e4)  # representable; 1e4 fits float16
  mask = jnp.array([[True, True, True, False], [True, True, True, True], [False] * 4])
  z = z.astype(dtype)
  w = fn(z, mask)
  assert w.dtype == dtype and bool(jnp.all(jnp.isfinite(w)))
  np.testing.assert_allclose(w.astype(jnp.float32)[:2], [[0.5, 0, 0.5, 0], [0, 0, 0.5, 0.5]])
  np.testing.assert_array_equal(w[2], 0.0)
  grad = jax.grad(lambda s: jnp.sum(fn(s, mask).astype(jnp.float32) * jnp.arange(4.0)[None, :]))(z)
  assert bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32))))
  np.testing.assert_array_equal(grad[0, 3], 0.0)
  np.testing.assert_array_equal(grad[2], 0.0)
