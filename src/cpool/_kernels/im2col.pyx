"""im2col / col2im and the layout moves around the convolution GEMM.

A convolution of x (N, C, H, W) becomes one matrix product W (Cout, C*KH*KW) @ col,
with col (C*KH*KW, N*OH*OW): row (c, kh, kw), column (n, oh, ow) holds the input tap
x[n, c, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw] (0 outside the input). The product is
(Cout, N*OH*OW), which `cols_to_batch` turns into (N, Cout, OH*OW); `batch_to_cols` is
its inverse for grad_output. 1-D convolution is the H = KH = 1 case.

Inputs are validated, contiguous and allocated by cpool.layers.conv; these functions only
loop. Every output element is written by one thread in a fixed order (col2im is a
per-plane accumulation in (kh, kw, oh, ow) order), so results are bitwise identical for
every thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from ._fused cimport floating_t

cdef extern from "im2col_rows.h" nogil:
    void cp_im2col_block_f32(float *dst, const float *plane, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ih0, Py_ssize_t off, Py_ssize_t lo, Py_ssize_t hi)
    void cp_im2col_block_f64(double *dst, const double *plane, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ih0, Py_ssize_t off, Py_ssize_t lo, Py_ssize_t hi)
    void cp_col2im_block_f32(float *plane, const float *src, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ih0, Py_ssize_t off, Py_ssize_t lo, Py_ssize_t hi)
    void cp_col2im_block_f64(double *plane, const double *src, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ih0, Py_ssize_t off, Py_ssize_t lo, Py_ssize_t hi)
    double cp_row_sum_f32(const float *a, Py_ssize_t n)
    double cp_row_sum_f64(const double *a, Py_ssize_t n)


# Below this many elements moved, a parallel region costs more than it saves.
cdef Py_ssize_t _SERIAL_BELOW = 32768


cdef inline int _threads(Py_ssize_t work, int num_threads) noexcept nogil:
    return 1 if work < _SERIAL_BELOW else num_threads


cdef struct ConvGeom:
    Py_ssize_t C, H, W, OH, OW, KH, KW, sh, sw, dh, dw, ph, pw


cdef ConvGeom _geom(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, tuple out_size, tuple kernel,
                    tuple stride, tuple dilation, tuple pad_begin):
    cdef ConvGeom g
    g.C, g.H, g.W = C, H, W
    g.OH, g.OW = out_size
    g.KH, g.KW = kernel
    g.sh, g.sw = stride
    g.dh, g.dw = dilation
    g.ph, g.pw = pad_begin
    return g


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """ceil(a / b) for b > 0 and any sign of a."""
    if a <= 0:
        return -((-a) // b)
    return (a + b - 1) // b


cdef Py_ssize_t _first_col(ConvGeom *g, Py_ssize_t kw) noexcept nogil:
    """The first output column whose tap kw lands at iw >= 0 (iw = ow*sw + kw*dw - pw)."""
    cdef Py_ssize_t a = _ceil_div(g.pw - kw * g.dw, g.sw)
    if a < 0:
        return 0
    return a if a < g.OW else g.OW


cdef Py_ssize_t _end_col(ConvGeom *g, Py_ssize_t kw, Py_ssize_t lo) noexcept nogil:
    """One past the last output column whose tap kw lands at iw < W (and >= lo)."""
    cdef Py_ssize_t b = _ceil_div(g.W + g.pw - kw * g.dw, g.sw)
    if b > g.OW:
        b = g.OW
    return b if b > lo else lo


cdef Py_ssize_t *_col_ranges(ConvGeom *g) except NULL:
    """[lo, hi) of the in-bounds output columns for every kw, computed once per call."""
    cdef Py_ssize_t *ranges = <Py_ssize_t *>malloc(2 * g.KW * sizeof(Py_ssize_t))
    cdef Py_ssize_t kw
    if ranges == NULL:
        raise MemoryError()
    for kw in range(g.KW):
        ranges[2 * kw] = _first_col(g, kw)
        ranges[2 * kw + 1] = _end_col(g, kw, ranges[2 * kw])
    return ranges


def im2col(const floating_t[:, :, :, ::1] x,   # IN  (N, C, H, W)
           floating_t[:, ::1] col,             # OUT (C*KH*KW, N*OH*OW)
           tuple out_size, tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
           int num_threads):
    """Unfold every receptive field of x into the columns of col (zeros for padding)."""
    cdef Py_ssize_t N = x.shape[0]
    cdef ConvGeom g = _geom(x.shape[1], x.shape[2], x.shape[3], out_size, kernel, stride,
                            dilation, pad_begin)
    cdef Py_ssize_t plane_out = g.OH * g.OW
    cdef Py_ssize_t u, row, n, c, kh, kw
    cdef Py_ssize_t *ranges
    if g.C == 0 or N == 0 or plane_out == 0:
        return
    ranges = _col_ranges(&g)
    # One task per (channel, sample), samples innermost: consecutive tasks write
    # consecutive stretches of the same col rows.
    for u in prange(g.C * N, nogil=True, schedule='static',
                    num_threads=_threads(col.shape[0] * col.shape[1], num_threads)):
        c = u // N
        n = u % N
        row = c * g.KH * g.KW
        for kh in range(g.KH):
            for kw in range(g.KW):
                if floating_t is float:
                    cp_im2col_block_f32(&col[row, n * plane_out], &x[n, c, 0, 0], g.H, g.W,
                                        g.OH, g.OW, g.sh, g.sw, kh * g.dh - g.ph,
                                        kw * g.dw - g.pw, ranges[2 * kw], ranges[2 * kw + 1])
                else:
                    cp_im2col_block_f64(&col[row, n * plane_out], &x[n, c, 0, 0], g.H, g.W,
                                        g.OH, g.OW, g.sh, g.sw, kh * g.dh - g.ph,
                                        kw * g.dw - g.pw, ranges[2 * kw], ranges[2 * kw + 1])
                row = row + 1
    free(ranges)


def col2im(const floating_t[:, ::1] col,       # IN  (C*KH*KW, N*OH*OW)
           floating_t[:, :, :, ::1] x,         # OUT (N, C, H, W)
           tuple out_size, tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
           int num_threads):
    """Fold col back onto x, summing overlapping taps: the adjoint of im2col.

    One task per (c, n) plane: the plane is zeroed, then every (kh, kw, oh) row of col
    is added in that fixed order, so no two threads touch the same element.
    """
    cdef Py_ssize_t N = x.shape[0]
    cdef ConvGeom g = _geom(x.shape[1], x.shape[2], x.shape[3], out_size, kernel, stride,
                            dilation, pad_begin)
    cdef Py_ssize_t plane_out = g.OH * g.OW
    cdef Py_ssize_t u, row, n, c, kh, kw
    cdef Py_ssize_t *ranges
    if N == 0 or g.C == 0 or g.H * g.W == 0:
        return
    ranges = _col_ranges(&g)
    for u in prange(g.C * N, nogil=True, schedule='static',
                    num_threads=_threads(col.shape[0] * col.shape[1], num_threads)):
        c = u // N
        n = u % N
        memset(&x[n, c, 0, 0], 0, g.H * g.W * sizeof(floating_t))
        row = c * g.KH * g.KW
        for kh in range(g.KH):
            for kw in range(g.KW):
                if floating_t is float:
                    cp_col2im_block_f32(&x[n, c, 0, 0], &col[row, n * plane_out], g.H, g.W,
                                        g.OH, g.OW, g.sh, g.sw, kh * g.dh - g.ph,
                                        kw * g.dw - g.pw, ranges[2 * kw], ranges[2 * kw + 1])
                else:
                    cp_col2im_block_f64(&x[n, c, 0, 0], &col[row, n * plane_out], g.H, g.W,
                                        g.OH, g.OW, g.sh, g.sw, kh * g.dh - g.ph,
                                        kw * g.dw - g.pw, ranges[2 * kw], ranges[2 * kw + 1])
                row = row + 1
    free(ranges)


def cols_to_batch(const floating_t[:, ::1] y,     # IN  (Cout, N*P)
                  const floating_t[::1] bias,     # IN  (Cout,) or empty for no bias
                  floating_t[:, :, ::1] out,      # OUT (N, Cout, P)
                  int num_threads):
    """out[n, co, :] = y[co, n*P:(n+1)*P] + bias[co]."""
    cdef Py_ssize_t N = out.shape[0], CO = out.shape[1], P = out.shape[2]
    cdef Py_ssize_t r, n, co, i
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating_t b
    cdef floating_t *dst
    cdef const floating_t *src
    for r in prange(N * CO, nogil=True, schedule='static',
                    num_threads=_threads(N * CO * P, num_threads)):
        n = r // CO
        co = r % CO
        dst = &out[n, co, 0]
        src = &y[co, n * P]
        if has_bias:
            b = bias[co]
            for i in range(P):
                dst[i] = src[i] + b
        else:
            memcpy(dst, src, P * sizeof(floating_t))


def batch_to_cols(const floating_t[:, :, ::1] g,  # IN  (N, Cout, P)
                  floating_t[:, ::1] out,         # OUT (Cout, N*P)
                  double[:, ::1] sums,            # OUT (N, Cout) or (0, 0) to skip
                  int num_threads):
    """out[co, n*P:(n+1)*P] = g[n, co, :] (the inverse of cols_to_batch without bias),
    and sums[n, co] = sum(g[n, co, :]) in double (the bias gradient is sums.sum(axis=0))."""
    cdef Py_ssize_t N = g.shape[0], CO = g.shape[1], P = g.shape[2]
    cdef Py_ssize_t r, n, co
    cdef bint want_sums = sums.shape[0] > 0
    for r in prange(N * CO, nogil=True, schedule='static',
                    num_threads=_threads(N * CO * P, num_threads)):
        n = r // CO
        co = r % CO
        memcpy(&out[co, n * P], &g[n, co, 0], P * sizeof(floating_t))
        if want_sums:
            if floating_t is float:
                sums[n, co] = cp_row_sum_f32(&g[n, co, 0], P)
            else:
                sums[n, co] = cp_row_sum_f64(&g[n, co, 0], P)


def run_blocks(task, Py_ssize_t n_blocks, int num_threads):
    """Call task(i, 1) for every i in range(n_blocks), contiguous ranges of i per thread.

    The blocks of cpool.layers' matrix products call NumPy's BLAS, which only Python can
    reach, so each thread takes the GIL around its call; BLAS and the kernels inside
    release it again. Running them on this OpenMP team rather than on Python threads
    keeps one set of worker threads busy: OpenMP workers still spinning after the
    previous kernel (the active wait policy, e.g. when PyTorch loaded libgomp first)
    would otherwise compete with the Python threads for the cores.
    """
    cdef Py_ssize_t i
    for i in prange(n_blocks, nogil=True, schedule='static', num_threads=num_threads):
        with gil:
            task(i, 1)
