"""Bin pooling kernels: global, adaptive, variable-scale (binned) and pyramid pooling.

A bin pooling is given, per spatial axis, a list of half-open bins (start, end) as an
(O, 2) array; output[p, od, oh, ow] reduces the box bins_d[od] x bins_h[oh] x bins_w[ow]
of input plane p. Bins may differ in size, overlap or leave gaps; they are validated
(non-empty, inside the input) by cpool._binned before any kernel runs. 1-D and 2-D
poolings are 3-D ones with size-1 leading dims and the single bin (0, 1) there.

Forward work is split over flattened (plane, output row), backward over planes. Every
output element is computed by one thread in a fixed order, so results are bitwise
identical for every thread count.
"""
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from libc.math cimport INFINITY, pow, powf, sqrt, sqrtf

from ._fused cimport floating_t, tap_t

cdef extern from "bin_rows.h" nogil:
    # Per-instruction-set tables of bin_rows_impl.h (see bin_rows.h).
    void cpb_argmax_row_f32_base(float *m, int *tap, const float *row, const Py_ssize_t *bins,
                                 Py_ssize_t n, Py_ssize_t k, Py_ssize_t s, Py_ssize_t row_key)
    void cpb_argmax_row_f64_base(double *m, int *tap, const double *row,
                                 const Py_ssize_t *bins, Py_ssize_t n, Py_ssize_t k,
                                 Py_ssize_t s, Py_ssize_t row_key)
    ctypedef struct cpb_rows_f32_t:
        void (*hbins)(float *out, const float *acc, const Py_ssize_t *bins, Py_ssize_t n,
                      Py_ssize_t wlo, int is_max) noexcept nogil
        Py_ssize_t (*find_tap)(const float *plane, Py_ssize_t H, Py_ssize_t W, Py_ssize_t d0,
                               Py_ssize_t d1, Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t w0,
                               Py_ssize_t w1, float *m) noexcept nogil
        float (*reduce)(const float *a, Py_ssize_t n, int op, float p) noexcept nogil
    ctypedef struct cpb_rows_f64_t:
        void (*hbins)(double *out, const double *acc, const Py_ssize_t *bins, Py_ssize_t n,
                      Py_ssize_t wlo, int is_max) noexcept nogil
        Py_ssize_t (*find_tap)(const double *plane, Py_ssize_t H, Py_ssize_t W, Py_ssize_t d0,
                               Py_ssize_t d1, Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t w0,
                               Py_ssize_t w1, double *m) noexcept nogil
        double (*reduce)(const double *a, Py_ssize_t n, int op, double p) noexcept nogil
    const cpb_rows_f32_t *cpb_rows_f32_select(int level)
    const cpb_rows_f64_t *cpb_rows_f64_select(int level)

from ._pool_rows cimport cp_rows_f32_select, cp_rows_f32_t, cp_rows_f64_select, cp_rows_f64_t

from .pool import get_simd_level

# Row code of the instruction set pool.pyx has chosen, refreshed by every kernel call.
cdef const cp_rows_f32_t *R32 = cp_rows_f32_select(0)
cdef const cp_rows_f64_t *R64 = cp_rows_f64_select(0)
cdef const cpb_rows_f32_t *B32 = cpb_rows_f32_select(0)
cdef const cpb_rows_f64_t *B64 = cpb_rows_f64_select(0)


cdef void _follow_simd_level():
    global R32, R64, B32, B64
    cdef int level = get_simd_level()
    R32 = cp_rows_f32_select(level)
    R64 = cp_rows_f64_select(level)
    B32 = cpb_rows_f32_select(level)
    B64 = cpb_rows_f64_select(level)


# The reductions, numbered as cpool._kernels.pool.PoolOp (and pool_rows.h's CP_SUM_*).
cdef enum:
    OP_MAX = -1
    OP_AVG = 0

# The vectorized argmax merge pays with at least this many W bins of at most this size
# (fewer lanes, or larger bins, favour max-then-find); measured on adaptive/SPP shapes.
cdef Py_ssize_t MERGE_MIN_BINS = 4
cdef Py_ssize_t MERGE_MAX_SIZE = 4


def set_merge_limits(Py_ssize_t min_bins, Py_ssize_t max_size):
    """Tuning and test hook: when bin_max_forward_taps uses the argmax merge (see
    above). Returns the previous (min_bins, max_size)."""
    global MERGE_MIN_BINS, MERGE_MAX_SIZE
    previous = (MERGE_MIN_BINS, MERGE_MAX_SIZE)
    MERGE_MIN_BINS, MERGE_MAX_SIZE = min_bins, max_size
    return previous


cdef inline void _reduce_bin_row(const floating_t *xp, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t h0, Py_ssize_t h1,
                                 const Py_ssize_t *bins_w, Py_ssize_t OW, Py_ssize_t wlo,
                                 Py_ssize_t n_acc, Py_ssize_t uniform_k, Py_ssize_t uniform_s,
                                 int op, floating_t p, floating_t *acc,
                                 floating_t *out_row) noexcept nogil:
    """One output row: reduce the input rows [d0,d1) x [h0,h1) of plane xp (columns
    [wlo, wlo + n_acc)) element-wise into acc, then each W bin over its stretch of acc;
    average and Lp finish (divide, root) here."""
    cdef Py_ssize_t i_d, i_h, ow, rows
    cdef int first = 1
    cdef const floating_t *row
    for i_d in range(d0, d1):
        for i_h in range(h0, h1):
            row = xp + (i_d * H + i_h) * W + wlo
            if floating_t is float:
                if op == OP_MAX:
                    R32.vmax(acc, row, n_acc, first)
                else:
                    R32.vsum(acc, row, n_acc, first, op, p)
            else:
                if op == OP_MAX:
                    R64.vmax(acc, row, n_acc, first)
                else:
                    R64.vsum(acc, row, n_acc, first, op, p)
            first = 0
    if uniform_k > 0:
        if floating_t is float:
            if op == OP_MAX:
                R32.hmax(out_row, acc + (bins_w[0] - wlo), OW, uniform_k, uniform_s, 1)
            else:
                R32.hsum(out_row, acc + (bins_w[0] - wlo), OW, uniform_k, uniform_s, 1)
        else:
            if op == OP_MAX:
                R64.hmax(out_row, acc + (bins_w[0] - wlo), OW, uniform_k, uniform_s, 1)
            else:
                R64.hsum(out_row, acc + (bins_w[0] - wlo), OW, uniform_k, uniform_s, 1)
    else:
        if floating_t is float:
            B32.hbins(out_row, acc, bins_w, OW, wlo, op == OP_MAX)
        else:
            B64.hbins(out_row, acc, bins_w, OW, wlo, op == OP_MAX)
    if op == OP_AVG:
        rows = (d1 - d0) * (h1 - h0)
        for ow in range(OW):
            out_row[ow] = out_row[ow] / <floating_t>(
                <double>rows * <double>(bins_w[2 * ow + 1] - bins_w[2 * ow]))
    elif op != OP_MAX:
        if floating_t is float:
            R32.root(out_row, OW, op, p)
        else:
            R64.root(out_row, OW, op, p)


cdef (Py_ssize_t, Py_ssize_t) _column_span(const Py_ssize_t[:, ::1] bins_w):
    """The input columns [lo, hi) that some W bin reads."""
    cdef Py_ssize_t o, lo = bins_w[0, 0], hi = bins_w[0, 1]
    for o in range(bins_w.shape[0]):
        lo = min(lo, bins_w[o, 0])
        hi = max(hi, bins_w[o, 1])
    return lo, hi


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
    cdef Py_ssize_t P = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t n_rows = P * OD * OH
    cdef Py_ssize_t r, plane, od, oh, wlo, whi
    cdef floating_t *acc
    if n_rows == 0:
        return
    _follow_simd_level()
    wlo, whi = _column_span(bins_w)
    with nogil, parallel(num_threads=num_threads):
        acc = <floating_t *>malloc((whi - wlo) * sizeof(floating_t))
        for r in prange(n_rows, schedule='static'):
            oh = r % OH
            od = (r // OH) % OD
            plane = r // (OH * OD)
            _reduce_bin_row(&x[plane, 0, 0, 0], H, W, bins_d[od, 0], bins_d[od, 1],
                            bins_h[oh, 0], bins_h[oh, 1], &bins_w[0, 0], OW, wlo, whi - wlo,
                            uniform_k, uniform_s, op, <floating_t>p, acc, &out[plane, od, oh, 0])
        free(acc)


def bin_max_forward_taps(const floating_t[:, :, :, ::1] x,   # IN  (P, D, H, W)
                         floating_t[:, :, :, ::1] out,       # OUT (P, OD, OH, OW)
                         tap_t[:, :, :, ::1] taps,           # OUT (P, OD, OH, OW)
                         const Py_ssize_t[:, ::1] bins_d,    # IN  (OD, 2)
                         const Py_ssize_t[:, ::1] bins_h,    # IN  (OH, 2)
                         const Py_ssize_t[:, ::1] bins_w,    # IN  (OW, 2)
                         Py_ssize_t uniform_k, Py_ssize_t uniform_s, int num_threads):
    """Max over every bin plus its argmax as a within-bin tap (td*BH + th)*BW + tw,
    where (BD, BH, BW) is the bin's size and (td, th, tw) the offset from its start.

    The argmax is PyTorch's: scanning in (d, h, w) order, a value wins when it is larger
    or NaN, so ties keep the first maximum, a NaN bin reports its last NaN, and a bin of
    -inf reports tap 0; the output is that element. Two ways to the same result: when the
    W bins are a regular grid of at least MERGE_MIN_BINS bins of at most MERGE_MAX_SIZE,
    rows merge into the running maxima with selects vectorized over bins; otherwise each
    bin gets its maximum from the fast row pipeline, then the first element equal to it.
    """
    cdef Py_ssize_t P = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t n_rows = P * OD * OH
    cdef Py_ssize_t r, plane, od, oh, ow, i_d, i_h, bh, wlo, whi
    cdef bint merge = 0 < uniform_k <= MERGE_MAX_SIZE and OW >= MERGE_MIN_BINS
    cdef const floating_t *xp
    cdef floating_t *out_row
    cdef tap_t *tap_row
    cdef floating_t *acc
    cdef int *cur
    if n_rows == 0:
        return
    _follow_simd_level()
    wlo, whi = _column_span(bins_w)
    with nogil, parallel(num_threads=num_threads):
        acc = <floating_t *>malloc((whi - wlo) * sizeof(floating_t))
        cur = <int *>malloc(OW * sizeof(int))
        for r in prange(n_rows, schedule='static'):
            oh = r % OH
            od = (r // OH) % OD
            plane = r // (OH * OD)
            xp = &x[plane, 0, 0, 0]
            out_row = &out[plane, od, oh, 0]
            tap_row = &taps[plane, od, oh, 0]
            if merge:
                for ow in range(OW):
                    out_row[ow] = -INFINITY
                    cur[ow] = 0
                bh = bins_h[oh, 1] - bins_h[oh, 0]
                for i_d in range(bins_d[od, 0], bins_d[od, 1]):
                    for i_h in range(bins_h[oh, 0], bins_h[oh, 1]):
                        if floating_t is float:
                            cpb_argmax_row_f32_base(
                                out_row, cur, xp + (i_d * H + i_h) * W, &bins_w[0, 0], OW,
                                uniform_k, uniform_s,
                                (i_d - bins_d[od, 0]) * bh + i_h - bins_h[oh, 0])
                        else:
                            cpb_argmax_row_f64_base(
                                out_row, cur, xp + (i_d * H + i_h) * W, &bins_w[0, 0], OW,
                                uniform_k, uniform_s,
                                (i_d - bins_d[od, 0]) * bh + i_h - bins_h[oh, 0])
                for ow in range(OW):
                    tap_row[ow] = <tap_t>cur[ow]
            else:
                _reduce_bin_row(xp, H, W, bins_d[od, 0], bins_d[od, 1], bins_h[oh, 0],
                                bins_h[oh, 1], &bins_w[0, 0], OW, wlo, whi - wlo,
                                uniform_k, uniform_s, OP_MAX, 0, acc, out_row)
                for ow in range(OW):
                    if floating_t is float:
                        tap_row[ow] = <tap_t>B32.find_tap(
                            xp, H, W, bins_d[od, 0], bins_d[od, 1], bins_h[oh, 0],
                            bins_h[oh, 1], bins_w[ow, 0], bins_w[ow, 1], &out_row[ow])
                    else:
                        tap_row[ow] = <tap_t>B64.find_tap(
                            xp, H, W, bins_d[od, 0], bins_d[od, 1], bins_h[oh, 0],
                            bins_h[oh, 1], bins_w[ow, 0], bins_w[ow, 1], &out_row[ow])
        free(cur)
        free(acc)


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
                     bint accumulate, int num_threads):
    """Gradient of bin max pooling from the taps of bin_max_forward_taps.

    A per-plane scatter: each plane is zeroed (unless accumulate, which adds, as the
    levels of a spatial pyramid do) and receives grad_out at its bins' argmaxes in
    (od, oh, ow) order, one plane per thread, so the result is the same for every
    thread count. (A gather by input element needs cover lists and per-element tests;
    it measured several times slower here, where outputs are few and bins large.)
    """
    cdef Py_ssize_t P = grad_in.shape[0], D = grad_in.shape[1]
    cdef Py_ssize_t H = grad_in.shape[2], W = grad_in.shape[3]
    cdef Py_ssize_t OD = grad_out.shape[1], OH = grad_out.shape[2], OW = grad_out.shape[3]
    cdef Py_ssize_t plane, od, oh, ow, t, q, bh, bw, bd1, td, th
    cdef floating_t *g_plane
    for plane in prange(P, nogil=True, schedule='static', num_threads=num_threads):
        g_plane = &grad_in[plane, 0, 0, 0]
        if not accumulate:
            memset(g_plane, 0, D * H * W * sizeof(floating_t))
        for od in range(OD):
            bd1 = bins_d[od, 1] - bins_d[od, 0] == 1
            for oh in range(OH):
                bh = bins_h[oh, 1] - bins_h[oh, 0]
                for ow in range(OW):
                    bw = bins_w[ow, 1] - bins_w[ow, 0]
                    t = taps[plane, od, oh, ow]
                    q = t // bw
                    if bd1:
                        td = 0
                        th = q
                    else:
                        td = q // bh
                        th = q - td * bh
                    g_plane[((bins_d[od, 0] + td) * H + bins_h[oh, 0] + th) * W
                            + bins_w[ow, 0] + t - q * bw] += grad_out[plane, od, oh, ow]


def bin_sum_backward(const floating_t[:, :, :, ::1] weight_out,  # IN  (P, OD, OH, OW)
                     floating_t[:, :, :, ::1] grad_in,           # OUT (P, D, H, W)
                     const Py_ssize_t[:, ::1] bins_d,            # IN  (OD, 2)
                     const Py_ssize_t[:, ::1] bins_h,            # IN  (OH, 2)
                     const Py_ssize_t[:, ::1] bins_w,            # IN  (OW, 2)
                     Py_ssize_t uniform_k, Py_ssize_t uniform_s,
                     bint accumulate, int num_threads):
    """grad_in[i] (+)= sum of weight_out over the bins covering i.

    Average pooling passes grad_out / bin size; Lp pooling passes grad_out / y**(p-1) and
    scales the result by sign(x)|x|**(p-1). Per plane (one per thread, so deterministic),
    each output row is spread along W into a row buffer once (pool_rows.h's hspread
    when the W bins are a regular grid) and the buffer is added to every input row of
    the bin row.
    """
    cdef Py_ssize_t P = grad_in.shape[0], D = grad_in.shape[1]
    cdef Py_ssize_t H = grad_in.shape[2], W = grad_in.shape[3]
    cdef Py_ssize_t OD = weight_out.shape[1], OH = weight_out.shape[2], OW = weight_out.shape[3]
    cdef Py_ssize_t plane, od, oh, ow, i_d, i_h, i_w, j, wlo, whi, n_acc
    cdef floating_t *g_plane
    cdef floating_t *in_row
    cdef floating_t *buf
    cdef const floating_t *w_row
    cdef floating_t wv
    if P == 0:
        return
    _follow_simd_level()
    wlo, whi = _column_span(bins_w)
    n_acc = whi - wlo
    with nogil, parallel(num_threads=num_threads):
        buf = <floating_t *>malloc(n_acc * sizeof(floating_t))
        for plane in prange(P, schedule='static'):
            g_plane = &grad_in[plane, 0, 0, 0]
            if not accumulate:
                memset(g_plane, 0, D * H * W * sizeof(floating_t))
            for od in range(OD):
                for oh in range(OH):
                    w_row = &weight_out[plane, od, oh, 0]
                    memset(buf, 0, n_acc * sizeof(floating_t))
                    if uniform_k > 0:
                        if floating_t is float:
                            R32.hspread(buf + bins_w[0, 0] - wlo, w_row, OW, uniform_k,
                                        uniform_s, 1)
                        else:
                            R64.hspread(buf + bins_w[0, 0] - wlo, w_row, OW, uniform_k,
                                        uniform_s, 1)
                    else:
                        for ow in range(OW):
                            wv = w_row[ow]
                            for i_w in range(bins_w[ow, 0] - wlo, bins_w[ow, 1] - wlo):
                                buf[i_w] += wv
                    for i_d in range(bins_d[od, 0], bins_d[od, 1]):
                        for i_h in range(bins_h[oh, 0], bins_h[oh, 1]):
                            in_row = g_plane + (i_d * H + i_h) * W + wlo
                            for j in range(n_acc):
                                in_row[j] += buf[j]
        free(buf)


def plane_reduce(const floating_t[:, ::1] x,   # IN  (N*C, M): whole planes
                 floating_t[:, :] out,         # OUT (N, C), rows may be strided (a pyramid's)
                 int op, double p, int num_threads):
    """Global pooling: max (op=-1), mean (op=0) or Lp (op=1, 2, 3) of each plane.

    A plane is one contiguous run, reduced in 16 vector lanes (bin_rows_impl.h's
    cpb_reduce) rather than row by row: several times faster than the bin pipeline.
    """
    cdef Py_ssize_t P = x.shape[0], M = x.shape[1], C = out.shape[1], plane
    if P != out.shape[0] * C:
        raise ValueError(f"out must hold {P} planes, got {out.shape[0]} x {C}")
    cdef floating_t v, fp = <floating_t>p
    _follow_simd_level()
    for plane in prange(P, nogil=True, schedule='static', num_threads=num_threads):
        if floating_t is float:
            v = B32.reduce(&x[plane, 0], M, op, fp)
        else:
            v = B64.reduce(&x[plane, 0], M, op, fp)
        if op == OP_AVG:
            v = v / <floating_t>M
        elif op == 2:
            if floating_t is float:
                v = sqrtf(v)
            else:
                v = sqrt(v)
        elif op == 3:
            if floating_t is float:
                v = powf(v, 1 / fp)
            else:
                v = pow(v, 1 / fp)
        out[plane // C, plane % C] = v


def plane_fill(const floating_t[::1] weight,   # IN  (P,)
               floating_t[:, ::1] grad_in,     # OUT (P, M)
               bint accumulate, int num_threads):
    """grad_in[p, :] (+)= weight[p]: the sum backward of global pooling."""
    cdef Py_ssize_t P = grad_in.shape[0], M = grad_in.shape[1], plane, i
    cdef floating_t w
    cdef floating_t *row
    for plane in prange(P, nogil=True, schedule='static', num_threads=num_threads):
        w = weight[plane]
        row = &grad_in[plane, 0]
        if accumulate:
            for i in range(M):
                row[i] += w
        else:
            for i in range(M):
                row[i] = w
