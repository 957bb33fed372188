"""Tests for attnlab.sweep (plan, run) and configs/compare.py: grid, resume, failures, checks."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import ml_collections
import pytest

from attnlab.sweep import plan, run, table, workers
from attnlab.training import rundir
from configs import compare as compare_config

_PROGRESS = re.compile(
  r"^\[(\d+)/(\d+)\] (\w+)/(\w+) seeds=([\d,]+(?: of [\d,]+)?) \(.+ s\) ETA .+ s"
)


class FakeTrain:
  """Stands in for attnlab.training.loop.train_seeds: writes what it writes, records calls."""

  def __init__(self, fail_on=()):
    self.calls = []
    self.fail_on = set(fail_on)

  def __call__(self, config, seeds, workdirs):
    self.calls.append((config.task, config.model.attention, tuple(seeds)))
    if config.task in self.fail_on:
      raise RuntimeError(f"injected failure on {config.task}")
    for seed, workdir in zip(seeds, workdirs, strict=True):
      os.makedirs(workdir, exist_ok=True)
      rundir.write_config(workdir, rundir.run_config_dict(config.to_dict(), seed))
      rows = [{"step": s, "val/seq_accuracy": min(1.0, s / (100 + seed))} for s in (50, 100, 150)]
      with open(os.path.join(workdir, rundir.METRICS_FILE), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
      summary = {
        "completed": True,
        "steps": 150,
        "steps_trained": 150,
        "converged": False,
        "ood/seq_accuracy": 0.0,
        "test/seq_accuracy": 0.9 + 0.01 * seed,
        "steps_to_val_seq_acc_0.9": 100,
        "grad/variance@1": 1e-6,
        "ms_per_step": 5.0,
      }
      with open(os.path.join(workdir, rundir.SUMMARY_FILE), "w") as f:
        json.dump(summary, f)
    return [{}] * len(seeds)


def _smoke():
  config = compare_config.get_config("smoke")
  assert config.tasks == ("copy", "reverse")
  assert config.method_names == ("soft_additive", "reinforce_ema")
  assert config.seeds == (0, 1)
  return config


def _run(config, workdir, train_fn, **kw):
  lines = []
  report = run.run_comparison(config, str(workdir), train_fn=train_fn, log=lines.append, **kw)
  return report, lines


def _csv_rows(workdir):
  with open(os.path.join(workdir, rundir.RESULTS_FILE)) as f:
    return list(csv.DictReader(f))


def test_smoke_grid_writes_results_table_and_plots(tmp_path):
  fake = FakeTrain()
  report, lines = _run(_smoke(), tmp_path, fake, command="python -m experiments.compare x")
  # The presets train a group's seeds one after another (vmap_seeds=False): a call each.
  assert fake.calls == [
    (task, kind, (seed,)) for task in ("copy", "reverse") for kind in ("soft", "hard")
    for seed in (0, 1)
  ]  # fmt: skip
  rows = _csv_rows(tmp_path)
  assert [(r["task"], r["method"], r["seed"], r["status"]) for r in rows] == [
    (t, m, str(s), "completed")
    for t in ("copy", "reverse")
    for m in ("soft_additive", "reinforce_ema")
    for s in (0, 1)
  ]
  assert rows[1]["test/seq_accuracy"] == "0.91"
  with open(report.table_md) as f:
    md = f.read()
  table_rows = [line.split("|")[1:3] for line in md.splitlines() if line.startswith("| copy")]
  table_rows += [line.split("|")[1:3] for line in md.splitlines() if line.startswith("| reverse")]
  assert [(t.strip(), m.strip()) for t, m in table_rows] == [
    ("copy", "soft_additive"),
    ("copy", "reinforce_ema"),
    ("reverse", "soft_additive"),
    ("reverse", "reinforce_ema"),
  ]
  assert "| 100 (2/2) |" in md  # steps→90%: every seed at step 100.
  # One progress line per group, counting runs, then the final report line.
  progress = [_PROGRESS.match(line) for line in lines[:-1]]
  assert all(progress), lines
  assert [(m[1], m[2], m[3], m[4]) for m in progress] == [
    ("2", "8", "copy", "soft_additive"),
    ("4", "8", "copy", "reinforce_ema"),
    ("6", "8", "reverse", "soft_additive"),
    ("8", "8", "reverse", "reinforce_ema"),
  ]
  assert lines[-1].startswith("runs: 8 trained, 0 skipped (already finished), 0 failed")
  assert sorted(os.path.basename(p) for p in report.plots) == ["copy.png", "reverse.png"]
  with open(tmp_path / rundir.GRID_FILE) as f:
    grid = table.Grid.from_dict(json.load(f))
  assert grid.methods == ("soft_additive", "reinforce_ema") and "CPU" in grid.hardware
  # claims.md beside table.md cites the command that ran the sweep.
  with open(tmp_path / rundir.CLAIMS_FILE) as f:
    assert "Measured by `python -m experiments.compare x`" in f.read()


def test_vmapped_seeds_of_a_group_train_in_one_call(tmp_path):
  config = _smoke()
  config.vmap_seeds = True
  fake = FakeTrain()
  _run(config, tmp_path, fake, with_plots=False)
  assert fake.calls == [
    (task, kind, (0, 1)) for task in ("copy", "reverse") for kind in ("soft", "hard")
  ]
  # Not a bool (a config built as a dict; a ConfigDict override is type-checked already):
  # refused before anything trains.
  config = ml_collections.ConfigDict({**config.to_dict(), "vmap_seeds": 1})
  with pytest.raises(ValueError, match="vmap_seeds=1 must be True or False"):
    _run(config, tmp_path / "other", FakeTrain())


def test_groups_with_longer_budgets_train_first_and_the_table_keeps_its_order(tmp_path):
  config = _smoke()
  config.task_overrides = {"reverse": {"steps": 9}}  # Longer than copy's smoke budget.
  fake = FakeTrain()
  report, _ = _run(config, tmp_path, fake)
  assert [call[:2] for call in fake.calls][::2] == [
    ("reverse", "soft"), ("reverse", "hard"), ("copy", "soft"), ("copy", "hard")
  ]  # fmt: skip
  # (A call per seed: every second one.)
  assert [(g.task, g.method) for g in report.groups] == [
    ("copy", "soft_additive"), ("copy", "reinforce_ema"),
    ("reverse", "soft_additive"), ("reverse", "reinforce_ema"),
  ]  # fmt: skip
  assert [r["task"] for r in _csv_rows(tmp_path)] == ["copy"] * 4 + ["reverse"] * 4


def test_rerun_skips_finished_runs_and_resumes_unfinished_seeds(tmp_path):
  config = _smoke()
  _run(config, tmp_path, FakeTrain(), with_plots=False)
  nothing = FakeTrain(fail_on={"copy", "reverse"})  # would fail if anything were trained.
  report, lines = _run(config, tmp_path, nothing, with_plots=False)
  assert nothing.calls == []
  assert {g.status for g in report.groups} == {"skipped"}
  assert lines[0] == f"[8/8] skipping 8 finished run(s) already in {tmp_path}"
  assert lines[-1].startswith("runs: 0 trained, 8 skipped")
  # An interrupted seed (no completed summary) is the only one retrained.
  os.remove(
    os.path.join(rundir.run_dir(str(tmp_path), "reverse", "soft_additive", 1), "summary.json")
  )
  fake = FakeTrain()
  report, lines = _run(config, tmp_path, fake, with_plots=False)
  assert fake.calls == [("reverse", "soft", (1,))]
  assert _PROGRESS.match(lines[1])[5] == "1 of 0,1"
  assert lines[1].startswith("[8/8] reverse/soft_additive")
  assert all(r["status"] == "completed" for r in _csv_rows(tmp_path))


def test_failing_group_is_reported_and_the_rest_still_runs(tmp_path):
  config = _smoke()
  fake = FakeTrain(fail_on={"copy"})
  report, lines = _run(config, tmp_path, fake, with_plots=False)
  # A call per seed: each copy group failed at its first seed, then both reverse groups ran.
  assert len(fake.calls) == 6 and [c[0] for c in fake.calls[2:]] == ["reverse"] * 4
  assert [(g.task, g.method) for g in report.failed] == [
    ("copy", "soft_additive"),
    ("copy", "reinforce_ema"),
  ]
  assert "FAILED: RuntimeError: injected failure on copy" in lines[0]
  assert "failed: copy/soft_additive: RuntimeError: injected failure on copy" in lines[-1]
  assert "4 trained, 0 skipped (already finished), 4 failed" in lines[-1]
  error_path = os.path.join(rundir.group_dir(str(tmp_path), "copy", "soft_additive"), "error.txt")
  with open(error_path) as f:
    assert "Traceback" in f.read()
  statuses = [(r["task"], r["status"], r["error"]) for r in _csv_rows(tmp_path)]
  assert statuses[:4] == [("copy", "failed", "RuntimeError: injected failure on copy")] * 4
  assert [s for _, s, _ in statuses[4:]] == ["completed"] * 4
  with open(report.table_md) as f:
    assert "| copy | soft_additive | 0/2 failed |" in f.read()
  # A later successful attempt clears the stale error.
  _run(config, tmp_path, FakeTrain(), with_plots=False)
  assert not os.path.exists(error_path)
  assert all(r["status"] == "completed" for r in _csv_rows(tmp_path))


def test_train_fn_that_finishes_no_run_is_a_failure(tmp_path):
  config = _smoke()
  config.tasks = ("copy",)
  config.method_names = ("soft_additive",)
  report, _ = _run(config, tmp_path, lambda cfg, seeds, dirs: None, with_plots=False)
  (group,) = report.failed
  assert "seed(s) [0, 1] have no summary.json" in group.error


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("method_names", ("soft_additive", "sotf"), r"unknown name\(s\) \['sotf'\] in config"),
    (
      "tasks",
      ("copy", "rev"),
      r"valid: \['addition', 'copy', 'localize', 'recall', 'reverse', 'sort'\]",
    ),
    ("seeds", (0, 0), "repeats a seed"),
    ("seeds", (), "non-empty"),
    ("method_names", ("soft_additive", "soft_additive"), "more than once"),
  ],
)
def test_bad_grid_fails_before_training(tmp_path, field, value, message):
  config = _smoke()
  config[field] = value
  fake = FakeTrain()
  with pytest.raises(ValueError, match=message):
    _run(config, tmp_path, fake)
  assert fake.calls == [] and not os.path.exists(tmp_path / rundir.RESULTS_FILE)


def test_bad_overrides_fail_before_training_naming_them(tmp_path):
  config = _smoke()
  config.methods.reinforce_ema.estimator.baseline = "emma"  # invalid value.
  with pytest.raises(ValueError, match=r"copy/reinforce_ema: .*'emma'.*valid choices"):
    plan.plan(config, str(tmp_path))
  config = _smoke()
  config.methods.reinforce_ema.model.atention = "hard"  # unknown key.
  with pytest.raises(
    ValueError, match=r"method 'reinforce_ema': unknown config key 'model.atention'"
  ):
    plan.plan(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown compare preset 'huge'; valid presets"):
    compare_config.get_config("huge")
  with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]; valid methods"):
    compare_config.get_config("default:soft_additive,nope")


def test_run_config_layers_task_and_method_overrides():
  config = compare_config.get_config("default")
  run = plan.run_config(config, "sort", "reinforce_rloo4")
  assert (run.task, run.model.attention, run.estimator.baseline) == ("sort", "hard", "rloo")
  assert run.estimator.num_samples == 4 and run.model.score == config.base.model.score
  assert config.base.model.attention == "soft"  # the base is not modified.


@pytest.mark.parametrize("arg", [None, "smoke", "full", "robustness", "default:marginal,gumbel_st"])
def test_every_preset_plans_valid_run_configs(tmp_path, arg):
  config = compare_config.get_config(arg)
  groups = plan.plan(config, str(tmp_path))  # parse_config on every run config.
  assert len(groups) == len(config.tasks) * len(config.method_names) - len(
    plan.grid_of(config).skip
  )
  assert all(g.pending == tuple(config.seeds) for g in groups)
  if arg is None:
    assert len(config.tasks) == 5 and len(config.method_names) == 11 and len(config.seeds) >= 3
    # The structural failure on addition is measured by hard_enum and marginal only.
    addition = [g.method for g in groups if g.task == "addition"]
    assert addition == ["soft_additive", "soft_scaled_dot", "marginal", "hard_enum"]
    assert {"variational_enum", "variational_reinforce"} <= {g.method for g in groups}


def test_measure_seed_speedup_trains_vmapped_then_one_seed_at_a_time(tmp_path):
  config = _smoke()
  fake = FakeTrain()
  result = run.measure_seed_speedup(
    config, str(tmp_path), task="reverse", method="reinforce_ema", train_fn=fake, log=print
  )
  assert fake.calls == [
    ("reverse", "hard", (0, 1)),
    ("reverse", "hard", (0,)),
    ("reverse", "hard", (1,)),
  ]
  assert result["speedup"] == pytest.approx(
    result["sequential_seconds"] / result["vmapped_seconds"]
  )
  assert result["vmapped_ms_per_step"] == 5.0
  with pytest.raises(ValueError, match="fresh workdir"):
    run.measure_seed_speedup(config, str(tmp_path), task="reverse", method="reinforce_ema")


def test_real_trainer_end_to_end_fills_the_table(tmp_path):
  """The default train_fn (attnlab.training.loop.train_seeds) on a 1 × 1 × 2 grid."""
  config = _smoke()
  config.tasks = ("copy",)
  config.method_names = ("reinforce_ema",)
  report = run.run_comparison(config, str(tmp_path), log=print, with_plots=False)
  assert report.failed == ()
  (row_a, row_b) = _csv_rows(tmp_path)
  assert row_a["status"] == row_b["status"] == "completed"
  # The trainer's summary keys are the ones the table reads: no "n/a" cell.
  with open(report.table_md) as f:
    (line,) = [x for x in f.read().splitlines() if x.startswith("| copy | reinforce_ema |")]
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert "n/a" not in cells and cells[2] == "2/2", line
  assert float(row_a["grad/variance@1"]) > 0  # REINFORCE: a noisy gradient.


def test_worker_processes_give_the_same_results_and_isolate_failures(tmp_path):
  # FakeTrain instances pickle by reference to this module, so spawned workers can run them.
  config = _smoke()
  config.num_workers = 2
  report, lines = _run(config, tmp_path / "parallel", FakeTrain(fail_on={"reverse"}))
  _, sequential_lines = _run(_smoke(), tmp_path / "sequential", FakeTrain(fail_on={"reverse"}))
  # On an accelerator the parallel sweep also prints its workers' environments.
  lines = [line for line in lines if " worker process(es) on " not in line]
  assert len(lines) == len(sequential_lines)
  assert sorted((g.task, g.method, g.status) for g in report.groups) == [
    ("copy", "reinforce_ema", "completed"),
    ("copy", "soft_additive", "completed"),
    ("reverse", "reinforce_ema", "failed"),
    ("reverse", "soft_additive", "failed"),
  ]
  parallel = [
    (r["task"], r["method"], r["seed"], r["status"]) for r in _csv_rows(tmp_path / "parallel")
  ]
  sequential = [
    (r["task"], r["method"], r["seed"], r["status"]) for r in _csv_rows(tmp_path / "sequential")
  ]
  assert parallel == sequential


class EnvRecordingTrain(FakeTrain):
  """FakeTrain that also records its worker's pid and device variables in each run's
  ``env.json``; a worker's first group waits (up to a minute) until two workers hold one, so
  that both workers train."""

  def __init__(self, started_dir):
    super().__init__()
    self.started_dir = started_dir

  def __call__(self, config, seeds, workdirs):
    open(os.path.join(self.started_dir, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(self.started_dir)) < 2 and time.monotonic() < deadline:
      time.sleep(0.05)
    names = (
      "CUDA_VISIBLE_DEVICES",
      "XLA_PYTHON_CLIENT_PREALLOCATE",
      "XLA_PYTHON_CLIENT_MEM_FRACTION",
    )
    for workdir in workdirs:
      os.makedirs(workdir, exist_ok=True)
      rundir.write_json(
        os.path.join(workdir, "env.json"),
        {"pid": os.getpid(), **{n: os.environ.get(n) for n in names}},
      )
    return super().__call__(config, seeds, workdirs)


@pytest.mark.parametrize("gpus", [1, 2])
def test_workers_on_declared_gpus_get_their_own_devices_and_no_preallocation(
  tmp_path, monkeypatch, gpus
):
  # The machine is declared (no GPU here): what the probe would report on a 1- or 2-GPU host.
  machine = workers.Machine("cuda", gpus, gpus, "declared GPU", backend="gpu")
  monkeypatch.setattr(workers, "probe_machine", lambda: machine)
  for name in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_PREALLOCATE"):
    monkeypatch.delenv(name, raising=False)
  config = _smoke()
  config.num_workers = 2
  started = tmp_path / "started"
  started.mkdir()
  report, lines = _run(config, tmp_path / "sweep", EnvRecordingTrain(str(started)))
  assert {g.status for g in report.groups} == {"completed"}
  assert lines[0].startswith(f"2 worker process(es) on {gpus} cuda device(s) (declared GPU); ")
  envs = [
    rundir.read_json(os.path.join(rundir.run_dir(str(tmp_path / "sweep"), t, m, s), "env.json"))
    for t in config.tasks
    for m in config.method_names
    for s in config.seeds
  ]
  by_worker = {}
  for env in envs:
    by_worker.setdefault(env.pop("pid"), []).append(env)
  assert os.getpid() not in by_worker and len(by_worker) == 2
  for worker_envs in by_worker.values():  # One environment per worker, all its groups.
    assert all(env == worker_envs[0] for env in worker_envs)
  seen = sorted(
    (e[0]["CUDA_VISIBLE_DEVICES"], e[0]["XLA_PYTHON_CLIENT_MEM_FRACTION"])
    for e in by_worker.values()
  )
  assert seen == ([("0", "0.45"), ("0", "0.45")] if gpus == 1 else [("0", None), ("1", None)])
  assert {e[0]["XLA_PYTHON_CLIENT_PREALLOCATE"] for e in by_worker.values()} == {"false"}
  assert "CUDA_VISIBLE_DEVICES" not in os.environ  # The sweep's own environment is untouched.


def test_num_workers_is_validated(tmp_path):
  config = _smoke()
  config.num_workers = 0
  with pytest.raises(ValueError, match="num_workers=0"):
    run.run_comparison(config, str(tmp_path), train_fn=FakeTrain())


def test_rerun_with_a_changed_config_retrains_and_sets_the_old_runs_aside(tmp_path):
  config = _smoke()
  _run(config, tmp_path, FakeTrain(), with_plots=False)
  changed = _smoke()
  changed.base.optimizer.learning_rate = 0.5
  fake = FakeTrain()
  report, lines = _run(changed, tmp_path, fake, with_plots=False)
  assert len(fake.calls) == 8 and {g.status for g in report.groups} == {"completed"}
  stale_lines = [line for line in lines if "config changed" in line]
  assert stale_lines[0] == (
    "copy/soft_additive: config changed (optimizer.learning_rate: 0.003 in the run, 0.5 now); "
    "retraining, the earlier run(s) moved to seed_0.stale-1, seed_1.stale-1"
  )
  assert len(stale_lines) == 4
  old = rundir.read_config(rundir.run_dir(str(tmp_path), "copy", "soft_additive", 0) + ".stale-1")
  assert old["optimizer"]["learning_rate"] == 0.003  # Kept, not deleted.
  # The table holds the new config's runs only: seed_0.stale-1 is not a seed.
  assert [r["seed"] for r in _csv_rows(tmp_path)] == ["0", "1"] * 4
  new = rundir.read_config(rundir.run_dir(str(tmp_path), "copy", "soft_additive", 0))
  assert new["optimizer"]["learning_rate"] == 0.5
  # A key that changes no result (log cadence) retrains nothing.
  changed.base.log_every = 1
  nothing = FakeTrain()
  _run(changed, tmp_path, nothing, with_plots=False)
  assert nothing.calls == []


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path):
  fake = FakeTrain()
  with rundir.locked(str(tmp_path), what="sweep"):  # As if another sweep held it.
    with pytest.raises(rundir.DirectoryLockedError, match=f"in use by pid {os.getpid()} "):
      _run(_smoke(), tmp_path, fake)
  assert fake.calls == []


def test_task_overrides_of_tasks_outside_the_grid_are_allowed(tmp_path):
  config = compare_config.get_config("default")  # Step budgets for all five tasks.
  config.tasks = ("copy",)
  groups = plan.plan(config, str(tmp_path), validate=False)
  assert [g.task for g in groups] == ["copy"] * len(config.method_names)
  config.task_overrides = {"cpoy": {"steps": 5}}
  with pytest.raises(ValueError, match=r"unknown task\(s\) \['cpoy'\]"):
    plan.plan(config, str(tmp_path), validate=False)


# A sweep of 4 groups in 2 workers whose training blocks; each worker writes its pid first.
_BLOCKING_SWEEP = """
import os, sys, time
from attnlab.sweep import run
from configs import compare

def train_forever(config, seeds, workdirs):
  with open(os.path.join(sys.argv[2], f"worker_{os.getpid()}"), "w"):
    pass
  time.sleep(300)

if __name__ == "__main__":
  config = compare.get_config("smoke")
  config.num_workers = 2
  run.run_comparison(config, sys.argv[1], train_fn=train_forever, with_plots=False)
"""


def _alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # A zombie is dead.
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_workers_die_with_a_killed_sweep(tmp_path):
  script = tmp_path / "sweep.py"
  script.write_text(_BLOCKING_SWEEP)
  pids_dir = tmp_path / "pids"
  pids_dir.mkdir()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo)
  sweep = subprocess.Popen(
    [sys.executable, str(script), str(tmp_path / "sweep"), str(pids_dir)], cwd=repo, env=env
  )
  try:
    deadline = time.monotonic() + 240
    while len(os.listdir(pids_dir)) < 2 and time.monotonic() < deadline:
      assert sweep.poll() is None, "the sweep exited early"
      time.sleep(0.5)
    workers = [int(name.split("_")[1]) for name in os.listdir(pids_dir)]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
  finally:
    sweep.kill()  # SIGKILL: the sweep gets no chance to stop its workers itself.
    sweep.wait(timeout=30)
  deadline = time.monotonic() + 30
  while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.2)
  orphans = [pid for pid in workers if _alive(pid)]
  for pid in orphans:
    os.kill(pid, signal.SIGKILL)
  assert orphans == []


# Starts a grandchild that watches this process (the portable fallback of prctl), prints its
# pid and exits, orphaning it.
_ORPHAN_A_WATCHER = """
import os, subprocess, sys
watcher = (
  "import sys, threading, time\\n"
  "from attnlab.sweep import workers\\n"
  "threading.Thread(target=workers._exit_when_orphaned, args=(int(sys.argv[1]),)).start()\\n"
  "time.sleep(120)\\n"
)
child = subprocess.Popen(
  [sys.executable, "-c", watcher, str(os.getpid())], stdout=subprocess.DEVNULL
)
print(child.pid, flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_polling_worker_exits_when_orphaned():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  parent = subprocess.run(
    [sys.executable, "-c", _ORPHAN_A_WATCHER], cwd=repo, capture_output=True, text=True, check=True
  )
  watcher = int(parent.stdout.strip())
  deadline = time.monotonic() + 30
  while _alive(watcher) and time.monotonic() < deadline:
    time.sleep(0.2)
  if _alive(watcher):
    os.kill(watcher, signal.SIGKILL)
    pytest.fail("the orphaned watcher kept running")
