"""Smoke test of experiments/bench_train.py at toy sizes (no timing assertions)."""

import math

import jax
import numpy as np
import pytest

from attnlab import estimators
from attnlab.training import objectives
from experiments import bench_train

_TOY = bench_train.Settings(batch_size=2, preset="smoke", warmup=1, blocks=2, steps_per_block=1)


def test_unknown_case_lists_valid_names():
  with pytest.raises(ValueError, match="valid: .*rnn_soft"):
    bench_train.get_case("rnn_sotf")


def test_run_config_uses_default_sizes_and_lengths():
  run = bench_train.run_config(bench_train.CASES["rnn_hard"], 48, 8, "default")
  assert run.task.max_input_len("train") == 48
  assert run.objective.objective is objectives.Objective.REINFORCE
  assert run.objective.num_samples == 1
  assert run.objective.baseline is estimators.BaselineKind.NONE
  from configs import default

  rnn = default.get_config().model.rnn
  assert (run.model.hidden_dim, run.model.embed_dim) == (rnn.hidden_dim, rnn.embed_dim)
  enum_run = bench_train.run_config(bench_train.CASES["rnn_hard_enum"], 12, 8, "default")
  assert enum_run.objective.objective is objectives.Objective.HARD_ENUM


# Unoptimised XLA compiles ~3x faster; these tests check values, not speed.
_FAST = {"xla_backend_optimization_level": 0}


def _step_once(bench):
  step = jax.jit(bench.step_fn).lower(bench.state, bench.batches[0], bench.key)
  return step.compile(compiler_options=_FAST)(bench.state, bench.batches[0], bench.key)


def test_drop_soft_logits_keeps_the_loss():
  """The ablation only removes work: same loss, gradient and update as the full hard step."""
  full_state, full = _step_once(bench_train.build("rnn_hard", 4, _TOY))
  ablated_state, ablated = _step_once(bench_train.build("rnn_hard-no_soft_logits", 4, _TOY))
  np.testing.assert_allclose(full["loss"], ablated["loss"], rtol=1e-6)
  np.testing.assert_allclose(full["grad_norm"], ablated["grad_norm"], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    full_state.params,
    ablated_state.params,
  )


def test_run_benchmark_returns_finite_rows_and_markdown():
  report = bench_train.run_benchmark(["rnn_soft"], [3], _TOY, log=lambda s: None)
  (row,) = report["rows"]
  for key in ("lower_s", "compile_s", "compile_cpu_s", "first_run_s", "ms_per_step",
              "ms_per_step_min", "steps_per_s", "loss"):  # fmt: skip
    assert math.isfinite(row[key]) and (key == "loss" or row[key] > 0), (key, row[key])
  assert row["finite"] and row["hard_over_soft"] is None
  assert row["source_shape"] == [2, 3] and row["target_shape"] == [2, 4]
  assert len(report["load_average"]) == 3 and report["compile_ratios"] == []
  text = bench_train.to_markdown(report)
  assert "load average" in text and "| rnn_soft | 3 | soft |" in text


def _row(case, length, ms, compile_s, cpu=None):
  return dict(
    case=case,
    length=length,
    ms_per_step=ms,
    ms_per_step_min=ms,
    lower_s=1.0,
    compile_s=compile_s,
    compile_cpu_s=cpu or compile_s,
    reference=bench_train.get_case(case).reference,
  )


def test_ratios_and_attribution_arithmetic():
  rows = [
    _row("rnn_soft", 12, 10.0, 4.0),
    _row("rnn_soft", 48, 40.0, 5.0, cpu=4.2),
    _row("rnn_hard", 12, 12.0, 4.0),
    _row("rnn_hard", 48, 44.0, 8.0),
    _row("rnn_hard-no_soft_logits", 12, 11.0, 4.0),
  ]
  bench_train.add_ratios(rows)
  assert rows[2]["hard_over_soft"] == pytest.approx(1.2)
  assert rows[3]["hard_over_soft"] == pytest.approx(1.1)
  ratios = {c["case"]: c for c in bench_train.compile_ratios(rows)}
  assert ratios["rnn_soft"]["ratio"]["compile_s"] == pytest.approx(1.25)
  assert ratios["rnn_soft"]["ratio"]["total_s"] == pytest.approx(6.0 / 5.0)
  assert ratios["rnn_soft"]["within_limit"] and not ratios["rnn_hard"]["within_limit"]
  parts = bench_train.attribution(rows)
  assert len(parts) == 1 and parts[0]["delta_ms"] == pytest.approx(1.0)
