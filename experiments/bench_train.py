r"""Training-step benchmark: compile time and steps/s of soft vs hard attention (issue 6).

For each case (model family x attention method) and source length ``L``, on the copy task
with sources of 1..L tokens (targets L+1 with EOS), this script builds the models of
``configs/default.py`` and its own train step (optax Adam with the default clipping and peak
learning rate, ``jax.value_and_grad(objectives.loss_fn, has_aux=True)``, state donated),
independent of :mod:`attnlab.train`, and measures

* compile: ``jax.jit(step).lower(...)`` (trace + lower) and ``.compile()`` (XLA) wall and
  process-CPU seconds, each the minimum over ``--compile_reps`` fresh lowerings;
* first run: the first call of the compiled step (one-off allocation), apart from compile;
* steady state: after ``--warmup`` steps, ``--blocks`` blocks of ``--steps_per_block`` steps
  each ending in ``block_until_ready``; ms/step is the median (and the minimum) over blocks.
  Blocks of all cases of one length are interleaved, so load drifts hit every case alike.

Ratios: hard / soft step time (same family and length; issue 6 asks for <= 1) and
compile(longest L) / compile(shortest L) (the scan-based RNN must stay within 1.5x).

Main cases: ``rnn_soft``, ``rnn_hard`` (REINFORCE, K=1, no baseline), ``rnn_hard_enum``
(exact enumerated gradient), ``transformer_soft``, ``transformer_hard`` (REINFORCE, K=1, no
baseline, reward-to-go credit: per-step credit is biased for a Transformer decoder and the
config parser rejects it). ``--breakdown`` adds ablations that say what hard attention's
extra cost is made of (see ``BREAKDOWN`` and ``ATTRIBUTION``): they wrap ``model.apply`` and
never change the modules.

  python -m experiments.bench_train --out=results/bench_train
  python -m experiments.bench_train --preset=smoke --lengths=4,8 --blocks=2 --out=/tmp/bt

The header records the load average: on a shared machine rerun on a quiet one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags

from attnlab import estimators, modules, tasks
from attnlab.training import config as config_lib
from attnlab.training import objectives
from configs import default as default_config

# Longest / shortest compile time allowed for the scan-based RNN (issue 6).
COMPILE_RATIO_LIMIT = 1.5


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmarked training step.

  Attributes:
    family: ``config.model.family`` ("rnn" | "transformer").
    attention: ``config.model.attention``.
    gradient: ``config.estimator.gradient`` ("reinforce" | "enumerate").
    reward: ``config.estimator.reward`` ("per_step" | "reward_to_go").
    feedback: ``config.model.rnn.feedback``, or ``None`` for the default.
    reference: the soft case this step time is divided by (``None``: no ratio).
    drop_soft_logits: diagnostic. Replaces ``Seq2SeqOutput.soft_logits`` by
      ``stop_gradient(logits)``, so XLA drops the expected-context readout (RNN) or the
      second, soft decoder pass (Transformer). ``objectives.loss_fn`` already skips that
      work when neither the soft baseline nor expectation mixing is on, so the ablation
      should then cost the same as the full step (a check that nothing else computes it).
    selection: diagnostic ``attention_override`` (e.g. "argmax": no sampling, no RNG).
  """

  family: str
  attention: str
  gradient: str = "reinforce"
  reward: str = "per_step"
  feedback: str | None = None
  reference: str | None = None
  drop_soft_logits: bool = False
  selection: str | None = None


_TRANSFORMER_HARD = dict(reward="reward_to_go", reference="transformer_soft")

CASES = {
  "rnn_soft": Case("rnn", "soft"),
  "rnn_hard": Case("rnn", "hard", reference="rnn_soft"),
  "rnn_hard_enum": Case("rnn", "hard", gradient="enumerate", reference="rnn_soft"),
  "transformer_soft": Case("transformer", "soft"),
  "transformer_hard": Case("transformer", "hard", **_TRANSFORMER_HARD),
}

BREAKDOWN = {
  "rnn_hard-no_soft_logits": Case("rnn", "hard", reference="rnn_soft", drop_soft_logits=True),
  "rnn_hard-no_soft_logits-argmax": Case(
    "rnn", "hard", reference="rnn_soft", drop_soft_logits=True, selection="argmax"
  ),
  # Feedback "none": no expected context is fed back, so hard attention's context is a
  # pure gather and soft attention's a pure weighted sum: the comparison.
  "rnn_soft-feedback_none": Case("rnn", "soft", feedback="none"),
  "rnn_hard-feedback_none-no_soft_logits": Case(
    "rnn", "hard", feedback="none", reference="rnn_soft-feedback_none", drop_soft_logits=True
  ),
  "transformer_hard-no_soft_logits": Case(
    "transformer", "hard", drop_soft_logits=True, **_TRANSFORMER_HARD
  ),
  "transformer_hard-no_soft_logits-argmax": Case(
    "transformer", "hard", drop_soft_logits=True, selection="argmax", **_TRANSFORMER_HARD
  ),
}

ALL_CASES = {**CASES, **BREAKDOWN}

# (part, case, minus case): step-time differences reported with --breakdown. "soft_logits":
# the expected-context readout (RNN) or the second, soft decoder pass (Transformer), forward
# and backward; "sampling": RNG and categorical draw vs argmax; "rest of hard": categorical
# stats, log_prob, gather, the K=1 vmap, the surrogate, over soft attention's step.
ATTRIBUTION = (
  ("soft_logits", "rnn_hard", "rnn_hard-no_soft_logits"),
  ("sampling", "rnn_hard-no_soft_logits", "rnn_hard-no_soft_logits-argmax"),
  ("rest of hard", "rnn_hard-no_soft_logits-argmax", "rnn_soft"),
  ("gather vs weighted sum", "rnn_hard-feedback_none-no_soft_logits", "rnn_soft-feedback_none"),
  ("soft_logits", "transformer_hard", "transformer_hard-no_soft_logits"),
  ("sampling", "transformer_hard-no_soft_logits", "transformer_hard-no_soft_logits-argmax"),
  ("rest of hard", "transformer_hard-no_soft_logits-argmax", "transformer_soft"),
)


PRESETS = ("default", "smoke")  # configs/default.py presets with the RNN sizes used.


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the benchmark runs.

  Attributes:
    batch_size: examples per step (``--batch`` defaults to the preset's ``batch_size``).
    preset: ``configs/default.py`` preset giving the model sizes (one of :data:`PRESETS`).
    seed: seed of params, data and attention samples.
    num_batches: distinct pre-sampled device batches, cycled (host sampling is not timed).
    compile_reps: fresh lowerings + compiles per case; the minimum is kept.
    warmup: untimed steps after the first run.
    blocks: timed blocks per case; ms/step is their median.
    steps_per_block: steps per timed block (one ``block_until_ready`` at its end).
  """

  batch_size: int
  preset: str = "default"
  seed: int = 0
  num_batches: int = 4
  compile_reps: int = 1
  warmup: int = 3
  blocks: int = 5
  steps_per_block: int = 10

  def __post_init__(self):
    if self.preset not in PRESETS:
      raise ValueError(f"preset={self.preset!r} is not valid; choose one of {list(PRESETS)}.")
    for field in dataclasses.fields(self):
      value, low = getattr(self, field.name), 0 if field.name in ("seed", "warmup") else 1
      if field.name != "preset" and (not isinstance(value, int) or value < low):
        raise ValueError(f"{field.name}={value!r} must be an int >= {low}.")


def get_case(name: str) -> Case:
  """The :class:`Case` called ``name``; the error lists the valid names."""
  if name not in ALL_CASES:
    raise ValueError(f"unknown benchmark case {name!r}; valid: {list(ALL_CASES)}.")
  return ALL_CASES[name]


def run_config(case: Case, length: int, batch_size: int, preset: str) -> config_lib.RunConfig:
  """The parsed run config of ``case`` on copy with sources of 1..``length`` tokens.

  Model sizes, optimiser and estimator defaults are those of ``configs/default.py``
  (``preset``); the Transformer family takes its score from the "transformer" preset.
  """
  if length < 1:
    raise ValueError(f"source length must be >= 1, got {length}.")
  config = default_config.get_config(preset)
  config.model.family = case.family
  config.model.attention = case.attention
  if case.family == "transformer":
    config.model.score = default_config.get_config("transformer").model.score
  if case.feedback is not None:
    config.model.rnn.feedback = case.feedback
  config.estimator.gradient = case.gradient
  config.estimator.reward = case.reward
  config.batch_size = batch_size
  config.task = "copy"
  # The OOD split is never sampled here; it only has to be valid (longer than training).
  config.task_overrides = ml_collections.ConfigDict(
    {"train_lengths": (1, length), "ood_lengths": (length + 1, length + 1)}
  )
  config.model.rnn.max_source_len = max(config.model.rnn.max_source_len, length + 1)
  return config_lib.parse_config(config)


@dataclasses.dataclass(frozen=True)
class _AblatedModel:
  """``model.apply`` with the diagnostic ablations of a :class:`Case` (see there)."""

  model: Any
  drop_soft_logits: bool
  selection: str | None

  def apply(self, params, *args, **kwargs):
    if self.selection is not None:
      kwargs["attention_override"] = self.selection
    out = self.model.apply(params, *args, **kwargs)
    if self.drop_soft_logits and out.soft_logits is not None:
      out = out._replace(soft_logits=jax.lax.stop_gradient(out.logits))
    return out


class StepState(NamedTuple):
  """What the benchmarked step reads and writes (donated)."""

  step: jax.Array
  params: Any
  opt_state: Any
  objective_state: objectives.ObjectiveState


def make_optimizer(run: config_lib.RunConfig) -> optax.GradientTransformation:
  """Adam at the config's peak learning rate, with its global-norm clipping (if any)."""
  adam = optax.adam(run.optimizer.learning_rate)
  if run.optimizer.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(run.optimizer.grad_clip_norm), adam)
  return adam


def make_train_step(
  model: Any, objective: objectives.ObjectiveConfig, optimizer: optax.GradientTransformation
) -> Callable[[StepState, tasks.Batch, jax.Array], tuple[StepState, dict[str, jax.Array]]]:
  """One update: ``(state, batch, base_key) -> (state, metrics)``; key = fold_in(base, step)."""

  def loss(params, batch, key, objective_state):
    return objectives.loss_fn(params, model, batch, key, objective, objective_state)

  def train_step(state: StepState, batch: tasks.Batch, base_key: jax.Array):
    key = jax.random.fold_in(base_key, state.step)
    (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(
      state.params, batch, key, state.objective_state
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(aux.metrics, loss=value, grad_norm=optax.global_norm(grads))
    return StepState(state.step + 1, params, opt_state, aux.state), metrics

  return train_step


class Bench(NamedTuple):
  """A case ready to compile and time."""

  name: str
  length: int
  run: config_lib.RunConfig
  step_fn: Callable[..., Any]
  state: StepState
  batches: list[tasks.Batch]
  key: jax.Array
  sample_ms: float


def build(name: str, length: int, settings: Settings) -> Bench:
  """Builds model, state and ``settings.num_batches`` fixed device batches of case ``name``."""
  case = get_case(name)
  if case.drop_soft_logits and case.attention != "hard":
    raise ValueError(f"case {name!r}: drop_soft_logits needs attention 'hard'.")
  run = run_config(case, length, settings.batch_size, settings.preset)
  batch_size, seed = settings.batch_size, settings.seed
  if case.drop_soft_logits and (
    run.objective.baseline is estimators.BaselineKind.SOFT or run.objective.mix_probability > 0
  ):
    raise ValueError(f"case {name!r}: soft_logits are needed by the soft baseline / mixing.")
  model = modules.build_model(run.model)
  ablated = _AblatedModel(model, case.drop_soft_logits, case.selection)
  optimizer = make_optimizer(run)
  task = run.task
  start = time.perf_counter()
  host = [
    task.sample(np.random.default_rng([seed, i]), batch_size, tasks.Split.TRAIN)
    for i in range(settings.num_batches)
  ]
  sample_ms = 1e3 * (time.perf_counter() - start) / settings.num_batches
  batches = [jax.device_put(b) for b in host]
  base_key = jax.random.key(seed)
  init_key, attention_key, step_key = jax.random.split(base_key, 3)
  first = batches[0]
  params = model.init(
    {"params": init_key, "attention": attention_key},
    first.inputs,
    first.input_lengths,
    tasks.decoder_inputs(first.targets),
  )
  objective_state = objectives.init_objective_state(
    run.objective, task.max_target_len(tasks.Split.TRAIN)
  )
  state = StepState(jax.numpy.int32(0), params, optimizer.init(params), objective_state)
  step_fn = make_train_step(ablated, run.objective, optimizer)
  return Bench(name, length, run, step_fn, state, batches, step_key, sample_ms)


def compile_step(bench: Bench, reps: int = 1) -> tuple[Any, dict[str, float]]:
  """Lowers and compiles the donated, jitted step ``reps`` times from scratch.

  Returns:
    ``(compiled, timings)``: the last executable and the minimum over reps of
    ``lower_s`` / ``compile_s`` (wall) and ``lower_cpu_s`` / ``compile_cpu_s`` (process CPU).
  """
  if reps < 1:
    raise ValueError(f"compile reps must be >= 1, got {reps}.")
  args = (bench.state, bench.batches[0], bench.key)
  best = {}
  compiled = None
  for _ in range(reps):
    jitted = jax.jit(bench.step_fn, donate_argnums=0)  # Fresh: no cached trace or executable.
    wall, cpu = time.perf_counter(), time.process_time()
    lowered = jitted.lower(*args)
    wall_l, cpu_l = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    wall_c, cpu_c = time.perf_counter(), time.process_time()
    now = dict(
      lower_s=wall_l - wall,
      lower_cpu_s=cpu_l - cpu,
      compile_s=wall_c - wall_l,
      compile_cpu_s=cpu_c - cpu_l,
    )
    best = {k: min(v, best.get(k, v)) for k, v in now.items()}
  return compiled, best


class _Timer:
  """Runs one case's compiled step and accumulates per-block step times."""

  def __init__(self, bench: Bench, compiled: Any):
    self.bench = bench
    self.compiled = compiled
    self.state = bench.state
    self.metrics = None
    self.count = 0
    self.block_ms: list[float] = []
    self.block_cpu_ms: list[float] = []

  def run(self, steps: int) -> None:
    batches = self.bench.batches
    for _ in range(steps):
      batch = batches[self.count % len(batches)]
      self.state, self.metrics = self.compiled(self.state, batch, self.bench.key)
      self.count += 1
    jax.block_until_ready((self.state, self.metrics))

  def first_run(self) -> float:
    start = time.perf_counter()
    self.run(1)
    return time.perf_counter() - start

  def timed_block(self, steps: int) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    self.run(steps)
    self.block_ms.append(1e3 * (time.perf_counter() - wall) / steps)
    self.block_cpu_ms.append(1e3 * (time.process_time() - cpu) / steps)


def _model_sizes(run: config_lib.RunConfig) -> dict[str, Any]:
  return {
    k: v.value if hasattr(v, "value") else v
    for k, v in dataclasses.asdict(run.model).items()
    if k.endswith(("_dim", "_layers", "heads")) or k in ("cell", "score", "feedback")
  }


def bench_length(
  names: Sequence[str], length: int, settings: Settings, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
  """Compiles every case at source length ``length``, then times them interleaved.

  Returns:
    One row per case: compile timings, ``first_run_s``, ``ms_per_step`` (median over
    blocks), ``ms_per_step_min``, ``cpu_ms_per_step``, ``steps_per_s``, the last step's
    ``loss``, ``finite`` and the model sizes.
  """
  timers, rows = [], []
  for name in names:
    bench = build(name, length, settings)
    compiled, timings = compile_step(bench, settings.compile_reps)
    timer = _Timer(bench, compiled)
    first_run_s = timer.first_run()
    timer.run(settings.warmup)
    log(
      f"  L={length} {name}: lower {timings['lower_s']:.2f}s, XLA {timings['compile_s']:.2f}s, "
      f"first run {first_run_s:.3f}s"
    )
    batch = bench.batches[0]
    rows.append(
      dict(
        case=name,
        **dataclasses.asdict(get_case(name)),
        length=length,
        source_shape=list(batch.inputs.shape),
        target_shape=list(batch.targets.shape),
        batch_size=settings.batch_size,
        objective=bench.run.objective.objective.value,
        model=_model_sizes(bench.run),
        sample_ms=bench.sample_ms,
        first_run_s=first_run_s,
        **timings,
      )
    )
    timers.append(timer)
  for _ in range(settings.blocks):  # Interleaved: load drifts hit every case alike.
    for timer in timers:
      timer.timed_block(settings.steps_per_block)
  for row, timer in zip(rows, timers, strict=True):
    median_ms = statistics.median(timer.block_ms)
    loss = float(timer.metrics["loss"])
    row.update(
      ms_per_step=median_ms,
      ms_per_step_min=min(timer.block_ms),
      cpu_ms_per_step=statistics.median(timer.block_cpu_ms),
      steps_per_s=1e3 / median_ms,
      loss=loss,
      finite=bool(np.isfinite(loss) and np.isfinite(float(timer.metrics["grad_norm"]))),
    )
    log(f"  L={length} {row['case']}: {median_ms:.2f} ms/step ({row['steps_per_s']:.1f} steps/s)")
  return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
  """``hard_over_soft`` = ms/step over that of ``reference`` at the same length (in place)."""
  by_key = {(r["case"], r["length"]): r for r in rows}
  for row in rows:
    ref = by_key.get((row["reference"], row["length"]))
    row["hard_over_soft"] = row["ms_per_step"] / ref["ms_per_step"] if ref else None
    row["hard_over_soft_min"] = row["ms_per_step_min"] / ref["ms_per_step_min"] if ref else None


def compile_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per case: compile at the longest over the shortest length (wall and CPU, XLA and total)."""
  out = []
  for name in dict.fromkeys(r["case"] for r in rows):
    mine = sorted((r for r in rows if r["case"] == name), key=lambda r: r["length"])
    if len(mine) < 2:
      continue
    short, long = mine[0], mine[-1]
    ratio = {k: long[k] / max(short[k], 1e-9) for k in ("compile_s", "compile_cpu_s")}
    total = lambda r: r["lower_s"] + r["compile_s"]
    ratio["total_s"] = total(long) / total(short)
    scan = get_case(name).family == "rnn"
    out.append(
      dict(
        case=name,
        short=short["length"],
        long=long["length"],
        short_compile_s=short["compile_s"],
        long_compile_s=long["compile_s"],
        short_total_s=total(short),
        long_total_s=total(long),
        ratio=ratio,
        scan_based=scan,
        within_limit=ratio["compile_cpu_s"] <= COMPILE_RATIO_LIMIT if scan else None,
        within_limit_wall=ratio["total_s"] <= COMPILE_RATIO_LIMIT if scan else None,
      )
    )
  return out


def attribution(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Step-time differences of :data:`ATTRIBUTION` where both cases were run (ms/step)."""
  by_key = {(r["case"], r["length"]): r for r in rows}
  out = []
  for length in sorted({r["length"] for r in rows}):
    for label, plus, minus in ATTRIBUTION:
      a, b = by_key.get((plus, length)), by_key.get((minus, length))
      if a and b:
        out.append(
          dict(
            length=length,
            part=label,
            case=plus,
            minus=minus,
            delta_ms=a["ms_per_step"] - b["ms_per_step"],
            delta_min_ms=a["ms_per_step_min"] - b["ms_per_step_min"],
            share_of_case=(a["ms_per_step"] - b["ms_per_step"]) / a["ms_per_step"],
          )
        )
  return out


def run_benchmark(
  names: Sequence[str],
  lengths: Sequence[int],
  settings: Settings,
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """The whole benchmark; returns the JSON report (``rows``, ratios, attribution, header).

  A throw-away compile of the first case at a tiny length runs first, so that one-off
  process costs (LLVM start-up, first traces) are not charged to the first length.
  """
  names = list(names)
  for name in names:
    get_case(name)
  header = dict(
      jax=jax.__version__, flax=flax.__version__, optax=optax.__version__,
      backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
      cpu_count=os.cpu_count(), machine=platform.machine(),
      date=time.strftime("%Y-%m-%d %H:%M:%S"), load_average=list(os.getloadavg()),
      lengths=list(lengths), **dataclasses.asdict(settings),
      statistic="median over blocks (min also given)", compile_ratio_limit=COMPILE_RATIO_LIMIT,
  )  # fmt: skip
  warm = dataclasses.replace(settings, batch_size=2, num_batches=1, compile_reps=1)
  compile_step(build(names[0], 2, warm))
  rows = []
  for length in lengths:
    log(f"source length {length}")
    rows += bench_length(names, length, settings, log)
  add_ratios(rows)
  return dict(
    header, load_average_end=list(os.getloadavg()), rows=rows,
    compile_ratios=compile_ratios(rows), attribution=attribution(rows),
  )  # fmt: skip


def _fmt(x, digits=2):
  return "—" if x is None else f"{x:.{digits}f}"


def to_markdown(report: dict[str, Any]) -> str:
  """Markdown tables of a :func:`run_benchmark` report."""
  load, load_end = (
    ", ".join(f"{x:.1f}" for x in report[k]) for k in ("load_average", "load_average_end")
  )
  sizes = {}
  for r in report["rows"]:
    sizes.setdefault(r["family"], r["model"])
  lines = [
    f"## Training-step benchmark ({report['backend']}, {report['cpu_count']} cores, jax "
    f"{report['jax']}, {report['date']}, load average 1/5/15 min: {load} at start, "
    f"{load_end} at end)",
    "",
    f"Copy task, sources of 1..L tokens, batch {report['batch_size']}, preset "
    f"`{report['preset']}`; {report['blocks']} blocks x {report['steps_per_block']} steps after "
    f"{report['warmup']} warm-up steps; ms/step = median over blocks (min in brackets); "
    f"compile = min over {report['compile_reps']} lowering(s). Sizes: "
    + "; ".join(f"{fam} {s}" for fam, s in sizes.items()),
    "",
    "| case | L | objective | lower s | XLA compile s | first run s | ms/step | steps/s "
    "| ÷ soft | loss |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in report["rows"]:
    ratio = (
      ""
      if r["hard_over_soft"] is None
      else (f"{r['hard_over_soft']:.2f} ({r['hard_over_soft_min']:.2f})")
    )
    lines.append(
      f"| {r['case']} | {r['length']} | {r['objective']} | {_fmt(r['lower_s'])} | "
      f"{_fmt(r['compile_s'])} | {_fmt(r['first_run_s'], 3)} | {_fmt(r['ms_per_step'])} "
      f"({_fmt(r['ms_per_step_min'])}) | {_fmt(r['steps_per_s'], 1)} | {ratio} | "
      f"{_fmt(r['loss'], 3)} |"
    )
  if report["compile_ratios"]:
    limit = report["compile_ratio_limit"]
    lines += [
      "",
      f"### Compile time, longest / shortest L (scan-based RNN: limit {limit}x)",
      "",
      "| case | L | XLA compile s | lower+compile s | ratio XLA wall | ratio XLA CPU "
      "| ratio total wall | within limit (XLA CPU) |",
      "|---|---|---|---|---|---|---|---|",
    ]
    for c in report["compile_ratios"]:
      verdict = {True: "yes", False: "NO", None: "n/a"}
      ok = f"{verdict[c['within_limit']]} (wall: {verdict[c['within_limit_wall']]})"
      lines.append(
        f"| {c['case']} | {c['short']} → {c['long']} | {_fmt(c['short_compile_s'])} → "
        f"{_fmt(c['long_compile_s'])} | {_fmt(c['short_total_s'])} → {_fmt(c['long_total_s'])} "
        f"| {_fmt(c['ratio'].get('compile_s'))} | {_fmt(c['ratio'].get('compile_cpu_s'))} | "
        f"{_fmt(c['ratio']['total_s'])} | {ok} |"
      )
  if report["attribution"]:
    lines += [
      "",
      "### Where hard attention's extra step time goes (differences of ms/step)",
      "",
      "| L | part | case − case | Δ ms/step (Δ of mins) | share of case |",
      "|---|---|---|---|---|",
    ]
    for a in report["attribution"]:
      lines.append(
        f"| {a['length']} | {a['part']} | {a['case']} − {a['minus']} | {_fmt(a['delta_ms'])} "
        f"({_fmt(a['delta_min_ms'])}) | {100 * a['share_of_case']:.0f}% |"
      )
  return "\n".join(lines) + "\n"


_CASES = flags.DEFINE_list("cases", list(CASES), f"Cases to run; valid: {list(ALL_CASES)}.")
_BREAKDOWN = flags.DEFINE_bool(
  "breakdown", True, f"Also run the ablations {list(BREAKDOWN)} (what hard's cost is made of)."
)
_LENGTHS = flags.DEFINE_list("lengths", ["12", "48"], "Maximum source lengths L.")
_PRESET = flags.DEFINE_enum("preset", "default", list(PRESETS), "Model sizes: configs/default.py.")
_BATCH = flags.DEFINE_integer("batch", None, "Batch size (default: the preset's batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of params, data and attention samples.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Distinct pre-sampled batches, cycled.")
_COMPILE_REPS = flags.DEFINE_integer("compile_reps", 1, "Fresh compiles per case (min kept).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after the first run.")
_BLOCKS = flags.DEFINE_integer("blocks", 5, "Timed blocks per case (median reported).")
_STEPS_PER_BLOCK = flags.DEFINE_integer("steps_per_block", 10, "Steps per timed block.")
_OUT = flags.DEFINE_string("out", "results/bench_train", "Writes PREFIX.json and PREFIX.md.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  names = list(dict.fromkeys(list(_CASES.value) + (list(BREAKDOWN) if _BREAKDOWN.value else [])))
  settings = Settings(
      batch_size=_BATCH.value or default_config.get_config(_PRESET.value).batch_size,
      preset=_PRESET.value, seed=_SEED.value, num_batches=_NUM_BATCHES.value,
      compile_reps=_COMPILE_REPS.value, warmup=_WARMUP.value, blocks=_BLOCKS.value,
      steps_per_block=_STEPS_PER_BLOCK.value,
  )  # fmt: skip
  print(f"load average {os.getloadavg()}, {os.cpu_count()} cores, cases {names}", flush=True)
  report = run_benchmark(names, [int(x) for x in _LENGTHS.value], settings,
                         log=lambda s: print(s, flush=True))  # fmt: skip
  text = to_markdown(report)
  print(text)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(_OUT.value + ".md", "w") as f:
    f.write(text)
  print(f"wrote {_OUT.value}.json and {_OUT.value}.md")


if __name__ == "__main__":
  app.run(main)
