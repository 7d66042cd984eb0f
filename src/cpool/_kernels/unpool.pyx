"""Max-unpooling kernels.

The forward (a per-plane scatter) is pool.scatter_planes with accumulate=False; this
module holds its backward, a per-plane gather. Inputs are validated by cpool._unpool.
"""
from cython.parallel cimport prange

from ._fused cimport floating_t


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
