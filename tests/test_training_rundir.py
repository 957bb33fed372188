"""The run directory: atomic writes, the one reading policy, run status, summary keys."""

import json
import logging
import os

import numpy as np
import pytest

from attnlab.training import rundir


def _run(tmp_path, seed=0):
  path = rundir.run_dir(str(tmp_path), "copy", "soft", seed)
  os.makedirs(path)
  return path


def test_layout_names_groups_runs_and_seeds(tmp_path):
  path = rundir.run_dir(str(tmp_path), "copy", "soft", 3)
  assert path == os.path.join(rundir.group_dir(str(tmp_path), "copy", "soft"), "seed_3")
  assert rundir.seed_of(os.path.basename(path)) == 3
  assert [rundir.seed_of(n) for n in ("seed_", "seed_x", "plots", "seed_12")] == [None] * 3 + [12]


def test_writes_are_atomic_and_leave_no_temporary_file(tmp_path):
  path = str(tmp_path / "summary.json")
  rundir.write_json(path, {"b": np.float32(0.5), "a": [np.int64(2), float("nan")]})
  rundir.write_json(path, {"completed": True})  # Replaces the file in one rename.
  assert os.listdir(tmp_path) == ["summary.json"]
  assert rundir.read_json(path) == {"completed": True}
  rundir.write_json(path, {"b": np.float32(0.5), "a": [np.int64(2), float("nan")]})
  with open(path) as f:
    assert json.load(f) == {"a": [2, None], "b": 0.5}  # Standard JSON: NaN becomes null.


def test_a_torn_summary_is_an_unfinished_run_and_is_reported(tmp_path, caplog):
  run = _run(tmp_path)
  rundir.write_summary(run, {rundir.COMPLETED_KEY: True})
  assert rundir.is_finished(run) and rundir.run_status(run, False) is rundir.RunStatus.COMPLETED
  with open(os.path.join(run, rundir.SUMMARY_FILE), "w") as f:
    f.write('{"completed": tr')  # A writer killed half-way (not one of ours: ours rename).
  with caplog.at_level(logging.WARNING):
    assert rundir.read_summary(run) is None
  assert "unreadable" in caplog.text and rundir.SUMMARY_FILE in caplog.text
  assert not rundir.is_finished(run)
  assert rundir.run_status(run, group_failed=False) is rundir.RunStatus.INCOMPLETE
  assert rundir.run_status(run, group_failed=True) is rundir.RunStatus.FAILED


def test_status_of_missing_and_unfinished_runs(tmp_path):
  run = rundir.run_dir(str(tmp_path), "copy", "soft", 0)
  assert rundir.run_status(run, group_failed=False) is rundir.RunStatus.MISSING
  os.makedirs(run)
  rundir.write_summary(run, {rundir.COMPLETED_KEY: False})
  assert rundir.run_status(run, group_failed=False) is rundir.RunStatus.INCOMPLETE


def test_read_metrics_skips_a_torn_last_line_only(tmp_path):
  run = _run(tmp_path)
  rundir.write_metrics(run, [{"step": 10}, {"step": 20}])
  with open(os.path.join(run, rundir.METRICS_FILE), "a") as f:
    f.write('{"step": 30, "val/seq')
  assert [r["step"] for r in rundir.read_metrics(run)] == [10, 20]
  with open(os.path.join(run, rundir.METRICS_FILE), "a") as f:
    f.write("\n" + json.dumps({"step": 40}) + "\n")
  with pytest.raises(ValueError, match="line 3 is not JSON"):
    rundir.read_metrics(run)
  rundir.write_metrics(run, [{"step": 10}])  # Resume: rewritten from the checkpoint.
  rundir.append_metrics(run, {"step": 20, "x": np.float32(1.0)})
  assert rundir.read_metrics(run) == [{"step": 10}, {"step": 20, "x": 1.0}]
  assert rundir.read_metrics(str(tmp_path / "nowhere")) == []


def test_error_file_of_a_group(tmp_path):
  sweep = str(tmp_path)
  assert rundir.read_error_line(sweep, "copy", "soft") is None
  rundir.write_error(sweep, "copy", "soft", "Traceback ...\n  line\nValueError: boom\n\n")
  assert rundir.read_error_line(sweep, "copy", "soft") == "ValueError: boom"
  rundir.clear_error(sweep, "copy", "soft")
  assert rundir.read_error_line(sweep, "copy", "soft") is None


def test_threshold_and_probe_keys():
  rows = [
    {"step": 10, "train_seconds": 1.0, "val/seq_accuracy": 0.5},
    {"step": 20, "train_seconds": 2.0, "val/seq_accuracy": 0.95},
    {"step": 30, "train_seconds": 3.0, "val/seq_accuracy": None},
  ]
  entries = rundir.threshold_entries(rows)
  assert entries == {
    rundir.steps_to_key(0.9): 20,
    rundir.seconds_to_key(0.9): 2.0,
    rundir.steps_to_key(0.99): None,
    rundir.seconds_to_key(0.99): None,
  }
  assert rundir.steps_to_key(0.9) == "steps_to_val_seq_acc_0.9"  # The results.csv column.
  keys = [rundir.probe_key("grad/variance", s) for s in (200, 1, 50)] + ["grad/cosine@1", "x@y"]
  assert rundir.probe_keys("grad/variance", keys) == [
    "grad/variance@1",
    "grad/variance@50",
    "grad/variance@200",
  ]
  assert rundir.probe_step("grad/variance@50") == 50
