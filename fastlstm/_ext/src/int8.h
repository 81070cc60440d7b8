/* Products with int8 weights (docs/precision.md has the semantics).
 *
 * G (M x N) = beta*G + dequant(q(A) @ B): B (K x N) holds symmetric int8 weights
 * with one float32 scale per column (a weight row of torch's layout), packed like
 * the float32 panels (64 columns, 256 bytes a row of a panel) but by quads of rows:
 * row kk of panel p holds, for each of its 64 columns j, the 32-bit word of
 * B[4kk + b][j] in byte b (K padded to a multiple of 4 with zero rows); after the
 * kq = ceil(K / 4) rows come two more: the 64 columns' float32 scales, then their
 * int32 compensations -128 * sum_k B[k][j].
 *
 * A (float32) is quantized per row, dynamically: amax the largest |A[m][k]|,
 * scale s = amax / 127 and q = rint(A[m][k] * (127 / amax)) in [-127, 127] (float32
 * arithmetic, ties to even); a row with a NaN or an infinity gets s = NaN, a row
 * whose amax is below 2^-120 (zero) s = 0.  q is stored as the byte q + 128 (1..255,
 * never 0: the AVX2 one-row block needs |q| <= 127), the operand VPDPBUSD and AMX
 * TDPBUSD read unsigned; the compensation takes the 128 back out, so that the int32 sum
 * is exactly sum_k q[m][k] * B[k][j] at every level.
 * Then G[m][j] = beta*G[m][j] + (float)sum * (s[m] * scale[j]), in that order, in
 * float32: the result does not depend on the level or on how the work is shared.
 *
 * Levels: the float32 levels' vectors (portable, AVX2, AVX-512: bytes widened to 16
 * bits, PMADDWD; elsewhere than x86, 32-bit multiplies), FL_I8_AVXVNNI (AVX-VNNI:
 * VPDPBUSD on 256-bit vectors), FL_I8_VNNI (AVX512-VNNI: VPDPBUSD, 64 products per
 * instruction) and FL_I8_AMX (AMX-INT8 tiles for blocks of 16 rows, VNNI for the rest).
 */
#ifndef FASTLSTM_INT8_H
#define FASTLSTM_INT8_H
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "bf16.h"

/* Levels past the float32 ones: AVX512-VNNI, AMX-INT8, and AVX-VNNI (VPDPBUSD on 256-bit
 * vectors, for CPUs with AVX2 but not AVX-512: Alder Lake and later clients); AVX-VNNI is
 * numbered last but stands below AVX-512 (fl_i8_vec). */
enum { FL_I8_VNNI = 3, FL_I8_AMX = 4, FL_I8_AVXVNNI = 5 };

/* The float32 level whose vectors `level` uses for the quantization, the dequantization
 * and the gates. */
static inline int fl_i8_vec(int level)
{
    return level == FL_I8_AVXVNNI ? FL_AVX2 : level > FL_AVX512 ? FL_AVX512 : level;
}

#if FL_X86
#define FL_TGT_avxvnni __attribute__((target("avx2,fma,avxvnni")))
#define FL_TGT_vnni __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx2,fma")))
#define FL_TGT_amxi8 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx2,fma,amx-tile,amx-int8")))
#endif

/* Whether this CPU has AVX512-VNNI (leaf 7.0 ECX bit 11; with the AVX-512 level's
 * features). */
static int fl_cpu_has_avx512vnni(void)
{
    return fl_cpu_level() >= FL_AVX512 && fl_cpuid7_bit(0, 2, 11);
}

/* Whether this CPU has AVX-VNNI (leaf 7.1 EAX bit 4; with the AVX2 level's features). */
static int fl_cpu_has_avxvnni(void)
{
    return fl_cpu_level() >= FL_AVX2 && fl_cpuid7_bit(1, 0, 4);
}

/* AMX-INT8 tiles (fl_cpu_has_amx), with AVX512-VNNI for what the tiles leave. */
static int fl_cpu_has_amx_int8(void)
{
    return fl_cpu_has_avx512vnni() && fl_cpu_has_amx(25);
}

/* Rows of a panel in 32-bit words: the quads of K, then the scales and compensations. */
static inline int fl_i8_panel_rows(int K) { return (K + 3) / 4 + 2; }

/* A row's scale and the factor that quantizes it (0 for a zero or non-finite row), from
 * the bits of its largest |value| (non-negative floats order as their bits; above
 * 0x7f7fffff: an infinity or a NaN). */
static inline void fl_i8_scale_of(uint32_t most, float *scale, float *inv)
{
    const float amax = fl_bits_float(most);
    if (most > 0x7f7fffffu) {
        *scale = NAN;
        *inv = 0.0f;
    } else if (amax < 0x1p-120f) {  /* 127 / amax stays finite above this */
        *scale = 0.0f;
        *inv = 0.0f;
    } else {
        *scale = amax / 127.0f;
        *inv = 127.0f / amax;
    }
}

static void fl_i8_row_scale(int K, const float *a, float *scale, float *inv)
{
    uint32_t most = 0;
    for (int k = 0; k < K; k++) {
        uint32_t u;
        memcpy(&u, a + k, sizeof u);
        u &= 0x7fffffffu;
        most = u > most ? u : most;
    }
    fl_i8_scale_of(most, scale, inv);
}

/* K values of one row quantized with `inv` into bytes q + 128 (all 128, q = 0, when inv
 * is 0), padded to whole words with 128.  rintf: to nearest, ties to even, as
 * VCVTPS2DQ under the default rounding the kernels keep. */
static void fl_i8_row_bytes(int K, const float *a, float inv, uint32_t *out)
{
    uint8_t *o = (uint8_t *)out;
    const int kq = (K + 3) / 4;
    for (int k = 0; k < K; k++)
        o[k] = inv == 0.0f ? 128 : (uint8_t)((int)rintf(a[k] * inv) + 128);
    for (int k = K; k < 4 * kq; k++)
        o[k] = 128;
}

/* A (M x K, row stride lda) quantized: Q (M rows of ldq words), scales s (M). */
static void fl_i8_quantize_scalar(int M, int K, const float *A, ptrdiff_t lda, uint32_t *Q,
                                  ptrdiff_t ldq, float *s)
{
    for (int m = 0; m < M; m++) {
        float inv;
        fl_i8_row_scale(K, A + m * lda, &s[m], &inv);
        fl_i8_row_bytes(K, A + m * lda, inv, Q + m * ldq);
    }
}

#if FL_X86
/* A vectorized row's scale (s) and quantizing factor (returned): `most` holds the largest
 * |value| bits of a[0, k0), the rest are read here; a zero or non-finite row (factor 0) gets
 * its bytes here too. */
static inline float fl_i8_row_finish(int K, int k0, const float *a, uint32_t most, float *s,
                                     uint32_t *q)
{
    float inv;
    for (int k = k0; k < K; k++) {
        uint32_t u;
        memcpy(&u, a + k, sizeof u);
        u &= 0x7fffffffu;
        most = u > most ? u : most;
    }
    fl_i8_scale_of(most, s, &inv);
    if (inv == 0.0f)
        fl_i8_row_bytes(K, a, inv, q);
    return inv;
}

/* The same, 16 values at a time: the same bits, the same products, the same rounding. */
FL_TGT_avx512 static void fl_i8_quantize_avx512(int M, int K, const float *A, ptrdiff_t lda,
                                                uint32_t *Q, ptrdiff_t ldq, float *s)
{
    const int full = K / 16;
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), bias = _mm512_set1_epi32(128);
    for (int m = 0; m < M; m++) {
        const float *a = A + m * lda;
        uint8_t *o = (uint8_t *)(Q + m * ldq);
        __m512i most = _mm512_setzero_si512();
        for (int b = 0; b < full; b++)
            most = _mm512_max_epu32(most, _mm512_and_si512(_mm512_loadu_si512(a + 16 * b),
                                                           abs_mask));
        const float inv = fl_i8_row_finish(K, 16 * full, a,
                                           (uint32_t)_mm512_reduce_max_epu32(most), &s[m],
                                           Q + m * ldq);
        if (inv == 0.0f)
            continue;
        const __m512 vi = _mm512_set1_ps(inv);
        for (int b = 0; b < full; b++) {
            const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(a + 16 * b), vi));
            _mm_storeu_si128((__m128i *)(o + 16 * b),
                             _mm512_cvtepi32_epi8(_mm512_add_epi32(q, bias)));
        }
        fl_i8_row_bytes(K - 16 * full, a + 16 * full, inv, (uint32_t *)(o + 16 * full));
    }
}

/* The same with AVX2, 16 values at a time (the bytes packed with unsigned saturation, which
 * 1..255 never meets). */
FL_TGT_avx2 static void fl_i8_quantize_avx2(int M, int K, const float *A, ptrdiff_t lda,
                                            uint32_t *Q, ptrdiff_t ldq, float *s)
{
    const int full = K / 16;
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), bias = _mm256_set1_epi32(128);
    for (int m = 0; m < M; m++) {
        const float *a = A + m * lda;
        uint8_t *o = (uint8_t *)(Q + m * ldq);
        __m256i most = _mm256_setzero_si256();
        for (int k = 0; k + 8 <= K; k += 8)
            most = _mm256_max_epu32(most, _mm256_and_si256(
                _mm256_loadu_si256((const __m256i *)(a + k)), abs_mask));
        __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(most),
                                   _mm256_extracti128_si256(most, 1));
        m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0x4e));
        m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0xb1));
        const float inv = fl_i8_row_finish(K, K - K % 8, a, (uint32_t)_mm_cvtsi128_si32(m4),
                                           &s[m], Q + m * ldq);
        if (inv == 0.0f)
            continue;
        const __m256 vi = _mm256_set1_ps(inv);
        for (int b = 0; b < full; b++) {
            const __m256i q0 = _mm256_add_epi32(
                _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + 16 * b), vi)), bias);
            const __m256i q1 = _mm256_add_epi32(
                _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + 16 * b + 8), vi)), bias);
            const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(q0, q1), 0xd8);
            _mm_storeu_si128((__m128i *)(o + 16 * b),
                             _mm_packus_epi16(_mm256_castsi256_si128(w),
                                              _mm256_extracti128_si256(w, 1)));
        }
        fl_i8_row_bytes(K - 16 * full, a + 16 * full, inv, (uint32_t *)(o + 16 * full));
    }
}
#endif

static void fl_i8_quantize(int level, int M, int K, const float *A, ptrdiff_t lda,
                           uint32_t *Q, ptrdiff_t ldq, float *s)
{
#if FL_X86
    if (fl_i8_vec(level) >= FL_AVX512) {
        fl_i8_quantize_avx512(M, K, A, lda, Q, ldq, s);
        return;
    }
    if (fl_i8_vec(level) == FL_AVX2) {
        fl_i8_quantize_avx2(M, K, A, lda, Q, ldq, s);
        return;
    }
#endif
    (void)level;
    fl_i8_quantize_scalar(M, K, A, lda, Q, ldq, s);
}

/* acc (R x 64 int32) (+)= sum over kq quads of the rows' bytes (Q, unsigned) times the
 * panel's (P, signed): the float32 levels' vectors, bytes widened by shifts. */
#define FL_DEFINE_I8_BLOCK(ISA, IV, IVU)                                             \
FL_TGT_##ISA static __attribute__((noinline)) void fl_i8_block_##ISA(int R, int kq,  \
        const uint32_t *Q, ptrdiff_t ldq, const uint32_t *P, int32_t *acc, int add,  \
        const int32_t *comp)                                                         \
{                                                                                    \
    enum { W = (int)(sizeof(IV) / sizeof(int)), NV = 64 / W };                       \
    (void)comp;                                                                      \
    for (int r0 = 0; r0 < R; r0 += 4) {                                              \
        const int rb = R - r0 < 4 ? R - r0 : 4;                                      \
        IV c[4][NV];                                                                 \
        for (int r = 0; r < rb; r++)                                                 \
            for (int v = 0; v < NV; v++)                                             \
                c[r][v] = add ? *(const IVU *)(acc + (r0 + r) * 64 + v * W) : (IV){0}; \
        for (int kk = 0; kk < kq; kk++) {                                            \
            const uint32_t *pk = P + (ptrdiff_t)kk * 64;                             \
            for (int v = 0; v < NV; v++) {                                           \
                const IV w = *(const IVU *)(pk + v * W);                             \
                const IV w0 = (w << 24) >> 24, w1 = (w << 16) >> 24;                \
                const IV w2 = (w << 8) >> 24, w3 = w >> 24;                          \
                for (int r = 0; r < rb; r++) {                                       \
                    const uint32_t a = Q[(r0 + r) * ldq + kk];                       \
                    c[r][v] += (int)(a & 255) * w0 + (int)((a >> 8) & 255) * w1      \
                               + (int)((a >> 16) & 255) * w2 + (int)(a >> 24) * w3;  \
                }                                                                    \
            }                                                                        \
        }                                                                            \
        for (int r = 0; r < rb; r++)                                                 \
            for (int v = 0; v < NV; v++)                                             \
                *(IVU *)(acc + (r0 + r) * 64 + v * W) = c[r][v];                     \
    }                                                                                \
}
typedef int fl_i8_v64 __attribute__((vector_size(64)));
typedef int fl_i8_v32 __attribute__((vector_size(32)));
typedef int fl_i8_v16 __attribute__((vector_size(16)));
#if FL_X86
/* On x86, PMADDWD instead: the bytes widened to 16 bits, even and odd ones apart (the
 * weights' signed by shifts, the activations' unsigned by a mask), and each PMADDWD adds
 * two exact products to an int32 lane: the same sums as above, with a quarter of the
 * multiplies and none of 32 bits (which measured 3x slower than float32 at AVX2). */
#define FL_DEFINE_I8_MADD(ISA, V, LOADU, STOREU, ZERO, SET1, ADD, MADD, SLLW, SRAW)   \
FL_TGT_##ISA static inline __attribute__((always_inline)) void fl_i8_rows_##ISA(     \
        const int rb, int kq, const uint32_t *Q, ptrdiff_t ldq, const uint32_t *P,    \
        int32_t *acc, int add)                                                       \
{                                                                                    \
    enum { W = (int)(sizeof(V) / sizeof(int)), NV = 64 / W };                        \
    V c[4][NV];                                                                      \
    for (int r = 0; r < rb; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                 \
            c[r][v] = add ? LOADU((const V *)(acc + r * 64 + v * W)) : ZERO();       \
    for (int kk = 0; kk < kq; kk++) {                                                \
        const uint32_t *pk = P + (ptrdiff_t)kk * 64;                                 \
        V ae[4], ao[4];                                                              \
        for (int r = 0; r < rb; r++) {                                               \
            const uint32_t a = Q[r * ldq + kk];                                      \
            ae[r] = SET1((int)(a & 0x00ff00ffu));                                    \
            ao[r] = SET1((int)((a >> 8) & 0x00ff00ffu));                             \
        }                                                                            \
        for (int v = 0; v < NV; v++) {                                               \
            const V w = LOADU((const V *)(pk + v * W));                              \
            const V we = SRAW(SLLW(w, 8), 8), wo = SRAW(w, 8);                       \
            for (int r = 0; r < rb; r++)                                             \
                c[r][v] = ADD(c[r][v], ADD(MADD(ae[r], we), MADD(ao[r], wo)));       \
        }                                                                            \
    }                                                                                \
    for (int r = 0; r < rb; r++)                                                     \
        for (int v = 0; v < NV; v++)                                                 \
            STOREU((V *)(acc + r * 64 + v * W), c[r][v]);                            \
}                                                                                    \
FL_TGT_##ISA static __attribute__((noinline)) void fl_i8_block_##ISA(int R, int kq,  \
        const uint32_t *Q, ptrdiff_t ldq, const uint32_t *P, int32_t *acc, int add,  \
        const int32_t *comp)                                                         \
{                                                                                    \
    (void)comp;                                                                      \
    for (int r0 = 0; r0 < R; r0 += 4) {                                              \
        const uint32_t *q = Q + r0 * ldq;                                            \
        int32_t *a = acc + r0 * 64;                                                  \
        switch (R - r0) {                                                            \
        case 1: FL_I8_ROW1_##ISA(kq, q, ldq, P, a, add, comp); break;                \
        case 2: fl_i8_rows_##ISA(2, kq, q, ldq, P, a, add); break;                   \
        case 3: fl_i8_rows_##ISA(3, kq, q, ldq, P, a, add); break;                   \
        default: fl_i8_rows_##ISA(4, kq, q, ldq, P, a, add); break;                  \
        }                                                                            \
    }                                                                                \
}
/* One row at AVX2: PMADDUBSW's byte products, exact here because neither operand reaches
 * the pair sums' int16 limit: |w| (0..128) unsigned times the activation q = byte - 128
 * (-127..127: the bytes are 1..255, fl_i8_row_bytes) with w's sign, then PMADDWD by ones to
 * int32.  That sums q*w, not (q + 128)*w: the sums start from -comp, 128 * sum_k w over
 * the block's quads, so that the block gives what every level gives.  Five operations for
 * 32 products where the widened bytes take eight; measured 1.5x the rate of one row (40
 * against 26 GMAC/s on a Zen 3 core), while at two rows and more the widened weights, shared
 * by the rows, keep up. */
FL_TGT_avx2 static __attribute__((noinline)) void fl_i8_row_sign_avx2(int kq, const uint32_t *Q,
        const uint32_t *P, int32_t *acc, int add, const int32_t *comp)
{
    const __m256i ones = _mm256_set1_epi16(1), top = _mm256_set1_epi8((char)0x80);
    __m256i c[8];
    for (int v = 0; v < 8; v++)
        c[v] = _mm256_sub_epi32(add ? _mm256_loadu_si256((const __m256i *)(acc + 8 * v))
                                    : _mm256_setzero_si256(),
                                _mm256_loadu_si256((const __m256i *)(comp + 8 * v)));
    for (int kk = 0; kk < kq; kk++) {
        const uint32_t *pk = P + (ptrdiff_t)kk * 64;
        const __m256i a = _mm256_xor_si256(_mm256_set1_epi32((int)Q[kk]), top);
        for (int v = 0; v < 8; v++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(pk + 8 * v));
            const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w));
            c[v] = _mm256_add_epi32(c[v], _mm256_madd_epi16(pairs, ones));
        }
    }
    for (int v = 0; v < 8; v++)
        _mm256_storeu_si256((__m256i *)(acc + 8 * v), c[v]);
}
#define FL_I8_ROW1_avx2(kq, q, ldq, P, a, add, comp)                                 \
    (comp != NULL ? fl_i8_row_sign_avx2(kq, q, P, a, add, comp)                      \
                  : fl_i8_rows_avx2(1, kq, q, ldq, P, a, add))
#define FL_I8_ROW1_avx512(kq, q, ldq, P, a, add, comp) fl_i8_rows_avx512(1, kq, q, ldq, P, a, add)
#define FL_I8_ROW1_portable(kq, q, ldq, P, a, add, comp) \
    fl_i8_rows_portable(1, kq, q, ldq, P, a, add)
#define FL_LOADU512(p) _mm512_loadu_si512(p)
#define FL_STOREU512(p, v) _mm512_storeu_si512(p, v)
FL_DEFINE_I8_MADD(avx512, __m512i, FL_LOADU512, FL_STOREU512, _mm512_setzero_si512,
                  _mm512_set1_epi32, _mm512_add_epi32, _mm512_madd_epi16, _mm512_slli_epi16,
                  _mm512_srai_epi16)
FL_DEFINE_I8_MADD(avx2, __m256i, _mm256_loadu_si256, _mm256_storeu_si256, _mm256_setzero_si256,
                  _mm256_set1_epi32, _mm256_add_epi32, _mm256_madd_epi16, _mm256_slli_epi16,
                  _mm256_srai_epi16)
FL_DEFINE_I8_MADD(portable, __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_setzero_si128,
                  _mm_set1_epi32, _mm_add_epi32, _mm_madd_epi16, _mm_slli_epi16, _mm_srai_epi16)
#else
FL_DEFINE_I8_BLOCK(avx512, fl_i8_v64, fl_i64b_u)
FL_DEFINE_I8_BLOCK(avx2, fl_i8_v32, fl_i32b_u)
FL_DEFINE_I8_BLOCK(portable, fl_i8_v16, fl_i16b_u)
#endif

#if FL_X86
/* AVX512-VNNI: VPDPBUSD adds the four byte products of each word to each int32 lane.
 * Inlined with a constant row count: with rb a variable the compiler kept a test of it
 * inside the quad loop (as bf16.h's VDPBF16PS block, 180 against 220 GFLOP/s there). */
FL_TGT_vnni static inline __attribute__((always_inline)) void fl_i8_vnni_rows(const int rb,
        int kq, const uint32_t *Q, ptrdiff_t ldq, const uint32_t *P, int32_t *acc, int add)
{
    __m512i c[4][4];
    for (int r = 0; r < rb; r++)
        for (int v = 0; v < 4; v++)
            c[r][v] = add ? _mm512_loadu_si512(acc + r * 64 + v * 16) : _mm512_setzero_si512();
    for (int kk = 0; kk < kq; kk++) {
        const uint32_t *pk = P + (ptrdiff_t)kk * 64;
        const __m512i b0 = _mm512_loadu_si512(pk), b1 = _mm512_loadu_si512(pk + 16);
        const __m512i b2 = _mm512_loadu_si512(pk + 32), b3 = _mm512_loadu_si512(pk + 48);
        for (int r = 0; r < rb; r++) {
            const __m512i a = _mm512_set1_epi32((int)Q[r * ldq + kk]);
            c[r][0] = _mm512_dpbusd_epi32(c[r][0], a, b0);
            c[r][1] = _mm512_dpbusd_epi32(c[r][1], a, b1);
            c[r][2] = _mm512_dpbusd_epi32(c[r][2], a, b2);
            c[r][3] = _mm512_dpbusd_epi32(c[r][3], a, b3);
        }
    }
    for (int r = 0; r < rb; r++)
        for (int v = 0; v < 4; v++)
            _mm512_storeu_si512(acc + r * 64 + v * 16, c[r][v]);
}

FL_TGT_vnni static __attribute__((noinline)) void fl_i8_block_vnni(int R, int kq,
        const uint32_t *Q, ptrdiff_t ldq, const uint32_t *P, int32_t *acc, int add)
{
    for (int r0 = 0; r0 < R; r0 += 4) {
        const uint32_t *q = Q + r0 * ldq;
        int32_t *a = acc + r0 * 64;
        switch (R - r0) {
        case 1: fl_i8_vnni_rows(1, kq, q, ldq, P, a, add); break;
        case 2: fl_i8_vnni_rows(2, kq, q, ldq, P, a, add); break;
        case 3: fl_i8_vnni_rows(3, kq, q, ldq, P, a, add); break;
        default: fl_i8_vnni_rows(4, kq, q, ldq, P, a, add); break;
        }
    }
}

/* AVX-VNNI's VPDPBUSD, c += a (unsigned bytes) . b (signed bytes).  Through the intrinsic,
 * GCC (12) copied every sum of the block below to another register once or twice per quad
 * (its allocator not keeping the sum in the instruction's destination), and with 16
 * registers the 3-row block spilled; as inline assembly the sums stay put.  Zen 5, one
 * core, a panel of 64 to 256 quads: 3 rows 400 -> 525 GOP/s, 4 and more 460 -> 490 (the
 * instruction's peak there is 528).  The 512-bit block is at its peak either way. */
#if defined(__GNUC__) && !defined(__clang__)
FL_TGT_avxvnni static inline __attribute__((always_inline)) __m256i fl_dpbusd256_vex(
        __m256i c, __m256i a, __m256i b)
{
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(c) : "x"(a), "xm"(b));
    return c;
}
#else
#define fl_dpbusd256_vex _mm256_dpbusd_avx_epi32
#endif

/* VPDPBUSD on 256-bit vectors, eight of them for a panel's 64 columns: AVX-VNNI (VEX,
 * 16 registers), and the same source with the EVEX instruction of AVX512-VNNI/VL, through
 * which the tests check this block on CPUs without AVX-VNNI.  rb rows by nv vectors of
 * columns from column col, both constant where inlined: rb*nv accumulators and rb
 * broadcasts stay within 16 registers, the weights read as memory operands.  (Two rows by
 * eight vectors, with a row count the compiler could not see, kept 24 vectors live:
 * every accumulator went through the stack on every quad.) */
#define FL_DEFINE_I8_VNNI256(NAME, TGT, DPBUSD)                                      \
TGT static inline __attribute__((always_inline)) void NAME##_rows(const int rb,      \
        const int nv, int col, int kq, const uint32_t *Q, ptrdiff_t ldq,             \
        const uint32_t *P, int32_t *acc, int add)                                    \
{                                                                                    \
    __m256i c[4][8];                                                                 \
    for (int r = 0; r < rb; r++)                                                     \
        for (int v = 0; v < nv; v++)                                                 \
            c[r][v] = add ? _mm256_loadu_si256((const __m256i *)(acc + r * 64 + col + v * 8)) \
                          : _mm256_setzero_si256();                                  \
    for (int kk = 0; kk < kq; kk++) {                                                \
        const uint32_t *pk = P + (ptrdiff_t)kk * 64 + col;                           \
        __m256i a[4];                                                                \
        for (int r = 0; r < rb; r++)                                                 \
            a[r] = _mm256_set1_epi32((int)Q[r * ldq + kk]);                          \
        for (int v = 0; v < nv; v++) {                                               \
            const __m256i b = _mm256_loadu_si256((const __m256i *)(pk + v * 8));     \
            for (int r = 0; r < rb; r++)                                             \
                c[r][v] = DPBUSD(c[r][v], a[r], b);                                  \
        }                                                                            \
    }                                                                                \
    for (int r = 0; r < rb; r++)                                                     \
        for (int v = 0; v < nv; v++)                                                 \
            _mm256_storeu_si256((__m256i *)(acc + r * 64 + col + v * 8), c[r][v]);   \
}                                                                                    \
                                                                                     \
/* Blocks of 4 rows by 2 vectors, 3 by 4, 2 by 4 or 1 by 8: 8 to 12 sums in flight. */ \
TGT static __attribute__((noinline)) void NAME(int R, int kq, const uint32_t *Q,     \
        ptrdiff_t ldq, const uint32_t *P, int32_t *acc, int add)                     \
{                                                                                    \
    for (int r0 = 0; r0 < R; r0 += 4) {                                              \
        const uint32_t *q = Q + r0 * ldq;                                            \
        int32_t *s = acc + r0 * 64;                                                  \
        switch (R - r0) {                                                            \
        case 1:                                                                      \
            NAME##_rows(1, 8, 0, kq, q, ldq, P, s, add);                             \
            break;                                                                   \
        case 2:                                                                      \
            for (int col = 0; col < 64; col += 32)                                   \
                NAME##_rows(2, 4, col, kq, q, ldq, P, s, add);                       \
            break;                                                                   \
        case 3:                                                                      \
            for (int col = 0; col < 64; col += 32)                                   \
                NAME##_rows(3, 4, col, kq, q, ldq, P, s, add);                       \
            break;                                                                   \
        default:                                                                     \
            for (int col = 0; col < 64; col += 16)                                   \
                NAME##_rows(4, 2, col, kq, q, ldq, P, s, add);                       \
            break;                                                                   \
        }                                                                            \
    }                                                                                \
}
FL_DEFINE_I8_VNNI256(fl_i8_block_avxvnni, FL_TGT_avxvnni, fl_dpbusd256_vex)
FL_DEFINE_I8_VNNI256(fl_i8_block_vnni256, FL_TGT_vnni, _mm256_dpbusd_epi32)

/* AMX-INT8: 16 or 32 rows by one panel, tiles of 16 x 16 int32 sums (the tile
 * configuration of bf16.h: every tile 16 rows of 64 bytes); the panel's quads read
 * straight from the packed layout (256-byte stride). acc: rows of 64 int32. */
FL_TGT_amxi8 static void fl_i8_amx_rows16(int kq16, const uint32_t *Q, ptrdiff_t ldq,
                                          const uint32_t *P, int32_t *acc)
{
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int kk = 0; kk < kq16; kk += 16) {
        const uint32_t *pk = P + (ptrdiff_t)kk * 64;
        _tile_loadd(4, Q + kk, ldq * 4);
        _tile_loadd(5, pk, 256);
        _tile_dpbusd(0, 4, 5);
        _tile_loadd(5, pk + 16, 256);
        _tile_dpbusd(1, 4, 5);
        _tile_loadd(5, pk + 32, 256);
        _tile_dpbusd(2, 4, 5);
        _tile_loadd(5, pk + 48, 256);
        _tile_dpbusd(3, 4, 5);
    }
    _tile_stored(0, acc, 256);
    _tile_stored(1, acc + 16, 256);
    _tile_stored(2, acc + 32, 256);
    _tile_stored(3, acc + 48, 256);
}

/* 32 rows: each tile of the panel serves two blocks of rows (see fl_amx_rows32). */
FL_TGT_amxi8 static void fl_i8_amx_rows32(int kq16, const uint32_t *Q, ptrdiff_t ldq,
                                          const uint32_t *P, int32_t *acc)
{
    for (int half = 0; half < 64; half += 32) {
        int32_t *c = acc + half;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int kk = 0; kk < kq16; kk += 16) {
            const uint32_t *pk = P + (ptrdiff_t)kk * 64 + half;
            _tile_loadd(4, Q + kk, ldq * 4);
            _tile_loadd(5, Q + 16 * ldq + kk, ldq * 4);
            _tile_loadd(6, pk, 256);
            _tile_loadd(7, pk + 16, 256);
            _tile_dpbusd(0, 4, 6);
            _tile_dpbusd(1, 4, 7);
            _tile_dpbusd(2, 5, 6);
            _tile_dpbusd(3, 5, 7);
        }
        _tile_stored(0, c, 256);
        _tile_stored(1, c + 16, 256);
        _tile_stored(2, c + 16 * 64, 256);
        _tile_stored(3, c + 16 * 64 + 16, 256);
    }
}

/* R rows (at most 32) by one panel: tiles for the blocks of 16 rows and 16 quads,
 * VNNI for the quads past a multiple of 16 and the rows past a block.  The caller
 * holds the tile configuration (fl_amx_begin). */
FL_TGT_amxi8 static void fl_i8_block_amx(int R, int kq, const uint32_t *Q, ptrdiff_t ldq,
                                         const uint32_t *P, int32_t *acc)
{
    const int kq16 = kq - kq % 16, tiled = R >= 32 ? 32 : R >= 16 ? 16 : 0;
    if (kq16 > 0 && tiled == 32)
        fl_i8_amx_rows32(kq16, Q, ldq, P, acc);
    else if (kq16 > 0 && tiled == 16)
        fl_i8_amx_rows16(kq16, Q, ldq, P, acc);
    const int done = kq16 > 0 ? tiled : 0;
    if (done > 0 && kq16 < kq)
        fl_i8_block_vnni(done, kq - kq16, Q + kq16, ldq, P + (ptrdiff_t)kq16 * 64, acc, 1);
    if (done < R)
        fl_i8_block_vnni(R - done, kq, Q + done * ldq, ldq, P, acc + done * 64, 0);
}
#endif

/* acc (R x 64) = add*acc + the int32 sums of R rows by one panel at `level`, any level
 * but AMX, or -1: the EVEX twin of the AVX-VNNI block (for the tests).  comp: -128 *
 * sum_k B[k][j] over the block's quads (fl_i8_row_sign_avx2 starts from it), or NULL.  0,
 * or -1 for a level this build has no such block for. */
static int fl_i8_block_add(int level, int R, int kq, const uint32_t *Q, ptrdiff_t ldq,
                           const uint32_t *P, int32_t *acc, int add, const int32_t *comp)
{
#if FL_X86
    if (level == -1)
        fl_i8_block_vnni256(R, kq, Q, ldq, P, acc, add);
    else if (level == FL_I8_VNNI)
        fl_i8_block_vnni(R, kq, Q, ldq, P, acc, add);
    else if (level == FL_I8_AVXVNNI)
        fl_i8_block_avxvnni(R, kq, Q, ldq, P, acc, add);
    else
#endif
    if (level >= FL_AVX512)
        fl_i8_block_avx512(R, kq, Q, ldq, P, acc, add, comp);
    else if (level == FL_AVX2)
        fl_i8_block_avx2(R, kq, Q, ldq, P, acc, add, comp);
    else if (level == FL_PORTABLE)
        fl_i8_block_portable(R, kq, Q, ldq, P, acc, add, comp);
    else
        return -1;
    return 0;
}

/* The int32 sums of R rows by one panel at `level` (AMX: the caller holds the tiles). */
static void fl_i8_block(int level, int R, int kq, const uint32_t *Q, ptrdiff_t ldq,
                        const uint32_t *P, int32_t *acc)
{
#if FL_X86
    if (level == FL_I8_AMX) {
        fl_i8_block_amx(R, kq, Q, ldq, P, acc);
        return;
    }
#endif
    fl_i8_block_add(level, R, kq, Q, ldq, P, acc, 0,
                    (const int32_t *)(P + (ptrdiff_t)(kq + 1) * 64));
}

/* No fusing of a product with a later sum into one FMA in this function: GCC fuses across
 * statements by default (-ffp-contract=fast), clang only within one expression. */
#if defined(__GNUC__) && !defined(__clang__)
#define FL_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define FL_NO_CONTRACT
#endif

/* G (R rows, the first `width` columns of a panel) = beta*G + (float)(acc + comp) *
 * (s[r] * scale[j]), product and sum rounded apart (FL_NO_CONTRACT) as at every level:
 * where the baseline ISA has FMA (AArch64, or x86 built with -march=native) GCC fused
 * them, and the results differed by an ulp from every other level's (tools/aarch64). */
static FL_NO_CONTRACT __attribute__((noinline)) void fl_i8_dequant(int R, int beta, const int32_t *acc,
        const uint32_t *P, int kq, const float *s, float *G, ptrdiff_t ldg, int width)
{
    const float *scale = (const float *)(P + (ptrdiff_t)kq * 64);
    const int32_t *comp = (const int32_t *)(P + (ptrdiff_t)(kq + 1) * 64);
    for (int r = 0; r < R; r++) {
        float *g = G + r * ldg;
        const int32_t *a = acc + r * 64;
        const float sr = s[r];
        for (int j = 0; j < width; j++) {
            const float f = sr * scale[j];
            const float v = (float)(a[j] + comp[j]) * f;
            g[j] = beta ? g[j] + v : v;
        }
    }
}

#if FL_X86
/* The same at AVX-512 for whole panels: the same operations in the same order; the
 * empty asm keeps the product from being fused with the sum (FMA would round once). */
FL_TGT_avx512 static void fl_i8_dequant_avx512(int R, int beta, const int32_t *acc,
        const uint32_t *P, int kq, const float *s, float *G, ptrdiff_t ldg)
{
    const float *scale = (const float *)(P + (ptrdiff_t)kq * 64);
    const int32_t *comp = (const int32_t *)(P + (ptrdiff_t)(kq + 1) * 64);
    __m512 sc[4];
    __m512i cp[4];
    for (int v = 0; v < 4; v++) {
        sc[v] = _mm512_loadu_ps(scale + 16 * v);
        cp[v] = _mm512_loadu_si512(comp + 16 * v);
    }
    for (int r = 0; r < R; r++) {
        const __m512 sr = _mm512_set1_ps(s[r]);
        float *g = G + r * ldg;
        for (int v = 0; v < 4; v++) {
            const __m512 f = _mm512_mul_ps(sr, sc[v]);
            const __m512i sum = _mm512_add_epi32(_mm512_loadu_si512(acc + r * 64 + 16 * v),
                                                 cp[v]);
            __m512 val = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), f);
            __asm__("" : "+v"(val));
            if (beta)
                val = _mm512_add_ps(_mm512_loadu_ps(g + 16 * v), val);
            _mm512_storeu_ps(g + 16 * v, val);
        }
    }
}

/* And at AVX2 (the same again). */
FL_TGT_avx2 static void fl_i8_dequant_avx2(int R, int beta, const int32_t *acc,
        const uint32_t *P, int kq, const float *s, float *G, ptrdiff_t ldg)
{
    const float *scale = (const float *)(P + (ptrdiff_t)kq * 64);
    const int32_t *comp = (const int32_t *)(P + (ptrdiff_t)(kq + 1) * 64);
    for (int r = 0; r < R; r++) {
        const __m256 sr = _mm256_set1_ps(s[r]);
        float *g = G + r * ldg;
        for (int v = 0; v < 8; v++) {
            const __m256 f = _mm256_mul_ps(sr, _mm256_loadu_ps(scale + 8 * v));
            const __m256i sum = _mm256_add_epi32(
                _mm256_loadu_si256((const __m256i *)(acc + r * 64 + 8 * v)),
                _mm256_loadu_si256((const __m256i *)(comp + 8 * v)));
            __m256 val = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), f);
            __asm__("" : "+x"(val));
            if (beta)
                val = _mm256_add_ps(_mm256_loadu_ps(g + 8 * v), val);
            _mm256_storeu_ps(g + 8 * v, val);
        }
    }
}
#endif

static void fl_i8_dequant_at(int level, int R, int beta, const int32_t *acc,
        const uint32_t *P, int kq, const float *s, float *G, ptrdiff_t ldg, int width)
{
#if FL_X86
    if (fl_i8_vec(level) >= FL_AVX512 && width == 64) {
        fl_i8_dequant_avx512(R, beta, acc, P, kq, s, G, ldg);
        return;
    }
    if (fl_i8_vec(level) == FL_AVX2 && width == 64) {
        fl_i8_dequant_avx2(R, beta, acc, P, kq, s, G, ldg);
        return;
    }
#endif
    (void)level;
    fl_i8_dequant(R, beta, acc, P, kq, s, G, ldg, width);
}

/* Rows a block of the products takes at `level`. */
static inline int fl_i8_rows(int level) { return level == FL_I8_AMX ? 32 : 4; }

/* G = beta*G + dequant(Q @ B) for quantized rows (Q, ldq words a row, scales s). */
static void fl_matmul_i8q(int level, int beta, int M, int N, int K, const uint32_t *Q,
                          ptrdiff_t ldq, const float *s, const uint32_t *BP, float *G,
                          ptrdiff_t ldg)
{
    const int kq = (K + 3) / 4, rows = fl_i8_panel_rows(K), n_panels = (N + 63) / 64;
    const int RB = fl_i8_rows(level);
    int32_t acc[32 * 64] __attribute__((aligned(64)));
#if FL_X86
    if (level == FL_I8_AMX)
        fl_amx_begin();
#endif
    for (int p = 0; p < n_panels; p++) {
        const uint32_t *P = BP + (ptrdiff_t)p * rows * 64;
        const int width = N - p * 64 < 64 ? N - p * 64 : 64;
        for (int m = 0; m < M; m += RB) {
            const int R = M - m < RB ? M - m : RB;
            fl_i8_block(level, R, kq, Q + m * ldq, ldq, P, acc);
            fl_i8_dequant_at(level, R, beta, acc, P, kq, s + m, G + m * ldg + p * 64, ldg,
                             width);
        }
    }
#if FL_X86
    if (level == FL_I8_AMX)
        fl_amx_end();
#endif
}

/* One timestep with int8 W_hh (see fl_lstm_step_* in kernels.h) on quantized h: for the
 * panels [p_lo, p_hi), G += dequant(Q @ W_hh^T), then the float32 gate math. */
#define FL_DEFINE_I8_GATES(ISA)                                                      \
FL_TGT_##ISA static void fl_i8_gates_##ISA(int M, int H, int p, const float *G,      \
        ptrdiff_t ldg, const float *bias, float *C, ptrdiff_t ldc, float *Hout,      \
        ptrdiff_t ldh)                                                               \
{                                                                                    \
    enum { U = 16 };                                                                 \
    const int n = H - p * U < U ? H - p * U : U;                                     \
    for (int m = 0; m < M; m++) {                                                    \
        const float *g = G + m * ldg + p * 64, *b = bias + p * 64;                   \
        if (n == U)                                                                  \
            fl_gates_f_##ISA(g, b, C + m * ldc + p * U, Hout + m * ldh + p * U);     \
        else                                                                         \
            fl_gates_part_f_##ISA(g, b, C + m * ldc + p * U, Hout + m * ldh + p * U, n); \
    }                                                                                \
}
FL_DEFINE_I8_GATES(avx512)
FL_DEFINE_I8_GATES(avx2)
FL_DEFINE_I8_GATES(portable)

static void fl_i8_gates(int level, int M, int H, int p, const float *G, ptrdiff_t ldg,
                        const float *bias, float *C, ptrdiff_t ldc, float *Hout, ptrdiff_t ldh)
{
    if (fl_i8_vec(level) >= FL_AVX512)
        fl_i8_gates_avx512(M, H, p, G, ldg, bias, C, ldc, Hout, ldh);
    else if (fl_i8_vec(level) == FL_AVX2)
        fl_i8_gates_avx2(M, H, p, G, ldg, bias, C, ldc, Hout, ldh);
    else
        fl_i8_gates_portable(M, H, p, G, ldg, bias, C, ldc, Hout, ldh);
}

static void fl_lstm_step_i8q(int level, int M, int K, int H, const uint32_t *Q,
        ptrdiff_t ldq, const float *s, const uint32_t *BP, float *G, ptrdiff_t ldg,
        const float *bias, float *C, ptrdiff_t ldc, float *Hout, ptrdiff_t ldh, int p_lo,
        int p_hi, int reverse)
{
    const int kq = (K + 3) / 4, rows = fl_i8_panel_rows(K), RB = fl_i8_rows(level);
    int32_t acc[32 * 64] __attribute__((aligned(64)));
#if FL_X86
    if (level == FL_I8_AMX && K > 0)
        fl_amx_begin();
#endif
    for (int i = p_lo; i < p_hi; i++) {
        const int p = reverse ? p_hi - 1 - (i - p_lo) : i;
        const uint32_t *P = BP + (ptrdiff_t)p * rows * 64;
        if (K > 0)
            for (int m = 0; m < M; m += RB) {
                const int R = M - m < RB ? M - m : RB;
                fl_i8_block(level, R, kq, Q + m * ldq, ldq, P, acc);
                fl_i8_dequant_at(level, R, 1, acc, P, kq, s + m, G + m * ldg + p * 64, ldg,
                                 64);
            }
        fl_i8_gates(level, M, H, p, G, ldg, bias, C, ldc, Hout, ldh);
    }
#if FL_X86
    if (level == FL_I8_AMX && K > 0)
        fl_amx_end();
#endif
}

/* The row stride, in words, of fl_i8_quantized's rows: whole cache lines, so that an AMX
 * tile row is one line (see fl_bf16_ld). */
static inline ptrdiff_t fl_i8_ld(int K)
{
    return (((ptrdiff_t)K + 3) / 4 + 15) & ~(ptrdiff_t)15;
}

/* Quantized rows on the heap, from a cache line: words (rows fl_i8_ld(K) apart) then
 * scales, in one block; NULL when out of memory. */
static uint32_t *fl_i8_quantized(int level, int M, int K, const float *A, ptrdiff_t lda,
                                 float **s)
{
    const size_t ld = (size_t)fl_i8_ld(K), m = M > 0 ? (size_t)M : 1;
    const size_t words = m * (ld > 0 ? ld : 16);
    uint32_t *Q = (uint32_t *)aligned_alloc(64, (words * 4 + m * sizeof(float) + 63) & ~(size_t)63);
    if (Q == NULL)
        return NULL;
    *s = (float *)(Q + words);
    fl_i8_quantize(level, M, K, A, lda, Q, (ptrdiff_t)ld, *s);
    return Q;
}

/* Out of memory for the quantized rows: one row at a time, its quads through the
 * stack in slices (the int32 sums carry from slice to slice; exactly the same). */
#define FL_I8_SLICE 1024
static void fl_i8_row_sliced(int level, int beta, int K, const float *a, const uint32_t *P,
                             float *g, int width)
{
    uint32_t buf[FL_I8_SLICE];
    int32_t acc[64];
    float s, inv;
    const int kq = (K + 3) / 4, lv = level == FL_I8_AMX ? FL_I8_VNNI : level;
    fl_i8_row_scale(K, a, &s, &inv);
    for (int q0 = 0; q0 < kq || q0 == 0; q0 += FL_I8_SLICE) {
        const int nq = kq - q0 < FL_I8_SLICE ? kq - q0 : FL_I8_SLICE;
        const int kb = K - 4 * q0 < 4 * nq ? K - 4 * q0 : 4 * nq;
        fl_i8_row_bytes(kb, a + 4 * q0, inv, buf);
        const uint32_t *pk = P + (ptrdiff_t)q0 * 64;
        fl_i8_block_add(lv, 1, nq, buf, 0, pk, acc, q0 > 0, NULL); /* a slice's comp: none */
        if (kq == 0)
            break;
    }
    fl_i8_dequant(1, beta, acc, P, kq, &s, g, 0, width);
}

static void fl_matmul_i8(int level, int beta, int M, int N, int K, const float *A,
                         ptrdiff_t lda, const uint32_t *BP, float *G, ptrdiff_t ldg)
{
    float *s;
    uint32_t *Q = fl_i8_quantized(level, M, K, A, lda, &s);
    if (Q == NULL) {
        const int rows = fl_i8_panel_rows(K), n_panels = (N + 63) / 64;
        for (int m = 0; m < M; m++)
            for (int p = 0; p < n_panels; p++)
                fl_i8_row_sliced(level, beta, K, A + m * lda, BP + (ptrdiff_t)p * rows * 64,
                                 G + m * ldg + p * 64, N - p * 64 < 64 ? N - p * 64 : 64);
        return;
    }
    fl_matmul_i8q(level, beta, M, N, K, Q, fl_i8_ld(K), s, BP, G, ldg);
    free(Q);
}

static void fl_lstm_step_i8(int level, int M, int K, int H, const float *A, ptrdiff_t lda,
        const uint32_t *BP, float *G, ptrdiff_t ldg, const float *bias, float *C,
        ptrdiff_t ldc, float *Hout, ptrdiff_t ldh, int p_lo, int p_hi, int reverse)
{
    float *s = NULL;
    uint32_t *Q = K > 0 ? fl_i8_quantized(level, M, K, A, lda, &s) : NULL;
    if (K > 0 && Q == NULL) {
        const int rows = fl_i8_panel_rows(K);
        for (int i = p_lo; i < p_hi; i++) {
            const int p = reverse ? p_hi - 1 - (i - p_lo) : i;
            for (int m = 0; m < M; m++)
                fl_i8_row_sliced(level, 1, K, A + m * lda, BP + (ptrdiff_t)p * rows * 64,
                                 G + m * ldg + p * 64, 64);
            fl_i8_gates(level, M, H, p, G, ldg, bias, C, ldc, Hout, ldh);
        }
        return;
    }
    fl_lstm_step_i8q(level, M, K, H, Q, fl_i8_ld(K), s, BP, G, ldg, bias, C, ldc, Hout, ldh,
                     p_lo, p_hi, reverse);
    free(Q);
}
#endif
