/* Portability macros shared by every C header of the kernels. */
#ifndef CPOOL_CP_COMMON_H
#define CPOOL_CP_COMMON_H

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

#endif /* CPOOL_CP_COMMON_H */
