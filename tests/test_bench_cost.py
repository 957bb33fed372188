"""experiments/bench_cost.py at toy sizes: it times the right computations (no timing checks)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnlab
from experiments import bench_cost

_TOY = bench_cost.Settings(
  lengths=(8, 32), value_dims=(4, 16), key_dim=4, batch=2, rounds=1, reps=1
)


def test_functions_compute_soft_and_hard_attention_and_their_gradients():
  q, k, v, cot, adv, key = bench_cost._inputs(2, 8, 4, 3)
  fns = {name: jax.jit(fn) for name, fn in bench_cost._functions().items()}
  scores_BxS = jnp.einsum("bd,bsd->bs", q, k) / 2.0  # scaled dot, sqrt(D) = 2
  weights_BxS = jax.nn.softmax(scores_BxS, axis=-1)
  np.testing.assert_allclose(
    fns["soft"](q, k, v, cot, adv, key), jnp.einsum("bs,bsv->bv", weights_BxS, v), rtol=1e-5
  )
  chosen_B = jnp.argmax(scores_BxS, axis=-1)
  np.testing.assert_array_equal(fns["hard"](q, k, v, cot, adv, key), v[jnp.arange(2), chosen_B])
  # Training: soft gives a dense value gradient; the dense REINFORCE one is zero but one
  # row per example; the index-only backward returns the [B, Dv] cotangent and the same
  # score gradients as the dense one.
  _, _, dv_soft = fns["soft_train"](q, k, v, cot, adv, key)
  np.testing.assert_allclose(dv_soft, weights_BxS[:, :, None] * cot[:, None, :], rtol=1e-5)
  dq, dk, dv_dense = fns["hard_dense_train"](q, k, v, cot, adv, key)
  assert np.all(np.sum(np.any(dv_dense != 0, axis=-1), axis=-1) == 1)
  dq_index, dk_index, dv_row = fns["hard_index_train"](q, k, v, cot, adv, key)
  assert dv_row.shape == cot.shape
  # The position each example sampled (one key per example, as in the functions): the
  # index-only value gradient is the dense one's row there.
  sample = lambda key, q, k, v: attnlab.hard_attention(key, q[None], k, v, mode="sample")
  sampled_B = jax.vmap(sample)(jax.random.split(key, 2), q, k, v).index[:, 0]
  np.testing.assert_array_equal(dv_row, dv_dense[jnp.arange(2), sampled_B])
  np.testing.assert_allclose(dq_index, dq, rtol=1e-5)
  np.testing.assert_allclose(dk_index, dk, rtol=1e-5)
  np.testing.assert_allclose(np.sum(dv_dense, axis=1), cot, rtol=1e-6)  # the chosen row


def test_run_benchmark_rows_ratios_and_markdown(tmp_path):
  settings = bench_cost.Settings(
    **{**_TOY.__dict__, "max_value_gib": 32 * 16 * 2 * 4 / 2**30 - 1e-9}
  )
  report = bench_cost.run_benchmark(settings, log=lambda s: None)
  assert [(r["length"], r["value_dim"]) for r in report["rows"]] == [(8, 4), (32, 4), (8, 16)]
  assert report["skipped"] == [dict(length=32, value_dim=16, value_gib=32 * 16 * 2 * 4 / 2**30)]
  for row in report["rows"]:
    for name in (*bench_cost.INFERENCE, *bench_cost.TRAINING):
      assert math.isfinite(row[name]["ms"]) and row[name]["ms"] > 0
    assert row["model_ratio"] == bench_cost.model_ratio(row["length"], 4, row["value_dim"])
    output_bytes = {name: row[name]["output_bytes"] for name in bench_cost.TRAINING}
    if row["soft"]["output_bytes"] is not None:  # Some backends do not report memory.
      # From the shapes (float32, B = 2): both inference kinds output the [B, Dv] context;
      # soft training and the dense REINFORCE backward output dV [B, S, Dv], the index-only
      # backward only its [B, Dv] row (dq and dK are the same for all three).
      context_bytes = 4 * 2 * row["value_dim"]
      assert row["soft"]["output_bytes"] == row["hard"]["output_bytes"] == context_bytes
      assert output_bytes["hard_dense_train"] == output_bytes["soft_train"]
      dense_minus_row = context_bytes * (row["length"] - 1)
      assert output_bytes["soft_train"] - output_bytes["hard_index_train"] == dense_minus_row
  json_path, md_path = bench_cost.write_report(report, str(tmp_path / "cost"))
  text = open(md_path).read()
  # Every ratio the table shows is soft / hard of the stored raw measurements.
  with open(json_path) as f:
    stored = json.load(f)["rows"]
  table = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
  columns = [c.strip() for c in table[0]]
  cells = [dict(zip(columns, (c.strip() for c in line), strict=True)) for line in table[1:]]
  ratios = {  # column: (soft, hard, measurement)
    "time soft/hard": ("soft", "hard", "ms"),
    "alloc soft/hard": ("soft", "hard", "alloc_bytes"),
    "train soft/dense": ("soft_train", "hard_dense_train", "ms"),
    "train soft/index": ("soft_train", "hard_index_train", "ms"),
    "train alloc soft/dense": ("soft_train", "hard_dense_train", "alloc_bytes"),
    "train alloc soft/index": ("soft_train", "hard_index_train", "alloc_bytes"),
  }
  for row, cell in zip(stored, cells, strict=True):
    assert (cell["S"], cell["Dv"]) == (str(row["length"]), str(row["value_dim"]))
    for column, (soft, hard, measure) in ratios.items():
      numerator, denominator = row[soft][measure], row[hard][measure]
      want = "—" if None in (numerator, denominator) else f"{numerator / denominator:.2f}"
      assert cell[column] == want, column
  assert "| 32 | 4 |" in text and "Skipped" in text and "## Where hard attention is cheaper" in text
  assert bench_cost.model_ratio(4, 64, 64) < 2 < bench_cost.model_ratio(65536, 64, 64) + 1e-3


def test_settings_reject_counts_that_would_time_nothing():
  bad_settings = (
    ({"rounds": 0}, "rounds=0"),
    ({"reps": 0}, "reps=0"),
    ({"lengths": ()}, r"lengths=\(\) must be a non-empty tuple"),
    ({"value_dims": (64, 0)}, r"value_dims\[1\]=0 must be an int >= 1"),
    ({"lengths": (True,)}, r"lengths\[0\]=True"),  # A bool is not a count.
  )
  for bad, message in bad_settings:
    with pytest.raises(ValueError, match=message):
      bench_cost.Settings(**{**_TOY.__dict__, **bad})
