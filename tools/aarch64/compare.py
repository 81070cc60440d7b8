"""Inputs for, and the comparison of, the portable kernels built for x86 and for AArch64
(``check.sh``): ``compare.py inputs DIR`` writes DIR/in.bin from fastlstm's own packers;
``compare.py compare X86 ARM`` reads both outputs and fails unless the products agree
(bfloat16 and int8 bit for bit, float32 and float64 within their rounding) and the
activations on AArch64 are within the bounds the tests hold x86 to."""

import sys
from pathlib import Path
from typing import Dict

import numpy as np

M, K, N, NX, H, MS = 7, 45, 130, 400001, 40, 5  # as harness.c
GATE_COLS = -(-H // 16) * 64  # a panel of 64 gate columns per 16 hidden units


def inputs(folder: Path) -> None:
    import torch

    import fastlstm
    from fastlstm._module import _pack_panels, int8_weight, pack_panels_bf16, pack_panels_int8

    rng = np.random.default_rng(3)
    parts = []

    def put(a: np.ndarray) -> None:
        parts.append(np.ascontiguousarray(a).tobytes())

    w = rng.standard_normal((N, K), dtype=np.float32)
    put(rng.standard_normal((M, K), dtype=np.float32))
    put(_pack_panels(w))
    put(rng.standard_normal((M, N), dtype=np.float32))
    put(rng.standard_normal((M, K)))
    put(_pack_panels(rng.standard_normal((N, K))))
    put(rng.standard_normal((M, N)))
    put(pack_panels_bf16(w).view(np.uint32))
    q, s = int8_weight(w * 0.1)
    put(pack_panels_int8(q, s).view(np.uint32))
    x = np.linspace(-20, 20, NX).astype(np.float32)
    put(x)
    put(x.astype(np.float64))
    torch.manual_seed(0)
    layer = fastlstm.LSTM.from_torch(torch.nn.LSTM(H, H, 1))._packed_layers()[0]
    put(layer.w_hh_p[0].astype(np.float32))
    put(layer.bias[0].astype(np.float32))
    put(rng.standard_normal((MS, layer.bias.shape[1]), dtype=np.float32))
    put(rng.standard_normal((MS, H), dtype=np.float32))
    put(rng.standard_normal((MS, H), dtype=np.float32))
    (folder / "in.bin").write_bytes(b"".join(parts))


def _parse(path: str) -> Dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    out: Dict[str, np.ndarray] = {}
    at = 0

    def take(name: str, dtype: type, count: int) -> None:
        nonlocal at
        out[name] = np.frombuffer(data, dtype, count, at)
        at += out[name].nbytes

    for beta in (0, 1):
        take(f"float32 beta={beta}", np.float32, M * N)
        take(f"float64 beta={beta}", np.float64, M * N)
        take(f"bfloat16 beta={beta}", np.float32, M * N)
        take(f"int8 beta={beta}", np.float32, M * N)
    for act in ("tanh", "sigmoid"):
        take(f"{act} float32", np.float32, NX)
        take(f"{act} float64", np.float64, NX)
    take("step c", np.float32, MS * H)
    take("step h", np.float32, MS * H)
    take("step gates", np.float32, MS * GATE_COLS)
    if at != len(data):
        raise SystemExit(f"{path}: {len(data)} bytes, expected {at}")
    return out


def compare(x86_path: str, arm_path: str) -> int:
    x86, arm = _parse(x86_path), _parse(arm_path)
    bad = 0
    for name, a in arm.items():
        b = x86[name]
        diff = float(np.abs(a.astype(np.float64) - b).max())
        if name.startswith(("bfloat16", "int8")):
            ok = np.array_equal(a, b)  # exact sums, the same roundings: bit for bit
        elif "float64" in name:
            ok = diff <= 1e-13 * max(1.0, float(np.abs(b).max()))
        else:
            ok = diff <= 1e-6 * max(1.0, float(np.abs(b).max())) * 4
        bad += not ok
        print(f"{name:18s} max |aarch64 - x86| {diff:.3g} {'ok' if ok else 'FAIL'}")
    x = np.linspace(-20, 20, NX).astype(np.float32).astype(np.float64)
    for name, truth, bound in (("tanh float32", np.tanh(x), 4e-7),
                               ("sigmoid float32", 1 / (1 + np.exp(-x)), 2.5e-7),
                               ("tanh float64", np.tanh(x), 1e-15),
                               ("sigmoid float64", 1 / (1 + np.exp(-x)), 1e-15)):
        err = float(np.abs(arm[name] - truth).max())
        bad += not err <= bound
        print(f"{name:18s} aarch64 max error {err:.3g} (bound {bound:g}) "
              f"{'ok' if err <= bound else 'FAIL'}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "inputs":
        inputs(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
