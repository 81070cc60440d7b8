"""The parameter machinery shared by fastlstm's modules, and weight packing.

A module keeps its parameters as read-only arrays under torch's names, in
torch's order, and the kernels' packed layout of them, rebuilt on first use
after any change.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from typing import (
    IO,
    Any,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

import numpy as np

from fastlstm import _threads
from fastlstm._common import (
    check_device,
    cpu_only_error,
    dtype_name,
    freeze,
    resolve_dtype,
    to_arguments,
    to_numpy,
)
from fastlstm._errors import StateDictError
from fastlstm._ext import kernels
from fastlstm.io.files import file_metadata, load, save
from fastlstm.io.state_dict import (
    INT8_SUFFIX,
    SCALE_SUFFIX,
    SKIP_INIT,
    Inferred,
    build_module,
    find_modules,
    group_of,
    infer_config,
    int8_per_channel,
    int8_split,
    int8_values,
    normalize_prefix,
)

ArrayLike = Any
RngLike = Union[None, int, np.random.Generator]
PathLike = Union[str, bytes, "os.PathLike[str]"]
_M = TypeVar("_M", bound="_Module")

# A forked child has only the thread that forked: a module's lock held by another thread
# of the parent (packing a first call, loading weights) would stay held there for ever.
# Each fork starts a new generation, and a module's lock of an older one is made again.
_fork_generation = 0
_locks_lock = threading.Lock()  # makes modules' locks one at a time


def _new_generation_in_child() -> None:
    global _fork_generation, _locks_lock
    _fork_generation += 1
    _locks_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_generation_in_child)



def _uniform(gen: np.random.Generator, bound: float, shape: Tuple[int, ...],
             dtype: Any) -> np.ndarray:
    """``gen.uniform(-bound, bound, shape).astype(dtype)``, the same numbers, drawn in
    slices of 1M so that a large weight needs no float64 copy of itself."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    step = 1 << 20
    for lo in range(0, flat.size, step):
        flat[lo:lo + step] = gen.uniform(-bound, bound, size=min(step, flat.size - lo))
    return out

class _IncompatibleKeys(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return (f"_IncompatibleKeys(missing_keys={self.missing_keys!r}, "
                f"unexpected_keys={self.unexpected_keys!r})")


class _PackedLayer(NamedTuple):
    """One layer's weights laid out for the kernels (built once, reused by every call).

    Gate rows are interleaved by panels (``_interleave_gates``), so the gate
    buffer has ``4 * Hp`` columns per direction.
    """

    w_ih: np.ndarray  # (D*4Hp, I_layer): both directions, interleaved, for BLAS
    w_ih_p: np.ndarray  # the same transposed, in panels, for the small-M kernel
    w_hh_p: np.ndarray  # (D, *): each interleaved W_hh^T in panels
    bias: np.ndarray  # (D, 4Hp): b_ih + b_hh interleaved, zeros without bias
    w_hr_p: np.ndarray  # (D, *): each W_hr^T in panels, or (D, 0) without projection
    recurrent_finite: bool  # W_hh holds no NaN or infinity (see zero_state_skips)
    # "float32", "float64", "bfloat16" or "int8": then the panels are uint32 words of
    # bfloat16 row pairs (pack_panels_bf16) or of int8 row quads with the scales
    # (pack_panels_int8), w_ih is empty (no BLAS), and the sizes below are read.
    weight_dtype: str = "float32"
    n_in: int = 0  # the layer's input size
    out_size: int = 0  # its output size (H, or the projection's)




def _gate_unit(dtype: np.dtype) -> int:
    """Hidden units per weight panel: a panel holds their i, f, g and o columns."""
    return kernels.panel_width(np.dtype(dtype).name) // 4


def _interleave_gates(w: np.ndarray, hidden: int) -> np.ndarray:
    """Reorder gate rows (i, f, g, o blocks of ``hidden``) panel by panel.

    Rows of ``w`` (shape ``(4*hidden, ...)``) become, for each panel of U
    units, ``[i(U) f(U) g(U) o(U)]`` of those units, with hidden padded to a
    multiple of U by zero rows.
    """
    # int8 weights: the units of the float32 gate math.
    unit = _gate_unit(w.dtype if w.dtype.kind == "f" else np.dtype(np.float32))
    padded_h = -(-hidden // unit) * unit
    rest = w.shape[1:]
    gates = np.zeros((4, padded_h) + rest, dtype=w.dtype)
    gates[:, :hidden] = w.reshape((4, hidden) + rest)
    gates = gates.reshape((4, padded_h // unit, unit) + rest).swapaxes(0, 1)
    return np.ascontiguousarray(gates).reshape((4 * padded_h,) + rest)


def _pack_panels(weight: np.ndarray) -> np.ndarray:
    """Lay out ``weight.T`` (K x N) for the small-M kernel, flattened.

    Panel ``p`` is columns ``[p*W, (p+1)*W)`` of ``weight.T``, zero-padded past N
    (W from ``kernels.panel_width``), as W/S strips of S columns (S from
    ``kernels.panel_strip``), each a contiguous K x S block; S = W where the
    kernels read whole panel rows.
    """
    n, k = weight.shape
    width = kernels.panel_width(weight.dtype.name)
    strip = kernels.panel_strip(weight.dtype.name)
    n_panels = -(-n // width)
    padded = np.zeros((n_panels * width, k), dtype=weight.dtype)
    padded[:n] = weight
    strips = padded.reshape(n_panels, width // strip, strip, k).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(strips).ravel()


#: The safetensors header key of a saved module's weight storage type ("bfloat16", "int8").
WEIGHT_DTYPE_KEY = "fastlstm.weight_dtype"
def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 to bfloat16 bits (uint16): to nearest, ties to even; a NaN stays a
    (quiet) NaN.  The rounding the bfloat16 kernels apply to activations (bf16.h)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
               >> np.uint32(16)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, ((u >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16), rounded)


def pack_panels_bf16(weight: np.ndarray) -> np.ndarray:
    """``weight.T`` (K x N) in bfloat16 for the bfloat16 kernels (``bf16.h``), flattened
    to uint32: panel ``p`` (columns ``[64p, 64p + 64)``, zero past N) holds, for each
    pair of rows ``(2kk, 2kk + 1)`` (K padded to even with zeros) and each column, the
    two bfloat16 values in one 32-bit word, row ``2kk`` in the low half."""
    n, k = weight.shape
    n_panels, pairs = -(-n // 64), -(-k // 2)
    bits = np.zeros((n_panels * 64, 2 * pairs), dtype=np.uint16)
    bits[:n, :k] = bf16_bits(weight)
    panels = bits.reshape(n_panels, 64, pairs, 2).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(panels).view("<u4").astype(np.uint32, copy=False).ravel()


def _int8_scale(amax: np.ndarray) -> np.ndarray:
    """The float32 scales of rows whose largest magnitude is ``amax``: amax / 127, moved
    to a value s with fl(fl(127 s) / 127) == s, so that quantizing the dequantized
    weights again gives the same int8 values and scales (``int8_weight``)."""
    seven = np.float32(127)
    s = (amax.astype(np.float32) / seven).astype(np.float32)
    for _ in range(8):  # one pass moves almost every scale; two more are unheard of
        nxt = ((s * seven).astype(np.float32) / seven).astype(np.float32)
        if np.array_equal(nxt, s):
            break
        s = nxt
    return s


def int8_weight(weight: np.ndarray, per_channel: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """A weight matrix (rows x K) as symmetric int8: ``(q, scale)``, q = rint(w / scale)
    in [-127, 127] (float32, ties to even), scale (rows,) per row or (1,) per matrix
    (``_int8_scale``; 0 for a zero row).  docs/precision.md has the rules."""
    w = np.asarray(weight, dtype=np.float32)
    if not np.isfinite(w).all():
        raise ValueError("int8 weights must be finite; this one holds a NaN or an infinity")
    amax = np.abs(w).max(axis=1) if per_channel else np.abs(w).max(keepdims=True).ravel()
    if w.size == 0:
        amax = np.zeros(w.shape[0] if per_channel else 1, np.float32)
    scale = _int8_scale(amax)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.rint(w / safe[:, None]).astype(np.float32)
    return np.clip(q, -127, 127).astype(np.int8), scale


def pack_panels_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 ``q.T`` (K x N, scales of the N rows of q) for the int8 kernels (``int8.h``),
    flattened to uint32: panel ``p`` (columns ``[64p, 64p + 64)``, zero past N) holds,
    for each quad of rows ``4kk .. 4kk + 3`` (K padded to a multiple of 4 with zeros)
    and each column, the four int8 values in one 32-bit word (row 4kk in the low byte),
    then a row of the columns' float32 scales and a row of their int32 compensations,
    -128 times the column's sum (the kernels' activations are unsigned, q + 128)."""
    n, k = q.shape
    n_panels, quads = -(-n // 64), -(-k // 4)
    if k > 65535:
        raise ValueError(f"int8 weights take at most 65535 inputs (int32 sums), got {k}")
    padded = np.zeros((n_panels * 64, 4 * quads), dtype=np.int8)
    padded[:n, :k] = q
    words = padded.reshape(n_panels, 64, quads, 4).transpose(0, 2, 1, 3)
    words = np.ascontiguousarray(words).view("<u4").reshape(n_panels, quads, 64)
    scales = np.zeros(n_panels * 64, np.float32)
    scales[:n] = np.broadcast_to(np.asarray(scale, np.float32), (n,))
    comp = (-128 * padded.astype(np.int64).sum(axis=1)).astype("<i4")
    tail = np.stack([scales.view("<u4").reshape(n_panels, 64),
                     comp.view("<u4").reshape(n_panels, 64)], axis=1)
    return np.concatenate([words, tail], axis=1).astype(np.uint32, copy=False).ravel()


def _int8_interleaved(weights: List[Tuple[np.ndarray, np.ndarray]],
                      hidden: int) -> Tuple[np.ndarray, np.ndarray]:
    """The directions' int8 gate weights stacked with their gate rows interleaved, and
    their scales alike (per matrix: repeated over the rows)."""
    qs = [_interleave_gates(q, hidden) for q, _ in weights]
    scales = [_interleave_gates(np.broadcast_to(np.asarray(s, np.float32), (q.shape[0],)),
                                hidden) for q, s in weights]
    return np.concatenate(qs), np.concatenate(scales)


# Packed weights start on a cache line, so that no 64-byte vector load of a panel
# straddles two lines: with NumPy's 16-byte alignment a single sequence at
# H = 256 ran about 9% slower, its steps bound by reading W_hh.
_ALIGN = 64


def aligned_empty(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array starting on a cache line: the kernels' gate buffers, whose
    rows AMX loads and stores as whole lines (rows straddling two made the bfloat16 and
    int8 products about 1.5x slower)."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = np.empty(nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    return buf[start:start + nbytes].view(dt).reshape(shape)


def workspace_array(workspace: Dict[str, np.ndarray], key: str, shape: Tuple[int, ...],
                    dtype: Any) -> np.ndarray:
    """An uninitialised array on a cache line, kept in ``workspace`` under ``key`` and
    given again (grown when too small) to the next call that passes the same dict:
    ``forward_many``'s batches reuse their buffers instead of mapping fresh ones, which
    a process with a fixed trim threshold (Dask's workers) faults in page by page
    (docs/scale.md)."""
    dt = np.dtype(dtype)
    need = int(np.prod(shape, dtype=np.int64))
    buf = workspace.get(key)
    if buf is None or buf.dtype != dt or buf.size < need:
        buf = aligned_empty((need + need // 4,), dt)  # a quarter spare: batches vary
        workspace[key] = buf
    return buf[:need].reshape(shape)


def zeros_written(shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros that the kernels read, then overwrite (a zero initial state): written here
    rather than taken from ``np.zeros``, whose large arrays are the kernel's shared zero
    page until first written, and then fault again, flushing the TLB on every CPU of the
    process (a packed batch of 1,310 sequences, 2 layers: 150-166 -> 136-144 ms)."""
    out = np.empty(shape, dtype)
    out.fill(0)
    return out


def _aligned(array: np.ndarray) -> np.ndarray:
    """``array`` (C-contiguous) starting on a cache line: itself, or an aligned copy."""
    if array.ctypes.data % _ALIGN == 0:
        return array
    buf = np.empty(array.nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    out = buf[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def pack_layer(
    w_ih: List[Any],
    w_hh: List[Any],
    biases: Optional[List[np.ndarray]],
    w_hr: Optional[List[Any]],
    hidden: int,
    dtype: np.dtype,
    weight_dtype: Optional[str] = None,
) -> _PackedLayer:
    """Pack one layer's weights, one list entry per direction (torch's layouts);
    ``weight_dtype`` "bfloat16" stores them in bfloat16 (``pack_panels_bf16``), "int8"
    in int8 (``pack_panels_int8``; each weight entry is then its ``(q, scale)``), with
    no copy of W_ih for BLAS (which has neither product)."""
    if weight_dtype == "int8":
        return _pack_layer_int8(w_ih, w_hh, biases, w_hr, hidden)
    n_dirs = len(w_ih)
    bf16 = weight_dtype == "bfloat16"
    panels = pack_panels_bf16 if bf16 else _pack_panels
    w_ih_all = np.concatenate([_interleave_gates(w, hidden) for w in w_ih])
    w_hh_p = np.stack([panels(_interleave_gates(w, hidden)) for w in w_hh])
    if biases is not None:
        bias = np.stack([_interleave_gates(b, hidden) for b in biases]).astype(dtype, copy=False)
    else:
        bias = np.zeros((n_dirs, w_ih_all.shape[0] // n_dirs), dtype=dtype)
    if w_hr is not None:
        w_hr_p = np.stack([panels(w) for w in w_hr])
    else:
        w_hr_p = np.empty((n_dirs, 0), dtype=np.uint32 if bf16 else dtype)
    blas_copy = np.empty((0, w_ih_all.shape[1]), dtype) if bf16 else _aligned(w_ih_all)
    return _PackedLayer(blas_copy, _aligned(panels(w_ih_all)), _aligned(w_hh_p),
                        _aligned(bias), _aligned(w_hr_p),
                        all(bool(np.isfinite(w).all()) for w in w_hh),
                        weight_dtype or np.dtype(dtype).name, int(w_ih[0].shape[1]),
                        int(w_hh[0].shape[1]))


def _pack_layer_int8(w_ih: List[Tuple[np.ndarray, np.ndarray]],
                     w_hh: List[Tuple[np.ndarray, np.ndarray]],
                     biases: Optional[List[np.ndarray]],
                     w_hr: Optional[List[Tuple[np.ndarray, np.ndarray]]],
                     hidden: int) -> _PackedLayer:
    """``pack_layer`` for int8 weights (finite by construction)."""
    n_dirs, n_in = len(w_ih), int(w_ih[0][0].shape[1])
    w_ih_p = pack_panels_int8(*_int8_interleaved(w_ih, hidden))
    w_hh_p = np.stack([pack_panels_int8(*_int8_interleaved([w], hidden)) for w in w_hh])
    unit = _gate_unit(np.dtype(np.float32))
    gate_cols = -(-hidden // unit) * unit * 4
    if biases is not None:
        bias = np.stack([_interleave_gates(b, hidden) for b in biases]).astype(np.float32)
    else:
        bias = np.zeros((n_dirs, gate_cols), dtype=np.float32)
    if w_hr is not None:
        w_hr_p = np.stack([pack_panels_int8(q, np.broadcast_to(
            np.asarray(s, np.float32), (q.shape[0],))) for q, s in w_hr])
    else:
        w_hr_p = np.empty((n_dirs, 0), dtype=np.uint32)
    return _PackedLayer(np.empty((0, n_in), np.float32), _aligned(w_ih_p), _aligned(w_hh_p),
                        _aligned(bias), _aligned(w_hr_p), True, "int8", n_in,
                        int(w_hh[0][0].shape[1]))


def bf16_values(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest bfloat16 (``bf16_bits``), as float32."""
    bits = bf16_bits(x).astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32).reshape(np.shape(x))


#: Most rows (steps x sequences) one call may have: the kernels, and BLAS its dimensions,
#: index rows with 32-bit ints.
MAX_ROWS = 2**31 - 1


def check_rows(rows: int, what: str) -> None:
    """Refuse a call of more rows than the kernels index, before anything is allocated."""
    if rows > MAX_ROWS:
        raise ValueError(f"fastlstm: input of {rows} {what}; at most {MAX_ROWS} rows per "
                         "call are supported, split the batch")


def _check_int(name: str, value: Any) -> None:
    # torch takes True and False as 1 and 0; a flag given as a size is refused here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")


def check_sizes(input_size: Any, hidden_size: Any) -> None:
    """torch.nn.RNNBase's checks of the two sizes: types first, then values."""
    _check_int("input_size", input_size)
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    _check_int("hidden_size", hidden_size)
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")


def zero_state_skips(layers: List[_PackedLayer]) -> bool:
    """Whether a call without an initial state may skip the first step's
    recurrent product: ``W_hh @ 0`` is zero only for finite ``W_hh`` (a NaN or
    infinity times zero is NaN, which torch's product carries into the output)."""
    return all(w.recurrent_finite for w in layers)


class _Module:
    """Parameters under torch's names, state dicts, modes, pickling."""

    #: The kind of module (``"LSTM"``, ``"LSTMCell"``) whose keys and shapes the weights-file
    #: readers know; a subclass inherits its parent's.
    _kind: Optional[str] = None
    #: The ``kernels.Tuning`` of this module's calls; None: what ships (see ``_set_tuning``).
    _tuning: Any = None

    _shapes: "OrderedDict[str, Tuple[int, ...]]"
    #: Training mode (inter-layer dropout on); kept in the instance's ``__dict__``.
    training: bool

    def _init_module(self, dtype: Any, rng: RngLike) -> None:
        """Set up the state every module has; ``_shapes`` comes from the subclass."""
        d = self.__dict__
        d["_dtype"] = resolve_dtype(dtype)
        d["training"] = False
        d["_rng"] = np.random.default_rng(rng)
        d["_params"] = OrderedDict()
        d["_shapes"] = self._parameter_shapes()
        d["_packed"] = None
        if SKIP_INIT.get():  # built by from_state_dict: the weights come next
            for name, shape in self._shapes.items():
                self._params[name] = freeze(np.zeros(shape, dtype=self._dtype))
        else:
            self.reset_parameters()

    @property
    def input_size(self) -> int:
        """Features of the input."""
        return self._input_size

    @property
    def hidden_size(self) -> int:
        """Features of the hidden and cell states."""
        return self._hidden_size

    @property
    def bias(self) -> bool:
        """Whether the module has biases."""
        return self._bias

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of parameters and results."""
        return self._dtype

    @property
    def weight_dtype(self) -> str:
        """How the kernels store the weights: ``"float32"`` or ``"float64"`` (the
        module's dtype), or ``"bfloat16"`` or ``"int8"`` after :func:`fastlstm.quantize`;
        inputs, outputs and states keep :attr:`dtype`."""
        return self.__dict__.get("_weight_dtype") or dtype_name(self._dtype)

    def _stored(self, name: str, value: np.ndarray) -> np.ndarray:
        """Parameter ``name`` as this module keeps it: a weight matrix rounded to
        bfloat16, or quantized to int8 and back, once, when the weights are stored so
        (``state_dict`` holds what is computed with); biases stay as they are."""
        weight_dtype = self.__dict__.get("_weight_dtype")
        if not name.startswith("weight_") or not weight_dtype:
            return value
        if weight_dtype == "bfloat16":
            return bf16_values(value)
        try:
            return int8_values(*int8_weight(value, self.__dict__.get("_per_channel", True)))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def _set_weight_dtype(self, weight_dtype: str, per_channel: bool = True,
                          given: Optional[Mapping[str, Tuple[np.ndarray, np.ndarray]]] = None
                          ) -> None:
        """Store the weights as ``weight_dtype`` from now on (``quantize``'s step).  int8:
        one scale per row (``per_channel``) or per matrix; ``given`` holds weights' int8
        values and scales as they are (torch's, a file's), kept until a weight is set."""
        if self.dtype != np.float32:  # the kernels read float32 inputs and states only
            raise ValueError(f"{weight_dtype} weights need a float32 module, got "
                             f"{np.dtype(self.dtype).name}")
        if weight_dtype == "int8":  # refused here, not at the first call's packing
            k = max(shape[1] for name, shape in self._shapes.items() if name.startswith("weight_"))
            if k > 65535:
                raise ValueError(f"int8 weights take at most 65535 inputs (int32 sums), got {k}")
        with self._pack_lock:
            self.__dict__["_weight_dtype"] = weight_dtype
            self.__dict__["_per_channel"] = per_channel
            self.__dict__["_int8_given"] = dict(given or {})
            self.__dict__["_params"] = OrderedDict(
                (name, freeze(int8_values(*self._int8_given[name]) if name in self._int8_given
                              else self._stored(name, value)))
                for name, value in self._params.items())
            self.__dict__["_packed"] = None
            self.__dict__.pop("_bound", None)

    def _commit(self, values: Mapping[str, np.ndarray]) -> None:
        """Make ``values`` (already as ``_stored`` keeps them) the parameters."""
        with self._pack_lock:
            # New tables swapped in whole: a reader without the lock (state_dict,
            # pickle, copy) sees all old or all new weights, never a mixture.
            params = OrderedDict(self._params)
            given = dict(self.__dict__.get("_int8_given") or {})
            for name, value in values.items():
                if value is not params[name]:  # the same array keeps its int8 form
                    given.pop(name, None)
                    params[name] = value
            self.__dict__.update(_params=params, _packed=None)
            if "_int8_given" in self.__dict__:
                self.__dict__["_int8_given"] = given

    def _pack_weight(self, name: str) -> Any:
        """What ``pack_layer`` takes for weight ``name``: the array, or with int8
        storage its int8 values and scales."""
        if self.__dict__.get("_weight_dtype") != "int8":
            return self._params[name]
        given = self.__dict__.get("_int8_given") or {}
        if name in given:
            return given[name]
        return int8_weight(self._params[name], self.__dict__.get("_per_channel", True))

    def _parameter_shapes(self) -> "OrderedDict[str, Tuple[int, ...]]":
        raise NotImplementedError

    # -------------------------------------------------------------- parameters
    def reset_parameters(self, rng: RngLike = None) -> None:
        """Draw every parameter from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).

        Parameters
        ----------
        rng : None, int or numpy.random.Generator, optional
            Source of randomness; by default the module's own generator.

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, rng=0)
        >>> rnn.reset_parameters(rng=1)
        >>> bool(np.abs(rnn.weight_hh_l0).max() <= 1 / np.sqrt(8))
        True
        """
        gen = self._rng if rng is None else np.random.default_rng(rng)
        bound = 1.0 / math.sqrt(self._hidden_size)
        params = OrderedDict(
            (name, freeze(self._stored(name, _uniform(gen, bound, shape, self._dtype))))
            for name, shape in self._shapes.items())
        with self._pack_lock:  # as _commit: a call packing now sees all old or all new
            self.__dict__.update(_params=params, _packed=None)
            if "_int8_given" in self.__dict__:
                self.__dict__["_int8_given"] = {}

    def __getattr__(self, name: str) -> Any:
        # Parameters by name; typed Any, as the private state in __dict__ is.
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("_shapes", ()):
            self._set_parameters({name: value}, strict=False)
        elif name == "training":
            self.__dict__["training"] = bool(value)
        elif hasattr(type(self), name) or name.startswith("_"):
            raise AttributeError(f"attribute '{name}' of {type(self).__name__} is read-only")
        else:
            self.__dict__[name] = value

    def extra_repr(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def __dir__(self) -> List[str]:
        return sorted(set(super().__dir__()) | set(self._params))

    @property
    def _pack_lock(self) -> Any:
        """The lock of packing and of weight changes: this module's, made on first use
        and again in a forked child (see ``_fork_generation``)."""
        entry = self.__dict__.get("_lock")
        if entry is not None and entry[0] == _fork_generation:
            return entry[1]
        with _locks_lock:  # two threads must not make two locks
            entry = self.__dict__.get("_lock")
            if entry is None or entry[0] != _fork_generation:
                entry = self.__dict__["_lock"] = (_fork_generation, threading.Lock())
        return entry[1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_packed"] = None
        state.pop("_lock", None)
        state.pop("_bound", None)  # kernel bindings of the packed weights: made again
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for array in self._params.values():  # pickle does not keep the read-only flag
            freeze(array)

    def __copy__(self: _M) -> _M:
        """A copy with its own parameter table (the arrays, read-only, are shared): a
        parameter set on one module repacks that module's weights only, so a shared
        table would leave the other computing with weights it no longer reports."""
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        new.__dict__["_params"] = OrderedDict(new._params)
        if "_int8_given" in new.__dict__:
            new.__dict__["_int8_given"] = dict(new._int8_given)
        return new

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[Tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` for every parameter, in torch's order.

        Parameters
        ----------
        prefix : str, default=""
            Put before every name with a dot, as torch does (``"rnn"`` gives
            ``"rnn.weight_ih_l0"``).
        recurse, remove_duplicate : bool, default=True
            torch's arguments, accepted: the module has no submodules and no shared
            parameters, so they change nothing.

        Yields
        ------
        name : str
            torch's name, e.g. ``"weight_ih_l0"``.
        array : ndarray
            The read-only parameter, e.g. of shape ``(4*hidden_size, input_size)``.

        Examples
        --------
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, rng=0)
        >>> [(name, p.shape) for name, p in rnn.named_parameters()]
        [('weight_ih_l0', (32, 4)), ('weight_hh_l0', (32, 8)), ('bias_ih_l0', (32,)), \
('bias_hh_l0', (32,))]
        """
        for name, value in self._params.items():
            yield (f"{prefix}.{name}" if prefix else name), value

    def parameters(self, recurse: bool = True) -> Iterator[np.ndarray]:
        """Yield every parameter array, in torch's order.

        Parameters
        ----------
        recurse : bool, default=True
            torch's argument, accepted: the module has no submodules.

        Yields
        ------
        ndarray
            Each read-only parameter, as :meth:`named_parameters` without the names.

        Examples
        --------
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, num_layers=2, rng=0)
        >>> sum(p.size for p in rnn.parameters())
        1024
        """
        yield from self._params.values()

    def state_dict(self, *args: Any, destination: Optional[Dict[str, Any]] = None,
                   prefix: str = "", keep_vars: bool = False) -> "OrderedDict[str, np.ndarray]":
        """Return a copy of the parameters keyed by torch's names, in torch's order.

        Parameters
        ----------
        destination : dict, optional
            Fill this mapping and return it, as torch does (a new OrderedDict by default).
        prefix : str, default=""
            Put before every key (``"rnn."`` gives ``"rnn.weight_ih_l0"``).
        keep_vars : bool, default=False
            torch's argument, accepted: arrays carry no autograd graph to keep.
        *args
            ``destination, prefix, keep_vars`` given by position, as torch still
            takes them, with its ``FutureWarning``.

        Returns
        -------
        OrderedDict of str to ndarray
            Writable copies; ``torch.nn.LSTM.load_state_dict`` accepts them after
            ``torch.from_numpy``, and :meth:`load_state_dict` accepts them as they are.
            Shapes are torch's: ``weight_ih_l{k}`` ``(4*hidden_size, in)``,
            ``weight_hh_l{k}`` ``(4*hidden_size, H_out)``, ``bias_ih_l{k}`` and
            ``bias_hh_l{k}`` ``(4*hidden_size,)``, ``weight_hr_l{k}``
            ``(proj_size, hidden_size)``; for an LSTMCell, ``weight_ih``,
            ``weight_hh``, ``bias_ih``, ``bias_hh``.

        Examples
        --------
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, proj_size=2, rng=0)
        >>> {name: value.shape for name, value in rnn.state_dict().items()}
        {'weight_ih_l0': (32, 4), 'weight_hh_l0': (32, 2), 'bias_ih_l0': (32,), \
'bias_hh_l0': (32,), 'weight_hr_l0': (2, 8)}
        """
        if args:
            if len(args) > 3:
                raise TypeError(f"state_dict() takes at most 3 positional arguments "
                                f"({len(args)} given)")
            # torch's deprecation of the positional form, in its words
            warnings.warn(
                "Positional args are being deprecated, use kwargs instead. Refer to "
                "https://pytorch.org/docs/main/generated/torch.nn.Module.html"
                "#torch.nn.Module.state_dict for details.", FutureWarning, stacklevel=2)
            if destination is None:
                destination = args[0]
            if len(args) > 1 and prefix == "":
                prefix = args[1]
            if len(args) > 2 and keep_vars is False:
                keep_vars = args[2]
        out: Dict[str, Any] = OrderedDict() if destination is None else destination
        for k, v in self._params.items():
            out[prefix + k] = v.copy()
        return cast("OrderedDict[str, np.ndarray]", out)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        """Copy parameters from a mapping of torch's names to arrays or torch tensors.

        Values are cast to the module's dtype.  torch itself is never imported:
        tensors are recognised only when torch is already loaded.

        Parameters
        ----------
        state_dict : Mapping of str to array-like or torch.Tensor
            For example ``torch_lstm.state_dict()`` or :meth:`state_dict`.
        strict : bool, default=True
            If True, missing and unexpected keys raise ``RuntimeError``; if False
            they are returned.  Shape mismatches always raise.
        assign : bool, default=False
            torch's argument, accepted: the values are always copied into the
            module's own read-only arrays of its dtype.

        Returns
        -------
        NamedTuple with ``missing_keys`` and ``unexpected_keys``

        Raises
        ------
        TypeError
            If ``state_dict`` is not a mapping.
        RuntimeError
            Listing missing keys, unexpected keys and every shape mismatch (with
            the key, the shape in the mapping and the module's shape), as torch.
            Nothing is changed when it raises.

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> source = fastlstm.LSTM(4, 8, rng=0)
        >>> rnn = fastlstm.LSTM(4, 8, dtype="float64")
        >>> rnn.load_state_dict(source.state_dict())
        <All keys matched successfully>
        >>> rnn.weight_ih_l0.dtype
        dtype('float64')
        >>> rnn.load_state_dict({"bias_ih_l0": np.zeros(32)}, strict=False).missing_keys
        ['weight_ih_l0', 'weight_hh_l0', 'bias_hh_l0']

        From PyTorch (torch's tensors are accepted as they are):

        >>> import torch
        >>> torch_lstm = torch.nn.LSTM(4, 8)
        >>> rnn.load_state_dict(torch_lstm.state_dict())
        <All keys matched successfully>
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        return self._set_parameters(state_dict, strict=strict)

    def _set_parameters(self, values: Mapping[str, Any], strict: bool) -> _IncompatibleKeys:
        missing = [k for k in self._shapes if k not in values]
        unexpected = [k for k in values if k not in self._shapes]
        errors = []
        converted = {}
        for key in self._shapes:  # torch's order: the module's parameters
            if key not in values:
                continue
            try:
                array = to_numpy(values[key])
            except (TypeError, ValueError):  # a ragged list, say
                array = np.empty(0, dtype=object)
            if array.dtype.kind in "OUSV" or values[key] is None:  # None, a string: no array
                errors.append(f'While copying the parameter named "{key}", expected an '
                              "array, torch.Tensor or array-like from checkpoint but received "
                              f"{type(values[key])}")
                continue
            expected = self._shapes[key]
            if array.shape != expected:
                errors.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(array.shape)} "
                    f"from checkpoint, the shape in current model is {expected}."
                )
                continue
            if array.dtype.kind not in "fiub":
                errors.append(f"cannot load {key}: dtype {array.dtype} is not a real number type")
                continue
            value = np.array(array, dtype=self._dtype, order="C", copy=True)
            if key in (self.__dict__.get("_int8_given") or {}) and np.array_equal(
                    value, self._params[key]):
                # A weight loaded as it already is (a module's own state_dict) keeps the
                # int8 values and scales it came with: quantizing anew could change them.
                converted[key] = self._params[key]
            else:
                converted[key] = freeze(self._stored(key, value))
        if strict:
            if unexpected:
                errors.insert(
                    0,
                    "Unexpected key(s) in state_dict: {}. ".format(
                        ", ".join(f'"{k}"' for k in unexpected)
                    ),
                )
            if missing:
                errors.insert(
                    0,
                    "Missing key(s) in state_dict: {}. ".format(
                        ", ".join(f'"{k}"' for k in missing)
                    ),
                )
        if errors:
            if strict and missing:
                hint = self._prefix_hint(values)
                if hint:
                    errors.append(hint)
            raise RuntimeError(
                "Error(s) in loading state_dict for {}:\n\t{}".format(
                    type(self).__name__, "\n\t".join(errors)
                )
            )
        self._commit(converted)
        return _IncompatibleKeys(missing, unexpected)

    def _prefix_hint(self, values: Mapping[str, Any]) -> Optional[str]:
        """A line naming ``from_state_dict(..., prefix=...)`` when all of this module's
        keys are in ``values`` under a prefix (the state dict of a whole model)."""
        first = next(iter(self._shapes))
        prefixes = sorted({key[:-len(first)] for key in values
                           if isinstance(key, str) and key.endswith("." + first)})
        found = [p for p in prefixes if all(p + k in values for k in self._shapes)]
        if not found:
            return None
        name = type(self).__name__
        return ("This state_dict holds a whole model: this module's keys are under "
                + ", ".join(f'"{p}"' for p in found)
                + f"; load one with fastlstm.{name}.from_state_dict(state_dict, "
                f'prefix="{found[0]}") or pass load_state_dict the keys without the prefix.')

    def _packed_layers(self) -> List[_PackedLayer]:
        """The kernel layout of the weights, built on first use after any change."""
        packed = self._packed
        if packed is not None:
            return packed
        with self._pack_lock:
            if self._packed is None:
                self.__dict__["_packed"] = self._pack()
            return self._packed

    def _pack(self) -> List[_PackedLayer]:
        raise NotImplementedError

    # ------------------------------------------------------------ weights files
    @classmethod
    def _config_from_state_dict(
        cls, params: Mapping[str, np.ndarray], prefix: str = ""
    ) -> "Inferred":
        """Constructor arguments from parameter names and shapes (the hook of
        :meth:`from_state_dict`).

        ``params`` maps the last component of each key under ``prefix`` to its
        array.  Returns ``Inferred(config, keys)``: the arguments, and the names
        in ``params`` that are this kind of module's parameters (the others
        are ignored).  The default handles ``LSTM`` and ``LSTMCell`` and their
        subclasses; a new module class overrides it.
        """

        return infer_config(cls._kind, params, prefix)

    @classmethod
    def from_state_dict(
        cls: Type[_M],
        source: Union[PathLike, IO[bytes], Mapping[str, Any]],
        prefix: str = "",
        dtype: Any = None,
        **options: Any,
    ) -> _M:
        """Build a module from a state dict or a weights file, inferring its configuration.

        Parameters
        ----------
        source : path, binary file or mapping of str to array-like or torch.Tensor
            A file that :func:`fastlstm.load` reads (PyTorch checkpoint,
            safetensors, ``.npz``), or a state dict already in memory (for
            example ``torch_model.state_dict()``).
        prefix : str, default=""
            What the module's keys start with, e.g. ``"encoder.rnn."`` (the
            trailing dot may be left out); ``""`` for keys such as
            ``weight_ih_l0`` at the top level.  ``fastlstm.inspect(path)`` lists
            the prefixes of every LSTM and LSTMCell in a file.
        dtype : None or dtype, optional
            float32 or float64.  By default float64 when all the module's
            weights are float64, otherwise float32 (float16 and bfloat16
            weights are widened exactly to float32).
        **options
            Other constructor arguments, which weights do not record:
            ``batch_first`` and ``dropout`` for ``LSTM``.  Arguments that the
            weights determine (``input_size``, ``hidden_size``, ``num_layers``,
            ``bias``, ``bidirectional``, ``proj_size``) may be given too, as a
            check.

        Returns
        -------
        LSTM or LSTMCell
            A new module in eval mode holding the weights.

        Raises
        ------
        fastlstm.StateDictError
            If the keys under ``prefix`` do not make a consistent module: no
            parameters there (the message lists where modules of this kind
            are), a missing or unexpected key, a shape that does not fit, or an
            option that contradicts the weights; every problem is listed with
            the full key names.
        fastlstm.WeightsFormatError, fastlstm.UnsafeFileError, OSError
            From reading ``source`` (see :func:`fastlstm.load`).
        ValueError
            If ``dtype`` is float64 and the weights are stored as int8 or bfloat16
            (which float32 modules hold).
        TypeError
            If a mapping has a key that is not a string, or a file object is in
            text mode.

        Examples
        --------
        >>> import fastlstm
        >>> weights = fastlstm.LSTM(8, 16, num_layers=2, rng=0).state_dict()
        >>> state_dict = {"encoder.rnn." + k: v for k, v in weights.items()}
        >>> rnn = fastlstm.LSTM.from_state_dict(state_dict, prefix="encoder.rnn.")
        >>> rnn
        LSTM(8, 16, num_layers=2)
        """
        prefix = normalize_prefix(prefix)
        if isinstance(source, Mapping):
            arrays: Mapping[str, Any] = source
            key = next((k for k in arrays if not isinstance(k, str)), None)
            if key is not None:
                raise TypeError(f"state dict keys must be strings, got {type(key).__name__}")
        else:
            arrays = load(source)
        params = {name: to_numpy(value) for name, value in group_of(arrays, prefix).items()}
        params, given = int8_split(params)
        try:
            module, names = build_module(cls, params, prefix, dtype, options)
        except StateDictError as exc:
            if not str(exc).startswith("no "):
                raise
            everything = {k: to_numpy(v) for k, v in arrays.items() if isinstance(k, str)}
            kinds = {cls._kind: cls} if cls._kind else {}
            found = [m.prefix for m in find_modules(everything, kinds)[0]]
            where = (f"; {cls.__name__} weights were found under "
                     + ", ".join(repr(p) for p in found) + ": pass one as prefix="
                     if found else f"; the source holds no {cls.__name__} weights")
            raise StateDictError(str(exc) + where) from None
        stored = "int8" if given else None
        if not given and isinstance(source, (str, bytes, os.PathLike)) \
                and file_metadata(source).get(WEIGHT_DTYPE_KEY) == "bfloat16":
            stored = "bfloat16"
        if stored is not None and module.dtype != np.float32:
            raise ValueError(f"{cls.__name__}.from_state_dict: these weights are stored as "
                             f"{stored}, which float32 modules hold, not "
                             f"{np.dtype(module.dtype).name}")
        module.load_state_dict({name: params[name] for name in names})
        if given:
            module._set_weight_dtype("int8", int8_per_channel(given), given)
        elif stored is not None:
            module._set_weight_dtype(stored)
        return cast(_M, module)

    def save(
        self, path: Union[PathLike, IO[bytes]], *, format: Optional[str] = None, prefix: str = ""
    ) -> None:
        """Write the parameters to a safetensors or ``.npz`` file, under torch's names.

        Parameters
        ----------
        path : path or binary file
        format : {None, "safetensors", "npz"}, optional
            By default from the extension of ``path`` (``.safetensors``,
            ``.npz``).
        prefix : str, default=""
            Put before every key, e.g. ``"encoder.rnn."`` to write the keys of
            the module as part of a larger model.

        Notes
        -----
        The file holds the weights, not ``batch_first`` or ``dropout``; pass
        those again to :meth:`from_state_dict`.  A module with bfloat16 weights
        (:func:`fastlstm.quantize`) saves to safetensors only: its weight
        matrices as BF16 and its storage type in the header, which
        :meth:`from_state_dict` restores (docs/precision.md).  safetensors files load in
        torch with ``safetensors.torch.load_file`` and
        ``torch_lstm.load_state_dict``; see :func:`fastlstm.save`.

        Examples
        --------
        >>> import os, tempfile
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(8, 16, rng=0)
        >>> path = os.path.join(tempfile.mkdtemp(), "rnn.safetensors")
        >>> rnn.save(path)
        >>> fastlstm.LSTM.from_state_dict(path)
        LSTM(8, 16)
        """
        prefix = normalize_prefix(prefix)
        state = OrderedDict((prefix + k, v) for k, v in self._params.items())
        weight_dtype = self.__dict__.get("_weight_dtype")
        if weight_dtype == "int8":
            # Each weight as its int8 values and scales under names of its own (torch's
            # float names are left out, not filled with something else).
            state = OrderedDict()
            for k, v in self._params.items():
                if k.startswith("weight_"):
                    q, scale = self._pack_weight(k)
                    state[prefix + k + INT8_SUFFIX] = q
                    state[prefix + k + SCALE_SUFFIX] = np.asarray(scale, np.float32)
                else:
                    state[prefix + k] = v
            # .npz has no header, but the keys say it all.
            save(state, path, format=format,
                 metadata={"format": "pt", WEIGHT_DTYPE_KEY: weight_dtype})
            return
        if weight_dtype:
            # The weight matrices as BF16 (torch's names, which torch loads), and the
            # storage type in the header, which from_state_dict reads back.
            try:
                save(state, path, format=format,
                     metadata={"format": "pt", WEIGHT_DTYPE_KEY: weight_dtype},
                     bfloat16=[prefix + k for k in self._params if k.startswith("weight_")])
            except ValueError as exc:
                if "safetensors only" not in str(exc):
                    raise
                raise ValueError(f"a module with {weight_dtype} weights saves to safetensors "
                                 "only (.npz has no place for the storage type)") from None
            return
        save(state, path, format=format)

    @classmethod
    def _from_torch_quantized(cls: Type[_M], module: Any, kind: str, dtype: Any) -> _M:
        """``from_torch`` of torch's dynamically quantized LSTM or LSTMCell: its int8
        weights and scales as they are (``weight_dtype == "int8"``), or its float16
        weights as float32 values; the biases float32."""
        from fastlstm.io.torch_quantized import quantized_weights

        if kind != cls.__name__:
            raise TypeError(f"{cls.__name__}.from_torch expects a torch.nn.{cls.__name__} "
                            f"(or its dynamically quantized form), got a quantized {kind}")
        if dtype is not None and resolve_dtype(dtype) != np.float32:
            raise ValueError(f"a dynamically quantized {kind} converts to float32, not {dtype}")
        weights = quantized_weights(module)
        new = cast(Any, cls)(**weights.config, dtype=np.float32)
        new.load_state_dict(weights.floats)
        if weights.int8:
            new._set_weight_dtype("int8", int8_per_channel(weights.int8), weights.int8)
        return cast(_M, new)

    def _next_order(self) -> bool:
        """Panel order of the next one-step call: it alternates from call to call
        (see kernels._single_step); a race between threads only costs cache hits."""
        backward_order = not self.__dict__.get("_backward_order", False)
        self.__dict__["_backward_order"] = backward_order
        return backward_order

    def _set_tuning(self, tuning: Any) -> None:
        """Run this module's calls under ``tuning`` (a ``kernels.Tuning``; None: the
        shipped rules): for tests and measurements, which compare the ways a call can
        be scheduled on the same module.  Its bindings are made again."""
        if tuning is not None and not isinstance(tuning, kernels.Tuning):
            raise TypeError(f"expected a kernels.Tuning or None, got {type(tuning).__name__}")
        with self._pack_lock:
            self.__dict__["_tuning"] = tuning
            self.__dict__["_packed"] = None  # rebinds the one-step stack and streams
            self.__dict__.pop("_bound", None)

    def _bound_layers(self) -> Any:
        """The packed layers bound for one-timestep calls (``kernels.BoundStack``:
        LSTMCell calls, and one-step calls of unidirectional LSTMs without
        projection), made again when the weights change."""
        bound = self.__dict__.get("_bound")
        if bound is None or bound[0] is not self._packed:  # also when not packed yet
            layers = self._packed_layers()
            layout, needs_eval = self._call_layout()
            bound = (layers, kernels.BoundStack(layers, self._hidden_size, layout, needs_eval,
                                               zero_state_skips(layers), self._tuning))
            self.__dict__["_bound"] = bound
        return bound[1]

    def _bound_pair(self) -> Tuple[List[_PackedLayer], Any]:
        """``(packed layers, BoundStack)`` of one binding, read together: a cast in another
        thread swaps both, and a call must take its dtype from the layers it runs."""
        self._bound_layers()
        return self.__dict__["_bound"]

    def _call_layout(self) -> Tuple[int, bool]:
        """How calls of the module run one timestep (``kernels.module_call``): the
        layout of ``BoundStack.step`` (-1: never), and whether only in eval mode."""
        raise NotImplementedError

    def _one_step(self, input: np.ndarray, hx: Any, layout: int) -> Any:
        """The compiled one-timestep call (``kernels.BoundStack.step``) on plain
        arrays, or None when the call needs the general path."""
        # Thread count 0: the kernels take the default themselves, which spares
        # this per-frame path the Python calls of get_num_threads.  (Calls of the
        # module reach the bound layers through kernels.module_call, without this.)
        return self._bound_layers().step(input, hx, _threads._num_threads or 0, layout)

    # ------------------------------------------------------------------- modes
    def train(self: _M, mode: bool = True) -> _M:
        """Set training mode (inter-layer dropout of LSTM active) and return self.

        Parameters
        ----------
        mode : bool, default=True
            True for training mode, False for eval mode.

        Returns
        -------
        self

        Examples
        --------
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, num_layers=2, dropout=0.5, rng=0)
        >>> rnn.training                # a new module is in eval mode, unlike torch
        False
        >>> rnn.train().training
        True
        """
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.__dict__["training"] = mode
        return self

    def eval(self: _M) -> _M:
        """Set eval mode (no dropout; the default for a new module) and return self.

        Returns
        -------
        self

        Examples
        --------
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, num_layers=2, dropout=0.5, rng=0).train()
        >>> rnn.eval().training
        False
        """
        return self.train(False)

    # ------------------------------------------------------ devices and dtypes
    def to(self: _M, *args: Any, **kwargs: Any) -> _M:
        """Move to a device and/or cast to a dtype, in place, as ``torch.nn.Module.to``.

        The forms are torch's: ``to(device=None, dtype=None, non_blocking=False)``,
        ``to(dtype, non_blocking=False)`` and ``to(tensor, non_blocking=False)``
        (the tensor's or array's dtype, and a tensor's device).  The device must
        be the CPU; ``non_blocking`` and ``memory_format`` are accepted and have
        no effect, and ``copy`` is refused, as by torch.

        Parameters
        ----------
        device : None, "cpu" or torch.device("cpu")
        dtype : float32 or float64, as NumPy dtypes, their names or torch dtypes

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Any device other than the CPU.
        TypeError
            A dtype other than float32 and float64, or arguments in no form of ``to``.
        RuntimeError
            A ``copy`` argument (torch's error).

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, rng=0)
        >>> rnn.to("cpu", np.float64).weight_ih_l0.dtype
        dtype('float64')
        >>> rnn.to(np.zeros(2, np.float32)).dtype     # the dtype of an array or tensor
        dtype('float32')
        """
        device, dtype = to_arguments(args, kwargs)
        check_device(device)
        return self._cast(dtype) if dtype is not None else self

    def _cast(self: _M, dtype: Any) -> _M:
        """Cast every parameter to ``dtype`` in place (packed again on next use)."""
        resolved = resolve_dtype(dtype)
        if resolved != self._dtype and self.__dict__.get("_weight_dtype"):
            raise TypeError(f"a module with {self.weight_dtype} weights computes in "
                            f"{dtype_name(self._dtype)}; cannot cast it to "
                            f"{dtype_name(resolved)}")
        if resolved != self._dtype:
            with self._pack_lock:
                params = OrderedDict(
                    (name, freeze(value.astype(resolved))) for name, value in self._params.items()
                )
                self.__dict__.update(_params=params, _dtype=resolved, _packed=None)
        return self

    def float(self: _M) -> _M:
        """Cast the parameters to float32 in place and return self, as torch's ``float()``.

        Returns
        -------
        self

        Examples
        --------
        >>> from fastlstm import LSTM
        >>> LSTM(4, 8, dtype="float64").float().weight_hh_l0.dtype
        dtype('float32')
        """
        return self._cast(np.float32)

    def double(self: _M) -> _M:
        """Cast the parameters to float64 in place and return self, as torch's ``double()``.

        The results of later calls are float64; a :class:`fastlstm.Stream` of
        the module casts its state at its next step.

        Returns
        -------
        self

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8, rng=0).double()
        >>> output, (h_n, c_n) = rnn(np.ones((5, 4)))
        >>> output.dtype, h_n.dtype
        (dtype('float64'), dtype('float64'))
        """
        return self._cast(np.float64)

    def half(self: _M) -> _M:
        """Refused: fastlstm computes in float32 or float64 only.

        Raises
        ------
        TypeError
            Always; the module is left as it was.

        Examples
        --------
        >>> import fastlstm
        >>> fastlstm.LSTM(4, 8).half()
        Traceback (most recent call last):
            ...
        TypeError: fastlstm supports dtype float32 and float64, got 'float16'
        """
        return self._cast("float16")

    def cpu(self: _M) -> _M:
        """Return self: the module is on the CPU already.

        Returns
        -------
        self

        Examples
        --------
        >>> import fastlstm
        >>> cell = fastlstm.LSTMCell(4, 8)
        >>> cell.cpu() is cell
        True
        """
        return self

    def cuda(self: _M, device: Any = None) -> _M:
        """Refused with ``ValueError``, whatever the device index: fastlstm runs on the CPU only.

        Examples
        --------
        >>> from fastlstm import LSTMCell
        >>> LSTMCell(4, 8).cuda(0)
        Traceback (most recent call last):
            ...
        ValueError: fastlstm runs on the CPU only: device must be None or 'cpu', got 'cuda:0'
        """
        raise cpu_only_error("cuda" if device is None else
                             f"cuda:{device}" if isinstance(device, int) else str(device))

    def requires_grad_(self: _M, requires_grad: bool = True) -> _M:
        """Return self for ``requires_grad_(False)``, as inference code calls it.

        Parameters
        ----------
        requires_grad : bool, default=True
            Must be False: fastlstm has no autograd.

        Returns
        -------
        self

        Raises
        ------
        RuntimeError
            For ``requires_grad=True``.

        Examples
        --------
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8)
        >>> rnn.eval().requires_grad_(False) is rnn
        True
        """
        if requires_grad:
            raise RuntimeError("fastlstm runs inference only: its parameters have no "
                               "gradients (use torch to train, then load the weights)")
        return self

    # ----------------------------------------------------------------- forward
    def __call__(self, input: ArrayLike, hx: Optional[Tuple[ArrayLike, ArrayLike]] = None):
        return self.forward(input, hx)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # LSTM and LSTMCell are called through kernels.module_call, which takes
        # one-step calls of plain arrays straight to the kernels (forward's own
        # check of that path, in C); a subclass whose forward comes before that
        # __call__ in its MRO (its own, or a mixin's) gets the __call__ that calls
        # it, as in torch.
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        owner = next(i for i, k in enumerate(mro) if "__call__" in k.__dict__)
        if next(i for i, k in enumerate(mro) if "forward" in k.__dict__) < owner:
            cls.__call__ = _Module.__call__  # type: ignore[method-assign]
