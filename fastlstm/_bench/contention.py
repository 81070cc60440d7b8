"""``fastlstm bench --contention``: how fastlstm and torch hold up on a shared CPU.

Three scenarios, each run for fastlstm and (when torch is importable) for torch
with the same weights, shapes and thread counts, each reported as a ratio of
two configurations A and B measured in alternating blocks of a fixed wall time
(the order of the configurations rotates from block to block; medians over the
blocks are kept):

* **busy neighbour**: P other processes each spin a pure-Python busy loop while
  this process runs a 1-layer forward (H=256, L=100, batch 1 and 16); sequences
  per second with the default thread count (A) over one thread (B).  Target
  >= 0.9: using every core must not lose much when one of them is taken.
* **two processes**: two worker processes (fresh interpreters, not forks), started
  together, each running the batch-1 forward; their total sequences per second
  with the default thread count each (A) over one thread each (B).  Target >= 0.8.
* **oversubscribed**: in this process, the time of a one-step call (L=1, 2 layers)
  and of a 100-step sequence on twice as many threads as CPUs (A) over as many
  threads as CPUs (B).  Target <= 1.5.
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import fastlstm
from fastlstm import _threads
from fastlstm._bench.report import fmt_time
from fastlstm._bench.timing import gc_paused, rotation, settle

__all__ = ["HIDDEN", "LENGTH", "TARGETS", "error_row", "header_lines", "measure_contention",
           "ratio_row", "ratio_table", "worker_main"]

#: Input and hidden size of every model here, and the sequence length of a forward.
HIDDEN = 256
LENGTH = 100
#: Each scenario's target for its ratio A/B: (">=" or "<=", bound).
TARGETS = {"busy neighbour": (">=", 0.9), "two processes": (">=", 0.8),
           "oversubscribed": ("<=", 1.5)}

_BUSY_LOOP = "while True: pass"
# The worker's script: the module is imported by name, so the child runs this fastlstm.
_WORKER = ("import sys; from fastlstm._bench.contention import worker_main; "
           "sys.exit(worker_main(sys.argv[1]))")
_PAUSE_S = 0.025  # after each block, then until the process is idle (timing.settle)


# ------------------------------------------------------------------- rows
def ratio_row(scenario: str, library: str, case: str, a_label: str, b_label: str,
              a_blocks: Sequence[float], b_blocks: Sequence[float], unit: str,
              target: Tuple[str, float]) -> Dict[str, Any]:
    """One row of a ratio table: configuration A against B, and whether A/B meets ``target``.

    Parameters
    ----------
    scenario, library, case : str
        What the row measures, as shown in the table.
    a_label, b_label : str
        The two configurations, e.g. ``"2 threads"`` and ``"1 thread"``.
    a_blocks, b_blocks : sequence of float
        The figure of each block (medians are reported).
    unit : {"seq/s", "s"}
        Sequences per second (higher is better) or seconds per call.
    target : (str, float)
        ``(">=", bound)`` or ``("<=", bound)`` for the ratio A/B.

    Returns
    -------
    dict
        ``scenario``, ``library``, ``case``, ``a_label``, ``b_label``, ``a``,
        ``b`` (medians), ``a_blocks``, ``b_blocks``, ``unit``, ``ratio``,
        ``target``, ``target_op``, ``met`` and ``error`` (None).
    """
    a, b = statistics.median(a_blocks), statistics.median(b_blocks)
    op, bound = target
    ratio = a / b
    return {"scenario": scenario, "library": library, "case": case, "a_label": a_label,
            "b_label": b_label, "a": a, "b": b, "a_blocks": list(a_blocks),
            "b_blocks": list(b_blocks), "unit": unit, "ratio": ratio, "target": bound,
            "target_op": op, "met": ratio >= bound if op == ">=" else ratio <= bound,
            "error": None}


def error_row(scenario: str, library: str, case: str, error: str) -> Dict[str, Any]:
    """A row that measured nothing, with the reason (a failure is never silent)."""
    return {"scenario": scenario, "library": library, "case": case, "a_label": None,
            "b_label": None, "a": None, "b": None, "a_blocks": [], "b_blocks": [],
            "unit": None, "ratio": None, "target": None, "target_op": None, "met": None,
            "error": error}


def _figure(value: Optional[float], unit: Optional[str]) -> str:
    if value is None:
        return "n/a"
    return fmt_time(value) if unit == "s" else f"{value:.1f} {unit}"


_HEADERS = ["scenario", "library", "case", "A", "B", "A/B", "target", "result"]


def ratio_table(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """The rows as aligned lines: a header, a rule, then one line per row (an error
    row shows its reason across the figure columns)."""
    cells = []
    for row in rows:
        head = [row["scenario"], row["library"], row["case"]]
        if row["error"] is not None:
            cells.append(head + [f"ERROR: {row['error']}"])
            continue
        cells.append(head + [
            f"{row['a_label']} {_figure(row['a'], row['unit'])}",
            f"{row['b_label']} {_figure(row['b'], row['unit'])}",
            f"{row['ratio']:.2f}", f"{row['target_op']} {row['target']:g}",
            "met" if row["met"] else "missed"])
    # An error row counts for the first three columns only: its reason runs on.
    widths = [max([len(h)] + [len(c[k]) for c in cells if k < 3 or len(c) == len(_HEADERS)])
              for k, h in enumerate(_HEADERS)]

    def line(parts: Sequence[str]) -> str:
        return " ".join(p.rjust(w) if 3 <= k < 7 else p.ljust(w)
                        for k, (p, w) in enumerate(zip(parts, widths))).rstrip()

    lines = [line(_HEADERS), "-" * len(line(_HEADERS))]
    lines += [line(c) if len(c) == len(_HEADERS) else line(c[:3]) + " " + c[3] for c in cells]
    return lines


# ----------------------------------------------------------------- models
def _build_calls(torch: Any, libs: Sequence[str], *, batch: int, length: int, layers: int,
                 seed: int, hidden: int = HIDDEN, carried: bool = False
                 ) -> Dict[str, Callable[[], object]]:
    """A forward of each library in ``libs`` on the same weights and input.

    fastlstm's weights come from its own seeded initialisation and torch loads
    them (so no process needs torch for fastlstm's side); ``carried`` passes a
    random ``(h, c)`` as a streaming call does.
    """
    rng = np.random.default_rng(seed)
    fast = fastlstm.LSTM(hidden, hidden, layers, rng=seed)
    x = rng.standard_normal((length, batch, hidden)).astype(np.float32)
    hx = None
    if carried:
        hx = tuple(rng.standard_normal((layers, batch, hidden)).astype(np.float32)
                   for _ in range(2))
    calls: Dict[str, Callable[[], object]] = {}
    if "fastlstm" in libs:
        calls["fastlstm"] = lambda: fast(x, hx)
    if "torch" in libs:
        module = torch.nn.LSTM(hidden, hidden, layers).eval()
        module.load_state_dict({k: torch.from_numpy(np.array(v))
                                for k, v in fast.state_dict().items()})
        xt = torch.from_numpy(x)
        hxt = None if hx is None else tuple(torch.from_numpy(a) for a in hx)

        def torch_call() -> object:
            with torch.inference_mode():
                return module(xt, hxt)
        calls["torch"] = torch_call
    return calls


def _set_threads(torch: Any, lib: str, threads: int) -> None:
    if lib == "torch":
        torch.set_num_threads(threads)
    else:
        fastlstm.set_num_threads(threads)


def _run_for(call: Callable[[], object], seconds: float) -> Tuple[int, float]:
    """Calls of ``call`` made in about ``seconds`` of wall time (at least one), and the
    time they took."""
    start = time.perf_counter()
    end = start + seconds
    calls = 0
    while True:
        call()
        calls += 1
        now = time.perf_counter()
        if now >= end:
            return calls, now - start


@dataclass
class _Config:
    """One configuration of an in-process scenario: a call on a thread count."""

    lib: str
    threads: int
    call: Callable[[], object]
    per_call: int  # sequences per call, for a rate; 0 for seconds per call


def _interleave(torch: Any, configs: Dict[str, _Config], blocks: int, seconds: float,
                on_block: Callable[[], None]) -> Dict[str, List[float]]:
    """Each configuration's figure per block (sequences/s, or seconds per call when
    ``per_call`` is 0), the configurations taking turns, the order rotating."""
    names = list(configs)
    for config in configs.values():  # warm-up: first calls, thread start, packing
        _set_threads(torch, config.lib, config.threads)
        config.call()
        _run_for(config.call, min(0.1, seconds / 4))
        settle(_PAUSE_S)
    figures: Dict[str, List[float]] = {name: [] for name in names}
    with gc_paused():
        for block in range(blocks):
            for name in rotation(names, block):
                config = configs[name]
                _set_threads(torch, config.lib, config.threads)
                calls, elapsed = _run_for(config.call, seconds)
                figures[name].append(calls * config.per_call / elapsed if config.per_call
                                     else elapsed / calls)
                settle(_PAUSE_S)
            on_block()
    return figures


def _threads_label(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


# --------------------------------------------------------- busy neighbour
def _start_neighbours(count: int) -> List[subprocess.Popen]:
    """``count`` processes each spinning a pure-Python busy loop."""
    procs: List[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", _BUSY_LOOP],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
    except BaseException:
        _stop(procs)
        raise
    return procs


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """Kill and reap every process (reaped, so no pid is left behind)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a killed process exits
            pass


def _busy_neighbour(torch: Any, libs: List[str], threads: int, neighbours: int,
                    seconds: float, blocks: int, seed: int, pids: List[int],
                    on_block: Callable[[], None]) -> List[Dict[str, Any]]:
    configs: Dict[str, _Config] = {}
    for batch in (1, 16):
        calls = _build_calls(torch, libs, batch=batch, length=LENGTH, layers=1, seed=seed,
                             hidden=HIDDEN)
        for lib in libs:
            for n in (threads, 1):
                configs[f"{lib} {batch} {n}"] = _Config(lib, n, calls[lib], batch)
    procs = _start_neighbours(neighbours)
    try:
        pids.extend(p.pid for p in procs)
        time.sleep(0.1 if procs else 0.0)  # let them get past the interpreter's start
        figures = _interleave(torch, configs, blocks, seconds, on_block)
    finally:
        _stop(procs)
    rows = []
    for batch in (1, 16):
        for lib in libs:
            rows.append(ratio_row(
                "busy neighbour", lib, f"N={batch} L={LENGTH} H={HIDDEN}",
                _threads_label(threads), _threads_label(1),
                figures[f"{lib} {batch} {threads}"], figures[f"{lib} {batch} 1"], "seq/s",
                TARGETS["busy neighbour"]))
    return rows


# ---------------------------------------------------------- two processes
def _send(stream: IO[str], message: Dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def worker_main(request: str) -> int:
    """A worker of the "two processes" scenario (``python -c``, see ``_WORKER``).

    Builds the forward of each library named in ``request`` (JSON: ``libs``,
    ``batch``, ``length``, ``hidden``, ``seed``), says ``{"ready": true}`` on stdout, then answers
    one JSON line per line of stdin: ``{"cmd": "prepare", "lib", "threads"}``
    sets the library's threads and warms it up (answer ``ready``);
    ``{"cmd": "run", "lib", "start", "seconds"}`` waits for ``start``
    (``time.monotonic()``, shared by the processes of a machine), calls the
    forward until ``seconds`` later and answers ``calls`` and ``elapsed``.
    End of input ends the worker.
    """
    spec = json.loads(request)
    torch = importlib.import_module("torch") if "torch" in spec["libs"] else None
    calls = _build_calls(torch, spec["libs"], batch=spec["batch"], length=spec["length"],
                         layers=1, seed=spec["seed"], hidden=spec["hidden"])
    out = sys.stdout
    _send(out, {"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        message = json.loads(line)
        call = calls[message["lib"]]
        if message["cmd"] == "prepare":
            _set_threads(torch, message["lib"], message["threads"])
            for _ in range(2):
                call()
            _send(out, {"ready": True})
        elif message["cmd"] == "run":
            time.sleep(max(0.0, message["start"] - time.monotonic()))
            count, elapsed = _run_for(call, message["seconds"])
            _send(out, {"calls": count, "elapsed": elapsed})
    return 0


def _package_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Worker:
    """A worker process and its pipes (see :func:`worker_main`)."""

    def __init__(self, libs: List[str], seed: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        request = json.dumps({"libs": libs, "batch": 1, "length": LENGTH, "hidden": HIDDEN,
                              "seed": seed})
        # A file, not a pipe: nobody reads stderr until the worker fails.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, request],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, env=env)

    def send(self, message: Dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        _send(self.proc.stdin, message)

    def receive(self, timeout: float) -> Dict[str, Any]:
        """The worker's next line, or RuntimeError if it exits or is silent for ``timeout``."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            self.proc.wait()
            self.stderr.seek(0)
            tail = (self.stderr.read().strip().splitlines()
                    or [f"silent for {timeout:.0f} s" if not ready
                        else f"exit status {self.proc.returncode}"])[-1]
            raise RuntimeError(f"worker process failed: {tail}"[:160])
        return dict(json.loads(line))

    def stop(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        _stop([self.proc])
        self.stderr.close()


def _two_processes(libs: List[str], threads: int, seconds: float, blocks: int, seed: int,
                   pids: List[int], on_block: Callable[[], None]) -> List[Dict[str, Any]]:
    workers: List[_Worker] = []
    configs = [(lib, n) for lib in libs for n in (threads, 1)]
    figures: Dict[Tuple[str, int], List[float]] = {c: [] for c in configs}
    try:
        for _ in range(2):
            workers.append(_Worker(libs, seed))
            pids.append(workers[-1].proc.pid)
        for worker in workers:  # the first answer waits for imports (torch: seconds)
            worker.receive(timeout=300.0)
        wait = 60.0 + 4 * seconds
        for block in range(-1, blocks):  # block -1: a warm-up round, not kept
            shift = max(block, 0) % len(configs)
            for lib, n in configs[shift:] + configs[:shift]:
                for worker in workers:
                    worker.send({"cmd": "prepare", "lib": lib, "threads": n})
                for worker in workers:
                    worker.receive(wait)
                # Both start at the same instant, after their warm-up calls went idle.
                start = time.monotonic() + 2 * _PAUSE_S
                for worker in workers:
                    worker.send({"cmd": "run", "lib": lib, "start": start,
                                 "seconds": seconds if block >= 0 else seconds / 4})
                done = [worker.receive(wait) for worker in workers]
                if block >= 0:
                    figures[(lib, n)].append(sum(d["calls"] / d["elapsed"] for d in done))
            if block >= 0:
                on_block()
    except RuntimeError as err:
        return [error_row("two processes", lib, f"2 x N=1 L={LENGTH} H={HIDDEN}", str(err))
                for lib in libs]
    finally:
        for worker in workers:
            worker.stop()
    return [ratio_row("two processes", lib, f"2 x N=1 L={LENGTH} H={HIDDEN}",
                      f"{_threads_label(threads)} each", f"{_threads_label(1)} each",
                      figures[(lib, threads)], figures[(lib, 1)], "seq/s",
                      TARGETS["two processes"]) for lib in libs]


# --------------------------------------------------------- oversubscribed
def _oversubscribed(torch: Any, libs: List[str], ncpu: int, seconds: float, blocks: int,
                    seed: int, on_block: Callable[[], None]) -> List[Dict[str, Any]]:
    shapes = {"one step": f"L=1 N=1 H={HIDDEN} 2 layers",
              "sequence": f"L={LENGTH} N=1 H={HIDDEN} 2 layers"}
    step = _build_calls(torch, libs, batch=1, length=1, layers=2, seed=seed, hidden=HIDDEN,
                        carried=True)
    sequence = _build_calls(torch, libs, batch=1, length=LENGTH, layers=2, seed=seed,
                            hidden=HIDDEN)
    configs: Dict[str, _Config] = {}
    for kind, calls in (("one step", step), ("sequence", sequence)):
        for lib in libs:
            for n in (2 * ncpu, ncpu):
                configs[f"{lib} {kind} {n}"] = _Config(lib, n, calls[lib], 0)
    figures = _interleave(torch, configs, blocks, seconds, on_block)
    return [ratio_row("oversubscribed", lib, shapes[kind], _threads_label(2 * ncpu),
                      _threads_label(ncpu), figures[f"{lib} {kind} {2 * ncpu}"],
                      figures[f"{lib} {kind} {ncpu}"], "s", TARGETS["oversubscribed"])
            for kind in shapes for lib in libs]


# ---------------------------------------------------------------- the mode
def measure_contention(torch: Any, *, neighbours: int = 1, seconds: float = 0.5,
                       blocks: int = 5, seed: int = 0, threads: Optional[int] = None,
                       on_progress: Optional[Callable[[float, str], None]] = None
                       ) -> Dict[str, Any]:
    """Throughput ratios of fastlstm (and torch) on a shared CPU: the three scenarios of
    this module, each configuration pair timed in alternating blocks.

    Parameters
    ----------
    torch : module or None
        torch, measured beside fastlstm with the same weights, shapes and
        thread counts; None for fastlstm alone.
    neighbours : int, default=1
        Busy-loop processes running during the "busy neighbour" scenario.
    seconds : float, default=0.5
        Wall time of one block of one configuration.
    blocks : int, default=5
        Blocks per configuration; medians over them are reported.
    seed : int, default=0
        Seed of the weights and inputs.
    threads : int, optional
        The default thread count compared with one thread;
        ``fastlstm.get_num_threads()`` if None.
    on_progress : callable, optional
        Called as ``on_progress(fraction_done, stage)``.

    Returns
    -------
    dict
        ``ncpu`` (usable CPUs), ``threads``, ``oversubscribed_threads``
        (``2 * ncpu``), ``neighbours``, ``seconds``, ``blocks``, ``seed``,
        ``libraries``, ``torch`` (its version or None), ``rows`` (see
        :func:`ratio_row`; a scenario that failed has error rows),
        ``neighbour_pids`` and ``worker_pids`` (all ended and reaped on
        return), ``wall_s``.  Figures: sequences per second
        (``unit`` ``"seq/s"``) or seconds per call (``"s"``).
    """
    started = time.perf_counter()
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity mask outside Linux
        ncpu = os.cpu_count() or 1
    threads = threads or fastlstm.get_num_threads()
    libs = ["fastlstm"] + (["torch"] if torch is not None else [])
    result: Dict[str, Any] = {
        "ncpu": ncpu, "threads": threads, "oversubscribed_threads": 2 * ncpu,
        "neighbours": neighbours, "seconds": seconds, "blocks": blocks, "seed": seed,
        "libraries": libs, "torch": getattr(torch, "__version__", None), "rows": [],
        "neighbour_pids": [], "worker_pids": [], "wall_s": None,
    }
    # Blocks of all three scenarios, for the progress bar.
    total = blocks * (2 + 1 + 2) * len(libs) * 2
    done = [0]
    progress = on_progress or (lambda frac, stage: None)

    def step(stage: str, per_block: int) -> Callable[[], None]:
        def on_block() -> None:
            done[0] += per_block
            progress(done[0] / total, stage)
        progress(done[0] / total, stage)
        return on_block

    saved_fast = _threads._num_threads
    saved_torch = torch.get_num_threads() if torch is not None else None
    try:
        result["rows"] += _busy_neighbour(
            torch, libs, threads, neighbours, seconds, blocks, seed, result["neighbour_pids"],
            step(f"busy neighbour ({neighbours} process(es))", 4 * len(libs)))
        result["rows"] += _two_processes(libs, threads, seconds, blocks, seed,
                                         result["worker_pids"],
                                         step("two processes", 2 * len(libs)))
        result["rows"] += _oversubscribed(torch, libs, ncpu, seconds, blocks, seed,
                                          step("oversubscribed", 4 * len(libs)))
    finally:
        fastlstm.set_num_threads(saved_fast)
        if torch is not None:
            torch.set_num_threads(saved_torch)
    result["wall_s"] = time.perf_counter() - started
    return result


def header_lines(result: Dict[str, Any], cpu: str) -> List[str]:
    """What the contention table was measured on and how, in two lines."""
    return [
        f"contention: {cpu}, {result['ncpu']} usable CPUs; threads: default "
        f"{result['threads']}, oversubscribed {result['oversubscribed_threads']}; "
        f"{result['neighbours']} busy neighbour process(es)",
        f"blocks of {result['seconds']:g} s, {result['blocks']} per configuration, "
        "alternating; medians; ratio = A/B"
        + ("" if result["torch"] else "; torch not installed: fastlstm only"),
    ]
