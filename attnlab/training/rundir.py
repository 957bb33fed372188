"""The run directory: its file names, atomic writes, tolerant readers, summary keys and status.

The trainer writes runs, the sweep reads them; both go through this module only::

  SWEEP/grid.json                        what the sweep asked for (tasks, methods, seeds, ...)
  SWEEP/<task>/<method>/seed_<n>/        one run (RUN), see :func:`run_dir`:
      config.json                        the resolved run config
      metrics.jsonl                      one JSON object per evaluation, appended as it goes
      summary.json                       written once the run has finished
      checkpoints/                       orbax (:mod:`attnlab.training.checkpoints`)
      heatmaps.png, learning_curve.png
  SWEEP/<task>/<method>/error.txt        traceback, when training that group failed
  SWEEP/results.csv, SWEEP/table.md      built from the runs (:mod:`attnlab.sweep.table`)
  SWEEP/plots/<task>.png
  SWEEP/shards/shard_<i>_of_<n>.json     what shard i of a sharded sweep did (its only own file)

Writing: every whole file is written to a temporary file named after it and the writing
process (``<file>.<pid>.tmp``), then renamed over it (``os.replace``), so a reader sees the old
file or the new one, never half of one, and two writers never share a temporary file.
``metrics.jsonl`` grows a line per evaluation; on resume it is rewritten (atomically) from the
checkpointed history, so a resumed run has exactly the rows of an uninterrupted one.
Non-finite floats are written as JSON ``null``: the files stay standard JSON.

Reading, one policy everywhere: a missing file is absent; an unreadable JSON file (torn or
corrupt) is logged as a warning and treated as absent, so a torn ``summary.json`` marks the run
unfinished (the trainer resumes it, a sweep retrains it) instead of crashing the reader; the
last line of ``metrics.jsonl`` may be torn by a crash mid-append and is skipped, while a bad
line before it is corruption and raises.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from attnlab.enums import Choice

# In a run directory.
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
HEATMAPS_FILE = "heatmaps.png"
LEARNING_CURVE_FILE = "learning_curve.png"
# In a sweep directory (error.txt: in a group directory).
GRID_FILE = "grid.json"
RESULTS_FILE = "results.csv"
TABLE_FILE = "table.md"
PLOTS_DIR = "plots"
ERROR_FILE = "error.txt"
SPEEDUP_FILE = "speedup.json"
SHARDS_DIR = "shards"
_SEED_PREFIX = "seed_"

# Summary keys. A finished run's summary.json says COMPLETED_KEY: true.
COMPLETED_KEY = "completed"
# Validation exact-sequence accuracies whose first crossing the summary reports.
THRESHOLDS = (0.9, 0.99)
THRESHOLD_METRIC = "val/seq_accuracy"

_log = logging.getLogger(__name__)


class RunStatus(Choice):
  """State of one run directory (see :func:`run_status`)."""

  COMPLETED = "completed"  # summary.json with completed: true.
  FAILED = "failed"  # its group raised; the group's error.txt holds the traceback.
  INCOMPLETE = "incomplete"  # started but not finished (interrupted); rerun to resume.
  MISSING = "missing"  # never started.


# ---- Paths ------------------------------------------------------------------------------


def group_dir(sweep: str, task: str, method: str) -> str:
  """``SWEEP/<task>/<method>``: the runs of one method on one task (and its ``error.txt``)."""
  return os.path.join(sweep, task, method)


def run_dir(sweep: str, task: str, method: str, seed: int) -> str:
  """``SWEEP/<task>/<method>/seed_<n>``: where one run of a sweep writes its outputs."""
  return os.path.join(group_dir(sweep, task, method), f"{_SEED_PREFIX}{int(seed)}")


def shard_status_path(sweep: str, index: int, count: int) -> str:
  """``SWEEP/shards/shard_<index>_of_<count>.json``: the status file of one sweep shard."""
  return os.path.join(sweep, SHARDS_DIR, f"shard_{int(index)}_of_{int(count)}.json")


def seed_of(run_dir_name: str) -> int | None:
  """The seed ``n`` of a run directory named ``seed_<n>``; ``None`` for any other name."""
  digits = run_dir_name[len(_SEED_PREFIX) :]
  return int(digits) if run_dir_name.startswith(_SEED_PREFIX) and digits.isdigit() else None


# ---- Writing ----------------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
  """Converts numpy/jax scalars, arrays and containers to JSON values (non-finite -> None)."""
  if isinstance(value, Mapping):
    return {str(k): to_json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_json_value(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy or jax array.
    return to_json_value(np.asarray(value).tolist())
  return value


def write_text(path: str, text: str) -> str:
  """Writes ``text`` to ``path`` atomically (temporary file of this process, then rename).

  Returns:
    ``path``.
  """
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w", newline="") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def _json_line(value: Any) -> str:
  return json.dumps(to_json_value(value), sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str, value: Any) -> str:
  """Writes ``value`` as indented, key-sorted, standard JSON, atomically.

  Returns:
    ``path``.
  """
  text = json.dumps(to_json_value(value), indent=2, sort_keys=True, allow_nan=False)
  return write_text(path, text)


def write_config(run: str, config: Mapping[str, Any]) -> None:
  """Writes ``RUN/config.json``."""
  write_json(os.path.join(run, CONFIG_FILE), config)


def write_summary(run: str, summary: Mapping[str, Any]) -> None:
  """Writes ``RUN/summary.json`` (it should say ``completed: true``)."""
  write_json(os.path.join(run, SUMMARY_FILE), summary)


def write_metrics(run: str, rows: Sequence[Mapping[str, Any]]) -> None:
  """Rewrites ``RUN/metrics.jsonl`` with exactly ``rows`` (at the start and on resume)."""
  write_text(os.path.join(run, METRICS_FILE), "".join(_json_line(r) for r in rows))


def append_metrics(run: str, row: Mapping[str, Any]) -> None:
  """Appends one evaluation row to ``RUN/metrics.jsonl``."""
  with open(os.path.join(run, METRICS_FILE), "a") as f:
    f.write(_json_line(row))


def write_error(sweep: str, task: str, method: str, text: str) -> str:
  """Writes the group's ``error.txt`` (a traceback), creating the group directory.

  Returns:
    Its path.
  """
  path = os.path.join(group_dir(sweep, task, method), ERROR_FILE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return write_text(path, text)


def clear_error(sweep: str, task: str, method: str) -> None:
  """Removes the group's ``error.txt``, if any (a new attempt decides the status)."""
  path = os.path.join(group_dir(sweep, task, method), ERROR_FILE)
  if os.path.exists(path):
    os.remove(path)


# ---- Reading ----------------------------------------------------------------------------


def read_json(path: str) -> Any:
  """The JSON value in ``path``; ``None`` if it is missing or unreadable (logged)."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError included.
    _log.warning("ignoring unreadable %s (treated as absent): %s", path, e)
    return None


def _read_object(path: str) -> dict[str, Any] | None:
  value = read_json(path)
  if value is not None and not isinstance(value, dict):
    _log.warning("ignoring %s (treated as absent): not a JSON object", path)
    return None
  return value


def read_config(run: str) -> dict[str, Any] | None:
  """``RUN/config.json``, or ``None`` if missing or unreadable."""
  return _read_object(os.path.join(run, CONFIG_FILE))


def read_summary(run: str) -> dict[str, Any] | None:
  """``RUN/summary.json``, or ``None`` if missing or unreadable (the run is not finished)."""
  return _read_object(os.path.join(run, SUMMARY_FILE))


def read_metrics(run: str) -> list[dict[str, Any]]:
  """The rows of ``RUN/metrics.jsonl`` (none if it is missing); a torn last line is skipped.

  Raises:
    ValueError: a line before the last is not JSON (the file is corrupt, not torn).
  """
  try:
    with open(os.path.join(run, METRICS_FILE)) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as err:
      if i != len(lines) - 1:
        raise ValueError(f"{run}/{METRICS_FILE}: line {i + 1} is not JSON: {line[:80]!r}") from err
  return rows


def read_error_line(sweep: str, task: str, method: str) -> str | None:
  """The last line of the group's ``error.txt`` (the exception), or ``None`` if none."""
  try:
    with open(os.path.join(group_dir(sweep, task, method), ERROR_FILE)) as f:
      lines = [line.strip() for line in f if line.strip()]
  except FileNotFoundError:
    return None
  return lines[-1] if lines else "unknown error"


# ---- Status -----------------------------------------------------------------------------


def is_finished(run: str) -> bool:
  """True iff ``RUN/summary.json`` is readable and says ``completed: true``."""
  summary = read_summary(run)
  return summary is not None and summary.get(COMPLETED_KEY) is True


def run_status(run: str, group_failed: bool) -> RunStatus:
  """The :class:`RunStatus` of a run directory.

  Args:
    run: the run directory.
    group_failed: whether its group holds an ``error.txt``.

  Returns:
    ``COMPLETED`` if finished, else ``FAILED`` if its group failed, else ``INCOMPLETE`` if the
    directory exists, else ``MISSING``.
  """
  if is_finished(run):
    return RunStatus.COMPLETED
  if group_failed:
    return RunStatus.FAILED
  return RunStatus.INCOMPLETE if os.path.isdir(run) else RunStatus.MISSING


# ---- Summary keys -----------------------------------------------------------------------


def steps_to_key(threshold: float) -> str:
  """Summary key of the first step whose validation sequence accuracy reached ``threshold``."""
  return f"steps_to_val_seq_acc_{threshold}"


def seconds_to_key(threshold: float) -> str:
  """Summary key of the training seconds at that step (see :func:`steps_to_key`)."""
  return f"seconds_to_val_seq_acc_{threshold}"


def probe_key(metric: str, step: int) -> str:
  """Summary key of a gradient-probe metric at one step: ``<metric>@<step>``."""
  return f"{metric}@{int(step)}"


def probe_keys(metric: str, keys: Iterable[str]) -> list[str]:
  """The :func:`probe_key` keys of ``metric`` among ``keys``, by increasing step."""
  steps = {}
  for key in keys:
    name, _, step = key.rpartition("@")
    if name == metric and step.isdigit():
      steps[key] = int(step)
  return sorted(steps, key=steps.get)


def probe_step(key: str) -> int:
  """The step of a :func:`probe_key` key."""
  return int(key.rpartition("@")[2])


def first_step_reaching(
  rows: Iterable[Mapping[str, Any]], key: str, threshold: float, *, at: str = "step"
) -> Any:
  """``row[at]`` of the first row whose ``row[key] >= threshold`` (None if never reached)."""
  for row in rows:
    value = row.get(key)
    if value is not None and value >= threshold:
      return row[at]
  return None


def threshold_entries(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The summary's :func:`steps_to_key` and :func:`seconds_to_key` entries of every threshold.

  Args:
    rows: the run's metrics rows (with ``step`` and ``train_seconds``).

  Returns:
    ``{key: step or seconds, or None if the threshold was never reached}``.
  """
  entries = {}
  for threshold in THRESHOLDS:
    entries[steps_to_key(threshold)] = first_step_reaching(rows, THRESHOLD_METRIC, threshold)
    entries[seconds_to_key(threshold)] = first_step_reaching(
      rows, THRESHOLD_METRIC, threshold, at="train_seconds"
    )
  return entries
