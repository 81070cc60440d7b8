"""LSTM layer kernels (one layer, one or two directions).

A layer runs in two phases:

1. ``input_projection``: the input-to-gate product for every timestep and both
   directions at once, one GEMM ``gates = x @ W_ih^T`` with
   ``W_ih = [W_ih_forward; W_ih_reverse]`` of shape ``(D*4H, I)``.  BLAS may use
   its own threads here.
2. ``recurrence``: the sequential part.  Work is split into independent tasks,
   one per (direction, batch chunk), run under one OpenMP parallel region with
   no synchronisation per timestep.  Each step of a task adds ``h_{t-1} @ W_hh^T``
   into that step's gate rows (single-threaded GEMM), applies the gate
   nonlinearities and the state update in one pass, and projects ``h`` with
   ``W_hr`` when the layer has a projection.

Rows of ``x``, ``gates`` and ``out`` are ordered as the caller's layout:
time-major rows ``t*N + n`` or, with ``batch_first``, batch-major rows
``n*L + t``.  Either way the rows of one timestep are evenly spaced, so every
per-step GEMM reads and writes them in place through its leading dimension and
no transpose is ever made.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf
from libc.string cimport memcpy

from fastlstm._blas cimport NoTrans, Trans, gemm


cdef inline floating _sigmoid(floating x) noexcept nogil:
    if floating is float:
        return 1.0 / (1.0 + expf(-x))
    else:
        return 1.0 / (1.0 + exp(-x))


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


def input_projection(const floating[:, ::1] x, const floating[:, ::1] w_ih,
                     floating[:, ::1] gates):
    """gates (R, D*4H) = x (R, I) @ w_ih (D*4H, I)^T, one GEMM for all timesteps."""
    cdef int rows = x.shape[0]
    cdef int n_in = x.shape[1]
    cdef int n_out = w_ih.shape[0]
    if rows == 0:
        return
    with nogil:
        gemm(NoTrans, Trans, rows, n_out, n_in, <floating>1.0, &x[0, 0], n_in,
             &w_ih[0, 0], n_in, <floating>0.0, &gates[0, 0], n_out)


cdef void _gate_update(floating *g, const floating *b, floating *c, floating *h,
                       Py_ssize_t hidden) noexcept nogil:
    """One row of the fused gate math, gates ordered i, f, g, o (torch's order).

    ``g`` holds the four pre-activations without bias; ``c`` is updated in place
    and ``h = o * tanh(c)`` is written to ``h``.
    """
    cdef Py_ssize_t j
    cdef floating i_t, f_t, g_t, o_t, c_t
    for j in range(hidden):
        i_t = _sigmoid(g[j] + b[j])
        f_t = _sigmoid(g[hidden + j] + b[hidden + j])
        g_t = _tanh(g[2 * hidden + j] + b[2 * hidden + j])
        o_t = _sigmoid(g[3 * hidden + j] + b[3 * hidden + j])
        c_t = f_t * c[j] + i_t * g_t
        c[j] = c_t
        h[j] = o_t * _tanh(c_t)


cdef void _run_task(
    int d, int n_lo, int n_hi, int seq_len, int batch, int hidden, int out_size,
    int num_dirs, bint batch_first, bint has_proj,
    floating *gates, const floating *w_hh, const floating *bias, const floating *w_hr,
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
    cdef const floating *w_hh_d = w_hh + <Py_ssize_t>d * h4 * out_size
    cdef const floating *w_hr_d = w_hr + <Py_ssize_t>d * out_size * hidden
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
        gemm(NoTrans, Trans, m, h4, out_size, <floating>1.0, hprev, hprev_ld,
             w_hh_d, out_size, <floating>1.0, g_t, g_ld)
        if has_proj:
            h_dst = hc_d
            h_dst_ld = hidden
        else:
            h_dst = o_t
            h_dst_ld = o_ld
        for r in range(m):
            _gate_update(g_t + r * g_ld, b_d, c_d + r * hidden, h_dst + r * h_dst_ld, hidden)
        if has_proj:
            gemm(NoTrans, Trans, m, out_size, hidden, <floating>1.0, hc_d, hidden,
                 w_hr_d, hidden, <floating>0.0, o_t, o_ld)
        hprev = o_t
        hprev_ld = o_ld

    for r in range(m):
        memcpy(h_n + (<Py_ssize_t>d * batch + n_lo + r) * out_size, hprev + r * hprev_ld,
               out_size * sizeof(floating))


def recurrence(floating[:, ::1] gates, const floating[:, :, ::1] w_hh,
               const floating[:, ::1] bias, const floating[:, :, ::1] w_hr,
               const floating[:, :, ::1] h0, floating[:, :, ::1] c,
               floating[:, :, ::1] hcell, floating[:, ::1] out, floating[:, :, ::1] h_n,
               int seq_len, bint batch_first, int n_chunks, int num_threads):
    """Sequential part of one layer; see the module docstring.

    Shapes (D directions, N batch, H hidden, P output size, R = L*N rows):
    gates (R, D*4H) from ``input_projection``, modified in place; w_hh (D, 4H, P);
    bias (D, 4H), b_ih + b_hh; w_hr (D, P, H) or an empty array without
    projection; h0 (D, N, P); c (D, N, H) holds c_0 on entry and c_n on exit;
    hcell (D, N, H) scratch for the unprojected h (unused without projection);
    out (R, D*P); h_n (D, N, P).
    """
    cdef int num_dirs = w_hh.shape[0]
    cdef int batch = h0.shape[1]
    cdef int out_size = h0.shape[2]
    cdef int hidden = c.shape[2]
    cdef bint has_proj = w_hr.shape[1] > 0
    cdef int n_tasks = num_dirs * n_chunks
    cdef int task, d, chunk
    cdef const floating *w_hr_ptr = &w_hr[0, 0, 0] if has_proj else NULL
    cdef floating *hcell_ptr = &hcell[0, 0, 0] if has_proj else NULL
    if batch == 0 or seq_len == 0:
        return
    cdef floating *gates_ptr = &gates[0, 0]
    cdef const floating *w_hh_ptr = &w_hh[0, 0, 0]
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
                  gates_ptr, w_hh_ptr, bias_ptr, w_hr_ptr,
                  h0_ptr, c_ptr, hcell_ptr, out_ptr, h_n_ptr)
