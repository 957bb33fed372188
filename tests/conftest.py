"""Test-wide JAX settings.

* Implicit rank promotion is an error, as in nanodo: broadcasting must be explicit.
* XLA's backend optimisation level 0: test programs are tiny and compile-bound, and this
  roughly halves compile time without changing results beyond float rounding.
* No GPU memory preallocation (``XLA_PYTHON_CLIENT_PREALLOCATE=false``) unless the
  environment says otherwise: ``pytest -n N`` runs N processes on the same GPU, and each
  would otherwise claim 75% of its memory at its first operation (the second fails with
  RESOURCE_EXHAUSTED). Set before jax is imported; no effect on CPU or TPU.
* float32 matmuls at full precision (``jax_default_matmul_precision="highest"``). The tests
  compare float32 results with references at tolerances of 1e-5 to 1e-7 (``test_soft.py``,
  ``test_multihead.py``, ``test_jax_nn_compat.py``, the README's drop-in examples), which
  assume exact float32 products. JAX's default on Ampere/Hopper GPUs is TF32 (10-bit
  mantissa: ~1e-3 relative error) and on TPUs one bfloat16 pass; "highest" gives float32
  products everywhere. It changes nothing on CPU, whose float32 matmuls are exact at every
  setting.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402  (must follow the environment defaults above)

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
