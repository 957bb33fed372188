"""Linear attention with a positive feature map (Katharopoulos et al. 2020).

Replacing ``exp(q·k)`` by ``φ(q)·φ(k)`` with ``φ > 0`` lets the sum over keys be taken once:

    context_i = φ(q_i)ᵀ S / φ(q_i)ᵀ z,    S = Σ_j φ(k_j) v_jᵀ  [F, Dv],   z = Σ_j φ(k_j)  [F]

which is O(T·F·Dv) time and memory instead of O(T²). In the causal form ``S`` and ``z`` are
prefix sums. They are computed chunk by chunk: a ``lax.scan`` over chunks of ``C`` keys
carries ``(S, z)`` of all earlier chunks, and inside a chunk the ``C x C`` lower-triangular
part is computed directly. Time is O(T·C·(F + Dv) + T·F·Dv) and only one ``[F, Dv]`` state
per chunk is kept for the backward pass (a per-step scan would keep T of them).
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
from jax import lax

from attnlab import multihead

_F32 = jnp.float32
_NEG = float(jnp.finfo(_F32).min)

DEFAULT_CHUNK = 64
FeatureMap = Callable[[chex.Array], chex.Array]


def elu_plus_one(x: chex.Array) -> chex.Array:
  """The feature map ``φ(x) = elu(x) + 1 > 0`` of Katharopoulos et al. (2020)."""
  return jax.nn.elu(x) + 1.0


def key_padding(mask: chex.Array | None, k_len: int) -> chex.Array | None:
  """A key-padding mask ``[Tk]`` (``[1, Tk]`` accepted), checked; ``None`` stays ``None``."""
  if mask is None:
    return None
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"attention masks must be boolean (True = attend), got dtype {mask.dtype}.")
  if mask.ndim == 2 and mask.shape[0] == 1:
    mask = mask[0]
  if mask.shape != (k_len,):
    raise ValueError(
      f"linear attention takes a key-padding mask [Tk] = [{k_len}] (or [1, {k_len}]), got "
      f"shape {mask.shape}: a general [Tq, Tk] mask does not factorise through φ(q)·φ(k)."
    )
  return mask


def _normalise(num_QxDv, den_Q, dtype):
  """``num / den``; 0 (and zero gradient) where ``den = 0`` (no visible key)."""
  nonempty_Q = den_Q > 0.0
  den_safe_Q = jnp.where(nonempty_Q, den_Q, 1.0)
  context_QxDv = jnp.where(nonempty_Q[:, None], num_QxDv / den_safe_Q[:, None], 0.0)
  log_den_Q = jnp.where(nonempty_Q, jnp.log(den_safe_Q), _NEG)
  return context_QxDv.astype(dtype), log_den_Q


def _causal_chunked(phi_q_TxF, phi_k_TxF, v_TxDv, chunk: int):
  """Causal numerator ``[T, Dv]`` and denominator ``[T]`` via a scan over chunks."""
  t, f = phi_q_TxF.shape
  dv = v_TxDv.shape[1]
  pad = -t % chunk

  def blocks(x):
    return jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])

  tril_CxC = jnp.tril(jnp.ones((chunk, chunk), bool))

  def step(carry, xs):
    state_FxDv, z_F = carry
    phi_q_CxF, phi_k_CxF, v_CxDv = xs
    # Within the chunk: key j <= query i, computed directly (C x C).
    a_CxC = jnp.where(tril_CxC, jnp.einsum("if,jf->ij", phi_q_CxF, phi_k_CxF), 0.0)
    num_CxDv = jnp.einsum("if,fd->id", phi_q_CxF, state_FxDv) + jnp.einsum(
      "ij,jd->id", a_CxC, v_CxDv
    )
    den_C = jnp.einsum("if,f->i", phi_q_CxF, z_F) + jnp.sum(a_CxC, axis=-1)
    # Earlier chunks, for the next one.
    state_FxDv = state_FxDv + jnp.einsum("jf,jd->fd", phi_k_CxF, v_CxDv)
    z_F = z_F + jnp.sum(phi_k_CxF, axis=0)
    return (state_FxDv, z_F), (num_CxDv, den_C)

  init = (jnp.zeros((f, dv), _F32), jnp.zeros((f,), _F32))
  _, (num, den) = lax.scan(step, init, (blocks(phi_q_TxF), blocks(phi_k_TxF), blocks(v_TxDv)))
  return num.reshape(-1, dv)[:t], den.reshape(-1)[:t]


def linear_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  causal: bool = False,
  feature_map: FeatureMap = elu_plus_one,
  chunk_size: int = DEFAULT_CHUNK,
) -> tuple[chex.Array, chex.Array]:
  """Linear (kernelised) attention for one head, O(T) time and memory.

  ``context_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)`` over the visible keys ``j``
  (all unmasked keys, or ``j <= i`` when ``causal``). Computed in float32, returned in
  ``v``'s dtype. A query with no visible key (or whose kernel sum underflows to 0) gets a
  zero context and zero gradient.

  Args:
    q: queries ``[Tq, D]``.
    k: keys ``[Tk, D]``.
    v: values ``[Tk, Dv]``.
    mask: optional key-padding mask ``[Tk]`` or ``[1, Tk]`` (``True`` = may attend).
    causal: query ``i`` sees keys ``j <= i``; needs ``Tq == Tk``.
    feature_map: ``φ``, elementwise and positive: ``[T, D] -> [T, F]``.
    chunk_size: chunk length ``C`` of the causal scan (clipped to ``T``).

  Returns:
    ``(context [Tq, Dv], log_normalizer [Tq])`` where ``log_normalizer = log Σ_j
    φ(q_i)·φ(k_j)`` (float32; ``finfo(float32).min`` for an empty row).

  References:
    Katharopoulos et al., "Transformers are RNNs: Fast Autoregressive Transformers with
    Linear Attention", ICML 2020.
  """
  chex.assert_rank([q, k, v], 2)
  if k.shape[1] != q.shape[1] or v.shape[0] != k.shape[0]:
    raise ValueError(
      f"expected q [Tq, D], k [Tk, D], v [Tk, Dv]; got {q.shape}, {k.shape}, {v.shape}."
    )
  if causal and q.shape[0] != k.shape[0]:
    raise ValueError(
      f"causal linear attention needs Tq == Tk, got Tq={q.shape[0]}, Tk={k.shape[0]}."
    )
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
  key_valid_K = key_padding(mask, k.shape[0])
  phi_q_QxF = feature_map(q.astype(_F32))
  phi_k_KxF = feature_map(k.astype(_F32))
  if key_valid_K is not None:
    phi_k_KxF = jnp.where(key_valid_K[:, None], phi_k_KxF, 0.0)
  v_KxDv = v.astype(_F32)
  if causal:
    num_QxDv, den_Q = _causal_chunked(phi_q_QxF, phi_k_KxF, v_KxDv, min(chunk_size, q.shape[0]))
  else:
    state_FxDv = jnp.einsum("kf,kd->fd", phi_k_KxF, v_KxDv)
    num_QxDv = jnp.einsum("qf,fd->qd", phi_q_QxF, state_FxDv)
    den_Q = jnp.einsum("qf,f->q", phi_q_QxF, jnp.sum(phi_k_KxF, axis=0))
  return _normalise(num_QxDv, den_Q, v.dtype)


def linear_attention_reference(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  causal: bool = False,
  feature_map: FeatureMap = elu_plus_one,
) -> tuple[chex.Array, chex.Array]:
  """The same quantity as :func:`linear_attention` from the explicit ``[Tq, Tk]`` kernel.

  O(T²): for tests and for checking a new feature map. Same arguments and returns.
  """
  chex.assert_rank([q, k, v], 2)
  key_valid_K = key_padding(mask, k.shape[0])
  kernel_QxK = jnp.einsum("qf,kf->qk", feature_map(q.astype(_F32)), feature_map(k.astype(_F32)))
  if key_valid_K is not None:
    kernel_QxK = jnp.where(key_valid_K[None, :], kernel_QxK, 0.0)
  if causal:
    kernel_QxK = jnp.where(jnp.tril(jnp.ones(kernel_QxK.shape, bool)), kernel_QxK, 0.0)
  num_QxDv = jnp.einsum("qk,kd->qd", kernel_QxK, v.astype(_F32))
  return _normalise(num_QxDv, jnp.sum(kernel_QxK, axis=-1), v.dtype)


def multi_head_linear_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  causal: bool = False,
  feature_map: FeatureMap = elu_plus_one,
  chunk_size: int = DEFAULT_CHUNK,
) -> tuple[chex.Array, chex.Array]:
  """:func:`linear_attention` vmapped over heads and batch.

  Args:
    q: ``[B, T, H, D]``.
    k: ``[B, S, H, D]``.
    v: ``[B, S, H, Dv]``.
    mask: optional key padding ``[B | 1, 1, 1, S]`` (rank 4, as in
      :func:`attnlab.multi_head_soft_attention`).
    causal, feature_map, chunk_size: as in :func:`linear_attention`.

  Returns:
    ``(context [B, T, H, Dv], log_normalizer [B, H, T])``.
  """
  multihead.check_layout(q, k, v, mask)
  if mask is not None and mask.shape[2] != 1:
    raise ValueError(f"linear attention takes a key-padding mask [B, 1, 1, S], got {mask.shape}.")

  def per_head(q_TxD, k_SxD, v_SxD, mask_S, params, key):
    del params, key
    return linear_attention(
      q_TxD, k_SxD, v_SxD, mask_S, causal=causal, feature_map=feature_map, chunk_size=chunk_size
    )

  return multihead.vmap_heads_and_batch(per_head, q, k, v, mask, None, None, (1, 0))
