/* Transposes between channels-first planes and a channels-last block, for one instruction
 * set (CP_ISA, CP_TARGET); included by cl_rows_isa.h once per set, so no include guard.
 *
 *   dst[c * dld + r] = src[r * sld + c]   for r < rows, c < cols
 *
 * copies bits only, so 4-byte and 8-byte elements of any type share one function each.
 * Whole tiles (8 x 8 of 4 bytes and 4 x 4 of 8 bytes with AVX2, 4 x 4 and 2 x 2 with
 * SSE2) go through vector registers; the ragged edges are copied one element at a time.
 * Elementwise transposes cost more than the pooling of a small plane (measured), so these
 * are written with intrinsics rather than left to the vectorizer. */

#define CP_TR_PASTE_(a, b) a##b
#define CP_TR_PASTE(a, b) CP_TR_PASTE_(a, b)
#define CP_TR4 CP_TR_PASTE(cp_transpose4_, CP_ISA)
#define CP_TR8 CP_TR_PASTE(cp_transpose8_, CP_ISA)

/* The ragged edges: rows [r0, rows) of columns [0, cols) and rows [0, r0) of columns
 * [c0, cols), the parts no whole tile covers. memcpy: the bits of any element type. */
#define CP_TR_EDGES(T)                                                                     \
    for (ptrdiff_t r = 0; r < rows; ++r) {                                                 \
        for (ptrdiff_t c = r < r0 ? c0 : 0; c < cols; ++c)                                 \
            memcpy((T *)dst + c * dld + r, (const T *)src + r * sld + c, sizeof(T));       \
    }

#define CP_TR_TILE4 CP_TR_PASTE(cp_tile4_, CP_ISA)
#define CP_TR_TILE8 CP_TR_PASTE(cp_tile8_, CP_ISA)

/* Whole tiles in vector registers: N4 x N4 of 4-byte and N8 x N8 of 8-byte elements (0:
 * none on this target). */
#if CP_TR_AVX2
#define CP_TR_N4 8
#define CP_TR_N8 4
static inline CP_TARGET void CP_TR_TILE4(void *dst_, ptrdiff_t dld, const void *src_, ptrdiff_t sld)
{
    const float *p = (const float *)src_;
    float *q = (float *)dst_;
    __m256 a0 = _mm256_loadu_ps(p), a1 = _mm256_loadu_ps(p + sld);
    __m256 a2 = _mm256_loadu_ps(p + 2 * sld), a3 = _mm256_loadu_ps(p + 3 * sld);
    __m256 a4 = _mm256_loadu_ps(p + 4 * sld), a5 = _mm256_loadu_ps(p + 5 * sld);
    __m256 a6 = _mm256_loadu_ps(p + 6 * sld), a7 = _mm256_loadu_ps(p + 7 * sld);
    __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
    __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
    __m256 t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5);
    __m256 t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(q, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(q + dld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(q + 2 * dld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(q + 3 * dld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(q + 4 * dld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(q + 5 * dld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(q + 6 * dld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(q + 7 * dld, _mm256_permute2f128_ps(u3, u7, 0x31));
}

static inline CP_TARGET void CP_TR_TILE8(void *dst_, ptrdiff_t dld, const void *src_, ptrdiff_t sld)
{
    const double *p = (const double *)src_;
    double *q = (double *)dst_;
    __m256d a0 = _mm256_loadu_pd(p), a1 = _mm256_loadu_pd(p + sld);
    __m256d a2 = _mm256_loadu_pd(p + 2 * sld), a3 = _mm256_loadu_pd(p + 3 * sld);
    __m256d t0 = _mm256_unpacklo_pd(a0, a1), t1 = _mm256_unpackhi_pd(a0, a1);
    __m256d t2 = _mm256_unpacklo_pd(a2, a3), t3 = _mm256_unpackhi_pd(a2, a3);
    _mm256_storeu_pd(q, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(q + dld, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(q + 2 * dld, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(q + 3 * dld, _mm256_permute2f128_pd(t1, t3, 0x31));
}
#elif CP_TR_SSE2
#define CP_TR_N4 4
#define CP_TR_N8 2
static inline CP_TARGET void CP_TR_TILE4(void *dst_, ptrdiff_t dld, const void *src_, ptrdiff_t sld)
{
    const float *p = (const float *)src_;
    float *q = (float *)dst_;
    __m128 a0 = _mm_loadu_ps(p), a1 = _mm_loadu_ps(p + sld);
    __m128 a2 = _mm_loadu_ps(p + 2 * sld), a3 = _mm_loadu_ps(p + 3 * sld);
    _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
    _mm_storeu_ps(q, a0);
    _mm_storeu_ps(q + dld, a1);
    _mm_storeu_ps(q + 2 * dld, a2);
    _mm_storeu_ps(q + 3 * dld, a3);
}

static inline CP_TARGET void CP_TR_TILE8(void *dst_, ptrdiff_t dld, const void *src_, ptrdiff_t sld)
{
    const double *p = (const double *)src_;
    double *q = (double *)dst_;
    __m128d a0 = _mm_loadu_pd(p), a1 = _mm_loadu_pd(p + sld);
    _mm_storeu_pd(q, _mm_unpacklo_pd(a0, a1));
    _mm_storeu_pd(q + dld, _mm_unpackhi_pd(a0, a1));
}
#else
#define CP_TR_N4 0
#define CP_TR_N8 0
#endif

/* Whole tiles of N x N elements of type T, then the ragged edges one at a time. Tiles run
 * along the longer-strided side, which is the one in memory (the other is the block in
 * cache): reading planes, each plane is read front to back; writing them, each is
 * written front to back, whole cache lines at a time. */
#define CP_TR_BODY(T, N, TILE)                                                             \
    ptrdiff_t r0 = rows - rows % N, c0 = cols - cols % N;                                  \
    if (dld > sld) {                                                                       \
        for (ptrdiff_t c = 0; c < c0; c += N)                                              \
            for (ptrdiff_t r = 0; r < r0; r += N)                                          \
                TILE((T *)dst + c * dld + r, dld, (const T *)src + r * sld + c, sld);      \
    } else {                                                                               \
        for (ptrdiff_t r = 0; r < r0; r += N)                                              \
            for (ptrdiff_t c = 0; c < c0; c += N)                                          \
                TILE((T *)dst + c * dld + r, dld, (const T *)src + r * sld + c, sld);      \
    }                                                                                      \
    CP_TR_EDGES(T)

static CP_TARGET void CP_TR4(void *CP_RESTRICT dst, ptrdiff_t dld,
                             const void *CP_RESTRICT src, ptrdiff_t sld,
                             ptrdiff_t rows, ptrdiff_t cols)
{
#if CP_TR_N4 > 0
    CP_TR_BODY(uint32_t, CP_TR_N4, CP_TR_TILE4)
#else
    ptrdiff_t r0 = 0, c0 = 0;
    CP_TR_EDGES(uint32_t)
#endif
}

static CP_TARGET void CP_TR8(void *CP_RESTRICT dst, ptrdiff_t dld,
                             const void *CP_RESTRICT src, ptrdiff_t sld,
                             ptrdiff_t rows, ptrdiff_t cols)
{
#if CP_TR_N8 > 0
    CP_TR_BODY(uint64_t, CP_TR_N8, CP_TR_TILE8)
#else
    ptrdiff_t r0 = 0, c0 = 0;
    CP_TR_EDGES(uint64_t)
#endif
}

#undef CP_TR_BODY
#undef CP_TR_TILE4
#undef CP_TR_TILE8
#undef CP_TR_N4
#undef CP_TR_N8
#undef CP_TR_EDGES
#undef CP_TR4
#undef CP_TR8
#undef CP_TR_PASTE
#undef CP_TR_PASTE_
