r"""Trains one run from a config file; re-running on the same workdir resumes it.

  python -m experiments.train --config=configs/default.py[:preset] --workdir=DIR \
    [--config.key=value ...]

Only parses flags: the library (:func:`attnlab.training.loop.train_and_evaluate`) never reads
them. Bad input (a misspelled key, a bad value, a missing config file, an unusable workdir, a
workdir another process is writing or that holds a different config) prints one line
``error: ...`` and exits with status 2 before anything is compiled; a full disk or a
non-finite loss prints one line and exits with 1 (see :mod:`experiments.cli`).
"""

from __future__ import annotations

import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

from attnlab.training import loop
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Run config file, e.g. configs/default.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # attnlab's progress lines at INFO; orbax's per-save chatter (absl INFO) stays quiet.
  logging.set_verbosity(logging.WARNING)
  py_logging.getLogger("attnlab").setLevel(py_logging.INFO)
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  keys = ("test/seq_accuracy", "ood/seq_accuracy", "val/alignment_accuracy", "ms_per_step")
  logging.warning("done: %s", {k: summary.get(k) for k in keys})


if __name__ == "__main__":
  cli.run(main)
