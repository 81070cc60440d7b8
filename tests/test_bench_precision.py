"""``fastlstm bench --precision`` on tiny settings: the documented keys with positive finite
times, the errors of fastlstm's variants against torch float32, a peer that cannot run shown
as n/a (never a crash), a fastlstm variant that disagrees not timed and counted as failed, and
the command line.  No timing target is asserted: timings on a shared machine are not a
test's business."""

import json
import math
import sys
from dataclasses import replace

import pytest
from _helpers import run_cli

from fastlstm import _threads, cli
from fastlstm._bench import precision
from fastlstm._bench.precision import (
    FAST_BF16,
    FAST_F32,
    OPENVINO,
    TORCH_BF16,
    TORCH_F32,
    VARIANTS,
    measure_precision,
    precision_table,
    select_cases,
)

RESULT_KEYS = {"threads", "blocks", "seed", "budget_s", "bf16_level", "bf16_levels", "torch",
               "openvino", "openvino_note", "variants", "tolerance", "targets", "cases",
               "failed", "wall_s"}
PER_VARIANT = ("time_s", "block_s", "reps_per_block", "error", "note",
               "speedup_vs_fastlstm_f32", "speedup_vs_torch_bf16")
RECORD_KEYS = {"name", "N", "L", "I", "H", "layers", "bidirectional", "proj_size", "dtype",
               "kind", "slug", "label", "shape", "extra", "target", "failed", *PER_VARIANT}
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


def test_measure_precision_tiny(torch, tiny_cases, no_openvino, threads_kept):
    state = torch.random.get_rng_state()
    result = measure_precision(torch, blocks=2, budget=0.02, threads=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # weights from a forked generator
    assert set(result) == RESULT_KEYS
    assert result["variants"] == list(VARIANTS) and OPENVINO not in result["variants"]
    assert result["openvino"] is None and result["openvino_note"] == "not installed"
    assert result["bf16_level"] in result["bf16_levels"]
    assert (result["threads"], result["blocks"], result["budget_s"]) == (1, 2, 0.02)
    assert result["failed"] == [] and _finite_positive(result["wall_s"])
    assert [r["name"] for r in result["cases"]] == NAMES
    for record in result["cases"]:
        assert set(record) == RECORD_KEYS
        for key in PER_VARIANT:
            assert list(record[key]) == result["variants"], key
        times = record["time_s"]
        for name in (FAST_F32, FAST_BF16, TORCH_F32, TORCH_BF16):
            assert _finite_positive(times[name]), (record["name"], name, record["note"][name])
            assert record["note"][name] is None
        for name in VARIANTS:  # torch's dynamic quantization: timed, or n/a with a reason
            assert _finite_positive(times[name]) or record["note"][name], name
            if times[name] is not None:
                assert record["speedup_vs_fastlstm_f32"][name] == pytest.approx(
                    times[FAST_F32] / times[name])
                assert record["speedup_vs_torch_bf16"][name] == pytest.approx(
                    times[TORCH_BF16] / times[name])
                assert len(record["block_s"][name]) == 2
                assert all(_finite_positive(t) for t in record["block_s"][name])
        assert record["error"][TORCH_F32] == 0.0
        assert record["error"][FAST_F32] < 1e-4
        assert 0 < record["error"][FAST_BF16] < 2e-2
        assert 0 < record["error"][TORCH_BF16] < 5e-2
    one_step = result["cases"][0]
    assert (one_step["kind"], one_step["layers"], one_step["L"]) == ("carried", 2, 1)
    targets = [r["target"] for r in result["cases"]]
    assert targets[1] is None
    assert [(t["variant"], t["against"], t["bound"]) for t in targets if t] == [
        (FAST_BF16, FAST_F32, 1.5)] + [(FAST_BF16, TORCH_BF16, 1.0)] * 3
    for record in result["cases"]:
        target = record["target"]
        if target is not None:
            ratio = record["time_s"][target["against"]] / record["time_s"][FAST_BF16]
            assert target["ratio"] == pytest.approx(ratio)
            assert target["met"] is (target["ratio"] >= target["bound"])


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
    lines = precision_table(result)
    assert lines[0].split()[:3] == ["case", "variant", "time"] and set(lines[1]) == {"-"}
    assert lines[6].split()[:5] == ["torch", "int8", "dynamic", "n/a:", "RuntimeError:"]
    assert lines[2].startswith("one step N=1 L=1 H=8 2 layers carried (h, c) fastlstm f32")
    assert lines[3].split()[-2:] in (["1.5", "met"], ["1.5", "missed"])


def test_a_quantization_that_does_nothing_is_n_a(torch, tiny_cases, no_openvino, monkeypatch):
    # quantize_dynamic only swaps submodules: a bare LSTM given to it comes back as it was.
    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic",
                        lambda model, *args, **kwargs: model)
    result = measure_precision(torch, cases=["single sequence"], blocks=1, budget=0.01,
                               threads=1)
    note = result["cases"][0]["note"]["torch int8 dynamic"]
    assert note == "RuntimeError: quantize_dynamic left the LSTM unquantized (torch.qint8)"


def test_a_disagreeing_fastlstm_variant_is_not_timed(torch, tiny_cases, no_openvino,
                                                    monkeypatch, threads_kept):
    monkeypatch.setitem(precision.TOLERANCE, FAST_BF16, -1.0)
    result = measure_precision(torch, cases=["one step"], blocks=1, budget=0.01, threads=1)
    (record,) = result["cases"]
    assert result["failed"] == ["one step: fastlstm bf16"]
    assert record["time_s"][FAST_BF16] is None and record["error"][FAST_BF16] > 0
    assert record["note"][FAST_BF16].startswith("NOT TIMED: differs from torch f32 by ")
    assert record["target"]["ratio"] is None and record["target"]["met"] is None
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


# -------------------------------------------------------------------- CLI
def test_cli_precision(torch, tmp_path):
    out_json = tmp_path / "p.json"
    status, out, err = run_cli("bench", "--precision", "--precision-cases", "one-step",
                               *TINY, "--json", out_json)
    assert status == 0, err
    lines = out.splitlines()
    assert "vs torch" in lines[0] and "usable CPUs" in lines[0]
    assert lines[1].startswith("precision: bfloat16 kernels ")
    assert "OpenVINO" in lines[2]
    variants = len(json.loads(out_json.read_text())["precision"]["variants"])
    table = lines[4:4 + 2 + variants]
    assert table[0].split()[:3] == ["case", "variant", "time"]
    assert table[2].startswith("one step N=1 L=1 H=256 2 layers carried (h, c) fastlstm f32")
    assert lines[4 + 2 + variants].startswith("targets: ")
    report = json.loads(out_json.read_text())
    assert report["mode"] == ["precision"] and report["seq2seq"] is None
    assert report["settings"]["precision_cases"] == ["one step"] and report["failed"] == []
    (record,) = report["precision"]["cases"]
    assert record["name"] == "one step" and record["error"][FAST_BF16] < 2e-2


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
