"""``fastlstm bench --precision`` on tiny settings: the documented keys with positive finite
times, the errors of fastlstm's variants (float32, bfloat16, int8) against torch float32, the
ratios and targets computed from the times, a peer that cannot run shown as n/a (never a
crash), a fastlstm variant that disagrees not timed and counted as failed, and the command
line.  No timing target is asserted: timings on a shared machine are not a test's
business."""

import json
import math
import os
import sys
from dataclasses import replace

import pytest
from _helpers import run_cli

import fastlstm
from fastlstm import _threads, cli
from fastlstm._bench import precision
from fastlstm._bench.precision import (
    FAST_BF16,
    FAST_F32,
    FAST_INT8,
    OPENVINO,
    TORCH_BF16,
    TORCH_F32,
    TORCH_INT8,
    VARIANTS,
    int8_line,
    measure_precision,
    precision_table,
    select_cases,
    summary_line,
)
from fastlstm._ext import kernels

RESULT_KEYS = {"threads", "blocks", "seed", "budget_s", "bf16_level", "bf16_levels",
               "int8_level", "int8_levels", "torch", "openvino", "openvino_note", "variants",
               "tolerance", "targets", "all_targets", "cases", "failed", "wall_s"}
PER_VARIANT = ("time_s", "block_s", "reps_per_block", "error", "note",
               "speedup_vs_fastlstm_f32", "speedup_vs_torch_bf16", "speedup_vs_torch_int8")
RECORD_KEYS = {"name", "N", "L", "I", "H", "layers", "bidirectional", "proj_size", "dtype",
               "kind", "slug", "label", "shape", "extra", "target", "targets", "failed",
               *PER_VARIANT}
#: The targets of the cases with any: (variant, against, bound); the batched cases
#: against torch bf16 with AMX (and without bfloat16 instructions), against fastlstm
#: f32 where AVX512-BF16 is the best level, as the issue sets them.
BATCHED = ("small batch", "batch", "large")
TARGETS = {"one step": [(FAST_BF16, FAST_F32, 1.5), (FAST_INT8, FAST_F32, 2.0)],
           **{name: [(FAST_BF16, TORCH_BF16, 1.0)] for name in BATCHED}}
TARGETS_DP = {**TARGETS, **{name: [(FAST_BF16, FAST_F32, 1.8)] for name in BATCHED}}
EXPECTED = TARGETS_DP if kernels.bf16_level() == "avx512-bf16" else TARGETS
NAMES = ["one step", "single sequence", "small batch", "batch", "large"]
TINY = ["--blocks", "1", "--budget", "0.01", "--threads", "1"]


def _finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture
def tiny_cases(monkeypatch):
    """The cases with their names, kinds and layers, but a few steps of a tiny LSTM."""
    monkeypatch.setattr(precision, "CASES", [replace(c, N=min(c.N, 4), L=min(c.L, 3), I=8, H=8)
                                             for c in precision.CASES])


@pytest.fixture
def threads_kept(torch):
    """fastlstm's and torch's thread settings are the same after the test as before."""
    before = (_threads._num_threads, torch.get_num_threads())
    yield
    assert (_threads._num_threads, torch.get_num_threads()) == before


@pytest.fixture
def no_openvino(monkeypatch):
    """OpenVINO left out, whether installed or not ('import openvino' raises ImportError)."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_no_openvino_leaves_it_out_of_precision(torch, tiny_cases, monkeypatch):
    monkeypatch.setattr(precision, "import_openvino", lambda: pytest.fail("imported"))
    monkeypatch.setattr(precision, "CASES", precision.CASES[:1])
    result = measure_precision(torch, blocks=1, budget=0.01, threads=1, openvino=False)
    assert OPENVINO not in result["variants"]
    assert result["openvino_note"] == "disabled by --no-openvino"


def test_measure_precision_tiny(torch, tiny_cases, no_openvino, threads_kept):
    state = torch.random.get_rng_state()
    result = measure_precision(torch, blocks=2, budget=0.02, threads=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # weights from a forked generator
    assert set(result) == RESULT_KEYS
    assert result["variants"] == list(VARIANTS) and OPENVINO not in result["variants"]
    assert result["openvino"] is None and result["openvino_note"] == "not installed"
    assert result["bf16_level"] in result["bf16_levels"]
    assert result["int8_level"] == kernels.int8_level() in result["int8_levels"]
    assert result["int8_levels"] == list(kernels.int8_levels())
    assert result["variants"].index(FAST_INT8) == result["variants"].index(FAST_BF16) + 1
    assert (result["threads"], result["blocks"], result["budget_s"]) == (1, 2, 0.02)
    assert result["failed"] == [] and _finite_positive(result["wall_s"])
    assert [r["name"] for r in result["cases"]] == NAMES
    for record in result["cases"]:
        assert set(record) == RECORD_KEYS
        for key in PER_VARIANT:
            assert list(record[key]) == result["variants"], key
        times = record["time_s"]
        for name in (FAST_F32, FAST_BF16, FAST_INT8, TORCH_F32, TORCH_BF16):
            assert _finite_positive(times[name]), (record["name"], name, record["note"][name])
            assert record["note"][name] is None
        for name in VARIANTS:  # torch's dynamic quantization: timed, or n/a with a reason
            assert _finite_positive(times[name]) or record["note"][name], name
            if times[name] is not None:
                assert record["speedup_vs_fastlstm_f32"][name] == pytest.approx(
                    times[FAST_F32] / times[name])
                assert record["speedup_vs_torch_bf16"][name] == pytest.approx(
                    times[TORCH_BF16] / times[name])
                if times[TORCH_INT8] is None:
                    assert record["speedup_vs_torch_int8"][name] is None
                else:
                    assert record["speedup_vs_torch_int8"][name] == pytest.approx(
                        times[TORCH_INT8] / times[name])
                assert len(record["block_s"][name]) == 2
                assert all(_finite_positive(t) for t in record["block_s"][name])
        assert record["error"][TORCH_F32] == 0.0
        assert record["error"][FAST_F32] < 1e-4
        assert 0 < record["error"][FAST_BF16] < 2e-2
        assert 0 < record["error"][FAST_INT8] < 3e-2  # not float32, nor bfloat16's error
        assert record["error"][FAST_INT8] != record["error"][FAST_BF16]
        assert 0 < record["error"][TORCH_BF16] < 5e-2
    one_step = result["cases"][0]
    assert (one_step["kind"], one_step["layers"], one_step["L"]) == ("carried", 2, 1)
    # The targets: every one of a case in "targets", the first also in "target" (its
    # layout of before int8), each judged on the times.
    assert {name: [(t["variant"], t["against"], t["bound"]) for t in targets]
            for name, targets in result["all_targets"].items()} == EXPECTED
    assert result["targets"] == {name: targets[0]
                                 for name, targets in result["all_targets"].items()}
    verdicts = []
    for record in result["cases"]:
        assert [(t["variant"], t["against"], t["bound"]) for t in record["targets"]] == \
            EXPECTED.get(record["name"], [])
        assert record["target"] == (record["targets"][0] if record["targets"] else None)
        for target in record["targets"]:
            ratio = record["time_s"][target["against"]] / record["time_s"][target["variant"]]
            assert target["ratio"] == pytest.approx(ratio) and target["op"] == ">="
            assert target["met"] is (target["ratio"] >= target["bound"])
            verdicts.append(target["met"])
    assert len(verdicts) == 5
    assert summary_line(result).startswith(
        f"targets: {verdicts.count(True)} met, {verdicts.count(False)} missed, 0 n/a")
    # fastlstm int8 against torch's dynamic int8, every case, on one line (not a target).
    line = int8_line(result)
    assert line.startswith("fastlstm int8 vs torch int8 dynamic (")
    assert line.endswith(", ".join(
        f"{r['name']} " + ("n/a" if r["time_s"][TORCH_INT8] is None else
                           f"{r['time_s'][TORCH_INT8] / r['time_s'][FAST_INT8]:.2f}x")
        for r in result["cases"]))
    # The table: one row per case and variant, a target on the row of its variant.
    lines = precision_table(result)
    assert lines[0].split() == ["case", "variant", "time", "vs", "fast", "f32", "vs", "torch",
                                "bf16", "vs", "torch", "int8", "error", "target", "result"]
    rows = lines[2:]
    assert len(rows) == len(NAMES) * len(VARIANTS)
    for k, name in enumerate(VARIANTS):
        assert rows[k][45:].startswith(name)  # the label "one step N=1 L=1 H=8 ..." first
    assert rows[1].split()[-6:] == ["vs", "fast", "f32", ">=", "1.5", "met" if verdicts[0]
                                    else "missed"]
    assert rows[2].split()[-6:] == ["vs", "fast", "f32", ">=", "2", "met" if verdicts[1]
                                    else "missed"]
    assert rows[2].split()[4:7] == [f"{one_step[key][FAST_INT8]:.2f}x" for key in (
        "speedup_vs_fastlstm_f32", "speedup_vs_torch_bf16", "speedup_vs_torch_int8")]
    assert rows[2].split()[7] == f"{one_step['error'][FAST_INT8]:.1e}"
    # The figures are right-aligned: every full row ends its time and ratios where the
    # header ends them.
    ends = [lines[0].index(h) + len(h) for h in ("vs fast f32", "vs torch bf16",
                                                  "vs torch int8")]
    for row in rows:
        if "n/a:" not in row:
            assert [row[end - 1] for end in ends] == ["x", "x", "x"], row


@pytest.fixture
def openvino():
    """The openvino module; it is in the test extra, so only a user's machine may skip."""
    try:
        import openvino
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("openvino is not installed (pip install -e '.[test]')")
    return openvino


def test_openvino_bf16_is_timed_beside_the_others(torch, openvino, tiny_cases, threads_kept,
                                                    monkeypatch):
    monkeypatch.setattr(precision, "CASES", precision.CASES[1:3])  # two sequence cases
    real, calls = precision.compile_openvino, []

    def spied(*args):  # every call reads the inputs in place, as the other libraries do
        compiled = real(*args)
        request = compiled.create_infer_request()

        class Compiled:
            def __getattr__(self, name):
                return getattr(compiled, name)

            def create_infer_request(self):
                class Request:
                    def infer(self, *a, **kw):
                        calls.append(kw)
                        return request.infer(*a, **kw)
                return Request()
        return Compiled()

    monkeypatch.setattr(precision, "compile_openvino", spied)
    result = measure_precision(torch, blocks=1, budget=0.01, threads=1)
    assert calls and all(kw == {"share_inputs": True} for kw in calls)
    assert result["openvino"] == openvino.__version__ and result["openvino_note"] is None
    assert result["variants"][-1] == OPENVINO
    for record in result["cases"]:
        assert record["note"][OPENVINO] is None, record["note"][OPENVINO]
        assert _finite_positive(record["time_s"][OPENVINO])
        # Its error against torch float32 is a reduced-precision one, of bfloat16's size
        # where the CPU computes in bfloat16 and of float32's where it cannot.
        assert 0 <= record["error"][OPENVINO] < 5e-2
        assert record["speedup_vs_torch_bf16"][OPENVINO] == pytest.approx(
            record["time_s"][TORCH_BF16] / record["time_s"][OPENVINO])


def test_fastlstm_int8_is_the_float32_module_quantized(torch, tiny_cases, no_openvino,
                                                      monkeypatch):
    calls = []
    real = fastlstm.quantize

    def spy(module, dtype, **kwargs):
        calls.append((module, dtype, kwargs, real(module, dtype, **kwargs)))
        return calls[-1][-1]

    monkeypatch.setattr(fastlstm, "quantize", spy)
    runners, notes = precision._build(select_cases(["one step"])[0], torch, 0, 1, None)
    assert notes == {} and set(runners) == set(VARIANTS)
    (bf16, dtype, kwargs, small), (int8, dtype8, kwargs8, small8) = calls
    assert (dtype, dtype8, kwargs, kwargs8) == ("bfloat16", "int8", {}, {})
    assert int8 is bf16 and int8.weight_dtype == "float32"  # fastlstm f32's module
    assert (small.weight_dtype, small8.weight_dtype) == ("bfloat16", "int8")
    out8 = runners[FAST_INT8].output(runners[FAST_INT8].call())
    out = runners[FAST_F32].output(runners[FAST_F32].call())
    assert out8.shape == out.shape == (1, 1, 8) and 0 < abs(out8 - out).max() < 3e-2


def test_a_peer_that_cannot_run_is_n_a(torch, tiny_cases, no_openvino, monkeypatch,
                                        threads_kept):
    def no_engine(*args, **kwargs):
        raise RuntimeError("Didn't find engine for operation quantized::linear_prepack\nmore")

    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic", no_engine)
    result = measure_precision(torch, cases=["one-step"], blocks=1, budget=0.01, threads=1)
    (record,) = result["cases"]
    assert result["failed"] == [] and record["failed"] == []
    for name in ("torch int8 dynamic", "torch f16 dynamic"):
        assert record["time_s"][name] is None and record["error"][name] is None
        assert record["speedup_vs_fastlstm_f32"][name] is None
        assert record["note"][name] == ("RuntimeError: Didn't find engine for operation "
                                        "quantized::linear_prepack")
    assert set(record["speedup_vs_torch_int8"].values()) == {None}
    assert _finite_positive(record["time_s"][FAST_INT8])  # fastlstm's int8 needs no engine
    assert [t["met"] is None for t in record["targets"]] == [False, False]
    lines = precision_table(result)
    assert lines[0].split()[:3] == ["case", "variant", "time"] and set(lines[1]) == {"-"}
    assert lines[7].split()[:5] == ["torch", "int8", "dynamic", "n/a:", "RuntimeError:"]
    assert lines[2].startswith("one step N=1 L=1 H=8 2 layers carried (h, c) fastlstm f32")
    assert lines[3].split()[-2:] in (["1.5", "met"], ["1.5", "missed"])
    assert lines[4].split()[:2] == ["fastlstm", "int8"] and lines[4].split()[6] == "n/a"
    assert lines[4].split()[-2:] in (["2", "met"], ["2", "missed"])
    assert int8_line(result).endswith("target): one step n/a")


def test_a_quantization_that_does_nothing_is_n_a(torch, tiny_cases, no_openvino, monkeypatch):
    # quantize_dynamic only swaps submodules: a bare LSTM given to it comes back as it was.
    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic",
                        lambda model, *args, **kwargs: model)
    result = measure_precision(torch, cases=["single sequence"], blocks=1, budget=0.01,
                               threads=1)
    note = result["cases"][0]["note"]["torch int8 dynamic"]
    assert note == "RuntimeError: quantize_dynamic left the LSTM unquantized (torch.qint8)"


@pytest.mark.parametrize("variant", [FAST_BF16, FAST_INT8])
def test_a_disagreeing_fastlstm_variant_is_not_timed(variant, torch, tiny_cases, no_openvino,
                                                    monkeypatch, threads_kept):
    monkeypatch.setitem(precision.TOLERANCE, variant, -1.0)
    result = measure_precision(torch, cases=["one step"], blocks=1, budget=0.01, threads=1)
    (record,) = result["cases"]
    assert result["failed"] == [f"one step: {variant}"] and record["failed"] == [variant]
    assert record["time_s"][variant] is None and record["error"][variant] > 0
    assert record["note"][variant].startswith("NOT TIMED: differs from torch f32 by ")
    assert record["speedup_vs_torch_int8"][variant] is None
    (target,) = [t for t in record["targets"] if t["variant"] == variant]
    (other,) = [t for t in record["targets"] if t["variant"] != variant]
    assert target["ratio"] is None and target["met"] is None
    assert _finite_positive(other["ratio"])  # the other target is still judged
    assert summary_line(result).startswith("targets: ") and " 1 n/a " in summary_line(result)
    assert _finite_positive(record["time_s"][FAST_F32])


def test_select_cases():
    assert [c.name for c in select_cases()] == NAMES
    assert [c.name for c in select_cases(["LARGE", "one_step", "large", ""])] == [
        "large", "one step"]
    with pytest.raises(ValueError, match=r"unknown case 'nope' \(valid: one-step, "
                                         r"single-sequence, small-batch, batch, large\)"):
        select_cases(["batch", "nope"])
    with pytest.raises(ValueError, match="no case named"):
        select_cases([" "])


@pytest.mark.parametrize("level, expected", [("amx-bf16", TARGETS), ("avx512-bf16", TARGETS_DP),
                                             ("avx512", TARGETS), ("portable", TARGETS)])
def test_targets_for_the_cpu(level, expected):
    assert {name: list(targets) for name, targets in precision.targets_for(level).items()} == \
        expected


# -------------------------------------------------------------------- CLI
def test_cli_precision(torch, tmp_path):
    out_json = tmp_path / "p.json"
    status, out, err = run_cli("bench", "--precision", "--precision-cases", "one-step",
                               *TINY, "--json", out_json)
    assert status == 0, err
    lines = out.splitlines()
    assert "vs torch" in lines[0] and "usable CPUs" in lines[0]
    assert lines[1].startswith("precision: bfloat16 kernels ")
    assert f"; int8 kernels {kernels.int8_level()} (levels here: " in lines[1]
    assert "OpenVINO" in lines[2] and "'vs torch int8'" in lines[3]
    variants = len(json.loads(out_json.read_text())["precision"]["variants"])
    table = lines[4:4 + 2 + variants]
    assert table[0].split()[:3] == ["case", "variant", "time"] and "vs torch int8" in table[0]
    assert table[2].startswith("one step N=1 L=1 H=256 2 layers carried (h, c) fastlstm f32")
    assert lines[4 + 2 + variants].startswith("targets: ")
    assert lines[5 + 2 + variants].startswith("fastlstm int8 vs torch int8 dynamic (")
    report = json.loads(out_json.read_text())
    assert report["mode"] == ["precision"] and report["seq2seq"] is None
    assert report["settings"]["precision_cases"] == ["one step"] and report["failed"] == []
    (record,) = report["precision"]["cases"]
    assert record["name"] == "one step" and record["error"][FAST_BF16] < 2e-2
    assert 0 < record["error"][FAST_INT8] < 3e-2
    assert [t["variant"] for t in record["targets"]] == [FAST_BF16, FAST_INT8]
    assert report["precision"]["int8_level"] == kernels.int8_level()


def test_cli_precision_tiny_cases(torch, tiny_cases, no_openvino, tmp_path, capsys,
                                  threads_kept):
    status = cli.main(["bench", "--precision", *TINY])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[2].startswith("OpenVINO n/a (not installed): left out")
    rows = lines[6:6 + len(NAMES) * len(VARIANTS)]
    assert [row.split(" H=8")[0] for row in rows[::len(VARIANTS)]] == [
        f"{name} N={n} L={length}" for name, n, length in (
            ("one step", 1, 1), ("single sequence", 1, 3), ("small batch", 4, 3),
            ("batch", 4, 3), ("large", 4, 3))]
    assert lines[6 + len(rows)].startswith("targets: ")
    assert lines[7 + len(rows)].startswith("fastlstm int8 vs torch int8 dynamic (")
    assert lines[7 + len(rows)].count("x, ") + lines[7 + len(rows)].count("n/a, ") == \
        len(NAMES) - 1


def test_cli_precision_failure_exits_1(torch, tiny_cases, no_openvino, monkeypatch, capsys):
    monkeypatch.setitem(precision.TOLERANCE, FAST_F32, -1.0)
    assert cli.main(["bench", "--precision", "--precision-cases", "batch", *TINY]) == 1
    captured = capsys.readouterr()
    assert "NOT TIMED: differs from torch f32" in captured.out
    assert "1 measurement(s) failed: precision batch: fastlstm f32" in captured.err


@pytest.mark.parametrize("argv, words", [
    (["--precision", "--precision-cases", "nope"],
     "argument --precision-cases: unknown case 'nope' (valid: one-step, single-sequence, "
     "small-batch, batch, large)"),
    (["--precision", "--precision-cases", ","], "argument --precision-cases: no case named"),
    (["--precision-cases", "batch"], "--precision-cases needs --precision"),
    (["--contention", "--precision-cases", "batch"], "--precision-cases needs --precision"),
    (["--precision", "--seq2seq-batches", "1"], "--seq2seq-batches needs --seq2seq"),
    (["--precision", "--cases", "batch"], "--cases is for the case grid, not for --precision"),
    (["--precision", "--memory"], "--memory is for the case grid, not for --precision"),
])
def test_cli_precision_errors_are_one_line(argv, words, capsys):
    assert cli.main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert "\n" not in line and line.startswith("fastlstm bench: error:") and words in line
