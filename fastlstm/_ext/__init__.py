"""The compiled kernels: the bottom layer, which imports nothing of fastlstm's Python code.

* ``kernels`` (``kernels.pyx``, C in ``src/kernels.h``): the LSTM layer, step and product
  kernels, with the GIL released, and the run-time choice of SIMD level;
* ``blas``: one fused-type ``gemm`` over ``scipy.linalg.cython_blas``, the only place that
  touches BLAS symbols;
* ``openmp``: whether the build has OpenMP, and its thread count.
"""

import os as _os

# GNU OpenMP's idle threads spin for a few milliseconds after each region (GOMP_SPINCOUNT,
# 300,000 rounds by default) before they sleep; a NumPy matmul right after a fastlstm call
# then shares the cores with them and takes about 3x as long (docs/threads.md).  10,000
# rounds (about 0.1-0.4 ms) keeps the threads hot between back-to-back calls.  libgomp reads
# the variable once, when it loads: set it for that moment only, unless the user chose a
# policy or an OpenMP runtime is already loaded (torch's libgomp, shared with fastlstm).
IDLE_SPIN = 10000


def _openmp_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            return any("libgomp" in line or "libomp" in line or "libiomp" in line
                       for line in maps)
    except OSError:
        return False


def _idle_wait_policy() -> str:
    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        if name in _os.environ:
            return f"{name}={_os.environ[name]} (set by the user)"
    if _openmp_loaded():
        return "the OpenMP runtime's default (it was loaded before fastlstm)"
    return f"GOMP_SPINCOUNT={IDLE_SPIN} (fastlstm's default)"


IDLE_WAIT = _idle_wait_policy()
if IDLE_WAIT.endswith("(fastlstm's default)"):
    _os.environ["GOMP_SPINCOUNT"] = str(IDLE_SPIN)
    try:
        from fastlstm._ext import openmp as _openmp  # noqa: F401  (loads libgomp now)
    finally:
        del _os.environ["GOMP_SPINCOUNT"]
