"""The NumPy oracle of reduced-precision arithmetic (docs/precision.md), written apart from
the package's own rounding: bfloat16 by rounding the float64 significand to 8 bits."""

import numpy as np


def bf16(x):
    """``x`` rounded to the nearest bfloat16 (ties to even), as float64; NaN and
    infinities kept, values past bfloat16's largest rounded to infinity."""
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    mant, exp = np.frexp(x)  # x = mant * 2**exp, 0.5 <= |mant| < 1
    out = np.ldexp(np.rint(mant * 256.0), exp - 8)  # 8 significant bits, ties to even
    out = np.where(np.isfinite(x), out, x)
    # float32's range: a value that rounds past it is infinite, as in bfloat16.
    return np.where(np.abs(out) >= 2.0 ** 128, np.copysign(np.inf, out), out)


def bf16_matmul(a, w):
    """bf16(a) @ bf16(w).T in float64: the exact products of bfloat16 operands, summed
    without rounding (the kernels sum in float32)."""
    return bf16(a) @ bf16(w).T


def bf16_matmul_bound(a, w, k):
    """A bound on the float32 rounding of summing ``k`` products per output."""
    return 2.0 * k * np.finfo(np.float32).eps * (np.abs(bf16(a)) @ np.abs(bf16(w)).T) + 1e-30


def int8_rows(x):
    """Each row of ``x`` (last axis) as the int8 kernels quantize it (docs/precision.md),
    as float64 values q * s: amax the largest magnitude, s = amax / 127 and
    q = rint(x * (127 / amax)), float32 arithmetic, ties to even; a row holding a NaN or
    an infinity is NaN, a row whose amax is below 2**-120 is zero."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        amax = np.abs(x).max(axis=-1, keepdims=True)  # NaN if the row has one
        bad = ~np.isfinite(amax)
        zero = ~bad & (amax < np.float32(2.0 ** -120))
        usable = ~bad & ~zero
        inv = np.where(usable, np.float32(127) / np.where(usable, amax, 1), 0).astype(np.float32)
        scale = np.where(usable, amax / np.float32(127), 0).astype(np.float32)
        q = np.rint((x * inv).astype(np.float32))
    assert np.abs(np.where(usable, q, 0)).max(initial=0) <= 127
    out = q.astype(np.float64) * scale.astype(np.float64)
    return np.where(bad, np.nan, np.where(zero, 0.0, out))


def int8_weight(w, per_channel=True):
    """Symmetric int8 weights by the documented rule: the scale amax / 127 (per row, or
    per matrix) taken to the float32 s with fl(fl(127 s) / 127) == s, q = rint(w / s)
    (float32, ties to even); returns (q as int64, s as float32 per row)."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w).max(axis=1) if per_channel else np.full(w.shape[0], np.abs(w).max())
    s = (amax.astype(np.float32) / np.float32(127)).astype(np.float32)
    for _ in range(64):
        again = ((s * np.float32(127)).astype(np.float32) / np.float32(127)).astype(np.float32)
        if np.array_equal(again, s):
            break
        s = again
    else:
        raise AssertionError("the scales found no fixed point")
    q = np.rint(w / np.where(s > 0, s, 1)[:, None]).astype(np.int64)
    return q, s


def check_every_input_form(weight_dtype, operand, agrees, levels, set_level):
    """A stacked LSTM with a projection and an LSTMCell, both quantized to
    ``weight_dtype``, against the oracle with ``operand`` applied to the activations, at
    every level (``set_level``) and on 1 and 2 threads: one-timestep calls, ``Stream``
    steps, cell steps and packed input; ``agrees(got, want, what)`` judges each."""
    import fastlstm
    from fastlstm.rnn import pack_sequence
    from tests._helpers.reference import cell_reference, reference_forward

    rng = np.random.default_rng(2)
    module = fastlstm.quantize(fastlstm.LSTM(10, 20, num_layers=2, proj_size=6, rng=3),
                               weight_dtype)
    cell = fastlstm.quantize(fastlstm.LSTMCell(10, 20, rng=4), weight_dtype)
    x = rng.standard_normal((5, 3, 10)).astype(np.float32)
    ref, (rh, rc) = reference_forward(module, x, operand=operand)
    seqs = [rng.standard_normal((n, 10)).astype(np.float32) for n in (5, 2, 4)]
    for level in levels:
        set_level(level)
        for threads in (1, 2):
            fastlstm.set_num_threads(threads)
            what = f"{level} threads={threads}"
            out1, (h1, c1) = module(x[:1])  # a one-timestep call
            r1, (rh1, rc1) = reference_forward(module, x[:1], operand=operand)
            for got, want in ((out1, r1), (h1, rh1), (c1, rc1)):
                agrees(got, want, what + " one step")
            stream = fastlstm.Stream(module, 3)
            for t in range(5):
                agrees(stream.step(x[t]), ref[t], f"{what} stream step {t}")
            agrees(stream.h, rh, what + " stream h")
            h, c = cell(x[0])
            ch, cc = cell_reference(cell, x[0], operand=operand)
            agrees(h, ch, what + " cell h")
            agrees(c, cc, what + " cell c")
            packed_out, (ph, pc) = module(pack_sequence(seqs, enforce_sorted=False))
            for k, seq in enumerate(seqs):
                r_k, (rh_k, rc_k) = reference_forward(module, seq[:, None, :], operand=operand)
                agrees(ph[:, k], rh_k[:, 0], f"{what} packed h {k}")
                agrees(pc[:, k], rc_k[:, 0], f"{what} packed c {k}")


#: The LSTM configurations the reduced-precision module tests cover.
CONFIGS = [dict(), dict(bidirectional=True), dict(proj_size=7),
           dict(num_layers=2, bidirectional=True, proj_size=5), dict(batch_first=True)]


def check_forward(cfg, weight_dtype, operand, agrees, levels, set_level, same_on_threads):
    """An LSTM of configuration ``cfg`` quantized to ``weight_dtype`` against the oracle
    (``operand`` on the activations), batches of 1, 5 and 40, with and without a state,
    at every level and on 1 and 2 threads; ``same_on_threads``: 1 and 2 threads must give
    the same output bit for bit."""
    import fastlstm
    from tests._helpers.reference import reference_forward

    rng = np.random.default_rng(0)
    module = fastlstm.quantize(fastlstm.LSTM(13, 24, rng=1, **cfg), weight_dtype)
    d = module.num_layers * (2 if module.bidirectional else 1)
    for batch, steps in ((1, 9), (5, 7), (40, 6)):
        shape = (batch, steps, 13) if module.batch_first else (steps, batch, 13)
        x = rng.standard_normal(shape).astype(np.float32)
        hx = (rng.standard_normal((d, batch, module.proj_size or 24)).astype(np.float32) * 0.5,
              rng.standard_normal((d, batch, 24)).astype(np.float32) * 0.5)
        for state in (None, hx):
            ref, (rh, rc) = reference_forward(module, x, state, operand=operand)
            for level in levels:
                set_level(level)
                results = []
                for threads in (1, 2):
                    fastlstm.set_num_threads(threads)
                    out, (h, c) = module(x, state)
                    assert out.dtype == h.dtype == c.dtype == np.float32
                    what = f"N={batch} L={steps} {level} threads={threads} hx={state is not None}"
                    for got, want in ((out, ref), (h, rh), (c, rc)):
                        agrees(got, want, what)
                    results.append(out)
                if same_on_threads:
                    np.testing.assert_array_equal(results[0], results[1])
