/* Instantiates cl_rows_impl.h for every element type under one instruction set (CP_ISA,
 * CP_TARGET). Included by cl_rows.h once per set, so no include guard. */
#define CP_PASTE_(a, b, c) a##b##c
#define CP_PASTE(a, b, c) CP_PASTE_(a, b, c)

#include "cl_transpose.h"

#define CP_IS_FLOAT 1
#define CP_FN(name) CP_PASTE(name, _f32_, CP_ISA)
#define CP_T float
#define CP_UINT uint32_t
#define CP_LOWEST (-(float)INFINITY)
#define CP_FABS fabsf
#define CP_POW powf
#define CP_SQRT sqrtf
#include "cl_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_UINT
#undef CP_LOWEST
#undef CP_FABS
#undef CP_POW
#undef CP_SQRT

#define CP_FN(name) CP_PASTE(name, _f64_, CP_ISA)
#define CP_T double
#define CP_UINT uint64_t
#define CP_LOWEST (-(double)INFINITY)
#define CP_FABS fabs
#define CP_POW pow
#define CP_SQRT sqrt
#include "cl_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_UINT
#undef CP_LOWEST
#undef CP_FABS
#undef CP_POW
#undef CP_SQRT
#undef CP_IS_FLOAT

/* Integers: max pooling only; an empty window holds the type's minimum. */
#define CP_IS_FLOAT 0
#define CP_FN(name) CP_PASTE(name, _u8_, CP_ISA)
#define CP_T uint8_t
#define CP_LOWEST ((uint8_t)0)
#include "cl_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_LOWEST

#define CP_FN(name) CP_PASTE(name, _i8_, CP_ISA)
#define CP_T int8_t
#define CP_LOWEST ((int8_t)INT8_MIN)
#include "cl_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_LOWEST

#define CP_FN(name) CP_PASTE(name, _i16_, CP_ISA)
#define CP_T int16_t
#define CP_LOWEST ((int16_t)INT16_MIN)
#include "cl_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_LOWEST

#define CP_FN(name) CP_PASTE(name, _i32_, CP_ISA)
#define CP_T int32_t
#define CP_LOWEST ((int32_t)INT32_MIN)
#include "cl_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_LOWEST

#define CP_FN(name) CP_PASTE(name, _i64_, CP_ISA)
#define CP_T int64_t
#define CP_LOWEST ((int64_t)INT64_MIN)
#include "cl_rows_impl.h"
#undef CP_FN
#undef CP_T
#undef CP_LOWEST
#undef CP_IS_FLOAT

#undef CP_PASTE
#undef CP_PASTE_
