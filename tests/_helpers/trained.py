"""A small LSTM trained in the tests (torch), for the reduced-precision accuracy checks."""

import functools

import numpy as np

from tests._helpers import TORCH


@functools.lru_cache(maxsize=1)
def trained_lstm():
    """An LSTM trained on "is the running sum of feature 0 positive at the end" (with
    distractor features), its linear head, and 4000 test sequences with their labels:
    ``(lstm, head_weight, head_bias, x, y)``, the last four as NumPy arrays."""
    torch = TORCH
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same training on every machine
    try:
        gen = torch.Generator().manual_seed(0)

        def data(n):
            x = torch.randn(n, 30, 8, generator=gen)
            y = (x[:, :, 0].sum(1) > 0).long()
            return x, y

        torch.manual_seed(0)
        lstm = torch.nn.LSTM(8, 32, batch_first=True)
        head = torch.nn.Linear(32, 2)
        opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-2)
        for _ in range(300):
            x, y = data(64)
            loss = torch.nn.functional.cross_entropy(head(lstm(x)[0][:, -1]), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        x, y = data(4000)
    finally:
        torch.set_num_threads(threads)
    return (lstm, head.weight.detach().numpy(), head.bias.detach().numpy(), x.numpy(),
            y.numpy())


def accuracy(module, w, b, x, y):
    """The share of ``x`` the module with the head ``w``, ``b`` classifies as ``y``."""
    out, _ = module(x)
    return float(((out[:, -1] @ w.T + b).argmax(1) == np.asarray(y)).mean())
