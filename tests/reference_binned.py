"""Slow, obviously-correct NumPy references for bin pooling (global, adaptive, binned,
spatial pyramid), forward and backward. Plain loops over every output element; all
arithmetic in float64. Never used by cpool itself."""
import itertools
import math
from fractions import Fraction

import numpy as np


def ref_adaptive_bins(length, out):
    """PyTorch's rule, with exact rational arithmetic: [floor(i*L/O), ceil((i+1)*L/O))."""
    return [(math.floor(Fraction(i * length, out)), math.ceil(Fraction((i + 1) * length, out)))
            for i in range(out)]


def ref_whole_bins(spatial):
    return [[(0, L)] for L in spatial]


def _boxes(spatial, bins):
    """Yield (output multi-index, list of (flat index in plane, multi-index)) in scan order."""
    for out_idx in itertools.product(*[range(len(b)) for b in bins]):
        ranges = [range(*bins[a][o]) for a, o in enumerate(out_idx)]
        cells = [(int(np.ravel_multi_index(pos, spatial)), pos)
                 for pos in itertools.product(*ranges)]
        yield out_idx, cells


def ref_bin_pool(x, bins, mode="max", p=2.0):
    """(out, indices) for x of shape (N, C, *spatial); indices (flat per plane, int64) for
    "max" only: the running max is replaced when v > m or v is NaN, starting from -inf
    with the bin's first element as index."""
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape[:2]
    spatial = x.shape[2:]
    out_shape = (N, C) + tuple(len(b) for b in bins)
    out = np.zeros(out_shape)
    idx = np.zeros(out_shape, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            plane = x[n, c].ravel()
            for out_idx, cells in _boxes(spatial, bins):
                values = [plane[f] for f, _ in cells]
                if mode == "max":
                    m, best = -math.inf, cells[0][0]
                    for (f, _), v in zip(cells, values):
                        if v > m or math.isnan(v):
                            m, best = v, f
                    out[(n, c) + out_idx] = m
                    idx[(n, c) + out_idx] = best
                elif mode == "avg":
                    out[(n, c) + out_idx] = sum(values) / len(values)
                else:
                    out[(n, c) + out_idx] = sum(abs(v) ** p for v in values) ** (1.0 / p)
    return out, idx


def ref_bin_pool_backward(grad_output, x, bins, mode="max", p=2.0):
    """d(sum(grad_output * bin_pool(x)))/dx by loops over outputs."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad_output, dtype=np.float64)
    y, idx = ref_bin_pool(x, bins, mode, p)
    N, C = x.shape[:2]
    spatial = x.shape[2:]
    grad = np.zeros(x.shape)
    for n in range(N):
        for c in range(C):
            plane = x[n, c].ravel()
            gplane = grad[n, c].reshape(-1)
            for out_idx, cells in _boxes(spatial, bins):
                go = g[(n, c) + out_idx]
                if mode == "max":
                    gplane[idx[(n, c) + out_idx]] += go
                elif mode == "avg":
                    for f, _ in cells:
                        gplane[f] += go / len(cells)
                else:
                    yo = y[(n, c) + out_idx]
                    for f, _ in cells:
                        v = plane[f]
                        if yo > 0 and v != 0:
                            gplane[f] += go * math.copysign(abs(v) ** (p - 1), v) / yo ** (p - 1)
    return grad


def ref_adaptive_pool(x, output_size, mode):
    spatial = x.shape[2:]
    bins = [ref_adaptive_bins(L, o) for L, o in zip(spatial, output_size)]
    return ref_bin_pool(x, bins, mode)


def ref_spatial_pyramid_pool(x, levels, mode):
    N = x.shape[0]
    parts = []
    for level in levels:
        out, _ = ref_adaptive_pool(x, (level, level), mode)
        parts.append(out.reshape(N, -1))
    return np.concatenate(parts, axis=1)


def ref_spatial_pyramid_pool_backward(grad_output, x, levels, mode):
    N, C, H, W = x.shape
    grad = np.zeros(x.shape)
    start = 0
    for level in levels:
        width = C * level * level
        g = np.asarray(grad_output)[:, start:start + width].reshape(N, C, level, level)
        bins = [ref_adaptive_bins(H, level), ref_adaptive_bins(W, level)]
        grad += ref_bin_pool_backward(g, x, bins, mode)
        start += width
    return grad
