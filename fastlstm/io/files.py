"""Weights files: read PyTorch checkpoints, safetensors and ``.npz`` without torch; write them.

``load`` reads the files people have -- ``torch.save(model.state_dict(), path)``
in torch's zip format (the default since torch 1.6) or its legacy format,
safetensors, and NumPy's ``.npz`` -- detecting the format from the content;
also the LSTM weights of ONNX models, with the optional ``onnx`` package.
It never imports torch and never runs anything from the file: PyTorch's
pickles go through a restricted unpickler (see ``docs/weights.md``, "Security
model").  ``save`` writes safetensors and ``.npz``.  Public through
:mod:`fastlstm.serialization`; like every reader in ``fastlstm.io`` it knows
nothing of the module classes.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
from collections import OrderedDict
from typing import IO, Any, Collection, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from fastlstm._common import to_numpy
from fastlstm._errors import WeightsFormatError, WeightsMemoryError
from fastlstm.io.npz import is_npz, read_npz, write_npz
from fastlstm.io.onnx_format import looks_like_onnx, read_onnx
from fastlstm.io.safetensors import (
    looks_like_safetensors,
    read_safetensors,
    safetensors_bf16_keys,
    safetensors_metadata,
    safetensors_problem,
    write_safetensors,
)
from fastlstm.io.torch_format import open_zip, read_legacy, read_zip, torch_zip_prefix

__all__ = ["FORMATS", "OpenedSource", "PathLike", "Source", "arrays_of", "detect_format", "load",
           "read_opened", "save"]

PathLike = Union[str, bytes, "os.PathLike[str]"]
Source = Union[PathLike, IO[bytes]]

#: Formats :func:`fastlstm.load` reads, by the name :func:`detect_format` gives them.
FORMATS = {
    "torch-zip": "PyTorch checkpoint (zip format, torch.save since torch 1.6)",
    "torch-legacy": "PyTorch checkpoint (legacy format, _use_new_zipfile_serialization=False)",
    "safetensors": "safetensors",
    "npz": "NumPy .npz archive",
    "onnx": "ONNX model (its LSTM nodes' weights under torch's names)",
}
#: Formats :func:`save` writes, by file extension.
_EXTENSIONS = {".safetensors": "safetensors", ".npz": "npz"}
#: Bytes read from a file object that is not seekable (a pipe, a socket, an HTTP
#: response), which has to be read into memory before its format can be told: a
#: larger stream (or an endless one) is refused.  A path or a seekable file
#: object has no such limit.
_MAX_STREAM_BYTES = 1 << 30
_CHUNK = 1 << 20
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_regular(mode: int, path: Any) -> None:
    """Refuse what is not a regular file: a directory as ``open`` does, the rest clearly."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    raise WeightsFormatError(f"{os.fsdecode(path)!r} is {kind}, not a regular file: fastlstm "
                             "reads weights from regular files and file objects")


def _open_regular(path: Any) -> IO[bytes]:
    """``open(path, "rb")`` of a regular file; anything else is refused without blocking.

    Checked before opening (opening a FIFO would wait for a writer, a device
    may act on being opened) and again after, on what was opened: the open is
    non-blocking, so a path swapped for a FIFO in between cannot hang it.
    """
    _check_regular(os.stat(path).st_mode, path)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | nonblock)
    try:
        _check_regular(os.fstat(fd).st_mode, path)
        if nonblock:
            os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:  # the FileIO owns the fd now: closing it again could close another thread's file
        file = io.BufferedReader(raw)
    except BaseException:
        raw.close()
        raise
    raw.name = path  # as open() names it, not by its fd
    return file


def _read_stream(file: IO[bytes]) -> io.BytesIO:
    """A non-seekable file object read into memory, up to :data:`_MAX_STREAM_BYTES`."""
    limit = _MAX_STREAM_BYTES
    out = io.BytesIO()
    while True:
        chunk = file.read(min(_CHUNK, limit + 1 - out.tell()))
        if chunk is None:
            raise WeightsFormatError("the file object is non-blocking and has no data ready")
        if not chunk:
            break
        out.write(chunk)
        if out.tell() > limit:
            raise WeightsFormatError(
                f"refused: a file object that is not seekable is read into memory, up to "
                f"{limit:,} bytes, and this one holds more: pass a path or a seekable file")
    out.seek(0)
    return out


class OpenedSource:
    """A binary file from a path or a file object, with its size; closes what it opened.

    A path must name a regular file.  A file object that is not seekable is
    read into memory (up to :data:`_MAX_STREAM_BYTES`), and one that is not at
    its start has the rest read, so that offsets in the file are offsets from
    its start.
    """

    def __init__(self, source: Source) -> None:
        if hasattr(source, "read"):
            if isinstance(source, io.TextIOBase):
                raise TypeError("a weights file object must be opened in binary mode "
                                "(open(path, 'rb')), not text mode")
            file: IO[bytes] = source  # type: ignore[assignment]
            self.close_file = False
            if not file.seekable():
                file = _read_stream(file)
            elif file.tell() != 0:
                start = file.tell()
                end = file.seek(0, os.SEEK_END)
                file.seek(start)
                file = io.BytesIO(file.read(max(end - start, 0)))
            self.file = file
        else:
            self.file = _open_regular(os.fspath(source))
            self.close_file = True
        self.size = self.file.seek(0, os.SEEK_END)
        self.file.seek(0)

    def __enter__(self) -> "OpenedSource":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.close_file:
            self.file.close()


def _sniff(opened: OpenedSource) -> Tuple[str, Any]:
    """The format of an opened file, and its zip records for the zip-based formats."""
    head = opened.file.read(512)
    opened.file.seek(0)
    if not head:
        raise WeightsFormatError("empty file (a file object is read from its current "
                                 "position)" if not opened.close_file else "empty file")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        records = open_zip(opened.file, opened.size)
        names = list(records.infos)
        prefix = torch_zip_prefix(names)
        if prefix is not None:
            return "torch-zip", (records, prefix)
        if is_npz(names):
            return "npz", records
        raise WeightsFormatError("a zip archive that is neither a PyTorch checkpoint (no "
                                 "data.pkl) nor an .npz (members other than .npy)")
    # Before the pickle test: a safetensors header length can start with 0x80.
    if looks_like_safetensors(head, opened.size):
        return "safetensors", None
    if looks_like_onnx(head):  # a protobuf: no magic number, so after the formats that have one
        return "onnx", None
    problem = safetensors_problem(head, opened.size)
    if problem:
        raise WeightsFormatError(problem)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy", None  # a pickle of protocol 2 to 5
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise WeightsFormatError("a tar archive: PyTorch's tar format (torch < 0.4) is not "
                                 "supported; load it with torch and save it again")
    if head.startswith(b"\x93NUMPY"):
        raise WeightsFormatError("a single .npy array, not a state dict: save a dict of arrays "
                                 "with numpy.savez (.npz)")
    raise WeightsFormatError(
        f"not a PyTorch checkpoint, safetensors, .npz or ONNX file (starts with {head[:8]!r})")


def detect_format(source: Source) -> str:
    """The format of a weights file, from its content: one of :data:`FORMATS`.

    Parameters
    ----------
    source : path or binary file

    Returns
    -------
    str
        ``"torch-zip"``, ``"torch-legacy"``, ``"safetensors"``, ``"npz"`` or ``"onnx"``.

    Raises
    ------
    fastlstm.WeightsFormatError
        If the file is none of these.

    Examples
    --------
    >>> import io, numpy as np, fastlstm
    >>> buf = io.BytesIO()
    >>> fastlstm.save({"w": np.ones(3, np.float32)}, buf, format="safetensors")
    >>> _ = buf.seek(0)
    >>> fastlstm.serialization.detect_format(buf)
    'safetensors'
    """
    with OpenedSource(source) as opened:
        return _sniff(opened)[0]


def read_opened(opened: OpenedSource, notes: Optional[List[str]] = None
                ) -> Tuple[str, Dict[str, np.ndarray]]:
    """The format and the arrays of a file; ``notes`` gets what the reader has to say
    of it (ONNX: which nodes make which module)."""
    try:
        fmt, extra = _sniff(opened)
        if fmt == "onnx":
            return fmt, read_onnx(opened.file, opened.size, notes)
        if fmt == "torch-zip":
            records, prefix = extra
            return fmt, read_zip(records, prefix)
        if fmt == "npz":
            return fmt, read_npz(extra)
        if fmt == "torch-legacy":
            return fmt, read_legacy(opened.file)
        return fmt, read_safetensors(opened.file, opened.size)
    except (WeightsFormatError, ImportError):  # ImportError: onnx is optional, not corrupt
        raise
    except MemoryError:
        raise WeightsMemoryError("refused: reading this file ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt file may fail anywhere in a reader
        raise WeightsFormatError(f"corrupt or truncated file: {type(exc).__name__}: {exc}") \
            from None


def file_metadata(path: PathLike) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors file at ``path`` ({} for other formats): what
    ``save(..., metadata=...)`` wrote, e.g. a module's weight storage type."""
    return _safetensors_header_part(path, safetensors_metadata, {})


def file_bf16_keys(path: PathLike) -> List[str]:
    """The keys of a safetensors file's BF16 tensors ([] for other formats): what
    ``save(..., bfloat16=...)`` wrote so; :func:`load` gives them as float32."""
    return _safetensors_header_part(path, safetensors_bf16_keys, [])


def _safetensors_header_part(path: PathLike, read: Any, other: Any) -> Any:
    with OpenedSource(path) as opened:
        try:
            fmt, _ = _sniff(opened)
            if fmt != "safetensors":
                return other
            opened.file.seek(0)
            return read(opened.file, opened.size)
        except WeightsFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - as read_opened
            raise WeightsFormatError(f"corrupt or truncated file: {type(exc).__name__}: "
                                     f"{exc}") from None


def load(source: Source) -> Dict[str, np.ndarray]:
    """Read every tensor of a weights file, without torch and without running the file.

    Parameters
    ----------
    source : path or binary file
        A PyTorch checkpoint (``torch.save``, zip or legacy format),
        safetensors file, ``.npz`` archive or ONNX model; the format is
        detected from the content, not the name.  A path must name a regular
        file (not a FIFO or a device).  A file object is read from its current position (as
        ``torch.load`` does); one that is not seekable (a pipe, a socket) is
        read into memory first, up to 1 GiB.

    Returns
    -------
    dict of str to numpy.ndarray
        Keys as in the file, in its order.  Nested containers (a checkpoint
        ``{"model": state_dict, "epoch": 3}``) are flattened with dots
        (``"model.encoder.rnn.weight_ih_l0"``); values that are not tensors
        (numbers, strings) are left out.  Every array is a new, writable,
        C-ordered, native-byte-order copy: tensors that were views of one
        storage (offsets, strides, shared storages) become independent
        arrays.  dtypes are kept, except bfloat16, which numpy lacks: it
        becomes float32 (exactly).  float16 stays float16.  An ONNX model
        gives the weights of its ``LSTM`` nodes under torch's names, in
        torch's layout, under a prefix made from the node's name (nodes that
        ``torch.onnx.export`` chained from one multi-layer LSTM make one
        module), then its other initializers under their own names
        (docs/interop.md).

    Raises
    ------
    fastlstm.UnsafeFileError
        A PyTorch pickle that names a global outside the allow-list (e.g.
        ``posix.system``, ``builtins.eval``, a model class) or uses an opcode
        that constructs objects; nothing from the file has been called.
    fastlstm.WeightsFormatError
        Any other file that cannot be read: unknown format, truncated or
        corrupt data, sizes, offsets or strides outside the data present,
        unsupported tensor types (quantized, sparse, float8, TorchScript) or
        ``.npz`` dtypes (strings, dates, structured), a path that is not a
        regular file, a file past fastlstm's limits (pickles over 64 MiB or
        1,048,576 opcodes, nested containers whose keys come to more than
        67,108,864 characters, compressed members that expand more than 1,100
        times or past their declared size; see ``docs/weights.md``).
        An ONNX model with weights in other files (external data), weights
        that are not constants, or LSTM attributes that torch's LSTM lacks.
    OSError
        If the file cannot be opened (``IsADirectoryError`` for a directory).
    TypeError
        A file object opened in text mode.
    ImportError
        An ONNX model, without the ``onnx`` package installed.

    Examples
    --------
    >>> import io, numpy as np, fastlstm
    >>> buf = io.BytesIO()
    >>> fastlstm.save({"rnn.weight_ih_l0": np.zeros((8, 3), np.float32)}, buf, format="npz")
    >>> _ = buf.seek(0)
    >>> {k: v.shape for k, v in fastlstm.load(buf).items()}
    {'rnn.weight_ih_l0': (8, 3)}
    """
    with OpenedSource(source) as opened:
        return read_opened(opened)[1]


def arrays_of(state_dict: Mapping[str, Any]) -> "OrderedDict[str, np.ndarray]":
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a mapping of names to arrays, got {type(state_dict).__name__}")
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be strings, got {type(key).__name__}")
        out[key] = to_numpy(value)
    return out


def _format_of(path: Any, format: Optional[str]) -> str:
    if format is not None:
        if format not in _EXTENSIONS.values():
            raise ValueError(f"format must be 'safetensors' or 'npz', got {format!r}")
        return format
    if hasattr(path, "write"):
        raise ValueError("format= is required when writing to a file object")
    ext = os.path.splitext(os.fsdecode(path))[1].lower()  # a bytes path too
    if ext not in _EXTENSIONS:
        raise ValueError(f"cannot tell the format from the extension {ext!r} of {path!r}: use "
                         "'.safetensors' or '.npz', or pass format='safetensors' or 'npz'")
    return _EXTENSIONS[ext]


def save(
    state_dict: Mapping[str, Any],
    path: Union[PathLike, IO[bytes]],
    *,
    format: Optional[str] = None,
    metadata: Optional[Mapping[str, str]] = None,
    bfloat16: Collection[str] = (),
) -> None:
    """Write a state dict as safetensors or ``.npz``.

    Parameters
    ----------
    state_dict : mapping of str to array-like or torch.Tensor
        E.g. ``module.state_dict()`` of fastlstm or torch, or what
        :func:`load` returned.  Keys are written as they are (torch's names
        stay torch's names).
    path : path or binary file
        A path is written atomically (a temporary file in the same folder,
        then renamed).
    format : {None, "safetensors", "npz"}, optional
        By default from the extension of ``path``: ``.safetensors`` or ``.npz``.
    metadata : mapping of str to str, optional
        safetensors only: the header's ``__metadata__``; by default
        ``{"format": "pt"}``, which ``transformers`` and others expect.
    bfloat16 : collection of str, optional
        safetensors only: keys of float arrays to store as BF16 (half the bytes);
        their values must be bfloat16 values (a quantized module's weights are),
        else ValueError.  torch loads them into any dtype of module.

    Notes
    -----
    safetensors files written here load with the ``safetensors`` package
    (``safetensors.torch.load_file`` gives tensors for ``torch_module.
    load_state_dict``; ``safetensors.numpy.load_file`` gives arrays, but
    cannot read the BF16 tensors that ``bfloat16=`` writes), and
    ``.npz`` files with ``numpy.load``.  torch tensors are saved as their
    values; bfloat16 tensors become float32.

    Raises
    ------
    TypeError
        Non-string keys, or arrays of a dtype the format cannot hold (object,
        strings, dates, structured, float128; safetensors: also complex128).
    ValueError
        An unknown format or extension, a path that exists and is not a regular
        file (a FIFO, a device), a safetensors key ``"__metadata__"``
        (the format's own), or ``bfloat16`` values that are not bfloat16's.

    Examples
    --------
    >>> import io, numpy as np, fastlstm
    >>> buf = io.BytesIO()
    >>> fastlstm.save({"weight": np.eye(2, dtype=np.float32)}, buf, format="safetensors")
    >>> _ = buf.seek(0)
    >>> fastlstm.load(buf)["weight"]
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    fmt = _format_of(path, format)
    arrays = arrays_of(state_dict)
    if metadata is None:
        metadata = {"format": "pt"}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("safetensors metadata must map strings to strings")
    if bfloat16 and fmt != "safetensors":
        raise ValueError("bfloat16 tensors can be saved to safetensors only")

    def write(file: IO[bytes]) -> None:
        if fmt == "safetensors":
            write_safetensors(arrays, file, metadata, bfloat16)
        else:
            write_npz(arrays, file)

    if hasattr(path, "write"):
        write(path)  # type: ignore[arg-type]
        return
    # Through a symbolic link to the file it names, as open() writes; anything but a
    # regular file (a FIFO, a device) is refused rather than replaced by one.
    target = os.path.realpath(os.fsdecode(path))  # str: tempfile's names below are str
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    if os.path.exists(target) and not os.path.isfile(target):
        raise ValueError(f"cannot save to {os.fspath(path)!r}: it exists and is not a regular "
                         "file")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"the directory of {target!r} does not exist",
                                folder)
    fd, tmp = tempfile.mkstemp(prefix=".fastlstm-", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes the file 0600; give it the mode open() would: an existing
        # file's own, or what the umask leaves of 0666 (0644 under umask 022).
        os.fchmod(fd, _mode_for(target))
        with os.fdopen(fd, "wb") as file:
            write(file)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it
    to read it back would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(target: str) -> int:
    """The permission bits a plain ``open(target, "wb")`` would leave on ``target``."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()
