# Type stub of the compiled module fastlstm/_ext/blas.pyx (its C-level gemm is for
# Cython callers only; Python sees the enum and the test helper).
import enum

import numpy as np

class BLAS_Trans(enum.IntEnum):
    NoTrans = 110
    Trans = 116

def _gemm_for_tests(A: np.ndarray, B: np.ndarray, C: np.ndarray, trans_a: bool = False,
                    trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0) -> None: ...
