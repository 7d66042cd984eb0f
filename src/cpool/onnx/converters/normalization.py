"""BatchNorm1d/BatchNorm2d -> BatchNormalization (inference).

Inference uses the running statistics (``layer.buffers["running_mean"]`` and
``["running_var"]``) with ``epsilon = eps``; affine=False gives scale 1 and bias 0.
A layer without track_running_stats normalizes with the statistics of the batch it is
given, even in eval mode (as cpool and PyTorch do); that is written out exactly:
mean and biased variance by ReduceMean over (N, *spatial), then
``(x - mean) / sqrt(var + eps) * weight + bias``.
"""
import numpy as np

from ...layers.normalization import BatchNorm1d, BatchNorm2d
from ..registry import register_converter


@register_converter(BatchNorm1d, BatchNorm2d)
def convert_batch_norm(ctx, layer, x):
    channels = layer.num_features
    if layer.affine:
        weight, bias = layer.params["weight"], layer.params["bias"]
    else:
        weight, bias = np.ones(channels), np.zeros(channels)
    if layer.track_running_stats:
        return ctx.make_node("BatchNormalization", [
            x.name, ctx.fconst(weight, "scale"), ctx.fconst(bias, "bias"),
            ctx.fconst(layer.buffers["running_mean"], "running_mean"),
            ctx.fconst(layer.buffers["running_var"], "running_var")],
            epsilon=float(layer.eps))
    axes = [0] + list(range(2, x.ndim))
    shape = (1, channels) + (1,) * (x.ndim - 2)
    mean = ctx.reduce("ReduceMean", x.name, axes, keepdims=True)
    centered = ctx.make_node("Sub", [x.name, mean])
    var = ctx.reduce("ReduceMean", ctx.make_node("Mul", [centered, centered]), axes,
                     keepdims=True)
    std = ctx.make_node("Sqrt", [ctx.make_node("Add", [var, ctx.fconst(layer.eps, "eps")])])
    y = ctx.make_node("Div", [centered, std])
    if layer.affine:
        y = ctx.make_node("Mul", [y, ctx.fconst(np.reshape(weight, shape), "weight")])
        y = ctx.make_node("Add", [y, ctx.fconst(np.reshape(bias, shape), "bias")])
    return y
