"""``fastlstm bench --throughput`` on tiny settings: the sequences made, every variant checked
against forward_many's outputs and timed on the same sequences, the rates and ratios computed
from the recorded round times, the targets judged on them, the dask variant on a real
``LocalCluster`` of 2 worker processes (or n/a with the reason when it cannot run, never a
crash), a variant that disagrees not timed and counted as failed, ``--budget`` cutting the
timed sequences, and the command line.  No timing target is asserted: timings on a shared
machine are not a test's business."""

import importlib
import json
import math
import statistics
import sys
from functools import partial

import numpy as np
import pytest
from _helpers import IN_CI, batch_invariant, run_cli

from fastlstm import _threads, cli
from fastlstm._bench import throughput
from fastlstm._bench.throughput import (
    DASK,
    FORWARD_MANY,
    LOOP,
    PADDED,
    TORCH,
    VARIANTS,
    header_lines,
    make_sequences,
    measure_throughput,
    summary_line,
    throughput_table,
)

RESULT_KEYS = {"config", "threads", "rounds", "budget_s", "timed_sequences", "timed_tokens",
               "same_sequences", "check_sequences", "tolerance", "dask", "variants", "rows",
               "targets", "failed", "wall_s"}
ROW_KEYS = {"variant", "label", "status", "note", "error", "identical", "check_s", "time_s",
            "round_s", "seq_per_s", "tokens_per_s", "vs_forward_many"}
DASK_KEYS = {"workers", "threads_per_worker", "partitions", "worker_fastlstm_threads",
             "startup_s", "dask", "distributed", "note"}
#: The issue's targets: (row, numerator, denominator, bound, identical outputs too).
TARGETS = [(LOOP, FORWARD_MANY, LOOP, 3.0, False), (PADDED, FORWARD_MANY, PADDED, 1.3, False),
           (TORCH, FORWARD_MANY, TORCH, 3.0, False), (DASK, DASK, FORWARD_MANY, 0.8, True)]
#: A tiny workload: hidden 16, one layer, the check on 20 sequences.
TINY = {"hidden_size": 16, "num_layers": 1, "check": 20}


def _finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def dask_installed():
    """dask.bag and distributed; a test that needs them skips without them, except in CI."""
    try:
        importlib.import_module("dask.bag")
        importlib.import_module("distributed")
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("dask and distributed are not installed (pip install fastlstm[dask])")


@pytest.fixture
def threads_kept(torch):
    """fastlstm's and torch's thread settings are the same after the test as before."""
    before = (_threads._num_threads, torch.get_num_threads())
    yield
    assert (_threads._num_threads, torch.get_num_threads()) == before


@pytest.fixture
def tiny(monkeypatch):
    """The command line's measurement on the tiny workload."""
    monkeypatch.setattr(throughput, "measure_throughput", partial(measure_throughput, **TINY))


def _check_figures(result):
    """The rates, ratios and verdicts are those of the recorded round times."""
    count, tokens = result["timed_sequences"], result["timed_tokens"]
    rows = {row["variant"]: row for row in result["rows"]}
    for row in rows.values():
        if row["status"] != "ok":
            assert row["time_s"] is None and row["seq_per_s"] is None and not row["round_s"]
            continue
        assert len(row["round_s"]) == result["rounds"], row["variant"]
        assert all(_finite_positive(t) for t in row["round_s"])
        assert row["time_s"] == statistics.median(row["round_s"])
        assert row["seq_per_s"] == pytest.approx(count / row["time_s"])
        assert row["tokens_per_s"] == pytest.approx(tokens / row["time_s"])
        assert row["vs_forward_many"] == pytest.approx(
            rows[FORWARD_MANY]["time_s"] / row["time_s"])
        assert _finite_positive(row["check_s"])
    assert [(t["variant"], t["numerator"], t["denominator"], t["bound"], t["identical"])
            for t in result["targets"]] == TARGETS
    for target in result["targets"]:
        num, den = rows[target["numerator"]], rows[target["denominator"]]
        if num["time_s"] is None or den["time_s"] is None:
            assert target["ratio"] is None and target["met"] is None
            continue
        assert target["ratio"] == pytest.approx(den["time_s"] / num["time_s"])
        met = target["ratio"] >= target["bound"]
        if target["identical"]:
            met = met and rows[target["variant"]]["identical"]
        assert target["met"] is met


# ------------------------------------------------------------------ sequences
def test_make_sequences():
    seqs = make_sequences(2000, seed=3)
    lengths = np.array([len(s) for s in seqs])
    assert len(seqs) == 2000 and lengths.min() >= 5 and lengths.max() <= 500
    assert all(s.dtype == np.float32 and s.shape[1] == 80 and s.flags.c_contiguous
               for s in seqs)
    # Log-uniform from 5 to 500: the median near sqrt(5 * 500) = 50, a quarter below ~16.
    assert 40 < np.median(lengths) < 62 and 0.2 < np.mean(lengths < 16) < 0.3
    again = make_sequences(2000, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(seqs, again))
    other = make_sequences(5, input_size=3, min_length=2, max_length=4, seed=4)
    assert [s.shape[1] for s in other] == [3] * 5 and all(2 <= len(s) <= 4 for s in other)
    assert not np.array_equal(make_sequences(1, seed=5)[0][:5], make_sequences(1, seed=6)[0][:5])


# ------------------------------------------------------------------ measurement
def test_measure_throughput_tiny_with_dask(torch, dask_installed, threads_kept):
    state = torch.random.get_rng_state()
    result = measure_throughput(torch, sequences=60, rounds=2, threads=1, **TINY)
    assert torch.equal(torch.random.get_rng_state(), state)  # weights from a forked generator
    assert set(result) == RESULT_KEYS and result["failed"] == []
    lengths = [len(s) for s in make_sequences(60)]
    assert result["config"] == {
        "sequences": 60, "input_size": 80, "hidden_size": 16, "num_layers": 1,
        "dtype": "float32", "min_length": 5, "max_length": 500,
        "mean_length": pytest.approx(np.mean(lengths)), "tokens": sum(lengths), "batch": 64,
        "seed": 0}
    assert (result["threads"], result["rounds"], result["budget_s"]) == (1, 2, None)
    assert result["timed_sequences"] == 60 and result["timed_tokens"] == sum(lengths)
    assert result["same_sequences"] is True and result["check_sequences"] == 20
    assert result["variants"] == list(VARIANTS)
    assert [row["variant"] for row in result["rows"]] == list(VARIANTS)
    for row in result["rows"]:
        assert set(row) == ROW_KEYS
        assert row["status"] == "ok" and row["note"] is None, (row["variant"], row["note"])
    rows = {row["variant"]: row for row in result["rows"]}
    # fastlstm's variants give forward_many's outputs bit for bit where every product is
    # fastlstm's own (else within rounding: BLAS takes the projections of long blocks);
    # torch's within 1e-5.
    assert rows[FORWARD_MANY]["error"] == 0.0 and rows[FORWARD_MANY]["identical"] is True
    for name in (LOOP, PADDED, DASK):
        if batch_invariant():
            assert rows[name]["error"] == 0.0 and rows[name]["identical"] is True, name
        else:
            assert 0 <= rows[name]["error"] < 1e-6, name
            assert rows[name]["identical"] is (rows[name]["error"] == 0.0), name
    assert 0 <= rows[TORCH]["error"] < 1e-5
    # The dask variant ran on a real LocalCluster: 2 worker processes x 1 thread.
    dask = result["dask"]
    assert set(dask) == DASK_KEYS and dask["note"] is None
    assert (dask["workers"], dask["threads_per_worker"], dask["partitions"]) == (2, 1, 8)
    assert len(dask["worker_fastlstm_threads"]) == 2
    assert all(isinstance(n, int) and n >= 1 for n in dask["worker_fastlstm_threads"])
    assert _finite_positive(dask["startup_s"])
    assert dask["dask"] == importlib.import_module("dask").__version__
    _check_figures(result)
    assert _finite_positive(result["wall_s"])

    lines = header_lines(result, "some CPU")
    assert lines[0].startswith("throughput: 60 float32 sequences, lengths log-uniform 5-500")
    assert "LSTM H=16, 1 layer; fastlstm and torch on 1 thread; some CPU" in lines[0]
    assert lines[1].startswith("every variant timed on all 60 sequences")
    assert "2 rounds" in lines[1] and "on the first 20 sequences" in lines[1]
    assert "LocalCluster of 2 worker processes x 1 thread" in lines[2]
    table = throughput_table(result)
    assert table[0].split() == ["variant", "seq/s", "tokens/s", "vs", "forward_many",
                                "error", "target", "result"]
    assert set(table[1]) == {"-"} and len(table) == 2 + len(VARIANTS)
    assert table[2].startswith("fastlstm.forward_many") and table[2].split()[-2:] == [
        "1.00x", "ref"]
    for line, target in zip(table[3:], result["targets"]):
        verdict = "met" if target["met"] else "missed"
        row = rows[target["variant"]]
        same = "" if row["identical"] or not target["identical"] else ", not identical"
        assert " ".join(line.split()).endswith(
            f"{target['text']} {verdict} ({target['ratio']:.2f}x{same})"), line
        row = rows[target["variant"]]
        assert line.startswith(row["label"])
        assert f" {row['seq_per_s']:.1f} " in line and f" {row['error']:.1e} " in line
    assert table[6].startswith("fastlstm.dask 2 workers x 1 thread")
    verdicts = [t["met"] for t in result["targets"]]
    assert summary_line(result).startswith(
        f"targets: {verdicts.count(True)} met, {verdicts.count(False)} missed, 0 n/a")


def test_budget_times_the_first_sequences(torch, threads_kept):
    result = measure_throughput(torch, sequences=300, budget=1e-6, rounds=1, threads=1,
                                dask=False, **TINY)
    assert result["timed_sequences"] == 20  # never fewer than the check's sequences
    lengths = [len(s) for s in make_sequences(300)]
    assert result["timed_tokens"] == sum(lengths[:20])
    assert result["config"]["tokens"] == sum(lengths) and result["budget_s"] == 1e-6
    _check_figures(result)
    assert "the first 20 of the 300 sequences" in header_lines(result, "cpu")[1]
    assert "--budget 1e-06 s" in header_lines(result, "cpu")[1]
    rows = {row["variant"]: row for row in result["rows"]}
    assert rows[DASK]["status"] == "n/a" and rows[DASK]["note"] == "left out"
    assert header_lines(result, "cpu")[2] == "dask n/a (left out)"
    assert result["targets"][-1]["met"] is None and result["failed"] == []
    assert " 1 n/a " in summary_line(result)
    assert throughput_table(result)[-1].split() == [
        "fastlstm.dask", "2", "workers", "x", "1", "thread", "n/a:", "left", "out"]
    # A budget the rounds fit in: every sequence.
    roomy = measure_throughput(torch, sequences=30, budget=1e6, rounds=1, threads=1,
                               dask=False, **TINY)
    assert roomy["timed_sequences"] == 30


@pytest.mark.parametrize("hidden, note", [
    ("fastlstm.dask", "import fastlstm.dask failed: ModuleNotFoundError: import of "
                      "fastlstm.dask halted; None in sys.modules"),
    ("distributed", "distributed is not installed (pip install fastlstm[dask])"),
])
def test_dask_unavailable_is_n_a(hidden, note, torch, dask_installed, monkeypatch,
                                 threads_kept):
    monkeypatch.setitem(sys.modules, hidden, None)  # 'import' raises ImportError
    result = measure_throughput(torch, sequences=10, rounds=1, threads=1, **TINY)
    rows = {row["variant"]: row for row in result["rows"]}
    assert rows[DASK]["status"] == "n/a" and rows[DASK]["note"] == note
    assert result["dask"]["note"] == note and result["failed"] == []
    assert all(rows[name]["status"] == "ok" for name in VARIANTS[:-1])
    _check_figures(result)
    assert throughput_table(result)[-1].endswith(f"n/a: {note}")


def test_a_disagreeing_variant_is_not_timed(torch, monkeypatch, threads_kept):
    real = throughput._run_loop
    monkeypatch.setattr(throughput, "_run_loop",
                        lambda module, seqs: [out + 1e-3 for out in real(module, seqs)])
    result = measure_throughput(torch, sequences=10, rounds=1, threads=1, dask=False, **TINY)
    rows = {row["variant"]: row for row in result["rows"]}
    assert result["failed"] == [LOOP] and rows[LOOP]["status"] == "failed"
    assert rows[LOOP]["error"] == pytest.approx(1e-3, rel=1e-3)
    assert rows[LOOP]["note"] == ("NOT TIMED: differs from forward_many by 1.0e-03 "
                                  "(tolerance 1e-05)")
    assert rows[LOOP]["time_s"] is None and result["targets"][0]["met"] is None
    assert _finite_positive(rows[PADDED]["time_s"])  # the others are still timed
    _check_figures(result)
    assert throughput_table(result)[3].split()[3:6] == ["failed:", "NOT", "TIMED:"]


def test_a_failing_variant_is_reported(torch, monkeypatch, threads_kept):
    def broken(*args):
        raise RuntimeError("no luck\nmore")

    monkeypatch.setattr(throughput, "_run_torch", broken)
    result = measure_throughput(torch, sequences=10, rounds=1, threads=1, dask=False, **TINY)
    rows = {row["variant"]: row for row in result["rows"]}
    assert result["failed"] == [TORCH]
    assert rows[TORCH]["note"] == "RuntimeError: no luck" and rows[TORCH]["error"] is None
    _check_figures(result)


# ------------------------------------------------------------------------ CLI
def test_cli_throughput(torch, dask_installed, tiny, tmp_path, capsys, threads_kept):
    out_json = tmp_path / "t.json"
    status = cli.main(["bench", "--throughput", "--sequences", "40", "--blocks", "2",
                       "--threads", "1", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.splitlines()
    assert "vs torch" in lines[0] and "usable CPUs" in lines[0]
    assert lines[1].startswith("throughput: 40 float32 sequences")
    assert lines[2].startswith("every variant timed on all 40 sequences")
    assert "2 rounds" in lines[2] and lines[3].startswith("dask ")
    assert lines[4].split()[:3] == ["variant", "seq/s", "tokens/s"]
    labels = ["fastlstm.forward_many", "loop of module(seq)", "padded batches of 64",
              "torch packed batches of 64", "fastlstm.dask 2 workers x 1 thread"]
    assert all(line.startswith(label + " ") for line, label in zip(lines[6:11], labels))
    assert lines[11].startswith("targets: ") and len(lines) == 12
    report = json.loads(out_json.read_text())
    assert report["mode"] == ["throughput"] and report["precision"] is None
    assert report["failed"] == []
    settings = report["settings"]
    assert (settings["sequences"], settings["throughput_rounds"],
            settings["throughput_budget_s"]) == (40, 2, None)
    found = report["throughput"]
    assert found["timed_sequences"] == 40 and found["rounds"] == 2 and found["threads"] == 1
    assert found["dask"]["note"] is None
    assert [row["status"] for row in found["rows"]] == ["ok"] * len(VARIANTS)
    _check_figures(found)


def test_cli_throughput_without_fastlstm_dask_exits_0(torch, dask_installed, tiny,
                                                     monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastlstm.dask", None)
    status = cli.main(["bench", "--throughput", "--sequences", "10", "--blocks", "1",
                       "--budget", "30", "--threads", "1", "-q"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("throughput: 10 float32") and lines[2].startswith("dask n/a")
    assert "n/a: import fastlstm.dask failed" in lines[-2]
    assert lines[-1].startswith("targets: ") and " 1 n/a " in lines[-1]


def test_cli_throughput_failure_exits_1(torch, tiny, monkeypatch, capsys):
    real = throughput._run_padded
    monkeypatch.setattr(throughput, "_run_padded",
                        lambda *args: [out * 2 for out in real(*args)])
    status = cli.main(["bench", "--throughput", "--sequences", "10", "--blocks", "1",
                       "--threads", "1", "-q"])
    assert status == 1
    captured = capsys.readouterr()
    assert "NOT TIMED: differs from forward_many" in captured.out
    assert "1 measurement(s) failed: throughput padded" in captured.err


def test_cli_throughput_subprocess(torch, dask_installed, tmp_path):
    # The real workload's sizes, a few sequences: 'python -m fastlstm' starts the workers.
    out_json = tmp_path / "t.json"
    status, out, err = run_cli("bench", "--throughput", "--sequences", "12", "--blocks", "1",
                               "--json", out_json)
    assert status == 0, err
    assert "LSTM H=256, 2 layers" in out and "fastlstm.dask 2 workers x 1 thread" in out
    found = json.loads(out_json.read_text())["throughput"]
    assert found["config"]["input_size"] == 80 and found["failed"] == []
    assert [row["status"] for row in found["rows"]] == ["ok"] * len(VARIANTS)
    assert found["dask"]["worker_fastlstm_threads"] is not None


@pytest.mark.parametrize("argv, words", [
    (["--sequences", "5"], "--sequences needs --throughput"),
    (["--precision", "--sequences", "5"], "--sequences needs --throughput"),
    (["--throughput", "--sequences", "0"], "argument --sequences: expected a positive integer"),
    (["--throughput", "--cases", "batch"], "--cases is for the case grid, not for --throughput"),
    (["--throughput", "--budget", "0"], "argument --budget: expected a positive number"),
])
def test_cli_throughput_errors_are_one_line(argv, words, capsys):
    assert cli.main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert "\n" not in line and line.startswith("fastlstm bench: error:") and words in line


def test_cli_help_lists_throughput(capsys):
    assert cli.main(["bench", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--throughput sequences/s of many variable-length sequences" in text
    assert f"--sequences N sequences of --throughput (default {throughput.SEQUENCES})" in text


def test_other_modes_keep_their_defaults(torch, monkeypatch, capsys):
    seen = {}

    def fake(torch, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop there: only the arguments matter

    monkeypatch.setattr("fastlstm._bench.precision.measure_precision", fake)
    assert cli.main(["bench", "--precision", "-q"]) == 130
    assert (seen["budget"], seen["blocks"]) == (2.0, 5)
