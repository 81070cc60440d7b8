"""``fastlstm bench`` and the ``fastlstm`` command line: the benchmark on tiny shapes
(in-process and as ``python -m fastlstm``), its JSON and Markdown, the ONNX graph
builder against torch, the case grid and ``--shape`` parsing, and CLI errors.

ONNX Runtime and OpenVINO are optional: their tests skip without them, except in CI
(``CI=true``), where a missing onnx/onnxruntime or openvino fails them (as a missing torch
does, see conftest).
"""

import argparse
import copy
import importlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import IN_CI

import fastlstm
from fastlstm import cli
from fastlstm._bench.cases import DEFAULT_GRID, FULL_GRID, Case, parse_shape, select_cases
from fastlstm._bench.command import run_case
from fastlstm._bench.report import Progress, contention_lines
from fastlstm._bench.timing import settle, time_interleaved

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--budget", "0.03", "--blocks", "3", "--pause", "0", "--peak-size", "64"]


def _import_ort():
    try:
        importlib.import_module("onnx")
        return importlib.import_module("onnxruntime")
    except ImportError:
        return None


_ORT = _import_ort()


def _import_openvino():
    try:
        return importlib.import_module("openvino")
    except ImportError:
        return None


_OPENVINO = _import_openvino()


@pytest.fixture(scope="session")
def ort():
    """onnxruntime; skips without it, fails without it in CI (``CI=true``)."""
    if _ORT is None:
        if IN_CI:
            pytest.fail("onnx and onnxruntime are required in CI (CI=true): "
                        "pip install onnx onnxruntime")
        pytest.skip("onnxruntime is not installed")
    return _ORT


@pytest.fixture(scope="session")
def openvino():
    """openvino; skips without it, fails without it in CI (``CI=true``)."""
    if _OPENVINO is None:
        if IN_CI:
            pytest.fail("openvino is required in CI (CI=true): pip install openvino")
        pytest.skip("openvino is not installed")
    return _OPENVINO


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run_python(code_or_args, **kwargs):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=_env(), timeout=120, cwd=ROOT, **kwargs)


# ------------------------------------------------------------ the benchmark
CASE_FIELDS = {
    "name", "slug", "N", "L", "I", "H", "layers", "bidirectional", "proj_size", "dtype",
    "shape", "extra", "flops", "status", "note", "tolerance", "check_passed", "max_abs_diff",
    "time_s", "block_s", "reps_per_block", "gflops", "peak_fraction", "speedup_vs_torch",
    "speedup_vs_onnxruntime", "onnxruntime_note", "peak_memory_mib", "peak_memory_total_mib",
    "peak_memory_note", "kind", "padded_time_s", "speedup_vs_padded", "speedup_vs_openvino",
    "openvino_note", "team_windows", "contended_windows",
}


def test_bench_in_process_json_and_markdown(torch, tmp_path, capsys):
    threads_before = fastlstm.get_num_threads()
    torch_threads_before = torch.get_num_threads()
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    status = cli.main(["bench", "--shape", "2,3,8,16,2,yes", "--shape", "3,2,8,8,1,no,0,f64",
                       "--threads", "1", *TINY, "--json", str(out_json),
                       "--markdown", str(out_md)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "geometric mean speedup" in captured.out
    assert "\r" not in captured.err  # no progress bar when stderr is not a TTY
    assert fastlstm.get_num_threads() == threads_before
    assert torch.get_num_threads() == torch_threads_before

    report = json.loads(out_json.read_text())
    assert report["schema"] == 1 and report["grid"] == "custom"
    assert report["command"][:2] == ["fastlstm", "bench"]
    assert {"cpu", "simd", "threads", "usable_cpus"} <= set(report["machine"])
    assert report["machine"]["threads"] == report["settings"]["threads"] == 1
    assert {"fastlstm", "numpy", "scipy", "torch", "onnxruntime", "blas"} <= set(
        report["versions"])
    assert report["versions"]["torch"] == torch.__version__
    assert "2*4H*(I_layer + R)*N*L" in report["flops_formula"]
    for dtype in ("float32", "float64"):
        assert report["peak_gflops"][dtype]["best"] > 0
        assert "torch.mm" in report["peak_gflops"][dtype]
    assert report["summary"]["failed"] == []
    assert report["summary"]["geomean_speedup_vs_torch"] > 0

    cases = report["cases"]
    assert [c["name"] for c in cases] == ["shape 2,3,8,16,2,yes", "shape 3,2,8,8,1,no,0,f64"]
    assert [c["extra"] for c in cases] == ["2 layers bidir", "float64"]
    for case in cases:
        assert CASE_FIELDS <= set(case)
        assert case["status"] == "ok" and case["check_passed"]
        assert case["max_abs_diff"]["fastlstm"] <= case["tolerance"]
        assert case["time_s"]["fastlstm"] > 0 and case["time_s"]["torch"] > 0
        assert len(case["block_s"]["fastlstm"]) >= 3
        assert case["gflops"]["fastlstm"] == pytest.approx(
            case["flops"] / case["time_s"]["fastlstm"] / 1e9)
        assert case["speedup_vs_torch"] == pytest.approx(
            case["time_s"]["torch"] / case["time_s"]["fastlstm"])
        # The reference is never below what a case reaches (the tiny 64^3 GEMM here can
        # lose to a case, and is then raised to it).
        assert 0 < case["peak_fraction"] <= 1
        assert max(r for r in case["gflops"].values() if r is not None) <= \
            report["peak_gflops"][case["dtype"]]["best"]
        # Without --memory: no memory measured.
        assert case["peak_memory_mib"] == {"fastlstm": None, "torch": None, "onnxruntime": None}
        assert case["peak_memory_total_mib"] == case["peak_memory_mib"]
        assert case["peak_memory_note"] is None
    assert report["settings"]["memory"] is False and report["settings"]["memory_method"] is None
    assert report["summary"]["peak_memory_le_torch"] is None
    assert report["summary"]["peak_memory_compared"] is None
    assert "peak memory" not in captured.out
    assert cases[0]["tolerance"] == 1e-4 and cases[1]["tolerance"] == 1e-10
    assert cases[0]["flops"] == Case("", 2, 3, 8, 16, 2, True).flops
    # ONNX Runtime: timed and checked in float32, n/a (no double LSTM) in float64.
    if _ORT is not None:
        assert cases[0]["time_s"]["onnxruntime"] > 0
        assert cases[0]["max_abs_diff"]["onnxruntime"] <= 1e-4
        assert cases[0]["speedup_vs_onnxruntime"] > 0
        assert report["peak_gflops"]["float32"]["onnxruntime.MatMul"] > 0
    assert report["peak_gflops"]["float32"]["fastlstm.matmul"] > 0
    assert cases[1]["time_s"]["onnxruntime"] is None and cases[1]["onnxruntime_note"]
    # OpenVINO: timed and checked in float32, not compared in float64.
    assert report["settings"]["openvino"] is (_OPENVINO is not None)
    if _OPENVINO is not None:
        assert cases[0]["time_s"]["openvino"] > 0 and cases[0]["openvino_note"] is None
        assert cases[0]["max_abs_diff"]["openvino"] <= 1e-4
        assert report["summary"]["geomean_speedup_vs_openvino"] == pytest.approx(
            cases[0]["speedup_vs_openvino"])
    assert cases[1]["time_s"]["openvino"] is None and cases[1]["openvino_note"]

    markdown = out_md.read_text()
    assert markdown.startswith("# fastlstm benchmark")
    assert "| case | N,L,I,H |" in markdown
    assert "| shape 2,3,8,16,2,yes | 2,3,8,16 | 2 layers bidir |" in markdown
    assert "peak float32 (measured reference)" in markdown and "Geometric mean speedup" in markdown
    assert "MiB fast" not in markdown and "Peak memory" not in markdown


# --------------------------------------------------------------- peak memory
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="peak memory is measured on Linux only")


@linux_only
@pytest.mark.parametrize("lib", ["fastlstm", "torch"])
def test_memory_subprocess_tiny_case(torch, lib):
    from fastlstm._bench.memory import measure_in_subprocess

    case = Case("tiny", 2, 3, 8, 16, layers=2, bidirectional=True).as_dict()
    result = measure_in_subprocess(lib, case, threads=1, seed=0, timeout=60)
    assert result.get("error") is None, result
    assert result["lib"] == lib
    assert result["peak_mib"] >= 0 and result["total_mib"] >= result["peak_mib"]
    assert result["file_mib"] >= 0 and result["baseline_mib"] > 0
    assert result["peak_rss_mib"] >= result["baseline_mib"]
    # A forward of this size needs well under 64 MiB besides the libraries' code.
    assert result["peak_mib"] < 64


def test_memory_subprocess_reports_failures_as_one_line():
    from fastlstm._bench import memory as _bench_memory

    result = _bench_memory.measure_in_subprocess(
        "no-such-library", Case("tiny", 1, 2, 4, 4).as_dict(), timeout=60)
    if not _bench_memory.AVAILABLE:
        assert result == {"lib": "no-such-library", "peak_mib": None,
                          "error": _bench_memory.UNAVAILABLE_NOTE}
        return
    assert result["peak_mib"] is None
    assert "unknown library" in result["error"] and "\n" not in result["error"]


def test_memory_not_measured_off_linux(monkeypatch):
    from fastlstm._bench import command as _bench
    from fastlstm._bench import memory as _bench_memory

    monkeypatch.setattr(_bench_memory, "AVAILABLE", False)
    record = {"peak_memory_mib": {"fastlstm": None, "torch": None},
              "peak_memory_total_mib": {"fastlstm": None, "torch": None}}
    _bench.measure_memory(record, Case("tiny", 1, 2, 4, 4), ["fastlstm", "torch"], 1, 0)
    assert record["peak_memory_mib"] == {"fastlstm": None, "torch": None}
    assert record["peak_memory_note"] == "peak memory is measured on Linux only"


@linux_only
def test_bench_memory_fills_json_and_markdown(torch, tmp_path, capsys):
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    status = cli.main(["bench", "--shape", "2,3,8,16", "--memory", "--threads", "1", *TINY,
                       "--peak-size", "0", "--json", str(out_json), "--markdown", str(out_md)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "MiB fast" in captured.out and "MiB torch" in captured.out
    assert "peak memory: fastlstm <= torch in " in captured.out
    report = json.loads(out_json.read_text())
    assert report["settings"]["memory"] is True and "fresh process" in report["settings"][
        "memory_method"]
    (case,) = report["cases"]
    mem, total = case["peak_memory_mib"], case["peak_memory_total_mib"]
    assert case["peak_memory_note"] is None
    for lib in ("fastlstm", "torch"):
        assert mem[lib] >= 0 and total[lib] >= mem[lib]
    if _ORT is not None:
        assert mem["onnxruntime"] >= 0
    summary = report["summary"]
    assert summary["peak_memory_compared"] == 1
    assert summary["peak_memory_le_torch"] == int(mem["fastlstm"] <= mem["torch"])
    markdown = out_md.read_text()
    assert "| MiB fast | MiB torch | MiB ORT |" in markdown
    assert "- peak memory (MiB columns): " in markdown
    assert "Peak memory: fastlstm <= torch in " in markdown


def test_python_m_fastlstm_bench(torch, tmp_path):
    out_json = tmp_path / "b.json"
    proc = _run_python(["-m", "fastlstm", "bench", "--shape", "1,2,4,4", *TINY,
                        "--peak-size", "0", "--json", str(out_json)])
    assert proc.returncode == 0, proc.stderr
    assert "vs torch" in proc.stdout and "geometric mean speedup" in proc.stdout
    assert "\r" not in proc.stderr
    report = json.loads(out_json.read_text())
    (case,) = report["cases"]
    assert case["check_passed"] and case["status"] == "ok"
    assert report["peak_gflops"] is None and case["peak_fraction"] is None


def test_check_failure_is_not_timed(torch, monkeypatch, capsys):
    """A case that disagrees with torch is reported, not timed, and the exit status is 1."""
    from fastlstm._bench import command as _bench

    monkeypatch.setitem(_bench.TOLERANCE, "float32", -1.0)
    status = cli.main(["bench", "--shape", "1,2,4,4", *TINY, "--peak-size", "0", "--quiet"])
    captured = capsys.readouterr()
    assert status == 1
    assert "NOT TIMED" in captured.out
    assert "1 case(s) failed" in captured.err


def test_import_fastlstm_does_not_import_torch_or_onnx():
    proc = _run_python(
        "import sys, fastlstm, fastlstm.cli, fastlstm._bench.command, fastlstm._bench.onnx_graph\n"
        "assert fastlstm.cli.main(['bench', '--list']) == 0\n"
        "bad = {'torch', 'onnx', 'onnxruntime', 'matplotlib'} & set(sys.modules)\n"
        "assert not bad, bad\n")
    assert proc.returncode == 0, proc.stderr
    assert "streaming-step" in proc.stdout


def test_benchmarks_script_is_the_same_command():
    proc = _run_python(["benchmarks/bench.py", "--list"])
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == [
        "-".join(c.name.split()) for c in FULL_GRID]


# ---------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("argv, words", [
    (["bench", "--cases", "no-such-case"], "unknown case 'no-such-case'"),
    (["bench", "--cases", "batch,nope"], "unknown case 'nope'"),
    (["bench", "--shape", "1,2,3"], "expected N,L,I,H"),
    (["bench", "--shape", "1,2,x,4"], "I must be an integer"),
    (["bench", "--shape", "1,2,3,4,1,maybe"], "bidir"),
    (["bench", "--shape", "1,2,3,4,1,no,4"], "proj must be in [0, H)"),
    (["bench", "--shape", "1,2,3,4,1,no,0,float16"], "dtype"),
    (["bench", "--threads", "0"], "positive integer"),
    (["bench", "--budget", "-1"], "positive number"),
    (["bench", "--seed", "-1"], "an integer >= 0"),  # refused before a run, not during it
    (["bench", "--seed", str(2**63)], "below 2**63"),
    (["bench", "--frobnicate"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
    ([], "a command is required"),
])
def test_cli_errors_are_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("fastlstm") and words in line


def test_bench_without_torch_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # 'import torch' raises ImportError
    assert cli.main(["bench", "--shape", "1,2,4,4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "torch is not installed" in err


def test_plot_without_matplotlib_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["bench", "--shape", "1,2,4,4", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "matplotlib" in err


def test_output_directory_must_exist(capsys, tmp_path):
    assert cli.main(["bench", "--json", str(tmp_path / "missing" / "b.json")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_output_path_through_a_dangling_link_keeps_the_link(tmp_path):
    from fastlstm._bench.command import _check_output_path

    (tmp_path / "out").mkdir()
    link = tmp_path / "b.json"
    link.symlink_to(tmp_path / "out" / "t.json")
    _check_output_path("--json", str(link))
    assert link.is_symlink() and not (tmp_path / "out" / "t.json").exists()


def test_list_columns_line_up(capsys):
    assert cli.main(["bench", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(FULL_GRID) + 1
    # the last column starts at the same place on every line, past the longest extra
    assert len({line.rindex(" ") for line in lines}) == 1
    assert all(line.split()[-1] in ("grid", "default", "full") for line in lines)


def test_seq2seq_batches_are_each_measured_once():
    from fastlstm._bench.command import _batches

    assert _batches("1, 300,1,2") == (1, 300, 2)


def test_threads_past_the_usable_cpus_count_as_them_for_every_library(monkeypatch, capsys):
    from fastlstm import _threads
    from fastlstm._bench.command import _bench_threads

    monkeypatch.setattr(_threads, "_cap", lambda: 2)
    assert _bench_threads(1) == 1 and _bench_threads(2) == 2
    assert capsys.readouterr().err == ""
    assert _bench_threads(256) == 2
    assert "--threads 256: this process may use 2 CPUs" in capsys.readouterr().err
    assert _bench_threads(None) == fastlstm.get_num_threads()


def test_a_broken_onnxruntime_is_left_out_with_the_reason(monkeypatch):
    from fastlstm._bench.command import _ort_available

    class Broken:  # finds onnxruntime, whose import fails as a broken build's does
        def find_spec(self, name, path=None, target=None):
            if name == "onnxruntime":
                raise OSError("libonnxruntime.so: cannot open")
            return None

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken()] + sys.meta_path)
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is not installed")
    assert _ort_available() == (
        False, "onnxruntime cannot be imported: OSError: libonnxruntime.so: cannot open")


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "bench" in out and "COMMAND --help" in out
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--shape" in out and "2*4H*(I_layer" in out


# ------------------------------------------------------------ cases and parts
def test_default_grid_is_the_documented_one():
    table = [(c.name, c.N, c.L, c.I, c.H, c.layers, c.bidirectional, c.proj_size, c.dtype)
             for c in DEFAULT_GRID if c.kind == "forward"]
    assert table == [
        ("streaming step", 1, 1, 256, 256, 1, False, 0, "float32"),
        ("single sequence", 1, 100, 256, 256, 1, False, 0, "float32"),
        ("long sequence", 1, 512, 512, 512, 1, False, 0, "float32"),
        ("small batch", 16, 100, 256, 256, 1, False, 0, "float32"),
        ("batch", 64, 100, 512, 512, 1, False, 0, "float32"),
        ("large", 64, 200, 1024, 1024, 1, False, 0, "float32"),
        ("bidirectional stack", 16, 100, 256, 256, 2, True, 0, "float32"),
        ("speech encoder", 1, 100, 80, 256, 3, True, 0, "float32"),
        ("many short", 256, 50, 128, 128, 1, False, 0, "float32"),
        ("projection", 16, 100, 256, 512, 1, False, 128, "float32"),
        ("double", 16, 100, 256, 256, 1, False, 0, "float64"),
    ]
    others = [(c.name, c.kind, c.N, c.L, c.I, c.H) for c in DEFAULT_GRID if c.kind != "forward"]
    assert others == [
        ("one step carried", "carried", 1, 1, 256, 256),
        ("cell step", "cell", 1, 1, 256, 256),
        ("cell step 128", "cell", 1, 1, 128, 128),
        ("stream step", "stream", 1, 1, 256, 256),
        ("stream step 128", "stream", 1, 1, 128, 128),
        ("packed batch", "packed", 16, 100, 256, 256),
    ]
    assert FULL_GRID[:len(DEFAULT_GRID)] == DEFAULT_GRID
    assert len({c.name for c in FULL_GRID}) == len(FULL_GRID)


def test_packed_case_lengths():
    case = select_cases(["packed batch"])[0]
    lengths = case.lengths()
    assert len(lengths) == 16 and max(lengths) == 100 and min(lengths) == 44
    assert abs(np.mean(lengths) - 72) < 1
    assert case.flops == Case("", 1, sum(lengths), 256, 256).flops
    assert Case("", 4, 10, 8, 8).lengths() == [10] * 4


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("case", [
    Case("carried", 2, 1, 8, 16, kind="carried"),
    Case("carried stack", 2, 3, 8, 16, layers=2, bidirectional=True, proj_size=4,
         kind="carried"),
    Case("cell", 3, 1, 8, 16, kind="cell"),
    Case("cell double", 1, 1, 8, 16, dtype="float64", kind="cell"),
    Case("stream", 3, 1, 8, 16, kind="stream"),
    Case("packed", 5, 7, 8, 16, bidirectional=True, kind="packed"),
], ids=lambda c: c.name)
def test_case_kinds_are_checked_and_timed(torch, case):
    args = argparse.Namespace(budget=0.03, blocks=3, repeat=None, pause=0.0, seed=0,
                              memory=False)
    record = run_case(case, torch, 1, args, use_ort=_ORT is not None,
                      use_openvino=_OPENVINO is not None)
    assert record["status"] == "ok" and record["check_passed"], record["note"]
    assert record["kind"] == case.kind
    assert record["max_abs_diff"]["fastlstm"] <= record["tolerance"]
    assert record["time_s"]["fastlstm"] > 0 and record["time_s"]["torch"] > 0
    if case.kind == "packed":
        assert record["padded_time_s"] > 0
        assert record["speedup_vs_padded"] == pytest.approx(
            record["padded_time_s"] / record["time_s"]["fastlstm"])
    else:
        assert record["padded_time_s"] is None and record["speedup_vs_padded"] is None
    if _ORT is not None:
        if case.kind == "carried" and not case.proj_size:
            assert record["max_abs_diff"]["onnxruntime"] <= 1e-4
            assert record["time_s"]["onnxruntime"] > 0
        else:
            assert record["time_s"]["onnxruntime"] is None and record["onnxruntime_note"]
    if _OPENVINO is not None:
        if case.kind == "carried" and not case.proj_size:
            assert record["max_abs_diff"]["openvino"] <= 1e-4
            assert record["time_s"]["openvino"] > 0
        elif case.proj_size:
            assert record["openvino_note"] == "OpenVINO's converter has no LSTM projection"
        else:
            assert record["openvino_note"] == f"not compared for {case.kind} cases"
            assert record["max_abs_diff"]["openvino"] is None
        if record["openvino_note"] is not None:
            assert record["time_s"]["openvino"] is None
            assert record["speedup_vs_openvino"] is None


# ----------------------------------------------------------------- OpenVINO
def test_bench_openvino_column(torch, openvino, tmp_path, capsys):
    """OpenVINO (float32) is a peer of the case grid: timed where it matches torch, in the
    table, the JSON and the Markdown, with its geometric mean."""
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    status = cli.main(["bench", "--shape", "2,3,8,16", "--threads", "1", *TINY,
                       "--peak-size", "0", "--no-onnx", "--json", str(out_json),
                       "--markdown", str(out_md)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    header = captured.out.splitlines()[0]
    assert f"openvino {openvino.__version__.split('-')[0]}" in header
    assert "(ONNX Runtime n/a: disabled by --no-onnx)" in header
    assert " ".join(captured.out.splitlines()[1].split()[3:]) == (
        "fastlstm torch ORT OV GFLOP/s peak vs torch vs ORT vs OV diff ORT diff OV diff")
    assert "x vs OpenVINO" in captured.out

    report = json.loads(out_json.read_text())
    assert report["settings"]["openvino"] is True and report["settings"]["openvino_note"] is None
    assert report["versions"]["openvino"] == openvino.__version__
    (case,) = report["cases"]
    assert case["openvino_note"] is None
    assert 0 <= case["max_abs_diff"]["openvino"] <= case["tolerance"]
    assert case["time_s"]["openvino"] > 0 and len(case["block_s"]["openvino"]) >= 3
    assert case["gflops"]["openvino"] == pytest.approx(
        case["flops"] / case["time_s"]["openvino"] / 1e9)
    assert case["speedup_vs_openvino"] == pytest.approx(
        case["time_s"]["openvino"] / case["time_s"]["fastlstm"])
    assert report["summary"]["geomean_speedup_vs_openvino"] == pytest.approx(
        case["speedup_vs_openvino"])
    # Peak memory is measured for the libraries of memory.py only: OpenVINO has no entry.
    assert set(case["peak_memory_mib"]) == {"fastlstm", "torch", "onnxruntime"}

    markdown = out_md.read_text()
    assert "| fastlstm | torch | ORT | OV | GFLOP/s |" in markdown
    assert "| vs torch | vs ORT | vs OV | diff | ORT diff | OV diff |" in markdown
    assert f"openvino {openvino.__version__}" in markdown
    assert f"n/a vs ONNX Runtime, {case['speedup_vs_openvino']:.2f}x vs OpenVINO." in markdown


def test_openvino_that_disagrees_with_torch_is_not_timed(torch, openvino, monkeypatch):
    """OpenVINO is timed only within the case's tolerance of torch: a model converted from
    other weights is reported with its difference, and fastlstm is still timed."""
    from fastlstm._bench import precision as _precision

    real = _precision.compile_openvino

    def other_weights(openvino, model, example, threads, precision):
        assert precision == "f32" and threads == 1
        wrong = copy.deepcopy(model)
        with torch.no_grad():
            wrong.bias_ih_l0 += 0.5
        return real(openvino, wrong, example, threads, precision)

    monkeypatch.setattr(_precision, "compile_openvino", other_weights)
    args = argparse.Namespace(budget=0.03, blocks=3, repeat=None, pause=0.0, seed=0,
                              memory=False)
    record = run_case(Case("tiny", 2, 3, 8, 16), torch, 1, args, use_ort=False,
                      use_openvino=True)
    assert record["status"] == "ok" and record["time_s"]["fastlstm"] > 0
    assert record["max_abs_diff"]["openvino"] > 1e-2
    assert record["openvino_note"] == (
        f"OpenVINO differs from torch by {record['max_abs_diff']['openvino']:.1e}")
    assert record["time_s"]["openvino"] is None and record["speedup_vs_openvino"] is None


class _InferSpy:
    """A compiled OpenVINO model whose requests record the keywords of each ``infer``."""

    def __init__(self, compiled, calls):
        self._compiled, self._calls = compiled, calls

    def __getattr__(self, name):
        return getattr(self._compiled, name)

    def create_infer_request(self):
        request, calls = self._compiled.create_infer_request(), self._calls

        class Request:
            def infer(self, *args, **kwargs):
                calls.append(kwargs)
                return request.infer(*args, **kwargs)

        return Request()


def test_openvino_reads_its_timed_inputs_in_place(torch, openvino, monkeypatch):
    """The timed calls share the input arrays, as the other libraries read theirs (a copy
    into new tensors at every call cost OpenVINO's one-step calls 15-45%)."""
    from fastlstm._bench import precision as _precision

    real, calls = _precision.compile_openvino, []
    monkeypatch.setattr(_precision, "compile_openvino",
                        lambda *a: _InferSpy(real(*a), calls))
    args = argparse.Namespace(budget=0.03, blocks=3, repeat=None, pause=0.0, seed=0,
                              memory=False)
    record = run_case(Case("tiny", 2, 3, 8, 16), torch, 1, args, use_ort=False,
                      use_openvino=True)
    assert record["status"] == "ok" and record["time_s"]["openvino"] > 0
    assert len(calls) > 3 and all(kw == {"share_inputs": True} for kw in calls[1:])


@pytest.mark.parametrize("how, note", [
    ("flag", "disabled by --no-openvino"),
    ("missing", "openvino is not installed"),
    ("broken", "openvino cannot be imported: OSError: libopenvino.so: cannot open"),
])
def test_bench_without_openvino_notes_why(torch, monkeypatch, tmp_path, capsys, how, note):
    """--no-openvino, a missing and a broken openvino: OpenVINO is n/a with the reason,
    never an error."""
    from fastlstm._bench import precision as _precision

    argv = ["bench", "--shape", "1,2,4,4", "--threads", "1", *TINY, "--peak-size", "0",
            "--no-onnx", "--json", str(tmp_path / "b.json"), "--markdown",
            str(tmp_path / "b.md")]
    if how == "flag":
        argv.append("--no-openvino")
        # The flag leaves OpenVINO out before anything imports it.
        monkeypatch.setattr(_precision, "import_openvino", lambda: pytest.fail("imported"))
    elif how == "missing":
        monkeypatch.setitem(sys.modules, "openvino", None)  # 'import openvino' fails
    else:
        monkeypatch.setattr(_precision, "import_openvino",
                            lambda: (None, "OSError: libopenvino.so: cannot open"))
    status = cli.main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"(OpenVINO n/a: {note})" in captured.out.splitlines()[0]
    assert "n/a vs OpenVINO" in captured.out
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["openvino"] is False
    assert report["settings"]["openvino_note"] == note
    (case,) = report["cases"]
    assert case["status"] == "ok" and case["openvino_note"] == note
    assert case["time_s"]["openvino"] is None and case["speedup_vs_openvino"] is None
    assert report["summary"]["geomean_speedup_vs_openvino"] is None
    assert f"OpenVINO n/a: {note}." in (tmp_path / "b.md").read_text()
    versions = next(line for line in (tmp_path / "b.md").read_text().splitlines()
                    if line.startswith("- versions:"))
    assert "not installed" not in versions  # None is not imported, whatever the reason


def test_failed_case_row_puts_fastlstm_diff_in_the_diff_column():
    from fastlstm._bench.report import HEADERS, Table, _row_cells

    record = {"name": "tiny", "shape": "1,2,4,4", "extra": "", "status": "check_failed",
              "note": "NOT TIMED: fastlstm differs", "max_abs_diff": {"fastlstm": 2e-3},
              "time_s": {}}
    cells = _row_cells(record)
    assert len(cells) == len(HEADERS) and cells[HEADERS.index("diff")] == "2.0e-03"
    assert [c for c in cells[4:] if c] == ["2.0e-03"]
    stream = io.StringIO()
    Table(stream, [Case("tiny", 1, 2, 4, 4)]).row(record)
    assert stream.getvalue().rstrip().endswith("NOT TIMED: fastlstm differs  "
                                               "(fastlstm diff 2.0e-03)")


def test_case_kind_check_catches_a_wrong_answer(torch, monkeypatch):
    """The packed case checks fastlstm's packed output against torch's: a wrong
    packed result is not timed."""
    real = fastlstm.LSTM._forward_packed

    def wrong(self, input, hx):
        out, (h, c) = real(self, input, hx)
        return out._replace(data=out.data + 1), (h, c)

    monkeypatch.setattr(fastlstm.LSTM, "_forward_packed", wrong)
    args = argparse.Namespace(budget=0.03, blocks=3, repeat=None, pause=0.0, seed=0,
                              memory=False)
    record = run_case(Case("packed", 3, 4, 8, 8, kind="packed"), torch, 1, args, use_ort=False)
    assert record["status"] == "check_failed" and record["time_s"]["fastlstm"] is None


def test_flops_formula():
    # 2*4H*(I + H)*N*L for one layer, one direction.
    assert Case("", 2, 3, 5, 7).flops == 2 * 4 * 7 * (5 + 7) * 2 * 3
    # Second layer of a bidirectional stack reads 2H features; each direction counts.
    n, seq, i, h = 2, 3, 5, 7
    assert Case("", n, seq, i, h, 2, True).flops == 2 * (
        2 * 4 * h * (i + h) * n * seq + 2 * 4 * h * (2 * h + h) * n * seq)
    # Projection to R: the recurrence reads R features, plus 2*R*H*N*L for W_hr.
    r = 3
    assert Case("", n, seq, i, h, proj_size=r).flops == (
        2 * 4 * h * (i + r) * n * seq + 2 * r * h * n * seq)


def test_parse_shape():
    assert parse_shape("16,100,256,256") == Case("shape 16,100,256,256", 16, 100, 256, 256)
    case = parse_shape(" 4, 5, 6, 8, 2, yes, 3, double ")
    assert (case.layers, case.bidirectional, case.proj_size, case.dtype) == (
        2, True, 3, "float64")
    assert case.name == "shape 4,5,6,8,2,yes,3,double"
    assert case.extra == "2 layers bidir proj 3 float64"
    assert parse_shape("1,1,1,1,1,0").bidirectional is False
    for bad in ("", "1,2,3", "1,2,3,4,5,6,7,8,9", "0,1,1,1", "1,1,1,1,0", "a,1,1,1"):
        with pytest.raises(ValueError, match="invalid shape"):
            parse_shape(bad)


def test_select_cases_by_name():
    chosen = select_cases(["Small Batch", "speech_encoder", "double-batch", "small-batch"])
    assert [c.name for c in chosen] == ["small batch", "speech encoder", "double batch"]
    with pytest.raises(ValueError, match="unknown case"):
        select_cases(["smallbatch"])


def test_time_interleaved_alternates_blocks():
    calls = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timings = time_interleaved(runners, budget=0.01, blocks=4, repeat=2, pause=0)
    assert set(timings) == {"a", "b"}
    for timing in timings.values():
        assert len(timing.block_s) == 4 and timing.reps == 2 and timing.median_s > 0
    timed = calls[-16:]  # after the warm-up: blocks of 2 calls, the order rotating
    assert timed == ["a", "a", "b", "b", "b", "b", "a", "a"] * 2


def test_settle_waits_for_busy_threads_of_the_process():
    """The pause after a block lasts until no thread of the process spins (as
    an idle thread pool does after a call), up to its limit; 0 is no pause."""
    start = time.perf_counter()
    settle(0)
    assert time.perf_counter() - start < 0.05

    # Idle: back after the pause and a slice or two.  In a process of its own: threads
    # that earlier tests left spinning in this one (torch's, BLAS's) would hold it up.
    code = ("import time; from fastlstm._bench.timing import settle; "
            "start = time.perf_counter(); settle(0.01, limit=2.0); "
            "print(time.perf_counter() - start)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert 0.01 <= float(res.stdout) < 1.0

    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [None for _ in iter(stop.is_set, True)])
    spinner.start()
    try:
        start = time.perf_counter()
        settle(0.01, limit=0.1)  # a busy thread: waits the whole limit
        assert time.perf_counter() - start >= 0.11
    finally:
        stop.set()
        spinner.join()


def test_progress_bar():
    stream = io.StringIO()
    Progress(4, enabled=False, stream=stream).show(1, "x")
    assert stream.getvalue() == ""
    bar = Progress(4, enabled=True, stream=stream)
    bar.show(2, "3/4 small batch: timing")
    assert stream.getvalue() == "\r[############            ] 3/4 small batch: timing"
    bar.clear()
    assert stream.getvalue().endswith("\r")


# ------------------------------------------------------- ONNX graph builder
ONNX_CONFIGS = {
    "unidirectional": {},
    "bidirectional": {"bidirectional": True},
    "2-layer": {"num_layers": 2},
    "2-layer-bidir-batch-first": {"num_layers": 2, "bidirectional": True,
                                  "batch_first": True},
    "no-bias": {"bias": False},
    "3-layer-bidir-no-bias": {"num_layers": 3, "bidirectional": True, "bias": False},
}


def _max_diff(result, ref):
    out, (h, c) = result
    return max(float(np.abs(np.asarray(a) - b.numpy()).max())
               for a, b in zip((out, h, c), (ref[0], *ref[1])))


@pytest.mark.parametrize("with_hx", [False, True], ids=["zero-state", "hx"])
@pytest.mark.parametrize("config", list(ONNX_CONFIGS), ids=list(ONNX_CONFIGS))
def test_onnx_graph_matches_torch(ort, torch, config, with_hx):
    from fastlstm._bench.onnx_graph import OrtLSTM

    kwargs = ONNX_CONFIGS[config]
    torch.manual_seed(0)
    module = torch.nn.LSTM(6, 5, **kwargs).eval()
    batch, seq = 3, 4
    x = torch.randn((batch, seq, 6) if module.batch_first else (seq, batch, 6))
    rows = module.num_layers * (2 if module.bidirectional else 1)
    hx = (torch.randn(rows, batch, 5), torch.randn(rows, batch, 5)) if with_hx else None
    with torch.no_grad():
        ref = module(x, hx)
    ort_lstm = OrtLSTM(module, threads=1, with_state=with_hx)
    result = ort_lstm(x.numpy(), None if hx is None else (hx[0].numpy(), hx[1].numpy()))
    assert result[0].shape == tuple(ref[0].shape)
    assert result[1][0].shape == tuple(ref[1][0].shape)
    assert _max_diff(result, ref) <= 1e-5


def test_onnx_graph_from_fastlstm_module(ort):
    from fastlstm._bench.onnx_graph import OrtLSTM

    module = fastlstm.LSTM(4, 6, num_layers=2, bidirectional=True, rng=1)
    x = np.random.default_rng(2).standard_normal((5, 2, 4)).astype(np.float32)
    out, (h, c) = OrtLSTM(module, threads=2)(x)
    ref_out, (ref_h, ref_c) = module(x)
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_onnx_graph_refuses_projection_and_state_without_inputs(ort):
    from fastlstm._bench.onnx_graph import OrtLSTM, lstm_to_onnx

    with pytest.raises(ValueError, match="no projection"):
        lstm_to_onnx(fastlstm.LSTM(4, 6, proj_size=2, rng=0))
    ort_lstm = OrtLSTM(fastlstm.LSTM(4, 6, rng=0))
    zeros = np.zeros((1, 2, 6), np.float32)
    with pytest.raises(ValueError, match="with_state"):
        ort_lstm(np.zeros((3, 2, 4), np.float32), (zeros, zeros))


def test_stream_scaling_measure_and_line(torch):
    from fastlstm._bench.streams import measure_stream_scaling, scaling_line

    threads_before = fastlstm.get_num_threads()
    result = measure_stream_scaling(torch, 2, hidden=8, steps=20, repeats=1)
    assert fastlstm.get_num_threads() == threads_before
    assert result["threads"] == 2 and result["hidden"] == 8
    for lib in ("fastlstm", "torch"):
        r = result[lib]
        assert r["step_s_one"] > 0 and r["step_s_all"] > 0
        assert r["scaling"] == pytest.approx(2 * r["step_s_one"] / r["step_s_all"])
    line = scaling_line(result)
    assert line.startswith("streams on 2 Python threads") and "ideal 2.00x" in line
    assert scaling_line(None) is None


def test_stream_case_check_catches_a_wrong_state(torch, monkeypatch):
    """The stream case checks the stream's (h, c) after one step from torch's state:
    a stream that ignored the state it was given would not be timed."""
    monkeypatch.setattr(fastlstm.Stream, "reset", lambda self, hx=None: None)
    args = argparse.Namespace(budget=0.03, blocks=3, repeat=None, pause=0.0, seed=0,
                              memory=False)
    record = run_case(Case("stream", 2, 1, 8, 8, kind="stream"), torch, 1, args, use_ort=False)
    assert record["status"] == "check_failed" and record["time_s"]["fastlstm"] is None


# --------------------------------------------------------------- the peak reference
def test_update_reference_takes_the_best_measurement_and_never_loses_to_a_case():
    from fastlstm._bench.command import update_reference

    peak = {"float32": {"torch.mm": 300.0, "scipy.sgemm": 250.0, "best": 300.0},
            "float64": {"torch.mm": 150.0, "best": 150.0}}
    again = {"float32": {"torch.mm": 280.0, "scipy.sgemm": 320.0},
             "float64": {"torch.mm": 140.0}}
    records = [
        {"name": "a", "dtype": "float32", "gflops": {"fastlstm": 330.0, "torch": 200.0,
                                                     "onnxruntime": None}},
        {"name": "b", "dtype": "float32", "gflops": {"fastlstm": 100.0, "torch": 340.0,
                                                     "onnxruntime": None}},
        {"name": "c", "dtype": "float64", "gflops": {"fastlstm": 75.0, "torch": 50.0,
                                                     "onnxruntime": None}},
    ]
    update_reference(peak, again, records)
    assert peak["float32"]["scipy.sgemm"] == 320.0 and peak["float32"]["torch.mm"] == 300.0
    # torch's rate in case b beat every GEMM: the reference is raised to it, and says so.
    assert peak["float32"]["best"] == 340.0 and peak["float32"]["raised_by"] == "b"
    assert peak["float64"]["best"] == 150.0 and "raised_by" not in peak["float64"]
    assert [r["peak_fraction"] for r in records] == pytest.approx([330 / 340, 100 / 340, 0.5])


def test_nominal_fma_peak_formula(monkeypatch):
    from fastlstm._bench import report as _bench_report

    monkeypatch.setattr(_bench_report, "_clock_ghz", lambda: (2.5, "test"))
    monkeypatch.setattr(_bench_report, "_cpuinfo_fields", lambda: {"vendor_id": "GenuineIntel"})
    nominal = _bench_report.nominal_fma_peak(2, "avx512")
    # 2 cores x 2.5 GHz x 16 float32 lanes x 2 FLOPs per FMA x 2 FMA units
    assert nominal["gflops"]["float32"] == pytest.approx(320.0)
    assert nominal["gflops"]["float64"] == pytest.approx(160.0)
    assert _bench_report.nominal_fma_peak(1, "avx2")["gflops"]["float32"] == pytest.approx(80.0)
    # Zen 4 runs 512-bit FMAs on two 256-bit units: one a cycle.
    monkeypatch.setattr(_bench_report, "_cpuinfo_fields", lambda: {
        "vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17"})
    assert _bench_report.nominal_fma_peak(2, "avx512")["gflops"]["float32"] == \
        pytest.approx(160.0)
    assert _bench_report.nominal_fma_peak(2, "avx512")["fma_units"] == 1
    assert _bench_report.nominal_fma_peak(1, "avx2")["gflops"]["float32"] == pytest.approx(80.0)
    monkeypatch.setattr(_bench_report, "_clock_ghz", lambda: None)
    assert _bench_report.nominal_fma_peak(2, "avx512") is None


def test_cpu_model_names_family_and_model(tmp_path):
    from fastlstm._bench import report as _bench_report

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                    "model\t\t: 17\nmodel name\t: AMD EPYC\n\nprocessor\t: 1\n"
                    "cpu family\t: 99\nmodel\t\t: 1\nmodel name\t: other\n")
    assert _bench_report._cpu_model(str(info)) == "AMD EPYC (family 25, model 17)"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert _bench_report._cpu_model(str(info)) == "Some CPU"
    assert _bench_report._cpu_model(str(tmp_path / "missing"))  # platform's name


def test_peak_gemms_are_warmed_up_and_timed_in_turn():
    """Each GEMM is called ``warmup`` times before any is timed (a cold first call once made
    the reference 266 GFLOP/s in one run and 427 in the next), then the rounds take every
    GEMM in turn, and the fastest call of each is kept."""
    from fastlstm._bench.timing import _best_interleaved

    calls = []
    gemms = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    best = _best_interleaved(gemms, reps=4, warmup=2)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    assert calls[6:] == ["a", "b", "c"] * 4
    assert set(best) == {"a", "b", "c"} and all(0 < t < 1 for t in best.values())


def test_measure_peak_reports_every_gemm(torch):
    from fastlstm._bench.timing import measure_peak

    found = measure_peak(1, size=64, dtypes=("float32",), reps=2, warmup=1)["float32"]
    assert {"torch.mm", "scipy.sgemm", "fastlstm.matmul", "best"} <= set(found)
    assert found["best"] == max(v for k, v in found.items() if k != "best")


def test_contended_windows_are_counted_per_case_and_reported(torch, monkeypatch):
    from fastlstm._bench import command

    # The controller's counters as the case's timing starts, then as it ends: 15 windows,
    # 3 judged contended (each ran fewer threads for a while).
    states = [{"dynamic": True, "cpus": 2, "cap": 0, "cap_left_s": 0.0, "backoff_s": 0.05,
               "windows": 10, "contended_windows": 1}]
    states.append(dict(states[0], windows=25, contended_windows=4))
    calls = []

    def team_state():
        calls.append(1)
        return states[min(len(calls), 2) - 1]

    monkeypatch.setattr(command.kernels, "team_state", team_state)
    args = argparse.Namespace(budget=0.03, blocks=3, repeat=None, pause=0.0, seed=0,
                              memory=False)
    record = run_case(Case("tiny", 2, 3, 8, 16), torch, 1, args, use_ort=False,
                      use_openvino=False)
    assert record["status"] == "ok"
    assert (record["team_windows"], record["contended_windows"]) == (15, 3)
    quiet = dict(record, name="quiet", team_windows=7, contended_windows=0)
    lines = contention_lines([record, quiet])
    assert len(lines) == 1 and "tiny (3 of 15)" in lines[0] and "quiet" not in lines[0]
    assert contention_lines([quiet]) == []
