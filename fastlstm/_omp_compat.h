/* OpenMP when the build has it, one thread otherwise: kernels call these
 * functions unconditionally and the serial build still links. */
#ifndef FASTLSTM_OMP_COMPAT_H
#define FASTLSTM_OMP_COMPAT_H
#ifdef _OPENMP
#include <omp.h>
#define FASTLSTM_OPENMP 1
/* An orphaned barrier: binds to the parallel region the caller runs in. */
static inline void fl_omp_barrier(void) {
#pragma omp barrier
}
#else
#define FASTLSTM_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline void fl_omp_barrier(void) {}
#endif
#endif
