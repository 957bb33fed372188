r"""Attention benchmark: attnlab vs jax.nn / flax.linen, time, GFLOP/s and peak memory.

One process, compile and warm-up excluded, median of ``--reps`` timed calls (each
``block_until_ready``). Prints markdown tables and writes JSON + markdown. Suites:

  primitives  issue 2: T = 128, 512, 2048, batch 4 — multi_head_soft_attention vs
              jax.nn.dot_product_attention vs flax.linen.dot_product_attention.
  efficient   issue 6: T = 512, 2048, 8192, batch 1 — soft, chunked, linear, jax.nn, flax;
              GFLOP/s of exact methods next to a 2048² jnp.matmul (practical peak); ratio to
              attnlab's best exact method; linear-attention scaling.
  memory      issue 6: peak RSS (VmHWM) of forward+backward in a fresh subprocess per case
              (chunked at T = 16384; plain forms capped by --max_score_gib and
              extrapolated as O(T²) when skipped).
  targets     issue 12, float32, 8 heads, dim 64, forward+backward, --rounds interleaved
              rounds, min over every timed call: jax.nn / multi_head_soft_attention at
              T = 128 and 512 (batch 4); jax.nn / dot_product_attention at T = 2048
              (batch 1) and its GFLOP/s as a share of a 2048² float32 matmul timed in the
              same rounds. Prints each ratio next to its target.
  dispatch    the device check's: attnlab.dot_product_attention (whatever it dispatches to,
              shown) against jax.nn implementation="xla" and, on a GPU, "cudnn"; causal and
              not; --dtypes (bfloat16 on a GPU by default).

Usage (the full run the lead does on a quiet machine):

  python -m experiments.bench_attention --suite=all --reps=5 --out=results/bench_attention
  python -m experiments.bench_attention --suite=targets --rounds=7 --out=results/bench_targets

Quick check:

  python -m experiments.bench_attention --suite=primitives --lengths=128 --reps=2 \
      --out=/tmp/bench

FLOP convention: forward = 4·B·H·Tq·Tk·D (two matmuls); forward+backward = 3.5x forward
(FlashAttention-2's count: the backward's four matmuls plus the recomputed QKᵀ).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import flax.linen
import jax
import jax.numpy as jnp
from absl import app, flags

import attnlab
from attnlab import efficient
from attnlab.training import rundir

_SUITE = flags.DEFINE_enum(
  "suite",
  "all",
  ["all", "primitives", "efficient", "memory", "targets", "dispatch"],
  "What to run ('all': primitives, efficient, memory, targets).",
)
_LENGTHS = flags.DEFINE_list(
  "lengths", None, "Sequence lengths (default: the suite's: 128,512,2048 / 512,2048,8192)."
)
_BATCH = flags.DEFINE_integer("batch", None, "Batch size (default: 4 primitives, 1 efficient).")
_HEADS = flags.DEFINE_integer("heads", 8, "Heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_DTYPES = flags.DEFINE_list("dtypes", None, "dtypes (default float32, plus bfloat16 on GPU).")
_REPS = flags.DEFINE_integer("reps", 5, "Timed repetitions (median reported).")
_ROUNDS = flags.DEFINE_integer(
  "rounds", 7, "targets suite: interleaved rounds (each times every case --reps times)."
)
_MAX_SCORE_GIB = flags.DEFINE_float(
    "max_score_gib", 1.0,
    "Skip methods that materialise the B·H·T² float32 scores above this size (their "
    "forward+backward needs ~4x it).",
)  # fmt: skip
_MEMORY_LENGTH = flags.DEFINE_integer("memory_length", 16384, "T for the chunked memory run.")
_PLAIN_MEMORY_LENGTH = flags.DEFINE_integer(
  "plain_memory_length", 4096, "T for the plain (soft) memory run; extrapolated as T²."
)
_OUT = flags.DEFINE_string(
  "out", "results/bench_attention", "Output prefix: writes PREFIX.json and PREFIX.md."
)
_MEMORY_CHILD = flags.DEFINE_string(
  "memory_child", None, "Internal: 'method:T:batch', run one case and print peak RSS JSON."
)


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The attention's shape and the memory suite's sizes: the flags, read once in ``main``."""

  heads: int
  head_dim: int
  max_score_gib: float
  memory_length: int
  plain_memory_length: int


_EXACT = ("attnlab_soft", "attnlab_chunked", "attnlab_dpa", "jax_nn", "flax_linen")
# Forward+backward FLOPs as a multiple of the forward's 4·B·H·Tq·Tk·D.
FWD_BWD_FLOP_FACTOR = 3.5
_ATTNLAB_EXACT = ("attnlab_soft", "attnlab_chunked")


def _methods():
  """name -> f(q, k, v) -> context [B, T, H, D]; all take the [B, T, H, D] layout."""
  return {
    "attnlab_soft": lambda q, k, v: attnlab.multi_head_soft_attention(q, k, v)[0],
    "attnlab_chunked": lambda q, k, v: efficient.multi_head_chunked_attention(q, k, v)[0],
    "attnlab_linear": lambda q, k, v: efficient.multi_head_linear_attention(q, k, v)[0],
    "attnlab_dpa": attnlab.dot_product_attention,
    "jax_nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v),
    "flax_linen": lambda q, k, v: flax.linen.dot_product_attention(q, k, v),
  }


def _materialises_scores(name: str) -> bool:
  return name in ("attnlab_soft", "jax_nn", "flax_linen")


def _inputs(batch, length, heads, head_dim, dtype, seed=0):
  key_q, key_k, key_v, key_g = jax.random.split(jax.random.key(seed), 4)
  shape = (batch, length, heads, head_dim)
  q, k, v, cotangent = (jax.random.normal(kk, shape, dtype) for kk in (key_q, key_k, key_v, key_g))
  return q, k, v, cotangent


def _fwd_and_fwd_bwd(fn):
  forward = jax.jit(fn)

  def loss(q, k, v, cotangent):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) * cotangent.astype(jnp.float32))

  fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  return forward, fwd_bwd


def _median_seconds(fn, *args, reps):
  jax.block_until_ready(fn(*args))  # compile + warm-up, not timed
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _attention_flops(batch, length, heads, head_dim):
  return 4.0 * batch * heads * length * length * head_dim


def _matmul_gflops(dtype, reps, size=2048):
  """GFLOP/s of a square ``jnp.matmul`` [size, size] @ [size, size]: the practical peak."""
  key_a, key_b = jax.random.split(jax.random.key(1))
  a = jax.random.normal(key_a, (size, size), dtype)
  b = jax.random.normal(key_b, (size, size), dtype)
  seconds = _median_seconds(jax.jit(jnp.matmul), a, b, reps=reps)
  return 2.0 * size**3 / seconds / 1e9


def _time_suite(names, lengths, batch, dtypes, reps, with_matmul, shapes: Shapes):
  rows = []
  methods = _methods()
  for dtype_name in dtypes:
    dtype = jnp.dtype(dtype_name)
    matmul = _matmul_gflops(dtype, reps) if with_matmul else None
    for length in lengths:
      q, k, v, cotangent = _inputs(batch, length, shapes.heads, shapes.head_dim, dtype)
      score_gib = 4 * batch * shapes.heads * length**2 / 2**30
      flops = _attention_flops(batch, length, shapes.heads, shapes.head_dim)
      for name in names:
        row = dict(method=name, length=length, batch=batch, heads=shapes.heads,
                   head_dim=shapes.head_dim, dtype=dtype_name, fwd_ms=None, fwd_bwd_ms=None,
                   skipped=None)  # fmt: skip
        if _materialises_scores(name) and score_gib > shapes.max_score_gib:
          row["skipped"] = f"scores {score_gib:.1f} GiB > --max_score_gib={shapes.max_score_gib}"
        else:
          forward, fwd_bwd = _fwd_and_fwd_bwd(methods[name])
          row["fwd_ms"] = 1e3 * _median_seconds(forward, q, k, v, reps=reps)
          row["fwd_bwd_ms"] = 1e3 * _median_seconds(fwd_bwd, q, k, v, cotangent, reps=reps)
          if name in _EXACT:
            row["fwd_gflops"] = flops / row["fwd_ms"] * 1e3 / 1e9
            row["fwd_bwd_gflops"] = FWD_BWD_FLOP_FACTOR * flops / row["fwd_bwd_ms"] * 1e3 / 1e9
        if matmul is not None:
          row["matmul_gflops"] = matmul
        rows.append(row)
        print(f"  {dtype_name} T={length} {name}: fwd {row['fwd_ms']} ms, "
              f"fwd+bwd {row['fwd_bwd_ms']} ms {row['skipped'] or ''}", flush=True)  # fmt: skip
  return rows


def _add_ratios(rows, reference_names):
  """ratio_* = method time / time of the best of reference_names at the same (dtype, T)."""
  for row in rows:
    peers = [r for r in rows if r["length"] == row["length"] and r["dtype"] == row["dtype"]]
    for phase in ("fwd_ms", "fwd_bwd_ms"):
      best = [r[phase] for r in peers if r["method"] in reference_names and r[phase]]
      ratio = row[phase] / min(best) if best and row[phase] else None
      row["ratio_" + phase.removesuffix("_ms")] = ratio


_fmt = rundir.format_report_number


def _time_table(rows, title, reference):
  lines = [f"### {title}", "",
           f"Ratio = time / time of {reference} (> 1: slower than it).", "",
           "| dtype | T | method | fwd ms | fwd+bwd ms | fwd ratio | fwd+bwd ratio | fwd GFLOP/s "
           "| fwd+bwd GFLOP/s | matmul GFLOP/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
  for r in rows:
    lines.append(
      f"| {r['dtype']} | {r['length']} | {r['method']} | {_fmt(r['fwd_ms'])} | "
      f"{_fmt(r['fwd_bwd_ms'])} | {_fmt(r['ratio_fwd'], 2)} | {_fmt(r['ratio_fwd_bwd'], 2)} | "
      f"{_fmt(r.get('fwd_gflops'))} | {_fmt(r.get('fwd_bwd_gflops'))} | "
      f"{_fmt(r.get('matmul_gflops'))} |" + (f" skipped: {r['skipped']}" if r["skipped"] else "")
    )
  return "\n".join(lines) + "\n"


def _linear_scaling(rows):
  linear = {(r["dtype"], r["length"]): r for r in rows if r["method"] == "attnlab_linear"}
  out = []
  for (dtype, length), r in sorted(linear.items()):
    if (dtype, 4 * length) in linear:
      long = linear[(dtype, 4 * length)]
      out.append(dict(dtype=dtype, short=length, long=4 * length,
                      fwd_ratio=long["fwd_ms"] / r["fwd_ms"],
                      fwd_bwd_ratio=long["fwd_bwd_ms"] / r["fwd_bwd_ms"]))  # fmt: skip
  return out


# ---- targets (issue 12): interleaved rounds, min over every timed call -------------------

# (label, attnlab function, batch, T, target ratio jax.nn / attnlab)
TARGETS = (
  ("multi_head_soft_attention", "attnlab_soft", 4, 128, 1.2),
  ("multi_head_soft_attention", "attnlab_soft", 4, 512, 1.2),
  ("dot_product_attention", "attnlab_dpa", 1, 2048, 1.5),
)
PEAK_SHARE_TARGET = 0.60  # dot_product_attention at T = 2048: share of the matmul peak


def _min_seconds(fn, *args, reps):
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def _targets_suite(rounds: int, reps: int, heads: int, head_dim: int):
  """Every case and the matmul peak, timed round-robin so load drift hits them alike."""
  methods = _methods()
  timed = {}  # name -> (fn, args)
  key_a, key_b = jax.random.split(jax.random.key(1))
  size = 2048
  a, b = (jax.random.normal(kk, (size, size), jnp.float32) for kk in (key_a, key_b))
  timed["matmul"] = (jax.jit(jnp.matmul), (a, b))
  for _, attnlab_name, batch, length, _ in TARGETS:
    q, k, v, cotangent = _inputs(batch, length, heads, head_dim, jnp.float32)
    for name in (attnlab_name, "jax_nn"):
      timed[(name, length)] = (_fwd_and_fwd_bwd(methods[name])[1], (q, k, v, cotangent))
  for fn, args in timed.values():  # compile and warm up, untimed
    jax.block_until_ready(fn(*args))
  best = {name: float("inf") for name in timed}
  load_start = os.getloadavg()
  for _ in range(rounds):
    for name, (fn, args) in timed.items():
      best[name] = min(best[name], _min_seconds(fn, *args, reps=reps))
  load_end = os.getloadavg()
  peak = 2.0 * size**3 / best["matmul"] / 1e9
  rows = []
  for label, attnlab_name, batch, length, target in TARGETS:
    ours, ref = best[(attnlab_name, length)], best[("jax_nn", length)]
    flops = FWD_BWD_FLOP_FACTOR * _attention_flops(batch, length, heads, head_dim)
    rows.append(dict(
        function=label, batch=batch, length=length, heads=heads, head_dim=head_dim,
        attnlab_ms=1e3 * ours, jax_nn_ms=1e3 * ref, ratio=ref / ours, ratio_target=target,
        attnlab_gflops=flops / ours / 1e9, peak_share=flops / ours / 1e9 / peak,
        peak_share_target=PEAK_SHARE_TARGET if length == 2048 else None,
    ))  # fmt: skip
  return dict(rows=rows, matmul_gflops=peak, rounds=rounds, reps=reps,
              load_average_start=load_start, load_average_end=load_end)  # fmt: skip


def _verdict(value, target):
  return "met" if value >= target else "MISSED"


def _targets_text(report) -> str:
  lines = ["### Targets (issue 12): forward+backward, float32, "
           f"{report['rows'][0]['heads']} heads, dim {report['rows'][0]['head_dim']}", "",
           f"Min over {report['rounds']} interleaved rounds x {report['reps']} calls; "
           f"matmul peak (2048² float32 jnp.matmul, same rounds): "
           f"{report['matmul_gflops']:.0f} GFLOP/s; load average (1/5/15 min) "
           f"{'/'.join(f'{x:.2f}' for x in report['load_average_start'])} at start, "
           f"{'/'.join(f'{x:.2f}' for x in report['load_average_end'])} at end.", ""]  # fmt: skip
  for r in report["rows"]:
    line = (
      f"- T={r['length']} batch {r['batch']}: jax.nn / attnlab.{r['function']} = "
      f"{r['ratio']:.2f}x (target >= {r['ratio_target']}x: "
      f"{_verdict(r['ratio'], r['ratio_target'])}; "
      f"{r['attnlab_ms']:.1f} ms vs {r['jax_nn_ms']:.1f} ms)"
    )
    if r["peak_share_target"] is not None:
      line += (
        f"; {r['attnlab_gflops']:.0f} GFLOP/s = {100 * r['peak_share']:.0f}% of the matmul "
        f"peak (target >= {100 * r['peak_share_target']:.0f}%: "
        f"{_verdict(r['peak_share'], r['peak_share_target'])})"
      )
    lines.append(line)
  return "\n".join(lines) + "\n"


# ---- dispatch (device check): attnlab.dot_product_attention vs jax.nn's implementations ---


def _dispatch_suite(lengths, batch, dtypes, reps, heads, head_dim):
  backend = jax.default_backend()
  impls = ["xla"] + (["cudnn"] if backend in ("gpu", "cuda") else [])
  rows = []
  for dtype_name in dtypes:
    dtype = jnp.dtype(dtype_name)
    for length in lengths:
      q, k, v, cotangent = _inputs(batch, length, heads, head_dim, dtype)
      for causal in (False, True):
        choice = efficient.dispatch_implementation(q, k, v, is_causal=causal).value
        fns = {f"attnlab ({choice})": lambda q, k, v, c=causal: attnlab.dot_product_attention(
          q, k, v, is_causal=c)}  # fmt: skip
        for impl in impls:
          fns[f"jax.nn {impl}"] = lambda q, k, v, c=causal, i=impl: jax.nn.dot_product_attention(
            q, k, v, is_causal=c, implementation=i)  # fmt: skip
        flops = _attention_flops(batch, length, heads, head_dim) / (2 if causal else 1)
        for name, fn in fns.items():
          row = dict(method=name, dtype=dtype_name, length=length, batch=batch, causal=causal)
          try:
            forward, fwd_bwd = _fwd_and_fwd_bwd(fn)
            row["fwd_ms"] = 1e3 * _median_seconds(forward, q, k, v, reps=reps)
            row["fwd_bwd_ms"] = 1e3 * _median_seconds(fwd_bwd, q, k, v, cotangent, reps=reps)
            row["fwd_bwd_tflops"] = FWD_BWD_FLOP_FACTOR * flops / row["fwd_bwd_ms"] / 1e9
          except Exception as e:  # e.g. a cuDNN build without this configuration
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
          rows.append(row)
          print(f"  {row}", flush=True)
  return rows


def _dispatch_table(rows) -> str:
  lines = ["### attnlab.dot_product_attention vs jax.nn (dispatch)", "",
           "| dtype | T | batch | causal | method | fwd ms | fwd+bwd ms | fwd+bwd TFLOP/s |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
  for r in rows:
    lines.append(
      f"| {r['dtype']} | {r['length']} | {r['batch']} | {r['causal']} | {r['method']} | "
      f"{_fmt(r.get('fwd_ms'), 2)} | {_fmt(r.get('fwd_bwd_ms'), 2)} | "
      f"{_fmt(r.get('fwd_bwd_tflops'), 2)} |" + (f" {r['error']}" if "error" in r else "")
    )
  return "\n".join(lines) + "\n"


# ---- memory: one case per fresh subprocess, peak RSS ------------------------------------


def _peak_rss_gib() -> float:
  """This process's peak resident set. ``VmHWM`` belongs to the process image, whereas
  ``ru_maxrss`` survives ``fork`` + ``exec`` and would report the parent's peak."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**20  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _memory_child(spec: str, shapes: Shapes) -> None:
  method, length, batch = spec.split(":")
  length, batch = int(length), int(batch)
  q, k, v, cotangent = _inputs(batch, length, shapes.heads, shapes.head_dim, jnp.float32)
  jax.block_until_ready((q, k, v, cotangent))
  inputs_gib = _peak_rss_gib()
  seconds = None
  if method != "baseline":
    _, fwd_bwd = _fwd_and_fwd_bwd(_methods()[method])
    start = time.perf_counter()
    jax.block_until_ready(fwd_bwd(q, k, v, cotangent))
    seconds = time.perf_counter() - start
  print(json.dumps(dict(method=method, length=length, batch=batch, peak_rss_gib=_peak_rss_gib(),
                        inputs_ready_rss_gib=inputs_gib,
                        first_call_s=seconds)))  # fmt: skip


def _run_memory_case(method, length, batch, shapes: Shapes):
  cmd = [sys.executable, "-m", "experiments.bench_attention",
         f"--memory_child={method}:{length}:{batch}", f"--heads={shapes.heads}",
         f"--head_dim={shapes.head_dim}"]  # fmt: skip
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  if done.returncode != 0:
    return dict(method=method, length=length, batch=batch, error=done.stderr[-2000:])
  return json.loads(done.stdout.strip().splitlines()[-1])


def _memory_suite(shapes: Shapes):
  length, plain_length, batch = shapes.memory_length, shapes.plain_memory_length, 1
  rows = [_run_memory_case("baseline", length, batch, shapes),
          _run_memory_case("attnlab_chunked", length, batch, shapes)]  # fmt: skip
  plain_gib = 4 * batch * shapes.heads * length**2 / 2**30
  if plain_gib <= shapes.max_score_gib:
    rows.append(_run_memory_case("attnlab_soft", length, batch, shapes))
  else:
    small = _run_memory_case("attnlab_soft", plain_length, batch, shapes)
    small_base = _run_memory_case("baseline", plain_length, batch, shapes)
    rows += [small_base, small]
    if "peak_rss_gib" in small:
      growth = (length / plain_length) ** 2
      rows.append(dict(method="attnlab_soft (extrapolated)", length=length, batch=batch,
                       peak_rss_gib=small_base["peak_rss_gib"]
                       + (small["peak_rss_gib"] - small_base["peak_rss_gib"]) * growth,
                       note=f"not run: scores alone {plain_gib:.1f} GiB > --max_score_gib; "
                       f"(peak - baseline) at T={plain_length} times (T ratio)²"))  # fmt: skip
  return rows


def _memory_table(rows):
  lines = ["### Peak memory of forward+backward (fresh subprocess, peak RSS)", "",
           "| method | T | batch | peak RSS GiB | RSS with inputs only GiB | note |",
           "|---|---|---|---|---|---|"]  # fmt: skip
  for r in rows:
    note = r.get("note") or (r.get("error", "")[-120:].replace("\n", " ") if "error" in r else "")
    peak, inputs = _fmt(r.get("peak_rss_gib"), 2), _fmt(r.get("inputs_ready_rss_gib"), 2)
    lines.append(f"| {r['method']} | {r['length']} | {r['batch']} | {peak} | {inputs} | {note} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  shapes = Shapes(
    heads=_HEADS.value,
    head_dim=_HEAD_DIM.value,
    max_score_gib=_MAX_SCORE_GIB.value,
    memory_length=_MEMORY_LENGTH.value,
    plain_memory_length=_PLAIN_MEMORY_LENGTH.value,
  )
  if _MEMORY_CHILD.value:
    _memory_child(_MEMORY_CHILD.value, shapes)
    return
  backend = jax.default_backend()
  dtypes = _DTYPES.value or (["float32", "bfloat16"] if backend == "gpu" else ["float32"])
  lengths = [int(x) for x in _LENGTHS.value] if _LENGTHS.value else None
  report = dict(
      jax=jax.__version__, flax=flax.__version__, backend=backend,
      device=str(jax.devices()[0].device_kind), cpu_count=os.cpu_count(),
      machine=platform.machine(), date=time.strftime("%Y-%m-%d %H:%M:%S"),
      load_average=os.getloadavg(), reps=_REPS.value, statistic="median",
  )  # fmt: skip
  markdown = [f"## Attention benchmark ({backend}, jax {jax.__version__}, "
              f"{report['date']}, load {report['load_average'][0]:.1f})", ""]  # fmt: skip
  suite = _SUITE.value
  if suite in ("all", "primitives"):
    print("primitives suite", flush=True)
    rows = _time_suite(("attnlab_soft", "jax_nn", "flax_linen"), lengths or [128, 512, 2048],
                       _BATCH.value or 4, dtypes, _REPS.value, with_matmul=False,
                       shapes=shapes)  # fmt: skip
    _add_ratios(rows, ("attnlab_soft",))
    report["primitives"] = rows
    markdown.append(_time_table(rows, "Primitives (issue 2)", "attnlab_soft"))
  if suite in ("all", "efficient"):
    print("efficient suite", flush=True)
    names = ("attnlab_soft", "attnlab_chunked", "attnlab_linear", "jax_nn", "flax_linen")
    rows = _time_suite(names, lengths or [512, 2048, 8192], _BATCH.value or 1, dtypes,
                       _REPS.value, with_matmul=True, shapes=shapes)  # fmt: skip
    _add_ratios(rows, _ATTNLAB_EXACT)
    report["efficient"] = rows
    report["linear_scaling"] = _linear_scaling(rows)
    markdown.append(_time_table(rows, "Efficient attention (issue 6)", "attnlab's best exact"))
    for s in report["linear_scaling"]:
      markdown.append(f"Linear attention, T={s['long']} / T={s['short']} ({s['dtype']}): "
                      f"fwd {s['fwd_ratio']:.2f}x, fwd+bwd {s['fwd_bwd_ratio']:.2f}x "
                      "(linear scaling = 4x).\n")  # fmt: skip
  if suite in ("all", "memory"):
    print("memory suite", flush=True)
    report["memory"] = _memory_suite(shapes)
    markdown.append(_memory_table(report["memory"]))
  if suite in ("all", "targets"):
    print("targets suite", flush=True)
    report["targets"] = _targets_suite(_ROUNDS.value, _REPS.value, shapes.heads, shapes.head_dim)
    markdown.append(_targets_text(report["targets"]))
  if suite == "dispatch":
    print("dispatch suite", flush=True)
    dispatch_dtypes = _DTYPES.value or (["bfloat16"] if backend == "gpu" else ["float32"])
    report["dispatch"] = _dispatch_suite(
      lengths or [1024, 4096],
      _BATCH.value or 4,
      dispatch_dtypes,
      _REPS.value,
      shapes.heads,
      shapes.head_dim,
    )
    markdown.append(_dispatch_table(report["dispatch"]))
  text = "\n".join(markdown)
  print(text)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(_OUT.value + ".md", "w") as f:
    f.write(text)
  print(f"wrote {_OUT.value}.json and {_OUT.value}.md")


if __name__ == "__main__":
  app.run(main)
