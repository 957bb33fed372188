"""Config-driven training: one jitted step for every method, seeds vmapped together.

:func:`train_seeds` trains ``len(seeds)`` runs of one config in a single jitted program: the
train state (params, optimiser state, objective state, running metric sums) has a leading
SEED axis and the per-seed step is ``jax.vmap``-ed over it (small models underuse the
hardware; this is the main speed lever). Which method is trained (soft, sparse, Gumbel,
exact marginal, hard with enumerated or REINFORCE gradient) is config inside the one step:
``attnlab.objectives.loss_fn`` branches on ``ObjectiveConfig`` at trace time.

Randomness is stateless: data for update ``s`` of seed ``n`` is
``task.sample(np.random.default_rng([n, s]), ...)``; keys are named streams
``fold_in(fold_in(PRNGKey(n), Stream.X), s)``. Same config and seed give the same numbers
on CPU, and a resumed run continues the same streams.

Per-seed outputs (workdir of seed ``n``): ``config.json``, ``metrics.jsonl`` (a row per
evaluation), ``checkpoints/`` (orbax), ``heatmaps.png``, ``learning_curve.png`` and, when
finished, ``summary.json`` (see :func:`train_seeds`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attnlab import checkpointing, metrics, modules, objectives, plots, run_io, tasks
from attnlab import config as config_lib
from attnlab.tasks import Split

_log = logging.getLogger("attnlab.train")

# Validation accuracies whose first crossing the summary reports (steps and seconds).
THRESHOLDS = (0.9, 0.99)
EVAL_SPLITS = (Split.VAL, Split.TEST, Split.OOD)


# Functions called once or a few times per run (init, probes, heatmaps) compile without
# LLVM optimisation: about 3x faster to compile on CPU, and for them compile time, not run
# time, dominates. The train step and the evaluation (called every `eval_every` steps) are
# optimised as usual.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


class _FastCompiled:
  """``jax.jit(fn)``, compiled with :data:`_FAST_COMPILE` once per input signature."""

  def __init__(self, fn: Callable[..., Any]):
    self._jitted = jax.jit(fn)
    self._compiled = {}

  def __call__(self, *args):
    signature = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), args)
    signature = (jax.tree.structure(args), tuple(jax.tree.leaves(signature)))
    if signature not in self._compiled:
      lowered = self._jitted.lower(*args)
      self._compiled[signature] = lowered.compile(compiler_options=_FAST_COMPILE)
    return self._compiled[signature](*args)


class Stream(enum.IntEnum):
  """Named PRNG streams: ``fold_in(PRNGKey(seed), stream)`` then ``fold_in(., step)``."""

  INIT = 0
  TRAIN = 1
  EVAL = 2
  PROBE = 3
  HEATMAP = 4


class TrainState(NamedTuple):
  """Everything a step reads and writes (one seed; ``train_seeds`` stacks a seed axis).

  Attributes:
    step: int32 number of updates done.
    params: model parameters.
    opt_state: optax state.
    objective_state: ``objectives.ObjectiveState`` (e.g. the EMA baseline).
    metric_sums: sums of the loss metrics since the last evaluation.
    metric_count: float32 number of steps in ``metric_sums``.
    bad_step: int32 first update whose loss or gradient norm was non-finite, -1 if none.
    bad_metric: int32 what was non-finite at ``bad_step``: 1 loss, 2 gradient norm.
  """

  step: chex.Array
  params: Any
  opt_state: Any
  objective_state: Any
  metric_sums: dict[str, chex.Array]
  metric_count: chex.Array
  bad_step: chex.Array
  bad_metric: chex.Array


_BAD_METRIC_NAMES = {1: "train/loss", 2: "train/grad_norm"}


def learning_rate_schedule(cfg: config_lib.OptimizerConfig, steps: int) -> optax.Schedule:
  """Linear warm-up then cosine decay; update ``s`` (1-indexed) uses ``schedule(s - 1)``.

  The warm-up starts at ``lr / warmup_steps`` rather than 0, so no update is wasted; the
  last update uses ``lr * final_lr_fraction``.
  """
  base = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.learning_rate,
    warmup_steps=cfg.warmup_steps,
    decay_steps=max(steps, cfg.warmup_steps + 1),
    end_value=cfg.learning_rate * cfg.final_lr_fraction,
  )
  return lambda count: base(count + 1)


def make_optimizer(cfg: config_lib.OptimizerConfig, steps: int) -> optax.GradientTransformation:
  """Adam or AdamW on :func:`learning_rate_schedule`, after global-norm clipping."""
  schedule = learning_rate_schedule(cfg, steps)
  if cfg.name is config_lib.OptimizerName.ADAMW:
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
  else:
    tx = optax.adam(schedule)
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
  return tx


def _jnp_batch(batch: tasks.Batch) -> tasks.Batch:
  return tasks.Batch(*(jnp.asarray(x) for x in batch))


def _stack_batches(batches: Sequence[tasks.Batch]) -> tasks.Batch:
  return tasks.Batch(*(np.stack(xs) for xs in zip(*batches, strict=True)))


def _stream_key(base_key: chex.Array, stream: Stream, step) -> chex.Array:
  return jax.random.fold_in(jax.random.fold_in(base_key, int(stream)), step)


class _EvalData(NamedTuple):
  """The fixed eval sets of every split, padded to one shape and concatenated, so that
  evaluation is one call and one compilation (padding is masked: metrics are unchanged)."""

  batch: tasks.Batch
  slices: tuple[tuple[str, int, int], ...]  # (split name, start, stop) along the batch.


def _pad_to(x: np.ndarray, width: int, fill: int) -> np.ndarray:
  return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)


def eval_data(task: tasks.Task, size: int, seed: int, splits=EVAL_SPLITS) -> _EvalData:
  """``task.eval_set(split, size, seed)`` of each split, padded and concatenated."""
  sets = [task.eval_set(split, size, seed) for split in splits]
  source_len = max(b.inputs.shape[1] for b in sets)
  target_len = max(b.targets.shape[1] for b in sets)
  padded = [
    tasks.Batch(
      inputs=_pad_to(b.inputs, source_len, tasks.PAD),
      input_lengths=b.input_lengths,
      targets=_pad_to(b.targets, target_len, tasks.PAD),
      target_lengths=b.target_lengths,
      alignment=_pad_to(b.alignment, target_len, -1),
    )
    for b in sets
  ]
  offsets = np.cumsum([0] + [b.inputs.shape[0] for b in sets])
  slices = tuple(
    (split.value, int(offsets[i]), int(offsets[i + 1])) for i, split in enumerate(splits)
  )
  return _EvalData(_jnp_batch(_stack_concat(padded)), slices)


def _stack_concat(batches: Sequence[tasks.Batch]) -> tasks.Batch:
  return tasks.Batch(*(np.concatenate(xs) for xs in zip(*batches, strict=True)))


@dataclasses.dataclass(frozen=True)
class _Program:
  """The model and the pure per-seed functions of a run (vmapped and jitted by the loop)."""

  run: config_lib.RunConfig
  model: Any
  optimizer: optax.GradientTransformation
  loss_fn: Callable[..., Any]

  def apply(self, params, batch, key, **kwargs):
    return self.model.apply(
      params,
      batch.inputs,
      batch.input_lengths,
      tasks.decoder_inputs(batch.targets),
      rngs={"attention": key},
      **kwargs,
    )

  def init_state(self, base_key: chex.Array, example: tasks.Batch) -> TrainState:
    """Fresh state of one seed; ``example`` gives the input shapes."""
    params_key, attention_key = jax.random.split(_stream_key(base_key, Stream.INIT, 0))
    params = self.model.init(
      {"params": params_key, "attention": attention_key},
      example.inputs,
      example.input_lengths,
      tasks.decoder_inputs(example.targets),
    )
    max_target_len = self.run.task.max_target_len(Split.TRAIN)
    objective_state = objectives.init_objective_state(self.run.objective, max_target_len)
    metric_shapes = jax.eval_shape(
      lambda p, s: self._loss(p, example, attention_key, s, 0, -1)[1].metrics,
      params,
      objective_state,
    )
    return TrainState(
      step=jnp.int32(0),
      params=params,
      opt_state=self.optimizer.init(params),
      objective_state=objective_state,
      metric_sums={k: jnp.zeros((), jnp.float32) for k in [*metric_shapes, "grad_norm"]},
      metric_count=jnp.zeros((), jnp.float32),
      bad_step=jnp.int32(-1),
      bad_metric=jnp.int32(0),
    )

  def _loss(self, params, batch, key, objective_state, step, nan_at_step):
    loss, aux = self.loss_fn(params, self.model, batch, key, self.run.objective, objective_state)
    # Debug hook (config.debug.nan_at_step, a traced scalar so that it never recompiles):
    # poisons the loss, and through it the gradient, of one update.
    loss = loss * jnp.where(step + 1 == nan_at_step, jnp.nan, 1.0)
    return loss, aux

  def train_step(
    self, state: TrainState, batch: tasks.Batch, base_key: chex.Array, nan_at_step: chex.Array
  ) -> TrainState:
    """One update of one seed.

    A non-finite loss or gradient norm leaves params, optimiser and objective state
    unchanged and is recorded in ``bad_step``; the loop raises at its next check, before
    any checkpoint is written.
    """
    key = _stream_key(base_key, Stream.TRAIN, state.step)
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    (loss, aux), grads = grad_fn(
      state.params, batch, key, state.objective_state, state.step, nan_at_step
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_good = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    step_metrics = dict(aux.metrics, grad_norm=grad_norm)
    first_bad = (state.bad_step < 0) & ~finite
    return TrainState(
      step=state.step + 1,
      params=keep_good(params, state.params),
      opt_state=keep_good(opt_state, state.opt_state),
      objective_state=keep_good(aux.state, state.objective_state),
      metric_sums={
        k: state.metric_sums[k] + step_metrics[k].astype(jnp.float32) for k in state.metric_sums
      },
      metric_count=state.metric_count + 1.0,
      bad_step=jnp.where(first_bad, state.step + 1, state.bad_step),
      bad_metric=jnp.where(first_bad, jnp.where(jnp.isfinite(loss), 2, 1), state.bad_metric).astype(
        jnp.int32
      ),
    )

  def evaluate(self, params, data: _EvalData, key: chex.Array) -> dict[str, chex.Array]:
    """Metrics of one seed on the fixed eval sets (all splits in one padded batch).

    Sequence and token accuracy come from free-running greedy decoding; NLL and the
    attention metrics from a teacher-forced pass, both under the run's eval mode.
    """
    batch = data.batch
    decode_key, forced_key = jax.random.split(key)
    target_len = batch.targets.shape[1]
    mask_BxT = metrics.target_mask(batch.target_lengths, target_len)
    tokens_BxT, _ = modules.greedy_decode(
      self.model,
      params,
      batch.inputs,
      batch.input_lengths,
      max_len=target_len,
      mode=self.run.eval_mode,
      key=decode_key,
    )
    out = self.apply(params, batch, forced_key, attention_override=self.run.eval_mode)
    results = {}
    for split, start, stop in data.slices:
      part = functools.partial(jax.tree.map, lambda x, a=start, b=stop: x[a:b])
      b, mask, tokens = part(batch), part(mask_BxT), part(tokens_BxT)
      weights, logits = part(out.attention.weights), part(out.logits)
      averages = {
        "seq_accuracy": metrics.sequence_accuracy(tokens, b.targets, mask),
        "token_accuracy": metrics.token_accuracy(tokens, b.targets, mask),
        "nll": metrics.negative_log_likelihood(logits, b.targets, mask),
        "alignment_accuracy": metrics.alignment_accuracy(weights, b.alignment),
        "lenient_alignment_accuracy": metrics.lenient_alignment_accuracy(
          weights, b.alignment, b.inputs
        ),
        "attention_mass_on_gold": metrics.attention_mass_on_gold(weights, b.alignment),
        "attention_entropy": metrics.attention_entropy(weights, mask),
        "support_size": metrics.support_size(weights, mask),
      }
      results.update({f"{split}/{k}": v.value for k, v in averages.items()})
    return results

  def probe(self, params, objective_state, batch: tasks.Batch, key: chex.Array):
    return objectives.gradient_probe(
      params,
      self.model,
      batch,
      key,
      self.run.objective,
      objective_state,
      self.run.train.probe_samples,
    )

  def attention_maps(self, params, batch: tasks.Batch, key: chex.Array):
    """Teacher-forced attention of the trained kind: ``(weights [B,T,S], index [B,T]|None)``."""
    out = self.apply(params, batch, key)
    return out.attention.weights, out.attention.index


@dataclasses.dataclass(frozen=True)
class _Compiled:
  """A run's jitted, seed-vmapped functions and its fixed data (cached per config)."""

  program: _Program
  init: Callable[..., TrainState]
  step: Callable[..., TrainState]
  evaluate: Callable[..., dict[str, chex.Array]]
  probe: Callable[..., dict[str, chex.Array]]
  attention_maps: Callable[..., Any]
  eval_data: _EvalData
  probe_batch: tasks.Batch


def _cache_key(run: config_lib.RunConfig) -> config_lib.RunConfig:
  """``run`` without the settings that change no compiled function (seed, loop cadence)."""
  neutral = dataclasses.replace(
    run.train,
    eval_every=1,
    log_every=1,
    checkpoint_every=1,
    keep_checkpoints=1,
    probe_steps=(),
    probe_every=0,
    nan_at_step=-1,
  )
  return dataclasses.replace(run, seed=0, train=neutral)


@functools.lru_cache(maxsize=8)
def _compile(run: config_lib.RunConfig, loss_fn: Callable[..., Any]) -> _Compiled:
  """Builds (and caches, so that runs of one config in a process compile once) a run's
  functions. Compilation itself happens on first call."""
  train_cfg = run.train
  program = _Program(
    run, modules.build_model(run.model), make_optimizer(run.optimizer, train_cfg.steps), loss_fn
  )
  data = eval_data(run.task, train_cfg.eval_size, train_cfg.eval_seed)
  probe_rng = np.random.default_rng([train_cfg.probe_seed])
  probe_batch = run.task.sample(probe_rng, train_cfg.probe_batch_size, Split.TRAIN)

  def evaluate(params, batch, key):  # The split slices stay static Python ints.
    return program.evaluate(params, data._replace(batch=batch), key)

  return _Compiled(
    program=program,
    # Per seed, not vmapped: on CPU (jaxlib 0.10.2) a seed-vmapped init of the BiGRU model
    # deadlocks (0% CPU, never returns) for 2+ seeds at the default sizes, while the
    # vmapped apply and train step run fine. It runs once per seed.
    init=_FastCompiled(program.init_state),
    step=jax.jit(jax.vmap(program.train_step, in_axes=(0, 0, 0, None))),
    evaluate=jax.jit(jax.vmap(evaluate, in_axes=(0, None, 0))),
    probe=_FastCompiled(jax.vmap(program.probe, in_axes=(0, 0, None, 0))),
    attention_maps=_FastCompiled(jax.vmap(program.attention_maps, in_axes=(0, None, 0))),
    eval_data=data,
    probe_batch=_jnp_batch(probe_batch),
  )


def _stochastic_gradient(run: config_lib.RunConfig) -> bool:
  """Whether the training gradient is random (REINFORCE samples, Gumbel noise)."""
  return (
    run.objective.objective is objectives.Objective.REINFORCE
    or run.attention is modules.AttentionKind.GUMBEL
  )


def _seed_config_dict(config: ml_collections.ConfigDict, seed: int) -> dict[str, Any]:
  config_dict = config.to_dict()
  config_dict["seed"] = int(seed)
  return run_io.to_json_value(config_dict)


def _check_same_config(workdir: str, config_dict: dict[str, Any]) -> None:
  path = os.path.join(workdir, run_io.CONFIG_FILE)
  if not os.path.exists(path):
    return
  saved = run_io.read_json(path)
  if saved != config_dict:
    changed = sorted(k for k in set(saved) | set(config_dict) if saved.get(k) != config_dict.get(k))
    raise ValueError(
      f"{workdir} holds a run of a different config (top-level keys {changed} differ); "
      f"resuming it would mix two experiments. Use a new workdir."
    )


def _summary(
  run: config_lib.RunConfig, seed: int, history: Mapping[str, Any], num_seeds: int
) -> dict[str, Any]:
  rows = history["rows"]
  summary = {k: v for k, v in (rows[-1] if rows else {}).items() if not k.startswith("grad/")}
  for threshold in THRESHOLDS:
    key = "val/seq_accuracy"
    summary[f"steps_to_val_seq_acc_{threshold}"] = run_io.first_step_reaching(rows, key, threshold)
    summary[f"seconds_to_val_seq_acc_{threshold}"] = run_io.first_step_reaching(
      rows, key, threshold, at="train_seconds"
    )
  for row in rows:
    summary.update({f"{k}@{row['step']}": v for k, v in row.items() if k.startswith("grad/")})
  summary.update(
    completed=True,
    seed=seed,
    steps=run.train.steps,
    task=run.task.name,
    attention=run.attention.value,
    objective=run.objective.objective.value,
    eval_mode=run.eval_mode.value,
    num_seeds_vmapped=num_seeds,
    train_seconds=history["train_seconds"],
    compile_seconds=history["compile_seconds"],
    ms_per_step=1000.0 * history["train_seconds"] / max(history["timed_steps"], 1),
  )
  return summary


def _slice(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _raise_if_bad(state: TrainState, seeds, workdirs, last_saved: int | None) -> None:
  """The NaN guard: one host sync; raises FloatingPointError naming step, metric, seed."""
  bad_steps = np.asarray(jax.device_get(state.bad_step))
  if np.all(bad_steps < 0):
    return
  i = int(np.argmax(bad_steps >= 0))
  metric = _BAD_METRIC_NAMES[int(np.asarray(state.bad_metric)[i])]
  kept = (
    f"the last good checkpoint is step {last_saved} in "
    f"{os.path.join(workdirs[i], checkpointing.CHECKPOINT_DIR)}"
    if last_saved is not None
    else "no checkpoint had been saved yet"
  )
  raise FloatingPointError(
    f"non-finite {metric} at step {int(bad_steps[i])} (seed {seeds[i]}, workdir "
    f"{workdirs[i]}): training stopped and nothing was saved after it; {kept}."
  )


def train_seeds(
  config: ml_collections.ConfigDict,
  seeds: Sequence[int],
  workdirs: Sequence[str],
  *,
  callback: Callable[[int, list[dict[str, Any]]], None] | None = None,
  loss_fn: Callable[..., Any] = objectives.loss_fn,
) -> list[dict[str, Any]]:
  """Trains one config for several seeds together, vmapped in one jitted step.

  Seed ``seeds[i]`` writes to ``workdirs[i]`` what a single-seed run with
  ``config.seed = seeds[i]`` writes (``config.json`` records that seed):

  * ``metrics.jsonl``: a row per evaluation (every ``eval_every`` steps, at every probe
    step and at the end): ``step``; ``train/<m>``, the mean of each loss metric since the
    previous row (``loss``, ``nll``, ``token_accuracy`` (teacher forced),
    ``attention_entropy``, ``grad_norm``, estimator extras) and ``train/learning_rate``;
    ``{val,test,ood}/<m>`` on fixed eval sets under the eval mode: ``seq_accuracy`` and
    ``token_accuracy`` of greedy decoding, then from a teacher-forced pass ``nll``,
    ``alignment_accuracy``, ``lenient_alignment_accuracy``, ``attention_mass_on_gold``,
    ``attention_entropy``, ``support_size``; at probe steps ``grad/variance`` (and
    ``grad/cosine``, ``grad/bias_sq``, ``grad/snr`` where the probe gives them;
    deterministic gradients get ``grad/variance = 0`` without probing); ``steps_per_second``
    and ``train_seconds`` (cumulative training time, excluding compilation, evaluation and
    checkpoints).
  * ``summary.json`` at the end: the last row's metrics, ``steps_to_val_seq_acc_{0.9,0.99}``
    and ``seconds_to_val_seq_acc_{0.9,0.99}`` (None if never reached),
    ``grad/<stat>@<step>`` per probe, ``train_seconds``, ``compile_seconds``,
    ``ms_per_step`` (one vmapped step of all seeds together), ``completed: true``.
  * ``checkpoints/`` (orbax, every ``checkpoint_every`` steps and at the end),
    ``heatmaps.png``, ``learning_curve.png``.

  Re-running on the same workdirs resumes from the newest checkpoint all of them hold; the
  data and key streams are stateless in (seed, step), so the result equals an uninterrupted
  run. Runs that all finished are not retrained: their summaries are returned.

  Args:
    config: a run config (schema of ``configs/default.py``); ``config.seed`` is ignored.
    seeds: the seeds, one run each.
    workdirs: one directory per seed (created if missing).
    callback: called as ``callback(step, rows)`` after every evaluation and checkpoint, with
      that step's row of every seed; an exception it raises stops training (so tests can
      simulate an interruption).
    loss_fn: the objective, with the signature of ``attnlab.objectives.loss_fn``.

  Returns:
    The summaries, one per seed.

  Raises:
    ConfigError: an invalid config (before anything is compiled).
    FloatingPointError: a non-finite loss or gradient norm; names the step, metric and seed.
  """
  run = config_lib.parse_config(config)
  seeds = [int(s) for s in seeds]
  workdirs = [os.fspath(w) for w in workdirs]
  if not seeds or len(seeds) != len(workdirs):
    raise ValueError(f"need one workdir per seed; got seeds={seeds}, workdirs={workdirs}.")
  if len(set(workdirs)) != len(workdirs) or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds and workdirs must be distinct; got {seeds}, {workdirs}.")
  config_dicts = [_seed_config_dict(config, s) for s in seeds]
  for workdir, config_dict in zip(workdirs, config_dicts, strict=True):
    os.makedirs(workdir, exist_ok=True)
    _check_same_config(workdir, config_dict)
  summaries = [run_io.read_summary(w) for w in workdirs]
  if all(s is not None and s.get("completed") for s in summaries):
    _log.info("already completed, not retrained: %s", workdirs)
    return summaries
  for workdir, config_dict in zip(workdirs, config_dicts, strict=True):
    run_io.write_json(os.path.join(workdir, run_io.CONFIG_FILE), config_dict)

  compiled = _compile(_cache_key(run), loss_fn)
  checkpointers = [checkpointing.RunCheckpointer(w, run.train.keep_checkpoints) for w in workdirs]
  try:
    return _train_loop(run, compiled, seeds, workdirs, checkpointers, callback)
  finally:
    for checkpointer in checkpointers:
      checkpointer.close()


def _train_loop(run, compiled: _Compiled, seeds, workdirs, checkpointers, callback):
  task, train_cfg = run.task, run.train
  base_keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  nan_at_step = jnp.int32(train_cfg.nan_at_step)

  def batch_at(step: int) -> tasks.Batch:
    sample = functools.partial(task.sample, batch_size=train_cfg.batch_size, split=Split.TRAIN)
    return _jnp_batch(_stack_batches([sample(np.random.default_rng([s, step])) for s in seeds]))

  clock = time.perf_counter()
  example = _slice(batch_at(0), 0)
  state = _stack([compiled.init(key, example) for key in base_keys])
  histories = [
    {"rows": [], "train_seconds": 0.0, "compile_seconds": 0.0, "timed_steps": 0} for _ in seeds
  ]
  start = checkpointing.latest_common_step(checkpointers)
  if start is not None:
    restored = [c.restore(start, _slice(state, 0)) for c in checkpointers]
    state = _stack([s for s, _ in restored])
    histories = [h for _, h in restored]
    _log.info("resuming %d run(s) from step %d", len(seeds), start)
  start = start or 0
  last_saved = start or None
  for workdir, history in zip(workdirs, histories, strict=True):
    run_io.write_metrics(workdir, history["rows"])  # Drops rows written after `start`.
  init_seconds = time.perf_counter() - clock

  eval_steps = set(train_cfg.eval_steps())
  schedule = learning_rate_schedule(run.optimizer, train_cfg.steps)
  progress = run_io.Progress(train_cfg.steps, start, name=f"{task.name}/{run.attention.value}")
  train_seconds, timed_steps = histories[0]["train_seconds"], histories[0]["timed_steps"]
  # Steps since the last sync / since the last evaluation, and that interval's seconds.
  pending_steps, interval_steps, interval_seconds = 0, 0, 0.0
  first_call = True
  clock = time.perf_counter()
  for step in range(start, train_cfg.steps):
    state = compiled.step(state, batch_at(step), base_keys, nan_at_step)
    done = step + 1
    if first_call:  # Compilation: timed apart from the training rate.
      jax.block_until_ready(state)
      for history in histories:
        history["compile_seconds"] += time.perf_counter() - clock + init_seconds
      first_call = False
      progress.add_steps(1, None)
      clock = time.perf_counter()
    else:
      pending_steps += 1
    is_eval = done in eval_steps
    is_save = done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps
    if not (is_eval or is_save or done % train_cfg.log_every == 0):
      continue
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - clock
    train_seconds += elapsed
    interval_seconds += elapsed
    timed_steps += pending_steps
    interval_steps += pending_steps
    progress.add_steps(pending_steps, elapsed)
    pending_steps = 0
    _raise_if_bad(state, seeds, workdirs, last_saved)
    if is_eval:
      rows = _evaluation_rows(run, compiled, state, done, base_keys, schedule)
      rate = interval_steps / interval_seconds if interval_seconds > 0 else None
      for history, workdir, row in zip(histories, workdirs, rows, strict=True):
        row.update(steps_per_second=rate, train_seconds=train_seconds)
        history["rows"].append(row)
        run_io.append_metrics(workdir, row)
      state = state._replace(
        metric_sums=jax.tree.map(jnp.zeros_like, state.metric_sums),
        metric_count=jnp.zeros_like(state.metric_count),
      )
      interval_steps, interval_seconds = 0, 0.0
      shown = ("train/loss", "val/seq_accuracy", "val/alignment_accuracy")
      progress.log({k: rows[0][k] for k in shown if rows[0].get(k) is not None})
    elif done % train_cfg.log_every == 0:
      progress.log()
    for history in histories:
      history.update(train_seconds=train_seconds, timed_steps=timed_steps)
    if is_save:
      for i, checkpointer in enumerate(checkpointers):
        checkpointer.save(done, _slice(state, i), histories[i])
      last_saved = done
    if is_eval and callback is not None:
      callback(done, [h["rows"][-1] for h in histories])
    clock = time.perf_counter()

  maps = _attention_maps(compiled, state, base_keys)
  summaries = []
  for i, (seed, workdir) in enumerate(zip(seeds, workdirs, strict=True)):
    _write_figures(run, compiled.eval_data.batch, workdir, histories[i]["rows"], maps, i)
    summary = _summary(run, seed, histories[i], len(seeds))
    run_io.write_json(os.path.join(workdir, run_io.SUMMARY_FILE), summary)
    summaries.append(summary)
  return summaries


def _evaluation_rows(run, compiled: _Compiled, state: TrainState, step: int, keys, schedule):
  """One metrics row per seed after update ``step``."""
  num_seeds = keys.shape[0]
  count = np.maximum(np.asarray(state.metric_count), 1.0)
  learning_rate = float(schedule(step - 1))
  rows = [{"step": step, "train/learning_rate": learning_rate} for _ in range(num_seeds)]
  results = {
    f"train/{k}": np.asarray(v) / count for k, v in jax.device_get(state.metric_sums).items()
  }
  eval_keys = jax.vmap(lambda k: _stream_key(k, Stream.EVAL, step))(keys)
  results.update(
    jax.device_get(compiled.evaluate(state.params, compiled.eval_data.batch, eval_keys))
  )
  if run.train.is_probe_step(step) and _stochastic_gradient(run):
    probe_keys = jax.vmap(lambda k: _stream_key(k, Stream.PROBE, step))(keys)
    probe = compiled.probe(state.params, state.objective_state, compiled.probe_batch, probe_keys)
    results.update(jax.device_get(probe))
  elif run.train.is_probe_step(step):
    results["grad/variance"] = np.zeros(num_seeds)  # Deterministic: every estimate is equal.
  for name, values in results.items():
    for i, row in enumerate(rows):
      row[name] = float(values[i])
  return rows


def _attention_maps(compiled: _Compiled, state: TrainState, keys):
  """Teacher-forced attention of the first validation examples, for the heatmaps."""
  n = min(compiled.program.run.train.num_heatmaps, compiled.eval_data.slices[0][2])
  if n == 0:
    return None
  batch = jax.tree.map(lambda x: x[:n], compiled.eval_data.batch)  # VAL comes first.
  heatmap_keys = jax.vmap(lambda k: _stream_key(k, Stream.HEATMAP, 0))(keys)
  return jax.device_get(compiled.attention_maps(state.params, batch, heatmap_keys))


def _write_figures(run, eval_batch, workdir, rows, maps, i):
  title = f"{run.task.name} / {run.attention.value} ({run.objective.objective.value})"
  if maps is not None:
    weights, index = maps
    n = weights.shape[1]
    plots.plot_attention_heatmaps(
      os.path.join(workdir, "heatmaps.png"),
      weights[i],
      np.asarray(eval_batch.alignment[:n]),
      np.asarray(eval_batch.inputs[:n]),
      np.asarray(eval_batch.targets[:n]),
      sampled_index_NxT=None if index is None else index[i],
      input_lengths=np.asarray(eval_batch.input_lengths[:n]),
      target_lengths=np.asarray(eval_batch.target_lengths[:n]),
      title=title,
    )
  if rows:
    plots.plot_learning_curve(os.path.join(workdir, "learning_curve.png"), rows, title=title)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates one run (seed ``config.seed``) in ``workdir``; resumes if possible.

  Equal to ``train_seeds(config, [config.seed], [workdir])[0]``: see :func:`train_seeds`
  for what is written.

  Args:
    config: a run config (schema of ``configs/default.py``).
    workdir: the run's directory.

  Returns:
    The run's summary (also in ``workdir/summary.json``).
  """
  return train_seeds(config, [config.seed], [workdir])[0]
