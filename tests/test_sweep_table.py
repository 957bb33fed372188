"""Tests for attnlab.sweep.table: run statuses, results.csv, table.md numbers and order, rebuild."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from attnlab.sweep import table
from attnlab.training import rundir

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _summary(test_acc, steps90=None, steps99=None, var1=1e-6, **extra):
  return {
    "completed": True,
    "test/seq_accuracy": test_acc,
    "test/token_accuracy": 0.99,
    "ood/seq_accuracy": 0.0,
    "val/alignment_accuracy": 0.9,
    "val/lenient_alignment_accuracy": 0.9,
    "val/attention_entropy": 0.25,
    "steps_to_val_seq_acc_0.9": steps90,
    "steps_to_val_seq_acc_0.99": steps99,
    "seconds_to_val_seq_acc_0.9": None if steps90 is None else steps90 / 100,
    "seconds_to_val_seq_acc_0.99": None if steps99 is None else steps99 / 100,
    "grad/variance@1": var1,
    "grad/variance@50": var1 / 10,
    "ms_per_step": 12.0,
    "train_seconds": 3.0,
    "converged": steps99 is not None,
    "steps_trained": steps99 + 50 if steps99 is not None else 500,
    "steps": 500,
    **extra,
  }


def _write_run(workdir, task, method, seed, summary=None, metrics=None):
  path = rundir.run_dir(str(workdir), task, method, seed)
  os.makedirs(path, exist_ok=True)
  if summary is not None:
    with open(os.path.join(path, rundir.SUMMARY_FILE), "w") as f:
      json.dump(summary, f)
  rows = metrics or [{"step": 10, "val/seq_accuracy": 0.5}, {"step": 20, "val/seq_accuracy": 1.0}]
  with open(os.path.join(path, rundir.METRICS_FILE), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.fixture
def sweep(tmp_path):
  """copy × (soft, hard, broken) × seeds 0-2, hard with one interrupted seed, broken failed."""
  grid = table.Grid(("copy",), ("soft", "hard", "broken"), (0, 1, 2), hardware="test box")
  with open(tmp_path / rundir.GRID_FILE, "w") as f:
    json.dump(grid.to_dict(), f)
  for seed, (acc, s90, s99) in enumerate([(1.0, 100, 150), (0.98, 120, None), (0.96, 140, 300)]):
    _write_run(tmp_path, "copy", "soft", seed, _summary(acc, s90, s99, var1=10.0 ** -(seed + 6)))
  _write_run(tmp_path, "copy", "hard", 0, _summary(0.5, val_extra=[1, 2]))
  _write_run(tmp_path, "copy", "hard", 1, _summary(0.7, 400, None))
  _write_run(tmp_path, "copy", "hard", 2, {"completed": False})  # interrupted.
  os.makedirs(rundir.group_dir(str(tmp_path), "copy", "broken"))
  with open(os.path.join(rundir.group_dir(str(tmp_path), "copy", "broken"), "error.txt"), "w") as f:
    f.write("Traceback (most recent call last):\n  ...\nValueError: boom\n")
  return tmp_path, grid


def test_collect_results_statuses_in_grid_order(sweep):
  workdir, grid = sweep
  rows = table.collect_results(str(workdir), grid)
  assert [(r["method"], r["seed"], r["status"]) for r in rows] == [
    ("soft", 0, "completed"),
    ("soft", 1, "completed"),
    ("soft", 2, "completed"),
    ("hard", 0, "completed"),
    ("hard", 1, "completed"),
    ("hard", 2, "incomplete"),
    ("broken", 0, "failed"),
    ("broken", 1, "failed"),
    ("broken", 2, "failed"),
  ]
  assert rows[6]["error"] == "ValueError: boom"
  assert rows[0]["test/seq_accuracy"] == 1.0 and "completed" not in rows[0]
  assert rundir.is_finished(rundir.run_dir(str(workdir), "copy", "soft", 0))
  assert not rundir.is_finished(rundir.run_dir(str(workdir), "copy", "hard", 2))
  # A seed that was never started is "missing".
  more = table.Grid(("copy",), ("soft",), (0, 7))
  assert [r["status"] for r in table.collect_results(str(workdir), more)] == [
    "completed",
    "missing",
  ]


def test_results_csv_one_row_per_run_with_metrics(sweep):
  workdir, _ = sweep
  rebuilt = table.rebuild(str(workdir), with_plots=False)
  with open(rebuilt.results_csv) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 9
  header = list(rows[0])
  assert header[:5] == ["task", "method", "seed", "status", "error"]
  assert header.index("grad/variance@1") < header.index("grad/variance@50")
  assert "val_extra" in header  # unknown summary keys are kept, not dropped.
  assert rows[1]["test/seq_accuracy"] == "0.98"
  assert rows[1]["steps_to_val_seq_acc_0.99"] == ""  # never reached.
  assert rows[3]["val_extra"] == "[1, 2]"
  assert rows[8]["status"] == "failed" and rows[8]["test/seq_accuracy"] == ""


def _table_row(md, method):
  lines = [line for line in md.splitlines() if line.startswith(f"| copy | {method} |")]
  assert len(lines) == 1, md
  return [c.strip() for c in lines[0].strip("|").split("|")]


def test_table_numbers(sweep):
  workdir, grid = sweep
  md = table.format_table(table.collect_results(str(workdir), grid), grid)
  (header_line,) = [line for line in md.splitlines() if line.startswith("| task |")]
  header = [c.strip() for c in header_line.strip("|").split("|")]
  assert header[:10] == [
    "task", "method", "seeds ok", "converged", "solved", "steps / budget",
    "steps→90%", "steps→99%", "s→90%", "s→99%",
  ]  # fmt: skip
  assert header[-3:] == ["grad var @1", "grad var @50", "ms/step"]
  soft = dict(zip(header, _table_row(md, "soft"), strict=True))
  assert soft["seeds ok"] == "3/3"
  assert soft["steps→90%"] == "120 (3/3)"
  assert soft["steps→99%"] == "225 (2/3)"  # mean over the two seeds that got there.
  assert soft["converged"] == "2/3"
  assert soft["solved"] == "1/3"  # test exact match >= 99%: 1.0 only (0.98, 0.96 are not).
  assert soft["KL(q‖p)"] == "—"  # no posterior
  assert soft["steps / budget"] == "350 / 500"  # (200 + 500 + 350) / 3 steps trained.
  assert soft["s→99%"] == "2.2 (2/3)"
  accs = np.array([1.0, 0.98, 0.96]) * 100
  assert soft["test seq acc %"] == f"{accs.mean():.1f} ± {accs.std(ddof=1):.1f}" == "98.0 ± 2.0"
  assert soft["grad var @1"] == "1.0e-07"  # geometric mean of 1e-6, 1e-7, 1e-8.
  assert soft["align acc %"] == "90.0"  # lenient == strict: shown once.
  assert soft["ms/step"] == "12.0"
  hard = dict(zip(header, _table_row(md, "hard"), strict=True))
  assert hard["seeds ok"] == "2/3"
  assert hard["steps→90%"] == "400 (1/2)"
  assert hard["steps→99%"] == "— (0/2)"
  assert hard["test seq acc %"] == "60.0 ± 14.1"
  broken = _table_row(md, "broken")
  assert broken[2] == "0/3 failed" and set(broken[3:]) == {""}
  # Rows in grid order, and the problems listed under the table.
  assert md.index("| copy | soft |") < md.index("| copy | hard |") < md.index("| copy | broken |")
  assert "copy/broken: 3 run(s) failed — `ValueError: boom`" in md
  assert "copy/hard: 1 run(s) incomplete" in md
  assert "Hardware: test box" in md and "greedy decoding" in md


def test_lenient_alignment_shown_when_it_differs(tmp_path):
  grid = table.Grid(("sort",), ("soft",), (0,))
  summary = _summary(1.0, **{"val/lenient_alignment_accuracy": 0.95})
  _write_run(tmp_path, "sort", "soft", 0, summary)
  md = table.format_table(table.collect_results(str(tmp_path), grid), grid)
  assert "| 90.0 / 95.0 |" in md


def test_multi_head_columns_only_when_a_run_has_them(tmp_path):
  grid = table.Grid(("copy",), ("rnn", "transformer"), (0, 1))
  heads = {
    "val/alignment_accuracy_best_head": 0.98,
    "val/alignment_accuracy_head_mean": 0.5,
    "val/alignment_accuracy_any_head": 1.0,
    "val/alignment_accuracy_any_head_chance": 0.625,
    "val/attention_entropy_per_head": 1.25,
    "val/attention_entropy_best_head": 0.5,
  }
  for seed in (0, 1):
    _write_run(tmp_path, "copy", "rnn", seed, _summary(1.0))
    extra = {**heads, "val/alignment_accuracy_head_mean": 0.5 + 0.1 * seed}
    _write_run(tmp_path, "copy", "transformer", seed, _summary(1.0, **extra))
  md = table.format_table(table.collect_results(str(tmp_path), grid), grid)
  assert "| align best / mean / any head (chance) % | head entropy (best) |" in md
  assert "| 98.0 / 55.0 / 100.0 (62.5) | 1.25 (0.50) |" in md  # means over seeds
  rnn_row = next(line for line in md.splitlines() if line.startswith("| copy | rnn |"))
  assert "| — | — |" in rnn_row
  only_rnn = table.Grid(("copy",), ("rnn",), (0, 1))
  md = table.format_table(table.collect_results(str(tmp_path), only_rnn), only_rnn)
  assert "any head" not in md and "Multi-head" not in md


def test_discover_grid_without_grid_json(sweep):
  workdir, _ = sweep
  os.remove(workdir / rundir.GRID_FILE)
  os.makedirs(workdir / rundir.PLOTS_DIR)  # not a task.
  grid = table.discover_grid(str(workdir))
  assert grid.tasks == ("copy",)
  assert grid.methods == ("broken", "hard", "soft")
  assert grid.seeds == (0, 1, 2)
  with pytest.raises(FileNotFoundError, match="no grid.json"):
    table.discover_grid(str(workdir / "copy" / "soft" / "seed_0"))


def test_grid_round_trip_through_grid_json_and_unknown_key(tmp_path):
  grid = table.Grid(
    ("copy", "sort"), ("soft", "hard"), (0, 1), hardware="x", eval_mode="greedy",
    skip=("sort/hard",), command="python -m experiments.compare --workdir=d",
  )  # fmt: skip
  table.write_grid(str(tmp_path), grid)
  assert table.discover_grid(str(tmp_path)) == grid  # skip and command included
  with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
    table.Grid.from_dict({"tasks": [], "methods": [], "seeds": [], "colour": 1})


def _corrupt_first_metrics_line(run):
  path = os.path.join(run, rundir.METRICS_FILE)
  with open(path) as f:
    lines = f.read().splitlines()
  with open(path, "w") as f:
    f.write("\n".join([lines[0][:12], *lines[1:]]) + "\n")  # A bad line before the last.
  return path


def test_experiments_table_rebuilds_files_and_plots(sweep):
  workdir, _ = sweep
  bad = _corrupt_first_metrics_line(rundir.run_dir(str(workdir), "copy", "soft", 1))
  result = subprocess.run(
    [sys.executable, "-m", "experiments.table", f"--workdir={workdir}"],
    cwd=_REPO,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert "5/9 runs completed" in result.stdout
  # The corrupt file is named, with the reason; everything else is still written.
  assert f"warning: {bad}: line 1 is not JSON" in result.stderr
  assert "Traceback" not in result.stderr
  written = (rundir.RESULTS_FILE, rundir.TABLE_FILE, rundir.CLAIMS_FILE)
  for name in (*written, os.path.join(rundir.PLOTS_DIR, "copy.png")):
    assert os.path.getsize(workdir / name) > 0
  assert str(workdir / rundir.CLAIMS_FILE) in result.stdout.splitlines()


def test_rebuild_lists_unreadable_files_and_skips_summaries_without_results(sweep):
  workdir, grid = sweep
  bad = _corrupt_first_metrics_line(rundir.run_dir(str(workdir), "copy", "hard", 0))
  soft_2 = rundir.run_dir(str(workdir), "copy", "soft", 2)
  with open(os.path.join(soft_2, rundir.SUMMARY_FILE), "w") as f:
    json.dump({"completed": True}, f)  # No results: not a completed seed.
  rebuilt = table.rebuild(str(workdir))
  assert rebuilt.problems == (
    f"{bad}: line 1 is not JSON: '{{\"step\": 10,' (left out of the learning curves)",
  )
  assert [r["status"] for r in rebuilt.rows][:3] == ["completed", "completed", "incomplete"]
  with open(rebuilt.table_md) as f:
    md = _table_row(f.read(), "soft")
  assert md[2] == "2/3" and md[10] == "99.0 ± 1.4"  # Seeds 0 and 1 only.


def test_wilson_interval_by_hand():
  # 7 of 10: p = 0.7, z = 1.96; centre (0.7 + 0.19208) / 1.38416, half-width
  # 1.96 * sqrt(0.021 + 0.0009604) / 1.38416 (Wilson 1927).
  low, high = table.wilson_interval(7, 10)
  assert low == pytest.approx(0.3968, abs=1e-4) and high == pytest.approx(0.8922, abs=1e-4)
  assert table.wilson_interval(0, 10)[0] == 0.0 and table.wilson_interval(10, 10)[1] == 1.0
  assert table.wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)


def _claims_sweep(tmp_path, *, localize_gap):
  """copy and localize × soft and RLOO-4 (REINFORCE) × 2 seeds, with a bench_cost.json."""
  grid = table.Grid(
    ("copy", "localize"), ("soft", "rloo4"), (0, 1), hardware="box", command="python -m x"
  )
  table.write_grid(str(tmp_path), grid)
  for task in grid.tasks:
    for seed in grid.seeds:
      soft = _summary(1.0, 50, 100, var1=0.0, attention="soft", objective="soft")
      soft.update({"val/support_size": 8.0, "val/attention_entropy": 1.5, "ms_per_step": 10.0})
      hard_acc = 1.0 + (localize_gap if task == "localize" else -0.5)
      hard = _summary(hard_acc, 100, 300 if hard_acc >= 0.99 else None, var1=0.1,
                      attention="hard", objective="reinforce")  # fmt: skip
      hard.update({"val/attention_entropy": 0.5, "val/alignment_accuracy": 0.95})
      hard.update({"ms_per_step": 40.0})
      _write_run(tmp_path, task, "soft", seed, soft)
      _write_run(tmp_path, task, "rloo4", seed, hard)
  cost = {
    "settings": {"batch": 1, "key_dim": 64, "value_dims": [64, 4096]},
    "rows": [
      {"length": s, "value_dim": v, "time_ratio": r, "model_ratio": 2.0, "alloc_ratio": 1.0,
       "train_time_ratio_hard_dense": 0.8, "train_time_ratio_hard_index": 3.0}
      for s, v, r in [(64, 64, 0.9), (4096, 64, 1.2), (64, 4096, 1.1), (4096, 4096, 40.0)]
    ],
  }  # fmt: skip
  with open(tmp_path / rundir.BENCH_COST_FILE, "w") as f:
    json.dump(cost, f)
  return grid


def test_claims_state_each_textbook_row_with_its_numbers(tmp_path):
  _claims_sweep(tmp_path, localize_gap=0.0)
  rebuilt = table.rebuild(str(tmp_path), with_plots=False)
  text = open(rebuilt.claims_md).read()
  assert rebuilt.claims_md == str(tmp_path / rundir.CLAIMS_FILE)
  assert "Measured by `python -m x`" in text and f"--workdir={tmp_path}" in text
  verdicts = dict(
    re.findall(r"^\| (Mechanism|Training|Computational cost|Interpretability|Use cases) "
               r"\|[^|]*\| ([^|]+) \|$", text, flags=re.M)
  )  # fmt: skip
  assert verdicts == {
    # How the models are built: described, and never claimed as a finding.
    "Mechanism": "holds by construction",
    # REINFORCE: 100 -> 300 steps on localize, never on copy (50% there): slower in both.
    "Training": "holds",
    # Inference: cheaper from S = 4,096 at Dv = 4096 only; training: 4x the soft step.
    "Computational cost": "holds in part",
    # Entropy 0.5 against 1.5, alignment 95% against 90%, in both pairs.
    "Interpretability": "holds",
    # Hard equals soft on localize (both seeds solved), trails by 50 on copy.
    "Use cases": "holds",
  }
  assert "puts weight on 8.0 source positions per step" in text
  assert "hard is at least 1.5x faster from S = 4,096" in text and "never 1.5x faster" in text
  assert "`rloo4` 40.0 ms/step (4.00x soft)" in text
  assert "gradient variance 1.0e-01 at step 1" in text
  assert "trained slower than soft attention (fewer seeds solved, or later or never" in text
  assert "in 2, faster in 0" in text


def test_claims_leave_out_a_task_soft_attention_did_not_learn(tmp_path):
  grid = _claims_sweep(tmp_path, localize_gap=0.0)
  baseline = table.format_claims(table.collect_results(str(tmp_path), grid), grid)
  for seed in grid.seeds:  # recall: soft 40%, REINFORCE 30%, neither solved nor converged.
    soft = _summary(0.4, attention="soft", objective="soft", **{"val/support_size": 9.0})
    _write_run(tmp_path, "recall", "soft", seed, soft)
    hard = _summary(0.3, attention="hard", objective="reinforce")
    _write_run(tmp_path, "recall", "rloo4", seed, hard)
  with_recall = table.Grid(("copy", "localize", "recall"), grid.methods, grid.seeds,
                           hardware="box", command="python -m x")  # fmt: skip
  text = table.format_claims(table.collect_results(str(tmp_path), with_recall), with_recall)
  assert "- Left out of every row: recall (soft `soft` solved 0/2 seeds)." in text
  assert "- recall" not in text and "9.0 source positions" not in text
  # Every row's verdict and evidence is the one without recall's runs.
  assert text.split("## Mechanism")[1] == baseline.split("## Mechanism")[1]


def test_claims_say_where_a_claim_does_not_hold_or_was_not_measured(tmp_path):
  grid = _claims_sweep(tmp_path, localize_gap=-0.8)  # hard worst on localize
  os.remove(tmp_path / rundir.BENCH_COST_FILE)
  rows = table.collect_results(str(tmp_path), grid)
  text = table.format_claims(rows, grid)
  assert "## Use cases: does not hold" in text and "not relatively best" in text
  assert "no bench_cost.json found" in text
  # Without the sweep's own, the repository's cost report is used, and said to be.
  cost, source = table.read_bench_cost(str(tmp_path))
  assert cost is not None
  assert source.startswith("the repository's results/bench_cost.json, not measured by this sweep")
  # Relatively best (10 points behind, 50 on copy) but unsolved (90%): no use case either.
  near = tmp_path / "near"
  near.mkdir()
  near_grid = _claims_sweep(near, localize_gap=-0.1)
  text = table.format_claims(table.collect_results(str(near), near_grid), near_grid)
  assert "## Use cases: does not hold" in text and "it is relatively best on the task" in text
  assert "solves it in 0 of 2 seeds" in text
  only_copy = table.Grid(("copy",), ("soft", "rloo4"), (0, 1))
  text = table.format_claims(table.collect_results(str(tmp_path), only_copy), only_copy)
  assert "## Use cases: not measured" in text and "the sweep in `DIR`" in text
