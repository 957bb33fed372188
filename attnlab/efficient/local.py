"""Sliding-window (local) softmax attention in O(T·window) work.

Query ``i`` sits at key position ``p_i = i + offset`` and attends keys ``j`` with
``p_i - left <= j <= p_i + right`` (the window of :func:`attnlab.masks.local_mask`). Queries
are split into blocks of ``Bq``; block ``b`` gathers the ``Bq + left + right`` keys its
queries can see, so scores are ``[T / Bq, Bq, Bq + left + right]`` instead of ``[T, T]``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from attnlab import multihead
from attnlab.efficient.linear import key_padding

_F32 = jnp.float32
_NEG = float(jnp.finfo(_F32).min)


def local_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  left: int,
  right: int = 0,
  offset: int = 0,
  scale: float | None = None,
  block_size: int | None = None,
) -> tuple[chex.Array, chex.Array]:
  """Scaled-dot softmax attention restricted to a sliding window, for one head.

  Equal to :func:`attnlab.soft_attention` with the mask
  ``local_mask(Tq, Tk, left=left, right=right, offset=offset) & key_padding``, including its
  semantics (a query with no visible key gets zeros), at cost O(Tq · (block + left + right)).

  Args:
    q: queries ``[Tq, D]``.
    k: keys ``[Tk, D]``.
    v: values ``[Tk, Dv]``.
    mask: optional key-padding mask ``[Tk]`` or ``[1, Tk]`` (``True`` = may attend).
    left: keys visible before the query's position (>= 0).
    right: keys visible after it (>= 0; 0 = causal window).
    offset: query ``i`` sits at key position ``i + offset``.
    scale: score scale; default ``1 / sqrt(D)``.
    block_size: query block ``Bq``; default ``max(left + right + 1, 32)`` clipped to ``Tq``.
      Work per query is ``Bq + left + right`` dot products.

  Returns:
    ``(context [Tq, Dv], logsumexp [Tq])``, the latter float32 over the window
    (``finfo(float32).min`` for an empty window).

  References:
    Beltagy et al., "Longformer", arXiv 2004.05150, 2020; Child et al., "Sparse
    Transformers", arXiv 1904.10509, 2019.
  """
  chex.assert_rank([q, k, v], 2)
  (q_len, depth), k_len = q.shape, k.shape[0]
  if k.shape[1] != depth or v.shape[0] != k_len:
    raise ValueError(
      f"expected q [Tq, D], k [Tk, D], v [Tk, Dv]; got {q.shape}, {k.shape}, {v.shape}."
    )
  if left < 0 or right < 0:
    raise ValueError(f"window sizes must be >= 0, got left={left}, right={right}.")
  if block_size is None:
    block_size = max(left + right + 1, 32)
  if not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
  block = min(block_size, q_len)
  span = block + left + right
  key_valid_K = key_padding(mask, k_len)
  scale = depth**-0.5 if scale is None else scale

  num_blocks = -(-q_len // block)
  q_blocks = jnp.pad(q * jnp.asarray(scale, q.dtype), ((0, num_blocks * block - q_len), (0, 0)))
  q_NxBxD = q_blocks.reshape(num_blocks, block, depth)
  # Key positions each block can see, and each query's position.
  k_pos_NxS = (jnp.arange(num_blocks) * block + offset - left)[:, None] + jnp.arange(span)[None, :]
  q_pos_NxB = jnp.arange(num_blocks * block).reshape(num_blocks, block) + offset
  rel_NxBxS = k_pos_NxS[:, None, :] - q_pos_NxB[:, :, None]
  in_range_NxS = (k_pos_NxS >= 0) & (k_pos_NxS < k_len)
  k_idx_NxS = jnp.clip(k_pos_NxS, 0, k_len - 1)
  if key_valid_K is not None:
    in_range_NxS = in_range_NxS & key_valid_K[k_idx_NxS]
  valid_NxBxS = (rel_NxBxS >= -left) & (rel_NxBxS <= right) & in_range_NxS[:, None, :]

  k_NxSxD, v_NxSxDv = k[k_idx_NxS], v[k_idx_NxS]
  s_NxBxS = jnp.einsum("nbd,nsd->nbs", q_NxBxD, k_NxSxD, preferred_element_type=_F32)
  s_NxBxS = jnp.where(valid_NxBxS, s_NxBxS, _NEG)
  # The max is a constant shift (no gradient); masked entries are zeroed after exp.
  m_NxB = jax.lax.stop_gradient(jnp.max(s_NxBxS, axis=-1))
  e_NxBxS = jnp.where(valid_NxBxS, jnp.exp(s_NxBxS - m_NxB[..., None]), 0.0)
  l_NxB = jnp.sum(e_NxBxS, axis=-1)
  nonempty_NxB = l_NxB > 0.0
  l_safe_NxB = jnp.where(nonempty_NxB, l_NxB, 1.0)
  p_NxBxS = e_NxBxS / l_safe_NxB[..., None]
  context_NxBxDv = jnp.einsum(
    "nbs,nsd->nbd", p_NxBxS.astype(v.dtype), v_NxSxDv, preferred_element_type=_F32
  )
  lse_NxB = jnp.where(nonempty_NxB, m_NxB + jnp.log(l_safe_NxB), _NEG)
  context_QxDv = context_NxBxDv.reshape(-1, v.shape[1])[:q_len].astype(v.dtype)
  return context_QxDv, lse_NxB.reshape(-1)[:q_len]


def multi_head_local_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  left: int,
  right: int = 0,
  offset: int = 0,
  scale: float | None = None,
  block_size: int | None = None,
) -> tuple[chex.Array, chex.Array]:
  """:func:`local_attention` vmapped over heads and batch.

  Args:
    q: ``[B, T, H, D]``.
    k: ``[B, S, H, D]``.
    v: ``[B, S, H, Dv]``.
    mask: optional key padding ``[B | 1, 1, 1, S]``.
    left, right, offset, scale, block_size: as in :func:`local_attention`.

  Returns:
    ``(context [B, T, H, Dv], logsumexp [B, H, T])``.
  """
  multihead.check_layout(q, k, v, mask)
  if mask is not None and mask.shape[2] != 1:
    raise ValueError(f"local attention takes a key-padding mask [B, 1, 1, S], got {mask.shape}.")

  def per_head(q_TxD, k_SxD, v_SxD, mask_S, params, key):
    del params, key
    return local_attention(
        q_TxD, k_SxD, v_SxD, mask_S, left=left, right=right, offset=offset, scale=scale,
        block_size=block_size,
    )  # fmt: skip

  return multihead.vmap_heads_and_batch(per_head, q, k, v, mask, None, None, (1, 0))
