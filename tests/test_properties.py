"""Property-based tests (hypothesis) over the public API.

Valid random configurations and inputs must agree with the NumPy oracle
(``tests/_reference.py``) and, where torch defines the answer, with torch;
invalid ones must raise what torch raises, never crash or corrupt memory.
Inputs come in every memory layout a caller may pass: C or Fortran order,
strided, negatively strided, read-only, nested lists.  Inputs and states are
checked to be left untouched by every call.

Runs are bounded (``max_examples`` per test, no deadline); in CI (``CI=true``)
they are derandomized, so CI sees the same examples every time.  Set
``FASTLSTM_HYPOTHESIS_SCALE`` (e.g. 10) for a longer search.
"""

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from _helpers import IN_CI, TOL, raised, torch_single_thread
from _helpers import TORCH as _TORCH
from _helpers.reference import lstm_reference, reference_forward

import fastlstm
from fastlstm import rnn

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - depends on the environment
    if IN_CI:
        raise RuntimeError("hypothesis is required in CI (CI=true): "
                           "install the test extra") from None
    pytest.skip("hypothesis is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning"
)

_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

_SCALE = float(os.environ.get("FASTLSTM_HYPOTHESIS_SCALE", "1"))
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def _settings(examples):
    return settings(
        max_examples=max(1, int(examples * _SCALE)),
        deadline=None,
        derandomize=IN_CI,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _needs_torch():
    if _TORCH is None:
        pytest.skip("torch is not installed (parity tests need torch==2.13.0)")
    return _TORCH


DTYPES = [np.float32, np.float64]
# Sizes around the kernels' panel edges (8 float64 or 16 float32 units per panel).
HIDDEN = st.one_of(st.integers(1, 40), st.sampled_from([7, 8, 9, 15, 16, 17, 31, 32, 33, 65]))
LAYOUTS = ["c", "fortran", "strided", "reversed", "readonly", "readonly-strided", "list",
           "misaligned"]


# ----------------------------------------------------------------- helpers
def _layout(a, kind):
    """``a``'s values in the memory layout ``kind`` (same shape, dtype and values)."""
    a = np.ascontiguousarray(a)
    if kind == "c":
        return a.copy()
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind in ("strided", "readonly-strided"):
        if a.ndim == 0:
            return a.copy()
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), a.dtype)
        view = big[..., 1::2]
        view[...] = a
        if kind == "readonly-strided":
            view.flags.writeable = False
        return view
    if kind == "reversed":
        if a.ndim == 0:
            return a.copy()
        return a[::-1].copy()[::-1]
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if kind == "misaligned":  # C order, each element one byte off its alignment
        raw = np.zeros(a.nbytes + 1, np.uint8)
        b = raw[1:].view(a.dtype).reshape(a.shape)
        b[...] = a
        return b
    if kind == "list":
        # (an empty nested list would lose the trailing sizes)
        return a.tolist() if a.size else a.copy()
    raise AssertionError(kind)


def _snapshot(obj):
    """A deep copy of an input (array, list, tuple of them) to check it is not modified."""
    if obj is None:
        return None
    if isinstance(obj, tuple):
        return tuple(_snapshot(o) for o in obj)
    return np.array(obj, copy=True)


def _unchanged(before, after):
    if before is None:
        return after is None
    if isinstance(before, tuple):
        return all(_unchanged(b, a) for b, a in zip(before, after))
    return np.array_equal(before, np.asarray(after), equal_nan=True)


def _close(actual, expected, tol, what):
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), (what, actual.shape, np.shape(expected))
    if actual.size:
        err = np.abs(actual.astype(np.float64) - expected).max()
        assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.0e}"


class _Threads:
    """Run with ``n`` fastlstm threads, then restore the default."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        fastlstm.set_num_threads(self.n)

    def __exit__(self, *exc):
        fastlstm.set_num_threads(None)


def _assert_same_nonfinite(a, b, tol, what=""):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b), err_msg=f"{what}: +Inf")
    np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=f"{what}: -Inf")
    fin = np.isfinite(a)
    if fin.any():
        assert np.abs(a[fin] - b[fin]).max() <= tol, what


# -------------------------------------------------------------- strategies
@st.composite
def lstm_configs(draw, bidirectional=None):
    hidden = draw(HIDDEN)
    return dict(
        input_size=draw(st.integers(1, 12)),
        hidden_size=hidden,
        num_layers=draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()) if bidirectional is None else bidirectional,
        proj_size=draw(st.one_of(st.just(0), st.integers(0, hidden - 1))),
    )


def _x_shape(cfg, seq_len, batch):
    """Input shape for ``batch`` sequences (None: unbatched) of ``seq_len`` steps."""
    if batch is None:
        return (seq_len, cfg["input_size"])
    if cfg["batch_first"]:
        return (batch, seq_len, cfg["input_size"])
    return (seq_len, batch, cfg["input_size"])


def _state_shapes(cfg, batch):
    d = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    out = cfg["proj_size"] or cfg["hidden_size"]
    lead = (d,) if batch is None else (d, batch)
    return lead + (out,), lead + (cfg["hidden_size"],)


# ------------------------------------------------------- valid: the oracle
@_settings(200)
@given(cfg=lstm_configs(), dtype=st.sampled_from(DTYPES), seq_len=st.integers(1, 9),
       batch=st.one_of(st.none(), st.integers(0, 9)), with_hx=st.booleans(),
       x_layout=st.sampled_from(LAYOUTS), hx_layout=st.sampled_from(LAYOUTS),
       x_dtype=st.sampled_from(["same", "float32", "float64"]), threads=st.integers(1, 3),
       scale=st.sampled_from([0.1, 1.0, 4.0]), seed=st.integers(0, 2**32 - 1))
def test_lstm_matches_reference(cfg, dtype, seq_len, batch, with_hx, x_layout, hx_layout,
                                x_dtype, threads, scale, seed):
    rng = np.random.default_rng(seed)
    module = fastlstm.LSTM(**cfg, dtype=dtype, rng=seed)
    xd = dtype if x_dtype == "same" else np.dtype(x_dtype)
    x0 = (rng.standard_normal(_x_shape(cfg, seq_len, batch)) * scale).astype(xd)
    hx0 = None
    if with_hx:
        hs, cs = _state_shapes(cfg, batch)
        hx0 = (rng.standard_normal(hs).astype(dtype), rng.standard_normal(cs).astype(dtype))
    x = _layout(x0, x_layout)
    hx = None if hx0 is None else tuple(_layout(v, hx_layout) for v in hx0)
    before = (_snapshot(x), _snapshot(hx))

    with _Threads(threads):
        out, (h_n, c_n) = module(x, hx)

    # The oracle sees what the module computes with: the input cast to its dtype.
    ref_out, (ref_h, ref_c) = reference_forward(module, x0.astype(dtype), hx0)
    tol = TOL[dtype] * (1 + scale)
    for got, ref, name in ((out, ref_out, "output"), (h_n, ref_h, "h_n"), (c_n, ref_c, "c_n")):
        assert isinstance(got, np.ndarray) and got.dtype == dtype, name
        assert got.flags.c_contiguous or got.size == 0, name
        _close(got, ref, tol, name)
    assert _unchanged(before[0], x) and _unchanged(before[1], hx), "an input was modified"


@_settings(120)
@given(input_size=st.integers(1, 12), hidden=HIDDEN, bias=st.booleans(),
       dtype=st.sampled_from(DTYPES), batch=st.one_of(st.none(), st.integers(0, 9)),
       with_hx=st.booleans(), layout=st.sampled_from(LAYOUTS), threads=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_cell_matches_reference(input_size, hidden, bias, dtype, batch, with_hx, layout, threads,
                                seed):
    rng = np.random.default_rng(seed)
    cell = fastlstm.LSTMCell(input_size, hidden, bias=bias, dtype=dtype, rng=seed)
    lead = () if batch is None else (batch,)
    x0 = rng.standard_normal(lead + (input_size,)).astype(dtype)
    hx0 = None
    if with_hx:
        hx0 = tuple(rng.standard_normal(lead + (hidden,)).astype(dtype) for _ in range(2))
    x = _layout(x0, layout)
    hx = None if hx0 is None else tuple(_layout(v, layout) for v in hx0)
    before = (_snapshot(x), _snapshot(hx))

    with _Threads(threads):
        h, c = cell(x, hx)

    params = {k + "_l0": v for k, v in cell.state_dict().items()}
    state = None if hx0 is None else tuple(v[None] for v in hx0)
    _, (ref_h, ref_c) = lstm_reference(params, x0[None], state, num_layers=1,
                                       bidirectional=False, proj_size=0, batch_first=False,
                                       hidden_size=hidden)
    for got, ref, name in ((h, ref_h[0], "h"), (c, ref_c[0], "c")):
        assert got.dtype == dtype
        _close(got, ref, TOL[dtype], name)
    assert _unchanged(before[0], x) and _unchanged(before[1], hx), "an input was modified"


@_settings(100)
@given(use_cell=st.booleans(), cfg=lstm_configs(bidirectional=False),
       dtype=st.sampled_from(DTYPES), seq_len=st.integers(1, 8),
       batch=st.one_of(st.none(), st.integers(1, 5)), with_hx=st.booleans(),
       layout=st.sampled_from(LAYOUTS), threads=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_stream_matches_reference(use_cell, cfg, dtype, seq_len, batch, with_hx, layout, threads,
                                  seed):
    rng = np.random.default_rng(seed)
    if use_cell:
        cfg = dict(cfg, num_layers=1, proj_size=0, batch_first=False)
        module = fastlstm.LSTMCell(cfg["input_size"], cfg["hidden_size"], bias=cfg["bias"],
                                   dtype=dtype, rng=seed)
        params = {k + "_l0": v for k, v in module.state_dict().items()}
    else:
        cfg = dict(cfg, batch_first=False)
        module = fastlstm.LSTM(**cfg, dtype=dtype, rng=seed)
        params = module.state_dict()
    stream = fastlstm.Stream(module, batch_size=batch)
    frames = rng.standard_normal(_x_shape(cfg, seq_len, batch)).astype(dtype)
    hx0 = None
    if with_hx:
        hx0 = tuple(rng.standard_normal(s).astype(dtype) for s in _state_shapes(cfg, batch))
        stream.reset(tuple(_layout(v, layout) for v in hx0))

    with _Threads(threads):
        outs = [np.array(stream.step(_layout(frame, layout)), copy=True) for frame in frames]

    ref_out, (ref_h, ref_c) = lstm_reference(
        params, frames, hx0, num_layers=cfg["num_layers"], bidirectional=False,
        proj_size=cfg["proj_size"], batch_first=False, hidden_size=cfg["hidden_size"])
    _close(np.stack(outs), ref_out, TOL[dtype], "step outputs")
    _close(stream.h, ref_h, TOL[dtype], "h")
    _close(stream.c, ref_c, TOL[dtype], "c")


def _lstm_pair(cfg, dtype, seed):
    """``(torch, torch.nn.LSTM, the fastlstm.LSTM from it, a NumPy rng)`` for a
    configuration, seeded by ``seed``."""
    torch = _needs_torch()
    torch.manual_seed(seed % 2**31)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    t = torch.nn.LSTM(**cfg, dtype=tdtype).eval()
    return torch, t, fastlstm.LSTM.from_torch(t), np.random.default_rng(seed)


@_settings(80)
@given(cfg=lstm_configs(), dtype=st.sampled_from(DTYPES), seq_len=st.integers(1, 7),
       batch=st.one_of(st.none(), st.integers(0, 6)), with_hx=st.booleans(),
       tensors=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_lstm_matches_torch(cfg, dtype, seq_len, batch, with_hx, tensors, seed):
    torch, t, f, rng = _lstm_pair(cfg, dtype, seed)
    x = torch.from_numpy(rng.standard_normal(_x_shape(cfg, seq_len, batch)).astype(dtype))
    hx = None
    if with_hx:
        hx = tuple(torch.from_numpy(rng.standard_normal(s).astype(dtype))
                   for s in _state_shapes(cfg, batch))
    with torch.no_grad():
        ref_out, (ref_h, ref_c) = t(x, hx)
    if tensors:
        out, (h_n, c_n) = f(x, hx)
        assert all(isinstance(v, torch.Tensor) for v in (out, h_n, c_n))
    else:
        out, (h_n, c_n) = f(x.numpy(), None if hx is None else tuple(v.numpy() for v in hx))
    for got, ref, name in ((out, ref_out, "output"), (h_n, ref_h, "h_n"), (c_n, ref_c, "c_n")):
        _close(np.asarray(got), ref.numpy().astype(np.float64), TOL[dtype], name)


# ------------------------------------------------- invalid: torch's errors
MUTATIONS = ["rank", "features", "h_shape", "c_shape", "h_rank", "c_rank", "dtype", "empty",
             "none"]
BAD_DTYPES = [np.int64, np.int32, np.uint8, np.bool_, np.complex64]


def _torch_call(torch, module, x, hx):
    def run():
        with torch.no_grad():
            return module(torch.from_numpy(x),
                          None if hx is None else tuple(torch.from_numpy(v) for v in hx))
    return run


def _assert_same_outcome(torch_fn, fast_fns, torch_result_to_np):
    """torch and fastlstm both raise the same type (and message, unless it names
    dtypes, which differ in spelling), or neither raises and the results agree."""
    t_exc = raised(torch_fn)
    for fast_fn in fast_fns:
        f_exc = raised(fast_fn)
        if t_exc is None:
            assert f_exc is None, f"torch succeeded, fastlstm raised {f_exc!r}"
            continue
        assert f_exc is not None, f"fastlstm did not raise; torch raised {t_exc!r}"
        assert type(f_exc) is type(t_exc), (t_exc, f_exc)
        if "dtype" not in str(t_exc):
            assert str(f_exc) == str(t_exc)
    if t_exc is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = torch_result_to_np(torch_fn())
            for fast_fn in fast_fns:
                got = torch_result_to_np(fast_fn())
                for g, e in zip(got, expected):
                    _close(g, e, TOL[np.float32], "result of a call torch accepts")
    return t_exc


def _lstm_result(result):
    out, (h, c) = result
    return [np.asarray(v, dtype=np.float64) for v in (out, h, c)]


@_settings(150)
@given(cfg=lstm_configs(), seq_len=st.integers(1, 5), batch=st.one_of(st.none(), st.integers(1, 4)),
       with_hx=st.booleans(), mutation=st.sampled_from(MUTATIONS),
       rank=st.sampled_from([0, 1, 4, 5]), delta=st.sampled_from([-2, -1, 1, 3]),
       axis=st.integers(0, 2), bad_dtype=st.sampled_from(BAD_DTYPES), data=st.data())
def test_invalid_lstm_input_raises_like_torch(cfg, seq_len, batch, with_hx, mutation, rank,
                                              delta, axis, bad_dtype, data):
    torch = _needs_torch()
    t = torch.nn.LSTM(**cfg).eval()
    f = fastlstm.LSTM.from_torch(t)
    x_shape = list(_x_shape(cfg, seq_len, batch))
    h_shape, c_shape = (list(s) for s in _state_shapes(cfg, batch))
    x_dtype = np.float32
    with_hx = with_hx or mutation in ("h_shape", "c_shape", "h_rank", "c_rank")
    if mutation == "rank":
        x_shape = [2] * rank
    elif mutation == "features":
        x_shape[-1] = max(0, x_shape[-1] + delta)
    elif mutation in ("h_shape", "c_shape"):
        shape = h_shape if mutation == "h_shape" else c_shape
        i = axis % len(shape)
        shape[i] = max(0, shape[i] + delta)
    elif mutation in ("h_rank", "c_rank"):
        shape = h_shape if mutation == "h_rank" else c_shape
        if len(shape) > 1 and delta < 0:
            del shape[0]
        else:
            shape.insert(0, 1)
    elif mutation == "dtype":
        x_dtype = bad_dtype
    elif mutation == "empty":
        x_shape[1 if (batch is not None and cfg["batch_first"]) else 0] = 0
    x = np.full(x_shape, data.draw(st.sampled_from([0, 1])), x_dtype)
    hx = (np.full(h_shape, 0.5, np.float32), np.full(c_shape, -0.5, np.float32)) \
        if with_hx else None
    _assert_same_outcome(
        _torch_call(torch, t, x, hx),
        [lambda: f(x, hx),
         lambda: f(torch.from_numpy(x), None if hx is None else tuple(map(torch.from_numpy, hx)))],
        _lstm_result)


@_settings(100)
@given(input_size=st.integers(1, 6), hidden=st.integers(1, 9), batch=st.one_of(
       st.none(), st.integers(1, 4)), with_hx=st.booleans(),
       mutation=st.sampled_from(["rank", "features", "h_batch", "c_batch", "h_size", "c_size",
                                 "h_rank", "dtype", "none"]),
       rank=st.sampled_from([0, 3]), delta=st.sampled_from([-1, 1, 2]),
       bad_dtype=st.sampled_from(BAD_DTYPES))
def test_invalid_cell_input_raises_like_torch(input_size, hidden, batch, with_hx, mutation, rank,
                                              delta, bad_dtype):
    torch = _needs_torch()
    t = torch.nn.LSTMCell(input_size, hidden)
    f = fastlstm.LSTMCell.from_torch(t)
    lead = [] if batch is None else [batch]
    x_shape = lead + [input_size]
    h_shape, c_shape = lead + [hidden], lead + [hidden]
    x_dtype = np.float32
    with_hx = with_hx or mutation.startswith(("h_", "c_"))
    if mutation == "rank":
        x_shape = [2] * rank
    elif mutation == "features":
        x_shape[-1] = max(0, input_size + delta)
    elif mutation in ("h_batch", "c_batch"):
        shape = h_shape if mutation == "h_batch" else c_shape
        if batch is None:
            shape.insert(0, 2)
        else:
            shape[0] = max(0, batch + delta)
    elif mutation in ("h_size", "c_size"):
        shape = h_shape if mutation == "h_size" else c_shape
        shape[-1] = max(0, hidden + delta)
    elif mutation == "h_rank":
        h_shape = [1] + h_shape
    elif mutation == "dtype":
        x_dtype = bad_dtype
    x = np.ones(x_shape, x_dtype)
    hx = (np.full(h_shape, 0.5, np.float32), np.full(c_shape, -0.5, np.float32)) \
        if with_hx else None
    if with_hx and len(x_shape) == 1 and 2 in (len(h_shape), len(c_shape)):
        # Unbatched input with a batched state: torch 2.13 itself may crash on
        # it (a segfault for x (2,), h (3, 3)), so its answer is no reference;
        # fastlstm refuses it with the RuntimeError torch gives when it does not crash,
        # or (when the state's second size happens to be hidden_size) one of its own.
        with pytest.raises(RuntimeError, match="inconsistent hidden_size|for unbatched 1D input"):
            f(x, hx)
        return

    def torch_fn():
        with torch.no_grad():
            return t(torch.from_numpy(x),
                     None if hx is None else tuple(map(torch.from_numpy, hx)))

    _assert_same_outcome(torch_fn, [lambda: f(x, hx)],
                         lambda r: [np.asarray(v, dtype=np.float64) for v in r])


# ---------------------------------------------------------------- NaN / Inf
@_settings(100)
@given(cfg=lstm_configs(), dtype=st.sampled_from(DTYPES), seq_len=st.integers(1, 6),
       batch=st.one_of(st.none(), st.integers(1, 4)), in_hx=st.booleans(),
       values=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_nonfinite_values_propagate_like_torch(cfg, dtype, seq_len, batch, in_hx, values, seed):
    torch, t, f, rng = _lstm_pair(cfg, dtype, seed)
    x = rng.standard_normal(_x_shape(cfg, seq_len, batch)).astype(dtype)
    hx = tuple(rng.standard_normal(s).astype(dtype) for s in _state_shapes(cfg, batch))
    target = hx[rng.integers(2)] if in_hx else x
    for v in values:
        target[tuple(rng.integers(n) for n in target.shape)] = v
    with torch.no_grad():
        ref = t(torch.from_numpy(x), tuple(map(torch.from_numpy, hx)))
    got = f(x, hx)
    for g, r, name in zip(_lstm_result(got), _lstm_result(ref), ("output", "h_n", "c_n")):
        _assert_same_nonfinite(g, r, TOL[dtype], name)


@_settings(60)
@given(hidden=st.integers(1, 20), batch=st.integers(1, 4), dtype=st.sampled_from(DTYPES),
       values=st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_cell_nonfinite_values_propagate_like_torch(hidden, batch, dtype, values, seed):
    torch = _needs_torch()
    torch.manual_seed(seed % 2**31)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    t = torch.nn.LSTMCell(3, hidden, dtype=tdtype)
    f = fastlstm.LSTMCell.from_torch(t)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((batch, 3)).astype(dtype),
              rng.standard_normal((batch, hidden)).astype(dtype),
              rng.standard_normal((batch, hidden)).astype(dtype)]
    for v in values:
        a = arrays[rng.integers(3)]
        a[tuple(rng.integers(n) for n in a.shape)] = v
    x, h, c = arrays
    with torch.no_grad():
        ref = t(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    got = f(x, (h, c))
    for g, r, name in zip(got, ref, ("h", "c")):
        _assert_same_nonfinite(g, r.numpy(), TOL[dtype], name)


# ---------------------------------------------------------- huge dimensions
_MAX_ROWS = 2**31 - 1


def _broadcast(shape, dtype=np.float32):
    """A read-only array of ``shape`` that uses one element of memory (all strides 0)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape),
                                           writeable=False)


@_settings(40)
@given(seq_len=st.integers(1, 2**22), extra=st.integers(0, 2**20), batched=st.booleans(),
       batch_first=st.booleans(), with_hx=st.booleans(), bidirectional=st.booleans())
def test_huge_inputs_raise_value_error(seq_len, extra, batched, batch_first, with_hx,
                                       bidirectional):
    # More rows (steps x sequences) than 32-bit indices (and BLAS's int) can address.
    module = fastlstm.LSTM(1, 2, batch_first=batch_first, bidirectional=bidirectional)
    if batched:
        batch = -(-(_MAX_ROWS + 1) // seq_len) + extra
        shape = (batch, seq_len, 1) if batch_first else (seq_len, batch, 1)
    else:
        batch = None
        seq_len = _MAX_ROWS + 1 + extra
        shape = (seq_len, 1)
    hx = None
    if with_hx:
        lead = (2 if bidirectional else 1,) + (() if batch is None else (batch,))
        hx = (_broadcast(lead + (2,)), _broadcast(lead + (2,)))
    with pytest.raises(ValueError, match="rows per call are supported"):
        module(_broadcast(shape), hx)


def test_huge_stream_batch_raises_value_error():
    with pytest.raises(ValueError, match="batch_size"):
        fastlstm.Stream(fastlstm.LSTM(1, 2), batch_size=_MAX_ROWS + 1)


@pytest.mark.skipif(SANITIZED or not sys.platform.startswith("linux"),
                    reason="needs an address-space limit (incompatible with ASan's shadow)")
def test_huge_cell_batch_fails_cleanly():
    # LSTMCell with more than 2**31 - 1 rows: LSTM's ValueError, before any copy of
    # the input (never a crash, or a result computed on a truncated size).
    cell = fastlstm.LSTMCell(1, 2)
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**31 + 3, 1), (0, 0))
    with pytest.raises(ValueError, match="rows per call are supported"):
        cell(x)


# ------------------------------------------------------------ rnn utilities
@_settings(100)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=6),
       trailing=st.sampled_from([(), (1,), (3,), (2, 2)]),
       dtype=st.sampled_from([np.float32, np.float64, np.int64]), batch_first=st.booleans(),
       enforce_sorted=st.booleans(), layout=st.sampled_from(["c", "fortran", "strided",
                                                              "readonly"]),
       padding=st.sampled_from([0.0, -1.0, 7.0]), seed=st.integers(0, 2**32 - 1))
def test_packing_round_trip_matches_torch(lengths, trailing, dtype, batch_first, enforce_sorted,
                                          layout, padding, seed):
    if enforce_sorted:
        lengths = sorted(lengths, reverse=True)
    rng = np.random.default_rng(seed)
    steps = max(lengths)
    shape = ((len(lengths), steps) if batch_first else (steps, len(lengths))) + trailing
    x0 = (rng.standard_normal(shape) * 10).astype(dtype)
    x = _layout(x0, layout)
    before = _snapshot(x)

    packed = rnn.pack_padded_sequence(x, lengths, batch_first=batch_first,
                                      enforce_sorted=enforce_sorted)
    padded, out_lengths = rnn.pad_packed_sequence(packed, batch_first=batch_first,
                                                  padding_value=padding)
    # Plain NumPy oracle: each sequence's first lengths[i] steps, padding after.
    seqs = [x0[i, :n] if batch_first else x0[:n, i] for i, n in enumerate(lengths)]
    np.testing.assert_array_equal(out_lengths, lengths)
    for i, n in enumerate(lengths):
        got = padded[i] if batch_first else padded[:, i]
        np.testing.assert_array_equal(got[:n], seqs[i])
        assert (got[n:] == np.asarray(padding, dtype)).all()
    unpacked = rnn.unpack_sequence(packed)
    for a, b in zip(unpacked, seqs):
        np.testing.assert_array_equal(a, b)
    assert _unchanged(before, x)

    if _TORCH is not None:
        torch = _TORCH
        tp = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(x0), torch.tensor(lengths), batch_first=batch_first,
            enforce_sorted=enforce_sorted)
        np.testing.assert_array_equal(packed.data, tp.data.numpy())
        np.testing.assert_array_equal(packed.batch_sizes, tp.batch_sizes.numpy())
        for mine, theirs in ((packed.sorted_indices, tp.sorted_indices),
                             (packed.unsorted_indices, tp.unsorted_indices)):
            assert (mine is None) == (theirs is None)
            if mine is not None:
                np.testing.assert_array_equal(mine, theirs.numpy())
        tpad = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(s) for s in seqs],
                                               batch_first=batch_first, padding_value=padding)
        np.testing.assert_array_equal(
            rnn.pad_sequence([_layout(s, layout) for s in seqs], batch_first=batch_first,
                             padding_value=padding), tpad.numpy())
