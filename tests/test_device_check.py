"""experiments/device_check.py in its CPU dry mode: every step runs, shrunk, and reports."""

import json
import os
import subprocess
import sys

import pytest

from experiments import device_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_runs_every_step_and_writes_its_tables(tmp_path):
  out = tmp_path / "device_check"
  # Inherits conftest's XLA_FLAGS (optimisation level 0): a plumbing check, compile-bound.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, "-m", "experiments.device_check", "--dry_run", f"--out={out}"],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((out / "device_check.json").read_text())
  assert report["dry_run"] and report["card"]["backend"] == "cpu"
  statuses = {step["name"]: step["status"] for step in report["steps"]}
  assert statuses == dict.fromkeys(("card", "tests", "attention", "train", "compare"), "ok"), (
    json.dumps(report["steps"], indent=1)[-3000:]
  )
  markdown = (out / "device_check.md").read_text()
  for table in (
    "attnlab.dot_product_attention vs jax.nn (dispatch)",  # the attention benchmark
    "| rnn_soft |",  # the training-step benchmark
    "| copy | soft_additive |",  # the comparison
  ):
    assert table in markdown
  assert " passed" in markdown  # pytest's summary line


@pytest.mark.parametrize("dry_run", [True, False])
def test_external_commands_are_the_scripts_command_lines(dry_run):
  train = device_check.bench_train_command("/tmp/x/bench_train", dry_run)
  assert train[1:3] == ["-m", "experiments.bench_train"] and "--out=/tmp/x/bench_train" in train
  compare = device_check.compare_command("/tmp/x/compare", dry_run)
  assert compare[1:3] == ["-m", "experiments.compare"] and "--workdir=/tmp/x/compare" in compare
