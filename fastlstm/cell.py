"""``fastlstm.LSTMCell``: a ``torch.nn.LSTMCell``-compatible cell for CPU inference."""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any, List, Optional, Tuple, Type, TypeVar

import numpy as np

from fastlstm._common import (
    c_array,
    check_device,
    check_torch_module,
    dtype_name,
    input_array,
    is_torch_tensor,
    torch_dtype,
)
from fastlstm._ext import kernels
from fastlstm._module import (
    ArrayLike,
    RngLike,
    _Module,
    _PackedLayer,
    check_rows,
    check_sizes,
    pack_layer,
    zero_state_skips,
    zeros_written,
)
from fastlstm._threads import get_num_threads
from fastlstm.io.state_dict import cell_shapes
from fastlstm.io.torch_quantized import dynamic_kind

__all__ = ["LSTMCell"]

_C = TypeVar("_C", bound="LSTMCell")



class LSTMCell(_Module):
    r"""One LSTM step, a drop-in for ``torch.nn.LSTMCell``.

    .. math::
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' = f \odot c + i \odot g \\
        h' = o \odot \tanh(c')

    Parameters
    ----------
    input_size : int
        Number of features of the input ``x``.
    hidden_size : int
        Number of features of ``h`` and ``c``.
    bias : bool, default=True
        If False, the cell has no ``bias_ih``/``bias_hh``.
    device : None or "cpu", default=None
        Accepted for compatibility; fastlstm runs on the CPU only.
    dtype : {None, "float32", "float64"} or numpy dtype, default=None (float32)
        Precision of the parameters and of the computation.
    rng : None, int or numpy.random.Generator, keyword-only
        Source of the initial parameters, drawn from
        :math:`\mathcal{U}(-1/\sqrt{H}, 1/\sqrt{H})` as in torch.

    Attributes
    ----------
    weight_ih : ndarray of shape (4*hidden_size, input_size)
    weight_hh : ndarray of shape (4*hidden_size, hidden_size)
    bias_ih, bias_hh : ndarray of shape (4*hidden_size,)
        Read-only, gates in the order i, f, g, o; assign new arrays or use
        :meth:`load_state_dict` to change them.

    Notes
    -----
    The kernels are the fused step of :class:`fastlstm.LSTM` (one timestep),
    with the weights packed once.  Constructor arguments are checked like
    ``torch.nn.LSTM``'s (``torch.nn.LSTMCell`` itself does not check them).

    Examples
    --------
    >>> import numpy as np
    >>> import fastlstm
    >>> cell = fastlstm.LSTMCell(10, 20, rng=0)
    >>> x = np.zeros((3, 10), dtype=np.float32)
    >>> h, c = cell(x)
    >>> h.shape, c.shape
    ((3, 20), (3, 20))
    """

    _kind = "LSTMCell"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        rng: RngLike = None,
    ) -> None:
        check_sizes(input_size, hidden_size)
        check_device(device)
        d = self.__dict__
        d["_input_size"] = input_size
        d["_hidden_size"] = hidden_size
        d["_bias"] = bool(bias)  # torch's cell takes any value, by its truth (LSTM: a bool)
        self._init_module(dtype, rng)

    def _parameter_shapes(self) -> "OrderedDict[str, Tuple[int, ...]]":
        return cell_shapes(self._input_size, self._hidden_size, self._bias)

    def _pack(self) -> List[_PackedLayer]:
        p = self._params
        bias = [p["bias_ih"] + p["bias_hh"]] if self._bias else None
        w = self._pack_weight
        return [pack_layer([w("weight_ih")], [w("weight_hh")], bias, None,
                           self._hidden_size, self._dtype, self.__dict__.get("_weight_dtype"))]

    def extra_repr(self) -> str:
        """The arguments that ``repr`` shows between the parentheses, as torch's
        ``extra_repr``: the sizes, then the arguments that differ from their defaults.

        Returns
        -------
        str

        Examples
        --------
        >>> import fastlstm
        >>> fastlstm.LSTMCell(8, 16, bias=False).extra_repr()
        '8, 16, bias=False'
        """
        s = f"{self._input_size}, {self._hidden_size}"
        if not self._bias:
            s += ", bias=False"
        if self._dtype != np.float32:
            s += f", dtype={dtype_name(self._dtype)}"
        if self.__dict__.get("_weight_dtype"):
            s += f", weight_dtype={self.weight_dtype!r}"
        return s

    # ------------------------------------------------------------ torch interop
    @classmethod
    def from_torch(cls: Type[_C], module: Any, *, dtype: Any = None) -> _C:
        """Build an equivalent cell from a ``torch.nn.LSTMCell`` (config and weights).

        Parameters
        ----------
        module : torch.nn.LSTMCell or torch.ao.nn.quantized.dynamic.LSTMCell
            Any device; its configuration and weights are copied.  torch's
            dynamically quantized form (``quantize_dynamic``) gives a float32
            module: with int8 weights, torch's int8 values and scales as they are
            (``weight_dtype == "int8"``; docs/precision.md), or with float16
            weights, their values in float32.
        dtype : None or dtype, optional
            Defaults to the module's dtype (float64 stays float64, other float
            types become float32).

        Returns
        -------
        LSTMCell

        Examples
        --------
        >>> import numpy as np
        >>> import torch
        >>> import fastlstm
        >>> torch_cell = torch.nn.LSTMCell(10, 20)
        >>> cell = fastlstm.LSTMCell.from_torch(torch_cell)
        >>> x = np.ones((3, 10), dtype=np.float32)              # (N, input_size)
        >>> with torch.no_grad():
        ...     expected, _ = torch_cell(torch.from_numpy(x))
        >>> bool(np.abs(cell(x)[0] - expected.numpy()).max() < 1e-5)
        True
        """
        quantized = dynamic_kind(module)
        if quantized is not None:
            return cls._from_torch_quantized(module, quantized, dtype)
        weights_dtype = check_torch_module(module, "LSTMCell")
        if dtype is None:
            dtype = weights_dtype
        bias = getattr(module, "bias", module.bias_ih is not None)
        new = cls(module.input_size, module.hidden_size, bias=bool(bias), dtype=dtype)
        new.load_state_dict(module.state_dict())
        return new

    def to_torch(self) -> Any:
        """Return an equivalent ``torch.nn.LSTMCell`` (imports torch, only here).

        Returns
        -------
        torch.nn.LSTMCell
            Same sizes, bias, dtype and weights.

        Examples
        --------
        >>> import torch
        >>> import fastlstm
        >>> torch_cell = fastlstm.LSTMCell(10, 20, rng=0).to_torch()
        >>> torch_cell
        LSTMCell(10, 20)
        >>> tuple(torch_cell.weight_hh.shape)
        (80, 20)
        """
        import torch

        tdtype = torch_dtype(self._dtype)
        module = torch.nn.LSTMCell(self._input_size, self._hidden_size, bias=self._bias,
                                   dtype=tdtype)
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._params.items()})
        return module

    # ----------------------------------------------------------------- forward
    def forward(
        self, input: ArrayLike, hx: Optional[Tuple[ArrayLike, ArrayLike]] = None
    ) -> Tuple[Any, Any]:
        """One step: ``(h', c')`` from the input and the previous state.

        Parameters
        ----------
        input : array-like of shape (N, input_size) or (input_size,)
        hx : tuple (h, c) of arrays of shape (N, hidden_size) or (hidden_size,), optional
            Zeros when omitted.

        Returns
        -------
        (h', c') : tuple of ndarray, shaped like ``h`` (torch tensors when the
            input was one).

        Raises
        ------
        ValueError
            Input or states that are not 1-D or 2-D.
        RuntimeError
            Sizes that do not match the cell or each other, as torch; non-floating
            input or states.

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> cell = fastlstm.LSTMCell(10, 20, rng=0)
        >>> x = np.ones((3, 10), dtype=np.float32)              # (N, input_size)
        >>> h, c = cell(x)                                      # zero initial state
        >>> h, c = cell(x, (h, c))
        >>> h.shape, c.shape
        ((3, 20), (3, 20))
        >>> [a.shape for a in cell(x[0], (h[0], c[0]))]        # unbatched
        [(20,), (20,)]
        """
        if type(input) is np.ndarray:
            result = self._one_step(input, hx, 0)
            if result is not None:
                return result
        tensor_in = is_torch_tensor(input)
        x = input_array(input, "LSTMCell")
        if x.ndim not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {x.ndim}D instead")
        states = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError("LSTMCell: hx must be a tuple (h, c) of two arrays")
            tensor_in = tensor_in or is_torch_tensor(hx[0])
            states = [input_array(v, "LSTMCell", f"hx[{i}]") for i, v in enumerate(hx)]
            for idx, value in enumerate(states):
                if value.ndim not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.ndim}D instead"
                    )
        batched = x.ndim == 2
        if not batched:
            x = x[None, :]
            if states is not None:
                states = [v[None, ...] for v in states]
        # torch's order: the input's size, each state's batch and size, then (in its
        # matrix products) the dtypes.
        if x.shape[1] != self._input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {x.shape[1]} "
                f"expected {self._input_size}"
            )
        for idx, value in enumerate(states or ()):
            if value.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"Input batch size {x.shape[0]} doesn't match hidden{idx} "
                    f"batch size {value.shape[0]}"
                )
            if value.ndim == 1:
                raise IndexError("Dimension out of range (expected to be in range of [-1, 0], "
                                 "but got 1)")
            if value.shape[1] != self._hidden_size:
                raise RuntimeError(
                    f"hidden{idx} has inconsistent hidden_size: got {value.shape[1]}, "
                    f"expected {self._hidden_size}"
                )
        for idx, value in enumerate(states or ()):
            if value.ndim != 2:
                # A 2-D state of unbatched input: torch goes on and fails in its
                # products, crashes, or broadcasts c into a result of the wrong shape.
                raise RuntimeError(
                    f"LSTMCell: Expected hx[{idx}] of shape ({self._hidden_size},) for "
                    f"unbatched 1D input, got shape {value.shape[1:]}"
                )
        if x.dtype.kind != "f":
            # torch fails in its matrix product, with a RuntimeError.
            raise RuntimeError(
                f"LSTMCell input dtype ({x.dtype}) does not match weight dtype ({self._dtype}). "
                f"Convert input: input.astype({self._dtype})"
            )
        for idx, value in enumerate(states or ()):
            if value.dtype.kind != "f":
                raise RuntimeError(
                    f"hx[{idx}] dtype ({value.dtype}) does not match weight dtype "
                    f"({self._dtype})"
                )
        h, c = self._step(x, states)
        if not batched:
            h, c = h[0], c[0]
        if tensor_in:
            torch = sys.modules["torch"]
            h, c = torch.from_numpy(h), torch.from_numpy(c)
        return h, c

    __call__ = kernels.module_call  # forward, the one-step path in C; see _Module.__init_subclass__

    def _call_layout(self) -> Tuple[int, bool]:
        return 0, False

    def _step(self, x: np.ndarray, states: Optional[List[np.ndarray]]) -> Tuple[np.ndarray,
                                                                                   np.ndarray]:
        """Run the fused step kernel on validated 2-D arrays."""
        layers, stack = self._bound_pair()  # the dtype of the layers run (see LSTM._run)
        dt = layers[0].bias.dtype
        batch, hidden = x.shape[0], self._hidden_size
        if batch == 0:
            return np.zeros((0, hidden), dt), np.zeros((0, hidden), dt)
        check_rows(batch, "rows")
        x = c_array(x, dt)
        h = np.empty((batch, hidden), dt)
        h0_zero = states is None and zero_state_skips(layers)
        if states is None:
            # Not read when the step skips its recurrent product.
            h0 = h if h0_zero else np.zeros((batch, hidden), dt)
            c = zeros_written((batch, hidden), dt)
        else:
            h0 = c_array(states[0], dt)
            c = np.array(states[1], dtype=dt, order="C", copy=True)  # updated in place
        kernels.cell_step(stack, 0, x, h0, c, h, get_num_threads(), h0_zero, stack.next_order())
        return h, c
