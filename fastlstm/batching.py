"""``fastlstm.forward_many``: many variable-length sequences through one LSTM, in batches.

The sequences are sorted by length, cut into batches of at most ``max_batch_tokens``
timesteps in all, each run as a packed batch (work in proportion to the real lengths, no
padding), and the results put back in input order.  With several threads and enough
timesteps, the batches run side by side, each on a thread (or group) of its own.
docs/scale.md has the measurements behind the default budget and the Dask version
(``fastlstm.dask``).
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import (
    Any,
    Collection,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    Union,
    overload,
)

import numpy as np

from fastlstm import _threads
from fastlstm._common import input_array, is_torch_tensor, wrong_module
from fastlstm._module import workspace_array
from fastlstm._threads import get_num_threads
from fastlstm.lstm import LSTM
from fastlstm.rnn import PackedSequence

__all__ = ["forward_many", "DEFAULT_BATCH_TOKENS"]

#: Timesteps a batch holds by default: on 2 cores (docs/scale.md) the sequences/s were flat
#: from 8k to 64k and fell below 4k (small products) and past 128k (the gate buffer and
#: outputs leave the caches).
DEFAULT_BATCH_TOKENS = 16384

#: An iterable without ``len`` is read this many batches' worth of timesteps at a time.
_WINDOW_BATCHES = 8
_WINDOW_MAX_SEQUENCES = 1 << 16

_Result = Union[Any, Tuple[Any, Tuple[Any, Any]]]


def _checked(module: LSTM, index: int, seq: Any) -> Tuple[np.ndarray, bool]:
    """Sequence ``index`` as an array of the module's dtype (and whether it was a torch
    tensor), with forward's errors, prefixed by the sequence's index."""
    tensor = is_torch_tensor(seq)
    try:
        x = input_array(seq, "LSTM")
        if x.ndim != 2:
            raise ValueError(f"LSTM: Expected each sequence to be 2D (L, input_size), got "
                             f"{x.ndim}D instead")
        module._check_input(x)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    except (ValueError, RuntimeError, TypeError) as exc:
        raise type(exc)(f"sequence {index}: {exc}") from None
    return np.ascontiguousarray(x, dtype=module.dtype), tensor


def _batches(lengths: np.ndarray, budget: int, parts: int = 1) -> List[np.ndarray]:
    """Positions of the sequences, longest first, cut into runs of at most ``budget``
    timesteps (a longer sequence alone): greedily, or with ``parts`` > 1 into a
    multiple of ``parts`` runs of about equal timesteps, so that ``parts`` threads
    running them side by side finish together."""
    order = np.argsort(-lengths, kind="stable")
    if parts > 1 and len(order) > 1:
        return _even_batches(order, lengths[order].astype(np.int64), budget, parts)
    out: List[np.ndarray] = []
    start, total = 0, 0
    for k, i in enumerate(order):
        n = int(lengths[i])
        if k > start and total + n > budget:
            out.append(order[start:k])
            start, total = k, 0
        total += n
    if start < len(order):
        out.append(order[start:])
    return out


def _even_batches(order: np.ndarray, lengths: np.ndarray, budget: int, parts: int
                  ) -> List[np.ndarray]:
    """``order`` (lengths ``lengths``) cut into n runs, n a multiple of ``parts``: each
    sequence goes to the run that holds the middle of its timesteps, and n grows until
    every run of two sequences or more is within ``budget``."""
    total = int(lengths.sum())
    n = -(-max(1, -(-total // budget)) // parts) * parts
    middle = np.cumsum(lengths) - lengths / 2
    while True:
        run = np.minimum((middle * (n / total)).astype(np.int64), n - 1)
        cuts = np.flatnonzero(np.diff(run)) + 1
        starts = np.concatenate([[0], cuts])
        sizes = np.add.reduceat(lengths, starts)
        singles = np.diff(np.append(starts, len(order))) == 1
        if np.all((sizes <= budget) | singles):
            return np.split(order, cuts)
        # geometric growth: a budget near the lengths needs many more runs than its quotient
        n = -(-max(n + parts, int(n * 1.25)) // parts) * parts


def _run_batch(module: LSTM, arrays: Sequence[np.ndarray], states: bool,
               threads: Optional[int], workspace: Dict[str, np.ndarray]
               ) -> List[Tuple[np.ndarray, Optional[Tuple[np.ndarray, np.ndarray]]]]:
    """``arrays`` (longest first) as one packed batch on ``threads`` threads (None:
    ``get_num_threads()``); each one's output (a copy) and state.  ``workspace`` (a
    dict) holds the batch's buffers for the next batch that gets the same dict."""
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    steps = np.arange(int(lengths[0]))
    batch_sizes = (lengths[None, :] > steps[:, None]).sum(axis=1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(batch_sizes)[:-1]])
    data = workspace_array(workspace, "data", (int(lengths.sum()), arrays[0].shape[1]),
                           module.dtype)
    rows = [offsets[:n] + i for i, n in enumerate(lengths)]  # sequence i at timestep t
    for r, a in zip(rows, arrays):
        data[r] = a
    if type(module).forward is not LSTM.forward:  # a subclass's forward, as it is
        packed, (h_n, c_n) = module(PackedSequence(data, batch_sizes, None, None))
        out = packed.data
    else:  # the arrays are checked: straight to the layers, as forward would
        out, h_n, c_n = module._run(data, None, None, False, batch_sizes, threads, workspace)
    result = []
    for i, r in enumerate(rows):
        state = (h_n[:, i].copy(), c_n[:, i].copy()) if states else None
        result.append((out[r], state))
    return result


def _parts(module: LSTM, lengths: np.ndarray, budget: int) -> Tuple[int, int]:
    """How many batches run side by side, and the threads of each: with several threads
    and at least two batches' worth of timesteps per part, each thread (or group of
    threads) runs batches of its own, without a barrier at every timestep; with fewer,
    a part left with a batch of the longest sequences (the fewest rows a step) would
    finish last while the others wait (docs/scale.md has the measurements).  A subclass
    that overrides ``forward`` is called as it is, one batch at a time, and so is a
    module in training with dropout, whose masks come from the module's generator in
    the order of the batches."""
    threads = get_num_threads()
    cap = _threads._cap()  # the usable CPUs (affinity, quota): no more Python threads either
    if cap:
        threads = min(threads, cap)
    parts = min(threads, -(-int(lengths.sum()) // budget) // 2)
    if (parts < 2 or type(module).forward is not LSTM.forward
            or (module.training and module.dropout > 0)):
        return 1, 0
    return parts, threads // parts


def _window(module: LSTM, items: Sequence[Tuple[int, Any]], budget: int,
            return_states: bool) -> List[_Result]:
    """The results of ``items`` (index, sequence), in their order."""
    checked = [_checked(module, index, seq) for index, seq in items]
    lengths = np.array([x.shape[0] for x, _ in checked], dtype=np.int64)
    results: List[_Result] = [None] * len(checked)
    parts, each = _parts(module, lengths, budget)
    batches = _batches(lengths, budget, parts)
    inputs = [[checked[p][0] for p in positions] for positions in batches]
    # The batches of a window reuse their buffers, a set per batch running at once
    # (docs/scale.md): fresh ones are mapped and faulted in anew where the C library
    # returns every freed buffer to the system (Dask's workers).
    workspaces: "queue.SimpleQueue[Dict[str, np.ndarray]]" = queue.SimpleQueue()
    for _ in range(parts):
        workspaces.put({})

    def run(arrays: List[np.ndarray], threads: Optional[int]
            ) -> List[Tuple[np.ndarray, Optional[Tuple[np.ndarray, np.ndarray]]]]:
        workspace = workspaces.get()
        try:
            return _run_batch(module, arrays, return_states, threads, workspace)
        finally:
            workspaces.put(workspace)

    if parts > 1:
        # The layers release the GIL, so a batch's packing overlaps the others' steps.
        pool = ThreadPoolExecutor(parts, thread_name_prefix="fastlstm-batch")
        try:
            futures = [pool.submit(run, arrays, each) for arrays in inputs]
            done_all = [future.result() for future in futures]
        finally:
            # An error or a KeyboardInterrupt drops the batches not started yet; the
            # running ones end with their kernels (which hold no Python state).
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        done_all = [run(arrays, None) for arrays in inputs]
    torch = None
    for positions, done in zip(batches, done_all):
        for p, (out, state) in zip(positions, done):
            if checked[p][1]:  # torch in, torch out, as forward
                torch = torch or sys.modules["torch"]
                out = torch.from_numpy(out)
                state = state and (torch.from_numpy(state[0]), torch.from_numpy(state[1]))
            results[p] = (out, state) if return_states else out
    return results


def _length(seq: Any, budget: int) -> int:
    """A sequence's timesteps for sizing a window: ``len``, or ``budget`` for an item that
    has none (a 0-D array: ``_window`` refuses it, naming its index)."""
    try:
        return len(seq)
    except TypeError:
        return budget


def _stream(module: LSTM, sequences: Iterable[Any], budget: int,
            return_states: bool) -> Iterator[_Result]:
    """``forward_many`` of an iterable without ``len``: windows of a few batches."""
    window: List[Tuple[int, Any]] = []
    tokens = 0
    for index, seq in enumerate(sequences):
        window.append((index, seq))
        tokens += _length(seq, budget)
        if tokens >= _WINDOW_BATCHES * budget or len(window) >= _WINDOW_MAX_SEQUENCES:
            yield from _window(module, window, budget, return_states)
            window, tokens = [], 0
    if window:
        yield from _window(module, window, budget, return_states)


_WithStates = Tuple[Any, Tuple[Any, Any]]


# A sized collection gives a list, any other iterable an iterator; return_states gives
# (out, (h_n, c_n)) pairs: what type checkers read of the one function below.
# (A Collection is an Iterable too: mypy's overlap rule, overruled on purpose.)
@overload
def forward_many(module: LSTM, sequences: Collection[Any], *,  # type: ignore[overload-overlap]
                 max_batch_tokens: Optional[int] = ...,
                 return_states: Literal[False] = ...) -> List[Any]: ...


@overload
def forward_many(module: LSTM, sequences: Collection[Any], *,  # type: ignore[overload-overlap]
                 max_batch_tokens: Optional[int] = ...,
                 return_states: Literal[True]) -> List[_WithStates]: ...


@overload
def forward_many(module: LSTM, sequences: Iterable[Any], *,
                 max_batch_tokens: Optional[int] = ...,
                 return_states: Literal[False] = ...) -> Iterator[Any]: ...


@overload
def forward_many(module: LSTM, sequences: Iterable[Any], *,
                 max_batch_tokens: Optional[int] = ...,
                 return_states: Literal[True]) -> Iterator[_WithStates]: ...


@overload
def forward_many(module: LSTM, sequences: Iterable[Any], *,
                 max_batch_tokens: Optional[int] = ...,
                 return_states: bool = ...) -> Union[List[_Result], Iterator[_Result]]: ...


def forward_many(
    module: LSTM,
    sequences: Iterable[Any],
    *,
    max_batch_tokens: Optional[int] = None,
    return_states: bool = False,
) -> Union[List[_Result], Iterator[_Result]]:
    """Run ``module`` over many unbatched sequences of any lengths, in length-sorted batches.

    Parameters
    ----------
    module : fastlstm.LSTM
        Any configuration (``batch_first`` does not matter: each sequence is unbatched).
    sequences : list, tuple or iterable of array-like (L_i, input_size)
        NumPy arrays, torch tensors or nested lists; floating arrays of another precision
        are cast to the module's dtype, as in ``forward``.
    max_batch_tokens : int, optional
        The most timesteps (sum of the lengths) one batch holds; a longer sequence runs
        alone.  Default ``DEFAULT_BATCH_TOKENS`` (16384), chosen by measurement (docs/scale.md).
    return_states : bool, default=False
        Give each sequence's ``(output, (h_n, c_n))`` instead of its output alone.

    Returns
    -------
    list, or an iterator for an iterable without ``len``
        Each sequence's output ``(L_i, D * H_out)`` (torch tensors for torch tensors), in
        input order.  An iterator (a generator, say) is read a window of a few batches at
        a time and its results yielded in order, so that memory stays bounded.

    Raises
    ------
    TypeError
        If ``module`` is not a ``fastlstm.LSTM``, ``max_batch_tokens`` not a positive int, or
        ``sequences`` not iterable (or a mapping).
    ValueError, RuntimeError
        As ``forward`` for a sequence (not 2-D, not floating, wrong feature size, empty),
        the message starting with the sequence's index.

    Notes
    -----
    With several threads (``fastlstm.get_num_threads()``) and at least two batches' worth of
    timesteps per thread, the batches run side by side, each on a thread (or a group of
    threads) of its own, with no wait between threads at every timestep; the outputs are
    the same (docs/scale.md).

    Examples
    --------
    >>> import numpy as np
    >>> import fastlstm
    >>> rnn = fastlstm.LSTM(4, 8, rng=0)
    >>> rng = np.random.default_rng(0)
    >>> seqs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (5, 12, 1, 7)]
    >>> outs = fastlstm.forward_many(rnn, seqs)
    >>> [o.shape for o in outs]
    [(5, 8), (12, 8), (1, 8), (7, 8)]
    >>> bool(np.allclose(outs[1], rnn(seqs[1])[0], atol=1e-6))
    True
    """
    if not isinstance(module, LSTM):
        raise wrong_module("forward_many", "a fastlstm.LSTM", module)
    if max_batch_tokens is None:
        budget = DEFAULT_BATCH_TOKENS
    elif isinstance(max_batch_tokens, (bool, np.bool_)) or not isinstance(
            max_batch_tokens, (int, np.integer)) or max_batch_tokens < 1:
        raise TypeError(f"max_batch_tokens must be a positive int, got {max_batch_tokens!r}")
    else:
        budget = int(max_batch_tokens)
    if isinstance(sequences, Mapping):
        raise TypeError("forward_many expects a list or an iterable of sequences, got a "
                        f"{type(sequences).__name__} (pass its .values())")
    try:
        iterator = iter(sequences)
    except TypeError:
        raise TypeError("forward_many expects a list or an iterable of sequences, got "
                        f"{type(sequences).__name__}") from None
    # A list, an array, a set, dict.values(): finite, read at once in iteration order (a
    # pandas Series's [i] is by label, not by position).
    if hasattr(sequences, "__len__"):
        return _window(module, list(enumerate(iterator)), budget, bool(return_states))
    return _stream(module, iterator, budget, bool(return_states))
