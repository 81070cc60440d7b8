"""``fastlstm.LSTM``: a ``torch.nn.LSTM``-compatible LSTM for CPU inference."""

from __future__ import annotations

import numbers
import sys
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar

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
    aligned_empty,
    check_rows,
    check_sizes,
    pack_layer,
    workspace_array,
    zero_state_skips,
    zeros_written,
)
from fastlstm._threads import get_num_threads, single_threaded_blas
from fastlstm.io.state_dict import lstm_shapes
from fastlstm.io.torch_quantized import dynamic_kind
from fastlstm.rnn import (
    PackedSequence,
    check_batch_sizes,
    count_greater,
    from_torch_packed,
    is_packed_sequence,
    is_permutation,
)

__all__ = ["LSTM"]

_L = TypeVar("_L", bound="LSTM")


# Constructor arguments shared with torch.nn.LSTM (also its attribute names).
_CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
           "bidirectional", "proj_size")


def _as_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    return int(value)


def _states(hx: Any) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], bool]:
    """``(h_0, c_0, given as tensors)`` from a forward's ``hx`` (None: no states)."""
    if hx is None:
        return None, None, False
    if not isinstance(hx, (tuple, list)) or len(hx) != 2:
        raise TypeError("LSTM: hx must be a tuple (h_0, c_0) of two arrays")
    h, c = (input_array(v, "LSTM", f"hx[{i}]") for i, v in enumerate(hx))
    return h, c, is_torch_tensor(hx[0])


class LSTM(_Module):
    r"""Multi-layer LSTM for inference on CPUs, a drop-in for ``torch.nn.LSTM``.

    Each layer computes, for every element of the input sequence,

    .. math::
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)

    and, with ``proj_size > 0``, :math:`h_t = W_{hr} h_t`.  Arguments, shapes,
    parameter names and layout (gate order i, f, g, o) are those of
    ``torch.nn.LSTM``, so a PyTorch ``state_dict`` loads as it is.

    Parameters
    ----------
    input_size : int
        Number of features of the input ``x``.
    hidden_size : int
        Number of features of the cell state ``c`` (and of ``h`` without projection).
    num_layers : int, default=1
        Number of stacked layers.
    bias : bool, default=True
        If False, the layers have no ``bias_ih``/``bias_hh`` parameters.
    batch_first : bool, default=False
        If True, batched input and output are ``(N, L, features)`` instead of
        ``(L, N, features)``.  States are never batch-first.
    dropout : float, default=0.0
        Dropout probability on the outputs of every layer but the last; applied
        only in training mode (see :meth:`train`).
    bidirectional : bool, default=False
        If True, each layer runs forward and backward and concatenates both.
    proj_size : int, default=0
        If positive, ``h`` is projected to ``proj_size`` features by ``weight_hr``.
    device : None or "cpu", default=None
        Accepted for compatibility; fastlstm runs on the CPU only.
    dtype : {None, "float32", "float64"} or numpy dtype, default=None (float32)
        Precision of the parameters and of the computation.
    rng : None, int or numpy.random.Generator, keyword-only
        Source of the random initial parameters, drawn from
        :math:`\mathcal{U}(-1/\sqrt{H}, 1/\sqrt{H})`; also drives dropout in
        training mode.  An int seeds a new generator.

    Attributes
    ----------
    weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}, weight_hr_l{k} : ndarray
        Parameters with torch's names and shapes (``_reverse`` suffix for the
        backward direction).  They are read-only: assign a new array, or call
        :meth:`load_state_dict`, to change them.
    training : bool
        False for a new module: fastlstm starts in eval mode, unlike torch.

    Notes
    -----
    Differences from ``torch.nn.LSTM``, all on purpose:

    * a new module is in eval mode (torch starts in training mode);
    * inputs may be any array-like; floating inputs of another precision are
      cast to the module's dtype instead of raising (non-floating inputs raise
      torch's ``ValueError``);
    * torch tensors in give torch tensors out; anything else gives ndarrays;
    * parameters are read-only arrays; there is no autograd.

    Examples
    --------
    >>> import numpy as np
    >>> import fastlstm
    >>> rnn = fastlstm.LSTM(10, 20, 2, rng=0)
    >>> x = np.random.default_rng(0).standard_normal((5, 3, 10), dtype=np.float32)
    >>> output, (h_n, c_n) = rnn(x)
    >>> output.shape, h_n.shape, c_n.shape
    ((5, 3, 20), (2, 3, 20), (2, 3, 20))
    """

    _kind = "LSTM"
    #: torch's ``RNNBase.mode``, for code that tells recurrent layers apart by it.
    mode = "LSTM"

    _stackable = False  # set per instance (a module pickled without it keeps the general path)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
        *,
        rng: RngLike = None,
    ) -> None:
        # Same checks, order, types and messages as torch.nn.RNNBase.
        float(dropout)  # torch converts first: TypeError for None, lists, ...
        if (
            not isinstance(dropout, numbers.Number)
            or isinstance(dropout, bool)
            or not 0 <= dropout <= 1
        ):
            raise ValueError(
                "dropout should be a number in range [0, 1] "
                "representing the probability of an element being "
                "zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last "
                "recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                stacklevel=2,
            )
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(
                f"batch_first should be of type bool, got: {type(batch_first).__name__}"
            )
        check_sizes(input_size, hidden_size)
        # torch checks the type of input_size and hidden_size only; numpy
        # integers pass for num_layers and proj_size there, and so here.
        num_layers = _as_count("num_layers", num_layers)
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        proj_size = _as_count("proj_size", proj_size)
        if proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        check_device(device)

        d = self.__dict__
        d["_input_size"] = input_size
        d["_hidden_size"] = hidden_size
        d["_num_layers"] = num_layers
        d["_bias"] = bias
        d["_batch_first"] = batch_first
        d["_dropout"] = float(dropout)
        d["_bidirectional"] = bool(bidirectional)
        d["_proj_size"] = proj_size
        # One-timestep calls of such stacks can go through kernels.BoundStack.
        d["_stackable"] = not bidirectional and proj_size == 0
        self._init_module(dtype, rng)

    # ------------------------------------------------------------------ config
    @property
    def num_layers(self) -> int:
        """Number of stacked layers."""
        return self._num_layers

    @property
    def batch_first(self) -> bool:
        """Batched layout (N, L, F)."""
        return self._batch_first

    @property
    def dropout(self) -> float:
        """Inter-layer dropout (training only)."""
        return self._dropout

    @property
    def bidirectional(self) -> bool:
        """Two directions per layer."""
        return self._bidirectional

    @property
    def proj_size(self) -> int:
        """Projection size, 0 for none."""
        return self._proj_size

    @property
    def _num_directions(self) -> int:
        return 2 if self._bidirectional else 1

    @property
    def _out_size(self) -> int:
        return self._proj_size if self._proj_size > 0 else self._hidden_size

    def _parameter_shapes(self) -> "OrderedDict[str, Tuple[int, ...]]":
        """torch's parameter names and shapes, in torch's order."""
        return lstm_shapes(self._input_size, self._hidden_size, self._num_layers, self._bias,
                           self._num_directions == 2, self._proj_size)

    def extra_repr(self) -> str:
        """The arguments that ``repr`` shows between the parentheses, as torch's
        ``extra_repr``: the sizes, then the arguments that differ from their defaults.

        Returns
        -------
        str

        Examples
        --------
        >>> import fastlstm
        >>> fastlstm.LSTM(8, 16, num_layers=2, batch_first=True).extra_repr()
        '8, 16, num_layers=2, batch_first=True'
        """
        s = f"{self._input_size}, {self._hidden_size}"
        if self._proj_size != 0:
            s += f", proj_size={self._proj_size}"
        if self._num_layers != 1:
            s += f", num_layers={self._num_layers}"
        if not self._bias:
            s += ", bias=False"
        if self._batch_first:
            s += ", batch_first=True"
        if self._dropout != 0:
            s += f", dropout={self._dropout}"
        if self._bidirectional:
            s += ", bidirectional=True"
        if self._dtype != np.float32:
            s += f", dtype={dtype_name(self._dtype)}"
        if self.__dict__.get("_weight_dtype"):
            s += f", weight_dtype={self.weight_dtype!r}"
        return s

    def flatten_parameters(self) -> None:
        """Do nothing: kept so that code calling torch's ``flatten_parameters`` runs.

        The kernels pack the weights once (again after any change), so there
        is nothing to flatten.

        Examples
        --------
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(4, 8)
        >>> rnn.flatten_parameters()
        """

    @property
    def all_weights(self) -> List[List[np.ndarray]]:
        """Parameters grouped per layer and direction, as torch's ``all_weights``."""
        groups: List[List[np.ndarray]] = []
        for layer in range(self._num_layers):
            for direction in range(self._num_directions):
                sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                groups.append([v for k, v in self._params.items() if k.endswith(sfx)])
        return groups

    def _pack(self) -> List[_PackedLayer]:
        p = self._params
        layers = []
        for layer in range(self._num_layers):
            sfxs = [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self._bidirectional else [])
            w = self._pack_weight
            layers.append(pack_layer(
                [w("weight_ih" + s) for s in sfxs],
                [w("weight_hh" + s) for s in sfxs],
                [p["bias_ih" + s] + p["bias_hh" + s] for s in sfxs] if self._bias else None,
                [w("weight_hr" + s) for s in sfxs] if self._proj_size > 0 else None,
                self._hidden_size, self._dtype, self.__dict__.get("_weight_dtype")))
        return layers

    # ------------------------------------------------------------ torch interop
    @classmethod
    def from_torch(cls: Type[_L], module: Any, *, dtype: Any = None) -> _L:
        """Build an equivalent fastlstm module from a ``torch.nn.LSTM``.

        Parameters
        ----------
        module : torch.nn.LSTM or torch.ao.nn.quantized.dynamic.LSTM
            Any device; its configuration and weights are copied.  torch's
            dynamically quantized form (``quantize_dynamic``) gives a float32
            module: with int8 weights, torch's int8 values and scales as they are
            (``weight_dtype == "int8"``; docs/precision.md), or with float16
            weights, their values in float32.
        dtype : None or dtype, optional
            Defaults to the module's dtype (float64 stays float64; other float
            types become float32).

        Returns
        -------
        LSTM
            In eval mode, whatever the mode of ``module``.

        Examples
        --------
        >>> import numpy as np
        >>> import torch
        >>> import fastlstm
        >>> torch_lstm = torch.nn.LSTM(10, 20, num_layers=2, batch_first=True)
        >>> rnn = fastlstm.LSTM.from_torch(torch_lstm)
        >>> rnn
        LSTM(10, 20, num_layers=2, batch_first=True)
        >>> x = np.ones((3, 5, 10), dtype=np.float32)     # (N, L, H_in)
        >>> with torch.no_grad():
        ...     expected, _ = torch_lstm(torch.from_numpy(x))
        >>> bool(np.abs(rnn(x)[0] - expected.numpy()).max() < 1e-5)
        True
        """
        quantized = dynamic_kind(module)
        if quantized is not None:
            return cls._from_torch_quantized(module, quantized, dtype)
        weights_dtype = check_torch_module(module, "LSTM")
        if dtype is None:
            dtype = weights_dtype
        new = cls(**{name: getattr(module, name) for name in _CONFIG}, dtype=dtype)
        new.load_state_dict(module.state_dict())
        return new

    def to_torch(self) -> Any:
        """Return an equivalent ``torch.nn.LSTM`` (imports torch, only here).

        Returns
        -------
        torch.nn.LSTM
            Same configuration, dtype, weights and training mode.

        Examples
        --------
        >>> import torch
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(10, 20, bidirectional=True, dtype="float64", rng=0)
        >>> torch_lstm = rnn.to_torch()
        >>> torch_lstm
        LSTM(10, 20, bidirectional=True)
        >>> torch_lstm.weight_ih_l0.dtype, tuple(torch_lstm.weight_ih_l0.shape)
        (torch.float64, (80, 10))
        """
        import torch

        tdtype = torch_dtype(self._dtype)
        module = torch.nn.LSTM(**{name: getattr(self, name) for name in _CONFIG}, dtype=tdtype)
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._params.items()})
        module.train(self.training)
        return module

    # ----------------------------------------------------------------- forward
    def forward(
        self, input: ArrayLike, hx: Optional[Tuple[ArrayLike, ArrayLike]] = None
    ) -> Tuple[Any, Tuple[Any, Any]]:
        """Run the LSTM over a sequence.

        Parameters
        ----------
        input : array-like of shape (L, H_in), (L, N, H_in) or, with batch_first, (N, L, H_in)
            Unbatched or batched input.  Floating arrays of another precision are
            cast to the module's dtype.
        hx : tuple (h_0, c_0), optional
            ``h_0`` of shape (D*num_layers, N, H_out) and ``c_0`` of shape
            (D*num_layers, N, hidden_size), or 2-D without the batch axis for
            unbatched input.  Zeros when omitted.  D is 2 if bidirectional else 1;
            H_out is proj_size if positive else hidden_size.

        Returns
        -------
        output : ndarray of shape (L, D*H_out), (L, N, D*H_out) or (N, L, D*H_out)
            ``h_t`` of the last layer for every t (both directions concatenated).
        (h_n, c_n) : tuple of ndarray
            Final states, shaped like ``h_0`` and ``c_0``.  Torch tensors in give
            torch tensors out.

        Raises
        ------
        ValueError
            Input that is not 2-D or 3-D, or not of a floating dtype.
        RuntimeError
            Wrong feature size, wrong state shapes, or an empty sequence.

        Notes
        -----
        ``input`` may also be a :class:`fastlstm.rnn.PackedSequence` (or torch's) of
        data ``(sum(lengths), H_in)``; ``output`` is then packed the same way, and
        ``h_n``, ``c_n`` hold each sequence's final state, in the original batch order
        (see :doc:`rnn`).  Calling the module, ``rnn(input, hx)``, is the same as
        ``rnn.forward(input, hx)``.

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> rnn = fastlstm.LSTM(10, 20, num_layers=2, bidirectional=True, rng=0)
        >>> x = np.zeros((5, 3, 10), dtype=np.float32)          # (L, N, H_in)
        >>> output, (h_n, c_n) = rnn(x)
        >>> output.shape, h_n.shape, c_n.shape                   # D = 2
        ((5, 3, 40), (4, 3, 20), (4, 3, 20))
        >>> output, (h_n, c_n) = rnn(x, (h_n, c_n))              # carry the state
        >>> rnn(x[:, 0])[0].shape                                # unbatched (L, H_in)
        (5, 40)
        """
        if (type(input) is np.ndarray and self._stackable
                and not (self.training and self._dropout > 0)):
            result = self._one_step(input, hx, 2 if self._batch_first else 1)
            if result is not None:  # one timestep of plain arrays: done in C
                return result
        if is_packed_sequence(input):
            return self._forward_packed(input, hx)
        tensor_in = is_torch_tensor(input)
        x = input_array(input, "LSTM")
        if x.ndim not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {x.ndim}D instead")
        batched = x.ndim == 3
        batch_first = self._batch_first and batched
        if not batched:
            x = x[:, None, :]
        h0, c0, tensor_hx = _states(hx)
        tensor_in = tensor_in or tensor_hx
        if h0 is not None and c0 is not None:
            if batched and (h0.ndim != 3 or c0.ndim != 3):
                raise RuntimeError(
                    "For batched 3-D input, hx and cx should "
                    f"also be 3-D but got ({h0.ndim}-D, {c0.ndim}-D) tensors"
                )
            if not batched:
                if h0.ndim != 2 or c0.ndim != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx and cx should "
                        f"also be 2-D but got ({h0.ndim}-D, {c0.ndim}-D) tensors"
                    )
                h0, c0 = h0[:, None, :], c0[:, None, :]

        self._check_input(x)
        seq_len, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        if h0 is not None and c0 is not None:
            self._check_states(h0, c0, batch)
        if seq_len == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if h0 is not None and c0 is not None:
            self._check_state_dtypes(h0, c0)

        output, h_n, c_n = self._run(x, h0, c0, batch_first)
        if not batched:
            output, h_n, c_n = output[:, 0, :], h_n[:, 0, :], c_n[:, 0, :]
        if tensor_in:
            torch = sys.modules["torch"]
            output, h_n, c_n = (torch.from_numpy(a) for a in (output, h_n, c_n))
        return output, (h_n, c_n)

    __call__ = kernels.module_call  # forward, the one-step path in C; see _Module.__init_subclass__

    def _call_layout(self) -> Tuple[int, bool]:
        if not self._stackable:
            return -1, False
        return (2 if self._batch_first else 1), self._dropout > 0

    def _check_input(self, x: np.ndarray) -> None:
        if x.dtype.kind != "f":
            raise ValueError(
                f"RNN input dtype ({x.dtype}) does not match weight dtype ({self._dtype}). "
                f"Convert input: input.astype({self._dtype}), "
                f"or convert model: fastlstm.LSTM(..., dtype={self._dtype})"
            )
        if x.shape[-1] != self._input_size:
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self._input_size}, got {x.shape[-1]}"
            )

    # torch checks both states' shapes (and the sequence length) first; a wrong
    # dtype fails later, in its kernels.
    def _check_states(self, h0: np.ndarray, c0: np.ndarray, batch: int) -> None:
        n_states = self._num_layers * self._num_directions
        for state, size, what in ((h0, self._out_size, "hidden[0]"),
                                  (c0, self._hidden_size, "hidden[1]")):
            expected = (n_states, batch, size)
            if tuple(state.shape) != expected:
                raise RuntimeError(f"Expected {what} size {expected}, got {list(state.shape)}")

    def _check_state_dtypes(self, h0: np.ndarray, c0: np.ndarray) -> None:
        for state, what in ((h0, "hidden[0]"), (c0, "hidden[1]")):
            if state.dtype.kind != "f":
                raise RuntimeError(
                    f"{what} dtype ({state.dtype}) does not match weight dtype ({self._dtype})"
                )

    def _forward_packed(
        self, input: Any, hx: Optional[Tuple[ArrayLike, ArrayLike]]
    ) -> Tuple[Any, Tuple[Any, Any]]:
        """``forward`` for a fastlstm or torch ``PackedSequence`` (see ``forward``)."""
        torch_packed = not isinstance(input, PackedSequence)
        packed = from_torch_packed(input)
        x = input_array(packed.data, "LSTM")
        batch_sizes = np.asarray(packed.batch_sizes)
        if x.ndim != 2:
            raise RuntimeError(f"input must have 2 dimensions, got {x.ndim}")
        self._check_input(x)
        if batch_sizes.size == 0:
            raise IndexError(
                "index 0 is out of bounds for dimension 0 with size 0: "
                "the packed sequence has no timesteps (batch_sizes is empty)"
            )
        if batch_sizes.dtype.kind not in "iu":
            raise TypeError(f"batch_sizes must be integers, got {batch_sizes.dtype}")
        batch_sizes = batch_sizes.astype(np.int64, copy=False)
        check_batch_sizes(x, batch_sizes)
        batch = int(batch_sizes[0])
        sorted_indices, unsorted_indices = packed.sorted_indices, packed.unsorted_indices
        for name, perm in (("sorted_indices", sorted_indices),
                           ("unsorted_indices", unsorted_indices)):
            if perm is not None and (perm.dtype.kind not in "iu"
                                     or not is_permutation(perm, batch)):
                raise ValueError(f"{name} must be a permutation of the {batch} sequences, "
                                 f"got {np.asarray(perm).tolist()}")
        tensor_in = torch_packed
        h0, c0, tensor_hx = _states(hx)
        tensor_in = tensor_in or tensor_hx
        if h0 is not None and c0 is not None:
            # torch checks nothing here and fails later or not at all (a state
            # of a larger batch is silently cut); fastlstm wants the exact shapes.
            self._check_states(h0, c0, batch)
            self._check_state_dtypes(h0, c0)
            if sorted_indices is not None:
                h0, c0 = h0[:, sorted_indices], c0[:, sorted_indices]

        data, h_n, c_n = self._run(x, h0, c0, False, batch_sizes)
        if unsorted_indices is not None:
            h_n, c_n = h_n[:, unsorted_indices], c_n[:, unsorted_indices]
        # The output is packed as the input was (torch's or fastlstm's); h_n and c_n
        # are tensors when the input or hx holds tensors.
        if tensor_in:
            torch = sys.modules["torch"]
            h_n, c_n = torch.from_numpy(h_n), torch.from_numpy(c_n)
        if torch_packed:
            output = type(input)(sys.modules["torch"].from_numpy(data), input.batch_sizes,
                                 input.sorted_indices, input.unsorted_indices)
        else:
            output = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
        return output, (h_n, c_n)

    def _run(
        self,
        x: np.ndarray,
        h0: Optional[np.ndarray],
        c0: Optional[np.ndarray],
        batch_first: bool,
        batch_sizes: Optional[np.ndarray] = None,
        threads: Optional[int] = None,
        workspace: Optional[Dict[str, np.ndarray]] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run all layers on validated 3-D input, or packed 2-D input with its
        ``batch_sizes`` (int64), on ``threads`` threads (None: ``get_num_threads()``);
        returns (output, h_n, c_n) as ndarrays.  With a ``workspace`` (a dict kept by
        the caller), the gate buffer and the layers' outputs are its buffers, reused by
        the next call with the same dict: the output is then only valid until that call."""
        n_dirs = self._num_directions
        hidden, out_size = self._hidden_size, self._out_size
        one_step = ((x.shape[1] if batch_first else x.shape[0]) == 1 and batch_sizes is None
                    and n_dirs == 1 and self._proj_size == 0
                    and not (self.training and self._dropout > 0))
        # The dtype comes from the layers the call runs (a cast in another thread swaps both).
        layers, stack = self._bound_pair() if one_step else (self._packed_layers(), None)
        dt = layers[0].bias.dtype
        if batch_sizes is not None:
            seq_len, batch, rows = batch_sizes.size, int(batch_sizes[0]), x.shape[0]
            out_shape: Tuple[int, ...] = (rows, n_dirs * out_size)
        else:
            seq_len, batch = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
            rows = seq_len * batch
            out_shape = ((batch, seq_len, n_dirs * out_size) if batch_first
                         else (seq_len, batch, n_dirs * out_size))
        n_states = self._num_layers * n_dirs
        if batch == 0:
            return (np.zeros(out_shape, dt), np.zeros((n_states, 0, out_size), dt),
                    np.zeros((n_states, 0, hidden), dt))
        check_rows(rows, "rows (steps x sequences)")
        layer_in = c_array(x, dt).reshape(rows, -1)
        h0_zero = h0 is None and zero_state_skips(layers)
        if h0 is None:
            h0 = np.zeros((n_states, batch, out_size), dt)  # only read
            c_n = zeros_written((n_states, batch, hidden), dt)
        else:
            h0 = c_array(h0, dt)
            c_n = np.array(c0, dtype=dt, order="C", copy=True)  # updated in place
        h_n = np.empty((n_states, batch, out_size), dt)

        if threads is None:
            threads = get_num_threads()
        if stack is not None:
            order = stack.next_order()
            for layer in range(self._num_layers):
                kernels.cell_step(stack, layer, layer_in, h0[layer], c_n[layer], h_n[layer],
                                threads, h0_zero, order)
                layer_in = h_n[layer]
            return h_n[-1].reshape(out_shape).copy(), h_n, c_n
        packed = None
        if batch_sizes is not None:
            offsets = np.zeros(seq_len + 1, np.int64)
            np.cumsum(batch_sizes, out=offsets[1:])
            lengths = count_greater(batch_sizes, np.arange(batch))  # sorted sequences
            packed = (batch_sizes, offsets, lengths)
        # The schedule (threads, split mode, time chunk, BLAS, directions in turn) is
        # decided in one place, kernels.schedule, per layer (the first one's input
        # differs); the gate buffer holds a time chunk of any layer.
        tuning = self._tuning
        plans = [kernels.schedule(w, batch, seq_len, hidden, threads, packed is not None, tuning,
                                  batch_first) for w in layers]
        gate_cols = n_dirs * layers[0].bias.shape[1]
        gate_shape = (max(p[2] for p in plans) * batch, gate_cols)
        gates = (aligned_empty(gate_shape, dt) if workspace is None
                 else workspace_array(workspace, "gates", gate_shape, dt))
        hcell = np.empty((n_dirs, batch, hidden), dt) if self._proj_size > 0 else c_n
        dropout = self._dropout if self.training else 0.0
        backward_order = self._next_order() if seq_len == 1 else False

        for layer, w in enumerate(layers):
            s = slice(layer * n_dirs, (layer + 1) * n_dirs)
            # Two buffers in turn: a layer reads the one the layer before it wrote.
            out = (np.empty((rows, n_dirs * out_size), dt) if workspace is None
                   else workspace_array(workspace, f"out{layer % 2}", (rows, n_dirs * out_size),
                                        dt))
            state = (h0[s], c_n[s], hcell, h_n[s], h0_zero)
            schedule = plans[layer] + (backward_order,)
            # Only the input projection may call BLAS, on blocks of at least
            # blas_min_rows rows; pin BLAS to one thread whenever that can happen.
            if rows >= schedule[3]:
                with single_threaded_blas():
                    kernels.layer(w, layer_in, out, state, gates, seq_len, batch_first, schedule,
                                  packed)
            else:
                kernels.layer(w, layer_in, out, state, gates, seq_len, batch_first, schedule,
                              packed)
            if packed is not None:
                offsets, lengths = packed[1], packed[2]
                # Each sequence's last step forward; backward, its first step.
                h_n[layer * n_dirs] = out[offsets[lengths - 1] + np.arange(batch), :out_size]
                if n_dirs == 2:
                    h_n[layer * n_dirs + 1] = out[:batch, out_size:]
            if dropout > 0 and layer < self._num_layers - 1:
                keep = self._rng.random(out.shape) >= dropout
                out = out * keep / (1.0 - dropout) if dropout < 1 else np.zeros_like(out)
            layer_in = out
        return layer_in.reshape(out_shape), h_n, c_n
