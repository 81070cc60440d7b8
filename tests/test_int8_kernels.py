"""The int8-weight products (``int8.h``) at every level this CPU has, the portable one
always, against the documented quantization (docs/precision.md): the int32 sums are
exact, so every level must give the same float32 results bit for bit."""

import numpy as np
import pytest

from fastlstm._ext import kernels
from fastlstm._module import int8_values, int8_weight, pack_panels_int8
from tests._helpers.precision import int8_rows
from tests._helpers.precision import int8_weight as oracle_weight

ALL_LEVELS = ["portable", "avx2", "avx-vnni", "avx512", "avx512-vnni", "amx-int8"]


def _level(name):
    if name not in kernels.int8_levels():
        pytest.skip(f"this CPU lacks the int8 level {name!r} (has {kernels.int8_levels()})")
    return name


def _exact(a, q, s, g0=None):
    """The kernels' arithmetic written out: the int32 sums of the quantized rows and q,
    then (float)sum * (row scale * column scale) in float32 (+ g0)."""
    a = np.asarray(a, np.float32)
    amax = np.abs(a).max(axis=1)
    inv = (np.float32(127) / np.where(amax > 0, amax, 1)).astype(np.float32)
    sa = (amax / np.float32(127)).astype(np.float32)
    qa = np.rint((a * inv[:, None]).astype(np.float32)).astype(np.int64)
    acc = qa @ q.astype(np.int64).T
    out = (acc.astype(np.float32) * (sa[:, None] * s[None, :]).astype(np.float32))
    return out.astype(np.float32) if g0 is None else (g0 + out).astype(np.float32)


def test_weights_follow_the_rule_and_quantize_again_to_themselves():
    rng = np.random.default_rng(0)
    for per_channel in (True, False):
        for scale in (1e-3, 0.1, 30.0):
            w = (rng.standard_normal((70, 33)) * scale).astype(np.float32)
            w[3] = 0.0  # a zero row: scale 0, values 0
            q, s = int8_weight(w, per_channel)
            oq, os_ = oracle_weight(w, per_channel)
            np.testing.assert_array_equal(q, oq)
            np.testing.assert_array_equal(np.broadcast_to(s, (70,)), os_)
            assert q.dtype == np.int8 and np.abs(q.astype(int)).max() == 127
            assert s.shape == ((70,) if per_channel else (1,)) and s.dtype == np.float32
            back = int8_values(q, s)
            assert np.abs(back - w).max() <= 0.5 * np.broadcast_to(s, (70,)).max() * (1 + 1e-6)
            q2, s2 = int8_weight(back, per_channel)
            np.testing.assert_array_equal(q2, q)
            np.testing.assert_array_equal(s2, s)
    with pytest.raises(ValueError, match="must be finite"):
        int8_weight(np.float32([[1.0, np.nan]]))


def test_panel_layout():
    rng = np.random.default_rng(1)
    q = rng.integers(-128, 128, size=(70, 9)).astype(np.int8)
    s = rng.uniform(0.01, 1, 70).astype(np.float32)
    bp = pack_panels_int8(q, s)
    quads = 3
    panels = bp.reshape(2, quads + 2, 64)
    for p in range(2):
        for j in range(64):
            n = 64 * p + j
            col = q[n] if n < 70 else np.zeros(9, np.int8)
            words = panels[p, :quads, j].astype("<u4").view(np.int8)
            np.testing.assert_array_equal(words[:9], col)
            assert not words[9:].any()
            want_s = s[n] if n < 70 else 0.0
            assert panels[p, quads, j].view(np.float32) == np.float32(want_s)
            assert panels[p, quads + 1, j].view(np.int32) == -128 * int(col.astype(int).sum())


@pytest.mark.parametrize("level", ALL_LEVELS)
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 64, 4), (3, 65, 7), (4, 128, 64),
                                     (16, 64, 64), (17, 100, 200), (32, 192, 64),
                                     (40, 130, 300), (33, 64, 1000)])
def test_product_is_exact_at_every_level(level, m, n, k):
    _level(level)
    rng = np.random.default_rng(m * 1000 + n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) * 0.1).astype(np.float32)
    q, s = int8_weight(w)
    bp = pack_panels_int8(q, s)
    g0 = rng.standard_normal((m, n)).astype(np.float32)
    for beta in (False, True):
        for sliced in (False, True):
            g = g0.copy() if beta else np.full_like(g0, np.nan)  # beta 0 must not read g
            kernels._matmul_int8_for_tests(a, bp, g, beta, level, sliced)
            np.testing.assert_array_equal(g, _exact(a, q, s, g0 if beta else None))
            # and the float64 oracle of the rules: the products of the quantized values
            want = int8_rows(a) @ int8_values(q, s).astype(np.float64).T + (g0 if beta else 0)
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_nan_infinity_and_zero_rows(level):
    _level(level)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((20, 70)).astype(np.float32)
    a[1, 5] = np.nan
    a[2, 69] = np.inf
    a[3] = 0.0
    a[4] = 1e-38  # below 2**-120: a zero row
    w = rng.standard_normal((64, 70)).astype(np.float32)
    bp = pack_panels_int8(*int8_weight(w))
    g = np.ones((20, 64), np.float32)
    kernels._matmul_int8_for_tests(a, bp, g, True, level)
    assert np.isnan(g[1]).all() and np.isnan(g[2]).all()
    assert (g[3] == 1).all() and (g[4] == 1).all()
    assert np.isfinite(g[[0] + list(range(5, 20))]).all()
    np.testing.assert_allclose(g[5:], 1 + int8_rows(a[5:]) @ int8_values(*int8_weight(w)).T,
                               rtol=1e-5, atol=1e-4)


def test_levels_are_reported_and_chosen():
    import fastlstm

    levels = kernels.int8_levels()
    assert levels[:1] == ["portable"] and levels == [lv for lv in ALL_LEVELS if lv in levels]
    assert kernels.int8_level() == levels[-1]
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = None
    if flags is not None:  # the CPU's own word for the VNNI levels
        assert ("avx-vnni" in levels) == ("avx_vnni" in flags and "avx2" in flags)
        assert ("avx512-vnni" in levels) == ("avx512_vnni" in flags and "avx512" in levels)
    cfg = fastlstm.show_config(as_dict=True)
    assert (cfg["int8"], cfg["int8_available"]) == (levels[-1], levels)
    try:
        kernels.set_int8_level("portable")
        assert kernels.int8_level() == "portable"
        with pytest.raises(ValueError, match="unknown int8 level"):
            kernels.set_int8_level("avx1024")
    finally:
        kernels.set_int8_level(None)
    assert kernels.int8_level() == levels[-1]


def test_a_level_the_cpu_lacks_is_refused(monkeypatch):
    levels = kernels.int8_levels()
    missing = [lv for lv in ALL_LEVELS if lv not in levels]
    if not missing:  # this CPU has every level: refuse one as if it had not
        missing = ["avx-vnni"]
        monkeypatch.setattr(kernels, "_I8_AVAILABLE",
                            tuple(lv for lv in levels if lv != "avx-vnni"))
    missing = missing[0]
    with pytest.raises(ValueError, match="does not support the int8 level"):
        kernels.set_int8_level(missing)
    with pytest.raises(ValueError, match="cannot run the int8 level"):
        kernels._matmul_int8_for_tests(np.ones((1, 4), np.float32),
                                       np.zeros(3 * 64, np.uint32),
                                       np.zeros((1, 1), np.float32), False, missing)
