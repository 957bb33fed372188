"""Train / validation / test / OOD splits that never share an example.

Every in-distribution example is assigned to exactly one of TRAIN, VAL and TEST by a stable
hash of its *source* sequence (the target is a function of the source in every attnlab
task, so the source identifies the example). Sampling a split draws candidates and keeps
those whose hash falls in the split's bucket (rejection sampling). Hence:

  * the same source can never appear in two splits, whatever the seeds, batch sizes or
    padded widths (the hash ignores padding);
  * the split is stratified by content, not by length: tiny spaces (the 10 length-1 copy
    sources) are shared out like any other, so a split may hold few or none of them and
    its length distribution is the generator's one conditioned on the bucket;
  * OOD examples have sizes outside the training range, so they are disjoint by
    construction and are not hashed.
"""

from __future__ import annotations

import functools

import numpy as np

from attnlab.enums import Choice

# Multiplier of the polynomial hash (an odd 64-bit constant) and the splitmix64 finaliser
# constants (Steele et al., 2014); all arithmetic wraps modulo 2**64.
_POLY = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class Split(Choice):
  """Data splits. TRAIN/VAL/TEST share the training sizes; OOD uses longer ones."""

  TRAIN = "train"
  VAL = "val"
  TEST = "test"
  OOD = "ood"


@functools.cache
def _powers(width: int) -> np.ndarray:
  powers = np.full(width, _POLY, dtype=np.uint64)
  powers[0] = 1
  powers = np.cumprod(powers, dtype=np.uint64)
  powers.setflags(write=False)  # Cached and shared.
  return powers


def source_fingerprint(inputs_BxS: np.ndarray) -> np.ndarray:
  """A uniform number in ``[0, 1)`` per source sequence, independent of padding width.

  ``h = Σ_s token_s · P^s (mod 2^64)`` followed by the splitmix64 finaliser. PAD is 0 and
  contributes nothing, so the same sequence padded to any width gets the same value.

  Args:
    inputs_BxS: integer ``[B, S]`` PAD(0)-padded source tokens.

  Returns:
    float64 ``[B]`` in ``[0, 1)``.
  """
  inputs_BxS = np.asarray(inputs_BxS)
  if inputs_BxS.ndim != 2:
    raise ValueError(f"inputs must be [B, S], got shape {inputs_BxS.shape}.")
  h_B = (inputs_BxS.astype(np.uint64) * _powers(inputs_BxS.shape[1])[None, :]).sum(
    axis=1, dtype=np.uint64
  )
  h_B ^= h_B >> np.uint64(30)
  h_B *= _MIX1
  h_B ^= h_B >> np.uint64(27)
  h_B *= _MIX2
  h_B ^= h_B >> np.uint64(31)
  return (h_B >> np.uint64(11)).astype(np.float64) / float(2**53)


IN_DISTRIBUTION = (Split.TRAIN, Split.VAL, Split.TEST)


def split_codes(inputs_BxS: np.ndarray, *, val_fraction: float, test_fraction: float) -> np.ndarray:
  """The in-distribution split each source belongs to, as an index into ``IN_DISTRIBUTION``.

  ``u = source_fingerprint(x)``: TRAIN (0) if ``u < 1 - val - test``, VAL (1) if
  ``u < 1 - test``, else TEST (2).

  Args:
    inputs_BxS: integer ``[B, S]`` PAD-padded sources.
    val_fraction: share of the source space given to VAL.
    test_fraction: share given to TEST.

  Returns:
    int ``[B]`` codes in ``{0, 1, 2}``; ``IN_DISTRIBUTION[code]`` is the :class:`Split`.
  """
  u_B = source_fingerprint(inputs_BxS)
  edges = np.array([1.0 - val_fraction - test_fraction, 1.0 - test_fraction])
  return np.searchsorted(edges, u_B, side="right")


def split_fraction(split: Split, *, val_fraction: float, test_fraction: float) -> float:
  """The share of the in-distribution source space that ``split`` owns (1 for OOD)."""
  return {
    Split.TRAIN: 1.0 - val_fraction - test_fraction,
    Split.VAL: val_fraction,
    Split.TEST: test_fraction,
    Split.OOD: 1.0,
  }[split]
