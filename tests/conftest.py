"""Test-wide JAX settings.

* Implicit rank promotion is an error, as in nanodo: broadcasting must be explicit.
* XLA's backend optimisation level 0: test programs are tiny and compile-bound, and this
  roughly halves compile time without changing results beyond float rounding.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402  (must follow the XLA_FLAGS default above)

jax.config.update("jax_numpy_rank_promotion", "raise")
