/* Stride-1 "same" max pooling of channels-first float32 planes whose windows are three
 * or five columns wide around their centre (3x3/1 p1, YOLO's SPPF 5x5/1 p2, and any
 * rows: 5x3, dilated rows): each output row folds its window's input rows in AVX-512
 * registers, 16 columns per vector, then takes every column's neighbours from the same
 * vectors (valignd), so nothing goes through memory between the two passes. The flat
 * pass (cp_pool_plane_same, pool_rows_impl.h) goes through a row buffer and a mask per
 * tap.
 *
 * Same bits as that pass: the window's rows in tap order, then its columns left to right
 * with -inf outside the plane; a window over one input row folds from -inf as cp_hrow
 * does; max is cp_max (max_impl.h). Only the max: averages divide, and 16-lane divisions
 * of rows that are not a multiple of 16 long cost more than the flat pass's (measured
 * 323 against 280 ns per 28x28 plane).
 * Compiled only where the x86 dispatch exists; cp_same_rows_available() says whether it
 * is. */
#ifndef CPOOL_SAME_ROWS_H
#define CPOOL_SAME_ROWS_H

#include "cp_common.h"
#include "pool_rows.h"  /* CP_SAME_MAX_TAPS */

#if CP_HAVE_X86_DISPATCH

#define CP_SR_TARGET __attribute__((target("avx512f")))
#define CP_SR_LANES 16

static inline int cp_same_rows_available(void)
{
    return __builtin_cpu_supports("avx512f");
}

/* cp_max(m, v): v > m ? v : m (one maxps), all ones where v is NaN. */
static inline CP_SR_TARGET __m512 cp_sr_max(__m512 m, __m512 v)
{
    const __m512 all_ones = _mm512_castsi512_ps(_mm512_set1_epi32(-1));
    return _mm512_mask_mov_ps(_mm512_max_ps(v, m), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                              all_ones);
}

static inline float cp_sr_max1(float m, float v)
{
    float r = v > m ? v : m;
    if (v != v) {
        uint32_t bits = 0xFFFFFFFFu;
        memcpy(&r, &bits, sizeof r);
    }
    return r;
}

/* Columns [16 c, 16 c + 16) of the vertical max of rows[0 .. n) (tap order; none: -inf).
 * Lanes past the row's end (`lanes` clear) read -inf, so they fold to it. */
static inline CP_SR_TARGET __attribute__((always_inline)) __m512 cp_sr_column(
    const float *const *rows, int n, ptrdiff_t c, __mmask16 lanes, __m512 pad)
{
    if (n == 0) return pad;
    const ptrdiff_t at = CP_SR_LANES * c;
    __m512 m = _mm512_mask_loadu_ps(pad, lanes, rows[0] + at);
    for (int t = 1; t < n; ++t) m = cp_sr_max(m, _mm512_mask_loadu_ps(pad, lanes, rows[t] + at));
    return m;
}

/* The column neighbours at `shift` (-2 .. 2) of the 16 columns in cur, from the vectors
 * of the columns before (prev) and after (next). */
static inline CP_SR_TARGET __attribute__((always_inline)) __m512 cp_sr_shift(
    __m512 prev, __m512 cur, __m512 next, const int shift)
{
    const __m512i p = _mm512_castps_si512(prev), c = _mm512_castps_si512(cur),
                  n = _mm512_castps_si512(next);
    switch (shift) {
    case -2: return _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, CP_SR_LANES - 2));
    case -1: return _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, CP_SR_LANES - 1));
    case 1: return _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 1));
    case 2: return _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 2));
    default: return cur;
    }
}

/* One output row of W: out[j] = the max of v[j - pw .. j + pw] in that order (kw = 2 pw
 * + 1 taps, 3 or 5) over the vertical max v of rows[0 .. n), -inf outside. */
static inline CP_SR_TARGET __attribute__((always_inline)) void cp_sr_row(
    float *out, const float *const *rows, int n, ptrdiff_t W, __m512 pad, const int pw)
{
    const ptrdiff_t last = (W - 1) / CP_SR_LANES;  /* the last vector, maybe partial */
    const __mmask16 tail = (__mmask16)(0xFFFFu >> (CP_SR_LANES * (last + 1) - W));
    __m512 prev = pad;
    __m512 cur = cp_sr_column(rows, n, 0, last == 0 ? tail : (__mmask16)0xFFFF, pad);
    for (ptrdiff_t c = 0; c <= last; ++c) {
        __m512 next = c == last ? pad
                                : cp_sr_column(rows, n, c + 1,
                                               c + 1 == last ? tail : (__mmask16)0xFFFF, pad);
        /* the taps written out: as a loop, GCC kept its switch (56x56 planes 0.58 ->
         * 0.70 ms) */
        __m512 m = cp_sr_shift(prev, cur, next, -1);
        if (pw == 2) m = cp_sr_max(cp_sr_shift(prev, cur, next, -2), m);
        m = cp_sr_max(cp_sr_max(m, cur), cp_sr_shift(prev, cur, next, 1));
        if (pw == 2) m = cp_sr_max(m, cp_sr_shift(prev, cur, next, 2));
        _mm512_mask_storeu_ps(out + CP_SR_LANES * c, c == last ? tail : (__mmask16)0xFFFF, m);
        prev = cur;
        cur = next;
    }
}

/* One (H, W) plane: output row i takes the max over the input rows i - ph + t*dh (t < kh)
 * that lie inside, then over columns j - pw .. j + pw. */
static inline CP_SR_TARGET __attribute__((always_inline)) void cp_sr_plane(
    float *out, const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t dh,
    ptrdiff_t ph, const int pw)
{
    const __m512 pad = _mm512_set1_ps(-INFINITY);
    const float *rows[CP_SAME_MAX_TAPS];
    for (ptrdiff_t i = 0; i < H; ++i) {
        int n = 0;
        for (ptrdiff_t t = 0; t < kh; ++t) {
            ptrdiff_t r = i - ph + t * dh;
            if (r >= 0 && r < H) rows[n++] = x + r * W;
        }
        float *o = out + i * W;
        cp_sr_row(o, rows, n, W, pad, pw);
        if (n != 1) continue;
        /* cp_hrow folds a window whose first tap lies inside and last outside from -inf,
         * not into -inf: the two differ when that first value is NaN (all ones, or its
         * payload) */
        for (ptrdiff_t j = W - pw > pw ? W - pw : pw; j < W; ++j) {
            float m = -INFINITY;
            for (ptrdiff_t t = j - pw; t < W; ++t) m = cp_sr_max1(m, rows[0][t]);
            o[j] = m;
        }
    }
}

/* n_planes (H, W) planes, one after another in x and in out, as cp_sr_plane (pw 1 or 2:
 * windows 3 or 5 wide around their centre). */
static CP_SR_TARGET void cp_same_max_planes_f32(float *out, const float *x,
                                                 ptrdiff_t n_planes, ptrdiff_t H, ptrdiff_t W,
                                                 ptrdiff_t kh, ptrdiff_t dh, ptrdiff_t ph,
                                                 ptrdiff_t pw)
{
    for (ptrdiff_t p = 0; p < n_planes; ++p) {
        if (pw == 1)
            cp_sr_plane(out + p * H * W, x + p * H * W, H, W, kh, dh, ph, 1);
        else
            cp_sr_plane(out + p * H * W, x + p * H * W, H, W, kh, dh, ph, 2);
    }
}

#else

static inline int cp_same_rows_available(void) { return 0; }

static void cp_same_max_planes_f32(float *out, const float *x, ptrdiff_t n_planes,
                                    ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh, ptrdiff_t dh,
                                    ptrdiff_t ph, ptrdiff_t pw)
{
    (void)out; (void)x; (void)n_planes; (void)H; (void)W; (void)kh; (void)dh; (void)ph;
    (void)pw;
}

#endif /* CP_HAVE_X86_DISPATCH */
#endif /* CPOOL_SAME_ROWS_H */
