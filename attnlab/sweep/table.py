"""Results of a comparison sweep: ``results.csv`` and the markdown table, read from its runs.

The sweep directory's layout, and every read of it, belong to :mod:`attnlab.training.rundir`;
everything here only reads run directories (nothing trains) and writes ``results.csv``,
``table.md`` and ``plots/<task>.png``. The table leads with what separates methods on toy tasks
(Deng et al. 2018 and our calibration runs: final in-distribution accuracy is often 100% for
every method): steps and seconds to 90% / 99% validation accuracy with the fraction of seeds
that got there, the spread over seeds, and gradient variance probed at fixed early steps.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from attnlab.sweep import plots
from attnlab.training import rundir
from attnlab.training.rundir import RunStatus

# Columns of results.csv that identify a run; metrics from summary.json follow.
ID_COLUMNS = ("task", "method", "seed", "status", "error")
# summary.json metrics in the order they lead results.csv (probe variances and any other keys
# the trainer writes follow, so no metric is dropped).
SUMMARY_KEYS = (
  "converged",
  "steps_trained",
  "steps",
  *(rundir.steps_to_key(t) for t in rundir.THRESHOLDS),
  *(rundir.seconds_to_key(t) for t in rundir.THRESHOLDS),
  "test/seq_accuracy",
  "test/token_accuracy",
  "ood/seq_accuracy",
  "val/alignment_accuracy",
  "val/lenient_alignment_accuracy",
  "val/attention_entropy",
  "ms_per_step",
  "train_seconds",
)
_IGNORED_SUMMARY_KEYS = (rundir.COMPLETED_KEY, *ID_COLUMNS)
_PROBE_METRIC = "grad/variance"


@dataclasses.dataclass(frozen=True)
class Grid:
  """What a sweep asked for, in display order, and where it ran.

  Attributes:
    tasks: task names, in table order.
    methods: method names, in table order.
    seeds: seeds of every (task, method).
    hardware: one line describing the machine that trained
      (:meth:`attnlab.sweep.workers.Machine.describe`).
    eval_mode: how accuracies were measured (e.g. "greedy decoding, argmax attention").
    skip: ``"task/method"`` pairs of the tasks × methods product that the sweep does not run.
    command: the command line that ran the sweep ("" when not recorded); claims.md cites it.
  """

  tasks: tuple[str, ...]
  methods: tuple[str, ...]
  seeds: tuple[int, ...]
  hardware: str = ""
  eval_mode: str = "greedy decoding"
  skip: tuple[str, ...] = ()
  command: str = ""

  def pairs(self) -> list[tuple[str, str]]:
    """Every (task, method) the sweep runs, in table order (tasks outermost)."""
    skipped = set(self.skip)
    return [
      (task, method)
      for task in self.tasks
      for method in self.methods
      if f"{task}/{method}" not in skipped
    ]

  def to_dict(self) -> dict[str, Any]:
    """The JSON object of ``grid.json``."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any]) -> Grid:
    """The grid of a ``grid.json`` object; unknown keys raise ``ValueError`` listing valid ones."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
      raise ValueError(
        f"unknown keys {unknown} in {rundir.GRID_FILE}; valid keys: {sorted(fields)}."
      )
    return cls(
      tasks=tuple(raw["tasks"]),
      methods=tuple(raw["methods"]),
      seeds=tuple(int(s) for s in raw["seeds"]),
      hardware=raw.get("hardware", ""),
      eval_mode=raw.get("eval_mode", "greedy decoding"),
      skip=tuple(raw.get("skip", ())),
      command=raw.get("command", ""),
    )


def write_grid(workdir: str, grid: Grid) -> str:
  """Writes the sweep's ``grid.json`` (atomically); returns its path."""
  return rundir.write_json(os.path.join(workdir, rundir.GRID_FILE), grid.to_dict())


def discover_grid(workdir: str) -> Grid:
  """The sweep's ``grid.json`` if readable, else the tasks/methods/seeds found on disk, sorted."""
  raw = rundir.read_json(os.path.join(workdir, rundir.GRID_FILE))
  if raw is not None:
    return Grid.from_dict(raw)
  tasks, methods, seeds = set(), set(), set()
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"no sweep directory {workdir!r}.")
  for task in os.listdir(workdir):
    task_path = os.path.join(workdir, task)
    if task == rundir.PLOTS_DIR or task.startswith(".") or not os.path.isdir(task_path):
      continue
    for method in os.listdir(task_path):
      method_path = os.path.join(task_path, method)
      if not os.path.isdir(method_path):
        continue
      tasks.add(task)
      methods.add(method)
      seeds.update(s for s in map(rundir.seed_of, os.listdir(method_path)) if s is not None)
  if not tasks:
    raise FileNotFoundError(
      f"{workdir!r} holds no {rundir.GRID_FILE} and no <task>/<method>/ runs."
    )
  return Grid(tuple(sorted(tasks)), tuple(sorted(methods)), tuple(sorted(seeds)))


def collect_results(workdir: str, grid: Grid | None = None) -> list[dict]:
  """One row per (task, method, seed) of the grid, in table order, read from the run directories.

  Args:
    workdir: the sweep directory.
    grid: what to collect; default :func:`discover_grid`.

  Returns:
    Dicts with ``task``, ``method``, ``seed``, ``status`` (a :class:`RunStatus` value),
    ``error`` (last traceback line for failed groups, else ``""``) and, for completed runs, every
    metric of ``summary.json`` (the ``completed`` flag itself excepted).
  """
  grid = grid or discover_grid(workdir)
  rows = []
  for task, method in grid.pairs():
    error = rundir.read_error_line(workdir, task, method)
    for seed in grid.seeds:
      path = rundir.run_dir(workdir, task, method, seed)
      status = rundir.run_status(path, group_failed=error is not None)
      row = {"task": task, "method": method, "seed": int(seed), "status": status.value}
      row["error"] = error if status is RunStatus.FAILED else ""
      if status is RunStatus.COMPLETED:
        # The id columns come from the grid (summary.json repeats task and seed).
        summary = rundir.read_summary(path)
        row.update({k: v for k, v in summary.items() if k not in _IGNORED_SUMMARY_KEYS})
      rows.append(row)
  return rows


def probe_keys(rows: Sequence[Mapping]) -> list[str]:
  """The ``grad/variance@<step>`` keys present in any row, by increasing step."""
  return rundir.probe_keys(_PROBE_METRIC, {k for row in rows for k in row})


def metric_columns(rows: Sequence[Mapping]) -> list[str]:
  """results.csv metric columns: :data:`SUMMARY_KEYS`, probe variances, then any other key."""
  probes = probe_keys(rows)
  known = set(ID_COLUMNS) | set(SUMMARY_KEYS) | set(probes)
  extra = sorted({k for row in rows for k in row} - known)
  return list(SUMMARY_KEYS) + probes + extra


def _csv_value(value) -> str:
  if value is None:
    return ""
  if isinstance(value, (dict, list, tuple)):
    return json.dumps(value)
  return str(value)


def write_results_csv(path: str, rows: Sequence[Mapping]) -> str:
  """Writes one row per run: the id columns, then :func:`metric_columns` (empty = no value)."""
  columns = list(ID_COLUMNS) + metric_columns(rows)
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(columns)
  for row in rows:
    writer.writerow([_csv_value(row.get(c)) for c in columns])
  return rundir.write_text(path, text.getvalue())


# ---- Aggregation over seeds -------------------------------------------------------------


def _number(value) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def _values(runs: Sequence[Mapping], key: str) -> np.ndarray:
  vals = [_number(r.get(key)) for r in runs]
  return np.asarray([v for v in vals if v is not None], dtype=np.float64)


def _mean_std(runs: Sequence[Mapping], key: str, scale: float = 1.0, digits: int = 1) -> str:
  """``mean ± std`` over seeds (sample std, ddof=1; plain mean for one seed)."""
  vals = _values(runs, key) * scale
  if vals.size == 0:
    return "n/a"
  if vals.size == 1:
    return f"{vals[0]:.{digits}f}"
  return f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}"


def _mean(runs: Sequence[Mapping], key: str, scale: float = 1.0, digits: int = 1) -> str:
  vals = _values(runs, key) * scale
  return f"{vals.mean():.{digits}f}" if vals.size else "n/a"


def _threshold(runs: Sequence[Mapping], key: str, seconds: bool = False) -> str:
  """Mean over the seeds that reached the threshold, and how many did: ``140 (3/3)``."""
  vals = _values(runs, key)
  frac = f"({vals.size}/{len(runs)})"
  if vals.size == 0:
    return f"— {frac}"
  mean = vals.mean()
  if seconds:
    text = f"{mean:.1f}" if mean < 100 else f"{mean:.0f}"
  else:
    text = f"{mean:.0f}"
  return f"{text} {frac}"


def _geo_mean(runs: Sequence[Mapping], key: str) -> str:
  """Geometric mean over seeds: variances span decades, so average their logarithms."""
  vals = _values(runs, key)
  if vals.size == 0:
    return "n/a"
  if np.all(vals == 0):
    return "0"  # A deterministic gradient (soft, marginal, enumerated): no estimator noise.
  vals = vals[vals > 0]
  return f"{math.exp(np.log(vals).mean()):.1e}"


# A seed "solves" a task when its test exact match reaches this (the README's criterion).
SOLVED_ACCURACY = 0.99


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of a success rate (Wilson 1927): honest at 0/n and n/n."""
  if trials == 0:
    return 0.0, 1.0
  p = successes / trials
  centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
  return max(0.0, centre - half), min(1.0, centre + half)


def _solved(runs: Sequence[Mapping]) -> str:
  """Seeds whose test exact match is at least :data:`SOLVED_ACCURACY`: ``k/n``, and the 95%
  Wilson interval of the rate when there are 5 seeds or more."""
  vals = _values(runs, "test/seq_accuracy")
  k, n = int(np.sum(vals >= SOLVED_ACCURACY)), int(vals.size)
  if n < 5:
    return f"{k}/{n}"
  low, high = wilson_interval(k, n)
  return f"{k}/{n} [{100 * low:.0f}–{100 * high:.0f}%]"


def _align(runs: Sequence[Mapping]) -> str:
  strict = _mean(runs, "val/alignment_accuracy", 100.0)
  lenient = _values(runs, "val/lenient_alignment_accuracy")
  strict_vals = _values(runs, "val/alignment_accuracy")
  # The lenient variant only differs where a source symbol repeats: show it when it does.
  if lenient.size and (strict_vals.size != lenient.size or np.any(lenient != strict_vals)):
    return f"{strict} / {_mean(runs, 'val/lenient_alignment_accuracy', 100.0)}"
  return strict


# Multi-head cross-attention (attnlab.metrics.multi_head_alignment): columns shown when a
# row has them (Transformer runs).
_HEAD_ALIGN_KEYS = (
  "val/alignment_accuracy_best_head",
  "val/alignment_accuracy_head_mean",
  "val/alignment_accuracy_any_head",
)
# The any-head share of heads choosing uniformly at random, shown after the any-head share.
_ANY_HEAD_CHANCE_KEY = "val/alignment_accuracy_any_head_chance"
_HEAD_ENTROPY_KEYS = ("val/attention_entropy_per_head", "val/attention_entropy_best_head")
HEAD_COLUMNS = ("align best / mean / any head (chance) %", "head entropy (best)")


def has_head_metrics(rows: Sequence[Mapping]) -> bool:
  """Whether any run reports the multi-head alignment metrics."""
  return any(_HEAD_ALIGN_KEYS[0] in row for row in rows)


def _head_cells(runs: Sequence[Mapping]) -> list[str]:
  if not _values(runs, _HEAD_ALIGN_KEYS[0]).size:
    return ["—", "—"]
  align = " / ".join(_mean(runs, k, 100.0) for k in _HEAD_ALIGN_KEYS)
  chance = _mean(runs, _ANY_HEAD_CHANCE_KEY, 100.0)
  per_head, best = (_mean(runs, k, digits=2) for k in _HEAD_ENTROPY_KEYS)
  return [f"{align} ({chance})", f"{per_head} ({best})"]


def table_columns(probes: Sequence[str], multi_head: bool = False) -> list[str]:
  """Header of table.md for the given probe keys (and multi-head columns)."""
  return [
    "task",
    "method",
    "seeds ok",
    "converged",
    "solved",
    "steps / budget",
    *(f"steps→{t:.0%}" for t in rundir.THRESHOLDS),
    *(f"s→{t:.0%}" for t in rundir.THRESHOLDS),
    "test seq acc %",
    "test token acc %",
    "OOD seq acc %",
    "align acc %",
    "attn entropy",
    *(HEAD_COLUMNS if multi_head else ()),
    "KL(q‖p)",
    *(f"grad var @{rundir.probe_step(p)}" for p in probes),
    "ms/step",
  ]


def format_table(rows: Sequence[Mapping], grid: Grid) -> str:
  """Markdown table, one row per (task, method) in grid order, statistics over completed seeds.

  Args:
    rows: :func:`collect_results` rows.
    grid: gives the row order and the header's hardware and eval-mode lines.

  Returns:
    The markdown text of ``table.md``: a header (what the numbers mean, eval mode, hardware),
    the table, and a list of failed or unfinished groups.
  """
  probes = probe_keys(rows)
  multi_head = has_head_metrics(rows)
  columns = table_columns(probes, multi_head)
  head_note = [
    "- Multi-head models (the Transformer: layers × heads of cross-attention): `align acc %`"
    " is the argmax of the last layer's head-averaged weights; `align best / mean / any"
    " head (chance) %` the alignment accuracy of the best (layer, head) on the validation"
    " set (chosen there: optimistic), of the weights averaged over every layer and head, and"
    " the share of steps on which some head's argmax is the gold position (for hard"
    " attention: the gold symbol was read), then that share's chance level, 1 - (1 - 1/n)^K"
    " for K heads choosing uniformly among a step's n source positions; `head entropy"
    " (best)`: each head's mean entropy in nats, averaged over heads (the best head's)."
    " Each seed's best head is its own (a different model); the table averages them."
  ]
  lines = [
    "# Soft vs hard attention: comparison",
    "",
    f"- Evaluation: {grid.eval_mode}; accuracies in % on the fixed test / OOD (longer inputs)"
    " sets; alignment accuracy (argmax attention on the gold source position) on validation,"
    " EOS and undefined steps excluded; where a symbol repeats in the source (e.g. sort) the"
    " lenient variant, which accepts any position holding the same symbol, follows the '/'.",
    "- `mean ± std` over completed seeds (sample std). `steps→90%` / `s→99%`: steps / seconds"
    " to reach that validation exact-sequence accuracy, averaged over the seeds that did,"
    " with (seeds that did / completed seeds).",
    "- `converged`: seeds whose run met its stopping rule (validation exact match at least"
    " `stop_accuracy` at `stop_patience` evaluations in a row, configs/default.py) and stopped"
    " there; the others trained the whole step budget. `steps / budget`: mean updates"
    " trained over completed seeds, and the budget. Test and OOD are evaluated once, on the"
    " final parameters.",
    f"- `solved`: seeds whose test exact match is at least {SOLVED_ACCURACY:.0%} (with 5 seeds"
    " or more, the 95% Wilson interval of that rate): outcomes that flip between solved and"
    " collapsed are rates, not single-seed findings.",
    "- `KL(q‖p)`: for variational attention, the KL from the inference network's posterior"
    " to the attention (the prior) per target token, averaged over the last training"
    " steps (`—`: no posterior).",
    *(head_note if multi_head else []),
    "- `grad var @k`: gradient variance of the estimator at step k on a fixed probe batch"
    " (geometric mean over seeds); `ms/step`: training wall time per step of a run (of all"
    " seeds of the row together where they trained vmapped: `num_seeds_vmapped` in"
    " results.csv).",
    f"- Hardware: {grid.hardware or 'not recorded'}.",
    f"- Grid: {len(grid.tasks)} tasks × {len(grid.methods)} methods × {len(grid.seeds)} seeds"
    f" (seeds {', '.join(str(s) for s in grid.seeds)}).",
    "",
    "| " + " | ".join(columns) + " |",
    "|" + "|".join("---" if i < 2 else "--:" for i in range(len(columns))) + "|",
  ]
  problems = []
  by_group: dict[tuple[str, str], list[Mapping]] = {}
  for row in rows:
    by_group.setdefault((row["task"], row["method"]), []).append(row)
  for task, method in grid.pairs():
    group = by_group.get((task, method), [])
    done = [r for r in group if r["status"] == RunStatus.COMPLETED.value]
    seeds_ok = f"{len(done)}/{len(group)}"
    not_done = [r for r in group if r["status"] != RunStatus.COMPLETED.value]
    if not_done:
      status = sorted({r["status"] for r in not_done})
      error = next((r["error"] for r in not_done if r["error"]), "")
      problems.append(
        f"- {task}/{method}: {len(not_done)} run(s) {', '.join(status)}"
        + (f" — `{error}` (see `{task}/{method}/{rundir.ERROR_FILE}`)" if error else "")
      )
      if not done:
        seeds_ok += " " + "/".join(status)
    if not done:
      cells = [task, method, seeds_ok] + [""] * (len(columns) - 3)
    else:
      cells = [
        task,
        method,
        seeds_ok,
        f"{sum(r.get('converged') is True for r in done)}/{len(done)}",
        _solved(done),
        f"{_mean(done, 'steps_trained', digits=0)} / {_mean(done, 'steps', digits=0)}",
        *(_threshold(done, rundir.steps_to_key(t)) for t in rundir.THRESHOLDS),
        *(_threshold(done, rundir.seconds_to_key(t), seconds=True) for t in rundir.THRESHOLDS),
        _mean_std(done, "test/seq_accuracy", 100.0),
        _mean(done, "test/token_accuracy", 100.0),
        _mean_std(done, "ood/seq_accuracy", 100.0),
        _align(done),
        _mean(done, "val/attention_entropy", digits=2),
        *(_head_cells(done) if multi_head else []),
        _mean(done, "train/kl", digits=2) if _values(done, "train/kl").size else "—",
        *[_geo_mean(done, p) for p in probes],
        _mean(done, "ms_per_step"),
      ]
    lines.append("| " + " | ".join(cells) + " |")
  if problems:
    lines += ["", "## Failed or unfinished runs", "", *problems]
  return "\n".join(lines) + "\n"


def _readable_metrics(run: str, problems: list[str] | None) -> list[dict]:
  """The run's metrics rows; none (and a line in ``problems``) if ``metrics.jsonl`` is corrupt."""
  try:
    return rundir.read_metrics(run)
  except ValueError as e:
    if problems is None:
      raise
    problems.append(f"{e} (left out of the learning curves)")
    return []


def write_comparison_plots(
  workdir: str, grid: Grid, problems: list[str] | None = None
) -> list[str]:
  """``DIR/plots/<task>.png``: validation accuracy, loss and gradient variance per method.

  Args:
    workdir: the sweep directory.
    grid: the tasks, methods and seeds to plot.
    problems: if given, a run whose ``metrics.jsonl`` is corrupt is left out and a line
      naming it is appended here (otherwise its ``ValueError`` propagates).
  """
  paths = []
  for task in grid.tasks:
    runs_by_method = {}
    for method in grid.methods:
      runs = [
        _readable_metrics(rundir.run_dir(workdir, task, method, s), problems) for s in grid.seeds
      ]
      runs_by_method[method] = [r for r in runs if r]
    if not any(runs_by_method.values()):
      continue
    path = os.path.join(workdir, rundir.PLOTS_DIR, f"{task}.png")
    paths.append(plots.plot_comparison_curves(path, runs_by_method, title=task))
  return paths


@dataclasses.dataclass(frozen=True)
class Rebuilt:
  """Files written by :func:`rebuild`, and what could not be read (``problems``: one line each,
  naming the file and the reason)."""

  results_csv: str
  table_md: str
  plots: tuple[str, ...]
  rows: tuple[dict, ...]
  problems: tuple[str, ...] = ()
  claims_md: str = ""


def rebuild(workdir: str, grid: Grid | None = None, *, with_plots: bool = True) -> Rebuilt:
  """Re-reads every run of the sweep and rewrites ``results.csv``, ``table.md``, ``claims.md``
  (:func:`write_claims`) and the plots.

  Args:
    workdir: the sweep directory.
    grid: what to report; default the sweep's ``grid.json`` (or what is on disk).
    with_plots: also write ``DIR/plots/<task>.png``.

  Returns:
    :class:`Rebuilt` with the paths, the rows and the problems: a corrupt ``metrics.jsonl`` is
    left out of the plots (and listed) rather than stopping the rebuild; an unreadable or
    incomplete ``summary.json`` makes its run unfinished (logged by ``rundir``).
  """
  grid = grid or discover_grid(workdir)
  rows = collect_results(workdir, grid)
  csv_path = write_results_csv(os.path.join(workdir, rundir.RESULTS_FILE), rows)
  text = format_table(rows, grid)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  md_path = rundir.write_text(
    os.path.join(workdir, rundir.TABLE_FILE),
    text + f"\n_Built {stamp} from {len(rows)} run directories._\n",
  )
  claims_path = write_claims(workdir, rows, grid)
  problems: list[str] = []
  plot_paths = tuple(write_comparison_plots(workdir, grid, problems)) if with_plots else ()
  return Rebuilt(csv_path, md_path, plot_paths, tuple(rows), tuple(problems), claims_path)


def _parse_csv_value(text: str) -> Any:
  """A results.csv cell back as a value: empty -> None, True/False, numbers, else the text."""
  if text == "":
    return None
  if text in ("True", "False"):
    return text == "True"
  try:
    return int(text)
  except ValueError:
    pass
  try:
    return float(text)
  except ValueError:
    return text


def read_results_csv(path: str) -> list[dict[str, Any]]:
  """The rows of a ``results.csv`` (:func:`write_results_csv`), with typed values.

  Args:
    path: the file.

  Returns:
    One dict per run, every column present: ``None`` for an empty cell, booleans, ints and
    floats as such, other cells as text.

  Raises:
    FileNotFoundError: no such file.
  """
  with open(path, newline="") as f:
    return [{k: _parse_csv_value(v) for k, v in row.items()} for row in csv.DictReader(f)]


# ---- claims.md: the textbook soft-vs-hard table, row by row -------------------------------
#
# The standard comparison of soft and hard attention is a table of five rows (mechanism;
# training; computational cost; interpretability; use cases). claims.md states, for each,
# what this sweep (and experiments/bench_cost.py, when its results are found) measured, with
# the numbers and the commands, and whether the textbook claim holds here.

# The repository's results of experiments/bench_cost.py, used when the sweep directory holds
# no bench_cost.json of its own.
REPO_BENCH_COST = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "results",
  rundir.BENCH_COST_FILE,
)
_BENCH_COST_COMMAND = "python -m experiments.bench_cost --out=results/bench_cost"
_S99 = rundir.steps_to_key(0.99)
_SEC99 = rundir.seconds_to_key(0.99)
# Verdict words.
_HOLDS, _PARTLY, _FAILS, _UNMEASURED = "holds", "holds in part", "does not hold", "not measured"
# A row the models satisfy because they are built to (the mechanism): shown, not tested.
_BY_CONSTRUCTION = "holds by construction"


@dataclasses.dataclass(frozen=True)
class _Row:
  """The completed runs of one (task, method)."""

  task: str
  method: str
  runs: tuple[Mapping, ...]

  def mean(self, key: str) -> float | None:
    vals = _values(self.runs, key)
    return float(vals.mean()) if vals.size else None

  @property
  def kind(self) -> str:
    """``soft`` (softmax, expected context), ``rl`` (hard, REINFORCE) or ``other``."""
    attention = self.runs[0].get("attention")
    if attention == "soft":
      return "soft"
    if attention == "hard" and self.runs[0].get("objective") == "reinforce":
      return "rl"
    return "other"

  @property
  def multi_head(self) -> bool:
    return _HEAD_ALIGN_KEYS[0] in self.runs[0]

  def align_key(self) -> str:
    return _HEAD_ALIGN_KEYS[0] if self.multi_head else "val/alignment_accuracy"

  def entropy_key(self) -> str:
    return _HEAD_ENTROPY_KEYS[0] if self.multi_head else "val/attention_entropy"

  def solved(self) -> tuple[int, int]:
    vals = _values(self.runs, "test/seq_accuracy")
    return int(np.sum(vals >= SOLVED_ACCURACY)), len(self.runs)

  def name(self) -> str:
    return f"`{self.method}`"

  def accuracy(self) -> str:
    k, n = self.solved()
    return f"{_mean_std(self.runs, 'test/seq_accuracy', 100.0)}% test exact match ({k}/{n} solved)"

  def steps(self) -> str:
    return (
      f"{_threshold(self.runs, _S99)} steps and {_threshold(self.runs, _SEC99, seconds=True)}"
      " s to 99% validation"
    )


def _rows_by_task(rows: Sequence[Mapping], grid: Grid) -> dict[str, list[_Row]]:
  done: dict[tuple[str, str], list[Mapping]] = {}
  for row in rows:
    if row["status"] == RunStatus.COMPLETED.value:
      done.setdefault((row["task"], row["method"]), []).append(row)
  by_task: dict[str, list[_Row]] = {}
  for task, method in grid.pairs():
    if (task, method) in done:
      by_task.setdefault(task, []).append(_Row(task, method, tuple(done[(task, method)])))
  return by_task


def _soft_reference_and_hard(by_task: Mapping[str, list[_Row]]):
  """``(task, soft, hard rows)`` of every task with a soft reference (its first softmax row)
  and REINFORCE rows."""
  for task, rows in by_task.items():
    soft = next((r for r in rows if r.kind == "soft"), None)
    hard = [r for r in rows if r.kind == "rl"]
    if soft is not None and hard:
      yield task, soft, hard


def _soft_and_hard(by_task: Mapping[str, list[_Row]]):
  """:func:`_soft_reference_and_hard` of the tasks whose soft reference solved a seed: where
  soft attention learnt nothing within the budget, every row is unconverged and the task
  compares budgets, not attention kinds (:func:`_unlearnt`)."""
  for task, soft, hard in _soft_reference_and_hard(by_task):
    if soft.solved()[0]:
      yield task, soft, hard


def _unlearnt(by_task: Mapping[str, list[_Row]]) -> list[str]:
  """One phrase per task left out of the claims because its soft reference solved no seed."""
  return [
    f"{task} (soft {soft.name()} solved {soft.solved()[0]}/{soft.solved()[1]} seeds)"
    for task, soft, _ in _soft_reference_and_hard(by_task)
    if not soft.solved()[0]
  ]


_f = rundir.format_number


def _mechanism(by_task) -> tuple[str, list[str]]:
  lines = []
  for task, soft, rl in _soft_and_hard(by_task):
    hard = rl[0]
    lines.append(
      f"- {task}: soft {soft.name()} puts weight on {_f(soft.mean('val/support_size'))}"
      f" source positions per step (every unmasked one), entropy"
      f" {_f(soft.mean(soft.entropy_key()), 2)} nats{' per head' if soft.multi_head else ''};"
      f" hard {hard.name()} reads one position per step{' and head' if hard.multi_head else ''}"
      f" (its sampled or argmax choice), from a distribution of entropy"
      f" {_f(hard.mean(hard.entropy_key()), 2)} nats."
    )
  if not lines:
    return _UNMEASURED, lines
  lines.append(
    "- This row describes how the models are built (attnlab.modules), not an outcome: the"
    " numbers above show the built mechanism at work; no run could have contradicted it."
  )
  return _BY_CONSTRUCTION, lines


def _compare_training(soft: _Row, hard: _Row) -> int:
  """-1 if ``hard`` trained slower than ``soft`` (fewer seeds solved; or later, or never, to
  99% validation), 1 if faster, 0 if neither can be told (same solved count, same steps)."""
  (soft_k, _), (hard_k, _) = soft.solved(), hard.solved()
  if hard_k != soft_k:
    return 1 if hard_k > soft_k else -1
  soft_steps, hard_steps = soft.mean(_S99), hard.mean(_S99)
  if soft_steps is None or hard_steps is None:
    return 0 if soft_steps is None and hard_steps is None else (1 if soft_steps is None else -1)
  return 0 if hard_steps == soft_steps else (1 if hard_steps < soft_steps else -1)


def _training(by_task, probes: Sequence[str]) -> tuple[str, list[str]]:
  lines, outcomes = [], []
  probe = probes[0] if probes else None
  for task, soft, rl in _soft_and_hard(by_task):
    parts = []
    for hard in rl:
      outcomes.append(_compare_training(soft, hard))
      at = f" at step {probe.rpartition('@')[2]}" if probe else ""
      var = f", gradient variance {_geo_mean(hard.runs, probe)}{at}" if probe else ""
      parts.append(f"{hard.name()} {hard.accuracy()}, {hard.steps()}{var}")
    soft_var = f", gradient variance {_geo_mean(soft.runs, probe)}" if probe else ""
    lines.append(
      f"- {task}: soft {soft.name()} {soft.accuracy()}, {soft.steps()}{soft_var}; "
      + "; ".join(parts)
      + "."
    )
  if not lines:
    return _UNMEASURED, lines
  slower, faster = outcomes.count(-1), outcomes.count(1)
  lines.append(
    f"- Of {len(outcomes)} (task, REINFORCE row) pairs, hard attention trained slower than"
    f" soft attention (fewer seeds solved, or later or never at 99% validation) in {slower},"
    f" faster in {faster}, and could not be told apart in {len(outcomes) - slower - faster}."
    " Soft gradients are exact (variance 0); REINFORCE's are estimates (variance above)."
  )
  if not slower and not faster:
    return _UNMEASURED, lines
  return (_HOLDS if not faster else _PARTLY if slower else _FAILS), lines


def _cheaper_from(rows: Sequence[Mapping], key: str, at_least: float = 1.5) -> int | None:
  cheaper = [r["length"] for r in rows if (r.get(key) or 0) >= at_least]
  return min(cheaper) if cheaper else None


def _cost(by_task, cost: Mapping | None, cost_source: str) -> tuple[str, list[str]]:
  lines, inference_cheaper, training_dearer = [], False, False
  if cost:
    s = cost["settings"]
    lines.append(
      f"- Inference, one decoder step (`{_BENCH_COST_COMMAND}`, {cost_source}; batch"
      f" {s['batch']}, key width D = {s['key_dim']}; soft/hard time, > 1: hard is cheaper):"
    )
    for value_dim in s["value_dims"]:
      rows = sorted(
        (r for r in cost["rows"] if r["value_dim"] == value_dim), key=lambda r: r["length"]
      )
      if not rows:
        continue
      first, last = rows[0], rows[-1]
      start = _cheaper_from(rows, "time_ratio")
      inference_cheaper |= start is not None
      where = f"at least 1.5x faster from S = {start:,}" if start else "never 1.5x faster"
      lines.append(
        f"  - Dv = {value_dim}: soft/hard {_f(first['time_ratio'], 2)} at S = {first['length']:,},"
        f" {_f(last['time_ratio'], 2)} at S = {last['length']:,} (work model"
        f" {_f(last['model_ratio'], 1)}): hard is {where}. Memory the step allocates beyond"
        f" K and V: soft/hard {_f(last['alloc_ratio'], 2)}. Training backward at S ="
        f" {last['length']:,}: soft / REINFORCE through autodiff (dense value gradient)"
        f" {_f(last['train_time_ratio_hard_dense'], 2)}, soft / the surrogate's own"
        f" index-only backward {_f(last['train_time_ratio_hard_index'], 2)}."
      )
    lines.append(
      "  - Why: the scores K·q are O(S·D) for both kinds and K and V are held for both (the"
      " inputs); only the value aggregation shrinks, O(S·Dv) to O(Dv)."
    )
  else:
    lines.append(
      f"- Inference: no bench_cost.json found (run `{_BENCH_COST_COMMAND}`); not measured."
    )
  for task, soft, rl in _soft_and_hard(by_task):
    parts = []
    for hard in rl:
      hard_ms, soft_ms = hard.mean("ms_per_step"), soft.mean("ms_per_step")
      ratio = hard_ms / soft_ms if hard_ms is not None and soft_ms else None
      training_dearer |= ratio is not None and ratio > 1
      parts.append(
        f"{hard.name()} {_f(hard.mean('ms_per_step'))} ms/step ({_f(ratio, 2)}x soft),"
        f" {_f(hard.mean('train_seconds'))} s of training"
      )
    lines.append(
      f"- Training, {task}: soft {soft.name()} {_f(soft.mean('ms_per_step'))} ms/step,"
      f" {_f(soft.mean('train_seconds'))} s of training (to convergence or the budget); "
      + "; ".join(parts)
      + "."
    )
  if not cost and not training_dearer:
    return _UNMEASURED, lines
  if inference_cheaper and not training_dearer:
    verdict = _HOLDS
  elif inference_cheaper:
    verdict = _PARTLY
  else:
    verdict = _FAILS
  return verdict, lines


def _interpretability(by_task) -> tuple[str, list[str]]:
  lines, sharper, aligned, pairs = [], 0, 0, 0
  for task, soft, rl in _soft_and_hard(by_task):
    soft_align, soft_entropy = soft.mean(soft.align_key()), soft.mean(soft.entropy_key())
    if soft_align is None:
      continue
    parts = []
    for hard in rl:
      hard_align, hard_entropy = hard.mean(hard.align_key()), hard.mean(hard.entropy_key())
      if hard_align is None:
        continue
      pairs += 1
      sharper += (
        hard_entropy is not None and soft_entropy is not None and hard_entropy < soft_entropy
      )
      aligned += hard_align >= soft_align
      parts.append(
        f"{hard.name()} alignment {_f(hard_align, 1, 100.0)}%, entropy {_f(hard_entropy, 2)}"
      )
    what = "best-head alignment" if soft.multi_head else "alignment"
    lines.append(
      f"- {task} ({what} on validation, entropy in nats{' per head' if soft.multi_head else ''}):"
      f" soft {soft.name()} {_f(soft_align, 1, 100.0)}%, entropy {_f(soft_entropy, 2)}; "
      + "; ".join(parts)
      + "."
    )
  if not pairs:
    return _UNMEASURED, lines
  lines.append(
    f"- Hard attention's distribution was sharper (lower entropy) than soft's in {sharper} of"
    f" {pairs} pairs, and aligned at least as well in {aligned} of {pairs} (an entropy bonus"
    " in training, where a method has one, keeps its entropy up; hard attention decodes by"
    " the argmax). Where soft attention aligns as well, its argmax is as clear a focus point"
    " as hard attention's."
  )
  verdict = _HOLDS if sharper == aligned == pairs else (_PARTLY if sharper or aligned else _FAILS)
  return verdict, lines


def _use_cases(by_task) -> tuple[str, list[str]]:
  gaps, lines = {}, []
  for task, soft, rl in _soft_and_hard(by_task):
    scored = [r for r in rl if r.mean("test/seq_accuracy") is not None]
    soft_accuracy = soft.mean("test/seq_accuracy")
    if not scored or soft_accuracy is None:
      lines.append(f"- {task}: no test exact match for soft or REINFORCE rows; left out.")
      continue
    best = max(scored, key=lambda r: r.mean("test/seq_accuracy"))
    gaps[task] = (best, best.mean("test/seq_accuracy") - soft_accuracy)
    solved, runs = best.solved()
    lines.append(
      f"- {task}: best REINFORCE row {best.name()} minus soft: {_f(gaps[task][1], 1, 100.0)}"
      f" points of test exact match ({solved}/{runs} seeds solved)."
    )
  if "localize" not in gaps or len(gaps) < 2:
    lines.append("- The localization task is not in this sweep: the claim is not measured here.")
    return _UNMEASURED, lines
  others = [g for t, (_, g) in gaps.items() if t != "localize"]
  best_local, local = gaps["localize"]
  better = local >= max(others)
  solved, runs = best_local.solved()
  lines.append(
    f"- On localization hard attention trails soft by {_f(-local, 1, 100.0)} points, against"
    f" {_f(-max(others), 1, 100.0)} to {_f(-min(others), 1, 100.0)} on the sequence tasks: it is"
    f" {'relatively best' if better else 'not relatively best'} on the task the table"
    f" gives it, and solves it in {solved} of {runs} seeds. The claim holds only if both"
    " (a small gap where soft attention fails too is no use case)."
  )
  return (_HOLDS if better and solved == runs else _FAILS), lines


def format_claims(
  rows: Sequence[Mapping],
  grid: Grid,
  *,
  cost: Mapping | None = None,
  cost_source: str = "",
  workdir: str = "DIR",
) -> str:
  """The text of ``claims.md``: the textbook table's five rows, each against the measurements.

  Soft attention here is each task's first softmax row; hard attention the rows trained by
  REINFORCE (``objective == "reinforce"``). A task whose soft row solved no seed is left out
  of every row, and named: its rows are all unconverged. Alignment and entropy are the
  multi-head metrics (best head, mean over heads) where the runs have them.

  Args:
    rows: :func:`collect_results` rows.
    grid: the sweep's grid (its ``command`` names how it was produced).
    cost: ``experiments/bench_cost.py``'s report, or None.
    cost_source: where ``cost`` was read, for the text.
    workdir: the sweep directory, for the rebuild command.

  Returns:
    Markdown.
  """
  by_task = _rows_by_task(rows, grid)
  produced = f"`{grid.command}`" if grid.command else f"the sweep in `{workdir}`"
  sections = [
    (
      "Mechanism",
      "soft attention takes a weighted average of every input; hard attention selects one.",
      _mechanism(by_task),
    ),
    (
      "Training",
      "soft attention is differentiable and trains by backpropagation; hard attention is"
      " not, and trains by reinforcement learning (REINFORCE), with noisier gradients.",
      _training(by_task, probe_keys(rows)),
    ),
    (
      "Computational cost",
      "hard attention is cheaper (it focuses on the key inputs); soft attention costs more"
      " (it processes the entire input).",
      _cost(by_task, cost, cost_source),
    ),
    (
      "Interpretability",
      "hard attention is highly interpretable (clear focus points); soft attention less.",
      _interpretability(by_task),
    ),
    (
      "Use cases",
      "hard attention for image captioning and object localization; soft attention for"
      " translation and speech.",
      _use_cases(by_task),
    ),
  ]
  unlearnt = _unlearnt(by_task)
  left_out = (
    [
      f"- Left out of every row: {'; '.join(unlearnt)}. Where soft attention learnt nothing"
      " within the budget, every row is unconverged: such a task compares budgets, not"
      " attention kinds."
    ]
    if unlearnt
    else []
  )
  lines = [
    "# Soft vs hard attention: the textbook table, measured",
    "",
    f"- Measured by {produced} (`table.md` and `results.csv` beside this file; rebuilt by"
    f" `python -m experiments.table --workdir={workdir}`). Grid: {', '.join(grid.tasks)} ×"
    f" {', '.join(grid.methods)} × seeds {', '.join(str(s) for s in grid.seeds)}.",
    "- Soft: each task's first softmax row; hard: the rows trained by REINFORCE. 'Solved':"
    f" test exact match at least {SOLVED_ACCURACY:.0%}. Hardware:"
    f" {grid.hardware or 'not recorded'}.",
    *left_out,
    "",
    "| row | textbook claim | verdict here |",
    "|---|---|---|",
    *(f"| {title} | {claim} | {verdict} |" for title, claim, (verdict, _) in sections),
  ]
  for title, claim, (verdict, details) in sections:
    lines += ["", f"## {title}: {verdict}", "", f"Textbook: {claim}", "", *details]
  return "\n".join(lines) + "\n"


def read_bench_cost(workdir: str) -> tuple[dict | None, str]:
  """``experiments/bench_cost.py``'s report and where it came from, for the text: the
  sweep's ``bench_cost.json``, else the repository's ``results/bench_cost.json`` (said to be
  the repository's, with the hardware it records: not this sweep's measurement);
  ``(None, "")`` when neither is readable."""
  for path in (os.path.join(workdir, rundir.BENCH_COST_FILE), REPO_BENCH_COST):
    report = rundir.read_json(path)
    if report is not None and "rows" in report and "settings" in report:
      if path == REPO_BENCH_COST:
        measured = report.get("hardware", "")
        return report, (
          "the repository's results/bench_cost.json, not measured by this sweep"
          + (f" ({measured})" if measured else "")
        )
      return report, os.path.relpath(path)
  return None, ""


def write_claims(workdir: str, rows: Sequence[Mapping], grid: Grid) -> str:
  """Writes ``DIR/claims.md`` (:func:`format_claims`); returns its path."""
  cost, source = read_bench_cost(workdir)
  text = format_claims(rows, grid, cost=cost, cost_source=source, workdir=workdir)
  return rundir.write_text(os.path.join(workdir, rundir.CLAIMS_FILE), text)
