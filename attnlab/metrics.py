"""Evaluation metrics for seq2seq with attention: pure, jit-friendly, masked for padding.

Every metric returns an :class:`Average` ``(total, count)`` rather than a batch mean, so
evaluation over many batches aggregates exactly (``a.merge(b)``; a mean of batch means is
wrong when batches hold different numbers of tokens). ``Average.value`` is the mean, 0 when
nothing was counted; ``float(avg)`` works outside ``jit``.

Shapes: ``B`` batch, ``T`` target steps, ``S`` source positions, ``V`` vocabulary. Weights
are the decoder's cross-attention ``[B, T, S]`` (``AttentionRecord.weights``); alignments are
``attnlab.tasks.Batch.alignment`` (gold source position, -1 where undefined, at EOS and at
padding), so alignment metrics need no extra mask.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from attnlab import masks

_F32 = jnp.float32

__all__ = [
  "Average",
  "HeadAlignment",
  "alignment_accuracy",
  "attention_entropy",
  "attention_mass_on_gold",
  "head_alignment_accuracy",
  "head_attention_entropy",
  "lenient_alignment_accuracy",
  "multi_head_alignment",
  "negative_log_likelihood",
  "sequence_accuracy",
  "support_size",
  "target_mask",
  "token_accuracy",
]


class Average(NamedTuple):
  """A mean kept as ``(total, count)`` so it aggregates exactly across batches.

  Attributes:
    total: float32 scalar, the sum of the per-item values.
    count: int32 scalar, how many items were counted.
  """

  total: chex.Array
  count: chex.Array

  @property
  def value(self) -> chex.Array:
    """``total / count``, and 0 when ``count == 0``."""
    return jnp.where(self.count > 0, self.total / jnp.maximum(self.count, 1), 0.0)

  @classmethod
  def zero(cls) -> Average:
    """The empty average, a start value for :meth:`merge` loops."""
    return cls(jnp.zeros((), _F32), jnp.zeros((), jnp.int32))

  def merge(self, other: Average) -> Average:
    """The average over the items of both."""
    return Average(self.total + other.total, self.count + other.count)

  def __float__(self) -> float:
    return float(self.value)


def _average(values_BxT: chex.Array, counted_BxT: chex.Array) -> Average:
  # `where`, not a product: an uncounted item may hold inf/NaN garbage.
  total = jnp.sum(jnp.where(counted_BxT, values_BxT.astype(_F32), 0.0))
  return Average(total, jnp.sum(counted_BxT, dtype=jnp.int32))


def target_mask(target_lengths_B: chex.Array, max_len: int) -> chex.Array:
  """bool ``[B, T]``: ``True`` at target steps ``t < target_lengths[b]`` (EOS included)."""
  chex.assert_rank(target_lengths_B, 1)
  return masks.padding_mask(target_lengths_B, max_len)


def token_accuracy(
  predictions_BxT: chex.Array, targets_BxT: chex.Array, mask_BxT: chex.Array
) -> Average:
  """Fraction of unmasked target tokens predicted exactly.

  ``Σ_{b,t} m_bt [ŷ_bt = y_bt] / Σ m_bt``. Under teacher forcing ``ŷ = argmax logits``;
  under greedy decoding ``ŷ`` is the decoded sequence padded to ``T`` (the two differ on
  token accuracy, not on sequence accuracy).

  Args:
    predictions_BxT: integer predicted tokens.
    targets_BxT: integer gold tokens.
    mask_BxT: bool, ``True`` at counted steps (see :func:`target_mask`).

  Returns:
    :class:`Average` over unmasked tokens.
  """
  chex.assert_rank([predictions_BxT, targets_BxT, mask_BxT], 2)
  chex.assert_equal_shape([predictions_BxT, targets_BxT, mask_BxT])
  return _average(predictions_BxT == targets_BxT, mask_BxT)


def sequence_accuracy(
  predictions_BxT: chex.Array, targets_BxT: chex.Array, mask_BxT: chex.Array
) -> Average:
  """Exact-match accuracy: a sequence counts as right only if every unmasked token is.

  With the mask from :func:`target_mask` (EOS included) this is exact match of greedy
  decoding: stopping early or late is a wrong token at the EOS step. Rows with no unmasked
  step (batch padding) are not counted.

  Args:
    predictions_BxT: integer predicted tokens.
    targets_BxT: integer gold tokens.
    mask_BxT: bool, ``True`` at counted steps.

  Returns:
    :class:`Average` over sequences.
  """
  chex.assert_rank([predictions_BxT, targets_BxT, mask_BxT], 2)
  chex.assert_equal_shape([predictions_BxT, targets_BxT, mask_BxT])
  wrong_BxT = mask_BxT & (predictions_BxT != targets_BxT)
  return _average(~jnp.any(wrong_BxT, axis=1), jnp.any(mask_BxT, axis=1))


def negative_log_likelihood(
  logits_BxTxV: chex.Array, targets_BxT: chex.Array, mask_BxT: chex.Array
) -> Average:
  """Mean per-token negative log-likelihood (nats), computed in float32.

  ``-Σ_{b,t} m_bt log softmax(logits_bt)[y_bt] / Σ m_bt``. Finite for any finite logits
  (bf16/fp16 are upcast first; masked steps never enter the sum).

  Args:
    logits_BxTxV: next-token logits, any float dtype.
    targets_BxT: integer gold tokens in ``[0, V)``.
    mask_BxT: bool, ``True`` at counted steps.

  Returns:
    :class:`Average` over unmasked tokens.
  """
  chex.assert_rank(logits_BxTxV, 3)
  chex.assert_rank([targets_BxT, mask_BxT], 2)
  chex.assert_equal_shape([targets_BxT, mask_BxT])
  chex.assert_equal_shape_prefix([logits_BxTxV, targets_BxT], 2)
  logits_BxTxV = logits_BxTxV.astype(_F32)
  log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  gold_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1, mode="clip")
  return _average(log_z_BxT - gold_BxT[..., 0], mask_BxT)


def _attended(weights_BxTxS: chex.Array, alignment_BxT: chex.Array):
  """argmax position per step, and whether the step is counted (gold defined, weights > 0)."""
  chex.assert_rank(weights_BxTxS, 3)
  chex.assert_rank(alignment_BxT, 2)
  chex.assert_equal_shape_prefix([weights_BxTxS, alignment_BxT], 2)
  argmax_BxT = jnp.argmax(weights_BxTxS, axis=-1)
  # A step whose weights are all zero (a fully masked row) attended nowhere: never correct.
  attended_BxT = jnp.max(weights_BxTxS, axis=-1) > 0
  return argmax_BxT, attended_BxT, alignment_BxT >= 0


def alignment_accuracy(weights_BxTxS: chex.Array, alignment_BxT: chex.Array) -> Average:
  """Fraction of steps whose most-attended source position is the gold one.

  ``Σ_{t: a_t >= 0} [argmax_s w_ts = a_t] / #{t: a_t >= 0}``; steps with alignment -1
  (EOS, padding, undefined) are excluded, and the count is ``Average.count``. Ties go to
  the first position (``jnp.argmax``); an all-zero row is never correct.

  Args:
    weights_BxTxS: attention weights per target step.
    alignment_BxT: int gold source position, -1 where not counted.

  Returns:
    :class:`Average` over counted steps.

  References:
    Deng et al., "Latent Alignment and Variational Attention", NeurIPS 2018.
  """
  argmax_BxT, attended_BxT, counted_BxT = _attended(weights_BxTxS, alignment_BxT)
  return _average(attended_BxT & (argmax_BxT == alignment_BxT), counted_BxT)


def lenient_alignment_accuracy(
  weights_BxTxS: chex.Array, alignment_BxT: chex.Array, inputs_BxS: chex.Array
) -> Average:
  """Alignment accuracy that accepts any source position holding the gold token.

  ``[x_{argmax_s w_ts} = x_{a_t}]`` over steps with ``a_t >= 0``. For sort with duplicate
  digits the stable-sort gold position is one of several equally valid ones.

  Args:
    weights_BxTxS: attention weights per target step.
    alignment_BxT: int gold source position, -1 where not counted.
    inputs_BxS: integer source tokens.

  Returns:
    :class:`Average` over counted steps (the same count as :func:`alignment_accuracy`).

  References:
    Vinyals et al., "Order Matters: Sequence to Sequence for Sets", ICLR 2016 (sorting).
  """
  chex.assert_rank(inputs_BxS, 2)
  chex.assert_equal_shape([weights_BxTxS[:, 0, :], inputs_BxS])
  argmax_BxT, attended_BxT, counted_BxT = _attended(weights_BxTxS, alignment_BxT)
  attended_token_BxT = jnp.take_along_axis(inputs_BxS, argmax_BxT, axis=1)
  gold_token_BxT = jnp.take_along_axis(inputs_BxS, alignment_BxT, axis=1, mode="clip")
  return _average(attended_BxT & (attended_token_BxT == gold_token_BxT), counted_BxT)


def attention_mass_on_gold(weights_BxTxS: chex.Array, alignment_BxT: chex.Array) -> Average:
  """Mean attention weight on the gold position, ``w_{t, a_t}``, over steps with ``a_t >= 0``.

  Args:
    weights_BxTxS: attention weights per target step.
    alignment_BxT: int gold source position, -1 where not counted.

  Returns:
    :class:`Average` over counted steps.
  """
  _, _, counted_BxT = _attended(weights_BxTxS, alignment_BxT)
  gold_BxTx1 = jnp.take_along_axis(
    weights_BxTxS.astype(_F32), alignment_BxT[..., None], axis=-1, mode="clip"
  )
  return _average(gold_BxTx1[..., 0], counted_BxT)


def attention_entropy(weights_BxTxS: chex.Array, mask_BxT: chex.Array) -> Average:
  """Mean entropy (nats) of the attention distribution per unmasked step.

  ``H_t = -Σ_s w_ts log w_ts`` with ``0 log 0 = 0`` (so sparse and all-zero rows are fine).
  Low entropy = sharp attention; ``log S`` = uniform over ``S`` positions.

  Args:
    weights_BxTxS: attention weights per target step.
    mask_BxT: bool, ``True`` at counted steps.

  Returns:
    :class:`Average` over unmasked steps.

  References:
    Deng et al., "Latent Alignment and Variational Attention", NeurIPS 2018 (Table 4).
  """
  chex.assert_rank(weights_BxTxS, 3)
  chex.assert_rank(mask_BxT, 2)
  chex.assert_equal_shape_prefix([weights_BxTxS, mask_BxT], 2)
  w_BxTxS = weights_BxTxS.astype(_F32)
  positive_BxTxS = w_BxTxS > 0
  w_log_w_BxTxS = jnp.where(
    positive_BxTxS, w_BxTxS * jnp.log(jnp.where(positive_BxTxS, w_BxTxS, 1.0)), 0.0
  )
  return _average(-jnp.sum(w_log_w_BxTxS, axis=-1), mask_BxT)


def support_size(
  weights_BxTxS: chex.Array, mask_BxT: chex.Array, threshold: float = 0.0
) -> Average:
  """Mean number of source positions with weight ``> threshold`` per unmasked step.

  With ``threshold=0`` this is the support of sparse normalisers (sparsemax, entmax give
  exact zeros); softmax gives the whole unmasked source. Masked source positions have
  weight 0 and never count.

  Args:
    weights_BxTxS: attention weights per target step.
    mask_BxT: bool, ``True`` at counted steps.
    threshold: weights strictly above it count (>= 0).

  Returns:
    :class:`Average` over unmasked steps.

  References:
    Martins & Astudillo, "From Softmax to Sparsemax", ICML 2016.
  """
  chex.assert_rank(weights_BxTxS, 3)
  chex.assert_rank(mask_BxT, 2)
  chex.assert_equal_shape_prefix([weights_BxTxS, mask_BxT], 2)
  if isinstance(threshold, (int, float)) and threshold < 0:
    raise ValueError(f"threshold must be >= 0, got {threshold}.")
  return _average(jnp.sum(weights_BxTxS > threshold, axis=-1), mask_BxT)


# ---- Multi-head, multi-layer cross-attention ---------------------------------------------
#
# A Transformer decoder has L cross-attention layers of H heads, each with its own
# distribution over source positions per target step: ``head_weights [B, L, H, T, S]``
# (``AttentionRecord.head_weights``). One head may track the gold alignment while the others
# read the length, the previous object or nothing useful, so a single number needs a rule:
#
# * best head: the alignment accuracy of the (layer, head) that aligns best on the evaluated
#   set. Every head's totals and counts ``[L, H]`` are summed over the batches of the set
#   (:class:`HeadAlignment`), and the head is chosen once, from those sums
#   (:meth:`HeadAlignment.summary`): the number is one head's accuracy over the whole set.
#   The head is chosen on the set it is scored on, so it is an optimistic estimate (with
#   H·L heads at chance level c it is at least c). Training's evaluation scores each split
#   (validation; test and OOD at the end) with that split's own best head, so the test and
#   OOD numbers are optimistic in the same way, and ``best_head`` per split shows whether
#   the splits agree on the head;
# * head mean: the alignment accuracy of the weights averaged over every layer and head (the
#   consensus; soft heads that split one position's mass still point at it);
# * any head: the fraction of steps on which some head's argmax is the gold position; for hard
#   attention, the steps where the gold symbol reached the output through a chosen position.
#   Read it against its chance level: K = L·H heads that each chose uniformly among a step's
#   n source positions would all miss the gold one with probability (1 - 1/n)^K, so some
#   head hits it with probability 1 - (1 - 1/n)^K (over 50% for K = 8 and n <= 12), the
#   mean of which over the counted steps is reported beside it;
# * entropy per head: each head's mean entropy; the mean over heads and the best head's.


def _check_heads(head_weights_BxLxHxTxS: chex.Array, alignment_BxT: chex.Array) -> None:
  chex.assert_rank(head_weights_BxLxHxTxS, 5)
  chex.assert_rank(alignment_BxT, 2)
  chex.assert_equal_shape_prefix([head_weights_BxLxHxTxS, alignment_BxT], 1)
  chex.assert_equal(head_weights_BxLxHxTxS.shape[3], alignment_BxT.shape[1])


def head_alignment_accuracy(
  head_weights_BxLxHxTxS: chex.Array, alignment_BxT: chex.Array
) -> Average:
  """:func:`alignment_accuracy` of every layer and head.

  Args:
    head_weights_BxLxHxTxS: attention weights of ``L`` layers of ``H`` heads per step.
    alignment_BxT: int gold source position, -1 where not counted.

  Returns:
    :class:`Average` whose ``total`` and ``count`` are ``[L, H]``.
  """
  _check_heads(head_weights_BxLxHxTxS, alignment_BxT)
  per_head = jax.vmap(jax.vmap(alignment_accuracy, (1, None)), (1, None))
  return per_head(head_weights_BxLxHxTxS, alignment_BxT)


def head_attention_entropy(head_weights_BxLxHxTxS: chex.Array, mask_BxT: chex.Array) -> Average:
  """:func:`attention_entropy` of every layer and head: ``total``/``count`` ``[L, H]``."""
  chex.assert_rank([head_weights_BxLxHxTxS, mask_BxT], [5, 2])
  per_head = jax.vmap(jax.vmap(attention_entropy, (1, None)), (1, None))
  return per_head(head_weights_BxLxHxTxS, mask_BxT)


class HeadAlignment(NamedTuple):
  """The sums behind the multi-head alignment metrics, kept per head (``[L, H]``) where needed.

  Every field is an :class:`Average`, so sets evaluated in several batches aggregate exactly
  (:meth:`merge`); the best head is chosen only by :meth:`summary`, once, on the aggregate
  (choosing it per batch and averaging the picks would mix heads: a number no head has).

  Attributes:
    accuracy_LxH: each layer's and head's alignment accuracy, ``total``/``count`` ``[L, H]``.
    entropy_LxH: each layer's and head's mean attention entropy, ``[L, H]``.
    head_mean: scalar, alignment accuracy of the weights averaged over layers and heads.
    any_head: scalar, fraction of counted steps on which some head's argmax is gold.
    any_head_chance: scalar, the expected ``any_head`` of heads that choose uniformly at
      random among the source positions.
  """

  accuracy_LxH: Average
  entropy_LxH: Average
  head_mean: Average
  any_head: Average
  any_head_chance: Average

  def merge(self, other: HeadAlignment) -> HeadAlignment:
    """The sums over the steps of both."""
    return HeadAlignment(*(a.merge(b) for a, b in zip(self, other, strict=True)))

  def summary(self) -> dict[str, Average]:
    """The scalar metrics, with the best head chosen once from the summed per-head accuracy.

    Returns:
      Scalar :class:`Average` values: ``alignment_accuracy_best_head`` (the total and count
      of the layer and head of highest accuracy; ties to the first),
      ``alignment_accuracy_head_mean``, ``alignment_accuracy_any_head``,
      ``alignment_accuracy_any_head_chance``,
      ``attention_entropy_per_head`` (the mean over heads of each head's mean entropy),
      ``attention_entropy_best_head`` and ``best_head`` (its index ``layer * H + head``, as
      ``total`` with ``count`` 1). Where no step has a gold position there is no best head:
      its three values have ``count`` 0. The values are final: merge
      :class:`HeadAlignment` values, not summaries.
    """
    best = jnp.argmax(self.accuracy_LxH.value.reshape(-1))
    # Every head counts the same steps (those with a gold position).
    chosen = self.accuracy_LxH.count.reshape(-1)[best] > 0

    def pick(avg: Average) -> Average:
      count = jnp.where(chosen, avg.count.reshape(-1)[best], 0)
      return Average(avg.total.reshape(-1)[best], count)

    return {
      "alignment_accuracy_best_head": pick(self.accuracy_LxH),
      "alignment_accuracy_head_mean": self.head_mean,
      "alignment_accuracy_any_head": self.any_head,
      "alignment_accuracy_any_head_chance": self.any_head_chance,
      # Every head counts the same (unmasked) steps, so the pooled mean is the mean of the
      # heads' means.
      "attention_entropy_per_head": Average(
        jnp.sum(self.entropy_LxH.total), jnp.sum(self.entropy_LxH.count)
      ),
      "attention_entropy_best_head": pick(self.entropy_LxH),
      "best_head": Average(best.astype(_F32), chosen.astype(jnp.int32)),
    }


def multi_head_alignment(
  head_weights_BxLxHxTxS: chex.Array,
  alignment_BxT: chex.Array,
  mask_BxT: chex.Array,
  input_lengths_B: chex.Array,
) -> HeadAlignment:
  """Alignment and entropy sums of a multi-head, multi-layer cross-attention (see above).

  Args:
    head_weights_BxLxHxTxS: attention weights of ``L`` layers of ``H`` heads per step.
    alignment_BxT: int gold source position, -1 where not counted.
    mask_BxT: bool, ``True`` at counted (unpadded) target steps, for the entropies.
    input_lengths_B: int number of source positions a head can choose, for the chance
      level: ``1 - (1 - 1/n)^(L·H)`` at each counted step of an example with ``n`` of them.

  Returns:
    A :class:`HeadAlignment`: merge it over the batches of a set, then take its
    :meth:`~HeadAlignment.summary`.

  References:
    Voita et al., "Analyzing Multi-Head Self-Attention: Specialized Heads Do the Heavy
    Lifting, the Rest Can Be Pruned", ACL 2019 (heads differ; a few align).
  """
  _check_heads(head_weights_BxLxHxTxS, alignment_BxT)
  chex.assert_rank(input_lengths_B, 1)
  batch, layers, heads, steps, positions = head_weights_BxLxHxTxS.shape
  flat_BxKxTxS = head_weights_BxLxHxTxS.reshape((batch, layers * heads, steps, positions))
  argmax_BxKxT = jnp.argmax(flat_BxKxTxS, axis=-1)
  attended_BxKxT = jnp.max(flat_BxKxTxS, axis=-1) > 0
  hit_BxT = jnp.any(attended_BxKxT & (argmax_BxKxT == alignment_BxT[:, None, :]), axis=1)
  # Rows of batch padding have no position; none of their steps is counted (alignment -1).
  choices_B = jnp.maximum(input_lengths_B, 1).astype(_F32)
  chance_B = 1.0 - (1.0 - 1.0 / choices_B) ** (layers * heads)
  counted_BxT = alignment_BxT >= 0
  return HeadAlignment(
    accuracy_LxH=head_alignment_accuracy(head_weights_BxLxHxTxS, alignment_BxT),
    entropy_LxH=head_attention_entropy(head_weights_BxLxHxTxS, mask_BxT),
    head_mean=alignment_accuracy(
      jnp.mean(head_weights_BxLxHxTxS.astype(_F32), axis=(1, 2)), alignment_BxT
    ),
    any_head=_average(hit_BxT, counted_BxT),
    any_head_chance=_average(jnp.broadcast_to(chance_B[:, None], counted_BxT.shape), counted_BxT),
  )
