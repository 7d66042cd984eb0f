"""Bin pooling kernels: global, adaptive, variable-scale (binned) and pyramid pooling.

A bin pooling is given, per spatial axis, a list of half-open bins (start, end) as an
(O, 2) array; output[p, od, oh, ow] reduces the box bins_d[od] x bins_h[oh] x bins_w[ow]
of input plane p. Bins may differ in size, overlap or leave gaps; they are validated
(non-empty, inside the input) by cpool._binned before any kernel runs. 1-D and 2-D
poolings are 3-D ones with size-1 leading dims and the single bin (0, 1) there.

Forward work is split over flattened (plane, output row), backward over flattened
(plane, input row). Every output element is computed by one thread in a fixed order,
so results are bitwise identical for every thread count.
"""
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from libc.math cimport INFINITY

from ._fused cimport floating_t, tap_t

cdef extern from "pool_rows.h" nogil:
    void cp_vmax_f32(float *acc, const float *row, Py_ssize_t n, int first)
    void cp_vmax_f64(double *acc, const double *row, Py_ssize_t n, int first)
    void cp_vsum_f32(float *acc, const float *row, Py_ssize_t n, int first, int op, float p)
    void cp_vsum_f64(double *acc, const double *row, Py_ssize_t n, int first, int op, double p)
    void cp_hmax_f32(float *out, const float *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_hmax_f64(double *out, const double *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_hsum_f32(float *out, const float *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_hsum_f64(double *out, const double *acc, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t d)
    void cp_root_f32(float *out, Py_ssize_t n, int op, float p)
    void cp_root_f64(double *out, Py_ssize_t n, int op, double p)

# The reductions, numbered as cpool._kernels.pool.PoolOp (and pool_rows.h's CP_SUM_*).
cdef enum:
    OP_MAX = -1
    OP_AVG = 0


cdef inline void _hgeneric(floating_t *out_row, const floating_t *acc,
                           const Py_ssize_t *bins_w, Py_ssize_t n, Py_ssize_t wlo,
                           bint is_max) noexcept nogil:
    """out_row[o] = max or sum of acc over bin o of the (n, 2) array bins_w (acc starts
    at input column wlo); max in scan order with PyTorch's NaN rule."""
    cdef Py_ssize_t o, t, e
    cdef floating_t m, v
    for o in range(n):
        t = bins_w[2 * o] - wlo
        e = bins_w[2 * o + 1] - wlo
        m = acc[t]
        t = t + 1
        if is_max:
            while t < e:
                v = acc[t]
                if v > m or v != v:
                    m = v
                t = t + 1
        else:
            while t < e:
                m = m + acc[t]
                t = t + 1
        out_row[o] = m


def bin_pool_forward(const floating_t[:, :, :, ::1] x,   # IN  (P, D, H, W)
                     floating_t[:, :, :, ::1] out,       # OUT (P, OD, OH, OW)
                     const Py_ssize_t[:, ::1] bins_d,    # IN  (OD, 2) start, end
                     const Py_ssize_t[:, ::1] bins_h,    # IN  (OH, 2)
                     const Py_ssize_t[:, ::1] bins_w,    # IN  (OW, 2)
                     Py_ssize_t uniform_k, Py_ssize_t uniform_s,
                     int op, double p, int num_threads):
    """Max (op=-1), average (op=0) or Lp (op=1, 2, 3: sum of |x|, x*x, |x|**p, then the
    p-th root) over every bin.

    The input rows of a bin row are reduced element-wise into a row buffer (vectorized),
    then each bin sums or maxes its stretch of the buffer. When the W bins are a regular
    grid (size uniform_k > 0, start o*uniform_s + bins_w[0, 0]) the horizontal pass is
    pool_rows.h's sliding-window one, specialized for (k, s) = (2, 2), (3, 2), ...
    The average divides by the bin's element count.
    """
    cdef Py_ssize_t P = x.shape[0], OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t n_rows = P * OD * OH
    cdef Py_ssize_t wlo = bins_w[0, 0], whi = bins_w[0, 1]
    cdef Py_ssize_t r, plane, od, oh, ow, i_d, i_h, o, n_acc, rows
    cdef floating_t *acc
    cdef floating_t *out_row
    cdef floating_t fp = <floating_t>p
    cdef int first
    if n_rows == 0:
        return
    for o in range(OW):
        wlo = min(wlo, bins_w[o, 0])
        whi = max(whi, bins_w[o, 1])
    n_acc = whi - wlo
    with nogil, parallel(num_threads=num_threads):
        acc = <floating_t *>malloc(n_acc * sizeof(floating_t))
        for r in prange(n_rows, schedule='static'):
            oh = r % OH
            od = (r // OH) % OD
            plane = r // (OH * OD)
            first = 1
            for i_d in range(bins_d[od, 0], bins_d[od, 1]):
                for i_h in range(bins_h[oh, 0], bins_h[oh, 1]):
                    if floating_t is float:
                        if op == OP_MAX:
                            cp_vmax_f32(acc, &x[plane, i_d, i_h, wlo], n_acc, first)
                        else:
                            cp_vsum_f32(acc, &x[plane, i_d, i_h, wlo], n_acc, first, op, fp)
                    else:
                        if op == OP_MAX:
                            cp_vmax_f64(acc, &x[plane, i_d, i_h, wlo], n_acc, first)
                        else:
                            cp_vsum_f64(acc, &x[plane, i_d, i_h, wlo], n_acc, first, op, fp)
                    first = 0
            out_row = &out[plane, od, oh, 0]
            if uniform_k > 0:
                if floating_t is float:
                    if op == OP_MAX:
                        cp_hmax_f32(out_row, acc + (bins_w[0, 0] - wlo), OW, uniform_k, uniform_s, 1)
                    else:
                        cp_hsum_f32(out_row, acc + (bins_w[0, 0] - wlo), OW, uniform_k, uniform_s, 1)
                else:
                    if op == OP_MAX:
                        cp_hmax_f64(out_row, acc + (bins_w[0, 0] - wlo), OW, uniform_k, uniform_s, 1)
                    else:
                        cp_hsum_f64(out_row, acc + (bins_w[0, 0] - wlo), OW, uniform_k, uniform_s, 1)
            else:
                _hgeneric(out_row, acc, &bins_w[0, 0], OW, wlo, op == OP_MAX)
            if op == OP_AVG:
                rows = (bins_d[od, 1] - bins_d[od, 0]) * (bins_h[oh, 1] - bins_h[oh, 0])
                for ow in range(OW):
                    out_row[ow] = out_row[ow] / <floating_t>(
                        <double>rows * <double>(bins_w[ow, 1] - bins_w[ow, 0]))
            elif op != OP_MAX:
                if floating_t is float:
                    cp_root_f32(out_row, OW, op, fp)
                else:
                    cp_root_f64(out_row, OW, op, fp)
        free(acc)


def bin_max_forward_taps(const floating_t[:, :, :, ::1] x,   # IN  (P, D, H, W)
                         floating_t[:, :, :, ::1] out,       # OUT (P, OD, OH, OW)
                         tap_t[:, :, :, ::1] taps,           # OUT (P, OD, OH, OW)
                         const Py_ssize_t[:, ::1] bins_d,    # IN  (OD, 2)
                         const Py_ssize_t[:, ::1] bins_h,    # IN  (OH, 2)
                         const Py_ssize_t[:, ::1] bins_w,    # IN  (OW, 2)
                         int num_threads):
    """Max over every bin plus its argmax as a within-bin tap (td*BH + th)*BW + tw,
    where (BD, BH, BW) is the bin's size and (td, th, tw) the offset from its start.

    Scan order is (d, h, w); a value wins when it is larger or NaN (PyTorch's rule), so
    ties keep the first maximum, a NaN bin reports its last NaN, and a bin of -inf
    reports tap 0.
    """
    cdef Py_ssize_t P = x.shape[0], OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t n_rows = P * OD * OH
    cdef Py_ssize_t r, plane, od, oh, ow, i_d, i_h, t, s, e, best, row_key, bh, bw
    cdef const floating_t *in_row
    cdef floating_t *out_row
    cdef tap_t *tap_row
    cdef floating_t m, v
    if n_rows == 0:
        return
    for r in prange(n_rows, nogil=True, schedule='static', num_threads=num_threads):
        oh = r % OH
        od = (r // OH) % OD
        plane = r // (OH * OD)
        out_row = &out[plane, od, oh, 0]
        tap_row = &taps[plane, od, oh, 0]
        for ow in range(OW):
            out_row[ow] = -INFINITY
            tap_row[ow] = 0
        bh = bins_h[oh, 1] - bins_h[oh, 0]
        for i_d in range(bins_d[od, 0], bins_d[od, 1]):
            for i_h in range(bins_h[oh, 0], bins_h[oh, 1]):
                in_row = &x[plane, i_d, i_h, 0]
                row_key = (i_d - bins_d[od, 0]) * bh + (i_h - bins_h[oh, 0])
                for ow in range(OW):
                    s = bins_w[ow, 0]
                    e = bins_w[ow, 1]
                    m = out_row[ow]
                    best = -1
                    for t in range(s, e):
                        v = in_row[t]
                        if v > m or v != v:
                            m = v
                            best = t
                    if best >= 0:
                        out_row[ow] = m
                        tap_row[ow] = <tap_t>(row_key * (e - s) + best - s)


def bin_taps_to_indices(const tap_t[:, :, :, ::1] taps,     # IN  (P, OD, OH, OW)
                        long long[:, :, :, ::1] indices,    # OUT (P, OD, OH, OW)
                        const Py_ssize_t[:, ::1] bins_d,    # IN  (OD, 2)
                        const Py_ssize_t[:, ::1] bins_h,    # IN  (OH, 2)
                        const Py_ssize_t[:, ::1] bins_w,    # IN  (OW, 2)
                        Py_ssize_t H, Py_ssize_t W, int num_threads):
    """Within-bin taps -> PyTorch's indices, flat within each (H, W) or (D, H, W) plane."""
    cdef Py_ssize_t P = taps.shape[0], OD = taps.shape[1], OH = taps.shape[2], OW = taps.shape[3]
    cdef Py_ssize_t n_rows = P * OD * OH
    cdef Py_ssize_t r, plane, od, oh, ow, t, bh, bw, i_d, i_h, i_w
    for r in prange(n_rows, nogil=True, schedule='static', num_threads=num_threads):
        oh = r % OH
        od = (r // OH) % OD
        plane = r // (OH * OD)
        bh = bins_h[oh, 1] - bins_h[oh, 0]
        for ow in range(OW):
            bw = bins_w[ow, 1] - bins_w[ow, 0]
            t = taps[plane, od, oh, ow]
            i_w = bins_w[ow, 0] + t % bw
            i_h = bins_h[oh, 0] + (t // bw) % bh
            i_d = bins_d[od, 0] + t // (bw * bh)
            indices[plane, od, oh, ow] = (i_d * H + i_h) * W + i_w


def bin_max_backward(const floating_t[:, :, :, ::1] grad_out,  # IN  (P, OD, OH, OW)
                     const tap_t[:, :, :, ::1] taps,           # IN  (P, OD, OH, OW)
                     floating_t[:, :, :, ::1] grad_in,          # OUT (P, D, H, W)
                     const Py_ssize_t[:, ::1] bins_d,          # IN  (OD, 2)
                     const Py_ssize_t[:, ::1] bins_h,          # IN  (OH, 2)
                     const Py_ssize_t[:, ::1] bins_w,          # IN  (OW, 2)
                     const Py_ssize_t[:, ::1] cover_d,         # IN  (D, 1 + max cover)
                     const Py_ssize_t[:, ::1] cover_h,         # IN  (H, 1 + max cover)
                     bint accumulate, int num_threads):
    """Gradient of bin max pooling from the taps of bin_max_forward_taps, by input row.

    cover_x[i] = [n, o_0, ..., o_{n-1}]: the bins covering input coordinate i, increasing.
    Each input row gathers, into a thread-private buffer, the gradient of every bin row
    covering it whose argmax lies in this row; the buffer is then written once (added
    when accumulate, as the levels of a spatial pyramid do). The summation order is
    (od, oh, ow) increasing for every thread count.
    """
    cdef Py_ssize_t P = grad_in.shape[0], D = grad_in.shape[1]
    cdef Py_ssize_t H = grad_in.shape[2], W = grad_in.shape[3], OW = grad_out.shape[3]
    cdef Py_ssize_t n_rows = P * D * H
    cdef Py_ssize_t r, plane, i_d, i_h, i_w, a, b, od, oh, ow, t, lo, bw, row_key
    cdef floating_t *buf
    cdef floating_t *in_row
    cdef const floating_t *g_row
    cdef const tap_t *tap_row
    if n_rows == 0 or W == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        buf = <floating_t *>malloc(W * sizeof(floating_t))
        for r in prange(n_rows, schedule='static'):
            i_h = r % H
            i_d = (r // H) % D
            plane = r // (H * D)
            memset(buf, 0, W * sizeof(floating_t))
            for a in range(cover_d[i_d, 0]):
                od = cover_d[i_d, 1 + a]
                for b in range(cover_h[i_h, 0]):
                    oh = cover_h[i_h, 1 + b]
                    row_key = ((i_d - bins_d[od, 0]) * (bins_h[oh, 1] - bins_h[oh, 0])
                               + i_h - bins_h[oh, 0])
                    g_row = &grad_out[plane, od, oh, 0]
                    tap_row = &taps[plane, od, oh, 0]
                    for ow in range(OW):
                        bw = bins_w[ow, 1] - bins_w[ow, 0]
                        lo = row_key * bw
                        t = tap_row[ow]
                        if t >= lo and t < lo + bw:
                            buf[bins_w[ow, 0] + t - lo] += g_row[ow]
            in_row = &grad_in[plane, i_d, i_h, 0]
            if accumulate:
                for i_w in range(W):
                    in_row[i_w] += buf[i_w]
            else:
                for i_w in range(W):
                    in_row[i_w] = buf[i_w]
        free(buf)


def bin_sum_backward(const floating_t[:, :, :, ::1] weight_out,  # IN  (P, OD, OH, OW)
                     floating_t[:, :, :, ::1] grad_in,           # OUT (P, D, H, W)
                     const Py_ssize_t[:, ::1] bins_d,            # IN  (OD, 2)
                     const Py_ssize_t[:, ::1] bins_h,            # IN  (OH, 2)
                     const Py_ssize_t[:, ::1] bins_w,            # IN  (OW, 2)
                     const Py_ssize_t[:, ::1] cover_d,           # IN  as bin_max_backward
                     const Py_ssize_t[:, ::1] cover_h,
                     bint accumulate, int num_threads):
    """grad_in[i] (+)= sum of weight_out over the bins covering i, by input row.

    Average pooling passes grad_out / bin size; Lp pooling passes grad_out / y**(p-1) and
    scales the result by sign(x)|x|**(p-1). Order and determinism as bin_max_backward.
    """
    cdef Py_ssize_t P = grad_in.shape[0], D = grad_in.shape[1]
    cdef Py_ssize_t H = grad_in.shape[2], W = grad_in.shape[3], OW = weight_out.shape[3]
    cdef Py_ssize_t n_rows = P * D * H
    cdef Py_ssize_t r, plane, i_d, i_h, i_w, a, b, od, oh, ow
    cdef floating_t *buf
    cdef floating_t *in_row
    cdef const floating_t *w_row
    cdef floating_t wv
    if n_rows == 0 or W == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        buf = <floating_t *>malloc(W * sizeof(floating_t))
        for r in prange(n_rows, schedule='static'):
            i_h = r % H
            i_d = (r // H) % D
            plane = r // (H * D)
            memset(buf, 0, W * sizeof(floating_t))
            for a in range(cover_d[i_d, 0]):
                od = cover_d[i_d, 1 + a]
                for b in range(cover_h[i_h, 0]):
                    oh = cover_h[i_h, 1 + b]
                    w_row = &weight_out[plane, od, oh, 0]
                    for ow in range(OW):
                        wv = w_row[ow]
                        for i_w in range(bins_w[ow, 0], bins_w[ow, 1]):
                            buf[i_w] += wv
            in_row = &grad_in[plane, i_d, i_h, 0]
            if accumulate:
                for i_w in range(W):
                    in_row[i_w] += buf[i_w]
            else:
                for i_w in range(W):
                    in_row[i_w] = buf[i_w]
        free(buf)
