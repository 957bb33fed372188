"""Normalisers: turn one head's ``scores [Tq, Tk]`` into attention weights over keys.

A normaliser has the signature ``normalizer(scores, mask=None, *, temperature=1.0)`` and
returns weights of the shape of ``scores`` and the dtype of ``scores``. Semantics shared by
every normaliser in attnlab (and tested for each):

  * Weights are computed in float32 (float64 inputs, under x64, stay float64) and cast
    back to the input dtype.
  * Masked keys (``mask == False``) get weight exactly 0; the weights of a row sum to 1
    over its unmasked keys.
  * A row whose keys are all masked gets all-zero weights and zero gradient: never NaN,
    and never the uniform average over padding that ``jax.nn.softmax`` without ``where``
    or ``jax.nn.dot_product_attention`` produce.

Sparse normalisers (sparsemax, entmax-1.5) live in :mod:`attnlab.sparse_normalizers`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def scaled_logits(scores: chex.Array, temperature: float) -> chex.Array:
  """``scores / temperature`` in at least float32: what every normaliser here normalises.

  Args:
    scores: any float dtype; float16/bfloat16 are widened to float32, float64 (x64 mode)
      keeps its precision.
    temperature: ``τ > 0`` (checked when it is a Python number).

  Returns:
    The scaled scores.

  Raises:
    ValueError: a Python ``temperature <= 0``.
  """
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  return scores.astype(jnp.promote_types(scores.dtype, jnp.float32)) / temperature


def masked_log_softmax(
  scores: chex.Array, mask: chex.Array | None = None, *, temperature: float = 1.0
) -> tuple[chex.Array, chex.Array]:
  """Float32 log-softmax over the last axis that is finite everywhere.

  Args:
    scores: ``[..., Tk]`` logits, any float dtype.
    mask: bool, same shape as ``scores`` (or ``None``).
    temperature: divides the scores.

  Returns:
    ``(log_probs, valid)``: ``log_probs [..., Tk]`` float32 (or float64), equal to the
    log-softmax at unmasked keys and 0 at masked keys and in fully masked rows (never ``-inf``);
    ``valid [..., Tk]`` bool, ``True`` where the key is unmasked.
  """
  logits = scaled_logits(scores, temperature)
  if mask is None:
    return jax.nn.log_softmax(logits, axis=-1), jnp.ones(logits.shape, bool)
  # The max is a constant shift: no gradient through it, and a finite value for empty rows.
  row_max = jax.lax.stop_gradient(
    jnp.max(jnp.where(mask, logits, jnp.finfo(logits.dtype).min), axis=-1, keepdims=True)
  )
  # `where` before exp: masked logits may be -inf/huge; their gradient must be exactly 0.
  shifted = jnp.where(mask, logits - row_max, 0.0)
  exp = jnp.where(mask, jnp.exp(shifted), 0.0)
  denom = jnp.sum(exp, axis=-1, keepdims=True)
  log_denom = jnp.log(jnp.where(denom > 0, denom, 1.0))
  return jnp.where(mask, shifted - log_denom, 0.0), mask


def softmax(
  scores: chex.Array, mask: chex.Array | None = None, *, temperature: float = 1.0
) -> chex.Array:
  """Masked softmax over the key (last) axis, computed in float32.

  ``weights_k = exp(s_k / τ) / Σ_{j unmasked} exp(s_j / τ)`` at unmasked keys, 0 elsewhere;
  all-zero for a fully masked row.

  Args:
    scores: ``[..., Tk]`` scores, any float dtype.
    mask: bool, same shape as ``scores``; ``True`` = may attend. ``None`` = all keys.
    temperature: ``τ > 0``; lower is sharper.

  Returns:
    weights of the shape and dtype of ``scores``.
  """
  if mask is None:
    logits = scaled_logits(scores, temperature)
    weights = jax.nn.softmax(logits, axis=-1)
  else:
    log_probs, valid = masked_log_softmax(scores, mask, temperature=temperature)
    weights = jnp.where(valid, jnp.exp(log_probs), 0.0)
  return weights.astype(scores.dtype)
