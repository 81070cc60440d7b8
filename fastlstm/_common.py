"""Helpers shared by the modules: dtypes, devices, torch interop without torch."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))
_TORCH_NAMES = {"torch.float32": np.float32, "torch.float64": np.float64}


def resolve_dtype(dtype: Any) -> np.dtype:
    """Map None, numpy dtypes, their names or torch.float32/float64 to a numpy dtype."""
    if dtype is None:
        return np.dtype(np.float32)
    if str(dtype) in _TORCH_NAMES:
        return np.dtype(_TORCH_NAMES[str(dtype)])
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved not in _SUPPORTED:
        raise TypeError(f"fastlstm supports dtype float32 and float64, got {dtype!r}")
    return resolved


def check_device(device: Any) -> None:
    """Accept None, "cpu", "cpu:0" and torch.device("cpu"); refuse any other device."""
    if device is None:
        return
    name = str(device)
    if name in ("cpu", "cpu:0"):
        return
    raise cpu_only_error(device)


def cpu_only_error(device: Any) -> ValueError:
    """The error for any device but the CPU."""
    return ValueError(
        f"fastlstm runs on the CPU only: device must be None or 'cpu', got {device!r}"
    )


def type_label(obj: Any) -> str:
    """``obj``'s class with its module (``torch.nn.modules.rnn.LSTM``): a torch LSTM and a
    fastlstm LSTM share their name."""
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def wrong_module(who: str, wanted: str, obj: Any) -> TypeError:
    """The TypeError of a fastlstm function given another object than a fastlstm module,
    saying how to make one from a torch LSTM or LSTMCell."""
    label = type_label(obj)
    torch = sys.modules.get("torch")
    hint = ""
    for name in ("LSTM", "LSTMCell"):
        if torch is not None and isinstance(obj, getattr(torch.nn, name)):
            hint = (f"; make one with fastlstm.{name}.from_torch(module), or run the torch "
                    "model on fastlstm with fastlstm.accelerate(model)")
            break
    return TypeError(f"{who} expects {wanted}, got {label}{hint}")


def check_torch_module(module: Any, class_name: str) -> np.dtype:
    """Refuse anything but a ``torch.nn.<class_name>`` (or a subclass) in ``from_torch``;
    return the fastlstm dtype of its weights (float64 stays float64, other floats float32).

    The type is checked, not attributes: a GRU or an RNN has an LSTM's attributes and
    would fail later with a misleading size mismatch.
    """
    torch = sys.modules.get("torch")  # a torch module exists only if torch is imported
    cls = getattr(getattr(torch, "nn", None), class_name, None)
    if cls is None or not isinstance(module, cls):
        raise TypeError(f"from_torch expects a torch.nn.{class_name}, got "
                        f"{type(module).__name__}")
    weight = next(iter(module.parameters()))
    return np.dtype(np.float64 if str(weight.dtype) == "torch.float64" else np.float32)


def torch_dtype(dtype: np.dtype) -> Any:
    """torch's dtype of a module's (float32 or float64) parameters; torch must be imported."""
    torch = sys.modules["torch"]
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def is_torch_tensor(obj: Any) -> bool:
    """True for a torch.Tensor, decided without importing torch."""
    if type(obj) is np.ndarray:  # the common case, first
        return False
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def to_numpy(obj: Any) -> np.ndarray:
    """An ndarray view or copy of ``obj`` (array-like or torch tensor on any device)."""
    if type(obj) is np.ndarray:
        return obj
    if is_torch_tensor(obj):
        tensor = obj.detach().cpu()
        if tensor.is_floating_point() and tensor.element_size() < 4:
            # numpy has no bfloat16 or float8; every half and 8-bit float is exact in float32.
            tensor = tensor.float()
        elif tensor.is_complex() and tensor.element_size() < 8:
            tensor = tensor.to(sys.modules["torch"].complex64)  # complex32: numpy has none
        try:
            return tensor.numpy()
        except RuntimeError:  # a lazily negated or conjugated view (x.conj().imag)
            return tensor.resolve_conj().resolve_neg().numpy()
    return np.asarray(obj)


def _cpu_dense(tensor: Any, who: str, name: str) -> Any:
    """``tensor`` as a dense CPU tensor, or torch's error type where none is to be had:
    on another device (rather than copying it to the host behind the user's back),
    MKL-DNN or quantized.  A sparse tensor is made dense, as torch's cell takes one."""
    torch = sys.modules["torch"]
    if tensor.device.type != "cpu":
        if name == "input":
            raise RuntimeError("Input and parameter tensors are not at the same device, found "
                               f"input tensor at {tensor.device} and parameter tensor at cpu")
        raise RuntimeError("Input and hidden tensors are not at the same device, found "
                           f"input tensor at cpu and hidden tensor at {tensor.device}")
    if tensor.layout is torch._mkldnn:
        raise NotImplementedError(f"{who}: an MKL-DNN tensor is not supported; convert it "
                                  "with .to_dense()")
    if tensor.is_quantized:
        raise NotImplementedError(f"{who}: a quantized tensor is not supported; convert it "
                                  "with .dequantize()")
    return tensor if tensor.layout is torch.strided else tensor.to_dense()


def c_array(a: Any, dtype: Any) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype`` whose elements are aligned (what the
    kernels read; ``np.ascontiguousarray`` leaves a misaligned buffer as it is), copied
    only if it is not one already (not ``np.require``: 15 times the cost of a call of a
    one-step cell)."""
    out = np.ascontiguousarray(a, dtype=dtype)
    return out if out.flags.aligned else out.copy()


def input_array(obj: Any, who: str, name: str = "input") -> np.ndarray:
    """``to_numpy(obj)`` for a module's input, refusing objects that are no array of numbers.

    ``None`` or a string would otherwise become a 0-D object or string array and be
    reported as a wrong number of dimensions.  Arrays and tensors of any dtype pass:
    their dtype is checked against the weights' later, with torch's message.
    """
    if is_torch_tensor(obj):
        obj = _cpu_dense(obj, who, name)
    try:
        x = to_numpy(obj)
    except ValueError as exc:  # a ragged nested list: numpy's words, and whose input it was
        raise ValueError(f"{who}: {name} must be a rectangular array of numbers: "
                         f"{str(exc).splitlines()[0]}") from None
    if x.dtype.kind not in "fiub" and not isinstance(obj, np.ndarray) and not is_torch_tensor(obj):
        what = type(obj).__name__
        if x.ndim:
            what += f" (of {x.dtype} elements)"
        raise TypeError(f"{who}: {name} must be an array of floats (an ndarray, a torch.Tensor "
                        f"or a nested sequence of numbers), got {what}")
    return x


def dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


def freeze(array: np.ndarray) -> np.ndarray:
    """Mark an array owned by a module as read-only and return it."""
    array.flags.writeable = False
    return array


def _dtype_like(obj: Any) -> bool:
    """Whether a positional argument of ``to`` names a dtype (else a device)."""
    if isinstance(obj, (np.dtype, type)):
        return True
    if type(obj).__name__ == "dtype" and type(obj).__module__ == "torch":
        return True
    if isinstance(obj, str):
        try:
            np.dtype(obj)
        except TypeError:
            return False
        return True
    return False


def to_arguments(args: Any, kwargs: Any) -> Any:
    """``(device, dtype)`` from the arguments of torch's ``to`` in any of its forms:
    ``to(device=None, dtype=None, non_blocking=False)``, ``to(dtype, non_blocking=False)``
    and ``to(tensor, non_blocking=False)`` (the tensor's or array's dtype and device).
    ``memory_format`` is accepted; ``copy`` is refused with torch's error."""
    unknown = sorted(set(kwargs) - {"device", "dtype", "non_blocking", "memory_format"})
    if "copy" in kwargs:
        raise RuntimeError(".to() does not accept copy argument")  # torch's words
    if unknown:
        raise TypeError(f"to() got an unexpected keyword argument '{unknown[0]}'")
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    rest = list(args)
    if rest:
        first = rest.pop(0)
        if isinstance(first, np.ndarray) or is_torch_tensor(first):
            dtype, device = first.dtype, getattr(first, "device", None)
        elif _dtype_like(first):
            dtype = first
        else:
            device = first
            if rest and not isinstance(rest[0], bool):
                dtype = rest.pop(0)
    if rest and isinstance(rest[0], bool):
        rest.pop(0)  # non_blocking
        if rest and isinstance(rest[0], bool):
            raise RuntimeError(".to() does not accept copy argument")
    if rest:
        raise TypeError(f"to() received an invalid combination of arguments: got "
                        f"{len(args)} positional arguments, expected a device, a dtype "
                        "or a tensor, then non_blocking")
    return device, dtype
