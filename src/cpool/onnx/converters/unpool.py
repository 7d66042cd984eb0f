"""MaxUnpool1d/2d/3d -> MaxUnpool, with the index conversion.

cpool's (PyTorch's) indices are flat within each (n, c) plane of the output; ONNX
MaxUnpool's are flat over the whole (N, C, *out) tensor. The graph adds each plane's
offset, ``onnx = cpool + (n*C + c) * prod(out)``, computed from the symbolic batch
(Range over Shape(x)[0]) and the constant channel count. No output_shape input is
written: the output is the default unpooled size ``(L-1)*stride - 2*padding + kernel``
(a per-call ``output_size`` is not exported). Duplicate indices: the later element
wins in both (cpool documents it; onnxruntime writes in order).

The exported graph has two inputs, ``input`` (N, C, *spatial) and ``indices`` (int64,
the same shape); export's example is the pair (x, indices). A channels_last layer's
inputs and output are (N, *spatial, C): the graph transposes both inputs to
channels-first and the result back (MaxUnpool has no channels-last form).
"""
import numpy as np


from ..._unpool import unpool_output_size, unpool_window
from ...functional import max_pool1d, max_pool2d, max_pool3d
from ...layers.unpool import MaxUnpool1d, MaxUnpool2d, MaxUnpool3d
from ..graph import ExportError, Value
from ..layout import to_first
from ..registry import register_converter

_MAX_POOL = {1: max_pool1d, 2: max_pool2d, 3: max_pool3d}


def _graph_inputs(layer, arrays, dynamic_batch):
    if len(arrays) != 2:
        raise ExportError(f"{layer!r}: the example must be the pair (x, indices), got "
                          f"{len(arrays)} arrays")
    x, indices = arrays
    if x.ndim != layer.nd + 2 or indices.shape != x.shape:
        raise ExportError(f"{layer!r}: the example must be batched x (N, C, *spatial) and "
                          f"indices of the same shape; got {x.shape} and {indices.shape}")
    dims = ["N" if dynamic_batch else x.shape[0]] + list(x.shape[1:])
    return [("input", x, dims), ("indices", indices.astype(np.int64), dims)]


def _sample_inputs(layer, dims, rng, batch, negative=False, odd=0):
    """Values, and the indices max pooling with the same window gives on a random input
    of the unpooled size (so indices are what a real model feeds)."""
    kernel, stride, padding = unpool_window(layer.nd, layer.kernel_size, layer.stride,
                                            layer.padding)
    channels, in_size = (dims[0][-1], tuple(dims[0][1:-1])) if layer.channels_last else \
        (dims[0][1], tuple(dims[0][2:]))
    out_size = unpool_output_size(in_size, kernel, stride, padding)
    big = rng.standard_normal((batch, channels) + out_size).astype(np.float32)
    _, indices = _MAX_POOL[layer.nd](big, kernel, stride, padding, return_indices=True)
    x = rng.standard_normal(indices.shape)
    if negative:
        x = -(np.abs(x) + 0.5)
    if layer.channels_last:
        return np.moveaxis(x, 1, -1).copy(), np.moveaxis(indices, 1, -1).copy()
    return x, indices


@register_converter(MaxUnpool1d, MaxUnpool2d, MaxUnpool3d, graph_inputs=_graph_inputs,
                    sample_inputs=_sample_inputs)
def convert_max_unpool(ctx, layer, x):
    if not isinstance(x, tuple) or len(x) != 2:
        raise ExportError(f"{layer!r} takes (x, indices); in a Sequential it has no indices")
    values, indices = x
    nd = layer.nd
    if indices.data.dtype != np.int64:
        raise ExportError(f"{layer!r}: indices must be int64")
    if layer.channels_last:
        perm = list(to_first(nd + 2))
        values = Value(ctx.make_node("Transpose", [values.name], perm=perm),
                       values.data.transpose(perm))
        indices = Value(ctx.make_node("Transpose", [indices.name], perm=perm),
                        indices.data.transpose(perm))
    kernel, stride, padding = unpool_window(nd, layer.kernel_size, layer.stride, layer.padding)
    out_size = unpool_output_size(values.shape[2:], kernel, stride, padding)
    channels = values.shape[1]
    plane = int(np.prod(out_size))
    shape = ctx.make_node("Shape", [values.name])
    batch = ctx.make_node("Gather", [shape, ctx.iconst(0, "zero")], axis=0)
    n = ctx.make_node("Range", [ctx.iconst(0, "start"), batch, ctx.iconst(1, "delta")])
    n = ctx.unsqueeze(n, list(range(1, nd + 2)))
    n_offset = ctx.make_node("Mul", [n, ctx.iconst(channels * plane, "sample_size")])
    c_offset = ctx.iconst((np.arange(channels) * plane).reshape((1, channels) + (1,) * nd),
                          "channel_offset")
    flat = ctx.make_node("Add", [ctx.make_node("Add", [indices.name, n_offset]), c_offset])
    out = ctx.make_node("MaxUnpool", [values.name, flat], kernel_shape=list(kernel),
                        strides=list(stride), pads=list(padding) * 2)
    if layer.channels_last:  # back to cpool's (N, *out, C)
        out = ctx.make_node("Transpose", [out], perm=[0] + list(range(2, nd + 2)) + [1])
    return out



