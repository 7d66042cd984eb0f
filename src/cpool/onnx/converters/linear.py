"""Linear -> Gemm, Flatten -> Flatten, Identity -> nothing.

* Linear on (N, in_features) -> Gemm(x, weight, bias, transB=1); on more dims
  (*, in_features) -> MatMul with weight.T, then Add bias (Gemm is 2-D only).
* Flatten(start_dim, end_dim): the default (1, -1) is ONNX Flatten(axis=1); other ranges
  -> Reshape copying the dims before start_dim (0, which keeps the symbolic batch) and
  merging the range (-1).
* Identity (and Dropout, see activation.py): no node.

Flatten and Identity keep integer dtypes, as in cpool.
"""
import numpy as np

from ...layers.linear import Flatten, Identity, Linear
from ..registry import register_converter


@register_converter(Linear)
def convert_linear(ctx, layer, x):
    weight = layer.params["weight"]
    bias = layer.params.get("bias") if layer.bias else None
    if x.ndim == 2:
        inputs = [x.name, ctx.fconst(weight, "weight")]
        if bias is not None:
            inputs.append(ctx.fconst(bias, "bias"))
        return ctx.make_node("Gemm", inputs, transB=1)
    y = ctx.make_node("MatMul", [x.name, ctx.fconst(np.ascontiguousarray(weight.T), "weight_t")])
    if bias is not None:
        y = ctx.make_node("Add", [y, ctx.fconst(bias, "bias")])
    return y


@register_converter(Flatten, integers=True)
def convert_flatten(ctx, layer, x):
    ndim = x.ndim
    if ndim == 0:
        return ctx.reshape(x.name, [1])
    start, end = layer._dims(ndim)
    if start == 1 and end == ndim - 1:
        return ctx.make_node("Flatten", [x.name], axis=1)
    shape = [0] * start + [-1] + list(x.shape[end + 1:])
    return ctx.reshape(x.name, shape)


@register_converter(Identity, elementwise=True, integers=True)
def convert_identity(ctx, layer, x):
    return x.name
