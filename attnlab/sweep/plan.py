"""Planning a comparison sweep: the grid it asks for, each group's run config, what is pending.

A comparison config (``configs/compare.py``) names a base run config (``configs/default.py``),
the tasks, the seeds and the methods, each method being a set of overrides of the base
config. :func:`plan` turns it into one :class:`Group` per (task, method), checked up front:
unknown tasks, method names and override keys, and every run config (via
``attnlab.training.config.parse_config``) fail before anything trains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections

from attnlab.sweep import table
from attnlab.training import rundir
from attnlab.training.overrides import apply_overrides


@dataclasses.dataclass(frozen=True)
class Group:
  """One (task, method): its run config and which of its seeds still need training.

  Attributes:
    task: task name.
    method: method name.
    seeds: every seed of the group.
    pending: the seeds without a completed run of this config (trained as ``vmapped`` says).
    config: the run config (base config + task + method overrides); ``seed`` is set per run
      by the trainer from ``seeds``.
    stale: ``(seed, how its config differs)`` for every seed whose run directory holds a run
      (finished or not) of a different config: it is set aside and trained afresh.
    vmapped: the pending seeds train together in one seed-vmapped program (``True``) or one
      after another, each in its own one-seed program (``False``; the comparison config's
      ``vmap_seeds``). Each seed sees the same data and keys either way (the streams
      depend on the seed only); the numbers agree up to float32 summation order, which
      the vmapped batch changes (enough to flip a bimodal outcome: docs/results.md,
      *Robustness*).
  """

  task: str
  method: str
  seeds: tuple[int, ...]
  pending: tuple[int, ...]
  config: ml_collections.ConfigDict
  stale: tuple[tuple[int, str], ...] = ()
  vmapped: bool = True


@dataclasses.dataclass(frozen=True)
class Shard:
  """Which deterministic part of a sweep one launch runs: shard ``index`` of ``count``.

  Group ``i`` of :func:`plan` (plan order: tasks outermost, methods inside, finished groups
  included) belongs to shard ``i % count``, so the assignment depends on the config only, never
  on what has finished: ``count`` shards started at once on one sweep directory (a shared
  filesystem) train disjoint groups, each into its own run directories. ``Shard()`` (0 of 1) is
  the whole sweep.
  """

  index: int = 0
  count: int = 1

  def __post_init__(self):
    for name in ("index", "count"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"shard {name}={value!r} must be an int.")
    if self.count < 1 or not 0 <= self.index < self.count:
      raise ValueError(
        f"shard index={self.index}, count={self.count}: need count >= 1 and 0 <= index < count."
      )

  @property
  def is_whole(self) -> bool:
    return self.count == 1

  def select(self, groups: Sequence[Group]) -> list[Group]:
    """The groups of this shard, in plan order."""
    return [g for i, g in enumerate(groups) if i % self.count == self.index]

  def __str__(self) -> str:
    return f"shard {self.index} of {self.count}"


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
  skip = tuple(config.skip)
  pairs = {f"{t}/{m}" for t in task_names for m in method_names}
  # Pairs of tasks or methods left out of this grid (e.g. --config.tasks=copy) are moot.
  unknown = [
    p for p in skip if p.partition("/")[0] not in tasks_lib.TASKS or not p.partition("/")[2]
  ]
  if unknown:
    raise ValueError(
      f"config.skip has {unknown}; expected 'task/method' pairs with tasks in "
      f"{sorted(tasks_lib.TASKS)}."
    )
  skip = tuple(p for p in skip if p in pairs)
  return table.Grid(tuple(task_names), tuple(method_names), tuple(seeds), skip=skip)


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
  """Every (task, method) group in table order (``config.skip`` left out), with its run
  config and unfinished seeds.

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
  if not isinstance(config.vmap_seeds, bool):
    raise ValueError(f"config.vmap_seeds={config.vmap_seeds!r} must be True or False.")
  from attnlab import tasks as tasks_lib  # Deferred, as in grid_of.

  # Overrides of tasks outside this grid are unused (--config.tasks=copy keeps the preset's).
  unknown = sorted(set(config.task_overrides.keys()) - set(tasks_lib.TASKS))
  if unknown:
    raise ValueError(
      f"config.task_overrides names unknown task(s) {unknown}; valid: {sorted(tasks_lib.TASKS)}."
    )
  groups = []
  for task, method in grid.pairs():
    run = run_config(config, task, method)
    if validate:
      validate_run_config(run, task, method)
    stale = tuple(_config_changes(run, workdir, task, method, grid.seeds))
    stale_seeds = {seed for seed, _ in stale}
    pending = tuple(
      s
      for s in grid.seeds
      if s in stale_seeds or not rundir.is_finished(rundir.run_dir(workdir, task, method, s))
    )
    groups.append(Group(task, method, grid.seeds, pending, run, stale, config.vmap_seeds))
  return groups


def _config_changes(run: ml_collections.ConfigDict, workdir, task, method, seeds):
  """``(seed, how the saved config differs)`` of every run directory holding another config."""
  config = run.to_dict()
  for seed in seeds:
    path = rundir.run_dir(workdir, task, method, seed)
    change = rundir.stale_config(path, rundir.run_config_dict(config, seed))
    if change:
      yield seed, change
