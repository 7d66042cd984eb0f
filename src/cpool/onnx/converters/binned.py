"""Global, adaptive, binned (BinPool) and spatial pyramid pooling: exact decompositions.

Every one of these layers pools over *bins* (cpool._binned): per spatial axis a list of
half-open (start, end) ranges; output[..., i, j] reduces the box bins[0][i] x bins[1][j].
The converter takes the bins from the layer itself (so they are cpool's, PyTorch's
adaptive rule ``[floor(i*L/O), ceil((i+1)*L/O))`` included) and writes:

* Global pooling -> GlobalMaxPool / GlobalAveragePool, and for Lp an LpPool whose window
  is the whole input (integer p; exactly GlobalLpPool, which onnxruntime lacks from
  opset 22; other p as Abs, Pow, ReduceSum, Pow(1/p)), then Flatten(axis=1) when
  keepdims is False.
* Bins that form a regular grid from 0 (size k, step s, exactly O windows; adaptive
  pooling whose sizes divide) -> one MaxPool / AveragePool / LpPool (integer p), no pads.
* Any other bins (non-divisible adaptive sizes, BinPool's gaps and overlaps) -> a
  separable decomposition, one spatial axis after another: per bin a Slice and a
  ReduceMax (max) or ReduceSum (avg, lp), concatenated along that axis. Max and sum over
  a box are the max and sum of per-axis reductions, so this is exact (no averaging
  weights that would turn an inf into NaN); avg then divides by the constant element
  count of each bin, lp applies |x|^p before and ^(1/p) after.
* Max with indices (AdaptiveMaxPool return_indices) -> x is viewed as (N, C, plane),
  a Gather with a constant (bins, largest bin) table of flat positions collects each
  bin's elements in scan order (smaller bins repeat their first element at the end,
  which changes neither the max nor the first-maximum position), then ReduceMax gives
  the values and ArgMax (first maximum, on float input) the position, which a second
  Gather maps to the plane index cpool returns.
* SpatialPyramidPool -> each level as above, Flatten(axis=1), Concat in level order:
  (N, C*sum l^2), each level flattened as (C, l, l) row-major; with channels_last as
  (l, l, C), as cpool does: a Transpose of each level to (N, l, l, C) before its Flatten.

Channels-last layers get their input channels-first like every converter
(cpool.onnx.layout); their bins are those of the spatial axes either way.
"""
import numpy as np

from ...layers.binned import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d,
                              AdaptiveMaxPool1d, AdaptiveMaxPool2d, AdaptiveMaxPool3d, BinPool,
                              GlobalAvgPool, GlobalLPPool, GlobalMaxPool, SpatialPyramidPool)
from ..layout import unbatched_error
from ..registry import register_converter

_POOL_OPS = {"max": "MaxPool", "avg": "AveragePool", "lp": "LpPool"}


def _grids(layer, x):
    """The layer's BinGrids for the example input (batched (N, C, *spatial) required)."""
    if x.ndim < 3:
        raise unbatched_error(layer, x)
    data = np.moveaxis(x.data, 1, -1) if layer.channels_last else x.data  # as cpool holds it
    _, batched, _, grids = layer._prepare(data)
    if not batched:
        raise unbatched_error(layer, x)
    return grids


def _integer_p(p):
    return float(p) == int(p)


def regular_grid(bins, length):
    """(k, s) when `bins` are O windows of size k at 0, s, 2s, ... that a pool with no
    pads over `length` reproduces exactly (floor((L-k)/s) + 1 == O); else None."""
    size = bins[:, 1] - bins[:, 0]
    k = int(size[0])
    if (size != k).any() or bins[0, 0] != 0:
        return None
    s = int(bins[1, 0] - bins[0, 0]) if len(bins) > 1 else 1
    if s < 1 or (bins[:, 0] != np.arange(len(bins)) * s).any():
        return None
    if (length - k) // s + 1 != len(bins):
        return None
    return k, s


def _powered(ctx, x, p):
    if p == 1.0:
        return ctx.make_node("Abs", [x])
    if p == 2.0:
        return ctx.make_node("Mul", [x, x])
    return ctx.make_node("Pow", [ctx.make_node("Abs", [x]), ctx.fconst(p, "p")])


def _root(ctx, sums, p):
    if p == 1.0:
        return sums
    if p == 2.0:
        return ctx.make_node("Sqrt", [sums])
    return ctx.make_node("Pow", [sums, ctx.fconst(1.0 / p, "inv_p")])


def bin_reduce(ctx, x, grid, mode, p=2.0):
    """Name of `mode` pooling ("max", "avg", "lp") of name `x` over BinGrid `grid`."""
    bins = [np.asarray(b) for b in grid.bins]
    regular = [regular_grid(b, L) for b, L in zip(bins, grid.in_size)]
    integer_p = mode != "lp" or _integer_p(p)
    if all(r is not None for r in regular) and integer_p:
        attrs = dict(kernel_shape=[r[0] for r in regular], strides=[r[1] for r in regular])
        if mode == "lp":
            attrs["p"] = int(p)
        return ctx.make_node(_POOL_OPS[mode], [x], **attrs)
    if mode == "lp":
        x = _powered(ctx, x, p)
    reduce_op = "ReduceMax" if mode == "max" else "ReduceSum"
    for axis, (axis_bins, length) in enumerate(zip(bins, grid.in_size)):
        onnx_axis = 2 + axis
        parts = []
        for start, end in axis_bins:
            part = x
            if not (start == 0 and end == length):
                part = ctx.slice(x, [int(start)], [int(end)], [onnx_axis])
            parts.append(ctx.reduce(reduce_op, part, [onnx_axis], keepdims=True))
        x = ctx.concat(parts, onnx_axis)
    if mode == "avg":
        return ctx.make_node("Div", [x, ctx.fconst(grid.counts(), "bin_counts")])
    if mode == "lp":
        return _root(ctx, x, p)
    return x


def bin_max_with_indices(ctx, x, grid, channels):
    """(values, cpool indices) of max pooling of name `x` over BinGrid `grid`."""
    bins = [np.asarray(b) for b in grid.bins]
    in_size, out_size = grid.in_size, grid.out_size
    plane = int(np.prod(in_size))
    boxes = []
    for index in np.ndindex(*out_size):
        ranges = [np.arange(*bins[axis][i]) for axis, i in enumerate(index)]
        mesh = np.meshgrid(*ranges, indexing="ij")
        boxes.append(np.ravel_multi_index(mesh, in_size).ravel())
    width = max(len(b) for b in boxes)
    table = np.stack([np.concatenate([b, np.full(width - len(b), b[0])]) for b in boxes])
    flat = ctx.reshape(x, [0, channels, plane])
    gathered = ctx.make_node("Gather", [flat, ctx.iconst(table, "bin_elements")], axis=2)
    values = ctx.reduce("ReduceMax", gathered, [3], keepdims=False)
    position = ctx.make_node("ArgMax", [gathered], axis=3, keepdims=0)
    offsets = ctx.iconst(np.arange(len(boxes)) * width, "bin_offsets")
    indices = ctx.make_node("Gather", [ctx.iconst(table.ravel(), "bin_table"),
                                       ctx.make_node("Add", [position, offsets])], axis=0)
    shape = [0, channels] + list(out_size)
    return ctx.reshape(values, shape), ctx.reshape(indices, shape)


# ----------------------------------------------------------------------------- converters
@register_converter(GlobalMaxPool, GlobalAvgPool, GlobalLPPool)
def convert_global_pool(ctx, layer, x):
    grid, = _grids(layer, x)
    if layer.mode == "lp" and not _integer_p(layer.p):
        axes = list(range(2, x.ndim))
        y = _root(ctx, ctx.reduce("ReduceSum", _powered(ctx, x.name, layer.p), axes), layer.p)
    elif layer.mode == "lp":
        # LpPool with the whole input as its window is GlobalLpPool; onnxruntime has no
        # kernel for GlobalLpPool-22, while LpPool runs at every opset.
        y = ctx.make_node("LpPool", [x.name], kernel_shape=list(grid.in_size), p=int(layer.p))
    else:
        y = ctx.make_node({"max": "GlobalMaxPool", "avg": "GlobalAveragePool"}[layer.mode],
                          [x.name])
    return y if layer.keepdims else ctx.make_node("Flatten", [y], axis=1)


@register_converter(AdaptiveMaxPool1d, AdaptiveMaxPool2d, AdaptiveMaxPool3d,
                    AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d, BinPool)
def convert_bin_pool(ctx, layer, x):
    grid, = _grids(layer, x)
    if getattr(layer, "return_indices", False):
        return bin_max_with_indices(ctx, x.name, grid, x.shape[1])
    return bin_reduce(ctx, x.name, grid, layer.mode, getattr(layer, "p", 2.0))


@register_converter(SpatialPyramidPool)
def convert_spatial_pyramid_pool(ctx, layer, x):
    levels = []
    for grid in _grids(layer, x):
        level = bin_reduce(ctx, x.name, grid, layer.mode)
        if layer.channels_last:
            level = ctx.make_node("Transpose", [level], perm=[0, 2, 3, 1])
        levels.append(ctx.make_node("Flatten", [level], axis=1))
    return ctx.concat(levels, 1)
