"""ONNX models: the weights of their ``LSTM`` nodes, under torch's names and in torch's layout.

An ONNX ``LSTM`` node is one layer with all its directions: ``W`` is
``(D, 4H, I)``, ``R`` is ``(D, 4H, H)`` and ``B`` is ``(D, 8H)`` (the input
biases then the recurrent ones), gates in the order i, o, f, c.  Each node
becomes torch's ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}`` and
``bias_hh_l{k}`` (``_reverse`` for the second direction), gates reordered to
torch's i, f, g, o, under a prefix made from the node's name.  Nodes that
``torch.onnx.export`` chained from one multi-layer ``nn.LSTM`` (node k+1's
``X`` is node k's ``Y`` through the ``Squeeze``, or ``Transpose`` and
``Reshape``, it emits) make one module with layers ``l0``, ``l1``, ...  The
graph is searched with its subgraphs (``If``, ``Loop``, ``Scan``, ...).

The file is untrusted and nothing in it is run.  It is parsed by the ``onnx``
package's protobuf classes (never ``onnx.load``, which follows external-data
paths): a tensor whose data lives in another file is refused, and every
tensor's declared size is checked against the bytes it holds before an array
is made.  A weight may be an initializer, a ``Constant`` node's output, or be
computed from those by the shape-only operators of :data:`_CONSTANT_OPS`,
which are run one node at a time by ``onnx.reference.ReferenceEvaluator``
within a budget of bytes and nodes; any other operator makes it "not a
constant" and is refused.  LSTM attributes that torch's LSTM has no
equivalent for (other activations, ``clip``, ``input_forget``, peepholes, a
lone ``reverse`` direction) are refused with the node's name.

``onnx`` is optional and imported only when an ONNX file is read.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import IO, Any, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

import numpy as np

from fastlstm._errors import WeightsFormatError

__all__ = ["looks_like_onnx", "read_onnx"]

#: What reading an ONNX file without the ``onnx`` package tells the user to install.
INSTALL_HINT = 'pip install "fastlstm[onnx]" (or onnx itself)'
#: The largest file read: protobuf's limit on one message.  Bigger models keep their
#: weights as external data, which is refused anyway.
_MAX_BYTES = (2 << 30) - 1
_MAX_NDIM = 32
#: ModelProto's fields (onnx.proto): field number -> protobuf wire type, for sniffing.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
#: The largest ``ir_version`` sniffed as ONNX (onnx 1.23 knows 1 to 14): room for new ones.
_MAX_IR_VERSION = 64
#: The operators a constant weight may be computed with (besides initializers).
_CONSTANT_OPS = frozenset(("Constant", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Concat",
                           "Slice", "Gather", "Split", "Cast", "Identity"))
_DEFAULT_DOMAINS = ("", "ai.onnx")
#: Bytes the constant subgraphs and the converted weights may make: as the torch reader's
#: views, 16 times the file plus 64 MiB (Gather and Concat can repeat a tensor without bound,
#: and many LSTM nodes can share one initializer).
_EXPANSION = 16
_EXPANSION_FLOOR = 1 << 26
#: Nodes of constant subgraphs run per file (~0.2 ms each): exporters use a handful a weight.
_MAX_CONSTANT_NODES = 10_000
#: Nodes in all the graphs of a file, and inputs of a node run: far past any exporter's
#: (a large transformer has ~10^5 nodes); each node costs ~0.3 us per walk of the graph.
_MAX_NODES = 1_000_000
_MAX_NODE_INPUTS = 10_000
#: Characters of a node name kept in a prefix; shown in a message.
_MAX_PREFIX = 128
_MAX_SHOWN = 80
# Row blocks of ONNX's (i, o, f, c) gates in torch's (i, f, g, o) order.
_ONNX_TO_TORCH_GATES = (0, 2, 3, 1)
_KNOWN_ATTRIBUTES = frozenset(("activation_alpha", "activation_beta", "activations", "clip",
                               "direction", "hidden_size", "input_forget", "layout",
                               "output_sequence"))
_WEIGHT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
#: The types of the other initializers reported (TensorProto's names); bfloat16 as float32.
_OTHER_TYPES = ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
                "FLOAT16", "FLOAT", "DOUBLE", "COMPLEX64", "COMPLEX128", "BFLOAT16")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


class _NotConstant(Exception):
    """A value that depends on something other than initializers and Constant nodes."""


def _import_onnx() -> Any:
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401 - the submodule is used through onnx
    except ImportError as exc:
        raise ImportError(f"reading an ONNX file needs the onnx package: {INSTALL_HINT}",
                          name="onnx") from exc
    return onnx


# ------------------------------------------------------------------ sniffing
def _varint(data: bytes, pos: int) -> Optional[Tuple[int, int]]:
    """A protobuf varint at ``pos``: (value, next position), or None if ``data`` ends first."""
    value = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    return None


def looks_like_onnx(head: bytes) -> bool:
    """Whether a file starting with ``head`` is an ONNX ``ModelProto``.

    Protobuf has no magic number; serializers write fields in number order, so a model
    starts with ``ir_version`` (field 1, a small varint) followed by other fields of
    ``ModelProto``, each with its wire type.  The fields that ``head`` holds are checked.
    """
    pos = fields = 0
    while pos < len(head):
        tag = _varint(head, pos)
        if tag is None:
            break
        key, pos = tag
        number, wire = key >> 3, key & 7
        if _MODEL_FIELDS.get(number) != wire:
            return False
        value = _varint(head, pos)
        if value is None:
            break
        size, pos = value
        if fields == 0 and not (number == 1 and 1 <= size <= _MAX_IR_VERSION):
            return False
        fields += 1
        if wire == 2:
            pos += size
    return fields >= 2


# ------------------------------------------------------------- tensors
def _shown(name: str) -> str:
    """A name from the file for a message: quoted, escaped, at most :data:`_MAX_SHOWN` chars."""
    return repr(name[:_MAX_SHOWN] + ("..." if len(name) > _MAX_SHOWN else ""))


def _graphs(model: Any) -> Iterator[Any]:
    """Every graph of the model: the main one, subgraphs, functions' nodes' subgraphs,
    training graphs (without recursion: nesting is bounded by protobuf, not by this)."""
    stack = [model.graph] if model.HasField("graph") else []
    for info in model.training_info:
        stack.extend(g for g in (info.initialization, info.algorithm))
    # Node lists are walked, never copied: a file of millions of empty nodes must not cost
    # a Python object for each (protobuf's own parse of them is ~80 bytes a file byte).
    node_lists = [function.node for function in model.functions]
    count = sum(len(nodes) for nodes in node_lists)
    while stack or node_lists:
        if stack:
            graph = stack.pop()
            yield graph
            node_lists.append(graph.node)
            count += len(graph.node)
        else:
            for node in node_lists.pop():
                for attribute in node.attribute:
                    if attribute.HasField("g"):
                        stack.append(attribute.g)
                    stack.extend(attribute.graphs)
        if count > _MAX_NODES:
            raise WeightsFormatError(f"refused: the model has more than {_MAX_NODES:,} nodes")


def _tensors(model: Any) -> Iterator[Tuple[Any, str]]:
    """Every TensorProto of the model, with what it is, for the checks of :func:`_check`."""
    for graph in _graphs(model):
        for tensor in graph.initializer:
            yield tensor, f"initializer {_shown(tensor.name)}"
        for sparse in graph.sparse_initializer:
            yield sparse.values, f"sparse initializer {_shown(sparse.values.name)}"
            yield sparse.indices, f"sparse initializer {_shown(sparse.values.name)}"
        for node in graph.node:
            for attribute in node.attribute:
                where = f"attribute {_shown(attribute.name)} of node {_shown(node.name)}"
                if attribute.HasField("t"):
                    yield attribute.t, where
                for tensor in attribute.tensors:
                    yield tensor, where
                for sparse in ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor")
                               else []) + list(attribute.sparse_tensors):
                    yield sparse.values, where
                    yield sparse.indices, where


def _check(onnx: Any, model: Any) -> None:
    """Refuse external data, and declared sizes beyond the data present, in every tensor."""
    external = onnx.TensorProto.EXTERNAL
    for tensor, where in _tensors(model):
        if tensor.data_location == external or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise WeightsFormatError(
                f"refused: the {where} keeps its data in another file "
                f"({_shown(location)}); fastlstm reads only what the .onnx file holds (save the "
                "model with onnx.save_model(model, path, save_as_external_data=False))")
        dims = list(tensor.dims)
        if len(dims) > _MAX_NDIM or any(d < 0 for d in dims):
            raise WeightsFormatError(f"the {where} has invalid dimensions {dims[:_MAX_NDIM]}")
        held = (len(tensor.raw_data) + len(tensor.float_data) + len(tensor.int32_data)
                + len(tensor.string_data) + len(tensor.int64_data) + len(tensor.double_data)
                + len(tensor.uint64_data))
        if math.prod(dims) > 2 * held + 1:  # 4-bit types pack two values a byte
            raise WeightsFormatError(f"the {where} declares shape {tuple(dims)} but holds "
                                     f"{held:,} bytes or values: truncated or corrupt")


def _array(onnx: Any, tensor: Any) -> np.ndarray:
    """A TensorProto as an array (bfloat16 widened to float32), already checked by _check."""
    array = onnx.numpy_helper.to_array(tensor)
    return _widened(array)


def _widened(array: Any) -> np.ndarray:
    """bfloat16 (ml_dtypes, which numpy lacks) as float32, exactly; other arrays as they are."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


def _copy(array: np.ndarray) -> np.ndarray:
    """A new, writable, C-ordered, native-byte-order copy."""
    return np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)


# ----------------------------------------------------------------- scopes
class _Scope:
    """One graph and the names it defines; subgraphs see the names of their parents."""

    __slots__ = ("graph", "parent", "index", "where", "producers", "initializers", "inputs",
                 "twice")

    def __init__(self, graph: Any, parent: Optional["_Scope"], index: int, where: str) -> None:
        self.graph = graph
        self.parent = parent
        self.index = index
        self.where = where  # "" for the main graph, else "in the 'body' of Loop node 'x'"
        self.twice: Set[str] = set()  # names defined more than once: which one is meant?
        self.producers: Dict[str, Any] = {}
        for node in graph.node:
            for name in node.output:
                if name:
                    if name in self.producers:
                        self.twice.add(name)
                    self.producers.setdefault(name, node)
        self.initializers: Dict[str, Any] = {}
        for tensor in graph.initializer:
            if tensor.name in self.initializers or tensor.name in self.producers:
                self.twice.add(tensor.name)
            self.initializers.setdefault(tensor.name, tensor)
        self.inputs = {i.name for i in graph.input} | {
            s.values.name for s in graph.sparse_initializer}

    def resolve(self, name: str) -> Tuple[str, "_Scope", Any]:
        """Where ``name`` is defined: ("init", scope, tensor), ("node", scope, node) or
        ("input", scope, None); a subgraph's own names hide its parents'."""
        scope: Optional[_Scope] = self
        while scope is not None:
            if name in scope.twice:
                raise WeightsFormatError(f"the graph defines {_shown(name)} more than once "
                                         "(ONNX names are unique): corrupt or ambiguous")
            if name in scope.initializers:
                return "init", scope, scope.initializers[name]
            if name in scope.producers:
                return "node", scope, scope.producers[name]
            if name in scope.inputs:
                return "input", scope, None
            scope = scope.parent
        raise _NotConstant(f"{_shown(name)} is not defined in the graph")


class _Layer(NamedTuple):
    """One ONNX LSTM node, its weights converted to torch's names (without ``_l{k}``)."""

    node: Any
    scope: _Scope
    label: str
    directions: int
    layout: int
    hidden_size: int
    input_size: int
    weights: "OrderedDict[str, np.ndarray]"  # "weight_ih", "weight_hh_reverse", ...
    initial_h: Optional[np.ndarray]  # (D, N, H) whatever the layout, if constant
    initial_c: Optional[np.ndarray]
    states_given: Tuple[bool, bool]  # whether initial_h, initial_c are inputs of the node


class _Reader:
    """Finds the LSTM nodes of a parsed model and computes their constant inputs."""

    def __init__(self, onnx: Any, model: Any, opset: int, file_size: int) -> None:
        self.onnx = onnx
        self.model = model
        self.opset = opset
        self.budget = _EXPANSION * file_size + _EXPANSION_FLOOR
        self.nodes_run = 0
        self.values: Dict[Tuple[int, str], np.ndarray] = {}
        self.used: Set[str] = set()  # initializers of the main graph that feed LSTM nodes
        self.evaluator: Any = None

    # -------------------------------------------------------- constants
    def constant(self, name: str, scope: _Scope) -> np.ndarray:
        """The value of ``name`` seen from ``scope``; _NotConstant if it is not one."""
        stack = [(name, scope)]
        expanding: Set[Tuple[int, str]] = set()
        while stack:
            current, where = stack[-1]
            kind, home, item = where.resolve(current)
            key = (home.index, current)
            if key in self.values:
                stack.pop()
                continue
            if kind == "input":
                raise _NotConstant(f"{_shown(current)} is an input of the graph")
            if kind == "init":
                self.values[key] = _array(self.onnx, item)
                if home.index == 0:
                    self.used.add(current)
                stack.pop()
                continue
            node = item
            if node.op_type not in _CONSTANT_OPS or node.domain not in _DEFAULT_DOMAINS:
                raise _NotConstant(f"{_shown(current)} is computed by {_node_text(node)}")
            needed = [(i, home) for i in node.input if i]
            missing = [(i, s) for i, s in needed if (s.resolve(i)[1].index, i) not in self.values]
            if missing:
                if key in expanding:
                    raise WeightsFormatError(f"the graph has a cycle through {_shown(current)}")
                expanding.add(key)
                stack.extend(missing)
                continue
            self._run(node, home, [self.values[(s.resolve(i)[1].index, i)] for i, s in needed])
            stack.pop()
        return self.values[(scope.resolve(name)[1].index, name)]

    def _run(self, node: Any, scope: _Scope, inputs: List[np.ndarray]) -> None:
        """Run one node of a constant subgraph with the reference evaluator, within budget."""
        self.nodes_run += 1
        if self.nodes_run > _MAX_CONSTANT_NODES:
            raise WeightsFormatError(f"refused: the constant subgraphs of the LSTM weights take "
                                     f"more than {_MAX_CONSTANT_NODES:,} nodes")
        if len(node.input) > _MAX_NODE_INPUTS:
            raise WeightsFormatError(f"refused: {_node_text(node)} has {len(node.input):,} "
                                     f"inputs, more than {_MAX_NODE_INPUTS:,}")
        if _makes_text(node, inputs, self.onnx):
            # NumPy's fixed-width strings take 4 bytes a character of the longest one:
            # no estimate from element counts holds, and a weight is never text.
            raise _NotConstant(f"{_node_text(node)} makes strings, not numbers")
        itemsize = max([8] + [a.dtype.itemsize for a in inputs])
        estimate = itemsize * _elements(node, inputs, self.onnx)
        if estimate > self.budget:
            raise WeightsFormatError(f"refused: {_node_text(node)} would make ~{estimate:,} "
                                     "bytes, past the budget of this file")
        if self.evaluator is None:
            from onnx.reference import ReferenceEvaluator

            self.evaluator = ReferenceEvaluator
        plain = self.onnx.NodeProto()
        plain.CopyFrom(node)
        plain.domain = ""
        feeds = {name: value for name, value in zip([i for i in node.input if i], inputs)}
        try:
            results = self.evaluator(plain, opsets={"": self.opset}).run(None, feeds)
        except WeightsFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - the evaluator fails in many ways on bad input
            raise WeightsFormatError(f"{_node_text(node)} of a constant subgraph failed: "
                                     f"{type(exc).__name__}: {exc}") from None
        if len(results) != len(node.output):
            raise WeightsFormatError(f"{_node_text(node)} of a constant subgraph gave "
                                     f"{len(results)} outputs, not {len(node.output)}")
        for name, value in zip(node.output, results):
            if not name:
                continue
            value = _widened(value)
            self.budget -= value.nbytes
            if self.budget < 0:
                raise WeightsFormatError(f"refused: {_node_text(node)} makes more bytes than "
                                         "the budget of this file")
            self.values[(scope.index, name)] = value

    def charge(self, nbytes: int, what: str) -> None:
        """Count bytes made against the budget: nodes sharing one weight each get a copy."""
        self.budget -= nbytes
        if self.budget < 0:
            raise WeightsFormatError(f"refused: the weights of {what} and those before make "
                                     f"more than {_EXPANSION} times the file's bytes (plus "
                                     f"{_EXPANSION_FLOOR >> 20} MiB)")

    def weight(self, layer: str, node: Any, scope: _Scope, index: int, what: str) -> np.ndarray:
        """Input ``index`` of an LSTM node, which must be constant and of a float type."""
        try:
            value = self.constant(node.input[index], scope)
        except _NotConstant as exc:
            raise WeightsFormatError(
                f"{layer}: its {what} (input {index}) is not a constant: {exc}; fastlstm reads "
                "weights that are initializers or Constant nodes, or are computed from them by "
                f"{', '.join(sorted(_CONSTANT_OPS - {'Constant'}))}") from None
        if value.dtype not in _WEIGHT_DTYPES:
            raise WeightsFormatError(f"{layer}: its {what} has dtype {value.dtype}, not a "
                                     "float type")
        return value

    def optional(self, node: Any, scope: _Scope, index: int) -> Optional[np.ndarray]:
        """Input ``index`` of a node if it is given and constant, else None."""
        if len(node.input) <= index or not node.input[index]:
            return None
        try:
            return self.constant(node.input[index], scope)
        except _NotConstant:
            return None

    # ----------------------------------------------------------- layers
    def layer(self, node: Any, scope: _Scope, label: str) -> _Layer:
        """An LSTM node's attributes checked and its weights converted."""
        directions, layout, hidden = _attributes(self.onnx, node, label)
        if len(node.input) < 3 or not node.input[1] or not node.input[2]:
            raise WeightsFormatError(f"{label} lacks its W or R input")
        if len(node.input) > 8:
            raise WeightsFormatError(f"{label} has {len(node.input)} inputs; LSTM has 8")
        if len(node.input) > 7 and node.input[7]:
            peepholes = self.optional(node, scope, 7)
            if peepholes is None or peepholes.dtype.kind != "f" or np.any(peepholes):
                raise WeightsFormatError(f"{label} has peephole weights P (input 7), which "
                                         "fastlstm (like torch.nn.LSTM) does not implement")
        w = self.weight(label, node, scope, 1, "W")
        r = self.weight(label, node, scope, 2, "R")
        b = None
        if len(node.input) > 3 and node.input[3]:
            b = self.weight(label, node, scope, 3, "B")
        if r.ndim != 3 or r.shape[0] != directions or r.shape[2] == 0 \
                or r.shape[1] != 4 * r.shape[2]:
            raise WeightsFormatError(f"{label}: R has shape {r.shape}, expected (num_directions="
                                     f"{directions}, 4*hidden_size, hidden_size)")
        h = r.shape[2]
        if hidden is not None and hidden != h:
            raise WeightsFormatError(f"{label} has hidden_size={hidden} but R has shape "
                                     f"{r.shape}")
        if w.ndim != 3 or w.shape[:2] != (directions, 4 * h):
            raise WeightsFormatError(f"{label}: W has shape {w.shape}, expected ({directions}, "
                                     f"{4 * h}, input_size)")
        if b is not None and b.shape != (directions, 8 * h):
            raise WeightsFormatError(f"{label}: B has shape {b.shape}, expected ({directions}, "
                                     f"{8 * h})")
        weights: "OrderedDict[str, np.ndarray]" = OrderedDict()
        for d, suffix in enumerate(("", "_reverse")[:directions]):
            weights["weight_ih" + suffix] = _torch_gates(w[d], h)
            weights["weight_hh" + suffix] = _torch_gates(r[d], h)
            if b is not None:
                weights["bias_ih" + suffix] = _torch_gates(b[d, :4 * h], h)
                weights["bias_hh" + suffix] = _torch_gates(b[d, 4 * h:], h)
        self.charge(sum(v.nbytes for v in weights.values()), label)
        initial_h, initial_c = (self._state(node, scope, label, i, directions, layout, h)
                                for i in (5, 6))
        given = (len(node.input) > 5 and bool(node.input[5]),
                 len(node.input) > 6 and bool(node.input[6]))
        return _Layer(node, scope, label, directions, layout, h, w.shape[2], weights, initial_h,
                      initial_c, given)

    def _state(self, node: Any, scope: _Scope, label: str, index: int, directions: int,
               layout: int, h: int) -> Optional[np.ndarray]:
        """initial_h (5) or initial_c (6) as (D, N, H), if it is a constant."""
        state = self.optional(node, scope, index)
        if state is None:
            return None
        if layout == 1 and state.ndim == 3:
            state = state.transpose(1, 0, 2)
        if state.ndim != 3 or state.shape[0] != directions or state.shape[2] != h \
                or state.dtype.kind != "f":
            name = "initial_h" if index == 5 else "initial_c"
            raise WeightsFormatError(f"{label}: its {name} has shape {state.shape} and dtype "
                                     f"{state.dtype}, not a float (num_directions, batch, "
                                     "hidden_size) array")
        return state

    def chained_from(self, layer: _Layer, by_output: Dict[Tuple[int, str], _Layer]
                     ) -> Optional[_Layer]:
        """The layer whose output ``layer`` takes as torch's exporters chain the layers of a
        multi-layer LSTM: through Squeeze(axis 1), or Transpose(0, 2, 1, 3) and Reshape to
        (L, N, D*H) (``dynamo=True``: also one direction, and to fixed sizes); None for
        anything else."""
        scope = layer.scope
        if layer.layout != 0 or not layer.node.input[0]:
            return None
        step = scope.producers.get(layer.node.input[0])
        if step is None or step.domain not in _DEFAULT_DOMAINS or not step.input:
            return None
        d, h = layer.directions, layer.hidden_size
        if d == 1 and step.op_type == "Squeeze":
            axes = self._operand(step, scope, 1, "axes")
            if axes is None or [int(a) for a in axes.ravel()] not in ([1], [-3]):
                return None
        elif step.op_type == "Reshape":
            shape = self._operand(step, scope, 1, None)
            allow_zero = _attribute(self.onnx, step, "allowzero", 0)
            dims = [] if shape is None else [int(s) for s in shape.ravel()]
            # (0, 0, -1) or (0, 0, D*H) from the TorchScript exporter; (L, N, D*H) with the
            # export's fixed sizes from the dynamo one
            if allow_zero or len(dims) != 3 or not (
                    dims in ([0, 0, -1], [0, 0, d * h])
                    or (dims[0] > 0 and dims[1] > 0 and dims[2] == d * h)):
                return None
            step = scope.producers.get(step.input[0])
            if step is None or step.op_type != "Transpose" or not step.input or \
                    list(_attribute(self.onnx, step, "perm", [])) != [0, 2, 1, 3]:
                return None
        else:
            return None
        before = by_output.get((scope.index, step.input[0]))
        if before is None or before is layer or before.layout != 0 \
                or (before.directions, before.hidden_size) != (d, h) \
                or layer.input_size != d * h or set(before.weights) != set(layer.weights) \
                or _module_scope(before.node.name) != _module_scope(layer.node.name):
            return None
        return before

    def _operand(self, node: Any, scope: _Scope, index: int,
                 attribute: Optional[str]) -> Optional[np.ndarray]:
        """A node's constant operand: input ``index``, or (older opsets) an attribute."""
        if len(node.input) > index and node.input[index]:
            value = self.optional(node, scope, index)
            return None if value is None or value.dtype.kind not in "iu" else value
        if attribute is not None:
            found = _attribute(self.onnx, node, attribute, None)
            return None if found is None else np.asarray(list(found), dtype=np.int64)
        return None


def _node_text(node: Any) -> str:
    """``a Transpose node ('name')`` for a message."""
    name = f" ({_shown(node.name)})" if node.name else ""
    return f"a {_shown(node.op_type)[1:-1]} node{name}"


def _module_scope(name: str) -> str:
    """torch's module path in a node name: ``/encoder/rnn`` of ``/encoder/rnn/LSTM_1``.
    Two stacked ``nn.LSTM`` modules (``/a/LSTM``, ``/b/LSTM``) stay two modules."""
    return name.rpartition("/")[0]


def _elements(node: Any, inputs: List[np.ndarray], onnx: Any) -> int:
    """An upper bound of the elements a node of :data:`_CONSTANT_OPS` outputs: only Gather
    and Concat can make more than their inputs hold."""
    if node.op_type == "Gather" and len(inputs) == 2:
        data, indices = inputs
        if data.ndim == 0:
            return indices.size
        axis = _attribute(onnx, node, "axis", 0)
        axis = axis % data.ndim if isinstance(axis, int) and -data.ndim <= axis < data.ndim else 0
        return indices.size * (data.size // data.shape[axis] if data.shape[axis] else 0)
    return sum(a.size for a in inputs)


def _makes_text(node: Any, inputs: List[np.ndarray], onnx: Any) -> bool:
    """Whether a node of a constant subgraph takes or makes string tensors."""
    if any(a.dtype.kind in "OSU" for a in inputs):
        return True
    string = onnx.TensorProto.STRING
    if node.op_type == "Cast":
        return _attribute(onnx, node, "to", None) == string
    if node.op_type == "Constant":
        for attribute in node.attribute:
            if attribute.name in ("value_string", "value_strings"):
                return True
            if attribute.HasField("t") and attribute.t.data_type == string:
                return True
    return False


def _attribute(onnx: Any, node: Any, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _attributes(onnx: Any, node: Any, label: str) -> Tuple[int, int, Optional[int]]:
    """(num_directions, layout, hidden_size or None) of an LSTM node; an attribute that
    torch's LSTM has no equivalent for raises WeightsFormatError naming it."""
    values = {}
    for attribute in node.attribute:
        if attribute.name not in _KNOWN_ATTRIBUTES:
            raise WeightsFormatError(f"{label} has attribute {_shown(attribute.name)}, which "
                                     "the ONNX LSTM does not define")
        if attribute.name in values:  # ONNX Runtime refuses such a model too
            raise WeightsFormatError(f"{label} has attribute {_shown(attribute.name)} twice")
        values[attribute.name] = onnx.helper.get_attribute_value(attribute)
    direction = _text(values.get("direction", b"forward"))
    if direction == "reverse":
        raise WeightsFormatError(
            f"{label} has direction='reverse': a lone backward layer is not a torch.nn.LSTM "
            "layer (torch runs backward only as the second direction of a bidirectional "
            "LSTM); run a forward LSTM over the reversed sequence instead")
    if direction not in ("forward", "bidirectional"):
        raise WeightsFormatError(f"{label} has direction={_shown(direction)}; ONNX defines "
                                 "'forward', 'reverse' and 'bidirectional'")
    directions = 2 if direction == "bidirectional" else 1
    activations = [_text(a) for a in values.get("activations", [])]
    if activations and [a.lower() for a in activations] != ["sigmoid", "tanh", "tanh"] * directions:
        raise WeightsFormatError(f"{label} has activations={activations}: fastlstm computes "
                                 "Sigmoid, Tanh, Tanh (torch.nn.LSTM's) only")
    for name in ("activation_alpha", "activation_beta"):
        if len(values.get(name, [])):
            raise WeightsFormatError(f"{label} has attribute {name}: fastlstm's activations "
                                     "(Sigmoid, Tanh) take no parameters")
    if "clip" in values:
        raise WeightsFormatError(f"{label} has clip={values['clip']}: fastlstm (like "
                                 "torch.nn.LSTM) does not clip the gates' inputs")
    if values.get("input_forget", 0) != 0:
        raise WeightsFormatError(f"{label} has input_forget={values['input_forget']} (coupled "
                                 "input and forget gates), which fastlstm does not implement")
    layout = values.get("layout", 0)
    if not isinstance(layout, int) or layout not in (0, 1):
        raise WeightsFormatError(f"{label} has layout={layout}; ONNX defines 0 and 1")
    hidden = values.get("hidden_size")
    if hidden is not None and (not isinstance(hidden, int) or hidden <= 0):
        raise WeightsFormatError(f"{label} has hidden_size={hidden}")
    return directions, layout, hidden


def _torch_gates(matrix: np.ndarray, h: int) -> np.ndarray:
    """The 4H leading rows of an ONNX weight (gates i, o, f, c) in torch's order (i, f, g, o),
    as a new, C-ordered, native-byte-order array."""
    blocks = [matrix[g * h:(g + 1) * h] for g in _ONNX_TO_TORCH_GATES]
    return _copy(np.concatenate(blocks, axis=0))


def _label(node: Any, scope: _Scope, index: int) -> str:
    name = f"LSTM node {_shown(node.name)}" if node.name else f"unnamed LSTM node #{index}"
    return f"{name} {scope.where}" if scope.where else name


def _prefix_base(name: str) -> str:
    """A node name as a key-safe prefix (without its dot): ``/`` and ``.`` separate
    components, other characters than letters, digits and ``_`` become ``_``."""
    parts = [_UNSAFE.sub("_", part) for part in re.split(r"[/.]", name[:4 * _MAX_PREFIX])]
    return ".".join(part for part in parts if part)[:_MAX_PREFIX].strip(".")


def _find_layers(reader: _Reader, main: Any) -> Tuple[List[_Layer], List[_Scope]]:
    """Every LSTM node of the main graph, then of its subgraphs, breadth first; and the
    scopes of all the graphs."""
    scopes = [_Scope(main, None, 0, "")]
    layers: List[_Layer] = []
    position = 0
    while position < len(scopes):
        scope = scopes[position]
        position += 1
        for node in scope.graph.node:
            if node.op_type == "LSTM" and node.domain in _DEFAULT_DOMAINS:
                layers.append(reader.layer(node, scope, _label(node, scope, len(layers))))
            for attribute in node.attribute:
                graphs = ([attribute.g] if attribute.HasField("g") else []) + list(
                    attribute.graphs)
                for graph in graphs:
                    where = (f"in the {_shown(attribute.name)} subgraph of {node.op_type} node "
                             f"{_shown(node.name)}")
                    scopes.append(_Scope(graph, scope, len(scopes), where))
    return layers, scopes


def _shared(reader: _Reader, scopes: List[_Scope]) -> Set[str]:
    """The initializers of the main graph that LSTM weights were computed from and that
    other nodes use too: they stay among the other tensors, under their own names."""
    shared: Set[str] = set()
    if not reader.used:
        return shared
    for scope in scopes:
        for node in scope.graph.node:
            if node.op_type == "LSTM" and node.domain in _DEFAULT_DOMAINS:
                continue
            outputs = [name for name in node.output if name]
            if outputs and all((scope.index, name) in reader.values for name in outputs):
                continue  # a node of a weight's constant subgraph
            for name in node.input:
                if name in reader.used and name not in shared:
                    try:
                        kind, home, _ = scope.resolve(name)
                    except (_NotConstant, WeightsFormatError):
                        continue
                    if kind == "init" and home.index == 0:
                        shared.add(name)
    return shared


def _modules(reader: _Reader, layers: List[_Layer]) -> List[List[_Layer]]:
    """The layers grouped into modules: chains of layers as torch exports a multi-layer
    LSTM, in order; every other layer alone."""
    by_output = {(layer.scope.index, layer.node.output[0]): layer
                 for layer in layers if layer.node.output and layer.node.output[0]}
    after: Dict[int, List[_Layer]] = {}
    before: Dict[int, _Layer] = {}
    for layer in layers:
        previous = reader.chained_from(layer, by_output)
        if previous is not None:
            after.setdefault(id(previous), []).append(layer)
            before[id(layer)] = previous
    modules: List[List[_Layer]] = []
    placed: Set[int] = set()
    for layer in layers:
        previous = before.get(id(layer))
        if id(layer) in placed or (previous is not None and len(after[id(previous)]) == 1):
            continue
        chain = [layer]
        placed.add(id(layer))
        while len(after.get(id(chain[-1]), [])) == 1 and id(after[id(chain[-1])][0]) not in placed:
            chain.append(after[id(chain[-1])][0])
            placed.add(id(chain[-1]))
        modules.append(chain)
    modules.extend([layer] for layer in layers if id(layer) not in placed)  # cycles: alone
    return modules


def _chain_state(chain: List[_Layer], which: int, key: str, prefix: str,
                 notes: List[str]) -> Optional[np.ndarray]:
    """torch's ``h_0`` (which=0) or ``c_0`` of a chain of layers, ``(layers * D, N, H)``: a
    layer without the input starts from zeros, as ONNX says.  None, with a note, when a
    layer's state is not a constant of the file (a graph input, or computed)."""
    given = [layer.states_given[which] for layer in chain]
    if not any(given):
        return None
    states = [layer.initial_c if which else layer.initial_h for layer in chain]
    name = ("initial_c" if which else "initial_h")
    unknown = [layer for layer, g, s in zip(chain, given, states) if g and s is None]
    if unknown:
        notes.append(f"ONNX {unknown[0].label} takes an {name} that is not a constant of the "
                     f"file: no {prefix}{key} is reported; pass the state as hx")
        return None
    batches = {s.shape[1] for s in states if s is not None}
    if len(batches) != 1:
        notes.append(f"the {name} inputs of the layers at {prefix!r} have batch sizes "
                     f"{sorted(batches)}: no {prefix}{key} is reported")
        return None
    (batch,) = batches
    filled = [s if s is not None else
              np.zeros((layer.directions, batch, layer.hidden_size), np.float32)
              for layer, s in zip(chain, states)]
    dtype = np.result_type(*filled)
    return _copy(np.concatenate([s.astype(dtype, copy=False) for s in filled], axis=0))


def _opset(model: Any) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions or not 1 <= versions[0] <= 1000:
        raise WeightsFormatError("the ONNX model declares no opset version of the default "
                                 "domain (truncated or corrupt)")
    return int(versions[0])


def read_onnx(file: IO[bytes], size: int, notes: Optional[List[str]] = None
              ) -> "OrderedDict[str, np.ndarray]":
    """The weights of every ONNX LSTM node of a model file, under torch's names.

    Parameters
    ----------
    file : binary file at its start
    size : int
        Its size in bytes.
    notes : list of str, optional
        Appended to: which nodes make which module, ``layout=1`` nodes, no LSTM node.

    Returns
    -------
    OrderedDict of str to numpy.ndarray
        For each module, ``<prefix>weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
        ``bias_hh_l{k}`` (and ``_reverse``), then ``<prefix>h_0`` and ``<prefix>c_0`` (torch's
        ``(num_layers * D, N, H)``) when every layer's initial state is a constant; then the
        main graph's other initializers under their own names.
    """
    onnx = _import_onnx()
    if size > _MAX_BYTES:
        raise WeightsFormatError(f"refused: an ONNX file holds at most {_MAX_BYTES:,} bytes "
                                 f"(protobuf's limit), this one {size:,}")
    data = file.read(size)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, RecursionError, ...
        raise WeightsFormatError(f"corrupt or truncated ONNX file: {type(exc).__name__}: "
                                 f"{exc}") from None
    del data
    if not model.HasField("graph"):
        raise WeightsFormatError("an ONNX model without a graph (truncated or corrupt)")
    _check(onnx, model)
    reader = _Reader(onnx, model, _opset(model), size)
    layers, scopes = _find_layers(reader, model.graph)
    modules = _modules(reader, layers)
    shared = _shared(reader, scopes)
    others = [t for t in model.graph.initializer if t.name not in reader.used or t.name in shared]
    taken = {t.name[:t.name.rfind(".") + 1] for t in others}
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    notes = notes if notes is not None else []
    for index, chain in enumerate(modules):
        base = _prefix_base(chain[0].node.name) or f"LSTM_{index}"
        prefix, count = base + ".", 2
        while prefix in taken:
            prefix, count = f"{base}_{count}.", count + 1
        taken.add(prefix)
        for k, layer in enumerate(chain):
            for name, value in layer.weights.items():
                cut = name.find("_reverse")
                out[f"{prefix}{name if cut < 0 else name[:cut]}_l{k}"
                    f"{'' if cut < 0 else '_reverse'}"] = value
        for which, key in enumerate(("h_0", "c_0")):
            state = _chain_state(chain, which, key, prefix, notes)
            if state is not None:
                reader.charge(state.nbytes, f"the {key} of {prefix!r}")
                out[prefix + key] = state
        if len(chain) == 1:
            notes.append(f"ONNX {chain[0].label} is the LSTM at {prefix!r}")
        else:
            names = ", ".join(_shown(layer.node.name) for layer in chain)
            where = f" {chain[0].scope.where}" if chain[0].scope.where else ""
            notes.append(f"ONNX LSTM nodes {names}{where} (chained) are layers 0 to "
                         f"{len(chain) - 1} of the LSTM at {prefix!r}")
        if chain[0].layout == 1:
            notes.append(f"ONNX {chain[0].label} has layout=1 (batch first): pass "
                         "batch_first=True to from_state_dict")
        for layer in chain:
            if len(layer.node.input) > 4 and layer.node.input[4]:
                notes.append(f"ONNX {layer.label} has sequence_lens, which is not a weight: "
                             "give the lengths as a packed sequence (pack_padded_sequence) "
                             "for ONNX's results")
    if not layers:
        notes.append("no ONNX LSTM node in this model (torch.onnx.export writes an "
                     "nn.LSTMCell as Gemm, Sigmoid and Tanh nodes): modules are found only "
                     "among initializers named like torch's parameters")
    kept = {getattr(onnx.TensorProto, name) for name in _OTHER_TYPES}
    for tensor in others:
        if tensor.data_type not in kept:  # strings, float8, 4-bit types, ... are left out
            continue
        if tensor.name in out:
            raise WeightsFormatError(f"the model holds two tensors named {_shown(tensor.name)}")
        out[tensor.name] = _copy(_array(onnx, tensor))
    return out
