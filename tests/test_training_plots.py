"""Tests for attnlab.training.plots: heatmaps and learning curves, validation, files written."""

import numpy as np
import pytest

from attnlab.training import plots

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _heatmap_inputs(n=2, t=4, s=5, seed=0):
  rng = np.random.default_rng(seed)
  weights = rng.dirichlet(np.ones(s), size=(n, t)).astype(np.float32)
  gold = np.array([[0, 1, 2, -1], [3, -1, 1, 0]])[:n, :t]
  inputs = rng.integers(3, 13, (n, s))
  targets = rng.integers(3, 13, (n, t))
  return weights, gold, inputs, targets


def _offsets(ax, label):
  (coll,) = [c for c in ax.collections if c.get_label() == label]
  return np.asarray(coll.get_offsets())


def test_heatmap_marks_gold_and_samples_where_given_and_crops_to_lengths():
  weights, gold, inputs, targets = _heatmap_inputs()
  sampled = np.array([[4, 0, 1, 2], [0, 1, 2, 3]])
  fig = plots.attention_heatmaps_figure(
      weights, gold, inputs, targets, sampled, input_lengths=[5, 4], target_lengths=[4, 3],
      token_names={int(inputs[0, 0]): "X"},
  )  # fmt: skip
  ax0, ax1 = fig.axes[0], fig.axes[1]
  # Gold squares at (source=gold, row=t), undefined (-1) positions skipped.
  np.testing.assert_array_equal(_offsets(ax0, "gold"), [[0, 0], [1, 1], [2, 2]])
  np.testing.assert_array_equal(_offsets(ax1, "gold"), [[3, 0], [1, 2]])  # row 3 cropped.
  np.testing.assert_array_equal(_offsets(ax0, "sampled"), np.stack([sampled[0], np.arange(4)], 1))
  # The image holds exactly the weights inside the lengths.
  np.testing.assert_allclose(ax1.images[0].get_array(), weights[1, :3, :4])
  assert [t.get_text() for t in ax0.get_xticklabels()][0] == "X"
  assert [t.get_text() for t in ax1.get_yticklabels()] == [str(x) for x in targets[1, :3]]
  assert ax1.get_xlim() == (-0.5, 3.5)


def test_heatmap_without_samples_has_no_sample_markers():
  weights, gold, inputs, targets = _heatmap_inputs(n=1)
  fig = plots.attention_heatmaps_figure(weights, gold, inputs, targets)
  assert [c.get_label() for c in fig.axes[0].collections] == ["gold"]


def test_plot_attention_heatmaps_writes_png(tmp_path):
  weights, gold, inputs, targets = _heatmap_inputs(n=5)
  gold = np.concatenate([gold, gold, gold[:1]])
  path = plots.plot_attention_heatmaps(tmp_path / "sub" / "h.png", weights, gold, inputs, targets)
  with open(path, "rb") as f:
    assert f.read(8) == _PNG_MAGIC


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda a: {**a, "weights_NxTxS": a["weights_NxTxS"][0]}, "rank 3"),
    (lambda a: {**a, "gold_NxT": a["gold_NxT"][:, :2]}, "gold_NxT has length 2"),
    (lambda a: {**a, "inputs_NxS": a["inputs_NxS"][:1]}, "inputs_NxS has 1 examples"),
    (lambda a: {**a, "targets_NxT": a["targets_NxT"][:, :3]}, "targets_NxT has length 3"),
    (lambda a: {**a, "input_lengths": [6, 2]}, "input_lengths must lie in"),
    (lambda a: {**a, "target_lengths": [1]}, "target_lengths must have shape"),
  ],
)
def test_heatmap_rejects_inconsistent_inputs(change, message):
  weights, gold, inputs, targets = _heatmap_inputs()
  args = {"weights_NxTxS": weights, "gold_NxT": gold, "inputs_NxS": inputs, "targets_NxT": targets}
  with pytest.raises(ValueError, match=message):
    plots.attention_heatmaps_figure(**change(args))


def _rows(values, key="val/seq_accuracy", steps=(10, 20, 30)):
  return [{"step": s, key: v} for s, v in zip(steps, values, strict=True)]


def test_learning_curve_skips_missing_keys_and_values():
  rows = _rows([0.1, 0.5, 0.9])
  rows[1]["grad/variance"] = 1e-6  # a probe at one step only.
  rows[2]["train/loss"] = None  # non-finite values are written as null.
  fig = plots.learning_curve_figure(rows, keys=("train/loss", "val/seq_accuracy", "grad/variance"))
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["val/seq_accuracy", "grad/variance"]
  np.testing.assert_array_equal(
    fig.axes[0].lines[0].get_xydata(), [[10, 0.1], [20, 0.5], [30, 0.9]]
  )
  assert fig.axes[1].get_yscale() == "log"


def test_learning_curve_errors_name_the_available_keys(tmp_path):
  with pytest.raises(ValueError, match=r"available keys: \['val/seq_accuracy'\]"):
    plots.plot_learning_curve(tmp_path / "c.png", _rows([0.1, 0.2, 0.3]), keys=("train/loss",))
  with pytest.raises(ValueError, match="no 'step'"):
    plots.plot_learning_curve(tmp_path / "c.png", [{"train/loss": 1.0}])
