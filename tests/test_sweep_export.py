"""A sweep exported to TensorBoard, from its run directories or from results.csv alone."""

import os
import shutil

import numpy as np
import pytest
from tensorboard_events import read_events, scalar_rows

from attnlab.sweep import export, table
from attnlab.training import events, rundir

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_runs_are_exported_with_every_row_under_task_method_seed(tmp_path):
  sweep, out = str(tmp_path / "sweep"), str(tmp_path / "tb")
  rows = {}
  for method, seed in (("soft_additive", 0), ("reinforce_rloo4", 1)):
    run = rundir.make_dir(rundir.run_dir(sweep, "copy", method, seed))
    rundir.write_config(run, {"task": "copy", "seed": seed, "model": {"attention": "soft"}})
    rows[method] = [{"step": s, "train/loss": 1.0 / s + seed} for s in (50, 100)]
    rundir.write_metrics(run, rows[method])
  rundir.write_summary(rundir.run_dir(sweep, "copy", "soft_additive", 0), {"completed": True})

  exported = export.export_tensorboard(sweep, out)
  assert exported.source == "runs" and len(exported.runs) == 2
  read = read_events(os.path.join(out, "copy", "reinforce_rloo4", "seed_1"))
  assert read["scalars"] == scalar_rows(rows["reinforce_rloo4"])
  assert (read["hparams"]["method"], read["hparams"]["seed"]) == ("reinforce_rloo4", 1.0)
  assert not read["ended"]  # No summary.json: unfinished.
  assert events.event_files(rundir.run_dir(sweep, "copy", "soft_additive", 0)) == []  # --out.


def test_results_csv_alone_gives_one_point_per_completed_run(tmp_path):
  sweep = str(tmp_path / "sweep")
  os.makedirs(sweep)
  results = [
    {"task": "sort", "method": "hard_enum", "seed": 2, "status": "completed", "error": "",
     "attention": "hard", "steps_trained": 1200, "converged": False,
     "test/seq_accuracy": 0.96, "grad/variance@1": 0.0},
    {"task": "sort", "method": "hard_enum", "seed": 3, "status": "failed", "error": "boom"},
  ]  # fmt: skip
  table.write_results_csv(os.path.join(sweep, rundir.RESULTS_FILE), results)

  exported = export.export_tensorboard(sweep)
  assert exported.source == "results.csv"
  (run,) = exported.runs
  assert run == rundir.run_dir(sweep, "sort", "hard_enum", 2)
  read = read_events(run)
  assert read["hparams"]["task"] == "sort" and read["hparams"]["model.attention"] == "hard"
  assert read["scalars"]["test/seq_accuracy"] == [(1200, float(np.float32(0.96)))]
  assert read["scalars"]["steps_trained"] == [(1200, 1200.0)]
  assert "converged" not in read["scalars"] and read["ended"]


def test_the_committed_results_export(tmp_path):
  source = os.path.join(_REPO, "results", "compare_seeds345")
  sweep = str(tmp_path / "compare_seeds345")
  shutil.copytree(source, sweep)
  csv_rows = table.read_results_csv(os.path.join(sweep, rundir.RESULTS_FILE))
  exported = export.export_tensorboard(sweep, str(tmp_path / "tb"))
  assert len(exported.runs) == len(csv_rows) == 45
  first = csv_rows[0]
  read = read_events(rundir.run_dir(str(tmp_path / "tb"), first["task"], first["method"], 3))
  assert read["scalars"]["test/seq_accuracy"] == [
    (first["steps_trained"], float(np.float32(first["test/seq_accuracy"])))
  ]


def test_nothing_to_export_is_an_error_naming_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing to export"):
    export.export_tensorboard(str(tmp_path))
