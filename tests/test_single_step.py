"""The one-timestep path of the kernels (streaming calls), against the NumPy oracle.

A sequence of length 1 runs panel by panel (input and recurrent product of a
panel together), in either panel order; every way of sharing it among threads
must give the oracle's answer.
"""

import numpy as np
import pytest
from _reference import reference_forward

import fastlstm
from fastlstm import _lstm
from fastlstm.lstm import _NO_BLAS, _batch_chunks


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
@pytest.mark.parametrize("level", _lstm.simd_available())
def test_panel_order_gives_the_same_bits(backward_order, level):
    """Both panel orders compute each panel alike: the results are identical."""
    cell = fastlstm.LSTMCell(20, 70, rng=0)
    w = cell._packed_layers()[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 20)).astype(np.float32)
    h0 = rng.standard_normal((1, 2, 70)).astype(np.float32)
    results = []
    _lstm.set_simd_level(level)
    try:
        for order in (False, backward_order):
            c = rng.standard_normal((1, 2, 70)).astype(np.float32) * 0 + 0.5
            h = np.empty((2, 70), np.float32)
            gates = np.empty((2, w.bias.shape[1]), np.float32)
            _lstm.layer(x, w.w_ih, w.w_ih_p, gates, w.w_hh_p, w.bias, w.w_hr_p, h0, c, c, h,
                        np.empty((1, 2, 70), np.float32), 1, False, _batch_chunks(2, 1, 1), 1,
                        _NO_BLAS, False, 1, None, None, None, order)
            results.append((h, c))
    finally:
        _lstm.set_simd_level(None)
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
