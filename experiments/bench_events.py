r"""What TensorBoard's event files cost a training step: the writer's time per metrics row.

A run writes one metrics row per evaluation (every ``eval_every`` steps) to ``metrics.jsonl``
and, through :class:`attnlab.training.events.RunEvents`, to its event file: one scalar per
number, then a flush. This times exactly that call (``rundir.append_metrics`` with the run's
sink), on rows shaped like a REINFORCE run's (``--scalars`` numbers each), and divides by the
evaluation interval to give the cost per training step; the one-off writes (config,
hyperparameters at the start; figures and the session end at the finish) are timed apart.

  python -m experiments.bench_events
  python -m experiments.bench_events --rows=200 --scalars=45 --eval_every=50
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from absl import app, flags

from attnlab.training import events, plots, rundir
from experiments import cli

_ROWS = flags.DEFINE_integer("rows", 200, "Metrics rows written (evaluations).")
_SCALARS = flags.DEFINE_integer("scalars", 45, "Numbers per row (a REINFORCE row has ~45).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "Training steps per row (configs: 50).")
# Keys of a REINFORCE run's row (more are named metric/<k> up to --scalars).
_KEYS = tuple(
  f"train/{k}" for k in ("loss", "nll", "token_accuracy", "grad_norm", "return")
) + tuple(
  f"val/{k}"
  for k in ("seq_accuracy", "token_accuracy", "nll", "alignment_accuracy", "attention_entropy")
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = {"task": "copy", "seed": 0, "model": {"attention": "hard"}, "steps": 3000}
  with tempfile.TemporaryDirectory() as run:
    sink = events.RunEvents(run, config)
    clock = time.perf_counter()
    rundir.write_metrics(run, [], sink)  # Opens the event file: config and hyperparameters.
    open_seconds = time.perf_counter() - clock
    row_seconds, rows = [], []
    for i in range(_ROWS.value):
      row = {"step": (i + 1) * _EVAL_EVERY.value}
      keys = [_KEYS[k] if k < len(_KEYS) else f"metric/{k}" for k in range(_SCALARS.value)]
      row.update({key: 1.0 / (i + k + 1) for k, key in enumerate(keys)})
      rows.append(row)
      clock = time.perf_counter()
      rundir.append_metrics(run, row, sink)
      row_seconds.append(time.perf_counter() - clock)
    jsonl_seconds = []
    for row in rows:  # The same rows to metrics.jsonl alone, for comparison.
      clock = time.perf_counter()
      rundir.append_metrics(run, row)
      jsonl_seconds.append(time.perf_counter() - clock)
    plots.plot_learning_curve(os.path.join(run, rundir.LEARNING_CURVE_FILE), rows[:20])
    clock = time.perf_counter()
    sink.log_figures()
    sink.finish()
    finish_seconds = time.perf_counter() - clock
    sink.close()
    size = sum(os.path.getsize(p) for p in events.event_files(run))
  median = statistics.median(row_seconds)
  print(f"rows: {_ROWS.value} x {_SCALARS.value} scalars, one row per {_EVAL_EVERY.value} steps")
  print(
    f"append_metrics with events: median {1e3 * median:.3f} ms/row "
    f"(min {1e3 * min(row_seconds):.3f}, max {1e3 * max(row_seconds):.3f}); "
    f"metrics.jsonl alone {1e3 * statistics.median(jsonl_seconds):.3f} ms/row"
  )
  print(f"per training step: {1e6 * median / _EVAL_EVERY.value:.1f} us")
  print(
    f"once per run: open {1e3 * open_seconds:.2f} ms, figures + end {1e3 * finish_seconds:.2f} "
    f"ms; event file {size / 1024:.0f} KiB"
  )


if __name__ == "__main__":
  cli.run(main)
