"""Fractional max pooling kernel (Graham 2014; PyTorch's fractional_max_pool{2,3}d).

Every plane has its own window starts per dim (drawn by cpool._fractional); a window
is kernel-sized and starts at (start_d[p, od], start_h[p, oh], start_w[p, ow]). 2-D
pooling is 3-D with D = kd = 1. The backward is pool.scatter_planes from the indices.
"""
from cython.parallel cimport prange
from libc.math cimport INFINITY

from ._fused cimport floating_t

cdef extern from *:
    """
    /* One window row under PyTorch's max rule, written without branches so that the
       compiler emits selects: random data makes "is v the new max?" unpredictable. */
    #define CP_FMP_TAKE(v, m) (((v) > (m)) | ((v) != (v)))
    #define CP_FMP_DEFINE(T, SFX)                                                    \
    static inline T cp_fmp_max_##SFX(const T *row, Py_ssize_t n, T m)                \
    {                                                                                \
        for (Py_ssize_t c = 0; c < n; ++c) {                                         \
            T v = row[c];                                                            \
            m = CP_FMP_TAKE(v, m) ? v : m;                                           \
        }                                                                            \
        return m;                                                                    \
    }                                                                                \
    static inline T cp_fmp_argmax_##SFX(const T *row, Py_ssize_t n, T m,            \
                                        Py_ssize_t base, Py_ssize_t *best)            \
    {                                                                                \
        Py_ssize_t b = *best;                                                        \
        for (Py_ssize_t c = 0; c < n; ++c) {                                         \
            T v = row[c];                                                            \
            int take = CP_FMP_TAKE(v, m);                                            \
            m = take ? v : m;                                                        \
            b = take ? base + c : b;                                                 \
        }                                                                            \
        *best = b;                                                                   \
        return m;                                                                    \
    }
    CP_FMP_DEFINE(float, f32)
    CP_FMP_DEFINE(double, f64)
    """
    float cp_fmp_max_f32(const float *row, Py_ssize_t n, float m) noexcept nogil
    double cp_fmp_max_f64(const double *row, Py_ssize_t n, double m) noexcept nogil
    float cp_fmp_argmax_f32(const float *row, Py_ssize_t n, float m, Py_ssize_t base,
                            Py_ssize_t *best) noexcept nogil
    double cp_fmp_argmax_f64(const double *row, Py_ssize_t n, double m, Py_ssize_t base,
                             Py_ssize_t *best) noexcept nogil


def fractional_max_forward(const floating_t[:, :, :, ::1] x,   # IN  (P, D, H, W)
                           const Py_ssize_t[:, ::1] start_d,   # IN  (P, OD)
                           const Py_ssize_t[:, ::1] start_h,   # IN  (P, OH)
                           const Py_ssize_t[:, ::1] start_w,   # IN  (P, OW)
                           floating_t[:, :, :, ::1] out,       # OUT (P, OD, OH, OW)
                           long long[:, :, :, ::1] indices,    # OUT (P, OD, OH, OW) or None
                           tuple kernel, int num_threads):
    """Max over each window, scanned in (d, h, w) order with PyTorch's rule: start from
    -inf and take v when v > max or v is NaN, so ties keep the first maximum and a NaN
    is reported by its last occurrence. indices (when not None) get the winner's flat
    position within the input plane; a window of -inf values reports its first element.

    Parallel over flattened (plane, output depth, output row); each output is written
    by one thread in a fixed order, so any thread count gives the same result.
    """
    cdef Py_ssize_t P = x.shape[0], D = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t kd = kernel[0], kh = kernel[1], kw = kernel[2]
    cdef bint want_indices = indices is not None
    cdef Py_ssize_t r, plane, od, oh, ow, d0, h0, w0, a, b, base, best
    cdef const floating_t *row
    cdef floating_t m
    for r in prange(P * OD * OH, nogil=True, schedule='static', num_threads=num_threads):
        oh = r % OH
        od = (r // OH) % OD
        plane = r // (OH * OD)
        d0 = start_d[plane, od]
        h0 = start_h[plane, oh]
        for ow in range(OW):
            w0 = start_w[plane, ow]
            m = -INFINITY
            best = (d0 * H + h0) * W + w0
            for a in range(kd):
                for b in range(kh):
                    row = &x[plane, d0 + a, h0 + b, w0]
                    if want_indices:
                        base = ((d0 + a) * H + h0 + b) * W + w0
                        if floating_t is float:
                            m = cp_fmp_argmax_f32(row, kw, m, base, &best)
                        else:
                            m = cp_fmp_argmax_f64(row, kw, m, base, &best)
                    elif floating_t is float:
                        m = cp_fmp_max_f32(row, kw, m)
                    else:
                        m = cp_fmp_max_f64(row, kw, m)
            out[plane, od, oh, ow] = m
            if want_indices:
                indices[plane, od, oh, ow] = best
