"""Copy, reverse and sort: the target is a permutation of the source.

Each target position ``i`` repeats the source token at a gold position ``π(i)``; the tasks
differ only in ``π``:

  * copy:    ``π(i) = i``                                   (Graves et al., 2014)
  * reverse: ``π(i) = n - 1 - i``
  * sort:    ``π(i)`` = source index of the i-th element of the *stable* ascending sort
    (Vinyals et al., 2016). With duplicate digits other positions hold the same token;
    :func:`attnlab.metrics.lenient_alignment_accuracy` accepts those.

Sources are ``n`` i.i.d. uniform symbols with ``n`` uniform in the split's length range.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from attnlab.tasks import base
from attnlab.tasks.base import EOS, FIRST_SYMBOL, PAD, Batch
from attnlab.tasks.splits import Split


@dataclasses.dataclass(frozen=True, kw_only=True)
class PermutationTask(base.Task):
  """Shared machinery of copy / reverse / sort.

  Attributes:
    num_symbols: distinct source symbols (token ids ``FIRST_SYMBOL .. FIRST_SYMBOL+num-1``).
    train_lengths: inclusive source-length range of TRAIN/VAL/TEST.
    ood_lengths: inclusive source-length range of OOD (all longer than training).
  """

  num_symbols: int = 10
  train_lengths: tuple[int, int] = (1, 12)
  ood_lengths: tuple[int, int] = (13, 24)

  def __post_init__(self):
    super().__post_init__()
    if not isinstance(self.num_symbols, (int, np.integer)) or self.num_symbols < 1:
      raise ValueError(f"num_symbols must be a positive int, got {self.num_symbols!r}.")
    self._set("train_lengths", base.check_range("train_lengths", self.train_lengths, minimum=1))
    self._set("ood_lengths", base.check_range("ood_lengths", self.ood_lengths, minimum=1))
    base.check_ood_longer("train_lengths", self.train_lengths, "ood_lengths", self.ood_lengths)

  @property
  def vocab_size(self) -> int:
    return FIRST_SYMBOL + self.num_symbols

  def _lengths(self, split: Split | str) -> tuple[int, int]:
    return self.ood_lengths if Split.parse(split, name="split") is Split.OOD else self.train_lengths

  def max_input_len(self, split: Split | str) -> int:
    return self._lengths(split)[1]

  def max_target_len(self, split: Split | str) -> int:
    return self._lengths(split)[1] + 1  # + EOS

  @abc.abstractmethod
  def _gold_positions(self, inputs_BxS: np.ndarray, lengths_B: np.ndarray) -> np.ndarray:
    """int ``[B, S]``: ``π(i)`` for ``i < length`` (any value in ``[0, S)`` beyond)."""

  def _draw_sources(self, rng, n, split):
    low, high = self._lengths(split)
    lengths_B = rng.integers(low, high + 1, size=n)
    valid_BxS = np.arange(high)[None, :] < lengths_B[:, None]
    symbols_BxS = rng.integers(FIRST_SYMBOL, FIRST_SYMBOL + self.num_symbols, size=(n, high))
    return np.where(valid_BxS, symbols_BxS, PAD).astype(np.int32), lengths_B.astype(np.int32)

  def _solve(self, inputs_BxS, input_lengths_B):
    n, width = inputs_BxS.shape
    valid_BxS = np.arange(width)[None, :] < input_lengths_B[:, None]
    gold_BxS = self._gold_positions(inputs_BxS, input_lengths_B)
    # Target width is S + 1: the permuted source, then EOS at position `length`.
    targets_BxT = np.full((n, width + 1), PAD, dtype=np.int32)
    targets_BxT[:, :width] = np.where(
      valid_BxS, np.take_along_axis(inputs_BxS, gold_BxS, axis=1), PAD
    )
    targets_BxT[np.arange(n), input_lengths_B] = EOS
    alignment_BxT = np.full((n, width + 1), -1, dtype=np.int32)
    alignment_BxT[:, :width] = np.where(valid_BxS, gold_BxS, -1)
    return Batch(
      inputs=inputs_BxS,
      input_lengths=input_lengths_B,
      targets=targets_BxT,
      target_lengths=input_lengths_B + 1,
      alignment=alignment_BxT,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CopyTask(PermutationTask):
  """Copy the source: target ``x_0 .. x_{n-1} EOS``, gold alignment ``i -> i``."""

  name = "copy"

  def _gold_positions(self, inputs_BxS, lengths_B):
    return np.broadcast_to(np.arange(inputs_BxS.shape[1]), inputs_BxS.shape)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReverseTask(PermutationTask):
  """Reverse the source: target ``x_{n-1} .. x_0 EOS``, gold alignment ``i -> n - 1 - i``."""

  name = "reverse"

  def _gold_positions(self, inputs_BxS, lengths_B):
    reversed_BxS = lengths_B[:, None] - 1 - np.arange(inputs_BxS.shape[1])[None, :]
    return np.maximum(reversed_BxS, 0)  # Beyond the length: any in-range index.


@dataclasses.dataclass(frozen=True, kw_only=True)
class SortTask(PermutationTask):
  """Stable ascending sort; gold alignment = source index of the i-th sorted element."""

  name = "sort"

  def _gold_positions(self, inputs_BxS, lengths_B):
    # Padding sorts last: PAD (0) is replaced by a key above every symbol.
    keys_BxS = np.where(inputs_BxS == PAD, np.iinfo(np.int32).max, inputs_BxS)
    return np.argsort(keys_BxS, axis=1, kind="stable")
