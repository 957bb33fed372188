"""Sparse normalisers: sparsemax and entmax-1.5, exact sort-based, with closed-form gradients.

Same contract as :func:`attnlab.normalizers.softmax`: ``normalizer(scores, mask=None, *,
temperature=1.0)`` over the last axis with any leading axes; computed in float32 (float64
stays float64) and cast back; masked keys get exactly 0 and never enter the support; a
fully masked row is all-zero with zero gradient. Unlike softmax, both can put exactly 0 on
unmasked keys too.

Both are projections onto the simplex (Blondel et al. 2020, "Learning with Fenchel-Young
Losses"): ``p = [z - τ]_+`` (sparsemax) and ``p = [z/2 - τ]_+²`` (entmax-1.5), where the
threshold ``τ`` makes ``Σ p = 1`` and is found exactly from the sorted scores. The forward
pass sorts; the backward pass does not: ``jax.custom_jvp`` gives the closed-form Jacobian
on the support ``S = {p > 0}``, which is exact (the maps are piecewise smooth) and
O(Tk). Scores are shifted by their row maximum first (both maps are shift-invariant), so
logits of ±1e4 lose no precision in the cumulative sums.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from attnlab import normalizers


def _sorted_shifted(z: chex.Array, mask: chex.Array):
  """Sorts each row's unmasked scores in decreasing order, shifted so the top one is 0.

  Returns:
    ``(z_shifted [..., K], z_sorted [..., K], valid_sorted [..., K], rank [..., K])``:
    ``z_shifted`` is 0 at masked keys; ``z_sorted`` holds the unmasked scores first
    (decreasing) and zeros after them; ``valid_sorted`` marks those first ``n_valid``
    slots; ``rank`` is ``1..K``.
  """
  row_max = jnp.max(jnp.where(mask, z, -jnp.inf), axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked rows
  z_shifted = jnp.where(mask, z - row_max, 0.0)
  # Masked keys sort last as -inf and are then zeroed, so cumulative sums stay finite.
  z_sorted = -jnp.sort(jnp.where(mask, -z_shifted, jnp.inf), axis=-1)
  n_valid = jnp.sum(mask, axis=-1, keepdims=True)
  rank = jnp.broadcast_to(jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype), z.shape)
  valid_sorted = rank <= n_valid.astype(z.dtype)
  z_sorted = jnp.where(valid_sorted, z_sorted, 0.0)
  return z_shifted, z_sorted, valid_sorted, rank


def _gather_at_support(values: chex.Array, support_size: chex.Array) -> chex.Array:
  """``values[..., support_size - 1]`` (index 0 for empty rows, whose result is masked)."""
  index = jnp.maximum(support_size - 1, 0)
  return jnp.take_along_axis(values, index, axis=-1)


@jax.custom_jvp
def _sparsemax_core(z: chex.Array, mask: chex.Array) -> chex.Array:
  """Sparsemax of ``z [..., K]`` (compute dtype) restricted to ``mask``."""
  z_shifted, z_sorted, valid_sorted, rank = _sorted_shifted(z, mask)
  cumsum = jnp.cumsum(z_sorted, axis=-1)
  # Key k (in sorted order) is in the support iff 1 + k z_(k) > Σ_{j<=k} z_(j); true for a prefix.
  in_support = valid_sorted & (1.0 + rank * z_sorted > cumsum)
  support_size = jnp.sum(in_support, axis=-1, keepdims=True)
  tau = (_gather_at_support(cumsum, support_size) - 1.0) / jnp.maximum(support_size, 1)
  return jnp.where(mask, jnp.maximum(z_shifted - tau, 0.0), 0.0)


@_sparsemax_core.defjvp
def _sparsemax_jvp(primals, tangents):
  z, mask = primals
  dz, _ = tangents  # The mask is boolean: its tangent is float0 and carries nothing.
  p = _sparsemax_core(z, mask)
  # J = diag(s) - s sᵀ / |S| with s the support indicator (masked keys have p = 0).
  support = (p > 0).astype(p.dtype)
  size = jnp.sum(support, axis=-1, keepdims=True)
  mean_dz = jnp.sum(support * dz, axis=-1, keepdims=True) / jnp.maximum(size, 1.0)
  return p, support * (dz - mean_dz)


@jax.custom_jvp
def _entmax15_core(z: chex.Array, mask: chex.Array) -> chex.Array:
  """Entmax-1.5 of ``z [..., K]`` (compute dtype) restricted to ``mask``."""
  z_shifted, z_sorted, valid_sorted, rank = _sorted_shifted(z / 2.0, mask)
  # With the top k sorted scores in the support, Σ_{j<=k} (x_j - τ)² = 1 solves to
  # τ_k = mean_k - sqrt((1 - ss_k) / k), ss_k = Σ_{j<=k} (x_j - mean_k)² (Peters et al. 2019).
  mean = jnp.cumsum(z_sorted, axis=-1) / rank
  mean_sq = jnp.cumsum(z_sorted * z_sorted, axis=-1) / rank
  ss = rank * (mean_sq - mean * mean)
  tau = mean - jnp.sqrt(jnp.maximum((1.0 - ss) / rank, 0.0))
  support_size = jnp.sum(valid_sorted & (tau <= z_sorted), axis=-1, keepdims=True)
  tau_star = _gather_at_support(tau, support_size)
  return jnp.where(mask, jnp.square(jnp.maximum(z_shifted - tau_star, 0.0)), 0.0)


@_entmax15_core.defjvp
def _entmax15_jvp(primals, tangents):
  z, mask = primals
  dz, _ = tangents
  p = _entmax15_core(z, mask)
  # J v = s∘v - (s·v / Σs) s with s = sqrt(p); s is 0 off the support and at masked keys.
  s = jnp.sqrt(p)
  s_sum = jnp.sum(s, axis=-1, keepdims=True)
  coef = jnp.sum(s * dz, axis=-1, keepdims=True) / jnp.where(s_sum > 0, s_sum, 1.0)
  return p, s * dz - coef * s


def _apply(core, scores: chex.Array, mask: chex.Array | None, temperature: float):
  z = normalizers.scaled_logits(scores, temperature)
  if mask is None:
    mask = jnp.ones(scores.shape, bool)
  else:
    mask = jnp.asarray(mask)
    fits = mask.ndim <= scores.ndim and all(
      m in (1, s) for m, s in zip(mask.shape[::-1], scores.shape[::-1], strict=False)
    )
    if mask.dtype != jnp.bool_ or not fits:
      raise ValueError(
        f"mask must be bool and broadcastable to the scores' shape {scores.shape}, "
        f"got dtype {mask.dtype} and shape {mask.shape}."
      )
    mask = jnp.broadcast_to(mask, scores.shape)
  return core(z, mask).astype(scores.dtype)


def sparsemax(
  scores: chex.Array, mask: chex.Array | None = None, *, temperature: float = 1.0
) -> chex.Array:
  """Masked sparsemax over the key (last) axis: the Euclidean projection onto the simplex.

  ``weights = argmin_{p ∈ Δ} ||p - z||² = [z - τ]_+`` with ``z = scores / temperature`` and
  ``τ = (Σ_{j<=k*} z_(j) - 1) / k*``, where ``z_(1) >= z_(2) >= ...`` are the sorted unmasked
  scores and ``k* = max{k : 1 + k z_(k) > Σ_{j<=k} z_(j)}``. Gradient (custom JVP): on the
  support ``S``, ``J = I - 1 1ᵀ / |S|``; 0 elsewhere. Lower temperature is sparser (one-hot
  as ``τ → 0``); higher is closer to uniform over the unmasked keys.

  Args:
    scores: ``[..., Tk]`` scores, any float dtype.
    mask: bool, same shape as ``scores``; ``True`` = may attend. ``None`` = all keys.
    temperature: ``τ > 0`` dividing the scores.

  Returns:
    weights of the shape and dtype of ``scores``: exactly 0 off the support, at masked keys
    and in fully masked rows; summing to 1 over each row with an unmasked key.

  References:
    Martins & Astudillo, "From Softmax to Sparsemax: A Sparse Model of Attention and
    Multi-Label Classification", ICML 2016.
  """
  return _apply(_sparsemax_core, scores, mask, temperature)


def entmax15(
  scores: chex.Array, mask: chex.Array | None = None, *, temperature: float = 1.0
) -> chex.Array:
  """Masked 1.5-entmax over the key (last) axis: between softmax and sparsemax.

  ``weights = argmax_{p ∈ Δ} pᵀz + H^T_{1.5}(p) = [z/2 - τ]_+²`` with ``z = scores /
  temperature`` and ``τ`` the exact threshold from the sorted scores ``x = z/2``:
  ``τ_k = mean_k - sqrt((1 - ss_k)/k)`` for the top ``k`` (``ss_k`` their sum of squared
  deviations), taking the largest ``k`` with ``τ_k <= x_(k)``. Gradient (custom JVP): with
  ``s = sqrt(weights)``, ``J v = s∘v - (s·v / Σs) s``.

  Args:
    scores, mask, temperature: as in :func:`sparsemax`.

  Returns:
    weights as those of :func:`sparsemax` (a support at least as large): the shape and dtype
    of ``scores``, exactly 0 off the support, at masked keys and in fully masked rows.

  References:
    Peters, Niculae & Martins, "Sparse Sequence-to-Sequence Models", ACL 2019 (Algorithm 2).
  """
  return _apply(_entmax15_core, scores, mask, temperature)
