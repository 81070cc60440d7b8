"""Build an ONNX graph of an LSTM from its weights, and run it with ONNX Runtime.

Used by ``fastlstm bench`` to time ONNX Runtime's ``LSTM`` operator on the same
weights and inputs as fastlstm and torch.  ``onnx`` and ``onnxruntime`` are
imported inside the functions, never when fastlstm is imported.

ONNX's ``LSTM`` differs from ``torch.nn.LSTM`` in three ways that the builder
takes care of:

* gate order: ONNX stacks the gates as i, o, f, c where torch uses i, f, g, o,
  so the row blocks of every weight and bias are permuted;
* layout: one operator is one layer with all its directions, ``W`` is
  ``(D, 4H, I)``, ``R`` is ``(D, 4H, H)``, ``B`` is ``(D, 8H)`` = ``[Wb; Rb]``,
  and the output ``Y`` is ``(L, D, N, H)``: a stack feeds the next layer with
  ``Transpose(0, 2, 1, 3)`` and ``Reshape(L, N, D*H)`` (``Squeeze`` when D = 1);
* no projection (``proj_size``), and ONNX Runtime supports neither
  ``layout=1`` (batch first, done here with ``Transpose`` nodes) nor double
  precision (the session fails on its first run).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from fastlstm._common import to_numpy

__all__ = ["OPSET", "lstm_to_onnx", "matmul_to_onnx", "make_session", "OrtLSTM"]

#: ONNX opset of the graphs (LSTM-14, Squeeze with axes as an input).
OPSET = 14
#: IR version written in the models: old enough for any ONNX Runtime that has opset 14.
IR_VERSION = 8

# Row blocks of torch's (i, f, g, o) weights in ONNX's (i, o, f, c) order.
_TORCH_TO_ONNX_GATES = (0, 3, 1, 2)


def _onnx_gates(weight: np.ndarray, hidden_size: int) -> np.ndarray:
    """Reorder the 4H leading rows of ``weight`` from torch's gate order to ONNX's."""
    blocks = [weight[g * hidden_size:(g + 1) * hidden_size] for g in _TORCH_TO_ONNX_GATES]
    return np.concatenate(blocks, axis=0)


def _param(module: Any, name: str) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(getattr(module, name)))


def lstm_to_onnx(module: Any, *, with_state: bool = False) -> Any:
    """Express an LSTM as an ONNX model made of ``LSTM`` operators.

    Parameters
    ----------
    module : fastlstm.LSTM or torch.nn.LSTM
        Any object with torch's LSTM attributes (``input_size``,
        ``hidden_size``, ``num_layers``, ``bias``, ``batch_first``,
        ``bidirectional``, ``proj_size``) and parameters (``weight_ih_l0``,
        ...); float32 or float64.
    with_state : bool, default=False
        If True, the model takes the initial states as inputs ``h0`` and
        ``c0``, shaped ``(num_layers * D, N, H)`` like torch's ``hx``;
        otherwise they are zeros.

    Returns
    -------
    onnx.ModelProto
        Inputs ``input`` (``(L, N, I)``, or ``(N, L, I)`` if batch first) and
        optionally ``h0``, ``c0``; outputs ``output``, ``h_n``, ``c_n`` with
        torch's shapes.  Batch and sequence dimensions are symbolic.

    Raises
    ------
    ValueError
        If the module has a projection (``proj_size > 0``), which ONNX's LSTM
        cannot express, or a dtype other than float32/float64.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if getattr(module, "proj_size", 0):
        raise ValueError("ONNX's LSTM operator has no projection (proj_size > 0)")
    hidden = int(module.hidden_size)
    layers = int(module.num_layers)
    dirs = 2 if module.bidirectional else 1
    dtype = _param(module, "weight_ih_l0").dtype
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
    if dtype not in elem:
        raise ValueError(f"ONNX export supports float32 and float64, got {dtype}")
    elem_type = elem[dtype]

    nodes: list = []
    inits: list = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: List[str], outputs: List[str], **attrs: Any) -> None:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"{outputs[0]}_{op}", **attrs))

    seq, batch = "seq_len", "batch"
    x_dims = [batch, seq, int(module.input_size)] if module.batch_first else [
        seq, batch, int(module.input_size)]
    state_dims = [layers * dirs, batch, hidden]
    graph_inputs = [helper.make_tensor_value_info("input", elem_type, x_dims)]
    if with_state:
        graph_inputs += [helper.make_tensor_value_info(n, elem_type, state_dims)
                         for n in ("h0", "c0")]

    x = "input"
    if module.batch_first:
        node("Transpose", [x], ["input_seq_first"], perm=[1, 0, 2])
        x = "input_seq_first"
    if dirs == 1:
        const("axes_1", np.array([1], dtype=np.int64))
    else:
        const("shape_seq_batch_feat", np.array([0, 0, -1], dtype=np.int64))

    h_outs, c_outs = [], []
    for layer in range(layers):
        suffixes = [f"_l{layer}"] + ([f"_l{layer}_reverse"] if dirs == 2 else [])
        w = np.stack([_onnx_gates(_param(module, "weight_ih" + s), hidden) for s in suffixes])
        r = np.stack([_onnx_gates(_param(module, "weight_hh" + s), hidden) for s in suffixes])
        lstm_in = [x, const(f"W_l{layer}", w), const(f"R_l{layer}", r)]
        if module.bias:
            b = np.stack([np.concatenate([_onnx_gates(_param(module, "bias_ih" + s), hidden),
                                          _onnx_gates(_param(module, "bias_hh" + s), hidden)])
                          for s in suffixes])
            lstm_in.append(const(f"B_l{layer}", b))
        else:
            lstm_in.append("")
        lstm_in.append("")  # sequence_lens: every sequence has the full length
        if with_state:
            starts = const(f"start_l{layer}", np.array([layer * dirs], dtype=np.int64))
            ends = const(f"end_l{layer}", np.array([(layer + 1) * dirs], dtype=np.int64))
            axes0 = const(f"axes0_l{layer}", np.array([0], dtype=np.int64))
            for state in ("h0", "c0"):
                node("Slice", [state, starts, ends, axes0], [f"{state}_l{layer}"])
            lstm_in += [f"h0_l{layer}", f"c0_l{layer}"]
        y, y_h, y_c = f"Y_l{layer}", f"Y_h_l{layer}", f"Y_c_l{layer}"
        node("LSTM", lstm_in, [y, y_h, y_c], hidden_size=hidden,
             direction="bidirectional" if dirs == 2 else "forward")
        h_outs.append(y_h)
        c_outs.append(y_c)
        # (L, D, N, H) -> (L, N, D*H): the next layer's input, or the output.
        x = f"out_l{layer}"
        if dirs == 1:
            node("Squeeze", [y, "axes_1"], [x])
        else:
            node("Transpose", [y], [f"Y_t_l{layer}"], perm=[0, 2, 1, 3])
            node("Reshape", [f"Y_t_l{layer}", "shape_seq_batch_feat"], [x])

    if module.batch_first:
        node("Transpose", [x], ["output"], perm=[1, 0, 2])
    else:
        node("Identity", [x], ["output"])
    node("Concat", h_outs, ["h_n"], axis=0)
    node("Concat", c_outs, ["c_n"], axis=0)

    out_dims = ([batch, seq, dirs * hidden] if module.batch_first
                else [seq, batch, dirs * hidden])
    outputs = [helper.make_tensor_value_info("output", elem_type, out_dims),
               helper.make_tensor_value_info("h_n", elem_type, state_dims),
               helper.make_tensor_value_info("c_n", elem_type, state_dims)]
    graph = helper.make_graph(nodes, "fastlstm_lstm", graph_inputs, outputs, initializer=inits)
    model = helper.make_model(graph, producer_name="fastlstm",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def matmul_to_onnx(dtype: Any) -> Any:
    """An ONNX model of one ``MatMul`` ``C = A @ B`` (inputs ``A``, ``B``), for the GEMM peak.

    Parameters
    ----------
    dtype : {"float32", "float64"} or numpy dtype
    """
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
        [helper.make_tensor_value_info(n, elem, ["m", "k"] if n == "A" else ["k", "n"])
         for n in ("A", "B")],
        [helper.make_tensor_value_info("C", elem, ["m", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def make_session(model: Any, threads: int) -> Any:
    """An ONNX Runtime CPU session for ``model`` on ``threads`` threads.

    Parameters
    ----------
    model : onnx.ModelProto
        The model, e.g. from :func:`lstm_to_onnx`.
    threads : int
        ``intra_op_num_threads``; execution is sequential with one inter-op
        thread, graph optimizations are all on, and ONNX Runtime's own log
        is limited to fatal messages (failures still raise).

    Returns
    -------
    onnxruntime.InferenceSession
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                providers=["CPUExecutionProvider"])


class OrtLSTM:
    """An LSTM run by ONNX Runtime, called like fastlstm's and torch's.

    Parameters
    ----------
    module : fastlstm.LSTM or torch.nn.LSTM
        The weights and configuration (see :func:`lstm_to_onnx`).
    threads : int, default=1
        ONNX Runtime's ``intra_op_num_threads``.
    with_state : bool, default=False
        If True, the graph takes initial states and calls accept ``hx``;
        otherwise the states start at zero, as with ``hx=None``.

    Examples
    --------
    >>> import numpy as np, fastlstm
    >>> rnn = fastlstm.LSTM(8, 16, rng=0)
    >>> ort_rnn = OrtLSTM(rnn, threads=1)                       # doctest: +SKIP
    >>> out, (h, c) = ort_rnn(np.zeros((5, 2, 8), np.float32))  # doctest: +SKIP
    """

    def __init__(self, module: Any, threads: int = 1, *, with_state: bool = False) -> None:
        self.dtype = _param(module, "weight_ih_l0").dtype
        self.with_state = with_state
        self.model = lstm_to_onnx(module, with_state=with_state)
        self.session = make_session(self.model, threads)
        self._zeros_shape = (int(module.num_layers) * (2 if module.bidirectional else 1),
                             int(module.hidden_size))
        self._batch_axis = 0 if module.batch_first else 1

    def feed(self, x: np.ndarray,
             hx: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> dict:
        """The input dictionary of the session for ``x`` (3-D) and ``hx``."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not self.with_state:
            if hx is not None:
                raise ValueError("this OrtLSTM was built without initial states (with_state=False)")
            return {"input": x}
        if hx is None:
            rows, hidden = self._zeros_shape
            zeros = np.zeros((rows, x.shape[self._batch_axis], hidden), dtype=self.dtype)
            hx = (zeros, zeros)
        return {"input": x, "h0": np.ascontiguousarray(hx[0], dtype=self.dtype),
                "c0": np.ascontiguousarray(hx[1], dtype=self.dtype)}

    def runner(self, x: np.ndarray) -> Callable[[], Any]:
        """A no-argument callable running the session on ``x`` (for timing)."""
        feed = self.feed(x)
        run = self.session.run
        return lambda: run(None, feed)

    def __call__(self, x: np.ndarray, hx: Optional[Tuple[np.ndarray, np.ndarray]] = None
                 ) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        out, h, c = self.session.run(None, self.feed(x, hx))
        return out, (h, c)
