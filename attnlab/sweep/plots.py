"""Figures of a sweep: per-task learning curves of every method, mean over seeds and a band.

Built like :mod:`attnlab.training.plots` (a :class:`matplotlib.figure.Figure`, never
``pyplot``; one image file per call, its path returned) from the runs' ``metrics.jsonl`` rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from attnlab.enums import Choice
from attnlab.training.plots import (
  check_metric_rows,
  metric_series,
  present_metric_keys,
  save_figure,
  style_metric_axis,
)

# What a per-task comparison shows by default: accuracy, loss and gradient noise per method.
COMPARISON_KEYS = ("val/seq_accuracy", "train/loss", "grad/variance")


class Band(Choice):
  """Spread drawn around the mean over seeds in :func:`plot_comparison_curves`."""

  MINMAX = "minmax"  # Lowest to highest seed: honest with 3 seeds, shows every outlier.
  STD = "std"  # Mean ± one (population) standard deviation over seeds.


def seed_band(
  runs: Sequence[Sequence[Mapping]], key: str, band: str | Band = Band.MINMAX
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Mean and band of one metric over seeds, on the union of the seeds' evaluation steps.

  At each step only the seeds that logged the metric there count (runs of one method share
  their eval steps, so normally all do).

  Args:
    runs: per seed, that seed's metric rows (each with ``"step"``).
    key: the metric.
    band: :class:`Band` (``"minmax"``: lowest to highest seed; ``"std"``: mean ± std).

  Returns:
    ``(steps [P], mean [P], low [P], high [P])`` float64 arrays (``P`` = 0 if no value).
  """
  band = Band.parse(band, name="band")
  by_step: dict[float, list[float]] = {}
  for rows in runs:
    steps, values = metric_series(rows, key)
    for s, v in zip(steps.tolist(), values.tolist(), strict=True):
      by_step.setdefault(s, []).append(v)
  steps = np.asarray(sorted(by_step), dtype=np.float64)
  stacks = [np.asarray(by_step[s]) for s in steps.tolist()]
  mean = np.asarray([x.mean() for x in stacks], dtype=np.float64)
  if band is Band.MINMAX:
    low = np.asarray([x.min() for x in stacks], dtype=np.float64)
    high = np.asarray([x.max() for x in stacks], dtype=np.float64)
  else:
    std = np.asarray([x.std() for x in stacks], dtype=np.float64)
    low, high = mean - std, mean + std
  return steps, mean, low, high


def plot_comparison_curves(
  path: str | os.PathLike,
  runs_by_method: Mapping[str, Sequence[Sequence[Mapping]]],
  keys: Sequence[str] = COMPARISON_KEYS,
  *,
  band: str | Band = Band.MINMAX,
  title: str | None = None,
) -> str:
  """Learning curves of several methods on one task: a line per method (mean over seeds) and a band.

  Args:
    path: output image file; parent directories are created.
    runs_by_method: method name -> per seed, that seed's ``metrics.jsonl`` rows. Methods are
      drawn in the mapping's order; methods with no rows are listed in the legend as "(no data)".
    keys: metrics, one panel each; keys with no value for any method are left out.
    band: spread over seeds, see :class:`Band` (default min–max).
    title: optional figure title (e.g. the task name).

  Returns:
    ``path`` as a string.

  Raises:
    ValueError: if ``runs_by_method`` is empty, a row has no ``step``, or no key has a value.
  """
  return save_figure(comparison_figure(runs_by_method, keys, band=band, title=title), path)


def comparison_figure(
  runs_by_method: Mapping[str, Sequence[Sequence[Mapping]]],
  keys: Sequence[str] = COMPARISON_KEYS,
  *,
  band: str | Band = Band.MINMAX,
  title: str | None = None,
) -> Figure:
  """The unsaved figure of :func:`plot_comparison_curves` (same arguments but ``path``)."""
  band = Band.parse(band, name="band")
  if not runs_by_method:
    raise ValueError("runs_by_method is empty: nothing to compare.")
  for method, runs in runs_by_method.items():
    for rows in runs:
      check_metric_rows(rows, f"plot_comparison_curves[{method!r}]")
  all_runs = [rows for runs in runs_by_method.values() for rows in runs]
  present = present_metric_keys(all_runs, keys)
  fig = Figure(figsize=(4.2 * len(present), 3.2 + 0.2 * len(runs_by_method)), layout="constrained")
  axes = fig.subplots(1, len(present), squeeze=False)[0]
  colours = [f"C{i % 10}" for i in range(len(runs_by_method))]
  # Distinguish >10 methods by line style as well as colour.
  styles = ["-", "--", ":", "-."]
  for ax, key in zip(axes, present, strict=True):
    shown = []
    for i, (method, runs) in enumerate(runs_by_method.items()):
      steps, mean, low, high = seed_band(runs, key, band)
      if steps.size == 0:
        continue
      ls = styles[(i // 10) % len(styles)]
      label = f"{method} (n={len(runs)})"
      ax.plot(steps, mean, color=colours[i], linestyle=ls, linewidth=1.3, label=label)
      ax.fill_between(steps, low, high, color=colours[i], alpha=0.15, linewidth=0)
      shown.append(mean)
    style_metric_axis(ax, key, np.concatenate(shown) if shown else np.zeros((0,)))
  # One legend for all panels: a method may have values for some keys only.
  legend: dict[str, object] = {}
  for ax in axes:
    for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
      legend.setdefault(label, h)
  handles, labels = list(legend.values()), list(legend)
  missing = [m for m, runs in runs_by_method.items() if not any(r for r in runs)]
  for method in missing:
    (h,) = axes[0].plot([], [], color="none")
    handles.append(h)
    labels.append(f"{method} (no data)")
  fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=7)
  band_text = "min–max over seeds" if band is Band.MINMAX else "mean ± std over seeds"
  fig.suptitle(f"{title + ': ' if title else ''}mean, band = {band_text}", fontsize=10)
  return fig
