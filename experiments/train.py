r"""Trains one run from a config file; re-running on the same workdir resumes it.

  python -m experiments.train --config=configs/default.py[:preset] --workdir=DIR \
    [--config.key=value ...]
  # Every visible device by default (the mesh is logged at start-up), e.g. 4 CPU devices:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m experiments.train ...
  # Several processes/hosts as one program (run once per process, same workdir):
  python -m experiments.train --coordinator_address=HOST0:PORT --num_processes=2 \
    --process_id=I ...

Only parses flags: the library (:func:`attnlab.training.sharding.initialize_distributed`, then
:func:`attnlab.training.loop.train_and_evaluate`) never reads them. Bad input (a misspelled
key, a bad value, a missing config file, an unusable workdir, a workdir another process is
writing or that holds a different config) prints one line ``error: ...`` and exits with
status 2 before anything is compiled; a full disk or a non-finite loss prints one line and
exits with 1 (see :mod:`experiments.cli`).
"""

from __future__ import annotations

import logging as py_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from attnlab.training import loop, sharding
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Run config file, e.g. configs/default.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_COORDINATOR_ADDRESS = flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0's coordinator (jax.distributed). With --num_processes and "
  "--process_id, joins this process to a multi-process program.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the program.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  sharding.DistributedMode.AUTO.value,
  sharding.DistributedMode.values(),
  "auto: join a multi-process program if any of the three flags above is given or a "
  "multi-process launch is detected (SLURM srun with >1 tasks, Open MPI with >1 ranks); "
  "on: always call jax.distributed.initialize (JAX auto-detects what is not given: Cloud TPU "
  "pods, Kubernetes, ...); off: one process.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before anything touches a device.
  sharding.initialize_distributed(
    _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value
  )
  # attnlab's progress lines at INFO (process 0 only); orbax's per-save chatter (absl INFO)
  # stays quiet.
  logging.set_verbosity(logging.WARNING)
  if jax.process_index() == 0:
    py_logging.getLogger("attnlab").setLevel(py_logging.INFO)
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  keys = ("test/seq_accuracy", "ood/seq_accuracy", "val/alignment_accuracy", "ms_per_step")
  if jax.process_index() == 0:
    logging.warning("done: %s", {k: summary.get(k) for k in keys})


if __name__ == "__main__":
  cli.run(main)
