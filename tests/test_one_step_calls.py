"""The compiled one-step call (``kernels.BoundStack.step``): LSTMCell steps and
one-timestep LSTM calls on plain ndarrays are checked, allocated and run in C.

It must take exactly the calls it can do (C-contiguous ndarrays of the
module's dtype and the expected shapes), hand every other call back to the
general path (which casts, copies, converts tensors and raises torch's
errors), and give the NumPy oracle's answer either way.
"""

import numpy as np
import pytest
from _helpers.reference import cell_reference, reference_forward

import fastlstm

# One step of the compiled path against the oracle (one step accumulates little).
STEP_TOL = {np.float32: 2e-6, np.float64: 1e-12}


def _close(got, want, dtype):
    assert got.shape == want.shape
    assert np.max(np.abs(np.asarray(got, np.float64) - want), initial=0.0) < STEP_TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [None, 1, 3, 70])  # None: unbatched; 70 rows: heap gates
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_cell_compiled_path(dtype, batch, with_hx, n_threads):
    rng = np.random.default_rng(7)
    cell = fastlstm.LSTMCell(12, 40, dtype=dtype, rng=1)
    shape = (12,) if batch is None else (batch, 12)
    sshape = (40,) if batch is None else (batch, 40)
    x = rng.standard_normal(shape).astype(dtype)
    hx = (rng.standard_normal(sshape).astype(dtype), rng.standard_normal(sshape).astype(dtype))
    hx = hx if with_hx else None
    kept = None if hx is None else (hx[0].copy(), hx[1].copy())
    assert cell._bound_layers().step(x, hx, n_threads, 0) is not None  # takes this call
    want = cell_reference(cell, x, hx)
    fastlstm.set_num_threads(n_threads)
    try:
        for _ in range(3):  # the panel order alternates from call to call
            h, c = cell(x, hx)
            for got, exp in zip((h, c), want):
                _close(got, exp, dtype)
                assert got.dtype == dtype and got.flags.writeable and got.flags.c_contiguous
    finally:
        fastlstm.set_num_threads(None)
    if kept is not None:  # the caller's state is left alone
        assert np.array_equal(hx[0], kept[0]) and np.array_equal(hx[1], kept[1])
        assert not np.shares_memory(c, hx[1]) and not np.shares_memory(h, hx[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout, batch", [("time_major", 1), ("time_major", 5),
                                           ("batch_first", 1), ("batch_first", 5),
                                           ("unbatched", 1)])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("with_hx", [False, True])
def test_lstm_compiled_path(dtype, layout, batch, layers, with_hx):
    rng = np.random.default_rng(layers * 10 + batch)
    rnn = fastlstm.LSTM(9, 33, num_layers=layers, batch_first=layout == "batch_first",
                        dtype=dtype, rng=2)
    if layout == "unbatched":
        x, sshape = rng.standard_normal((1, 9)), (layers, 33)
    else:
        x = rng.standard_normal((batch, 1, 9) if layout == "batch_first" else (1, batch, 9))
        sshape = (layers, batch, 33)
    x = x.astype(dtype)
    hx = tuple(rng.standard_normal(sshape).astype(dtype) for _ in range(2)) if with_hx else None
    assert rnn._one_step(x, hx, 2 if layout == "batch_first" else 1) is not None
    out_want, (h_want, c_want) = reference_forward(rnn, x, hx)
    for _ in range(2):
        out, (h_n, c_n) = rnn(x, hx)
        _close(out, out_want, dtype)
        _close(h_n, h_want, dtype)
        _close(c_n, c_want, dtype)
    assert not np.shares_memory(out, h_n)  # the output is its own array, as torch's


def _noncontiguous(a):
    b = np.empty(a.shape + (2,), a.dtype)
    b[..., 0] = a
    return b[..., 0]


class _Sub(np.ndarray):
    pass


@pytest.mark.parametrize("case", [
    "float64 input", "strided input", "strided state", "subclass", "list hx",
    "int input", "big-endian", "wrong batch", "wrong features", "3-D state", "empty batch",
])
def test_cell_other_calls_take_the_general_path(case):
    """Calls the compiled path declines still work (or raise torch's error)."""
    rng = np.random.default_rng(3)
    cell = fastlstm.LSTMCell(6, 10, rng=4)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    h = rng.standard_normal((2, 10)).astype(np.float32)
    c = rng.standard_normal((2, 10)).astype(np.float32)
    hx = (h, c)
    error = None
    if case == "float64 input":
        x = x.astype(np.float64)
    elif case == "strided input":
        x = _noncontiguous(x)
    elif case == "strided state":
        hx = (h, _noncontiguous(c))
    elif case == "subclass":
        x = x.view(_Sub)
    elif case == "list hx":
        hx = [h, c]
    elif case == "int input":
        x, error = x.astype(np.int64), RuntimeError
    elif case == "big-endian":
        x = x.astype(">f4")
    elif case == "wrong batch":
        hx, error = (h[:1], c[:1]), RuntimeError
    elif case == "wrong features":
        x, error = x[:, :5].copy(), RuntimeError
    elif case == "3-D state":
        hx, error = (h[None], c[None]), ValueError
    elif case == "empty batch":
        x, hx = x[:0], (h[:0], c[:0])
    assert cell._bound_layers().step(x, hx, 1, 0) is None
    if error is not None:
        with pytest.raises(error):
            cell(x, hx)
        return
    got = cell(x, hx)
    plain = (np.ascontiguousarray(x, np.float32),
             tuple(np.ascontiguousarray(s, np.float32) for s in hx))
    want = cell_reference(cell, *plain)
    for g, w in zip(got, want):
        _close(g, w, np.float32)


def test_lstm_calls_the_compiled_path_declines():
    rng = np.random.default_rng(5)
    rnn = fastlstm.LSTM(4, 8, num_layers=2, rng=6)
    x1 = rng.standard_normal((1, 3, 4)).astype(np.float32)
    step = rnn._bound_layers().step
    assert step(rng.standard_normal((2, 3, 4)).astype(np.float32), None, 1, 1) is None  # L=2
    assert step(x1, (np.zeros((1, 3, 8), np.float32),) * 2, 1, 1) is None  # 1 layer of 2
    assert step(x1, None, 1, 2) is None  # batch-first reading of (1, 3, 4): L=3
    # Bidirectional, projected and training-with-dropout modules never take it.
    for kwargs in (dict(bidirectional=True), dict(proj_size=3)):
        mod = fastlstm.LSTM(4, 8, rng=6, **kwargs)
        assert not mod._stackable
        out, _ = mod(x1)
        _close(out, reference_forward(mod, x1)[0], np.float32)
    # With dropout 1 in training mode, layer 1 sees zeros: the general path ran.
    drop = fastlstm.LSTM(4, 8, num_layers=2, dropout=1.0, rng=6).train()
    top = fastlstm.LSTM(8, 8, rng=0)
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in drop.state_dict().items()
                         if k.endswith("_l1")})
    out, _ = drop(x1)
    _close(out, reference_forward(top, np.zeros((1, 3, 8), np.float32))[0], np.float32)
    _close(drop.eval()(x1)[0], reference_forward(drop, x1)[0], np.float32)  # now compiled


def test_calls_follow_the_mode_once_bound():
    """A module called in eval mode has its one-step path bound; a later call
    in training mode with dropout must still run the general path (dropout),
    whichever way the mode was set, and eval mode the bound path again."""
    rng = np.random.default_rng(5)
    x1 = rng.standard_normal((1, 3, 4)).astype(np.float32)
    drop = fastlstm.LSTM(4, 8, num_layers=2, dropout=1.0, rng=6)
    top = fastlstm.LSTM(8, 8, rng=0)
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in drop.state_dict().items()
                         if k.endswith("_l1")})
    dropped = reference_forward(top, np.zeros((1, 3, 8), np.float32))[0]
    kept = reference_forward(drop, x1)[0]
    _close(drop(x1)[0], kept, np.float32)
    assert drop._bound_layers().call_layout == 1  # bound by that call
    for set_training in (lambda m: m.train(), lambda m: setattr(m, "training", True)):
        set_training(drop)
        _close(drop(x1)[0], dropped, np.float32)
        _close(drop(x1, None)[0], dropped, np.float32)
        _close(drop.eval()(x1)[0], kept, np.float32)


@pytest.mark.parametrize("cls", [fastlstm.LSTM, fastlstm.LSTMCell])
def test_calls_by_keyword(cls):
    """``module(input=..., hx=...)`` as torch's forward takes them, on both paths."""
    rng = np.random.default_rng(6)
    mod = cls(5, 7, rng=2)
    x = rng.standard_normal((1, 2, 5) if cls is fastlstm.LSTM else (2, 5)).astype(np.float32)
    sshape = (1, 2, 7) if cls is fastlstm.LSTM else (2, 7)
    hx = tuple(rng.standard_normal(sshape).astype(np.float32) for _ in range(2))
    want = mod.forward(x, hx)
    for _ in range(2):  # the first call binds the one-step path, the second takes it
        for got in (mod(x, hx=hx), mod(input=x, hx=hx), mod(hx=hx, input=x)):
            np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)
    with pytest.raises(TypeError):
        mod(x, hx, None)
    with pytest.raises(TypeError):
        mod(x, state=hx)


def test_compiled_path_follows_new_weights():
    rng = np.random.default_rng(8)
    cell = fastlstm.LSTMCell(5, 7, rng=0)
    x = rng.standard_normal((1, 5)).astype(np.float32)
    before = cell(x)[0]
    cell.load_state_dict({k: v * 2 for k, v in cell.state_dict().items()})
    after = cell(x)[0]
    assert not np.allclose(before, after)
    _close(after, cell_reference(cell, x, None)[0], np.float32)


@pytest.mark.parametrize("base", [fastlstm.LSTM, fastlstm.LSTMCell])
def test_a_subclass_forward_runs_on_every_call(base):
    """LSTM and LSTMCell are called straight through their forward (one Python
    call fewer per frame); a subclass's own forward still runs on every call,
    one-step calls of plain arrays included, as torch's __call__ runs it."""
    class Scaled(base):
        def forward(self, input, hx=None):
            first, rest = super().forward(input, hx)
            return 2 * first, rest

    class Same(base):
        pass

    class Doubling:  # a mixin's forward, before the base's in the MRO
        def forward(self, input, hx=None):
            first, rest = super().forward(input, hx)
            return 2 * first, rest

    class Mixed(Doubling, base):
        pass

    plain = base(6, 10, rng=4)
    scaled, same = Scaled(6, 10, rng=4), Same(6, 10, rng=4)
    mixed = Mixed(6, 10, rng=4)
    x = np.random.default_rng(4).standard_normal(
        (1, 3, 6) if base is fastlstm.LSTM else (3, 6)).astype(np.float32)
    want = plain(x)[0]
    oracle = (reference_forward(plain, x)[0] if base is fastlstm.LSTM
              else cell_reference(plain, x, None)[0])
    _close(want, oracle, np.float32)
    for _ in range(2):  # the second call runs on the bound one-step path
        np.testing.assert_array_equal(scaled(x)[0], 2 * want)
        np.testing.assert_array_equal(mixed(x)[0], 2 * want)
        np.testing.assert_array_equal(same(x)[0], want)
    assert Same.__call__ is base.__call__  # no forward of its own: the compiled call


def test_one_bound_stack_type_serves_every_one_step_path():
    """Module calls, LSTMCell steps and streams bind the same type; a stack with a
    projection serves streams (the one-step call and cell_step refuse it)."""
    from fastlstm._ext import kernels

    cell = fastlstm.LSTMCell(4, 6, rng=0)
    x = np.ones((2, 4), np.float32)
    cell(x)
    assert isinstance(cell._bound_layers(), kernels.BoundStack)
    proj = fastlstm.LSTM(4, 6, proj_size=3, rng=0)
    stream = fastlstm.Stream(proj, 2)
    y = stream.step(x)
    assert isinstance(stream._plan(), kernels.BoundStack)
    want, _ = reference_forward(proj, x[None])
    _close(y, want[0].astype(np.float32), np.float32)
    stack = kernels.BoundStack(proj._packed_layers(), 6)
    assert stack.step(np.ones((1, 1, 4), np.float32), None, 1, 1) is None  # general path
    with pytest.raises(ValueError, match="no stream buffers"):
        stack.stream_step(None, 1)
    with pytest.raises(ValueError, match="without a projection"):
        kernels.cell_step(stack, 0, x, np.zeros((2, 6), np.float32), np.zeros((2, 6), np.float32),
                          np.zeros((2, 6), np.float32), 1, True, False)
    with pytest.raises(ValueError, match="no projection"):
        kernels.BoundStack(proj._packed_layers(), 6, 1)
    with pytest.raises(RuntimeError, match="already initialised"):  # would leak its layers
        stack.__init__(proj._packed_layers(), 6)
    with pytest.raises(ValueError, match="unidirectional"):
        kernels.BoundStack(fastlstm.LSTM(4, 6, bidirectional=True)._packed_layers(), 6)


def _no_forward(self, *args, **kwargs):
    raise AssertionError("the general path ran")


@pytest.mark.parametrize("kind", ["cell", "lstm time-major", "lstm batch-first", "unbatched"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_plain_cpu_tensors_take_the_compiled_path(torch, monkeypatch, kind, with_hx):
    # Tensors went through forward's conversions: 12 us against 1 us for the same step of
    # arrays (LSTMCell(40, 64)); their NumPy views now go straight to the bound layers.
    rng = np.random.default_rng(8)
    if kind == "cell":
        mod = fastlstm.LSTMCell(6, 10, rng=4)
        x, states = rng.standard_normal((3, 6)), rng.standard_normal((2, 3, 10))
    else:
        mod = fastlstm.LSTM(6, 10, num_layers=2, batch_first=kind == "lstm batch-first",
                            rng=4)
        x = rng.standard_normal({"unbatched": (1, 6), "lstm time-major": (1, 3, 6),
                                 "lstm batch-first": (3, 1, 6)}[kind])
        states = rng.standard_normal((2, 2, 10) if kind == "unbatched" else (2, 2, 3, 10))
    x, states = x.astype(np.float32), states.astype(np.float32)
    hx_arrays = (states[0], states[1]) if with_hx else None
    want = mod(x, hx_arrays)
    hx = tuple(torch.from_numpy(s) for s in hx_arrays) if with_hx else None
    monkeypatch.setattr(type(mod), "forward", _no_forward)
    got = mod(torch.from_numpy(x), hx)
    flat_got = [got[0], got[1]] if kind == "cell" else [got[0], *got[1]]
    flat_want = [want[0], want[1]] if kind == "cell" else [want[0], *want[1]]
    for g, w in zip(flat_got, flat_want):
        assert type(g) is torch.Tensor and not g.requires_grad
        np.testing.assert_array_equal(g.numpy(), w)


@pytest.mark.parametrize("case", ["requires grad", "float64", "strided", "numpy state",
                                  "bfloat16", "neg view"])
def test_other_tensors_take_the_general_path(torch, case):
    rng = np.random.default_rng(9)
    cell = fastlstm.LSTMCell(6, 10, rng=4)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    h, c = rng.standard_normal((2, 3, 10)).astype(np.float32)
    tx, th, tc = (torch.from_numpy(a) for a in (x, h, c))
    hx = (th, tc)
    if case == "requires grad":
        tx = tx.clone().requires_grad_(True)
    elif case == "float64":
        tx = tx.double()
    elif case == "strided":
        tx = torch.from_numpy(_noncontiguous(x))
    elif case == "numpy state":
        hx = (h, c)
    elif case == "bfloat16":
        tx = tx.bfloat16()
        x = tx.float().numpy()
    elif case == "neg view":
        tx = torch._neg_view(torch.from_numpy(-x))
    want = cell(np.ascontiguousarray(x), (h, c))
    got = cell(tx, hx)
    for g, w in zip(got, want):
        assert type(g) is torch.Tensor
        np.testing.assert_allclose(g.numpy(), w, atol=1e-6, rtol=0)
