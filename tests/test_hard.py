"""Hard attention: sampling distribution, argmax, log-prob, gather, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from attnlab import hard, masks, normalizers, scores

TQ, TK, D = 3, 5, 4


# numpy for test data: each new shape of jax.random.normal costs an XLA compile.
def _normal(rng, shape, dtype=np.float32):
  return jnp.asarray(rng.standard_normal(shape).astype(dtype))


def _qkv(seed):
  rng = np.random.default_rng(seed)
  return _normal(rng, (TQ, D)), _normal(rng, (TK, D)), _normal(rng, (TK, 2))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sample_frequencies_match_probs_chi_square(temperature):
  q, k, v = _qkv(0)
  mask = jnp.array([True, True, False, True, True])
  n = 20_000
  keys = jax.random.split(jax.random.key(1), n)
  out = jax.jit(
    jax.vmap(lambda key: hard.hard_attention(key, q, k, v, mask, temperature=temperature))
  )(keys)
  probs_QxK = out.probs[0]
  np.testing.assert_allclose(
      probs_QxK,
      normalizers.softmax(scores.scaled_dot(q, k), jnp.broadcast_to(mask, (TQ, TK)),
                          temperature=temperature),
      atol=1e-6,
  )  # fmt: skip
  counts_QxK = jax.vmap(lambda idx: jnp.bincount(idx, length=TK), in_axes=1)(out.index)
  np.testing.assert_array_equal(counts_QxK[:, 2], 0)  # the masked key is never drawn
  for i in range(TQ):
    observed = np.asarray(counts_QxK[i])[np.asarray(mask)]
    expected = n * np.asarray(probs_QxK[i], np.float64)[np.asarray(mask)]
    expected *= n / expected.sum()  # chisquare wants equal totals; probs sum to 1 up to 1e-7
    # Deterministic (fixed seed): with a correct sampler this p-value is a fixed draw from
    # U(0, 1) and fails with probability 1e-3; a wrong distribution gives p ~ 1e-100.
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def test_argmax_log_prob_context_and_entropy():
  q, k, v = _qkv(2)
  mask = masks.causal_mask(TQ, TK, offset=1)
  out = hard.hard_attention(None, q, k, v, mask, mode="argmax")
  scores_QxK = scores.scaled_dot(q, k)
  np.testing.assert_array_equal(out.index, jnp.argmax(jnp.where(mask, scores_QxK, -jnp.inf), -1))
  probs = normalizers.softmax(scores_QxK, mask)
  np.testing.assert_allclose(out.probs, probs, atol=1e-7)
  np.testing.assert_allclose(
    out.log_prob, jnp.log(probs[jnp.arange(TQ), out.index]), rtol=1e-6, atol=1e-6
  )
  np.testing.assert_array_equal(out.context, v[out.index])
  safe_log = jnp.log(jnp.where(probs > 0, probs, 1.0))
  np.testing.assert_allclose(out.entropy, -jnp.sum(probs * safe_log, -1), atol=1e-6)
  assert out.index.dtype == jnp.int32 and bool(jnp.all(out.valid))
  # Same checks on a sampled index; HardMode members are accepted as well as strings.
  out = hard.hard_attention(jax.random.key(3), q, k, v, mask, mode=hard.HardMode.SAMPLE)
  assert bool(jnp.all(mask[jnp.arange(TQ), out.index]))
  np.testing.assert_allclose(out.log_prob, jnp.log(probs[jnp.arange(TQ), out.index]), atol=1e-6)
  np.testing.assert_array_equal(out.context, v[out.index])


def test_gradients_flow_through_log_prob_not_context():
  q, k, v = _qkv(4)
  key = jax.random.key(5)

  def log_prob_sum(q, k):
    return jnp.sum(hard.hard_attention(key, q, k, v).log_prob)

  def context_sum(q, k, v):
    return jnp.sum(hard.hard_attention(key, q, k, v).context)

  grad_q, grad_k = jax.grad(log_prob_sum, argnums=(0, 1))(q, k)
  assert float(jnp.min(jnp.linalg.norm(grad_q, axis=-1))) > 1e-4  # every query row
  assert float(jnp.linalg.norm(grad_k)) > 1e-4
  grad_q, grad_k, grad_v = jax.grad(context_sum, argnums=(0, 1, 2))(q, k, v)
  np.testing.assert_array_equal(grad_q, 0.0)
  np.testing.assert_array_equal(grad_k, 0.0)
  index = hard.hard_attention(key, q, k, v).index
  counts = jnp.bincount(index, length=TK).astype(jnp.float32)
  np.testing.assert_array_equal(grad_v, jnp.broadcast_to(counts[:, None], v.shape))


def test_jit_equals_eager_and_key_determinism():
  q, k, v = _qkv(6)
  key = jax.random.key(7)
  eager = hard.hard_attention(key, q, k, v)
  jitted = jax.jit(hard.hard_attention)(key, q, k, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), eager, jitted)
  draws = jax.vmap(lambda key: hard.hard_attention(key, q, k, v).index)(jax.random.split(key, 64))
  assert len(np.unique(np.asarray(draws))) > 1  # different keys, different samples


def test_errors():
  q, k, v = _qkv(8)
  with pytest.raises(ValueError, match=r"mode='top1' is invalid; .*\['sample', 'argmax'\]"):
    hard.hard_attention(None, q, k, v, mode="top1")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    hard.hard_attention(None, q, k, v, mode="sample")
  with pytest.raises(ValueError, match=r"k \(5, 4\), v \(4, 2\)"):
    hard.hard_attention(None, q, k, v[:4], mode="argmax")
  with pytest.raises(ValueError, match="temperature must be > 0"):
    hard.hard_attention(None, q, k, v, mode="argmax", temperature=0.0)
