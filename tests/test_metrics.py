"""Tests for attnlab.metrics: hand-computed values, masking, aggregation, jit == eager."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from attnlab import metrics, tasks

# Two sequences, T = 4: lengths 3 and 1.
TARGETS = np.array([[5, 6, 2, 0], [7, 0, 0, 0]], np.int32)
MASK = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)

# Weights [B=1, T=4, S=3]; gold alignment with an excluded (-1) step.
WEIGHTS = np.array(
  [
    [
      [0.7, 0.2, 0.1],  # argmax 0, gold 0: right; mass 0.7
      [0.5, 0.5, 0.0],  # tie -> 0, gold 1: wrong;  mass 0.5
      [0.0, 0.0, 0.0],  # empty row, gold 0: wrong; mass 0
      [0.1, 0.1, 0.8],  # gold -1: excluded
    ]
  ],
  np.float32,
)
ALIGNMENT = np.array([[0, 1, 0, -1]], np.int32)


# Jitted once per metric: one compile per shape instead of one per primitive (eager), which
# keeps this file fast on a shared CPU. Eager == jit is checked in `test_jit_equals_eager`.
_METRICS = [
  name for name in metrics.__all__ if name not in ("Average", "HeadAlignment", "target_mask")
]
J = types.SimpleNamespace(**{name: jax.jit(getattr(metrics, name)) for name in _METRICS})


def _close(avg, total, count):
  np.testing.assert_allclose(float(avg.total), total, rtol=1e-6, atol=1e-6)
  assert int(avg.count) == count


def test_target_mask():
  np.testing.assert_array_equal(metrics.target_mask(np.array([3, 1]), 4), MASK)


def test_token_and_sequence_accuracy_by_hand():
  predictions = np.array([[5, 9, 2, 4], [7, 3, 3, 3]], np.int32)  # garbage at padding
  _close(J.token_accuracy(predictions, TARGETS, MASK), total=3.0, count=4)
  _close(J.sequence_accuracy(predictions, TARGETS, MASK), total=1.0, count=2)
  assert float(J.token_accuracy(predictions, TARGETS, MASK)) == pytest.approx(0.75)
  # A batch-padding row (no unmasked step) is not a sequence.
  empty = np.zeros_like(MASK)
  _close(J.sequence_accuracy(predictions, TARGETS, empty), total=0.0, count=0)
  assert float(J.sequence_accuracy(predictions, TARGETS, empty)) == 0.0


def test_negative_log_likelihood_matches_scipy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 8)).astype(np.float32) * 3
  log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
  gold = np.take_along_axis(log_probs, TARGETS[..., None], axis=-1)[..., 0]
  want = -gold[MASK].sum()
  nll = J.negative_log_likelihood(logits, TARGETS, MASK)
  _close(nll, total=want, count=4)
  assert nll.total.dtype == jnp.float32


def test_negative_log_likelihood_is_finite_for_extreme_inputs():
  logits = np.zeros((2, 4, 8), np.float32)
  logits[0, 0, 5] = 3e38  # huge but finite: the gold token, nll 0
  logits[0, 1, 0] = -3e38  # huge negative on another token
  logits[1, 2] = np.nan  # garbage at a masked step must not leak
  nll = J.negative_log_likelihood(logits, TARGETS, MASK)
  assert np.isfinite(float(nll.total))
  _close(nll, total=np.log(7) + 2 * np.log(8), count=4)  # 0 + log 7 + log 8 + log 8
  low = J.negative_log_likelihood(
    jnp.asarray(logits[:1, :2]).astype(jnp.bfloat16), TARGETS[:1, :2], MASK[:1, :2]
  )
  assert np.isfinite(float(low.total))


def test_alignment_metrics_by_hand():
  _close(J.alignment_accuracy(WEIGHTS, ALIGNMENT), total=1.0, count=3)
  _close(J.attention_mass_on_gold(WEIGHTS, ALIGNMENT), total=1.2, count=3)
  # Source tokens: positions 0 and 1 hold the same token, so the tie step is leniently right.
  inputs = np.array([[4, 4, 5]], np.int32)
  _close(J.lenient_alignment_accuracy(WEIGHTS, ALIGNMENT, inputs), total=2.0, count=3)
  # The empty row stays wrong even though position 0 holds the gold token.
  _close(
    J.lenient_alignment_accuracy(WEIGHTS, ALIGNMENT, np.array([[4, 4, 4]], np.int32)),
    total=2.0,
    count=3,
  )


def test_alignment_metrics_with_nothing_to_count():
  none = np.full((1, 4), -1, np.int32)
  for avg in [
    J.alignment_accuracy(WEIGHTS, none),
    J.attention_mass_on_gold(WEIGHTS, none),
    J.lenient_alignment_accuracy(WEIGHTS, none, np.array([[4, 4, 5]], np.int32)),
  ]:
    _close(avg, total=0.0, count=0)
    assert float(avg) == 0.0


def test_entropy_and_support_by_hand():
  weights = np.array(
    [[[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.0] * 4]], np.float32
  )
  mask = np.array([[1, 1, 1, 1]], bool)
  _close(J.attention_entropy(weights, mask), total=np.log(2) + np.log(4), count=4)
  _close(J.support_size(weights, mask), total=2 + 4 + 1 + 0, count=4)
  _close(J.support_size(weights, mask, threshold=0.3), total=2 + 0 + 1 + 0, count=4)
  partial = np.array([[1, 0, 1, 0]], bool)
  _close(J.attention_entropy(weights, partial), total=np.log(2), count=2)
  _close(J.support_size(weights, partial), total=3, count=2)
  with pytest.raises(ValueError, match="threshold"):
    metrics.support_size(weights, mask, threshold=-1.0)


def test_padding_never_counts():
  rng = np.random.default_rng(1)
  weights = rng.dirichlet(np.ones(5), size=(3, 6)).astype(np.float32)
  predictions = rng.integers(3, 9, size=(3, 6)).astype(np.int32)
  targets = rng.integers(3, 9, size=(3, 6)).astype(np.int32)
  logits = rng.normal(size=(3, 6, 9)).astype(np.float32)
  mask = np.asarray(metrics.target_mask(np.array([6, 2, 4]), 6))
  alignment = np.where(mask, rng.integers(0, 5, size=(3, 6)), -1).astype(np.int32)
  inputs = rng.integers(3, 6, size=(3, 5)).astype(np.int32)

  def run(w, p, lg):
    return [
      J.token_accuracy(p, targets, mask),
      J.sequence_accuracy(p, targets, mask),
      J.negative_log_likelihood(lg, targets, mask),
      J.alignment_accuracy(w, alignment),
      J.lenient_alignment_accuracy(w, alignment, inputs),
      J.attention_mass_on_gold(w, alignment),
      J.attention_entropy(w, mask),
      J.support_size(w, mask, 0.1),
    ]

  noisy_w = np.where(mask[..., None], weights, rng.dirichlet(np.ones(5), size=(3, 6)))
  noisy_p = np.where(mask, predictions, rng.integers(0, 9, size=(3, 6))).astype(np.int32)
  noisy_lg = np.where(mask[..., None], logits, rng.normal(size=(3, 6, 9)) * 100).astype(np.float32)
  for clean, noisy in zip(
    run(weights, predictions, logits), run(noisy_w, noisy_p, noisy_lg), strict=True
  ):
    np.testing.assert_allclose(float(clean.total), float(noisy.total), rtol=1e-6)
    assert int(clean.count) == int(noisy.count)


def test_merge_is_exact_aggregation():
  rng = np.random.default_rng(2)
  weights = rng.dirichlet(np.ones(5), size=(4, 6)).astype(np.float32)
  alignment = np.where(rng.random((4, 6)) < 0.6, rng.integers(0, 5, (4, 6)), -1).astype(np.int32)
  whole = J.alignment_accuracy(weights, alignment)
  merged = J.alignment_accuracy(weights[:1], alignment[:1]).merge(
    J.alignment_accuracy(weights[1:], alignment[1:])
  )
  np.testing.assert_allclose(float(whole.value), float(merged.value), rtol=1e-6)
  assert int(whole.count) == int(merged.count)
  _close(metrics.Average.zero().merge(whole), total=float(whole.total), count=int(whole.count))


def test_jit_equals_eager():
  rng = np.random.default_rng(3)
  weights = rng.dirichlet(np.ones(5), size=(2, 4)).astype(np.float32)
  logits = rng.normal(size=(2, 4, 9)).astype(np.float32)
  predictions = rng.integers(0, 9, size=(2, 4)).astype(np.int32)
  alignment = np.array([[0, 4, 2, -1], [1, -1, -1, -1]], np.int32)
  inputs = rng.integers(3, 6, size=(2, 5)).astype(np.int32)

  def everything(w, lg, p, a, x, lengths):
    mask = metrics.target_mask(lengths, 4)
    return {
      "tok": metrics.token_accuracy(p, jnp.asarray(TARGETS), mask),
      "seq": metrics.sequence_accuracy(p, jnp.asarray(TARGETS), mask),
      "nll": metrics.negative_log_likelihood(lg, jnp.asarray(TARGETS), mask),
      "align": metrics.alignment_accuracy(w, a),
      "lenient": metrics.lenient_alignment_accuracy(w, a, x),
      "mass": metrics.attention_mass_on_gold(w, a),
      "entropy": metrics.attention_entropy(w, mask),
      "support": metrics.support_size(w, mask),
    }

  args = (weights, logits, predictions, alignment, inputs, np.array([3, 1]))
  eager = everything(*args)
  jitted = jax.jit(everything)(*args)
  for name in eager:
    np.testing.assert_allclose(float(eager[name].value), float(jitted[name].value), rtol=1e-6)
    assert int(eager[name].count) == int(jitted[name].count)


@pytest.mark.parametrize("name", ["copy", "recall"])
def test_gold_attention_scores_perfectly_on_task_batches(name):
  task = tasks.get_task(name)
  batch = task.sample(np.random.default_rng([0, 0]), 16, "train")
  width = batch.inputs.shape[1]
  one_hot = np.eye(width, dtype=np.float32)[np.maximum(batch.alignment, 0)]
  weights = np.where((batch.alignment >= 0)[..., None], one_hot, 1.0 / width)
  mask = np.arange(batch.targets.shape[1])[None, :] < batch.target_lengths[:, None]
  steps = int((batch.alignment >= 0).sum())
  assert steps == int((batch.target_lengths - 1).sum())  # every step but EOS is counted
  _close(J.alignment_accuracy(weights, batch.alignment), total=steps, count=steps)
  _close(J.attention_mass_on_gold(weights, batch.alignment), total=steps, count=steps)
  lenient = J.lenient_alignment_accuracy(weights, batch.alignment, batch.inputs)
  _close(lenient, total=steps, count=steps)
  # Every unmasked step but EOS is one-hot: entropy only from the uniform EOS rows.
  _close(J.attention_entropy(weights, mask), total=16 * np.log(width), count=steps + 16)


def test_lenient_accepts_duplicates_on_sort():
  # Source 5 3 5: the first output 3 is at 1; attending the *second* 5 for the first 5 is
  # wrong strictly but right leniently.
  batch = tasks.get_task("sort").from_sources(np.array([[5, 3, 5]]), np.array([3]))
  assert batch.alignment.tolist() == [[1, 0, 2, -1]]
  weights = np.zeros((1, 4, 3), np.float32)
  weights[0, [0, 1, 2, 3], [1, 2, 0, 0]] = 1.0
  _close(J.alignment_accuracy(weights, batch.alignment), total=1, count=3)
  _close(J.lenient_alignment_accuracy(weights, batch.alignment, batch.inputs), total=3, count=3)


def test_multi_head_alignment_by_hand():
  # One example, 2 layers x 2 heads, T = 3 steps (gold 0, 2, then EOS -1), S = 3.
  one_hot = np.eye(3, dtype=np.float32)
  uniform = np.full(3, 1 / 3, np.float32)
  heads = np.stack(
    [
      [one_hot[[0, 2, 1]], one_hot[[1, 1, 1]]],  # layer 0: head 0 aligns 2/2, head 1 0/2
      [one_hot[[1, 0, 0]], np.stack([one_hot[1], one_hot[2], uniform])],  # 0/2 and 1/2
    ]
  )[None]  # [1, 2, 2, 3, 3]
  alignment = np.array([[0, 2, -1]], np.int32)
  mask = np.array([[True, True, True]])
  per_head = J.head_alignment_accuracy(heads, alignment)
  np.testing.assert_allclose(per_head.value, [[1.0, 0.0], [0.0, 0.5]])
  np.testing.assert_array_equal(per_head.count, [[2, 2], [2, 2]])
  out = J.multi_head_alignment(heads, alignment, mask, np.array([3])).summary()
  _close(out["alignment_accuracy_best_head"], total=2, count=2)
  assert float(out["best_head"].value) == 0.0  # layer 0, head 0
  # Head mean: step 0 puts 1/4 on the gold 0 and 3/4 on 1 (wrong); step 1 2/4 on the gold 2.
  _close(out["alignment_accuracy_head_mean"], total=1, count=2)
  _close(out["alignment_accuracy_any_head"], total=2, count=2)  # head (0, 0) at both steps
  # Chance: 4 heads, 3 positions: 1 - (2/3)^4 = 65/81 at each of the 2 counted steps.
  _close(out["alignment_accuracy_any_head_chance"], total=2 * 65 / 81, count=2)
  # Entropies: three one-hot heads 0; the last head has log 3 at one of its three steps.
  np.testing.assert_allclose(
    J.head_attention_entropy(heads, mask).value, [[0, 0], [0, np.log(3) / 3]], atol=1e-6
  )
  np.testing.assert_allclose(
    float(out["attention_entropy_per_head"].value), np.log(3) / 3 / 4, rtol=1e-6
  )
  assert float(out["attention_entropy_best_head"].value) == 0.0
  # A head that no step points at the gold with: any-head falls when the hitting head goes.
  without = J.multi_head_alignment(heads[:, :, 1:], alignment, mask, np.array([3])).summary()
  _close(without["alignment_accuracy_any_head"], total=1, count=2)  # step 1 (layer 1 head 1)
  _close(without["alignment_accuracy_any_head_chance"], total=2 * 5 / 9, count=2)  # 2 heads
  _close(without["alignment_accuracy_best_head"], total=1, count=2)
  assert float(without["best_head"].value) == 1.0  # layer 1 (of 1 head per layer), head 0


def test_best_head_is_chosen_once_on_the_merged_batches():
  # 1 layer x 2 heads, S = 2; the best head differs between two batches of one set.
  # Batch a (gold 0 0 1 1): head 0 one-hot at 0 0 1 0 (3/4, entropy 0); head 1 uniform,
  # argmax ties to 0 (2/4, entropy log 2 at each step).
  one_hot = np.eye(2, dtype=np.float32)
  uniform = np.full((4, 2), 0.5, np.float32)
  heads_a = np.stack([one_hot[[0, 0, 1, 0]], uniform])[None, None]  # [1, 1, 2, 4, 2]
  alignment_a = np.array([[0, 0, 1, 1]], np.int32)
  # Batch b (gold 1 1): head 0 one-hot at 0 0 (0/2), head 1 at 1 1 (2/2); entropies 0.
  heads_b = np.stack([one_hot[[0, 0]], one_hot[[1, 1]]])[None, None]  # [1, 1, 2, 2, 2]
  alignment_b = np.array([[1, 1]], np.int32)
  part_a = J.multi_head_alignment(heads_a, alignment_a, np.ones((1, 4), bool), np.array([2]))
  part_b = J.multi_head_alignment(heads_b, alignment_b, np.ones((1, 2), bool), np.array([2]))
  assert float(part_a.summary()["best_head"].value) == 0.0
  assert float(part_b.summary()["best_head"].value) == 1.0
  out = part_a.merge(part_b).summary()
  # Pooled: head 0 3/6, head 1 4/6, so head 1 (per-batch picks would merge to 5/6).
  assert float(out["best_head"].value) == 1.0
  _close(out["alignment_accuracy_best_head"], total=4, count=6)
  # Head 1's entropy over the 6 steps, 4 of them log 2 (the per-batch picks': 0).
  _close(out["attention_entropy_best_head"], total=4 * np.log(2), count=6)
  _close(out["attention_entropy_per_head"], total=4 * np.log(2), count=12)
  _close(out["alignment_accuracy_any_head"], total=5, count=6)  # all but batch a's step 3
  # Chance: 2 heads, 2 positions: 1 - (1/2)^2 = 3/4 at each of the 6 steps.
  _close(out["alignment_accuracy_any_head_chance"], total=6 * 3 / 4, count=6)


def test_no_best_head_without_a_gold_position():
  heads = np.full((1, 1, 2, 2, 2), 0.5, np.float32)
  no_gold = np.full((1, 2), -1, np.int32)
  out = J.multi_head_alignment(heads, no_gold, np.ones((1, 2), bool), np.array([2])).summary()
  for name in ("alignment_accuracy_best_head", "attention_entropy_best_head", "best_head"):
    assert int(out[name].count) == 0, name
  _close(out["attention_entropy_per_head"], total=4 * np.log(2), count=4)


def test_any_head_chance_by_hand():
  # 2 layers x 3 heads: K = 6 uniform choices per step. Example 0 has 2 source positions and
  # 1 counted step, example 1 has 4 positions and 3 counted steps (-1 steps are not counted;
  # the weights do not matter).
  heads = np.zeros((2, 2, 3, 3, 4), np.float32)
  alignment = np.array([[1, -1, -1], [0, 3, 2]], np.int32)
  out = J.multi_head_alignment(heads, alignment, np.ones((2, 3), bool), np.array([2, 4]))
  # 1 - (1/2)^6 = 63/64 once, 1 - (3/4)^6 = 3367/4096 three times.
  _close(out.any_head_chance, total=63 / 64 + 3 * 3367 / 4096, count=4)
  assert float(out.summary()["alignment_accuracy_any_head_chance"].value) == pytest.approx(
    (63 / 64 + 3 * 3367 / 4096) / 4
  )
