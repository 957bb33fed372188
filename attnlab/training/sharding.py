"""Where a run's arrays live: one mesh over every device of every process, and the placement rule.

A run trains ``len(seeds)`` seeds together in one seed-vmapped step (:mod:`.step`). Its
:class:`Layout` is a ``jax.sharding.Mesh`` with axes ``("seed", "batch")`` over all devices
(``jax.devices()``: every process's, when ``jax.distributed`` joined several), and this rule:

* **Mesh shape** (:func:`mesh_shape`): the ``seed`` axis takes ``gcd(num_seeds, num_devices)``
  devices (as many as divide both counts) and the ``batch`` axis the rest,
  ``num_devices // seed``. On 4 devices: 1 seed -> 1 x 4; 2 seeds -> 2 x 2; 3 seeds -> 1 x 4;
  4 or 8 seeds -> 4 x 1.
* **Train state** (params, optimiser and objective state, metric sums; each seed's is tiny):
  split over ``seed``, replicated over ``batch`` (``P("seed")``).
* **Training batch** ``[seeds, batch_size, ...]``: split over both (``P("seed", "batch")``), so
  each seed's ``batch_size`` must be a multiple of the ``batch`` axis: :func:`make_layout`
  raises a ``ConfigError`` naming both at start-up, before anything compiles. The gradient's
  mean over the batch then becomes a cross-device sum, which changes the float32 summation
  order only.
* **Evaluation, test, OOD and probe sets, and every metric**: replicated (``P()``). The sets are
  small, replicated evaluation needs no padding rule, and every process can read a replicated
  output.

Data are generated on the host from ``(seed, step)`` alone (``task.sample``), so each process
builds the full global batch and keeps the shards of its own devices
(``jax.make_array_from_callback``, :func:`put`): any device or process count trains on the same
data and computes the same program. ``jax.random`` is partitionable (``jax_threefry_partitionable``,
the default), so sampled attention draws the same numbers however the batch is split.

:func:`initialize_distributed` joins processes into one program (``jax.distributed``); it must
run before anything touches a device. Checkpoints are written from per-seed slices replicated
over the mesh (:meth:`Layout.seed_slice`), so any device or process count restores them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from attnlab.enums import Choice
from attnlab.training.config import ConfigError

SEED_AXIS = "seed"
BATCH_AXIS = "batch"

_log = logging.getLogger(__name__)


def mesh_shape(num_seeds: int, num_devices: int) -> tuple[int, int]:
  """``(seed, batch)`` axis sizes: ``gcd(num_seeds, num_devices)`` devices split the seeds,
  the remaining factor splits each seed's batch (see the module docstring)."""
  if num_seeds < 1 or num_devices < 1:
    raise ValueError(f"need num_seeds >= 1 and num_devices >= 1; got {num_seeds}, {num_devices}.")
  seed = math.gcd(num_seeds, num_devices)
  return seed, num_devices // seed


@dataclasses.dataclass(frozen=True)
class Layout:
  """A run's mesh and the shardings of its arrays (the rule of the module docstring).

  Attributes:
    mesh: axes ``("seed", "batch")``.
  """

  mesh: Mesh

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def state(self) -> NamedSharding:
    """Train state (and per-seed keys, flags): split over seeds, replicated over batch."""
    return NamedSharding(self.mesh, P(SEED_AXIS))

  @property
  def batch(self) -> NamedSharding:
    """Training batch ``[seeds, batch_size, ...]``: split over seeds and examples."""
    return NamedSharding(self.mesh, P(SEED_AXIS, BATCH_AXIS))

  @property
  def replicated(self) -> NamedSharding:
    """Eval and probe sets, metrics, checkpointed per-seed slices: a full copy per device."""
    return NamedSharding(self.mesh, P())

  def describe(self) -> str:
    """``mesh seed=2 x batch=2 over 4 cpu devices in 2 processes (devices 0,1 | 2,3)``."""
    shape = self.mesh.shape
    devices = self.mesh.devices
    platform = devices.flat[0].platform
    processes = sorted({d.process_index for d in devices.flat})
    rows = " | ".join(",".join(str(d.id) for d in row) for row in devices)
    where = f"{len(processes)} process{'es' if len(processes) > 1 else ''}"
    return (
      f"mesh {SEED_AXIS}={shape[SEED_AXIS]} x {BATCH_AXIS}={shape[BATCH_AXIS]} over "
      f"{self.num_devices} {platform} device{'s' if self.num_devices > 1 else ''} in {where} "
      f"(device ids by seed row: {rows})"
    )

  def seed_slice(self, tree: Any, i: int) -> Any:
    """Seed ``i``'s part of a seed-stacked pytree, replicated on every device (checkpoints)."""
    return _slicer(self.replicated)(tree, np.int32(i))

  def stack_seeds(self, trees: Sequence[Any]) -> Any:
    """Per-seed pytrees stacked on a leading seed axis, placed by :attr:`state`."""
    return _stacker(self.state)(*trees)


def make_layout(
  num_seeds: int, batch_size: int, devices: Sequence[jax.Device] | None = None
) -> Layout:
  """The layout of ``num_seeds`` seeds trained together on ``devices`` (default: all).

  Raises:
    ConfigError: ``batch_size`` is not a multiple of the ``batch`` axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  seed, batch = mesh_shape(num_seeds, len(devices))
  if batch_size % batch:
    raise ConfigError(
      f"config.batch_size={batch_size} does not split over the mesh's {BATCH_AXIS} axis of "
      f"{batch} devices ({len(devices)} devices: the {SEED_AXIS} axis takes "
      f"gcd(num_seeds={num_seeds}, {len(devices)}) = {seed}, the {BATCH_AXIS} axis the other "
      f"{batch}); use a batch_size that is a multiple of {batch}, or fewer devices."
    )
  mesh = jax.make_mesh(
    (seed, batch), (SEED_AXIS, BATCH_AXIS), (AxisType.Auto, AxisType.Auto), devices=devices
  )
  return Layout(mesh)


def single_device_layout() -> Layout:
  """A 1 x 1 mesh on this process's first device (for callers that pass no layout)."""
  return make_layout(1, 1, jax.local_devices()[:1])


# ---- Moving data ------------------------------------------------------------------------


def put(tree: Any, sharding: NamedSharding) -> Any:
  """Host values (numpy, scalars, or process-local arrays) -> global arrays placed by
  ``sharding``. Every process must pass the same full value; each keeps its devices' shards."""

  def one(x):
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(one, tree)


def fetch(tree: Any) -> Any:
  """Arrays -> numpy, the full value on every process (a collective for arrays that span
  processes: every process must call it)."""

  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      x = _resharder(NamedSharding(x.sharding.mesh, P()))(x)
    return np.asarray(x)

  return jax.tree.map(one, tree)


@functools.lru_cache(maxsize=32)
def _resharder(sharding: NamedSharding):
  return jax.jit(lambda x: x, out_shardings=sharding)


@functools.lru_cache(maxsize=32)
def _slicer(sharding: NamedSharding):
  return jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), out_shardings=sharding)


@functools.lru_cache(maxsize=32)
def _stacker(sharding: NamedSharding):
  return jax.jit(
    lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees), out_shardings=sharding
  )


# ---- Joining processes ------------------------------------------------------------------


class DistributedMode(Choice):
  """How :func:`initialize_distributed` decides whether to join a multi-process program."""

  AUTO = "auto"  # Join if any address/count/id is given or a multi-process launch is visible.
  ON = "on"  # Always call jax.distributed.initialize (JAX auto-detects what is not given).
  OFF = "off"  # One process.


def launched_as_multiprocess(environ: dict[str, str] | None = None) -> bool:
  """Whether the environment shows a multi-process launch JAX auto-detects: a SLURM job step
  (``srun``) of more than one task, or an Open MPI run of more than one rank."""
  env = os.environ if environ is None else environ
  slurm = (
    "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) > 1
  )
  ompi = int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
  return slurm or ompi


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  mode: str | DistributedMode = DistributedMode.AUTO,
) -> bool:
  """Joins this process to a multi-process JAX program; call it before anything uses JAX.

  Every process of the program then sees ``jax.devices()`` of all processes, and runs the same
  code: a run's mesh spans them all. On CPU, cross-process collectives use gloo
  (``jax_cpu_collectives_implementation``).

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator; None: auto-detected.
    num_processes: the number of processes; None: auto-detected.
    process_id: this process's index in ``[0, num_processes)``; None: auto-detected.
    mode: a :class:`DistributedMode` value. ``auto`` joins when any of the three is given or
      :func:`launched_as_multiprocess`; ``on`` always (Cloud TPU pods, Kubernetes: JAX's cluster
      detection fills in what is missing); ``off`` never (then none may be given).

  Returns:
    Whether ``jax.distributed.initialize`` was called.
  """
  mode = DistributedMode.parse(mode, name="distributed mode")
  given = {
    k: v
    for k, v in dict(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    ).items()
    if v is not None
  }
  if mode is DistributedMode.OFF:
    if given:
      raise ValueError(f"distributed mode 'off' but {sorted(given)} given.")
    return False
  if mode is DistributedMode.AUTO and not given and not launched_as_multiprocess():
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**given)
  _log.info(
    "process %d of %d joined; %d local of %d devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True
