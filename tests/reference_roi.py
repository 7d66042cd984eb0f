"""Slow, obviously-correct NumPy references for RoI pooling and RoI align.

They follow the rules written in cpool._roi line by line, one output and one sample at
a time (vectorized over channels only). Coordinates are computed in x's float type, as
torchvision and onnxruntime do; interpolation weights in float64.
"""
import math

import numpy as np


def c_round(v):
    """C's round(): halves away from zero (Python's round() goes to even)."""
    a = abs(float(v))
    f = math.floor(a)
    r = f + (1 if a - f >= 0.5 else 0)
    return int(r if v >= 0 else -r)


def torch_max_rule(values):
    """(index, value) of the max of a 1-D sequence: ties and NaN go to the first."""
    best = 0
    for i in range(1, len(values)):
        v, m = values[i], values[best]
        if v > m or (v != v and m == m):
            best = i
    return best, values[best]


def _pool_bins(c1, c2, scale, size, out, T):
    start = c_round(T(c1) * T(scale))
    end = c_round(T(c2) * T(scale))
    bin_size = T(max(end - start + 1, 1)) / T(out)
    bins = []
    for p in range(out):
        lo = math.floor(T(p) * bin_size) + start
        hi = math.ceil(T(p + 1) * bin_size) + start
        bins.append((min(max(lo, 0), size), min(max(hi, 0), size)))
    return bins


def roi_pool(x, rois, batch_indices, output_size, spatial_scale=1.0):
    """(out, argmax): argmax flat within the plane, -1 for an empty bin (output 0)."""
    T = x.dtype.type
    _, C, H, W = x.shape
    OH, OW = output_size
    K = len(rois)
    out = np.zeros((K, C, OH, OW), dtype=x.dtype)
    arg = np.full((K, C, OH, OW), -1, dtype=np.int64)
    for k in range(K):
        x1, y1, x2, y2 = (T(v) for v in rois[k])
        ybins = _pool_bins(y1, y2, spatial_scale, H, OH, T)
        xbins = _pool_bins(x1, x2, spatial_scale, W, OW, T)
        plane = x[batch_indices[k]].reshape(C, H * W)
        for ph, (h0, h1) in enumerate(ybins):
            for pw, (w0, w1) in enumerate(xbins):
                pixels = [h * W + w for h in range(h0, h1) for w in range(w0, w1)]
                if not pixels:
                    continue
                for c in range(C):
                    i, v = torch_max_rule([plane[c, p] for p in pixels])
                    out[k, c, ph, pw] = v
                    arg[k, c, ph, pw] = pixels[i]
    return out, arg


def roi_pool_grad(grad_output, argmax, batch_indices, input_shape):
    grad = np.zeros(input_shape, dtype=grad_output.dtype)
    N, C, H, W = input_shape
    flat = grad.reshape(N, C, H * W)
    for k in range(argmax.shape[0]):
        for c in range(C):
            for i, g in zip(argmax[k, c].ravel(), grad_output[k, c].ravel()):
                if i >= 0:
                    flat[batch_indices[k], c, i] += g
    return grad


def _axis_samples(c1, c2, scale, aligned, sampling_ratio, size, out, T):
    """Per bin, the list of samples along one axis: (ok, lo, hi, frac)."""
    off = T(0.5) if aligned else T(0)
    start = T(c1) * T(scale) - off
    extent = (T(c2) * T(scale) - off) - start
    if not aligned:
        extent = max(extent, T(1))
    bin_size = extent / T(out)
    g = sampling_ratio if sampling_ratio > 0 else int(math.ceil(extent / T(out)))
    bins = []
    for p in range(out):
        samples = []
        for i in range(g):
            v = float(start + T(p) * bin_size + (T(i) + T(0.5)) * bin_size / T(g))
            if v < -1.0 or v > size:
                samples.append((False, 0, 0, 0.0))
                continue
            v = max(v, 0.0)
            lo = int(v)
            if lo >= size - 1:
                lo = hi = size - 1
                v = float(lo)
            else:
                hi = lo + 1
            samples.append((True, lo, hi, v - lo))
        bins.append(samples)
    return bins, g


def _corners(sy, sx, W):
    """The four (flat pixel, weight) terms of a sample, in onnxruntime's order."""
    oky, ylo, yhi, ly = sy
    okx, xlo, xhi, lx = sx
    if not (oky and okx):
        return [(0, 0.0)] * 4
    return [(ylo * W + xlo, (1 - ly) * (1 - lx)), (ylo * W + xhi, (1 - ly) * lx),
            (yhi * W + xlo, ly * (1 - lx)), (yhi * W + xhi, ly * lx)]


def _align_terms(roi, spatial_scale, sampling_ratio, aligned, H, W, OH, OW, T):
    """terms[ph][pw] = list of (pixel, weight) over samples x corners; and the count."""
    x1, y1, x2, y2 = roi
    ybins, gh = _axis_samples(y1, y2, spatial_scale, aligned, sampling_ratio, H, OH, T)
    xbins, gw = _axis_samples(x1, x2, spatial_scale, aligned, sampling_ratio, W, OW, T)
    terms = [[[t for sy in ybins[ph] for sx in xbins[pw] for t in _corners(sy, sx, W)]
              for pw in range(OW)] for ph in range(OH)]
    return terms, max(gh * gw, 1)


def roi_align(x, rois, batch_indices, output_size, spatial_scale=1.0, sampling_ratio=0,
              aligned=False, mode="avg"):
    T = x.dtype.type
    _, C, H, W = x.shape
    OH, OW = output_size
    K = len(rois)
    out = np.zeros((K, C, OH, OW), dtype=np.float64)
    for k in range(K):
        terms, count = _align_terms(rois[k], spatial_scale, sampling_ratio, aligned, H, W,
                                    OH, OW, T)
        plane = x[batch_indices[k]].reshape(C, H * W).astype(np.float64)
        for ph in range(OH):
            for pw in range(OW):
                t = terms[ph][pw]
                if not t:
                    continue
                for c in range(C):
                    values = [w * plane[c, p] for p, w in t]
                    if mode == "avg":
                        out[k, c, ph, pw] = sum(values) / count
                    else:
                        out[k, c, ph, pw] = torch_max_rule(values)[1]
    return out.astype(x.dtype)


def roi_align_grad(grad_output, x, rois, batch_indices, spatial_scale=1.0, sampling_ratio=0,
                   aligned=False, mode="avg"):
    """The derivative of roi_align written out: every term w * x[p] of an output passes
    w * grad / count to p (avg); only the winning term passes w * grad (max)."""
    T = x.dtype.type
    N, C, H, W = x.shape
    K, _, OH, OW = grad_output.shape
    grad = np.zeros((N, C, H * W), dtype=np.float64)
    for k in range(K):
        terms, count = _align_terms(rois[k], spatial_scale, sampling_ratio, aligned, H, W,
                                    OH, OW, T)
        n = batch_indices[k]
        plane = x[n].reshape(C, H * W).astype(np.float64)
        for ph in range(OH):
            for pw in range(OW):
                t = terms[ph][pw]
                if not t:
                    continue
                for c in range(C):
                    g = float(grad_output[k, c, ph, pw])
                    if mode == "avg":
                        for p, w in t:
                            grad[n, c, p] += w * g / count
                    else:
                        i, _ = torch_max_rule([w * plane[c, p] for p, w in t])
                        grad[n, c, t[i][0]] += t[i][1] * g
    return grad.reshape(N, C, H, W).astype(grad_output.dtype)
