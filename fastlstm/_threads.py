"""Thread settings: how many OpenMP threads the kernels use, and BLAS threads.

The number of threads is decided here and nowhere else.  By default it is the
smallest of ``omp_get_max_threads()`` (``OMP_NUM_THREADS``, else the cores),
the CPU affinity mask, and the CPU quota of the process's cgroup (v2 ``cpu.max``,
v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded up): a container limited
to 2 CPUs on a 64-core host gets 2 threads.  :func:`set_num_threads` overrides it
for the process.

The kernels' OpenMP threads each call BLAS on their own slice of work, so BLAS
must not start threads of its own (they would fight the OpenMP threads, and a
pool woken for every small per-timestep product costs more than the product).
:func:`single_threaded_blas` pins scipy's BLAS to one thread while a forward
runs.  The setting is process-wide, so concurrent
regions share it through a reference count: the first one in saves and lowers
the limit, the last one out restores it.

:func:`set_blas_sharing` (on at import) routes the parallel jobs of NumPy's and SciPy's
OpenBLAS to a pool of fastlstm's that makes way when a fastlstm call starts.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from fastlstm._ext import kernels
from fastlstm._ext.openmp import omp_max_threads, omp_place_cpus, omp_thread_limit, openmp_enabled

__all__ = ["get_blas_sharing", "get_dynamic_threads", "get_num_threads", "set_blas_sharing",
           "set_dynamic_threads", "set_num_threads"]

_num_threads: Optional[int] = None
#: The most threads set_num_threads keeps: the kernels count threads in C ints, and
#: four times 2**29 threads overflowed one.
_MAX_THREADS = 1 << 16


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cgroup_paths(proc_cgroup: str) -> Tuple[Optional[str], Optional[str]]:
    """The process's cgroup v2 path and its v1 ``cpu`` controller path (or None)."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _ancestors(root: str, path: str) -> List[str]:
    """``root/path`` and every folder above it up to ``root``, deepest first."""
    parts = [p for p in path.split("/") if p and p != ".."]
    return [os.path.join(root, *parts[:k]) for k in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup",
                     proc_cgroup: str = "/proc/self/cgroup") -> Optional[float]:
    """The CPUs the process's cgroup quota allows (the smallest along its path), or
    None when there is no quota.  Reads cgroup v2 ``cpu.max`` ("max 100000" or
    "150000 100000") and v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1:
    none), as the container runtimes write them."""
    v2, v1 = _cgroup_paths(proc_cgroup)
    limits = []
    if v2 is not None:
        for folder in _ancestors(root, v2) + _ancestors(os.path.join(root, "unified"), v2):
            fields = (_read(os.path.join(folder, "cpu.max")) or "").split()
            if len(fields) == 2 and fields[0] != "max":
                try:
                    quota, period = int(fields[0]), int(fields[1])
                except ValueError:
                    continue
                if quota > 0 and period > 0:
                    limits.append(quota / period)
    if v1 is not None:
        for base in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            for folder in _ancestors(os.path.join(root, base), v1):
                quota_s = _read(os.path.join(folder, "cpu.cfs_quota_us"))
                period_s = _read(os.path.join(folder, "cpu.cfs_period_us"))
                try:
                    quota, period = int(quota_s or ""), int(period_s or "")
                except ValueError:
                    continue
                if quota > 0 and period > 0:
                    limits.append(quota / period)
    return min(limits) if limits else None


def _container_bounds() -> List[Tuple[int, str]]:
    """The bounds on the default other than OpenMP's count: the CPU affinity mask
    and the cgroup CPU quota (rounded up, at least 1)."""
    bounds = []
    try:
        cpus = len(os.sched_getaffinity(0))  # this thread's mask: the process's, unless...
    except (AttributeError, OSError):
        pass
    else:
        # ...OpenMP's binding (OMP_PROC_BIND, OMP_PLACES) pinned this thread to its first
        # place when it loaded: its places then hold the CPUs the process may use.
        bounds.append((max(cpus, omp_place_cpus()), "the CPU affinity mask"))
    limit_threads = omp_thread_limit() if openmp_enabled() else 0
    if 0 < limit_threads < _MAX_THREADS:
        bounds.append((limit_threads, f"OMP_THREAD_LIMIT={limit_threads}"))
    limit = cgroup_cpu_limit()
    if limit is not None:
        bounds.append((max(1, math.ceil(limit)), f"the cgroup CPU quota ({limit:g} CPUs)"))
    return bounds


def default_threads() -> Tuple[int, str]:
    """The default thread count and the bound that set it: the smallest of
    OpenMP's count (``OMP_NUM_THREADS``, else the cores; read now, since other
    libraries such as torch change it), the affinity mask and the cgroup CPU quota."""
    if not openmp_enabled():
        return 1, "a build without OpenMP"
    omp = max(1, omp_max_threads())
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    first = env.split(",")[0].strip()  # OpenMP reads the first level of a list
    named = first.isdigit() and int(first) == omp == _omp_at_import  # not a value it refused
    own = [(omp, f"OMP_NUM_THREADS={env}" if named else f"OpenMP's count ({omp})")]
    # On a tie the cause is named: OpenMP's count follows the affinity mask unless
    # OMP_NUM_THREADS set it.
    return min(own + _bounds if named else _bounds + own, key=lambda b: b[0])


def _default_count() -> int:
    """``default_threads()[0]`` without its words, for every call's thread count."""
    omp = max(1, omp_max_threads())
    cap = _cap()
    return min(omp, cap) if cap else omp


_omp_at_import = max(1, omp_max_threads())
_set_lock = threading.Lock()
# The affinity mask and the CPU quota, read at import and by set_num_threads(None).
_bounds: List[Tuple[int, str]] = _container_bounds()


def _cap() -> int:
    return min((n for n, _ in _bounds), default=0)


def set_num_threads(n: Optional[int]) -> None:
    """Set the number of threads fastlstm's kernels use.

    Parameters
    ----------
    n : int or None
        A positive number of threads, or None to return to the default
        (``OMP_NUM_THREADS`` if set, else the number of usable cores).  A number
        past 65,536 counts as 65,536 (a call runs at most as many threads as it
        has usable CPUs in any case).

    Raises
    ------
    TypeError
        If ``n`` is not an int (a NumPy integer too) or None.
    ValueError
        If ``n`` is smaller than 1.

    Examples
    --------
    >>> import fastlstm
    >>> fastlstm.set_num_threads(1)
    >>> fastlstm.get_num_threads()
    1
    >>> fastlstm.set_num_threads(None)
    """
    global _num_threads, _bounds
    if n is not None:
        # NumPy integers as torch.set_num_threads takes them; bools are not counts.
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"set_num_threads expects an int or None, got {type(n).__name__}")
        n = int(n)
        if n < 1:
            raise ValueError(f"the number of threads must be at least 1, got {n}")
    with _set_lock:  # the count, the bounds and the compiled copy change together
        _num_threads = None if n is None else min(n, _MAX_THREADS)
        if n is None:
            _bounds = _container_bounds()  # read again: the affinity or quota may have changed
        # The compiled call path reads its own copy, without Python.
        kernels.set_call_threads(_num_threads or 0, _cap())


def get_num_threads() -> int:
    """Return the number of threads fastlstm's kernels will use.

    Always 1 when fastlstm was built without OpenMP, and in a process forked
    after its parent ran fastlstm on several threads (GNU OpenMP cannot start
    threads in such a child, so fastlstm runs there on the calling thread).

    Returns
    -------
    int
        The value given to :func:`set_num_threads`, or by default the
        smallest of ``omp_get_max_threads()`` (``OMP_NUM_THREADS`` or the
        cores), the CPU affinity mask and the cgroup CPU quota.

    Examples
    --------
    >>> import fastlstm
    >>> fastlstm.get_num_threads() >= 1
    True
    >>> fastlstm.set_num_threads(2)
    >>> fastlstm.get_num_threads() == (2 if fastlstm.show_config(as_dict=True)["openmp"] else 1)
    True
    >>> fastlstm.set_num_threads(None)
    """
    if not openmp_enabled() or kernels.forked_serial():
        return 1
    if _num_threads is not None:
        return _num_threads
    return _default_count()


def num_threads_bound() -> str:
    """What set :func:`get_num_threads`: ``set_num_threads``, or the default's bound."""
    if kernels.forked_serial():
        return "a process forked after its parent ran OpenMP threads"
    if _num_threads is not None:
        return "set_num_threads"
    return default_threads()[1]


kernels.set_call_threads(0, _cap())


def set_dynamic_threads(enabled: bool) -> None:
    """Let fastlstm run fewer threads than asked while the CPUs are shared.

    On by default.  A recurrence meets at a barrier every timestep, so a thread
    that the OS has descheduled (another busy process, other workers, a BLAS
    pool spinning in the same process) stalls all the others: two threads can
    then be slower than one.  With dynamic threads, fastlstm measures how long
    its threads wait for a CPU and, when a smaller team would be faster, runs
    with as many threads as the CPUs they actually got, trying the full count
    again after a backoff (50 ms, doubling to 2 s while the machine stays
    busy).  Like ``MKL_DYNAMIC``.  Either way no call runs more threads than
    the usable CPUs (the affinity mask and CPU quota).  Turn it off to measure
    a fixed thread count under load.

    Parameters
    ----------
    enabled : bool
        True to adapt (the default), False to always use
        :func:`get_num_threads` threads (up to the usable CPUs).

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.

    Examples
    --------
    >>> import fastlstm
    >>> fastlstm.set_dynamic_threads(False)
    >>> fastlstm.get_dynamic_threads()
    False
    >>> fastlstm.set_dynamic_threads(True)
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_dynamic_threads expects a bool, got {type(enabled).__name__}")
    kernels.set_dynamic(bool(enabled))


def get_dynamic_threads() -> bool:
    """Whether fastlstm adapts its thread count to shared CPUs (see
    :func:`set_dynamic_threads`).

    Returns
    -------
    bool

    Examples
    --------
    >>> import fastlstm
    >>> fastlstm.get_dynamic_threads()
    True
    """
    return bool(kernels.team_state()["dynamic"])


def dynamic_state() -> str:
    """In words, what the dynamic thread count is doing now (for ``show_config``)."""
    st = kernels.team_state()
    if not st["dynamic"]:
        return "off"
    if st["cap"]:
        return (f"on: {st['cap']} thread(s) for {st['cap_left_s']:.2f} s more, the CPUs being "
                f"shared ({st['contended_windows']} of {st['windows']} windows contended)")
    return f"on: full count ({st['contended_windows']} of {st['windows']} windows contended)"


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved: list = []
_blas_controllers: Optional[list] = None


def _openblas_symbol(dynlib: Any, name: str) -> Any:
    """An OpenBLAS function under any of the symbol prefixes and suffixes its builds use
    (``scipy_openblas_set_num_threads64_`` in NumPy's wheel), or None."""
    for pre in ("", "scipy_"):
        for suf in ("", "64_", "_64"):
            fn = getattr(dynlib, f"{pre}{name}{suf}", None)
            if fn is not None:
                return fn
    return None


def _openblas_count_functions(controller: Any) -> Optional[Tuple[Any, Any]]:
    """OpenBLAS's own (get, set) of its thread count for a pthreads build, else None.
    threadpoolctl (3.8+) lets only the first Python thread that set OpenBLAS's count set it
    again; fastlstm's calls come from any thread, and each must pin it."""
    import ctypes

    if getattr(controller, "internal_api", None) != "openblas" \
            or controller.threading_layer == "openmp":
        return None
    get = _openblas_symbol(controller.dynlib, "openblas_get_num_threads")
    put = _openblas_symbol(controller.dynlib, "openblas_set_num_threads")
    if get is None or put is None:
        return None
    get.restype, get.argtypes = ctypes.c_int, []
    put.restype, put.argtypes = None, [ctypes.c_int]
    return get, put


class _BlasThreads:
    """One BLAS library's thread count: OpenBLAS's own functions where it has them,
    else threadpoolctl's controller."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self.direct = _openblas_count_functions(controller)

    def get(self) -> int:
        return int(self.direct[0]() if self.direct else self.controller.get_num_threads())

    def set(self, n: int) -> None:
        if self.direct:
            self.direct[1](n)
        else:
            self.controller.set_num_threads(n)


def _scipy_blas_controllers() -> list:
    """threadpoolctl controllers for the BLAS that scipy's cython_blas calls."""
    global _blas_controllers
    if _blas_controllers is None:
        import scipy.linalg.cython_blas  # noqa: F401  (make sure it is loaded)
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas").lib_controllers
        scipy_own = [c for c in blas if "scipy" in c.filepath.replace("scipy_openblas", "")]
        # scipy linked against a system or MKL BLAS: limit every BLAS in the process.
        _blas_controllers = [_BlasThreads(c) for c in (scipy_own or list(blas))]
    return _blas_controllers


def _blas_after_fork_in_child() -> None:
    """A forked child has only the forking thread: the calls that held scipy's BLAS at one
    thread in the parent are not there to give its count back, or the lock."""
    global _blas_lock, _blas_depth, _blas_saved
    _blas_lock = threading.Lock()
    if _blas_depth:
        _blas_depth = 0
        for c, n in _blas_saved:
            if n != 1:
                c.set(n)
        _blas_saved = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_blas_after_fork_in_child)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Keep scipy's BLAS on one thread while the block runs."""
    global _blas_depth, _blas_saved
    with _blas_lock:
        if _blas_depth == 0:
            ctrls = _scipy_blas_controllers()
            _blas_saved = [(c, c.get()) for c in ctrls]
            for c, n in _blas_saved:
                if n != 1:
                    c.set(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for c, n in _blas_saved:
                    # A count someone else set meanwhile (threadpool_limits) stays theirs.
                    if n != 1 and c.get() == 1:
                        c.set(n)
                _blas_saved = []


# ------------------------------------------------------- BLAS threads beside ours
# OpenBLAS's worker threads busy-wait for about 0.1 s after each threaded call; a
# fastlstm call right after a NumPy matmul then shares its CPUs with them and can take
# twice as long.  OpenBLAS >= 0.3.28 (pthreads builds) hands its jobs to a callback
# instead; fastlstm's runs them on a pool that waits like OpenBLAS's threads but
# sleeps as soon as a fastlstm team starts (src/blas_share.h, docs/threads.md).
_SHARE_ENV = "FASTLSTM_SHARE_BLAS"
_SETTER = "openblas_set_threads_callback_function"
_shared: List[Tuple[str, str, int]] = []  # (file, version, setter) routed to fastlstm's pool
_share_lock = threading.Lock()
_share_note = ""


def _openblas_setters() -> Tuple[List[Tuple[str, str, int]], int]:
    """(file, version, setter address) of every loaded OpenBLAS that can hand its jobs
    to a callback: a pthreads build with ``openblas_set_threads_callback_function``
    under any of the symbol prefixes and suffixes OpenBLAS builds use; and the
    largest thread count among them."""
    import ctypes

    from threadpoolctl import ThreadpoolController

    found, threads = [], 1
    for c in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if c.threading_layer != "pthreads":
            continue  # an OpenMP build runs its jobs on OpenMP's team already
        fn = _openblas_symbol(c.dynlib, _SETTER)
        address = int(ctypes.cast(fn, ctypes.c_void_p).value or 0) if fn is not None else 0
        if address:
            found.append((c.filepath, str(c.version), address))
            threads = max(threads, int(c.num_threads))
    return found, threads


def set_blas_sharing(enabled: bool) -> None:
    """Run NumPy's and SciPy's OpenBLAS threads on a pool that makes way for fastlstm.

    On by default (``FASTLSTM_SHARE_BLAS=0`` in the environment turns it off at
    import).  OpenBLAS keeps its worker threads busy for about 0.1 s after each
    threaded call; a fastlstm call right after a NumPy matmul then runs beside a
    spinning BLAS thread and, on a machine with as many cores as threads, can take
    twice its time.  When sharing is on, every OpenBLAS in the process that supports
    it (0.3.28 or newer, pthreads build: NumPy's and SciPy's wheels) hands its
    parallel jobs to fastlstm, which runs them on threads that wait between calls
    just as OpenBLAS's do, so NumPy keeps its speed, but go to sleep as soon as a
    fastlstm call starts its threads; a BLAS call right after a fastlstm call from the
    same thread runs on that call's OpenMP threads, still awake (docs/threads.md).
    OpenBLAS's thread count, and so its results, are unchanged.  :func:`show_config`
    shows which libraries are routed.

    Parameters
    ----------
    enabled : bool
        True to route the OpenBLAS libraries loaded now (those loaded later are not
        seen), False to give every one back its own threads.

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.

    Examples
    --------
    >>> import fastlstm
    >>> fastlstm.set_blas_sharing(False)
    >>> fastlstm.get_blas_sharing()
    False
    >>> fastlstm.set_blas_sharing(True)
    """
    global _share_note
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    enabled = bool(enabled)
    with _share_lock:
        if enabled:
            try:
                setters, threads = _openblas_setters()
            except Exception as exc:  # threadpoolctl could not inspect the process
                setters, _share_note = [], f"off: the BLAS libraries could not be read ({exc})"
            else:
                _share_note = ("" if setters else
                               "off: no OpenBLAS 0.3.28+ (pthreads) is loaded")
            # The pool's threads are started now, asleep: a call's jobs need a thread
            # each, all at once, and if one could not be started then (a process or
            # container out of threads or memory) the call could neither wait nor run.
            # OpenBLAS's own threads exist already: it keeps them then.
            if setters and not kernels.blas_reserve(threads - 1):
                for lib in _shared:  # those routed before may now ask for as many threads
                    kernels.blas_route(lib[2], False)
                _shared.clear()
                setters, _share_note = [], "off: the pool's threads could not be started"
            for lib in setters:
                kernels.blas_route(lib[2], True)
                if lib not in _shared:
                    _shared.append(lib)
        else:
            for lib in _shared:
                kernels.blas_route(lib[2], False)
            _shared.clear()
            _share_note = "off"


def get_blas_sharing() -> bool:
    """Whether an OpenBLAS in this process runs its jobs on fastlstm's pool.

    Returns
    -------
    bool
        True when at least one OpenBLAS hands its parallel jobs to fastlstm (see
        :func:`set_blas_sharing`).

    Examples
    --------
    >>> import fastlstm
    >>> isinstance(fastlstm.get_blas_sharing(), bool)
    True
    """
    return bool(_shared)


def blas_sharing_state() -> str:
    """In words, which BLAS libraries hand their threads' work to fastlstm (for
    ``show_config``)."""
    if _shared:
        calls, _, workers, _ = kernels.blas_route_counts()
        libs = ", ".join(f"{os.path.basename(p)} {v}" for p, v, _ in _shared)
        hot, shared, teamed = kernels.blas_hot_window()
        team = (f"{teamed} of them on fastlstm's OpenMP team right after a fastlstm call "
                f"(within {hot / 1000:.0f} us, {shared / 1000:.0f} us once several threads "
                "have run fastlstm teams)" if hot > 0 else
                "none on fastlstm's OpenMP team: its idle threads may sleep at once")
        return (f"on: {libs} ({calls} parallel calls run, {workers} pool thread(s); "
                f"{team})")
    return _share_note or "off"


# ------------------------------------------------ BLAS calls on a team still hot
#: The longest a BLAS call may follow a fastlstm call and run on its OpenMP team (ns):
#: the NumPy head after a decoder step starts 50-150 us after the step's team ended (the
#: interpreter's and NumPy's code, out of the caches after the step, runs slowly).
HOT_WINDOW_MAX_NS = 200_000
#: The share of OpenMP's estimated spin that is taken as surely spinning.
HOT_SPIN_SHARE = 0.75
#: libgomp's spin when it manages more threads than CPUs (several threads' teams): 100
#: rounds, 1,000 with ``OMP_WAIT_POLICY=active`` (and never more than the spin itself).
THROTTLED_SPIN = 100
THROTTLED_SPIN_ACTIVE = 1000
_SPIN_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def omp_spin_rounds(env: Optional[Mapping[str, str]] = None,
                    idle_wait: Optional[str] = None) -> int:
    """Rounds GNU OpenMP's idle threads spin after a region before they sleep, as libgomp
    reads them: ``GOMP_SPINCOUNT`` (a count, ``k``/``M``/``G``/``T`` suffixed, or
    ``infinite``), else ``OMP_WAIT_POLICY`` (``active``: without end, ``passive``: 0), else
    300,000, or fastlstm's 10,000 when fastlstm loaded libgomp (``_ext.IDLE_WAIT``).  0 for
    anything unreadable (the team is then never taken for hot)."""
    from fastlstm import _ext

    if env is None:
        env = os.environ
    idle_wait = _ext.IDLE_WAIT if idle_wait is None else idle_wait
    if idle_wait.endswith("(fastlstm's default)"):
        return _ext.IDLE_SPIN
    text = env.get("GOMP_SPINCOUNT")
    if text is not None:
        text = text.strip().lower()
        if text in ("infinite", "infinity"):
            return 2**62
        scale = _SPIN_SUFFIX.get(text[-1:], 1)
        digits = text[:-1] if scale > 1 else text
        return int(digits) * scale if digits.isdigit() else 0
    policy = env.get("OMP_WAIT_POLICY", "").strip().lower()
    if policy == "active":
        return 2**62
    return 0 if policy else 300_000


def hot_window_ns(rounds: int, pause_ns: float) -> int:
    """How long after a fastlstm call its OpenMP team surely still spins:
    :data:`HOT_SPIN_SHARE` of the estimated spin (``rounds`` PAUSEs of ``pause_ns``), at
    most :data:`HOT_WINDOW_MAX_NS`."""
    return int(min(HOT_WINDOW_MAX_NS, rounds * max(pause_ns, 0.0) * HOT_SPIN_SHARE))


def omp_throttled_rounds(rounds: int, env: Optional[Mapping[str, str]] = None) -> int:
    """libgomp's spin (rounds) once it manages more threads than CPUs, its spin
    otherwise being ``rounds``."""
    if env is None:
        env = os.environ
    active = env.get("OMP_WAIT_POLICY", "").strip().lower() == "active"
    return min(rounds, THROTTLED_SPIN_ACTIVE if active else THROTTLED_SPIN)


def _set_hot_windows() -> None:
    rounds = omp_spin_rounds() if openmp_enabled() else 0
    pause = kernels.pause_ns()
    kernels.blas_hot_window(hot_window_ns(rounds, pause),
                            hot_window_ns(omp_throttled_rounds(rounds), pause))


_set_hot_windows()


_share_env = os.environ.get(_SHARE_ENV, "1").strip().lower()
if _share_env in ("0", "false", "no", "off"):
    _share_note = f"off ({_SHARE_ENV}={os.environ[_SHARE_ENV]})"
else:
    if _share_env not in ("1", "true", "yes", "on", ""):
        import warnings

        warnings.warn(f"{_SHARE_ENV}={os.environ[_SHARE_ENV]!r} is not 0/1, false/true, no/yes "
                      "or off/on: BLAS sharing stays on", RuntimeWarning, stacklevel=2)
    set_blas_sharing(True)
