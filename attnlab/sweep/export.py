"""A finished sweep, exported to TensorBoard: one run per ``<task>/<method>/seed_<n>``.

Runs trained by this version of attnlab already hold their event files
(:mod:`attnlab.training.events`), so ``tensorboard --logdir SWEEP`` shows them. This module
writes them for a sweep that has none, or into another directory:

* from the run directories (``metrics.jsonl``, ``config.json`` and the figures): every
  metrics row as scalars, the config as text, the hyperparameters and the figures, as the
  trainer writes them;
* from ``results.csv`` alone, where the run directories are not kept (the repository's
  ``results/compare_*/`` hold the table, not the runs): one point per run, every number of
  its row at the step it stopped at, with task, method and seed as hyperparameters, so the
  HParams dashboard compares and filters the runs of the table.
"""

from __future__ import annotations

import dataclasses
import os

from attnlab.sweep import table
from attnlab.training import events, rundir
from attnlab.training.rundir import RunStatus


@dataclasses.dataclass(frozen=True)
class Exported:
  """What :func:`export_tensorboard` wrote.

  Attributes:
    runs: the run directories written (each holds one event file).
    source: ``"runs"`` (run directories) or ``"results.csv"``.
    problems: runs left out, one line each naming the file and the reason.
  """

  runs: tuple[str, ...]
  source: str
  problems: tuple[str, ...] = ()


def _from_runs(workdir: str, out: str, problems: list[str]) -> list[str]:
  try:
    grid = table.discover_grid(workdir)
  except FileNotFoundError:
    return []
  written = []
  for task, method in grid.pairs():
    for seed in grid.seeds:
      run = rundir.run_dir(workdir, task, method, seed)
      config = rundir.read_config(run)
      try:
        rows = rundir.read_metrics(run)
      except ValueError as e:
        problems.append(f"{e} (not exported)")
        continue
      if config is None or not rows:
        continue  # Never started, or no evaluation yet.
      target = rundir.make_dir(rundir.run_dir(out, task, method, seed))
      finished = rundir.is_finished(run)
      with rundir.locked(target):  # Not while a trainer writes it.
        events.write_run(target, rows, config, method=method, finished=finished, figures=run)
      written.append(target)
  return written


def _from_results_csv(workdir: str, out: str) -> list[str]:
  written = []
  for row in table.read_results_csv(os.path.join(workdir, rundir.RESULTS_FILE)):
    if row["status"] != RunStatus.COMPLETED.value:
      continue
    task, method, seed = row["task"], row["method"], int(row["seed"])
    config = {"task": task, "seed": seed, "model": {"attention": row.get("attention")}}
    metrics = {k: v for k, v in row.items() if k not in table.ID_COLUMNS}
    metrics["step"] = int(row.get("steps_trained") or 0)
    target = rundir.make_dir(rundir.run_dir(out, task, method, seed))
    events.write_run(target, [metrics], config, method=method)
    written.append(target)
  return written


def export_tensorboard(workdir: str, out: str | None = None) -> Exported:
  """Writes TensorBoard event files for every run of the sweep in ``workdir``.

  Args:
    workdir: a sweep directory: run directories (``<task>/<method>/seed_<n>/``), or only
      its ``results.csv``.
    out: where to write, as ``OUT/<task>/<method>/seed_<n>/``; default ``workdir`` itself
      (the event files then sit beside each run's ``metrics.jsonl``, replacing any there).

  Returns:
    :class:`Exported`: the runs written, whether from run directories or ``results.csv``,
    and the runs left out (a corrupt ``metrics.jsonl``).

  Raises:
    FileNotFoundError: ``workdir`` holds neither runs with metrics nor a ``results.csv``.
  """
  out = out or workdir
  problems: list[str] = []
  written = _from_runs(workdir, out, problems)
  if written or problems:
    return Exported(tuple(written), "runs", tuple(problems))
  if os.path.exists(os.path.join(workdir, rundir.RESULTS_FILE)):
    return Exported(tuple(_from_results_csv(workdir, out)), rundir.RESULTS_FILE)
  raise FileNotFoundError(
    f"{workdir!r} holds no run with metrics (<task>/<method>/seed_<n>/{rundir.METRICS_FILE}) "
    f"and no {rundir.RESULTS_FILE}: nothing to export."
  )
