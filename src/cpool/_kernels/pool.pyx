"""Max, average and Lp pooling kernels, forward and backward.

Every kernel sees 1-D, 2-D and 3-D pooling as 3-D: arrays are (planes, D, H, W) with
size-1 leading spatial dims, and the window geometry comes as 3-tuples. Inputs are
validated, contiguous and allocated by cpool.functional; these functions only loop.

Parallel work is split over flattened (plane, output row) so that small N*C still
uses every thread. Each output element is computed by one thread in a fixed order,
so results are bitwise identical for every thread count.
"""
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.math cimport INFINITY

from ._fused cimport floating_t, tap_t

cdef extern from "pool_rows.h" nogil:
    int CP_SUM, CP_SUM_ABS, CP_SUM_SQ, CP_SUM_POW
    void cp_fill_f32(float *a, Py_ssize_t n, float v)
    void cp_fill_f64(double *a, Py_ssize_t n, double v)
    void cp_vmax_f32(float *acc, const float *row, Py_ssize_t n, int first)
    void cp_vmax_f64(double *acc, const double *row, Py_ssize_t n, int first)
    void cp_vsum_f32(float *acc, const float *row, Py_ssize_t n, int first, int op, float p)
    void cp_vsum_f64(double *acc, const double *row, Py_ssize_t n, int first, int op, double p)
    void cp_hmax_f32(float *out, const float *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_hmax_f64(double *out, const double *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_hsum_f32(float *out, const float *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_hsum_f64(double *out, const double *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_divide_f32(float *out, const double *col_div, Py_ssize_t n, double row_div)
    void cp_divide_f64(double *out, const double *col_div, Py_ssize_t n, double row_div)
    void cp_root_f32(float *out, Py_ssize_t n, int op, float p)
    void cp_root_f64(double *out, Py_ssize_t n, int op, double p)
    void cp_hargmax_f32(float *out, int *tap, const float *acc, const int *first_tap,
                        Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_hargmax_f64(double *out, int *tap, const double *acc, const int *first_tap,
                        Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)

cpdef enum PoolOp:
    # The reduction of pool_forward; OP_LP1/OP_LP2 are the fast paths of OP_LP.
    OP_MAX = -1
    OP_AVG = 0
    OP_LP1 = 1
    OP_LP2 = 2
    OP_LP = 3


cdef struct Geom:
    Py_ssize_t D, H, W, OD, OH, OW
    Py_ssize_t kd, kh, kw, sd, sh, sw, dd, dh, dw, pd, ph, pw


cdef Geom _geom(tuple in_size, tuple out_size, tuple kernel, tuple stride,
                tuple dilation, tuple pad_begin):
    cdef Geom g
    g.D, g.H, g.W = in_size
    g.OD, g.OH, g.OW = out_size
    g.kd, g.kh, g.kw = kernel
    g.sd, g.sh, g.sw = stride
    g.dd, g.dh, g.dw = dilation
    g.pd, g.ph, g.pw = pad_begin
    return g


cdef tuple _size(Py_ssize_t *shape):
    """The spatial (D, H, W) part of a (P, D, H, W) memoryview's shape."""
    return (shape[1], shape[2], shape[3])


cdef inline Py_ssize_t _row_buffer_len(Geom *g) noexcept nogil:
    """Length of the padded row: the input at offset pw plus every tap the last window reads."""
    cdef Py_ssize_t need = (g.OW - 1) * g.sw + (g.kw - 1) * g.dw + 1
    return need if need > g.pw + g.W else g.pw + g.W


cdef inline Py_ssize_t _first_inside(Py_ssize_t start, Py_ssize_t dil, Py_ssize_t k) noexcept nogil:
    """First tap t with start + t*dil >= 0 (PyTorch's initial argmax), or k-1."""
    cdef Py_ssize_t t = 0
    while t < k - 1 and start + t * dil < 0:
        t += 1
    return t


def pool_forward(const floating_t[:, :, :, ::1] x,   # IN  (P, D, H, W)
                 floating_t[:, :, :, ::1] out,       # OUT (P, OD, OH, OW)
                 tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
                 int op, double p,
                 const double[::1] div_d, const double[::1] div_h, const double[::1] div_w,
                 int num_threads):
    """Max (op=-1), average (op=0) or Lp (op=1, 2, 3) pooling of every plane.

    Average divides each window sum by div_d[od] * div_h[oh] * div_w[ow].
    Lp sums |x|**p (op 3; op 1 and 2 are the fast p=1 and p=2) and takes the p-th root.
    """
    cdef Geom g = _geom(_size(x.shape), _size(out.shape), kernel, stride, dilation, pad_begin)
    cdef Py_ssize_t P = x.shape[0]
    cdef Py_ssize_t n_rows = P * g.OD * g.OH
    cdef Py_ssize_t buf_len = _row_buffer_len(&g)
    cdef Py_ssize_t r, plane, od, oh, kd, kh, i_d, i_h
    cdef floating_t *acc
    cdef floating_t *out_row
    cdef const floating_t *in_row
    cdef floating_t pad_value = -INFINITY if op == OP_MAX else 0
    cdef floating_t fp = <floating_t>p
    cdef int first
    if n_rows == 0 or g.OW == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        acc = <floating_t *>malloc(buf_len * sizeof(floating_t))
        if floating_t is float:
            cp_fill_f32(acc, buf_len, pad_value)
        else:
            cp_fill_f64(acc, buf_len, pad_value)
        for r in prange(n_rows, schedule='static'):
            oh = r % g.OH
            od = (r // g.OH) % g.OD
            plane = r // (g.OH * g.OD)
            first = 1
            for kd in range(g.kd):
                i_d = od * g.sd - g.pd + kd * g.dd
                if i_d < 0 or i_d >= g.D:
                    continue
                for kh in range(g.kh):
                    i_h = oh * g.sh - g.ph + kh * g.dh
                    if i_h < 0 or i_h >= g.H:
                        continue
                    in_row = &x[plane, i_d, i_h, 0]
                    if floating_t is float:
                        if op == OP_MAX:
                            cp_vmax_f32(acc + g.pw, in_row, g.W, first)
                        else:
                            cp_vsum_f32(acc + g.pw, in_row, g.W, first, op, fp)
                    else:
                        if op == OP_MAX:
                            cp_vmax_f64(acc + g.pw, in_row, g.W, first)
                        else:
                            cp_vsum_f64(acc + g.pw, in_row, g.W, first, op, fp)
                    first = 0
            if first:  # the window's rows are all padding
                if floating_t is float:
                    cp_fill_f32(acc + g.pw, g.W, pad_value)
                else:
                    cp_fill_f64(acc + g.pw, g.W, pad_value)
            out_row = &out[plane, od, oh, 0]
            if floating_t is float:
                if op == OP_MAX:
                    cp_hmax_f32(out_row, acc, g.OW, g.kw, g.sw, g.dw)
                else:
                    cp_hsum_f32(out_row, acc, g.OW, g.kw, g.sw, g.dw)
                    if op == OP_AVG:
                        cp_divide_f32(out_row, &div_w[0], g.OW, div_d[od] * div_h[oh])
                    else:
                        cp_root_f32(out_row, g.OW, op, fp)
            else:
                if op == OP_MAX:
                    cp_hmax_f64(out_row, acc, g.OW, g.kw, g.sw, g.dw)
                else:
                    cp_hsum_f64(out_row, acc, g.OW, g.kw, g.sw, g.dw)
                    if op == OP_AVG:
                        cp_divide_f64(out_row, &div_w[0], g.OW, div_d[od] * div_h[oh])
                    else:
                        cp_root_f64(out_row, g.OW, op, fp)
        free(acc)


def max_pool_forward_taps(const floating_t[:, :, :, ::1] x,  # IN  (P, D, H, W)
                          floating_t[:, :, :, ::1] out,      # OUT (P, OD, OH, OW)
                          tap_t[:, :, :, ::1] taps,          # OUT (P, OD, OH, OW)
                          tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
                          const int[::1] first_kw, int num_threads):
    """Max pooling that also records each window's argmax as a tap number
    (kd*KH + kh)*KW + kw.

    Rows are reduced horizontally first, then combined in row order, so the argmax is
    the first maximum in scan order and a NaN wins from wherever it is (PyTorch's
    rule, in which the last NaN of the window is reported).
    """
    cdef Geom g = _geom(_size(x.shape), _size(out.shape), kernel, stride, dilation, pad_begin)
    cdef Py_ssize_t P = x.shape[0]
    cdef Py_ssize_t n_rows = P * g.OD * g.OH
    cdef Py_ssize_t buf_len = _row_buffer_len(&g)
    cdef Py_ssize_t r, plane, od, oh, kd, kh, i_d, i_h, ow, tap0
    cdef floating_t *acc
    cdef floating_t *hval
    cdef int *htap
    cdef floating_t *out_row
    cdef tap_t *tap_row
    cdef floating_t v, m
    if n_rows == 0 or g.OW == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        acc = <floating_t *>malloc((buf_len + g.OW) * sizeof(floating_t))
        hval = acc + buf_len
        htap = <int *>malloc(g.OW * sizeof(int))
        if floating_t is float:
            cp_fill_f32(acc, buf_len, -INFINITY)
        else:
            cp_fill_f64(acc, buf_len, -INFINITY)
        for r in prange(n_rows, schedule='static'):
            oh = r % g.OH
            od = (r // g.OH) % g.OD
            plane = r // (g.OH * g.OD)
            out_row = &out[plane, od, oh, 0]
            tap_row = &taps[plane, od, oh, 0]
            tap0 = (_first_inside(od * g.sd - g.pd, g.dd, g.kd) * g.kh
                    + _first_inside(oh * g.sh - g.ph, g.dh, g.kh)) * g.kw
            for ow in range(g.OW):
                out_row[ow] = -INFINITY
                tap_row[ow] = <tap_t>(tap0 + first_kw[ow])
            for kd in range(g.kd):
                i_d = od * g.sd - g.pd + kd * g.dd
                if i_d < 0 or i_d >= g.D:
                    continue
                for kh in range(g.kh):
                    i_h = oh * g.sh - g.ph + kh * g.dh
                    if i_h < 0 or i_h >= g.H:
                        continue
                    if floating_t is float:
                        cp_vmax_f32(acc + g.pw, &x[plane, i_d, i_h, 0], g.W, 1)
                        cp_hargmax_f32(hval, htap, acc, &first_kw[0], g.OW, g.kw, g.sw, g.dw)
                    else:
                        cp_vmax_f64(acc + g.pw, &x[plane, i_d, i_h, 0], g.W, 1)
                        cp_hargmax_f64(hval, htap, acc, &first_kw[0], g.OW, g.kw, g.sw, g.dw)
                    tap0 = (kd * g.kh + kh) * g.kw
                    for ow in range(g.OW):
                        v = hval[ow]
                        m = out_row[ow]
                        if v > m or v != v:
                            out_row[ow] = v
                            tap_row[ow] = <tap_t>(tap0 + htap[ow])
        free(htap)
        free(acc)


def taps_to_indices(const tap_t[:, :, :, ::1] taps,   # IN  (P, OD, OH, OW)
                    long long[:, :, :, ::1] indices,  # OUT (P, OD, OH, OW)
                    tuple in_size, tuple kernel, tuple stride, tuple dilation,
                    tuple pad_begin, int num_threads):
    """Turn window taps into PyTorch's indices: flat positions within each input plane."""
    cdef Geom g = _geom(in_size, _size(taps.shape), kernel, stride, dilation, pad_begin)
    cdef Py_ssize_t n_rows = taps.shape[0] * g.OD * g.OH
    cdef Py_ssize_t r, plane, od, oh, ow, t, i_d, i_h, i_w
    for r in prange(n_rows, nogil=True, schedule='static', num_threads=num_threads):
        oh = r % g.OH
        od = (r // g.OH) % g.OD
        plane = r // (g.OH * g.OD)
        for ow in range(g.OW):
            t = taps[plane, od, oh, ow]
            i_w = ow * g.sw - g.pw + (t % g.kw) * g.dw
            i_h = oh * g.sh - g.ph + ((t // g.kw) % g.kh) * g.dh
            i_d = od * g.sd - g.pd + (t // (g.kw * g.kh)) * g.dd
            indices[plane, od, oh, ow] = (i_d * g.H + i_h) * g.W + i_w


def max_pool_backward_taps(const floating_t[:, :, :, ::1] grad_out,  # IN  (P, OD, OH, OW)
                           const tap_t[:, :, :, ::1] taps,           # IN  (P, OD, OH, OW)
                           floating_t[:, :, :, ::1] grad_in,          # OUT (P, D, H, W)
                           const Py_ssize_t[:, ::1] cover_d,         # IN  per-dim cover tables
                           const Py_ssize_t[:, ::1] cover_h,
                           const Py_ssize_t[:, ::1] cover_w,
                           tuple kernel, int num_threads):
    """Gradient of max pooling in gather form.

    Each input element sums grad_out over the windows that cover it and chose it, so it
    is written exactly once: no zero fill, no atomics, a fixed summation order.
    cover_x[i] = [n, o_0, k_0, ..., o_{n-1}, k_{n-1}] lists the (output, tap) pairs of
    the windows covering input coordinate i along that dim.
    """
    cdef Py_ssize_t KH = kernel[1], KW = kernel[2]
    cdef Py_ssize_t P = grad_in.shape[0], D = grad_in.shape[1]
    cdef Py_ssize_t H = grad_in.shape[2], W = grad_in.shape[3]
    cdef Py_ssize_t n_rows = P * D * H
    cdef Py_ssize_t r, plane, i_d, i_h, i_w, a, b, c, od, oh, ow, tap_dh
    cdef const Py_ssize_t *cd
    cdef const Py_ssize_t *ch
    cdef const Py_ssize_t *cw
    cdef floating_t total
    for r in prange(n_rows, nogil=True, schedule='static', num_threads=num_threads):
        i_h = r % H
        i_d = (r // H) % D
        plane = r // (H * D)
        cd = &cover_d[i_d, 0]
        ch = &cover_h[i_h, 0]
        for i_w in range(W):
            cw = &cover_w[i_w, 0]
            total = 0
            for a in range(cd[0]):
                od = cd[1 + 2 * a]
                for b in range(ch[0]):
                    oh = ch[1 + 2 * b]
                    tap_dh = (cd[2 + 2 * a] * KH + ch[2 + 2 * b]) * KW
                    for c in range(cw[0]):
                        ow = cw[1 + 2 * c]
                        if taps[plane, od, oh, ow] == tap_dh + cw[2 + 2 * c]:
                            total = total + grad_out[plane, od, oh, ow]
            grad_in[plane, i_d, i_h, i_w] = total


def sum_pool_backward(const floating_t[:, :, :, ::1] weight_out,  # IN  (P, OD, OH, OW)
                      floating_t[:, :, :, ::1] grad_in,           # OUT (P, D, H, W)
                      const Py_ssize_t[:, ::1] cover_d,          # IN  per-dim cover tables
                      const Py_ssize_t[:, ::1] cover_h,
                      const Py_ssize_t[:, ::1] cover_w,
                      int num_threads):
    """grad_in[i] = sum of weight_out over the windows that cover i (gather form).

    Average pooling passes grad_out / divisor; Lp pooling passes grad_out / y**(p-1) and
    scales the result by sign(x)|x|**(p-1).
    """
    cdef Py_ssize_t P = grad_in.shape[0], D = grad_in.shape[1]
    cdef Py_ssize_t H = grad_in.shape[2], W = grad_in.shape[3]
    cdef Py_ssize_t n_rows = P * D * H
    cdef Py_ssize_t r, plane, i_d, i_h, i_w, a, b, c, od, oh
    cdef const Py_ssize_t *cd
    cdef const Py_ssize_t *ch
    cdef const Py_ssize_t *cw
    cdef floating_t total
    for r in prange(n_rows, nogil=True, schedule='static', num_threads=num_threads):
        i_h = r % H
        i_d = (r // H) % D
        plane = r // (H * D)
        cd = &cover_d[i_d, 0]
        ch = &cover_h[i_h, 0]
        for i_w in range(W):
            cw = &cover_w[i_w, 0]
            total = 0
            for a in range(cd[0]):
                od = cd[1 + 2 * a]
                for b in range(ch[0]):
                    oh = ch[1 + 2 * b]
                    for c in range(cw[0]):
                        total = total + weight_out[plane, od, oh, cw[1 + 2 * c]]
            grad_in[plane, i_d, i_h, i_w] = total


def scatter_planes(const floating_t[:, ::1] values,   # IN  (P, M)
                   const long long[:, ::1] indices,   # IN  (P, M), each in [0, L)
                   floating_t[:, ::1] out,            # OUT (P, L), zero on entry
                   bint accumulate, int num_threads):
    """out[p, indices[p, m]] (+)= values[p, m], one plane per thread in index order.

    accumulate=True is the backward of max pooling from PyTorch-style indices;
    accumulate=False is max unpooling (a later duplicate overwrites, deterministically).
    """
    cdef Py_ssize_t P = values.shape[0], M = values.shape[1]
    cdef Py_ssize_t plane, m
    for plane in prange(P, nogil=True, schedule='static', num_threads=num_threads):
        if accumulate:
            for m in range(M):
                out[plane, indices[plane, m]] += values[plane, m]
        else:
            for m in range(M):
                out[plane, indices[plane, m]] = values[plane, m]
