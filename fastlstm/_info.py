"""``fastlstm.show_config``: what this build of fastlstm runs with."""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

__all__ = ["show_config"]


def _config() -> Dict[str, Any]:
    import numpy
    import scipy

    from fastlstm._ext import IDLE_WAIT, kernels
    from fastlstm._ext.openmp import openmp_enabled
    from fastlstm._threads import (
        _scipy_blas_controllers,
        blas_sharing_state,
        dynamic_state,
        get_num_threads,
        num_threads_bound,
    )
    from fastlstm._version import __version__

    blas = [
        {key: c.info().get(key) for key in ("internal_api", "version", "num_threads",
                                              "threading_layer", "architecture", "filepath")}
        for c in (b.controller for b in _scipy_blas_controllers())
    ]
    return {
        "version": __version__,
        "simd": kernels.simd_level(),
        "simd_available": kernels.simd_available(),
        "bf16": kernels.bf16_level(),
        "bf16_available": kernels.bf16_levels(),
        "int8": kernels.int8_level(),
        "int8_available": kernels.int8_levels(),
        "openmp": openmp_enabled(),
        "num_threads": get_num_threads(),
        "num_threads_bound": num_threads_bound(),
        "dynamic_threads": dynamic_state(),
        "openmp_idle_wait": IDLE_WAIT,
        "blas_sharing": blas_sharing_state(),
        "forked_serial": kernels.forked_serial(),
        "blas": blas,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "python": sys.version.split()[0],
    }


def show_config(as_dict: bool = False) -> Optional[Dict[str, Any]]:
    """Print (or return) the configuration fastlstm runs with.

    Parameters
    ----------
    as_dict : bool, default=False
        Return the information as a dict instead of printing it.

    Returns
    -------
    dict or None
        Keys: ``version``; ``simd``, the SIMD level the kernels use
        ("avx512", "avx2" or "portable"); ``simd_available``, the levels this
        CPU supports; ``bf16`` and ``bf16_available``, the same for the
        products with bfloat16 weights (``fastlstm.quantize``: the float32
        levels, "avx512-bf16", "amx-bf16"); ``int8`` and ``int8_available``, the same
        for int8 weights (the float32 levels, "avx-vnni", "avx512-vnni", "amx-int8"); ``openmp``,
        whether the build has OpenMP;
        ``num_threads``; ``num_threads_bound``, what set it
        (``set_num_threads``, ``OMP_NUM_THREADS``, the cores, the CPU affinity
        mask or the cgroup CPU quota); ``dynamic_threads``, whether the
        thread count adapts to shared CPUs and what it does now (see
        :func:`set_dynamic_threads`); ``openmp_idle_wait``, how long OpenMP's
        idle threads spin after a call (``GOMP_SPINCOUNT``, see
        docs/threads.md); ``blas_sharing``, which OpenBLAS libraries run
        their parallel jobs on fastlstm's pool, and how many ran on fastlstm's
        OpenMP team right after a fastlstm call (see :func:`set_blas_sharing`);
        ``forked_serial``, whether this process was forked
        after its parent ran OpenMP threads, and so runs on one thread;
        ``blas``, scipy's BLAS as threadpoolctl reports it;
        ``numpy``, ``scipy`` and ``python`` versions.

    Examples
    --------
    >>> import fastlstm
    >>> fastlstm.show_config(as_dict=True)["simd"] in ("avx512", "avx2", "portable")
    True
    """
    info = _config()
    if as_dict:
        return info
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "blas":
            for lib in value:
                print(f"{'blas':<{width}}  {lib['internal_api']} {lib['version']} "
                      f"({lib['architecture']}, {lib['threading_layer']}, "
                      f"{lib['num_threads']} threads) {lib['filepath']}")
        else:
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}}  {shown}")
    return None
