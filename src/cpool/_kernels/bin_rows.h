/* Row primitives of bin pooling (binpool.pyx) that need C: branch-free max and argmax,
 * and whole-plane reductions for global pooling.
 *
 * Random data makes "is this the new maximum?" unpredictable; written as selects in
 * loops the compiler vectorizes, the updates become blends instead of mispredicted
 * branches. As pool_rows.h does, the code is compiled once per instruction set
 * (baseline, AVX2, AVX-512 through GCC's target attribute) and called through a table;
 * binpool.pyx picks the table of the level pool.pyx uses (pool.get_simd_level). The
 * argmax merge is the exception: it has a baseline copy only (cpb_argmax_row_f32_base,
 * _f64_base), see bin_rows_impl.h.
 */
#ifndef CPOOL_BIN_ROWS_H
#define CPOOL_BIN_ROWS_H

#include <math.h>
#include <stddef.h>

#include "pool_rows.h"  /* CP_SIMD, CP_RESTRICT, CP_HAVE_X86_DISPATCH */

#define CPB_LANES 16
/* Combine CPB_LANES lanes pairwise into lane[0]: STEP(l, w) merges lane[l + w] into
 * lane[l]; constant bounds, so the compiler unrolls it into vector halvings. */
#define CPB_TREE(lane, STEP)                                                          \
    for (ptrdiff_t w = CPB_LANES / 2; w >= 1; w /= 2)                                 \
        for (ptrdiff_t l = 0; l < w; ++l) STEP

#define CPB_DECLARE_TABLE(NAME, T)                                                            \
typedef struct {                                                                              \
    void (*hbins)(T *out, const T *acc, const ptrdiff_t *bins, ptrdiff_t n, ptrdiff_t wlo,    \
                  int is_max);                                                                \
    ptrdiff_t (*find_tap)(const T *plane, ptrdiff_t H, ptrdiff_t W, ptrdiff_t d0,             \
                          ptrdiff_t d1, ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t w0,             \
                          ptrdiff_t w1, T *m);                                                \
    T (*reduce)(const T *a, ptrdiff_t n, int op, T p);                                        \
} NAME;
CPB_DECLARE_TABLE(cpb_rows_f32_t, float)
CPB_DECLARE_TABLE(cpb_rows_f64_t, double)
#undef CPB_DECLARE_TABLE

#define CPB_AVX2 __attribute__((target("avx2")))
#define CPB_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,prefer-vector-width=512")))

/* float */
#define CPB_T float
#define CPB_FABS fabsf
#define CPB_POW powf
#define CPB_TABLE cpb_rows_f32_t
#define CPB_TARGET
#define CPB_FN(name) name##_f32_base
#define CPB_WITH_ARGMAX
#include "bin_rows_impl.h"
#undef CPB_WITH_ARGMAX
#undef CPB_FN
#undef CPB_TARGET
#if CP_HAVE_X86_DISPATCH
#define CPB_TARGET CPB_AVX2
#define CPB_FN(name) name##_f32_avx2
#include "bin_rows_impl.h"
#undef CPB_FN
#undef CPB_TARGET
#define CPB_TARGET CPB_AVX512
#define CPB_FN(name) name##_f32_avx512
#include "bin_rows_impl.h"
#undef CPB_FN
#undef CPB_TARGET
#endif
#undef CPB_T
#undef CPB_FABS
#undef CPB_POW
#undef CPB_TABLE

/* double */
#define CPB_T double
#define CPB_FABS fabs
#define CPB_POW pow
#define CPB_TABLE cpb_rows_f64_t
#define CPB_TARGET
#define CPB_FN(name) name##_f64_base
#define CPB_WITH_ARGMAX
#include "bin_rows_impl.h"
#undef CPB_WITH_ARGMAX
#undef CPB_FN
#undef CPB_TARGET
#if CP_HAVE_X86_DISPATCH
#define CPB_TARGET CPB_AVX2
#define CPB_FN(name) name##_f64_avx2
#include "bin_rows_impl.h"
#undef CPB_FN
#undef CPB_TARGET
#define CPB_TARGET CPB_AVX512
#define CPB_FN(name) name##_f64_avx512
#include "bin_rows_impl.h"
#undef CPB_FN
#undef CPB_TARGET
#endif
#undef CPB_T
#undef CPB_FABS
#undef CPB_POW
#undef CPB_TABLE

/* The table for instruction-set level 0 (baseline), 1 (AVX2) or 2 (AVX-512), as
 * cp_rows_*_select; the caller passes a level the CPU runs. */
static const cpb_rows_f32_t *cpb_rows_f32_select(int level)
{
#if CP_HAVE_X86_DISPATCH
    if (level >= 2) return &cpb_rows_f32_avx512;
    if (level == 1) return &cpb_rows_f32_avx2;
#endif
    (void)level;
    return &cpb_rows_f32_base;
}

static const cpb_rows_f64_t *cpb_rows_f64_select(int level)
{
#if CP_HAVE_X86_DISPATCH
    if (level >= 2) return &cpb_rows_f64_avx512;
    if (level == 1) return &cpb_rows_f64_avx2;
#endif
    (void)level;
    return &cpb_rows_f64_base;
}

#endif /* CPOOL_BIN_ROWS_H */
