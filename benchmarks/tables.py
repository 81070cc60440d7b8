"""Regenerate the benchmark tables of README.md and docs/performance.md from a results JSON.

After ``fastlstm bench --json benchmarks/results/default.json ...`` (the default grid)::

    python benchmarks/tables.py benchmarks/results/default.json            # print the blocks
    python benchmarks/tables.py benchmarks/results/default.json --write    # update the files
    python benchmarks/tables.py benchmarks/results/default.json --check    # exit 1 if stale

Each file marks its generated text with HTML comments on their own lines:
``<!-- bench:table:start -->`` / ``<!-- bench:table:end -->`` in docs/performance.md (the
per-case table and the paragraph of geometric means after it) and
``<!-- bench:summary:start -->`` / ``<!-- bench:summary:end -->`` in README.md (the summary
table and the sentence after it).  The text between a pair is replaced; everything else stays
as written, except the torch and ONNX Runtime versions in the paragraph that introduces the
docs table (``torch 2.13.0, ONNX Runtime 1.32.0``), which are updated in place.

Standard library only: no numpy, and fastlstm need not be built.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PERFORMANCE = ROOT / "docs" / "performance.md"

#: The marker name of each generated region, by file.
TABLE = "table"  # docs/performance.md
SUMMARY = "summary"  # README.md

#: The prose is wrapped like the rest of the Markdown files.
WIDTH = 99

Case = Dict[str, Any]
Results = Dict[str, Any]


class TablesError(ValueError):
    """A results file or a Markdown file that the tables cannot be generated for or into."""


# ----------------------------------------------------------------- formats
def fmt_time(seconds: Optional[float]) -> str:
    """A time as the docs write it: ``12.1 us``, ``476.5 us``, ``5.07 ms``, ``634 ms``.

    Microseconds with one decimal, milliseconds and seconds to three significant digits
    (``23 ms``, not ``23.0 ms``); ``n/a`` for None.  (``fastlstm._bench.report.fmt_time``,
    the bench's own report, keeps two decimals of milliseconds: ``633.57 ms``.)
    """
    if seconds is None:
        return "n/a"
    if round(seconds * 1e6, 1) < 1000:
        return f"{seconds * 1e6:.1f} us"
    if float(f"{seconds * 1e3:.3g}") < 1000:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 999.5 else f"{seconds:.0f} s"


def fmt_ratio(value: Optional[float]) -> str:
    """``16.87x``; ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_range(values: Sequence[Optional[float]]) -> str:
    """``0.97x-1.02x`` over the values that are not None (one value: ``1.02x``)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    low, high = fmt_ratio(min(vals)), fmt_ratio(max(vals))
    return low if low == high else f"{low}-{high}"


def _int_range(values: Iterable[int]) -> str:
    vals = sorted(set(values))
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


def _pair(first: str, second: str) -> str:
    """``n/a`` when both are, else ``a / b``."""
    return "n/a" if first == second == "n/a" else f"{first} / {second}"


def _times_pair(first: Optional[float], second: Optional[float]) -> str:
    """``10.5 / 3.7 us`` when both share a unit, else ``10.5 us / 1.20 ms``."""
    a, b = fmt_time(first), fmt_time(second)
    unit_a, unit_b = a.rpartition(" ")[2], b.rpartition(" ")[2]
    if unit_a == unit_b and "n/a" not in (a, b):
        return f"{a.rpartition(' ')[0]} / {b}"
    return f"{a} / {b}"


def _count_word(n: int) -> str:
    words = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
             8: "eight", 9: "nine"}
    return words.get(n, str(n))


def _version(results: Results, lib: str, parts: int) -> str:
    """``2.13.0+cpu`` -> ``2.13.0`` (parts=3) or ``2.13`` (parts=2); ``n/a`` if not installed."""
    version = (results.get("versions") or {}).get(lib)
    if not version:
        return "n/a"
    return ".".join(str(version).split("+")[0].split(".")[:parts])


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=WIDTH, break_long_words=False, break_on_hyphens=False)


# ----------------------------------------------------------------- results
def load(path: "str | Path") -> Results:
    """The results of ``fastlstm bench --json PATH``."""
    with open(path, encoding="utf-8") as f:
        try:
            results = json.load(f)
        except json.JSONDecodeError as exc:
            raise TablesError(f"{path}: not JSON ({exc})") from None
    if not isinstance(results, dict) or results.get("schema") != 1 or "cases" not in results:
        raise TablesError(f"{path}: not a results file of `fastlstm bench --json` (schema 1)")
    return results


def geomean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Geometric mean of the positive finite values, None if there are none."""
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def _ok(results: Results) -> List[Case]:
    return [c for c in results["cases"] if c.get("status") == "ok"]


def _forward(cases: List[Case]) -> List[Case]:
    return [c for c in cases if c.get("kind", "forward") == "forward"]


def _speedups(cases: List[Case], key: str) -> List[float]:
    return [c[key] for c in cases if c.get(key) is not None]


def case(results: Results, name: str) -> Case:
    """The case record called ``name``; TablesError if the results have none."""
    cases: List[Case] = results["cases"]
    for c in cases:
        if c["name"] == name:
            return c
    raise TablesError(f"the results have no case {name!r}: the README table needs the default "
                      "grid (`fastlstm bench --json PATH`, without --cases, --shape or --full)")


def _packed(results: Results) -> Optional[Case]:
    for c in _ok(results):
        if c.get("kind") == "packed" and c.get("speedup_vs_padded") is not None:
            return c
    return None


def _scaling(results: Results) -> Optional[Dict[str, Any]]:
    scaling: Optional[Dict[str, Any]] = results.get("stream_scaling")
    if not scaling or not (scaling.get("fastlstm") or {}).get("scaling"):
        return None
    return scaling


def _scaling_clause(scaling: Dict[str, Any], verb: str, hidden: bool) -> str:
    size = f" (H={scaling['hidden']})" if hidden else ""
    torch = (scaling.get("torch") or {}).get("scaling")
    torch_part = f" (torch's `LSTMCell`: {fmt_ratio(torch)})" if torch else ""
    return (f"{_count_word(int(scaling['threads']))} Python threads each stepping their own "
            f"stream{size} {verb} {fmt_ratio(scaling['fastlstm']['scaling'])} the throughput "
            f"of one{torch_part}")


# ----------------------------------------------------------------- docs/performance.md
def performance_block(results: Results) -> str:
    """The per-case table and the paragraph after it, for docs/performance.md."""
    lines = ["| case | N, L, I, H | extra | fastlstm | torch | ONNX Runtime | vs torch | vs ORT |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in results["cases"]:
        shape = f"{c['N']}, {c['L']}, {c['I']}, {c['H']}"
        if c.get("status") == "ok":
            t = c["time_s"]
            cells = [fmt_time(t.get("fastlstm")), fmt_time(t.get("torch")),
                     fmt_time(t.get("onnxruntime")), fmt_ratio(c.get("speedup_vs_torch")),
                     fmt_ratio(c.get("speedup_vs_onnxruntime"))]
        else:
            cells = [f"not timed ({c.get('status')})", "n/a", "n/a", "n/a", "n/a"]
        lines.append("| " + " | ".join([c["name"], shape, c.get("extra", "")] + cells) + " |")

    ok = _ok(results)
    vs_torch = _speedups(ok, "speedup_vs_torch")
    forward = _speedups(_forward(ok), "speedup_vs_torch")
    vs_ort = _speedups(ok, "speedup_vs_onnxruntime")
    text = (f"Geometric mean: {fmt_ratio(geomean(vs_torch))} torch over the {len(vs_torch)} "
            f"cases, {fmt_ratio(geomean(forward))} over the {len(forward)} forward cases; "
            f"{fmt_ratio(geomean(vs_ort))} ONNX Runtime. ONNX's LSTM has no projection and "
            "ONNX Runtime has no float64 LSTM; the `LSTMCell`, `Stream` and packed cases are "
            "compared with torch only (the packed case with torch's packed forward: torch's "
            "padded forward of the same batch takes about a third of its packed time).")
    packed, scaling = _packed(results), _scaling(results)
    clauses = []
    if packed is not None:
        clauses.append(f"fastlstm's packed forward ran {fmt_ratio(packed['speedup_vs_padded'])} "
                       "as fast as its own padded forward of the same batch")
    if scaling is not None:
        clauses.append(_scaling_clause(scaling, "got", hidden=False))
    if clauses:
        text += " " + ", and ".join(clauses) + "."
    return "\n".join(lines) + "\n\n" + _wrap(text)


_VERSIONS = re.compile(r"torch [^\s,]+, ONNX Runtime [^\s,()]+")


def performance_versions(text: str, results: Results) -> str:
    """``text`` with the versions in the paragraph that introduces the docs table updated:
    ``torch 2.13.0, ONNX Runtime 1.32.0``, once between the heading above the table's start
    marker and the marker."""
    start = _marker(TABLE, "start")
    at = text.find(start)
    if at < 0:
        raise TablesError(f"no {start} marker")
    heading = text.rfind("\n#", 0, at) + 1
    found = _VERSIONS.findall(text, heading, at)
    if len(found) != 1:
        raise TablesError("the paragraph before the table in docs/performance.md should name "
                          f"the versions once ('torch X, ONNX Runtime Y'); found {len(found)}")
    torch, ort = _version(results, "torch", 3), _version(results, "onnxruntime", 3)
    new = f"torch {torch}, ONNX Runtime {ort}"
    return text[:heading] + _VERSIONS.sub(new, text[heading:at], count=1) + text[at:]


# ----------------------------------------------------------------- README.md
def readme_block(results: Results) -> str:
    """The summary table and the sentence after it, for README.md."""
    stream, stream128 = case(results, "stream step"), case(results, "stream step 128")
    cell, cell128 = case(results, "cell step"), case(results, "cell step 128")
    streaming, carried = case(results, "streaming step"), case(results, "one step carried")
    single, speech = case(results, "single sequence"), case(results, "speech encoder")
    proj, double = case(results, "projection"), case(results, "double")
    packed = case(results, "packed batch")
    ok = _ok(results)
    batched = [c for c in _forward(ok)
               if c["N"] > 1 and c["dtype"] == "float32" and not c["proj_size"]]
    if not batched:
        raise TablesError("the results have no batched float32 forward case (N > 1)")

    def row(label: str, torch: str, ort: str) -> str:
        return f"| {label} | {torch} | {ort} |"

    def vs(c: Case, lib: str) -> str:
        return fmt_ratio(c.get(f"speedup_vs_{lib}"))

    def two(a: Case, b: Case, lib: str) -> str:
        return _pair(vs(a, lib), vs(b, lib))

    def fast(c: Case) -> Optional[float]:
        return (c.get("time_s") or {}).get("fastlstm")

    layers = f"{speech['layers']} layer{'s' if speech['layers'] != 1 else ''}"
    if speech["bidirectional"]:
        layers += ", bidirectional"
    span = re.search(r"(\d+)-(\d+)%", packed.get("extra", ""))
    mean = f", mean length {(int(span[1]) + int(span[2])) // 2}%" if span else ""
    vs_torch = _speedups(ok, "speedup_vs_torch")
    forward = _speedups(_forward(ok), "speedup_vs_torch")
    vs_ort = _speedups(ok, "speedup_vs_onnxruntime")
    forward_ort = _speedups(_forward(ok), "speedup_vs_onnxruntime")
    lines = [
        row("case", f"vs torch {_version(results, 'torch', 2)}",
            f"vs ONNX Runtime {_version(results, 'onnxruntime', 2)}"),
        "|---|---:|---:|",
        row(f"streaming step (N={streaming['N']}, L={streaming['L']}, H={streaming['H']})",
            vs(streaming, "torch"), vs(streaming, "onnxruntime")),
        row("one step with carried (h, c)", vs(carried, "torch"), vs(carried, "onnxruntime")),
        row(f"`Stream` step vs torch's `LSTMCell` step, H={stream['H']} / H={stream128['H']} "
            f"({_times_pair(fast(stream), fast(stream128))})",
            two(stream, stream128, "torch"), two(stream, stream128, "onnxruntime")),
        row(f"`LSTMCell` step, H={cell['H']} / H={cell128['H']} "
            f"({_times_pair(fast(cell), fast(cell128))})",
            two(cell, cell128, "torch"), two(cell, cell128, "onnxruntime")),
        row(f"packed batch (N={packed['N']}, L<={packed['L']}{mean})",
            f"{vs(packed, 'torch')} torch packed", vs(packed, "onnxruntime")),
        row(f"single sequence (N={single['N']}, L={single['L']}, H={single['H']})",
            vs(single, "torch"), vs(single, "onnxruntime")),
        row(f"speech encoder ({layers})", vs(speech, "torch"), vs(speech, "onnxruntime")),
        row(f"batched (N={_int_range(c['N'] for c in batched)}, "
            f"H={_int_range(c['H'] for c in batched)})",
            fmt_range([c.get("speedup_vs_torch") for c in batched]),
            fmt_range([c.get("speedup_vs_onnxruntime") for c in batched])),
        row(f"proj_size={proj['proj_size']}", vs(proj, "torch"), vs(proj, "onnxruntime")),
        row(double["dtype"], vs(double, "torch"), vs(double, "onnxruntime")),
        row(f"geometric mean of all {len(vs_torch)} cases ({len(forward)} forward cases)",
            f"{fmt_ratio(geomean(vs_torch))} ({fmt_ratio(geomean(forward))})",
            f"{fmt_ratio(geomean(vs_ort))} ({fmt_ratio(geomean(forward_ort))})"),
    ]
    clauses = []
    if packed.get("speedup_vs_padded") is not None:
        clauses.append(f"fastlstm's packed forward of that batch runs "
                       f"{fmt_ratio(packed['speedup_vs_padded'])} as fast as its own padded "
                       "forward")
    scaling = _scaling(results)
    if scaling is not None:
        clauses.append(_scaling_clause(scaling, "get", hidden=True))
    block = "\n".join(lines)
    if clauses:
        block += "\n\n" + _wrap(", and ".join(clauses) + ".")
    return block


# ----------------------------------------------------------------- markers
def _marker(name: str, end: str) -> str:
    return f"<!-- bench:{name}:{end} -->"


def replace_block(text: str, name: str, block: str, where: str = "the file") -> str:
    """``text`` with the lines between the ``name`` markers replaced by ``block``.

    The markers stay on their own lines, each with a blank line between it and the block.
    TablesError if a marker is missing, repeated, not on a line of its own, or the end
    marker comes first.
    """
    start, end = _marker(name, "start"), _marker(name, "end")
    for marker in (start, end):
        count = text.count(marker)
        if count != 1:
            what = f"no {marker} marker" if count == 0 else f"{count} {marker} markers"
            raise TablesError(f"{where}: {what} (exactly one is needed, on a "
                              f"line of its own, around the generated text: {start} ... {end})")
        if not re.search(rf"^{re.escape(marker)}$", text, flags=re.M):
            raise TablesError(f"{where}: {marker} must be on a line of its own")
    i, j = text.index(start) + len(start), text.index(end)
    if j < i:
        raise TablesError(f"{where}: {end} comes before {start}")
    return text[:i] + "\n\n" + block.strip("\n") + "\n\n" + text[j:]


def update(readme: str, performance: str, results: Results) -> Tuple[str, str]:
    """(README.md, docs/performance.md) with their generated text made from ``results``."""
    new_readme = replace_block(readme, SUMMARY, readme_block(results), "README.md")
    new_performance = replace_block(performance, TABLE, performance_block(results),
                                    "docs/performance.md")
    return new_readme, performance_versions(new_performance, results)


# ----------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate the benchmark tables of README.md and docs/performance.md from "
                    "a results JSON of `fastlstm bench --json`. Without --write or --check, "
                    "print the generated blocks.")
    parser.add_argument("results", help="the JSON, e.g. benchmarks/results/default.json")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true",
                      help="replace the text between the markers in both files")
    mode.add_argument("--check", action="store_true",
                      help="exit with status 1 if either file differs from what --write writes")
    parser.add_argument("--readme", type=Path, default=README, help="default: %(default)s")
    parser.add_argument("--performance", type=Path, default=PERFORMANCE,
                        help="default: %(default)s")
    args = parser.parse_args(argv)
    try:
        results = load(args.results)
        if not (args.write or args.check):
            sys.stdout.write(f"{_marker(SUMMARY, 'start')}\n\n{readme_block(results)}\n\n"
                             f"{_marker(SUMMARY, 'end')}\n\n{_marker(TABLE, 'start')}\n\n"
                             f"{performance_block(results)}\n\n{_marker(TABLE, 'end')}\n")
            return 0
        files = (args.readme, args.performance)
        old = [p.read_text(encoding="utf-8") for p in files]
        new = update(old[0], old[1], results)
    except (OSError, ValueError) as exc:  # TablesError, JSON errors, a missing file
        print(f"tables.py: error: {exc}", file=sys.stderr)
        return 2
    stale = [p for p, o, n in zip(files, old, new) if o != n]
    if args.check:
        for p in stale:
            print(f"{p}: differs from the tables of {args.results}", file=sys.stderr)
        return 1 if stale else 0
    for p, o, n in zip(files, old, new):
        if o != n:
            p.write_text(n, encoding="utf-8")
        print(f"{p}: {'updated' if o != n else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
