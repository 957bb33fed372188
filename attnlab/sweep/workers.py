"""Worker processes that never outlive their sweep.

A sweep trains groups in spawned worker processes (``concurrent.futures.ProcessPoolExecutor``).
If the sweep process is killed (``kill -9`` included), its workers must not train on, write
results that nobody collects and sit on memory: :func:`exit_with_parent` (the pool's
initializer) makes each worker exit as soon as its parent does. On Linux the kernel sends it
``SIGKILL`` (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls ``os.getppid()``
every second. Killing a worker mid-save is safe: every write of a run directory is atomic or
redone on resume.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any

_PR_SET_PDEATHSIG = 1  # From <linux/prctl.h>.
_POLL_SECONDS = 1.0


def exit_with_parent_initializer() -> dict[str, Any]:
  """``initializer`` and ``initargs`` for a pool whose workers die with this process."""
  return {"initializer": exit_with_parent, "initargs": (os.getpid(),)}


def exit_with_parent(parent_pid: int) -> None:
  """Makes this process exit when process ``parent_pid`` (its parent) dies.

  Args:
    parent_pid: the pid of the parent at the time the worker was started.
  """
  if sys.platform.startswith("linux") and _set_parent_death_signal():
    if os.getppid() != parent_pid:  # The parent died before the signal was armed.
      os._exit(1)
    return
  threading.Thread(
    target=_exit_when_orphaned, args=(parent_pid,), name="exit-with-parent", daemon=True
  ).start()


def _set_parent_death_signal() -> bool:
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
  except (OSError, AttributeError):
    return False


def _exit_when_orphaned(parent_pid: int) -> None:
  while os.getppid() == parent_pid:
    time.sleep(_POLL_SECONDS)
  os._exit(1)
