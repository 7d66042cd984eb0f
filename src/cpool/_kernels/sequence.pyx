"""Masked sequence pooling kernels (sum/mean, max, first/last), forward and backward.

x is (N, L, C) ("NLC", channels last) or (N, C, L) ("NCL"). Row n's valid steps are
the l in [start[n], stop[n]) with, when use_mask is set, mask[n, l] != 0; the rules
(and how first/last reduce to a one-step range) live in cpool._sequence.

NLC work items are (n, block of channels) and vectorize over channels, reading only
the valid steps (cpool._sequence picks the block: whole rows stream best, smaller blocks
give small batches work for every thread); NCL items are (n, c) rows reduced along L. Each output element is
computed by one thread in a fixed order, so results are bitwise identical for every
thread count. Backward writes every element of grad_x once: no zero fill, no atomics.
"""
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from ._fused cimport floating_t

cdef extern from "select_rows.h" nogil:
    void cs_accumulate_f32(float *acc, const float *row, Py_ssize_t n, int first)
    void cs_accumulate_f64(double *acc, const double *row, Py_ssize_t n, int first)
    void cs_argmax_f32(float *m, int *arg, const float *row, Py_ssize_t n, int tap, int first)
    void cs_argmax_f64(double *m, int *arg, const double *row, Py_ssize_t n, int tap, int first)
    float cs_sum_f32(const float *row, const unsigned char *mask, Py_ssize_t n)
    double cs_sum_f64(const double *row, const unsigned char *mask, Py_ssize_t n)
    void cs_select_f32(float *out, const float *g, const int *arg, Py_ssize_t n, int tap)
    void cs_select_f64(double *out, const double *g, const int *arg, Py_ssize_t n, int tap)

cdef inline bint _valid(const unsigned char[:, ::1] mask, bint use_mask, Py_ssize_t n,
                        Py_ssize_t l) noexcept nogil:
    return not use_mask or mask[n, l] != 0


def sequence_sum(const floating_t[:, :, ::1] x,        # IN  (N, L, C) or (N, C, L)
                 floating_t[:, ::1] out,                # OUT (N, C)
                 const unsigned char[:, ::1] mask,      # IN  (N, L), read when use_mask
                 const Py_ssize_t[::1] start,           # IN  (N,)
                 const Py_ssize_t[::1] stop,            # IN  (N,)
                 const double[::1] divisor,             # IN  (N,) > 0
                 bint use_mask, bint nlc, Py_ssize_t block, int num_threads):
    """out[n, c] = (sum of x over row n's valid steps) / divisor[n]; 0 with no valid step.
    NLC adds the steps in order; NCL sums each row with a SIMD reduction."""
    cdef Py_ssize_t N = out.shape[0], C = out.shape[1]
    cdef Py_ssize_t nb = (C + block - 1) // block
    cdef Py_ssize_t item, n, c, c0, cw, l, i
    cdef floating_t *acc
    cdef floating_t d, s
    cdef int first
    if N == 0 or C == 0:
        return
    if nlc:
        for item in prange(N * nb, nogil=True, schedule='static', num_threads=num_threads):
            n = item // nb
            c0 = (item % nb) * block
            cw = min(block, C - c0)
            acc = &out[n, c0]
            first = 1
            for l in range(start[n], stop[n]):
                if _valid(mask, use_mask, n, l):
                    if floating_t is float:
                        cs_accumulate_f32(acc, &x[n, l, c0], cw, first)
                    else:
                        cs_accumulate_f64(acc, &x[n, l, c0], cw, first)
                    first = 0
            if first:
                memset(acc, 0, cw * sizeof(floating_t))
            elif divisor[n] != 1.0:
                d = <floating_t>divisor[n]
                for i in range(cw):
                    acc[i] = acc[i] / d
    else:
        for item in prange(N * C, nogil=True, schedule='static', num_threads=num_threads):
            n = item // C
            c = item % C
            if stop[n] <= start[n]:
                out[n, c] = 0
                continue
            if floating_t is float:
                s = cs_sum_f32(&x[n, c, start[n]], &mask[n, start[n]] if use_mask else NULL,
                               stop[n] - start[n])
            else:
                s = cs_sum_f64(&x[n, c, start[n]], &mask[n, start[n]] if use_mask else NULL,
                               stop[n] - start[n])
            out[n, c] = s / <floating_t>divisor[n]


def sequence_max(const floating_t[:, :, ::1] x,        # IN  (N, L, C) or (N, C, L)
                 floating_t[:, ::1] out,                # OUT (N, C)
                 int[:, ::1] arg,                       # OUT (N, C) when want_arg
                 const unsigned char[:, ::1] mask,      # IN  (N, L), read when use_mask
                 const Py_ssize_t[::1] start,           # IN  (N,)
                 const Py_ssize_t[::1] stop,            # IN  (N,)
                 bint use_mask, bint nlc, bint want_arg, Py_ssize_t block,
                 int num_threads):
    """out[n, c] = max over row n's valid steps (torch.max's rule: ties and NaN go to
    the first); arg = its step. A row with no valid step gives 0 and arg -1."""
    cdef Py_ssize_t N = out.shape[0], C = out.shape[1]
    cdef Py_ssize_t nb = (C + block - 1) // block
    cdef Py_ssize_t item, n, c, c0, cw, l, i, best
    cdef floating_t *m
    cdef int *a
    cdef floating_t v, mv
    cdef int first
    if N == 0 or C == 0:
        return
    if nlc:
        for item in prange(N * nb, nogil=True, schedule='static', num_threads=num_threads):
            n = item // nb
            c0 = (item % nb) * block
            cw = min(block, C - c0)
            m = &out[n, c0]
            a = &arg[n, c0] if want_arg else NULL
            first = 1
            for l in range(start[n], stop[n]):
                if _valid(mask, use_mask, n, l):
                    if floating_t is float:
                        cs_argmax_f32(m, a, &x[n, l, c0], cw, <int>l, first)
                    else:
                        cs_argmax_f64(m, a, &x[n, l, c0], cw, <int>l, first)
                    first = 0
            if first:
                for i in range(cw):
                    m[i] = 0
                    if want_arg:
                        a[i] = -1
    else:
        for item in prange(N * C, nogil=True, schedule='static', num_threads=num_threads):
            n = item // C
            c = item % C
            best = -1
            mv = 0
            for l in range(start[n], stop[n]):
                if _valid(mask, use_mask, n, l):
                    v = x[n, c, l]
                    if best < 0 or v > mv or (v != v and mv == mv):
                        mv = v
                        best = l
            out[n, c] = mv
            if want_arg:
                arg[n, c] = <int>best


def sequence_spread_backward(const floating_t[:, ::1] g,          # IN  (N, C)
                             floating_t[:, :, ::1] grad,          # OUT (N, L, C) or (N, C, L)
                             const unsigned char[:, ::1] mask,    # IN  (N, L), when use_mask
                             const Py_ssize_t[::1] start,         # IN  (N,)
                             const Py_ssize_t[::1] stop,          # IN  (N,)
                             bint use_mask, bint nlc, int num_threads):
    """grad[n, l, c] = g[n, c] on row n's valid steps, 0 elsewhere (sum, mean with g
    already divided, and first/last as one-step ranges)."""
    cdef Py_ssize_t N = g.shape[0], C = g.shape[1]
    cdef Py_ssize_t L = grad.shape[1] if nlc else grad.shape[2]
    cdef Py_ssize_t item, n, c, l, s, e
    cdef floating_t v
    cdef floating_t *row
    if N == 0 or C == 0 or L == 0:
        return
    if nlc:
        for item in prange(N * L, nogil=True, schedule='static', num_threads=num_threads):
            n = item // L
            l = item % L
            if start[n] <= l < stop[n] and _valid(mask, use_mask, n, l):
                memcpy(&grad[n, l, 0], &g[n, 0], C * sizeof(floating_t))
            else:
                memset(&grad[n, l, 0], 0, C * sizeof(floating_t))
    else:
        for item in prange(N * C, nogil=True, schedule='static', num_threads=num_threads):
            n = item // C
            c = item % C
            v = g[n, c]
            row = &grad[n, c, 0]
            s = start[n]
            e = stop[n]
            if e < s:
                e = s
            memset(row, 0, s * sizeof(floating_t))
            if use_mask:
                for l in range(s, e):
                    row[l] = v if mask[n, l] != 0 else 0
            else:
                for l in range(s, e):
                    row[l] = v
            memset(row + e, 0, (L - e) * sizeof(floating_t))


def sequence_max_backward(const floating_t[:, ::1] g,      # IN  (N, C)
                          const int[:, ::1] arg,           # IN  (N, C), -1: no valid step
                          floating_t[:, :, ::1] grad,      # OUT (N, L, C) or (N, C, L)
                          bint nlc, int num_threads):
    """grad[n, l, c] = g[n, c] where l == arg[n, c], 0 elsewhere."""
    cdef Py_ssize_t N = g.shape[0], C = g.shape[1]
    cdef Py_ssize_t L = grad.shape[1] if nlc else grad.shape[2]
    cdef Py_ssize_t item, n, c, l
    cdef int a
    if N == 0 or C == 0 or L == 0:
        return
    if nlc:
        for item in prange(N * L, nogil=True, schedule='static', num_threads=num_threads):
            n = item // L
            l = item % L
            if floating_t is float:
                cs_select_f32(&grad[n, l, 0], &g[n, 0], &arg[n, 0], C, <int>l)
            else:
                cs_select_f64(&grad[n, l, 0], &g[n, 0], &arg[n, 0], C, <int>l)
    else:
        for item in prange(N * C, nogil=True, schedule='static', num_threads=num_threads):
            n = item // C
            c = item % C
            memset(&grad[n, c, 0], 0, L * sizeof(floating_t))
            a = arg[n, c]
            if a >= 0:
                grad[n, c, a] = g[n, c]
