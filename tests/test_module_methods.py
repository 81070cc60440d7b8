"""torch.nn.Module's device and dtype methods (``to``, ``float``, ``double``, ``cpu``, ...)
and ``flatten_parameters``, against torch doing the same to its module."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _helpers import TOL, torch_single_thread

import fastlstm

_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

_CONFIGS = [
    dict(input_size=5, hidden_size=7),
    dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True, proj_size=3),
]


def _close(actual, expected, dtype):
    expected = expected.detach().numpy() if hasattr(expected, "detach") else expected
    assert actual.dtype == dtype
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("cfg", _CONFIGS)
@pytest.mark.parametrize("steps", [1, 6])
def test_double_then_float_runs_like_torch(torch, cfg, steps):
    t = torch.nn.LSTM(**cfg).eval()
    m = fastlstm.LSTM.from_torch(t)
    x = np.random.default_rng(0).standard_normal((steps, 2, 5))
    assert m.double() is m and m.dtype == np.float64
    assert all(p.dtype == np.float64 and not p.flags.writeable for p in m.parameters())
    t.double()
    with torch.no_grad():
        expected, (h, c) = t(torch.from_numpy(x))
    out, (h_n, c_n) = m(x)
    for a, b in ((out, expected), (h_n, h), (c_n, c)):
        _close(a, b, np.float64)
    assert m.float() is m and m.dtype == np.float32
    t.float()
    with torch.no_grad():
        expected, _ = t(torch.from_numpy(x.astype(np.float32)))
    _close(m(x.astype(np.float32))[0], expected, np.float32)


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("cpu",), {}),
        ((), {"device": "cpu"}),
        (("float64",), {}),
        ((np.float64,), {}),
        ((np.dtype("float64"),), {}),
        (("torch.float64",), {}),
        ((), {"dtype": "torch.float64"}),
        (("cpu", "torch.float64"), {}),
        (("torch.device('cpu')", "torch.float64", True), {}),
        (("torch.float64", False), {}),
        (("tensor64",), {}),
        (("array64",), {}),
        ((), {"device": "cpu", "dtype": "torch.float64", "non_blocking": True}),
    ],
)
def test_to_forms_cast_like_torch(torch, args, kwargs):
    spelled = {
        "torch.float64": torch.float64,
        "torch.device('cpu')": torch.device("cpu"),
        "tensor64": torch.zeros(2, dtype=torch.float64),
        "array64": np.zeros(2, np.float64),
    }

    def resolve(value, for_torch):
        value = spelled.get(value, value) if isinstance(value, str) else value
        if not for_torch:
            return value
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value)
        if value in ("float64", np.float64) or isinstance(value, np.dtype):
            return torch.float64  # torch spells dtypes only its own way
        return value

    t = torch.nn.LSTM(3, 4)
    m = fastlstm.LSTM.from_torch(t)
    assert m.to(*[resolve(a, False) for a in args],
                **{k: resolve(v, False) for k, v in kwargs.items()}) is m
    t.to(*[resolve(a, True) for a in args], **{k: resolve(v, True) for k, v in kwargs.items()})
    assert str(m.dtype) == str(t.weight_ih_l0.dtype).replace("torch.", "")
    for name, value in t.state_dict().items():
        np.testing.assert_array_equal(getattr(m, name), value.numpy())


def test_cell_casts_and_runs_like_torch(torch):
    t = torch.nn.LSTMCell(5, 7)
    cell = fastlstm.LSTMCell.from_torch(t)
    rng = np.random.default_rng(1)
    x, h, c = (rng.standard_normal(shape) for shape in ((3, 5), (3, 7), (3, 7)))
    cell.to(dtype=np.float64)
    t.double()
    with torch.no_grad():
        expected = t(torch.from_numpy(x), (torch.from_numpy(h), torch.from_numpy(c)))
    for a, b in zip(cell(x, (h, c)), expected, strict=True):
        _close(a, b, np.float64)


@pytest.mark.parametrize("module", ["lstm", "cell"])
def test_stream_follows_a_cast_of_its_module(torch, module):
    """Steps before a cast run in float32, after it in float64, each like torch's cell."""
    t = torch.nn.LSTMCell(4, 6)
    if module == "cell":
        m = fastlstm.LSTMCell.from_torch(t)
    else:
        m = fastlstm.LSTM(4, 6)
        m.load_state_dict({k + "_l0": v for k, v in t.state_dict().items()})
    stream = fastlstm.Stream(m, batch_size=2)
    frames = np.random.default_rng(2).standard_normal((8, 2, 4))
    h = c = torch.zeros(2, 6)
    for k, frame in enumerate(frames):
        if k == 4:  # the state carries over, cast
            m.double()
            t.double()
            h, c = h.double(), c.double()
        if k == 5:  # the same state as torch's from here: float64 accuracy
            stream.reset((h[None], c[None]))
        dtype = np.float64 if k >= 4 else np.float32
        y = stream.step(frame.astype(dtype))
        with torch.no_grad():
            h, c = t(torch.from_numpy(frame.astype(dtype)), (h, c))
        tol = TOL[np.float64] if k >= 5 else TOL[np.float32]
        for actual, expected in ((y, h), (stream.c[0], c)):
            assert actual.dtype == dtype
            np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=tol)


def test_one_step_calls_follow_casts():
    """The bound one-step path packs again after a cast (oracle: the general path)."""
    m = fastlstm.LSTM(3, 5, num_layers=2, rng=3)
    x = np.random.default_rng(3).standard_normal((1, 2, 3))
    hx = (np.full((2, 2, 5), 0.5), np.full((2, 2, 5), -0.5))
    for dtype in (np.float32, np.float64, np.float32):
        m.to(dtype)
        one, (h1, c1) = m(x, hx)
        two, _ = m(np.concatenate([x, x]), hx)  # two steps: not the one-step path
        assert one.dtype == h1.dtype == c1.dtype == dtype
        np.testing.assert_allclose(one[0], two[0], rtol=0, atol=TOL[dtype])


def test_flatten_parameters_cpu_and_requires_grad(torch):
    t = torch.nn.LSTM(3, 4)
    m = fastlstm.LSTM.from_torch(t)
    x = np.ones((2, 1, 3), np.float32)
    before = m(x)[0]
    assert m.flatten_parameters() is None and t.flatten_parameters() is None
    assert m.cpu() is m and m.requires_grad_(False) is m
    np.testing.assert_array_equal(m(x)[0], before)
    with pytest.raises(RuntimeError, match="inference only"):
        m.requires_grad_()


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.to("cuda"), ValueError, "CPU only.*'cuda'"),
        (lambda m: m.to(device="cuda:1"), ValueError, "CPU only.*'cuda:1'"),
        (lambda m: m.cuda(), ValueError, "CPU only.*'cuda'"),
        (lambda m: m.cuda(1), ValueError, "CPU only.*'cuda:1'"),
        (lambda m: m.to(np.int32), TypeError, "float32 and float64"),
        (lambda m: m.to("cpu", "float16"), TypeError, "float32 and float64, got 'float16'"),
        (lambda m: m.half(), TypeError, "float32 and float64, got 'float16'"),
        (lambda m: m.to("cpu", np.float64, True, 1), TypeError, "invalid combination"),
        (lambda m: m.to(dtype=np.float64, layout=1), TypeError, "keyword argument 'layout'"),
        (lambda m: m.to(np.float64, copy=False), RuntimeError, "does not accept copy"),
        (lambda m: m.to("cpu", np.float64, False, True), RuntimeError, "does not accept copy"),
    ],
)
def test_refused_devices_and_dtypes_change_nothing(call, error, message):
    m = fastlstm.LSTM(3, 4, rng=0)
    before = m.state_dict()
    with pytest.raises(error, match=message):
        call(m)
    assert m.dtype == np.float32
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(m, name), value)


def test_torch_refuses_the_same_dtypes_and_devices(torch):
    """The refusals above have the exception types torch gives (where torch has a CPU answer)."""
    t = torch.nn.LSTM(3, 4)
    with pytest.raises(TypeError):
        t.to(torch.int32)
    with pytest.raises(TypeError):
        t.to("cpu", torch.float64, True, 1)
    with pytest.raises(TypeError):
        t.to(dtype=torch.float64, layout=1)
    with pytest.raises(RuntimeError, match="does not accept copy"):
        t.to(torch.float64, copy=False)
    with pytest.raises(RuntimeError, match="does not accept copy"):
        t.to("cpu", torch.float64, False, True)


def test_initial_weights_are_drawn_without_a_float64_copy_of_them():
    # A float64 draw cast to float32 made construction need 3 times the weights' memory
    # (torch needs 1); the slices draw the same numbers (seeded modules are unchanged).
    code = textwrap.dedent("""
        import resource, numpy as np, fastlstm
        pages = int(open("/proc/self/statm").read().split()[0])
        resource.setrlimit(resource.RLIMIT_AS, (pages * 4096 + (400 << 20), -1))
        cell = fastlstm.LSTMCell(1 << 24, 1, rng=3)   # weight_ih: 256 MiB of float32
        want = np.random.default_rng(3).uniform(-1, 1, size=1000)
        print(np.array_equal(cell.weight_ih.reshape(-1)[:1000], want.astype(np.float32)))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stdout + res.stderr
