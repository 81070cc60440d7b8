"""``fastlstm.dask`` on a real multi-process ``distributed.LocalCluster`` (and the local
schedulers): the same numbers as ``fastlstm.forward_many`` in one process, order and
partitions kept, the weights sent to each worker once per computation, fastlstm's threads
sized to each worker's share of the cores, and a worker killed mid-run.

Dask and distributed come with the ``dask`` extra (in the ``test`` extra).  Outside CI the
module skips without them; in CI (``CI=true``) that is an error, so the tests never silently
vanish.  One cluster (2 workers x 1 thread, processes) serves the whole module.
"""

import collections
import logging
import math
import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from _helpers import IN_CI, batch_invariant

try:
    import dask
    import dask.array as da
    import dask.bag as db
    import distributed
except ImportError:
    if IN_CI:
        raise RuntimeError("dask and distributed are required in CI (CI=true): install the "
                           "'dask' extra") from None
    pytest.skip("dask/distributed are not installed (pip install -e '.[dask]')",
                allow_module_level=True)

import fastlstm
import fastlstm.dask

N_WORKERS, WORKER_THREADS = 2, 1

CONFIGS = {
    "plain": dict(),
    "bidirectional": dict(bidirectional=True),
    "2layers": dict(num_layers=2),
    "proj": dict(proj_size=5),
    "2layers-bidir-proj": dict(num_layers=2, bidirectional=True, proj_size=6),
}

# What happened in this process, by the tag of the module it happened to: how many times
# the module was unpickled, and (pid, fastlstm threads, usable cores) at each forward.
_LOADS = collections.Counter()
_CALLS = collections.defaultdict(list)


class Recording(fastlstm.LSTM):
    """A fastlstm.LSTM that counts its unpicklings and records the threads of its calls
    in the process it runs in (workers import this module to unpickle it)."""

    def __setstate__(self, state):
        super().__setstate__(state)
        _LOADS[self.tag] += 1

    def forward(self, input, hx=None):
        _CALLS[self.tag].append((os.getpid(), fastlstm.get_num_threads(), _cores()))
        if getattr(self, "delay", 0):
            time.sleep(self.delay)  # a slow task without using the CPU
        return super().forward(input, hx)


def _cores():
    """The CPUs this process may use: its affinity mask and its cgroup CPU quota."""
    quota = fastlstm._threads.cgroup_cpu_limit()
    cores = len(os.sched_getaffinity(0))
    return min(cores, max(1, math.ceil(quota))) if quota else cores


def recording(delay=0.0, **config):
    module = Recording(8, 16, rng=0, **config)
    module.tag = uuid.uuid4().hex
    module.delay = delay
    return module


def _loads(tag):
    return _LOADS[tag]


def _calls(tag):
    return list(_CALLS[tag])


async def _die():
    os._exit(1)  # a coroutine: client.run(..., wait=False) takes only these


def _set_threads(n):
    fastlstm.set_num_threads(n)
    return fastlstm.get_num_threads()


@pytest.fixture(scope="module")
def client():
    saved = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=N_WORKERS, threads_per_worker=WORKER_THREADS,
                                      processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster:
            with distributed.Client(cluster) as c:
                yield c
    finally:  # the Nanny sets OMP_NUM_THREADS=1 in this process: the other tests need theirs
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def one_thread():
    """fastlstm on one thread in this process (the workers' count), restored after."""
    fastlstm.set_num_threads(1)
    try:
        yield
    finally:
        fastlstm.set_num_threads(None)


def _sequences(count, seed, low=1, high=40, size=8):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(n), size)).astype(np.float32)
            for n in rng.integers(low, high, count)]


def _partitions(bag):
    """The items of each partition of a computed-from-sequence bag (run locally)."""
    return [list(p) for p in dask.compute(*bag.to_delayed(), scheduler="sync")]


def test_import_fastlstm_does_not_import_dask():
    code = ("import sys, fastlstm; assert 'dask' not in sys.modules; "
            "import fastlstm.dask; assert 'dask' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_bag_matches_forward_many_and_single_calls(client, one_thread, config):
    module = fastlstm.LSTM(8, 16, rng=1, **CONFIGS[config])
    seqs = _sequences(45, seed=2)
    bag = db.from_sequence(seqs, partition_size=7)  # 7 partitions, the last one of 3
    out = fastlstm.dask.forward_many(module, bag)
    assert isinstance(out, db.Bag) and out.npartitions == bag.npartitions
    parts = dask.compute(*out.to_delayed())  # on the cluster, partition by partition
    assert [len(p) for p in parts] == [len(p) for p in _partitions(bag)]
    got = [y for p in parts for y in p]
    assert len(got) == len(seqs)
    # The same batches in this process: exactly equal.
    for part, inputs in zip(parts, _partitions(bag)):
        for y, ref in zip(part, fastlstm.forward_many(module, inputs)):
            np.testing.assert_array_equal(y, ref)
    # Other batches (everything at once, or one at a time): the same bits where every
    # product is fastlstm's own, else equal to rounding.
    tol = 0.0 if batch_invariant() else 1e-6
    for y, ref, seq in zip(got, fastlstm.forward_many(module, seqs), seqs):
        assert y.shape == (len(seq), module._num_directions * module._out_size)
        assert y.dtype == np.float32
        assert np.abs(y - ref).max() <= tol
        assert np.abs(y - module(seq)[0]).max() <= tol


def test_bag_order_with_lazy_partitions_and_budget(client, one_thread):
    module = fastlstm.LSTM(8, 16, rng=3)
    seqs = _sequences(30, seed=4, high=60)
    # Partitions that are iterators (a map), and a budget that splits them into many batches.
    bag = db.from_sequence(range(len(seqs)), npartitions=4).map(lambda i: seqs[i])
    got = fastlstm.dask.forward_many(module, bag, max_batch_tokens=50).compute()
    assert len(got) == len(seqs)
    for y, seq in zip(got, seqs):
        assert np.abs(y - module(seq)[0]).max() <= 1e-6


def test_bag_return_states(client, one_thread):
    module = fastlstm.LSTM(8, 16, num_layers=2, bidirectional=True, rng=5)
    seqs = _sequences(20, seed=6)
    got = fastlstm.dask.forward_many(module, db.from_sequence(seqs, partition_size=6),
                                     return_states=True).compute()
    assert len(got) == len(seqs)
    for (y, (h, c)), seq in zip(got, seqs):
        ref, (h_ref, c_ref) = module(seq)
        assert h.shape == (4, 16) and c.shape == (4, 16)
        for a, b in ((y, ref), (h, h_ref), (c, c_ref)):
            assert np.abs(a - b).max() <= 1e-6


def test_bag_of_torch_tensors_gives_tensors(client, torch):
    module = fastlstm.LSTM(8, 16, rng=7)
    seqs = [torch.from_numpy(s) for s in _sequences(9, seed=8)]
    got = fastlstm.dask.forward_many(module, db.from_sequence(seqs, npartitions=3)).compute()
    assert all(isinstance(y, torch.Tensor) for y in got)
    assert np.abs(got[4].numpy() - module(seqs[4].numpy())[0]).max() <= 1e-6


def _oracle(module, x, lengths):
    """Each row packed to its length, run, padded with zeros (as torch would)."""
    packed = fastlstm.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = module(packed)
    padded, _ = fastlstm.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return padded


@pytest.mark.parametrize("config", ["plain", "2layers-bidir-proj"])
@pytest.mark.parametrize("how", ["no-lengths", "numpy-lengths", "dask-lengths"])
def test_array_matches_packed_oracle(client, config, how):
    module = fastlstm.LSTM(8, 16, rng=9, **CONFIGS[config])
    rng = np.random.default_rng(10)
    x = rng.standard_normal((23, 17, 8)).astype(np.float32)
    lengths = rng.integers(1, 18, 23)
    lengths[3] = 17
    arg = {"no-lengths": None, "numpy-lengths": lengths,
           "dask-lengths": da.from_array(lengths, chunks=5)}[how]
    y = fastlstm.dask.forward_array(module, da.from_array(x, chunks=(6, 17, 8)), arg)
    width = module._num_directions * module._out_size
    assert y.shape == (23, 17, width) and y.chunks[0] == (6, 6, 6, 5)
    assert y.dtype == np.float32
    got = y.compute()
    ref = _oracle(module, x, np.full(23, 17) if arg is None else lengths)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-6
    if arg is not None:
        past = np.arange(17)[None, :] >= lengths[:, None]
        assert not got[past].any()  # zeros past each row's length


def test_array_float64_input_gives_module_dtype(client):
    module = fastlstm.LSTM(8, 16, rng=11, dtype=np.float64)
    x = np.random.default_rng(12).standard_normal((5, 4, 8)).astype(np.float32)
    got = fastlstm.dask.forward_array(module, da.from_array(x, chunks=(2, 4, 8))).compute()
    assert got.dtype == np.float64
    assert np.abs(got - module(x.astype(np.float64).transpose(1, 0, 2))[0].transpose(
        1, 0, 2)).max() <= 1e-12


def test_errors():
    module = fastlstm.LSTM(8, 16, rng=0)
    bag = db.from_sequence(_sequences(4, seed=0))
    x = da.zeros((4, 5, 8), chunks=(2, 5, 8), dtype=np.float32)
    with pytest.raises(TypeError, match="fastlstm.LSTM"):
        fastlstm.dask.forward_many(object(), bag)
    with pytest.raises(TypeError, match="fastlstm.LSTM"):
        fastlstm.dask.forward_array("model", x)
    with pytest.raises(TypeError, match="dask.bag.Bag"):
        fastlstm.dask.forward_many(module, _sequences(4, seed=0))
    with pytest.raises(TypeError, match="dask.array.Array"):
        fastlstm.dask.forward_array(module, np.zeros((4, 5, 8), np.float32))
    with pytest.raises(TypeError, match="max_batch_tokens"):
        fastlstm.dask.forward_many(module, bag, max_batch_tokens=0)
    with pytest.raises(ValueError, match="chunked along N only"):
        fastlstm.dask.forward_array(module, x.rechunk((2, 2, 8)))
    with pytest.raises(ValueError, match="chunked along N only"):
        fastlstm.dask.forward_array(module, x.rechunk((2, 5, 4)))
    with pytest.raises(ValueError, match="input_size"):
        fastlstm.dask.forward_array(module, da.zeros((4, 5, 7), chunks=(2, 5, 7)))
    with pytest.raises(ValueError, match=r"\(N, L, input_size\)"):
        fastlstm.dask.forward_array(module, x[0])
    with pytest.raises(ValueError, match="floating"):
        fastlstm.dask.forward_array(module, x.astype(np.int32))
    with pytest.raises(ValueError, match="4 integers"):
        fastlstm.dask.forward_array(module, x, [5, 5, 5])
    with pytest.raises(ValueError, match="4 integers"):
        fastlstm.dask.forward_array(module, x, [5.0, 5, 5, 5])
    with pytest.raises(ValueError, match=r"lengths\[2\] = 6 is outside 1\.\.5"):
        fastlstm.dask.forward_array(module, x, [5, 5, 6, 5])
    with pytest.raises(ValueError, match=r"lengths\[1\] = 18446744073709551615 is outside"):
        fastlstm.dask.forward_array(module, x, np.array([5, 2**64 - 1, 5, 5], np.uint64))
    with pytest.raises(ValueError, match="no timesteps"):  # when the graph is built
        fastlstm.dask.forward_array(module, da.zeros((4, 0, 8), chunks=(2, 0, 8)))
    empty = db.from_delayed([])
    assert fastlstm.dask.forward_many(module, empty).compute(scheduler="sync") == []
    with pytest.raises(ValueError, match=r"lengths\[3\] = 0 is outside 1\.\.5"):  # when run
        fastlstm.dask.forward_array(module, x, da.from_array(np.array([5, 5, 5, 0]), chunks=2)
                                    ).compute(scheduler="sync")


def test_error_in_a_sequence_names_partition_and_sequence(client):
    module = fastlstm.LSTM(8, 16, rng=0)
    seqs = _sequences(10, seed=13)
    seqs[7] = seqs[7][:, :5]  # partition 1 (items 5..9), its sequence 2
    out = fastlstm.dask.forward_many(module, db.from_sequence(seqs, partition_size=5))
    with pytest.raises(RuntimeError, match=r"partition 1, sequence 2: input.size\(-1\) must be "
                                           r"equal to input_size. Expected 8, got 5"):
        out.compute()


def test_weights_reach_each_worker_once_per_computation(client):
    for make in ("bag", "array"):
        module = recording()
        if make == "bag":  # 16 partitions: a module sent with every task arrives 8 times
            out = fastlstm.dask.forward_many(
                module, db.from_sequence(_sequences(32, seed=14), npartitions=16))
        else:
            x = da.from_array(np.ones((32, 6, 8), np.float32), chunks=(2, 6, 8))
            out = fastlstm.dask.forward_array(module, x)
        out.compute()
        calls = client.run(_calls, module.tag)
        loads = client.run(_loads, module.tag)
        assert sum(len(c) for c in calls.values()) >= 16, calls
        assert all(n == 1 for w, n in loads.items() if calls[w]), (make, loads)
        assert all(n <= 1 for n in loads.values()), (make, loads)


def test_threads_sized_to_the_workers_share_and_restored(client):
    before = client.run(_set_threads, 64)  # what a careless setting would oversubscribe with
    try:
        module = recording()
        fastlstm.dask.forward_many(
            module, db.from_sequence(_sequences(12, seed=15), npartitions=6)).compute()
        calls = [c for cs in client.run(_calls, module.tag).values() for c in cs]
        assert calls
        for _, threads, cores in calls:
            assert threads == max(1, cores // (N_WORKERS * WORKER_THREADS))
            assert N_WORKERS * WORKER_THREADS * threads <= max(cores, N_WORKERS)
        assert set(client.run(fastlstm.get_num_threads).values()) == {64}  # restored
        # A task of a graph built without the cluster's hosts asks the scheduler for them.
        asked = client.submit(fastlstm.dask.task_threads, pure=False).result()
        assert asked == max(1, calls[0][2] // (N_WORKERS * WORKER_THREADS))
    finally:
        client.run(_set_threads, None)
    assert set(before.values()) == {64}


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_threads_sized_on_local_schedulers(scheduler):
    cores = _cores()
    module = recording()
    seqs = _sequences(12, seed=16)
    fastlstm.set_num_threads(64)
    try:
        out = fastlstm.dask.forward_many(module, db.from_sequence(seqs, npartitions=4))
        got = out.compute(scheduler=scheduler, num_workers=2)
        assert fastlstm.get_num_threads() == 64  # restored
    finally:
        fastlstm.set_num_threads(None)
    threads = {t for _, t, _ in _CALLS[module.tag]}
    assert threads == {cores if scheduler == "sync" else max(1, cores // 2)}
    for y, seq in zip(got, seqs):
        assert np.abs(y - module(seq)[0]).max() <= 1e-6


@pytest.mark.parametrize("kind", ["futures", "multiprocessing"])
def test_threads_sized_on_a_users_thread_pool(kind):
    from concurrent.futures import ThreadPoolExecutor
    from multiprocessing.pool import ThreadPool

    pool = ThreadPoolExecutor(1) if kind == "futures" else ThreadPool(1)
    try:
        bag = db.from_sequence([0, 1], npartitions=2).map(
            lambda _: fastlstm.dask.task_threads())
        with dask.config.set(pool=pool):
            got = bag.compute(scheduler="threads")
    finally:
        pool.shutdown() if kind == "futures" else pool.terminate()
    assert got == [_cores()] * 2  # one task thread: all the cores


def test_threads_sized_on_a_new_pool_threads_first_task():
    # Each new calling thread gets a pool of its own, whose thread runs its first task
    # before the pool lists it: sized by the pool all the same.
    got = []

    def run():
        bag = db.from_sequence([0], npartitions=1).map(lambda _: fastlstm.dask.task_threads())
        got.append(bag.compute(scheduler="threads", num_workers=1)[0])

    for _ in range(3):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    assert got == [_cores()] * 3


def test_worker_killed_mid_run_result_complete_and_identical(client, one_thread):
    module = recording()
    seqs = _sequences(120, seed=17)
    bag = db.from_sequence(seqs, npartitions=40)
    expected = [y for p in _partitions(bag) for y in fastlstm.forward_many(module, p)]
    module.delay = 0.03  # 40 partitions x 0.03 s each on the cluster (sleeping, not computing)
    future = client.compute(fastlstm.dask.forward_many(module, bag))
    deadline = time.monotonic() + 30
    victim = None
    while victim is None and time.monotonic() < deadline and not future.done():
        # A worker running a task and holding finished partitions, which are then lost too.
        held, busy = client.has_what(), client.processing()
        victim = next((w for w, keys in busy.items() if keys and sum(
            "fastlstm-forward-many" in str(k) for k in held.get(w, ())) >= 3), None)
        time.sleep(0.02)
    assert victim is not None and not future.done()
    client.run(_die, workers=[victim], wait=False)
    got = future.result(timeout=120)
    assert len(got) == len(expected)
    for y, ref in zip(got, expected):
        np.testing.assert_array_equal(y, ref)
    client.wait_for_workers(N_WORKERS, timeout=60)  # the nanny brings a new worker
    assert victim not in client.scheduler_info(n_workers=-1)["workers"]
