/* Products with bfloat16 weights (docs/precision.md has the semantics).
 *
 * G (M x N) = beta*G + bf16(A) (M x K) @ B (K x N) with B in bfloat16, packed
 * like the float32 panels (64 columns, 256 bytes a row of a panel) but by
 * pairs of rows: row kk of panel p holds, for each of its 64 columns j, the
 * 32-bit pair (B[2kk][j] in the low half, B[2kk+1][j] in the high half), K
 * padded to even with a zero row.  A (float32) is rounded to bfloat16 (to
 * nearest, ties to even; NaN stays NaN) as it is read, so every product is of
 * two bfloat16 numbers, exact in float32, and the sums are float32: the
 * semantics of VDPBF16PS and of AMX-BF16, which the levels that have them use
 * (the levels differ only in the order the float32 sums are rounded).
 *
 * Levels: the float32 levels of kernels.h (portable, AVX2, AVX-512) widen the
 * weights with shifts and use FMA; FL_BF16_DP (AVX512-BF16) uses VDPBF16PS,
 * two products per lane per instruction.
 */
#ifndef FASTLSTM_BF16_H
#define FASTLSTM_BF16_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernels.h"

/* Levels above FL_AVX512: AVX512-BF16 (VDPBF16PS), and AMX-BF16 tiles for blocks of
 * 16 rows (with VDPBF16PS for the rest). */
enum { FL_BF16_DP = 3, FL_BF16_AMX = 4 };

#if FL_X86
#define FL_TGT_amx __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,amx-tile,amx-bf16")))
#define FL_TGT_avx512bf16 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")))
#include <immintrin.h>
#endif

/* Integer vectors loaded at element alignment (the packed weights are NumPy's). */
typedef int fl_i64b_u __attribute__((vector_size(64), aligned(4)));
typedef int fl_i32b_u __attribute__((vector_size(32), aligned(4)));
typedef int fl_i16b_u __attribute__((vector_size(16), aligned(4)));

/* Bit `bit` of register `reg` (0 EAX, 1 EBX, 2 ECX, 3 EDX) of CPUID leaf 7, subleaf
 * `subleaf`: where the AVX-512 extensions, AVX-VNNI and AMX are reported. */
static int fl_cpuid7_bit(unsigned int subleaf, int reg, int bit)
{
#if FL_X86
    unsigned int r[4];
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                     : "a"(7), "c"(subleaf));
    return (r[reg] >> bit) & 1;
#else
    (void)subleaf; (void)reg; (void)bit;
    return 0;
#endif
}

/* Whether this CPU has AVX512-BF16 (leaf 7.1 EAX bit 5; with the AVX-512 level's features). */
static int fl_cpu_has_avx512bf16(void)
{
    return fl_cpu_level() >= FL_AVX512 && fl_cpuid7_bit(1, 0, 5);
}

/* Whether this CPU and OS let the process use AMX tiles with the unit at CPUID leaf 7
 * EDX bit `unit` (22: AMX-BF16, 25: AMX-INT8): CPUID says AMX-TILE and the unit, the OS
 * enabled the tile state (XCR0 bits 17 and 18), and Linux granted the process the tile
 * data (arch_prctl ARCH_REQ_XCOMP_PERM; asking again is harmless). */
#if FL_X86 && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
static int fl_cpu_has_amx(int unit)
{
#if FL_X86 && defined(__linux__)
    unsigned int xcr0_lo, xcr0_hi;
    if (!fl_cpuid7_bit(0, 3, unit) || !fl_cpuid7_bit(0, 3, 24))
        return 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if (((xcr0_lo >> 17) & 3) != 3)
        return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                   18 /* XFEATURE_XTILEDATA */) == 0;
#else
    (void)unit;
    return 0;
#endif
}

/* AMX-BF16 tiles, with AVX512-BF16 for what the tiles leave. */
static int fl_cpu_has_amx_bf16(void)
{
    return fl_cpu_has_avx512bf16() && fl_cpu_has_amx(22);
}

/* float32 -> bfloat16 bits, to nearest with ties to even; a NaN stays a (quiet) NaN. */
static inline uint32_t fl_bf16_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline float fl_bits_float(uint32_t u)
{
    float y;
    memcpy(&y, &u, sizeof y);
    return y;
}

/* A (M x K, row stride lda) rounded to bfloat16, by pairs of columns: word kk of row m
 * holds A[m][2kk] in its low half and A[m][2kk+1] (0 past K) in its high half.  Done
 * once per product, so that the inner loops only read the words.  NULL when out of
 * memory (the caller then computes nothing and reports it). */
static void fl_bf16_pairs_into(int M, int K, const float *A, ptrdiff_t lda, uint32_t *out,
                               ptrdiff_t ldo)
{
    const int kp = (K + 1) / 2;
    for (int m = 0; m < M; m++)
        for (int kk = 0; kk < kp; kk++) {
            const uint32_t lo = fl_bf16_bits(A[m * lda + 2 * kk]);
            const uint32_t hi = 2 * kk + 1 < K ? fl_bf16_bits(A[m * lda + 2 * kk + 1]) : 0u;
            out[(ptrdiff_t)m * ldo + kk] = lo | hi << 16;
        }
}

/* The same, 32 values (16 pairs) at a time where the row has them: the rounding above
 * on whole vectors, then the even and odd values of each pair put together. */
typedef unsigned int fl_u64b __attribute__((vector_size(64)));
typedef unsigned int fl_u64b_u __attribute__((vector_size(64), aligned(4)));
#define FL_DEFINE_BF_PAIRS(ISA)                                                     \
FL_TGT_##ISA static void fl_bf16_pairs_##ISA(int M, int K, const float *A, ptrdiff_t lda, \
                                             uint32_t *out, ptrdiff_t ldo)          \
{                                                                                   \
    const int kp = (K + 1) / 2, full = K / 32;                                      \
    for (int m = 0; m < M; m++) {                                                   \
        const float *a = A + m * lda;                                               \
        uint32_t *o = out + (ptrdiff_t)m * ldo;                                     \
        for (int b = 0; b < full; b++) {                                            \
            fl_u64b r[2];                                                           \
            for (int h = 0; h < 2; h++) {                                           \
                const fl_u64b u = *(const fl_u64b_u *)(a + 32 * b + 16 * h);        \
                const fl_u64b near = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;        \
                const fl_u64b nan = (u >> 16) | 0x40u;                              \
                const fl_u64b is_nan = (fl_u64b)((u & 0x7fffffffu) > 0x7f800000u);  \
                r[h] = (nan & is_nan) | (near & ~is_nan);                           \
            }                                                                       \
            const fl_u64b even = __builtin_shufflevector(r[0], r[1], 0, 2, 4, 6, 8, 10, \
                12, 14, 16, 18, 20, 22, 24, 26, 28, 30);                            \
            const fl_u64b odd = __builtin_shufflevector(r[0], r[1], 1, 3, 5, 7, 9, 11,  \
                13, 15, 17, 19, 21, 23, 25, 27, 29, 31);                            \
            *(fl_u64b_u *)(o + 16 * b) = even | (odd << 16);                        \
        }                                                                           \
        if (full * 16 < kp)                                                         \
            fl_bf16_pairs_into(1, K - 32 * full, a + 32 * full, lda,                \
                               o + 16 * full, ldo);                                 \
    }                                                                               \
}
FL_DEFINE_BF_PAIRS(avx512)
FL_DEFINE_BF_PAIRS(avx2)
FL_DEFINE_BF_PAIRS(portable)

/* A (M x K) rounded into pairs at `out` (row stride ldo words), at the vector width of
 * `level` (the rounding is the same at every level). */
static void fl_bf16_pairs_to(int level, int M, int K, const float *A, ptrdiff_t lda,
                             uint32_t *out, ptrdiff_t ldo)
{
    if (level >= FL_AVX512)
        fl_bf16_pairs_avx512(M, K, A, lda, out, ldo);
    else if (level == FL_AVX2)
        fl_bf16_pairs_avx2(M, K, A, lda, out, ldo);
    else
        fl_bf16_pairs_portable(M, K, A, lda, out, ldo);
}

/* The row stride, in words, of the pairs fl_bf16_pairs writes: whole cache lines, so
 * that every row starts on one (with the buffer) and an AMX tile row, 64 bytes, is one
 * line: rows that straddle two made the products 1.5x slower (docs/precision.md). */
static inline ptrdiff_t fl_bf16_ld(int K)
{
    return (((ptrdiff_t)K + 1) / 2 + 15) & ~(ptrdiff_t)15;
}

/* The rounding is the same at every level; `level` only picks the vector width.  The
 * buffer starts on a cache line, rows fl_bf16_ld(K) words apart (free() releases it). */
static uint32_t *fl_bf16_pairs(int level, int M, int K, const float *A, ptrdiff_t lda)
{
    const ptrdiff_t ld = fl_bf16_ld(K);
    uint32_t *out = (uint32_t *)aligned_alloc(64, (size_t)(M > 0 ? M : 1) * (size_t)ld * 4
                                              + (ld > 0 ? 0 : 64));
    if (out == NULL)
        return NULL;
    fl_bf16_pairs_to(level, M, K, A, lda, out, ld);
    return out;
}

/* One register block: R rows by NV vectors of one panel's columns; Ap holds the
 * rows' bfloat16 pairs (fl_bf16_pairs, row stride ldp words), or with AF the same
 * values as floats (fl_bf16_expand, row stride ldp floats).  Reading a pair's two
 * halves took a scalar shift, a mask and two moves and broadcasts a row: with
 * AVX2 the block ran at half the float32 block's rate, and 1.6x faster on floats
 * (docs/precision.md). */
#define FL_DEFINE_BF_BLOCK(V, VU, IV, IVU, NAME, R, NV, TGT, AF)                    \
TGT static __attribute__((noinline)) void NAME(int beta, int K, const void *Ap,      \
        ptrdiff_t ldp, const uint32_t *B, float *G, ptrdiff_t ldg)                  \
{                                                                                   \
    enum { W = (int)(sizeof(V) / sizeof(float)) };                                  \
    const IV hi = (IV){0} + (int)0xffff0000u;                                       \
    V acc[R][NV];                                                                   \
    for (int r = 0; r < R; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                \
            acc[r][v] = beta ? *(const VU *)(G + r * ldg + v * W) : (V){0};         \
    for (int k = 0; k < K; k += 2) {                                                \
        const uint32_t *bk = B + (ptrdiff_t)(k / 2) * 64;                           \
        V be[NV], bo[NV];                                                           \
        for (int v = 0; v < NV; v++) {                                              \
            const IV l = *(const IVU *)(bk + v * W);                                \
            be[v] = (V)(l << 16);                                                   \
            bo[v] = (V)(l & hi);                                                    \
        }                                                                           \
        for (int r = 0; r < R; r++) {                                               \
            float a0, a1;                                                           \
            if (AF) {  /* fl_bf16_expand's floats: broadcast from memory */         \
                a0 = ((const float *)Ap)[r * ldp + k];                              \
                a1 = ((const float *)Ap)[r * ldp + k + 1];                          \
            } else {                                                                \
                const uint32_t w = ((const uint32_t *)Ap)[r * ldp + k / 2];         \
                a0 = fl_bits_float(w << 16);                                        \
                a1 = fl_bits_float(w & 0xffff0000u);                                \
            }                                                                       \
            /* One sum at a time, as VDPBF16PS: each becomes an FMA (the products   \
             * are exact); the two products summed first took 3 operations. */      \
            for (int v = 0; v < NV; v++)                                            \
                acc[r][v] = (acc[r][v] + a0 * be[v]) + a1 * bo[v];                  \
        }                                                                           \
    }                                                                               \
    for (int r = 0; r < R; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                \
            *(VU *)(G + r * ldg + v * W) = acc[r][v];                               \
}

/* One row by NV vectors (up to a whole panel), the same sums in the same order as
 * the block above: a row's sums are chains of dependent FMAs, two per pair, so it
 * takes many vectors to keep the FMA units busy (kernels.h's one-row block).  The
 * row's pairs are first split into two float arrays on the stack (even and odd
 * values, a slice at a time), so that the pair loop broadcasts from memory instead
 * of taking each pair apart in scalar registers, and the loop takes two pairs per
 * pass: 8-10% faster on an AMD EPYC Zen 3 (docs/precision.md). */
#define FL_BF_ROW_SLICE 256
#define FL_DEFINE_BF_ROW(V, VU, IV, IVU, NAME, NV, TGT)                             \
TGT static __attribute__((noinline)) void NAME(int beta, int K, const uint32_t *Ap,  \
        ptrdiff_t ldp, const uint32_t *B, float *G, ptrdiff_t ldg)                  \
{                                                                                   \
    enum { W = (int)(sizeof(V) / sizeof(float)) };                                  \
    const IV hi = (IV){0} + (int)0xffff0000u;                                       \
    float ev[FL_BF_ROW_SLICE] __attribute__((aligned(64)));                         \
    float od[FL_BF_ROW_SLICE] __attribute__((aligned(64)));                         \
    const int kp = (K + 1) / 2;                                                     \
    (void)ldp;                                                                      \
    (void)ldg;                                                                      \
    V acc[NV];                                                                      \
    for (int v = 0; v < NV; v++)                                                    \
        acc[v] = beta ? *(const VU *)(G + v * W) : (V){0};                          \
    for (int k0 = 0; k0 < kp; k0 += FL_BF_ROW_SLICE) {                              \
        const int n = kp - k0 < FL_BF_ROW_SLICE ? kp - k0 : FL_BF_ROW_SLICE;        \
        int i = 0;                                                                  \
        for (; i + W <= n; i += W) {                                                \
            const IV l = *(const IVU *)(Ap + k0 + i);                               \
            *(V *)(ev + i) = (V)(l << 16);                                          \
            *(V *)(od + i) = (V)(l & hi);                                           \
        }                                                                           \
        for (; i < n; i++) {                                                        \
            ev[i] = fl_bits_float(Ap[k0 + i] << 16);                                \
            od[i] = fl_bits_float(Ap[k0 + i] & 0xffff0000u);                        \
        }                                                                           \
        const uint32_t *b = B + (ptrdiff_t)k0 * 64;                                 \
        int kk = 0;                                                                 \
        for (; kk + 1 < n; kk += 2) {                                               \
            const uint32_t *bk = b + (ptrdiff_t)kk * 64;                            \
            const float a0 = ev[kk], a1 = od[kk], a2 = ev[kk + 1], a3 = od[kk + 1]; \
            _Pragma("GCC unroll 8")                                                 \
            for (int v = 0; v < NV; v++) {                                          \
                const IV l = *(const IVU *)(bk + v * W);                            \
                acc[v] = (acc[v] + a0 * (V)(l << 16)) + a1 * (V)(l & hi);           \
            }                                                                       \
            _Pragma("GCC unroll 8")                                                 \
            for (int v = 0; v < NV; v++) {                                          \
                const IV l = *(const IVU *)(bk + 64 + v * W);                       \
                acc[v] = (acc[v] + a2 * (V)(l << 16)) + a3 * (V)(l & hi);           \
            }                                                                       \
        }                                                                           \
        if (kk < n) {                                                               \
            const uint32_t *bk = b + (ptrdiff_t)kk * 64;                            \
            const float a0 = ev[kk], a1 = od[kk];                                   \
            _Pragma("GCC unroll 8")                                                 \
            for (int v = 0; v < NV; v++) {                                          \
                const IV l = *(const IVU *)(bk + v * W);                            \
                acc[v] = (acc[v] + a0 * (V)(l << 16)) + a1 * (V)(l & hi);           \
            }                                                                       \
        }                                                                           \
    }                                                                               \
    for (int v = 0; v < NV; v++)                                                    \
        *(VU *)(G + v * W) = acc[v];                                                \
}

/* Pairs (fl_bf16_pairs, row stride lda words) as float32 rows: value k of row m is
 * the bfloat16 value of A[m][k], exactly, and 0 past K (row stride *ldf floats, whole
 * cache lines), in `buf` (FL_BF_EXPAND_BUF floats, on a cache line) when they fit, so
 * that a step of a small batch allocates nothing, else on the heap (the caller frees
 * what is not `buf`).  NULL when out of memory (the caller then reads the pairs). */
#define FL_BF_EXPAND_BUF 4096
static int fl_bf16_expand_on = 1;  /* 0: as if out of memory (tests of the pairs' path) */
static float *fl_bf16_expand(int M, int K, const uint32_t *A, ptrdiff_t lda, ptrdiff_t *ldf,
                             float *buf)
{
    const int kp = (K + 1) / 2;
    if (!fl_bf16_expand_on)
        return NULL;
    const ptrdiff_t ld = ((ptrdiff_t)2 * kp + 15) & ~(ptrdiff_t)15;
    const size_t n = (size_t)(M > 0 ? M : 1) * (size_t)(ld > 0 ? ld : 16);
    float *out = n <= FL_BF_EXPAND_BUF ? buf : (float *)aligned_alloc(64, n * 4);
    if (out == NULL)
        return NULL;
    for (int m = 0; m < M; m++)
        for (int kk = 0; kk < kp; kk++) {
            const uint32_t w = A[(ptrdiff_t)m * lda + kk];
            out[(ptrdiff_t)m * ld + 2 * kk] = fl_bits_float(w << 16);
            out[(ptrdiff_t)m * ld + 2 * kk + 1] = fl_bits_float(w & 0xffff0000u);
        }
    *ldf = ld;
    return out;
}

/* Products of FL_BF_WIDEN_ROWS rows or more at the AVX2 level (rows as floats, Af):
 * each K slice of panel P (FL_KC rows, 32 KiB) is widened to float32 once, on the
 * stack, and every row goes through the float32 kernels' own blocks, which spend no
 * operation on widening and keep 12 sums in flight where the bfloat16 block, holding
 * the widened weights in registers too, keeps 8.  Each k in turn, one FMA a product:
 * the bfloat16 block's sums in its order, so the same bits.  On an AMD EPYC Zen 5 held
 * at AVX2 (one core, C harness): 32 rows 1.10x, 64 rows 1.17x, 256 rows 1.20x the
 * bfloat16 block; 16 rows 1.02x, so fewer stay with it.  At AVX-512 the bfloat16
 * block is already as fast as float32's (docs/precision.md). */
#define FL_BF_WIDEN_ROWS 32
FL_TGT_avx2 static void fl_bf_widened_avx2(int beta, int M, int K, const float *Af,
        ptrdiff_t ldf, const uint32_t *P, float *G, ptrdiff_t ldg, int width)
{
    enum { KS = FL_KC / 2 };  /* pairs of rows per slice */
    float wb[2 * KS * 64] __attribute__((aligned(64)));
    const int kp = (K + 1) / 2;
    const fl_i32b hi = (fl_i32b){0} + (int)0xffff0000u;
    for (int q0 = 0; q0 < kp; q0 += KS) {
        const int nq = kp - q0 < KS ? kp - q0 : KS;
        for (int q = 0; q < nq; q++)
            for (int j = 0; j < 64; j += 8) {
                const fl_i32b l = *(const fl_i32b_u *)(P + (ptrdiff_t)(q0 + q) * 64 + j);
                *(fl_f32b *)(wb + 2 * q * 64 + j) = (fl_f32b)(l << 16);
                *(fl_f32b *)(wb + (2 * q + 1) * 64 + j) = (fl_f32b)(l & hi);
            }
        const int b = beta || q0 > 0;
        for (int m = 0; m < M; ) {
            const int R = fl_block_rows_f_avx2(M - m);
            const float *a = Af + m * ldf + 2 * q0;
            if (width == 64)
                fl_rows_panel_f_avx2(R, b, 2 * nq, a, ldf, wb, 2 * nq, 0, 64, G + m * ldg, ldg);
            else
                fl_rows_part_f_avx2(R, b, 2 * nq, a, ldf, wb, 2 * nq, 0, 64, G + m * ldg, ldg,
                                    width);
            m += R;
        }
    }
}
/* The levels whose bfloat16 blocks are kept for every row count. */
#define fl_bf_widened_none ((void (*)(int, int, int, const float *, ptrdiff_t,          \
                                      const uint32_t *, float *, ptrdiff_t, int))NULL)

/* G = beta*G + bf16(A) @ B for one level: rows in blocks of RB, panels of 64
 * columns (a partial last panel through a buffer). */
#define FL_DEFINE_BF_LEVEL(ISA, V, VU, IV, IVU, RB, NVB, NV1, WIDEN)                \
FL_DEFINE_BF_BLOCK(V, VU, IV, IVU, fl_bfblk_##ISA, RB, NVB, FL_TGT_##ISA, 0)        \
FL_DEFINE_BF_BLOCK(V, VU, IV, IVU, fl_bfblkf_##ISA, RB, NVB, FL_TGT_##ISA, 1)       \
FL_DEFINE_BF_ROW(V, VU, IV, IVU, fl_bfblk1_##ISA, NV1, FL_TGT_##ISA)                \
FL_TGT_##ISA static void fl_matmul_bf_##ISA(int beta, int M, int N, int K,          \
        const uint32_t *A, ptrdiff_t lda, const uint32_t *BP, float *G, ptrdiff_t ldg) \
{                                                                                   \
    enum { W = (int)(sizeof(V) / sizeof(float)) };                                  \
    const int kp = (K + 1) / 2, n_panels = (N + 63) / 64;                           \
    float tmp[RB * 64];                                                             \
    float buf[FL_BF_EXPAND_BUF] __attribute__((aligned(64)));                       \
    ptrdiff_t ldf = 0;                                                              \
    float *Af = M >= RB && K > 0 ? fl_bf16_expand(M, K, A, lda, &ldf, buf) : NULL;  \
    for (int p = 0; p < n_panels; p++) {                                            \
        const uint32_t *P = BP + (ptrdiff_t)p * kp * 64;                            \
        const int width = N - p * 64 < 64 ? N - p * 64 : 64;                       \
        if (WIDEN != NULL && M >= FL_BF_WIDEN_ROWS && Af != NULL) {                 \
            WIDEN(beta, M, K, Af, ldf, P, G + p * 64, ldg, width);                  \
            continue;                                                               \
        }                                                                           \
        for (int m = 0; m < M; ) {                                                  \
            const int R = M - m >= RB ? RB : 1;                                     \
            const uint32_t *a = A + m * lda;                                        \
            float *g = G + m * ldg + p * 64;                                        \
            float *dst = width == 64 ? g : tmp;                                     \
            const ptrdiff_t ld = width == 64 ? ldg : 64;                            \
            if (width < 64)                                                         \
                for (int r = 0; r < R; r++)                                         \
                    for (int j = 0; j < 64; j++)                                    \
                        tmp[r * 64 + j] = (beta && j < width) ? g[r * ldg + j] : 0.0f; \
            for (int j = 0; j < 64; j += (R == RB ? NVB : NV1) * W) {               \
                if (R == RB && Af != NULL)                                          \
                    fl_bfblkf_##ISA(beta || width < 64, K, Af + m * ldf, ldf, P + j, \
                                    dst + j, ld);                                   \
                else if (R == RB)                                                   \
                    fl_bfblk_##ISA(beta || width < 64, K, a, lda, P + j, dst + j, ld); \
                else                                                                \
                    fl_bfblk1_##ISA(beta || width < 64, K, a, lda, P + j, dst + j, ld); \
            }                                                                       \
            if (width < 64)                                                         \
                for (int r = 0; r < R; r++)                                         \
                    for (int j = 0; j < width; j++)                                 \
                        g[r * ldg + j] = tmp[r * 64 + j];                           \
            m += R;                                                                 \
        }                                                                           \
    }                                                                               \
    if (Af != buf)                                                                  \
        free(Af);                                                                   \
}

FL_DEFINE_BF_LEVEL(avx512, fl_f64b, fl_f64b_u, fl_i64b, fl_i64b_u, 4, 4, 4, fl_bf_widened_none)
FL_DEFINE_BF_LEVEL(avx2, fl_f32b, fl_f32b_u, fl_i32b, fl_i32b_u, 4, 2, 8, fl_bf_widened_avx2)
FL_DEFINE_BF_LEVEL(portable, fl_f16b, fl_f16b_u, fl_i16b, fl_i16b_u, 4, 2, 8, fl_bf_widened_none)

#if FL_X86
/* AVX512-BF16: VDPBF16PS adds both products of a pair to each float32 lane.  Inlined
 * with a constant row count (as int8.h's VNNI block): with R a variable the compiler kept
 * a test of R inside the pair loop, and the 4-row block ran at 180 rather than 220
 * GFLOP/s (Zen 4). */
FL_TGT_avx512bf16 static inline __attribute__((always_inline)) void fl_bfdp_rows(const int R,
        int beta, int K, const uint32_t *A, ptrdiff_t lda, const uint32_t *B, float *G,
        ptrdiff_t ldg)
{
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < 4; v++)
            acc[r][v] = beta ? _mm512_loadu_ps(G + r * ldg + v * 16) : _mm512_setzero_ps();
    for (int k = 0; k < K; k += 2) {
        const uint32_t *bk = B + (ptrdiff_t)(k / 2) * 64;
        const __m512i b0 = _mm512_loadu_si512(bk), b1 = _mm512_loadu_si512(bk + 16);
        const __m512i b2 = _mm512_loadu_si512(bk + 32), b3 = _mm512_loadu_si512(bk + 48);
        for (int r = 0; r < R; r++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)A[r * lda + k / 2]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, (__m512bh)b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, (__m512bh)b1);
            acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, (__m512bh)b2);
            acc[r][3] = _mm512_dpbf16_ps(acc[r][3], a, (__m512bh)b3);
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < 4; v++)
            _mm512_storeu_ps(G + r * ldg + v * 16, acc[r][v]);
}

/* R (1 to 4) rows by one panel's 64 columns. */
FL_TGT_avx512bf16 static __attribute__((noinline)) void fl_bfdp_block(int R, int beta, int K,
        const uint32_t *A, ptrdiff_t lda, const uint32_t *B, float *G, ptrdiff_t ldg)
{
    switch (R) {
    case 4: fl_bfdp_rows(4, beta, K, A, lda, B, G, ldg); break;
    case 3: fl_bfdp_rows(3, beta, K, A, lda, B, G, ldg); break;
    case 2: fl_bfdp_rows(2, beta, K, A, lda, B, G, ldg); break;
    default: fl_bfdp_rows(1, beta, K, A, lda, B, G, ldg); break;
    }
}

FL_TGT_avx512bf16 static void fl_matmul_bf_avx512bf16(int beta, int M, int N, int K,
        const uint32_t *A, ptrdiff_t lda, const uint32_t *BP, float *G, ptrdiff_t ldg)
{
    const int kp = (K + 1) / 2, n_panels = (N + 63) / 64;
    float tmp[4 * 64];
    for (int p = 0; p < n_panels; p++) {
        const uint32_t *P = BP + (ptrdiff_t)p * kp * 64;
        const int width = N - p * 64 < 64 ? N - p * 64 : 64;
        for (int m = 0; m < M; ) {
            const int R = M - m >= 4 ? 4 : M - m;
            float *g = G + m * ldg + p * 64;
            if (width == 64) {
                fl_bfdp_block(R, beta, K, A + m * lda, lda, P, g, ldg);
            } else {
                for (int r = 0; r < R; r++)
                    for (int j = 0; j < 64; j++)
                        tmp[r * 64 + j] = (beta && j < width) ? g[r * ldg + j] : 0.0f;
                fl_bfdp_block(R, 1, K, A + m * lda, lda, P, tmp, 64);
                for (int r = 0; r < R; r++)
                    for (int j = 0; j < width; j++)
                        g[r * ldg + j] = tmp[r * 64 + j];
            }
            m += R;
        }
    }
}

/* AMX-BF16: 16 rows by one panel (4 tiles of 16 x 16 float32) per pass, the panel's
 * row pairs read straight from the packed layout (256-byte stride) and the rows' pairs
 * from the rounded activations; pairs past a multiple of 16 go to VDPBF16PS. */
typedef struct {
    unsigned char palette, start_row, reserved[14];
    unsigned short colsb[16];
    unsigned char rows[16];
} fl_tilecfg;

FL_TGT_amx static void fl_amx_begin(void)
{
    fl_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {  /* 0-3: G, 4-5: the rows' pairs, 6-7: the panel's */
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    /* Not _tile_loadconfig: GCC 12's declares an 8-byte operand, so the stores to the
     * rest of cfg can be dropped as dead (then LDTILECFG faults). */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

FL_TGT_amx static void fl_amx_end(void) { _tile_release(); }

/* G (16 rows, one panel) = beta*G + A pairs (16 rows, lda words) @ panel P: the tile
 * part (beta 0: the sums start from zeroed tiles, G is not read). */
FL_TGT_amx static void fl_amx_rows16(int beta, int kp16, const uint32_t *A, ptrdiff_t lda,
                                     const uint32_t *P, float *G, ptrdiff_t ldg)
{
    if (beta) {
        _tile_loadd(0, G, ldg * 4);
        _tile_loadd(1, G + 16, ldg * 4);
        _tile_loadd(2, G + 32, ldg * 4);
        _tile_loadd(3, G + 48, ldg * 4);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int kk = 0; kk < kp16; kk += 16) {
        const uint32_t *pk = P + (ptrdiff_t)kk * 64;
        _tile_loadd(4, A + kk, lda * 4);
        _tile_loadd(5, pk, 256);
        _tile_dpbf16ps(0, 4, 5);
        _tile_loadd(5, pk + 16, 256);
        _tile_dpbf16ps(1, 4, 5);
        _tile_loadd(5, pk + 32, 256);
        _tile_dpbf16ps(2, 4, 5);
        _tile_loadd(5, pk + 48, 256);
        _tile_dpbf16ps(3, 4, 5);
    }
    _tile_stored(0, G, ldg * 4);
    _tile_stored(1, G + 16, ldg * 4);
    _tile_stored(2, G + 32, ldg * 4);
    _tile_stored(3, G + 48, ldg * 4);
}

/* G (32 rows, one panel) += A pairs @ panel P: two blocks of rows by two blocks of
 * columns at a time, so that each tile of the panel serves two blocks of rows and each
 * tile of rows two blocks of columns (4 loads for 4 products, against 5 above). */
FL_TGT_amx static void fl_amx_rows32(int beta, int kp16, const uint32_t *A, ptrdiff_t lda,
                                     const uint32_t *P, float *G, ptrdiff_t ldg)
{
    for (int half = 0; half < 64; half += 32) {
        float *g = G + half;
        if (beta) {
            _tile_loadd(0, g, ldg * 4);
            _tile_loadd(1, g + 16, ldg * 4);
            _tile_loadd(2, g + 16 * ldg, ldg * 4);
            _tile_loadd(3, g + 16 * ldg + 16, ldg * 4);
        } else {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
        }
        for (int kk = 0; kk < kp16; kk += 16) {
            const uint32_t *pk = P + (ptrdiff_t)kk * 64 + half;
            _tile_loadd(4, A + kk, lda * 4);
            _tile_loadd(5, A + 16 * lda + kk, lda * 4);
            _tile_loadd(6, pk, 256);
            _tile_loadd(7, pk + 16, 256);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, g, ldg * 4);
        _tile_stored(1, g + 16, ldg * 4);
        _tile_stored(2, g + 16 * ldg, ldg * 4);
        _tile_stored(3, g + 16 * ldg + 16, ldg * 4);
    }
}

/* R rows (R <= 32, any) by one whole panel: G = beta*G + A pairs @ P. */
FL_TGT_amx static void fl_bf_rows_amx(int R, int beta, int K, const uint32_t *A,
                                      ptrdiff_t lda, const uint32_t *P, float *G, ptrdiff_t ldg)
{
    const int kp = (K + 1) / 2, kp16 = R >= 16 ? kp - kp % 16 : 0;
    if (R > 16 && R < 32) {  /* a block of 16, then the rest */
        fl_bf_rows_amx(16, beta, K, A, lda, P, G, ldg);
        fl_bf_rows_amx(R - 16, beta, K, A + 16 * lda, lda, P, G + 16 * ldg, ldg);
        return;
    }
    if (kp16 > 0 && R == 32)
        fl_amx_rows32(beta, kp16, A, lda, P, G, ldg);
    else if (kp16 > 0)
        fl_amx_rows16(beta, kp16, A, lda, P, G, ldg);
    if (kp16 < kp)  /* after the tiles' part, add to it */
        for (int r = 0; r < R; r += 4)
            fl_bfdp_block(R - r < 4 ? R - r : 4, kp16 > 0 || beta, 2 * (kp - kp16),
                          A + r * lda + kp16, lda, P + (ptrdiff_t)kp16 * 64, G + r * ldg, ldg);
}

FL_TGT_amx static void fl_matmul_bf_amx(int beta, int M, int N, int K, const uint32_t *A,
                                        ptrdiff_t lda, const uint32_t *BP, float *G,
                                        ptrdiff_t ldg)
{
    const int kp = (K + 1) / 2, full = N / 64;
    fl_amx_begin();
    for (int p = 0; p < full; p++)
        for (int m = 0; m < M; m += 32)
            fl_bf_rows_amx(M - m < 32 ? M - m : 32, beta, K, A + m * lda, lda,
                           BP + (ptrdiff_t)p * kp * 64, G + m * ldg + p * 64, ldg);
    fl_amx_end();
    if (full * 64 < N)  /* a partial last panel: VDPBF16PS, through its buffer */
        fl_matmul_bf_avx512bf16(beta, M, N - full * 64, K, A, lda,
                                BP + (ptrdiff_t)full * kp * 64, G + full * 64, ldg);
}
#endif

/* One timestep with bfloat16 W_hh (see fl_lstm_step_* in kernels.h): for the
 * panels [p_lo, p_hi), G += bf16(A) @ W_hh^T, then the float32 gate math. */
#define FL_DEFINE_BF_STEP(ISA, GATES_ISA, ROWSF, WIDEN)                    \
FL_TGT_##ISA static void fl_lstm_step_bf_##ISA(int M, int K, int H, const uint32_t *A, \
        ptrdiff_t lda, const uint32_t *BP, float *G, ptrdiff_t ldg, const float *bias, \
        float *C, ptrdiff_t ldc, float *Hout, ptrdiff_t ldh, int p_lo, int p_hi,    \
        int reverse)                                                                \
{                                                                                   \
    enum { U = 16 };                                                                \
    const int kp = (K + 1) / 2;                                                     \
    float buf[FL_BF_EXPAND_BUF] __attribute__((aligned(64)));                       \
    ptrdiff_t ldf = 0;  /* the rows as floats for blocks of 4 (ROWSF), once */      \
    float *Af = ROWSF != NULL && M >= 4 && K > 0                                    \
                ? fl_bf16_expand(M, K, A, lda, &ldf, buf) : NULL;                   \
    for (int i = p_lo; i < p_hi; i++) {                                             \
        const int p = reverse ? p_hi - 1 - (i - p_lo) : i;                          \
        const uint32_t *P = BP + (ptrdiff_t)p * kp * 64;                            \
        const int n = H - p * U < U ? H - p * U : U;                                \
        if (K > 0 && WIDEN != NULL && M >= FL_BF_WIDEN_ROWS && Af != NULL)          \
            WIDEN(1, M, K, Af, ldf, P, G + p * 64, ldg, 64);                        \
        else if (K > 0)                                                             \
            for (int m = 0; m < M; ) {                                              \
                const int R = M - m >= 4 ? 4 : 1;                                   \
                if (R == 4 && Af != NULL)                                           \
                    ROWSF(K, Af + m * ldf, ldf, P, G + m * ldg + p * 64, ldg);      \
                else                                                                \
                    fl_bf_rows_##ISA(R, K, A + m * lda, lda, P, G + m * ldg + p * 64, ldg); \
                m += R;                                                             \
            }                                                                       \
        for (int m = 0; m < M; m++) {                                               \
            const float *g = G + m * ldg + p * 64, *b = bias + p * 64;              \
            if (n == U)                                                             \
                fl_gates_f_##GATES_ISA(g, b, C + m * ldc + p * U, Hout + m * ldh + p * U); \
            else                                                                    \
                fl_gates_part_f_##GATES_ISA(g, b, C + m * ldc + p * U,              \
                                            Hout + m * ldh + p * U, n);             \
        }                                                                           \
    }                                                                               \
    if (Af != buf)                                                                  \
        free(Af);                                                                   \
}

/* R (4 or 1) rows by one whole panel, accumulating into G. */
#define FL_DEFINE_BF_ROWS(ISA, V, NVB, NV1)                                         \
FL_TGT_##ISA static void fl_bf_rows_##ISA(int R, int K, const uint32_t *A,        \
        ptrdiff_t lda, const uint32_t *P, float *G, ptrdiff_t ldg)                  \
{                                                                                   \
    enum { W = (int)(sizeof(V) / sizeof(float)) };                                  \
    for (int j = 0; j < 64; j += (R == 4 ? NVB : NV1) * W) {                        \
        if (R == 4)                                                                 \
            fl_bfblk_##ISA(1, K, A, lda, P + j, G + j, ldg);                        \
        else                                                                        \
            fl_bfblk1_##ISA(1, K, A, lda, P + j, G + j, ldg);                       \
    }                                                                               \
}

/* 4 rows, as floats (fl_bf16_expand), by one whole panel, accumulating into G. */
#define FL_DEFINE_BF_ROWSF(ISA, V, NVB)                                             \
FL_TGT_##ISA static void fl_bf_rowsf_##ISA(int K, const float *Af, ptrdiff_t ldf,   \
        const uint32_t *P, float *G, ptrdiff_t ldg)                                 \
{                                                                                   \
    enum { W = (int)(sizeof(V) / sizeof(float)) };                                  \
    for (int j = 0; j < 64; j += NVB * W)                                           \
        fl_bfblkf_##ISA(1, K, Af, ldf, P + j, G + j, ldg);                          \
}

FL_DEFINE_BF_ROWS(avx512, fl_f64b, 4, 4)
FL_DEFINE_BF_ROWS(avx2, fl_f32b, 2, 8)
FL_DEFINE_BF_ROWS(portable, fl_f16b, 2, 8)
FL_DEFINE_BF_ROWSF(avx512, fl_f64b, 4)
FL_DEFINE_BF_ROWSF(avx2, fl_f32b, 2)
FL_DEFINE_BF_ROWSF(portable, fl_f16b, 2)
FL_DEFINE_BF_STEP(avx512, avx512, fl_bf_rowsf_avx512, fl_bf_widened_none)
FL_DEFINE_BF_STEP(avx2, avx2, fl_bf_rowsf_avx2, fl_bf_widened_avx2)
FL_DEFINE_BF_STEP(portable, portable, fl_bf_rowsf_portable, fl_bf_widened_none)

#if FL_X86
FL_TGT_avx512bf16 static void fl_bf_rows_avx512bf16(int R, int K, const uint32_t *A,
        ptrdiff_t lda, const uint32_t *P, float *G, ptrdiff_t ldg)
{
    fl_bfdp_block(R, 1, K, A, lda, P, G, ldg);
}
/* VDPBF16PS reads the pairs themselves: no float rows (a null ROWSF). */
#define fl_bf_rowsf_none ((void (*)(int, const float *, ptrdiff_t, const uint32_t *, \
                                    float *, ptrdiff_t))NULL)
FL_DEFINE_BF_STEP(avx512bf16, avx512, fl_bf_rowsf_none, fl_bf_widened_none)

/* The AMX step: 16 rows at a time through the tiles. */
FL_TGT_amx static void fl_lstm_step_bf_amx(int M, int K, int H, const uint32_t *A,
        ptrdiff_t lda, const uint32_t *BP, float *G, ptrdiff_t ldg, const float *bias,
        float *C, ptrdiff_t ldc, float *Hout, ptrdiff_t ldh, int p_lo, int p_hi, int reverse)
{
    enum { U = 16 };
    const int kp = (K + 1) / 2;
    fl_amx_begin();
    for (int i = p_lo; i < p_hi; i++) {
        const int p = reverse ? p_hi - 1 - (i - p_lo) : i;
        const uint32_t *P = BP + (ptrdiff_t)p * kp * 64;
        const int n = H - p * U < U ? H - p * U : U;
        if (K > 0)
            for (int m = 0; m < M; m += 32)
                fl_bf_rows_amx(M - m < 32 ? M - m : 32, 1, K, A + m * lda, lda, P,
                               G + m * ldg + p * 64, ldg);
        for (int m = 0; m < M; m++) {
            const float *g = G + m * ldg + p * 64, *b = bias + p * 64;
            if (n == U)
                fl_gates_f_avx512(g, b, C + m * ldc + p * U, Hout + m * ldh + p * U);
            else
                fl_gates_part_f_avx512(g, b, C + m * ldc + p * U, Hout + m * ldh + p * U, n);
        }
    }
    fl_amx_end();
}
#endif

/* Out of memory for the rounded activations (a few KiB to MiB): the same product,
 * one row and at most FL_BF_SLICE pairs of columns at a time through the stack. */
#define FL_BF_SLICE 512
#define FL_BF_ROWS_BY_LEVEL(level, R, K, A, lda, P, G, ldg)                         \
    do {                                                                            \
        if (FL_X86 && (level) >= FL_BF16_DP) FL_BF_DP_ROWS(R, K, A, lda, P, G, ldg);  \
        else if ((level) >= FL_AVX512) fl_bf_rows_avx512(R, K, A, lda, P, G, ldg);   \
        else if ((level) == FL_AVX2) fl_bf_rows_avx2(R, K, A, lda, P, G, ldg);       \
        else fl_bf_rows_portable(R, K, A, lda, P, G, ldg);                          \
    } while (0)
#if FL_X86
#define FL_BF_DP_ROWS(R, K, A, lda, P, G, ldg) fl_bf_rows_avx512bf16(R, K, A, lda, P, G, ldg)
#else
#define FL_BF_DP_ROWS(R, K, A, lda, P, G, ldg) fl_bf_rows_portable(R, K, A, lda, P, G, ldg)
#endif

/* G (one row, panel p's 64 columns) += bf16(a) @ panel, through slices on the stack. */
static void fl_bf_row_sliced(int level, int K, const float *a, const uint32_t *P, float *g)
{
    uint32_t buf[FL_BF_SLICE];
    for (int k0 = 0; k0 < K; k0 += 2 * FL_BF_SLICE) {
        const int kb = K - k0 < 2 * FL_BF_SLICE ? K - k0 : 2 * FL_BF_SLICE;
        fl_bf16_pairs_into(1, kb, a + k0, 0, buf, FL_BF_SLICE);
        FL_BF_ROWS_BY_LEVEL(level, 1, kb, buf, FL_BF_SLICE, P + (ptrdiff_t)(k0 / 2) * 64, g, 0);
    }
}

static void fl_lstm_step_bfp(int level, int M, int K, int H, const uint32_t *A, ptrdiff_t lda,
        const uint32_t *BP, float *G, ptrdiff_t ldg, const float *bias, float *C,
        ptrdiff_t ldc, float *Hout, ptrdiff_t ldh, int p_lo, int p_hi, int reverse);

static void fl_lstm_step_bf(int level, int M, int K, int H, const float *Af, ptrdiff_t ldaf,
        const uint32_t *BP, float *G, ptrdiff_t ldg, const float *bias, float *C,
        ptrdiff_t ldc, float *Hout, ptrdiff_t ldh, int p_lo, int p_hi, int reverse)
{
    const ptrdiff_t lda = fl_bf16_ld(K);
    uint32_t *A = K > 0 ? fl_bf16_pairs(level, M, K, Af, ldaf) : NULL;
    if (K > 0 && A == NULL) {
        const int kp = (K + 1) / 2;
        for (int i = p_lo; i < p_hi; i++) {
            const int p = reverse ? p_hi - 1 - (i - p_lo) : i;
            for (int m = 0; m < M; m++)
                fl_bf_row_sliced(level, K, Af + m * ldaf, BP + (ptrdiff_t)p * kp * 64,
                                 G + m * ldg + p * 64);
            /* The products are in: the gate math alone (K = 0) finishes the panel. */
            fl_lstm_step_bf(level, M, 0, H, Af, ldaf, BP, G, ldg, bias, C, ldc, Hout, ldh,
                            p, p + 1, 0);
        }
        return;
    }
    fl_lstm_step_bfp(level, M, K, H, A, lda, BP, G, ldg, bias, C, ldc, Hout, ldh, p_lo, p_hi,
                     reverse);
    free(A);
}

/* fl_lstm_step_bf on activations already in bfloat16 pairs (fl_bf16_pairs). */
static void fl_lstm_step_bfp(int level, int M, int K, int H, const uint32_t *A, ptrdiff_t lda,
        const uint32_t *BP, float *G, ptrdiff_t ldg, const float *bias, float *C,
        ptrdiff_t ldc, float *Hout, ptrdiff_t ldh, int p_lo, int p_hi, int reverse)
{
#if FL_X86
    if (level == FL_BF16_AMX && M >= 16)
        fl_lstm_step_bf_amx(M, K, H, A, lda, BP, G, ldg, bias, C, ldc, Hout, ldh, p_lo, p_hi,
                            reverse);
    else if (level >= FL_BF16_DP)
        fl_lstm_step_bf_avx512bf16(M, K, H, A, lda, BP, G, ldg, bias, C, ldc, Hout, ldh,
                                   p_lo, p_hi, reverse);
    else
#endif
    if (level >= FL_AVX512)
        fl_lstm_step_bf_avx512(M, K, H, A, lda, BP, G, ldg, bias, C, ldc, Hout, ldh, p_lo,
                               p_hi, reverse);
    else if (level == FL_AVX2)
        fl_lstm_step_bf_avx2(M, K, H, A, lda, BP, G, ldg, bias, C, ldc, Hout, ldh, p_lo,
                             p_hi, reverse);
    else
        fl_lstm_step_bf_portable(M, K, H, A, lda, BP, G, ldg, bias, C, ldc, Hout, ldh, p_lo,
                                 p_hi, reverse);
}

/* fl_matmul_bf without the heap: one row and slice at a time (out of memory). */
static void fl_matmul_bf_sliced(int level, int beta, int M, int N, int K, const float *Af,
                                ptrdiff_t ldaf, const uint32_t *BP, float *G, ptrdiff_t ldg)
{
    const int kp = (K + 1) / 2, n_panels = (N + 63) / 64;
    float tmp[64];
    for (int m = 0; m < M; m++)
        for (int p = 0; p < n_panels; p++) {
            const int width = N - p * 64 < 64 ? N - p * 64 : 64;
            float *g = G + m * ldg + p * 64;
            for (int j = 0; j < 64; j++)
                tmp[j] = (beta && j < width) ? g[j] : 0.0f;
            fl_bf_row_sliced(level, K, Af + m * ldaf, BP + (ptrdiff_t)p * kp * 64, tmp);
            for (int j = 0; j < width; j++)
                g[j] = tmp[j];
        }
}

static void fl_matmul_bfp(int level, int beta, int M, int N, int K, const uint32_t *A,
                          ptrdiff_t lda, const uint32_t *BP, float *G, ptrdiff_t ldg);

static void fl_matmul_bf(int level, int beta, int M, int N, int K, const float *Af,
                         ptrdiff_t ldaf, const uint32_t *BP, float *G, ptrdiff_t ldg)
{
    const ptrdiff_t lda = fl_bf16_ld(K);
    uint32_t *A = fl_bf16_pairs(level, M, K, Af, ldaf);
    if (A == NULL) {
        fl_matmul_bf_sliced(level, beta, M, N, K, Af, ldaf, BP, G, ldg);
        return;
    }
    fl_matmul_bfp(level, beta, M, N, K, A, lda, BP, G, ldg);
    free(A);
}

/* fl_matmul_bf on activations already in bfloat16 pairs (fl_bf16_pairs). */
static void fl_matmul_bfp(int level, int beta, int M, int N, int K, const uint32_t *A,
                          ptrdiff_t lda, const uint32_t *BP, float *G, ptrdiff_t ldg)
{
#if FL_X86
    if (level == FL_BF16_AMX && M >= 16)
        fl_matmul_bf_amx(beta, M, N, K, A, lda, BP, G, ldg);
    else if (level >= FL_BF16_DP)
        fl_matmul_bf_avx512bf16(beta, M, N, K, A, lda, BP, G, ldg);
    else
#endif
    if (level >= FL_AVX512)
        fl_matmul_bf_avx512(beta, M, N, K, A, lda, BP, G, ldg);
    else if (level == FL_AVX2)
        fl_matmul_bf_avx2(beta, M, N, K, A, lda, BP, G, ldg);
    else
        fl_matmul_bf_portable(beta, M, N, K, A, lda, BP, G, ldg);
}
#endif
