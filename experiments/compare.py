r"""Runs the soft-vs-hard comparison sweep (resumable) and writes results.csv and table.md.

  python -m experiments.compare --config=configs/compare.py[:preset] --workdir=DIR
  # How much vmapping seeds together saves, on one (task, method):
  python -m experiments.compare --config=configs/compare.py --workdir=/tmp/speedup \
    --measure_speedup --speedup_task=copy --speedup_method=soft_additive
  # Shard I of N (e.g. a SLURM array task); then, once all are done, experiments.table:
  python -m experiments.compare --config=configs/compare.py --workdir=DIR \
    --shard_index=I --num_shards=N

Flags only: everything else is in the config (see configs/compare.py).

Rerunning resumes; a run whose saved config differs from the one the sweep would now train
(finished or not) is moved aside to ``seed_<n>.stale-<k>`` and retrained, one line per group
naming the changed keys, so the table never reports an earlier config's results as this one's
(``log_every``, ``checkpoint_every`` and ``keep_checkpoints`` change no result and are not
compared). One sweep at a time per directory; its worker processes die with it. Exit status:
0 when every run finished, 1 when a group failed (after the others finished; the last line says
how many and where their tracebacks are), 2 for bad input (one ``error:`` line, see
:mod:`experiments.cli`).
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from attnlab.sweep import plan, workers
from attnlab.sweep import run as compare
from attnlab.training import rundir
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Comparison config file (configs/compare.py[:preset]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (created; reruns resume).")
_MEASURE_SPEEDUP = flags.DEFINE_bool(
  "measure_speedup",
  False,
  "Instead of the sweep, time one group with seeds vmapped vs one seed at a time.",
)
_JAX_CACHE_DIR = flags.DEFINE_string(
  "jax_cache_dir",
  None,
  "Persistent XLA compilation cache (default: node-local and per-user, "
  "<tempdir>/attnlab-<uid>/jax_cache, shared by the sweep's workers, its shards on this "
  "machine and later runs here; '' disables). Groups that share shapes (copy, reverse, sort) "
  "and reruns then skip most compilation. Keep it off shared filesystems: JAX writes entries "
  "in place.",
)
_SHARD_INDEX = flags.DEFINE_integer(
  "shard_index", 0, "Run shard I of --num_shards: the groups g (plan order) with g % N == I."
)
_NUM_SHARDS = flags.DEFINE_integer(
  "num_shards",
  1,
  "Shards of the sweep. With N > 1 a shard writes only its runs and DIR/shards/; build the "
  "table with python -m experiments.table --workdir=DIR once all shards are done.",
)
_SPEEDUP_TASK = flags.DEFINE_string("speedup_task", "copy", "Task for --measure_speedup.")
_SPEEDUP_METHOD = flags.DEFINE_string(
  "speedup_method", "soft_additive", "Method for --measure_speedup."
)
flags.mark_flags_as_required(["config", "workdir"])


def _shell_word(arg: str) -> str:
  """``arg`` as a shell word, as one would type it: ``--flag="(1, 2)"`` rather than shlex's
  ``'--flag=(1, 2)'`` (shlex quoting where double quotes would not do)."""
  if shlex.quote(arg) == arg:
    return arg
  flag, equals, value = arg.partition("=")
  if (
    equals
    and flag.startswith("--")
    and shlex.quote(flag) == flag
    and not set('"$`\\!') & set(value)
  ):
    return f'{flag}="{value}"'
  return shlex.quote(arg)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  shard = plan.Shard(_SHARD_INDEX.value, _NUM_SHARDS.value)
  # The sweep reports one line per group; the trainer's and orbax's INFO lines would bury it.
  logging.set_verbosity(logging.WARNING)
  cache_dir = _JAX_CACHE_DIR.value
  if cache_dir is None:  # Node-local: never written from two hosts (attnlab.sweep.workers).
    cache_dir = workers.default_compilation_cache_dir()
  if cache_dir:  # In the environment too: the spawned workers share it.
    workers.use_compilation_cache(cache_dir)
  if _MEASURE_SPEEDUP.value:
    result = compare.measure_seed_speedup(
        _CONFIG.value, workdir, task=_SPEEDUP_TASK.value, method=_SPEEDUP_METHOD.value,
        log=print,
    )  # fmt: skip
    rundir.write_json(os.path.join(workdir, rundir.SPEEDUP_FILE), result)
    return
  command = " ".join(["python", "-m", "experiments.compare", *map(_shell_word, sys.argv[1:])])
  report = compare.run_comparison(_CONFIG.value, workdir, log=print, shard=shard, command=command)
  if report.failed:
    cli.fail(report.failure_line(workdir), cli.RUN_ERROR)


if __name__ == "__main__":
  cli.run(main)
