"""Slow, obviously-correct NumPy reference for sliding-window max, average and Lp pooling.

Written from the rules (PyTorch's, and ONNX's where PyTorch has nothing), not from cpool's
code. Every window is visited in a plain Python loop and its taps are listed explicitly;
only the (N, C) planes are vectorized, so each window is handled for all planes at once.

Rules, per spatial dim with input length L, kernel k, stride s, dilation d, pads (pb, pe)
and effective kernel e = d*(k-1) + 1, in the padded coordinate system where the input
occupies [pb, pb + L):

* Windows start at o*s for o = 0, 1, ... A window is kept while it fits inside the padded
  extent (o*s + e <= L + pb + pe). With ceil_mode one more, partial window is kept when
  the previous window (for o = 0 a virtual one at -s) did not reach the end of the padded
  extent, unless it would start inside the right padding (o*s >= L + pb), which PyTorch
  and ONNX >= 19 drop. So with ceil_mode a window longer than the padded input by less
  than s still gives one output (PyTorch's and ONNX's output-size formula).
* "same" / "same_lower": out = ceil(L / s); total pad t = max((out-1)*s + e - L, 0);
  "same" puts floor(t/2) at the start (the odd pad at the end), "same_lower" the reverse.
* max: scan the window's taps in row-major order starting from m = -inf and take v when
  (v > m) or v is NaN. Padding taps are skipped. The index starts at the first tap that is
  not left of the input (PyTorch), so an all -inf window reports that tap.
* avg: sum of the in-input taps divided by the product over dims of a per-dim count:
  count_include_pad=True counts taps before the end of the padded extent (position < L+pe,
  i.e. not the ceil_mode overhang), False counts taps inside the input; divisor_override
  replaces the divisor. A count of 0 is taken as 1 (the window then averages to 0).
* Lp: (sum over in-input taps of |x|**p) ** (1/p) (ONNX LpPool).
"""
import itertools
import math

import numpy as np


# --------------------------------------------------------------------------------------
# Window geometry.
# --------------------------------------------------------------------------------------

def _per_dim(value, nd):
    if isinstance(value, (tuple, list)):
        assert len(value) == nd
        return [int(v) for v in value]
    return [int(value)] * nd


def resolve_pads(padding, in_size, kernel, stride, dilation):
    """Any padding form -> list of (begin, end) per spatial dim."""
    nd = len(in_size)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * nd
        pads = []
        for L, k, s, d in zip(in_size, kernel, stride, dilation):
            out = math.ceil(L / s)
            total = max((out - 1) * s + d * (k - 1) + 1 - L, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if padding == "same" else (large, small))
        return pads
    if isinstance(padding, (tuple, list)):
        pads = []
        for item in padding:
            if isinstance(item, (tuple, list)):
                pads.append((int(item[0]), int(item[1])))
            else:
                pads.append((int(item), int(item)))
        assert len(pads) == nd
        return pads
    return [(int(padding), int(padding))] * nd


def window_starts(L, k, s, d, pb, pe, ceil_mode):
    """Start of each window along one dim, in input coordinates (may be negative)."""
    e = d * (k - 1) + 1
    padded = L + pb + pe
    starts = []
    o = 0
    while True:
        start = o * s  # padded coordinates
        if start + e <= padded:
            starts.append(start)
        elif ceil_mode and start - s + e < padded and start < L + pb:
            starts.append(start)
        else:
            break
        o += 1
    return [start - pb for start in starts]


class Windows:
    """All windows of a pooling: per dim, the tap positions of each output coordinate."""

    def __init__(self, in_size, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False):
        nd = len(in_size)
        self.in_size = tuple(int(v) for v in in_size)
        self.kernel = _per_dim(kernel_size, nd)
        self.stride = self.kernel if stride is None else _per_dim(stride, nd)
        self.dilation = _per_dim(dilation, nd)
        self.pads = resolve_pads(padding, self.in_size, self.kernel, self.stride,
                                 self.dilation)
        # taps[dim][o] = list of input positions of window o's taps along dim
        self.taps = []
        for L, k, s, d, (pb, pe) in zip(self.in_size, self.kernel, self.stride,
                                         self.dilation, self.pads):
            starts = window_starts(L, k, s, d, pb, pe, ceil_mode)
            self.taps.append([[x0 + j * d for j in range(k)] for x0 in starts])
        self.out_size = tuple(len(t) for t in self.taps)

    def __iter__(self):
        """(output position, list of per-dim tap position lists) for every window."""
        for pos in itertools.product(*[range(o) for o in self.out_size]):
            yield pos, [self.taps[dim][o] for dim, o in enumerate(pos)]

    def inside(self, dim, i):
        return 0 <= i < self.in_size[dim]

    def count(self, dim, taps, include_pad):
        L, pe = self.in_size[dim], self.pads[dim][1]
        if include_pad:
            return sum(1 for i in taps if i < L + pe)
        return sum(1 for i in taps if 0 <= i < L)


def _flat(point, in_size):
    """Row-major flat position within a plane (PyTorch's index; not wrapped)."""
    flat = 0
    for i, L in zip(point, in_size):
        flat = flat * L + i
    return flat


def _batched(x, nd):
    x = np.asarray(x)
    assert x.ndim in (nd + 1, nd + 2)
    return (x, True) if x.ndim == nd + 2 else (x[np.newaxis], False)


def _unbatch(arr, batched):
    return arr if batched else arr[0]


# --------------------------------------------------------------------------------------
# Forward.
# --------------------------------------------------------------------------------------

def max_pool(x, nd, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(values, int64 indices flat within each (n, c) plane)."""
    x, batched = _batched(x, nd)
    win = Windows(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    lead = x.shape[:2]
    out = np.empty(lead + win.out_size, dtype=x.dtype)
    idx = np.empty(lead + win.out_size, dtype=np.int64)
    for pos, taps in win:
        # PyTorch's initial index: per dim, the first tap not left of the input. A window
        # with no input element has value -inf and, in cpool, index -1.
        first = [next((i for i in t if i >= 0), t[-1]) for t in taps]
        has_input = any(all(win.inside(dim, i) for dim, i in enumerate(point))
                        for point in itertools.product(*taps))
        m = np.full(lead, -np.inf, dtype=x.dtype)
        best = np.full(lead, _flat(first, win.in_size) if has_input else -1, dtype=np.int64)
        for point in itertools.product(*taps):
            if not all(win.inside(dim, i) for dim, i in enumerate(point)):
                continue
            v = x[(slice(None), slice(None)) + point]
            take = (v > m) | np.isnan(v)
            m = np.where(take, v, m)
            best = np.where(take, _flat(point, win.in_size), best)
        out[(Ellipsis,) + pos] = m
        idx[(Ellipsis,) + pos] = best
    return _unbatch(out, batched), _unbatch(idx, batched)


def avg_pool(x, nd, kernel_size, stride=None, padding=0, ceil_mode=False,
             count_include_pad=True, divisor_override=None, dilation=1):
    x, batched = _batched(x, nd)
    win = Windows(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    out = np.empty(x.shape[:2] + win.out_size, dtype=x.dtype)
    for pos, taps in win:
        total = np.zeros(x.shape[:2], dtype=np.float64)
        for point in itertools.product(*taps):
            if all(win.inside(dim, i) for dim, i in enumerate(point)):
                total += x[(slice(None), slice(None)) + point]
        if divisor_override is not None:
            divisor = divisor_override
        else:
            divisor = max(math.prod(win.count(dim, t, count_include_pad)
                                    for dim, t in enumerate(taps)), 1)
        out[(Ellipsis,) + pos] = total / divisor
    return _unbatch(out, batched)


def lp_pool(x, nd, norm_type, kernel_size, stride=None, padding=0, dilation=1,
            ceil_mode=False):
    x, batched = _batched(x, nd)
    p = float(norm_type)
    win = Windows(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    out = np.empty(x.shape[:2] + win.out_size, dtype=x.dtype)
    for pos, taps in win:
        total = np.zeros(x.shape[:2], dtype=np.float64)
        for point in itertools.product(*taps):
            if all(win.inside(dim, i) for dim, i in enumerate(point)):
                total += np.abs(x[(slice(None), slice(None)) + point].astype(np.float64)) ** p
        out[(Ellipsis,) + pos] = total ** (1.0 / p)
    return _unbatch(out, batched)


# --------------------------------------------------------------------------------------
# Backward.
# --------------------------------------------------------------------------------------

def max_pool_backward(grad_output, indices, nd, input_shape):
    """grad_input[n, c].flat[indices[n, c, ...]] += grad_output[n, c, ...]; index -1 (a
    window of padding only) sends its gradient nowhere."""
    g = np.asarray(grad_output, dtype=np.float64)
    idx = np.asarray(indices)
    grad_in = np.zeros(input_shape, dtype=np.float64)
    plane_size = math.prod(input_shape[-nd:])
    planes_in = grad_in.reshape(-1, plane_size)  # a view: writes land in grad_in
    g2 = g.reshape(planes_in.shape[0], -1)
    i2 = idx.reshape(planes_in.shape[0], -1)
    for plane in range(planes_in.shape[0]):
        for m in range(g2.shape[1]):
            if i2[plane, m] >= 0:
                planes_in[plane, i2[plane, m]] += g2[plane, m]
    return grad_in


def avg_pool_backward(grad_output, nd, input_shape, kernel_size, stride=None, padding=0,
                      ceil_mode=False, count_include_pad=True, divisor_override=None,
                      dilation=1):
    g, batched = _batched(np.asarray(grad_output, dtype=np.float64), nd)
    shape = tuple(input_shape) if batched else (1,) + tuple(input_shape)
    win = Windows(shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    grad_in = np.zeros(shape, dtype=np.float64)
    for pos, taps in win:
        if divisor_override is not None:
            divisor = divisor_override
        else:
            divisor = max(math.prod(win.count(dim, t, count_include_pad)
                                    for dim, t in enumerate(taps)), 1)
        for point in itertools.product(*taps):
            if all(win.inside(dim, i) for dim, i in enumerate(point)):
                grad_in[(slice(None), slice(None)) + point] += g[(Ellipsis,) + pos] / divisor
    return _unbatch(grad_in, batched)


def lp_pool_backward(grad_output, x, nd, norm_type, kernel_size, stride=None, padding=0,
                     dilation=1, ceil_mode=False):
    """d y / d x_i = sign(x_i) |x_i|^(p-1) / y^(p-1) for each tap; 0 where y == 0 or x_i == 0."""
    p = float(norm_type)
    x, batched = _batched(np.asarray(x, dtype=np.float64), nd)
    g, _ = _batched(np.asarray(grad_output, dtype=np.float64), nd)
    y, _ = _batched(lp_pool(x, nd, p, kernel_size, stride, padding, dilation, ceil_mode), nd)
    win = Windows(x.shape[2:], kernel_size, stride, padding, dilation, ceil_mode)
    grad_in = np.zeros(x.shape, dtype=np.float64)
    for pos, taps in win:
        yo = y[(Ellipsis,) + pos]
        go = g[(Ellipsis,) + pos]
        for point in itertools.product(*taps):
            if not all(win.inside(dim, i) for dim, i in enumerate(point)):
                continue
            xi = x[(slice(None), slice(None)) + point]
            with np.errstate(divide="ignore", invalid="ignore"):
                term = go * np.sign(xi) * np.abs(xi) ** (p - 1) / yo ** (p - 1)
            ok = (yo > 0) & (xi != 0)
            grad_in[(slice(None), slice(None)) + point] += np.where(ok, term, 0.0)
    return _unbatch(grad_in, batched)
