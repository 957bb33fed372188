"""Memory-efficient exact softmax attention: online softmax over blocks, flash-style VJP.

The forward pass visits ``[block_q, block_k]`` tiles of the score matrix and keeps, per
query, a running max ``m``, normaliser ``l`` and un-normalised context ``acc``
(Milakov & Gimelshein 2018; Rabe & Staats 2021; Dao et al. 2022):

    m' = max(m, max_j s_ij)        l' = e^(m - m') l + Σ_j e^(s_ij - m')
    acc' = e^(m - m') acc + Σ_j e^(s_ij - m') v_j          context = acc / l

A custom VJP stores only ``q, k, v``, the context and ``lse = m + log l`` (O(T·D)), and
recomputes each tile's probabilities ``p_ij = e^(s_ij - lse_i)`` in the backward pass
(FlashAttention-2's loop order: key blocks outside, query blocks inside), so neither pass
ever holds a ``Tq x Tk`` array. With ``causal=True`` tiles above the diagonal are skipped,
not masked, which halves the work.
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

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 256


@dataclasses.dataclass(frozen=True)
class _Tiling:
  """Static description of one call (hashable: a ``nondiff_argnums`` of the custom VJP)."""

  block_q: int
  block_k: int
  scale: float
  causal: bool
  causal_offset: int


def _to_blocks(x: chex.Array, block: int) -> chex.Array:
  """``[T, ...] -> [ceil(T / block), block, ...]``, zero-padded at the end."""
  pad = -x.shape[0] % block
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((x.shape[0] // block, block) + x.shape[1:])


def _num_key_blocks(tiling: _Tiling, i, num_k: int):
  """Key blocks query block ``i`` needs: all, or up to the causal diagonal."""
  if not tiling.causal:
    return num_k
  last_query = (i + 1) * tiling.block_q - 1 + tiling.causal_offset
  return jnp.clip(last_query // tiling.block_k + 1, 0, num_k)


def _first_query_block(tiling: _Tiling, j, num_q: int):
  """First query block that sees key block ``j`` (0 unless causal)."""
  if not tiling.causal:
    return 0
  # Query block i sees key block j iff (i + 1) * block_q - 1 + offset >= j * block_k,
  # i.e. i >= ceil((j * block_k - offset + 1) / block_q) - 1.
  numerator = j * tiling.block_k - tiling.causal_offset + 1
  return jnp.clip(-(-numerator // tiling.block_q) - 1, 0, num_q)


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
  if tiling.causal:
    q_pos_Qx1 = i * bq + lax.broadcasted_iota(jnp.int32, (bq, 1), 0) + tiling.causal_offset
    k_pos_1xK = j * bk + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    causal = jnp.broadcast_to(k_pos_1xK, (bq, bk)) <= jnp.broadcast_to(q_pos_Qx1, (bq, bk))
    valid = causal if valid is None else valid & causal
  return valid


def _forward(tiling, q_blocks, k_blocks, v_blocks, key_valid, pair_valid):
  """Online-softmax forward. Returns ``(context [nq, bq, Dv], lse [nq, bq] f32)``."""
  num_k = k_blocks.shape[0]
  bq, dv = q_blocks.shape[1], v_blocks.shape[-1]

  def one_query_block(i, q_BqxD):
    def step(j, carry):
      m_Bq, l_Bq, acc_BqxDv = carry
      k_BkxD = lax.dynamic_index_in_dim(k_blocks, j, keepdims=False)
      v_BkxDv = lax.dynamic_index_in_dim(v_blocks, j, keepdims=False)
      s_BqxBk = jnp.einsum("qd,kd->qk", q_BqxD, k_BkxD, preferred_element_type=_F32)
      valid = _tile_mask(tiling, i, j, key_valid, pair_valid)
      if valid is not None:
        s_BqxBk = jnp.where(valid, s_BqxBk, _NEG)
      m_new_Bq = jnp.maximum(m_Bq, jnp.max(s_BqxBk, axis=-1))
      p_BqxBk = jnp.exp(s_BqxBk - m_new_Bq[:, None])
      if valid is not None:  # exp(_NEG - _NEG) = 1 in a fully masked row: zero it.
        p_BqxBk = jnp.where(valid, p_BqxBk, 0.0)
      correction_Bq = jnp.exp(m_Bq - m_new_Bq)
      l_Bq = correction_Bq * l_Bq + jnp.sum(p_BqxBk, axis=-1)
      pv_BqxDv = jnp.einsum(
        "qk,kd->qd", p_BqxBk.astype(v_BkxDv.dtype), v_BkxDv, preferred_element_type=_F32
      )
      return m_new_Bq, l_Bq, correction_Bq[:, None] * acc_BqxDv + pv_BqxDv

    init = (jnp.full((bq,), _NEG, _F32), jnp.zeros((bq,), _F32), jnp.zeros((bq, dv), _F32))
    m_Bq, l_Bq, acc_BqxDv = lax.fori_loop(0, _num_key_blocks(tiling, i, num_k), step, init)
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
  q_blocks, k_blocks, v_blocks, key_valid, pair_valid, context, lse = residuals
  d_context, d_lse = cotangents
  num_q = q_blocks.shape[0]
  # dL/ds_ij = p_ij (dO_i·v_j - delta_i) with delta_i = dO_i·O_i - dL/dlse_i.
  delta_NqxBq = jnp.sum(d_context.astype(_F32) * context.astype(_F32), axis=-1) - d_lse.astype(_F32)
  d_context = d_context.astype(v_blocks.dtype)

  def one_key_block(dq_acc, xs):
    j, k_BkxD, v_BkxDv = xs

    def step(i, carry):
      dk_BkxD, dv_BkxDv, dq_NqxBqxD = carry
      q_BqxD = lax.dynamic_index_in_dim(q_blocks, i, keepdims=False)
      do_BqxDv = lax.dynamic_index_in_dim(d_context, i, keepdims=False)
      lse_Bq = lax.dynamic_index_in_dim(lse, i, keepdims=False)
      delta_Bq = lax.dynamic_index_in_dim(delta_NqxBq, i, keepdims=False)
      s_BqxBk = jnp.einsum("qd,kd->qk", q_BqxD, k_BkxD, preferred_element_type=_F32)
      p_BqxBk = jnp.exp(s_BqxBk - lse_Bq[:, None])
      valid = _tile_mask(tiling, i, j, key_valid, pair_valid)
      if valid is not None:
        p_BqxBk = jnp.where(valid, p_BqxBk, 0.0)
      dv_BkxDv += jnp.einsum(
        "qk,qd->kd", p_BqxBk.astype(do_BqxDv.dtype), do_BqxDv, preferred_element_type=_F32
      )
      dp_BqxBk = jnp.einsum("qd,kd->qk", do_BqxDv, v_BkxDv, preferred_element_type=_F32)
      ds_BqxBk = (p_BqxBk * (dp_BqxBk - delta_Bq[:, None])).astype(q_BqxD.dtype)
      dk_BkxD += jnp.einsum("qk,qd->kd", ds_BqxBk, q_BqxD, preferred_element_type=_F32)
      dq_BqxD = jnp.einsum("qk,kd->qd", ds_BqxBk, k_BkxD, preferred_element_type=_F32)
      old = lax.dynamic_index_in_dim(dq_NqxBqxD, i, keepdims=True)
      dq_NqxBqxD = lax.dynamic_update_index_in_dim(dq_NqxBqxD, old + dq_BqxD[None], i, 0)
      return dk_BkxD, dv_BkxDv, dq_NqxBqxD

    init = (jnp.zeros(k_BkxD.shape, _F32), jnp.zeros(v_BkxDv.shape, _F32), dq_acc)
    start = _first_query_block(tiling, j, num_q)
    dk_BkxD, dv_BkxDv, dq_acc = lax.fori_loop(start, num_q, step, init)
    return dq_acc, (dk_BkxD.astype(k_BkxD.dtype), dv_BkxDv.astype(v_BkxDv.dtype))

  xs = (jnp.arange(k_blocks.shape[0]), k_blocks, v_blocks)
  dq, (dk, dv) = lax.scan(one_key_block, jnp.zeros(q_blocks.shape, _F32), xs)
  return dq.astype(q_blocks.dtype), dk, dv, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def chunked_soft_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  causal: bool = False,
  causal_offset: int = 0,
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
    causal_offset: diagonal shift (see :func:`attnlab.masks.causal_mask`); 0 is top-left
      alignment, ``Tk - Tq`` bottom-right.
    scale: score scale; default ``1 / sqrt(D)``.
    block_q: query tile size (clipped to ``Tq``). Larger tiles mean fewer, bigger matmuls;
      memory per head is O(block_q · block_k).
    block_k: key tile size (clipped to ``Tk``).

  Returns:
    ``(context [Tq, Dv], logsumexp [Tq])``: the context in ``v``'s dtype and, in float32,
    ``log Σ_j exp(scale · q_i·k_j)`` over visible keys (``finfo(float32).min`` for a
    fully masked query), which merges partial attentions and is differentiable.

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
  scale: float | None = None,
  block_q: int = DEFAULT_BLOCK_Q,
  block_k: int = DEFAULT_BLOCK_K,
) -> tuple[chex.Array, chex.Array]:
  """:func:`chunked_soft_attention` vmapped over heads and batch.

  Args:
    q: ``[B, T, H, D]``.
    k: ``[B, S, H, D]``.
    v: ``[B, S, H, Dv]``.
    mask: bool, broadcastable to ``[B, H, T, S]`` with rank 4 (``[B, 1, 1, S]`` key
      padding stays a vector per example); ``True`` = may attend.
    causal, causal_offset, scale, block_q, block_k: as in :func:`chunked_soft_attention`.

  Returns:
    ``(context [B, T, H, Dv], logsumexp [B, H, T])``.
  """
  multihead.check_layout(q, k, v, mask)

  def per_head(q_TxD, k_SxD, v_SxD, mask_TxS, params, key):
    del params, key
    return chunked_soft_attention(
        q_TxD, k_SxD, v_SxD, mask_TxS, causal=causal, causal_offset=causal_offset,
        scale=scale, block_q=block_q, block_k=block_k,
    )  # fmt: skip

  return multihead.vmap_heads_and_batch(per_head, q, k, v, mask, None, None, (1, 0))
