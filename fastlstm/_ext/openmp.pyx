"""What the build knows about OpenMP."""

cdef extern from "omp_compat.h":
    int FASTLSTM_OPENMP
    int omp_get_max_threads() noexcept nogil
    int fl_omp_place_cpus() noexcept nogil
    int fl_omp_thread_limit() noexcept nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTLSTM_OPENMP)


def omp_max_threads():
    """``omp_get_max_threads()``: OMP_NUM_THREADS or the usable cores; 1 without OpenMP."""
    return omp_get_max_threads()


def omp_place_cpus():
    """The CPUs in OpenMP's place list (``OMP_PLACES``, ``OMP_PROC_BIND``,
    ``GOMP_CPU_AFFINITY``), 0 without one or without OpenMP."""
    return fl_omp_place_cpus()


def omp_thread_limit():
    """``omp_get_thread_limit()`` (``OMP_THREAD_LIMIT``): no team is larger; 1 without
    OpenMP."""
    return fl_omp_thread_limit()
