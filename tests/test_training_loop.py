"""End-to-end training: outputs, resume == uninterrupted, NaN guard, vmapped seeds == alone.

All tests share one tiny hard-attention REINFORCE config (the smoke preset), so the process
compiles it once per seed count (``attnlab.training.step`` caches compiled functions per config) and
every code path runs: sampled attention, the EMA baseline state, the gradient probe,
checkpoints, heatmaps with sampled positions.
"""

import dataclasses
import errno
import logging
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from tensorboard_events import read_events, scalar_rows

from attnlab.training import checkpoints, events, loop, overrides, rundir, step
from attnlab.training import config as config_lib
from configs import default as default_config

# Evaluation at 1 (probe), 2, 4, 6, 8; checkpoints at 4 and 8.
STEPS, EVAL_EVERY, CHECKPOINT_EVERY = 8, 2, 4


def _config(**changes):
  """The smoke preset as a REINFORCE + EMA run, with dotted-key ``changes``."""
  smoke = default_config.get_config("smoke")
  run = {
    "model.attention": "hard",
    "estimator.baseline": "ema",
    "steps": STEPS,
    "eval_every": EVAL_EVERY,
    "checkpoint_every": CHECKPOINT_EVERY,
    "probe_steps": (1,),
  }
  return overrides.apply_overrides(smoke, {**run, **changes}, where="test")


def _untimed(row):
  """A row or summary without its wall-clock entries (they differ between any two runs)."""
  timing = ("seconds", "per_second", "ms_per_step")
  return {k: v for k, v in row.items() if not any(t in k for t in timing)}


class _Interrupt(Exception):
  pass


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """One uninterrupted run of seed 0: (workdir, summary)."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  summary = loop.train_and_evaluate(_config(), workdir)
  return workdir, summary


def test_smoke_run_writes_every_output(reference_run):
  workdir, summary = reference_run
  files = set(os.listdir(workdir))
  assert {"config.json", "metrics.jsonl", "summary.json", "heatmaps.png"} <= files
  assert "learning_curve.png" in files
  for png in ("heatmaps.png", "learning_curve.png"):
    with open(os.path.join(workdir, png), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  assert rundir.read_json(os.path.join(workdir, "config.json"))["seed"] == 0
  rows = rundir.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 4, 6, 8]
  for i, row in enumerate(rows):
    # Validation at every evaluation (it decides convergence); test and OOD once, at the end.
    splits = ("val", "test", "ood") if i == len(rows) - 1 else ("val",)
    assert not any(k.startswith(("test/", "ood/")) for k in row) or i == len(rows) - 1
    for split in splits:
      for metric in ("seq_accuracy", "token_accuracy", "alignment_accuracy", "attention_entropy"):
        assert 0.0 <= row[f"{split}/{metric}"] <= (1.0 if "accuracy" in metric else 10.0)
    assert math.isfinite(row["train/loss"]) and math.isfinite(row["train/grad_norm"])
  # REINFORCE's gradient is random: the probe at step 1 measures a positive variance.
  assert rows[0]["grad/variance"] > 0 and "grad/cosine" in rows[0]
  assert "grad/variance" not in rows[1]
  assert rows[-1]["steps_per_second"] > 0

  assert summary == rundir.read_summary(workdir)
  assert summary["completed"] is True
  for key in (
    "test/seq_accuracy",
    "test/token_accuracy",
    "ood/seq_accuracy",
    "val/alignment_accuracy",
    "val/lenient_alignment_accuracy",
    "val/attention_entropy",
    "steps_to_val_seq_acc_0.9",
    "steps_to_val_seq_acc_0.99",
    "seconds_to_val_seq_acc_0.9",
    "seconds_to_val_seq_acc_0.99",
    "grad/variance@1",
    "ms_per_step",
    "train_seconds",
  ):
    assert key in summary, key
  assert summary["grad/variance@1"] == rows[0]["grad/variance"]
  assert summary["test/seq_accuracy"] == rows[-1]["test/seq_accuracy"]
  assert summary["converged"] is False and summary["steps_trained"] == summary["steps"] == STEPS
  assert sorted(checkpoints.RunCheckpointer(workdir, 2).all_steps()) == [4, 8]


def test_rerunning_a_finished_run_does_not_train_again(reference_run):
  workdir, summary = reference_run
  before = rundir.read_metrics(workdir)
  calls = []
  again = loop.train_seeds(_config(), [0], [workdir], callback=lambda *a: calls.append(a))
  assert again == [summary] and calls == []
  assert rundir.read_metrics(workdir) == before


def test_interrupted_then_resumed_run_equals_uninterrupted(reference_run, tmp_path):
  reference_dir, reference_summary = reference_run
  workdir = str(tmp_path / "run")

  def interrupt_at_6(step, rows):
    del rows
    if step == 6:  # After the checkpoint at 4 and the rows of 5-6: those must be redone.
      raise _Interrupt

  with pytest.raises(_Interrupt):
    loop.train_seeds(_config(), [0], [workdir], callback=interrupt_at_6)
  assert [r["step"] for r in rundir.read_metrics(workdir)] == [1, 2, 4, 6]
  assert rundir.read_summary(workdir) is None

  resumed_steps = []
  summary = loop.train_seeds(
    _config(), [0], [workdir], callback=lambda step, rows: resumed_steps.append(step)
  )[0]
  assert resumed_steps == [6, 8]  # Resumed from the checkpoint at step 4.
  # Same seed, same CPU, same compiled program: bitwise-equal metrics, not just close.
  rows = [_untimed(r) for r in rundir.read_metrics(workdir)]
  assert rows == [_untimed(r) for r in rundir.read_metrics(reference_dir)]
  assert _untimed(summary) == _untimed(reference_summary)


def test_a_different_config_is_refused_naming_keys_and_values(reference_run):
  workdir, summary = reference_run
  assert rundir.read_config(workdir) == rundir.run_config_dict(_config().to_dict(), 0)
  with pytest.raises(rundir.ConfigMismatchError, match=r"\(steps: 8 in the run, 10 now\)"):
    loop.train_and_evaluate(_config(steps=STEPS + 2), workdir)
  changed = _config(**{"optimizer.learning_rate": 0.5, "task_overrides.train_lengths": (1, 5)})
  with pytest.raises(rundir.ConfigMismatchError) as error:
    loop.train_and_evaluate(changed, workdir)  # A finished run: refused too.
  assert "optimizer.learning_rate: 0.003 in the run, 0.5 now" in str(error.value)
  assert "task_overrides.train_lengths: null in the run, [1, 5] now" in str(error.value)
  # Log and checkpoint cadence change no result: the finished run stands.
  assert loop.train_and_evaluate(_config(log_every=1, keep_checkpoints=3), workdir) == summary


def test_a_workdir_that_another_process_writes_is_refused(reference_run):
  workdir, _ = reference_run
  with rundir.locked(workdir):  # As if another process held it.
    with pytest.raises(rundir.DirectoryLockedError, match=f"{workdir} is in use by pid"):
      loop.train_and_evaluate(_config(), workdir)


def _copy_without_summary(reference_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_dir, workdir)
  os.remove(os.path.join(workdir, rundir.SUMMARY_FILE))
  return workdir


def _corrupt(step_dir: str, how: str) -> None:
  data = [
    os.path.join(root, name)
    for root, _, names in os.walk(os.path.join(step_dir, "state"))
    if os.path.basename(root) == "d"
    for name in names
  ]
  assert data, step_dir
  for path in data:
    if how == "random bytes":
      size = os.path.getsize(path)
      with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(size))
    else:
      os.truncate(path, 10)
  if how == "missing _METADATA":
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


@pytest.mark.parametrize("how", ["random bytes", "truncated", "missing _METADATA"])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(
  reference_run, tmp_path, caplog, how
):
  reference_dir, reference_summary = reference_run
  workdir = _copy_without_summary(reference_dir, tmp_path)
  bad = os.path.join(workdir, rundir.CHECKPOINTS_DIR, "8")
  _corrupt(bad, how)
  resumed_steps = []
  with caplog.at_level(logging.WARNING):
    summary = loop.train_seeds(
      _config(), [0], [workdir], callback=lambda step, rows: resumed_steps.append(step)
    )[0]
  assert resumed_steps == [6, 8]  # From the checkpoint at step 4.
  (warning,) = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()][:1]
  assert f"checkpoint step 8 at {bad} is unreadable" in warning
  rows = [_untimed(r) for r in rundir.read_metrics(workdir)]
  assert rows == [_untimed(r) for r in rundir.read_metrics(reference_dir)]
  assert _untimed(summary) == _untimed(reference_summary)
  # Nothing deleted: the unreadable checkpoint was moved aside when step 8 was saved again.
  assert os.listdir(os.path.join(workdir, rundir.UNREADABLE_CHECKPOINTS_DIR)) == ["8"]
  assert checkpoints.RunCheckpointer(workdir, 2).all_steps() == [4, 8]


@pytest.mark.parametrize("summary_text", ['{"completed": tr', '{"completed": true}'])
def test_torn_or_incomplete_summary_is_rebuilt_from_the_last_checkpoint(
  reference_run, tmp_path, summary_text
):
  reference_dir, reference_summary = reference_run
  workdir = _copy_without_summary(reference_dir, tmp_path)
  with open(os.path.join(workdir, rundir.SUMMARY_FILE), "w") as f:
    f.write(summary_text)
  calls = []
  summary = loop.train_seeds(_config(), [0], [workdir], callback=lambda *a: calls.append(a))[0]
  assert calls == []  # Restored at the last step: nothing retrained.
  assert _untimed(summary) == _untimed(reference_summary)
  assert rundir.is_finished(workdir)


@pytest.mark.parametrize("where", ["checkpoint", "summary"])
def test_a_full_disk_names_the_path_and_the_last_good_checkpoint(
  reference_run, tmp_path, monkeypatch, where
):
  reference_dir, _ = reference_run
  workdir = _copy_without_summary(reference_dir, tmp_path)
  if where == "checkpoint":  # Resume from step 4; saving step 8 fails.
    shutil.rmtree(os.path.join(workdir, rundir.CHECKPOINTS_DIR, "8"))
    failing, path, kept = ocp.CheckpointManager, "save", 4
    target = os.path.join(os.path.abspath(workdir), rundir.CHECKPOINTS_DIR, "8")
  else:  # Everything saved; writing summary.json fails.
    failing, path, kept = os, "replace", 8
    target = os.path.join(workdir, rundir.SUMMARY_FILE)
  real = getattr(failing, path)

  def no_space(*args, **kwargs):
    if where == "checkpoint" or str(args[1]).endswith(rundir.SUMMARY_FILE):
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(*args, **kwargs)

  monkeypatch.setattr(failing, path, no_space)
  with pytest.raises(rundir.DiskFullError) as error:
    loop.train_and_evaluate(_config(), workdir)
  checkpoints_dir = os.path.join(os.path.abspath(workdir), rundir.CHECKPOINTS_DIR)
  assert str(error.value) == (
    f"no space left on device writing {target}"
    f"; the last good checkpoint is step {kept} in {checkpoints_dir}; free some space, then "
    "rerun to resume"
  )


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  config = _config(**{"debug.nan_at_step": 6})
  with pytest.raises(FloatingPointError, match=r"non-finite train/loss at step 6 \(seed 0") as e:
    loop.train_and_evaluate(config, workdir)
  assert "last good checkpoint is step 4" in str(e.value)
  assert rundir.read_summary(workdir) is None

  checkpointer = checkpoints.RunCheckpointer(workdir, 2)
  assert checkpointer.all_steps() == [4]  # Nothing was saved after the bad step.
  run = config_lib.parse_config(config)
  compiled = step.compile_run(run)
  batch = step.train_batch(run.task, 8, [0], 0)
  template = step.seed_slice(step.init_states(compiled, step.seed_keys([0]), batch), 0)
  state, history = checkpointer.restore(4, template)
  checkpointer.close()
  assert int(state.step) == 4 and int(state.bad_step) == -1
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))
  assert [r["step"] for r in history["rows"]] == [1, 2, 4]


def test_vmapped_seeds_match_training_each_seed_alone(reference_run, tmp_path):
  """Two seeds in one vmapped program equal two single-seed runs.

  Tolerance: batched and unbatched XLA kernels may round differently, so floats are
  compared to rtol 1e-4 / atol 1e-5; with 8 steps no sample or argmax flipped in practice.
  """
  reference_dir, _ = reference_run
  dirs = [str(tmp_path / f"seed_{s}") for s in (0, 1)]
  together = loop.train_seeds(_config(), [0, 1], dirs)
  alone_1 = loop.train_and_evaluate(_config(seed=1), str(tmp_path / "alone_1"))
  alone = {0: rundir.read_summary(reference_dir), 1: alone_1}
  assert together[0]["num_seeds_vmapped"] == 2
  assert rundir.read_json(os.path.join(dirs[1], "config.json"))["seed"] == 1
  for seed, workdir in zip((0, 1), dirs, strict=True):
    alone_dir = reference_dir if seed == 0 else str(tmp_path / "alone_1")
    rows_together = [_untimed(r) for r in rundir.read_metrics(workdir)]
    rows_alone = [_untimed(r) for r in rundir.read_metrics(alone_dir)]
    assert [r.keys() for r in rows_together] == [r.keys() for r in rows_alone]
    for a, b in zip(rows_together, rows_alone, strict=True):
      np.testing.assert_allclose(
        [a[k] for k in sorted(a)], [b[k] for k in sorted(a)], rtol=1e-4, atol=1e-5
      )
    summary = _untimed(together[seed])
    expected = _untimed(alone[seed])
    assert summary.pop("num_seeds_vmapped") == 2 and expected.pop("num_seeds_vmapped") == 1
    assert summary.keys() == expected.keys()
    for key, value in summary.items():
      if isinstance(value, float):
        assert value == pytest.approx(expected[key], rel=1e-4, abs=1e-5), key
      else:
        assert value == expected[key], key
  # Different seeds really are different runs.
  assert (
    rundir.read_metrics(dirs[0])[-1]["train/loss"] != rundir.read_metrics(dirs[1])[-1]["train/loss"]
  )


def test_learning_rate_schedule_warms_up_then_decays_to_the_final_fraction():
  cfg = config_lib.parse_config(_config()).optimizer
  schedule = step.learning_rate_schedule(cfg, STEPS)
  peak, warmup = cfg.learning_rate, cfg.warmup_steps
  assert float(schedule(0)) == pytest.approx(peak / warmup)  # The first update is not wasted.
  assert float(schedule(warmup - 1)) == pytest.approx(peak)
  assert float(schedule(STEPS - 1)) == pytest.approx(peak * cfg.final_lr_fraction)


def test_constant_schedule_does_not_depend_on_the_step_budget():
  # final_lr_fraction 1: the same values as the cosine schedule "decaying" to the peak, and
  # the same program for any budget, so tasks with different budgets share compilations.
  cfg = dataclasses.replace(config_lib.parse_config(_config()).optimizer, final_lr_fraction=1.0)
  cosine = optax.warmup_cosine_decay_schedule(
    0.0, cfg.learning_rate, cfg.warmup_steps, 600, end_value=cfg.learning_rate
  )
  counts = jnp.arange(700)
  np.testing.assert_array_equal(
    step.learning_rate_schedule(cfg, 600)(counts), jax.vmap(cosine)(counts + 1)
  )
  jaxprs = [str(jax.make_jaxpr(step.learning_rate_schedule(cfg, n))(3)) for n in (600, 1200)]
  assert jaxprs[0] == jaxprs[1]


def test_converged_seed_stops_and_its_results_are_those_of_its_stop_step(tmp_path, monkeypatch):
  # A stopping metric that every run meets (the learning rate is > 0), so the rule fires at
  # the second evaluation (patience 2): step 2. The final parameters must then be those of
  # step 2: the final evaluation's validation metrics equal the row logged at step 2.
  monkeypatch.setattr(rundir, "THRESHOLD_METRIC", "train/learning_rate")
  workdir = str(tmp_path / "stops")
  config = _config(stop_accuracy=1e-9, stop_patience=2)
  summary = loop.train_and_evaluate(config, workdir)
  rows = rundir.read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2]
  assert summary["converged"] is True and summary["steps_trained"] == 2 and summary["steps"] == 8
  assert "test/seq_accuracy" in rows[-1] and "ood/seq_accuracy" in summary
  assert checkpoints.RunCheckpointer(workdir, 2).all_steps() == [2]
  # The final evaluation (all splits, final parameters) reproduces step 2's validation row.
  reference = str(tmp_path / "reference")
  loop.train_and_evaluate(_config(steps=2, stop_accuracy=0.0), reference)
  ref_row = rundir.read_metrics(reference)[-1]
  for key in ("val/seq_accuracy", "val/nll", "test/nll", "ood/nll", "train/loss"):
    assert rows[-1][key] == pytest.approx(ref_row[key], rel=1e-6), key


def test_inactive_seed_keeps_its_state_exactly():
  run = config_lib.parse_config(_config())
  compiled = step.compile_run(run)
  keys = step.seed_keys([0, 1])
  batch = step.train_batch(run.task, 8, [0, 1], 0)
  state = jax.device_get(step.init_states(compiled, keys, batch))  # The step donates its input.
  new = compiled.step(jax.device_put(state), batch, keys, np.int32(-1), np.array([True, False]))
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
    np.testing.assert_array_equal(np.asarray(before)[1], np.asarray(after)[1])
  assert int(new.step[0]) == 1 and int(new.step[1]) == 0
  assert not np.array_equal(
    np.asarray(jax.tree.leaves(state.params)[0])[0], np.asarray(jax.tree.leaves(new.params)[0])[0]
  )


def test_tensorboard_events_hold_the_metrics_rows_also_after_a_kill_and_resume(
  reference_run, tmp_path
):
  reference_dir, _ = reference_run
  reference = read_events(reference_dir)
  assert reference["scalars"] == scalar_rows(rundir.read_metrics(reference_dir))
  assert set(reference["images"]) == {"heatmaps", "learning_curve"} and reference["ended"]
  assert reference["hparams"]["task"] == "copy" and reference["hparams"]["seed"] == 0
  assert reference["hparams"]["model.attention"] == "hard"
  assert '"steps": 8' in reference["text"]["config"]

  workdir = str(tmp_path / "run")

  def interrupt_at_6(step, rows):
    del rows
    if step == 6:  # After the checkpoint at 4: the rows of 5-6 are redone on resume.
      raise _Interrupt

  with pytest.raises(_Interrupt):
    loop.train_seeds(_config(), [0], [workdir], callback=interrupt_at_6)
  killed = read_events(workdir)
  assert [s for s, _ in killed["scalars"]["train/loss"]] == [1, 2, 4, 6]  # Flushed as written.
  assert not killed["ended"] and not killed["images"]

  loop.train_seeds(_config(), [0], [workdir])
  resumed = read_events(workdir)
  assert resumed["scalars"] == scalar_rows(rundir.read_metrics(workdir))
  assert [s for s, _ in resumed["scalars"]["train/loss"]] == [1, 2, 4, 6, 8]  # Each step once.
  assert resumed["ended"] and len(events.event_files(workdir)) == 1


def test_the_donated_step_equals_an_undonated_one_bitwise():
  """The loop's step donates the train state (updated in place): the same numbers as a step
  that does not, over steps whose active seeds change. Bitwise on CPU; on an accelerator two
  compilations may autotune to different kernels, so to float32 rounding there.

  Both compile with XLA's CPU fusion emitters, as the trainer's step does: conftest.py turns
  them off for compile speed, and with the classic emitters the aliased program rounds a
  fused sum differently (1 ulp in 3 of 32 values)."""
  run = config_lib.parse_config(_config())
  compiled = step.compile_run(run)
  keys = step.seed_keys([0, 1])
  undonated = jax.jit(jax.vmap(compiled.program.train_step, in_axes=(0, 0, 0, None, 0)))
  actives = ([True, True], [True, True], [True, False], [False, True])
  batches = [step.train_batch(run.task, 8, [0, 1], i) for i in range(len(actives))]
  state = step.init_states(compiled, keys, batches[0])
  reference = jax.tree.map(jnp.copy, state)
  emitters_off = "--xla_cpu_use_fusion_emitters=false" in os.environ.get("XLA_FLAGS", "")
  on_cpu = jax.default_backend() == "cpu"
  options = {"xla_cpu_use_fusion_emitters": True} if emitters_off and on_cpu else None
  example = (state, batches[0], keys, np.int32(-1), np.ones(2, bool))
  donated_step, undonated_step = [
    f.lower(*example).compile(compiler_options=options) for f in (compiled.step, undonated)
  ]
  for batch, active in zip(batches, actives, strict=True):
    previous = state
    state = donated_step(state, batch, keys, np.int32(-1), np.array(active))
    reference = undonated_step(reference, batch, keys, np.int32(-1), np.array(active))
    assert all(x.is_deleted() for x in jax.tree.leaves(previous))  # Consumed: donated.
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(reference), strict=True):
    if on_cpu:
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    else:
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "estimator",
  [
    {"estimator.posterior": "inference_network", "estimator.baseline": "rloo"},
    {"estimator.gradient": "vimco", "estimator.baseline": "none"},
  ],
  ids=["variational_reinforce", "vimco"],
)
def test_sampled_latent_objectives_are_probed(estimator, tmp_path):
  # Their gradients come from sampled alignments like REINFORCE's: the probe must measure
  # them (a deterministic objective would get no probe and report variance 0).
  steps = {"steps": 2, "eval_every": 2, "checkpoint_every": 2}
  config = _config(**estimator, **steps, **{"estimator.num_samples": 4})
  loop.train_and_evaluate(config, str(tmp_path))
  row = rundir.read_metrics(str(tmp_path))[0]
  assert row["grad/variance"] > 0 and 0.0 < row["grad/cosine"] <= 1.0 + 1e-6
