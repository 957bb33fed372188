"""Batched multi-head entry points, built by ``vmap`` of the per-head functions.

Layout follows ``jax.nn.dot_product_attention``: ``q [B, T, H, Dk]``, ``k [B, S, H, Dk]``,
``v [B, S, H, Dv]``, context ``[B, T, H, Dv]``. Per-query outputs (weights, index, ...)
come out as ``[B, H, T, ...]``, the layout of ``flax.linen.dot_product_attention_weights``.

Masks are bool and broadcastable to ``[B, H, T, S]`` with rank 4 (size-1 axes are not
materialised: they become ``in_axes=None``). Per-head score parameters (e.g. one bilinear
``w`` per head) are passed as ``score_params``, a dict of arrays with a leading ``[H]`` axis,
and reach ``score_fn`` as keyword arguments.
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp

from attnlab import hard, normalizers, scores, soft


def check_layout(q, k, v, mask, **pairs) -> tuple[int, int, int, int]:
  """Checks the multi-head layout of ``q``, ``k``, ``v``, a rank-4 mask and ``pairs``.

  Args:
    q: ``[B, T, H, Dk]``.
    k: ``[B, S, H, Dk]``.
    v: ``[B, S, H, Dv]``.
    mask: ``None`` or bool broadcastable to ``[B, H, T, S]`` with rank 4.
    **pairs: more ``None`` or rank-4 arrays broadcastable to ``[B, H, T, S]`` (e.g. a bias),
      checked like ``mask``.

  Returns:
    ``(B, T, H, S)``.

  Raises:
    ValueError: ranks or sizes that disagree.
  """
  for name, x in (("q", q), ("k", k), ("v", v)):
    if x.ndim != 4:
      raise ValueError(f"{name} must be [batch, time, heads, dim], got shape {x.shape}.")
  batch, q_len, heads, _ = q.shape
  if k.shape[:1] + k.shape[2:3] != (batch, heads) or v.shape[:3] != k.shape[:3]:
    raise ValueError(
      f"q {q.shape}, k {k.shape}, v {v.shape} disagree: expected q [B, T, H, Dk], "
      "k [B, S, H, Dk], v [B, S, H, Dv] with the same B and H."
    )
  k_len = k.shape[1]
  expected = (batch, heads, q_len, k_len)
  for name, x in (("mask", mask), *pairs.items()):
    if x is None:
      continue
    if x.ndim != 4 or any(m not in (1, e) for m, e in zip(x.shape, expected, strict=True)):
      raise ValueError(
        f"{name} of shape {x.shape} does not broadcast to [B, H, T, S] = {list(expected)} "
        "(rank 4, each axis 1 or full)."
      )
  return batch, q_len, heads, k_len


def _mask_axes(mask) -> tuple[Any, Any, Any]:
  """Splits a rank-4 ``[B|1, H|1, ...]`` array into (array, batch in_axis, head in_axis)."""
  if mask is None:
    return None, None, None
  batch_axis = None if mask.shape[0] == 1 else 0
  head_axis = None if mask.shape[1] == 1 else 0
  squeeze = tuple(a for a, ax in ((0, batch_axis), (1, head_axis)) if ax is None)
  return jnp.squeeze(mask, squeeze), batch_axis, head_axis


def head_keys(key, batch: int, heads: int):
  """``key`` split into ``[batch, heads]`` keys, one per attention head (``None`` stays)."""
  return None if key is None else jax.random.split(key, (batch, heads))


def vmap_heads_and_batch(
  per_head, q, k, v, mask, score_params, keys, head_out_axes, *, pairs: tuple = ()
):
  """``vmap(per_head)`` over heads (axis 2 of q/k/v), then over the batch (axis 0).

  Args:
    per_head: ``(q [T, Dk], k [S, Dk], v [S, Dv], mask [T|1, S] | None, *pairs, params,
      key)`` -> a pytree, the function of one head and one example.
    q: ``[B, T, H, Dk]``.
    k: ``[B, S, H, Dk]``.
    v: ``[B, S, H, Dv]``.
    mask: ``None`` or bool broadcastable to ``[B, H, T, S]`` with rank 4 (size-1 axes are not
      materialised).
    score_params: ``None`` or per-head parameters with a leading ``[H]`` axis.
    keys: ``None`` or ``[B, H]`` keys (:func:`head_keys`).
    head_out_axes: where the head axis goes in each output of ``per_head``.
    pairs: more ``None`` or rank-4 ``[B|1, H|1, T|1, S|1]`` arrays (e.g. a bias), passed to
      ``per_head`` after the mask like it, without materialising their size-1 axes.

  Returns:
    ``per_head``'s outputs with a leading batch axis and the head axis at ``head_out_axes``.
  """
  split = [_mask_axes(x) for x in (mask, *pairs)]
  arrays = [x for x, _, _ in split]
  batch_axes = [b for _, b, _ in split]
  head_axes = [h for _, _, h in split]
  key_axis = None if keys is None else 0
  over_heads = jax.vmap(
    per_head,
    in_axes=(1, 1, 1, *head_axes, 0, key_axis),
    out_axes=head_out_axes,
  )
  over_batch = jax.vmap(
    over_heads,
    in_axes=(0, 0, 0, *batch_axes, None, key_axis),
    out_axes=0,
  )
  # Inside the batch vmap, q/k/v are [T, H, D]: heads on axis 1.
  return over_batch(q, k, v, *arrays, score_params, keys)


def multi_head_soft_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  score_fn: soft.ScoreFn = scores.scaled_dot,
  score_params: dict[str, chex.Array] | None = None,
  normalizer: soft.Normalizer = normalizers.softmax,
  bias: chex.Array | None = None,
  dropout_rate: float = 0.0,
  dropout_key: chex.PRNGKey | None = None,
  dropout_mask: chex.Array | None = None,
) -> tuple[chex.Array, chex.Array]:
  """Multi-head soft attention: :func:`attnlab.soft_attention` vmapped over heads and batch.

  Args:
    q: ``[B, T, H, Dk]``.
    k: ``[B, S, H, Dk]``.
    v: ``[B, S, H, Dv]``.
    mask: bool, broadcastable to ``[B, H, T, S]`` with rank 4; ``True`` = may attend.
    score_fn: per-head score function ``(q [T, Dk], k [S, Dk], **params) -> [T, S]``.
    score_params: optional dict of per-head parameters, each with a leading ``[H]`` axis.
    normalizer: per-head normaliser (see :mod:`attnlab.normalizers`).
    bias: optional additive score bias, broadcastable to ``[B, H, T, S]`` with rank 4.
    dropout_rate: attention-weight dropout rate.
    dropout_key: PRNG key when ``dropout_rate > 0`` (split per batch element and head).
    dropout_mask: alternatively the bool keep-mask, broadcastable to ``[B, H, T, S]`` with
      rank 4 (e.g. ``[1, 1, T, S]``: one mask shared by every example and head).

  Returns:
    ``(context [B, T, H, Dv], weights [B, H, T, S])``. Fully masked queries give zeros.
  """
  batch, _, heads, _ = check_layout(q, k, v, mask, bias=bias, dropout_mask=dropout_mask)
  draw = dropout_rate > 0.0 and dropout_mask is None
  keys = head_keys(dropout_key if draw else None, batch, heads)

  def per_head(q_TxD, k_SxD, v_SxD, mask_TxS, bias_TxS, keep_TxS, params, key):
    fn = score_fn if params is None else functools.partial(score_fn, **params)
    return soft.soft_attention(
        q_TxD, k_SxD, v_SxD, mask_TxS, score_fn=fn, normalizer=normalizer, bias=bias_TxS,
        dropout_rate=dropout_rate, dropout_key=key, dropout_mask=keep_TxS,
    )  # fmt: skip

  return vmap_heads_and_batch(
    per_head, q, k, v, mask, score_params, keys, (1, 0), pairs=(bias, dropout_mask)
  )


def multi_head_hard_attention(
  key: chex.PRNGKey | None,
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  score_fn: soft.ScoreFn = scores.scaled_dot,
  score_params: dict[str, chex.Array] | None = None,
  mode: str | hard.HardMode = "sample",
  temperature: float = 1.0,
) -> hard.HardAttentionOutput:
  """Multi-head hard attention: :func:`attnlab.hard_attention` vmapped over heads and batch.

  Args:
    key: PRNG key (split per batch element and head); required for ``mode="sample"``.
    q: ``[B, T, H, Dk]``.
    k: ``[B, S, H, Dk]``.
    v: ``[B, S, H, Dv]``.
    mask: bool, broadcastable to ``[B, H, T, S]`` with rank 4.
    score_fn: per-head score function.
    score_params: optional per-head score parameters with a leading ``[H]`` axis.
    mode: ``"sample"`` or ``"argmax"``.
    temperature: softmax temperature.

  Returns:
    :class:`attnlab.HardAttentionOutput` with ``context [B, T, H, Dv]`` and ``index``,
    ``log_prob``, ``entropy``, ``valid`` ``[B, H, T]``, ``probs [B, H, T, S]``.
  """
  mode = hard.HardMode.parse(mode)
  if mode is hard.HardMode.SAMPLE and key is None:
    raise ValueError('multi_head_hard_attention(mode="sample") needs a PRNG key.')
  batch, _, heads, _ = check_layout(q, k, v, mask)
  keys = head_keys(key if mode is hard.HardMode.SAMPLE else None, batch, heads)

  def per_head(q_TxD, k_SxD, v_SxD, mask_TxS, params, head_key):
    fn = score_fn if params is None else functools.partial(score_fn, **params)
    return hard.hard_attention(
        head_key, q_TxD, k_SxD, v_SxD, mask_TxS, score_fn=fn, mode=mode,
        temperature=temperature,
    )  # fmt: skip

  out_axes = hard.HardAttentionOutput(1, 0, 0, 0, 0, 0)
  return vmap_heads_and_batch(per_head, q, k, v, mask, score_params, keys, out_axes)
