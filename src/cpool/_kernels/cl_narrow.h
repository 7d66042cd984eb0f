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

/* n_planes planes one after another in x (H x W each) and in out (OH x OW each), two at a
 * time; is_max a constant in each copy, so no test of it in the loops */
static __attribute__((target("avx512f"))) void cp_narrow_planes_f32(
    float *out, const float *x, ptrdiff_t n_planes, ptrdiff_t H, ptrdiff_t W, ptrdiff_t OH,
    ptrdiff_t OW, const ptrdiff_t *wh, ptrdiff_t th, const cp_narrow_cols_t *cols,
    const float *div, int is_max)
{
    for (ptrdiff_t q = 0; q < n_planes; q += 2) {
        const ptrdiff_t in_size = q + 1 < n_planes ? H * W : 0;  /* a last odd plane twice */
        const ptrdiff_t out_size = q + 1 < n_planes ? OH * OW : 0;
        float *o = out + q * OH * OW;
        const float *p = x + q * H * W;
        if (is_max)
            cp_narrow_plane(o, p, in_size, out_size, W, OH, OW, wh, th, cols, div, 1, W);
        else
            cp_narrow_plane(o, p, in_size, out_size, W, OH, OW, wh, th, cols, div, 0, W);
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
