"""Figures of one run: attention heatmaps and the learning curve (and the helpers they share
with the sweep's comparison figures, :mod:`attnlab.sweep.plots`).

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure registry, no GUI backend, nothing leaks between calls (safe in tests, threads and
headless training jobs). Every function writes one image file (format from the suffix: ``.png``,
``.pdf``, ``.svg``) and returns its path. Inputs are host arrays (numpy or jax) and plain dicts, as
read from ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

# What a run's learning curve shows by default: the loss, accuracy (train split is teacher
# forced; val is greedy decoding), whether attention finds the gold position, and how noisy
# the gradient is. Keys missing from the metrics are skipped.
DEFAULT_CURVE_KEYS = (
  "train/loss",
  "val/seq_accuracy",
  "val/alignment_accuracy",
  "val/attention_entropy",
  "grad/variance",
)

# Metrics whose values span decades: drawn on a log axis.
_LOG_SCALE_MARKERS = ("variance", "bias_sq")
_MAX_HEATMAP_COLUMNS = 4


def save_figure(fig: Figure, path: str | os.PathLike) -> str:
  """Writes ``fig`` to ``path`` (format from the suffix), creating parent directories.

  Returns:
    ``path`` as a string.
  """
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


def _as_int_matrix(name: str, x, n: int | None = None) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f"{name} must have rank 2 [N, length]; got shape {x.shape}.")
  if n is not None and x.shape[0] != n:
    raise ValueError(f"{name} has {x.shape[0]} examples; weights_NxTxS has {n}.")
  return x.astype(np.int64)


def _lengths(name: str, lengths, n: int, full: int) -> np.ndarray:
  if lengths is None:
    return np.full((n,), full, dtype=np.int64)
  lengths = np.asarray(lengths).astype(np.int64)
  if lengths.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},); got {lengths.shape}.")
  if np.any(lengths < 0) or np.any(lengths > full):
    raise ValueError(f"{name} must lie in [0, {full}]; got {lengths.tolist()}.")
  return lengths


def _token_labels(tokens: np.ndarray, token_names: Mapping[int, str] | None) -> list[str]:
  names = token_names or {}
  return [names.get(int(t), str(int(t))) for t in tokens]


def plot_attention_heatmaps(path: str | os.PathLike, *args, **kwargs) -> str:
  """Draws :func:`attention_heatmaps_figure` (same arguments after ``path``) into ``path``.

  Returns:
    ``path`` as a string (``.png``/``.pdf``/``.svg``; parent directories are created).
  """
  return save_figure(attention_heatmaps_figure(*args, **kwargs), path)


def attention_heatmaps_figure(
  weights_NxTxS,
  gold_NxT,
  inputs_NxS,
  targets_NxT,
  sampled_index_NxT=None,
  input_lengths=None,
  target_lengths=None,
  *,
  token_names: Mapping[int, str] | None = None,
  title: str | None = None,
) -> Figure:
  """Draws one attention heatmap per example, gold alignment and sampled positions overlaid.

  Row ``t`` of panel ``n`` is the attention distribution of target step ``t`` over the source
  positions (``weights_NxTxS[n, t]``, colour scale fixed to [0, 1] so panels compare). An open
  square marks the gold source position ``gold_NxT[n, t]`` (skipped where it is ``< 0``, i.e.
  undefined, e.g. at EOS); a cross marks the position a hard-attention model sampled
  (``sampled_index_NxT``). Axes are labelled with the tokens, cropped to the true lengths.

  Args:
    weights_NxTxS: ``[N, T, S]`` attention weights (or sampling probabilities).
    gold_NxT: ``[N, T]`` int gold source position per target step, ``-1`` where undefined.
    inputs_NxS: ``[N, S]`` int source tokens.
    targets_NxT: ``[N, T]`` int target tokens.
    sampled_index_NxT: optional ``[N, T]`` int positions chosen by hard attention.
    input_lengths: optional ``[N]`` source lengths (columns shown); default ``S``.
    target_lengths: optional ``[N]`` target lengths incl. EOS (rows shown); default ``T``.
    token_names: optional map token id -> label (e.g. ``{2: "</s>"}``); default: the id.
    title: optional figure title.

  Returns:
    The unsaved :class:`matplotlib.figure.Figure` (see :func:`plot_attention_heatmaps`).

  Raises:
    ValueError: on inconsistent ranks, shapes or lengths (before anything is drawn).
  """
  weights = np.asarray(weights_NxTxS, dtype=np.float32)
  if weights.ndim != 3:
    raise ValueError(f"weights_NxTxS must have rank 3 [N, T, S]; got shape {weights.shape}.")
  n, t_len, s_len = weights.shape
  if n == 0:
    raise ValueError("weights_NxTxS holds no examples (N = 0).")
  gold = _as_int_matrix("gold_NxT", gold_NxT, n)
  inputs = _as_int_matrix("inputs_NxS", inputs_NxS, n)
  targets = _as_int_matrix("targets_NxT", targets_NxT, n)
  for name, arr, width in (("gold_NxT", gold, t_len), ("inputs_NxS", inputs, s_len)):
    if arr.shape[1] != width:
      raise ValueError(f"{name} has length {arr.shape[1]}; weights_NxTxS implies {width}.")
  if targets.shape[1] != t_len:
    raise ValueError(f"targets_NxT has length {targets.shape[1]}; weights_NxTxS implies {t_len}.")
  sampled = None
  if sampled_index_NxT is not None:
    sampled = _as_int_matrix("sampled_index_NxT", sampled_index_NxT, n)
    if sampled.shape[1] != t_len:
      raise ValueError(f"sampled_index_NxT has length {sampled.shape[1]}; expected {t_len}.")
  in_len = _lengths("input_lengths", input_lengths, n, s_len)
  tgt_len = _lengths("target_lengths", target_lengths, n, t_len)

  cols = min(n, _MAX_HEATMAP_COLUMNS)
  rows = math.ceil(n / cols)
  # Panel size grows with the longest shown sequence so token labels stay readable.
  cell = 0.32
  panel_w = max(2.5, cell * max(int(in_len.max()), 1) + 1.0)
  panel_h = max(2.2, cell * max(int(tgt_len.max()), 1) + 1.0)
  fig = Figure(
    figsize=(panel_w * cols + 0.8, panel_h * rows + (0.5 if title else 0.0) + 0.4),
    layout="constrained",
  )
  axes = fig.subplots(rows, cols, squeeze=False)
  image = None
  for i in range(rows * cols):
    ax = axes[i // cols][i % cols]
    if i >= n:
      ax.set_axis_off()
      continue
    s_i, t_i = max(int(in_len[i]), 1), max(int(tgt_len[i]), 1)
    image = ax.imshow(
        weights[i, :t_i, :s_i], vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
        interpolation="nearest",
    )  # fmt: skip
    rows_t = np.arange(t_i)
    gold_i = gold[i, :t_i]
    defined = (gold_i >= 0) & (gold_i < s_i)
    ax.scatter(
        gold_i[defined], rows_t[defined], marker="s", s=70, facecolors="none",
        edgecolors="red", linewidths=1.4, label="gold",
    )  # fmt: skip
    if sampled is not None:
      ax.scatter(
          sampled[i, :t_i], rows_t, marker="x", s=30, color="orange", linewidths=1.2,
          label="sampled",
      )  # fmt: skip
    # Fix the limits to the image: an out-of-range marker must not stretch the axes.
    ax.set_xlim(-0.5, s_i - 0.5)
    ax.set_ylim(t_i - 0.5, -0.5)
    ax.set_xticks(np.arange(s_i))
    ax.set_xticklabels(_token_labels(inputs[i, :s_i], token_names), fontsize=7)
    ax.set_yticks(rows_t)
    ax.set_yticklabels(_token_labels(targets[i, :t_i], token_names), fontsize=7)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    ax.set_title(f"example {i}", fontsize=9)
  fig.legend(
    *axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=7
  )
  fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
  if title:
    fig.suptitle(title)
  return fig


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
  """Steps and values of one metric, by step, dropping rows where it is absent or non-finite.

  Args:
    rows: metric rows (dicts with a ``"step"`` key).
    key: the metric.

  Returns:
    ``(steps [P], values [P])`` float64.
  """
  points = sorted((row["step"], row[key]) for row in rows if _finite(row.get(key)))
  if not points:
    return np.zeros((0,)), np.zeros((0,))
  steps, values = zip(*points, strict=True)
  return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


def check_metric_rows(rows: Sequence[Mapping], where: str) -> None:
  """Raises ``ValueError`` (naming ``where`` and the row) unless every row has a ``step``."""
  for i, row in enumerate(rows):
    if not isinstance(row, Mapping) or "step" not in row:
      raise ValueError(f"{where}: metrics row {i} has no 'step' key: {row!r}.")


def style_metric_axis(ax, key: str, values: np.ndarray) -> None:
  """Titles a metric's panel, labels the step axis; a log axis for positive variance-like keys.

  Args:
    ax: the matplotlib axes.
    key: the metric drawn.
    values: every value drawn on it (decides whether a log scale is possible).
  """
  ax.set_title(key, fontsize=9)
  ax.set_xlabel("step")
  ax.grid(alpha=0.3)
  if any(m in key for m in _LOG_SCALE_MARKERS) and values.size and np.all(values > 0):
    ax.set_yscale("log")


def present_metric_keys(runs: Sequence[Sequence[Mapping]], keys: Sequence[str]) -> list[str]:
  """The ``keys`` with a finite value in some row of some run, in order.

  Args:
    runs: per run, its metric rows.
    keys: the candidate metrics.

  Returns:
    The keys to draw.

  Raises:
    ValueError: none has a value (the message lists the keys that have one).
  """
  present = [k for k in keys if any(_finite(r.get(k)) for rows in runs for r in rows)]
  if not present:
    available = sorted({k for rows in runs for r in rows for k in r if k != "step"})
    raise ValueError(f"none of the keys {list(keys)} has a value; available keys: {available}.")
  return present


def plot_learning_curve(
  path: str | os.PathLike,
  metrics_rows: Sequence[Mapping],
  keys: Sequence[str] = DEFAULT_CURVE_KEYS,
  *,
  title: str | None = None,
) -> str:
  """Plots one run's metrics against the step, one panel per metric.

  Args:
    path: output image file; parent directories are created.
    metrics_rows: the run's ``metrics.jsonl`` rows: dicts with a ``"step"`` key and scalar
      metrics. A key may be missing from some rows (e.g. gradient probes at a few steps only);
      ``None``/NaN values are skipped.
    keys: metrics to draw, in panel order; keys with no value in any row are left out.
      Variance-like keys are drawn on a log axis.
    title: optional figure title.

  Returns:
    ``path`` as a string.

  Raises:
    ValueError: if a row has no ``step`` or none of ``keys`` has a value (lists the keys found).
  """
  return save_figure(learning_curve_figure(metrics_rows, keys, title=title), path)


def learning_curve_figure(
  metrics_rows: Sequence[Mapping],
  keys: Sequence[str] = DEFAULT_CURVE_KEYS,
  *,
  title: str | None = None,
) -> Figure:
  """The unsaved figure of :func:`plot_learning_curve` (same arguments but ``path``)."""
  check_metric_rows(metrics_rows, "plot_learning_curve")
  present = present_metric_keys([metrics_rows], keys)
  fig = Figure(figsize=(3.4 * len(present), 2.8), layout="constrained")
  axes = fig.subplots(1, len(present), squeeze=False)[0]
  for ax, key in zip(axes, present, strict=True):
    steps, values = metric_series(metrics_rows, key)
    ax.plot(steps, values, marker="." if steps.size < 30 else None, linewidth=1.2)
    style_metric_axis(ax, key, values)
  if title:
    fig.suptitle(title)
  return fig
