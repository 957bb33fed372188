"""Worker processes of a sweep: the machine, each worker's devices and memory, their lifetime.

A sweep trains groups in spawned worker processes (``concurrent.futures.ProcessPoolExecutor``
with :func:`pool_arguments`); with ``num_workers=1`` it trains in its own process instead.

**The sweep process holds no accelerator.** It never initialises a JAX backend: on a GPU host it
would hold a CUDA context on every card for the whole sweep, on a TPU host it would own the chips
so that no worker could open them. :func:`probe_machine` asks a short-lived subprocess what JAX
sees (:class:`Machine`: platform, device count and kind, versions; the subprocess exits before
any worker starts), and the sweep's hardware line (:meth:`Machine.describe`) and the workers'
environments come from that.

**Each worker's environment** is a pure function of (platform, device count, worker index,
worker count, the sweep's environment): :func:`worker_environment`. With several workers on
accelerators:

* Devices (:func:`assign_devices`): with ``D >= n`` devices for ``n`` workers, worker ``i`` gets
  the ``i``-th of ``n`` contiguous, near-equal blocks (8 GPUs, 2 workers: 0-3 and 4-7), and
  trains each group on a mesh over its block; with ``D < n``, worker ``i`` gets device
  ``i mod D`` and shares it. NVIDIA: ``CUDA_VISIBLE_DEVICES``; AMD: ``HIP_VISIBLE_DEVICES``;
  TPU: ``TPU_VISIBLE_CHIPS`` with one chip per worker (``TPU_CHIPS_PER_PROCESS_BOUNDS=1,1,1``,
  ``TPU_PROCESS_BOUNDS=1,1,1`` and a mesh-controller port of its own, libtpu's recipe for
  independent processes on one host); a TPU chip serves one process, so at most ``D`` workers
  start there (:func:`worker_count`).
* GPU memory: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (JAX would otherwise claim 75% of each
  visible GPU at a worker's first operation, and a second worker on that GPU fails with
  RESOURCE_EXHAUSTED), and, for ``k`` workers sharing a GPU, a cap of ``0.9 / k`` of its
  memory each (``XLA_PYTHON_CLIENT_MEM_FRACTION``, :data:`SHARED_MEMORY_FRACTION`).
* CPU: each worker is pinned to its own block of the sweep's cores (:func:`worker_cpus`:
  ``n`` contiguous, near-equal blocks of the cores the sweep process may run on; 2 cores, 2
  workers: one each), named in :data:`WORKER_CPUS` and applied by :func:`start_worker`.
  Unpinned, two workers' XLA thread pools (each as large as the machine) contend for every
  core: on a 2-core CPU, sort x 4 methods x 3 seeds, 300 steps, trained in 62-63 s pinned
  against 87-89 s unpinned (two runs each, interleaved; docs/results.md).
  With fewer cores than workers nothing is pinned. ``ATTNLAB_WORKER_CPUS`` set in the sweep's
  own environment is the user's (kept, below): empty turns pinning off, a list pins every
  worker to it.

Precedence: a variable the user already set is kept, never overwritten, except the device list,
which is narrowed to the worker's share of the user's own list (``CUDA_VISIBLE_DEVICES=2,3`` and
2 workers: worker 0 sees GPU 2, worker 1 GPU 3). A memory fraction set under either name
(``XLA_CLIENT_MEM_FRACTION``, ``XLA_PYTHON_CLIENT_MEM_FRACTION``) is the user's: jaxlib refuses
both names together. ``num_workers=1``: nothing changes.

**Lifetime.** If the sweep process is killed (``kill -9`` included), its workers must not train
on, write results that nobody collects and sit on memory: :func:`exit_with_parent` (run by the
pool's initializer) makes each worker exit as soon as its parent does. On Linux the kernel sends
it ``SIGKILL`` (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls ``os.getppid()``
every second. Killing a worker mid-save is safe: every write of a run directory is atomic or
redone on resume.

**The compilation cache** (:func:`default_compilation_cache_dir`, :func:`use_compilation_cache`):
JAX's persistent cache writes each entry in place (no temporary file and rename), so a writer
killed mid-entry, or a reader on a filesystem that shows another host's write in pieces, can
meet a truncated entry (JAX then warns and recompiles). The default directory is therefore
node-local and per-user, ``<tempdir>/attnlab-<uid>/jax_cache`` (``TMPDIR`` honoured): shared by
the sweep's workers and later runs on this machine, never written from two hosts.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

_PR_SET_PDEATHSIG = 1  # From <linux/prctl.h>.
_POLL_SECONDS = 1.0

# What k workers sharing one GPU may each use of its memory: 0.9 / k (the rest: CUDA contexts,
# cuDNN and cuBLAS workspaces, which JAX's allocator does not count).
SHARED_MEMORY_FRACTION = 0.9
# libtpu's mesh controller: one port per process on a host, from this one up.
TPU_FIRST_PORT = 8476
# The platforms workers get devices of, and the variable naming them.
_DEVICE_LIST_VARIABLE = {
  "cuda": "CUDA_VISIBLE_DEVICES",
  "rocm": "HIP_VISIBLE_DEVICES",
  "tpu": "TPU_VISIBLE_CHIPS",
}
_GPU_PLATFORMS = ("cuda", "rocm")
_MEMORY_FRACTION_VARIABLES = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")
_PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"
# The cores a CPU worker is pinned to (comma-separated), set by the sweep for each worker.
WORKER_CPUS = "ATTNLAB_WORKER_CPUS"

_log = logging.getLogger(__name__)


# ---- The machine ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Machine:
  """What JAX sees on this machine (from :func:`probe_machine`).

  Attributes:
    platform: ``"cpu"``, ``"cuda"`` (NVIDIA), ``"rocm"`` (AMD), ``"tpu"``, or another
      platform name; ``"unknown"`` when the probe failed.
    device_count: devices JAX sees in one process.
    chip_count: TPU chips (a TPU v2/v3 chip shows as 2 devices); the device count elsewhere.
    device_kind: e.g. ``"NVIDIA H100 80GB HBM3"``, ``"TPU v4"``, ``"cpu"``.
    backend: ``jax.default_backend()``: ``"cpu"``, ``"gpu"``, ``"tpu"``.
    jax_version: JAX's version.
    cpu: the host CPU (``platform.processor()`` or the machine type).
    cpu_count: host CPU cores.
    python: Python's version.
    problem: why the probe failed ("" when it did not).
  """

  platform: str
  device_count: int
  chip_count: int
  device_kind: str
  backend: str = ""
  jax_version: str = ""
  cpu: str = ""
  cpu_count: int = 0
  python: str = ""
  problem: str = ""

  @property
  def units(self) -> int:
    """What workers are given: chips on a TPU, devices elsewhere."""
    return self.chip_count if self.platform == "tpu" else self.device_count

  def describe(self) -> str:
    """One line naming the machine: CPU, core count, backend, devices, versions."""
    if self.problem:
      return f"unknown machine ({self.problem})"
    count = f"{self.device_count} device{'s' if self.device_count > 1 else ''}"
    return (
      f"{self.cpu}, {self.cpu_count} CPU cores, JAX {self.jax_version} on {self.backend} "
      f"({count}: {self.device_kind}), Python {self.python}"
    )

  @classmethod
  def from_facts(cls, facts: Mapping[str, Any]) -> Machine:
    """The machine of the probe's facts (see :data:`_PROBE`)."""
    return cls(
      platform=platform_of(facts["platform"], facts.get("platform_version", "")),
      device_count=int(facts["device_count"]),
      chip_count=int(facts.get("chip_count") or facts["device_count"]),
      device_kind=str(facts["device_kind"]),
      backend=str(facts.get("backend", "")),
      jax_version=str(facts.get("jax_version", "")),
      cpu=str(facts.get("cpu", "")),
      cpu_count=int(facts.get("cpu_count") or 0),
      python=str(facts.get("python", "")),
    )


def platform_of(device_platform: str, platform_version: str = "") -> str:
  """``"cuda"``, ``"rocm"``, ``"tpu"``, ``"cpu"``, ... from a JAX device's ``platform`` and its
  client's ``platform_version`` (JAX calls both GPU kinds ``"gpu"``)."""
  name = device_platform.lower()
  if name == "gpu":
    return "rocm" if "rocm" in platform_version.lower() else "cuda"
  return name


# Runs in the probe subprocess: JAX only (no attnlab import), one line of JSON facts.
_PROBE_PREFIX = "ATTNLAB_MACHINE "
_PROBE = f"""
import json, os, platform, jax
devices = jax.local_devices()
first = devices[0]
try:
  version = str(first.client.platform_version)
except Exception:
  version = ""
chips = {{tuple(getattr(d, "coords", None) or (d.id,)) for d in devices}}
print({_PROBE_PREFIX!r} + json.dumps(dict(
  platform=first.platform, platform_version=version, device_count=len(devices),
  chip_count=len(chips), device_kind=first.device_kind, backend=jax.default_backend(),
  jax_version=jax.__version__, cpu=platform.processor() or platform.machine(),
  cpu_count=os.cpu_count(), python=platform.python_version())), flush=True)
"""
_probed: dict[tuple, Machine] = {}


def probe_machine(environ: Mapping[str, str] | None = None, timeout_s: float = 180.0) -> Machine:
  """What JAX sees with ``environ`` (default ``os.environ``), asked of a subprocess.

  This process initialises no backend (it holds no GPU memory or TPU chip); the subprocess
  exits before this returns, and does not preallocate GPU memory. Cached per environment.

  Returns:
    The :class:`Machine`; on failure one with ``platform="unknown"`` and ``problem`` set
    (a warning is logged; the workers then get no device environment).
  """
  env = dict(os.environ if environ is None else environ)
  key = tuple(sorted(env.items()))
  if key not in _probed:
    env.setdefault(_PREALLOCATE, "false")
    try:
      done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
      )
      lines = [x for x in done.stdout.splitlines() if x.startswith(_PROBE_PREFIX)]
      if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit status {done.returncode}: {tail}")
      machine = Machine.from_facts(json.loads(lines[-1][len(_PROBE_PREFIX) :]))
    except (OSError, RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
      _log.warning("the device probe failed: %s", e)
      machine = Machine("unknown", 0, 0, "", problem=f"the device probe failed: {e}")
    _probed[key] = machine
  return _probed[key]


# ---- Each worker's environment ----------------------------------------------------------


def worker_count(platform: str, device_count: int, num_workers: int) -> int:
  """How many worker processes start: ``num_workers``, but at most one per TPU chip.

  Args:
    platform: the machine's platform (:func:`platform_of`).
    device_count: devices (TPU: chips) JAX sees in one process.
    num_workers: the sweep's ``num_workers``.
  """
  if num_workers < 1:
    raise ValueError(f"num_workers={num_workers} must be >= 1.")
  if platform == "tpu" and num_workers > 1:
    return max(1, min(num_workers, device_count))
  return num_workers


def assign_devices(device_count: int, worker_index: int, num_workers: int) -> tuple[range, int]:
  """Worker ``worker_index``'s devices, and how many workers use each of them.

  ``D >= n``: the ``i``-th of ``n`` contiguous blocks, the first ``D mod n`` one device larger
  (5 devices, 2 workers: 0-2 and 3-4); each used by that worker alone. ``D < n``: device
  ``i mod D``, shared by the ``n // D`` (or one more) workers congruent to it.

  Returns:
    ``(device indices, workers per device)``.
  """
  if device_count < 1 or num_workers < 1 or not 0 <= worker_index < num_workers:
    raise ValueError(
      f"need device_count >= 1 and 0 <= worker_index < num_workers; got {device_count}, "
      f"{worker_index}, {num_workers}."
    )
  if device_count >= num_workers:
    base, extra = divmod(device_count, num_workers)
    start = worker_index * base + min(worker_index, extra)
    return range(start, start + base + (worker_index < extra)), 1
  device = worker_index % device_count
  sharers = num_workers // device_count + (device < num_workers % device_count)
  return range(device, device + 1), sharers


def worker_cpus(cpus: Sequence[int], worker_index: int, num_workers: int) -> tuple[int, ...]:
  """The cores CPU worker ``worker_index`` of ``num_workers`` is pinned to: the
  ``worker_index``-th of ``num_workers`` contiguous, near-equal blocks of ``cpus`` (sorted);
  ``()`` (not pinned) with one worker or fewer cores than workers."""
  cpus = sorted(cpus)
  if num_workers <= 1 or len(cpus) < num_workers:
    return ()
  block, _ = assign_devices(len(cpus), worker_index, num_workers)
  return tuple(cpus[i] for i in block)


def worker_environment(
  platform: str,
  device_count: int,
  worker_index: int,
  num_workers: int,
  environ: Mapping[str, str],
  cpus: Sequence[int] = (),
) -> dict[str, str]:
  """The variables worker ``worker_index`` of ``num_workers`` sets before JAX starts (pure).

  The rules and their precedence are in the module docstring.

  Args:
    platform: ``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"`` (:func:`platform_of`; any other
      platform gets nothing).
    device_count: devices (TPU: chips) JAX sees in one process with ``environ``.
    worker_index: ``0 <= worker_index < num_workers``.
    num_workers: worker processes (after :func:`worker_count`).
    environ: the sweep's environment (the user's settings).
    cpus: the cores the sweep process may run on (CPU platform: split among the workers).

  Returns:
    The variables to add to ``environ`` in that worker (empty: none).

  Raises:
    ValueError: counts or index out of range, or more TPU workers than chips.
  """
  if platform == "cpu":
    if WORKER_CPUS in environ:  # The user's: the workers inherit it ("" pins nothing).
      return {}
    pinned = worker_cpus(cpus, worker_index, num_workers)
    return {WORKER_CPUS: ",".join(map(str, pinned))} if pinned else {}
  if num_workers <= 1 or platform not in _DEVICE_LIST_VARIABLE:
    return {}
  if platform == "tpu" and num_workers > device_count:
    raise ValueError(
      f"{num_workers} TPU workers but {device_count} chip(s): a chip serves one process "
      "(see worker_count)."
    )
  devices, sharers = assign_devices(device_count, worker_index, num_workers)
  variable = _DEVICE_LIST_VARIABLE[platform]
  # The user's own list, if any: the devices are its first device_count entries.
  listed = [x.strip() for x in environ.get(variable, "").split(",") if x.strip()]
  if len(listed) < device_count:
    listed = [str(i) for i in range(device_count)]
  ids = listed[:device_count]
  env: dict[str, str] = {}
  if platform == "tpu":  # One chip per worker (worker_count: no more workers than chips).
    port = TPU_FIRST_PORT + worker_index
    env[variable] = ids[worker_index]
    defaults = {
      "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
      "TPU_PROCESS_BOUNDS": "1,1,1",
      "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
      "TPU_MESH_CONTROLLER_PORT": str(port),
    }
  else:
    env[variable] = ",".join(ids[d] for d in devices)
    defaults = {_PREALLOCATE: "false"}
    if sharers > 1 and not any(v in environ for v in _MEMORY_FRACTION_VARIABLES):
      defaults["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{SHARED_MEMORY_FRACTION / sharers:.3g}"
  env.update({k: v for k, v in defaults.items() if k not in environ})
  return env


def worker_environments(machine: Machine, num_workers: int, environ: Mapping[str, str]):
  """Every worker's :func:`worker_environment`; one entry per worker that starts.

  Returns:
    A list of ``worker_count(...)`` dicts (``[{}]`` for one worker: it trains in the sweep
    process).
  """
  count = worker_count(machine.platform, machine.units, num_workers)
  if machine.units < 1:  # An unknown machine: nothing to split.
    return [{} for _ in range(count)]
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  return [
    worker_environment(machine.platform, machine.units, i, count, environ, cpus)
    for i in range(count)
  ]


def describe_workers(machine: Machine, num_workers: int, environments) -> str | None:
  """One line on what each worker gets (None when none gets anything and all start)."""
  if not any(environments) and len(environments) == num_workers:
    return None
  unit = "chip" if machine.platform == "tpu" else "device"
  line = (
    f"{len(environments)} worker process(es) on {machine.units} {machine.platform} "
    f"{unit}(s) ({machine.device_kind})"
  )
  if len(environments) < num_workers:
    line += f", not {num_workers}: a TPU chip serves one process"
  if len(environments) == 1:
    return line + "; it trains in the sweep process"
  parts = [
    f"worker {i}: " + (" ".join(f"{k}={v}" for k, v in sorted(env.items())) or "nothing set")
    for i, env in enumerate(environments)
  ]
  return line + "; " + "; ".join(parts)


# ---- The pool ---------------------------------------------------------------------------


def pool_arguments(context, environments: Sequence[Mapping[str, str]]) -> dict[str, Any]:
  """``initializer`` and ``initargs`` for a pool of ``context`` whose workers die with this
  process and each take one of ``environments`` (in the order they start)."""
  counter = context.Value("i", 0)
  return {
    "initializer": start_worker,
    "initargs": (os.getpid(), tuple(dict(e) for e in environments), counter),
  }


def start_worker(parent_pid: int, environments: Sequence[Mapping[str, str]], counter) -> None:
  """A pool worker's initializer: dies with its parent, takes the next environment."""
  exit_with_parent(parent_pid)
  with counter.get_lock():
    index = counter.value
    counter.value += 1
  apply_environment(environments[index % len(environments)])
  pin_to_cpus(os.environ.get(WORKER_CPUS, ""))


def pin_to_cpus(cpus: str) -> None:
  """Pins this process (and the threads it starts later) to the comma-separated cores
  ``cpus``; ``""``, or a platform without ``sched_setaffinity``: nothing."""
  if cpus and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def apply_environment(env: Mapping[str, str]) -> None:
  """Sets ``env`` in this process; JAX reads it when its backend starts (not yet, here)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  if env and bridge is not None and bridge.backends_are_initialized():
    _log.warning("JAX's backend started before the worker environment %s was set", dict(env))
  os.environ.update(env)


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


# ---- The compilation cache --------------------------------------------------------------


def default_compilation_cache_dir(temp_dir: str | None = None) -> str | None:
  """``<tempdir>/attnlab-<uid>/jax_cache``: node-local, this user's alone (see the module
  docstring).

  Its parent is created private (mode 700); if it exists and is not this user's alone
  (another owner, or writable by others, who could plant compiled programs), there is no
  default (None) and a warning says why.

  Args:
    temp_dir: the node-local directory; default ``tempfile.gettempdir()`` (``TMPDIR``).
  """
  user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
  parent = os.path.join(temp_dir or tempfile.gettempdir(), f"attnlab-{user}")
  try:
    os.makedirs(parent, mode=0o700, exist_ok=True)
    info = os.stat(parent)
  except OSError as e:
    _log.warning("no compilation cache: cannot create %s (%s)", parent, e)
    return None
  if hasattr(os, "getuid") and (
    info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
  ):
    _log.warning(
      "no compilation cache: %s belongs to uid %d or others may write it; pass a cache "
      "directory of your own",
      parent,
      info.st_uid,
    )
    return None
  return os.path.join(parent, "jax_cache")


def use_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache in ``path``, every program cached, for this process
  and the processes it starts later (through the environment): a sweep's workers share it.
  """
  import jax  # Deferred: the rest of this module does not need JAX.

  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every program: a sweep compiles hundreds of small ones, each under a second.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
