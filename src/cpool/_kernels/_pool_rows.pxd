# The row primitives of pool_rows.h: one table of function pointers per float type and
# instruction set. pool.pyx owns the choice of instruction set (set_simd_level).
from ._cols cimport cp_cols_t
from libc.stdint cimport uint32_t, uint64_t

from ._fused cimport uchar

cdef extern from "pool_rows.h" nogil:
    int CP_SUM, CP_SUM_ABS, CP_SUM_SQ, CP_SUM_POW, CP_PAD_KEY, CP_SAME_MAX_TAPS
    void cp_prefetch_span(const void *p, Py_ssize_t nbytes)
    ctypedef struct cp_rows_f32_t:
        void (*pool_row)(float *out, const float **rows, Py_ssize_t n_in, float *acc,
                         Py_ssize_t width, Py_ssize_t pad, Py_ssize_t n, Py_ssize_t k,
                         Py_ssize_t s, Py_ssize_t d, int op, float p, const cp_cols_t *cols,
                         float row_div) noexcept nogil
        void (*pool_row_argmax)(float *out, int *tap, const float **rows, const int *row_key,
                                Py_ssize_t n_in, float *acc, int *key, Py_ssize_t width,
                                Py_ssize_t pad, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s,
                                Py_ssize_t d) noexcept nogil
        void (*hrow_argmax)(float *out, int *tap, const float *row, int row_key, Py_ssize_t width,
                            Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d,
                            Py_ssize_t pad) noexcept nogil
        void (*fill)(float *a, Py_ssize_t n, float v) noexcept nogil
        void (*copy)(float *dst, const float *src, Py_ssize_t n) noexcept nogil
        void (*vmax)(float *acc, const float *row, Py_ssize_t n, int first) noexcept nogil
        void (*vsum)(float *acc, const float *row, Py_ssize_t n, int first, int op, float p) noexcept nogil
        void (*hmax)(float *out, const float *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*hsum)(float *out, const float *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*root)(float *out, Py_ssize_t n, int op, float p) noexcept nogil
        void (*tapscatter_u8)(float *acc, const float *g, const uchar *taps, Py_ssize_t n,
                              Py_ssize_t base, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*tapscatter_i32)(float *acc, const float *g, const int *taps, Py_ssize_t n,
                               Py_ssize_t base, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*tapselect2_u8)(float *out, const float *g, const uchar *taps, Py_ssize_t n,
                              Py_ssize_t width, Py_ssize_t base) noexcept nogil
        void (*tapselect2_i32)(float *out, const float *g, const int *taps, Py_ssize_t n,
                               Py_ssize_t width, Py_ssize_t base) noexcept nogil
        void (*hspread)(float *acc, const float *g, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s,
                        Py_ssize_t d) noexcept nogil
        void (*add)(float *acc, const float *g, Py_ssize_t n) noexcept nogil
        void (*pool_plane_same)(float *out, const float *x, float *v, Py_ssize_t H, Py_ssize_t W,
                                Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t dh, Py_ssize_t dw,
                                Py_ssize_t ph, Py_ssize_t pw, int op, const uint32_t *mask,
                                const float *div) noexcept nogil
        void (*sum_plane_same_backward)(float *gin, const float *g, float *q, float *c, Py_ssize_t H,
                                        Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t ph,
                                        Py_ssize_t pw, const uint32_t *mask,
                                        const float *div) noexcept nogil
        void (*pool_2x2_rows)(float *out, const float *x, Py_ssize_t n_rows, Py_ssize_t W,
                              Py_ssize_t OW, int op, float div) noexcept nogil
        void (*argmax_2x2_rows)(float *out, uchar *tap, const float *x, Py_ssize_t n_rows,
                                Py_ssize_t W, Py_ssize_t OW) noexcept nogil
        void (*backward_2x2_rows)(float *gin, const float *g, const uchar *taps, Py_ssize_t n_rows,
                                  Py_ssize_t W, Py_ssize_t OW, Py_ssize_t n_zero,
                                  float div) noexcept nogil
    ctypedef struct cp_rows_f64_t:
        void (*pool_row)(double *out, const double **rows, Py_ssize_t n_in, double *acc,
                         Py_ssize_t width, Py_ssize_t pad, Py_ssize_t n, Py_ssize_t k,
                         Py_ssize_t s, Py_ssize_t d, int op, double p, const cp_cols_t *cols,
                         double row_div) noexcept nogil
        void (*pool_row_argmax)(double *out, int *tap, const double **rows, const int *row_key,
                                Py_ssize_t n_in, double *acc, int *key, Py_ssize_t width,
                                Py_ssize_t pad, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s,
                                Py_ssize_t d) noexcept nogil
        void (*hrow_argmax)(double *out, int *tap, const double *row, int row_key, Py_ssize_t width,
                            Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d,
                            Py_ssize_t pad) noexcept nogil
        void (*fill)(double *a, Py_ssize_t n, double v) noexcept nogil
        void (*copy)(double *dst, const double *src, Py_ssize_t n) noexcept nogil
        void (*vmax)(double *acc, const double *row, Py_ssize_t n, int first) noexcept nogil
        void (*vsum)(double *acc, const double *row, Py_ssize_t n, int first, int op, double p) noexcept nogil
        void (*hmax)(double *out, const double *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*hsum)(double *out, const double *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*root)(double *out, Py_ssize_t n, int op, double p) noexcept nogil
        void (*tapscatter_u8)(double *acc, const double *g, const uchar *taps, Py_ssize_t n,
                              Py_ssize_t base, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*tapscatter_i32)(double *acc, const double *g, const int *taps, Py_ssize_t n,
                               Py_ssize_t base, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d) noexcept nogil
        void (*tapselect2_u8)(double *out, const double *g, const uchar *taps, Py_ssize_t n,
                              Py_ssize_t width, Py_ssize_t base) noexcept nogil
        void (*tapselect2_i32)(double *out, const double *g, const int *taps, Py_ssize_t n,
                               Py_ssize_t width, Py_ssize_t base) noexcept nogil
        void (*hspread)(double *acc, const double *g, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s,
                        Py_ssize_t d) noexcept nogil
        void (*add)(double *acc, const double *g, Py_ssize_t n) noexcept nogil
        void (*pool_plane_same)(double *out, const double *x, double *v, Py_ssize_t H, Py_ssize_t W,
                                Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t dh, Py_ssize_t dw,
                                Py_ssize_t ph, Py_ssize_t pw, int op, const uint64_t *mask,
                                const double *div) noexcept nogil
        void (*sum_plane_same_backward)(double *gin, const double *g, double *q, double *c, Py_ssize_t H,
                                        Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t ph,
                                        Py_ssize_t pw, const uint64_t *mask,
                                        const double *div) noexcept nogil
        void (*pool_2x2_rows)(double *out, const double *x, Py_ssize_t n_rows, Py_ssize_t W,
                              Py_ssize_t OW, int op, double div) noexcept nogil
        void (*argmax_2x2_rows)(double *out, uchar *tap, const double *x, Py_ssize_t n_rows,
                                Py_ssize_t W, Py_ssize_t OW) noexcept nogil
        void (*backward_2x2_rows)(double *gin, const double *g, const uchar *taps, Py_ssize_t n_rows,
                                  Py_ssize_t W, Py_ssize_t OW, Py_ssize_t n_zero,
                                  double div) noexcept nogil
    int cp_simd_detect()
    const cp_rows_f32_t *cp_rows_f32_select(int level)
    const cp_rows_f64_t *cp_rows_f64_select(int level)
