"""What the tests share besides fixtures: the CI switch, tolerances, small utilities.

``reference`` is the NumPy oracle of the LSTM equations, ``weights_files`` the torch models
and files of the weights-file tests; ``conftest.py`` holds the fixtures only.
"""

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Tolerances of the parity tests (max abs error on output, h_n and c_n).
TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _import_torch():
    try:
        return importlib.import_module("torch")
    except ImportError:
        if IN_CI:
            raise RuntimeError("torch is required in CI (CI=true): install torch==2.13.0") from None
        return None


#: The torch module, or None outside CI where it is not installed.
TORCH = _import_torch()


def torch_single_thread():
    """Generator for a fixture: torch on one thread while it runs, restored after."""
    if TORCH is None:
        yield
        return
    n = TORCH.get_num_threads()
    TORCH.set_num_threads(1)
    try:
        yield
    finally:
        TORCH.set_num_threads(n)


def raised(fn):
    """The exception ``fn()`` raises (warnings silenced), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any exception is data here
            return exc
    return None


def run_cli(*args):
    """``python -m fastlstm ARGS`` in a fresh process: (status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "fastlstm", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def batch_invariant():
    """Whether float32 results are the same bits whatever a call's rows and threads: at
    the avx2 and avx512 levels every float32 product is fastlstm's own; at the portable
    level the input projection of 16 rows a thread or more goes to BLAS (docs/kernels.md),
    so a sequence's outputs depend, at the rounding level, on what it is batched with and
    on the thread count."""
    from fastlstm._ext import kernels

    return kernels.simd_level() != "portable"
