"""Running a comparison sweep: tasks × methods × seeds, resumable and failure-isolated.

:func:`run_comparison` trains every (task, method) *group* planned by
:func:`attnlab.sweep.plan.plan`, its seeds together in one vmapped program or one after
another (``vmap_seeds``; ``attnlab.training.loop.train_seeds``), each seed into its own run
directory
``DIR/<task>/<method>/seed_<n>/`` (layout in :mod:`attnlab.training.rundir`), then writes
``DIR/results.csv``, ``DIR/table.md`` and ``DIR/plots/<task>.png`` (:mod:`attnlab.sweep.table`).

- Resumable: a run whose ``summary.json`` says ``completed: true`` is skipped; a group trains
  only its unfinished seeds (the trainer itself resumes an interrupted run from its checkpoint).
- Failure-isolated: an exception while training a group is caught, its traceback written to
  ``DIR/<task>/<method>/error.txt``, and the sweep goes on; the group shows as ``failed`` in
  ``results.csv`` and in the final report (``experiments.compare`` then exits non-zero).
- Never stale: a run directory (finished or not) whose ``config.json`` differs from the config
  the sweep would train now (other than in ``rundir.RESULT_NEUTRAL_KEYS``) is renamed to
  ``seed_<n>.stale-<k>`` and trained afresh, with one line per group naming the keys and both
  values; the table never shows an earlier config's results as the current one's.
- One sweep per directory: the sweep holds ``DIR/.lock`` (a shard ``DIR/.lock.shard_<i>``;
  ``rundir.locked``) and each training process its runs' locks; a second sweep (or the same
  shard twice) on DIR is refused at once, naming the holder. Worker
  processes die with the sweep (``attnlab.sweep.workers``), ``kill -9`` included.
- Shardable: ``shard=Shard(i, n)`` (:class:`attnlab.sweep.plan.Shard`) trains group ``g`` of
  the plan iff ``g % n == i``. ``n`` shards run at once on one directory (an array job on a
  shared filesystem) and never write the same file: each writes its groups' directories and
  ``DIR/shards/shard_<i>_of_<n>.json``; shard 0 also writes ``grid.json``. No shard writes
  ``results.csv``, ``table.md`` or ``plots/``: ``python -m experiments.table --workdir=DIR``
  builds them once every shard is done, equal (timing columns aside) to an unsharded sweep's.
- Accelerator-safe: the sweep process initialises no JAX backend (the hardware line comes from
  a probe subprocess) and every worker gets its own devices and no memory preallocation
  (:mod:`attnlab.sweep.workers`), so ``num_workers`` workers share N GPUs without contention.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import ml_collections

from attnlab.sweep import table, workers
from attnlab.sweep.plan import Group, Shard, grid_of, plan, run_config, validate_run_config
from attnlab.training import rundir

# train_seeds(run_config, seeds, workdirs) -> per-seed summaries
# (attnlab.training.loop.train_seeds).
TrainFn = Callable[[ml_collections.ConfigDict, Sequence[int], Sequence[str]], Any]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GroupResult:
  """Outcome of one group: ``status`` is "completed", "skipped" (all seeds done) or "failed"."""

  task: str
  method: str
  seeds: tuple[int, ...]
  status: str
  seconds: float
  error: str = ""


@dataclasses.dataclass(frozen=True)
class ComparisonReport:
  """What :func:`run_comparison` did.

  Attributes:
    groups: one :class:`GroupResult` per (task, method) of the shard, in table order.
    seconds: wall time of the sweep.
    results_csv: path of ``results.csv`` (None for a shard: ``experiments.table`` builds it).
    table_md: path of ``table.md`` (None for a shard).
    plots: paths of the per-task learning-curve plots.
    shard: which part of the sweep ran.
  """

  groups: tuple[GroupResult, ...]
  seconds: float
  results_csv: str | None
  table_md: str | None
  plots: tuple[str, ...]
  shard: Shard = Shard()

  @property
  def failed(self) -> tuple[GroupResult, ...]:
    return tuple(g for g in self.groups if g.status == "failed")

  def summary_line(self) -> str:
    """``runs: 12 trained, 6 skipped, 3 failed (copy/gumbel_st: ValueError: ...)``."""
    count = {s: sum(len(g.seeds) for g in self.groups if g.status == s) for s in _STATUSES}
    line = (
      f"runs: {count['completed']} trained, {count['skipped']} skipped (already finished), "
      f"{count['failed']} failed in {self.seconds:.1f} s"
    )
    if self.failed:
      line += " — failed: " + "; ".join(f"{g.task}/{g.method}: {g.error}" for g in self.failed)
    if self.table_md is None:
      return (
        f"{self.shard}: {line}. Table: not built by a shard; once all {self.shard.count} "
        "shards are done, run python -m experiments.table --workdir=<the sweep directory>"
      )
    return line + f". Table: {self.table_md}"

  def failure_line(self, workdir: str) -> str:
    """``2 group(s) failed (4 run(s)); tracebacks in DIR/copy/soft/error.txt, ...``."""
    paths = [
      os.path.join(rundir.group_dir(workdir, g.task, g.method), rundir.ERROR_FILE)
      for g in self.failed
    ]
    runs = sum(len(g.seeds) for g in self.failed)
    return f"{len(self.failed)} group(s) failed ({runs} run(s)); tracebacks in {', '.join(paths)}"


_STATUSES = ("completed", "skipped", "failed")


# ---- Running ----------------------------------------------------------------------------


def _default_train_fn() -> TrainFn:
  from attnlab.training import loop  # Deferred: the trainer compiles models; planning does not.

  return loop.train_seeds


def _format_seconds(seconds: float) -> str:
  return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _train_group(group: Group, workdir: str, train_fn: TrainFn) -> None:
  dirs = [rundir.run_dir(workdir, group.task, group.method, s) for s in group.pending]
  for d in dirs:
    os.makedirs(d, exist_ok=True)
  if group.vmapped:
    train_fn(group.config, list(group.pending), dirs)
  else:  # One seed at a time: the process's cache (step.compile_run) compiles once.
    for seed, d in zip(group.pending, dirs, strict=True):
      train_fn(group.config, [seed], [d])
  unfinished = [s for s, d in zip(group.pending, dirs, strict=True) if not rundir.is_finished(d)]
  if unfinished:
    raise RuntimeError(
      f"training returned but seed(s) {unfinished} have no {rundir.SUMMARY_FILE} with "
      f"{rundir.COMPLETED_KEY}: true."
    )


def _run_group(group: Group, workdir: str, train_fn: TrainFn) -> GroupResult:
  """Trains one group, catching its failure into the result (runs in a worker process too)."""
  rundir.clear_error(workdir, group.task, group.method)  # A stale failure: this attempt decides.
  t0 = time.perf_counter()
  try:
    _train_group(group, workdir, train_fn)
    status, error = "completed", ""
  except Exception as e:  # noqa: BLE001 - isolate the failure, report it, go on.
    status, error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
    try:
      rundir.write_error(workdir, group.task, group.method, traceback.format_exc())
    except OSError as write_error:  # A full disk, say: the result still reports the failure.
      error += f" (and {rundir.ERROR_FILE} could not be written: {write_error})"
  seconds = time.perf_counter() - t0
  return GroupResult(group.task, group.method, group.pending, status, seconds, error)


def _results_as_completed(groups, workdir, train_fn, environments) -> Iterator[GroupResult]:
  """Yields each group's result as it finishes, one group per worker at a time.

  Small models leave a CPU core idle (compilation and the decoder scan are single-threaded),
  so on CPU two worker processes nearly halve a sweep. Workers are spawned (JAX does not
  survive fork), inherit the environment (e.g. ``JAX_COMPILATION_CACHE_DIR``) and add their
  own entry of ``environments`` (:func:`attnlab.sweep.workers.worker_environments`: devices,
  memory); one entry: the groups train in this process.
  """
  if len(environments) <= 1:
    for group in groups:
      yield _run_group(group, workdir, train_fn)
    return
  context = multiprocessing.get_context("spawn")
  with futures.ProcessPoolExecutor(
    len(environments), mp_context=context, **workers.pool_arguments(context, environments)
  ) as pool:
    pending = [pool.submit(_run_group, g, workdir, train_fn) for g in groups]
    for future in futures.as_completed(pending):
      yield future.result()


def run_comparison(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  train_fn: TrainFn | None = None,
  log: Callable[[str], None] | None = None,
  with_plots: bool = True,
  shard: Shard | None = None,
  command: str = "",
) -> ComparisonReport:
  """Runs (or resumes) the sweep and writes ``results.csv``, ``table.md`` and the plots.

  A shard (``shard.count > 1``) trains its groups only and writes no shared file but
  ``grid.json`` (shard 0): see the module docstring.

  Args:
    config: a comparison config (``configs/compare.py``): ``base``, ``tasks``, ``seeds``,
      ``methods``, ``method_names``, ``task_overrides``.
    workdir: the sweep directory ``DIR``; created if missing.
    train_fn: ``train_fn(run_config, seeds, workdirs)`` trains the seeds of one group together
      and writes each seed's ``summary.json``; default ``attnlab.training.loop.train_seeds``.
    log: receives the progress lines; default ``logging.getLogger("attnlab.sweep.run").info``.
    with_plots: write ``DIR/plots/<task>.png``.
    shard: which part of the sweep to run; default (None) all of it.
    command: the command line that runs the sweep, recorded in ``grid.json`` (``claims.md``
      cites it).

  Returns:
    A :class:`ComparisonReport`. Failed groups do not raise: they are listed in it.

  Raises:
    ValueError: an invalid comparison config (before any training).
    rundir.WorkdirError: ``DIR`` cannot be used, or another sweep holds it
      (``rundir.DirectoryLockedError``, naming that process).
  """
  shard = shard or Shard()
  # Checks everything before the directory is touched.
  groups = shard.select(plan(config, workdir))
  rundir.make_dir(workdir, what="sweep")
  lock_shard = None if shard.is_whole else shard.index  # Shards of one sweep run at once.
  with rundir.locked(workdir, what="sweep", shard=lock_shard):
    return _run_planned(
      groups, config, workdir, train_fn, log or _log.info, with_plots, shard, command
    )


def _set_aside_stale_runs(groups: Sequence[Group], workdir: str, log) -> None:
  """Renames run directories that hold another config to ``seed_<n>.stale-<k>``."""
  for group in groups:
    if not group.stale:
      continue
    moved = [
      os.path.basename(rundir.set_aside(rundir.run_dir(workdir, group.task, group.method, s)))
      for s, _ in group.stale
    ]
    log(
      f"{group.task}/{group.method}: config changed ({group.stale[0][1]}); retraining, the "
      f"earlier run(s) moved to {', '.join(moved)}"
    )


def _run_planned(
  groups: Sequence[Group],
  config: ml_collections.ConfigDict,
  workdir: str,
  train_fn: TrainFn | None,
  log: Callable[[str], None],
  with_plots: bool,
  shard: Shard,
  command: str = "",
) -> ComparisonReport:
  """:func:`run_comparison` once the sweep (or its shard) holds ``DIR``'s lock."""
  start = time.perf_counter()
  train_fn = train_fn or _default_train_fn()
  _set_aside_stale_runs(groups, workdir, log)
  machine = workers.probe_machine()  # This process starts no backend: the workers will.
  environments = workers.worker_environments(machine, config.num_workers, os.environ)
  plan_line = workers.describe_workers(machine, config.num_workers, environments)
  if plan_line:
    log(plan_line)
  grid = dataclasses.replace(
    grid_of(config), hardware=machine.describe(), eval_mode=_eval_mode(config), command=command
  )
  if shard.index == 0:  # The same grid for every shard: one writer.
    table.write_grid(workdir, grid)
  if not shard.is_whole:
    log(f"{shard}: {len(groups)} group(s): " + ", ".join(f"{g.task}/{g.method}" for g in groups))

  total = sum(len(g.seeds) for g in groups)
  done = total - sum(len(g.pending) for g in groups)
  to_train = total - done
  if done:
    log(f"[{done}/{total}] skipping {done} finished run(s) already in {workdir}")
  trained_runs = 0
  results = [
    GroupResult(g.task, g.method, g.seeds, "skipped", 0.0) for g in groups if not g.pending
  ]
  # Longest step budgets first: with several workers, the sweep then ends on short groups
  # rather than one worker finishing a long group alone (the table keeps its own order).
  to_run = sorted((g for g in groups if g.pending), key=lambda g: -g.config.steps)
  seeds_of = {(g.task, g.method): g.seeds for g in to_run}
  wall_start = time.perf_counter()
  for result in _results_as_completed(to_run, workdir, train_fn, environments):
    results.append(result)
    done += len(result.seeds)
    trained_runs += len(result.seeds)
    # ETA from the wall time per run so far (groups of a sweep have similar sizes).
    elapsed = time.perf_counter() - wall_start
    eta = elapsed / trained_runs * (to_train - trained_runs)
    seeds_text = ",".join(str(s) for s in seeds_of[(result.task, result.method)])
    pending_text = ",".join(str(s) for s in result.seeds)
    seeds_shown = seeds_text if pending_text == seeds_text else f"{pending_text} of {seeds_text}"
    line = (
      f"[{done}/{total}] {result.task}/{result.method} seeds={seeds_shown} "
      f"({_format_seconds(result.seconds)}) ETA {_format_seconds(eta)}"
    )
    if result.status == "failed":
      error_path = os.path.join(
        rundir.group_dir(workdir, result.task, result.method), rundir.ERROR_FILE
      )
      line += f" FAILED: {result.error} (traceback in {error_path})"
    log(line)
  order = {(g.task, g.method): i for i, g in enumerate(groups)}
  results.sort(key=lambda r: order[(r.task, r.method)])

  if shard.is_whole:
    rebuilt = table.rebuild(workdir, grid, with_plots=with_plots)
    for problem in rebuilt.problems:
      log(f"warning: {problem}")
    outputs = dict(results_csv=rebuilt.results_csv, table_md=rebuilt.table_md, plots=rebuilt.plots)
  else:
    outputs = dict(results_csv=None, table_md=None, plots=())
  report = ComparisonReport(
    groups=tuple(results), seconds=time.perf_counter() - start, shard=shard, **outputs
  )
  if not shard.is_whole:
    _write_shard_status(workdir, report, grid)
  log(report.summary_line())
  return report


def _write_shard_status(workdir: str, report: ComparisonReport, grid: table.Grid) -> None:
  """``DIR/shards/shard_<i>_of_<n>.json``: what this shard did (its groups and their status)."""
  path = rundir.shard_status_path(workdir, report.shard.index, report.shard.count)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rundir.write_json(
    path,
    {
      "shard_index": report.shard.index,
      "num_shards": report.shard.count,
      "groups": [dataclasses.asdict(g) for g in report.groups],
      "seconds": report.seconds,
      "hardware": grid.hardware,
      "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    },
  )


def _eval_mode(config: ml_collections.ConfigDict) -> str:
  mode = config.base.model.eval_mode
  detail = {
    "auto": "the trained attention kind; argmax position for hard, marginal and "
    "straight-through Gumbel models",
  }.get(mode, f"{mode} attention")
  return f"greedy decoding ({detail})"


# ---- Speed-up of vmapped seeds ----------------------------------------------------------


def measure_seed_speedup(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  task: str,
  method: str,
  train_fn: TrainFn | None = None,
  log: Callable[[str], None] | None = None,
) -> dict[str, float]:
  """Times one group trained with its seeds vmapped together vs one seed at a time.

  Both variants train the same run config and seeds from scratch, into
  ``workdir/vmapped/`` and ``workdir/sequential/`` (which must not hold finished runs). Wall
  time includes compilation: the vmapped program compiles once, and the one-seed program once
  too (later seeds hit JAX's compilation cache), so the ratio is what a sweep sees.

  Args:
    config: a comparison config.
    workdir: a fresh directory for the timing runs.
    task: the task to time.
    method: the method to time.
    train_fn: default ``attnlab.training.loop.train_seeds``.
    log: receives the result line.

  Returns:
    ``{"seeds", "vmapped_seconds", "sequential_seconds", "speedup", "vmapped_ms_per_step",
    "sequential_ms_per_step"}`` (ms per step: mean of the runs' ``ms_per_step``).
  """
  log = log or _log.info
  grid = grid_of(config)
  run = run_config(config, task, method)
  validate_run_config(run, task, method)
  train_fn = train_fn or _default_train_fn()
  seeds = list(grid.seeds)
  dirs = {
    name: [os.path.join(workdir, name, f"seed_{s}") for s in seeds]
    for name in ("vmapped", "sequential")
  }
  finished = [d for ds in dirs.values() for d in ds if rundir.is_finished(d)]
  if finished:
    raise ValueError(f"measure_seed_speedup needs a fresh workdir; finished runs in {finished}.")
  t0 = time.perf_counter()
  train_fn(run, seeds, dirs["vmapped"])
  vmapped = time.perf_counter() - t0
  t0 = time.perf_counter()
  for seed, d in zip(seeds, dirs["sequential"], strict=True):
    train_fn(run, [seed], [d])
  sequential = time.perf_counter() - t0

  def ms_per_step(ds: list[str]) -> float:
    values = [(rundir.read_summary(d) or {}).get("ms_per_step") for d in ds]
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else float("nan")

  result = {
    "seeds": float(len(seeds)),
    "vmapped_seconds": vmapped,
    "sequential_seconds": sequential,
    "speedup": sequential / vmapped,
    "vmapped_ms_per_step": ms_per_step(dirs["vmapped"]),
    "sequential_ms_per_step": ms_per_step(dirs["sequential"]),
  }
  log(
    f"{task}/{method}, {len(seeds)} seeds: vmapped {vmapped:.1f} s, one at a time "
    f"{sequential:.1f} s: speed-up {result['speedup']:.2f}x "
    f"(ms/step {result['vmapped_ms_per_step']:.1f} vs {result['sequential_ms_per_step']:.1f}"
    " per seed-run)"
  )
  return result
