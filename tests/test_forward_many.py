"""``fastlstm.forward_many``: every sequence's output and state equal one call of the module
on it alone (the oracle: ``forward``, itself checked against torch and NumPy), in input
order, for every configuration, budget and input form; errors name the sequence."""

import itertools
import threading
import time

import numpy as np
import pytest

import fastlstm
from fastlstm.batching import DEFAULT_BATCH_TOKENS, _batches
from tests._helpers import TORCH, batch_invariant
from tests._helpers.reference import reference_forward


def _seqs(rng, lengths, features=6):
    return [rng.standard_normal((n, features)).astype(np.float32) for n in lengths]


CONFIGS = [dict(), dict(num_layers=2), dict(bidirectional=True), dict(proj_size=3),
           dict(num_layers=2, bidirectional=True, proj_size=4, batch_first=True)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "plain")
@pytest.mark.parametrize("budget", [1, 17, 60, None])
def test_each_output_is_the_modules_on_that_sequence(cfg, budget):
    rng = np.random.default_rng(0)
    module = fastlstm.LSTM(6, 10, rng=1, **cfg)
    seqs = _seqs(rng, [5, 1, 12, 7, 7, 3, 20, 2, 9])
    outs = fastlstm.forward_many(module, seqs, max_batch_tokens=budget, return_states=True)
    assert isinstance(outs, list) and len(outs) == len(seqs)
    for seq, (out, (h, c)) in zip(seqs, outs):
        want, (wh, wc) = module(seq)
        assert out.shape == want.shape and h.shape == wh.shape and c.shape == wc.shape
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h, wh, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, wc, rtol=1e-5, atol=1e-6)
    # and the float64 NumPy oracle of the equations, for one of them
    ref, _ = reference_forward(module, seqs[2])
    np.testing.assert_allclose(outs[2][0], ref, rtol=1e-4, atol=1e-5)


def test_batches_are_sorted_by_length_and_bounded():
    lengths = np.array([5, 1, 12, 7, 7, 3, 20, 2, 9])
    for budget in (1, 10, 20, 25, 1000):
        batches = _batches(lengths, budget)
        order = np.concatenate(batches)
        assert sorted(order) == list(range(len(lengths)))
        assert list(lengths[order]) == sorted(lengths, reverse=True)
        for b in batches:
            assert len(b) == 1 or lengths[b].sum() <= budget
        # greedy: a batch plus the next sequence would be over the budget
        for b, nxt in zip(batches, batches[1:]):
            assert lengths[b].sum() + lengths[nxt[0]] > budget
    assert DEFAULT_BATCH_TOKENS == 16384


def test_an_iterator_is_read_in_windows_and_yields_in_order(monkeypatch):
    from fastlstm import batching

    monkeypatch.setattr(batching, "_WINDOW_BATCHES", 2)
    rng = np.random.default_rng(2)
    module = fastlstm.LSTM(6, 8, rng=3)
    seqs = _seqs(rng, rng.integers(1, 30, size=40))
    taken = []

    def gen():
        for i, s in enumerate(seqs):
            taken.append(i)
            yield s

    it = fastlstm.forward_many(module, gen(), max_batch_tokens=40)
    assert not isinstance(it, list) and taken == []  # nothing read before asked
    first = next(it)
    assert 0 < len(taken) < len(seqs)  # one window, not everything
    np.testing.assert_allclose(first, module(seqs[0])[0], rtol=1e-5, atol=1e-6)
    rest = list(it)
    assert len(rest) == len(seqs) - 1
    for seq, out in zip(seqs[1:], rest):
        np.testing.assert_allclose(out, module(seq)[0], rtol=1e-5, atol=1e-6)
    assert list(fastlstm.forward_many(module, iter([]))) == []


def test_inputs_of_every_form():
    rng = np.random.default_rng(4)
    module = fastlstm.LSTM(3, 5, rng=0)
    seqs = _seqs(rng, [4, 2], features=3)
    assert fastlstm.forward_many(module, []) == []
    lists = fastlstm.forward_many(module, [s.tolist() for s in seqs])
    wide = fastlstm.forward_many(module, (s.astype(np.float64) for s in seqs))
    for got in (lists, list(wide)):
        for out, seq in zip(got, seqs):
            assert out.dtype == np.float32
            np.testing.assert_allclose(out, module(seq)[0], rtol=1e-5, atol=1e-6)
    double = fastlstm.LSTM(3, 5, rng=0, dtype="float64")
    assert fastlstm.forward_many(double, seqs)[0].dtype == np.float64
    stacked = np.stack([seqs[0], seqs[0]])  # an array of equal-length sequences
    assert len(fastlstm.forward_many(module, stacked)) == 2


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
def test_torch_tensors_in_give_torch_tensors_out():
    rng = np.random.default_rng(5)
    module = fastlstm.LSTM(3, 5, rng=0)
    seqs = _seqs(rng, [4, 2], features=3)
    outs = fastlstm.forward_many(module, [TORCH.from_numpy(s) for s in seqs],
                                 return_states=True)
    for seq, (out, (h, c)) in zip(seqs, outs):
        assert all(isinstance(t, TORCH.Tensor) for t in (out, h, c))
        np.testing.assert_allclose(out.numpy(), module(seq)[0], rtol=1e-5, atol=1e-6)


def test_errors_name_the_sequence():
    module = fastlstm.LSTM(3, 5, rng=0)
    good = np.zeros((4, 3), np.float32)
    cases = [
        (np.zeros((0, 3), np.float32), RuntimeError,
         "sequence 1: Expected sequence length to be larger than 0"),
        (np.zeros((4, 2), np.float32), RuntimeError,
         "sequence 1: input.size\\(-1\\) must be equal to input_size. Expected 3, got 2"),
        (np.zeros((4, 3), np.int64), ValueError, "sequence 1: RNN input dtype \\(int64\\)"),
        (np.zeros((1, 4, 3), np.float32), ValueError, "sequence 1: .*2D"),
        (np.float32(1.0), ValueError, "sequence 1: .*0D"),  # no len(): named all the same
        (np.array(1.0, np.float32), ValueError, "sequence 1: .*0D"),
    ]
    for bad, kind, match in cases:
        for seqs in ([good, bad, good], itertools.chain([good, bad, good])):
            with pytest.raises(kind, match=match):
                list(fastlstm.forward_many(module, seqs))
    with pytest.raises(TypeError, match="expects a fastlstm.LSTM"):
        fastlstm.forward_many(fastlstm.LSTMCell(3, 5), [good])
    for budget in (0, -1, 2.5, True):
        with pytest.raises(TypeError, match="max_batch_tokens must be a positive int"):
            fastlstm.forward_many(module, [good], max_batch_tokens=budget)
    # Refused at the call, not when the results are read.
    with pytest.raises(TypeError, match="an iterable of sequences, got int"):
        fastlstm.forward_many(module, 5)
    with pytest.raises(TypeError, match=r"got a dict \(pass its .values\(\)\)"):
        fastlstm.forward_many(module, {0: good})


def test_sized_iterables_give_lists():
    module = fastlstm.LSTM(3, 5, rng=0)
    rng = np.random.default_rng(4)
    seqs = {f"s{n}": rng.standard_normal((n, 3)).astype(np.float32) for n in (4, 1, 7)}
    class Sized:  # len and iteration, no indexing
        def __len__(self):
            return 2

        def __iter__(self):
            return iter([seqs["s4"], seqs["s7"]])

    class Labelled:  # [i] by label, iteration by position: a pandas Series after a sort
        def __init__(self):
            self.labels = [2, 0, 1]

        def __len__(self):
            return 3

        def __iter__(self):
            return iter(seqs.values())

        def __getitem__(self, label):
            return list(seqs.values())[self.labels.index(label)]

    for given in (seqs.values(), Sized(), Labelled()):
        outs = fastlstm.forward_many(module, given)
        assert isinstance(outs, list) and len(outs) == len(given)
        for out, seq in zip(outs, given):
            np.testing.assert_array_equal(out, module(seq)[0])


def test_reduced_precision_modules_too():
    rng = np.random.default_rng(6)
    base = fastlstm.LSTM(6, 16, num_layers=2, rng=0)
    seqs = _seqs(rng, [9, 3, 14, 1])
    for dtype in ("bfloat16", "int8"):
        module = fastlstm.quantize(base, dtype)
        for seq, out in zip(seqs, fastlstm.forward_many(module, seqs)):
            # the same quantized module on one sequence: per-row quantization, so a
            # sequence's result does not depend on its batch-mates
            np.testing.assert_allclose(out, module(seq)[0], rtol=1e-4, atol=1e-5)


def test_even_batches_for_threads_side_by_side():
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 60, size=200)
    total = int(lengths.sum())
    for parts in (2, 3, 4):
        for budget in (1, 40, 300, 1000, total // parts + 60, total):
            batches = _batches(lengths, budget, parts)
            order = np.concatenate(batches)
            assert sorted(order) == list(range(len(lengths)))
            assert list(lengths[order]) == sorted(lengths, reverse=True)
            sizes = np.array([lengths[b].sum() for b in batches])
            for b, size in zip(batches, sizes):
                assert len(b) == 1 or size <= budget
            # about equal: each within one sequence's length of the others
            assert sizes.max() - sizes.min() <= 2 * lengths.max(), (parts, budget)
            if budget >= total // parts + 60:  # room for one batch per thread
                assert len(batches) == parts


@pytest.fixture
def two_threads():
    """fastlstm on 2 threads for the test (skipped where OpenMP gives only one)."""
    fastlstm.set_num_threads(2)
    try:
        if fastlstm.get_num_threads() < 2:
            pytest.skip("a build without OpenMP runs on one thread")
        yield
    finally:
        fastlstm.set_num_threads(None)


def _spy_runs(monkeypatch, meet=0):
    """Record (thread, threads given) of every call of LSTM._run; the first ``meet``
    calls wait for one another at a barrier (which breaks if they do not overlap)."""
    from fastlstm.lstm import LSTM

    calls, orig = [], LSTM._run
    barrier = threading.Barrier(meet, timeout=20) if meet else None

    def spy(self, *args):
        calls.append((threading.get_ident(), args[5] if len(args) > 5 else None))
        if barrier is not None and len(calls) <= meet:
            barrier.wait()
        return orig(self, *args)

    monkeypatch.setattr(LSTM, "_run", spy)
    return calls


def test_batches_run_side_by_side_each_on_its_own_thread(monkeypatch, two_threads):
    rng = np.random.default_rng(8)
    module = fastlstm.LSTM(6, 12, num_layers=2, rng=4)
    seqs = _seqs(rng, rng.integers(1, 40, size=60))
    want = [module(s) for s in seqs]
    calls = _spy_runs(monkeypatch, meet=2)  # the first two batches overlap in time
    outs = fastlstm.forward_many(module, seqs, max_batch_tokens=100, return_states=True)
    assert len(calls) >= 2 and len({t for t, _ in calls}) == 2
    assert threading.get_ident() not in {t for t, _ in calls}
    assert {n for _, n in calls} == {1}  # one thread each: 2 batches x 1 <= 2 threads
    exact = batch_invariant()  # else BLAS may round otherwise
    for (out, (h, c)), (wo, (wh, wc)) in zip(outs, want):
        for got, ref in ((out, wo), (h, wh), (c, wc)):
            if exact:
                np.testing.assert_array_equal(got, ref)
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # four batches' worth on 4 threads (as many usable CPUs: no bound known here): 2 side
    # by side (two each), 2 threads each
    from fastlstm import _threads

    monkeypatch.setattr(_threads, "_cap", lambda: 0)
    fastlstm.set_num_threads(4)
    calls = _spy_runs(monkeypatch, meet=2)  # on a busy machine one thread could take all
    fastlstm.forward_many(module, seqs, max_batch_tokens=sum(map(len, seqs)) // 4 + 40)
    assert [n for _, n in calls] == [2, 2, 2, 2] and len({t for t, _ in calls}) == 2
    monkeypatch.undo()
    # three batches' worth on 2 threads: one batch at a time, both threads on it
    fastlstm.set_num_threads(2)
    calls = _spy_runs(monkeypatch)
    fastlstm.forward_many(module, seqs, max_batch_tokens=sum(map(len, seqs)) // 3 + 40)
    assert len(calls) == 3 and set(calls) == {(threading.get_ident(), None)}


@pytest.mark.parametrize("threads", [1, 2])
def test_batches_reuse_their_buffers_and_each_output_is_its_own(monkeypatch, threads):
    """A window's batches share a workspace per batch running at once (no fresh buffers
    to fault in per batch); every output is a copy, unharmed by the batches after it."""
    from fastlstm.lstm import LSTM

    rng = np.random.default_rng(12)
    module = LSTM(6, 12, num_layers=3, rng=6)
    seqs = _seqs(rng, rng.integers(1, 40, size=80))
    want = [module(s)[0] for s in seqs]
    seen, orig, started = [], LSTM._run, []
    # The first two batches meet: on a busy machine one thread could take them all.
    barrier = threading.Barrier(2, timeout=20) if threads == 2 else None

    def spy(self, *args):
        started.append(1)
        if barrier is not None and len(started) <= 2:
            barrier.wait()
        out = orig(self, *args)
        seen.append((args[6], {k: v for k, v in args[6].items()}))
        return out

    monkeypatch.setattr(LSTM, "_run", spy)
    fastlstm.set_num_threads(threads)
    try:
        outs = fastlstm.forward_many(module, seqs, max_batch_tokens=120)
    finally:
        fastlstm.set_num_threads(None)
    assert len(seen) > 4
    assert len({id(ws) for ws, _ in seen}) == threads  # a workspace per batch at once
    for ws, _ in seen:
        assert {"data", "gates", "out0", "out1"} <= set(ws)
    if threads == 1:  # the longest batch first: the later ones fit in its buffers
        assert all(bufs[k] is seen[0][1][k] for _, bufs in seen for k in bufs)
    else:  # batches of about equal timesteps: each workspace grows seldom (how many
        # batches each pool thread takes is up to the scheduler: > 4 on 2, so one has 3+)
        for ws in {id(w) for w, _ in seen}:
            runs = [bufs for w, bufs in seen if id(w) == ws]
            if len(runs) > 2:
                assert len({id(bufs["gates"]) for bufs in runs}) < len(runs)
    buffers = [b for _, bufs in seen for b in bufs.values()]
    for k, (out, ref) in enumerate(zip(outs, want)):
        assert not any(np.shares_memory(out, b) for b in buffers)
        assert not np.shares_memory(out, outs[k - 1])
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_one_thread_one_batch_or_an_overridden_forward_run_in_the_callers_thread(
        monkeypatch):
    rng = np.random.default_rng(9)
    seqs = _seqs(rng, rng.integers(1, 30, size=30))
    seen = []

    class Wrapped(fastlstm.LSTM):
        def forward(self, input, hx=None):
            seen.append(threading.get_ident())
            return super().forward(input, hx)

    module = Wrapped(6, 8, rng=5)
    plain = fastlstm.LSTM(6, 8, rng=5)
    calls = _spy_runs(monkeypatch)
    fastlstm.set_num_threads(2)
    try:
        outs = fastlstm.forward_many(module, seqs, max_batch_tokens=50)
        assert len(seen) > 1 and set(seen) == {threading.get_ident()}
        for seq, out in zip(seqs, outs):
            np.testing.assert_allclose(out, plain(seq)[0], rtol=1e-5, atol=1e-6)
        calls.clear()
        fastlstm.forward_many(plain, seqs, max_batch_tokens=10**6)  # one batch
        # dropout in training: the masks come in the batches' order, the same every time
        runs = []
        for _ in range(2):
            noisy = fastlstm.LSTM(6, 8, num_layers=2, dropout=0.5, rng=7).train()
            runs.append(fastlstm.forward_many(noisy, seqs, max_batch_tokens=50))
        assert all(np.array_equal(a, b) for a, b in zip(*runs))
        fastlstm.set_num_threads(1)
        fastlstm.forward_many(plain, seqs, max_batch_tokens=50)
        assert len(calls) > 2 and set(calls) == {(threading.get_ident(), None)}
    finally:
        fastlstm.set_num_threads(None)


def test_an_error_in_a_batch_thread_reaches_the_caller(monkeypatch, two_threads):
    from fastlstm.lstm import LSTM

    orig, count = LSTM._run, itertools.count()

    def failing(self, *args):
        if next(count) == 1:  # the second batch, in a batch thread
            assert threading.current_thread() is not threading.main_thread()
            raise MemoryError("no room for this batch")
        time.sleep(0.05)  # the others slow, so that most are still waiting at the error
        return orig(self, *args)

    monkeypatch.setattr(LSTM, "_run", failing)
    rng = np.random.default_rng(10)
    module = fastlstm.LSTM(6, 8, rng=6)
    seqs = _seqs(rng, rng.integers(1, 30, size=40))
    batches = len(_batches(np.array([len(s) for s in seqs]), 40, 2))
    with pytest.raises(MemoryError, match="no room"):
        fastlstm.forward_many(module, seqs, max_batch_tokens=40)
    assert 2 <= next(count) < batches - 2  # the batches not started were dropped


def test_no_more_batches_side_by_side_than_usable_cpus(monkeypatch):
    """set_num_threads may ask for more threads than the CPUs; a call never runs more,
    and forward_many starts no more Python threads than that either."""
    from fastlstm import _threads
    from fastlstm.batching import _parts

    module = fastlstm.LSTM(3, 4, rng=0)
    lengths = np.full(400, 50, dtype=np.int64)  # room for many parts
    fastlstm.set_num_threads(8)
    try:
        if fastlstm.get_num_threads() < 8:
            pytest.skip("a build without OpenMP runs on one thread")
        for cap, want in ((1, (1, 0)), (2, (2, 1)), (0, (8, 1))):  # 0: no bound known
            monkeypatch.setattr(_threads, "_cap", lambda cap=cap: cap)
            assert _parts(module, lengths, 100) == want, cap
    finally:
        fastlstm.set_num_threads(None)
