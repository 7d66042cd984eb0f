/* Row primitives of the RoI and masked-sequence kernels: weighted sums, running
 * argmax and gradient selection over a contiguous run of channels (or steps).
 *
 * Kept in C, like pool_rows.h, so that `restrict` and `#pragma omp simd` reach the
 * compiler. Every loop treats element i on its own, so the result of element i does
 * not depend on n or on where the run starts: splitting channels into blocks of any
 * size (one per thread or several) gives bitwise-identical results.
 */
#ifndef CPOOL_SELECT_ROWS_H
#define CPOOL_SELECT_ROWS_H

#include <stddef.h>
#include <string.h>

#include "cp_common.h"
#define CS_RESTRICT CP_RESTRICT
#define CS_SIMD CP_SIMD
#if defined(_OPENMP) || defined(__GNUC__) || defined(__clang__)
/* a sum reduction into the variable named s (baseline width only: its bits depend on it) */
#define CS_SIMD_SUM _Pragma("omp simd reduction(+:s)")
#else
#define CS_SIMD_SUM
#endif

/* torch.max(dim)'s rule: a larger value wins, ties keep the earlier one, and the first
 * NaN wins and stays (`v != v` is the NaN test; we never build with fast-math flags). */
#define CS_TAKES(v, m) ((v) > (m) || ((v) != (v) && (m) == (m)))

#define CS_DEFINE_ROWS(T, SFX)                                                        \
                                                                                      \
/* Running argmax of the terms w * row[i]: on the first term m = term and arg = tap;  \
 * after that the term replaces m (and arg becomes tap) when CS_TAKES says so. */     \
static inline void cs_wargmax_##SFX(T *CS_RESTRICT m, int *CS_RESTRICT arg,           \
                                    const T *CS_RESTRICT row, ptrdiff_t n, T w,       \
                                    int tap, int first)                               \
{                                                                                     \
    if (first) {                                                                      \
        CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) { m[i] = w * row[i]; arg[i] = tap; }\
    } else {                                                                          \
        CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                   \
            T v = w * row[i], old = m[i];                                             \
            int take = CS_TAKES(v, old);                                              \
            m[i] = take ? v : old;                                                    \
            arg[i] = take ? tap : arg[i];                                             \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* The same without a weight (w = 1 exactly) and without the argmax when arg is NULL. */\
static inline void cs_argmax_##SFX(T *CS_RESTRICT m, int *CS_RESTRICT arg,            \
                                   const T *CS_RESTRICT row, ptrdiff_t n, int tap,    \
                                   int first)                                         \
{                                                                                     \
    if (first) {                                                                      \
        memcpy(m, row, (size_t)n * sizeof(T));                                        \
        if (arg) { CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) arg[i] = tap; }          \
    } else if (arg) {                                                                 \
        CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                   \
            T v = row[i], old = m[i];                                                 \
            int take = CS_TAKES(v, old);                                              \
            m[i] = take ? v : old;                                                    \
            arg[i] = take ? tap : arg[i];                                             \
        }                                                                             \
    } else {                                                                          \
        CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                   \
            T v = row[i], old = m[i];                                                 \
            m[i] = CS_TAKES(v, old) ? v : old;                                        \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* acc[i] = row[i] (first) or acc[i] += row[i]. */                                    \
static inline void cs_accumulate_##SFX(T *CS_RESTRICT acc, const T *CS_RESTRICT row,  \
                                       ptrdiff_t n, int first)                        \
{                                                                                     \
    if (first) {                                                                      \
        memcpy(acc, row, (size_t)n * sizeof(T));                                      \
    } else {                                                                          \
        CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += row[i];                   \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* Sum of row[0:n] (mask[i] != 0 only, when mask is not NULL). */                     \
static inline T cs_sum_##SFX(const T *CS_RESTRICT row,                                \
                             const unsigned char *CS_RESTRICT mask, ptrdiff_t n)      \
{                                                                                     \
    T s = 0;                                                                          \
    if (mask) {                                                                       \
        CS_SIMD_SUM for (ptrdiff_t i = 0; i < n; ++i) {                               \
            T v = row[i];                                                             \
            s += mask[i] ? v : (T)0;                                                  \
        }                                                                             \
    } else {                                                                          \
        CS_SIMD_SUM for (ptrdiff_t i = 0; i < n; ++i) s += row[i];                 \
    }                                                                                 \
    return s;                                                                         \
}                                                                                     \
                                                                                      \
/* out[i] = (arg[i] == tap) ? g[i] : 0 */                                             \
static inline void cs_select_##SFX(T *CS_RESTRICT out, const T *CS_RESTRICT g,        \
                                   const int *CS_RESTRICT arg, ptrdiff_t n, int tap)  \
{                                                                                     \
    CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                       \
        T v = g[i]; /* an unconditional load keeps the loop branch-free */            \
        out[i] = arg[i] == tap ? v : (T)0;                                            \
    }                                                                                 \
}

CS_DEFINE_ROWS(float, f32)
CS_DEFINE_ROWS(double, f64)

#undef CS_DEFINE_ROWS

/* dst[c * dld + r] = src[r * sld + c] for r < rows, c < cols: a channel block to and
 * from channels-last (cl_transpose.h's vector transposes, copies of bits). */
#define CP_ISA cs_base
#define CP_TARGET
#define CP_TR_SSE2 CP_HAVE_SSE2
#define CP_TR_AVX2 0
#include "cl_transpose.h"
#undef CP_ISA
#undef CP_TARGET
#undef CP_TR_SSE2
#undef CP_TR_AVX2
#if CP_HAVE_X86_DISPATCH
#define CP_ISA cs_avx2
#define CP_TARGET CP_TARGET_AVX2
#define CP_TR_SSE2 0
#define CP_TR_AVX2 1
#include "cl_transpose.h"
#undef CP_ISA
#undef CP_TARGET
#undef CP_TR_SSE2
#undef CP_TR_AVX2
#endif

typedef void (*cs_transpose_t)(void *dst, ptrdiff_t dld, const void *src, ptrdiff_t sld,
                               ptrdiff_t rows, ptrdiff_t cols);

/* The transpose of `bytes`-byte (4 or 8) elements at instruction set `level` (AVX2 from
 * level 1 where compiled). */
static inline cs_transpose_t cs_transpose_select(int level, int bytes)
{
#if CP_HAVE_X86_DISPATCH
    if (level >= 1) return bytes == 4 ? cp_transpose4_cs_avx2 : cp_transpose8_cs_avx2;
#endif
    (void)level;
    return bytes == 4 ? cp_transpose4_cs_base : cp_transpose8_cs_base;
}

/* out[i] = the sum over taps t < n_taps, in order from +0, of
 * w[t] * src[off[t] + i], for i < n (one bin of RoI align's average): tap after tap,
 * out[i] += w[t] * row[i], so the same bits at any vector width. */
#define CS_DEFINE_TAPS_SUM(T, SFX, ISA, TARGET)                                        \
static inline TARGET void cs_taps_sum_##SFX##_##ISA(                                   \
    T *CS_RESTRICT out, const T *CS_RESTRICT src, const ptrdiff_t *off, const T *w,   \
    ptrdiff_t n_taps, ptrdiff_t n)                                                     \
{                                                                                      \
    CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) out[i] = 0;                              \
    for (ptrdiff_t t = 0; t < n_taps; ++t) {                                           \
        const T *CS_RESTRICT r = src + off[t];                                         \
        const T wt = w[t];                                                             \
        CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) out[i] += wt * r[i];                 \
    }                                                                                  \
}

/* dst[off[t] + i] += w[t] * g[i] for i < n, tap after tap (the gradient of
 * cs_taps_sum, tap after tap: the same bits at any vector width). */
#define CS_DEFINE_TAPS_SPREAD(T, SFX, ISA, TARGET)                                     \
static inline TARGET void cs_taps_spread_##SFX##_##ISA(                                \
    T *CS_RESTRICT dst, const T *CS_RESTRICT g, const ptrdiff_t *off, const T *w,     \
    ptrdiff_t n_taps, ptrdiff_t n)                                                     \
{                                                                                      \
    for (ptrdiff_t t = 0; t < n_taps; ++t) {                                           \
        T *CS_RESTRICT d = dst + off[t];                                               \
        const T wt = w[t];                                                             \
        CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) d[i] += wt * g[i];                   \
    }                                                                                  \
}

#define CS_NO_TARGET
CS_DEFINE_TAPS_SPREAD(float, f32, base, CS_NO_TARGET)
CS_DEFINE_TAPS_SPREAD(double, f64, base, CS_NO_TARGET)
#if CP_HAVE_X86_DISPATCH
CS_DEFINE_TAPS_SPREAD(float, f32, avx2, CP_TARGET_AVX2)
CS_DEFINE_TAPS_SPREAD(double, f64, avx2, CP_TARGET_AVX2)
#endif
CS_DEFINE_TAPS_SUM(float, f32, base, CS_NO_TARGET)
CS_DEFINE_TAPS_SUM(double, f64, base, CS_NO_TARGET)
#if CP_HAVE_X86_DISPATCH
CS_DEFINE_TAPS_SUM(float, f32, avx2, CP_TARGET_AVX2)
CS_DEFINE_TAPS_SUM(double, f64, avx2, CP_TARGET_AVX2)
#endif
#undef CS_NO_TARGET
#undef CS_DEFINE_TAPS_SUM
#undef CS_DEFINE_TAPS_SPREAD

#if CP_HAVE_X86_DISPATCH
/* The lanes of 16 that hold channels when `left` channels remain. */
static inline __attribute__((target("avx512f"))) __mmask16 cs_lanes(ptrdiff_t left)
{
    return (__mmask16)(left >= 16 ? 0xFFFFu : left > 0 ? (1u << left) - 1 : 0);
}

/* nv vectors of channels from src + off[t] (lanes past `left` masked off unless `full`),
 * summed over the taps in nv registers and stored to out. */
static inline __attribute__((target("avx512f"), always_inline)) void cs_taps_sum_vectors(
    float *CS_RESTRICT out, const float *CS_RESTRICT src, const ptrdiff_t *off,
    const float *w, ptrdiff_t n_taps, ptrdiff_t left, const int nv, const int full)
{
    __mmask16 k[8];
    __m512 a[8];
    for (int v = 0; v < nv; ++v) {
        k[v] = full ? (__mmask16)0xFFFF : cs_lanes(left - 16 * v);
        a[v] = _mm512_setzero_ps();
    }
    for (ptrdiff_t t = 0; t < n_taps; ++t) {
        const float *r = src + off[t];
        const __m512 wt = _mm512_set1_ps(w[t]);
#pragma GCC unroll 8
        for (int v = 0; v < nv; ++v) {
            __m512 x = full ? _mm512_loadu_ps(r + 16 * v)
                            : _mm512_maskz_loadu_ps(k[v], r + 16 * v);
            a[v] = _mm512_add_ps(a[v], _mm512_mul_ps(wt, x));
        }
    }
    for (int v = 0; v < nv; ++v) {
        if (full)
            _mm512_storeu_ps(out + 16 * v, a[v]);
        else
            _mm512_mask_storeu_ps(out + 16 * v, k[v], a[v]);
    }
}

/* cs_taps_sum with 128 channels at a time held in eight registers across all the taps
 * (eight chains of adds hide their latency, and the taps are read half as often as with
 * four), then 64 with lanes past n masked off: the same multiplies and adds, so the same
 * bits. */
static inline __attribute__((target("avx512f"))) void cs_taps_sum_f32_avx512(
    float *CS_RESTRICT out, const float *CS_RESTRICT src, const ptrdiff_t *off,
    const float *w, ptrdiff_t n_taps, ptrdiff_t n)
{
    ptrdiff_t i0 = 0;
    for (; i0 + 128 <= n; i0 += 128)
        cs_taps_sum_vectors(out + i0, src + i0, off, w, n_taps, 128, 8, 1);
    for (; i0 < n; i0 += 64)
        cs_taps_sum_vectors(out + i0, src + i0, off, w, n_taps, n - i0, 4, 0);
}

/* cs_taps_spread with 64 channels of g held in four registers across all the taps. */
static inline __attribute__((target("avx512f"))) void cs_taps_spread_f32_avx512(
    float *CS_RESTRICT dst, const float *CS_RESTRICT g, const ptrdiff_t *off,
    const float *w, ptrdiff_t n_taps, ptrdiff_t n)
{
    for (ptrdiff_t i0 = 0; i0 < n; i0 += 64) {
        const __mmask16 k0 = cs_lanes(n - i0), k1 = cs_lanes(n - i0 - 16),
                        k2 = cs_lanes(n - i0 - 32), k3 = cs_lanes(n - i0 - 48);
        const __m512 g0 = _mm512_maskz_loadu_ps(k0, g + i0);
        const __m512 g1 = _mm512_maskz_loadu_ps(k1, g + i0 + 16);
        const __m512 g2 = _mm512_maskz_loadu_ps(k2, g + i0 + 32);
        const __m512 g3 = _mm512_maskz_loadu_ps(k3, g + i0 + 48);
        for (ptrdiff_t t = 0; t < n_taps; ++t) {
            float *d = dst + off[t] + i0;
            const __m512 wt = _mm512_set1_ps(w[t]);
#define CS_SPREAD(K, G, AT) \
            _mm512_mask_storeu_ps(d + AT, K, _mm512_add_ps(_mm512_maskz_loadu_ps(K, d + AT), \
                                                           _mm512_mul_ps(wt, G)))
            CS_SPREAD(k0, g0, 0);
            CS_SPREAD(k1, g1, 16);
            CS_SPREAD(k2, g2, 32);
            CS_SPREAD(k3, g3, 48);
#undef CS_SPREAD
        }
    }
}
#endif

/* cs_taps_sum and cs_taps_spread at instruction set `level` (0 baseline, 1 AVX2,
 * 2 AVX-512, capped at what was compiled; float64 keeps its AVX2 copy on AVX-512). */
typedef void (*cs_taps_sum_f32_t)(float *, const float *, const ptrdiff_t *, const float *,
                                  ptrdiff_t, ptrdiff_t);
typedef void (*cs_taps_sum_f64_t)(double *, const double *, const ptrdiff_t *,
                                  const double *, ptrdiff_t, ptrdiff_t);
typedef void (*cs_taps_spread_f32_t)(float *, const float *, const ptrdiff_t *,
                                     const float *, ptrdiff_t, ptrdiff_t);
typedef void (*cs_taps_spread_f64_t)(double *, const double *, const ptrdiff_t *,
                                     const double *, ptrdiff_t, ptrdiff_t);

#if CP_HAVE_X86_DISPATCH
#define CS_SELECT(BASE, AVX2, AVX512) return level >= 2 ? AVX512 : level == 1 ? AVX2 : BASE;
#else
#define CS_SELECT(BASE, AVX2, AVX512) (void)level; return BASE;
#endif

static inline cs_taps_sum_f32_t cs_taps_sum_f32_select(int level)
{
    CS_SELECT(cs_taps_sum_f32_base, cs_taps_sum_f32_avx2, cs_taps_sum_f32_avx512)
}

static inline cs_taps_sum_f64_t cs_taps_sum_f64_select(int level)
{
    CS_SELECT(cs_taps_sum_f64_base, cs_taps_sum_f64_avx2, cs_taps_sum_f64_avx2)
}

static inline cs_taps_spread_f32_t cs_taps_spread_f32_select(int level)
{
    CS_SELECT(cs_taps_spread_f32_base, cs_taps_spread_f32_avx2, cs_taps_spread_f32_avx512)
}

static inline cs_taps_spread_f64_t cs_taps_spread_f64_select(int level)
{
    CS_SELECT(cs_taps_spread_f64_base, cs_taps_spread_f64_avx2, cs_taps_spread_f64_avx2)
}
#undef CS_SELECT

#endif /* CPOOL_SELECT_ROWS_H */
