"""What the build knows about OpenMP."""

cdef extern from "omp_compat.h":
    int FASTLSTM_OPENMP
    int omp_get_max_threads() noexcept nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTLSTM_OPENMP)


def omp_max_threads():
    """``omp_get_max_threads()``: OMP_NUM_THREADS or the usable cores; 1 without OpenMP."""
    return omp_get_max_threads()
