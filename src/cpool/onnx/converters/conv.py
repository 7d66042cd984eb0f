"""Conv1d/Conv2d -> Conv, with the pads cpool computes (no auto_pad).

The layer's own geometry gives pad_begin and the output size ("same" is SAME_UPPER,
"same_lower" SAME_LOWER, as ONNX); the end pad written is the one floor arithmetic
needs for that output size, ``max((out-1)*stride + dilation*(kernel-1) + 1 - L - pb, 0)``,
which never changes a result (cpool's extra end pads, if any, are never read).
"""
from ...layers.conv import Conv1d, Conv2d
from ..graph import ExportError
from ..registry import register_converter


@register_converter(Conv1d, Conv2d)
def convert_conv(ctx, layer, x):
    if x.ndim != layer.nd + 2:
        raise ExportError(f"{layer!r}: export needs a batched example (N, C, *spatial), got "
                          f"shape {x.shape}")
    in_size = x.shape[2:]
    pad_begin, out_size = layer._geometry(in_size)
    kernel, stride, dilation = layer._kernel, layer._stride, layer._dilation
    pad_end = [max((o - 1) * s + d * (k - 1) + 1 - L - pb, 0)
               for L, o, k, s, d, pb in zip(in_size, out_size, kernel, stride, dilation, pad_begin)]
    inputs = [x.name, ctx.fconst(layer.params["weight"], "weight")]
    if layer.bias:
        inputs.append(ctx.fconst(layer.params["bias"], "bias"))
    return ctx.make_node("Conv", inputs, kernel_shape=list(kernel), strides=list(stride),
                         dilations=list(dilation), pads=list(pad_begin) + pad_end,
                         group=layer.groups)
