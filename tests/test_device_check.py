"""experiments/device_check.py in its CPU dry mode: every step runs, shrunk, and reports.

Run as a subprocess, as on the device machine (the budget checks below import the module: its
flags are defined only when it runs as a script).
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_runs_every_step_and_writes_its_tables(tmp_path):
  out = tmp_path / "device_check"
  # Inherits conftest's XLA_FLAGS (compile speed first): a plumbing check, compile-bound.
  # TMPDIR: the sweep's node-local compilation cache goes under tmp_path.
  env = dict(os.environ, JAX_PLATFORMS="cpu", TMPDIR=str(tmp_path))
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


_BUDGETS = """
from experiments import device_check as d
for limits in (d.LIMITS_S, d.DRY_RUN_LIMITS_S):
  assert sum(limits.values()) <= d.DEFAULT_BUDGET_S <= d.MAX_BUDGET_S <= 8 * 60, limits
  d.check_budget(limits, d.DEFAULT_BUDGET_S)
try:
  d.check_budget(dict(d.LIMITS_S, tests=d.LIMITS_S["tests"] + 1), d.DEFAULT_BUDGET_S)
except ValueError as e:
  print("refused:", e)
assert set(d.LIMITS_S) == set(d.DRY_RUN_LIMITS_S) == {s.name for s in d._steps("o", False, 8)}
"""


def test_step_limits_fit_the_budget_and_the_budget_eight_minutes():
  done = subprocess.run(
    [sys.executable, "-c", _BUDGETS], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "refused: step limits" in done.stdout and "add up to 471 s" in done.stdout
