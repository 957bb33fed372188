"""Soft (expected-context) attention for one head and one example."""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from attnlab import masks as masks_lib
from attnlab import normalizers, scores

ScoreFn = Callable[[chex.Array, chex.Array], chex.Array]
Normalizer = Callable[..., chex.Array]


def _mix(weights_QxK: chex.Array, multiplier_QxK: chex.Array | None, v_KxDv: chex.Array):
  """``(weights · multiplier) v``, accumulated in at least float32, returned in ``v``'s dtype."""
  mixing_QxK = weights_QxK if multiplier_QxK is None else weights_QxK * multiplier_QxK
  acc = jnp.promote_types(weights_QxK.dtype, v_KxDv.dtype)
  context_QxDv = jnp.einsum(
    "qk,kd->qd", mixing_QxK.astype(v_KxDv.dtype), v_KxDv, preferred_element_type=acc
  )
  return context_QxDv.astype(v_KxDv.dtype)


@jax.custom_jvp
def _softmax_mix(scores_QxK, mask_QxK, multiplier_QxK, v_KxDv):
  """``(context, weights)`` of masked-softmax attention given the scores.

  A closed-form JVP, ``dp = p ⊙ (ds - Σ_k p ds)``, instead of differentiating through the
  masked log-softmax: its transpose (the backward pass) reuses the forward's weights ``p``
  and makes fewer passes over ``[Tq, Tk]`` arrays; forward mode keeps working. The
  dropout ``multiplier`` is a constant (no derivative).
  """
  weights_QxK = normalizers.softmax(scores_QxK, mask_QxK)
  return _mix(weights_QxK, multiplier_QxK, v_KxDv), weights_QxK


@_softmax_mix.defjvp
def _softmax_mix_jvp(primals, tangents):
  scores_QxK, mask_QxK, multiplier_QxK, v_KxDv = primals
  d_scores_QxK, _, _, d_v_KxDv = tangents
  context_QxDv, weights_QxK = _softmax_mix(scores_QxK, mask_QxK, multiplier_QxK, v_KxDv)
  # Masked keys and fully masked rows have p = 0, hence dp = 0 there.
  d_weights_QxK = weights_QxK * (
    d_scores_QxK - jnp.sum(weights_QxK * d_scores_QxK, axis=-1, keepdims=True)
  )
  d_context_QxDv = _mix(d_weights_QxK, multiplier_QxK, v_KxDv) + _mix(
    weights_QxK, multiplier_QxK, d_v_KxDv
  )
  return (context_QxDv, weights_QxK), (d_context_QxDv, d_weights_QxK)


def soft_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  score_fn: ScoreFn = scores.scaled_dot,
  normalizer: Normalizer = normalizers.softmax,
  bias: chex.Array | None = None,
  dropout_rate: float = 0.0,
  dropout_key: chex.PRNGKey | None = None,
  dropout_mask: chex.Array | None = None,
) -> tuple[chex.Array, chex.Array]:
  """Soft attention: ``context = normalizer(score_fn(q, k) + bias) v`` for one head.

  Semantics: weights are 0 at masked keys and sum to 1 over unmasked keys; a query whose
  keys are all masked gets zero weights, a zero context and zero gradient (no NaN, no
  uniform average over padding). Scores and weights are computed in float32; the context is
  accumulated in float32 and returned in ``v``'s dtype. With the default
  :func:`attnlab.normalizers.softmax` the derivative is a closed-form custom JVP whose
  transpose reuses the forward's weights (same values as autodiff, fewer passes over
  ``[Tq, Tk]``).

  Args:
    q: queries ``[Tq, Dq]``.
    k: keys ``[Tk, Dk]``.
    v: values ``[Tk, Dv]``.
    mask: bool ``[Tq, Tk]`` or key-padding ``[Tk]``; ``True`` = may attend.
    score_fn: ``(q, k) -> scores [Tq, Tk]``, e.g. :func:`attnlab.scores.scaled_dot` or
      ``functools.partial(attnlab.scores.general, w=w)``.
    normalizer: ``(scores, mask) -> weights``, e.g. :func:`attnlab.normalizers.softmax`,
      :func:`attnlab.sparse_normalizers.sparsemax`; use ``functools.partial`` for a
      temperature.
    bias: optional additive score bias, broadcastable to ``[Tq, Tk]`` (as the ``bias`` of
      ``jax.nn.dot_product_attention``: added after scaling, before masking).
    dropout_rate: probability of dropping each weight (inverted dropout: survivors are
      scaled by ``1 / (1 - rate)``). The returned weights are the ones before dropout.
    dropout_key: PRNG key that draws the dropout mask when ``dropout_rate > 0``.
    dropout_mask: alternatively, the keep-mask itself (bool, broadcastable to
      ``[Tq, Tk]``, ``True`` = keep), e.g. one mask shared by every head as Flax's
      ``broadcast_dropout`` does; needs ``dropout_rate > 0``.

  Returns:
    ``(context [Tq, Dv], weights [Tq, Tk])``, both in ``v``'s dtype.

  References:
    Bahdanau et al., ICLR 2015; Vaswani et al., NeurIPS 2017; Srivastava et al., JMLR 2014
    (dropout).
  """
  chex.assert_rank([q, k, v], 2)
  if k.shape[0] != v.shape[0]:
    raise ValueError(f"keys and values need the same length: k {k.shape}, v {v.shape}.")
  q_len, k_len = q.shape[0], k.shape[0]
  keep_QxK = _dropout_keep(dropout_rate, dropout_key, dropout_mask, q_len, k_len)
  mask_QxK = masks_lib.as_query_key_mask(mask, q_len, k_len)
  scores_QxK = score_fn(q, k)
  chex.assert_shape(scores_QxK, (q_len, k_len))
  # At least float32 (float64 stays float64 under x64) whatever the scores' dtype.
  acc = jnp.promote_types(scores_QxK.dtype, jnp.float32)
  scores_QxK = scores_QxK.astype(acc)
  if bias is not None:
    scores_QxK = scores_QxK + _broadcast_pair("bias", bias, q_len, k_len).astype(acc)
  multiplier_QxK = None
  if keep_QxK is not None:
    multiplier_QxK = jnp.where(keep_QxK, 1.0 / (1.0 - dropout_rate), 0.0).astype(acc)
    multiplier_QxK = jax.lax.stop_gradient(multiplier_QxK)
  if normalizer is normalizers.softmax:
    context_QxDv, weights_QxK = _softmax_mix(scores_QxK, mask_QxK, multiplier_QxK, v)
  else:
    weights_QxK = normalizer(scores_QxK, mask_QxK).astype(acc)
    context_QxDv = _mix(weights_QxK, multiplier_QxK, v)
  return context_QxDv, weights_QxK.astype(v.dtype)


def _broadcast_pair(name: str, x: chex.Array, q_len: int, k_len: int) -> chex.Array:
  """Broadcasts a per-(query, key) array of rank <= 2 to ``[Tq, Tk]`` with a clear error."""
  x = jnp.asarray(x)
  try:
    if x.ndim > 2:
      raise ValueError
    return jnp.broadcast_to(x, (q_len, k_len))
  except ValueError:
    raise ValueError(
      f"{name} of shape {x.shape} does not broadcast to [Tq, Tk] = [{q_len}, {k_len}]."
    ) from None


def _dropout_keep(rate, key, keep, q_len: int, k_len: int) -> chex.Array | None:
  """The bool keep-mask ``[Tq, Tk]`` of attention dropout, or ``None`` without dropout."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {rate}.")
  if rate == 0.0:
    if keep is not None:
      raise ValueError("dropout_mask was given but dropout_rate is 0.")
    return None
  if keep is not None:
    keep = jnp.asarray(keep)
    if keep.dtype != jnp.bool_:
      raise TypeError(f"dropout_mask must be boolean (True = keep), got dtype {keep.dtype}.")
    return _broadcast_pair("dropout_mask", keep, q_len, k_len)
  if key is None:
    raise ValueError("dropout_rate > 0 needs a dropout_key (or a dropout_mask).")
  return jax.random.bernoulli(key, 1.0 - rate, (q_len, k_len))
