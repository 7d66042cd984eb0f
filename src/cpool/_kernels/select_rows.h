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
/* acc[i] += w * row[i] */                                                            \
static inline void cs_axpy_##SFX(T *CS_RESTRICT acc, const T *CS_RESTRICT row,        \
                                 ptrdiff_t n, T w)                                    \
{                                                                                     \
    CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += w * row[i];                   \
}                                                                                     \
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
}                                                                                     \
                                                                                      \
/* out[i] = w * row[i] */                                                             \
static inline void cs_scale_##SFX(T *CS_RESTRICT out, const T *CS_RESTRICT row,       \
                                  ptrdiff_t n, T w)                                   \
{                                                                                     \
    CS_SIMD for (ptrdiff_t i = 0; i < n; ++i) out[i] = w * row[i];                    \
}                                                                                     \
                                                                                      \
/* Channels-last block of `cb` planes `plane` apart, their first n elements:           \
 * dst[p*ld + i] = src[i*plane + p] for p < n. */                                     \
static inline void cs_to_cl_##SFX(T *CS_RESTRICT dst, const T *CS_RESTRICT src,       \
                                  ptrdiff_t cb, ptrdiff_t n, ptrdiff_t plane,         \
                                  ptrdiff_t ld)                                       \
{                                                                                     \
    for (ptrdiff_t i = 0; i < cb; ++i) {                                              \
        const T *s = src + i * plane;                                                 \
        for (ptrdiff_t p = 0; p < n; ++p) dst[p * ld + i] = s[p];                     \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* The inverse: dst[i*plane + p] = src[p*ld + i]. */                                  \
static inline void cs_from_cl_##SFX(T *CS_RESTRICT dst, const T *CS_RESTRICT src,     \
                                    ptrdiff_t cb, ptrdiff_t plane, ptrdiff_t ld)      \
{                                                                                     \
    for (ptrdiff_t i = 0; i < cb; ++i) {                                              \
        T *d = dst + i * plane;                                                       \
        for (ptrdiff_t p = 0; p < plane; ++p) d[p] = src[p * ld + i];                 \
    }                                                                                 \
}

CS_DEFINE_ROWS(float, f32)
CS_DEFINE_ROWS(double, f64)

#undef CS_DEFINE_ROWS

#endif /* CPOOL_SELECT_ROWS_H */
