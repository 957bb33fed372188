"""One head, one example: every attention switch behind a single pure function, ``attend``.

An attention switch is two independent choices, kept apart in :class:`AttentionSpec`:

* the *distribution* over key positions: softmax, sparsemax or entmax-1.5 of the scores;
* the *selection* of a context from it (an :class:`~attnlab.modules.kinds.EvalMode`): the
  expectation (soft), a sample or the argmax (hard), or a Gumbel-softmax relaxed sample.

Training kinds (:class:`~attnlab.modules.kinds.AttentionKind`) and evaluation modes
(:class:`~attnlab.modules.kinds.EvalMode`) both resolve to a spec (:func:`resolve_spec`), so
"evaluate a hard-trained model with its expected context" or "evaluate a sparsemax model by
its argmax" need no special cases. The math is :func:`attnlab.soft_attention` and
:func:`attnlab.hard_attention`; modules ``vmap`` :func:`attend` over heads and batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax.numpy as jnp

from attnlab import enums, hard, normalizers
from attnlab import masks as masks_lib
from attnlab.enums import Choice
from attnlab.modules.kinds import AttentionKind, EvalMode
from attnlab.soft import ScoreFn, soft_attention


class Distribution(Choice):
  """Normaliser that turns scores into a distribution over key positions."""

  SOFTMAX = "softmax"
  SPARSEMAX = "sparsemax"
  ENTMAX15 = "entmax15"


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
  """A resolved attention switch (static: it is part of the compiled program).

  Attributes:
    distribution: a :class:`Distribution`.
    selection: the :class:`~attnlab.modules.kinds.EvalMode` that reads a context from the
      distribution: its expectation (``SOFT``), or the value at the argmax or at a sample.
    relaxed: with ``selection=SAMPLE``, draw a Gumbel-softmax relaxed sample instead of a
      hard one (softmax distributions only): ``Σ_k y_k v_k`` with ``y`` the relaxed one-hot.
    gumbel_temperature: ``τ > 0`` of the Gumbel-softmax relaxation.
    straight_through: one-hot forward, relaxed backward (relaxed samples only).
  """

  distribution: Distribution = Distribution.SOFTMAX
  selection: EvalMode = EvalMode.SOFT
  relaxed: bool = False
  gumbel_temperature: float = 1.0
  straight_through: bool = False

  def __post_init__(self):
    if self.gumbel_temperature <= 0:
      raise ValueError(f"gumbel_temperature must be > 0, got {self.gumbel_temperature}.")
    if self.relaxed and (
      self.selection is not EvalMode.SAMPLE or self.distribution is not Distribution.SOFTMAX
    ):
      raise ValueError(
        "a relaxed (Gumbel-softmax) selection needs selection SAMPLE and the softmax "
        f"distribution, got {self.selection} and {self.distribution}."
      )

  @property
  def is_hard(self) -> bool:
    """True when one position is chosen (index and log_prob exist)."""
    return self.selection in (EvalMode.SAMPLE, EvalMode.ARGMAX) and not self.relaxed

  @property
  def needs_key(self) -> bool:
    """True when the selection is random (an ``"attention"`` PRNG key is consumed)."""
    return self.selection is EvalMode.SAMPLE


# Training kind -> (distribution, selection, relaxed).
_KIND_SPECS = {
  AttentionKind.SOFT: (Distribution.SOFTMAX, EvalMode.SOFT, False),
  AttentionKind.MARGINAL: (Distribution.SOFTMAX, EvalMode.SOFT, False),
  AttentionKind.HARD: (Distribution.SOFTMAX, EvalMode.SAMPLE, False),
  AttentionKind.GUMBEL: (Distribution.SOFTMAX, EvalMode.SAMPLE, True),
  AttentionKind.SPARSEMAX: (Distribution.SPARSEMAX, EvalMode.SOFT, False),
  AttentionKind.ENTMAX15: (Distribution.ENTMAX15, EvalMode.SOFT, False),
}


def parse_override(override: str | EvalMode | AttentionKind | None):
  """Parses an ``attention_override``: an :class:`EvalMode`, an :class:`AttentionKind` or a name.

  Names are looked up as evaluation modes first ("soft", "argmax", "sample"), then as kinds
  ("hard", "gumbel", "sparsemax", "entmax15", "marginal").
  """
  if override is None or isinstance(override, (EvalMode, AttentionKind)):
    return override
  for cls in (EvalMode, AttentionKind):
    if override in cls.values():
      return cls(override)
  valid = sorted(set(EvalMode.values()) | set(AttentionKind.values()))
  raise ValueError(enums.invalid_choice("attention_override", override, valid))


def resolve_spec(
  kind: str | AttentionKind,
  override: str | EvalMode | AttentionKind | None = None,
  *,
  gumbel_temperature: float = 1.0,
  straight_through: bool = False,
) -> AttentionSpec:
  """The spec of a model trained with ``kind`` and run with ``override``.

  Args:
    kind: the training :class:`AttentionKind`.
    override: ``None`` (use ``kind``), an :class:`EvalMode` (keep the trained distribution,
      select by expectation / argmax / sampling) or an :class:`AttentionKind` (use that kind).
    gumbel_temperature: Gumbel-softmax temperature.
    straight_through: straight-through Gumbel-softmax.

  Returns:
    An :class:`AttentionSpec`.
  """
  distribution, selection, relaxed = _KIND_SPECS[AttentionKind.parse(kind, name="kind")]
  override = parse_override(override)
  if isinstance(override, EvalMode):
    selection, relaxed = override, False
  elif isinstance(override, AttentionKind):
    distribution, selection, relaxed = _KIND_SPECS[override]
  return AttentionSpec(distribution, selection, relaxed, gumbel_temperature, straight_through)


def normalizer_of(distribution: Distribution) -> Callable[..., chex.Array]:
  """The normaliser function of a :class:`Distribution`."""
  if distribution is Distribution.SOFTMAX:
    return normalizers.softmax
  from attnlab import sparse_normalizers  # Lazy: only sparse models need it.

  if distribution is Distribution.SPARSEMAX:
    return sparse_normalizers.sparsemax
  return sparse_normalizers.entmax15


class Attended(NamedTuple):
  """Result of :func:`attend` (one head, one example).

  Attributes:
    context: ``[Tq, Dv]`` the context of the selection.
    expected_context: ``[Tq, Dv]`` ``Σ_k p_k v_k`` under the distribution (the same array as
      ``context`` for the expected selection).
    weights: ``[Tq, Tk]`` float32 distribution ``p`` (not the Gumbel sample).
    index: ``[Tq]`` int32 chosen position (hard selections), else ``None``.
    log_prob: ``[Tq]`` float32 ``log p_index``, differentiable (hard selections), else ``None``.
    entropy: ``[Tq]`` float32 ``-Σ_k p_k log p_k`` (0 for fully masked queries).
  """

  context: chex.Array
  expected_context: chex.Array
  weights: chex.Array
  index: chex.Array | None
  log_prob: chex.Array | None
  entropy: chex.Array


def _entropy(weights_QxK: chex.Array) -> chex.Array:
  """``-Σ p log p`` with ``0 log 0 = 0`` (sparse weights), finite gradient everywhere."""
  positive = weights_QxK > 0
  log_w = jnp.log(jnp.where(positive, weights_QxK, 1.0))
  return -jnp.sum(jnp.where(positive, weights_QxK * log_w, 0.0), axis=-1)


def _expected(weights_QxK: chex.Array, v_KxD: chex.Array) -> chex.Array:
  context = jnp.einsum("qk,kd->qd", weights_QxK, v_KxD, preferred_element_type=jnp.float32)
  return context.astype(v_KxD.dtype)


def attend(
  key: chex.PRNGKey | None,
  q: chex.Array,
  k: chex.Array,
  v: chex.Array,
  mask: chex.Array | None = None,
  *,
  score_fn: ScoreFn,
  spec: AttentionSpec = AttentionSpec(),
) -> Attended:
  """Attention of one head over one example, for any :class:`AttentionSpec`.

  With ``p = normalizer(score_fn(q, k))`` over the unmasked keys:

  * expected: ``context = Σ_k p_k v_k`` (:func:`attnlab.soft_attention`);
  * sample / argmax: ``context = v_z`` with ``z ~ p`` or ``z = argmax p``
    (:func:`attnlab.hard_attention`; for sparse distributions the categorical is taken over
    the support ``p > 0`` with logits ``log p``, so samples never leave the support);
  * gumbel: ``context = Σ_k y_k v_k``, ``y = softmax((s + g) / τ)``, ``g ~ Gumbel(0, 1)``
    (:func:`attnlab.estimators.gumbel_softmax`).

  Every selection also returns ``expected_context`` (one ``[Tq, Tk] x [Tk, Dv]`` product, no
  second score computation) and the entropy of ``p``. Fully masked queries get zeros.

  Args:
    key: PRNG key; required when ``spec.needs_key``, ignored otherwise.
    q: queries ``[Tq, Dq]``.
    k: keys ``[Tk, Dk]``.
    v: values ``[Tk, Dv]``.
    mask: bool ``[Tq, Tk]`` or ``[Tk]`` (``[1, Tk]``), ``True`` = may attend.
    score_fn: ``(q, k) -> scores [Tq, Tk]`` with its parameters bound.
    spec: the :class:`AttentionSpec`.

  Returns:
    :class:`Attended`.

  References:
    Deng et al., "Latent Alignment and Variational Attention", NeurIPS 2018; Jang et al.,
    ICLR 2017; Martins & Astudillo, ICML 2016; Peters et al., ACL 2019.
  """
  if spec.needs_key and key is None:
    raise ValueError(f"attention selection {spec.selection.value!r} needs a PRNG key.")
  normalizer = normalizer_of(spec.distribution)
  if spec.selection is EvalMode.SOFT:
    context, weights = soft_attention(q, k, v, mask, score_fn=score_fn, normalizer=normalizer)
    weights = weights.astype(jnp.float32)
    return Attended(context, context, weights, None, None, _entropy(weights))

  if spec.relaxed:
    from attnlab import estimators  # Lazy: estimators import the objectives' dependencies.

    chex.assert_rank([q, k, v], 2)
    mask_QxK = masks_lib.as_query_key_mask(mask, q.shape[0], k.shape[0])
    scores_QxK = score_fn(q, k)
    _, probs_QxK, entropy_Q, _ = hard.categorical_stats(scores_QxK, mask_QxK)
    sample_QxK = estimators.gumbel_softmax(
        key, scores_QxK, mask_QxK, temperature=spec.gumbel_temperature,
        straight_through=spec.straight_through,
    )  # fmt: skip
    return Attended(
      _expected(sample_QxK, v), _expected(probs_QxK, v), probs_QxK, None, None, entropy_Q
    )

  mode = hard.HardMode.SAMPLE if spec.selection is EvalMode.SAMPLE else hard.HardMode.ARGMAX
  if spec.distribution is Distribution.SOFTMAX:
    out = hard.hard_attention(key, q, k, v, mask, score_fn=score_fn, mode=mode)
  else:
    # A categorical over a sparse p: logits log p restricted to the support p > 0.
    mask_QxK = masks_lib.as_query_key_mask(mask, q.shape[0], k.shape[0])
    probs_QxK = normalizer(score_fn(q, k), mask_QxK).astype(jnp.float32)
    support_QxK = probs_QxK > 0
    log_p_QxK = jnp.log(jnp.where(support_QxK, probs_QxK, 1.0))
    out = hard.hard_attention(key, q, k, v, support_QxK, score_fn=lambda *_: log_p_QxK, mode=mode)
  return Attended(
    out.context, _expected(out.probs, v), out.probs, out.index, out.log_prob, out.entropy
  )
