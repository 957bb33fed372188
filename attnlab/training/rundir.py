"""The run directory: its file names, atomic writes, tolerant readers, summary keys and status.

The trainer writes runs, the sweep reads them; both go through this module only::

  SWEEP/grid.json                        what the sweep asked for (tasks, methods, seeds, ...)
  SWEEP/<task>/<method>/seed_<n>/        one run (RUN), see :func:`run_dir`:
      .lock                              held by the one process writing the run (see below)
      config.json                        the resolved run config
      metrics.jsonl                      one JSON object per evaluation, appended as it goes
      summary.json                       written once the run has finished
      checkpoints/                       orbax (:mod:`attnlab.training.checkpoints`)
      checkpoints.unreadable/            checkpoints that failed to restore, set aside
      heatmaps.png, learning_curve.png
      events.out.tfevents.*              TensorBoard: the metrics rows, config, hyperparameters
                                         and figures (:mod:`attnlab.training.events`)
  SWEEP/<task>/<method>/error.txt        traceback, when training that group failed
  SWEEP/<task>/<method>/seed_<n>.stale-<k>/  a run of an earlier config, set aside by a sweep
  SWEEP/.lock                            held by the one sweep writing SWEEP (per shard: see
                                         :func:`lock_path`)
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
line before it is corruption and raises. A finished run's ``summary.json`` must hold
:data:`REQUIRED_SUMMARY_KEYS`; one that does not (``{"completed": true}`` alone, say) is reported
and the run counts as unfinished, so a table never averages over seeds that have no numbers.

One writer per directory: :func:`locked` holds an exclusive ``fcntl.flock`` on ``DIR/.lock``
(which names the holder: pid, host, start time). A second process is refused at once with
:class:`DirectoryLockedError` naming the holder; the kernel drops the lock when its process dies
(``kill -9`` included), so a lock left by a killed process never blocks a rerun.

Filesystems without ``flock`` (it fails with ``ENOLCK``, ``ENOSYS`` or ``EOPNOTSUPP``: NFS
without a lock daemon, Lustre mounted without ``-o flock``, some FUSE filesystems) and systems
without ``fcntl`` get a lock *file* instead: ``DIR/.lock.held`` (``<lock>.held``), created with
``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+), holding the holder's line (pid,
host, start time). While held, a daemon thread refreshes its modification time every
:data:`HEARTBEAT_SECONDS`; the file is removed on release. A lock file is *stale*, and the next
process takes it over, when its holder is a dead process on this host, or when it has not been
refreshed for :data:`STALE_SECONDS` (a holder on another host that died). So a lock left by a
``kill -9`` blocks a rerun on the same host not at all, and a rerun on another host for at most
:data:`STALE_SECONDS` (the refusal says so). A holder stalled for longer than that (stopped,
swapping) can lose its lock: that is the price of a filesystem without ``flock``.

The config a run directory holds (``config.json``) is compared key by key with the config about
to use it (:func:`config_differences`): a different one is refused (:func:`check_same_config`,
:class:`ConfigMismatchError`), naming the dotted keys and both values, finished runs included.
Keys that change no result (:data:`RESULT_NEUTRAL_KEYS`: log and checkpoint cadence) are exempt.

Failures name their path in one line: an unusable directory raises :class:`WorkdirError`
(:func:`make_dir`), a full disk :class:`DiskFullError` (the temporary file is removed).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from attnlab.enums import Choice
from attnlab.training import overrides

try:
  import fcntl
except ImportError:  # Not POSIX: directories are not locked.
  fcntl = None

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
CLAIMS_FILE = "claims.md"  # The textbook soft-vs-hard table's rows, measured (sweep.table).
# experiments/bench_cost.py's JSON, read by claims.md when present in the sweep directory.
BENCH_COST_FILE = "bench_cost.json"
PLOTS_DIR = "plots"
ERROR_FILE = "error.txt"
SPEEDUP_FILE = "speedup.json"
LOCK_FILE = ".lock"
HELD_SUFFIX = ".held"  # The lock file of filesystems without flock: <lock>.held.
UNREADABLE_CHECKPOINTS_DIR = "checkpoints.unreadable"  # Unreadable checkpoints, set aside.
SHARDS_DIR = "shards"
_SEED_PREFIX = "seed_"
_STALE_SUFFIX = ".stale-"

# Summary keys. A finished run's summary.json says COMPLETED_KEY: true and holds every
# REQUIRED_SUMMARY_KEYS key (the trainer always writes them; the table reports them).
COMPLETED_KEY = "completed"
REQUIRED_SUMMARY_KEYS = (
  COMPLETED_KEY,
  "steps",
  "steps_trained",
  "converged",
  "test/seq_accuracy",
  "ood/seq_accuracy",
)
# Config keys that change no result: a run resumes, and a finished run counts as done, under
# other values of these (see configs/default.py).
RESULT_NEUTRAL_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints")
# Validation exact-sequence accuracies whose first crossing the summary reports.
THRESHOLDS = (0.9, 0.99)
THRESHOLD_METRIC = "val/seq_accuracy"

# Lock files (filesystems without flock): refreshed every HEARTBEAT_SECONDS while held; stale
# when not refreshed for STALE_SECONDS.
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0
# What flock raises where the filesystem does not support it.
_NO_FLOCK_ERRNOS = frozenset(
  e for e in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", None)) if e
)

_log = logging.getLogger(__name__)


class WorkdirError(ValueError):
  """A run or sweep directory that cannot be used; the message names it and why."""


class DirectoryLockedError(WorkdirError):
  """Another process holds the directory's lock; the message names that process."""


class ConfigMismatchError(WorkdirError):
  """The directory holds a run of another config; the message names the keys and values."""


class DiskFullError(OSError):
  """No space left on the device while writing ``path`` (the message says what is kept)."""

  def __init__(self, path: str, detail: str = ""):
    message = f"no space left on device writing {path}" + (f"; {detail}" if detail else "")
    super().__init__(errno.ENOSPC, message)
    self.path, self.detail = path, detail

  def __str__(self) -> str:
    return self.strerror

  def __reduce__(self):  # Pickles (to and from worker processes) with its own arguments.
    return type(self), (self.path, self.detail)


def is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or an exception it was raised from) reports ENOSPC."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(error):  # e.g. tensorstore's errors (ValueError).
      return True
    error = error.__cause__ or error.__context__
  return False


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


def lock_path(directory: str, shard: int | None = None) -> str:
  """``DIR/.lock``, or ``DIR/.lock.shard_<k>`` for shard ``k`` of a sharded sweep."""
  name = LOCK_FILE if shard is None else f"{LOCK_FILE}.shard_{int(shard)}"
  return os.path.join(directory, name)


def make_dir(path: str, what: str = "run") -> str:
  """Creates directory ``path`` (and its parents) if needed and checks it is writable.

  Returns:
    ``path``.

  Raises:
    WorkdirError: ``path`` (or a parent) is a file, or cannot be created or written; the
      message names the path and the reason.
  """
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError:
    raise WorkdirError(f"{what} directory {path} is a file, not a directory.") from None
  except OSError as e:
    raise WorkdirError(f"cannot create {what} directory {path}: {e.strerror or e}.") from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(f"{what} directory {path} is not writable (permission denied).")
  return path


def set_aside(run: str) -> str:
  """Renames run directory ``run`` to ``<run>.stale-<k>`` (the first free ``k``); its path.

  Holds the run's lock while renaming, so a run that another process is writing is refused
  (:class:`DirectoryLockedError`) rather than moved under it.
  """
  k = 1
  while os.path.exists(f"{run}{_STALE_SUFFIX}{k}"):
    k += 1
  with locked(run):
    os.rename(run, f"{run}{_STALE_SUFFIX}{k}")
  return f"{run}{_STALE_SUFFIX}{k}"


# ---- One writer per directory -----------------------------------------------------------


class _DirLock:
  """An exclusive ``flock`` on one lock file, naming its holder in the file; a lock file
  (``O_EXCL``, heartbeat, stale takeover) where the filesystem has no ``flock``."""

  def __init__(self, path: str, directory: str, what: str):
    self.path, self.directory, self.what = path, directory, what
    self._fd: int | None = None
    self._held: _HeldFile | None = None

  def __enter__(self) -> _DirLock:
    if fcntl is None:
      self._held = _HeldFile(self.path + HELD_SUFFIX, self.directory, self.what).acquire()
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      os.close(fd)
      if e.errno in _NO_FLOCK_ERRNOS:  # This filesystem has no flock: a lock file instead.
        self._held = _HeldFile(self.path + HELD_SUFFIX, self.directory, self.what).acquire()
        return self
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise DirectoryLockedError(
        f"{self.directory} is in use by {holder} (lock {self.path}): one {self.what} at a "
        "time may write it; wait for that process to finish, or stop it."
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, _holder_line().encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc_info) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)  # The file stays: unlinking it would race.
      os.close(self._fd)
      self._fd = None
    if self._held is not None:
      self._held.release()
      self._held = None


def _holder_line() -> str:
  started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
  return f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n"


_HOLDER = re.compile(r"^pid (\d+) on (\S+), started")


def _process_is_alive(pid: int) -> bool:
  """Whether process ``pid`` of this host exists (signal 0 probes without signalling)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


class _HeldFile:
  """The lock of a filesystem without ``flock``: an ``O_EXCL`` file, refreshed while held.

  See the module docstring for the protocol (heartbeat, stale takeover).
  """

  def __init__(self, path: str, directory: str, what: str):
    self.path, self.directory, self.what = path, directory, what
    # The holder line, then a token that tells this holder's file from a successor's.
    self.content = f"{_holder_line()}token {secrets.token_hex(8)}\n"
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> _HeldFile:
    for _ in range(3):  # Each retry follows the removal of a stale file.
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        found = _read_text(self.path)
        if found is None:  # Released meanwhile: try again.
          continue
        why_stale = self._stale(found)
        if why_stale is None:
          raise self._locked_error(found) from None
        _log.warning("taking over the stale lock %s (%s): %s", self.path, why_stale, found)
        self._remove_stale(found)
        continue
      try:
        os.write(fd, self.content.encode())
        os.fsync(fd)
      finally:
        os.close(fd)
      self._thread = threading.Thread(
        target=self._refresh, name=f"lock-heartbeat {self.path}", daemon=True
      )
      self._thread.start()
      return self
    raise self._locked_error(_read_text(self.path) or "another process")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if _read_text(self.path) == self.content:  # Never remove a successor's file.
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.path)

  def _refresh(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def _stale(self, found: str) -> str | None:
    """Why the lock file holding ``found`` is stale, or None if its holder may be alive."""
    match = _HOLDER.match(found)
    if match and match.group(2) == socket.gethostname() and os.name == "posix":
      pid = int(match.group(1))
      if not _process_is_alive(pid):
        return f"its holder, pid {pid} on this host, is dead"
    try:
      age = time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return "it is gone"
    if age > STALE_SECONDS:
      return f"not refreshed for {age:.0f} s > {STALE_SECONDS:.0f} s"
    return None

  def _remove_stale(self, found: str) -> None:
    """Moves the stale file aside, unless it is no longer the one judged stale."""
    aside = f"{self.path}.stale.{os.getpid()}.{secrets.token_hex(4)}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:  # Another process removed it first.
      return
    if _read_text(aside) != found:  # A new holder's file: put it back, then refuse.
      with contextlib.suppress(OSError):
        os.link(aside, self.path)
      os.unlink(aside)
      raise self._locked_error(_read_text(self.path) or "another process")
    os.unlink(aside)

  def _locked_error(self, found: str) -> DirectoryLockedError:
    holder = found.splitlines()[0].strip() if found.strip() else "another process"
    return DirectoryLockedError(
      f"{self.directory} is in use by {holder} (lock file {self.path}: flock is unavailable "
      f"here): one {self.what} at a time may write it; wait for that process to finish, or "
      f"stop it. A lock file whose holder died is taken over once it is {STALE_SECONDS:.0f} s "
      "old (at once on the holder's host)."
    )


def _read_text(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read()
  except FileNotFoundError:
    return None


@contextlib.contextmanager
def locked(*directories: str, what: str = "run", shard: int | None = None) -> Iterator[None]:
  """Holds the exclusive lock of every directory (existing ones) while the block runs.

  Args:
    *directories: run or sweep directories.
    what: what the lock protects, for the message ("run", "sweep").
    shard: lock the file of this shard of a sharded sweep (see :func:`lock_path`).

  Raises:
    DirectoryLockedError: another process holds one of the locks; the message names it.
  """
  with contextlib.ExitStack() as stack:
    for directory in directories:
      stack.enter_context(_DirLock(lock_path(directory, shard), directory, what))
    yield


# ---- Writing ----------------------------------------------------------------------------


def format_number(
  value: float | None, digits: int = 1, scale: float = 1.0, *, missing: str = "n/a"
) -> str:
  """``scale * value`` with ``digits`` decimals, for the markdown tables of runs and benchmarks.

  No value (``None``, or non-finite: what :func:`to_json_value` writes as ``null``) reads as
  ``missing``, never as ``nan``: ``"n/a"`` in the sweep's tables, ``"—"`` in the benchmark
  reports (where the backend reported nothing).
  """
  if value is None or not math.isfinite(value):
    return missing
  return f"{scale * value:.{digits}f}"


# The benchmark reports' number format (experiments/bench_*.py): "—" where nothing was
# measured or the backend reported nothing.
format_report_number = functools.partial(format_number, missing="—")


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
  try:
    with open(tmp, "w", newline="") as f:
      f.write(text)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if is_disk_full(e):
      raise DiskFullError(path) from e
    raise
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


class MetricsSink(Protocol):
  """Another destination of the metrics rows, e.g. TensorBoard's event file
  (:class:`attnlab.training.events.RunEvents`)."""

  def log(self, rows: Sequence[Mapping[str, Any]]) -> None:
    """Receives rows (the first call: the run's whole history); writes those it lacks."""


def write_metrics(
  run: str, rows: Sequence[Mapping[str, Any]], events: MetricsSink | None = None
) -> None:
  """Rewrites ``RUN/metrics.jsonl`` with exactly ``rows`` (at the start and on resume).

  Args:
    run: the run directory.
    rows: every metrics row of the run.
    events: also gets the rows (:meth:`MetricsSink.log`), if given.
  """
  write_text(os.path.join(run, METRICS_FILE), "".join(_json_line(r) for r in rows))
  if events is not None:
    events.log(rows)


def append_metrics(run: str, row: Mapping[str, Any], events: MetricsSink | None = None) -> None:
  """Appends one evaluation row to ``RUN/metrics.jsonl`` (a torn line is rewritten on resume).

  Args:
    run: the run directory.
    row: the new row.
    events: also gets the row (:meth:`MetricsSink.log`), if given.
  """
  path = os.path.join(run, METRICS_FILE)
  try:
    with open(path, "a") as f:
      f.write(_json_line(row))
  except OSError as e:
    if is_disk_full(e):
      raise DiskFullError(path) from e
    raise
  if events is not None:
    events.log([row])


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
  """True iff ``RUN/summary.json`` is readable, says ``completed: true`` and holds every
  :data:`REQUIRED_SUMMARY_KEYS` key (a completed one that lacks some is reported)."""
  summary = read_summary(run)
  if summary is None or summary.get(COMPLETED_KEY) is not True:
    return False
  missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in summary]
  if missing:
    _log.warning(
      "ignoring %s (the run counts as unfinished): no %s",
      os.path.join(run, SUMMARY_FILE),
      ", ".join(missing),
    )
  return not missing


# ---- The config a run directory holds ---------------------------------------------------


def run_config_dict(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
  """What ``RUN/config.json`` holds for a run of ``config`` (a plain dict) with ``seed``."""
  return to_json_value(dict(config, seed=int(seed)))


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
  # None and {} mean "default" (e.g. task_overrides); absent keys mean the same.
  flat = dict(overrides.flatten(config))
  return {
    k: v for k, v in flat.items() if v is not None and v != {} and k not in RESULT_NEUTRAL_KEYS
  }


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple]:
  """``(dotted_key, saved_value, current_value)`` for every key whose values differ.

  Keys in :data:`RESULT_NEUTRAL_KEYS` are not compared; a key set to ``None`` (the default)
  equals a key that is absent.
  """
  saved, current = _comparable(saved), _comparable(current)
  keys = sorted(set(saved) | set(current))
  return [(k, saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)]


def describe_differences(differences: Sequence[tuple], limit: int = 4) -> str:
  """``steps: 8 in the run, 2 now; optimizer.learning_rate: ...`` (at most ``limit`` keys)."""
  shown = [f"{k}: {json.dumps(a)} in the run, {json.dumps(b)} now" for k, a, b in differences]
  more = len(shown) - limit
  return "; ".join(shown[:limit]) + (f"; and {more} more key(s)" if more > 0 else "")


def stale_config(run: str, config_dict: Mapping[str, Any]) -> str | None:
  """How ``RUN/config.json`` differs from ``config_dict`` (one line); None if it does not.

  A run directory without a readable ``config.json`` holds no config to differ from.
  """
  saved = read_config(run)
  differences = config_differences(saved, config_dict) if saved is not None else []
  return describe_differences(differences) if differences else None


def check_same_config(run: str, config_dict: Mapping[str, Any]) -> None:
  """Raises :class:`ConfigMismatchError` if ``run`` holds a run of a different config."""
  differences = stale_config(run, config_dict)
  if differences:
    raise ConfigMismatchError(
      f"{run} holds a run of a different config ({differences}); reusing it would mix two "
      f"experiments: use a new workdir, or the config in {os.path.join(run, CONFIG_FILE)}."
    )


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
