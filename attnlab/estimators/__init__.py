"""Hard-attention gradient estimators: score function, baselines, enumeration, relaxations.

Hard attention picks one position ``z ~ α = p(z | x)``, so the gradient of an objective
through that choice must be estimated. Three objectives are kept apart (Deng et al. 2018):

  * soft attention ``log p(y | E_α[z])`` (no estimator needed; :func:`attnlab.soft_attention`);
  * the exact marginal likelihood ``log E_α[p(y | z)]``: :func:`marginal_log_likelihood`;
  * hard attention, the Jensen lower bound ``E_α[log p(y | z)]``: exactly by
    :func:`enumerated_bound`, or estimated with REINFORCE:
    :func:`score_function_surrogate` + a baseline + credit assignment.

Variational attention trains a posterior ``q(z | x, y)`` beside the prior ``α``: the ELBO
``E_q[log p(y | z)] - KL(q ‖ α)`` exactly by :func:`enumerated_elbo` (with
:func:`categorical_kl`), or from samples; :func:`vimco_surrogate` estimates the gradient of
the multi-sample bound :func:`multi_sample_bound` (Mnih & Rezende 2016).

Every function is pure, for one example (``vmap`` outward) or elementwise, and works under
``jit`` and ``vmap``. :func:`gradient_estimate_stats` measures an estimator against the
enumerated gradient.
"""

from attnlab.estimators.baselines import (
  BaselineKind,
  EmaBaseline,
  ema_baseline_init,
  ema_baseline_update,
  ema_baseline_value,
  learned_baseline_loss,
  leave_one_out_baseline,
  select_baseline,
)
from attnlab.estimators.credit import CreditAssignment, assign_credit, reward_to_go
from attnlab.estimators.diagnostics import gradient_estimate_stats
from attnlab.estimators.entropy import entropy_bonus
from attnlab.estimators.enumeration import enumerated_bound, marginal_log_likelihood
from attnlab.estimators.gumbel import gumbel_softmax
from attnlab.estimators.mixing import MixScope, expectation_mask, mix_with_expectation
from attnlab.estimators.surrogate import score_function_surrogate
from attnlab.estimators.variational import (
  categorical_kl,
  enumerated_elbo,
  multi_sample_bound,
  vimco_surrogate,
)

__all__ = [
  "BaselineKind",
  "CreditAssignment",
  "EmaBaseline",
  "MixScope",
  "assign_credit",
  "categorical_kl",
  "ema_baseline_init",
  "ema_baseline_update",
  "ema_baseline_value",
  "entropy_bonus",
  "enumerated_bound",
  "enumerated_elbo",
  "expectation_mask",
  "gradient_estimate_stats",
  "gumbel_softmax",
  "learned_baseline_loss",
  "leave_one_out_baseline",
  "marginal_log_likelihood",
  "mix_with_expectation",
  "multi_sample_bound",
  "reward_to_go",
  "score_function_surrogate",
  "select_baseline",
  "vimco_surrogate",
]
