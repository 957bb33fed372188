"""Hard (one-position) attention for one head and one example."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from attnlab import masks as masks_lib
from attnlab import normalizers, scores
from attnlab.enums import Choice
from attnlab.soft import ScoreFn


class HardMode(Choice):
  """How :func:`hard_attention` picks a position."""

  SAMPLE = "sample"  # z ~ Categorical(probs): the stochastic layer REINFORCE trains.
  ARGMAX = "argmax"  # z = argmax probs: deterministic evaluation.


class HardAttentionOutput(NamedTuple):
  """Result of :func:`hard_attention` (shapes for one head and one example).

  Attributes:
    context: ``[Tq, Dv]`` the value at the chosen position (0 for fully masked queries).
      Differentiable w.r.t. ``v`` only: no gradient reaches the scores through it.
    index: ``[Tq]`` int32 chosen key position (0 for fully masked queries).
    log_prob: ``[Tq]`` float32 ``log probs[index]``, differentiable w.r.t. the scores
      (and so ``q``, ``k``); the score-function term of REINFORCE. 0 for fully masked rows.
    entropy: ``[Tq]`` float32 entropy of the attention distribution (0 if fully masked).
    probs: ``[Tq, Tk]`` float32 attention distribution (0 at masked keys).
    valid: ``[Tq]`` bool, ``False`` for queries whose keys are all masked.
  """

  context: chex.Array
  index: chex.Array
  log_prob: chex.Array
  entropy: chex.Array
  probs: chex.Array
  valid: chex.Array


def categorical_stats(
  scores_QxK: chex.Array, mask_QxK: chex.Array | None, temperature: float = 1.0
) -> tuple[chex.Array, chex.Array, chex.Array, chex.Array]:
  """Log-probabilities, probabilities, entropy and row validity of a masked categorical.

  Returns:
    ``(log_probs [Tq, Tk], probs [Tq, Tk], entropy [Tq], valid_Q [Tq])``, all finite;
    ``log_probs`` is 0 at masked keys.
  """
  log_probs_QxK, valid_QxK = normalizers.masked_log_softmax(
    scores_QxK, mask_QxK, temperature=temperature
  )
  probs_QxK = jnp.where(valid_QxK, jnp.exp(log_probs_QxK), 0.0)
  entropy_Q = -jnp.sum(probs_QxK * log_probs_QxK, axis=-1)
  return log_probs_QxK, probs_QxK, entropy_Q, jnp.any(valid_QxK, axis=-1)


def hard_attention(
  key: chex.PRNGKey | None,
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  score_fn: ScoreFn = scores.scaled_dot,
  mode: str | HardMode = "sample",
  temperature: float = 1.0,
) -> HardAttentionOutput:
  """Hard attention: each query takes the value at ONE key position.

  ``probs = softmax(score_fn(q, k) / temperature)`` over unmasked keys; ``mode="sample"``
  draws ``index ~ Categorical(probs)``, ``mode="argmax"`` takes the most probable key. The
  context is a gather ``v[index]`` (O(Tq·Dv) work, no Tq×Tk weighted sum). The choice is
  not differentiable: train the scores with a score-function estimator on ``log_prob``
  (see :mod:`attnlab.estimators`), e.g. ``loss = -E[r] ≈ -stop_gradient(r - b) * log_prob``.

  Fully masked queries get ``index 0``, zero context, ``log_prob 0``, ``entropy 0`` and
  ``valid False``.

  Args:
    key: PRNG key (required for ``mode="sample"``, ignored for ``"argmax"``).
    q: queries ``[Tq, Dq]``.
    k: keys ``[Tk, Dk]``.
    v: values ``[Tk, Dv]``.
    mask: bool ``[Tq, Tk]`` or key-padding ``[Tk]``; ``True`` = may attend.
    score_fn: ``(q, k) -> scores [Tq, Tk]``.
    mode: ``"sample"`` or ``"argmax"`` (or a :class:`HardMode`).
    temperature: ``τ > 0`` dividing the scores before the softmax.

  Returns:
    A :class:`HardAttentionOutput`.

  References:
    Xu et al., "Show, Attend and Tell", ICML 2015; Deng et al., "Latent Alignment and
    Variational Attention", NeurIPS 2018.
  """
  mode = HardMode.parse(mode, name="mode")
  chex.assert_rank([q, k, v], 2)
  if k.shape[0] != v.shape[0]:
    raise ValueError(f"keys and values need the same length: k {k.shape}, v {v.shape}.")
  if mode is HardMode.SAMPLE and key is None:
    raise ValueError('hard_attention(mode="sample") needs a PRNG key.')
  q_len, k_len = q.shape[0], k.shape[0]
  mask_QxK = masks_lib.as_query_key_mask(mask, q_len, k_len)
  scores_QxK = score_fn(q, k)
  chex.assert_shape(scores_QxK, (q_len, k_len))
  log_probs_QxK, probs_QxK, entropy_Q, valid_Q = categorical_stats(
    scores_QxK, mask_QxK, temperature
  )
  choice_logits_QxK = jax.lax.stop_gradient(log_probs_QxK)
  if mask_QxK is not None:
    choice_logits_QxK = jnp.where(mask_QxK, choice_logits_QxK, -jnp.inf)
  if mode is HardMode.SAMPLE:
    index_Q = jax.random.categorical(key, choice_logits_QxK, axis=-1)
  else:
    index_Q = jnp.argmax(choice_logits_QxK, axis=-1)
  index_Q = jnp.where(valid_Q, index_Q, 0).astype(jnp.int32)
  log_prob_Q = jnp.take_along_axis(log_probs_QxK, index_Q[:, None], axis=-1)[:, 0]
  context_QxDv = jnp.take(v, index_Q, axis=0)
  context_QxDv = jnp.where(valid_Q[:, None], context_QxDv, jnp.zeros((), v.dtype))
  return HardAttentionOutput(
    context=context_QxDv,
    index=index_Q,
    log_prob=log_prob_Q,
    entropy=entropy_Q,
    probs=probs_QxK,
    valid=valid_Q,
  )
