"""NumPy ``.npz`` archives, read and written without pickles.

An ``.npz`` is a zip archive of ``<name>.npy`` members (``numpy.savez``).
Reading never unpickles (object arrays are refused) and checks each member's
declared shape against the member's size before allocating anything.
"""

from __future__ import annotations

import math
import zipfile
from typing import IO, Dict, Mapping

import numpy as np

from fastlstm._errors import WeightsFormatError

__all__ = ["is_npz", "read_npz", "write_npz"]

_fmt = np.lib.format
_MAX_RATIO = 1100  # deflate expands at most ~1032x; bzip2 and lzma are refused past this too


def is_npz(names: "list[str]") -> bool:
    """Whether the member names of a zip archive are those of an ``.npz``."""
    return all(name.endswith(".npy") for name in names)


def read_npz(archive: zipfile.ZipFile) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz``, keyed by member name without ``.npy``."""
    out: Dict[str, np.ndarray] = {}
    for info in archive.infolist():
        name = info.filename[:-len(".npy")]
        if info.compress_type != zipfile.ZIP_STORED and \
                info.file_size > _MAX_RATIO * info.compress_size + 4096:
            raise WeightsFormatError(
                f"npz member '{info.filename}' claims {info.file_size} bytes from "
                f"{info.compress_size} compressed: more than compression can give")
        try:
            with archive.open(info) as member:
                version = _fmt.read_magic(member)
                if version == (1, 0):
                    shape, fortran, dtype = _fmt.read_array_header_1_0(member)
                else:
                    shape, fortran, dtype = _fmt.read_array_header_2_0(member)
                header_size = member.tell()
            if dtype.hasobject:
                raise WeightsFormatError(f"array '{name}' has dtype object (a pickle): refused")
            nbytes = math.prod(shape) * dtype.itemsize
            if header_size + nbytes != info.file_size:
                raise WeightsFormatError(
                    f"array '{name}' declares shape {shape} of {dtype} ({nbytes} bytes) but its "
                    f"member holds {info.file_size - header_size} bytes")
            with archive.open(info) as member:
                array = _fmt.read_array(member, allow_pickle=False)
        except WeightsFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy errors alike
            raise WeightsFormatError(f"corrupt npz member '{info.filename}': "
                                     f"{type(exc).__name__}: {exc}") from None
        if name in out:
            raise WeightsFormatError(f"the archive holds two arrays named '{name}'")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        out[name] = array
    return out


def write_npz(arrays: Mapping[str, np.ndarray], file: IO[bytes]) -> None:
    """Write arrays as an uncompressed ``.npz`` (what ``numpy.savez`` writes)."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as archive:
        for name, array in arrays.items():
            if array.dtype.hasobject:
                raise TypeError(f"cannot save '{name}': object arrays need pickles")
            with archive.open(name + ".npy", mode="w", force_zip64=True) as member:
                _fmt.write_array(member, np.asanyarray(array), allow_pickle=False)
