"""ONNX models as weights files: fastlstm.load / inspect / from_state_dict of ``.onnx``.

torch (``torch.onnx.export``, the TorchScript exporter) writes the files of real models, and
torch's modules are the oracle of their numbers; graphs that torch does not write (LSTM nodes
inside If/Loop/Scan, weights computed by shape operators, unsupported attributes, hostile
files) are built with ``onnx.helper``, and the ``onnx`` package's reference evaluator of the
whole graph is their oracle.  Outside CI the tests skip without torch or onnx; in CI
(``CI=true``) a missing one is a failure.
"""

import io
import sys
import warnings

import numpy as np
import pytest
from _helpers import IN_CI, torch_single_thread

import fastlstm
from fastlstm import StateDictError, WeightsFormatError

_torch_single_thread = pytest.fixture(autouse=True, scope="module")(torch_single_thread)
TOL = 1e-5
# Row blocks of torch's (i, f, g, o) gates in ONNX's (i, o, f, c) order.
TORCH_TO_ONNX = (0, 3, 1, 2)


@pytest.fixture(scope="session")
def onnx():
    """The onnx package; skips without it, fails without it in CI."""
    try:
        import onnx
        import onnx.reference  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("onnx is required in CI (CI=true): pip install onnx")
        pytest.skip("onnx is not installed")
    return onnx


# ----------------------------------------------------------- torch's exporter
def export(torch, model, x, path):
    """``torch.onnx.export`` with the TorchScript exporter (the default one needs onnxscript)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=False)
    return path


def _wrapped(torch, **kwargs):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 5, **kwargs)

        def forward(self, x):
            return self.rnn(x)

    torch.manual_seed(0)
    return Model()


CONFIGS = {
    "1 layer": dict(),
    "2 layers": dict(num_layers=2),
    "bidirectional 2 layers": dict(num_layers=2, bidirectional=True),
    "batch_first": dict(batch_first=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_lstms_exported_to_onnx(torch, onnx, tmp_path, name):
    kwargs = CONFIGS[name]
    model = _wrapped(torch, **kwargs)
    x = torch.randn(2, 4, 3) if kwargs.get("batch_first") else torch.randn(4, 2, 3)
    path = export(torch, model, x, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    # One LSTM node a layer (torch chains them with Squeeze, or Transpose and Reshape).
    assert [n.op_type for n in graph.node].count("LSTM") == kwargs.get("num_layers", 1)
    assert fastlstm.serialization.detect_format(path) == "onnx"

    arrays = fastlstm.load(path)
    expected = model.rnn.state_dict()
    assert list(arrays) == ["rnn.LSTM." + k for k in expected]
    for key, value in expected.items():
        got = arrays["rnn.LSTM." + key]
        np.testing.assert_array_equal(got, value.numpy(), err_msg=key)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable

    found = fastlstm.inspect(path)
    assert found.format == "onnx" and not found.tensors
    config = {k: getattr(model.rnn, k) for k in found.modules[0].config}
    assert [(m.kind, m.prefix, m.config) for m in found.modules] == [
        ("LSTM", "rnn.LSTM.", config)]
    assert "'/rnn/LSTM'" in found.notes[0] and "fastlstm.LSTM.from_state_dict(" in str(found)

    rnn = fastlstm.LSTM.from_state_dict(path, prefix="rnn.LSTM.",
                                        batch_first=kwargs.get("batch_first", False))
    out, (h, c) = rnn(x.numpy())
    with torch.no_grad():
        ref, (ref_h, ref_c) = model(x)
    for got, want in ((out, ref), (h, ref_h), (c, ref_c)):
        assert np.abs(got - want.numpy()).max() < TOL


def test_stacked_modules_stay_apart_and_a_prefix_is_needed(torch, onnx, tmp_path):
    class Stacked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.LSTM(3, 4)
            self.b = torch.nn.LSTM(4, 4, num_layers=2)

        def forward(self, x):
            return self.b(self.a(x)[0])[0]

    torch.manual_seed(1)
    model = Stacked()
    x = torch.randn(3, 2, 3)
    path = export(torch, model, x, tmp_path / "s.onnx")
    # b's first node takes a's output through the same Squeeze as a chain, but from
    # another module: the node names' module paths keep them apart.
    found = fastlstm.inspect(path)
    assert [(m.prefix, m.config["num_layers"]) for m in found.modules] == [
        ("a.LSTM.", 1), ("b.LSTM.", 2)]
    with pytest.raises(StateDictError, match=r"found under 'a\.LSTM\.', 'b\.LSTM\.': pass one"):
        fastlstm.LSTM.from_state_dict(path)
    a = fastlstm.LSTM.from_state_dict(path, prefix="a.LSTM")
    b = fastlstm.LSTM.from_state_dict(path, prefix="b.LSTM.")
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(b(a(x.numpy())[0])[0] - ref).max() < TOL


def test_lstm_cell_in_a_loop(torch, onnx, tmp_path):
    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.LSTMCell(3, 5)

        def forward(self, x):
            h = c = torch.zeros(x.shape[1], 5)
            outputs = []
            for step in x:
                h, c = self.cell(step, (h, c))
                outputs.append(h)
            return torch.stack(outputs)

    torch.manual_seed(2)
    model = Loop()
    x = torch.randn(4, 2, 3)
    path = export(torch, model, x, tmp_path / "cell.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    # Unrolled into Gemm, Split, Sigmoid, Tanh: no LSTM node, the parameters kept as initializers.
    assert "LSTM" not in ops and {"Gemm", "Sigmoid", "Tanh"} <= ops
    found = fastlstm.inspect(path)
    assert [(m.kind, m.prefix) for m in found.modules] == [("LSTMCell", "cell.")]
    assert any("no ONNX LSTM node" in note for note in found.notes)
    with pytest.raises(StateDictError, match="holds no LSTM weights"):
        fastlstm.LSTM.from_state_dict(path)

    cell = fastlstm.LSTMCell.from_state_dict(path, prefix="cell.")
    h = c = np.zeros((2, 5), np.float32)
    outputs = []
    for step in x.numpy():
        h, c = cell(step, (h, c))
        outputs.append(h)
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(np.stack(outputs) - ref).max() < TOL


# ------------------------------------------------------------ graphs by hand
def _onnx_gates(matrix, h):
    return np.concatenate([matrix[g * h:(g + 1) * h] for g in TORCH_TO_ONNX])


def _torch_weights(rng, input_size, h, directions, bias=True):
    out = {}
    for suffix in ("", "_reverse")[:directions]:
        out["weight_ih_l0" + suffix] = rng.standard_normal((4 * h, input_size)).astype(np.float32)
        out["weight_hh_l0" + suffix] = rng.standard_normal((4 * h, h)).astype(np.float32)
        if bias:
            out["bias_ih_l0" + suffix] = rng.standard_normal(4 * h).astype(np.float32)
            out["bias_hh_l0" + suffix] = rng.standard_normal(4 * h).astype(np.float32)
    return out


def _onnx_wrb(weights, h):
    """ONNX's W (D, 4H, I), R (D, 4H, H) and B (D, 8H) (None without biases) of a layer's
    torch weights."""
    suffixes = [s for s in ("", "_reverse") if "weight_ih_l0" + s in weights]
    w = np.stack([_onnx_gates(weights["weight_ih_l0" + s], h) for s in suffixes])
    r = np.stack([_onnx_gates(weights["weight_hh_l0" + s], h) for s in suffixes])
    if "bias_ih_l0" not in weights:
        return w, r, None
    b = np.stack([np.concatenate([_onnx_gates(weights["bias_ih_l0" + s], h),
                                  _onnx_gates(weights["bias_hh_l0" + s], h)]) for s in suffixes])
    return w, r, b


def _model(onnx, nodes, initializers, inputs, outputs, opset=20):
    helper = onnx.helper
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [onnx.numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(onnx, name, shape=None):
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _lstm_node(onnx, name, inputs, outputs=("Y", "Y_h", "Y_c"), **attributes):
    return onnx.helper.make_node("LSTM", list(inputs), list(outputs), name=name, **attributes)


def _load_bytes(onnx, model):
    return fastlstm.load(io.BytesIO(model.SerializeToString()))


def _run_reference(onnx, model, feeds):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def test_weights_computed_by_shape_operators(onnx):
    # W, R and B made from initializers and Constant nodes by every allowed operator; initial
    # states constant; layout=1 (batch first).  The reference evaluator of the whole graph is
    # the oracle of the numbers.
    rng = np.random.default_rng(0)
    h, i = 3, 2
    weights = _torch_weights(rng, i, h, 2)
    w, r, b = _onnx_wrb(weights, h)
    helper = onnx.helper
    h0 = rng.standard_normal((4, 2, h)).astype(np.float32)  # layout 1: (N, D, H)
    c0 = rng.standard_normal((4, 2, h)).astype(np.float32)
    initializers = {
        "w_t": w.transpose(0, 2, 1).copy(),  # Transpose back to (D, 4H, I)
        "r0": r[0].astype(np.float64), "r1": r[1],  # Cast, Unsqueeze, Concat
        "b_flat": np.concatenate([b.ravel(), np.zeros(5, np.float32)]),  # Slice, Reshape
        "h0_pair": np.stack([h0, h0 * 0]),  # Gather
        "c0": c0,
        "idx": np.array(0, np.int64), "shape": np.array([2, 8 * h], np.int64),
        "starts": np.array([0], np.int64), "ends": np.array([16 * h], np.int64),
        "axes0": np.array([0], np.int64),
    }
    nodes = [
        helper.make_node("Transpose", ["w_t"], ["W"], perm=[0, 2, 1]),
        helper.make_node("Cast", ["r0"], ["r0f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["r0f", "axes0"], ["r0u"]),
        helper.make_node("Unsqueeze", ["r1", "axes0"], ["r1u"]),
        helper.make_node("Concat", ["r0u", "r1u"], ["R_cat"], axis=0),
        helper.make_node("Identity", ["R_cat"], ["R"]),
        helper.make_node("Slice", ["b_flat", "starts", "ends"], ["b_cut"]),
        helper.make_node("Reshape", ["b_cut", "shape"], ["B"]),
        helper.make_node("Gather", ["h0_pair", "idx"], ["H0"], axis=0),
        helper.make_node("Split", ["c0"], ["C0a", "C0b"], axis=1, num_outputs=2),
        helper.make_node("Concat", ["C0a", "C0b"], ["C0_cat"], axis=1),
        helper.make_node("Unsqueeze", ["C0_cat", "axes0"], ["C0_unsq"]),
        helper.make_node("Squeeze", ["C0_unsq", "axes0"], ["C0"]),
        _lstm_node(onnx, "enc/lstm", ["X", "W", "R", "B", "", "H0", "C0"],
                   direction="bidirectional", hidden_size=h, layout=1),
    ]
    model = _model(onnx, nodes, initializers, [_value(onnx, "X", [4, 5, i])],
                   [_value(onnx, "Y"), _value(onnx, "Y_h"), _value(onnx, "Y_c")])
    arrays = _load_bytes(onnx, model)
    assert list(arrays) == ["enc.lstm." + k for k in weights] + ["enc.lstm.h_0", "enc.lstm.c_0"]
    for key, value in weights.items():
        np.testing.assert_array_equal(arrays["enc.lstm." + key], value, err_msg=key)
    np.testing.assert_array_equal(arrays["enc.lstm.h_0"], h0.transpose(1, 0, 2))
    found = fastlstm.inspect(io.BytesIO(model.SerializeToString()))
    assert any("layout=1" in note and "batch_first=True" in note for note in found.notes)
    assert list(found.tensors) == ["enc.lstm.h_0", "enc.lstm.c_0"]  # the initializers are used

    x = rng.standard_normal((4, 5, i)).astype(np.float32)
    y, y_h, y_c = _run_reference(onnx, model, {"X": x})
    rnn = fastlstm.LSTM.from_state_dict(arrays, prefix="enc.lstm.", batch_first=True)
    out, (hn, cn) = rnn(x, (arrays["enc.lstm.h_0"], arrays["enc.lstm.c_0"]))
    # Y (layout 1) is (N, L, D, H); torch's output (N, L, D*H).
    assert np.abs(out - y.reshape(4, 5, 2 * h)).max() < TOL
    assert np.abs(hn - y_h.transpose(1, 0, 2)).max() < TOL
    assert np.abs(cn - y_c.transpose(1, 0, 2)).max() < TOL


def test_lstm_nodes_in_if_loop_and_scan_subgraphs(onnx):
    rng = np.random.default_rng(1)
    helper = onnx.helper
    h, i = 2, 3
    layers = [_torch_weights(rng, i, h, 1, bias=k != 1) for k in range(4)]
    initializers = {}
    for k, weights in enumerate(layers):
        w, r, b = _onnx_wrb(weights, h)
        initializers.update({f"W{k}": w, f"R{k}": r})
        if b is not None:
            initializers[f"B{k}"] = b

    def branch(k, name):
        inputs = ["X", f"W{k}", f"R{k}"] + ([f"B{k}"] if f"B{k}" in initializers else [])
        node = _lstm_node(onnx, name, inputs, outputs=[f"Y{k}"], hidden_size=h)
        return helper.make_graph([node], f"g{k}", [], [_value(onnx, f"Y{k}")])

    if_node = helper.make_node("If", ["cond"], ["y_if"], name="if",
                               then_branch=branch(0, "/then/LSTM"),
                               else_branch=branch(1, "/then/LSTM"))  # the same name again
    body_lstm = _lstm_node(onnx, "", ["X", "W2", "R2", "B2"], outputs=["Y2"], hidden_size=h)
    body = helper.make_graph(
        [body_lstm, helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [helper.make_tensor_value_info("it", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []),
         _value(onnx, "Y2")])
    loop = helper.make_node("Loop", ["n", "cond"], ["y_loop"], name="loop", body=body)
    scan_body = helper.make_graph(
        [_lstm_node(onnx, "scan.cell?", ["X", "W3", "R3", "B3"], outputs=["Y3"]),
         helper.make_node("Identity", ["s_in"], ["s_out"])], "scan_body",
        [_value(onnx, "s_in", [1])], [_value(onnx, "s_out", [1])])
    scan = helper.make_node("Scan", ["s0"], ["s_final"], name="scan", body=scan_body,
                            num_scan_inputs=0)
    initializers.update(n=np.array(1, np.int64), s0=np.zeros(1, np.float32))
    model = _model(onnx, [if_node, loop, scan], initializers,
                   [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
                    _value(onnx, "X", [2, 1, i])],
                   [_value(onnx, "y_if"), _value(onnx, "y_loop"), _value(onnx, "s_final")])
    arrays = _load_bytes(onnx, model)
    # Subgraphs in attribute order (else_branch first); the second '/then/LSTM' gets _2, the
    # unnamed node its module's index, 'scan.cell?' a key-safe name.
    prefixes = ["then.LSTM_2.", "then.LSTM.", "LSTM_2.", "scan.cell_."]
    for prefix, weights in zip(prefixes, layers):
        assert {k for k in arrays if k.startswith(prefix)} == {prefix + k for k in weights}
        for key, value in weights.items():
            np.testing.assert_array_equal(arrays[prefix + key], value, err_msg=prefix + key)
    assert set(arrays) - {p + k for p, w in zip(prefixes, layers) for k in w} == {"n", "s0"}
    found = fastlstm.inspect(io.BytesIO(model.SerializeToString()))
    assert [(m.prefix, m.config["bias"]) for m in found.modules] == [
        (prefixes[k], k != 1) for k in (1, 0, 2, 3)]
    assert any("'then_branch' subgraph of If node 'if'" in note for note in found.notes)


def _simple(onnx, attributes=None, extra_inputs=(), extra_initializers=None, w_from=None,
            h=2, i=3):
    """One forward LSTM node named 'bad', optionally with attributes and inputs."""
    rng = np.random.default_rng(3)
    w, r, b = _onnx_wrb(_torch_weights(rng, i, h, 1), h)
    initializers = {"W": w, "R": r, "B": b, **(extra_initializers or {})}
    nodes = list(w_from or [])
    nodes.append(_lstm_node(onnx, "bad", ["X", "W", "R", "B", *extra_inputs],
                            hidden_size=h, **(attributes or {})))
    inputs = [_value(onnx, "X", [2, 1, i])]
    if w_from:
        del initializers["W"]
        inputs.append(_value(onnx, "G"))
    return _model(onnx, nodes, initializers, inputs, [_value(onnx, "Y")])


@pytest.mark.parametrize("attributes, extra, message", [
    (dict(activations=["Tanh", "Tanh", "Tanh"]), (), "activations="),
    (dict(activation_alpha=[1.0]), (), "activation_alpha"),
    (dict(activation_beta=[1.0]), (), "activation_beta"),
    (dict(clip=3.0), (), "clip=3.0"),
    (dict(input_forget=1), (), "input_forget=1"),
    (dict(direction="reverse"), (), "direction='reverse'"),
    (dict(layout=2), (), "layout=2"),
    (dict(hidden_size=5), (), "hidden_size=5"),
    (dict(peepholes=1), ("", "", "", "P"), "peephole"),
], ids=["activations", "alpha", "beta", "clip", "input_forget", "reverse", "layout",
        "hidden_size", "peepholes"])
def test_unsupported_attributes_are_named(onnx, attributes, extra, message):
    attributes = dict(attributes)
    attributes.pop("peepholes", None)
    hidden = attributes.pop("hidden_size", None)
    model = _simple(onnx, attributes, extra, {"P": np.ones((1, 6), np.float32)})
    if hidden is not None:
        next(a for a in model.graph.node[-1].attribute if a.name == "hidden_size").i = hidden
    with pytest.raises(WeightsFormatError, match=f"LSTM node 'bad'.*{message}"):
        _load_bytes(onnx, model)


def test_supported_defaults_and_zero_peepholes_load(onnx):
    attributes = dict(activations=["Sigmoid", "Tanh", "Tanh"], input_forget=0, layout=0)
    model = _simple(onnx, attributes, ("", "", "", "P"), {"P": np.zeros((1, 6), np.float32)})
    assert len(_load_bytes(onnx, model)) == 4


def test_weights_that_are_not_constants_are_refused(onnx):
    helper = onnx.helper
    graph_input = _simple(onnx, w_from=[helper.make_node("Identity", ["G"], ["W"])])
    with pytest.raises(WeightsFormatError, match="its W .*not a constant: 'G' is an input"):
        _load_bytes(onnx, graph_input)
    computed = _simple(onnx, w_from=[helper.make_node("MatMul", ["G", "G"], ["W"])])
    with pytest.raises(WeightsFormatError, match="computed by a MatMul node"):
        _load_bytes(onnx, computed)


def test_constant_subgraphs_are_bounded(onnx, monkeypatch):
    helper = onnx.helper
    # Concat doubling a tensor 60 times: refused before it is made.
    nodes = [helper.make_node("Concat", [f"x{k}", f"x{k}"], [f"x{k + 1}"], axis=0)
             for k in range(60)]
    nodes.append(helper.make_node("Identity", ["x60"], ["W"]))
    model = _simple(onnx, w_from=nodes, extra_initializers={"x0": np.ones(1000, np.float32)})
    with pytest.raises(WeightsFormatError, match="budget"):
        _load_bytes(onnx, model)
    import fastlstm.io.onnx_format as onnx_format

    monkeypatch.setattr(onnx_format, "_MAX_CONSTANT_NODES", 10)
    nodes = [helper.make_node("Identity", [f"x{k}"], [f"x{k + 1}"]) for k in range(20)]
    nodes.append(helper.make_node("Identity", ["x20"], ["W"]))
    model = _simple(onnx, w_from=nodes, extra_initializers={"x0": np.ones(1, np.float32)})
    with pytest.raises(WeightsFormatError, match="more than 10 nodes"):
        _load_bytes(onnx, model)

    # Thirty LSTM nodes sharing one W, R and B: thirty copies, past 16 times the file.
    monkeypatch.setattr(onnx_format, "_EXPANSION_FLOOR", 0)
    model = _simple(onnx, h=16, i=16)
    lstm = model.graph.node[0]
    for k in range(30):
        copy = model.graph.node.add()
        copy.CopyFrom(lstm)
        copy.name, copy.output[0] = f"n{k}", f"Y{k}"
    with pytest.raises(WeightsFormatError, match="more than 16 times the file"):
        _load_bytes(onnx, model)


def test_external_data_is_refused(onnx, tmp_path):
    model = _simple(onnx)
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin",
                    size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    with pytest.raises(WeightsFormatError, match="keeps its data in another file.*weights.bin"):
        fastlstm.load(path)


def test_truncated_and_corrupt_files_raise(torch, onnx, tmp_path):
    model = _wrapped(torch, num_layers=2)
    data = export(torch, model, torch.randn(3, 1, 3), tmp_path / "m.onnx").read_bytes()
    assert len(fastlstm.load(io.BytesIO(data))) == 8
    n = len(data)
    for size in sorted(set(range(0, n, max(1, n // 100))) | set(range(n - 20, n))):
        with pytest.raises(WeightsFormatError):
            fastlstm.load(io.BytesIO(data[:size]))
    rng = np.random.default_rng(7)
    for _ in range(100):
        corrupt = bytearray(data)
        for pos in rng.integers(0, n, size=rng.integers(1, 4)):
            corrupt[pos] = rng.integers(0, 256)
        try:
            fastlstm.load(io.BytesIO(bytes(corrupt)))
        except WeightsFormatError:
            pass
    for garbage in (data[:20] + rng.bytes(500), b"\x08\x07" + rng.bytes(100)):
        try:
            fastlstm.load(io.BytesIO(garbage))
        except WeightsFormatError:
            pass


def test_declared_sizes_beyond_the_data_are_refused(onnx):
    model = _simple(onnx)
    model.graph.initializer[0].dims[0] = 10 ** 9
    with pytest.raises(WeightsFormatError, match="declares shape .*truncated or corrupt"):
        _load_bytes(onnx, model)


def test_a_clear_error_without_onnx(onnx, monkeypatch):
    data = _simple(onnx).SerializeToString()
    for name in [m for m in sys.modules if m == "onnx" or m.startswith("onnx.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import onnx now raises ImportError
    assert fastlstm.serialization.detect_format(io.BytesIO(data)) == "onnx"
    with pytest.raises(ImportError, match=r'the onnx package: pip install "fastlstm\[onnx\]"'):
        fastlstm.load(io.BytesIO(data))


def test_text_in_a_constant_subgraph_is_refused_before_it_is_made(onnx):
    # NumPy's strings take 4 bytes a character of the longest: a 12 KB file once made 1 GB.
    helper = onnx.helper
    long = helper.make_node("Constant", [], ["s"], value_strings=["x" * 3000, ""])
    cast = [helper.make_node("Cast", ["x0"], ["t"], to=onnx.TensorProto.STRING),
            helper.make_node("Cast", ["t"], ["W"], to=onnx.TensorProto.FLOAT)]
    for nodes, extra, who in (
            ([long, helper.make_node("Cast", ["s"], ["W"], to=onnx.TensorProto.FLOAT)], {},
             "a Constant node makes strings"),
            (cast, {"x0": np.ones((1, 8, 3), np.float32)}, "a Cast node makes strings")):
        model = _simple(onnx, w_from=nodes, extra_initializers=extra)
        with pytest.raises(WeightsFormatError, match=f"its W .*not a constant: {who}"):
            _load_bytes(onnx, model)


def test_the_node_count_is_bounded_and_nodes_are_not_copied(onnx, monkeypatch):
    import fastlstm.io.onnx_format as onnx_format

    model = _simple(onnx)
    for _ in range(50):  # empty nodes, 2 bytes each in the file
        model.graph.node.add()
    assert len(_load_bytes(onnx, model)) == 4
    monkeypatch.setattr(onnx_format, "_MAX_NODES", 40)
    with pytest.raises(WeightsFormatError, match="more than 40 nodes"):
        _load_bytes(onnx, model)
    monkeypatch.setattr(onnx_format, "_MAX_NODES", 10**6)
    monkeypatch.setattr(onnx_format, "_MAX_NODE_INPUTS", 3)
    nodes = [onnx.helper.make_node("Concat", ["x0"] * 4, ["W"], axis=0)]
    with pytest.raises(WeightsFormatError, match="has 4 inputs, more than 3"):
        _load_bytes(onnx, _simple(onnx, w_from=nodes,
                                  extra_initializers={"x0": np.ones((1, 2, 3), np.float32)}))


def test_a_chain_with_a_state_on_some_layers_starts_the_others_from_zeros(onnx):
    # As torch exports a 2-layer LSTM, but only layer 0 has a constant initial_h (ONNX: the
    # other starts from zeros).  The reference evaluator of the whole graph is the oracle.
    rng = np.random.default_rng(5)
    h, i, n = 3, 2, 4
    helper = onnx.helper
    inits = {}
    for k, size in enumerate((i, h)):
        w, r, b = _onnx_wrb(_torch_weights(rng, size, h, 1), h)
        inits.update({f"W{k}": w, f"R{k}": r, f"B{k}": b})
    h0 = rng.standard_normal((1, n, h)).astype(np.float32)
    inits.update(H0=h0, ax1=np.array([1], np.int64))
    nodes = [_lstm_node(onnx, "/rnn/LSTM", ["X", "W0", "R0", "B0", "", "H0"], outputs=["Y0"],
                        hidden_size=h),
             helper.make_node("Squeeze", ["Y0", "ax1"], ["S0"]),
             _lstm_node(onnx, "/rnn/LSTM_1", ["S0", "W1", "R1", "B1"], outputs=["Y1"],
                        hidden_size=h)]
    model = _model(onnx, nodes, inits, [_value(onnx, "X", [5, n, i])], [_value(onnx, "Y1")])
    arrays = _load_bytes(onnx, model)
    np.testing.assert_array_equal(arrays["rnn.LSTM.h_0"][0], h0[0])
    np.testing.assert_array_equal(arrays["rnn.LSTM.h_0"][1], 0)
    assert "rnn.LSTM.c_0" not in arrays
    x = rng.standard_normal((5, n, i)).astype(np.float32)
    (want,) = _run_reference(onnx, model, {"X": x})
    rnn = fastlstm.LSTM.from_state_dict(arrays, prefix="rnn.LSTM.")
    h_0 = arrays["rnn.LSTM.h_0"]
    out, _ = rnn(x, (h_0, np.zeros_like(h_0)))
    assert np.abs(out - want.reshape(5, n, h)).max() < TOL

    # An initial state that is not a constant of the file: said, not silently dropped.
    model.graph.input.append(_value(onnx, "H1", [1, n, h]))
    model.graph.node[2].input.extend(["", "H1"])
    found = fastlstm.inspect(io.BytesIO(model.SerializeToString()))
    assert any("initial_h that is not a constant" in note for note in found.notes)
    assert "rnn.LSTM.h_0" not in found.tensors


def test_an_initializer_that_other_nodes_use_too_is_kept(onnx):
    helper = onnx.helper
    rng = np.random.default_rng(6)
    w, _, _ = _onnx_wrb(_torch_weights(rng, 3, 2, 1), 2)
    table = np.concatenate([w, w * 2])  # (2, 8, 3): W is its first row
    nodes = [helper.make_node("Slice", ["table", "s", "e"], ["W"]),
             helper.make_node("Gather", ["table", "k"], ["other"])]
    model = _simple(onnx, w_from=nodes, extra_initializers={
        "table": table, "s": np.array([0], np.int64), "e": np.array([1], np.int64),
        "k": np.array(1, np.int64)})
    model.graph.input.pop()  # w_from's graph input G is not needed here
    arrays = _load_bytes(onnx, model)
    np.testing.assert_array_equal(arrays["table"], table)
    assert "s" not in arrays and "e" not in arrays  # only the weight's subgraph reads them


def test_names_defined_twice_and_attributes_given_twice_are_refused(onnx):
    model = _simple(onnx)
    duplicate = model.graph.initializer.add()
    duplicate.CopyFrom(model.graph.initializer[0])  # a second 'W'
    with pytest.raises(WeightsFormatError, match="defines 'W' more than once"):
        _load_bytes(onnx, model)
    model = _simple(onnx, w_from=[onnx.helper.make_node("Identity", ["R"], ["W"])])
    model.graph.input.pop()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 8, 3),
                                                                         np.float32), "W"))
    with pytest.raises(WeightsFormatError, match="defines 'W' more than once"):
        _load_bytes(onnx, model)
    model = _simple(onnx, {"direction": "forward"})
    model.graph.node[-1].attribute.append(onnx.helper.make_attribute("direction", "forward"))
    with pytest.raises(WeightsFormatError, match="attribute 'direction' twice"):
        _load_bytes(onnx, model)
    model = _simple(onnx, {"layout": 0.0})
    with pytest.raises(WeightsFormatError, match="layout=0.0"):
        _load_bytes(onnx, model)
    model = _simple(onnx, None, ("", "", "", "P"), {"P": np.array([[b"", b""]], dtype=object)})
    with pytest.raises(WeightsFormatError, match="peephole"):
        _load_bytes(onnx, model)


@pytest.mark.parametrize("directions", [1, 2])
def test_layers_chained_as_the_dynamo_exporter_chains_them_are_one_lstm(onnx, directions):
    """torch.onnx.export(dynamo=True) chains a multi-layer LSTM's nodes through
    Transpose(0, 2, 1, 3) and a Reshape to the export's fixed (L, N, D*H), in one
    direction too, with node names that name no module.  The reference evaluator of the
    whole graph is the oracle."""
    rng = np.random.default_rng(11)
    h, i, n, steps = 3, 2, 4, 5
    helper = onnx.helper
    inits, nodes, previous = {}, [], "X"
    for k, size in enumerate((i, directions * h)):
        w, r, b = _onnx_wrb(_torch_weights(rng, size, h, directions), h)
        inits.update({f"W{k}": w, f"R{k}": r, f"B{k}": b})
        direction = "bidirectional" if directions == 2 else "forward"
        nodes.append(_lstm_node(onnx, f"node_LSTM_{k}", [previous, f"W{k}", f"R{k}", f"B{k}"],
                                outputs=[f"Y{k}"], hidden_size=h, direction=direction))
        if k == 0:
            nodes += [helper.make_node("Transpose", ["Y0"], ["T0"], perm=[0, 2, 1, 3]),
                      helper.make_node("Reshape", ["T0", "shape"], ["S0"])]
            previous = "S0"
    inits["shape"] = np.array([steps, n, directions * h], np.int64)
    model = _model(onnx, nodes, inits, [_value(onnx, "X", [steps, n, i])], [_value(onnx, "Y1")])
    found = fastlstm.inspect(io.BytesIO(model.SerializeToString()))
    assert [(m.kind, m.config["num_layers"], m.config["bidirectional"])
            for m in found.modules] == [("LSTM", 2, directions == 2)]
    x = rng.standard_normal((steps, n, i)).astype(np.float32)
    (want,) = _run_reference(onnx, model, {"X": x})
    rnn = fastlstm.LSTM.from_state_dict(_load_bytes(onnx, model), prefix=found.modules[0].prefix)
    out, _ = rnn(x)
    want = want.transpose(0, 2, 1, 3).reshape(steps, n, directions * h)
    assert np.abs(out - want).max() < TOL


def test_sequence_lens_is_named_in_a_note(onnx):
    rng = np.random.default_rng(12)
    w, r, b = _onnx_wrb(_torch_weights(rng, 2, 3, 1), 3)
    model = _model(onnx, [_lstm_node(onnx, "/rnn/LSTM", ["X", "W", "R", "B", "lens"],
                                     hidden_size=3)],
                   {"W": w, "R": r, "B": b}, [_value(onnx, "X", [5, 4, 2]),
                                              onnx.helper.make_tensor_value_info(
                                                  "lens", onnx.TensorProto.INT32, [4])],
                   [_value(onnx, "Y")])
    found = fastlstm.inspect(io.BytesIO(model.SerializeToString()))
    assert any("has sequence_lens" in note and "pack_padded_sequence" in note
               for note in found.notes)
