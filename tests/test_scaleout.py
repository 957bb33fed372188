"""Scaling out training: 4 devices and 2 processes x 2 devices give the metrics of 1 device.

JAX fixes its device count when it starts, so multi-device and multi-process runs are
subprocesses (``XLA_FLAGS=--xla_force_host_platform_device_count=N``; CPU collectives across
processes: gloo), while the one-device references train here, in the pytest process (one CPU
device). Every run is ``scaleout_worker.config()``: the smoke preset as a REINFORCE + EMA run,
so sampled attention, the baseline state and checkpoints run sharded (and the gradient probe,
in the 4-device run: it is the slowest compile).

Tolerance: a batch split over devices sums its mean loss (and gradient) in another float32
order, so continuous metrics are compared to rtol 1e-4 / atol 1e-5 (measured: 4e-7 relative at
worst). Accuracies count argmax decisions (greedy tokens, attention positions) over at most a
few hundred targets, so atol 1e-6 means every decision matched; none flipped at this size.

Subprocesses are bounded by timeouts; coordinator ports come from binding port 0, so parallel
test workers do not collide.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import scaleout_worker

from attnlab.training import checkpoints, loop, rundir, sharding, step
from attnlab.training import config as config_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKER = os.path.join(_REPO, "tests", "scaleout_worker.py")
_TIMEOUT_S = 300  # Per launch; a run takes well under a minute on 2 loaded cores.
_TIMING = ("seconds", "per_second", "ms_per_step")


def _untimed(row):
  return {k: v for k, v in row.items() if not any(t in k for t in _TIMING)}


def _assert_close(actual, expected, where):
  """Rows or summaries equal up to the module's tolerance (accuracies: the same decisions)."""
  actual, expected = _untimed(actual), _untimed(expected)
  assert actual.keys() == expected.keys(), where
  for key, value in expected.items():
    got = actual[key]
    if isinstance(value, float) and isinstance(got, float):
      atol, rtol = (1e-6, 0.0) if "accuracy" in key else (1e-5, 1e-4)
      np.testing.assert_allclose(got, value, rtol=rtol, atol=atol, err_msg=f"{where}: {key}")
    else:
      assert got == value, f"{where}: {key}"


def _assert_runs_close(workdirs, reference_dirs, *, steps=None):
  for workdir, reference in zip(workdirs, reference_dirs, strict=True):
    rows, expected = rundir.read_metrics(workdir), rundir.read_metrics(reference)
    if steps is not None:
      expected = [r for r in expected if r["step"] in steps]
      expected[-1] = {k: v for k, v in expected[-1].items() if not k.startswith(("test/", "ood/"))}
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for row, ref in zip(rows, expected, strict=True):
      _assert_close(row, ref, f"{workdir} step {ref['step']}")
    assert rundir.read_config(workdir) == rundir.read_config(reference)


def _env(num_devices):
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")  # conftest.py's compile-speed flags, if set.
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={num_devices}".strip()
  env["PYTHONPATH"] = os.pathsep.join([_REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(commands, env, log_dir):
  """Starts the commands at once, waits for all (killing all on timeout); returns codes, logs."""
  processes, logs = [], []
  for i, command in enumerate(commands):
    log = open(os.path.join(log_dir, f"process_{i}.log"), "w+")  # noqa: SIM115
    logs.append(log)
    processes.append(
      subprocess.Popen(command, cwd=_REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    )
  try:
    codes = [p.wait(timeout=_TIMEOUT_S) for p in processes]
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
      p.wait()
    raise
  finally:
    texts = []
    for log in logs:
      log.seek(0)
      texts.append(log.read())
      log.close()
  return codes, texts


def _train_in_process(tmp_path_factory, seeds, config):
  workdir = str(tmp_path_factory.mktemp(f"reference_{len(seeds)}"))
  dirs = scaleout_worker.run_dirs(workdir, seeds)
  summaries = loop.train_seeds(config, seeds, dirs)
  return dirs, summaries


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
  """Seed 0, probed at step 1, trained on this process's one CPU device: (dirs, summaries)."""
  assert jax.device_count() == 1
  return _train_in_process(tmp_path_factory, [0], scaleout_worker.config(probe_steps=(1,)))


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
  """Seeds 0 and 1 trained together on one CPU device: (run dirs, summaries)."""
  assert jax.device_count() == 1
  return _train_in_process(tmp_path_factory, [0, 1], scaleout_worker.config())


def test_experiments_train_on_four_devices_gives_the_one_device_metrics(one_seed, tmp_path):
  # The CLI with forced devices and the jax.distributed flags (one process): the whole path.
  # The smoke preset probes at step 1, as the reference does.
  workdir = str(tmp_path / "seed_0")
  command = [
    sys.executable,
    "-m",
    "experiments.train",
    "--config=configs/default.py:smoke",
    f"--workdir={workdir}",
    "--config.model.attention=hard",
    "--config.estimator.baseline=ema",
    f"--config.eval_every={scaleout_worker.EVAL_EVERY}",
    f"--coordinator_address=127.0.0.1:{_free_port()}",
    "--num_processes=1",
    "--process_id=0",
  ]
  (code,), (log,) = _launch([command], _env(4), str(tmp_path))
  assert code == 0, log
  # One seed on 4 devices: each seed's batch of 8 split 4 ways.
  assert "mesh seed=1 x batch=4 over 4 cpu devices in 1 process" in log, log
  (reference,), (summary,) = one_seed
  _assert_runs_close([workdir], [reference])
  _assert_close(rundir.read_summary(workdir), summary, "summary")
  assert rundir.read_metrics(workdir)[0]["grad/variance"] > 0  # The sharded probe ran.


def test_two_processes_killed_and_resumed_give_the_one_process_metrics(two_seeds, tmp_path):
  """2 processes x 2 CPU devices (gloo), seeds 0 and 1: mesh seed=2 x batch=2, so each
  process holds one seed's state. Killed (SIGKILL, both) after step 6's evaluation, then
  relaunched: it resumes from the checkpoint at step 4 and finishes; a checkpoint the two
  processes wrote restores in this one-device process."""
  workdir = str(tmp_path / "run")
  reference_dirs, reference_summaries = two_seeds
  dirs = scaleout_worker.run_dirs(workdir, [0, 1])

  def launch(*extra):
    port = _free_port()
    commands = [
      [
        sys.executable,
        _WORKER,
        f"--workdir={workdir}",
        "--seeds=0,1",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
        *extra,
      ]
      for i in range(2)
    ]
    return _launch(commands, _env(2), str(tmp_path))

  codes, logs = launch("--stop_after=6")
  assert all(code != 0 for code in codes), logs  # Killed.
  assert "mesh seed=2 x batch=2 over 4 cpu devices in 2 processes" in logs[0], logs[0]
  assert all(rundir.read_summary(d) is None for d in dirs)
  # Rows 1-6 were written (by process 0 only) before the kill; the last checkpoint is step 4.
  _assert_runs_close(dirs, reference_dirs, steps={1, 2, 4, 6})
  assert checkpoints.RunCheckpointer(dirs[1], 2).all_steps() == [4]

  codes, logs = launch()
  assert codes == [0, 0], logs
  assert all("done" in log for log in logs)
  _assert_runs_close(dirs, reference_dirs)
  for d, summary in zip(dirs, reference_summaries, strict=True):
    _assert_close(rundir.read_summary(d), summary, f"{d} summary")

  # The step-4 checkpoint, written by 2 processes over 4 devices, restores on 1 device.
  run = config_lib.parse_config(scaleout_worker.config())
  compiled = step.compile_run(run)
  batch = step.train_batch(run.task, run.train.batch_size, [0], 0)
  template = compiled.layout.seed_slice(step.init_states(compiled, step.seed_keys([0]), batch), 0)
  for d, reference in zip(dirs, reference_dirs, strict=True):
    restored = [checkpoints.RunCheckpointer(x, 2) for x in (d, reference)]
    (state, history), (expected, expected_history) = [c.restore(4, template) for c in restored]
    for c in restored:
      c.close()
    assert int(state.step) == 4
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert [r["step"] for r in history["rows"]] == [r["step"] for r in expected_history["rows"]]


def test_mesh_rule_splits_seeds_over_the_devices_that_divide_them():
  assert sharding.mesh_shape(1, 4) == (1, 4)
  assert sharding.mesh_shape(2, 4) == (2, 2)
  assert sharding.mesh_shape(3, 4) == (1, 4)
  assert sharding.mesh_shape(4, 4) == (4, 1)
  assert sharding.mesh_shape(8, 4) == (4, 1)
  assert sharding.mesh_shape(6, 4) == (2, 2)
  assert sharding.mesh_shape(5, 1) == (1, 1)


def test_a_batch_the_devices_do_not_divide_is_a_start_up_error(tmp_path):
  # The rule is checked against the device list before anything compiles: 4 devices stand
  # for the real ones (a mesh is never built when the check fails).
  four = [jax.devices()[0]] * 4
  with pytest.raises(config_lib.ConfigError, match=r"batch_size=6 does not split over .* 4 dev"):
    sharding.make_layout(num_seeds=1, batch_size=6, devices=four)
  with pytest.raises(config_lib.ConfigError, match=r"multiple of 2"):
    sharding.make_layout(num_seeds=2, batch_size=3, devices=four)
  sharding.make_layout(num_seeds=4, batch_size=3, devices=jax.devices())  # 1 device: any size.


def test_experiments_train_refuses_an_indivisible_batch_before_compiling(tmp_path):
  command = [
    sys.executable,
    "-m",
    "experiments.train",
    "--config=configs/default.py:smoke",
    f"--workdir={tmp_path / 'run'}",
    "--config.batch_size=6",
  ]
  result = subprocess.run(
    command, cwd=_REPO, env=_env(4), capture_output=True, text=True, timeout=_TIMEOUT_S
  )
  assert result.returncode == 2  # A usage error: one line, no traceback (experiments.cli).
  assert result.stderr.startswith(
    "error: config.batch_size=6 does not split over the mesh's batch axis of 4"
  )
  assert len(result.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_distributed_auto_mode_joins_only_multiprocess_launches(monkeypatch):
  assert not sharding.launched_as_multiprocess({})
  assert not sharding.launched_as_multiprocess({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
  assert sharding.launched_as_multiprocess({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4"})
  assert sharding.launched_as_multiprocess({"OMPI_COMM_WORLD_SIZE": "2"})
  for name in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  assert sharding.initialize_distributed() is False  # One process: nothing to join.
  with pytest.raises(ValueError, match="'off' but"):
    sharding.initialize_distributed(num_processes=2, mode="off")
  with pytest.raises(ValueError, match="invalid"):
    sharding.initialize_distributed(mode="sometimes")
