"""attnlab.sweep.workers: each worker's devices and memory for a declared machine, the probe,
the node-local compilation cache, and a sweep process that never starts a JAX backend."""

import json
import logging
import os
import subprocess
import sys

import pytest

from attnlab.sweep import workers

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NO_PREALLOCATION = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def _all(platform, device_count, num_workers, environ=None):
  count = workers.worker_count(platform, device_count, num_workers)
  return [
    workers.worker_environment(platform, device_count, i, count, environ or {})
    for i in range(count)
  ]


@pytest.mark.parametrize(
  "device_count, num_workers, expected",
  [
    (8, 2, [(range(0, 4), 1), (range(4, 8), 1)]),
    (4, 4, [(range(i, i + 1), 1) for i in range(4)]),
    (5, 2, [(range(0, 3), 1), (range(3, 5), 1)]),
    (1, 2, [(range(0, 1), 2), (range(0, 1), 2)]),
    (2, 3, [(range(0, 1), 2), (range(1, 2), 1), (range(0, 1), 2)]),
  ],
)
def test_devices_are_split_in_blocks_or_shared_round_robin(device_count, num_workers, expected):
  got = [workers.assign_devices(device_count, i, num_workers) for i in range(num_workers)]
  assert got == expected
  used = sorted(d for devices, _ in got for d in devices)
  assert set(used) == set(range(device_count))  # Every device is used...
  if device_count >= num_workers:
    assert used == list(range(device_count))  # ...and by one worker only.


def test_assign_devices_rejects_bad_counts():
  with pytest.raises(ValueError, match="worker_index < num_workers"):
    workers.assign_devices(2, 2, 2)
  with pytest.raises(ValueError, match="device_count >= 1"):
    workers.assign_devices(0, 0, 1)


def test_a_single_worker_and_cpu_workers_without_cores_get_nothing():
  assert _all("cpu", 1, 2) == [{}, {}]  # No cores named: nothing to pin.
  assert _all("cpu", 4, 3) == [{}, {}, {}]
  assert _all("cuda", 8, 1) == [{}]  # One worker trains in the sweep process, as it is.
  assert _all("tpu", 4, 1) == [{}]


def _pinned(cpus, num_workers):
  return [
    workers.worker_environment("cpu", 1, i, num_workers, {}, cpus).get(workers.WORKER_CPUS)
    for i in range(num_workers)
  ]


def test_cpu_workers_are_pinned_to_their_own_blocks_of_the_sweeps_cores():
  assert _pinned([0, 1], 2) == ["0", "1"]  # The 2-core CI machine: a core each.
  assert _pinned([3, 0, 1, 2, 4], 2) == ["0,1,2", "3,4"]  # Sorted, near-equal blocks.
  assert _pinned([4, 6], 2) == ["4", "6"]  # Only the cores the sweep may use (taskset).
  assert _pinned([0, 1], 3) == [None, None, None]  # Fewer cores than workers: the OS shares.
  assert _pinned([0, 1], 1) == [None]
  assert workers.worker_cpus(range(16), 3, 4) == tuple(range(12, 16))


def test_a_users_worker_cpus_is_kept_and_empty_turns_pinning_off():
  for users in ("", "1"):
    environ = {workers.WORKER_CPUS: users}
    for i in range(2):  # Nothing added: each worker inherits the user's value.
      assert workers.worker_environment("cpu", 1, i, 2, environ, [0, 1]) == {}


def test_pin_to_cpus_restricts_the_process_and_its_later_threads():
  code = (
    "import os, threading; from attnlab.sweep import workers; workers.pin_to_cpus('0');"
    " seen = []; t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)));"
    " t.start(); t.join(); print(sorted(os.sched_getaffinity(0)), sorted(seen[0]))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, check=True
  ).stdout
  assert out.split() == ["[0]", "[0]"]


def test_one_gpu_two_workers_share_it_without_preallocation_and_half_the_memory_each():
  share = {**_NO_PREALLOCATION, "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"}
  assert _all("cuda", 1, 2) == [{"CUDA_VISIBLE_DEVICES": "0", **share}] * 2


def test_eight_gpus_two_workers_get_four_each_and_no_cap():
  assert _all("cuda", 8, 2) == [
    {"CUDA_VISIBLE_DEVICES": "0,1,2,3", **_NO_PREALLOCATION},
    {"CUDA_VISIBLE_DEVICES": "4,5,6,7", **_NO_PREALLOCATION},
  ]
  assert _all("cuda", 4, 4) == [
    {"CUDA_VISIBLE_DEVICES": str(i), **_NO_PREALLOCATION} for i in range(4)
  ]


def test_more_workers_than_gpus_cap_only_the_shared_ones():
  envs = _all("cuda", 2, 3)
  assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
  assert [e.get("XLA_PYTHON_CLIENT_MEM_FRACTION") for e in envs] == ["0.45", None, "0.45"]
  assert _all("cuda", 1, 3)[0]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.3"


def test_the_users_device_list_is_narrowed_and_their_memory_settings_kept():
  user = {"CUDA_VISIBLE_DEVICES": "2,3", "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
  assert _all("cuda", 2, 2, user) == [
    {"CUDA_VISIBLE_DEVICES": "2"},
    {"CUDA_VISIBLE_DEVICES": "3"},
  ]
  uuids = {"CUDA_VISIBLE_DEVICES": "GPU-aaa,GPU-bbb"}
  assert [e["CUDA_VISIBLE_DEVICES"] for e in _all("cuda", 2, 2, uuids)] == ["GPU-aaa", "GPU-bbb"]
  for name in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):  # jaxlib: not both.
    (env, _) = _all("cuda", 1, 2, {name: "0.2"})
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env and env["CUDA_VISIBLE_DEVICES"] == "0"


def test_rocm_workers_use_hip_visible_devices():
  assert [e["HIP_VISIBLE_DEVICES"] for e in _all("rocm", 2, 2)] == ["0", "1"]
  assert all("CUDA_VISIBLE_DEVICES" not in e for e in _all("rocm", 2, 2))


def test_tpu_workers_get_one_chip_each_and_never_more_workers_than_chips():
  envs = _all("tpu", 4, 2)
  assert envs == [
    {
      "TPU_VISIBLE_CHIPS": str(i),
      "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
      "TPU_PROCESS_BOUNDS": "1,1,1",
      "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{8476 + i}",
      "TPU_MESH_CONTROLLER_PORT": str(8476 + i),
    }
    for i in range(2)
  ]
  assert workers.worker_count("tpu", 1, 2) == 1  # A chip serves one process.
  assert workers.worker_count("cuda", 1, 2) == 2  # A GPU can be shared.
  with pytest.raises(ValueError, match="2 TPU workers but 1 chip"):
    workers.worker_environment("tpu", 1, 0, 2, {})


def test_platform_names_from_devices():
  assert workers.platform_of("gpu", "PJRT C API\ncuda 12040") == "cuda"
  assert workers.platform_of("gpu", "PJRT C API\nrocm 60100") == "rocm"
  assert workers.platform_of("cuda") == "cuda"
  assert workers.platform_of("TPU") == "tpu"
  assert workers.platform_of("cpu", "cpu") == "cpu"


def test_worker_environments_and_their_line_for_a_declared_machine(monkeypatch):
  h100 = workers.Machine("cuda", 1, 1, "NVIDIA H100 80GB HBM3", backend="gpu")
  envs = workers.worker_environments(h100, 2, {})
  assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0"]
  line = workers.describe_workers(h100, 2, envs)
  assert line.startswith("2 worker process(es) on 1 cuda device(s) (NVIDIA H100 80GB HBM3); ")
  assert "worker 1: CUDA_VISIBLE_DEVICES=0 XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 " in line
  tpu = workers.Machine("tpu", 8, 4, "TPU v3", backend="tpu")  # 2 devices per chip.
  assert tpu.units == 4 and len(workers.worker_environments(tpu, 8, {})) == 4
  assert "not 8: a TPU chip serves one process" in workers.describe_workers(
    tpu, 8, workers.worker_environments(tpu, 8, {})
  )
  one_chip = workers.Machine("tpu", 1, 1, "TPU v5 lite", backend="tpu")
  envs = workers.worker_environments(one_chip, 2, {})
  assert envs == [{}]  # One worker: it trains in the sweep process, on the chip.
  assert workers.describe_workers(one_chip, 2, envs) == (
    "1 worker process(es) on 1 tpu chip(s) (TPU v5 lite), not 2: a TPU chip serves one "
    "process; it trains in the sweep process"
  )
  cpu = workers.Machine("cpu", 1, 1, "cpu")
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
  assert workers.describe_workers(cpu, 2, workers.worker_environments(cpu, 2, {})) == (
    "2 worker process(es) on 1 cpu device(s) (cpu); worker 0: ATTNLAB_WORKER_CPUS=0,1;"
    " worker 1: ATTNLAB_WORKER_CPUS=2,3"
  )
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
  assert workers.describe_workers(cpu, 2, workers.worker_environments(cpu, 2, {})) is None
  unknown = workers.Machine("unknown", 0, 0, "", problem="the device probe failed: x")
  assert workers.worker_environments(unknown, 2, {}) == [{}, {}]
  assert unknown.describe() == "unknown machine (the device probe failed: x)"


def test_probe_reports_this_machine_from_a_subprocess():
  machine = workers.probe_machine()
  assert machine.device_count >= 1 and not machine.problem
  assert machine.platform in ("cpu", "cuda", "rocm", "tpu")
  assert workers.probe_machine() is machine  # Cached per environment.
  machine = workers.probe_machine(dict(os.environ, JAX_PLATFORMS="cpu"))
  assert machine.platform == "cpu" and machine.device_count >= 1
  assert "CPU cores, JAX " in machine.describe() and " on cpu (" in machine.describe()
  forced = workers.probe_machine(
    dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=3")
  )
  assert forced.device_count == 3 and forced.units == 3


def test_a_failed_probe_is_an_unknown_machine(caplog):
  with caplog.at_level(logging.WARNING):
    machine = workers.probe_machine(dict(os.environ, JAX_PLATFORMS="no_such_platform"))
  assert machine.platform == "unknown" and machine.problem.startswith("the device probe failed")
  assert "the device probe failed" in caplog.text


def test_default_cache_is_node_local_private_and_refused_when_others_may_write(tmp_path, caplog):
  path = workers.default_compilation_cache_dir(str(tmp_path))
  parent = tmp_path / f"attnlab-{os.getuid()}"
  assert path == str(parent / "jax_cache")
  assert os.stat(parent).st_mode & 0o777 == 0o700
  os.chmod(parent, 0o777)  # As if another user had made it, writable by all.
  with caplog.at_level(logging.WARNING):
    assert workers.default_compilation_cache_dir(str(tmp_path)) is None
  assert "others may write it" in caplog.text


# A sweep with 2 worker processes, then one in-process, each with a training stub; after each,
# whether this (the sweep's) process has started a JAX backend. The stub records the worker's
# pid and device variables.
_SWEEP_WITHOUT_BACKEND = """
import json, os, sys
from jax._src import xla_bridge
from attnlab.sweep import run
from attnlab.training import rundir
from configs import compare

def train(config, seeds, workdirs):
  for seed, workdir in zip(seeds, workdirs):
    os.makedirs(workdir, exist_ok=True)
    rundir.write_config(workdir, rundir.run_config_dict(config.to_dict(), seed))
    rundir.write_json(os.path.join(workdir, "summary.json"), {
      "completed": True, "steps": 1, "steps_trained": 1, "converged": False,
      "test/seq_accuracy": 1.0, "ood/seq_accuracy": 1.0, "pid": os.getpid(),
      "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")})

if __name__ == "__main__":
  started = {}
  for workers in (2, 1):
    config = compare.get_config("smoke")
    config.num_workers = workers
    report = run.run_comparison(
      config, os.path.join(sys.argv[1], str(workers)), train_fn=train, log=print)
    assert not report.failed, report.failed
    started[workers] = xla_bridge.backends_are_initialized()
  print("BACKENDS " + json.dumps(started))
"""


def test_the_sweep_process_never_starts_a_jax_backend(tmp_path):
  script = tmp_path / "sweep.py"
  script.write_text(_SWEEP_WITHOUT_BACKEND)
  env = dict(os.environ, PYTHONPATH=_REPO, JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, str(script), str(tmp_path / "sweeps")],
    cwd=_REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  (line,) = [x for x in done.stdout.splitlines() if x.startswith("BACKENDS ")]
  assert json.loads(line[len("BACKENDS ") :]) == {"2": False, "1": False}
  grid = json.loads((tmp_path / "sweeps" / "2" / "grid.json").read_text())
  assert " on cpu (" in grid["hardware"]  # Described all the same, by the probe.
  summaries = [
    json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "2").glob("*/*/seed_*/summary.json")
  ]
  assert len(summaries) == 8 and os.getpid() not in {s["pid"] for s in summaries}
  assert {s["CUDA_VISIBLE_DEVICES"] for s in summaries} == {os.environ.get("CUDA_VISIBLE_DEVICES")}
