"""Row-major GEMM wrapper over ``scipy.linalg.cython_blas``.

BLAS is column-major; a row-major product ``C = op(A) @ op(B)`` is the
column-major product ``C^T = op(B)^T @ op(A)^T``, so the operands and the
``m``/``n`` sizes are swapped before the call.
"""
from scipy.linalg.cython_blas cimport dgemm, sgemm


cdef void gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
               floating alpha, const floating *A, int lda,
               const floating *B, int ldb,
               floating beta, floating *C, int ldc) noexcept nogil:
    """C (m x n, row-major) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C."""
    cdef char cta = <char>ta
    cdef char ctb = <char>tb
    if floating is float:
        sgemm(&ctb, &cta, &n, &m, &k, &alpha, <float *>B, &ldb, <float *>A, &lda,
              &beta, C, &ldc)
    else:
        dgemm(&ctb, &cta, &n, &m, &k, &alpha, <double *>B, &ldb, <double *>A, &lda,
              &beta, C, &ldc)


def _gemm_for_tests(const floating[:, ::1] A, const floating[:, ::1] B, floating[:, ::1] C,
                    bint trans_a=False, bint trans_b=False,
                    double alpha=1.0, double beta=0.0):
    """C = alpha * op(A) @ op(B) + beta * C on C-contiguous arrays (for the tests)."""
    cdef int m = C.shape[0]
    cdef int n = C.shape[1]
    cdef int k = A.shape[0] if trans_a else A.shape[1]
    if (B.shape[1] if trans_b else B.shape[0]) != k:
        raise ValueError("inner dimensions differ")
    if (A.shape[1] if trans_a else A.shape[0]) != m or (B.shape[0] if trans_b else B.shape[1]) != n:
        raise ValueError("output shape does not match")
    with nogil:
        gemm(Trans if trans_a else NoTrans, Trans if trans_b else NoTrans, m, n, k,
             <floating>alpha, &A[0, 0], A.shape[1], &B[0, 0], B.shape[1],
             <floating>beta, &C[0, 0], C.shape[1])
