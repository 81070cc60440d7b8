"""``fastlstm bench --throughput``: many variable-length sequences, five ways to run them.

The workload: ``sequences`` (20,000) unbatched float32 sequences, input size 80, their
lengths log-uniform from 5 to 500 (seeded), through one 2-layer LSTM with hidden size 256
(a ``torch.nn.LSTM`` with weights from a seeded torch generator, and
``fastlstm.LSTM.from_torch`` of it).  Each variant turns the list of sequences into the
list of their outputs ``(L_i, 256)``, in input order, each output its own array:

* ``forward_many``: ``fastlstm.forward_many(module, seqs)`` (sorted by length, packed
  batches of at most ``DEFAULT_BATCH_TOKENS`` timesteps);
* ``loop``: ``module(seq)[0]`` for each sequence, a Python loop of single calls;
* ``padded``: batches of 64 in input order, ``fastlstm.pad_sequence`` to their longest,
  one call per batch, each sequence's rows of the output copied out;
* ``torch packed``: batches of 64 in input order,
  ``torch.nn.utils.rnn.pack_sequence(batch, enforce_sorted=False)`` through the
  ``torch.nn.LSTM`` under ``torch.no_grad()``, then ``unpack_sequence`` and a copy of each
  output (as the padded variant, so that no batch's padded output stays alive);
* ``dask``: ``fastlstm.dask.forward_many(module, bag)`` on a
  ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``, the bag
  ``dask.bag.from_sequence(seqs, npartitions=8)`` (4 per worker), each partition's outputs
  fetched as soon as it is done (``distributed.as_completed``); timed from building the
  bag to having every output back in this process (the cluster's start-up is not timed).
  n/a, with the reason, where dask, distributed or ``fastlstm.dask`` cannot be imported or
  the cluster cannot start.

fastlstm and torch run on the same threads here (``fastlstm.set_num_threads``,
``torch.set_num_threads``, both restored after); in the dask workers ``fastlstm.dask``
sizes each task's threads (the cores over the host's task threads: 1 on 2 cores), recorded
(``worker_fastlstm_threads``).

Check first: each variant runs on the first ``check`` (200) sequences and its outputs are
compared with ``forward_many``'s: the max abs difference is recorded, and a variant that
differs by more than :data:`TOLERANCE` (or fails) is not timed and counts as failed.  Then
every variant runs once per round over the same timed sequences, ``rounds`` rounds, the
order of the variants rotating from round to round, with the process let go idle before
each run (``timing.settle``) and no garbage collection inside the timed rounds; each
variant's time is the median over its rounds.  The timed sequences are all of them, or with
a ``budget`` the first K, K chosen from the check's times so that the rounds take about
``budget`` seconds (never fewer than the check's sequences): every variant is always timed
on the same sequences, and the result says how many.

:data:`TARGETS` holds the issue's targets (a missed one is a finding, not a failure):
forward_many >= 3x the loop, >= 1.3x the padded batches and >= 3x torch's packed batches,
in sequences per second; dask >= 0.8x forward_many with identical outputs.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import signal
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import fastlstm
from fastlstm import _threads
from fastlstm._bench.timing import gc_paused, rotation, settle
from fastlstm.cli import one_line

__all__ = ["DASK", "FORWARD_MANY", "LOOP", "PADDED", "TARGETS", "TOLERANCE", "TORCH",
           "VARIANTS", "header_lines", "make_sequences", "measure_throughput",
           "summary_line", "throughput_table"]

FORWARD_MANY, LOOP, PADDED, TORCH, DASK = ("forward_many", "loop", "padded", "torch packed",
                                           "dask")
#: The variants, in the table's order.
VARIANTS = (FORWARD_MANY, LOOP, PADDED, TORCH, DASK)

#: The workload of the issue: sequences, input size, hidden size, layers, lengths.
SEQUENCES = 20000
INPUT = 80
HIDDEN = 256
LAYERS = 2
MIN_LENGTH, MAX_LENGTH = 5, 500
#: Sequences per batch of the padded and torch variants.
BATCH = 64
#: Sequences of the check against forward_many's outputs.
CHECK = 200
ROUNDS = 3
#: The dask cluster: worker processes, one thread each, and bag partitions per worker.
WORKERS = 2
PARTITIONS_PER_WORKER = 4

#: Largest max abs difference from forward_many's outputs of a variant that is timed (the
#: fastlstm variants are bit-identical here; torch's packed LSTM is ~1e-7 off).
TOLERANCE = 1e-5

_SETTLE_S = 0.05  # before each timed run, then until the process is idle


@dataclass(frozen=True)
class Target:
    """``rate(numerator) / rate(denominator) >= bound`` (and, with ``identical``, outputs
    equal to forward_many's bit for bit), shown on the row of ``variant``."""

    variant: str
    numerator: str
    denominator: str
    bound: float
    identical: bool = False

    def text(self) -> str:
        if self.numerator == FORWARD_MANY:
            return f"forward_many >= {self.bound:g}x"
        return f">= {self.bound:g}x forward_many" + (", identical" if self.identical else "")


#: The issue's targets, in sequences per second.
TARGETS = (Target(LOOP, FORWARD_MANY, LOOP, 3.0),
           Target(PADDED, FORWARD_MANY, PADDED, 1.3),
           Target(TORCH, FORWARD_MANY, TORCH, 3.0),
           Target(DASK, DASK, FORWARD_MANY, 0.8, identical=True))


def _labels(batch: int, workers: int) -> Dict[str, str]:
    return {FORWARD_MANY: "fastlstm.forward_many", LOOP: "loop of module(seq)",
            PADDED: f"padded batches of {batch}", TORCH: f"torch packed batches of {batch}",
            DASK: f"fastlstm.dask {workers} workers x 1 thread"}


# ---------------------------------------------------------------- workload
def make_sequences(count: int, *, input_size: int = INPUT, min_length: int = MIN_LENGTH,
                   max_length: int = MAX_LENGTH, seed: int = 0) -> List[np.ndarray]:
    """``count`` float32 sequences ``(L_i, input_size)``, standard normal, their lengths
    log-uniform from ``min_length`` to ``max_length`` (rounded), from ``seed``.

    The sequences are consecutive row blocks of one array (each C-contiguous), so that
    making 20,000 of them is one allocation.
    """
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(math.log(min_length), math.log(max_length), count))
    lengths = np.clip(np.rint(lengths), min_length, max_length).astype(np.int64)
    data = rng.standard_normal((int(lengths.sum()), input_size), dtype=np.float32)
    ends = np.cumsum(lengths)
    return [data[end - n:end] for end, n in zip(ends.tolist(), lengths.tolist())]


# ---------------------------------------------------------------- variants
def _run_forward_many(module: Any, seqs: Sequence[np.ndarray]) -> List[Any]:
    return list(fastlstm.forward_many(module, seqs))


def _run_loop(module: Any, seqs: Sequence[np.ndarray]) -> List[Any]:
    return [module(seq)[0] for seq in seqs]


def _run_padded(module: Any, seqs: Sequence[np.ndarray], batch: int) -> List[Any]:
    outs: List[Any] = []
    for start in range(0, len(seqs), batch):
        chunk = seqs[start:start + batch]
        out = module(fastlstm.pad_sequence(chunk))[0]
        # Copies: a view would keep the whole padded output of its batch alive.
        outs += [np.ascontiguousarray(out[:len(seq), k]) for k, seq in enumerate(chunk)]
    return outs


def _run_torch(torch: Any, lstm: Any, seqs: Sequence[Any], batch: int) -> List[Any]:
    rnn = torch.nn.utils.rnn
    outs: List[Any] = []
    with torch.no_grad():
        for start in range(0, len(seqs), batch):
            out = lstm(rnn.pack_sequence(seqs[start:start + batch], enforce_sorted=False))[0]
            # unpack_sequence gives views of one padded tensor per batch: copied, as above.
            outs += [o.clone() for o in rnn.unpack_sequence(out)]
    return outs


class _Dask:
    """A LocalCluster and its client, for the dask variant; ``note`` says why not."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.client: Any = None
        self.cluster: Any = None
        self.bag: Any = None
        self.dask: Any = None
        self.fastlstm_dask: Any = None
        self.as_completed: Any = None
        self.note: Optional[str] = None
        self.startup_s: Optional[float] = None
        self.worker_threads: Optional[List[int]] = None
        self.versions: Dict[str, Optional[str]] = {"dask": None, "distributed": None}

    def start(self) -> None:
        try:
            self.bag = importlib.import_module("dask.bag")
            self.dask = importlib.import_module("dask")
            distributed = importlib.import_module("distributed")
        except ImportError as err:
            self.note = (f"{err.name or 'dask'} is not installed (pip install fastlstm[dask])"
                         if isinstance(err, ModuleNotFoundError) else _reason(err))
            return
        self.versions = {"dask": self.dask.__version__,
                         "distributed": distributed.__version__}
        self.as_completed = distributed.as_completed
        try:
            self.fastlstm_dask = importlib.import_module("fastlstm.dask")
        except Exception as err:  # the module missing or broken: n/a, with the reason
            self.note = f"import fastlstm.dask failed: {_reason(err)}"
            return
        start = time.perf_counter()
        try:
            # Any free port for the scheduler's HTTP server: 8787 may be another cluster's.
            saved = dict(os.environ)
            # The workers start with SIGINT ignored (Python keeps an ignored SIGINT): a
            # Ctrl-C, which reaches the whole process group, stops the benchmark here with
            # its one line, not the workers with tracebacks of their own.
            main = threading.current_thread() is threading.main_thread()
            handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
            try:
                self.cluster = distributed.LocalCluster(
                    n_workers=self.workers, threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=logging.ERROR)
            finally:  # the Nanny sets OMP_NUM_THREADS=1 in this process, for good
                os.environ.clear()
                os.environ.update(saved)
                if main:
                    signal.signal(signal.SIGINT, handler)
            # The default client while it runs: fastlstm.dask sizes its tasks' threads
            # from the default client's workers.
            self.client = distributed.Client(self.cluster)
            # The threads a task of fastlstm.dask gets on each worker (its own sizing).
            # Asked as tasks (client.run runs outside one and would get the fallback).
            sizing = getattr(self.fastlstm_dask, "task_threads", fastlstm.get_num_threads)
            addresses = list(self.client.scheduler_info(n_workers=-1)["workers"])
            futures = [self.client.submit(sizing, pure=False, workers=[a]) for a in addresses]
            self.worker_threads = sorted(int(n) for n in self.client.gather(futures))
        except Exception as err:  # e.g. no free port, no process start here
            self.note = f"the LocalCluster did not start: {_reason(err)}"
            self.close()
            return
        self.startup_s = time.perf_counter() - start

    def run(self, module: Any, seqs: Sequence[np.ndarray], partitions: int) -> List[Any]:
        bag = self.bag.from_sequence(seqs, npartitions=min(partitions, len(seqs)))
        with warnings.catch_warnings():
            # distributed warns of a large graph: the sequences travel in it, by design.
            warnings.filterwarnings("ignore", message=".*[Ll]arge graph")
            # Each partition straight to the client as soon as it is done: Bag.compute
            # gathers them on one worker first, and dask.compute fetches none before all
            # are done, so the outputs' transfer would not overlap the work (docs/scale.md).
            out = self.fastlstm_dask.forward_many(module, bag)
            futures = self.client.compute(out.to_delayed())
            where = {future.key: k for k, future in enumerate(futures)}
            parts: List[Any] = [None] * len(futures)
            for future, part in self.as_completed(futures, with_results=True):
                parts[where[future.key]] = part
            return [item for part in parts for item in part]

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # closing is best effort: the results are in already
                    pass
        self.client = self.cluster = None


def _reason(err: BaseException) -> str:
    """``Type: first line of the message``, short enough for a table cell."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {one_line(lines[0]) if lines else ''}".strip()[:160]


def _as_numpy(out: Any) -> np.ndarray:
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float64)


def _max_error(outs: Sequence[Any], ref: Sequence[np.ndarray]) -> float:
    """Max abs difference of ``outs`` from ``ref``; ValueError if count or shapes differ."""
    if len(outs) != len(ref):
        raise ValueError(f"{len(outs)} outputs for {len(ref)} sequences")
    error = 0.0
    for k, (out, expected) in enumerate(zip(outs, ref)):
        got = _as_numpy(out)
        if got.shape != expected.shape:
            raise ValueError(f"output {k} shaped {got.shape}, expected {expected.shape}")
        diff = float(np.max(np.abs(got - expected))) if got.size else 0.0
        error = max(error, diff if not math.isnan(diff) else math.inf)
    return error


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    return None if numerator is None or denominator is None else numerator / denominator


# ---------------------------------------------------------------- the mode
def measure_throughput(torch: Any, *, sequences: int = SEQUENCES, budget: Optional[float] = None,
                       rounds: int = ROUNDS, seed: int = 0, threads: Optional[int] = None,
                       input_size: int = INPUT, hidden_size: int = HIDDEN,
                       num_layers: int = LAYERS, min_length: int = MIN_LENGTH,
                       max_length: int = MAX_LENGTH, batch: int = BATCH, check: int = CHECK,
                       workers: int = WORKERS, dask: bool = True,
                       on_progress: Optional[Callable[[float, str], None]] = None
                       ) -> Dict[str, Any]:
    """Sequences per second of the five variants (module docstring) on the same sequences.

    Parameters
    ----------
    torch : module
    sequences : int, default=SEQUENCES
        Sequences made (:func:`make_sequences`).
    budget : float, optional
        Seconds the timed rounds should take, all variants together; the first K
        sequences are timed, K estimated from the check's times (at least the check's
        sequences, at most all).  None: all sequences in every round.
    rounds : int, default=ROUNDS
        Rounds of one run of every variant; medians over them are reported.
    seed : int, default=0
        Seed of the weights (a forked torch generator) and of the sequences.
    threads : int, optional
        Threads of fastlstm and torch (``fastlstm.get_num_threads()`` if None).
    input_size, hidden_size, num_layers, min_length, max_length : int
        The workload (80, 256, 2, 5, 500).
    batch : int, default=BATCH
        Sequences per batch of the padded and torch variants.
    check : int, default=CHECK
        Sequences of the check (the first ones).
    workers : int, default=WORKERS
        Worker processes of the dask cluster (one thread each), ``4 * workers`` partitions.
    dask : bool, default=True
        False leaves the dask variant out (n/a).
    on_progress : callable, optional
        Called as ``on_progress(fraction_done, stage)``.

    Returns
    -------
    dict
        ``config`` (the workload: ``sequences``, ``input_size``, ``hidden_size``,
        ``num_layers``, ``dtype``, ``min_length``, ``max_length``, ``mean_length``,
        ``tokens``, ``batch``, ``seed``), ``threads``, ``rounds``, ``budget_s``,
        ``timed_sequences`` and ``timed_tokens`` (the first K sequences, the same for
        every variant), ``same_sequences`` (True), ``check_sequences``, ``tolerance``,
        ``dask`` (``workers``, ``threads_per_worker``, ``partitions``,
        ``worker_fastlstm_threads``, ``startup_s``, ``dask``, ``distributed`` versions,
        ``note``: why n/a, or None), ``variants`` (names, in order), ``rows`` (one per
        variant: ``variant``, ``label``, ``status`` (``ok``, ``n/a``, ``failed``),
        ``note``, ``error`` (max abs difference from forward_many's outputs on the check's
        sequences), ``identical``, ``check_s``, ``time_s`` (median seconds of one run over
        the timed sequences), ``round_s``, ``seq_per_s``, ``tokens_per_s`` and
        ``vs_forward_many`` (its sequences/s over forward_many's), None where not timed),
        ``targets`` (``variant``, ``numerator``, ``denominator``, ``bound``, ``identical``,
        ``text``, ``ratio``: numerator's sequences/s over denominator's, ``met``: True,
        False, or None where a variant is not timed), ``failed`` (variants that failed or
        were not timed, dask n/a excepted) and ``wall_s``.
    """
    started = time.perf_counter()
    progress = on_progress or (lambda frac, stage: None)
    threads = threads or fastlstm.get_num_threads()
    labels = _labels(batch, workers)
    progress(0.0, "throughput: making the sequences")
    seqs = make_sequences(sequences, input_size=input_size, min_length=min_length,
                          max_length=max_length, seed=seed)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lstm = torch.nn.LSTM(input_size, hidden_size, num_layers).eval()
    module = fastlstm.LSTM.from_torch(lstm)
    tseqs = [torch.from_numpy(s) for s in seqs]  # no copies: the same memory
    partitions = PARTITIONS_PER_WORKER * workers
    rows: Dict[str, Dict[str, Any]] = {
        name: {"variant": name, "label": labels[name], "status": "ok", "note": None,
               "error": None, "identical": None, "check_s": None, "time_s": None,
               "round_s": [], "seq_per_s": None, "tokens_per_s": None,
               "vs_forward_many": None} for name in VARIANTS}
    cluster = _Dask(workers)
    result: Dict[str, Any] = {
        "config": {"sequences": sequences, "input_size": input_size,
                   "hidden_size": hidden_size, "num_layers": num_layers, "dtype": "float32",
                   "min_length": min_length, "max_length": max_length,
                   "mean_length": float(lengths.mean()), "tokens": int(lengths.sum()),
                   "batch": batch, "seed": seed},
        "threads": threads, "rounds": rounds, "budget_s": budget, "timed_sequences": None,
        "timed_tokens": None, "same_sequences": True,
        "check_sequences": min(check, sequences), "tolerance": TOLERANCE,
        "dask": {"workers": workers, "threads_per_worker": 1, "partitions": partitions,
                 "worker_fastlstm_threads": None, "startup_s": None, "dask": None,
                 "distributed": None, "note": None},
        "variants": list(VARIANTS), "rows": [], "targets": [], "failed": [], "wall_s": None,
    }
    saved_fast = _threads._num_threads
    saved_torch = torch.get_num_threads()
    try:
        fastlstm.set_num_threads(threads)
        torch.set_num_threads(threads)
        if dask:
            progress(0.02, "throughput: starting the dask cluster")
            cluster.start()
        else:
            cluster.note = "left out"

        def runner(name: str) -> Callable[[int], List[Any]]:
            """The variant's run over the first ``n`` sequences."""
            calls: Dict[str, Callable[[int], List[Any]]] = {
                FORWARD_MANY: lambda n: _run_forward_many(module, seqs[:n]),
                LOOP: lambda n: _run_loop(module, seqs[:n]),
                PADDED: lambda n: _run_padded(module, seqs[:n], batch),
                TORCH: lambda n: _run_torch(torch, lstm, tseqs[:n], batch),
                DASK: lambda n: cluster.run(module, seqs[:n], partitions)}
            return calls[name]

        checked = _check(rows, runner, cluster, result["check_sequences"], progress)
        timed = _timed_count(rows, checked, sequences, result["check_sequences"], budget,
                             rounds)
        result["timed_sequences"] = timed
        result["timed_tokens"] = int(lengths[:timed].sum())
        _time_rounds(rows, runner, checked, timed, rounds, progress)
    finally:
        cluster.close()
        fastlstm.set_num_threads(saved_fast)
        torch.set_num_threads(saved_torch)
    result["dask"].update(worker_fastlstm_threads=cluster.worker_threads,
                          startup_s=cluster.startup_s, note=cluster.note, **cluster.versions)
    _figures(rows, result["timed_sequences"], result["timed_tokens"])
    result["rows"] = [rows[name] for name in VARIANTS]
    result["targets"] = [_judge(target, rows) for target in TARGETS]
    result["failed"] = [name for name in VARIANTS if rows[name]["status"] == "failed"]
    result["wall_s"] = time.perf_counter() - started
    return result


def _check(rows: Dict[str, Dict[str, Any]], runner: Callable[[str], Callable[[int], List[Any]]],
           cluster: _Dask, count: int, progress: Callable[[float, str], None]) -> List[str]:
    """Run every variant on the first ``count`` sequences, record its error against
    forward_many's outputs and the time; the variants to time."""
    progress(0.05, f"throughput: checking on {count} sequences")
    checked: List[str] = []
    ref: List[np.ndarray] = []
    for name in VARIANTS:
        row = rows[name]
        if name == DASK and cluster.client is None:
            row["status"], row["note"] = "n/a", cluster.note
            continue
        if name != FORWARD_MANY and not checked:
            row["status"], row["note"] = "failed", "NOT TIMED: forward_many failed"
            continue
        try:
            start = time.perf_counter()
            outs = runner(name)(count)
            row["check_s"] = time.perf_counter() - start
            if name == FORWARD_MANY:
                ref = [_as_numpy(out) for out in outs]
            row["error"] = error = _max_error(outs, ref)
        except Exception as err:  # a variant that fails is reported, never a crash
            row["status"], row["note"] = "failed", _reason(err)
            continue
        row["identical"] = error == 0.0
        if not error <= TOLERANCE:
            row["status"] = "failed"
            row["note"] = (f"NOT TIMED: differs from forward_many by {error:.1e} "
                           f"(tolerance {TOLERANCE:.0e})")
            continue
        checked.append(name)
    return checked


def _timed_count(rows: Dict[str, Dict[str, Any]], checked: Sequence[str], sequences: int,
                 check: int, budget: Optional[float], rounds: int) -> int:
    """All the sequences, or with a budget as many as its rounds fit, from the check's
    time per sequence of each variant (at least the check's sequences)."""
    if budget is None or not checked:
        return sequences
    per_sequence = sum(rows[name]["check_s"] for name in checked) / max(check, 1)
    fit = int(budget / (rounds * max(per_sequence, 1e-9)))
    return max(min(sequences, check), min(sequences, fit))


def _time_rounds(rows: Dict[str, Dict[str, Any]],
                 runner: Callable[[str], Callable[[int], List[Any]]], checked: Sequence[str],
                 count: int, rounds: int, progress: Callable[[float, str], None]) -> None:
    """``rounds`` rounds of one run of every checked variant over the first ``count``
    sequences, in a rotating order; each run's seconds go to its row's ``round_s``."""
    runs = len(checked) * rounds
    done = 0
    with gc_paused():
        for block in range(rounds):
            for name in rotation(list(checked), block):
                progress(0.1 + 0.9 * done / max(runs, 1),
                         f"throughput: round {block + 1}/{rounds}, {name} on {count} sequences")
                settle(_SETTLE_S, limit=1.0)
                call = runner(name)
                start = time.perf_counter()
                outs = call(count)
                rows[name]["round_s"].append(time.perf_counter() - start)
                del outs  # freed outside the timed region
                done += 1


def _figures(rows: Dict[str, Dict[str, Any]], count: Optional[int],
             tokens: Optional[int]) -> None:
    """Medians, rates and each variant's sequences/s over forward_many's, from the rounds."""
    for row in rows.values():
        if row["round_s"] and count and tokens:
            row["time_s"] = statistics.median(row["round_s"])
            row["seq_per_s"] = count / row["time_s"]
            row["tokens_per_s"] = tokens / row["time_s"]
    for row in rows.values():
        row["vs_forward_many"] = _ratio(row["seq_per_s"], rows[FORWARD_MANY]["seq_per_s"])


def _judge(target: Target, rows: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    ratio = _ratio(rows[target.numerator]["seq_per_s"], rows[target.denominator]["seq_per_s"])
    met = None if ratio is None else ratio >= target.bound
    if met is not None and target.identical:
        met = met and bool(rows[target.variant]["identical"])
    return {"variant": target.variant, "numerator": target.numerator,
            "denominator": target.denominator, "bound": target.bound,
            "identical": target.identical, "text": target.text(), "ratio": ratio, "met": met}


# ----------------------------------------------------------------- the table
def header_lines(result: Dict[str, Any], cpu: str) -> List[str]:
    """What the throughput table measured and how, in three lines."""
    c, d = result["config"], result["dask"]
    timed, total = result["timed_sequences"], c["sequences"]
    subset = (f"all {total} sequences" if timed == total else
              f"the first {timed} of the {total} sequences ({result['timed_tokens']} "
              f"timesteps; --budget {result['budget_s']:g} s)")
    if d["note"] is None:
        each = sorted(set(d["worker_fastlstm_threads"] or []))
        dask_line = (f"dask {d['dask']}, distributed {d['distributed']}: LocalCluster of "
                     f"{d['workers']} worker processes x 1 thread (fastlstm threads per task: "
                     f"{', '.join(map(str, each)) or 'n/a'}), {d['partitions']} bag "
                     f"partitions; start-up {d['startup_s']:.1f} s, not timed")
    else:
        dask_line = f"dask n/a ({d['note']})"
    return [
        f"throughput: {total} float32 sequences, lengths log-uniform {c['min_length']}-"
        f"{c['max_length']} (mean {c['mean_length']:.1f}, {c['tokens']} timesteps, seed "
        f"{c['seed']}), input {c['input_size']}, LSTM H={c['hidden_size']}, "
        f"{_plural(c['num_layers'], 'layer')}; fastlstm and torch on "
        f"{_plural(result['threads'], 'thread')}; {cpu}",
        f"every variant timed on {subset}, each output its own array in input order; "
        f"{_plural(result['rounds'], 'round')}, order rotating, medians; error = max abs "
        f"difference from forward_many's outputs on the first {result['check_sequences']} "
        "sequences",
        dask_line,
    ]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


_HEADERS = ["variant", "seq/s", "tokens/s", "vs forward_many", "error", "target", "result"]
_FIGURES = range(1, 5)


def _cells(result: Dict[str, Any]) -> List[List[str]]:
    targets = {t["variant"]: t for t in result["targets"]}
    cells = []
    for row in result["rows"]:
        if row["time_s"] is None:
            cells.append([row["label"], f"{row['status']}: {row['note'] or 'not measured'}"])
            continue
        line = [row["label"], f"{row['seq_per_s']:.1f}", f"{row['tokens_per_s']:.0f}",
                f"{row['vs_forward_many']:.2f}x",
                "ref" if row["variant"] == FORWARD_MANY else f"{row['error']:.1e}", "", ""]
        target = targets.get(row["variant"])
        if target is not None:
            line[5] = target["text"]
            verdict = {True: "met", False: "missed", None: "n/a"}[target["met"]]
            line[6] = verdict if target["ratio"] is None else (
                f"{verdict} ({target['ratio']:.2f}x"
                + (", not identical" if target["identical"] and not row["identical"] else "")
                + ")")
        cells.append(line)
    return cells


def throughput_table(result: Dict[str, Any]) -> List[str]:
    """The variants as aligned lines: a header, a rule, one line per variant (an n/a or
    failed variant shows its reason across the figure columns)."""
    cells = _cells(result)
    # A row without figures counts for the first column only: its reason runs on.
    widths = [max([len(h)] + [len(c[k]) for c in cells if k < 1 or len(c) == len(_HEADERS)])
              for k, h in enumerate(_HEADERS)]

    def line(parts: Sequence[str]) -> str:
        return " ".join(p.rjust(w) if k in _FIGURES else p.ljust(w)
                        for k, (p, w) in enumerate(zip(parts, widths))).rstrip()

    lines = [line(_HEADERS), "-" * len(line(_HEADERS))]
    lines += [line(c) if len(c) == len(_HEADERS) else line(c[:1]) + " " + c[1] for c in cells]
    return lines


def summary_line(result: Dict[str, Any]) -> str:
    """How many targets were met, missed or could not be judged, in one line."""
    verdicts = [t["met"] for t in result["targets"]]
    return (f"targets: {verdicts.count(True)} met, {verdicts.count(False)} missed, "
            f"{verdicts.count(None)} n/a (a missed target is a finding, not a failure)")

