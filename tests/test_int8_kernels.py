"""The int8-weight products (``int8.h``) at every level this CPU has, the portable one
always, against the documented quantization (docs/precision.md): the int32 sums are
exact, so every level must give the same float32 results bit for bit."""

import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fastlstm._ext import kernels
from fastlstm._module import int8_values, int8_weight, pack_panels_int8
from tests._helpers import IN_CI
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


def _block_oracle(q, p):
    """The int32 sums of one block: q's words as four unsigned bytes (the activations,
    q + 128), p's as four signed bytes (the weights), byte b of a word with byte b."""
    qa = q.view(np.uint8).reshape(q.shape[0], -1).astype(np.int64)
    pb = p.view(np.int8).reshape(p.shape[0], 64, 4).transpose(0, 2, 1).reshape(-1, 64)
    return (qa @ pb.astype(np.int64)).astype(np.int32)


# Every block the CPU runs, and the AVX-VNNI block's source on AVX512-VNNI's EVEX
# instruction (the same code, checked here on CPUs that lack AVX-VNNI).
@pytest.mark.parametrize("level", ["portable", "avx2", "avx-vnni", "avx-vnni-evex", "avx512",
                                   "avx512-vnni"])
def test_block_sums_are_exact(level):
    _level("avx512-vnni" if level == "avx-vnni-evex" else level)
    rng = np.random.default_rng(7)
    for rows in range(1, 10):
        for kq in (1, 2, 3, 16, 37, 256):
            # Activation bytes are 1..255 (q + 128, |q| <= 127), weights any signed byte.
            q = rng.integers(1, 256, size=(rows, 4 * kq), dtype=np.uint8).view(np.uint32)
            p = rng.integers(0, 2**32, size=(kq, 64), dtype=np.uint64).astype(np.uint32)
            p[0, :8] = 0x80808080  # -128 weights: the products' extremes, 255 * -128...
            q[0, 0] = 0xFFFFFFFF
            p[-1, -8:] = 0x80808080  # ...and 1 * -128 (q = -127)
            q[-1, -1] = 0x01010101
            want = _block_oracle(q, p)
            acc = np.full((rows, 64), -12345, np.int32)  # add=False must not read it
            kernels._i8_block_for_tests(level, q, p, acc, False)
            np.testing.assert_array_equal(acc, want, err_msg=f"{level} {rows}x{kq}")
            acc0 = rng.integers(-2**20, 2**20, size=(rows, 64)).astype(np.int32)
            acc = acc0.copy()
            kernels._i8_block_for_tests(level, q, p, acc, True)
            np.testing.assert_array_equal(acc, acc0 + want, err_msg=f"{level} {rows}x{kq} add")


def test_block_hook_refuses_what_it_cannot_run():
    q, p = np.zeros((1, 1), np.uint32), np.zeros((1, 64), np.uint32)
    acc = np.zeros((1, 64), np.int32)
    with pytest.raises(ValueError, match="tile configuration"):
        kernels._i8_block_for_tests("amx-int8", q, p, acc, False)
    with pytest.raises(ValueError, match="shapes do not match"):
        kernels._i8_block_for_tests("portable", q, p, np.zeros((2, 64), np.int32), False)
    with pytest.raises(ValueError, match="activation bytes are 1..255"):
        kernels._i8_block_for_tests("portable", q, p, acc, False)
    q = np.full((1, 1), 0x80808080, np.uint32)
    with pytest.raises(ValueError, match="unknown int8 level"):
        kernels._i8_block_for_tests("avx1024", q, p, acc, False)
    with pytest.raises(TypeError, match="a level name"):
        kernels._i8_block_for_tests(None, q, p, acc, False)
    if "avx512-vnni" not in kernels.int8_levels():
        with pytest.raises(ValueError, match="needs AVX512-VNNI"):
            kernels._i8_block_for_tests("avx-vnni-evex", q, p, acc, False)


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


# The scalar dequantization built where the baseline ISA has FMA (here x86 with -mfma, as
# AArch64 always is, or a -march=native build): the product and the sum must still round
# apart, as every other level does, not fuse into one FMA.
_DEQUANT_C = r"""
#include "kernels.h"
#include "bf16.h"
#include "int8.h"
#include <stdio.h>
int main(void)
{
    static uint32_t P[3 * 64];  /* kq = 1: one row of quads, the scales, the compensations */
    int32_t acc[2 * 64];
    float s[2] = {0.0123f, 3.7e-3f}, G[2 * 64];
    unsigned int x = 12345;
    for (int j = 0; j < 64; j++) {
        float sc = 1e-3f * (float)(1 + j % 13) / 7.0f;
        memcpy(P + 64 + j, &sc, 4);
        P[128 + j] = (uint32_t)(-128 * (j % 5));
    }
    for (int i = 0; i < 128; i++) {
        x = x * 1103515245u + 12345u;
        acc[i] = (int32_t)(x >> 8) % 40000 - 20000;
        G[i] = (float)((int32_t)(x >> 4) % 1000000) / 3.0e5f;
    }
    for (int i = 0; i < 128; i++) printf("%d %a\n", acc[i], G[i]);
    fl_i8_dequant(2, 1, acc, P, 1, s, G, 64, 64);
    for (int i = 0; i < 128; i++) printf("%a\n", G[i]);
    return 0;
}
"""


def test_dequant_rounds_apart_where_the_baseline_has_fma(tmp_path):
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("builds with -mfma, an x86 flag")
    with open("/proc/cpuinfo") as f:
        if " fma " not in f.read():
            pytest.skip("this CPU has no FMA")
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        if IN_CI:
            pytest.fail(f"no C compiler {cc!r} in CI")
        pytest.skip(f"no C compiler {cc!r}")
    src = Path(kernels.__file__).parent / "src"
    (tmp_path / "t.c").write_text(_DEQUANT_C)
    exe = tmp_path / "t"
    subprocess.run([cc, "-O3", "-mfma", "-I", str(src), str(tmp_path / "t.c"), "-o", str(exe),
                    "-lm"], check=True, capture_output=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    acc = np.array([int(v) for v in lines[0:256:2]], np.int64)
    g0 = np.array([float.fromhex(v) for v in lines[1:256:2]], np.float32)
    got = np.array([float.fromhex(v) for v in lines[256:]], np.float32)
    j = np.arange(128) % 64
    scale = (np.float32(1e-3) * (1 + j % 13).astype(np.float32) / np.float32(7)).astype(np.float32)
    comp = -128 * (j % 5)
    s = np.where(np.arange(128) < 64, np.float32(0.0123), np.float32(3.7e-3)).astype(np.float32)
    f = (s * scale).astype(np.float32)
    prod = ((acc + comp).astype(np.float32) * f).astype(np.float32)  # rounded on its own
    want = (g0 + prod).astype(np.float32)
    fused = (g0.astype(np.float64) + (acc + comp).astype(np.float32).astype(np.float64)
             * f.astype(np.float64)).astype(np.float32)  # one rounding, as an FMA
    assert (fused != want).any(), "the data must tell a fused sum from the two roundings"
    np.testing.assert_array_equal(got, want)
