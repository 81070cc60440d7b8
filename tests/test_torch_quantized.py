"""fastlstm.io.torch_quantized: the weights of torch's dynamically quantized LSTM and LSTMCell.

The oracle is torch itself (the ``torch`` fixture: skipped without torch, an error in CI):
each packed weight is unpacked with ``torch.ops.quantized.linear_unpack`` (or ``_fp16``),
apart from the ``get_weight()`` that the reader uses, and dequantized by torch.  The float
module that was quantized checks the names: each extracted weight is within half a
quantization step (int8) or is the float16 rounding (float16) of the float weight of its name.
"""

import subprocess
import sys

import numpy as np
import pytest
from _helpers import ROOT

from fastlstm.io.torch_quantized import QuantizedWeights, quantized_weights

# quantize_dynamic and the quantized tensor constructors warn that they are deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated")

SCHEMES = ["per_tensor", "per_channel", "float16"]
LSTM_CONFIGS = {
    "plain": dict(input_size=3, hidden_size=5),
    "bi2bf": dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True,
                  batch_first=True),
}


def _quantize(torch, float_module, scheme):
    """``float_module`` quantized dynamically with per-tensor or per-channel int8 or float16."""
    cls = type(float_module)
    quantize = torch.ao.quantization.quantize_dynamic
    if scheme == "per_tensor":
        q = quantize(torch.nn.Sequential(float_module), {cls}, dtype=torch.qint8)
    elif scheme == "per_channel":
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        q = quantize(torch.nn.Sequential(float_module), {cls: qconfig})
    else:
        q = quantize(torch.nn.Sequential(float_module), {cls}, dtype=torch.float16)
    return q[0]


def _lstm(torch, **cfg):
    torch.manual_seed(0)
    return torch.nn.LSTM(**cfg).eval()


def _cell(torch, **cfg):
    torch.manual_seed(1)
    return torch.nn.LSTMCell(**cfg).eval()


def _packed(module):
    """{weight name: (packed weight and bias)} of a quantized LSTM or LSTMCell."""
    if hasattr(module, "_packed_weight_ih"):
        return {"weight_ih": module._packed_weight_ih, "weight_hh": module._packed_weight_hh}
    out, i = {}, 0
    for layer in range(module.num_layers):
        for suffix in ("", "_reverse") if module.bidirectional else ("",):
            ih, hh = module._all_weight_values[i].param.__getstate__()[0][4]
            out[f"weight_ih_l{layer}{suffix}"], out[f"weight_hh_l{layer}{suffix}"] = ih, hh
            i += 1
    return out


def _torch_unpacked(torch, module):
    """{name: float32 array}: torch's own unpacking and dequantization of every parameter."""
    out = {}
    # The cell names its storage dtype weight_dtype, the LSTM dtype.
    fp16 = torch.float16 in (getattr(module, "weight_dtype", None), getattr(module, "dtype", None))
    for name, packed in _packed(module).items():
        if fp16:
            weight, bias = torch.ops.quantized.linear_unpack_fp16(packed)
        else:
            weight, bias = torch.ops.quantized.linear_unpack(packed)
            weight = weight.dequantize()
        out[name] = weight.numpy()
        out[name.replace("weight", "bias")] = bias.detach().numpy()
    return out


def _float_params(float_module):
    return {k: v.detach().numpy() for k, v in float_module.state_dict().items()}


def _check_against_torch(torch, got, qmodule, float_module, scheme):
    """Names, order, dtypes and values of ``got`` against torch's unpacking and the float
    module; for int8, ``q`` and ``scale`` against the quantized tensors."""
    assert isinstance(got, QuantizedWeights)
    params = _float_params(float_module)
    assert list(got.floats) == list(params)
    oracle = _torch_unpacked(torch, qmodule)
    for name, value in got.floats.items():
        assert value.dtype == np.float32 and value.shape == params[name].shape, name
        np.testing.assert_array_equal(value, oracle[name], err_msg=name)
        if name.startswith("bias"):
            np.testing.assert_array_equal(value, params[name], err_msg=name)
    weights = [n for n in params if n.startswith("weight")]
    if scheme == "float16":
        assert got.dtype == "float16" and got.int8 == {}
        for name in weights:
            widened = params[name].astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(got.floats[name], widened, err_msg=name)
        return
    assert got.dtype == "int8" and list(got.int8) == weights
    torch_weights = qmodule.get_weight()
    for name in weights:
        q, scale = got.int8[name]
        rows = params[name].shape[0]
        assert q.dtype == np.int8 and q.shape == params[name].shape
        assert scale.dtype == np.float32
        assert scale.shape == ((rows,) if scheme == "per_channel" else (1,))
        np.testing.assert_array_equal(q.astype(np.float32) * scale[:, None], got.floats[name])
        t = torch_weights[name]
        np.testing.assert_array_equal(q, t.int_repr().numpy())
        if scheme == "per_channel":
            assert t.q_per_channel_axis() == 0
            np.testing.assert_array_equal(scale, t.q_per_channel_scales().numpy())
        else:
            assert scale[0] == t.q_scale()
        # The weight of this name, not another: within half a step (the float32 scale's
        # rounding, times up to 128, adds ~1e-5 of a step) of the float weight.
        step = np.broadcast_to(scale[:, None], q.shape)
        assert np.all(np.abs(got.floats[name] - params[name]) <= step * (0.5 + 1e-4)), name


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("cfg", list(LSTM_CONFIGS), ids=list(LSTM_CONFIGS))
def test_lstm_weights_are_torch_s(torch, cfg, scheme):
    float_module = _lstm(torch, **LSTM_CONFIGS[cfg])
    qmodule = _quantize(torch, float_module, scheme)
    got = quantized_weights(qmodule)
    assert got.kind == "LSTM"
    _check_against_torch(torch, got, qmodule, float_module, scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_lstm_cell_weights_are_torch_s(torch, scheme):
    float_module = _cell(torch, input_size=3, hidden_size=4)
    qmodule = _quantize(torch, float_module, scheme)
    got = quantized_weights(qmodule)
    assert got.kind == "LSTMCell"
    assert got.config == {"input_size": 3, "hidden_size": 4, "bias": True}
    _check_against_torch(torch, got, qmodule, float_module, scheme)
    # The cell's bias_ih attribute is its constructor's random tensor: forward never adds it.
    assert not np.array_equal(qmodule.bias_ih.numpy(), got.floats["bias_ih"])
    # Copies: the packed bias is the float module's own parameter.
    assert not np.shares_memory(got.floats["bias_ih"], float_module.bias_ih.detach().numpy())


def test_lstm_config(torch):
    cfg = LSTM_CONFIGS["bi2bf"]
    got = quantized_weights(_quantize(torch, _lstm(torch, **cfg), "per_tensor"))
    assert got.config == {"input_size": 4, "hidden_size": 6, "num_layers": 2, "bias": True,
                          "batch_first": True, "bidirectional": True, "proj_size": 0}
    got = quantized_weights(_quantize(torch, _lstm(torch, **LSTM_CONFIGS["plain"]), "float16"))
    assert got.config == {"input_size": 3, "hidden_size": 5, "num_layers": 1, "bias": True,
                          "batch_first": False, "bidirectional": False, "proj_size": 0}


@pytest.mark.parametrize("scheme,tol", [("per_tensor", 2e-2), ("float16", 1e-5)])
def test_floats_run_as_torch_s_quantized_modules(torch, scheme, tol):
    """A float torch module loaded with the floats (strictly) runs as the quantized one: float16
    up to summation order, int8 up to the dynamic quantization of the activations."""
    cfg = LSTM_CONFIGS["bi2bf"]
    cases = [(_lstm(torch, **cfg), torch.nn.LSTM(**cfg), torch.randn(2, 5, 4)),
             (_cell(torch, input_size=3, hidden_size=4), torch.nn.LSTMCell(3, 4),
              torch.randn(2, 3))]
    for float_module, ref, x in cases:
        qmodule = _quantize(torch, float_module, scheme)
        got = quantized_weights(qmodule)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in got.floats.items()})
        with torch.no_grad():
            expected, actual = qmodule(x)[0], ref(x)[0]
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", ["qint8", "float16"])
def test_bias_false_has_no_bias_keys(torch, dtype):
    # quantize_dynamic refuses bias=False float modules: these are built directly.
    nnqd = torch.ao.nn.quantized.dynamic
    cell = quantized_weights(nnqd.LSTMCell(3, 4, bias=False, dtype=getattr(torch, dtype)))
    assert list(cell.floats) == ["weight_ih", "weight_hh"] and not cell.config["bias"]
    lstm = quantized_weights(nnqd.LSTM(3, 4, num_layers=2, bias=False, dtype=getattr(torch, dtype)))
    assert list(lstm.floats) == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]
    assert not lstm.config["bias"]
    assert list(lstm.int8) == (list(lstm.floats) if dtype == "qint8" else [])


def test_a_cell_with_bias_false_but_packed_biases_is_refused(torch):
    qmodule = _quantize(torch, _cell(torch, input_size=3, hidden_size=4), "per_tensor")
    qmodule.bias = False
    with pytest.raises(ValueError, match="bias=False but its packed weights hold bias_ih"):
        quantized_weights(qmodule)


@pytest.mark.parametrize("kind", ["LSTM", "LSTMCell"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_asymmetric_weights_are_refused(torch, kind, per_channel):
    quant = torch.ao.quantization
    observer = (quant.PerChannelMinMaxObserver.with_args(dtype=torch.qint8,
                                                         qscheme=torch.per_channel_affine)
                if per_channel else
                quant.MinMaxObserver.with_args(dtype=torch.qint8,
                                               qscheme=torch.per_tensor_affine))
    qconfig = quant.QConfig(activation=quant.default_dynamic_quant_observer, weight=observer)
    float_module = _lstm(torch, input_size=3, hidden_size=4) if kind == "LSTM" else \
        _cell(torch, input_size=3, hidden_size=4)
    with torch.no_grad():
        for p in float_module.parameters():
            p.add_(0.5)  # all-positive-ish weights: an affine observer picks a zero point
    qmodule = quant.quantize_dynamic(torch.nn.Sequential(float_module),
                                     {type(float_module): qconfig})[0]
    name = "weight_ih_l0" if kind == "LSTM" else "weight_ih"
    with pytest.raises(ValueError, match=f"{name} is quantized with nonzero zero points"):
        quantized_weights(qmodule)


def test_per_channel_along_another_axis_is_refused(torch):
    # torch's packing refuses axis 1 itself: the unpacked weights are replaced to test ours.
    qmodule = _quantize(torch, _cell(torch, input_size=3, hidden_size=4), "per_channel")
    weights = qmodule.get_weight()
    w = weights["weight_hh"].dequantize()
    weights["weight_hh"] = torch.quantize_per_channel(
        w, w.abs().amax(dim=0) / 127, torch.zeros(4, dtype=torch.long), 1, torch.qint8)
    qmodule.get_weight = lambda: weights
    with pytest.raises(ValueError, match="weight_hh is quantized per channel along axis 1"):
        quantized_weights(qmodule)


def test_proj_size_is_refused(torch):
    # quantize_dynamic drops weight_hr and builds an LSTM that cannot run (pytorch#60008).
    float_module = _lstm(torch, input_size=3, hidden_size=5, proj_size=2)
    for scheme in ("per_tensor", "float16"):
        qmodule = _quantize(torch, float_module, scheme)
        with pytest.raises(RuntimeError):
            qmodule(torch.randn(2, 1, 3))
        with pytest.raises(ValueError, match=r"weight_hh_l0 has shape \(20, 2\).*proj_size"):
            quantized_weights(qmodule)


def test_other_objects_are_refused(torch):
    nnqd = torch.ao.nn.quantized.dynamic
    for obj, name in [(torch.nn.LSTM(3, 4), "torch.nn.modules.rnn.LSTM"),
                      (torch.nn.LSTMCell(3, 4), "torch.nn.modules.rnn.LSTMCell"),
                      (nnqd.GRU(3, 4), "torch.ao.nn.quantized.dynamic.modules.rnn.GRU"),
                      (np.zeros(3), "numpy.ndarray"), (None, "builtins.NoneType")]:
        with pytest.raises(TypeError, match=f"LSTMCell .*, not {name}$"):
            quantized_weights(obj)


def test_torch_is_not_imported():
    code = ("import sys\n"
            "from fastlstm.io.torch_quantized import quantized_weights\n"
            "try:\n"
            "    quantized_weights(object())\n"
            "except TypeError:\n"
            "    pass\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
