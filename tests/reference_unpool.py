"""Slow, obviously-correct NumPy references for max unpooling, fractional max pooling and
the padding fill modes. Written from the rules (PyTorch's; np.pad's for the fill modes),
not from cpool's code: plain Python loops over planes and elements.
"""
import itertools
import math

import numpy as np

from tests import reference as R


# --------------------------------------------------------------------------------------
# Max unpooling (PyTorch): out[n, c].flat[indices[n, c]] = x[n, c], later writes win.
# --------------------------------------------------------------------------------------

def unpool_default_size(in_size, kernel, stride, padding):
    return tuple((L - 1) * s - 2 * p + k for L, k, s, p in zip(in_size, kernel, stride, padding))


def max_unpool(x, indices, out_spatial):
    """x and indices (N, C, *in) -> (N, C, *out_spatial)."""
    x = np.asarray(x)
    out = np.zeros(x.shape[:2] + tuple(out_spatial), dtype=x.dtype)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        plane_out = out[n, c].reshape(-1)  # a view
        xs, ids = x[n, c].reshape(-1), np.asarray(indices)[n, c].reshape(-1)
        for m in range(xs.size):
            plane_out[ids[m]] = xs[m]
    return out


def max_unpool_backward(grad_out, indices):
    """grad_x[n, c].flat[m] = grad_out[n, c].flat[indices[n, c].flat[m]]."""
    indices = np.asarray(indices)
    grad_x = np.zeros(indices.shape, dtype=np.asarray(grad_out).dtype)
    for n, c in itertools.product(range(indices.shape[0]), range(indices.shape[1])):
        g = grad_out[n, c].reshape(-1)
        gx = grad_x[n, c].reshape(-1)
        for m, i in enumerate(indices[n, c].reshape(-1)):
            gx[m] = g[i]
    return grad_x


def onnx_indices(indices, out_spatial):
    """PyTorch's per-plane indices -> ONNX's, flat over the whole (N, C, *out) tensor."""
    indices = np.asarray(indices)
    plane = math.prod(out_spatial)
    offsets = np.arange(indices.shape[0] * indices.shape[1]) * plane
    return indices + offsets.reshape(indices.shape[:2] + (1,) * (indices.ndim - 2))


# --------------------------------------------------------------------------------------
# Fractional max pooling (ATen's generate_intervals, computed element by element in the
# sample dtype T: alpha = T(L-k)/T(O-1); start[i] = int(T(i+u)*alpha) - int(u*alpha);
# the last start is L-k). Sample columns: 2-D (W, H), 3-D (D, H, W).
# --------------------------------------------------------------------------------------

def fractional_starts(u, L, O, k):
    t = type(u)
    starts = []
    if O > 1:
        alpha = t(L - k) / t(O - 1)
        for i in range(O - 1):
            starts.append(int((t(i) + u) * alpha) - int(u * alpha))
    starts.append(L - k)
    return starts


def fractional_max_pool(x, kernel, out_size, samples):
    """(values, indices flat within each input plane). samples: (N, C, nd) in x's dtype."""
    x = np.asarray(x)
    nd = len(kernel)
    columns = {2: (1, 0), 3: (0, 1, 2)}[nd]
    in_size = x.shape[2:]
    out = np.empty(x.shape[:2] + tuple(out_size), dtype=x.dtype)
    idx = np.empty(out.shape, dtype=np.int64)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        starts = [fractional_starts(samples[n, c, col], L, O, k)
                  for col, L, O, k in zip(columns, in_size, out_size, kernel)]
        for pos in itertools.product(*[range(o) for o in out_size]):
            first = [starts[d][o] for d, o in enumerate(pos)]
            m, best = -np.inf, R._flat(first, in_size)
            for off in itertools.product(*[range(k) for k in kernel]):
                point = tuple(f + a for f, a in zip(first, off))
                v = x[(n, c) + point]
                if v > m or np.isnan(v):
                    m, best = v, R._flat(point, in_size)
            out[(n, c) + pos] = m
            idx[(n, c) + pos] = best
    return out, idx


def scatter_add(grad_out, indices, input_shape):
    """grad_x[n, c].flat[indices] += grad_out (max pooling's backward from indices)."""
    return R.max_pool_backward(grad_out, indices, len(input_shape) - 2, input_shape)


# --------------------------------------------------------------------------------------
# Padding fill modes: pool np.pad(x, pads, mode) with no padding, over the windows of
# the unpadded pooling (the output keeps that shape).
# --------------------------------------------------------------------------------------

NP_MODE = {"zeros": "constant", "edge": "edge", "reflect": "reflect"}


def padded(x, pads, mode):
    x = np.asarray(x)
    return np.pad(x, [(0, 0)] * (x.ndim - len(pads)) + [tuple(p) for p in pads],
                  mode=NP_MODE[mode])


def source_plane(in_size, pads, mode):
    """For each position of the padded plane, the flat input position it copies (-1: 0)."""
    flat = np.arange(math.prod(in_size)).reshape(in_size)
    if mode == "zeros":
        return np.pad(flat, pads, mode="constant", constant_values=-1)
    return np.pad(flat, pads, mode=mode)


def pool_padded(kind, x, nd, mode, geo, **options):
    """Forward of max/avg/lp pooling with padding_mode `mode`; for max (values, indices)
    with the indices mapped to the input plane. The 'lp' kind takes norm_type in options."""
    x = np.asarray(x)
    batched = x.ndim == nd + 2
    xb = x if batched else x[np.newaxis]
    win = R.Windows(xb.shape[2:], geo["kernel_size"], geo.get("stride"), geo.get("padding", 0),
                    geo.get("dilation", 1), geo.get("ceil_mode", False))
    xp = padded(xb, win.pads, mode)
    nopad = dict(geo, padding=0)
    crop = (Ellipsis,) + tuple(slice(0, o) for o in win.out_size)
    if kind == "max":
        out, idx = R.max_pool(xp, nd, **nopad)
        src = source_plane(xb.shape[2:], win.pads, mode).reshape(-1)
        out, idx = out[crop], src[idx[crop]]
        return (out, idx) if batched else (out[0], idx[0])
    if kind == "avg":
        out = R.avg_pool(xp, nd, **nopad, **options)[crop]
    else:
        out = R.lp_pool(xp, nd, options["norm_type"], **nopad)[crop]
    return out if batched else out[0]


def fold(grad_padded, in_size, pads, mode):
    """Gradient w.r.t. the padded input -> w.r.t. x, by scattering through source_plane."""
    lead = grad_padded.shape[:-len(in_size)]
    src = source_plane(in_size, pads, mode).reshape(-1)
    g = grad_padded.reshape(lead + (-1,))
    out = np.zeros(lead + (math.prod(in_size),), dtype=np.float64)
    for j, s in enumerate(src):
        if s >= 0:
            out[..., s] += g[..., j]
    return out.reshape(lead + tuple(in_size))


def pool_padded_backward(kind, grad_out, x, nd, mode, geo, **options):
    """Gradient of pool_padded for 'avg' and 'lp' (x batched)."""
    x = np.asarray(x, dtype=np.float64)
    win = R.Windows(x.shape[2:], geo["kernel_size"], geo.get("stride"), geo.get("padding", 0),
                    geo.get("dilation", 1), geo.get("ceil_mode", False))
    xp = padded(x, win.pads, mode)
    nopad = dict(geo, padding=0)
    full = R.Windows(xp.shape[2:], geo["kernel_size"], geo.get("stride"), 0,
                     geo.get("dilation", 1), geo.get("ceil_mode", False)).out_size
    g = np.zeros(x.shape[:2] + full)  # the reference's extra ceil windows get no gradient
    g[(Ellipsis,) + tuple(slice(0, o) for o in win.out_size)] = grad_out
    if kind == "avg":
        gp = R.avg_pool_backward(g, nd, xp.shape, **nopad, **options)
    else:
        gp = R.lp_pool_backward(g, xp, nd, options["norm_type"], **nopad)
    return fold(gp, x.shape[2:], win.pads, mode)
