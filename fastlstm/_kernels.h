/* Small-M matrix product for the per-timestep recurrent and projection steps.
 *
 *     G[m, j] = beta * G[m, j] + sum_k A[m, k] * BT[k, j]
 *
 * for m < M, j < N, k < K (row-major), beta 0 or 1.
 *
 * BLAS GEMM packs both operands on every call; at a timestep M is the batch
 * chunk (often 1 to 16) while BT is the whole weight matrix, so packing the
 * weights again each step costs more than the product.  Here BT (the
 * transposed weight, K x N) is packed once into panels (see FL_PANEL) and
 * each step streams it exactly once per block of 4 rows, with the block's
 * accumulators held in registers.
 *
 * The blocks use GCC's portable vector extensions.  On x86-64 with GCC
 * or Clang, target_clones compiles each kernel for x86-64-v4 (AVX-512),
 * x86-64-v3 (AVX2+FMA) and the
 * baseline, and the loader picks the best one the CPU supports, so one build
 * runs on any x86-64 machine.
 *
 * The same body serves float and double: FL_DEFINE_MATMUL instantiates it.
 */
#ifndef FASTLSTM_KERNELS_H
#define FASTLSTM_KERNELS_H

#include <stddef.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(FASTLSTM_NO_CLONES)
#define FL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FL_CLONES
#endif

/* 64-byte vectors through GCC's vector extensions: one zmm register under
 * AVX-512, two ymm under AVX2, four xmm on the baseline.  The _u types load
 * and store at any float alignment. */
typedef float fl_vf __attribute__((vector_size(64)));
typedef float fl_vf_u __attribute__((vector_size(64), aligned(4)));
typedef double fl_vd __attribute__((vector_size(64)));
typedef double fl_vd_u __attribute__((vector_size(64), aligned(8)));

/* One register block: R rows by NV vectors of columns, with R and NV
 * compile-time constants so that the accumulators live in registers. */
#define FL_DEFINE_BLOCK(REAL, V, VU, NAME, R, NV)                                   \
static inline __attribute__((always_inline)) void NAME(int beta, int K,             \
        const REAL *A, ptrdiff_t lda, const REAL *BT, ptrdiff_t ldb, REAL *G,       \
        ptrdiff_t ldg)                                                              \
{                                                                                   \
    const int W = (int)(sizeof(V) / sizeof(REAL));                                  \
    V acc[R][NV];                                                                   \
    for (int r = 0; r < R; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                \
            acc[r][v] = beta ? *(const VU *)(G + r * ldg + v * W) : (V){0};         \
    for (int k = 0; k < K; k++) {                                                   \
        V b[NV];                                                                    \
        for (int v = 0; v < NV; v++)                                                \
            b[v] = *(const VU *)(BT + k * ldb + v * W);                             \
        for (int r = 0; r < R; r++) {                                               \
            const REAL a = A[r * lda + k];                                          \
            for (int v = 0; v < NV; v++)                                            \
                acc[r][v] += a * b[v];                                              \
        }                                                                           \
    }                                                                               \
    for (int r = 0; r < R; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                \
            *(VU *)(G + r * ldg + v * W) = acc[r][v];                               \
}

/* The weights come packed in panels of FL_PANEL vectors of columns: panel p
 * holds columns [p*PW, (p+1)*PW) of BT (PW = FL_PANEL * vector width) as a
 * contiguous K x PW block, zero-padded past N.  A block then streams
 * contiguous memory; the plain transposed layout would step through memory
 * by whole rows, one cache set and one page per k. */
#define FL_PANEL 4

#define FL_DEFINE_MATMUL(REAL, SUFFIX, V, VU)                                       \
FL_DEFINE_BLOCK(REAL, V, VU, fl_block4_##SUFFIX, 4, 2)                              \
FL_DEFINE_BLOCK(REAL, V, VU, fl_block1_##SUFFIX, 1, FL_PANEL)                       \
                                                                                    \
/* Rows [m0, m0+R) of one panel; R is 4 or 1. */                                    \
static inline __attribute__((always_inline)) void fl_panel_##SUFFIX(               \
        int R, int beta, int K, const REAL *A, ptrdiff_t lda, const REAL *P,        \
        REAL *G, ptrdiff_t ldg)                                                     \
{                                                                                   \
    const int PW = FL_PANEL * (int)(sizeof(V) / sizeof(REAL));                      \
    if (R == 4) {                                                                   \
        fl_block4_##SUFFIX(beta, K, A, lda, P, PW, G, ldg);                         \
        fl_block4_##SUFFIX(beta, K, A, lda, P + PW / 2, PW, G + PW / 2, ldg);       \
    } else {                                                                        \
        fl_block1_##SUFFIX(beta, K, A, lda, P, PW, G, ldg);                         \
    }                                                                               \
}                                                                                   \
                                                                                    \
FL_CLONES                                                                           \
static void fl_matmul_##SUFFIX(int beta, int M, int N, int K, const REAL *A,        \
                               ptrdiff_t lda, const REAL *BP, REAL *G,              \
                               ptrdiff_t ldg)                                       \
{                                                                                   \
    const int PW = FL_PANEL * (int)(sizeof(V) / sizeof(REAL));                      \
    const int n_full = N / PW;                                                      \
    const int rest = N - n_full * PW;                                               \
    for (int m0 = 0; m0 < M; ) {                                                    \
        const int R = M - m0 >= 4 ? 4 : 1;                                          \
        const REAL *a = A + m0 * lda;                                               \
        REAL *g = G + m0 * ldg;                                                     \
        for (int p = 0; p < n_full; p++)                                            \
            fl_panel_##SUFFIX(R, beta, K, a, lda, BP + (ptrdiff_t)p * K * PW,       \
                              g + p * PW, ldg);                                     \
        if (rest) {  /* last, partial panel: through a full-width buffer */         \
            REAL tmp[4 * FL_PANEL * sizeof(V) / sizeof(REAL)];                      \
            REAL *gp = g + n_full * PW;                                             \
            for (int r = 0; r < R; r++)                                             \
                for (int j = 0; j < PW; j++)                                        \
                    tmp[r * PW + j] = (beta && j < rest) ? gp[r * ldg + j] : (REAL)0; \
            fl_panel_##SUFFIX(R, 1, K, a, lda, BP + (ptrdiff_t)n_full * K * PW,     \
                              tmp, PW);                                             \
            for (int r = 0; r < R; r++)                                             \
                for (int j = 0; j < rest; j++)                                      \
                    gp[r * ldg + j] = tmp[r * PW + j];                              \
        }                                                                           \
        m0 += R;                                                                    \
    }                                                                               \
}                                                                                   \
                                                                                    \
/* Panel width in elements, for the packing code. */                                \
static inline int fl_panel_width_##SUFFIX(void)                                     \
{                                                                                   \
    return FL_PANEL * (int)(sizeof(V) / sizeof(REAL));                              \
}

FL_DEFINE_MATMUL(float, f, fl_vf, fl_vf_u)
FL_DEFINE_MATMUL(double, d, fl_vd, fl_vd_u)

/* ------------------------------------------------------------------------
 * Gate nonlinearities and state update for one row (gate order i, f, g, o):
 *
 *     i, f, o = sigmoid(.), g = tanh(.), c = f*c + i*g, h = o*tanh(c)
 *
 * with sigmoid(x) = 0.5 + 0.5*tanh(x/2), so one tanh serves both.
 *
 * float: tanh is a rational function x*P(s)/Q(s), s = (x/9)^2, on x clamped
 * to [-9, 9] (tanh rounds to +-1 in float32 beyond), so the loop vectorises
 * with no calls and no branches.  The coefficients are a weighted
 * least-squares fit (docs/fit_tanh.py); the maximum absolute error over all
 * float32 inputs is 3.1e-7 for tanh and 1.7e-7 for sigmoid in the FMA
 * versions, 3.6e-7 and 2.2e-7 in the baseline one (tests/test_kernels.py
 * checks the version the CPU runs); results stay within [-1, 1].
 * NaN stays NaN; +-inf gives +-1.
 * double: libm's tanh, accurate to an ulp.
 * ------------------------------------------------------------------------ */
#include <math.h>

static inline __attribute__((always_inline)) float fl_tanh_f(float x)
{
    x = x < -9.0f ? -9.0f : (x > 9.0f ? 9.0f : x);
    const float s = (x * x) * (1.0f / 81.0f);
    const float p = 0.9999999403953552f + s * (10.594123840332031f + s * (20.33028221130371f
                  + s * (5.899973392486572f + s * (-0.8622098565101624f
                  + s * (0.18105918169021606f + s * -0.02341737598180771f)))));
    const float q = 1.0f + s * (37.594112396240234f + s * (160.57240295410156f
                  + s * 134.91180419921875f));
    const float t = x * p / q;
    /* The fit overshoots 1 by an ulp near the clamp: keep |tanh| <= 1, so that
     * sigmoid stays in [0, 1].  NaN passes through (comparisons are false). */
    return t > 1.0f ? 1.0f : (t < -1.0f ? -1.0f : t);
}

static inline __attribute__((always_inline)) double fl_tanh_d(double x) { return tanh(x); }

#define FL_DEFINE_GATES(REAL, SUFFIX)                                               \
FL_CLONES                                                                           \
static void fl_gates_##SUFFIX(int H, const REAL *g, const REAL *b, REAL *c,         \
                              REAL *h)                                              \
{                                                                                   \
    const REAL half = (REAL)0.5;                                                    \
    for (int j = 0; j < H; j++) {                                                   \
        const REAL i_t = half + half * fl_tanh_##SUFFIX(half * (g[j] + b[j]));      \
        const REAL f_t = half + half * fl_tanh_##SUFFIX(half * (g[H + j] + b[H + j])); \
        const REAL g_t = fl_tanh_##SUFFIX(g[2 * H + j] + b[2 * H + j]);             \
        const REAL o_t = half + half * fl_tanh_##SUFFIX(half * (g[3 * H + j] + b[3 * H + j])); \
        const REAL c_t = f_t * c[j] + i_t * g_t;                                    \
        c[j] = c_t;                                                                 \
        h[j] = o_t * fl_tanh_##SUFFIX(c_t);                                         \
    }                                                                               \
}

FL_DEFINE_GATES(float, f)
FL_DEFINE_GATES(double, d)

/* Elementwise tanh and sigmoid through the same code (and the same ISA
 * versions) as the gate kernel, for the tests. */
#define FL_DEFINE_ACT(REAL, SUFFIX)                                                 \
FL_CLONES                                                                           \
static void fl_tanh_array_##SUFFIX(ptrdiff_t n, const REAL *x, REAL *y, int sigmoid) \
{                                                                                   \
    const REAL half = (REAL)0.5;                                                    \
    for (ptrdiff_t j = 0; j < n; j++)                                               \
        y[j] = sigmoid ? half + half * fl_tanh_##SUFFIX(half * x[j])                \
                       : fl_tanh_##SUFFIX(x[j]);                                    \
}

FL_DEFINE_ACT(float, f)
FL_DEFINE_ACT(double, d)

#endif
