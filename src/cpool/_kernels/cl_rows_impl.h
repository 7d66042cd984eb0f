/* Channels-last row primitives for one element type and one instruction set; included by
 * cl_rows.h once per (CP_T, CP_ISA) pair. Every loop over channels is contiguous and
 * carries CP_SIMD: this layout vectorizes over C, whatever the window.
 *
 * A "row" is one line of pixels along W, pixel i at row + i*cs, of which the primitives
 * touch channels [0, nc) (the caller offsets the pointers to its channel block).
 * Window tables (see cpool._geometry.window_table) hold, for output pixel o, at
 * tab + o*ts: [n, i_0, t_0, ..., i_{n-1}, t_{n-1}], the input pixels under the window and
 * their tap numbers, in tap order. Cover tables are their inverse: for input pixel i, the
 * (output, tap) pairs of the windows covering it, in increasing output.
 *
 * Functions take void pointers so that one table type serves every element type; each
 * casts to CP_T on entry. Sums and the backward exist for floats only (NULL otherwise). */

#include "max_impl.h"

static CP_TARGET void CP_FN(cl_fill)(void *a_, ptrdiff_t n, ptrdiff_t cs, ptrdiff_t nc, int lowest)
{
    CP_T *CP_RESTRICT a = (CP_T *)a_;
    CP_T v = lowest ? CP_LOWEST : (CP_T)0;
    for (ptrdiff_t o = 0; o < n; ++o) {
        CP_T *CP_RESTRICT dst = a + o * cs;
        CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = v;
    }
}

/* out pixel o = max over its window's taps in `row` (first: the row is the window's first
 * input row), or the running max with them. A window without taps in the row holds the
 * lowest value when first. */
static CP_TARGET void CP_FN(cl_row_max)(void *out_, const void *row_, ptrdiff_t n,
                                        ptrdiff_t cs, ptrdiff_t nc, const ptrdiff_t *tab,
                                        ptrdiff_t ts, int first)
{
    CP_T *out = (CP_T *)out_;
    const CP_T *row = (const CP_T *)row_;
    for (ptrdiff_t o = 0; o < n; ++o) {
        const ptrdiff_t *w = tab + o * ts;
        CP_T *CP_RESTRICT dst = out + o * cs;
        ptrdiff_t t = 0;
        if (first) {
            if (w[0] == 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = CP_LOWEST;
                continue;
            }
            const CP_T *CP_RESTRICT src = row + w[1] * cs;
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = src[c];
            t = 1;
        }
        for (; t < w[0]; ++t) {
            const CP_T *CP_RESTRICT src = row + w[1 + 2 * t] * cs;
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = CP_FN(cp_max)(dst[c], src[c]);
        }
    }
}

/* As cl_row_max, also tracking each channel's argmax as the tap number base + t in `key`
 * (n x nc, contiguous). Taps are visited in scan order and one replaces the running max
 * when larger or NaN: ties keep the first maximum, the last NaN wins (PyTorch's rule).
 * A window without taps anywhere keeps tap 0, which lies outside the input. */
static CP_TARGET void CP_FN(cl_row_argmax)(void *out_, int *key, const void *row_, ptrdiff_t n,
                                           ptrdiff_t cs, ptrdiff_t nc, const ptrdiff_t *tab,
                                           ptrdiff_t ts, int base, int first)
{
    CP_T *out = (CP_T *)out_;
    const CP_T *row = (const CP_T *)row_;
    for (ptrdiff_t o = 0; o < n; ++o) {
        const ptrdiff_t *w = tab + o * ts;
        CP_T *CP_RESTRICT dst = out + o * cs;
        int *CP_RESTRICT kd = key + o * nc;
        ptrdiff_t t = 0;
        if (first) {
            if (w[0] == 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) { dst[c] = CP_LOWEST; kd[c] = 0; }
                continue;
            }
            const CP_T *CP_RESTRICT src = row + w[1] * cs;
            int q = base + (int)w[2];
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) { dst[c] = src[c]; kd[c] = q; }
            t = 1;
        }
        for (; t < w[0]; ++t) {
            const CP_T *CP_RESTRICT src = row + w[1 + 2 * t] * cs;
            int q = base + (int)w[2 + 2 * t];
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) {
                CP_T m = dst[c], v = src[c];
#if CP_IS_FLOAT
                int take = (v > m) | (v != v);
#else
                int take = v > m;
#endif
                dst[c] = take ? v : m;
                kd[c] = take ? q : kd[c];
            }
        }
    }
}

#if CP_IS_FLOAT
/* f(v) of the sums: CP_SUM v, CP_SUM_ABS |v|, CP_SUM_SQ v*v, CP_SUM_POW |v|**p. One loop per
 * op so that each vectorizes (powf does not, and needs none of this). */
#define CL_SUM_LOOP(ASSIGN)                                                                \
    switch (op) {                                                                          \
    case CP_SUM: CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] ASSIGN src[c]; break;   \
    case CP_SUM_ABS:                                                                       \
        CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] ASSIGN CP_FABS(src[c]); break;   \
    case CP_SUM_SQ:                                                                        \
        CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] ASSIGN src[c] * src[c]; break;   \
    default:                                                                               \
        for (ptrdiff_t c = 0; c < nc; ++c) dst[c] ASSIGN CP_POW(CP_FABS(src[c]), p);       \
        break;                                                                             \
    }

/* out pixel o = (first) or += the sum of f(x) over its window's taps in `row`. */
static CP_TARGET void CP_FN(cl_row_sum)(void *out_, const void *row_, ptrdiff_t n,
                                        ptrdiff_t cs, ptrdiff_t nc, const ptrdiff_t *tab,
                                        ptrdiff_t ts, int first, int op, double p_)
{
    CP_T *out = (CP_T *)out_;
    const CP_T *row = (const CP_T *)row_;
    CP_T p = (CP_T)p_;
    for (ptrdiff_t o = 0; o < n; ++o) {
        const ptrdiff_t *w = tab + o * ts;
        CP_T *CP_RESTRICT dst = out + o * cs;
        ptrdiff_t t = 0;
        if (first) {
            if (w[0] == 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = 0;
                continue;
            }
            const CP_T *CP_RESTRICT src = row + w[1] * cs;
            CL_SUM_LOOP(=)
            t = 1;
        }
        for (; t < w[0]; ++t) {
            const CP_T *CP_RESTRICT src = row + w[1 + 2 * t] * cs;
            CL_SUM_LOOP(+=)
        }
    }
}
#undef CL_SUM_LOOP

/* Averages: pixel o /= row_div * its column divisor (small integers, exact); Lp: the p-th
 * root. */
static CP_TARGET void CP_FN(cl_row_finish)(void *out_, ptrdiff_t n, ptrdiff_t cs, ptrdiff_t nc,
                                           int op, double p, const cp_cols_t *cols,
                                           double row_div)
{
    CP_T *out = (CP_T *)out_;
    for (ptrdiff_t o = 0; o < n; ++o) {
        CP_T *CP_RESTRICT dst = out + o * cs;
        if (op == CP_SUM) {
            CP_T div = (CP_T)(row_div * cp_col_div(cols, o));
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = dst[c] / div;
        } else if (op == CP_SUM_SQ) {
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = CP_SQRT(dst[c]);
        } else if (op == CP_SUM_POW) {
            CP_T inv = (CP_T)1 / (CP_T)p;
            for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = CP_POW(dst[c], inv);
        }
    }
}

/* Max backward, one input row against one output row: input pixel i gets, for every
 * window o covering it with tap t (cover table), g[o] where the window's argmax is
 * base + t. first: the pixel starts from 0. Masks, not branches: argmaxes are random. */
#define CL_DEFINE_TAPADD(NAME, TAP_T)                                                      \
static CP_TARGET void CP_FN(NAME)(void *acc_, const void *g_, const void *taps_,            \
                                  ptrdiff_t n, ptrdiff_t cs, ptrdiff_t nc,                  \
                                  const ptrdiff_t *cover, ptrdiff_t ts, int base, int first)\
{                                                                                          \
    CP_T *acc = (CP_T *)acc_;                                                              \
    const CP_T *g = (const CP_T *)g_;                                                      \
    const TAP_T *taps = (const TAP_T *)taps_;                                              \
    for (ptrdiff_t i = 0; i < n; ++i) {                                                    \
        const ptrdiff_t *w = cover + i * ts;                                               \
        CP_T *CP_RESTRICT dst = acc + i * cs;                                              \
        if (first) { CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = 0; }              \
        for (ptrdiff_t a = 0; a < w[0]; ++a) {                                             \
            const CP_T *CP_RESTRICT src = g + w[1 + 2 * a] * cs;                           \
            const TAP_T *CP_RESTRICT tp = taps + w[1 + 2 * a] * cs;                        \
            int q = base + (int)w[2 + 2 * a];                                              \
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c)                                     \
                dst[c] += (int)tp[c] == q ? src[c] : (CP_T)0;                              \
        }                                                                                  \
    }                                                                                      \
}
CL_DEFINE_TAPADD(cl_row_tapadd_u8, unsigned char)
CL_DEFINE_TAPADD(cl_row_tapadd_i32, int)
#undef CL_DEFINE_TAPADD

/* Window-sum backward, one input row against one output row: input pixel i gets
 * g[o] / (row_div * the divisor of column o) for every window o covering it. first:
 * starts from 0. */
static CP_TARGET void CP_FN(cl_row_spread)(void *acc_, const void *g_, ptrdiff_t n,
                                           ptrdiff_t cs, ptrdiff_t nc, const ptrdiff_t *cover,
                                           ptrdiff_t ts, const cp_cols_t *cols, double row_div,
                                           int first)
{
    CP_T *acc = (CP_T *)acc_;
    const CP_T *g = (const CP_T *)g_;
    for (ptrdiff_t i = 0; i < n; ++i) {
        const ptrdiff_t *w = cover + i * ts;
        CP_T *CP_RESTRICT dst = acc + i * cs;
        if (first) { CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = 0; }
        for (ptrdiff_t a = 0; a < w[0]; ++a) {
            const CP_T *CP_RESTRICT src = g + w[1 + 2 * a] * cs;
            CP_T div = (CP_T)(row_div * cp_col_div(cols, w[1 + 2 * a]));
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] += src[c] / div;
        }
    }
}

static const cp_cl_t CP_FN(cp_cl) = {
    CP_FN(cl_fill), CP_FN(cl_row_max), CP_FN(cl_row_argmax), CP_FN(cl_row_sum),
    CP_FN(cl_row_finish), CP_FN(cl_row_tapadd_u8), CP_FN(cl_row_tapadd_i32),
    CP_FN(cl_row_spread),
};
#else
static const cp_cl_t CP_FN(cp_cl) = {
    CP_FN(cl_fill), CP_FN(cl_row_max), CP_FN(cl_row_argmax), NULL, NULL, NULL, NULL, NULL,
};
#endif
