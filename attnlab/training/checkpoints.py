"""Orbax checkpoints of one run: the train-state pytree plus the JSON history.

Each run (one seed) owns ``workdir/checkpoints/<step>/`` with two items: ``state`` (params,
optimiser state, objective state, step, running metric sums: a pytree of arrays, saved with
``StandardSave``) and ``history`` (the evaluation rows and clock readings, ``JsonSave``), so a
resumed run can rebuild ``metrics.jsonl`` and its ``steps_to_*`` summary exactly.

Seeds trained together (vmapped) are saved one slice per workdir, so every workdir stays a
self-contained single-seed run; :func:`latest_common_step` picks the step all of them have.
Saves are synchronous: a save has finished on disk before training goes on, so an
interruption can never leave the only checkpoint half-written.

Many devices, many processes: the loop saves each seed's slice replicated over the mesh
(``Layout.seed_slice``) and restores into a replicated template of the current mesh, so a
checkpoint written on any device or process count restores on any other (tested: 2 processes
x 2 devices -> 1 device). Save and restore are collective: in a ``jax.distributed`` program
every process calls them (orbax writes each array once and syncs the processes); the workdir
must then be on a filesystem every process sees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from attnlab.training import rundir


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

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, history: dict[str, Any]) -> None:
    """Writes checkpoint ``step`` (a no-op if it already exists)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)
      ),
    )
    self._manager.wait_until_finished()

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

  def close(self) -> None:
    self._manager.close()


def latest_common_step(checkpointers: Sequence[RunCheckpointer]) -> int | None:
  """The newest step that every checkpointer holds (None if they share none).

  Seeds trained together are saved one after another; if a run was killed between two of
  those saves, the newest step exists for some seeds only and the previous one is used.
  """
  common = None
  for checkpointer in checkpointers:
    steps = set(checkpointer.all_steps())
    common = steps if common is None else common & steps
  return max(common) if common else None
