"""Config-driven training: the loop around :mod:`attnlab.training.step`, and what it writes.

:func:`train_seeds` trains ``len(seeds)`` runs of one config together in the jitted,
seed-vmapped step of :func:`attnlab.training.step.compile_run`: it evaluates, probes gradient
estimators, checkpoints, resumes, guards against NaNs and writes each seed's run directory
(:mod:`attnlab.training.rundir`): ``config.json``, ``metrics.jsonl`` (a row per evaluation),
``checkpoints/`` (orbax), ``heatmaps.png``, ``learning_curve.png`` and, when finished,
``summary.json`` (see :func:`train_seeds`). :func:`train_and_evaluate` is the one-seed form.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from attnlab import modules
from attnlab.training import checkpoints, events, objectives, plots, rundir, sharding
from attnlab.training import config as config_lib
from attnlab.training import step as step_lib
from attnlab.training.step import CompiledRun, Stream, TrainState

_log = logging.getLogger(__name__)


class Progress:
  """Logs ``step i/n``, steps/s over the last interval, and an ETA from the running rate.

  The rate counts training steps only (``add_steps``), so evaluation pauses do not inflate
  it; the ETA uses the mean rate since the first logged step.
  """

  def __init__(self, total_steps: int, start_step: int, name: str = "train"):
    self.total_steps = total_steps
    self.name = name
    self._step = start_step
    self._seconds = 0.0
    self._steps = 0

  def add_steps(self, num_steps: int, seconds: float | None) -> None:
    """Counts ``num_steps`` done in ``seconds`` (None: untimed, e.g. a compiling step)."""
    self._step += num_steps
    if seconds is not None:
      self._steps += num_steps
      self._seconds += seconds

  @property
  def steps_per_second(self) -> float:
    return self._steps / self._seconds if self._seconds > 0 else float("nan")

  def eta_seconds(self) -> float:
    rate = self.steps_per_second
    return (self.total_steps - self._step) / rate if rate > 0 else float("nan")

  def log(self, extra: Mapping[str, Any] | None = None) -> str:
    parts = [
      f"{self.name} step {self._step}/{self.total_steps}",
      f"{self.steps_per_second:.1f} steps/s",
      f"ETA {self.eta_seconds():.1f} s",
    ]
    for key, value in (extra or {}).items():
      parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    line = " | ".join(parts)
    _log.info(line)
    return line


def _stochastic_gradient(run: config_lib.RunConfig) -> bool:
  """Whether the training gradient is random (sampled alignments, Gumbel noise)."""
  return run.objective.sampled or run.attention is modules.AttentionKind.GUMBEL


def _seed_config_dict(config: ml_collections.ConfigDict, seed: int) -> dict[str, Any]:
  return rundir.run_config_dict(config.to_dict(), seed)


def _summary(
  run: config_lib.RunConfig, seed: int, history: Mapping[str, Any], num_seeds: int
) -> dict[str, Any]:
  rows = history["rows"]
  summary = {k: v for k, v in (rows[-1] if rows else {}).items() if not k.startswith("grad/")}
  summary.update(rundir.threshold_entries(rows))
  for row in rows:
    summary.update(
      {rundir.probe_key(k, row["step"]): v for k, v in row.items() if k.startswith("grad/")}
    )
  summary.update(
    {rundir.COMPLETED_KEY: True},
    seed=seed,
    steps=run.train.steps,
    converged=history["stopped_at"] is not None,
    steps_trained=rows[-1]["step"] if rows else 0,
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


def _raise_if_bad(state: TrainState, seeds, workdirs, last_saved: int | None) -> None:
  """The NaN guard: one host sync; raises FloatingPointError naming step, metric, seed."""
  bad_steps, bad_metrics = sharding.fetch((state.bad_step, state.bad_metric))
  if np.all(bad_steps < 0):
    return
  i = int(np.argmax(bad_steps >= 0))
  metric = step_lib.BAD_METRIC_NAMES[int(bad_metrics[i])]
  kept = (
    f"the last good checkpoint is step {last_saved} in "
    f"{os.path.join(workdirs[i], rundir.CHECKPOINTS_DIR)}"
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
  devices: Sequence[jax.Device] | None = None,
) -> list[dict[str, Any]]:
  """Trains one config for several seeds together, vmapped in one jitted step.

  The step runs on one mesh over ``devices`` (default: every device of every process): the
  seeds split over as many devices as divide their count, each seed's batch over the rest,
  params replicated per seed (the rule of :mod:`attnlab.training.sharding`; the start-up log
  prints the mesh). Results equal a one-device run's up to float32 summation order.

  In a multi-process program (``jax.distributed``, already initialised by the caller) every
  process calls this with the same arguments; process 0 alone writes ``config.json``,
  ``metrics.jsonl``, ``summary.json`` and the figures, while all of them take part in the
  (collective) orbax checkpoints, which any device or process count can restore.

  Seed ``seeds[i]`` writes to ``workdirs[i]`` what a single-seed run with
  ``config.seed = seeds[i]`` writes (``config.json`` records that seed):

  * ``metrics.jsonl``: a row per evaluation (every ``eval_every`` steps, at every probe
    step and at the end): ``step``; ``train/<m>``, the mean of each loss metric since the
    previous row (``loss``, ``nll``, ``token_accuracy`` (teacher forced),
    ``attention_entropy``, ``grad_norm``, estimator extras) and ``train/learning_rate``;
    ``{val,test,ood}/<m>`` on fixed eval sets under the eval mode: ``seq_accuracy`` and
    ``token_accuracy`` of greedy decoding, then from a teacher-forced pass ``nll``,
    ``alignment_accuracy``, ``lenient_alignment_accuracy``, ``attention_mass_on_gold``,
    ``attention_entropy``, ``support_size`` (multi-head models add the per-head alignment
    and entropy of :meth:`attnlab.metrics.HeadAlignment.summary`); at probe steps
    ``grad/variance`` (and
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
  * ``events.out.tfevents.*``: the same rows, config, hyperparameters and figures for
    TensorBoard (:mod:`attnlab.training.events`).

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
    loss_fn: the objective, with the signature of ``attnlab.training.objectives.loss_fn``.
    devices: the devices of the mesh; default ``jax.devices()``.

  Returns:
    The summaries, one per seed (on every process).

  Faults (:mod:`attnlab.training.rundir`, :mod:`attnlab.training.checkpoints`): one process
  at a time writes a workdir (its lock); a workdir that holds a run of a different config is
  refused, finished or not; an unreadable newest checkpoint falls back to an older one.

  Raises:
    ConfigError: an invalid config, or a ``batch_size`` the mesh's batch axis does not
      divide (before anything is compiled).
    rundir.WorkdirError: a workdir that cannot be used, that another process holds
      (``DirectoryLockedError``) or that holds another config (``ConfigMismatchError``);
      before anything is compiled.
    rundir.DiskFullError: the disk filled up; names the path and the last good checkpoint.
    FloatingPointError: a non-finite loss or gradient norm; names the step, metric and seed.
  """
  run = config_lib.parse_config(config)
  seeds = [int(s) for s in seeds]
  workdirs = [os.fspath(w) for w in workdirs]
  if not seeds or len(seeds) != len(workdirs):
    raise ValueError(f"need one workdir per seed; got seeds={seeds}, workdirs={workdirs}.")
  if len(set(workdirs)) != len(workdirs) or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds and workdirs must be distinct; got {seeds}, {workdirs}.")
  layout = sharding.make_layout(len(seeds), run.train.batch_size, devices)
  config_dicts = [_seed_config_dict(config, s) for s in seeds]
  for workdir in workdirs:
    rundir.make_dir(workdir)
  # One program writes a workdir: its process 0 holds the lock (the others of the same
  # program share the directory and only read it).
  lock = rundir.locked(*workdirs) if _is_writer() else contextlib.nullcontext()
  with lock:
    return _train_locked(run, layout, config_dicts, seeds, workdirs, callback, loss_fn)


def _train_locked(run, layout, config_dicts, seeds, workdirs, callback, loss_fn):
  """:func:`train_seeds` once the program holds every workdir's lock."""
  for workdir, config_dict in zip(workdirs, config_dicts, strict=True):
    rundir.check_same_config(workdir, config_dict)
  if all(rundir.is_finished(w) for w in workdirs):
    _log.info("already completed, not retrained: %s", workdirs)
    return [rundir.read_summary(w) for w in workdirs]
  if _is_writer():
    for workdir, config_dict in zip(workdirs, config_dicts, strict=True):
      rundir.write_config(workdir, config_dict)

  _log.info("%d seed(s) on %s", len(seeds), layout.describe())
  compiled = step_lib.compile_run(run, loss_fn, layout)
  checkpointers = [checkpoints.RunCheckpointer(w, run.train.keep_checkpoints) for w in workdirs]
  # TensorBoard event files beside metrics.jsonl (process 0 only, like every run file).
  sinks = [
    events.RunEvents(w, c) if _is_writer() else None
    for w, c in zip(workdirs, config_dicts, strict=True)
  ]
  try:
    return _train_loop(run, compiled, seeds, workdirs, checkpointers, callback, sinks)
  except OSError as e:
    if rundir.is_disk_full(e):
      raise checkpoints.disk_full_error(e, checkpointers) from e
    raise
  finally:
    for checkpointer in checkpointers:
      checkpointer.close()
    for sink in sinks:
      if sink is not None:
        sink.close()


def _is_writer() -> bool:
  """Whether this process writes the run directory's files (process 0 of the program)."""
  return jax.process_index() == 0


def _new_history() -> dict[str, Any]:
  """A seed's history: its metrics rows, clocks and convergence (checkpointed as JSON)."""
  return {
    "rows": [],
    "train_seconds": 0.0,
    "compile_seconds": 0.0,
    "timed_steps": 0,
    "streak": 0,  # Consecutive evaluations at or above stop_accuracy.
    "stopped_at": None,  # The step at which the seed converged and stopped training.
  }


def _update_convergence(train_cfg: config_lib.TrainConfig, history: dict, row: dict) -> None:
  """Counts ``row`` towards the stopping rule; sets ``stopped_at`` once it is met."""
  if train_cfg.stop_accuracy <= 0:
    return
  reached = row[rundir.THRESHOLD_METRIC] >= train_cfg.stop_accuracy
  history["streak"] = history["streak"] + 1 if reached else 0
  if history["streak"] >= train_cfg.stop_patience:
    history["stopped_at"] = row["step"]


def _train_loop(run, compiled: CompiledRun, seeds, workdirs, checkpointers, callback, sinks):
  task, train_cfg, layout = run.task, run.train, compiled.layout
  writer = _is_writer()
  host_keys = np.asarray(step_lib.seed_keys(seeds))  # Per-seed streams derive on the host.
  base_keys = sharding.put(host_keys, layout.state)
  nan_at_step = sharding.put(np.int32(train_cfg.nan_at_step), layout.replicated)

  def batch_at(step: int):
    return step_lib.placed_train_batch(task, train_cfg.batch_size, seeds, step, layout.batch)

  clock = time.perf_counter()
  state = step_lib.init_states(
    compiled, host_keys, step_lib.host_train_batch(task, train_cfg.batch_size, seeds, 0)
  )
  histories = [_new_history() for _ in seeds]
  start, restored = checkpoints.restore_newest(
    checkpointers,
    layout.seed_slice(state, 0),  # Replicated: restores on any mesh.
  )
  if start is not None:
    state = layout.stack_seeds([s for s, _ in restored])
    histories = [dict(_new_history(), **h) for _, h in restored]
    _log.info("resuming %d run(s) from step %d", len(seeds), start)
  start = start or 0
  last_saved = start or None
  if writer:
    for workdir, history, sink in zip(workdirs, histories, sinks, strict=True):
      rundir.write_metrics(workdir, history["rows"], sink)  # Drops rows written after `start`.
  init_seconds = time.perf_counter() - clock

  def active_seeds() -> np.ndarray:
    return np.asarray([h["stopped_at"] is None for h in histories])

  active = active_seeds()
  active_flags = sharding.put(active, layout.state)  # Uploaded again only when it changes.
  eval_steps = set(train_cfg.eval_steps())
  schedule = step_lib.learning_rate_schedule(run.optimizer, train_cfg.steps)
  progress = Progress(train_cfg.steps, start, name=f"{task.name}/{run.attention.value}")
  # Steps since the last sync / since the last evaluation, and that interval's seconds.
  pending_steps, interval_steps, interval_seconds = 0, 0, 0.0
  first_call = True
  done = start
  clock = time.perf_counter()
  batch = batch_at(start)
  for step in range(start, train_cfg.steps):
    if not active.any():
      break  # Every seed has converged.
    state = compiled.step(state, batch, base_keys, nan_at_step, active_flags)
    # Dispatch is asynchronous: the next batch is built on the host while this step runs.
    batch = batch_at(step + 1) if step + 1 < train_cfg.steps else None
    done = step + 1
    if first_call:  # Compilation: timed apart from the training rate.
      jax.block_until_ready(state)
      for history, is_active in zip(histories, active, strict=True):
        if is_active:
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
    interval_seconds += elapsed
    interval_steps += pending_steps
    for history, is_active in zip(histories, active, strict=True):
      if is_active:  # A stopped seed's clock stopped with it.
        history["train_seconds"] += elapsed
        history["timed_steps"] += pending_steps
    progress.add_steps(pending_steps, elapsed)
    pending_steps = 0
    _raise_if_bad(state, seeds, workdirs, last_saved)
    if is_eval:
      rows = _evaluation_rows(run, compiled, state, done, host_keys, schedule)
      rate = interval_steps / interval_seconds if interval_seconds > 0 else None
      for i, (history, workdir, row) in enumerate(zip(histories, workdirs, rows, strict=True)):
        if not active[i]:
          continue
        row.update(steps_per_second=rate, train_seconds=history["train_seconds"])
        history["rows"].append(row)
        if writer:
          rundir.append_metrics(workdir, row, sinks[i])
        _update_convergence(train_cfg, history, row)
      state = compiled.reset_metrics(state)
      interval_steps, interval_seconds = 0, 0.0
      shown = ("train/loss", "val/seq_accuracy", "val/alignment_accuracy")
      progress.log({k: rows[0][k] for k in shown if rows[0].get(k) is not None})
    elif done % train_cfg.log_every == 0:
      progress.log()
    if not np.array_equal(active_seeds(), active):  # A seed converged at this evaluation.
      active = active_seeds()
      active_flags = sharding.put(active, layout.state)
    if is_save or not active.any():
      for i, checkpointer in enumerate(checkpointers):  # Collective: every process saves.
        checkpointer.save(done, layout.seed_slice(state, i), histories[i])
      last_saved = done
    if is_eval and callback is not None:
      callback(done, [h["rows"][-1] for h in histories])
    clock = time.perf_counter()

  _final_evaluation(run, compiled, state, host_keys, histories, workdirs, sinks if writer else None)
  maps = _attention_maps(compiled, state, host_keys)
  eval_batch = sharding.fetch(compiled.eval_data.batch)
  summaries = []
  for i, (seed, workdir) in enumerate(zip(seeds, workdirs, strict=True)):
    summary = _summary(run, seed, histories[i], len(seeds))
    if writer:
      _write_figures(run, eval_batch, workdir, histories[i]["rows"], maps, i)
      sinks[i].log_figures()
      sinks[i].finish()
      rundir.write_summary(workdir, summary)
    summaries.append(summary)
  return summaries


def _final_evaluation(
  run, compiled: CompiledRun, state: TrainState, keys, histories, workdirs, sinks
):
  """Evaluates every seed's final parameters on the test and OOD sets (greedy decoding),
  into its last metrics row.

  ``sinks``: each seed's :class:`events.RunEvents` on the process that writes the run files,
  ``None`` on the others.

  A seed that converged stopped updating at its ``stopped_at`` step, so its final
  parameters are those of its last row; the evaluation key is that row's, as during
  training. The rewritten ``metrics.jsonl`` ends with that row, now with test and OOD. Its
  validation metrics are those of training's evaluation (the same parameters and key; the
  exact match the stop rule read, equal to greedy decoding's: ``Program.evaluate``; token
  accuracy under teacher forcing), so every (metric, step) has one value.
  """
  last_steps = [h["rows"][-1]["step"] if h["rows"] else 0 for h in histories]
  eval_keys = jnp.stack(
    [step_lib.stream_key(k, Stream.EVAL, s) for k, s in zip(keys, last_steps, strict=True)]
  )
  eval_keys = sharding.put(eval_keys, compiled.layout.state)
  results = sharding.fetch(
    compiled.evaluate_final(state.params, compiled.final_data.batch, eval_keys)
  )
  for i, (history, workdir) in enumerate(zip(histories, workdirs, strict=True)):
    if not history["rows"]:
      continue
    last = history["rows"][-1]
    last.update({k: float(v[i]) for k, v in results.items() if k not in last})
    if sinks is not None:
      rundir.write_metrics(workdir, history["rows"], sinks[i])


def _evaluation_rows(run, compiled: CompiledRun, state: TrainState, step: int, keys, schedule):
  """One metrics row per seed after update ``step`` (``keys``: the seeds' base keys, host)."""
  num_seeds = keys.shape[0]
  metric_count, metric_sums = sharding.fetch((state.metric_count, state.metric_sums))
  count = np.maximum(metric_count, 1.0)
  learning_rate = float(schedule(step - 1))
  rows = [{"step": step, "train/learning_rate": learning_rate} for _ in range(num_seeds)]
  results = {f"train/{k}": v / count for k, v in metric_sums.items()}
  eval_keys = _stream_keys(compiled, keys, Stream.EVAL, step)
  results.update(
    sharding.fetch(compiled.evaluate(state.params, compiled.eval_data.batch, eval_keys))
  )
  if run.train.is_probe_step(step) and _stochastic_gradient(run):
    probe_keys = _stream_keys(compiled, keys, Stream.PROBE, step)
    probe = compiled.probe(state.params, state.objective_state, compiled.probe_batch, probe_keys)
    results.update(sharding.fetch(probe))
  elif run.train.is_probe_step(step):
    results["grad/variance"] = np.zeros(num_seeds)  # Deterministic: every estimate is equal.
  for name, values in results.items():
    for i, row in enumerate(rows):
      row[name] = float(values[i])
  return rows


def _stream_keys(compiled: CompiledRun, keys, stream: Stream, step: int):
  """Every seed's key of ``stream`` at ``step``, from the host base keys, split over seeds."""
  stream_keys = jax.vmap(lambda k: step_lib.stream_key(k, stream, step))(keys)
  return sharding.put(stream_keys, compiled.layout.state)


def _attention_maps(compiled: CompiledRun, state: TrainState, keys):
  """Teacher-forced attention of the first validation examples, for the heatmaps."""
  n = min(compiled.program.run.train.num_heatmaps, compiled.eval_data.slices[0][2])
  if n == 0:
    return None
  host_batch = sharding.fetch(compiled.eval_data.batch)  # Replicated: no collective.
  batch = sharding.put(jax.tree.map(lambda x: x[:n], host_batch), compiled.layout.replicated)
  heatmap_keys = _stream_keys(compiled, keys, Stream.HEATMAP, 0)
  return sharding.fetch(compiled.attention_maps(state.params, batch, heatmap_keys))


def _write_figures(run, eval_batch, workdir, rows, maps, i):
  title = f"{run.task.name} / {run.attention.value} ({run.objective.objective.value})"
  if maps is not None:
    weights, index = maps
    n = weights.shape[1]
    plots.plot_attention_heatmaps(
      os.path.join(workdir, rundir.HEATMAPS_FILE),
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
    plots.plot_learning_curve(os.path.join(workdir, rundir.LEARNING_CURVE_FILE), rows, title=title)


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
