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
 *
 * The code is compiled once per instruction set (baseline, AVX2, AVX-512, with GCC's
 * target attribute, never a native-CPU build) and the kernels call it through a table picked
 * at import time for the CPU, so one wheel runs everywhere at the CPU's best width.
 */
#ifndef CPOOL_POOL_ROWS_H
#define CPOOL_POOL_ROWS_H

#include <math.h>
#include <stddef.h>

#include "cp_common.h"

#include <stdint.h>
#include <string.h>


/* Most taps per dim of the whole-plane stride-1 kernels (cp_pool_plane_same). */
#define CP_SAME_MAX_TAPS 32

/* The row primitives of one float type T, as a table of function pointers: one table per
 * instruction set, chosen once at import (cp_rows_select). */
#define CP_DECLARE_TABLE(NAME, T, U)                                                           \
typedef struct {                                                                              \
    void (*pool_row)(T *out, const T *const *rows, ptrdiff_t n_in, T *acc, ptrdiff_t width,   \
                     ptrdiff_t pad, ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d,       \
                     int op, T p, const cp_cols_t *cols, T row_div);                          \
    void (*pool_row_argmax)(T *out, int *tap, const T *const *rows, const int *row_key,       \
                            ptrdiff_t n_in, T *acc, int *key, ptrdiff_t width, ptrdiff_t pad, \
                            ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d);             \
    void (*hrow_argmax)(T *out, int *tap, const T *row, int row_key, ptrdiff_t width,         \
                        ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d, ptrdiff_t pad);   \
    void (*fill)(T *a, ptrdiff_t n, T v);                                                     \
    void (*copy)(T *dst, const T *src, ptrdiff_t n);                                          \
    void (*vmax)(T *acc, const T *row, ptrdiff_t n, int first);                               \
    void (*vsum)(T *acc, const T *row, ptrdiff_t n, int first, int op, T p);                  \
    void (*hmax)(T *out, const T *acc, ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d);   \
    void (*hsum)(T *out, const T *acc, ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d);   \
    void (*root)(T *out, ptrdiff_t n, int op, T p);                                           \
    void (*tapscatter_u8)(T *acc, const T *g, const unsigned char *taps, ptrdiff_t n,         \
                          ptrdiff_t base, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d);             \
    void (*tapscatter_i32)(T *acc, const T *g, const int *taps, ptrdiff_t n,                  \
                           ptrdiff_t base, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d);            \
    void (*tapselect2_u8)(T *out, const T *g, const unsigned char *taps, ptrdiff_t n,         \
                          ptrdiff_t width, ptrdiff_t base);                                   \
    void (*tapselect2_i32)(T *out, const T *g, const int *taps, ptrdiff_t n, ptrdiff_t width,  \
                           ptrdiff_t base);                                                   \
    void (*hspread)(T *acc, const T *g, ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d);  \
    void (*add)(T *acc, const T *g, ptrdiff_t n);                                            \
    void (*pool_plane_same)(T *out, const T *x, T *v, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, \
                            ptrdiff_t kw, ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t ph,           \
                            ptrdiff_t pw, int op, const U *mask, const T *div);               \
    void (*sum_plane_same_backward)(T *gin, const T *g, T *q, T *c, ptrdiff_t H, ptrdiff_t W, \
                                    ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t dh, ptrdiff_t dw,   \
                                    ptrdiff_t ph, ptrdiff_t pw, const U *mask, const T *div); \
    void (*pool_2x2_rows)(T *out, const T *x, ptrdiff_t n_rows, ptrdiff_t W, ptrdiff_t OW,     \
                          int op, T div);                                                     \
    void (*argmax_2x2_rows)(T *out, unsigned char *tap, const T *x, ptrdiff_t n_rows,          \
                            ptrdiff_t W, ptrdiff_t OW);                                       \
    void (*backward_2x2_rows)(T *gin, const T *g, const unsigned char *taps, ptrdiff_t n_rows, \
                              ptrdiff_t W, ptrdiff_t OW, ptrdiff_t n_zero, T div);            \
} NAME;
CP_DECLARE_TABLE(cp_rows_f32_t, float, uint32_t)
CP_DECLARE_TABLE(cp_rows_f64_t, double, uint64_t)
#undef CP_DECLARE_TABLE


#define CP_ISA base
#define CP_TARGET
#include "pool_rows_isa.h"
#undef CP_ISA
#undef CP_TARGET

#if CP_HAVE_X86_DISPATCH
#define CP_ISA avx2
#define CP_TARGET CP_TARGET_AVX2
#include "pool_rows_isa.h"
#undef CP_ISA
#undef CP_TARGET

#define CP_ISA avx512
#define CP_TARGET CP_TARGET_AVX512
#include "pool_rows_isa.h"
#undef CP_ISA
#undef CP_TARGET
#endif

/* The best instruction set this CPU runs: 0 baseline (SSE2 on x86-64), 1 AVX2, 2 AVX-512. */
static inline int cp_simd_detect(void)
{
#if CP_HAVE_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return 2;
    if (__builtin_cpu_supports("avx2"))
        return 1;
#endif
    return 0;
}

static inline const cp_rows_f32_t *cp_rows_f32_select(int level)
{
#if CP_HAVE_X86_DISPATCH
    if (level >= 2) return &cp_rows_f32_avx512;
    if (level == 1) return &cp_rows_f32_avx2;
#endif
    (void)level;
    return &cp_rows_f32_base;
}

static inline const cp_rows_f64_t *cp_rows_f64_select(int level)
{
#if CP_HAVE_X86_DISPATCH
    if (level >= 2) return &cp_rows_f64_avx512;
    if (level == 1) return &cp_rows_f64_avx2;
#endif
    (void)level;
    return &cp_rows_f64_base;
}

#endif /* CPOOL_POOL_ROWS_H */
