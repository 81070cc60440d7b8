"""``fastlstm bench``: how streams on several Python threads scale.

A server runs one stream per connection on its own Python thread.  Each thread
here steps its own ``fastlstm.Stream`` (batch 1, one OpenMP thread) frame by
frame; the throughput of T threads together, over that of one thread, shows
whether the steps run in parallel (the GIL released) or in turn.  torch's
``nn.LSTMCell`` runs the same loop (``torch.set_num_threads(1)``) for
comparison.  Runs of 1 and T threads alternate (which runs first alternates too);
medians are reported.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

import fastlstm

__all__ = ["measure_stream_scaling", "scaling_line"]


def _run_threads(make_loop: Callable[[int], Callable[[int], None]], n_threads: int,
                 steps: int) -> float:
    """Wall time of ``n_threads`` threads each running ``steps`` steps of its own loop,
    started together after a few warm-up steps in each thread (a library's first call
    on a new thread may set up per-thread state, which is not what is measured)."""
    loops = [make_loop(k) for k in range(n_threads)]
    start = threading.Barrier(n_threads + 1)
    done = threading.Barrier(n_threads + 1)

    def body(loop: Callable[[int], None]) -> None:
        loop(20)
        start.wait()
        loop(steps)
        done.wait()

    workers = [threading.Thread(target=body, args=(loop,), daemon=True) for loop in loops]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    done.wait()
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.join()
    return elapsed


def measure_stream_scaling(torch: Any, n_threads: int, *, hidden: int = 256, steps: int = 2000,
                           repeats: int = 5, seed: int = 0) -> Dict[str, Any]:
    """Throughput of ``n_threads`` Python threads each stepping its own stream.

    Parameters
    ----------
    torch : module or None
        torch, for its ``nn.LSTMCell`` in the same loop; None to leave it out.
    n_threads : int
        Python threads (at least 2 to say anything).
    hidden : int, default=256
        Input and hidden size (batch 1, float32).
    steps : int, default=2000
        Frames per thread per run.
    repeats : int, default=5
        Runs of one and of ``n_threads`` threads, alternating; medians are kept.

    Returns
    -------
    dict
        ``threads``, ``hidden``, ``steps``, and per library (``fastlstm``,
        ``torch``) ``step_s_one`` (seconds per step, one thread),
        ``step_s_all`` (wall seconds per step per thread, all threads) and
        ``scaling`` (throughput of all threads over one thread's; ideal:
        ``threads``).
    """
    rng = np.random.default_rng(seed)
    frames = rng.standard_normal((64, 1, hidden)).astype(np.float32)
    lstm = fastlstm.LSTM(hidden, hidden, rng=seed)
    libs: Dict[str, Callable[[int], Callable[[int], None]]] = {}

    def fast_loop(_: int) -> Callable[[int], None]:
        stream = fastlstm.Stream(lstm, 1)

        def loop(n: int) -> None:
            for k in range(n):
                stream.step(frames[k % 64])
        return loop

    libs["fastlstm"] = fast_loop
    if torch is not None:
        cell = torch.nn.LSTMCell(hidden, hidden).eval()
        t_frames = torch.from_numpy(frames)

        def torch_loop(_: int) -> Callable[[int], None]:
            state = [torch.zeros(1, hidden), torch.zeros(1, hidden)]

            def loop(n: int) -> None:
                # OpenMP's thread count is per thread: set it on this one.
                torch.set_num_threads(1)
                h, c = state
                with torch.inference_mode():
                    for k in range(n):
                        h, c = cell(t_frames[k % 64], (h, c))
                state[:] = [h, c]
            return loop

        libs["torch"] = torch_loop

    saved = fastlstm.get_num_threads()
    saved_torch = torch.get_num_threads() if torch is not None else None
    times: Dict[str, Dict[int, List[float]]] = {lib: {1: [], n_threads: []} for lib in libs}
    try:
        fastlstm.set_num_threads(1)
        if torch is not None:
            torch.set_num_threads(1)
        for make in libs.values():
            _run_threads(make, 1, steps)  # warm-up
        for rep in range(repeats):
            for lib, make in libs.items():
                # Alternate which count runs first, so neither always follows the other.
                for count in (1, n_threads) if rep % 2 == 0 else (n_threads, 1):
                    times[lib][count].append(_run_threads(make, count, steps))
                    time.sleep(0.01)
    finally:
        fastlstm.set_num_threads(saved)
        if torch is not None:
            torch.set_num_threads(saved_torch)
    result: Dict[str, Any] = {"threads": n_threads, "hidden": hidden, "steps": steps}
    for lib in libs:
        one = statistics.median(times[lib][1]) / steps
        every = statistics.median(times[lib][n_threads]) / steps
        result[lib] = {"step_s_one": one, "step_s_all": every,
                       "scaling": n_threads * one / every}
    return result


def scaling_line(result: Optional[Dict[str, Any]]) -> Optional[str]:
    """The result as one line for the terminal and the Markdown report."""
    if not result:
        return None
    parts = [f"{lib} {r['scaling']:.2f}x ({r['step_s_one'] * 1e6:.1f} us per step alone)"
             for lib, r in result.items() if isinstance(r, dict)]
    return (f"streams on {result['threads']} Python threads (each its own, N=1, "
            f"H={result['hidden']}, 1 OpenMP thread): throughput over one thread: "
            + ", ".join(parts) + f"; ideal {result['threads']}.00x")
