"""LSTM layer kernels (one layer, one or two directions).

A layer runs in two phases:

1. ``input_projection``: the input-to-gate product for every timestep and both
   directions at once, ``gates = x @ W_ih^T`` with
   ``W_ih = [W_ih_forward; W_ih_reverse]`` of shape ``(D*4H, I)``, split over
   the OpenMP threads by blocks of rows.

BLAS runs single-threaded in both phases (the caller pins it): all threads are
OpenMP threads, so ``set_num_threads`` is the one knob and nothing oversubscribes.
2. ``recurrence``: the sequential part.  Work is split into independent tasks,
   one per (direction, batch chunk), run under one OpenMP parallel region with
   no synchronisation per timestep.  Each step of a task adds ``h_{t-1} @ W_hh^T``
   into that step's gate rows, applies the gate nonlinearities and the state
   update in one pass, and projects ``h`` with ``W_hr`` when the layer has a
   projection.  Those per-step products use the small-M kernel of
   ``_kernels.h`` on weights stored transposed once (``W_hh^T``, ``W_hr^T``):
   a BLAS GEMM would pack the whole weight matrix again at every step.

Rows of ``x``, ``gates`` and ``out`` are ordered as the caller's layout:
time-major rows ``t*N + n`` or, with ``batch_first``, batch-major rows
``n*L + t``.  Either way the rows of one timestep are evenly spaced, so every
per-step GEMM reads and writes them in place through its leading dimension and
no transpose is ever made.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy

from fastlstm._blas cimport NoTrans, Trans, gemm


cdef extern from "_kernels.h" nogil:
    void fl_matmul_f(int beta, int M, int N, int K, const float *A, Py_ssize_t lda,
                     const float *BP, float *G, Py_ssize_t ldg) noexcept
    void fl_matmul_d(int beta, int M, int N, int K, const double *A, Py_ssize_t lda,
                     const double *BP, double *G, Py_ssize_t ldg) noexcept
    int fl_panel_width_f() noexcept
    int fl_panel_width_d() noexcept
    void fl_gates_f(int H, const float *g, const float *b, float *c, float *h) noexcept
    void fl_gates_d(int H, const double *g, const double *b, double *c, double *h) noexcept
    void fl_tanh_array_f(Py_ssize_t n, const float *x, float *y, int sigmoid) noexcept
    void fl_tanh_array_d(Py_ssize_t n, const double *x, double *y, int sigmoid) noexcept


cdef inline void _matmul(bint beta, int m, int n, int k, const floating *a, Py_ssize_t lda,
                         const floating *bp, floating *g, Py_ssize_t ldg) noexcept nogil:
    """g (m x n) = beta * g + a (m x k) @ B (k x n), B packed by ``pack_panels``."""
    if floating is float:
        fl_matmul_f(beta, m, n, k, a, lda, bp, g, ldg)
    else:
        fl_matmul_d(beta, m, n, k, a, lda, bp, g, ldg)


def panel_width(dtype):
    """Columns per weight panel of the small-M kernel for ``dtype``."""
    return fl_panel_width_f() if dtype == "float32" else fl_panel_width_d()


def input_projection(const floating[:, ::1] x, const floating[:, ::1] w_ih,
                     const floating[::1] w_ih_p, floating[:, ::1] gates, int num_threads,
                     int blas_min_rows):
    """gates (R, D*4H) = x (R, I) @ w_ih (D*4H, I)^T for all timesteps.

    The rows are split into one contiguous block per thread.  A block of at
    least ``blas_min_rows`` rows is one single-threaded BLAS GEMM; smaller
    blocks use the small-M kernel on ``w_ih_p`` (W_ih^T packed by
    ``pack_panels``), as BLAS would pack the whole weight matrix for them.
    """
    cdef int rows = x.shape[0]
    cdef int n_in = x.shape[1]
    cdef int n_out = w_ih.shape[0]
    cdef int n_blocks = max(1, min(num_threads, rows // 16))
    cdef int blk, lo, hi
    cdef const floating *x_ptr
    cdef const floating *w_ptr
    cdef const floating *wp_ptr
    cdef floating *g_ptr
    if rows == 0:
        return
    x_ptr = &x[0, 0]
    w_ptr = &w_ih[0, 0]
    wp_ptr = &w_ih_p[0]
    g_ptr = &gates[0, 0]
    for blk in prange(n_blocks, nogil=True, num_threads=n_blocks, schedule="static", chunksize=1):
        lo = <int>(<long long>blk * rows // n_blocks)
        hi = <int>((<long long>blk + 1) * rows // n_blocks)
        if hi - lo >= blas_min_rows:
            gemm(NoTrans, Trans, hi - lo, n_out, n_in, <floating>1.0,
                 x_ptr + <Py_ssize_t>lo * n_in, n_in, w_ptr, n_in, <floating>0.0,
                 g_ptr + <Py_ssize_t>lo * n_out, n_out)
        else:
            _matmul(False, hi - lo, n_out, n_in, x_ptr + <Py_ssize_t>lo * n_in, n_in, wp_ptr,
                    g_ptr + <Py_ssize_t>lo * n_out, n_out)


cdef inline void _gate_update(floating *g, const floating *b, floating *c, floating *h,
                              int hidden) noexcept nogil:
    """Fused gate math for one row; ``c`` updated in place, ``h = o * tanh(c)``."""
    if floating is float:
        fl_gates_f(hidden, g, b, c, h)
    else:
        fl_gates_d(hidden, g, b, c, h)


def _activation_for_tests(const floating[::1] x, floating[::1] y, bint sigmoid):
    """y = tanh(x) or sigmoid(x) through the kernels' own approximation."""
    if floating is float:
        fl_tanh_array_f(x.shape[0], &x[0], &y[0], sigmoid)
    else:
        fl_tanh_array_d(x.shape[0], &x[0], &y[0], sigmoid)


cdef void _run_task(
    int d, int n_lo, int n_hi, int seq_len, int batch, int hidden, int out_size,
    int num_dirs, bint batch_first, bint has_proj,
    floating *gates, const floating *w_hh_p, Py_ssize_t hh_stride, const floating *bias,
    const floating *w_hr_p, Py_ssize_t hr_stride,
    const floating *h0, floating *c, floating *hcell, floating *out, floating *h_n,
) noexcept nogil:
    """Run direction ``d`` over all timesteps for batch rows ``[n_lo, n_hi)``.

    ``c`` (the layer's c_n, already holding c_0) is updated in place.
    """
    cdef int m = n_hi - n_lo
    cdef int h4 = 4 * hidden
    # Distance in rows between consecutive batch entries of one timestep.
    cdef int row_step = seq_len if batch_first else 1
    cdef int g_ld = row_step * num_dirs * h4
    cdef int o_ld = row_step * num_dirs * out_size
    cdef const floating *hprev = h0 + (<Py_ssize_t>d * batch + n_lo) * out_size
    cdef int hprev_ld = out_size
    cdef const floating *w_hh_d = w_hh_p + <Py_ssize_t>d * hh_stride
    cdef const floating *w_hr_d = w_hr_p + <Py_ssize_t>d * hr_stride
    cdef const floating *b_d = bias + <Py_ssize_t>d * h4
    cdef floating *c_d = c + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef floating *hc_d = hcell + (<Py_ssize_t>d * batch + n_lo) * hidden
    cdef floating *g_t
    cdef floating *o_t
    cdef floating *h_dst
    cdef int h_dst_ld
    cdef Py_ssize_t s, t, r, row

    for s in range(seq_len):
        t = s if d == 0 else seq_len - 1 - s
        row = n_lo * seq_len + t if batch_first else t * batch + n_lo
        g_t = gates + row * num_dirs * h4 + d * h4
        o_t = out + row * num_dirs * out_size + d * out_size
        _matmul(True, m, h4, out_size, hprev, hprev_ld, w_hh_d, g_t, g_ld)
        if has_proj:
            h_dst = hc_d
            h_dst_ld = hidden
        else:
            h_dst = o_t
            h_dst_ld = o_ld
        for r in range(m):
            _gate_update(g_t + r * g_ld, b_d, c_d + r * hidden, h_dst + r * h_dst_ld, hidden)
        if has_proj:
            _matmul(False, m, out_size, hidden, hc_d, hidden, w_hr_d, o_t, o_ld)
        hprev = o_t
        hprev_ld = o_ld

    for r in range(m):
        memcpy(h_n + (<Py_ssize_t>d * batch + n_lo + r) * out_size, hprev + r * hprev_ld,
               out_size * sizeof(floating))


def recurrence(floating[:, ::1] gates, const floating[:, ::1] w_hh_p,
               const floating[:, ::1] bias, const floating[:, ::1] w_hr_p,
               const floating[:, :, ::1] h0, floating[:, :, ::1] c,
               floating[:, :, ::1] hcell, floating[:, ::1] out, floating[:, :, ::1] h_n,
               int seq_len, bint batch_first, int n_chunks, int num_threads):
    """Sequential part of one layer; see the module docstring.

    Shapes (D directions, N batch, H hidden, P output size, R = L*N rows):
    gates (R, D*4H) from ``input_projection``, modified in place; w_hh_p (D, *),
    each W_hh^T (P x 4H) packed by ``pack_panels``; bias (D, 4H), b_ih + b_hh;
    w_hr_p (D, *), each W_hr^T (H x P) packed, or (D, 0) without projection; h0 (D, N, P); c (D, N, H) holds c_0 on entry and c_n on exit;
    hcell (D, N, H) scratch for the unprojected h (unused without projection);
    out (R, D*P); h_n (D, N, P).
    """
    cdef int num_dirs = w_hh_p.shape[0]
    cdef int batch = h0.shape[1]
    cdef int out_size = h0.shape[2]
    cdef int hidden = c.shape[2]
    cdef bint has_proj = w_hr_p.shape[1] > 0
    cdef int n_tasks = num_dirs * n_chunks
    cdef int task, d, chunk
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
    num_threads = max(1, min(num_threads, n_tasks))
    for task in prange(n_tasks, nogil=True, num_threads=num_threads,
                       schedule="static", chunksize=1):
        d = task // n_chunks
        chunk = task % n_chunks
        _run_task(d, chunk * batch // n_chunks, (chunk + 1) * batch // n_chunks,
                  seq_len, batch, hidden, out_size, num_dirs, batch_first, has_proj,
                  gates_ptr, w_hh_ptr, w_hh_p.shape[1], bias_ptr, w_hr_ptr, w_hr_p.shape[1],
                  h0_ptr, c_ptr, hcell_ptr, out_ptr, h_n_ptr)
