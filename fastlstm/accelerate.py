"""``fastlstm.accelerate``: a torch model whose LSTMs run on fastlstm, in one line.

Every ``torch.nn.LSTM`` and ``torch.nn.LSTMCell`` inside the model becomes an instance of a
subclass of its own class whose ``forward`` runs fastlstm on the CPU tensors (NumPy views of
them, the results wrapped back as tensors: no copies) and falls back to torch's own
``forward`` for what fastlstm does not serve (docs/interop.md).  Being subclasses, they keep
the parameters, ``state_dict`` keys, hooks, ``repr`` and ``isinstance`` checks of the
originals.  torch is imported here only, when called.
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Any, Dict, List, Optional, Tuple, cast

from fastlstm.cell import LSTMCell
from fastlstm.lstm import LSTM
from fastlstm.quantization import quantize

__all__ = ["accelerate"]

_CLASSES: Dict[str, Any] = {}
_LOCK = threading.Lock()


#: The constructor arguments a module's forward reads (fastlstm's module is rebuilt when
#: one changes); those an LSTMCell lacks read as None.
_CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
           "bidirectional", "proj_size")


_CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _parameters(module: Any) -> Optional[List[Any]]:
    """The parameters torch's forward reads, in order, or None when one of them is not a
    parameter of its own (pruning, weight norm: torch computes it at each call).  An LSTM
    or LSTMCell has no submodules: ``_parameters`` holds them all, faster to read than
    ``parameters()``."""
    own = module._parameters
    names = getattr(module, "_flat_weights_names", None)  # LSTM
    if names is None:  # LSTMCell
        names = _CELL_WEIGHTS if module.bias else _CELL_WEIGHTS[:2]
    params = [own.get(name) for name in names]
    return None if any(p is None for p in params) else params


def _fallback_reason(module: Any, tensors: Tuple[Any, ...],
                     params: Optional[List[Any]]) -> Optional[str]:
    """Why fastlstm cannot serve this call (torch's forward runs then), or None."""
    import torch

    if module.training and torch.is_grad_enabled():
        return "training mode with autograd on"
    if module.training and module.__dict__.get("dropout") and module.num_layers > 1:
        return "dropout in training mode"
    if torch.jit.is_tracing():  # a trace would keep fastlstm's output as a constant
        return "torch.jit tracing"
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:  # dual tensors' tangents
        return "forward-mode automatic differentiation"
    if torch.is_autocast_enabled("cpu"):  # torch's forward gives the autocast dtype
        return "autocast"
    if params is None:
        return "weights computed from other parameters (pruning, weight norm)"
    if not isinstance(tensors[0], torch.Tensor):  # a list, ...: torch's forward says
        return f"an input of type {type(tensors[0]).__name__}"
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor",
                      lambda t: False)
    # A subclass (FakeTensor and FunctionalTensor of torch.export, a user's) or a torch.func
    # wrapper has no data of its own to hand to fastlstm, or must stay what it is.
    odd = next((t for t in [*params, *tensors] if isinstance(t, torch.Tensor) and (
        type(t) not in (torch.Tensor, torch.nn.Parameter) or wrapped(t))), None)
    if odd is not None:
        return f"a {type(odd).__name__} (a tensor subclass or wrapper)"
    if any(p.device.type != "cpu" or p.dtype not in (torch.float32, torch.float64)
           for p in params):
        return "weights that are not float32 or float64 on the CPU"
    if any(p.is_inference() for p in params):  # no version counter: an edit would not show
        return "weights that are inference tensors (made in torch.inference_mode)"
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if t.device.type != "cpu":
            return f"a tensor on {t.device}"
        if t.dtype not in (torch.float32, torch.float64):
            return f"a {t.dtype} tensor"
        if params and t.dtype != params[0].dtype:  # torch's forward raises its error
            return f"a {t.dtype} tensor with {params[0].dtype} weights"
        if t.requires_grad and torch.is_grad_enabled():
            return "an input that requires grad"
    if module.__dict__.get("_fastlstm_weight_dtype") is not None and any(
            p.dtype != torch.float32 for p in params):
        return "reduced-precision weights of a float64 module (they need float32)"
    return None


def _fast_module(module: Any, kind: str, params: List[Any]) -> Any:
    """The fastlstm module with ``module``'s current weights and arguments, rebuilt when
    they changed (``load_state_dict``, an optimizer step, ``.double()``, a new Parameter:
    each changes a tensor's version, storage or identity)."""
    key = (tuple((id(p), p.data_ptr(), p._version, p.dtype) for p in params),
           tuple(map(module.__dict__.get, _CONFIG)))  # not getattr: torch's raises inside
    cached = module.__dict__.get("_fastlstm_cache")
    # The cache holds the Parameters and their data (strong references: torch's
    # swap_tensors refuses tensors with weak ones), so that neither a new Parameter nor
    # new data (``p.data = t``) can be made at the address of what the key names.
    if cached is not None and cached[0] == key and all(
            held is p for held, p in zip(cached[1], params)):
        return cached[3]
    with warnings.catch_warnings():  # torch warned of the module's dropout when it was made
        warnings.simplefilter("ignore", UserWarning)
        fast: Any = (LSTM if kind == "LSTM" else LSTMCell).from_torch(module)
    weight_dtype = module.__dict__.get("_fastlstm_weight_dtype")
    if weight_dtype is not None:
        fast = quantize(fast, weight_dtype)
    module.__dict__["_fastlstm_cache"] = (key, list(params), [p.detach() for p in params],
                                          fast)
    return fast


class _WithoutCache:
    """Pickled and copied without the fastlstm module made from the weights: a copy makes
    its own at its first call.  Leaving training mode drops it too: torch's fused
    optimizers (``fused=True``) update the weights without changing their version."""

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop("_fastlstm_cache", None)
        return state

    def train(self, mode: bool = True) -> Any:
        if self.__dict__.get("training") and not mode:
            self.__dict__.pop("_fastlstm_cache", None)
        return super().train(mode)  # type: ignore[misc]


def _classes() -> Dict[str, Any]:
    """The accelerated subclasses of torch's LSTM and LSTMCell, made once."""
    with _LOCK:
        if _CLASSES:
            return _CLASSES
        import torch
        from torch.nn.utils.rnn import PackedSequence

        class AcceleratedLSTM(_WithoutCache, torch.nn.LSTM):
            """torch.nn.LSTM whose forward runs fastlstm (see fastlstm.accelerate)."""

            def forward(self, input: Any, hx: Any = None) -> Any:
                data = input.data if isinstance(input, PackedSequence) else input
                if hx is not None and not isinstance(hx, (tuple, list)):
                    return super().forward(input, hx)  # torch's error for a bare tensor
                tensors = (data,) + (tuple(hx) if hx is not None else ())
                params = _parameters(self)
                if _fallback_reason(self, tensors, params) is not None:
                    return super().forward(input, hx)
                with torch.no_grad():
                    return _fast_module(self, "LSTM", cast(List[Any], params))(input, hx)

            def _get_name(self) -> str:  # the repr of the module it replaces
                return "LSTM"

        class AcceleratedLSTMCell(_WithoutCache, torch.nn.LSTMCell):
            """torch.nn.LSTMCell whose forward runs fastlstm (see fastlstm.accelerate)."""

            def forward(self, input: Any, hx: Any = None) -> Any:
                if hx is not None and not isinstance(hx, (tuple, list)):
                    return super().forward(input, hx)  # torch's error for a bare tensor
                tensors = (input,) + (tuple(hx) if hx is not None else ())
                params = _parameters(self)
                if _fallback_reason(self, tensors, params) is not None:
                    return super().forward(input, hx)
                with torch.no_grad():
                    return _fast_module(self, "LSTMCell", cast(List[Any], params))(input, hx)

            def _get_name(self) -> str:
                return "LSTMCell"

        for cls in (AcceleratedLSTM, AcceleratedLSTMCell):
            # Importable by name (see __getattr__): models holding them pickle.
            cls.__module__, cls.__qualname__ = __name__, cls.__name__
            # torch.compile runs the forward as it is, outside its graph (about 0.25 us a
            # call): dynamo cannot trace fastlstm's NumPy code (its guards failed under
            # inference_mode).
            cls.forward = torch.compiler.disable(cls.forward)  # type: ignore[method-assign]
        _CLASSES.update(LSTM=AcceleratedLSTM, LSTMCell=AcceleratedLSTMCell)
        return _CLASSES


def __getattr__(name: str) -> Any:
    """``AcceleratedLSTM`` and ``AcceleratedLSTMCell``, made (importing torch) when asked."""
    if name in ("AcceleratedLSTM", "AcceleratedLSTMCell"):
        return _classes()[name[len("Accelerated"):]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _swap(module: Any, classes: Dict[str, Any], weight_dtype: Optional[str]) -> int:
    """Make ``module`` and every LSTM and LSTMCell under it accelerated; how many."""
    import torch

    count = 0
    for m in module.modules():
        for kind, base in (("LSTM", torch.nn.LSTM), ("LSTMCell", torch.nn.LSTMCell)):
            if type(m) is base or type(m) is classes[kind]:
                # The module keeps its state; only the class (the forward) changes.
                m.__class__ = classes[kind]
                m.__dict__["_fastlstm_weight_dtype"] = weight_dtype
                # torch.fx keeps torch.nn modules as leaves of a trace, called at run time:
                # its Tracer.is_leaf_module reads the module's __module__.
                m.__dict__["__module__"] = base.__module__
                m.__dict__.pop("_fastlstm_cache", None)
                count += 1
    return count


def accelerate(model: Any, *, inplace: bool = False, weight_dtype: Optional[str] = None) -> Any:
    """Return ``model`` with every ``torch.nn.LSTM`` and ``torch.nn.LSTMCell`` run by fastlstm.

    Parameters
    ----------
    model : torch.nn.Module
        Any model (or a bare LSTM or LSTMCell).  Subclasses of torch's LSTM classes are
        left alone: their forward may do something else.
    inplace : bool, default=False
        Change ``model`` itself instead of a deep copy of it.
    weight_dtype : {None, "bfloat16", "int8"}, optional
        Run the LSTMs with weights stored in reduced precision (``fastlstm.quantize``;
        docs/precision.md); the torch parameters stay as they are.  float32 LSTMs only:
        a float64 one (``.double()``) runs torch's forward.

    Returns
    -------
    torch.nn.Module
        The model; its LSTMs are instances of subclasses of their classes, with the same
        parameters, ``state_dict`` keys and ``repr``.  Their ``forward`` runs fastlstm on
        CPU float32 or float64 tensors, in eval mode or without autograd, and torch's
        own ``forward`` otherwise (training with autograd on, an input that requires
        grad, tensors on another device or of another dtype).  Outputs computed by
        fastlstm carry no autograd history.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    ValueError
        If ``weight_dtype`` is not None, "bfloat16" or "int8".

    Examples
    --------
    >>> import torch
    >>> import fastlstm
    >>> model = torch.nn.Sequential(torch.nn.LSTM(8, 16, batch_first=True))
    >>> fast = fastlstm.accelerate(model.eval())
    >>> fast
    Sequential(
      (0): LSTM(8, 16, batch_first=True)
    )
    >>> x = torch.randn(2, 5, 8)
    >>> with torch.no_grad():
    ...     bool(torch.allclose(fast(x)[0], model(x)[0], atol=1e-5))
    True
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"accelerate expects a torch.nn.Module, got {type(model).__name__}")
    if weight_dtype not in (None, "bfloat16", "int8"):
        raise ValueError(f"accelerate: weight_dtype must be None, 'bfloat16' or 'int8', got "
                         f"{weight_dtype!r}")
    if not inplace:
        # Outside inference mode the copy's tensors are ordinary ones, with a version
        # counter that shows in-place edits (inference tensors have none).
        with torch.inference_mode(False):
            model = copy.deepcopy(model)
    _swap(model, _classes(), weight_dtype)
    return model
