"""One process of the multi-device / multi-process training tests (``tests/test_scaleout.py``).

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/scaleout_worker.py \
    --workdir=DIR --seeds=0,1 [--stop_after=6] \
    [--coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=I]

Trains :func:`config` for the seeds into ``DIR/seed_<n>`` with ``train_seeds`` on every device
of every process. ``--stop_after=S`` kills the process (SIGKILL: no clean-up, no
``jax.distributed`` shutdown) right after the evaluation of step S; rerunning without it
resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

# Evaluation at 1 (probe), 2, 4, 6, 8; checkpoints at 4 and 8.
STEPS, EVAL_EVERY, CHECKPOINT_EVERY = 8, 2, 4


def config(probe_steps=()):
  """The smoke preset as a REINFORCE + EMA run (sampled attention, the EMA state), probing
  the gradient at ``probe_steps`` (none by default: the probe is the slowest compile)."""
  from attnlab.training import overrides
  from configs import default as default_config

  changes = {
    "model.attention": "hard",
    "estimator.baseline": "ema",
    "steps": STEPS,
    "eval_every": EVAL_EVERY,
    "checkpoint_every": CHECKPOINT_EVERY,
    "probe_steps": tuple(probe_steps),
  }
  return overrides.apply_overrides(default_config.get_config("smoke"), changes, where="test")


def run_dirs(workdir: str, seeds) -> list[str]:
  return [os.path.join(workdir, f"seed_{s}") for s in seeds]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--stop_after", type=int, default=None)
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  args = parser.parse_args(argv)

  from attnlab.training import sharding

  sharding.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  import logging

  import jax

  from attnlab.training import loop

  if jax.process_index() == 0:  # The mesh line and progress, as experiments.train logs them.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("attnlab").setLevel(logging.INFO)

  def callback(step, rows):
    del rows
    if step == args.stop_after:
      os.kill(os.getpid(), signal.SIGKILL)

  seeds = [int(s) for s in args.seeds.split(",")]
  loop.train_seeds(config(), seeds, run_dirs(args.workdir, seeds), callback=callback)
  print(f"process {jax.process_index()} of {jax.process_count()}: done", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
