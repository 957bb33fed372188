"""Rebuilds results.csv, table.md, claims.md and the plots of a sweep from its run directories
(no training).

python -m experiments.table --workdir=DIR [--noplots]
"""

from __future__ import annotations

import sys

from absl import app, flags

from attnlab.sweep import table
from attnlab.training import rundir
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory written by experiments.compare.")
_PLOTS = flags.DEFINE_bool("plots", True, "Also rewrite DIR/plots/<task>.png.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  rebuilt = table.rebuild(_WORKDIR.value, with_plots=_PLOTS.value)
  for problem in rebuilt.problems:  # Reported; everything readable was still written.
    print(f"warning: {problem}", file=sys.stderr)
  completed = sum(r["status"] == rundir.RunStatus.COMPLETED.value for r in rebuilt.rows)
  print(f"{completed}/{len(rebuilt.rows)} runs completed")
  for path in (rebuilt.results_csv, rebuilt.table_md, rebuilt.claims_md, *rebuilt.plots):
    print(path)


if __name__ == "__main__":
  cli.run(main)
