"""``fastlstm bench --memory``: the peak memory of one forward, in a fresh process.

For each case and library, ``fastlstm bench`` runs

    python -m fastlstm._bench.memory '{"lib": "torch", "case": {...}, "threads": 2, "seed": 0}'

which builds everything a forward needs (the module and its weights, for
fastlstm also its packed weights, for ONNX Runtime the session; the input, and
the thread count), then measures the first forward call and prints one line of
JSON: ``{"lib": ..., "peak_mib": ..., "total_mib": ..., "file_mib": ..., ...}``
or, on failure, ``{"lib": ..., "peak_mib": null, "error": "..."}`` (exit status 1).

``total_mib`` is the growth of the process's peak resident set during the call
over its resident set just before it.  Just before the call, freed heap memory
is returned to the system (``malloc_trim``, glibc) and the kernel's peak is
reset to the current resident set (``echo 5 > /proc/self/clear_refs``); after
the call, the peak (``VmHWM`` of ``/proc/self/status``) is read.

``peak_mib``, the number the benchmark reports, is ``total_mib`` less
``file_mib``: the pages of files (the libraries' code and read-only data) that
the first call read in, which are shared, evictable and not allocated by the
forward (about 9 MiB for torch, next to nothing for fastlstm).  As they stay
resident until the end of the call, ``peak_mib`` is the peak of the rest
(heap, buffers, thread stacks) where they were read in before that peak, and
a lower bound otherwise.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not used: it keeps the peak of the
process that started this one (Linux copies it at ``exec``), and no reset
clears it, so in a child of a large benchmark process it hides every forward
smaller than the parent.  Where ``clear_refs`` cannot be written (old or
restricted kernels) the peak is not reset; the result is then exact only if
the forward goes above every earlier peak of the child, and is reported as
missing otherwise.

Linux only (``/proc``); elsewhere :func:`measure_in_subprocess` reports why not.
This module imports only the standard library at the top, so the parent
process pays nothing for it.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional

from fastlstm._bench.cases import LIBS

__all__ = ["AVAILABLE", "LIBS", "METHOD", "UNAVAILABLE_NOTE", "main", "measure",
           "measure_in_subprocess"]

#: The libraries this module measures.

#: Whether this system can measure (Linux: /proc/self/status).
AVAILABLE = sys.platform.startswith("linux")
UNAVAILABLE_NOTE = "peak memory is measured on Linux only"
#: The method, in words (the report's settings).
METHOD = ("growth of the resident set (peak, VmHWM, over the resident set before) during "
          "the first forward after building the module, its weights (packed, for fastlstm), "
          "the ONNX Runtime session and the input, one fresh process per case and library, "
          "same threads; pages of library files read in by the call not counted")

_KIB_PER_MIB = 1024.0
_FIELDS = ("VmRSS", "VmHWM", "RssFile")


# ------------------------------------------------------------ in the child
def _status_kib(*keys: str) -> Dict[str, int]:
    """Fields of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``)."""
    found: Dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0])
    return found


def _trim_heap() -> None:
    """Give freed heap memory back to the system (glibc), so a forward cannot reuse it unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        pass


def _reset_peak() -> bool:
    """Reset the kernel's peak resident set (``VmHWM``) to the current one; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build(lib: str, case: Dict[str, Any], threads: int, seed: int) -> Any:
    """Everything the forward needs, built; returns the call to measure."""
    import warnings

    import numpy as np

    import fastlstm

    warnings.filterwarnings("ignore", message=".*projections is not supported.*")
    kwargs = {"input_size": case["I"], "hidden_size": case["H"], "num_layers": case["layers"],
              "bidirectional": bool(case["bidirectional"]), "proj_size": case["proj_size"]}
    dtype = case["dtype"]
    x = np.random.default_rng(seed).standard_normal(
        (case["L"], case["N"], case["I"])).astype(dtype)
    fastlstm.set_num_threads(threads)
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        module = torch.nn.LSTM(**kwargs, dtype=getattr(torch, dtype)).eval()
        xt = torch.from_numpy(x)

        def call() -> Any:
            with torch.inference_mode():
                return module(xt)
        return call
    # fastlstm and ONNX Runtime: the weights of a fastlstm module (no torch in the process).
    module = fastlstm.LSTM(**kwargs, dtype=dtype, rng=seed)
    if lib == "fastlstm":
        module._packed_layers()  # packed once, as after the first call
        return lambda: module(x)
    if lib == "onnxruntime":
        from fastlstm._bench.onnx_graph import OrtLSTM

        ort_lstm = OrtLSTM(module, threads)
        feed = ort_lstm.feed(x)
        run = ort_lstm.session.run
        return lambda: run(None, feed)
    raise ValueError(f"unknown library {lib!r} (one of {', '.join(LIBS)})")


def measure(lib: str, case: Dict[str, Any], threads: int = 1, seed: int = 0) -> Dict[str, Any]:
    """Peak resident-memory growth of the first forward of ``lib`` on ``case``, in this process.

    Meant for a fresh process (see :func:`measure_in_subprocess`): anything
    this process ran before may have left memory that the forward reuses.

    Parameters
    ----------
    lib : {"fastlstm", "torch", "onnxruntime"}
    case : dict
        ``N``, ``L``, ``I``, ``H``, ``layers``, ``bidirectional``,
        ``proj_size``, ``dtype``, as in ``Case.as_dict()``.
    threads : int, default=1
    seed : int, default=0

    Returns
    -------
    dict
        In MiB: ``peak_mib``, the peak growth less ``file_mib``;
        ``total_mib``, the peak growth of the whole resident set (both None
        if an earlier peak hid it); ``file_mib``, file-backed pages (library
        code and data) that the call read in for the first time;
        ``baseline_mib``, the resident set before the call; ``peak_rss_mib``.
        Also ``lib`` and ``method``.
    """
    call = _build(lib, case, threads, seed)
    gc.collect()
    _trim_heap()
    reset = _reset_peak()
    before = _status_kib(*_FIELDS)
    result = call()
    after = _status_kib(*_FIELDS)
    del result
    total: Optional[float] = (after["VmHWM"] - before["VmRSS"]) / _KIB_PER_MIB
    if not reset and after["VmHWM"] <= before["VmHWM"]:
        total = None  # the forward stayed under an earlier peak: its own is unknown
    file_mib = max(0, after.get("RssFile", 0) - before.get("RssFile", 0)) / _KIB_PER_MIB
    return {
        "lib": lib,
        "peak_mib": None if total is None else max(0.0, total - file_mib),
        "total_mib": None if total is None else max(0.0, total),
        "file_mib": file_mib,
        "baseline_mib": before["VmRSS"] / _KIB_PER_MIB,
        "peak_rss_mib": after["VmHWM"] / _KIB_PER_MIB,
        "method": "VmHWM after, reset by clear_refs" if reset else "VmHWM after, not reset",
    }


# ----------------------------------------------------------- in the parent
def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_in_subprocess(lib: str, case: Dict[str, Any], threads: int = 1, seed: int = 0,
                          timeout: float = 600.0) -> Dict[str, Any]:
    """Run :func:`measure` in a fresh Python process (this interpreter, this fastlstm).

    Returns
    -------
    dict
        :func:`measure`'s result, or ``{"lib": lib, "peak_mib": None,
        "error": "one line"}`` if the process failed, timed out, or this
        system is not Linux.
    """
    if not AVAILABLE:
        return {"lib": lib, "peak_mib": None, "error": UNAVAILABLE_NOTE}
    request = json.dumps({"lib": lib, "case": case, "threads": threads, "seed": seed})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", "fastlstm._bench.memory", request],
                              capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"lib": lib, "peak_mib": None, "error": f"timed out after {timeout:.0f} s"}
    except OSError as err:
        return {"lib": lib, "peak_mib": None, "error": f"{type(err).__name__}: {err}"}
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"lib": lib, "peak_mib": None, "error": tail[:160]}
    if proc.returncode != 0 and not result.get("error"):
        result["error"] = f"exit status {proc.returncode}"
    result.setdefault("peak_mib", None)
    return result


def main(argv: Optional[list] = None) -> int:
    """``python -m fastlstm._bench.memory REQUEST_JSON``: print :func:`measure`'s JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fastlstm._bench.memory "
              "'{\"lib\": ..., \"case\": {...}, \"threads\": N, \"seed\": S}'", file=sys.stderr)
        return 2
    request = json.loads(argv[0])
    lib = request.get("lib", "?")
    try:
        result = measure(lib, request["case"], int(request.get("threads", 1)),
                         int(request.get("seed", 0)))
    except Exception as err:  # reported to the parent as one line
        text = str(err).strip().splitlines()
        print(json.dumps({"lib": lib, "peak_mib": None,
                          "error": f"{type(err).__name__}: {text[-1] if text else ''}"[:160]}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
