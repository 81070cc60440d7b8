/* fastlstm's own kernels: the small-M matrix product and the fused LSTM step.
 *
 * Weights are packed once into panels of 256 bytes of columns (PW = 64 float
 * or 32 double columns): panel p holds columns [p*PW, (p+1)*PW) of the
 * transposed weight B (K x N) as a contiguous K x PW block, zero-padded past
 * N.  The gate weights are also gate-interleaved: the 4*H gate columns are
 * reordered so that panel p holds the i, f, g and o columns of the same U =
 * PW/4 hidden units [p*U, (p+1)*U) (H padded to a multiple of U), so the gate
 * math of those units can run as soon as the panel's product is done, while
 * its rows are still in L1.
 *
 * Products stream each panel once per block of rows with the block's
 * accumulators in registers; BLAS GEMM instead packs the whole weight matrix
 * on every call, which costs more than the product when M is a batch chunk.
 *
 * Every kernel is compiled three times, for AVX-512 (F/VL/BW/DQ), AVX2+FMA
 * and baseline x86-64, from one source through GCC's portable vector
 * extensions and target attributes (intrinsics only for MIN/MAX and the
 * AVX-512 reciprocal); fl_cpu_level() picks one at run time.
 * float and double share the same source too.
 */
#ifndef FASTLSTM_KERNELS_H
#define FASTLSTM_KERNELS_H

#include <math.h>
#include <stddef.h>

enum { FL_PORTABLE = 0, FL_AVX2 = 1, FL_AVX512 = 2 };

#define FL_PANEL_BYTES 256
/* K slice of the products: a panel's slice (FL_KC x 256 bytes, 32 KiB) stays in
 * L1 beside the row block's A while every row block uses it (a 64 KiB slice
 * spilled to L2: docs/kernels.md).  Overridable with -D for tuning runs. */
#ifndef FL_KC
#define FL_KC 128
#endif
/* K slice of a timestep's product when the panels lie in strips (below AVX-512):
 * a block streams one strip's contiguous rows, and longer slices reload the
 * accumulators less often (512 against 128: 2-4% faster layers on an AMD EPYC
 * Zen 3, docs/kernels.md). */
#define FL_KC_STRIPS 512
/* The same for the other products of few rows (one-step calls, cells): 256 (2-3%
 * faster than 128, and no faster at 512). */
#define FL_KC_STRIPS_MM 256
/* ...and of FL_KC_WHOLE_ROWS rows or more (input projections): up to 1024, so that
 * the gates (M x N, past L2 at these sizes) make one pass instead of one per slice
 * (projections of K = 1024: 0.94x BLAS at 256, 0.96x at 512, 1.00x at 1024 on an AMD
 * EPYC Zen 3; docs/kernels.md). */
#define FL_KC_STRIPS_PROJ 1024
#define FL_KC_WHOLE_ROWS 64
#define FL_MC 256   /* rows per chunk of the products */
#define FL_INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FL_X86 1
#define FL_TGT_avx512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define FL_TGT_avx2 __attribute__((target("avx2,fma")))
#else
#define FL_X86 0
#define FL_TGT_avx512
#define FL_TGT_avx2
#endif
#define FL_TGT_portable

/* The best level this CPU (and OS) supports. */
static int fl_cpu_level(void)
{
#if FL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
        return FL_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FL_AVX2;
#endif
    return FL_PORTABLE;
}

/* Denormals: the cell state of a saturated gate decays towards zero and
 * arithmetic on denormal floats is many times slower, so the kernels flush
 * them (FTZ and DAZ in MXCSR) and restore the caller's MXCSR when they end. */
#if FL_X86
#include <xmmintrin.h>
static inline unsigned int fl_ftz_begin(void)
{
    const unsigned int old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);  /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void fl_ftz_end(unsigned int old) { _mm_setcsr(old); }
static inline unsigned int fl_mxcsr(void) { return _mm_getcsr(); }
#else
static inline unsigned int fl_ftz_begin(void) { return 0; }
static inline void fl_ftz_end(unsigned int old) { (void)old; }
static inline unsigned int fl_mxcsr(void) { return 0; }
#endif

/* Vectors of 64, 32 and 16 bytes; the _u variants load and store at element
 * alignment. */
typedef float fl_f64b __attribute__((vector_size(64)));
typedef float fl_f64b_u __attribute__((vector_size(64), aligned(4)));
typedef float fl_f32b __attribute__((vector_size(32)));
typedef float fl_f32b_u __attribute__((vector_size(32), aligned(4)));
typedef float fl_f16b __attribute__((vector_size(16)));
typedef float fl_f16b_u __attribute__((vector_size(16), aligned(4)));
typedef double fl_d64b __attribute__((vector_size(64)));
typedef double fl_d64b_u __attribute__((vector_size(64), aligned(8)));
typedef double fl_d32b __attribute__((vector_size(32)));
typedef double fl_d32b_u __attribute__((vector_size(32), aligned(8)));
typedef double fl_d16b __attribute__((vector_size(16)));
typedef double fl_d16b_u __attribute__((vector_size(16), aligned(8)));

/* Integer vectors of the same sizes, for comparisons and bit operations. */
typedef int fl_i64b __attribute__((vector_size(64)));
typedef int fl_i32b __attribute__((vector_size(32)));
typedef int fl_i16b __attribute__((vector_size(16)));
typedef long long fl_l64b __attribute__((vector_size(64)));
typedef long long fl_l32b __attribute__((vector_size(32)));
typedef long long fl_l16b __attribute__((vector_size(16)));

/* m ? a : b per element (m from a vector comparison: all bits set or clear). */
#define FL_SEL(IV, m, a, b) ((__typeof__(a))(((IV)(a) & (m)) | ((IV)(b) & ~(m))))

/* ------------------------------------------------------------------------
 * Activations, on whole vectors.  sigmoid(x) = 0.5 + 0.5*tanh(x/2), so one
 * tanh serves all gates.
 *
 * float: tanh is a rational function x*P(s)/Q(s), s = (x/9)^2, on x clamped
 * to [-9, 9] (tanh rounds to +-1 in float32 beyond): no calls, no branches.
 * The coefficients are a weighted least-squares fit (docs/fit_tanh.py).
 * With AVX-512 the division is a reciprocal estimate (VRCP14PS, 14 bits)
 * refined by one residual step, t = t0 + r*(a - q*t0), within an ulp of the
 * quotient and several times cheaper than VDIVPS, which bounded the gate
 * math.  Maximum absolute error over every float32 input: 3.4e-7 for tanh and
 * 1.8e-7 for sigmoid with FMA (AVX2, AVX-512), 3.8e-7 and 2.2e-7 without
 * (tests/test_kernels.py checks every level the CPU has); results stay
 * within [-1, 1].  NaN stays NaN; +-inf gives +-1.
 *
 * double: tanh(x) = sign(x) * (1 - 2 / (exp(2|x|) + 1)), |x| clamped to 20
 * (tanh rounds to 1 in double beyond 19.1).  exp(y) = 2^n * exp(r) with n =
 * round(y / ln 2), r = y - n ln 2 in two parts (|r| <= ln2/2), exp(r) by its
 * Taylor series to r^12 (truncation below 2e-16), and 2^n added to the
 * exponent bits; the rounding uses the 1.5 * 2^52 shift, so no float-to-int
 * conversion is needed.  Maximum absolute error of tanh and sigmoid over
 * double inputs: 4e-16 (tests/test_kernels.py).
 * ------------------------------------------------------------------------ */
/* Per level: a / q for float (with AVX-512 through a reciprocal estimate, see
 * above), and lo <= x <= hi clamps that keep a NaN x (x86 MIN/MAX return their
 * second operand when either is NaN, so x goes second). */
#if FL_X86
#include <immintrin.h>
FL_TGT_avx512 FL_INLINE fl_f64b fl_div_f_avx512(fl_f64b a, fl_f64b q)
{
    const __m512 r = _mm512_rcp14_ps((__m512)q);
    const __m512 t = _mm512_mul_ps((__m512)a, r);
    /* t - r*(q*t - a) rather than t + r*(a - q*t): the same value, and -0 stays -0. */
    return (fl_f64b)_mm512_fnmadd_ps(r, _mm512_fmsub_ps((__m512)q, t, (__m512)a), t);
}
#define FL_CLAMP_f_avx512(x, lo, hi) \
    ((fl_f64b)_mm512_min_ps((__m512)(hi), _mm512_max_ps((__m512)(lo), (__m512)(x))))
#define FL_CLAMP_f_avx2(x, lo, hi) \
    ((fl_f32b)_mm256_min_ps((__m256)(hi), _mm256_max_ps((__m256)(lo), (__m256)(x))))
#define FL_CLAMP_f_portable(x, lo, hi) \
    ((fl_f16b)_mm_min_ps((__m128)(hi), _mm_max_ps((__m128)(lo), (__m128)(x))))
#define FL_MIN_d_avx512(a, x) ((fl_d64b)_mm512_min_pd((__m512d)(a), (__m512d)(x)))
#define FL_MIN_d_avx2(a, x) ((fl_d32b)_mm256_min_pd((__m256d)(a), (__m256d)(x)))
#define FL_MIN_d_portable(a, x) ((fl_d16b)_mm_min_pd((__m128d)(a), (__m128d)(x)))
#else
FL_INLINE fl_f64b fl_div_f_avx512(fl_f64b a, fl_f64b q) { return a / q; }
#define FL_CLAMP_GENERIC(IV, x, lo, hi) \
    FL_SEL(IV, (x) > (hi), (hi), FL_SEL(IV, (x) < (lo), (lo), (x)))
#define FL_CLAMP_f_avx512(x, lo, hi) FL_CLAMP_GENERIC(fl_i64b, x, lo, hi)
#define FL_CLAMP_f_avx2(x, lo, hi) FL_CLAMP_GENERIC(fl_i32b, x, lo, hi)
#define FL_CLAMP_f_portable(x, lo, hi) FL_CLAMP_GENERIC(fl_i16b, x, lo, hi)
#define FL_MIN_d_avx512(a, x) FL_SEL(fl_l64b, (x) < (a), (x), (a))
#define FL_MIN_d_avx2(a, x) FL_SEL(fl_l32b, (x) < (a), (x), (a))
#define FL_MIN_d_portable(a, x) FL_SEL(fl_l16b, (x) < (a), (x), (a))
#endif
/* AVX2 keeps VDIVPS: a 12-bit VRCPPS needs a Newton step before the residual
 * step, which measured slower (docs/kernels.md). */
FL_TGT_avx2 FL_INLINE fl_f32b fl_div_f_avx2(fl_f32b a, fl_f32b q) { return a / q; }
FL_INLINE fl_f16b fl_div_f_portable(fl_f16b a, fl_f16b q) { return a / q; }

#define FL_DEFINE_ACT(ISA, VF, VD, IVD)                                             \
/* k*tanh(k*x) for k = 1 or 1/2: with k = 1/2 every constant is scaled by a         \
 * power of two, so the result is exactly half of tanh(x/2), one multiply less. */  \
FL_TGT_##ISA FL_INLINE VF fl_ktanh_f_##ISA(VF x, const float k)                     \
{                                                                                   \
    x = FL_CLAMP_f_##ISA(x, (VF){} - 9.0f / k, (VF){} + 9.0f / k);  /* NaN stays */ \
    const float k2 = k * k;                                                         \
    const VF s = (x * x) * ((1.0f / 81.0f) * k2);                                   \
    const VF p = k2 * 0.9999999403953552f + s * (k2 * 10.594123840332031f           \
               + s * (k2 * 20.33028221130371f + s * (k2 * 5.899973392486572f        \
               + s * (k2 * -0.8622098565101624f + s * (k2 * 0.18105918169021606f    \
               + s * (k2 * -0.02341737598180771f))))));                             \
    const VF q = 1.0f + s * (37.594112396240234f + s * (160.57240295410156f         \
               + s * 134.91180419921875f));                                         \
    /* The fit overshoots 1 by an ulp near the clamp: keep |tanh| <= 1, so that     \
     * sigmoid stays in [0, 1]. */                                                  \
    return FL_CLAMP_f_##ISA(fl_div_f_##ISA(x * p, q), (VF){} - k, (VF){} + k);      \
}                                                                                   \
FL_TGT_##ISA FL_INLINE VF fl_tanh_f_##ISA(VF x) { return fl_ktanh_f_##ISA(x, 1.0f); } \
FL_TGT_##ISA FL_INLINE VF fl_sigmoid_f_##ISA(VF x)                                  \
{                                                                                   \
    return 0.5f + fl_ktanh_f_##ISA(x, 0.5f);                                        \
}                                                                                   \
FL_TGT_##ISA FL_INLINE VD fl_tanh_d_##ISA(VD x)                                     \
{                                                                                   \
    const IVD sign = (IVD){} + (long long)0x8000000000000000ULL;                    \
    const VD a = (VD)((IVD)x & ~sign), lim = (VD){} + 20.0;                         \
    const VD y = 2.0 * FL_MIN_d_##ISA(lim, a);  /* NaN stays NaN (restored below) */ \
    const VD shift = (VD){} + 6755399441055744.0;  /* 1.5 * 2^52 */                 \
    const VD t = y * 1.4426950408889634 + shift;                                    \
    const VD n = t - shift;                                                         \
    const VD r = (y - n * 0.6931471803691238) - n * 1.9082149292705877e-10;         \
    VD p = (VD){} + 1.0 / 479001600.0;                                              \
    p = p * r + 1.0 / 39916800.0;                                                   \
    p = p * r + 1.0 / 3628800.0;                                                    \
    p = p * r + 1.0 / 362880.0;                                                     \
    p = p * r + 1.0 / 40320.0;                                                      \
    p = p * r + 1.0 / 5040.0;                                                       \
    p = p * r + 1.0 / 720.0;                                                        \
    p = p * r + 1.0 / 120.0;                                                        \
    p = p * r + 1.0 / 24.0;                                                         \
    p = p * r + 1.0 / 6.0;                                                          \
    p = p * r + 0.5;                                                                \
    p = p * r + 1.0;                                                                \
    p = p * r + 1.0;                                                                \
    const VD e = (VD)((IVD)p + ((IVD)t << 52));                                     \
    const VD m = 1.0 - 2.0 / (e + 1.0);                                             \
    /* sign(x) restored (tanh(-0) = -0); NaN passed through. */                     \
    return FL_SEL(IVD, x != x, x, (VD)((IVD)m | ((IVD)x & sign)));                  \
}                                                                                   \
FL_TGT_##ISA FL_INLINE VD fl_sigmoid_d_##ISA(VD x)                                  \
{                                                                                   \
    return 0.5 + 0.5 * fl_tanh_d_##ISA(0.5 * x);                                    \
}

FL_DEFINE_ACT(avx512, fl_f64b, fl_d64b, fl_l64b)
FL_DEFINE_ACT(avx2, fl_f32b, fl_d32b, fl_l32b)
FL_DEFINE_ACT(portable, fl_f16b, fl_d16b, fl_l16b)

/* The panels' layout (set once when the module is imported, from the CPU; the
 * packing in _module.py reads it through kernels.panel_strip): 0, each row of a
 * panel's K x PW block is contiguous (256 bytes); 1, a panel is 4 strips of 64
 * bytes of columns, each a contiguous K x 16 (float) or K x 8 (double) block.
 * An AVX-512 block reads a whole panel row, so its rows suit it; the AVX2 and
 * SSE blocks read one strip's 64 bytes of a row, so with strips they stream
 * contiguous memory where rows had them skip 192 of every 256 bytes
 * (docs/kernels.md has the measurements). */
static int fl_strips = 0;
static inline int fl_strip_width(int pw, size_t real_size)
{
    return fl_strips ? 64 / (int)real_size : pw;
}

/* ------------------------------------------------------------------------
 * One register block of a product: R rows by NV vectors of columns of one
 * panel's strip (row stride ldb: see the panel layout above), G = beta*G + A @ B.  R and NV are compile-time
 * constants so the accumulators stay in registers; the block is a function
 * of its own (noinline) because, inlined into the larger kernels, GCC spills
 * the weight vectors to the stack.
 * ------------------------------------------------------------------------ */
#define FL_DEFINE_BLOCK(REAL, V, VU, NAME, R, NV, TGT)                              \
TGT static __attribute__((noinline)) void NAME(int beta, int K, const REAL *A, ptrdiff_t lda, const REAL *B,   \
                    ptrdiff_t ldb, ptrdiff_t sstride, REAL *G, ptrdiff_t ldg)       \
{                                                                                   \
    const int W = (int)(sizeof(V) / sizeof(REAL));                                  \
    (void)sstride;  /* the block's columns lie in one strip */                      \
    V acc[R][NV];                                                                   \
    for (int r = 0; r < R; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                \
            acc[r][v] = beta ? *(const VU *)(G + r * ldg + v * W) : (V){0};         \
    for (int k = 0; k < K; k++) {                                                   \
        const REAL *bk = B + (ptrdiff_t)k * ldb;                                    \
        const V b0 = *(const VU *)bk;                                               \
        const V b1 = NV > 1 ? *(const VU *)(bk + W) : b0;                           \
        const V b2 = NV > 2 ? *(const VU *)(bk + 2 * W) : b0;                       \
        const V b3 = NV > 3 ? *(const VU *)(bk + 3 * W) : b0;                       \
        _Pragma("GCC unroll 8")                                                     \
        for (int r = 0; r < R; r++) {                                               \
            const REAL a = A[r * lda + k];                                          \
            acc[r][0] += a * b0;                                                    \
            if (NV > 1) acc[r][1 % NV] += a * b1;                                   \
            if (NV > 2) acc[r][2 % NV] += a * b2;                                   \
            if (NV > 3) acc[r][3 % NV] += a * b3;                                   \
        }                                                                           \
    }                                                                               \
    for (int r = 0; r < R; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                \
            *(VU *)(G + r * ldg + v * W) = acc[r][v];                               \
}

/* One row by NV vectors (up to a whole panel), G = beta*G + a @ B: each vector's
 * sum is a chain of dependent FMAs, so a single row needs as many vectors as the
 * FMA latency times the FMA units (AVX2: 4 x 2) to keep them busy; with 4 the
 * one-row products ran at half that rate (docs/kernels.md).  Its columns may span
 * strips (ldb columns each, sstride apart). */
#define FL_DEFINE_ROW(REAL, V, VU, NAME, NV, TGT)                                   \
TGT static __attribute__((noinline)) void NAME(int beta, int K, const REAL *A, ptrdiff_t lda, const REAL *B,   \
                    ptrdiff_t ldb, ptrdiff_t sstride, REAL *G, ptrdiff_t ldg)       \
{                                                                                   \
    const int W = (int)(sizeof(V) / sizeof(REAL));                                  \
    (void)lda;                                                                      \
    (void)ldg;                                                                      \
    V acc[NV];                                                                      \
    const REAL *bv[NV];                                                             \
    for (int v = 0; v < NV; v++) {                                                  \
        acc[v] = beta ? *(const VU *)(G + v * W) : (V){0};                          \
        bv[v] = B + (v * W / ldb) * sstride + v * W % ldb;                          \
    }                                                                               \
    for (int k = 0; k < K; k++) {                                                   \
        const REAL a = A[k];                                                        \
        _Pragma("GCC unroll 8")                                                     \
        for (int v = 0; v < NV; v++)                                                \
            acc[v] += a * *(const VU *)(bv[v] + (ptrdiff_t)k * ldb);                \
    }                                                                               \
    for (int v = 0; v < NV; v++)                                                    \
        *(VU *)(G + v * W) = acc[v];                                                \
}

/* ------------------------------------------------------------------------
 * Kernels of one (type, level) pair.  Rows go in blocks of RB (NVB vectors of
 * columns per block), the rest in blocks of RM (NVM vectors) and single rows
 * (NV1 vectors), so that a batch that is not a multiple of RB keeps most of
 * its rows in wide blocks.
 * ------------------------------------------------------------------------ */
#define FL_DEFINE_LEVEL(REAL, S, ISA, V, VU, RB, NVB, RM, NVM, NV1)                 \
enum { fl_pw_##S##_##ISA = FL_PANEL_BYTES / (int)sizeof(REAL) };                    \
FL_DEFINE_BLOCK(REAL, V, VU, fl_blk_##S##_##ISA, RB, NVB, FL_TGT_##ISA)            \
FL_DEFINE_BLOCK(REAL, V, VU, fl_blkm_##S##_##ISA, RM, NVM, FL_TGT_##ISA)           \
FL_DEFINE_ROW(REAL, V, VU, fl_blk1_##S##_##ISA, NV1, FL_TGT_##ISA)                 \
                                                                                    \
/* The rows of the next block when `left` rows remain: RB, except that the last     \
 * RB plus a tail of fewer than RM rows go as RM blocks when that leaves fewer       \
 * single rows (at RB = 6, RM = 4: 20 rows go 6, 6, 4, 4 and 7 go 6, 1). */         \
FL_INLINE int fl_block_rows_##S##_##ISA(int left)                                   \
{                                                                                   \
    const int tail = left % RB;                                                     \
    if (left >= RB && !(left < 2 * RB && tail > 0 && tail < RM && left >= 2 * RM))  \
        return RB;                                                                  \
    return left >= RM ? RM : 1;                                                     \
}                                                                                   \
                                                                                    \
/* R rows (RB, RM or 1) by one whole panel (PW columns) over the K slice [k0,      \
 * k0 + kb) of the panel at Pp (K rows in all, strips of SW columns); G has row     \
 * stride ldg. */                                                                   \
FL_INLINE void fl_rows_panel_##S##_##ISA(int R, int beta, int kb, const REAL *A,    \
        ptrdiff_t lda, const REAL *Pp, int K, int k0, int SW, REAL *G, ptrdiff_t ldg) \
{                                                                                   \
    const int PW = fl_pw_##S##_##ISA, W = (int)(sizeof(V) / sizeof(REAL));          \
    const int cols = (R == RB ? NVB : R == RM ? NVM : NV1) * W;                     \
    const ptrdiff_t sstride = (ptrdiff_t)SW * K;                                    \
    for (int j = 0; j < PW; j += cols) {                                            \
        const REAL *b = Pp + (j / SW) * sstride + (ptrdiff_t)k0 * SW + j % SW;      \
        if (R == RB)                                                                \
            fl_blk_##S##_##ISA(beta, kb, A, lda, b, SW, sstride, G + j, ldg);       \
        else if (R == RM)                                                           \
            fl_blkm_##S##_##ISA(beta, kb, A, lda, b, SW, sstride, G + j, ldg);      \
        else                                                                        \
            fl_blk1_##S##_##ISA(beta, kb, A, lda, b, SW, sstride, G + j, ldg);      \
    }                                                                               \
}                                                                                   \
                                                                                    \
/* As above for the first `width` < PW columns only, through a buffer. */           \
FL_INLINE void fl_rows_part_##S##_##ISA(int R, int beta, int kb, const REAL *A,     \
        ptrdiff_t lda, const REAL *Pp, int K, int k0, int SW, REAL *G, ptrdiff_t ldg, \
        int width)                                                                  \
{                                                                                   \
    const int PW = fl_pw_##S##_##ISA;                                               \
    REAL tmp[RB * fl_pw_##S##_##ISA];  /* R <= RB */                                \
    for (int r = 0; r < R; r++)                                                     \
        for (int j = 0; j < PW; j++)                                                \
            tmp[r * PW + j] = (beta && j < width) ? G[r * ldg + j] : (REAL)0;       \
    fl_rows_panel_##S##_##ISA(R, 1, kb, A, lda, Pp, K, k0, SW, tmp, PW);            \
    for (int r = 0; r < R; r++)                                                     \
        for (int j = 0; j < width; j++)                                             \
            G[r * ldg + j] = tmp[r * PW + j];                                       \
}                                                                                   \
                                                                                    \
/* G (M x N) = beta*G + A (M x K) @ B (K x N), B packed in panels.  Blocked         \
 * like a GEMM: K in slices of FL_KC (a panel's slice, FL_KC x PW, stays in         \
 * L1/L2 while every row block of a chunk uses it), rows in chunks of FL_MC         \
 * (the chunk's A slice stays in L2 across all panels). */                          \
FL_TGT_##ISA static void fl_matmul_##S##_##ISA(int beta, int M, int N, int K,       \
        const REAL *A, ptrdiff_t lda, const REAL *BP, REAL *G, ptrdiff_t ldg)       \
{                                                                                   \
    const int PW = fl_pw_##S##_##ISA, SW = fl_strip_width(PW, sizeof(REAL));        \
    const int n_panels = (N + PW - 1) / PW;                                         \
    const int KC = !fl_strips ? FL_KC : M >= FL_KC_WHOLE_ROWS ? FL_KC_STRIPS_PROJ \
                                                            : FL_KC_STRIPS_MM;     \
    int k0 = 0;                                                                     \
    do {                                                                            \
        const int kb = K - k0 < KC ? K - k0 : KC;                                   \
        const int b = beta || k0 > 0;                                               \
        for (int m_lo = 0; m_lo < M; m_lo += FL_MC) {                               \
            const int m_hi = M - m_lo < FL_MC ? M : m_lo + FL_MC;                   \
            for (int p = 0; p < n_panels; p++) {                                    \
                const REAL *P = BP + (ptrdiff_t)p * K * PW;                         \
                const int width = N - p * PW < PW ? N - p * PW : PW;                \
                for (int m = m_lo; m < m_hi; ) {                                    \
                    const int R = fl_block_rows_##S##_##ISA(m_hi - m);              \
                    const REAL *a = A + m * lda + k0;                               \
                    REAL *g = G + m * ldg + p * PW;                                 \
                    if (width == PW)                                                \
                        fl_rows_panel_##S##_##ISA(R, b, kb, a, lda, P, K, k0, SW, g, ldg); \
                    else                                                            \
                        fl_rows_part_##S##_##ISA(R, b, kb, a, lda, P, K, k0, SW, g, ldg, \
                                                 width);                            \
                    m += R;                                                         \
                }                                                                   \
            }                                                                       \
        }                                                                           \
        k0 += KC;                                                                   \
    } while (k0 < K);                                                               \
}                                                                                   \
                                                                                    \
/* Gate math for the U units of one row of a panel: g holds the interleaved         \
 * pre-activations [i(U) f(U) g(U) o(U)], b the bias alike; c (U) is updated        \
 * in place and h (U) written. */                                                   \
FL_TGT_##ISA FL_INLINE void fl_gates_##S##_##ISA(const REAL *g, const REAL *b, REAL *c, REAL *h) \
{                                                                                   \
    enum { U = fl_pw_##S##_##ISA / 4, W = (int)(sizeof(V) / sizeof(REAL)) };        \
    for (int j = 0; j < U; j += W) {                                                \
        const V zi = *(const VU *)(g + j) + *(const VU *)(b + j);                   \
        const V zf = *(const VU *)(g + U + j) + *(const VU *)(b + U + j);           \
        const V zg = *(const VU *)(g + 2 * U + j) + *(const VU *)(b + 2 * U + j);   \
        const V zo = *(const VU *)(g + 3 * U + j) + *(const VU *)(b + 3 * U + j);   \
        const V i_t = fl_sigmoid_##S##_##ISA(zi);                                   \
        const V f_t = fl_sigmoid_##S##_##ISA(zf);                                   \
        const V g_t = fl_tanh_##S##_##ISA(zg);                                      \
        const V o_t = fl_sigmoid_##S##_##ISA(zo);                                   \
        const V c_t = f_t * *(const VU *)(c + j) + i_t * g_t;                       \
        *(VU *)(c + j) = c_t;                                                       \
        *(VU *)(h + j) = o_t * fl_tanh_##S##_##ISA(c_t);                            \
    }                                                                               \
}                                                                                   \
/* The same for the first n < U units (the last panel of a hidden size that is      \
 * not a multiple of U), through buffers: g and b always hold whole panels. */      \
FL_TGT_##ISA FL_INLINE void fl_gates_part_##S##_##ISA(const REAL *g, const REAL *b, REAL *c,     \
                                         REAL *h, int n)                            \
{                                                                                   \
    enum { U = fl_pw_##S##_##ISA / 4 };                                             \
    REAL cb[U], hb[U];                                                              \
    for (int u = 0; u < U; u++)                                                     \
        cb[u] = u < n ? c[u] : (REAL)0;                                             \
    fl_gates_##S##_##ISA(g, b, cb, hb);                                             \
    for (int u = 0; u < n; u++) {                                                   \
        c[u] = cb[u];                                                               \
        h[u] = hb[u];                                                               \
    }                                                                               \
}                                                                                   \
                                                                                    \
/* One timestep for M rows and the hidden units of panels [p_lo, p_hi):             \
 * G (gates, interleaved, holding the input projection) += A (h_{t-1}, M x K)       \
 * @ W_hh^T, then the gate math straight after each panel's product: c (M x H,      \
 * row stride ldc) is updated in place and h (row stride ldh) written.  With        \
 * `reverse` the panels run last to first. */                                       \
FL_TGT_##ISA static void fl_lstm_step_##S##_##ISA(int M, int K, int H,              \
        const REAL *A, ptrdiff_t lda, const REAL *BP, REAL *G, ptrdiff_t ldg,       \
        const REAL *bias, REAL *C, ptrdiff_t ldc, REAL *Hout, ptrdiff_t ldh,        \
        int p_lo, int p_hi, int reverse)                                            \
{                                                                                   \
    enum { PW = fl_pw_##S##_##ISA, U = fl_pw_##S##_##ISA / 4 };                     \
    const int SW = fl_strip_width(PW, sizeof(REAL));                                \
    const int KC = fl_strips ? FL_KC_STRIPS : FL_KC;                                \
    for (int i = p_lo; i < p_hi; i++) {                                             \
        const int p = reverse ? p_hi - 1 - (i - p_lo) : i;                          \
        const REAL *P = BP + (ptrdiff_t)p * K * PW;                                 \
        const int n = H - p * U < U ? H - p * U : U;                                \
        for (int k0 = 0; k0 < K; k0 += KC) {                                        \
            const int kb = K - k0 < KC ? K - k0 : KC;                               \
            for (int m = 0; m < M; ) {                                              \
                const int R = fl_block_rows_##S##_##ISA(M - m);                     \
                fl_rows_panel_##S##_##ISA(R, 1, kb, A + m * lda + k0, lda, P, K, k0, \
                                          SW, G + m * ldg + p * PW, ldg);           \
                m += R;                                                             \
            }                                                                       \
        }                                                                           \
        for (int m = 0; m < M; m++) {                                               \
            const REAL *g = G + m * ldg + p * PW, *b = bias + p * PW;               \
            if (n == U)                                                             \
                fl_gates_##S##_##ISA(g, b, C + m * ldc + p * U, Hout + m * ldh + p * U); \
            else                                                                    \
                fl_gates_part_##S##_##ISA(g, b, C + m * ldc + p * U,                \
                                          Hout + m * ldh + p * U, n);               \
        }                                                                           \
    }                                                                               \
}                                                                                   \
                                                                                    \
/* Elementwise tanh or sigmoid through the kernels' own code, for the tests. */     \
FL_TGT_##ISA static void fl_act_##S##_##ISA(ptrdiff_t n, const REAL *x, REAL *y,    \
                                            int sigmoid)                            \
{                                                                                   \
    enum { W = (int)(sizeof(V) / sizeof(REAL)) };                                   \
    for (ptrdiff_t j = 0; j < n; j += W) {                                          \
        REAL buf[W];                                                                \
        for (int k = 0; k < W; k++)                                                 \
            buf[k] = j + k < n ? x[j + k] : (REAL)0;                                \
        V v = *(const VU *)buf;                                                     \
        v = sigmoid ? fl_sigmoid_##S##_##ISA(v) : fl_tanh_##S##_##ISA(v);           \
        *(VU *)buf = v;                                                             \
        for (int k = 0; k < W && j + k < n; k++)                                    \
            y[j + k] = buf[k];                                                      \
    }                                                                               \
}

/* Block shapes per level: AVX-512 has 32 vector registers, AVX2 and SSE 16.  A single
 * row takes a whole panel (AVX-512: 4 vectors; AVX2 and SSE: 8 of their 16 registers). */
#ifndef FL_F512_SHAPE
#define FL_F512_SHAPE 6, 4, 4, 4
#endif
#define FL_DEFINE_LEVEL_X(...) FL_DEFINE_LEVEL(__VA_ARGS__)
FL_DEFINE_LEVEL_X(float, f, avx512, fl_f64b, fl_f64b_u, FL_F512_SHAPE, 4)
#ifndef FL_F256_SHAPE
#define FL_F256_SHAPE 6, 2, 4, 2
#endif
FL_DEFINE_LEVEL_X(float, f, avx2, fl_f32b, fl_f32b_u, FL_F256_SHAPE, 8)
FL_DEFINE_LEVEL(float, f, portable, fl_f16b, fl_f16b_u, 4, 2, 4, 2, 8)
#ifndef FL_D512_SHAPE
#define FL_D512_SHAPE 4, 4, 4, 4
#endif
FL_DEFINE_LEVEL_X(double, d, avx512, fl_d64b, fl_d64b_u, FL_D512_SHAPE, 4)
FL_DEFINE_LEVEL(double, d, avx2, fl_d32b, fl_d32b_u, 4, 2, 4, 2, 8)
FL_DEFINE_LEVEL(double, d, portable, fl_d16b, fl_d16b_u, 4, 2, 4, 2, 8)

/* Dispatch on the level chosen at run time. */
#define FL_DISPATCH(LEVEL, NAME, S, ARGS)                                           \
    do {                                                                            \
        if ((LEVEL) == FL_AVX512) NAME##_##S##_avx512 ARGS;                         \
        else if ((LEVEL) == FL_AVX2) NAME##_##S##_avx2 ARGS;                        \
        else NAME##_##S##_portable ARGS;                                            \
    } while (0)

#define FL_DEFINE_DISPATCH(REAL, S)                                                 \
static void fl_matmul_##S(int level, int beta, int M, int N, int K, const REAL *A,  \
                          ptrdiff_t lda, const REAL *BP, REAL *G, ptrdiff_t ldg)    \
{                                                                                   \
    FL_DISPATCH(level, fl_matmul, S, (beta, M, N, K, A, lda, BP, G, ldg));          \
}                                                                                   \
static void fl_lstm_step_##S(int level, int M, int K, int H, const REAL *A,         \
        ptrdiff_t lda, const REAL *BP, REAL *G, ptrdiff_t ldg, const REAL *bias,    \
        REAL *C, ptrdiff_t ldc, REAL *Hout, ptrdiff_t ldh, int p_lo, int p_hi,      \
        int reverse)                                                                \
{                                                                                   \
    FL_DISPATCH(level, fl_lstm_step, S, (M, K, H, A, lda, BP, G, ldg, bias, C, ldc, \
                                         Hout, ldh, p_lo, p_hi, reverse));          \
}                                                                                   \
static void fl_act_##S(int level, ptrdiff_t n, const REAL *x, REAL *y, int sigmoid) \
{                                                                                   \
    FL_DISPATCH(level, fl_act, S, (n, x, y, sigmoid));                              \
}

FL_DEFINE_DISPATCH(float, f)
FL_DEFINE_DISPATCH(double, d)

#endif
