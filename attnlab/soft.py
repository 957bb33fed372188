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


def soft_attention(
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  score_fn: ScoreFn = scores.scaled_dot,
  normalizer: Normalizer = normalizers.softmax,
  dropout_rate: float = 0.0,
  dropout_key: chex.PRNGKey | None = None,
) -> tuple[chex.Array, chex.Array]:
  """Soft attention: ``context = normalizer(score_fn(q, k)) v`` for one head.

  Semantics: weights are 0 at masked keys and sum to 1 over unmasked keys; a query whose
  keys are all masked gets zero weights, a zero context and zero gradient (no NaN, no
  uniform average over padding). Scores and weights are computed in float32; the context is
  accumulated in float32 and returned in ``v``'s dtype.

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
    dropout_rate: probability of dropping each weight (inverted dropout: survivors are
      scaled by ``1 / (1 - rate)``). The returned weights are the ones before dropout.
    dropout_key: PRNG key, required when ``dropout_rate > 0``.

  Returns:
    ``(context [Tq, Dv], weights [Tq, Tk])``.

  References:
    Bahdanau et al., ICLR 2015; Vaswani et al., NeurIPS 2017.
  """
  chex.assert_rank([q, k, v], 2)
  if k.shape[0] != v.shape[0]:
    raise ValueError(f"keys and values need the same length: k {k.shape}, v {v.shape}.")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}.")
  if dropout_rate > 0.0 and dropout_key is None:
    raise ValueError("dropout_rate > 0 needs a dropout_key.")
  mask_QxK = masks_lib.as_query_key_mask(mask, q.shape[0], k.shape[0])
  scores_QxK = score_fn(q, k)
  chex.assert_shape(scores_QxK, (q.shape[0], k.shape[0]))
  # At least float32 (float64 stays float64 under x64) whatever the scores' dtype.
  acc = jnp.promote_types(scores_QxK.dtype, jnp.float32)
  weights_QxK = normalizer(scores_QxK, mask_QxK).astype(acc)
  mixing_QxK = weights_QxK
  if dropout_rate > 0.0:
    keep_QxK = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights_QxK.shape)
    mixing_QxK = jnp.where(keep_QxK, weights_QxK / (1.0 - dropout_rate), 0.0)
  acc_v = jnp.promote_types(acc, v.dtype)
  context_QxDv = jnp.einsum(
    "qk,kd->qd", mixing_QxK.astype(v.dtype), v, preferred_element_type=acc_v
  )
  return context_QxDv.astype(v.dtype), weights_QxK.astype(v.dtype)
