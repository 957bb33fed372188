"""The score-function (REINFORCE) surrogate: a scalar whose gradient is the estimate."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _broadcast_like(name: str, x: chex.Array | float, shape: tuple[int, ...]) -> chex.Array:
  """Explicitly broadcasts ``x`` to ``shape`` (no implicit rank promotion), or raises."""
  x = jnp.asarray(x)
  try:
    return jnp.broadcast_to(x, shape)
  except ValueError:
    raise ValueError(
      f"{name} of shape {x.shape} does not broadcast to the reward shape {shape}."
    ) from None


def score_function_surrogate(
  log_prob: chex.Array,
  reward: chex.Array,
  baseline: chex.Array | float = 0.0,
  *,
  mask: chex.Array | None = None,
) -> chex.Array:
  """REINFORCE surrogate loss: minimising it ascends the expected reward.

  ``surrogate = -Σ_i m_i · sg(r_i - b_i) · log p(z_i)`` where ``sg`` is
  ``jax.lax.stop_gradient`` and the sum runs over every element. Its gradient is
  ``-Σ_i m_i (r_i - b_i) ∇log p(z_i)``, an unbiased estimate of ``-∇ Σ_i E[r_i]`` when
  ``z_i ~ p`` and each ``b_i`` does not depend on ``z_i`` (Williams 1992). So gradient
  *descent* on the surrogate is gradient *ascent* on the expected reward.

  The value of the surrogate is not the loss of anything (its expectation is not
  ``-E[r]``); only its gradient is meaningful. No gradient flows into ``reward`` or
  ``baseline``: when the reward itself depends on parameters (e.g. ``r = log p(y | z)``
  of the decoder), add its pathwise term separately, e.g. ``loss = -Σ r + surrogate``, and
  train a learned baseline with :func:`attnlab.estimators.learned_baseline_loss`.

  Reduction: the SUM over all elements, so per-step, per-sample and per-example terms add
  up; divide by the number of valid tokens (or by ``K`` for ``K`` samples per example)
  yourself when a mean is wanted.

  Args:
    log_prob: ``[...]`` log-probability of each sampled choice, differentiable (e.g.
      :attr:`attnlab.HardAttentionOutput.log_prob`).
    reward: ``[...]`` same shape as ``log_prob``; the reward credited to each choice
      (e.g. :func:`attnlab.estimators.reward_to_go` of per-step log-likelihoods).
    baseline: scalar or array broadcastable to ``reward.shape`` (e.g. an EMA baseline
      ``[T]`` for rewards ``[B, T]``). It must not depend on the sample it is applied to.
    mask: optional bool broadcastable to ``reward.shape``; ``False`` elements (padding,
      fully masked queries) contribute exactly 0 to value and gradient, even if their
      rewards are NaN or infinite.

  Returns:
    float32 scalar.

  References:
    Williams, "Simple statistical gradient-following algorithms for connectionist
    reinforcement learning", Machine Learning 1992; Mohamed et al., "Monte Carlo Gradient
    Estimation in Machine Learning", JMLR 2020.
  """
  log_prob = jnp.asarray(log_prob)
  reward = jnp.asarray(reward)
  if log_prob.shape != reward.shape:
    raise ValueError(
      f"log_prob {log_prob.shape} and reward {reward.shape} must have the same shape."
    )
  baseline = _broadcast_like("baseline", baseline, reward.shape)
  advantage = jax.lax.stop_gradient(reward.astype(_F32) - baseline.astype(_F32))
  log_prob = log_prob.astype(_F32)
  if mask is not None:
    mask = _broadcast_like("mask", mask, reward.shape)
    if mask.dtype != jnp.bool_:
      raise TypeError(f"mask must be boolean (True = counts), got dtype {mask.dtype}.")
    # `where` on both factors: a NaN advantage at padding must not reach value or gradient.
    advantage = jnp.where(mask, advantage, 0.0)
    log_prob = jnp.where(mask, log_prob, 0.0)
  return -jnp.sum(advantage * log_prob)
