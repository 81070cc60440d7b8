"""The exceptions of fastlstm's weights files (:mod:`fastlstm.serialization`)."""

from __future__ import annotations

import pickle

__all__ = ["StateDictError", "UnsafeFileError", "WeightsFormatError"]


class WeightsFormatError(ValueError):
    """A weights file that fastlstm cannot read.

    Raised by :func:`fastlstm.load` (and everything that reads files) for a
    file that is not one of the supported formats, is truncated or corrupt,
    declares sizes, offsets or strides outside the data it holds, or holds a
    tensor of a type fastlstm does not support (quantized, sparse, float8,
    ...).  A subclass of ``ValueError``.

    Examples
    --------
    >>> import io
    >>> import fastlstm
    >>> try:
    ...     fastlstm.load(io.BytesIO(b"not a weights file"))
    ... except fastlstm.WeightsFormatError as exc:
    ...     print(exc)
    not a PyTorch checkpoint, safetensors, .npz or ONNX file (starts with b'not a we')
    """


class WeightsMemoryError(WeightsFormatError, MemoryError):
    """Reading a weights file ran out of memory: a :class:`WeightsFormatError`, as a
    file built to exhaust memory is refused, and a ``MemoryError``, as a valid file
    read where memory is short is no corrupt one (``except MemoryError`` sees it)."""


class UnsafeFileError(WeightsFormatError, pickle.UnpicklingError):
    """A PyTorch pickle that asks for something outside fastlstm's allow-list.

    Raised before anything from the file is called: the message names the
    refused global (for example ``posix.system``) or pickle opcode.  A
    subclass of :class:`WeightsFormatError` (so of ``ValueError``) and of
    ``pickle.UnpicklingError`` (what ``torch.load(..., weights_only=True)``
    raises in the same case).

    Examples
    --------
    A pickle that would call ``os.system`` when unpickled:

    >>> import io, os, pickle
    >>> import fastlstm
    >>> payload = io.BytesIO(pickle.dumps({"weight": os.system}, protocol=2))
    >>> try:
    ...     fastlstm.load(payload)
    ... except fastlstm.UnsafeFileError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    refused global '...system': fastlstm loads only tensors, ... nothing from this file was run
    """


class StateDictError(ValueError):
    """A state dict whose keys and shapes do not make the module asked for.

    Raised by ``from_state_dict`` when the parameters under a prefix are
    missing, unexpected or of inconsistent shapes; the message lists every
    problem with the full key names.  A subclass of ``ValueError``.

    Examples
    --------
    >>> import fastlstm
    >>> state_dict = fastlstm.LSTM(4, 8, rng=0).state_dict()
    >>> del state_dict["bias_hh_l0"]
    >>> try:
    ...     fastlstm.LSTM.from_state_dict(state_dict)
    ... except fastlstm.StateDictError as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    the weights under '' do not make a consistent LSTM(...): missing bias_hh_l0
    """
