"""The soft-vs-hard comparison: tasks × methods × seeds, built on :mod:`attnlab.training`.

* :mod:`~attnlab.sweep.plan`: the grid a comparison config asks for and each group's run config.
* :mod:`~attnlab.sweep.run`: ``run_comparison`` (resumable, failure-isolated, worker
  processes) and ``measure_seed_speedup``.
* :mod:`~attnlab.sweep.table`: ``results.csv`` and ``table.md`` from the run directories.
* :mod:`~attnlab.sweep.plots`: per-task learning curves of every method.
"""
