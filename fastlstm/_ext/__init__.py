"""The compiled kernels: the bottom layer, which imports nothing of fastlstm's Python code.

* ``kernels`` (``kernels.pyx``, C in ``src/kernels.h``): the LSTM layer, step and product
  kernels, with the GIL released, and the run-time choice of SIMD level;
* ``blas``: one fused-type ``gemm`` over ``scipy.linalg.cython_blas``, the only place that
  touches BLAS symbols;
* ``openmp``: whether the build has OpenMP, and its thread count.
"""
