"""``fastlstm.dask``: :func:`fastlstm.forward_many` over a Dask bag or array, on any scheduler.

``import fastlstm`` never imports Dask; ``import fastlstm.dask`` does (``pip install
'fastlstm[dask]'``).  Each task runs :func:`fastlstm.forward_many` on its partition (or on the
rows of its block), with the module's weights in the graph once and fastlstm's threads sized
to the task's share of the machine's cores.  docs/scale.md has the guide and measurements.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional

import numpy as np

from fastlstm import _threads
from fastlstm.batching import forward_many as _forward_many
from fastlstm.lstm import LSTM

try:
    import dask
    import dask.array as da
    import dask.bag as db
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("fastlstm.dask needs Dask: pip install 'fastlstm[dask]' "
                      f"(dask[array,bag] and distributed); {exc}") from exc

__all__ = ["forward_array", "forward_many"]

#: Seconds a worker keeps the cluster's threads per host that it asked the scheduler for.
_HOSTS_TTL = 30.0

_hosts_lock = threading.Lock()
_hosts_cache: Dict[str, Any] = {"at": -_HOSTS_TTL, "hosts": {}}

_threads_lock = threading.Lock()
_threads_depth = 0
_threads_saved: Optional[int] = None


# ------------------------------------------------------------------ threads per task
def _cluster_hosts() -> Optional[Dict[str, int]]:
    """{host: worker threads on it} of the active distributed client, or None."""
    distributed = sys.modules.get("distributed")
    if distributed is None:  # no client can exist without distributed imported
        return None
    try:
        client = distributed.default_client()
    except ValueError:
        return None
    return _hosts_of(client)


def _hosts_of(client: Any) -> Optional[Dict[str, int]]:
    """{host: worker threads on it} from ``client.scheduler_info``, or None."""
    try:
        try:
            info = client.scheduler_info(n_workers=-1)
        except TypeError:  # distributed before 2025: every worker without asking
            info = client.scheduler_info()
        hosts: Dict[str, int] = {}
        for worker in info.get("workers", {}).values():
            hosts[worker["host"]] = hosts.get(worker["host"], 0) + int(worker["nthreads"])
    except Exception:  # noqa: BLE001 - an asynchronous or closing client: decide in the task
        return None
    return hosts or None


def _worker_slots(worker: Any, hosts: Optional[Dict[str, int]]) -> int:
    """Task threads of all the workers on this worker's host."""
    from distributed.comm import get_address_host

    host = get_address_host(worker.address)
    own = int(worker.state.nthreads)
    if hosts and host in hosts:
        return max(hosts[host], own)
    # A host unknown when the graph was built (no client then, or a worker added since):
    # ask the scheduler once in a while through the worker's own client.
    with _hosts_lock:
        if time.monotonic() - _hosts_cache["at"] > _HOSTS_TTL:
            from distributed import get_client

            try:
                asked = _hosts_of(get_client())
            except Exception:  # noqa: BLE001 - no answer: assumed full below
                asked = None
            _hosts_cache["hosts"] = asked or {}
            _hosts_cache["at"] = time.monotonic()
        known = _hosts_cache["hosts"].get(host)
    # Not known even to the scheduler: as if other workers had every core (one thread).
    return max(known, own) if known else max(own, os.cpu_count() or 1)


def _local_slots() -> int:
    """Task threads of a local Dask scheduler running the current task."""
    thread = threading.current_thread()
    threaded = sys.modules.get("dask.threaded")
    if threaded is not None:
        # dask's own pools, and a user's (dask.config.set(pool=...)): a thread pool of
        # concurrent.futures, or of multiprocessing (threads in _pool, size _processes).
        pools = [threaded.default_pool, dask.config.get("pool", None)]
        for by_size in list(threaded.pools.values()):
            pools.extend(list(by_size.values()))
        for pool in pools:
            # A new pool thread runs its first task before the pool lists it: its name
            # (the pool's prefix, "_", its number) tells it too.
            prefix = getattr(pool, "_thread_name_prefix", None)
            if thread in getattr(pool, "_threads", ()) or (
                    prefix and thread.name.startswith(prefix + "_")):
                return max(1, int(pool._max_workers))
            if thread in (getattr(pool, "_pool", None) or ()):
                return max(1, int(pool._processes))
    if thread is threading.main_thread() and multiprocessing.parent_process() is None:
        return 1  # the synchronous scheduler: one task at a time, in the caller's thread
    # The processes scheduler, or a pool of the user's: as many as dask would start (the
    # pool's size does not reach its processes: a smaller num_workers is not seen here).
    return max(1, int(dask.config.get("num_workers", None) or dask.system.CPU_COUNT))


def task_threads(hosts: Optional[Dict[str, int]] = None) -> int:
    """The fastlstm threads a task running here gets: the cores this process may use (its
    affinity mask and cgroup CPU quota) over the task threads of every Dask worker on this
    host, or of the local scheduler running the task, at least 1.

    Call it inside a task: in a ``client.run`` function there is no current task, and the
    answer is that of the processes scheduler (the cores over ``dask.system.CPU_COUNT``).

    Parameters
    ----------
    hosts : dict of str to int, optional
        Worker threads per host, as the scheduler knew them when the graph was built; a
        host missing from it is asked of the scheduler (at most every 30 s per process).

    Returns
    -------
    int
    """
    slots = 0
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            worker = distributed.get_worker()
        except ValueError:
            worker = None
        if worker is not None:
            slots = _worker_slots(worker, hosts)
    if not slots:
        slots = _local_slots()
    cores = _threads._cap() or os.cpu_count() or 1
    return max(1, cores // slots)


@contextmanager
def _sized_threads(hosts: Optional[Dict[str, int]]) -> Iterator[int]:
    """fastlstm on ``task_threads(hosts)`` threads while the block runs, the setting before
    restored after the last concurrent task of this process ends (it is process-wide)."""
    global _threads_depth, _threads_saved
    n = task_threads(hosts)
    with _threads_lock:
        if _threads_depth == 0:
            _threads_saved = _threads._num_threads
        _threads_depth += 1
        _threads.set_num_threads(n)
    try:
        yield n
    finally:
        with _threads_lock:
            _threads_depth -= 1
            if _threads_depth == 0:
                _threads.set_num_threads(_threads_saved)


# ------------------------------------------------------------------ tasks
def _partition_task(items: Iterable[Any], index: Iterable[int], module: LSTM,
                    hosts: Optional[Dict[str, int]], budget: Optional[int],
                    return_states: bool) -> List[Any]:
    """One bag partition through ``fastlstm.forward_many``; errors name the partition."""
    part = next(iter(index))
    with _sized_threads(hosts):
        try:
            return list(_forward_many(module, list(items), max_batch_tokens=budget,
                                      return_states=return_states))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise type(exc)(f"partition {part}, {exc}") from None


def _block_task(x: np.ndarray, lengths: Optional[np.ndarray], module: LSTM,
                hosts: Optional[Dict[str, int]], budget: Optional[int],
                block_info: Optional[Dict[Any, Any]] = None) -> np.ndarray:
    """One block of rows ``(n, L, input_size)``, each run to its length, zeros after."""
    first = block_info[0]["array-location"][0][0] if block_info else 0
    n, steps = x.shape[0], x.shape[1]
    lengths = np.full(n, steps, dtype=np.int64) if lengths is None else lengths.reshape(n)
    bad = np.flatnonzero((lengths < 1) | (lengths > steps))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"forward_array: lengths[{first + i}] = {lengths[i]} is outside "
                         f"1..{steps} (the padded length)")
    out = np.zeros((n, steps, module._out_size * module._num_directions),
                   dtype=module.dtype)
    rows = [x[i, :int(lengths[i])] for i in range(n)]
    with _sized_threads(hosts):
        try:
            results = _forward_many(module, rows, max_batch_tokens=budget)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise type(exc)(f"the block from row {first}, {exc}") from None
    for i, y in enumerate(results):
        out[i, :int(lengths[i])] = y
    return out


# ------------------------------------------------------------------ the API
def _check(module: Any, max_batch_tokens: Any) -> None:
    if not isinstance(module, LSTM):
        raise TypeError(f"expected a fastlstm.LSTM, got {type(module).__name__}")
    if max_batch_tokens is not None and (
            isinstance(max_batch_tokens, (bool, np.bool_))
            or not isinstance(max_batch_tokens, (int, np.integer)) or max_batch_tokens < 1):
        raise TypeError(f"max_batch_tokens must be a positive int, got {max_batch_tokens!r}")


def _in_graph(module: LSTM) -> Any:
    # One graph key that all tasks share: sent to a worker once, not per task, and recomputable.
    return dask.delayed(module, name=f"fastlstm-module-{dask.base.tokenize(module)}")


def forward_many(module: LSTM, bag: Any, *, max_batch_tokens: Optional[int] = None,
                 return_states: bool = False) -> Any:
    """:func:`fastlstm.forward_many` over a Dask bag of sequences, partition by partition.

    Parameters
    ----------
    module : fastlstm.LSTM
        Any configuration; in the graph once, so its weights reach each worker once per
        computation.
    bag : dask.bag.Bag
        Unbatched sequences ``(L_i, input_size)`` (NumPy arrays, torch tensors or nested
        lists), of any lengths.
    max_batch_tokens : int, optional
        The most timesteps of one batch within a partition, as in
        :func:`fastlstm.forward_many` (default 16384).
    return_states : bool, default=False
        Give each sequence's ``(output, (h_n, c_n))`` instead of its output alone.

    Returns
    -------
    dask.bag.Bag
        Each sequence's output ``(L_i, D * H_out)`` (or output and states), in the order and
        partitions of ``bag``.  Each task sets fastlstm's threads to its share of the
        machine's cores while it runs (see docs/scale.md).

    Raises
    ------
    TypeError
        If ``module`` is not a ``fastlstm.LSTM``, ``bag`` not a Dask bag, or
        ``max_batch_tokens`` not a positive int.
    ValueError, RuntimeError
        When computed, for a sequence that ``forward`` refuses, with
        ``fastlstm.forward_many``'s message prefixed by the partition.

    Examples
    --------
    >>> import dask.bag as db
    >>> import numpy as np
    >>> import fastlstm
    >>> import fastlstm.dask
    >>> rnn = fastlstm.LSTM(4, 8, rng=0)
    >>> rng = np.random.default_rng(0)
    >>> seqs = [rng.standard_normal((n, 4)).astype(np.float32) for n in (5, 12, 1, 7, 3)]
    >>> outs = fastlstm.dask.forward_many(rnn, db.from_sequence(seqs, npartitions=2))
    >>> [o.shape for o in outs.compute(scheduler="sync")]
    [(5, 8), (12, 8), (1, 8), (7, 8), (3, 8)]
    """
    _check(module, max_batch_tokens)
    if not isinstance(bag, db.Bag):
        raise TypeError(f"forward_many expects a dask.bag.Bag, got {type(bag).__name__} "
                        "(fastlstm.forward_many takes lists and iterators)")
    if bag.npartitions == 0:  # nothing to run (db.from_delayed([])): as empty
        return bag
    index = db.from_sequence(range(bag.npartitions), npartitions=bag.npartitions)
    return bag.map_partitions(_partition_task, index, _in_graph(module), _cluster_hosts(),
                              max_batch_tokens, bool(return_states),
                              token="fastlstm-forward-many")


def forward_array(module: LSTM, x: Any, lengths: Any = None, *,
                  max_batch_tokens: Optional[int] = None) -> Any:
    """Run ``module`` over a Dask array of padded batches, block by block.

    Parameters
    ----------
    module : fastlstm.LSTM
        Any configuration (the input is batch-first whatever its ``batch_first``).
    x : dask.array.Array
        ``(N, L, input_size)`` floating, chunked along N only.
    lengths : array-like or dask.array.Array of N ints, optional
        Each row's real length, in 1..L; None: all rows are L long.
    max_batch_tokens : int, optional
        The most timesteps of one batch within a block (default 16384).

    Returns
    -------
    dask.array.Array
        ``(N, L, D * H_out)`` of the module's dtype, chunked as ``x`` along N: each row run
        alone to its length (as a packed batch would), zeros after it, as
        ``pad_packed_sequence`` gives.

    Raises
    ------
    TypeError
        If ``module`` is not a ``fastlstm.LSTM``, ``x`` not a Dask array, or
        ``max_batch_tokens`` not a positive int.
    ValueError
        If ``x`` is not 3-D, not floating, of another input size, or chunked along L or the
        features; if ``lengths`` is not N integers in 1..L (for a Dask array, when
        computed).

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> import fastlstm
    >>> import fastlstm.dask
    >>> rnn = fastlstm.LSTM(4, 8, rng=0)
    >>> x = da.from_array(np.ones((6, 5, 4), dtype=np.float32), chunks=(3, 5, 4))
    >>> y = fastlstm.dask.forward_array(rnn, x, lengths=[5, 2, 1, 5, 3, 4])
    >>> y.shape, y.chunks[0]
    ((6, 5, 8), (3, 3))
    >>> out = y.compute(scheduler="sync")
    >>> bool((out[1, 2:] == 0).all())
    True
    """
    _check(module, max_batch_tokens)
    if not isinstance(x, da.Array):
        raise TypeError(f"forward_array expects a dask.array.Array, got {type(x).__name__}")
    if x.ndim != 3:
        raise ValueError(f"forward_array expects x of shape (N, L, input_size), got {x.ndim}D "
                         f"{x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"forward_array: x must be floating, got {x.dtype}")
    steps, features = x.shape[1], x.shape[2]
    if steps == 0:
        raise ValueError(f"forward_array: x has no timesteps, shape {x.shape} (every row "
                         "needs at least one)")
    if features != module.input_size:
        raise ValueError(f"forward_array: x has {features} features, the module's input_size "
                         f"is {module.input_size}")
    if len(x.chunks[1]) != 1 or len(x.chunks[2]) != 1:
        raise ValueError("forward_array: x must be chunked along N only (a row's timesteps "
                         f"and features in one block), got chunks {x.chunks[1:]} along L and "
                         "the features: x.rechunk({1: -1, 2: -1})")
    args: List[Any] = [x]
    if lengths is not None:
        if any(np.isnan(c) for c in x.chunks[0]):
            raise ValueError("forward_array: x has unknown chunk sizes along N, which lengths "
                             "must match: call x.compute_chunk_sizes() first")
        n = x.shape[0]
        if isinstance(lengths, da.Array):
            if lengths.ndim != 1 or lengths.shape[0] != n or lengths.dtype.kind not in "iu":
                raise ValueError(f"forward_array: lengths must be {n} integers, got "
                                 f"{lengths.dtype} of shape {lengths.shape}")
            lengths = lengths.rechunk((x.chunks[0],))
        else:
            array = np.asarray(lengths)
            if array.shape != (n,) or (array.size and array.dtype.kind not in "iu"):
                raise ValueError(f"forward_array: lengths must be {n} integers, got "
                                 f"{array.dtype} of shape {array.shape}")
            bad = np.flatnonzero((array < 1) | (array > steps))  # before the cast: uint64
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"forward_array: lengths[{i}] = {array[i]} is outside "
                                 f"1..{steps} (the padded length)")
            array = array.astype(np.int64)
            lengths = da.from_array(array, chunks=(x.chunks[0],))
        args.append(lengths[:, None, None])  # (N, 1, 1): map_blocks aligns trailing axes
    else:
        args.append(None)
    width = module._out_size * module._num_directions
    return da.map_blocks(
        _block_task, *args, _in_graph(module), _cluster_hosts(), max_batch_tokens,
        dtype=module.dtype, chunks=(x.chunks[0], (steps,), (width,)),
        meta=np.empty((0, 0, 0), dtype=module.dtype), token="fastlstm-forward-array")
