"""Attention switch (``attend``, ``resolve_spec``) and the attention layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import sparse_normalizers
from attnlab.modules import (
  Attention,
  AttentionKind,
  AttentionSpec,
  EvalMode,
  Feedback,
  MultiHeadAttention,
  ScoreKind,
  attend,
  resolve_spec,
)
from attnlab.modules.attend import Distribution

KEY = jax.random.key(0)
B, T, S, D = 2, 3, 5, 4
Q = jax.random.normal(jax.random.key(1), (B, T, D))
K = jax.random.normal(jax.random.key(2), (B, S, D))
V = jax.random.normal(jax.random.key(3), (B, S, D + 1))
LENGTHS = jnp.array([5, 3])
MASK = jnp.arange(S)[None, :] < LENGTHS[:, None]  # [B, S]


def test_enum_parse_errors_list_valid_choices():
  assert AttentionKind.parse("entmax15") is AttentionKind.ENTMAX15
  assert Feedback.parse(Feedback.NONE) is Feedback.NONE
  with pytest.raises(
    ValueError, match=r"'bahdanau'.*\['dot', 'scaled_dot', 'general', 'additive'\]"
  ):
    ScoreKind.parse("bahdanau")
  with pytest.raises(ValueError, match="valid choices"):
    resolve_spec("soft", "greedy")


@pytest.mark.parametrize(
  "kind, override, expected",
  [
    ("soft", None, (Distribution.SOFTMAX, EvalMode.SOFT, False)),
    ("marginal", None, (Distribution.SOFTMAX, EvalMode.SOFT, False)),
    ("hard", None, (Distribution.SOFTMAX, EvalMode.SAMPLE, False)),
    ("hard", EvalMode.SOFT, (Distribution.SOFTMAX, EvalMode.SOFT, False)),
    ("hard", "argmax", (Distribution.SOFTMAX, EvalMode.ARGMAX, False)),
    ("sparsemax", "soft", (Distribution.SPARSEMAX, EvalMode.SOFT, False)),
    ("entmax15", "sample", (Distribution.ENTMAX15, EvalMode.SAMPLE, False)),
    ("soft", "gumbel", (Distribution.SOFTMAX, EvalMode.SAMPLE, True)),
    ("gumbel", None, (Distribution.SOFTMAX, EvalMode.SAMPLE, True)),
    ("gumbel", "sample", (Distribution.SOFTMAX, EvalMode.SAMPLE, False)),
    ("gumbel", AttentionKind.HARD, (Distribution.SOFTMAX, EvalMode.SAMPLE, False)),
  ],
)
def test_resolve_spec(kind, override, expected):
  spec = resolve_spec(kind, override)
  assert (spec.distribution, spec.selection, spec.relaxed) == expected
  assert spec.is_hard == (spec.selection is not EvalMode.SOFT and not spec.relaxed)
  assert spec.needs_key == (spec.selection is EvalMode.SAMPLE)


def test_relaxed_selection_needs_a_softmax_sample():
  with pytest.raises(ValueError, match="relaxed"):
    AttentionSpec(Distribution.SPARSEMAX, EvalMode.SAMPLE, relaxed=True)
  with pytest.raises(ValueError, match="relaxed"):
    AttentionSpec(Distribution.SOFTMAX, EvalMode.ARGMAX, relaxed=True)


def _general_reference(q, k, v, w, mask):
  scores = np.einsum("tq,qk,sk->ts", q, w, k)
  scores = np.where(mask[None, :], scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return weights @ v, weights


def test_attention_layer_general_matches_numpy():
  layer = Attention(score="general", kind="soft")
  params = layer.init(KEY, Q, K, V, MASK)
  context, aux = layer.apply(params, Q, K, V, MASK)
  w = np.asarray(params["params"]["w"][0])
  for b in range(B):
    ref_context, ref_weights = _general_reference(Q[b], K[b], V[b], w, np.asarray(MASK[b]))
    np.testing.assert_allclose(context[b], ref_context, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(aux.weights[b], ref_weights, rtol=1e-5, atol=1e-6)
  entropy = -np.sum(np.where(aux.weights > 0, aux.weights * np.log(aux.weights + 1e-30), 0), -1)
  np.testing.assert_allclose(aux.entropy, entropy, rtol=1e-5, atol=1e-6)
  assert aux.index is None and aux.log_prob is None
  assert aux.expected_context.shape == context.shape


@pytest.mark.parametrize("kind", [k.value for k in AttentionKind])
def test_masked_values_get_zero_weight_and_zero_gradient(kind):
  layer = Attention(score="additive", kind=kind, additive_dim=6)
  params = layer.init({"params": KEY, "attention": KEY}, Q, K, V, MASK)

  def total(q, k, v):
    context, aux = layer.apply(params, q, k, v, MASK, rngs={"attention": KEY})
    extra = 0.0 if aux.log_prob is None else jnp.sum(aux.log_prob)
    value = jnp.sum(context**2) + jnp.sum(aux.expected_context) + jnp.sum(aux.entropy) + extra
    return value, aux

  grads, aux = jax.jit(jax.grad(total, argnums=(0, 1, 2), has_aux=True))(Q, K, V)
  padded = ~MASK
  for g in grads[1:]:
    assert jnp.all(jnp.where(padded[:, :, None], g, 0.0) == 0.0)
    assert jnp.any(g != 0.0)
  assert jnp.all(jnp.where(padded[:, None, :], aux.weights, 0.0) == 0.0)
  np.testing.assert_allclose(jnp.sum(aux.weights, -1), 1.0, atol=1e-5)


def test_fully_masked_query_gives_zeros_without_nan():
  mask = jnp.zeros((B, T, S), bool).at[:, 1:].set(True)  # query 0 sees nothing.
  for kind in AttentionKind:
    layer = Attention(score="scaled_dot", kind=kind)
    context, aux = layer.apply({}, Q, K, V, mask, rngs={"attention": KEY})
    assert jnp.all(context[:, 0] == 0) and jnp.all(aux.weights[:, 0] == 0), kind
    assert jnp.all(jnp.isfinite(context)) and jnp.all(aux.entropy[:, 0] == 0), kind


def test_hard_argmax_takes_the_value_at_the_most_probable_position():
  layer = Attention(score="dot", kind="hard")
  context, aux = layer.apply({}, Q, K, V, MASK, override="argmax")
  index = jnp.argmax(aux.weights, -1)
  np.testing.assert_array_equal(aux.index, index)
  np.testing.assert_allclose(context, jnp.take_along_axis(V, index[:, :, None], axis=1))
  chosen = jnp.take_along_axis(aux.weights, index[:, :, None], axis=-1)[..., 0]
  np.testing.assert_allclose(aux.log_prob, jnp.log(chosen), rtol=1e-5)
  soft_context, _ = layer.apply({}, Q, K, V, MASK, override="soft")
  np.testing.assert_allclose(aux.expected_context, soft_context, rtol=1e-5, atol=1e-6)


def test_sparse_samples_stay_on_the_support_with_the_right_frequencies():
  # One query whose sparsemax has exact zeros; 4000 samples vs the sparsemax probabilities.
  q = jnp.array([[1.0, 0.0]])
  k = jnp.array([[2.0, 0.0], [1.8, 0.0], [1.5, 0.0], [-3.0, 0.0]])
  v = jnp.eye(4)
  spec = resolve_spec("sparsemax", "sample")

  def draw(key):
    return attend(key, q, k, v, score_fn=lambda a, b: a @ b.T, spec=spec)

  out = jax.jit(jax.vmap(draw))(jax.random.split(KEY, 4000))
  probs = sparse_normalizers.sparsemax(jnp.array([[2.0, 1.8, 1.5, -3.0]]))[0]  # τ = 1.43
  assert probs[3] == 0.0 and probs[2] > 0.0
  np.testing.assert_allclose(out.weights[0, 0], probs, atol=1e-6)
  freq = np.bincount(np.asarray(out.index[:, 0]), minlength=4) / 4000
  assert freq[3] == 0.0
  # 4 standard errors of a Bernoulli frequency at n = 4000.
  np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / 4000))
  np.testing.assert_allclose(out.context[:, 0], jax.nn.one_hot(out.index[:, 0], 4))


def test_straight_through_gumbel_is_one_hot_forward_and_reports_softmax_weights():
  layer = Attention(score="dot", kind="gumbel", straight_through=True, gumbel_temperature=0.5)
  context, aux = layer.apply({}, Q, K, V, MASK, rngs={"attention": KEY})
  row_distances = jnp.abs(context[:, :, None, :] - V[:, None, :, :]).max(-1)  # [B, T, S]
  assert jnp.all(jnp.min(row_distances, -1) < 1e-5)  # Each context is one value row.
  scores = jnp.einsum("btd,bsd->bts", Q, K)
  ref = jax.nn.softmax(jnp.where(MASK[:, None], scores, -jnp.inf), axis=-1)
  np.testing.assert_allclose(aux.weights, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(aux.expected_context, jnp.einsum("bts,bsd->btd", ref, V), atol=1e-5)


def test_multi_head_attention_matches_jax_dot_product_attention():
  layer = MultiHeadAttention(num_heads=2, qkv_features=8, out_features=3)
  x_q = jax.random.normal(jax.random.key(4), (B, T, 6))
  x_kv = jax.random.normal(jax.random.key(5), (B, S, 7))
  params = layer.init(KEY, x_q, x_kv, MASK)
  out, aux = layer.apply(params, x_q, x_kv, MASK)
  p = params["params"]
  proj = lambda x, name: (
    jnp.einsum("bsd,dhk->bshk", x, p[name]["kernel"]) + p[name]["bias"][None, None]
  )
  ref = jax.nn.dot_product_attention(
    proj(x_q, "query"), proj(x_kv, "key"), proj(x_kv, "value"), mask=MASK[:, None, None, :]
  )
  ref = jnp.einsum("bthk,hko->bto", ref, p["out"]["kernel"]) + p["out"]["bias"][None, None]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert aux.weights.shape == (B, 2, T, S) and aux.entropy.shape == (B, 2, T)


def test_multi_head_hard_attention_per_head_outputs():
  layer = MultiHeadAttention(num_heads=2, score="general", kind="hard")
  x = jax.random.normal(jax.random.key(6), (B, T, 4))
  params = layer.init({"params": KEY, "attention": KEY}, x, K, MASK)
  assert params["params"]["w"].shape == (2, 2, 2)  # One bilinear W per head.
  out, aux = layer.apply(params, x, K, MASK, rngs={"attention": KEY})
  assert out.shape == (B, T, 4) and aux.expected_context.shape == (B, T, 4)
  assert aux.index.shape == aux.log_prob.shape == (B, 2, T)
  assert jnp.all(aux.index < LENGTHS[:, None, None])


def test_dot_score_with_different_sizes_is_a_clear_error():
  with pytest.raises(ValueError, match="same size"):
    Attention(score="dot").init(KEY, Q, K[:, :, :3], V, MASK)
