"""The weights of torch's dynamically quantized LSTM and LSTMCell, read as NumPy arrays.

``torch.ao.quantization.quantize_dynamic`` turns ``torch.nn.LSTM`` and ``torch.nn.LSTMCell``
into ``torch.ao.nn.quantized.dynamic.LSTM`` and ``LSTMCell``, whose weights live in packed
(fbgemm/onednn) objects rather than in parameters.  :func:`quantized_weights` reads them
through the modules' own ``get_weight()`` and ``get_bias()``, which unpack every weight with
its bias, and returns plain arrays under ``torch.nn.LSTM``'s state_dict names.

How torch 2.13 stores them:

* int8 (``dtype=torch.qint8``): each weight is a ``qint8`` tensor of shape
  ``(4 * hidden_size, in_features)``.  The default qconfig quantizes it per tensor
  (``per_tensor_affine``, one float scale, zero point 0 from the symmetric observer);
  ``per_channel_dynamic_qconfig`` per output row (``per_channel_affine``, axis 0, float64
  scales holding float32 values, int64 zero points, all 0).  A qconfig with an affine
  observer gives nonzero zero points, which are refused here.  ``q`` spans -128..127.
* float16 (``dtype=torch.float16``): each weight is stored in float16 (rounded to nearest
  from the float32 weight) and unpacked as the float32 widening of those values.
* Biases: float32, packed with their weights and added by the packed matmul.  The
  ``bias_ih``/``bias_hh`` attributes of a quantized LSTMCell are the random tensors of its
  constructor, left unchanged by ``from_float``; its ``forward`` passes them on but only
  the packed biases are added, so they are not read.  ``quantize_dynamic`` refuses float
  modules with ``bias=False``.  A quantized LSTM built directly with ``bias=False`` packs
  random biases and its ``forward`` raises "quantized LSTM requires biases": its biases are
  not read either.  A quantized LSTMCell built with ``bias=False`` packs none.
* ``proj_size``: the quantized LSTM has none.  ``quantize_dynamic`` turns an LSTM with
  ``proj_size > 0`` into one without its projection (``weight_hr`` dropped, ``weight_hh``
  of ``proj_size`` columns) that cannot run (pytorch#60008); it is refused here.

torch is never imported: a module that is an instance of torch's classes comes with torch
already imported, and the tensors are read through their methods.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["QuantizedWeights", "quantized_weights"]

# Where torch's quantized recurrent modules are exported; looked up in sys.modules only.
_PACKAGE = "torch.ao.nn.quantized.dynamic"
_KINDS = ("LSTM", "LSTMCell")
_STORAGE = {"torch.qint8": "int8", "torch.float16": "float16"}


@dataclass(frozen=True, eq=False)
class QuantizedWeights:
    """The weights of a dynamically quantized torch LSTM or LSTMCell, as NumPy arrays.

    Attributes
    ----------
    kind : str
        ``"LSTM"`` or ``"LSTMCell"``.
    config : dict
        The module's configuration: ``input_size``, ``hidden_size``, ``num_layers``,
        ``bias``, ``batch_first``, ``bidirectional`` and ``proj_size`` (always 0) for an
        LSTM; ``input_size``, ``hidden_size`` and ``bias`` for a cell.
    dtype : str
        How torch stores the weights: ``"int8"`` or ``"float16"``.
    floats : dict of str to numpy.ndarray
        Every parameter under ``torch.nn.LSTM``'s (or ``LSTMCell``'s) state_dict name, in
        state_dict order, as float32: the values torch computes with (int8 weights
        dequantized as ``q.astype(np.float32) * scale[:, None]``, float16 weights widened
        exactly, biases as they are).  No bias keys when ``config["bias"]`` is false.
    int8 : dict of str to tuple of numpy.ndarray
        For int8 storage, each weight's name to ``(q, scale)``: ``q`` an ``np.int8`` array
        of the weight's shape ``(4 * hidden_size, in_features)``, ``scale`` an
        ``np.float32`` array of shape ``(4 * hidden_size,)`` (per-channel, one per output
        row) or ``(1,)`` (per-tensor).  The zero point is always 0.  Empty for float16.
    """

    kind: str
    config: Dict[str, Any]
    dtype: str
    floats: Dict[str, np.ndarray]
    int8: Dict[str, Tuple[np.ndarray, np.ndarray]]


def quantized_weights(module: Any) -> QuantizedWeights:
    """Read the weights of a dynamically quantized torch LSTM or LSTMCell.

    Parameters
    ----------
    module : torch.ao.nn.quantized.dynamic.LSTM or torch.ao.nn.quantized.dynamic.LSTMCell
        A module made by ``torch.ao.quantization.quantize_dynamic`` with ``torch.qint8``
        (per-tensor or per-channel) or ``torch.float16`` weights.

    Returns
    -------
    QuantizedWeights
        The configuration, the storage dtype, the float32 values torch computes with and,
        for int8, the quantized weights with their scales.  Every array is a new copy.

    Raises
    ------
    TypeError
        If ``module`` is not one of torch's dynamically quantized LSTM or LSTMCell.
    ValueError
        If a weight is quantized with a nonzero zero point (asymmetric), per channel along
        an axis other than 0, or with another qscheme or dtype; if a weight's shape does not
        match the configuration (an LSTM quantized from one with ``proj_size > 0``); or if
        the packed biases disagree with ``bias``.

    Examples
    --------
    >>> import torch
    >>> from fastlstm.io.torch_quantized import quantized_weights
    >>> model = torch.nn.Sequential(torch.nn.LSTM(3, 4))
    >>> qmodel = torch.ao.quantization.quantize_dynamic(
    ...     model, {torch.nn.LSTM}, dtype=torch.qint8)
    >>> w = quantized_weights(qmodel[0])
    >>> w.kind, w.dtype, list(w.floats)
    ('LSTM', 'int8', ['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0'])
    >>> q, scale = w.int8["weight_ih_l0"]
    >>> q.dtype, q.shape, scale.shape
    (dtype('int8'), (16, 3), (1,))
    """
    kind = _kind(module)
    config = _config(module, kind)
    storage = _storage(module, kind)
    weights = module.get_weight()
    biases = module.get_bias()
    floats: Dict[str, np.ndarray] = {}
    int8: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for suffix, in_features in _groups(kind, config):
        gates = 4 * config["hidden_size"]
        for part, columns in (("ih", in_features), ("hh", config["hidden_size"])):
            name = f"weight_{part}{suffix}"
            tensor = _present(weights, name, kind)
            _check_shape(name, tensor, (gates, columns), config)
            if storage == "int8":
                q, scale = _int8(name, tensor)
                int8[name] = (q, scale)
                floats[name] = q.astype(np.float32) * scale[:, None]
            else:
                floats[name] = _float16(name, tensor)
        for part in ("ih", "hh"):
            name = f"bias_{part}{suffix}"
            bias = biases.get(name)
            if config["bias"]:
                if bias is None:
                    raise ValueError(f"the quantized {kind} has bias=True but no packed {name}")
                _check_shape(name, bias, (gates,), config)
                floats[name] = np.array(_numpy(bias), dtype=np.float32)
            elif kind == "LSTMCell" and bias is not None:
                # torch adds a packed bias whatever the flag says: the weights would lie.
                raise ValueError(f"the quantized LSTMCell has bias=False but its packed "
                                 f"weights hold {name}, which torch adds")
    return QuantizedWeights(kind=kind, config=config, dtype=storage, floats=floats, int8=int8)


def _kind(module: Any) -> str:
    """``"LSTM"`` or ``"LSTMCell"``, from torch's classes if torch has loaded them."""
    package = sys.modules.get(_PACKAGE)
    if package is not None:
        for kind in _KINDS:
            cls = getattr(package, kind, None)
            if isinstance(cls, type) and isinstance(module, cls):
                return kind
    cls = type(module)
    raise TypeError(f"quantized_weights() reads {_PACKAGE}.LSTM or {_PACKAGE}.LSTMCell "
                    f"(from torch.ao.quantization.quantize_dynamic), not "
                    f"{cls.__module__}.{cls.__qualname__}")


def _config(module: Any, kind: str) -> Dict[str, Any]:
    if kind == "LSTMCell":
        return {"input_size": int(module.input_size), "hidden_size": int(module.hidden_size),
                "bias": bool(module.bias)}
    return {"input_size": int(module.input_size), "hidden_size": int(module.hidden_size),
            "num_layers": int(module.num_layers), "bias": bool(module.bias),
            "batch_first": bool(module.batch_first), "bidirectional": bool(module.bidirectional),
            "proj_size": int(getattr(module, "proj_size", 0))}


def _storage(module: Any, kind: str) -> str:
    """``"int8"`` or ``"float16"``: the dtype the module was quantized to."""
    dtype = module.weight_dtype if kind == "LSTMCell" else module.dtype
    storage = _STORAGE.get(str(dtype))
    if storage is None:
        raise ValueError(f"the quantized {kind} stores its weights as {dtype}, not "
                         "torch.qint8 or torch.float16")
    return storage


def _groups(kind: str, config: Dict[str, Any]) -> List[Tuple[str, int]]:
    """``(name suffix, input features)`` of each layer and direction, in state_dict order."""
    if kind == "LSTMCell":
        return [("", config["input_size"])]
    directions = 2 if config["bidirectional"] else 1
    return [(f"_l{layer}{'_reverse' if d else ''}",
             config["input_size"] if layer == 0 else directions * config["hidden_size"])
            for layer in range(config["num_layers"]) for d in range(directions)]


def _present(weights: Dict[str, Any], name: str, kind: str) -> Any:
    tensor = weights.get(name)
    if tensor is None:
        raise ValueError(f"the quantized {kind} has no packed {name} (it has "
                         f"{', '.join(sorted(weights)) or 'none'})")
    return tensor


def _check_shape(name: str, tensor: Any, expected: Tuple[int, ...],
                 config: Dict[str, Any]) -> None:
    shape = tuple(int(d) for d in tensor.shape)
    if shape == expected:
        return
    hint = ""
    if name.startswith("weight_hh") and shape[:1] == expected[:1]:
        hint = (f" (hidden_size is {config['hidden_size']}: torch's dynamic quantization drops "
                "the projection of an LSTM with proj_size > 0, pytorch#60008, and builds a "
                "module that cannot run)")
    raise ValueError(f"{name} has shape {shape}, expected {expected}{hint}")


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _float16(name: str, tensor: Any) -> np.ndarray:
    if getattr(tensor, "is_quantized", False) or str(tensor.dtype) != "torch.float32":
        raise ValueError(f"{name} is {tensor.dtype}, not the float32 unpacking of float16 "
                         "weights that a float16 quantized module holds")
    return np.array(_numpy(tensor), dtype=np.float32)


def _int8(name: str, tensor: Any) -> Tuple[np.ndarray, np.ndarray]:
    """``(q, scale)`` of a symmetric qint8 weight, per tensor or per output row."""
    if not getattr(tensor, "is_quantized", False) or str(tensor.dtype) != "torch.qint8":
        raise ValueError(f"{name} is {tensor.dtype}, not torch.qint8")
    scheme = str(tensor.qscheme()).rpartition(".")[2]
    rows = int(tensor.shape[0])
    if scheme in ("per_tensor_affine", "per_tensor_symmetric"):
        scale = np.array([tensor.q_scale()], dtype=np.float32)
        zero_points = np.array([tensor.q_zero_point()])
    elif scheme in ("per_channel_affine", "per_channel_symmetric"):
        axis = int(tensor.q_per_channel_axis())
        if axis != 0:
            raise ValueError(f"{name} is quantized per channel along axis {axis}: only per "
                             "output row (axis 0) or per tensor can be represented")
        # torch holds float64 scales but packs them as float32: the cast is exact.
        scale = np.array(_numpy(tensor.q_per_channel_scales()), dtype=np.float32)
        zero_points = _numpy(tensor.q_per_channel_zero_points())
    else:
        raise ValueError(f"{name} is quantized with qscheme {scheme}: only per-tensor or "
                         "per-channel (axis 0) symmetric int8 can be represented")
    if np.any(zero_points != 0):
        nonzero = sorted({int(z) for z in np.ravel(zero_points) if z != 0})
        raise ValueError(f"{name} is quantized with nonzero zero points {nonzero[:8]}: only "
                         "symmetric int8 weights (zero point 0) can be represented; quantize "
                         "with a symmetric observer (torch.ao.quantization."
                         "default_dynamic_qconfig or per_channel_dynamic_qconfig)")
    if scale.shape not in ((1,), (rows,)) or not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(f"{name} has invalid scales (shape {scale.shape}): expected positive "
                         f"finite float32 of shape (1,) or ({rows},)")
    q = np.array(_numpy(tensor.int_repr()), dtype=np.int8)
    return q, scale


def dynamic_kind(module: Any) -> "str | None":
    """``"LSTM"`` or ``"LSTMCell"`` for torch's dynamically quantized modules, else None."""
    try:
        return _kind(module)
    except TypeError:
        return None
