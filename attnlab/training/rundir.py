"""What a training run writes to its workdir, and the progress/ETA line it logs.

A workdir holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per
evaluation, appended as the run goes and rewritten from the checkpointed history on resume,
so an interrupted-then-resumed run has exactly the rows of an uninterrupted one) and, once
the run has finished, ``summary.json`` with ``completed: true``. Files are written atomically
(temp file + rename) so a reader never sees half a summary.

Non-finite floats are written as JSON ``null``: the files stay standard JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"

_log = logging.getLogger("attnlab.train")


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


def _atomic_write(path: str, text: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, value: Any) -> None:
  """Writes ``value`` as indented, key-sorted, standard JSON, atomically."""
  _atomic_write(path, json.dumps(to_json_value(value), indent=2, sort_keys=True, allow_nan=False))


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_metrics(workdir: str, rows: Sequence[Mapping[str, Any]]) -> None:
  """Rewrites ``metrics.jsonl`` with exactly ``rows`` (used at start and on resume)."""
  lines = [json.dumps(to_json_value(r), sort_keys=True, allow_nan=False) + "\n" for r in rows]
  _atomic_write(os.path.join(workdir, METRICS_FILE), "".join(lines))


def append_metrics(workdir: str, row: Mapping[str, Any]) -> None:
  """Appends one evaluation row to ``metrics.jsonl``."""
  with open(os.path.join(workdir, METRICS_FILE), "a") as f:
    f.write(json.dumps(to_json_value(row), sort_keys=True, allow_nan=False) + "\n")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of ``workdir/metrics.jsonl`` (empty if the file does not exist)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_summary(workdir: str) -> dict[str, Any] | None:
  """``summary.json`` of a finished run, or None if there is none."""
  path = os.path.join(workdir, SUMMARY_FILE)
  return read_json(path) if os.path.exists(path) else None


def first_step_reaching(
  rows: Iterable[Mapping[str, Any]], key: str, threshold: float, *, at: str = "step"
) -> Any:
  """``row[at]`` of the first row whose ``row[key] >= threshold`` (None if never reached)."""
  for row in rows:
    value = row.get(key)
    if value is not None and value >= threshold:
      return row[at]
  return None


class Progress:
  """Logs ``step i/n``, steps/s over the last interval, and an ETA from the running rate.

  The rate counts training steps only (``add_steps``), so evaluation pauses do not inflate
  it; the ETA uses the mean rate since the first logged step.
  """

  def __init__(self, total_steps: int, start_step: int, name: str = "train"):
    self.total_steps = total_steps
    self.name = name
    self._step = start_step
    self._seconds = 0.0
    self._steps = 0

  def add_steps(self, num_steps: int, seconds: float | None) -> None:
    """Counts ``num_steps`` done in ``seconds`` (None: untimed, e.g. a compiling step)."""
    self._step += num_steps
    if seconds is not None:
      self._steps += num_steps
      self._seconds += seconds

  @property
  def steps_per_second(self) -> float:
    return self._steps / self._seconds if self._seconds > 0 else float("nan")

  def eta_seconds(self) -> float:
    rate = self.steps_per_second
    return (self.total_steps - self._step) / rate if rate > 0 else float("nan")

  def log(self, extra: Mapping[str, Any] | None = None) -> str:
    parts = [
      f"{self.name} step {self._step}/{self.total_steps}",
      f"{self.steps_per_second:.1f} steps/s",
      f"ETA {self.eta_seconds():.1f} s",
    ]
    for key, value in (extra or {}).items():
      parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    line = " | ".join(parts)
    _log.info(line)
    return line
