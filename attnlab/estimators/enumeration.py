"""Exact enumeration over source positions: the marginal likelihood and the hard bound.

When the output at step ``t`` depends on the chosen position ``z`` only through that step
(e.g. a decoder fed the expected context, or any model whose per-position logits are
available: :attr:`attnlab.modules.outputs.Seq2SeqOutput.position_logits`), the ``S``
possible choices can be summed out exactly. With ``α = p(z | x)`` the attention
distribution and ``p(y | z)`` the likelihood of the target given position ``z``:

  * marginal likelihood  ``log p(y) = log Σ_z α_z p(y | z)``   (:func:`marginal_log_likelihood`)
  * hard-attention bound ``E_α[log p(y | z)] = Σ_z α_z log p(y | z) <= log p(y)``
    (Jensen; :func:`enumerated_bound`). ``jax.grad`` of it is the exact gradient that
    REINFORCE estimates: the zero-variance reference of the diagnostics.

Both are for ONE distribution ``[S]``; ``vmap`` over steps and batch and sum the per-step
values under the target mask.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

_F32 = jnp.float32


def masked_rows(mask_S, *rows_S):
  """Checks ``[S]`` rows and their mask; returns ``(float32 rows with 0 at masked entries,
  mask)``. Masked entries may hold -inf/NaN (padding): they are replaced before any
  arithmetic, so neither a value nor a gradient can see them."""
  chex.assert_rank(rows_S, 1)
  chex.assert_equal_shape(rows_S)
  if mask_S is None:
    mask_S = jnp.ones(rows_S[0].shape, bool)
  else:
    chex.assert_equal_shape([rows_S[0], mask_S])
    if mask_S.dtype != jnp.bool_:
      raise TypeError(f"mask_S must be boolean (True = valid position), got {mask_S.dtype}.")
  return tuple(jnp.where(mask_S, row.astype(_F32), 0.0) for row in rows_S), mask_S


def _prepare(log_alpha_S, log_lik_S, mask_S):
  (log_alpha_S, log_lik_S), mask_S = masked_rows(mask_S, log_alpha_S, log_lik_S)
  return log_alpha_S, log_lik_S, mask_S


def marginal_log_likelihood(
  log_alpha_S: chex.Array, log_lik_S: chex.Array, mask_S: chex.Array | None
) -> chex.Array:
  """Exact marginal log-likelihood ``log Σ_z α_z p(y | z)`` over unmasked positions.

  A masked, stable log-sum-exp: ``m + log Σ_{z valid} exp(log α_z + log p(y|z) - m)`` with
  ``m`` the (stop-gradient) maximum. A fully masked row gives 0 with zero gradient.

  Args:
    log_alpha_S: ``[S]`` log attention probabilities ``log α_z`` (e.g. ``log_softmax``
      of the scores; normalised over the unmasked positions).
    log_lik_S: ``[S]`` ``log p(y | z)`` for each position (e.g. the log-probability of
      the target token with the value at position ``z`` as context).
    mask_S: ``[S]`` bool, ``True`` at valid positions, or ``None`` (all valid). Masked
      entries of the inputs may be anything, including ``-inf`` or NaN.

  Returns:
    float32 scalar.

  References:
    Deng, Kim, Chiu, Guo & Rush, "Latent Alignment and Variational Attention",
    NeurIPS 2018 (the "marginal likelihood" objective).
  """
  log_alpha_S, log_lik_S, mask_S = _prepare(log_alpha_S, log_lik_S, mask_S)
  joint_S = log_alpha_S + log_lik_S
  row_max = jnp.max(jnp.where(mask_S, joint_S, -jnp.inf))
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  exp_S = jnp.where(mask_S, jnp.exp(jnp.where(mask_S, joint_S - row_max, 0.0)), 0.0)
  total = jnp.sum(exp_S)
  # `tiny` keeps an all-zero-likelihood row finite instead of -inf.
  log_total = jnp.log(jnp.maximum(total, jnp.finfo(_F32).tiny))
  return jnp.where(jnp.any(mask_S), row_max + log_total, 0.0)


def enumerated_bound(
  log_alpha_S: chex.Array, log_lik_S: chex.Array, mask_S: chex.Array | None
) -> chex.Array:
  """Exact hard-attention objective ``E_α[log p(y | z)] = Σ_z α_z log p(y | z)``.

  The Jensen lower bound on :func:`marginal_log_likelihood`. Its ``jax.grad`` is exact:
  w.r.t. the attention scores (through ``log_alpha_S``) it is what the score-function
  estimator ``E[(log p(y|z) - b) ∇log α_z]`` estimates, and w.r.t. the decoder (through
  ``log_lik_S``) it is ``Σ_z α_z ∇log p(y | z)``. A fully masked row gives 0 with zero
  gradient.

  Args:
    log_alpha_S: ``[S]`` log attention probabilities, normalised over unmasked positions.
    log_lik_S: ``[S]`` ``log p(y | z)`` per position.
    mask_S: ``[S]`` bool, ``True`` at valid positions, or ``None``.

  Returns:
    float32 scalar.

  References:
    Deng et al., NeurIPS 2018 ("hard attention, enum" objective); Xu et al., "Show,
    Attend and Tell", ICML 2015, eq. 9.
  """
  log_alpha_S, log_lik_S, mask_S = _prepare(log_alpha_S, log_lik_S, mask_S)
  alpha_S = jnp.where(mask_S, jnp.exp(log_alpha_S), 0.0)
  return jnp.sum(jnp.where(mask_S, alpha_S * log_lik_S, 0.0))
