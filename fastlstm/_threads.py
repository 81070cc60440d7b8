"""Thread settings: how many OpenMP threads the kernels use, and BLAS threads.

The number of threads is decided here and nowhere else.  By default it follows
``omp_get_max_threads()``, which honours ``OMP_NUM_THREADS`` and otherwise
counts the usable cores; :func:`set_num_threads` overrides it for the process.

The kernels' OpenMP threads each call BLAS on their own slice of work, so BLAS
must not start threads of its own (they would fight the OpenMP threads, and a
pool woken for every small per-timestep product costs more than the product).
:func:`single_threaded_blas` pins scipy's BLAS to one thread while a forward
runs.  The setting is process-wide, so concurrent
regions share it through a reference count: the first one in saves and lowers
the limit, the last one out restores it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from fastlstm._ext import kernels
from fastlstm._ext.openmp import omp_max_threads, openmp_enabled

__all__ = ["get_num_threads", "set_num_threads"]

_num_threads: Optional[int] = None


def set_num_threads(n: Optional[int]) -> None:
    """Set the number of threads fastlstm's kernels use.

    Parameters
    ----------
    n : int or None
        A positive number of threads, or None to return to the default
        (``OMP_NUM_THREADS`` if set, else the number of usable cores).

    Raises
    ------
    TypeError
        If ``n`` is not an int or None.
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
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_num_threads expects an int or None, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"the number of threads must be at least 1, got {n}")
    _num_threads = n
    # The compiled call path reads its own copy (0: the default), without Python.
    kernels.set_call_threads(min(n, 1 << 16) if n is not None else 0)


def get_num_threads() -> int:
    """Return the number of threads fastlstm's kernels will use.

    Always 1 when fastlstm was built without OpenMP, and in a process forked
    after its parent ran fastlstm on several threads (GNU OpenMP cannot start
    threads in such a child, so fastlstm runs there on the calling thread).

    Returns
    -------
    int
        The value given to :func:`set_num_threads`, or by default
        ``omp_get_max_threads()`` (``OMP_NUM_THREADS`` or the usable cores).

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
    return max(1, omp_max_threads())


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved: list = []
_blas_controllers: Optional[list] = None


def _scipy_blas_controllers() -> list:
    """threadpoolctl controllers for the BLAS that scipy's cython_blas calls."""
    global _blas_controllers
    if _blas_controllers is None:
        import scipy.linalg.cython_blas  # noqa: F401  (make sure it is loaded)
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas").lib_controllers
        scipy_own = [c for c in blas if "scipy" in c.filepath.replace("scipy_openblas", "")]
        # scipy linked against a system or MKL BLAS: limit every BLAS in the process.
        _blas_controllers = scipy_own or list(blas)
    return _blas_controllers


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Keep scipy's BLAS on one thread while the block runs."""
    global _blas_depth, _blas_saved
    with _blas_lock:
        if _blas_depth == 0:
            ctrls = _scipy_blas_controllers()
            _blas_saved = [(c, c.get_num_threads()) for c in ctrls]
            for c, n in _blas_saved:
                if n != 1:
                    c.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for c, n in _blas_saved:
                    if n != 1:
                        c.set_num_threads(n)
                _blas_saved = []
