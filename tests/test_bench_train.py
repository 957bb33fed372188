"""experiments/bench_train.py at toy sizes: it times the trainer's own step (no timing checks)."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from attnlab import estimators
from attnlab.training import objectives, step
from configs import default
from experiments import bench_train

_TOY = bench_train.Settings(batch_size=2, preset="smoke", warmup=1, blocks=2, steps_per_block=1)


def test_settings_reject_counts_that_are_not_ints_at_least_their_minimum():
  # warmup may be 0 (no untimed block); every other count must be >= 1; a bool is no count.
  assert bench_train.Settings(**{**_TOY.__dict__, "warmup": 0}).warmup == 0
  for bad in ({"warmup": -1}, {"blocks": 0}, {"steps_per_block": True}, {"num_seeds": 1.0}):
    with pytest.raises(ValueError, match=f"{next(iter(bad))}=.* must be an int >= "):
      bench_train.Settings(**{**_TOY.__dict__, **bad})


def test_unknown_case_lists_valid_names():
  with pytest.raises(ValueError, match="valid: .*rnn_soft"):
    bench_train.get_case("rnn_sotf")


def test_run_config_uses_default_sizes_and_lengths():
  run = bench_train.run_config(bench_train.CASES["rnn_hard"], 48, 8, "default")
  assert run.task.max_input_len("train") == 48
  assert run.objective.objective is objectives.Objective.REINFORCE
  assert run.objective.num_samples == 1
  assert run.objective.baseline is estimators.BaselineKind.NONE
  rnn = default.get_config().model.rnn
  assert (run.model.hidden_dim, run.model.embed_dim) == (rnn.hidden_dim, rnn.embed_dim)
  enum_run = bench_train.run_config(bench_train.CASES["rnn_hard_enum"], 12, 8, "default")
  assert enum_run.objective.objective is objectives.Objective.HARD_ENUM


def test_the_benchmarked_step_is_the_trainers_step():
  """What is timed is compile_run(run).step, the function train_seeds calls: same update."""
  settings = bench_train.Settings(batch_size=2, preset="smoke", num_seeds=2)
  bench = bench_train.build("rnn_hard", 4, settings)
  assert bench.compiled is step.compile_run(bench.run)  # The trainer's cached functions.
  executable, timings = bench_train.compile_step(bench)
  assert timings["lower_s"] > 0 and timings["compile_s"] > 0
  args = (bench.batches[0], bench.keys, np.int32(-1), np.ones(2, bool))
  state = jax.device_get(bench.state)  # Each call donates (consumes) the state it is given.
  given = jax.device_put(state, bench.compiled.layout.state)
  timed = executable(given, *args)
  trained = bench.compiled.step(jax.device_put(state, bench.compiled.layout.state), *args)
  assert int(timed.step[0]) == 1 and all(x.is_deleted() for x in jax.tree.leaves(given))
  jax.tree.map(np.testing.assert_array_equal, timed, trained)


def test_run_benchmark_returns_finite_rows_and_markdown():
  report = bench_train.run_benchmark(["rnn_soft"], [3], _TOY, log=lambda s: None)
  (row,) = report["rows"]
  keys = (
    "lower_s",
    "compile_s",
    "ms_per_step",
    "ms_per_step_min",
    "steps_per_s",
    "host_ms_per_step",
  )
  for key in keys:
    assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
  assert row["finite"] and row["hard_over_soft"] is None and row["objective"] == "soft"
  assert len(report["load_average"]) == 3 and report["compile_ratios"] == []
  text = bench_train.to_markdown(report)
  assert "load average" in text and "| rnn_soft | 3 | soft |" in text


def _row(case, length, ms, compile_s):
  reference = bench_train.get_case(case).reference
  return dict(case=case, length=length, ms_per_step=ms, lower_s=1.0, compile_s=compile_s,
              reference=reference)  # fmt: skip


def test_ratios_arithmetic():
  rows = [
    _row("rnn_soft", 12, 10.0, 4.0),
    _row("rnn_soft", 48, 40.0, 5.0),
    _row("rnn_hard", 12, 12.0, 4.0),
    _row("rnn_hard", 48, 44.0, 8.0),
    _row("transformer_soft", 12, 5.0, 2.0),
    _row("transformer_soft", 48, 9.0, 9.0),
  ]
  bench_train.add_ratios(rows)
  assert rows[2]["hard_over_soft"] == pytest.approx(1.2)
  assert rows[3]["hard_over_soft"] == pytest.approx(1.1)
  ratios = {c["case"]: c for c in bench_train.compile_ratios(rows)}
  assert ratios["rnn_soft"]["ratio"] == pytest.approx(6.0 / 5.0)
  assert ratios["rnn_soft"]["within_limit"] and not ratios["rnn_hard"]["within_limit"]
  assert ratios["transformer_soft"]["within_limit"] is None  # Not scan-based: no limit.


def test_seed_scaling_suite_times_vmapped_against_one_after_another():
  report = bench_train.run_seed_scaling(["rnn_soft"], [3], (1, 3), _TOY, log=lambda s: None)
  assert report["suite"] == "seeds" and [r["seeds"] for r in report["rows"]] == [1, 3]
  for row in report["rows"]:
    for key in ("vmapped_ms", "sequential_ms", "vmapped_compile_s"):
      assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    n = row["seeds"]
    assert row["vmapped_seeds_per_s"] == pytest.approx(n * 1e3 / row["vmapped_ms"])
    assert row["sequential_seeds_per_s"] == pytest.approx(n * 1e3 / row["sequential_ms"])
    assert row["speedup"] == pytest.approx(row["sequential_ms"] / row["vmapped_ms"])
    assert row["finite"]
  text = bench_train.seeds_to_markdown(report)
  assert "| rnn_soft | 3 | 3 |" in text and "load average" in text
  with pytest.raises(ValueError, match="seed_counts"):
    bench_train.run_seed_scaling(["rnn_soft"], [3], (0,), _TOY, log=lambda s: None)


def test_one_after_another_trains_each_seed_with_the_one_seed_step():
  """The sequential variant: the same seeds as the vmapped one, each its own one-seed run."""
  one_seed = bench_train.Settings(batch_size=2, preset="smoke", num_seeds=1)
  benches = [bench_train.build("rnn_soft", 3, one_seed, seeds=[s]) for s in (0, 1)]
  together = bench_train.build("rnn_soft", 3, dataclasses.replace(one_seed, num_seeds=2))
  executable, _ = bench_train.compile_step(benches[0])
  for i, bench in enumerate(benches):  # Seed i's data and keys: row i of the vmapped bench.
    np.testing.assert_array_equal(bench.keys[0], together.keys[i])
    np.testing.assert_array_equal(bench.batches[1].inputs[0], together.batches[1].inputs[i])
  timer = bench_train._Timer(benches, executable)
  timer.run(2)
  assert [int(s.step[0]) for s in timer.states] == [2, 2] and timer.finite()
