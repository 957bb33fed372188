"""One run's program: the model, the per-seed train step and evaluation, jitted and seed-vmapped.

The train state of every seed has a leading SEED axis and the per-seed step is ``jax.vmap``-ed
over it, so ``len(seeds)`` runs of one config train in one jitted program (small models
underuse the hardware; this is the main speed lever). Which method is trained (soft, sparse,
Gumbel, exact marginal, hard with enumerated or REINFORCE gradient) is config inside the one
step: :func:`attnlab.training.objectives.loss_fn` branches on its ``ObjectiveConfig`` at trace
time.

Randomness is stateless: data for update ``s`` of seed ``n`` is
``task.sample(np.random.default_rng([n, s]), ...)`` (:func:`train_batch`); keys are named
streams ``fold_in(fold_in(PRNGKey(n), Stream.X), s)`` (:func:`stream_key`). Same config and seed
give the same numbers on CPU, and a resumed run continues the same streams.

:func:`compile_run` builds (and caches) a run's functions for a device layout
(:mod:`attnlab.training.sharding`: the seed axis and each seed's batch split over a mesh of all
devices, the fixed data replicated); :mod:`attnlab.training.loop` drives them and writes the run
directory; ``experiments/bench_train.py`` times the same step. ``Program`` stays per-seed and
pure: no function of the model path knows about devices.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import metrics, modules, tasks
from attnlab.tasks import Split
from attnlab.training import config as config_lib
from attnlab.training import objectives, sharding

EVAL_SPLITS = (Split.VAL, Split.TEST, Split.OOD)
# The splits of the final evaluation: validation is measured by training's last evaluation
# (the same parameters and key), which the final row keeps.
FINAL_SPLITS = (Split.TEST, Split.OOD)


# Functions called once or a few times per run (init, probes, heatmaps) compile at XLA's
# backend (LLVM) optimisation level 0: about 3x faster to compile on CPU, slower to run, and
# for them compile time dominates. The train step and the evaluations keep XLA's default
# (3). Level 1 would compile the step in 40% less time at the same speed on CPU (recall
# hard_enum 7.1 s vs 12.5 s, 8.38 vs 8.51 ms per step; jaxlib 0.10.2), but it rounds some
# float32 sums differently (1 ulp in the smoke config's step and evaluation), and a
# comparison's bimodal seeds can flip on that: the default keeps its numbers.
_RARELY_RUN = {"xla_backend_optimization_level": 0}


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


# What ``TrainState.bad_metric`` codes for.
BAD_METRIC_NAMES = {1: "train/loss", 2: "train/grad_norm"}


def learning_rate_schedule(cfg: config_lib.OptimizerConfig, steps: int) -> optax.Schedule:
  """Linear warm-up then cosine decay; update ``s`` (1-indexed) uses ``schedule(s - 1)``.

  The warm-up starts at ``lr / warmup_steps`` rather than 0, so no update is wasted; the
  last update uses ``lr * final_lr_fraction``. With ``final_lr_fraction == 1`` the rate is
  constant after the warm-up, and the schedule does not depend on ``steps``: runs with
  different step budgets then compile to the same program (one persistent-cache entry).
  """
  if cfg.final_lr_fraction == 1.0:  # Equal, value for value, to the cosine "decay" to lr.
    base = optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
       optax.constant_schedule(cfg.learning_rate)],
      [cfg.warmup_steps],
    )  # fmt: skip
  else:
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


def seed_keys(seeds: Sequence[int]) -> chex.Array:
  """``[N, 2]`` base keys ``PRNGKey(seed)``, one per seed (the SEED axis of the step)."""
  return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def stream_key(base_key: chex.Array, stream: Stream, step) -> chex.Array:
  """``fold_in(fold_in(base_key, stream), step)``: the key of one stream at one step."""
  return jax.random.fold_in(jax.random.fold_in(base_key, int(stream)), step)


def host_train_batch(
  task: tasks.Task, batch_size: int, seeds: Sequence[int], step: int
) -> tasks.Batch:
  """The training batch of update ``step`` for every seed, stacked on a leading SEED axis
  (numpy, on the host).

  Stateless: seed ``n`` draws ``task.sample(np.random.default_rng([n, step]), ...)``, so a
  resumed run sees the same data as an uninterrupted one, and every process of a
  multi-process run builds the same global batch.
  """
  batches = [task.sample(np.random.default_rng([s, step]), batch_size, Split.TRAIN) for s in seeds]
  return tasks.Batch(*(np.stack(xs) for xs in zip(*batches, strict=True)))


def placed_train_batch(
  task: tasks.Task, batch_size: int, seeds: Sequence[int], step: int, placement: Any
) -> tasks.Batch:
  """:func:`host_train_batch` placed as the training step takes it (``placement``: the
  layout's ``batch`` sharding). Every process builds the global batch and keeps its shards."""
  return sharding.put(host_train_batch(task, batch_size, seeds, step), placement)


def train_batch(task: tasks.Task, batch_size: int, seeds: Sequence[int], step: int) -> tasks.Batch:
  """:func:`host_train_batch` as jax arrays on the default device."""
  return _jnp_batch(host_train_batch(task, batch_size, seeds, step))


def seed_slice(tree: Any, i: int) -> Any:
  """Seed ``i``'s part of a pytree with a leading SEED axis."""
  return jax.tree.map(lambda x: x[i], tree)


def stack_seeds(trees: Sequence[Any]) -> Any:
  """Per-seed pytrees stacked on a leading SEED axis (the inverse of :func:`seed_slice`)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class EvalData(NamedTuple):
  """The fixed eval sets of every split, padded to one shape and concatenated, so that
  evaluation is one call and one compilation (padding is masked: metrics are unchanged)."""

  batch: tasks.Batch
  slices: tuple[tuple[str, int, int], ...]  # (split name, start, stop) along the batch.


def _pad_to(x: np.ndarray, width: int, fill: int) -> np.ndarray:
  return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=fill)


def eval_data(task: tasks.Task, size: int, seed: int, splits=EVAL_SPLITS) -> EvalData:
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
  return EvalData(_jnp_batch(_stack_concat(padded)), slices)


def _stack_concat(batches: Sequence[tasks.Batch]) -> tasks.Batch:
  return tasks.Batch(*(np.concatenate(xs) for xs in zip(*batches, strict=True)))


@dataclasses.dataclass(frozen=True)
class Program:
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
    params_key, attention_key = jax.random.split(stream_key(base_key, Stream.INIT, 0))
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
    self,
    state: TrainState,
    batch: tasks.Batch,
    base_key: chex.Array,
    nan_at_step: chex.Array,
    active: chex.Array,
  ) -> TrainState:
    """One update of one seed; a seed that is not ``active`` (it has converged) is unchanged.

    A non-finite loss or gradient norm leaves params, optimiser and objective state
    unchanged and is recorded in ``bad_step``; the loop raises at its next check, before
    any checkpoint is written. A stopped seed keeps its state exactly (step count included),
    so its results equal those of a one-seed run that stopped at the same step.
    """
    key = stream_key(base_key, Stream.TRAIN, state.step)
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    (loss, aux), grads = grad_fn(
      state.params, batch, key, state.objective_state, state.step, nan_at_step
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep_good = functools.partial(
      jax.tree.map, lambda new, old: jnp.where(finite & active, new, old)
    )
    step_metrics = dict(aux.metrics, grad_norm=grad_norm)
    first_bad = (state.bad_step < 0) & ~finite & active
    new_state = TrainState(
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
    return jax.tree.map(lambda new, old: jnp.where(active, new, old), new_state, state)

  def evaluate(
    self, params, data: EvalData, key: chex.Array, *, greedy: bool = True
  ) -> dict[str, chex.Array]:
    """Metrics of one seed on the fixed eval sets (all splits in one padded batch).

    Sequence and token accuracy come from free-running greedy decoding; NLL and the
    attention metrics from a teacher-forced pass, both under the run's eval mode. A metric
    averaged over nothing (alignment on a task without gold positions) is NaN: no value.

    With ``greedy=False`` and a deterministic eval mode (argmax or soft), the tokens are
    the teacher-forced pass's argmax instead, and no greedy decoding runs. Sequence exact
    match is then the same number: if every teacher-forced argmax of a sequence is right,
    greedy decoding feeds itself the same (gold) prefix at every step, so it makes the
    same predictions and reproduces the sequence; if the first wrong teacher-forced
    prediction is at step t, greedy decoding has the gold prefix up to t, so it makes the
    same wrong prediction there. (Both compare the same positions, EOS included; the
    decoder is deterministic; the two computations differ only in floating-point
    summation order, which could flip an exact argmax tie.) Token accuracy differs: after
    a first error greedy decoding is off the gold prefix, teacher forcing is not. Hence
    training's validation uses it (``greedy=False``) and the final evaluation does not.
    """
    batch = data.batch
    decode_key, forced_key = jax.random.split(key)
    target_len = batch.targets.shape[1]
    mask_BxT = metrics.target_mask(batch.target_lengths, target_len)
    out = self.apply(params, batch, forced_key, attention_override=self.run.eval_mode)
    if greedy or self.run.eval_mode is modules.EvalMode.SAMPLE:
      tokens_BxT, _ = modules.greedy_decode(
        self.model,
        params,
        batch.inputs,
        batch.input_lengths,
        max_len=target_len,
        mode=self.run.eval_mode,
        key=decode_key,
      )
    else:
      tokens_BxT = jnp.argmax(out.logits, axis=-1).astype(batch.targets.dtype)
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
      if out.attention.head_weights is not None:  # Multi-head: every layer's and head's.
        head_weights = part(out.attention.head_weights)
        # The split is this one slice, so its best head is chosen once, on the whole split.
        heads = metrics.multi_head_alignment(head_weights, b.alignment, mask, b.input_lengths)
        averages.update(heads.summary())
      # An average over nothing has no value (NaN; null in the run files, "n/a" in the
      # table), e.g. alignment on a task without gold positions: never a 0%.
      results.update(
        {f"{split}/{k}": jnp.where(v.count > 0, v.value, jnp.nan) for k, v in averages.items()}
      )
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
class CompiledRun:
  """A run's jitted, seed-vmapped functions and its fixed data (see :func:`compile_run`).

  Every function is jitted with the shardings of ``layout`` (:mod:`attnlab.training.sharding`):
  train state, per-seed keys and flags split over the mesh's ``seed`` axis, the training batch
  over ``seed`` and ``batch``, the fixed data and every output that the host reads (metrics,
  probes, attention maps) replicated.

  Attributes:
    program: the model and the per-seed functions.
    layout: the mesh and shardings the functions are compiled for.
    init: ``(base_key, example) -> TrainState`` of one seed (see :func:`init_states`).
    step: ``(states, batch, base_keys, nan_at_step, active) -> states``: one update of every
      seed whose ``active`` flag is set. ``states`` is donated (its arrays are deleted): pass
      a copy to keep them.
    reset_metrics: ``states -> states`` with zeroed metric sums and count (after a row).
    evaluate: ``(params, eval_batch, keys) -> metrics`` of every seed on the validation set
      (during training: it decides convergence).
    evaluate_final: the same, by greedy decoding, on the test and OOD sets of
      ``final_data`` (once, at the end).
    probe: ``(params, objective_states, probe_batch, keys) -> gradient statistics``.
    attention_maps: ``(params, batch, keys) -> (weights, index)`` of every seed.
    eval_data: the fixed validation set (replicated).
    final_data: the fixed test and OOD sets (replicated).
    probe_batch: the fixed probe batch (replicated).
  """

  program: Program
  layout: sharding.Layout
  init: Callable[..., TrainState]
  step: Callable[..., TrainState]
  reset_metrics: Callable[[TrainState], TrainState]
  evaluate: Callable[..., dict[str, chex.Array]]
  evaluate_final: Callable[..., dict[str, chex.Array]]
  probe: Callable[..., dict[str, chex.Array]]
  attention_maps: Callable[..., Any]
  eval_data: EvalData
  final_data: EvalData
  probe_batch: tasks.Batch


def compile_run(
  run: config_lib.RunConfig,
  loss_fn: Callable[..., Any] = objectives.loss_fn,
  layout: sharding.Layout | None = None,
) -> CompiledRun:
  """The jitted, seed-vmapped functions of a run (XLA compiles each on its first call).

  Cached: runs whose configs differ only in the seed or the loop cadence (evaluation,
  logging, checkpoint and probe steps) share the functions, so they compile once per layout.

  Args:
    run: the parsed run config.
    loss_fn: the objective, with the signature of
      :func:`attnlab.training.objectives.loss_fn`.
    layout: the mesh and shardings (:func:`attnlab.training.sharding.make_layout`); default
      a 1 x 1 mesh on this process's first device.

  Returns:
    A :class:`CompiledRun`.
  """
  return _compile(_cache_key(run), loss_fn, layout or sharding.single_device_layout())


def init_states(compiled: CompiledRun, base_keys: chex.Array, batch: tasks.Batch) -> TrainState:
  """Fresh train states of every seed, stacked and placed by the run's layout (``batch``: a
  stacked batch, for shapes; host or device arrays)."""
  layout = compiled.layout
  example = sharding.put(seed_slice(sharding.fetch(batch), 0), layout.replicated)
  keys = sharding.fetch(base_keys)
  states = [compiled.init(sharding.put(key, layout.replicated), example) for key in keys]
  return layout.stack_seeds(states)


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
    stop_accuracy=0.0,
    stop_patience=1,
  )
  return dataclasses.replace(run, seed=0, train=neutral)


def _reset_metrics(state: TrainState) -> TrainState:
  return state._replace(
    metric_sums=jax.tree.map(jnp.zeros_like, state.metric_sums),
    metric_count=jnp.zeros_like(state.metric_count),
  )


@functools.lru_cache(maxsize=8)
def _compile(
  run: config_lib.RunConfig, loss_fn: Callable[..., Any], layout: sharding.Layout
) -> CompiledRun:
  """Builds (and caches, so that runs of one config in a process compile once) a run's
  functions. Compilation itself happens on first call."""
  train_cfg = run.train
  program = Program(
    run, modules.build_model(run.model), make_optimizer(run.optimizer, train_cfg.steps), loss_fn
  )
  replicated, per_seed = layout.replicated, layout.state

  def place(data: EvalData) -> EvalData:
    return data._replace(batch=sharding.put(data.batch, replicated))

  val_data = place(eval_data(run.task, train_cfg.eval_size, train_cfg.eval_seed, (Split.VAL,)))
  final_data = place(eval_data(run.task, train_cfg.eval_size, train_cfg.eval_seed, FINAL_SPLITS))
  probe_rng = np.random.default_rng([train_cfg.probe_seed])
  probe_batch = run.task.sample(probe_rng, train_cfg.probe_batch_size, Split.TRAIN)

  def evaluator(data: EvalData, greedy: bool):
    def evaluate(params, batch, key):  # The split slices stay static Python ints.
      return program.evaluate(params, data._replace(batch=batch), key, greedy=greedy)

    return jax.vmap(evaluate, in_axes=(0, None, 0))

  # (params or states, fixed data, per-seed keys) -> replicated outputs.
  read_out = dict(in_shardings=(per_seed, replicated, per_seed), out_shardings=replicated)
  rarely = dict(compiler_options=_RARELY_RUN)
  return CompiledRun(
    program=program,
    layout=layout,
    # Per seed, not vmapped: on CPU (jaxlib 0.10.2) a seed-vmapped init of the BiGRU model
    # deadlocks (0% CPU, never returns) for 2+ seeds at the default sizes, while the
    # vmapped apply and train step run fine. It runs once per seed.
    init=jax.jit(program.init_state, out_shardings=replicated, **rarely),
    # The states are donated: the step updates their buffers in place (the caller's
    # previous states are consumed; the loop never reads them again).
    step=jax.jit(
      jax.vmap(program.train_step, in_axes=(0, 0, 0, None, 0)),
      in_shardings=(per_seed, layout.batch, per_seed, replicated, per_seed),
      out_shardings=per_seed,
      donate_argnums=0,
    ),
    reset_metrics=jax.jit(_reset_metrics, in_shardings=per_seed, out_shardings=per_seed),
    # Every eval_every steps: exact match by teacher forcing (Program.evaluate: the same
    # number as greedy decoding's, one pass instead of a decoding loop).
    evaluate=jax.jit(evaluator(val_data, greedy=False), **read_out),
    # Once per run, greedy decoding: optimised, as its loop runs ~5x faster (sort: 4.7 s
    # at level 0, 1.0 s optimised for 3 seeds; compile 2.7 s vs 4.7 s, and runs of one
    # shape share it through the compilation cache).
    evaluate_final=jax.jit(evaluator(final_data, greedy=True), **read_out),
    probe=jax.jit(
      jax.vmap(program.probe, in_axes=(0, 0, None, 0)),
      in_shardings=(per_seed, per_seed, replicated, per_seed),
      out_shardings=replicated,
      **rarely,
    ),
    attention_maps=jax.jit(
      jax.vmap(program.attention_maps, in_axes=(0, None, 0)), **read_out, **rarely
    ),
    eval_data=val_data,
    final_data=final_data,
    probe_batch=sharding.put(probe_batch, replicated),
  )
