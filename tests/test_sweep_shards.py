"""A sweep split into shards: deterministic groups, disjoint files, the unsharded table, resume."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from attnlab.sweep import plan, run, table
from attnlab.training import rundir
from configs import compare as compare_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TIMEOUT_S = 300
_TIMING = ("seconds", "per_second", "ms_per_step")


class FakeTrain:
  """Stands in for train_seeds: a deterministic summary per (task, method, seed)."""

  def __init__(self, interrupt_on=()):
    self.calls = []
    self.interrupt_on = set(interrupt_on)

  def __call__(self, config, seeds, workdirs):
    key = (config.task, config.model.attention)
    self.calls.append((*key, tuple(seeds)))
    if key in self.interrupt_on:
      raise KeyboardInterrupt  # Not caught as a group failure: the sweep process dies.
    for seed, workdir in zip(seeds, workdirs, strict=True):
      os.makedirs(workdir, exist_ok=True)
      score = (len(config.task) + 3 * len(config.model.attention) + seed) / 100
      rows = [{"step": s, "val/seq_accuracy": min(1.0, s * score)} for s in (1, 2)]
      rundir.write_metrics(workdir, rows)
      summary = {key: 0 for key in rundir.REQUIRED_SUMMARY_KEYS}  # A complete summary.
      summary.update(completed=True, converged=False, ms_per_step=1.0 + seed)
      summary["test/seq_accuracy"] = score
      rundir.write_summary(workdir, summary)
    return [{}] * len(seeds)


def _smoke():
  config = compare_config.get_config("smoke")  # copy, reverse x soft_additive, reinforce_ema.
  config.seeds = (0, 1)
  return config


def _untimed_csv(path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return [{k: v for k, v in r.items() if not any(t in k for t in _TIMING)} for r in rows]


def _snapshot(workdir):
  """{path: (inode, mtime_ns)} of every file: a rewritten file changes both (atomic rename)."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      files[os.path.relpath(path, workdir)] = (stat.st_ino, stat.st_mtime_ns)
  return files


def _written(before, after):
  return {path for path, stamp in after.items() if before.get(path) != stamp}


def test_groups_go_to_shard_i_mod_n_in_plan_order():
  groups = plan.plan(_smoke(), "/nonexistent", validate=False)
  names = [(g.task, g.method) for g in groups]
  assert names == [
    ("copy", "soft_additive"),
    ("copy", "reinforce_ema"),
    ("reverse", "soft_additive"),
    ("reverse", "reinforce_ema"),
  ]
  picked = [[(g.task, g.method) for g in plan.Shard(i, 3).select(groups)] for i in range(3)]
  assert picked == [[names[0], names[3]], [names[1]], [names[2]]]
  assert plan.Shard().select(groups) == groups
  for index, count in ((2, 2), (-1, 2), (0, 0)):
    with pytest.raises(ValueError, match="0 <= index < count"):
      plan.Shard(index, count)
  with pytest.raises(ValueError, match="must be an int"):
    plan.Shard(True, 2)


def test_shards_write_disjoint_files_and_rebuild_the_unsharded_table(tmp_path):
  config = _smoke()
  whole = run.run_comparison(config, str(tmp_path / "whole"), train_fn=FakeTrain(), log=print)
  sharded = str(tmp_path / "sharded")
  written, reports = [], []
  for index in range(2):
    before = _snapshot(sharded) if os.path.isdir(sharded) else {}
    fake = FakeTrain()
    lines = []
    report = run.run_comparison(
      config, sharded, train_fn=fake, log=lines.append, shard=plan.Shard(index, 2)
    )
    written.append(_written(before, _snapshot(sharded)))
    reports.append(report)
    assert [c[:2] for c in fake.calls][::2] == [  # A call per seed.
      [("copy", "soft"), ("reverse", "soft")],
      [("copy", "hard"), ("reverse", "hard")],
    ][index]
    assert report.results_csv is None and report.table_md is None
    assert "experiments.table" in lines[-1] and lines[-1].startswith(f"shard {index} of 2: ")
  assert not written[0] & written[1]
  status = [f"shards/shard_{i}_of_2.json" for i in range(2)]
  assert rundir.GRID_FILE in written[0] and status[0] in written[0] and status[1] in written[1]
  locks = [os.path.relpath(rundir.lock_path(sharded, shard=i), sharded) for i in range(2)]
  for i, files in enumerate(written):  # Its groups' directories, status file and lock; the grid.
    groups = {(r.task, r.method) for r in reports[i].groups}
    for path in files - {status[i], locks[i], rundir.GRID_FILE}:
      task, method = path.split(os.sep)[:2]
      assert (task, method) in groups, path
  assert not any(
    os.path.exists(os.path.join(sharded, f))
    for f in (rundir.RESULTS_FILE, rundir.TABLE_FILE, rundir.PLOTS_DIR)
  )
  with open(rundir.shard_status_path(sharded, 1, 2)) as f:
    shard_status = json.load(f)
  assert [(g["task"], g["method"], g["status"]) for g in shard_status["groups"]] == [
    ("copy", "reinforce_ema", "completed"),
    ("reverse", "reinforce_ema", "completed"),
  ]
  rebuilt = table.rebuild(sharded)  # What experiments.table does.
  assert _untimed_csv(rebuilt.results_csv) == _untimed_csv(whole.results_csv)
  assert len(_untimed_csv(rebuilt.results_csv)) == 8


def test_a_killed_shard_resumes_where_it_stopped(tmp_path):
  config = _smoke()
  workdir = str(tmp_path)
  shard = plan.Shard(0, 2)  # copy/soft_additive, then reverse/soft_additive.
  killer = FakeTrain(interrupt_on={("reverse", "soft")})
  with pytest.raises(KeyboardInterrupt):
    run.run_comparison(config, workdir, train_fn=killer, log=print, shard=shard)
  assert not os.path.exists(rundir.shard_status_path(workdir, 0, 2))
  fake = FakeTrain()
  report = run.run_comparison(config, workdir, train_fn=fake, log=print, shard=shard)
  # The finished group is skipped.
  assert fake.calls == [("reverse", "soft", (0,)), ("reverse", "soft", (1,))]
  assert [g.status for g in report.groups] == ["skipped", "completed"]
  run.run_comparison(config, workdir, train_fn=FakeTrain(), log=print, shard=plan.Shard(1, 2))
  rows = _untimed_csv(table.rebuild(workdir).results_csv)
  assert [r["status"] for r in rows] == ["completed"] * 8


def test_experiments_compare_shards_run_at_once_and_table_matches_unsharded(tmp_path):
  """The real trainer: 2 shards started together on one directory (copy x 2 methods x seed 0),
  then experiments.table; results.csv equals an unsharded sweep's but for timing columns."""
  grid = [
    "--config=configs/compare.py:smoke:soft_additive,reinforce_ema",
    "--config.tasks=('copy',)",
    "--config.seeds=(0,)",
    "--config.base.probe_steps=()",  # The probe is the slowest compile; not needed here.
  ]
  sharded = str(tmp_path / "sharded")
  node_tmp = tmp_path / "node_tmp"  # The node-local directory of the compilation cache.
  node_tmp.mkdir()
  env = dict(os.environ, PYTHONPATH=_REPO, JAX_PLATFORMS="cpu", TMPDIR=str(node_tmp))
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.compare",
        *grid,
        f"--workdir={sharded}",
        f"--shard_index={i}",
        "--num_shards=2",
      ],
      cwd=_REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outputs = [p.communicate(timeout=_TIMEOUT_S)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  assert [p.returncode for p in processes] == [0, 0], outputs
  assert "shard 1 of 2: 1 group(s): copy/reinforce_ema" in outputs[1], outputs[1]
  assert not os.path.exists(os.path.join(sharded, rundir.RESULTS_FILE))
  # Each shard's files are its own: its group, its status file. The compilation cache is
  # node-local (TMPDIR), shared by the shards of this machine, never in the sweep directory.
  for method in ("soft_additive", "reinforce_ema"):
    assert rundir.is_finished(rundir.run_dir(sharded, "copy", method, 0))
  assert os.listdir(node_tmp / f"attnlab-{os.getuid()}" / "jax_cache")
  assert not os.path.exists(os.path.join(sharded, ".jax_cache"))
  assert sorted(os.listdir(os.path.join(sharded, rundir.SHARDS_DIR))) == [
    "shard_0_of_2.json",
    "shard_1_of_2.json",
  ]
  result = subprocess.run(
    [sys.executable, "-m", "experiments.table", f"--workdir={sharded}", "--noplots"],
    cwd=_REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=_TIMEOUT_S,
  )
  assert result.returncode == 0 and "2/2 runs completed" in result.stdout, result.stderr

  config = compare_config.get_config("smoke:soft_additive,reinforce_ema")
  config.tasks, config.seeds = ("copy",), (0,)
  config.base.probe_steps = ()
  whole = str(tmp_path / "whole")
  run.run_comparison(config, whole, log=print, with_plots=False)
  sharded_rows = _untimed_csv(os.path.join(sharded, rundir.RESULTS_FILE))
  whole_rows = _untimed_csv(os.path.join(whole, rundir.RESULTS_FILE))
  assert sharded_rows == whole_rows
  assert [r["status"] for r in whole_rows] == ["completed", "completed"]
  with open(os.path.join(sharded, rundir.RESULTS_FILE)) as f:
    header = next(csv.reader(io.StringIO(f.readline())))
  assert "ms_per_step" in header  # The timing columns exist; only they may differ.
