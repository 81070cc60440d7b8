"""LSTM layer kernels (one layer, one or two directions): ``layer``.

A layer runs in one OpenMP parallel region, over time chunks of the sequence
(the gate buffer holds one chunk).  Per chunk:

1. the input projection, ``gates = x @ W_ih^T`` for the chunk's timesteps and
   both directions (their W_ih stacked), shared among the threads;
2. the recurrence: per timestep one call of the fused kernel
   ``fl_lstm_step`` (``h_{t-1} @ W_hh^T`` added into the step's gate rows panel
   by panel, each panel's gate math and state update done while its rows are in
   L1), then, with ``proj_size``, ``h @ W_hr^T``.

Two ways to share the recurrence (see ``layer``): one task per (direction,
batch chunk) with no synchronisation between timesteps, or, for small
batches, the hidden units split among threads that meet at a barrier after
every step.

Gate columns are interleaved by panels (see ``src/kernels.h``): a direction has
``4 * Hp`` gate columns, Hp = hidden_size rounded up to the panel's unit
count.  Rows of ``x`` and ``out`` are ordered as the caller's layout:
time-major rows ``t*N + n`` or, with ``batch_first``, batch-major rows
``n*L + t``.  Either way the rows of one timestep are evenly spaced, so every
kernel reads and writes them in place through a row stride and no transpose
is ever made.

``BoundStack`` binds a unidirectional stack's weights once for every
one-timestep computation (and a stream's buffers, so that a stream's step
acquires no buffer and holds the GIL only to check its frame).

BLAS, used only where it beats the small-M kernel (``blas_min_rows``), runs
single-threaded (the caller pins it): all threads are OpenMP threads, so
``set_num_threads`` is the one knob and nothing oversubscribes.
"""
import os
import sys
import warnings

from cython cimport floating
from cython.parallel cimport parallel
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, uint32_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memmove, memset

cimport numpy as cnp

from fastlstm._ext.blas cimport NoTrans, Trans, gemm


cdef extern from "kernels.h" nogil:
    int FL_PANEL_BYTES
    int FL_AVX2
    int fl_strips
    int fl_cpu_level() noexcept
    unsigned int fl_ftz_begin() noexcept
    void fl_ftz_end(unsigned int old) noexcept
    unsigned int fl_mxcsr() noexcept
    void fl_matmul_f(int level, int beta, int M, int N, int K, const float *A,
                     Py_ssize_t lda, const float *BP, float *G, Py_ssize_t ldg) noexcept
    void fl_matmul_d(int level, int beta, int M, int N, int K, const double *A,
                     Py_ssize_t lda, const double *BP, double *G, Py_ssize_t ldg) noexcept
    void fl_lstm_step_f(int level, int M, int K, int H, const float *A, Py_ssize_t lda,
                        const float *BP, float *G, Py_ssize_t ldg, const float *bias,
                        float *C, Py_ssize_t ldc, float *Hout, Py_ssize_t ldh,
                        int p_lo, int p_hi, int reverse) noexcept
    void fl_lstm_step_d(int level, int M, int K, int H, const double *A, Py_ssize_t lda,
                        const double *BP, double *G, Py_ssize_t ldg, const double *bias,
                        double *C, Py_ssize_t ldc, double *Hout, Py_ssize_t ldh,
                        int p_lo, int p_hi, int reverse) noexcept
    void fl_act_f(int level, Py_ssize_t n, const float *x, float *y, int sigmoid) noexcept
    void fl_act_d(int level, Py_ssize_t n, const double *x, double *y, int sigmoid) noexcept


cdef extern from "bf16.h" nogil:
    int FL_BF16_DP
    int FL_BF16_AMX
    int fl_cpu_has_avx512bf16() noexcept
    int fl_cpu_has_amx_bf16() noexcept
    void fl_matmul_bf(int level, int beta, int M, int N, int K, const float *A,
                      Py_ssize_t lda, const uint32_t *BP, float *G, Py_ssize_t ldg) noexcept
    uint32_t *fl_bf16_pairs(int level, int M, int K, const float *A, Py_ssize_t lda) noexcept
    Py_ssize_t fl_bf16_ld(int K) noexcept
    int fl_bf16_expand_on
    void fl_bf16_pairs_to(int level, int M, int K, const float *A, Py_ssize_t lda, uint32_t *out,
                          Py_ssize_t ldo) noexcept
    void fl_matmul_bfp(int level, int beta, int M, int N, int K, const uint32_t *A,
                       Py_ssize_t lda, const uint32_t *BP, float *G, Py_ssize_t ldg) noexcept
    void fl_lstm_step_bfp(int level, int M, int K, int H, const uint32_t *A, Py_ssize_t lda,
                          const uint32_t *BP, float *G, Py_ssize_t ldg, const float *bias,
                          float *C, Py_ssize_t ldc, float *Hout, Py_ssize_t ldh,
                          int p_lo, int p_hi, int reverse) noexcept
    void fl_matmul_bf_sliced(int level, int beta, int M, int N, int K, const float *A,
                             Py_ssize_t lda, const uint32_t *BP, float *G,
                             Py_ssize_t ldg) noexcept
    void fl_lstm_step_bf(int level, int M, int K, int H, const float *A, Py_ssize_t lda,
                         const uint32_t *BP, float *G, Py_ssize_t ldg, const float *bias,
                         float *C, Py_ssize_t ldc, float *Hout, Py_ssize_t ldh,
                         int p_lo, int p_hi, int reverse) noexcept


cdef extern from "int8.h" nogil:
    int FL_I8_VNNI
    int fl_cpu_has_avxvnni() noexcept
    int FL_I8_AMX
    int fl_cpu_has_avx512vnni() noexcept
    int fl_cpu_has_amx_int8() noexcept
    int fl_i8_panel_rows(int K) noexcept
    void fl_matmul_i8(int level, int beta, int M, int N, int K, const float *A,
                      Py_ssize_t lda, const uint32_t *BP, float *G, Py_ssize_t ldg) noexcept
    void fl_lstm_step_i8(int level, int M, int K, int H, const float *A, Py_ssize_t lda,
                         const uint32_t *BP, float *G, Py_ssize_t ldg, const float *bias,
                         float *C, Py_ssize_t ldc, float *Hout, Py_ssize_t ldh,
                         int p_lo, int p_hi, int reverse) noexcept
    Py_ssize_t fl_i8_ld(int K) noexcept
    void fl_i8_quantize(int level, int M, int K, const float *A, Py_ssize_t lda, uint32_t *Q,
                        Py_ssize_t ldq, float *s) noexcept
    uint32_t *fl_i8_quantized(int level, int M, int K, const float *A, Py_ssize_t lda,
                              float **s) noexcept
    void fl_matmul_i8q(int level, int beta, int M, int N, int K, const uint32_t *Q,
                       Py_ssize_t ldq, const float *s, const uint32_t *BP, float *G,
                       Py_ssize_t ldg) noexcept
    void fl_lstm_step_i8q(int level, int M, int K, int H, const uint32_t *Q, Py_ssize_t ldq,
                          const float *s, const uint32_t *BP, float *G, Py_ssize_t ldg,
                          const float *bias, float *C, Py_ssize_t ldc, float *Hout,
                          Py_ssize_t ldh, int p_lo, int p_hi, int reverse) noexcept
    void fl_i8_row_sliced(int level, int beta, int K, const float *a, const uint32_t *P,
                          float *g, int width) noexcept
    int fl_i8_block_add(int level, int R, int kq, const uint32_t *Q, Py_ssize_t ldq,
                        const uint32_t *P, int32_t *acc, int add,
                        const int32_t *comp) noexcept


cdef extern from "omp_compat.h" nogil:
    int fl_forked_serial
    void fl_note_team(int threads) noexcept
    int fl_register_fork_handler() noexcept
    int omp_get_thread_num() noexcept
    int omp_get_num_threads() noexcept
    int omp_get_num_procs() noexcept
    int omp_get_max_threads() noexcept
    void fl_count_signal(int *count) noexcept
    int fl_atomic_add(int *value, int n) noexcept
    void fl_count_wait(const int *count, int target) noexcept


cdef extern from "team.h" nogil:
    ctypedef struct fl_barrier:
        pass
    ctypedef struct fl_region:
        fl_barrier bar
    int fl_dynamic
    int fl_cpus
    int fl_cap
    long long fl_cap_until
    long long fl_backoff
    long long fl_n_windows
    long long fl_n_capped
    void fl_barrier_wait(fl_barrier *b, int team) noexcept
    long long fl_now_ns() noexcept
    int fl_team_now(int threads, long long now, int *probe, int flags) noexcept
    int FL_FIT_CPUS
    int FL_DYNAMIC
    int fl_team_begin(fl_region *r, int threads, int synced, int flags) noexcept
    long long fl_start_cpu(const fl_region *r) noexcept
    void fl_thread_stop(fl_region *r, long long cpu0) noexcept
    void fl_team_end(fl_region *r) noexcept
    int fl_decide(long long team_milli, long long speed_milli, long long cpus_milli) noexcept
    void fl_team_reset() noexcept


cnp.import_array()

cdef extern from "blas_share.h" nogil:
    ctypedef struct fl_blas_pool_t:
        int workers
        int sleepers
        long long calls
        long long pooled
        long long teamed
    fl_blas_pool_t fl_blas_pool
    long long fl_blas_hot_window(long long ns, int shared) noexcept
    double fl_pause_ns() noexcept
    int __atomic_load_n(int *p, int order) noexcept
    int __ATOMIC_RELAXED
    void fl_blas_route(void *setter_address, int on) noexcept
    int fl_blas_reserve(int workers) noexcept
    int fl_blas_register_fork_handler() noexcept

if fl_register_fork_handler() != 0 or fl_blas_register_fork_handler() != 0:
    raise ImportError("fastlstm: pthread_atfork failed; a forked child could hang in OpenMP")


def blas_route(size_t setter_address, bint on):
    """Hand the parallel jobs of the OpenBLAS whose
    ``openblas_set_threads_callback_function`` is at ``setter_address`` to this
    module's BLAS pool (``on``), or back to its own threads."""
    fl_blas_route(<void *>setter_address, on)


def blas_reserve(int workers):
    """Start the BLAS pool's threads (asleep) up to ``workers``, before any call
    needs them; False when one could not be started (or its memory had)."""
    cdef int rc
    with nogil:
        rc = fl_blas_reserve(workers)
    return rc == 0


def blas_route_counts():
    """(BLAS calls of two or more jobs run here, of which on the pool, the pool's
    threads, of which asleep)."""
    return (int(fl_blas_pool.calls), int(fl_blas_pool.pooled), int(fl_blas_pool.workers),
            int(__atomic_load_n(&fl_blas_pool.sleepers, __ATOMIC_RELAXED)))


def blas_hot_window(long long ns=-1, long long shared_ns=-1):
    """How long (ns) after a fastlstm team ended a BLAS call of as many jobs from the
    same thread runs on that team, still spinning, rather than on the pool (0: never):
    ``ns`` while one thread has started teams, ``shared_ns`` once several have; each
    set when >= 0.  Returns both settings before, and the BLAS calls run on a team."""
    return (int(fl_blas_hot_window(ns, 0)), int(fl_blas_hot_window(shared_ns, 1)),
            int(fl_blas_pool.teamed))


def pause_ns():
    """The time of one PAUSE instruction on this CPU, ns (best of three runs of 2000;
    on CPUs without one, of an empty round of the loop)."""
    return float(fl_pause_ns())


def forked_serial():
    """True in a process forked after this one's parent started OpenMP threads in
    the kernels: such a child runs every call on its calling thread (GNU OpenMP
    cannot start threads there)."""
    return bool(fl_forked_serial)


# ---------------------------------------------------------------- SIMD level
_LEVEL_NAMES = ("portable", "avx2", "avx512")
cdef int _detected = fl_cpu_level()
cdef int _level = _detected


def simd_available():
    """SIMD levels this CPU can run, best last."""
    return list(_LEVEL_NAMES[:_detected + 1])


def simd_level():
    """The SIMD level the kernels use now."""
    return _LEVEL_NAMES[_level]


def _level_index(name, names, detected, what, article=""):
    """The index in ``names`` of level ``name`` (None: ``detected``, the best), refused
    with ValueError when unknown or beyond what this CPU runs."""
    if name is None:
        return detected
    if name not in names:
        raise ValueError(f"unknown {what} {name!r}; expected one of {names}")
    if names.index(name) > detected:
        raise ValueError(f"this CPU does not support {article}{what} {name!r}; "
                         f"available: {list(names[:detected + 1])}")
    return names.index(name)


def set_simd_level(name=None):
    """Use SIMD level ``name`` ("portable", "avx2", "avx512"), or None for the best.

    For tests and comparisons; the environment variable FASTLSTM_SIMD sets it at
    import.  A level the CPU lacks raises ValueError.
    """
    global _level
    index = _level_index(name, _LEVEL_NAMES, _detected, "SIMD level")
    if fl_strips and index == 2:
        raise ValueError("the avx512 level reads whole panel rows: not with panels in strips")
    _level = index


# The weight panels' layout, for the whole process (kernels.h): strips of 64 bytes of
# columns where the best level is below AVX-512, whose blocks read 64 bytes of a row.
fl_strips = 1 if _detected < 2 else 0


def panel_strip(dtype):
    """Columns per strip of a weight panel for ``dtype`` ("float32" or "float64"):
    the panel's width where its rows are contiguous (AVX-512), else 64 bytes' worth."""
    return 64 // (4 if dtype == "float32" else 8) if fl_strips else panel_width(dtype)


def _set_panel_strips_for_tests(bint on):
    """Lay out the panels packed from now on in strips (``on``) or in rows, and
    return the previous setting; panels packed before must not be used after it
    changes (tests pack new modules).  Strips refuse the avx512 level."""
    global fl_strips
    previous = bool(fl_strips)
    if on and _level == 2:
        raise ValueError("the avx512 level reads whole panel rows: not with panels in strips")
    fl_strips = 1 if on else 0
    return previous


def _level_from_environment(variable, setter):
    """The level the environment variable names (any case, spaces around), if set.  One
    this build or CPU has not is ignored with a RuntimeWarning: importing fastlstm must
    not fail on a machine the setting was not made for."""
    value = os.environ.get(variable, "").strip().lower()
    if value:
        try:
            setter(value)
        except ValueError as exc:
            warnings.warn(f"{variable}={os.environ[variable]!r} is ignored: {exc}",
                          RuntimeWarning, stacklevel=2)


_level_from_environment("FASTLSTM_SIMD", set_simd_level)


cdef int _busy_threads = 0  # threads of the layers running now, in every Python thread
cdef int _call_threads = 0  # set_num_threads's count; 0: the default
cdef int _default_cap = 0  # the default's bound by affinity and CPU quota; 0: none


def _cache_size(text):
    """Bytes of a sysfs cache size such as "2048K" or "1M" (0 if unreadable)."""
    text = text.strip().upper()
    unit = text[len(text) - 1:] if text else ""  # (no negative indices: wraparound is off)
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(unit, 1)
    digits = text[:len(text) - 1] if scale > 1 else text
    return int(digits) * scale if digits.isdigit() else 0


def _l2_bytes(sysfs="/sys/devices/system/cpu/cpu0/cache"):
    """One core's L2 cache: as glibc reports it, else as Linux's sysfs does (glibc
    reads CPUID, which some virtual machines leave blank), else 1 MiB."""
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
    except (AttributeError, OSError, ValueError):
        size = 0
    if size > 0:
        return size
    try:
        folders = sorted(os.listdir(sysfs))
    except OSError:
        folders = []
    for folder in folders:
        path = os.path.join(sysfs, folder)
        try:
            with open(os.path.join(path, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(path, "size")) as f:
                size = _cache_size(f.read())
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data") and size > 0:
            return size
    return 1 << 20


L2_BYTES = _l2_bytes()


def _mxcsr_for_tests():
    """The calling thread's MXCSR (0 off x86): the kernels must leave it as it was."""
    return fl_mxcsr()


def panel_width(dtype):
    """Columns per weight panel (256 bytes) for ``dtype`` ("float32" or "float64")."""
    if dtype == "float32":
        return FL_PANEL_BYTES // 4
    if dtype == "float64":
        return FL_PANEL_BYTES // 8
    raise ValueError(f"panel_width: float32 or float64, got {dtype!r}")


_BF16_LEVELS = ("portable", "avx2", "avx512", "avx512-bf16", "amx-bf16")
cdef int _bf16_detected = (FL_BF16_AMX if fl_cpu_has_amx_bf16() else
                           FL_BF16_DP if fl_cpu_has_avx512bf16() else _detected)
cdef int _bf16_level = _bf16_detected


def bf16_level():
    """The level the bfloat16-weight products use now."""
    return _BF16_LEVELS[_bf16_level]


def set_bf16_level(name=None):
    """Use bfloat16 level ``name`` (one of ``bf16_levels()``), or None for the best;
    for tests and comparisons (FASTLSTM_BF16 sets it at import)."""
    global _bf16_level
    _bf16_level = _level_index(name, _BF16_LEVELS, _bf16_detected, "bfloat16 level",
                               "the ")


def bf16_levels():
    """The levels of the bfloat16-weight products this CPU can run, best last: the
    float32 levels (weights widened, FMA), AVX512-BF16 (VDPBF16PS) and AMX-BF16 (tiles
    for blocks of 16 rows, VDPBF16PS for the rest)."""
    return list(_BF16_LEVELS[:_bf16_detected + 1])


_level_from_environment("FASTLSTM_BF16", set_bf16_level)


# Indexed by the int8.h level numbers; _I8_AVAILABLE lists what this CPU runs, in the
# order of speed (AVX-VNNI, numbered last, ranks between AVX2 and AVX-512).
_INT8_LEVELS = ("portable", "avx2", "avx512", "avx512-vnni", "amx-int8", "avx-vnni")
_I8_AVAILABLE = tuple(name for name, has in (  # _detected: 1 AVX2, 2 AVX-512
    ("portable", True), ("avx2", _detected >= 1), ("avx-vnni", fl_cpu_has_avxvnni()),
    ("avx512", _detected >= 2), ("avx512-vnni", fl_cpu_has_avx512vnni()),
    ("amx-int8", fl_cpu_has_amx_int8())) if has)
cdef int _i8_detected = _INT8_LEVELS.index(_I8_AVAILABLE[len(_I8_AVAILABLE) - 1])
cdef int _i8_level = _i8_detected


def int8_level():
    """The level the int8-weight products use now."""
    return _INT8_LEVELS[_i8_level]


def _int8_index(name):
    """The int8.h number of level ``name`` (None: the best), refused with ValueError
    when unknown or not one this CPU runs."""
    if name is None:
        return _i8_detected
    if name not in _INT8_LEVELS:
        raise ValueError(f"unknown int8 level {name!r}; expected one of {_INT8_LEVELS}")
    if name not in _I8_AVAILABLE:
        raise ValueError(f"this CPU does not support the int8 level {name!r}; "
                         f"available: {list(_I8_AVAILABLE)}")
    return _INT8_LEVELS.index(name)


def set_int8_level(name=None):
    """Use int8 level ``name`` (one of ``int8_levels()``), or None for the best; for
    tests and comparisons (FASTLSTM_INT8 sets it at import)."""
    global _i8_level
    _i8_level = _int8_index(name)


def int8_levels():
    """The levels of the int8-weight products this CPU can run, best last: the float32
    levels' vectors (bytes widened to 16 bits, PMADDWD), AVX-VNNI (VPDPBUSD on 256-bit
    vectors), AVX512-VNNI (VPDPBUSD) and AMX-INT8 (tiles for blocks of 16 rows, VPDPBUSD
    for the rest).  Every level gives the same int32 sums; the float32 gate math after
    them follows the level's vector width (portable, 256-bit, 512-bit), so levels of
    different widths can differ in the last bit (docs/precision.md)."""
    return list(_I8_AVAILABLE)


_level_from_environment("FASTLSTM_INT8", set_int8_level)


# ------------------------------------------------------------------ kernels
cdef inline void _matmul(bint beta, int m, int n, int k, const floating *a, Py_ssize_t lda,
                         const floating *bp, floating *g, Py_ssize_t ldg,
                         int wt) noexcept nogil:
    """g (m x n) = beta * g + a (m x k) @ B (k x n), B packed in panels of weight
    type ``wt`` (bfloat16 and int8 panels are read through the same 4-byte pointer)."""
    if floating is float:
        if wt == WEIGHTS_BF16:
            fl_matmul_bf(_bf16_level, beta, m, n, k, a, lda, <const uint32_t *>bp, g, ldg)
        elif wt == WEIGHTS_I8:
            fl_matmul_i8(_i8_level, beta, m, n, k, a, lda, <const uint32_t *>bp, g, ldg)
        else:
            fl_matmul_f(_level, beta, m, n, k, a, lda, bp, g, ldg)
    else:
        fl_matmul_d(_level, beta, m, n, k, a, lda, bp, g, ldg)


cdef inline void _lstm_step(int m, int k, int hidden, const floating *a, Py_ssize_t lda,
                            const floating *bp, floating *g, Py_ssize_t ldg,
                            const floating *bias, floating *c, Py_ssize_t ldc,
                            floating *h, Py_ssize_t ldh, int p_lo, int p_hi,
                            bint reverse, int wt) noexcept nogil:
    if floating is float:
        if wt == WEIGHTS_BF16:
            fl_lstm_step_bf(_bf16_level, m, k, hidden, a, lda, <const uint32_t *>bp, g, ldg,
                            bias, c, ldc, h, ldh, p_lo, p_hi, reverse)
        elif wt == WEIGHTS_I8:
            fl_lstm_step_i8(_i8_level, m, k, hidden, a, lda, <const uint32_t *>bp, g, ldg,
                            bias, c, ldc, h, ldh, p_lo, p_hi, reverse)
        else:
            fl_lstm_step_f(_level, m, k, hidden, a, lda, bp, g, ldg, bias, c, ldc, h, ldh,
                           p_lo, p_hi, reverse)
    else:
        fl_lstm_step_d(_level, m, k, hidden, a, lda, bp, g, ldg, bias, c, ldc, h, ldh,
                       p_lo, p_hi, reverse)


def _activation_for_tests(const floating[::1] x, floating[::1] y, bint sigmoid):
    """y = tanh(x) or sigmoid(x) through the kernels' own code at the current level."""
    if floating is float:
        fl_act_f(_level, x.shape[0], &x[0], &y[0], sigmoid)
    else:
        fl_act_d(_level, x.shape[0], &x[0], &y[0], sigmoid)


def _matmul_bf16_for_tests(const float[:, ::1] a, const uint32_t[::1] bp, float[:, ::1] g,
                           bint beta, level=None, bint sliced=False):
    """g = beta * g + bf16(a) @ B, B in bfloat16 panels of row pairs
    (``_module.pack_panels_bf16``), at ``level`` (a name of ``bf16_levels()``; None:
    the best); ``sliced``: the path taken when memory for the rounded rows runs out."""
    cdef int lv = _bf16_detected if level is None else _BF16_LEVELS.index(level)
    cdef unsigned int csr
    if lv > _bf16_detected:
        raise ValueError(f"this CPU cannot run the bfloat16 level {level!r}")
    if a.shape[0] != g.shape[0] or bp.shape[0] < ((g.shape[1] + 63) // 64) * (
            (a.shape[1] + 1) // 2) * 64:
        raise ValueError("_matmul_bf16_for_tests: shapes do not match")
    if g.shape[0] == 0 or g.shape[1] == 0:
        return
    with nogil:
        csr = fl_ftz_begin()
        if sliced:
            fl_matmul_bf_sliced(lv, beta, g.shape[0], g.shape[1], a.shape[1], &a[0, 0],
                                a.shape[1], &bp[0], &g[0, 0], g.shape[1])
        else:
            fl_matmul_bf(lv, beta, g.shape[0], g.shape[1], a.shape[1], &a[0, 0], a.shape[1],
                         &bp[0], &g[0, 0], g.shape[1])
        fl_ftz_end(csr)


def _set_bf16_expand_for_tests(bint on):
    """Whether products of 4 rows or more with bfloat16 weights read the rows as
    floats (``on``, the default) or as the pairs themselves (the path taken when
    memory for the floats runs out); returns the previous setting."""
    global fl_bf16_expand_on
    previous = bool(fl_bf16_expand_on)
    fl_bf16_expand_on = 1 if on else 0
    return previous


def _i8_block_for_tests(level, const uint32_t[:, ::1] q, const uint32_t[:, ::1] p,
                        int32_t[:, ::1] acc, bint add):
    """acc (R, 64) = add * acc + the int32 sums of one block: q (R, kq) words of four
    unsigned bytes 1..255 (quantized activations are, ``int8.h``), p (kq, 64) words of
    four signed bytes (a panel's quads), by the block of int8 level ``level`` (a name of
    ``int8_levels()`` but "amx-int8"), or "avx-vnni-evex": the AVX-VNNI block's source on
    AVX512-VNNI's instruction, which checks that block's code on CPUs without AVX-VNNI."""
    cdef int which
    if not isinstance(level, str):
        raise TypeError(f"_i8_block_for_tests: a level name, got {level!r}")
    if level == "avx-vnni-evex":
        if "avx512-vnni" not in _I8_AVAILABLE:
            raise ValueError("the AVX-VNNI block's EVEX twin needs AVX512-VNNI")
        which = -1
    elif level == "amx-int8":
        raise ValueError("the AMX block needs the tile configuration: test it through "
                         "_matmul_int8_for_tests")
    else:
        which = _int8_index(level)
    cdef int rows = q.shape[0], kq = q.shape[1]
    if rows < 1 or kq < 1 or p.shape[0] < kq or p.shape[1] != 64 or acc.shape[0] != rows \
            or acc.shape[1] != 64:
        raise ValueError("_i8_block_for_tests: shapes do not match")
    cdef int r, k, j, b
    cdef int32_t comp[64]
    for r in range(rows):
        for k in range(kq):
            for b in range(4):
                if (q[r, k] >> (8 * b)) & 255 == 0:
                    raise ValueError("_i8_block_for_tests: activation bytes are 1..255")
    # The panel's compensations, -128 * sum_k B[k][j], which a packed panel stores.
    for j in range(64):
        comp[j] = 0
        for k in range(kq):
            for b in range(4):
                comp[j] -= 128 * <signed char>((p[k, j] >> (8 * b)) & 255)
    with nogil:
        which = fl_i8_block_add(which, rows, kq, &q[0, 0], kq, &p[0, 0], &acc[0, 0], add,
                                &comp[0])
    if which != 0:
        raise ValueError(f"this build has no int8 block for {level!r}")


def _matmul_int8_for_tests(const float[:, ::1] a, const uint32_t[::1] bp, float[:, ::1] g,
                           bint beta, level=None, bint sliced=False):
    """g = beta * g + dequant(q(a) @ B), B in int8 panels of row quads with scales
    (``_module.pack_panels_int8``), at ``level`` (a name of ``int8_levels()``; None:
    the best); ``sliced``: the path taken when memory for the quantized rows runs out."""
    if level is not None and level in _INT8_LEVELS and level not in _I8_AVAILABLE:
        raise ValueError(f"this CPU cannot run the int8 level {level!r}")
    cdef int lv = _int8_index(level)
    cdef int m, p, n_panels, rows, width
    cdef unsigned int csr
    n_panels = (g.shape[1] + 63) // 64
    rows = fl_i8_panel_rows(a.shape[1])
    if a.shape[0] != g.shape[0] or bp.shape[0] < n_panels * rows * 64:
        raise ValueError("_matmul_int8_for_tests: shapes do not match")
    if g.shape[0] == 0 or g.shape[1] == 0:
        return
    with nogil:
        csr = fl_ftz_begin()
        if sliced:
            for m in range(g.shape[0]):
                for p in range(n_panels):
                    width = min(64, g.shape[1] - p * 64)
                    fl_i8_row_sliced(lv, beta, a.shape[1], &a[m, 0],
                                     &bp[<Py_ssize_t>p * rows * 64], &g[m, p * 64], width)
        else:
            fl_matmul_i8(lv, beta, g.shape[0], g.shape[1], a.shape[1], &a[0, 0], a.shape[1],
                         &bp[0], &g[0, 0], g.shape[1])
        fl_ftz_end(csr)


def _matmul_for_tests(const floating[:, ::1] a, const floating[::1] bp, floating[:, ::1] g,
                      bint beta):
    """g = beta * g + a @ B with B packed in panels (``lstm._pack_panels``)."""
    _matmul(beta, g.shape[0], g.shape[1], a.shape[1], &a[0, 0], a.shape[1], &bp[0],
            &g[0, 0], g.shape[1], WEIGHTS_F32 if floating is float else WEIGHTS_F64)


# ------------------------------------------------------------- layer structs
cdef enum:
    # The storage type of a layer's packed weights (``Geometry.weight_type``): the
    # kernels read every weight pointer as this type.  Reduced-precision storage adds
    # values here, not new functions.
    WEIGHTS_F32 = 0
    WEIGHTS_F64 = 1
    WEIGHTS_BF16 = 2  # bfloat16 panels of row pairs (bf16.h); activations float32
    WEIGHTS_I8 = 3  # int8 panels of row quads with scales (int8.h); activations float32


cdef struct Geometry:
    int batch        # N: sequences (packed input: the longest timestep's)
    int seq_len      # L: timesteps
    int n_in         # I: input features of this layer
    int hidden       # H
    int out_size     # P: size of h (proj_size, else H)
    int num_dirs     # D
    int n_panels     # gate panels of one direction
    int r_panels     # panels of the projection's output columns
    int g_cols       # gate columns of one direction (n_panels whole panels)
    bint batch_first
    bint has_proj
    int weight_type  # WEIGHTS_F32, WEIGHTS_F64, WEIGHTS_BF16, WEIGHTS_I8
    # k_ih: rows of a W_ih panel in its storage words (I; bfloat16: pairs, I/2 up; int8:
    # quads, I/4 up, and two rows of scales and compensations); k_hr: the same for W_hr.
    int k_ih
    int k_hr


cdef struct Weights:
    const void *w_ih     # (D*4Hp, I): both directions' interleaved W_ih, for BLAS
    const void *w_ih_p   # the same transposed in panels, for the small-M kernel
    const void *w_hh_p   # (D, hh_stride): each interleaved W_hh^T in panels
    const void *bias     # (D, 4Hp): b_ih + b_hh interleaved
    const void *w_hr_p   # (D, hr_stride): each W_hr^T in panels; NULL without projection
    Py_ssize_t hh_stride
    Py_ssize_t hr_stride


cdef struct Buffers:
    const void *x        # (R, I) rows in the caller's layout
    const void *h0       # (D, N, P)
    void *c              # (D, N, H): c_0 on entry, c_n on exit
    void *hcell          # (D, N, H): the unprojected h (projection only)
    void *out            # (R, D*P)
    const long long *bsizes   # packed input: sequences per timestep (L,), else NULL
    const long long *offs     # packed input: first row of each timestep (L + 1,)
    const long long *lengths  # packed input: the sorted sequences' lengths (N,)
    bint h0_zero         # h0 is zero: step 0 skips its recurrent product
    fl_barrier *bar      # the region's barrier (NULL on one thread)
    # bfloat16 W_hh without projection: h of the last two steps rounded to bfloat16
    # pairs, (2, D, N, hq_ld) words (step s in s & 1), each thread writing its own
    # units; NULL: each step rounds the whole previous h itself
    uint32_t *hq
    Py_ssize_t hq_ld
    # bfloat16 or int8 weights in split mode: a time chunk's input rows, rounded to pairs
    # or quantized (quads, scales in xs) once for every thread's projection, each thread
    # preparing its share, (2, D, xq_rows, xq_ld) words, chunk t in half t & 1: with step
    # counters a thread may prepare the next chunk while another still projects this one;
    # NULL: each projection prepares its own
    uint32_t *xq
    float *xs
    Py_ssize_t xq_ld
    Py_ssize_t xq_rows


cdef struct Layer:
    Geometry g
    Weights w
    Buffers b


cdef struct Part:
    # One thread's share of a direction: batch entries [n_lo, n_hi), gate panels
    # [p_lo, p_hi), projected columns in panels [r_lo, r_hi).
    int d
    int n_lo
    int n_hi
    int p_lo
    int p_hi
    int r_lo
    int r_hi


cdef struct Chunk:
    # Where each direction's input projection of a time chunk starts (``t0_*``) and
    # its units (rows, or batch entries of ``steps`` rows each with batch-first input);
    # ``batch`` is the rows per timestep of the gate buffer (1 for packed input).
    int t0_fw
    int u_fw
    int t0_bw
    int u_bw
    int steps
    int batch
    # Which half of ``Buffers.xq`` the chunk's prepared rows use (the time chunk's parity).
    int parity


cdef struct Sched:
    # How one call runs, from ``_schedule`` (see ``layer``).
    int threads
    int n_chunks
    int t_chunk
    int blas_min_rows
    bint dirs_in_turn
    int sync             # split mode: -1 barriers, 1 step counters, 0 counters if CPUs suffice
    bint backward_order  # a one-timestep call's panel order (alternates from call to call)
    int team_flags       # team.h: FL_FIT_CPUS, FL_DYNAMIC (from the tuning)


cdef inline Part _part(int d, int n_lo, int n_hi, int p_lo, int p_hi, int r_lo,
                       int r_hi) noexcept nogil:
    cdef Part p
    p.d, p.n_lo, p.n_hi, p.p_lo, p.p_hi, p.r_lo, p.r_hi = d, n_lo, n_hi, p_lo, p_hi, r_lo, r_hi
    return p


cdef inline Py_ssize_t _row(const Geometry *g, Py_ssize_t t, Py_ssize_t n) noexcept nogil:
    """Row of (timestep t, batch entry n) in the caller's layout."""
    return n * g.seq_len + t if g.batch_first else t * g.batch + n


cdef inline void *_line_up(void *p) noexcept nogil:
    """``p`` moved up to the next cache line (for buffers allocated 64 bytes larger)."""
    return <char *>p + (-<Py_ssize_t>p & 63)


cdef inline void _barrier(const Layer *L) noexcept nogil:
    """The region's barrier (``team.h``: it never sleeps, so that the time a thread
    waits is not mistaken for time the machine took from it)."""
    if L.b.bar != NULL:
        fl_barrier_wait(L.b.bar, omp_get_num_threads())


cdef inline Py_ssize_t _group_rows(const Geometry *g, const Chunk *ck, int t0, int b_lo,
                                   int b_hi, int group, Py_ssize_t *x_row,
                                   int *m) noexcept nogil:
    """Group ``group`` of a chunk's units [b_lo, b_hi) (see ``_project_item``: one
    group of rows with time-major input, one per batch entry with batch-first): its
    first row of x (``x_row``) and its rows (``m``); returns its first row as
    ``Buffers.xq`` counts a direction's rows."""
    cdef int n = b_lo + group
    if g.batch_first:
        x_row[0] = <Py_ssize_t>n * g.seq_len + t0
        m[0] = ck.steps
        return <Py_ssize_t>n * ck.steps
    x_row[0] = <Py_ssize_t>t0 * ck.batch + b_lo
    m[0] = b_hi - b_lo
    return b_lo


cdef inline bint _by_step(bint batch_first, int units, int steps, int seq_len, int n_in,
                          int weight_type) noexcept nogil:
    """Whether ``_project_item`` projects a batch-first chunk's ``units`` batch entries
    a timestep at a time (their rows seq_len rows apart in x), rather than an entry's
    ``steps`` rows at a time: when the entries outnumber the steps, so that the weights
    are read once per step instead of once per entry (256 x 10 at I = H = 512: 2.8x the
    time of the time-major forward)."""
    return (batch_first and units > steps
            and <Py_ssize_t>seq_len * n_in < (<Py_ssize_t>1 << 30))


# Scales of int8 rows gathered at a time (rows projected a timestep at a time lie apart).
cdef enum:
    _XS_BLOCK = 256


def projection_by_step(bint batch_first, int units, int steps, int seq_len, int n_in,
                       weight_dtype="float32"):
    """``_by_step`` for tests: whether a chunk's input projection goes a timestep at a
    time (see ``_project_item``)."""
    cdef int wt = {"float32": WEIGHTS_F32, "float64": WEIGHTS_F64, "bfloat16": WEIGHTS_BF16,
                   "int8": WEIGHTS_I8}[weight_dtype]
    return _by_step(batch_first, units, steps, seq_len, n_in, wt)


cdef void _project_item(const Layer *L, floating *gbuf, const Chunk *ck, int d, int p_lo,
                        int p_hi, int b_lo, int b_hi, int blas_min_rows) noexcept nogil:
    """Input projection of direction ``d`` for the chunk's timesteps, into gate
    panels [p_lo, p_hi) of that direction.

    The gate buffer holds one time chunk, time-major: row ``j * N + n`` is
    timestep ``t0 + j`` of batch entry ``n``.  Time-major input: buffer rows
    [b_lo, b_hi) (contiguous in x).  Batch-first input: batch entries
    [b_lo, b_hi), each ``steps`` contiguous rows of x.
    """
    cdef const Geometry *g = &L.g
    cdef int pw = FL_PANEL_BYTES // sizeof(floating)
    cdef int n_in = g.n_in
    cdef int t0 = ck.t0_fw if d == 0 else ck.t0_bw
    cdef int cols = min(g.g_cols, p_hi * pw) - p_lo * pw
    cdef Py_ssize_t gb_ld = <Py_ssize_t>g.num_dirs * g.g_cols
    cdef const floating *x = <const floating *>L.b.x
    cdef const floating *w = (<const floating *>L.w.w_ih
                              + (<Py_ssize_t>d * g.g_cols + p_lo * pw) * n_in)
    cdef const floating *wp = (<const floating *>L.w.w_ih_p
                               + (<Py_ssize_t>d * (g.g_cols // pw) + p_lo) * g.k_ih * pw)
    cdef floating *g0 = gbuf + d * g.g_cols + p_lo * pw
    cdef const floating *a
    cdef floating *gp
    cdef Py_ssize_t ldg, row, x_row, lda, q_rows
    cdef int m, group, n_groups, r0, r, i
    cdef float xs_rows[_XS_BLOCK]
    cdef bint by_step = _by_step(g.batch_first, b_hi - b_lo, ck.steps, g.seq_len, n_in,
                                 g.weight_type)
    cdef unsigned int csr = fl_ftz_begin()
    n_groups = ck.steps if by_step else (b_hi - b_lo if g.batch_first else 1)
    for group in range(n_groups):
        if by_step:
            m = b_hi - b_lo
            x_row = <Py_ssize_t>b_lo * g.seq_len + t0 + group
            lda = <Py_ssize_t>g.seq_len * n_in
            row = <Py_ssize_t>b_lo * ck.steps + group  # as _group_rows counts (b_lo, group)
            q_rows = ck.steps                          # prepared rows of one entry
            gp = g0 + (<Py_ssize_t>group * ck.batch + b_lo) * gb_ld
            ldg = gb_ld
        else:
            row = _group_rows(g, ck, t0, b_lo, b_hi, group, &x_row, &m)
            lda = n_in
            q_rows = 1
            # The gate buffer is time-major: a batch entry's steps are ck.batch rows apart.
            gp = g0 + (b_lo + group) * gb_ld
            ldg = ck.batch * gb_ld if g.batch_first else gb_ld
        a = x + x_row * n_in
        if floating is float:
            if L.b.xq != NULL:  # the rows prepared by _prepare_rows
                row = row + (<Py_ssize_t>ck.parity * g.num_dirs + d) * L.b.xq_rows
                if m <= 0:
                    pass
                elif g.weight_type == WEIGHTS_BF16:
                    fl_matmul_bfp(_bf16_level, False, m, cols, n_in, L.b.xq + row * L.b.xq_ld,
                                  q_rows * L.b.xq_ld, <const uint32_t *>wp, gp, ldg)
                elif q_rows == 1:
                    fl_matmul_i8q(_i8_level, False, m, cols, n_in, L.b.xq + row * L.b.xq_ld,
                                  L.b.xq_ld, L.b.xs + row, <const uint32_t *>wp, gp, ldg)
                else:
                    # Rows q_rows apart: their scales, one per row, gathered in blocks.
                    r0 = 0
                    while r0 < m:
                        r = min(<int>_XS_BLOCK, m - r0)
                        for i in range(r):
                            xs_rows[i] = L.b.xs[row + <Py_ssize_t>(r0 + i) * q_rows]
                        fl_matmul_i8q(_i8_level, False, r, cols, n_in,
                                      L.b.xq + (row + <Py_ssize_t>r0 * q_rows) * L.b.xq_ld,
                                      q_rows * L.b.xq_ld, xs_rows, <const uint32_t *>wp,
                                      gp + r0 * ldg, ldg)
                        r0 = r0 + r
                continue
        if m >= blas_min_rows:
            gemm(NoTrans, Trans, m, cols, n_in, <floating>1.0, a, <int>lda, w, n_in,
                 <floating>0.0, gp, <int>ldg)
        elif m > 0:
            _matmul(False, m, cols, n_in, a, lda, wp, gp, ldg, g.weight_type)
    fl_ftz_end(csr)


cdef void _prepare_rows(const Layer *L, const Chunk *ck, int d, int b_lo,
                        int b_hi) noexcept nogil:
    """Units [b_lo, b_hi) of the chunk's input rows of direction ``d`` (as
    ``_project_item`` counts them) rounded to bfloat16 pairs or quantized to int8
    into ``Buffers.xq``, where every thread's projection reads them."""
    cdef const Geometry *g = &L.g
    cdef int t0 = ck.t0_fw if d == 0 else ck.t0_bw
    cdef const float *x = <const float *>L.b.x
    cdef const float *a
    cdef Py_ssize_t row, x_row, ld = L.b.xq_ld
    cdef int m, group
    for group in range(b_hi - b_lo if g.batch_first else 1):
        row = (_group_rows(g, ck, t0, b_lo, b_hi, group, &x_row, &m)
               + (<Py_ssize_t>ck.parity * g.num_dirs + d) * L.b.xq_rows)
        a = x + x_row * g.n_in
        if m <= 0:
            continue
        if g.weight_type == WEIGHTS_BF16:
            fl_bf16_pairs_to(_bf16_level, m, g.n_in, a, g.n_in, L.b.xq + row * ld, ld)
        else:
            fl_i8_quantize(_i8_level, m, g.n_in, a, g.n_in, L.b.xq + row * ld, ld,
                           L.b.xs + row)


cdef void _steps(const Layer *L, floating *gbuf, Part pt, int s0, int s1, bint sync,
                 int *count, int n_parts) noexcept nogil:
    """Steps [s0, s1) of direction ``pt.d`` (step s is timestep s forward, L-1-s
    backward) for the thread's part ``pt``.

    The gate buffer holds this time chunk as ``_project_item`` wrote it.  The
    state is read back from ``out`` (h of the previous step) and ``c`` (updated
    in place), so consecutive chunks need nothing else.  With ``sync`` (split
    mode) every thread of the region meets at a barrier after each phase of a
    step.  With ``h0_zero`` step 0 skips its recurrent product (h_{-1} = 0).

    Packed input (``bsizes`` not NULL): timestep t has the ``bsizes[t]``
    longest sequences, rows ``offs[t]`` on of ``out`` (and of ``x``); the rows
    of a step that have no previous step in this direction (every row at step
    0, and backward the sequences that end at t) start from ``h0`` and ``c``.

    ``count`` (split mode without projection, instead of ``sync``): this
    direction's step counter, shared by its ``n_parts`` threads.  A thread
    adds 1 when its part of step s is written and, before step s + 1, waits
    until all parts are (count >= n_parts * (s + 1)): one atomic add and a
    short spin per step, lighter than an OpenMP barrier.
    """
    cdef const Geometry *g = &L.g
    cdef int pw = FL_PANEL_BYTES // sizeof(floating)
    cdef int d = pt.d, n_lo = pt.n_lo, n_hi = pt.n_hi
    cdef int seq_len = g.seq_len, batch = g.batch, hidden = g.hidden, out_size = g.out_size
    cdef bint has_proj = g.has_proj
    cdef const long long *bsizes = L.b.bsizes
    cdef const long long *offs = L.b.offs
    cdef Py_ssize_t gb_ld = <Py_ssize_t>g.num_dirs * g.g_cols
    cdef Py_ssize_t o_ld = <Py_ssize_t>(seq_len if g.batch_first else 1) * g.num_dirs * out_size
    cdef Py_ssize_t row_ld = <Py_ssize_t>g.num_dirs * out_size
    cdef int r_width = min(out_size, pt.r_hi * pw) - pt.r_lo * pw
    cdef floating *out = <floating *>L.b.out
    cdef const floating *w_hh_d = <const floating *>L.w.w_hh_p + <Py_ssize_t>d * L.w.hh_stride
    cdef const floating *w_hr_d = <const floating *>L.w.w_hr_p + <Py_ssize_t>d * L.w.hr_stride
    cdef const floating *b_d = <const floating *>L.w.bias + <Py_ssize_t>d * g.g_cols
    cdef floating *c_d = <floating *>L.b.c + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef floating *hc_d = <floating *>L.b.hcell + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef const floating *h0_d = <const floating *>L.b.h0 + (<Py_ssize_t>d * batch + n_lo) * out_size
    cdef Py_ssize_t g_base = 0
    cdef const floating *hprev = NULL
    cdef floating *g_t
    cdef floating *o_t
    cdef floating *dst
    cdef Py_ssize_t dst_ld = hidden if has_proj else o_ld
    cdef int k_init = 0 if L.b.h0_zero else out_size  # read once: the struct is shared
    cdef Py_ssize_t s, t, tp, j
    cdef int m, n_cont
    # bfloat16 h pairs (Buffers.hq): this direction's, a step's stride, this thread's units
    cdef uint32_t *hq = NULL
    cdef Py_ssize_t hq_ld = L.b.hq_ld
    cdef Py_ssize_t hq_step = <Py_ssize_t>g.num_dirs * batch * hq_ld
    cdef int hq_units = min(hidden, pt.p_hi * (pw // 4)) - pt.p_lo * (pw // 4)
    if L.b.hq != NULL:
        hq = L.b.hq + <Py_ssize_t>d * batch * hq_ld
    cdef unsigned int csr = fl_ftz_begin()
    if bsizes != NULL:
        g_base = offs[s0] if d == 0 else offs[seq_len - s1]
    for s in range(s0, s1):
        t = s if d == 0 else seq_len - 1 - s
        tp = t - 1 if d == 0 else t + 1  # the previous timestep in this direction
        if bsizes == NULL:
            j = s - s0 if d == 0 else s1 - 1 - s
            m = n_hi - n_lo
            n_cont = 0 if s == 0 else m
            g_t = gbuf + (j * batch + n_lo) * gb_ld + d * g.g_cols
            o_t = out + _row(g, t, n_lo) * row_ld
            if n_cont > 0:
                hprev = out + _row(g, tp, n_lo) * row_ld
        else:
            m = max(0, <int>min(<long long>n_hi, bsizes[t]) - n_lo)
            n_cont = 0 if s == 0 else max(0, min(m, <int>bsizes[tp] - n_lo))
            g_t = gbuf + (offs[t] - g_base + n_lo) * gb_ld + d * g.g_cols
            o_t = out + (offs[t] + n_lo) * o_ld
            if n_cont > 0:
                hprev = out + (offs[tp] + n_lo) * o_ld
        o_t = o_t + d * out_size
        dst = hc_d if has_proj else o_t
        # Odd steps run the panels last to first: the weights read last by a
        # step, still in the cache, are the first the next one reads (a
        # thread's W_hh share about fills its L2 at H = 256).
        if n_cont > 0:
            if count != NULL:
                fl_count_wait(count, n_parts * <int>s)
            if floating is float and hq != NULL:
                fl_lstm_step_bfp(_bf16_level, n_cont, out_size, hidden,
                                 hq + ((s - 1) & 1) * hq_step + n_lo * hq_ld, hq_ld,
                                 <const uint32_t *>w_hh_d, g_t, gb_ld, b_d, c_d, hidden, dst,
                                 dst_ld, pt.p_lo, pt.p_hi, s & 1)
            else:
                _lstm_step(n_cont, out_size, hidden, hprev + d * out_size, o_ld, w_hh_d, g_t,
                           gb_ld, b_d, c_d, hidden, dst, dst_ld, pt.p_lo, pt.p_hi, s & 1,
                           g.weight_type)
        if m > n_cont:  # rows starting from the initial state
            _lstm_step(m - n_cont, k_init, hidden,
                       h0_d + <Py_ssize_t>n_cont * out_size, out_size, w_hh_d,
                       g_t + n_cont * gb_ld, gb_ld, b_d, c_d + <Py_ssize_t>n_cont * hidden,
                       hidden, dst + n_cont * dst_ld, dst_ld, pt.p_lo, pt.p_hi, s & 1,
                       g.weight_type)
        if floating is float:
            # This thread's units of h, rounded once for the next step's product by
            # every thread (before the signal that lets them read it).
            if hq != NULL and m > 0 and hq_units > 0:
                fl_bf16_pairs_to(_bf16_level, m, hq_units, dst + pt.p_lo * (pw // 4), dst_ld,
                                 hq + (s & 1) * hq_step + n_lo * hq_ld + pt.p_lo * (pw // 8),
                                 hq_ld)
        if count != NULL:
            fl_count_signal(count)
        if has_proj:
            if sync:
                _barrier(L)
            if r_width > 0 and m > 0:
                _matmul(False, m, r_width, hidden, hc_d, hidden,
                        w_hr_d + <Py_ssize_t>pt.r_lo * g.k_hr * pw, o_t + pt.r_lo * pw, o_ld,
                        g.weight_type)
        if sync:
            _barrier(L)
    fl_ftz_end(csr)


cdef bint _bf16_single_step(const Geometry *g, int m, const float *x, const float *h0,
                            int k_rec, const uint32_t *w_ih, const uint32_t *w_hh, float *gp,
                            Py_ssize_t gb_ld, const float *b, float *c, float *dst,
                            Py_ssize_t dst_ld, int p_lo, int p_hi,
                            bint backward_order) noexcept nogil:
    """``_single_step``'s panels with bfloat16 weights, x and h rounded to bfloat16 once
    for all of them (not once per panel); False, having done nothing, when out of memory
    (the caller then goes panel by panel, each product rounding its own)."""
    cdef int i, p
    cdef uint32_t *hp = NULL
    cdef uint32_t *xp = fl_bf16_pairs(_bf16_level, m, g.n_in, x, g.n_in)
    if xp == NULL:
        return False
    if k_rec > 0:
        hp = fl_bf16_pairs(_bf16_level, m, k_rec, h0, g.out_size)
        if hp == NULL:
            free(xp)
            return False
    for i in range(p_hi - p_lo):
        p = p_hi - 1 - i if backward_order else p_lo + i
        fl_matmul_bfp(_bf16_level, False, m, 64, g.n_in, xp, fl_bf16_ld(g.n_in),
                      w_ih + <Py_ssize_t>p * g.k_ih * 64, gp + p * 64, gb_ld)
        fl_lstm_step_bfp(_bf16_level, m, k_rec, g.hidden, hp, fl_bf16_ld(k_rec), w_hh, gp,
                         gb_ld, b, c, g.hidden, dst, dst_ld, p, p + 1, False)
    free(xp)
    free(hp)
    return True


cdef bint _i8_single_step(const Geometry *g, int m, const float *x, const float *h0,
                          int k_rec, const uint32_t *w_ih, const uint32_t *w_hh, float *gp,
                          Py_ssize_t gb_ld, const float *b, float *c, float *dst,
                          Py_ssize_t dst_ld, int p_lo, int p_hi,
                          bint backward_order) noexcept nogil:
    """``_single_step``'s panels with int8 weights, x and h quantized once for all of
    them; False, having done nothing, when out of memory (as ``_bf16_single_step``)."""
    cdef int i, p
    cdef float *xs
    cdef float *hs = NULL
    cdef uint32_t *hq = NULL
    cdef uint32_t *xq = fl_i8_quantized(_i8_level, m, g.n_in, x, g.n_in, &xs)
    if xq == NULL:
        return False
    if k_rec > 0:
        hq = fl_i8_quantized(_i8_level, m, k_rec, h0, g.out_size, &hs)
        if hq == NULL:
            free(xq)
            return False
    for i in range(p_hi - p_lo):
        p = p_hi - 1 - i if backward_order else p_lo + i
        fl_matmul_i8q(_i8_level, False, m, 64, g.n_in, xq, fl_i8_ld(g.n_in), xs,
                      w_ih + <Py_ssize_t>p * g.k_ih * 64, gp + p * 64, gb_ld)
        fl_lstm_step_i8q(_i8_level, m, k_rec, g.hidden, hq, fl_i8_ld(k_rec), hs, w_hh, gp,
                         gb_ld, b, c, g.hidden, dst, dst_ld, p, p + 1, False)
    free(xq)
    free(hq)
    return True


cdef void _single_step(const Layer *L, floating *gbuf, Part pt, bint sync,
                       bint backward_order) noexcept nogil:
    """A sequence of one timestep (a streaming call): the thread's part ``pt``.

    Panel by panel: the input product of the panel, then its recurrent product
    and gate math, so a panel's two weight blocks are read one after the
    other.  ``backward_order`` runs the panels last to first: callers alternate
    it from call to call, so that the weights read last by one call, still in
    the cache, are the first the next call reads (a thread's weights about fill
    its L2 at H = 256, which an identical order would evict just before use).
    """
    cdef const Geometry *g = &L.g
    cdef int pw = FL_PANEL_BYTES // sizeof(floating)
    cdef int d = pt.d, n_lo = pt.n_lo
    cdef int batch = g.batch, hidden = g.hidden, out_size = g.out_size, n_in = g.n_in
    cdef bint has_proj = g.has_proj
    cdef Py_ssize_t gb_ld = <Py_ssize_t>g.num_dirs * g.g_cols
    cdef Py_ssize_t o_ld = <Py_ssize_t>g.num_dirs * out_size
    cdef int m = pt.n_hi - n_lo
    cdef int r_width = min(out_size, pt.r_hi * pw) - pt.r_lo * pw
    cdef int i, p
    cdef const floating *x = <const floating *>L.b.x
    cdef const floating *w_ih_d = (<const floating *>L.w.w_ih_p
                                   + <Py_ssize_t>d * (g.g_cols // pw) * g.k_ih * pw)
    cdef const floating *w_hh_d = <const floating *>L.w.w_hh_p + <Py_ssize_t>d * L.w.hh_stride
    cdef const floating *w_hr_d = <const floating *>L.w.w_hr_p + <Py_ssize_t>d * L.w.hr_stride
    cdef const floating *b_d = <const floating *>L.w.bias + <Py_ssize_t>d * g.g_cols
    cdef floating *c_d = <floating *>L.b.c + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef floating *hc_d = <floating *>L.b.hcell + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef const floating *h0_d = <const floating *>L.b.h0 + (<Py_ssize_t>d * batch + n_lo) * out_size
    cdef floating *gp = gbuf + n_lo * gb_ld + d * g.g_cols
    cdef floating *o_t = <floating *>L.b.out + n_lo * o_ld + d * out_size
    cdef floating *dst = hc_d if has_proj else o_t
    cdef Py_ssize_t dst_ld = hidden if has_proj else o_ld
    cdef int k_rec = 0 if L.b.h0_zero else out_size  # read once: the struct is shared
    cdef unsigned int csr = fl_ftz_begin()
    cdef bint done = False
    if floating is float:
        if m > 0 and g.weight_type == WEIGHTS_BF16:
            done = _bf16_single_step(g, m, x + <Py_ssize_t>n_lo * n_in, h0_d, k_rec,
                                     <const uint32_t *>w_ih_d, <const uint32_t *>w_hh_d, gp,
                                     gb_ld, b_d, c_d, dst, dst_ld, pt.p_lo, pt.p_hi,
                                     backward_order)
        elif m > 0 and g.weight_type == WEIGHTS_I8:
            done = _i8_single_step(g, m, x + <Py_ssize_t>n_lo * n_in, h0_d, k_rec,
                                   <const uint32_t *>w_ih_d, <const uint32_t *>w_hh_d, gp,
                                   gb_ld, b_d, c_d, dst, dst_ld, pt.p_lo, pt.p_hi,
                                   backward_order)
    if m > 0 and not done:
        for i in range(pt.p_hi - pt.p_lo):
            p = pt.p_hi - 1 - i if backward_order else pt.p_lo + i
            _matmul(False, m, pw, n_in, x + <Py_ssize_t>n_lo * n_in, n_in,
                    w_ih_d + <Py_ssize_t>p * g.k_ih * pw, gp + p * pw, gb_ld, g.weight_type)
            _lstm_step(m, k_rec, hidden, h0_d, out_size, w_hh_d, gp,
                       gb_ld, b_d, c_d, hidden, dst, dst_ld, p, p + 1, False, g.weight_type)
    if has_proj:
        if sync:
            _barrier(L)
        if r_width > 0 and m > 0:
            _matmul(False, m, r_width, hidden, hc_d, hidden,
                    w_hr_d + <Py_ssize_t>pt.r_lo * g.k_hr * pw, o_t + pt.r_lo * pw, o_ld,
                    g.weight_type)
    fl_ftz_end(csr)


cdef void _single_step_part(const Layer *L, floating *gbuf, int tid, int team, int n_chunks,
                            bint backward_order) noexcept nogil:
    """Thread ``tid``'s part of a one-timestep layer on ``team`` threads: split
    mode (``n_chunks`` == 0, panels shared) or batch chunks, as in ``layer``."""
    cdef const Geometry *g = &L.g
    cdef int num_dirs = g.num_dirs, batch = g.batch
    cdef int n_parts = team // num_dirs
    cdef int d, part, task, chunk, lo, hi
    cdef int chunks = max(1, n_chunks)
    if n_chunks == 0 and n_parts > 0:
        d = min(tid // n_parts, num_dirs - 1)
        part = tid % n_parts if tid < n_parts * num_dirs else n_parts
        lo, hi = min(part, n_parts), min(part + 1, n_parts)
        _single_step(L, gbuf, _part(d, 0, batch, _share(lo, g.n_panels, n_parts),
                                    _share(hi, g.n_panels, n_parts),
                                    _share(lo, g.r_panels, n_parts),
                                    _share(hi, g.r_panels, n_parts)),
                     n_parts > 1, backward_order)
    else:
        task = tid
        while task < num_dirs * chunks:
            d = task // chunks
            chunk = task % chunks
            _single_step(L, gbuf, _part(d, _share(chunk, batch, chunks),
                                        _share(chunk + 1, batch, chunks), 0, g.n_panels, 0,
                                        g.r_panels),
                         False, backward_order)
            task = task + team


cdef void _single_step_region(const Layer *L, floating *gbuf, int num_threads, int n_chunks,
                              bint backward_order, int team_flags) noexcept nogil:
    """A one-timestep layer on ``num_threads`` threads (see ``_single_step_part``;
    the schedule decides how many, ``team.h`` how many the machine can run now).
    One thread runs it without an OpenMP region, whose start and end cost about
    0.3 us even for one thread."""
    cdef int tid = 0, team = 0, threads
    cdef long long c0 = 0
    cdef fl_region region
    cdef Layer Lr
    # A forked child may not start a region.
    threads = 1
    if num_threads > 1 and not fl_forked_serial:
        threads = fl_team_begin(&region, num_threads, False, team_flags)
    if threads <= 1:
        _single_step_part(L, gbuf, 0, 1, n_chunks, backward_order)
        return
    Lr = L[0]
    Lr.b.bar = &region.bar
    fl_note_team(threads)
    with parallel(num_threads=threads):
        tid = omp_get_thread_num()
        team = omp_get_num_threads()
        c0 = fl_start_cpu(&region)
        _single_step_part(&Lr, gbuf, tid, team, n_chunks, backward_order)
        fl_thread_stop(&region, c0)
    fl_team_end(&region)


cdef inline int bias_cols(int hidden, int pw) noexcept nogil:
    """Gate columns of one direction: 4 * hidden rounded up to whole panels."""
    cdef int unit = pw // 4
    return pw * ((hidden + unit - 1) // unit)


cdef inline int _threads_or_default(int num_threads) noexcept nogil:
    """``num_threads``, or for 0 and less the process's count
    (``fastlstm.get_num_threads()``, handed over by ``set_call_threads``)."""
    cdef int n
    if num_threads > 0:
        return num_threads
    if _call_threads > 0:
        return _call_threads
    # OpenMP's count is read at each call: other libraries in the process (torch)
    # set it too.
    n = max(1, omp_get_max_threads())
    return min(n, _default_cap) if _default_cap > 0 else n


cdef inline int _share(int i, int total, int parts) noexcept nogil:
    """Start of share ``i`` of ``total`` items split into ``parts`` (i <= parts)."""
    return <int>(<long long>i * total // parts)


cdef void _project_shared(const Layer *L, floating *gbuf, const Chunk *ck, int tid, int team,
                          int blas_min_rows) noexcept nogil:
    """Thread ``tid``'s share of the input projection of one time chunk.

    Direction d's chunk has ``u_d`` units to share: rows (time-major input;
    packed input passes batch = 1 and its rows as timesteps) or batch entries
    of ``steps`` rows each (batch-first).  Shared by blocks of units when there
    are enough, else by blocks of gate panels, so that each thread streams only
    its part of the weights.  Every thread of the team calls it.
    """
    cdef int num_dirs = L.g.num_dirs, n_panels = L.g.n_panels
    cdef int most = max(ck.u_fw, ck.u_bw if num_dirs == 2 else 0)
    cdef int nb = max(1, min(team, most if L.g.batch_first else most // 16))
    cdef bint by_rows = num_dirs * nb >= team or nb > 1
    cdef int n_items, item, d, blk, units
    if not by_rows:
        nb = max(1, min(n_panels, team // num_dirs))
    n_items = num_dirs * nb
    item = tid
    while item < n_items:
        d = item // nb
        blk = item % nb
        units = ck.u_fw if d == 0 else ck.u_bw
        if by_rows:
            _project_item(L, gbuf, ck, d, 0, n_panels, _share(blk, units, nb),
                          _share(blk + 1, units, nb), blas_min_rows)
        else:
            _project_item(L, gbuf, ck, d, _share(blk, n_panels, nb),
                          _share(blk + 1, n_panels, nb), 0, units, blas_min_rows)
        item = item + team


def input_projection(const floating[:, ::1] x, const floating[:, ::1] w_ih,
                     const floating[::1] w_ih_p, floating[:, ::1] gates, int num_threads,
                     int blas_min_rows):
    """gates (R, n_out) = x (R, I) @ w_ih (n_out, I)^T, shared by ``num_threads``.

    The input projection of a layer on its own (as one time chunk of R steps
    of one sequence), for the tests and the benchmark's peak measurement;
    ``w_ih_p`` is ``w_ih`` packed in panels.  Blocks of at least
    ``blas_min_rows`` rows go to BLAS GEMM, smaller ones to the small-M kernel.
    """
    cdef int rows = x.shape[0]
    cdef int n_out = gates.shape[1]
    cdef int pw = FL_PANEL_BYTES // sizeof(floating)
    cdef int tid = 0, team = 0
    cdef Layer L
    cdef Chunk ck
    if rows == 0:
        return
    memset(&L, 0, sizeof(L))
    L.g.batch, L.g.seq_len, L.g.n_in, L.g.num_dirs = 1, rows, x.shape[1], 1
    L.g.k_ih = L.g.n_in
    L.g.weight_type = WEIGHTS_F32 if floating is float else WEIGHTS_F64
    L.g.n_panels, L.g.g_cols = (n_out + pw - 1) // pw, n_out
    L.b.x, L.w.w_ih, L.w.w_ih_p = &x[0, 0], &w_ih[0, 0], &w_ih_p[0]
    ck.t0_fw, ck.u_fw, ck.t0_bw, ck.u_bw, ck.steps, ck.batch = 0, rows, 0, 0, rows, 1
    cdef floating *g_ptr = &gates[0, 0]
    if num_threads <= 1 or fl_forked_serial:
        with nogil:
            _project_shared(&L, g_ptr, &ck, 0, 1, blas_min_rows)
        return
    fl_note_team(num_threads)
    with nogil, parallel(num_threads=num_threads):
        tid = omp_get_thread_num()
        team = omp_get_num_threads()
        _project_shared(&L, g_ptr, &ck, tid, team, blas_min_rows)


cdef int _bound(int i, int parts, int batch, const long long *lengths, int t_lo,
                int steps) noexcept nogil:
    """Start of batch chunk ``i`` of ``parts``: an even share of the batch, or
    with packed input (``lengths`` of the sorted sequences, non-increasing)
    the first entry past an equal share of the rows in timesteps
    [t_lo, t_lo + steps), so that the chunk's tasks take about equally long."""
    cdef long long total = 0, done = 0, target
    cdef int n
    if lengths == NULL:
        return _share(i, batch, parts)
    if i == 0:
        return 0
    if i == parts:
        return batch
    for n in range(batch):
        total += min(<long long>steps, max(0, lengths[n] - t_lo))
    target = total * i  # compared with done * parts
    for n in range(batch):
        if done * parts >= target:
            return n
        done += min(<long long>steps, max(0, lengths[n] - t_lo))
    return batch


cdef inline void _chunk_of(const Layer *L, int s0, int s1, Chunk *ck) noexcept nogil:
    """Where each direction's part of time chunk [s0, s1) starts, and its units."""
    cdef const long long *offs = L.b.offs
    cdef int seq_len = L.g.seq_len
    ck.parity = 0
    if offs != NULL:
        ck.steps, ck.batch = 0, 1
        ck.t0_fw = <int>offs[s0]
        ck.u_fw = <int>(offs[s1] - offs[s0])
        ck.t0_bw = <int>offs[seq_len - s1]
        ck.u_bw = <int>(offs[seq_len - s0] - offs[seq_len - s1])
    else:
        ck.steps, ck.batch = s1 - s0, L.g.batch
        ck.t0_fw = s0
        ck.t0_bw = seq_len - s1
        ck.u_fw = L.g.batch if L.g.batch_first else ck.steps * L.g.batch
        ck.u_bw = ck.u_fw


cdef void _layer_thread(const Layer *L, floating *gbuf, const Sched *sc, int tid, int team,
                        int *counts, bint counters_ok) noexcept nogil:
    """Thread ``tid``'s work on every time chunk of a layer (see ``layer``)."""
    cdef const Geometry *g = &L.g
    cdef int num_dirs = g.num_dirs, seq_len = g.seq_len, n_chunks = sc.n_chunks
    cdef int n_tc = (seq_len + sc.t_chunk - 1) // sc.t_chunk
    cdef int tc, s0, s1, n_parts, d, d_lo, d_hi, part, lo, hi, task, chunk, t_lo, units
    cdef bint pipelined, own
    cdef Chunk ck
    for tc in range(n_tc):
        s0 = tc * sc.t_chunk
        s1 = min(seq_len, s0 + sc.t_chunk)
        _chunk_of(L, s0, s1, &ck)
        ck.parity = tc & 1
        if n_chunks == 0:
            n_parts = team // num_dirs
            if sc.dirs_in_turn or n_parts == 0:
                # The whole team runs the directions one after the other,
                # sharing each one's units (with one thread: simply in turn).
                d_lo, d_hi, part, n_parts = 0, num_dirs, tid, team
            else:
                # Threads past n_parts * D get an empty share but keep the barriers.
                d_lo = min(tid // n_parts, num_dirs - 1)
                d_hi = d_lo + 1
                part = tid % n_parts if tid < n_parts * num_dirs else n_parts
            # Without a projection, a direction's threads count its steps instead
            # of meeting at barriers (see _steps) when each has a CPU; packed
            # input keeps the barriers, and a direction of one thread needs neither.
            pipelined = n_parts > 1 and counters_ok
            lo, hi = min(part, n_parts), min(part + 1, n_parts)
            for d in range(d_lo, d_hi):
                if floating is float:
                    if L.b.xq != NULL:  # each part prepares its share of the rows for all
                        if part < n_parts:
                            units = ck.u_fw if d == 0 else ck.u_bw
                            _prepare_rows(L, &ck, d, _share(part, units, n_parts),
                                          _share(part + 1, units, n_parts))
                        _barrier(L)
                if part < n_parts:
                    _project_item(L, gbuf, &ck, d, _share(part, g.n_panels, n_parts),
                                  _share(part + 1, g.n_panels, n_parts), 0,
                                  ck.u_fw if d == 0 else ck.u_bw, sc.blas_min_rows)
                # A thread with an empty share steps only to keep the barriers: without
                # them it would read the h the others are writing, for nothing.
                if part < n_parts or (n_parts > 1 and not pipelined):
                    _steps(L, gbuf, _part(d, 0, g.batch, _share(lo, g.n_panels, n_parts),
                                          _share(hi, g.n_panels, n_parts),
                                          _share(lo, g.r_panels, n_parts),
                                          _share(hi, g.r_panels, n_parts)),
                           s0, s1, n_parts > 1 and not pipelined,
                           &counts[d] if pipelined and part < n_parts else NULL, n_parts)
        else:
            # With a thread per direction (one chunk each), each projects its own
            # direction's rows: no barrier at all, as the directions share only
            # the gate buffer, whose columns they split.  Otherwise the team
            # shares the projection and meets before and after the steps.
            own = n_chunks == 1 and team == num_dirs
            if own:
                _project_item(L, gbuf, &ck, tid, 0, g.n_panels, 0,
                              ck.u_fw if tid == 0 else ck.u_bw, sc.blas_min_rows)
            else:
                _project_shared(L, gbuf, &ck, tid, team, sc.blas_min_rows)
                _barrier(L)
            task = tid
            while task < num_dirs * n_chunks:
                d = task // n_chunks
                chunk = task % n_chunks
                t_lo = s0 if d == 0 else seq_len - s1
                _steps(L, gbuf,
                       _part(d, _bound(chunk, n_chunks, g.batch, L.b.lengths, t_lo, s1 - s0),
                             _bound(chunk + 1, n_chunks, g.batch, L.b.lengths, t_lo, s1 - s0),
                             0, g.n_panels, 0, g.r_panels),
                       s0, s1, False, NULL, 0)
                task = task + team
            if not own:
                _barrier(L)


cdef void _run_layer(const Layer *L, floating *gbuf, const Sched *sc) noexcept nogil:
    """A whole layer on ``sc.threads`` threads, or as many as ``team.h`` finds the
    machine can run now (see ``layer``)."""
    cdef int tid = 0, team = 0
    cdef int counts[2]  # split mode: each direction's step counter (see _steps)
    cdef bint counters_ok
    cdef int busy, threads
    cdef long long c0 = 0
    cdef fl_region region
    cdef Layer Lr
    if L.g.seq_len == 1 and L.b.bsizes == NULL:
        _single_step_region(L, gbuf, sc.threads, sc.n_chunks, sc.backward_order, sc.team_flags)
        return
    counts[0] = 0
    counts[1] = 0
    # A forked child may not start a region.  Split mode meets at every step.
    threads = 1
    if sc.threads > 1 and not fl_forked_serial:
        threads = fl_team_begin(&region, sc.threads, sc.n_chunks == 0, sc.team_flags)
    if threads <= 1:
        _layer_thread(L, gbuf, sc, 0, 1, counts, False)
        return
    Lr = L[0]
    Lr.b.bar = &region.bar
    # Step counters only with a CPU per thread, counting the layers that other
    # Python threads run at the same time.
    busy = fl_atomic_add(&_busy_threads, threads)
    counters_ok = (not L.g.has_proj and L.b.bsizes == NULL
                   and (sc.sync == 1 or (sc.sync == 0 and busy <= omp_get_num_procs())))
    fl_note_team(threads)
    with parallel(num_threads=threads):
        tid = omp_get_thread_num()
        team = omp_get_num_threads()
        c0 = fl_start_cpu(&region)
        _layer_thread(&Lr, gbuf, sc, tid, team, counts, counters_ok)
        fl_thread_stop(&region, c0)
    fl_atomic_add(&_busy_threads, -threads)
    fl_team_end(&region)


cdef inline bint _plain(object a, int typenum, int ndim) noexcept:
    """``a`` is exactly an ndarray of ``typenum`` (native byte order), ``ndim``
    dimensions, C-contiguous and aligned: the kernels can read it in place."""
    if not cnp.PyArray_CheckExact(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISBEHAVED_RO(arr))


cdef inline bint _dims(object a, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2) noexcept:
    """The first (up to three) dimensions of ndarray ``a`` are d0, d1, d2 (-1: any)."""
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(<cnp.ndarray>a)
    cdef int nd = cnp.PyArray_NDIM(<cnp.ndarray>a)
    return ((nd < 1 or d0 < 0 or dims[0] == d0) and (nd < 2 or d1 < 0 or dims[1] == d1)
            and (nd < 3 or d2 < 0 or dims[2] == d2))


cdef void *_data(object a, int typenum, int ndim, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2,
                 str name) except NULL:
    """The data of ``a``, checked to be a C-contiguous ndarray of ``typenum`` with
    dimensions (d0, d1, d2)[:ndim] (-1: any), else ValueError naming it."""
    if not (_plain(a, typenum, ndim) and _dims(a, d0, d1, d2)):
        raise ValueError(f"layer: {name} must be a C-contiguous {ndim}-D array of the weights' "
                         f"dtype with shape {(d0, d1, d2)[:ndim]} (-1: any), got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int _fill_weights(Layer *L, object w, int hidden, str who) except -1:
    """The geometry and weights of packed layer ``w`` (``_module._PackedLayer``) of
    ``hidden`` units, every array checked; returns the weights' NumPy type number."""
    if not cnp.PyArray_Check(w.bias):
        raise TypeError(f"{who}: packed weights expected")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>w.bias)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        raise ValueError(f"{who}: float32 or float64 weights, got {w.bias.dtype}")
    if w.weight_dtype in ("bfloat16", "int8"):
        return _fill_reduced_weights(L, w, hidden, who)
    cdef int item = 4 if typenum == cnp.NPY_FLOAT else 8
    cdef int pw = FL_PANEL_BYTES // item
    cdef int num_dirs = w.w_hh_p.shape[0]
    L.g.weight_type = WEIGHTS_F32 if typenum == cnp.NPY_FLOAT else WEIGHTS_F64
    L.g.num_dirs = num_dirs
    L.g.hidden = hidden
    L.g.g_cols = w.bias.shape[1]
    if L.g.g_cols != bias_cols(hidden, pw):
        raise ValueError(f"{who}: weights of another hidden size than {hidden}")
    L.g.n_panels = L.g.g_cols // pw
    L.g.n_in = w.w_ih.shape[1]
    L.g.k_ih = L.g.n_in
    L.g.k_hr = hidden
    L.g.has_proj = w.w_hr_p.shape[1] > 0
    L.w.hh_stride = w.w_hh_p.shape[1]
    L.w.hr_stride = w.w_hr_p.shape[1]
    # The packed W_hh^T of a direction is P x 4Hp: its length gives the output size P.
    L.g.out_size = <int>(L.w.hh_stride // L.g.g_cols)
    L.g.r_panels = (L.g.out_size + pw - 1) // pw
    L.w.w_ih = _data(w.w_ih, typenum, 2, num_dirs * L.g.g_cols, -1, -1, "w_ih")
    L.w.w_ih_p = _data(w.w_ih_p, typenum, 1, <Py_ssize_t>num_dirs * L.g.g_cols * L.g.n_in,
                       -1, -1, "w_ih_p")
    L.w.w_hh_p = _data(w.w_hh_p, typenum, 2, num_dirs, -1, -1, "w_hh_p")
    L.w.bias = _data(w.bias, typenum, 2, num_dirs, -1, -1, "bias")
    L.w.w_hr_p = (_data(w.w_hr_p, typenum, 2, num_dirs, -1, -1, "w_hr_p")
                  if L.g.has_proj else NULL)
    return typenum


cdef inline int _word_rows(int weight_type, int k) noexcept nogil:
    """Rows of a reduced-precision panel in 32-bit words for ``k`` rows of weights:
    bfloat16 pairs, or int8 quads and the rows of scales and compensations."""
    return (k + 1) // 2 if weight_type == WEIGHTS_BF16 else fl_i8_panel_rows(k)


cdef int _fill_reduced_weights(Layer *L, object w, int hidden, str who) except -1:
    """``_fill_weights`` for bfloat16 or int8 weights: float32 bias, the W_ih, W_hh and
    W_hr panels in 32-bit words (``_module.pack_panels_bf16``, ``pack_panels_int8``);
    no W_ih for BLAS."""
    cdef int pw = FL_PANEL_BYTES // 4
    cdef int num_dirs = w.w_hh_p.shape[0]
    cdef int wt = WEIGHTS_BF16 if w.weight_dtype == "bfloat16" else WEIGHTS_I8
    if cnp.PyArray_TYPE(<cnp.ndarray>w.bias) != cnp.NPY_FLOAT:
        raise ValueError(f"{who}: {w.weight_dtype} weights need a float32 bias")
    L.g.weight_type = wt
    L.g.num_dirs = num_dirs
    L.g.hidden = hidden
    L.g.g_cols = w.bias.shape[1]
    if L.g.g_cols != bias_cols(hidden, pw):
        raise ValueError(f"{who}: weights of another hidden size than {hidden}")
    L.g.n_panels = L.g.g_cols // pw
    L.g.n_in = w.n_in
    L.g.out_size = w.out_size
    L.g.has_proj = w.w_hr_p.shape[1] > 0
    L.g.r_panels = (L.g.out_size + pw - 1) // pw
    L.g.k_ih = _word_rows(wt, L.g.n_in)
    L.g.k_hr = _word_rows(wt, hidden)
    L.w.hh_stride = w.w_hh_p.shape[1]
    L.w.hr_stride = w.w_hr_p.shape[1]
    if (L.w.hh_stride != <Py_ssize_t>L.g.n_panels * _word_rows(wt, L.g.out_size) * pw
            or (L.g.has_proj and L.w.hr_stride
                != <Py_ssize_t>L.g.r_panels * L.g.k_hr * pw)):
        raise ValueError(f"{who}: {w.weight_dtype} panels of other sizes than the layer's")
    L.w.w_ih = NULL  # never BLAS: the schedule keeps these projections on our kernels
    L.w.w_ih_p = _data(w.w_ih_p, cnp.NPY_UINT32, 1,
                       <Py_ssize_t>num_dirs * L.g.n_panels * L.g.k_ih * pw, -1, -1, "w_ih_p")
    L.w.w_hh_p = _data(w.w_hh_p, cnp.NPY_UINT32, 2, num_dirs, -1, -1, "w_hh_p")
    L.w.bias = _data(w.bias, cnp.NPY_FLOAT, 2, num_dirs, -1, -1, "bias")
    L.w.w_hr_p = (_data(w.w_hr_p, cnp.NPY_UINT32, 2, num_dirs, -1, -1, "w_hr_p")
                  if L.g.has_proj else NULL)
    return cnp.NPY_FLOAT


cdef Py_ssize_t _max_chunk_rows(const Layer *L, int t_chunk) noexcept:
    """The most rows of packed input a time chunk of ``t_chunk`` steps holds."""
    cdef Py_ssize_t most = 0
    cdef int s0, s1
    for s0 in range(0, L.g.seq_len, t_chunk):
        s1 = min(L.g.seq_len, s0 + t_chunk)
        most = max(most, L.b.offs[s1] - L.b.offs[s0],
                   L.b.offs[L.g.seq_len - s0] - L.b.offs[L.g.seq_len - s1])
    return most


def layer(w, x, out, state, gates, int seq_len, bint batch_first, schedule, packed=None):
    """One layer; see the module docstring.

    ``w``: the layer's packed weights (``_module._PackedLayer``: w_ih (D*4Hp,
    I), both directions' interleaved W_ih, and w_ih_p the same in panels;
    w_hh_p (D, *), each direction's interleaved W_hh^T (P x 4Hp) in panels;
    bias (D, 4Hp); w_hr_p (D, *), each W_hr^T (H x P) in panels, or (D, 0)
    without projection).  ``x`` (R, I), rows in the caller's layout (R = L*N),
    ``out`` (R, D*P).  ``state``: ``(h0, c, hcell, h_n, h0_zero)`` with h0 (D,
    N, P); c (D, N, H), c_0 on entry and c_n on exit; hcell (D, N, H) scratch
    for the unprojected h (unused without projection); h_n (D, N, P); h0_zero:
    h0 is all zeros, so step 0 skips its recurrent product.  ``gates``
    (t_chunk * N, D*4Hp): scratch for one time chunk.  Every array is a
    C-contiguous ndarray of the weights' dtype, checked here.

    ``schedule``: ``(threads, n_chunks, t_chunk, blas_min_rows, dirs_in_turn,
    step_counters, team_flags, backward_order)``, what ``schedule`` returns and
    the panel order of a one-timestep call.  The sequence runs in time chunks of ``t_chunk`` steps,
    so the gate buffer stays small.  Per chunk, ``n_chunks`` > 0 (batch-chunk
    mode): the threads share the chunk's input projection (BLAS for blocks of
    at least ``blas_min_rows`` rows), meet at a barrier, then run one task per
    (direction, batch chunk) with no synchronisation, and meet again; with one
    chunk and a thread per direction, each thread projects and runs its own
    direction, with no barrier.  ``n_chunks`` == 0 (split mode, for batches
    too small to give every thread rows of its own): each direction's hidden
    units are shared by ``threads // D`` threads; each projects and runs its
    own units and meets the others after every step (or counts its steps:
    ``step_counters``, see ``_steps``); with ``dirs_in_turn``, the whole team
    runs the directions one after the other that way.  ``backward_order``: a
    one-timestep call runs its panels last to first.

    ``packed``: ``(batch_sizes, offsets, lengths)`` of packed input, int64:
    the sequences at each timestep (L,) (N = batch_sizes[0], sorted by
    decreasing length), the first row of each timestep (L + 1,) (R =
    offsets[L]), and the sorted sequences' lengths (N,), to balance the batch
    chunks by rows.  ``h_n`` is then left to the caller (each sequence ends at
    its own step).
    """
    cdef Layer L
    cdef Sched sc
    cdef int typenum, item, batch, out_size, hidden, d
    cdef Py_ssize_t rows, last, r, gate_rows
    cdef const long long[::1] bs, offs, lens
    cdef char *dst
    cdef void *hq_mem = NULL
    cdef void *xq_mem = NULL
    h0, c, hcell, h_n, h0_zero = state
    if len(h0.shape) != 3 or len(c.shape) != 3:
        raise ValueError("layer: h0 and c must be 3-D")
    memset(&L, 0, sizeof(L))
    typenum = _fill_weights(&L, w, c.shape[2], "layer")
    item = 4 if typenum == cnp.NPY_FLOAT else 8
    batch, out_size, hidden = h0.shape[1], L.g.out_size, L.g.hidden
    L.g.seq_len, L.g.batch_first, L.g.batch = seq_len, batch_first, batch
    sc.threads, sc.n_chunks, sc.t_chunk, sc.blas_min_rows, sc.dirs_in_turn, sc.sync, \
        sc.team_flags, sc.backward_order = schedule
    if sc.threads < 1 or sc.n_chunks < 0 or sc.t_chunk < 1:
        raise ValueError("layer: a schedule of at least one thread and one step per chunk")
    if packed is not None:
        bs, offs, lens = packed
        if bs.shape[0] < seq_len or offs.shape[0] < seq_len + 1 or lens.shape[0] < batch:
            raise ValueError("layer: packed input needs batch_sizes, offsets and lengths")
        rows = offs[seq_len]
        if seq_len > 0:
            L.b.bsizes, L.b.offs, L.b.lengths = &bs[0], &offs[0], &lens[0]
    else:
        rows = <Py_ssize_t>seq_len * batch
    L.b.h0 = _data(h0, typenum, 3, L.g.num_dirs, batch, out_size, "h0")
    L.b.c = _data(c, typenum, 3, L.g.num_dirs, batch, hidden, "c")
    # Without a projection hcell is never read or written; c stands in for it.
    L.b.hcell = (_data(hcell, typenum, 3, L.g.num_dirs, batch, hidden, "hcell")
                 if L.g.has_proj else L.b.c)
    L.b.x = _data(x, typenum, 2, rows, L.g.n_in, -1, "x")
    L.b.out = _data(out, typenum, 2, rows, L.g.num_dirs * out_size, -1, "out")
    L.b.h0_zero = h0_zero
    if batch == 0 or seq_len == 0:
        return
    gate_rows = <Py_ssize_t>sc.t_chunk * batch if packed is None else _max_chunk_rows(
        &L, sc.t_chunk)
    gbuf = _data(gates, typenum, 2, -1, L.g.num_dirs * L.g.g_cols, -1, "gates")
    if cnp.PyArray_DIMS(<cnp.ndarray>gates)[0] < gate_rows:
        raise ValueError(f"layer: a gates buffer of at least {gate_rows} rows is needed")
    # bfloat16 W_hh: h rounded once per step by the thread that computed it (see
    # Buffers.hq); without the memory each step rounds the whole previous h itself.
    if (typenum == cnp.NPY_FLOAT and L.g.weight_type == WEIGHTS_BF16 and not L.g.has_proj
            and out_size > 0):
        L.b.hq_ld = fl_bf16_ld(out_size)
        hq_mem = PyMem_Malloc(<size_t>2 * L.g.num_dirs * <size_t>batch * L.b.hq_ld * 4 + 64)
        if hq_mem != NULL:
            L.b.hq = <uint32_t *>_line_up(hq_mem)
    # Split mode with reduced weights: the chunk's input rows prepared once for all the
    # threads' projections (see Buffers.xq); without the memory each prepares its own.
    if (typenum == cnp.NPY_FLOAT and sc.n_chunks == 0 and sc.threads > 1
            and (L.g.weight_type == WEIGHTS_BF16 or L.g.weight_type == WEIGHTS_I8)):
        L.b.xq_ld = (fl_bf16_ld(L.g.n_in) if L.g.weight_type == WEIGHTS_BF16
                     else fl_i8_ld(L.g.n_in))
        L.b.xq_rows = gate_rows
        xq_mem = PyMem_Malloc(<size_t>(2 * L.g.num_dirs * gate_rows) * (L.b.xq_ld * 4 + 4)
                              + 64)
        if xq_mem != NULL:
            L.b.xq = <uint32_t *>_line_up(xq_mem)
            L.b.xs = <float *>(L.b.xq + <Py_ssize_t>2 * L.g.num_dirs * gate_rows * L.b.xq_ld)
    try:
        with nogil:
            if typenum == cnp.NPY_FLOAT:
                _run_layer(&L, <float *>gbuf, &sc)
            else:
                _run_layer(&L, <double *>gbuf, &sc)
    finally:
        PyMem_Free(hq_mem)
        PyMem_Free(xq_mem)
    if packed is not None:
        return
    dst = <char *>_data(h_n, typenum, 3, L.g.num_dirs, batch, out_size, "h_n")
    for d in range(L.g.num_dirs):
        last = seq_len - 1 if d == 0 else 0
        for r in range(batch):
            memcpy(dst + ((<Py_ssize_t>d * batch + r) * out_size) * item,
                   <const char *>L.b.out
                   + (_row(&L.g, last, r) * L.g.num_dirs * out_size + d * out_size) * item,
                   <size_t>out_size * item)


# ------------------------------------------------------------------ schedule
cdef struct Tuning_t:
    Py_ssize_t l2_bytes           # one core's L2
    Py_ssize_t serial_bytes       # one-timestep layers up to this (weights x rows) take 1 thread
    Py_ssize_t gate_buffer_bytes  # the gate buffer of a time chunk stays under this...
    int min_chunk_rows            # ...but holds at least this many rows
    int long_chunk_rows           # ...and this many when each projection streams all W_ih
    int split                     # split mode by W_hh size: -1 never, 0 the rule, 1 always
    int in_turn                   # directions in turn: -1 never, 0 the rule, 1 always
    int sync                      # split mode: -1 barriers, 0 the rule, 1 step counters
    int blas_min_rows             # rows from which the projection goes to BLAS; -1 by level
    int team_flags                # team.h: FL_FIT_CPUS (no team past the CPUs), FL_DYNAMIC


cdef int _NO_BLAS = 1 << 30
# Rows per thread from which the input projection goes to BLAS GEMM, by SIMD level
# (portable, AVX2, AVX-512), for float32 and float64: the packed-panel kernel wins with
# AVX-512, and with AVX2 in float32 (panels in strips); BLAS on large blocks of float64
# with AVX2 and at the portable level (docs/kernels.md has the measurements).  Without
# BLAS a row's numbers do not depend on the batch around it.
cdef int[3] _BLAS_MIN_ROWS = [16, 1 << 30, 1 << 30]
cdef int[3] _BLAS_MIN_ROWS_F64 = [16, 64, 1 << 30]


cdef class Tuning:
    """The constants and rules the schedule reads: ``Tuning()`` is what ships.

    Each keyword overrides one for the modules it is given to (tests and
    measurements; see ``_Module._set_tuning``): ``l2_bytes`` (one core's L2,
    default as the OS reports it), ``serial_bytes`` (one-timestep layers whose
    weights times rows come to at most this run on one thread, default 256 KiB),
    ``gate_buffer_bytes`` and ``min_chunk_rows`` (a time chunk's gate buffer
    stays under 2 MiB but holds at least 256 rows), ``long_chunk_rows`` (at least
    1024 rows, as far as 4 times ``gate_buffer_bytes``, when a float32 chunk's
    projection goes to BLAS, which packs the weights on every call, or to the AVX2
    kernels, which stream them from L3 each time), ``split`` (None: the
    split-mode rule; True: split whenever a direction has 2 threads or more;
    False: never by size), ``dirs_in_turn`` (None: the rule; True/False),
    ``step_counters`` (None: when every thread has a CPU; True/False: always
    counters/barriers), ``blas_min_rows`` (None: by SIMD level), ``fit_cpus``
    (False: a team may be larger than the usable CPUs, for tests of odd team
    sizes on small machines), ``dynamic`` (False: the contention cap of
    ``set_dynamic_threads`` never applies to this module's calls).
    """
    cdef Tuning_t t

    def __init__(self, *, l2_bytes=None, serial_bytes=256 * 1024, gate_buffer_bytes=2 << 20,
                 min_chunk_rows=256, long_chunk_rows=1024, split=None, dirs_in_turn=None,
                 step_counters=None, blas_min_rows=None, fit_cpus=True, dynamic=True):
        self.t.l2_bytes = L2_BYTES if l2_bytes is None else l2_bytes
        self.t.serial_bytes = serial_bytes
        self.t.gate_buffer_bytes = gate_buffer_bytes
        self.t.min_chunk_rows = min_chunk_rows
        self.t.long_chunk_rows = long_chunk_rows
        self.t.split = _tri(split)
        self.t.in_turn = _tri(dirs_in_turn)
        self.t.sync = _tri(step_counters)
        self.t.blas_min_rows = -1 if blas_min_rows is None else blas_min_rows
        self.t.team_flags = (FL_FIT_CPUS if fit_cpus else 0) | (FL_DYNAMIC if dynamic else 0)
        if min(self.t.l2_bytes, self.t.gate_buffer_bytes, self.t.min_chunk_rows,
               self.t.long_chunk_rows) < 1:
            raise ValueError("Tuning: sizes must be positive")

    def keywords(self):
        """The keyword arguments that make this Tuning again."""
        names = {-1: False, 0: None, 1: True}
        return {"l2_bytes": self.t.l2_bytes, "serial_bytes": self.t.serial_bytes,
                "gate_buffer_bytes": self.t.gate_buffer_bytes,
                "min_chunk_rows": self.t.min_chunk_rows,
                "long_chunk_rows": self.t.long_chunk_rows, "split": names[self.t.split],
                "dirs_in_turn": names[self.t.in_turn], "step_counters": names[self.t.sync],
                "blas_min_rows": None if self.t.blas_min_rows < 0 else self.t.blas_min_rows,
                "fit_cpus": bool(self.t.team_flags & FL_FIT_CPUS),
                "dynamic": bool(self.t.team_flags & FL_DYNAMIC)}

    def __reduce__(self):
        # By keywords: a module run under a Tuning is copied and pickled with it.
        return (_tuning_from, (self.keywords(),))

    def __repr__(self):
        return "Tuning(" + ", ".join(f"{k}={v!r}" for k, v in self.keywords().items()) + ")"


def _tuning_from(kwargs):
    """A ``Tuning`` of these keywords (how one is unpickled)."""
    return Tuning(**kwargs)


cdef int _tri(object flag) except -2:
    return 0 if flag is None else (1 if flag else -1)


DEFAULT_TUNING = Tuning()


cdef inline int _itemsize(const Geometry *g) noexcept nogil:
    """Bytes of one stored weight."""
    if g.weight_type == WEIGHTS_BF16:
        return 2
    if g.weight_type == WEIGHTS_I8:
        return 1
    return 4 if g.weight_type == WEIGHTS_F32 else 8


cdef inline int _step_threads(const Geometry *g, int threads, const Tuning_t *tu) noexcept nogil:
    """Threads of a one-timestep layer: one when its weights times rows come to at
    most ``serial_bytes`` (the work does not pay for a second thread and the
    region's start; docs/performance.md has the figures), else one per
    ``serial_bytes`` of them, at least two and at most ``threads`` (a 16-thread
    team's start costs more than its share of a 2 MiB layer saves: docs/threads.md)."""
    cdef Py_ssize_t work = <Py_ssize_t>(g.n_in + g.out_size) * 4 * g.hidden
    if threads <= 1:
        return 1
    if g.has_proj:
        work += <Py_ssize_t>g.hidden * g.out_size
    work = work * g.num_dirs * g.batch * _itemsize(g)
    if work <= tu.serial_bytes:
        return 1
    return <int>min(<Py_ssize_t>threads, max(2, work // max(1, tu.serial_bytes)))


cdef inline int _chunks(const Geometry *g, int threads, const Tuning_t *tu) noexcept nogil:
    """How a layer shares the recurrence among threads: batch chunks per direction
    (one task per direction and chunk, no synchronisation between timesteps), or
    0 for the split mode (each direction's hidden units shared by its threads,
    which meet after every step; each streams only its share of the weights).

    Split mode when a direction has 2 threads or more and the batch gives a
    thread fewer than 4 rows; with bfloat16 weights on AMX, when the batch has
    16 rows or more but batch chunks would have fewer; also when a direction has
    exactly 2 threads and its packed ``W_hh`` is at least a core's L2 (at least half
    of it while the batch gives a thread fewer than 16 rows), with 4 panels or more
    per thread: a batch chunk streams the whole ``W_hh`` every step, from L3 once it
    outgrows the L2 beside the other data (docs/kernels.md has the measurements).
    With more threads per direction batch chunks stay: the step's wait grows and
    its work per thread shrinks."""
    cdef int per_dir = threads // g.num_dirs
    cdef Py_ssize_t hh_bytes = <Py_ssize_t>g.out_size * g.g_cols * _itemsize(g)
    if per_dir < 2:
        return max(1, min(g.batch, per_dir))
    if g.batch < 4 * per_dir:
        return 0
    if tu.split == 1 or (tu.split == 0 and per_dir == 2 and g.n_panels >= 4 * per_dir
                         and (hh_bytes >= tu.l2_bytes
                              or (hh_bytes >= tu.l2_bytes // 2 and g.batch < 16 * per_dir))):
        return 0
    # AMX multiplies blocks of 16 rows: a batch of 16 or more that chunks would cut
    # below that is better shared by units (16 x 100 at H = 256: 3.2 against 6.8 ms).
    if (tu.split == 0 and ((g.weight_type == WEIGHTS_BF16 and _bf16_level == FL_BF16_AMX)
                           or (g.weight_type == WEIGHTS_I8 and _i8_level == FL_I8_AMX))
            and g.batch >= 16 and g.batch < 16 * per_dir and g.n_panels >= 2 * per_dir):
        return 0
    return per_dir


cdef inline bint _in_turn(const Geometry *g, int threads, const Tuning_t *tu) noexcept nogil:
    """Whether a bidirectional layer runs its directions one after the other, each
    shared by all the threads (split mode), instead of a thread per direction: for
    a single sequence on 2 threads whose ``W_hh`` per direction is at least an L2
    (a thread per direction would stream it from L3; in turn each streams half,
    for one more wait per step; docs/kernels.md has the measurements)."""
    if g.num_dirs != 2 or tu.in_turn == -1:
        return False
    return tu.in_turn == 1 or (threads == 2 and g.batch == 1 and <Py_ssize_t>g.out_size
                               * g.g_cols * _itemsize(g) >= tu.l2_bytes)


cdef inline int _time_chunk(const Geometry *g, const Tuning_t *tu, bint long_chunks) noexcept nogil:
    """Timesteps per chunk: the gate buffer stays under ``gate_buffer_bytes`` but
    holds at least ``min_chunk_rows`` rows; with ``long_chunks``, at least
    ``long_chunk_rows`` as far as 4 times ``gate_buffer_bytes``: each chunk's
    projection then reads all the weights again (BLAS packs them, about 7% of a
    batched forward at 256 rows; the AVX2 kernels stream them from L3), and longer
    chunks share that among more rows (docs/kernels.md)."""
    cdef Py_ssize_t row_bytes = <Py_ssize_t>g.num_dirs * g.g_cols * _itemsize(g)
    cdef Py_ssize_t batch = max(1, g.batch)
    cdef Py_ssize_t rows = tu.min_chunk_rows
    if long_chunks:
        rows = max(rows, min(<Py_ssize_t>tu.long_chunk_rows,
                             4 * tu.gate_buffer_bytes // max(1, row_bytes)))
    cdef Py_ssize_t steps = max(tu.gate_buffer_bytes // max(1, batch * row_bytes),
                                (rows + batch - 1) // batch)
    return <int>max(1, min(<Py_ssize_t>g.seq_len, steps))


cdef Sched _schedule(const Geometry *g, bint packed, int threads, const Tuning_t *tu,
                     int level) noexcept nogil:
    """Every tuning decision of one call of a layer, from its geometry, the
    threads asked for, the tuning and the SIMD level: the one place they are made."""
    cdef Sched sc
    cdef bint one_step = g.seq_len == 1 and not packed
    sc.threads = 1 if fl_forked_serial else max(1, min(threads, 1 << 16))  # no overflow below
    if one_step:
        sc.threads = _step_threads(g, sc.threads, tu)
    sc.n_chunks = _chunks(g, sc.threads, tu)
    sc.dirs_in_turn = g.seq_len > 1 and not packed and _in_turn(g, sc.threads, tu)
    if sc.dirs_in_turn:
        sc.n_chunks = 0
    sc.blas_min_rows = tu.blas_min_rows if tu.blas_min_rows >= 0 else (
        _BLAS_MIN_ROWS_F64[level] if g.weight_type == WEIGHTS_F64 else _BLAS_MIN_ROWS[level])
    if g.weight_type == WEIGHTS_BF16 or g.weight_type == WEIGHTS_I8:
        sc.blas_min_rows = _NO_BLAS  # BLAS has no bfloat16 or int8 product
    # Long chunks where BLAS packs the weights for each chunk, or where the AVX2 kernels
    # stream them from L3 and a timestep's gates leave L2 anyway (at fewer rows the
    # larger buffer cost as much as it saved).  Batch-first input projects each
    # sequence's steps apart: chunks hold few of them.  float64's product runs at half
    # float32's rate, streaming the weights a smaller share: the larger buffer cost it
    # more than it saved (docs/kernels.md).
    sc.t_chunk = 1 if one_step else _time_chunk(
        g, tu, (sc.blas_min_rows < _NO_BLAS or level == FL_AVX2 and 2 * <Py_ssize_t>g.batch
                * g.num_dirs * g.g_cols * _itemsize(g) >= tu.l2_bytes)
        and g.weight_type == WEIGHTS_F32 and (not g.batch_first or g.batch == 1))
    sc.sync = tu.sync
    sc.backward_order = False
    sc.team_flags = tu.team_flags
    return sc


cdef inline const Tuning_t *_tuning_of(object tuning) except NULL:
    if tuning is None:
        return &(<Tuning>DEFAULT_TUNING).t
    return &(<Tuning?>tuning).t


def schedule(w, int batch, int seq_len, int hidden, int threads, bint packed=False,
             tuning=None, bint batch_first=False):
    """The schedule of one call of packed layer ``w`` (``_module._PackedLayer``)
    for ``batch`` sequences of ``seq_len`` steps (``packed``: packed input, with
    ``batch`` its longest timestep; ``batch_first``: input laid out (N, L, F)) on
    ``threads`` threads (0 or less: the default), under ``tuning`` (a
    :class:`Tuning`, None for the default).

    Returns ``(threads, n_chunks, t_chunk, blas_min_rows, dirs_in_turn,
    step_counters, team_flags)`` (see ``layer``; ``step_counters`` -1, 0 or 1;
    ``team_flags`` the tuning's ``team.h`` flags), the input of ``layer`` with
    the panel order appended.
    """
    cdef Layer L
    cdef Sched sc
    memset(&L, 0, sizeof(L))
    _fill_weights(&L, w, hidden, "schedule")
    L.g.batch, L.g.seq_len, L.g.batch_first = batch, seq_len, batch_first and not packed
    sc = _schedule(&L.g, packed, _threads_or_default(threads), _tuning_of(tuning), _level)
    return (sc.threads, sc.n_chunks, sc.t_chunk, sc.blas_min_rows, sc.dirs_in_turn, sc.sync,
            sc.team_flags)


# ------------------------------------------------------- one-timestep steps
cdef void _step_layer(const Layer *L, const Tuning_t *tu, floating *gates, int num_threads,
                      bint backward_order) noexcept nogil:
    """One timestep of one layer on the buffers in ``L``: the path of every
    one-timestep computation of a bound stack (module calls, LSTMCell steps,
    stream steps); the state is always read (a stream's ``h`` may be written by
    its owner)."""
    cdef Sched sc = _schedule(&L.g, False, num_threads, tu, _level)
    _single_step_region(L, gates, sc.threads, sc.n_chunks, backward_order, sc.team_flags)


# ------------------------------------------------------------- cell steps
cdef void _cell_layer(const Layer *bound, const Tuning_t *tu, const Buffers *b, int batch,
                      floating *gates, int num_threads, bint backward_order) noexcept nogil:
    """One LSTM step of one bound layer (see ``cell_step``) on the caller's buffers."""
    cdef Layer L = bound[0]
    L.g.batch = batch
    L.b = b[0]
    _step_layer(&L, tu, gates, num_threads, backward_order)


cdef void _cell_layers(const Layer *layers, int n_layers, const Tuning_t *tu,
                       const Buffers *call, int batch, floating *gates, int num_threads,
                       bint backward_order) noexcept nogil:
    """One timestep of the stack's layers on the call's stacked (layers, N, H)
    blocks ``call``: layer k reads layer k-1's new h (``x`` for the first), its
    own h0 and c blocks, and writes its h."""
    cdef int k
    cdef Py_ssize_t block = <Py_ssize_t>batch * layers[0].g.hidden
    cdef Buffers b = call[0]
    cdef const floating *h0 = <const floating *>call.h0
    cdef floating *c = <floating *>call.c
    cdef floating *h = <floating *>call.out
    for k in range(n_layers):
        b.x = call.x if k == 0 else h + (k - 1) * block
        b.h0, b.c, b.hcell, b.out = h0 + k * block, c + k * block, c + k * block, h + k * block
        _cell_layer(&layers[k], tu, &b, batch, gates, num_threads, backward_order)


cdef enum:
    _STACK_GATES = 2048  # gate buffers up to this many doubles live on a one-step call's stack


cdef class BoundStack:
    """A unidirectional stack's packed layers bound once, for every one-timestep
    computation: ``LSTMCell`` steps and one-step ``LSTM`` calls (``step``), one
    layer of the general path (``cell_step``), and a ``Stream``'s steps on
    buffers bound once (``bind_stream``, ``stream_step``).  Each runs its layers
    through ``_step_layer``.

    ``BoundStack(layers, hidden, call_layout=-1, call_needs_eval=False,
    zero_state_skips=False, tuning=None)`` with ``layers`` the module's packed
    layers (``_module._PackedLayer``, a projection allowed), ``zero_state_skips``
    the module's rule for them (a call without a state may skip the first
    recurrent product) and ``tuning`` its :class:`Tuning` (None: the default).
    ``step`` is the whole one-step call for plain arrays (checks, outputs,
    kernels, in C; not for a projection); ``cell_step`` runs one layer on arrays
    the caller made, for everything else.  ``call_layout`` is the ``step``
    layout of the module's calls (``module_call``; -1: none), ``call_needs_eval``
    that they take ``step`` only in eval mode (an LSTM with dropout).
    """
    cdef Layer *layers
    cdef int n_layers, n_in, hidden, out_size, typenum
    cdef bint has_proj
    cdef bint backward_order  # the panel order of the last call; it alternates
    cdef Tuning_t tuning
    cdef readonly int call_layout
    cdef readonly bint call_needs_eval
    cdef bint zero_state_skips
    cdef int stream_batch  # with bound stream buffers: their rows; else -1
    cdef void *stream_gates
    cdef object refs
    cdef object stream_refs

    def __cinit__(self):
        self.layers = NULL
        self.n_layers = 0
        self.stream_batch = -1

    def __init__(self, list layers, int hidden, int call_layout=-1, bint call_needs_eval=False,
                 bint zero_state_skips=False, tuning=None):
        cdef int k
        cdef Layer *L
        if self.layers != NULL:  # a second __init__ would drop the bound layers and buffers
            raise RuntimeError("BoundStack: already initialised")
        self.tuning = _tuning_of(tuning)[0]
        self.call_layout = call_layout
        self.call_needs_eval = call_needs_eval
        self.refs = layers
        self.hidden = hidden
        self.n_in = layers[0].w_ih.shape[1]
        # A call without a state skips the recurrent product only where the
        # rule allows (finite W_hh); other calls take the general path.
        self.zero_state_skips = zero_state_skips
        self.layers = <Layer *>PyMem_Malloc(len(layers) * sizeof(Layer))
        if self.layers == NULL:
            raise MemoryError()
        memset(self.layers, 0, len(layers) * sizeof(Layer))
        for k, w in enumerate(layers):
            L = &self.layers[k]
            typenum = _fill_weights(L, w, hidden, "BoundStack")
            if k == 0:
                self.typenum = typenum
            elif typenum != self.typenum:
                raise ValueError("BoundStack: layers of different dtypes")
            if L.g.num_dirs != 1:
                raise ValueError("BoundStack: unidirectional layers only")
            L.g.seq_len = 1
            self.n_layers = k + 1
        self.out_size = self.layers[0].g.out_size
        self.has_proj = self.layers[0].g.has_proj
        if self.has_proj and call_layout >= 0:
            raise ValueError("BoundStack: the one-step call has no projection")

    def bind_stream(self, x, h, c, hcell, list outs, gates):
        """Bind a stream's buffers once, so that ``stream_step`` acquires none:
        ``x`` (N, I) the frame buffer; ``h`` (L, N, P) and ``c`` (L, N, H) the
        state, updated in place; ``hcell`` (1, N, H) scratch; ``outs`` a list of
        L (N, P) output buffers; ``gates`` (N, 4Hp) scratch.  The arrays are kept
        alive by the stack and must not be reallocated while it is in use."""
        cdef int k, typenum = self.typenum
        cdef int item = 4 if typenum == cnp.NPY_FLOAT else 8
        cdef Py_ssize_t n = x.shape[0], p = self.out_size, hid = self.hidden
        cdef Layer *L
        nl = self.n_layers
        if len(outs) != nl:
            raise ValueError("BoundStack: one output buffer per layer")
        h_data = <char *>_data(h, typenum, 3, nl, n, p, "h")
        c_data = <char *>_data(c, typenum, 3, nl, n, hid, "c")
        hcell_data = _data(hcell, typenum, 3, 1, n, hid, "hcell")
        gates_data = _data(gates, typenum, 2, n, self.layers[0].g.g_cols, -1, "gates")
        for k in range(nl):
            layer_in = x if k == 0 else outs[k - 1]
            _data(layer_in, typenum, 2, n, self.layers[k].g.n_in, -1, "x")
            _data(outs[k], typenum, 2, n, p, -1, "outs")
        for k in range(nl):
            L = &self.layers[k]
            L.g.batch = <int>n
            L.b.x = cnp.PyArray_DATA(<cnp.ndarray>(x if k == 0 else outs[k - 1]))
            L.b.h0 = h_data + k * n * p * item
            L.b.c = c_data + k * n * hid * item
            L.b.hcell = hcell_data
            L.b.out = cnp.PyArray_DATA(<cnp.ndarray>outs[k])
            L.b.h0_zero = False
        self.stream_refs = (x, h, c, hcell, outs, gates)
        self.stream_gates = gates_data
        self.stream_batch = <int>n

    def stream_step(self, frame, int num_threads):
        """One timestep of every layer on the bound stream buffers; ``h`` and
        ``c`` are updated in place and layer k's output is in ``outs[k]``.

        ``frame``: None when the caller has put the frame in ``x``; else a
        C-contiguous ndarray of ``x``'s dtype and size, of shape ``x.shape`` or,
        for one row, ``x.shape[1:]``, copied into ``x`` first.  Returns False,
        having done nothing, for any other frame (the caller converts it).
        ``num_threads`` 0 or less: ``omp_get_max_threads()``.
        """
        cdef int k, nd
        cdef Layer *L
        cdef int batch = self.stream_batch
        cdef size_t item = 4 if self.typenum == cnp.NPY_FLOAT else 8
        cdef size_t row_bytes
        cdef int n_in = self.n_in
        cdef bint order
        if batch < 0:
            raise ValueError("BoundStack: no stream buffers bound")
        num_threads = _threads_or_default(num_threads)
        row_bytes = batch * self.out_size * item
        if frame is not None:
            if not cnp.PyArray_CheckExact(frame):
                return False
            nd = cnp.PyArray_NDIM(<cnp.ndarray>frame)
            if not _plain(frame, self.typenum, nd):
                return False
            if not (_dims(frame, batch, n_in, -1) if nd == 2
                    else nd == 1 and batch == 1 and _dims(frame, n_in, -1, -1)):
                return False
            memmove(<void *>self.layers[0].b.x, cnp.PyArray_DATA(<cnp.ndarray>frame),
                    <size_t>batch * n_in * item)
        order = self._next_order()
        if batch == 0:
            return True
        with nogil:
            for k in range(self.n_layers):
                L = &self.layers[k]
                if self.typenum == cnp.NPY_FLOAT:
                    _step_layer(L, &self.tuning, <float *>self.stream_gates, num_threads, order)
                else:
                    _step_layer(L, &self.tuning, <double *>self.stream_gates, num_threads, order)
                memcpy(<void *>L.b.h0, L.b.out, row_bytes)  # the step's h_n is its output
        return True

    def __dealloc__(self):
        PyMem_Free(self.layers)

    cdef inline bint _next_order(self) noexcept:
        self.backward_order = not self.backward_order
        return self.backward_order

    def next_order(self):
        """Panel order of the next one-step call: it alternates from call to
        call (see ``_single_step``); a race between threads only costs cache hits."""
        return self._next_order()

    def step(self, x, hx, int num_threads, int layout):
        """A whole one-step call on plain arrays, or None when the call needs
        the general path (see ``_step``)."""
        return self._step(x, hx, num_threads, layout)

    cdef object _step(self, object x, object hx, int num_threads, int layout):
        """A whole one-step call on plain arrays, or None when the call needs
        the general path (any other input, or input it must check and refuse).

        ``layout`` 0: ``LSTMCell.forward(x, hx)`` -> ``(h, c)``, x (N, I) or
        (I,), h and c shaped alike.  1 (time-major) and 2 (batch-first):
        ``LSTM.forward`` of one timestep -> ``(output, (h_n, c_n))``, x (1, N, I),
        (N, 1, I) or unbatched (1, I), states (layers, N, H) or (layers, H).
        Every array must be a C-contiguous ndarray of the weights' dtype.
        ``num_threads`` 0 or less: ``omp_get_max_threads()``, the default of
        ``fastlstm.get_num_threads()``.
        """
        cdef int typenum = self.typenum
        cdef int nl = self.n_layers
        cdef int hidden = self.hidden
        cdef int x_nd, s_nd, batch
        cdef Py_ssize_t i_batch
        cdef cnp.npy_intp dims[3]
        cdef bint h0_zero = hx is None
        cdef bint order
        cdef size_t item = 4 if typenum == cnp.NPY_FLOAT else 8
        cdef size_t state_bytes
        cdef double stack_gates[_STACK_GATES]
        cdef void *gates
        cdef void *gate_mem
        cdef void *h0_ptr
        cdef void *h_ptr
        cdef void *c_ptr
        cdef const void *x_ptr
        cdef size_t gate_bytes
        cdef Buffers call
        if (not cnp.PyArray_CheckExact(x) or self.has_proj
                or (h0_zero and not self.zero_state_skips)):
            return None
        num_threads = _threads_or_default(num_threads)
        x_nd = cnp.PyArray_NDIM(<cnp.ndarray>x)
        if layout == 0:
            if x_nd == 2:
                i_batch = cnp.PyArray_DIMS(<cnp.ndarray>x)[0]
            elif x_nd == 1:
                i_batch = 1
            else:
                return None
            if not _plain(x, typenum, x_nd):
                return None
            if not (_dims(x, i_batch, self.n_in, -1) if x_nd == 2 else _dims(x, self.n_in, -1, -1)):
                return None
            s_nd = x_nd
        else:
            if x_nd == 3:
                i_batch = cnp.PyArray_DIMS(<cnp.ndarray>x)[0 if layout == 2 else 1]
                if not _dims(x, i_batch if layout == 2 else 1, 1 if layout == 2 else i_batch,
                             self.n_in):
                    return None
            elif x_nd == 2:
                i_batch = 1
                if not _dims(x, 1, self.n_in, -1):
                    return None
            else:
                return None
            if not _plain(x, typenum, x_nd):
                return None
            s_nd = x_nd
        if i_batch < 1 or i_batch * (4 * hidden + FL_PANEL_BYTES) * item > (1 << 30):
            return None  # empty or huge: the general path handles it
        batch = <int>i_batch
        # The states: (h, c) of the shapes above, or None.
        if hx is not None:
            if type(hx) is not tuple or len(<tuple>hx) != 2:
                return None
            h0, c0 = <tuple>hx
            for s in (h0, c0):
                if not _plain(s, typenum, s_nd):
                    return None
                if layout == 0:
                    if not _dims(s, batch if s_nd == 2 else hidden, hidden, -1):
                        return None
                elif s_nd == 3:
                    if not _dims(s, nl, batch, hidden):
                        return None
                elif not _dims(s, nl, hidden, -1):
                    return None
        # Outputs: h and c of every layer (layers, N, H), as the caller sees them.
        if layout == 0:
            dims[0] = batch
            dims[1] = hidden
            h_n = cnp.PyArray_EMPTY(s_nd, &dims[2 - s_nd], typenum, 0)
            c_n = cnp.PyArray_EMPTY(s_nd, &dims[2 - s_nd], typenum, 0)
        else:
            dims[0] = nl
            dims[1] = batch
            dims[2] = hidden
            if s_nd == 2:
                dims[1] = hidden
            h_n = cnp.PyArray_EMPTY(s_nd, dims, typenum, 0)
            c_n = cnp.PyArray_EMPTY(s_nd, dims, typenum, 0)
        state_bytes = <size_t>nl * batch * hidden * item
        h_ptr = cnp.PyArray_DATA(<cnp.ndarray>h_n)
        c_ptr = cnp.PyArray_DATA(<cnp.ndarray>c_n)
        x_ptr = cnp.PyArray_DATA(<cnp.ndarray>x)
        if h0_zero:
            h0_ptr = h_ptr  # not read
            memset(c_ptr, 0, state_bytes)
        else:
            h0_ptr = cnp.PyArray_DATA(<cnp.ndarray>h0)
            memcpy(c_ptr, cnp.PyArray_DATA(<cnp.ndarray>c0), state_bytes)
        order = self._next_order()
        # The gate buffer starts on a cache line (AMX stores its rows as whole lines).
        gate_mem = <void *>stack_gates
        gate_bytes = <size_t>batch * self.layers[0].g.n_panels * FL_PANEL_BYTES
        if gate_bytes + 64 > sizeof(stack_gates):
            gate_mem = PyMem_Malloc(gate_bytes + 64)
            if gate_mem == NULL:
                raise MemoryError()
        gates = _line_up(gate_mem)
        memset(&call, 0, sizeof(call))
        call.x, call.h0, call.c, call.out, call.h0_zero = x_ptr, h0_ptr, c_ptr, h_ptr, h0_zero
        try:
            with nogil:
                if typenum == cnp.NPY_FLOAT:
                    _cell_layers(self.layers, nl, &self.tuning, &call, batch, <float *>gates,
                                 num_threads, order)
                else:
                    _cell_layers(self.layers, nl, &self.tuning, &call, batch, <double *>gates,
                                 num_threads, order)
        finally:
            if gate_mem != <void *>stack_gates:
                PyMem_Free(gate_mem)
        if layout == 0:
            return h_n, c_n
        # The output is the last layer's h, shaped as the input.
        if x_nd == 3:
            dims[0] = 1 if layout == 1 else batch
            dims[1] = batch if layout == 1 else 1
            dims[2] = hidden
        else:
            dims[0] = 1
            dims[1] = hidden
        out = cnp.PyArray_EMPTY(x_nd, dims, typenum, 0)
        memcpy(cnp.PyArray_DATA(<cnp.ndarray>out), <char *>h_ptr + state_bytes // nl * (nl - 1),
               state_bytes // nl)
        return out, (h_n, c_n)


def cell_step(BoundStack w, int k, const floating[:, ::1] x, const floating[:, ::1] h0,
              floating[:, ::1] c, floating[:, ::1] h, int num_threads, bint h0_zero,
              bint backward_order):
    """One LSTM step of layer ``k`` for N rows: ``h`` (N, H) = the new hidden
    state, ``c`` (N, H) updated in place from the previous cell state; ``x``
    (N, I), ``h0`` (N, H) the previous hidden state (not read when ``h0_zero``)."""
    cdef int batch = x.shape[0]
    cdef floating *gates
    cdef Buffers b
    if sizeof(floating) != (4 if w.typenum == cnp.NPY_FLOAT else 8):
        raise ValueError("cell_step: arrays and weights of different dtypes")
    if not 0 <= k < w.n_layers:
        raise ValueError("cell_step: no such layer")
    if w.has_proj:
        raise ValueError("cell_step: layers without a projection only")
    if (x.shape[1] != w.layers[k].g.n_in or h0.shape[0] != batch or c.shape[0] != batch
            or h.shape[0] != batch or h0.shape[1] != w.hidden or c.shape[1] != w.hidden
            or h.shape[1] != w.hidden):
        raise ValueError("cell_step: arrays of inconsistent shapes")
    if batch == 0:
        return
    gates = <floating *>PyMem_Malloc(<size_t>batch * w.layers[k].g.n_panels * FL_PANEL_BYTES)
    if gates == NULL:
        raise MemoryError()
    memset(&b, 0, sizeof(b))
    b.x, b.h0, b.c, b.hcell, b.out, b.h0_zero = &x[0, 0], &h0[0, 0], &c[0, 0], &c[0, 0], \
        &h[0, 0], h0_zero
    try:
        with nogil:
            _cell_layer(&w.layers[k], &w.tuning, &b, batch, gates,
                        _threads_or_default(num_threads), backward_order)
    finally:
        PyMem_Free(gates)


def set_call_threads(int n, int default_cap=-1):
    """The process's thread count for calls that pass 0 (``module_call``, streams,
    ``schedule``), set by ``fastlstm._threads`` so that a call reads it without
    Python: ``n`` from ``set_num_threads`` (0: the default, OpenMP's count bounded
    by ``default_cap``, the affinity mask and CPU quota; -1 leaves the cap)."""
    global _call_threads, _default_cap, fl_cpus
    _call_threads = max(0, n)
    if default_cap >= 0:
        _default_cap = default_cap
        fl_cpus = default_cap  # no region runs more threads than the CPUs (team.h)


def set_dynamic(bint enabled):
    """Whether regions adapt their team to the CPUs they get (``team.h``); either
    way the contention state starts afresh."""
    global fl_dynamic
    fl_dynamic = enabled
    fl_team_reset()


def team_size(int threads):
    """The threads a region asking for ``threads`` would run on now: bounded by the
    usable CPUs and, while the machine is contended, by the cap."""
    cdef int probe
    return fl_team_now(threads, fl_now_ns(), &probe, FL_FIT_CPUS | FL_DYNAMIC)


def team_state():
    """The contention controller's state (``team.h``), for ``show_config`` and tests."""
    cdef long long now = fl_now_ns()
    cap = fl_cap
    return {"dynamic": bool(fl_dynamic), "cpus": fl_cpus, "cap": cap,
            "cap_left_s": max(0.0, (fl_cap_until - now) * 1e-9) if cap else 0.0,
            "backoff_s": fl_backoff * 1e-9, "windows": fl_n_windows,
            "contended_windows": fl_n_capped}


def team_decision(double team, double speed, double cpus):
    """``fl_decide``: the cap a window of ``team`` threads (mean) that ran at
    ``speed`` times one thread on ``cpus`` CPUs' worth of time gets (0: none)."""
    return fl_decide(<long long>(team * 1000), <long long>(speed * 1000),
                     <long long>(cpus * 1000))


cdef object _tensor_type = None  # torch.Tensor, once torch is loaded


cdef inline bint _is_tensor(object x):
    """Whether ``x`` is exactly a torch.Tensor (no subclass), torch never imported here."""
    global _tensor_type
    if _tensor_type is None:
        torch = sys.modules.get("torch")
        if torch is None:
            return False
        _tensor_type = torch.Tensor
    return type(x) is _tensor_type


cdef object _tensor_step(BoundStack stack, object input, object hx):
    """``stack._step`` on the NumPy views of plain CPU tensors, its results as tensors
    (what ``forward`` returns for them), or None for the general path: a tensor that
    ``numpy()`` refuses (one that requires grad, another device or layout, bfloat16,
    a lazily negated view) or any other form goes there, as do odd dtypes."""
    cdef object states = None
    try:
        x = input.numpy()
        if hx is not None:
            if type(hx) is not tuple or len(<tuple>hx) != 2:
                return None
            h0, c0 = <tuple>hx
            if not (_is_tensor(h0) and _is_tensor(c0)):
                return None
            states = (h0.numpy(), c0.numpy())
    except (RuntimeError, TypeError):
        return None
    result = stack._step(x, states, _call_threads, stack.call_layout)
    if result is None:
        return None
    from_numpy = sys.modules["torch"].from_numpy
    if stack.call_layout == 0:
        return from_numpy(result[0]), from_numpy(result[1])
    out, (h, c) = result
    return from_numpy(out), (from_numpy(h), from_numpy(c))


def module_call(self, input, hx=None):
    """``LSTM.__call__`` and ``LSTMCell.__call__``: a one-timestep call of plain
    arrays (or plain CPU tensors, through their NumPy views) straight into the
    module's bound layers (``BoundStack._step``, when they are bound to its
    current weights and its mode allows), any other call through
    ``self.forward``.  The same calls as ``forward``'s own check of its one-step
    path, about 0.5 us of Python fewer per frame (about 8 us fewer for tensors)."""
    cdef BoundStack stack
    cdef dict d
    cdef bint array = cnp.PyArray_CheckExact(input)
    if array or _is_tensor(input):
        d = self.__dict__
        bound = d.get("_bound")
        if type(bound) is tuple and (<tuple>bound)[0] is d.get("_packed"):
            stack = <BoundStack?>(<tuple>bound)[1]
            if stack.call_layout >= 0 and not (stack.call_needs_eval and d.get("training")):
                if array:
                    result = stack._step(input, hx, _call_threads, stack.call_layout)
                else:
                    result = _tensor_step(stack, input, hx)
                if result is not None:
                    return result
    return self.forward(input, hx)
