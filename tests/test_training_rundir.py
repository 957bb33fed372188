"""The run directory: atomic writes, reading policy, status, summary keys, locks, config checks."""

import errno
import json
import logging
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from attnlab.training import rundir

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Holds a run directory's lock until killed.
_HOLD_LOCK = """
import sys, time
from attnlab.training import rundir
with rundir.locked(sys.argv[1]):
  print("locked", flush=True)
  time.sleep(120)
"""


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


def _complete_summary():
  return {key: 0 for key in rundir.REQUIRED_SUMMARY_KEYS} | {rundir.COMPLETED_KEY: True}


def test_a_torn_summary_is_an_unfinished_run_and_is_reported(tmp_path, caplog):
  run = _run(tmp_path)
  rundir.write_summary(run, _complete_summary())
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


def test_a_summary_without_required_keys_is_not_a_finished_run(tmp_path, caplog):
  run = _run(tmp_path)
  rundir.write_summary(run, {rundir.COMPLETED_KEY: True})  # Hand-edited, or another writer's.
  with caplog.at_level(logging.WARNING):
    assert not rundir.is_finished(run)
  assert os.path.join(run, rundir.SUMMARY_FILE) in caplog.text
  assert "test/seq_accuracy" in caplog.text and "unfinished" in caplog.text
  assert rundir.run_status(run, group_failed=False) is rundir.RunStatus.INCOMPLETE
  rundir.write_summary(run, _complete_summary())
  assert rundir.is_finished(run)


def test_lock_refuses_a_second_writer_naming_the_holder(tmp_path):
  run = _run(tmp_path)
  assert rundir.lock_path(run) == os.path.join(run, ".lock")
  assert rundir.lock_path(run, shard=3) == os.path.join(run, ".lock.shard_3")
  with rundir.locked(run, what="sweep"):
    with pytest.raises(rundir.DirectoryLockedError, match=f"in use by pid {os.getpid()} on "):
      with rundir.locked(run):
        pass
    with rundir.locked(run, shard=0):  # Another shard's lock is another file.
      pass
  with rundir.locked(run):  # Released on exit.
    pass


def test_a_lock_held_by_a_killed_process_does_not_block(tmp_path):
  run = _run(tmp_path)
  holder = subprocess.Popen(
    [sys.executable, "-c", _HOLD_LOCK, run], stdout=subprocess.PIPE, text=True, cwd=_REPO
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(rundir.DirectoryLockedError, match=f"pid {holder.pid} "):
      with rundir.locked(run):
        pass
  finally:
    holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the flock.
    holder.wait(timeout=30)
  with rundir.locked(run):
    pass


def _without_flock(monkeypatch, code=errno.ENOLCK):
  """Makes fcntl.flock fail as on a filesystem without it (NFS without lockd: ENOLCK)."""

  def flock(fd, operation):
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(rundir.fcntl, "flock", flock)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_without_flock_a_lock_file_refuses_a_second_writer(tmp_path, monkeypatch, code):
  _without_flock(monkeypatch, code)
  run = _run(tmp_path)
  held = rundir.lock_path(run) + rundir.HELD_SUFFIX
  with rundir.locked(run, what="sweep"):
    assert open(held).read().startswith(f"pid {os.getpid()} on ")
    with pytest.raises(rundir.DirectoryLockedError, match=f"in use by pid {os.getpid()} on .*"
                       "flock is unavailable here"):  # fmt: skip
      with rundir.locked(run):
        pass
    with rundir.locked(run, shard=0):  # Another shard's lock is another file.
      pass
  assert not os.path.exists(held)  # Released: removed.
  with rundir.locked(run):
    pass


def test_without_fcntl_a_lock_file_is_used(tmp_path, monkeypatch):
  monkeypatch.setattr(rundir, "fcntl", None)  # Not POSIX.
  run = _run(tmp_path)
  with rundir.locked(run):
    with pytest.raises(rundir.DirectoryLockedError, match="flock is unavailable here"):
      with rundir.locked(run):
        pass


def test_flock_errors_other_than_unsupported_still_raise(tmp_path, monkeypatch):
  _without_flock(monkeypatch, errno.EBADF)
  with pytest.raises(OSError, match="Bad file descriptor"):
    with rundir.locked(_run(tmp_path)):
      pass


def _dead_pid():
  done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)  # fmt: skip
  return int(done.stdout)


def test_without_flock_a_dead_holders_lock_file_is_taken_over(tmp_path, monkeypatch, caplog):
  _without_flock(monkeypatch)
  run = _run(tmp_path)
  held = rundir.lock_path(run) + rundir.HELD_SUFFIX
  pid = _dead_pid()
  with open(held, "w") as f:  # Left by a process of this host killed with -9.
    f.write(f"pid {pid} on {rundir.socket.gethostname()}, started 2024-01-01 00:00:00 UTC\n")
  with caplog.at_level(logging.WARNING), rundir.locked(run):
    assert open(held).read().startswith(f"pid {os.getpid()} ")
  assert f"pid {pid} on this host, is dead" in caplog.text


def test_without_flock_another_hosts_lock_file_is_stale_once_not_refreshed(tmp_path, monkeypatch):
  _without_flock(monkeypatch)
  run = _run(tmp_path)
  held = rundir.lock_path(run) + rundir.HELD_SUFFIX
  with open(held, "w") as f:
    f.write("pid 1 on some-other-host, started 2024-01-01 00:00:00 UTC\n")
  # Refreshed recently: its holder may be alive.
  with pytest.raises(rundir.DirectoryLockedError, match="in use by pid 1 on some-other-host"):
    with rundir.locked(run):
      pass
  old = os.stat(held).st_mtime - rundir.STALE_SECONDS - 10
  os.utime(held, (old, old))
  with rundir.locked(run):
    assert open(held).read().startswith(f"pid {os.getpid()} ")


def test_without_flock_the_holder_refreshes_its_lock_file(tmp_path, monkeypatch):
  _without_flock(monkeypatch)
  monkeypatch.setattr(rundir, "HEARTBEAT_SECONDS", 0.05)
  run = _run(tmp_path)
  held = rundir.lock_path(run) + rundir.HELD_SUFFIX
  with rundir.locked(run):
    old = os.stat(held).st_mtime - rundir.STALE_SECONDS - 10
    os.utime(held, (old, old))
    deadline = time.monotonic() + 10
    while os.stat(held).st_mtime < old + 1 and time.monotonic() < deadline:
      time.sleep(0.05)
    assert time.time() - os.stat(held).st_mtime < rundir.STALE_SECONDS
    with pytest.raises(rundir.DirectoryLockedError):  # So it is not taken over.
      with rundir.locked(run):
        pass


def test_config_differences_name_dotted_keys_and_both_values():
  saved = {"steps": 8, "log_every": 2, "optimizer": {"learning_rate": 0.003, "name": "adam"}}
  saved["task_overrides"] = {}
  now = {"steps": 2, "log_every": 1, "optimizer": {"learning_rate": 0.5, "name": "adam"}}
  now["task_overrides"] = {"train_lengths": None, "num_symbols": None}  # None: the default.
  differences = rundir.config_differences(saved, now)
  assert differences == [("optimizer.learning_rate", 0.003, 0.5), ("steps", 8, 2)]
  assert rundir.describe_differences(differences) == (
    "optimizer.learning_rate: 0.003 in the run, 0.5 now; steps: 8 in the run, 2 now"
  )
  assert "log_every" in rundir.RESULT_NEUTRAL_KEYS  # Cadence changes no result.
  now["task_overrides"]["train_lengths"] = [1, 5]
  assert rundir.config_differences(saved, now)[-1] == ("task_overrides.train_lengths", None, [1, 5])
  assert "and 1 more key(s)" in rundir.describe_differences(differences * 3, limit=5)


def test_config_check_of_a_run_directory(tmp_path):
  run = _run(tmp_path)
  config = rundir.run_config_dict({"steps": 8, "optimizer": {"learning_rate": 0.003}}, seed=1)
  assert config["seed"] == 1
  rundir.check_same_config(run, config)  # No config.json yet: nothing to differ from.
  rundir.write_config(run, config)
  rundir.check_same_config(run, dict(config, log_every=5))
  with pytest.raises(rundir.ConfigMismatchError, match=r"\(seed: 1 in the run, 2 now\)"):
    rundir.check_same_config(run, dict(config, seed=2))


def test_unusable_directories_are_named(tmp_path, monkeypatch):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(rundir.WorkdirError, match=f"run directory {path} is a file"):
    rundir.make_dir(str(path))
  with pytest.raises(rundir.WorkdirError, match=f"cannot create sweep directory {path}/sub"):
    rundir.make_dir(str(path / "sub"), what="sweep")

  def denied(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(os, "makedirs", denied)
  with pytest.raises(rundir.WorkdirError, match="cannot create run directory .*: Permission den"):
    rundir.make_dir(str(tmp_path / "new"))


def test_set_aside_renames_to_the_first_free_stale_name(tmp_path):
  run = _run(tmp_path)
  assert rundir.set_aside(run) == f"{run}.stale-1"
  os.makedirs(run)
  assert rundir.set_aside(run) == f"{run}.stale-2"
  assert not os.path.exists(run) and rundir.seed_of(os.path.basename(f"{run}.stale-2")) is None


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
  run = _run(tmp_path)
  rundir.write_summary(run, {"old": 1})

  def no_space(src, dst):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "replace", no_space)
  summary_path = os.path.join(run, rundir.SUMMARY_FILE)
  with pytest.raises(rundir.DiskFullError, match=f"no space left on device writing {summary_path}"):
    rundir.write_summary(run, {"new": 2})
  monkeypatch.undo()
  assert sorted(os.listdir(run)) == [rundir.SUMMARY_FILE]  # No temporary file left behind.
  assert rundir.read_summary(run) == {"old": 1}
  error = rundir.DiskFullError("/x", "kept")
  assert str(pickle.loads(pickle.dumps(error))) == "no space left on device writing /x; kept"
  assert rundir.is_disk_full(ValueError("RESOURCE_EXHAUSTED: ... No space left on device"))


def test_format_number_shows_no_value_as_the_placeholder():
  assert rundir.format_number(0.98765, 1, scale=100.0) == "98.8"
  assert rundir.format_number(1.234, 2, missing="—") == "1.23"
  for nothing in (None, float("nan"), float("inf")):  # Never "nan" or "inf" in a table.
    assert rundir.format_number(nothing) == "n/a"
    assert rundir.format_number(nothing, 2, missing="—") == "—"
