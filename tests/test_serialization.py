"""fastlstm.load / save / inspect and from_state_dict, against torch.load and safetensors.

torch (``torch.load(..., weights_only=True)``, torch's modules) and the
``safetensors`` package are the oracles; both are required in CI.
"""

import doctest
import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from _helpers import IN_CI, torch_single_thread
from _helpers.weights_files import (
    compress,
    glob,
    integer,
    models,
    raw_zip,
    seq2seq,
    storage_id,
    tensor,
    text,
    torch_legacy,
    torch_zip,
    tup,
    views_state_dict,
)

import fastlstm
from fastlstm import StateDictError, UnsafeFileError, WeightsFormatError

ROOT = Path(__file__).resolve().parents[1]
_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)
FORMATS = ["zip", "legacy"]
# torch's warnings about what the tests do on purpose (old formats and features).
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*not supported with oneDNN"),
    pytest.mark.filterwarnings("ignore:.*Detected pickle protocol"),
    pytest.mark.filterwarnings("ignore:.*quantized tensor creation"),
    pytest.mark.filterwarnings("ignore:.*torch.jit.*is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="session")
def safetensors():
    """The safetensors package (an oracle only): required in CI, else skips."""
    try:
        import safetensors.numpy  # noqa: F401
    except ImportError:
        if IN_CI:
            raise RuntimeError("safetensors is required in CI: install the 'test' extra") from None
        pytest.skip("safetensors is not installed")
    import safetensors

    return safetensors


def torch_save(torch, obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def assert_same_as_torch(torch, got, path, weights_only=True):
    """Every array of ``got`` equals what torch.load(weights_only=True) gives, keys in order."""
    ref = torch.load(path, weights_only=weights_only)
    assert list(got) == list(ref)
    for key, value in ref.items():
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        expected = value.numpy()
        assert got[key].dtype == expected.dtype, key
        assert got[key].shape == expected.shape, key
        np.testing.assert_array_equal(got[key], expected, err_msg=key)
        assert got[key].flags.writeable and got[key].flags.c_contiguous


# ------------------------------------------------------- torch checkpoints
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", ["seq2seq", "bidirectional_projected", "cells"])
def test_load_state_dicts_of_real_models(torch, tmp_path, fmt, model):
    path = torch_save(torch, models(torch)[model], tmp_path / "model.pt", fmt)
    assert_same_as_torch(torch, fastlstm.load(path), path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_views_offsets_shared_storages_and_dtypes(torch, tmp_path, fmt):
    path = torch_save(torch, views_state_dict(torch), tmp_path / "views.pt", fmt)
    got = fastlstm.load(path)
    assert_same_as_torch(torch, got, path)
    assert got["half"].dtype == np.float16 and got["bfloat16"].dtype == np.float32
    assert not np.shares_memory(got["tied.a"], got["tied.b"])
    # An LSTM whose parameters are views into one flat storage loads and runs.
    rnn = fastlstm.LSTM.from_state_dict(got, prefix="rnn")
    assert (rnn.num_layers, rnn.hidden_size) == (2, 6)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_other_pickle_protocols(torch, tmp_path, protocol):
    path = tmp_path / "model.pt"
    torch.save(views_state_dict(torch), path, pickle_protocol=protocol)
    # torch's own restricted unpickler lacks protocol 4's FRAME: the file is
    # this test's own, so torch may load it unrestricted.
    assert_same_as_torch(torch, fastlstm.load(path), path, weights_only=protocol == 2)


def test_load_checkpoint_with_nested_containers(torch, tmp_path):
    lstm = torch.nn.LSTM(3, 5)
    checkpoint = {"model": lstm.state_dict(), "epoch": 7, "history": [torch.ones(2), 0.5],
                  "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "lr": 0.1}}
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)
    got = fastlstm.load(path)
    assert list(got) == ["model." + k for k in lstm.state_dict()] + [
        "history.0", "optimizer.state.0.step"]
    np.testing.assert_array_equal(got["model.weight_hh_l0"], lstm.weight_hh_l0.detach().numpy())
    rnn = fastlstm.LSTM.from_state_dict(path, prefix="model.")
    assert (rnn.input_size, rnn.hidden_size) == (3, 5)


def test_load_big_endian_archive(torch, tmp_path):
    # torch writes the machine's byte order in the 'byteorder' record; a file
    # written on a big-endian machine has its storages byte-swapped.
    values = np.arange(6, dtype=np.float64) * 1.5
    halves = np.array([1.5, -2.25], dtype=np.float16)
    pkl = (b"\x80\x02}" + text("d") + tensor("0", 6, 0, (2, 3), (3, 1), "DoubleStorage") + b"s"
           + text("h") + tensor("1", 2, 0, (2,), (1,), "HalfStorage") + b"s.")
    path = torch_zip(tmp_path / "big.pt", pkl, {"0": values.astype(">f8").tobytes(),
                                                 "1": halves.astype(">f2").tobytes()},
                     byteorder=b"big")
    got = fastlstm.load(path)
    np.testing.assert_array_equal(got["d"], values.reshape(2, 3))
    np.testing.assert_array_equal(got["h"], halves)
    assert got["d"].dtype.isnative
    assert_same_as_torch(torch, got, path)


def test_load_archive_without_crc(torch, tmp_path):
    from torch.utils.serialization import config

    saved = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        path = torch_save(torch, models(torch)["cells"], tmp_path / "nocrc.pt", "zip")
    finally:
        config.save.compute_crc32 = saved
    assert_same_as_torch(torch, fastlstm.load(path), path)


def test_load_file_objects(torch, tmp_path):
    path = torch_save(torch, models(torch)["cells"], tmp_path / "m.pt", "zip")
    data = path.read_bytes()
    with open(path, "rb") as file:
        assert_same_as_torch(torch, fastlstm.load(file), path)
    buf = io.BytesIO(b"junk" + data)
    buf.seek(4)  # read from the current position, as torch.load does
    assert_same_as_torch(torch, fastlstm.load(buf), path)


# ----------------------------------------------- modules from the weights
def _forward_both(torch, torch_module, fast_module, x):
    with torch.no_grad():
        ref = torch_module(torch.from_numpy(x))
    got = fast_module(x)
    return ref, got


@pytest.mark.parametrize("fmt", FORMATS)
def test_from_state_dict_runs_like_torch(torch, tmp_path, fmt):
    model = seq2seq(torch)
    path = torch_save(torch, model.state_dict(), tmp_path / "seq2seq.pt", fmt)
    encoder = fastlstm.LSTM.from_state_dict(path, prefix="encoder.rnn.", batch_first=True)
    decoder = fastlstm.LSTM.from_state_dict(path, prefix="decoder.rnn", batch_first=True)
    assert repr(encoder) == "LSTM(8, 16, num_layers=2, batch_first=True)"
    assert repr(decoder) == "LSTM(16, 24, proj_size=12, batch_first=True)"
    x = np.random.default_rng(0).standard_normal((3, 5, 8)).astype(np.float32)
    (ref_out, (ref_h, ref_c)), (out, (h, c)) = _forward_both(
        torch, model["encoder"]["rnn"], encoder, x)
    for a, b in ((out, ref_out), (h, ref_h), (c, ref_c)):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-5)
    (ref_dec, _), (dec, _) = _forward_both(torch, model["decoder"]["rnn"], decoder, out)
    np.testing.assert_allclose(dec, ref_dec.numpy(), atol=1e-5)


def test_from_state_dict_bidirectional_projected_and_cells(torch, tmp_path):
    torch.manual_seed(3)
    lstm = torch.nn.LSTM(6, 20, num_layers=2, bidirectional=True, proj_size=5)
    cell = torch.nn.LSTMCell(7, 9)
    path = tmp_path / "m.pt"
    torch.save({**{"lstm." + k: v for k, v in lstm.state_dict().items()},
                **{"cell." + k: v for k, v in cell.state_dict().items()}}, path)
    fast = fastlstm.LSTM.from_state_dict(path, prefix="lstm.")
    assert (fast.bidirectional, fast.proj_size, fast.num_layers) == (True, 5, 2)
    x = np.random.default_rng(1).standard_normal((4, 2, 6)).astype(np.float32)
    (ref, _), (out, _) = _forward_both(torch, lstm, fast, x)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)
    fast_cell = fastlstm.LSTMCell.from_state_dict(path, prefix="cell.")
    xc = np.random.default_rng(2).standard_normal((3, 7)).astype(np.float32)
    (ref_h, ref_c), (h, c) = _forward_both(torch, cell, fast_cell, xc)
    np.testing.assert_allclose(h, ref_h.numpy(), atol=1e-5)
    # A torch state dict in memory works as well as a file.
    same = fastlstm.LSTMCell.from_state_dict(cell.state_dict())
    np.testing.assert_array_equal(same.weight_ih, fast_cell.weight_ih)


def test_from_state_dict_dtypes(torch):
    lstm64 = torch.nn.LSTM(3, 4, dtype=torch.float64)
    assert fastlstm.LSTM.from_state_dict(lstm64.state_dict()).dtype == np.float64
    assert fastlstm.LSTM.from_state_dict(lstm64.state_dict(), dtype="float32").dtype == np.float32
    half = {k: v.half() for k, v in torch.nn.LSTM(3, 4).state_dict().items()}
    fast = fastlstm.LSTM.from_state_dict(half)
    assert fast.dtype == np.float32
    np.testing.assert_array_equal(fast.weight_ih_l0, half["weight_ih_l0"].float().numpy())
    bf = {k: v.bfloat16() for k, v in torch.nn.LSTM(3, 4).state_dict().items()}
    fast = fastlstm.LSTM.from_state_dict(bf)
    np.testing.assert_array_equal(fast.weight_hh_l0, bf["weight_hh_l0"].float().numpy())


def _weights(**config):
    return fastlstm.LSTM(**config, rng=0).state_dict()


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("weight_hh_l1"), "missing 'weight_hh_l1'|missing weight_hh_l1"),
    (lambda sd: sd.pop("bias_ih_l1"), "missing bias_ih_l1"),
    (lambda sd: sd.__setitem__("weight_hr_l1", np.zeros((3, 8))), "unexpected weight_hr_l1"),
    (lambda sd: sd.__setitem__("weight_ih_l1_reverse", np.zeros((32, 8))),
     "missing weight_ih_l0_reverse, weight_hh_l0_reverse"),
    (lambda sd: sd.__setitem__("weight_hh_l1", np.zeros((32, 7))),
     r"'weight_hh_l1' has shape \(32, 7\), expected \(32, 8\)"),
    (lambda sd: sd.__setitem__("weight_ih_l0", np.zeros((30, 5))), "30 rows, not 4"),
    (lambda sd: sd.pop("weight_ih_l0"), "missing 'weight_ih_l0'"),
    (lambda sd: sd.__setitem__("weight_ih_l0", np.zeros(32)), "2-D array is expected"),
])
def test_from_state_dict_inconsistent_keys(edit, message):
    sd = dict(_weights(input_size=5, hidden_size=8, num_layers=2))
    edit(sd)
    with pytest.raises(StateDictError, match=message):
        fastlstm.LSTM.from_state_dict(sd)


def test_from_state_dict_errors_name_prefixes_and_other_modules(torch):
    sd = {"enc.rnn." + k: v for k, v in _weights(input_size=3, hidden_size=4).items()}
    with pytest.raises(StateDictError, match=r"found under 'enc\.rnn\.': pass one as prefix="):
        fastlstm.LSTM.from_state_dict(sd)
    with pytest.raises(StateDictError, match="holds no LSTMCell"):
        fastlstm.LSTMCell.from_state_dict(sd, prefix="enc.rnn.")
    with pytest.raises(StateDictError, match="hidden_size=5 was given.*hidden_size=4"):
        fastlstm.LSTM.from_state_dict(sd, prefix="enc.rnn.", hidden_size=5)
    gru = torch.nn.GRU(4, 8).state_dict()
    with pytest.raises(StateDictError, match="a GRU, not an LSTM"):
        fastlstm.LSTM.from_state_dict(gru)
    with pytest.raises(StateDictError, match="an RNN, not an LSTM"):
        fastlstm.LSTM.from_state_dict(torch.nn.RNN(4, 8).state_dict())
    bad_proj = dict(_weights(input_size=3, hidden_size=4))
    bad_proj["weight_hr_l0"] = np.zeros((6, 4))
    with pytest.raises(StateDictError, match="proj_size has to be smaller than hidden_size"):
        fastlstm.LSTM.from_state_dict(bad_proj)
    with pytest.raises(StateDictError, match="missing 'weight_ih'"):
        fastlstm.LSTMCell.from_state_dict({"weight_hh": np.zeros((8, 2))})


def test_from_state_dict_ignores_other_keys_and_submodules():
    sd = {"m.scale": np.ones(1), "m.sub.weight_ih_l0": np.ones((4, 4)), "head.weight": np.ones(3)}
    sd.update({"m." + k: v for k, v in _weights(input_size=2, hidden_size=3).items()})
    rnn = fastlstm.LSTM.from_state_dict(sd, prefix="m")
    assert (rnn.input_size, rnn.hidden_size, rnn.bias) == (2, 3, True)


# ----------------------------------------------------------------- inspect
def test_inspect_lists_modules_and_other_tensors(torch, tmp_path):
    path = torch_save(torch, seq2seq(torch).state_dict(), tmp_path / "s.pt", "zip")
    found = fastlstm.inspect(path)
    assert [(m.kind, m.prefix) for m in found.modules] == [
        ("LSTM", "encoder.rnn."), ("LSTM", "decoder.rnn.")]
    assert found.modules[0].config == dict(input_size=8, hidden_size=16, num_layers=2,
                                           bias=True, bidirectional=False, proj_size=0)
    assert found.modules[1].config["proj_size"] == 12
    assert list(found.tensors) == ["encoder.embedding.weight", "head.weight", "head.bias"]
    assert found.tensors["head.weight"] == ((50, 12), "float32")
    report = str(found)
    assert f"fastlstm.LSTM.from_state_dict({str(path)!r}, prefix='decoder.rnn.')" in report
    torch.manual_seed(0)
    cells = fastlstm.inspect({**{"gru." + k: v for k, v in torch.nn.GRU(3, 4).state_dict().items()},
                              **{"c." + k: v for k, v in torch.nn.LSTMCell(2, 5).state_dict()
                                 .items()}})
    assert [(m.kind, m.prefix, m.config) for m in cells.modules] == [
        ("LSTMCell", "c.", dict(input_size=2, hidden_size=5, bias=True))]
    assert any("GRU" in note for note in cells.notes)
    assert "gru.weight_ih_l0" in cells.tensors
    assert found.to_dict()["modules"][0]["prefix"] == "encoder.rnn."


# --------------------------------------------------------- without torch
_NO_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("torch could be imported")

    import numpy as np
    import fastlstm

    path, x_path, out_path = sys.argv[1:]
    print(fastlstm.inspect(path))
    encoder = fastlstm.LSTM.from_state_dict(path, prefix="encoder.rnn.", batch_first=True)
    decoder = fastlstm.LSTM.from_state_dict(path, prefix="decoder.rnn.", batch_first=True)
    out, _ = decoder(encoder(np.load(x_path))[0])
    np.save(out_path, out)
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
""")


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_build_and_run_where_torch_cannot_be_imported(torch, tmp_path, fmt):
    model = seq2seq(torch)
    path = torch_save(torch, model.state_dict(), tmp_path / "model.pt", fmt)
    x = np.random.default_rng(5).standard_normal((2, 6, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "child.py"
    script.write_text(_NO_TORCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "x.npy"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LSTM at 'encoder.rnn.'" in proc.stdout
    with torch.no_grad():
        ref, _ = model["decoder"]["rnn"](model["encoder"]["rnn"](torch.from_numpy(x))[0])
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), ref.numpy(), atol=1e-5)


# ---------------------------------------------------------- hostile files
class _Payload:
    """Pickles as a call of ``func(*args)``, as an attacker's file would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    import builtins
    import subprocess as sp

    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.eval": _Payload(builtins.eval, touch),
        "builtins.exec": _Payload(builtins.exec, touch),
        "subprocess.call": _Payload(sp.call, ["touch", str(marker)]),
        "subprocess.Popen": _Payload(sp.Popen, ["touch", str(marker)]),
        "pickle.loads": _Payload(pickle.loads, pickle.dumps(_Payload(os.system,
                                                                      f"touch {marker}"))),
        "builtins.getattr": _Payload(getattr, str(marker), "upper"),
        "pathlib": _Payload(Path.touch, Path(marker)),
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("name", list(_payloads("m")))
def test_hostile_pickles_are_refused_and_run_nothing(torch, tmp_path, fmt, protocol, name):
    marker = tmp_path / "marker"
    payload = _payloads(marker)[name]
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(3), "x": payload}, path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=(fmt == "zip"))
    with pytest.raises(UnsafeFileError, match="refused global") as info:
        fastlstm.load(path)
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, ValueError)
    assert "nothing from this file was run" in str(info.value)
    for fn in (fastlstm.inspect, fastlstm.LSTM.from_state_dict):
        with pytest.raises(UnsafeFileError):
            fn(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the oracle refuses it too
        torch.load(path, weights_only=True)
    assert not marker.exists()


def _system(marker):
    return text(f"touch {marker}")


def _crafted(marker):
    """Raw pickles that try every way of calling something (and a few of mutating)."""
    cmd = _system(marker)
    rebuild = glob("torch._utils", "_rebuild_tensor_v2")
    return {
        "REDUCE os.system": glob("os", "system") + b"(" + cmd + b"tR",
        "INST": b"(" + cmd + b"ios\nsystem\n",
        "OBJ": b"(" + glob("os", "system") + cmd + b"o",
        "NEWOBJ": glob("collections", "OrderedDict") + b")\x81",
        "STACK_GLOBAL": text("os") + text("system") + b"\x93(" + cmd + b"tR",
        "STACK_GLOBAL allowed name": text("collections") + text("OrderedDict") + b"\x93)\x81",
        "EXT1": b"\x82\xf0(" + cmd + b"tR",
        "PERSID": b"Pfoo\n",
        "BUILD on a stand-in": rebuild + b"N}" + text("name") + text("x") + b"s\x86b",
        "BUILD on a global class dict": glob("collections", "OrderedDict") + b"}" + text(
            "__setstate__") + text("x") + b"sb",
        "from_type with OrderedDict": glob("torch._tensor", "_rebuild_from_type_v2") + b"("
        + glob("collections", "OrderedDict") + glob("torch", "Tensor") + b")}tR",
        "a torch function": glob("torch", "load") + b"(" + cmd + b"tR",
        "nn.Module": glob("torch.nn.modules.rnn", "LSTM") + b")R",
        "numpy": glob("numpy.core.multiarray", "_reconstruct") + b")R",
        "huge memo index": b"N" + b"r\xff\xff\xff\x7f",
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(_crafted("m")))
def test_crafted_pickles_are_refused(tmp_path, fmt, name):
    import copyreg

    marker = tmp_path / "marker"
    body = _crafted(marker)[name]
    pkl = b"\x80\x04" + body + b"."
    path = tmp_path / "evil.pt"
    if fmt == "zip":
        torch_zip(path, pkl)
    else:
        torch_legacy(path, pkl)
    copyreg.add_extension("os", "system", 0xF0)  # what an EXT1 0xf0 would resolve to
    try:
        with pytest.raises(WeightsFormatError) as info:
            fastlstm.load(path)
    finally:
        copyreg.remove_extension("os", "system", 0xF0)
    if name != "huge memo index":
        assert isinstance(info.value, UnsafeFileError), info.value
    assert not marker.exists()


def test_refused_global_is_named_and_model_pickles_get_a_hint(torch, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.LSTM(2, 3), path)
    with pytest.raises(UnsafeFileError, match=r"'torch\.nn\.modules\.rnn\.LSTM' \(a pickled "
                                              r"model\? save model\.state_dict\(\) instead\)"):
        fastlstm.load(path)
    legacy = torch_legacy(tmp_path / "module.pt", b"\x80\x02(X\x06\x00\x00\x00moduleNNNtQ.")
    with pytest.raises(UnsafeFileError, match="pickled torch.nn.Module"):
        fastlstm.load(legacy)


def test_unsupported_tensors_are_refused_clearly(torch, tmp_path):
    path = tmp_path / "q.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, path)
    with pytest.raises(WeightsFormatError, match="quantized"):
        fastlstm.load(path)
    torch.save({"f8": torch.ones(2).to(torch.float8_e4m3fn)}, path)
    with pytest.raises(WeightsFormatError, match="float8_e4m3fn"):
        fastlstm.load(path)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(WeightsFormatError, match="TorchScript"):
        fastlstm.load(path)


# ---------------------------------------------- sizes, offsets and strides
def _sd(key, *args, **kwargs):
    return b"\x80\x02}" + text("t") + tensor(key, *args, **kwargs) + b"s."


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case, args, message", [
    ("storage larger than its data", ("0", 100, 0, (4,), (1,)),
     "declares 400 bytes|has 4 elements"),
    ("offset past the end", ("0", 4, 2, (4,), (1,)), "reaches element 5 of a storage of 4"),
    ("stride past the end", ("0", 4, 0, (2, 2), (3, 1)), "reaches element 4"),
    ("negative size", ("0", 4, 0, (-1,), (1,)), "integer >= 0, got -1"),
    ("negative stride", ("0", 4, 2, (2,), (-1,)), "integer >= 0, got -1"),
    ("negative offset", ("0", 4, -1, (2,), (1,)), "integer >= 0, got -1"),
    ("negative numel", ("0", -4, 0, (2,), (1,)), "integer >= 0, got -4"),
    ("size/stride lengths", ("0", 4, 0, (2, 2), (1,)), "differ in length"),
    ("too many dimensions", ("0", 4, 0, (1,) * 40, (1,) * 40), "at most 32"),
])
def test_bounds_are_checked(tmp_path, fmt, case, args, message):
    data = np.arange(4, dtype=np.float32).tobytes()
    path = tmp_path / "bad.pt"
    if fmt == "zip":
        torch_zip(path, _sd(*args), {"0": data})
    else:
        torch_legacy(path, _sd(*args, legacy=True), [("0", 4, data)])
    with pytest.raises(WeightsFormatError, match=message):
        fastlstm.load(path)


def test_views_cannot_multiply_a_storage_without_bound(tmp_path):
    entries = b"".join(text(f"t{i}") + tensor("0", 4, 0, (1 << 20,), (0,)) + b"s"
                       for i in range(100))
    path = torch_zip(tmp_path / "bomb.pt", b"\x80\x02}" + entries + b".",
                     {"0": bytes(16)})
    with pytest.raises(WeightsFormatError, match="expand to more than"):
        fastlstm.load(path)


def test_legacy_storage_list_is_checked(tmp_path):
    data = bytes(16)
    pkl = _sd("0", 4, 0, (4,), (1,), legacy=True)
    with pytest.raises(WeightsFormatError, match="unknown storage 'x'"):
        fastlstm.load(torch_legacy(tmp_path / "a.pt", pkl, [("x", 4, data)]))
    with pytest.raises(WeightsFormatError, match="storage '0' has no data"):
        fastlstm.load(torch_legacy(tmp_path / "b.pt", pkl, []))
    with pytest.raises(WeightsFormatError, match="3 elements in the data but 4"):
        fastlstm.load(torch_legacy(tmp_path / "c.pt", pkl, [("0", 3, data)]))
    with pytest.raises(WeightsFormatError, match="has 8 of its 16 bytes"):
        fastlstm.load(torch_legacy(tmp_path / "d.pt", pkl, [("0", 4, data[:8])]))


def test_legacy_storage_views(tmp_path):
    # Old torch versions wrote views of storages: (view_key, offset, numel) in elements.
    data = np.arange(6, dtype=np.float32).tobytes()
    pkl = (b"\x80\x02}" + text("a") + tensor("0", 6, 1, (2,), (1,), legacy=True, view=("v", 2, 3))
           + b"s" + text("b") + tensor("0", 6, 0, (3,), (2,), legacy=True) + b"s.")
    got = fastlstm.load(torch_legacy(tmp_path / "views.pt", pkl, [("0", 6, data)]))
    np.testing.assert_array_equal(got["a"], [3, 4])
    np.testing.assert_array_equal(got["b"], [0, 2, 4])
    outside = _sd("0", 6, 0, (2,), (1,), legacy=True, view=("v", 5, 3))
    with pytest.raises(WeightsFormatError, match="outside storage '0' of 6 elements"):
        fastlstm.load(torch_legacy(tmp_path / "bad.pt", outside, [("0", 6, data)]))
    past_view = _sd("0", 6, 2, (2,), (1,), legacy=True, view=("v", 2, 3))
    with pytest.raises(WeightsFormatError, match="reaches element 3 of a storage of 3"):
        fastlstm.load(torch_legacy(tmp_path / "past.pt", past_view, [("0", 6, data)]))


def test_zip_records_are_checked(tmp_path):
    pkl = _sd("0", 4, 0, (4,), (1,))
    with pytest.raises(WeightsFormatError, match="no record 'archive/data/0'"):
        fastlstm.load(torch_zip(tmp_path / "a.pt", pkl, {}))
    with pytest.raises(WeightsFormatError, match="unknown byte order"):
        fastlstm.load(torch_zip(tmp_path / "b.pt", pkl, {"0": bytes(16)}, byteorder=b"middle"))
    with pytest.raises(WeightsFormatError, match="declared twice"):
        twice = (b"\x80\x02}" + text("a") + tensor("0", 4, 0, (4,), (1,)) + b"s" + text("b")
                 + tensor("0", 2, 0, (2,), (1,), "DoubleStorage") + b"s.")
        fastlstm.load(torch_zip(tmp_path / "c.pt", twice, {"0": bytes(16)}))


# ----------------------------------------------- truncated and corrupt files
def _files(tmp_path):
    """One small file per format, of the same state dict."""
    import torch

    sd = models(torch)["cells"]
    arrays = {k: v.numpy() for k, v in sd.items()}
    paths = {
        "zip": torch_save(torch, sd, tmp_path / "m.pt", "zip"),
        "legacy": torch_save(torch, sd, tmp_path / "m_legacy.pt", "legacy"),
        "safetensors": tmp_path / "m.safetensors",
        "npz": tmp_path / "m.npz",
    }
    fastlstm.save(arrays, paths["safetensors"])
    fastlstm.save(arrays, paths["npz"])
    return arrays, paths


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors", "npz"])
def test_truncated_files_raise(torch, tmp_path, fmt):
    arrays, paths = _files(tmp_path)
    data = paths[fmt].read_bytes()
    assert set(fastlstm.load(io.BytesIO(data))) == set(arrays)
    n = len(data)
    for size in sorted(set(range(0, n, max(1, n // 200))) | set(range(max(0, n - 40), n))):
        with pytest.raises(WeightsFormatError):
            fastlstm.load(io.BytesIO(data[:size]))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors", "npz"])
def test_corrupt_bytes_raise_or_load(torch, tmp_path, fmt):
    _, paths = _files(tmp_path)
    data = paths[fmt].read_bytes()
    rng = np.random.default_rng(7)
    for _ in range(300):
        corrupt = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            corrupt[pos] = rng.integers(0, 256)
        try:
            fastlstm.load(io.BytesIO(bytes(corrupt)))
        except WeightsFormatError:
            pass


def test_not_weights_files(tmp_path):
    cases = {
        "empty": b"",
        "text": b"hello world, not weights",
        "npy": b"\x93NUMPY\x01\x00",
        "tar": bytes(257) + b"ustar" + bytes(300),
        "zip of other things": None,
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is None:
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("readme.txt", "hi")
        else:
            path.write_bytes(data)
        with pytest.raises(WeightsFormatError):
            fastlstm.load(path)
    with pytest.raises(FileNotFoundError):
        fastlstm.load(tmp_path / "missing.pt")


# ------------------------------------------------------- safetensors and npz
def _mixed():
    rng = np.random.default_rng(3)
    return {
        "rnn.weight_ih_l0": rng.standard_normal((8, 3)).astype(np.float32),
        "half": rng.standard_normal((2, 3)).astype(np.float16),
        "double": rng.standard_normal(5),
        "ints": np.arange(6, dtype=np.int64).reshape(2, 3),
        "bytes": np.arange(4, dtype=np.uint8),
        "mask": np.array([True, False]),
        "scalar": np.float32(1.5).reshape(()),
        "empty": np.zeros((0, 4), np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)),
        "bigendian": np.arange(3, dtype=">i4"),
    }


def _assert_equal_dicts(got, expected, native=True):
    assert set(got) == set(expected)
    for key, value in expected.items():
        value = np.asarray(value)
        dtype = np.asarray(got[key]).dtype
        assert dtype == (value.dtype.newbyteorder("=") if native else value.dtype), key
        assert np.shape(got[key]) == value.shape, key  # a 0-D array stays 0-D
        np.testing.assert_array_equal(np.asarray(got[key]), value, err_msg=key)


def test_safetensors_round_trips_with_the_package(safetensors, tmp_path):
    import safetensors.numpy as st_numpy

    arrays = _mixed()
    path = tmp_path / "a.safetensors"
    fastlstm.save(arrays, path, metadata={"format": "pt", "note": "x"})
    _assert_equal_dicts(st_numpy.load_file(path), arrays)
    _assert_equal_dicts(fastlstm.load(path), arrays)
    native = {k: np.require(v, v.dtype.newbyteorder("="), ["C"]) for k, v in arrays.items()}
    st_numpy.save_file(native, tmp_path / "b.safetensors")
    _assert_equal_dicts(fastlstm.load(tmp_path / "b.safetensors"), arrays)


def test_safetensors_with_torch(torch, safetensors, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(4)
    lstm = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    tensors = {"rnn." + k: v.detach() for k, v in lstm.state_dict().items()}
    tensors["bf16"] = torch.randn(3, 4).bfloat16()
    tensors["fp16"] = torch.randn(4).half()
    save_file(tensors, tmp_path / "torch.safetensors")
    got = fastlstm.load(tmp_path / "torch.safetensors")
    np.testing.assert_array_equal(got["bf16"], tensors["bf16"].float().numpy())
    np.testing.assert_array_equal(got["fp16"], tensors["fp16"].numpy())
    fast = fastlstm.LSTM.from_state_dict(tmp_path / "torch.safetensors", prefix="rnn.")
    # fastlstm's file goes back into torch through the package, and runs the same.
    fast.save(tmp_path / "fast.safetensors")
    back = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    back.load_state_dict(load_file(tmp_path / "fast.safetensors"))
    x = np.random.default_rng(0).standard_normal((4, 2, 5)).astype(np.float32)
    with torch.no_grad():
        ref, _ = back(torch.from_numpy(x))
    np.testing.assert_allclose(fast(x)[0], ref.numpy(), atol=1e-5)
    fastlstm.save(lstm.state_dict(), tmp_path / "direct.safetensors")  # torch tensors in
    for key, value in load_file(tmp_path / "direct.safetensors").items():
        torch.testing.assert_close(value, lstm.state_dict()[key], rtol=0, atol=0)


def test_npz_round_trips(tmp_path):
    arrays = _mixed()
    fastlstm.save(arrays, tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        _assert_equal_dicts(dict(npz), arrays, native=False)
    _assert_equal_dicts(fastlstm.load(tmp_path / "a.npz"), arrays)
    np.savez_compressed(tmp_path / "b.npz", **{k.replace(".", "_"): v for k, v in arrays.items()})
    assert set(fastlstm.load(tmp_path / "b.npz")) == {k.replace(".", "_") for k in arrays}
    cell = fastlstm.LSTMCell(3, 4, rng=0)
    cell.save(tmp_path / "cell.npz", prefix="dec.cell")
    assert list(np.load(tmp_path / "cell.npz")) == ["dec.cell." + k for k in cell.state_dict()]
    again = fastlstm.LSTMCell.from_state_dict(tmp_path / "cell.npz", prefix="dec.cell")
    np.testing.assert_array_equal(again.weight_hh, cell.weight_hh)


def test_save_refuses_what_the_format_cannot_hold_or_load_would_refuse(tmp_path):
    for bad in (np.array(["ab"]), np.zeros(2, "M8[s]"), np.zeros(2, [("a", "f4")])):
        with pytest.raises(TypeError, match="cannot save 'a'"):
            fastlstm.save({"a": bad}, tmp_path / "a.npz")
        assert not (tmp_path / "a.npz").exists()
    with pytest.raises(ValueError, match="'__metadata__'"):
        fastlstm.save({"__metadata__": np.ones(2, np.float32)}, tmp_path / "m.safetensors")
    # bfloat16= checks the values given, not their float32 rounding.
    for bad in (np.array([1 + 2.0**-30]), np.array([2**24 + 1]), np.float32([1 + 2.0**-10])):
        with pytest.raises(ValueError, match="not bfloat16 values"):
            fastlstm.save({"w": bad}, tmp_path / "b.safetensors", bfloat16=["w"])
    good = {"w": np.array([1.5, -2.0**-130, np.nan, np.inf]), "n": np.array([3, -256]),
            "s": np.array(0.25)}
    fastlstm.save(good, tmp_path / "b.safetensors", bfloat16=list(good))
    _assert_equal_dicts(fastlstm.load(tmp_path / "b.safetensors"),
                        {k: v.astype(np.float32) for k, v in good.items()})


def test_text_mode_files_and_other_keys_are_refused_clearly(tmp_path):
    path = tmp_path / "w.safetensors"
    fastlstm.LSTM(3, 4, rng=0).save(path)
    with open(path, encoding="latin-1") as text_file:
        for call in (fastlstm.load, fastlstm.inspect, fastlstm.LSTM.from_state_dict):
            with pytest.raises(TypeError, match=r"binary mode \(open\(path, 'rb'\)\)"):
                call(text_file)
    state = dict(fastlstm.load(path))
    state[1] = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="keys must be strings, got int"):
        fastlstm.LSTM.from_state_dict(state)


def test_npz_object_arrays_are_refused_unpickled(tmp_path):
    marker = tmp_path / "marker"
    np.savez(tmp_path / "evil.npz", x=np.array([_Payload(os.system, f"touch {marker}")]))
    with pytest.raises(WeightsFormatError, match="dtype object"):
        fastlstm.load(tmp_path / "evil.npz")
    assert not marker.exists()


@pytest.mark.parametrize("header, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, "inconsistent"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, "outside"),
    ({"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, "not supported"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "invalid shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "overlap"),
    (b"{ not json", "corrupt safetensors header"),
])
def test_safetensors_headers_are_checked(tmp_path, header, message):
    import json
    import struct

    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    with pytest.raises(WeightsFormatError, match=message):
        fastlstm.load(path)


def test_save_arguments(tmp_path):
    with pytest.raises(ValueError, match="extension '.pt'"):
        fastlstm.save({"a": np.ones(1)}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="format must be"):
        fastlstm.save({"a": np.ones(1)}, tmp_path / "a.npz", format="pickle")
    with pytest.raises(TypeError, match="not supported"):
        fastlstm.save({"a": np.array(["x"])}, tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match="keys must be strings"):
        fastlstm.save({1: np.ones(1)}, tmp_path / "a.npz")
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_bytes_paths_save_and_load_as_str_paths(tmp_path):
    import os

    x = np.ones((2, 1, 3), np.float32)
    for weight_dtype in (None, "bfloat16", "int8"):
        module = fastlstm.LSTM(3, 4, rng=0)
        if weight_dtype:
            module = fastlstm.quantize(module, weight_dtype)
        for ext in (".safetensors", ".npz") if weight_dtype != "bfloat16" else (".safetensors",):
            path = os.fsencode(tmp_path / f"m-{weight_dtype}{ext}")
            module.save(path)
            loaded = fastlstm.LSTM.from_state_dict(path)
            assert loaded.weight_dtype == module.weight_dtype
            np.testing.assert_array_equal(loaded(x)[0], module(x)[0])


def test_docstring_examples():
    from fastlstm import _module, serialization

    for module in (serialization, _module):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0


def test_safetensors_header_length_starting_like_a_pickle(tmp_path):
    """A safetensors header length of 128 mod 256 starts the file with 0x80, the
    first byte of a pickle: the content decides, and it is safetensors."""
    for pad in range(300):
        state = {"w": np.arange(3, dtype=np.float32), "x" * (pad + 1): np.zeros(1, np.float32)}
        path = tmp_path / "t.safetensors"
        fastlstm.save(state, path)
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header length of 128 mod 256 was produced")
    loaded = fastlstm.load(path)
    assert set(loaded) == set(state)
    assert np.array_equal(loaded["w"], state["w"])
    module = fastlstm.LSTM(8, 16, bidirectional=True, rng=0)
    module.save(tmp_path / "m.safetensors")
    again = fastlstm.LSTM.from_state_dict(tmp_path / "m.safetensors")
    assert all(np.array_equal(a, b) for a, b in zip(module.parameters(), again.parameters()))


# ------------------------------------------- limits: bombs, devices, streams
_METHODS = {"deflate": zipfile.ZIP_DEFLATED, "bzip2": zipfile.ZIP_BZIP2}


def _storage_zip(path, method, raw, file_size, crc, numel):
    """A torch archive of one float32 storage of ``numel`` elements, its record as given."""
    pkl = _sd("0", numel, 0, (numel,), (1,))
    return raw_zip(path, [
        ("archive/data.pkl", zipfile.ZIP_STORED, pkl, len(pkl), zlib.crc32(pkl)),
        ("archive/data/0", method, raw, file_size, crc),
    ])


def _npz_member(path, method, raw, file_size, crc):
    return raw_zip(path, [("a.npy", method, raw, file_size, crc)])


def _npy(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["zip", "npz"])
def test_compressed_member_past_a_sane_ratio_is_refused_before_decompressing(tmp_path, fmt):
    # 4 MiB of zeros take ~50 bytes of bzip2 (a real bomb: gigabytes from kilobytes).
    data = bytes(4 << 20) if fmt == "zip" else _npy(np.zeros(1 << 20, np.float32))
    raw = compress(data, zipfile.ZIP_BZIP2)
    args = (zipfile.ZIP_BZIP2, raw, len(data), zlib.crc32(data))
    path = (_storage_zip(tmp_path / "bomb.pt", *args, numel=1 << 20) if fmt == "zip"
            else _npz_member(tmp_path / "bomb.npz", *args))
    with pytest.raises(WeightsFormatError, match="more than compression can give"):
        fastlstm.load(path)


@pytest.mark.parametrize("method", list(_METHODS))
@pytest.mark.parametrize("fmt", ["zip", "npz"])
def test_compressed_member_is_never_decompressed_past_its_declared_size(tmp_path, fmt, method):
    # The headers declare the data; the stream holds 1 MiB more (zipfile would
    # stop at the declared size for deflate, but decompress a whole bzip2 read).
    data = bytes(256) if fmt == "zip" else _npy(np.zeros(64, np.float32))
    raw = compress(data + bytes(1 << 20), _METHODS[method])
    args = (_METHODS[method], raw, len(data), zlib.crc32(data))
    path = (_storage_zip(tmp_path / "lying.pt", *args, numel=64) if fmt == "zip"
            else _npz_member(tmp_path / "lying.npz", *args))
    with pytest.raises(WeightsFormatError, match=f"decompresses to more than the {len(data)} "
                                                 "bytes it declares"):
        fastlstm.load(path)
    honest = compress(data, _METHODS[method])  # the same member, honest, loads
    args = (_METHODS[method], honest, len(data), zlib.crc32(data))
    path = (_storage_zip(tmp_path / "ok.pt", *args, numel=64) if fmt == "zip"
            else _npz_member(tmp_path / "ok.npz", *args))
    assert fastlstm.load(path)["t" if fmt == "zip" else "a"].shape == (64,)


def test_data_pkl_over_the_size_limit_is_refused_before_decompressing(tmp_path):
    # A data.pkl that claims 65 MiB (and 1.5 GB, as the audit's did) from a few bytes.
    pkl = b"\x80\x02}."
    raw = compress(pkl, zipfile.ZIP_BZIP2)
    for size in (65 << 20, 1_610_612_740):
        path = raw_zip(tmp_path / "pkl.pt", [("archive/data.pkl", zipfile.ZIP_BZIP2, raw, size,
                                              zlib.crc32(pkl))])
        with pytest.raises(WeightsFormatError, match=rf"'archive/data.pkl' holds {size} bytes, "
                                                     "more than the 64 MiB"):
            fastlstm.load(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickle_opcodes_and_bytes_are_bounded(tmp_path, monkeypatch, fmt):
    from fastlstm.io import torch_format as _torch_format

    def write(pkl):
        path = tmp_path / f"p{len(pkl)}.pt"
        return torch_zip(path, pkl) if fmt == "zip" else torch_legacy(path, pkl)

    # 256M "N0" opcodes (NONE, POP) took pickletools minutes: the scan stops at the limit.
    monkeypatch.setattr(_torch_format, "_MAX_OPCODES", 1000)
    with pytest.raises(WeightsFormatError, match="more than 1,000 pickle opcodes"):
        fastlstm.load(write(b"\x80\x02" + b"N0" * 600 + b"}."))
    assert fastlstm.load(write(b"\x80\x02" + b"N0" * 400 + b"}.")) == {}
    monkeypatch.setattr(_torch_format, "_MAX_PICKLE_BYTES", 4096)
    big = b"\x80\x02}" + text("k") + b"B" + (5000).to_bytes(4, "little") + bytes(5000) + b"s."
    with pytest.raises(WeightsFormatError, match="more than the 4,096 bytes fastlstm reads"):
        fastlstm.load(write(big))


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_keys_a_pickle_asks_for_are_bounded(tmp_path, monkeypatch, fmt):
    from fastlstm.io import torch_format as _torch_format

    def write(pkl):
        path = tmp_path / f"k{len(pkl)}.pt"
        return torch_zip(path, pkl) if fmt == "zip" else torch_legacy(path, pkl)

    monkeypatch.setattr(_torch_format, "_MAX_KEY_CHARS", 10_000)
    long_key = text("A" * 2000)
    # One long key over a list of numbers: no key is made for numbers, which are skipped.
    assert fastlstm.load(write(b"\x80\x02}" + long_key + b"](" + b"K\x00" * 1000
                               + b"es.")) == {}
    # The same key over a list of lists: each list's key counts.
    with pytest.raises(WeightsFormatError, match="more than 10,000 characters"):
        fastlstm.load(write(b"\x80\x02}" + long_key + b"](" + b"]" * 10 + b"es."))
    # A chain of dicts under one memoized long key: the keys grow with the depth.
    chain = b"\x80\x02}" + long_key + b"q\x00" + b"}h\x00" * 5 + b"}" + b"s" * 5 + b"s."
    with pytest.raises(WeightsFormatError, match="nested containers"):
        fastlstm.load(write(chain))


def _load_in_thread(path, timeout=10):
    """What fastlstm.load(path) raised, or fail if it is still running after ``timeout``."""
    import threading

    outcome = []

    def target():
        try:
            fastlstm.load(path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        # Unblock an open() that waits for a writer, so that the thread ends.
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout)
        pytest.fail(f"fastlstm.load({str(path)!r}) blocked")
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    exc = _load_in_thread(fifo)
    assert isinstance(exc, WeightsFormatError), exc
    assert "is a FIFO (named pipe), not a regular file" in str(exc)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_devices_are_refused_and_directories_raise_as_open_does(tmp_path):
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    for path in ("/dev/zero", tmp_path / "zero.pt"):
        with pytest.raises(WeightsFormatError, match="is a character device, not a regular"):
            fastlstm.load(path)
        with pytest.raises(WeightsFormatError, match="character device"):
            fastlstm.serialization.detect_format(path)
    with pytest.raises(IsADirectoryError):
        fastlstm.load(tmp_path)


class _Stream(io.RawIOBase):
    """A file object that is not seekable: ``data``, then zeros without end if ``endless``."""

    def __init__(self, data, endless=False, fail_after=8 << 20):
        self.data, self.endless, self.fail_after, self.given = data, endless, fail_after, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        assert self.given <= self.fail_after, "read past the limit"
        rest = self.data[self.given:self.given + len(buffer)]
        n = len(buffer) if self.endless else len(rest)
        buffer[:n] = rest + bytes(n - len(rest))
        self.given += n
        return n


def test_non_seekable_streams_are_read_up_to_a_limit(tmp_path, monkeypatch):
    from fastlstm.io import files

    fastlstm.save({"w": np.arange(3, dtype=np.float32)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    assert fastlstm.load(_Stream(data))["w"].tolist() == [0, 1, 2]
    monkeypatch.setattr(files, "_MAX_STREAM_BYTES", 1 << 20)
    with pytest.raises(WeightsFormatError, match="not seekable is read into memory, up to "
                                                 "1,048,576 bytes"):
        fastlstm.load(_Stream(b"", endless=True))  # as a file object of /dev/zero


@pytest.mark.parametrize("length", [10_000, 0x180, 1 << 40])
def test_safetensors_header_length_past_the_file_is_named(tmp_path, length):
    # 0x180 starts the file with 0x80, the first byte of a pickle: still safetensors.
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    path = tmp_path / "t.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(WeightsFormatError, match="(truncated or )?invalid safetensors file: its "
                                                 "header length"):
        fastlstm.load(path)


@pytest.mark.parametrize("header, message", [
    (b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
     b'"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', "key 'w' appears twice"),
    ({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
     r"dtype that is not a string \(JSON list\)"),
    ({"__metadata__": [1, {"x": 2}], "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
     "__metadata__ must map strings to strings"),
    ({"__metadata__": {"format": 2}}, "__metadata__ must map strings to strings"),
    ({"w": {"dtype": "F32", "shape": [0, 1 << 62, 1 << 62], "data_offsets": [0, 0]}},
     "invalid shape"),
])
def test_safetensors_headers_are_validated_as_the_format_specifies(tmp_path, header, message):
    import json
    import struct

    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(WeightsFormatError, match=message) as info:
        fastlstm.load(path)
    assert not str(info.value).startswith("corrupt or truncated file:"), info.value


@pytest.mark.parametrize("member, message", [
    (b"\x93NUMPY\x01\x00" + (64).to_bytes(2, "little")
     + b"__import__('os').system('touch x')".ljust(63) + b"\n",
     "invalid .npy header: it is not a literal dict"),
    (b"hello world", r"is not a \.npy array"),
    (b"\x93NUMPY\x01\x00" + (64).to_bytes(2, "little")
     + b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1, -4), }".ljust(63) + b"\n"
     + bytes(16), r"invalid shape \(-1, -4\)"),
])
def test_npz_headers_get_clean_messages(tmp_path, member, message):
    path = raw_zip(tmp_path / "bad.npz", [("a.npy", zipfile.ZIP_STORED, member, len(member),
                                           zlib.crc32(member))])
    with pytest.raises(WeightsFormatError, match=message) as info:
        fastlstm.load(path)
    assert " at 0x" not in str(info.value) and "ast." not in str(info.value)


_NOT_WEIGHTS = {
    "unicode": np.array(["abc"]),
    "bytes": np.array([b"abc"]),
    "datetime64": np.array([1], "M8[s]"),
    "timedelta64": np.array([1], "m8[s]"),
    "void": np.zeros(2, "V16"),
    "structured": np.zeros(2, [("a", "<f4"), ("b", "<i4")]),
    "longdouble": np.zeros(2, np.longdouble),
    "clongdouble": np.zeros(2, np.clongdouble),
}


@pytest.mark.parametrize("kind", list(_NOT_WEIGHTS))
def test_npz_arrays_of_other_dtypes_than_weights_are_refused(tmp_path, kind):
    array = _NOT_WEIGHTS[kind]
    if array.dtype.itemsize <= {"longdouble": 8, "clongdouble": 16}.get(kind, 0):
        pytest.skip("long double is double on this platform")
    np.savez(tmp_path / "a.npz", w=np.ones(2, np.float32), x=array)
    with pytest.raises(WeightsFormatError, match=r"array 'x' has dtype .*, not one of weights"):
        fastlstm.load(tmp_path / "a.npz")


def test_npz_loads_every_weights_dtype_c_ordered(tmp_path):
    arrays = {name: np.asfortranarray(np.arange(6).reshape(2, 3).astype(name))
              for name in ("bool", "int8", "uint16", "int64", "float16", "float32", ">f8",
                           "complex64", "complex128")}
    np.savez_compressed(tmp_path / "a.npz", **{k.replace(">", "be"): v for k, v in arrays.items()})
    got = fastlstm.load(tmp_path / "a.npz")
    for name, array in arrays.items():
        value = got[name.replace(">", "be")]
        assert value.dtype == array.dtype.newbyteorder("=") and value.flags.c_contiguous
        assert value.flags.writeable
        np.testing.assert_array_equal(value, array)


# ------------------------------------------- crafted files: crashes, hangs, bombs
def test_deeply_nested_values_are_refused_before_they_are_built(tmp_path):
    # Hashing 200,000 nested tuples (a dict key, a set member) overflowed the C stack.
    deep_key = b"\x80\x02}" + b")" + b"\x85" * 300_000 + b"Ns."
    with pytest.raises(WeightsFormatError, match="nests values more than 1,000 deep"):
        fastlstm.load(torch_zip(tmp_path / "key.pt", deep_key))
    deep_set = b"\x80\x04\x8f(" + b")" + b"\x85" * 300_000 + b"\x90."
    with pytest.raises(WeightsFormatError, match="nests values more than 1,000 deep"):
        fastlstm.load(torch_zip(tmp_path / "set.pt", deep_set))
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02\x8f(" + b")" + b"\x85" * 300_000 + b"\x90.")
    with pytest.raises(WeightsFormatError, match="header nests values"):
        fastlstm.load(legacy)
    nested = b"\x80\x02" + (b"}" + text("a")) * 50 + b"}" + b"s" * 50 + b"."  # 50 deep
    assert fastlstm.load(torch_zip(tmp_path / "ok.pt", nested)) == {}


def test_a_list_shared_many_times_is_walked_once(tmp_path):
    # One list of N items referenced N times through the memo: N steps, not N**2.
    import time

    n = 30_000
    pkl = (b"\x80\x02}(" + text("w") + b"]q\x00(" + b"N" * n + b"e" + text("r") + b"](" +
           b"h\x00" * n + b"eu.")
    start = time.perf_counter()
    assert fastlstm.load(torch_zip(tmp_path / "shared.pt", pkl)) == {}
    assert time.perf_counter() - start < 10  # 30,000 squared steps took 45 s


def test_integers_past_int64_are_refused_before_any_arithmetic(tmp_path):
    huge = b"\x8b" + (200_000).to_bytes(4, "little") + b"\xff" * 199_999 + b"\x7f"
    pkl = (b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(" +
           storage_id("0", 1) + integer(0) + b"(" + huge + b"t" + tup([1]) + b"\x89" +
           b"ccollections\nOrderedDict\n)RtRs.")
    with pytest.raises(WeightsFormatError, match="must be below 2\\*\\*63, got an integer of "
                                                 "1599999 bits"):
        fastlstm.load(torch_zip(tmp_path / "huge.pt", pkl, {"0": bytes(4)}))


def test_zip_members_that_share_bytes_or_names_or_folders_are_refused(torch, tmp_path):
    one = io.BytesIO()
    np.save(one, np.zeros(1000, np.float32))
    packed = compress(one.getvalue(), zipfile.ZIP_DEFLATED)
    crc = zlib.crc32(one.getvalue())
    # Many central-directory entries at one compressed member: each would be inflated.
    path = raw_zip(tmp_path / "overlap.npz", [("a0.npy", zipfile.ZIP_DEFLATED, packed,
                                                len(one.getvalue()), crc)])
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    entry = bytes(data[central:data.index(b"PK\x05\x06")])
    copies = b"".join(entry.replace(b"a0.npy", f"a{k}.npy".encode()) for k in range(1, 5))
    end = bytearray(data[data.index(b"PK\x05\x06"):])
    end[8:12] = struct.pack("<HH", 5, 5)
    end[12:16] = struct.pack("<I", len(entry) * 5)
    path.write_bytes(bytes(data[:central]) + entry + copies + bytes(end))
    with pytest.raises(WeightsFormatError, match="record 'a1.npy' overlaps the one before"):
        fastlstm.load(path)

    # Two records of one name: torch reads the first, zipfile the last.
    good = torch_save(torch, {"w": torch.tensor([1.0, 2.0])}, tmp_path / "good.pt", "zip")
    with zipfile.ZipFile(good) as archive:
        prefix = next(n for n in archive.namelist() if n.endswith("data.pkl"))[:-8]
    with zipfile.ZipFile(good, "a") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr(prefix + "data/0", struct.pack("<2f", 666, 666))
    with pytest.raises(WeightsFormatError, match="two records named"):
        fastlstm.load(good)

    # A second folder: torch refuses the archive.
    two = torch_zip(tmp_path / "two.pt", _sd("0", 1, 0, (1,), (1,)), {"0": bytes(4)})
    with zipfile.ZipFile(two, "a") as archive:
        archive.writestr("other/data.pkl", b"\x80\x02}.")
    with pytest.raises(WeightsFormatError, match="'other/data.pkl' is not in 'archive/'"):
        fastlstm.load(two)


def test_lone_surrogates_in_a_safetensors_header_are_refused(tmp_path):
    header = b'{"a\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = tmp_path / "s.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(WeightsFormatError, match="not valid Unicode"):
        fastlstm.load(path)


def test_cli_errors_escape_what_the_file_says(tmp_path):
    from _helpers import run_cli

    evil = "\x1b[2K\x1b[32mOK\x1b[0m\x07"
    path = torch_zip(tmp_path / "evil.pt", b"\x80\x02c" + ("os" + evil).encode() + b"\nsystem\n.")
    status, out, err = run_cli("inspect", path)
    assert status == 1 and "\x1b" not in err and "\x07" not in err
    assert "\\x1b[2K\\x1b[32mOK" in err


def test_running_out_of_memory_opening_a_file_closes_its_descriptor_once(tmp_path, monkeypatch):
    # The descriptor was closed a second time after the file object that owned it had
    # closed it (EBADF, or another thread's file of the same number), hiding the MemoryError.
    from fastlstm.io import files

    path = tmp_path / "w.safetensors"
    fastlstm.save(fastlstm.LSTM(3, 4, rng=0).state_dict(), path)

    def no_memory(raw, *args, **kwargs):
        raise MemoryError

    before = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(files.io, "BufferedReader", no_memory)
    with pytest.raises(MemoryError) as info:
        fastlstm.load(path)
    monkeypatch.undo()
    assert not isinstance(info.value.__context__, OSError)
    assert len(os.listdir("/proc/self/fd")) == before  # closed, and only it


def test_running_out_of_memory_in_a_reader_is_a_memory_error_and_a_format_error(
        tmp_path, monkeypatch):
    from fastlstm.io import files

    path = tmp_path / "w.safetensors"
    fastlstm.save(fastlstm.LSTM(3, 4, rng=0).state_dict(), path)

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(files, "read_safetensors", no_memory)
    with pytest.raises(MemoryError, match="ran out of memory") as info:
        fastlstm.load(path)
    assert isinstance(info.value, WeightsFormatError)


def test_a_torch_save_of_numpy_arrays_is_refused_with_the_ways_that_work(torch, tmp_path):
    # torch.save(fastlstm_module.state_dict()) pickles NumPy arrays, which neither
    # torch.load (weights_only) nor fastlstm reads: the refusal says what to do instead.
    path = tmp_path / "sd.pt"
    state = fastlstm.LSTM(3, 4, rng=0).state_dict()
    torch.save(state, path)
    with pytest.raises(UnsafeFileError, match=r"refused global 'numpy\..*fastlstm\.save\("):
        fastlstm.load(path)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)  # the way that works
    got = fastlstm.load(path)
    assert all(np.array_equal(got[k], state[k]) for k in state)
