"""``fastlstm bench``: time fastlstm against torch.nn.LSTM, ONNX Runtime and OpenVINO.

All libraries run in this one process on the same weights, the same inputs and
the same number of threads.  Every case is first checked against torch (max
abs difference of output, h_n and c_n); a case whose fastlstm difference
exceeds 1e-4 (float32) or 1e-10 (float64) is reported and not timed, and ONNX
Runtime and OpenVINO (in float32, on the forward and carried cases of float32)
are timed only where they match torch just as closely.  Timing warms each
library up, then alternates blocks of repetitions of the libraries with a
pause after each block that lasts until the process is idle (an idle thread
pool keeps spinning for a while and would slow the next library), and reports
the median over the blocks.
With --memory, each library's peak memory during one forward is measured too,
in a fresh process per case and library (Linux).
--contention, --seq2seq and --precision run other measurements instead of the
case grid: fastlstm and torch on a shared CPU (busy neighbour processes, two
processes, more threads than CPUs), a greedy seq2seq decode (fastlstm + NumPy
against torch), and bfloat16 and int8 weights beside float32 and torch's bfloat16
and dynamically quantized LSTMs; each prints a table against their targets.
--throughput runs 20,000 variable-length sequences five ways (forward_many, a
loop of single calls, padded batches, torch's packed batches, fastlstm.dask on a
local cluster) and prints their sequences/s against its targets.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import fastlstm
from fastlstm import _threads
from fastlstm._bench import contention as _contention
from fastlstm._bench import memory as _bench_memory
from fastlstm._bench import precision as _precision
from fastlstm._bench import seq2seq as _seq2seq
from fastlstm._bench import throughput as _throughput
from fastlstm._bench.cases import (
    DEFAULT_GRID,
    FLOPS_FORMULA,
    FULL_GRID,
    SHAPE_SYNTAX,
    Case,
    parse_shape,
    select_cases,
    slug,
)
from fastlstm._bench.report import (
    LIBS,
    MEMORY_LIBS,
    Progress,
    Table,
    contention_lines,
    geomean,
    machine_info,
    matplotlib_available,
    memory_summary,
    now_iso,
    padded_lines,
    versions,
    write_json,
    write_markdown,
    write_plot,
)
from fastlstm._bench.streams import measure_stream_scaling, scaling_line
from fastlstm._bench.timing import PEAK_REPS, PEAK_WARMUP, measure_peak, time_interleaved
from fastlstm._ext import kernels
from fastlstm.cli import CLIError, file_error

__all__ = ["DESCRIPTION", "EPILOG", "TOLERANCE", "add_arguments", "measure_memory", "run",
           "run_case"]

DESCRIPTION = __doc__.split("\n", 1)[1].strip()
EPILOG = textwrap.fill(
    f"GFLOP/s: {FLOPS_FORMULA}.  'peak' is that rate as a fraction of a measured "
    "reference: the best GEMM in this process (torch.mm, scipy's BLAS, fastlstm's and ONNX "
    "Runtime's products, same threads, per dtype, warmed up, before and after the cases), "
    "raised to any case's rate that beats it.  ONNX Runtime's LSTM has no projection and "
    "no float64: those cells are n/a.  OpenVINO (openvino.convert_model of the torch module, "
    "compiled for its CPU plugin in float32) runs the forward and carried cases of float32; "
    "it converts no projection.", 79) + """

Exit status: 0, or 1 if a case (or a --seq2seq decode, or a fastlstm variant of
--precision, or a variant of --throughput) disagrees with torch (--throughput:
with forward_many) or fails, 2 on a usage error (or without torch, except
--contention, which then measures fastlstm alone).  The JSON
fields are described in benchmarks/README.md.

examples:
  fastlstm bench                                  # the default grid (< 3 min on 2 cores)
  fastlstm bench --cases small-batch,double --threads 1
  fastlstm bench --shape 32,50,128,256,2,yes --shape 8,20,64,64,1,no,0,float64
  fastlstm bench --full --json bench.json --markdown bench.md --plot bench.png
  fastlstm bench --memory --cases large,projection  # + peak memory of one forward
  fastlstm bench --contention --json contention.json  # shared CPU (about a minute)
  fastlstm bench --seq2seq --seq2seq-batches 1,300    # greedy decode (about 10 s)
  fastlstm bench --precision --precision-cases one-step,batch  # bf16, int8 vs float32
  fastlstm bench --throughput --sequences 2000      # many sequences, five ways (~1 min)
"""

#: Largest max abs difference from torch that a case may have to be timed.
TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


# ---------------------------------------------------------------- arguments
def _number(convert: Callable[[str], Any], low: float, low_allowed: bool,
            what: str) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)``, finite, above ``low`` (or equal to it
    with ``low_allowed``), else an error saying it expected ``what``."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        # NaN fails every comparison, so it is refused too.
        if value is None or not (value > low or low_allowed and value == low) or (
                value == float("inf")):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, 0, False, "a positive integer")
#: The most --threads: torch.set_num_threads(40000) crashed the process.
MAX_THREADS = 256


def _thread_count(text: str) -> int:
    n = int(_positive_int(text))
    if n > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {text!r}")
    return n
_non_negative_int = _number(int, 0, True, "an integer >= 0")
_positive_float = _number(float, 0.0, False, "a positive number")
_non_negative_float = _number(float, 0.0, True, "a number >= 0")


def _seed(text: str) -> int:
    # numpy takes any seed >= 0, torch.manual_seed at most 2**64 - 1: checked before a run
    seed = int(_non_negative_int(text))
    if seed >= 1 << 63:
        raise argparse.ArgumentTypeError(f"expected an integer below 2**63, got {text!r}")
    return seed


def _bench_threads(asked: Optional[int]) -> int:
    """The threads of every library: ``--threads`` (else fastlstm's default), at most the
    CPUs this process may use, which bound fastlstm's calls: torch on more would be timed
    oversubscribed beside it."""
    if not asked:
        return fastlstm.get_num_threads()
    cap = _threads._cap()
    if cap and asked > cap:
        print(f"fastlstm bench: --threads {asked}: this process may use {cap} CPUs, which "
              f"bound fastlstm's calls; every library runs on {cap} threads", file=sys.stderr)
        return cap
    return asked


def _case_list(text: str) -> List[Case]:
    try:
        cases = select_cases(text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if not cases:
        raise argparse.ArgumentTypeError("no case named")
    return cases


def _shape(text: str) -> Case:
    try:
        return parse_shape(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _batches(text: str) -> Tuple[int, ...]:
    try:
        # each batch once, in the order given (as --cases)
        return tuple(dict.fromkeys(_positive_int(part.strip()) for part in text.split(",")))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, got {text!r}") from None


def _precision_cases(text: str) -> Tuple[str, ...]:
    try:
        return tuple(case.name for case in _precision.select_cases(text.split(",")))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastlstm bench``."""
    pick = parser.add_argument_group("cases (default: the default grid)")
    pick.add_argument("--cases", metavar="NAME,...", type=_case_list, action="append",
                      help="cases by name, from the default or full grid (see --list)")
    pick.add_argument("--shape", metavar=SHAPE_SYNTAX, type=_shape, action="append",
                      help="a custom case (repeatable); bidir 0/1, dtype float32/float64")
    pick.add_argument("--full", action="store_true", help="the larger grid (default + more)")
    pick.add_argument("--list", action="store_true", help="list the cases and exit")

    timing = parser.add_argument_group("timing")
    timing.add_argument("--threads", type=_thread_count, metavar="N",
                        help="threads for every library, at most the CPUs this process may "
                             "use (default: fastlstm's default, "
                             f"now {fastlstm.get_num_threads()})")
    timing.add_argument("--budget", type=_positive_float, metavar="SECONDS",
                        help="seconds of timed calls per case, all libraries (default 2; "
                             "--throughput: all its rounds, default no limit)")
    timing.add_argument("--repeat", type=_positive_int, metavar="N",
                        help="calls per block for each library (default: from --budget)")
    timing.add_argument("--blocks", type=_positive_int, metavar="B",
                        help="alternating blocks per case (default 5; fewer for slow cases; "
                             "--throughput: rounds, default 3)")
    timing.add_argument("--pause", type=_non_negative_float, metavar="SECONDS",
                        help="sleep after each block, then until the process is idle "
                             "(default 0.025; 0: no pause)")
    timing.add_argument("--peak-size", type=_non_negative_int, metavar="N",
                        help="size of the GEMM measuring the peak (default 2048; 0: skip)")
    timing.add_argument("--no-onnx", action="store_true",
                        help="leave ONNX Runtime out even if it is installed")
    timing.add_argument("--no-openvino", action="store_true",
                        help="leave OpenVINO out even if it is installed")
    timing.add_argument("--seed", type=_seed, default=0,
                        help="seed of weights and inputs (0 to 2**63 - 1, default 0)")

    timing.add_argument("--streams", action=argparse.BooleanOptionalAction, default=None,
                        help="also time streams stepped on several Python threads at once "
                             "(default: with the default and full grids and 2+ threads)")

    memory = parser.add_argument_group("memory")
    memory.add_argument("--memory", action="store_true",
                        help="also measure each library's peak memory during one forward, in a "
                             "fresh process per case and library (Linux; a few seconds per "
                             "case)")

    modes = parser.add_argument_group(
        "other measurements (instead of the case grid)",
        "--threads, --blocks, --seed, --json, --quiet and, for --seq2seq, --precision and "
        "--throughput, --budget apply")
    modes.add_argument("--contention", action="store_true",
                       help="fastlstm and torch on a shared CPU: busy neighbour processes, "
                            "two processes, twice as many threads as CPUs (about a minute)")
    modes.add_argument("--neighbours", type=_non_negative_int, metavar="P",
                       help="busy-loop processes of --contention's first scenario (default 1)")
    modes.add_argument("--contention-seconds", type=_positive_float, metavar="SECONDS",
                       help="wall time of one --contention block (default 0.5)")
    modes.add_argument("--seq2seq", action="store_true",
                       help="a greedy seq2seq decode, torch against fastlstm + NumPy "
                            "(timed with --budget per batch size)")
    modes.add_argument("--seq2seq-batches", type=_batches, metavar="N,...",
                       help="batch sizes of --seq2seq (default 1,300)")
    modes.add_argument("--precision", action="store_true",
                       help="bfloat16 and int8 weights (fastlstm.quantize) beside float32, "
                            "torch's bfloat16 and its dynamic int8 and float16 LSTMs (timed "
                            "with --budget per case; under a minute on 2 cores)")
    modes.add_argument("--precision-cases", type=_precision_cases, metavar="NAME,...",
                       help="cases of --precision (default all: "
                            + ",".join(slug(c.name) for c in _precision.CASES) + ")")
    modes.add_argument("--throughput", action="store_true",
                       help="sequences/s of many variable-length sequences: forward_many, a "
                            "loop of single calls, padded batches, torch's packed batches and "
                            "fastlstm.dask on 2 local workers (all --sequences every round: "
                            "about 10 min on 2 cores; --budget limits it)")
    modes.add_argument("--sequences", type=_positive_int, metavar="N",
                       help=f"sequences of --throughput (default {_throughput.SEQUENCES})")

    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the results as JSON")
    out.add_argument("--markdown", metavar="PATH", help="write the results as Markdown")
    out.add_argument("--plot", metavar="PNG", help="plot the speedups (needs matplotlib)")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="no progress bar and no preamble (the table is still printed)")


# ---------------------------------------------------------------- one case
def _max_diff(result: Any, ref: Tuple[np.ndarray, ...]) -> float:
    """Max abs difference of a forward's ``(out, (h, c))`` (or a cell's ``(h, c)``)
    from ``ref``, (out, h, c) in float64."""
    return max(float(np.max(np.abs(a - b))) for a, b in zip(_as_float64(result), ref))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msg = text[-1] if text else ""
    for line in text:  # ONNX Runtime puts the useful part after "Status Message:"
        if "Status Message:" in line:
            msg = line.split("Status Message:", 1)[1]
    return f"{type(err).__name__}: {msg.strip()}"[:160]


#: A peer's timed call, its max abs diff from torch, its first call's time, or why not.
_PeerResult = Tuple[Optional[Callable[[], Any]], Optional[float], Optional[float],
                    Optional[str]]


def _ort_runner(module: Any, x: np.ndarray, case: Case, threads: int,
                ref: Tuple[np.ndarray, ...],
                hx: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> _PeerResult:
    """ONNX Runtime's runner for ``case``, its max abs diff, first-call time, or why not."""
    from fastlstm._bench.onnx_graph import OrtLSTM

    if case.proj_size:
        return None, None, None, "no projection in ONNX's LSTM"
    try:
        ort_lstm = OrtLSTM(module, threads, with_state=hx is not None)
        start = time.perf_counter()
        result = ort_lstm(x, hx)
        first = time.perf_counter() - start
    except Exception as err:  # e.g. "LSTM operator does not support double yet"
        if case.dtype == "float64" and "double" in str(err):
            return None, None, None, "ONNX Runtime's LSTM has no float64"
        return None, None, None, _one_line(err)
    diff = _max_diff(result, ref)
    if not diff <= TOLERANCE[case.dtype]:
        return None, diff, first, f"ONNX Runtime differs from torch by {diff:.1e}"
    feed, run = ort_lstm.feed(x, hx), ort_lstm.session.run
    return (lambda: run(None, feed)), diff, first, None


def _openvino_runner(module: Any, example: Tuple[Any, ...], x: np.ndarray, case: Case,
                     threads: int, ref: Tuple[np.ndarray, ...],
                     hx: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> _PeerResult:
    """OpenVINO's runner for ``case``, its max abs diff, first-call time, or why not.

    ``module`` (torch) is converted with ``example`` (its torch arguments) and compiled for
    the CPU plugin in float32 on ``threads`` (``precision.compile_openvino``); it is fed
    ``x`` and ``hx``, the arrays fastlstm gets.
    """
    openvino = importlib.import_module("openvino")
    feed = [x] if hx is None else [x, *hx]
    try:
        compiled = _precision.compile_openvino(openvino, module, example, threads, "f32")
        request = compiled.create_infer_request()
        start = time.perf_counter()
        result = request.infer(feed)
        first = time.perf_counter() - start
        out, h, c = (result[port] for port in compiled.outputs)
    except Exception as err:
        # Its converter expects no weights beyond the four of each layer and direction.
        if case.proj_size and "weights" in str(err):
            return None, None, None, "OpenVINO's converter has no LSTM projection"
        return None, None, None, _one_line(err)
    diff = _max_diff((out, (h, c)), ref)
    if not diff <= TOLERANCE[case.dtype]:
        return None, diff, first, f"OpenVINO differs from torch by {diff:.1e}"
    infer = request.infer
    # The inputs read in place, as every other library reads them (copying them into new
    # tensors made OpenVINO's one-step calls 15-45% slower); the outputs stay new arrays.
    return (lambda: infer(feed, share_inputs=True)), diff, first, None


#: Runner key of a packed case's padded forward (fastlstm on the same batch, padded).
_PADDED = "fastlstm padded"


def _as_float64(result: Any) -> Tuple[np.ndarray, ...]:
    """(out, h, c) as float64 arrays from a forward's ``(out, (h, c))`` (or a cell's
    ``(h, c)``, whose out is h); a packed output counts by its data."""
    if len(result) == 2 and isinstance(result[1], tuple):
        out, (h, c) = result
    else:
        h, c = result
        out = h
    out = getattr(out, "data", out) if not isinstance(out, np.ndarray) else out
    return tuple(np.asarray(a, dtype=np.float64) for a in (out, h, c))


class _Calls:
    """The calls a case times, on the same weights and inputs for every library.

    ``forward``: ``module(x)``; ``carried``: ``module(x, hx)`` with a random
    ``hx``; ``cell``: an ``LSTMCell`` step ``cell(x[0], hx)``; ``stream``: a
    ``Stream`` step over the same cell (torch: the ``LSTMCell`` step); ``packed``: the
    forward of a ``PackedSequence`` (torch's for torch, fastlstm's for
    fastlstm), and ``padded_call``, fastlstm's forward of the same batch padded.
    """

    def __init__(self, case: Case, torch: Any, seed: int) -> None:
        self.case, self.torch = case, torch
        tdtype = getattr(torch, case.dtype)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        if case.kind in ("cell", "stream"):
            self.module = torch.nn.LSTMCell(case.I, case.H, dtype=tdtype).eval()
        else:
            self.module = torch.nn.LSTM(**case.torch_kwargs(), dtype=tdtype).eval()
        self.x = rng.standard_normal((case.L, case.N, case.I)).astype(case.dtype)
        self.hx: Optional[Tuple[np.ndarray, np.ndarray]] = None
        if case.kind in ("carried", "cell", "stream"):
            states = () if case.kind != "carried" else (case.layers * case.directions,)
            self.hx = (rng.standard_normal(states + (case.N, case.proj_size or case.H)),
                       rng.standard_normal(states + (case.N, case.H)))
            self.hx = (self.hx[0].astype(case.dtype), self.hx[1].astype(case.dtype))
        self.padded_call: Optional[Callable[[], Any]] = None
        self._torch_in: Any = torch.from_numpy(self.x)
        self._fast_in: Any = self.x
        if case.kind in ("cell", "stream"):
            self._torch_in = self._torch_in[0]
            self._fast_in = self.x[0]
        elif case.kind == "packed":
            lengths = np.array(case.lengths())
            order = rng.permutation(case.N)
            self._torch_in = torch.nn.utils.rnn.pack_padded_sequence(
                self._torch_in, torch.from_numpy(lengths[order]), enforce_sorted=False)
            self._fast_in = fastlstm.pack_padded_sequence(self.x, lengths[order],
                                                          enforce_sorted=False)
        self._torch_hx = (None if self.hx is None
                          else tuple(torch.from_numpy(a) for a in self.hx))
        self.fast: Any = None
        self.stream: Any = None

    def torch_call(self) -> Any:
        return self.module(self._torch_in, self._torch_hx)

    def torch_args(self) -> Tuple[Any, ...]:
        """The arguments of ``torch_call`` (``(x,)`` or ``(x, (h, c))``), as a converter's
        example input."""
        return (self._torch_in,) if self._torch_hx is None else (self._torch_in,
                                                                  self._torch_hx)

    def build_fastlstm(self) -> None:
        cls = fastlstm.LSTMCell if self.case.kind in ("cell", "stream") else fastlstm.LSTM
        self.fast = cls.from_torch(self.module)
        if self.case.kind == "stream":
            self.stream = fastlstm.Stream(self.fast, self.case.N)
        if self.case.kind == "packed":
            self.padded_call = lambda: self.fast(self.x)

    def fast_call(self) -> Any:
        if self.stream is not None:
            return self.stream.step(self._fast_in)
        return self.fast(self._fast_in, self.hx)

    def fast_check(self) -> Any:
        """``fast_call``'s result to compare with torch's: a stream is first set
        to the state torch's cell starts from, and gives its (h, c)."""
        if self.stream is None:
            return self.fast_call()
        assert self.hx is not None
        self.stream.reset((self.hx[0][None], self.hx[1][None]))
        h = self.stream.step(self._fast_in).copy()
        return h, self.stream.c[0].copy()

    def padded_ref(self) -> Tuple[np.ndarray, ...]:
        """torch's padded forward, the reference of ``padded_call``."""
        return _as_float64(self.module(self.torch.from_numpy(self.x)))


def run_case(case: Case, torch: Any, threads: int, args: argparse.Namespace, *,
             use_ort: bool, use_openvino: bool = False,
             peak: Optional[Dict[str, Dict[str, float]]] = None,
             on_progress: Optional[Callable[[float, str], None]] = None) -> Dict[str, Any]:
    """Check ``case`` against torch, then time it.

    Parameters
    ----------
    case : Case
    torch : module
        The torch module (the reference).
    threads : int
        Threads of every library.
    args : argparse.Namespace
        ``budget``, ``blocks``, ``repeat``, ``pause`` and ``seed``; and
        ``memory`` (optional, default False): also measure the peak memory of
        one forward of each library timed (see :func:`measure_memory`).
    use_ort : bool
        Time ONNX Runtime too.
    use_openvino : bool, default=False
        Time OpenVINO too (float32; ``import openvino`` must work), on the forward and
        carried cases of float32.
    peak : dict, optional
        From :func:`~fastlstm._bench.timing.measure_peak`.
    on_progress : callable, optional
        Called as ``on_progress(fraction_done, stage)``.

    Returns
    -------
    dict
        The case's record, as written to the JSON (see benchmarks/README.md).
    """
    progress = on_progress or (lambda frac, stage: None)
    record: Dict[str, Any] = {
        **case.as_dict(), "slug": slug(case.name), "shape": case.shape, "extra": case.extra,
        "flops": case.flops, "status": "ok", "note": None,
        "tolerance": TOLERANCE[case.dtype], "check_passed": False,
        "max_abs_diff": {lib: None for lib in LIBS},
        "time_s": {lib: None for lib in LIBS}, "block_s": {lib: None for lib in LIBS},
        "reps_per_block": {lib: None for lib in LIBS}, "gflops": {lib: None for lib in LIBS},
        "peak_fraction": None, "speedup_vs_torch": None, "speedup_vs_onnxruntime": None,
        "onnxruntime_note": None if use_ort else "onnxruntime not used",
        "speedup_vs_openvino": None,
        "openvino_note": None if use_openvino else "openvino not used",
        "peak_memory_mib": {lib: None for lib in MEMORY_LIBS},
        "peak_memory_total_mib": {lib: None for lib in MEMORY_LIBS},
        "peak_memory_note": None, "padded_time_s": None, "speedup_vs_padded": None,
        "team_windows": None, "contended_windows": None,
    }
    progress(0.0, "checking")
    calls = _Calls(case, torch, args.seed)
    first: Dict[str, float] = {}
    with torch.inference_mode():
        start = time.perf_counter()
        ref = _as_float64(calls.torch_call())
        first["torch"] = time.perf_counter() - start
        try:
            calls.build_fastlstm()
            start = time.perf_counter()
            diff = _max_diff(calls.fast_check(), ref)
            first["fastlstm"] = time.perf_counter() - start
            if calls.padded_call is not None:
                padded_diff = _max_diff(calls.padded_call(), calls.padded_ref())
                diff = max(diff, padded_diff)
        except Exception as err:
            record.update(status="error", note=f"fastlstm failed: {_one_line(err)}")
            return record
        record["max_abs_diff"]["fastlstm"] = diff
        if not diff <= TOLERANCE[case.dtype]:
            record.update(status="check_failed",
                          note=f"NOT TIMED: fastlstm differs from torch by {diff:.1e} "
                               f"(tolerance {TOLERANCE[case.dtype]:.0e})")
            return record
        record["check_passed"] = True

        runners: Dict[str, Callable[[], Any]] = {"fastlstm": calls.fast_call,
                                                 "torch": calls.torch_call}
        if calls.padded_call is not None:
            runners[_PADDED] = calls.padded_call
        module, x = calls.module, calls.x
        if use_ort and case.kind in ("cell", "stream", "packed"):
            record["onnxruntime_note"] = f"not compared for {case.kind} cases"
        elif use_ort:
            run_ort, ort_diff, ort_first, note = _ort_runner(module, x, case, threads, ref,
                                                             calls.hx)
            record["max_abs_diff"]["onnxruntime"] = ort_diff
            record["onnxruntime_note"] = note
            if run_ort is not None and ort_first is not None:
                runners["onnxruntime"] = run_ort
                first["onnxruntime"] = ort_first
        if use_openvino and case.kind in ("cell", "stream", "packed"):
            record["openvino_note"] = f"not compared for {case.kind} cases"
        elif use_openvino and case.dtype != "float32":
            # Its CPU plugin would run float64 in float32 (its precision hint is f32).
            record["openvino_note"] = f"not compared for {case.dtype} cases"
        elif use_openvino:
            run_ov, ov_diff, ov_first, note = _openvino_runner(
                module, calls.torch_args(), x, case, threads, ref, calls.hx)
            record["max_abs_diff"]["openvino"] = ov_diff
            record["openvino_note"] = note
            if run_ov is not None and ov_first is not None:
                runners["openvino"] = run_ov
                first["openvino"] = ov_first

        memory = bool(getattr(args, "memory", False))
        timed_part = 0.75 if memory else 0.95
        progress(0.05, "timing")
        team0 = kernels.team_state()
        timings = time_interleaved(
            runners, budget=args.budget, blocks=args.blocks, repeat=args.repeat,
            pause=args.pause, first_call_s=first,
            on_block=lambda done, total: progress(0.05 + timed_part * done / total, "timing"))
        # The windows in which fastlstm's dynamic threads judged the CPUs contended (each
        # then runs fewer threads for 50 ms or more): a slow case on a shared machine.
        team1 = kernels.team_state()
        record["team_windows"] = team1["windows"] - team0["windows"]
        record["contended_windows"] = team1["contended_windows"] - team0["contended_windows"]

    if memory and case.kind != "forward":
        record["peak_memory_note"] = "measured for forward cases only"
    elif memory:
        # After the timing, so that the child processes do not disturb it; the child
        # measures fastlstm, torch and ONNX Runtime only.
        libs = [lib for lib in runners if lib in MEMORY_LIBS]
        timeout = 120.0 + 20.0 * max(first.values())
        measure_memory(record, case, libs, threads, args.seed, timeout=timeout,
                       on_lib=lambda k, lib: progress(0.8 + 0.2 * k / len(libs),
                                                      f"peak memory ({lib})"))

    padded = timings.pop(_PADDED, None)
    if padded is not None:
        record["padded_time_s"] = padded.median_s
        record["speedup_vs_padded"] = padded.median_s / timings["fastlstm"].median_s
    for lib, timing in timings.items():
        record["time_s"][lib] = timing.median_s
        record["block_s"][lib] = timing.block_s
        record["reps_per_block"][lib] = timing.reps
        record["gflops"][lib] = case.flops / timing.median_s / 1e9
    t = record["time_s"]
    record["speedup_vs_torch"] = t["torch"] / t["fastlstm"]
    if t["onnxruntime"] is not None:
        record["speedup_vs_onnxruntime"] = t["onnxruntime"] / t["fastlstm"]
    if t["openvino"] is not None:
        record["speedup_vs_openvino"] = t["openvino"] / t["fastlstm"]
    if peak and case.dtype in peak:
        record["peak_fraction"] = record["gflops"]["fastlstm"] / peak[case.dtype]["best"]
    return record


def nominal_note(nominal: Optional[Dict[str, Any]]) -> str:
    """``"; nominal FMA peak float32 332.8 GFLOP/s at 2.60 GHz"``, or "" if unknown."""
    if nominal is None:
        return ""
    return (f"; nominal FMA peak float32 {nominal['gflops']['float32']:.1f} GFLOP/s at "
            f"{nominal['ghz']:.2f} GHz ({nominal['clock_source']})")


def update_reference(peak: Dict[str, Dict[str, Any]], again: Dict[str, Dict[str, float]],
                     records: List[Dict[str, Any]]) -> None:
    """Make the 'peak' reference of each dtype the best of both GEMM measurements and of
    every library's rate in every case (a peak that a case beats is no peak), and compute
    each case's fraction of it again."""
    for dtype, found in peak.items():
        for name, rate in again.get(dtype, {}).items():
            found[name] = max(found.get(name, 0.0), rate)
        rates = [(rate, r["name"]) for r in records if r["dtype"] == dtype
                 for rate in r["gflops"].values() if rate is not None]
        best_case = max(rates, default=(0.0, None))
        if best_case[0] > found["best"]:
            found["best"], found["raised_by"] = best_case
    for record in records:
        rate = record["gflops"].get("fastlstm")
        if record["dtype"] in peak and rate is not None:
            record["peak_fraction"] = rate / peak[record["dtype"]]["best"]


def measure_memory(record: Dict[str, Any], case: Case, libs: List[str], threads: int,
                   seed: int, *, timeout: float = 600.0,
                   on_lib: Optional[Callable[[int, str], None]] = None) -> None:
    """Fill ``record``'s ``peak_memory_*`` fields for ``libs``, one fresh process each.

    See :mod:`fastlstm._bench.memory`.  A library whose measurement fails
    keeps null, and the reason goes to ``peak_memory_note``.
    """
    notes = []
    for k, lib in enumerate(libs):
        if on_lib is not None:
            on_lib(k, lib)
        if not _bench_memory.AVAILABLE:
            notes.append(_bench_memory.UNAVAILABLE_NOTE)
            break
        result = _bench_memory.measure_in_subprocess(lib, case.as_dict(), threads, seed,
                                                     timeout=timeout)
        record["peak_memory_mib"][lib] = result.get("peak_mib")
        record["peak_memory_total_mib"][lib] = result.get("total_mib")
        if result.get("error"):
            notes.append(f"{lib}: {result['error']}")
        elif result.get("peak_mib") is None:
            notes.append(f"{lib}: hidden by an earlier peak ({result.get('method')})")
    record["peak_memory_note"] = "; ".join(notes) or None


# -------------------------------------------------------------- the command
def _chosen_cases(args: argparse.Namespace) -> Tuple[List[Case], str]:
    cases: List[Case] = []
    for group in args.cases or []:
        cases += [c for c in group if c not in cases]
    cases += [c for c in args.shape or [] if c not in cases]
    if cases:
        return cases, "custom"
    return (list(FULL_GRID), "full") if args.full else (list(DEFAULT_GRID), "default")


def _print_list() -> int:
    rows = [("name", "N,L,I,H", "extra", "grid")] + [
        (slug(case.name), case.shape, case.extra,
         "default" if case in DEFAULT_GRID else "full") for case in FULL_GRID]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(" ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " " + row[3])
    return 0


def _check_output_path(option: str, path: Optional[str]) -> None:
    """Refuse, before a run of minutes, an output that could not be written after it."""
    if path is None:
        return
    if not path:
        raise CLIError(f"fastlstm bench: error: {option} needs a path", 2)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"fastlstm bench: error: {option} {path}: no such directory {parent}", 2)
    if os.path.isdir(path):
        raise CLIError(f"fastlstm bench: error: {option} {path}: is a directory", 2)
    if os.path.exists(path) and not os.path.isfile(path):
        raise CLIError(f"fastlstm bench: error: {option} {path}: not a regular file", 2)
    # The file the write will reach: a symbolic link's target (removing a link made
    # dangling would leave the empty target and replace the link by the report).
    target = os.path.realpath(path)
    existed = os.path.exists(target)
    try:  # opened for appending: an existing file is left as it is
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise CLIError(file_error("bench", path, exc, output=True), 2) from None
    if not existed:
        os.remove(target)


def _check_outputs(*paths: Optional[str]) -> None:
    """``_check_output_path`` of each of --json, --markdown and --plot given, and no two
    of them the same file."""
    named = [(option, path) for option, path in zip(("--json", "--markdown", "--plot"), paths)
             if path is not None]
    for option, path in named:
        _check_output_path(option, path)
    seen: Dict[str, str] = {}
    for option, path in named:
        real = os.path.realpath(path)
        if real in seen:
            raise CLIError(f"fastlstm bench: error: {seen[real]} and {option} name the same "
                           f"file {path}", 2)
        seen[real] = option


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise CLIError("fastlstm bench: error: torch is not installed; the benchmark needs it "
                       "as the reference (pip install torch)", 2) from None
    return torch


def _ort_available() -> Tuple[bool, Optional[str]]:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return False, f"{err.name or 'onnxruntime'} is not installed"
    except Exception as err:  # a broken install: left out, as OpenVINO is
        return False, f"onnxruntime cannot be imported: {type(err).__name__}: {err}"
    return True, None


def _openvino_available() -> Tuple[bool, Optional[str]]:
    openvino, why = _precision.import_openvino()
    if openvino is not None:
        return True, None
    return False, ("openvino is not installed" if why == "not installed"
                   else f"openvino cannot be imported: {why}")


def _optional_torch() -> Any:
    try:
        import torch
    except Exception:  # not installed or broken: --contention measures fastlstm alone
        return None
    return torch


#: Options of the case grid, refused with the other modes (they would do nothing; None and
#: False: not given).
_GRID_OPTIONS = (("cases", "--cases"), ("shape", "--shape"), ("full", "--full"),
                 ("memory", "--memory"), ("markdown", "--markdown"), ("plot", "--plot"),
                 ("repeat", "--repeat"), ("pause", "--pause"), ("peak_size", "--peak-size"),
                 ("no_onnx", "--no-onnx"))
#: Options of one mode (attribute, option, mode, default), refused without that mode.
_MODE_OPTIONS = (("neighbours", "--neighbours", "contention", 1),
                 ("contention_seconds", "--contention-seconds", "contention", 0.5),
                 ("seq2seq_batches", "--seq2seq-batches", "seq2seq", (1, 300)),
                 ("precision_cases", "--precision-cases", "precision", None),
                 ("sequences", "--sequences", "throughput", _throughput.SEQUENCES))
#: The modes run instead of the case grid, in the order they run.
_MODES = ("contention", "seq2seq", "precision", "throughput")


def _mode_defaults(args: argparse.Namespace) -> None:
    """Refuse an option of a mode not asked for (it would do nothing), then fill in the
    defaults of the modes' options."""
    for attr, option, mode, default in _MODE_OPTIONS:
        if getattr(args, attr) is None:
            setattr(args, attr, default)
        elif not getattr(args, mode):
            raise CLIError(f"fastlstm bench: error: {option} needs --{mode}", 2)


def _run_modes(args: argparse.Namespace) -> int:
    """``--contention``, ``--seq2seq`` and/or ``--precision``: their tables, and the JSON
    with ``--json``."""
    mode = " and ".join(f"--{m}" for m in _MODES if getattr(args, m))
    given = [option for attr, option in _GRID_OPTIONS  # 0 given is given: not "in (None, False)"
             if getattr(args, attr) is not None and getattr(args, attr) is not False]
    if args.streams is not None:  # --streams and --no-streams alike
        given.append("--streams" if args.streams else "--no-streams")
    if given:
        raise CLIError(f"fastlstm bench: error: {given[0]} is for the case grid, not for "
                       f"{mode}", 2)
    if args.no_openvino and not args.precision:
        raise CLIError("fastlstm bench: error: --no-openvino is for the case grid and "
                       f"--precision, not for {mode}", 2)
    if args.contention and not (args.seq2seq or args.precision or args.throughput) and \
            args.throughput_budget is not None:
        raise CLIError("fastlstm bench: error: --budget is not for --contention (its blocks "
                       "last --contention-seconds)", 2)
    _check_outputs(args.json)
    # The seq2seq, precision and throughput models are torch's; --contention measures fastlstm alone
    # without torch.
    torch = (_import_torch() if args.seq2seq or args.precision or args.throughput
             else _optional_torch())
    threads = _bench_threads(args.threads)
    machine = machine_info(threads)
    started = time.perf_counter()
    progress = Progress(1, enabled=not args.quiet and sys.stderr.isatty())
    if not args.quiet:
        print(f"fastlstm {fastlstm.__version__} vs "
              + (f"torch {torch.__version__}" if torch is not None else "torch n/a (not "
                 "installed: fastlstm alone)")
              + f"; {machine['cpu']}, SIMD {machine['simd']}, {machine['usable_cpus']} "
              f"usable CPUs, {threads} threads", flush=True)
    results: Dict[str, Optional[Dict[str, Any]]] = {m: None for m in _MODES}
    if args.contention:
        found = _contention.measure_contention(
            torch, neighbours=args.neighbours, seconds=args.contention_seconds,
            blocks=args.blocks, seed=args.seed, threads=threads, on_progress=progress.show)
        progress.clear()
        for line in (_contention.header_lines(found, machine["cpu"])
                     + _contention.ratio_table(found["rows"])):
            print(line, flush=True)
        results["contention"] = found
    if args.seq2seq:
        found = _seq2seq.measure_seq2seq(
            torch, batches=args.seq2seq_batches, blocks=args.blocks, seed=args.seed,
            threads=threads, budget=args.budget, on_progress=progress.show)
        progress.clear()
        if args.contention:
            print()
        for line in [_seq2seq.header_line(found)] + _contention.ratio_table(found["rows"]):
            print(line, flush=True)
        results["seq2seq"] = found
    if args.precision:
        found = _precision.measure_precision(
            torch, cases=args.precision_cases, blocks=args.blocks, seed=args.seed,
            threads=threads, budget=args.budget, on_progress=progress.show,
            openvino=not args.no_openvino)
        progress.clear()
        if args.contention or args.seq2seq:
            print()
        for line in (_precision.header_lines(found, machine["cpu"], machine["cpu_flags"])
                     + _precision.precision_table(found)
                     + [_precision.summary_line(found), _precision.int8_line(found)]):
            print(line, flush=True)
        results["precision"] = found
    if args.throughput:
        found = _throughput.measure_throughput(
            torch, sequences=args.sequences, budget=args.throughput_budget,
            rounds=args.throughput_rounds, seed=args.seed, threads=threads,
            on_progress=progress.show)
        progress.clear()
        if args.contention or args.seq2seq or args.precision:
            print()
        for line in (_throughput.header_lines(found, machine["cpu"])
                     + _throughput.throughput_table(found) + [_throughput.summary_line(found)]):
            print(line, flush=True)
        results["throughput"] = found
    errors = [f"{r['scenario']} {r['library']} {r['case']}"
              for found in (results["contention"], results["seq2seq"]) if found is not None
              for r in found["rows"] if r["error"] is not None]
    if results["precision"] is not None:
        errors += [f"precision {failed}" for failed in results["precision"]["failed"]]
    if results["throughput"] is not None:
        errors += [f"throughput {failed}" for failed in results["throughput"]["failed"]]
    if args.json:
        write_json(args.json, {
            "schema": 1, "created": now_iso(),
            "command": ["fastlstm", *getattr(args, "_argv", ["bench"])],
            "mode": [m for m in results if results[m] is not None],
            "machine": machine, "versions": versions(),
            "settings": {"threads": threads, "blocks": args.blocks, "seed": args.seed,
                         "neighbours": args.neighbours,
                         "contention_seconds": args.contention_seconds,
                         "budget_s": args.budget, "seq2seq_batches": list(args.seq2seq_batches),
                         "precision_cases": (None if args.precision_cases is None
                                             else list(args.precision_cases)),
                         "sequences": args.sequences,
                         "throughput_rounds": args.throughput_rounds,
                         "throughput_budget_s": args.throughput_budget},
            **results, "failed": errors, "wall_s": time.perf_counter() - started})
    if not args.quiet:
        print(f"done in {time.perf_counter() - started:.1f} s"
              + (f"; wrote {args.json}" if args.json else ""), file=sys.stderr)
    if errors:
        print(f"fastlstm bench: {len(errors)} measurement(s) failed: {'; '.join(errors)}",
              file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``fastlstm bench`` with parsed ``args``; returns the exit status."""
    if args.list:
        return _print_list()
    _mode_defaults(args)
    # --throughput runs every sequence in 3 rounds unless --budget or --blocks says
    # otherwise; the others keep their defaults.
    args.throughput_budget = args.budget
    args.throughput_rounds = args.blocks or _throughput.ROUNDS
    args.budget = 2.0 if args.budget is None else args.budget
    args.blocks = 5 if args.blocks is None else args.blocks
    if any(getattr(args, m) for m in _MODES):
        return _run_modes(args)
    _check_outputs(args.json, args.markdown, args.plot)
    args.pause = 0.025 if args.pause is None else args.pause
    args.peak_size = 2048 if args.peak_size is None else args.peak_size
    if args.plot and not matplotlib_available():
        raise CLIError("fastlstm bench: error: --plot needs matplotlib, which is not installed "
                       "(pip install matplotlib)", 2)
    torch = _import_torch()
    use_ort, ort_missing = (False, "disabled by --no-onnx") if args.no_onnx else _ort_available()
    use_ov, ov_missing = ((False, "disabled by --no-openvino") if args.no_openvino
                          else _openvino_available())

    cases, grid = _chosen_cases(args)
    threads = _bench_threads(args.threads)
    saved_fast = getattr(_threads, "_num_threads", None)
    saved_torch = torch.get_num_threads()
    started = time.perf_counter()
    interactive = not args.quiet and sys.stderr.isatty()
    try:
        fastlstm.set_num_threads(threads)
        torch.set_num_threads(threads)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*projections is not supported.*")
            return _run(args, torch, cases, grid, threads, (use_ort, ort_missing),
                        (use_ov, ov_missing), started, interactive)
    finally:
        fastlstm.set_num_threads(saved_fast)
        torch.set_num_threads(saved_torch)


def _peers_line(torch: Any, use_ort: bool, ort_missing: Optional[str], use_ov: bool,
                ov_missing: Optional[str]) -> str:
    """``torch 2.13.0, onnxruntime 1.22.0 and openvino 2026.4.1``, with ``(... n/a: why)``
    for a peer left out."""
    timed = [f"torch {torch.__version__}"]
    missing = []
    if use_ort:
        timed.append(f"onnxruntime {sys.modules['onnxruntime'].__version__}")
    else:
        missing.append(f"(ONNX Runtime n/a: {ort_missing})")
    if use_ov:
        # Its version goes on with the build and branch: the release number is enough here.
        version = str(getattr(sys.modules.get("openvino"), "__version__", "?"))
        timed.append(f"openvino {version.split('-')[0]}")
    else:
        missing.append(f"(OpenVINO n/a: {ov_missing})")
    names = ", ".join(timed[:-1]) + " and " + timed[-1] if len(timed) > 1 else timed[0]
    return " ".join([names, *missing])


def _run(args: argparse.Namespace, torch: Any, cases: List[Case], grid: str, threads: int,
         ort: Tuple[bool, Optional[str]], openvino: Tuple[bool, Optional[str]],
         started: float, interactive: bool) -> int:
    (use_ort, ort_missing), (use_ov, ov_missing) = ort, openvino
    machine = machine_info(threads)
    progress = Progress(len(cases), enabled=interactive)
    if not args.quiet:
        print(f"fastlstm {fastlstm.__version__} vs "
              + _peers_line(torch, use_ort, ort_missing, use_ov, ov_missing)
              + f"; {machine['cpu']}, SIMD {machine['simd']}, {threads} threads",
              flush=True)
    peak = None
    if args.peak_size:
        progress.show(0, f"measuring the GEMM peak ({args.peak_size}^3)")
        peak = measure_peak(threads, size=args.peak_size, onnxruntime=use_ort)
        progress.clear()
        if not args.quiet:
            print("peak: the best GEMM measured here (a reference, not a bound): " + ", ".join(
                f"{dtype} {found['best']:.1f} GFLOP/s" for dtype, found in peak.items())
                + nominal_note(machine.get("nominal_fma_peak")), flush=True)

    table = Table(sys.stdout, cases, memory=args.memory)
    table.header()
    records = []
    for k, case in enumerate(cases):
        def on_progress(frac: float, stage: str, k: int = k, case: Case = case) -> None:
            progress.show(k + frac, f"{k + 1}/{len(cases)} {case.name}: {stage}")

        record = run_case(case, torch, threads, args, use_ort=use_ort, use_openvino=use_ov,
                          peak=peak, on_progress=on_progress)
        if not use_ort:
            record["onnxruntime_note"] = ort_missing
        if not use_ov:
            record["openvino_note"] = ov_missing
        records.append(record)
        progress.clear()
        table.row(record)
    progress.clear()
    if peak is not None:
        progress.show(len(cases), f"measuring the GEMM peak again ({args.peak_size}^3)")
        before = {dtype: found["best"] for dtype, found in peak.items()}
        update_reference(peak, measure_peak(threads, size=args.peak_size, onnxruntime=use_ort),
                         records)
        progress.clear()
        moved = [f"{dtype} {found['best']:.1f} GFLOP/s" + (
            f" (the rate of case {found['raised_by']})" if found.get("raised_by") else "")
            for dtype, found in peak.items() if found["best"] > 1.01 * before[dtype]]
        if moved and not args.quiet:
            print("peak reference after the cases: " + ", ".join(moved) + "; the rows above "
                  "used the first measurement, the JSON and Markdown reports use this one",
                  flush=True)

    failed = [r["name"] for r in records if r["status"] != "ok"]
    summary = {
        "geomean_speedup_vs_torch": geomean(r["speedup_vs_torch"] for r in records),
        "geomean_speedup_vs_onnxruntime": geomean(
            r["speedup_vs_onnxruntime"] for r in records),
        "geomean_speedup_vs_openvino": geomean(r["speedup_vs_openvino"] for r in records),
        "cases": len(records),
        "failed": failed,
        "peak_memory_le_torch": None,
        "peak_memory_compared": None,
        "wall_s": None,
    }
    if args.memory:
        pairs = [(r["peak_memory_mib"]["fastlstm"], r["peak_memory_mib"]["torch"])
                 for r in records]
        pairs = [(f, t) for f, t in pairs if f is not None and t is not None]
        summary["peak_memory_le_torch"] = sum(f <= t for f, t in pairs)
        summary["peak_memory_compared"] = len(pairs)
    gm_t, gm_o = summary["geomean_speedup_vs_torch"], summary["geomean_speedup_vs_onnxruntime"]
    gm_v = summary["geomean_speedup_vs_openvino"]
    for text in padded_lines(records) + contention_lines(records):
        print(text, flush=True)
    streams = None
    if args.streams or (args.streams is None and grid != "custom" and threads >= 2):
        progress.show(len(cases), f"streams on {threads} Python threads")
        streams = measure_stream_scaling(torch, max(2, threads), seed=args.seed)
        progress.clear()
        print(scaling_line(streams), flush=True)
    print(f"\ngeometric mean speedup: "
          f"{'n/a' if gm_t is None else f'{gm_t:.2f}x'} vs torch, "
          f"{'n/a' if gm_o is None else f'{gm_o:.2f}x'} vs ONNX Runtime, "
          f"{'n/a' if gm_v is None else f'{gm_v:.2f}x'} vs OpenVINO", flush=True)
    line = memory_summary(summary) if args.memory else None
    if line is not None:
        print(line + (
            "" if _bench_memory.AVAILABLE else f" ({_bench_memory.UNAVAILABLE_NOTE})"),
            flush=True)
    summary["wall_s"] = time.perf_counter() - started

    report = {
        "schema": 1,
        "created": now_iso(),
        "command": ["fastlstm", *getattr(args, "_argv", ["bench"])],
        "grid": grid,
        "machine": machine,
        "versions": versions(),
        "settings": {"threads": threads, "budget_s": args.budget, "blocks": args.blocks,
                     "repeat": args.repeat, "pause_s": args.pause, "seed": args.seed,
                     "peak_size": args.peak_size, "peak_reps": PEAK_REPS,
                     "peak_warmup": PEAK_WARMUP,
                     "onnxruntime": use_ort, "onnxruntime_note": ort_missing,
                     "openvino": use_ov, "openvino_note": ov_missing,
                     "tolerance": TOLERANCE, "memory": args.memory,
                     "memory_method": _bench_memory.METHOD if args.memory else None},
        "flops_formula": FLOPS_FORMULA,
        "peak_gflops": peak,
        "cases": records,
        "summary": summary,
        "stream_scaling": streams,
    }
    if args.json:
        write_json(args.json, report)
    if args.markdown:
        write_markdown(args.markdown, report)
    if args.plot:
        write_plot(args.plot, report)
    if not args.quiet:
        written = [p for p in (args.json, args.markdown, args.plot) if p]
        print(f"done in {summary['wall_s']:.1f} s" + (
            f"; wrote {', '.join(written)}" if written else ""), file=sys.stderr)
    if failed:
        print(f"fastlstm bench: {len(failed)} case(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0
