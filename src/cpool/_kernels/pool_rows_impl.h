/* Row primitives for one float type; included twice by pool_rows.h with CP_T set to float
 * and to double (C has no templates). CP_FN(name) appends the type suffix. */
static inline void CP_FN(cp_fill)(CP_T *CP_RESTRICT a, ptrdiff_t n, CP_T v)
{
    CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) a[i] = v;
}

/* acc = row (first) or acc = max(acc, row). */
static inline void CP_FN(cp_vmax)(CP_T *CP_RESTRICT acc, const CP_T *CP_RESTRICT row,
                                 ptrdiff_t n, int first)
{
    if (first) {
        CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) acc[i] = row[i];
    } else {
        CP_SIMD for (ptrdiff_t i = 0; i < n; ++i) {
            CP_T m = acc[i], v = row[i];
            acc[i] = CP_MAX(m, v);
        }
    }
}

/* acc = f(row) (first) or acc += f(row), f chosen by `op`. */
static inline void CP_FN(cp_vsum)(CP_T *CP_RESTRICT acc, const CP_T *CP_RESTRICT row,
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
static inline void CP_FN(cp_hmax)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT acc,
                                 ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)
{
    if (d == 1 && s == 2 && k == 2) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[2 * o], v = acc[2 * o + 1];
            out[o] = CP_MAX(m, v);
        }
    } else if (d == 1 && s == 2 && k == 3) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[2 * o], v1 = acc[2 * o + 1], v2 = acc[2 * o + 2];
            m = CP_MAX(m, v1);
            out[o] = CP_MAX(m, v2);
        }
    } else if (d == 1 && s == 1 && k == 3) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[o], v1 = acc[o + 1], v2 = acc[o + 2];
            m = CP_MAX(m, v1);
            out[o] = CP_MAX(m, v2);
        }
    } else if (d == 1 && s == 1 && k == 2) {
        CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) {
            CP_T m = acc[o], v = acc[o + 1];
            out[o] = CP_MAX(m, v);
        }
    } else {
        for (ptrdiff_t o = 0; o < n; ++o) {
            const CP_T *w = acc + o * s;
            CP_T m = w[0];
            for (ptrdiff_t t = 1; t < k; ++t) { CP_T v = w[t * d]; m = CP_MAX(m, v); }
            out[o] = m;
        }
    }
}

/* out[o] = sum_k acc[o*s + k*d], summed in scan order. */
static inline void CP_FN(cp_hsum)(CP_T *CP_RESTRICT out, const CP_T *CP_RESTRICT acc,
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

/* Average: out[o] = out[o] / (row_div * col_div[o]). */
static inline void CP_FN(cp_divide)(CP_T *CP_RESTRICT out, const double *CP_RESTRICT col_div,
                                   ptrdiff_t n, double row_div)
{
    CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) out[o] = out[o] / (CP_T)(row_div * col_div[o]);
}

/* Lp norm: out[o] = out[o] ** (1/p). */
static inline void CP_FN(cp_root)(CP_T *CP_RESTRICT out, ptrdiff_t n, int op, CP_T p)
{
    if (op == CP_SUM_ABS) return;
    if (op == CP_SUM_SQ) { CP_SIMD for (ptrdiff_t o = 0; o < n; ++o) out[o] = CP_SQRT(out[o]); return; }
    CP_T inv = (CP_T)1 / p;
    for (ptrdiff_t o = 0; o < n; ++o) out[o] = CP_POW(out[o], inv);
}

/* Horizontal max with the within-row argmax `tap` (scan order, NaN wins, ties keep
 * the first). `first_tap[o]` is the first tap inside the input, PyTorch's index for
 * a window whose values are all -inf. */
static inline void CP_FN(cp_hargmax)(CP_T *CP_RESTRICT out, int *CP_RESTRICT tap,
                                    const CP_T *CP_RESTRICT acc, const int *CP_RESTRICT first_tap,
                                    ptrdiff_t n, ptrdiff_t k, ptrdiff_t s, ptrdiff_t d)
{
    for (ptrdiff_t o = 0; o < n; ++o) {
        const CP_T *w = acc + o * s;
        CP_T m = -INFINITY;
        int best = first_tap[o];
        for (ptrdiff_t t = 0; t < k; ++t) {
            CP_T v = w[t * d];
            if (v > m || v != v) { m = v; best = (int)t; }
        }
        out[o] = m;
        tap[o] = best;
    }
}
