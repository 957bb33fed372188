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


# ------------------------------------------- position-local values and 2-D positions


def _encode(model, variables, inputs):
  return model.apply(variables, inputs, LENGTHS, method="encode")


@pytest.mark.parametrize("source", ["token", "local", "contextual"])
def test_local_values_change_only_where_the_source_symbol_changed(source):
  # Changing the symbol at position 1 of the first source: the encoder's output (the keys)
  # changes at every position (self-attention mixes the source); token and local values
  # change at position 1 alone, contextual values (today's default) everywhere.
  model = build_model(dataclasses.replace(SMALL, value_source=source))
  variables = model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)
  before, after = (_encode(model, variables, x) for x in (INPUTS, INPUTS.at[0, 1].set(9)))
  keys_changed = np.any(before.keys_BxSxD[0] != after.keys_BxSxD[0], axis=-1)[:4]
  assert keys_changed.all()
  if source == "contextual":
    assert before.values_BxSxD is None and after.values_BxSxD is None  # the keys themselves
    return
  values_changed = np.any(before.values_BxSxD != after.values_BxSxD, axis=-1)
  assert values_changed.tolist() == [[False, True, False, False, False]] + [[False] * 5] * 2


def _chosen_by_step(auxes, position):
  """bool ``[B, T]``: some head of some layer chose ``position`` at a step ``<= t``."""
  index_BxLxHxT = jnp.stack([a.index for a in auxes], axis=1)
  chosen_BxT = jnp.any(index_BxLxHxT == position, axis=(1, 2))
  return np.maximum.accumulate(np.asarray(chosen_BxT), axis=1)


@pytest.mark.parametrize("source", ["token", "local", "contextual"])
def test_hard_output_reads_source_symbols_only_at_the_chosen_positions(source):
  # Hard (argmax) cross-attention in 2 layers x 2 heads. The keys, from the encoder, decide
  # the choices; the values carry content. Replace the value inputs by those of a source
  # whose every symbol differs, keeping the keys: with position-local values the output at
  # step t changes only where a head of a layer chose the replaced position at a step <= t
  # (the decoder's self-attention carries earlier contexts forward), and stays bit for bit
  # the same elsewhere. With contextual values (the encoder's output) a changed symbol
  # reaches the output where no head chose its position: change the symbol, keep the keys
  # (so the choices) and that position's own value, take every other position's new
  # contextual value; a hard choice of any position reads the whole source.
  model = build_model(dataclasses.replace(SMALL, attention="hard", value_source=source))
  variables = model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)
  bound = model.bind(variables)
  memory = bound.encode(INPUTS, LENGTHS)
  other_inputs = jnp.where(INPUTS == 10, 10, INPUTS % 9 + 3)  # 3..9 -> 4..9,3
  values = memory.keys_BxSxD if source == "contextual" else memory.values_BxSxD
  other_values = bound.encode(other_inputs, LENGTHS).values_BxSxD

  def decode(values_BxSxD):
    _, logits, auxes = bound.decoder(
      DEC_INPUTS, memory.keys_BxSxD, memory.mask_BxS, EvalMode.ARGMAX, values_BxSxD=values_BxSxD
    )
    return np.asarray(logits), auxes

  logits, auxes = decode(values)
  changed_where_chosen = unchanged_elsewhere = changed_elsewhere = 0
  for b in range(INPUTS.shape[0]):
    for j in range(int(LENGTHS[b])):
      if source == "contextual":
        changed = bound.encode(INPUTS.at[b, j].set(other_inputs[b, j]), LENGTHS).keys_BxSxD
        replaced = values.at[b].set(changed[b]).at[b, j].set(values[b, j])
      else:
        replaced = values.at[b, j].set(other_values[b, j])
      new_logits, _ = decode(replaced)
      chosen_T = _chosen_by_step(auxes, j)[b]
      same_T = np.all(new_logits[b] == logits[b], axis=-1)
      others = np.delete(np.arange(INPUTS.shape[0]), b)
      np.testing.assert_array_equal(new_logits[others], logits[others])  # other examples
      changed_where_chosen += int(np.sum(chosen_T & ~same_T))
      unchanged_elsewhere += int(np.sum(~chosen_T & same_T))
      changed_elsewhere += int(np.sum(~chosen_T & ~same_T))
  if source == "contextual":
    assert changed_elsewhere > 0  # the leak: content of a position no head chose
  else:
    assert changed_where_chosen > 0  # the chosen values do reach the output
    assert changed_elsewhere == 0 and unchanged_elsewhere > 0


def test_2d_positions_encode_row_and_column_of_the_task_grid():
  from attnlab import tasks
  from attnlab.modules.transformer import sinusoidal_encoding

  task = tasks.get_task("localize")
  batch = task.sample(np.random.default_rng([0, 0]), 2, "train")
  config = dataclasses.replace(
    SMALL, vocab_size=task.vocab_size, position_embedding="2d", grid_width=task.source_grid_width()
  )
  model = build_model(config)
  variables = model.init(KEY, batch.inputs, batch.input_lengths, batch.targets)
  bound = model.bind(variables)
  positions_BxSxD = bound.embed(batch.inputs) - bound.embed(batch.inputs, positions=False)
  rows, columns = task.source_coordinates(batch.inputs.shape[1])
  half = SMALL.model_dim // 2
  np.testing.assert_allclose(
    positions_BxSxD[0, :, :half], sinusoidal_encoding(rows, half), atol=1e-6
  )
  np.testing.assert_allclose(
    positions_BxSxD[0, :, half:], sinusoidal_encoding(columns, SMALL.model_dim - half), atol=1e-6
  )
  # Cell (1, 0) shares its column half with cell (0, 0) and its row half with cell (1, 1).
  width = task.grid_width
  np.testing.assert_allclose(positions_BxSxD[0, width, half:], positions_BxSxD[0, 0, half:])
  np.testing.assert_allclose(positions_BxSxD[0, width, :half], positions_BxSxD[0, width + 1, :half])
  assert not np.allclose(positions_BxSxD[0, width], positions_BxSxD[0, 0])
  with pytest.raises(ValueError, match="grid_width >= 1"):
    TransformerConfig(vocab_size=5, position_embedding="2d")


def test_local_values_and_length_embedding_decode_as_they_train():
  # The paths the comparison's Transformer adds (separate value inputs, the source length in
  # the decoder's inputs): cached greedy decoding equals the full recompute, and teacher
  # forcing on the greedy output predicts that output, with hard (argmax) cross-attention.
  config = dataclasses.replace(SMALL, attention="hard", value_source="local", length_embedding=True)
  model = build_model(config)
  variables = model.init(KEY, INPUTS, LENGTHS, DEC_INPUTS)
  assert "length_projection" in variables["params"]["decoder"]

  @jax.jit
  def run(variables):
    greedy = {
      cache: model.apply(
        variables,
        INPUTS,
        LENGTHS,
        max_len=6,
        mode=EvalMode.ARGMAX,
        cache=cache,
        method="greedy",
        mutable=["cache"],
      )[0]  # fmt: skip
      for cache in (True, False)
    }
    tokens = greedy[True][0]
    forced = model.apply(
      variables,
      INPUTS,
      LENGTHS,
      jnp.concatenate([DEC_INPUTS[:, :1], tokens[:, :-1]], axis=1),
      attention_override=EvalMode.ARGMAX,
    )
    return greedy, forced

  greedy, forced = run(variables)
  np.testing.assert_array_equal(greedy[True][0], greedy[False][0])
  np.testing.assert_allclose(greedy[True][1], greedy[False][1], atol=1e-5)
  np.testing.assert_array_equal(jnp.argmax(forced.logits, -1), greedy[True][0])
  # The length reaches the decoder's inputs: without its projection the logits differ.
  no_length = jax.tree_util.tree_map_with_path(
    lambda path, x: x * 0 if "length_projection" in jax.tree_util.keystr(path) else x, variables
  )
  apply = lambda v: model.apply(v, INPUTS, LENGTHS, DEC_INPUTS, attention_override="argmax")
  assert not np.allclose(apply(variables).logits[:, 0], apply(no_length).logits[:, 0])
