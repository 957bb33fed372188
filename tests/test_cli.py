"""The entry points on bad input and failures: one ``error:`` line, no traceback, an exit status.

Each case is a real process (the flags, the config file and the exit status are the point);
none of them compiles anything.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from attnlab.training import rundir

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TRAIN = ["-m", "experiments.train", "--config=configs/default.py:smoke"]


def _run(args, timeout=180):
  result = subprocess.run(
    [sys.executable, *args], cwd=_ROOT, capture_output=True, text=True, timeout=timeout
  )
  return result.returncode, result.stdout, result.stderr


def _error_line(stderr):
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  return lines[0]


@pytest.mark.parametrize(
  "flags, expected",
  [
    (["--config.stepz=10"], "unknown config key 'stepz' (--config.stepz); did you mean 'steps'?"),
    (
      ["--config.optimizer.learnig_rate=0.1"],
      "unknown config key 'optimizer.learnig_rate' (--config.optimizer.learnig_rate); did you "
      "mean 'optimizer.learning_rate'?",
    ),
    (["--config.steps=-5"], "config.steps=-5 is invalid; expected int in [1, inf]."),
    (["--config.optimizer.learning_rate=nan"], "learning_rate=nan is invalid; expected a finite"),
    # Every documented key can be set from the command line, task fields included.
    (["--config.task_overrides.train_lengths=(0,5)"], "train_lengths must satisfy 1 <= low"),
    (["--config=configs/nope.py"], "config file 'configs/nope.py' not found"),
    (["--config.model.attention=sotf"], "config.model.attention='sotf' is invalid; valid choices"),
  ],
)
def test_train_usage_errors_are_one_line_before_anything_runs(tmp_path, flags, expected):
  workdir = tmp_path / "run"
  status, _, stderr = _run([*_TRAIN, f"--workdir={workdir}", *flags])
  assert status == 2
  assert expected in _error_line(stderr)
  assert not (workdir / rundir.CONFIG_FILE).exists()


def test_train_refuses_a_workdir_that_is_a_file_or_held_by_another_process(tmp_path):
  path = tmp_path / "file"
  path.write_text("not a directory")
  status, _, stderr = _run([*_TRAIN, f"--workdir={path}"])
  assert status == 2
  assert _error_line(stderr) == f"error: run directory {path} is a file, not a directory."
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with rundir.locked(workdir):  # As if another experiments.train were writing it.
    status, _, stderr = _run([*_TRAIN, f"--workdir={workdir}"])
  assert status == 2
  assert f"error: {workdir} is in use by pid {os.getpid()} on " in _error_line(stderr)


def test_sweep_with_a_failed_group_exits_nonzero_after_writing_the_table(tmp_path):
  sweep = tmp_path / "sweep"
  run = rundir.run_dir(str(sweep), "copy", "soft_additive", 0)
  os.makedirs(run)
  args = [
    "-m",
    "experiments.compare",
    "--config=configs/compare.py:smoke:soft_additive",
    "--config.tasks=copy",
    "--config.seeds=0",
    f"--workdir={sweep}",
  ]
  with rundir.locked(run):  # Its only group fails at once: another process holds its run.
    status, stdout, stderr = _run(args)
  assert status == 1
  error_txt = os.path.join(rundir.group_dir(str(sweep), "copy", "soft_additive"), "error.txt")
  assert _error_line(stderr) == (f"error: 1 group(s) failed (1 run(s)); tracebacks in {error_txt}")
  assert "FAILED: DirectoryLockedError" in stdout
  assert (sweep / rundir.RESULTS_FILE).exists() and (sweep / rundir.TABLE_FILE).exists()
