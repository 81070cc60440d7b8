"""The one-timestep path of the kernels (streaming calls), against the NumPy oracle.

A sequence of length 1 runs panel by panel (input and recurrent product of a
panel together), in either panel order; every way of sharing it among threads
must give the oracle's answer.
"""

import numpy as np
import pytest
from _helpers.reference import reference_forward

import fastlstm
from fastlstm._ext import kernels


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("kwargs", [dict(), dict(bidirectional=True), dict(num_layers=3),
                                    dict(proj_size=5, num_layers=2),
                                    dict(bidirectional=True, proj_size=7, bias=False)], ids=str)
@pytest.mark.parametrize("with_hx", [False, True])
def test_one_step_every_sharing(n_threads, batch, kwargs, with_hx):
    rng = np.random.default_rng(batch * 10 + n_threads)
    mod = fastlstm.LSTM(6, 37, rng=3, dtype=np.float64, **kwargs)
    states = mod.num_layers * (2 if mod.bidirectional else 1)
    x = rng.standard_normal((1, batch, 6))
    hx = None
    if with_hx:
        hx = (rng.standard_normal((states, batch, mod.proj_size or 37)),
              rng.standard_normal((states, batch, 37)))
    expected = reference_forward(mod, x, hx)
    fastlstm.set_num_threads(n_threads)
    try:
        for _ in range(3):  # successive calls alternate the panel order
            out, (h_n, c_n) = mod(x, hx)
            for got, want in zip((out, h_n, c_n), (expected[0], *expected[1])):
                assert np.max(np.abs(got - want)) < 1e-12
    finally:
        fastlstm.set_num_threads(None)


@pytest.mark.parametrize("backward_order", [False, True])
@pytest.mark.parametrize("level", kernels.simd_available())
def test_panel_order_gives_the_same_bits(backward_order, level):
    """Both panel orders compute each panel alike: the results are identical."""
    cell = fastlstm.LSTMCell(20, 70, rng=0)
    w = cell._packed_layers()[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 20)).astype(np.float32)
    h0 = rng.standard_normal((1, 2, 70)).astype(np.float32)
    results = []
    kernels.set_simd_level(level)
    try:
        for order in (False, backward_order):
            c = rng.standard_normal((1, 2, 70)).astype(np.float32) * 0 + 0.5
            h = np.empty((2, 70), np.float32)
            gates = np.empty((2, w.bias.shape[1]), np.float32)
            state = (h0, c, c, np.empty((1, 2, 70), np.float32), False)
            kernels.layer(w, x, h, state, gates, 1, False,
                          kernels.schedule(w, 2, 1, 70, 1) + (order,))
            results.append((h, c))
    finally:
        kernels.set_simd_level(None)
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("cls", ["LSTM", "LSTMCell"])
def test_one_step_after_new_weights_and_pickling(cls):
    """One-step calls bind the packed weights once; new weights rebind them, and a
    module pickles (and copies) after such calls, without the bindings."""
    import copy
    import pickle

    make = getattr(fastlstm, cls)
    mod, other = make(5, 7, rng=0), make(5, 7, rng=1)
    x = np.random.default_rng(0).standard_normal((1, 2, 5) if cls == "LSTM" else (2, 5))
    x = x.astype(np.float32)
    first = mod(x)
    mod.load_state_dict(other.state_dict())
    again = mod(x)
    expected = other(x)
    for got, want in zip(_flat(again), _flat(expected)):
        assert np.array_equal(got, want)
    assert not np.array_equal(_flat(first)[0], _flat(again)[0])
    for clone in (pickle.loads(pickle.dumps(mod)), copy.deepcopy(mod)):
        assert all(np.array_equal(a, b) for a, b in zip(_flat(clone(x)), _flat(expected)))


def _flat(result):
    """(out, h, c) of an LSTM call, (h, c) of a cell call."""
    if isinstance(result[1], tuple):
        return [result[0], *result[1]]
    return list(result)


def test_small_layers_run_on_one_thread():
    """A one-timestep layer whose weights times rows come to 256 KiB or less
    runs on the calling thread alone, whatever the threads asked for; a larger
    one gets a thread per 256 KiB (at least two, at most those asked for)."""
    def steps(threads, batch, n_in, hidden, proj=0, bidirectional=False, dtype="float32"):
        m = fastlstm.LSTM(n_in, hidden, proj_size=proj, bidirectional=bidirectional,
                          dtype=dtype, rng=0)
        return kernels.schedule(m._packed_layers()[0], batch, 1, hidden, threads)[0]

    assert steps(2, 1, 64, 64) == 1  # 128 KiB of float32 weights
    assert steps(8, 2, 64, 64) == 1  # 256 KiB: still one
    assert steps(2, 1, 64, 64, dtype="float64") == 1
    assert steps(2, 1, 64, 64, bidirectional=True, dtype="float64") == 2  # 2 x 256 KiB
    assert steps(2, 3, 64, 64) == 2  # 384 KiB
    assert steps(4, 1, 128, 128) == 2  # 512 KiB: two threads' worth
    assert steps(2, 1, 96, 96) == 2  # 288 KiB: at least two past the size
    assert steps(16, 1, 256, 256) == 8  # 2 MiB
    assert steps(4, 1, 256, 256) == 4
    assert steps(16, 4, 256, 256) == 16  # 8 MiB
    assert steps(2, 1, 16, 64, proj=8) == 1  # projected: 24 x 256 x 4 + 64 x 8 x 4 bytes
    assert steps(2, 1, 300, 64, proj=8) == 2  # 308 x 256 x 4 + 2 KiB
    assert steps(1, 64, 512, 512, bidirectional=True, dtype="float64") == 1  # one asked for
    m = fastlstm.LSTM(64, 64, rng=0)
    assert kernels.schedule(m._packed_layers()[0], 1, 1, 64, 2, False,
                            kernels.Tuning(serial_bytes=0))[0] == 2  # the rule switched off
    assert kernels.schedule(m._packed_layers()[0], 1, 5, 64, 2)[0] == 2  # a sequence: all


@pytest.mark.parametrize("hidden", [16, 96])  # one thread, and both threads, by the rule
def test_one_step_by_the_size_rule_matches_oracle(hidden):
    """The oracle's answer from one-step LSTM calls, LSTMCell steps and Stream
    steps on 2 threads with the default rule, on both sides of its size."""
    rng = np.random.default_rng(hidden)
    fastlstm.set_num_threads(2)
    try:
        for kwargs in (dict(), dict(num_layers=2), dict(bidirectional=True), dict(proj_size=5)):
            mod = fastlstm.LSTM(hidden, hidden, rng=1, **kwargs)
            states = mod.num_layers * (2 if mod.bidirectional else 1)
            x = rng.standard_normal((1, 3, hidden)).astype(np.float32)
            hx = (rng.standard_normal((states, 3, mod.proj_size or hidden)).astype(np.float32),
                  rng.standard_normal((states, 3, hidden)).astype(np.float32))
            want = reference_forward(mod, x, hx)
            for _ in range(2):
                out, (h_n, c_n) = mod(x, hx)
                for got, ref in zip((out, h_n, c_n), (want[0], *want[1])):
                    assert np.max(np.abs(got - ref)) < 2e-6
            if not mod.bidirectional:
                stream = fastlstm.Stream(mod, 3)
                stream.reset(hx)
                assert np.max(np.abs(stream.step(x[0]) - want[0][0])) < 2e-6
        cell = fastlstm.LSTMCell(hidden, hidden, rng=2)
        rnn = fastlstm.LSTM(hidden, hidden)
        rnn.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
        x = rng.standard_normal((3, hidden)).astype(np.float32)
        h, c = cell(x)
        _, (h_n, c_n) = reference_forward(rnn, x[None])
        assert np.max(np.abs(h - h_n[0])) < 2e-6 and np.max(np.abs(c - c_n[0])) < 2e-6
    finally:
        fastlstm.set_num_threads(None)
