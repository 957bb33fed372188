"""Model family 2: a small pre-LayerNorm Transformer encoder-decoder (Vaswani et al. 2017).

Sinusoidal positions, soft scaled-dot self-attention, and a cross-attention whose kind
(soft | hard | gumbel | sparsemax | entmax15) and score come from the config. No dropout:
the toy tasks are generated fresh every step.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from attnlab import masks
from attnlab.modules.attend import resolve_spec
from attnlab.modules.attention import AttentionAux, MultiHeadAttention
from attnlab.modules.config import TransformerConfig
from attnlab.modules.kinds import EvalMode
from attnlab.modules.outputs import AttentionRecord, Seq2SeqOutput


def sinusoidal_positions(length: int, dim: int) -> chex.Array:
  """``PE[p, 2i] = sin(p / 10000^(2i/D))``, ``PE[p, 2i+1] = cos(...)``: ``[length, dim]``."""
  positions_Px1 = jnp.arange(length, dtype=jnp.float32)[:, None]
  inv_freq_1xF = jnp.exp(-jnp.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)[None]
  angles_PxF = positions_Px1 * inv_freq_1xF
  table = jnp.stack([jnp.sin(angles_PxF), jnp.cos(angles_PxF)], axis=-1)
  return table.reshape((length, -1))[:, :dim]


class _Embed(nn.Module):
  """Token embedding scaled by ``sqrt(D)`` plus sinusoidal positions."""

  vocab_size: int
  dim: int

  @nn.compact
  def __call__(self, tokens_BxT: chex.Array) -> chex.Array:
    x_BxTxD = nn.Embed(self.vocab_size, self.dim)(tokens_BxT) * jnp.sqrt(float(self.dim))
    return x_BxTxD + sinusoidal_positions(tokens_BxT.shape[1], self.dim)[None]


class _Mlp(nn.Module):
  hidden: int

  @nn.compact
  def __call__(self, x: chex.Array) -> chex.Array:
    return nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.hidden)(x)))


class EncoderLayer(nn.Module):
  """``x + SelfAttn(LN(x))``, then ``x + MLP(LN(x))``."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxSxD: chex.Array, mask_BxS: chex.Array) -> chex.Array:
    c = self.config
    h, _ = MultiHeadAttention(c.num_heads, name="self_attention")(
      nn.LayerNorm()(x_BxSxD), None, mask_BxS
    )
    x_BxSxD = x_BxSxD + h
    return x_BxSxD + _Mlp(c.mlp_dim)(nn.LayerNorm()(x_BxSxD))


class DecoderLayer(nn.Module):
  """Causal soft self-attention, cross-attention of the configured kind, MLP (pre-LN)."""

  config: TransformerConfig

  @nn.compact
  def __call__(
    self, y_BxTxD, memory_BxSxD, source_mask_BxS, override, key=None
  ) -> tuple[Any, AttentionAux]:
    c = self.config
    target_len = y_BxTxD.shape[1]
    causal_1x1xTxT = masks.causal_mask(target_len, target_len)[None, None]
    h, _ = MultiHeadAttention(c.num_heads, name="self_attention")(
      nn.LayerNorm()(y_BxTxD), None, causal_1x1xTxT
    )
    y_BxTxD = y_BxTxD + h
    cross = MultiHeadAttention(
        c.num_heads, score=c.score, kind=c.attention, additive_dim=c.additive_dim,
        gumbel_temperature=c.gumbel_temperature, straight_through=c.straight_through,
        name="cross_attention",
    )  # fmt: skip
    h, aux = cross(
      nn.LayerNorm()(y_BxTxD), memory_BxSxD, source_mask_BxS, override=override, key=key
    )
    y_BxTxD = y_BxTxD + h
    return y_BxTxD + _Mlp(c.mlp_dim)(nn.LayerNorm()(y_BxTxD)), aux


class TransformerDecoder(nn.Module):
  """Target embedding, decoder layers, final LayerNorm and output projection."""

  config: TransformerConfig

  def setup(self):
    c = self.config
    self.embed = _Embed(c.vocab_size, c.model_dim)
    self.layers = [DecoderLayer(c) for _ in range(c.num_decoder_layers)]
    self.norm = nn.LayerNorm()
    self.output = nn.Dense(c.vocab_size)

  def __call__(self, decoder_inputs_BxT, memory_BxSxD, source_mask_BxS, override, key=None):
    """Returns ``(hidden [B, T, D], logits [B, T, V], [AttentionAux per layer])``.

    Layer ``i`` draws its random choices from ``fold_in(key, i)`` (``key`` may be ``None``
    for deterministic selections).
    """
    y_BxTxD = self.embed(decoder_inputs_BxT)
    auxes = []
    for i, layer in enumerate(self.layers):
      layer_key = None if key is None else jax.random.fold_in(key, i)
      y_BxTxD, aux = layer(y_BxTxD, memory_BxSxD, source_mask_BxS, override, layer_key)
      auxes.append(aux)
    hidden_BxTxD = self.norm(y_BxTxD)
    return hidden_BxTxD, self.output(hidden_BxTxD), auxes


def _record(auxes: list[AttentionAux]) -> AttentionRecord:
  """Head-mean weights and head-0 index of the last layer; log-probs and entropies summed."""
  last = auxes[-1]
  total = lambda field: sum(jnp.sum(getattr(a, field), axis=1) for a in auxes)
  hard = last.index is not None
  return AttentionRecord(
    weights=jnp.mean(last.weights, axis=1),
    index=last.index[:, 0] if hard else None,
    log_prob=total("log_prob") if hard else None,
    entropy=total("entropy"),
  )


class TransformerSeq2Seq(nn.Module):
  """Pre-LN Transformer encoder-decoder; cross-attention soft or hard per config.

  Call: ``apply(params, inputs_BxS, input_lengths_B, decoder_inputs_BxT, *,
  attention_override=None, enumerate_positions=False, rngs={"attention": key})`` ->
  :class:`Seq2SeqOutput`. ``attention.weights`` is the head mean of the last layer's
  cross-attention, ``attention.index`` that layer's first head's choice, and ``log_prob`` /
  ``entropy`` are summed over heads and layers. ``soft_logits`` (hard kinds) is a second
  decoder pass with expected cross-attention in every layer: below the first
  cross-attention the states are the same, above it they follow the soft contexts.
  Position enumeration is not exact here (every layer and head chooses), so
  ``enumerate_positions=True`` is an error.
  """

  config: TransformerConfig

  def setup(self):
    c = self.config
    self.embed = _Embed(c.vocab_size, c.model_dim)
    self.encoder_layers = [EncoderLayer(c) for _ in range(c.num_encoder_layers)]
    self.encoder_norm = nn.LayerNorm()
    self.decoder = TransformerDecoder(c)
    if c.learned_baseline:
      self.baseline_hidden = nn.Dense(c.model_dim)
      self.baseline_out = nn.Dense(1)

  def _attention_key(self, override) -> chex.PRNGKey | None:
    """The ``"attention"`` key, drawn first and only when the selection is random."""
    spec = resolve_spec(self.config.attention, override)
    return self.make_rng("attention") if spec.needs_key else None

  def encode(self, inputs_BxS: chex.Array, input_lengths_B: chex.Array):
    """Returns ``(memory [B, S, D], source mask [B, S])``."""
    chex.assert_rank([inputs_BxS, input_lengths_B], [2, 1])
    mask_BxS = masks.padding_mask(input_lengths_B, inputs_BxS.shape[1])
    x_BxSxD = self.embed(inputs_BxS)
    for layer in self.encoder_layers:
      x_BxSxD = layer(x_BxSxD, mask_BxS)
    return self.encoder_norm(x_BxSxD), mask_BxS

  def __call__(
    self,
    inputs_BxS: chex.Array,
    input_lengths_B: chex.Array,
    decoder_inputs_BxT: chex.Array,
    *,
    attention_override: Any = None,
    enumerate_positions: bool = False,
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
    memory_BxSxD, mask_BxS = self.encode(inputs_BxS, input_lengths_B)
    hidden, logits, auxes = self.decoder(
      decoder_inputs_BxT, memory_BxSxD, mask_BxS, attention_override, key
    )
    soft_logits = None
    if resolve_spec(c.attention, attention_override).is_hard:
      _, soft_logits, _ = self.decoder(decoder_inputs_BxT, memory_BxSxD, mask_BxS, EvalMode.SOFT)
    baseline = None
    if c.learned_baseline:
      value_hidden = jnp.tanh(self.baseline_hidden(jax.lax.stop_gradient(hidden)))
      baseline = self.baseline_out(value_hidden)[..., 0]
    return Seq2SeqOutput(
      logits=logits, attention=_record(auxes), soft_logits=soft_logits, baseline=baseline
    )

  def greedy(
    self, inputs_BxS: chex.Array, input_lengths_B: chex.Array, *, max_len: int, mode: EvalMode
  ) -> tuple[chex.Array, chex.Array]:
    """Free-running decoding (use :func:`attnlab.modules.greedy_decode`).

    Step ``t`` reruns the causal decoder on the ``max_len`` prefix buffer and reads
    position ``t`` (O(max_len²) per step, no cache: sizes here are tiny). The attention
    key is the same at every step, so the positions sampled for earlier steps never
    change, and they are those of teacher forcing with the same key.
    """
    key = self._attention_key(mode)
    memory_BxSxD, mask_BxS = self.encode(inputs_BxS, input_lengths_B)
    batch = inputs_BxS.shape[0]
    buffer_BxT = jnp.zeros((batch, max_len), jnp.int32).at[:, 0].set(self.config.bos_id)

    def body(decoder, buffer_BxT, t, memory):
      memory_BxSxD, mask_BxS, key = memory
      _, logits_BxTxV, auxes = decoder(buffer_BxT, memory_BxSxD, mask_BxS, mode, key)
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
      self.decoder, buffer_BxT, jnp.arange(max_len), (memory_BxSxD, mask_BxS, key)
    )
    return tokens_TxB.T, jnp.swapaxes(weights_TxBxS, 0, 1)
