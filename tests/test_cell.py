"""fastlstm.LSTMCell against torch.nn.LSTMCell and the NumPy oracle."""

import pickle

import numpy as np
import pytest
from _helpers import TOL, torch_single_thread
from _helpers.reference import cell_reference

import fastlstm

_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [None, 1, 3, 8])
@pytest.mark.parametrize("with_hx", [False, True])
def test_matches_oracle(threads, dtype, bias, batch, with_hx):
    cell = fastlstm.LSTMCell(7, 37, bias=bias, dtype=dtype, rng=1)
    rng = np.random.default_rng(2)
    shape = (7,) if batch is None else (batch, 7)
    x = rng.standard_normal(shape).astype(dtype)
    hshape = (37,) if batch is None else (batch, 37)
    hx = (rng.standard_normal(hshape).astype(dtype), rng.standard_normal(hshape).astype(dtype))
    hx = hx if with_hx else None
    h, c = cell(x, hx)
    ref_h, ref_c = cell_reference(cell, x, hx)
    assert h.shape == hshape and c.shape == hshape and h.dtype == dtype
    assert np.abs(h - ref_h).max() <= TOL[dtype]
    assert np.abs(c - ref_c).max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(torch, threads, dtype, bias):
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    t = torch.nn.LSTMCell(24, 70, bias=bias, dtype=tdtype)
    cell = fastlstm.LSTMCell.from_torch(t)
    assert cell.dtype == dtype and cell.bias == bias
    for batch in (1, 5, 16):
        x = torch.randn(batch, 24, dtype=tdtype)
        hx = (torch.randn(batch, 70, dtype=tdtype), torch.randn(batch, 70, dtype=tdtype))
        for args in ((x,), (x, hx), (x[0],), (x[0], (hx[0][0], hx[1][0]))):
            with torch.no_grad():
                ref = t(*args)
            out = cell(*args)  # torch tensors in, torch tensors out
            assert isinstance(out[0], torch.Tensor)
            for a, b in zip(out, ref):
                assert a.shape == b.shape
                assert float((a - b).abs().max()) <= TOL[dtype]


def test_frame_loop_matches_torch(torch):
    # A streaming loop: 1000 frames, state carried from call to call.
    t = torch.nn.LSTMCell(40, 64, dtype=torch.float64)
    cell = fastlstm.LSTMCell.from_torch(t)
    frames = np.random.default_rng(0).standard_normal((1000, 2, 40))
    h = c = np.zeros((2, 64))
    th = tc = torch.zeros(2, 64, dtype=torch.float64)
    with torch.no_grad():
        for frame in frames:
            h, c = cell(frame, (h, c))
            th, tc = t(torch.from_numpy(frame), (th, tc))
    assert np.abs(h - th.numpy()).max() <= 1e-12
    assert np.abs(c - tc.numpy()).max() <= 1e-12


def test_state_dict_and_conversions(torch):
    t = torch.nn.LSTMCell(5, 9)
    cell = fastlstm.LSTMCell(5, 9)
    assert list(cell.state_dict()) == list(t.state_dict())
    cell.load_state_dict(t.state_dict())
    back = cell.to_torch()
    x = torch.randn(4, 5)
    with torch.no_grad():
        for a, b in zip(back(x), t(x)):
            assert torch.equal(a, b)
    nobias = fastlstm.LSTMCell(5, 9, bias=False)
    assert list(nobias.state_dict()) == ["weight_ih", "weight_hh"]
    assert repr(nobias) == repr(torch.nn.LSTMCell(5, 9, bias=False))
    assert repr(cell) == repr(t)


def test_parameters_init_and_pickle():
    cell = fastlstm.LSTMCell(6, 16, rng=3)
    bound = 1 / np.sqrt(16)
    for name, p in cell.named_parameters():
        assert np.abs(p).max() <= bound and not p.flags.writeable, name
    again = fastlstm.LSTMCell(6, 16, rng=3)
    assert all(np.array_equal(a, b) for a, b in zip(cell.parameters(), again.parameters()))
    x = np.ones((2, 6), np.float32)
    copy = pickle.loads(pickle.dumps(cell))
    for a, b in zip(copy(x), cell(x)):
        np.testing.assert_array_equal(a, b)
    # Assigning a parameter changes the result (the packed weights follow).
    cell.weight_ih = np.zeros((64, 6), np.float32)
    h, _ = cell(x)
    h_ref, _ = cell_reference(cell, x)
    assert np.abs(h - h_ref).max() <= 1e-5


def _error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 (the point is to capture it)
        return exc
    return None


CASES = [
    ("input 3-D", lambda z: (z((2, 3, 5)),)),
    ("hx 3-D", lambda z: (z((2, 5)), (z((1, 2, 9)), z((2, 9))))),
    ("input size", lambda z: (z((2, 4)),)),
    ("batch of h", lambda z: (z((2, 5)), (z((3, 9)), z((2, 9))))),
    ("batch of c", lambda z: (z((2, 5)), (z((2, 9)), z((3, 9))))),
    ("hidden of h", lambda z: (z((2, 5)), (z((2, 8)), z((2, 9))))),
    ("hidden of c", lambda z: (z((2, 5)), (z((2, 9)), z((2, 7))))),
    ("unbatched input, 2-D hx", lambda z: (z((5,)), (z((2, 9)), z((2, 9))))),
    ("batched input, 1-D c", lambda z: (z((2, 5)), (z((2, 9)), z((2,))))),
    ("unbatched input, 2-D h, c's size", lambda z: (z((5,)), (z((9, 1)), z((8,))))),
    # torch's order: sizes first, then (in its products) dtypes
    ("input size, int input", lambda z: (z((2, 4), np.int64),)),
    ("batch of h, int states", lambda z: (z((2, 5), np.bool_), (z((3, 9), np.int64), z((2, 9))))),
    ("hidden of c, int h", lambda z: (z((2, 5)), (z((2, 9), np.int64), z((2, 7))))),
]


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_errors_match_torch(torch, name, make):
    t = torch.nn.LSTMCell(5, 9)
    cell = fastlstm.LSTMCell.from_torch(t)
    t_exc = _error(lambda: t(*make(lambda s, d=np.float32: torch.from_numpy(np.zeros(s, d)))))
    f_exc = _error(lambda: cell(*make(lambda s, d=np.float32: np.zeros(s, d))))
    assert t_exc is not None and f_exc is not None
    assert type(f_exc) is type(t_exc)
    assert str(f_exc) == str(t_exc)


def test_unbatched_input_with_2d_state_is_refused(torch):
    """torch broadcasts a (H, 1) cell state of an unbatched call into an (H, H)
    result; fastlstm refuses the state."""
    t = torch.nn.LSTMCell(5, 9)
    h, c = t(torch.zeros(5), (torch.zeros(9), torch.zeros(9, 1)))
    assert h.shape == c.shape == (9, 9)
    cell = fastlstm.LSTMCell.from_torch(t)
    with pytest.raises(RuntimeError, match=r"Expected hx\[1\] of shape \(9,\) for unbatched"):
        cell(np.zeros(5, np.float32), (np.zeros(9, np.float32), np.zeros((9, 1), np.float32)))


def test_fastlstm_only_errors():
    cell = fastlstm.LSTMCell(5, 9)
    with pytest.raises(RuntimeError, match=r"input dtype \(int64\)"):
        cell(np.zeros((2, 5), np.int64))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        cell(np.zeros((2, 5)), np.zeros((2, 9)))
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        fastlstm.LSTMCell(5, 0)
    with pytest.raises(TypeError, match="input_size should be of type int"):
        fastlstm.LSTMCell(5.0, 3)
    with pytest.raises(ValueError, match="CPU"):
        fastlstm.LSTMCell(5, 3, device="cuda")
    h, c = cell(np.zeros((0, 5), np.float32))  # empty batch
    assert h.shape == (0, 9) and c.shape == (0, 9)
