/* Narrow channels-first float32 planes (at most 16 columns): one 16-lane AVX-512 vector
 * holds a whole input row, so a plane pools with no transpose at all. Each output row
 * reduces its window's input rows vertically in one register; then one two-source
 * permute per tap gathers that tap of every output column of two output rows at once
 * (one row where two do not fit in 16 lanes), masked where a window has fewer taps.
 * This is the separable order of the plane blocks (rows, then columns, each in scan
 * order), with the same max (cp_max) and the same divisions, so it gives their bits.
 * The same permutes serve the max with its argmax (taps in scan order, as cl_row_argmax)
 * and, with cover tables for window tables, the gradient of window sums.
 * Compiled only where the x86 dispatch exists; cp_narrow_available() says whether it is. */
#ifndef CPOOL_CL_NARROW_H
#define CPOOL_CL_NARROW_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cp_common.h"

#define CP_NARROW_LANES 16
/* Planes ahead of use that the argmax prefetches: its loads feed long chains of
 * compare-and-take and must not wait (AdaptiveMaxPool2d(7) on (32, 512, 14, 14), layer
 * forward: 1.39 -> 0.99 ms); the forward gained on 14 columns and lost on 12 and 13. */
#define CP_NARROW_AHEAD 4

/* The columns of one grid, for `rows` output rows per vector (2 when two rows of outputs
 * fit in one, else 1): lane r * n_out + j, output column j of the r-th row, takes as its
 * tap t lane idx[t][lane] of the two rows' vectors (input column c of row r is lane
 * 16 r + c); the lanes of mask[t] are those with a tap t. */
typedef struct {
    int32_t idx[CP_NARROW_LANES][CP_NARROW_LANES];
    int32_t tap[CP_NARROW_LANES][CP_NARROW_LANES];  /* the tap number there (argmax) */
    uint32_t mask[CP_NARROW_LANES];
    int n_taps, rows;
} cp_narrow_cols_t;

/* From a window table along W (cpool._geometry.window_table: for output o, the count
 * and then (input column, tap number) pairs), ts entries per output. */
static inline void cp_narrow_cols(cp_narrow_cols_t *c, const ptrdiff_t *tab, ptrdiff_t ts,
                                  ptrdiff_t n_out)
{
    memset(c, 0, sizeof *c);
    c->rows = 2 * n_out <= CP_NARROW_LANES ? 2 : 1;
    for (int r = 0; r < c->rows; ++r) {
        for (ptrdiff_t j = 0; j < n_out; ++j) {
            const ptrdiff_t *w = tab + j * ts;
            for (ptrdiff_t t = 0; t < w[0]; ++t) {
                c->idx[t][r * n_out + j] = (int32_t)(CP_NARROW_LANES * r + w[1 + 2 * t]);
                c->tap[t][r * n_out + j] = (int32_t)w[2 + 2 * t];
                c->mask[t] |= 1u << (r * n_out + j);
            }
            if (w[0] > c->n_taps) c->n_taps = (int)w[0];
        }
    }
}

/* A max over planes of at most CP_NARROW_LANES elements (a pyramid's finer levels),
 * `planes` planes per step, read as one run of two vectors: plane q's element e in lane
 * q * in_size + e of the two. The vertical step takes, for output row i and input column
 * c, tap t of the window's rows from lane q * in_size + row * W + c into lane
 * q * OH * W + i * W + c; the horizontal step takes tap t of output column j's window
 * from lane q * OH * W + i * W + col into lane q * out_size + i * OW + j. mask: the
 * lanes with a tap t. */
typedef struct {
    int32_t v_idx[CP_NARROW_LANES][CP_NARROW_LANES], h_idx[CP_NARROW_LANES][CP_NARROW_LANES];
    uint32_t v_mask[CP_NARROW_LANES], h_mask[CP_NARROW_LANES];
    int v_taps, h_taps, planes;
    ptrdiff_t in_size, out_size;
} cp_narrow_flat_t;

/* True when cp_narrow_flat takes the grid: H x W input planes, OH x OW output planes,
 * and OH x W between the steps, each at most CP_NARROW_LANES elements. */
static inline int cp_narrow_flat_fits(ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW)
{
    return H * W <= CP_NARROW_LANES && OH * W <= CP_NARROW_LANES
           && OH * OW <= CP_NARROW_LANES;
}

/* The tables of cp_narrow_flat_t from window tables along H (th entries per output row)
 * and W (tw entries per output column), as cpool._geometry.window_table gives them. */
static inline void cp_narrow_flat(cp_narrow_flat_t *f, ptrdiff_t H, ptrdiff_t W,
                                  const ptrdiff_t *wh, ptrdiff_t th, ptrdiff_t OH,
                                  const ptrdiff_t *ww, ptrdiff_t tw, ptrdiff_t OW)
{
    memset(f, 0, sizeof *f);
    const ptrdiff_t mid = OH * W;
    f->in_size = H * W;
    f->out_size = OH * OW;
    f->planes = (int)(2 * CP_NARROW_LANES / f->in_size);
    if (f->planes > CP_NARROW_LANES / mid) f->planes = (int)(CP_NARROW_LANES / mid);
    if (f->planes > CP_NARROW_LANES / f->out_size)
        f->planes = (int)(CP_NARROW_LANES / f->out_size);
    for (int q = 0; q < f->planes; ++q)
        for (ptrdiff_t i = 0; i < OH; ++i) {
            const ptrdiff_t *w = wh + i * th;
            for (ptrdiff_t t = 0; t < w[0]; ++t)
                for (ptrdiff_t c = 0; c < W; ++c) {
                    const ptrdiff_t lane = q * mid + i * W + c;
                    f->v_idx[t][lane] = (int32_t)(q * f->in_size + w[1 + 2 * t] * W + c);
                    f->v_mask[t] |= 1u << lane;
                }
            if (w[0] > f->v_taps) f->v_taps = (int)w[0];
            for (ptrdiff_t j = 0; j < OW; ++j) {
                const ptrdiff_t *u = ww + j * tw;
                for (ptrdiff_t t = 0; t < u[0]; ++t) {
                    const ptrdiff_t lane = q * f->out_size + i * OW + j;
                    f->h_idx[t][lane] = (int32_t)(q * mid + i * W + u[1 + 2 * t]);
                    f->h_mask[t] |= 1u << lane;
                }
                if (u[0] > f->h_taps) f->h_taps = (int)u[0];
            }
        }
}

#if CP_HAVE_X86_DISPATCH
#include <immintrin.h>

static inline int cp_narrow_available(void)
{
    return __builtin_cpu_supports("avx512f");
}

/* Max in cp_max's terms (max_impl.h): a later value replaces the running max when larger
 * (maxps(v, m) is v > m ? v : m), and a NaN among the later values makes the lane the
 * all-ones NaN; a NaN first value stays. The NaN lanes are collected on the side so that
 * the chain of maxima is one instruction per value. */
#define CP_NARROW_ALL_ONES _mm512_castsi512_ps(_mm512_set1_epi32(-1))

/* The input rows under one output row's window (w: its entry of the window table along
 * H; rows `stride` apart), reduced vertically in scan order; `empty` when the window has
 * no rows. Rows of CP_NARROW_LANES are loaded whole: a load of a row just stored whole
 * takes it from the store, which a masked load may not. */
static inline __attribute__((target("avx512f"), always_inline)) __m512 cp_narrow_rows(
    const float *x, ptrdiff_t stride, const ptrdiff_t *w, __mmask16 in_lanes, __m512 empty,
    const int is_max)
{
    const ptrdiff_t W = stride;
    if (w[0] == 0) return empty;
    __m512 v = W == CP_NARROW_LANES ? _mm512_loadu_ps(x + w[1] * W)
                                    : _mm512_maskz_loadu_ps(in_lanes, x + w[1] * W);
    __mmask16 nan = 0;
    for (ptrdiff_t e = 1; e < w[0]; ++e) {
        __m512 r = W == CP_NARROW_LANES ? _mm512_loadu_ps(x + w[1 + 2 * e] * W)
                                        : _mm512_maskz_loadu_ps(in_lanes, x + w[1 + 2 * e] * W);
        if (is_max) {
            v = _mm512_max_ps(r, v);
            nan |= _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q);
        } else {
            v = _mm512_add_ps(v, r);
        }
    }
    return _mm512_mask_mov_ps(v, nan, CP_NARROW_ALL_ONES);
}

/* Two planes: x and x + in_size (H rows of W <= 16, `stride` apart) into out and out +
 * out_size (OH x OW each, OW <= 16); in_size = out_size = 0 for one plane. The two chains of maxima or
 * sums are independent, so each hides the other's latency. cols->rows output rows per
 * vector (they lie one after another in out). wh: the window table along H (th entries
 * per output row); cols: from cp_narrow_cols. is_max, or else sums divided by div (OH x
 * OW; NULL: not divided). A window with no tap gives -inf (max) or 0 / its divisor, as
 * the plane blocks do. */
static inline __attribute__((target("avx512f"), always_inline)) void cp_narrow_plane(
    float *out, const float *x, ptrdiff_t in_size, ptrdiff_t out_size, ptrdiff_t W,
    ptrdiff_t OH, ptrdiff_t OW, const ptrdiff_t *wh, ptrdiff_t th, const cp_narrow_cols_t *cols,
    const float *div, const int is_max, ptrdiff_t stride)
{
    const __mmask16 in_lanes = (__mmask16)((1u << W) - 1);
    const __m512 empty = _mm512_set1_ps(is_max ? -INFINITY : 0.0f);
    const int n_taps = cols->n_taps;
    const float *y = x + in_size;
    float *out_y = out + out_size;
    __m512i idx[CP_NARROW_LANES];
    for (int t = 0; t < n_taps; ++t) idx[t] = _mm512_loadu_si512(cols->idx[t]);
    for (ptrdiff_t i = 0; i < OH; i += cols->rows) {
        ptrdiff_t n_rows = OH - i < cols->rows ? OH - i : cols->rows;
        __mmask16 lanes = (__mmask16)((1u << (n_rows * OW)) - 1);
        const ptrdiff_t *w0 = wh + i * th, *w1 = n_rows < 2 ? w0 : wh + (i + 1) * th;
        __m512 a0 = cp_narrow_rows(x, stride, w0, in_lanes, empty, is_max);
        __m512 b0 = cp_narrow_rows(y, stride, w0, in_lanes, empty, is_max);
        __m512 a1 = n_rows < 2 ? a0 : cp_narrow_rows(x, stride, w1, in_lanes, empty, is_max);
        __m512 b1 = n_rows < 2 ? b0 : cp_narrow_rows(y, stride, w1, in_lanes, empty, is_max);
        __m512 oa = empty, ob = empty;
        if (n_taps > 0) {
            oa = _mm512_mask_mov_ps(empty, (__mmask16)cols->mask[0],
                                    _mm512_permutex2var_ps(a0, idx[0], a1));
            ob = _mm512_mask_mov_ps(empty, (__mmask16)cols->mask[0],
                                    _mm512_permutex2var_ps(b0, idx[0], b1));
        }
        __mmask16 nan_a = 0, nan_b = 0;
        for (int t = 1; t < n_taps; ++t) {
            __m512 ta = _mm512_permutex2var_ps(a0, idx[t], a1);
            __m512 tb = _mm512_permutex2var_ps(b0, idx[t], b1);
            __mmask16 m = (__mmask16)cols->mask[t];
            if (is_max) {
                oa = _mm512_mask_max_ps(oa, m, ta, oa);
                ob = _mm512_mask_max_ps(ob, m, tb, ob);
                nan_a |= _mm512_mask_cmp_ps_mask(m, ta, ta, _CMP_UNORD_Q);
                nan_b |= _mm512_mask_cmp_ps_mask(m, tb, tb, _CMP_UNORD_Q);
            } else {
                oa = _mm512_mask_add_ps(oa, m, oa, ta);
                ob = _mm512_mask_add_ps(ob, m, ob, tb);
            }
        }
        oa = _mm512_mask_mov_ps(oa, nan_a, CP_NARROW_ALL_ONES);
        ob = _mm512_mask_mov_ps(ob, nan_b, CP_NARROW_ALL_ONES);
        if (!is_max && div) {
            __m512 d = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), lanes, div + i * OW);
            oa = _mm512_div_ps(oa, d);
            ob = _mm512_div_ps(ob, d);
        }
        _mm512_mask_storeu_ps(out + i * OW, lanes, oa);
        _mm512_mask_storeu_ps(out_y + i * OW, lanes, ob);
    }
}
#undef CP_NARROW_ALL_ONES

/* The rows of one window of two planes (x and y, as cp_narrow_rows) reduced in scan
 * order, *a from x and *b from y, both in one loop: max by a plain maxps chain, whose
 * rows' sum is added to *sum (NaN if any row holds a NaN, or an infinity of each sign:
 * cp_narrow_plane2's test), or sum. */
static inline __attribute__((target("avx512f"), always_inline)) void cp_narrow_rows2(
    const float *x, const float *y, ptrdiff_t W, const ptrdiff_t *w, __mmask16 in_lanes,
    __m512 empty, __m512 *a, __m512 *b, __m512 *sum, const int is_max)
{
    if (w[0] == 0) {
        *a = *b = empty;
        return;
    }
    __m512 va = _mm512_maskz_loadu_ps(in_lanes, x + w[1] * W);
    __m512 vb = _mm512_maskz_loadu_ps(in_lanes, y + w[1] * W);
    __m512 sa = va, sb = vb;
    for (ptrdiff_t e = 1; e < w[0]; ++e) {
        const ptrdiff_t at = w[1 + 2 * e] * W;
        __m512 ra = _mm512_maskz_loadu_ps(in_lanes, x + at);
        __m512 rb = _mm512_maskz_loadu_ps(in_lanes, y + at);
        if (is_max) {
            va = _mm512_max_ps(ra, va);
            vb = _mm512_max_ps(rb, vb);
            sa = _mm512_add_ps(sa, ra);
            sb = _mm512_add_ps(sb, rb);
        } else {
            va = _mm512_add_ps(va, ra);
            vb = _mm512_add_ps(vb, rb);
        }
    }
    *a = va;
    *b = vb;
    if (is_max) *sum = _mm512_add_ps(*sum, _mm512_add_ps(sa, sb));
}

/* cp_narrow_plane's forward for two planes with both planes' rows in one loop and the
 * column permutes loaded once (idx, from cols): the same maxps or adds and divisions in
 * the same order, so the same bits. The max has no NaN bookkeeping (a third of its
 * instructions): it returns nonzero, its output to be redone by cp_narrow_plane, when
 * the planes' rows may hold a NaN. */
static inline __attribute__((target("avx512f"), always_inline)) int cp_narrow_plane2(
    float *out, const float *x, ptrdiff_t in_size, ptrdiff_t out_size, ptrdiff_t W,
    ptrdiff_t OH, ptrdiff_t OW, const ptrdiff_t *wh, ptrdiff_t th, const cp_narrow_cols_t *cols,
    const __m512i *idx, const float *div, const int is_max)
{
    const __mmask16 in_lanes = (__mmask16)((1u << W) - 1);
    const __m512 empty = _mm512_set1_ps(is_max ? -INFINITY : 0.0f);
    const int n_taps = cols->n_taps;
    const float *y = x + in_size;
    float *out_y = out + out_size;
    __m512 sum = _mm512_setzero_ps();
    for (ptrdiff_t i = 0; i < OH; i += cols->rows) {
        ptrdiff_t n_rows = OH - i < cols->rows ? OH - i : cols->rows;
        __mmask16 lanes = (__mmask16)((1u << (n_rows * OW)) - 1);
        __m512 a0, b0, a1, b1;
        cp_narrow_rows2(x, y, W, wh + i * th, in_lanes, empty, &a0, &b0, &sum, is_max);
        if (n_rows < 2) {
            a1 = a0;
            b1 = b0;
        } else {
            cp_narrow_rows2(x, y, W, wh + (i + 1) * th, in_lanes, empty, &a1, &b1, &sum,
                            is_max);
        }
        __m512 oa = empty, ob = empty;
        if (n_taps > 0) {
            oa = _mm512_mask_mov_ps(empty, (__mmask16)cols->mask[0],
                                    _mm512_permutex2var_ps(a0, idx[0], a1));
            ob = _mm512_mask_mov_ps(empty, (__mmask16)cols->mask[0],
                                    _mm512_permutex2var_ps(b0, idx[0], b1));
        }
        for (int t = 1; t < n_taps; ++t) {
            __mmask16 m = (__mmask16)cols->mask[t];
            __m512 ta = _mm512_permutex2var_ps(a0, idx[t], a1);
            __m512 tb = _mm512_permutex2var_ps(b0, idx[t], b1);
            if (is_max) {
                oa = _mm512_mask_max_ps(oa, m, ta, oa);
                ob = _mm512_mask_max_ps(ob, m, tb, ob);
            } else {
                oa = _mm512_mask_add_ps(oa, m, oa, ta);
                ob = _mm512_mask_add_ps(ob, m, ob, tb);
            }
        }
        if (!is_max && div) {
            __m512 d = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), lanes, div + i * OW);
            oa = _mm512_div_ps(oa, d);
            ob = _mm512_div_ps(ob, d);
        }
        _mm512_mask_storeu_ps(out + i * OW, lanes, oa);
        _mm512_mask_storeu_ps(out_y + i * OW, lanes, ob);
    }
    return is_max && _mm512_cmp_ps_mask(sum, sum, _CMP_UNORD_Q) != 0;
}

/* n_planes planes one after another in x (H x W each) and in out (OH x OW each), two at a
 * time; is_max a constant in each copy, so no test of it in the loops */
static __attribute__((target("avx512f"))) void cp_narrow_planes_f32(
    float *out, const float *x, ptrdiff_t n_planes, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,
    ptrdiff_t OW, const ptrdiff_t *wh, ptrdiff_t th, const cp_narrow_cols_t *cols,
    const float *div, int is_max)
{
    __m512i idx[CP_NARROW_LANES];
    for (int t = 0; t < cols->n_taps; ++t) idx[t] = _mm512_loadu_si512(cols->idx[t]);
    for (ptrdiff_t q = 0; q < n_planes; q += 2) {
        const ptrdiff_t in_size = q + 1 < n_planes ? H * W : 0;  /* a last odd plane twice */
        const ptrdiff_t out_size = q + 1 < n_planes ? OH * OW : 0;
        float *o = out + q * OH * OW;
        const float *p = x + q * H * W;
        if (!is_max)
            cp_narrow_plane2(o, p, in_size, out_size, W, OH, OW, wh, th, cols, idx, div, 0);
        else if (cp_narrow_plane2(o, p, in_size, out_size, W, OH, OW, wh, th, cols, idx, div, 1))
            cp_narrow_plane(o, p, in_size, out_size, W, OH, OW, wh, th, cols, div, 1, W);
    }
}

/* The max of n_planes planes of at most CP_NARROW_LANES elements, one after another in
 * x (H x W each) and out (OH x OW each): f->planes planes per step, loaded as one run,
 * then a permute per tap along H and along W, in cp_narrow_plane's order (the same
 * bits). A step whose planes hold a NaN is redone by cp_narrow_plane for its NaN rules
 * (wh, th, cols: its tables, as for cp_narrow_planes_f32). */
static __attribute__((target("avx512f"))) void cp_narrow_flat_max_planes_f32(
    float *out, const float *x, ptrdiff_t n_planes, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,
    ptrdiff_t OW, const cp_narrow_flat_t *f, const ptrdiff_t *wh, ptrdiff_t th,
    const cp_narrow_cols_t *cols)
{
    const ptrdiff_t n_in = f->in_size, n_out = f->out_size;
    const __m512 empty = _mm512_set1_ps(-INFINITY);
    __m512i v_idx[CP_NARROW_LANES], h_idx[CP_NARROW_LANES];
    for (int t = 0; t < f->v_taps; ++t) v_idx[t] = _mm512_loadu_si512(f->v_idx[t]);
    for (int t = 0; t < f->h_taps; ++t) h_idx[t] = _mm512_loadu_si512(f->h_idx[t]);
    for (ptrdiff_t q = 0; q < n_planes; q += f->planes) {
        const ptrdiff_t n = n_planes - q < f->planes ? n_planes - q : f->planes;
        const ptrdiff_t run = n * n_in;  /* at most 2 * CP_NARROW_LANES */
        const __mmask16 lo = (__mmask16)(run >= CP_NARROW_LANES ? 0xFFFFu : (1u << run) - 1);
        const __mmask16 hi =
            (__mmask16)(run > CP_NARROW_LANES ? (1u << (run - CP_NARROW_LANES)) - 1 : 0);
        const float *p = x + q * n_in;
        __m512 a = _mm512_maskz_loadu_ps(lo, p);
        __m512 b = _mm512_maskz_loadu_ps(hi, p + CP_NARROW_LANES);
        if (_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q)) {
            for (ptrdiff_t r = 0; r < n; ++r)
                cp_narrow_plane(out + (q + r) * n_out, p + r * n_in, 0, 0, W, OH, OW, wh, th,
                                cols, NULL, 1, W);
            continue;
        }
        __m512 v = empty, o = empty;
        if (f->v_taps > 0)
            v = _mm512_mask_mov_ps(empty, (__mmask16)f->v_mask[0],
                                   _mm512_permutex2var_ps(a, v_idx[0], b));
        for (int t = 1; t < f->v_taps; ++t)
            v = _mm512_mask_max_ps(v, (__mmask16)f->v_mask[t],
                                   _mm512_permutex2var_ps(a, v_idx[t], b), v);
        if (f->h_taps > 0)
            o = _mm512_mask_mov_ps(empty, (__mmask16)f->h_mask[0],
                                   _mm512_permutexvar_ps(h_idx[0], v));
        for (int t = 1; t < f->h_taps; ++t)
            o = _mm512_mask_max_ps(o, (__mmask16)f->h_mask[t],
                                   _mm512_permutexvar_ps(h_idx[t], v), o);
        _mm512_mask_storeu_ps(out + q * n_out, (__mmask16)((1u << (n * n_out)) - 1), o);
    }
}

/* One plane's max and its within-window argmax (the layers' taps), as cl_row_argmax gives
 * them: taps visited in scan order (window rows, then each row's taps), one replacing the
 * running max when larger or NaN (ties keep the first, the last NaN wins, with its
 * payload), the first tap taken whatever it holds; a window without taps gives -inf and
 * tap 0. Tap number (t_h * KW + t_w). taps: OH x OW elements of tap_bytes (1, 4 or 8)
 * each; the rest as cp_narrow_plane, for one plane. */
static inline __attribute__((target("avx512f"), always_inline)) void cp_narrow_argmax_plane(
    float *CP_RESTRICT out, char *CP_RESTRICT taps, const int tap_bytes,
    const float *CP_RESTRICT x, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, const ptrdiff_t *wh,
    ptrdiff_t th, ptrdiff_t KW, const cp_narrow_cols_t *cols, const int n_planes,
    ptrdiff_t H)
{
    /* n_planes (1 or 2, a constant) planes in lockstep, one after another in out, taps
     * and x: each tap's compare-and-take waits on the one before, so two independent
     * chains keep the core busy */
    const ptrdiff_t in_size = H * W, out_size = OH * OW;
    const __mmask16 in_lanes = (__mmask16)((1u << W) - 1);
    const int n_taps = cols->n_taps;
    __m512i idx[CP_NARROW_LANES], tap[CP_NARROW_LANES];
    for (int t = 0; t < n_taps; ++t) {
        idx[t] = _mm512_loadu_si512(cols->idx[t]);
        tap[t] = _mm512_loadu_si512(cols->tap[t]);
    }
    for (ptrdiff_t i = 0; i < OH; i += cols->rows) {
        const int pair = OH - i > 1 && cols->rows == 2;
        const __mmask16 lanes = (__mmask16)((1u << ((1 + pair) * OW)) - 1);
        const __mmask16 half0 = (__mmask16)((1u << OW) - 1), half1 = lanes & (__mmask16)~half0;
        const ptrdiff_t *w0 = wh + i * th, *w1 = pair ? wh + (i + 1) * th : w0;
        const ptrdiff_t n_e = w0[0] > w1[0] ? w0[0] : w1[0];
        __m512 m[2];
        __m512i key[2];
        __mmask16 fresh = lanes;
        for (int q = 0; q < n_planes; ++q) {
            m[q] = _mm512_set1_ps(-INFINITY);
            key[q] = _mm512_setzero_si512();
        }
        for (ptrdiff_t e = 0; e < n_e; ++e) {
            const int in0 = e < w0[0], in1 = pair && e < w1[0];
            const __mmask16 on = (in0 ? half0 : 0) | (in1 ? half1 : 0);
            __m512 v0[2], v1[2];
            for (int q = 0; q < n_planes; ++q) {
                const float *p = x + q * in_size;
                v0[q] = in0 ? _mm512_maskz_loadu_ps(in_lanes, p + w0[1 + 2 * e] * W)
                            : _mm512_setzero_ps();
                v1[q] = in1 ? _mm512_maskz_loadu_ps(in_lanes, p + w1[1 + 2 * e] * W) : v0[q];
            }
            __m512i row_tap = _mm512_mask_blend_epi32(
                half1, _mm512_set1_epi32(in0 ? (int)(w0[2 + 2 * e] * KW) : 0),
                _mm512_set1_epi32(in1 ? (int)(w1[2 + 2 * e] * KW) : 0));
            for (int t = 0; t < n_taps; ++t) {
                __mmask16 mt = (__mmask16)cols->mask[t] & on;
                __m512i k = _mm512_add_epi32(row_tap, tap[t]);
                for (int q = 0; q < n_planes; ++q) {
                    __m512 v = _mm512_permutex2var_ps(v0[q], idx[t], v1[q]);
                    __mmask16 take = _mm512_mask_cmp_ps_mask(mt, v, m[q], _CMP_GT_OQ)
                                     | _mm512_mask_cmp_ps_mask(mt, v, v, _CMP_UNORD_Q)
                                     | (fresh & mt);
                    m[q] = _mm512_mask_mov_ps(m[q], take, v);
                    key[q] = _mm512_mask_mov_epi32(key[q], take, k);
                }
                fresh &= (__mmask16)~mt;
            }
        }
        for (int q = 0; q < n_planes; ++q) {
            _mm512_mask_storeu_ps(out + q * out_size + i * OW, lanes, m[q]);
            char *dst = taps + (q * out_size + i * OW) * tap_bytes;
            if (tap_bytes == 1) {
                _mm512_mask_cvtepi32_storeu_epi8(dst, lanes, key[q]);
            } else if (tap_bytes == 4) {
                _mm512_mask_storeu_epi32(dst, lanes, key[q]);
            } else {
                _mm512_mask_storeu_epi64(dst, (__mmask8)lanes,
                                         _mm512_cvtepi32_epi64(_mm512_castsi512_si256(key[q])));
                _mm512_mask_storeu_epi64(
                    dst + 64, (__mmask8)(lanes >> 8),
                    _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(key[q], 1)));
            }
        }
    }
}

/* n_planes planes of cp_narrow_argmax_plane, one after another in x, out and taps, two
 * at a time */
static __attribute__((target("avx512f"))) void cp_narrow_argmax_planes_f32(
    float *out, void *taps, int tap_bytes, const float *x, ptrdiff_t n_planes, ptrdiff_t H,
    ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, const ptrdiff_t *wh, ptrdiff_t th, ptrdiff_t KW,
    const cp_narrow_cols_t *cols)
{
    for (ptrdiff_t q = 0; q < n_planes; q += 2) {
        if (q + CP_NARROW_AHEAD + 2 <= n_planes)
            cp_prefetch_span(x + (q + CP_NARROW_AHEAD) * H * W,
                             2 * H * W * (ptrdiff_t)sizeof(float));
        float *o = out + q * OH * OW;
        char *k = (char *)taps + q * OH * OW * tap_bytes;
        const float *p = x + q * H * W;
        const int two = q + 1 < n_planes;
#define CP_ARGMAX_CALL(B) \
        (two ? cp_narrow_argmax_plane(o, k, B, p, W, OH, OW, wh, th, KW, cols, 2, H) \
             : cp_narrow_argmax_plane(o, k, B, p, W, OH, OW, wh, th, KW, cols, 1, H))
        if (tap_bytes == 1)
            CP_ARGMAX_CALL(1);
        else if (tap_bytes == 4)
            CP_ARGMAX_CALL(4);
        else
            CP_ARGMAX_CALL(8);
#undef CP_ARGMAX_CALL
    }
}

/* The gradient of window sums over n_planes planes, the transpose of cp_narrow_plane's
 * sum: g (OH x OW each) divided by div (OH x OW; NULL: not divided) into `divided` (2 x
 * OH rows of CP_NARROW_LANES, scratch), then each input row of gin (H x W each) sums the rows of the output rows
 * covering it and spreads them along W, which is cp_narrow_plane's sum with cover tables
 * for window tables (ch along H; cols from the cover table along W). The plane blocks'
 * order (cl_row_finish, then cl_vreduce and cl_row_spread), so their bits. */
static __attribute__((target("avx512f"))) void cp_narrow_spread_planes_f32(
    float *gin, const float *g, ptrdiff_t n_planes, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,
    ptrdiff_t OW, const ptrdiff_t *ch, ptrdiff_t th, const cp_narrow_cols_t *cols,
    const float *div, float *divided)
{
    const __mmask16 out_lanes = (__mmask16)((1u << OW) - 1);
    for (ptrdiff_t q = 0; q < n_planes; q += 2) {
        const int two = q + 1 < n_planes;  /* two planes at a time, as the forward */
        const float *src = g + q * OH * OW;
        ptrdiff_t stride = OW;
        if (div) {  /* whole 16-lane rows: the loads take them straight from these stores */
            for (ptrdiff_t o = 0; o < (1 + two) * OH; ++o) {
                __m512 v = _mm512_maskz_loadu_ps(out_lanes, src + o * OW);
                __m512 d = _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), out_lanes,
                                                div + (o % OH) * OW);
                _mm512_storeu_ps(divided + o * CP_NARROW_LANES, _mm512_div_ps(v, d));
            }
            src = divided;
            stride = CP_NARROW_LANES;
        }
        cp_narrow_plane(gin + q * H * W, src, two ? OH * stride : 0, two ? H * W : 0, OW, H, W,
                        ch, th, cols, NULL, 0, stride);
    }
}
#else
static inline int cp_narrow_available(void) { return 0; }
static void cp_narrow_argmax_planes_f32(float *out, void *taps, int tap_bytes, const float *x,
                                        ptrdiff_t n_planes, ptrdiff_t H, ptrdiff_t W,
                                        ptrdiff_t OH, ptrdiff_t OW, const ptrdiff_t *wh,
                                        ptrdiff_t th, ptrdiff_t KW, const cp_narrow_cols_t *cols)
{
    (void)out; (void)taps; (void)tap_bytes; (void)x; (void)n_planes; (void)H; (void)W;
    (void)OH; (void)OW; (void)wh; (void)th; (void)KW; (void)cols;
}
static void cp_narrow_spread_planes_f32(float *gin, const float *g, ptrdiff_t n_planes,
                                        ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,
                                        const ptrdiff_t *ch, ptrdiff_t th,
                                        const cp_narrow_cols_t *cols, const float *div,
                                        float *divided)
{
    (void)gin; (void)g; (void)n_planes; (void)H; (void)W; (void)OH; (void)OW; (void)ch;
    (void)th; (void)cols; (void)div; (void)divided;
}
static void cp_narrow_flat_max_planes_f32(float *out, const float *x, ptrdiff_t n_planes,
                                          ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW,
                                          const cp_narrow_flat_t *f, const ptrdiff_t *wh,
                                          ptrdiff_t th, const cp_narrow_cols_t *cols)
{
    (void)out; (void)x; (void)n_planes; (void)H; (void)W; (void)OH; (void)OW; (void)f;
    (void)wh; (void)th; (void)cols;
}
static void cp_narrow_planes_f32(float *out, const float *x, ptrdiff_t n_planes, ptrdiff_t H,
                                 ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, const ptrdiff_t *wh,
                                 ptrdiff_t th, const cp_narrow_cols_t *cols, const float *div,
                                 int is_max)
{
    (void)out; (void)x; (void)n_planes; (void)H; (void)W; (void)OH; (void)OW; (void)wh;
    (void)th; (void)cols; (void)div; (void)is_max;
}
#endif

#endif /* CPOOL_CL_NARROW_H */
