"""TensorBoard events of a run directory, read back with TensorBoard's reader."""

import os

import pytest
from tensorboard_events import read_events, scalar_rows

from attnlab.training import events, plots, rundir

_CONFIG = {
  "task": "copy",
  "seed": 3,
  "model": {"family": "rnn", "attention": "hard", "score": "additive"},
  "estimator": {"gradient": "reinforce", "baseline": "rloo", "num_samples": 4},
  "optimizer": {"learning_rate": 0.003},
  "steps": 8,
}


def _rows(steps, **extra):
  return [
    {"step": s, "train/loss": 1.0 / s, "val/seq_accuracy": s / 10, "grad/snr": None, **extra}
    for s in steps
  ]


def test_rows_become_scalars_at_their_steps_and_new_keys_of_the_last_row_are_added(tmp_path):
  run = str(tmp_path / "copy" / "reinforce_rloo4" / "seed_3")
  os.makedirs(run)
  sink = events.RunEvents(run, _CONFIG)
  rows = _rows([1, 2])
  rundir.write_metrics(run, rows, sink)
  rows.append(_rows([4])[0])
  rundir.append_metrics(run, rows[-1], sink)
  rows[-1].update({"test/seq_accuracy": 0.75, "ood/seq_accuracy": 0.0})  # Final evaluation.
  rundir.write_metrics(run, rows, sink)
  sink.close()

  read = read_events(run)
  assert read["scalars"] == scalar_rows(rundir.read_metrics(run))
  assert read["scalars"]["test/seq_accuracy"] == [(4, 0.75)]  # Once, at the last step.
  assert "grad/snr" not in read["scalars"]  # Non-finite (null) values are left out.
  assert len(events.event_files(run)) == 1


def test_config_hparams_and_figures_are_written(tmp_path):
  run = str(tmp_path / "copy" / "reinforce_rloo4" / "seed_3")
  os.makedirs(run)
  rows = _rows([2, 4])
  plots.plot_learning_curve(os.path.join(run, rundir.LEARNING_CURVE_FILE), rows)
  events.write_run(run, rows, _CONFIG)

  read = read_events(run)
  assert read["hparams"] == {
    "task": "copy",
    "method": "reinforce_rloo4",  # The sweep's name, from the run directory.
    "seed": 3.0,
    "model.family": "rnn",
    "model.attention": "hard",
    "model.score": "additive",
    "estimator.gradient": "reinforce",
    "estimator.baseline": "rloo",
    "estimator.num_samples": 4.0,
    "optimizer.learning_rate": 0.003,
    "steps": 8.0,
  }
  assert read["ended"]
  assert '"baseline": "rloo"' in read["text"]["config"]
  ((step, width, height),) = read["images"]["learning_curve"]
  assert step == 4 and width > 100 and height > 100
  assert "heatmaps" not in read["images"]  # No such file: nothing written.


@pytest.mark.parametrize(
  "path, config, method",
  [
    ("sweep/copy/soft_additive/seed_0", {"model": {"attention": "soft"}}, "soft_additive"),
    ("runs/mine", {"model": {"attention": "sparsemax"}}, "sparsemax"),
    (
      "runs/mine",
      {"model": {"attention": "hard"}, "estimator": {"gradient": "enumerate"}},
      "hard_enumerate",
    ),
    (
      "runs/mine",
      {"model": {"attention": "hard"}, "estimator": {"baseline": "ema", "num_samples": 1}},
      "hard_reinforce_ema",
    ),
  ],
)
def test_method_is_the_sweeps_name_or_a_label_of_the_config(path, config, method):
  assert events.method_of(path, config) == method


def test_a_new_session_rewrites_the_history_once_and_replaces_earlier_files(tmp_path):
  run = str(tmp_path / "run")
  os.makedirs(run)
  first = events.RunEvents(run, _CONFIG)
  first.log(_rows([1, 2, 4, 6]))  # Killed after step 6; the checkpoint was at step 4.
  first.close()
  second = events.RunEvents(run, _CONFIG)
  history = _rows([1, 2, 4])
  second.log(history)  # The resumed history: rows after the checkpoint are gone.
  second.log(_rows([6, 8], extra=1.0))  # Redone, with other values.
  second.close()

  read = read_events(run)
  assert read["scalars"] == scalar_rows(history + _rows([6, 8], extra=1.0))
  assert [s for s, _ in read["scalars"]["train/loss"]] == [1, 2, 4, 6, 8]  # Each step once.
  assert len(events.event_files(run)) == 1
