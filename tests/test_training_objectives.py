"""Objectives on a tiny RNN seq2seq: exactness, unbiasedness, Jensen, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attnlab import tasks
from attnlab.estimators import BaselineKind, CreditAssignment
from attnlab.modules import RNNConfig, build_model
from attnlab.training import objectives
from attnlab.training.objectives import Objective, ObjectiveConfig

TASK = tasks.get_task("reverse", train_lengths=(2, 5), ood_lengths=(6, 7))


def _setup(attention="hard", **model_overrides):
  config = RNNConfig(
      vocab_size=TASK.vocab_size, embed_dim=8, encoder_dim=8, hidden_dim=12, additive_dim=8,
      attention=attention, score="general", max_source_len=8, **model_overrides,
  )  # fmt: skip
  model = build_model(config)
  batch = TASK.sample(np.random.default_rng([0, 0]), 3, "train")
  batch = jax.tree.map(jnp.asarray, batch)
  params = model.init(
      {"params": jax.random.key(0), "attention": jax.random.key(1)},
      batch.inputs, batch.input_lengths, tasks.decoder_inputs(batch.targets),
  )  # fmt: skip
  return model, params, batch


# The probe as the trainer runs it (jitted): eager, each of its hundreds of sampled gradients
# would dispatch op by op.
_probe = jax.jit(objectives.gradient_probe, static_argnames=("model", "cfg", "num_samples"))


def _state(cfg, batch):
  return objectives.init_objective_state(cfg, batch.targets.shape[1])


def _loss(model, params, batch, cfg, key=None):
  key = jax.random.key(2) if key is None else key
  state = objectives.init_objective_state(cfg, batch.targets.shape[1])
  return objectives.loss_fn(params, model, batch, key, cfg, state)


def test_soft_objective_is_token_nll_by_hand():
  model, params, batch = _setup(attention="soft")
  loss, aux = _loss(model, params, batch, ObjectiveConfig(objective="soft"))
  out = model.apply(params, batch.inputs, batch.input_lengths, tasks.decoder_inputs(batch.targets))
  log_p = np.asarray(jax.nn.log_softmax(out.logits, -1))
  total, count = 0.0, 0
  for b in range(batch.targets.shape[0]):
    for t in range(int(batch.target_lengths[b])):
      total -= log_p[b, t, int(batch.targets[b, t])]
      count += 1
  np.testing.assert_allclose(loss, total / count, rtol=1e-5)
  np.testing.assert_allclose(aux.metrics["nll"], total / count, rtol=1e-5)


def test_marginal_likelihood_bounds_hard_objective_by_jensen():
  # -log E_z p(y|z) <= -E_z log p(y|z), with equality only for a deterministic alignment.
  model, params, batch = _setup()
  marginal, _ = _loss(model, params, batch, ObjectiveConfig(objective="marginal"))
  bound, _ = _loss(model, params, batch, ObjectiveConfig(objective="hard_enum"))
  assert float(marginal) < float(bound) - 1e-4


def test_hard_enum_equals_brute_force_expectation():
  model, params, batch = _setup()
  bound, _ = _loss(model, params, batch, ObjectiveConfig(objective="hard_enum"))
  out = model.apply(
      params, batch.inputs, batch.input_lengths, tasks.decoder_inputs(batch.targets),
      enumerate_positions=True, rngs={"attention": jax.random.key(3)},
  )  # fmt: skip
  log_p = np.asarray(jax.nn.log_softmax(out.position_logits, -1), np.float64)
  alpha = np.asarray(out.attention.weights, np.float64)
  total, count = 0.0, 0
  for b in range(batch.targets.shape[0]):
    for t in range(int(batch.target_lengths[b])):
      for z in range(int(batch.input_lengths[b])):
        total -= alpha[b, t, z] * log_p[b, t, z, int(batch.targets[b, t])]
      count += 1
  np.testing.assert_allclose(bound, total / count, rtol=1e-5)


@pytest.mark.parametrize(
  "baseline,num_samples,credit",
  [
    ("none", 1, "per_step"),
    ("rloo", 4, "per_step"),
    ("soft", 1, "per_step"),
    ("ema", 1, "reward_to_go"),
  ],
)
def test_reinforce_gradient_is_unbiased_for_the_enumerated_bound(baseline, num_samples, credit):
  # E[bias_sq] equals the Monte-Carlo floor trace(Cov)/M for an unbiased estimator; a
  # biased one sits far above it (the MARGINAL gradient below is the negative control).
  model, params, batch = _setup()
  cfg = ObjectiveConfig(
    objective="reinforce", baseline=baseline, num_samples=num_samples, credit=credit
  )
  state = objectives.init_objective_state(cfg, batch.targets.shape[1])
  if baseline == "ema":  # A non-zero EMA value, as after training for a while.
    state = state._replace(ema=state.ema._replace(value=state.ema.value - 3.0))
  stats = _probe(params, model, batch, jax.random.key(4), cfg, state, num_samples=300)
  assert float(stats["grad/bias_sq"]) < 3.0 * float(stats["grad/bias_sq_floor"])
  assert float(stats["grad/variance"]) > 0.0


def test_probe_detects_a_different_objective():
  model, params, batch = _setup()
  cfg = ObjectiveConfig(objective="marginal")
  stats = _probe(params, model, batch, jax.random.key(4), cfg, _state(cfg, batch), 8)
  # Deterministic gradient: zero variance, and it is not the hard bound's gradient.
  assert float(stats["grad/variance"]) < 1e-10
  assert float(stats["grad/bias_sq"]) > 1e3 * max(float(stats["grad/bias_sq_floor"]), 1e-12)


def test_baselines_reduce_variance():
  model, params, batch = _setup()
  variances = {}
  for baseline, k in (("none", 4), ("rloo", 4), ("soft", 4)):
    cfg = ObjectiveConfig(objective="reinforce", baseline=baseline, num_samples=k)
    stats = _probe(params, model, batch, jax.random.key(5), cfg, _state(cfg, batch), 150)
    variances[baseline] = float(stats["grad/variance"])
  assert variances["rloo"] * 2 < variances["none"], variances
  assert variances["soft"] * 2 < variances["none"], variances


def test_ema_state_moves_only_with_ema_baseline():
  model, params, batch = _setup()
  for baseline, should_move in (("ema", True), ("none", False)):
    cfg = ObjectiveConfig(objective="reinforce", baseline=baseline)
    _, aux = _loss(model, params, batch, cfg)
    moved = not np.allclose(aux.state.ema.value, 0.0)
    assert moved == should_move, baseline


def test_every_objective_jits_and_matches_eager():
  model, params, batch = _setup()
  for cfg in (
    ObjectiveConfig(objective="marginal"),
    ObjectiveConfig(objective="hard_enum"),
    ObjectiveConfig(objective="reinforce", baseline="learned", entropy_coef=0.01),
    ObjectiveConfig(objective="reinforce", mix_probability=0.5, mix_scope="per_batch"),
  ):
    if cfg.baseline is BaselineKind.LEARNED:
      model, params, batch = _setup(learned_baseline=True)
    state = objectives.init_objective_state(cfg, batch.targets.shape[1])
    key = jax.random.key(6)
    eager, _ = objectives.loss_fn(params, model, batch, key, cfg, state)
    jitted, _ = jax.jit(objectives.loss_fn, static_argnums=(1, 4))(
      params, model, batch, key, cfg, state
    )
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)
    assert np.isfinite(float(eager))


def test_mixing_everything_gives_the_soft_objective_gradient_on_attention():
  # With mix_probability=1 every step uses the expected context: no score-function term.
  model, params, batch = _setup()
  cfg = ObjectiveConfig(objective="reinforce", mix_probability=1.0)
  stats = _probe(params, model, batch, jax.random.key(7), cfg, _state(cfg, batch), 16)
  assert float(stats["grad/variance"]) < 1e-10


def test_config_errors_name_key_and_choices():
  with pytest.raises(ValueError, match=r"baseline='mean'.*\['none', 'ema'"):
    ObjectiveConfig(objective="reinforce", baseline="mean")
  with pytest.raises(ValueError, match="num_samples >= 2"):
    ObjectiveConfig(objective="reinforce", baseline="rloo", num_samples=1)
  with pytest.raises(ValueError, match="mix_probability"):
    ObjectiveConfig(mix_probability=1.5)
  assert ObjectiveConfig(credit="reward_to_go").credit is CreditAssignment.REWARD_TO_GO
  assert (
    dataclasses.replace(ObjectiveConfig(), objective="marginal").objective is Objective.MARGINAL
  )


def test_enumeration_needs_position_logits():
  model, params, batch = _setup(feedback="sampled")
  with pytest.raises(ValueError, match="feedback"):
    _loss(model, params, batch, ObjectiveConfig(objective="hard_enum"))


@pytest.mark.parametrize("objective", ["hard_enum", "reinforce"])
def test_entropy_bonus_subtracts_the_mean_entropy_times_its_coefficient(objective):
  model, params, batch = _setup()
  plain, aux = _loss(model, params, batch, ObjectiveConfig(objective=objective))
  bonus, _ = _loss(model, params, batch, ObjectiveConfig(objective=objective, entropy_coef=0.1))
  np.testing.assert_allclose(plain - bonus, 0.1 * aux.metrics["attention_entropy"], rtol=1e-4)


def _variational_setup():
  return _setup(posterior=True)


def test_variational_enum_is_the_elbo_by_hand():
  model, params, batch = _variational_setup()
  cfg = ObjectiveConfig(objective="variational_enum", posterior=True, kl_weight=0.7)
  loss, aux = _loss(model, params, batch, cfg)
  out = model.apply(
    params,
    batch.inputs,
    batch.input_lengths,
    tasks.decoder_inputs(batch.targets),
    enumerate_positions=True,
    posterior_targets=(batch.targets, batch.target_lengths),
    rngs={"attention": jax.random.key(2)},
  )
  p = np.asarray(out.attention.weights, np.float64)
  q = np.asarray(out.posterior_weights, np.float64)
  log_softmax = jax.nn.log_softmax(np.asarray(out.position_logits, np.float64), axis=-1)
  total, count = 0.0, 0
  for b in range(batch.targets.shape[0]):
    for t in range(int(batch.target_lengths[b])):
      y, s = int(batch.targets[b, t]), int(batch.input_lengths[b])
      lik = np.asarray(log_softmax[b, t, :s, y])
      kl = np.sum(q[b, t, :s] * (np.log(q[b, t, :s]) - np.log(p[b, t, :s])))
      total += np.sum(q[b, t, :s] * lik) - 0.7 * kl
      count += 1
  np.testing.assert_allclose(loss, -total / count, rtol=1e-4)
  assert float(aux.metrics["kl"]) > 0.0


@pytest.mark.parametrize(
  "baseline, num_samples", [("none", 1), ("soft", 1), ("rloo", 4), ("ema", 2)]
)
def test_variational_reinforce_is_unbiased_for_the_exact_elbo(baseline, num_samples):
  # The probe's reference for a model with an inference network is the exact ELBO gradient.
  model, params, batch = _variational_setup()
  cfg = ObjectiveConfig(
    objective="variational_reinforce", posterior=True, baseline=baseline, num_samples=num_samples
  )
  state = _state(cfg, batch)
  if baseline == "ema":
    state = state._replace(ema=state.ema._replace(value=state.ema.value - 3.0))
  stats = _probe(params, model, batch, jax.random.key(4), cfg, state, num_samples=300)
  assert float(stats["grad/bias_sq"]) < 3.0 * float(stats["grad/bias_sq_floor"])
  assert float(stats["grad/variance"]) > 0.0


def test_vimco_bound_lies_between_jensen_and_the_marginal_and_tightens_with_k():
  # E[log mean_k p(y|z_k)] with z_k ~ α: K = 1 is the Jensen bound, K -> inf the marginal.
  model, params, batch = _setup()
  jensen = -float(_loss(model, params, batch, ObjectiveConfig(objective="hard_enum"))[0])
  marginal = -float(_loss(model, params, batch, ObjectiveConfig(objective="marginal"))[0])

  def mean_bound(k):
    cfg = ObjectiveConfig(objective="vimco", num_samples=k)
    keys = jax.random.split(jax.random.key(8), 64)
    losses = jax.jit(jax.vmap(lambda key: _loss(model, params, batch, cfg, key)[0]))(keys)
    return -float(jnp.mean(losses)), float(jnp.std(losses)) / 8.0

  bound2, err2 = mean_bound(2)
  bound16, err16 = mean_bound(16)
  assert jensen - 4 * err2 < bound2 < bound16 + 4 * (err2 + err16)
  assert bound16 < marginal + 4 * err16
  assert marginal > jensen


def test_vimco_with_a_posterior_estimates_its_bound_gradient_without_nans():
  model, params, batch = _variational_setup()
  cfg = ObjectiveConfig(objective="vimco", posterior=True, num_samples=4)
  loss_and_grad = jax.value_and_grad(lambda p: _loss(model, p, batch, cfg), has_aux=True)
  (loss, aux), grads = jax.jit(loss_and_grad)(params)
  assert np.isfinite(float(loss)) and float(aux.metrics["bound"]) == pytest.approx(-float(loss))
  norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads["params"])
  # q is trained by VIMCO's learning signal.
  assert sum(jax.tree.leaves(norms["posterior_attention"])) > 0.0
  assert all(np.isfinite(v) for v in jax.tree.leaves(norms))


def test_variational_objectives_jit_and_match_eager():
  model, params, batch = _variational_setup()
  for cfg in (
    ObjectiveConfig(objective="variational_enum", posterior=True),
    ObjectiveConfig(objective="variational_reinforce", posterior=True, baseline="soft"),
    ObjectiveConfig(objective="vimco", posterior=True, num_samples=3),
  ):
    key = jax.random.key(6)
    eager, _ = _loss(model, params, batch, cfg, key)
    state = _state(cfg, batch)
    jitted, _ = jax.jit(objectives.loss_fn, static_argnums=(1, 4))(
      params, model, batch, key, cfg, state
    )
    np.testing.assert_allclose(eager, jitted, rtol=1e-5)


def test_variational_config_errors():
  with pytest.raises(ValueError, match="needs posterior=True"):
    ObjectiveConfig(objective="variational_enum")
  with pytest.raises(ValueError, match="posterior=True applies to"):
    ObjectiveConfig(objective="hard_enum", posterior=True)
  with pytest.raises(ValueError, match="vimco.*num_samples >= 2"):
    ObjectiveConfig(objective="vimco", num_samples=1)
