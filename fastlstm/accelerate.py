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
import sys
import threading
import warnings
from typing import Any, Dict, List, Optional, Tuple

from fastlstm._common import type_label
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
    # From __dict__: a name nn.Module lacks costs its __getattr__ an exception (1 us).
    names = module.__dict__.get("_flat_weights_names")  # LSTM
    if names is None:  # LSTMCell
        names = _CELL_WEIGHTS if module.bias else _CELL_WEIGHTS[:2]
    params = []
    for name in names:
        p = own.get(name)
        if p is None:
            return None
        params.append(p)
    return params


# Every call of an accelerated module runs these checks (a few us at most: a decoder's
# LSTMCell step of H = 32 costs torch 14 us); those of the weights run only when the
# fastlstm module is made again for new weights.

def _mode_reason(module: Any, torch: Any) -> Optional[str]:
    """Why torch's own forward must serve a call in this mode, or None."""
    if module.training and torch.is_grad_enabled():
        return "training mode with autograd on"
    if module.training and module.__dict__.get("dropout") and module.num_layers > 1:
        return "dropout in training mode"
    if torch._C._get_tracing_state():  # a torch.jit trace would keep the output as a constant
        return "torch.jit tracing"
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:  # dual tensors' tangents
        return "forward-mode automatic differentiation"
    if torch.is_autocast_enabled("cpu"):  # torch's forward gives the autocast dtype
        return "autocast"
    functorch = getattr(torch._C, "_functorch", None)
    # Under a torch.func transform (grad, vmap, ...) the tensors are its wrappers, with no
    # data of their own to hand to fastlstm.
    if functorch is not None and functorch.peek_interpreter_stack() is not None:
        return "a torch.func transform"
    return None


def _input_reason(tensors: Tuple[Any, ...], params: List[Any], torch: Any) -> Optional[str]:
    """Why torch's own forward must serve these inputs and states, or None."""
    plain = (torch.Tensor, torch.nn.Parameter)
    grad = torch.is_grad_enabled()
    for i, t in enumerate(tensors):
        kind = type(t)
        if kind not in plain:
            if not isinstance(t, torch.Tensor):
                if i == 0:  # a list, ...: torch's forward says
                    return f"an input of type {kind.__name__}"
                continue
            # A subclass (FakeTensor and FunctionalTensor of torch.export, a user's) has
            # no data of its own to hand to fastlstm, or must stay what it is.
            return f"a {kind.__name__} (a tensor subclass or wrapper)"
        if not t.is_cpu:
            return f"a tensor on {t.device}"
        if t.dtype is not torch.float32 and t.dtype is not torch.float64:
            return f"a {t.dtype} tensor"
        if t.dtype is not params[0].dtype:  # torch's forward raises its error
            return f"a {t.dtype} tensor with {params[0].dtype} weights"
        if grad and t.requires_grad:
            return "an input that requires grad"
    return None


def _param_reason(module: Any, params: List[Any], torch: Any) -> Optional[str]:
    """Why torch's own forward must serve calls with these weights, or None."""
    plain = (torch.Tensor, torch.nn.Parameter)
    for p in params:
        if type(p) not in plain:
            return f"a {type(p).__name__} (a tensor subclass or wrapper)"
        if not p.is_cpu or p.dtype not in (torch.float32, torch.float64):
            return "weights that are not float32 or float64 on the CPU"
        if p.is_inference():  # no version counter: an edit would not show
            return "weights that are inference tensors (made in torch.inference_mode)"
    if module.__dict__.get("_fastlstm_weight_dtype") is not None and any(
            p.dtype != torch.float32 for p in params):
        return "reduced-precision weights of a float64 module (they need float32)"
    return None


def _key(module: Any, params: List[Any]) -> Tuple[Any, ...]:
    """What the fastlstm module was made from: each weight's identity, data, version and
    dtype, and the constructor arguments."""
    d = module.__dict__
    # The type too: torch.utils.swap_tensors can make a Parameter a subclass in place.
    return (tuple([(id(p), type(p), p.data_ptr(), p._version, p.dtype) for p in params]),
            tuple([d.get(name) for name in _CONFIG]))  # not getattr: torch's raises inside


def _cached(module: Any, params: List[Any]) -> Any:
    """The fastlstm module made for ``module``'s current weights and arguments, or None."""
    cached = module.__dict__.get("_fastlstm_cache")
    if cached is None:
        return None
    try:
        key = _key(module, params)
    except RuntimeError:  # an inference tensor has no version: _param_reason refuses it
        return None
    # The cache holds the Parameters and their data (strong references: torch's
    # swap_tensors refuses tensors with weak ones), so that neither a new Parameter nor
    # new data (``p.data = t``) can be made at the address of what the key names.
    if cached[0] != key:
        return None
    for held, p in zip(cached[1], params):
        if held is not p:
            return None
    return cached[3]


def _fast_module(module: Any, kind: str, params: List[Any]) -> Any:
    """The fastlstm module with ``module``'s current weights and arguments, made again
    when they changed (``load_state_dict``, an optimizer step, ``.double()``, a new
    Parameter: each changes a tensor's version, storage or identity)."""
    fast = _cached(module, params)
    if fast is not None:
        return fast
    key = _key(module, params)
    with warnings.catch_warnings():  # torch warned of the module's dropout when it was made
        warnings.simplefilter("ignore", UserWarning)
        made: Any = (LSTM if kind == "LSTM" else LSTMCell).from_torch(module)
    weight_dtype = module.__dict__.get("_fastlstm_weight_dtype")
    if weight_dtype is not None:
        made = quantize(made, weight_dtype)
    module.__dict__["_fastlstm_cache"] = (key, list(params), [p.detach() for p in params],
                                          made)
    return made


def _serve(module: Any, kind: str, tensors: Tuple[Any, ...]) -> Any:
    """The fastlstm module to run this call, or None: torch's forward serves it."""
    torch = sys.modules["torch"]
    params = _parameters(module)
    if (params is None or _mode_reason(module, torch) is not None
            or _input_reason(tensors, params, torch) is not None):
        return None
    fast = _cached(module, params)
    if fast is None:
        if _param_reason(module, params, torch) is not None:
            return None
        fast = _fast_module(module, kind, params)
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
                fast = _serve(self, "LSTM", (data, *hx) if hx is not None else (data,))
                if fast is None:
                    return super().forward(input, hx)
                if not torch.is_grad_enabled():  # no_grad's context costs 1 us a call
                    return fast(input, hx)
                with torch.no_grad():
                    return fast(input, hx)

            def _get_name(self) -> str:  # the repr of the module it replaces
                return "LSTM"

        class AcceleratedLSTMCell(_WithoutCache, torch.nn.LSTMCell):
            """torch.nn.LSTMCell whose forward runs fastlstm (see fastlstm.accelerate)."""

            def forward(self, input: Any, hx: Any = None) -> Any:
                if hx is not None and not isinstance(hx, (tuple, list)):
                    return super().forward(input, hx)  # torch's error for a bare tensor
                fast = _serve(self, "LSTMCell", (input, *hx) if hx is not None else (input,))
                if fast is None:
                    return super().forward(input, hx)
                if not torch.is_grad_enabled():  # no_grad's context costs 1 us a call
                    return fast(input, hx)
                with torch.no_grad():
                    return fast(input, hx)

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
        hint = (" (a fastlstm module runs on fastlstm already; fastlstm.quantize(module, "
                "dtype) stores its weights in reduced precision)"
                if isinstance(model, (LSTM, LSTMCell)) else "")
        raise TypeError(f"accelerate expects a torch.nn.Module, got {type_label(model)}{hint}")
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
