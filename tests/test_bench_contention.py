"""``fastlstm bench --contention`` and ``--seq2seq`` on tiny settings: the documented
keys with positive finite figures, the neighbour and worker processes gone afterwards (also
after an interrupt), failures reported as error rows, the fastlstm decode against a NumPy
oracle, and the command line.  No timing target is asserted: timings on a shared machine
are not a test's business."""

import json
import math
import os

import numpy as np
import pytest
from _helpers import TORCH, run_cli
from _helpers.reference import lstm_reference

import fastlstm
from fastlstm import _threads, cli
from fastlstm._bench import contention, seq2seq
from fastlstm._bench.contention import error_row, measure_contention, ratio_row, ratio_table
from fastlstm._bench.seq2seq import Seq2Seq, measure_seq2seq, tokens_mismatch

ROW_KEYS = {"scenario", "library", "case", "a_label", "b_label", "a", "b", "a_blocks",
            "b_blocks", "unit", "ratio", "target", "target_op", "met", "error"}
CONTENTION_KEYS = {"ncpu", "threads", "oversubscribed_threads", "neighbours", "seconds",
                   "blocks", "seed", "libraries", "torch", "rows", "neighbour_pids",
                   "worker_pids", "wall_s"}
SEQ2SEQ_KEYS = {"model", "threads", "blocks", "seed", "batches", "tokens_match", "rows",
                "failed", "wall_s", "blas_sharing"}


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _finite_positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _check_measured_row(row):
    assert set(row) == ROW_KEYS
    assert row["error"] is None, row["error"]
    assert _finite_positive(row["a"]) and _finite_positive(row["b"])
    assert all(_finite_positive(v) for v in row["a_blocks"] + row["b_blocks"])
    assert row["ratio"] == pytest.approx(row["a"] / row["b"])
    assert row["target_op"] in (">=", "<=") and row["target"] > 0
    assert row["met"] is (row["ratio"] >= row["target"] if row["target_op"] == ">="
                          else row["ratio"] <= row["target"])


@pytest.fixture
def threads_kept():
    """fastlstm's and torch's thread settings are the same after the test as before."""
    before = (_threads._num_threads, TORCH.get_num_threads() if TORCH is not None else None)
    yield
    assert (_threads._num_threads,
            TORCH.get_num_threads() if TORCH is not None else None) == before


@pytest.fixture
def small_models(monkeypatch):
    """Short sequences of a small LSTM: on a busy machine a call on more threads than free
    cores can take a thousand times longer than on a quiet one, and a block runs at least one
    call, so the full-size forward would make a test's time depend on the machine's load."""
    monkeypatch.setattr(contention, "LENGTH", 4)
    monkeypatch.setattr(contention, "HIDDEN", 16)


# ------------------------------------------------------------- contention
def test_measure_contention_tiny(torch, small_models, threads_kept):
    result = measure_contention(torch, neighbours=1, seconds=0.02, blocks=2)
    assert set(result) == CONTENTION_KEYS
    assert result["libraries"] == ["fastlstm", "torch"]
    assert result["torch"] == torch.__version__
    assert result["ncpu"] == len(os.sched_getaffinity(0))
    assert result["oversubscribed_threads"] == 2 * result["ncpu"]
    assert result["threads"] == fastlstm.get_num_threads()
    scenarios = [(r["scenario"], r["library"]) for r in result["rows"]]
    assert scenarios == [("busy neighbour", lib) for lib in ("fastlstm", "torch")] * 2 + [
        ("two processes", "fastlstm"), ("two processes", "torch")] + [
        ("oversubscribed", lib) for lib in ("fastlstm", "torch")] * 2
    for row in result["rows"]:
        _check_measured_row(row)
        assert len(row["a_blocks"]) == len(row["b_blocks"]) == 2
        assert row["unit"] == ("s" if row["scenario"] == "oversubscribed" else "seq/s")
        assert "H=16" in row["case"]  # the workers got the sizes too
    assert [r["a_label"] for r in result["rows"][-4:]] == [
        f"{2 * result['ncpu']} threads"] * 4
    assert [r["target"] for r in result["rows"]] == [0.9] * 4 + [0.8] * 2 + [1.5] * 4
    # Every process it started is gone (killed and reaped) once it returns.
    assert len(result["neighbour_pids"]) == 1 and len(result["worker_pids"]) == 2
    assert all(_gone(pid) for pid in result["neighbour_pids"] + result["worker_pids"])


def test_measure_contention_without_torch(small_models, threads_kept):
    result = measure_contention(None, neighbours=0, seconds=0.01, blocks=1, threads=1)
    assert result["libraries"] == ["fastlstm"] and result["torch"] is None
    assert result["neighbour_pids"] == []
    assert {r["library"] for r in result["rows"]} == {"fastlstm"} and len(result["rows"]) == 5
    for row in result["rows"]:
        _check_measured_row(row)
    assert all(_gone(pid) for pid in result["worker_pids"])


def test_neighbours_are_killed_on_keyboard_interrupt(monkeypatch, threads_kept):
    started = []

    def start(count):
        procs = start_neighbours(count)
        started.extend(procs)
        return procs

    def interrupted(*args, **kwargs):
        assert all(p.poll() is None for p in started)  # running while it measures
        raise KeyboardInterrupt

    start_neighbours = contention._start_neighbours
    monkeypatch.setattr(contention, "_start_neighbours", start)
    monkeypatch.setattr(contention, "_interleave", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure_contention(None, neighbours=2, seconds=0.01, blocks=1)
    assert len(started) == 2
    assert all(p.returncode is not None and _gone(p.pid) for p in started)


def test_a_failing_worker_is_an_error_row(monkeypatch, threads_kept):
    monkeypatch.setattr(contention, "_WORKER", "import sys; print('no luck', file=sys.stderr); "
                                               "sys.exit(3)")
    monkeypatch.setattr(contention, "_busy_neighbour", lambda *args: [])
    monkeypatch.setattr(contention, "_oversubscribed", lambda *args: [])
    result = measure_contention(None, seconds=0.01, blocks=1)
    (row,) = result["rows"]
    assert row["scenario"] == "two processes" and row["ratio"] is None and row["met"] is None
    assert row["error"] == "worker process failed: no luck"
    assert all(_gone(pid) for pid in result["worker_pids"])


def test_ratio_row_and_table():
    fast = ratio_row("busy neighbour", "fastlstm", "N=1", "2 threads", "1 thread",
                     [90.0, 100.0, 300.0], [100.0, 100.0, 100.0], "seq/s", (">=", 0.9))
    assert fast["a"] == 100.0 and fast["ratio"] == 1.0 and fast["met"] is True
    slow = ratio_row("oversubscribed", "torch", "L=1", "4 threads", "2 threads",
                     [2e-3], [1e-3], "s", ("<=", 1.5))
    assert slow["ratio"] == 2.0 and slow["met"] is False
    failed = error_row("two processes", "torch", "2 x N=1", "worker process failed: boom")
    lines = ratio_table([fast, slow, failed])
    assert lines[0].split() == ["scenario", "library", "case", "A", "B", "A/B", "target",
                                "result"]
    assert set(lines[1]) == {"-"}
    assert lines[2].endswith("2 threads 100.0 seq/s 1 thread 100.0 seq/s 1.00 >= 0.9 met")
    assert "4 threads 2.00 ms" in lines[3] and lines[3].endswith("2.00 <= 1.5 missed")
    assert lines[4].startswith("two processes") and lines[4].endswith(
        "ERROR: worker process failed: boom")


# ---------------------------------------------------------------- seq2seq
def _oracle_decode(model, src):
    """The greedy decode from the LSTM equations in float64 (tests/_helpers/reference.py)."""
    def params(module):
        return {k: v.detach().numpy() for k, v in module.state_dict().items()}

    config = {"num_layers": 2, "bidirectional": False, "proj_size": 0, "batch_first": False,
              "hidden_size": 256}
    emb = model.E.astype(np.float64)
    w, b = model.W.astype(np.float64), model.b.astype(np.float64)
    _, state = lstm_reference(params(model.encoder), emb[src], **config)
    token = np.zeros((1, src.shape[1]), dtype=np.int64)
    out = []
    for _ in range(model.steps):
        y, state = lstm_reference(params(model.decoder), emb[token], state, **config)
        token = (y[0] @ w.T + b).argmax(-1)[None]
        out.append(token)
    return np.concatenate(out)


def test_seq2seq_fastlstm_decode_equals_a_numpy_oracle(torch):
    model = Seq2Seq(torch, seed=0)
    src = model.source(3, seed=1)
    tokens = model.fastlstm_decode(src)
    assert tokens.shape == (29, 3) and tokens.dtype == np.int64
    assert tokens_mismatch(_oracle_decode(model, src), tokens) is None
    assert tokens_mismatch(model.torch_decode(src), tokens) is None


def test_seq2seq_weights_come_from_the_seed_and_leave_torch_alone(torch):
    state = torch.random.get_rng_state()
    a, b, c = Seq2Seq(torch, seed=0), Seq2Seq(torch, seed=0), Seq2Seq(torch, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert np.array_equal(a.W, b.W) and np.array_equal(a.E, b.E) and not np.array_equal(a.W, c.W)
    assert a.E.shape == (1000, 256) and a.W.shape == (1000, 256)
    assert (a.encoder.num_layers, a.decoder.hidden_size) == (2, 256)


def test_tokens_mismatch_says_where():
    tokens = np.arange(12).reshape(4, 3)
    assert tokens_mismatch(tokens, tokens.copy()) is None
    wrong = tokens.copy()
    wrong[2, 1] += 1
    wrong[3, 0] += 1
    assert tokens_mismatch(tokens, wrong) == (
        "tokens differ from torch's at 2 of 12 positions (first: step 2, sequence 1)")
    assert "shaped (3, 4)" in tokens_mismatch(tokens, tokens.T)


def test_measure_seq2seq_tiny(torch, threads_kept, monkeypatch):
    # One thread: the tokens and the structure are the point, not the thread pools.
    from threadpoolctl import threadpool_info

    blas_threads = set()
    decode = Seq2Seq.fastlstm_decode

    def counted(self, src):  # NumPy's BLAS runs the head on the threads torch has
        blas_threads.update(i["num_threads"] for i in threadpool_info()
                            if i["user_api"] == "blas")
        return decode(self, src)

    monkeypatch.setattr(Seq2Seq, "fastlstm_decode", counted)
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    result = measure_seq2seq(torch, batches=(1, 3), blocks=2, budget=0.02, threads=1)
    assert blas_threads == {1}
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    assert set(result) == SEQ2SEQ_KEYS
    assert result["model"] == {"vocab": 1000, "embed": 256, "hidden": 256, "layers": 2,
                               "source_length": 30, "steps": 29}
    assert result["tokens_match"] == {1: True, 3: True} and result["failed"] == []
    assert result["threads"] == 1
    assert result["blas_sharing"].startswith("on: ") == fastlstm.get_blas_sharing()
    rows = result["rows"]
    assert [(r["scenario"], r["case"]) for r in rows] == [
        ("seq2seq decode", "N=1"), ("seq2seq decode", "N=1"), ("seq2seq decode", "N=3"),
        ("seq2seq decode", "N=3"), ("seq2seq step mix", "decoder step N=3"),
        ("seq2seq step mix", "head matmul N=3")]
    for row in rows:
        _check_measured_row(row)
        assert row["unit"] == "s" and len(row["a_blocks"]) == 2
    assert [(r["target_op"], r["target"]) for r in rows] == [
        (">=", 5.0), (">=", 1.0), (">=", 1.0), (">=", 1.0), ("<=", 1.2), ("<=", 1.2)]
    assert [(r["a_label"], r["b_label"]) for r in rows[:4]] == [
        ("torch", "fastlstm"), ("torch", "accelerate")] * 2
    # the accelerated torch decode is timed too, in the same blocks as torch's
    assert rows[0]["a_blocks"] == rows[1]["a_blocks"]


def test_seq2seq_mismatch_is_an_error_row_not_timed(torch, monkeypatch, threads_kept):
    def off_by_one(self, src):
        return Seq2Seq.torch_decode(self, src) + 1

    monkeypatch.setattr(seq2seq.Seq2Seq, "fastlstm_decode", off_by_one)
    result = measure_seq2seq(torch, batches=(1,), blocks=1, budget=0.01, threads=1)
    (row,) = result["rows"]  # not timed, and no step mix either
    assert row["error"].startswith("NOT TIMED: tokens differ from torch's at 29 of 29")
    assert row["ratio"] is None and row["met"] is None
    assert result["tokens_match"] == {1: False} and result["failed"] == ["N=1"]


def test_seq2seq_accelerate_mismatch_names_the_accelerated_decode(torch, monkeypatch,
                                                                  threads_kept):
    # The error row named "torch / fastlstm" when only the accelerated decode differed.
    def off_when_accelerated(self, src, accelerated=False):
        tokens = original(self, src)
        return tokens + 1 if accelerated else tokens

    original = seq2seq.Seq2Seq.torch_decode
    monkeypatch.setattr(seq2seq.Seq2Seq, "torch_decode", off_when_accelerated)
    result = measure_seq2seq(torch, batches=(1,), blocks=1, budget=0.01, threads=1)
    (row,) = result["rows"]
    assert row["error"].startswith("NOT TIMED: tokens differ from torch's")
    assert row["library"] == "torch / torch + accelerate", row


# -------------------------------------------------------------------- CLI
def test_cli_seq2seq(torch, tmp_path):
    out_json = tmp_path / "s.json"
    status, out, err = run_cli("bench", "--seq2seq", "--seq2seq-batches", "1,2", "--blocks",
                               "1", "--budget", "0.02", "--threads", "1", "--json", out_json)
    assert status == 0, err
    lines = out.splitlines()
    assert "vs torch" in lines[0] and "usable CPUs" in lines[0]
    assert lines[1].startswith("seq2seq greedy decode: vocabulary 1000")
    assert lines[2].split()[:3] == ["scenario", "library", "case"]
    assert [line.split()[:3] for line in lines[4:]] == [
        ["seq2seq", "decode", "torch"]] * 4 + [["seq2seq", "step", "mix"]] * 2
    assert all(line.endswith((" met", " missed")) for line in lines[4:])
    report = json.loads(out_json.read_text())
    assert report["mode"] == ["seq2seq"] and report["contention"] is None
    assert report["seq2seq"]["tokens_match"] == {"1": True, "2": True}
    assert report["settings"]["seq2seq_batches"] == [1, 2] and report["failed"] == []
    assert {"cpu", "threads", "usable_cpus"} <= set(report["machine"])


def test_cli_contention(torch, small_models, tmp_path, capsys, threads_kept):
    out_json = tmp_path / "c.json"
    status = cli.main(["bench", "--contention", "--contention-seconds", "0.01", "--blocks",
                       "1", "--neighbours", "1", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[1].startswith("contention: ") and "threads: default" in lines[1]
    assert lines[2].startswith("blocks of 0.01 s, 1 per configuration")
    rows = lines[5:]
    names = ("busy neighbour", "two processes", "oversubscribed")
    assert [next(n for n in names if line.startswith(n + " ")) for line in rows] == (
        ["busy neighbour"] * 4 + ["two processes"] * 2 + ["oversubscribed"] * 4)
    assert all(line.endswith((" met", " missed")) for line in rows)
    report = json.loads(out_json.read_text())
    assert report["mode"] == ["contention"] and report["seq2seq"] is None
    assert len(report["contention"]["rows"]) == 10
    assert report["settings"]["neighbours"] == 1


@pytest.mark.parametrize("argv, words", [
    (["--contention", "--neighbours", "-1"], "argument --neighbours: expected an integer >= 0"),
    (["--contention", "--neighbours", "x"], "argument --neighbours"),
    (["--contention", "--contention-seconds", "0"],
     "argument --contention-seconds: expected a positive number"),
    (["--contention", "--contention-seconds", "nan"], "argument --contention-seconds"),
    (["--seq2seq", "--seq2seq-batches", "1,x"],
     "argument --seq2seq-batches: expected positive integers separated by commas"),
    (["--seq2seq", "--seq2seq-batches", "0"], "argument --seq2seq-batches"),
    (["--seq2seq", "--seq2seq-batches", ""], "argument --seq2seq-batches"),
    (["--contention", "--markdown", "x.md"], "--markdown is for the case grid, not for "
                                             "--contention"),
    (["--seq2seq", "--cases", "batch"], "--cases is for the case grid, not for --seq2seq"),
    (["--neighbours", "2"], "--neighbours needs --contention"),
    (["--seq2seq", "--contention-seconds", "1"], "--contention-seconds needs --contention"),
    (["--contention", "--seq2seq-batches", "1"], "--seq2seq-batches needs --seq2seq"),
])
def test_cli_mode_errors_are_one_line(argv, words, capsys):
    assert cli.main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert "\n" not in line and line.startswith("fastlstm bench: error:") and words in line
