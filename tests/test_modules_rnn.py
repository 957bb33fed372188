"""RNN encoder-decoder: shapes, masking, scan vs step-by-step, greedy vs teacher forcing."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attnlab import tasks
from attnlab.modules import (
  AttentionKind,
  EvalMode,
  RNNConfig,
  build_model,
  greedy_decode,
  lengths_from_eos,
)
from attnlab.modules.rnn import RNNDecoder

VOCAB = 11
SMALL = RNNConfig(
  vocab_size=VOCAB, embed_dim=8, encoder_dim=8, hidden_dim=16, additive_dim=8, max_source_len=8
)
INPUTS = jnp.array([[3, 4, 5, 6, 0], [7, 8, 9, 0, 0], [10, 3, 0, 0, 0]], jnp.int32)
LENGTHS = jnp.array([4, 3, 2], jnp.int32)
DEC_INPUTS = jnp.array([[1, 3, 4, 5, 6, 2], [1, 7, 8, 9, 2, 0], [1, 10, 3, 2, 0, 0]], jnp.int32)
KEY = jax.random.key(0)


KINDS = [k.value for k in AttentionKind]
# Expected feedback (the same cell input size as sampled feedback) and a zero initial state,
# so one initialisation serves every model here and the step-by-step reference starts at 0.
BASE = dataclasses.replace(
  SMALL, learned_baseline=True, feedback="expected", init_decoder_from_length=False
)


@functools.cache
def _variables():
  # Neither the attention kind nor the feedback ("expected" vs "sampled") changes the
  # parameters: one initialisation serves every model of these tests.
  return jax.jit(build_model(BASE).init)(KEY, INPUTS, LENGTHS, DEC_INPUTS)


@jax.jit
def _every_kind(variables, decoder_inputs):
  """Teacher-forced outputs of every kind (expected feedback), in one compiled program."""
  return {
    kind: build_model(dataclasses.replace(BASE, attention=kind)).apply(
      variables,
      INPUTS,
      LENGTHS,
      decoder_inputs,
      enumerate_positions=True,
      rngs={"attention": KEY},
    )  # fmt: skip
    for kind in KINDS
  }


@functools.cache
def _outputs():
  return _every_kind(_variables(), DEC_INPUTS)


@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes_every_kind(kind):
  out = _outputs()[kind]
  b, s, t = 3, INPUTS.shape[1], DEC_INPUTS.shape[1]
  assert out.logits.shape == (b, t, VOCAB)
  assert out.position_logits.shape == (b, t, s, VOCAB)
  assert out.baseline.shape == (b, t)
  assert out.attention.weights.shape == (b, t, s)
  assert out.attention.entropy.shape == (b, t)
  np.testing.assert_allclose(jnp.sum(out.attention.weights, -1), 1.0, atol=1e-5)
  assert jnp.all(jnp.where(INPUTS[:, None, :] == 0, out.attention.weights, 0.0) == 0.0)
  is_hard = kind == "hard"
  assert (out.soft_logits is not None) == is_hard
  assert (out.attention.index is not None) == is_hard
  assert (out.attention.log_prob is not None) == is_hard
  if is_hard:
    assert out.attention.index.dtype == jnp.int32 and out.attention.log_prob.shape == (b, t)
  for leaf in jax.tree_util.tree_leaves(out):
    assert jnp.all(jnp.isfinite(leaf))


def test_hard_logits_are_position_logits_at_the_chosen_index():
  out = _outputs()["hard"]
  index = out.attention.index[:, :, None, None]
  chosen = jnp.take_along_axis(out.position_logits, index, axis=2)[:, :, 0]
  np.testing.assert_allclose(out.logits, chosen, rtol=1e-5, atol=1e-5)
  # With expected feedback the states do not depend on the sample: soft_logits equals the
  # logits of the soft model with the same parameters.
  np.testing.assert_allclose(out.soft_logits, _outputs()["soft"].logits, rtol=1e-5, atol=1e-5)


def test_lstm_and_local_keys_contextual_values():
  config = dataclasses.replace(
      SMALL, cell="lstm", key_source="local", value_source="contextual", score="additive",
      init_decoder_from_source=True,
  )  # fmt: skip
  model = build_model(config)
  out, variables = jax.jit(model.init_with_output)(KEY, INPUTS, LENGTHS, DEC_INPUTS)
  assert out.logits.shape == (3, DEC_INPUTS.shape[1], VOCAB)
  assert jnp.all(jnp.isfinite(out.logits))
  assert "encoder" in variables["params"] and "init_projection" in variables["params"]


SAMPLED = dataclasses.replace(BASE, attention="hard", feedback="sampled")


@jax.jit
def _sampled_feedback(variables, decoder_inputs):
  """Teacher forcing of a hard model whose samples are fed back (one compiled program)."""
  return build_model(SAMPLED).apply(
    variables, INPUTS, LENGTHS, decoder_inputs, rngs={"attention": KEY}
  )


def test_padded_source_positions_get_zero_gradient_and_baseline_is_detached():
  # Token 10 and position rows >= 4 appear only at padded positions: every output (logits,
  # soft logits, weights, log-probs) must have exactly zero gradient there. Keys come from
  # the bidirectional RNN, whose backward direction must start at each sequence's end.
  inputs = jnp.array([[3, 4, 5, 6, 10, 10], [7, 8, 9, 10, 10, 10], [5, 3, 10, 10, 10, 10]])
  model = build_model(dataclasses.replace(BASE, attention="hard"))

  def apply(params):
    return model.apply({"params": params}, inputs, LENGTHS, DEC_INPUTS, rngs={"attention": KEY})

  def total(params):
    out = apply(params)
    return (jnp.sum(out.logits) + jnp.sum(out.soft_logits) + jnp.sum(out.attention.log_prob)
            + jnp.sum(out.attention.weights**2))  # fmt: skip

  def baseline(params):
    return jnp.sum(apply(params).baseline)

  grads, baseline_grads = jax.jit(lambda p: (jax.grad(total)(p), jax.grad(baseline)(p)))(
    _variables()["params"]
  )
  assert jnp.all(grads["token_embed"]["embedding"][10] == 0.0)
  assert jnp.all(grads["position_embed"]["embedding"][int(jnp.max(LENGTHS)) :] == 0.0)
  assert jnp.any(grads["token_embed"]["embedding"][3] != 0.0)  # The test can fail.
  # The value head trains on a stop-gradient state: nothing reaches the decoder.
  decoder_grads = baseline_grads["decoder"]
  assert all(jnp.all(g == 0) for g in jax.tree_util.tree_leaves(decoder_grads["cell"]))
  assert any(jnp.any(g != 0) for g in jax.tree_util.tree_leaves(decoder_grads["baseline_out"]))


def _assert_equals_step_loop(out, model, variables, memory, carry):
  """Teacher-forced ``out`` equals :meth:`RNNDecoder.step` run step by step from ``carry``."""
  decoder = RNNDecoder(model.config)
  dec_vars = {"params": variables["params"]["decoder"]}
  step_fn = jax.jit(functools.partial(decoder.apply, method="step"), static_argnums=5)
  logits_fn = jax.jit(functools.partial(decoder.apply, method="logits"))
  # The model draws its one "attention" key first, then uses fold_in(key, t) at step t.
  base = model.apply(variables, rngs={"attention": KEY}, method=lambda m: m.make_rng("attention"))
  for t in range(DEC_INPUTS.shape[1]):
    carry, step = step_fn(dec_vars, carry, DEC_INPUTS[:, t], jax.random.fold_in(base, t), memory,
                          None)  # fmt: skip
    logits = logits_fn(dec_vars, step.hidden_BxH, step.context_BxDv)
    np.testing.assert_allclose(out.logits[:, t], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.attention.index[:, t], step.aux.index)
    np.testing.assert_allclose(out.attention.log_prob[:, t], step.aux.log_prob, atol=1e-5)
    np.testing.assert_allclose(out.attention.weights[:, t], step.aux.weights, atol=1e-6)


def test_scan_equals_step_by_step_reference():
  variables = _variables()
  out = _sampled_feedback(variables, DEC_INPUTS)
  model = build_model(SAMPLED)
  memory = model.apply(variables, INPUTS, LENGTHS, method="encode")
  carry = (jnp.zeros((3, SAMPLED.hidden_dim)), jnp.zeros((3, SAMPLED.embed_dim)))
  _assert_equals_step_loop(out, model, variables, memory, carry)


# No feedback: the states do not depend on the attention, so teacher forcing attends every
# step at once outside the scan (RNNDecoder.attend_steps). Sampled hard attention: the strictest.
NO_FEEDBACK = dataclasses.replace(SMALL, attention="hard", feedback="none")


def test_attention_outside_the_scan_equals_the_step_loop_and_greedy():
  model = build_model(NO_FEEDBACK)
  variables = model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)
  apply = jax.jit(lambda v, dec: model.apply(v, INPUTS, LENGTHS, dec, rngs={"attention": KEY}))
  out = apply(variables, DEC_INPUTS)
  memory = model.apply(variables, INPUTS, LENGTHS, method="encode")
  carry = model.apply(variables, memory, method="_initial_carry")
  _assert_equals_step_loop(out, model, variables, memory, carry)  # Attention inside each step.
  max_len = DEC_INPUTS.shape[1]
  decode = jax.jit(greedy_decode, static_argnames=("model", "max_len", "mode"))
  tokens, weights = decode(model, variables, INPUTS, LENGTHS, max_len=max_len,
                           mode=EvalMode.SAMPLE, key=KEY)  # fmt: skip
  decoder_inputs = jnp.concatenate([jnp.full((3, 1), SMALL.bos_id), tokens[:, :-1]], axis=1)
  forced = apply(variables, decoder_inputs)
  np.testing.assert_array_equal(jnp.argmax(forced.logits, -1), tokens)
  np.testing.assert_allclose(forced.attention.weights, weights, atol=1e-5)


def test_default_decoder_reads_source_content_only_through_attention():
  # Defaults: no feedback, token values, a source-length embedding in the initial state.
  # p(y_t | z_t = s) must then depend on the source only through the value at s: changing
  # the symbol at one position changes position_logits at that position and nowhere else.
  model = build_model(dataclasses.replace(SMALL, attention="hard"))
  assert model.config.feedback.value == "none" and model.config.init_decoder_from_length
  variables = model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)
  changed = INPUTS.at[0, 1].set(9)  # 4 -> 9 at position 1 of the first source.

  def position_logits(inputs):
    out = model.apply(variables, inputs, LENGTHS, DEC_INPUTS, enumerate_positions=True,
                      rngs={"attention": KEY})  # fmt: skip
    return out.position_logits

  before, after = position_logits(INPUTS), position_logits(changed)
  np.testing.assert_array_equal(np.delete(before, 1, axis=2), np.delete(after, 1, axis=2))
  assert not np.allclose(before[0, :, 1], after[0, :, 1])
  # The source length does reach the decoder state: a shorter source changes every position.
  out_len = model.apply(variables, INPUTS, LENGTHS.at[0].set(3), DEC_INPUTS,
                        enumerate_positions=True, rngs={"attention": KEY})  # fmt: skip
  assert not np.allclose(out_len.position_logits[0, :, 0], before[0, :, 0])


@pytest.mark.parametrize("feedback", ["none", "sampled"])
@pytest.mark.parametrize("unroll", [0, 4])
def test_unrolled_scans_compute_the_same_model(feedback, unroll):
  # Unrolling (fully, or 4 steps per loop iteration: a rolled loop plus a remainder) changes
  # the compiled program, not the model: outputs, sampled choices, gradients and greedy
  # decoding equal the rolled scans'.
  def run(config):
    model = build_model(config)
    variables = model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)

    def loss(v):
      out = model.apply(v, INPUTS, LENGTHS, DEC_INPUTS, rngs={"attention": KEY})
      return jnp.sum(out.logits * out.logits) + jnp.sum(out.attention.log_prob), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables)
    tokens, weights = greedy_decode(model, variables, INPUTS, LENGTHS, max_len=7,
                                    mode=EvalMode.SAMPLE, key=KEY)  # fmt: skip
    return out.logits, out.attention.index, grads, tokens, weights

  rolled = dataclasses.replace(SMALL, attention="hard", feedback=feedback)
  expected = run(rolled)
  got = run(dataclasses.replace(rolled, unroll=unroll))
  np.testing.assert_array_equal(got[1], expected[1])  # The sampled positions.
  np.testing.assert_array_equal(got[3], expected[3])  # The greedy tokens.
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_enumeration_with_sampled_feedback_is_an_error():
  with pytest.raises(ValueError, match="feedback 'none' or 'expected'"):
    build_model(SAMPLED).apply(_variables(), INPUTS, LENGTHS, DEC_INPUTS, enumerate_positions=True)


def test_program_size_does_not_grow_with_target_length():
  model = build_model(SAMPLED)

  def size(target_len):
    dec = jnp.ones((3, target_len), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, INPUTS, LENGTHS, dec, rngs={"attention": KEY}))
    return re.sub(r"\d+", "", str(jaxpr(_variables())))  # Shapes aside, the same program.

  assert size(4) == size(40)


def test_greedy_equals_teacher_forcing_on_its_own_output():
  # A model is "perfect" on the sequences it generates itself: teacher forcing with its
  # greedy output as targets must predict exactly that output, with the same attention.
  # Sampled hard attention with sampled feedback (same key): the strictest case.
  max_len = DEC_INPUTS.shape[1]
  decode = jax.jit(greedy_decode, static_argnames=("model", "max_len", "mode"))
  tokens, weights = decode(build_model(SAMPLED), _variables(), INPUTS, LENGTHS, max_len=max_len,
                           mode=EvalMode.SAMPLE, key=KEY)  # fmt: skip
  assert tokens.shape == (3, max_len) and weights.shape == (3, max_len, INPUTS.shape[1])
  decoder_inputs = jnp.concatenate([jnp.full((3, 1), SAMPLED.bos_id), tokens[:, :-1]], axis=1)
  out = _sampled_feedback(_variables(), decoder_inputs)
  np.testing.assert_array_equal(jnp.argmax(out.logits, -1), tokens)
  np.testing.assert_allclose(out.attention.weights, weights, atol=1e-5)


def test_lengths_from_eos():
  tokens = jnp.array([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
  np.testing.assert_array_equal(lengths_from_eos(tokens, 2), [2, 4, 1])


def test_config_errors_list_valid_choices():
  with pytest.raises(ValueError, match=r"'softmax' is invalid; valid choices: \['soft', 'hard'"):
    RNNConfig(vocab_size=5, attention="softmax")
  with pytest.raises(ValueError, match="hidden_dim"):
    RNNConfig(vocab_size=5, hidden_dim=0)
  for bad in (-1, True, 2.0):
    with pytest.raises(
      ValueError, match=re.escape(f"unroll must be an int >= 0 (0 unrolls fully), got {bad!r}")
    ):
      RNNConfig(vocab_size=5, unroll=bad)
  long_inputs = jnp.ones((1, SMALL.max_source_len + 1), jnp.int32)
  with pytest.raises(ValueError, match="max_source_len"):
    build_model(BASE).apply(_variables(), long_inputs, jnp.array([3]), DEC_INPUTS[:1])


def test_soft_attention_learns_copy():
  task = tasks.get_task("copy", num_symbols=6, train_lengths=(1, 6))
  config = RNNConfig(vocab_size=task.vocab_size, embed_dim=16, encoder_dim=16, hidden_dim=32,
                     max_source_len=8)  # fmt: skip
  model = build_model(config)
  rng = np.random.default_rng(0)
  batch = task.sample(rng, 32, tasks.Split.TRAIN)
  params = jax.jit(model.init)(
    KEY, batch.inputs, batch.input_lengths, tasks.decoder_inputs(batch.targets)
  )
  optimizer = optax.adam(1e-2)
  opt_state = optimizer.init(params)

  def loss_fn(params, batch):
    out = model.apply(params, batch.inputs, batch.input_lengths,
                      tasks.decoder_inputs(batch.targets))  # fmt: skip
    mask = jnp.arange(batch.targets.shape[1])[None] < batch.target_lengths[:, None]
    nll = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.targets)
    return jnp.sum(nll * mask) / jnp.sum(mask)

  @jax.jit
  def train_step(params, opt_state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(200):
    params, opt_state = train_step(params, opt_state, task.sample(rng, 32, tasks.Split.TRAIN))
  test = task.sample(np.random.default_rng(1), 256, tasks.Split.TEST)
  tokens, _ = jax.jit(greedy_decode, static_argnames=("model", "max_len", "mode"))(
    model, params, test.inputs, test.input_lengths, max_len=test.targets.shape[1], mode="soft"
  )
  mask = jnp.arange(test.targets.shape[1])[None] < test.target_lengths[:, None]
  exact = jnp.mean(jnp.all((tokens == test.targets) | ~mask, axis=-1))
  assert exact > 0.95, f"greedy exact match {exact:.3f} after 200 steps"


VARIATIONAL = dataclasses.replace(SMALL, attention="hard", posterior=True)
TARGETS = jnp.concatenate([DEC_INPUTS[:, 1:], jnp.zeros((3, 1), jnp.int32)], axis=1)
TARGET_LENGTHS = jnp.sum(TARGETS > 0, axis=1)


def _variational():
  model = build_model(VARIATIONAL)
  return model, model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)


def test_drawn_positions_are_read_out_under_shared_decoder_states():
  # sample_logits[k, b, t] must be exactly the enumerated logits at the drawn position, and
  # the draws must follow the posterior q (one call: the same q for every draw).
  model, variables = _variational()
  out = model.apply(variables, INPUTS, LENGTHS, DEC_INPUTS, enumerate_positions=True,
                    posterior_targets=(TARGETS, TARGET_LENGTHS), num_samples=4000,
                    rngs={"attention": KEY})  # fmt: skip
  index_KxBxT = out.sample_index
  gathered = jnp.take_along_axis(out.position_logits[None], index_KxBxT[..., None, None], axis=3)[
    ..., 0, :
  ]
  np.testing.assert_allclose(out.sample_logits, gathered, rtol=1e-5, atol=1e-6)
  assert bool(jnp.all(index_KxBxT < LENGTHS[None, :, None]))  # never a padded position
  q_BxTxS = out.posterior_weights
  np.testing.assert_allclose(jnp.sum(q_BxTxS, -1), 1.0, rtol=1e-5)
  freq_BxTxS = jnp.mean(jax.nn.one_hot(index_KxBxT, INPUTS.shape[1]), axis=0)
  sigma = np.sqrt(q_BxTxS * (1 - q_BxTxS) / 4000)
  assert np.all(np.abs(freq_BxTxS - q_BxTxS) <= 5 * sigma + 1e-6)
  # The prior is the attention's expected-context distribution: no draw from it.
  assert out.attention.index is None


def test_variational_model_reads_source_content_only_through_the_chosen_position():
  # With an inference network, p(y_t | z_t = s) still depends on the source only through
  # the value at s: changing one source symbol changes the logits at that position only.
  model, variables = _variational()
  changed = INPUTS.at[0, 1].set(9)

  def position_logits(inputs):
    return model.apply(variables, inputs, LENGTHS, DEC_INPUTS, enumerate_positions=True,
                       posterior_targets=(TARGETS, TARGET_LENGTHS), num_samples=2,
                       rngs={"attention": KEY}).position_logits  # fmt: skip

  before, after = position_logits(INPUTS), position_logits(changed)
  np.testing.assert_array_equal(np.delete(before, 1, axis=2), np.delete(after, 1, axis=2))
  assert not np.allclose(before[0, :, 1], after[0, :, 1])


def test_evaluation_never_uses_the_inference_network():
  # Greedy decoding and the teacher-forced evaluation pass read the prior only: changing
  # every posterior parameter changes neither.
  model, variables = _variational()
  params = variables["params"]
  posterior_names = [n for n in params if n.startswith("posterior")]
  assert set(posterior_names) >= {"posterior_embed", "posterior_encoder", "posterior_attention"}
  noisy = dict(params)
  for name in posterior_names:
    noisy[name] = jax.tree.map(lambda x: x + 1.0, params[name])
  for v in (variables, {"params": noisy}):
    tokens, weights = greedy_decode(model, v, INPUTS, LENGTHS, max_len=6, mode=EvalMode.ARGMAX)
    out = model.apply(v, INPUTS, LENGTHS, DEC_INPUTS, attention_override=EvalMode.ARGMAX,
                      rngs={"attention": KEY})  # fmt: skip
    if v is variables:
      reference = (tokens, weights, out.logits)
    else:
      for a, b in zip(reference, (tokens, weights, out.logits), strict=True):
        np.testing.assert_array_equal(a, b)

  # ... while q itself does change with them.
  def q(v):
    return model.apply(v, INPUTS, LENGTHS, DEC_INPUTS, posterior_targets=(TARGETS, TARGET_LENGTHS),
                       rngs={"attention": KEY}).posterior_weights  # fmt: skip

  assert not np.allclose(q(variables), q({"params": noisy}))


def test_posterior_needs_an_inference_network_and_latent_draws_need_local_states():
  model = build_model(dataclasses.replace(SMALL, attention="hard"))
  variables = model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)
  with pytest.raises(ValueError, match="no inference network"):
    model.apply(variables, INPUTS, LENGTHS, DEC_INPUTS,
                posterior_targets=(TARGETS, TARGET_LENGTHS))  # fmt: skip
  sampled = build_model(dataclasses.replace(SMALL, attention="hard", feedback="sampled"))
  with pytest.raises(ValueError, match="feedback 'none' or 'expected'"):
    sampled.apply(sampled.init(KEY, INPUTS, LENGTHS, DEC_INPUTS), INPUTS, LENGTHS, DEC_INPUTS,
                  num_samples=2, rngs={"attention": KEY})  # fmt: skip


def test_2d_positions_are_row_plus_column_embeddings_of_the_task_grid():
  task = tasks.get_task("localize")
  batch = task.sample(np.random.default_rng([0, 0]), 2, "train")
  config = dataclasses.replace(
    SMALL, vocab_size=task.vocab_size, max_source_len=task.max_input_len("ood"),
    position_embedding="2d", grid_width=task.source_grid_width(), value_source="local",
  )  # fmt: skip
  model = build_model(config)
  variables = model.init(KEY, batch.inputs, batch.input_lengths, batch.targets)
  memory = model.apply(variables, batch.inputs, batch.input_lengths, method="encode")
  params = variables["params"]
  rows, columns = task.source_coordinates(batch.inputs.shape[1])
  want = (
    params["token_embed"]["embedding"][batch.inputs]
    + params["row_embed"]["embedding"][rows][None]
    + params["column_embed"]["embedding"][columns][None]
  )
  np.testing.assert_allclose(memory.values_BxSxDv, want, atol=1e-6)  # local: token + position
  assert "position_embed" not in params and params["column_embed"]["embedding"].shape[0] == 5
  with pytest.raises(ValueError, match="grid_width >= 1"):
    RNNConfig(vocab_size=5, position_embedding="2d")
