"""The benchmark's reports: machine and versions, terminal table and progress bar,
JSON, Markdown and an optional plot (matplotlib)."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, TextIO, Tuple

import numpy as np

import fastlstm
from fastlstm._bench.cases import LIBS as MEMORY_LIBS
from fastlstm._bench.streams import scaling_line
from fastlstm._bench.timing import SETTLE_LIMIT_S

__all__ = [
    "LIBS",
    "MEMORY_LIBS",
    "machine_info",
    "versions",
    "Progress",
    "Table",
    "geomean",
    "headers",
    "memory_summary",
    "write_json",
    "write_markdown",
    "write_plot",
]

#: The libraries timed, as they are named in the JSON: those of ``cases.LIBS``
#: (:data:`MEMORY_LIBS`, whose peak memory ``--memory`` measures), then OpenVINO.
LIBS = (*MEMORY_LIBS, "openvino")


# ------------------------------------------------------------- environment
def _cpuinfo_fields(cpuinfo: str = "/proc/cpuinfo") -> Dict[str, str]:
    """The first CPU's block of ``/proc/cpuinfo``, keys lower-cased ({} where unreadable)."""
    fields: Dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, with its family and model numbers where the OS gives them
    (a virtual machine may show only "AMD EPYC", the same for Zen 4 and Zen 5)."""
    fields = _cpuinfo_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def _cpu_flags() -> List[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                              "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile",
                              "amx_bf16", "amx_int8")
                    return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


#: FMA units per core assumed by :func:`nominal_fma_peak`: two on the server cores of the
#: last generations (Intel Skylake-SP and later with AVX-512, AMD Zen 2 and later); one on
#: some client parts, where the nominal peak is then twice too high.
FMA_UNITS = 2


def _clock_ghz() -> Optional[Tuple[float, str]]:
    """The CPU's clock in GHz and where it was read: the maximum cpufreq reports, else the
    clock of ``/proc/cpuinfo`` (in a VM the nominal one; turbo may run faster)."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            return int(f.read()) / 1e6, "cpufreq's maximum"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("cpu mhz"):
                    return float(line.split(":", 1)[1]) / 1e3, "/proc/cpuinfo; turbo may be faster"
    except (OSError, ValueError):
        pass
    return None


def nominal_fma_peak(threads: int, simd: str) -> Optional[Dict[str, Any]]:
    """The theoretical FMA peak of ``threads`` cores at the clock the system reports:
    cores x GHz x SIMD lanes x 2 FLOPs per FMA x FMA units (:func:`_fma_units`), per
    dtype; None where no clock can be read.  A reference for the measured GEMM peak, not
    a bound: the clock read may be below the turbo clock and the FMA unit count is
    assumed."""
    clock = _clock_ghz()
    if clock is None:
        return None
    ghz, source = clock
    bytes_per_vector = {"avx512": 64, "avx2": 32}.get(simd, 16)
    units = _fma_units(simd)
    return {
        "ghz": round(ghz, 3), "clock_source": source, "fma_units": units, "simd": simd,
        "gflops": {dtype: threads * ghz * (bytes_per_vector // size) * 2 * units
                   for dtype, size in (("float32", 4), ("float64", 8))},
    }


def _fma_units(simd: str) -> int:
    """:data:`FMA_UNITS`, but 1 for 512-bit vectors on AMD's family 25 (Zen 4), which
    runs them on its two 256-bit units (measured: one 512-bit FMA a cycle)."""
    fields = _cpuinfo_fields()
    if (simd == "avx512" and fields.get("vendor_id") == "AuthenticAMD"
            and fields.get("cpu family") == "25"):
        return 1
    return FMA_UNITS


def fastlstm_config() -> Optional[Dict[str, Any]]:
    """``fastlstm.show_config(as_dict=True)``, or None where it does not exist yet."""
    show_config = getattr(fastlstm, "show_config", None)
    if show_config is None:
        return None
    try:
        config = show_config(as_dict=True)
    except Exception:  # an older or half-built show_config: report without it
        return None
    return config if isinstance(config, dict) else None


def machine_info(threads: int) -> Dict[str, Any]:
    """CPU model, cores, SIMD level in use, OpenMP and thread count."""
    config = fastlstm_config() or {}
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "simd": config.get("simd", "unknown"),
        "simd_available": config.get("simd_available"),
        "openmp": config.get("openmp"),
        "threads": threads,
        "nominal_fma_peak": nominal_fma_peak(threads, config.get("simd", "unknown")),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> Dict[str, Any]:
    """Versions of fastlstm, numpy, scipy, torch, onnx, onnxruntime, openvino (None where
    not imported) and the BLAS in use."""
    import scipy

    out: Dict[str, Any] = {"fastlstm": fastlstm.__version__, "numpy": np.__version__,
                           "scipy": scipy.__version__}
    for name in ("torch", "onnxruntime", "onnx", "openvino", "threadpoolctl"):
        module = sys.modules.get(name)
        out[name] = getattr(module, "__version__", None) if module else None
    config = fastlstm_config()
    if config is not None and config.get("blas") is not None:
        out["blas"] = config["blas"]
    else:
        import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's BLAS)
        from threadpoolctl import threadpool_info

        out["blas"] = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return out


def geomean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Geometric mean of the positive finite values, None if there are none."""
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return float(math.exp(sum(math.log(v) for v in vals) / len(vals))) if vals else None


# ----------------------------------------------------------------- formats
def fmt_time(seconds: Optional[float]) -> str:
    """``12.3 us``, ``4.56 ms``, ``1.23 s``; ``n/a`` for None."""
    if seconds is None:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _mib(value: Optional[float]) -> str:
    """``12.3`` (MiB), ``1234`` from 1000 MiB on; ``n/a`` for None."""
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 1000 else f"{value:.1f}"


def _row_cells(case: Dict[str, Any], memory: bool = False) -> List[str]:
    """The table cells of one case record (see ``_bench.run_case``).

    With ``memory``, three more: the peak memory of fastlstm, torch and ONNX
    Runtime (MiB).  A case that was not timed has its note in the first timing column and
    fastlstm's difference in the ``diff`` column.
    """
    times = case["time_s"]
    diff = case["max_abs_diff"]
    mem = case.get("peak_memory_mib") or {}
    mem_cells = [_mib(mem.get(lib)) for lib in MEMORY_LIBS] if memory else []
    if case["status"] != "ok":
        cells = [case["name"], case["shape"], case["extra"], case.get("note") or case["status"]]
        cells += [""] * (len(HEADERS) - len(cells))
        cells[_DIFF] = _fmt(diff.get("fastlstm"), ".1e")
        return cells + ["" for _ in mem_cells]
    # .get: a record written before OpenVINO was a peer has no openvino entries.
    return [
        case["name"], case["shape"], case["extra"],
        fmt_time(times["fastlstm"]), fmt_time(times["torch"]), fmt_time(times["onnxruntime"]),
        fmt_time(times.get("openvino")),
        _fmt(case["gflops"]["fastlstm"], ".1f"),
        _fmt(None if case["peak_fraction"] is None else 100 * case["peak_fraction"], ".1f", "%"),
        _fmt(case["speedup_vs_torch"], ".2f", "x"),
        _fmt(case["speedup_vs_onnxruntime"], ".2f", "x"),
        _fmt(case.get("speedup_vs_openvino"), ".2f", "x"),
        _fmt(diff.get("fastlstm"), ".1e"),
        _fmt(diff.get("onnxruntime"), ".1e"),
        _fmt(diff.get("openvino"), ".1e"),
    ] + mem_cells


HEADERS = ["case", "N,L,I,H", "extra", "fastlstm", "torch", "ORT", "OV", "GFLOP/s", "peak",
           "vs torch", "vs ORT", "vs OV", "diff", "ORT diff", "OV diff"]
#: The columns added by ``--memory``: peak memory of one forward (MiB) per library of
#: :data:`MEMORY_LIBS` (OpenVINO's is not measured).
MEMORY_HEADERS = ["MiB fast", "MiB torch", "MiB ORT"]
_WIDTHS = [0, 0, 0, 10, 10, 10, 10, 8, 6, 8, 7, 7, 8, 8, 8]  # the first three fit the cases
_MEMORY_WIDTHS = [8, 9, 7]
_LEFT = 3  # the first three columns are left-aligned
_DIFF = HEADERS.index("diff")  # fastlstm's difference from torch


def headers(memory: bool = False) -> List[str]:
    """The column headers, with the memory columns if ``memory``."""
    return HEADERS + (MEMORY_HEADERS if memory else [])


def memory_summary(summary: Dict[str, Any]) -> Optional[str]:
    """``peak memory: fastlstm <= torch in 9 of 11 cases``, or None if not measured."""
    compared = summary.get("peak_memory_compared")
    if compared is None:
        return None
    return (f"peak memory: fastlstm <= torch in {summary['peak_memory_le_torch']} "
            f"of {compared} cases")


class Table:
    """The results table on the terminal, printed a row at a time.

    Parameters
    ----------
    stream : file
    cases : sequence of Case
        The cases to come, to size the name, shape and extra columns.
    memory : bool, default=False
        Add the peak-memory columns (``--memory``).
    """

    def __init__(self, stream: TextIO, cases: Sequence[Any], memory: bool = False) -> None:
        self.stream = stream
        self.memory = memory
        self.headers = headers(memory)
        self.widths = list(_WIDTHS) + (list(_MEMORY_WIDTHS) if memory else [])
        for k, attr in enumerate(("name", "shape", "extra")):
            self.widths[k] = max([len(HEADERS[k])] + [len(getattr(c, attr)) for c in cases])

    def _line(self, cells: Sequence[str]) -> str:
        parts = []
        for k, (cell, width) in enumerate(zip(cells, self.widths)):
            parts.append(cell.ljust(width) if k < _LEFT else cell.rjust(width))
        return " ".join(parts).rstrip()

    def header(self) -> None:
        self.stream.write(self._line(self.headers) + "\n")
        self.stream.write("-" * len(self._line(self.headers)) + "\n")
        self.stream.flush()

    def row(self, case: Dict[str, Any]) -> None:
        cells = _row_cells(case, self.memory)
        if case["status"] != "ok":  # a failure note spans the timing columns
            line = self._line(cells[:3]).ljust(sum(self.widths[:3]) + 3) + cells[3]
            line += f"  (fastlstm diff {cells[_DIFF]})"
        else:
            line = self._line(cells)
        if self.memory and case.get("peak_memory_note"):
            line += f"\n    peak memory: {case['peak_memory_note']}"
        self.stream.write(line + "\n")
        self.stream.flush()


class Progress:
    """A one-line progress bar on stderr (plain text, rewritten with ``\\r``).

    Parameters
    ----------
    total : int
        Number of steps (cases).
    enabled : bool
        If False every method does nothing (``--quiet``, or stderr not a TTY).
    """

    def __init__(self, total: int, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total = max(1, total)
        self.enabled = enabled
        self.stream = stream
        self._width = 0

    def show(self, done: float, label: str) -> None:
        """Draw the bar at ``done`` of ``total`` steps (fractions allowed), then ``label``."""
        if not self.enabled:
            return
        frac = min(1.0, max(0.0, done / self.total))
        bar = "#" * int(round(24 * frac))
        text = f"[{bar:<24}] {label}"[:110]
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Erase the bar (before a table row is printed)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


# ------------------------------------------------------------------- files
def write_json(path: str, report: Dict[str, Any]) -> None:
    """Write the whole report as JSON (made first: a report that cannot be serialized
    leaves no partial file)."""
    text = json.dumps(report, indent=2, default=str) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def padded_lines(cases: List[Dict[str, Any]]) -> List[str]:
    """One line per packed case: fastlstm's packed forward against its padded one."""
    return [f"{c['name']}: fastlstm packed {_fmt(c['time_s']['fastlstm'] * 1e3, '.2f', ' ms')}"
            f", padded {_fmt(c['padded_time_s'] * 1e3, '.2f', ' ms')} (packed is "
            f"{_fmt(c['speedup_vs_padded'], '.2f', 'x')} the speed of padded)"
            for c in cases if c.get("speedup_vs_padded") is not None]


def contention_lines(cases: List[Dict[str, Any]]) -> List[str]:
    """One line naming the cases during whose timing fastlstm's dynamic threads found the
    CPUs contended (``fastlstm.set_dynamic_threads``): those ran fewer threads for a while."""
    hit = [f"{c['name']} ({c['contended_windows']} of {c['team_windows']})" for c in cases
           if c.get("contended_windows")]
    if not hit:
        return []
    return ["dynamic threads: fastlstm found its CPUs contended, and ran fewer threads for "
            "50 ms or more each time, in windows of " + ", ".join(hit)
            + " (another process or thread held a CPU; set_dynamic_threads(False) to time a "
            "fixed count)"]


def peak_lines(peak: Dict[str, Dict[str, Any]], settings: Dict[str, Any],
               nominal: Optional[Dict[str, Any]], prefix: str = "") -> List[str]:
    """What the 'peak' column is measured against: per dtype, the best GEMM measured in
    this process (a measured reference, raised to any case that beat it) and the nominal
    FMA peak beside it."""
    lines = []
    for dtype, found in peak.items():
        parts = ", ".join(f"{k} {val:.1f}" for k, val in found.items()
                          if isinstance(val, float) and k != "best")
        line = (f"{prefix}peak {dtype} (measured reference): {found['best']:.1f} GFLOP/s, the "
                f"best GEMM in this process ({parts}; {settings['peak_size']}^3, best of "
                f"{settings['peak_reps']} after {settings.get('peak_warmup', 1)} warm-up "
                "calls, before and after the cases)")
        if found.get("raised_by"):
            line += f"; raised to the rate of case {found['raised_by']}, which beat it"
        if nominal is not None:
            line += (f"; nominal FMA peak {nominal['gflops'][dtype]:.1f} GFLOP/s "
                     f"({settings['threads']} cores x {nominal['ghz']:.2f} GHz x "
                     f"{nominal['simd']} lanes x {nominal['fma_units']} FMA units; clock from "
                     f"{nominal['clock_source']})")
        lines.append(line)
    return lines


def markdown(report: Dict[str, Any]) -> str:
    """The report as a Markdown document: machine, versions, settings, table."""
    m, v, s = report["machine"], report["versions"], report["settings"]
    peak = report.get("peak_gflops") or {}
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} "
                     f"({b.get('architecture', '?')}, {b.get('num_threads')} threads)"
                     for b in v.get("blas") or []) or "unknown"
    lines = [
        "# fastlstm benchmark",
        "",
        f"- date: {report['created']}",
        f"- machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, "
        f"flags {' '.join(m['cpu_flags']) or 'unknown'}",
        f"- fastlstm SIMD level: {m['simd']}, OpenMP: {m['openmp']}, "
        f"threads: {m['threads']} (all libraries)",
        f"- versions: fastlstm {v['fastlstm']}, numpy {v['numpy']}, scipy {v['scipy']}, "
        # None: not imported by this run (not installed, or left out by an option)
        f"torch {v['torch']}, onnxruntime {v['onnxruntime'] or 'not used'}, "
        f"openvino {v.get('openvino') or 'not used'}, python {m['python']}",
        f"- BLAS: {blas}",
    ]
    lines += peak_lines(peak, s, m.get("nominal_fma_peak"), prefix="- ")
    lines += [
        f"- timing: {s['budget_s']} s per case, {s['blocks']} alternating blocks, "
        f"{s['pause_s']} s pause after each block and then until the process is idle "
        f"(at most {SETTLE_LIMIT_S} s more), median of blocks",
        f"- FLOPs: {report['flops_formula']}",
    ]
    memory = bool(s.get("memory"))
    if memory:
        lines.append(f"- peak memory (MiB columns): {s['memory_method']}")
    cols = headers(memory)
    lines += [
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(["---"] * _LEFT + ["---:"] * (len(cols) - _LEFT)) + "|",
    ]
    for case in report["cases"]:
        cells = [_md_escape(c) for c in _row_cells(case, memory)]
        lines.append("| " + " | ".join(cells) + " |")
    summary = report["summary"]
    padded = padded_lines(report["cases"]) + contention_lines(report["cases"])
    streams = scaling_line(report.get("stream_scaling"))
    if padded or streams:
        lines += [""] + [f"- {line}" for line in padded + ([streams] if streams else [])]
    lines += [
        "",
        f"Geometric mean speedup: {_fmt(summary['geomean_speedup_vs_torch'], '.2f', 'x')} "
        f"vs torch, {_fmt(summary['geomean_speedup_vs_onnxruntime'], '.2f', 'x')} "
        f"vs ONNX Runtime, {_fmt(summary.get('geomean_speedup_vs_openvino'), '.2f', 'x')} "
        f"vs OpenVINO.",
        "",
    ]
    mem_line = memory_summary(summary)
    if mem_line:
        lines += [mem_line[0].upper() + mem_line[1:] + ".", ""]
    for key, peer in (("onnxruntime_note", "ONNX Runtime"), ("openvino_note", "OpenVINO")):
        notes = sorted({n for c in report["cases"] for n in [c.get(key)] if n})
        if notes:
            lines += [f"{peer} n/a: " + "; ".join(_md_escape(n) for n in notes) + ".", ""]
    mem_notes = [f"{c['name']}: {c['peak_memory_note']}" for c in report["cases"]
                 if memory and c.get("peak_memory_note")]
    if mem_notes:
        lines += ["Peak memory n/a: " + "; ".join(_md_escape(n) for n in mem_notes) + ".", ""]
    return "\n".join(lines)


def write_markdown(path: str, report: Dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown(report))


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path: str, report: Dict[str, Any]) -> None:
    """A bar chart of the speedups over torch, ONNX Runtime and OpenVINO (needs
    matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cases = [c for c in report["cases"] if c["status"] == "ok"]
    names = [c["name"] for c in cases]
    fig = Figure(figsize=(max(6.0, 0.7 * len(cases) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pos = np.arange(len(cases))
    bars = (("speedup_vs_torch", "vs torch"), ("speedup_vs_onnxruntime", "vs ONNX Runtime"),
            ("speedup_vs_openvino", "vs OpenVINO"))
    width = 0.8 / len(bars)
    for k, (key, label) in enumerate(bars):
        vals = np.array([c.get(key) if c.get(key) is not None else np.nan for c in cases])
        # Bars grow from 1x, up for faster and down for slower.
        ax.bar(pos + (k - (len(bars) - 1) / 2) * width, vals - 1.0, bottom=1.0, width=width,
               label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=2))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(pos, names, rotation=40, ha="right")
    ax.set_ylabel("fastlstm speedup (log scale)")
    m = report["machine"]
    ax.set_title(f"fastlstm {report['versions']['fastlstm']} on {m['cpu']}, "
                 f"{m['threads']} threads (higher is better)", fontsize=10)
    ax.legend()
    fig.savefig(path, dpi=120)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
