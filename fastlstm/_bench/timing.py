"""Fair timing of several libraries in one process, and the measured GEMM peak.

Each library keeps a pool of threads that spin for a while after a call, and a
spinning pool slows whichever library runs next (measured here: ONNX Runtime's
pool spins about 50 ms after a call, torch's and fastlstm's about 10 ms).  So
the libraries are timed in alternating blocks of repetitions, with a pause after
each block that lasts until the process is idle (``settle``), and each
library's time per call is the median over its blocks.  The order of the
libraries rotates from block to block, so that none always runs right after the
same other one.
"""

from __future__ import annotations

import gc
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["Timing", "time_interleaved", "measure_peak", "settle"]

SETTLE_LIMIT_S = 0.25  # longest wait for the process to go idle after a block
_SETTLE_SLICE_S = 0.005
_SETTLE_IDLE = 0.1  # "idle": under a tenth of a CPU over a slice


def settle(pause: float, limit: float = SETTLE_LIMIT_S) -> None:
    """Sleep ``pause`` seconds, then until no thread of this process is busy.

    Idle thread pools keep spinning for a while after their last call; waiting
    until the process uses less than a tenth of a CPU over a 5 ms slice lets
    them stop before the next library runs.

    Parameters
    ----------
    pause : float
        Seconds to sleep first; 0 or less returns at once (no pause at all).
    limit : float, default=SETTLE_LIMIT_S
        Most seconds to wait past ``pause`` for the process to go idle (a
        thread of the caller's own that stays busy cannot hold it up longer).
    """
    if pause <= 0:
        return
    time.sleep(pause)
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        time.sleep(_SETTLE_SLICE_S)
        if time.process_time() - cpu0 < _SETTLE_IDLE * (time.perf_counter() - wall0):
            return


@dataclass
class Timing:
    """Result of timing one library on one case.

    Attributes
    ----------
    median_s : float
        Median over the blocks of the mean time per call, in seconds.
    block_s : list of float
        Mean time per call of each block.
    reps : int
        Calls per block.
    """

    median_s: float
    block_s: List[float] = field(default_factory=list)
    reps: int = 1


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection while the block runs (a collection would land in one
    library's timing), as it was after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def rotation(names: Sequence[str], block: int) -> List[str]:
    """``names`` in the order of block ``block``: each block starts one further on, so
    that no configuration always runs first (or right after the same other one)."""
    shift = block % len(names)
    return list(names[shift:]) + list(names[:shift])


def _call_block(fn: Callable[[], object], reps: int, deadline: float = math.inf) -> float:
    """Mean seconds per call of ``reps`` calls, stopping early (after one call) at ``deadline``."""
    start = time.perf_counter()
    done = 0
    while done < reps:
        fn()
        done += 1
        if time.perf_counter() > deadline:
            break
    return (time.perf_counter() - start) / done


def _estimate(fn: Callable[[], object], seconds: float, first: Optional[float]) -> float:
    """Warm ``fn`` up for about ``seconds`` and return a robust time per call.

    The median of short groups of calls, so that one call delayed by another
    process does not inflate the estimate.
    """
    end = time.perf_counter() + 2 * seconds + (first or 0.0)
    # First calls are often slow (allocations, oneDNN primitives): up to 3 to settle.
    settle = [first] if first else [_call_block(fn, 1)]
    while len(settle) < 3 and time.perf_counter() < end:
        settle.append(_call_block(fn, 1))
    guess = min(settle)
    group = max(1, int(0.002 / max(guess, 1e-7)))  # groups of about 2 ms
    groups = int(min(max(3, seconds / max(guess * group, 1e-7)), 200))
    samples = [_call_block(fn, group, end)]
    while len(samples) < groups and time.perf_counter() < end:
        samples.append(_call_block(fn, group, end))
    return max(float(np.median(samples)), 1e-7)


def time_interleaved(
    runners: Mapping[str, Callable[[], object]],
    *,
    budget: float,
    blocks: int = 5,
    repeat: Optional[int] = None,
    pause: float = 0.025,
    first_call_s: Optional[Mapping[str, float]] = None,
    min_blocks: int = 3,
    on_block: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, Timing]:
    """Time each runner in alternating blocks of repetitions.

    Parameters
    ----------
    runners : mapping of str to callable
        No-argument callables, one per library.
    budget : float
        Target seconds of timed calls for all runners together.  Each runner
        gets an equal share; a runner slower than its share per block runs
        once per block, and then the number of blocks drops (to no fewer than
        ``min_blocks``) so that the total stays near the budget.  If the
        machine is much slower than the warm-up said (another process took
        the CPUs), blocks are cut short past three times their planned
        length, and no block starts after ``3 * budget`` once ``min_blocks``
        are done: the time per case stays bounded.
    blocks : int, default=5
        Number of alternating blocks.
    repeat : int, optional
        Calls per block for every runner, instead of deriving it from the budget.
    pause : float, default=0.025
        Seconds of sleep after every block, and then until the process is idle
        (the last library's idle threads stopped spinning, see ``settle``); 0
        for no pause.
    first_call_s : mapping of str to float, optional
        Time of a call already made (e.g. the correctness check), to size the
        warm-up.
    min_blocks : int, default=3
    on_block : callable, optional
        Called as ``on_block(done, total)`` after each block of all runners.

    Returns
    -------
    dict of str to Timing
    """
    names = list(runners)
    if not names:
        return {}
    # Warm-up: about 5% of the budget per runner, which also estimates the time per call.
    estimate: Dict[str, float] = {}
    for name in names:
        estimate[name] = _estimate(runners[name], 0.05 * budget / len(names),
                                   (first_call_s or {}).get(name))
        settle(pause)

    share = budget / len(names)
    if repeat is not None:
        reps = {name: max(1, int(repeat)) for name in names}
    else:
        reps = {name: max(1, round(share / blocks / estimate[name])) for name in names}
        one_round = sum(reps[name] * estimate[name] for name in names)
        if one_round * blocks > 1.2 * budget:
            blocks = max(min_blocks, math.floor(budget / one_round))

    times: Dict[str, List[float]] = {name: [] for name in names}
    stop_after = time.perf_counter() + 3 * max(budget, sum(
        reps[name] * estimate[name] for name in names) * min_blocks)
    with gc_paused():
        for block in range(blocks):
            if block >= min_blocks and time.perf_counter() > stop_after:
                break
            for name in rotation(names, block):
                planned = reps[name] * estimate[name]
                deadline = time.perf_counter() + 3 * planned + 0.01
                times[name].append(_call_block(runners[name], reps[name], deadline))
                settle(pause)
            if on_block is not None:
                on_block(block + 1, blocks)
    return {name: Timing(float(np.median(times[name])), times[name], reps[name])
            for name in names}


#: Calls of each GEMM before timing (library initialisation, weight packing, thread start)
#: and timed calls; the best of the timed calls is kept.
PEAK_WARMUP = 3
PEAK_REPS = 10


def _best_interleaved(gemms: Mapping[str, Callable[[], object]], reps: int,
                      warmup: int) -> Dict[str, float]:
    """Seconds of the fastest call of each GEMM, timed in rounds that take every GEMM in
    turn (a busy phase of a shared machine then slows all of them, not one)."""
    for fn in gemms.values():
        for _ in range(warmup):
            fn()
    best = {name: math.inf for name in gemms}
    for _ in range(reps):
        for name, fn in gemms.items():
            best[name] = min(best[name], _call_block(fn, 1))
    return best


def measure_peak(threads: int, size: int = 2048, reps: int = PEAK_REPS,
                 dtypes: tuple = ("float32", "float64"),
                 onnxruntime: bool = False, warmup: int = PEAK_WARMUP
                 ) -> Dict[str, Dict[str, float]]:
    """GFLOP/s of the fastest GEMM available in this process, per dtype: the measured
    reference of the benchmark's 'peak' column.

    Times ``size``-cubed matrix products with ``torch.mm`` (if torch is
    imported), scipy's BLAS (``sgemm``/``dgemm``), fastlstm's own packed
    product and, if asked, ONNX Runtime's ``MatMul``, all on ``threads``
    threads: each is warmed up with ``warmup`` calls, then ``reps`` rounds
    time every GEMM once in turn, and each keeps its fastest call.

    Parameters
    ----------
    threads : int
        Threads for torch (``torch.set_num_threads``), scipy's BLAS
        (threadpoolctl) and ONNX Runtime (``intra_op_num_threads``).
    size : int, default=2048
    reps : int, default=PEAK_REPS
    dtypes : tuple of str, default=("float32", "float64")
    onnxruntime : bool, default=False
        Also time ONNX Runtime's ``MatMul`` (MLAS, often the only GEMM of the
        three with AVX-512 kernels).
    warmup : int, default=PEAK_WARMUP

    Returns
    -------
    dict
        ``{dtype: {"torch.mm": gflops, "scipy.sgemm": gflops,
        "fastlstm.matmul": gflops, "onnxruntime.MatMul": gflops,
        "best": gflops}}`` (``scipy.dgemm`` for float64); a GEMM that cannot
        run is left out.
    """
    import sys

    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    from fastlstm._ext import kernels
    from fastlstm._module import _pack_panels

    torch = sys.modules.get("torch")
    flops = 2.0 * size ** 3
    rng = np.random.default_rng(0)
    result: Dict[str, Dict[str, float]] = {}
    saved = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            for dtype in dtypes:
                a = np.asfortranarray(rng.standard_normal((size, size)).astype(dtype))
                b = np.asfortranarray(rng.standard_normal((size, size)).astype(dtype))
                ca, cb = np.ascontiguousarray(a), np.ascontiguousarray(b)
                gemms: Dict[str, Callable[[], object]] = {}
                if torch is not None:
                    ta, tb = torch.from_numpy(ca), torch.from_numpy(cb)

                    def torch_mm(ta=ta, tb=tb):
                        with torch.inference_mode():
                            return torch.mm(ta, tb)

                    gemms["torch.mm"] = torch_mm
                name, gemm = ("scipy.sgemm", blas.sgemm) if dtype == "float32" else (
                    "scipy.dgemm", blas.dgemm)
                gemms[name] = partial(gemm, 1.0, a, b)
                if onnxruntime:
                    from fastlstm._bench.onnx_graph import make_session, matmul_to_onnx

                    try:
                        session = make_session(matmul_to_onnx(dtype), threads)
                        feed = {"A": ca, "B": cb}
                        session.run(None, feed)
                        gemms["onnxruntime.MatMul"] = partial(session.run, None, feed)
                    except Exception:  # no MatMul kernel for this dtype: leave it out
                        pass
                # fastlstm's own product (the weight packed once, as in a layer); with
                # AVX-512 it is often the fastest GEMM in the process.
                out = np.empty((size, size), dtype=dtype)
                gemms["fastlstm.matmul"] = partial(kernels.input_projection, ca, cb,
                                                   _pack_panels(cb), out, threads, 1 << 30)
                settle(0.05)
                found = {name: flops / seconds / 1e9 for name, seconds in
                         _best_interleaved(gemms, reps, warmup).items()}
                found["best"] = max(found.values())
                result[dtype] = found
    finally:
        if torch is not None:
            torch.set_num_threads(saved)
    return result
