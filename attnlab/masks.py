"""Boolean attention masks. ``True`` means "may attend".

Conventions:
  * A mask for one head is ``[Tq, Tk]``; a key-padding mask ``[Tk]`` is accepted wherever a
    mask is and means the same for every query.
  * Causal masks with ``Tq != Tk`` are aligned top-left by default (query ``i`` sees keys
    ``j <= i``), the convention of ``jax.nn.dot_product_attention(is_causal=True)``. For
    decoding with a cache, where the queries are the *last* ``Tq`` of ``Tk`` positions, pass
    ``offset=Tk - Tq`` (bottom-right alignment): query ``i`` then sees ``j <= i + Tk - Tq``.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def padding_mask(lengths: chex.Array, max_len: int) -> chex.Array:
  """Valid-position mask from lengths.

  Args:
    lengths: integer lengths of any shape ``[...]``.
    max_len: padded length ``T``.

  Returns:
    bool ``[..., T]``, ``True`` at positions ``t < length``.
  """
  lengths = jnp.asarray(lengths)
  positions = jnp.arange(max_len).reshape((1,) * lengths.ndim + (max_len,))
  return positions < lengths[..., None]


def causal_mask(q_len: int, k_len: int, *, offset: int = 0) -> chex.Array:
  """Causal mask: query ``i`` may attend key ``j`` iff ``j <= i + offset``.

  Args:
    q_len: number of queries ``Tq``.
    k_len: number of keys ``Tk``.
    offset: shift of the diagonal; 0 is top-left alignment (as ``jax.nn``), ``Tk - Tq``
      bottom-right (queries are the last ``Tq`` positions of the key sequence).

  Returns:
    bool ``[Tq, Tk]``.
  """
  q_pos_Qx1 = jnp.arange(q_len)[:, None] + offset
  k_pos_1xK = jnp.arange(k_len)[None, :]
  return k_pos_1xK <= q_pos_Qx1


def local_mask(q_len: int, k_len: int, *, left: int, right: int = 0, offset: int = 0):
  """Sliding-window mask: query ``i`` attends ``j`` with ``-left <= j - (i + offset) <= right``.

  Args:
    q_len: number of queries ``Tq``.
    k_len: number of keys ``Tk``.
    left: how many keys before the query's own position are visible (>= 0).
    right: how many keys after it are visible (>= 0; 0 makes the window causal).
    offset: query ``i`` sits at key position ``i + offset`` (same meaning as in
      :func:`causal_mask`).

  Returns:
    bool ``[Tq, Tk]``.
  """
  if left < 0 or right < 0:
    raise ValueError(f"window sizes must be >= 0, got left={left}, right={right}.")
  rel_QxK = jnp.arange(k_len)[None, :] - (jnp.arange(q_len)[:, None] + offset)
  return (rel_QxK >= -left) & (rel_QxK <= right)


def combine_masks(*masks: chex.Array | None) -> chex.Array | None:
  """Logical AND of masks, ignoring ``None``; shapes broadcast explicitly.

  Returns:
    The combined bool mask with the broadcast shape, or ``None`` if every mask is ``None``.
  """
  present = [jnp.asarray(m, dtype=bool) for m in masks if m is not None]
  if not present:
    return None
  shape = jnp.broadcast_shapes(*(m.shape for m in present))
  out = jnp.broadcast_to(present[0], shape)
  for m in present[1:]:
    out = out & jnp.broadcast_to(m, shape)
  return out


def as_query_key_mask(mask: chex.Array | None, q_len: int, k_len: int) -> chex.Array | None:
  """Validates a per-head mask and broadcasts it to ``[Tq, Tk]`` (``None`` passes through)."""
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"attention masks must be boolean (True = attend), got dtype {mask.dtype}.")
  if (
    mask.ndim not in (1, 2)
    or mask.shape[-1] != k_len
    or (mask.ndim == 2 and mask.shape[0] not in (1, q_len))
  ):
    raise ValueError(
      f"mask of shape {mask.shape} does not fit Tq={q_len}, Tk={k_len}: expected "
      f"[{q_len}, {k_len}], [1, {k_len}] or [{k_len}]."
    )
  return jnp.broadcast_to(mask, (q_len, k_len))
