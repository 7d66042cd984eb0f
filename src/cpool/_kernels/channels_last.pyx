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
it, and is written once.
"""
from cython.parallel cimport parallel, prange
import numpy as np

from ._cols cimport cols_struct, cp_cols_t
from ._fused cimport floating_t, max_t, tap_out_t, tap_t, uchar
from ._openmp cimport omp_get_thread_num

from .pool import get_simd_level

cdef extern from "cl_rows.h" nogil:
    ctypedef struct cp_cl_t:
        void (*fill)(void *a, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t nc, int lowest) noexcept nogil
        void (*vreduce)(void *acc, const void *const *rows, Py_ssize_t n_rows, Py_ssize_t width,
                        Py_ssize_t cs, Py_ssize_t nc, int op, double p) noexcept nogil
        void (*hreduce)(void *out, const void *acc, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t acs,
                        Py_ssize_t nc, const Py_ssize_t *tab, Py_ssize_t ts, int op,
                        int first, int fuse) noexcept nogil
        void (*row_argmax)(void *out, int *key, const void *row, Py_ssize_t n, Py_ssize_t cs,
                           Py_ssize_t nc, const Py_ssize_t *tab, Py_ssize_t ts, int base,
                           int first) noexcept nogil
        void (*row_finish)(void *out, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t nc, int op,
                           double p, const cp_cols_t *cols, double row_div) noexcept nogil
        void (*row_tapadd_u8)(void *acc, const void *g, const void *taps, Py_ssize_t n,
                              Py_ssize_t cs, Py_ssize_t nc, const Py_ssize_t *cover,
                              Py_ssize_t ts, int base, int first) noexcept nogil
        void (*row_tapadd_i32)(void *acc, const void *g, const void *taps, Py_ssize_t n,
                               Py_ssize_t cs, Py_ssize_t nc, const Py_ssize_t *cover,
                               Py_ssize_t ts, int base, int first) noexcept nogil
        void (*row_spread)(void *acc, const void *g, Py_ssize_t n, Py_ssize_t cs, Py_ssize_t nc,
                           const Py_ssize_t *cover, Py_ssize_t ts, int first) noexcept nogil
    int CP_CL_F32, CP_CL_F64, CP_CL_U8, CP_CL_I8, CP_CL_I16, CP_CL_I32, CP_CL_I64, CP_SUM
    const cp_cl_t *cp_cl_select(int type, int level)


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


def _scratch(int num_threads, Py_ssize_t length, dtype):
    """Per-thread scratch rows, each a whole number of 64-byte lines (no false sharing)."""
    itemsize = np.dtype(dtype).itemsize
    per_line = 64 // itemsize
    return np.empty((max(num_threads, 1), (length + per_line - 1) // per_line * per_line + per_line),
                    dtype=dtype)


def forward(const max_t[:, :, :, :, ::1] x,   # IN  (B, D, H, W, C)
            max_t[:, :, :, :, ::1] out,       # OUT (B, OD, OH, OW, C)
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
    if op >= 0:  # sums exist for floats only (NULL in the integer tables)
        if max_t is float or max_t is double:
            pass
        else:
            raise ValueError(f"op {op} (a sum) needs float input")
    _follow_simd_level()
    cdef const cp_cl_t *T = _table(<max_t *>NULL)
    cdef Py_ssize_t B = out.shape[0], OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t C = out.shape[4], W = x.shape[3]
    cdef Py_ssize_t rows = B * OD * OH
    cdef Py_ssize_t max_rows = ((win_d.shape[1] - 1) // 2) * ((win_h.shape[1] - 1) // 2)
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Item it
    cdef Py_ssize_t n_blocks, r, b, od, oh, c0, nc, a, e, n_rows, tid
    cdef const Py_ssize_t *wd
    cdef const Py_ssize_t *wh
    cdef const void **row_ptr
    cdef void *acc
    if rows == 0 or OW == 0 or C == 0:
        return
    block = min(block, max(MIN_BLOCK, ROW_SCRATCH // max(W, 1)))  # bound the row scratch
    n_blocks = (C + block - 1) // block
    cdef bint separable = op > 0 or (overlap and max_rows > 1)
    cdef unsigned char[:, ::1] acc_bytes = _scratch(
        num_threads, W * block * sizeof(max_t) if separable else 1, np.uint8)
    cdef Py_ssize_t[:, ::1] row_ptrs = _scratch(num_threads, max(max_rows, 1), np.intp)
    cdef cp_cols_t col_div = cols_struct(cols)
    with nogil, parallel(num_threads=num_threads):
        tid = omp_get_thread_num()
        acc = &acc_bytes[tid, 0]
        row_ptr = <const void **>&row_ptrs[tid, 0]
        for r in prange(rows * n_blocks, schedule='static'):
            it = _item(r, n_blocks, block, C, OD, OH)
            b, od, oh, c0, nc = it.b, it.d, it.h, it.c0, it.nc
            wd = &win_d[od, 0]
            wh = &win_h[oh, 0]
            n_rows = 0
            for a in range(wd[0]):
                for e in range(wh[0]):
                    row_ptr[n_rows] = &x[b, wd[1 + 2 * a], wh[1 + 2 * e], 0, c0]
                    n_rows = n_rows + 1
            if n_rows == 0:
                T.fill(&out[b, od, oh, 0, c0], OW, C, nc, op < 0)
            elif separable:
                T.vreduce(acc, row_ptr, n_rows, W, C, nc, op, p)
                T.hreduce(&out[b, od, oh, 0, c0], acc, OW, C, nc, nc, &win_w[0, 0],
                          win_w.shape[1], op, 1, 1)
            else:
                for a in range(n_rows):
                    T.hreduce(&out[b, od, oh, 0, c0], row_ptr[a], OW, C, C, nc, &win_w[0, 0],
                              win_w.shape[1], op, a == 0, 0)
            if op >= 0:
                T.row_finish(&out[b, od, oh, 0, c0], OW, C, nc, op, p, &col_div,
                             div_d[od] * div_h[oh])


def max_forward_taps(const max_t[:, :, :, :, ::1] x,   # IN  (B, D, H, W, C)
                     max_t[:, :, :, :, ::1] out,       # OUT (B, OD, OH, OW, C)
                     tap_out_t[:, :, :, :, ::1] taps,      # OUT (B, OD, OH, OW, C)
                     const Py_ssize_t[:, ::1] win_d,   # IN  window tables
                     const Py_ssize_t[:, ::1] win_h,
                     const Py_ssize_t[:, ::1] win_w,
                     Py_ssize_t KH, Py_ssize_t KW, int num_threads):
    """Max pooling that also records each window's argmax as the tap number
    (td*KH + th)*KW + tw: the first maximum in scan order, or the window's last NaN."""
    _follow_simd_level()
    cdef const cp_cl_t *T = _table(<max_t *>NULL)
    cdef Py_ssize_t B = out.shape[0], OD = out.shape[1], OH = out.shape[2], OW = out.shape[3]
    cdef Py_ssize_t C = out.shape[4]
    cdef Py_ssize_t rows = B * OD * OH
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Py_ssize_t n_blocks = (C + block - 1) // block
    cdef Item it
    cdef Py_ssize_t r, b, od, oh, ow, c, c0, nc, a, e
    cdef const Py_ssize_t *wd
    cdef const Py_ssize_t *wh
    cdef int *key
    cdef tap_out_t *tap_px
    cdef int first
    if rows == 0 or OW == 0 or C == 0:
        return
    cdef int[:, ::1] keys = _scratch(num_threads, OW * block, np.intc)
    with nogil, parallel(num_threads=num_threads):
        key = &keys[omp_get_thread_num(), 0]
        for r in prange(rows * n_blocks, schedule='static'):
            it = _item(r, n_blocks, block, C, OD, OH)
            b, od, oh, c0, nc = it.b, it.d, it.h, it.c0, it.nc
            wd = &win_d[od, 0]
            wh = &win_h[oh, 0]
            first = 1
            for a in range(wd[0]):
                for e in range(wh[0]):
                    T.row_argmax(&out[b, od, oh, 0, c0], key,
                                 &x[b, wd[1 + 2 * a], wh[1 + 2 * e], 0, c0], OW, C, nc,
                                 &win_w[0, 0], win_w.shape[1],
                                 <int>((wd[2 + 2 * a] * KH + wh[2 + 2 * e]) * KW), first)
                    first = 0
            if first:  # no input row under the window: tap 0 lies outside the input
                T.fill(&out[b, od, oh, 0, c0], OW, C, nc, 1)
                for c in range(OW * nc):
                    key[c] = 0
            for ow in range(OW):
                tap_px = &taps[b, od, oh, ow, c0]
                for c in range(nc):
                    tap_px[c] = <tap_out_t>key[ow * nc + c]


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
    cdef Py_ssize_t KH = pos_h.shape[1], KW = pos_w.shape[1]
    cdef Py_ssize_t r, b, od, oh, ow, c, t, i_d, i_h, i_w
    for r in prange(B * OD * OH, nogil=True, schedule='static', num_threads=num_threads):
        oh = r % OH
        od = (r // OH) % OD
        b = r // (OH * OD)
        for ow in range(OW):
            for c in range(C):
                t = taps[b, od, oh, ow, c]
                i_w = pos_w[ow, t % KW]
                i_h = pos_h[oh, (t // KW) % KH]
                i_d = pos_d[od, t // (KW * KH)]
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
                      Py_ssize_t KH, Py_ssize_t KW, int num_threads):
    """Gradient of max pooling in gather form: each input row sums, over the output rows
    covering it, each window's gradient where its argmax is the covering tap."""
    _follow_simd_level()
    cdef const cp_cl_t *T = _table(<floating_t *>NULL)
    cdef Py_ssize_t B = grad_in.shape[0], D = grad_in.shape[1], H = grad_in.shape[2]
    cdef Py_ssize_t W = grad_in.shape[3], C = grad_in.shape[4]
    cdef Py_ssize_t rows = B * D * H
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Py_ssize_t n_blocks = (C + block - 1) // block
    cdef Item it
    cdef Py_ssize_t r, b, i_d, i_h, c0, nc, a, e, od, oh
    cdef const Py_ssize_t *cd
    cdef const Py_ssize_t *ch
    cdef int first, base
    if rows == 0 or W == 0 or C == 0:
        return
    for r in prange(rows * n_blocks, nogil=True, schedule='static', num_threads=num_threads):
        it = _item(r, n_blocks, block, C, D, H)
        b, i_d, i_h, c0, nc = it.b, it.d, it.h, it.c0, it.nc
        cd = &cover_d[i_d, 0]
        ch = &cover_h[i_h, 0]
        first = 1
        for a in range(cd[0]):
            od = cd[1 + 2 * a]
            for e in range(ch[0]):
                oh = ch[1 + 2 * e]
                base = <int>((cd[2 + 2 * a] * KH + ch[2 + 2 * e]) * KW)
                if tap_t is uchar:
                    T.row_tapadd_u8(&grad_in[b, i_d, i_h, 0, c0], &grad_out[b, od, oh, 0, c0],
                                    &taps[b, od, oh, 0, c0], W, C, nc, &cover_w[0, 0],
                                    cover_w.shape[1], base, first)
                else:
                    T.row_tapadd_i32(&grad_in[b, i_d, i_h, 0, c0], &grad_out[b, od, oh, 0, c0],
                                     &taps[b, od, oh, 0, c0], W, C, nc, &cover_w[0, 0],
                                     cover_w.shape[1], base, first)
                first = 0
        if first:
            T.fill(&grad_in[b, i_d, i_h, 0, c0], W, C, nc, 0)


def sum_backward(const floating_t[:, :, :, :, ::1] grad_out,  # IN  (B, OD, OH, OW, C)
                 floating_t[:, :, :, :, ::1] grad_in,          # OUT (B, D, H, W, C)
                 const Py_ssize_t[:, ::1] cover_d,            # IN  cover tables
                 const Py_ssize_t[:, ::1] cover_h,
                 const Py_ssize_t[:, ::1] cover_w,
                 int num_threads):
    """Gradient of window sums (averages pass grad_out already divided) in gather form:
    each input row sums the gradients of the windows covering it."""
    _follow_simd_level()
    cdef const cp_cl_t *T = _table(<floating_t *>NULL)
    cdef Py_ssize_t B = grad_in.shape[0], D = grad_in.shape[1], H = grad_in.shape[2]
    cdef Py_ssize_t W = grad_in.shape[3], C = grad_in.shape[4]
    cdef Py_ssize_t rows = B * D * H
    cdef Py_ssize_t block = _channel_block(rows, C, num_threads)
    cdef Py_ssize_t n_blocks = (C + block - 1) // block
    cdef Item it
    cdef Py_ssize_t r, b, i_d, i_h, c0, nc, a, e, od, oh
    cdef const Py_ssize_t *cd
    cdef const Py_ssize_t *ch
    cdef int first
    if rows == 0 or W == 0 or C == 0:
        return
    for r in prange(rows * n_blocks, nogil=True, schedule='static', num_threads=num_threads):
        it = _item(r, n_blocks, block, C, D, H)
        b, i_d, i_h, c0, nc = it.b, it.d, it.h, it.c0, it.nc
        cd = &cover_d[i_d, 0]
        ch = &cover_h[i_h, 0]
        first = 1
        for a in range(cd[0]):
            od = cd[1 + 2 * a]
            for e in range(ch[0]):
                oh = ch[1 + 2 * e]
                T.row_spread(&grad_in[b, i_d, i_h, 0, c0], &grad_out[b, od, oh, 0, c0], W, C,
                             nc, &cover_w[0, 0], cover_w.shape[1], first)
                first = 0
        if first:
            T.fill(&grad_in[b, i_d, i_h, 0, c0], W, C, nc, 0)
