"""Attention layers: score parameters live in the module, the math in the per-head ``attend``.

Both layers return ``(context, AttentionAux)``: everything a loss may need (weights, and for
hard attention the index, log-probability and entropy) is in the return value, never in a
``sow`` side channel. The per-head function is a field (``attention_fn``), as in
``flax.linen.MultiHeadDotProductAttention``; it is ``vmap``-ed over heads and batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax.numpy as jnp

from attnlab import multihead, scores
from attnlab.modules.attend import Attended, attend, resolve_spec
from attnlab.modules.kinds import AttentionKind, EvalMode, ScoreKind

_SCORE_FNS = {
  ScoreKind.DOT: scores.dot,
  ScoreKind.SCALED_DOT: scores.scaled_dot,
  ScoreKind.GENERAL: scores.general,
  ScoreKind.ADDITIVE: scores.additive,
}
Override = str | EvalMode | AttentionKind | None


class AttentionAux(NamedTuple):
  """What an attention layer reports besides its context.

  Shapes for :class:`Attention` (one head); :class:`MultiHeadAttention` adds a head axis
  after the batch axis (``[B, H, T, ...]``) to all but ``expected_context``.

  Attributes:
    weights: ``[B, T, S]`` float32 attention distribution (0 at masked keys).
    index: ``[B, T]`` int32 chosen positions for hard selections, else ``None``.
    log_prob: ``[B, T]`` float32 log-probability of the choice (hard), else ``None``.
    entropy: ``[B, T]`` float32 entropy of the distribution.
    expected_context: the layer's output with the expected context, same shape as the
      returned context (the same array when the selection is already the expectation).
  """

  weights: chex.Array
  index: chex.Array | None
  log_prob: chex.Array | None
  entropy: chex.Array
  expected_context: chex.Array


def _score_parameters(
  module: nn.Module, score: ScoreKind, q_dim: int, k_dim: int, heads: int, additive_dim: int
) -> tuple[Callable[..., chex.Array], dict[str, chex.Array] | None]:
  """Creates the score parameters of ``score`` with a leading ``[heads]`` axis."""
  fn = _SCORE_FNS[score]
  if score in (ScoreKind.DOT, ScoreKind.SCALED_DOT):
    if q_dim != k_dim:
      raise ValueError(
        f"score {score.value!r} needs queries and keys of the same size, got {q_dim} and "
        f"{k_dim}; use 'general' or 'additive', or project them."
      )
    return fn, None
  matrix_init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
  if score is ScoreKind.GENERAL:
    return fn, {"w": module.param("w", matrix_init, (heads, q_dim, k_dim))}
  vector_init = nn.initializers.normal(stddev=additive_dim**-0.5)
  return fn, {
    "w_q": module.param("w_q", matrix_init, (heads, q_dim, additive_dim)),
    "w_k": module.param("w_k", matrix_init, (heads, k_dim, additive_dim)),
    "v": module.param("v", vector_init, (heads, additive_dim)),
  }


def attend_heads(
  key, q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, mask, *, score_fn, score_params, spec, attention_fn
) -> Attended:
  """``attention_fn`` vmapped over heads and batch (layout of :mod:`attnlab.multihead`).

  Returns:
    :class:`Attended` with ``context``/``expected_context`` ``[B, T, H, Dv]``, ``weights``
    ``[B, H, T, S]`` and ``index``/``log_prob``/``entropy`` ``[B, H, T]``.
  """
  batch, _, heads, _ = multihead.check_layout(q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, mask)
  keys = multihead.head_keys(key if spec.needs_key else None, batch, heads)

  def per_head(q_TxD, k_SxD, v_SxD, mask_TxS, params, head_key):
    fn = score_fn if params is None else functools.partial(score_fn, **params)
    return attention_fn(head_key, q_TxD, k_SxD, v_SxD, mask_TxS, score_fn=fn, spec=spec)

  out_axes = Attended(1, 1, 0, 0, 0, 0)
  return multihead.vmap_heads_and_batch(
    per_head, q_BxTxHxD, k_BxSxHxD, v_BxSxHxDv, mask, score_params, keys, out_axes
  )


def _as_rank4_mask(mask: chex.Array | None, rank3_name: str) -> chex.Array | None:
  """``[B, S]`` -> ``[B, 1, 1, S]``; ``[B, T, S]`` -> ``[B, 1, T, S]``; rank 4 passes."""
  if mask is None:
    return None
  if mask.dtype != jnp.bool_:
    raise TypeError(f"attention masks must be boolean (True = attend), got {mask.dtype}.")
  if mask.ndim == 2:
    return mask[:, None, None, :]
  if mask.ndim == 3:
    return mask[:, None, :, :]
  if mask.ndim == 4:
    return mask
  raise ValueError(f"mask must be [B, S], {rank3_name} or [B, H, T, S], got shape {mask.shape}.")


class Attention(nn.Module):
  """Single-head attention layer (Bahdanau / Luong) with its score parameters.

  ``context = select(normalizer(score(q, k)), v)`` for the switch ``kind`` (see
  :func:`attnlab.modules.attend.attend`). Score parameters: ``general`` has ``W [Dq, Dk]``,
  ``additive`` has ``W_q [Dq, A]``, ``W_k [Dk, A]``, ``v [A]``; ``dot``/``scaled_dot``
  have none and need ``Dq == Dk``.

  Attributes:
    score: a :class:`ScoreKind`.
    kind: the :class:`AttentionKind` (soft | hard | gumbel | sparsemax | entmax15).
    additive_dim: ``A`` of the additive score (default: ``Dk``).
    gumbel_temperature: Gumbel-softmax temperature.
    straight_through: straight-through Gumbel-softmax.
    attention_fn: per-head function with the signature of :func:`attend`.

  References:
    Bahdanau et al., ICLR 2015; Luong et al., EMNLP 2015.
  """

  score: ScoreKind | str = ScoreKind.GENERAL
  kind: AttentionKind | str = AttentionKind.SOFT
  additive_dim: int | None = None
  gumbel_temperature: float = 1.0
  straight_through: bool = False
  attention_fn: Callable[..., Attended] = attend

  @nn.compact
  def __call__(
    self,
    q_BxTxDq: chex.Array,
    k_BxSxDk: chex.Array,
    v_BxSxDv: chex.Array,
    mask: chex.Array | None = None,
    *,
    override: Override = None,
    key: Any = None,
  ) -> tuple[chex.Array, AttentionAux]:
    """Attends every query to the keys.

    Args:
      q_BxTxDq: queries.
      k_BxSxDk: keys.
      v_BxSxDv: values.
      mask: bool ``[B, S]`` (key padding) or ``[B, T, S]``; ``True`` = may attend.
      override: an :class:`EvalMode` or :class:`AttentionKind` replacing ``kind``.
      key: PRNG key for random selections; if ``None`` it is drawn from the
        ``"attention"`` rng stream, and only when the selection is random.

    Returns:
      ``(context [B, T, Dv], AttentionAux)`` with per-query fields ``[B, T, ...]``.
    """
    chex.assert_rank([q_BxTxDq, k_BxSxDk, v_BxSxDv], 3)
    spec = resolve_spec(
        self.kind, override, gumbel_temperature=self.gumbel_temperature,
        straight_through=self.straight_through,
    )  # fmt: skip
    score = ScoreKind.parse(self.score)
    q_dim, k_dim = q_BxTxDq.shape[-1], k_BxSxDk.shape[-1]
    score_fn, params = _score_parameters(self, score, q_dim, k_dim, 1, self.additive_dim or k_dim)
    if spec.needs_key and key is None:
      key = self.make_rng("attention")
    out = attend_heads(
        key, q_BxTxDq[:, :, None], k_BxSxDk[:, :, None], v_BxSxDv[:, :, None],
        _as_rank4_mask(mask, "[B, T, S]"), score_fn=score_fn, score_params=params, spec=spec,
        attention_fn=self.attention_fn,
    )  # fmt: skip
    squeeze = lambda x: None if x is None else x[:, 0]  # Drop the head axis.
    aux = AttentionAux(
      weights=squeeze(out.weights),
      index=squeeze(out.index),
      log_prob=squeeze(out.log_prob),
      entropy=squeeze(out.entropy),
      expected_context=out.expected_context[:, :, 0],
    )
    return out.context[:, :, 0], aux


class MultiHeadAttention(nn.Module):
  """Multi-head attention for self- and cross-attention, on the vmapped per-head function.

  ``out = W_o concat_h attend(W_q^h x_q, W_k^h x_kv, W_v^h x_kv)``. Per-head score
  parameters (``general``, ``additive``) have a leading ``[H]`` axis.

  Attributes:
    num_heads: ``H``.
    qkv_features: total projected size ``H * Dh`` (default: the query input size).
    out_features: output size (default: the query input size).
    score: a :class:`ScoreKind` (``scaled_dot`` is the Transformer's).
    kind: the :class:`AttentionKind`.
    additive_dim: ``A`` of the additive score (default ``Dh``).
    gumbel_temperature: Gumbel-softmax temperature.
    straight_through: straight-through Gumbel-softmax.
    attention_fn: per-head function with the signature of :func:`attend`.

  References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
  """

  num_heads: int
  qkv_features: int | None = None
  out_features: int | None = None
  score: ScoreKind | str = ScoreKind.SCALED_DOT
  kind: AttentionKind | str = AttentionKind.SOFT
  additive_dim: int | None = None
  gumbel_temperature: float = 1.0
  straight_through: bool = False
  attention_fn: Callable[..., Attended] = attend

  @nn.compact
  def __call__(
    self,
    inputs_q_BxTxD: chex.Array,
    inputs_kv_BxSxD: chex.Array | None = None,
    mask: chex.Array | None = None,
    *,
    inputs_v_BxSxDv: chex.Array | None = None,
    override: Override = None,
    key: Any = None,
  ) -> tuple[chex.Array, AttentionAux]:
    """Attends ``inputs_q`` to ``inputs_kv`` (itself when ``None``: self-attention).

    Args:
      inputs_q_BxTxD: query inputs.
      inputs_kv_BxSxD: key/value inputs, or ``None`` for self-attention.
      mask: bool ``[B, S]``, ``[B, T, S]`` or ``[B, H, T, S]`` (size-1 axes broadcast);
        ``True`` = may attend.
      inputs_v_BxSxDv: value inputs when they differ from the keys' (e.g. position-local
        values beside contextual keys); ``None``: ``inputs_kv``. Same parameters either way.
      override: an :class:`EvalMode` or :class:`AttentionKind` replacing ``kind``.
      key: PRNG key for random selections (default: the ``"attention"`` stream, drawn only
        when needed).

    Returns:
      ``(out [B, T, out_features], AttentionAux)`` with per-query fields ``[B, H, T, ...]``.
    """
    if inputs_kv_BxSxD is None:
      inputs_kv_BxSxD = inputs_q_BxTxD
    chex.assert_rank([inputs_q_BxTxD, inputs_kv_BxSxD], 3)
    features = self.qkv_features or inputs_q_BxTxD.shape[-1]
    if features % self.num_heads:
      raise ValueError(f"qkv_features={features} is not divisible by num_heads={self.num_heads}.")
    head_dim = features // self.num_heads
    spec = resolve_spec(
        self.kind, override, gumbel_temperature=self.gumbel_temperature,
        straight_through=self.straight_through,
    )  # fmt: skip
    project = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name)
    q_BxTxHxD = project("query")(inputs_q_BxTxD)
    k_BxSxHxD = project("key")(inputs_kv_BxSxD)
    v_BxSxHxD = project("value")(inputs_kv_BxSxD if inputs_v_BxSxDv is None else inputs_v_BxSxDv)
    score_fn, params = _score_parameters(
        self, ScoreKind.parse(self.score), head_dim, head_dim, self.num_heads,
        self.additive_dim or head_dim,
    )  # fmt: skip
    if spec.needs_key and key is None:
      key = self.make_rng("attention")
    out = attend_heads(
        key, q_BxTxHxD, k_BxSxHxD, v_BxSxHxD, _as_rank4_mask(mask, "[B, T, S]"),
        score_fn=score_fn, score_params=params, spec=spec, attention_fn=self.attention_fn,
    )  # fmt: skip
    out_proj = nn.DenseGeneral(
      self.out_features or inputs_q_BxTxD.shape[-1], axis=(-2, -1), name="out"
    )
    out_BxTxF = out_proj(out.context)
    expected_BxTxF = (
      out_BxTxF if spec.selection is EvalMode.SOFT else out_proj(out.expected_context)
    )
    aux = AttentionAux(out.weights, out.index, out.log_prob, out.entropy, expected_BxTxF)
    return out_BxTxF, aux
