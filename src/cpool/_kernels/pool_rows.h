/* Row primitives of the separable pooling pipeline.
 *
 * A pooled output row is made in two passes over thread-private buffers:
 *   1. vertical: the input rows under the window (depth x height) are reduced
 *      element-wise into a padded row buffer `acc`;
 *   2. horizontal: each output element reduces `acc[o*s + k*d]` over k.
 * The padded buffer holds the pad value (-inf for max, 0 for sums) outside the
 * input, so the horizontal pass has no border branches.
 *
 * Kept in C so that `restrict` and `#pragma omp simd` reach the compiler; the
 * common (kernel, stride) pairs get their own loops because GCC vectorizes a
 * compile-time stride of 2 (by deinterleaving) but not a runtime stride.
 */
#ifndef CPOOL_POOL_ROWS_H
#define CPOOL_POOL_ROWS_H

#include <math.h>
#include <stddef.h>

#if defined(__GNUC__) || defined(__clang__)
#define CP_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define CP_RESTRICT __restrict
#else
#define CP_RESTRICT
#endif

#if defined(_OPENMP) || defined(__GNUC__) || defined(__clang__)
#define CP_SIMD _Pragma("omp simd")
#else
#define CP_SIMD
#endif

/* PyTorch's max rule: take v when it is larger or NaN; ties keep the earlier value.
 * `v != v` is the NaN test; it survives because we never build with -ffast-math. */
#define CP_MAX(m, v) (((v) > (m) || (v) != (v)) ? (v) : (m))

/* Vertical transforms applied to each input element before it is summed. */
enum { CP_SUM = 0, CP_SUM_ABS = 1, CP_SUM_SQ = 2, CP_SUM_POW = 3 };

#define CP_DEFINE_ROWS(T, SFX, FABS, POW, SQRT)                                       \
                                                                                      \
static inline void cp_fill_##SFX(T *CP_RESTRICT a, ptrdiff_t n, T v)                  \
{                                                                                     \
    CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) a[i] = v;                               \
}                                                                                     \
                                                                                      \
/* acc = row (first) or acc = max(acc, row). */                                       \
static inline void cp_vmax_##SFX(T *CP_RESTRICT acc, const T *CP_RESTRICT row,        \
                                 ptrdiff_t n, int first)                              \
{                                                                                     \
    if (first) {                                                                      \
        CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = row[i];                    \
    } else {                                                                          \
        CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) {                                   \
            T m = acc[i], v = row[i];                                                 \
            acc[i] = CP_MAX(m, v);                                                    \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* acc = f(row) (first) or acc += f(row), f chosen by `op`. */                        \
static inline void cp_vsum_##SFX(T *CP_RESTRICT acc, const T *CP_RESTRICT row,        \
                                 ptrdiff_t n, int first, int op, T p)                 \
{                                                                                     \
    if (first) {                                                                      \
        switch (op) {                                                                 \
        case CP_SUM: CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = row[i]; break;\
        case CP_SUM_ABS:                                                              \
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = FABS(row[i]); break;   \
        case CP_SUM_SQ:                                                               \
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = row[i] * row[i]; break;\
        default:                                                                      \
            for (ptrdiff_t i = 0; i < n; ++i) acc[i] = POW(FABS(row[i]), p); break;   \
        }                                                                             \
    } else {                                                                          \
        switch (op) {                                                                 \
        case CP_SUM: CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += row[i]; break;\
        case CP_SUM_ABS:                                                              \
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += FABS(row[i]); break;  \
        case CP_SUM_SQ:                                                               \
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += row[i] * row[i]; break;\
        default:                                                                      \
            for (ptrdiff_t i = 0; i < n; ++i) acc[i] += POW(FABS(row[i]), p); break;  \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* out[o] = max_k acc[o*s + k*d] in scan order. */                                    \
static inline void cp_hmax_##SFX(T *CP_RESTRICT out, const T *CP_RESTRICT acc,        \
                                 ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)  \
{                                                                                     \
    if (d == 1 && s == 2 && k == 2) {                                                 \
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {                                   \
            T m = acc[2 * o], v = acc[2 * o + 1];                                     \
            out[o] = CP_MAX(m, v);                                                    \
        }                                                                             \
    } else if (d == 1 && s == 2 && k == 3) {                                          \
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {                                   \
            T m = acc[2 * o], v1 = acc[2 * o + 1], v2 = acc[2 * o + 2];               \
            m = CP_MAX(m, v1);                                                        \
            out[o] = CP_MAX(m, v2);                                                   \
        }                                                                             \
    } else if (d == 1 && s == 1 && k == 3) {                                          \
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {                                   \
            T m = acc[o], v1 = acc[o + 1], v2 = acc[o + 2];                           \
            m = CP_MAX(m, v1);                                                        \
            out[o] = CP_MAX(m, v2);                                                   \
        }                                                                             \
    } else if (d == 1 && s == 1 && k == 2) {                                          \
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {                                   \
            T m = acc[o], v = acc[o + 1];                                             \
            out[o] = CP_MAX(m, v);                                                    \
        }                                                                             \
    } else {                                                                          \
        for (ptrdiff_t o = 0; o < n; ++o) {                                           \
            const T *w = acc + o * s;                                                 \
            T m = w[0];                                                               \
            for (ptrdiff_t t = 1; t < k; ++t) { T v = w[t * d]; m = CP_MAX(m, v); }   \
            out[o] = m;                                                               \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* out[o] = sum_k acc[o*s + k*d], summed in scan order. */                            \
static inline void cp_hsum_##SFX(T *CP_RESTRICT out, const T *CP_RESTRICT acc,        \
                                 ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)  \
{                                                                                     \
    if (d == 1 && s == 2 && k == 2) {                                                 \
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) out[o] = acc[2 * o] + acc[2 * o + 1];\
    } else if (d == 1 && s == 2 && k == 3) {                                          \
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o)                                     \
            out[o] = acc[2 * o] + acc[2 * o + 1] + acc[2 * o + 2];                    \
    } else if (d == 1 && s == 1 && k == 3) {                                          \
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o)                                     \
            out[o] = acc[o] + acc[o + 1] + acc[o + 2];                                \
    } else {                                                                          \
        for (ptrdiff_t o = 0; o < n; ++o) {                                           \
            const T *w = acc + o * s;                                                 \
            T m = w[0];                                                               \
            for (ptrdiff_t t = 1; t < k; ++t) m += w[t * d];                          \
            out[o] = m;                                                               \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
                                                                                      \
/* Average: out[o] = out[o] / (row_div * col_div[o]). */                              \
static inline void cp_divide_##SFX(T *CP_RESTRICT out, const double *CP_RESTRICT col_div,\
                                   ptrdiff_t n, double row_div)                       \
{                                                                                     \
    CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) out[o] = out[o] / (T)(row_div * col_div[o]);\
}                                                                                     \
                                                                                      \
/* Lp norm: out[o] = out[o] ** (1/p). */                                              \
static inline void cp_root_##SFX(T *CP_RESTRICT out, ptrdiff_t n, int op, T p)        \
{                                                                                     \
    if (op == CP_SUM_ABS) return;                                                     \
    if (op == CP_SUM_SQ) { CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) out[o] = SQRT(out[o]); return; }\
    T inv = (T)1 / p;                                                                 \
    for (ptrdiff_t o = 0; o < n; ++o) out[o] = POW(out[o], inv);                      \
}                                                                                     \
                                                                                      \
/* Horizontal max with the within-row argmax `tap` (scan order, NaN wins, ties keep   \
 * the first). `first_tap[o]` is the first tap inside the input, PyTorch's index for  \
 * a window whose values are all -inf. */                                             \
static inline void cp_hargmax_##SFX(T *CP_RESTRICT out, int *CP_RESTRICT tap,         \
                                    const T *CP_RESTRICT acc, const int *CP_RESTRICT first_tap,\
                                    ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d) \
{                                                                                     \
    for (ptrdiff_t o = 0; o < n; ++o) {                                               \
        const T *w = acc + o * s;                                                     \
        T m = -INFINITY;                                                              \
        int best = first_tap[o];                                                      \
        for (ptrdiff_t t = 0; t < k; ++t) {                                           \
            T v = w[t * d];                                                           \
            if (v > m || v != v) { m = v; best = (int)t; }                            \
        }                                                                             \
        out[o] = m;                                                                   \
        tap[o] = best;                                                                \
    }                                                                                 \
}

CP_DEFINE_ROWS(float, f32, fabsf, powf, sqrtf)
CP_DEFINE_ROWS(double, f64, fabs, pow, sqrt)

#endif /* CPOOL_POOL_ROWS_H */
