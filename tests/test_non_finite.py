"""Non-finite recurrent weights without an initial state: torch's product
``W_hh @ h_0`` with ``h_0 = 0`` gives NaN for rows holding a NaN or an infinity,
so the kernels' skip of that first product must not hide them.  Oracle: the
NumPy equations (``tests/_reference.py``), whose product does the same."""

import numpy as np
import pytest
from _helpers.reference import cell_reference, reference_forward

import fastlstm
from fastlstm.rnn import pack_padded_sequence, pad_packed_sequence

# The oracle's own products warn about the NaN they make.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _same(got, want, tol):
    """The same NaN pattern (at least one NaN) and the same finite values."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.abs(got[ok] - want[ok]).max(initial=0.0) <= tol


def _poison(module, name, value, row):
    w = module.state_dict()[name].copy()
    w[row, 1] = value
    setattr(module, name, w)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("kwargs", [dict(), dict(num_layers=2), dict(bidirectional=True),
                                    dict(proj_size=3), dict(batch_first=True)])
@pytest.mark.parametrize("seq_len", [1, 6])
def test_lstm_without_state(threads, value, kwargs, seq_len):
    m = fastlstm.LSTM(4, 8, dtype=np.float64, rng=0, **kwargs)
    layer = "_l1" if kwargs.get("num_layers") == 2 else "_l0"
    _poison(m, "weight_hh" + layer, value, row=9)  # the forget gate of unit 1
    x = np.random.default_rng(1).standard_normal((seq_len, 3, 4))
    ref, (ref_h, ref_c) = reference_forward(m, x)
    out, (h, c) = m(x)  # a one-step call of plain arrays goes to the compiled path
    _same(out, ref, 1e-12)
    _same(h, ref_h, 1e-12)
    _same(c, ref_c, 1e-12)
    _same(m.forward(x.tolist())[0], ref, 1e-12)  # the general path
    # With an explicit zero state the result is the same.
    zeros = (np.zeros_like(ref_h), np.zeros_like(ref_c))
    _same(m(x, zeros)[0], ref, 1e-12)


def test_packed_without_state(threads):
    m = fastlstm.LSTM(4, 8, dtype=np.float64, bidirectional=True, rng=0)
    _poison(m, "weight_hh_l0_reverse", np.nan, row=20)
    x = np.random.default_rng(1).standard_normal((5, 3, 4))
    lengths = [5, 3, 2]
    out, (h, _) = m(pack_padded_sequence(x, lengths))
    padded, _ = pad_packed_sequence(out)
    for n, length in enumerate(lengths):
        ref, (ref_h, _) = reference_forward(m, x[:length, n])
        _same(padded[:length, n], ref, 1e-12)
        _same(h[:, n], ref_h, 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [None, 2])
def test_cell_without_state(threads, dtype, batch):
    cell = fastlstm.LSTMCell(4, 20, dtype=dtype, rng=0)
    _poison(cell, "weight_hh", np.inf, row=45)  # the g gate of unit 5
    x = np.random.default_rng(1).standard_normal((4,) if batch is None else (batch, 4))
    x = x.astype(dtype)
    ref_h, ref_c = cell_reference(cell, x)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for h, c in (cell(x), cell.forward(x.tolist())):
        _same(h, ref_h, tol)
        _same(c, ref_c, tol)


def test_stream_from_zero_state(threads):
    m = fastlstm.LSTM(4, 8, num_layers=2, dtype=np.float64, rng=0)
    _poison(m, "weight_hh_l0", np.nan, row=2)
    x = np.random.default_rng(1).standard_normal((5, 2, 4))
    ref, _ = reference_forward(m, x)
    stream = fastlstm.Stream(m, 2)
    for _ in range(2):  # from a new stream, and after reset()
        _same(np.stack([stream.step(frame).copy() for frame in x]), ref, 1e-12)
        stream.reset()


def test_torch_gives_the_same_nan_pattern(torch):
    t = torch.nn.LSTM(4, 8).double().eval()
    with torch.no_grad():
        t.weight_hh_l0[9, 1] = float("nan")
    m = fastlstm.LSTM.from_torch(t)
    x = np.random.default_rng(1).standard_normal((1, 3, 4))
    with torch.no_grad():
        want = t(torch.from_numpy(x))[0].numpy()
    _same(m(x)[0], want, 1e-12)
