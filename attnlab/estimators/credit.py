"""Credit assignment: which reward each step's attention choice is trained on.

A decoder that picks a source position at every output step ``t`` gets a per-step reward
``r_t`` (typically ``log p(y_t | z_{≤t}, ...)``). The REINFORCE term of step ``t`` may use:

  * ``PER_STEP``: ``r_t`` only. Unbiased only when the choice ``z_t`` cannot influence
    later rewards (e.g. a decoder fed the expected context, Deng et al. 2018).
  * ``REWARD_TO_GO``: ``Σ_{s ≥ t} r_s``. Unbiased whenever ``z_t`` can only influence the
    present and the future (the causal structure of a decoder): the default.
  * ``TOTAL``: ``Σ_s r_s`` for every step. Unbiased, but adds the past rewards' noise.

All three zero the padded steps, whose rewards never reach any step.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from attnlab.enums import Choice

_F32 = jnp.float32


class CreditAssignment(Choice):
  """Which reward the score-function term of each step uses (see module docstring)."""

  PER_STEP = "per_step"
  REWARD_TO_GO = "reward_to_go"
  TOTAL = "total"


def _check(rewards_T: chex.Array, mask_T: chex.Array) -> None:
  chex.assert_rank([rewards_T, mask_T], 1)
  chex.assert_equal_shape([rewards_T, mask_T])
  if mask_T.dtype != jnp.bool_:
    raise TypeError(f"mask_T must be boolean (True = real step), got dtype {mask_T.dtype}.")


def reward_to_go(rewards_T: chex.Array, mask_T: chex.Array, *, discount: float = 1.0) -> chex.Array:
  """Reward-to-go of one sequence: ``G_t = m_t Σ_{s ≥ t} γ^{s-t} m_s r_s``.

  Padded steps (``m_s = False``) contribute nothing to any ``G_t`` (their reward may be
  NaN) and get ``G_t = 0``. ``vmap`` over the batch axis for ``[B, T]`` rewards.

  Args:
    rewards_T: ``[T]`` per-step rewards.
    mask_T: ``[T]`` bool, ``True`` at real (non-padded) steps.
    discount: ``γ`` in ``[0, 1]``; 1 (the default) is the plain sum of future rewards.

  Returns:
    ``[T]`` float32 reward-to-go.

  References:
    Sutton & Barto, "Reinforcement Learning: An Introduction", 2nd ed. 2018, §13.3.
  """
  _check(rewards_T, mask_T)
  if isinstance(discount, (int, float)) and not 0.0 <= discount <= 1.0:
    raise ValueError(f"discount must be in [0, 1], got {discount}.")
  rewards_T = jnp.where(mask_T, rewards_T.astype(_F32), 0.0)

  def step(future, reward):
    total = reward + discount * future
    return total, total

  _, returns_T = jax.lax.scan(step, jnp.zeros((), _F32), rewards_T, reverse=True)
  return jnp.where(mask_T, returns_T, 0.0)


def assign_credit(
  rewards_T: chex.Array, mask_T: chex.Array, credit: str | CreditAssignment
) -> chex.Array:
  """Per-step rewards for the score-function term of one sequence (``vmap`` for a batch).

  Args:
    rewards_T: ``[T]`` per-step rewards.
    mask_T: ``[T]`` bool, ``True`` at real steps.
    credit: a :class:`CreditAssignment` or its name: ``"per_step"`` (``m_t r_t``),
      ``"reward_to_go"`` (``m_t Σ_{s≥t} m_s r_s``) or ``"total"`` (``m_t Σ_s m_s r_s``).

  Returns:
    ``[T]`` float32, 0 at padded steps.
  """
  credit = CreditAssignment.parse(credit, name="credit")
  _check(rewards_T, mask_T)
  rewards_T = jnp.where(mask_T, rewards_T.astype(_F32), 0.0)
  if credit is CreditAssignment.PER_STEP:
    return rewards_T
  if credit is CreditAssignment.REWARD_TO_GO:
    return reward_to_go(rewards_T, mask_T)
  return jnp.where(mask_T, jnp.broadcast_to(jnp.sum(rewards_T), rewards_T.shape), 0.0)
