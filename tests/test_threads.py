"""Threads: the thread-count setting, its effect on results, concurrent calls
from Python threads, the GIL, scipy's BLAS thread count, and memory use."""

import copy
import gc
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _helpers import TOL

import fastlstm
from fastlstm import rnn
from fastlstm._ext import openmp
from fastlstm._threads import single_threaded_blas

DTYPES = [np.float32, np.float64]
OPENMP = openmp.openmp_enabled()


def _ids(dtype):
    return np.dtype(dtype).name


@pytest.fixture(autouse=True)
def default_threads():
    """Every test starts and ends with the default thread count."""
    fastlstm.set_num_threads(None)
    try:
        yield
    finally:
        fastlstm.set_num_threads(None)


def _assert_close(actual, expected, dtype, what=""):
    out, (h, c) = actual
    ref_out, (ref_h, ref_c) = expected
    for a, b, name in ((out, ref_out, "output"), (h, ref_h, "h_n"), (c, ref_c, "c_n")):
        assert a.shape == b.shape and a.dtype == b.dtype, (what, name)
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype], err_msg=f"{what} {name}")


def _copy(result):
    out, (h, c) = result
    return out.copy(), (h.copy(), c.copy())


# ----------------------------------------------------------- the setting
def test_default_num_threads():
    expected = openmp.omp_max_threads() if OPENMP else 1
    assert fastlstm.get_num_threads() == max(1, expected)
    assert fastlstm.get_num_threads() >= 1


def test_set_and_reset_num_threads():
    default = fastlstm.get_num_threads()
    try:
        fastlstm.set_num_threads(3)
        assert fastlstm.get_num_threads() == (3 if OPENMP else 1)
        fastlstm.set_num_threads(1)
        assert fastlstm.get_num_threads() == 1
        fastlstm.set_num_threads(2)
        assert fastlstm.get_num_threads() == (2 if OPENMP else 1)
    finally:
        fastlstm.set_num_threads(None)
    assert fastlstm.get_num_threads() == default


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_set_num_threads_rejects_non_positive(bad):
    before = fastlstm.get_num_threads()
    with pytest.raises(ValueError):
        fastlstm.set_num_threads(bad)
    assert fastlstm.get_num_threads() == before


def test_set_num_threads_takes_numpy_integers():
    try:
        fastlstm.set_num_threads(np.int64(1))
        assert fastlstm.get_num_threads() == 1 and type(fastlstm._threads._num_threads) is int
    finally:
        fastlstm.set_num_threads(None)


@pytest.mark.parametrize("bad", [2.5, 2.0, "2", True, False, [2], np.bool_(True), np.float64(2)])
def test_set_num_threads_rejects_non_int(bad):
    before = fastlstm.get_num_threads()
    with pytest.raises(TypeError):
        fastlstm.set_num_threads(bad)
    assert fastlstm.get_num_threads() == before


@pytest.mark.skipif(not OPENMP, reason="fastlstm was built without OpenMP")
def test_omp_num_threads_is_honoured():
    env = dict(os.environ, OMP_NUM_THREADS="3")
    code = ("import fastlstm; print(fastlstm.get_num_threads()); "
            "fastlstm.set_num_threads(5); print(fastlstm.get_num_threads()); "
            "fastlstm.set_num_threads(None); print(fastlstm.get_num_threads())")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    # OMP_NUM_THREADS bounds the default, and so do the CPUs the process may use.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 3
    default = str(min(3, cpus)) if OPENMP else "1"
    assert res.stdout.split() == [default, "5" if OPENMP else "1", default]


def test_a_huge_thread_count_is_held_to_65536_and_calls_stay_fast():
    x = np.ones((5, 2, 4), np.float32)
    module = fastlstm.LSTM(4, 8, rng=0)
    want = module(x)
    try:
        for n in (2**29, 2**31, 2**70):  # 4 * 2**29 overflowed a C int in the schedule
            fastlstm.set_num_threads(n)
            assert fastlstm.get_num_threads() == (1 << 16 if OPENMP else 1)
            start = time.perf_counter()
            got = module(x)
            assert time.perf_counter() - start < 5  # took 10 s and more
            np.testing.assert_array_equal(got[0], want[0])
    finally:
        fastlstm.set_num_threads(None)


def _in_a_process(env, code):
    res = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                         capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    return res


def test_level_variables_any_case_and_bad_ones_ignored_with_a_warning():
    code = ("from fastlstm._ext import kernels; "
            "print(kernels.simd_level(), kernels.bf16_level(), kernels.int8_level())")
    best = _in_a_process({}, code).stdout.split()
    res = _in_a_process({"FASTLSTM_SIMD": " Portable ", "FASTLSTM_BF16": "PORTABLE",
                         "FASTLSTM_INT8": "portable"}, code)
    assert res.stdout.split() == ["portable"] * 3 and not res.stderr
    res = _in_a_process({"FASTLSTM_SIMD": "bogus", "FASTLSTM_INT8": "amx-int9"}, code)
    assert res.stdout.split() == best
    assert "FASTLSTM_SIMD='bogus' is ignored: unknown SIMD level" in res.stderr
    assert "FASTLSTM_INT8='amx-int9' is ignored" in res.stderr


@pytest.mark.skipif(not OPENMP, reason="fastlstm was built without OpenMP")
def test_the_bound_names_omp_num_threads_only_when_openmp_took_it():
    code = "import fastlstm; print(fastlstm.show_config(as_dict=True)['num_threads_bound'])"
    for value in ("abc", "0", "-1"):  # refused by OpenMP, which takes its own count
        assert "OMP_NUM_THREADS" not in _in_a_process({"OMP_NUM_THREADS": value}, code).stdout
    assert "OMP_NUM_THREADS=1" in _in_a_process({"OMP_NUM_THREADS": "1"}, code).stdout


# --------------------------------------------------- thread-count invariance
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("batch_first", [False, True])
def test_results_do_not_depend_on_thread_count(dtype, batch_first):
    rng = np.random.default_rng(3)
    module = fastlstm.LSTM(11, 24, num_layers=2, bidirectional=True, proj_size=9,
                           batch_first=batch_first, dtype=dtype, rng=rng)
    batch, seq_len = 7, 13
    shape = (batch, seq_len, 11) if batch_first else (seq_len, batch, 11)
    x = rng.standard_normal(shape).astype(dtype)
    hx = (rng.standard_normal((4, batch, 9)).astype(dtype),
          rng.standard_normal((4, batch, 24)).astype(dtype))
    _tune(module)
    for state in (None, hx):
        fastlstm.set_num_threads(1)
        expected = _copy(module(x, state))
        for threads in (2, 3, 4, 5):
            fastlstm.set_num_threads(threads)
            _assert_close(module(x, state), expected, dtype,
                          f"threads={threads} hx={state is not None}")


def _tune(*modules, **tuning):
    """Run ``modules`` under ``kernels.Tuning(**tuning)``: their calls only, nothing else.
    Their teams are the threads asked for, even past the CPUs of a small machine, and
    never shrink under load, so that every team size asked for really runs."""
    from fastlstm._ext import kernels

    tuning = {"fit_cpus": False, "dynamic": False, **tuning}
    for module in modules:
        module._set_tuning(kernels.Tuning(**tuning))


@pytest.mark.skipif(not OPENMP, reason="a serial build has one thread")
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_split_mode_step_counters_match_barriers(dtype, bidirectional):
    """Split mode (batch 1) with threads sharing a direction: the step counters
    that replace the per-step barriers (used when every thread has a CPU of its
    own, so forced on here as well) give the same bits as the barriers, and the
    oracle's result; also across time chunks and with an initial state."""
    from _helpers.reference import reference_forward

    rng = np.random.default_rng(11)
    for hidden, seq_len in ((40, 9), (256, 700)):
        module = fastlstm.LSTM(8, hidden, bidirectional=bidirectional, dtype=dtype, rng=rng)
        d = 2 if bidirectional else 1
        x = rng.standard_normal((seq_len, 1, 8)).astype(dtype)
        hx = (rng.standard_normal((d, 1, hidden)).astype(dtype),
              rng.standard_normal((d, 1, hidden)).astype(dtype))
        for state in (None, hx):
            out, (h, c) = reference_forward(module, x, state)
            expected = (out.astype(dtype), (h.astype(dtype), c.astype(dtype)))
            for threads in (2, 3, 4):
                fastlstm.set_num_threads(threads)
                results = []
                for mode in (True, False):
                    _tune(module, step_counters=mode)
                    results.append(_copy(module(x, state)))
                what = f"H={hidden} threads={threads} hx={state is not None}"
                for a, b in zip(results[0][1] + (results[0][0],), results[1][1] + (results[1][0],)):
                    np.testing.assert_array_equal(a, b, err_msg=what)
                _assert_close(results[0], expected, dtype, what)


@pytest.mark.skipif(not OPENMP, reason="a serial build has one thread")
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("proj_size,batch_first", [(0, False), (5, True)])
def test_directions_in_turn_match_oracle(dtype, proj_size, batch_first):
    """A bidirectional layer whose directions run one after the other on all the
    threads (what a single sequence with a large W_hh gets on 2 threads; forced
    here for small sizes): the oracle's result for 1 to 4 threads, with step
    counters and with barriers, across time chunks, stacked, with and without
    an initial state, batch 1 and 3."""
    from _helpers.reference import reference_forward

    rng = np.random.default_rng(12)
    module = fastlstm.LSTM(6, 40, num_layers=2, bidirectional=True, proj_size=proj_size,
                           batch_first=batch_first, dtype=dtype, rng=rng)
    out_size = proj_size or 40
    for batch in (1, 3):
        shape = (batch, 23, 6) if batch_first else (23, batch, 6)
        x = rng.standard_normal(shape).astype(dtype)
        hx = (rng.standard_normal((4, batch, out_size)).astype(dtype),
              rng.standard_normal((4, batch, 40)).astype(dtype))
        for state in (None, hx):
            out, (h, c) = reference_forward(module, x, state)
            expected = (out.astype(dtype), (h.astype(dtype), c.astype(dtype)))
            for threads in (1, 2, 3, 4):
                fastlstm.set_num_threads(threads)
                for mode in (True, False):
                    # Time chunks of 7 steps.
                    _tune(module, dirs_in_turn=True, step_counters=mode, gate_buffer_bytes=1,
                          min_chunk_rows=7)
                    _assert_close(module(x, state), expected, dtype,
                                  f"N={batch} threads={threads} counters={mode} "
                                  f"hx={state is not None}")


@pytest.mark.skipif(not OPENMP, reason="a serial build has one thread")
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_split_by_size_matches_oracle(dtype):
    """Batches with rows enough for batch chunks, forced into split mode (what
    a large W_hh gets) and out of it: the oracle's result on 2 to 4 threads,
    with step counters and barriers, for sequences across time chunks (with
    an initial state, with a projection, bidirectional), packed input,
    one-step calls, LSTMCell steps and a Stream with a projection."""
    from _helpers.reference import lstm_reference, reference_forward

    rng = np.random.default_rng(21)
    batch, hidden = 12, 72
    modules = [fastlstm.LSTM(6, hidden, dtype=dtype, rng=rng),
               fastlstm.LSTM(6, hidden, proj_size=5, batch_first=True, dtype=dtype, rng=rng),
               fastlstm.LSTM(6, hidden, num_layers=2, bidirectional=True, dtype=dtype, rng=rng)]
    cell = fastlstm.LSTMCell(6, hidden, dtype=dtype, rng=rng)
    x = rng.standard_normal((9, batch, 6)).astype(dtype)
    lengths = np.sort(rng.integers(1, 10, batch))[::-1].copy()
    lengths[0] = 9
    packed = rnn.pack_padded_sequence(x, lengths)
    cases = []
    for m in modules:
        d = m.num_layers * (2 if m.bidirectional else 1)
        hx = (rng.standard_normal((d, batch, m.proj_size or hidden)).astype(dtype),
              rng.standard_normal((d, batch, hidden)).astype(dtype))
        xm = x.transpose(1, 0, 2).copy() if m.batch_first else x
        cases.append((m, xm, hx, reference_forward(m, xm, hx)))
    m = modules[0]
    cases.append((m, x[:1], cases[0][2], reference_forward(m, x[:1], cases[0][2])))
    c_hx = (rng.standard_normal((batch, hidden)).astype(dtype),
            rng.standard_normal((batch, hidden)).astype(dtype))
    params = {k + "_l0": v for k, v in cell.state_dict().items()}
    _, (c_h, c_c) = lstm_reference(params, x[:1], tuple(v[None] for v in c_hx), num_layers=1,
                                   bidirectional=False, proj_size=0, batch_first=False,
                                   hidden_size=hidden)
    lens = lengths.tolist()
    p_ref = [reference_forward(m, x[:n, i]) for i, n in enumerate(lens)]
    s_mod = fastlstm.LSTM(6, hidden, num_layers=2, proj_size=5, dtype=dtype, rng=rng)
    s_ref, (s_h, s_c) = reference_forward(s_mod, x[:3])
    for threads in (2, 3, 4):
        fastlstm.set_num_threads(threads)
        for forced in (True, False):
            for counters in (True, False):
                # Time chunks of 2 steps.
                _tune(*modules, cell, s_mod, split=forced, step_counters=counters,
                      gate_buffer_bytes=1, min_chunk_rows=24)
                what = f"threads={threads} split={forced} counters={counters}"
                for k, (m, xm, hx, expected) in enumerate(cases):
                    expected = (expected[0].astype(dtype),
                                tuple(v.astype(dtype) for v in expected[1]))
                    _assert_close(m(xm, hx), expected, dtype, f"{what} case {k}")
                h, c = cell(x[0], c_hx)
                np.testing.assert_allclose(h, c_h[0], rtol=0, atol=TOL[dtype], err_msg=what)
                np.testing.assert_allclose(c, c_c[0], rtol=0, atol=TOL[dtype], err_msg=what)
                stream = fastlstm.Stream(s_mod, batch)
                for t in range(3):
                    y = stream.step(x[t])
                    np.testing.assert_allclose(y, s_ref[t], rtol=0, atol=TOL[dtype],
                                               err_msg=f"{what} stream step {t}")
                np.testing.assert_allclose(stream.h, s_h, rtol=0, atol=TOL[dtype], err_msg=what)
                np.testing.assert_allclose(stream.c, s_c, rtol=0, atol=TOL[dtype], err_msg=what)
                out, (h_n, c_n) = m(packed)
                padded, _ = rnn.pad_packed_sequence(out)
                for i, (n, (ref, (ref_h, ref_c))) in enumerate(zip(lens, p_ref)):
                    for a, b in ((padded[:n, i], ref), (h_n[:, i], ref_h), (c_n[:, i], ref_c)):
                        np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype],
                                                   err_msg=f"{what} packed {i}")


def _plan(hidden, batch, threads, seq_len=50, tuning=None, batch_first=False, **kwargs):
    from fastlstm._ext import kernels

    w = fastlstm.LSTM(8, hidden, rng=0, **kwargs)._packed_layers()[0]
    return kernels.schedule(w, batch, seq_len, hidden, threads, False, tuning, batch_first)


def test_split_by_size_rule():
    """Split mode from an L2 of W_hh per direction on (half an L2 while the batch
    gives a thread fewer than 16 rows), for directions of 2 threads that get 4 panels
    each; batch chunks otherwise; a Tuning forces it both ways."""
    from fastlstm._ext import kernels

    l2 = 1 << 20  # a W_hh per direction of 4 * H * H float32 bytes: H = 256 is 1 MiB
    tune = kernels.Tuning(l2_bytes=l2)
    assert _plan(256, 64, 2, tuning=tune)[1] == 0  # 1 MiB >= the L2
    assert _plan(256, 16, 4, tuning=tune, bidirectional=True)[1] == 0
    assert _plan(128, 64, 2, tuning=tune)[1] == 2  # 256 KiB fits: a chunk per thread
    half = kernels.Tuning(l2_bytes=512 << 10)  # H = 128: W_hh is half the L2
    assert _plan(128, 16, 2, tuning=half)[1] == 0  # 8 rows a thread: split
    assert _plan(128, 32, 2, tuning=half)[1] == 2  # 16 rows a thread: chunks
    assert _plan(128, 256, 2, tuning=half)[1] == 2
    assert _plan(192, 256, 2, tuning=half)[1] == 0  # 576 KiB: split
    assert _plan(16, 64, 2, tuning=kernels.Tuning(l2_bytes=64))[1] == 2  # < 4 panels each
    assert _plan(512, 64, 4, tuning=tune)[1] == 4  # 2 threads per direction only (measured)
    assert _plan(512, 64, 2, tuning=tune, bidirectional=True)[1] == 1  # one per direction
    assert _plan(16, 3, 2, tuning=tune)[1] == 0  # rows too few for chunks
    forced = kernels.Tuning(l2_bytes=l2, split=True)
    assert _plan(16, 64, 2, tuning=forced)[1] == 0
    assert _plan(16, 64, 2, tuning=forced, bidirectional=True)[1] == 1
    never = kernels.Tuning(l2_bytes=l2, split=False)
    assert _plan(512, 64, 2, tuning=never)[1] == 2 and _plan(512, 3, 2, tuning=never)[1] == 0


def test_directions_in_turn_rule():
    """In turn only for a single sequence on 2 threads whose W_hh per direction
    is at least an L2; a Tuning forces it both ways."""
    from fastlstm._ext import kernels

    tune = kernels.Tuning(l2_bytes=1 << 20)  # H = 256: exactly 1 MiB per direction
    assert _plan(256, 1, 2, tuning=tune, bidirectional=True)[4]
    assert _plan(512, 1, 2, tuning=tune, bidirectional=True)[4]
    assert not _plan(240, 1, 2, tuning=tune, bidirectional=True)[4]  # fits a thread's L2
    assert not _plan(512, 2, 2, tuning=tune, bidirectional=True)[4]
    assert not _plan(512, 1, 4, tuning=tune, bidirectional=True)[4]
    assert not _plan(512, 1, 2, tuning=tune)[4]  # one direction: nothing to run in turn
    assert not _plan(512, 1, 2, seq_len=1, tuning=tune, bidirectional=True)[4]  # one step
    plan = _plan(16, 3, 4, tuning=kernels.Tuning(dirs_in_turn=True), bidirectional=True)
    assert plan[4] and plan[1] == 0  # in turn: split mode
    assert not _plan(512, 1, 2, tuning=kernels.Tuning(l2_bytes=1 << 20, dirs_in_turn=False),
                     bidirectional=True)[4]


def test_time_chunk_rule():
    """A time chunk's gate buffer stays under 2 MiB but holds 256 rows or more; 1024 or
    more, up to 8 MiB of gates, when each chunk's float32 projection reads all the
    weights again: BLAS's (it packs them on every call), or the AVX2 kernels' once a
    timestep's gates take half an L2 or more."""
    from fastlstm._ext import kernels

    # The projection never goes to BLAS; an L2 of 1 MiB, so that 64 rows of 4 KiB of
    # gates stay under half of it.
    own = kernels.Tuning(blas_min_rows=1 << 30, l2_bytes=1 << 20)
    blas = kernels.Tuning(blas_min_rows=64)
    # One direction at H = 256 float32: 4 KiB of gates per row.
    assert _plan(256, 1, 1, seq_len=1000, tuning=own)[2] == 512  # 2 MiB / 4 KiB
    assert _plan(256, 64, 1, seq_len=1000, tuning=own)[2] == 8
    assert _plan(256, 1024, 1, seq_len=1000, tuning=own)[2] == 1  # 256 rows: one step
    assert _plan(256, 1, 1, seq_len=100, tuning=own)[2] == 100  # never past the sequence
    assert _plan(256, 1, 1, seq_len=1, tuning=own)[2] == 1
    tiny = kernels.Tuning(gate_buffer_bytes=1, min_chunk_rows=7)
    assert _plan(256, 3, 1, seq_len=100, tuning=tiny)[2] == 3
    # BLAS's float32 projections: 1024 rows, as far as 8 MiB of gates.
    assert _plan(256, 1, 1, seq_len=2000, tuning=blas)[2] == 1024
    assert _plan(256, 64, 1, seq_len=1000, tuning=blas)[2] == 16
    assert _plan(256, 1024, 1, seq_len=1000, tuning=blas)[2] == 1
    assert _plan(1024, 64, 1, seq_len=1000, tuning=blas, bidirectional=True)[2] == 4  # 32 KiB
    assert _plan(256, 64, 1, seq_len=1000, tuning=kernels.Tuning(blas_min_rows=64,
                                                                  long_chunk_rows=256))[2] == 8
    # float64, and batch-first input (which projects each sequence's steps apart): 256.
    assert _plan(256, 64, 1, seq_len=1000, tuning=blas, dtype=np.float64)[2] == 4
    assert _plan(256, 64, 1, seq_len=1000, tuning=blas, batch_first=True)[2] == 8
    assert _plan(256, 1, 1, seq_len=2000, tuning=blas, batch_first=True)[2] == 1024
    # The AVX2 kernels' own projections: long chunks from 128 rows of 4 KiB (half of 1 MiB).
    previous = kernels.simd_level()
    for level in kernels.simd_available():
        kernels.set_simd_level(level)
        try:
            assert _plan(256, 128, 1, seq_len=1000, tuning=own)[2] == (
                8 if level == "avx2" else 4)
            assert _plan(256, 64, 1, seq_len=1000, tuning=own)[2] == 8
            assert _plan(256, 128, 1, seq_len=1000, tuning=own, dtype=np.float64)[2] == 2
        finally:
            kernels.set_simd_level(previous)
    # By default the SIMD level decides where BLAS takes the projection.
    default = _plan(256, 64, 1, seq_len=1000)
    long = default[3] < (1 << 30) or (kernels.simd_level() == "avx2"
                                      and 2 * 64 * 4096 >= kernels._l2_bytes())
    assert default[2] == (16 if long else 8)


def test_schedule_of_the_threads_and_blas():
    from fastlstm._ext import kernels

    assert _plan(64, 8, 3)[0] == 3  # a sequence gets the threads asked for
    assert _plan(64, 8, 0)[0] == fastlstm.get_num_threads()  # 0: the default
    level = kernels.simd_level()
    want = {"avx512": 1 << 30, "avx2": 1 << 30, "portable": 16}[level]  # float32
    assert _plan(64, 8, 2)[3] == want
    want = {"avx512": 1 << 30, "avx2": 64, "portable": 16}[level]  # float64
    assert _plan(64, 8, 2, dtype=np.float64)[3] == want
    assert _plan(64, 8, 2, tuning=kernels.Tuning(blas_min_rows=5))[3] == 5
    with pytest.raises(TypeError):
        fastlstm.LSTM(2, 3)._set_tuning({"split": True})
    with pytest.raises(ValueError, match="positive"):
        kernels.Tuning(min_chunk_rows=0)


# ---------------------------------------------------------- concurrency
def _scipy_blas_threads():
    """{filepath: num_threads} for the BLAS that scipy calls (all BLAS if unknown)."""
    import scipy.linalg.cython_blas  # noqa: F401
    import threadpoolctl

    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    own = [i for i in blas if "scipy.libs" in i["filepath"]] or blas
    return {i["filepath"]: i["num_threads"] for i in own}


@pytest.fixture
def scipy_blas_at_3_threads():
    """Give scipy's BLAS 3 threads for the test (so that a leaked pin to 1
    shows), and put back what it had afterwards.  Yields whether it took."""
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import ThreadpoolController

    paths = set(_scipy_blas_threads())
    ctrls = [c for c in ThreadpoolController().select(user_api="blas").lib_controllers
             if c.filepath in paths]
    saved = [(c, c.get_num_threads()) for c in ctrls]
    for c in ctrls:
        c.set_num_threads(3)
    try:
        yield set(_scipy_blas_threads().values()) == {3}
    finally:
        for c, n in saved:
            c.set_num_threads(n)


# (input_size, hidden, num_layers, bidirectional, proj_size, batch_first)
CONFIGS = [
    (5, 12, 1, False, 0, False),
    (7, 20, 2, True, 6, True),
    (3, 9, 2, False, 4, False),
    (6, 33, 1, True, 0, True),
]


def _inputs_for_thread(i, module, rng):
    """20 inputs of varied shapes (and sometimes a state) for thread i."""
    items = []
    for j in range(20):
        seq_len = 1 + (i + 3 * j) % 9
        batch = (i + j) % 6  # 0 = unbatched
        feat = module.input_size
        if batch == 0:
            x = rng.standard_normal((seq_len, feat))
        elif module.batch_first:
            x = rng.standard_normal((batch, seq_len, feat))
        else:
            x = rng.standard_normal((seq_len, batch, feat))
        x = x.astype(module.dtype)
        hx = None
        if j % 3 == 0:
            d = module.num_layers * (2 if module.bidirectional else 1)
            out_size = module.proj_size or module.hidden_size
            lead = (d,) if batch == 0 else (d, batch)
            hx = (rng.standard_normal(lead + (out_size,)).astype(module.dtype),
                  rng.standard_normal(lead + (module.hidden_size,)).astype(module.dtype))
        items.append((x, hx))
    return items


def _run_concurrently(jobs):
    """Run the callables in 8 Python threads started together; return their results."""
    barrier = threading.Barrier(len(jobs))

    def wrap(job):
        barrier.wait()
        return job()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(wrap, job) for job in jobs]
        return [f.result(timeout=120) for f in futures]


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("config", CONFIGS[1:3], ids=["bidir-proj-batch_first", "proj"])
def test_one_module_shared_by_threads(dtype, config, scipy_blas_at_3_threads):
    inp, hid, layers, bidir, proj, bf = config
    module = fastlstm.LSTM(inp, hid, num_layers=layers, bidirectional=bidir, proj_size=proj,
                           batch_first=bf, dtype=dtype, rng=1)
    rng = np.random.default_rng(42)
    work = [_inputs_for_thread(i, module, rng) for i in range(8)]
    blas_before = _scipy_blas_threads()
    # Single-threaded results first (and the packed weights are dropped so
    # that the threads also race to build them).
    expected = [[_copy(module(x, hx)) for x, hx in items] for items in work]
    module.load_state_dict(module.state_dict())

    def job(items):
        return lambda: [_copy(module(x, hx)) for x, hx in items]

    results = _run_concurrently([job(items) for items in work])
    for i in range(8):
        for j in range(20):
            _assert_close(results[i][j], expected[i][j], dtype, f"thread {i} call {j}")
    assert _scipy_blas_threads() == blas_before


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_one_module_per_thread(dtype, scipy_blas_at_3_threads):
    modules = []
    for i in range(8):
        inp, hid, layers, bidir, proj, bf = CONFIGS[i % len(CONFIGS)]
        modules.append(fastlstm.LSTM(inp, hid, num_layers=layers, bidirectional=bidir,
                                     proj_size=proj, batch_first=bf, dtype=dtype, rng=i))
    rng = np.random.default_rng(7)
    work = [_inputs_for_thread(i, m, rng) for i, m in enumerate(modules)]
    blas_before = _scipy_blas_threads()
    expected = [[_copy(m(x, hx)) for x, hx in items] for m, items in zip(modules, work)]
    for m in modules:
        m.load_state_dict(m.state_dict())

    def job(m, items):
        return lambda: [_copy(m(x, hx)) for x, hx in items]

    results = _run_concurrently([job(m, items) for m, items in zip(modules, work)])
    for i in range(8):
        for j in range(20):
            _assert_close(results[i][j], expected[i][j], dtype, f"thread {i} call {j}")
    assert _scipy_blas_threads() == blas_before


@pytest.mark.skipif(not OPENMP or len(os.sched_getaffinity(0)) < 2,
                    reason="needs OpenMP and 2 CPUs")
@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_reduced_weights_split_with_step_counters_equal_one_thread(kind):
    # One-timestep chunks, split mode, step counters: a thread that finished a step could
    # prepare the next chunk's input rows over those another thread still projected.
    from fastlstm._ext import kernels

    x = np.random.default_rng(1).standard_normal((20, 7, 5)).astype(np.float32)
    m = fastlstm.quantize(fastlstm.LSTM(5, 9, rng=3), kind)
    big = fastlstm.quantize(fastlstm.LSTM(16, 384, rng=3), kind)  # the default schedule
    xb = np.random.default_rng(2).standard_normal((3, 400, 16)).astype(np.float32)
    try:
        fastlstm.set_num_threads(1)
        want, want_big = m(x)[0], big(xb)[0]
        fastlstm.set_num_threads(2)
        m._set_tuning(kernels.Tuning(gate_buffer_bytes=1, min_chunk_rows=1, split=True,
                                     step_counters=True))
        bad = sum(not np.array_equal(m(x)[0], want) for _ in range(150))
        bad_big = sum(not np.array_equal(big(xb)[0], want_big) for _ in range(10))
    finally:
        fastlstm.set_num_threads(None)
    assert (bad, bad_big) == (0, 0)


@pytest.mark.skipif(not OPENMP, reason="needs OpenMP")
@pytest.mark.parametrize("kind", ["float32", "bfloat16", "int8"])
def test_odd_teams_with_an_empty_share_equal_one_thread(kind):
    # A bidirectional layer split over 3 or 5 threads leaves one thread without units: it
    # keeps the barriers, or with step counters sits the steps out.
    from fastlstm._ext import kernels

    m = fastlstm.LSTM(5, 40, num_layers=2, bidirectional=True, rng=2)
    if kind != "float32":
        m = fastlstm.quantize(m, kind)
    x = np.random.default_rng(3).standard_normal((7, 3, 5)).astype(np.float32)
    try:
        fastlstm.set_num_threads(1)
        want = m(x)
        for threads in (3, 5):
            fastlstm.set_num_threads(threads)
            for counters in (True, False):
                m._set_tuning(kernels.Tuning(gate_buffer_bytes=1, min_chunk_rows=1, split=True,
                                             step_counters=counters, dirs_in_turn=False,
                                             fit_cpus=False, dynamic=False))
                out, (h, c) = m(x)
                for got, ref in ((out, want[0]), (h, want[1][0]), (c, want[1][1])):
                    # float32 at the portable level goes through BLAS, which may round
                    # otherwise; reduced weights never do
                    np.testing.assert_allclose(got, ref, rtol=0,
                                               atol=1e-6 if kind == "float32" else 0,
                                               err_msg=f"{threads} threads, {counters}")
    finally:
        fastlstm.set_num_threads(None)


@pytest.mark.parametrize("steps", [1, 5])
def test_a_cast_in_another_thread_never_fails_a_call(steps):
    # A call reads its dtype from the layers it runs.  The cast another thread makes
    # between the call's reads is played here at the worst moment: while the call
    # fetches the layers it runs.
    for make, x in ((lambda: fastlstm.LSTM(4, 6, num_layers=2, rng=1), np.ones((steps, 2, 4))),
                    (lambda: fastlstm.LSTMCell(4, 6, rng=1), np.ones((2, 4)))):
        want = {np.dtype(np.float64): make().double()(x)[0],
                np.dtype(np.float32): make()(x.astype(np.float32))[0]}
        module = make()  # not packed yet: the call fetches its layers
        fetch, calls = module._packed_layers, []

        def cast_then_fetch(fetch=fetch, module=module, calls=calls):
            calls.append(1)
            if len(calls) == 2:  # the fetch of the call's own layers (the first: a check)
                module.double()
            return fetch()

        module.__dict__["_packed_layers"] = cast_then_fetch  # past the read-only guard
        out = module(x.astype(np.float32))[0]  # in either dtype, whole; never an error
        np.testing.assert_array_equal(out, want[out.dtype])


def test_single_threaded_blas_pins_and_restores(scipy_blas_at_3_threads):
    if not scipy_blas_at_3_threads:
        pytest.skip("scipy's BLAS does not take a thread count")
    before = _scipy_blas_threads()
    with single_threaded_blas():
        assert set(_scipy_blas_threads().values()) == {1}
        with single_threaded_blas():  # nested / concurrent regions share the pin
            assert set(_scipy_blas_threads().values()) == {1}
        assert set(_scipy_blas_threads().values()) == {1}
    assert _scipy_blas_threads() == before
    with pytest.raises(RuntimeError):
        with single_threaded_blas():
            raise RuntimeError("boom")
    assert _scipy_blas_threads() == before


def test_a_count_set_during_the_pin_stays(scipy_blas_at_3_threads):
    """Another thread's limit set while a call holds the pin is left as it is at the end."""
    from fastlstm._threads import _scipy_blas_controllers

    if not scipy_blas_at_3_threads:
        pytest.skip("scipy's BLAS does not take a thread count")
    before = _scipy_blas_threads()
    try:
        with single_threaded_blas():
            for c in _scipy_blas_controllers():  # what threadpool_limits(2) would set
                c.set(2)
        assert set(_scipy_blas_threads().values()) == {2}
    finally:
        for c, n in zip(_scipy_blas_controllers(), before.values()):
            c.set(n)


def test_single_threaded_blas_pins_from_any_thread(scipy_blas_at_3_threads):
    # threadpoolctl (3.8+) lets only the thread that first set OpenBLAS's count set it;
    # the fixture set it from this thread, and a server's calls come from its workers.
    if not scipy_blas_at_3_threads:
        pytest.skip("scipy's BLAS does not take a thread count")
    before = _scipy_blas_threads()
    seen = []

    def worker():
        with single_threaded_blas():
            seen.append(set(_scipy_blas_threads().values()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [{1}]
    assert _scipy_blas_threads() == before


def test_thread_switches_take_numpy_bools():
    fastlstm.set_dynamic_threads(np.False_)
    assert fastlstm.get_dynamic_threads() is False
    fastlstm.set_dynamic_threads(np.True_)
    assert fastlstm.get_dynamic_threads() is True
    sharing = fastlstm.get_blas_sharing()
    fastlstm.set_blas_sharing(np.bool_(sharing))
    assert fastlstm.get_blas_sharing() is sharing


def test_blas_threads_restored_after_a_failing_call(scipy_blas_at_3_threads):
    module = fastlstm.LSTM(4, 8)
    before = _scipy_blas_threads()
    with pytest.raises(RuntimeError):
        module(np.zeros((3, 2, 5), np.float32))  # wrong input size
    module(np.zeros((3, 2, 4), np.float32))
    assert _scipy_blas_threads() == before


# ------------------------------------------------------------------ GIL
def _count_while_alive(thread):
    """Loops of the main thread while ``thread`` runs, and the wall time.

    The clock starts before ``thread.start()``: a thread that grabs the GIL
    at once would otherwise block the main thread inside ``start()`` and the
    count would cover only the end of its run."""
    n = 0
    t0 = time.perf_counter()
    thread.start()
    while thread.is_alive():
        n += 1
    return n, time.perf_counter() - t0


def _assert_releases_gil(run, what):
    """``run()`` (lasting 0.3 s or more) leaves the main thread free to loop."""
    # The main thread's loop rate while another thread only sleeps (GIL free) ...
    t0 = time.perf_counter()
    run()
    alone = time.perf_counter() - t0
    n_idle, t_idle = _count_while_alive(threading.Thread(target=time.sleep, args=(alone,)))
    # ... and while it runs the computation.
    n_busy, t_busy = _count_while_alive(threading.Thread(target=run))
    idle_rate, busy_rate = n_idle / t_idle, n_busy / t_busy
    assert busy_rate >= 0.3 * idle_rate, (
        f"main thread ran {busy_rate:.3g} loops/s during {what} of {t_busy:.2f} s "
        f"vs {idle_rate:.3g} loops/s idle: {what} seems to hold the GIL")


def _input_lasting(module, make, size, what):
    """An input ``make(n)`` for which one call of ``module`` takes at least 0.3 s,
    growing ``n`` from ``size``."""
    for _ in range(4):
        x = make(size)
        t0 = time.perf_counter()
        module(x)
        alone = time.perf_counter() - t0
        if alone >= 0.3:
            return x
        size = int(size * min(8.0, 0.4 / alone)) + 1
    raise AssertionError(f"could not make {what} last 0.3 s (got {alone:.3f} s)")


def test_forward_releases_the_gil():
    fastlstm.set_num_threads(1)  # leave the other core to the main thread
    module = fastlstm.LSTM(256, 512, rng=0)
    rng = np.random.default_rng(0)
    module(rng.standard_normal((2, 8, 256), dtype=np.float32))  # packs the weights

    x = _input_lasting(module, lambda n: rng.standard_normal((n, 8, 256), dtype=np.float32),
                       400, "a forward")
    _assert_releases_gil(lambda: module(x), "a forward")


def test_cell_step_releases_the_gil():
    # One LSTMCell step on a large batch: the same kernel, reached another way.
    fastlstm.set_num_threads(1)
    cell = fastlstm.LSTMCell(256, 512, rng=0)
    rng = np.random.default_rng(1)
    cell(rng.standard_normal((4, 256), dtype=np.float32))  # packs the weights
    x = _input_lasting(cell, lambda n: rng.standard_normal((n, 256), dtype=np.float32),
                       2048, "a step")
    _assert_releases_gil(lambda: cell(x), "an LSTMCell step")


# --------------------------------------------- cells and streams in threads
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_cells_and_streams_shared_by_threads(dtype):
    """8 threads at once: 4 call one shared LSTMCell, 4 each step a Stream of
    their own over one shared 2-layer LSTM (and 2 more Streams over a shared
    cell); every result equals the single-threaded one."""
    cell = fastlstm.LSTMCell(9, 21, dtype=dtype, rng=3)
    lstm = fastlstm.LSTM(9, 21, num_layers=2, proj_size=6, dtype=dtype, rng=4)
    rng = np.random.default_rng(5)
    cell_work = [[(rng.standard_normal((1 + (i + j) % 5, 9)).astype(dtype),
                   None if j % 3 else tuple(rng.standard_normal((1 + (i + j) % 5, 21))
                                            .astype(dtype) for _ in range(2)))
                  for j in range(30)] for i in range(4)]
    stream_frames = [rng.standard_normal((40, 1 + i, 9)).astype(dtype) for i in range(6)]
    owners = [lstm] * 4 + [cell] * 2

    def run_cell(items):
        return [tuple(np.array(v) for v in cell(x, hx)) for x, hx in items]

    def run_stream(module, frames):
        stream = fastlstm.Stream(module, batch_size=frames.shape[1])
        outs = [stream.step(f).copy() for f in frames]
        return outs, stream.h.copy(), stream.c.copy()

    expected_cell = [run_cell(items) for items in cell_work]
    expected_stream = [run_stream(m, f) for m, f in zip(owners, stream_frames)]
    for m in (cell, lstm):  # the threads also race to pack the weights
        m.load_state_dict(m.state_dict())

    jobs = [lambda items=items: run_cell(items) for items in cell_work]
    jobs += [lambda m=m, f=f: run_stream(m, f) for m, f in zip(owners, stream_frames)]
    results = _run_concurrently(jobs)
    for i, (got, want) in enumerate(zip(results[:4], expected_cell)):
        for j, (g, w) in enumerate(zip(got, want)):
            for a, b in zip(g, w):
                np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype],
                                           err_msg=f"cell thread {i} call {j}")
    for i, (got, want) in enumerate(zip(results[4:], expected_stream)):
        for j, (a, b) in enumerate(zip(got[0], want[0])):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype],
                                       err_msg=f"stream thread {i} step {j}")
        for a, b in zip(got[1:], want[1:]):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL[dtype],
                                       err_msg=f"stream thread {i} state")


# --------------------------------------------------------------- memory
# Under AddressSanitizer freed memory sits in a quarantine, so RSS grows by design.
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _lstm_workload(dtype):
    module = fastlstm.LSTM(8, 16, num_layers=2, bidirectional=True, proj_size=5, dtype=dtype,
                           rng=0)
    bf = fastlstm.LSTM(8, 12, batch_first=True, dtype=dtype, rng=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 8)).astype(dtype)
    hx = (rng.standard_normal((4, 3, 5)).astype(dtype),
          rng.standard_normal((4, 3, 16)).astype(dtype))
    x_bf = np.asfortranarray(rng.standard_normal((3, 6, 8)))  # cast and copied
    x_1 = rng.standard_normal((6, 8)).astype(dtype)
    bad = np.zeros((6, 3, 7), dtype)
    calls = iter(range(10**9))

    def call():
        i = next(calls)
        if i % 4 == 0:
            module(x, hx)
        elif i % 4 == 1:
            module(x_1)
        elif i % 4 == 2:
            bf(x_bf)
        else:
            try:
                module(bad, hx)  # fails its checks: nothing may stay behind
            except RuntimeError:
                pass
            module(x)
    return call


def _cell_workload(dtype):
    cell = fastlstm.LSTMCell(8, 16, dtype=dtype, rng=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 8)).astype(dtype)
    hx = tuple(rng.standard_normal((5, 16)).astype(dtype) for _ in range(2))
    x_1 = rng.standard_normal(8).astype(dtype)
    calls = iter(range(10**9))

    def call():
        i = next(calls)
        if i % 3 == 0:
            cell(x, hx)
        elif i % 3 == 1:
            cell(x_1)
        else:
            try:
                cell(x, (hx[0][:4], hx[1]))
            except RuntimeError:
                pass
    return call


def _stream_workload(dtype):
    lstm = fastlstm.LSTM(8, 16, num_layers=2, proj_size=5, dtype=dtype, rng=0)
    streams = [fastlstm.Stream(lstm, batch_size=3),
               fastlstm.Stream(fastlstm.LSTMCell(8, 16, dtype=dtype, rng=1))]
    rng = np.random.default_rng(2)
    frames = [rng.standard_normal((3, 8)).astype(dtype), rng.standard_normal(8)]
    calls = iter(range(10**9))

    def call():
        i = next(calls)
        s = i % 2
        streams[s].step(frames[s])
        if i % 100 == 0:
            streams[s].reset()
        elif i % 100 == 51:
            streams[s].reset((streams[s].h * 0.5, streams[s].c))
    return call


def _rnn_workload(dtype):
    rng = np.random.default_rng(3)
    padded = rng.standard_normal((7, 4, 3)).astype(dtype)
    lengths = [7, 5, 2, 1]
    seqs = [rng.standard_normal((n, 3)).astype(dtype) for n in (4, 6, 1)]
    calls = iter(range(10**9))

    def call():
        i = next(calls)
        packed = fastlstm.pack_padded_sequence(padded, lengths)
        fastlstm.pad_packed_sequence(packed, batch_first=True, total_length=9)
        if i % 2:
            rnn.unpack_sequence(rnn.pack_sequence(seqs, enforce_sorted=False))
            rnn.unpad_sequence(fastlstm.pad_sequence(seqs), [4, 6, 1])
        else:
            try:
                fastlstm.pack_padded_sequence(padded, [1, 7, 5, 2])  # not sorted
            except RuntimeError:
                pass
    return call


WORKLOADS = {"LSTM": (_lstm_workload, 5000), "LSTMCell": (_cell_workload, 10000),
             "Stream": (_stream_workload, 10000), "rnn": (_rnn_workload, 3000)}


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/statm"),
                    reason="reads /proc/self/statm")
@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory")
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("api", list(WORKLOADS))
def test_memory_stays_flat(api, dtype):
    """Thousands of calls (failing ones among them) leave no Python objects or
    C memory behind: traced allocations flat to 64 KiB (a few bytes a call at most)
    and RSS to 4 MiB."""
    make, calls = WORKLOADS[api]
    call = make(dtype)
    for _ in range(300):
        call()
    gc.collect()
    rss_before = _rss_bytes()
    tracemalloc.start()
    try:
        traced_before = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            call()
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced_before
    finally:
        tracemalloc.stop()
    grown = _rss_bytes() - rss_before
    assert traced < 64 << 10, f"{api}: {traced} bytes of Python allocations left by {calls} calls"
    assert grown < 4 << 20, f"{api}: RSS grew by {grown / 2**20:.1f} MiB over {calls} calls"


def test_l2_size_from_sysfs_when_glibc_has_none(tmp_path, monkeypatch):
    """The schedule's L2 size: glibc's (CPUID), else Linux's sysfs, else 1 MiB; some
    virtual machines leave CPUID's cache leaves blank while sysfs has the sizes."""
    from fastlstm._ext import kernels

    for index, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction",
                                                 "32K"), ("2", "Unified", "2048K"),
                                                 ("3", "Unified", "105M")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(size + "\n")

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(kernels.os, "sysconf", no_sysconf)
    assert kernels._l2_bytes(str(tmp_path)) == 2 << 20
    assert kernels._l2_bytes(str(tmp_path / "missing")) == 1 << 20
    (tmp_path / "index2" / "size").write_text("garbage\n")
    assert kernels._l2_bytes(str(tmp_path)) == 1 << 20
    monkeypatch.setattr(kernels.os, "sysconf", lambda name: 1 << 21)
    assert kernels._l2_bytes(str(tmp_path / "missing")) == 1 << 21


def _weights_of(module, x):
    """The output of a fresh module loaded with ``module``'s reported weights."""
    fresh = fastlstm.LSTM(module.input_size, module.hidden_size,
                          num_layers=module.num_layers)
    fresh.load_state_dict(module.state_dict())
    return fresh(x)[0]


def test_reset_parameters_beside_calls_leaves_the_weights_it_reports():
    # reset_parameters replaced the parameters one at a time, without the packing lock:
    # a call packing meanwhile cached a mixture of old and new weights, kept after the
    # reset (the module then computed with weights state_dict() did not report).
    m = fastlstm.LSTM(16, 64, num_layers=3, rng=0)
    x = np.ones((3, 2, 16), np.float32)
    bad = 0
    for it in range(40):
        stop = threading.Event()
        reader = threading.Thread(target=lambda stop=stop: [m(x) for _ in iter(stop.is_set, True)])
        reader.start()
        try:
            for k in range(4):
                m.reset_parameters(rng=4 * it + k)
        finally:
            stop.set()
            reader.join()
        bad += not np.array_equal(m(x)[0], _weights_of(m, x))
    assert bad == 0


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_readers_see_all_old_or_all_new_weights_while_a_thread_loads(kind):
    # load_state_dict wrote the parameter table in place, key by key: state_dict(),
    # copies and pickles taken meanwhile mixed two weight sets.
    import pickle

    def build(seed):
        m = fastlstm.LSTM(8, 32, num_layers=4, rng=seed)
        return m if kind == "float32" else fastlstm.quantize(m, "int8")

    a, b = build(1).state_dict(), build(2).state_dict()
    m = build(1)
    stop = threading.Event()

    def loader():
        while not stop.is_set():
            m.load_state_dict(a)
            m.load_state_dict(b)

    def which(sd):
        for name, ref in (("a", a), ("b", b)):
            if all(np.array_equal(sd[k], ref[k]) for k in ref):
                return name
        return "mixed"

    seen = []
    thread = threading.Thread(target=loader)
    thread.start()
    try:
        for _ in range(150):
            seen.append(which(m.state_dict()))
            seen.append(which(copy.deepcopy(m).state_dict()))
            seen.append(which(pickle.loads(pickle.dumps(m)).state_dict()))
            seen.append(which(copy.copy(m).state_dict()))
    finally:
        stop.set()
        thread.join()
    assert "mixed" not in seen, f"{seen.count('mixed')} of {len(seen)} snapshots mixed"
