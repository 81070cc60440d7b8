"""Every kernel path against the oracles: each SIMD level this CPU supports
(the portable one always), threads 1 and 2, batch-chunk and split modes."""

import numpy as np
import pytest
from _helpers import TOL
from _helpers.reference import reference_forward

import fastlstm
from fastlstm._ext import kernels

LEVELS = kernels.simd_available()


@pytest.fixture(params=LEVELS)
def level(request):
    previous = kernels.simd_level()  # FASTLSTM_SIMD's, when set: later tests keep it
    kernels.set_simd_level(request.param)
    try:
        yield request.param
    finally:
        kernels.set_simd_level(previous)


def test_portable_always_available():
    assert LEVELS[0] == "portable"
    assert kernels.simd_level() == LEVELS[-1]


def test_unknown_or_unsupported_level_raises():
    with pytest.raises(ValueError, match="unknown SIMD level"):
        kernels.set_simd_level("sse9")
    if "avx512" not in LEVELS:
        with pytest.raises(ValueError, match="does not support"):
            kernels.set_simd_level("avx512")


CONFIGS = [
    # (batch, kwargs): batch 1 and 3 take the split mode with 2 threads, the bidirectional
    # ones a thread per direction
    (1, dict()),
    (3, dict(proj_size=5)),
    (9, dict(bidirectional=True, num_layers=2)),
    (1, dict(bidirectional=True, proj_size=7, batch_first=True)),
    (6, dict(num_layers=2, batch_first=True)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch,kwargs", CONFIGS)
def test_levels_match_oracle(level, threads, dtype, batch, kwargs):
    m = fastlstm.LSTM(13, 37, dtype=dtype, rng=batch, **kwargs)
    rng = np.random.default_rng(7)
    shape = (batch, 11, 13) if kwargs.get("batch_first") else (11, batch, 13)
    x = rng.standard_normal(shape).astype(dtype)
    out, (h, c) = m(x)
    ref, (ref_h, ref_c) = reference_forward(m, x)
    tol = TOL[dtype]
    assert np.abs(out - ref).max() <= tol
    assert np.abs(h - ref_h).max() <= tol
    assert np.abs(c - ref_c).max() <= tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", [dict(), dict(proj_size=5, batch_first=True)], ids=str)
def test_levels_split_by_size_match_oracle(level, dtype, kwargs):
    """A batch of 16 on 2 threads forced into split mode (what a large W_hh gets),
    its projection of 176 rows going to BLAS on the levels that use it."""
    m = fastlstm.LSTM(13, 37, dtype=dtype, rng=3, **kwargs)
    rng = np.random.default_rng(8)
    shape = (16, 11, 13) if kwargs.get("batch_first") else (11, 16, 13)
    x = rng.standard_normal(shape).astype(dtype)
    ref, (ref_h, ref_c) = reference_forward(m, x)
    m._set_tuning(kernels.Tuning(split=True))
    fastlstm.set_num_threads(2)
    try:
        out, (h, c) = m(x)
    finally:
        fastlstm.set_num_threads(None)
    assert kernels.schedule(m._packed_layers()[0], 16, 11, 37, 2, False, m._tuning)[1] == 0
    for a, b in ((out, ref), (h, ref_h), (c, ref_c)):
        assert np.abs(a - b).max() <= TOL[dtype]


def test_split_mode_is_taken():
    # The configurations above must exercise both modes with 2 threads.
    one = fastlstm.LSTM(13, 37, rng=0)._packed_layers()[0]
    two = fastlstm.LSTM(13, 37, bidirectional=True, rng=0)._packed_layers()[0]

    def chunks(w, batch, threads):
        return kernels.schedule(w, batch, 11, 37, threads)[1]

    assert chunks(one, 1, 2) == 0 and chunks(one, 3, 2) == 0
    assert chunks(two, 9, 2) == 1
    assert chunks(one, 16, 2) == 2
    assert chunks(one, 5, 16) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_levels_match_torch(level, threads, dtype, torch):
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    t = torch.nn.LSTM(24, 70, num_layers=2, bidirectional=True, dtype=tdtype).eval()
    m = fastlstm.LSTM.from_torch(t)
    for batch in (1, 2, 8):
        x = torch.randn(15, batch, 24, dtype=tdtype)
        with torch.no_grad():
            ref, (ref_h, ref_c) = t(x)
        out, (h, c) = m(x.numpy())
        for a, b in ((out, ref), (h, ref_h), (c, ref_c)):
            assert np.abs(a - b.numpy()).max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_levels_activations(level, dtype):
    x = np.concatenate([np.linspace(-30, 30, 200001), [0.0, -0.0, np.inf, -np.inf, np.nan]])
    x = x.astype(dtype)
    y = np.empty_like(x)
    bound = {np.float32: (4e-7, 2.5e-7), np.float64: (1e-15, 1e-15)}[dtype]
    with np.errstate(over="ignore"):
        x64 = x.astype(np.float64)
        refs = (np.tanh(x64), 1 / (1 + np.exp(-x64)))
    for sigmoid, ref, tol in zip((False, True), refs, bound):
        kernels._activation_for_tests(x, y, sigmoid)
        finite = np.isfinite(x)
        assert np.abs(y[finite] - ref[finite]).max() <= tol
        assert np.isnan(y[-1])
        lo = 0.0 if sigmoid else -1.0
        assert y[:-1].min() >= lo and y[:-1].max() <= 1.0
    kernels._activation_for_tests(x, y, False)
    assert np.signbit(y[-4]) and y[-3] == 1.0 and y[-2] == -1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_denormals_flushed_and_fp_state_restored(level, threads, dtype):
    # Forget gates near 0.5 and no input drive: the cell state decays through
    # the denormal range within the sequence.
    m = fastlstm.LSTM(4, 6, bias=False, dtype=dtype, rng=0)
    m.weight_hh_l0 = np.zeros((24, 6), dtype)
    tiny = np.finfo(dtype).tiny
    steps = 200 if dtype == np.float32 else 1100  # c halves each step: past 2**-150 / 2**-1075
    x = np.full((steps, 2, 4), tiny / 4, dtype=dtype)  # denormal inputs
    c0 = np.ones((1, 2, 6), dtype)
    before = kernels._mxcsr_for_tests()
    out, (h, c) = m(x, (np.zeros((1, 2, 6), dtype), c0))
    assert kernels._mxcsr_for_tests() == before
    ref, (ref_h, ref_c) = reference_forward(m, x, (np.zeros((1, 2, 6), dtype), c0))
    assert np.abs(out - ref).max() <= TOL[dtype]
    assert np.abs(c - ref_c).max() <= TOL[dtype]
    assert np.abs(c).max() < tiny  # the state did reach the denormal range (flushed to 0)


@pytest.mark.parametrize("chunk_rows", [1, 4, 7])
@pytest.mark.parametrize("batch,kwargs", CONFIGS)
def test_time_chunks_match_oracle(level, threads, chunk_rows, batch, kwargs):
    # A tiny gate buffer: the sequence runs in chunks of ceil(chunk_rows / N)
    # steps, which need not divide L, in both directions.
    m = fastlstm.LSTM(13, 37, dtype=np.float64, rng=batch, **kwargs)
    m._set_tuning(kernels.Tuning(gate_buffer_bytes=1, min_chunk_rows=chunk_rows))
    assert kernels.schedule(m._packed_layers()[0], batch, 11, 37, 1, False, m._tuning)[2] == \
        min(11, -(-chunk_rows // batch))
    shape = (batch, 11, 13) if kwargs.get("batch_first") else (11, batch, 13)
    x = np.random.default_rng(3).standard_normal(shape)
    n_states = m.num_layers * (2 if m.bidirectional else 1)
    hx = (np.full((n_states, batch, m.proj_size or 37), 0.1), np.full((n_states, batch, 37), -0.2))
    for state in (None, hx):
        out, (h, c) = m(x, state)
        ref, (ref_h, ref_c) = reference_forward(m, x, state)
        assert np.abs(out - ref).max() <= 1e-12
        assert np.abs(h - ref_h).max() <= 1e-12 and np.abs(c - ref_c).max() <= 1e-12


@pytest.mark.parametrize("kwargs", [dict(), dict(bidirectional=True, num_layers=2, proj_size=7),
                                    dict(batch_first=True)], ids=["plain", "bidir-proj", "bf"])
@pytest.mark.parametrize("simd,dtype", [(s, d) for s in LEVELS[1:] for d in (np.float32, np.float64)
                                        if d == np.float32 or s == "avx512"])
def test_a_sequences_numbers_do_not_depend_on_its_batch(simd, threads, dtype, kwargs):
    """Where every product is the kernels' own (float32 above the portable level, float64
    with AVX-512), each row's sums run in the same order whatever rows share the call: a
    sequence alone on one thread, in a padded batch and in a packed batch, gives the same
    bits.  The batch's 360 rows would take BLAS's projection elsewhere (16 or 64 rows a
    thread and more), whose rounding depends on the rows each call gets."""
    from fastlstm.rnn import pack_sequence, pad_packed_sequence

    previous = kernels.simd_level()
    kernels.set_simd_level(simd)
    try:
        m = fastlstm.LSTM(40, 48, dtype=dtype, rng=4, **kwargs)
        rng = np.random.default_rng(9)
        lengths = [30, 30, 27, 25, 21, 19, 14, 11, 9, 6, 3, 1]
        seqs = [rng.standard_normal((n, 40)).astype(dtype) for n in lengths]
        bf = kwargs.get("batch_first", False)
        fastlstm.set_num_threads(1)
        alone = [m(s[None] if bf else s[:, None]) for s in seqs]
        fastlstm.set_num_threads(threads)
        x = np.zeros((30, len(seqs), 40), dtype)
        for i, s in enumerate(seqs):
            x[:len(s), i] = s
        padded, _ = m(x.transpose(1, 0, 2) if bf else x)
        packed_out, (h, c) = m(pack_sequence(seqs))
        unpacked, _ = pad_packed_sequence(packed_out)
        for i, (s, (out, (h1, c1))) in enumerate(zip(seqs, alone)):
            n = len(s)
            one = out[0] if bf else out[:, 0]
            np.testing.assert_array_equal(unpacked[:n, i], one)
            np.testing.assert_array_equal(h[:, i], h1[:, 0])
            np.testing.assert_array_equal(c[:, i], c1[:, 0])
            if not kwargs.get("bidirectional"):  # later padded steps feed the backward pass
                np.testing.assert_array_equal(padded[i, :n] if bf else padded[:n, i], one)
    finally:
        kernels.set_simd_level(previous)
