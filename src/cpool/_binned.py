"""Global, adaptive, variable-scale (binned) and spatial pyramid pooling.

All four are *bin poolings*: per spatial axis a list of half-open bins ``(start, end)``;
``output[n, c, i, j, ...]`` reduces ``x[n, c]`` over the box ``bins[0][i] x bins[1][j] x ...``.
Bins may differ in size, overlap or leave gaps. One kernel family,
cpool._kernels.binpool, computes every one of them, forward and backward.

Rules, stated once:

* Adaptive bins (PyTorch's rule): for input length L and output length O, bin i is
  ``start = floor(i*L/O)``, ``end = ceil((i+1)*L/O)``. When O does not divide L the
  bins overlap; O may exceed L.
* Global pooling is one bin (0, L) per spatial axis (ONNX GlobalMaxPool,
  GlobalAveragePool, GlobalLpPool; Keras GlobalMaxPooling*D ...).
* "max": scan order is (d, h, w) row-major within the bin; a value replaces the running
  maximum when ``v > m or isnan(v)`` (PyTorch), so a bin holding NaN yields NaN (and
  index of its last NaN), ties report the first maximum and a bin of -inf reports its
  first element.
* "avg": the bin's sum divided by its number of elements.
* "lp": ``(sum over the bin of |x|**p) ** (1/p)`` (ONNX LpPool/GlobalLpPool, any p > 0).
  torch's lp_pool sums x**p without the absolute value, which differs for negative
  inputs with odd p.
* For backward, max keeps a compact argmax: the tap within the bin, uint8 for bins of
  up to 256 elements, else int32 (PyTorch keeps int64 indices; return_indices converts).
* Backward scatters per (n, c) plane, one plane per thread, in a fixed order (bins in
  row-major output order; PyTorch-style indices in index order), so results are
  identical for every thread count. (Bins have no sliding-window structure, so a gather
  by input element needs per-element cover tests; it measured several times slower.)

Inputs follow cpool.functional's conventions: batched (N, C, *spatial) or unbatched
(C, *spatial) (global pooling: batched only, as in ONNX), never modified; float32 and
float64 computed natively, float16 in float32, integers in float64.
"""
import functools
import math

import numpy as np

from ._float16 import in_float32_chunks
from ._geometry import column_divisors, cover_table, unit_divisors, window_table
from ._kernels import binpool as _bp
from ._kernels import channels_last as _cl
from ._kernels.pool import PoolOp
from ._layout import (_frozen, cover_tables, join_shape, kernel_view, narrow_planes,
                      overlaps_along_w, plane_rows, plane_view, runs_channels_last,
                      runs_plane_blocks, split_shape, tap_level, tap_offsets, window_tables)
from ._threads import threads_for
from ._validation import (as_float_array, as_int, check_bool, check_choice,
                          check_positive_float, finish_output, spatial_input)
from .functional import _OP_COST, _input_shape, _lp_op, _max_pool_backward, _unbatched_grad

__all__ = [
    "global_max_pool", "global_avg_pool", "global_lp_pool",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "bin_pool", "adaptive_bins", "window_bins", "spatial_pyramid_pool",
    "global_max_pool_backward", "global_avg_pool_backward", "global_lp_pool_backward",
    "adaptive_max_pool1d_backward", "adaptive_max_pool2d_backward",
    "adaptive_max_pool3d_backward",
    "adaptive_avg_pool1d_backward", "adaptive_avg_pool2d_backward",
    "adaptive_avg_pool3d_backward",
    "bin_pool_backward", "spatial_pyramid_pool_backward",
]

MODES = ("max", "avg", "lp")
PYRAMID_MODES = ("max", "avg")


# --------------------------------------------------------------------------------------
# Bins: construction and validation.
# --------------------------------------------------------------------------------------

def adaptive_bins(length, output_size):
    """The (output_size, 2) array of PyTorch's adaptive bins over an axis of `length`:
    bin i is [floor(i*L/O), ceil((i+1)*L/O))."""
    L = as_int(length, "length", 1)
    O = as_int(output_size, "output_size", 1)
    i = np.arange(O, dtype=np.intp)
    return np.stack([(i * L) // O, -((-(i + 1) * L) // O)], axis=1)


def window_bins(length, sizes, strides=None, start=0):
    """Bins along one axis of `length` from per-position window sizes and strides.

    Windows are laid out left to right from `start`: window i covers
    ``[pos_i, min(pos_i + size_i, length))`` and ``pos_{i+1} = pos_i + stride_i``.

    Parameters
    ----------
    length : int
        The axis length.
    sizes : int, sequence of ints, or callable
        The window sizes: one for all, one per window, or ``sizes(pos)`` of the window's
        start position -- "the window size as a function of position".
    strides : None, int, sequence of ints, or callable
        The step to the next window; None means the window's own size (windows tile the
        axis). A callable is called as ``strides(pos)``.
    start : int
        The first window's start.

    With a sequence of sizes there is one window per entry, each of which must start
    inside the axis; otherwise windows are placed while ``pos < length``, and the last
    one is cut at the end of the axis.

    Returns
    -------
    (n_windows, 2) int array of (start, end), ready for bin_pool.

    Examples
    --------
    Windows of 2 at the borders and 4 in the interior (the seed's example), in one line:

    >>> window_bins(16, lambda pos: 2 if pos < 4 or pos >= 12 else 4).tolist()
    [[0, 2], [2, 4], [4, 8], [8, 12], [12, 14], [14, 16]]

    Sizes derived from the input size (a third of it; the last window is cut short):

    >>> window_bins(10, 10 // 3).tolist()
    [[0, 3], [3, 6], [6, 9], [9, 10]]

    The border/interior windows on both axes of an image batch:

    >>> x = np.arange(2 * 16 * 16, dtype=np.float32).reshape(1, 2, 16, 16)
    >>> f = lambda pos: 2 if pos < 4 or pos >= 12 else 4
    >>> bin_pool(x, [window_bins(16, f), window_bins(16, f)], mode="max").shape
    (1, 2, 6, 6)
    """
    length = as_int(length, "length", 1)
    pos = as_int(start, "start", 0)
    if pos >= length:
        raise ValueError(f"start must be < length = {length}, got {pos}")
    fixed = isinstance(sizes, (list, tuple, np.ndarray))
    if fixed and len(sizes) == 0:
        raise ValueError("sizes must be an int, a callable or a non-empty sequence of ints")
    if not fixed and not callable(sizes):
        as_int(sizes, "sizes", 1)
    if isinstance(strides, (list, tuple, np.ndarray)) and len(strides) == 0:
        raise ValueError("strides must be None, an int, a callable or a non-empty sequence")
    bins = []
    i = 0
    while (i < len(sizes)) if fixed else (pos < length):
        if pos >= length:
            raise ValueError(f"window {i} of sizes={list(sizes)!r} starts at {pos}, past the "
                             f"end of the axis (length {length})")
        size = as_int(_pick(sizes, i, pos, "sizes"), "sizes", 1)
        bins.append((pos, min(pos + size, length)))
        step = size if strides is None else as_int(_pick(strides, i, pos, "strides"),
                                                   "strides", 1)
        pos += step
        i += 1
    return np.array(bins, dtype=np.intp)


def _pick(value, i, pos, name):
    if callable(value):
        return value(pos)
    if isinstance(value, (list, tuple, np.ndarray)):
        if i >= len(value):
            raise ValueError(f"{name} has {len(value)} entries but window {i} needs one")
        return value[i]
    return value


def check_bins(bins, in_size=None):
    """Validate `bins` -> tuple of (O, 2) intp arrays, one per spatial axis.

    `bins` holds one sequence of (start, end) pairs (or an (O, 2) int array) per spatial
    axis, 1 to 3 axes. With `in_size`, each bin must satisfy 0 <= start < end <= L.
    """
    if isinstance(bins, (str, bytes)) or not isinstance(bins, (list, tuple, np.ndarray)):
        raise TypeError(f"bins must be a sequence with one sequence of (start, end) pairs per "
                        f"spatial axis, got {type(bins).__name__}")
    if not 1 <= len(bins) <= 3:
        raise ValueError(f"bins must have one entry per spatial axis (1, 2 or 3), "
                         f"got {len(bins)}")
    out = []
    for axis, axis_bins in enumerate(bins):
        try:
            arr = np.asarray(axis_bins)
        except ValueError:
            arr = np.asarray(axis_bins, dtype=object)
        if arr.size == 0:
            raise ValueError(f"bins[{axis}] is empty: each axis needs at least one "
                             f"(start, end) pair")
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"bins[{axis}] must be a sequence of (start, end) pairs, "
                             f"got {axis_bins!r}")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"bins[{axis}] must hold ints, got dtype {arr.dtype}")
        # a private C-contiguous copy (grids freeze their bins; kernels need C order)
        arr = np.array(arr, dtype=np.intp, order="C")
        bad = ~(arr[:, 0] < arr[:, 1]) | (arr[:, 0] < 0)
        if in_size is not None:
            bad |= arr[:, 1] > in_size[axis]
        if bad.any():
            o = int(np.flatnonzero(bad)[0])
            limit = "L" if in_size is None else in_size[axis]
            raise ValueError(f"bins[{axis}][{o}] = ({arr[o, 0]}, {arr[o, 1]}) is empty or out "
                             f"of range: each bin needs 0 <= start < end <= {limit}")
        out.append(arr)
    return tuple(out)


def check_levels(levels):
    """Spatial pyramid levels -> a non-empty tuple of ints >= 1."""
    if isinstance(levels, (str, bytes)) or not isinstance(levels, (list, tuple, np.ndarray)):
        raise TypeError(f"levels must be a non-empty sequence of positive ints, "
                        f"got {type(levels).__name__}")
    if len(levels) == 0:
        raise ValueError("levels must be a non-empty sequence of positive ints, got empty")
    return tuple(as_int(level, "levels", 1) for level in levels)


def _check_nonempty(spatial):
    if min(spatial) < 1:
        raise ValueError(f"x must have non-empty spatial dims for bin pooling, got "
                         f"spatial shape {tuple(spatial)}")


def adaptive_output_size(output_size, in_size):
    """output_size (int, or one int or None per axis; None keeps the axis) -> tuple."""
    nd = len(in_size)
    if isinstance(output_size, (list, tuple, np.ndarray)):
        items = list(output_size)
        if len(items) != nd:
            raise ValueError(f"output_size must be an int or a sequence of {nd} ints or None, "
                             f"got {output_size!r}")
    else:
        if output_size is None:
            raise TypeError(f"output_size must be an int or a sequence of {nd} ints or None, "
                            f"got None")
        items = [output_size] * nd
    return tuple(L if o is None else as_int(o, "output_size", 1) for o, L in zip(items, in_size))


_UNIT_BIN = np.array([[0, 1]], dtype=np.intp)  # the single bin of a size-1 leading dim
_UNIT_BIN.flags.writeable = False


class BinGrid:
    """The bins of one bin pooling over an input of spatial size `in_size`, plus what the
    kernels need: the bins lifted to 3-D, the W-grid test and the tap dtype."""

    def __init__(self, in_size, bins):
        self.in_size = tuple(int(s) for s in in_size)
        self.bins = tuple(bins)
        for b in self.bins:
            b.flags.writeable = False  # grids are cached and shared
        self.out_size = tuple(len(b) for b in self.bins)
        fill = 3 - len(self.bins)
        self.bins_3d = (_UNIT_BIN,) * fill + self.bins
        self.in_3d = (1,) * fill + self.in_size
        self.out_3d = (1,) * fill + self.out_size
        sizes = [b[:, 1] - b[:, 0] for b in self.bins_3d]
        self.sizes_3d = sizes
        volume = int(np.prod([s.max() for s in sizes]))
        if volume >= 2 ** 31:
            raise ValueError(f"bins must hold fewer than 2**31 elements each, got up to {volume}")
        self.tap_dtype = np.uint8 if volume <= 256 else np.intc
        self.uniform_w = _regular_grid(self.bins_3d[2])
        self.whole = all(len(b) == 1 and b[0, 0] == 0 and b[0, 1] == L
                         for b, L in zip(self.bins, self.in_size))

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def adaptive(in_size, out_size):
        """PyTorch's adaptive bins (cached: grids are never modified)."""
        return BinGrid(in_size, [adaptive_bins(L, o) for L, o in zip(in_size, out_size)])

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def global_(in_size):
        """One bin over each whole axis (global pooling; cached)."""
        return BinGrid(in_size, [np.array([[0, L]], dtype=np.intp) for L in in_size])

    def tap_positions_3d(self):
        """Per-dim (bins, largest bin) input coordinates of each bin's taps; -1 past a
        bin's end (the channels-last kernels' tables, see cpool._geometry)."""
        pos = []
        for b in self.bins_3d:
            t = np.arange(int((b[:, 1] - b[:, 0]).max()), dtype=np.intp)
            p = b[:, :1] + t
            p[t >= b[:, 1:] - b[:, :1]] = -1
            pos.append(p)
        return pos

    def window_tables_3d(self):
        return [window_table(p, L) for p, L in zip(self.tap_positions_3d(), self.in_3d)]

    def cover_tables_3d(self):
        return [cover_table(p, L) for p, L in zip(self.tap_positions_3d(), self.in_3d)]

    def divisors_3d(self):
        """The average's divisors in the kernels' form (see PoolGeometry.divisors_3d)."""
        d, h, w = (s.astype(np.float64) for s in self.sizes_3d)
        return d, h, column_divisors(w)

    def counts(self):
        """Elements per bin, shape out_size (the average's divisor)."""
        d, h, w = (s.astype(np.float64) for s in self.sizes_3d)
        return (d[:, None, None] * h[None, :, None] * w[None, None, :]).reshape(self.out_size)

    def in_planes(self, arr):
        return arr.reshape((-1,) + self.in_3d)

    def out_planes(self, arr):
        return arr.reshape((-1,) + self.out_3d)


def _regular_grid(w):
    """(k, s) when the bins `w` are a regular grid (size k, step s >= 1), else (0, 0)."""
    size = w[:, 1] - w[:, 0]
    if (size != size[0]).any():
        return 0, 0
    if len(w) == 1:
        return int(size[0]), 1
    step = np.diff(w[:, 0])
    if step[0] < 1 or (step != step[0]).any():
        return 0, 0
    return int(size[0]), int(step[0])


# --------------------------------------------------------------------------------------
# Kernel drivers on validated (N, C, *spatial) float arrays (the layers use these too).
# --------------------------------------------------------------------------------------

def _op(mode, p):
    if mode == "max":
        return PoolOp.OP_MAX
    if mode == "avg":
        return PoolOp.OP_AVG
    return _lp_op(p)


def _out_like(x, grid, channels_last, dtype=None):
    n, c, _ = split_shape(x.shape, channels_last)
    return np.empty(join_shape(n, c, grid.out_size, channels_last),
                    dtype=x.dtype if dtype is None else dtype)


def _runs_planes(grid, channels_last):
    """Small channels-first planes run the plane-block kernels, whose taps number as the
    channels-last ones do; global pooling keeps its one-run-per-plane kernels."""
    return runs_plane_blocks(grid.in_size, channels_last) and not grid.whole


@functools.lru_cache(maxsize=256)
def _divisors(grid, mode):
    """The divisors the channels-last kernels read (only averages use them); read-only
    and cached, as grids are."""
    if mode != "avg":
        return unit_divisors(grid.out_3d)
    d, h, cols = grid.divisors_3d()
    _frozen((d, h, cols[0]))
    return d, h, cols


def _target(out, x, grid, channels_last, strided):
    """The array a kernel writes: `out` when given and the kernel can write it (`strided`:
    it takes a view with a strided batch dim, such as a pyramid level's), else fresh."""
    if out is None or not (strided or out.flags.c_contiguous):
        return _out_like(x, grid, channels_last)
    return out


def _deliver(result, out):
    """`result` in `out` when one was given."""
    if out is not None and result is not out:
        out[...] = result
        return out
    return result


def bin_forward(x, grid, mode, p=2.0, channels_last=False, out=None):
    """max / avg / lp over every bin of `grid` (only max on integer input), into `out`
    when given."""
    planes = _runs_planes(grid, channels_last)
    whole = grid.whole and not runs_channels_last(x.dtype, channels_last)
    res = _target(out, x, grid, channels_last, planes or whole or channels_last)
    op = _op(mode, p)
    threads = threads_for(x, res, cost=_OP_COST.get(op, 1))
    op = int(op)
    if planes:
        wins, _ = window_tables(grid)
        _cl.forward_planes(plane_view(x), [(plane_view(res), *wins, *_divisors(grid, mode))],
                           op, float(p), threads, narrow_planes(grid.in_size))
    elif runs_channels_last(x.dtype, channels_last):
        wins, _ = window_tables(grid)
        _cl.forward(kernel_view(x, channels_last), kernel_view(res, channels_last), *wins, op,
                    float(p), *_divisors(grid, mode), overlaps_along_w(grid), threads)
    elif whole:  # global pooling: one contiguous run per plane
        if res.size:
            n, c, _ = split_shape(res.shape, False)
            _bp.plane_reduce(x.reshape(res.size, -1), res.reshape(n, c), op, float(p),
                             threads)
    else:
        k, s = grid.uniform_w
        _bp.bin_pool_forward(grid.in_planes(x), grid.out_planes(res), *grid.bins_3d, k, s, op,
                             float(p), threads)
    return _deliver(res, out)


def bin_max_forward_taps(x, grid, channels_last=False, out=None):
    """Max over every bin (into `out` when given) plus the within-bin argmax tap (uint8
    for bins of <= 256 elements, else int32) that bin_max_backward reads. The taps of the
    two kernel families differ; bin_taps_to_indices takes the same `channels_last` and
    dtype."""
    planes = _runs_planes(grid, channels_last)
    res = _target(out, x, grid, channels_last, planes or channels_last)
    taps = np.empty(res.shape, dtype=grid.tap_dtype)
    threads = threads_for(x, res, taps)
    if planes:
        _cl.max_forward_taps_planes(plane_view(x), plane_rows(taps), [tap_level(grid, res)],
                                    threads, narrow_planes(grid.in_size))
    elif runs_channels_last(x.dtype, channels_last):
        wins, pos = window_tables(grid)
        _cl.max_forward_taps(kernel_view(x, channels_last), kernel_view(res, channels_last),
                             kernel_view(taps, channels_last), *wins, pos[1].shape[1],
                             pos[2].shape[1], threads)
    else:
        _bp.bin_max_forward_taps(grid.in_planes(x), grid.out_planes(res), grid.out_planes(taps),
                                 *grid.bins_3d, *grid.uniform_w, threads)
    return _deliver(res, out), taps


def bin_taps_to_indices(taps, grid, channels_last=False, dtype=np.float32):
    """PyTorch-style int64 indices, flat within each input plane, from the taps of
    bin_max_forward_taps on input of `dtype`."""
    idx = np.empty(taps.shape, dtype=np.int64)
    threads = threads_for(taps, idx)
    if _runs_planes(grid, channels_last) or runs_channels_last(dtype, channels_last):
        _, pos = window_tables(grid)
        _cl.taps_to_indices(kernel_view(taps, channels_last), kernel_view(idx, channels_last),
                            *pos, grid.in_3d, threads)
        return idx
    _bp.bin_taps_to_indices(grid.out_planes(taps), grid.out_planes(idx), *grid.bins_3d,
                            grid.in_3d[1], grid.in_3d[2], threads)
    return idx


def _grad_buffer(grid, lead, dtype, grad_in, channels_last=False):
    if grad_in is None:
        return np.empty(join_shape(*lead, grid.in_size, channels_last), dtype=dtype), False
    return grad_in, True


def _add_into(grad_in, g):
    """g, added into grad_in when given (pyramids add their levels)."""
    if grad_in is None:
        return g
    grad_in += g
    return grad_in


def _with_input_gradient(grid):
    """threads_for's cost of a backward that reads the bins' gradient and writes the
    input's: 1 + input elements per bin."""
    return 1 + math.prod(grid.in_size) / max(1, math.prod(grid.out_size))


def bin_max_backward(grad_output, taps, grid, lead, grad_in=None, channels_last=False):
    """Gradient of bin max pooling (per-plane scatter); adds into `grad_in` when given."""
    threads = threads_for(grad_output, taps, cost=_with_input_gradient(grid))
    if _runs_planes(grid, channels_last):
        g = np.empty(join_shape(*lead, grid.in_size, False), dtype=grad_output.dtype)
        _cl.max_backward_taps_planes(plane_rows(grad_output), plane_rows(taps), plane_view(g),
                                     [tap_offsets(grid)], threads)
        return _add_into(grad_in, g)
    grad_in, accumulate = _grad_buffer(grid, lead, grad_output.dtype, grad_in, channels_last)
    if channels_last:
        _, pos = window_tables(grid)
        _cl.max_backward_taps(kernel_view(grad_output, True), kernel_view(taps, True),
                              kernel_view(grad_in, True), *cover_tables(grid), pos[1].shape[1],
                              pos[2].shape[1], threads, accumulate)
        return grad_in
    _bp.bin_max_backward(grid.out_planes(grad_output), grid.out_planes(taps),
                         grid.in_planes(grad_in), *grid.bins_3d, accumulate, threads)
    return grad_in


def bin_sum_backward(weight, grid, lead, grad_in=None, channels_last=False, average=False):
    """grad_in[i] (+)= sum of `weight` (divided by the bin sizes when `average`) over the
    bins covering i."""
    threads = threads_for(weight, cost=_with_input_gradient(grid))
    if _runs_planes(grid, channels_last):  # divides in its blocks
        g = np.empty(join_shape(*lead, grid.in_size, False), dtype=weight.dtype)
        _cl.sum_backward_planes(plane_view(np.ascontiguousarray(weight)), plane_view(g),
                                *cover_tables(grid), grid.divisors_3d() if average else None,
                                threads, narrow_planes(grid.in_size))
        return _add_into(grad_in, g)
    if average:
        counts = grid.counts().astype(weight.dtype)
        weight = weight / (counts[..., None] if channels_last else counts)
    if channels_last:
        g = np.empty(join_shape(*lead, grid.in_size, True), dtype=weight.dtype)
        _cl.sum_backward(kernel_view(np.ascontiguousarray(weight), True), kernel_view(g, True),
                         *cover_tables(grid), threads)
        return _add_into(grad_in, g)
    grad_in, accumulate = _grad_buffer(grid, lead, weight.dtype, grad_in)
    if grid.whole and weight.size:
        _bp.plane_fill(np.ascontiguousarray(weight).reshape(-1),
                       grad_in.reshape(weight.size, -1), accumulate, threads)
        return grad_in
    _bp.bin_sum_backward(grid.out_planes(np.ascontiguousarray(weight)),
                         grid.in_planes(grad_in), *grid.bins_3d, *grid.uniform_w, accumulate,
                         threads)
    return grad_in


def bin_avg_backward(grad_output, grid, lead, grad_in=None, channels_last=False):
    return bin_sum_backward(grad_output, grid, lead, grad_in, channels_last, average=True)


def bin_lp_backward(grad_output, x, y, p, grid, channels_last=False):
    """d/dx (sum |x|^p)^(1/p) = sign(x) |x|^(p-1) / y^(p-1), summed over the bins
    covering x; taken as 0 where y == 0 or x == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(y > 0, grad_output * np.power(y, 1.0 - p, dtype=y.dtype), 0)
    n, c, _ = split_shape(x.shape, channels_last)
    grad_in = bin_sum_backward(weight.astype(x.dtype, copy=False), grid, (n, c),
                               channels_last=channels_last)
    absx = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.sign(x) * (absx ** (p - 1.0) if p != 1.0 else 1.0)
    grad_in *= np.where(absx > 0, scale, 0).astype(x.dtype, copy=False)
    return grad_in


def bin_backward_from_input(grad_output, x, grid, mode, p, grad_in=None, channels_last=False):
    """Gradient of bin_forward(x, grid, mode, p), recomputing the argmax or the output
    from `x` where it needs them."""
    n, c, _ = split_shape(x.shape, channels_last)
    if mode == "max":
        _, taps = bin_max_forward_taps(x, grid, channels_last)
        return bin_max_backward(grad_output, taps, grid, (n, c), grad_in, channels_last)
    if mode == "avg":
        return bin_avg_backward(grad_output, grid, (n, c), grad_in, channels_last)
    y = bin_forward(x, grid, "lp", p, channels_last)
    return _add_into(grad_in, bin_lp_backward(grad_output, x, y, p, grid, channels_last))


def _grad_output(grad_output, expected, name="grad_output"):
    g, _ = as_float_array(grad_output, name)
    if g.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} (the forward's output), "
                         f"got {g.shape}")
    return g


# --------------------------------------------------------------------------------------
# Global pooling.
# --------------------------------------------------------------------------------------

def global_input(x, channels_last=False, integers=False):
    """Validate a global pooling input: (N, C, L), (N, C, H, W) or (N, C, D, H, W), or
    channels-last (N, L, C), (N, H, W, C) or (N, D, H, W, C)."""
    channels_last = check_bool(channels_last, "channels_last")
    arr, dtype = as_float_array(x, "x", integers)
    if arr.ndim not in (3, 4, 5):
        shapes = ("(N, L, C), (N, H, W, C) or (N, D, H, W, C)" if channels_last else
                  "(N, C, L), (N, C, H, W) or (N, C, D, H, W)")
        raise ValueError(f"x must have shape {shapes} for global pooling, got shape "
                         f"{arr.shape}")
    spatial = split_shape(arr.shape, channels_last)[2]
    _check_nonempty(spatial)
    return arr, dtype, BinGrid.global_(spatial), channels_last


def check_keepdims(keepdims):
    if not isinstance(keepdims, (bool, np.bool_)):
        raise TypeError(f"keepdims must be a bool, got {type(keepdims).__name__}")
    return bool(keepdims)


def global_output(out, keepdims, dtype, channels_last=False):
    """(N, C, 1, ..., 1) (or (N, 1, ..., 1, C)) -> (N, C) unless keepdims; cast back to the
    result dtype."""
    n, c, _ = split_shape(out.shape, channels_last)
    return finish_output(out if keepdims else out.reshape(n, c), True, dtype)


def global_grad(grad_output, x, channels_last=False):
    """grad_output of shape (N, C) or the keepdims shape -> the keepdims shape."""
    g, _ = as_float_array(grad_output, "grad_output")
    n, c, spatial = split_shape(x.shape, channels_last)
    keep = join_shape(n, c, (1,) * len(spatial), channels_last)
    if g.shape not in ((n, c), keep):
        raise ValueError(f"grad_output must have shape {(n, c)} or {keep} (the forward's "
                         f"output), got {g.shape}")
    return g.reshape(keep).astype(x.dtype, copy=False)


_GLOBAL_COMMON = """
    channels_last : bool
        True: x is (N, *spatial, C) (Keras' default) and keepdims gives (N, 1, ..., 1, C).
    """


@in_float32_chunks(("x",))
def global_max_pool(x, keepdims=False, channels_last=False):
    """Maximum over every spatial dim of (N, C, *spatial) input (1 to 3 spatial dims).

    ONNX GlobalMaxPool (keepdims=True) and Keras GlobalMaxPooling1D/2D/3D
    (keepdims=False). Returns (N, C), or (N, C, 1, ..., 1) with keepdims.
    NaN propagates (PyTorch's ``v > m or isnan(v)`` rule). Integer input keeps its dtype
    (as max_pool2d).
    """
    keepdims = check_keepdims(keepdims)
    x, dtype, grid, cl = global_input(x, channels_last, integers=True)
    return global_output(bin_forward(x, grid, "max", channels_last=cl), keepdims, dtype, cl)


@in_float32_chunks(("x",))
def global_avg_pool(x, keepdims=False, channels_last=False):
    """Mean over every spatial dim of (N, C, *spatial) input (1 to 3 spatial dims).

    ONNX GlobalAveragePool (keepdims=True), Keras GlobalAveragePooling*D.
    """
    keepdims = check_keepdims(keepdims)
    x, dtype, grid, cl = global_input(x, channels_last)
    return global_output(bin_forward(x, grid, "avg", channels_last=cl), keepdims, dtype, cl)


@in_float32_chunks(("x",))
def global_lp_pool(x, p=2, keepdims=False, channels_last=False):
    """``(sum over every spatial dim of |x|**p) ** (1/p)``: ONNX GlobalLpPool (keepdims=True).

    p is any finite number > 0 (ONNX: an int, default 2).
    """
    p = check_positive_float(p, "p")
    keepdims = check_keepdims(keepdims)
    x, dtype, grid, cl = global_input(x, channels_last)
    return global_output(bin_forward(x, grid, "lp", p, cl), keepdims, dtype, cl)


@in_float32_chunks(("x", "grad_output"))
def global_max_pool_backward(grad_output, x, channels_last=False):
    """Gradient of global_max_pool at `x`: grad_output (shape (N, C) or the keepdims
    shape) goes to each plane's argmax (first maximum in scan order; last NaN if any)."""
    x, dtype, grid, cl = global_input(x, channels_last)
    g = global_grad(grad_output, x, cl)
    return finish_output(bin_backward_from_input(g, x, grid, "max", 2.0, channels_last=cl),
                         True, dtype)


@in_float32_chunks(("grad_output",), ("input_shape",))
def global_avg_pool_backward(grad_output, input_shape, channels_last=False):
    """Gradient of global_avg_pool for an input of `input_shape` (N, C, *spatial), or
    (N, *spatial, C) with channels_last: every element gets grad_output / (number of
    spatial elements)."""
    cl = check_bool(channels_last, "channels_last")
    lead, spatial = _global_shape(input_shape, cl)
    g, dtype = as_float_array(grad_output, "grad_output")
    keep = join_shape(*lead, (1,) * len(spatial), cl)
    if g.shape not in (lead, keep):
        raise ValueError(f"grad_output must have shape {lead} or {keep} (the forward's "
                         f"output), got {g.shape}")
    grid = BinGrid.global_(spatial)
    return finish_output(bin_avg_backward(g.reshape(keep), grid, lead, channels_last=cl), True,
                         dtype)


def _global_shape(input_shape, channels_last=False):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (3, 4, 5):
        raise ValueError(f"input_shape must be (N, C, L), (N, C, H, W) or (N, C, D, H, W) "
                         f"(channels-last: C last), got {input_shape!r}")
    shape = tuple(as_int(s, "input_shape", 0) for s in input_shape)
    n, c, spatial = split_shape(shape, channels_last)
    _check_nonempty(spatial)
    return (n, c), spatial


@in_float32_chunks(("x", "grad_output"))
def global_lp_pool_backward(grad_output, x, p=2, channels_last=False):
    """Gradient of global_lp_pool(x, p): grad_x = grad_y * sign(x) |x|^(p-1) / y^(p-1),
    taken as 0 where y == 0 or x == 0."""
    p = check_positive_float(p, "p")
    x, dtype, grid, cl = global_input(x, channels_last)
    g = global_grad(grad_output, x, cl)
    return finish_output(bin_backward_from_input(g, x, grid, "lp", p, channels_last=cl), True,
                         dtype)


for _f in (global_max_pool, global_avg_pool, global_lp_pool):
    _f.__doc__ = _f.__doc__.rstrip() + "\n\n    Parameters\n    ----------" + _GLOBAL_COMMON
del _f


# --------------------------------------------------------------------------------------
# Adaptive pooling.
# --------------------------------------------------------------------------------------

def adaptive_input(x, nd, output_size, channels_last=False, integers=False):
    channels_last = check_bool(channels_last, "channels_last")
    x, batched, dtype = spatial_input(x, nd, integers=integers)
    spatial = split_shape(x.shape, channels_last)[2]
    _check_nonempty(spatial)
    out_size = adaptive_output_size(output_size, spatial)
    return x, batched, dtype, BinGrid.adaptive(spatial, out_size), channels_last


def _adaptive_max_pool(nd, x, output_size, return_indices, channels_last):
    return_indices = check_bool(return_indices, "return_indices")
    x, batched, dtype, grid, cl = adaptive_input(x, nd, output_size, channels_last, True)
    if not return_indices:
        return finish_output(bin_forward(x, grid, "max", channels_last=cl), batched, dtype)
    out, taps = bin_max_forward_taps(x, grid, cl)
    indices = bin_taps_to_indices(taps, grid, cl, x.dtype)
    return finish_output(out, batched, dtype), finish_output(indices, batched, np.int64)


def _adaptive_avg_pool(nd, x, output_size, channels_last):
    x, batched, dtype, grid, cl = adaptive_input(x, nd, output_size, channels_last)
    return finish_output(bin_forward(x, grid, "avg", channels_last=cl), batched, dtype)


def adaptive_max_pool1d(x, output_size, return_indices=False, channels_last=False):
    return _adaptive_max_pool(1, x, output_size, return_indices, channels_last)


def adaptive_max_pool2d(x, output_size, return_indices=False, channels_last=False):
    return _adaptive_max_pool(2, x, output_size, return_indices, channels_last)


def adaptive_max_pool3d(x, output_size, return_indices=False, channels_last=False):
    return _adaptive_max_pool(3, x, output_size, return_indices, channels_last)


def adaptive_avg_pool1d(x, output_size, channels_last=False):
    return _adaptive_avg_pool(1, x, output_size, channels_last)


def adaptive_avg_pool2d(x, output_size, channels_last=False):
    return _adaptive_avg_pool(2, x, output_size, channels_last)


def adaptive_avg_pool3d(x, output_size, channels_last=False):
    return _adaptive_avg_pool(3, x, output_size, channels_last)


def _adaptive_avg_pool_backward(nd, grad_output, input_shape, channels_last):
    cl = check_bool(channels_last, "channels_last")
    lead, spatial, batched = _input_shape(input_shape, nd, cl)
    _check_nonempty(spatial)
    g, dtype = as_float_array(_unbatched_grad(grad_output, batched), "grad_output")
    n, c, out_size = split_shape(g.shape, cl) if g.ndim == nd + 2 else (None, None, ())
    if g.ndim != nd + 2 or (n, c) != lead or min(out_size) < 1:
        layout = "(N, *output_size, C)" if cl else "(N, C, *output_size)"
        raise ValueError(f"grad_output must have shape {layout} with (N, C) = {lead} and "
                         f"every output size >= 1, got {g.shape}")
    grid = BinGrid.adaptive(spatial, out_size)
    return finish_output(bin_avg_backward(g, grid, lead, channels_last=cl), batched, dtype)


def adaptive_max_pool1d_backward(grad_output, indices, input_shape, channels_last=False):
    return _max_pool_backward(1, grad_output, indices, input_shape, channels_last)


def adaptive_max_pool2d_backward(grad_output, indices, input_shape, channels_last=False):
    return _max_pool_backward(2, grad_output, indices, input_shape, channels_last)


def adaptive_max_pool3d_backward(grad_output, indices, input_shape, channels_last=False):
    return _max_pool_backward(3, grad_output, indices, input_shape, channels_last)


def adaptive_avg_pool1d_backward(grad_output, input_shape, channels_last=False):
    return _adaptive_avg_pool_backward(1, grad_output, input_shape, channels_last)


def adaptive_avg_pool2d_backward(grad_output, input_shape, channels_last=False):
    return _adaptive_avg_pool_backward(2, grad_output, input_shape, channels_last)


def adaptive_avg_pool3d_backward(grad_output, input_shape, channels_last=False):
    return _adaptive_avg_pool_backward(3, grad_output, input_shape, channels_last)


_DIMS = {1: "L", 2: "H, W", 3: "D, H, W"}

_ADAPTIVE_MAX_DOC = """{nd}-D adaptive max pooling, as torch.nn.functional.adaptive_max_pool{nd}d.

    Parameters
    ----------
    x : array_like, shape (N, C, {dims}) or (C, {dims})
    output_size : int or {nd} entries, each an int >= 1 or None (None keeps that dim)
        Bins follow PyTorch's rule: along an axis of length L with O outputs, bin i is
        ``[floor(i*L/O), ceil((i+1)*L/O))``; bins overlap when O does not divide L.
    return_indices : bool
        Also return int64 indices, flat within each (n, c) input plane (PyTorch's format).
    channels_last : bool
        True: x is (N, {dims}, C) (Keras/TF), and so are the output and indices.

    Notes
    -----
    Integer input keeps its dtype (exact, as max_pool{nd}d). A bin holding NaN yields NaN and the index of its last NaN in scan order (PyTorch's
    ``(v > m) || isnan(v)`` rule); ties report the first maximum.
    """

_ADAPTIVE_AVG_DOC = """{nd}-D adaptive average pooling, as
    torch.nn.functional.adaptive_avg_pool{nd}d.

    Parameters
    ----------
    x : array_like, shape (N, C, {dims}) or (C, {dims})
    output_size : int or {nd} entries, each an int >= 1 or None (None keeps that dim)
        Bin i along an axis of length L with O outputs is ``[floor(i*L/O), ceil((i+1)*L/O))``
        (PyTorch's rule); each output is its bin's sum over its number of elements.
    channels_last : bool
        True: x is (N, {dims}, C) (Keras/TF), and so is the output.
    """

_ADAPTIVE_MAX_BACKWARD_DOC = """Gradient of adaptive_max_pool{nd}d from its PyTorch-style
    indices: ``grad_input[n, c].flat[indices] += grad_output``, scattered per (n, c) plane
    in index order (deterministic). input_shape is the forward input's shape."""

_ADAPTIVE_AVG_BACKWARD_DOC = """Gradient of adaptive_avg_pool{nd}d for an input of
    `input_shape`; the output size is read from grad_output's shape. Each input element
    gets the sum, over the bins covering it, of grad_output / bin size (per-plane scatter)."""

for _nd in (1, 2, 3):
    _fmt = dict(nd=_nd, dims=_DIMS[_nd])
    globals()[f"adaptive_max_pool{_nd}d"].__doc__ = _ADAPTIVE_MAX_DOC.format(**_fmt)
    globals()[f"adaptive_avg_pool{_nd}d"].__doc__ = _ADAPTIVE_AVG_DOC.format(**_fmt)
    globals()[f"adaptive_max_pool{_nd}d_backward"].__doc__ = \
        _ADAPTIVE_MAX_BACKWARD_DOC.format(**_fmt)
    globals()[f"adaptive_avg_pool{_nd}d_backward"].__doc__ = \
        _ADAPTIVE_AVG_BACKWARD_DOC.format(**_fmt)
    for _name, _arrays in ((f"adaptive_max_pool{_nd}d", ("x",)),
                           (f"adaptive_avg_pool{_nd}d", ("x",)),
                           (f"adaptive_max_pool{_nd}d_backward", ("grad_output", "indices")),
                           (f"adaptive_avg_pool{_nd}d_backward", ("grad_output",))):
        globals()[_name] = in_float32_chunks(_arrays, ("input_shape",), _nd + 2)(
            globals()[_name])
del _nd, _fmt, _name, _arrays


# --------------------------------------------------------------------------------------
# Variable-scale (binned) pooling.
# --------------------------------------------------------------------------------------

def bin_input(x, bins, mode, p, channels_last=False):
    mode = check_choice(mode, "mode", MODES)
    p = check_positive_float(p, "p")
    channels_last = check_bool(channels_last, "channels_last")
    bins = check_bins(bins)
    x, batched, dtype = spatial_input(x, len(bins), integers=mode == "max")
    spatial = split_shape(x.shape, channels_last)[2]
    bins = check_bins(bins, spatial)
    return x, batched, dtype, BinGrid(spatial, bins), mode, p, channels_last


@in_float32_chunks(("x",), batched_ndim=lambda a: len(a["bins"]) + 2)
def bin_pool(x, bins, mode="max", p=2, channels_last=False):
    """Pooling over explicit, variable-size bins.

    Parameters
    ----------
    x : array_like, shape (N, C, *spatial) or (C, *spatial), len(bins) spatial dims
    bins : one sequence of half-open ``(start, end)`` pairs per spatial axis (1 to 3)
        ``output[..., i, j]`` pools rows ``bins[0][i]`` x cols ``bins[1][j]``. Bins may
        differ in size, overlap or leave gaps; each needs ``0 <= start < end <= L``.
        adaptive_bins and window_bins build them.
    mode : "max", "avg" or "lp"
        max (NaN propagates, PyTorch's rule), mean over the bin, or
        ``(sum |x|**p) ** (1/p)`` (ONNX LpPool's definition).
    p : float > 0
        The Lp exponent (mode "lp" only).
    channels_last : bool
        True: x is (N, *spatial, C) (Keras/TF), and so is the output.

    Returns
    -------
    ndarray of shape (N, C, len(bins[0]), ...). Integer input keeps its dtype with
    mode "max" (exact); "avg" and "lp" compute integers in float64.

    Examples
    --------
    Window size as a function of position -- 2 at the borders, 4 inside:

    >>> f = lambda pos: 2 if pos < 4 or pos >= 12 else 4
    >>> x = np.ones((1, 1, 16, 16), np.float32)
    >>> bin_pool(x, [window_bins(16, f)] * 2, mode="avg").shape
    (1, 1, 6, 6)
    """
    x, batched, dtype, grid, mode, p, cl = bin_input(x, bins, mode, p, channels_last)
    return finish_output(bin_forward(x, grid, mode, p, cl), batched, dtype)


@in_float32_chunks(("x", "grad_output"),
                   batched_ndim=lambda a: len(a["bins"]) + 2)
def bin_pool_backward(grad_output, x, bins, mode="max", p=2, channels_last=False):
    """Gradient of bin_pool(x, bins, mode, p) with respect to x.

    "max" sends each output's gradient to its bin's argmax (recomputed from x, PyTorch's
    rule); "avg" spreads grad / bin size over the bin; "lp" uses
    sign(x) |x|^(p-1) / y^(p-1) (0 where y == 0 or x == 0). Overlapping bins add up.
    """
    x, batched, dtype, grid, mode, p, cl = bin_input(x, bins, mode, p, channels_last)
    x, _ = as_float_array(x)  # integer input: the gradient is computed in float64
    n, c, _ = split_shape(x.shape, cl)
    g = _grad_output(_unbatched_grad(grad_output, batched), join_shape(n, c, grid.out_size, cl))
    g = g.astype(x.dtype, copy=False)
    return finish_output(bin_backward_from_input(g, x, grid, mode, p, channels_last=cl), batched,
                         x.dtype if dtype.kind in "iu" else dtype)


# --------------------------------------------------------------------------------------
# Spatial pyramid pooling.
# --------------------------------------------------------------------------------------

def pyramid_input(x, levels, mode, channels_last=False, integers=False):
    levels = check_levels(levels)
    mode = check_choice(mode, "mode", PYRAMID_MODES)
    channels_last = check_bool(channels_last, "channels_last")
    x, batched, dtype = spatial_input(x, 2, integers=integers and mode == "max")
    spatial = split_shape(x.shape, channels_last)[2]
    _check_nonempty(spatial)
    grids = tuple(BinGrid.adaptive(spatial, (level, level)) for level in levels)
    return x, batched, dtype, grids, mode, channels_last


def pyramid_outputs(x, grids, channels_last=False):
    """The pyramid's output, (N, sum of level sizes), and each level's part of it as a view
    of the level's pooled shape, for the kernels to write in place (no concatenation)."""
    N, C, _ = split_shape(x.shape, channels_last)
    out = np.empty((N, C * sum(g.out_size[0] * g.out_size[1] for g in grids)), dtype=x.dtype)
    levels, start = [], 0
    for g in grids:
        end = start + C * g.out_size[0] * g.out_size[1]
        levels.append(out[:, start:end].reshape(join_shape(N, C, g.out_size, channels_last)))
        start = end
    return out, levels


def _nested_levels(grids, mode):
    """(finest level, {nested level: the level it is pooled from}), finer levels first:
    for max, every level whose size divides the finest's is pooled from the output of
    the smallest level already placed whose size is a multiple of its own (the finest,
    or a nested one: level 1 from level 2 from level 4). Adaptive bins nest exactly:
    bins k*i .. k*i+k-1 of size M (k = M/L) tile [floor(i*H/L), ceil((i+1)*H/L)), bin i
    of size L, because consecutive bins touch or overlap, so a max over them is the max
    over it: NaN where it holds one, though which NaN's payload, and which of +0 and -0
    on a tie, may differ from pooling the input (they would in another scan order too)."""
    def size(k):
        return grids[k].out_size[0]
    finest = max(range(len(grids)), key=size)
    sources = {}
    if mode != "max":
        return finest, sources
    for k in sorted((k for k in range(len(grids)) if k != finest and size(finest) % size(k) == 0),
                    key=size, reverse=True):
        sources[k] = min((j for j in (finest, *sources) if size(j) % size(k) == 0), key=size)
    return finest, sources


@functools.lru_cache(maxsize=64)
def _pyramid_plan(grids, mode):
    """(finest level, {nested level: its source} as _nested_levels gives them, {nested
    level: its grid over its source's output}, the levels in the plane blocks' order
    (the finest, the nested ones, the rest), and each one's window tables, divisors and
    source's place in that order) of pyramid_forward; cached, as grids are."""
    finest, sources = _nested_levels(grids, mode)
    subs = {k: BinGrid.adaptive(grids[j].out_size, grids[k].out_size) for k, j in sources.items()}
    order = [finest, *sources] + [k for k in range(len(grids))
                                  if k != finest and k not in sources]
    tables = [(*window_tables(subs.get(k, grids[k]))[0], *_divisors(subs.get(k, grids[k]), mode),
               order.index(sources[k]) if k in sources else -1) for k in order]
    return finest, sources, subs, order, tables


# The narrow kernel (cpool._layout.narrow_planes) for pyramids too: SPP max (1, 2, 4) on
# (32, 256, 13, 13), levels 1 and 2 pooled from level 4: 0.45 -> 0.43 ms at 1 thread,
# 0.31 -> 0.23 at 2; avg (1, 2, 4): 0.64 -> 0.56, 0.55 -> 0.30; max (1, 3, 4), two
# levels from the input: 0.51 -> 0.58, 0.29 -> 0.31.
PYRAMID_NARROW = True


def pyramid_forward(x, grids, mode, channels_last=False):
    """(the pyramid's output, each level's view of it), every level pooled in place; small
    channels-first planes pool all levels in one pass over each block of planes. Max
    levels that nest in a finer one are pooled from its output (_nested_levels)."""
    out, levels = pyramid_outputs(x, grids, channels_last)
    finest, sources, subs, order, tables = _pyramid_plan(tuple(grids), mode)
    if runs_plane_blocks(grids[0].in_size, channels_last):
        specs = [(plane_view(levels[k]), *tab) for k, tab in zip(order, tables)]
        _cl.forward_planes(plane_view(x), specs, int(_op(mode, 2.0)), 2.0,
                           threads_for(x, out, cost=len(grids) - len(sources)),
                           PYRAMID_NARROW and narrow_planes(grids[0].in_size))
        return out, levels
    for k in [finest] + order[1 + len(sources):]:  # the levels pooled from the input
        bin_forward(x, grids[k], mode, channels_last=channels_last, out=levels[k])
    if not sources:
        return out, levels
    # a pooled level's images lie apart in `out`: kernels that read such input, in place
    if channels_last:
        for k, sub in subs.items():  # finer first: each level's source is pooled already
            bin_forward(levels[sources[k]], sub, mode, channels_last=True, out=levels[k])
    else:  # one pass over the finest level's output (bin_forward's global pooling copies)
        nested = list(sources)
        _cl.forward_planes(plane_view(levels[finest]),
                           [(plane_view(levels[k]), *window_tables(subs[k])[0],
                             *_divisors(subs[k], mode),
                             -1 if sources[k] == finest else nested.index(sources[k]))
                            for k in nested],
                           int(PoolOp.OP_MAX), 2.0, threads_for(levels[finest], cost=len(nested)),
                           PYRAMID_NARROW and narrow_planes(grids[finest].out_size))
    return out, levels


def _one_pass_pyramid(grids, channels_last):
    """True when the plane-block max kernels take every level in one pass: small
    channels-first planes, and one tap dtype for all levels."""
    return (runs_plane_blocks(grids[0].in_size, channels_last)
            and len({np.dtype(g.tap_dtype) for g in grids}) == 1)


def pyramid_max_forward_taps(x, grids, channels_last=False):
    """(the pyramid's max output, each level's view of it, the argmax for
    pyramid_max_backward): in one pass over the input where _one_pass_pyramid, as one
    taps array laid out as the output; else a list of each level's taps."""
    out, levels = pyramid_outputs(x, grids, channels_last)
    if _one_pass_pyramid(grids, channels_last):
        taps = np.empty(out.shape, dtype=grids[0].tap_dtype)
        threads = threads_for(x, out, taps, cost=len(grids))
        _cl.max_forward_taps_planes(plane_view(x), taps,
                                    [tap_level(g, level) for g, level in zip(grids, levels)],
                                    threads)
        return out, levels, taps
    taps = [bin_max_forward_taps(x, g, channels_last, out=level)[1]
            for g, level in zip(grids, levels)]
    return out, levels, taps


def pyramid_max_backward(grad_output, taps, lead, grids, channels_last=False):
    """Gradient of the pyramid's max from (N, C * sum l^2) grad_output and the taps of
    pyramid_max_forward_taps: in one pass, each window's gradient added at its argmax,
    levels in order and windows in raster order within a level; else each level's
    gradient added in level order. lead is (N, C)."""
    if not isinstance(taps, list):
        grad_in = np.empty(join_shape(*lead, grids[0].in_size, False), dtype=grad_output.dtype)
        threads = threads_for(grad_output, taps, grad_in)
        _cl.max_backward_taps_planes(np.ascontiguousarray(grad_output), taps,
                                     plane_view(grad_in),
                                     [tap_offsets(g) for g in grids],
                                     threads)
        return grad_in
    grad_in = None
    for part, level_taps, grid in zip(pyramid_split(grad_output, lead, grids, channels_last),
                                      taps, grids):
        grad_in = bin_max_backward(part, level_taps, grid, lead, grad_in, channels_last)
    return grad_in


def pyramid_split(grad_output, lead, grids, channels_last=False):
    """(N, C * sum l^2) gradient -> per-level contiguous arrays of the levels' shapes;
    lead is (N, C)."""
    widths = [lead[1] * g.out_size[0] * g.out_size[1] for g in grids]
    g = _grad_output(grad_output, (lead[0], sum(widths)))
    bounds = np.cumsum([0] + widths)
    return [np.ascontiguousarray(g[:, a:b]).reshape(join_shape(*lead, grid.out_size,
                                                               channels_last))
            for a, b, grid in zip(bounds[:-1], bounds[1:], grids)]


@in_float32_chunks(("x",), batched_ndim=4)
def spatial_pyramid_pool(x, levels=(1, 2, 4), mode="max", channels_last=False):
    """Spatial pyramid pooling (He et al., 2014): a fixed-length vector from any H x W.

    Each level l is an adaptive pool of (N, C, H, W) to (l, l) (PyTorch's bin rule
    ``[floor(i*L/l), ceil((i+1)*L/l))``), flattened as (C, l, l) row-major; the levels
    are concatenated in the given order, giving shape (N, C * sum(l*l)) (or
    (C * sum(l*l),) for unbatched (C, H, W) input).

    Parameters
    ----------
    levels : non-empty sequence of ints >= 1
    mode : "max" or "avg"
    channels_last : bool
        True: x is (N, H, W, C) (or (H, W, C)), and each level is flattened as (l, l, C),
        as Keras' Flatten would. Integer input keeps its dtype with mode "max".
    """
    x, batched, dtype, grids, mode, cl = pyramid_input(x, levels, mode, channels_last, True)
    return finish_output(pyramid_forward(x, grids, mode, cl)[0], batched, dtype)


@in_float32_chunks(("x", "grad_output"), batched_ndim=4)
def spatial_pyramid_pool_backward(grad_output, x, levels=(1, 2, 4), mode="max",
                                  channels_last=False):
    """Gradient of spatial_pyramid_pool(x, levels, mode) with respect to x: the sum over
    levels of each level's adaptive-pool gradient (max: recomputed argmax)."""
    x, batched, dtype, grids, mode, cl = pyramid_input(x, levels, mode, channels_last)
    lead = split_shape(x.shape, cl)[:2]
    g = _grad_output(_unbatched_grad(grad_output, batched),
                     (lead[0], lead[1] * sum(g.out_size[0] * g.out_size[1] for g in grids)))
    g = g.astype(x.dtype, copy=False)
    if mode == "max":  # as the layer does it, to the bit
        taps = pyramid_max_forward_taps(x, grids, cl)[2]
        return finish_output(pyramid_max_backward(g, taps, lead, grids, cl), batched, dtype)
    parts = pyramid_split(g, lead, grids, cl)
    grad_in = None
    for g, grid in zip(parts, grids):
        grad_in = bin_backward_from_input(g, x, grid, mode, 2.0, grad_in, cl)
    return finish_output(grad_in, batched, dtype)
