r"""Device check: tests, attention and training benchmarks, a small comparison, one command.

On a machine with one GPU (at most 8 minutes: a 470 s budget that the steps' time limits add up
to; a failing or slow step is recorded, then the next one runs):

  python -m experiments.device_check --out=results/device_check

CPU dry run (CI runs it, shrunk, inside the test suite; it writes the same files):

  python -m experiments.device_check --dry_run --out=/tmp/device_check

Steps, each a subprocess on the default JAX backend (the GPU when there is one):

  card       the device and software: ``jax.print_environment_info()`` (with nvidia-smi),
             device kind and memory, and what attnlab's dispatcher reads of the device
             (platform, compute capability, cuDNN version; whether cuDNN attention runs).
  tests      the GPU-relevant tests (:data:`GPU_TESTS`: float32 numerics at the stated
             matmul precision, the attention dispatch, the training loop, the sweep workers'
             environments) on that backend, ``--test_workers`` xdist workers sharing the GPU
             without memory preallocation (tests/conftest.py). The whole suite takes 8.5-10.5
             minutes on 2 CPU cores: too long for the budget.
  attention  ``experiments.bench_attention --suite=dispatch`` in bfloat16:
             attnlab.dot_product_attention (the cuDNN dispatch) against jax.nn's
             ``implementation="cudnn"`` and ``"xla"``, causal and not.
  train      ``experiments.bench_train`` (training-step time of soft and hard attention).
  compare    the default comparison (``configs/compare.py``, 2 worker processes sharing the
             GPU) on a reduced grid: copy, soft_additive vs reinforce_rloo4, 3 seeds, 100 steps.

Writes ``OUT/device_check.md`` (card, one line per step, then each step's tables) and
``OUT/device_check.json``; each step's own outputs are under ``OUT/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app, flags


def _define_flags() -> None:
  """The script's flags, defined only when it runs as a script (tests import the module,
  and absl's flags are global: two scripts' ``--out`` would clash)."""
  flags.DEFINE_string("out", "results/device_check", "Output directory.")
  flags.DEFINE_bool(
    "dry_run", False, "CPU plumbing check: every step, shrunk to seconds (no GPU needed)."
  )
  flags.DEFINE_float(
    "budget_s",
    DEFAULT_BUDGET_S,
    f"Wall-clock budget of all steps (at most {MAX_BUDGET_S:.0f} s); a step gets min(its "
    "limit, what is left).",
  )
  flags.DEFINE_integer("test_workers", 8, "pytest-xdist workers of the tests step.")
  flags.DEFINE_list(
    "steps", ["card", "tests", "attention", "train", "compare"], "Steps to run, in order."
  )


# Seconds: the steps' time limits add up to the budget, and the budget leaves the 8 minutes of
# one device check room for start-up and the report.
MAX_BUDGET_S = 480.0
LIMITS_S = dict(card=30, tests=170, attention=70, train=60, compare=140)
DRY_RUN_LIMITS_S = dict(card=30, tests=60, attention=90, train=110, compare=180)
DEFAULT_BUDGET_S = float(sum(LIMITS_S.values()))  # --budget_s's default.
# The tests that say something about an accelerator: float32 numerics at tight tolerances
# (their matmul precision is set in tests/conftest.py), attention and its dispatch, the
# training loop (donation, NaN guard, resume), the sweep workers' environments.
GPU_TESTS = (
  "tests/test_soft.py",
  "tests/test_multihead.py",
  "tests/test_jax_nn_compat.py",
  "tests/test_dispatch.py",
  "tests/test_efficient.py",
  "tests/test_flax_interop.py",
  "tests/test_docs_examples.py",
  "tests/test_numerics.py",
  "tests/test_training_loop.py",
  "tests/test_sweep_workers.py",
)


@dataclasses.dataclass
class Step:
  """One step: its command, time limit and result."""

  name: str
  command: list[str]
  limit_s: float
  outputs: list[str] = dataclasses.field(default_factory=list)  # markdown files to include
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  status: str = "not run"
  seconds: float = 0.0
  tail: str = ""


def _python(*args: str) -> list[str]:
  return [sys.executable, *args]


_CARD = """
import json, jax
from attnlab import efficient
devices = jax.devices()
info = dict(backend=jax.default_backend(), devices=[str(d) for d in devices],
            device_kind=devices[0].device_kind, device_count=len(devices),
            jax=jax.__version__)
facts = efficient.DeviceFacts.of(devices[0])
info.update(platform=facts.platform, compute_capability=facts.compute_capability,
            cudnn_version=facts.cudnn_version,
            cudnn_attention=efficient.cudnn_unsupported_reason(facts, "bfloat16", 64, 64)
            or "runs (bfloat16, head dim 64)")
try:
  stats = devices[0].memory_stats() or {}
  info["memory_gib"] = round(stats.get("bytes_limit", 0) / 2**30, 1)
except Exception:
  pass
print(jax.print_environment_info(return_string=True))
print("CARD " + json.dumps(info))
"""


def bench_train_command(out_prefix: str, dry_run: bool) -> list[str]:
  """The training-step benchmark, through its command line (the one place to adapt)."""
  if dry_run:
    sizes = ["--preset=smoke", "--cases=rnn_soft", "--lengths=4",
             "--batch=2", "--warmup=0", "--blocks=1", "--steps_per_block=1"]  # fmt: skip
  else:
    sizes = ["--cases=rnn_soft,rnn_hard,transformer_soft,transformer_hard", "--lengths=12",
             "--blocks=3"]  # fmt: skip
  return _python("-m", "experiments.bench_train", *sizes, f"--out={out_prefix}")


def compare_command(workdir: str, dry_run: bool) -> list[str]:
  """The default comparison's 2-worker path on a reduced grid, through its command line."""
  grid = [
    "--config=configs/compare.py:default:soft_additive,reinforce_rloo4",
    f"--workdir={workdir}",
    "--config.tasks=('copy',)",
    "--config.num_workers=2",  # The default's, stated: two workers share one GPU.
  ]
  if not dry_run:  # 3 seeds, 100 steps (2 evaluations on 512 sequences, probes at 1 and 100).
    return _python("-m", "experiments.compare", *grid, "--config.task_overrides.copy.steps=100")
  # One seed, two steps, a small model: plumbing only (two workers still spawned).
  return _python("-m", "experiments.compare", *grid, "--config.seeds=(0,)",
                 "--config.task_overrides.copy.steps=2", "--config.base.eval_every=2",
                 "--config.base.checkpoint_every=2", "--config.base.optimizer.warmup_steps=0",
                 "--config.base.eval_size=16",
                 "--config.base.probe_steps=()", "--config.base.model.rnn.hidden_dim=16",
                 "--config.base.model.rnn.encoder_dim=16")  # fmt: skip


def check_budget(limits: dict[str, float], budget_s: float) -> None:
  """The steps' limits must fit the budget, and the budget the 8 minutes of a device check."""
  if sum(limits.values()) > budget_s or budget_s > MAX_BUDGET_S:
    raise ValueError(
      f"step limits {limits} add up to {sum(limits.values()):.0f} s; they must fit the budget "
      f"({budget_s:.0f} s), and the budget {MAX_BUDGET_S:.0f} s."
    )


def _steps(out: str, dry_run: bool, workers: int) -> list[Step]:
  attention = os.path.join(out, "bench_attention")
  limits = DRY_RUN_LIMITS_S if dry_run else LIMITS_S
  if dry_run:
    tests = _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_masks.py")
    attention_args = ["--lengths=16,32", "--batch=1", "--heads=2", "--head_dim=8", "--reps=1"]
  else:
    tests = _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers),
                    *GPU_TESTS)  # fmt: skip
    attention_args = ["--lengths=1024,4096", "--batch=4", "--dtypes=bfloat16", "--reps=5"]
  attention_cmd = _python("-m", "experiments.bench_attention", "--suite=dispatch",
                          *attention_args, f"--out={attention}")  # fmt: skip
  compare_dir = os.path.join(out, "compare_default")
  no_prealloc = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  return [
    Step("card", _python("-c", _CARD), limits["card"]),
    Step("tests", tests, limits["tests"], env=no_prealloc),
    Step("attention", attention_cmd, limits["attention"], [attention + ".md"]),
    Step(
      "train",
      bench_train_command(os.path.join(out, "bench_train"), dry_run),
      limits["train"],
      [os.path.join(out, "bench_train.md")],
    ),  # fmt: skip
    Step(
      "compare",
      compare_command(compare_dir, dry_run),
      limits["compare"],
      [os.path.join(compare_dir, "table.md")],
    ),  # fmt: skip
  ]


def _run(step: Step, limit_s: float, log) -> None:
  env = dict(os.environ, **step.env)
  if flags.FLAGS.dry_run:
    env["JAX_PLATFORMS"] = "cpu"
  start = time.perf_counter()
  log(f"[{step.name}] {' '.join(step.command)[:200]} (limit {limit_s:.0f} s)")
  try:
    done = subprocess.run(
      step.command, capture_output=True, text=True, env=env, timeout=limit_s, check=False
    )
    output = done.stdout + done.stderr
    step.status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
  except subprocess.TimeoutExpired as e:
    output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    step.status = f"timed out after {limit_s:.0f} s"
  step.seconds = time.perf_counter() - start
  step.tail = output[-3000:]
  log(f"[{step.name}] {step.status} in {step.seconds:.1f} s")


def _card(step: Step) -> dict:
  for line in step.tail.splitlines():
    if line.startswith("CARD "):
      return json.loads(line[5:])
  return {}


def _summary_line(step: Step) -> str:
  """The most telling line of a step's output (pytest's summary, a benchmark's verdicts)."""
  if step.name == "card" and _card(step):
    card = _card(step)
    return (f"{card['device_count']} x {card['device_kind']} ({card['backend']}), "
            f"{card.get('memory_gib', '?')} GiB, jax {card['jax']}")  # fmt: skip
  lines = [x for x in step.tail.splitlines() if x.strip()]
  for line in reversed(lines):
    if step.name == "tests" and (" passed" in line or " failed" in line or " error" in line):
      return line.strip("= ")
    if step.name == "compare" and line.startswith("runs:"):
      workers = [x for x in lines if " worker process(es) on " in x]
      return line + (f" ({workers[0].split(';')[0]})" if workers else "")
  return lines[-1][:160] if lines else ""


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = flags.FLAGS.out
  os.makedirs(out, exist_ok=True)
  check_budget(DRY_RUN_LIMITS_S if flags.FLAGS.dry_run else LIMITS_S, flags.FLAGS.budget_s)
  steps = [
    s
    for s in _steps(out, flags.FLAGS.dry_run, flags.FLAGS.test_workers)
    if s.name in flags.FLAGS.steps
  ]
  deadline = time.perf_counter() + flags.FLAGS.budget_s
  started = time.strftime("%Y-%m-%d %H:%M:%S")
  for step in steps:
    left = deadline - time.perf_counter()
    if left < 5:
      step.status = "skipped (budget spent)"
      continue
    _run(step, min(step.limit_s, left), log=lambda s: print(s, flush=True))
  card = next((_card(s) for s in steps if s.name == "card"), {})
  total = sum(s.seconds for s in steps)
  title = card.get("device_kind", "unknown device")
  lines = [f"# Device check: {title} ({card.get('backend', '?')})", "",
           f"{started}; {'CPU dry run; ' if flags.FLAGS.dry_run else ''}total {total:.0f} s of a "
           f"{flags.FLAGS.budget_s:.0f} s budget; load average {os.getloadavg()[0]:.2f}.", "",
           "| step | status | seconds | summary |", "|---|---|--:|---|"]  # fmt: skip
  for s in steps:
    summary = _summary_line(s).replace("|", "/")
    lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {summary} |")
  lines += ["", "## Card", "", "```", json.dumps(card, indent=1), "```", ""]
  env_info = next((s.tail for s in steps if s.name == "card"), "")
  lines += ["```", env_info.split("CARD ")[0].strip()[-2500:], "```", ""]
  for s in steps:
    for path in s.outputs:
      if os.path.exists(path):
        with open(path) as f:
          lines += [f"## {s.name}: {os.path.basename(path)}", "", f.read(), ""]
  text = "\n".join(lines)
  with open(os.path.join(out, "device_check.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out, "device_check.json"), "w") as f:
    json.dump(dict(card=card, dry_run=flags.FLAGS.dry_run, started=started,
                   steps=[dataclasses.asdict(s) for s in steps]), f, indent=1)  # fmt: skip
  print(text)
  print(f"wrote {out}/device_check.md and device_check.json")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
