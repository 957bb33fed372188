"""Tests for attnlab.sweep.plots: the seed band and the per-task comparison figure."""

import numpy as np
import pytest

from attnlab.sweep import plots

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(values, key="val/seq_accuracy", steps=(10, 20, 30)):
  return [{"step": s, key: v} for s, v in zip(steps, values, strict=True)]


def test_seed_band_matches_numpy():
  runs = [_rows([0.1, 0.5, 0.9]), _rows([0.3, 0.7, 1.0]), _rows([0.2, 0.2], steps=(10, 30))]
  steps, mean, low, high = plots.seed_band(runs, "val/seq_accuracy", "minmax")
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(mean, [0.2, 0.6, 0.7])  # step 20: only two seeds logged it.
  np.testing.assert_allclose(low, [0.1, 0.5, 0.2])
  np.testing.assert_allclose(high, [0.3, 0.7, 1.0])
  _, mean, low, high = plots.seed_band(runs, "val/seq_accuracy", plots.Band.STD)
  std = np.array([np.std([0.1, 0.3, 0.2]), np.std([0.5, 0.7]), np.std([0.9, 1.0, 0.2])])
  np.testing.assert_allclose(high - mean, std)
  np.testing.assert_allclose(mean - low, std)
  with pytest.raises(ValueError, match=r"band='iqr' is invalid; .*\['minmax', 'std'\]"):
    plots.seed_band(runs, "val/seq_accuracy", "iqr")


def test_comparison_draws_one_mean_line_and_band_per_method(tmp_path):
  runs = {
    "soft": [_rows([0.1, 0.5, 0.9]), _rows([0.3, 0.7, 1.0])],
    "hard": [_rows([0.0, 0.1, 0.2])],
    "broken": [],
  }
  fig = plots.comparison_figure(runs, keys=("val/seq_accuracy", "train/loss"), title="copy")
  (ax,) = fig.axes  # train/loss has no values: no panel.
  np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.2, 0.6, 0.95])
  np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.0, 0.1, 0.2])
  assert len(ax.collections) == 2  # one band per method with data.
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert labels == ["soft (n=2)", "hard (n=1)", "broken (no data)"]
  path = plots.plot_comparison_curves(tmp_path / "copy.png", runs, title="copy")
  with open(path, "rb") as f:
    assert f.read(8) == _PNG_MAGIC
  with pytest.raises(ValueError, match="empty"):
    plots.comparison_figure({})
