"""Max, average and Lp pooling -> MaxPool, AveragePool, LpPool, always with explicit pads.

cpool decides every window (cpool._geometry.PoolGeometry); the graph only replays them:

* Pads. The ONNX node gets ``pads = (pad_begin, pad_end')`` with ceil_mode=0, where
  ``pad_end' = max((out-1)*stride + dilation*(kernel-1) + 1 - L - pad_begin, 0)`` is the
  end pad that makes floor arithmetic give exactly cpool's output size: no runtime
  ceil_mode or auto_pad rule is ever involved (they disagreed between runtimes and
  opsets). pad_end' exceeds pad_end only by ceil_mode's overhang. onnxruntime requires
  every pad < kernel_shape; where a (dilated) window needs more, a Pad node pads first
  and the pool runs unpadded.
* Max: padding never wins (cpool pads with -inf). A window made only of padding (only
  possible with dilation) is -inf in cpool, while onnxruntime starts its max at
  -FLT_MAX; such windows are known from the geometry, and a Where with a constant mask
  writes -inf there. (A window of input values that are all -inf also gives -FLT_MAX
  in onnxruntime; that depends on data and is left to the runtime.)
  Integer input keeps its dtype, as in cpool (whose padding and all-padding windows
  are the dtype's minimum): int8/uint8 run MaxPool itself (ONNX MaxPool-12's types);
  16-bit integers run it in float32 and 32-bit ones in float64 between two Casts, which
  is exact (every value fits the mantissa), as is the float path for int8/uint8 with
  indices, where a Pad node's fill could otherwise tie with the dtype's minimum and win
  the index. int64 has no exact form (DtypeError).
  Indices: ONNX's are flat over the whole (N, C, *spatial) tensor,
  cpool's (PyTorch's) flat within each (n, c) plane of the unpadded input:
  ``cpool = onnx mod plane_size`` when no Pad node came first, else a Gather from a
  constant table mapping each padded position to the input element it holds (-1 for a
  zero pad, as cpool._padding.unpad_indices).
* Average: cpool's divisor (count_include_pad True: taps inside the padded extent, not
  the ceil_mode overhang; False: taps inside the input; or divisor_override) is computed
  by cpool. When onnxruntime's own rule gives the same divisors (count_include_pad=0 with
  every window touching the input, or a full kernel everywhere), AveragePool alone is
  used; otherwise AveragePool(count_include_pad=1), whose divisor is then the kernel
  volume everywhere, is multiplied by the kernel volume (the window sums) and divided
  by cpool's divisor of each window, a constant tensor (max(count, 1): a window with no
  tap inside sums to 0 and averages to 0).
  Dilated AveragePool exists from opset 19 (onnxruntime's CPU kernel implements it);
  below, the window sums come from a depthwise Conv with a ones kernel (Conv has had
  dilations since opset 1).
* padding_mode "zeros", "edge", "reflect": a Pad node (mode constant/edge/reflect, as
  np.pad) and then the same windows over the padded input with no padding left
  (cpool._padding.kernel_geometry); their indices go through the same lookup table.
* Lp: ``(sum |x|^p)^(1/p)``, which is exactly ONNX LpPool. LpPool takes an integer p and
  dilations from opset 18; other p (or dilation below 18) are decomposed into
  Abs/Pow -> window sum -> Pow(1/p).
"""
import numpy as np
from onnx import helper

from ..._geometry import PoolGeometry
from ..._padding import kernel_geometry, source_map
from ...layers.pooling import (AvgPool1d, AvgPool2d, AvgPool3d, LPPool1d, LPPool2d, LPPool3d,
                               MaxPool1d, MaxPool2d, MaxPool3d)
from ..graph import DtypeError, ExportError, Value
from ..layout import unbatched_error
from ..registry import register_converter

# onnxruntime's MaxPool kernels: float types, int8 and uint8 (the types of MaxPool-12).
NATIVE_MAX_INTEGERS = (np.dtype(np.int8), np.dtype(np.uint8))


# ----------------------------------------------------------------------------- helpers
def spatial_geometry(layer, x):
    """The layer's PoolGeometry for input Value x, which must be batched (N, C, *spatial)."""
    nd = layer.nd
    if x.ndim != nd + 2:
        raise unbatched_error(layer, x, f" of {nd + 2} dims")
    return PoolGeometry.create(x.shape[2:], layer.kernel_size, layer.stride, layer.padding,
                               layer.dilation, layer.ceil_mode)


class Windows:
    """The windows a pool node runs over, and what each position of its input holds.

    ``x``: the name the pool reads (after any Pad nodes); ``dtype``: its dtype in the
    graph; ``geom``: its geometry;
    ``in_size``: the spatial size of the layer's (unpadded) input; ``sources``: per
    spatial dim, the input position each position of ``x`` copies (-1: none), or None
    when ``x`` is the unpadded input; ``values``: per spatial dim, whether a position
    holds a value (an input element or a padding_mode pad; False for a pad the pooling
    ignores), or None when all do.
    """

    def __init__(self, x, dtype, geom, in_size, sources=None, values=None):
        self.x, self.dtype, self.geom, self.in_size = x, np.dtype(dtype), geom, tuple(in_size)
        self.sources, self.values = sources, values

    def padded(self, ctx, begin, end, fill, mode="constant", holds_values=False):
        """These windows after an explicit Pad of (begin, end) per spatial dim: the same
        windows over a larger input. `mode` is ONNX Pad's (constant, edge, reflect);
        holds_values says whether the pads count as values (padding_mode) or not."""
        x = ctx.pad(self.x, (0, 0) + tuple(begin), (0, 0) + tuple(end), mode=mode,
                    value=fill if mode == "constant" else None, dtype=self.dtype)
        size = tuple(L + b + e for L, b, e in zip(self.geom.in_size, begin, end))
        if mode == "constant":
            old = self.sources or [np.arange(L) for L in self.geom.in_size]
            sources = [np.pad(s, (b, e), constant_values=-1) for s, b, e in zip(old, begin, end)]
        else:  # only ever applied to the unpadded input
            sources = [source_map(L, b, e, mode)
                       for L, b, e in zip(self.geom.in_size, begin, end)]
        old = self.values or [np.ones(L, dtype=bool) for L in self.geom.in_size]
        values = [np.pad(v, (b, e), constant_values=holds_values)
                  for v, b, e in zip(old, begin, end)]
        geom = PoolGeometry(size, self.geom.kernel, self.geom.stride, self.geom.dilation,
                            tuple(pb - b for pb, b in zip(self.geom.pad_begin, begin)),
                            tuple(pe - e for pe, e in zip(self.geom.pad_end, end)),
                            self.geom.ceil_mode, self.geom.out_size)
        return Windows(x, self.dtype, geom, self.in_size, sources, values)


def prepare_windows(ctx, layer, x, dtype=None):
    """Windows of a sliding-window pooling layer on input Value x (held in `dtype`,
    default the graph's float type), with its padding_mode applied as a Pad node (see
    the module docstring)."""
    geom = spatial_geometry(layer, x)
    windows = Windows(x.name, dtype or ctx.dtype, geom, geom.in_size)
    mode = getattr(layer, "padding_mode", "ignore")
    if mode != "ignore":
        kernel_geometry(geom, mode)  # validates (reflect needs pads < the input length)
        onnx_mode = "constant" if mode == "zeros" else mode
        windows = windows.padded(ctx, geom.pad_begin, geom.pad_end, 0.0, mode=onnx_mode,
                                 holds_values=True)
    return windows


def floor_pads(geom):
    """(pad_begin, pad_end') per dim: floor-mode pads giving exactly geom.out_size windows."""
    ends = []
    for L, o, k, s, d, pb in zip(geom.in_size, geom.out_size, geom.kernel, geom.stride,
                                 geom.dilation, geom.pad_begin):
        ends.append(max((o - 1) * s + d * (k - 1) + 1 - L - pb, 0))
    return tuple(geom.pad_begin), tuple(ends)


def pool_node(ctx, op_type, windows, fill, **attrs):
    """`op_type` (MaxPool, AveragePool, LpPool) over `windows`; returns (output name(s),
    the windows actually pooled). A Pad node filled with `fill` comes first when some pad
    is >= the kernel (onnxruntime refuses those pads as attributes)."""
    begin, end = floor_pads(windows.geom)
    if any(max(b, e) >= k for b, e, k in zip(begin, end, windows.geom.kernel)):
        windows = windows.padded(ctx, begin, end, fill)
        begin, end = floor_pads(windows.geom)
    geom = windows.geom
    attrs.setdefault("outputs", 1)
    dilations = list(geom.dilation) if any(d != 1 for d in geom.dilation) else None
    out = ctx.make_node(op_type, [windows.x], kernel_shape=list(geom.kernel),
                        strides=list(geom.stride), pads=list(begin) + list(end),
                        dilations=dilations, **attrs)
    return out, windows


def window_mask(geom, values=None):
    """Boolean array of geom.out_size: True where no tap of the window holds a value
    (taps outside the input, or on positions whose `values` entry is False)."""
    inside = []
    for axis, (L, o, k, s, d, pb) in enumerate(zip(geom.in_size, geom.out_size, geom.kernel,
                                                   geom.stride, geom.dilation, geom.pad_begin)):
        taps = np.arange(o)[:, None] * s - pb + np.arange(k)[None, :] * d
        valid = (taps >= 0) & (taps < L)
        if values is not None:
            valid &= values[axis][np.clip(taps, 0, L - 1)]
        inside.append(valid.any(axis=1))
    full = np.ones(geom.out_size, dtype=bool)
    for axis, v in enumerate(inside):
        shape = [1] * geom.nd
        shape[axis] = -1
        full = full & v.reshape(shape)
    return ~full


def divisor_grid(geom, count_include_pad, divisor_override=None):
    """cpool's divisor of every window, shape geom.out_size: the product of
    PoolGeometry.divisors_3d's per-dim divisors, its W columns expanded to a vector."""
    div_d, div_h, (edge, n_left, right_start, mid) = geom.divisors_3d(count_include_pad,
                                                                      divisor_override)
    width = geom.out_size[-1]  # W: the last spatial dim
    div_w = np.full(width, float(mid))
    div_w[:n_left] = edge[:n_left]
    div_w[right_start:] = edge[n_left:n_left + width - right_start]
    grid = div_d[:, None, None] * div_h[None, :, None] * div_w[None, None, :]
    return grid.reshape(geom.out_size)


def window_sum(ctx, windows, channels):
    """Name of the per-window sums (pads count 0), shape (N, C, *out).

    AveragePool(count_include_pad=1) over windows that all fit in the padded extent
    divides by the kernel volume; multiplying back gives the sums. Dilated windows use
    AveragePool-19's dilations, or below opset 19 a depthwise Conv with a ones kernel.
    """
    geom = windows.geom
    if any(d != 1 for d in geom.dilation) and ctx.opset < 19:
        begin, end = floor_pads(geom)
        windows = windows.padded(ctx, begin, end, 0.0)
        weight = ctx.fconst(np.ones((channels, 1) + geom.kernel), "ones_kernel")
        return ctx.make_node("Conv", [windows.x, weight], kernel_shape=list(geom.kernel),
                             strides=list(geom.stride), dilations=list(geom.dilation),
                             group=channels)
    avg, _ = pool_node(ctx, "AveragePool", windows, 0.0, count_include_pad=1)
    return ctx.make_node("Mul", [avg, ctx.fconst(geom.window_volume, "kernel_volume")])


def plane_indices(ctx, indices, windows):
    """ONNX MaxPool indices (flat over the whole tensor that `windows` pooled) -> cpool's
    (flat within each (n, c) plane of the unpadded input; -1 for a zero pad)."""
    size = windows.geom.in_size
    plane = ctx.make_node("Mod", [indices, ctx.iconst(int(np.prod(size)), "plane_size")])
    if windows.sources is None:
        return plane
    grids = np.meshgrid(*windows.sources, indexing="ij")
    table = np.zeros(size, dtype=np.int64)
    missing = np.zeros(size, dtype=bool)
    for g, L in zip(grids, windows.in_size):
        table = table * L + g
        missing |= g < 0
    table[missing] = -1
    return ctx.make_node("Gather", [ctx.iconst(table.ravel(), "index_table"), plane], axis=0)


# ----------------------------------------------------------------------------- converters
def lowest(dtype):
    """What cpool's max pooling pads with, and gives a window made only of padding."""
    dtype = np.dtype(dtype)
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def max_compute_dtype(layer, dtype):
    """The dtype the graph runs max pooling of graph dtype `dtype` in (module docstring)."""
    if dtype.kind == "f" or (dtype in NATIVE_MAX_INTEGERS and not layer.return_indices):
        return dtype
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        return np.dtype(np.float32)
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        return np.dtype(np.float64)
    raise DtypeError(f"{layer!r}: max pooling of {dtype} input has no exact ONNX form that "
                     f"onnxruntime runs (its MaxPool takes float, int8 and uint8; float64 "
                     f"holds {dtype} exactly only up to 2**53); export with an example of "
                     f"int32 or a narrower dtype")


@register_converter(MaxPool1d, MaxPool2d, MaxPool3d, integers=True)
def convert_max_pool(ctx, layer, x):
    dtype = ctx.dtype_of(x)
    compute = max_compute_dtype(layer, dtype)
    if compute != dtype:
        x = Value(ctx.cast(x.name, helper.np_dtype_to_tensor_dtype(compute)),
                  x.data.astype(compute))
    windows = prepare_windows(ctx, layer, x, compute)
    outputs = 2 if layer.return_indices else 1
    y, windows = pool_node(ctx, "MaxPool", windows, lowest(compute), outputs=outputs)
    indices = None
    if outputs == 2:
        y, indices = y
    empty = window_mask(windows.geom, windows.values)
    if empty.any():
        y = ctx.make_node("Where", [ctx.const(empty, "empty_window"),
                                    ctx.const(lowest(dtype), "lowest", compute), y])
    if compute != dtype:
        y = ctx.cast(y, helper.np_dtype_to_tensor_dtype(dtype))
    if indices is None:
        return y
    return y, plane_indices(ctx, indices, windows)


@register_converter(AvgPool1d, AvgPool2d, AvgPool3d)
def convert_avg_pool(ctx, layer, x):
    windows = prepare_windows(ctx, layer, x)
    geom = windows.geom
    override = layer.divisor_override
    if override is not None and int(override) == 0:
        raise ExportError(f"{layer!r}: divisor_override must be non-zero")
    divisor = divisor_grid(geom, bool(layer.count_include_pad), override)
    if all(d == 1 for d in geom.dilation) and override is None:
        inside = divisor_grid(geom, False)
        if np.array_equal(divisor, inside) and not window_mask(geom, windows.values).any():
            return pool_node(ctx, "AveragePool", windows, 0.0, count_include_pad=0)[0]
    sums = window_sum(ctx, windows, x.shape[1])
    if override is None:
        divisor = np.maximum(divisor, 1)  # a window with no tap inside sums to 0 -> 0
    return ctx.make_node("Div", [sums, ctx.fconst(divisor, "divisor")])


@register_converter(LPPool1d, LPPool2d, LPPool3d)
def convert_lp_pool(ctx, layer, x):
    windows = prepare_windows(ctx, layer, x)
    p = float(layer.norm_type)
    dilated = any(d != 1 for d in windows.geom.dilation)
    if p == int(p) and (not dilated or ctx.opset >= 18):
        return pool_node(ctx, "LpPool", windows, 0.0, p=int(p))[0]
    if p == 1.0:
        powered = ctx.make_node("Abs", [windows.x])
    elif p == 2.0:
        powered = ctx.make_node("Mul", [windows.x, windows.x])
    else:
        powered = ctx.make_node("Pow", [ctx.make_node("Abs", [windows.x]), ctx.fconst(p, "p")])
    sums = window_sum(ctx, Windows(powered, windows.dtype, windows.geom, windows.in_size,
                                   windows.sources, windows.values), x.shape[1])
    if p == 1.0:
        return sums
    if p == 2.0:
        return ctx.make_node("Sqrt", [sums])
    return ctx.make_node("Pow", [sums, ctx.fconst(1.0 / p, "inv_p")])
