"""Direct tests of fastlstm's low-level pieces against NumPy.

* ``blas._gemm_for_tests``: the row-major GEMM wrapper over scipy's BLAS.
* ``kernels._activation_for_tests``: the kernels' own tanh / sigmoid.
* ``kernels.input_projection``: the small-M kernel (on weights packed by
  ``lstm._pack_panels``) and the BLAS path, at sizes that leave partial panels
  and partial blocks of 4 rows.
* ``kernels.recurrence`` through whole LSTMs whose sizes exercise partial panels,
  against the NumPy oracle of ``tests/_helpers/reference.py``.
"""

import itertools

import numpy as np
import pytest
from _helpers import TOL
from _helpers.reference import reference_forward

import fastlstm
from fastlstm._ext import blas, kernels
from fastlstm._module import _pack_panels

DTYPES = [np.float32, np.float64]
GEMM_RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _ids(dtype):
    return np.dtype(dtype).name


# --------------------------------------------------------------------- GEMM
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("m, n, k", [(5, 7, 3), (1, 1, 1), (3, 1, 9), (17, 33, 13)])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.75, 1.5), (2.5, -1.0)])
def test_gemm_matches_numpy(dtype, trans_a, trans_b, m, n, k, alpha, beta):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    c = c0.copy()
    blas._gemm_for_tests(a, b, c, trans_a, trans_b, alpha, beta)

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    op_a = a64.T if trans_a else a64
    op_b = b64.T if trans_b else b64
    expected = alpha * (op_a @ op_b) + beta * c0.astype(np.float64)
    scale = np.abs(alpha) * (np.abs(op_a) @ np.abs(op_b)) + np.abs(beta * c0.astype(np.float64))
    assert c.dtype == dtype
    np.testing.assert_array_less(np.abs(c - expected), GEMM_RTOL[dtype] * (scale + 1e-30) + 1e-30)
    np.testing.assert_allclose(c, expected, rtol=GEMM_RTOL[dtype], atol=GEMM_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_gemm_beta_zero_ignores_nan_in_c(dtype):
    a = np.arange(15, dtype=dtype).reshape(5, 3)
    b = np.arange(21, dtype=dtype).reshape(3, 7)
    c = np.full((5, 7), np.nan, dtype=dtype)
    blas._gemm_for_tests(a, b, c, False, False, 1.0, 0.0)
    np.testing.assert_array_equal(c, a.astype(np.float64) @ b.astype(np.float64))


def test_gemm_rejects_mismatched_shapes():
    a = np.zeros((5, 3), np.float64)
    b = np.zeros((4, 7), np.float64)
    with pytest.raises(ValueError):
        blas._gemm_for_tests(a, b, np.zeros((5, 7)), False, False, 1.0, 0.0)
    with pytest.raises(ValueError):
        blas._gemm_for_tests(a, np.zeros((3, 7)), np.zeros((6, 7)), False, False, 1.0, 0.0)


# --------------------------------------------------------------- activations
# Two ways in: ``_activation_for_tests`` (the "hook"), and the fused gate
# kernel that the LSTM really runs ("gates"), read back through a one-step
# LSTM whose weights make a state equal to the activation of a chosen value:
#
# * tanh: biases i = g = 0, f = o = +1e30 (f = o = sigmoid(1e30) = 1), W = 0,
#   c_0 = x, so c = 1*x + sigmoid(0)*tanh(0) = x and h_n = 1 * tanh(x);
# * sigmoid: W_hh's f rows the identity, h_0 = x, c_0 = 1, all else 0, so the
#   f preactivation is x and c_n = sigmoid(x) * 1 + sigmoid(0) * tanh(0).
#
# The gate kernel is compiled for several ISAs (target_clones) and the hook is
# not, so the two need not round alike; both are checked.
PATHS = ["hook", "gates"]


def _act_hook(x, sigmoid):
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    kernels._activation_for_tests(x, y, sigmoid)
    return y


def _act_gates(x, sigmoid, hidden=16):
    """Activation of x through ``fl_gates`` (see above); ``hidden`` values per batch row."""
    x = np.ascontiguousarray(x).ravel()
    dt = x.dtype
    n_rows = -(-x.size // hidden)
    vals = np.zeros(n_rows * hidden, dt)
    vals[:x.size] = x
    vals = vals.reshape(1, n_rows, hidden)
    module = fastlstm.LSTM(1, hidden, dtype=dt)
    params = {k: np.zeros_like(v) for k, v in module.state_dict().items()}
    if sigmoid:
        params["weight_hh_l0"][hidden:2 * hidden] = np.eye(hidden, dtype=dt)
        h0, c0 = vals, np.ones_like(vals)
    else:
        zero, big = np.zeros(hidden, dt), np.full(hidden, 1e30, dt)
        params["bias_ih_l0"] = np.concatenate([zero, big, zero, big])
        h0, c0 = np.zeros_like(vals), vals
    module.load_state_dict(params)
    _, (h_n, c_n) = module(np.zeros((1, n_rows, 1), dt), (h0, c0))
    return (c_n if sigmoid else h_n).ravel()[:x.size]


def _sigmoid_gates_via_bias(x):
    """sigmoid(x) through ``fl_gates`` with x as the f bias of one unit each:
    for values that must not meet a zero weight (0 * inf is NaN)."""
    x = np.ascontiguousarray(x).ravel()
    dt, hidden = x.dtype, x.size
    module = fastlstm.LSTM(1, hidden, dtype=dt)
    params = {k: np.zeros_like(v) for k, v in module.state_dict().items()}
    params["bias_ih_l0"][hidden:2 * hidden] = x
    module.load_state_dict(params)
    c0 = np.ones((1, 1, hidden), dt)
    _, (_, c_n) = module(np.zeros((1, 1, 1), dt), (np.zeros_like(c0), c0))
    return c_n.ravel()


def _act(x, sigmoid, path="hook"):
    return _act_hook(x, sigmoid) if path == "hook" else _act_gates(x, sigmoid)


def _sigmoid64(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _float32_range(lo, hi):
    """Every float32 in [lo, hi] (0 < lo < hi)."""
    bits = np.arange(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32) + 1,
                     dtype=np.int32)
    return bits.view(np.float32)


_GRID_CACHE = {}


def _grid32():
    """A dense grid over [-20, 20], every float32 where the fit is worst, and
    a few special finite values, both signs."""
    if "x" not in _GRID_CACHE:
        dense = np.linspace(-20.0, 20.0, 4_000_001).astype(np.float32)
        # Every float32 in [8, 9.5] (tanh near its clamp at 9) and in [16, 19]
        # (sigmoid(x) = 0.5 + 0.5*tanh(x/2) there).
        hard = np.concatenate([_float32_range(8.0, 9.5), _float32_range(16.0, 19.0)])
        special = np.array([0.0, 1e-45, 1e-38, 1e-7, 0.5, 1.0, 9.0, 1e30], np.float32)
        pos = np.concatenate([hard, special])
        _GRID_CACHE["x"] = np.concatenate([dense, pos, -pos])
    return _GRID_CACHE["x"]


def _act_grid32(sigmoid, path):
    key = (sigmoid, path)
    if key not in _GRID_CACHE:
        _GRID_CACHE[key] = _act(_grid32(), sigmoid, path)
    return _GRID_CACHE[key]


@pytest.mark.parametrize("path", PATHS)
def test_tanh_float32_error(path):
    x = _grid32()
    err = np.abs(_act_grid32(False, path) - np.tanh(x.astype(np.float64)))
    worst = int(np.argmax(err))
    assert err[worst] <= 4e-7, f"tanh error {err[worst]:.3g} at x={x[worst]!r}"


@pytest.mark.parametrize("path", PATHS)
def test_sigmoid_float32_error(path):
    x = _grid32()
    err = np.abs(_act_grid32(True, path) - _sigmoid64(x))
    worst = int(np.argmax(err))
    # 2.2e-7 worst over the ISA versions (the baseline build has no FMA).
    assert err[worst] <= 2.5e-7, f"sigmoid error {err[worst]:.3g} at x={x[worst]!r}"


@pytest.mark.parametrize("path", PATHS)
def test_tanh_float32_range(path):
    x = _grid32()
    y = _act_grid32(False, path)
    bad = np.abs(y) > 1
    assert not bad.any(), (
        f"{bad.sum()} tanh values outside [-1, 1], e.g. tanh({x[bad][0]!r}) = {y[bad][0]!r}")


@pytest.mark.parametrize("path", PATHS)
def test_sigmoid_float32_range(path):
    x = _grid32()
    y = _act_grid32(True, path)
    bad = (y < 0) | (y > 1)
    assert not bad.any(), (
        f"{bad.sum()} sigmoid values outside [0, 1], e.g. sigmoid({x[bad][0]!r}) = {y[bad][0]!r}")


@pytest.mark.parametrize("path", PATHS)
def test_tanh_float32_is_odd(path):
    x = _grid32()
    y = _act_grid32(False, path)
    pos = x > 0
    # The grid holds -x for every x > 0 (as -pos, or as the symmetric linspace).
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    i_pos = np.searchsorted(xs, x[pos])
    i_neg = np.searchsorted(xs, -x[pos])
    assert (xs[i_neg] == -x[pos]).all()
    np.testing.assert_array_equal(ys[i_neg], -ys[i_pos])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_activation_special_values(dtype, path):
    tiny = np.finfo(dtype).tiny
    sub = np.finfo(dtype).smallest_subnormal
    x = np.array([0.0, -0.0, tiny, -tiny, sub, -sub, 9.0, -9.0, 1e30, -1e30,
                  np.inf, -np.inf, np.nan], dtype=dtype)
    if path == "hook":
        t, s = _act_hook(x, False), _act_hook(x, True)
    else:
        t, s = _act_gates(x, False, hidden=1), _sigmoid_gates_via_bias(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(t, np.tanh(x64), rtol=0, atol=4e-7)
    np.testing.assert_allclose(s, _sigmoid64(x64), rtol=0, atol=2e-7)
    assert t[0] == 0 and s[0] == 0.5
    if path == "hook":
        assert np.signbit(t[1])  # tanh(-0) = -0 (the gate path adds +0 to c first)
    assert t[10] == 1 and t[11] == -1, "tanh(+-inf) should be +-1"
    assert s[10] == 1 and s[11] == 0, "sigmoid(+inf) = 1, sigmoid(-inf) = 0"
    assert t[8] == 1 and t[9] == -1 and s[8] == 1 and s[9] == 0, "+-1e30"
    assert np.isnan(t[12]) and np.isnan(s[12])
    # NaN stays where it is.
    x = np.array([1.0, np.nan, -1.0, np.nan, 0.5], dtype=dtype)
    for sig in (False, True):
        if path == "hook":
            y = _act_hook(x, sig)
        else:
            y = _sigmoid_gates_via_bias(x) if sig else _act_gates(x, sig, hidden=1)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(x))


@pytest.mark.parametrize("path", PATHS)
def test_activation_float64_error(path):
    x = np.concatenate([np.linspace(-40.0, 40.0, 400_001),
                        np.geomspace(1e-300, 1.0, 2001), -np.geomspace(1e-300, 1.0, 2001)])
    t = _act(x, False, path)
    s = _act(x, True, path)
    assert np.abs(t - np.tanh(x)).max() <= 1e-15
    assert np.abs(s - _sigmoid64(x)).max() <= 1e-15
    assert np.abs(t).max() <= 1 and s.min() >= 0 and s.max() <= 1
    np.testing.assert_array_equal(_act(-x, False, path), -t)


def test_activation_rejects_mixed_dtypes():
    with pytest.raises((TypeError, ValueError)):
        kernels._activation_for_tests(np.zeros(3, np.float32), np.zeros(3, np.float64), False)

# ------------------------------------------------------------------- panels
@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_panel_width(dtype):
    assert kernels.panel_width(np.dtype(dtype).name) == {np.float32: 64, np.float64: 32}[dtype]


@pytest.fixture(params=["rows", "strips"])
def panel_layout(request):
    """Each panel layout in turn (strips only below the avx512 level), restored after."""
    strips = request.param == "strips"
    level = kernels.simd_level()
    if strips and level == "avx512":
        kernels.set_simd_level("avx2")
    previous = kernels._set_panel_strips_for_tests(strips)
    yield request.param
    kernels._set_panel_strips_for_tests(previous)
    kernels.set_simd_level(level)


def test_panel_layout_follows_the_cpu():
    """Strips of 64 bytes below AVX-512 (whose blocks read whole panel rows), rows with it."""
    best = kernels.simd_available()[-1]
    for dtype in ("float32", "float64"):
        width = kernels.panel_width(dtype)
        expected = width if best == "avx512" else width // 4
        assert kernels.panel_strip(dtype) == expected, (best, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("n, k", [(1, 1), (4, 3), (12, 1), (44, 37), (64, 16), (65, 2),
                                  (100, 5), (260, 3)])
def test_pack_panels_layout(dtype, n, k, panel_layout):
    width = kernels.panel_width(np.dtype(dtype).name)
    strip = kernels.panel_strip(np.dtype(dtype).name)
    assert strip == (width if panel_layout == "rows" else width // 4)
    weight = np.random.default_rng(n * 100 + k).standard_normal((n, k)).astype(dtype)
    packed = _pack_panels(weight)
    n_panels = -(-n // width)
    assert packed.dtype == dtype
    assert packed.ndim == 1 and packed.flags.c_contiguous
    assert packed.shape == (n_panels * k * width,)
    # Panel p is a contiguous K x W block; in it, strip s a contiguous K x S block.
    for p in range(n_panels):
        for kk in range(k):
            for j in range(width):
                col = p * width + j
                expected = weight[col, kk] if col < n else 0
                at = p * k * width + (j // strip) * k * strip + kk * strip + j % strip
                assert packed[at] == expected, (p, kk, j)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("level", [lv for lv in kernels.simd_available() if lv != "avx512"])
def test_panel_layouts_give_the_same_results(dtype, level):
    """Rows and strips hold the same weights for the same sums in the same order:
    every level gives the same bits with either (a batch, a single sequence,
    partial panels, a projection, both directions)."""
    results = {}
    old_level = kernels.simd_level()
    old_dynamic = fastlstm.get_dynamic_threads()
    fastlstm.set_dynamic_threads(False)  # a fixed thread count: the same schedule
    try:
        for strips in (False, True):
            kernels.set_simd_level(level)
            previous = kernels._set_panel_strips_for_tests(strips)
            try:
                out = []
                for hidden, proj, batch, bidir in ((37, 0, 1, False), (130, 0, 7, True),
                                                   (70, 20, 3, False), (64, 0, 16, False)):
                    m = fastlstm.LSTM(24, hidden, num_layers=2, proj_size=proj,
                                       bidirectional=bidir, dtype=dtype, rng=3)
                    x = np.random.default_rng(hidden).standard_normal((5, batch, 24))
                    y, (h, c) = m(x.astype(dtype))
                    out += [y, h, c, m(x[:1].astype(dtype))[0]]
                results[strips] = out
            finally:
                kernels._set_panel_strips_for_tests(previous)
    finally:
        kernels.set_simd_level(old_level)
        fastlstm.set_dynamic_threads(old_dynamic)
    for a, b in zip(results[False], results[True]):
        np.testing.assert_array_equal(a, b)


def test_strips_refuse_the_avx512_level():
    if "avx512" not in kernels.simd_available():
        pytest.skip("this CPU has no avx512 level (the refusal is for it)")
    level = kernels.simd_level()
    try:
        kernels.set_simd_level("avx2")
        previous = kernels._set_panel_strips_for_tests(True)
        try:
            with pytest.raises(ValueError, match="whole panel rows"):
                kernels.set_simd_level("avx512")
        finally:
            kernels._set_panel_strips_for_tests(previous)
    finally:
        kernels.set_simd_level(level)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_packed_weights_start_on_cache_lines(dtype):
    """Every packed array starts on a 64-byte line (NumPy gives 16 bytes: large
    arrays land 16 bytes past a page), after packing, a new state dict, a cast
    and unpickling; the packed values are the module's parameters."""
    import pickle

    m = fastlstm.LSTM(256, 256, num_layers=2, bidirectional=True, proj_size=64, dtype=dtype,
                      rng=0)
    cell = fastlstm.LSTMCell(256, 256, dtype=dtype, rng=0)
    for _ in range(2):
        for module in (m, cell, pickle.loads(pickle.dumps(m))):
            for layer in module._packed_layers():
                arrays = [(n, a) for n, a in zip(layer._fields, layer)
                          if isinstance(a, np.ndarray)]
                assert len(arrays) == 5
                for name, array in arrays:
                    assert array.ctypes.data % 64 == 0 or array.size == 0, name
                    assert array.flags.c_contiguous, name
        packed = m._packed_layers()[1]
        np.testing.assert_array_equal(packed.w_hh_p[1], _pack_panels(
            fastlstm._module._interleave_gates(m.weight_hh_l1_reverse, 256)))
        m.load_state_dict(m.state_dict())
        m.double() if dtype == np.float32 else m.float()
        cell.to(m.dtype)


# --------------------------------------------------------- input projection
OWN_KERNEL = 1 << 30  # blas_min_rows that no block reaches: always the small-M kernel
ALWAYS_BLAS = 1

ROWS = [1, 2, 3, 4, 5, 7, 8, 9, 10, 17, 20, 33]  # every row-block tier and tail
N_OUT = [4, 12, 44, 64, 100, 260]
N_IN = [1, 3, 16, 37]


def _projection(x, w, num_threads, blas_min_rows):
    """gates = x @ w.T through input_projection, checking it writes exactly gates."""
    rows, n_out = x.shape[0], w.shape[0]
    guard = 16
    buf = np.full(rows * n_out + guard, np.nan, dtype=x.dtype)
    buf[rows * n_out:] = 12345.0
    gates = buf[:rows * n_out].reshape(rows, n_out)
    kernels.input_projection(x, w, _pack_panels(w), gates, num_threads, blas_min_rows)
    assert (buf[rows * n_out:] == 12345.0).all(), "wrote past the end of gates"
    return gates


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("path", ["own", "blas"])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("n_out", N_OUT)
def test_input_projection(dtype, path, num_threads, n_out):
    blas_min_rows = OWN_KERNEL if path == "own" else ALWAYS_BLAS
    tol = {np.float32: 2e-6, np.float64: 1e-13}[dtype]
    rng = np.random.default_rng(n_out)
    for n_in in N_IN:
        w = rng.uniform(-1, 1, (n_out, n_in)).astype(dtype)
        for rows in ROWS:
            x = rng.uniform(-1, 1, (rows, n_in)).astype(dtype)
            gates = _projection(x, w, num_threads, blas_min_rows)
            x64, w64 = x.astype(np.float64), w.astype(np.float64)
            expected = x64 @ w64.T
            scale = np.abs(x64) @ np.abs(w64).T
            err = np.abs(gates - expected)
            assert not np.isnan(gates).any(), (rows, n_in, "entries left unwritten")
            assert (err <= tol * scale + 1e-300).all(), (
                f"rows={rows} n_in={n_in}: max error {err.max():.3g}")


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
def test_input_projection_paths_agree_on_many_rows(dtype):
    # Enough rows for several blocks per thread (rows // 16 >= num_threads).
    rng = np.random.default_rng(7)
    n_out, n_in, rows = 100, 37, 131
    w = rng.uniform(-1, 1, (n_out, n_in)).astype(dtype)
    x = rng.uniform(-1, 1, (rows, n_in)).astype(dtype)
    expected = x.astype(np.float64) @ w.astype(np.float64).T
    tol = {np.float32: 2e-5, np.float64: 1e-12}[dtype]
    for threads in (1, 2, 3, 8):
        for min_rows in (OWN_KERNEL, ALWAYS_BLAS, 20):
            np.testing.assert_allclose(_projection(x, w, threads, min_rows), expected,
                                       rtol=0, atol=tol)


def test_input_projection_zero_rows():
    w = np.ones((12, 3), np.float32)
    x = np.empty((0, 3), np.float32)
    gates = np.empty((0, 12), np.float32)
    kernels.input_projection(x, w, _pack_panels(w), gates, 2, OWN_KERNEL)


# ---------------------------------------------- recurrence, via whole LSTMs
SIZES = [  # (hidden, proj_size): partial panels of W_hh^T (4H columns) and W_hr^T
    (1, 0), (3, 0), (3, 2), (17, 0), (17, 5), (65, 0), (65, 33)]


@pytest.fixture
def restore_threads():
    yield
    fastlstm.set_num_threads(None)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("hidden, proj", SIZES)
def test_recurrence_partial_panels_match_reference(dtype, hidden, proj, restore_threads):
    rng = np.random.default_rng(hidden * 10 + proj)
    input_size, seq_len = 7, 5
    out_size = proj or hidden
    for bidirectional, batch_first in [(False, False), (True, True)]:
        module = fastlstm.LSTM(input_size, hidden, num_layers=2, proj_size=proj,
                               bidirectional=bidirectional, batch_first=batch_first,
                               dtype=dtype, rng=rng)
        # Teams of 3 even on 2 CPUs, whatever the load: odd shares are what is tested.
        module._set_tuning(kernels.Tuning(fit_cpus=False, dynamic=False))
        d = 2 if bidirectional else 1
        for batch in (1, 3, 4, 5, 9):
            shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
            x = rng.standard_normal(shape).astype(dtype)
            hx = (rng.standard_normal((2 * d, batch, out_size)).astype(dtype),
                  rng.standard_normal((2 * d, batch, hidden)).astype(dtype))
            for threads in (1, 3):
                fastlstm.set_num_threads(threads)
                for state in (None, hx):
                    out, (h_n, c_n) = module(x, state)
                    ref_out, (ref_h, ref_c) = reference_forward(module, x, state)
                    what = (f"bidir={bidirectional} batch_first={batch_first} batch={batch} "
                            f"threads={threads} hx={state is not None}")
                    assert out.dtype == dtype and h_n.dtype == dtype and c_n.dtype == dtype
                    np.testing.assert_allclose(out, ref_out, rtol=0, atol=TOL[dtype],
                                               err_msg=what)
                    np.testing.assert_allclose(h_n, ref_h, rtol=0, atol=TOL[dtype], err_msg=what)
                    np.testing.assert_allclose(c_n, ref_c, rtol=0, atol=TOL[dtype], err_msg=what)


def test_panel_width_refuses_other_dtypes():
    # 256-byte panels: 64 float32 or 32 float64 columns; any other name is an error, not
    # float64's width.
    assert kernels.panel_width("float32") == 64 and kernels.panel_width("float64") == 32
    for dtype in ("float16", "bfloat16", "int8", "float"):
        with pytest.raises(ValueError, match="float32 or float64"):
            kernels.panel_width(dtype)


def test_a_module_under_a_tuning_is_copied_and_pickled_with_it():
    import copy
    import pickle

    tuning = kernels.Tuning(l2_bytes=3 << 20, serial_bytes=1000, split=True, dirs_in_turn=False,
                            blas_min_rows=7, fit_cpus=False, dynamic=False)
    module = fastlstm.LSTM(5, 8, rng=0)
    module._set_tuning(tuning)
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    for twin in (copy.deepcopy(module), pickle.loads(pickle.dumps(module)),
                 fastlstm.quantize(module, "int8")):
        assert repr(twin._tuning) == repr(tuning)
        assert twin._tuning is not tuning
    for twin in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        np.testing.assert_array_equal(twin(x)[0], module(x)[0])
    assert repr(pickle.loads(pickle.dumps(kernels.DEFAULT_TUNING))) == repr(kernels.DEFAULT_TUNING)


@pytest.mark.parametrize("dtype", DTYPES, ids=_ids)
@pytest.mark.parametrize("level", kernels.simd_available())
@pytest.mark.parametrize("threads", [1, 2])
def test_batch_first_projections_by_timestep_equal_time_major(dtype, level, threads):
    # A batch-first chunk with more batch entries than steps projects a timestep's rows
    # (seq_len rows apart in x) in one product: the same bits as time-major input, and
    # the oracle's numbers, also where BLAS takes the product (there the oracle's only), in
    # bidirectional and stacked layers, with float32, bfloat16 and int8 weights.  (It had
    # projected each entry's few steps alone: 2.8x the time.)
    old_level, old_dynamic = kernels.simd_level(), fastlstm.get_dynamic_threads()
    fastlstm.set_dynamic_threads(False)
    try:
        kernels.set_simd_level(level)
        fastlstm.set_num_threads(threads)
        rng = np.random.default_rng(5)
        for batch, steps, bidir, layers in ((9, 3, False, 1), (40, 2, True, 2), (33, 1, False, 1)):
            tm = fastlstm.LSTM(7, 19, num_layers=layers, bidirectional=bidir, dtype=dtype,
                               rng=2)
            bf = fastlstm.LSTM(7, 19, num_layers=layers, bidirectional=bidir, dtype=dtype,
                               batch_first=True, rng=2)
            x = rng.standard_normal((batch, steps, 7)).astype(dtype)
            want, _ = reference_forward(tm, np.ascontiguousarray(x.transpose(1, 0, 2)))
            pairs = [(bf, tm)]
            if dtype == np.float32 and steps > 1:
                for kind in ("bfloat16", "int8"):
                    pairs.append((fastlstm.quantize(bf, kind), fastlstm.quantize(tm, kind)))
            for first, major in pairs:
                got = first(x)[0]
                same = major(np.ascontiguousarray(x.transpose(1, 0, 2)))[0].transpose(1, 0, 2)
                # BLAS's rounding depends on the rows of a call: where it takes products
                # (the portable level, float64 at avx2 from 64 rows), the oracle's only.
                if level == "portable" or (dtype == np.float64 and level == "avx2"):
                    np.testing.assert_allclose(got, same, atol=TOL[dtype], rtol=0)
                else:
                    np.testing.assert_array_equal(got, same)
            np.testing.assert_allclose(bf(x)[0].transpose(1, 0, 2), want, atol=TOL[dtype],
                                       rtol=0)
    finally:
        kernels.set_simd_level(old_level)
        fastlstm.set_dynamic_threads(old_dynamic)
        fastlstm.set_num_threads(None)


def test_batch_first_projection_by_timestep_rule():
    # A batch-first chunk went entry by entry: 256 entries of 10 steps read the weights
    # 256 times a chunk (0.4x torch at I = H = 512); now 10 times, as time-major input.
    assert kernels.projection_by_step(True, 256, 10, 10, 512)
    assert kernels.projection_by_step(True, 256, 10, 10, 512, "bfloat16")
    assert kernels.projection_by_step(True, 9, 3, 100, 7, "float64")
    assert not kernels.projection_by_step(True, 3, 10, 10, 512)      # few entries, long chunks
    assert not kernels.projection_by_step(False, 256, 10, 10, 512)   # time-major: one product
    assert kernels.projection_by_step(True, 256, 10, 10, 512, "int8")  # scales gathered
    assert not kernels.projection_by_step(True, 256, 10, 1 << 20, 1 << 10)  # rows too far apart
