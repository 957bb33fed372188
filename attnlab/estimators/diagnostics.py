"""How good is a gradient estimator? Variance, bias, cosine and SNR from M draws."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _flatten(tree: Any, leading: tuple[int, ...]) -> chex.Array:
  """Concatenates every leaf (float32) into ``leading + [P]``."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("the gradient pytree has no leaves.")
  return jnp.concatenate(
    [jnp.reshape(jnp.asarray(x).astype(_F32), leading + (-1,)) for x in leaves], axis=-1
  )


def _safe_div(num: chex.Array, den: chex.Array) -> chex.Array:
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def gradient_estimate_stats(
  estimate_fn: Callable[[chex.PRNGKey], Any],
  key: chex.PRNGKey,
  num_samples: int,
  exact: Any | None = None,
  *,
  batch_size: int | None = None,
) -> dict[str, chex.Array]:
  """Statistics of ``M`` independent draws of a stochastic gradient estimate.

  Draws ``g_m = estimate_fn(k_m)`` for ``M = num_samples`` keys split from ``key`` (all
  at once with ``jax.vmap``, or in chunks of ``batch_size`` with ``jax.lax.map``), flattens
  each pytree into a vector of ``P`` entries and returns, with ``ḡ = (1/M) Σ_m g_m`` and
  ``g*`` the exact gradient:

  * ``variance``: ``tr Cov[g] = Σ_p (1/(M-1)) Σ_m (g_mp - ḡ_p)²`` (unbiased).
  * ``snr``: ``‖ḡ‖ / sqrt(tr Cov[g])``, the aggregate signal-to-noise ratio of ONE draw
    (Rainforth et al. 2018 use its per-parameter form); finite even at zero variance.
  * ``mean_sq_norm``: ``‖ḡ‖²``.
  * with ``exact``: ``bias_sq = ‖ḡ - g*‖²``; ``bias_sq_floor = variance / M``, its
    expected value when the estimator is unbiased (so only ``bias_sq ≫ bias_sq_floor`` is
    evidence of bias); ``cosine = (1/M) Σ_m cos(g_m, g*)``, the mean cosine similarity of
    a single draw to the exact gradient (1 for exact, ~0 for pure noise; 0 where a
    vector is zero).

  Use the same parameters and batch for every estimator compared, and probe early in
  training: once attention is sharp every estimator has low variance.

  Args:
    estimate_fn: ``key -> gradient pytree``; pure and traceable (it is vmapped).
    key: PRNG key.
    num_samples: ``M >= 2``.
    exact: optional pytree of the same structure and shapes as the estimates, e.g. the
      ``jax.grad`` of :func:`attnlab.estimators.enumerated_bound`.
    batch_size: ``None`` vmaps all ``M`` draws at once; an int bounds memory by mapping
      over chunks of that many draws.

  Returns:
    dict of float32 scalars: ``variance``, ``snr``, ``mean_sq_norm`` and, when ``exact``
    is given, ``bias_sq``, ``bias_sq_floor`` and ``cosine`` (absent otherwise).

  References:
    Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020;
    Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", ICML 2018.
  """
  if not isinstance(num_samples, int) or num_samples < 2:
    raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}.")
  if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
    raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}.")
  keys = jax.random.split(key, num_samples)
  if batch_size is None:
    estimates = jax.vmap(estimate_fn)(keys)
  else:
    estimates = jax.lax.map(estimate_fn, keys, batch_size=batch_size)
  g_MxP = _flatten(estimates, (num_samples,))
  mean_P = jnp.mean(g_MxP, axis=0)
  centered_MxP = g_MxP - jnp.broadcast_to(mean_P, g_MxP.shape)
  variance = jnp.sum(jnp.square(centered_MxP)) / (num_samples - 1)
  mean_sq_norm = jnp.sum(jnp.square(mean_P))
  stats = {
    "variance": variance,
    "snr": jnp.sqrt(mean_sq_norm) / jnp.sqrt(jnp.maximum(variance, jnp.finfo(_F32).tiny)),
    "mean_sq_norm": mean_sq_norm,
  }
  if exact is None:
    return stats
  estimate_def = jax.tree.structure(jax.tree.map(lambda x: x[0], estimates))
  if jax.tree.structure(exact) != estimate_def:
    raise ValueError(
      f"exact has structure {jax.tree.structure(exact)}, estimates have {estimate_def}."
    )
  exact_P = _flatten(exact, ())
  if exact_P.shape != mean_P.shape:
    raise ValueError(f"exact has {exact_P.shape[0]} entries, estimates {mean_P.shape[0]}.")
  norms_M = jnp.linalg.norm(g_MxP, axis=-1)
  exact_norm = jnp.linalg.norm(exact_P)
  cosines_M = _safe_div(g_MxP @ exact_P, norms_M * exact_norm)
  stats["bias_sq"] = jnp.sum(jnp.square(mean_P - exact_P))
  stats["bias_sq_floor"] = variance / num_samples
  stats["cosine"] = jnp.mean(cosines_M)
  return stats
