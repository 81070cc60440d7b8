"""Modules with int8 weights (``fastlstm.quantize(module, "int8")``) against the NumPy
oracle of docs/precision.md (weights quantized per row or per matrix, every activation
that meets them quantized per row), at every int8 level the CPU has, on 1 and 2 threads,
in every input form; the trained model, the files and torch's dynamic int8 beside them."""

import copy
import pickle

import numpy as np
import pytest

import fastlstm
from fastlstm._ext import kernels
from tests._helpers import TORCH
from tests._helpers.precision import (
    CONFIGS,
    check_every_input_form,
    check_forward,
    int8_rows,
    int8_weight,
)
from tests._helpers.reference import reference_forward
from tests._helpers.trained import accuracy, trained_lstm


@pytest.fixture(autouse=True)
def _restore():
    yield
    kernels.set_int8_level(None)
    fastlstm.set_num_threads(None)


def _agrees(got, want, what):
    """The products are exact; the float32 gate math against the float64 oracle's moves
    now and then an activation across a rounding boundary of its quantization (one step,
    amax / 127, which later steps carry on): the median error within 1e-6, none past 1e-2.
    Quantizing the weights but not the activations puts the median near 1e-3."""
    err = np.abs(np.asarray(got, np.float64) - want)
    assert err.max() <= 1e-2, (what, float(err.max()))
    assert np.median(err) <= 1e-6, (what, float(np.median(err)))


def test_the_check_tells_the_semantics_apart():
    rng = np.random.default_rng(1)
    module = fastlstm.quantize(fastlstm.LSTM(13, 24, rng=1), "int8")
    x = rng.standard_normal((7, 5, 13)).astype(np.float32)
    out, _ = module(x)
    _agrees(out, reference_forward(module, x, operand=int8_rows)[0], "quantized activations")
    with pytest.raises(AssertionError):
        _agrees(out, reference_forward(module, x)[0], "float32 activations")


def test_the_weights_are_the_oracles():
    rnn = fastlstm.LSTM(13, 24, num_layers=2, proj_size=5, bidirectional=True, rng=2)
    for per_channel in (True, False):
        q = fastlstm.quantize(rnn, "int8", per_channel=per_channel)
        for name, value in rnn.state_dict().items():
            if name.startswith("weight_"):
                oq, os_ = int8_weight(value, per_channel)
                want = (oq * os_[:, None].astype(np.float64)).astype(np.float32)
            else:
                want = value  # biases stay float32
            np.testing.assert_array_equal(q.state_dict()[name], want)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
                         or "plain")
def test_forward_matches_the_oracle(cfg):
    # exact int32 sums: how the threads share the work changes nothing
    check_forward(cfg, "int8", int8_rows, _agrees, kernels.int8_levels(), kernels.set_int8_level,
                  same_on_threads=True)


def test_one_step_calls_cells_streams_and_packed_input():
    check_every_input_form("int8", int8_rows, _agrees, kernels.int8_levels(),
                           kernels.set_int8_level)


def test_error_against_float32_is_bounded():
    """On a seeded grid, the outputs stay within 3e-2 of float32's, relative to the
    largest output (per row weights; per matrix within 6e-2)."""
    rng = np.random.default_rng(5)
    for hidden, steps in ((64, 50), (256, 20)):
        base = fastlstm.LSTM(hidden, hidden, num_layers=2, rng=hidden)
        x = rng.standard_normal((steps, 4, hidden)).astype(np.float32)
        want, _ = base(x)
        for per_channel, bound in ((True, 3e-2), (False, 6e-2)):
            got, _ = fastlstm.quantize(base, "int8", per_channel=per_channel)(x)
            rel = np.abs(got - want).max() / np.abs(want).max()
            assert 1e-4 < rel < bound, (hidden, per_channel, rel)


def test_quantize_api():
    rnn = fastlstm.LSTM(6, 8, proj_size=3, rng=0)
    q = fastlstm.quantize(rnn, "int8")
    assert type(q) is fastlstm.LSTM and q is not rnn
    assert (q.weight_dtype, rnn.weight_dtype, q.dtype) == ("int8", "float32", np.float32)
    assert repr(q) == "LSTM(6, 8, proj_size=3, weight_dtype='int8')"
    assert fastlstm.quantize(rnn, "qint8").weight_dtype == "int8"
    cell = fastlstm.quantize(fastlstm.LSTMCell(3, 5, rng=0), "int8")
    assert repr(cell) == "LSTMCell(3, 5, weight_dtype='int8')"
    with pytest.raises(ValueError, match="dtype must be 'bfloat16' or 'int8'"):
        fastlstm.quantize(rnn, "int4")
    with pytest.raises(TypeError, match="cannot cast it to float64"):
        q.double()
    bad = fastlstm.LSTM(6, 8, rng=0)
    bad.weight_hh_l0 = np.full((32, 8), np.nan, np.float32)
    with pytest.raises(ValueError, match="weight_hh_l0: int8 weights must be finite"):
        fastlstm.quantize(bad, "int8")
    with pytest.raises(ValueError, match="must be finite"):
        q.weight_ih_l0 = np.full((32, 6), np.inf, np.float32)
    assert np.isfinite(q.weight_ih_l0).all()  # nothing changed
    # int32 sums hold 65535 inputs: more is refused by quantize, not by the first call
    for wide in (fastlstm.LSTM(65536, 1, rng=0), fastlstm.LSTM(1, 65536, proj_size=1, rng=0)):
        with pytest.raises(ValueError, match="at most 65535 inputs .*got 65536"):
            fastlstm.quantize(wide, "int8")
    assert fastlstm.quantize(fastlstm.LSTM(65535, 1, rng=0), "int8").weight_dtype == "int8"


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
def test_quantize_takes_torchs_dtype():
    assert fastlstm.quantize(fastlstm.LSTM(2, 2), TORCH.qint8).weight_dtype == "int8"


def test_new_weights_are_quantized_and_pickling_keeps_the_storage():
    rng = np.random.default_rng(6)
    q = fastlstm.quantize(fastlstm.LSTM(5, 7, rng=0), "int8", per_channel=False)
    w = rng.standard_normal((28, 7)).astype(np.float32)
    q.weight_hh_l0 = w
    oq, os_ = int8_weight(w, per_channel=False)
    np.testing.assert_array_equal(q.weight_hh_l0, (oq * os_[:, None].astype(np.float64))
                                  .astype(np.float32))
    q.load_state_dict(fastlstm.LSTM(5, 7, rng=9).state_dict())
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    out, _ = q(x)
    for clone in (pickle.loads(pickle.dumps(q)), copy.deepcopy(q), fastlstm.quantize(q, "int8",
                                                                                      per_channel=False)):
        assert clone.weight_dtype == "int8"
        np.testing.assert_array_equal(clone(x)[0], out)
    # The float32 values quantize again to the same int8 weights: the same module.
    again = fastlstm.LSTM(5, 7)
    again.load_state_dict(q.state_dict())
    np.testing.assert_array_equal(fastlstm.quantize(again, "int8", per_channel=False)(x)[0], out)


def test_packed_weights_take_a_quarter_of_the_bytes():
    rnn = fastlstm.LSTM(256, 256, num_layers=2, bidirectional=True, proj_size=128, rng=0)
    q = fastlstm.quantize(rnn, "int8")

    def panel_bytes(module):
        return sum(layer.w_ih_p.nbytes + layer.w_hh_p.nbytes + layer.w_hr_p.nbytes
                   for layer in module._packed_layers())

    ratio = panel_bytes(rnn) / panel_bytes(q)
    assert 3.8 < ratio <= 4, ratio  # the scales and compensations: 2 rows a panel
    assert all(layer.w_ih.size == 0 for layer in q._packed_layers())  # no BLAS copy


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_save_and_load_keep_the_int8_weights(tmp_path, ext):
    rng = np.random.default_rng(7)
    for per_channel in (True, False):
        q = fastlstm.quantize(fastlstm.LSTM(6, 9, num_layers=2, proj_size=4, rng=0), "int8",
                              per_channel=per_channel)
        path = tmp_path / f"q.{ext}"
        q.save(path, prefix="enc.rnn.")
        arrays = fastlstm.load(path)
        assert "enc.rnn.weight_hh_l1" not in arrays  # torch's float names are left out
        assert arrays["enc.rnn.weight_hh_l1_int8"].dtype == np.int8
        assert arrays["enc.rnn.weight_hh_l1_scale"].shape == ((36,) if per_channel else (1,))
        assert arrays["enc.rnn.bias_ih_l0"].dtype == np.float32
        again = fastlstm.LSTM.from_state_dict(path, prefix="enc.rnn.")
        assert again.weight_dtype == "int8" and repr(again) == repr(q)
        x = rng.standard_normal((5, 2, 6)).astype(np.float32)
        np.testing.assert_array_equal(again(x)[0], q(x)[0])
        for name, value in q.state_dict().items():
            np.testing.assert_array_equal(again.state_dict()[name], value)
    cell = fastlstm.quantize(fastlstm.LSTMCell(3, 5, rng=0), "int8")
    cell.save(tmp_path / f"c.{ext}")
    back = fastlstm.LSTMCell.from_state_dict(tmp_path / f"c.{ext}")
    assert back.weight_dtype == "int8"
    np.testing.assert_array_equal(back(x[0, :, :3])[0], cell(x[0, :, :3])[0])


@pytest.mark.parametrize("ext", ["safetensors", "npz"])
def test_the_scales_mode_survives_a_one_row_projection(tmp_path, ext):
    # weight_hr of proj_size=1 has one row, so one scale in either mode: the mode is
    # read from the other matrices, and weights set later are quantized the saved way.
    w = np.random.default_rng(3).standard_normal((20, 4)).astype(np.float32)
    for per_channel in (True, False):
        q = fastlstm.quantize(fastlstm.LSTM(4, 5, proj_size=1, rng=0), "int8",
                              per_channel=per_channel)
        q.save(tmp_path / f"p.{ext}")
        again = fastlstm.LSTM.from_state_dict(tmp_path / f"p.{ext}")
        q.weight_ih_l0 = w
        again.weight_ih_l0 = w
        np.testing.assert_array_equal(again.weight_ih_l0, q.weight_ih_l0)
        expected = int8_weight(w, per_channel=per_channel)
        np.testing.assert_array_equal(again.weight_ih_l0,
                                      expected[0].astype(np.float32) * expected[1][:, None])


def test_reduced_weights_do_not_load_into_float64_modules(tmp_path):
    for weight_dtype in ("int8", "bfloat16"):
        for cls, module in ((fastlstm.LSTM, fastlstm.LSTM(4, 5, rng=0)),
                            (fastlstm.LSTMCell, fastlstm.LSTMCell(4, 5, rng=0))):
            path = tmp_path / f"{weight_dtype}.safetensors"
            fastlstm.quantize(module, weight_dtype).save(path)
            with pytest.raises(ValueError, match=f"stored as {weight_dtype}.*not float64"):
                cls.from_state_dict(path, dtype="float64")
            assert cls.from_state_dict(path).weight_dtype == weight_dtype
    with pytest.raises(ValueError, match="need a float32 module, got float64"):
        fastlstm.LSTM(4, 5, dtype="float64", rng=0)._set_weight_dtype("int8")


def test_inspect_finds_int8_modules(tmp_path):
    q = fastlstm.quantize(fastlstm.LSTM(5, 8, num_layers=2, rng=0), "int8")
    q.save(tmp_path / "q.safetensors", prefix="enc.rnn")
    found = fastlstm.inspect(tmp_path / "q.safetensors")
    assert [(m.kind, m.prefix, m.dtype) for m in found.modules] == [("LSTM", "enc.rnn.", "int8")]
    assert found.modules[0].config["num_layers"] == 2
    assert found.tensors == {}  # the values and scales are the module's keys
    assert found.modules[0].num_parameters == sum(v.size for v in q.state_dict().values())
    with pytest.raises(fastlstm.StateDictError, match="found under 'enc.rnn.'"):
        fastlstm.LSTM.from_state_dict(tmp_path / "q.safetensors")


def test_bad_int8_entries_are_refused(tmp_path):
    good = fastlstm.quantize(fastlstm.LSTMCell(3, 5, rng=0), "int8")
    good.save(tmp_path / "c.safetensors")
    arrays = fastlstm.load(tmp_path / "c.safetensors")
    for key, value, match in (("weight_ih_scale", np.float32([1.0, 2.0]), "scales of shape"),
                              ("weight_ih_int8", np.zeros((20, 3), np.int16), "int8 matrix"),
                              ("weight_hh_scale", np.full(20, -1, np.float32), "not negative")):
        broken = dict(arrays, **{key: value})
        with pytest.raises(fastlstm.StateDictError, match=match):
            fastlstm.LSTMCell.from_state_dict(broken)


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
def test_a_trained_model_keeps_its_accuracy():
    """A small LSTM trained here keeps its test accuracy within 0.5 points with int8
    weights, per row and per matrix."""
    lstm, w, b, x, y = trained_lstm()
    f32 = fastlstm.LSTM.from_torch(lstm)
    full = accuracy(f32, w, b, x, y)
    assert full >= 0.9, full  # it did learn the task
    for per_channel in (True, False):
        small = accuracy(fastlstm.quantize(f32, "int8", per_channel=per_channel), w, b, x, y)
        assert abs(small - full) <= 0.005, (per_channel, full, small)


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
def test_error_is_at_most_torchs_dynamic_int8():
    """On the same weights and inputs, fastlstm's int8 error against float32 is at most
    that of torch's ``quantize_dynamic`` (per matrix weights, activations per batch)."""
    torch = TORCH
    rng = np.random.default_rng(8)
    for hidden, layers, batch in ((64, 1, 1), (128, 2, 8), (256, 1, 16)):
        torch.manual_seed(hidden)
        t = torch.nn.LSTM(hidden, hidden, num_layers=layers)
        # quantize_dynamic swaps children only: the LSTM goes in a container.
        tq = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(t), {torch.nn.LSTM},
                                                    dtype=torch.qint8)[0]
        assert "quantized" in type(tq).__module__
        x = rng.standard_normal((30, batch, hidden)).astype(np.float32)
        with torch.no_grad():
            want = t(torch.from_numpy(x))[0].numpy()
            theirs = np.abs(tq(torch.from_numpy(x))[0].numpy() - want).max()
        base = fastlstm.LSTM.from_torch(t)
        for per_channel in (True, False):
            ours = np.abs(fastlstm.quantize(base, "int8", per_channel=per_channel)(x)[0]
                          - want).max()
            assert 0 < ours <= theirs, (hidden, per_channel, ours, theirs)


def test_amx_batches_are_shared_by_units():
    q = fastlstm.quantize(fastlstm.LSTM(256, 256, rng=0), "int8")
    # An L2 of 2 MiB: the rule by W_hh's size against the L2 (256 KiB here, at least
    # half of a 512 KiB L2) stays out of it.
    tuning = kernels.Tuning(l2_bytes=2 << 20)

    def chunks(batch):
        return kernels.schedule(q._packed_layers()[0], batch, 100, 256, 2, tuning=tuning)[1]

    if "amx-int8" in kernels.int8_levels():
        assert (chunks(16), chunks(31), chunks(32)) == (0, 0, 2)
    level = kernels.int8_level()
    try:
        kernels.set_int8_level("avx512" if "avx512" in kernels.int8_levels() else "portable")
        assert chunks(16) == 2
    finally:
        kernels.set_int8_level(level)


@pytest.mark.skipif(TORCH is None, reason="needs torch (installed in CI)")
@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
def test_from_torch_takes_torchs_dynamic_quantized_modules():
    """torch's int8 weights and scales are kept as they are (q may be -128, the scales are
    torch's): the module computes with exactly torch's dequantized weights; float16
    weights become float32 values."""
    torch = TORCH
    rng = np.random.default_rng(9)
    dyn = torch.ao.quantization
    torch.manual_seed(0)
    cases = [(torch.nn.LSTM(12, 20, num_layers=2, bidirectional=True), "LSTM"),
             (torch.nn.LSTMCell(12, 20), "LSTMCell")]
    for float_module, kind in cases:
        for spec, dtype in ((None, torch.qint8), (dyn.per_channel_dynamic_qconfig, torch.qint8),
                            (None, torch.float16)):
            qconfig = {type(float_module): spec} if spec else {type(float_module)}
            tq = dyn.quantize_dynamic(torch.nn.Sequential(float_module), qconfig,
                                      dtype=dtype)[0]
            cls = getattr(fastlstm, kind)
            ours = cls.from_torch(tq)
            assert ours.weight_dtype == ("int8" if dtype == torch.qint8 else "float32")
            torch_weights = tq.get_weight()  # torch's packed weights, unpacked by torch
            assert sorted(torch_weights) == sorted(k for k in ours.state_dict()
                                                   if k.startswith("weight_"))
            for name, want in torch_weights.items():
                want = want.dequantize() if want.is_quantized else want
                np.testing.assert_array_equal(ours.state_dict()[name], want.float().numpy())
            x = rng.standard_normal((6, 3, 12)).astype(np.float32)
            with torch.no_grad():
                if kind == "LSTM":
                    want = tq(torch.from_numpy(x))[0].numpy()
                    got = ours(x)[0]
                else:
                    want = tq(torch.from_numpy(x[0]))[0].numpy()
                    got = ours(x[0])[0]
            # the weights are torch's; the activations' quantization differs (torch:
            # unsigned 8 bits per batch, ours: symmetric per row)
            assert np.abs(got - want).max() < (3e-2 if dtype == torch.qint8 else 1e-5), (
                kind, spec, dtype)
            # Loading its own state_dict keeps torch's int8 values and scales (quantizing
            # them anew would take other scales); a changed weight is quantized anew.
            state = ours.state_dict()
            ours.load_state_dict(state)
            for name, value in state.items():
                np.testing.assert_array_equal(ours.state_dict()[name], value, err_msg=name)
            np.testing.assert_array_equal(ours(x if kind == "LSTM" else x[0])[0], got)
            if dtype == torch.qint8:
                name = next(iter(torch_weights))
                changed = state[name] * np.float32(1.001)
                ours.load_state_dict({name: changed}, strict=False)
                oq, os_ = int8_weight(changed, per_channel=ours.__dict__["_per_channel"])
                np.testing.assert_array_equal(ours.state_dict()[name], (
                    oq * os_[:, None].astype(np.float64)).astype(np.float32))
    with pytest.raises(TypeError, match="expects a torch.nn.LSTM .*got a quantized LSTMCell"):
        fastlstm.LSTM.from_torch(tq)
    with pytest.raises(ValueError, match="converts to float32"):
        fastlstm.LSTMCell.from_torch(tq, dtype="float64")
