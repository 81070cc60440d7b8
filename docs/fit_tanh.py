"""Fit the rational tanh used by the float32 gate kernel (fastlstm/_ext/src/kernels.h).

tanh(x) ~ x * P(s) / Q(s) with s = (x/9)^2 on [0, 9], P of degree 6 and Q of
degree 3 in s (Q(0) = 1), by iteratively reweighted linear least squares that
pushes toward the minimax error.  Prints the coefficients (rounded to float32)
and the maximum absolute error of the float32 evaluation over [-12, 12].

    python docs/fit_tanh.py
"""

import numpy as np

C = 9.0  # tanh(x) rounds to +-1 in float32 beyond |x| = 9
N_P, N_Q = 7, 4


def fit():
    x = np.linspace(0, C, 400001)[1:]
    t = np.tanh(x)
    s = (x / C) ** 2
    w = np.ones_like(x)
    best = None
    for _ in range(60):
        a = np.hstack([x[:, None] * s[:, None] ** np.arange(N_P),
                       -t[:, None] * s[:, None] ** np.arange(1, N_Q)])
        sol = np.linalg.lstsq(a * w[:, None], t * w, rcond=None)[0]
        p, q = sol[:N_P], np.concatenate([[1.0], sol[N_P:]])
        err = x * np.polyval(p[::-1], s) / np.polyval(q[::-1], s) - t
        worst = np.abs(err).max()
        if best is None or worst < best[0]:
            best = (worst, p.copy(), q.copy())
        w = w * (1 + 5 * np.abs(err) / worst)
        w /= w.max()
    return best[1].astype(np.float32), best[2].astype(np.float32)


def float32_error(p, q):
    x = np.linspace(-12, 12, 4000001).astype(np.float32)
    xc = np.clip(x, np.float32(-C), np.float32(C))
    s = (xc * xc) * np.float32(1 / C**2)
    num = np.zeros_like(s)
    for c in p[::-1]:
        num = num * s + c
    den = np.zeros_like(s)
    for c in q[::-1]:
        den = den * s + c
    return float(np.abs((xc * num / den).astype(np.float64) - np.tanh(x.astype(np.float64))).max())


if __name__ == "__main__":
    p, q = fit()
    print("P:", [float(v) for v in p])
    print("Q:", [float(v) for v in q])
    print("max abs error of tanh in float32:", float32_error(p, q))
