"""Transformer encoder-decoder: shapes, masking, causality, greedy vs teacher forcing."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab.modules import AttentionKind, EvalMode, TransformerConfig, build_model, greedy_decode
from attnlab.modules.transformer import DecoderLayer

VOCAB = 11
SMALL = TransformerConfig(
    vocab_size=VOCAB, model_dim=8, num_heads=2, mlp_dim=16, num_encoder_layers=1,
    num_decoder_layers=2, learned_baseline=True,
)  # fmt: skip
INPUTS = jnp.array([[3, 4, 5, 6, 10], [7, 8, 9, 10, 10], [5, 3, 10, 10, 10]], jnp.int32)
LENGTHS = jnp.array([4, 3, 2], jnp.int32)  # Token 10 appears only at padded positions.
DEC_INPUTS = jnp.array([[1, 3, 4, 5, 6, 2], [1, 7, 8, 9, 2, 0], [1, 5, 3, 2, 0, 0]], jnp.int32)
KEY = jax.random.key(0)


KINDS = [k.value for k in AttentionKind]


@functools.cache
def _variables():
  # The cross-attention kind does not change parameters: one initialisation serves all.
  return jax.jit(build_model(SMALL).init)(KEY, INPUTS, LENGTHS, DEC_INPUTS)


@jax.jit
def _every_kind(variables, decoder_inputs):
  """Teacher-forced outputs of every cross-attention kind, in one compiled program."""
  return {
    kind: build_model(dataclasses.replace(SMALL, attention=kind)).apply(
      variables, INPUTS, LENGTHS, decoder_inputs, rngs={"attention": KEY}
    )
    for kind in KINDS
  }


@functools.cache
def _outputs():
  return _every_kind(_variables(), DEC_INPUTS)


@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes_every_kind(kind):
  out = _outputs()[kind]
  b, t, s = 3, DEC_INPUTS.shape[1], INPUTS.shape[1]
  assert out.logits.shape == (b, t, VOCAB) and out.baseline.shape == (b, t)
  assert out.attention.weights.shape == (b, t, s) and out.attention.entropy.shape == (b, t)
  np.testing.assert_allclose(jnp.sum(out.attention.weights, -1), 1.0, atol=1e-5)
  assert jnp.all(out.attention.weights[:, :, 4] == 0.0)  # Padding gets no attention.
  is_hard = kind == "hard"
  assert (out.soft_logits is not None) == is_hard
  assert (out.attention.index is not None) == is_hard
  if is_hard:
    assert out.attention.log_prob.shape == (b, t) and out.soft_logits.shape == out.logits.shape
    assert jnp.all(out.attention.index < LENGTHS[:, None])
    # The soft pass of a hard model is the soft model (same parameters).
    np.testing.assert_allclose(out.soft_logits, _outputs()["soft"].logits, atol=1e-5)
  assert out.position_logits is None
  for leaf in jax.tree_util.tree_leaves(out):
    assert jnp.all(jnp.isfinite(leaf))


def test_padded_source_tokens_get_zero_gradient():
  model = build_model(dataclasses.replace(SMALL, attention="hard"))

  def total(params):
    out = model.apply({"params": params}, INPUTS, LENGTHS, DEC_INPUTS, rngs={"attention": KEY})
    return jnp.sum(out.logits) + jnp.sum(out.soft_logits) + jnp.sum(out.attention.log_prob)

  grads = jax.jit(jax.grad(total))(_variables()["params"])
  embedding = grads["embed"]["Embed_0"]["embedding"]
  assert jnp.all(embedding[10] == 0.0)
  assert jnp.any(embedding[3] != 0.0)


def test_decoder_layer_is_causal_gradient():
  # d out[t] / d y[t'] must be exactly 0 for t' > t, for a hard cross-attention too.
  layer = DecoderLayer(dataclasses.replace(SMALL, attention="hard"))
  y = jax.random.normal(jax.random.key(1), (1, 5, SMALL.model_dim))
  memory = jax.random.normal(jax.random.key(2), (1, 4, SMALL.model_dim))
  mask = jnp.ones((1, 4), bool)
  params = {"params": _variables()["params"]["decoder"]["layers_0"]}

  def out(y):
    return layer.apply(params, y, memory, mask, None, rngs={"attention": KEY})[0][0]

  jac = jax.jit(jax.jacrev(out))(y)[:, :, 0]  # [T, D, T', D]
  influence = jnp.abs(jac).sum(axis=(1, 3))  # [T, T']
  future = jnp.triu(jnp.ones((5, 5), bool), k=1)
  assert jnp.all(jnp.where(future, influence, 0.0) == 0.0)
  assert jnp.all(jnp.where(~future, influence, 1.0) > 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_changing_future_tokens_leaves_past_outputs_unchanged(kind):
  changed = _every_kind(_variables(), DEC_INPUTS.at[:, 3:].set(7))[kind]
  original = _outputs()[kind]
  np.testing.assert_array_equal(original.logits[:, :3], changed.logits[:, :3])
  np.testing.assert_array_equal(original.attention.weights[:, :3], changed.attention.weights[:, :3])
  assert not np.allclose(original.logits[:, 3:], changed.logits[:, 3:])


def test_greedy_equals_teacher_forcing_on_its_own_output():
  # A model is "perfect" on what it generates itself: teacher forcing with its greedy
  # output (sampled hard cross-attention, same key) predicts exactly that output.
  model = build_model(dataclasses.replace(SMALL, attention="hard"))
  max_len = DEC_INPUTS.shape[1]
  decode = jax.jit(greedy_decode, static_argnames=("model", "max_len", "mode"))
  tokens, weights = decode(model, _variables(), INPUTS, LENGTHS, max_len=max_len,
                           mode=EvalMode.SAMPLE, key=KEY)  # fmt: skip
  decoder_inputs = jnp.concatenate([jnp.full((3, 1), SMALL.bos_id), tokens[:, :-1]], axis=1)
  out = _every_kind(_variables(), decoder_inputs)["hard"]
  np.testing.assert_array_equal(jnp.argmax(out.logits, -1), tokens)
  np.testing.assert_allclose(out.attention.weights, weights, atol=1e-5)


def test_enumeration_is_refused():
  model = build_model(SMALL)
  with pytest.raises(ValueError, match="RNN family"):
    model.apply(_variables(), INPUTS, LENGTHS, DEC_INPUTS, enumerate_positions=True)


def test_config_errors():
  with pytest.raises(ValueError, match="divisible"):
    TransformerConfig(vocab_size=5, model_dim=10, num_heads=4)
  with pytest.raises(ValueError, match="valid choices"):
    TransformerConfig(vocab_size=5, score="cosine")


@jax.jit
def _greedy_both_ways(variables):
  """Greedy decoding of every kind in soft and argmax modes, cached and by full recompute."""
  out = {}
  for kind in KINDS:
    model = build_model(dataclasses.replace(SMALL, attention=kind, dropout_rate=0.2))
    for mode in (EvalMode.SOFT, EvalMode.ARGMAX):
      for cache in (True, False):
        out[f"{kind} {mode.value} {cache}"], _ = model.apply(
            variables, INPUTS, LENGTHS, max_len=7, mode=mode, cache=cache, method="greedy",
            mutable=["cache"],
        )  # fmt: skip
  return out


def test_cached_greedy_decoding_equals_full_recompute():
  out = _greedy_both_ways(_variables())
  for kind in KINDS:
    for mode in (EvalMode.SOFT, EvalMode.ARGMAX):
      (tokens, weights), (ref_tokens, ref_weights) = (
        out[f"{kind} {mode.value} True"],
        out[f"{kind} {mode.value} False"],
      )
      assert tokens.shape == (3, 7) and weights.shape == (3, 7, INPUTS.shape[1])
      np.testing.assert_array_equal(tokens, ref_tokens, err_msg=f"{kind} {mode}")
      np.testing.assert_allclose(weights, ref_weights, atol=1e-5, err_msg=f"{kind} {mode}")
  # greedy_decode uses the cache; a dropout model decodes deterministically.
  model = build_model(dataclasses.replace(SMALL, dropout_rate=0.2))
  tokens, _ = greedy_decode(model, _variables(), INPUTS, LENGTHS, max_len=7, mode="argmax")
  np.testing.assert_array_equal(tokens, out["soft argmax False"][0])


def test_dropout_only_with_a_dropout_stream():
  model = build_model(dataclasses.replace(SMALL, dropout_rate=0.3))

  @jax.jit
  def run(variables):
    apply = functools.partial(model.apply, variables, INPUTS, LENGTHS, DEC_INPUTS)
    return dict(
      evaluation=apply(rngs={"attention": KEY}),
      forced_off=apply(rngs={"attention": KEY, "dropout": KEY}, deterministic=True),
      a=apply(rngs={"attention": KEY, "dropout": jax.random.key(1)}),
      a_again=apply(rngs={"attention": KEY, "dropout": jax.random.key(1)}),
      b=apply(rngs={"attention": KEY, "dropout": jax.random.key(2)}),
    )

  out = {name: o.logits for name, o in run(_variables()).items()}
  no_dropout = _outputs()["soft"].logits  # same parameters, dropout_rate 0
  np.testing.assert_allclose(out["evaluation"], no_dropout, atol=1e-6)
  np.testing.assert_allclose(out["forced_off"], no_dropout, atol=1e-6)
  np.testing.assert_array_equal(out["a"], out["a_again"])
  assert not np.allclose(out["a"], no_dropout) and not np.allclose(out["a"], out["b"])
  assert bool(jnp.isfinite(out["a"]).all())
  with pytest.raises(ValueError, match="dropout_rate must be in"):
    build_model(dataclasses.replace(SMALL, dropout_rate=1.0)).init(KEY, INPUTS, LENGTHS, DEC_INPUTS)


def test_training_loss_draws_dropout_and_evaluation_does_not():
  from attnlab import tasks
  from attnlab.training import objectives

  task = tasks.get_task("copy")
  batch = jax.tree.map(jnp.asarray, task.sample(np.random.default_rng([0, 0]), 4, "train"))
  cfg = objectives.ObjectiveConfig(objective="soft")
  state = objectives.init_objective_state(cfg, batch.targets.shape[1])

  def losses(rate):
    config = dataclasses.replace(SMALL, vocab_size=task.vocab_size, dropout_rate=rate)
    model = build_model(config)
    params = model.init(KEY, batch.inputs, batch.input_lengths, tasks.decoder_inputs(batch.targets))
    loss = jax.jit(lambda key: objectives.loss_fn(params, model, batch, key, cfg, state)[0])
    return [float(loss(jax.random.key(seed))) for seed in (1, 2)]

  with_dropout, without = losses(0.5), losses(0.0)
  assert with_dropout[0] != with_dropout[1]  # training applies dropout
  assert without[0] == without[1]  # soft attention, no dropout: the key changes nothing
