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

#include <stdint.h>
#include <string.h>

/* Vertical transforms applied to each input element before it is summed. */
enum { CP_SUM = 0, CP_SUM_ABS = 1, CP_SUM_SQ = 2, CP_SUM_POW = 3 };

#define CP_FN(name) name##_f32
#define CP_T float
#define CP_UINT uint32_t
#define CP_FABS fabsf
#define CP_POW powf
#define CP_SQRT sqrtf
#include "pool_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_UINT
#undef CP_FABS
#undef CP_POW
#undef CP_SQRT

#define CP_FN(name) name##_f64
#define CP_T double
#define CP_UINT uint64_t
#define CP_FABS fabs
#define CP_POW pow
#define CP_SQRT sqrt
#include "pool_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_UINT
#undef CP_FABS
#undef CP_POW
#undef CP_SQRT

#endif /* CPOOL_POOL_ROWS_H */
