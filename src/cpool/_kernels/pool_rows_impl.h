/* Row primitives for one float type and one instruction set; included by pool_rows.h once
 * per (CP_T, CP_ISA) pair (C has no templates). CP_FN(name) appends the suffix, and every
 * function carries CP_TARGET so the compiler vectorizes it for that instruction set. */

#include "max_impl.h"

static CP_TARGET void CP_FN(cp_fill)(CP_T *CP_RESTRICT a, ptrdiff_t n, CP_T v)
{
    CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) a[i] = v;
}

static CP_TARGET void CP_FN(cp_copy)(CP_T *CP_RESTRICT dst, const CP_T *CP_RESTRICT src, ptrdiff_t n)
{
    CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = src[i];
}

/* acc = row (first) or acc = max(acc, row). */
static CP_TARGET void CP_FN(cp_vmax)(CP_T *CP_RESTRICT acc, const CP_T *CP_RESTRICT row,
                                 ptrdiff_t n, int first)
{
    if (first) {
        CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = row[i];
    } else {
        CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) {
            CP_T m = acc[i], v = row[i];
            acc[i] = CP_FN(cp_max)(m, v);
        }
    }
}

/* acc = f(row) (first) or acc += f(row), f chosen by `op`. */
static CP_TARGET void CP_FN(cp_vsum)(CP_T *CP_RESTRICT acc, const CP_T *CP_RESTRICT row,
                                 ptrdiff_t n, int first, int op, CP_T p)
{
    if (first) {
        switch (op) {
        case CP_SUM: CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = row[i]; break;
        case CP_SUM_ABS:
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = CP_FABS(row[i]); break;
        case CP_SUM_SQ:
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = row[i] * row[i]; break;
        default:
            for (ptrdiff_t i = 0; i < n; ++i) acc[i] = CP_POW(CP_FABS(row[i]), p);
            break;
        }
    } else {
        switch (op) {
        case CP_SUM: CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += row[i]; break;
        case CP_SUM_ABS:
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += CP_FABS(row[i]); break;
        case CP_SUM_SQ:
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] += row[i] * row[i]; break;
        default:
            for (ptrdiff_t i = 0; i < n; ++i) acc[i] += CP_POW(CP_FABS(row[i]), p);
            break;
        }
    }
}

/* out[o] = max_k acc[o*s + k*d] in scan order. */
static CP_TARGET void CP_FN(cp_hmax)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT acc,
                                 ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)
{
    if (d == 1 && s == 2 && k == 2) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[2 * o], v = acc[2 * o + 1];
            out[o] = CP_FN(cp_max)(m, v);
        }
    } else if (d == 1 && s == 2 && k == 3) {
        /* As the 2/2 pass, then the third tap (the next pair's first) in a second pass:
         * two simple deinterleaves beat one of three interleaved loads. The max is
         * symmetric, NaN included, so the order of the taps does not matter. */
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[2 * o], v = acc[2 * o + 1];
            out[o] = CP_FN(cp_max)(m, v);
        }
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = out[o], v = acc[2 * o + 2];
            out[o] = CP_FN(cp_max)(m, v);
        }
    } else if (d == 1 && s == 1 && k == 3) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[o], v1 = acc[o + 1], v2 = acc[o + 2];
            m = CP_FN(cp_max)(m, v1);
            out[o] = CP_FN(cp_max)(m, v2);
        }
    } else if (d == 1 && s == 1 && k == 2) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[o], v = acc[o + 1];
            out[o] = CP_FN(cp_max)(m, v);
        }
    } else {
        for (ptrdiff_t o = 0; o < n; ++o) {
            const CP_T *w = acc + o * s;
            CP_T m = w[0];
            for (ptrdiff_t t = 1; t < k; ++t) { CP_T v = w[t * d]; m = CP_FN(cp_max)(m, v); }
            out[o] = m;
        }
    }
}

/* out[o] = sum_k acc[o*s + k*d], summed in scan order. */
static CP_TARGET void CP_FN(cp_hsum)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT acc,
                                 ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)
{
    if (d == 1 && s == 2 && k == 2) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) out[o] = acc[2 * o] + acc[2 * o + 1];
    } else if (d == 1 && s == 2 && k == 3) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o)
            out[o] = acc[2 * o] + acc[2 * o + 1] + acc[2 * o + 2];
    } else if (d == 1 && s == 1 && k == 3) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o)
            out[o] = acc[o] + acc[o + 1] + acc[o + 2];
    } else {
        for (ptrdiff_t o = 0; o < n; ++o) {
            const CP_T *w = acc + o * s;
            CP_T m = w[0];
            for (ptrdiff_t t = 1; t < k; ++t) m += w[t * d];
            out[o] = m;
        }
    }
}

/* f(v) of a pooling sum: v, |v|, v*v or |v|**p (op CP_SUM .. CP_SUM_POW). */
static inline CP_TARGET CP_T CP_FN(cp_term)(CP_T v, int op, CP_T p)
{
    switch (op) {
    case CP_SUM: return v;
    case CP_SUM_ABS: return CP_FABS(v);
    case CP_SUM_SQ: return v * v;
    default: return CP_POW(CP_FABS(v), p);
    }
}

/* [lo, hi): the windows o = 0 .. n-1, starting at o*s - pad, whose taps all lie in the row
 * [0, width). pad may be negative (a chunk of windows starting inside the row). */
static inline CP_TARGET void CP_FN(cp_interior)(ptrdiff_t width, ptrdiff_t n, ptrdiff_t k,
                                                ptrdiff_t s, ptrdiff_t d, ptrdiff_t pad,
                                                ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t last = width - 1 + pad - (k - 1) * d;  /* last window start inside the row */
    *lo = pad <= 0 ? 0 : (pad + s - 1) / s;
    *hi = last < 0 ? 0 : last / s + 1;
    if (*lo > n) *lo = n;
    if (*hi > n) *hi = n;
    if (*hi < *lo) *hi = *lo;
}

/* Horizontal pass straight from an unpadded input row (windows with one input row,
 * such as all of 1-D pooling), so no row buffer is needed: the interior runs the fast
 * loops above (sums of f(x) other than x: one term per tap), the few border windows check
 * bounds. op -1: max; CP_SUM ..: the sum of f(x) over the window, in scan order. */
static CP_TARGET void CP_FN(cp_hrow)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT row,
                                  ptrdiff_t width, ptrdiff_t n, ptrdiff_t k, ptrdiff_t s,
                                  ptrdiff_t d, ptrdiff_t pad, int op, CP_T p)
{
    ptrdiff_t lo, hi;
    CP_FN(cp_interior)(width, n, k, s, d, pad, &lo, &hi);
    for (ptrdiff_t o = 0; o < n; ++o) {
        if (o == lo) { o = hi; if (o >= n) break; }
        CP_T m = op < 0 ? -(CP_T)INFINITY : (CP_T)0;
        for (ptrdiff_t t = 0; t < k; ++t) {
            ptrdiff_t i = o * s - pad + t * d;
            if (i < 0 || i >= width) continue;
            m = op < 0 ? CP_FN(cp_max)(m, row[i]) : m + CP_FN(cp_term)(row[i], op, p);
        }
        out[o] = m;
    }
    if (hi <= lo) return;
    const CP_T *first = row + lo * s - pad;
    if (op < 0) {
        CP_FN(cp_hmax)(out + lo, first, hi - lo, k, s, d);
    } else if (op == CP_SUM) {
        CP_FN(cp_hsum)(out + lo, first, hi - lo, k, s, d);
    } else {
        for (ptrdiff_t o = 0; o < hi - lo; ++o) {
            const CP_T *w = first + o * s;
            CP_T m = CP_FN(cp_term)(w[0], op, p);
            for (ptrdiff_t t = 1; t < k; ++t) m += CP_FN(cp_term)(w[t * d], op, p);
            out[lo + o] = m;
        }
    }
}

/* Average: out[o] = out[o] / (row_div * the divisor of column o); small integers, exact. */
static CP_TARGET void CP_FN(cp_divide_cols)(CP_T *CP_RESTRICT out, ptrdiff_t n,
                                            const cp_cols_t *cols, CP_T row_div)
{
    ptrdiff_t a = cols->n_left < n ? cols->n_left : n;
    ptrdiff_t b = cols->right_start < n ? cols->right_start : n;
    if (b < a) b = a;
    for (ptrdiff_t o = 0; o < a; ++o) out[o] = out[o] / (row_div * (CP_T)cols->edge[o]);
    CP_T mid = row_div * (CP_T)cols->mid;
    CP_T inv = (CP_T)cp_exact_reciprocal(mid);
    if (inv != 0) {
        CP_SIMD for (ptrdiff_t o = a; o < b; ++o) out[o] = out[o] * inv;
    } else {
        CP_SIMD for (ptrdiff_t o = a; o < b; ++o) out[o] = out[o] / mid;
    }
    for (ptrdiff_t o = b; o < n; ++o)
        out[o] = out[o] / (row_div * (CP_T)cp_col_div(cols, o));
}

/* Lp norm: out[o] = out[o] ** (1/p). */
static CP_TARGET void CP_FN(cp_root)(CP_T *CP_RESTRICT out, ptrdiff_t n, int op, CP_T p)
{
    if (op == CP_SUM_ABS) return;
    if (op == CP_SUM_SQ) { CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) out[o] = CP_SQRT(out[o]); return; }
    CP_T inv = (CP_T)1 / p;
    for (ptrdiff_t o = 0; o < n; ++o) out[o] = CP_POW(out[o], inv);
}

/* One output row of max (op -1), average (op CP_SUM) or Lp pooling from the `n_in` input
 * rows under its windows, in scan order: the whole per-row pipeline in one call. Two and
 * three rows (most kernels) are reduced in one fused pass instead of copy-then-accumulate.
 * Averages divide by row_div * the column's divisor (cols), small integers exact in CP_T. */
static CP_TARGET void CP_FN(cp_pool_row)(CP_T *CP_RESTRICT out, const CP_T *const *rows,
                                         ptrdiff_t n_in, CP_T *CP_RESTRICT acc, ptrdiff_t width,
                                         ptrdiff_t pad, ptrdiff_t n, ptrdiff_t k, ptrdiff_t s,
                                         ptrdiff_t d, int op, CP_T p,
                                         const cp_cols_t *cols, CP_T row_div)
{
    CP_T *CP_RESTRICT mid = acc + pad;
    if (n_in == 2 && k == 2 && s == 2 && d == 1 && pad == 0 && 2 * n <= width
        && op <= CP_SUM) {
        /* 2x2/2 inside the input (the common CNN case): the four taps straight from the
         * rows, reduced in the separable order (columns first), without the row buffer. */
        const CP_T *CP_RESTRICT r0 = rows[0], *CP_RESTRICT r1 = rows[1];
        if (op < 0) {
            CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
                CP_T a = CP_FN(cp_max)(r0[2 * o], r1[2 * o]);
                CP_T b = CP_FN(cp_max)(r0[2 * o + 1], r1[2 * o + 1]);
                out[o] = CP_FN(cp_max)(a, b);
            }
        } else {
            /* one divisor, a power of two, for the whole row (the usual case): multiplied
             * in this pass, not in cp_divide_cols's, whose call costs as much as the row */
            CP_T inv = op == CP_SUM && cols->n_left == 0 && cols->right_start >= n
                       ? (CP_T)cp_exact_reciprocal(row_div * (CP_T)cols->mid) : 0;
            if (inv != 0) {
                CP_SIMD for (ptrdiff_t o = 0; o < n; ++o)
                    out[o] = ((r0[2 * o] + r1[2 * o]) + (r0[2 * o + 1] + r1[2 * o + 1])) * inv;
                return;
            }
            CP_SIMD for (ptrdiff_t o = 0; o < n; ++o)
                out[o] = (r0[2 * o] + r1[2 * o]) + (r0[2 * o + 1] + r1[2 * o + 1]);
        }
    } else if (n_in == 1) {
        CP_FN(cp_hrow)(out, rows[0], width, n, k, s, d, pad, op, p);
    } else {
        if (n_in == 0) {
            CP_FN(cp_fill)(mid, width, op < 0 ? -(CP_T)INFINITY : (CP_T)0);
        } else if (op < 0 && n_in == 2) {
            const CP_T *CP_RESTRICT r0 = rows[0], *CP_RESTRICT r1 = rows[1];
            CP_SIMD for (ptrdiff_t i = 0; i < width; ++i) mid[i] = CP_FN(cp_max)(r0[i], r1[i]);
        } else if (op < 0 && n_in == 3) {
            const CP_T *CP_RESTRICT r0 = rows[0], *CP_RESTRICT r1 = rows[1], *CP_RESTRICT r2 = rows[2];
            CP_SIMD for (ptrdiff_t i = 0; i < width; ++i)
                mid[i] = CP_FN(cp_max)(CP_FN(cp_max)(r0[i], r1[i]), r2[i]);
        } else if (op == CP_SUM && n_in == 2) {
            const CP_T *CP_RESTRICT r0 = rows[0], *CP_RESTRICT r1 = rows[1];
            CP_SIMD for (ptrdiff_t i = 0; i < width; ++i) mid[i] = r0[i] + r1[i];
        } else if (op == CP_SUM && n_in == 3) {
            const CP_T *CP_RESTRICT r0 = rows[0], *CP_RESTRICT r1 = rows[1], *CP_RESTRICT r2 = rows[2];
            CP_SIMD for (ptrdiff_t i = 0; i < width; ++i) mid[i] = (r0[i] + r1[i]) + r2[i];
        } else {
            for (ptrdiff_t r = 0; r < n_in; ++r) {
                if (op < 0) CP_FN(cp_vmax)(mid, rows[r], width, r == 0);
                else CP_FN(cp_vsum)(mid, rows[r], width, r == 0, op, p);
            }
        }
        if (op < 0) CP_FN(cp_hmax)(out, acc, n, k, s, d);
        else CP_FN(cp_hsum)(out, acc, n, k, s, d);
    }
    if (op == CP_SUM) {
        CP_FN(cp_divide_cols)(out, n, cols, row_div);
    } else if (op > CP_SUM) {
        CP_FN(cp_root)(out, n, op, p);
    }
}

/* PyTorch's argmax scan step: take v (tap k) when it is larger or NaN, so ties keep the
 * first maximum and the last NaN of the window wins. */
#define CP_ARGSTEP(m, best, v, k)                        \
    do {                                                 \
        int take_ = ((v) > (m)) | ((v) != (v));          \
        (m) = take_ ? (v) : (m);                         \
        (best) = take_ ? (k) : (best);                   \
    } while (0)

/* Max pooling with argmax straight from an unpadded input row, for windows of one input
 * row (all of 1-D), so that no padded row buffer is needed: tap[o] = row_key + t of the
 * first maximum in scan order, or of the last NaN; a window without input elements gets
 * -inf and tap 0, which lies outside the input. */
static CP_TARGET void CP_FN(cp_hrow_argmax)(CP_T *CP_RESTRICT out, int *CP_RESTRICT tap,
                                            const CP_T *CP_RESTRICT row, int row_key,
                                            ptrdiff_t width, ptrdiff_t n, ptrdiff_t k,
                                            ptrdiff_t s, ptrdiff_t d, ptrdiff_t pad)
{
    ptrdiff_t lo, hi;
    CP_FN(cp_interior)(width, n, k, s, d, pad, &lo, &hi);
    for (ptrdiff_t o = 0; o < n; ++o) {
        ptrdiff_t t = 0, start = o * s - pad;
        if (lo <= o && o < hi) {
            t = 0;
        } else {
            while (t < k && (start + t * d < 0 || start + t * d >= width)) ++t;
            if (t == k) { out[o] = -(CP_T)INFINITY; tap[o] = 0; continue; }
        }
        CP_T m = row[start + t * d];
        int best = (int)t;
        for (++t; t < k; ++t) {
            ptrdiff_t i = start + t * d;
            if (i >= width) break;  /* taps only move right: the rest are outside too */
            CP_T v = row[i];
            CP_ARGSTEP(m, best, v, (int)t);
        }
        out[o] = m;
        tap[o] = row_key + best;
    }
}

/* Max pooling of one output row with each window's argmax as a tap number, the window's
 * row-major scan position (kd*KH + kh)*KW + kw. Vertical pass first: per column, the max
 * over the input rows under the window (first maximum, last NaN) and the key of its row,
 * row_key[r] = (kd*KH + kh)*KW. Then per window the columns compete by value, ties going
 * to the smaller scan position and NaN to the larger, which is PyTorch's rule for the
 * whole window. `key` is a padded int row whose padding holds CP_PAD_KEY: padding never
 * wins a tie, and a window of padding only gets a tap outside the input. */
#ifndef CP_PAD_KEY
#define CP_PAD_KEY (1 << 30)
#endif
/* Columns compete: v (scan position q) beats m (position best) when larger, equal but
 * earlier, or NaN while m is not or is a NaN earlier in scan order. Masks, not ?:
 * chains, so that the loops vectorize. */
#define CP_COLSTEP(m, best, v, q)                                                       \
    do {                                                                               \
        int take_ = ((v) > (m)) | (((v) == (m)) & ((q) < (best)))                      \
                    | (((v) != (v)) & (((m) == (m)) | ((q) > (best))));                \
        (m) = take_ ? (v) : (m);                                                       \
        (best) = take_ ? (q) : (best);                                                 \
    } while (0)
static CP_TARGET void CP_FN(cp_pool_row_argmax)(CP_T *CP_RESTRICT out, int *CP_RESTRICT tap,
                                                const CP_T *const *rows, const int *row_key,
                                                ptrdiff_t n_in, CP_T *CP_RESTRICT acc,
                                                int *CP_RESTRICT key, ptrdiff_t width,
                                                ptrdiff_t pad, ptrdiff_t n, ptrdiff_t k,
                                                ptrdiff_t s, ptrdiff_t d)
{
    CP_T *CP_RESTRICT mid = acc + pad;
    int *CP_RESTRICT mkey = key + pad;
    if (n_in == 2 && k == 2 && s == 2 && d == 1 && pad == 0 && 2 * n <= width) {
        /* 2x2/2 inside the input (the common CNN case): the four taps in scan order,
         * straight from the rows, without the key rows. */
        const CP_T *CP_RESTRICT r0 = rows[0], *CP_RESTRICT r1 = rows[1];
        int k0 = row_key[0], k1 = row_key[1];
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = r0[2 * o], v1 = r0[2 * o + 1], v2 = r1[2 * o], v3 = r1[2 * o + 1];
            int best = k0;
            CP_ARGSTEP(m, best, v1, k0 + 1);
            CP_ARGSTEP(m, best, v2, k1);
            CP_ARGSTEP(m, best, v3, k1 + 1);
            out[o] = m;
            tap[o] = best;
        }
        return;
    }
    if (n_in == 0) {
        CP_SIMD for (ptrdiff_t i = 0; i < width; ++i) { mid[i] = -(CP_T)INFINITY; mkey[i] = 0; }
    } else {
        const CP_T *CP_RESTRICT r0 = rows[0];
        int k0 = row_key[0];
        CP_SIMD for (ptrdiff_t i = 0; i < width; ++i) { mid[i] = r0[i]; mkey[i] = k0; }
        for (ptrdiff_t r = 1; r < n_in; ++r) {
            const CP_T *CP_RESTRICT row = rows[r];
            int kr = row_key[r];
            CP_SIMD for (ptrdiff_t i = 0; i < width; ++i) {
                CP_T m = mid[i], v = row[i];
                int best = mkey[i];
                CP_ARGSTEP(m, best, v, kr);
                mid[i] = m;
                mkey[i] = best;
            }
        }
    }
    if (d == 1 && (s == 1 || s == 2) && (k == 2 || k == 3)) {
        /* Taps 0 and 1, then tap 2 in a second pass: one pass over all three does not
         * vectorize (too many interleaved loads). `tap` holds the running position. */
        if (s == 2) {
            CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
                CP_T m = acc[2 * o], v1 = acc[2 * o + 1];
                int best = key[2 * o], q1 = key[2 * o + 1] + 1;
                CP_COLSTEP(m, best, v1, q1);
                out[o] = m;
                tap[o] = best;
            }
        } else {
            CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
                CP_T m = acc[o], v1 = acc[o + 1];
                int best = key[o], q1 = key[o + 1] + 1;
                CP_COLSTEP(m, best, v1, q1);
                out[o] = m;
                tap[o] = best;
            }
        }
        if (k == 3) {
            CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
                CP_T m = out[o], v2 = acc[o * s + 2];
                int best = tap[o], q2 = key[o * s + 2] + 2;
                CP_COLSTEP(m, best, v2, q2);
                out[o] = m;
                tap[o] = best;
            }
        }
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) tap[o] &= CP_PAD_KEY - 1;
    } else {
        for (ptrdiff_t o = 0; o < n; ++o) {
            const CP_T *w = acc + o * s;
            const int *wk = key + o * s;
            CP_T m = w[0];
            int best = wk[0];
            for (ptrdiff_t t = 1; t < k; ++t) {
                CP_T v = w[t * d];
                int q = wk[t * d] + (int)t;
                CP_COLSTEP(m, best, v, q);
            }
            out[o] = m;
            tap[o] = best & (CP_PAD_KEY - 1);
        }
    }
}


/* Backward of max pooling for one output row and one kernel row `base`: add each
 * window's gradient at its argmax column if its tap lies in that kernel row. Branch-free:
 * a window whose argmax is elsewhere adds 0 (argmaxes are unpredictable). Windows are
 * visited in `phases` interleaved passes so that consecutive iterations never touch the
 * same element, which would stall on store-to-load forwarding. */
#define CP_DEFINE_TAPSCATTER(NAME, TAP_T)                                                  \
static CP_TARGET void CP_FN(NAME)(CP_T *CP_RESTRICT acc, const CP_T *CP_RESTRICT g,           \
                               const TAP_T *CP_RESTRICT taps, ptrdiff_t n, ptrdiff_t base, \
                               ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)                      \
{                                                                                          \
    ptrdiff_t phases = ((k - 1) * d + s) / s;  /* windows that can share an element */     \
    for (ptrdiff_t ph = 0; ph < phases; ++ph) {                                            \
        for (ptrdiff_t o = ph; o < n; o += phases) {                                       \
            ptrdiff_t t = (ptrdiff_t)taps[o] - base;                                       \
            ptrdiff_t hit = -(ptrdiff_t)((size_t)t < (size_t)k); /* all ones or 0 */       \
            CP_UINT bits;                                                                  \
            CP_T v;                                                                        \
            memcpy(&bits, &g[o], sizeof bits);                                             \
            bits &= (CP_UINT)hit; /* masks, not ?:, which GCC turns into a branch */       \
            memcpy(&v, &bits, sizeof v);                                                   \
            acc[o * s + (t & hit) * d] += v;                                               \
        }                                                                                  \
    }                                                                                      \
}
CP_DEFINE_TAPSCATTER(cp_tapscatter_u8, unsigned char)
CP_DEFINE_TAPSCATTER(cp_tapscatter_i32, int)
#undef CP_DEFINE_TAPSCATTER

/* Backward of 2-wide, stride-2 max pooling for an input row under exactly one row of
 * windows: elements 2o and 2o+1 are taps base and base+1 of window o, so each gets the
 * window's gradient where the argmax is it, else 0 (past the last window: 0). Written
 * once into grad_in: no zero fill, no copy. Masks, not ?:, which would branch on random
 * argmaxes; `0 + g` gives the gather form's bits (-0 -> +0). */
#define CP_DEFINE_TAPSELECT2(NAME, TAP_T)                                                  \
static CP_TARGET void CP_FN(NAME)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT g,           \
                               const TAP_T *CP_RESTRICT taps, ptrdiff_t n, ptrdiff_t width, \
                               ptrdiff_t base)                                             \
{                                                                                          \
    int b0 = (int)base, b1 = (int)base + 1;                                                \
    CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {                                            \
        CP_T v = (CP_T)0 + g[o];                                                           \
        CP_UINT bits, w0, w1;                                                              \
        int t = (int)taps[o];                                                              \
        memcpy(&bits, &v, sizeof bits);                                                    \
        w0 = bits & ((CP_UINT)0 - (CP_UINT)(t == b0));                                     \
        w1 = bits & ((CP_UINT)0 - (CP_UINT)(t == b1));                                     \
        memcpy(&out[2 * o], &w0, sizeof w0);                                               \
        memcpy(&out[2 * o + 1], &w1, sizeof w1);                                           \
    }                                                                                      \
    for (ptrdiff_t i = 2 * n; i < width; ++i) out[i] = 0;                                  \
}
CP_DEFINE_TAPSELECT2(cp_tapselect2_u8, unsigned char)
CP_DEFINE_TAPSELECT2(cp_tapselect2_i32, int)
#undef CP_DEFINE_TAPSELECT2

/* 2x2/2 windows that all lie inside the input, n_rows output rows of OW columns stored
 * one after another; output row i reads input rows 2i and 2i+1 of W columns from x. The
 * same order and rounding as the row kernels' 2x2/2 passes (cp_pool_row,
 * cp_pool_row_argmax, cp_tapselect2, the gather sum), with the loop over rows here: on
 * short rows (56 columns) the per-row call and window bookkeeping cost as much as the row.
 * inv: 1/div where that is exact (a power of two), else 0 (divide). */

/* Max (op -1) or average (op CP_SUM, the sum divided by div). */
static CP_TARGET void CP_FN(cp_pool_2x2_rows)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT x,
                                              ptrdiff_t n_rows, ptrdiff_t W, ptrdiff_t OW,
                                              int op, CP_T div)
{
    CP_T inv = op == CP_SUM ? (CP_T)cp_exact_reciprocal(div) : 0;
    for (ptrdiff_t i = 0; i < n_rows; ++i, out += OW, x += 2 * W) {
        const CP_T *CP_RESTRICT r0 = x, *CP_RESTRICT r1 = x + W;
        if (op < 0) {
            CP_SIMD for (ptrdiff_t o = 0; o < OW; ++o) {
                CP_T a = CP_FN(cp_max)(r0[2 * o], r1[2 * o]);
                CP_T b = CP_FN(cp_max)(r0[2 * o + 1], r1[2 * o + 1]);
                out[o] = CP_FN(cp_max)(a, b);
            }
        } else if (inv != 0) {
            CP_SIMD for (ptrdiff_t o = 0; o < OW; ++o)
                out[o] = ((r0[2 * o] + r1[2 * o]) + (r0[2 * o + 1] + r1[2 * o + 1])) * inv;
        } else {
            CP_SIMD for (ptrdiff_t o = 0; o < OW; ++o)
                out[o] = ((r0[2 * o] + r1[2 * o]) + (r0[2 * o + 1] + r1[2 * o + 1])) / div;
        }
    }
}

/* Max with each window's tap (0..3 in scan order: first maximum, last NaN). */
#ifndef CP_TAP_CHUNK
#define CP_TAP_CHUNK 256
#endif
static CP_TARGET void CP_FN(cp_argmax_2x2_rows)(CP_T *CP_RESTRICT out,
                                                unsigned char *CP_RESTRICT tap,
                                                const CP_T *CP_RESTRICT x, ptrdiff_t n_rows,
                                                ptrdiff_t W, ptrdiff_t OW)
{
    int best_of[CP_TAP_CHUNK];  /* int, then bytes: with byte taps in the loop, GCC
                                   vectorizes 32 windows at a time, none on 28-wide rows */
    for (ptrdiff_t i = 0; i < n_rows; ++i, out += OW, tap += OW, x += 2 * W) {
        for (ptrdiff_t o0 = 0; o0 < OW; o0 += CP_TAP_CHUNK) {
            const CP_T *CP_RESTRICT r0 = x + 2 * o0, *CP_RESTRICT r1 = x + W + 2 * o0;
            ptrdiff_t n = OW - o0 < CP_TAP_CHUNK ? OW - o0 : CP_TAP_CHUNK;
            CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
                CP_T m = r0[2 * o], v1 = r0[2 * o + 1], v2 = r1[2 * o], v3 = r1[2 * o + 1];
                int best = 0;
                CP_ARGSTEP(m, best, v1, 1);
                CP_ARGSTEP(m, best, v2, 2);
                CP_ARGSTEP(m, best, v3, 3);
                out[o0 + o] = m;
                best_of[o] = best;
            }
            for (ptrdiff_t o = 0; o < n; ++o) tap[o0 + o] = (unsigned char)best_of[o];
        }
    }
}

/* The input gradient of 2x2/2 windows, a pair of input rows per output row: each element
 * gets its window's gradient g (max: where the window's tap is it, else 0; taps NULL: the
 * window's sum, g divided by div), `0 + g` as the gather form adds it (-0 -> +0). A last
 * odd column, and the n_zero input rows after the pairs, get 0. */
static CP_TARGET void CP_FN(cp_backward_2x2_rows)(CP_T *CP_RESTRICT gin,
                                                  const CP_T *CP_RESTRICT g,
                                                  const unsigned char *CP_RESTRICT taps,
                                                  ptrdiff_t n_rows, ptrdiff_t W, ptrdiff_t OW,
                                                  ptrdiff_t n_zero, CP_T div)
{
    CP_T inv = (CP_T)cp_exact_reciprocal(div);
    CP_UINT tap_of[CP_TAP_CHUNK];  /* the taps as wide as CP_T (see cp_argmax_2x2_rows) */
    for (ptrdiff_t i = 0; i < n_rows; ++i, gin += 2 * W, g += OW) {
        CP_T *CP_RESTRICT r0 = gin, *CP_RESTRICT r1 = gin + W;
        if (taps != NULL) {
            for (ptrdiff_t o0 = 0; o0 < OW; o0 += CP_TAP_CHUNK) {
                ptrdiff_t n = OW - o0 < CP_TAP_CHUNK ? OW - o0 : CP_TAP_CHUNK;
                for (ptrdiff_t o = 0; o < n; ++o) tap_of[o] = taps[i * OW + o0 + o];
                CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
                    CP_T v = (CP_T)0 + g[o0 + o];
                    CP_UINT bits, t = (CP_UINT)tap_of[o];
                    memcpy(&bits, &v, sizeof bits);
                    CP_UINT w0 = bits & ((CP_UINT)0 - (CP_UINT)(t == 0));
                    CP_UINT w1 = bits & ((CP_UINT)0 - (CP_UINT)(t == 1));
                    CP_UINT w2 = bits & ((CP_UINT)0 - (CP_UINT)(t == 2));
                    CP_UINT w3 = bits & ((CP_UINT)0 - (CP_UINT)(t == 3));
                    memcpy(&r0[2 * (o0 + o)], &w0, sizeof w0);
                    memcpy(&r0[2 * (o0 + o) + 1], &w1, sizeof w1);
                    memcpy(&r1[2 * (o0 + o)], &w2, sizeof w2);
                    memcpy(&r1[2 * (o0 + o) + 1], &w3, sizeof w3);
                }
            }
        } else if (inv != 0) {
            CP_SIMD for (ptrdiff_t o = 0; o < OW; ++o) {
                CP_T v = (CP_T)0 + g[o] * inv;
                r0[2 * o] = v; r0[2 * o + 1] = v; r1[2 * o] = v; r1[2 * o + 1] = v;
            }
        } else {
            CP_SIMD for (ptrdiff_t o = 0; o < OW; ++o) {
                CP_T v = (CP_T)0 + g[o] / div;
                r0[2 * o] = v; r0[2 * o + 1] = v; r1[2 * o] = v; r1[2 * o + 1] = v;
            }
        }
        for (ptrdiff_t j = 2 * OW; j < W; ++j) { r0[j] = 0; r1[j] = 0; }
    }
    if (n_zero > 0) memset(gin, 0, (size_t)(n_zero * W) * sizeof(CP_T));
}

/* Backward spread of one row of window gradients: acc[o*s + t*d] += g[o] for every tap t.
 * acc is a zeroed padded row; with s == 1 each tap's loop is a contiguous vector add. */
static CP_TARGET void CP_FN(cp_hspread)(CP_T *CP_RESTRICT acc, const CP_T *CP_RESTRICT g,
                                     ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)
{
    if (s == 1) {
        for (ptrdiff_t t = 0; t < k; ++t) {
            CP_T *a = acc + t * d;
            CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) a[o] += g[o];
        }
    } else if (s == 2 && k == 2 && d == 1) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            acc[2 * o] += g[o];
            acc[2 * o + 1] += g[o];
        }
    } else {
        for (ptrdiff_t t = 0; t < k; ++t)
            for (ptrdiff_t o = 0; o < n; ++o) acc[o * s + t * d] += g[o];
    }
}

/* acc += g: the window gradients of one output row (already divided, for averages). */
static CP_TARGET void CP_FN(cp_add)(CP_T *CP_RESTRICT acc, const CP_T *CP_RESTRICT g, ptrdiff_t n)
{
    CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) acc[o] += g[o];
}

/* ---- Whole planes of stride-1 windows whose output has the input's size ("same"). ----
 * The rows of a small plane are too short for the row pipeline's per-row calls, but with
 * stride 1 the output rows are the input's: both passes run over the plane as one flat
 * array, a tap being an offset. Along H the few border rows are folded apart; along W a
 * tap that a flat offset takes into the neighbouring row reads the pad value instead,
 * through a per-tap mask of the columns it lies inside. The taps are folded in the row
 * pipeline's order, padding included, so the results are bitwise the row kernels'. */

/* v where mask m is all ones, the value of bits `pad` where it is 0. */
static inline CP_TARGET CP_T CP_FN(cp_masked)(CP_T v, CP_UINT m, CP_UINT pad)
{
    CP_UINT b;
    memcpy(&b, &v, sizeof b);
    b = (b & m) | (pad & ~m);
    memcpy(&v, &b, sizeof v);
    return v;
}

/* dst[i] = the left fold, in tap order, of src[i + off[t]] over t < k, for i < n: max
 * (op -1) or sum (op CP_SUM; from +0 when zero_first, as the gather backward's zeroed
 * rows add), then divided by div[i] unless div is NULL. With `mask` (k planes of n, one
 * per tap, all ones where the tap lies inside), a tap of nonzero offset that lies outside
 * reads the pad value (-inf, or 0: adding a 0 to a sum from +0 changes no bit, as
 * skipping the tap). k == 0: the pad value. Not inlined: GCC then spills the loops'
 * pointers. */
static CP_TARGET __attribute__((noinline)) void CP_FN(cp_fold_flat)(
    CP_T *CP_RESTRICT dst, const CP_T *CP_RESTRICT src, ptrdiff_t n, const ptrdiff_t *off,
    ptrdiff_t k, int op, int zero_first, const CP_UINT *CP_RESTRICT mask,
    const CP_T *CP_RESTRICT div)
{
    CP_T pad = op < 0 ? -(CP_T)INFINITY : (CP_T)0;
    CP_UINT pb;
    memcpy(&pb, &pad, sizeof pb);
    if (k == 3 && op >= 0 && off[1] == 0 && (!zero_first || !mask)) {
        /* 3 taps around the centre (3x3/1 p1): the centre always lies inside */
        const CP_T *CP_RESTRICT a = src + off[0], *CP_RESTRICT b = src,
                   *CP_RESTRICT c = src + off[2];
        if (mask) {
            const CP_UINT *CP_RESTRICT ma = mask, *CP_RESTRICT mc = mask + 2 * n;
            if (div) {
                CP_SIMD for (ptrdiff_t i = 0; i < n; ++i)
                    dst[i] = ((CP_FN(cp_masked)(a[i], ma[i], pb) + b[i])
                              + CP_FN(cp_masked)(c[i], mc[i], pb)) / div[i];
            } else {
                CP_SIMD for (ptrdiff_t i = 0; i < n; ++i)
                    dst[i] = (CP_FN(cp_masked)(a[i], ma[i], pb) + b[i])
                             + CP_FN(cp_masked)(c[i], mc[i], pb);
            }
        } else if (zero_first) {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = (((CP_T)0 + a[i]) + b[i]) + c[i];
        } else if (div) {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = ((a[i] + b[i]) + c[i]) / div[i];
        } else {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = (a[i] + b[i]) + c[i];
        }
        if (zero_first && div) {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = dst[i] / div[i];
        }
        return;
    }
    if (k == 3 && op < 0 && off[1] == 0) {
        const CP_T *CP_RESTRICT a = src + off[0], *CP_RESTRICT b = src,
                   *CP_RESTRICT c = src + off[2];
        if (mask) {
            const CP_UINT *CP_RESTRICT ma = mask, *CP_RESTRICT mc = mask + 2 * n;
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i)
                dst[i] = CP_FN(cp_max)(CP_FN(cp_max)(CP_FN(cp_masked)(a[i], ma[i], pb), b[i]),
                                       CP_FN(cp_masked)(c[i], mc[i], pb));
        } else {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i)
                dst[i] = CP_FN(cp_max)(CP_FN(cp_max)(a[i], b[i]), c[i]);
        }
        return;
    }
    if (k == 0) CP_FN(cp_fill)(dst, n, pad);
    for (ptrdiff_t t = 0; t < k; ++t) {
        const CP_T *CP_RESTRICT b = src + off[t];
        const CP_UINT *CP_RESTRICT m = mask && off[t] != 0 ? mask + t * n : NULL;
        if (t == 0) {
            if (m) {
                CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = CP_FN(cp_masked)(b[i], m[i], pb);
            } else {
                CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = b[i];
            }
            if (zero_first && op >= 0) {  /* 0 + v: -0 becomes +0 */
                CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = (CP_T)0 + dst[i];
            }
        } else if (m && op < 0) {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i)
                dst[i] = CP_FN(cp_max)(dst[i], CP_FN(cp_masked)(b[i], m[i], pb));
        } else if (m) {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] += CP_FN(cp_masked)(b[i], m[i], pb);
        } else if (op < 0) {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = CP_FN(cp_max)(dst[i], b[i]);
        } else {
            CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] += b[i];
        }
    }
    if (div && op >= 0) {
        CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) dst[i] = dst[i] / div[i];
    }
}

/* The rows [lo, hi) of [0, len) whose taps all fall inside: tap t of row i reads
 * i + first + t*step. */
static inline void CP_FN(cp_inside_rows)(ptrdiff_t len, ptrdiff_t k, ptrdiff_t first,
                                         ptrdiff_t step, ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t a = -first, b = -first - (k - 1) * step;  /* i >= a and i >= b */
    ptrdiff_t c = len - first, e = len - first - (k - 1) * step;  /* i < c and i < e */
    *lo = a > b ? a : b;
    *hi = c < e ? c : e;
    if (*lo < 0) *lo = 0;
    if (*hi > len) *hi = len;
    if (*hi < *lo) *hi = *lo;
}

/* dst[i, :] = the fold of the rows src[i + first + t*step, :] (t < k) of a plane (H, W)
 * that lie inside it, as the row pipeline gathers only those; no row inside: the pad. */
static CP_TARGET void CP_FN(cp_fold_rows)(CP_T *CP_RESTRICT dst, const CP_T *CP_RESTRICT src,
                                          ptrdiff_t H, ptrdiff_t W, ptrdiff_t k,
                                          ptrdiff_t first, ptrdiff_t step, int op,
                                          int zero_first)
{
    ptrdiff_t off[CP_SAME_MAX_TAPS], lo, hi;
    for (ptrdiff_t t = 0; t < k; ++t) off[t] = (first + t * step) * W;
    CP_FN(cp_inside_rows)(H, k, first, step, &lo, &hi);
    CP_FN(cp_fold_flat)(dst + lo * W, src + lo * W, (hi - lo) * W, off, k, op, zero_first,
                        NULL, NULL);
    for (ptrdiff_t i = 0; i < H; ++i) {
        ptrdiff_t n = 0, part[CP_SAME_MAX_TAPS];
        if (i == lo && lo < hi) { i = hi - 1; continue; }
        for (ptrdiff_t t = 0; t < k; ++t) {
            ptrdiff_t r = i + first + t * step;
            if (r >= 0 && r < H) part[n++] = (r - i) * W;
        }
        CP_FN(cp_fold_flat)(dst + i * W, src + i * W, W, part, n, op, zero_first, NULL, NULL);
    }
}

/* Stride-1 "same" pooling of one plane (H, W): max (op -1) or window sums divided by
 * div (op CP_SUM, H*W divisors); taps at (i - ph + t*dh, j - pw + u*dw). `v` is scratch
 * of H*W elements with margins of pw before and (kw-1)*dw - pw after; `mask` holds, per
 * tap u, the columns j (tiled over the rows) where j - pw + u*dw lies inside. */
static CP_TARGET void CP_FN(cp_pool_plane_same)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT x,
                                                CP_T *CP_RESTRICT v, ptrdiff_t H, ptrdiff_t W,
                                                ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t dh,
                                                ptrdiff_t dw, ptrdiff_t ph, ptrdiff_t pw,
                                                int op, const CP_UINT *CP_RESTRICT mask,
                                                const CP_T *CP_RESTRICT div)
{
    ptrdiff_t off[CP_SAME_MAX_TAPS], lo, hi;
    if (kh > 1) {  /* through v even so: the flat horizontal pass reads around the plane */
        for (ptrdiff_t u = 0; u < kw; ++u) off[u] = u * dw - pw;
        CP_FN(cp_fold_rows)(v, x, H, W, kh, -ph, dh, op, 0);
        CP_FN(cp_fold_flat)(out, v, H * W, off, kw, op, 0, mask, div);
    }
    /* Rows of windows over one input row: the row pipeline pools them straight from the
     * input (cp_hrow), its border windows folding from the pad value, not over it. */
    CP_FN(cp_inside_rows)(H, kh, -ph, dh, &lo, &hi);
    for (ptrdiff_t i = 0; i < H; ++i) {
        ptrdiff_t n = 0, r = 0;
        if (i == lo && lo < hi && kh > 1) { i = hi - 1; continue; }  /* kh rows each */
        for (ptrdiff_t t = 0; t < kh; ++t) {
            ptrdiff_t rt = i - ph + t * dh;
            if (rt >= 0 && rt < H) { ++n; r = rt; }
        }
        if (n != 1) continue;
        CP_FN(cp_hrow)(out + i * W, x + r * W, W, W, kw, 1, dw, pw, op, 0);
        if (div && op >= 0) {
            CP_SIMD for (ptrdiff_t j = 0; j < W; ++j) out[i * W + j] = out[i * W + j] / div[i * W + j];
        }
    }
}

/* Gradient of stride-1 "same" window sums over one plane (the forward's geometry):
 * q = g / div (div NULL: g), each input row the sum of the q rows covering it (from +0,
 * in increasing output row), then spread along W (from +0, in increasing tap): the row
 * kernels' order. `mask` as the forward's, for the spread's taps j + pw - u*dw. `q` and
 * `c` are scratch of H*W elements, c with margins of (kw-1)*dw - pw before and pw after. */
static CP_TARGET void CP_FN(cp_sum_plane_same_backward)(CP_T *CP_RESTRICT gin,
                                                        const CP_T *CP_RESTRICT g,
                                                        CP_T *CP_RESTRICT q, CP_T *CP_RESTRICT c,
                                                        ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                                                        ptrdiff_t kw, ptrdiff_t dh, ptrdiff_t dw,
                                                        ptrdiff_t ph, ptrdiff_t pw,
                                                        const CP_UINT *CP_RESTRICT mask,
                                                        const CP_T *CP_RESTRICT div)
{
    ptrdiff_t off[CP_SAME_MAX_TAPS];
    const CP_T *src = g;
    if (div) {
        CP_SIMD for (ptrdiff_t i = 0; i < H * W; ++i) q[i] = g[i] / div[i];
        src = q;
    }
    /* covering output rows i + ph - t*dh, in increasing order: t from kh - 1 down */
    CP_FN(cp_fold_rows)(c, src, H, W, kh, ph - (kh - 1) * dh, dh, CP_SUM, 1);
    for (ptrdiff_t u = 0; u < kw; ++u) off[u] = pw - u * dw;
    /* c is never -0 (sums from +0), so its spread needs no +0 start */
    CP_FN(cp_fold_flat)(gin, c, H * W, off, kw, CP_SUM, 0, mask, NULL);
}

static const CP_TABLE CP_FN(cp_rows) = {
    CP_FN(cp_pool_row), CP_FN(cp_pool_row_argmax), CP_FN(cp_hrow_argmax),
    CP_FN(cp_fill), CP_FN(cp_copy), CP_FN(cp_vmax), CP_FN(cp_vsum), CP_FN(cp_hmax),
    CP_FN(cp_hsum), CP_FN(cp_root),
    CP_FN(cp_tapscatter_u8), CP_FN(cp_tapscatter_i32), CP_FN(cp_tapselect2_u8),
    CP_FN(cp_tapselect2_i32), CP_FN(cp_hspread),
    CP_FN(cp_add), CP_FN(cp_pool_plane_same), CP_FN(cp_sum_plane_same_backward),
    CP_FN(cp_pool_2x2_rows), CP_FN(cp_argmax_2x2_rows), CP_FN(cp_backward_2x2_rows),
};
