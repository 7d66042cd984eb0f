"""Fractional max pooling kernels (Graham 2014; PyTorch's fractional_max_pool{2,3}d).

Every plane has its own window starts per dim (drawn by cpool._fractional); a window
is kernel-sized and starts at (start_d[p, od], start_h[p, oh], start_w[p, ow]). 2-D
pooling is 3-D with D = kd = 1. The backward is pool.scatter_planes (channels-last:
unpool.scatter_cl) from the indices.

Channels-last input (N, D, H, W, C) cannot share one window across C, but the windows
of one output position differ little between channels (the starts of a dim differ by at
most one step of the sample, so by 1 or 2). fractional_max_forward_cl scans, per output
position, the union of the channels' windows -- kernel + span taps per dim, starting at
base -- over whole rows of C, and each channel takes a tap only when it lies in its own
window (off = its start - base). The union is scanned in (d, h, w) order, which keeps
each channel's own scan order, so ties and NaN resolve exactly as above; the inner loop
vectorizes over C.
"""
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY
from libc.stdlib cimport free, malloc

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

    #include "cp_common.h"
    /* Channels-last: one tap (a, b, e) of the union window over a row of C channels.
       Channel c takes it when it lies inside c's own window and wins PyTorch's rule;
       tap (when not NULL) records the winner's tap number t. Unsigned compares test
       0 <= a - off < k in one step. */
    #define CP_FMP_CL_DEFINE(T, SFX)                                                 \
    static inline void cp_fmp_cl_##SFX(T *CP_RESTRICT m, int *CP_RESTRICT tap,      \
        const T *CP_RESTRICT row, Py_ssize_t C, const int *CP_RESTRICT od,           \
        const int *CP_RESTRICT oh, const int *CP_RESTRICT ow, int a, int b, int e,   \
        unsigned kd, unsigned kh, unsigned kw, int t)                                \
    {                                                                                \
        if (tap) {                                                                   \
            CP_SIMD for (Py_ssize_t c = 0; c < C; ++c) {                             \
                T v = row[c], old = m[c];                                            \
                int take = ((unsigned)(a - od[c]) < kd) & ((unsigned)(b - oh[c]) < kh) \
                           & ((unsigned)(e - ow[c]) < kw) & CP_FMP_TAKE(v, old);     \
                m[c] = take ? v : old;                                               \
                tap[c] = take ? t : tap[c];                                          \
            }                                                                        \
        } else {                                                                     \
            CP_SIMD for (Py_ssize_t c = 0; c < C; ++c) {                             \
                T v = row[c], old = m[c];                                            \
                int take = ((unsigned)(a - od[c]) < kd) & ((unsigned)(b - oh[c]) < kh) \
                           & ((unsigned)(e - ow[c]) < kw) & CP_FMP_TAKE(v, old);     \
                m[c] = take ? v : old;                                               \
            }                                                                        \
        }                                                                            \
    }
    CP_FMP_CL_DEFINE(float, f32)
    CP_FMP_CL_DEFINE(double, f64)
    """
    float cp_fmp_max_f32(const float *row, Py_ssize_t n, float m) noexcept nogil
    double cp_fmp_max_f64(const double *row, Py_ssize_t n, double m) noexcept nogil
    float cp_fmp_argmax_f32(const float *row, Py_ssize_t n, float m, Py_ssize_t base,
                            Py_ssize_t *best) noexcept nogil
    double cp_fmp_argmax_f64(const double *row, Py_ssize_t n, double m, Py_ssize_t base,
                             Py_ssize_t *best) noexcept nogil
    void cp_fmp_cl_f32(float *m, int *tap, const float *row, Py_ssize_t C, const int *od,
                       const int *oh, const int *ow, int a, int b, int e, unsigned kd,
                       unsigned kh, unsigned kw, int t) noexcept nogil
    void cp_fmp_cl_f64(double *m, int *tap, const double *row, Py_ssize_t C, const int *od,
                       const int *oh, const int *ow, int a, int b, int e, unsigned kd,
                       unsigned kh, unsigned kw, int t) noexcept nogil


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


def fractional_max_forward_cl(const floating_t[:, :, :, :, ::1] x,  # IN  (N, D, H, W, C)
                              const Py_ssize_t[:, ::1] base_d,      # IN  (N, OD)
                              const Py_ssize_t[:, ::1] base_h,      # IN  (N, OH)
                              const Py_ssize_t[:, ::1] base_w,      # IN  (N, OW)
                              const int[:, :, ::1] off_d,           # IN  (N, OD, C)
                              const int[:, :, ::1] off_h,           # IN  (N, OH, C)
                              const int[:, :, ::1] off_w,           # IN  (N, OW, C)
                              floating_t[:, :, :, :, ::1] out,      # OUT (N, OD, OH, OW, C)
                              long long[:, :, :, :, ::1] indices,   # OUT like out, or None
                              tuple kernel, tuple span, int num_threads):
    """Channels-last fractional max pooling (see the module docstring): channel c's
    window along a dim starts at base[n, o] + off[n, o, c], with 0 <= off <= span, and
    base + span + kernel <= the input size. indices (when not None) are flat within each
    (n, c) input plane, as fractional_max_forward's.

    Parallel over flattened (sample, output depth, output row); each output is written
    by one thread in a fixed order, so any thread count gives the same result.
    """
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t C = x.shape[4]
    cdef Py_ssize_t OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t kd = kernel[0], kh = kernel[1], kw = kernel[2]
    cdef Py_ssize_t ud = kd + <Py_ssize_t>span[0], uh = kh + <Py_ssize_t>span[1]
    cdef Py_ssize_t uw = kw + <Py_ssize_t>span[2]
    cdef bint want_indices = indices is not None
    cdef Py_ssize_t r, n, od, oh, ow, d0, h0, w0, a, b, e, c, pos
    cdef const int *pd
    cdef const int *ph
    cdef const int *pw
    cdef int *tap
    cdef floating_t *m
    # the flat offset of union tap t = (a*uh + b)*uw + e from the union's first element
    cdef Py_ssize_t *tap_offset = <Py_ssize_t *>malloc(ud * uh * uw * sizeof(Py_ssize_t))
    if tap_offset == NULL:
        raise MemoryError()
    for a in range(ud):
        for b in range(uh):
            for e in range(uw):
                tap_offset[(a * uh + b) * uw + e] = (a * H + b) * W + e
    with nogil, parallel(num_threads=num_threads):
        tap = NULL  # assigned here, so private to each thread
        if want_indices:
            tap = <int *>malloc(C * sizeof(int))
        for r in prange(N * OD * OH, schedule='static'):
            oh = r % OH
            od = (r // OH) % OD
            n = r // (OH * OD)
            d0 = base_d[n, od]
            h0 = base_h[n, oh]
            pd = &off_d[n, od, 0]
            ph = &off_h[n, oh, 0]
            for ow in range(OW):
                w0 = base_w[n, ow]
                pw = &off_w[n, ow, 0]
                m = &out[n, od, oh, ow, 0]
                for c in range(C):
                    m[c] = -INFINITY
                if want_indices:  # a window of -inf values reports its first element
                    for c in range(C):
                        tap[c] = (pd[c] * uh + ph[c]) * uw + pw[c]
                for a in range(ud):
                    for b in range(uh):
                        for e in range(uw):
                            if floating_t is float:
                                cp_fmp_cl_f32(m, tap, &x[n, d0 + a, h0 + b, w0 + e, 0], C,
                                              pd, ph, pw, a, b, e, kd, kh, kw,
                                              (a * uh + b) * uw + e)
                            else:
                                cp_fmp_cl_f64(m, tap, &x[n, d0 + a, h0 + b, w0 + e, 0], C,
                                              pd, ph, pw, a, b, e, kd, kh, kw,
                                              (a * uh + b) * uw + e)
                if want_indices:
                    pos = (d0 * H + h0) * W + w0
                    for c in range(C):
                        indices[n, od, oh, ow, c] = pos + tap_offset[tap[c]]
        free(tap)
    free(tap_offset)
