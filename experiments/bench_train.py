r"""Training-step benchmark: compile time and ms/step of the trainer's own step, soft vs hard.

Each case (model family x attention method) at each maximum source length ``L`` (the copy
task, sources of 1..L tokens, targets L+1 with EOS) is a run config: ``configs/default.py``
(``--preset``) with the case's overrides. The benchmark builds that run's functions with
:func:`attnlab.training.step.compile_run`, exactly as :func:`attnlab.training.loop.train_seeds`
does, and times its step: the jitted, seed-vmapped update with the run's optimiser (warm-up
and cosine schedule, clipping), objective and NaN guard, for ``--num_seeds`` seeds at once.

* compile: lowering (trace) and XLA compilation of that step, wall seconds;
* ms/step: after ``--warmup`` steps, the median (and minimum) over ``--blocks`` blocks of
  ``--steps_per_block`` steps, each ending in ``block_until_ready``, on pre-sampled device
  batches (host sampling is not timed). Blocks of all cases of one length are interleaved,
  so load drifts hit every case alike.
* host ms/step: the loop's own work per step beside the step, timed apart: sampling the
  step's batch on the host and placing it on the devices, as the loop does
  (``step.placed_train_batch``), median over ``--blocks`` x ``--steps_per_block`` batches. The loop
  builds step t+1's batch while step t runs (dispatch is asynchronous), so on an
  accelerator it overlaps the step; on a CPU the two share the cores.

Ratios: hard / soft step time (same family and length; the target is <= 1) and compile time
at the longest over the shortest L (the scan-based RNN must stay within 1.5x).

``--suite=seeds``: what vmapping seeds earns. For each case, length and seed count ``n`` of
``--seed_counts`` (default 1, 3, 8): the step of ``n`` seeds vmapped together against the same
``n`` seeds trained one after another with the one-seed step (a block runs each seed's
``--steps_per_block`` steps in turn, as a sweep without vmapping would), in seeds x steps per
second; blocks of every variant of one case interleaved.

  python -m experiments.bench_train --out=results/bench_train
  python -m experiments.bench_train --preset=smoke --lengths=4,8 --blocks=2 --out=/tmp/bt
  python -m experiments.bench_train --suite=seeds --cases=rnn_soft,rnn_hard --lengths=12 \
    --out=results/bench_seeds

The header records the load average: on a shared machine, rerun on a quiet one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from attnlab.training import config as config_lib
from attnlab.training import overrides, rundir, step
from configs import default as default_config
from experiments import cli

# Longest / shortest compile time allowed for the scan-based RNN.
COMPILE_RATIO_LIMIT = 1.5


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmarked training step.

  Attributes:
    family: ``config.model.family`` ("rnn" | "transformer").
    changes: overrides of the run config (dotted keys), e.g. the attention method.
    reference: the soft case this step time is divided by (``None``: no ratio).
  """

  family: str
  changes: Mapping[str, Any]
  reference: str | None = None


_HARD = {"model.attention": "hard", "estimator.gradient": "reinforce"}
CASES = {
  "rnn_soft": Case("rnn", {"model.attention": "soft"}),
  # REINFORCE with one sample and no baseline.
  "rnn_hard": Case("rnn", _HARD, reference="rnn_soft"),
  # REINFORCE with K = 4 samples and the leave-one-out baseline (the comparison's RLOO-4).
  "rnn_hard_rloo4": Case(
    "rnn",
    {**_HARD, "estimator.baseline": "rloo", "estimator.num_samples": 4},
    reference="rnn_soft",
  ),
  # The exact (enumerated) gradient of the hard-attention bound.
  "rnn_hard_enum": Case("rnn", {**_HARD, "estimator.gradient": "enumerate"}, reference="rnn_soft"),
  "transformer_soft": Case("transformer", {"model.attention": "soft"}),
  # Per-step credit is biased for a Transformer decoder (the parser rejects it).
  "transformer_hard": Case(
    "transformer", {**_HARD, "estimator.reward": "reward_to_go"}, reference="transformer_soft"
  ),
}
PRESETS = ("default", "smoke")  # configs/default.py presets giving the model sizes.


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the benchmark runs.

  Attributes:
    batch_size: examples per step and seed.
    preset: ``configs/default.py`` preset giving the model sizes (one of :data:`PRESETS`).
    num_seeds: seeds trained together by the vmapped step (3 in a comparison with vmap_seeds).
    num_batches: distinct pre-sampled device batches, cycled.
    warmup: untimed steps after the first.
    blocks: timed blocks per case; ms/step is their median.
    steps_per_block: steps per timed block (one ``block_until_ready`` at its end).
  """

  batch_size: int
  preset: str = "default"
  num_seeds: int = 1
  num_batches: int = 4
  warmup: int = 3
  blocks: int = 5
  steps_per_block: int = 10

  def __post_init__(self):
    if self.preset not in PRESETS:
      raise ValueError(f"preset={self.preset!r} is not valid; choose one of {list(PRESETS)}.")
    for field in dataclasses.fields(self):
      if field.name != "preset":
        low = 0 if field.name == "warmup" else 1
        cli.require_int(field.name, getattr(self, field.name), low)


def get_case(name: str) -> Case:
  """The :class:`Case` called ``name``; the error lists the valid names."""
  if name not in CASES:
    raise ValueError(f"unknown benchmark case {name!r}; valid: {list(CASES)}.")
  return CASES[name]


def run_config(case: Case, length: int, batch_size: int, preset: str) -> config_lib.RunConfig:
  """The parsed run config of ``case`` on copy with sources of 1..``length`` tokens.

  Model sizes, optimiser and estimator defaults are those of ``configs/default.py``
  (``preset``); the Transformer family takes its score from the "transformer" preset.
  """
  if length < 1:
    raise ValueError(f"source length must be >= 1, got {length}.")
  base = default_config.get_config(preset)
  changes = {
    "model.family": case.family,
    **case.changes,
    "batch_size": batch_size,
    "task": "copy",
    "model.rnn.max_source_len": max(base.model.rnn.max_source_len, length + 1),
  }
  if case.family == "transformer":
    changes["model.score"] = default_config.get_config("transformer").model.score
  config = overrides.apply_overrides(base, changes, where=f"benchmark case at L={length}")
  # The OOD split is never sampled here; it only has to be valid (longer than training).
  config.task_overrides = ml_collections.ConfigDict(
    {"train_lengths": (1, length), "ood_lengths": (length + 1, length + 1)}
  )
  return config_lib.parse_config(config)


@dataclasses.dataclass
class Bench:
  """A case ready to time: the trainer's step, its state and fixed device batches."""

  name: str
  length: int
  run: config_lib.RunConfig
  compiled: step.CompiledRun
  state: step.TrainState
  batches: list[Any]
  keys: jax.Array


def build(name: str, length: int, settings: Settings, seeds: Sequence[int] | None = None) -> Bench:
  """The trainer's functions, fresh states and ``settings.num_batches`` batches of a case,
  for ``seeds`` (default ``0 .. settings.num_seeds - 1``) vmapped together."""
  run = run_config(get_case(name), length, settings.batch_size, settings.preset)
  compiled = step.compile_run(run)
  seeds = list(range(settings.num_seeds)) if seeds is None else list(seeds)
  batches = [
    step.train_batch(run.task, settings.batch_size, seeds, i) for i in range(settings.num_batches)
  ]
  keys = step.seed_keys(seeds)
  state = step.init_states(compiled, keys, batches[0])
  return Bench(name, length, run, compiled, state, batches, keys)


_NO_NAN = jnp.int32(-1)  # The trainer's nan_at_step when the NaN debug hook is off.


def _all_active(bench: Bench) -> jax.Array:
  """The trainer's per-seed ``active`` flags while no seed has converged."""
  return jnp.ones(bench.keys.shape[0], bool)


def compile_step(bench: Bench) -> tuple[Callable[..., step.TrainState], dict[str, float]]:
  """Lowers and compiles the trainer's step for the bench's shapes.

  Returns:
    ``(executable, {"lower_s", "compile_s"})`` (wall seconds).
  """
  start = time.perf_counter()
  lowered = bench.compiled.step.lower(
    bench.state, bench.batches[0], bench.keys, _NO_NAN, _all_active(bench)
  )
  lowered_at = time.perf_counter()
  executable = lowered.compile()
  timings = dict(lower_s=lowered_at - start, compile_s=time.perf_counter() - lowered_at)
  return executable, timings


class _Timer:
  """Runs the compiled step of one or more benches, one after another, and records per-block
  step times (several benches: the same executable, one seed each, trained in turn)."""

  def __init__(self, benches: Sequence[Bench], executable: Callable[..., step.TrainState]):
    self.benches = list(benches)
    self.executable = executable
    self.states = [bench.state for bench in self.benches]  # Donated by each step: replaced.
    self.count = 0
    self.block_ms: list[float] = []

  def run(self, steps: int) -> None:
    for i, bench in enumerate(self.benches):
      state = self.states[i]
      for k in range(steps):
        batch = bench.batches[(self.count + k) % len(bench.batches)]
        state = self.executable(state, batch, bench.keys, _NO_NAN, _all_active(bench))
      self.states[i] = state
    self.count += steps
    jax.block_until_ready(self.states)

  def timed_block(self, steps: int) -> None:
    start = time.perf_counter()
    self.run(steps)
    self.block_ms.append(1e3 * (time.perf_counter() - start) / steps)

  def finite(self) -> bool:
    """No non-finite loss or gradient norm in any state."""
    return all(bool(jnp.all(state.bad_step < 0)) for state in self.states)


def bench_length(
  names: Sequence[str], length: int, settings: Settings, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
  """Compiles every case at source length ``length``, then times them interleaved.

  Returns:
    One row per case: ``case``, ``family``, ``length``, ``objective``, ``lower_s``,
    ``compile_s``, ``ms_per_step`` (median over blocks), ``ms_per_step_min``,
    ``steps_per_s``, ``finite`` (no non-finite loss or gradient norm) and ``reference``.
  """
  timers, rows = [], []
  for name in names:
    bench = build(name, length, settings)
    executable, timings = compile_step(bench)
    timer = _Timer([bench], executable)
    timer.run(1 + settings.warmup)
    log(f"  L={length} {name}: lower {timings['lower_s']:.2f}s, XLA {timings['compile_s']:.2f}s")
    case = get_case(name)
    rows.append(
      dict(
        case=name,
        family=case.family,
        reference=case.reference,
        length=length,
        objective=bench.run.objective.objective.value,
        **timings,
      )
    )
    timers.append(timer)
  for _ in range(settings.blocks):  # Interleaved: load drifts hit every case alike.
    for timer in timers:
      timer.timed_block(settings.steps_per_block)
  for row, timer in zip(rows, timers, strict=True):
    median_ms = statistics.median(timer.block_ms)
    host_ms = host_batch_ms(timer.benches[0], settings.blocks * settings.steps_per_block)
    row.update(
      ms_per_step=median_ms,
      ms_per_step_min=min(timer.block_ms),
      steps_per_s=1e3 / median_ms,
      host_ms_per_step=host_ms,
      finite=timer.finite(),
    )
    log(
      f"  L={length} {row['case']}: {median_ms:.2f} ms/step ({row['steps_per_s']:.1f} steps/s);"
      f" host batch {host_ms:.2f} ms/step"
    )
  return rows


def host_batch_ms(bench: Bench, count: int) -> float:
  """Median ms to sample one training batch on the host and place it as the loop does."""
  seeds = list(range(bench.keys.shape[0]))
  layout, task = bench.compiled.layout, bench.run.task
  times = []
  for i in range(count):
    start = time.perf_counter()
    batch = step.placed_train_batch(task, bench.run.train.batch_size, seeds, i, layout.batch)
    jax.block_until_ready(batch)
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def add_ratios(rows: list[dict[str, Any]]) -> None:
  """``hard_over_soft`` = ms/step over that of ``reference`` at the same length (in place)."""
  by_key = {(r["case"], r["length"]): r for r in rows}
  for row in rows:
    ref = by_key.get((row["reference"], row["length"]))
    row["hard_over_soft"] = row["ms_per_step"] / ref["ms_per_step"] if ref else None


def compile_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per case: lower + compile time at the longest over the shortest length."""
  out = []
  for name in dict.fromkeys(r["case"] for r in rows):
    mine = sorted((r for r in rows if r["case"] == name), key=lambda r: r["length"])
    if len(mine) < 2:
      continue
    short, long = mine[0], mine[-1]
    total = lambda r: r["lower_s"] + r["compile_s"]
    ratio = total(long) / max(total(short), 1e-9)
    scan_based = get_case(name).family == "rnn"
    out.append(
      dict(
        case=name,
        short=short["length"],
        long=long["length"],
        short_s=total(short),
        long_s=total(long),
        ratio=ratio,
        within_limit=ratio <= COMPILE_RATIO_LIMIT if scan_based else None,
      )
    )
  return out


def _header(lengths: Sequence[int], settings: Settings) -> dict[str, Any]:
  """What every report starts with: versions, device, machine, load, settings."""
  return dict(
    jax=jax.__version__,
    backend=jax.default_backend(),
    device=str(jax.devices()[0].device_kind),
    cpu_count=os.cpu_count(),
    date=time.strftime("%Y-%m-%d %H:%M:%S"),
    load_average=list(os.getloadavg()),
    lengths=list(lengths),
    **dataclasses.asdict(settings),
  )


def run_benchmark(
  names: Sequence[str],
  lengths: Sequence[int],
  settings: Settings,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """The whole benchmark; returns the JSON report (``rows``, ``compile_ratios``, header).

  A throw-away compile of the first case at a tiny length runs first, so that one-off
  process costs (LLVM start-up, first traces) are not charged to the first length.
  """
  names = list(names)
  for name in names:
    get_case(name)
  header = dict(_header(lengths, settings), compile_ratio_limit=COMPILE_RATIO_LIMIT)
  compile_step(build(names[0], 2, dataclasses.replace(settings, batch_size=2, num_batches=1)))
  rows = []
  for length in lengths:
    log(f"source length {length}")
    rows += bench_length(names, length, settings, log)
  add_ratios(rows)
  return dict(
    header, load_average_end=list(os.getloadavg()), rows=rows, compile_ratios=compile_ratios(rows)
  )


SEED_COUNTS = (1, 3, 8)


def bench_seed_scaling(
  name: str,
  length: int,
  seed_counts: Sequence[int],
  settings: Settings,
  log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
  """Vmapped seeds against the same seeds one after another, for one case and length.

  Returns:
    One row per seed count ``n``: ``case``, ``length``, ``seeds``, ``vmapped_compile_s``
    (lower + XLA of the ``n``-seed step), ``vmapped_ms`` (median over blocks of one step of
    all ``n`` seeds together), ``sequential_ms`` (the ``n`` seeds' steps one after another with
    the one-seed step), ``vmapped_seeds_per_s`` and ``sequential_seeds_per_s`` (seed-steps per
    second: ``n * 1000 / ms``), ``speedup`` (``sequential_ms / vmapped_ms``) and ``finite``.
  """
  one_seed = dataclasses.replace(settings, num_seeds=1)
  sequential_executable, one_seed_timings = compile_step(build(name, length, one_seed))
  timers, rows = [], []
  for n in seed_counts:
    vmapped_bench = build(name, length, dataclasses.replace(settings, num_seeds=n))
    # One seed: the one-seed program, compiled just above (a second compile would be cached).
    executable, timings = (
      (sequential_executable, one_seed_timings) if n == 1 else compile_step(vmapped_bench)
    )
    alone = [build(name, length, one_seed, seeds=[s]) for s in range(n)]
    pair = (_Timer([vmapped_bench], executable), _Timer(alone, sequential_executable))
    for timer in pair:
      timer.run(1 + settings.warmup)
    timers.append(pair)
    rows.append(dict(case=name, length=length, seeds=n, vmapped_compile_s=sum(timings.values())))
  for _ in range(settings.blocks):  # Interleaved: load drifts hit every variant alike.
    for pair in timers:
      for timer in pair:
        timer.timed_block(settings.steps_per_block)
  for row, (vmapped, sequential) in zip(rows, timers, strict=True):
    n = row["seeds"]
    vmapped_ms = statistics.median(vmapped.block_ms)
    sequential_ms = statistics.median(sequential.block_ms)
    row.update(
      vmapped_ms=vmapped_ms,
      sequential_ms=sequential_ms,
      vmapped_seeds_per_s=n * 1e3 / vmapped_ms,
      sequential_seeds_per_s=n * 1e3 / sequential_ms,
      speedup=sequential_ms / vmapped_ms,
      finite=vmapped.finite() and sequential.finite(),
    )
    log(
      f"  L={length} {name} {n} seed(s): vmapped {vmapped_ms:.2f} ms, one after another "
      f"{sequential_ms:.2f} ms: {row['speedup']:.2f}x"
    )
  return rows


def run_seed_scaling(
  names: Sequence[str],
  lengths: Sequence[int],
  seed_counts: Sequence[int],
  settings: Settings,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """The seeds suite over cases and lengths; the JSON report (``rows`` and a header)."""
  names, seed_counts = list(names), [int(n) for n in seed_counts]
  for name in names:
    get_case(name)
  if not seed_counts or min(seed_counts) < 1:
    raise ValueError(f"seed_counts={seed_counts} must be positive integers.")
  header = _header(lengths, settings)
  # As in run_benchmark: one-off process costs are not charged to the first compile.
  compile_step(build(names[0], 2, dataclasses.replace(settings, batch_size=2, num_batches=1)))
  rows = []
  for length in lengths:
    for name in names:
      log(f"source length {length}, {name}")
      rows += bench_seed_scaling(name, length, seed_counts, settings, log)
  return dict(
    header, suite="seeds", seed_counts=seed_counts, load_average_end=list(os.getloadavg()),
    rows=rows,
  )  # fmt: skip


def seeds_to_markdown(report: dict[str, Any]) -> str:
  """Markdown table of a :func:`run_seed_scaling` report."""
  load, load_end = (
    ", ".join(f"{x:.1f}" for x in report[k]) for k in ("load_average", "load_average_end")
  )
  lines = [
    f"## Vmapped seeds vs one after another ({report['backend']}, {report['cpu_count']} "
    f"cores, jax {report['jax']}, {report['date']}, load average 1/5/15 min: {load} at "
    f"start, {load_end} at end)",
    "",
    f"The trainer's jitted step; copy task, batch {report['batch_size']} per seed, preset "
    f"`{report['preset']}`; {report['blocks']} blocks x {report['steps_per_block']} steps "
    f"after {report['warmup']} warm-up steps, median over blocks. Vmapped: one step of all n "
    "seeds; one after another: the one-seed step of each seed in turn. Seeds/s = seed-steps "
    "per second.",
    "",
    "| case | L | seeds | vmapped ms | one after another ms | vmapped seeds/s | "
    "one after another seeds/s | speed-up | vmapped compile s |",
    "|---|---|--:|--:|--:|--:|--:|--:|--:|",
  ]
  for r in report["rows"]:
    lines.append(
      f"| {r['case']} | {r['length']} | {r['seeds']} | {_fmt(r['vmapped_ms'], 2)} | "
      f"{_fmt(r['sequential_ms'], 2)} | {_fmt(r['vmapped_seeds_per_s'], 1)} | "
      f"{_fmt(r['sequential_seeds_per_s'], 1)} | {_fmt(r['speedup'], 2)}x | "
      f"{_fmt(r['vmapped_compile_s'], 2)} |"
    )
  return "\n".join(lines) + "\n"


_fmt = rundir.format_report_number


def to_markdown(report: dict[str, Any]) -> str:
  """Markdown tables of a :func:`run_benchmark` report."""
  load, load_end = (
    ", ".join(f"{x:.1f}" for x in report[k]) for k in ("load_average", "load_average_end")
  )
  lines = [
    f"## Training-step benchmark ({report['backend']}, {report['cpu_count']} cores, jax "
    f"{report['jax']}, {report['date']}, load average 1/5/15 min: {load} at start, "
    f"{load_end} at end)",
    "",
    f"The trainer's jitted step (attnlab.training.step), {report['num_seeds']} seed(s) "
    f"vmapped; copy task, sources of 1..L tokens, batch {report['batch_size']} per seed, "
    f"preset `{report['preset']}`; {report['blocks']} blocks x {report['steps_per_block']} "
    f"steps after {report['warmup']} warm-up steps; ms/step = median over blocks (min in "
    "brackets).",
    "",
    "| case | L | objective | lower s | XLA compile s | ms/step | steps/s | ÷ soft "
    "| host ms/step |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in report["rows"]:
    lines.append(
      f"| {r['case']} | {r['length']} | {r['objective']} | {_fmt(r['lower_s'], 2)} | "
      f"{_fmt(r['compile_s'], 2)} | "
      f"{_fmt(r['ms_per_step'], 2)} ({_fmt(r['ms_per_step_min'], 2)}) | "
      f"{_fmt(r['steps_per_s'], 1)} | {_fmt(r['hard_over_soft'], 2)} | "
      f"{_fmt(r['host_ms_per_step'], 2)} |"
    )
  if report["compile_ratios"]:
    limit = report["compile_ratio_limit"]
    lines += [
      "",
      f"### Compile time (lower + XLA), longest / shortest L (scan-based RNN: limit {limit}x)",
      "",
      "| case | L | seconds | ratio | within limit |",
      "|---|---|---|---|---|",
    ]
    verdict = {True: "yes", False: "NO", None: "n/a"}
    for c in report["compile_ratios"]:
      lines.append(
        f"| {c['case']} | {c['short']} → {c['long']} | {_fmt(c['short_s'], 2)} → "
        f"{_fmt(c['long_s'], 2)} | {_fmt(c['ratio'], 2)} | {verdict[c['within_limit']]} |"
      )
  return "\n".join(lines) + "\n"


def _define_flags() -> None:
  """The script's flags, defined only when it runs as a script (tests import the module,
  and absl's flags are global: two scripts' ``--out`` would clash)."""
  flags.DEFINE_enum(
    "suite",
    "step",
    ["step", "seeds"],
    "step: every case's step time, hard vs soft, compile ratios; seeds: vmapped seeds vs the "
    "same seeds one after another (--seed_counts).",
  )
  flags.DEFINE_list("seed_counts", [str(n) for n in SEED_COUNTS], "Seed counts of --suite=seeds.")
  flags.DEFINE_list("cases", list(CASES), f"Cases to run; valid: {list(CASES)}.")
  flags.DEFINE_list("lengths", ["12", "48"], "Maximum source lengths L.")
  flags.DEFINE_enum("preset", "default", list(PRESETS), "Model sizes: configs/default.py.")
  flags.DEFINE_integer("batch", None, "Batch size (default: the preset's batch_size).")
  flags.DEFINE_integer("num_seeds", 1, "Seeds vmapped together in the step.")
  flags.DEFINE_integer("warmup", 3, "Untimed steps after the first.")
  flags.DEFINE_integer("blocks", 5, "Timed blocks per case (median reported).")
  flags.DEFINE_integer("steps_per_block", 10, "Steps per timed block.")
  flags.DEFINE_string("out", "results/bench_train", "Writes PREFIX.json and PREFIX.md.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  settings = Settings(
    batch_size=flags.FLAGS.batch or default_config.get_config(flags.FLAGS.preset).batch_size,
    preset=flags.FLAGS.preset,
    num_seeds=flags.FLAGS.num_seeds,
    warmup=flags.FLAGS.warmup,
    blocks=flags.FLAGS.blocks,
    steps_per_block=flags.FLAGS.steps_per_block,
  )
  print(f"load average {os.getloadavg()}, {os.cpu_count()} cores, cases {flags.FLAGS.cases}")
  lengths = [int(x) for x in flags.FLAGS.lengths]
  log = lambda s: print(s, flush=True)
  if flags.FLAGS.suite == "seeds":
    seed_counts = [int(x) for x in flags.FLAGS.seed_counts]
    report = run_seed_scaling(flags.FLAGS.cases, lengths, seed_counts, settings, log=log)
    text = seeds_to_markdown(report)
  else:
    report = run_benchmark(flags.FLAGS.cases, lengths, settings, log=log)
    text = to_markdown(report)
  print(text)
  os.makedirs(os.path.dirname(flags.FLAGS.out) or ".", exist_ok=True)
  with open(flags.FLAGS.out + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(flags.FLAGS.out + ".md", "w") as f:
    f.write(text)
  print(f"wrote {flags.FLAGS.out}.json and {flags.FLAGS.out}.md")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
