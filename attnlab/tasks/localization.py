"""Object localization on a grid: the use case the textbook table gives hard attention.

Source: an ``H × W`` grid of cells flattened in reading order (row by row, ``W`` =
``grid_width`` fixed, ``H`` uniform in the split's row range); a few cells (a count uniform in
the split's object range, on distinct cells drawn uniformly) hold an object, a class symbol
drawn uniformly, and every other cell the empty-background symbol. Target: the objects'
classes in reading order, then EOS. Gold alignment of each target token: its object's cell,
the flat position ``row * W + column``. The task is a filtered copy whose filter is "not
background": finding the next object is what attention has to do.

Positions are 2-D: :meth:`LocalizationTask.source_coordinates` gives the row and column of
every flattened position (:func:`attnlab.tasks.base.grid_coordinates`), which the models embed
separately with ``position_embedding="2d"`` (learned row and column embeddings in the RNN
family; sinusoids of the row in one half of the width and of the column in the other in the
Transformer). The OOD split has taller grids (rows never seen in training) and more objects.

The target width of a split follows from its source width: a grid of at most
``train_rows[1]`` rows holds at most ``train_objects[1]`` objects, a taller one at most
``ood_objects[1]`` (hand-made sources with more are rejected by ``from_sources``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attnlab.tasks import base
from attnlab.tasks.base import EOS, FIRST_SYMBOL, PAD, Batch
from attnlab.tasks.splits import Split

# The empty-background symbol; object classes follow it.
EMPTY = FIRST_SYMBOL


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalizationTask(base.Task):
  """Read the objects of a grid in reading order.

  Token ids: ``EMPTY = FIRST_SYMBOL`` (background), then the classes
  ``FIRST_SYMBOL + 1 .. FIRST_SYMBOL + num_classes``.

  Attributes:
    grid_width: columns ``W`` of every grid (every split).
    train_rows: inclusive range of the rows ``H`` for TRAIN/VAL/TEST.
    ood_rows: inclusive range for OOD (all above training: unseen row coordinates).
    num_classes: distinct object classes (repeats allowed within a grid).
    train_objects: inclusive range of the number of objects for TRAIN/VAL/TEST.
    ood_objects: inclusive range for OOD.
  """

  name = "localize"
  grid_width: int = 5
  train_rows: tuple[int, int] = (2, 5)
  ood_rows: tuple[int, int] = (6, 8)
  num_classes: int = 8
  train_objects: tuple[int, int] = (1, 4)
  ood_objects: tuple[int, int] = (5, 6)

  def __post_init__(self):
    super().__post_init__()
    for field in ("grid_width", "num_classes"):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field} must be a positive int, got {value!r}.")
    self._set("train_rows", base.check_range("train_rows", self.train_rows, minimum=1))
    self._set("ood_rows", base.check_range("ood_rows", self.ood_rows, minimum=1))
    base.check_ood_longer("train_rows", self.train_rows, "ood_rows", self.ood_rows)
    for objects, rows in (("train_objects", "train_rows"), ("ood_objects", "ood_rows")):
      # Every grid of the split must have room for the most objects.
      fewest_cells = getattr(self, rows)[0] * self.grid_width
      self._set(
        objects,
        base.check_range(objects, getattr(self, objects), minimum=1, maximum=fewest_cells),
      )

  @property
  def vocab_size(self) -> int:
    return FIRST_SYMBOL + 1 + self.num_classes

  def _rows(self, split: Split | str) -> tuple[int, int]:
    return self.ood_rows if Split.parse(split, name="split") is Split.OOD else self.train_rows

  def _objects(self, split: Split | str) -> tuple[int, int]:
    return self.ood_objects if Split.parse(split, name="split") is Split.OOD else self.train_objects

  def max_input_len(self, split: Split | str) -> int:
    return self._rows(split)[1] * self.grid_width

  def max_target_len(self, split: Split | str) -> int:
    return self._most_objects(self.max_input_len(split)) + 1  # + EOS

  def _most_objects(self, source_width: int) -> int:
    """Most objects a source of ``source_width`` cells may hold (see the module docstring)."""
    in_distribution = source_width <= self.max_input_len(Split.TRAIN)
    return (self.train_objects if in_distribution else self.ood_objects)[1]

  def source_grid_width(self) -> int | None:
    return self.grid_width

  def _draw_sources(self, rng, n, split):
    (low_rows, high_rows), (low_objects, high_objects) = self._rows(split), self._objects(split)
    width = high_rows * self.grid_width
    cells_B = rng.integers(low_rows, high_rows + 1, size=n) * self.grid_width
    objects_B = rng.integers(low_objects, high_objects + 1, size=n)
    valid_BxS = np.arange(width)[None, :] < cells_B[:, None]
    # Distinct cells: the objects_B valid cells of lowest random key.
    keys_BxS = np.where(valid_BxS, rng.random((n, width)), np.inf)
    rank_BxS = np.argsort(np.argsort(keys_BxS, axis=1), axis=1)
    holds_object_BxS = rank_BxS < objects_B[:, None]
    classes_BxS = rng.integers(1, self.num_classes + 1, size=(n, width))
    inputs_BxS = np.where(holds_object_BxS, EMPTY + classes_BxS, EMPTY)
    inputs_BxS = np.where(valid_BxS, inputs_BxS, PAD)
    return inputs_BxS.astype(np.int32), cells_B.astype(np.int32)

  def _solve(self, inputs_BxS, input_lengths_B):
    n, width = inputs_BxS.shape
    most = self._most_objects(width)
    valid_BxS = np.arange(width)[None, :] < input_lengths_B[:, None]
    is_object_BxS = valid_BxS & (inputs_BxS > EMPTY)
    # Object cells first, in reading order (a stable sort of "not an object").
    order_BxS = np.argsort(~is_object_BxS, axis=1, kind="stable")[:, :most]
    count_B = is_object_BxS.sum(axis=1)
    listed_BxO = np.arange(order_BxS.shape[1])[None, :] < count_B[:, None]
    targets_BxT = np.full((n, most + 1), PAD, dtype=np.int32)
    alignment_BxT = np.full((n, most + 1), -1, dtype=np.int32)
    objects = order_BxS.shape[1]
    targets_BxT[:, :objects] = np.where(
      listed_BxO, np.take_along_axis(inputs_BxS, order_BxS, axis=1), PAD
    )
    alignment_BxT[:, :objects] = np.where(listed_BxO, order_BxS, -1)
    targets_BxT[np.arange(n), count_B] = EOS
    return Batch(
      inputs=inputs_BxS,
      input_lengths=input_lengths_B,
      targets=targets_BxT,
      target_lengths=(count_B + 1).astype(np.int32),
      alignment=alignment_BxT,
    )

  def _check_structure(self, inputs_BxS, input_lengths_B):
    for row, (tokens, length) in enumerate(zip(inputs_BxS, input_lengths_B, strict=True)):
      objects = int(np.sum(tokens[:length] > EMPTY))
      most = self._most_objects(int(length))  # The row's own grid, not the padded width.
      if length % self.grid_width or objects > most:
        raise ValueError(
          f"row {row} {tokens[:length].tolist()}: expected whole rows of {self.grid_width} "
          f"cells (length {length}) holding at most {most} objects (got {objects}) for a "
          f"grid of {length} cells."
        )
