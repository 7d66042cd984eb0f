"""RoI pooling and RoI align kernels, forward and backward.

x is (N, C, H, W), or (N, H, W, C) with channels_last; rois (K, 4) hold (x1, y1, x2, y2)
in the input's float type and batch_idx (K,) the image of each RoI. Outputs (and argmax,
taps, grad_out) are (K, C, OH, OW), or (K, OH, OW, C) with channels_last. The rounding
rules live in cpool._roi; these functions only loop over validated, contiguous arrays.

Channels go in blocks of at most `cb`: a block of one channels-first image is copied
channels-last into a thread-private buffer buf[(h*W + w)*cb + i], so each bin pixel or
bilinear corner is one contiguous run of channels and the inner loops vectorize over
channels. Channels-last input is read (and its gradient written) in place, with
leading dimension C instead of cb; the arithmetic is the same, so both layouts give the
same bits.

Forward work items are (channel block, RoI), RoIs taken in batch order so that a thread
rebuilds its buffer only when the image changes. An average bin sums its merged taps
with the block's channels held in registers (select_rows.h cs_taps_sum; channels-first
output goes through a (bins, channels) tile transposed once per RoI).

Backward work items are (channel block, image) and add up that image's RoIs in order
(`order[starts[n]:starts[n+1]]`), so every element of grad_x is written by one thread
in a fixed order: no atomics, no zero fill, and bitwise-identical results for every
thread count.
"""
from cython.parallel cimport prange
from libc.math cimport ceil, floor, round
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from ._fused cimport floating_t

from .pool import get_simd_level

cdef extern from "select_rows.h" nogil:
    void cs_wargmax_f32(float *m, int *arg, const float *row, Py_ssize_t n, float w,
                        int tap, int first)
    void cs_wargmax_f64(double *m, int *arg, const double *row, Py_ssize_t n, double w,
                        int tap, int first)
    void cs_argmax_f32(float *m, int *arg, const float *row, Py_ssize_t n, int tap, int first)
    void cs_argmax_f64(double *m, int *arg, const double *row, Py_ssize_t n, int tap, int first)
    ctypedef void (*cs_transpose_t)(void *dst, Py_ssize_t dld, const void *src,
                                    Py_ssize_t sld, Py_ssize_t rows, Py_ssize_t cols)
    cs_transpose_t cs_transpose_select(int level, int bytes)
    ctypedef void (*cs_taps_sum_f32_t)(float *out, const float *src, const Py_ssize_t *off,
                                       const float *w, Py_ssize_t n_taps, Py_ssize_t n)
    ctypedef void (*cs_taps_sum_f64_t)(double *out, const double *src, const Py_ssize_t *off,
                                       const double *w, Py_ssize_t n_taps, Py_ssize_t n)
    cs_taps_sum_f32_t cs_taps_sum_f32_select(int level)
    cs_taps_sum_f64_t cs_taps_sum_f64_select(int level)
    ctypedef void (*cs_taps_spread_f32_t)(float *dst, const float *g, const Py_ssize_t *off,
                                          const float *w, Py_ssize_t n_taps, Py_ssize_t n)
    ctypedef void (*cs_taps_spread_f64_t)(double *dst, const double *g,
                                          const Py_ssize_t *off, const double *w,
                                          Py_ssize_t n_taps, Py_ssize_t n)
    cs_taps_spread_f32_t cs_taps_spread_f32_select(int level)
    cs_taps_spread_f64_t cs_taps_spread_f64_select(int level)


# --------------------------------------------------------------------------------------
# Per-RoI geometry. Coordinates are computed in the input's float type, in the same
# order of operations as torchvision and onnxruntime, so that the discontinuous steps
# (rounding, bin edges, sample-grid sizes) land where theirs do.
# --------------------------------------------------------------------------------------

cdef inline Py_ssize_t _clip(Py_ssize_t v, Py_ssize_t hi) noexcept nogil:
    return 0 if v < 0 else (hi if v > hi else v)


cdef void _pool_bins(floating_t c0, floating_t c1, floating_t scale, Py_ssize_t size,
                     Py_ssize_t out, Py_ssize_t *lo, Py_ssize_t *hi) noexcept nogil:
    """roi_pool's bins along one axis: [lo[o], hi[o]) for RoI coordinates c0 <= c1."""
    cdef Py_ssize_t start = <Py_ssize_t>round(c0 * scale)
    cdef Py_ssize_t end = <Py_ssize_t>round(c1 * scale)
    cdef Py_ssize_t extent = end - start + 1
    if extent < 1:
        extent = 1
    cdef floating_t bin_size = <floating_t>extent / <floating_t>out
    cdef Py_ssize_t o
    for o in range(out):
        lo[o] = _clip(<Py_ssize_t>floor(<floating_t>o * bin_size) + start, size)
        hi[o] = _clip(<Py_ssize_t>ceil(<floating_t>(o + 1) * bin_size) + start, size)


cdef struct Axis:
    # Bilinear samples of RoI align along one axis: out bins x g samples each. Sample
    # s = o*g + i sits between lo[s] and hi[s] with weight 1-frac[s] and frac[s];
    # ok[s] = 0 for a sample outside [-1, size] (it contributes 0).
    # The merged form used by avg mode: bin o reads m_idx[o*2g + j] with weight
    # m_w[o*2g + j] for j < m_n[o] (samples sharing a pixel are combined).
    Py_ssize_t g
    Py_ssize_t *lo
    Py_ssize_t *hi
    double *frac
    char *ok
    Py_ssize_t *m_idx
    double *m_w
    Py_ssize_t *m_n


cdef void _axis_alloc(Axis *a, Py_ssize_t out, Py_ssize_t g) noexcept nogil:
    cdef Py_ssize_t n = out * g if out * g > 0 else 1
    a.g = g
    a.lo = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
    a.hi = <Py_ssize_t *>malloc(n * sizeof(Py_ssize_t))
    a.frac = <double *>malloc(n * sizeof(double))
    a.ok = <char *>malloc(n * sizeof(char))
    a.m_idx = <Py_ssize_t *>malloc(2 * n * sizeof(Py_ssize_t))
    a.m_w = <double *>malloc(2 * n * sizeof(double))
    a.m_n = <Py_ssize_t *>malloc((out + 1) * sizeof(Py_ssize_t))


cdef void _axis_free(Axis *a) noexcept nogil:
    free(a.lo)
    free(a.hi)
    free(a.frac)
    free(a.ok)
    free(a.m_idx)
    free(a.m_w)
    free(a.m_n)


cdef void _axis_samples(Axis *a, floating_t start, floating_t bin_size, Py_ssize_t size,
                        Py_ssize_t out, double scale) noexcept nogil:
    """Fill the sample table; `scale` multiplies the merged weights (1/count on one axis)."""
    cdef Py_ssize_t g = a.g
    cdef Py_ssize_t o, i, s, j, n, lo
    cdef floating_t v
    cdef double c, f
    for o in range(out):
        n = 0
        for i in range(g):
            s = o * g + i
            v = start + <floating_t>o * bin_size + \
                (<floating_t>i + <floating_t>0.5) * bin_size / <floating_t>g
            c = <double>v
            if c < -1.0 or c > <double>size:
                a.ok[s] = 0
                a.lo[s] = 0
                a.hi[s] = 0
                a.frac[s] = 0
                continue
            if c <= 0:
                c = 0
            lo = <Py_ssize_t>c
            if lo >= size - 1:
                lo = size - 1
                a.hi[s] = lo
                c = <double>lo
            else:
                a.hi[s] = lo + 1
            a.lo[s] = lo
            a.ok[s] = 1
            f = c - <double>lo
            a.frac[s] = f
            # merge into this bin's (pixel, weight) list; a pixel seen before is one of
            # the last two entries, since sample positions only grow
            n = _merge(a.m_idx + 2 * g * o, a.m_w + 2 * g * o, n, lo, (1.0 - f) * scale)
            n = _merge(a.m_idx + 2 * g * o, a.m_w + 2 * g * o, n, a.hi[s], f * scale)
        a.m_n[o] = n


cdef inline Py_ssize_t _merge(Py_ssize_t *idx, double *w, Py_ssize_t n, Py_ssize_t p,
                              double weight) noexcept nogil:
    if n > 0 and idx[n - 1] == p:
        w[n - 1] += weight
        return n
    if n > 1 and idx[n - 2] == p:
        w[n - 2] += weight
        return n
    idx[n] = p
    w[n] = weight
    return n + 1


cdef void _align_tables(const floating_t *roi, floating_t scale, bint aligned,
                        Py_ssize_t sampling_ratio, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t OH, Py_ssize_t OW, Axis *ay, Axis *ax) noexcept nogil:
    """Sample tables of one RoI (ONNX RoiAlign / torchvision roi_align geometry)."""
    cdef floating_t off = <floating_t>0.5 if aligned else <floating_t>0
    cdef floating_t start_w = roi[0] * scale - off
    cdef floating_t start_h = roi[1] * scale - off
    cdef floating_t end_w = roi[2] * scale - off
    cdef floating_t end_h = roi[3] * scale - off
    cdef floating_t roi_w = end_w - start_w
    cdef floating_t roi_h = end_h - start_h
    if not aligned:  # ONNX output_half_pixel / torchvision aligned=False: at least 1x1
        if roi_w < 1:
            roi_w = 1
        if roi_h < 1:
            roi_h = 1
    cdef floating_t bin_h = roi_h / <floating_t>OH
    cdef floating_t bin_w = roi_w / <floating_t>OW
    cdef Py_ssize_t gh, gw
    if sampling_ratio > 0:
        gh = gw = sampling_ratio
    else:
        gh = <Py_ssize_t>ceil(roi_h / <floating_t>OH)
        gw = <Py_ssize_t>ceil(roi_w / <floating_t>OW)
    _axis_alloc(ay, OH, gh)
    _axis_alloc(ax, OW, gw)
    cdef Py_ssize_t count = gh * gw if gh * gw > 1 else 1
    _axis_samples(ay, start_h, bin_h, H, OH, 1.0 / <double>count)
    _axis_samples(ax, start_w, bin_w, W, OW, 1.0)


cdef inline void _corners(Axis *ay, Axis *ax, Py_ssize_t sy, Py_ssize_t sx, Py_ssize_t W,
                          Py_ssize_t *pos, double *w) noexcept nogil:
    """The four (pixel, weight) corners of sample (sy, sx) in onnxruntime's order; a
    sample outside the map reads pixel 0 with weight 0, as onnxruntime does."""
    cdef double ly, lx
    if not (ay.ok[sy] and ax.ok[sx]):
        pos[0] = pos[1] = pos[2] = pos[3] = 0
        w[0] = w[1] = w[2] = w[3] = 0
        return
    ly = ay.frac[sy]
    lx = ax.frac[sx]
    pos[0] = ay.lo[sy] * W + ax.lo[sx]
    pos[1] = ay.lo[sy] * W + ax.hi[sx]
    pos[2] = ay.hi[sy] * W + ax.lo[sx]
    pos[3] = ay.hi[sy] * W + ax.hi[sx]
    w[0] = (1.0 - ly) * (1.0 - lx)
    w[1] = (1.0 - ly) * lx
    w[2] = ly * (1.0 - lx)
    w[3] = ly * lx


cdef inline Py_ssize_t _at(Py_ssize_t k, Py_ssize_t c, Py_ssize_t p, Py_ssize_t C,
                           Py_ssize_t P, bint channels_last) noexcept nogil:
    """Offset of (k, c, bin p) in a (K, C, P) or, channels-last, (K, P, C) array."""
    return k * C * P + (p * C + c if channels_last else c * P + p)


cdef inline void _zero_rows(floating_t *dst, Py_ssize_t rows, Py_ssize_t n,
                           Py_ssize_t ld) noexcept nogil:
    """dst[r*ld + i] = 0 for r < rows, i < n (one memset when the rows are contiguous)."""
    cdef Py_ssize_t r
    if n == ld:
        memset(dst, 0, rows * n * sizeof(floating_t))
        return
    for r in range(rows):
        memset(dst + r * ld, 0, n * sizeof(floating_t))


# Channel-block transposes and one bin of RoI align's average and of its gradient, at the
# instruction set pool.pyx has chosen.
cdef cs_transpose_t _transpose4 = cs_transpose_select(0, 4)
cdef cs_transpose_t _transpose8 = cs_transpose_select(0, 8)
cdef cs_taps_sum_f32_t _taps_sum_f32 = cs_taps_sum_f32_select(0)
cdef cs_taps_sum_f64_t _taps_sum_f64 = cs_taps_sum_f64_select(0)
cdef cs_taps_spread_f32_t _taps_spread_f32 = cs_taps_spread_f32_select(0)
cdef cs_taps_spread_f64_t _taps_spread_f64 = cs_taps_spread_f64_select(0)


cdef void _follow_simd_level():
    global _transpose4, _transpose8, _taps_sum_f32, _taps_sum_f64
    global _taps_spread_f32, _taps_spread_f64
    cdef int level = get_simd_level()
    _transpose4 = cs_transpose_select(level, 4)
    _transpose8 = cs_transpose_select(level, 8)
    _taps_sum_f32 = cs_taps_sum_f32_select(level)
    _taps_sum_f64 = cs_taps_sum_f64_select(level)
    _taps_spread_f32 = cs_taps_spread_f32_select(level)
    _taps_spread_f64 = cs_taps_spread_f64_select(level)


cdef inline void _to_cl(floating_t *buf, const floating_t *src, Py_ssize_t cb,
                        Py_ssize_t plane, Py_ssize_t ld, Py_ssize_t n=-1) noexcept nogil:
    """The first n elements (all when n < 0) of cb planes into buf, channels-last."""
    if n < 0:
        n = plane
    if floating_t is float:
        _transpose4(buf, ld, src, plane, cb, n)
    else:
        _transpose8(buf, ld, src, plane, cb, n)


# Channels-first RoI align transposes the rows its RoIs read as they come when an image has
# fewer RoIs than this, else whole planes: one RoI of (1, 64, 32, 32) 142 -> 44 us.
cdef Py_ssize_t LAZY_ROWS_MAX_ROIS = 16


cdef void _load_rows(floating_t *buf, const floating_t *planes, Py_ssize_t cw,
                     Py_ssize_t H, Py_ssize_t W, Py_ssize_t cb, const Axis *ay,
                     const Axis *ax, Py_ssize_t OH, Py_ssize_t OW,
                     char *loaded) noexcept nogil:
    """Into buf (channels-last, cb apart), the input rows one RoI's samples read that
    are not there yet (loaded[r]), a run of rows per transpose: a small RoI costs its
    rows, not the planes. A sample outside the map reads pixel 0 (see _corners)."""
    cdef Py_ssize_t s, r, r0 = H, r1 = -1, run
    cdef bint outside = False
    for s in range(OH * ay.g):
        if ay.ok[s]:
            r0 = min(r0, ay.lo[s])
            r1 = max(r1, ay.hi[s])
        else:
            outside = True
    for s in range(OW * ax.g):
        if not ax.ok[s]:
            outside = True
    if outside and not loaded[0]:
        _to_cl(buf, planes, cw, H * W, cb, W)
        loaded[0] = 1
    r = r0
    while r <= r1:
        if loaded[r]:
            r = r + 1
            continue
        run = 0
        while r + run <= r1 and not loaded[r + run]:
            loaded[r + run] = 1
            run = run + 1
        _to_cl(buf + r * W * cb, planes + r * W, cw, H * W, cb, run * W)
        r = r + run


cdef inline void _from_cl(floating_t *dst, const floating_t *buf, Py_ssize_t cb,
                          Py_ssize_t plane, Py_ssize_t ld) noexcept nogil:
    if floating_t is float:
        _transpose4(dst, plane, buf, ld, plane, cb)
    else:
        _transpose8(dst, plane, buf, ld, plane, cb)


cdef inline Py_ssize_t *_tap_room(Py_ssize_t *old, Py_ssize_t cap,
                                  const floating_t *weights) noexcept nogil:
    """Room for cap taps of _bin_taps: cap offsets, then cap weights of weights' type
    (the old room, old, freed)."""
    free(old)
    return <Py_ssize_t *>malloc(cap * (sizeof(Py_ssize_t) + sizeof(floating_t)))


cdef inline Py_ssize_t _bin_taps(const Axis *ay, const Axis *ax, Py_ssize_t ph, Py_ssize_t pw,
                                 Py_ssize_t W, Py_ssize_t ld, Py_ssize_t *off,
                                 floating_t *w) noexcept nogil:
    """The merged taps of average bin (ph, pw), rows then columns: their offsets in a
    block of leading dimension ld and their weights; returns how many (at most
    4 * ay.g * ax.g)."""
    cdef Py_ssize_t a, e, row, n = 0
    cdef double wy
    for a in range(ay.m_n[ph]):
        row = ay.m_idx[2 * ay.g * ph + a] * W
        wy = ay.m_w[2 * ay.g * ph + a]
        for e in range(ax.m_n[pw]):
            off[n] = (row + ax.m_idx[2 * ax.g * pw + e]) * ld
            w[n] = <floating_t>(wy * ax.m_w[2 * ax.g * pw + e])
            n += 1
    return n


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------

def roi_pool_forward(const floating_t[:, :, :, ::1] x,      # IN  (N, C, H, W) or (N, H, W, C)
                     const floating_t[:, ::1] rois,          # IN  (K, 4)
                     const long long[::1] batch_idx,         # IN  (K,)
                     const Py_ssize_t[::1] order,            # IN  (K,) RoIs by image
                     floating_t[:, :, :, ::1] out,           # OUT (K, C, OH, OW) or (K, OH, OW, C)
                     int[:, :, :, ::1] argmax,               # OUT like out
                     tuple out_size, double spatial_scale, Py_ssize_t cb, bint channels_last,
                     int num_threads):
    """Max over each bin; argmax is the pixel's flat index h*W + w in its plane, -1 for
    an empty bin (whose output is 0)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[3 if channels_last else 1]
    cdef Py_ssize_t H = x.shape[1 if channels_last else 2], W = x.shape[2 if channels_last else 3]
    cdef Py_ssize_t K = out.shape[0], OH = out_size[0], OW = out_size[1]
    cdef Py_ssize_t HW = H * W, P = OH * OW, ld = C if channels_last else cb, at
    cdef Py_ssize_t nb = (C + cb - 1) // cb
    cdef Py_ssize_t n_items = nb * K
    cdef Py_ssize_t n_tasks = min(<Py_ssize_t>num_threads, n_items)
    cdef Py_ssize_t task, item, b, j, k, n, c0, cw, ph, pw, h, w, i, cur_b, cur_n
    cdef floating_t scale = <floating_t>spatial_scale
    cdef floating_t *buf
    cdef const floating_t *src
    cdef floating_t *m
    cdef int *arg
    cdef Py_ssize_t *hs
    cdef Py_ssize_t *ws
    cdef int first
    if n_items == 0:
        return
    _follow_simd_level()
    cdef floating_t *obase = &out[0, 0, 0, 0]
    cdef int *abase = &argmax[0, 0, 0, 0]
    for task in prange(n_tasks, nogil=True, schedule='static', num_threads=num_threads):
        buf = NULL if channels_last else <floating_t *>malloc(HW * cb * sizeof(floating_t))
        m = <floating_t *>malloc(cb * sizeof(floating_t))
        arg = <int *>malloc(cb * sizeof(int))
        hs = <Py_ssize_t *>malloc(2 * (OH + OW) * sizeof(Py_ssize_t))
        ws = hs + 2 * OH
        cur_b = -1
        cur_n = -1
        for item in range(task * n_items // n_tasks, (task + 1) * n_items // n_tasks):
            b = item // K
            j = item % K
            k = order[j]
            n = batch_idx[k]
            c0 = b * cb
            cw = min(cb, C - c0)
            if channels_last:
                src = &x[n, 0, 0, c0]
            elif b != cur_b or n != cur_n:
                _to_cl(buf, &x[n, c0, 0, 0], cw, HW, cb)
                src = buf
                cur_b = b
                cur_n = n
            _pool_bins(rois[k, 1], rois[k, 3], scale, H, OH, hs, hs + OH)
            _pool_bins(rois[k, 0], rois[k, 2], scale, W, OW, ws, ws + OW)
            for ph in range(OH):
                for pw in range(OW):
                    first = 1
                    for h in range(hs[ph], hs[OH + ph]):
                        for w in range(ws[pw], ws[OW + pw]):
                            if floating_t is float:
                                cs_argmax_f32(m, arg, src + (h * W + w) * ld, cw,
                                              <int>(h * W + w), first)
                            else:
                                cs_argmax_f64(m, arg, src + (h * W + w) * ld, cw,
                                              <int>(h * W + w), first)
                            first = 0
                    if first:  # empty bin
                        for i in range(cw):
                            m[i] = 0
                            arg[i] = -1
                    for i in range(cw):
                        at = _at(k, c0 + i, ph * OW + pw, C, P, channels_last)
                        obase[at] = m[i]
                        abase[at] = arg[i]
        free(hs)
        free(arg)
        free(m)
        free(buf)


def roi_pool_backward(const floating_t[:, :, :, ::1] grad_out,  # IN  (K, C, OH, OW) / (K, OH, OW, C)
                      const int[:, :, :, ::1] argmax,           # IN  like grad_out
                      const Py_ssize_t[::1] order,              # IN  (K,) RoIs by image
                      const Py_ssize_t[::1] starts,             # IN  (N+1,)
                      floating_t[:, :, :, ::1] grad_in,         # OUT (N, C, H, W) or (N, H, W, C)
                      tuple out_size, Py_ssize_t cb, bint channels_last, int num_threads):
    """grad_in[n, c].flat[argmax] += grad_out over the RoIs of image n, in RoI order.
    Work items are (image, channel block), one channel per block channels-first (a
    plane); each owns the elements it writes."""
    cdef Py_ssize_t N = grad_in.shape[0], C = grad_in.shape[3 if channels_last else 1]
    cdef Py_ssize_t H = grad_in.shape[1 if channels_last else 2]
    cdef Py_ssize_t W = grad_in.shape[2 if channels_last else 3]
    cdef Py_ssize_t HW = H * W, P = <Py_ssize_t>out_size[0] * <Py_ssize_t>out_size[1]
    cdef Py_ssize_t ld = C if channels_last else 1
    cdef Py_ssize_t item, n, b, c0, cw, i, j, k, p, q, at
    cdef Py_ssize_t nb
    cdef int t
    cdef floating_t *dst
    if not channels_last:
        cb = 1
    nb = (C + cb - 1) // cb
    if N * nb == 0:
        return
    _follow_simd_level()
    cdef const floating_t *gbase = &grad_out[0, 0, 0, 0] if grad_out.shape[0] else NULL
    cdef const int *abase = &argmax[0, 0, 0, 0] if argmax.shape[0] else NULL
    for item in prange(N * nb, nogil=True, schedule='static', num_threads=num_threads):
        n = item // nb
        b = item % nb
        c0 = b * cb
        cw = min(cb, C - c0)
        dst = &grad_in[n, 0, 0, c0] if channels_last else &grad_in[n, c0, 0, 0]
        _zero_rows(dst, HW, cw, ld)
        for j in range(starts[n], starts[n + 1]):
            k = order[j]
            for p in range(P):
                for i in range(cw):
                    at = _at(k, c0 + i, p, C, P, channels_last)
                    t = abase[at]
                    if t >= 0:
                        dst[t * ld + i] = dst[t * ld + i] + gbase[at]


def roi_align_forward(const floating_t[:, :, :, ::1] x,     # IN  (N, C, H, W) or (N, H, W, C)
                      const floating_t[:, ::1] rois,         # IN  (K, 4)
                      const long long[::1] batch_idx,        # IN  (K,)
                      const Py_ssize_t[::1] order,           # IN  (K,) RoIs by image
                      floating_t[:, :, :, ::1] out,          # OUT (K, C, OH, OW) or (K, OH, OW, C)
                      int[:, :, :, ::1] taps,                # OUT like out, max mode
                      tuple out_size, double spatial_scale, bint aligned,
                      Py_ssize_t sampling_ratio, bint max_mode, Py_ssize_t cb,
                      bint channels_last, int num_threads):
    """RoI align. avg: the mean of the bilinear samples of each bin (computed from the
    merged per-axis weights). max: the largest weighted corner term w*x over the bin's
    samples (ONNX's definition); taps records sample*4 + corner, -1 when there is none."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[3 if channels_last else 1]
    cdef Py_ssize_t H = x.shape[1 if channels_last else 2], W = x.shape[2 if channels_last else 3]
    cdef Py_ssize_t K = out.shape[0], OH = out_size[0], OW = out_size[1]
    cdef Py_ssize_t HW = H * W, P = OH * OW, ld = C if channels_last else cb
    cdef Py_ssize_t nb = (C + cb - 1) // cb
    cdef Py_ssize_t n_items = nb * K
    cdef Py_ssize_t n_tasks = min(<Py_ssize_t>num_threads, n_items)
    cdef Py_ssize_t task, item, b, j, k, n, c0, cw, ph, pw, i, e, iy, ix, sy, sx, q, at
    cdef Py_ssize_t cur_b, cur_n
    cdef floating_t scale = <floating_t>spatial_scale
    cdef floating_t *buf
    cdef char *loaded                       # rows of buf already transposed
    cdef const floating_t *src
    cdef floating_t *acc
    cdef int *arg
    cdef Py_ssize_t *pos
    cdef double *wts
    cdef Axis *ay
    cdef Axis *ax
    cdef int first
    cdef Py_ssize_t n_taps, cap              # a bin's taps, and room for them
    cdef Py_ssize_t *tap_off
    cdef floating_t *tap_w
    cdef floating_t *tile                    # channels-first avg: a RoI's bins, (P, cb)
    if n_items == 0:
        return
    _follow_simd_level()
    cdef floating_t *obase = &out[0, 0, 0, 0]
    cdef int *tbase = &taps[0, 0, 0, 0] if max_mode else NULL
    cdef floating_t *dst
    for task in prange(n_tasks, nogil=True, schedule='static', num_threads=num_threads):
        # pointers assigned here are private to the task (Cython shares anything that is
        # only read or address-taken inside prange)
        buf = NULL if channels_last else <floating_t *>malloc(HW * cb * sizeof(floating_t))
        loaded = <char *>malloc(H if H > 0 else 1)
        acc = <floating_t *>malloc(cb * sizeof(floating_t))
        arg = <int *>malloc(cb * sizeof(int))
        ay = <Axis *>malloc(2 * sizeof(Axis))
        ax = ay + 1
        pos = <Py_ssize_t *>malloc(4 * sizeof(Py_ssize_t))
        wts = <double *>malloc(4 * sizeof(double))
        cap = 0
        tap_off = NULL
        tap_w = NULL
        tile = NULL
        if not (channels_last or max_mode):
            tile = <floating_t *>malloc(P * cb * sizeof(floating_t))
        cur_b = -1
        cur_n = -1
        for item in range(task * n_items // n_tasks, (task + 1) * n_items // n_tasks):
            b = item // K
            j = item % K
            k = order[j]
            n = batch_idx[k]
            c0 = b * cb
            cw = min(cb, C - c0)
            if channels_last:
                src = &x[n, 0, 0, c0]
            elif b != cur_b or n != cur_n:
                # an image with many RoIs: its planes whole, in one stream (lazy rows
                # measured 10-20% slower with 256 RoIs per image); few: rows as needed
                e = j
                while e < K and e - j < LAZY_ROWS_MAX_ROIS and batch_idx[order[e]] == n:
                    e = e + 1
                if e - j >= LAZY_ROWS_MAX_ROIS:
                    _to_cl(buf, &x[n, c0, 0, 0], cw, HW, cb)
                    memset(loaded, 1, H)
                else:
                    memset(loaded, 0, H)
                src = buf
                cur_b = b
                cur_n = n
            _align_tables(&rois[k, 0], scale, aligned, sampling_ratio, H, W, OH, OW, ay, ax)
            if not channels_last:
                _load_rows(buf, &x[n, c0, 0, 0], cw, H, W, cb, ay, ax, OH, OW, loaded)
            if not max_mode and 4 * ay.g * ax.g > cap:
                cap = 4 * ay.g * ax.g
                tap_off = _tap_room(tap_off, cap, tap_w)
                tap_w = <floating_t *>(tap_off + cap)
            for ph in range(OH):
                for pw in range(OW):
                    if not max_mode:  # the merged taps of the bin, summed in registers
                        n_taps = _bin_taps(ay, ax, ph, pw, W, ld, tap_off, tap_w)
                        dst = (obase + _at(k, c0, ph * OW + pw, C, P, True) if channels_last
                               else tile + (ph * OW + pw) * cw)
                        if floating_t is float:
                            _taps_sum_f32(dst, src, tap_off, tap_w, n_taps, cw)
                        else:
                            _taps_sum_f64(dst, src, tap_off, tap_w, n_taps, cw)
                    else:
                        first = 1
                        for iy in range(ay.g):
                            sy = ph * ay.g + iy
                            for ix in range(ax.g):
                                sx = pw * ax.g + ix
                                _corners(ay, ax, sy, sx, W, pos, wts)
                                for q in range(4):
                                    if floating_t is float:
                                        cs_wargmax_f32(acc, arg, src + pos[q] * ld, cw,
                                                       <float>wts[q],
                                                       <int>((iy * ax.g + ix) * 4 + q), first)
                                    else:
                                        cs_wargmax_f64(acc, arg, src + pos[q] * ld, cw,
                                                       wts[q],
                                                       <int>((iy * ax.g + ix) * 4 + q), first)
                                    first = 0
                        if first:  # no samples: output 0
                            for i in range(cw):
                                acc[i] = 0
                                arg[i] = -1
                        for i in range(cw):
                            at = _at(k, c0 + i, ph * OW + pw, C, P, channels_last)
                            tbase[at] = arg[i]
                            obase[at] = acc[i]
            if tile != NULL:  # the RoI's cw planes of P bins, front to back
                _from_cl(obase + _at(k, c0, 0, C, P, False), tile, cw, P, cw)
            _axis_free(ay)
            _axis_free(ax)
        free(tile)
        free(tap_off)
        free(wts)
        free(pos)
        free(ay)
        free(arg)
        free(acc)
        free(buf)
        free(loaded)


def roi_align_backward(const floating_t[:, :, :, ::1] grad_out,  # IN  (K, C, OH, OW) / (K, OH, OW, C)
                       const floating_t[:, ::1] rois,            # IN  (K, 4)
                       const Py_ssize_t[::1] order,              # IN  (K,) RoIs by image
                       const Py_ssize_t[::1] starts,             # IN  (N+1,)
                       const int[:, :, :, ::1] taps,             # IN  like grad_out, max
                       floating_t[:, :, :, ::1] grad_in,         # OUT (N, C, H, W) or (N, H, W, C)
                       tuple out_size, double spatial_scale, bint aligned,
                       Py_ssize_t sampling_ratio, bint max_mode, Py_ssize_t cb,
                       bint channels_last, int num_threads):
    """Gradient of roi_align_forward: avg spreads grad/count over every sample's four
    corners (with the forward's merged weights); max gives w * grad to the winning
    corner of each output. Channels-first blocks add into a channels-last buffer that
    is copied out once; channels-last ones add into grad_in in place."""
    cdef Py_ssize_t N = grad_in.shape[0], C = grad_in.shape[3 if channels_last else 1]
    cdef Py_ssize_t H = grad_in.shape[1 if channels_last else 2]
    cdef Py_ssize_t W = grad_in.shape[2 if channels_last else 3]
    cdef Py_ssize_t OH = out_size[0], OW = out_size[1]
    cdef Py_ssize_t HW = H * W, P = OH * OW, ld = C if channels_last else cb
    cdef Py_ssize_t nb = (C + cb - 1) // cb
    cdef Py_ssize_t item, b, n, j, k, c0, cw, ph, pw, i, s, iy, ix, at
    cdef floating_t scale = <floating_t>spatial_scale
    cdef floating_t *buf
    cdef int t
    cdef Py_ssize_t *pos
    cdef double *wts
    cdef Axis *ay
    cdef Axis *ax
    cdef Py_ssize_t n_taps, cap              # a bin's taps, and room for them
    cdef Py_ssize_t *tap_off
    cdef floating_t *tap_w
    cdef floating_t *tile                    # channels-first avg: a RoI's gradient, (P, cb)
    cdef const floating_t *g
    if nb * N == 0:
        return
    _follow_simd_level()
    cdef const floating_t *gbase = &grad_out[0, 0, 0, 0] if grad_out.shape[0] else NULL
    cdef const int *tbase = &taps[0, 0, 0, 0] if max_mode and taps.shape[0] else NULL
    for item in prange(nb * N, nogil=True, schedule='static', num_threads=num_threads):
        b = item // N
        n = item % N
        c0 = b * cb
        cw = min(cb, C - c0)
        if channels_last:
            buf = &grad_in[n, 0, 0, c0]
        else:
            buf = <floating_t *>malloc(HW * cb * sizeof(floating_t))
        ay = <Axis *>malloc(2 * sizeof(Axis))
        ax = ay + 1
        pos = <Py_ssize_t *>malloc(4 * sizeof(Py_ssize_t))
        wts = <double *>malloc(4 * sizeof(double))
        cap = 0
        tap_off = NULL
        tap_w = NULL
        tile = NULL
        if not (channels_last or max_mode):
            tile = <floating_t *>malloc(P * cb * sizeof(floating_t))
        _zero_rows(buf, HW, cw, ld)
        for j in range(starts[n], starts[n + 1]):
            k = order[j]
            _align_tables(&rois[k, 0], scale, aligned, sampling_ratio, H, W, OH, OW, ay, ax)
            if not max_mode and 4 * ay.g * ax.g > cap:
                cap = 4 * ay.g * ax.g
                tap_off = _tap_room(tap_off, cap, tap_w)
                tap_w = <floating_t *>(tap_off + cap)
            if tile != NULL:  # the RoI's cw planes of P bins, as (P, cw)
                _to_cl(tile, gbase + _at(k, c0, 0, C, P, False), cw, P, cw)
            for ph in range(OH):
                for pw in range(OW):
                    if not max_mode:  # the merged taps of the bin, the gradient in registers
                        n_taps = _bin_taps(ay, ax, ph, pw, W, ld, tap_off, tap_w)
                        g = (gbase + _at(k, c0, ph * OW + pw, C, P, True) if channels_last
                             else tile + (ph * OW + pw) * cw)
                        if floating_t is float:
                            _taps_spread_f32(buf, g, tap_off, tap_w, n_taps, cw)
                        else:
                            _taps_spread_f64(buf, g, tap_off, tap_w, n_taps, cw)
                    else:
                        for i in range(cw):
                            at = _at(k, c0 + i, ph * OW + pw, C, P, channels_last)
                            t = tbase[at]
                            if t < 0:
                                continue
                            s = t // 4
                            iy = s // ax.g
                            ix = s % ax.g
                            _corners(ay, ax, ph * ay.g + iy, pw * ax.g + ix, W, pos, wts)
                            buf[pos[t % 4] * ld + i] += <floating_t>wts[t % 4] * gbase[at]
            _axis_free(ay)
            _axis_free(ax)
        if not channels_last:
            _from_cl(&grad_in[n, c0, 0, 0], buf, cw, HW, cb)
            free(buf)
        free(tile)
        free(tap_off)
        free(wts)
        free(pos)
        free(ay)
