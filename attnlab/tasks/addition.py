"""Reversed-digit addition (as in flax ``examples/seq2seq``, digits least significant first).

Source: the digits of ``a`` reversed, ``+``, the digits of ``b`` reversed; target: the digits
of ``a + b`` reversed, then EOS. Each operand has a digit count uniform in the split's range
and a value uniform among numbers with that many digits (no leading zeros; 1-digit numbers
include 0).

Alignment convention. Output digit ``i`` depends on two source positions (``a_i`` and
``b_i``) plus a carry, so a single gold position is not defined: by default (``"none"``)
the alignment is -1 everywhere and alignment metrics count no steps for this task. For
diagnostics, ``gold_operand="first"`` (or ``"second"``) uses the position of ``a_i``
(``b_i``), and -1 where that operand has no digit ``i`` (e.g. the final carry).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attnlab.enums import Choice
from attnlab.tasks import base
from attnlab.tasks.base import EOS, FIRST_SYMBOL, PAD, Batch
from attnlab.tasks.splits import Split

# int64 holds the 18-digit sum of two 17-digit operands exactly.
_MAX_DIGITS = 17


class GoldOperand(Choice):
  """Which operand's digit is taken as the gold alignment of each output digit."""

  NONE = "none"  # Undefined: -1 everywhere.
  FIRST = "first"  # Position of a_i.
  SECOND = "second"  # Position of b_i.


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdditionTask(base.Task):
  """Reversed-digit addition ``a + b``.

  Token ids: digits ``FIRST_SYMBOL + [0, 10)``, then ``+``.

  Attributes:
    train_digits: inclusive digit-count range of each operand for TRAIN/VAL/TEST.
    ood_digits: inclusive range for OOD (all above training).
    gold_operand: alignment convention, a :class:`GoldOperand` or its value.
  """

  name = "addition"
  train_digits: tuple[int, int] = (1, 3)
  ood_digits: tuple[int, int] = (4, 5)
  gold_operand: GoldOperand | str = GoldOperand.NONE

  def __post_init__(self):
    super().__post_init__()
    limit = dict(minimum=1, maximum=_MAX_DIGITS)
    self._set("train_digits", base.check_range("train_digits", self.train_digits, **limit))
    self._set("ood_digits", base.check_range("ood_digits", self.ood_digits, **limit))
    base.check_ood_longer("train_digits", self.train_digits, "ood_digits", self.ood_digits)
    self._set("gold_operand", GoldOperand.parse(self.gold_operand, name="gold_operand"))

  @property
  def plus_token(self) -> int:
    return FIRST_SYMBOL + 10

  @property
  def vocab_size(self) -> int:
    return self.plus_token + 1

  def _digits(self, split: Split | str) -> tuple[int, int]:
    return self.ood_digits if Split.parse(split, name="split") is Split.OOD else self.train_digits

  def max_input_len(self, split: Split | str) -> int:
    return 2 * self._digits(split)[1] + 1

  def max_target_len(self, split: Split | str) -> int:
    return self._digits(split)[1] + 2  # a carry digit, EOS

  def _draw_sources(self, rng, n, split):
    low, high = self._digits(split)
    counts_Bx2 = rng.integers(low, high + 1, size=(n, 2))
    smallest_Bx2 = np.where(counts_Bx2 == 1, 0, 10 ** (counts_Bx2 - 1))
    operands_Bx2 = rng.integers(smallest_Bx2, 10**counts_Bx2)
    digits_Bx2xD = (operands_Bx2[:, :, None] // 10 ** np.arange(high)[None, None, :]) % 10
    len_a_B, len_b_B = counts_Bx2[:, 0], counts_Bx2[:, 1]
    # Layout: a's digits at [0, len_a), '+' at len_a, b's digits at len_a + 1 + i.
    inputs_BxS = np.full((n, 2 * high + 1), PAD, dtype=np.int32)
    rows_a, pos_a = np.nonzero(np.arange(high)[None, :] < len_a_B[:, None])
    inputs_BxS[rows_a, pos_a] = FIRST_SYMBOL + digits_Bx2xD[rows_a, 0, pos_a]
    inputs_BxS[np.arange(n), len_a_B] = self.plus_token
    rows_b, pos_b = np.nonzero(np.arange(high)[None, :] < len_b_B[:, None])
    inputs_BxS[rows_b, len_a_B[rows_b] + 1 + pos_b] = FIRST_SYMBOL + digits_Bx2xD[rows_b, 1, pos_b]
    return inputs_BxS, (len_a_B + len_b_B + 1).astype(np.int32)

  def _solve(self, inputs_BxS, input_lengths_B):
    n, width = inputs_BxS.shape
    rows_B = np.arange(n)
    len_a_B = np.argmax(inputs_BxS == self.plus_token, axis=1)
    len_b_B = input_lengths_B - len_a_B - 1
    # Only the first _MAX_DIGITS places can hold operand digits (checked before).
    places = min(width, _MAX_DIGITS)
    place_P = 10 ** np.arange(places, dtype=np.int64)
    pos_P = np.arange(places)
    digits_BxS = np.clip(inputs_BxS.astype(np.int64) - FIRST_SYMBOL, 0, 9)
    a_digits_BxP = np.where(pos_P[None, :] < len_a_B[:, None], digits_BxS[:, :places], 0)
    # b's digit i sits at len_a + 1 + i; gather it to position i.
    b_pos_BxP = np.minimum(len_a_B[:, None] + 1 + pos_P[None, :], width - 1)
    b_digits_BxP = np.where(
      pos_P[None, :] < len_b_B[:, None], np.take_along_axis(digits_BxS, b_pos_BxP, axis=1), 0
    )
    a_B, b_B = a_digits_BxP @ place_P, b_digits_BxP @ place_P
    sums_B = a_B + b_B
    len_sum_B = 1 + (sums_B[:, None] >= 10 ** np.arange(1, _MAX_DIGITS + 1)[None, :]).sum(1)
    # Width h + 2 for sources of width 2h + 1 (as sample); wider if a hand-made sum needs it.
    out_width = max((width - 1) // 2 + 1, int(len_sum_B.max()))
    out_pos_D = np.arange(out_width)
    # Capped exponent: no int64 overflow; places beyond the sum's length become PAD.
    sum_digits_BxD = (sums_B[:, None] // 10 ** np.minimum(out_pos_D, _MAX_DIGITS)[None, :]) % 10
    targets_BxT = np.full((n, out_width + 1), PAD, dtype=np.int32)
    targets_BxT[:, :out_width] = np.where(
      out_pos_D[None, :] < len_sum_B[:, None], FIRST_SYMBOL + sum_digits_BxD, PAD
    )
    targets_BxT[rows_B, len_sum_B] = EOS

    alignment_BxT = np.full((n, out_width + 1), -1, dtype=np.int32)
    if self.gold_operand is not GoldOperand.NONE:
      first = self.gold_operand is GoldOperand.FIRST
      operand_len_B = len_a_B if first else len_b_B
      offset_B = np.zeros(n, np.int64) if first else len_a_B + 1
      defined_BxD = out_pos_D[None, :] < np.minimum(len_sum_B, operand_len_B)[:, None]
      alignment_BxT[:, :out_width] = np.where(defined_BxD, offset_B[:, None] + out_pos_D, -1)
    return Batch(
      inputs=inputs_BxS,
      input_lengths=input_lengths_B,
      targets=targets_BxT,
      target_lengths=(len_sum_B + 1).astype(np.int32),
      alignment=alignment_BxT,
    )

  def _check_structure(self, inputs_BxS, input_lengths_B):
    for row, (tokens, length) in enumerate(zip(inputs_BxS, input_lengths_B, strict=True)):
      plus = np.nonzero(tokens[:length] == self.plus_token)[0]
      if not (
        plus.size == 1 and 0 < plus[0] <= _MAX_DIGITS and 0 < length - 1 - plus[0] <= _MAX_DIGITS
      ):
        raise ValueError(
          f"row {row} {tokens[:length].tolist()}: expected reversed digits, one '+' "
          f"({self.plus_token}), reversed digits (each operand 1-{_MAX_DIGITS} digits)."
        )
