"""Test-wide JAX settings.

* Implicit rank promotion is an error, as in nanodo: broadcasting must be explicit.
* XLA compiles for speed (``XLA_FLAGS``, unless the environment sets it): backend
  optimisation level 0, and on CPU the classic loop emitters instead of XLA's MLIR fusion
  emitters (``--xla_cpu_use_fusion_emitters=false``). Test programs are tiny and
  compile-bound: level 0 roughly halves compile time, the classic emitters cut what is left
  by about 60% (the suite: 512-613 s against 813-889 s on 2 cores, jaxlib 0.10.2), without
  changing results beyond float rounding. The trainer's programs keep XLA's defaults, and a
  test that asserts two compilations bitwise equal compiles them with the fusion emitters, as
  the trainer does. An XLA that does not know the emitter flag (an unknown flag aborts it)
  gets level 0 alone: one subprocess asks, once, before any test.
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
import subprocess
import sys

_FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _fast_compile_flags() -> str:
  """``_FAST_COMPILE_FLAGS`` if this XLA accepts them all, else the optimisation level alone."""
  flags = " ".join(_FAST_COMPILE_FLAGS)
  probe = subprocess.run(
    [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
    env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"),
    capture_output=True,
    timeout=300,
    check=False,
  )
  return flags if probe.returncode == 0 else _FAST_COMPILE_FLAGS[0]


# Once per session: pytest-xdist's workers and the tests' subprocesses inherit the variable.
if "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = _fast_compile_flags()
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402  (must follow the environment defaults above)

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
