"""``fastlstm.quantize``: a module whose weights the kernels store in reduced precision.

The semantics are written down in docs/precision.md.  bfloat16: each weight is rounded
to the nearest bfloat16 (ties to even) once, when stored; each activation that meets a
weight in a product (the input x, the previous h, the cell output before a projection)
is rounded the same way as the product reads it; every product of two bfloat16 numbers
is exact in float32, and the sums, the bias, the gates and the cell state are float32.
int8: symmetric int8 weights with one float32 scale per row (or per matrix), the
activations quantized per row as each product reads them, int32 sums, float32 after.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import numpy as np

from fastlstm._common import wrong_module
from fastlstm.cell import LSTMCell
from fastlstm.lstm import LSTM

__all__ = ["quantize"]

_M = TypeVar("_M", LSTM, LSTMCell)

#: The storage types ``quantize`` makes, by the names it accepts.
_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "int8": "int8", "qint8": "int8"}


def _weight_dtype_name(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype)
    name = name.replace("torch.", "")
    if name in _NAMES:
        return _NAMES[name]
    raise ValueError(f"quantize: dtype must be 'bfloat16' or 'int8', got {dtype!r}")


def quantize(module: _M, dtype: Any, *, per_channel: bool = True) -> _M:
    """Return a copy of ``module`` whose weights are stored in ``dtype``.

    Parameters
    ----------
    module : fastlstm.LSTM or fastlstm.LSTMCell
        A float32 module; it is left as it was.
    dtype : {"bfloat16", "int8"}
        The storage type of the weights (``"bf16"`` and ``torch.bfloat16``,
        ``"qint8"`` and ``torch.qint8`` also name them).  Inputs, outputs and states
        stay float32.
    per_channel : bool, default=True
        For int8 weights (one scale per output row, else per tensor); bfloat16
        has no scales, so it is ignored there.

    Returns
    -------
    LSTM or LSTMCell
        A new module of the same class, with ``weight_dtype`` ``"bfloat16"`` or
        ``"int8"``; its parameters hold the rounded (or quantized and dequantized)
        weights, what it computes with.

    Raises
    ------
    TypeError
        If ``module`` is not a fastlstm ``LSTM`` or ``LSTMCell``, or ``per_channel``
        not a bool.
    ValueError
        If ``dtype`` names no supported storage type, the module is not float32, or
        (int8) a weight holds a NaN or an infinity.

    Examples
    --------
    >>> import numpy as np
    >>> import fastlstm
    >>> rnn = fastlstm.LSTM(16, 32, rng=0)
    >>> small = fastlstm.quantize(rnn, "bfloat16")
    >>> small.weight_dtype, rnn.weight_dtype
    ('bfloat16', 'float32')
    >>> x = np.ones((5, 1, 16), dtype=np.float32)
    >>> bool(np.abs(small(x)[0] - rnn(x)[0]).max() < 1e-2)
    True
    """
    if not isinstance(module, (LSTM, LSTMCell)):
        raise wrong_module("quantize", "a fastlstm.LSTM or fastlstm.LSTMCell", module)
    weight_dtype = _weight_dtype_name(dtype)
    if not isinstance(per_channel, bool):
        raise TypeError(f"quantize: per_channel must be a bool, got {type(per_channel).__name__}")
    if module.dtype != np.float32:
        raise ValueError(f"quantize: {weight_dtype} weights need a float32 module, got "
                         f"{module.dtype}")
    new = copy.deepcopy(module)
    given = {}
    if module.weight_dtype == "int8" and weight_dtype == "int8" and \
            module.__dict__.get("_per_channel", True) == per_channel:
        given = dict(module.__dict__.get("_int8_given") or {})  # torch's, kept as they are
    new._set_weight_dtype(weight_dtype, per_channel, given)
    return new
