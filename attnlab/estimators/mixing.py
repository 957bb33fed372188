"""Mixing with expectation: sometimes use the soft (expected) context instead of the sample.

Show, Attend and Tell (Xu et al. 2015, §4.1) replaces the sampled attention by its
expectation with probability 0.5. The paper says per image; the released code draws one
coin per minibatch. Both are available here as an explicit :class:`MixScope`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from attnlab.enums import Choice


class MixScope(Choice):
  """Whether one coin is drawn per example (leading axis) or once for the whole batch."""

  PER_EXAMPLE = "per_example"
  PER_BATCH = "per_batch"


def expectation_mask(
  key: chex.PRNGKey, batch_size: int, probability: float, scope: str | MixScope
) -> chex.Array:
  """Which examples use the expectation: ``[B]`` bool, each ``True`` with ``probability``.

  ``PER_EXAMPLE`` draws ``B`` independent coins; ``PER_BATCH`` draws one and repeats it.
  :func:`mix_with_expectation` with the same ``key`` uses exactly this mask: use it to
  drop the score-function term (and baseline updates) of the examples that did not sample.

  Args:
    key: PRNG key.
    batch_size: ``B``.
    probability: ``p`` in ``[0, 1]``.
    scope: a :class:`MixScope` or its name.

  Returns:
    bool ``[B]``.
  """
  scope = MixScope.parse(scope, name="scope")
  if isinstance(probability, (int, float)) and not 0.0 <= probability <= 1.0:
    raise ValueError(f"probability must be in [0, 1], got {probability}.")
  if scope is MixScope.PER_EXAMPLE:
    return jax.random.bernoulli(key, probability, (batch_size,))
  return jnp.broadcast_to(jax.random.bernoulli(key, probability, ()), (batch_size,))


def mix_with_expectation(
  key: chex.PRNGKey,
  sampled: chex.Array,
  expected: chex.Array,
  probability: float,
  scope: str | MixScope,
) -> chex.Array:
  """With probability ``p``, replace the sampled attention output by the expected one.

  ``out_b = expected_b if c_b else sampled_b`` with ``c = expectation_mask(key, B, p,
  scope)``; the leading axis is the batch. Works for contexts ``[B, T, D]``, one-hot or
  soft weights ``[B, T, S]``, or any two arrays of equal shape. Gradients flow
  into whichever branch was selected.

  Args:
    key: PRNG key (the same key gives the same coins as :func:`expectation_mask`).
    sampled: ``[B, ...]`` output of the sampled (hard) choice.
    expected: ``[B, ...]`` same shape: output of the expectation (soft attention).
    probability: ``p`` in ``[0, 1]``; Show, Attend and Tell used 0.5.
    scope: :class:`MixScope` ``PER_EXAMPLE`` (the paper) or ``PER_BATCH`` (its code).

  Returns:
    ``[B, ...]`` mixed array, with ``sampled``'s dtype promoted with ``expected``'s.

  References:
    Xu et al., "Show, Attend and Tell", ICML 2015, §4.1.
  """
  sampled = jnp.asarray(sampled)
  expected = jnp.asarray(expected)
  if sampled.shape != expected.shape or sampled.ndim < 1:
    raise ValueError(
      f"sampled {sampled.shape} and expected {expected.shape} must have the same shape "
      "with a leading batch axis."
    )
  use_expected_B = expectation_mask(key, sampled.shape[0], probability, scope)
  use_expected = use_expected_B.reshape(use_expected_B.shape + (1,) * (sampled.ndim - 1))
  return jnp.where(jnp.broadcast_to(use_expected, sampled.shape), expected, sampled)
