"""Baselines (control variates) for the score-function estimator.

A baseline ``b`` turns the REINFORCE term ``r ∇log p(z)`` into ``(r - b) ∇log p(z)``. It
keeps the estimate unbiased as long as ``b`` does not depend on the sample ``z`` it is
applied to, since ``E_z[b ∇log p(z)] = b ∇Σ_z p(z) = 0``; a good one (close to ``E[r]``)
removes most of the variance. Every baseline here obeys that rule:

  * ``NONE``: ``b = 0``.
  * ``EMA``: a per-step exponential moving average of past batches' rewards (Xu et al.
    2015 used decay 0.9). Read it *before* updating it with the current batch.
  * ``LEARNED``: ``b = f_ψ(h)``, a value head on sample-independent inputs, regressed on
    the reward with :func:`learned_baseline_loss` (Mnih et al. 2014; Ba et al. 2015).
  * ``RLOO`` (leave one out): ``K`` samples per example; sample ``k``'s baseline is the mean
    of the other ``K - 1`` rewards (Kool et al. 2019).
  * ``SOFT``: the reward of the deterministic soft-attention (expected) context under the
    same decoder (Deng et al. 2018, var-attn).

:func:`select_baseline` switches between them by name (one config key).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from attnlab.enums import Choice

_F32 = jnp.float32


class BaselineKind(Choice):
  """The baselines of :func:`select_baseline` (see module docstring)."""

  NONE = "none"
  EMA = "ema"
  LEARNED = "learned"
  RLOO = "rloo"  # leave one out
  SOFT = "soft"


class EmaBaseline(NamedTuple):
  """State of the per-step EMA baseline (a pytree: carry it in the train state).

  Attributes:
    value: ``[T]`` float32 current baseline for each output step.
    count: ``[T]`` int32 number of updates in which step ``t`` had at least one real
      (unpadded) reward; a step with ``count 0`` has never been seen and has value 0.
  """

  value: chex.Array
  count: chex.Array


def ema_baseline_init(num_steps: int) -> EmaBaseline:
  """A fresh per-step EMA baseline for sequences of up to ``num_steps`` output steps.

  Args:
    num_steps: the maximum number of output steps ``T`` (>= 1).

  Returns:
    :class:`EmaBaseline` with zero values and counts.
  """
  if not isinstance(num_steps, int) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
  return EmaBaseline(value=jnp.zeros((num_steps,), _F32), count=jnp.zeros((num_steps,), jnp.int32))


def _check_ema_length(state: EmaBaseline, num_steps: int) -> int:
  capacity = state.value.shape[0]
  if num_steps > capacity:
    raise ValueError(
      f"rewards have {num_steps} steps but the EMA baseline was initialised for "
      f"{capacity}; call ema_baseline_init({num_steps}) or larger."
    )
  return capacity


def ema_baseline_update(
  state: EmaBaseline, rewards_BxT: chex.Array, mask_BxT: chex.Array, decay: float = 0.9
) -> EmaBaseline:
  """Per-step EMA update, ignoring padded positions.

  For each step ``t`` with at least one real reward in the batch, with
  ``mean_t = Σ_b m_bt r_bt / Σ_b m_bt``:
  ``b_t ← decay · b_t + (1 - decay) · mean_t``, except on the first update of step ``t``
  where ``b_t ← mean_t`` (no bias towards the zero initial value; Xu et al. 2015 started
  from 0). Steps with no real reward in this batch keep their value and count. Rewards are
  under ``stop_gradient``.

  Use the baseline from :func:`ema_baseline_value` *before* this update with the same
  batch: a baseline that has seen the current sample is correlated with it (biased).

  Args:
    state: :class:`EmaBaseline` from :func:`ema_baseline_init` or a previous update.
    rewards_BxT: ``[B, T]`` per-step rewards, ``T <= num_steps`` (steps beyond ``T`` are
      treated as padded).
    mask_BxT: ``[B, T]`` bool, ``True`` at real steps.
    decay: in ``[0, 1)``; 0.9 as in Show, Attend and Tell.

  Returns:
    The updated :class:`EmaBaseline`.

  References:
    Xu et al., "Show, Attend and Tell", ICML 2015 (§4.1, moving-average baseline).
  """
  chex.assert_rank([rewards_BxT, mask_BxT], 2)
  chex.assert_equal_shape([rewards_BxT, mask_BxT])
  if mask_BxT.dtype != jnp.bool_:
    raise TypeError(f"mask_BxT must be boolean (True = real step), got {mask_BxT.dtype}.")
  if isinstance(decay, (int, float)) and not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay}.")
  num_steps = rewards_BxT.shape[1]
  capacity = _check_ema_length(state, num_steps)
  rewards_BxT = jnp.where(mask_BxT, jax.lax.stop_gradient(rewards_BxT).astype(_F32), 0.0)
  count_T = jnp.sum(mask_BxT, axis=0)
  seen_T = count_T > 0
  batch_mean_T = jnp.sum(rewards_BxT, axis=0) / jnp.maximum(count_T, 1)
  # Steps beyond the batch's T are unseen this time.
  pad = capacity - num_steps
  seen_T = jnp.pad(seen_T, (0, pad))
  batch_mean_T = jnp.pad(batch_mean_T, (0, pad))
  averaged_T = decay * state.value + (1.0 - decay) * batch_mean_T
  new_value_T = jnp.where(state.count > 0, averaged_T, batch_mean_T)
  return EmaBaseline(
    value=jnp.where(seen_T, new_value_T, state.value),
    count=state.count + seen_T.astype(jnp.int32),
  )


def ema_baseline_value(state: EmaBaseline, num_steps: int | None = None) -> chex.Array:
  """The per-step baseline ``[T]`` (first ``num_steps`` steps; all when ``None``).

  Broadcast it explicitly to ``[B, T]``, or pass it as the ``baseline`` of
  :func:`attnlab.estimators.score_function_surrogate`, which broadcasts it.
  """
  if num_steps is None:
    return state.value
  _check_ema_length(state, num_steps)
  return state.value[:num_steps]


def leave_one_out_baseline(rewards_KxN: chex.Array) -> chex.Array:
  """RLOO baseline: each sample's baseline is the mean of the other ``K - 1`` rewards.

  ``b_k = (Σ_j r_j - r_k) / (K - 1)`` over axis 0. With ``K`` independent samples per
  example, ``(1/K) Σ_k (r_k - b_k) ∇log p(z_k)`` is unbiased because ``b_k`` is a function
  of the other samples only.

  Args:
    rewards_KxN: ``[K, ...]`` rewards of ``K >= 2`` independent samples (any trailing
      shape, e.g. ``[K, B, T]``).

  Returns:
    float32 of the same shape, under ``stop_gradient``.

  References:
    Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!",
    ICLR 2019 workshop.
  """
  rewards_KxN = jnp.asarray(rewards_KxN)
  if rewards_KxN.ndim < 1 or rewards_KxN.shape[0] < 2:
    raise ValueError(
      f"leave_one_out_baseline needs K >= 2 samples on axis 0, got shape {rewards_KxN.shape}."
    )
  num_samples = rewards_KxN.shape[0]
  rewards_KxN = jax.lax.stop_gradient(rewards_KxN).astype(_F32)
  total_1xN = jnp.sum(rewards_KxN, axis=0, keepdims=True)
  return (jnp.broadcast_to(total_1xN, rewards_KxN.shape) - rewards_KxN) / (num_samples - 1)


def learned_baseline_loss(
  prediction: chex.Array, reward: chex.Array, mask: chex.Array | None = None
) -> chex.Array:
  """Regression loss of a learned (value-head) baseline: ``Σ m (b_ψ - sg(r))²``.

  The reward is under ``stop_gradient``, so this term trains only the value head; the
  surrogate stops the baseline's gradient, so the value head is trained only by this term.
  Sum over elements, like :func:`attnlab.estimators.score_function_surrogate`. The head's
  inputs must not depend on the sample it is the baseline for (e.g. the decoder state
  before step ``t``'s choice).

  Args:
    prediction: ``[...]`` the value head's output ``b_ψ``.
    reward: ``[...]`` same shape, the reward the baseline is subtracted from.
    mask: optional bool of the same shape; ``False`` elements contribute nothing.

  Returns:
    float32 scalar.

  References:
    Mnih et al., "Recurrent Models of Visual Attention", NeurIPS 2014; Ba et al.,
    "Multiple Object Recognition with Visual Attention", ICLR 2015.
  """
  prediction = jnp.asarray(prediction)
  reward = jnp.asarray(reward)
  if prediction.shape != reward.shape:
    raise ValueError(f"prediction {prediction.shape} and reward {reward.shape} must match.")
  error = prediction.astype(_F32) - jax.lax.stop_gradient(reward).astype(_F32)
  if mask is not None:
    if mask.shape != reward.shape or mask.dtype != jnp.bool_:
      raise ValueError(f"mask must be bool of shape {reward.shape}, got {mask.dtype} {mask.shape}.")
    error = jnp.where(mask, error, 0.0)
  return jnp.sum(jnp.square(error))


def select_baseline(
  kind: str | BaselineKind,
  reward: chex.Array,
  *,
  ema_state: EmaBaseline | None = None,
  prediction: chex.Array | None = None,
  soft_reward: chex.Array | None = None,
) -> chex.Array:
  """The baseline named by ``kind`` for ``reward``: one config switch for all baselines.

  Args:
    kind: a :class:`BaselineKind` or its name (``"none"``, ``"ema"``, ``"learned"``,
      ``"rloo"`` (leave one out), ``"soft"``).
    reward: ``[..., T]`` rewards; for ``"rloo"`` the leading axis holds the ``K``
      samples of each example (``[K, ...]``).
    ema_state: for ``"ema"``: the :class:`EmaBaseline` *before* this batch's update; its
      per-step values are broadcast along the leading axes of ``reward``.
    prediction: for ``"learned"``: value-head output of ``reward``'s shape.
    soft_reward: for ``"soft"``: reward of the expected (soft) context, ``reward``'s shape.

  Returns:
    float32 baseline of ``reward``'s shape, under ``stop_gradient``.
  """
  kind = BaselineKind.parse(kind, name="baseline")
  reward = jnp.asarray(reward)
  needed = {
    BaselineKind.EMA: ("ema_state", ema_state),
    BaselineKind.LEARNED: ("prediction", prediction),
    BaselineKind.SOFT: ("soft_reward", soft_reward),
  }
  if kind in needed and needed[kind][1] is None:
    raise ValueError(f"baseline {kind.value!r} needs the {needed[kind][0]} argument.")
  if kind is BaselineKind.NONE:
    return jnp.zeros(reward.shape, _F32)
  if kind is BaselineKind.RLOO:
    return leave_one_out_baseline(reward)
  if kind is BaselineKind.EMA:
    if reward.ndim < 1:
      raise ValueError("the EMA baseline needs rewards with a trailing step axis [..., T].")
    value_T = ema_baseline_value(ema_state, reward.shape[-1])
    return jnp.broadcast_to(value_T, reward.shape)
  given = prediction if kind is BaselineKind.LEARNED else soft_reward
  given = jnp.asarray(given)
  if given.shape != reward.shape:
    raise ValueError(
      f"baseline {kind.value!r}: got shape {given.shape}, expected reward's {reward.shape}."
    )
  return jax.lax.stop_gradient(given).astype(_F32)
