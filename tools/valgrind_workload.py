"""A short workload for tools/valgrind.sh: every public entry point on small
inputs, in both dtypes, on 1 and 2 threads, at every SIMD level, checked against the NumPy oracle
(tests/_helpers/reference.py) so that a memory error that changes a result fails too."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _helpers.reference import lstm_reference, reference_forward  # noqa: E402

import fastlstm  # noqa: E402
from fastlstm import rnn
from fastlstm._ext import kernels  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-12}


def check(got, want, dtype, what):
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want))) if np.size(want) else 0.0
    if not err <= TOL[dtype]:
        raise SystemExit(f"valgrind workload: {what} differs from the oracle by {err:.3g}")


def run_all(rng):
    for threads in (1, 2):
        fastlstm.set_num_threads(threads)
        for dtype in (np.float32, np.float64):
            for cfg in (dict(num_layers=2, bidirectional=True, proj_size=3),
                        dict(batch_first=True, bias=False),
                        dict(num_layers=2, proj_size=4)):
                m = fastlstm.LSTM(5, 19, dtype=dtype, rng=1, **cfg)
                shape = (3, 4, 5) if m.batch_first else (4, 3, 5)
                x = rng.standard_normal(shape).astype(dtype)
                n_states = m.num_layers * (2 if m.bidirectional else 1)
                hx = (rng.standard_normal((n_states, 3, m.proj_size or 19)).astype(dtype),
                      rng.standard_normal((n_states, 3, 19)).astype(dtype))
                for state in (None, hx):
                    out, (h, c) = m(x[:, ::-1] if m.batch_first else x[::-1], state)
                    ref = reference_forward(m, x[:, ::-1] if m.batch_first else x[::-1], state)
                    for a, b, name in ((out, ref[0], "output"), (h, ref[1][0], "h_n"),
                                       (c, ref[1][1], "c_n")):
                        check(a, b, dtype, f"LSTM {cfg} {name}")
                out, _ = m(x[0] if m.batch_first else x[:, 0])  # unbatched
                try:
                    m(np.zeros(shape[:-1] + (6,), dtype))
                except RuntimeError:
                    pass
                else:
                    raise SystemExit("valgrind workload: a wrong input size was accepted")
                if not m.bidirectional:
                    stream = fastlstm.Stream(m, batch_size=3)
                    frames = x.swapaxes(0, 1) if m.batch_first else x
                    outs = [stream.step(f).copy() for f in frames]
                    ref = reference_forward(m, x)[0]
                    check(np.stack(outs), ref.swapaxes(0, 1) if m.batch_first else ref, dtype,
                          "Stream")

            cell = fastlstm.LSTMCell(5, 19, dtype=dtype, rng=2)
            xc = rng.standard_normal((3, 5)).astype(dtype)
            hc = tuple(rng.standard_normal((3, 19)).astype(dtype) for _ in range(2))
            h, c = cell(xc, hc)
            params = {k + "_l0": v for k, v in cell.state_dict().items()}
            _, (rh, rc) = lstm_reference(params, xc[None], tuple(v[None] for v in hc),
                                         num_layers=1, bidirectional=False, proj_size=0,
                                         batch_first=False, hidden_size=19)
            check(h, rh[0], dtype, "LSTMCell h")
            check(c, rc[0], dtype, "LSTMCell c")

            seqs = [rng.standard_normal((n, 2)).astype(dtype) for n in (4, 1, 3)]
            packed = rnn.pack_sequence(seqs, enforce_sorted=False)
            for a, b in zip(rnn.unpack_sequence(packed), seqs):
                if not np.array_equal(a, b):
                    raise SystemExit("valgrind workload: pack/unpack round trip differs")
    fastlstm.set_num_threads(None)


def main():
    rng = np.random.default_rng(0)
    # Every SIMD level this CPU has (under valgrind: those it emulates, no AVX-512).
    levels = kernels.simd_available()
    for level in levels:
        kernels.set_simd_level(level)
        run_all(rng)
    kernels.set_simd_level(None)
    print(f"valgrind workload: all results match the oracle (SIMD levels: {', '.join(levels)})")


if __name__ == "__main__":
    main()
