"""Task registry: names to task classes, and construction with checked overrides."""

from __future__ import annotations

import dataclasses

from attnlab.tasks.addition import AdditionTask
from attnlab.tasks.base import Task
from attnlab.tasks.localization import LocalizationTask
from attnlab.tasks.recall import RecallTask
from attnlab.tasks.sequence import CopyTask, ReverseTask, SortTask

TASKS: dict[str, type[Task]] = {
  cls.name: cls
  for cls in (CopyTask, ReverseTask, SortTask, RecallTask, AdditionTask, LocalizationTask)
}


def get_task(name: str, **overrides) -> Task:
  """Builds the task ``name`` with its default parameters replaced by ``overrides``.

  Args:
    name: one of ``TASKS`` ("copy", "reverse", "sort", "recall", "addition", "localize").
    **overrides: dataclass fields of that task, e.g. ``train_lengths=(1, 8)``.

  Returns:
    The frozen task object.

  Raises:
    ValueError: unknown name (the message lists the valid ones), unknown override (the
      message names it and lists the task's fields), or an invalid value.
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}.")
  cls = TASKS[name]
  fields = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"unknown parameter(s) {unknown} for task {name!r}; valid: {fields}.")
  return cls(**overrides)
