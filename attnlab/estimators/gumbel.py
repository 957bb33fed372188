"""Gumbel-softmax: the relaxed (reparameterised) alternative to score-function estimators."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from attnlab import normalizers

_F32 = jnp.float32


def gumbel_softmax(
  key: chex.PRNGKey,
  scores: chex.Array,
  mask: chex.Array | None = None,
  *,
  temperature: float = 1.0,
  straight_through: bool = False,
) -> chex.Array:
  """A Gumbel-softmax (Concrete) sample over the last axis, optionally straight-through.

  ``y = softmax((s + g) / τ)`` over the unmasked keys, with ``g_k ~ Gumbel(0, 1)`` i.i.d.
  ``argmax_k (s_k + g_k)`` is an exact sample of ``Categorical(softmax(s))`` for every
  ``τ`` (the Gumbel-max trick); as ``τ → 0`` ``y`` approaches that one-hot sample, and its
  gradient is a biased, lower-variance surrogate of the discrete one.

  With ``straight_through=True`` the forward value is exactly the one-hot of
  ``argmax_k (s_k + g_k)`` and the backward pass is the gradient of the soft sample ``y``
  (``one_hot + (y - stop_gradient(y))``, which is exact in floating point).

  Masking follows :func:`attnlab.normalizers.softmax`: masked keys get exactly 0 and no
  gradient; a fully masked row gives all zeros (also straight-through) and zero gradient.

  Args:
    key: PRNG key for the Gumbel noise.
    scores: ``[..., Tk]`` logits (unnormalised log-probabilities), any float dtype.
    mask: bool broadcastable to ``scores.shape``; ``True`` = may attend. ``None`` = all.
    temperature: ``τ > 0`` of the relaxation.
    straight_through: one-hot forward, soft backward.

  Returns:
    weights of the shape and dtype of ``scores``.

  References:
    Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017;
    Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017; Bengio, Léonard &
    Courville, "Estimating or Propagating Gradients Through Stochastic Neurons", 2013.
  """
  scores = jnp.asarray(scores)
  if scores.ndim < 1:
    raise ValueError(f"scores must have a key axis [..., Tk], got shape {scores.shape}.")
  logits = scores.astype(_F32)
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
      raise TypeError(f"mask must be boolean (True = attend), got dtype {mask.dtype}.")
    try:
      mask = jnp.broadcast_to(mask, scores.shape)
    except ValueError:
      raise ValueError(
        f"mask of shape {mask.shape} does not broadcast to scores {scores.shape}."
      ) from None
    # Padding may carry -inf scores: zero them before adding noise (no inf - inf).
    logits = jnp.where(mask, logits, 0.0)
  perturbed = logits + jax.random.gumbel(key, logits.shape, _F32)
  soft = normalizers.softmax(perturbed, mask, temperature=temperature)
  if not straight_through:
    return soft.astype(scores.dtype)
  if mask is None:
    index = jnp.argmax(perturbed, axis=-1)
    hard = jax.nn.one_hot(index, scores.shape[-1], dtype=_F32)
  else:
    index = jnp.argmax(jnp.where(mask, perturbed, -jnp.inf), axis=-1)
    hard = jax.nn.one_hot(index, scores.shape[-1], dtype=_F32)
    hard = jnp.where(mask & jnp.any(mask, axis=-1, keepdims=True), hard, 0.0)
  # `soft - stop_gradient(soft)` is exactly 0 forward, so the value is exactly one-hot.
  return (hard + (soft - jax.lax.stop_gradient(soft))).astype(scores.dtype)
