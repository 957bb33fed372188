"""Shared vocabulary, the :class:`Batch` contract and the :class:`Task` base class.

A task is a frozen dataclass of parameters whose :meth:`Task.sample` is a pure function of a
``numpy.random.Generator``: ``task.sample(np.random.default_rng([seed, step]), 64, "train")``
gives the same batch for the same ``(seed, step)`` on any machine. Every batch of a split
has the same padded shape (the split's maxima), so a jitted step never recompiles.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar, NamedTuple

import jax.numpy as jnp
import numpy as np

from attnlab.tasks import splits
from attnlab.tasks.splits import Split

# The vocabulary every task shares; task symbols start at FIRST_SYMBOL.
PAD = 0
BOS = 1
EOS = 2
FIRST_SYMBOL = 3

# Entropy tag that keeps eval-set streams apart from the `default_rng([seed, step])` training
# streams (a different number of entropy words gives an unrelated SeedSequence anyway).
_EVAL_STREAM = 0x6576616C  # "eval"
# Rejection rounds before sampling gives up on a (nearly) empty split.
_MAX_ROUNDS = 64


class Batch(NamedTuple):
  """A padded batch of examples (numpy, int32).

  Attributes:
    inputs: ``[B, S]`` source tokens, PAD-padded; no BOS/EOS (the encoder sees lengths).
    input_lengths: ``[B]`` number of source tokens.
    targets: ``[B, T]`` target tokens ending with EOS, PAD-padded.
    target_lengths: ``[B]`` number of target tokens, EOS included.
    alignment: ``[B, T]`` gold source position per target step; -1 at EOS, at padding and
      where no single position is defined.
  """

  inputs: np.ndarray
  input_lengths: np.ndarray
  targets: np.ndarray
  target_lengths: np.ndarray
  alignment: np.ndarray


def decoder_inputs(targets_BxT):
  """Teacher-forcing decoder inputs: BOS followed by ``targets[:, :-1]``.

  Works on numpy arrays (returns numpy) and on jax arrays, also under ``jit`` (returns jax).

  Args:
    targets_BxT: integer ``[B, T]`` targets.

  Returns:
    ``[B, T]`` of the same dtype: ``out[:, 0] = BOS``, ``out[:, t] = targets[:, t - 1]``.
  """
  xp = np if isinstance(targets_BxT, np.ndarray) else jnp
  if targets_BxT.ndim != 2:
    raise ValueError(f"targets must be [B, T], got shape {targets_BxT.shape}.")
  bos_Bx1 = xp.full((targets_BxT.shape[0], 1), BOS, dtype=targets_BxT.dtype)
  return xp.concatenate([bos_Bx1, targets_BxT[:, :-1]], axis=1)


def grid_coordinates(length: int, grid_width: int | None) -> tuple[np.ndarray, np.ndarray]:
  """Row and column of positions ``0 .. length - 1`` of a grid flattened in reading order.

  ``row = p // grid_width``, ``column = p % grid_width``; ``grid_width=None`` (a sequence) puts
  every position in row 0 at column ``p``. The one formula that tasks and models share.

  Args:
    length: number of (padded) positions ``S``.
    grid_width: columns ``W`` of the grid, or None.

  Returns:
    ``(rows [S], columns [S])`` int32 numpy arrays (static: models use them at trace time).
  """
  if grid_width is not None and (not isinstance(grid_width, (int, np.integer)) or grid_width < 1):
    raise ValueError(f"grid_width must be a positive int or None, got {grid_width!r}.")
  positions_S = np.arange(length, dtype=np.int32)
  if grid_width is None:
    return np.zeros_like(positions_S), positions_S
  return positions_S // grid_width, positions_S % grid_width


def check_range(field: str, value, *, minimum: int, maximum: int | None = None):
  """Validates an inclusive ``(low, high)`` size range and returns it as a tuple of ints."""
  pair = isinstance(value, (tuple, list)) and len(value) == 2
  if not pair or not all(isinstance(v, (int, np.integer)) for v in value):
    raise ValueError(f"{field} must be an inclusive (low, high) pair of ints, got {value!r}.")
  low, high = int(value[0]), int(value[1])
  upper = "" if maximum is None else f" and high <= {maximum}"
  if not (minimum <= low <= high and (maximum is None or high <= maximum)):
    raise ValueError(f"{field} must satisfy {minimum} <= low <= high{upper}, got {value!r}.")
  return (low, high)


def check_ood_longer(train_field: str, train, ood_field: str, ood) -> None:
  """OOD sizes must all exceed the training sizes (that is what makes them OOD)."""
  if ood[0] <= train[1]:
    raise ValueError(
      f"{ood_field}={ood} must start above {train_field}={train} (OOD means longer)."
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task(abc.ABC):
  """Base class of the toy seq2seq tasks.

  Attributes:
    val_fraction: share of the in-distribution source space reserved for VAL.
    test_fraction: share reserved for TEST. TRAIN gets the rest; see
      :mod:`attnlab.tasks.splits` for how the three never overlap.
  """

  name: ClassVar[str]
  val_fraction: float = 0.1
  test_fraction: float = 0.1

  def __post_init__(self):
    for field in ("val_fraction", "test_fraction"):
      value = getattr(self, field)
      if not 0.0 < value < 1.0:
        raise ValueError(f"{field} must be in (0, 1), got {value!r}.")
    if self.val_fraction + self.test_fraction >= 1.0:
      raise ValueError(
        f"val_fraction + test_fraction must be < 1 to leave data for training, got "
        f"{self.val_fraction} + {self.test_fraction}."
      )

  def _set(self, field: str, value) -> None:
    # Normalisation in __post_init__ (e.g. lists from a config -> tuples) on a frozen class.
    object.__setattr__(self, field, value)

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids, specials included."""

  @abc.abstractmethod
  def max_input_len(self, split: Split | str) -> int:
    """Padded source width ``S`` of every batch of ``split``."""

  @abc.abstractmethod
  def max_target_len(self, split: Split | str) -> int:
    """Padded target width ``T`` of every batch of ``split`` (EOS included)."""

  @abc.abstractmethod
  def _draw_sources(
    self, rng: np.random.Generator, n: int, split: Split
  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` i.i.d. sources of ``split``'s sizes: ``(inputs [n, S], input_lengths [n])``."""

  @abc.abstractmethod
  def _solve(self, inputs_BxS: np.ndarray, input_lengths_B: np.ndarray) -> Batch:
    """The batch (targets, gold alignment) of well-formed sources; no checks."""

  def source_grid_width(self) -> int | None:
    """Columns of the grid a source is flattened from, row by row; None for a sequence task."""
    return None

  def source_coordinates(self, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [S], columns [S])`` of source positions ``0 .. width - 1``.

    For 2-D position embeddings (``position_embedding="2d"`` of the models): a grid task's
    cells in reading order; a sequence task is one row. See :func:`grid_coordinates`.
    """
    return grid_coordinates(width, self.source_grid_width())

  def _check_structure(  # noqa: B027 (an optional hook: the default accepts every source)
    self, inputs_BxS: np.ndarray, input_lengths_B: np.ndarray
  ) -> None:
    """Task-specific well-formedness of sources (raises ``ValueError``); none by default."""

  def from_sources(self, inputs_BxS, input_lengths_B) -> Batch:
    """The full :class:`Batch` (targets, gold alignment) for given source sequences.

    For hand-made probes, e.g. ``reverse.from_sources([[3, 4, 5]], [3])``. The target width
    follows from the source width as in :meth:`sample` (``S + 1`` for copy/reverse/sort).

    Args:
      inputs_BxS: integer ``[B, S]`` PAD-padded sources of this task's vocabulary.
      input_lengths_B: integer ``[B]`` source lengths.

    Returns:
      :class:`Batch` whose ``inputs`` and ``input_lengths`` are the given ones.

    Raises:
      ValueError: naming the first malformed row.
    """
    inputs_BxS = np.asarray(inputs_BxS)
    input_lengths_B = np.asarray(input_lengths_B)
    if inputs_BxS.ndim != 2 or input_lengths_B.shape != inputs_BxS.shape[:1]:
      raise ValueError(
        f"expected inputs [B, S] and input_lengths [B], got shapes {inputs_BxS.shape} and "
        f"{input_lengths_B.shape}."
      )
    width = inputs_BxS.shape[1]
    bad = np.nonzero((input_lengths_B < 1) | (input_lengths_B > width))[0]
    if bad.size:
      raise ValueError(f"row {bad[0]}: length {input_lengths_B[bad[0]]} not in [1, {width}].")
    valid_BxS = np.arange(width)[None, :] < input_lengths_B[:, None]
    in_vocab_BxS = (inputs_BxS >= FIRST_SYMBOL) & (inputs_BxS < self.vocab_size)
    bad = np.nonzero(np.any(np.where(valid_BxS, ~in_vocab_BxS, inputs_BxS != PAD), axis=1))[0]
    if bad.size:
      raise ValueError(
        f"row {bad[0]} {inputs_BxS[bad[0]].tolist()}: tokens must lie in "
        f"[{FIRST_SYMBOL}, {self.vocab_size}) within the length "
        f"{input_lengths_B[bad[0]]} and be PAD ({PAD}) after it."
      )
    self._check_structure(inputs_BxS, input_lengths_B)
    return self._solve(inputs_BxS.astype(np.int32), input_lengths_B.astype(np.int32))

  def _draw(self, rng: np.random.Generator, n: int, split: Split) -> Batch:
    return self._solve(*self._draw_sources(rng, n, split))

  def in_split(self, inputs_BxS: np.ndarray, split: Split | str) -> np.ndarray:
    """bool ``[B]``: whether each source belongs to ``split`` (OOD: always ``True``)."""
    split = Split.parse(split, name="split")
    if split is Split.OOD:
      return np.ones(np.shape(inputs_BxS)[0], bool)
    codes_B = splits.split_codes(
      inputs_BxS, val_fraction=self.val_fraction, test_fraction=self.test_fraction
    )
    return codes_B == splits.IN_DISTRIBUTION.index(split)

  def sample(self, rng: np.random.Generator, batch_size: int, split: Split | str) -> Batch:
    """A batch of ``split``, a pure function of ``rng``'s state.

    TRAIN/VAL/TEST draw candidates with the training sizes and keep those whose source
    hashes into the split (vectorised rejection); OOD draws the longer sizes directly.

    Args:
      rng: numpy Generator, e.g. ``np.random.default_rng([seed, step])``.
      batch_size: ``B > 0``.
      split: a :class:`Split` or its name.

    Returns:
      :class:`Batch` with ``inputs [B, max_input_len(split)]`` and
      ``targets, alignment [B, max_target_len(split)]``.
    """
    split = Split.parse(split, name="split")
    if not isinstance(rng, np.random.Generator):
      raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}.")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if split is Split.OOD:
      return self._draw(rng, batch_size, split)
    fraction = splits.split_fraction(
      split, val_fraction=self.val_fraction, test_fraction=self.test_fraction
    )
    kept, have = [], 0
    for _ in range(_MAX_ROUNDS):
      need = batch_size - have
      # Expected acceptance is `fraction`: a 20% margin (+8) makes one round almost always
      # enough, and a short round just continues.
      candidates = self._draw(rng, int(need / fraction * 1.2) + 8, split)
      keep = self.in_split(candidates.inputs, split)
      kept.append(Batch(*(x[keep] for x in candidates)))
      have += int(keep.sum())
      if have >= batch_size:
        merged = kept[0] if len(kept) == 1 else Batch(*map(np.concatenate, zip(*kept, strict=True)))
        return Batch(*(x[:batch_size] for x in merged))
    raise RuntimeError(
      f"task {self.name!r}: found only {have} of {batch_size} {split.value!r} examples in "
      f"{_MAX_ROUNDS} rounds of rejection sampling; the split is (nearly) empty. Widen "
      f"the training sizes or change val_fraction/test_fraction."
    )

  def eval_set(self, split: Split | str, size: int, seed: int) -> Batch:
    """A fixed evaluation set: the same ``size`` examples for the same ``(split, seed)``.

    Drawn from a stream disjoint from the ``default_rng([seed, step])`` training streams.
    Examples are i.i.d., so a small source space may repeat examples within the set.
    """
    split = Split.parse(split, name="split")
    index = list(Split).index(split)
    return self.sample(np.random.default_rng([_EVAL_STREAM, seed, index]), size, split)
