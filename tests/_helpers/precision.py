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
