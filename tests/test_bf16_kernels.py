"""The bfloat16-weight products (``bf16.h``) against the NumPy oracle, at every level the
CPU has (the portable one always; AVX512-BF16 where the CPU has it), and the rounding
against torch's."""

import numpy as np
import pytest

import fastlstm
from fastlstm._ext import kernels
from fastlstm._module import bf16_bits, pack_panels_bf16
from tests._helpers import TORCH
from tests._helpers.precision import bf16, bf16_matmul, bf16_matmul_bound

ALL_LEVELS = ("portable", "avx2", "avx512", "avx512-bf16", "amx-bf16")


def _level(name):
    if name not in kernels.bf16_levels():
        pytest.skip(f"this CPU lacks the {name} level (has {kernels.bf16_levels()})")
    return name


def _as_float(bits):
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def test_rounding_matches_the_oracle():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(
        -30, 30, 20000), np.float32([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38,
                                     np.inf, -np.inf])])
    # Ties: 1 + 2**-8 (halfway between 1 and 1 + 2**-7) goes to even (1), 1 + 3 * 2**-8 up.
    assert bf16(np.float32([1.00390625, 1.01171875])).tolist() == [1.0, 1.015625]
    got = _as_float(bf16_bits(x))
    np.testing.assert_array_equal(got, bf16(x))
    nan = bf16_bits(np.float32([np.nan, -np.nan]))
    assert np.isnan(_as_float(nan)).all()


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
def test_rounding_matches_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(50000).astype(np.float32) * 10.0 ** rng.integers(-20, 20, 50000)
    want = TORCH.from_numpy(x).to(TORCH.bfloat16).view(TORCH.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x), want)


def test_panel_layout():
    w = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)  # N = 3, K = 5: pairs (0,1) (2,3) (4,-)
    packed = pack_panels_bf16(w)
    assert packed.dtype == np.uint32 and packed.shape == (1 * 3 * 64,)
    words = packed.reshape(3, 64)
    lo, hi = _as_float((words & 0xFFFF).astype(np.uint16)), _as_float(
        (words >> 16).astype(np.uint16))
    np.testing.assert_array_equal(lo[:, :3], w.T[0::2])
    np.testing.assert_array_equal(hi[:2, :3], w.T[1::2])
    assert not hi[2].any() and not lo[:, 3:].any() and not hi[:, 3:].any()


@pytest.mark.parametrize("level", ALL_LEVELS)
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 64, 2), (3, 65, 7), (4, 128, 64),
                                     (5, 200, 257), (9, 63, 130), (16, 256, 256),
                                     (2, 70, 2100),  # K past one slice of the sliced path
                                     # AMX: 16-row blocks and the rows, pairs and columns
                                     # past them
                                     (33, 200, 70), (48, 128, 512), (16, 64, 32)])
def test_product_matches_the_oracle(level, m, n, k):
    _level(level)
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    g0 = rng.standard_normal((m, n)).astype(np.float32)
    bound = bf16_matmul_bound(a, w, k)
    for beta in (False, True):
        for sliced in (False, True):  # sliced: the path without heap memory
            # beta 0 must not read g: NaN there must not show through
            g = g0.copy() if beta else np.full_like(g0, np.nan)
            kernels._matmul_bf16_for_tests(a, pack_panels_bf16(w), g, beta, level, sliced)
            want = bf16_matmul(a, w) + (g0 if beta else 0)
            err = np.abs(g - want)
            assert (err <= bound + (np.abs(g0) * 1e-7 if beta else 0)).all(), (
                level, beta, sliced, err.max())


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_rows_as_floats_and_as_pairs_give_the_same_bits(level):
    """Blocks of 4 rows read the rounded rows as floats, or, when memory for them runs
    out, as the pairs: the same products in the same order, bit for bit (products and
    a module's forward, whose steps take the same path)."""
    _level(level)
    rng = np.random.default_rng(11)
    a = rng.standard_normal((40, 301)).astype(np.float32)  # odd K: a zero past it
    w = rng.standard_normal((130, 301)).astype(np.float32)
    bp = pack_panels_bf16(w)
    m = fastlstm.quantize(fastlstm.LSTM(40, 70, num_layers=2, rng=2), "bfloat16")
    x = rng.standard_normal((6, 9, 40)).astype(np.float32)
    got = []
    old_level = kernels.bf16_level()
    kernels.set_bf16_level(level)
    try:
        for on in (True, False):
            previous = kernels._set_bf16_expand_for_tests(on)
            try:
                out = []
                for rows in (13, 40):  # the floats in the kernel's buffer, and past it
                    g = np.zeros((rows, 130), np.float32)
                    kernels._matmul_bf16_for_tests(a[:rows], bp, g, False, level)
                    out.append(g)
                got.append(out + list(m(x)[1]) + [m(x)[0]])
            finally:
                kernels._set_bf16_expand_for_tests(previous)
    finally:
        kernels.set_bf16_level(old_level)
    for ours, pairs in zip(*got):
        np.testing.assert_array_equal(ours, pairs)


@pytest.mark.parametrize("level", ALL_LEVELS)
@pytest.mark.parametrize("k", [7, 256, 301, 1100])  # odd K; K past one slice of the row's floats
def test_a_row_alone_gives_the_bits_it_gives_in_a_block(level, k):
    """The one-row kernel (a row alone, or the rows past a multiple of 4) adds the same
    products in the same order as the 4-row block: a sequence's numbers must not depend
    on the batch it is in."""
    _level(level)
    rng = np.random.default_rng(k)
    a = rng.standard_normal((4, k)).astype(np.float32)
    bp = pack_panels_bf16(rng.standard_normal((130, k)).astype(np.float32))
    g0 = rng.standard_normal((4, 130)).astype(np.float32)
    for beta in (False, True):
        block = g0.copy()
        kernels._matmul_bf16_for_tests(a, bp, block, beta, level)
        for r in range(4):
            alone = g0[r:r + 1].copy()
            kernels._matmul_bf16_for_tests(a[r:r + 1], bp, alone, beta, level)
            np.testing.assert_array_equal(alone, block[r:r + 1], err_msg=f"{level} row {r}")



@pytest.mark.parametrize("level", ALL_LEVELS)
@pytest.mark.parametrize("k", [7, 256, 301, 1100])  # odd K; K past one slice of 128
def test_a_large_block_gives_the_bits_of_small_ones(level, k):
    """From 32 rows the AVX2 level widens each slice of the weights once and runs the
    float32 blocks: the same products in the same order as its 4-row and one-row
    bfloat16 blocks, so a row's numbers stay those it gets in a small batch (products,
    and a module's forward, whose steps take the same path)."""
    _level(level)
    rng = np.random.default_rng(k + 1)
    a = rng.standard_normal((37, k)).astype(np.float32)
    bp = pack_panels_bf16(rng.standard_normal((130, k)).astype(np.float32))  # a partial panel
    g0 = rng.standard_normal((37, 130)).astype(np.float32)
    for beta in (False, True):
        large = g0.copy()
        kernels._matmul_bf16_for_tests(a, bp, large, beta, level)
        for r in range(0, 37, 4):  # 4-row blocks, then a row alone
            small = g0[r:r + 4].copy()
            kernels._matmul_bf16_for_tests(a[r:r + 4], bp, small, beta, level)
            np.testing.assert_array_equal(small, large[r:r + 4], err_msg=f"{level} rows {r}")
    m = fastlstm.quantize(fastlstm.LSTM(k, 70, rng=3), "bfloat16")
    x = rng.standard_normal((3, 40, k)).astype(np.float32)
    old_level = kernels.bf16_level()
    kernels.set_bf16_level(level)
    try:
        out, (h_n, c_n) = m(x)
        few, (h_few, c_few) = m(x[:, 5:9])
    finally:
        kernels.set_bf16_level(old_level)
    np.testing.assert_array_equal(few, out[:, 5:9])
    np.testing.assert_array_equal(c_few, c_n[:, 5:9])

def test_levels_agree_within_float32_summation():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((7, 300)).astype(np.float32)
    w = rng.standard_normal((130, 300)).astype(np.float32)
    bp = pack_panels_bf16(w)
    results = {}
    for level in kernels.bf16_levels():
        g = np.zeros((7, 130), np.float32)
        kernels._matmul_bf16_for_tests(a, bp, g, False, level)
        results[level] = g
    bound = bf16_matmul_bound(a, w, 300)
    for level, g in results.items():
        assert (np.abs(g - results["portable"]) <= 2 * bound).all(), level


@pytest.mark.parametrize("k, at", [(4, 1), (70, 33), (70, 66)])  # vector and scalar rounding
def test_nan_and_infinity_propagate(k, at):
    a = np.ones((2, k), np.float32)
    a[0, at] = np.nan
    a[1, at + 1] = np.inf
    w = np.ones((3, k), np.float32)
    for level in kernels.bf16_levels():
        g = np.zeros((2, 3), np.float32)
        kernels._matmul_bf16_for_tests(a, pack_panels_bf16(w), g, False, level)
        assert np.isnan(g[0]).all() and np.isposinf(g[1]).all(), level


def test_a_level_the_cpu_lacks_is_refused():
    missing = [lv for lv in ALL_LEVELS if lv not in kernels.bf16_levels()]
    if not missing:
        pytest.skip("this CPU has every level")
    with pytest.raises(ValueError, match="cannot run"):
        kernels._matmul_bf16_for_tests(np.ones((1, 2), np.float32),
                                       pack_panels_bf16(np.ones((1, 2), np.float32)),
                                       np.zeros((1, 1), np.float32), False, missing[-1])


def test_levels_are_reported_and_chosen():
    import fastlstm

    cfg = fastlstm.show_config(as_dict=True)
    assert cfg["bf16_available"] == kernels.bf16_levels()
    assert cfg["bf16"] == kernels.bf16_level() == kernels.bf16_levels()[-1]
    assert kernels.bf16_levels()[:3] == ["portable", "avx2", "avx512"][:len(
        kernels.simd_available())]
    with pytest.raises(ValueError, match="unknown bfloat16 level"):
        kernels.set_bf16_level("avx9000")
    try:
        kernels.set_bf16_level("portable")
        assert kernels.bf16_level() == "portable"
    finally:
        kernels.set_bf16_level(None)
    missing = [lv for lv in ALL_LEVELS if lv not in kernels.bf16_levels()]
    if missing:
        with pytest.raises(ValueError, match="does not support the bfloat16 level"):
            kernels.set_bf16_level(missing[0])


@pytest.mark.parametrize("shape, dtype", [((3, 64), np.float32), ((257, 2048), np.float32),
                                          ((1, 7), np.float64), ((0, 64), np.float32)])
def test_gate_buffers_start_on_a_cache_line(shape, dtype):
    # AMX loads and stores gate rows as whole 64-byte lines; a buffer off a line made
    # every tile row straddle two.
    from fastlstm._module import aligned_empty
    for _ in range(5):
        a = aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.size == 0 or a.ctypes.data % 64 == 0
        a[...] = 1  # writable, and every element inside the buffer
        assert a.sum() == a.size


def test_stream_gate_buffer_starts_on_a_cache_line():
    import fastlstm
    s = fastlstm.Stream(fastlstm.quantize(fastlstm.LSTM(8, 16), "bfloat16"), batch_size=16)
    s.step(np.zeros((16, 8), np.float32))
    assert s._gates.ctypes.data % 64 == 0
