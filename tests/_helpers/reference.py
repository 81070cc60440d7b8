"""A plain-NumPy oracle for ``torch.nn.LSTM``'s forward pass (eval mode).

Written straight from the equations of the torch documentation, with a Python
loop over time and float64 arithmetic throughout.  It is meant to be obviously
correct, not fast.  It does not depend on torch or on fastlstm's kernels.

For every layer ``k`` and direction (``""`` forward, ``"_reverse"`` backward)::

    gates = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh        # rows: i | f | g | o
    i, f, o = sigmoid(.), g = tanh(.)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)
    h_t = W_hr h_t                                        # only with proj_size > 0

The reverse direction runs over ``t = L-1, ..., 0``.  A layer's output at time
``t`` is ``[h_t forward, h_t reverse]`` and is the next layer's input.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lstm_reference", "reference_forward"]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _as_float64(a):
    """A float64 ndarray copy of an array-like or a (CPU) torch tensor."""
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.array(a, dtype=np.float64, copy=True)


def _same(a):
    return a


def _run_direction(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, operand=_same):
    """One direction of one layer.

    x: (L, N, I); h: (N, H_out); c: (N, H). Returns (out (L, N, H_out), h, c).
    ``operand`` is applied to every activation that meets a weight in a product
    (reduced-precision semantics, docs/precision.md).
    """
    seq_len = x.shape[0]
    hidden = w_hh.shape[0] // 4
    out = np.empty((seq_len, x.shape[1], h.shape[1]))
    steps = range(seq_len - 1, -1, -1) if reverse else range(seq_len)
    for t in steps:
        gates = operand(x[t]) @ w_ih.T + b_ih + operand(h) @ w_hh.T + b_hh  # (N, 4H)
        i = _sigmoid(gates[:, 0 * hidden:1 * hidden])
        f = _sigmoid(gates[:, 1 * hidden:2 * hidden])
        g = np.tanh(gates[:, 2 * hidden:3 * hidden])
        o = _sigmoid(gates[:, 3 * hidden:4 * hidden])
        c = f * c + i * g
        h = o * np.tanh(c)
        if w_hr is not None:
            h = operand(h) @ w_hr.T
        out[t] = h
    return out, h, c


def lstm_reference(params, input, hx=None, *, num_layers, bidirectional, proj_size,
                   batch_first, hidden_size, operand=_same):
    """Forward pass of ``torch.nn.LSTM`` in float64.

    Parameters
    ----------
    params : mapping of torch's parameter names to arrays
        ``weight_ih_l{k}``, ``weight_hh_l{k}``, optionally ``bias_ih_l{k}`` and
        ``bias_hh_l{k}`` (absent means ``bias=False``), ``weight_hr_l{k}`` when
        ``proj_size > 0``; ``_reverse`` suffix for the backward direction.
    input : array-like, (L, H_in) unbatched, (L, N, H_in), or (N, L, H_in) if batch_first
    hx : optional (h_0, c_0), shaped (D*num_layers, [N,] H_out) and (D*num_layers, [N,] H)

    Returns
    -------
    output, (h_n, c_n) : float64 ndarrays with torch's shapes.
    """
    x = _as_float64(input)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected 2-D or 3-D input, got {x.ndim}-D")
    batched = x.ndim == 3
    if not batched:
        x = x[:, None, :]  # (L, 1, H_in)
    elif batch_first:
        x = x.transpose(1, 0, 2)  # (L, N, H_in)
    batch = x.shape[1]

    dirs = 2 if bidirectional else 1
    out_size = proj_size if proj_size > 0 else hidden_size
    if hx is None:
        h0 = np.zeros((num_layers * dirs, batch, out_size))
        c0 = np.zeros((num_layers * dirs, batch, hidden_size))
    else:
        h0, c0 = _as_float64(hx[0]), _as_float64(hx[1])
        if not batched:
            h0, c0 = h0[:, None, :], c0[:, None, :]
    assert h0.shape == (num_layers * dirs, batch, out_size), h0.shape
    assert c0.shape == (num_layers * dirs, batch, hidden_size), c0.shape

    h_n = np.empty_like(h0)
    c_n = np.empty_like(c0)
    layer_input = x
    for layer in range(num_layers):
        outputs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
            w_ih = _as_float64(params["weight_ih" + sfx])
            w_hh = _as_float64(params["weight_hh" + sfx])
            if ("bias_ih" + sfx) in params:
                b_ih = _as_float64(params["bias_ih" + sfx])
                b_hh = _as_float64(params["bias_hh" + sfx])
            else:
                b_ih = b_hh = np.zeros(4 * hidden_size)
            w_hr = _as_float64(params["weight_hr" + sfx]) if proj_size > 0 else None
            k = layer * dirs + d
            out, h_n[k], c_n[k] = _run_direction(
                layer_input, h0[k], c0[k], w_ih, w_hh, b_ih, b_hh, w_hr, reverse=(d == 1),
                operand=operand)
            outputs.append(out)
        layer_input = np.concatenate(outputs, axis=2)  # (L, N, D*H_out)

    output = layer_input
    if not batched:
        return output[:, 0, :], (h_n[:, 0, :], c_n[:, 0, :])
    if batch_first:
        output = output.transpose(1, 0, 2)
    return np.ascontiguousarray(output), (h_n, c_n)


def reference_forward(module, input, hx=None, operand=_same):
    """``lstm_reference`` with the configuration and parameters of ``module``.

    ``module`` is a ``fastlstm.LSTM`` or a ``torch.nn.LSTM`` (anything with the
    same attributes and a ``state_dict()``).
    """
    params = {k: _as_float64(v) for k, v in module.state_dict().items()}
    return lstm_reference(
        params, input, hx,
        num_layers=module.num_layers,
        bidirectional=bool(module.bidirectional),
        proj_size=module.proj_size,
        batch_first=bool(module.batch_first),
        hidden_size=module.hidden_size,
        operand=operand,
    )


def cell_reference(cell, x, hx=None, operand=_same):
    """One ``LSTMCell`` step of the oracle, with the cell's parameters: ``(h, c)``."""
    params = {k + "_l0": v for k, v in cell.state_dict().items()}
    batched = x.ndim == 2
    xs = x[None] if batched else x[None, :]
    state = None
    if hx is not None:
        state = tuple(np.asarray(v)[None] for v in hx)
    _, (h, c) = lstm_reference(params, xs, state, num_layers=1, bidirectional=False,
                               proj_size=0, batch_first=False, hidden_size=cell.hidden_size,
                               operand=operand)
    return h[0], c[0]
