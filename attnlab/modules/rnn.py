"""Model family 1: RNN encoder-decoder with attention at every decoder step.

Decoder step ``t`` (Luong et al. 2015, with input feeding):

  ``h_t = cell(h_{t-1}, [embed(y_{t-1}); f_{t-1}])``   (``f``: the feedback, possibly empty)
  ``c_t = attend(q=h_t, keys, values)``               (the attention switch)
  ``logits_t = W_o tanh(W_h h_t + W_c c_t + b)``

The loop is an ``nn.scan``: compile time does not grow with the target length.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import masks
from attnlab.modules.attend import resolve_spec
from attnlab.modules.attention import Attention, AttentionAux
from attnlab.modules.config import RNNConfig
from attnlab.modules.kinds import (
  AttentionKind,
  Cell,
  EvalMode,
  Feedback,
  KeySource,
  PositionEmbedding,
  ScoreKind,
  ValueSource,
)
from attnlab.modules.outputs import AttentionRecord, Seq2SeqOutput
from attnlab.tasks.base import grid_coordinates


class Memory(NamedTuple):
  """The encoded source: what every decoder step attends to."""

  keys_BxSxDk: chex.Array
  values_BxSxDv: chex.Array
  mask_BxS: chex.Array


class StepOutput(NamedTuple):
  """One decoder step: the state used as query, the context and the attention record."""

  hidden_BxH: chex.Array
  context_BxDv: chex.Array
  aux: AttentionAux  # per-query fields [B, ...] (the length-1 query axis is dropped).


def _make_cell(cell: Cell, features: int, name: str | None = None) -> nn.RNNCellBase:
  if cell is Cell.GRU:
    return nn.GRUCell(features, name=name)
  return nn.OptimizedLSTMCell(features, name=name)


def _step_keys(key: chex.PRNGKey | None, length: int) -> chex.Array | None:
  """``fold_in(key, t)`` for ``t < length``: the same step keys in every decoding loop."""
  if key is None:
    return None
  return jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(length))


class RNNDecoder(nn.Module):
  """Decoder cell, attention and readout: the body of the decoding loops."""

  config: RNNConfig

  def setup(self):
    c = self.config
    self.embed = nn.Embed(c.vocab_size, c.embed_dim)
    self.cell = _make_cell(c.cell, c.hidden_dim)
    self.attention = Attention(
        score=c.score, kind=c.attention, additive_dim=c.additive_dim,
        gumbel_temperature=c.gumbel_temperature, straight_through=c.straight_through,
    )  # fmt: skip
    self.readout_state = nn.Dense(c.hidden_dim)
    self.readout_context = nn.Dense(c.hidden_dim, use_bias=False)
    self.output = nn.Dense(c.vocab_size)
    if c.learned_baseline:
      self.baseline_hidden = nn.Dense(c.hidden_dim)
      self.baseline_out = nn.Dense(1)

  def step(self, carry, tokens_B, key, memory: Memory, override) -> tuple[Any, StepOutput]:
    """One step: ``carry = (cell state, feedback or None)`` -> new carry, :class:`StepOutput`."""
    state, feedback_BxDv = carry
    inputs_BxI = self.embed(tokens_B)
    if feedback_BxDv is not None:
      inputs_BxI = jnp.concatenate([inputs_BxI, feedback_BxDv], axis=-1)
    state, hidden_BxH = self.cell(state, inputs_BxI)
    context_Bx1xDv, aux = self.attention(
        hidden_BxH[:, None, :], memory.keys_BxSxDk, memory.values_BxSxDv, memory.mask_BxS,
        override=override, key=key,
    )  # fmt: skip
    aux = jax.tree_util.tree_map(lambda x: x[:, 0], aux)
    context_BxDv = context_Bx1xDv[:, 0]
    feedback = self.config.feedback
    if feedback is Feedback.EXPECTED:
      feedback_BxDv = aux.expected_context
    elif feedback is Feedback.SAMPLED:
      feedback_BxDv = context_BxDv
    return (state, feedback_BxDv), StepOutput(hidden_BxH, context_BxDv, aux)

  def states(self, carry, tokens_B) -> tuple[Any, chex.Array]:
    """The cell alone: one step of a decoder that feeds nothing back (its states then do not
    depend on the attention, so :meth:`attend_steps` attends every step at once)."""
    state, _ = carry
    state, hidden_BxH = self.cell(state, self.embed(tokens_B))
    return (state, None), hidden_BxH

  def attend_steps(
    self, hidden_BxTxH: chex.Array, memory: Memory, override, keys_T: chex.Array | None
  ) -> tuple[chex.Array, AttentionAux]:
    """:meth:`step`'s attention for every step at once: ``(context [B, T, Dv], aux [B, T, ..])``.

    Step ``t`` draws with ``keys_T[t]``, as :meth:`step` does, so the choices are those of the
    step-by-step loop; the T queries become one batched computation outside the scan.
    """

    def attend(module, query_Bx1xH, key):
      return module(
          query_Bx1xH, memory.keys_BxSxDk, memory.values_BxSxDv, memory.mask_BxS,
          override=override, key=key,
      )  # fmt: skip

    if keys_T is None:  # No random choice: the T queries are one call.
      return self.attention(
          hidden_BxTxH, memory.keys_BxSxDk, memory.values_BxSxDv, memory.mask_BxS,
          override=override,
      )  # fmt: skip
    per_step = nn.vmap(
      attend,
      variable_axes={"params": None},
      split_rngs={"params": False},
      in_axes=(2, 0),
      out_axes=1,
    )
    context_BxTx1xDv, aux = per_step(self.attention, hidden_BxTxH[:, None, :, :], keys_T)
    drop = lambda x: None if x is None else x[:, :, 0]  # The per-step query axis.
    return drop(context_BxTx1xDv), jax.tree_util.tree_map(drop, aux)

  def logits(self, hidden_xH: chex.Array, context_xDv: chex.Array) -> chex.Array:
    """``W_o tanh(W_h h + W_c c + b)``; leading axes of ``h`` and ``c`` broadcast (same rank)."""
    return self.output(jnp.tanh(self.readout_state(hidden_xH) + self.readout_context(context_xDv)))

  def baseline(self, hidden_BxTxH: chex.Array) -> chex.Array:
    """Value head on the stop-gradient state: it learns without moving the decoder."""
    hidden = jax.lax.stop_gradient(hidden_BxTxH)
    return self.baseline_out(jnp.tanh(self.baseline_hidden(hidden)))[..., 0]


def _scan_steps(body, decoder: RNNDecoder, carry, xs, memory: Memory, length: int):
  """``nn.scan`` of ``body(decoder, carry, xs, memory)`` over ``length`` steps of ``xs``,
  ``decoder.config.unroll`` steps per loop iteration."""
  scan = nn.scan(
    body,
    variable_broadcast="params",
    split_rngs={"params": False},
    in_axes=(0, nn.broadcast),
    out_axes=0,
    length=length,
    unroll=decoder.config.unroll,
  )
  return scan(decoder, carry, xs, memory)


class RNNSeq2Seq(nn.Module):
  """RNN encoder-decoder (Bahdanau et al. 2015; Luong et al. 2015) with an attention switch.

  Keys and values are chosen separately. Keys come from a bidirectional GRU/LSTM
  (``key_source="birnn"``) or are position-local (token plus position embedding).
  Values are the token embeddings by default (``value_source="token"``); ``"local"`` adds
  the position embedding, ``"contextual"`` uses the bidirectional states. Caveat: a
  contextual value at position ``j`` may carry any source token, so a model can solve e.g.
  sort while attending to the wrong position, and alignment metrics then mean nothing.

  By default nothing carries source content to the output except the attention's context:
  the decoder feeds back nothing (``feedback="none"``), so its states see only the target
  prefix and, with ``init_decoder_from_length``, the source length (a count, no symbol).
  Then a hard-attention model's output depends on the source only through the positions it
  chose, each step's choice has a local reward, and the exact enumerated gradient exists.
  ``feedback="expected"`` (Deng et al. 2018) feeds the expected context back: the states
  still never depend on a sample, but they carry a soft summary of the source, a path around
  a hard choice. ``"sampled"`` feeds back the context actually used. The decoder starts
  from the length embedding (or zeros) unless ``init_decoder_from_source``: a state
  computed from the source would let it decode without attending.

  Call: ``apply(params, inputs_BxS, input_lengths_B, decoder_inputs_BxT, *,
  attention_override=None, enumerate_positions=False, rngs={"attention": key})`` ->
  :class:`Seq2SeqOutput` (teacher forcing). The ``"attention"`` rng is used only by
  random selections (hard sampling, Gumbel); step ``t`` uses ``fold_in(key, t)``.
  """

  config: RNNConfig

  def setup(self):
    c = self.config
    self.token_embed = nn.Embed(c.vocab_size, c.embed_dim)
    if c.position_embedding is PositionEmbedding.TWO_D:  # The task's grid: rows, columns.
      self.row_embed = nn.Embed(c.max_source_len, c.embed_dim)
      self.column_embed = nn.Embed(c.grid_width, c.embed_dim)
    else:
      self.position_embed = nn.Embed(c.max_source_len, c.embed_dim)
    if c.uses_encoder_rnn:
      self.encoder = nn.Bidirectional(
        nn.RNN(_make_cell(c.cell, c.encoder_dim), unroll=c.unroll),
        nn.RNN(_make_cell(c.cell, c.encoder_dim), unroll=c.unroll),
      )
    key_dim = 2 * c.encoder_dim if c.key_source is KeySource.BIRNN else c.embed_dim
    dot_scores = c.score in (ScoreKind.DOT, ScoreKind.SCALED_DOT)
    self._project_keys = dot_scores and key_dim != c.hidden_dim
    if self._project_keys:
      # Dot scores need Dk == H: project the keys once, outside the decoder loop.
      self.key_projection = nn.Dense(c.hidden_dim, use_bias=False)
    if c.init_decoder_from_source:
      self.init_projection = nn.Dense(c.hidden_dim)
    if c.init_decoder_from_length:
      self.length_embed = nn.Embed(c.max_source_len + 1, c.hidden_dim)
    if c.posterior:
      # The inference network: its own target embedding and bidirectional RNN, and a score of
      # the prior's family over the same keys (dot scores need the keys' size: a projection).
      self.posterior_embed = nn.Embed(c.vocab_size, c.embed_dim)
      self.posterior_encoder = nn.Bidirectional(
        nn.RNN(_make_cell(c.cell, c.encoder_dim), unroll=c.unroll),
        nn.RNN(_make_cell(c.cell, c.encoder_dim), unroll=c.unroll),
      )
      final_key_dim = c.hidden_dim if self._project_keys else key_dim
      self._project_posterior = dot_scores and 2 * c.encoder_dim != final_key_dim
      if self._project_posterior:
        self.posterior_query = nn.Dense(final_key_dim, use_bias=False)
      self.posterior_attention = Attention(
        score=c.score, kind=AttentionKind.SOFT, additive_dim=c.additive_dim
      )
    self.decoder = RNNDecoder(c)

  def encode(self, inputs_BxS: chex.Array, input_lengths_B: chex.Array) -> Memory:
    """Embeds and encodes the source; padded positions are masked from attention."""
    c = self.config
    chex.assert_rank([inputs_BxS, input_lengths_B], [2, 1])
    source_len = inputs_BxS.shape[1]
    if source_len > c.max_source_len:
      raise ValueError(
        f"source length {source_len} exceeds max_source_len={c.max_source_len}; "
        "raise RNNConfig.max_source_len."
      )
    tokens_BxSxE = self.token_embed(inputs_BxS)
    if c.position_embedding is PositionEmbedding.TWO_D:
      rows_S, columns_S = grid_coordinates(source_len, c.grid_width)
      positions_SxE = self.row_embed(rows_S) + self.column_embed(columns_S)
    else:
      positions_SxE = self.position_embed(jnp.arange(source_len))
    local_BxSxE = tokens_BxSxE + positions_SxE[None]
    keys = values = local_BxSxE
    if c.value_source is ValueSource.TOKEN:
      values = tokens_BxSxE
    if c.uses_encoder_rnn:
      states_BxSx2E = self.encoder(local_BxSxE, seq_lengths=input_lengths_B)
      if c.key_source is KeySource.BIRNN:
        keys = states_BxSx2E
      if c.value_source is ValueSource.CONTEXTUAL:
        values = states_BxSx2E
    if self._project_keys:
      keys = self.key_projection(keys)
    return Memory(keys, values, masks.padding_mask(input_lengths_B, source_len))

  def _initial_carry(self, memory: Memory):
    c = self.config
    batch = memory.keys_BxSxDk.shape[0]
    hidden_BxH = jnp.zeros((batch, c.hidden_dim), memory.keys_BxSxDk.dtype)
    if c.init_decoder_from_source:
      valid_BxSx1 = memory.mask_BxS[:, :, None].astype(memory.keys_BxSxDk.dtype)
      count_Bx1 = jnp.maximum(jnp.sum(valid_BxSx1, axis=1), 1.0)
      mean_key_BxDk = jnp.sum(memory.keys_BxSxDk * valid_BxSx1, axis=1) / count_Bx1
      hidden_BxH = jnp.tanh(self.init_projection(mean_key_BxDk))
    if c.init_decoder_from_length:
      hidden_BxH = hidden_BxH + jnp.tanh(self.length_embed(jnp.sum(memory.mask_BxS, axis=1)))
    state = hidden_BxH if c.cell is Cell.GRU else (jnp.zeros_like(hidden_BxH), hidden_BxH)
    feedback = None
    if c.feedback is not Feedback.NONE:
      feedback = jnp.zeros((batch, memory.values_BxSxDv.shape[-1]), memory.values_BxSxDv.dtype)
    return state, feedback

  def posterior(
    self, memory: Memory, targets_BxT: chex.Array, target_lengths_B: chex.Array
  ) -> chex.Array:
    """The inference network's ``q(z_t | x, y)``: ``[B, T, S]`` weights, 0 at padding.

    Step ``t``'s query is the bidirectional state at target position ``t``: it has read the
    whole target ``y`` (``y_t`` included), which the prior never sees. The keys are the
    prior's, under ``stop_gradient``: the inference network's parameters are its own.
    """
    if not self.config.posterior:
      raise ValueError("this model has no inference network: build it with posterior=True.")
    chex.assert_rank([targets_BxT, target_lengths_B], [2, 1])
    states_BxTx2E = self.posterior_encoder(
      self.posterior_embed(targets_BxT), seq_lengths=target_lengths_B
    )
    if self._project_posterior:
      states_BxTx2E = self.posterior_query(states_BxTx2E)
    # q reads the source through the prior's keys as fixed features: its gradient does not
    # shape the encoder, which belongs to the generative model (prior and likelihood). With
    # the gradient, q (which sees y_t) tunes the keys for matching the target's symbol and
    # the prior never learns to find the queried value: recall seeds 0-2 stayed at 29-46%
    # validation alignment over 1,800 steps; without it, seed 0 aligns 100% by step 750.
    keys_BxSxDk = jax.lax.stop_gradient(memory.keys_BxSxDk)
    _, aux = self.posterior_attention(
      states_BxTx2E, keys_BxSxDk, memory.values_BxSxDv, memory.mask_BxS, override=EvalMode.SOFT
    )
    return aux.weights

  def _draw(
    self, weights_BxTxS: chex.Array, memory: Memory, hidden_BxTxH: chex.Array, num_samples: int
  ) -> tuple[chex.Array, chex.Array]:
    """``K`` positions per step from ``weights`` and the logits with their values.

    The decoder states do not depend on the positions, so the ``K`` readouts share them:
    ``(index [K, B, T], logits [K, B, T, V])``.
    """
    mask_BxTxS = jnp.broadcast_to(memory.mask_BxS[:, None, :], weights_BxTxS.shape)
    tiny = jnp.finfo(jnp.float32).tiny
    logits_BxTxS = jnp.where(mask_BxTxS, jnp.log(jnp.maximum(weights_BxTxS, tiny)), -jnp.inf)
    # A step with no valid position (empty source) draws position 0; its weight is 0.
    logits_BxTxS = jnp.where(jnp.any(mask_BxTxS, -1, keepdims=True), logits_BxTxS, 0.0)
    key = self.make_rng("attention")
    index_KxBxT = jax.random.categorical(
      key, logits_BxTxS, shape=(num_samples, *logits_BxTxS.shape[:2])
    ).astype(jnp.int32)
    gather = jax.vmap(lambda v_SxDv, i_KxT: v_SxDv[i_KxT], in_axes=(0, 1), out_axes=1)
    values_KxBxTxDv = gather(memory.values_BxSxDv, index_KxBxT)
    return index_KxBxT, self.decoder.logits(hidden_BxTxH[None], values_KxBxTxDv)

  def _keys(self, spec, length: int):
    return _step_keys(self.make_rng("attention") if spec.needs_key else None, length)

  def _spec(self, override):
    c = self.config
    return resolve_spec(
        c.attention, override, gumbel_temperature=c.gumbel_temperature,
        straight_through=c.straight_through,
    )  # fmt: skip

  def __call__(
    self,
    inputs_BxS: chex.Array,
    input_lengths_B: chex.Array,
    decoder_inputs_BxT: chex.Array,
    *,
    attention_override: Any = None,
    enumerate_positions: bool = False,
    posterior_targets: tuple[chex.Array, chex.Array] | None = None,
    num_samples: int = 0,
  ) -> Seq2SeqOutput:
    """Teacher-forced decoding; see the class docstring and :class:`Seq2SeqOutput`.

    Latent-alignment training (variational attention, multi-sample bounds) passes
    ``posterior_targets=(targets [B, T], target_lengths [B])`` for the inference network's
    ``q`` and/or ``num_samples=K`` for ``K`` positions drawn per step from ``q`` (or from
    the attention when no posterior is asked for), read out under shared decoder states.
    Either one makes the attention itself a prior: its expected context, no draw.
    """
    c = self.config
    chex.assert_rank(decoder_inputs_BxT, 2)
    latent = posterior_targets is not None or num_samples > 0
    if latent:
      if c.feedback is Feedback.SAMPLED:
        raise ValueError(
          "posterior_targets / num_samples need feedback 'none' or 'expected': with 'sampled' "
          "feedback later decoder states depend on the drawn position."
        )
      attention_override = EvalMode.SOFT
    spec = self._spec(attention_override)
    if enumerate_positions and c.feedback is Feedback.SAMPLED:
      raise ValueError(
        "enumerate_positions=True needs feedback 'none' or 'expected': with 'sampled' "
        "feedback later decoder states depend on the sampled position."
      )
    keys_T = self._keys(spec, decoder_inputs_BxT.shape[1])  # First rng use: as in greedy.
    memory = self.encode(inputs_BxS, input_lengths_B)

    length = decoder_inputs_BxT.shape[1]
    if c.feedback is Feedback.NONE:
      # The states do not depend on the attention: scan the cell alone, then attend every
      # step at once (the same choices as the step loop, with far fewer, larger kernels).
      def cell_body(decoder, carry, tokens_B, memory):
        del memory
        return decoder.states(carry, tokens_B)

      _, hidden_TxBxH = _scan_steps(
        cell_body, self.decoder, self._initial_carry(memory), decoder_inputs_BxT.T, memory, length
      )
      hidden_BxTxH = jnp.swapaxes(hidden_TxBxH, 0, 1)
      context_BxTxDv, aux = self.decoder.attend_steps(
        hidden_BxTxH, memory, attention_override, keys_T
      )
    else:

      def body(decoder, carry, xs, memory):
        tokens_B, key = xs
        return decoder.step(carry, tokens_B, key, memory, attention_override)

      _, steps = _scan_steps(
        body, self.decoder, self._initial_carry(memory), (decoder_inputs_BxT.T, keys_T), memory,
        length,
      )  # fmt: skip
      steps = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), steps)  # time-major -> BxT
      hidden_BxTxH, context_BxTxDv, aux = steps.hidden_BxH, steps.context_BxDv, steps.aux
    posterior_weights = sample_index = sample_logits = None
    if posterior_targets is not None:
      posterior_weights = self.posterior(memory, *posterior_targets)
    elif c.posterior and self.is_initializing():
      # Create the inference network's parameters (shapes only matter): any target will do.
      self.posterior(memory, decoder_inputs_BxT, jnp.sum(decoder_inputs_BxT > 0, axis=1))
    if num_samples > 0:
      draw_from = aux.weights if posterior_weights is None else posterior_weights
      sample_index, sample_logits = self._draw(draw_from, memory, hidden_BxTxH, num_samples)
    position_logits = None
    if enumerate_positions:
      position_logits = self.decoder.logits(
        hidden_BxTxH[:, :, None, :], memory.values_BxSxDv[:, None, :, :]
      )
    return Seq2SeqOutput(
      logits=self.decoder.logits(hidden_BxTxH, context_BxTxDv),
      attention=AttentionRecord(aux.weights, aux.index, aux.log_prob, aux.entropy),
      soft_logits=(
        self.decoder.logits(hidden_BxTxH, aux.expected_context) if spec.is_hard else None
      ),
      position_logits=position_logits,
      baseline=self.decoder.baseline(hidden_BxTxH) if c.learned_baseline else None,
      posterior_weights=posterior_weights,
      sample_index=sample_index,
      sample_logits=sample_logits,
    )

  def greedy(
    self, inputs_BxS: chex.Array, input_lengths_B: chex.Array, *, max_len: int, mode: EvalMode
  ) -> tuple[chex.Array, chex.Array]:
    """Free-running decoding (use :func:`attnlab.modules.greedy_decode`)."""
    spec = self._spec(mode)
    keys_T = self._keys(spec, max_len)
    memory = self.encode(inputs_BxS, input_lengths_B)
    bos_B = jnp.full(inputs_BxS.shape[:1], self.config.bos_id, jnp.int32)

    def body(decoder, carry, key, memory):
      inner, tokens_B = carry
      inner, out = decoder.step(inner, tokens_B, key, memory, mode)
      next_B = jnp.argmax(decoder.logits(out.hidden_BxH, out.context_BxDv), axis=-1)
      next_B = next_B.astype(jnp.int32)
      return (inner, next_B), (next_B, out.aux.weights)

    _, (tokens_TxB, weights_TxBxS) = _scan_steps(
      body, self.decoder, (self._initial_carry(memory), bos_B), keys_T, memory, max_len
    )
    return tokens_TxB.T, jnp.swapaxes(weights_TxBxS, 0, 1)
