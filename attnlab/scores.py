"""Score functions: one head, one example.

Every score function maps ``q [Tq, Dq]`` and ``k [Tk, Dk]`` to ``scores [Tq, Tk]`` and
takes any parameters it needs as keyword arguments, so ``functools.partial(general, w=w)``
is again a score function. Any callable with this contract can be passed as ``score_fn``.

Scores are returned in float32 whatever the input dtype (float64 if an input is float64,
under x64): the contraction accumulates in float32 (``preferred_element_type``), so float16
inputs cannot overflow to ``inf`` in the dot product before the normaliser sees them.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp


def _acc(*xs: chex.Array) -> jnp.dtype:
  """Accumulation/output dtype: float32, or float64 when an input is float64 (x64 mode)."""
  return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _check_qk(q: chex.Array, k: chex.Array) -> None:
  chex.assert_rank([q, k], 2)
  if q.shape[-1] != k.shape[-1]:
    raise ValueError(
      f"query and key feature sizes differ: q has shape {q.shape}, k has shape {k.shape}; "
      "dot-product scores need q [Tq, D] and k [Tk, D] (use `general` or `additive` "
      "for different sizes)."
    )


def dot(q: chex.Array, k: chex.Array) -> chex.Array:
  """Dot-product score ``q kᵀ`` (Luong et al. 2015, "dot").

  Args:
    q: queries ``[Tq, D]``.
    k: keys ``[Tk, D]``.

  Returns:
    ``scores [Tq, Tk]`` in float32.

  References:
    Luong, Pham & Manning, "Effective Approaches to Attention-based Neural Machine
    Translation", EMNLP 2015.
  """
  _check_qk(q, k)
  return jnp.einsum("qd,kd->qk", q, k, preferred_element_type=_acc(q, k))


def scaled_dot(q: chex.Array, k: chex.Array, *, scale: float | None = None) -> chex.Array:
  """Scaled dot-product score ``scale · q kᵀ``, by default ``q kᵀ / sqrt(D)`` (Vaswani et al.).

  Args:
    q: queries ``[Tq, D]``.
    k: keys ``[Tk, D]``.
    scale: the factor; ``None`` is ``1 / sqrt(D)`` (``functools.partial(scaled_dot,
      scale=s)`` is the ``scale=`` of ``jax.nn.dot_product_attention``).

  Returns:
    ``scores [Tq, Tk]``: :func:`dot`'s times ``scale``, in float32.

  References:
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
  """
  _check_qk(q, k)
  # Scale q (Tq*D multiplies) rather than the scores (Tq*Tk), as jax.nn does.
  scale = 1.0 / (q.shape[-1] ** 0.5) if scale is None else scale
  q_scaled = q * jnp.asarray(scale, q.dtype)
  return jnp.einsum("qd,kd->qk", q_scaled, k, preferred_element_type=_acc(q, k))


def general(q: chex.Array, k: chex.Array, *, w: chex.Array) -> chex.Array:
  """Bilinear score ``q W kᵀ`` (Luong et al. 2015, "general").

  Args:
    q: queries ``[Tq, Dq]``.
    k: keys ``[Tk, Dk]``.
    w: bilinear weight ``[Dq, Dk]``.

  Returns:
    ``scores [Tq, Tk]`` in float32.

  References:
    Luong, Pham & Manning, EMNLP 2015.
  """
  chex.assert_rank([q, k, w], 2)
  if w.shape != (q.shape[-1], k.shape[-1]):
    raise ValueError(
      f"`general` needs w of shape [Dq, Dk] = {(q.shape[-1], k.shape[-1])}, got {w.shape}."
    )
  acc = _acc(q, k, w)
  qw_QxDk = jnp.einsum("qd,de->qe", q, w, preferred_element_type=acc)
  return jnp.einsum("qe,ke->qk", qw_QxDk, k.astype(acc))


def additive(
  q: chex.Array, k: chex.Array, *, w_q: chex.Array, w_k: chex.Array, v: chex.Array
) -> chex.Array:
  """Additive score ``vᵀ tanh(W_q q + W_k k)`` (Bahdanau et al. 2015).

  Args:
    q: queries ``[Tq, Dq]``.
    k: keys ``[Tk, Dk]``.
    w_q: query projection ``[Dq, A]``.
    w_k: key projection ``[Dk, A]``.
    v: output vector ``[A]``.

  Returns:
    ``scores [Tq, Tk]`` in float32. Memory is O(Tq·Tk·A): meant for RNN-sized problems.

  References:
    Bahdanau, Cho & Bengio, "Neural Machine Translation by Jointly Learning to Align and
    Translate", ICLR 2015.
  """
  chex.assert_rank([q, k, w_q, w_k, v], [2, 2, 2, 2, 1])
  if (
    w_q.shape[0] != q.shape[-1]
    or w_k.shape[0] != k.shape[-1]
    or not (w_q.shape[1] == w_k.shape[1] == v.shape[0])
  ):
    raise ValueError(
      "`additive` needs w_q [Dq, A], w_k [Dk, A], v [A]; got "
      f"q {q.shape}, k {k.shape}, w_q {w_q.shape}, w_k {w_k.shape}, v {v.shape}."
    )
  acc = _acc(q, k, w_q, w_k, v)
  proj_q_QxA = jnp.einsum("qd,da->qa", q, w_q, preferred_element_type=acc)
  proj_k_KxA = jnp.einsum("kd,da->ka", k, w_k, preferred_element_type=acc)
  hidden_QxKxA = jnp.tanh(proj_q_QxA[:, None, :] + proj_k_KxA[None, :, :])
  return jnp.einsum("qka,a->qk", hidden_QxKxA, v.astype(acc))
