"""TensorBoard event files of a run directory, written beside ``metrics.jsonl``.

A run directory (:mod:`attnlab.training.rundir`) holds, besides its JSON files, the event files
TensorBoard reads (``RUN/events.out.tfevents.*``), written through tensorboardX (no TensorFlow):

* every number of every ``metrics.jsonl`` row as a scalar at the row's ``step`` (tag = the
  row's key, e.g. ``val/seq_accuracy``; non-finite values, stored as ``null``, are left out);
* the run config (``config.json``) as text (tag ``config``), at step 0;
* the hyperparameters for TensorBoard's HParams plugin (:func:`hparams_of`: task, method,
  seed and the settings that tell methods apart), at step 0, and the session's end (status
  success) once the run finished, so that the runs of a sweep can be filtered and compared
  by task, method and seed;
* the run's figures (``heatmaps.png``, ``learning_curve.png``) as images at the last step.

A sweep directory therefore opens as one TensorBoard, ``tensorboard --logdir SWEEP``, with one
run per run directory, named ``<task>/<method>/seed_<n>``.

:class:`RunEvents` is the writer of one run. Rows reach it through
:func:`attnlab.training.rundir.write_metrics` and :func:`~attnlab.training.rundir.append_metrics`
(their ``events`` argument), so every row goes to both files through one function. The first
rows it gets are the run's whole history (the trainer rewrites ``metrics.jsonl`` from the
checkpointed history when it starts or resumes): it then writes them into a new event file and
removes the files of earlier sessions, so a resumed run holds each step once, and exactly the
rows of ``metrics.jsonl``, whatever the reader (TensorBoard, ``EventAccumulator``, tbparse).
After that it appends each (tag, step) it has not written yet: the final evaluation's test and
OOD metrics, added to the last row, become scalars at that row's step. Writes are synchronous
appends of small records, flushed when a row is written (at evaluations: the trainer's only
pauses); ``experiments/bench_events.py`` measures their cost per training step.

Only the process that writes the run directory (process 0) creates a :class:`RunEvents`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tensorboardX import summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary

from attnlab.training import overrides, rundir

# Prefix of the event files in a run directory (TensorBoard finds them by this name).
EVENTS_PREFIX = "events"
EVENTS_GLOB = "events.out.tfevents."
CONFIG_TAG = "config"
# Config keys shown as hyperparameters (when present), besides task, method and seed.
HPARAM_KEYS = (
  "model.family",
  "model.attention",
  "model.score",
  "estimator.gradient",
  "estimator.baseline",
  "estimator.num_samples",
  "estimator.reward",
  "estimator.entropy_coef",
  "optimizer.learning_rate",
  "batch_size",
  "steps",
)
_FIGURES = (rundir.HEATMAPS_FILE, rundir.LEARNING_CURVE_FILE)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_session_numbers = itertools.count()  # Unique event file names within a process.


def event_files(run: str) -> list[str]:
  """The TensorBoard event files in run directory ``run``, sorted by name."""
  try:
    names = os.listdir(run)
  except FileNotFoundError:
    return []
  return sorted(os.path.join(run, n) for n in names if n.startswith(EVENTS_GLOB))


def method_of(run: str, config: Mapping[str, Any]) -> str:
  """The method a run trains: its sweep's name for it, else a label built from the config.

  A run of a sweep lives in ``SWEEP/<task>/<method>/seed_<n>`` (:func:`rundir.run_dir`), and
  the method is that directory's name (``reinforce_rloo4``). A run trained on its own gets
  ``<attention>`` (soft attention and the other deterministic kinds) or
  ``hard_<gradient>[_<baseline>[<K>]]`` (``hard_reinforce_rloo4``, ``hard_enumerate``).
  """
  run = os.path.normpath(run)
  if rundir.seed_of(os.path.basename(run)) is not None:
    return os.path.basename(os.path.dirname(run))
  flat = dict(overrides.flatten(config))
  attention = str(flat.get("model.attention", "unknown"))
  if attention != "hard":
    return attention
  gradient = str(flat.get("estimator.gradient", "reinforce"))
  if gradient != "reinforce":
    return f"hard_{gradient}"
  samples = int(flat.get("estimator.num_samples", 1) or 1)
  return f"hard_reinforce_{flat.get('estimator.baseline', 'none')}" + (
    str(samples) if samples > 1 else ""
  )


def hparams_of(run: str, config: Mapping[str, Any]) -> dict[str, str | float | bool]:
  """The hyperparameters of a run for TensorBoard's HParams plugin.

  Args:
    run: the run directory (gives the method, see :func:`method_of`).
    config: the run config, as in ``config.json``.

  Returns:
    ``task``, ``method``, ``seed`` and every :data:`HPARAM_KEYS` key the config holds (dotted
    names), as strings, numbers or booleans.
  """
  flat = dict(overrides.flatten(config))
  hparams: dict[str, str | float | bool] = {
    "task": str(flat.get("task", "")),
    "method": method_of(run, config),
    "seed": float(flat.get("seed", 0)),
  }
  for key in HPARAM_KEYS:
    value = flat.get(key)
    if isinstance(value, bool) or isinstance(value, str):
      hparams[key] = value
    elif isinstance(value, (int, float)):
      hparams[key] = float(value)
  return hparams


def _png_image(path: str):
  """A ``Summary.Image`` of the PNG file ``path`` (its bytes, not re-encoded)."""
  with open(path, "rb") as f:
    data = f.read()
  if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
    raise ValueError(f"{path} is not a PNG file.")
  width, height, _, color_type = struct.unpack(">IIBB", data[16:26])
  channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color_type, 4)  # PNG colour type -> channels.
  return Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=data)


class RunEvents:
  """The TensorBoard event file of one run directory (see the module docstring).

  Args:
    run: the run directory.
    config: the run config (as in ``config.json``); written as text and hyperparameters.
    method: the method's name; default :func:`method_of` ``(run, config)``.
  """

  def __init__(self, run: str, config: Mapping[str, Any], method: str | None = None):
    self.run = run
    self.config = dict(config)
    self.hparams = hparams_of(run, config)
    if method is not None:
      self.hparams["method"] = method
    self._writer = None
    self._written: set[tuple[str, int]] = set()
    self.last_step = 0

  @property
  def is_open(self) -> bool:
    return self._writer is not None

  def _open(self) -> None:
    """Starts a new event file with the config and hyperparameters; removes older files."""
    earlier = event_files(self.run)
    suffix = f".{os.getpid()}.{next(_session_numbers)}"
    self._writer = EventsWriter(os.path.join(self.run, EVENTS_PREFIX), suffix)
    config_json = json.dumps(rundir.to_json_value(self.config), indent=2, sort_keys=True)
    text = "\n".join("    " + line for line in config_json.splitlines())  # Markdown code.
    self._add(summary.text(CONFIG_TAG, text), step=0)
    _, session_start, _ = summary.hparams(self.hparams, {})
    self._add(session_start, step=0)
    self._writer.flush()
    for path in earlier:  # Only now: the new file is on disk before the old ones go.
      os.remove(path)

  def _add(self, summary_proto, step: int) -> None:
    self._writer.write_event(Event(wall_time=time.time(), step=int(step), summary=summary_proto))

  def log(self, rows: Iterable[Mapping[str, Any]]) -> None:
    """Writes every scalar of ``rows`` not written yet at its row's step, then flushes.

    The first call (the run's history) starts a new event file, replacing earlier sessions'.
    """
    if self._writer is None:
      self._open()
    for row in rows:
      step = int(row["step"])
      self.last_step = max(self.last_step, step)
      values = []
      for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
          continue  # None (non-finite, as read back), strings and flags are not scalars.
        if not math.isfinite(value):
          continue  # No value (e.g. alignment without gold positions): nothing to plot.
        if (key, step) not in self._written:
          self._written.add((key, step))
          values.append(Summary.Value(tag=key, simple_value=float(value)))
      if values:  # One event per row: TensorBoard reads each value as a scalar of its tag.
        self._add(Summary(value=values), step)
    self._writer.flush()

  def log_figures(self, step: int | None = None, directory: str | None = None) -> list[str]:
    """Writes the run's figures that exist (:data:`rundir.HEATMAPS_FILE`, ...) as images.

    Args:
      step: the step to show them at; default the last step written.
      directory: where the figures are; default the run directory.

    Returns:
      The figure files written.
    """
    if self._writer is None:
      self._open()
    step = self.last_step if step is None else step
    written = []
    for name in _FIGURES:
      path = os.path.join(directory or self.run, name)
      if os.path.exists(path):
        tag = os.path.splitext(name)[0]
        self._add(Summary(value=[Summary.Value(tag=tag, image=_png_image(path))]), step)
        written.append(path)
    self._writer.flush()
    return written

  def finish(self) -> None:
    """Marks the run finished for the HParams plugin (session end, status success)."""
    if self._writer is None:
      self._open()
    _, _, session_end = summary.hparams(self.hparams, {})
    self._add(session_end, self.last_step)
    self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the event file (idempotent)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def write_run(
  run: str,
  rows: Sequence[Mapping[str, Any]],
  config: Mapping[str, Any],
  *,
  method: str | None = None,
  finished: bool = True,
  figures: str | None = None,
) -> list[str]:
  """Writes the whole event file of a run from its rows, config and figures (an export).

  Args:
    run: the directory to write the event file into (replacing earlier event files).
    rows: the run's ``metrics.jsonl`` rows.
    config: the run config.
    method: the method's name (default :func:`method_of`).
    finished: whether to mark the run finished.
    figures: the directory holding the run's figures (default ``run``); those present are
      written as images.

  Returns:
    The event files of ``run`` after writing (one).
  """
  events = RunEvents(run, config, method=method)
  try:
    events.log(rows)
    events.log_figures(directory=figures)
    if finished:
      events.finish()
  finally:
    events.close()
  return event_files(run)
