"""Exports a finished sweep to TensorBoard: event files per run, from its runs or results.csv.

python -m experiments.export_tensorboard --workdir=DIR [--out=OUT]
tensorboard --logdir OUT   # runs named <task>/<method>/seed_<n>; HParams by task/method/seed

See attnlab.sweep.export: from run directories (metrics.jsonl, config.json, figures) every
metrics row; from a results.csv alone (the repository's results/compare_*/) one point per run.
"""

from __future__ import annotations

import sys

from absl import app, flags

from attnlab.sweep import export
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (runs, or a results.csv).")
_OUT = flags.DEFINE_string("out", None, "Where to write <task>/<method>/seed_<n>/ event files.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  exported = export.export_tensorboard(_WORKDIR.value, _OUT.value)
  for problem in exported.problems:
    print(f"warning: {problem}", file=sys.stderr)
  out = _OUT.value or _WORKDIR.value
  print(f"{len(exported.runs)} runs exported from {exported.source} to {out}")
  print(f"tensorboard --logdir {out}")


if __name__ == "__main__":
  cli.run(main)
