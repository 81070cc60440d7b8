"""Packed and padded variable-length sequences on NumPy arrays, as ``torch.nn.utils.rnn``.

The functions take the arguments of their ``torch.nn.utils.rnn`` namesakes and follow
torch's semantics, including its exceptions (type and message), but take any array-like or
torch tensor and return NumPy arrays, keeping the dtype of the data.  torch is never
imported, except by :func:`to_torch_packed`.

- :class:`PackedSequence`: the named tuple
  ``(data, batch_sizes, sorted_indices, unsorted_indices)``;
- :func:`pack_padded_sequence`: padded ``(T, B, *)`` batch and lengths -> packed;
- :func:`pad_packed_sequence`: packed -> ``(padded, lengths)``;
- :func:`pad_sequence`: list of ``(L_i, *)`` sequences -> padded ``(T, B, *)``;
- :func:`unpad_sequence`: padded ``(T, B, *)`` and lengths -> list of sequences;
- :func:`pack_sequence`: list of sequences -> packed;
- :func:`unpack_sequence`: packed -> list of sequences;
- :func:`invert_permutation`: the inverse of a permutation;
- :func:`is_packed_sequence`: a fastlstm or torch ``PackedSequence``?
- :func:`from_torch_packed`, :func:`to_torch_packed`: conversion from and to torch.

Examples
--------
>>> import numpy as np
>>> from fastlstm.rnn import pack_sequence, pad_packed_sequence
>>> packed = pack_sequence([np.array([1, 2, 3]), np.array([4, 5]), np.array([6])])
>>> packed.data, packed.batch_sizes
(array([1, 4, 6, 2, 5, 3]), array([3, 2, 1]))
>>> padded, lengths = pad_packed_sequence(packed, batch_first=True)
>>> padded
array([[1, 2, 3],
       [4, 5, 0],
       [6, 0, 0]])
>>> lengths
array([3, 2, 1])

Where torch itself does not check its input and returns a malformed result or fails with an
incidental error (lengths longer than the padded input, a ``PackedSequence`` whose
``batch_sizes`` do not fit its ``data``), these functions raise ``ValueError`` instead.
"""

from __future__ import annotations

import math
import numbers
import operator
import sys
from collections.abc import Iterable
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, cast

import numpy as np

from fastlstm._common import check_device, is_torch_tensor, to_arguments, to_numpy

__all__ = [
    "PackedSequence",
    "from_torch_packed",
    "invert_permutation",
    "is_packed_sequence",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "to_torch_packed",
    "unpack_sequence",
    "unpad_sequence",
]

#: An array-like: ndarray, nested sequence, scalar or torch tensor.
ArrayLike = Any

_UNSORTED_MSG = (
    "`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. "
    "You can pass `enforce_sorted=False` to pack_padded_sequence and/or pack_sequence to "
    "sidestep this requirement if you do not need ONNX exportability."
)
_NONPOSITIVE_MSG = (
    "Length of all samples has to be greater than 0, but found an element in 'lengths' "
    "that is <= 0"
)
_DIM1_RANGE_MSG = "Dimension out of range (expected to be in range of [-1, 0], but got 1)"

# C++ names torch gives the element types in its overflow messages.
_C_TYPE_NAMES = {
    "uint8": "uint8_t", "int8": "int8_t", "int16": "int16_t", "int32": "int",
    "int64": "int64_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
    "float16": "c10::Half", "float32": "float", "float64": "double",
    "complex64": "c10::complex<float>", "complex128": "c10::complex<double>",
}


# ---------------------------------------------------------------------------
# conversions


def _as_array(obj: ArrayLike) -> np.ndarray:
    """An ndarray for an array-like or a torch tensor (on any device), without a copy if
    possible.  float16 stays; floats NumPy lacks (bfloat16, float8) become float32,
    complex32 complex64."""
    if is_torch_tensor(obj) and str(obj.dtype) == "torch.float16":
        return obj.detach().cpu().resolve_neg().numpy()
    return to_numpy(obj)


def _type_name(obj: Any) -> str:
    """The type name as torch's argument parser writes it (``float``, ``numpy.ndarray``)."""
    cls = type(obj)
    module = cls.__module__.split(".")[0]
    return cls.__name__ if module in ("builtins", "torch") else f"{module}.{cls.__name__}"


_INT64_OVERFLOW = "Overflow when unpacking long long"  # torch's words for a Python int


def _outside_int64(item: Any) -> bool:
    """Whether ``item`` is an integer that int64 cannot hold."""
    return isinstance(item, numbers.Integral) and not -(2**63) <= int(item) < 2**63


def _as_lengths(lengths: ArrayLike) -> np.ndarray:
    """Lengths as int64, converted like ``torch.as_tensor(lengths, dtype=torch.int64)``
    (floats truncate toward zero) or ``tensor.to(torch.int64)``."""
    if isinstance(lengths, (list, tuple)) and any(_outside_int64(item) for item in lengths):
        raise ValueError(_INT64_OVERFLOW)  # before NumPy makes floats of them
    arr = _as_array(lengths)
    wide = arr.astype(np.float64) if arr.dtype.kind == "f" else arr  # float16 can't hold 2**63
    if arr.dtype.kind == "f" and not np.all((wide > -2.0**63) & (wide < 2.0**63)):  # NaN too
        raise RuntimeError("value cannot be converted to type int64 without overflow")
    if arr.dtype.kind == "u" and arr.size and arr.max() >= 2**63:
        raise ValueError(_INT64_OVERFLOW)
    if arr.dtype.kind in "biuf":
        return arr.astype(np.int64)
    if arr.dtype.kind in "US":
        raise TypeError("new(): invalid data type 'str'")
    if arr.dtype.kind == "O":
        for item in arr.flat:
            if _outside_int64(item):
                raise ValueError(_INT64_OVERFLOW)
            if not isinstance(item, numbers.Real):
                raise TypeError(f"'{type(item).__name__}' object cannot be interpreted as an "
                                "integer")
        return arr.astype(np.int64)
    raise TypeError(f"lengths must be integers, got an array of dtype {arr.dtype}")


def _as_index_array(values: ArrayLike, name: str) -> np.ndarray:
    arr = _as_array(values)
    if arr.dtype.kind not in "iu" and arr.size > 0:
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _scalar_arg(value: Any, fn: str, name: str, position: int, kind: str) -> Any:
    """Check a number argument as torch's argument parser does; return it as a Python
    number.  ``kind`` is ``"float"`` (real numbers) or ``"Number"`` (complex too)."""
    if is_torch_tensor(value) and value.numel() == 1:
        return value.item()
    allowed = numbers.Real if kind == "float" else numbers.Number
    if not isinstance(value, allowed):
        raise TypeError(f"{fn}(): argument '{name}' (position {position}) must be {kind}, "
                        f"not {_type_name(value)}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return complex(cast(complex, value))


def _bool_arg(value: Any, fn: str, position: int) -> bool:
    """``batch_first`` checked as torch's argument parser does (a bool, nothing else)."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}(): argument 'batch_first' (position {position}) must be bool, "
                        f"not {_type_name(value)}")
    return value


def _fill_value(value: Any, dtype: np.dtype) -> Any:
    """``value`` converted to ``dtype`` as torch's ``at::full`` does: floats truncate into
    integers; a value out of the type's range raises torch's overflow ``RuntimeError``.

    A Python int (torch's integral ``Scalar``) may be negative for an unsigned type down to
    minus its maximum, and wraps around, as in torch."""
    dtype = np.dtype(dtype)
    if dtype.kind in "bOUSV":
        return value
    if dtype.kind == "c":
        value = complex(value)
        limit = float(np.finfo(dtype).max)
        for part in (value.real, value.imag):
            if math.isfinite(part) and abs(part) > limit:
                raise RuntimeError(f"value cannot be converted to type "
                                   f"{_C_TYPE_NAMES.get(dtype.name, dtype.name)} "
                                   "without overflow")
        return value
    overflow = RuntimeError(f"value cannot be converted to type "
                            f"{_C_TYPE_NAMES.get(dtype.name, dtype.name)} without overflow")
    if isinstance(value, complex):
        if value.imag != 0:
            raise overflow
        value = value.real
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if isinstance(value, int):
            if value > info.max or (value < -info.max if info.min == 0 else value < info.min):
                raise overflow
            return value % (info.max + 1) if info.min == 0 else value
        if not info.min <= value <= info.max:  # NaN fails too
            raise overflow
        return math.trunc(value)
    value = float(value)
    if math.isfinite(value) and abs(value) > float(np.finfo(dtype).max):
        raise overflow
    return value


# ---------------------------------------------------------------------------
# PackedSequence


class _PackedSequenceFields(NamedTuple):
    data: np.ndarray
    batch_sizes: np.ndarray
    sorted_indices: Optional[np.ndarray]
    unsorted_indices: Optional[np.ndarray]


#: torch's dtypes that NumPy has, by name (not bfloat16, which NumPy has only with
#: ml_dtypes imported).
_NUMPY_TYPES = frozenset(("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                          "uint8", "bool", "complex64", "complex128"))


class PackedSequence(_PackedSequenceFields):
    """A packed batch of variable-length sequences, as ``torch.nn.utils.rnn.PackedSequence``.

    A named tuple: ``data, batch_sizes, sorted_indices, unsorted_indices = packed`` works.
    Instances are normally made by :func:`pack_padded_sequence` or :func:`pack_sequence`.

    Parameters
    ----------
    data : array-like or torch.Tensor
        The packed steps, ``(sum(lengths), *)``: the first step of every sequence, then the
        second step of every sequence that has one, and so on, sequences in decreasing order
        of length.  Also accepted, as in torch: a pair ``(data, batch_sizes)``, with
        ``batch_sizes`` left out.
    batch_sizes : array-like of int, optional
        Number of sequences at each step (non-increasing), stored as int64.
    sorted_indices : array-like of int, optional
        ``sorted_indices[k]`` is the index, in the original batch, of the ``k``-th longest
        sequence; None when the batch was already sorted.
    unsorted_indices : array-like of int, optional
        The inverse permutation of ``sorted_indices``; computed when left out.

    Attributes
    ----------
    data : numpy.ndarray
    batch_sizes : numpy.ndarray of int64
    sorted_indices : numpy.ndarray of int64 or None
    unsorted_indices : numpy.ndarray of int64 or None

    See Also
    --------
    pack_padded_sequence, pack_sequence, pad_packed_sequence, to_torch_packed

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import PackedSequence
    >>> packed = PackedSequence(np.array([4, 1, 3, 5, 2, 6]), [3, 2, 1], [2, 0, 1])
    >>> packed
    PackedSequence(data=array([4, 1, 3, 5, 2, 6]), batch_sizes=array([3, 2, 1]), \
sorted_indices=array([2, 0, 1]), unsorted_indices=array([1, 2, 0]))
    >>> data, batch_sizes, sorted_indices, unsorted_indices = packed
    """

    __slots__ = ()

    def __new__(
        cls,
        data: ArrayLike,
        batch_sizes: Optional[ArrayLike] = None,
        sorted_indices: Optional[ArrayLike] = None,
        unsorted_indices: Optional[ArrayLike] = None,
    ) -> PackedSequence:
        if batch_sizes is None:
            if not (isinstance(data, (list, tuple)) and len(data) == 2):
                raise AssertionError("Expected data to be a list or tuple of length 2")
            data, batch_sizes = data
        if unsorted_indices is None and sorted_indices is not None:
            sorted_indices = _as_index_array(sorted_indices, "sorted_indices")
            unsorted_indices = invert_permutation(sorted_indices)
        return cls._make((data, batch_sizes, sorted_indices, unsorted_indices))

    @classmethod
    def _make(  # type: ignore[override]  # mypy types a NamedTuple's _make specially
        cls, iterable: Iterable[Any]
    ) -> PackedSequence:
        # The fields as arrays (namedtuple's _make and _replace skip __new__); a None
        # unsorted_indices stays None here, as in torch's _make and _replace.
        fields = tuple(iterable)
        if len(fields) != 4:
            raise TypeError(f"Expected 4 arguments, got {len(fields)}")
        data, batch_sizes, sorted_indices, unsorted_indices = fields
        return tuple.__new__(cls, (
            _as_array(data), _as_index_array(batch_sizes, "batch_sizes"),
            None if sorted_indices is None else _as_index_array(sorted_indices,
                                                                "sorted_indices"),
            None if unsorted_indices is None else _as_index_array(unsorted_indices,
                                                                  "unsorted_indices")))

    def __hash__(self) -> int:
        # torch's is hashable: its tensors hash by identity, and so do the arrays here
        return hash(tuple(id(field) for field in self))

    def to(self, *args: Any, **kwargs: Any) -> PackedSequence:
        """``data`` cast to a dtype, as torch's ``PackedSequence.to``, in its forms
        (``to(dtype)``, ``to(device, dtype)``, ``to(tensor)``, keywords); the indices stay
        int64.  The device must be the CPU.

        Returns
        -------
        PackedSequence
            self when ``data`` has that dtype already, else a new one.

        Raises
        ------
        ValueError
            Any device other than the CPU.
        TypeError
            A dtype that NumPy has not (``torch.bfloat16``), or arguments in no form of
            ``to``.

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> packed = pack_sequence([np.ones((2, 3), np.float32), np.ones((1, 3), np.float32)])
        >>> packed.to("cpu", np.float64).data.dtype, packed.cpu() is packed
        (dtype('float64'), True)
        """
        device, dtype = to_arguments(args, kwargs)
        check_device(device)
        if dtype is None:
            return self
        name = str(dtype)
        if name.startswith("torch."):  # only torch's types that NumPy has itself
            if name[6:] not in _NUMPY_TYPES:
                raise TypeError(f"PackedSequence.to: no NumPy dtype for {dtype!r}")
            dtype = name[6:]
        try:
            target = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"PackedSequence.to: no NumPy dtype for {dtype!r}") from None
        if target == self.data.dtype:
            return self
        return self._replace(data=self.data.astype(target))

    def cpu(self, *args: Any, **kwargs: Any) -> PackedSequence:
        """Return self: the data is on the CPU already, as torch's ``cpu()`` there.
        Arguments are :meth:`to`'s (``memory_format=`` and the like: torch passes them on
        to ``to``).

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> packed = pack_sequence([np.ones((2, 3))])
        >>> packed.cpu() is packed
        True
        """
        return self.to(*args, **kwargs) if args or kwargs else self

    @property
    def is_cuda(self) -> bool:
        """False: the data is a NumPy array in main memory.

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).is_cuda
        False
        """
        return False

    def is_pinned(self) -> bool:
        """False: NumPy arrays are not in pinned memory.

        Returns
        -------
        bool

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).is_pinned()
        False
        """
        return False

    def double(self) -> PackedSequence:
        """``data`` as float64, as torch's ``PackedSequence.double()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).double().data.dtype
        dtype('float64')
        """
        return self.to(np.float64)

    def half(self) -> PackedSequence:
        """``data`` as float16, as torch's ``PackedSequence.half()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).half().data.dtype
        dtype('float16')
        """
        return self.to(np.float16)

    def long(self) -> PackedSequence:
        """``data`` as int64, as torch's ``PackedSequence.long()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).long().data.dtype
        dtype('int64')
        """
        return self.to(np.int64)

    def short(self) -> PackedSequence:
        """``data`` as int16, as torch's ``PackedSequence.short()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).short().data.dtype
        dtype('int16')
        """
        return self.to(np.int16)

    def char(self) -> PackedSequence:
        """``data`` as int8, as torch's ``PackedSequence.char()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).char().data.dtype
        dtype('int8')
        """
        return self.to(np.int8)

    def byte(self) -> PackedSequence:
        """``data`` as uint8, as torch's ``PackedSequence.byte()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).byte().data.dtype
        dtype('uint8')
        """
        return self.to(np.uint8)

    def float(self) -> PackedSequence:  # after the annotations that name the builtin
        """``data`` as float32, as torch's ``PackedSequence.float()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).float().data.dtype
        dtype('float32')
        """
        return self.to(np.float32)

    def int(self) -> PackedSequence:
        """``data`` as int32, as torch's ``PackedSequence.int()``.

        Returns
        -------
        PackedSequence

        Examples
        --------
        >>> import numpy as np
        >>> from fastlstm.rnn import pack_sequence
        >>> pack_sequence([np.ones((2, 3))]).int().data.dtype
        dtype('int32')
        """
        return self.to(np.int32)


def invert_permutation(permutation: Optional[ArrayLike]) -> Optional[np.ndarray]:
    """Return the inverse of a permutation, as ``torch.nn.utils.rnn.invert_permutation``.

    Parameters
    ----------
    permutation : array-like of int or None
        A permutation of ``0 .. n-1``.

    Returns
    -------
    numpy.ndarray of int64 or None
        ``inverse`` with ``inverse[permutation[i]] == i``; None for None.

    Examples
    --------
    >>> from fastlstm.rnn import invert_permutation
    >>> invert_permutation([2, 0, 1])
    array([1, 2, 0])
    """
    if permutation is None:
        return None
    perm = _as_index_array(permutation, "permutation")
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size, dtype=np.int64).reshape(perm.shape)
    return inverse


def is_packed_sequence(obj: Any) -> bool:
    """True for a fastlstm or a torch ``PackedSequence``, decided without importing torch.

    Parameters
    ----------
    obj : object

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import is_packed_sequence, pack_sequence
    >>> is_packed_sequence(pack_sequence([np.ones(2), np.ones(1)]))
    True
    >>> is_packed_sequence(np.ones(3))
    False
    """
    return isinstance(obj, PackedSequence) or _is_torch_packed(obj)


def _is_torch_packed(obj: Any) -> bool:
    if sys.modules.get("torch") is None:
        return False
    torch_rnn = sys.modules.get("torch.nn.utils.rnn")
    return torch_rnn is not None and isinstance(obj, torch_rnn.PackedSequence)


def from_torch_packed(sequence: Any) -> PackedSequence:
    """Convert a ``torch.nn.utils.rnn.PackedSequence`` to a fastlstm :class:`PackedSequence`.

    Parameters
    ----------
    sequence : torch.nn.utils.rnn.PackedSequence or PackedSequence
        A fastlstm ``PackedSequence`` is returned as it is.

    Returns
    -------
    PackedSequence
        NumPy arrays, sharing memory with the CPU tensors (as ``torch.Tensor.numpy``).

    Raises
    ------
    TypeError
        If ``sequence`` is not a packed sequence.

    Examples
    --------
    >>> import torch
    >>> from torch.nn.utils.rnn import pack_sequence
    >>> from fastlstm.rnn import from_torch_packed
    >>> torch_packed = pack_sequence([torch.tensor([1, 2]), torch.tensor([3])])
    >>> from_torch_packed(torch_packed).data
    array([1, 3, 2])
    """
    if isinstance(sequence, PackedSequence):
        return sequence
    if not _is_torch_packed(sequence):
        raise TypeError("from_torch_packed expects a torch.nn.utils.rnn.PackedSequence, got "
                        f"{type(sequence).__name__}")
    return PackedSequence._make(sequence)  # a None unsorted_indices stays None, as in torch


def to_torch_packed(sequence: PackedSequence) -> Any:
    """Convert a fastlstm :class:`PackedSequence` to a ``torch.nn.utils.rnn.PackedSequence``.

    torch is imported here, and only here.

    Parameters
    ----------
    sequence : PackedSequence or torch.nn.utils.rnn.PackedSequence
        A torch ``PackedSequence`` is returned as it is.

    Returns
    -------
    torch.nn.utils.rnn.PackedSequence
        CPU tensors; ``data`` shares memory with the array where torch allows it.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from fastlstm.rnn import pack_sequence, to_torch_packed
    >>> packed = pack_sequence([np.array([1, 2]), np.array([3])])
    >>> to_torch_packed(packed).data
    tensor([1, 3, 2])
    """
    if _is_torch_packed(sequence):
        return sequence
    if not isinstance(sequence, PackedSequence):
        raise TypeError(f"to_torch_packed expects a fastlstm.rnn.PackedSequence, got "
                        f"{type(sequence).__name__}")
    import torch
    from torch.nn.utils.rnn import PackedSequence as TorchPackedSequence

    def tensor(array: Optional[np.ndarray]) -> Any:
        if array is None:
            return None
        array = np.ascontiguousarray(array)
        return torch.from_numpy(array if array.flags.writeable else array.copy())

    return TorchPackedSequence._make((tensor(sequence.data), tensor(sequence.batch_sizes),
                                      tensor(sequence.sorted_indices),
                                      tensor(sequence.unsorted_indices)))


def _checked_packed(sequence: Any) -> PackedSequence:
    """A fastlstm PackedSequence for fastlstm's or torch's; others pass through unchanged
    (and fail on a missing attribute, as in torch)."""
    return from_torch_packed(sequence) if _is_torch_packed(sequence) else sequence


# ---------------------------------------------------------------------------
# index computations


def _packed_positions(batch_sizes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(t, b)`` of every row of packed data: step and (sorted) batch index."""
    steps = np.arange(batch_sizes.size)
    t = np.repeat(steps, batch_sizes)
    offsets = np.cumsum(batch_sizes) - batch_sizes
    b = np.arange(t.size) - np.repeat(offsets, batch_sizes)
    return t, b


def count_greater(descending: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of ``values``, how many of the non-increasing ``descending`` exceed it."""
    return np.searchsorted(-descending, -values, side="left").astype(np.int64)


def check_batch_sizes(data: np.ndarray, batch_sizes: np.ndarray) -> None:
    if batch_sizes.ndim != 1:
        raise RuntimeError("'lengths' argument should be a 1D CPU int64 tensor, but got "
                           f"{batch_sizes.ndim}D cpu Long tensor")
    if batch_sizes.size == 0:
        raise RuntimeError("batch_sizes can not be empty")
    if batch_sizes.min() <= 0 or np.any(np.diff(batch_sizes) > 0):
        raise ValueError("batch_sizes must be positive and non-increasing, got "
                         f"{batch_sizes.tolist()}")
    total = int(batch_sizes.sum())
    if data.ndim == 0 or data.shape[0] != total:
        raise ValueError(f"data must have sum(batch_sizes) = {total} rows, got shape "
                         f"{data.shape}")


# ---------------------------------------------------------------------------
# packing and padding


def pack_padded_sequence(
    input: ArrayLike,
    lengths: ArrayLike,
    batch_first: bool = False,
    enforce_sorted: bool = True,
) -> PackedSequence:
    """Pack a padded batch of variable-length sequences, as torch's ``pack_padded_sequence``.

    Parameters
    ----------
    input : array-like or torch.Tensor
        Padded batch, ``(T, B, *)``, or ``(B, T, *)`` with ``batch_first``; ``*`` is any
        number of trailing dimensions, including none.
    lengths : array-like of int or torch.Tensor
        Length of each sequence, ``(B,)``; floats are truncated, as in torch.
    batch_first : bool, default False
        Whether ``input`` is ``(B, T, *)``.
    enforce_sorted : bool, default True
        If True, ``lengths`` must be non-increasing; if False the batch is sorted here (a
        stable sort: equal lengths keep their order) and the permutation is recorded in
        ``sorted_indices``.

    Returns
    -------
    PackedSequence
        ``data`` has the dtype of ``input``.

    Raises
    ------
    RuntimeError
        Torch's errors: empty input, ``len(lengths)`` not the batch size, a length <= 0,
        ``lengths`` not 1-D, or not sorted with ``enforce_sorted=True``.
    IndexError
        ``input`` with fewer than 2 dimensions.
    ValueError
        A length greater than ``T`` (torch returns a malformed ``PackedSequence`` there).

    See Also
    --------
    pad_packed_sequence : the inverse.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import pack_padded_sequence
    >>> seq = np.array([[1, 2, 0], [3, 0, 0], [4, 5, 6]])
    >>> packed = pack_padded_sequence(seq, [2, 1, 3], batch_first=True, enforce_sorted=False)
    >>> packed.data, packed.batch_sizes, packed.sorted_indices
    (array([4, 1, 3, 5, 2, 6]), array([3, 2, 1]), array([2, 0, 1]))
    """
    x = _as_array(input)
    lengths_arr = _as_lengths(lengths)
    batch_dim = 0 if _bool_arg(batch_first, "_pack_padded_sequence", 3) else 1
    sorted_indices = None
    batch = None  # batch size after the sort's gather
    if not enforce_sorted:
        # torch: lengths, sorted_indices = torch.sort(...); input.index_select(batch_dim, ...)
        if x.ndim < 2:
            raise IndexError(_DIM1_RANGE_MSG)
        if lengths_arr.ndim > 1:
            raise IndexError("index_select(): Index is supposed to be a vector")
        sorted_indices = np.argsort(-lengths_arr.reshape(-1), kind="stable")
        lengths_arr = lengths_arr.reshape(-1)[sorted_indices].reshape(lengths_arr.shape)
        out_of_bounds = np.flatnonzero(sorted_indices >= x.shape[batch_dim])
        if out_of_bounds.size:
            if batch_dim == 0:
                raise IndexError("index out of range in self")  # torch's index_select on dim 0
            raise RuntimeError("INDICES element is out of DATA bounds, "
                               f"id={sorted_indices[out_of_bounds[0]]} "
                               f"axis_dim={x.shape[batch_dim]}")
        batch = sorted_indices.size
    if batch is None:
        numel = x.size
    else:  # the size after the gather
        numel = x.size // x.shape[batch_dim] * batch if x.shape[batch_dim] else 0
    if numel == 0:
        raise RuntimeError("Cannot pack empty tensors.")
    if batch_first and x.ndim < 2:
        raise IndexError(_DIM1_RANGE_MSG)
    if lengths_arr.ndim != 1:
        raise RuntimeError("'lengths' argument should be a 1D CPU int64 tensor, but got "
                           f"{lengths_arr.ndim}D cpu Long tensor")
    if x.ndim == 0:
        raise IndexError("Dimension specified as 1 but tensor has no dimensions")
    if x.ndim == 1:
        raise IndexError(_DIM1_RANGE_MSG)
    if batch is None:
        batch = x.shape[batch_dim]
    if lengths_arr.size != batch:
        raise RuntimeError("Expected `len(lengths)` to be equal to batch_size, but got "
                           f"{lengths_arr.size} (batch_size={batch})")
    if lengths_arr[-1] <= 0:
        raise RuntimeError(_NONPOSITIVE_MSG)
    if np.any(lengths_arr[1:] > lengths_arr[:-1]):
        raise RuntimeError(_UNSORTED_MSG)
    steps = x.shape[1 - batch_dim]
    if lengths_arr[0] > steps:
        raise ValueError(f"Expected all lengths to be at most the padded length of the input "
                         f"({steps}), but got a length of {lengths_arr[0]}")

    batch_sizes = count_greater(lengths_arr, np.arange(lengths_arr[0]))
    t, b = _packed_positions(batch_sizes)
    if sorted_indices is not None:
        b = sorted_indices[b]
    data = x[b, t] if batch_first else x[t, b]
    return PackedSequence(data, batch_sizes, sorted_indices, None)


def pad_packed_sequence(
    sequence: Any,
    batch_first: bool = False,
    padding_value: float = 0.0,
    total_length: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Pad a packed batch of variable-length sequences, as torch's ``pad_packed_sequence``.

    The inverse of :func:`pack_padded_sequence`.

    Parameters
    ----------
    sequence : PackedSequence or torch.nn.utils.rnn.PackedSequence
        The batch to pad.
    batch_first : bool, default False
        Return ``(B, T, *)`` instead of ``(T, B, *)``.
    padding_value : number, default 0.0
        Value of the padded elements, converted to the dtype of the data as torch does
        (truncated into integer dtypes; ``RuntimeError`` where it overflows).
    total_length : int, optional
        Pad to this length ``T`` instead of the longest sequence's.

    Returns
    -------
    padded : numpy.ndarray
        ``(T, B, *)`` or ``(B, T, *)``, C-contiguous, the dtype of ``sequence.data``,
        sequences in their original order.
    lengths : numpy.ndarray of int64
        Length of each sequence, ``(B,)``, in the original order.

    Raises
    ------
    ValueError
        ``total_length`` shorter than the longest sequence (torch's message), or a
        malformed ``sequence`` (``batch_sizes`` not positive and non-increasing, or not
        adding up to the rows of ``data``).
    TypeError
        ``total_length`` not an int, or ``padding_value`` not a number (torch's messages).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import pack_padded_sequence, pad_packed_sequence
    >>> seq = np.array([[1, 2, 0], [3, 0, 0], [4, 5, 6]])
    >>> packed = pack_padded_sequence(seq, [2, 1, 3], batch_first=True, enforce_sorted=False)
    >>> padded, lengths = pad_packed_sequence(packed, batch_first=True, padding_value=-1,
    ...                                       total_length=4)
    >>> padded
    array([[ 1,  2, -1, -1],
           [ 3, -1, -1, -1],
           [ 4,  5,  6, -1]])
    >>> lengths
    array([2, 1, 3])
    """
    packed = _checked_packed(sequence)
    _bool_arg(batch_first, "_pad_packed_sequence", 3)
    batch_sizes = np.asarray(packed.batch_sizes)
    data = _as_array(packed.data)
    max_seq_length = batch_sizes.shape[0] if batch_sizes.ndim else 1
    if total_length is not None and total_length < max_seq_length:
        raise ValueError(
            "Expected total_length to be at least the length of the longest sequence in "
            f"input, but got total_length={total_length} and max sequence length being "
            f"{max_seq_length}"
        )
    padding_value = _scalar_arg(padding_value, "_pad_packed_sequence", "padding_value", 4,
                                "Number")
    if total_length is not None:
        if isinstance(total_length, bool) or not hasattr(total_length, "__index__"):
            raise TypeError("_pad_packed_sequence(): argument 'total_length' (position 5) must "
                            f"be int, not {_type_name(total_length)}")
        max_seq_length = operator.index(total_length)
    check_batch_sizes(data, batch_sizes)
    fill = _fill_value(padding_value, data.dtype)

    batch = int(batch_sizes[0]) if batch_sizes.size else 0
    shape = (batch, max_seq_length) if batch_first else (max_seq_length, batch)
    padded = np.full(shape + data.shape[1:], fill, dtype=data.dtype)
    t, b = _packed_positions(batch_sizes)
    lengths = count_greater(batch_sizes, np.arange(batch))
    unsorted = packed.unsorted_indices
    unsorted = None if unsorted is None else np.asarray(unsorted)
    bad = _out_of_range(unsorted, batch)
    if bad is not None:  # torch's index_select refuses them (NumPy would wrap negatives)
        raise RuntimeError(f"INDICES element is out of DATA bounds, id={bad} axis_dim={batch}")
    if unsorted is not None and is_permutation(unsorted, batch):
        # scatter straight to the original order
        b = cast(np.ndarray, invert_permutation(unsorted))[b]
        lengths = lengths[unsorted]
        unsorted = None
    if batch_first:
        padded[b, t] = data
    else:
        padded[t, b] = data
    if unsorted is not None:  # as torch's index_select, whatever the indices
        padded = np.take(padded, unsorted, axis=0 if batch_first else 1)
        lengths = lengths[unsorted]
    return padded, lengths


def _out_of_range(indices: Optional[np.ndarray], n: int) -> Optional[int]:
    """The first index outside [0, n), or None."""
    if indices is None or indices.size == 0:
        return None
    bad = np.flatnonzero((indices < 0) | (indices >= n))
    return int(indices.reshape(-1)[bad[0]]) if bad.size else None


def is_permutation(indices: np.ndarray, n: int) -> bool:
    return indices.shape == (n,) and np.array_equal(np.sort(indices), np.arange(n))


def pad_sequence(
    sequences: Iterable[ArrayLike],
    batch_first: bool = False,
    padding_value: float = 0.0,
    padding_side: str = "right",
) -> np.ndarray:
    """Stack variable-length sequences, padded to the longest, as torch's ``pad_sequence``.

    Parameters
    ----------
    sequences : iterable of array-like or torch.Tensor
        Sequences ``(L_i, *)``; the trailing dimensions and dtype of the output are those of
        the first, and the others are broadcast and cast into it, as in torch.  An array
        (or tensor) is taken as the sequence of its rows.
    batch_first : bool, default False
        Return ``(B, T, *)`` instead of ``(T, B, *)``.
    padding_value : float, default 0.0
        Value of the padded elements (converted as in :func:`pad_packed_sequence`).
    padding_side : {"right", "left"}, default "right"
        Which end of the sequences to pad.

    Returns
    -------
    numpy.ndarray
        ``(T, B, *)`` or ``(B, T, *)``, ``T`` the longest length, ``B`` the number of
        sequences.

    Raises
    ------
    RuntimeError
        Torch's errors: ``sequences`` not iterable or empty, ``padding_side`` not "left" or
        "right", a 0-d sequence first, sequences that do not broadcast into the first's shape.
    IndexError
        A 0-d sequence after the first.
    TypeError
        ``padding_value`` not a real number or ``padding_side`` not a str.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import pad_sequence
    >>> pad_sequence([np.ones((25, 300)), np.ones((22, 300)), np.ones((15, 300))]).shape
    (25, 3, 300)
    >>> pad_sequence([np.array([1, 2, 3]), np.array([4])], batch_first=True, padding_side="left")
    array([[1, 2, 3],
           [0, 0, 4]])
    """
    if not isinstance(sequences, Iterable):
        raise RuntimeError("pad_sequence: Expected iterable for input sequences, but got arg of "
                           f"type: {type(sequences)}")
    arrays = [_as_array(seq) for seq in sequences]
    _bool_arg(batch_first, "pad_sequence", 2)
    padding_value = _scalar_arg(padding_value, "pad_sequence", "padding_value", 3, "float")
    if not isinstance(padding_side, str):
        raise TypeError("pad_sequence(): argument 'padding_side' (position 4) must be str, not "
                        f"{_type_name(padding_side)}")
    if not arrays:
        raise RuntimeError("received an empty list of sequences")
    if padding_side not in ("left", "right"):
        raise RuntimeError(
            f"Expected padding_side to be one of left or right, but got {padding_side}."
        )
    first = arrays[0]
    if first.ndim == 0:
        raise RuntimeError("ArrayRef: invalid slice, N = 1; size = 0")
    if any(a.ndim == 0 for a in arrays):
        raise IndexError("Dimension specified as 0 but tensor has no dimensions")
    max_len = max(a.shape[0] for a in arrays)
    fill = _fill_value(float(padding_value), first.dtype)
    shape = (len(arrays), max_len) if batch_first else (max_len, len(arrays))
    out = np.full(shape + first.shape[1:], fill, dtype=first.dtype)
    for i, seq in enumerate(arrays):
        start = max_len - seq.shape[0] if padding_side == "left" else 0
        steps = slice(start, start + seq.shape[0])
        _copy_broadcast(out[i, steps] if batch_first else out[steps, i], seq)
    return out


def _copy_broadcast(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` with torch's ``copy_`` broadcasting errors."""
    if dst.shape != src.shape:
        ndim = max(dst.ndim, src.ndim)
        a_shape = (1,) * (ndim - dst.ndim) + dst.shape
        b_shape = (1,) * (ndim - src.ndim) + src.shape
        for dim, (a, b) in enumerate(zip(a_shape, b_shape)):
            if a != b and a != 1 and b != 1:
                raise RuntimeError(f"The size of tensor a ({a}) must match the size of tensor b "
                                   f"({b}) at non-singleton dimension {dim}")
        broadcast = tuple(b if a == 1 else a for a, b in zip(a_shape, b_shape))
        if broadcast != dst.shape:
            raise RuntimeError(f"output with shape {list(dst.shape)} doesn't match the "
                               f"broadcast shape {list(broadcast)}")
    dst[...] = src


def unpad_sequence(
    padded_sequences: ArrayLike,
    lengths: ArrayLike,
    batch_first: bool = False,
) -> List[np.ndarray]:
    """Split a padded batch into its variable-length sequences, as torch's
    ``unpad_sequence``.

    Parameters
    ----------
    padded_sequences : array-like or torch.Tensor
        ``(T, B, *)``, or ``(B, T, *)`` with ``batch_first``.  Unlike torch, the input is
        never modified (torch transposes its argument in place when ``batch_first=False``).
    lengths : array-like or torch.Tensor
        ``(B,)`` lengths; sequence ``i`` keeps the steps ``t < lengths[i]``.
    batch_first : bool, default False
        Whether ``padded_sequences`` is ``(B, T, *)``.

    Returns
    -------
    list of numpy.ndarray
        ``B`` new arrays ``(L_i, *)``.

    Raises
    ------
    ValueError
        ``len(lengths)`` not the batch size (torch's ``zip(strict=True)`` message).

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import unpad_sequence
    >>> unpad_sequence(np.array([[1, 2, 3], [4, 0, 0]]), [3, 1], batch_first=True)
    [array([1, 2, 3]), array([4])]
    """
    x = _as_array(padded_sequences)
    if x.ndim < 2:
        raise IndexError(_DIM1_RANGE_MSG)
    if not batch_first:
        x = np.swapaxes(x, 0, 1)
    lengths_arr = _as_array(lengths)
    if lengths_arr.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lengths_arr.shape}")
    if lengths_arr.size != x.shape[0]:
        side = "longer" if lengths_arr.size > x.shape[0] else "shorter"
        raise ValueError(f"zip() argument 2 is {side} than argument 1")
    counts = np.count_nonzero(np.arange(x.shape[1]) < lengths_arr[:, None], axis=1)
    return [x[i, :n].copy() for i, n in enumerate(counts.tolist())]


def pack_sequence(sequences: Sequence[ArrayLike], enforce_sorted: bool = True) -> PackedSequence:
    """Pack a list of variable-length sequences, as torch's ``pack_sequence``.

    The same as :func:`pad_sequence` followed by :func:`pack_padded_sequence`.

    Parameters
    ----------
    sequences : sequence of array-like or torch.Tensor
        Sequences ``(L_i, *)``, in decreasing order of length unless ``enforce_sorted`` is
        False.
    enforce_sorted : bool, default True
        See :func:`pack_padded_sequence`.

    Returns
    -------
    PackedSequence

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import pack_sequence
    >>> pack_sequence([np.array([1, 2, 3]), np.array([4, 5]), np.array([6])])
    PackedSequence(data=array([1, 4, 6, 2, 5, 3]), batch_sizes=array([3, 2, 1]), \
sorted_indices=None, unsorted_indices=None)
    >>> pack_sequence([np.array([6]), np.array([1, 2, 3])], enforce_sorted=False).data
    array([1, 6, 2, 3])
    """
    arrays = [_as_array(seq) for seq in sequences]
    if any(a.ndim == 0 for a in arrays):
        raise IndexError("Dimension specified as 0 but tensor has no dimensions")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    return pack_padded_sequence(pad_sequence(arrays), lengths, enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences: Any) -> List[np.ndarray]:
    """Unpack a packed batch into its variable-length sequences, as torch's
    ``unpack_sequence``.

    Parameters
    ----------
    packed_sequences : PackedSequence or torch.nn.utils.rnn.PackedSequence

    Returns
    -------
    list of numpy.ndarray
        The sequences ``(L_i, *)``, in their original order, as new arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from fastlstm.rnn import pack_sequence, unpack_sequence
    >>> seqs = [np.array([1, 2]), np.array([3, 4, 5]), np.array([6])]
    >>> unpack_sequence(pack_sequence(seqs, enforce_sorted=False))
    [array([1, 2]), array([3, 4, 5]), array([6])]
    """
    packed = _checked_packed(packed_sequences)
    batch_sizes = np.asarray(packed.batch_sizes)
    data = _as_array(packed.data)
    check_batch_sizes(data, batch_sizes)
    batch = int(batch_sizes[0]) if batch_sizes.size else 0
    offsets = np.cumsum(batch_sizes) - batch_sizes
    lengths = count_greater(batch_sizes, np.arange(batch)).tolist()
    sequences = [data[offsets[:n] + b] for b, n in enumerate(lengths)]
    if packed.unsorted_indices is not None:
        unsorted = np.asarray(packed.unsorted_indices)
        if _out_of_range(unsorted, batch) is not None:
            raise IndexError("index out of range in self")  # torch's index_select
        sequences = [sequences[i] for i in unsorted.tolist()]
    return sequences
