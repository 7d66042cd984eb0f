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


static CP_TARGET void CP_FN(cl_fill)(void *a_, ptrdiff_t n, ptrdiff_t cs, ptrdiff_t nc, int lowest)
{
    CP_T *CP_RESTRICT a = (CP_T *)a_;
    CP_T v = lowest ? CP_LOWEST : (CP_T)0;
    for (ptrdiff_t o = 0; o < n; ++o) {
        CP_T *CP_RESTRICT dst = a + o * cs;
        CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = v;
    }
}

/* Vertical pass of the separable forward: acc pixel i (stride nc) = the reduction, over
 * the n_rows input rows under the window (pixel stride cs), of pixel i: max (op < 0), or
 * the sum of f(x) (op CP_SUM..CP_SUM_POW, see CL_SUM_LOOP) in scan order. Two and three
 * rows, the common kernels, are fused so that acc is written once. */
static CP_TARGET void CP_FN(cl_vreduce)(void *acc_, const void *const *rows_, ptrdiff_t n_rows,
                                        ptrdiff_t width, ptrdiff_t cs, ptrdiff_t nc, int op,
                                        double p_)
{
    CP_T *acc = (CP_T *)acc_;
    const CP_T *const *rows = (const CP_T *const *)rows_;
    if (cs == nc) {  /* whole rows are contiguous (a plane block): one loop per row */
        nc *= width;
        width = 1;
    }
    for (ptrdiff_t i = 0; i < width; ++i) {
        CP_T *CP_RESTRICT dst = acc + i * nc;
        const CP_T *CP_RESTRICT r0 = rows[0] + i * cs;
        if (op < 0) {
            if (n_rows == 1) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = r0[c];
            } else if (n_rows == 2) {
                const CP_T *CP_RESTRICT r1 = rows[1] + i * cs;
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = CP_FN(cp_max)(r0[c], r1[c]);
            } else if (n_rows == 3) {
                const CP_T *CP_RESTRICT r1 = rows[1] + i * cs, *CP_RESTRICT r2 = rows[2] + i * cs;
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c)
                    dst[c] = CP_FN(cp_max)(CP_FN(cp_max)(r0[c], r1[c]), r2[c]);
            } else {
                /* Four rows, then three at a time: acc is loaded and stored once per group
                 * (not once per row), and each element still takes the rows in order. */
                const CP_T *CP_RESTRICT r1 = rows[1] + i * cs, *CP_RESTRICT r2 = rows[2] + i * cs;
                const CP_T *CP_RESTRICT r3 = rows[3] + i * cs;
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c)
                    dst[c] = CP_FN(cp_max)(CP_FN(cp_max)(CP_FN(cp_max)(r0[c], r1[c]), r2[c]),
                                           r3[c]);
                ptrdiff_t r = 4;
                for (; r + 3 <= n_rows; r += 3) {
                    const CP_T *CP_RESTRICT a = rows[r] + i * cs;
                    const CP_T *CP_RESTRICT b = rows[r + 1] + i * cs;
                    const CP_T *CP_RESTRICT d = rows[r + 2] + i * cs;
                    CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c)
                        dst[c] = CP_FN(cp_max)(CP_FN(cp_max)(CP_FN(cp_max)(dst[c], a[c]), b[c]),
                                               d[c]);
                }
                for (; r < n_rows; ++r) {
                    const CP_T *CP_RESTRICT src = rows[r] + i * cs;
                    CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c)
                        dst[c] = CP_FN(cp_max)(dst[c], src[c]);
                }
            }
        }
#if CP_IS_FLOAT
        else {
            CP_T p = (CP_T)p_;
            const CP_T *CP_RESTRICT src = r0;
            if (op == CP_SUM && n_rows == 2) {
                const CP_T *CP_RESTRICT r1 = rows[1] + i * cs;
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = r0[c] + r1[c];
                continue;
            }
            if (op == CP_SUM && n_rows == 3) {
                const CP_T *CP_RESTRICT r1 = rows[1] + i * cs, *CP_RESTRICT r2 = rows[2] + i * cs;
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = (r0[c] + r1[c]) + r2[c];
                continue;
            }
            CL_SUM_LOOP(=)
            for (ptrdiff_t r = 1; r < n_rows; ++r) {
                src = rows[r] + i * cs;
                CL_SUM_LOOP(+=)
            }
        }
#endif
    }
}

/* Horizontal pass: the reduction of acc (pixel stride as) over each output pixel o's
 * window taps: max (op < 0) or sum (op >= 0; f is applied vertically), stored in out
 * pixel o (stride cs) when `first`, else combined with it (the direct form: one call per
 * input row, when windows do not overlap and a row buffer would only add a pass). A
 * window without taps gets the lowest value or 0 when first.
 * `fuse`: reduce up to three taps in one pass. That pays when acc is in cache (the row
 * buffer); taps read from memory stream better one after another (measured: 2x2/2
 * direct is 1.6x slower fused).
 * `cols` (sums of op CP_SUM only; else NULL): this call completes the sums, and the pass
 * that adds a window's last tap also divides it as cl_row_finish would, to the same bits,
 * instead of a pass of its own over the row. */
static CP_TARGET void CP_FN(cl_hreduce)(void *out_, const void *acc_, ptrdiff_t n,
                                        ptrdiff_t cs, ptrdiff_t as, ptrdiff_t nc,
                                        const ptrdiff_t *tab, ptrdiff_t ts, int op, int first,
                                        int fuse, const cp_cols_t *cols, double row_div)
{
    CP_T *out = (CP_T *)out_;
    const CP_T *acc = (const CP_T *)acc_;
#if CP_IS_FLOAT
    const int fin = cols != NULL;
#else
    const int fin = 0;
    (void)cols;
    (void)row_div;
#endif
/* dst = EXPR, divided when LAST (the window's last tap) in a completing call */
#define CL_PUT(EXPR, LAST)                                                                 \
    do {                                                                                   \
        if (!(fin && (LAST))) {                                                            \
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = (EXPR);                    \
        } else if (inv != 0) {                                                             \
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = (EXPR) * inv;              \
        } else {                                                                           \
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = (EXPR) / div;              \
        }                                                                                  \
    } while (0)
    for (ptrdiff_t o = 0; o < n; ++o) {
        const ptrdiff_t *w = tab + o * ts;
        const ptrdiff_t n_taps = w[0];
        CP_T *CP_RESTRICT dst = out + o * cs;
        CP_T div = 1, inv = 1;
#if CP_IS_FLOAT
        if (fin) {
            div = (CP_T)(row_div * cp_col_div(cols, o));
            inv = (CP_T)cp_exact_reciprocal(div);
        }
#endif
        ptrdiff_t t = 0;
        if (first) {
            if (n_taps == 0) {
                CL_PUT(op < 0 ? CP_LOWEST : (CP_T)0, 1);
                continue;
            }
            const CP_T *CP_RESTRICT a0 = acc + w[1] * as;
            if (!fuse || n_taps == 1) {
                CL_PUT(a0[c], n_taps == 1);
                t = 1;
            } else if (n_taps == 2) {
                const CP_T *CP_RESTRICT a1 = acc + w[3] * as;
                if (op < 0) {
                    CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = CP_FN(cp_max)(a0[c], a1[c]);
                }
#if CP_IS_FLOAT
                else { CL_PUT(a0[c] + a1[c], 1); }
#endif
                t = 2;
            } else {
                const CP_T *CP_RESTRICT a1 = acc + w[3] * as, *CP_RESTRICT a2 = acc + w[5] * as;
                if (op < 0) {
                    CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c)
                        dst[c] = CP_FN(cp_max)(CP_FN(cp_max)(a0[c], a1[c]), a2[c]);
                }
#if CP_IS_FLOAT
                else { CL_PUT((a0[c] + a1[c]) + a2[c], n_taps == 3); }
#endif
                t = 3;
            }
        } else if (fin && n_taps == 0) {  /* no tap in this row: the sums are complete */
            CL_PUT(dst[c], 1);
            continue;
        }
        /* the rest three taps at a time (dst loaded and stored once per three), in order */
        for (; t + 3 <= n_taps; t += 3) {
            const CP_T *CP_RESTRICT a = acc + w[1 + 2 * t] * as;
            const CP_T *CP_RESTRICT b = acc + w[3 + 2 * t] * as;
            const CP_T *CP_RESTRICT d = acc + w[5 + 2 * t] * as;
            if (op < 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c)
                    dst[c] = CP_FN(cp_max)(CP_FN(cp_max)(CP_FN(cp_max)(dst[c], a[c]), b[c]),
                                           d[c]);
            }
#if CP_IS_FLOAT
            else { CL_PUT(((dst[c] + a[c]) + b[c]) + d[c], t + 3 == n_taps); }
#endif
        }
        for (; t < n_taps; ++t) {
            const CP_T *CP_RESTRICT src = acc + w[1 + 2 * t] * as;
            if (op < 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = CP_FN(cp_max)(dst[c], src[c]);
            }
#if CP_IS_FLOAT
            else { CL_PUT(dst[c] + src[c], t + 1 == n_taps); }
#endif
        }
    }
#undef CL_PUT
}

/* out pixel o = max over its window's taps in `row` (first: the row is the window's first
 * input row), or the running max with them, tracking each channel's argmax as the tap
 * number base + t in `key` (n x nc, contiguous). Taps are visited in scan order and one replaces the running max
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

/* dst[c * dld + r] = src[r * sld + c] for r < rows, c < cols: channels-first planes to a
 * channels-last block and back (cl_transpose.h for 4- and 8-byte elements). */
static CP_TARGET void CP_FN(cl_transpose)(void *dst, ptrdiff_t dld, const void *src,
                                          ptrdiff_t sld, ptrdiff_t rows, ptrdiff_t cols)
{
    if (sizeof(CP_T) == 4) {
        CP_PASTE(cp_transpose4_, CP_ISA, )(dst, dld, src, sld, rows, cols);
    } else if (sizeof(CP_T) == 8) {
        CP_PASTE(cp_transpose8_, CP_ISA, )(dst, dld, src, sld, rows, cols);
    } else {
        for (ptrdiff_t r = 0; r < rows; ++r)
            for (ptrdiff_t c = 0; c < cols; ++c)
                ((CP_T *)dst)[c * dld + r] = ((const CP_T *)src)[r * sld + c];
    }
}

#if CP_IS_FLOAT
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
            CP_T inv = (CP_T)cp_exact_reciprocal(div);
            if (inv != 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = dst[c] * inv;
            } else {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = dst[c] / div;
            }
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

/* Window-sum backward along W: input pixel i (stride cs) gets the sum of g[o] (stride gs)
 * over the windows o covering it (cover table), from 0. g is the covering output rows'
 * gradients summed vertically (cl_vreduce); averages pass them already divided. */
static CP_TARGET void CP_FN(cl_row_spread)(void *acc_, const void *g_, ptrdiff_t n,
                                           ptrdiff_t cs, ptrdiff_t gs, ptrdiff_t nc,
                                           const ptrdiff_t *cover, ptrdiff_t ts)
{
    CP_T *acc = (CP_T *)acc_;
    const CP_T *g = (const CP_T *)g_;
    for (ptrdiff_t i = 0; i < n; ++i) {
        const ptrdiff_t *w = cover + i * ts;
        CP_T *CP_RESTRICT dst = acc + i * cs;
        if (w[0] == 0) { CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = 0; continue; }
        const CP_T *CP_RESTRICT g0 = g + w[1] * gs;
        if (w[0] == 1) {
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = g0[c];
        } else if (w[0] == 2) {
            const CP_T *CP_RESTRICT g1 = g + w[3] * gs;
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = g0[c] + g1[c];
        } else {
            const CP_T *CP_RESTRICT g1 = g + w[3] * gs, *CP_RESTRICT g2 = g + w[5] * gs;
            CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = (g0[c] + g1[c]) + g2[c];
            for (ptrdiff_t a = 3; a < w[0]; ++a) {
                const CP_T *CP_RESTRICT src = g + w[1 + 2 * a] * gs;
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] += src[c];
            }
        }
    }
}

/* The averages' cl_vreduce for their backward: acc pixel i (stride nc) = the sum, over
 * the n_rows output rows (pixel stride cs) in order, of row r's pixel i divided by
 * row_div[r] * its column divisor. Each term is rounded as dividing grad_output by
 * the divisors first would round it (times the reciprocal only where that is exact), so
 * the bits are those of the division followed by cl_vreduce, without its array. */
static CP_TARGET void CP_FN(cl_vreduce_div)(void *acc_, const void *const *rows_,
                                            ptrdiff_t n_rows, ptrdiff_t width, ptrdiff_t cs,
                                            ptrdiff_t nc, const double *row_div,
                                            const cp_cols_t *cols)
{
    CP_T *acc = (CP_T *)acc_;
    const CP_T *const *rows = (const CP_T *const *)rows_;
    for (ptrdiff_t i = 0; i < width; ++i) {
        CP_T *CP_RESTRICT dst = acc + i * nc;
        const double col = cp_col_div(cols, i);
        for (ptrdiff_t r = 0; r < n_rows; ++r) {
            const CP_T *CP_RESTRICT src = rows[r] + i * cs;
            const CP_T div = (CP_T)(row_div[r] * col);
            const CP_T inv = (CP_T)cp_exact_reciprocal(div);
            if (r == 0 && inv != 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = src[c] * inv;
            } else if (r == 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] = src[c] / div;
            } else if (inv != 0) {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] += src[c] * inv;
            } else {
                CP_SIMD for (ptrdiff_t c = 0; c < nc; ++c) dst[c] += src[c] / div;
            }
        }
    }
}

static const cp_cl_t CP_FN(cp_cl) = {
    CP_FN(cl_fill), CP_FN(cl_vreduce), CP_FN(cl_hreduce), CP_FN(cl_row_argmax),
    CP_FN(cl_transpose), CP_FN(cl_row_finish), CP_FN(cl_row_tapadd_u8), CP_FN(cl_row_tapadd_i32),
    CP_FN(cl_row_spread), CP_FN(cl_vreduce_div),
};
#else
static const cp_cl_t CP_FN(cp_cl) = {
    CP_FN(cl_fill), CP_FN(cl_vreduce), CP_FN(cl_hreduce), CP_FN(cl_row_argmax),
    CP_FN(cl_transpose), NULL, NULL, NULL, NULL, NULL,
};
#endif
