"""Variational attention and multi-sample bounds: KL, the exact ELBO, and VIMCO.

Variational attention (Deng et al. 2018) trains an amortised posterior ``q(z | x, y)`` over
the attended source position beside the prior ``p(z | x)`` (the model's attention). The
per-step evidence lower bound is

  ``ELBO = E_q[log p(y | z)] - KL(q ‖ p) <= log p(y)``

and its exact value and gradient come from enumerating the ``S`` positions
(:func:`enumerated_elbo`, the zero-variance reference of the variational estimators, as
:func:`attnlab.estimators.enumerated_bound` is for hard attention). With ``q = p`` it is the
hard-attention bound. Sampling ``z ~ q`` instead, ``E_q[log p(y | z)]`` is estimated with
:func:`attnlab.estimators.score_function_surrogate` and ``KL`` (:func:`categorical_kl`) stays
exact. With ``K`` samples ``z_k ~ q`` and weights ``w_k = p(z_k) p(y | z_k) / q(z_k)``, the
multi-sample bound ``log (1/K) Σ_k w_k`` (Burda et al. 2016) rises towards ``log p(y)`` as
``K`` grows; :func:`vimco_surrogate` gives its VIMCO gradient (Mnih & Rezende 2016).

Every function is for ONE distribution ``[S]`` or one example's ``K`` samples; ``vmap``
over steps and batch. Convention, as for :func:`score_function_surrogate`: minimising a
surrogate ascends its bound.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from attnlab.estimators.enumeration import masked_rows

_F32 = jnp.float32


def categorical_kl(
  log_q_S: chex.Array, log_p_S: chex.Array, mask_S: chex.Array | None = None
) -> chex.Array:
  """``KL(q ‖ p) = Σ_z q_z (log q_z - log p_z)`` over the unmasked positions.

  Positions where ``q_z`` is 0 (``log q_z = -inf``) contribute 0 whatever ``log p_z`` is
  (``0 log 0 = 0``). Where ``q_z > 0`` and ``p_z = 0`` the divergence is ``+inf``, as it
  should be; training code floors ``log p`` to keep it finite.

  Args:
    log_q_S: ``[S]`` log-probabilities of ``q``, normalised over the unmasked positions.
    log_p_S: ``[S]`` log-probabilities of ``p``, normalised likewise.
    mask_S: ``[S]`` bool, ``True`` at valid positions, or ``None`` (all valid). Masked
      entries of the inputs may be anything, ``-inf`` or NaN included. A fully masked row
      gives 0 with zero gradient.

  Returns:
    float32 scalar, ``>= 0`` for normalised inputs.

  References:
    Deng, Kim, Chiu, Guo & Rush, "Latent Alignment and Variational Attention", NeurIPS 2018
    (the KL term of the variational attention objective, eq. 4).
  """
  (log_q_S, log_p_S), mask_S = masked_rows(mask_S, log_q_S, log_p_S)
  q_S = jnp.exp(log_q_S)
  support_S = mask_S & (q_S > 0)
  # `where` before the product: log q - log p is -inf - x or NaN off the support.
  gap_S = jnp.where(support_S, log_q_S - log_p_S, 0.0)
  return jnp.sum(jnp.where(support_S, q_S * gap_S, 0.0))


def enumerated_elbo(
  log_q_S: chex.Array,
  log_p_S: chex.Array,
  log_lik_S: chex.Array,
  mask_S: chex.Array | None = None,
  *,
  kl_weight: float | chex.Array = 1.0,
) -> chex.Array:
  """Exact ELBO ``Σ_z q_z log p(y | z) - KL(q ‖ p)`` by enumerating every position.

  Its ``jax.grad`` is the exact ELBO gradient: w.r.t. the posterior (through ``log_q_S``),
  the prior (through ``log_p_S``) and the likelihood (through ``log_lik_S``). With
  ``log_q_S = log_p_S`` it equals :func:`attnlab.estimators.enumerated_bound`.

  Args:
    log_q_S: ``[S]`` log posterior ``log q(z | x, y)``, normalised over unmasked positions.
    log_p_S: ``[S]`` log prior ``log p(z | x)`` (the attention), normalised likewise.
    log_lik_S: ``[S]`` ``log p(y | z)`` per position.
    mask_S: ``[S]`` bool, ``True`` at valid positions, or ``None``. Masked entries may hold
      anything; a fully masked row gives 0 with zero gradient.
    kl_weight: ``β`` multiplying the KL term (1 gives the ELBO; ``β < 1`` a KL-annealed
      objective that is no longer a bound).

  Returns:
    float32 scalar ``<= log Σ_z p_z p(y | z)`` when ``β = 1``.

  References:
    Deng et al., NeurIPS 2018 ("variational attention, enum"); Kingma & Welling,
    "Auto-Encoding Variational Bayes", ICLR 2014.
  """
  (log_q_S, log_p_S, log_lik_S), mask_S = masked_rows(mask_S, log_q_S, log_p_S, log_lik_S)
  q_S = jnp.exp(log_q_S)
  support_S = mask_S & (q_S > 0)
  # `where` on both factors: off the support log p(y | z) may be -inf, and 0 * inf is NaN.
  log_lik_S = jnp.where(support_S, log_lik_S, 0.0)
  expected_log_lik = jnp.sum(jnp.where(support_S, q_S * log_lik_S, 0.0))
  return expected_log_lik - kl_weight * categorical_kl(log_q_S, log_p_S, mask_S)


def multi_sample_bound(log_weight_K: chex.Array) -> chex.Array:
  """``log (1/K) Σ_k w_k`` from ``[K]`` log weights (a stable log-mean-exp): the IWAE bound.

  References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
  """
  chex.assert_rank(log_weight_K, 1)
  log_weight_K = log_weight_K.astype(_F32)
  return jax.nn.logsumexp(log_weight_K) - jnp.log(float(log_weight_K.shape[0]))


def vimco_surrogate(log_q_K: chex.Array, log_weight_K: chex.Array) -> chex.Array:
  """VIMCO surrogate for ``K`` samples of one example: minimising it ascends the bound.

  With ``L = log (1/K) Σ_k w_k`` (:func:`multi_sample_bound`) and ``L_{-k}`` the same bound
  with ``w_k`` replaced by the geometric mean of the other ``K - 1`` weights (a baseline
  for sample ``k`` that does not depend on ``z_k``), the VIMCO gradient estimate is

    ``∇L ≈ Σ_k w̃_k ∇log w_k + Σ_k (L - L_{-k}) ∇log q(z_k)``,  ``w̃ = softmax(log w)``.

  The surrogate is ``-(L + Σ_k sg(L - L_{-k}) (log q(z_k) - sg(log q(z_k))))`` (``sg``:
  ``jax.lax.stop_gradient``): its value is ``-L`` and its negative gradient is the
  estimate above. The first term flows through ``log_weight_K`` (the pathwise gradient of
  the likelihood, the prior, and the ``-log q`` in the weight); the second through
  ``log_q_K`` only.

  Args:
    log_q_K: ``[K]`` ``log q(z_k)`` of the samples, differentiable.
    log_weight_K: ``[K]`` ``log w_k = log p(z_k) + log p(y | z_k) - log q(z_k)``,
      differentiable, finite. ``K >= 2``.

  Returns:
    float32 scalar (``-L``).

  References:
    Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016, eq. 9-10.
  """
  chex.assert_rank([log_q_K, log_weight_K], 1)
  chex.assert_equal_shape([log_q_K, log_weight_K])
  num_samples = log_weight_K.shape[0]
  if num_samples < 2:
    raise ValueError(f"vimco_surrogate needs K >= 2 samples, got {num_samples}.")
  log_q_K = log_q_K.astype(_F32)
  bound = multi_sample_bound(log_weight_K)
  log_w_K = jax.lax.stop_gradient(log_weight_K.astype(_F32))
  others_mean_K = (jnp.sum(log_w_K) - log_w_K) / (num_samples - 1)
  # Row k: the other samples' log weights, and their geometric mean in place of w_k.
  leave_one_out_KxK = jnp.where(jnp.eye(num_samples, dtype=bool), others_mean_K[:, None], log_w_K)
  loo_bound_K = jax.vmap(multi_sample_bound)(leave_one_out_KxK)
  signal_K = jax.lax.stop_gradient(bound) - loo_bound_K
  score_K = log_q_K - jax.lax.stop_gradient(log_q_K)  # 0 in value, ∇log q in gradient.
  return -(bound + jnp.sum(signal_K * score_K))
