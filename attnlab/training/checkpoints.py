"""Orbax checkpoints of one run: the train-state pytree plus the JSON history.

Each run (one seed) owns ``workdir/checkpoints/<step>/`` with two items: ``state`` (params,
optimiser state, objective state, step, running metric sums: a pytree of arrays, saved with
``StandardSave``) and ``history`` (the evaluation rows and clock readings, ``JsonSave``), so a
resumed run can rebuild ``metrics.jsonl`` and its ``steps_to_*`` summary exactly.

Seeds trained together (vmapped) are saved one slice per workdir, so every workdir stays a
self-contained single-seed run; :func:`latest_common_step` picks the step all of them have.
Saves are synchronous: a save has finished on disk before training goes on, so an
interruption can never leave the only checkpoint half-written.

Faults: :func:`restore_newest` falls back from a checkpoint that cannot be read (random bytes
in a data file, truncated files, a missing ``_METADATA``: any error while restoring) to the
newest older one, with one warning naming the bad step and its path. Nothing is deleted: a
later save of that step first moves the unreadable one to ``RUN/checkpoints.unreadable/``. A
save that runs out of disk space raises :class:`attnlab.training.rundir.DiskFullError` naming
the checkpoint's path; the checkpoints saved before it are intact.

Many devices, many processes: the loop saves each seed's slice replicated over the mesh
(``Layout.seed_slice``) and restores into a replicated template of the current mesh, so a
checkpoint written on any device or process count restores on any other (tested: 2 processes
x 2 devices -> 1 device). Save and restore are collective: in a ``jax.distributed`` program
every process calls them (orbax writes each array once and syncs the processes); the workdir
must then be on a filesystem every process sees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from attnlab.training import rundir

_log = logging.getLogger(__name__)


class _DropDiskFullEchoes(logging.Filter):
  """Drops the records orbax's threads and asyncio log about a write that ran out of space.

  A full disk during a save is reported once, by the :class:`rundir.DiskFullError` that the
  save raises; orbax also logs it from every writing thread, and asyncio once per abandoned
  future, which buries that line under hundreds.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (rundir.is_disk_full(error) or "No space left on device" in record.getMessage())


_DISK_FULL_FILTER = _DropDiskFullEchoes()


def _is_closed_loop_error(unraisable) -> bool:
  error = unraisable.exc_value
  return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)


def _drop_closed_loop_errors(previous):
  """An unraisable hook that drops "Event loop is closed" errors and passes on the rest."""

  def hook(unraisable):
    if not _is_closed_loop_error(unraisable):
      previous(unraisable)

  return hook


@contextlib.contextmanager
def _quiet_closed_event_loop() -> Iterator[None]:
  """Drops "Event loop is closed" errors of reads and writes in flight when one failed.

  When tensorstore fails one read (or write) of a checkpoint, orbax closes its event loop
  while others are pending; each of them then reports, through ``sys.unraisablehook``, that
  it could not call back: hundreds of tracebacks for one unreadable checkpoint or full disk.
  """
  previous = sys.unraisablehook
  sys.unraisablehook = _drop_closed_loop_errors(previous)
  try:
    yield
  finally:
    sys.unraisablehook = previous


def _one_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else ""
  return f"{type(error).__name__}: {text[:300]}"


class RunCheckpointer:
  """Saves and restores ``(state, history)`` of one run under ``workdir/checkpoints``.

  Args:
    workdir: the run's directory.
    max_to_keep: number of most recent checkpoints kept on disk (older ones are deleted).
  """

  def __init__(self, workdir: str, max_to_keep: int):
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep={max_to_keep} must be >= 1.")
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    self.directory = os.path.join(os.path.abspath(workdir), rundir.CHECKPOINTS_DIR)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._unreadable: set[int] = set()  # Steps that failed to restore (replaced on save).

  def step_path(self, step: int) -> str:
    """The directory of checkpoint ``step``."""
    return os.path.join(self.directory, str(int(step)))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, history: dict[str, Any]) -> None:
    """Writes checkpoint ``step`` (a no-op if a readable one already exists).

    Raises:
      rundir.DiskFullError: the disk filled up; names the checkpoint's path.
    """
    if step in self._manager.all_steps():
      if step not in self._unreadable:
        return
      self._set_aside(step)
    absl_logger, previous_hook = logging.getLogger("absl"), sys.unraisablehook
    absl_logger.addFilter(_DISK_FULL_FILTER)
    sys.unraisablehook = _drop_closed_loop_errors(previous_hook)
    disk_full = False
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)
        ),
      )
      self._manager.wait_until_finished()
    except Exception as e:
      disk_full = rundir.is_disk_full(e)
      if disk_full:
        raise rundir.DiskFullError(self.step_path(step)) from e
      raise
    finally:
      absl_logger.removeFilter(_DISK_FULL_FILTER)
      if disk_full:
        # The abandoned writes report it again later: when their futures are freed (asyncio's
        # logger) and when they call back into the closed event loop (the hook stays).
        logging.getLogger("asyncio").addFilter(_DISK_FULL_FILTER)
      else:
        sys.unraisablehook = previous_hook

  def _set_aside(self, step: int) -> None:
    """Moves unreadable checkpoint ``step`` to ``RUN/checkpoints.unreadable/<step>[.k]``."""
    parent = os.path.join(os.path.dirname(self.directory), rundir.UNREADABLE_CHECKPOINTS_DIR)
    os.makedirs(parent, exist_ok=True)
    target, k = os.path.join(parent, str(step)), 1
    while os.path.exists(target):
      target, k = os.path.join(parent, f"{step}.{k}"), k + 1
    if jax.process_index() == 0:  # One process of a multi-process program moves it...
      os.rename(self.step_path(step), target)
    multihost_utils.sync_global_devices(f"attnlab_set_aside_{step}")  # ...the others wait.
    self._manager.reload()
    self._unreadable.discard(step)
    _log.warning("moved unreadable checkpoint step %d to %s before saving it again", step, target)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint ``step`` into the structure of ``abstract_state``.

    Args:
      step: a step in :meth:`all_steps`.
      abstract_state: a pytree of arrays or ``jax.ShapeDtypeStruct`` with the saved structure.

    Returns:
      ``(state, history)``.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
      ),
    )
    return restored["state"], restored["history"]

  def mark_unreadable(self, step: int) -> None:
    """Records that ``step`` failed to restore: a later save of ``step`` replaces it."""
    self._unreadable.add(int(step))

  @property
  def unreadable_steps(self) -> frozenset[int]:
    return frozenset(self._unreadable)

  def reload(self) -> None:
    """Re-reads the steps on disk (after a failed save, say)."""
    self._manager.reload()

  def close(self) -> None:
    self._manager.close()


def restore_newest(
  checkpointers: Sequence[RunCheckpointer], abstract_state: Any
) -> tuple[int | None, list[tuple[Any, dict[str, Any]]]]:
  """Restores the newest step that every checkpointer holds and can read.

  A checkpoint that fails to restore is skipped with one warning naming its step and path,
  and marked so that a later save of that step replaces it (:meth:`RunCheckpointer.save`);
  the next older common step is tried.

  Args:
    checkpointers: one per seed trained together.
    abstract_state: the structure of one seed's state (see :meth:`RunCheckpointer.restore`).

  Returns:
    ``(step, [(state, history) per checkpointer])``, or ``(None, [])`` if no common step can
    be read (training starts from scratch).
  """
  tried = []
  with _quiet_closed_event_loop():
    for step in sorted(_common_steps(checkpointers), reverse=True):
      restored = []
      for checkpointer in checkpointers:
        try:
          restored.append(checkpointer.restore(step, abstract_state))
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back.
          checkpointer.mark_unreadable(step)
          _log.warning(
            "checkpoint step %d at %s is unreadable (%s); falling back to an older one",
            step,
            checkpointer.step_path(step),
            _one_line(e),
          )
      if len(restored) == len(checkpointers):
        return step, restored
      tried.append(step)
  if tried:
    _log.warning("no readable checkpoint (tried steps %s): training starts from step 0", tried)
  return None, []


def disk_full_error(
  error: BaseException, checkpointers: Sequence[RunCheckpointer]
) -> rundir.DiskFullError:
  """The one-line :class:`rundir.DiskFullError` of a run that filled the disk.

  Names the path being written (from ``error``) and the last good checkpoint.
  """
  path = getattr(error, "path", None) or getattr(error, "filename", None) or "the run"
  for checkpointer in checkpointers:
    checkpointer.reload()
  good = _common_steps(checkpointers, readable_only=True)
  where = checkpointers[0].directory if len(checkpointers) == 1 else "every run's checkpoints/"
  if good:
    kept = f"the last good checkpoint is step {max(good)} in {where}"
  else:
    kept = "no checkpoint had been saved yet"
  return rundir.DiskFullError(str(path), f"{kept}; free some space, then rerun to resume")


def _common_steps(checkpointers: Sequence[RunCheckpointer], readable_only=False) -> set[int]:
  common = None
  for checkpointer in checkpointers:
    steps = set(checkpointer.all_steps())
    if readable_only:
      steps -= checkpointer.unreadable_steps
    common = steps if common is None else common & steps
  return common or set()


def latest_common_step(checkpointers: Sequence[RunCheckpointer]) -> int | None:
  """The newest step that every checkpointer holds (None if they share none).

  Seeds trained together are saved one after another; if a run was killed between two of
  those saves, the newest step exists for some seeds only and the previous one is used.
  """
  common = _common_steps(checkpointers)
  return max(common) if common else None
