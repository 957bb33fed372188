"""Toy seq2seq tasks with gold alignments: copy, reverse, sort, recall, addition, localize.

Pure numpy generators driven by an explicit ``numpy.random.Generator``; no files, no
network. See :mod:`attnlab.tasks.base` for the :class:`Batch` contract and
:mod:`attnlab.tasks.splits` for how TRAIN/VAL/TEST never overlap.
"""

from attnlab.tasks.addition import AdditionTask, GoldOperand
from attnlab.tasks.base import (
  BOS,
  EOS,
  FIRST_SYMBOL,
  PAD,
  Batch,
  Task,
  decoder_inputs,
  grid_coordinates,
)
from attnlab.tasks.localization import LocalizationTask
from attnlab.tasks.recall import RecallTask
from attnlab.tasks.registry import TASKS, get_task
from attnlab.tasks.sequence import CopyTask, PermutationTask, ReverseTask, SortTask
from attnlab.tasks.splits import Split

__all__ = [
  "BOS",
  "EOS",
  "FIRST_SYMBOL",
  "PAD",
  "TASKS",
  "AdditionTask",
  "Batch",
  "CopyTask",
  "GoldOperand",
  "LocalizationTask",
  "PermutationTask",
  "RecallTask",
  "ReverseTask",
  "SortTask",
  "Split",
  "Task",
  "decoder_inputs",
  "get_task",
  "grid_coordinates",
]
