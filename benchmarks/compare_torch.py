"""Time fastlstm against torch.nn.LSTM in one process, same inputs, same threads.

    python benchmarks/compare_torch.py [--threads N] [--blocks B] [--quick]

Every case is checked against torch before it is timed.  Timing alternates
blocks of repetitions of the two libraries, with a short pause between blocks
(each library's idle thread pool keeps spinning for a while after a call and
would slow the other), and reports the median time per call of each.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np

import fastlstm

# name, N, L, I, H, extra constructor arguments
CASES = [
    ("streaming step", 1, 1, 256, 256, {}),
    ("single sequence", 1, 100, 256, 256, {}),
    ("small batch", 16, 100, 256, 256, {}),
    ("batch", 64, 100, 512, 512, {}),
    ("bidirectional stack", 16, 100, 256, 256, {"num_layers": 2, "bidirectional": True}),
    ("speech encoder", 1, 100, 80, 256, {"num_layers": 3, "bidirectional": True}),
    ("many short", 256, 50, 128, 128, {}),
    ("projection", 16, 100, 256, 512, {"proj_size": 128}),
    ("double", 16, 100, 256, 256, {"dtype": "float64"}),
]


def _block(fn, reps):
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def bench_case(torch, name, n, seq, n_in, hidden, extra, blocks, budget):
    kwargs = dict(extra)
    tdtype = torch.float64 if kwargs.pop("dtype", "float32") == "float64" else torch.float32
    module = torch.nn.LSTM(n_in, hidden, dtype=tdtype, **kwargs).eval()
    fast = fastlstm.LSTM.from_torch(module)
    x = torch.randn(seq, n, n_in, dtype=tdtype)
    x_np = x.numpy()
    with torch.inference_mode():
        ref, (ref_h, ref_c) = module(x)
    out, (h, c) = fast(x_np)
    err = max(float(np.abs(out - ref.numpy()).max()), float(np.abs(h - ref_h.numpy()).max()),
              float(np.abs(c - ref_c.numpy()).max()))

    def run_torch():
        with torch.inference_mode():
            module(x)

    def run_fast():
        fast(x_np)

    one = max(_block(run_torch, 1), _block(run_fast, 1), 1e-6)
    reps = max(1, int(budget / blocks / 2 / one))
    t_torch, t_fast = [], []
    for _ in range(blocks):
        t_torch.append(_block(run_torch, reps))
        time.sleep(0.02)
        t_fast.append(_block(run_fast, reps))
        time.sleep(0.02)
    return float(np.median(t_torch)), float(np.median(t_fast)), err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (default: fastlstm's default)")
    parser.add_argument("--blocks", type=int, default=7, help="interleaved blocks per case")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per case")
    parser.add_argument("--quick", action="store_true", help="a few cases, short budget")
    args = parser.parse_args(argv)

    import torch

    warnings.filterwarnings("ignore", message=".*projections is not supported with oneDNN.*")
    if args.threads is not None:
        fastlstm.set_num_threads(args.threads)
    threads = fastlstm.get_num_threads()
    torch.set_num_threads(threads)
    cases = CASES[:3] if args.quick else CASES
    budget = 0.5 if args.quick else args.budget

    print(f"fastlstm {fastlstm.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {threads} threads")
    print(f"{'case':22s} {'torch ms':>10s} {'fastlstm ms':>12s} {'speedup':>8s} {'max err':>9s}")
    ratios = []
    for case in cases:
        t_torch, t_fast, err = bench_case(torch, *case, blocks=args.blocks, budget=budget)
        ratios.append(t_torch / t_fast)
        print(f"{case[0]:22s} {t_torch * 1e3:10.3f} {t_fast * 1e3:12.3f} "
              f"{t_torch / t_fast:7.2f}x {err:9.1e}", flush=True)
    print(f"geometric mean speedup: {float(np.exp(np.mean(np.log(ratios)))):.2f}x")


if __name__ == "__main__":
    main()
