"""Memory-efficient exact softmax attention: online softmax over blocks, flash-style VJP.

The forward pass visits ``[block_q, block_k]`` tiles of the score matrix and keeps, per
query, a running max ``m``, normaliser ``l`` and un-normalised context ``acc``
(Milakov & Gimelshein 2018; Rabe & Staats 2021; Dao et al. 2022):

    m' = max(m, max_j s_ij)        l' = e^(m - m') l + Σ_j e^(s_ij - m')
    acc' = e^(m - m') acc + Σ_j e^(s_ij - m') v_j          context = acc / l

A custom VJP stores only ``q, k, v``, the context and ``lse = m + log l`` (O(T·D)), and
recomputes each tile's probabilities ``p_ij = e^(s_ij - lse_i)`` in the backward pass, so
neither pass ever holds a ``Tq x Tk`` array. The backward's loop order is query blocks
outside and key blocks inside, with ``dk``/``dv`` accumulated in O(T·D) buffers and each
tile computed transposed (``sᵀ = k_j q_iᵀ``) so that four of its five products are in the
layout CPU matmul kernels take directly. With ``causal=True`` (or a local window) tiles
outside the visible band are skipped, not masked, which halves the work.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
from jax import lax

from attnlab import masks as masks_lib
from attnlab import multihead

_F32 = jnp.float32
# Finite stand-in for -inf: a masked score or the log-normaliser of a fully masked row.
_NEG = float(jnp.finfo(_F32).min)


def _acc(*xs) -> jnp.dtype:
  """Accumulation dtype: float32, or float64 for float64 inputs (x64 mode)."""
  return jnp.promote_types(jnp.result_type(*xs), _F32)


DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 2048
DEFAULT_HEADS_PER_STEP = 2


@dataclasses.dataclass(frozen=True)
class _Tiling:
  """Static description of one call (hashable: a ``nondiff_argnums`` of the custom VJP)."""

  block_q: int
  block_k: int
  scale: float
  causal: bool
  causal_offset: int
  window: tuple[int, int] | None = None  # (left, right) around the diagonal


def _to_blocks(x: chex.Array, block: int) -> chex.Array:
  """``[T, ...] -> [ceil(T / block), block, ...]``, zero-padded at the end."""
  pad = -x.shape[0] % block
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((x.shape[0] // block, block) + x.shape[1:])


def _key_block_range(tiling: _Tiling, i, num_k: int):
  """``[first, end)`` key blocks query block ``i`` can see: all of them, or those that reach
  the causal diagonal / the local window. Tiles outside are skipped, not masked."""
  first_query = i * tiling.block_q + tiling.causal_offset
  last_query = first_query + tiling.block_q - 1
  last_key = None
  if tiling.causal:
    last_key = last_query
  if tiling.window is not None:
    left, right = tiling.window
    last_key = last_query + right if last_key is None else jnp.minimum(last_key, last_query + right)
    start = jnp.clip((first_query - left) // tiling.block_k, 0, num_k)
  else:
    start = 0
  end = num_k if last_key is None else jnp.clip(last_key // tiling.block_k + 1, 0, num_k)
  return start, jnp.maximum(start, end)


def _tile_mask(tiling: _Tiling, i, j, key_valid, pair_valid):
  """bool ``[block_q, block_k]`` for tile ``(i, j)``, or ``None`` if nothing is masked."""
  bq, bk = tiling.block_q, tiling.block_k
  valid = None
  if key_valid is not None:  # [num_k, bk]
    valid = jnp.broadcast_to(lax.dynamic_index_in_dim(key_valid, j, keepdims=False)[None], (bq, bk))
  if pair_valid is not None:  # [num_q, num_k, bq, bk]
    tile = lax.dynamic_index_in_dim(pair_valid, i, keepdims=False)
    tile = lax.dynamic_index_in_dim(tile, j, keepdims=False)
    valid = tile if valid is None else valid & tile
  if tiling.causal or tiling.window is not None:
    q_pos_Qx1 = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0) + tiling.causal_offset
    k_pos_1xK = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    rel_QxK = jnp.broadcast_to(k_pos_1xK, (bq, bk)) - jnp.broadcast_to(q_pos_Qx1, (bq, bk))
    if tiling.causal:
      valid = masks_lib.combine_masks(valid, rel_QxK <= 0)
    if tiling.window is not None:
      left, right = tiling.window
      valid = masks_lib.combine_masks(valid, (rel_QxK >= -left) & (rel_QxK <= right))
  return valid


def _forward(tiling, q_blocks, k_blocks, v_blocks, key_valid, pair_valid):
  """Online-softmax forward: ``(context [nq, bq, Dv], lse [nq, bq])`` (lse in float32+).

  Tiles are ``s [bq, bk] = q_i k_jᵀ`` and ``p v_j``: both contractions run over the last
  axis of their left operand (the layout fast matmul kernels take without a transpose).
  With one key block the softmax is a plain one (no running max, no rescaling).
  """
  num_k = k_blocks.shape[0]
  bq, dv = q_blocks.shape[1], v_blocks.shape[-1]
  acc = _acc(q_blocks, k_blocks, v_blocks)

  def scores(i, j, q_BqxD, k_BkxD):
    s_BqxBk = jnp.einsum("qd,kd->qk", q_BqxD, k_BkxD, preferred_element_type=acc)
    valid = _tile_mask(tiling, i, j, key_valid, pair_valid)
    return s_BqxBk if valid is None else jnp.where(valid, s_BqxBk, _NEG), valid

  def probs_times_values(p_BqxBk, valid, v_BkxDv):
    if valid is not None:  # exp(_NEG - _NEG) = 1 in a fully masked row: zero it.
      p_BqxBk = jnp.where(valid, p_BqxBk, 0.0)
    pv_BqxDv = jnp.einsum(
      "qk,kd->qd", p_BqxBk.astype(v_BkxDv.dtype), v_BkxDv, preferred_element_type=acc
    )
    return jnp.sum(p_BqxBk, axis=-1), pv_BqxDv

  def one_query_block(i, q_BqxD):
    if num_k == 1:
      s_BqxBk, valid = scores(i, 0, q_BqxD, k_blocks[0])
      m_Bq = jnp.max(s_BqxBk, axis=-1)
      l_Bq, acc_BqxDv = probs_times_values(jnp.exp(s_BqxBk - m_Bq[:, None]), valid, v_blocks[0])
    else:

      def step(j, carry):
        m_Bq, l_Bq, acc_BqxDv = carry
        k_BkxD = lax.dynamic_index_in_dim(k_blocks, j, keepdims=False)
        v_BkxDv = lax.dynamic_index_in_dim(v_blocks, j, keepdims=False)
        s_BqxBk, valid = scores(i, j, q_BqxD, k_BkxD)
        m_new_Bq = jnp.maximum(m_Bq, jnp.max(s_BqxBk, axis=-1))
        p_BqxBk = jnp.exp(s_BqxBk - m_new_Bq[:, None])
        row_sum_Bq, pv_BqxDv = probs_times_values(p_BqxBk, valid, v_BkxDv)
        correction_Bq = jnp.exp(m_Bq - m_new_Bq)
        l_Bq = correction_Bq * l_Bq + row_sum_Bq
        return m_new_Bq, l_Bq, correction_Bq[:, None] * acc_BqxDv + pv_BqxDv

      init = (jnp.full((bq,), _NEG, acc), jnp.zeros((bq,), acc), jnp.zeros((bq, dv), acc))
      m_Bq, l_Bq, acc_BqxDv = lax.fori_loop(*_key_block_range(tiling, i, num_k), step, init)
    nonempty_Bq = l_Bq > 0.0
    l_safe_Bq = jnp.where(nonempty_Bq, l_Bq, 1.0)
    context_BqxDv = (acc_BqxDv / l_safe_Bq[:, None]).astype(v_blocks.dtype)
    lse_Bq = jnp.where(nonempty_Bq, m_Bq + jnp.log(l_safe_Bq), _NEG)
    return context_BqxDv, lse_Bq

  return lax.map(lambda xs: one_query_block(*xs), (jnp.arange(q_blocks.shape[0]), q_blocks))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(tiling, q_blocks, k_blocks, v_blocks, key_valid, pair_valid):
  return _forward(tiling, q_blocks, k_blocks, v_blocks, key_valid, pair_valid)


def _flash_fwd(tiling, q_blocks, k_blocks, v_blocks, key_valid, pair_valid):
  context, lse = _forward(tiling, q_blocks, k_blocks, v_blocks, key_valid, pair_valid)
  return (context, lse), (q_blocks, k_blocks, v_blocks, key_valid, pair_valid, context, lse)


def _flash_bwd(tiling, residuals, cotangents):
  """Query blocks outside (a scan that emits ``dq_i``), key blocks inside.

  ``dk`` and ``dv`` are ``[nk · bk, D]`` accumulators (O(T·D), never O(T²)). Each tile is
  computed transposed, ``sᵀ [bk, bq] = k_j q_iᵀ``, so that the key-side products
  ``dv_j += pᵀ dO_i`` and ``dk_j += dsᵀ q_i`` contract over the tile's last axis, and
  ``dq_iᵀ += k_jᵀ dsᵀ`` uses a ``kᵀ`` transposed once outside the loops: all five tile
  matmuls are plain (row-major, no operand contracted over its first axis), the layout CPU
  matmul kernels run fastest (measured 2-4x faster than the transposed-operand form here).
  ``p`` is recomputed from ``lse`` (no running max): one exp per tile.
  """
  q_blocks, k_blocks, v_blocks, key_valid, pair_valid, context, lse = residuals
  d_context, d_lse = cotangents
  num_k = k_blocks.shape[0]
  acc = _acc(q_blocks, k_blocks, v_blocks)
  # dL/ds_ij = p_ij (dO_i·v_j - delta_i) with delta_i = dO_i·O_i - dL/dlse_i.
  delta_NqxBq = jnp.sum(d_context.astype(acc) * context.astype(acc), axis=-1)
  delta_NqxBq = delta_NqxBq - d_lse.astype(acc)
  d_context = d_context.astype(v_blocks.dtype)

  def tile(i, j, q_BqxD, do_BqxDv, lse_Bq, delta_Bq, k_BkxD, kT_DxBk, v_BkxDv):
    """``(dqᵀ_i part, dk_j part, dv_j part)`` of tile ``(i, j)``, in the accumulation dtype."""
    s_BkxBq = jnp.einsum("kd,qd->kq", k_BkxD, q_BqxD, preferred_element_type=acc)
    p_BkxBq = jnp.exp(s_BkxBq - lse_Bq[None, :])
    valid = _tile_mask(tiling, i, j, key_valid, pair_valid)
    if valid is not None:  # also zeroes fully masked queries (lse = _NEG)
      p_BkxBq = jnp.where(valid.T, p_BkxBq, 0.0)
    dv_BkxDv = jnp.einsum(
      "kq,qd->kd", p_BkxBq.astype(do_BqxDv.dtype), do_BqxDv, preferred_element_type=acc
    )
    dp_BkxBq = jnp.einsum("kd,qd->kq", v_BkxDv, do_BqxDv, preferred_element_type=acc)
    ds_BkxBq = (p_BkxBq * (dp_BkxBq - delta_Bq[None, :])).astype(q_BqxD.dtype)
    dk_BkxD = jnp.einsum("kq,qd->kd", ds_BkxBq, q_BqxD, preferred_element_type=acc)
    # dqᵀ = kᵀ ds with kᵀ stored transposed: a plain matmul (ds k would contract ds's first axis).
    dqT_DxBq = jnp.einsum("dk,kq->dq", kT_DxBk, ds_BkxBq, preferred_element_type=acc)
    return dqT_DxBq, dk_BkxD, dv_BkxDv

  def one_query_block(carry, xs):
    dk_TkxD, dv_TkxDv = carry  # flat [nk * bk, D]: one plain add per tile
    i, q_BqxD, do_BqxDv, lse_Bq, delta_Bq = xs
    if num_k == 1:
      dqT_DxBq, dk_BkxD, dv_BkxDv = tile(
        i, 0, q_BqxD, do_BqxDv, lse_Bq, delta_Bq, k_blocks[0], kT_blocks[0], v_blocks[0]
      )
      return (dk_TkxD + dk_BkxD, dv_TkxDv + dv_BkxDv), dqT_DxBq

    def step(j, inner):
      dqT_DxBq, dk_TkxD, dv_TkxDv = inner
      block = lambda x: lax.dynamic_index_in_dim(x, j, keepdims=False)
      dqT_part, dk_part, dv_part = tile(
        i, j, q_BqxD, do_BqxDv, lse_Bq, delta_Bq, block(k_blocks), block(kT_blocks),
        block(v_blocks),
      )  # fmt: skip
      start = j * bk

      def add(acc, part):
        old = lax.dynamic_slice_in_dim(acc, start, bk)
        return lax.dynamic_update_slice_in_dim(acc, old + part, start, 0)

      return dqT_DxBq + dqT_part, add(dk_TkxD, dk_part), add(dv_TkxDv, dv_part)

    init = (jnp.zeros(q_BqxD.shape[::-1], acc), dk_TkxD, dv_TkxDv)
    dqT_DxBq, dk_TkxD, dv_TkxDv = lax.fori_loop(*_key_block_range(tiling, i, num_k), step, init)
    return (dk_TkxD, dv_TkxDv), dqT_DxBq

  bk = k_blocks.shape[1]
  kT_blocks = jnp.swapaxes(k_blocks, 1, 2)  # [nk, D, bk], once, outside the loops
  init = (
    jnp.zeros((num_k * bk, k_blocks.shape[-1]), acc),
    jnp.zeros((num_k * bk, v_blocks.shape[-1]), acc),
  )
  xs = (jnp.arange(q_blocks.shape[0]), q_blocks, d_context, lse, delta_NqxBq)
  (dk, dv), dqT = lax.scan(one_query_block, init, xs)
  dq = jnp.swapaxes(dqT, 1, 2)
  return (
    dq.astype(q_blocks.dtype),
    dk.reshape(k_blocks.shape).astype(k_blocks.dtype),
    dv.reshape(v_blocks.shape).astype(v_blocks.dtype),
    None,
    None,
  )


_flash.defvjp(_flash_fwd, _flash_bwd)


def parse_window(local_window_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
  """``w -> (w, w)``; ``(left, right)`` checked to be non-negative ints; ``None`` passes."""
  if local_window_size is None:
    return None
  window = (
    (local_window_size, local_window_size)
    if isinstance(local_window_size, int)
    else tuple(local_window_size)
  )
  if len(window) != 2 or not all(isinstance(w, int) and w >= 0 for w in window):
    raise ValueError(
      f"local_window_size must be an int or (left, right) of ints >= 0, got {local_window_size!r}."
    )
  return window


def chunked_soft_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  causal: bool = False,
  causal_offset: int = 0,
  local_window_size: int | tuple[int, int] | None = None,
  scale: float | None = None,
  block_q: int = DEFAULT_BLOCK_Q,
  block_k: int = DEFAULT_BLOCK_K,
) -> tuple[chex.Array, chex.Array]:
  """Exact scaled-dot softmax attention in O(T·D) memory, for one head.

  Computes ``context_i = Σ_j softmax_j(scale · q_i·k_j) v_j`` over the keys each query may
  attend, tile by tile with an online softmax (see the module docstring), with a custom
  VJP that recomputes tile probabilities instead of storing ``Tq x Tk`` of them. Equal to
  :func:`attnlab.soft_attention` with :func:`attnlab.scores.scaled_dot` (to float32
  rounding) in outputs and gradients, including its masking semantics: a query with no
  visible key gets a zero context and zero gradient.

  Args:
    q: queries ``[Tq, D]``.
    k: keys ``[Tk, D]``.
    v: values ``[Tk, Dv]``.
    mask: bool ``[Tq, Tk]``, ``[1, Tk]`` or key-padding ``[Tk]``; ``True`` = may attend.
      A key-padding mask is never broadcast to ``[Tq, Tk]``.
    causal: also mask keys ``j > i + causal_offset``, without building the mask; tiles
      entirely above the diagonal are not computed.
    causal_offset: diagonal shift (see :func:`attnlab.masks.causal_mask`) of ``causal`` and
      ``local_window_size``; 0 is top-left alignment, ``Tk - Tq`` bottom-right.
    local_window_size: ``(left, right)`` (an int ``w`` means ``(w, w)``): query ``i`` also
      only sees keys ``i + offset - left <= j <= i + offset + right``, as
      ``jax.nn.dot_product_attention(local_window_size=...)`` and
      :func:`attnlab.masks.local_mask`; tiles outside the window are skipped.
    scale: score scale; default ``1 / sqrt(D)``.
    block_q: query tile size (clipped to ``Tq``). Larger tiles mean fewer, bigger matmuls;
      memory per head is O(block_q · block_k). The defaults (512 x 2048, a 4 MiB float32
      tile) measured fastest on a 2-core CPU at T = 2048 (256: 5-10% slower, 128: 10-20%)
      and as fast as 256 at T = 8192.
    block_k: key tile size (clipped to ``Tk``); with ``Tk <= block_k`` the softmax of each
      query block is computed in one tile, without online rescaling.

  Returns:
    ``(context [Tq, Dv], logsumexp [Tq])``: the context in ``v``'s dtype and, in float32
    (float64 for float64 inputs), ``log Σ_j exp(scale · q_i·k_j)`` over visible keys
    (``finfo(float32).min`` for a fully masked query), which merges partial attentions and
    is differentiable.

  References:
    Rabe & Staats, "Self-attention Does Not Need O(n²) Memory", arXiv 2112.05682, 2021;
    Dao et al., "FlashAttention", NeurIPS 2022; Dao, "FlashAttention-2", ICLR 2024.
  """
  chex.assert_rank([q, k, v], 2)
  q_len, depth = q.shape
  k_len = k.shape[0]
  if k.shape[1] != depth or v.shape[0] != k_len:
    raise ValueError(
      f"expected q [Tq, D], k [Tk, D], v [Tk, Dv]; got {q.shape}, {k.shape}, {v.shape}."
    )
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if not isinstance(block, int) or block < 1:
      raise ValueError(f"{name} must be a positive int, got {block!r}.")
  tiling = _Tiling(
    block_q=min(block_q, q_len),
    block_k=min(block_k, k_len),
    scale=float(depth**-0.5 if scale is None else scale),
    causal=bool(causal),
    causal_offset=int(causal_offset),
    window=parse_window(local_window_size),
  )

  key_valid, pair_valid = None, None
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.ndim == 2 and mask.shape[0] == 1:
      mask = mask[0]
    if mask.ndim == 1:
      masks_lib.as_query_key_mask(mask[None], 1, k_len)  # validates dtype and length
      key_valid = mask
    else:
      pair_valid = masks_lib.as_query_key_mask(mask, q_len, k_len)
  if k_len % tiling.block_k and pair_valid is None:  # padded keys must never be attended
    key_valid = jnp.ones((k_len,), bool) if key_valid is None else key_valid
  if key_valid is not None:
    key_valid = _to_blocks(key_valid, tiling.block_k)
  if pair_valid is not None:  # [Tq, Tk] -> [nq, nk, bq, bk], padding is False
    bq, bk = tiling.block_q, tiling.block_k
    pair_valid = jnp.pad(pair_valid, ((0, -q_len % bq), (0, -k_len % bk)))
    pair_valid = pair_valid.reshape(-1, bq, pair_valid.shape[1] // bk, bk).transpose(0, 2, 1, 3)

  q_scaled = q * jnp.asarray(tiling.scale, q.dtype)
  context, lse = _flash(
    tiling,
    _to_blocks(q_scaled, tiling.block_q),
    _to_blocks(k, tiling.block_k),
    _to_blocks(v, tiling.block_k),
    key_valid,
    pair_valid,
  )
  return context.reshape(-1, v.shape[1])[:q_len], lse.reshape(-1)[:q_len]


def multi_head_chunked_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  causal: bool = False,
  causal_offset: int = 0,
  local_window_size: int | tuple[int, int] | None = None,
  scale: float | None = None,
  block_q: int = DEFAULT_BLOCK_Q,
  block_k: int = DEFAULT_BLOCK_K,
  heads_per_step: int = DEFAULT_HEADS_PER_STEP,
) -> tuple[chex.Array, chex.Array]:
  """:func:`chunked_soft_attention` over every (example, head) pair.

  The pairs are visited ``heads_per_step`` at a time (``lax.map`` with that batch size,
  each step the per-head function vmapped over its pairs) rather than all vmapped at once:
  a step's tiles then stay in a CPU core's cache (measured ~15% faster at T = 2048 on 2
  cores than vmapping all 8 heads). Results are the same either way.

  Args:
    q: ``[B, T, H, D]``.
    k: ``[B, S, H, D]``.
    v: ``[B, S, H, Dv]``.
    mask: bool, broadcastable to ``[B, H, T, S]`` with rank 4 (``[B, 1, 1, S]`` key
      padding stays a vector per example; size-1 axes are never materialised); ``True`` =
      may attend.
    causal, causal_offset, local_window_size, scale, block_q, block_k: as in
      :func:`chunked_soft_attention`.
    heads_per_step: (example, head) pairs computed together; ``B * H`` vmaps them all.

  Returns:
    ``(context [B, T, H, Dv], logsumexp [B, H, T])``.
  """
  batch, _, heads, _ = multihead.check_layout(q, k, v, mask)
  if not isinstance(heads_per_step, int) or heads_per_step < 1:
    raise ValueError(f"heads_per_step must be a positive int, got {heads_per_step!r}.")
  pairs = batch * heads

  def per_pair(xs):
    n, q_TxD, k_SxD, v_SxD = xs
    mask_TxS = None
    if mask is not None:  # this pair's [T|1, S] slice of the un-broadcast mask
      b = n // heads if mask.shape[0] > 1 else 0
      h = n % heads if mask.shape[1] > 1 else 0
      mask_TxS = lax.dynamic_index_in_dim(mask, b, keepdims=False)
      mask_TxS = lax.dynamic_index_in_dim(mask_TxS, h, keepdims=False)
    return chunked_soft_attention(
        q_TxD, k_SxD, v_SxD, mask_TxS, causal=causal, causal_offset=causal_offset,
        local_window_size=local_window_size, scale=scale, block_q=block_q, block_k=block_k,
    )  # fmt: skip

  def to_pairs(x_BxTxHxD):  # [B, T, H, D] -> [B * H, T, D]
    x_BxHxTxD = jnp.swapaxes(x_BxTxHxD, 1, 2)
    return x_BxHxTxD.reshape((pairs,) + x_BxHxTxD.shape[2:])

  xs = (jnp.arange(pairs), to_pairs(q), to_pairs(k), to_pairs(v))
  context_NxTxDv, lse_NxT = lax.map(per_pair, xs, batch_size=min(heads_per_step, pairs))
  context_BxHxTxDv = context_NxTxDv.reshape((batch, heads) + context_NxTxDv.shape[1:])
  return jnp.swapaxes(context_BxHxTxDv, 1, 2), lse_NxT.reshape(batch, heads, -1)
