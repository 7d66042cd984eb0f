/* Channels-last row primitives (cl_rows_impl.h): one table of function pointers per
 * element type and instruction set, picked at run time by cp_cl_select. The instruction
 * sets are those of pool_rows.h (baseline, AVX2, AVX-512 at 256 bits). */
#ifndef CPOOL_CL_ROWS_H
#define CPOOL_CL_ROWS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cp_common.h"


typedef struct {
    void (*fill)(void *a, ptrdiff_t n, ptrdiff_t cs, ptrdiff_t nc, int lowest);
    void (*vreduce)(void *acc, const void *const *rows, ptrdiff_t n_rows, ptrdiff_t width,
                    ptrdiff_t cs, ptrdiff_t nc, int op, double p);
    void (*hreduce)(void *out, const void *acc, ptrdiff_t n, ptrdiff_t cs, ptrdiff_t as,
                    ptrdiff_t nc, const ptrdiff_t *tab, ptrdiff_t ts, int op, int first,
                    int fuse, const cp_cols_t *cols, double row_div);
    void (*row_argmax)(void *out, int *key, const void *row, ptrdiff_t n, ptrdiff_t cs,
                       ptrdiff_t nc, const ptrdiff_t *tab, ptrdiff_t ts, int base, int first);
    void (*transpose)(void *dst, ptrdiff_t dld, const void *src, ptrdiff_t sld,
                      ptrdiff_t rows, ptrdiff_t cols);
    /* floats only */
    void (*row_finish)(void *out, ptrdiff_t n, ptrdiff_t cs, ptrdiff_t nc, int op, double p,
                       const cp_cols_t *cols, double row_div);
    void (*row_tapadd_u8)(void *acc, const void *g, const void *taps, ptrdiff_t n,
                          ptrdiff_t cs, ptrdiff_t nc, const ptrdiff_t *cover, ptrdiff_t ts,
                          int base, int first);
    void (*row_tapadd_i32)(void *acc, const void *g, const void *taps, ptrdiff_t n,
                           ptrdiff_t cs, ptrdiff_t nc, const ptrdiff_t *cover, ptrdiff_t ts,
                           int base, int first);
    void (*row_spread)(void *acc, const void *g, ptrdiff_t n, ptrdiff_t cs, ptrdiff_t gs,
                       ptrdiff_t nc, const ptrdiff_t *cover, ptrdiff_t ts);
    void (*vreduce_div)(void *acc, const void *const *rows, ptrdiff_t n_rows, ptrdiff_t width,
                        ptrdiff_t cs, ptrdiff_t nc, const double *row_div,
                        const cp_cols_t *cols);
} cp_cl_t;

/* Element types, in the order of cp_cl_select's `type` argument. */
enum { CP_CL_F32, CP_CL_F64, CP_CL_U8, CP_CL_I8, CP_CL_I16, CP_CL_I32, CP_CL_I64, CP_CL_NTYPES };

#define CP_ISA base
#define CP_TARGET
#define CP_TR_SSE2 CP_HAVE_SSE2
#define CP_TR_AVX2 0
#include "cl_rows_isa.h"
#undef CP_ISA
#undef CP_TARGET
#undef CP_TR_SSE2
#undef CP_TR_AVX2

#if CP_HAVE_X86_DISPATCH
#define CP_TR_SSE2 0
#define CP_TR_AVX2 1
#define CP_ISA avx2
#define CP_TARGET CP_TARGET_AVX2
#include "cl_rows_isa.h"
#undef CP_ISA
#undef CP_TARGET

#define CP_ISA avx512
#define CP_TARGET CP_TARGET_AVX512
#include "cl_rows_isa.h"
#undef CP_ISA
#undef CP_TARGET
#undef CP_TR_SSE2
#undef CP_TR_AVX2
#endif

#define CP_CL_TABLES(ISA)                                                                  \
    { &cp_cl_f32_##ISA, &cp_cl_f64_##ISA, &cp_cl_u8_##ISA, &cp_cl_i8_##ISA,                \
      &cp_cl_i16_##ISA, &cp_cl_i32_##ISA, &cp_cl_i64_##ISA }

/* The table of element type `type` (CP_CL_*) at instruction set `level` (0 baseline,
 * 1 AVX2, 2 AVX-512, capped at what was compiled). */
static inline const cp_cl_t *cp_cl_select(int type, int level)
{
    static const cp_cl_t *const base[CP_CL_NTYPES] = CP_CL_TABLES(base);
#if CP_HAVE_X86_DISPATCH
    static const cp_cl_t *const avx2[CP_CL_NTYPES] = CP_CL_TABLES(avx2);
    static const cp_cl_t *const avx512[CP_CL_NTYPES] = CP_CL_TABLES(avx512);
    if (level >= 2) return avx512[type];
    if (level == 1) return avx2[type];
#endif
    (void)level;
    return base[type];
}
#undef CP_CL_TABLES

#endif /* CPOOL_CL_ROWS_H */
