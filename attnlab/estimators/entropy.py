"""Entropy bonus on the attention distribution (keeps hard attention exploring)."""

from __future__ import annotations

import chex
import jax.numpy as jnp

_F32 = jnp.float32


def entropy_bonus(entropy: chex.Array, mask: chex.Array | None, coefficient: float) -> chex.Array:
  """``λ_e Σ_i m_i H_i``: a bonus to SUBTRACT from the loss (``loss -= entropy_bonus``).

  Maximising it pushes the attention distributions towards higher entropy, which slows
  the collapse of hard attention onto one position before the rewards are informative.
  The gradient is exact (the entropy of a categorical is a deterministic function of its
  logits, e.g. :attr:`attnlab.HardAttentionOutput.entropy`). Sum over elements, like
  :func:`attnlab.estimators.score_function_surrogate`.

  Args:
    entropy: ``[...]`` entropy of each attention distribution (differentiable).
    mask: bool of the same shape (``None`` = all count); padded steps and fully masked
      queries contribute nothing.
    coefficient: ``λ_e >= 0``; Show, Attend and Tell's code used 0.002.

  Returns:
    float32 scalar.

  References:
    Williams & Peng, "Function optimization using connectionist reinforcement learning
    algorithms", 1991; Xu et al., "Show, Attend and Tell", ICML 2015, eq. 12.
  """
  entropy = jnp.asarray(entropy).astype(_F32)
  if isinstance(coefficient, (int, float)) and coefficient < 0:
    raise ValueError(f"coefficient must be >= 0 (a bonus), got {coefficient}.")
  if mask is not None:
    if mask.shape != entropy.shape or mask.dtype != jnp.bool_:
      raise ValueError(
        f"mask must be bool of shape {entropy.shape}, got {mask.dtype} {mask.shape}."
      )
    entropy = jnp.where(mask, entropy, 0.0)
  return coefficient * jnp.sum(entropy)
