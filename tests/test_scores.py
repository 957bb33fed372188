"""Score functions against hand-written numpy loops; dtypes, gradients, shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attnlab import scores

TQ, TK, DQ, DK, A = 3, 4, 5, 6, 7


def _inputs(seed: int, dtype=np.float32):
  # numpy for test data: each new shape of jax.random.normal costs an XLA compile.
  rng = np.random.default_rng(seed)
  shapes = {
    "q": (TQ, DK),
    "q_general": (TQ, DQ),
    "k": (TK, DK),
    "w": (DQ, DK),
    "w_q": (DQ, A),
    "w_k": (DK, A),
    "v": (A,),
  }
  return {n: jnp.asarray(rng.standard_normal(s).astype(dtype)) for n, s in shapes.items()}


def _loop_scores(name, x):
  x = {n: np.asarray(a, np.float64) for n, a in x.items()}
  q = x["q_general"] if name in ("general", "additive") else x["q"]
  out = np.zeros((TQ, TK))
  for i in range(TQ):
    for j in range(TK):
      if name == "dot":
        out[i, j] = sum(q[i, d] * x["k"][j, d] for d in range(DK))
      elif name == "scaled_dot":
        out[i, j] = sum(q[i, d] * x["k"][j, d] for d in range(DK)) / np.sqrt(DK)
      elif name == "general":
        out[i, j] = sum(q[i, a] * x["w"][a, b] * x["k"][j, b] for a in range(DQ) for b in range(DK))
      else:
        hidden = [
          np.tanh(
            sum(q[i, d] * x["w_q"][d, a] for d in range(DQ))
            + sum(x["k"][j, d] * x["w_k"][d, a] for d in range(DK))
          )
          for a in range(A)
        ]
        out[i, j] = sum(x["v"][a] * hidden[a] for a in range(A))
  return out


def _call(name, x):
  if name == "dot":
    return scores.dot(x["q"], x["k"])
  if name == "scaled_dot":
    return scores.scaled_dot(x["q"], x["k"])
  if name == "general":
    return scores.general(x["q_general"], x["k"], w=x["w"])
  return scores.additive(x["q_general"], x["k"], w_q=x["w_q"], w_k=x["w_k"], v=x["v"])


NAMES = ["dot", "scaled_dot", "general", "additive"]


@pytest.mark.parametrize("name", NAMES)
def test_matches_numpy_loop(name):
  x = _inputs(0)
  out = _call(name, x)
  assert out.shape == (TQ, TK) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _loop_scores(name, x), rtol=1e-5, atol=1e-5)
  # jit fuses ops, eager runs them one by one: equal up to float32 rounding.
  np.testing.assert_allclose(jax.jit(_call, static_argnums=0)(name, x), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_give_float32_scores(name, dtype):
  x = _inputs(1, dtype)
  out = _call(name, x)
  assert out.dtype == jnp.float32
  tol = 0.1 if dtype == jnp.bfloat16 else 2e-2
  np.testing.assert_allclose(out, _loop_scores(name, x), rtol=tol, atol=tol)


def test_float16_dot_does_not_overflow():
  # Each score is 8 * 300² = 720000 > float16 max (65504); accumulation is float32.
  q = jnp.full((2, 8), 300.0, jnp.float16)
  out = scores.dot(q, q)
  assert bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(out, 720000.0)


@pytest.mark.parametrize("name", NAMES)
def test_check_grads_float64(name):
  with jax.enable_x64(True):
    x = _inputs(2, np.float64)
    assert _call(name, x).dtype == jnp.float64
    check_grads(lambda x: _call(name, x), (x,), order=1, modes=("fwd", "rev"))


def test_shape_errors_name_the_shapes():
  x = _inputs(3)
  with pytest.raises(ValueError, match=r"\(3, 6\).*\(3, 5\)"):
    scores.dot(x["q"], x["q_general"])
  with pytest.raises(ValueError, match=r"\(5, 6\), got \(6, 5\)"):
    scores.general(x["q_general"], x["k"], w=x["w"].T)
  with pytest.raises(ValueError, match=r"w_q \(5, 7\), w_k \(6, 7\), v \(3,\)"):
    scores.additive(x["q_general"], x["k"], w_q=x["w_q"], w_k=x["w_k"], v=x["v"][:3])
  with pytest.raises(AssertionError):  # chex rank check: batched input to a per-head fn
    scores.scaled_dot(x["q"][None], x["k"][None])
