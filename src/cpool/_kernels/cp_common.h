/* Portability macros shared by every C header of the kernels. */
#ifndef CPOOL_CP_COMMON_H
#define CPOOL_CP_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define CP_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define CP_RESTRICT __restrict
#else
#define CP_RESTRICT
#endif

/* `#pragma omp simd` needs only -fopenmp or -fopenmp-simd, which setup.py always passes
 * to GCC and Clang; other compilers ignore it. */
#if defined(_OPENMP) || defined(__GNUC__) || defined(__clang__)
#define CP_SIMD _Pragma("omp simd")
#else
#define CP_SIMD
#endif

/* Transforms applied to each input element before it is summed (pooling sums). */
enum { CP_SUM = 0, CP_SUM_ABS = 1, CP_SUM_SQ = 2, CP_SUM_POW = 3 };

/* Per-output-column average divisors along W without an array as long as the row:
 * columns [0, n_left) and [right_start, ...) read edge[] (the left ones, then the right
 * ones); every column between has the interior divisor `mid` (the window lies inside). */
typedef struct {
    const double *edge;
    ptrdiff_t n_left, right_start;
    double mid;
} cp_cols_t;

static inline double cp_col_div(const cp_cols_t *c, ptrdiff_t o)
{
    if (o < c->n_left) return c->edge[o];
    if (o >= c->right_start) return c->edge[c->n_left + (o - c->right_start)];
    return c->mid;
}

/* 1/d when x / d equals x * (1/d) for every x: d a power of two (as a divisor of an
 * average: small and never 0), so that 1/d is exact and both round the same exact
 * quotient, subnormals, infinities and NaN included. Else 0. Averages multiply then,
 * and a multiply is several times cheaper than a divide. */
static inline double cp_exact_reciprocal(double d)
{
    /* from the bits, not frexp: a library call on every output row costs more than the
     * multiplies it saves (avg 2x2/2 on 56x56 planes) */
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    int biased = (int)((bits >> 52) & 0x7FF);  /* d = +-2**(biased - 1023) if no mantissa */
    int e = biased - 1023;
    return (bits << 12) == 0 && biased != 0 && e > -121 && e < 119 ? 1.0 / d : 0.0;
}

/* Ask for [p, p + bytes) in the outer caches ahead of use: the hardware prefetcher
 * loses short streams (small planes) and ramps up late on each new one. */
static inline void cp_prefetch_span(const void *p, ptrdiff_t bytes)
{
#if defined(__GNUC__) || defined(__clang__)
    for (ptrdiff_t i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i, 0, 2);
#else
    (void)p; (void)bytes;
#endif
}

/* Instruction sets with their own copy of the row code of every *_rows.h. x86-64 with
 * GCC or Clang gets AVX2 and AVX-512 copies beside the SSE2 baseline; elsewhere only the
 * baseline exists.
 * No FMA: a fused multiply-add would change the bits of sums against the baseline. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CP_HAVE_X86_DISPATCH 1
/* The target attributes of the AVX2 and AVX-512 copies (AVX-512 instructions on
 * 256-bit vectors). */
#define CP_TARGET_AVX2 __attribute__((target("avx2")))
#define CP_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,prefer-vector-width=256")))
#else
#define CP_HAVE_X86_DISPATCH 0
#endif

/* Vector transposes (cl_transpose.h): SSE2 for the baseline on x86-64, AVX2 above it. */
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define CP_HAVE_SSE2 1
#else
#define CP_HAVE_SSE2 0
#endif
#if CP_HAVE_X86_DISPATCH
#include <immintrin.h>
#endif

#endif /* CPOOL_CP_COMMON_H */
