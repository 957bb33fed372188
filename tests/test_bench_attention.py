"""experiments/bench_attention.py end to end on tiny shapes (its dispatch suite runs in
test_device_check.py): every method timed, ratios and GFLOP/s from the times, tables written."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_METHODS = ("attnlab_soft", "attnlab_chunked", "attnlab_linear", "jax_nn", "flax_linen")
_REFERENCE = ("attnlab_soft", "attnlab_chunked")  # The efficient suite's: attnlab's exact ones.


def test_efficient_suite_times_every_method_and_derives_ratios_from_the_times(tmp_path):
  out = tmp_path / "bench"
  done = subprocess.run(
    [sys.executable, "-m", "experiments.bench_attention", "--suite=efficient",
     "--lengths=16,64", "--reps=1", "--heads=2", "--head_dim=4", f"--out={out}"],
    cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
    timeout=300, check=False,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(out.with_suffix(".json").read_text())
  rows = report["efficient"]
  assert [(r["method"], r["length"]) for r in rows] == [(m, t) for t in (16, 64) for m in _METHODS]
  for length in (16, 64):
    at = [r for r in rows if r["length"] == length]
    for phase in ("fwd", "fwd_bwd"):
      assert all(r[f"{phase}_ms"] > 0 and r["skipped"] is None for r in at)
      best = min(r[f"{phase}_ms"] for r in at if r["method"] in _REFERENCE)
      for r in at:
        assert r[f"ratio_{phase}"] == pytest.approx(r[f"{phase}_ms"] / best)
    soft = at[0]  # batch 1, 2 heads, head dim 4: forward FLOPs 4·B·H·T²·D.
    assert soft["fwd_gflops"] == pytest.approx(4 * 2 * length**2 * 4 / soft["fwd_ms"] / 1e6)
    assert soft["fwd_bwd_gflops"] == pytest.approx(3.5 * 32 * length**2 / soft["fwd_bwd_ms"] / 1e6)
  linear = {r["length"]: r for r in rows if r["method"] == "attnlab_linear"}
  (scaling,) = report["linear_scaling"]
  assert (scaling["short"], scaling["long"]) == (16, 64)
  assert scaling["fwd_ratio"] == pytest.approx(linear[64]["fwd_ms"] / linear[16]["fwd_ms"])
  markdown = out.with_suffix(".md").read_text()
  assert "### Efficient attention (issue 6)" in markdown and "| float32 | 64 | jax_nn |" in markdown
