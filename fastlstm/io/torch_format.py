"""PyTorch's checkpoint formats, read without torch and without running the file.

``torch.save`` writes a pickle in which tensors are calls of a few functions
of ``torch._utils`` on storages that the pickle names by a *persistent id*;
the storages' bytes are elsewhere: in the ``data/<key>`` records of a zip
archive (the default since torch 1.6), or after the pickle in the same stream
(the legacy format, ``_use_new_zipfile_serialization=False``).

Unpickling runs whatever callables the pickle names, so a pickle from an
untrusted file is never given to :mod:`pickle` as it is.  Two layers guard it:

1. Every pickle is first *parsed* (:func:`pickletools.genops`, which only
   decodes opcodes): opcodes outside :data:`_OPCODES` (``INST``, ``OBJ``,
   ``NEWOBJ``, ``EXT*``, buffers, text persistent ids) and ``GLOBAL`` names
   outside the allow-list are refused before anything is built, and so are
   memo indices beyond the pickle's length (they would make the unpickler
   allocate a huge memo).
2. The unpickler (:class:`_RestrictedUnpickler`) resolves a global only
   through the allow-list, to fastlstm's own stand-ins -- sealed objects
   (``__slots__``, a ``__setstate__`` that refuses) that record what the
   pickle describes.  torch is never imported; nothing outside this module
   is ever called; no class is ever handed to the unpickler, so ``NEWOBJ``
   and ``BUILD`` cannot reach any type's constructor or attributes.

Tensors are then copied out of the storages with every size, offset and
stride checked against the bytes actually present, and a budget on the total
bytes produced (views may repeat a storage, but not without bound).

Sizes are bounded before anything is read or decompressed: a pickle may hold
at most :data:`_MAX_PICKLE_BYTES` bytes and :data:`_MAX_OPCODES` opcodes, and a
compressed zip member may expand at most :data:`_MAX_RATIO` times, and never
past the size it declares (:class:`ZipRecords`).
"""

from __future__ import annotations

import bz2
import io
import lzma
import math
import pickle
import pickletools
import struct
import sys
import zipfile
import zlib
from collections import OrderedDict
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Set,
    Tuple,
    Union,
)

import numpy as np

from fastlstm._errors import UnsafeFileError, WeightsFormatError, WeightsMemoryError

__all__ = ["read_legacy", "read_zip", "torch_zip_prefix"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # first pickle of the legacy format
PROTOCOL_VERSION = 1001  # second pickle of the legacy format
_MAX_NDIM = 32
#: Bytes the tensors of a file may expand to, beyond their storages' bytes:
#: ``_EXPANSION * storage bytes + _EXPANSION_FLOOR``.  Genuine files stay at 1x
#: (each tensor its own storage) to ~2x (tied weights); a file of views that
#: repeat a storage a million times is refused instead of exhausting memory.
_EXPANSION = 16
_EXPANSION_FLOOR = 1 << 26
#: Bytes one pickle may hold.  torch's pickle of a state dict takes ~100 bytes a
#: tensor (a checkpoint of 1,600 tensors: 147 KB), so 64 MiB is ~600,000 tensors;
#: a larger ``data.pkl`` is refused before it is read or decompressed.
_MAX_PICKLE_BYTES = 64 << 20
#: Opcodes one pickle may hold: torch's pickle of a state dict takes ~30 a tensor,
#: so ~35,000 tensors (~8,000 parameters with their Adam state).  Bounds the time
#: of the opcode scan (~0.5 us an opcode) and the number of objects the unpickler
#: can build (each takes an opcode): at the limit, a pickle of a million empty
#: lists loads in ~3 s and ~300 MB.
_MAX_OPCODES = 1 << 20
#: How much a compressed zip member may expand (torch writes none compressed,
#: ``numpy.savez_compressed`` deflates): deflate's own limit is ~1032x; bzip2
#: and LZMA, which can expand a millionfold, are held to the same.
_MAX_RATIO = 1100
#: Characters the dotted keys that ``_flatten`` builds may come to, all together: a
#: state dict's keys take ~100 a tensor, while a pickle of a few KB can repeat one long
#: key a million times down a list or a chain of dicts (terabytes of keys).
_MAX_KEY_CHARS = 64 << 20
#: The deepest nesting of values in a pickle (a checkpoint's is ~10): past some 100,000,
#: hashing nested tuples overflows the C stack.
_MAX_DEPTH = 1000
_MIB = 1 << 20

# Pickle opcodes a torch state dict may use (protocols 0 to 5).  Refused:
# INST, OBJ, NEWOBJ, NEWOBJ_EX (construct classes), EXT1/2/4 (copyreg's
# extension registry, a global lookup that bypasses find_class's cache),
# PERSID (text ids, never written by torch), NEXT_BUFFER, READONLY_BUFFER.
_OPCODES = frozenset("""
    PROTO FRAME STOP MARK POP POP_MARK DUP
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8
    UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    EMPTY_LIST APPEND APPENDS LIST EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3
    EMPTY_DICT DICT SETITEM SETITEMS EMPTY_SET ADDITEMS FROZENSET
    GET BINGET LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE
    GLOBAL STACK_GLOBAL REDUCE BUILD BINPERSID
""".split())
_PUT_OPCODES = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))


# ------------------------------------------------------------------- dtypes
class _DType(NamedTuple):
    """A torch dtype: its name, the numpy type its bytes are read as, its size."""

    name: str
    code: str  # numpy type code without byte order ("f4", "u2" for bfloat16, ...)
    itemsize: int


_DTYPES: Dict[str, _DType] = {d.name: d for d in (
    _DType("float32", "f4", 4), _DType("float64", "f8", 8), _DType("float16", "f2", 2),
    _DType("bfloat16", "u2", 2), _DType("int8", "i1", 1), _DType("int16", "i2", 2),
    _DType("int32", "i4", 4), _DType("int64", "i8", 8), _DType("uint8", "u1", 1),
    _DType("uint16", "u2", 2), _DType("uint32", "u4", 4), _DType("uint64", "u8", 8),
    _DType("bool", "u1", 1), _DType("complex64", "c8", 8), _DType("complex128", "c16", 16),
)}
# torch's other names of the same dtypes, as ``torch.<name>`` globals.
_DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16",
                  "short": "int16", "int": "int32", "long": "int64",
                  "cfloat": "complex64", "cdouble": "complex128"}
_STORAGE_TYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# Globals of torch that are safe but that fastlstm cannot turn into arrays.
_UNSUPPORTED = {
    "torch._utils._rebuild_qtensor": "quantized tensors",
    "torch._utils._rebuild_sparse_tensor": "sparse tensors",
    "torch._utils._rebuild_sparse_csr_tensor": "sparse tensors",
    "torch._utils._rebuild_nested_tensor": "nested tensors",
    "torch._utils._rebuild_meta_tensor_no_storage": "tensors without data (device 'meta')",
    "torch._utils._rebuild_wrapper_subclass": "tensor subclasses",
    "torch._utils._rebuild_device_tensor_from_numpy": "tensors pickled from numpy arrays",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "tensors of non-CPU devices",
    "torch._utils._rebuild_mkldnn_tensor": "MKL-DNN tensors",
    "torch._utils._rebuild_xla_tensor": "XLA tensors",
}
for _name in ("QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage",
              "QUInt2x4Storage"):
    _UNSUPPORTED[f"torch.{_name}"] = "quantized storages"
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
              "float8_e8m0fnu", "float4_e2m1fn_x2", "complex32", "chalf", "qint8", "quint8",
              "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2", "bits8",
              "bits16"):
    _UNSUPPORTED[f"torch.{_name}"] = f"dtype torch.{_name}"


def _check_int(value: Any, what: str, minimum: int = 0) -> int:
    # Below 2**63, as torch's int64: arithmetic on a megabyte-long integer takes minutes.
    if type(value) is not int or value < minimum:
        raise WeightsFormatError(f"{what} must be an integer >= {minimum}, got {_describe(value)}")
    if value >= 1 << 63:
        raise WeightsFormatError(f"{what} must be below 2**63, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    """A short, safe description of a value from the file (never its repr)."""
    if isinstance(value, int) and not -10**40 < value < 10**40:
        return f"an integer of {value.bit_length()} bits"  # str() of a huge one is slow
    if isinstance(value, (bool, int, float)) or value is None:
        return str(value)
    if isinstance(value, str):
        return repr(value[:40])
    return type(value).__name__


# ------------------------------------------------------------- stand-ins
class _Sealed:
    """Base of every object the unpickler may hand out: no state can be set on it."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:  # the BUILD opcode
        raise UnsafeFileError(f"refused: the pickle sets the state of {self!r} (BUILD)")

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class _Global(_Sealed):
    """An allow-listed global: a name and fastlstm's own function behind it."""

    __slots__ = ("name", "_fn")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __repr__(self) -> str:
        return self.name


class _Marker(_Sealed):
    """An allow-listed global that is not callable: a dtype, a storage type, a class."""

    __slots__ = ("name", "dtype", "untyped")

    def __init__(self, name: str, dtype: Optional[_DType] = None, untyped: bool = False) -> None:
        self.name = name
        self.dtype = dtype
        self.untyped = untyped

    def __repr__(self) -> str:
        return self.name


class _Storage(_Sealed):
    """A storage named by a persistent id; its bytes are set when they are read.

    A view (legacy format only) has ``root`` and an element ``offset`` into it.
    """

    __slots__ = ("key", "dtype", "numel", "data", "root", "offset")

    def __init__(self, key: str, dtype: _DType, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: Optional[Union[bytes, memoryview]] = None
        self.root: Optional["_Storage"] = None
        self.offset = 0

    def buffer(self) -> Tuple[Union[bytes, memoryview], int, int]:
        """``(bytes, byte offset, byte count)`` of this storage's data."""
        if self.root is not None:
            data, start, _ = self.root.buffer()
            return data, start + self.offset * self.dtype.itemsize, self.numel * self.dtype.itemsize
        if self.data is None:
            raise WeightsFormatError(f"storage '{self.key}' has no data in the file")
        return self.data, 0, len(self.data)

    def __repr__(self) -> str:
        return f"storage '{self.key}'"


class _Tensor(_Sealed):
    """What ``_rebuild_tensor*`` describes: a strided view of a storage."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage: _Storage, offset: int, size: Tuple[int, ...],
                 stride: Tuple[int, ...], dtype: _DType) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"tensor of {self.storage!r}"


class _StateDict(OrderedDict):
    """``collections.OrderedDict`` as the unpickler builds it.

    ``BUILD`` on a state dict sets its ``_metadata`` (module versions), which
    fastlstm does not need: any dict of state is accepted and dropped.
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafeFileError("refused: BUILD of an OrderedDict with a non-dict state")


def _as_shape(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > _MAX_NDIM:
        raise WeightsFormatError(f"tensor {what} must be a tuple of at most {_MAX_NDIM} "
                                 f"integers, got {_describe(value)}")
    return tuple(_check_int(v, f"tensor {what} entry") for v in value)


# ----------------------------------------------------------------- loading
class _Loader:
    """The state of reading one file: allow-listed globals, storages, tensors.

    ``read_storage(key, nbytes)`` returns a storage's bytes (zip format), or is
    None when they follow the pickle (legacy format: filled in later).
    """

    def __init__(self, read_storage: Optional[Callable[[str, int], bytes]],
                 legacy: bool, big_endian: bool = False) -> None:
        self.read_storage = read_storage
        self.legacy = legacy
        self.big_endian = big_endian
        self.storages: Dict[str, _Storage] = {}
        self.views: Dict[str, _Storage] = {}
        self.storage_bytes = 0
        self.globals = self._allowed_globals()
        self.rebuilders = {self.globals[name] for name in (
            "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
            "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
            "torch._utils._rebuild_parameter_with_state")}

    # The allow-list: fresh stand-ins for every file, so that nothing one file
    # does can carry over to the next.
    def _allowed_globals(self) -> Dict[str, _Sealed]:
        g: Dict[str, _Sealed] = {}
        fns: Dict[str, Callable[..., Any]] = {
            "collections.OrderedDict": _ordered_dict,
            "torch._utils._rebuild_tensor": _rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
            "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": _rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
            "torch._tensor._rebuild_from_type_v2": self._rebuild_from_type_v2,
            "torch.Size": _size,
        }
        for name, fn in fns.items():
            g[name] = _Global(name, fn)
        for name in ("torch.Tensor", "torch.nn.parameter.Parameter"):
            g[name] = _Marker(name)
        for name, dtype in _DTYPES.items():
            g[f"torch.{name}"] = _Marker(f"torch.{name}", dtype)
        for alias, name in _DTYPE_ALIASES.items():
            g[f"torch.{alias}"] = g[f"torch.{name}"]
        for module in ("torch", "torch.cuda"):
            for name, dtype_name in _STORAGE_TYPES.items():
                g[f"{module}.{name}"] = _Marker(f"{module}.{name}", _DTYPES[dtype_name])
        for name in ("torch.storage.UntypedStorage", "torch.UntypedStorage"):
            g[name] = _Marker(name, _DTYPES["uint8"], untyped=True)
        return g

    def find_class(self, module: str, name: str) -> _Sealed:
        full = f"{module}.{name}"
        found = self.globals.get(full)
        if found is None:
            raise _refusal(full)
        return found

    def _rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> _Tensor:
        if func not in self.rebuilders or not isinstance(new_type, _Marker) \
                or new_type.dtype is not None or not isinstance(args, tuple):
            raise UnsafeFileError("refused: torch._tensor._rebuild_from_type_v2 with arguments "
                                  "other than a tensor rebuild function and torch.Tensor")
        tensor = func(*args)
        if not isinstance(tensor, _Tensor):
            raise WeightsFormatError("_rebuild_from_type_v2 did not rebuild a tensor")
        return tensor

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid:
            raise WeightsFormatError(f"unexpected persistent id {_describe(pid)}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise UnsafeFileError(
                "refused: the file holds a pickled torch.nn.Module (torch.save(model)); "
                "fastlstm reads state dicts: save model.state_dict() instead")
        expected = 6 if self.legacy else 5
        if kind != "storage" or len(pid) != expected:
            raise WeightsFormatError(f"unexpected persistent id ({_describe(kind)}, "
                                     f"{len(pid)} fields)")
        stype, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(stype, _Marker) or stype.dtype is None \
                or stype.name.startswith("torch.") and "Storage" not in stype.name:
            raise WeightsFormatError(f"persistent id with storage type {_describe(stype)}")
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        if not isinstance(key, str):
            raise WeightsFormatError(f"storage key must be a string, got {_describe(key)}")
        _check_int(numel, f"element count of storage '{key}'")
        storage = self.storages.get(key)
        if storage is None:
            storage = _Storage(key, stype.dtype, numel)
            self.storages[key] = storage
            if self.read_storage is not None:
                nbytes = numel * stype.dtype.itemsize
                storage.data = self.read_storage(key, nbytes)
                self.storage_bytes += nbytes
        elif storage.dtype != stype.dtype or storage.numel != numel:
            raise WeightsFormatError(
                f"storage '{key}' is declared twice, as {storage.numel} x {storage.dtype.name} "
                f"and as {numel} x {stype.dtype.name}")
        if self.legacy and pid[5] is not None:
            return self._view(storage, pid[5])
        return storage

    def _view(self, root: _Storage, meta: Any) -> _Storage:
        """A storage view of the legacy format: ``(view_key, offset, size)`` in elements."""
        if not isinstance(meta, tuple) or len(meta) != 3:
            raise WeightsFormatError(f"unexpected storage view metadata {_describe(meta)}")
        view_key, offset, size = meta
        if not isinstance(view_key, str):
            raise WeightsFormatError("storage view key must be a string")
        _check_int(offset, "storage view offset")
        _check_int(size, "storage view size")
        if offset + size > root.numel:
            raise WeightsFormatError(
                f"storage view '{view_key}' ({offset} + {size} elements) is outside storage "
                f"'{root.key}' of {root.numel} elements")
        view = self.views.get(view_key)
        if view is None:
            view = _Storage(view_key, root.dtype, size)
            view.root, view.offset = root, offset
            self.views[view_key] = view
        elif view.root is not root or view.offset != offset or view.numel != size:
            raise WeightsFormatError(f"storage view '{view_key}' is declared twice differently")
        return view

    def unpickle(self, data: bytes, what: str) -> Any:
        """Check and then unpickle one pickle of the file."""
        scan_pickle(data, self.globals, what)
        try:
            return _RestrictedUnpickler(io.BytesIO(data), self).load()
        except WeightsFormatError:
            raise
        except MemoryError:
            raise WeightsMemoryError(f"refused: unpickling {what} ran out of memory") from None
        except Exception as exc:  # noqa: BLE001 - any failure of a corrupt pickle
            raise WeightsFormatError(f"corrupt {what}: {type(exc).__name__}: {exc}") from None


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals and persistent ids go through a :class:`_Loader`."""

    def __init__(self, file: IO[bytes], loader: _Loader) -> None:
        super().__init__(file)
        self._loader = loader

    def find_class(self, module: str, name: str) -> Any:
        return self._loader.find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return self._loader.persistent_load(pid)


def _refusal(full: str) -> WeightsFormatError:
    if full in _UNSUPPORTED:
        return WeightsFormatError(f"{_UNSUPPORTED[full]} ({full}) are not supported by fastlstm")
    hint = ""
    if full.startswith("torch.nn.modules.") or full.startswith("__main__."):
        hint = " (a pickled model? save model.state_dict() instead)"
    elif full.startswith("numpy."):  # torch.save of a fastlstm state_dict(): NumPy arrays
        hint = (" (NumPy arrays, such as a fastlstm state_dict() given to torch.save, which "
                "torch.load refuses too: save them with fastlstm.save(state_dict, "
                "'model.safetensors'), or torch.save({k: torch.from_numpy(v) for k, v in "
                "state_dict.items()}, ...))")
    return UnsafeFileError(
        f"refused global '{full}'{hint}: fastlstm loads only tensors, dicts, lists and "
        "numbers from PyTorch files, and nothing from this file was run")


def _too_many_opcodes(what: str) -> WeightsFormatError:
    return WeightsFormatError(
        f"refused: {what} holds more than {_MAX_OPCODES:,} pickle opcodes (a state dict's pickle "
        f"takes ~30 a tensor); fastlstm does not read pickles that large")


def _too_large(what: str, nbytes: int) -> WeightsFormatError:
    limit = (f"{_MAX_PICKLE_BYTES // _MIB} MiB" if _MAX_PICKLE_BYTES % _MIB == 0
             else f"{_MAX_PICKLE_BYTES:,} bytes")
    return WeightsFormatError(
        f"refused: {what} holds {nbytes} bytes, more than the {limit} fastlstm reads in a "
        "pickle (a state dict's pickle takes ~100 bytes a tensor)")


class _Depths:
    """The nesting depth of every value on a pickle's stack and in its memo, followed
    opcode by opcode without building anything.  A value made from others (a tuple, a
    call, a container filled) is one deeper than the deepest of them."""

    def __init__(self) -> None:
        self.stack: List[int] = []
        self.marks: List[int] = []
        self.memo: Dict[Any, int] = {}

    def step(self, opcode: Any, arg: Any) -> int:
        name, stack = opcode.name, self.stack
        if name == "MARK":
            self.marks.append(len(stack))
            return 0
        if name in _PUT_OPCODES or name == "MEMOIZE":
            self.memo[len(self.memo) if name == "MEMOIZE" else arg] = stack[-1] if stack else 0
            return 0
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(self.memo.get(arg, 0))
            return stack[-1]
        before = opcode.stack_before
        taken: List[int] = []
        if pickletools.markobject in before:
            start = self.marks.pop() if self.marks else 0
            taken, stack[start:] = stack[start:], []
            below = before.index(pickletools.markobject)  # e.g. the list of APPENDS
        else:
            below = len(before)
        if below:
            taken += stack[-below:]
            del stack[-below:]
        depth = max(taken) + 1 if taken else 0
        stack.extend([depth] * len(opcode.stack_after))
        return depth


def scan_pickle(data: bytes, allowed: Dict[str, Any], what: str) -> None:
    """Refuse a pickle with opcodes or ``GLOBAL`` names off the allow-lists, too large, or
    nested deeper than :data:`_MAX_DEPTH`.

    Only decodes the opcodes (:func:`pickletools.genops`); nothing is built.
    At most :data:`_MAX_OPCODES` opcodes are decoded.
    """
    if len(data) > _MAX_PICKLE_BYTES:
        raise _too_large(what, len(data))
    count = 0
    depths = _Depths()
    try:
        for opcode, arg, pos in pickletools.genops(data):
            count += 1
            if count > _MAX_OPCODES:
                raise _too_many_opcodes(what)
            if depths.step(opcode, arg) > _MAX_DEPTH:
                # Hashing a tuple (a dict key, a set member) recurses in C without a limit:
                # 200,000 nested tuples crash the interpreter.
                raise WeightsFormatError(f"refused: {what} nests values more than "
                                         f"{_MAX_DEPTH:,} deep (at byte {pos})")
            name = opcode.name
            if name not in _OPCODES:
                raise UnsafeFileError(f"refused pickle opcode {name} at byte {pos} of {what}: "
                                      "fastlstm's unpickler does not construct objects")
            if name == "GLOBAL":
                module, _, qualname = str(arg).partition(" ")
                if f"{module}.{qualname}" not in allowed:
                    raise _refusal(f"{module}.{qualname}")
            elif name in _PUT_OPCODES and (not isinstance(arg, int) or arg > count):
                raise WeightsFormatError(f"corrupt {what}: memo index {arg} at byte {pos}")
    except WeightsFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError and others
        raise WeightsFormatError(f"corrupt {what}: {exc}") from None
    if count == 0:
        raise WeightsFormatError(f"corrupt {what}: empty pickle")


# Functions behind the allow-listed globals -------------------------------
def _ordered_dict(*args: Any) -> _StateDict:
    if not args:
        return _StateDict()
    if len(args) == 1 and isinstance(args[0], list):
        items = args[0]
        if all(isinstance(item, (tuple, list)) and len(item) == 2 for item in items):
            try:
                return _StateDict(items)
            except TypeError:
                pass
    raise WeightsFormatError("OrderedDict must be rebuilt from nothing or a list of pairs")


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise WeightsFormatError(f"tensor rebuilt from {_describe(storage)}, not a storage")
    return _tensor_of(storage, storage_offset, size, stride, storage.dtype)


def _tensor_of(storage: _Storage, offset: Any, size: Any, stride: Any,
               dtype: _DType) -> _Tensor:
    _check_int(offset, "tensor storage offset")
    shape = _as_shape(size, "size")
    strides = _as_shape(stride, "stride")
    if len(shape) != len(strides):
        raise WeightsFormatError(f"tensor size {shape} and stride {strides} differ in length")
    if math.prod(n for n in shape if n) * 16 > sys.maxsize:  # what numpy could not hold
        raise WeightsFormatError(f"tensor size {_describe(str(shape))} is larger than any "
                                 "array can be")
    return _Tensor(storage, offset, shape, strides, dtype)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _Tensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise WeightsFormatError(f"tensor rebuilt from {_describe(storage)}, not a storage")
    if not isinstance(dtype, _Marker) or dtype.dtype is None or "Storage" in dtype.name:
        raise WeightsFormatError(f"tensor dtype must be a torch dtype, got {_describe(dtype)}")
    return _tensor_of(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any,
                       state: Any = None) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise WeightsFormatError(f"parameter rebuilt from {_describe(data)}, not a tensor")
    return data


def _size(value: Any) -> Tuple[int, ...]:
    return _as_shape(value, "size")


# ------------------------------------------------------------ tensors out
def _flatten(obj: Any) -> Iterator[Tuple[str, _Tensor]]:
    """``(dotted key, tensor)`` for every tensor in nested dicts, lists and tuples.

    Iterative, so deep nesting cannot exhaust the stack; each container is
    visited once, so shared sub-containers cannot multiply the work; the keys
    made come to at most :data:`_MAX_KEY_CHARS` characters, so long keys repeated
    cannot exhaust memory.  Keys that are neither strings nor integers, and
    values that are neither containers nor tensors (numbers, strings, ...), are
    skipped.
    """
    seen = set()
    chars = 0
    stack: List[Tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Tensor):
            yield path, value
            continue
        if not isinstance(value, (dict, list, tuple)) or id(value) in seen:
            continue  # seen before its items are copied: one list shared N times is N steps
        seen.add(id(value))
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        children = []
        for key, child in items:
            if type(key) is int:
                key = str(key)
            if type(key) is not str or not isinstance(child, (_Tensor, dict, list, tuple)):
                continue  # no key is made for a value skipped anyway
            chars += len(path) + 1 + len(key)
            if chars > _MAX_KEY_CHARS:
                raise WeightsFormatError(
                    f"refused: the keys of the checkpoint's nested containers come to more than "
                    f"{_MAX_KEY_CHARS:,} characters (a state dict's take about 100 a tensor)")
            children.append((f"{path}.{key}" if path else key, child))
        stack.extend(reversed(children))


def _materialize(key: str, tensor: _Tensor, big_endian: bool) -> np.ndarray:
    """A new native-order array of the tensor, every index checked against its storage."""
    dtype = tensor.dtype
    data, start, nbytes = tensor.storage.buffer()
    available = nbytes // dtype.itemsize
    shape, strides, offset = tensor.size, tensor.stride, tensor.offset
    out_dtype = np.dtype(np.float32) if dtype.name == "bfloat16" else (
        np.dtype(bool) if dtype.name == "bool" else np.dtype(dtype.code))
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=out_dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= available:
        raise WeightsFormatError(
            f"tensor '{key}' (size {shape}, stride {strides}, offset {offset}) reaches element "
            f"{last} of a storage of {available} {dtype.name} elements")
    code = (">" if big_endian else "<") + dtype.code if dtype.itemsize > 1 else dtype.code
    base = np.frombuffer(data, dtype=np.dtype(code), count=available, offset=start)
    view = np.lib.stride_tricks.as_strided(
        base[offset:], shape=shape, strides=tuple(s * dtype.itemsize for s in strides),
        writeable=False)
    if dtype.name == "bfloat16":
        return (view.astype(np.uint32) << 16).view(np.float32)
    if dtype.name == "bool":
        return view != 0
    return np.array(view, dtype=out_dtype, order="C")


def tensors_of(result: Any, loader: _Loader) -> Dict[str, np.ndarray]:
    """The arrays of every tensor in an unpickled object, with the expansion budget."""
    budget = _EXPANSION * loader.storage_bytes + _EXPANSION_FLOOR
    out: Dict[str, np.ndarray] = {}
    for key, tensor in _flatten(result):
        nbytes = math.prod(tensor.size) * max(tensor.dtype.itemsize, 4 if
                                              tensor.dtype.name == "bfloat16" else 1)
        budget -= nbytes
        if budget < 0:
            raise WeightsFormatError(
                f"refused: the tensors of this file expand to more than {_EXPANSION} times "
                f"its {loader.storage_bytes} bytes of storage (at '{key}')")
        if key in out:
            raise WeightsFormatError(f"the file holds two tensors named '{key}'")
        out[key] = _materialize(key, tensor, loader.big_endian)
    return out


# ------------------------------------------------------------------ formats
def torch_zip_prefix(names: List[str]) -> Optional[str]:
    """The archive folder of torch's zip format (``'<folder>/'``), or None.  Records
    outside that one folder are refused, as torch refuses them."""
    for name in names:
        folder, sep, rest = name.partition("/")
        if sep and rest == "data.pkl":
            prefix = folder + "/"
            stray = next((n for n in names if not n.startswith(prefix)), None)
            if stray is not None:
                raise WeightsFormatError(f"a PyTorch archive's records are all in one folder: "
                                         f"{_describe(stray)} is not in {_describe(prefix)}")
            return prefix
    return None


class ZipRecords:
    """Members of a zip archive, every size checked before anything is read or decompressed.

    Python's ``zipfile`` reads the central directory; members are read here
    straight from their local header, so that an archive written by torch with
    CRC-32 disabled (CRC field 0 of a stored member) still loads.  A compressed
    member (deflate, bzip2, LZMA) is refused when it declares more than
    :data:`_MAX_RATIO` times its compressed size, and is decompressed to at most
    the size it declares (``zipfile`` would let a bzip2 or LZMA member expand
    without bound in a single read).
    """

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file = file
        self.size = size
        self.zip = zipfile.ZipFile(file)
        infos = self.zip.infolist()
        self.infos = {info.filename: info for info in infos}
        if len(self.infos) != len(infos):  # torch reads the first of two, zipfile the last
            seen: Set[str] = set()
            for info in infos:
                if info.filename in seen:
                    raise WeightsFormatError(f"the archive holds two records named "
                                             f"{_describe(info.filename)}")
                seen.add(info.filename)
        # Members may not share bytes: N records pointing at one compressed member would
        # each be decompressed, N times what the file holds.
        end = 0
        for info in sorted(infos, key=lambda i: i.header_offset):
            if info.header_offset < end:
                raise WeightsFormatError(f"corrupt zip archive: record "
                                         f"{_describe(info.filename)} overlaps the one before")
            end = info.header_offset + 30 + len(info.filename.encode("utf-8", "replace")) \
                + info.compress_size

    def read(self, name: str) -> bytes:
        """The data of the member ``name``."""
        info = self.infos.get(name)
        if info is None:
            raise WeightsFormatError(f"the archive has no record '{name}'")
        return self.read_info(info)

    def read_info(self, info: zipfile.ZipInfo) -> bytes:
        """The data of a member, checked against its sizes and CRC-32."""
        name, method = info.filename, info.compress_type
        if info.flag_bits & 0x1:
            raise WeightsFormatError(f"record '{name}' of the archive is encrypted: not supported")
        if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                          zipfile.ZIP_LZMA):
            raise WeightsFormatError(f"record '{name}' of the archive uses compression method "
                                     f"{method}: fastlstm reads stored, deflate, bzip2 and LZMA")
        if method != zipfile.ZIP_STORED and \
                info.file_size > _MAX_RATIO * info.compress_size + 4096:
            raise WeightsFormatError(
                f"refused: record '{name}' claims {info.file_size} bytes from "
                f"{info.compress_size} compressed: more than compression can give (fastlstm "
                f"allows {_MAX_RATIO}x)")
        self.file.seek(info.header_offset)
        header = self.file.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise WeightsFormatError(f"corrupt zip archive: bad local header of '{name}'")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        raw_size = info.file_size if method == zipfile.ZIP_STORED else info.compress_size
        if start + raw_size > self.size:
            raise WeightsFormatError(f"truncated archive: record '{name}' ({raw_size} "
                                     f"bytes) extends past the end of the file")
        self.file.seek(start)
        data = self.file.read(raw_size)
        if len(data) != raw_size:
            raise WeightsFormatError(f"truncated archive: record '{name}'")
        if method != zipfile.ZIP_STORED:
            data = _decompress(data, method, info.file_size, name)
        if (info.CRC != 0 or method != zipfile.ZIP_STORED) and zlib.crc32(data) != info.CRC:
            raise WeightsFormatError(f"corrupt archive: CRC-32 mismatch in record '{name}'")
        return data


def _decompress(raw: bytes, method: int, size: int, name: str) -> bytes:
    """A compressed member that declares ``size`` bytes, decompressed to at most ``size + 1``."""
    try:
        if method == zipfile.ZIP_DEFLATED:
            data = zlib.decompressobj(-15).decompress(raw, size + 1)
        elif method == zipfile.ZIP_BZIP2:
            data = bz2.BZ2Decompressor().decompress(raw, size + 1)
        else:
            data = _lzma_decompressor(raw, size, name).decompress(raw[9:], size + 1)
    except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise WeightsFormatError(f"corrupt archive: record '{name}' does not decompress: "
                                 f"{exc}") from None
    if len(data) > size:
        raise WeightsFormatError(f"refused: record '{name}' decompresses to more than the "
                                 f"{size} bytes it declares")
    if len(data) < size:
        raise WeightsFormatError(f"corrupt or truncated archive: record '{name}' decompresses "
                                 f"to {len(data)} of the {size} bytes it declares")
    return data


def _lzma_decompressor(raw: bytes, size: int, name: str) -> "lzma.LZMADecompressor":
    """The raw LZMA1 decoder of a zip member: 2 bytes of version, 2 of properties size (5),
    the properties (lc, lp, pb in one byte, then the dictionary size), then the stream.

    The dictionary is allocated in full when the decoder starts: it is capped at the
    member's declared size (no match reaches further back than the data decoded).
    """
    if len(raw) < 9 or raw[2:4] != b"\x05\x00" or raw[4] >= 9 * 5 * 5:
        raise WeightsFormatError(f"corrupt archive: bad LZMA header in record '{name}'")
    lc, rest = raw[4] % 9, raw[4] // 9
    (dict_size,) = struct.unpack("<I", raw[5:9])
    lzma_filter = {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": rest % 5, "pb": rest // 5,
                   "dict_size": max(4096, min(dict_size, size + 1))}
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma_filter])


def read_zip(records: ZipRecords, prefix: str) -> Dict[str, np.ndarray]:
    """Tensors of torch's zip format (``torch.save`` since torch 1.6)."""
    if prefix + "constants.pkl" in records.infos:
        raise WeightsFormatError("a TorchScript archive (torch.jit.save) is not a state dict: "
                                 "save model.state_dict() with torch.save instead")
    big_endian = False
    pkl = records.infos.get(prefix + "data.pkl")
    if pkl is not None and pkl.file_size > _MAX_PICKLE_BYTES:
        raise _too_large(f"'{pkl.filename}'", pkl.file_size)
    order_info = records.infos.get(prefix + "byteorder")
    if order_info is not None:
        if order_info.file_size > 16:
            raise WeightsFormatError(f"unknown byte order ({order_info.file_size} bytes) in the "
                                     "archive")
        order = records.read_info(order_info)
        if order not in (b"little", b"big"):
            raise WeightsFormatError(f"unknown byte order {order[:20]!r} in the archive")
        big_endian = order == b"big"

    def read_storage(key: str, nbytes: int) -> bytes:
        name = f"{prefix}data/{key}"
        info = records.infos.get(name)
        if info is None:
            raise WeightsFormatError(f"storage '{key}' has no record '{name}' in the archive")
        if info.file_size != nbytes:
            raise WeightsFormatError(
                f"storage '{key}' declares {nbytes} bytes but its record holds "
                f"{info.file_size}")
        return records.read(name)

    loader = _Loader(read_storage, legacy=False, big_endian=big_endian)
    result = loader.unpickle(records.read(prefix + "data.pkl"), "pickle 'data.pkl'")
    return tensors_of(result, loader)


def _next_pickle(file: IO[bytes], what: str) -> bytes:
    """The bytes of the pickle that starts at the file's position (up to its STOP).

    At most :data:`_MAX_OPCODES` opcodes and :data:`_MAX_PICKLE_BYTES` bytes.
    """
    start = file.tell()
    count = 0
    try:
        for opcode, _, pos in pickletools.genops(file):
            count += 1
            if count > _MAX_OPCODES:
                raise _too_many_opcodes(what)
            if pos is not None and pos - start > _MAX_PICKLE_BYTES:
                raise _too_large(what, pos - start)
            if opcode.name not in _OPCODES:
                break  # scan_pickle names it
    except WeightsFormatError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise WeightsFormatError(f"corrupt or truncated {what}: {exc}") from None
    end = file.tell()
    file.seek(start)
    return file.read(end - start)


def read_legacy(source: IO[bytes]) -> Dict[str, np.ndarray]:
    """Tensors of torch's legacy format (``_use_new_zipfile_serialization=False``).

    The stream is: pickles of the magic number, the protocol version and
    system information; the pickled object; the pickled list of storage keys;
    then for each key an int64 element count and the storage's bytes
    (little-endian, whatever the machine that wrote them).  The file is read
    into memory once: storages are views of it, and no length read from the
    file can make a read allocate more than the file holds.
    """
    content = source.read()
    view = memoryview(content)
    file = io.BytesIO(content)
    header = _Loader(None, legacy=True)
    if header.unpickle(_next_pickle(file, "header"), "header") != MAGIC_NUMBER:
        raise WeightsFormatError("not a PyTorch file: wrong magic number")
    version = header.unpickle(_next_pickle(file, "header"), "header")
    if version != PROTOCOL_VERSION:
        raise WeightsFormatError(f"unsupported legacy protocol version {_describe(version)}")
    header.unpickle(_next_pickle(file, "header"), "header")  # system info: not needed
    loader = _Loader(None, legacy=True)
    result = loader.unpickle(_next_pickle(file, "pickle"), "pickle")
    keys = loader.unpickle(_next_pickle(file, "storage list"), "storage list")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsFormatError("corrupt file: the storage list is not a list of keys")
    for key in keys:
        storage = loader.storages.get(key)
        if storage is None:
            raise WeightsFormatError(f"the file has data for an unknown storage '{key}'")
        if storage.data is not None:
            raise WeightsFormatError(f"the file has data for storage '{key}' twice")
        raw = file.read(8)
        if len(raw) != 8:
            raise WeightsFormatError(f"truncated file: storage '{key}' is missing")
        (numel,) = struct.unpack("<q", raw)
        if numel != storage.numel:
            raise WeightsFormatError(f"storage '{key}' has {numel} elements in the data but "
                                     f"{storage.numel} in the pickle")
        nbytes = numel * storage.dtype.itemsize
        start = file.tell()
        if start + nbytes > len(content):
            raise WeightsFormatError(f"truncated file: storage '{key}' has "
                                     f"{len(content) - start} of its {nbytes} bytes")
        storage.data = view[start:start + nbytes]
        file.seek(start + nbytes)
        loader.storage_bytes += nbytes
    return tensors_of(result, loader)


def open_zip(file: IO[bytes], size: int) -> ZipRecords:
    """The records of a zip archive; a corrupt directory raises WeightsFormatError."""
    try:
        return ZipRecords(file, size)
    except WeightsFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            struct.error, UnicodeDecodeError, NotImplementedError) as exc:
        raise WeightsFormatError(f"corrupt or truncated zip archive: {exc}") from None
