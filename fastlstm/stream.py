"""``fastlstm.Stream``: frame-by-frame inference that owns its state and allocates nothing."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from fastlstm import _threads
from fastlstm._common import input_array, wrong_module
from fastlstm._ext import kernels
from fastlstm._module import MAX_ROWS, aligned_empty
from fastlstm.cell import LSTMCell
from fastlstm.lstm import LSTM

__all__ = ["Stream"]



class Stream:
    """Run an LSTM or LSTMCell one frame at a time, carrying its state in place.

    The stream owns ``h`` and ``c`` and every buffer a step needs, allocated
    once; :meth:`step` validates little and allocates nothing, which is what a
    speech or voice-activity loop on a server thread wants.  The GIL is
    released while the kernels run.

    Parameters
    ----------
    module : LSTM or LSTMCell
        A unidirectional :class:`fastlstm.LSTM` (any number of layers,
        ``proj_size`` allowed) or a :class:`fastlstm.LSTMCell`.  Its weights are
        read at every step, so later parameter changes take effect; when the
        module is cast to the other dtype (``double()``, ``to(dtype)``), the
        next step casts the state too, into new arrays.  Steps compute in
        eval mode (no dropout).
    batch_size : int or None, default=None
        Number of independent streams stepped together; None for one unbatched
        stream (frames of shape ``(input_size,)``).

    Attributes
    ----------
    h : ndarray of shape (num_layers, N, H_out), or (num_layers, H_out) unbatched
    c : ndarray of shape (num_layers, N, hidden_size), or (num_layers, hidden_size)
        The state, updated in place by every step; the same layout as torch's
        ``h_n`` / ``c_n`` (for an LSTMCell, ``num_layers`` is 1).  Writing into
        them sets the state the next step starts from, as ``reset(hx)`` does.

    Examples
    --------
    A frame loop; the result equals one call over the whole sequence:

    >>> import numpy as np
    >>> import fastlstm
    >>> lstm = fastlstm.LSTM(40, 64, num_layers=2, rng=0)
    >>> frames = np.random.default_rng(0).standard_normal((100, 40), dtype=np.float32)
    >>> stream = fastlstm.Stream(lstm)
    >>> for frame in frames:
    ...     y = stream.step(frame)          # (64,), a view overwritten by the next step
    >>> out, (h_n, c_n) = lstm(frames)
    >>> bool(np.allclose(y, out[-1], atol=1e-5) and np.allclose(stream.h, h_n, atol=1e-5))
    True
    """

    def __init__(self, module: Union[LSTM, LSTMCell], batch_size: Optional[int] = None) -> None:
        if isinstance(module, LSTM):
            if module.bidirectional:
                raise ValueError("Stream needs a unidirectional LSTM: a bidirectional one "
                                 "reads the sequence backwards from its end")
            layers, out_size = module.num_layers, module.proj_size or module.hidden_size
        elif isinstance(module, LSTMCell):
            layers, out_size = 1, module.hidden_size
        else:
            raise wrong_module("Stream", "a fastlstm.LSTM or LSTMCell", module)
        if batch_size is not None:
            if isinstance(batch_size, (bool, np.bool_)) or not isinstance(
                    batch_size, (int, np.integer)):
                raise TypeError(f"batch_size must be a positive int or None, got "
                                f"{batch_size!r}")
            batch_size = int(batch_size)
            if batch_size < 1:
                raise ValueError(f"batch_size must be a positive int or None, got "
                                 f"{batch_size!r}")
        if batch_size is not None and batch_size > MAX_ROWS:
            # The kernels index rows with 32-bit ints, as for LSTM's L * N rows.
            raise ValueError(f"batch_size {batch_size} is too large: at most {MAX_ROWS} "
                             "streams are supported")
        self._module = module
        self._batched = batch_size is not None
        n = batch_size if batch_size is not None else 1
        dt = module.dtype
        hidden = module.hidden_size
        self._n = n
        self._h = np.zeros((layers, n, out_size), dt)
        self._c = np.zeros((layers, n, hidden), dt)
        self._allocate(dt)
        self._plan_layers: Optional[List[Any]] = None  # what _step_plan is bound to
        self._step_plan: Optional[kernels.BoundStack] = None

    def _allocate(self, dt: np.dtype) -> None:
        """The buffers of a step other than the state, in the module's dtype."""
        module, n = self._module, self._n
        layers, out_size = self._h.shape[0], self._h.shape[2]
        self._x = np.zeros((n, module.input_size), dt)
        self._out = [np.zeros((n, out_size), dt) for _ in range(layers)]
        self._hcell = np.zeros((1, n, module.hidden_size), dt)
        w = module._packed_layers()[0]
        self._gates = aligned_empty((n, w.bias.shape[1]), dt)
        self._gates[...] = 0

    @property
    def h(self) -> np.ndarray:
        """Hidden state (see the class docstring); a view, updated in place."""
        return self._h if self._batched else self._h[:, 0]

    @property
    def c(self) -> np.ndarray:
        """Cell state (see the class docstring); a view, updated in place."""
        return self._c if self._batched else self._c[:, 0]

    def reset(self, hx: Optional[Tuple[Any, Any]] = None) -> None:
        """Set the state to zeros, or to ``hx = (h, c)`` shaped like :attr:`h` and :attr:`c`.

        Parameters
        ----------
        hx : tuple (h, c) of array-like, optional
            ``h`` of shape ``(num_layers, N, H_out)`` and ``c`` of shape
            ``(num_layers, N, hidden_size)``, without the ``N`` axis for an
            unbatched stream; copied into the stream's state.  Zeros when omitted.
            A stream of an ``LSTMCell`` (``num_layers`` 1) also takes the cell's own
            ``(N, hidden_size)`` (or ``(hidden_size,)``) states, as its calls return them.

        Raises
        ------
        ValueError
            If the shapes are not those of :attr:`h` and :attr:`c`, or the values not
            floating point; the state is left as it was.

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> lstm = fastlstm.LSTM(4, 8, num_layers=2, rng=0)
        >>> stream = fastlstm.Stream(lstm, batch_size=3)
        >>> _ = stream.step(np.ones((3, 4), dtype=np.float32))
        >>> stream.reset()                                      # the next utterance
        >>> bool(np.all(stream.h == 0))
        True
        >>> stream.reset((np.ones((2, 3, 8)), np.zeros((2, 3, 8))))
        >>> stream.h.shape, stream.c.shape
        ((2, 3, 8), (2, 3, 8))
        """
        self._plan()  # the state in the module's dtype now, if it was cast since a step
        if hx is None:
            self._h.fill(0)
            self._c.fill(0)
            return
        h, c = (input_array(v, "Stream.reset", f"hx[{i}]") for i, v in enumerate(hx))
        if (isinstance(self._module, LSTMCell) and h.shape == self.h.shape[1:]
                and c.shape == self.c.shape[1:]):
            h, c = h[None], c[None]  # a cell's own state, as its calls return it
        if h.shape != self.h.shape or c.shape != self.c.shape:
            raise ValueError(f"Stream.reset: expected h of shape {self.h.shape} and c of shape "
                             f"{self.c.shape}, got {h.shape} and {c.shape}")
        if h.dtype.kind != "f" or c.dtype.kind != "f":
            raise ValueError(f"Stream.reset: states must be floating point, got {h.dtype} and "
                             f"{c.dtype}")
        # Both converted (copies: hx may be views of the state itself, say (c, h)) before
        # either is written: a failure leaves the state as it was.
        h, c = np.array(h, dtype=self._h.dtype), np.array(c, dtype=self._c.dtype)
        self.h[...] = h
        self.c[...] = c

    def __getstate__(self) -> Dict[str, Any]:
        # Without the kernels' binding of the buffers: a copy binds its own at its next
        # step; nor the scratch buffers, which it makes again.
        state = dict(self.__dict__)
        state["_step_plan"] = state["_plan_layers"] = None
        for name in ("_x", "_out", "_hcell", "_gates"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        # The state into arrays of its own, which steps write in place: a pickle's may be
        # read-only (out-of-band buffers, joblib's memory maps) or misaligned.
        self._h = np.array(self._h, dtype=self._h.dtype, order="C")
        self._c = np.array(self._c, dtype=self._c.dtype, order="C")
        # The scratch buffers at the first step (_plan): the module may not be restored
        # yet (a module that holds its own stream is unpickled around it).

    def __copy__(self) -> "Stream":
        """A stream on the same module with a copy of the state and buffers of its own
        (sharing them, each stream's steps would overwrite the other's state)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__getstate__())
        new._h, new._c = self._h.copy(), self._c.copy()
        new._allocate(self._h.dtype)
        return new

    def step(self, x: Any) -> np.ndarray:
        """Advance every stream by one frame and return the last layer's output.

        Parameters
        ----------
        x : array-like of shape (N, input_size), or (input_size,) unbatched
            Cast to the module's dtype.

        Returns
        -------
        ndarray of shape (N, H_out), or (H_out,) unbatched
            A view of the stream's output buffer: the next step overwrites it
            (copy it to keep it).

        Raises
        ------
        ValueError
            A frame of another shape, or not of a floating dtype.

        Examples
        --------
        >>> import numpy as np
        >>> import fastlstm
        >>> cell = fastlstm.LSTMCell(4, 8, rng=0)
        >>> stream = fastlstm.Stream(cell, batch_size=2)
        >>> frames = np.ones((10, 2, 4), dtype=np.float32)      # 10 frames of 2 streams
        >>> outputs = [stream.step(frame).copy() for frame in frames]
        >>> outputs[-1].shape                                   # (N, H_out)
        (2, 8)
        >>> h, c = None, None
        >>> for frame in frames:                                # the same with the cell
        ...     h, c = cell(frame, None if h is None else (h, c))
        >>> bool(np.allclose(outputs[-1], h, atol=1e-6))
        True
        """
        plan = self._plan()
        # A plain frame of the expected shape is checked and copied in C; any
        # other is checked and converted here.
        if not (type(x) is np.ndarray and x.ndim == (2 if self._batched else 1)
                and plan.stream_step(x, _threads._num_threads or 0)):
            x = input_array(x, "Stream.step")
            expected = self._x.shape if self._batched else self._x.shape[1:]
            if x.shape != expected:
                raise ValueError(
                    f"Stream.step: expected a frame of shape {expected}, got {x.shape}")
            if x.dtype.kind != "f":
                raise ValueError(f"Stream.step: frames must be floating point, got {x.dtype}")
            self._x[...] = x if self._batched else x[None]
            plan.stream_step(None, _threads._num_threads or 0)
        out = self._out[-1]
        return out if self._batched else out[0]

    def _plan(self) -> kernels.BoundStack:
        """The stream's buffers bound to the module's packed weights, made again
        when those change (new weights loaded into the module, or a new dtype)."""
        layers = self._module._packed_layers()
        plan = self._step_plan
        if plan is None or layers is not self._plan_layers:
            dt = layers[0].bias.dtype
            if dt != self._h.dtype:
                # The module was cast (``double()``, ``to(dtype)``): so is the state,
                # into new arrays.
                self._h, self._c = self._h.astype(dt), self._c.astype(dt)
                self._allocate(dt)
            elif "_gates" not in self.__dict__:  # unpickled: scratch made here
                self._allocate(dt)
            plan = kernels.BoundStack(layers, self._module.hidden_size,
                                      tuning=self._module._tuning)
            plan.bind_stream(self._x, self._h, self._c, self._hcell, self._out, self._gates)
            self._step_plan = plan
            self._plan_layers = layers
        return plan
