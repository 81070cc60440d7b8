"""LSTM layer kernels (one layer, one or two directions).

A layer runs in two phases:

1. ``input_projection``: the input-to-gate product for every timestep and both
   directions at once, ``gates = x @ W_ih^T`` with the two directions' W_ih
   stacked, split over the OpenMP threads by blocks of rows.  Large weights go
   to BLAS GEMM (``scipy.linalg.cython_blas``); otherwise the small-M kernel of
   ``_kernels.h`` is faster.
2. ``recurrence``: the sequential part.  Work is split into independent tasks,
   one per (direction, batch chunk), run under one OpenMP parallel region with
   no synchronisation per timestep.  Each step of a task is one call of the
   fused kernel ``fl_lstm_step``: ``h_{t-1} @ W_hh^T`` added into that step's
   gate rows panel by panel, each panel's gate math and state update done while
   its rows are in L1; then, with ``proj_size``, ``h @ W_hr^T``.

Gate columns are interleaved by panels (see ``_kernels.h``): the ``gates``
buffer has ``D * 4 * Hp`` columns, Hp = hidden_size rounded up to the panel's
unit count.  Rows of ``x``, ``gates`` and ``out`` are ordered as the caller's
layout: time-major rows ``t*N + n`` or, with ``batch_first``, batch-major rows
``n*L + t``.  Either way the rows of one timestep are evenly spaced, so every
kernel reads and writes them in place through a row stride and no transpose
is ever made.

BLAS runs single-threaded (the caller pins it): all threads are OpenMP
threads, so ``set_num_threads`` is the one knob and nothing oversubscribes.
"""
import os

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.string cimport memcpy

from fastlstm._blas cimport NoTrans, Trans, gemm


cdef extern from "_kernels.h" nogil:
    int FL_PORTABLE, FL_AVX2, FL_AVX512, FL_PANEL_BYTES
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
                        int p_lo, int p_hi) noexcept
    void fl_lstm_step_d(int level, int M, int K, int H, const double *A, Py_ssize_t lda,
                        const double *BP, double *G, Py_ssize_t ldg, const double *bias,
                        double *C, Py_ssize_t ldc, double *Hout, Py_ssize_t ldh,
                        int p_lo, int p_hi) noexcept
    void fl_act_f(int level, Py_ssize_t n, const float *x, float *y, int sigmoid) noexcept
    void fl_act_d(int level, Py_ssize_t n, const double *x, double *y, int sigmoid) noexcept


cdef extern from "_omp_compat.h" nogil:
    int omp_get_thread_num() noexcept
    int omp_get_num_threads() noexcept
    void fl_omp_barrier() noexcept


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


def set_simd_level(name=None):
    """Use SIMD level ``name`` ("portable", "avx2", "avx512"), or None for the best.

    For tests and comparisons; the environment variable FASTLSTM_SIMD sets it at
    import.  A level the CPU lacks raises ValueError.
    """
    global _level
    if name is None:
        _level = _detected
        return
    if name not in _LEVEL_NAMES:
        raise ValueError(f"unknown SIMD level {name!r}; expected one of {_LEVEL_NAMES}")
    if _LEVEL_NAMES.index(name) > _detected:
        raise ValueError(f"this CPU does not support SIMD level {name!r}; "
                         f"available: {simd_available()}")
    _level = _LEVEL_NAMES.index(name)


if os.environ.get("FASTLSTM_SIMD"):
    set_simd_level(os.environ["FASTLSTM_SIMD"])


def _mxcsr_for_tests():
    """The calling thread's MXCSR (0 off x86): the kernels must leave it as it was."""
    return fl_mxcsr()


def panel_width(dtype):
    """Columns per weight panel (256 bytes) for ``dtype``."""
    return FL_PANEL_BYTES // (4 if dtype == "float32" else 8)


# ------------------------------------------------------------------ kernels
cdef inline void _matmul(bint beta, int m, int n, int k, const floating *a, Py_ssize_t lda,
                         const floating *bp, floating *g, Py_ssize_t ldg) noexcept nogil:
    """g (m x n) = beta * g + a (m x k) @ B (k x n), B packed in panels."""
    if floating is float:
        fl_matmul_f(_level, beta, m, n, k, a, lda, bp, g, ldg)
    else:
        fl_matmul_d(_level, beta, m, n, k, a, lda, bp, g, ldg)


cdef inline void _lstm_step(int m, int k, int hidden, const floating *a, Py_ssize_t lda,
                            const floating *bp, floating *g, Py_ssize_t ldg,
                            const floating *bias, floating *c, Py_ssize_t ldc,
                            floating *h, Py_ssize_t ldh, int p_lo, int p_hi) noexcept nogil:
    if floating is float:
        fl_lstm_step_f(_level, m, k, hidden, a, lda, bp, g, ldg, bias, c, ldc, h, ldh,
                       p_lo, p_hi)
    else:
        fl_lstm_step_d(_level, m, k, hidden, a, lda, bp, g, ldg, bias, c, ldc, h, ldh,
                       p_lo, p_hi)


def _activation_for_tests(const floating[::1] x, floating[::1] y, bint sigmoid):
    """y = tanh(x) or sigmoid(x) through the kernels' own code at the current level."""
    if floating is float:
        fl_act_f(_level, x.shape[0], &x[0], &y[0], sigmoid)
    else:
        fl_act_d(_level, x.shape[0], &x[0], &y[0], sigmoid)


def _matmul_for_tests(const floating[:, ::1] a, const floating[::1] bp, floating[:, ::1] g,
                      bint beta):
    """g = beta * g + a @ B with B packed in panels (``lstm._pack_panels``)."""
    _matmul(beta, g.shape[0], g.shape[1], a.shape[1], &a[0, 0], a.shape[1], &bp[0],
            &g[0, 0], g.shape[1])


cdef void _project(const floating *x, int rows, int n_in, const floating *w_ih,
                   const floating *w_ih_p, floating *gates, int n_out, int num_threads,
                   int blas_min_rows) noexcept nogil:
    """gates (rows, n_out) = x (rows, n_in) @ W_ih^T; see ``input_projection``."""
    cdef int n_blocks = max(1, min(num_threads, rows // 16))
    cdef int pw = FL_PANEL_BYTES // sizeof(floating)
    cdef int n_panels = (n_out + pw - 1) // pw
    cdef int blk, lo, hi, n_col_blocks
    cdef unsigned int csr
    if rows == 0:
        return
    if n_blocks < num_threads and rows < blas_min_rows:
        # Few rows: split the weight panels (columns) among the threads instead,
        # so each thread streams only its share of the weights.
        n_col_blocks = min(num_threads, n_panels)
        for blk in prange(n_col_blocks, num_threads=n_col_blocks, schedule="static",
                          chunksize=1):
            lo = blk * n_panels // n_col_blocks
            hi = (blk + 1) * n_panels // n_col_blocks
            csr = fl_ftz_begin()
            _matmul(False, rows, min(n_out, hi * pw) - lo * pw, n_in, x, n_in,
                    w_ih_p + <Py_ssize_t>lo * n_in * pw, gates + lo * pw, n_out)
            fl_ftz_end(csr)
        return
    for blk in prange(n_blocks, num_threads=n_blocks, schedule="static", chunksize=1):
        lo = <int>(<long long>blk * rows // n_blocks)
        hi = <int>((<long long>blk + 1) * rows // n_blocks)
        csr = fl_ftz_begin()
        if hi - lo >= blas_min_rows:
            gemm(NoTrans, Trans, hi - lo, n_out, n_in, <floating>1.0,
                 x + <Py_ssize_t>lo * n_in, n_in, w_ih, n_in, <floating>0.0,
                 gates + <Py_ssize_t>lo * n_out, n_out)
        else:
            _matmul(False, hi - lo, n_out, n_in, x + <Py_ssize_t>lo * n_in, n_in, w_ih_p,
                    gates + <Py_ssize_t>lo * n_out, n_out)
        fl_ftz_end(csr)


def input_projection(const floating[:, ::1] x, const floating[:, ::1] w_ih,
                     const floating[::1] w_ih_p, floating[:, ::1] gates, int num_threads,
                     int blas_min_rows):
    """gates (R, n_out) = x (R, I) @ w_ih (n_out, I)^T for all timesteps.

    ``w_ih`` holds the interleaved gate rows of both directions; ``w_ih_p`` is
    the same matrix packed in panels.  The rows are split into one contiguous
    block per thread.  A block of at least ``blas_min_rows`` rows is one
    single-threaded BLAS GEMM; smaller blocks use the small-M kernel.  With too
    few rows for every thread, the weight panels are split instead.
    """
    with nogil:
        _project(&x[0, 0], x.shape[0], x.shape[1], &w_ih[0, 0], &w_ih_p[0], &gates[0, 0],
                 gates.shape[1], num_threads, blas_min_rows)


cdef void _run_task(
    int d, int n_lo, int n_hi, int seq_len, int batch, int hidden, int out_size,
    int num_dirs, bint batch_first, bint has_proj,
    floating *gates, const floating *w_hh_p, Py_ssize_t hh_stride, const floating *bias,
    const floating *w_hr_p, Py_ssize_t hr_stride,
    const floating *h0, floating *c, floating *hcell, floating *out, floating *h_n,
    bint h0_zero,
) noexcept nogil:
    """Run direction ``d`` over all timesteps for batch rows ``[n_lo, n_hi)``.

    ``c`` (the layer's c_n, already holding c_0) is updated in place.  With
    ``h0_zero`` the first step skips its recurrent product (h_{-1} = 0).
    """
    cdef int m = n_hi - n_lo
    cdef int unit = FL_PANEL_BYTES // sizeof(floating) // 4
    cdef int n_panels = (hidden + unit - 1) // unit
    cdef int g_cols = 4 * unit * n_panels  # one direction's gate columns
    # Distance in rows between consecutive batch entries of one timestep.
    cdef int row_step = seq_len if batch_first else 1
    cdef Py_ssize_t g_ld = <Py_ssize_t>row_step * num_dirs * g_cols
    cdef Py_ssize_t o_ld = <Py_ssize_t>row_step * num_dirs * out_size
    cdef const floating *hprev = h0 + (<Py_ssize_t>d * batch + n_lo) * out_size
    cdef Py_ssize_t hprev_ld = out_size
    cdef const floating *w_hh_d = w_hh_p + <Py_ssize_t>d * hh_stride
    cdef const floating *w_hr_d = w_hr_p + <Py_ssize_t>d * hr_stride
    cdef const floating *b_d = bias + <Py_ssize_t>d * g_cols
    cdef floating *c_d = c + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef floating *hc_d = hcell + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef floating *g_t
    cdef floating *o_t
    cdef Py_ssize_t s, t, r, row
    cdef int k
    cdef unsigned int csr = fl_ftz_begin()

    for s in range(seq_len):
        t = s if d == 0 else seq_len - 1 - s
        row = n_lo * seq_len + t if batch_first else t * batch + n_lo
        g_t = gates + row * num_dirs * g_cols + d * g_cols
        o_t = out + row * num_dirs * out_size + d * out_size
        k = 0 if s == 0 and h0_zero else out_size
        if has_proj:
            _lstm_step(m, k, hidden, hprev, hprev_ld, w_hh_d, g_t, g_ld, b_d,
                       c_d, hidden, hc_d, hidden, 0, n_panels)
            _matmul(False, m, out_size, hidden, hc_d, hidden, w_hr_d, o_t, o_ld)
        else:
            _lstm_step(m, k, hidden, hprev, hprev_ld, w_hh_d, g_t, g_ld, b_d,
                       c_d, hidden, o_t, o_ld, 0, n_panels)
        hprev = o_t
        hprev_ld = o_ld

    for r in range(m):
        memcpy(h_n + (<Py_ssize_t>d * batch + n_lo + r) * out_size, hprev + r * hprev_ld,
               out_size * sizeof(floating))
    fl_ftz_end(csr)


cdef void _run_split(
    int d, int part, int n_parts, int seq_len, int batch, int hidden, int out_size,
    int num_dirs, bint batch_first, bint has_proj,
    floating *gates, const floating *w_hh_p, Py_ssize_t hh_stride, const floating *bias,
    const floating *w_hr_p, Py_ssize_t hr_stride,
    const floating *h0, floating *c, floating *hcell, floating *out,
    const floating *x, int n_in, const floating *w_ih_p, bint h0_zero,
) noexcept nogil:
    """Part ``part`` of ``n_parts`` of direction ``d``, all batch rows, all steps.

    The part first computes the input projection of its own gate columns (no
    other part reads them, so no barrier is needed before the first step).

    The parts split the hidden units (panels) and, with a projection, the
    projected columns; a barrier after each phase of a step lets every part
    read the whole of h_{t-1}.  Every thread of the region must call this with
    the same ``seq_len`` (the barriers are team-wide).
    """
    cdef int unit = FL_PANEL_BYTES // sizeof(floating) // 4
    cdef int pw = 4 * unit
    cdef int n_panels = (hidden + unit - 1) // unit
    cdef int g_cols = pw * n_panels
    # part >= n_parts: an empty share (a spare thread that only keeps the barriers).
    cdef int p_lo = min(part, n_parts) * n_panels // n_parts
    cdef int p_hi = min(part + 1, n_parts) * n_panels // n_parts
    cdef int r_panels = (out_size + pw - 1) // pw
    cdef int r_lo = min(part, n_parts) * r_panels // n_parts
    cdef int r_hi = min(part + 1, n_parts) * r_panels // n_parts
    cdef int r_width = min(out_size, r_hi * pw) - r_lo * pw
    cdef int row_step = seq_len if batch_first else 1
    cdef Py_ssize_t g_ld = <Py_ssize_t>row_step * num_dirs * g_cols
    cdef Py_ssize_t o_ld = <Py_ssize_t>row_step * num_dirs * out_size
    cdef const floating *hprev = h0 + <Py_ssize_t>d * batch * out_size
    cdef Py_ssize_t hprev_ld = out_size
    cdef const floating *w_hh_d = w_hh_p + <Py_ssize_t>d * hh_stride
    cdef const floating *w_hr_d = w_hr_p + <Py_ssize_t>d * hr_stride
    cdef const floating *b_d = bias + <Py_ssize_t>d * g_cols
    cdef floating *c_d = c + <Py_ssize_t>d * batch * hidden
    cdef floating *hc_d = hcell + <Py_ssize_t>d * batch * hidden
    cdef floating *g_t
    cdef floating *o_t
    cdef Py_ssize_t s, t, row
    cdef int k
    cdef int rows = seq_len * batch
    cdef unsigned int csr = fl_ftz_begin()

    if p_hi > p_lo:
        _matmul(False, rows, (p_hi - p_lo) * pw, n_in, x, n_in,
                w_ih_p + (<Py_ssize_t>d * n_panels + p_lo) * n_in * pw,
                gates + d * g_cols + p_lo * pw, num_dirs * g_cols)
    for s in range(seq_len):
        t = s if d == 0 else seq_len - 1 - s
        row = t if batch_first else t * batch
        g_t = gates + row * num_dirs * g_cols + d * g_cols
        o_t = out + row * num_dirs * out_size + d * out_size
        k = 0 if s == 0 and h0_zero else out_size
        if has_proj:
            _lstm_step(batch, k, hidden, hprev, hprev_ld, w_hh_d, g_t, g_ld, b_d,
                       c_d, hidden, hc_d, hidden, p_lo, p_hi)
            fl_omp_barrier()
            if r_width > 0:
                _matmul(False, batch, r_width, hidden, hc_d, hidden,
                        w_hr_d + <Py_ssize_t>r_lo * hidden * pw, o_t + r_lo * pw, o_ld)
        else:
            _lstm_step(batch, k, hidden, hprev, hprev_ld, w_hh_d, g_t, g_ld, b_d,
                       c_d, hidden, o_t, o_ld, p_lo, p_hi)
        fl_omp_barrier()
        hprev = o_t
        hprev_ld = o_ld
    fl_ftz_end(csr)


def layer(const floating[:, ::1] x, const floating[:, ::1] w_ih,
          const floating[::1] w_ih_p, floating[:, ::1] gates,
          const floating[:, ::1] w_hh_p, const floating[:, ::1] bias,
          const floating[:, ::1] w_hr_p, const floating[:, :, ::1] h0,
          floating[:, :, ::1] c, floating[:, :, ::1] hcell, floating[:, ::1] out,
          floating[:, :, ::1] h_n, int seq_len, bint batch_first, int n_chunks,
          int num_threads, int blas_min_rows, bint h0_zero=False):
    """One layer, both phases; see the module docstring.

    Shapes (D directions, N batch, H hidden, P output size, R = L*N rows):
    x (R, I); w_ih (D*4Hp, I), both directions' interleaved W_ih, and w_ih_p
    the same in panels; gates (R, D*4Hp) scratch; w_hh_p (D, *), each
    direction's interleaved W_hh^T (P x 4Hp) in panels; bias (D, 4Hp),
    b_ih + b_hh interleaved; w_hr_p (D, *), each W_hr^T (H x P) in panels, or
    (D, 0) without projection; h0 (D, N, P); c (D, N, H) holds c_0 on entry
    and c_n on exit; hcell (D, N, H) scratch for the unprojected h (unused
    without projection); out (R, D*P); h_n (D, N, P).

    ``n_chunks`` > 0: the input projection over all rows (``blas_min_rows`` as
    in ``input_projection``), then one task per (direction, batch chunk), with
    no synchronisation.  ``n_chunks`` == 0: split mode, for batches too small
    to give every thread rows of its own: each direction's hidden units are
    split among ``num_threads // D`` threads, each projecting and running its
    own units and meeting the others at a barrier after every step.

    ``h0_zero`` says that h0 is all zeros (no initial state was given): the
    first step then skips its recurrent product.
    """
    cdef int num_dirs = w_hh_p.shape[0]
    cdef int batch = h0.shape[1]
    cdef int out_size = h0.shape[2]
    cdef int hidden = c.shape[2]
    cdef bint has_proj = w_hr_p.shape[1] > 0
    cdef int n_tasks = num_dirs * n_chunks
    cdef int task, d, chunk, tid, team, n_parts, r
    cdef const floating *w_hr_ptr = &w_hr_p[0, 0] if has_proj else NULL
    cdef floating *hcell_ptr = &hcell[0, 0, 0] if has_proj else NULL
    if batch == 0 or seq_len == 0:
        return
    cdef floating *gates_ptr = &gates[0, 0]
    cdef const floating *w_hh_ptr = &w_hh_p[0, 0]
    cdef const floating *bias_ptr = &bias[0, 0]
    cdef const floating *h0_ptr = &h0[0, 0, 0]
    cdef floating *c_ptr = &c[0, 0, 0]
    cdef floating *out_ptr = &out[0, 0]
    cdef floating *h_n_ptr = &h_n[0, 0, 0]
    cdef Py_ssize_t last
    cdef const floating *x_ptr = &x[0, 0]
    cdef const floating *w_ih_p_ptr = &w_ih_p[0]
    cdef int n_in = x.shape[1]
    tid = team = n_parts = d = 0  # assigned before the parallel block copies them in
    if n_chunks == 0:
        with nogil, parallel(num_threads=num_threads):
            tid = omp_get_thread_num()
            team = omp_get_num_threads()
            n_parts = team // num_dirs
            if n_parts == 0:  # fewer threads than directions: one runs them in turn
                for d in range(num_dirs):
                    _run_split(d, 0, 1, seq_len, batch, hidden, out_size, num_dirs,
                               batch_first, has_proj, gates_ptr, w_hh_ptr, w_hh_p.shape[1],
                               bias_ptr, w_hr_ptr, w_hr_p.shape[1], h0_ptr, c_ptr, hcell_ptr,
                               out_ptr, x_ptr, n_in, w_ih_p_ptr, h0_zero)
            else:  # threads past n_parts * num_dirs get an empty part but keep the barriers
                _run_split(min(tid // n_parts, num_dirs - 1), tid % n_parts if
                           tid < n_parts * num_dirs else n_parts, n_parts, seq_len, batch,
                           hidden, out_size, num_dirs, batch_first, has_proj, gates_ptr,
                           w_hh_ptr, w_hh_p.shape[1], bias_ptr, w_hr_ptr, w_hr_p.shape[1],
                           h0_ptr, c_ptr, hcell_ptr, out_ptr, x_ptr, n_in, w_ih_p_ptr, h0_zero)
        for d in range(num_dirs):
            last = seq_len - 1 if d == 0 else 0
            for r in range(batch):
                memcpy(h_n_ptr + (<Py_ssize_t>d * batch + r) * out_size,
                       out_ptr + ((r * seq_len + last) if batch_first else (last * batch + r))
                       * num_dirs * out_size + d * out_size, out_size * sizeof(floating))
        return
    with nogil:
        _project(x_ptr, seq_len * batch, n_in, &w_ih[0, 0], w_ih_p_ptr, gates_ptr,
                 gates.shape[1], num_threads, blas_min_rows)
    num_threads = max(1, min(num_threads, n_tasks))
    for task in prange(n_tasks, nogil=True, num_threads=num_threads,
                       schedule="static", chunksize=1):
        d = task // n_chunks
        chunk = task % n_chunks
        _run_task(d, chunk * batch // n_chunks, (chunk + 1) * batch // n_chunks,
                  seq_len, batch, hidden, out_size, num_dirs, batch_first, has_proj,
                  gates_ptr, w_hh_ptr, w_hh_p.shape[1], bias_ptr, w_hr_ptr, w_hr_p.shape[1],
                  h0_ptr, c_ptr, hcell_ptr, out_ptr, h_n_ptr, h0_zero)
