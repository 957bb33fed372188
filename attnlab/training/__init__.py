"""Training one run from a config, in the style of flax ``examples/`` (one module per role).

* :mod:`~attnlab.training.config`: ``configs/default.py`` -> a validated ``RunConfig``.
* :mod:`~attnlab.training.objectives`: the loss of every method (soft, marginal, enumerated
  and REINFORCE hard attention) through :mod:`attnlab.estimators`.
* :mod:`~attnlab.training.step`: the model and the per-seed train step and evaluation, jitted
  and vmapped over seeds.
* :mod:`~attnlab.training.loop`: ``train_seeds`` / ``train_and_evaluate``: evaluation, probes,
  checkpoints, resume, the NaN guard.
* :mod:`~attnlab.training.sharding`: the device mesh (every device of every process), the
  rule placing seeds, batch and fixed data on it, and joining processes (``jax.distributed``).
* :mod:`~attnlab.training.checkpoints`: orbax checkpoints of one run.
* :mod:`~attnlab.training.rundir`: the run directory (file names, atomic writes, tolerant
  readers, summary keys, run status); the sweep reads runs through it too.
* :mod:`~attnlab.training.events`: the run's TensorBoard event files (tensorboardX).
* :mod:`~attnlab.training.plots`: a run's heatmaps and learning curve.

Nothing is imported here, so that reading a run directory does not load the trainer.
"""
