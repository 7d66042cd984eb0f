/* Row primitives of bin pooling for one float type and one instruction set; included by
 * bin_rows.h once per (CPB_T, instruction set) pair, as pool_rows_impl.h is by
 * pool_rows.h. CPB_FN(name) appends the suffix; every function carries CPB_TARGET. */

#ifdef CPB_WITH_ARGMAX
/* Merge one input row into the running (max, tap) of an output row whose n W bins are
 * a regular grid: bin o covers row[bins[0] + o*s + t], t < k.
 *
 * For each bin the running value m[o] is replaced by the element when it is larger or
 * NaN (PyTorch's rule), t upwards, and tap[o] becomes row_key * k + t: the within-bin
 * tap of a bin whose earlier rows number row_key. The loop over bins is vectorized, so
 * the selects are blends: nothing to mispredict on random data. (k, s) = (2, 2) has its
 * own loop, which the compiler deinterleaves; per-bin starts and sizes (irregular bins)
 * defeat the vectorizer, and those go to max-then-find instead.
 * Only the baseline (SSE2) copy exists: rows hold few bins, and wider vectors left them
 * to the branchy scalar remainder loop -- 2 to 5 times slower measured with AVX2/AVX-512. */
static CPB_TARGET void CPB_FN(cpb_argmax_row)(CPB_T *CP_RESTRICT m, int *CP_RESTRICT tap,
                                              const CPB_T *CP_RESTRICT row,
                                              const ptrdiff_t *bins, ptrdiff_t n,
                                              ptrdiff_t k, ptrdiff_t s, ptrdiff_t row_key)
{
    if (k == 2 && s == 2) {
        const CPB_T *r = row + bins[0];
        const int t0 = (int)(2 * row_key), t1 = t0 + 1;
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CPB_T mv = m[o], v0 = r[2 * o], v1 = r[2 * o + 1];
            int tp = tap[o];
            int take = (v0 > mv) | (v0 != v0);
            mv = take ? v0 : mv;
            tp = take ? t0 : tp;
            take = (v1 > mv) | (v1 != v1);
            m[o] = take ? v1 : mv;
            tap[o] = take ? t1 : tp;
        }
        return;
    }
    for (ptrdiff_t t = 0; t < k; ++t) {
        const CPB_T *r = row + bins[0] + t;
        const int tt = (int)(row_key * k + t);
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CPB_T v = r[o * s], mv = m[o];
            int take = (v > mv) | (v != v);
            m[o] = take ? v : mv;
            tap[o] = take ? tt : tap[o];
        }
    }
}
#endif

/* out[o] = max (is_max) or sum of acc[bins[2o] - wlo .. bins[2o+1] - wlo), n bins.
 * The max runs as `v > m ? v : m` (one maxss, no branch) and notes NaNs on the side; a
 * bin that held one is rescanned for its last NaN, PyTorch's result. */
static CPB_TARGET void CPB_FN(cpb_hbins)(CPB_T *CP_RESTRICT out, const CPB_T *CP_RESTRICT acc,
                                         const ptrdiff_t *bins, ptrdiff_t n, ptrdiff_t wlo,
                                         int is_max)
{
    for (ptrdiff_t o = 0; o < n; ++o) {
        const CPB_T *a = acc + (bins[2 * o] - wlo);
        const ptrdiff_t len = bins[2 * o + 1] - bins[2 * o];
        CPB_T m = a[0];
        if (is_max) {
            int nan = m != m;
            for (ptrdiff_t t = 1; t < len; ++t) {
                CPB_T v = a[t];
                m = v > m ? v : m;
                nan |= v != v;
            }
            if (nan)
                for (ptrdiff_t t = 0; t < len; ++t)
                    if (a[t] != a[t]) m = a[t];
        } else {
            for (ptrdiff_t t = 1; t < len; ++t) m += a[t];
        }
        out[o] = m;
    }
}

/* Within-bin tap (scan-order position) of the argmax of the box [d0,d1) x [h0,h1) x
 * [w0,w1) of a (D, H, W) plane whose maximum *m is known: the first element equal to it,
 * or, when it is NaN, the last NaN -- PyTorch's `v > m || isnan(v)` scan. The equality
 * test is almost always false, so the scan runs without mispredictions and stops at the
 * maximum. *m becomes that element itself (its sign of zero, its NaN payload). */
static CPB_TARGET ptrdiff_t CPB_FN(cpb_find_tap)(const CPB_T *plane, ptrdiff_t H, ptrdiff_t W,
                                                 ptrdiff_t d0, ptrdiff_t d1, ptrdiff_t h0,
                                                 ptrdiff_t h1, ptrdiff_t w0, ptrdiff_t w1,
                                                 CPB_T *m)
{
    ptrdiff_t tap = 0, last = 0;
    const CPB_T target = *m;
    for (ptrdiff_t d = d0; d < d1; ++d)
        for (ptrdiff_t h = h0; h < h1; ++h) {
            const CPB_T *r = plane + (d * H + h) * W;
            if (target == target) {
                for (ptrdiff_t w = w0; w < w1; ++w, ++tap)
                    if (r[w] == target) { *m = r[w]; return tap; }
            } else {
                for (ptrdiff_t w = w0; w < w1; ++w, ++tap)
                    if (r[w] != r[w]) { *m = r[w]; last = tap; }
            }
        }
    return last;
}

/* Reduction of a contiguous run a[0..n) (a whole plane, for global pooling): the body in
 * CPB_LANES independent lanes (element i to lane i % CPB_LANES), the lanes combined
 * pairwise, then the tail in order. The order is fixed, so every vector width gives the
 * same bits.
 * op -1: max, `v > m ? v : m` per lane with NaNs noted on the side (a run holding NaN
 *        returns its last NaN, PyTorch's result);
 * op 0, 1, 2, 3: the sum of x, |x|, x*x, |x|**p. */
static CPB_TARGET CPB_T CPB_FN(cpb_reduce)(const CPB_T *CP_RESTRICT a, ptrdiff_t n, int op,
                                           CPB_T p)
{
    CPB_T lane[CPB_LANES];
    ptrdiff_t i = 0, l;
    const ptrdiff_t body = n - n % CPB_LANES;
    CPB_T r;
    if (op == -1) {
        int nan = 0;
        for (l = 0; l < CPB_LANES; ++l) lane[l] = -INFINITY;
        for (; i < body; i += CPB_LANES)
            CP_SIMD for (l = 0; l < CPB_LANES; ++l) {
                CPB_T v = a[i + l];
                lane[l] = v > lane[l] ? v : lane[l];
                nan |= v != v;
            }
        CPB_TREE(lane, lane[l] = lane[l + w] > lane[l] ? lane[l + w] : lane[l]);
        r = lane[0];
        for (; i < n; ++i) { r = a[i] > r ? a[i] : r; nan |= a[i] != a[i]; }
        if (nan)
            for (i = 0; i < n; ++i)
                if (a[i] != a[i]) r = a[i];
        return r;
    }
    for (l = 0; l < CPB_LANES; ++l) lane[l] = 0;
    switch (op) {
    case 0:
        for (; i < body; i += CPB_LANES)
            CP_SIMD for (l = 0; l < CPB_LANES; ++l) lane[l] += a[i + l];
        break;
    case 1:
        for (; i < body; i += CPB_LANES)
            CP_SIMD for (l = 0; l < CPB_LANES; ++l) lane[l] += CPB_FABS(a[i + l]);
        break;
    case 2:
        for (; i < body; i += CPB_LANES)
            CP_SIMD for (l = 0; l < CPB_LANES; ++l) lane[l] += a[i + l] * a[i + l];
        break;
    default:
        for (; i < body; i += CPB_LANES)
            for (l = 0; l < CPB_LANES; ++l) lane[l] += CPB_POW(CPB_FABS(a[i + l]), p);
        break;
    }
    CPB_TREE(lane, lane[l] += lane[l + w]);
    r = lane[0];
    for (; i < n; ++i) {
        CPB_T v = a[i];
        r += op == 0 ? v : op == 1 ? CPB_FABS(v) : op == 2 ? v * v : CPB_POW(CPB_FABS(v), p);
    }
    return r;
}

static const CPB_TABLE CPB_FN(cpb_rows) = {
    CPB_FN(cpb_hbins), CPB_FN(cpb_find_tap), CPB_FN(cpb_reduce),
};
