"""SequencePool -> a graph with a second input (lengths or mask), symbolic batch and length.

export's example is x alone (every step valid: one input), (x, lengths) with lengths
(N,) ints, or (x, mask) with mask (N, L) bool or 0/1 ints. The graph inputs are
``input`` ((N, L, C) for layout "NLC", (N, C, L) for "NCL") and ``lengths`` (int64, (N,))
or ``mask`` (bool, or int64 holding 0/1, (N, L)); N and L are symbolic.

Only operators that onnxruntime runs on the CPU for these types are used (no ArgMax or
ArgMin on int64, no arithmetic on bool):

* valid[n, l]: ``Range(0, L) < lengths[n]`` (L read with Shape), or ``Cast(mask, bool)``;
* "sum": ReduceSum of ``Where(valid, x, 0)`` over L (a padded NaN or inf never leaks:
  Where selects, it does not multiply);
* "mean": that sum divided by ``max(count, 1)``, count = ReduceSum(Cast(valid, float));
* "max": ReduceMax of ``Where(valid, x, -inf)``;
* "first" / "last": the step index ReduceMin / ReduceMax of ``Where(valid, l, L)`` /
  ``Where(valid, l, -1)`` (in float: exact below 2**24 steps), then ReduceSum of
  ``Where(l == index, x, 0)``, which picks that one step's value;
* a row with no valid step gives 0 in every mode: ``Where(count > 0, result, 0)``.
"""
import numpy as np
from onnx import TensorProto

from ..._sequence import sequence_options
from ...layers.sequence import SequencePool
from ..graph import ExportError
from ..registry import register_converter


def _aux_kind(aux):
    if aux.ndim == 1:
        return "lengths"
    if aux.ndim == 2:
        return "mask"
    raise ExportError(f"the second example array must be lengths (N,) or a mask (N, L), got "
                      f"shape {aux.shape}")


def _x_dims(layer, x, dynamic_batch):
    if x.ndim != 3:
        raise ExportError(f"{layer!r}: x must have 3 dims, got shape {x.shape}")
    n = "N" if dynamic_batch else x.shape[0]
    return [n, "L", x.shape[2]] if layer.layout == "NLC" else [n, x.shape[1], "L"]


def _graph_inputs(layer, arrays, dynamic_batch):
    if len(arrays) not in (1, 2):
        raise ExportError(f"{layer!r}: the example must be x, (x, lengths) or (x, mask); got "
                          f"{len(arrays)} arrays")
    x = arrays[0]
    specs = [("input", x, _x_dims(layer, x, dynamic_batch))]
    if len(arrays) == 2:
        aux = arrays[1]
        kind = _aux_kind(aux)
        n = specs[0][2][0]
        if kind == "lengths":
            specs.append(("lengths", aux.astype(np.int64), [n]))
        else:
            aux = aux if aux.dtype == np.bool_ else aux.astype(np.int64)
            specs.append(("mask", aux, [n, "L"]))
    return specs


def _sample_inputs(layer, dims, rng, batch, negative=False, odd=0):
    """x with an odd length, and lengths (0, L and values between) or a mask with holes
    and an empty row."""
    from .. import sample_input
    x = sample_input(dims[0], np.float32, rng, batch, negative, odd)
    steps = x.shape[1] if layer.layout == "NLC" else x.shape[2]
    if len(dims) == 1:
        return (x,)
    if len(dims[1]) == 1:  # lengths
        lengths = rng.integers(0, steps + 1, size=batch)
        lengths[: min(batch, 2)] = [steps, 0][: min(batch, 2)]
        return x, lengths.astype(np.int64)
    mask = rng.random((batch, steps)) < 0.6
    mask[0] = False
    return x, mask


def _run(layer, arrays):
    if len(arrays) == 1:
        return layer(arrays[0])
    kind = _aux_kind(np.asarray(arrays[1]))
    return layer(arrays[0], **{kind: arrays[1]})


@register_converter(SequencePool, graph_inputs=_graph_inputs, sample_inputs=_sample_inputs,
                    run=_run)
def convert_sequence_pool(ctx, layer, x):
    mode, layout = sequence_options(layer.mode, layer.layout)
    values, aux = (x[0], x[1]) if isinstance(x, tuple) else (x, None)
    axis = 1 if layout == "NLC" else 2
    # step indices l (float, shape broadcasting against x) and L, read from x's shape
    length = ctx.make_node("Gather", [ctx.make_node("Shape", [values.name]),
                                      ctx.iconst(axis, "length_axis")], axis=0)
    steps = ctx.make_node("Range", [ctx.iconst(0, "zero"), length, ctx.iconst(1, "one")])
    if aux is None:
        valid = None
    elif _aux_kind(aux.data) == "lengths":
        valid = ctx.make_node("Less", [ctx.unsqueeze(steps, [0]),
                                       ctx.unsqueeze(aux.name, [1])])          # (N, L)
    else:
        valid = ctx.cast(aux.name, TensorProto.BOOL)                            # (N, L)
    # Broadcast (N, L) against x: (N, L, 1) for NLC, (N, 1, L) for NCL.
    if valid is not None:
        valid = ctx.unsqueeze(valid, [2 if layout == "NLC" else 1])
    reduce_axes = [axis]

    def where_valid(fill):
        if valid is None:
            return values.name
        return ctx.make_node("Where", [valid, values.name, ctx.fconst(fill, "fill")])

    if mode in ("sum", "mean"):
        result = ctx.reduce("ReduceSum", where_valid(0.0), reduce_axes, keepdims=False)
    elif mode == "max":
        result = ctx.reduce("ReduceMax", where_valid(-np.inf), reduce_axes, keepdims=False)
    else:
        position = ctx.cast(steps, ctx.elem_type)                               # (L,)
        position = ctx.unsqueeze(position, [0, 2] if layout == "NLC" else [0, 1])
        if valid is None:
            if mode == "first":
                index = ctx.fconst(0.0, "first_step")
            else:
                index = ctx.make_node("Sub", [ctx.cast(length, ctx.elem_type),
                                              ctx.fconst(1.0, "one_f")])
        else:
            fill = (ctx.cast(length, ctx.elem_type) if mode == "first"
                    else ctx.fconst(-1.0, "minus_one"))
            candidates = ctx.make_node("Where", [valid, position, fill])
            index = ctx.reduce("ReduceMin" if mode == "first" else "ReduceMax", candidates,
                               reduce_axes, keepdims=True)
        chosen = ctx.make_node("Equal", [position, index])
        picked = ctx.make_node("Where", [chosen, values.name, ctx.fconst(0.0, "zero_f")])
        result = ctx.reduce("ReduceSum", picked, reduce_axes, keepdims=False)
    if valid is None:
        if mode == "mean":
            result = ctx.make_node("Div", [result, ctx.cast(length, ctx.elem_type)])
        return result
    count = ctx.reduce("ReduceSum", ctx.cast(valid, ctx.elem_type), reduce_axes,
                       keepdims=False)                                          # (N, 1)
    if mode == "mean":
        result = ctx.make_node("Div", [result, ctx.make_node(
            "Max", [count, ctx.fconst(1.0, "one_f")])])
    if mode in ("max", "first", "last"):
        nonempty = ctx.make_node("Greater", [count, ctx.fconst(0.0, "zero_f")])
        result = ctx.make_node("Where", [nonempty, result, ctx.fconst(0.0, "zero_f")])
    return result
