/* Instantiates pool_rows_impl.h for float and double under one instruction set: CP_ISA is
 * the name suffix (base, avx2, avx512) and CP_TARGET its target attribute. Included by
 * pool_rows.h once per set, so no include guard. */
#define CP_PASTE_(a, b, c) a##b##c
#define CP_PASTE(a, b, c) CP_PASTE_(a, b, c)

#define CP_FN(name) CP_PASTE(name, _f32_, CP_ISA)
#define CP_IS_FLOAT 1
#define CP_T float
#define CP_UINT uint32_t
#define CP_FABS fabsf
#define CP_POW powf
#define CP_SQRT sqrtf
#define CP_TABLE cp_rows_f32_t
#include "pool_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_UINT
#undef CP_FABS
#undef CP_POW
#undef CP_SQRT
#undef CP_TABLE

#define CP_FN(name) CP_PASTE(name, _f64_, CP_ISA)
#define CP_T double
#define CP_UINT uint64_t
#define CP_FABS fabs
#define CP_POW pow
#define CP_SQRT sqrt
#define CP_TABLE cp_rows_f64_t
#include "pool_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_UINT
#undef CP_FABS
#undef CP_POW
#undef CP_SQRT
#undef CP_TABLE

#undef CP_IS_FLOAT
#undef CP_PASTE
#undef CP_PASTE_
