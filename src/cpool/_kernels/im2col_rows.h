/* Inner loops of im2col / col2im (see im2col.pyx for the layout).
 *
 * Kept in C so that `restrict` and `#pragma omp simd` reach the compiler: the rows are
 * short (OW is 3..30 in typical CNNs), so a libc memcpy call or a runtime alias check
 * per row costs as much as the copy itself. Stride 1 gets its own vectorized loop
 * because GCC does not vectorize a runtime stride.
 */
#ifndef CPOOL_IM2COL_ROWS_H
#define CPOOL_IM2COL_ROWS_H

#include <stddef.h>
#include <string.h>

#include "cp_common.h"

/* One (row, sample) block of col: OH rows of OW taps from one input plane.
 * Input row ih = oh*sh + ih0; within it, column ow reads plane[ih*W + ow*sw + off]
 * for lo <= ow < hi, and every other tap is padding (0). */
#define CP_IM2COL_DEFS(T, SUF)                                                          \
static inline void cp_im2col_block_##SUF(T *CP_RESTRICT dst, const T *CP_RESTRICT plane, \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t sh,           \
        ptrdiff_t sw, ptrdiff_t ih0, ptrdiff_t off, ptrdiff_t lo, ptrdiff_t hi)       \
{                                                                                       \
    for (ptrdiff_t oh = 0; oh < OH; oh++, dst += OW) {                                  \
        ptrdiff_t ih = oh * sh + ih0;                                                   \
        if (ih < 0 || ih >= H || lo >= hi) {                                            \
            for (ptrdiff_t ow = 0; ow < OW; ow++) dst[ow] = 0;                          \
            continue;                                                                   \
        }                                                                               \
        const T *src = plane + ih * W + lo * sw + off;  /* the tap of column lo */      \
        T *out = dst + lo;                                                              \
        ptrdiff_t n = hi - lo;                                                          \
        for (ptrdiff_t ow = 0; ow < lo; ow++) dst[ow] = 0;                              \
        if (sw == 1) {                                                                  \
            CP_SIMD for (ptrdiff_t i = 0; i < n; i++) out[i] = src[i];                  \
        } else {                                                                        \
            for (ptrdiff_t i = 0; i < n; i++) out[i] = src[i * sw];                     \
        }                                                                               \
        for (ptrdiff_t ow = hi; ow < OW; ow++) dst[ow] = 0;                             \
    }                                                                                   \
}                                                                                       \
/* The adjoint: add the block back onto the plane (taps in padding are dropped). */    \
static inline void cp_col2im_block_##SUF(T *CP_RESTRICT plane, const T *CP_RESTRICT src, \
        ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t sh,           \
        ptrdiff_t sw, ptrdiff_t ih0, ptrdiff_t off, ptrdiff_t lo, ptrdiff_t hi)       \
{                                                                                       \
    for (ptrdiff_t oh = 0; oh < OH; oh++, src += OW) {                                  \
        ptrdiff_t ih = oh * sh + ih0;                                                   \
        if (ih < 0 || ih >= H) continue;                                                \
        T *dst = plane + ih * W + lo * sw + off;                                        \
        const T *in = src + lo;                                                         \
        ptrdiff_t n = hi - lo;                                                          \
        if (sw == 1) {                                                                  \
            CP_SIMD for (ptrdiff_t i = 0; i < n; i++) dst[i] += in[i];                  \
        } else {                                                                        \
            for (ptrdiff_t i = 0; i < n; i++) dst[i * sw] += in[i];                     \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
/* Sum of a row in double with 8 interleaved partial sums: vectorizable, and the order \
 * depends only on n, so every thread count gives the same bits. */                    \
static inline double cp_row_sum_##SUF(const T *CP_RESTRICT a, ptrdiff_t n)              \
{                                                                                       \
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                           \
    ptrdiff_t i = 0;                                                                    \
    for (; i + 8 <= n; i += 8) {                                                        \
        for (int j = 0; j < 8; j++) acc[j] += (double)a[i + j];                         \
    }                                                                                   \
    double tail = 0;                                                                    \
    for (; i < n; i++) tail += (double)a[i];                                            \
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) \
           + tail;                                                                      \
}

CP_IM2COL_DEFS(float, f32)
CP_IM2COL_DEFS(double, f64)

#endif
