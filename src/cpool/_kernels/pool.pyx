"""Max, average and Lp pooling kernels, forward and backward.

Every kernel sees 1-D, 2-D and 3-D pooling as 3-D: arrays are (planes, D, H, W) with
size-1 leading spatial dims, and the window geometry comes as 3-tuples. Inputs are
validated, contiguous and allocated by cpool.functional; these functions only loop.

Parallel work is split over flattened (plane, output row), a few rows per item (the
forward kernels) so that small N*C still uses every thread. Each output element is
computed by one thread in a fixed order, so results are bitwise identical for every
thread count. Planes of at most 28 columns go to channels_last.pyx's plane blocks
instead (cpool._layout.runs_plane_blocks).
"""
from cython.parallel cimport parallel, prange
from libc.stdint cimport uint32_t, uint64_t
import functools

import numpy as np
from libc.math cimport INFINITY

from ._cols cimport cols_struct, cp_cols_t
from ._fused cimport floating_t, max_t, tap_out_t, tap_t, uchar
from ._openmp cimport omp_get_thread_num

from ._pool_rows cimport (CP_PAD_KEY, CP_SAME_MAX_TAPS, CP_SUM, CP_SUM_ABS, CP_SUM_POW, CP_SUM_SQ, cp_prefetch_span,
                          cp_rows_f32_select, cp_rows_f32_t, cp_rows_f64_select, cp_rows_f64_t,
                          cp_simd_detect)


cdef extern from "same_rows.h" nogil:
    int cp_same_rows_available()
    void cp_same_max_planes_f32(float *out, const float *x, Py_ssize_t n_planes,
                                 Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t dh,
                                 Py_ssize_t ph, Py_ssize_t pw)


# Row code for the instruction set in use (see pool_rows.h); set by set_simd_level.
cdef const cp_rows_f32_t *R32 = cp_rows_f32_select(0)
cdef const cp_rows_f64_t *R64 = cp_rows_f64_select(0)
cdef int _simd_level = 0

SIMD_LEVELS = ("baseline", "avx2", "avx512")


def detected_simd_level():
    """The best instruction set this CPU runs, as an index into SIMD_LEVELS."""
    return cp_simd_detect()


def get_simd_level():
    """The instruction set the kernels use now, as an index into SIMD_LEVELS."""
    return _simd_level


def set_simd_level(int level):
    """Use the row code of instruction set `level`, capped at what the CPU runs.

    Every level gives bitwise-identical results; lower levels exist for testing and
    benchmarking.
    """
    global R32, R64, _simd_level
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    _simd_level = min(level, cp_simd_detect())
    R32 = cp_rows_f32_select(_simd_level)
    R64 = cp_rows_f64_select(_simd_level)
    return _simd_level


def _level_from_env():
    import os
    name = os.environ.get("CPOOL_SIMD", "").strip().lower()
    return SIMD_LEVELS.index(name) if name in SIMD_LEVELS else cp_simd_detect()


set_simd_level(_level_from_env())


cpdef enum PoolOp:
    # The reduction of pool_forward; OP_LP1/OP_LP2 are the fast paths of OP_LP.
    OP_MAX = -1
    OP_AVG = 0
    OP_LP1 = 1
    OP_LP2 = 2
    OP_LP = 3


# Output columns per call of the one-row argmax (bounds its per-thread tap scratch).
cdef Py_ssize_t ARGMAX_CHUNK = 1024


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


# How far ahead (bytes of input) the forward kernels prefetch the input rows an output
# row adds: a plane's rows are a stream the hardware prefetcher follows too late to
# keep one core's loads busy (max 3x3/2 on 112x112 planes, 1 thread: 9.7 -> 5.1 ms).
cdef Py_ssize_t PREFETCH_BYTES = 8192


cdef struct Ahead:
    # Where, from the current window's last input row, the input rows that the output row
    # PREFETCH_BYTES ahead adds begin (the next plane's rows follow on), and their bytes;
    # and the bytes of one input row.
    Py_ssize_t offset, length, row_bytes


cdef Ahead _ahead(Py_ssize_t row_bytes, Py_ssize_t stride_rows) noexcept:
    cdef Ahead a
    cdef Py_ssize_t step = stride_rows * row_bytes
    a.length = step
    a.offset = row_bytes + (max(1, PREFETCH_BYTES // max(step, 1)) - 1) * step
    a.row_bytes = row_bytes
    return a


cdef inline Py_ssize_t _window_rows(const void *plane, Py_ssize_t od, Py_ssize_t oh, Geom *g,
                                    const void **rows, int *row_key,
                                    const Ahead *ahead) noexcept nogil:
    """The input rows of `plane` under window (od, oh), in scan order, into rows (and each
    row's first tap number (kd*KH + kh)*KW into row_key unless NULL); their count. Then
    prefetches the rows of the output row `ahead`."""
    cdef Py_ssize_t kd, kh, i_d, i_h, n = 0
    for kd in range(g.kd):
        i_d = od * g.sd - g.pd + kd * g.dd
        if i_d < 0 or i_d >= g.D:
            continue
        for kh in range(g.kh):
            i_h = oh * g.sh - g.ph + kh * g.dh
            if 0 <= i_h < g.H:
                rows[n] = <const char *>plane + (i_d * g.H + i_h) * ahead.row_bytes
                if row_key != NULL:
                    row_key[n] = <int>((kd * g.kh + kh) * g.kw)
                n = n + 1
    if n:
        cp_prefetch_span(<const char *>rows[n - 1] + ahead.offset, ahead.length)
    return n


# Output rows per work item of the forward kernels: a few, so that small N*C still uses
# every thread, and the (plane, row) of each is counted on rather than divided out.
cdef Py_ssize_t ROWS_PER_ITEM = 8


cdef struct RowPos:
    Py_ssize_t plane, od, oh


cdef inline RowPos _row_pos(Py_ssize_t r, Geom *g) noexcept nogil:
    """Output row r of the flattened (plane, od, oh)."""
    cdef RowPos q
    q.oh = r % g.OH
    q.od = (r // g.OH) % g.OD
    q.plane = r // (g.OH * g.OD)
    return q


cdef inline void _next_row(RowPos *q, Geom *g) noexcept nogil:
    q.oh += 1
    if q.oh == g.OH:
        q.oh = 0
        q.od += 1
        if q.od == g.OD:
            q.od = 0
            q.plane += 1


cdef tuple _size(Py_ssize_t *shape):
    """The spatial (D, H, W) part of a (P, D, H, W) memoryview's shape."""
    return (shape[1], shape[2], shape[3])


# Bytes between one thread's scratch row and the next: more than the hardware
# prefetchers run ahead of a thread's accesses, so none pulls in the lines that another
# thread writes (measured on a 2-core Xeon, 3x3/2 max on 112x112 planes at 2 threads:
# rows 188 bytes apart 1.7x slower than rows 570 or more bytes apart; 1024 as fast as
# 4096).
SCRATCH_GAP = 1024


def thread_scratch(int num_threads, Py_ssize_t length, dtype):
    """Per-thread scratch rows of at least `length` elements, SCRATCH_GAP bytes apart
    (none for one thread).

    Allocated by NumPy before the parallel region, so running out of memory raises
    MemoryError instead of crashing inside a thread.
    """
    itemsize = np.dtype(dtype).itemsize
    per_line = 64 // itemsize
    row = (max(length, 1) + per_line - 1) // per_line * per_line
    if num_threads > 1:
        row += SCRATCH_GAP // itemsize
    return np.empty((max(num_threads, 1), row), dtype=dtype)


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


# Input bytes per work item of the 2x2/2 kernels: whole planes up to 64x64 floats, a few
# items per plane above that, so that a handful of large planes still use every thread.
cdef Py_ssize_t BAND_BYTES = 32768


cdef Py_ssize_t _band_2x2(Py_ssize_t OH, Py_ssize_t W, Py_ssize_t itemsize) noexcept:
    """Output rows per work item of the 2x2/2 kernels."""
    return max(1, min(OH, BAND_BYTES // max(1, 2 * W * itemsize)))


cdef _check_2x2(Py_ssize_t *in_shape, Py_ssize_t *out_shape):
    if out_shape[0] != in_shape[0] or 2 * out_shape[1] > in_shape[1] \
            or 2 * out_shape[2] > in_shape[2]:
        raise ValueError(f"output {[out_shape[i] for i in range(3)]} does not hold 2x2/2 "
                         f"windows inside the input {[in_shape[i] for i in range(3)]}")


def pool_forward_2x2(const floating_t[:, :, ::1] x,   # IN  (P, H, W)
                     floating_t[:, :, ::1] out,       # OUT (P, OH, OW)
                     int op, double divisor, int num_threads,
                     uchar[:, :, ::1] taps=None):     # OUT (P, OH, OW), or None
    """Max (op -1) or average (op 0, sums divided by `divisor`) of 2x2/2 windows that all
    lie inside the input, a band of output rows per call: bitwise pool_forward's result
    for the same windows, without its per-row bookkeeping. With taps (max only), also
    each window's uint8 tap, as max_pool_forward_taps writes it."""
    if op not in (OP_MAX, OP_AVG) or (taps is not None and op != OP_MAX):
        raise ValueError(f"op must be OP_MAX, or OP_AVG without taps, got {op}")
    _check_2x2(x.shape, out.shape)
    if taps is not None and tuple(taps.shape)[:3] != tuple(out.shape)[:3]:
        raise ValueError("taps must have the output's shape")
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2], OH = out.shape[1], OW = out.shape[2]
    if P == 0 or OH == 0 or OW == 0:
        return
    cdef Py_ssize_t band = _band_2x2(OH, W, sizeof(floating_t))
    cdef Py_ssize_t n_bands = (OH + band - 1) // band
    cdef Py_ssize_t item, plane, oh0, n_rows
    cdef floating_t div = <floating_t>divisor
    cdef bint with_taps = taps is not None
    with nogil, parallel(num_threads=num_threads):
        for item in prange(P * n_bands, schedule='static'):
            plane = item // n_bands
            oh0 = (item % n_bands) * band
            n_rows = min(band, OH - oh0)
            if floating_t is float:
                if with_taps:
                    R32.argmax_2x2_rows(&out[plane, oh0, 0], &taps[plane, oh0, 0],
                                        &x[plane, 2 * oh0, 0], n_rows, W, OW)
                else:
                    R32.pool_2x2_rows(&out[plane, oh0, 0], &x[plane, 2 * oh0, 0], n_rows, W,
                                      OW, op, div)
            else:
                if with_taps:
                    R64.argmax_2x2_rows(&out[plane, oh0, 0], &taps[plane, oh0, 0],
                                        &x[plane, 2 * oh0, 0], n_rows, W, OW)
                else:
                    R64.pool_2x2_rows(&out[plane, oh0, 0], &x[plane, 2 * oh0, 0], n_rows, W,
                                      OW, op, div)


def backward_2x2(const floating_t[:, :, ::1] grad_out,  # IN  (P, OH, OW)
                 floating_t[:, :, ::1] grad_in,         # OUT (P, H, W)
                 const uchar[:, :, ::1] taps,           # IN  (P, OH, OW), or None
                 double divisor, int num_threads):
    """The input gradient of 2x2/2 windows that all lie inside the input: max pooling's
    from uint8 taps (max_pool_backward_taps's result), or with taps None window sums'
    with each window's gradient divided by `divisor` (window_sum_backward's, divided as
    the averages divide). Written once, a band of output rows per call."""
    _check_2x2(grad_in.shape, grad_out.shape)
    if taps is not None and tuple(taps.shape)[:3] != tuple(grad_out.shape)[:3]:
        raise ValueError("taps must have grad_out's shape")
    cdef Py_ssize_t P = grad_in.shape[0], H = grad_in.shape[1], W = grad_in.shape[2]
    cdef Py_ssize_t OH = grad_out.shape[1], OW = grad_out.shape[2]
    if P == 0 or H == 0 or W == 0:
        return
    if OH == 0 or OW == 0:
        grad_in[...] = 0
        return
    cdef Py_ssize_t band = _band_2x2(OH, W, sizeof(floating_t))
    cdef Py_ssize_t n_bands = (OH + band - 1) // band
    cdef Py_ssize_t item, plane, oh0, n_rows
    cdef const uchar *t
    cdef floating_t div = <floating_t>divisor
    with nogil, parallel(num_threads=num_threads):
        for item in prange(P * n_bands, schedule='static'):
            plane = item // n_bands
            oh0 = (item % n_bands) * band
            n_rows = min(band, OH - oh0)
            t = &taps[plane, oh0, 0] if taps is not None else NULL
            if floating_t is float:
                R32.backward_2x2_rows(&grad_in[plane, 2 * oh0, 0], &grad_out[plane, oh0, 0], t,
                                      n_rows, W, OW, H - 2 * OH if oh0 + n_rows == OH else 0,
                                      div)
            else:
                R64.backward_2x2_rows(&grad_in[plane, 2 * oh0, 0], &grad_out[plane, oh0, 0], t,
                                      n_rows, W, OW, H - 2 * OH if oh0 + n_rows == OH else 0,
                                      div)


def pool_forward(const floating_t[:, :, :, ::1] x,   # IN  (P, D, H, W)
                 floating_t[:, :, :, ::1] out,       # OUT (P, OD, OH, OW)
                 tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
                 int op, double p,
                 const double[::1] div_d, const double[::1] div_h, tuple cols,
                 int num_threads):
    """Max (op=-1), average (op=0) or Lp (op=1, 2, 3) pooling of every plane.

    Average divides each window sum by div_d[od] * div_h[oh] * (column ow's divisor in
    cols, cpool._geometry.column_divisors); the others read no divisors.
    Lp sums |x|**p (op 3; op 1 and 2 are the fast p=1 and p=2) and takes the p-th root.
    """
    cdef Geom g = _geom(_size(x.shape), _size(out.shape), kernel, stride, dilation, pad_begin)
    cdef Py_ssize_t P = x.shape[0]
    cdef Py_ssize_t n_rows = P * g.OD * g.OH
    cdef Py_ssize_t buf_len = _row_buffer_len(&g)
    cdef Py_ssize_t r, plane, od, oh, n_valid
    cdef floating_t *acc
    cdef floating_t *out_row
    cdef const floating_t **rows
    cdef floating_t pad_value = -INFINITY if op == OP_MAX else 0
    cdef floating_t fp = <floating_t>p
    if n_rows == 0 or g.OW == 0:
        return
    # A window of one row (all of 1-D) pools straight from the input row: no row buffer.
    if g.kd * g.kh == 1:
        buf_len = 1
    cdef floating_t[:, ::1] scratch = thread_scratch(
        num_threads, buf_len, np.float32 if floating_t is float else np.float64)
    cdef Py_ssize_t[:, ::1] row_ptrs = thread_scratch(num_threads, g.kd * g.kh, np.intp)
    cdef cp_cols_t col_div = cols_struct(cols)
    cdef Ahead ahead = _ahead(g.W * sizeof(floating_t), g.sh)
    cdef Py_ssize_t item
    cdef RowPos pos
    with nogil, parallel(num_threads=num_threads):
        acc = &scratch[omp_get_thread_num(), 0]
        rows = <const floating_t **>&row_ptrs[omp_get_thread_num(), 0]
        if floating_t is float:
            R32.fill(acc, buf_len, pad_value)
        else:
            R64.fill(acc, buf_len, pad_value)
        for item in prange((n_rows + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM, schedule='static'):
            pos = _row_pos(item * ROWS_PER_ITEM, &g)
            for r in range(item * ROWS_PER_ITEM, min(n_rows, (item + 1) * ROWS_PER_ITEM)):
                plane, od, oh = pos.plane, pos.od, pos.oh
                _next_row(&pos, &g)
                out_row = &out[plane, od, oh, 0]
                n_valid = _window_rows(&x[plane, 0, 0, 0], od, oh, &g, <const void **>rows, NULL,
                                       &ahead)
                if floating_t is float:
                    R32.pool_row(out_row, rows, n_valid, acc, g.W, g.pw, g.OW, g.kw, g.sw, g.dw,
                                 op, fp, &col_div, <float>(div_d[od] * div_h[oh]))
                else:
                    R64.pool_row(out_row, rows, n_valid, acc, g.W, g.pw, g.OW, g.kw, g.sw, g.dw,
                                 op, fp, &col_div, div_d[od] * div_h[oh])


def max_pool_forward_taps(const floating_t[:, :, :, ::1] x,  # IN  (P, D, H, W)
                          floating_t[:, :, :, ::1] out,      # OUT (P, OD, OH, OW)
                          tap_out_t[:, :, :, ::1] taps,          # OUT (P, OD, OH, OW)
                          tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
                          int num_threads):
    """Max pooling that also records each window's argmax as a tap number
    (kd*KH + kh)*KW + kw: the first maximum in scan order, or the window's last NaN
    (PyTorch's rule). See cp_pool_row_argmax in pool_rows_impl.h.
    """
    cdef Geom g = _geom(_size(x.shape), _size(out.shape), kernel, stride, dilation, pad_begin)
    cdef Py_ssize_t P = x.shape[0]
    cdef Py_ssize_t n_rows = P * g.OD * g.OH
    cdef Py_ssize_t buf_len = _row_buffer_len(&g)
    cdef Py_ssize_t r, plane, od, oh, i, ow, n_valid, tid
    cdef floating_t *acc
    cdef int *key
    cdef int *row_tap
    cdef int *row_key
    cdef const floating_t **rows
    cdef tap_out_t *tap_row
    cdef Py_ssize_t o0, n_cols
    if n_rows == 0 or g.OW == 0:
        return
    # Windows of one input row (all of 1-D) read that row directly, a chunk of output
    # columns at a time: no row buffer, and tap scratch independent of the row length.
    cdef bint one_row = g.kd * g.kh == 1
    cdef Py_ssize_t chunk = min(g.OW, ARGMAX_CHUNK) if one_row else g.OW
    if one_row:
        buf_len = 1
    cdef floating_t[:, ::1] scratch = thread_scratch(
        num_threads, buf_len, np.float32 if floating_t is float else np.float64)
    # per thread: the padded key row, the output row's taps and the input rows' keys
    cdef int[:, ::1] int_scratch = thread_scratch(num_threads, buf_len + chunk + g.kd * g.kh,
                                                  np.intc)
    cdef Py_ssize_t[:, ::1] row_ptrs = thread_scratch(num_threads, g.kd * g.kh, np.intp)
    cdef Ahead ahead = _ahead(g.W * sizeof(floating_t), g.sh)
    cdef Py_ssize_t item
    cdef RowPos pos
    with nogil, parallel(num_threads=num_threads):
        tid = omp_get_thread_num()
        acc = &scratch[tid, 0]
        key = &int_scratch[tid, 0]
        row_tap = key + buf_len
        row_key = row_tap + chunk
        rows = <const floating_t **>&row_ptrs[tid, 0]
        for i in range(buf_len):
            acc[i] = -INFINITY
            key[i] = CP_PAD_KEY
        for item in prange((n_rows + ROWS_PER_ITEM - 1) // ROWS_PER_ITEM, schedule='static'):
            pos = _row_pos(item * ROWS_PER_ITEM, &g)
            for r in range(item * ROWS_PER_ITEM, min(n_rows, (item + 1) * ROWS_PER_ITEM)):
                plane, od, oh = pos.plane, pos.od, pos.oh
                _next_row(&pos, &g)
                n_valid = _window_rows(&x[plane, 0, 0, 0], od, oh, &g, <const void **>rows,
                                       row_key, &ahead)
                tap_row = &taps[plane, od, oh, 0]
                if one_row:
                    o0 = 0
                    while n_valid == 0 and o0 < g.OW:  # (not reached: 1-tap dims have no pads)
                        out[plane, od, oh, o0] = -INFINITY
                        tap_row[o0] = 0
                        o0 = o0 + 1
                    while o0 < g.OW:
                        n_cols = min(chunk, g.OW - o0)
                        if floating_t is float:
                            R32.hrow_argmax(&out[plane, od, oh, o0], row_tap, rows[0], row_key[0],
                                            g.W, n_cols, g.kw, g.sw, g.dw, g.pw - o0 * g.sw)
                        else:
                            R64.hrow_argmax(&out[plane, od, oh, o0], row_tap, rows[0], row_key[0],
                                            g.W, n_cols, g.kw, g.sw, g.dw, g.pw - o0 * g.sw)
                        for ow in range(n_cols):
                            tap_row[o0 + ow] = <tap_out_t>row_tap[ow]
                        o0 = o0 + n_cols
                    continue
                if floating_t is float:
                    R32.pool_row_argmax(&out[plane, od, oh, 0], row_tap, rows, row_key, n_valid,
                                        acc, key, g.W, g.pw, g.OW, g.kw, g.sw, g.dw)
                else:
                    R64.pool_row_argmax(&out[plane, od, oh, 0], row_tap, rows, row_key, n_valid,
                                        acc, key, g.W, g.pw, g.OW, g.kw, g.sw, g.dw)
                for ow in range(g.OW):
                    tap_row[ow] = <tap_out_t>row_tap[ow]


def tap_coordinates(tuple kernel):
    """(3, kd*kh*kw) intp: row 0, 1, 2 of column t are tap t's (d, h, w) within its window
    (tap t = (d*KH + h)*KW + w), so that converting taps takes no divisions."""
    kd, kh, kw = kernel
    t = np.arange(kd * kh * kw, dtype=np.intp)
    return np.stack([t // (kw * kh), (t // kw) % kh, t % kw])


def taps_to_indices(const tap_out_t[:, :, :, ::1] taps,   # IN  (P, OD, OH, OW)
                    long long[:, :, :, ::1] indices,  # OUT (P, OD, OH, OW)
                    tuple in_size, tuple kernel, tuple stride, tuple dilation,
                    tuple pad_begin, int num_threads):
    """Turn window taps into PyTorch's indices: flat positions within each input plane.

    A window with no input element (its value is -inf) gets index -1, which the backward
    functions skip. `taps` and `indices` may be the same int64 array: each element is
    read before it is written.
    """
    cdef Geom g = _geom(in_size, _size(taps.shape), kernel, stride, dilation, pad_begin)
    coordinates = tap_coordinates(kernel)
    cdef const Py_ssize_t[:, ::1] tap_at = coordinates
    cdef Py_ssize_t n_rows = taps.shape[0] * g.OD * g.OH
    cdef Py_ssize_t r, plane, od, oh, ow, t, i_d, i_h, i_w, d0, h0, lo, hi, base
    cdef const tap_out_t *tap_row
    cdef long long *index_row
    cdef const Py_ssize_t *at_d = &tap_at[0, 0]
    cdef const Py_ssize_t *at_h = &tap_at[1, 0]
    cdef const Py_ssize_t *at_w = &tap_at[2, 0]
    # the geometry in locals (a shared struct is reloaded after every store)
    cdef Py_ssize_t D = g.D, H = g.H, W = g.W, OW = g.OW
    cdef Py_ssize_t sw = g.sw, pw = g.pw, dd = g.dd, dh = g.dh, dw = g.dw
    if n_rows == 0 or OW == 0:
        return
    # Windows wholly inside the input take a tap's flat offset from a table, unchecked:
    # those of columns [inner_lo, inner_hi) in rows whose windows lie inside along D, H.
    cdef const Py_ssize_t[::1] flat = ((coordinates[0] * g.dd * g.H + coordinates[1] * g.dh)
                                       * g.W + coordinates[2] * g.dw).astype(np.intp)
    cdef const Py_ssize_t *offset = &flat[0]
    cdef Py_ssize_t inner_lo = min(OW, (pw + sw - 1) // sw)
    cdef Py_ssize_t inner_hi = W - 1 - (g.kw - 1) * dw + pw
    inner_hi = max(inner_lo, min(OW, inner_hi // sw + 1 if inner_hi >= 0 else 0))
    for r in prange(n_rows, nogil=True, schedule='static', num_threads=num_threads):
        oh = r % g.OH
        od = (r // g.OH) % g.OD
        plane = r // (g.OH * g.OD)
        tap_row = &taps[plane, od, oh, 0]
        index_row = &indices[plane, od, oh, 0]
        d0 = od * g.sd - g.pd
        h0 = oh * g.sh - g.ph
        lo, hi = 0, 0
        if d0 >= 0 and d0 + (g.kd - 1) * dd < D and h0 >= 0 and h0 + (g.kh - 1) * dh < H:
            lo, hi = inner_lo, inner_hi
        base = (d0 * H + h0) * W - pw
        for ow in range(lo, hi):
            index_row[ow] = base + ow * sw + offset[tap_row[ow]]
        ow = 0
        while ow < OW:  # the other columns, checked
            if ow == lo and hi > lo:
                ow = hi
                continue
            t = tap_row[ow]
            i_w = ow * sw - pw + at_w[t] * dw
            i_h = h0 + at_h[t] * dh
            i_d = d0 + at_d[t] * dd
            if 0 <= i_w < W and 0 <= i_h < H and 0 <= i_d < D:
                index_row[ow] = (i_d * H + i_h) * W + i_w
            else:  # a window with no input element (possible with dilation)
                index_row[ow] = -1
            ow = ow + 1


def max_pool_backward_taps(const floating_t[:, :, :, ::1] grad_out,  # IN  (P, OD, OH, OW)
                           const tap_t[:, :, :, ::1] taps,           # IN  (P, OD, OH, OW)
                           floating_t[:, :, :, ::1] grad_in,          # OUT (P, D, H, W)
                           const Py_ssize_t[:, ::1] cover_d,         # IN  cover tables
                           const Py_ssize_t[:, ::1] cover_h,
                           tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
                           int num_threads):
    """Gradient of max pooling in gather form, one input row at a time.

    Each input row is assembled in a thread-private padded row from the output rows
    whose windows cover it (cover_x[i] = [n, o_0, k_0, ..., o_{n-1}, k_{n-1}] lists the
    (output, tap) pairs covering coordinate i), adding each window's gradient at its
    argmax column, then written once: no zero fill of grad_in, no atomics, and a fixed
    summation order.
    """
    cdef Geom g = _geom(_size(grad_in.shape), _size(grad_out.shape), kernel, stride, dilation,
                        pad_begin)
    cdef Py_ssize_t P = grad_in.shape[0]
    cdef Py_ssize_t n_rows = P * g.D * g.H
    cdef Py_ssize_t buf_len = _row_buffer_len(&g)
    cdef Py_ssize_t r, plane, i_d, i_h, a, b, od, oh, base
    cdef const Py_ssize_t *cd
    cdef const Py_ssize_t *ch
    cdef const floating_t *g_row
    cdef const tap_t *t_row
    cdef floating_t *acc
    if n_rows == 0 or g.W == 0:
        return
    # 2-wide windows tiling each row (2x2/2 and the like): a row under one window row is
    # a select, written straight into grad_in.
    cdef bint pairs = g.kw == 2 and g.sw == 2 and g.dw == 1 and g.pw == 0
    cdef floating_t[:, ::1] scratch = thread_scratch(
        num_threads, buf_len, np.float32 if floating_t is float else np.float64)
    with nogil, parallel(num_threads=num_threads):
        acc = &scratch[omp_get_thread_num(), 0]
        for r in prange(n_rows, schedule='static'):
            i_h = r % g.H
            i_d = (r // g.H) % g.D
            plane = r // (g.H * g.D)
            cd = &cover_d[i_d, 0]
            ch = &cover_h[i_h, 0]
            if pairs and cd[0] * ch[0] == 1:
                base = (cd[2] * g.kh + ch[2]) * g.kw
                g_row = &grad_out[plane, cd[1], ch[1], 0]
                t_row = &taps[plane, cd[1], ch[1], 0]
                if tap_t is uchar:
                    if floating_t is float:
                        R32.tapselect2_u8(&grad_in[plane, i_d, i_h, 0], g_row, t_row, g.OW, g.W,
                                          base)
                    else:
                        R64.tapselect2_u8(&grad_in[plane, i_d, i_h, 0], g_row, t_row, g.OW, g.W,
                                          base)
                else:
                    if floating_t is float:
                        R32.tapselect2_i32(&grad_in[plane, i_d, i_h, 0], g_row, t_row, g.OW,
                                           g.W, base)
                    else:
                        R64.tapselect2_i32(&grad_in[plane, i_d, i_h, 0], g_row, t_row, g.OW,
                                           g.W, base)
                continue
            if floating_t is float:
                R32.fill(acc, buf_len, 0)
            else:
                R64.fill(acc, buf_len, 0)
            for a in range(cd[0]):
                od = cd[1 + 2 * a]
                for b in range(ch[0]):
                    oh = ch[1 + 2 * b]
                    base = (cd[2 + 2 * a] * g.kh + ch[2 + 2 * b]) * g.kw
                    g_row = &grad_out[plane, od, oh, 0]
                    t_row = &taps[plane, od, oh, 0]
                    if tap_t is uchar:
                        if floating_t is float:
                            R32.tapscatter_u8(acc, g_row, t_row, g.OW, base, g.kw, g.sw, g.dw)
                        else:
                            R64.tapscatter_u8(acc, g_row, t_row, g.OW, base, g.kw, g.sw, g.dw)
                    else:
                        if floating_t is float:
                            R32.tapscatter_i32(acc, g_row, t_row, g.OW, base, g.kw, g.sw, g.dw)
                        else:
                            R64.tapscatter_i32(acc, g_row, t_row, g.OW, base, g.kw, g.sw, g.dw)
            if floating_t is float:
                R32.copy(&grad_in[plane, i_d, i_h, 0], acc + g.pw, g.W)
            else:
                R64.copy(&grad_in[plane, i_d, i_h, 0], acc + g.pw, g.W)


def window_sum_backward(const floating_t[:, :, :, ::1] grad_out,  # IN  (P, OD, OH, OW)
                        floating_t[:, :, :, ::1] grad_in,          # OUT (P, D, H, W)
                        const Py_ssize_t[:, ::1] cover_d,         # IN  cover tables
                        const Py_ssize_t[:, ::1] cover_h,
                        tuple kernel, tuple stride, tuple dilation, tuple pad_begin,
                        int num_threads):
    """Gradient of window sums (averages pass grad_out already divided: one division per
    output, not one per covering row) in gather form: for each input row, the gradients
    of the output rows covering it are summed, then spread over the kernel's columns in a
    padded row that is written to grad_in once.
    """
    cdef Geom g = _geom(_size(grad_in.shape), _size(grad_out.shape), kernel, stride, dilation,
                        pad_begin)
    cdef Py_ssize_t P = grad_in.shape[0]
    cdef Py_ssize_t n_rows = P * g.D * g.H
    cdef Py_ssize_t buf_len = _row_buffer_len(&g)
    cdef Py_ssize_t r, plane, i_d, i_h, a, b, od, oh
    cdef const Py_ssize_t *cd
    cdef const Py_ssize_t *ch
    cdef floating_t *acc
    cdef floating_t *col
    if n_rows == 0 or g.W == 0:
        return
    cdef floating_t[:, ::1] scratch = thread_scratch(
        num_threads, buf_len + g.OW, np.float32 if floating_t is float else np.float64)
    with nogil, parallel(num_threads=num_threads):
        acc = &scratch[omp_get_thread_num(), 0]
        col = acc + buf_len
        for r in prange(n_rows, schedule='static'):
            i_h = r % g.H
            i_d = (r // g.H) % g.D
            plane = r // (g.H * g.D)
            cd = &cover_d[i_d, 0]
            ch = &cover_h[i_h, 0]
            if floating_t is float:
                R32.fill(acc, buf_len + g.OW, 0)
            else:
                R64.fill(acc, buf_len + g.OW, 0)
            for a in range(cd[0]):
                od = cd[1 + 2 * a]
                for b in range(ch[0]):
                    oh = ch[1 + 2 * b]
                    if floating_t is float:
                        R32.add(col, &grad_out[plane, od, oh, 0], g.OW)
                    else:
                        R64.add(col, &grad_out[plane, od, oh, 0], g.OW)
            if floating_t is float:
                R32.hspread(acc, col, g.OW, g.kw, g.sw, g.dw)
                R32.copy(&grad_in[plane, i_d, i_h, 0], acc + g.pw, g.W)
            else:
                R64.hspread(acc, col, g.OW, g.kw, g.sw, g.dw)
                R64.copy(&grad_in[plane, i_d, i_h, 0], acc + g.pw, g.W)


# Whole planes of stride-1 windows whose output has the input's size (3x3/1 p1 and the
# like on small planes): see cp_pool_plane_same in pool_rows_impl.h.
SAME_MAX_TAPS = CP_SAME_MAX_TAPS


cdef object _plane_scratch(int num_threads, Py_ssize_t pixels, Py_ssize_t margin, dtype):
    """Per-thread zeroed planes of `pixels` elements with `margin` elements (rounded up to
    whole 64-byte lines) before and after; and that rounded margin."""
    per_line = 64 // np.dtype(dtype).itemsize
    margin = (margin + per_line - 1) // per_line * per_line
    buf = thread_scratch(num_threads, 2 * margin + pixels, dtype)
    buf.fill(0)  # margins are read (and their results discarded): keep them finite
    return buf, margin


@functools.lru_cache(maxsize=64)
def _tap_masks(Py_ssize_t H, Py_ssize_t W, tuple offsets, dtype):
    """(taps, H*W) bit masks, all ones where column j + offsets[t] lies in [0, W), as
    cp_fold_flat reads them; unsigned ints as wide as `dtype`. Read-only and cached
    (a third of a small call's time otherwise)."""
    cols = np.arange(W)[None, :] + np.asarray(offsets)[:, None]
    inside = np.tile((cols >= 0) & (cols < W), (1, H))
    bits = np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint64
    masks = np.where(inside, np.iinfo(bits).max, 0).astype(bits)
    masks.flags.writeable = False
    return masks


cdef void _check_same(tuple kernel, tuple dilation, tuple pad_begin) except *:
    cdef Py_ssize_t kh, kw, dh, dw, ph, pw
    kh, kw = kernel
    dh, dw = dilation
    ph, pw = pad_begin
    if not (0 < kh <= CP_SAME_MAX_TAPS and 0 < kw <= CP_SAME_MAX_TAPS and dh > 0 and dw > 0
            and 0 <= ph <= (kh - 1) * dh and 0 <= pw <= (kw - 1) * dw):
        raise ValueError(f"not a stride-1 'same' window of at most {CP_SAME_MAX_TAPS} taps "
                         f"per dim: kernel {kernel}, dilation {dilation}, pad {pad_begin}")


def same_max_in_registers(dtype, tuple kernel, tuple dilation, tuple pad_begin):
    """True when pool_forward_same's max of this dtype and geometry runs the register
    kernel (same_rows.h): float32 at the AVX-512 level, windows 3 or 5 columns wide
    around their centre (any rows: 3x3/1 p1, YOLO's SPPF 5x5/1 p2)."""
    return (dtype == np.float32 and kernel[1] in (3, 5) and dilation[1] == 1
            and pad_begin[1] == kernel[1] // 2 and _simd_level >= 2
            and cp_same_rows_available() != 0)


def pool_forward_same(const floating_t[:, :, ::1] x,   # IN  (P, H, W)
                      floating_t[:, :, ::1] out,       # OUT (P, H, W)
                      tuple kernel, tuple dilation, tuple pad_begin, int op,
                      const floating_t[:, ::1] divisors,  # IN  (H, W), or None (max)
                      int num_threads):
    """Stride-1 2-D max (op -1) or average (op 0) pooling whose output has the input's
    size, a whole plane per call: bitwise pool_forward's result. Average divides each
    window sum by its divisor in `divisors`.
    """
    _check_same(kernel, dilation, pad_begin)
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2]
    cdef Py_ssize_t kh, kw, dh, dw, ph, pw
    kh, kw = kernel
    dh, dw = dilation
    ph, pw = pad_begin
    if out.shape[0] != P or out.shape[1] != H or out.shape[2] != W:
        raise ValueError("out must have the input's shape")
    if op not in (OP_MAX, OP_AVG):
        raise ValueError(f"op must be OP_MAX or OP_AVG, got {op}")
    if op == OP_AVG and (divisors is None or divisors.shape[0] != H or divisors.shape[1] != W):
        raise ValueError("average needs (H, W) divisors")
    if P == 0 or H * W == 0:
        return
    dtype = np.float32 if floating_t is float else np.float64
    cdef Py_ssize_t plane
    if floating_t is float:
        if op == OP_MAX and same_max_in_registers(dtype, kernel, dilation, pad_begin):
            with nogil:
                for plane in prange(P, schedule='static', num_threads=num_threads):
                    cp_same_max_planes_f32(&out[plane, 0, 0], &x[plane, 0, 0], 1, H, W, kh,
                                            dh, ph, pw)
            return
    scratch, margin = _plane_scratch(num_threads, H * W, (kw - 1) * dw, dtype)
    masks = _tap_masks(H, W, tuple([u * dw - pw for u in range(kw)]), dtype)
    cdef floating_t[:, ::1] v_all = scratch
    cdef const unsigned char[::1] mask_bytes = masks.reshape(-1).view(np.uint8)
    cdef const void *mask = &mask_bytes[0]
    cdef Py_ssize_t m = margin
    cdef const floating_t *div = &divisors[0, 0] if op == OP_AVG else NULL
    cdef floating_t *v
    with nogil, parallel(num_threads=num_threads):
        v = &v_all[omp_get_thread_num(), m]
        for plane in prange(P, schedule='static'):
            if floating_t is float:
                R32.pool_plane_same(&out[plane, 0, 0], &x[plane, 0, 0], v, H, W, kh, kw, dh, dw,
                                    ph, pw, op, <const uint32_t *>mask, div)
            else:
                R64.pool_plane_same(&out[plane, 0, 0], &x[plane, 0, 0], v, H, W, kh, kw, dh, dw,
                                    ph, pw, op, <const uint64_t *>mask, div)


def window_sum_backward_same(const floating_t[:, :, ::1] grad_out,  # IN  (P, H, W)
                             floating_t[:, :, ::1] grad_in,         # OUT (P, H, W)
                             tuple kernel, tuple dilation, tuple pad_begin,
                             const floating_t[:, ::1] divisors,     # IN  (H, W), or None
                             int num_threads):
    """Gradient of pool_forward_same's window sums (divided by `divisors` first unless
    None), a whole plane per call: bitwise the division then window_sum_backward.
    """
    _check_same(kernel, dilation, pad_begin)
    cdef Py_ssize_t P = grad_out.shape[0], H = grad_out.shape[1], W = grad_out.shape[2]
    cdef Py_ssize_t kh, kw, dh, dw, ph, pw
    kh, kw = kernel
    dh, dw = dilation
    ph, pw = pad_begin
    if grad_in.shape[0] != P or grad_in.shape[1] != H or grad_in.shape[2] != W:
        raise ValueError("grad_in must have grad_out's shape")
    if divisors is not None and (divisors.shape[0] != H or divisors.shape[1] != W):
        raise ValueError("divisors must be (H, W)")
    if P == 0 or H * W == 0:
        return
    dtype = np.float32 if floating_t is float else np.float64
    scratch, margin = _plane_scratch(num_threads, 2 * H * W, (kw - 1) * dw, dtype)
    masks = _tap_masks(H, W, tuple([pw - u * dw for u in range(kw)]), dtype)
    cdef floating_t[:, ::1] s_all = scratch
    cdef const unsigned char[::1] mask_bytes = masks.reshape(-1).view(np.uint8)
    cdef const void *mask = &mask_bytes[0]
    cdef Py_ssize_t m = margin
    cdef const floating_t *div = &divisors[0, 0] if divisors is not None else NULL
    cdef Py_ssize_t plane
    cdef floating_t *c
    with nogil, parallel(num_threads=num_threads):
        c = &s_all[omp_get_thread_num(), m]  # c (with margins), then q
        for plane in prange(P, schedule='static'):
            if floating_t is float:
                R32.sum_plane_same_backward(&grad_in[plane, 0, 0], &grad_out[plane, 0, 0],
                                            c + H * W + m, c, H, W, kh, kw, dh, dw, ph, pw,
                                            <const uint32_t *>mask, div)
            else:
                R64.sum_plane_same_backward(&grad_in[plane, 0, 0], &grad_out[plane, 0, 0],
                                            c + H * W + m, c, H, W, kh, kw, dh, dw, ph, pw,
                                            <const uint64_t *>mask, div)


def scatter_planes(const max_t[:, ::1] values,       # IN  (P, M)
                   const long long[:, ::1] indices,   # IN  (P, M), each in [0, L)
                   max_t[:, ::1] out,                 # OUT (P, L), zero on entry
                   bint accumulate, int num_threads):
    """out[p, indices[p, m]] (+)= values[p, m], one plane per thread in index order.

    accumulate=True is the backward of max pooling from PyTorch-style indices;
    accumulate=False is max unpooling (a later duplicate overwrites, deterministically),
    which also runs on integers.
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
