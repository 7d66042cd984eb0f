/* The max of the value-only paths, for one element type and instruction set; included by
 * every *_impl.h that needs it (CP_FN, CP_T, CP_TARGET, CP_IS_FLOAT and, for floats,
 * CP_UINT come from the includer). No include guard: one copy per instantiation.
 *
 * Floats: NaN wins, whichever side it is on (PyTorch's rule). `v > m ? v : m` is one
 * maxps; OR-ing all-ones bits into the result when v is NaN keeps a new NaN for two more
 * instructions, where the textbook `(v > m || v != v) ? v : m` costs five. The NaN
 * produced may differ from the input's NaN in payload bits only. `v != v` is the NaN
 * test; it survives because we never build with fast-math flags. */
static inline CP_TARGET CP_T CP_FN(cp_max)(CP_T m, CP_T v)
{
#if CP_IS_FLOAT
    CP_T r = v > m ? v : m;
    CP_UINT bits;
    memcpy(&bits, &r, sizeof bits);
    bits |= (CP_UINT)0 - (CP_UINT)(v != v);
    memcpy(&r, &bits, sizeof r);
    return r;
#else
    return v > m ? v : m;
#endif
}
