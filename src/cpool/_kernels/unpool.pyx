"""Max-unpooling kernels, and the channels-last scatter that fractional max pooling's
backward shares.

Channels-first: the forward (a per-plane scatter) is pool.scatter_planes with
accumulate=False; this module holds its backward, a per-plane gather.
Channels-last: arrays are (B, M, C) with C contiguous and indices flat within each
(b, c) plane; scatter_cl and gather_cl are the forward and backward. Inputs are
validated by cpool._unpool (and cpool._fractional).
"""
from cython.parallel cimport prange

from ._fused cimport floating_t, max_t

# Channel blocks of the channels-last scatter: whole rows when there are enough samples
# to share out, else blocks of at least this many channels.
cdef Py_ssize_t MIN_BLOCK = 16


def gather_planes(const floating_t[:, ::1] src,      # IN  (P, L)
                  const long long[:, ::1] indices,   # IN  (P, M), each in [0, L)
                  floating_t[:, ::1] out,            # OUT (P, M)
                  int num_threads):
    """out[p, m] = src[p, indices[p, m]]: the gradient of max unpooling.

    Work is split over flattened (plane, element) so that few planes still use every
    thread; each output is written once, so any thread count gives the same result.
    """
    cdef Py_ssize_t P = indices.shape[0], M = indices.shape[1]
    cdef Py_ssize_t r
    if M == 0:
        return
    for r in prange(P * M, nogil=True, schedule='static', num_threads=num_threads):
        out[r // M, r % M] = src[r // M, indices[r // M, r % M]]


def scatter_cl(const max_t[:, :, ::1] values,        # IN  (B, M, C)
               const long long[:, :, ::1] indices,   # IN  (B, M, C), each in [0, L)
               max_t[:, :, ::1] out,                 # OUT (B, L, C), zero on entry
               bint accumulate, int num_threads):
    """out[b, indices[b, m, c], c] (+)= values[b, m, c], in m order for every (b, c).

    accumulate=False is max unpooling (a later duplicate overwrites); True is the
    backward of max pooling from indices. Work items are (sample, channel block); each
    (b, c) belongs to one item, which walks m in order, so any thread count gives the
    same result.
    """
    cdef Py_ssize_t B = values.shape[0], M = values.shape[1], C = values.shape[2]
    cdef Py_ssize_t n_blocks = 1, cb, item, b, c0, c1, m, c
    if B < num_threads:
        n_blocks = min((num_threads + B - 1) // B, (C + MIN_BLOCK - 1) // MIN_BLOCK)
    cb = (C + n_blocks - 1) // n_blocks if C > 0 else 1
    n_blocks = (C + cb - 1) // cb
    if B * M * n_blocks == 0:
        return
    for item in prange(B * n_blocks, nogil=True, schedule='static', num_threads=num_threads):
        b = item // n_blocks
        c0 = (item % n_blocks) * cb
        c1 = min(c0 + cb, C)
        for m in range(M):
            if accumulate:
                for c in range(c0, c1):
                    out[b, indices[b, m, c], c] += values[b, m, c]
            else:
                for c in range(c0, c1):
                    out[b, indices[b, m, c], c] = values[b, m, c]


def gather_cl(const floating_t[:, :, ::1] src,       # IN  (B, L, C)
              const long long[:, :, ::1] indices,    # IN  (B, M, C), each in [0, L)
              floating_t[:, :, ::1] out,             # OUT (B, M, C)
              int num_threads):
    """out[b, m, c] = src[b, indices[b, m, c], c]: the gradient of channels-last max
    unpooling. Parallel over flattened (sample, element); each output is written once."""
    cdef Py_ssize_t B = indices.shape[0], M = indices.shape[1], C = indices.shape[2]
    cdef Py_ssize_t r, b, m, c
    if M * C == 0:
        return
    for r in prange(B * M, nogil=True, schedule='static', num_threads=num_threads):
        b = r // M
        m = r % M
        for c in range(C):
            out[b, m, c] = src[b, indices[b, m, c], c]
