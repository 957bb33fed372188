r"""The cost row of the soft-vs-hard table, measured: one decoder step's cross-attention.

One query per example (a decoder step at inference) attends ``S`` source positions with keys of
width ``D`` and values of width ``Dv``, with attnlab's own primitives, ``vmap``-ed over a small
batch:

  soft             ``attnlab.soft_attention``: scores ``K q`` (O(S·D)), softmax (O(S)), the
                   weighted sum of every value (O(S·Dv)).
  hard             ``attnlab.hard_attention(mode="argmax")``: the same scores, an argmax
                   (O(S)) and a gather of one value (O(Dv)).

and the backward pass of training (a cotangent on the context; the gradients the layer below
needs):

  soft             gradient w.r.t. q, K and V: every value gets ``w_s · dctx`` (O(S·Dv)).
  hard_dense       REINFORCE as autodiff writes it: ``hard_attention(mode="sample")``, loss
                   ``<ctx, dctx> + stop_gradient(r - b) · log p(z)``, gradient w.r.t. q, K,
                   V. JAX differentiates the gather into a dense ``[S, Dv]`` value gradient
                   (zeros but one row): an O(S·Dv) write that the estimator does not need.
  hard_index       the REINFORCE surrogate's own backward: the scores' and the
                   log-probability's (O(S·D)), w.r.t. q and K; the chosen value's gradient
                   is the O(Dv) cotangent itself (what a sparse update of row z would use).

The scores are O(S·D) for both kinds; only the value aggregation shrinks, from O(S·Dv) to
O(Dv). So hard attention can be cheaper only where the aggregation dominates, i.e. when
``Dv`` is not small beside ``D`` and ``S`` is large enough to leave the fixed per-call costs
behind; the model ratio of work (or memory traffic) is ``(S·D + S·Dv) / (S·D + Dv)`` → ``1 +
Dv/D``.

Time: every function compiled first (``jax.jit``, ``lower().compile()``), then ``--rounds``
interleaved rounds, each calling every function ``--reps`` times (``block_until_ready``); the
minimum over all calls. Memory: the compiled program's own accounting
(``Compiled.memory_analysis()``): ``alloc`` = temporaries + outputs, what the step allocates
beyond its inputs (q, K, V: the same for every kind). Ratios are soft / hard, one process.

  python -m experiments.bench_cost --out=results/bench_cost
  python -m experiments.bench_cost --lengths=64,1024 --value_dims=64 --rounds=2 --out=/tmp/c
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags

import attnlab
from attnlab.training import rundir
from experiments import cli

# Functions of one case, in table order.
INFERENCE = ("soft", "hard")
TRAINING = ("soft_train", "hard_dense_train", "hard_index_train")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to measure.

  Attributes:
    lengths: source lengths ``S``.
    value_dims: value widths ``Dv``.
    key_dim: query/key width ``D``.
    batch: examples (one query each).
    rounds: interleaved timing rounds.
    reps: calls of every function per round.
    max_value_gib: skip cases whose values ``[B, S, Dv]`` float32 exceed this.
  """

  lengths: tuple[int, ...] = (64, 256, 1024, 4096, 16384, 65536)
  value_dims: tuple[int, ...] = (64, 512, 4096)
  key_dim: int = 64
  batch: int = 1
  rounds: int = 5
  reps: int = 3
  max_value_gib: float = 1.0

  def __post_init__(self):
    for name in ("key_dim", "batch", "rounds", "reps"):
      cli.require_int(name, getattr(self, name))
    for name in ("lengths", "value_dims"):
      values = getattr(self, name)
      if not values:
        raise ValueError(f"{name}={values!r} must be a non-empty tuple of ints >= 1.")
      for i, value in enumerate(values):
        cli.require_int(f"{name}[{i}]", value)
    if not self.max_value_gib > 0:
      raise ValueError(f"max_value_gib={self.max_value_gib!r} must be > 0.")


def _functions() -> dict[str, Callable[..., Any]]:
  """name -> f(q [B, D], k [B, S, D], v [B, S, Dv], cot [B, Dv], adv [B], key)."""

  def soft(q, k, v):
    return jax.vmap(lambda q, k, v: attnlab.soft_attention(q[None], k, v)[0][0])(q, k, v)

  def hard(q, k, v):
    out = jax.vmap(lambda q, k, v: attnlab.hard_attention(None, q[None], k, v, mode="argmax"))(
      q, k, v
    )
    return out.context[:, 0]

  def sampled(q, k, v, key):
    keys = jax.random.split(key, q.shape[0])
    one = lambda q, k, v, key: attnlab.hard_attention(key, q[None], k, v, mode="sample")
    out = jax.vmap(one)(q, k, v, keys)
    return out.context[:, 0], out.log_prob[:, 0]

  def soft_train(q, k, v, cot, adv, key):
    del adv, key
    return jax.grad(lambda q, k, v: jnp.sum(soft(q, k, v) * cot), argnums=(0, 1, 2))(q, k, v)

  def hard_dense_train(q, k, v, cot, adv, key):
    def surrogate(q, k, v):
      context, log_prob = sampled(q, k, v, key)
      return jnp.sum(context * cot) + jnp.sum(jax.lax.stop_gradient(adv) * log_prob)

    return jax.grad(surrogate, argnums=(0, 1, 2))(q, k, v)

  def hard_index_train(q, k, v, cot, adv, key):
    def surrogate(q, k):
      context, log_prob = sampled(q, k, v, key)
      return jnp.sum(jax.lax.stop_gradient(adv) * log_prob), context

    (grad_q, grad_k), context = jax.grad(surrogate, argnums=(0, 1), has_aux=True)(q, k)
    # The chosen value's gradient is the cotangent itself: [B, Dv], no [B, S, Dv] array.
    return grad_q, grad_k, cot + 0.0 * context

  return {
    "soft": lambda q, k, v, cot, adv, key: soft(q, k, v),
    "hard": lambda q, k, v, cot, adv, key: hard(q, k, v),
    "soft_train": soft_train,
    "hard_dense_train": hard_dense_train,
    "hard_index_train": hard_index_train,
  }


def _inputs(batch: int, length: int, key_dim: int, value_dim: int):
  keys = jax.random.split(jax.random.key(0), 5)
  q = jax.random.normal(keys[0], (batch, key_dim), jnp.float32)
  k = jax.random.normal(keys[1], (batch, length, key_dim), jnp.float32)
  v = jax.random.normal(keys[2], (batch, length, value_dim), jnp.float32)
  cot = jax.random.normal(keys[3], (batch, value_dim), jnp.float32)
  adv = jax.random.normal(keys[4], (batch,), jnp.float32)
  return (q, k, v, cot, adv, jax.random.key(1))


def _memory(compiled) -> dict[str, int | None]:
  analysis = compiled.memory_analysis()
  if analysis is None:  # Some backends do not report it.
    return {"temp_bytes": None, "output_bytes": None, "argument_bytes": None, "alloc_bytes": None}
  temp, output = analysis.temp_size_in_bytes, analysis.output_size_in_bytes
  return {
    "temp_bytes": temp,
    "output_bytes": output,
    "argument_bytes": analysis.argument_size_in_bytes,
    "alloc_bytes": temp + output,
  }


def _ratio(a, b):
  return a / b if a is not None and b else None


def model_ratio(length: int, key_dim: int, value_dim: int) -> float:
  """Work (and memory traffic) of soft over hard: ``(S·D + S·Dv) / (S·D + Dv)``."""
  return (length * key_dim + length * value_dim) / (length * key_dim + value_dim)


def measure_case(settings: Settings, length: int, value_dim: int) -> dict[str, Any]:
  """Times and memory of every function at one ``(S, Dv)``, and the soft / hard ratios."""
  args = _inputs(settings.batch, length, settings.key_dim, value_dim)
  compiled = {}
  row: dict[str, Any] = dict(length=length, value_dim=value_dim, key_dim=settings.key_dim,
                             batch=settings.batch)  # fmt: skip
  for name, fn in _functions().items():
    compiled[name] = jax.jit(fn).lower(*args).compile()
    row[name] = _memory(compiled[name])
    jax.block_until_ready(compiled[name](*args))  # warm-up, not timed
  best = {name: float("inf") for name in compiled}
  names = list(compiled)
  for r in range(settings.rounds):
    order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no fixed position
    for name in order:
      for _ in range(settings.reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled[name](*args))
        best[name] = min(best[name], time.perf_counter() - start)
  for name in names:
    row[name]["ms"] = 1e3 * best[name]
  row["time_ratio"] = _ratio(row["soft"]["ms"], row["hard"]["ms"])
  row["alloc_ratio"] = _ratio(row["soft"]["alloc_bytes"], row["hard"]["alloc_bytes"])
  for hard in ("hard_dense_train", "hard_index_train"):
    suffix = hard.removesuffix("_train")
    row[f"train_time_ratio_{suffix}"] = _ratio(row["soft_train"]["ms"], row[hard]["ms"])
    row[f"train_alloc_ratio_{suffix}"] = _ratio(
      row["soft_train"]["alloc_bytes"], row[hard]["alloc_bytes"]
    )
  row["model_ratio"] = model_ratio(length, settings.key_dim, value_dim)
  return row


def run_benchmark(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Every ``(S, Dv)`` of ``settings``: the rows of :func:`measure_case` and what was skipped."""
  rows, skipped = [], []
  start = time.perf_counter()
  for value_dim in settings.value_dims:
    for length in settings.lengths:
      gib = 4 * settings.batch * length * value_dim / 2**30
      if gib > settings.max_value_gib:
        skipped.append(dict(length=length, value_dim=value_dim, value_gib=gib))
        log(f"S={length} Dv={value_dim}: skipped (values {gib:.2f} GiB > --max_value_gib)")
        continue
      row = measure_case(settings, length, value_dim)
      rows.append(row)
      log(
        f"S={length} Dv={value_dim}: soft {row['soft']['ms']:.3f} ms, hard "
        f"{row['hard']['ms']:.3f} ms (x{row['time_ratio']:.2f}); train soft "
        f"{row['soft_train']['ms']:.3f}, hard dense {row['hard_dense_train']['ms']:.3f}, hard "
        f"index {row['hard_index_train']['ms']:.3f} ms"
      )
  return dict(
    settings=dataclasses.asdict(settings),
    rows=rows,
    skipped=skipped,
    seconds=time.perf_counter() - start,
    hardware=(
      f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, JAX "
      f"{jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind})"
    ),
    load_average=list(os.getloadavg()),
  )


_fmt = rundir.format_report_number


def _kib(x) -> str:
  return "—" if x is None else f"{x / 1024:,.0f}"


def findings(report: dict[str, Any]) -> list[str]:
  """Where hard attention is cheaper, per value width, from the measured rows."""
  lines = []
  for value_dim in report["settings"]["value_dims"]:
    rows = [r for r in report["rows"] if r["value_dim"] == value_dim]
    if not rows:
      continue
    cheaper = [r["length"] for r in rows if r["time_ratio"] and r["time_ratio"] >= 1.5]
    largest = rows[-1]
    where = (
      f"hard is at least 1.5x faster at inference from S = {min(cheaper):,}"
      if cheaper
      else "hard is never 1.5x faster at inference"
    )
    lines.append(
      f"- Dv = {value_dim}: {where}; at S = {largest['length']:,} soft/hard time "
      f"{_fmt(largest['time_ratio'], 2)} (work model {_fmt(largest['model_ratio'], 2)}), memory "
      f"allocated {_fmt(largest['alloc_ratio'], 2)}; training soft / hard (REINFORCE, dense dV) "
      f"{_fmt(largest['train_time_ratio_hard_dense'], 2)}, soft / hard (index-only backward) "
      f"{_fmt(largest['train_time_ratio_hard_index'], 2)}."
    )
  return lines


def to_markdown(report: dict[str, Any]) -> str:
  """The tables of ``bench_cost.md``."""
  s = report["settings"]
  lines = [
    "# The cost row, measured: one decoder step's cross-attention, soft vs hard",
    "",
    f"- One query per example, batch {s['batch']}, key width D = {s['key_dim']}, float32;"
    f" attnlab.soft_attention vs attnlab.hard_attention (argmax; REINFORCE training samples)."
    f" Time: min over {s['rounds']} interleaved rounds x {s['reps']} calls, compiled, "
    "block_until_ready. `alloc`: temporaries + outputs of the compiled program"
    " (memory_analysis), KiB; `inputs` (q, K, V and the cotangents), the same for both"
    " kinds, KiB: at inference K and V must be held whichever kind reads them.",
    "- Ratios are soft / hard (> 1: hard is cheaper). `model`: (S·D + S·Dv) / (S·D + Dv),"
    " the work ratio if only the value aggregation differs (scores are O(S·D) for both).",
    "- Training: `dense` is REINFORCE differentiated by autodiff through the gather (a dense"
    " [S, Dv] value gradient, zeros but one row); `index` is the surrogate's own backward"
    " (scores and log-probability; the chosen value's gradient is the [Dv] cotangent).",
    f"- Hardware: {report['hardware']}; load average at the end {report['load_average']};"
    f" {report['seconds']:.0f} s.",
    "",
    "| S | Dv | inputs | soft ms | hard ms | time soft/hard | model | soft alloc | hard alloc "
    "| alloc soft/hard | train soft ms | train hard dense ms | train hard index ms "
    "| train soft/dense | train soft/index | train alloc soft/dense | train alloc soft/index |",
    "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
  ]
  for r in report["rows"]:
    lines.append(
      f"| {r['length']:,} | {r['value_dim']} | {_kib(r['soft']['argument_bytes'])} | "
      f"{_fmt(r['soft']['ms'], 3)} | "
      f"{_fmt(r['hard']['ms'], 3)} | {_fmt(r['time_ratio'], 2)} | {_fmt(r['model_ratio'], 2)} | "
      f"{_kib(r['soft']['alloc_bytes'])} | {_kib(r['hard']['alloc_bytes'])} | "
      f"{_fmt(r['alloc_ratio'], 2)} | {_fmt(r['soft_train']['ms'], 3)} | "
      f"{_fmt(r['hard_dense_train']['ms'], 3)} | {_fmt(r['hard_index_train']['ms'], 3)} | "
      f"{_fmt(r['train_time_ratio_hard_dense'], 2)} | "
      f"{_fmt(r['train_time_ratio_hard_index'], 2)} | "
      f"{_fmt(r['train_alloc_ratio_hard_dense'], 2)} | "
      f"{_fmt(r['train_alloc_ratio_hard_index'], 2)} |"
    )
  if report["skipped"]:
    lines += ["", "Skipped (values over --max_value_gib): " + ", ".join(
      f"S={x['length']:,} Dv={x['value_dim']} ({x['value_gib']:.1f} GiB)" for x in report["skipped"]
    )]  # fmt: skip
  lines += ["", "## Where hard attention is cheaper", "", *findings(report)]
  return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], prefix: str) -> tuple[str, str]:
  """Writes ``PREFIX.json`` and ``PREFIX.md``; returns their paths."""
  os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
  json_path, md_path = f"{prefix}.json", f"{prefix}.md"
  with open(json_path, "w") as f:
    json.dump(report, f, indent=1)
  with open(md_path, "w") as f:
    f.write(to_markdown(report))
  return json_path, md_path


def _define_flags() -> None:
  """The script's flags, defined only when it runs as a script (tests import the module,
  and absl's flags are global: two scripts' ``--out`` would clash)."""
  flags.DEFINE_list("lengths", None, "Source lengths S (default 64 ... 65536, x4).")
  flags.DEFINE_list("value_dims", None, "Value widths Dv (default 64,512,4096).")
  flags.DEFINE_integer("key_dim", Settings.key_dim, "Query/key width D.")
  flags.DEFINE_integer("batch", Settings.batch, "Examples (one query each).")
  flags.DEFINE_integer("rounds", Settings.rounds, "Interleaved timing rounds.")
  flags.DEFINE_integer("reps", Settings.reps, "Calls of every function per round.")
  flags.DEFINE_float(
    "max_value_gib", Settings.max_value_gib, "Skip cases whose values [B, S, Dv] exceed this."
  )
  flags.DEFINE_string("out", "results/bench_cost", "Writes PREFIX.json and PREFIX.md.")


def _ints(values: Sequence[str] | None, default: tuple[int, ...], name: str) -> tuple[int, ...]:
  if values is None:
    return default
  try:
    parsed = tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{name} must be integers, got {values}.") from None
  if not parsed or min(parsed) < 1:
    raise app.UsageError(f"--{name} must be positive integers, got {values}.")
  return parsed


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  settings = Settings(
    lengths=_ints(flags.FLAGS.lengths, Settings.lengths, "lengths"),
    value_dims=_ints(flags.FLAGS.value_dims, Settings.value_dims, "value_dims"),
    key_dim=flags.FLAGS.key_dim,
    batch=flags.FLAGS.batch,
    rounds=flags.FLAGS.rounds,
    reps=flags.FLAGS.reps,
    max_value_gib=flags.FLAGS.max_value_gib,
  )
  report = run_benchmark(settings)
  for line in findings(report):
    print(line)
  for path in write_report(report, flags.FLAGS.out):
    print(path)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
