"""Parameters, state_dict, torch interop, initialisation, repr, pickle and dropout."""

import copy
import math
import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest
from _helpers import TOL, torch_single_thread
from _helpers.reference import reference_forward

import fastlstm

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning",
    "ignore:dropout option adds dropout after all but last recurrent layer:UserWarning",
)

# Tolerances of the parity checks (max abs error), as in conftest.py.


# torch's tiny-LSTM calls are ~100x slower with OpenMP threads on a busy machine.
_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)

CONFIGS = [
    dict(input_size=3, hidden_size=8),
    dict(input_size=3, hidden_size=8, bias=False),
    dict(input_size=3, hidden_size=8, proj_size=5),
    dict(input_size=3, hidden_size=8, bidirectional=True),
    dict(input_size=3, hidden_size=8, num_layers=3),
    dict(input_size=4, hidden_size=6, num_layers=3, bias=False, bidirectional=True, proj_size=2),
    dict(input_size=5, hidden_size=7, num_layers=2, batch_first=True, bidirectional=True),
]
CONFIG_IDS = [
    "plain",
    "nobias",
    "proj",
    "bidi",
    "3layers",
    "3layers-nobias-bidi-proj",
    "2layers-batch_first-bidi",
]

CONFIG_NAMES = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                "bidirectional", "proj_size")


def _x(cfg, dtype=np.float32, seq=5, batch=3, seed=0):
    shape = (batch, seq, cfg["input_size"]) if cfg.get("batch_first") else (
        seq, batch, cfg["input_size"])
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _torch_forward(torch, t, x, hx=None):
    with torch.no_grad():
        xt = torch.from_numpy(x)
        hxt = None if hx is None else tuple(torch.from_numpy(h) for h in hx)
        y, (h, c) = t(xt, hxt)
    return y.numpy(), h.numpy(), c.numpy()


def _fast_forward(m, x, hx=None):
    y, (h, c) = m(x, hx)
    return np.asarray(y), np.asarray(h), np.asarray(c)


def _assert_results_close(got, want, dtype):
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=TOL[dtype])


def _torch_dtype(torch, dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def _params(m):
    return OrderedDict((k, v.copy()) for k, v in m.named_parameters())


def _assert_params_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _torch_size_to_tuple(msg):
    """torch.Size([32, 3]) -> (32, 3), torch.Size([32]) -> (32,)."""
    return re.sub(
        r"torch\.Size\(\[([^\]]*)\]\)",
        lambda mt: str(tuple(int(v) for v in mt.group(1).split(",") if v.strip())),
        msg,
    )


def _np_lstm_1layer(x, w_ih, w_hh, b_ih, b_hh):
    """Plain NumPy 1-layer unidirectional LSTM over (L, N, I), float64."""
    x = x.astype(np.float64)
    hidden = w_hh.shape[1]
    h = np.zeros((x.shape[1], hidden))
    c = np.zeros((x.shape[1], hidden))
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    outs = []
    for t in range(x.shape[0]):
        g = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, gg, o = np.split(g, 4, axis=1)
        c = sig(f) * c + sig(i) * np.tanh(gg)
        h = sig(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs), h[None], c[None]


# ------------------------------------------------------------------ key order


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_keys_order_shapes_match_torch(torch, cfg):
    t = torch.nn.LSTM(**cfg)
    m = fastlstm.LSTM(**cfg)
    sd = m.state_dict()
    tsd = t.state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == list(tsd)
    for k in tsd:
        assert sd[k].shape == tuple(tsd[k].shape), k
        assert sd[k].dtype == np.float32
    # named_parameters / parameters / all_weights follow the same order
    assert [k for k, _ in m.named_parameters()] == [k for k, _ in t.named_parameters()]
    assert [p.shape for p in m.parameters()] == [tuple(p.shape) for p in t.parameters()]
    assert [[w.shape for w in g] for g in m.all_weights] == [
        [tuple(w.shape) for w in g] for g in t.all_weights
    ]
    # attribute access by torch's names
    for k in tsd:
        assert getattr(m, k).shape == tuple(tsd[k].shape)
        assert k in dir(m)


def test_state_dict_returns_writable_copies():
    m = fastlstm.LSTM(3, 4, rng=0)
    before = _params(m)
    sd = m.state_dict()
    for v in sd.values():
        assert v.flags.writeable
        v[...] = 123.0
    _assert_params_equal(_params(m), before)


def test_state_dict_positional_arguments_as_torch(torch):
    # torch still takes destination, prefix, keep_vars by position, with a FutureWarning
    m = fastlstm.LSTM(3, 4, rng=0)
    ref = torch.nn.LSTM(3, 4)
    for args in [({},), ({}, "rnn."), ({}, "rnn.", True)]:
        with pytest.warns(FutureWarning) as ours:
            got = m.state_dict(*args)
        with pytest.warns(FutureWarning) as theirs:
            want = ref.state_dict(*args)
        assert str(ours[0].message) == str(theirs[0].message)
        assert got is args[0] and list(got) == list(want)
    with pytest.raises(TypeError, match="at most 3 positional"):
        m.state_dict({}, "", False, 4)


def test_missing_parameter_attribute():
    m = fastlstm.LSTM(3, 4, bias=False)
    with pytest.raises(AttributeError):
        _ = m.bias_ih_l0
    with pytest.raises(AttributeError):
        _ = m.weight_hr_l0
    with pytest.raises(AttributeError):
        _ = m.weight_ih_l1


# ------------------------------------------------------------------ load / round trips


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_load_torch_state_dict_tensors(torch, cfg, dtype):
    t = torch.nn.LSTM(**cfg, dtype=_torch_dtype(torch, dtype)).eval()
    m = fastlstm.LSTM(**cfg, dtype=dtype, rng=1)
    result = m.load_state_dict(t.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(getattr(m, k), v.numpy())
        assert getattr(m, k).dtype == dtype
    x = _x(cfg, dtype)
    _assert_results_close(_fast_forward(m, x), _torch_forward(torch, t, x), dtype)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_load_numpy_state_dict(torch, cfg):
    t = torch.nn.LSTM(**cfg).eval()
    sd = OrderedDict((k, v.numpy().copy()) for k, v in t.state_dict().items())
    m = fastlstm.LSTM(**cfg, rng=2)
    m.load_state_dict(sd)
    x = _x(cfg)
    _assert_results_close(_fast_forward(m, x), _torch_forward(torch, t, x), np.float32)
    # the module keeps its own copies
    for v in sd.values():
        v[...] = 0.0
    _assert_results_close(_fast_forward(m, x), _torch_forward(torch, t, x), np.float32)


def test_load_plain_dict_and_lists():
    src = fastlstm.LSTM(2, 3, rng=0)
    sd = {k: v.tolist() for k, v in src.state_dict().items()}  # plain dict of nested lists
    m = fastlstm.LSTM(2, 3, rng=1)
    m.load_state_dict(sd)
    _assert_params_equal(_params(m), _params(src))


def test_load_non_contiguous_arrays(torch):
    cfg = CONFIGS[5]
    t = torch.nn.LSTM(**cfg).eval()
    sd = OrderedDict()
    for i, (k, v) in enumerate(t.state_dict().items()):
        a = v.numpy()
        if i % 3 == 0:
            a = np.asfortranarray(a)
        elif i % 3 == 1:
            big = np.zeros(a.shape + (2,), np.float64)
            big[..., 1] = a
            a = big[..., 1]  # strided float64 view
        sd[k] = a
    m = fastlstm.LSTM(**cfg)
    m.load_state_dict(sd)
    for p in m.parameters():
        assert p.flags.c_contiguous and p.dtype == np.float32
    x = _x(cfg)
    _assert_results_close(_fast_forward(m, x), _torch_forward(torch, t, x), np.float32)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_from_torch_half_module_becomes_float32(torch, name):
    t = torch.nn.LSTM(3, 4, dtype=getattr(torch, name))
    m = fastlstm.LSTM.from_torch(t)
    assert m.dtype == np.float32
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(getattr(m, k), v.float().numpy())


def test_load_casts_to_module_dtype(torch):
    t = torch.nn.LSTM(3, 4, dtype=torch.float64)
    m = fastlstm.LSTM(3, 4)  # float32
    m.load_state_dict(t.state_dict())
    for k, v in t.state_dict().items():
        assert getattr(m, k).dtype == np.float32
        np.testing.assert_array_equal(getattr(m, k), v.numpy().astype(np.float32))


def test_fastlstm_state_dict_round_trip():
    cfg = CONFIGS[5]
    a = fastlstm.LSTM(**cfg, rng=3)
    b = fastlstm.LSTM(**cfg, rng=4)
    b.load_state_dict(a.state_dict())
    _assert_params_equal(_params(a), _params(b))
    x = _x(cfg)
    for r, s in zip(_fast_forward(a, x), _fast_forward(b, x)):
        np.testing.assert_array_equal(r, s)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_round_trip_fastlstm_to_torch(torch, cfg, dtype):
    m = fastlstm.LSTM(**cfg, dtype=dtype, rng=5)
    x = _x(cfg, dtype)
    want = _fast_forward(m, x)

    # via to_torch
    t1 = m.to_torch()
    assert isinstance(t1, torch.nn.LSTM)
    assert t1.weight_ih_l0.dtype == _torch_dtype(torch, dtype)
    for name in CONFIG_NAMES:
        assert getattr(t1, name) == getattr(m, name), name
    _assert_results_close(want, _torch_forward(torch, t1.eval(), x), dtype)

    # via torch's own load_state_dict on torch.from_numpy(...)
    t2 = torch.nn.LSTM(**cfg, dtype=_torch_dtype(torch, dtype)).eval()
    t2.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    _assert_results_close(want, _torch_forward(torch, t2, x), dtype)

    # and back: torch -> fastlstm reproduces the very same parameters
    back = fastlstm.LSTM.from_torch(t2)
    _assert_params_equal(_params(back), _params(m))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_round_trip_torch_to_fastlstm(torch, cfg, dtype):
    t = torch.nn.LSTM(**cfg, dtype=_torch_dtype(torch, dtype)).eval()
    m = fastlstm.LSTM.from_torch(t)
    assert m.dtype == dtype
    for name in CONFIG_NAMES:
        assert getattr(m, name) == getattr(t, name), name
    x = _x(cfg, dtype)
    rng = np.random.default_rng(9)
    d = 2 if cfg.get("bidirectional") else 1
    n = d * cfg.get("num_layers", 1)
    h0 = rng.standard_normal((n, 3, cfg.get("proj_size") or cfg["hidden_size"])).astype(dtype)
    c0 = rng.standard_normal((n, 3, cfg["hidden_size"])).astype(dtype)
    _assert_results_close(_fast_forward(m, x), _torch_forward(torch, t, x), dtype)
    _assert_results_close(
        _fast_forward(m, x, (h0, c0)), _torch_forward(torch, t, x, (h0, c0)), dtype
    )
    # torch -> fastlstm -> torch gives back identical tensors
    t2 = m.to_torch()
    for k, v in t.state_dict().items():
        assert torch.equal(t2.state_dict()[k], v), k


def test_from_torch_keeps_float64(torch):
    t = torch.nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    m = fastlstm.LSTM.from_torch(t)
    assert m.dtype == np.float64
    assert all(p.dtype == np.float64 for p in m.parameters())
    y, (h, c) = m(np.zeros((2, 1, 3)))
    assert y.dtype == h.dtype == c.dtype == np.float64
    assert "dtype=float64" in repr(m)


def test_from_torch_explicit_dtype(torch):
    t = torch.nn.LSTM(3, 4, dtype=torch.float64)
    m = fastlstm.LSTM.from_torch(t, dtype=np.float32)
    assert m.dtype == np.float32
    assert all(p.dtype == np.float32 for p in m.parameters())


def test_from_torch_is_eval_and_copies(torch):
    t = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5)
    assert t.training
    m = fastlstm.LSTM.from_torch(t)
    assert m.training is False
    assert m.dropout == 0.5
    before = _params(m)
    with torch.no_grad():
        t.weight_ih_l0.zero_()
    _assert_params_equal(_params(m), before)


def test_from_torch_rejects_non_lstm():
    with pytest.raises(TypeError, match="from_torch expects a torch.nn.LSTM"):
        fastlstm.LSTM.from_torch(object())


@pytest.mark.parametrize("training", [True, False])
def test_to_torch_keeps_training_mode(torch, training):
    m = fastlstm.LSTM(3, 4, num_layers=2, dropout=0.25)
    m.train(training)
    t = m.to_torch()
    assert t.training is training
    assert t.dropout == 0.25


# ------------------------------------------------------------------ load errors


def _load_errors(torch, cfg, sd_np, strict=True):
    """Load the same (invalid) state dict into torch and fastlstm; return both errors."""
    t = torch.nn.LSTM(**cfg)
    m = fastlstm.LSTM(**cfg, rng=0)
    before = _params(m)
    sd_t = OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in sd_np.items())
    with pytest.raises(RuntimeError) as t_exc:
        t.load_state_dict(sd_t, strict=strict)
    with pytest.raises(RuntimeError) as f_exc:
        m.load_state_dict(sd_np, strict=strict)
    with pytest.raises(RuntimeError) as f_exc_t:
        m.load_state_dict(sd_t, strict=strict)
    assert str(f_exc_t.value) == str(f_exc.value)
    # a failed load changes nothing
    _assert_params_equal(_params(m), before)
    return str(t_exc.value), str(f_exc.value)


def _good_sd(cfg):
    return fastlstm.LSTM(**cfg, rng=11).state_dict()


CFG2 = dict(input_size=3, hidden_size=8, num_layers=2, proj_size=4, bidirectional=True)


def test_load_missing_keys_message(torch):
    sd = _good_sd(CFG2)
    del sd["weight_hh_l0"]
    del sd["weight_hr_l1_reverse"]
    t_msg, f_msg = _load_errors(torch, CFG2, sd)
    assert f_msg == t_msg
    assert f_msg.startswith("Error(s) in loading state_dict for LSTM:\n\t")
    assert 'Missing key(s) in state_dict: "weight_hh_l0", "weight_hr_l1_reverse".' in f_msg


def test_load_unexpected_keys_message(torch):
    sd = _good_sd(CFG2)
    sd["weight_ih_l2"] = np.zeros((32, 8), np.float32)
    sd["extra.thing"] = np.zeros(1, np.float32)
    t_msg, f_msg = _load_errors(torch, CFG2, sd)
    assert f_msg == t_msg
    assert 'Unexpected key(s) in state_dict: "weight_ih_l2", "extra.thing".' in f_msg


def test_load_size_mismatch_message(torch):
    cfg = dict(input_size=3, hidden_size=8)
    sd = _good_sd(cfg)
    sd["weight_ih_l0"] = np.zeros((32, 4), np.float32)
    sd["bias_hh_l0"] = np.zeros((5,), np.float32)
    t_msg, f_msg = _load_errors(torch, cfg, sd)
    # identical except torch.Size([..]) is printed as a tuple
    assert f_msg == _torch_size_to_tuple(t_msg)
    assert "torch.Size" not in f_msg
    lines = f_msg.split("\n\t")
    assert lines[0] == "Error(s) in loading state_dict for LSTM:"
    assert lines[1] == (
        "size mismatch for weight_ih_l0: copying a param with shape (32, 4) from "
        "checkpoint, the shape in current model is (32, 3)."
    )
    assert lines[2] == (
        "size mismatch for bias_hh_l0: copying a param with shape (5,) from "
        "checkpoint, the shape in current model is (32,)."
    )


def test_load_size_mismatches_in_the_modules_order(torch):
    cfg = dict(input_size=3, hidden_size=8)
    sd = _good_sd(cfg)
    sd["weight_ih_l0"] = np.zeros((32, 4), np.float32)
    sd["bias_hh_l0"] = np.zeros((5,), np.float32)
    backwards = dict(reversed(list(sd.items())))
    t_msg, f_msg = _load_errors(torch, cfg, backwards)
    assert f_msg == _torch_size_to_tuple(t_msg)
    assert f_msg.index("weight_ih_l0") < f_msg.index("bias_hh_l0")


def test_load_all_errors_together_message(torch):
    sd = _good_sd(CFG2)
    del sd["bias_ih_l1"]
    sd["foo"] = np.zeros(2, np.float32)
    sd["weight_hr_l0"] = np.zeros((4, 9), np.float32)
    t_msg, f_msg = _load_errors(torch, CFG2, sd)
    assert f_msg == _torch_size_to_tuple(t_msg)
    lines = f_msg.split("\n\t")
    assert lines[1].startswith("Missing key(s)") and '"bias_ih_l1"' in lines[1]
    assert lines[2].startswith("Unexpected key(s)") and '"foo"' in lines[2]
    assert "weight_hr_l0" in lines[3] and "(4, 9)" in lines[3] and "(4, 8)" in lines[3]


def test_load_size_mismatch_raises_even_when_not_strict(torch):
    cfg = dict(input_size=3, hidden_size=8)
    sd = _good_sd(cfg)
    sd["weight_hh_l0"] = np.zeros((32, 7), np.float32)
    del sd["bias_ih_l0"]
    t_msg, f_msg = _load_errors(torch, cfg, sd, strict=False)
    assert f_msg == _torch_size_to_tuple(t_msg)
    assert "Missing" not in f_msg


@pytest.mark.parametrize(
    "change",
    [
        dict(drop=["bias_hh_l1", "weight_ih_l0_reverse"]),
        dict(add={"foo.bar": np.zeros(1, np.float32), "weight_ih_l9": np.zeros(1, np.float32)}),
        dict(drop=["weight_hr_l0"], add={"bias": np.zeros(1, np.float32)}),
        dict(),
    ],
    ids=["missing", "unexpected", "both", "none"],
)
def test_load_not_strict_returns_keys_like_torch(torch, change):
    t = torch.nn.LSTM(**CFG2)
    m = fastlstm.LSTM(**CFG2, rng=0)
    src = fastlstm.LSTM(**CFG2, rng=7)
    sd = src.state_dict()
    for k in change.get("drop", []):
        del sd[k]
    sd.update(change.get("add", {}))
    sd_t = OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())
    t_res = t.load_state_dict(sd_t, strict=False)
    f_res = m.load_state_dict(sd, strict=False)
    assert f_res.missing_keys == t_res.missing_keys
    assert f_res.unexpected_keys == t_res.unexpected_keys
    assert tuple(f_res) == (t_res.missing_keys, t_res.unexpected_keys)
    assert repr(f_res) == repr(t_res)
    # the keys present were loaded, the missing ones kept
    for k, v in m.named_parameters():
        want = sd[k] if k in sd else getattr(fastlstm.LSTM(**CFG2, rng=0), k)
        np.testing.assert_array_equal(v, want, err_msg=k)


def test_load_strict_result_matches_torch(torch):
    t = torch.nn.LSTM(**CFG2)
    m = fastlstm.LSTM(**CFG2)
    sd = t.state_dict()
    t_res = t.load_state_dict(sd)
    f_res = m.load_state_dict(sd)
    assert repr(f_res) == repr(t_res) == "<All keys matched successfully>"
    assert f_res.missing_keys == [] and f_res.unexpected_keys == []


@pytest.mark.parametrize("bad", [[1, 2], "weights", 3, None], ids=repr)
def test_load_non_mapping(torch, bad):
    t = torch.nn.LSTM(3, 4)
    with pytest.raises(TypeError) as t_exc:
        t.load_state_dict(bad)
    m = fastlstm.LSTM(3, 4)
    with pytest.raises(TypeError) as f_exc:
        m.load_state_dict(bad)
    assert str(f_exc.value) == str(t_exc.value)
    assert str(f_exc.value) == f"Expected state_dict to be dict-like, got {type(bad)}."


def test_load_non_mapping_list_message():
    with pytest.raises(TypeError) as exc:
        fastlstm.LSTM(3, 4).load_state_dict([("weight_ih_l0", np.zeros((16, 3)))])
    assert str(exc.value) == "Expected state_dict to be dict-like, got <class 'list'>."


def test_failed_load_leaves_module_unchanged():
    m = fastlstm.LSTM(**CFG2, rng=0)
    x = _x(CFG2)
    y0 = _fast_forward(m, x)  # also builds the packed-weight cache
    before = _params(m)
    good = fastlstm.LSTM(**CFG2, rng=1).state_dict()
    cases = []
    bad = dict(good)
    bad["weight_hh_l1"] = np.zeros((3, 3), np.float32)  # size mismatch after good keys
    cases.append((bad, True))
    bad = dict(good)
    del bad["bias_hh_l1_reverse"]  # missing key
    cases.append((bad, True))
    bad = dict(good)
    bad["nope"] = np.zeros(1)  # unexpected key
    cases.append((bad, True))
    bad = dict(good)
    bad["weight_ih_l0"] = np.zeros((1,))  # size mismatch, not strict
    cases.append((bad, False))
    bad = dict(good)
    bad["bias_ih_l0"] = np.array(["a"] * 32)  # not numbers
    cases.append((bad, True))
    for sd, strict in cases:
        with pytest.raises(RuntimeError):
            m.load_state_dict(sd, strict=strict)
        _assert_params_equal(_params(m), before)
        for r, s in zip(_fast_forward(m, x), y0):
            np.testing.assert_array_equal(r, s)


@pytest.mark.parametrize("value", [None, "abc", b"x", [[1.0, 2.0], [3.0]], object()],
                         ids=["None", "str", "bytes", "ragged", "object"])
def test_a_value_that_is_no_array_is_named_as_torch_names_it(torch, value):
    """torch's error names the key and the type received, before any size check."""
    for module in (torch.nn.LSTM(3, 4), fastlstm.LSTM(3, 4, rng=0)):
        with pytest.raises(RuntimeError) as info:
            module.load_state_dict({"weight_ih_l0": value}, strict=False)
        message = str(info.value)
        assert 'While copying the parameter named "weight_ih_l0", expected' in message
        assert f"from checkpoint but received {type(value)}" in message
        assert "size mismatch" not in message


def test_a_cells_bias_is_taken_by_its_truth_as_torchs(torch):
    for bias in (1, 0, None, np.True_, "yes"):
        want = torch.nn.LSTMCell(3, 4, bias=bias)
        got = fastlstm.LSTMCell(3, 4, bias=bias)
        assert list(got.state_dict()) == list(want.state_dict()), bias
        assert got.bias is bool(bias)


# ------------------------------------------------------------------ parameters


def test_parameters_are_read_only():
    m = fastlstm.LSTM(**CFG2, rng=0)
    names = [k for k, _ in m.named_parameters()]
    assert len(names) == 20
    for name, p in m.named_parameters():
        assert not p.flags.writeable
        with pytest.raises(ValueError):
            p[...] = 0.0
        with pytest.raises(ValueError):
            getattr(m, name)[0] = 1.0
        with pytest.raises(ValueError):
            np.add(p, 1, out=p)
    for group in m.all_weights:
        for w in group:
            with pytest.raises(ValueError):
                w.flat[0] = 5.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_assign_parameter_changes_forward_numpy_reference(dtype):
    m = fastlstm.LSTM(3, 5, dtype=dtype, rng=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 3)).astype(dtype)
    y_old = np.asarray(m(x)[0])
    new_w = rng.uniform(-1, 1, (20, 3))
    m.weight_ih_l0 = new_w
    assert m.weight_ih_l0.dtype == dtype
    assert not m.weight_ih_l0.flags.writeable
    np.testing.assert_array_equal(m.weight_ih_l0, new_w.astype(dtype))
    y, (h, c) = m(x)
    assert not np.allclose(y, y_old)
    ref = _np_lstm_1layer(x, new_w.astype(dtype), m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip((y, h, c), ref):
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    # the module keeps a copy: writing to the source array changes nothing
    new_w[...] = 0.0
    np.testing.assert_array_equal(np.asarray(m(x)[0]), y)


def test_assign_every_parameter_matches_torch(torch):
    cfg = CONFIGS[5]
    m = fastlstm.LSTM(**cfg, rng=0)
    x = _x(cfg)
    m(x)  # build the packed cache before the assignments
    donor = torch.nn.LSTM(**cfg).eval()
    for k, v in donor.state_dict().items():
        setattr(m, k, v)  # torch tensors are accepted too
    _assert_results_close(_fast_forward(m, x), _torch_forward(torch, donor, x), np.float32)


@pytest.mark.parametrize(
    "name,shape",
    [("weight_ih_l0", (20, 4)), ("weight_ih_l0", (20, 3, 1)), ("bias_hh_l0", (21,)),
     ("weight_hh_l0", (5, 20)), ("bias_ih_l0", ())],
)
def test_assign_wrong_shape_raises(name, shape):
    m = fastlstm.LSTM(3, 5, rng=0)
    before = _params(m)
    with pytest.raises(RuntimeError, match=re.escape(f"size mismatch for {name}")):
        setattr(m, name, np.zeros(shape, np.float32))
    _assert_params_equal(_params(m), before)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_config_attributes(cfg):
    m = fastlstm.LSTM(**cfg)
    full = dict(num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False,
                proj_size=0)
    full.update(cfg)
    for name in CONFIG_NAMES:
        assert getattr(m, name) == full[name], name
        assert type(getattr(m, name)) is type(full[name]) or name == "dropout"
        with pytest.raises(AttributeError):
            setattr(m, name, getattr(m, name))
        assert getattr(m, name) == full[name]
    assert isinstance(m.dropout, float)
    with pytest.raises(AttributeError):
        m.dtype = np.float64
    assert m.dtype == np.float32


def test_config_attributes_match_torch(torch):
    cfg = dict(input_size=4, hidden_size=6, num_layers=2, bias=False, batch_first=True,
               dropout=0.3, bidirectional=True, proj_size=3)
    t = torch.nn.LSTM(**cfg)
    m = fastlstm.LSTM(**cfg)
    for name in CONFIG_NAMES:
        assert getattr(m, name) == getattr(t, name), name
        assert type(getattr(m, name)) is type(getattr(t, name)), name


def test_training_flag():
    m = fastlstm.LSTM(3, 4)
    assert m.training is False
    assert m.train() is m and m.training is True
    assert m.eval() is m and m.training is False
    assert m.train(True).training is True
    assert m.train(False).training is False
    m.training = True  # plain assignment, as on a torch Module
    assert m.training is True


# ------------------------------------------------------------------ init


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_init_within_bound(cfg):
    m = fastlstm.LSTM(**cfg, rng=0)
    bound = 1.0 / math.sqrt(cfg["hidden_size"])
    for name, p in m.named_parameters():
        assert np.abs(p).max() <= np.float32(bound), name
        assert np.isfinite(p).all()
        assert p.dtype == np.float32
        assert p.flags.c_contiguous


def test_init_reproducible_with_int_seed():
    cfg = CONFIGS[5]
    a = fastlstm.LSTM(**cfg, rng=42)
    b = fastlstm.LSTM(**cfg, rng=42)
    c = fastlstm.LSTM(**cfg, rng=43)
    _assert_params_equal(_params(a), _params(b))
    for k, v in a.named_parameters():
        assert not np.array_equal(v, getattr(c, k)), k
    # a Generator is accepted, and an int seeds a fresh Generator
    g = fastlstm.LSTM(**cfg, rng=np.random.default_rng(42))
    _assert_params_equal(_params(g), _params(a))
    # reset_parameters(rng=seed) redraws the same values
    c.reset_parameters(rng=42)
    _assert_params_equal(_params(c), _params(a))


def test_init_generator_is_consumed():
    gen = np.random.default_rng(0)
    a = fastlstm.LSTM(3, 4, rng=gen)
    b = fastlstm.LSTM(3, 4, rng=gen)  # the same generator, further along
    assert not np.array_equal(a.weight_ih_l0, b.weight_ih_l0)


def test_init_default_rng_differs():
    a = fastlstm.LSTM(3, 16)
    b = fastlstm.LSTM(3, 16)
    assert not np.array_equal(a.weight_ih_l0, b.weight_ih_l0)


def test_reset_parameters_redraws():
    m = fastlstm.LSTM(3, 4, rng=0)
    before = _params(m)
    m.reset_parameters()
    after = _params(m)
    for k in before:
        assert not np.array_equal(before[k], after[k])
        assert not getattr(m, k).flags.writeable


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_uniform_distribution(dtype):
    hidden = 256
    m = fastlstm.LSTM(256, hidden, dtype=dtype, rng=0)
    bound = 1.0 / math.sqrt(hidden)
    w = np.asarray(m.weight_ih_l0, dtype=np.float64).ravel()
    n = w.size
    assert abs(w.mean()) < 5 * bound / math.sqrt(3 * n)
    assert abs(w.var() - bound**2 / 3) < 0.02 * bound**2 / 3
    assert w.min() < -0.999 * bound and w.max() > 0.999 * bound
    assert w.min() >= -bound * (1 + 1e-6) and w.max() <= bound * (1 + 1e-6)
    # roughly flat: each of 10 bins holds ~10%
    hist, _ = np.histogram(w, bins=10, range=(-bound, bound))
    assert np.all(np.abs(hist / n - 0.1) < 0.005)


@pytest.mark.parametrize("dtype", ["float64", np.float64, np.dtype("float64"), "torch"])
def test_float64_dtype_spellings(request, dtype):
    if dtype == "torch":
        dtype = request.getfixturevalue("torch").float64
    m = fastlstm.LSTM(3, 4, num_layers=2, proj_size=2, dtype=dtype, rng=0)
    assert m.dtype == np.float64
    assert all(p.dtype == np.float64 for p in m.parameters())
    y, (h, c) = m(np.ones((2, 1, 3), np.float32))
    assert y.dtype == h.dtype == c.dtype == np.float64


@pytest.mark.parametrize("dtype", [None, "float32", np.float32, "torch"])
def test_float32_dtype_spellings(request, dtype):
    if dtype == "torch":
        dtype = request.getfixturevalue("torch").float32
    m = fastlstm.LSTM(3, 4, dtype=dtype)
    assert m.dtype == np.float32
    assert all(p.dtype == np.float32 for p in m.parameters())


# ------------------------------------------------------------------ repr


REPR_CONFIGS = CONFIGS + [
    dict(input_size=10, hidden_size=20, num_layers=2, dropout=0.5),
    dict(input_size=10, hidden_size=20, num_layers=2, dropout=1),
    dict(input_size=10, hidden_size=20, num_layers=3, dropout=0.25, batch_first=True,
         bias=False, bidirectional=True, proj_size=7),
    dict(input_size=1, hidden_size=1, dropout=0.0),
]


@pytest.mark.parametrize("cfg", REPR_CONFIGS, ids=repr)
def test_repr_matches_torch(torch, cfg):
    assert repr(fastlstm.LSTM(**cfg)) == repr(torch.nn.LSTM(**cfg))
    assert str(fastlstm.LSTM(**cfg)) == str(torch.nn.LSTM(**cfg))
    assert fastlstm.LSTM(**cfg).extra_repr() == torch.nn.LSTM(**cfg).extra_repr()


def test_torchs_optional_arguments_of_the_module_methods(torch):
    for cls, t in ((fastlstm.LSTM, torch.nn.LSTM(3, 4, num_layers=2, proj_size=2)),
                   (fastlstm.LSTMCell, torch.nn.LSTMCell(3, 4, bias=False))):
        m = cls.from_torch(t)
        assert m.extra_repr() == t.extra_repr()
        assert list(m.state_dict(prefix="enc.rnn.")) == list(t.state_dict(prefix="enc.rnn."))
        assert list(m.state_dict(keep_vars=True)) == list(t.state_dict(keep_vars=True))
        into = {"other": 1}
        assert m.state_dict(destination=into, prefix="p.") is into
        assert list(into) == list(t.state_dict(destination={"other": 1}, prefix="p."))
        for prefix in ("", "rnn"):
            assert ([k for k, _ in m.named_parameters(prefix=prefix, recurse=False)]
                    == [k for k, _ in t.named_parameters(prefix=prefix, recurse=False)])
        assert len(list(m.parameters(recurse=False))) == len(list(t.parameters(recurse=False)))
        source = cls.from_torch(t)
        m.load_state_dict({k: v + 1 for k, v in source.state_dict().items()}, assign=True)
        for name, value in source.state_dict().items():
            np.testing.assert_array_equal(m.state_dict()[name], value + 1)
    assert fastlstm.LSTM(3, 4).mode == torch.nn.LSTM(3, 4).mode == "LSTM"


@pytest.mark.parametrize("cfg", REPR_CONFIGS[:3], ids=repr)
def test_repr_float64(torch, cfg):
    t = repr(torch.nn.LSTM(**cfg, dtype=torch.float64))
    f = repr(fastlstm.LSTM(**cfg, dtype=np.float64))
    assert f == t[:-1] + ", dtype=float64)"


def test_repr_example():
    assert repr(fastlstm.LSTM(10, 20, 2, bidirectional=True)) == (
        "LSTM(10, 20, num_layers=2, bidirectional=True)"
    )


# ------------------------------------------------------------------ pickle


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "cfg", [CONFIGS[0], CONFIGS[5], CONFIGS[6]], ids=[CONFIG_IDS[0], CONFIG_IDS[5], CONFIG_IDS[6]]
)
def test_pickle_round_trip(cfg, dtype):
    m = fastlstm.LSTM(**cfg, dtype=dtype, rng=0)
    x = _x(cfg, dtype)
    want = _fast_forward(m, x)  # pickled after the packed cache exists
    m2 = pickle.loads(pickle.dumps(m))
    assert repr(m2) == repr(m)
    assert m2.dtype == m.dtype
    assert m2.training == m.training
    _assert_params_equal(_params(m2), _params(m))
    for r, s in zip(_fast_forward(m2, x), want):
        np.testing.assert_array_equal(r, s)
    # the copy is independent
    m2.weight_ih_l0 = np.zeros_like(m2.weight_ih_l0)
    for r, s in zip(_fast_forward(m, x), want):
        np.testing.assert_array_equal(r, s)


def test_pickle_keeps_training_mode_and_deepcopy():
    m = fastlstm.LSTM(3, 4, num_layers=2, dropout=0.5, rng=0).train()
    m2 = pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    assert m2.training is True and m2.dropout == 0.5
    m3 = copy.deepcopy(m.eval())
    assert m3.training is False
    _assert_params_equal(_params(m3), _params(m))
    x = np.ones((3, 2, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(m3(x)[0]), np.asarray(m(x)[0]))


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
def test_copies_keep_parameters_read_only(how):
    m = fastlstm.LSTM(3, 4, num_layers=2, proj_size=2, rng=0)
    x = np.ones((3, 2, 3), np.float32)
    y0 = np.asarray(m(x)[0])
    if how == "pickle":
        m2 = pickle.loads(pickle.dumps(m))
    elif how == "deepcopy":
        m2 = copy.deepcopy(m)
    else:
        m2 = copy.copy(m)
    np.testing.assert_array_equal(np.asarray(m2(x)[0]), y0)
    for name, p in m2.named_parameters():
        assert not p.flags.writeable, f"{name} is writable after {how}"
        with pytest.raises(ValueError):
            p[...] = 0.0
    # and the original is untouched whatever happened to the copy
    np.testing.assert_array_equal(np.asarray(m(x)[0]), y0)


@pytest.mark.parametrize("weight_dtype", [None, "bfloat16", "int8"])
@pytest.mark.parametrize("how", ["deepcopy", "copy"])
def test_a_parameter_set_on_a_copy_stays_with_the_copy(how, weight_dtype):
    """Each module computes with the weights it reports (the oracle: the NumPy forward of
    its own state_dict) after a parameter is set on a copy of it."""
    m = fastlstm.LSTM(3, 4, num_layers=2, rng=0)
    if weight_dtype:
        m = fastlstm.quantize(m, weight_dtype)
    x = np.random.default_rng(1).standard_normal((3, 2, 3)).astype(np.float32)
    y0 = np.asarray(m(x)[0])  # packed and bound before the copy
    before = _params(m)
    m2 = getattr(copy, how)(m)
    m2.weight_ih_l0 = np.full((16, 3), 1.5, np.float32)
    _assert_params_equal(_params(m), before)
    np.testing.assert_array_equal(np.asarray(m(x)[0]), y0)
    assert m2.weight_ih_l0[0, 0] == 1.5 and m2.weight_dtype == m.weight_dtype
    # bfloat16 and int8 products round the activations: within their documented error
    tol = 1e-5 if weight_dtype is None else 2e-2
    for module in (m, m2):
        np.testing.assert_allclose(module(x)[0], reference_forward(module, x)[0], atol=tol)
    assert np.abs(m2(x)[0] - y0).max() > 10 * tol


# ------------------------------------------------------------------ dropout


def _with_weights_of(cfg, src, **override):
    m = fastlstm.LSTM(**dict(cfg, **override))
    m.load_state_dict(src.state_dict())
    return m


DROP_CFGS = [
    dict(input_size=3, hidden_size=6, num_layers=2),
    dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, proj_size=4),
    dict(input_size=3, hidden_size=6, num_layers=3, batch_first=True),
]
DROP_IDS = ["2layers", "2layers-bidi-proj", "3layers-batch_first"]


@pytest.mark.parametrize("p", [0.5, 1.0])
@pytest.mark.parametrize("cfg", DROP_CFGS, ids=DROP_IDS)
def test_dropout_no_effect_in_eval(cfg, p):
    m = fastlstm.LSTM(**cfg, dropout=p, rng=0)
    assert m.training is False
    ref = _with_weights_of(cfg, m, dropout=0.0)
    x = _x(cfg)
    for r, s in zip(_fast_forward(m, x), _fast_forward(ref, x)):
        np.testing.assert_array_equal(r, s)


@pytest.mark.parametrize("cfg", DROP_CFGS, ids=DROP_IDS)
def test_train_without_dropout_equals_eval(cfg):
    m = fastlstm.LSTM(**cfg, rng=0)
    x = _x(cfg)
    want = _fast_forward(m, x)
    m.train()
    for r, s in zip(_fast_forward(m, x), want):
        np.testing.assert_array_equal(r, s)


@pytest.mark.parametrize("cfg", DROP_CFGS[:2], ids=DROP_IDS[:2])
def test_dropout_one_zeroes_second_layer_input(cfg):
    m = fastlstm.LSTM(**cfg, dropout=1.0, rng=0).train()
    ref = _with_weights_of(cfg, m)
    ref.weight_ih_l1 = np.zeros_like(ref.weight_ih_l1)
    if cfg.get("bidirectional"):
        ref.weight_ih_l1_reverse = np.zeros_like(ref.weight_ih_l1_reverse)
    x = _x(cfg)
    got = _fast_forward(m, x)
    want = _fast_forward(ref, x)
    for r, s in zip(got, want):
        np.testing.assert_allclose(r, s, rtol=0, atol=1e-6)
    # layer 0's final states are not affected by dropout
    plain = _fast_forward(m.eval(), x)
    d = 2 if cfg.get("bidirectional") else 1
    np.testing.assert_array_equal(got[1][:d], plain[1][:d])
    np.testing.assert_array_equal(got[2][:d], plain[2][:d])
    assert not np.allclose(got[0], plain[0])


@pytest.mark.parametrize("cfg", DROP_CFGS, ids=DROP_IDS)
def test_dropout_one_matches_torch_train(torch, cfg):
    # dropout=1 is deterministic, so torch in training mode is an oracle
    t = torch.nn.LSTM(**cfg, dropout=1.0).train()
    m = fastlstm.LSTM.from_torch(t).train()
    x = _x(cfg)
    _assert_results_close(_fast_forward(m, x), _torch_forward(torch, t, x), np.float32)


def test_dropout_train_is_random_and_seeded():
    cfg = DROP_CFGS[0]
    x = _x(cfg)
    a = fastlstm.LSTM(**cfg, dropout=0.5, rng=7).train()
    b = fastlstm.LSTM(**cfg, dropout=0.5, rng=7).train()
    ya1, ya2 = np.asarray(a(x)[0]), np.asarray(a(x)[0])
    yb1 = np.asarray(b(x)[0])
    assert not np.array_equal(ya1, ya2)  # a new mask every call
    np.testing.assert_array_equal(ya1, yb1)  # same seed, same masks
    ye = np.asarray(a.eval()(x)[0])
    assert not np.allclose(ya1, ye)


def test_dropout_not_applied_after_last_layer():
    # with one layer there is nothing to drop: training mode changes nothing
    m = fastlstm.LSTM(3, 4, dropout=1.0, rng=0)
    x = _x(dict(input_size=3))
    want = _fast_forward(m, x)
    for r, s in zip(_fast_forward(m.train(), x), want):
        np.testing.assert_array_equal(r, s)


# ------------------------------------------- from_state_dict on hostile weights
# A weights file is untrusted: its key names and shapes must not make
# from_state_dict or inspect build (allocate) a module far larger than the file,
# spend time quadratic in the number of keys, or fail with another exception
# than StateDictError.


@pytest.fixture
def no_huge_modules(monkeypatch):
    """Fail (instead of exhausting memory) when a huge module would be built."""
    for cls in (fastlstm.LSTM, fastlstm.LSTMCell):
        shapes = cls._parameter_shapes

        def guarded(self, _shapes=shapes):
            assert self._hidden_size <= 4096 and getattr(self, "_num_layers", 1) <= 64, (
                "a module far larger than its weights is being built")
            return _shapes(self)

        monkeypatch.setattr(cls, "_parameter_shapes", guarded)


def _state_dict_error(source, cls=fastlstm.LSTM):
    with pytest.raises(fastlstm.StateDictError) as info:
        cls.from_state_dict(source)
    return str(info.value)


def test_from_state_dict_refuses_layers_without_weights(no_huge_modules, tmp_path):
    # 192 bytes of safetensors whose one key makes num_layers=100000001.
    path = tmp_path / "layers.safetensors"
    fastlstm.save({"weight_ih_l0": np.zeros((4, 1), np.float32),
                   "bias_ih_l100000000": np.zeros(4, np.float32)}, path)
    message = _state_dict_error(path)
    assert "'bias_ih_l100000000' makes num_layers=100000001" in message
    assert "no weights for layer(s) 1, 2, 3, 4, 5, ... (99,999,999 of 100,000,001" in message
    found = fastlstm.inspect(path)
    assert not found.modules and "makes num_layers=100000001" in found.notes[0]
    # An index too long for int() (Python refuses 4300+ digits) is refused the same way.
    long_index = {"weight_ih_l0": np.zeros((4, 1)), "bias_hh_l" + "9" * 5000: np.zeros(4)}
    assert "no weights for layer(s) 1, 2" in _state_dict_error(long_index)
    # A gap in the middle, with the full key name.
    sd = {"enc." + k: v for k, v in fastlstm.LSTM(2, 3, num_layers=3, rng=0).state_dict().items()
          if "_l1" not in k}
    with pytest.raises(fastlstm.StateDictError,
                       match=r"'enc\.weight_ih_l2' makes num_layers=3, but there are no "
                             r"weights for layer\(s\) 1 \(1 of 3 layers\)"):
        fastlstm.LSTM.from_state_dict(sd, prefix="enc")


@pytest.mark.parametrize("cls, name", [(fastlstm.LSTM, "weight_ih_l0"),
                                       (fastlstm.LSTMCell, "weight_ih")])
@pytest.mark.parametrize("dtype", [np.uint8, np.bool_])
def test_from_state_dict_refuses_a_module_larger_than_its_weights(no_huge_modules, tmp_path,
                                                                  cls, name, dtype):
    # 4*hidden_size x input_size = 400000 x 1 makes hidden_size 100000: the
    # module would need a 149 GiB weight_hh, and the file holds 400 KB.
    path = tmp_path / "thin.safetensors"
    fastlstm.save({name: np.zeros((400000, 1), dtype)}, path)
    message = _state_dict_error(path, cls)
    hh = name.replace("_ih", "_hh")
    assert "hidden_size=100000" in message and f"missing {hh};" in message
    assert "has 40,000,400,000 parameters, the weights hold 400,000" in message
    found = fastlstm.inspect(path)
    assert not found.modules and f"missing {hh}" in found.notes[0]
    # The other kind of module looks for its own keys and lists none.
    other = fastlstm.LSTMCell if cls is fastlstm.LSTM else fastlstm.LSTM
    assert "holds no" in _state_dict_error(path, other)
    # A weight_hh that is present but thin is caught the same way.
    sd = {name: np.zeros((400000, 1), dtype), hh: np.zeros((400000, 2), dtype)}
    assert f"'{hh}' has shape (400000, 2), expected (400000, 100000)" in _state_dict_error(sd, cls)


def test_from_state_dict_huge_projection_is_refused(no_huge_modules):
    sd = {"weight_ih_l0": np.zeros((400000, 1)), "weight_hr_l0": np.zeros((100, 100000))}
    message = _state_dict_error(sd)
    assert "proj_size=100" in message and "missing weight_hh_l0" in message


@pytest.mark.parametrize("cfg", CONFIGS + [dict(input_size=2, hidden_size=3, bias=False)],
                         ids=CONFIG_IDS + ["cell-nobias"])
def test_expected_shapes_are_torchs_shapes(cfg, torch):
    # build_module checks keys against these before it builds anything; the modules take
    # their own shapes from the same functions.  The oracle is torch's state dict.
    from fastlstm.io.state_dict import expected_shapes

    cfg = {k: v for k, v in cfg.items() if k != "batch_first"}
    want = {k: tuple(v.shape) for k, v in torch.nn.LSTM(**cfg).state_dict().items()}
    assert list(expected_shapes("LSTM", cfg).items()) == list(want.items())
    assert list(fastlstm.LSTM(**cfg)._shapes.items()) == list(want.items())
    cell_cfg = {k: cfg[k] for k in ("input_size", "hidden_size", "bias") if k in cfg}
    want = {k: tuple(v.shape) for k, v in torch.nn.LSTMCell(**cell_cfg).state_dict().items()}
    assert list(expected_shapes("LSTMCell", cell_cfg).items()) == list(want.items())
    assert list(fastlstm.LSTMCell(**cell_cfg)._shapes.items()) == list(want.items())
    assert expected_shapes("GRU", cfg) is None


class _CountingKey(str):
    """A key that counts the times it is compared with a prefix."""

    calls = 0

    def startswith(self, *args):
        type(self).calls += 1
        return str.startswith(self, *args)


def test_finding_modules_is_linear_in_the_number_of_keys(monkeypatch):
    # Scanning every key once per prefix took 5 s for 8000 keys ``p{i}.x``.
    from fastlstm.io.state_dict import find_modules

    n = 2000
    monkeypatch.setattr(_CountingKey, "calls", 0)
    arrays = {_CountingKey(f"p{i}.x"): np.zeros(0, np.uint8) for i in range(n)}
    arrays.update({_CountingKey(f"m{i}.weight_ih"): np.zeros((4, 1)) for i in range(n)})
    modules, notes = find_modules(arrays, {"LSTM": fastlstm.LSTM, "LSTMCell": fastlstm.LSTMCell})
    assert not modules and len(notes) == n
    found = fastlstm.inspect(arrays)
    assert len(found.tensors) == 2 * n
    with pytest.raises(fastlstm.StateDictError, match="holds no LSTM weights"):
        fastlstm.LSTM.from_state_dict(arrays)  # the error path lists the modules there are
    assert _CountingKey.calls <= 2 * len(arrays)


@pytest.mark.parametrize("dtype, in_file", [("<U1", False), (np.complex64, False),
                                            (np.complex64, True)],
                         ids=["U1-mapping", "complex64-mapping", "complex64-npz"])
def test_from_state_dict_refuses_weights_that_are_not_numbers(tmp_path, dtype, in_file):
    sd = {"rnn.weight_ih_l0": np.zeros((16, 3), dtype),
          "rnn.weight_hh_l0": np.zeros((16, 4), dtype),
          "cell.weight_ih": np.zeros((16, 3), np.float32),
          "cell.weight_hh": np.zeros((16, 4), dtype)}
    source = sd
    if in_file:
        source = tmp_path / "weights.npz"
        np.savez(source, **sd)
    name = np.dtype(dtype)
    with pytest.raises(fastlstm.StateDictError,
                       match=rf"'rnn\.weight_ih_l0' has dtype {name}, not a real number type; "
                             rf"'rnn\.weight_hh_l0' has dtype {name}"):
        fastlstm.LSTM.from_state_dict(source, prefix="rnn")
    with pytest.raises(fastlstm.StateDictError,
                       match=rf"'cell\.weight_hh' has dtype {name}, not a real number type"):
        fastlstm.LSTMCell.from_state_dict(source, prefix="cell")
    found = fastlstm.inspect(source)
    assert not found.modules
    assert len(found.notes) == 2 and all("not a real number type" in n for n in found.notes)
    # Integer and bool weights are numbers, and load.
    ints = {"weight_ih_l0": np.ones((16, 3), np.int64), "weight_hh_l0": np.ones((16, 4), bool)}
    assert fastlstm.LSTM.from_state_dict(ints, bias=False).weight_hh_l0.sum() == 64
