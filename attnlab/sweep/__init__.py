"""The soft-vs-hard comparison: tasks × methods × seeds, built on :mod:`attnlab.training`.

* :mod:`~attnlab.sweep.plan`: the grid a comparison config asks for, each group's run config,
  and ``Shard`` (which groups one launch of a sharded sweep runs).
* :mod:`~attnlab.sweep.run`: ``run_comparison`` (resumable, failure-isolated, worker
  processes, shardable) and ``measure_seed_speedup``.
* :mod:`~attnlab.sweep.table`: ``results.csv`` and ``table.md`` from the run directories.
* :mod:`~attnlab.sweep.plots`: per-task learning curves of every method.
* :mod:`~attnlab.sweep.export`: a finished sweep's TensorBoard event files (from its runs or
  ``results.csv``).
"""
