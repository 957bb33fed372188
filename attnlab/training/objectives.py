"""Training objectives for every attention method, behind one ``loss_fn``.

Deng et al. (2018) separate three objectives for a latent alignment ``z_t`` (the source
position attended at target step ``t``), and attnlab keeps them apart:

* ``SOFT``       ``Σ_t log p(y_t | E[z_t])``: token NLL of the model's own logits (soft,
  sparsemax, entmax-1.5 and Gumbel-relaxed attention all train this way).
* ``MARGINAL``   ``Σ_t log Σ_z α_tz p(y_t | z)``: exact marginal likelihood by enumeration.
* ``HARD_ENUM``  ``Σ_t Σ_z α_tz log p(y_t | z)``: the hard-attention (Jensen) bound with its
  exact gradient, by enumeration: the zero-variance reference.
* ``REINFORCE``  the same bound, its gradient estimated from K sampled alignments with a
  score-function estimator, a baseline and an optional entropy bonus.

Enumeration needs ``Seq2SeqOutput.position_logits`` (the model computes ``p(y_t | z)`` for
every ``z``), which exists when the decoder's future does not depend on the sample (RNN
family, feedback "none" or "expected").

All losses are means over unpadded target tokens, so the REINFORCE loss's gradient is an
unbiased estimate of the ``HARD_ENUM`` loss's gradient (the probe measures exactly that).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from attnlab import estimators, metrics, tasks
from attnlab.enums import Choice
from attnlab.modules.outputs import Seq2SeqOutput


class Objective(Choice):
  """What the loss optimises (see the module docstring)."""

  SOFT = "soft"  # token NLL of the model's own (soft, sparse, relaxed) context.
  MARGINAL = "marginal"  # exact marginal likelihood, by enumerating the alignments.
  HARD_ENUM = "hard_enum"  # hard attention's Jensen bound with its exact gradient.
  REINFORCE = "reinforce"  # the same bound, its gradient estimated from K samples.


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Settings of the training objective.

  Attributes:
    objective: an :class:`Objective`.
    baseline: an :class:`attnlab.estimators.BaselineKind` (REINFORCE only): ``EMA`` is a
      per-target-step average of the return, ``LEARNED`` a value head on the decoder state,
      ``RLOO`` the mean return of the other K-1 samples, ``SOFT`` the return of the soft
      context under the same decoder states.
    num_samples: K alignments sampled per example (REINFORCE; RLOO needs K >= 2).
    credit: an :class:`attnlab.estimators.CreditAssignment` (REINFORCE only): which return
      multiplies ``∇ log α(z_t)``, e.g. ``PER_STEP`` ``log p(y_t | z_t)``, exact credit when
      ``z_t`` only affects step ``t``, or ``REWARD_TO_GO``, unbiased in general.
    entropy_coef: weight of the attention-entropy bonus (Xu et al. 2015 used 0.002).
    mix_probability: probability of using the expected context instead of the sample.
    mix_scope: :class:`attnlab.estimators.MixScope`, per example or per batch.
    ema_decay: decay of the EMA baseline (Xu et al. 2015: 0.9).
    baseline_loss_coef: weight of the learned baseline's regression loss.
  """

  objective: Objective = Objective.SOFT
  baseline: estimators.BaselineKind = estimators.BaselineKind.NONE
  num_samples: int = 1
  credit: estimators.CreditAssignment = estimators.CreditAssignment.PER_STEP
  entropy_coef: float = 0.0
  mix_probability: float = 0.0
  mix_scope: estimators.MixScope = estimators.MixScope.PER_EXAMPLE
  ema_decay: float = 0.9
  baseline_loss_coef: float = 1.0

  def __post_init__(self):
    for field, cls in (
      ("objective", Objective),
      ("baseline", estimators.BaselineKind),
      ("credit", estimators.CreditAssignment),
      ("mix_scope", estimators.MixScope),
    ):
      object.__setattr__(self, field, cls.parse(getattr(self, field), name=field))
    if self.num_samples < 1:
      raise ValueError(f"num_samples={self.num_samples} must be >= 1.")
    if self.baseline is estimators.BaselineKind.RLOO and self.num_samples < 2:
      raise ValueError(f"baseline=rloo needs num_samples >= 2, got {self.num_samples}.")
    if not 0.0 <= self.mix_probability <= 1.0:
      raise ValueError(f"mix_probability={self.mix_probability} must be in [0, 1].")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"ema_decay={self.ema_decay} must be in [0, 1).")

  @property
  def needs_enumeration(self) -> bool:
    return self.objective in (Objective.MARGINAL, Objective.HARD_ENUM)


class ObjectiveState(NamedTuple):
  """State carried across steps (same structure for every method, so one train step fits all)."""

  ema: estimators.EmaBaseline


class LossAux(NamedTuple):
  metrics: dict[str, chex.Array]
  state: ObjectiveState


def init_objective_state(cfg: ObjectiveConfig, max_target_len: int) -> ObjectiveState:
  """Initial :class:`ObjectiveState` for targets of at most ``max_target_len`` steps."""
  del cfg  # Every method carries the EMA so the state's structure never depends on config.
  return ObjectiveState(ema=estimators.ema_baseline_init(max_target_len))


def _token_log_likelihood(logits_BxTxV: chex.Array, targets_BxT: chex.Array) -> chex.Array:
  log_probs = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets_BxT[..., None], axis=-1)[..., 0]


def _masked_mean(x: chex.Array, mask: chex.Array) -> chex.Array:
  mask = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _position_log_likelihood(out: Seq2SeqOutput, targets_BxT: chex.Array) -> chex.Array:
  """``log p(y_t | z)`` for every source position: ``[B, T, S]``."""
  if out.position_logits is None:
    raise ValueError(
      "this objective enumerates alignments, but the model returned no position_logits: "
      "use the RNN family with feedback 'none' or 'expected'."
    )
  log_probs_BxTxSxV = jax.nn.log_softmax(out.position_logits.astype(jnp.float32), axis=-1)
  targets_BxTxSx1 = jnp.broadcast_to(
    targets_BxT[:, :, None, None], log_probs_BxTxSxV.shape[:3] + (1,)
  )
  return jnp.take_along_axis(log_probs_BxTxSxV, targets_BxTxSx1, axis=-1)[..., 0]


def _log_alignment(weights_BxTxS: chex.Array, source_mask_BxS: chex.Array) -> chex.Array:
  """``log α`` from the attention distribution; finite, 0 at masked positions."""
  mask_BxTxS = jnp.broadcast_to(source_mask_BxS[:, None, :], weights_BxTxS.shape)
  safe = jnp.where(mask_BxTxS, weights_BxTxS, 1.0)
  # Floor at the smallest normal float: an underflowed α has zero gradient, never inf.
  return jnp.where(mask_BxTxS, jnp.log(jnp.maximum(safe, jnp.finfo(jnp.float32).tiny)), 0.0)


def _enumerated(out, batch, source_mask_BxS, per_position_fn):
  log_lik_BxTxS = _position_log_likelihood(out, batch.targets)
  log_alpha_BxTxS = _log_alignment(out.attention.weights.astype(jnp.float32), source_mask_BxS)
  mask_BxTxS = jnp.broadcast_to(source_mask_BxS[:, None, :], log_lik_BxTxS.shape)
  over_steps = jax.vmap(jax.vmap(per_position_fn))
  return over_steps(log_alpha_BxTxS, log_lik_BxTxS, mask_BxTxS)  # [B, T]


def _returns(rewards_KxBxT, mask_KxBxT, credit: estimators.CreditAssignment):
  """Per-step returns ``[K, B, T]`` (0 at padded steps); ``mask_KxBxT`` is bool."""
  over_sequences = jax.vmap(jax.vmap(estimators.assign_credit, (0, 0, None)), (0, 0, None))
  return over_sequences(rewards_KxBxT, mask_KxBxT, credit)


def _entropy_bonus(entropy: chex.Array, mask: chex.Array, coefficient: float) -> chex.Array:
  """The entropy bonus per unpadded token (a mean, like every term of the loss)."""
  num_tokens = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
  return estimators.entropy_bonus(entropy, mask, coefficient) / num_tokens


def _apply(model, params, batch, key, *, enumerate_positions=False):
  # Training passes: a "dropout" stream too (models with dropout > 0 use it; evaluation,
  # which does not pass one, stays deterministic).
  dropout_key = jax.random.fold_in(key, 0x44524F50)  # "DROP"
  return model.apply(
    params,
    batch.inputs,
    batch.input_lengths,
    tasks.decoder_inputs(batch.targets),
    enumerate_positions=enumerate_positions,
    rngs={"attention": key, "dropout": dropout_key},
  )


def _reinforce_terms(params, model, batch, key, cfg, state, target_mask_BxT):
  """Returns (bound-estimator loss, extra losses, metrics, new state)."""
  sample_key, mix_key = jax.random.split(key)
  keys = jax.random.split(sample_key, cfg.num_samples)
  outs = jax.vmap(lambda k: _apply(model, params, batch, k))(keys)  # leading [K]
  if outs.soft_logits is None or outs.attention.log_prob is None:
    raise ValueError("REINFORCE needs a hard-attention model (attention kind 'hard').")
  log_lik_KxBxT = jax.vmap(_token_log_likelihood, (0, None))(outs.logits, batch.targets)
  mask_KxBxT = jnp.broadcast_to(target_mask_BxT[None], log_lik_KxBxT.shape)
  mask_f = mask_KxBxT.astype(jnp.float32)
  # The soft readout is computed only when used (a Transformer needs a second decoder
  # pass for it); otherwise XLA drops it from the program.
  needs_soft = cfg.baseline is estimators.BaselineKind.SOFT or cfg.mix_probability > 0.0
  soft_log_lik_KxBxT = (
    jax.vmap(_token_log_likelihood, (0, None))(outs.soft_logits, batch.targets)
    if needs_soft
    else None
  )

  # Expectation mixing: where chosen, the step uses the soft context and its exact gradient.
  use_soft_KxBxT = jnp.zeros(log_lik_KxBxT.shape, bool)
  used_log_lik = log_lik_KxBxT
  if cfg.mix_probability > 0.0:
    batch_size = target_mask_BxT.shape[0]
    mix_keys = jax.random.split(mix_key, cfg.num_samples)
    # The same key gives the same coins: the mask says which examples used the expectation.
    use_soft_KxB = jax.vmap(
      lambda k: estimators.expectation_mask(k, batch_size, cfg.mix_probability, cfg.mix_scope)
    )(mix_keys)
    use_soft_KxBxT = jnp.broadcast_to(use_soft_KxB[:, :, None], log_lik_KxBxT.shape)
    used_log_lik = jax.vmap(
      lambda k, sampled, expected: estimators.mix_with_expectation(
        k, sampled, expected, cfg.mix_probability, cfg.mix_scope
      )
    )(mix_keys, log_lik_KxBxT, soft_log_lik_KxBxT)

  returns_KxBxT = _returns(log_lik_KxBxT, mask_KxBxT, cfg.credit)
  extra_loss = jnp.zeros((), jnp.float32)
  if cfg.baseline is estimators.BaselineKind.LEARNED:
    if outs.baseline is None:
      raise ValueError("baseline=learned needs a model built with learned_baseline=True.")
    # Per-token mean, like the bound, so the coefficient does not scale with batch or K.
    extra_loss = (
      cfg.baseline_loss_coef
      * estimators.learned_baseline_loss(outs.baseline, returns_KxBxT, mask_KxBxT)
      / jnp.maximum(jnp.sum(mask_f), 1.0)
    )
  baseline_KxBxT = estimators.select_baseline(
    cfg.baseline,
    returns_KxBxT,
    ema_state=state.ema,
    prediction=outs.baseline,
    # The soft context's return under the same decoder states.
    soft_reward=_returns(soft_log_lik_KxBxT, mask_KxBxT, cfg.credit)
    if cfg.baseline is estimators.BaselineKind.SOFT
    else None,
  )

  score_mask = mask_KxBxT & ~use_soft_KxBxT
  surrogate = estimators.score_function_surrogate(
    outs.attention.log_prob, returns_KxBxT, baseline_KxBxT, mask=score_mask
  )
  n_tokens = jnp.maximum(jnp.sum(mask_f), 1.0)
  # Pathwise term ∇ log p(y | z) plus the score-function term, both per-token means.
  bound_loss = (-jnp.sum(used_log_lik * mask_f) + surrogate) / n_tokens
  entropy = _masked_mean(outs.attention.entropy, mask_KxBxT)
  new_state = ObjectiveState(
    ema=estimators.ema_baseline_update(
      state.ema,
      returns_KxBxT.reshape((-1, returns_KxBxT.shape[-1])),
      mask_KxBxT.reshape((-1, mask_KxBxT.shape[-1])),
      decay=cfg.ema_decay,
    )
    if cfg.baseline is estimators.BaselineKind.EMA
    else state.ema
  )
  advantage = jax.lax.stop_gradient(returns_KxBxT - baseline_KxBxT)
  metric_values = {
    "nll": -_masked_mean(log_lik_KxBxT, mask_KxBxT),
    "return": _masked_mean(returns_KxBxT, mask_KxBxT),
    "advantage_rms": jnp.sqrt(_masked_mean(advantage**2, mask_KxBxT)),
    "attention_entropy": entropy,
    "token_accuracy": _masked_mean(
      (jnp.argmax(outs.logits, -1) == batch.targets[None]).astype(jnp.float32), mask_KxBxT
    ),
  }
  bonus = _entropy_bonus(outs.attention.entropy, mask_KxBxT, cfg.entropy_coef)
  return bound_loss, extra_loss - bonus, metric_values, new_state


def _objective_terms(params, model, batch, key, cfg, state):
  """(estimator loss, extra loss, metrics, new state) for every objective."""
  batch = jax.tree.map(jnp.asarray, batch)
  target_len = batch.targets.shape[1]
  target_mask_BxT = metrics.target_mask(batch.target_lengths, target_len)
  source_mask_BxS = metrics.target_mask(batch.input_lengths, batch.inputs.shape[1])
  if cfg.objective is Objective.REINFORCE:
    return _reinforce_terms(params, model, batch, key, cfg, state, target_mask_BxT)

  out = _apply(model, params, batch, key, enumerate_positions=cfg.needs_enumeration)
  entropy = _masked_mean(out.attention.entropy, target_mask_BxT)
  token_accuracy = _masked_mean(
    (jnp.argmax(out.logits, -1) == batch.targets).astype(jnp.float32), target_mask_BxT
  )
  if cfg.objective is Objective.SOFT:
    per_step_BxT = _token_log_likelihood(out.logits, batch.targets)
  elif cfg.objective is Objective.MARGINAL:
    per_step_BxT = _enumerated(out, batch, source_mask_BxS, estimators.marginal_log_likelihood)
  else:  # HARD_ENUM
    per_step_BxT = _enumerated(out, batch, source_mask_BxS, estimators.enumerated_bound)
  loss = -_masked_mean(per_step_BxT, target_mask_BxT)
  metric_values = {"nll": loss, "attention_entropy": entropy, "token_accuracy": token_accuracy}
  bonus = _entropy_bonus(out.attention.entropy, target_mask_BxT, cfg.entropy_coef)
  return loss, -bonus, metric_values, state


def loss_fn(params, model, batch, key, cfg: ObjectiveConfig, state: ObjectiveState):
  """The training loss of any method.

  Args:
    params: model parameters.
    model: a Flax module following the :class:`Seq2SeqOutput` contract.
    batch: :class:`attnlab.tasks.Batch` (numpy or jnp arrays).
    key: PRNG key for this step (alignment samples, mixing).
    cfg: :class:`ObjectiveConfig`.
    state: :class:`ObjectiveState` (EMA baseline).

  Returns:
    ``(loss, LossAux(metrics, new_state))``; use ``jax.value_and_grad(..., has_aux=True)``.
  """
  bound_loss, extra_loss, metric_values, new_state = _objective_terms(
    params, model, batch, key, cfg, state
  )
  loss = bound_loss + extra_loss
  metric_values = dict(metric_values, loss=loss)
  return loss, LossAux(metrics=metric_values, state=new_state)


def _is_enumerable(params, model, batch, key) -> bool:
  """Whether the model can score every alignment exactly (traced shapes only, no compute)."""
  try:
    out = jax.eval_shape(lambda p: _apply(model, p, batch, key, enumerate_positions=True), params)
  except ValueError:  # e.g. sampled feedback: later states depend on the sample.
    return False
  return out.position_logits is not None and out.attention.log_prob is not None


def gradient_probe(params, model, batch, key, cfg: ObjectiveConfig, state, num_samples: int):
  """Statistics of ``num_samples`` independent gradient estimates of the objective.

  The estimate is the gradient of the objective's own term (bound or likelihood), without
  the entropy bonus or the learned baseline's regression loss, so that estimators of the
  same objective are compared like for like. For hard-attention models whose bound can be
  enumerated, the exact reference is the ``HARD_ENUM`` gradient, giving cosine and bias.

  Returns:
    dict with ``grad/variance``, ``grad/snr`` and, where enumerable, ``grad/cosine`` and
    ``grad/bias_sq`` (scalars).
  """
  batch = jax.tree.map(jnp.asarray, batch)

  def estimate(k):
    return jax.grad(lambda p: _objective_terms(p, model, batch, k, cfg, state)[0])(params)

  exact = None
  if _is_enumerable(params, model, batch, key):
    exact_cfg = dataclasses.replace(cfg, objective=Objective.HARD_ENUM)
    exact = jax.grad(lambda p: _objective_terms(p, model, batch, key, exact_cfg, state)[0])(params)
  stats = estimators.gradient_estimate_stats(estimate, key, num_samples, exact=exact)
  return {f"grad/{name}": value for name, value in stats.items() if value is not None}
