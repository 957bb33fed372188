"""Validation by teacher forcing: its exact match equals greedy decoding's on trained models.

Program.evaluate's docstring proves the equality for deterministic (argmax or soft) eval
modes; here both families are trained until some but not all sequences are right, so the
equality is tested where it could fail (a wrong step in the middle of a sequence).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import metrics
from attnlab.training import config as config_lib
from attnlab.training import overrides, rundir, sharding
from attnlab.training import step as step_lib
from configs import default as default_config


def _trained(changes: dict, steps: int):
  config = overrides.apply_overrides(
    default_config.get_config("smoke"),
    {
      "task_overrides.train_lengths": (1, 6),
      "task_overrides.ood_lengths": (7, 9),
      "batch_size": 32,
      "eval_size": 128,
      "steps": steps,
      **changes,
    },
    where="test",
  )
  run = config_lib.parse_config(config)
  compiled = step_lib.compile_run(run)
  layout, seeds = compiled.layout, [0]
  host_keys = np.asarray(step_lib.seed_keys(seeds))
  base_keys = sharding.put(host_keys, layout.state)
  nan_at_step = sharding.put(np.int32(-1), layout.replicated)
  active = sharding.put(np.ones(1, bool), layout.state)
  state = step_lib.init_states(
    compiled, host_keys, step_lib.host_train_batch(run.task, 32, seeds, 0)
  )
  for s in range(steps):
    batch = sharding.put(step_lib.host_train_batch(run.task, 32, seeds, s), layout.batch)
    state = compiled.step(state, batch, base_keys, nan_at_step, active)
  return run, compiled, state


@pytest.mark.parametrize(
  "changes, steps",
  [
    # RNN, hard attention decoded by its argmax position.
    ({"model.attention": "hard", "estimator.gradient": "enumerate"}, 150),
    # Transformer, soft cross-attention.
    ({"model.family": "transformer", "model.score": "scaled_dot"}, 150),
  ],
)
def test_teacher_forced_exact_match_equals_greedy_decoding(changes, steps):
  run, compiled, state = _trained(changes, steps)
  train = run.train  # val, test and OOD in one padded batch
  data = step_lib.eval_data(run.task, train.eval_size, train.eval_seed, step_lib.EVAL_SPLITS)

  def evaluate(greedy):
    fn = lambda p, k: compiled.program.evaluate(p, data, k, greedy=greedy)
    return jax.jit(jax.vmap(fn))(state.params, jax.random.split(jax.random.key(0), 1))

  greedy, forced = evaluate(True), evaluate(False)
  for split in ("val", "test", "ood"):
    key = f"{split}/seq_accuracy"
    np.testing.assert_array_equal(forced[key], greedy[key], err_msg=key)
  # Not a vacuous check: some sequences are right and some wrong, in one split at least.
  accuracies = [float(greedy[f"{s}/seq_accuracy"][0]) for s in ("val", "test", "ood")]
  assert any(0.0 < a < 1.0 for a in accuracies), accuracies


def test_an_average_over_no_gold_position_has_no_value():
  # Addition without a gold operand has no gold source position: its alignment metrics are
  # NaN (null in the run files, "n/a" in the table), never 0%; the others are numbers.
  config = overrides.apply_overrides(
    default_config.get_config("smoke"), {"task": "addition", "eval_size": 16}, where="test"
  )
  run = config_lib.parse_config(config)
  compiled = step_lib.compile_run(run)
  host_keys = np.asarray(step_lib.seed_keys([0]))
  batch = step_lib.host_train_batch(run.task, run.train.batch_size, [0], 0)
  state = step_lib.init_states(compiled, host_keys, batch)
  results = compiled.evaluate(state.params, compiled.eval_data.batch, jnp.asarray(host_keys))
  for name in ("alignment_accuracy", "lenient_alignment_accuracy", "attention_mass_on_gold"):
    assert np.isnan(results[f"val/{name}"]).all(), name
  for name in ("seq_accuracy", "token_accuracy", "nll", "attention_entropy"):
    assert np.isfinite(results[f"val/{name}"]).all(), name
  assert rundir.to_json_value(results["val/alignment_accuracy"][0]) is None


def test_transformer_head_metrics_per_split():
  # Each split's best-head accuracy is the highest per-head accuracy on that whole split, and
  # its any-head chance level that of its source lengths.
  config = overrides.apply_overrides(
    default_config.get_config("smoke"),
    {"model.family": "transformer", "model.score": "scaled_dot", "eval_size": 16},
    where="test",
  )
  run = config_lib.parse_config(config)
  compiled = step_lib.compile_run(run)
  host_keys = np.asarray(step_lib.seed_keys([0]))
  batch = step_lib.host_train_batch(run.task, run.train.batch_size, [0], 0)
  state = step_lib.init_states(compiled, host_keys, batch)
  data = step_lib.eval_data(run.task, 16, run.train.eval_seed, step_lib.EVAL_SPLITS)
  fn = lambda p, k: compiled.program.evaluate(p, data, k, greedy=False)
  results = jax.jit(jax.vmap(fn))(state.params, jnp.asarray(host_keys))
  params = step_lib.seed_slice(state.params, 0)
  # The eval mode is deterministic (soft), so the key does not matter.
  out = compiled.program.apply(params, data.batch, host_keys[0], attention_override=run.eval_mode)
  for split, start, stop in data.slices:
    per_head = metrics.head_alignment_accuracy(
      out.attention.head_weights[start:stop], data.batch.alignment[start:stop]
    )
    best = int(np.argmax(per_head.value))
    assert float(results[f"{split}/best_head"][0]) == best, split
    np.testing.assert_allclose(
      results[f"{split}/alignment_accuracy_best_head"][0], per_head.value.reshape(-1)[best]
    )
    # Chance of some head hitting gold: 1 - (1 - 1/n)^K per counted step, n its source length.
    alignment = data.batch.alignment[start:stop]
    lengths_BxT = np.broadcast_to(data.batch.input_lengths[start:stop, None], alignment.shape)
    miss = (1 - 1 / lengths_BxT[alignment >= 0]) ** per_head.value.size
    np.testing.assert_allclose(
      results[f"{split}/alignment_accuracy_any_head_chance"][0], np.mean(1 - miss), rtol=1e-6
    )
