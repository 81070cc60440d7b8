"""Parity of fastlstm.LSTM with torch.nn.LSTM and with the NumPy oracle.

Two oracles over the same configuration grid:

* torch.nn.LSTM in eval mode (needs torch; the ``torch`` fixture skips without it);
* tests/_reference.py, a float64 NumPy implementation checked against torch in
  test_reference.py (needs no torch, so parity is still tested without torch).

Tolerance: ``TOL[dtype]`` (max abs error) on output, h_n and c_n.  fastlstm in
float32 is compared with the float64 oracle at ``TOL[np.float32]``.
"""

import itertools

import numpy as np
import pytest
from _helpers import TOL
from _helpers.reference import reference_forward

import fastlstm

# torch's CPU LSTM notes it falls back from oneDNN with projections: not our concern.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported")

# Irregular tiny sizes: nothing divides anything, so layout mix-ups show.
INPUT, HIDDEN, PROJ, SEQ, BATCH = 7, 11, 5, 6, 3

GRID = list(itertools.product(
    [1, 2, 3],        # num_layers
    [False, True],    # bidirectional
    [False, True],    # batch_first
    [0, PROJ],        # proj_size
    [True, False],    # bias
    [True, False],    # batched
    [False, True],    # with_hx
    [np.float32, np.float64],
))


def _grid_id(case):
    nl, bi, bf, proj, bias, batched, with_hx, dtype = case
    return (f"L{nl}-{'bi' if bi else 'uni'}-{'bf' if bf else 'sf'}-p{proj}-"
            f"{'bias' if bias else 'nobias'}-{'batched' if batched else 'unbatched'}-"
            f"{'hx' if with_hx else 'nohx'}-{np.dtype(dtype).name}")


def _make_inputs(rng, *, num_layers, bidirectional, batch_first, proj_size, batched, with_hx,
                 dtype, input_size=INPUT, hidden_size=HIDDEN, seq_len=SEQ, batch=BATCH):
    """Random (x, hx) as numpy arrays of ``dtype``, shaped as torch expects."""
    n_states = num_layers * (2 if bidirectional else 1)
    out_size = proj_size or hidden_size
    if batched:
        shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
        state = (n_states, batch)
    else:
        shape = (seq_len, input_size)
        state = (n_states,)
    x = rng.standard_normal(shape).astype(dtype)
    hx = None
    if with_hx:
        hx = (rng.standard_normal(state + (out_size,)).astype(dtype),
              rng.standard_normal(state + (hidden_size,)).astype(dtype))
    return x, hx


def _max_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def _assert_close(got, want, tol, dtype):
    """got/want: (output, (h_n, c_n)) as ndarrays; same shapes, got has ``dtype``."""
    g_out, (g_h, g_c) = got
    w_out, (w_h, w_c) = want
    for name, g, w in (("output", g_out, w_out), ("h_n", g_h, w_h), ("c_n", g_c, w_c)):
        assert isinstance(g, np.ndarray), (name, type(g))
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert g.dtype == np.dtype(dtype), (name, g.dtype, dtype)
        err = _max_err(g, w)
        assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:g}"


def _torch_dtype(torch, dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def _torch_run(torch, m, x, hx=None):
    """Run torch module ``m`` on numpy inputs; return numpy results."""
    with torch.no_grad():
        tx = torch.from_numpy(np.ascontiguousarray(x))
        if hx is None:
            out, (h, c) = m(tx)
        else:
            out, (h, c) = m(tx, tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in hx))
    return out.numpy(), (h.numpy(), c.numpy())


# --------------------------------------------------------------------------- grid vs torch
@pytest.mark.parametrize("case", GRID, ids=_grid_id)
def test_grid_vs_torch(torch, case):
    nl, bi, bf, proj, bias, batched, with_hx, dtype = case
    seed = hash(case[:-1]) % 2**31
    torch.manual_seed(seed)
    tm = torch.nn.LSTM(INPUT, HIDDEN, num_layers=nl, bias=bias, batch_first=bf,
                       bidirectional=bi, proj_size=proj, dtype=_torch_dtype(torch, dtype)).eval()
    # Exercise both ways of copying weights: from_torch and load_state_dict.
    if (nl + bf + with_hx) % 2:
        fm = fastlstm.LSTM.from_torch(tm)
    else:
        fm = fastlstm.LSTM(INPUT, HIDDEN, num_layers=nl, bias=bias, batch_first=bf,
                           bidirectional=bi, proj_size=proj, dtype=dtype)
        fm.load_state_dict(tm.state_dict())
    assert fm.dtype == np.dtype(dtype) and not fm.training

    x, hx = _make_inputs(np.random.default_rng(seed), num_layers=nl, bidirectional=bi,
                         batch_first=bf, proj_size=proj, batched=batched, with_hx=with_hx,
                         dtype=dtype)
    got = fm(x, hx)
    want = _torch_run(torch, tm, x, hx)
    _assert_close(got, want, TOL[dtype], dtype)


# ----------------------------------------------------------------- grid vs NumPy oracle
@pytest.mark.parametrize("case", GRID, ids=_grid_id)
def test_grid_vs_oracle(case):
    nl, bi, bf, proj, bias, batched, with_hx, dtype = case
    seed = hash(case[:-1]) % 2**31
    fm = fastlstm.LSTM(INPUT, HIDDEN, num_layers=nl, bias=bias, batch_first=bf,
                       bidirectional=bi, proj_size=proj, dtype=dtype, rng=seed)
    x, hx = _make_inputs(np.random.default_rng(seed + 1), num_layers=nl, bidirectional=bi,
                         batch_first=bf, proj_size=proj, batched=batched, with_hx=with_hx,
                         dtype=dtype)
    got = fm(x, hx)
    want = reference_forward(fm, x, hx)  # float64 on the module's (exact) parameters
    _assert_close(got, want, TOL[dtype], dtype)


# ---------------------------------------------------------------- larger realistic shapes
LARGE = [
    # (input, hidden, num_layers, bidirectional, proj, seq_len, batch, batch_first)
    pytest.param(256, 256, 1, False, 0, 100, 16, False, id="I256-H256-L100-N16"),
    pytest.param(256, 256, 1, False, 0, 100, 1, False, id="I256-H256-L100-N1"),
    pytest.param(64, 128, 2, True, 0, 50, 8, True, id="I64-H128-2layer-bi-L50-N8-bf"),
    pytest.param(80, 160, 2, True, 48, 40, 4, False, id="I80-H160-P48-2layer-bi-L40-N4"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inp,hid,nl,bi,proj,seq,batch,bf", LARGE)
def test_large_vs_torch(torch, inp, hid, nl, bi, proj, seq, batch, bf, dtype):
    torch.manual_seed(7)
    tm = torch.nn.LSTM(inp, hid, num_layers=nl, batch_first=bf, bidirectional=bi,
                       proj_size=proj, dtype=_torch_dtype(torch, dtype)).eval()
    fm = fastlstm.LSTM.from_torch(tm)
    x, hx = _make_inputs(np.random.default_rng(7), num_layers=nl, bidirectional=bi,
                         batch_first=bf, proj_size=proj, batched=True, with_hx=True,
                         dtype=dtype, input_size=inp, hidden_size=hid, seq_len=seq, batch=batch)
    _assert_close(fm(x), _torch_run(torch, tm, x), TOL[dtype], dtype)
    _assert_close(fm(x, hx), _torch_run(torch, tm, x, hx), TOL[dtype], dtype)


# ------------------------------------------------------------------------ input layouts
def _module(dtype=np.float32, **kw):
    cfg = dict(num_layers=2, bidirectional=True, proj_size=0, batch_first=False, rng=3)
    cfg.update(kw)
    return fastlstm.LSTM(INPUT, HIDDEN, dtype=dtype, **cfg)


def _assert_same(a, b):
    """Two forward results are identical (same shapes, dtypes and values)."""
    a_out, (a_h, a_c) = a
    b_out, (b_h, b_c) = b
    for g, w in ((a_out, b_out), (a_h, b_h), (a_c, b_c)):
        assert type(g) is type(w)
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_list_input(dtype):
    m = _module(dtype)
    x = np.random.default_rng(0).standard_normal((SEQ, BATCH, INPUT)).astype(dtype)
    h0 = np.random.default_rng(1).standard_normal((4, BATCH, HIDDEN)).astype(dtype)
    c0 = np.random.default_rng(2).standard_normal((4, BATCH, HIDDEN)).astype(dtype)
    want = m(x, (h0, c0))
    _assert_same(m(x.tolist(), (h0.tolist(), c0.tolist())), want)
    _assert_same(m(x.tolist()), m(x))
    # unbatched list
    _assert_same(m(x[:, 0].tolist()), m(np.ascontiguousarray(x[:, 0])))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fortran_ordered_input(dtype, batch_first):
    m = _module(dtype, batch_first=batch_first)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((BATCH, SEQ, INPUT) if batch_first else (SEQ, BATCH, INPUT))
    x = x.astype(dtype)
    h0 = rng.standard_normal((4, BATCH, HIDDEN)).astype(dtype)
    c0 = rng.standard_normal((4, BATCH, HIDDEN)).astype(dtype)
    xf, h0f, c0f = (np.asfortranarray(a) for a in (x, h0, c0))
    assert not xf.flags.c_contiguous
    _assert_same(m(xf, (h0f, c0f)), m(x, (h0, c0)))
    _assert_same(m(xf), m(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_and_transposed_views(dtype):
    rng = np.random.default_rng(5)
    m = _module(dtype)
    big = rng.standard_normal((2 * SEQ, 2 * BATCH, 2 * INPUT)).astype(dtype)
    views = {
        "time-step": big[::2, :BATCH, :INPUT],
        "batch-step": big[:SEQ, ::2, :INPUT],
        "feature-step": big[:SEQ, :BATCH, ::2][..., :INPUT],
        "all-step": big[::2, ::2, ::2][..., :INPUT],
        "reversed": big[SEQ - 1::-1, :BATCH, :INPUT],
        "negative-feature-step": big[:SEQ, :BATCH, INPUT - 1::-1],
    }
    for name, v in views.items():
        assert not v.flags.c_contiguous, name
        _assert_same(m(v), m(np.ascontiguousarray(v)))
    # a transposed view: (N, L, I) memory seen as (L, N, I)
    nli = rng.standard_normal((BATCH, SEQ, INPUT)).astype(dtype)
    t = nli.transpose(1, 0, 2)
    _assert_same(m(t), m(np.ascontiguousarray(t)))
    # and the other way round for a batch_first module
    mb = _module(dtype, batch_first=True)
    lni = rng.standard_normal((SEQ, BATCH, INPUT)).astype(dtype)
    tb = lni.transpose(1, 0, 2)
    _assert_same(mb(tb), mb(np.ascontiguousarray(tb)))
    # unbatched strided view
    u = big[::2, 0, :INPUT]
    _assert_same(m(u), m(np.ascontiguousarray(u)))
    # strided / transposed states
    hbig = rng.standard_normal((4, 2 * BATCH, 2 * HIDDEN)).astype(dtype)
    h0 = hbig[:, ::2, ::2][..., :HIDDEN]
    c0 = rng.standard_normal((HIDDEN, BATCH, 4)).astype(dtype).transpose(2, 1, 0)
    x = np.ascontiguousarray(t)
    _assert_same(m(x, (h0, c0)), m(x, (np.ascontiguousarray(h0), np.ascontiguousarray(c0))))


def test_strided_views_vs_oracle():
    """Non-contiguous input also agrees with the oracle (not only with itself)."""
    m = _module(np.float64, proj_size=PROJ, batch_first=True)
    big = np.random.default_rng(6).standard_normal((2 * BATCH, 3 * SEQ, INPUT + 3))
    v = big[::2, ::3, 1:INPUT + 1]
    got = m(v)
    _assert_close(got, reference_forward(m, v), TOL[np.float64], np.float64)


def test_float64_input_to_float32_module():
    m = _module(np.float32)
    rng = np.random.default_rng(8)
    x64 = rng.standard_normal((SEQ, BATCH, INPUT))
    h64 = rng.standard_normal((4, BATCH, HIDDEN))
    c64 = rng.standard_normal((4, BATCH, HIDDEN))
    got = m(x64, (h64, c64))
    for a in (got[0], *got[1]):
        assert a.dtype == np.float32
    _assert_same(got, m(x64.astype(np.float32), (h64.astype(np.float32), c64.astype(np.float32))))
    got_nohx = m(x64)
    assert got_nohx[0].dtype == np.float32
    _assert_same(got_nohx, m(x64.astype(np.float32)))


def test_float32_input_to_float64_module():
    m = _module(np.float64)
    x32 = np.random.default_rng(9).standard_normal((SEQ, BATCH, INPUT)).astype(np.float32)
    got = m(x32)
    assert got[0].dtype == np.float64
    _assert_same(got, m(x32.astype(np.float64)))


# ------------------------------------------------------------------------ torch in/out
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_tensors_in_torch_tensors_out(torch, dtype, batched):
    torch.manual_seed(10)
    tm = torch.nn.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, proj_size=PROJ,
                       dtype=_torch_dtype(torch, dtype)).eval()
    fm = fastlstm.LSTM.from_torch(tm)
    x, hx = _make_inputs(np.random.default_rng(10), num_layers=2, bidirectional=True,
                         batch_first=False, proj_size=PROJ, batched=batched, with_hx=True,
                         dtype=dtype)
    tx = torch.from_numpy(x)
    thx = tuple(torch.from_numpy(a) for a in hx)
    for args in ((tx,), (tx, thx)):
        out, (h, c) = fm(*args)
        with torch.no_grad():
            t_out, (t_h, t_c) = tm(*args)
        for g, w in ((out, t_out), (h, t_h), (c, t_c)):
            assert isinstance(g, torch.Tensor)
            assert g.dtype == w.dtype and g.shape == w.shape
            assert g.device.type == "cpu"
            assert float((g.double() - w.double()).abs().max()) <= TOL[dtype]
        # numpy in gives numpy out, with the same values
        np_args = (x,) if len(args) == 1 else (x, hx)
        n_out, (n_h, n_c) = fm(*np_args)
        assert isinstance(n_out, np.ndarray)
        np.testing.assert_array_equal(n_out, out.numpy())
        np.testing.assert_array_equal(n_h, h.numpy())
        np.testing.assert_array_equal(n_c, c.numpy())


def test_non_contiguous_torch_tensor_in(torch):
    fm = _module(np.float32)
    big = torch.randn(2 * SEQ, BATCH, INPUT, generator=torch.Generator().manual_seed(11))
    v = big[::2]
    out, (h, c) = fm(v)
    assert isinstance(out, torch.Tensor)
    ref = fm(v.contiguous().numpy())
    np.testing.assert_array_equal(out.numpy(), ref[0])
    np.testing.assert_array_equal(h.numpy(), ref[1][0])
    np.testing.assert_array_equal(c.numpy(), ref[1][1])


def _misaligned(a):
    """``a``'s values in a C-contiguous array whose elements sit one byte off their
    alignment (``np.frombuffer`` at an odd offset gives such arrays)."""
    raw = np.zeros(a.nbytes + 1, np.uint8)
    b = raw[1:].view(a.dtype).reshape(a.shape)
    b[...] = a
    assert b.flags.c_contiguous and not b.flags.aligned
    return b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_arrays(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((SEQ, BATCH, INPUT)).astype(dtype)
    for kw in (dict(), dict(num_layers=1, bidirectional=False)):
        m = _module(dtype, **kw)
        d = 2 if m.bidirectional else 1
        hx = tuple(rng.standard_normal((m.num_layers * d, BATCH, HIDDEN)).astype(dtype)
                   for _ in range(2))
        for steps in (SEQ, 1):
            _assert_same(m(_misaligned(x[:steps]), tuple(_misaligned(v) for v in hx)),
                         m(x[:steps], hx))
    cell = fastlstm.LSTMCell(INPUT, HIDDEN, dtype=dtype, rng=3)
    h, c = (rng.standard_normal((BATCH, HIDDEN)).astype(dtype) for _ in range(2))
    for got, want in zip(cell(_misaligned(x[0]), (_misaligned(h), _misaligned(c))),
                         cell(x[0], (h, c))):
        np.testing.assert_array_equal(got, want)


def test_torch_tensors_with_the_negative_bit(torch):
    fm = _module(np.float32)
    x = torch.randn(SEQ, BATCH, INPUT, dtype=torch.complex64,
                    generator=torch.Generator().manual_seed(13)).conj().imag
    assert x.is_neg()
    out, (h, c) = fm(x)
    ref = fm(x.resolve_neg().numpy())
    np.testing.assert_array_equal(out.numpy(), ref[0])
    np.testing.assert_array_equal(c.numpy(), ref[1][1])


def test_to_torch_round_trip(torch):
    fm = fastlstm.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, proj_size=PROJ,
                       batch_first=True, bias=False, dtype=np.float64, rng=12)
    tm = fm.to_torch().eval()
    x, hx = _make_inputs(np.random.default_rng(12), num_layers=2, bidirectional=True,
                         batch_first=True, proj_size=PROJ, batched=True, with_hx=True,
                         dtype=np.float64)
    _assert_close(fm(x, hx), _torch_run(torch, tm, x, hx), TOL[np.float64], np.float64)


# ---------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("proj", [0, PROJ])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_empty_batch_like_torch(torch, bidirectional, batch_first, proj, with_hx):
    torch.manual_seed(13)
    tm = torch.nn.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=bidirectional,
                       batch_first=batch_first, proj_size=proj).eval()
    fm = fastlstm.LSTM.from_torch(tm)
    x, hx = _make_inputs(np.random.default_rng(13), num_layers=2, bidirectional=bidirectional,
                         batch_first=batch_first, proj_size=proj, batched=True,
                         with_hx=with_hx, dtype=np.float32, batch=0)
    want = _torch_run(torch, tm, x, hx)
    got = fm(x, hx)
    _assert_close(got, want, 0.0, np.float32)
    assert got[0].size == 0 and got[1][0].size == 0 and got[1][1].size == 0


# --------------------------------------------------------------------------------- states
@pytest.mark.parametrize("proj", [0, PROJ])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bidirectional_state_ordering(dtype, batch_first, proj):
    nl = 3
    m = fastlstm.LSTM(INPUT, HIDDEN, num_layers=nl, bidirectional=True, batch_first=batch_first,
                      proj_size=proj, dtype=dtype, rng=14)
    x, hx = _make_inputs(np.random.default_rng(14), num_layers=nl, bidirectional=True,
                         batch_first=batch_first, proj_size=proj, batched=True, with_hx=True,
                         dtype=dtype)
    out, (h, c) = m(x, hx)
    hout = proj or HIDDEN
    seq_first = out.transpose(1, 0, 2) if batch_first else out  # (L, N, 2*H_out)
    # h_n is ordered (layer0 fwd, layer0 rev, layer1 fwd, ...); the last layer's
    # forward final state is output at t=L-1, the reverse one is output at t=0.
    np.testing.assert_array_equal(h[2 * nl - 2], seq_first[-1, :, :hout])
    np.testing.assert_array_equal(h[2 * nl - 1], seq_first[0, :, hout:])
    assert h.shape == (2 * nl, BATCH, hout) and c.shape == (2 * nl, BATCH, HIDDEN)
    # Every entry of h_n/c_n matches the oracle's (k = 2*layer + direction).
    r_out, (r_h, r_c) = reference_forward(m, x, hx)
    for k in range(2 * nl):
        assert _max_err(h[k], r_h[k]) <= TOL[dtype], k
        assert _max_err(c[k], r_c[k]) <= TOL[dtype], k


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("proj", [0, PROJ])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unidirectional_last_output_is_h_n(batch_first, proj, batched):
    m = fastlstm.LSTM(INPUT, HIDDEN, num_layers=2, batch_first=batch_first, proj_size=proj,
                      rng=15)
    x, _ = _make_inputs(np.random.default_rng(15), num_layers=2, bidirectional=False,
                        batch_first=batch_first, proj_size=proj, batched=batched,
                        with_hx=False, dtype=np.float32)
    out, (h, c) = m(x)
    if batched and batch_first:
        last = out[:, -1]
    else:
        last = out[-1]
    np.testing.assert_array_equal(last, h[-1])


def test_hx_continues_a_sequence():
    """Running in two chunks and passing (h_n, c_n) on equals one run (unidirectional)."""
    m = fastlstm.LSTM(INPUT, HIDDEN, num_layers=3, proj_size=PROJ, dtype=np.float64, rng=16)
    x = np.random.default_rng(16).standard_normal((2 * SEQ, BATCH, INPUT))
    out, (h, c) = m(x)
    out1, hx1 = m(x[:SEQ])
    out2, (h2, c2) = m(x[SEQ:], hx1)
    tol = TOL[np.float64]
    assert _max_err(np.concatenate([out1, out2]), out) <= tol
    assert _max_err(h2, h) <= tol and _max_err(c2, c) <= tol


# ------------------------------------------------------------------- inputs not modified
@pytest.mark.parametrize("proj", [0, PROJ])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_not_modified(dtype, proj):
    m = fastlstm.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, proj_size=proj,
                      dtype=dtype, rng=17)
    x, hx = _make_inputs(np.random.default_rng(17), num_layers=2, bidirectional=True,
                         batch_first=False, proj_size=proj, batched=True, with_hx=True,
                         dtype=dtype)
    before = [a.copy() for a in (x, *hx)]
    params_before = {k: v.copy() for k, v in m.state_dict().items()}
    m(x, hx)
    m(x, hx)
    for a, b in zip((x, *hx), before):
        np.testing.assert_array_equal(a, b)
    # other dtype (cast path) and unbatched
    x64, h64, c64 = (a.astype(np.float64 if dtype == np.float32 else np.float32)
                     for a in (x, *hx))
    before = [a.copy() for a in (x64, h64, c64)]
    m(x64, (h64, c64))
    for a, b in zip((x64, h64, c64), before):
        np.testing.assert_array_equal(a, b)
    xu, hu, cu = x[:, 0].copy(), hx[0][:, 0].copy(), hx[1][:, 0].copy()
    before = [a.copy() for a in (xu, hu, cu)]
    m(xu, (hu, cu))
    for a, b in zip((xu, hu, cu), before):
        np.testing.assert_array_equal(a, b)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, params_before[k])


def test_torch_inputs_not_modified(torch):
    m = fastlstm.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, rng=18)
    x, hx = _make_inputs(np.random.default_rng(18), num_layers=2, bidirectional=True,
                         batch_first=False, proj_size=0, batched=True, with_hx=True,
                         dtype=np.float32)
    tensors = [torch.from_numpy(a.copy()) for a in (x, *hx)]
    before = [t.clone() for t in tensors]
    m(tensors[0], (tensors[1], tensors[2]))
    for t, b in zip(tensors, before):
        assert torch.equal(t, b)


# --------------------------------------------------------------------- thread invariance
@pytest.mark.parametrize("proj", [0, PROJ])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_invariance(dtype, proj):
    m = fastlstm.LSTM(INPUT, HIDDEN, num_layers=2, bidirectional=True, proj_size=proj,
                      dtype=dtype, rng=19)
    x, hx = _make_inputs(np.random.default_rng(19), num_layers=2, bidirectional=True,
                         batch_first=False, proj_size=proj, batched=True, with_hx=True,
                         dtype=dtype, batch=5, seq_len=8)
    results = {}
    try:
        for n in (1, 2, 4):
            fastlstm.set_num_threads(n)
            assert fastlstm.get_num_threads() in (1, n)  # 1 if built without OpenMP
            results[n] = (m(x, hx), m(x))
    finally:
        fastlstm.set_num_threads(None)
    tol = TOL[dtype]
    for n in (2, 4):
        for got, want in zip(results[n], results[1]):
            _assert_close(got, want, tol, dtype)
    # and all of them agree with the oracle
    _assert_close(results[1][0], reference_forward(m, x, hx), tol, dtype)
