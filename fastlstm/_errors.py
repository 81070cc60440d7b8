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
    """


class UnsafeFileError(WeightsFormatError, pickle.UnpicklingError):
    """A PyTorch pickle that asks for something outside fastlstm's allow-list.

    Raised before anything from the file is called: the message names the
    refused global (for example ``posix.system``) or pickle opcode.  A
    subclass of :class:`WeightsFormatError` (so of ``ValueError``) and of
    ``pickle.UnpicklingError`` (what ``torch.load(..., weights_only=True)``
    raises in the same case).
    """


class StateDictError(ValueError):
    """A state dict whose keys and shapes do not make the module asked for.

    Raised by ``from_state_dict`` when the parameters under a prefix are
    missing, unexpected or of inconsistent shapes; the message lists every
    problem with the full key names.  A subclass of ``ValueError``.
    """
