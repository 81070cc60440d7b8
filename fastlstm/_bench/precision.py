"""``fastlstm bench --precision``: reduced-precision inference beside float32 and the peers.

Each case (:data:`CASES`) builds one ``torch.nn.LSTM`` (input size = hidden size,
weights from a seeded torch generator) and runs it as these variants, all in
this process, on the same threads and the same inputs:

* ``fastlstm f32``: ``fastlstm.LSTM.from_torch(model)``;
* ``fastlstm bf16``: ``fastlstm.quantize(that, "bfloat16")``: weights stored in
  bfloat16, activations float32 (docs/precision.md);
* ``fastlstm int8``: ``fastlstm.quantize(that, "int8")``: symmetric int8 weights
  with one float32 scale per row, activations quantized per row as each product
  reads them;
* ``torch f32``: the model itself, the reference of every error;
* ``torch bf16``: a copy ``.to(torch.bfloat16)``, given the input (and the
  state) in bfloat16; its output is converted back to float32 for the error;
* ``torch int8 dynamic`` and ``torch f16 dynamic``:
  ``torch.ao.quantization.quantize_dynamic`` with ``dtype=torch.qint8`` and
  ``torch.float16``.  It swaps the submodules of the module it is given, so the
  LSTM is passed inside a holder module (a bare LSTM would come back unchanged);
* ``openvino bf16``, only where ``import openvino`` works: the model converted
  by ``openvino.convert_model`` and compiled for the CPU with the bfloat16
  inference precision hint.

The first call of each variant gives its error against torch float32: the max
abs difference of the output divided by the max abs of torch's output.  A
fastlstm variant whose error exceeds :data:`TOLERANCE` is not timed and counts
as failed; a variant that cannot be built or run is n/a with the reason (a peer
that cannot run is not a failure).  The others are timed in alternating blocks
(``timing.time_interleaved``, ``budget`` seconds of timed calls per case; a
variant whose call takes longer than its share runs once per block, and the
blocks drop to three), and each time is the median over the blocks.

Every variant gets three ratios, speedups: the fastlstm float32 time over its
time, the torch bfloat16 time over its time and the torch dynamic int8 time over
its time.  :func:`targets_for` gives the issue's targets for the CPU's bfloat16
level: on the one-step case fastlstm bf16 >= 1.5x and fastlstm int8 >= 2x
fastlstm f32; on the batched cases fastlstm bf16 >= 1x torch bf16 (with AMX, and
on CPUs without bfloat16 instructions), or >= 1.8x fastlstm f32 where VDPBF16PS
is the best level (AVX512-BF16 without AMX).  A missed target is a finding, not
a failure.
fastlstm int8 against torch's dynamic int8 is reported on every case
(:func:`int8_line`), not a target.
"""

from __future__ import annotations

import copy
import importlib
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

import fastlstm
from fastlstm import _threads
from fastlstm._bench.cases import Case, slug
from fastlstm._bench.report import fmt_time
from fastlstm._bench.timing import time_interleaved
from fastlstm._ext import kernels
from fastlstm.cli import one_line

__all__ = ["CASES", "FAST_BF16", "FAST_F32", "FAST_INT8", "OPENVINO", "TARGETS",
           "TARGETS_DP", "TOLERANCE", "TORCH_BF16", "TORCH_F16", "TORCH_F32", "TORCH_INT8",
           "VARIANTS", "compile_openvino", "header_lines", "import_openvino", "int8_line",
           "measure_precision", "precision_table", "select_cases", "summary_line",
           "targets_for"]

FAST_F32, FAST_BF16, FAST_INT8 = "fastlstm f32", "fastlstm bf16", "fastlstm int8"
TORCH_F32, TORCH_BF16 = "torch f32", "torch bf16"
TORCH_INT8, TORCH_F16 = "torch int8 dynamic", "torch f16 dynamic"
OPENVINO = "openvino bf16"
#: The variants of every case, in the table's order (OpenVINO's is added when installed).
VARIANTS = (FAST_F32, FAST_BF16, FAST_INT8, TORCH_F32, TORCH_BF16, TORCH_INT8, TORCH_F16)

#: The cases: a one-step call with a carried state, then whole sequences from zero state.
CASES: List[Case] = [
    Case("one step", 1, 1, 256, 256, layers=2, kind="carried"),
    Case("single sequence", 1, 100, 256, 256),
    Case("small batch", 16, 100, 256, 256),
    Case("batch", 64, 100, 512, 512),
    Case("large", 64, 200, 1024, 1024),
]

#: The issue's targets, by case name: a tuple of (variant, against, bound), each for the
#: speedup ``time of against / time of variant >= bound`` (at most one per variant; the
#: first is the case's ``target`` in the results, the one older readers know).
TARGETS: Dict[str, Tuple[Tuple[str, str, float], ...]] = {
    "one step": ((FAST_BF16, FAST_F32, 1.5), (FAST_INT8, FAST_F32, 2.0)),
    "small batch": ((FAST_BF16, TORCH_BF16, 1.0),),
    "batch": ((FAST_BF16, TORCH_BF16, 1.0),),
    "large": ((FAST_BF16, TORCH_BF16, 1.0),),
}
#: The targets where AVX512-BF16 is the best level (no AMX): the batched cases
#: against fastlstm float32 instead, as the issue sets them for such CPUs.
TARGETS_DP: Dict[str, Tuple[Tuple[str, str, float], ...]] = {
    **TARGETS,
    **{name: ((FAST_BF16, FAST_F32, 1.8),) for name in ("small batch", "batch", "large")}}


def targets_for(bf16_level: str) -> Dict[str, Tuple[Tuple[str, str, float], ...]]:
    """The targets by case name for a CPU whose best bfloat16 level is ``bf16_level``."""
    return TARGETS_DP if bf16_level == "avx512-bf16" else TARGETS

#: Largest error against torch float32 (relative to its largest output) of a fastlstm
#: variant that is timed: float32 must agree with torch; bfloat16 is ~5e-3 and int8 ~2e-2
#: (torch's dynamic int8: ~5e-2) on the cases (docs/precision.md).
TOLERANCE = {FAST_F32: 1e-4, FAST_BF16: 5e-2, FAST_INT8: 1e-1}

#: The column headers of the ratios, by the variant they divide, and their keys in a record.
_RATIO_HEADERS = {FAST_F32: "vs fast f32", TORCH_BF16: "vs torch bf16",
                  TORCH_INT8: "vs torch int8"}
_RATIO_KEYS = {FAST_F32: "speedup_vs_fastlstm_f32", TORCH_BF16: "speedup_vs_torch_bf16",
               TORCH_INT8: "speedup_vs_torch_int8"}


# ------------------------------------------------------------------- cases
def select_cases(names: Optional[Iterable[str]] = None) -> List[Case]:
    """The cases of :data:`CASES` named in ``names`` (all of them for None), in the order given.

    Names match with spaces, ``-`` or ``_`` between words (``one-step``).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the valid ones), or no name at all.
    """
    if names is None:
        return list(CASES)
    by_slug = {slug(case.name): case for case in CASES}
    valid = ", ".join(by_slug)
    chosen: List[Case] = []
    for name in names:
        if not name.strip():
            continue
        case = by_slug.get(slug(name))
        if case is None:
            raise ValueError(f"unknown case {name.strip()!r} (valid: {valid})")
        if case not in chosen:
            chosen.append(case)
    if not chosen:
        raise ValueError(f"no case named (valid: {valid})")
    return chosen


def _label(case: Case) -> str:
    """``large N=64 L=200 H=1024``, plus the layers and a carried state where they apply."""
    text = f"{case.name} N={case.N} L={case.L} H={case.H}"
    if case.layers > 1:
        text += f" {case.layers} layers"
    return text + (" carried (h, c)" if case.kind == "carried" else "")


# ----------------------------------------------------------------- variants
@dataclass
class _Runner:
    """A variant's timed call, and how its result gives the output as float64."""

    call: Callable[[], Any]
    output: Callable[[Any], np.ndarray]


def _output(result: Any) -> np.ndarray:
    """The output of ``(out, (h, c))`` as float64 (a torch tensor may be bfloat16,
    which NumPy has not: it is converted to float32 first)."""
    out = result[0]
    if hasattr(out, "detach"):
        out = out.detach().float().numpy()
    return np.asarray(out, dtype=np.float64)


def _reason(err: BaseException) -> str:
    """``Type: first line of the message``, short enough for a table cell."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {one_line(lines[0]) if lines else ''}".strip()[:120]


def _torch_dynamic(torch: Any, model: Any, dtype: Any) -> Any:
    """``model`` dynamically quantized to ``dtype`` by torch (a copy; ``model`` is kept)."""
    holder = torch.nn.Module()
    holder.lstm = model  # quantize_dynamic swaps submodules only, never the module given
    # The quantized LSTM's constructor draws placeholder weights from torch's generator.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # torch.ao.quantization (and its quantized tensors) warn that they are deprecated.
        warnings.filterwarnings("ignore", message=r"(?s).*\bdeprecated\b")
        quantized = torch.ao.quantization.quantize_dynamic(holder, {torch.nn.LSTM},
                                                           dtype=dtype).lstm
    if type(quantized) is type(model):
        raise RuntimeError(f"quantize_dynamic left the LSTM unquantized ({dtype})")
    return quantized


def compile_openvino(openvino: Any, model: Any, example: Tuple[Any, ...], threads: int,
                     precision: str) -> Any:
    """A torch module as OpenVINO's CPU plugin runs it, in one precision, on ``threads``.

    Shared by ``--precision`` (bfloat16) and the case grid (float32).

    Parameters
    ----------
    openvino : module
        The ``openvino`` module (see :func:`import_openvino`).
    model : torch.nn.Module
        Converted by ``openvino.convert_model``; the input shapes it leaves dynamic stay
        dynamic (``example`` is traced, not fixed).
    example : tuple
        The example input of the conversion: ``(x,)`` or ``(x, (h, c))``, torch tensors.
    threads : int
        ``INFERENCE_NUM_THREADS``, the thread count of the other libraries.
    precision : {"f32", "bf16"}
        ``INFERENCE_PRECISION_HINT``.

    Returns
    -------
    openvino.CompiledModel
        Its inputs are those of ``example`` flattened (x, h, c); its outputs
        ``(out, h, c)``.
    """
    with warnings.catch_warnings():
        # The converter traces the module: torch warns that tracing is deprecated and that
        # nn.LSTM's shape checks become constants (checks only; the shapes stay dynamic).
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated")
        warnings.filterwarnings("ignore", message="Converting a tensor to a Python boolean")
        converted = openvino.convert_model(model, example_input=example)
    return openvino.Core().compile_model(
        converted, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                           "INFERENCE_NUM_THREADS": threads})


def _openvino_runner(openvino: Any, model: Any, example: Tuple[Any, ...],
                     feed: List[np.ndarray], threads: int) -> _Runner:
    """OpenVINO's CPU plugin on ``model`` converted from torch, bfloat16 precision hint."""
    compiled = compile_openvino(openvino, model, example, threads, "bf16")
    request = compiled.create_infer_request()
    first = compiled.output(0)
    # Inputs read in place, as the other libraries read them (see command._openvino_runner).
    return _Runner(lambda: request.infer(feed, share_inputs=True),
                   lambda result: np.asarray(result[first], dtype=np.float64))


def import_openvino() -> Tuple[Any, Optional[str]]:
    """The ``openvino`` module, or None and why not: ``"not installed"``, or the error of a
    broken installation in one line."""
    try:
        return importlib.import_module("openvino"), None
    except ImportError:
        return None, "not installed"
    except Exception as err:  # a broken installation: say so, leave it out
        return None, _reason(err)


def _build(case: Case, torch: Any, seed: int, threads: int, openvino: Any
           ) -> Tuple[Dict[str, _Runner], Dict[str, str]]:
    """Every variant of ``case`` on the same weights and inputs: the runners, and the
    reasons of those that could not be built."""
    if case.kind not in ("forward", "carried"):
        raise ValueError(f"precision case {case.name!r}: kind must be forward or carried")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.LSTM(case.I, case.H, case.layers).eval()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.L, case.N, case.I)).astype(np.float32)
    hx: Optional[Tuple[np.ndarray, np.ndarray]] = None
    if case.kind == "carried":
        shape = (case.layers, case.N, case.H)
        hx = (rng.standard_normal(shape).astype(np.float32),
              rng.standard_normal(shape).astype(np.float32))
    xt = torch.from_numpy(x)
    hxt = None if hx is None else tuple(torch.from_numpy(a) for a in hx)

    def torch_runner(module: Any, dtype: Any = None) -> _Runner:
        # The input is converted once, outside the timed call, as fastlstm's is ready too.
        xin = xt if dtype is None else xt.to(dtype)
        hin = hxt if dtype is None or hxt is None else tuple(a.to(dtype) for a in hxt)
        return _Runner(lambda: module(xin, hin), _output)

    builders: Dict[str, Callable[[], _Runner]] = {}
    fast: List[Any] = []  # the float32 module, once built, for its quantized copies

    def fast_f32() -> _Runner:
        fast.append(fastlstm.LSTM.from_torch(model))
        return _Runner(lambda: fast[0](x, hx), _output)

    def fast_bf16() -> _Runner:
        small = fastlstm.quantize(fast[0] if fast else fastlstm.LSTM.from_torch(model),
                                  "bfloat16")
        return _Runner(lambda: small(x, hx), _output)

    def fast_int8() -> _Runner:
        small = fastlstm.quantize(fast[0] if fast else fastlstm.LSTM.from_torch(model), "int8")
        return _Runner(lambda: small(x, hx), _output)

    builders[FAST_F32] = fast_f32
    builders[FAST_BF16] = fast_bf16
    builders[FAST_INT8] = fast_int8
    builders[TORCH_F32] = lambda: torch_runner(model)
    builders[TORCH_BF16] = lambda: torch_runner(copy.deepcopy(model).to(torch.bfloat16),
                                                torch.bfloat16)
    builders[TORCH_INT8] = lambda: torch_runner(_torch_dynamic(torch, model, torch.qint8))
    builders[TORCH_F16] = lambda: torch_runner(_torch_dynamic(torch, model, torch.float16))
    if openvino is not None:
        example = (xt,) if hxt is None else (xt, hxt)
        feed = [x] if hx is None else [x, *hx]
        builders[OPENVINO] = lambda: _openvino_runner(openvino, model, example, feed, threads)

    runners: Dict[str, _Runner] = {}
    notes: Dict[str, str] = {}
    for name, build in builders.items():
        try:
            runners[name] = build()
        except Exception as err:  # e.g. no quantized engine in this torch build
            notes[name] = _reason(err)
    return runners, notes


# ----------------------------------------------------------------- one case
def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref| (NaN where ``out`` has a NaN); ValueError if the shapes
    differ."""
    if out.shape != ref.shape:
        raise ValueError(f"output shaped {out.shape}, expected {ref.shape}")
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def _speedup(reference: Optional[float], time_s: Optional[float]) -> Optional[float]:
    return None if reference is None or time_s is None else reference / time_s


def _measure_case(case: Case, torch: Any, variants: Sequence[str], *, blocks: int, seed: int,
                  threads: int, budget: float, openvino: Any,
                  targets: Dict[str, Tuple[Tuple[str, str, float], ...]],
                  progress: Callable[[float, str], None]) -> Dict[str, Any]:
    """The record of one case (see :func:`measure_precision`)."""
    record: Dict[str, Any] = {
        **case.as_dict(), "slug": slug(case.name), "label": _label(case),
        "shape": case.shape, "extra": case.extra,
        **{key: {name: None for name in variants} for key in (
            "time_s", "block_s", "reps_per_block", "error", "note",
            *_RATIO_KEYS.values())},
        "target": None, "targets": [], "failed": [],
    }
    progress(0.0, "building")
    runners, notes = _build(case, torch, seed, threads, openvino)
    record["note"].update(notes)
    first: Dict[str, float] = {}
    with torch.inference_mode():
        progress(0.05, "checking")
        reference = runners.pop(TORCH_F32)
        start = time.perf_counter()
        ref = reference.output(reference.call())
        first[TORCH_F32] = time.perf_counter() - start
        record["error"][TORCH_F32] = 0.0
        checked: Dict[str, Callable[[], Any]] = {}
        for name in variants:
            if name == TORCH_F32:
                checked[name] = reference.call
                continue
            runner = runners.get(name)
            if runner is None:
                continue
            try:
                start = time.perf_counter()
                result = runner.call()
                first[name] = time.perf_counter() - start
                error = _relative_error(runner.output(result), ref)
            except Exception as err:
                record["note"][name] = _reason(err)
                continue
            record["error"][name] = error
            bound = TOLERANCE.get(name)
            if bound is not None and not error <= bound:
                record["note"][name] = (f"NOT TIMED: differs from torch f32 by {error:.1e} "
                                        f"(tolerance {bound:.0e})")
                continue
            checked[name] = runner.call
        for name in (FAST_F32, FAST_BF16, FAST_INT8):  # fastlstm's must run and agree
            if name in variants and name not in checked:
                record["failed"].append(name)

        progress(0.1, "timing")
        timings = time_interleaved(
            checked, budget=budget, blocks=blocks, min_blocks=min(blocks, 3),
            first_call_s=first,
            on_block=lambda done, total: progress(0.1 + 0.9 * done / total, "timing"))
    for name, timing in timings.items():
        record["time_s"][name] = timing.median_s
        record["block_s"][name] = timing.block_s
        record["reps_per_block"][name] = timing.reps
    times = record["time_s"]
    for name in variants:
        for against, key in _RATIO_KEYS.items():
            record[key][name] = _speedup(times[against], times[name])
    for variant, against, bound in targets.get(case.name, ()):
        ratio = _speedup(times[against], times[variant])
        record["targets"].append({"variant": variant, "against": against, "op": ">=",
                                  "bound": bound, "ratio": ratio,
                                  "met": None if ratio is None else ratio >= bound})
    record["target"] = record["targets"][0] if record["targets"] else None
    return record


# ----------------------------------------------------------------- the mode
def _target_dict(variant: str, against: str, bound: float) -> Dict[str, Any]:
    return {"variant": variant, "against": against, "op": ">=", "bound": bound}


def measure_precision(torch: Any, *, cases: Optional[Sequence[str]] = None, blocks: int = 5,
                      seed: int = 0, threads: Optional[int] = None, budget: float = 2.0,
                      on_progress: Optional[Callable[[float, str], None]] = None,
                      openvino: bool = True) -> Dict[str, Any]:
    """Time reduced-precision variants of each case beside float32 and the peers.

    Parameters
    ----------
    torch : module
    cases : sequence of str, optional
        Names of cases of :data:`CASES` (see :func:`select_cases`); all of them if None.
    blocks : int, default=5
        Alternating blocks per case (at least three, or ``blocks`` if fewer, where a
        round of calls outlasts the budget); medians over them are reported.
    seed : int, default=0
        Seed of the weights and the inputs.
    threads : int, optional
        Threads of fastlstm, torch and OpenVINO (``fastlstm.get_num_threads()`` if None).
    budget : float, default=2.0
        Seconds of timed calls per case, all variants together (a slow call still runs
        once per block).
    on_progress : callable, optional
        Called as ``on_progress(fraction_done, stage)``.
    openvino : bool, default=True
        False leaves OpenVINO out even where it is installed (``--no-openvino``).

    Returns
    -------
    dict
        ``threads``, ``blocks``, ``seed``, ``budget_s``, ``bf16_level``,
        ``bf16_levels``, ``int8_level`` and ``int8_levels`` (``fastlstm._ext.kernels``),
        ``torch`` (its version), ``openvino`` (its version or None) and
        ``openvino_note`` (why it is left out, or None), ``variants`` (the names, in
        order), ``tolerance``, ``targets`` (by case name, its first target:
        ``variant``, ``against``, ``op``, ``bound``), ``all_targets`` (by case name,
        the list of all its targets), ``cases`` (one record per case: its ``Case``
        fields, ``slug``, ``label``, ``shape``, ``extra``; per variant ``time_s``
        (median seconds per call), ``block_s``, ``reps_per_block``, ``error``
        (against torch f32, relative to its largest output), ``note`` (why n/a),
        ``speedup_vs_fastlstm_f32``, ``speedup_vs_torch_bf16`` and
        ``speedup_vs_torch_int8`` (that variant's time over this one's), each None
        where n/a; ``targets``: a list of one dict per target of the case
        (``variant``, ``against``, ``op``, ``bound``, ``ratio``, ``met``), and
        ``target``: the first of them, or None; ``failed``: the fastlstm variants
        that failed or were not timed), ``failed`` (``"case: variant"`` for every
        case) and ``wall_s``.

    Raises
    ------
    ValueError
        For an unknown case name.
    """
    started = time.perf_counter()
    chosen = select_cases(cases)
    progress = on_progress or (lambda frac, stage: None)
    threads = threads or fastlstm.get_num_threads()
    ov, openvino_note = import_openvino() if openvino else (None, "disabled by --no-openvino")
    variants = list(VARIANTS) + ([OPENVINO] if ov is not None else [])
    targets = targets_for(kernels.bf16_level())
    result: Dict[str, Any] = {
        "threads": threads, "blocks": blocks, "seed": seed, "budget_s": budget,
        "bf16_level": kernels.bf16_level(), "bf16_levels": list(kernels.bf16_levels()),
        "int8_level": kernels.int8_level(), "int8_levels": list(kernels.int8_levels()),
        "torch": torch.__version__,
        "openvino": getattr(ov, "__version__", None) if ov is not None else None,
        "openvino_note": openvino_note, "variants": variants, "tolerance": dict(TOLERANCE),
        "targets": {name: _target_dict(*case_targets[0])
                    for name, case_targets in targets.items()},
        "all_targets": {name: [_target_dict(*target) for target in case_targets]
                        for name, case_targets in targets.items()},
        "cases": [], "failed": [], "wall_s": None,
    }
    saved_fast = _threads._num_threads
    saved_torch = torch.get_num_threads()
    try:
        fastlstm.set_num_threads(threads)
        torch.set_num_threads(threads)
        for k, case in enumerate(chosen):
            def case_progress(frac: float, stage: str, k: int = k, case: Case = case) -> None:
                progress((k + frac) / len(chosen),
                         f"precision {k + 1}/{len(chosen)} {case.name}: {stage}")

            record = _measure_case(case, torch, variants, blocks=blocks, seed=seed,
                                   threads=threads, budget=budget, openvino=ov,
                                   targets=targets, progress=case_progress)
            result["cases"].append(record)
            result["failed"] += [f"{case.name}: {name}" for name in record["failed"]]
    finally:
        fastlstm.set_num_threads(saved_fast)
        torch.set_num_threads(saved_torch)
    result["wall_s"] = time.perf_counter() - started
    return result


# ----------------------------------------------------------------- the table
def header_lines(result: Dict[str, Any], cpu: str, flags: Sequence[str]) -> List[str]:
    """What the precision table was measured on and how, in three lines."""
    if result["openvino_note"] is None:
        openvino = (f"OpenVINO {result['openvino'] or '(version unknown)'}: '{OPENVINO}' on "
                    "its CPU plugin with the bfloat16 precision hint")
    else:
        openvino = f"OpenVINO n/a ({result['openvino_note']}): left out"
    return [
        f"precision: bfloat16 kernels {result['bf16_level']} (levels here: "
        f"{', '.join(result['bf16_levels'])}); int8 kernels {result['int8_level']} (levels "
        f"here: {', '.join(result['int8_levels'])}); {cpu}; flags {' '.join(flags) or 'n/a'}",
        f"{openvino}; torch {result['torch']}; {result['threads']} threads for every library",
        f"{result['blocks']} alternating blocks per case, --budget {result['budget_s']:g} s, "
        "medians; 'vs fast f32', 'vs torch bf16', 'vs torch int8' = fastlstm f32, torch bf16, "
        f"'{TORCH_INT8}' time / time; error = max|out - torch f32 out| / max|torch f32 out|",
    ]


_HEADERS = ["case", "variant", "time", *_RATIO_HEADERS.values(), "error", "target", "result"]
#: The columns of the figures (right-aligned), then those of the target and its result.
_FIGURES = range(_HEADERS.index("time"), _HEADERS.index("error") + 1)
_TARGET, _RESULT = len(_HEADERS) - 2, len(_HEADERS) - 1


def _ratio(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _cells(record: Dict[str, Any], variants: Sequence[str]) -> List[List[str]]:
    """One list of cells per variant; an n/a variant has three, its reason last.  A
    target shows on the row of its variant."""
    rows = []
    targets = {target["variant"]: target for target in record["targets"]}
    for k, name in enumerate(variants):
        head = [record["label"] if k == 0 else "", name]
        if record["time_s"][name] is None:
            rows.append(head + [f"n/a: {record['note'][name] or 'not measured'}"])
            continue
        error = record["error"][name]
        cells = head + [fmt_time(record["time_s"][name]),
                        *(_ratio(record[key][name]) for key in _RATIO_KEYS.values()),
                        "ref" if name == TORCH_F32 else f"{error:.1e}", "", ""]
        target = targets.get(name)
        if target is not None:
            cells[_TARGET] = f"{_RATIO_HEADERS[target['against']]} >= {target['bound']:g}"
            cells[_RESULT] = {True: "met", False: "missed", None: "n/a"}[target["met"]]
        rows.append(cells)
    return rows


def precision_table(result: Dict[str, Any]) -> List[str]:
    """The cases as aligned lines: a header, a rule, then one line per case and variant
    (an n/a variant shows its reason across the figure columns)."""
    cells = [row for record in result["cases"] for row in _cells(record, result["variants"])]
    # An n/a row counts for the first two columns only: its reason runs on.
    widths = [max([len(h)] + [len(c[k]) for c in cells if k < 2 or len(c) == len(_HEADERS)])
              for k, h in enumerate(_HEADERS)]

    def line(parts: Sequence[str]) -> str:
        return " ".join(p.rjust(w) if k in _FIGURES else p.ljust(w)
                        for k, (p, w) in enumerate(zip(parts, widths))).rstrip()

    lines = [line(_HEADERS), "-" * len(line(_HEADERS))]
    lines += [line(c) if len(c) == len(_HEADERS) else line(c[:2]) + " " + c[2] for c in cells]
    return lines


def summary_line(result: Dict[str, Any]) -> str:
    """How many targets were met, missed or could not be judged, in one line."""
    verdicts = [target["met"] for r in result["cases"] for target in r["targets"]]
    return (f"targets: {verdicts.count(True)} met, {verdicts.count(False)} missed, "
            f"{verdicts.count(None)} n/a (a missed target is a finding, not a failure)")


def int8_line(result: Dict[str, Any]) -> str:
    """fastlstm int8 against torch's dynamic int8 on every case, in one line (not a target)."""
    ratios = [f"{r['name']} {_ratio(r['speedup_vs_torch_int8'][FAST_INT8])}"
              for r in result["cases"]]
    return (f"{FAST_INT8} vs {TORCH_INT8} (torch int8 time / fastlstm int8 time, not a "
            f"target): {', '.join(ratios) or 'no case'}")
