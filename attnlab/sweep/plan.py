"""Planning a comparison sweep: the grid it asks for, each group's run config, what is pending.

A comparison config (``configs/compare.py``) names a base run config (``configs/default.py``),
the tasks, the seeds and the methods, each method being a set of overrides of the base
config. :func:`plan` turns it into one :class:`Group` per (task, method), checked up front:
unknown tasks, method names and override keys, and every run config (via
``attnlab.training.config.parse_config``) fail before anything trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections

from attnlab.sweep import table
from attnlab.training import rundir


@dataclasses.dataclass(frozen=True)
class Group:
  """One (task, method): its run config and which of its seeds still need training.

  Attributes:
    task: task name.
    method: method name.
    seeds: every seed of the group.
    pending: the seeds without a completed run, trained together.
    config: the run config (base config + task + method overrides); ``seed`` is set per run
      by the trainer from ``seeds``.
  """

  task: str
  method: str
  seeds: tuple[int, ...]
  pending: tuple[int, ...]
  config: ml_collections.ConfigDict


# ---- Overrides --------------------------------------------------------------------------


def flatten(node: Mapping | ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple]:
  """``(dotted_key, value)`` for every leaf of a nested mapping (empty mappings are leaves)."""
  for key, value in node.items():
    path = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict)) and len(value):
      yield from flatten(value, f"{path}.")
    else:
      yield path, value


def nest(overrides: Mapping[str, Any]) -> dict:
  """``{"model.attention": "hard"}`` -> ``{"model": {"attention": "hard"}}`` (ConfigDicts
  reject dotted field names, so overrides are stored nested and written dotted)."""
  nested: dict = {}
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = nested
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise ValueError(f"override {dotted!r} conflicts with a value set at {part!r}.")
    node[leaf] = value
  return nested


def apply_overrides(
  base: ml_collections.ConfigDict, overrides: Mapping, *, where: str
) -> ml_collections.ConfigDict:
  """A copy of ``base`` with nested ``overrides`` applied; only existing keys may be set.

  Args:
    base: the run config to copy.
    overrides: nested mapping (or ConfigDict) of values, e.g. ``{"model": {"score": "dot"}}``.
    where: what the overrides belong to, for error messages (e.g. ``"method 'soft_dot'"``).

  Returns:
    The new ConfigDict (``base`` is untouched).

  Raises:
    ValueError: a key that ``base`` does not have (the message lists the valid keys), or a
      value of the wrong type for its key.
  """
  config = ml_collections.ConfigDict(base.to_dict())
  valid = sorted(k for k, _ in flatten(base))
  for dotted, value in flatten(overrides):
    *parents, leaf = dotted.split(".")
    node = config
    try:
      for part in parents:
        node = node[part]
      if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise KeyError(dotted)
    except (KeyError, TypeError):
      raise ValueError(f"{where}: unknown config key {dotted!r}; valid keys: {valid}.") from None
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    try:
      node[leaf] = value
    except TypeError as e:
      raise ValueError(f"{where}: bad value {value!r} for {dotted!r}: {e}") from None
  return config


# ---- Planning ---------------------------------------------------------------------------


def _names(config: ml_collections.ConfigDict, field: str, registry: Sequence[str]) -> list[str]:
  names = list(config[field])
  if not names:
    raise ValueError(f"config.{field} is empty; choose from {sorted(registry)}.")
  unknown = [n for n in names if n not in registry]
  if unknown:
    raise ValueError(f"unknown name(s) {unknown} in config.{field}; valid: {sorted(registry)}.")
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"config.{field} lists {duplicates} more than once.")
  return names


def grid_of(config: ml_collections.ConfigDict) -> table.Grid:
  """The tasks, methods and seeds a comparison config asks for, checked.

  Raises:
    ValueError: unknown task or method names (the message lists the valid ones), duplicates,
      or seeds that are not distinct non-negative ints.
  """
  from attnlab import tasks as tasks_lib  # Deferred: importing the grid needs no tasks.

  task_names = _names(config, "tasks", list(tasks_lib.TASKS))
  method_names = _names(config, "method_names", list(config.methods.keys()))
  seeds = list(config.seeds)
  if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
    raise ValueError(f"config.seeds={seeds!r}; expected a non-empty tuple of ints >= 0.")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"config.seeds={seeds!r} repeats a seed.")
  return table.Grid(tuple(task_names), tuple(method_names), tuple(seeds))


def run_config(
  config: ml_collections.ConfigDict, task: str, method: str
) -> ml_collections.ConfigDict:
  """The run config of one (task, method): base, then the task's, then the method's overrides."""
  run = apply_overrides(config.base, {"task": task}, where=f"task {task!r}")
  if task in config.task_overrides:
    run = apply_overrides(run, config.task_overrides[task], where=f"task_overrides[{task!r}]")
  return apply_overrides(run, config.methods[method], where=f"method {method!r}")


def validate_run_config(run: ml_collections.ConfigDict, task: str, method: str) -> None:
  """Raises ``ValueError`` naming ``task/method`` if ``run`` is not a valid run config."""
  from attnlab.training import config as config_lib  # Deferred: pulls in models and objectives.

  try:
    config_lib.parse_config(run)
  except ValueError as e:
    raise ValueError(f"{task}/{method}: invalid run config: {e}") from e


def plan(config: ml_collections.ConfigDict, workdir: str, *, validate: bool = True) -> list[Group]:
  """Every (task, method) group in table order, with its run config and unfinished seeds.

  Args:
    config: a comparison config (``configs/compare.py``).
    workdir: the sweep directory (finished runs in it are not pending).
    validate: check every run config with ``attnlab.training.config.parse_config`` (start-up check).

  Returns:
    The groups, tasks outermost, each in config order.

  Raises:
    ValueError: unknown names, override keys or invalid run configs, before anything trains.
  """
  grid = grid_of(config)
  if not isinstance(config.num_workers, int) or config.num_workers < 1:
    raise ValueError(f"config.num_workers={config.num_workers!r} must be an int >= 1.")
  unknown = sorted(set(config.task_overrides.keys()) - set(grid.tasks))
  if unknown:
    raise ValueError(
      f"config.task_overrides names task(s) {unknown} not in config.tasks {list(grid.tasks)}."
    )
  groups = []
  for task in grid.tasks:
    for method in grid.methods:
      run = run_config(config, task, method)
      if validate:
        validate_run_config(run, task, method)
      pending = tuple(
        s for s in grid.seeds if not rundir.is_finished(rundir.run_dir(workdir, task, method, s))
      )
      groups.append(Group(task, method, grid.seeds, pending, run))
  return groups
