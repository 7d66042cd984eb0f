"""Channels-last pooling kernels: max, average and Lp over sliding windows or bins.

Arrays are (B, D, H, W, C), C contiguous; 1-D and 2-D poolings have size-1 leading
spatial dims. The windows come as one table per spatial dim (cpool._geometry.window_table):
for output o, the input coordinates under the window and their tap numbers. Sliding
windows (any stride, dilation, padding) and bins (adaptive, global, binned) are both such
tables, so one set of kernels serves both families.

Every primitive (cl_rows.h) vectorizes over channels. Work is split over flattened
(batch, output depth, output row, channel block); each output element is computed by one
thread in a fixed order, so results are bitwise identical for every thread count.
Backward is in gather form: each input row sums the gradients of the output rows covering
it, and is written once; only the plane-block max backward scatters (each window's
gradient to its argmax, in a fixed order per block of planes).

The *_planes kernels run the same row bodies on channels-first input with small planes:
blocks of planes transposed into thread-private channels-last scratch (see the section
below). forward_planes, max_forward_taps_planes and sum_backward_planes take float32 planes
of at most 16 columns without the transposes where AVX-512 runs: a whole plane per call,
one register per row (cl_narrow.h).
"""
from cython.parallel cimport parallel, prange
from libc.string cimport memset
import numpy as np

from ._cols cimport cols_struct, cp_col_div, cp_cols_t
from ._fused cimport floating_t, max_t, tap_out_t, tap_t, uchar
from ._openmp cimport omp_get_thread_num

from .pool import SCRATCH_GAP, get_simd_level, tap_coordinates, thread_scratch

cdef Py_ssize_t GAP_BYTES = SCRATCH_GAP  # between threads' scratch rows
# Divisors of 1 in the (div_d, div_h, cols) form, for kernels called without divisors
# (their addresses are taken, never read).
UNIT_DIVISORS = (np.ones(1), np.ones(1), (np.ones(1), 0, 0, 1.0))

cdef extern from "cl_rows.h" nogil:
    ctypedef struct cp_cl_t:
        void (*fill)(void *a, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t nc, int lowest) noexcept nogil
        void (*vreduce)(void *acc, const void *const *rows, Py_ssize_t n_rows, Py_ssize_t width,
                        Py_ssize_t cs, Py_ssize_t nc, int op, double p) noexcept nogil
        void (*hreduce)(void *out, const void *acc, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t acs,
                        Py_ssize_t nc, const Py_ssize_t *tab, Py_ssize_t ts, int op,
                        int first, int fuse, const cp_cols_t *cols,
                        double row_div) noexcept nogil
        void (*row_argmax)(void *out, int *key, const void *row, Py_ssize_t n, Py_ssize_t cs,
                           Py_ssize_t nc, const Py_ssize_t *tab, Py_ssize_t ts, int base,
                           int first) noexcept nogil
        void (*transpose)(void *dst, Py_ssize_t dld, const void *src, Py_ssize_t sld,
                          Py_ssize_t rows, Py_ssize_t cols) noexcept nogil
        void (*row_finish)(void *out, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t nc, int op,
                           double p, const cp_cols_t *cols, double row_div) noexcept nogil
        void (*row_tapadd_u8)(void *acc, const void *g, const void *taps, Py_ssize_t n,
                              Py_ssize_t cs, Py_ssize_t nc, const Py_ssize_t *cover,
                              Py_ssize_t ts, int base, int first) noexcept nogil
        void (*row_tapadd_i32)(void *acc, const void *g, const void *taps, Py_ssize_t n,
                               Py_ssize_t cs, Py_ssize_t nc, const Py_ssize_t *cover,
                               Py_ssize_t ts, int base, int first) noexcept nogil
        void (*row_spread)(void *acc, const void *g, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t gs,
                           Py_ssize_t nc, const Py_ssize_t *cover, Py_ssize_t ts) noexcept nogil
        void (*vreduce_div)(void *acc, const void *const *rows, Py_ssize_t n_rows,
                            Py_ssize_t width, Py_ssize_t cs, Py_ssize_t nc,
                            const double *row_div, const cp_cols_t *cols) noexcept nogil
    int CP_CL_F32, CP_CL_F64, CP_CL_U8, CP_CL_I8, CP_CL_I16, CP_CL_I32, CP_CL_I64, CP_SUM
    const cp_cl_t *cp_cl_select(int type, int level)


cdef extern from "cl_narrow.h" nogil:
    ctypedef struct cp_narrow_cols_t:
        pass
    int CP_NARROW_LANES
    int cp_narrow_available()
    void cp_narrow_cols(cp_narrow_cols_t *c, const Py_ssize_t *tab, Py_ssize_t ts,
                        Py_ssize_t n_out)
    ctypedef struct cp_narrow_flat_t:
        pass
    bint cp_narrow_flat_fits(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW)
    void cp_narrow_flat(cp_narrow_flat_t *f, Py_ssize_t H, Py_ssize_t W, const Py_ssize_t *wh,
                        Py_ssize_t th, Py_ssize_t OH, const Py_ssize_t *ww, Py_ssize_t tw,
                        Py_ssize_t OW)
    void cp_narrow_flat_max_planes_f32(float *out, const float *x, Py_ssize_t n_planes,
                                       Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                                       const cp_narrow_flat_t *f, const Py_ssize_t *wh,
                                       Py_ssize_t th, const cp_narrow_cols_t *cols)
    void cp_narrow_planes_f32(float *out, const float *x, Py_ssize_t n_planes, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, const Py_ssize_t *wh,
                              Py_ssize_t th, const cp_narrow_cols_t *cols, const float *div,
                              int is_max)
    void cp_narrow_argmax_planes_f32(float *out, void *taps, int tap_bytes, const float *x,
                                     Py_ssize_t n_planes, Py_ssize_t H, Py_ssize_t W,
                                     Py_ssize_t OH, Py_ssize_t OW, const Py_ssize_t *wh,
                                     Py_ssize_t th, Py_ssize_t KW, const cp_narrow_cols_t *cols)
    void cp_narrow_spread_planes_f32(float *gin, const float *g, Py_ssize_t n_planes,
                                     Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                                     const Py_ssize_t *ch, Py_ssize_t th,
                                     const cp_narrow_cols_t *cols, const float *div,
                                     float *divided)


cdef inline const cp_cl_t *_table(max_t *dtype_tag) noexcept:
    """The primitives of element type max_t at the instruction set pool.pyx has chosen."""
    cdef int code
    if max_t is float:
        code = CP_CL_F32
    elif max_t is double:
        code = CP_CL_F64
    elif max_t is uchar:
        code = CP_CL_U8
    elif max_t is schar:
        code = CP_CL_I8
    elif max_t is short:
        code = CP_CL_I16
    elif max_t is int:
        code = CP_CL_I32
    else:
        code = CP_CL_I64
    return cp_cl_select(code, _level)


cdef int _level = 0


cdef inline void _check_op(int op, max_t *dtype_tag) except *:
    """Sums (op >= 0) exist for floats only (NULL in the integer tables)."""
    if op >= 0 and not (max_t is float or max_t is double):
        raise ValueError(f"op {op} (a sum) needs float input")


cdef void _follow_simd_level():
    global _level
    _level = get_simd_level()


# Channel blocks: whole rows when there are enough of them to share out, else blocks of
# at least this many channels, so that small B*OD*OH still uses every thread.
cdef Py_ssize_t MIN_BLOCK = 64
# Elements of the per-thread row that forward reduces the window's rows into (W x block):
# channel blocks shrink to keep it about this size (at least MIN_BLOCK channels).
cdef Py_ssize_t ROW_SCRATCH = 32768


cdef inline Py_ssize_t _channel_block(Py_ssize_t rows, Py_ssize_t C, int num_threads) noexcept:
    cdef Py_ssize_t want = 4 * num_threads  # blocks per thread, for balance
    if num_threads <= 1 or rows >= want or C <= MIN_BLOCK:
        return C if C > 0 else 1
    cdef Py_ssize_t parts = (want + rows - 1) // rows
    cdef Py_ssize_t block = (C + parts - 1) // parts
    return block if block > MIN_BLOCK else MIN_BLOCK


cdef struct Item:
    # One work item: image b, row (d, h) of its D x H rows, channels [c0, c0 + nc).
    Py_ssize_t b, d, h, c0, nc


cdef inline Item _item(Py_ssize_t r, Py_ssize_t n_blocks, Py_ssize_t block, Py_ssize_t C,
                       Py_ssize_t D, Py_ssize_t H) noexcept nogil:
    """Work item r of (image, row, channel block), flattened in that order."""
    cdef Item it
    cdef Py_ssize_t row = r // n_blocks
    it.c0 = (r % n_blocks) * block
    it.nc = min(block, C - it.c0)
    it.h = row % H
    it.d = (row // H) % D
    it.b = row // (H * D)
    return it


cdef void _check_images(Py_ssize_t *shape, Py_ssize_t *strides, Py_ssize_t itemsize,
                        str name="out") except *:
    """Forward outputs, and the input of forward and forward_planes, may have a strided
    batch dim (a level of a pyramid's output), but each image must be one C-contiguous
    block: the kernels step through it by hand."""
    cdef Py_ssize_t k, expected = itemsize
    for k in range(5):
        if shape[k] == 0:  # empty: nothing is written
            return
    for k in range(4, 0, -1):
        if shape[k] > 1 and strides[k] != expected:
            raise ValueError(f"{name}: each image must be C-contiguous")
        expected *= shape[k]


cdef inline Py_ssize_t _pointer_bytes(Py_ssize_t n) noexcept:
    """Bytes of n row pointers at the start of a thread's scratch row, in whole 64-byte
    lines so that the data after them keeps the row's alignment (one scratch row per
    thread: each row costs a gap, see thread_scratch)."""
    return (max(n, 1) * <Py_ssize_t>sizeof(void *) + 63) // 64 * 64


cdef Py_ssize_t _max_cover_rows(const Py_ssize_t[:, ::1] cover_d,
                                const Py_ssize_t[:, ::1] cover_h):
    """The most output rows covering one input row (at least 1: a scratch length)."""
    return max(((cover_d.shape[1] - 1) // 2) * ((cover_h.shape[1] - 1) // 2), 1)


# --------------------------------------------------------------------------------------
# One row of one image's channel block, shared by the channels-last drivers and the
# plane-block drivers (*_planes). An image's pixel (d, h, w) lies at
# base + ((d*H + h)*W + w)*cs, channel c at + c: in a channels-last array base is
# &x[b, 0, 0, 0, c0] and cs = C; in a block of planes transposed into scratch, base is
# the scratch and cs = nc.
# --------------------------------------------------------------------------------------

cdef struct Divide:
    # The averages' divisors for a window-sum backward (see _spread_row): window (od, oh,
    # ow) divides by div_d[od] * div_h[oh] * column ow's divisor in cols; row_div is a
    # thread's scratch for the covering rows' div_d * div_h.
    const double *div_d
    const double *div_h
    const cp_cols_t *cols
    double *row_div


cdef inline void _forward_row(const cp_cl_t *T, max_t *out, const max_t *x,
                              Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW, Py_ssize_t cs,
                              Py_ssize_t nc, const Py_ssize_t *wd, const Py_ssize_t *wh,
                              const Py_ssize_t *tw, Py_ssize_t ts, int op, double p,
                              bint separable, void *acc, const void **row_ptr,
                              const cp_cols_t *cols, double row_div) noexcept nogil:
    """Output row `out` of the window rows wd x wh (see forward)."""
    cdef Py_ssize_t a, e, n_rows = 0
    for a in range(wd[0]):
        for e in range(wh[0]):
            row_ptr[n_rows] = x + (wd[1 + 2 * a] * H + wh[1 + 2 * e]) * W * cs
            n_rows = n_rows + 1
    # averages divide in the last horizontal pass (cols passed), the others after it
    cdef const cp_cols_t *fin = cols if op == CP_SUM else NULL
    if n_rows == 0:
        T.fill(out, OW, cs, nc, op < 0)
        fin = NULL
    elif separable:
        T.vreduce(acc, row_ptr, n_rows, W, cs, nc, op, p)
        T.hreduce(out, acc, OW, cs, nc, nc, tw, ts, op, 1, 1, fin, row_div)
    else:
        for a in range(n_rows):
            T.hreduce(out, row_ptr[a], OW, cs, cs, nc, tw, ts, op, a == 0, 0,
                      fin if a == n_rows - 1 else NULL, row_div)
    if op >= 0 and fin == NULL:
        T.row_finish(out, OW, cs, nc, op, p, cols, row_div)


cdef inline void _argmax_row(const cp_cl_t *T, max_t *out, int *key, const max_t *x,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t OW, Py_ssize_t cs,
                             Py_ssize_t nc, const Py_ssize_t *wd, const Py_ssize_t *wh,
                             const Py_ssize_t *tw, Py_ssize_t ts, Py_ssize_t KH,
                             Py_ssize_t KW) noexcept nogil:
    """Output row `out` and its taps in `key` (OW x nc, contiguous); see max_forward_taps."""
    cdef Py_ssize_t a, e, c
    cdef int first = 1
    for a in range(wd[0]):
        for e in range(wh[0]):
            T.row_argmax(out, key, x + (wd[1 + 2 * a] * H + wh[1 + 2 * e]) * W * cs, OW, cs,
                         nc, tw, ts, <int>((wd[2 + 2 * a] * KH + wh[2 + 2 * e]) * KW), first)
            first = 0
    if first:  # no input row under the window: tap 0 lies outside the input
        T.fill(out, OW, cs, nc, 1)
        for c in range(OW * nc):
            key[c] = 0


cdef inline void _tapadd_row(const cp_cl_t *T, floating_t *gin, const floating_t *go,
                             const tap_t *tp, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t W,
                             Py_ssize_t cs, Py_ssize_t nc, const Py_ssize_t *cd,
                             const Py_ssize_t *ch, const Py_ssize_t *tw, Py_ssize_t ts,
                             Py_ssize_t KH, Py_ssize_t KW, bint accumulate) noexcept nogil:
    """Input row `gin` of the max gradient from the output rows cd x ch covering it (added
    to it when `accumulate`); grad_out and taps lie alike (base go and tp)."""
    cdef Py_ssize_t a, e, off
    cdef int first = not accumulate, base
    for a in range(cd[0]):
        for e in range(ch[0]):
            off = (cd[1 + 2 * a] * OH + ch[1 + 2 * e]) * OW * cs
            base = <int>((cd[2 + 2 * a] * KH + ch[2 + 2 * e]) * KW)
            if tap_t is uchar:
                T.row_tapadd_u8(gin, go + off, tp + off, W, cs, nc, tw, ts, base, first)
            else:
                T.row_tapadd_i32(gin, go + off, tp + off, W, cs, nc, tw, ts, base, first)
            first = 0
    if first:
        T.fill(gin, W, cs, nc, 0)


cdef inline void _spread_row(const cp_cl_t *T, floating_t *gin, const floating_t *go,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t W, Py_ssize_t cs,
                             Py_ssize_t nc, const Py_ssize_t *cd, const Py_ssize_t *ch,
                             const Py_ssize_t *tw, Py_ssize_t ts, void *acc,
                             const void **row_ptr, const Divide *divide) noexcept nogil:
    """Input row `gin` of the window-sum gradient, separable as the forward: the output
    rows covering it are summed into `acc` (OW x nc), each window's gradient divided first
    by its divisor where `divide` is not NULL, then spread along W."""
    cdef Py_ssize_t a, e, n_rows = 0
    for a in range(cd[0]):
        for e in range(ch[0]):
            row_ptr[n_rows] = go + (cd[1 + 2 * a] * OH + ch[1 + 2 * e]) * OW * cs
            if divide != NULL:
                divide.row_div[n_rows] = divide.div_d[cd[1 + 2 * a]] * divide.div_h[ch[1 + 2 * e]]
            n_rows = n_rows + 1
    if n_rows == 0:
        T.fill(gin, W, cs, nc, 0)
        return
    if divide != NULL:
        T.vreduce_div(acc, row_ptr, n_rows, OW, cs, nc, divide.row_div, divide.cols)
    else:
        T.vreduce(acc, row_ptr, n_rows, OW, cs, nc, CP_SUM, 0)
    T.row_spread(gin, acc, W, cs, nc, nc, tw, ts)


# --------------------------------------------------------------------------------------
# Channels-last arrays: work items of (image, row, channel block).
# --------------------------------------------------------------------------------------

def forward(const max_t[:, :, :, :, :] x,     # IN  (B, D, H, W, C), see _check_images
            max_t[:, :, :, :, :] out,         # OUT (B, OD, OH, OW, C), see _check_images
            const Py_ssize_t[:, ::1] win_d,   # IN  window tables
            const Py_ssize_t[:, ::1] win_h,
            const Py_ssize_t[:, ::1] win_w,
            int op, double p,
            const double[::1] div_d, const double[::1] div_h, tuple cols,
            bint overlap, int num_threads):
    """Max (op -1; every element type), average (op 0: window sum / (div_d[od] * div_h[oh]
    * column ow's divisor in cols)) or Lp (op 1, 2, 3: the p-th root of the sum of
    |x|**p; floats only) over every window. Max propagates NaN; an empty window gives
    -inf (floats) or the type's minimum (integers).

    When windows `overlap` along W (or Lp transforms each element), separable as the
    channels-first kernels: the input rows under a window are reduced into a
    thread-private row, then each output pixel reduces that row over its window's
    columns, so that no input element is transformed or compared twice per row. Else
    direct: each output pixel reduces its window's columns in each input row in turn
    (the row pass would only add a round trip; measured 1.5x slower for 2x2/2). The
    separable form is 1.5x faster for 3x3/1."""
    _check_op(op, <max_t *>NULL)
    _follow_simd_level()
    _check_images(out.shape, out.strides, sizeof(max_t))
    _check_images(x.shape, x.strides, sizeof(max_t), "x")
    cdef const cp_cl_t *T = _table(<max_t *>NULL)
    cdef Py_ssize_t B = out.shape[0], OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t C = out.shape[4], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t rows = B * OD * OH
    cdef Py_ssize_t max_rows = ((win_d.shape[1] - 1) // 2) * ((win_h.shape[1] - 1) // 2)
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Item it
    cdef Py_ssize_t n_blocks, r, tid
    cdef const void **row_ptr
    cdef void *acc
    if rows == 0 or OW == 0 or C == 0:
        return
    block = min(block, max(MIN_BLOCK, ROW_SCRATCH // max(W, 1)))  # bound the row scratch
    n_blocks = (C + block - 1) // block
    cdef bint separable = op > 0 or (overlap and max_rows > 1)
    cdef Py_ssize_t ptr_bytes = _pointer_bytes(max_rows)
    cdef unsigned char[:, ::1] scratch = thread_scratch(
        num_threads, ptr_bytes + (W * block * sizeof(max_t) if separable else 0), np.uint8)
    cdef cp_cols_t col_div = cols_struct(cols)
    with nogil, parallel(num_threads=num_threads):
        tid = omp_get_thread_num()
        row_ptr = <const void **>&scratch[tid, 0]
        acc = &scratch[tid, ptr_bytes]
        for r in prange(rows * n_blocks, schedule='static'):
            it = _item(r, n_blocks, block, C, OD, OH)
            _forward_row(T, &out[it.b, it.d, it.h, 0, it.c0], &x[it.b, 0, 0, 0, it.c0], H, W,
                         OW, C, it.nc, &win_d[it.d, 0], &win_h[it.h, 0], &win_w[0, 0],
                         win_w.shape[1], op, p, separable, acc, row_ptr, &col_div,
                         div_d[it.d] * div_h[it.h])


def max_forward_taps(const max_t[:, :, :, :, ::1] x,   # IN  (B, D, H, W, C)
                     max_t[:, :, :, :, :] out,         # OUT (B, OD, OH, OW, C), see _check_images
                     tap_out_t[:, :, :, :, ::1] taps,      # OUT (B, OD, OH, OW, C)
                     const Py_ssize_t[:, ::1] win_d,   # IN  window tables
                     const Py_ssize_t[:, ::1] win_h,
                     const Py_ssize_t[:, ::1] win_w,
                     Py_ssize_t KH, Py_ssize_t KW, int num_threads):
    """Max pooling that also records each window's argmax as the tap number
    (td*KH + th)*KW + tw: the first maximum in scan order, or the window's last NaN."""
    _follow_simd_level()
    _check_images(out.shape, out.strides, sizeof(max_t))
    cdef const cp_cl_t *T = _table(<max_t *>NULL)
    cdef Py_ssize_t B = out.shape[0], OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t C = out.shape[4], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t rows = B * OD * OH
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Py_ssize_t n_blocks = (C + block - 1) // block
    cdef Item it
    cdef Py_ssize_t r, ow, c
    cdef int *key
    cdef tap_out_t *tap_px
    if rows == 0 or OW == 0 or C == 0:
        return
    cdef int[:, ::1] keys = thread_scratch(num_threads, OW * block, np.intc)
    with nogil, parallel(num_threads=num_threads):
        key = &keys[omp_get_thread_num(), 0]
        for r in prange(rows * n_blocks, schedule='static'):
            it = _item(r, n_blocks, block, C, OD, OH)
            _argmax_row(T, &out[it.b, it.d, it.h, 0, it.c0], key, &x[it.b, 0, 0, 0, it.c0], H,
                        W, OW, C, it.nc, &win_d[it.d, 0], &win_h[it.h, 0], &win_w[0, 0],
                        win_w.shape[1], KH, KW)
            for ow in range(OW):
                tap_px = &taps[it.b, it.d, it.h, ow, it.c0]
                for c in range(it.nc):
                    tap_px[c] = <tap_out_t>key[ow * it.nc + c]


def taps_to_indices(const tap_out_t[:, :, :, :, ::1] taps,   # IN  (B, OD, OH, OW, C)
                    long long[:, :, :, :, ::1] indices,  # OUT (B, OD, OH, OW, C)
                    const Py_ssize_t[:, ::1] pos_d,      # IN  (O, K) tap positions
                    const Py_ssize_t[:, ::1] pos_h,
                    const Py_ssize_t[:, ::1] pos_w,
                    tuple in_size, int num_threads):
    """PyTorch's indices from window taps: flat positions (id*H + ih)*W + iw within each
    input plane, or -1 for a tap outside the input (a window without input elements).
    pos_x[o, t] is the input coordinate of tap t of window o (outside: < 0 or >= size).
    `taps` and `indices` may be the same int64 array: each element is read before it is
    written."""
    cdef Py_ssize_t D, H, W
    D, H, W = in_size
    cdef Py_ssize_t B = taps.shape[0], OD = taps.shape[1], OH = taps.shape[2]
    cdef Py_ssize_t OW = taps.shape[3], C = taps.shape[4]
    cdef const Py_ssize_t[:, ::1] tap_at = tap_coordinates(
        (pos_d.shape[1], pos_h.shape[1], pos_w.shape[1]))
    cdef Py_ssize_t r, b, od, oh, ow, c, t, i_d, i_h, i_w
    for r in prange(B * OD * OH, nogil=True, schedule='static', num_threads=num_threads):
        oh = r % OH
        od = (r // OH) % OD
        b = r // (OH * OD)
        for ow in range(OW):
            for c in range(C):
                t = taps[b, od, oh, ow, c]
                i_w = pos_w[ow, tap_at[2, t]]
                i_h = pos_h[oh, tap_at[1, t]]
                i_d = pos_d[od, tap_at[0, t]]
                if 0 <= i_w < W and 0 <= i_h < H and 0 <= i_d < D:
                    indices[b, od, oh, ow, c] = (i_d * H + i_h) * W + i_w
                else:
                    indices[b, od, oh, ow, c] = -1


def max_backward_taps(const floating_t[:, :, :, :, ::1] grad_out,  # IN  (B, OD, OH, OW, C)
                      const tap_t[:, :, :, :, ::1] taps,           # IN  (B, OD, OH, OW, C)
                      floating_t[:, :, :, :, ::1] grad_in,          # OUT (B, D, H, W, C)
                      const Py_ssize_t[:, ::1] cover_d,            # IN  cover tables
                      const Py_ssize_t[:, ::1] cover_h,
                      const Py_ssize_t[:, ::1] cover_w,
                      Py_ssize_t KH, Py_ssize_t KW, int num_threads, bint accumulate=False):
    """Gradient of max pooling in gather form: each input row sums, over the output rows
    covering it, each window's gradient where its argmax is the covering tap; added to
    grad_in, window by window, when `accumulate` (a pyramid's levels, in turn)."""
    _follow_simd_level()
    cdef const cp_cl_t *T = _table(<floating_t *>NULL)
    cdef Py_ssize_t B = grad_in.shape[0], D = grad_in.shape[1], H = grad_in.shape[2]
    cdef Py_ssize_t W = grad_in.shape[3], C = grad_in.shape[4]
    cdef Py_ssize_t OH = grad_out.shape[2], OW = grad_out.shape[3]
    cdef Py_ssize_t rows = B * D * H
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Py_ssize_t n_blocks = (C + block - 1) // block
    cdef Item it
    cdef Py_ssize_t r
    if rows == 0 or W == 0 or C == 0:
        return
    for r in prange(rows * n_blocks, nogil=True, schedule='static', num_threads=num_threads):
        it = _item(r, n_blocks, block, C, D, H)
        _tapadd_row(T, &grad_in[it.b, it.d, it.h, 0, it.c0], &grad_out[it.b, 0, 0, 0, it.c0],
                    &taps[it.b, 0, 0, 0, it.c0], OH, OW, W, C, it.nc, &cover_d[it.d, 0],
                    &cover_h[it.h, 0], &cover_w[0, 0], cover_w.shape[1], KH, KW, accumulate)


def sum_backward(const floating_t[:, :, :, :, ::1] grad_out,  # IN  (B, OD, OH, OW, C)
                 floating_t[:, :, :, :, ::1] grad_in,          # OUT (B, D, H, W, C)
                 const Py_ssize_t[:, ::1] cover_d,            # IN  cover tables
                 const Py_ssize_t[:, ::1] cover_h,
                 const Py_ssize_t[:, ::1] cover_w,
                 int num_threads, tuple divisors=None):
    """Gradient of window sums in gather form: each input row sums the gradients of the
    windows covering it, separably (the covering output rows, then along W). divisors:
    None, or the averages' (div_d, div_h, cols) as forward() reads them, by which each
    window's gradient is divided first (the bits of dividing grad_out, then summing)."""
    _follow_simd_level()
    cdef const cp_cl_t *T = _table(<floating_t *>NULL)
    cdef Py_ssize_t B = grad_in.shape[0], D = grad_in.shape[1], H = grad_in.shape[2]
    cdef Py_ssize_t W = grad_in.shape[3], C = grad_in.shape[4]
    cdef Py_ssize_t OH = grad_out.shape[2], OW = grad_out.shape[3]
    cdef Py_ssize_t rows = B * D * H
    cdef Py_ssize_t max_rows = _max_cover_rows(cover_d, cover_h)
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Item it
    cdef Py_ssize_t r, n_blocks, tid
    cdef void *acc
    cdef const void **row_ptr
    if rows == 0 or W == 0 or C == 0:
        return
    block = min(block, max(MIN_BLOCK, ROW_SCRATCH // max(OW, 1)))  # bound the row scratch
    n_blocks = (C + block - 1) // block
    cdef Py_ssize_t ptr_bytes = _pointer_bytes(max_rows)
    cdef bint divided = divisors is not None
    cdef tuple divs = divisors if divided else UNIT_DIVISORS
    cdef const double[::1] div_d = divs[0]
    cdef const double[::1] div_h = divs[1]
    cdef cp_cols_t col_div = cols_struct(divs[2])  # points into divs, which lives on
    if divided and (div_d.shape[0] < grad_out.shape[1] or div_h.shape[0] < OH):
        raise ValueError("divisors must cover the output's depth and height")
    cdef Divide divide
    divide.div_d, divide.div_h, divide.cols = &div_d[0], &div_h[0], &col_div
    cdef Divide my_divide
    cdef unsigned char[:, ::1] scratch = thread_scratch(
        num_threads, 2 * ptr_bytes + OW * block * sizeof(floating_t), np.uint8)
    with nogil, parallel(num_threads=num_threads):
        tid = omp_get_thread_num()
        row_ptr = <const void **>&scratch[tid, 0]
        acc = &scratch[tid, 2 * ptr_bytes]
        my_divide = divide  # private: each thread's own row_div scratch
        my_divide.row_div = <double *>&scratch[tid, ptr_bytes]
        for r in prange(rows * n_blocks, schedule='static'):
            it = _item(r, n_blocks, block, C, D, H)
            _spread_row(T, &grad_in[it.b, it.d, it.h, 0, it.c0], &grad_out[it.b, 0, 0, 0, it.c0],
                        OH, OW, W, C, it.nc, &cover_d[it.d, 0], &cover_h[it.h, 0],
                        &cover_w[0, 0], cover_w.shape[1], acc, row_ptr,
                        &my_divide if divided else NULL)


# --------------------------------------------------------------------------------------
# Channels-first arrays with small planes: work items of (image, block of PLANE_BLOCK
# channels). The block's planes are transposed into thread-private channels-last scratch,
# pooled there by the same row bodies with cs = nc, and transposed back. For planes whose
# rows are shorter than the row kernels' vector loops pay for (cpool._layout).
# --------------------------------------------------------------------------------------

# Channels per block: whole transpose tiles (8 lanes), a few vectors per pixel, and the
# block of a small plane in L1. Smaller blocks for larger planes measured slower than the
# row kernels, which take those.
cdef Py_ssize_t PLANE_BLOCK = 32


cdef struct PlaneItem:
    # One work item: image b, channels [c0, c0 + nc).
    Py_ssize_t b, c0, nc


cdef inline PlaneItem _plane_item(Py_ssize_t r, Py_ssize_t n_blocks, Py_ssize_t C,
                                  Py_ssize_t block) noexcept nogil:
    cdef PlaneItem it
    it.b = r // n_blocks
    it.c0 = (r % n_blocks) * block
    it.nc = min(block, C - it.c0)
    return it


cdef inline void _load_block(const cp_cl_t *T, void *blk, const void *planes,
                             Py_ssize_t image_bytes, PlaneItem it, Py_ssize_t n,
                             Py_ssize_t itemsize) noexcept nogil:
    """Item it's planes of n elements (of images image_bytes apart from `planes`) into
    `blk`, channels-last. No software prefetch of the next item: the planes are one stream
    the hardware follows (prefetching the next block measured 4-25% slower on a 2-core
    Xeon)."""
    T.transpose(blk, it.nc, <const char *>planes + it.b * image_bytes + it.c0 * n * itemsize,
                n, it.nc, n)


cdef Py_ssize_t _forward_block(int num_threads, Py_ssize_t scratch_per_channel,
                               Py_ssize_t fixed_bytes, Py_ssize_t out_bytes) noexcept:
    """Channels per block of a forward without taps: PLANE_BLOCK, or 16 or 8 where the
    threads' scratch (each thread's fixed_bytes, its gap, and scratch_per_channel per
    channel) would pass 4% of a small output (values do not depend on it)."""
    cdef Py_ssize_t block = PLANE_BLOCK
    cdef Py_ssize_t fixed = fixed_bytes + (GAP_BYTES if num_threads > 1 else 0)
    while block > 8 and max(num_threads, 1) * (fixed + scratch_per_channel * block) * 25 \
            > out_bytes:
        block //= 2
    return block


cdef struct Level:
    # One grid of a plane-block forward: its output and window tables (see forward()).
    char *out                  # image 0's first output element
    Py_ssize_t image_bytes     # between images (a pyramid level's output is strided)
    Py_ssize_t OD, OH, OW, n_out
    const Py_ssize_t *wd
    const Py_ssize_t *wh
    const Py_ssize_t *ww
    Py_ssize_t tsd, tsh, tsw, max_rows
    const double *div_d
    const double *div_h
    cp_cols_t cols
    Py_ssize_t source          # -1: pooled from the input; k: from level k's output
    Py_ssize_t offset          # its output's place in a block's outputs (elements/channel)


# Planes per work item of the narrow forward (one kernel call per run of them within an
# image, so that the column tables are loaded once per run).
cdef Py_ssize_t NARROW_CHUNK = 64


cdef bint _narrow_grid(Py_ssize_t D, Py_ssize_t W, Py_ssize_t OD, Py_ssize_t OW,
                       const Py_ssize_t *depth) noexcept:
    """True when the narrow kernels (cl_narrow.h) take a grid over float32 planes: AVX-512
    in use, 2-D planes (one input and one output depth, whose window or cover table along
    depth is [1, 0, 0]: tap 0 reads depth 0, as the kernels' tap numbers assume), input
    and output rows of at most CP_NARROW_LANES. They save the plane blocks' transposes
    (faster from 12 columns: cpool._layout.NARROW_MIN_W)."""
    return (_level >= 2 and cp_narrow_available() and D == 1 and OD == 1
            and depth[0] == 1 and depth[1] == 0 and depth[2] == 0
            and W <= CP_NARROW_LANES and OW <= CP_NARROW_LANES)


cdef bint _runs_narrow(const Level *lv, Py_ssize_t n_levels, Py_ssize_t D, Py_ssize_t W,
                      int op) noexcept:
    """True when forward_planes pools with cp_narrow_planes_f32: max or average, every
    grid one that _narrow_grid takes (over its source level's output, if it has one)."""
    cdef Py_ssize_t k
    if op != -1 and op != CP_SUM:
        return False
    for k in range(n_levels):
        if lv[k].source >= 0:
            if not _narrow_grid(lv[lv[k].source].OD, lv[lv[k].source].OW, lv[k].OD, lv[k].OW,
                                lv[k].wd):
                return False
        elif not _narrow_grid(D, W, lv[k].OD, lv[k].OW, lv[k].wd):
            return False
    return True


cdef struct NarrowLevel:
    # What the narrow kernels read of one level of _forward_narrow.
    cp_narrow_cols_t cols
    cp_narrow_flat_t flat      # when by_flat
    Py_ssize_t in_h, in_w      # the planes it pools: the input's, or its source level's
    Py_ssize_t div_at          # its first divisor in the averages' divisors
    bint by_flat               # cp_narrow_flat_max_planes_f32 takes it


cdef void _forward_narrow(const float *x, Py_ssize_t image_bytes, const Level *lv,
                          Py_ssize_t n_levels, Py_ssize_t B, Py_ssize_t C, Py_ssize_t H,
                          Py_ssize_t W, int op, int num_threads) except *:
    """forward_planes by cp_narrow_planes_f32, one call per level and run of planes (a
    sourced level's from its source's output, just written); the max over planes of at
    most CP_NARROW_LANES elements (a pyramid's finer levels) by
    cp_narrow_flat_max_planes_f32. Each window's divisor is formed as the plane blocks
    form it (cl_row_finish), in float32."""
    cdef Py_ssize_t k, i, j, q, total = 0
    cdef bint is_max = op < 0
    # one allocation for every level's tables (a pyramid calls this on small inputs)
    cdef unsigned char[::1] level_bytes = np.empty(n_levels * sizeof(NarrowLevel), np.uint8)
    cdef NarrowLevel *nl = <NarrowLevel *>&level_bytes[0]
    cdef NarrowLevel *N
    for k in range(n_levels):
        N = &nl[k]
        cp_narrow_cols(&N.cols, lv[k].ww, lv[k].tsw, lv[k].OW)
        N.in_h, N.in_w = H, W
        if lv[k].source >= 0:
            N.in_h, N.in_w = lv[lv[k].source].OH, lv[lv[k].source].OW
        N.by_flat = is_max and cp_narrow_flat_fits(N.in_h, N.in_w, lv[k].OH, lv[k].OW)
        if N.by_flat:
            cp_narrow_flat(&N.flat, N.in_h, N.in_w, lv[k].wh, lv[k].tsh, lv[k].OH, lv[k].ww,
                           lv[k].tsw, lv[k].OW)
        N.div_at = total
        total += lv[k].OH * lv[k].OW
    cdef float[::1] divs = np.ones(1 if is_max else max(total, 1), np.float32)
    if not is_max:
        for k in range(n_levels):
            for i in range(lv[k].OH):
                for j in range(lv[k].OW):
                    divs[nl[k].div_at + i * lv[k].OW + j] = <float>(
                        lv[k].div_d[0] * lv[k].div_h[i] * cp_col_div(&lv[k].cols, j))
    cdef const Level *L
    cdef const Level *S
    cdef const float *src
    cdef Py_ssize_t r, b, c, end, run, n_chunks = (B * C + NARROW_CHUNK - 1) // NARROW_CHUNK
    with nogil:
        for r in prange(n_chunks, schedule='static', num_threads=num_threads):
            q = r * NARROW_CHUNK
            end = min(q + NARROW_CHUNK, B * C)
            while q < end:  # runs of planes within one image
                b = q // C
                c = q - b * C
                run = min(end - q, C - c)
                for k in range(n_levels):
                    L = &lv[k]
                    if L.n_out == 0:
                        continue
                    if L.source < 0:
                        src = <const float *>(<const char *>x + b * image_bytes) + c * H * W
                    else:
                        S = &lv[L.source]
                        src = <const float *>(S.out + b * S.image_bytes) + c * S.n_out
                    N = &nl[k]
                    if N.by_flat:
                        cp_narrow_flat_max_planes_f32(
                            <float *>(L.out + b * L.image_bytes) + c * L.n_out, src, run,
                            N.in_h, N.in_w, L.OH, L.OW, &N.flat, L.wh, L.tsh, &N.cols)
                    else:
                        cp_narrow_planes_f32(<float *>(L.out + b * L.image_bytes) + c * L.n_out,
                                             src, run, N.in_h, N.in_w, L.OH, L.OW, L.wh, L.tsh,
                                             &N.cols, &divs[0 if is_max else N.div_at], is_max)
                q = q + run


def forward_planes(const max_t[:, :, :, :, :] x,     # IN  (B, C, D, H, W), see _check_images
                   list levels,                      # IN  grids, see below
                   int op, double p, int num_threads, bint narrow=False):
    """forward() on channels-first input, a block of planes at a time, for one or more
    grids over the same input (a pyramid's levels: the block is transposed once for all).
    levels: [(out, win_d, win_h, win_w, div_d, div_h, cols[, source])], out (B, C, OD, OH,
    OW) with each image C-contiguous; the caller keeps every array alive. A level with a
    source k (an earlier level) pools level k's output, its windows over that grid
    (a pyramid's max levels that nest in its finest). Separable always (the
    block is in cache), so sums add in the channels-first row kernels' order and give
    their bits. `narrow`: float32 planes that _runs_narrow takes pool a whole plane at a
    time from registers instead (the same bits)."""
    _check_op(op, <max_t *>NULL)
    _follow_simd_level()
    _check_images(x.shape, x.strides, sizeof(max_t), "x")
    cdef const cp_cl_t *T = _table(<max_t *>NULL)
    cdef Py_ssize_t B = x.shape[0], C = x.shape[1], H = x.shape[3], W = x.shape[4]
    cdef Py_ssize_t n_in = x.shape[2] * H * W
    cdef Py_ssize_t n_levels = len(levels), max_out = 0, sum_out = 0, max_rows = 1
    cdef Py_ssize_t acc_w = W          # the widest row a level reduces
    cdef Py_ssize_t block, n_blocks, r, k, od, oh
    cdef unsigned char[::1] level_bytes = np.empty(max(n_levels, 1) * sizeof(Level), np.uint8)
    cdef Level *lv = <Level *>&level_bytes[0]
    cdef Level *L
    cdef max_t[:, :, :, :, :] out
    cdef const Py_ssize_t[:, ::1] tab
    cdef const double[::1] div
    for k in range(n_levels):
        spec = levels[k]
        out = spec[0]
        _check_images(out.shape, out.strides, sizeof(max_t))
        if out.shape[0] != B or out.shape[1] != C:
            raise ValueError("out: (B, C) must be the input's")
        lv[k].image_bytes = out.strides[0]
        lv[k].OD, lv[k].OH, lv[k].OW = out.shape[2], out.shape[3], out.shape[4]
        lv[k].n_out = lv[k].OD * lv[k].OH * lv[k].OW
        lv[k].out = <char *>&out[0, 0, 0, 0, 0] if B * C * lv[k].n_out else NULL
        tab = spec[1]
        lv[k].wd, lv[k].tsd = &tab[0, 0], tab.shape[1]
        tab = spec[2]
        lv[k].wh, lv[k].tsh = &tab[0, 0], tab.shape[1]
        tab = spec[3]
        lv[k].ww, lv[k].tsw = &tab[0, 0], tab.shape[1]
        lv[k].max_rows = ((lv[k].tsd - 1) // 2) * ((lv[k].tsh - 1) // 2)
        div = spec[4]
        lv[k].div_d = &div[0]
        div = spec[5]
        lv[k].div_h = &div[0]
        lv[k].cols = cols_struct(spec[6])
        lv[k].source = spec[7] if len(spec) > 7 else -1
        if not -1 <= lv[k].source < k:
            raise ValueError("a level's source must be an earlier level, or -1")
        if lv[k].source >= 0:
            acc_w = max(acc_w, lv[lv[k].source].OW)
        lv[k].offset = sum_out
        max_out = max(max_out, lv[k].n_out)
        sum_out += lv[k].n_out
        max_rows = max(max_rows, lv[k].max_rows)
    cdef const void **row_ptr
    cdef max_t *blk_in
    cdef max_t *blk_out
    cdef max_t *acc
    cdef max_t *level_out
    cdef const max_t *src
    cdef Py_ssize_t src_h, src_w
    cdef PlaneItem it
    if B * C == 0 or max_out == 0:
        return
    if max_t is float:
        if narrow and _runs_narrow(lv, n_levels, x.shape[2], W, op):
            _forward_narrow(&x[0, 0, 0, 0, 0], x.strides[0], lv, n_levels, B, C, H, W, op,
                            num_threads)
            return
    cdef Py_ssize_t ptr_bytes = _pointer_bytes(max_rows)
    block = _forward_block(num_threads, (n_in + sum_out + acc_w) * sizeof(max_t), ptr_bytes,
                           B * C * sum_out * sizeof(max_t))
    n_blocks = (C + block - 1) // block
    cdef unsigned char[:, ::1] scratch = thread_scratch(
        num_threads, ptr_bytes + (n_in + sum_out + acc_w) * block * sizeof(max_t), np.uint8)
    with nogil, parallel(num_threads=num_threads):
        row_ptr = <const void **>&scratch[omp_get_thread_num(), 0]
        blk_in = <max_t *>&scratch[omp_get_thread_num(), ptr_bytes]
        blk_out = blk_in + n_in * block
        acc = blk_out + sum_out * block
        for r in prange(B * n_blocks, schedule='static'):
            it = _plane_item(r, n_blocks, C, block)
            _load_block(T, blk_in, &x[0, 0, 0, 0, 0], x.strides[0], it, n_in, sizeof(max_t))
            for k in range(n_levels):
                L = &lv[k]
                if L.n_out == 0:
                    continue
                level_out = blk_out + L.offset * block
                src, src_h, src_w = blk_in, H, W
                if L.source >= 0:
                    src = blk_out + lv[L.source].offset * block
                    src_h, src_w = lv[L.source].OH, lv[L.source].OW
                for od in range(L.OD):
                    for oh in range(L.OH):
                        _forward_row(T, level_out + (od * L.OH + oh) * L.OW * it.nc, src, src_h,
                                     src_w, L.OW, it.nc, it.nc, L.wd + od * L.tsd,
                                     L.wh + oh * L.tsh, L.ww, L.tsw, op, p, True, acc, row_ptr,
                                     &L.cols, L.div_d[od] * L.div_h[oh])
                T.transpose(<max_t *>(L.out + it.b * L.image_bytes) + it.c0 * L.n_out, L.n_out,
                            level_out, it.nc, L.n_out, it.nc)


cdef struct TapLevel:
    # One grid of a plane-block max with taps: where its part of each image's output,
    # taps and gradient lie, and its window and cover tables.
    char *out                  # image 0's first output element (NULL in backward)
    Py_ssize_t image_bytes     # between images of `out`
    Py_ssize_t start           # its first element in each row of taps and grad_out
    Py_ssize_t OD, OH, OW, n_out, KH, KW
    const Py_ssize_t *td       # window tables
    const Py_ssize_t *th
    const Py_ssize_t *tw
    Py_ssize_t tsd, tsh, tsw


cdef Py_ssize_t _tap_levels(list levels, TapLevel *lv, Py_ssize_t C,
                            Py_ssize_t row, Py_ssize_t itemsize) except -1:
    """Fill lv from levels [(out, (OD, OH, OW), tables_d, tables_h, tables_w, KH, KW)];
    the levels' parts of a taps row follow one another and fill `row`. Returns the
    largest level size."""
    cdef Py_ssize_t k, start = 0, largest = 0
    cdef const Py_ssize_t[:, ::1] tab
    for k in range(len(levels)):
        spec = levels[k]
        _check_levels_out(spec[0], &lv[k], itemsize)
        lv[k].OD, lv[k].OH, lv[k].OW = spec[1]
        lv[k].n_out = lv[k].OD * lv[k].OH * lv[k].OW
        lv[k].start = start
        start += C * lv[k].n_out
        tab = spec[2]
        lv[k].td, lv[k].tsd = &tab[0, 0], tab.shape[1]
        tab = spec[3]
        lv[k].th, lv[k].tsh = &tab[0, 0], tab.shape[1]
        tab = spec[4]
        lv[k].tw, lv[k].tsw = &tab[0, 0], tab.shape[1]
        lv[k].KH, lv[k].KW = spec[5], spec[6]
        largest = max(largest, lv[k].n_out)
    if start != row:
        raise ValueError(f"taps/grad rows hold {row} elements, the levels {start}")
    return largest


cdef void _check_levels_out(out, TapLevel *L, Py_ssize_t itemsize) except *:
    cdef Py_ssize_t[:] shape = np.asarray(out.shape, dtype=np.intp)
    cdef Py_ssize_t[:] strides = np.asarray(out.strides, dtype=np.intp)
    _check_images(&shape[0], &strides[0], itemsize)
    L.image_bytes = strides[0]
    L.out = <char *><Py_ssize_t>out.__array_interface__["data"][0]


cdef void _argmax_narrow(const float *x, tap_out_t[:, ::1] taps, const TapLevel *L,
                         Py_ssize_t B, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                         int num_threads) except *:
    """max_forward_taps_planes of one grid by cp_narrow_argmax_planes_f32, one call per
    run of planes within an image (as _forward_narrow)."""
    cdef cp_narrow_cols_t cols
    cp_narrow_cols(&cols, L.tw, L.tsw, L.OW)
    cdef Py_ssize_t r, q, b, c, end, run, n_chunks = (B * C + NARROW_CHUNK - 1) // NARROW_CHUNK
    with nogil:
        for r in prange(n_chunks, schedule='static', num_threads=num_threads):
            q = r * NARROW_CHUNK
            end = min(q + NARROW_CHUNK, B * C)
            while q < end:
                b = q // C
                c = q - b * C
                run = min(end - q, C - c)
                cp_narrow_argmax_planes_f32(<float *>(L.out + b * L.image_bytes) + c * L.n_out,
                                            &taps[b, L.start + c * L.n_out], sizeof(tap_out_t),
                                            x + q * H * W, run, H, W, L.OH, L.OW, L.th, L.tsh,
                                            L.KW, &cols)
                q = q + run


def max_forward_taps_planes(const max_t[:, :, :, :, ::1] x,   # IN  (B, C, D, H, W)
                            tap_out_t[:, ::1] taps,           # OUT (B, levels' taps)
                            list levels, int num_threads, bint narrow=False):
    """max_forward_taps() on channels-first input, a block of planes at a time, for one
    or more grids (a pyramid's levels: one transpose of each block for all). levels:
    [(out, (OD, OH, OW), win_d, win_h, win_w, KH, KW)], out (B, C, OD, OH, OW) with each
    image C-contiguous; taps rows hold the levels' taps one after another, each
    (C, OD, OH, OW), channels-first as the output. `narrow`: one float32 grid over planes
    the narrow forward takes (_runs_narrow) runs a whole plane at a time from registers
    instead (the same values and taps). The caller keeps every array alive."""
    _follow_simd_level()
    cdef const cp_cl_t *T = _table(<max_t *>NULL)
    cdef const cp_cl_t *T_int = _table(<int *>NULL)
    cdef Py_ssize_t B = x.shape[0], C = x.shape[1], H = x.shape[3], W = x.shape[4]
    cdef Py_ssize_t n_in = x.shape[2] * H * W
    cdef Py_ssize_t n_blocks = (C + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t n_levels = len(levels), r, k, od, oh, i, row
    cdef unsigned char[::1] level_bytes = np.empty(max(n_levels, 1) * sizeof(TapLevel), np.uint8)
    cdef TapLevel *lv = <TapLevel *>&level_bytes[0]
    cdef TapLevel *L
    cdef Py_ssize_t max_out = _tap_levels(levels, lv, C, taps.shape[1], sizeof(max_t))
    cdef PlaneItem it
    cdef max_t *blk_in
    cdef max_t *blk_out
    cdef int *blk_key
    cdef int *key_planes
    cdef tap_out_t *tap_planes
    if B * C == 0 or max_out == 0:
        return
    if max_t is float:
        if narrow and n_levels == 1 and _narrow_grid(x.shape[2], W, lv[0].OD, lv[0].OW,
                                                     lv[0].td):
            _argmax_narrow(&x[0, 0, 0, 0, 0], taps, &lv[0], B, C, H, W, num_threads)
            return
    cdef unsigned char[:, ::1] blk_bytes = thread_scratch(
        num_threads, (n_in + max_out) * PLANE_BLOCK * sizeof(max_t), np.uint8)
    cdef int[:, ::1] keys = thread_scratch(num_threads, 2 * max_out * PLANE_BLOCK, np.intc)
    with nogil, parallel(num_threads=num_threads):
        blk_in = <max_t *>&blk_bytes[omp_get_thread_num(), 0]
        blk_out = blk_in + n_in * PLANE_BLOCK
        blk_key = &keys[omp_get_thread_num(), 0]
        key_planes = blk_key + max_out * PLANE_BLOCK
        for r in prange(B * n_blocks, schedule='static'):
            it = _plane_item(r, n_blocks, C, PLANE_BLOCK)
            _load_block(T, blk_in, &x[0, 0, 0, 0, 0], x.strides[0], it, n_in, sizeof(max_t))
            for k in range(n_levels):
                L = &lv[k]
                if L.n_out == 0:
                    continue
                for od in range(L.OD):
                    for oh in range(L.OH):
                        row = (od * L.OH + oh) * L.OW * it.nc
                        _argmax_row(T, blk_out + row, blk_key + row, blk_in, H, W, L.OW, it.nc,
                                    it.nc, L.td + od * L.tsd, L.th + oh * L.tsh, L.tw, L.tsw,
                                    L.KH, L.KW)
                T.transpose(<max_t *>(L.out + it.b * L.image_bytes) + it.c0 * L.n_out, L.n_out,
                            blk_out, it.nc, L.n_out, it.nc)
                tap_planes = &taps[it.b, L.start + it.c0 * L.n_out]
                if tap_out_t is int:
                    T_int.transpose(tap_planes, L.n_out, blk_key, it.nc, L.n_out, it.nc)
                else:  # transposed as int, then narrowed or widened
                    T_int.transpose(key_planes, L.n_out, blk_key, it.nc, L.n_out, it.nc)
                    for i in range(L.n_out * it.nc):
                        tap_planes[i] = <tap_out_t>key_planes[i]


cdef struct ScatterLevel:
    # One grid of the plane-block max backward: where its part of each taps/grad_out row
    # starts, and the input element of each window tap (see max_backward_taps_planes).
    Py_ssize_t start, n_out, n_taps
    const int *offsets


cdef inline void _scatter_taps(floating_t *gin, const floating_t *go, const tap_t *tp,
                               const int *offsets, Py_ssize_t n_out, Py_ssize_t n_taps,
                               Py_ssize_t nc, Py_ssize_t n_in) noexcept nogil:
    """Adds each window's gradient go into gin at the input element its tap tp names
    (nc planes each, channels-first), windows in raster order."""
    cdef Py_ssize_t c, o
    cdef int i
    cdef size_t t
    for c in range(nc):
        for o in range(n_out):
            t = <size_t>tp[c * n_out + o]
            if t < <size_t>n_taps:  # a tap outside the window would index past its row
                i = offsets[o * n_taps + t]
                if i >= 0:  # -1: a window of padding only has no input to send it to
                    gin[c * n_in + i] += go[c * n_out + o]


def max_backward_taps_planes(const floating_t[:, ::1] grad_out,  # IN  (B, levels' grads)
                             const tap_t[:, ::1] taps,           # IN  (B, levels' taps)
                             floating_t[:, :, :, :, ::1] grad_in,  # OUT (B, C, D, H, W)
                             list levels, int num_threads):
    """Gradient of the plane-block max (max_forward_taps_planes' taps) on channels-first
    arrays, summed over one or more grids. levels: [offsets], one per grid, each (n_out,
    taps per window) int32: the flat input element of the plane under each window tap, -1
    outside the input. grad_out and taps rows hold the levels' gradients and taps one
    after another, each (C, n_out).

    Scatter form: each block's planes are zeroed, then every window's gradient is added
    at its argmax, levels in order and windows in raster order within a level (PyTorch's
    CPU order within one grid). A window sends to one element, so this costs one add per
    output; the gather form would visit every (input, covering window) pair."""
    cdef Py_ssize_t B = grad_in.shape[0], C = grad_in.shape[1]
    cdef Py_ssize_t n_in = grad_in.shape[2] * grad_in.shape[3] * grad_in.shape[4]
    cdef Py_ssize_t n_blocks = (C + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t n_levels = len(levels), r, k, start = 0
    cdef unsigned char[::1] level_bytes = np.empty(max(n_levels, 1) * sizeof(ScatterLevel),
                                                   np.uint8)
    cdef ScatterLevel *lv = <ScatterLevel *>&level_bytes[0]
    cdef ScatterLevel *L
    cdef const int[:, ::1] offsets
    cdef PlaneItem it
    for k in range(n_levels):
        offsets = levels[k]
        lv[k].start, lv[k].n_out, lv[k].n_taps = start, offsets.shape[0], offsets.shape[1]
        lv[k].offsets = &offsets[0, 0] if offsets.shape[0] * offsets.shape[1] else NULL
        start += C * lv[k].n_out
    if grad_out.shape[1] != start or taps.shape[1] != start:
        raise ValueError(f"grad_out and taps rows must hold {start} elements, got "
                         f"{grad_out.shape[1]} and {taps.shape[1]}")
    if grad_out.shape[0] != B or taps.shape[0] != B:
        raise ValueError("grad_out, taps and grad_in must have the same batch size")
    if B * C == 0 or n_in == 0:
        return
    with nogil, parallel(num_threads=num_threads):
        for r in prange(B * n_blocks, schedule='static'):
            it = _plane_item(r, n_blocks, C, PLANE_BLOCK)
            memset(&grad_in[it.b, it.c0, 0, 0, 0], 0, it.nc * n_in * sizeof(floating_t))
            for k in range(n_levels):
                L = &lv[k]
                if L.n_out * L.n_taps:
                    _scatter_taps(&grad_in[it.b, it.c0, 0, 0, 0],
                                  &grad_out[it.b, L.start + it.c0 * L.n_out],
                                  &taps[it.b, L.start + it.c0 * L.n_out], L.offsets,
                                  L.n_out, L.n_taps, it.nc, n_in)


cdef void _backward_narrow(const float[:, :, :, :, ::1] grad_out,
                           float[:, :, :, :, ::1] grad_in, const Py_ssize_t[:, ::1] cover_h,
                           const Py_ssize_t[:, ::1] cover_w, tuple divisors,
                           int num_threads) except *:
    """sum_backward_planes by cp_narrow_spread_planes_f32, one call per run of planes;
    divisors formed as _forward_narrow forms them."""
    cdef Py_ssize_t B = grad_in.shape[0], C = grad_in.shape[1]
    cdef Py_ssize_t H = grad_in.shape[3], W = grad_in.shape[4]
    cdef Py_ssize_t OH = grad_out.shape[3], OW = grad_out.shape[4], i, j
    if B * C == 0 or H * W == 0:
        return
    cdef cp_narrow_cols_t cols
    cp_narrow_cols(&cols, &cover_w[0, 0], cover_w.shape[1], W)
    cdef float[::1] divs = np.ones(max(OH * OW, 1), np.float32)
    cdef const double[::1] div_d
    cdef const double[::1] div_h
    cdef cp_cols_t col_div
    if divisors is not None:
        div_d, div_h, col_div = divisors[0], divisors[1], cols_struct(divisors[2])
        for i in range(OH):
            for j in range(OW):
                divs[i * OW + j] = <float>(div_d[0] * div_h[i] * cp_col_div(&col_div, j))
    cdef const float *div = &divs[0] if divisors is not None else NULL
    cdef float[:, ::1] scratch = thread_scratch(num_threads, max(2 * OH * CP_NARROW_LANES, 1),
                                          np.float32)
    cdef Py_ssize_t r, q, end, n_chunks = (B * C + NARROW_CHUNK - 1) // NARROW_CHUNK
    with nogil, parallel(num_threads=num_threads):
        for r in prange(n_chunks, schedule='static'):
            q = r * NARROW_CHUNK
            end = min(q + NARROW_CHUNK, B * C)
            cp_narrow_spread_planes_f32(&grad_in[0, 0, 0, 0, 0] + q * H * W,
                                        &grad_out[0, 0, 0, 0, 0] + q * OH * OW, end - q, H, W,
                                        OH, OW, &cover_h[0, 0], cover_h.shape[1], &cols, div,
                                        &scratch[omp_get_thread_num(), 0])


def sum_backward_planes(const floating_t[:, :, :, :, ::1] grad_out,  # IN  (B, C, OD, OH, OW)
                        floating_t[:, :, :, :, ::1] grad_in,          # OUT (B, C, D, H, W)
                        const Py_ssize_t[:, ::1] cover_d,            # IN  cover tables
                        const Py_ssize_t[:, ::1] cover_h,
                        const Py_ssize_t[:, ::1] cover_w,
                        tuple divisors, int num_threads, bint narrow=False):
    """sum_backward() on channels-first arrays, a block of planes at a time. `divisors`
    (div_d, div_h, cols) as forward's: each window's gradient is divided by its divisor
    in the block, once, as the average's backward needs; None: no division. `narrow`:
    float32 planes that forward_planes would pool narrow are done a whole plane at a time
    from registers instead (the same bits)."""
    _follow_simd_level()
    if floating_t is float:
        if narrow and _narrow_grid(grad_in.shape[2], grad_in.shape[4], grad_out.shape[2],
                                   grad_out.shape[4], &cover_d[0, 0]):
            _backward_narrow(grad_out, grad_in, cover_h, cover_w, divisors, num_threads)
            return
    cdef const cp_cl_t *T = _table(<floating_t *>NULL)
    cdef Py_ssize_t B = grad_in.shape[0], C = grad_in.shape[1], D = grad_in.shape[2]
    cdef Py_ssize_t H = grad_in.shape[3], W = grad_in.shape[4]
    cdef Py_ssize_t OH = grad_out.shape[3], OW = grad_out.shape[4]
    cdef Py_ssize_t n_in = D * H * W, n_out = grad_out.shape[2] * OH * OW
    cdef Py_ssize_t n_blocks = (C + PLANE_BLOCK - 1) // PLANE_BLOCK
    cdef Py_ssize_t r, i_d, i_h
    cdef PlaneItem it
    cdef floating_t *blk_in
    cdef floating_t *blk_g
    cdef floating_t *acc
    cdef const void **row_ptr
    cdef Py_ssize_t od
    if B * C == 0 or n_in == 0:
        return
    cdef bint divide = divisors is not None
    cdef tuple divs = divisors if divide else UNIT_DIVISORS
    cdef const double[::1] div_d = divs[0]
    cdef const double[::1] div_h = divs[1]
    cdef cp_cols_t col_div = cols_struct(divs[2])  # points into divs, which lives on
    cdef Py_ssize_t ptr_bytes = _pointer_bytes(_max_cover_rows(cover_d, cover_h))
    cdef unsigned char[:, ::1] scratch = thread_scratch(
        num_threads, ptr_bytes + (n_in + n_out + OW) * PLANE_BLOCK * sizeof(floating_t), np.uint8)
    with nogil, parallel(num_threads=num_threads):
        row_ptr = <const void **>&scratch[omp_get_thread_num(), 0]
        blk_in = <floating_t *>&scratch[omp_get_thread_num(), ptr_bytes]
        blk_g = blk_in + n_in * PLANE_BLOCK
        acc = blk_g + n_out * PLANE_BLOCK
        for r in prange(B * n_blocks, schedule='static'):
            it = _plane_item(r, n_blocks, C, PLANE_BLOCK)
            _load_block(T, blk_g, &grad_out[0, 0, 0, 0, 0], grad_out.strides[0], it, n_out,
                        sizeof(floating_t))
            if divide:
                for od in range(grad_out.shape[2]):
                    for i_h in range(OH):
                        T.row_finish(blk_g + (od * OH + i_h) * OW * it.nc, OW, it.nc, it.nc,
                                     CP_SUM, 1.0, &col_div, div_d[od] * div_h[i_h])
            for i_d in range(D):
                for i_h in range(H):
                    _spread_row(T, blk_in + (i_d * H + i_h) * W * it.nc, blk_g, OH, OW, W, it.nc,
                                it.nc, &cover_d[i_d, 0], &cover_h[i_h, 0], &cover_w[0, 0],
                                cover_w.shape[1], acc, row_ptr, NULL)
            T.transpose(&grad_in[it.b, it.c0, 0, 0, 0], n_in, blk_in, it.nc, n_in, it.nc)
