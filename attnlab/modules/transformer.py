"""Model family 2: a small pre-LayerNorm Transformer encoder-decoder (Vaswani et al. 2017).

Sinusoidal positions (1-D, or row and column of a grid task's cells), soft scaled-dot
self-attention, and a cross-attention whose kind (soft | hard | gumbel | sparsemax | entmax15)
and score come from the config. Its keys are the encoder's output; its values are the
encoder's output too by default (``value_source="contextual"``), or position-local
(``"local"``: the encoder's input at the position; ``"token"``: the token embedding), with
which a hard model's output reads the source's symbols only at the positions its heads chose
(the choices themselves come from keys that see the whole source).

Self-attention is Flax's ``MultiHeadDotProductAttention`` computing with
:func:`attnlab.flax_attention_fn` (parameters ``query``/``key``/``value``/``out``, as
:class:`attnlab.modules.MultiHeadAttention`'s), which brings two things:

* Dropout (``TransformerConfig.dropout_rate``, default 0): on the self-attention weights and
  on the embeddings and every sub-layer's output before it joins the residual stream
  (Vaswani et al. 2017, §5.4). It is active only when a ``"dropout"`` PRNG stream is given
  (``rngs={"dropout": key}``, as training does) or ``deterministic=False``; evaluation,
  which passes no such stream, is deterministic.
* Cached incremental decoding: :meth:`TransformerSeq2Seq.greedy` runs one decoder step per
  token against a key/value cache of the self-attention (Flax's ``decode`` cache) instead
  of re-running the causal decoder on the whole prefix; equal to the full recompute.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import masks
from attnlab.flax_interop import flax_attention_fn
from attnlab.modules.attend import resolve_spec
from attnlab.modules.attention import AttentionAux, MultiHeadAttention
from attnlab.modules.config import TransformerConfig
from attnlab.modules.kinds import EvalMode, PositionEmbedding, ValueSource
from attnlab.modules.outputs import AttentionRecord, Seq2SeqOutput
from attnlab.tasks.base import grid_coordinates


def sinusoidal_encoding(positions_P: chex.Array, dim: int) -> chex.Array:
  """``PE[p, 2i] = sin(p / 10000^(2i/D))``, ``PE[p, 2i+1] = cos(...)``: ``[P, dim]``.

  Args:
    positions_P: positions (any numeric dtype; may be traced).
    dim: ``D``.

  Returns:
    ``[P, dim]`` float32.

  References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, §3.5.
  """
  positions_Px1 = jnp.asarray(positions_P).astype(jnp.float32)[:, None]
  inv_freq_1xF = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)[None]
  angles_PxF = positions_Px1 * inv_freq_1xF
  table = jnp.stack([jnp.sin(angles_PxF), jnp.cos(angles_PxF)], axis=-1)
  return table.reshape((positions_Px1.shape[0], -1))[:, :dim]


def sinusoidal_positions(length: int, dim: int, offset: Any = 0) -> chex.Array:
  """:func:`sinusoidal_encoding` of positions ``p = offset, ..., offset + length - 1``
  (``offset`` may be traced): ``[length, dim]``."""
  return sinusoidal_encoding(jnp.arange(length) + offset, dim)


def grid_sinusoidal_positions(length: int, dim: int, grid_width: int) -> chex.Array:
  """2-D sinusoids of the cells of a grid flattened in reading order: ``[length, dim]``.

  The first ``dim // 2`` features encode the row, the other ``dim - dim // 2`` the column
  (:func:`sinusoidal_encoding` of each), so the two coordinates are embedded separately:
  cells of one column share half their encoding, cells of one row the other half.

  Args:
    length: positions ``S`` (cells of the padded source).
    dim: ``D``.
    grid_width: columns of the grid (:func:`attnlab.tasks.grid_coordinates`).

  References:
    Carion et al., "End-to-End Object Detection with Transformers" (DETR), ECCV 2020: sine
    encodings of the two image axes, concatenated.
  """
  rows_S, columns_S = grid_coordinates(length, grid_width)
  half = dim // 2
  return jnp.concatenate(
    [sinusoidal_encoding(rows_S, half), sinusoidal_encoding(columns_S, dim - half)], axis=-1
  )


class _Embed(nn.Module):
  """Token embedding scaled by ``sqrt(D)`` plus sinusoidal positions (2-D on a grid when
  ``grid_width > 0``)."""

  vocab_size: int
  dim: int
  grid_width: int = 0

  @nn.compact
  def __call__(self, tokens_BxT: chex.Array, offset: Any = 0, *, positions: bool = True):
    """Embeds tokens at positions ``offset, offset + 1, ...`` (``positions=False``: the
    scaled token embedding alone)."""
    x_BxTxD = nn.Embed(self.vocab_size, self.dim)(tokens_BxT) * jnp.sqrt(float(self.dim))
    if not positions:
      return x_BxTxD
    length = tokens_BxT.shape[1]
    if self.grid_width:
      return x_BxTxD + grid_sinusoidal_positions(length, self.dim, self.grid_width)[None]
    return x_BxTxD + sinusoidal_positions(length, self.dim, offset)[None]


class Encoded(NamedTuple):
  """The encoded source: what every cross-attention reads.

  Attributes:
    keys_BxSxD: the encoder's output, the cross-attention's key inputs.
    values_BxSxD: the cross-attention's value inputs (``TransformerConfig.value_source``),
      or ``None`` when they are the keys' (``"contextual"``).
    mask_BxS: bool, ``True`` at real (unpadded) source positions.
  """

  keys_BxSxD: chex.Array
  values_BxSxD: chex.Array | None
  mask_BxS: chex.Array


class _Mlp(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x: chex.Array) -> chex.Array:
    return nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.hidden)(x)))


def _deterministic(module: nn.Module, deterministic: bool | None) -> bool:
  """``deterministic``, or by default: no dropout unless a ``"dropout"`` stream was given."""
  return not module.has_rng("dropout") if deterministic is None else deterministic


def _self_attention(c: TransformerConfig, decode: bool = False) -> nn.Module:
  """Soft scaled-dot self-attention with attention-weight dropout (and a decoding cache)."""
  return nn.MultiHeadDotProductAttention(
    num_heads=c.num_heads,
    dropout_rate=c.dropout_rate,
    decode=decode,
    attention_fn=flax_attention_fn,
    name="self_attention",
  )


class EncoderLayer(nn.Module):
  """``x + Dropout(SelfAttn(LN(x)))``, then ``x + Dropout(MLP(LN(x)))``."""

  config: TransformerConfig

  @nn.compact
  def __call__(
    self, x_BxSxD: chex.Array, mask_BxS: chex.Array, deterministic: bool | None = None
  ) -> chex.Array:
    c = self.config
    deterministic = _deterministic(self, deterministic)
    drop = lambda h: nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    h = _self_attention(c)(
      nn.LayerNorm()(x_BxSxD), mask=mask_BxS[:, None, None, :], deterministic=deterministic
    )
    x_BxSxD = x_BxSxD + drop(h)
    return x_BxSxD + drop(_Mlp(c.mlp_dim)(nn.LayerNorm()(x_BxSxD)))


class DecoderLayer(nn.Module):
  """Causal soft self-attention, cross-attention of the configured kind, MLP (pre-LN).

  With ``decode=True`` the self-attention keeps a key/value cache (Flax's ``"cache"``
  collection; the first call, on the full-length input, creates it) and each later call
  takes the next single position. ``values_BxSxD``: the cross-attention's value inputs
  when they are not ``memory_BxSxD`` (see :class:`Encoded`).
  """

  config: TransformerConfig

  @nn.compact
  def __call__(
    self, y_BxTxD, memory_BxSxD, source_mask_BxS, override, key=None, *,
    deterministic: bool | None = None, decode: bool = False, values_BxSxD=None,
  ) -> tuple[Any, AttentionAux]:  # fmt: skip
    c = self.config
    deterministic = _deterministic(self, deterministic)
    drop = lambda h: nn.Dropout(c.dropout_rate)(h, deterministic=deterministic)
    target_len = y_BxTxD.shape[1]
    # With a cache the causal mask is the cache's (positions written so far).
    causal_1x1xTxT = None if decode else masks.causal_mask(target_len, target_len)[None, None]
    h = _self_attention(c, decode)(
      nn.LayerNorm()(y_BxTxD), mask=causal_1x1xTxT, deterministic=deterministic
    )
    y_BxTxD = y_BxTxD + drop(h)
    cross = MultiHeadAttention(
        c.num_heads, score=c.score, kind=c.attention, additive_dim=c.additive_dim,
        gumbel_temperature=c.gumbel_temperature, straight_through=c.straight_through,
        name="cross_attention",
    )  # fmt: skip
    h, aux = cross(
        nn.LayerNorm()(y_BxTxD), memory_BxSxD, source_mask_BxS, inputs_v_BxSxDv=values_BxSxD,
        override=override, key=key,
    )  # fmt: skip
    y_BxTxD = y_BxTxD + drop(h)
    return y_BxTxD + drop(_Mlp(c.mlp_dim)(nn.LayerNorm()(y_BxTxD))), aux


class TransformerDecoder(nn.Module):
  """Target embedding, decoder layers, final LayerNorm and output projection."""

  config: TransformerConfig

  def setup(self):
    c = self.config
    self.embed = _Embed(c.vocab_size, c.model_dim)
    self.layers = [DecoderLayer(c) for _ in range(c.num_decoder_layers)]
    self.norm = nn.LayerNorm()
    self.output = nn.Dense(c.vocab_size)
    self.dropout = nn.Dropout(c.dropout_rate)
    if c.length_embedding:
      self.length_projection = nn.Dense(c.model_dim, use_bias=False)

  def __call__(
    self, decoder_inputs_BxT, memory_BxSxD, source_mask_BxS, override, key=None, *,
    deterministic: bool | None = None, decode: bool = False, position: Any = 0,
    values_BxSxD=None,
  ):  # fmt: skip
    """Returns ``(hidden [B, T, D], logits [B, T, V], [AttentionAux per layer])``.

    Layer ``i`` draws its random choices from ``fold_in(key, i)`` (``key`` may be ``None``
    for deterministic selections). ``decode``: use and update the self-attention caches;
    ``position`` is then the position of ``decoder_inputs_BxT`` (``[B, 1]``) in the target.
    ``values_BxSxD``: the cross-attention's value inputs, if not ``memory_BxSxD``. With
    ``config.length_embedding`` every input also gets a projection of the sinusoids of the
    source length (the count of unmasked positions: no symbol).
    """
    deterministic = _deterministic(self, deterministic)
    y_BxTxD = self.embed(decoder_inputs_BxT, position)
    if self.config.length_embedding:
      lengths_B = jnp.sum(source_mask_BxS, axis=1)
      length_BxD = self.length_projection(sinusoidal_encoding(lengths_B, self.config.model_dim))
      y_BxTxD = y_BxTxD + length_BxD[:, None, :]
    y_BxTxD = self.dropout(y_BxTxD, deterministic=deterministic)
    auxes = []
    for i, layer in enumerate(self.layers):
      layer_key = None if key is None else jax.random.fold_in(key, i)
      y_BxTxD, aux = layer(
          y_BxTxD, memory_BxSxD, source_mask_BxS, override, layer_key,
          deterministic=deterministic, decode=decode, values_BxSxD=values_BxSxD,
      )  # fmt: skip
      auxes.append(aux)
    hidden_BxTxD = self.norm(y_BxTxD)
    return hidden_BxTxD, self.output(hidden_BxTxD), auxes


def _record(auxes: list[AttentionAux]) -> AttentionRecord:
  """Head-mean weights and head-0 index of the last layer; log-probs and entropies summed;
  every layer's and head's weights in ``head_weights``."""
  last = auxes[-1]
  total = lambda field: sum(jnp.sum(getattr(a, field), axis=1) for a in auxes)
  hard = last.index is not None
  return AttentionRecord(
    weights=jnp.mean(last.weights, axis=1),
    index=last.index[:, 0] if hard else None,
    log_prob=total("log_prob") if hard else None,
    entropy=total("entropy"),
    head_weights=jnp.stack([a.weights for a in auxes], axis=1),
  )


class TransformerSeq2Seq(nn.Module):
  """Pre-LN Transformer encoder-decoder; cross-attention soft or hard per config.

  Call: ``apply(params, inputs_BxS, input_lengths_B, decoder_inputs_BxT, *,
  attention_override=None, enumerate_positions=False, rngs={"attention": key})`` ->
  :class:`Seq2SeqOutput`. ``attention.weights`` is the head mean of the last layer's
  cross-attention, ``attention.index`` that layer's first head's choice, ``log_prob`` /
  ``entropy`` are summed over heads and layers, and ``attention.head_weights`` holds every
  layer's and head's weights, ``[B, L, H, T, S]`` (the multi-head alignment metrics of
  :mod:`attnlab.metrics` read it). ``soft_logits`` (hard kinds) is a second
  decoder pass with expected cross-attention in every layer: below the first
  cross-attention the states are the same, above it they follow the soft contexts.
  Position enumeration is not exact here (every layer and head chooses), so
  ``enumerate_positions=True`` is an error. Dropout (``config.dropout_rate``) is on when
  ``rngs`` has a ``"dropout"`` key or ``deterministic=False`` (see the module docstring).
  """

  config: TransformerConfig

  def setup(self):
    c = self.config
    if not 0.0 <= c.dropout_rate < 1.0:
      raise ValueError(f"TransformerConfig.dropout_rate must be in [0, 1), got {c.dropout_rate}.")
    grid = c.grid_width if c.position_embedding is PositionEmbedding.TWO_D else 0
    self.embed = _Embed(c.vocab_size, c.model_dim, grid_width=grid)
    self.dropout = nn.Dropout(c.dropout_rate)
    self.encoder_layers = [EncoderLayer(c) for _ in range(c.num_encoder_layers)]
    self.encoder_norm = nn.LayerNorm()
    if c.value_source is not ValueSource.CONTEXTUAL:
      self.value_norm = nn.LayerNorm()  # Per position: the values stay position-local.
    self.decoder = TransformerDecoder(c)
    if c.learned_baseline:
      self.baseline_hidden = nn.Dense(c.model_dim)
      self.baseline_out = nn.Dense(1)

  def _attention_key(self, override) -> chex.PRNGKey | None:
    """The ``"attention"`` key, drawn first and only when the selection is random."""
    spec = resolve_spec(self.config.attention, override)
    return self.make_rng("attention") if spec.needs_key else None

  def encode(
    self, inputs_BxS: chex.Array, input_lengths_B: chex.Array, deterministic: bool | None = None
  ) -> Encoded:
    """The encoder's output (the keys), the value inputs and the source mask: :class:`Encoded`."""
    c = self.config
    chex.assert_rank([inputs_BxS, input_lengths_B], [2, 1])
    deterministic = _deterministic(self, deterministic)
    mask_BxS = masks.padding_mask(input_lengths_B, inputs_BxS.shape[1])
    x_BxSxD = self.embed(inputs_BxS)
    x_BxSxD = self.dropout(x_BxSxD, deterministic=deterministic)
    values_BxSxD = None
    if c.value_source is ValueSource.LOCAL:
      values_BxSxD = self.value_norm(x_BxSxD)
    elif c.value_source is ValueSource.TOKEN:
      values_BxSxD = self.value_norm(self.embed(inputs_BxS, positions=False))
    for layer in self.encoder_layers:
      x_BxSxD = layer(x_BxSxD, mask_BxS, deterministic)
    return Encoded(self.encoder_norm(x_BxSxD), values_BxSxD, mask_BxS)

  def __call__(
    self,
    inputs_BxS: chex.Array,
    input_lengths_B: chex.Array,
    decoder_inputs_BxT: chex.Array,
    *,
    attention_override: Any = None,
    enumerate_positions: bool = False,
    deterministic: bool | None = None,
  ) -> Seq2SeqOutput:
    """Teacher-forced decoding; see the class docstring."""
    c = self.config
    if enumerate_positions:
      raise ValueError(
        "enumerate_positions=True is exact only for the RNN family (single head, "
        "feedback 'none' or 'expected'); the Transformer returns no position_logits."
      )
    chex.assert_rank(decoder_inputs_BxT, 2)
    key = self._attention_key(attention_override)
    deterministic = _deterministic(self, deterministic)
    memory = self.encode(inputs_BxS, input_lengths_B, deterministic)
    hidden, logits, auxes = self.decoder(
      decoder_inputs_BxT, memory.keys_BxSxD, memory.mask_BxS, attention_override, key,
      deterministic=deterministic, values_BxSxD=memory.values_BxSxD,
    )  # fmt: skip
    soft_logits = None
    if resolve_spec(c.attention, attention_override).is_hard:
      _, soft_logits, _ = self.decoder(
          decoder_inputs_BxT, memory.keys_BxSxD, memory.mask_BxS, EvalMode.SOFT,
          deterministic=deterministic, values_BxSxD=memory.values_BxSxD,
      )  # fmt: skip
    baseline = None
    if c.learned_baseline:
      value_hidden = jnp.tanh(self.baseline_hidden(jax.lax.stop_gradient(hidden)))
      baseline = self.baseline_out(value_hidden)[..., 0]
    return Seq2SeqOutput(
      logits=logits, attention=_record(auxes), soft_logits=soft_logits, baseline=baseline
    )

  def greedy(
    self,
    inputs_BxS: chex.Array,
    input_lengths_B: chex.Array,
    *,
    max_len: int,
    mode: EvalMode,
    cache: bool = True,
  ) -> tuple[chex.Array, chex.Array]:
    """Free-running decoding (use :func:`attnlab.modules.greedy_decode`); deterministic.

    With ``cache`` (and a deterministic selection: ``mode`` soft or argmax) step ``t`` feeds
    only ``y_t`` through the decoder, against the self-attention key/value caches of the
    earlier steps (the ``"cache"`` collection must be mutable: ``greedy_decode`` does this);
    O(max_len) per step. Otherwise (and for ``mode="sample"``) step ``t`` reruns the causal
    decoder on the ``max_len`` prefix buffer and reads position ``t`` (O(max_len²) per
    step): the attention key is the same at every step, so the positions sampled for
    earlier steps never change and they are those of teacher forcing with the same key. Both
    give the same tokens and weights (tested).
    """
    key = self._attention_key(mode)
    memory = self.encode(inputs_BxS, input_lengths_B, deterministic=True)
    batch = inputs_BxS.shape[0]
    buffer_BxT = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(self.config.bos_id)
    if cache and key is None:
      return self._greedy_cached(buffer_BxT, memory, mode)

    def body(decoder, buffer_BxT, t, memory_and_key):
      memory, key = memory_and_key
      _, logits_BxTxV, auxes = decoder(
          buffer_BxT, memory.keys_BxSxD, memory.mask_BxS, mode, key, deterministic=True,
          values_BxSxD=memory.values_BxSxD,
      )  # fmt: skip
      next_B = jnp.argmax(logits_BxTxV[:, t], axis=-1).astype(jnp.int32)
      # Write y_{t+1} into slot t+1 (the last step has no slot left: it writes nothing).
      write_BxT = jnp.arange(max_len)[None, :] == t + 1
      buffer_BxT = jnp.where(write_BxT, next_B[:, None], buffer_BxT)
      weights_BxS = jnp.mean(auxes[-1].weights[:, :, t], axis=1)
      return buffer_BxT, (next_B, weights_BxS)

    scan = nn.scan(
      body,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=(0, nn.broadcast),
      out_axes=0,
    )
    _, (tokens_TxB, weights_TxBxS) = scan(
      self.decoder, buffer_BxT, jnp.arange(max_len), (memory, key)
    )
    return tokens_TxB.T, jnp.swapaxes(weights_TxBxS, 0, 1)

  def _greedy_cached(self, buffer_BxT, memory: Encoded, mode):
    """Greedy decoding one token per step against the self-attention caches."""
    # A decode-mode call on the full-length buffer creates zeroed caches of length max_len
    # (its output is not used).
    self.decoder(
        buffer_BxT, memory.keys_BxSxD, memory.mask_BxS, mode, deterministic=True, decode=True,
        values_BxSxD=memory.values_BxSxD,
    )  # fmt: skip

    def body(decoder, token_Bx1, t, memory):
      _, logits_Bx1xV, auxes = decoder(
          token_Bx1, memory.keys_BxSxD, memory.mask_BxS, mode, deterministic=True, decode=True,
          position=t, values_BxSxD=memory.values_BxSxD,
      )  # fmt: skip
      next_B = jnp.argmax(logits_Bx1xV[:, 0], axis=-1).astype(jnp.int32)
      weights_BxS = jnp.mean(auxes[-1].weights[:, :, 0], axis=1)
      return next_B[:, None], (next_B, weights_BxS)

    scan = nn.scan(
      body,
      variable_broadcast="params",
      variable_carry="cache",
      split_rngs={"params": False},
      in_axes=(0, nn.broadcast),
      out_axes=0,
    )
    _, (tokens_TxB, weights_TxBxS) = scan(
      self.decoder, buffer_BxT[:, :1], jnp.arange(buffer_BxT.shape[1]), memory
    )
    return tokens_TxB.T, jnp.swapaxes(weights_TxBxS, 0, 1)
