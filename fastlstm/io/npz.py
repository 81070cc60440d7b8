"""NumPy ``.npz`` archives, read and written without pickles.

An ``.npz`` is a zip archive of ``<name>.npy`` members (``numpy.savez``).
Reading never unpickles: only the dtypes of weights are read (bool, integers,
float16/32/64, complex64/128); object, string, datetime, structured and
extended-precision arrays are refused.  Members are read through the torch
reader's zip records (:class:`fastlstm.io.torch_format.ZipRecords`), which bound
decompression; each member's declared shape is checked against its size
before an array is made.
"""

from __future__ import annotations

import io
import math
import re
import sys
import zipfile
from typing import IO, TYPE_CHECKING, Dict, Mapping, Tuple

import numpy as np

from fastlstm._errors import WeightsFormatError

if TYPE_CHECKING:
    from fastlstm.io.torch_format import ZipRecords

__all__ = ["is_npz", "read_npz", "write_npz"]

_fmt = np.lib.format
_NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))


def is_npz(names: "list[str]") -> bool:
    """Whether the member names of a zip archive are those of an ``.npz``."""
    return all(name.endswith(".npy") for name in names)


def read_npz(records: "ZipRecords") -> Dict[str, np.ndarray]:
    """Every array of an ``.npz``, keyed by member name without ``.npy``.

    Each array is a new, writable, C-ordered, native-byte-order copy.
    """
    out: Dict[str, np.ndarray] = {}
    for info in records.zip.infolist():
        name = info.filename[:-len(".npy")]
        if name in out:
            raise WeightsFormatError(f"the archive holds two arrays named '{name}'")
        out[name] = _array(name, info.filename, records.read_info(info))
    return out


def _array(name: str, member: str, data: bytes) -> np.ndarray:
    """The array of one ``.npy`` member's bytes, its header and dtype checked first."""
    shape, fortran, dtype, header_size = _header(member, data)
    if dtype.hasobject:
        raise WeightsFormatError(f"array '{name}' has dtype object (a pickle): refused")
    problem = _unsupported(dtype)
    if problem:
        raise WeightsFormatError(
            f"array '{name}' has dtype {dtype.str} ({problem}), not one of weights: fastlstm "
            "reads bool, integer, float16/32/64 and complex64/128 arrays")
    if any(d < 0 for d in shape) or math.prod(d for d in shape if d) * dtype.itemsize \
            > sys.maxsize:
        raise WeightsFormatError(f"array '{name}' has an invalid shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if header_size + nbytes != len(data):
        raise WeightsFormatError(
            f"array '{name}' declares shape {shape} of {dtype} ({nbytes} bytes) but its "
            f"member holds {len(data) - header_size} bytes")
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_size)
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return np.array(array, dtype=dtype.newbyteorder("="), order="C")


def _header(member: str, data: bytes) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header size)`` of a ``.npy`` member."""
    file = io.BytesIO(data)
    try:
        version = _fmt.read_magic(file)
    except ValueError:
        raise WeightsFormatError(f"npz member '{member}' is not a .npy array (it does not "
                                 "start with \\x93NUMPY)") from None
    if version not in _NPY_VERSIONS:
        raise WeightsFormatError(f"npz member '{member}' has .npy format version "
                                 f"{version[0]}.{version[1]}, not 1.0, 2.0 or 3.0")
    try:
        if version == (1, 0):
            shape, fortran, dtype = _fmt.read_array_header_1_0(file)
        else:
            shape, fortran, dtype = _fmt.read_array_header_2_0(file)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise WeightsFormatError(f"npz member '{member}' has an invalid .npy header: "
                                 f"{_header_problem(exc)}") from None
    return shape, fortran, dtype, file.tell()


def _header_problem(exc: BaseException) -> str:
    """numpy's complaint about a ``.npy`` header, without its advice or object addresses."""
    message = str(exc).split("\n", 1)[0]
    if "malformed node" in message or re.search(r" at 0x[0-9a-fA-F]+", message):
        return ("it is not a literal dict of 'descr', 'fortran_order' and 'shape' (it holds an "
                "expression, such as a call or a name)")
    if "max_header_size" in str(exc) or "large and may not be safe" in message:
        return f"{message} (numpy refuses headers over 10,000 bytes)"
    return message[:200]


def _unsupported(dtype: np.dtype) -> str:
    """Why arrays of ``dtype`` are not weights, or ``""`` for those that are."""
    if dtype.fields is not None or dtype.subdtype is not None:
        return "a structured or subarray dtype"
    kinds = {"U": "strings", "S": "bytes", "M": "dates", "m": "time deltas", "V": "raw bytes"}
    if dtype.kind in kinds:
        return kinds[dtype.kind]
    if dtype.kind == "f" and dtype.itemsize > 8 or dtype.kind == "c" and dtype.itemsize > 16:
        return "extended precision"
    if dtype.kind not in "biufc":
        return f"kind '{dtype.kind}'"
    return ""


def write_npz(arrays: Mapping[str, np.ndarray], file: IO[bytes]) -> None:
    """Write arrays as an uncompressed ``.npz`` (what ``numpy.savez`` writes)."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as archive:
        for name, array in arrays.items():
            if array.dtype.hasobject:
                raise TypeError(f"cannot save '{name}': object arrays need pickles")
            why = _unsupported(array.dtype)
            if why:  # what load() would refuse
                raise TypeError(f"cannot save '{name}' as .npz: dtype {array.dtype} ({why}) "
                                "is not supported (use floating, integer or bool arrays)")
            with archive.open(name + ".npy", mode="w", force_zip64=True) as member:
                _fmt.write_array(member, np.asanyarray(array), allow_pickle=False)
