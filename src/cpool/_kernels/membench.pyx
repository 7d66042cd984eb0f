"""The read-once memory floor that tools/bench.py compares every pooling kernel with.

A pooling forward pass must read its input once and write its output once; nothing can
be faster than a kernel that does exactly that and (almost) nothing else. `stream_fold`
is that kernel. out is cut into blocks of 2048 elements; each block owns the matching
contiguous slice of x (n_in/n_out elements per output element, as pooling does, or
fewer than one when the output is the larger, as in RoI pooling); the slice is folded
into 16 summing lanes held in registers, and the block of out is written from the lanes.
Both arrays stream sequentially, parallel over blocks with a static schedule and the
caller's thread count. Not a pooling operator: for benchmarks only.
"""
from cython.parallel cimport parallel, prange

from ._fused cimport floating_t

cdef extern from *:
    """
    /* Fold x[0:n] into 16 summing lanes, then write out[0:m] from them (lanes repeat).
       A sum, not a max: GCC vectorizes the 16 independent lanes at -O3 with SSE2. */
    #define CP_MB_FOLD(NAME, T)                                                      \\
    static void NAME(const T *restrict x, Py_ssize_t n, T *restrict out,             \\
                     Py_ssize_t m) {                                                 \\
        T acc[16] = {0};                                                             \\
        Py_ssize_t i = 0, l, j = 0;                                                  \\
        for (; i + 16 <= n; i += 16)                                                 \\
            for (l = 0; l < 16; l++) acc[l] += x[i + l];                             \\
        for (; i < n; i++) acc[i & 15] += x[i];                                      \\
        for (; j + 16 <= m; j += 16)                                                 \\
            for (l = 0; l < 16; l++) out[j + l] = acc[l];                            \\
        for (; j < m; j++) out[j] = acc[j & 15];                                     \\
    }
    CP_MB_FOLD(cp_mb_fold_f32, float)
    CP_MB_FOLD(cp_mb_fold_f64, double)
    """
    void cp_mb_fold_f32(const float *x, Py_ssize_t n, float *out, Py_ssize_t m) noexcept nogil
    void cp_mb_fold_f64(const double *x, Py_ssize_t n, double *out, Py_ssize_t m) noexcept nogil

# Output elements per block: large enough to amortize the fold's setup, small enough that
# every thread gets many blocks even for small outputs.
cdef enum:
    BLOCK = 2048


cdef inline Py_ssize_t _input_start(Py_ssize_t j, Py_ssize_t q, Py_ssize_t r,
                                    Py_ssize_t n_out) noexcept nogil:
    """First input element of output element j: floor(j * n_in / n_out) without overflow."""
    return j * q + (j * r) // n_out


def stream_fold(const floating_t[::1] x,   # IN  (n_in,)
                floating_t[::1] out,       # OUT (n_out,), any size
                int num_threads):
    """Read every element of x once and write every element of out once (see module doc)."""
    cdef Py_ssize_t n_in = x.shape[0], n_out = out.shape[0]
    cdef Py_ssize_t block = BLOCK
    cdef Py_ssize_t n_blocks, b, j0, j1, i0, i1, q, r
    if n_out == 0:
        return
    q = n_in // n_out
    r = n_in % n_out
    n_blocks = (n_out + block - 1) // block
    with nogil, parallel(num_threads=num_threads):
        for b in prange(n_blocks, schedule='static'):
            j0 = b * block
            j1 = j0 + block if j0 + block < n_out else n_out
            i0 = _input_start(j0, q, r, n_out)
            i1 = _input_start(j1, q, r, n_out)
            if floating_t is float:
                cp_mb_fold_f32(&x[i0], i1 - i0, &out[j0], j1 - j0)
            else:
                cp_mb_fold_f64(&x[i0], i1 - i0, &out[j0], j1 - j0)
