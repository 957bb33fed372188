"""One entry point for batched scaled-dot softmax attention that picks the implementation.

The choice is a pure function of static facts (:func:`choose_implementation`), so it can be
unit-tested on any machine, is returned with the result, and can be overridden:

  * GPU, float16/bfloat16, head dim <= 128 and a multiple of 8, no mask or causal only:
    ``jax.nn.dot_product_attention(implementation="cudnn")`` (fused flash kernel). With an
    arbitrary mask cuDNN could produce rows with no visible key, which jax.nn turns into a
    uniform average; attnlab's semantics (zeros) would be lost, so those go to attnlab.
  * Otherwise attnlab's own: the plain vmapped :func:`attnlab.multi_head_soft_attention`
    for keys that fit one tile, :func:`multi_head_chunked_attention` (online softmax, O(T)
    memory, flash-style VJP) for longer ones.

All implementations give the same result (to float32 rounding), including zero context for
queries with no visible key: the jax.nn paths are corrected for that when a mask could
produce one.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from attnlab import masks as masks_lib
from attnlab import multihead
from attnlab.efficient import chunked
from attnlab.enums import Choice

_CUDNN_DTYPES = ("bfloat16", "float16")
_GPU_BACKENDS = ("gpu", "cuda")


class Implementation(Choice):
  """Available implementations of :func:`dot_product_attention`."""

  CUDNN = "cudnn"  # jax.nn.dot_product_attention(implementation="cudnn"); GPU only.
  XLA = "xla"  # jax.nn.dot_product_attention(implementation="xla").
  SOFT = "soft"  # attnlab.multi_head_soft_attention (materialises the scores).
  CHUNKED = "chunked"  # attnlab.efficient.multi_head_chunked_attention (O(T) memory).


class MaskKind(Choice):
  """What constrains which keys a query sees."""

  NONE = "none"
  CAUSAL = "causal"  # is_causal only, top-left aligned.
  KEY_PADDING = "key_padding"  # a [B|1, 1, 1, S] mask, maybe with causal.
  DENSE = "dense"  # any other mask, maybe with causal.


@dataclasses.dataclass(frozen=True)
class AttentionProblem:
  """The static facts the choice depends on."""

  backend: str  # "cpu", "gpu"/"cuda", "tpu", ...
  dtype: str  # dtype name of q/k/v, e.g. "float32"
  batch: int
  q_len: int
  k_len: int
  heads: int
  head_dim: int
  value_dim: int
  mask_kind: MaskKind


def mask_kind(mask: chex.Array | None, causal: bool) -> MaskKind:
  """Classifies a rank-4 ``[B|1, H|1, T|1, S]`` mask (or ``None``) plus ``causal``."""
  if mask is None:
    return MaskKind.CAUSAL if causal else MaskKind.NONE
  return MaskKind.KEY_PADDING if mask.shape[1:3] == (1, 1) else MaskKind.DENSE


def choose_implementation(problem: AttentionProblem) -> Implementation:
  """Picks the fastest implementation that keeps attnlab's semantics; pure and static.

  Args:
    problem: backend, dtype, shapes and mask kind of the call.

  Returns:
    CUDNN on a GPU for float16/bfloat16, head dims ``<= 128`` and multiples of 8, equal
    ``D`` and ``Dv``, and no mask or causal only. Otherwise CHUNKED as soon as there is
    more than one key tile (``Tk > DEFAULT_BLOCK_K``): on CPU it was measured at least as
    fast as the plain form from T = 512 on (see ``results/``), needs O(T) memory and skips
    causal tiles; SOFT (the plain vmapped form, same result, no loop) for shorter keys.
  """
  if (
    problem.backend in _GPU_BACKENDS
    and problem.dtype in _CUDNN_DTYPES
    and problem.head_dim == problem.value_dim
    and problem.head_dim <= 128
    and problem.head_dim % 8 == 0
    and problem.mask_kind in (MaskKind.NONE, MaskKind.CAUSAL)
  ):
    return Implementation.CUDNN
  if problem.k_len > chunked.DEFAULT_BLOCK_K:
    return Implementation.CHUNKED
  return Implementation.SOFT


def _jax_nn(q, k, v, mask, causal, implementation):
  """jax.nn.dot_product_attention with attnlab's zero output for queries that see no key."""
  q_len, k_len = q.shape[1], k.shape[1]
  if causal and mask is not None:
    mask = mask & masks_lib.causal_mask(q_len, k_len)[None, None]
    causal = False
  context = jax.nn.dot_product_attention(
    q, k, v, mask=mask, is_causal=causal, implementation=implementation
  )
  if mask is None:  # no key masked, or top-left causal: every query sees key 0
    return context
  nonempty_BxHxT = jnp.any(mask, axis=-1)
  nonempty_BxTxH = jnp.broadcast_to(
    nonempty_BxHxT.transpose(0, 2, 1), (context.shape[0], q_len, context.shape[2])
  )
  return jnp.where(nonempty_BxTxH[..., None], context, jnp.zeros((), context.dtype))


def dot_product_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  causal: bool = False,
  implementation: str | Implementation | None = None,
  backend: str | None = None,
) -> tuple[chex.Array, Implementation]:
  """Batched scaled-dot softmax attention through the best available implementation.

  ``context = softmax(q kᵀ / sqrt(D), masked) v`` per batch element and head; a query with
  no visible key gets a zero context, whichever implementation runs.

  Args:
    q: ``[B, T, H, D]``.
    k: ``[B, S, H, D]``.
    v: ``[B, S, H, Dv]``.
    mask: bool, broadcastable to ``[B, H, T, S]`` with rank 4; ``True`` = may attend.
    causal: query ``i`` sees keys ``j <= i`` (top-left aligned, as ``jax.nn``).
    implementation: force one (:class:`Implementation` or its value); ``None`` lets
      :func:`choose_implementation` decide.
    backend: the platform to decide for; default ``jax.default_backend()``.

  Returns:
    ``(context [B, T, H, Dv], implementation)``: the output in ``v``'s dtype and which
    implementation produced it.

  References:
    Vaswani et al. 2017; Dao et al., "FlashAttention", NeurIPS 2022.
  """
  batch, q_len, heads, k_len = multihead.check_layout(q, k, v, mask)
  if mask is not None and jnp.asarray(mask).dtype != jnp.bool_:
    raise TypeError(f"attention masks must be boolean (True = attend), got dtype {mask.dtype}.")
  backend = jax.default_backend() if backend is None else backend
  problem = AttentionProblem(
    backend=backend,
    dtype=jnp.dtype(q.dtype).name,
    batch=batch,
    q_len=q_len,
    k_len=k_len,
    heads=heads,
    head_dim=q.shape[-1],
    value_dim=v.shape[-1],
    mask_kind=mask_kind(mask, causal),
  )
  if implementation is None:
    choice = choose_implementation(problem)
  else:
    choice = Implementation.parse(implementation)
  if choice is Implementation.CUDNN and (
    backend not in _GPU_BACKENDS or problem.mask_kind not in (MaskKind.NONE, MaskKind.CAUSAL)
  ):
    raise ValueError(
      f"implementation='cudnn' needs a GPU backend and no mask or causal only; got backend "
      f"{backend!r}, mask kind {problem.mask_kind.value!r}."
    )

  if choice in (Implementation.CUDNN, Implementation.XLA):
    return _jax_nn(q, k, v, mask, causal, choice.value), choice
  if choice is Implementation.CHUNKED:
    return chunked.multi_head_chunked_attention(q, k, v, mask, causal=causal)[0], choice
  if causal:
    causal_1x1xTxS = masks_lib.causal_mask(q_len, k_len)[None, None]
    mask = causal_1x1xTxS if mask is None else mask & causal_1x1xTxS
  return multihead.multi_head_soft_attention(q, k, v, mask)[0], choice
