"""experiments/device_check.py in its CPU dry mode: every step runs, shrunk, and reports.

Run as a subprocess (as on the device machine): importing it here would define its absl flags
next to other experiments' (``--out``) in one process.
"""

import json
import os
import subprocess
import sys

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
