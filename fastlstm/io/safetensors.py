"""The safetensors format, read and written with NumPy (no ``safetensors`` package).

A file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin,
end]}`` (plus an optional ``"__metadata__"`` of strings), then the data:
little-endian, C order, offsets relative to the end of the header.  Nothing in
it is executable; every offset and size is checked against the file, and the
header as the format specifies it (no key twice, metadata of strings).
"""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from typing import IO, Any, Collection, Dict, List, Mapping, Optional, Tuple

import numpy as np

from fastlstm._errors import WeightsFormatError

__all__ = ["looks_like_safetensors", "read_safetensors", "safetensors_metadata",
           "safetensors_problem", "write_safetensors"]

_MAX_HEADER = 100_000_000  # the safetensors package's limit too
# safetensors dtype code -> numpy code (little-endian); BF16 is read as u2 and widened.
_CODES: Dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
    "C64": "<c8",
}
_WRITE_CODES: Dict[str, str] = {
    "f8": "F64", "f4": "F32", "f2": "F16", "i8": "I64", "i4": "I32", "i2": "I16", "i1": "I8",
    "u8": "U64", "u4": "U32", "u2": "U16", "u1": "U8", "b1": "BOOL", "c8": "C64",
}


def looks_like_safetensors(head: bytes, file_size: int) -> bool:
    """Whether a file starting with ``head`` has a safetensors header."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= min(file_size - 8, _MAX_HEADER) and head[8:9] == b"{"


def safetensors_problem(head: bytes, file_size: int) -> Optional[str]:
    """Why a file that starts as safetensors does (8 bytes, then ``{"`` or ``{}``) is not
    one -- a header length past the end of the file or over the limit -- or None."""
    if len(head) < 10 or looks_like_safetensors(head, file_size) \
            or not re.match(rb"\{\s*[\"}]", head[8:]):
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER:
        return (f"invalid safetensors file: its header length {n} is over the limit of "
                f"{_MAX_HEADER} bytes")
    if n + 8 > file_size:
        return (f"truncated or invalid safetensors file: its header length is {n} bytes but "
                f"{file_size - 8} bytes follow the length")
    return f"invalid safetensors file: header length {n}"


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object as a dict, refusing a key that appears twice (json would keep the last)."""
    out: Dict[str, Any] = {}
    for key, value in pairs:
        for text in (key, value) if isinstance(value, str) else (key,):
            try:  # JSON's \ud800 escapes give lone surrogates, which no file name can hold
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise WeightsFormatError(f"corrupt safetensors header: {text[:80]!r} is not "
                                         "valid Unicode (a lone surrogate)") from None
        if key in out:
            raise WeightsFormatError(f"corrupt safetensors header: key {key[:80]!r} appears "
                                     "twice")
        out[key] = value
    return out


def _header(file: IO[bytes], file_size: int) -> Tuple[Dict[str, Any], int]:
    raw = file.read(8)
    if len(raw) != 8:
        raise WeightsFormatError("truncated safetensors file: no header")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER or n + 8 > file_size:
        raise WeightsFormatError(f"corrupt safetensors file: header of {n} bytes in a file of "
                                 f"{file_size}")
    text = file.read(n)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except WeightsFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise WeightsFormatError(f"corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise WeightsFormatError("corrupt safetensors header: not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise WeightsFormatError("corrupt safetensors header: __metadata__ must map strings to "
                                 "strings")
    return header, 8 + n


def safetensors_metadata(file: IO[bytes], file_size: int) -> Dict[str, str]:
    """The header's ``__metadata__`` (strings), read and checked as ``read_safetensors``
    reads the header; the tensors are not read."""
    header, _ = _header(file, file_size)
    return dict(header.get("__metadata__", {}))


def safetensors_bf16_keys(file: IO[bytes], file_size: int) -> List[str]:
    """The names of the header's BF16 tensors (which ``read_safetensors`` widens to
    float32), in the header's order; the tensors are not read."""
    header, _ = _header(file, file_size)
    return [name for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict)
            and entry.get("dtype") == "BF16"]


def read_safetensors(file: IO[bytes], file_size: int) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors file, in the order of their data.

    BF16 becomes float32 (exact); BOOL becomes bool; F8 types are refused.
    """
    header, start = _header(file, file_size)
    buffer_size = file_size - start
    entries: List[Tuple[int, int, str, str, Tuple[int, ...]]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise WeightsFormatError(f"corrupt safetensors header: entry '{name}' is not a dict")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise WeightsFormatError(f"tensor '{name}' has a dtype that is not a string (JSON "
                                     f"{type(dtype).__name__})")
        if dtype not in _CODES:
            raise WeightsFormatError(f"tensor '{name}' has dtype {dtype[:40]!r}, not supported "
                                     f"by fastlstm (supported: {', '.join(_CODES)})")
        if not isinstance(shape, list) or len(shape) > 32 or not all(
                type(d) is int and d >= 0 for d in shape) or \
                math.prod(d for d in shape if d) * 8 > sys.maxsize:
            raise WeightsFormatError(f"tensor '{name}' has an invalid shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                type(o) is int for o in offsets):
            raise WeightsFormatError(f"tensor '{name}' has invalid data_offsets")
        begin, end = offsets
        nbytes = math.prod(shape) * np.dtype(_CODES[dtype]).itemsize
        if not 0 <= begin <= end <= buffer_size or end - begin != nbytes:
            raise WeightsFormatError(
                f"tensor '{name}' ({dtype} {tuple(shape)}, {nbytes} bytes) has data offsets "
                f"[{begin}, {end}] outside or inconsistent with the {buffer_size} bytes of data")
        entries.append((begin, end, name, dtype, tuple(shape)))
    entries.sort()
    for (_, end, name, _, _), (begin, _, other, _, _) in zip(entries, entries[1:]):
        if begin < end:
            raise WeightsFormatError(f"tensors '{name}' and '{other}' overlap in the file")
    out: Dict[str, np.ndarray] = {}
    for begin, end, name, dtype, shape in entries:
        file.seek(start + begin)
        data = file.read(end - begin)
        if len(data) != end - begin:
            raise WeightsFormatError(f"truncated safetensors file at tensor '{name}'")
        array = np.frombuffer(data, dtype=_CODES[dtype]).reshape(shape)
        if dtype == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "BOOL":
            array = array != 0
        else:
            array = array.astype(array.dtype.newbyteorder("="))  # a writable native copy
        out[name] = array
    return out


def _bf16_words(name: str, array: np.ndarray) -> np.ndarray:
    """The bfloat16 bits of ``array``, whose values must be bfloat16 values (checked on
    the values given: a float64 or integer array is not rounded to float32 first)."""
    f32 = np.require(array, "<f4", ["C"])
    same = np.array_equal(f32, array, equal_nan=array.dtype.kind in "fc")
    bits = f32.view("<u4")
    if not same or (bits & np.uint32(0xFFFF)).any():
        raise ValueError(f"cannot save '{name}' as bfloat16: it holds values that are not "
                         "bfloat16 values")
    return (bits >> np.uint32(16)).astype("<u2")


def write_safetensors(arrays: Mapping[str, np.ndarray], file: IO[bytes],
                      metadata: Optional[Mapping[str, str]] = None,
                      bfloat16: Collection[str] = ()) -> None:
    """Write arrays as safetensors: largest elements first (so every tensor is aligned);
    the float32 arrays named in ``bfloat16`` as BF16 (their values must be bfloat16's)."""
    if "__metadata__" in arrays:
        raise ValueError("cannot save a tensor named '__metadata__' as safetensors: the format "
                         "keeps that name for the header's metadata")
    arrays = {name: _bf16_words(name, a) if name in bfloat16 else a
              for name, a in arrays.items()}
    names = sorted(arrays, key=lambda k: -arrays[k].dtype.itemsize)  # stable: keeps order
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    prepared = []
    for name in names:
        array = arrays[name]
        code = _WRITE_CODES.get(f"{array.dtype.kind}{array.dtype.itemsize}")
        if code is None:
            raise TypeError(f"cannot save '{name}' as safetensors: dtype {array.dtype} is not "
                            "supported (use floating, integer or bool arrays)")
        if name in bfloat16:
            code = "BF16"
        array = np.require(array, array.dtype.newbyteorder("<"), ["C"])  # 0-D stays 0-D
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        prepared.append(array)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    file.write(struct.pack("<Q", len(text)))
    file.write(text)
    for array in prepared:
        file.write(array.reshape(-1).view(np.uint8).data)
