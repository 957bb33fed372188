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

Variational attention (Deng et al. 2018) adds an inference network ``q(z_t | x, y)`` that
sees the target; the attention ``α`` becomes the prior, trained towards ``q`` by the KL:

* ``VARIATIONAL_ENUM``       ``Σ_t [Σ_z q_tz log p(y_t | z) - β KL(q_t ‖ α_t)]``: the exact
  ELBO and its exact gradient, by enumeration (the variational estimators' reference).
* ``VARIATIONAL_REINFORCE``  the same ELBO with ``E_q[log p(y_t | z)]`` estimated from K draws
  ``z ~ q`` (score function for ``q``, with a baseline: ``soft``, Deng et al.'s recipe, is
  the log-likelihood of the prior's expected context; ``rloo`` the other draws' mean); the
  KL stays exact.
* ``VIMCO``                  the multi-sample bound ``Σ_t log (1/K) Σ_k w_tk``, ``w_tk =
  α(z_k) p(y_t | z_k) / q(z_k)``, with the VIMCO gradient (Mnih & Rezende 2016); the
  proposal ``q`` is the inference network, or the attention itself without one (then
  ``w_tk = p(y_t | z_k)``: a multi-sample bound for hard attention between the Jensen
  bound and the marginal likelihood).

Per step ``t`` the bounds add up because ``z_t`` affects only step ``t`` (decoders that feed
back nothing or the expected context), so every bound here is a sum of per-step bounds.
Evaluation decodes with the prior (the attention) alone: ``q`` never sees a test target.

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
from attnlab.modules.kinds import AttentionKind
from attnlab.modules.outputs import AttentionRecord, Seq2SeqOutput


class Objective(Choice):
  """What the loss optimises (see the module docstring)."""

  SOFT = "soft"  # token NLL of the model's own (soft, sparse, relaxed) context.
  MARGINAL = "marginal"  # exact marginal likelihood, by enumerating the alignments.
  HARD_ENUM = "hard_enum"  # hard attention's Jensen bound with its exact gradient.
  REINFORCE = "reinforce"  # the same bound, its gradient estimated from K samples.
  VARIATIONAL_ENUM = "variational_enum"  # the ELBO with an inference network, exactly.
  VARIATIONAL_REINFORCE = "variational_reinforce"  # the ELBO, E_q estimated from draws.
  VIMCO = "vimco"  # the K-sample bound with the VIMCO gradient.


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
    posterior: train with the model's inference network ``q(z | x, y)`` (variational
      objectives; VIMCO's proposal); else the attention is the proposal.
    kl_weight: ``β`` of the KL term (1: the ELBO; variational objectives only).
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
  posterior: bool = False
  kl_weight: float = 1.0

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
    variational = (Objective.VARIATIONAL_ENUM, Objective.VARIATIONAL_REINFORCE)
    if self.objective in variational and not self.posterior:
      raise ValueError(f"objective {self.objective.value!r} needs posterior=True.")
    if self.posterior and self.objective not in (*variational, Objective.VIMCO):
      raise ValueError(
        f"posterior=True applies to {[o.value for o in (*variational, Objective.VIMCO)]}, "
        f"not {self.objective.value!r}."
      )
    if self.objective is Objective.VIMCO and self.num_samples < 2:
      raise ValueError(f"objective 'vimco' needs num_samples >= 2, got {self.num_samples}.")
    if self.kl_weight < 0.0:
      raise ValueError(f"kl_weight={self.kl_weight} must be >= 0.")

  @property
  def needs_enumeration(self) -> bool:
    return self.objective in (
      Objective.MARGINAL,
      Objective.HARD_ENUM,
      Objective.VARIATIONAL_ENUM,
    )

  @property
  def sampled(self) -> bool:
    """Whether the gradient is estimated from sampled alignments (so it has a variance)."""
    return self.objective in (
      Objective.REINFORCE,
      Objective.VARIATIONAL_REINFORCE,
      Objective.VIMCO,
    )

  @property
  def latent(self) -> bool:
    """Whether the objective scores alignments under decoder states that ignore them."""
    return self.needs_enumeration or self.objective in (
      Objective.VARIATIONAL_REINFORCE,
      Objective.VIMCO,
    )


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


def _apply(model, params, batch, key, **kwargs):
  # Training passes: a "dropout" stream too (models with dropout > 0 use it; evaluation,
  # which does not pass one, stays deterministic).
  dropout_key = jax.random.fold_in(key, 0x44524F50)  # "DROP"
  return model.apply(
    params,
    batch.inputs,
    batch.input_lengths,
    tasks.decoder_inputs(batch.targets),
    rngs={"attention": key, "dropout": dropout_key},
    **kwargs,
  )


def _gather_S(x_BxTxS: chex.Array, index_KxBxT: chex.Array) -> chex.Array:
  """``x[b, t, index[k, b, t]]``: ``[K, B, T]``."""
  return jnp.take_along_axis(x_BxTxS[None], index_KxBxT[..., None], axis=-1)[..., 0]


def _sampled_outputs(model, params, batch, key, num_samples, source_mask_BxS) -> Seq2SeqOutput:
  """``num_samples`` teacher-forced outputs, each with its own draws: fields ``[K, ...]``.

  When the decoder's states do not depend on the drawn positions (RNN decoders that feed
  back nothing or the expected context), the decoder runs once and only the K readouts of
  the drawn values differ (``num_samples`` of the model); otherwise the model runs K times.
  """
  if not model.config.states_ignore_alignment:
    keys = jax.random.split(key, num_samples)
    return jax.vmap(lambda k: _apply(model, params, batch, k))(keys)
  if model.config.attention is not AttentionKind.HARD:
    raise ValueError("REINFORCE needs a hard-attention model (attention kind 'hard').")
  out = _apply(model, params, batch, key, num_samples=num_samples)
  log_alpha_BxTxS = _log_alignment(out.attention.weights.astype(jnp.float32), source_mask_BxS)
  per_draw = lambda x: None if x is None else jnp.broadcast_to(x[None], (num_samples, *x.shape))
  return Seq2SeqOutput(
    logits=out.sample_logits,
    attention=AttentionRecord(
      weights=per_draw(out.attention.weights),
      index=out.sample_index,
      log_prob=_gather_S(log_alpha_BxTxS, out.sample_index),
      entropy=per_draw(out.attention.entropy),
    ),
    soft_logits=per_draw(out.logits),  # the attention's expected context (no draw)
    baseline=per_draw(out.baseline),
  )


def _reinforce_terms(params, model, batch, key, cfg, state, target_mask_BxT, source_mask_BxS):
  """Returns (bound-estimator loss, extra losses, metrics, new state)."""
  sample_key, mix_key = jax.random.split(key)
  outs = _sampled_outputs(model, params, batch, sample_key, cfg.num_samples, source_mask_BxS)
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


def _latent_terms(params, model, batch, key, cfg, state, target_mask_BxT, source_mask_BxS):
  """(bound loss, extra loss, metrics, new state) of the variational and VIMCO objectives."""
  enum = cfg.objective is Objective.VARIATIONAL_ENUM
  out = _apply(
    model,
    params,
    batch,
    key,
    enumerate_positions=enum,
    posterior_targets=(batch.targets, batch.target_lengths) if cfg.posterior else None,
    num_samples=0 if enum else cfg.num_samples,
  )
  log_p_BxTxS = _log_alignment(out.attention.weights.astype(jnp.float32), source_mask_BxS)
  log_q_BxTxS = log_p_BxTxS
  if cfg.posterior:
    log_q_BxTxS = _log_alignment(out.posterior_weights.astype(jnp.float32), source_mask_BxS)
  mask_BxTxS = jnp.broadcast_to(source_mask_BxS[:, None, :], log_p_BxTxS.shape)
  over_steps = lambda fn: jax.vmap(jax.vmap(fn))
  kl_BxT = over_steps(estimators.categorical_kl)(log_q_BxTxS, log_p_BxTxS, mask_BxTxS)
  q_BxTxS = jnp.where(mask_BxTxS, jnp.exp(log_q_BxTxS), 0.0)
  posterior_entropy_BxT = -jnp.sum(q_BxTxS * log_q_BxTxS, axis=-1)
  metric_values = {
    "kl": _masked_mean(kl_BxT, target_mask_BxT),
    "attention_entropy": _masked_mean(out.attention.entropy, target_mask_BxT),
    "posterior_entropy": _masked_mean(posterior_entropy_BxT, target_mask_BxT),
  }
  n_tokens = jnp.maximum(jnp.sum(target_mask_BxT.astype(jnp.float32)), 1.0)
  if enum:
    log_lik_BxTxS = _position_log_likelihood(out, batch.targets)
    elbo_BxT = over_steps(
      lambda q, p, lik, m: estimators.enumerated_elbo(q, p, lik, m, kl_weight=cfg.kl_weight)
    )(log_q_BxTxS, log_p_BxTxS, log_lik_BxTxS, mask_BxTxS)
    bound_loss = -_masked_mean(elbo_BxT, target_mask_BxT)
    expected_log_lik_BxT = elbo_BxT + cfg.kl_weight * kl_BxT
    metric_values["nll"] = -_masked_mean(expected_log_lik_BxT, target_mask_BxT)
    metric_values["token_accuracy"] = _masked_mean(
      (jnp.argmax(out.logits, -1) == batch.targets).astype(jnp.float32), target_mask_BxT
    )
  else:
    log_lik_KxBxT = jax.vmap(_token_log_likelihood, (0, None))(out.sample_logits, batch.targets)
    mask_KxBxT = jnp.broadcast_to(target_mask_BxT[None], log_lik_KxBxT.shape)
    log_q_KxBxT = _gather_S(log_q_BxTxS, out.sample_index)
    metric_values["nll"] = -_masked_mean(log_lik_KxBxT, mask_KxBxT)
    metric_values["token_accuracy"] = _masked_mean(
      (jnp.argmax(out.sample_logits, -1) == batch.targets[None]).astype(jnp.float32), mask_KxBxT
    )
    if cfg.objective is Objective.VIMCO:
      # log w = β (log α(z) - log q(z)) + log p(y | z); without a posterior q = α, so w = p(y|z).
      log_w_KxBxT = (
        cfg.kl_weight * (_gather_S(log_p_BxTxS, out.sample_index) - log_q_KxBxT) + log_lik_KxBxT
      )
      # Padded steps hold arbitrary values: zero them before the per-step surrogate.
      clean = lambda x: jnp.moveaxis(jnp.where(mask_KxBxT, x, 0.0), 0, -1)  # [B, T, K]
      surrogate_BxT = over_steps(estimators.vimco_surrogate)(clean(log_q_KxBxT), clean(log_w_KxBxT))
      bound_loss = jnp.sum(jnp.where(target_mask_BxT, surrogate_BxT, 0.0)) / n_tokens
      metric_values["bound"] = -bound_loss
    else:  # VARIATIONAL_REINFORCE: E_q[log p(y|z)] from draws, the KL exact.
      baseline_KxBxT = estimators.select_baseline(
        cfg.baseline,
        log_lik_KxBxT,
        ema_state=state.ema,
        # The prior's expected context under the same decoder states (Deng et al. 2018).
        soft_reward=jnp.broadcast_to(
          _token_log_likelihood(out.logits, batch.targets)[None], log_lik_KxBxT.shape
        )
        if cfg.baseline is estimators.BaselineKind.SOFT
        else None,
      )
      surrogate = estimators.score_function_surrogate(
        log_q_KxBxT, log_lik_KxBxT, baseline_KxBxT, mask=mask_KxBxT
      )
      mask_f = mask_KxBxT.astype(jnp.float32)
      n_draws = jnp.maximum(jnp.sum(mask_f), 1.0)
      expected_log_lik = (jnp.sum(log_lik_KxBxT * mask_f) - surrogate) / n_draws
      bound_loss = -expected_log_lik + cfg.kl_weight * _masked_mean(kl_BxT, target_mask_BxT)
      advantage = jax.lax.stop_gradient(log_lik_KxBxT - baseline_KxBxT)
      metric_values["advantage_rms"] = jnp.sqrt(_masked_mean(advantage**2, mask_KxBxT))
      if cfg.baseline is estimators.BaselineKind.EMA:
        state = ObjectiveState(
          ema=estimators.ema_baseline_update(
            state.ema,
            log_lik_KxBxT.reshape((-1, log_lik_KxBxT.shape[-1])),
            mask_KxBxT.reshape((-1, mask_KxBxT.shape[-1])),
            decay=cfg.ema_decay,
          )
        )
  bonus = _entropy_bonus(out.attention.entropy, target_mask_BxT, cfg.entropy_coef)
  return bound_loss, -bonus, metric_values, state


def _objective_terms(params, model, batch, key, cfg, state):
  """(estimator loss, extra loss, metrics, new state) for every objective."""
  batch = jax.tree.map(jnp.asarray, batch)
  target_len = batch.targets.shape[1]
  target_mask_BxT = metrics.target_mask(batch.target_lengths, target_len)
  source_mask_BxS = metrics.target_mask(batch.input_lengths, batch.inputs.shape[1])
  if cfg.objective is Objective.REINFORCE:
    return _reinforce_terms(params, model, batch, key, cfg, state, target_mask_BxT, source_mask_BxS)
  if cfg.objective in (Objective.VARIATIONAL_REINFORCE, Objective.VIMCO) or cfg.posterior:
    return _latent_terms(params, model, batch, key, cfg, state, target_mask_BxT, source_mask_BxS)

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
  enumerated, the exact reference is the ``HARD_ENUM`` gradient, giving cosine and bias;
  with an inference network (variational objectives, VIMCO with the posterior as proposal)
  it is the exact ELBO's gradient (``VARIATIONAL_ENUM``). VIMCO estimates the gradient of
  another, tighter bound, so its "bias" includes the difference between the two bounds.

  Returns:
    dict with ``grad/variance``, ``grad/snr`` and, where enumerable, ``grad/cosine`` and
    ``grad/bias_sq`` (scalars).
  """
  batch = jax.tree.map(jnp.asarray, batch)

  def estimate(k):
    return jax.grad(lambda p: _objective_terms(p, model, batch, k, cfg, state)[0])(params)

  exact = None
  if _is_enumerable(params, model, batch, key):
    exact_objective = Objective.VARIATIONAL_ENUM if cfg.posterior else Objective.HARD_ENUM
    exact_cfg = dataclasses.replace(cfg, objective=exact_objective)
    exact = jax.grad(lambda p: _objective_terms(p, model, batch, key, exact_cfg, state)[0])(params)
  stats = estimators.gradient_estimate_stats(estimate, key, num_samples, exact=exact)
  return {f"grad/{name}": value for name, value in stats.items() if value is not None}
