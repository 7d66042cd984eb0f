"""Activations, Softmax/LogSoftmax and Dropout -> their ONNX operators.

* ReLU -> Relu, LeakyReLU -> LeakyRelu(alpha=negative_slope), Sigmoid -> Sigmoid,
  Tanh -> Tanh.
* GELU -> Gelu(approximate) from opset 20; below, its definition:
  "none": 0.5*x*(1 + Erf(x/sqrt(2))); "tanh": 0.5*x*(1 + Tanh(sqrt(2/pi)*(x + 0.044715*x^3))).
* Softmax/LogSoftmax(dim) -> Softmax/LogSoftmax with the explicit, non-negative axis
  (opset >= 13 semantics: one axis, as cpool).
* Dropout -> nothing (inference: the identity).

All but Softmax/LogSoftmax are elementwise: they run on either layout (cpool.onnx.layout).
"""
import numpy as np

from ...layers.activation import (GELU, Dropout, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax,
                                  Tanh)
from ..graph import ExportError
from ..registry import register_converter

_UNARY = {ReLU: "Relu", Sigmoid: "Sigmoid", Tanh: "Tanh"}


@register_converter(ReLU, Sigmoid, Tanh, elementwise=True)
def convert_unary(ctx, layer, x):
    return ctx.make_node(_UNARY[type(layer)], [x.name])


@register_converter(LeakyReLU, elementwise=True)
def convert_leaky_relu(ctx, layer, x):
    return ctx.make_node("LeakyRelu", [x.name], alpha=float(layer.negative_slope))


@register_converter(GELU, elementwise=True)
def convert_gelu(ctx, layer, x):
    if ctx.opset >= 20:
        return ctx.make_node("Gelu", [x.name], approximate=layer.approximate)
    if layer.approximate == "tanh":
        cube = ctx.make_node("Mul", [ctx.make_node("Mul", [x.name, x.name]), x.name])
        inner = ctx.make_node("Add", [x.name, ctx.make_node(
            "Mul", [cube, ctx.fconst(0.044715, "gelu_c")])])
        inner = ctx.make_node("Mul", [inner, ctx.fconst(np.sqrt(2.0 / np.pi), "sqrt_2_over_pi")])
        t = ctx.make_node("Tanh", [inner])
    else:
        t = ctx.make_node("Erf", [ctx.make_node("Mul", [x.name, ctx.fconst(1.0 / np.sqrt(2.0),
                                                                            "inv_sqrt2")])])
    half_x = ctx.make_node("Mul", [x.name, ctx.fconst(0.5, "half")])
    return ctx.make_node("Mul", [half_x, ctx.make_node("Add", [t, ctx.fconst(1.0, "one")])])


@register_converter(Softmax, LogSoftmax)
def convert_softmax(ctx, layer, x):
    if not -x.ndim <= layer.dim < x.ndim:
        raise ExportError(f"{layer!r}: dim must be in [{-x.ndim}, {x.ndim - 1}] for input of "
                          f"{x.ndim} dims")
    op = "Softmax" if isinstance(layer, Softmax) else "LogSoftmax"
    return ctx.make_node(op, [x.name], axis=int(layer.dim) % x.ndim)


@register_converter(Dropout, elementwise=True)
def convert_dropout(ctx, layer, x):
    return x.name
