"""Export cpool models to ONNX, exactly, and verify them against onnxruntime.

``export(model, example)`` turns a ``cpool.Sequential`` (or a single layer) into an ONNX
graph whose onnxruntime outputs equal cpool's own; ``verify(model, onnx_model)`` proves it
on generated or given inputs. Every layer has one converter (cpool.onnx.converters, one
module per layer family, registered with ``@register_converter(LayerClass)``); where an
ONNX operator's rule differs from cpool's (ceil_mode, count_include_pad, padding, bins,
indices), the converter writes explicit pads or an exact decomposition that holds under
the ONNX definitions, never a branch on the runtime. The opset and IR version come from
one table (cpool.onnx._versions), which also records the operator versions that
onnxruntime has no kernel for.

Spatial sizes are fixed by the example (pads and bins are computed from them); the batch
axis is symbolic by default, and so is the sequence length of SequencePool and the RoI
count of RoIPool/RoIAlign.

Layouts: the graph's inputs and outputs are laid out as the model's, (N, *spatial, C)
for a model of ``channels_last=True`` layers; Transpose nodes sit only where the layout
changes (cpool.onnx.layout). Dtypes: a floating example gives a float32 graph; an
integer one keeps its dtype wherever cpool keeps it (max pooling, see export).
"""
import os

import numpy as np

from ..layers.base import Layer
from . import layout
from ._versions import (MIN_OPSET, default_opset, resolve_opset, runnable_opset,
                        supported_opsets)
from .graph import DtypeError, ExportError, GraphBuilder, OpsetError, Value
from .registry import (UnsupportedLayerError, convert_layer, get_converter,
                       register_converter, registered_classes, run_layer,
                       unregister_converter)

__all__ = ["export", "verify", "register_converter", "unregister_converter",
           "registered_classes", "default_opset", "supported_opsets", "MIN_OPSET",
           "ExportError", "OpsetError", "DtypeError", "UnsupportedLayerError",
           "VerificationError",
           "GraphBuilder", "Value"]

BATCH = "N"


class VerificationError(AssertionError):
    """onnxruntime's outputs differ from cpool's by more than the tolerance."""


# ----------------------------------------------------------------------------- model walking
def _layers(model):
    """The layers of a Sequential, or [model] for a single layer."""
    from ..sequential import Sequential
    if isinstance(model, Sequential):
        return list(model)
    if isinstance(model, Layer):
        return [model]
    raise TypeError(f"model must be a cpool.Sequential or a cpool layer, got "
                    f"{type(model).__name__}")


class _EvalMode:
    """Put every layer in eval mode (inference: running BatchNorm statistics, no Dropout);
    restore each layer's own flag afterwards."""

    def __init__(self, layers):
        self.layers = layers

    def __enter__(self):
        self.saved = [layer.training for layer in self.layers]
        for layer in self.layers:
            layer.eval()

    def __exit__(self, *exc):
        for layer, flag in zip(self.layers, self.saved):
            layer.train(flag)
        return False


def _as_arrays(example):
    """An example (one array, or a tuple of arrays for a multi-input layer) -> tuple."""
    items = example if isinstance(example, tuple) else (example,)
    arrays = tuple(np.asarray(a) for a in items)
    if not arrays:
        raise ValueError("example must be an array (or a tuple of arrays), got nothing")
    return arrays


def _default_graph_inputs(layer, arrays, dynamic_batch):
    if len(arrays) != 1:
        raise ExportError(f"{layer!r} takes one input array; example holds {len(arrays)}")
    x = arrays[0]
    if x.ndim == 0:
        raise ExportError("example must have a batch axis, got a scalar")
    dims = [BATCH if dynamic_batch else x.shape[0]] + list(x.shape[1:])
    return [("input", x, dims)]


def _entry(model):
    """(graph_inputs, sample_inputs, run) hooks of the model's entry point."""
    if isinstance(model, Layer):
        conv = get_converter(model)
        return conv.graph_inputs, conv.sample_inputs, conv.run
    return None, None, None


def _call(model, arrays):
    """What cpool computes for a tuple of input arrays (eval mode set by the caller):
    ``model(*arrays)``, layer by layer, through each converter's `run` hook where it has
    one (see registry.run_layer)."""
    if isinstance(model, Layer):
        return run_layer(model, arrays)
    out = arrays[0]
    for layer in model:
        out = run_layer(layer, (out,))
    return out


# ----------------------------------------------------------------------------- export
def export(model, example, path=None, *, opset=None, dynamic_batch=True):
    """Export a cpool model to ONNX; returns the onnx.ModelProto (and writes it to `path`).

    Parameters
    ----------
    model : cpool.Sequential or a cpool layer
        Exported for inference: as in eval mode (BatchNorm's running statistics, Dropout
        as identity), whatever mode it is in; its modes are left as they were.
    example : array, or a tuple of arrays
        One input, as in torch.onnx.export: batched, (N, ...), in the model's layout
        ((N, *spatial, C) for channels_last layers; the graph's input and output are laid
        out so too). It fixes every non-batch size, and the input's dtype:

        * floating: the graph computes in float32 (onnxruntime's CPU kernels of
          AveragePool, LpPool and Conv exist for float32 only); weights are rounded to
          float32;
        * integer: the graph input keeps the dtype. Max pooling keeps it, exactly, as
          cpool does: int8 and uint8 run onnxruntime's own MaxPool; int16 and uint16 are
          cast to float32 and back, int32 and uint32 to float64 and back, which hold all
          their values exactly (so do int8/uint8 with return_indices, where this keeps
          the padding from tying with the dtype's minimum). int64 raises DtypeError:
          onnxruntime's MaxPool takes no int64, and float64 holds it exactly only up to
          2**53. A layer that cpool computes in float gets its input cast to float32.

        Layers taking several arrays take a tuple: SequencePool (x, lengths) or (x, mask),
        RoIPool/RoIAlign (x, rois, batch_indices), MaxUnpool (x, indices).
    path : str or os.PathLike, optional
        Where to write the model.
    opset : int, optional
        Target opset (>= 13); default: the highest that the installed onnx and onnxruntime
        support and cpool has tested (cpool.onnx.default_opset()), lowered to the highest
        opset at which onnxruntime has kernels for every operator the model needs
        (_versions.ORT_OP_LIMITS: RoiAlign and MaxRoiPool run up to opset 21). A layer that
        the requested opset cannot express raises OpsetError naming the layer and the
        lowest opset that works; an operator onnxruntime lacks at that opset, the highest.
    dynamic_batch : bool
        Make the batch axis symbolic ("N"), so that one graph serves any batch size.

    The ``ir_version`` is the lowest that carries the opset (cpool.onnx._versions), which
    the installed onnxruntime accepts.

    Raises
    ------
    UnsupportedLayerError : a layer's class has no registered converter (named).
    DtypeError : a layer cannot be computed exactly in the example's dtype (named).
    OpsetError, ExportError : the model cannot be exported as asked (a layer that cpool
        cannot run on its input, e.g. layouts mixed so that shapes do not fit, is named).
    """
    import onnx

    requested = opset
    opset, ir_version = resolve_opset(opset)
    layers = _layers(model)
    arrays = _as_arrays(example)
    graph_inputs, _, _ = _entry(model)
    specs = (graph_inputs or _default_graph_inputs)(model, arrays, bool(dynamic_batch))
    ctx, outs = _build(model, layers, specs, opset)
    runnable = runnable_opset(ctx.op_layers, opset)
    if runnable < opset:
        lacking = {op: layer for op, layer in ctx.op_layers.items()
                   if runnable_opset([op], opset) < opset}
        if requested is not None or runnable < MIN_OPSET:
            what = ", ".join(f"{op} (for {layer!r})" for op, layer in lacking.items())
            raise OpsetError(f"onnxruntime has no kernel for the opset-{opset} version of "
                             f"{what}; export with opset <= {runnable}")
        opset, ir_version = resolve_opset(runnable)
        ctx, outs = _build(model, layers, specs, opset)
    names = ["output"] + [f"output_{i}" for i in range(1, len(outs))]
    for value, name in zip(outs, names):
        _name_output(ctx, value.name, name)
    doc = f"exported by cpool from {type(model).__name__}"
    proto = ctx.model(ir_version, doc)
    _declare_outputs(proto, outs, names, ctx)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _build(model, layers, specs, opset):
    """Convert the model at `opset`: (GraphBuilder, output Values)."""
    from onnx import helper

    ctx = GraphBuilder(opset, np.float32)
    values = []
    for name, arr, dims in specs:
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            arr = arr.astype(ctx.dtype)
        name = ctx.add_input(name, helper.np_dtype_to_tensor_dtype(arr.dtype), dims)
        values.append(Value(name, arr))
    with _EvalMode(layers):
        if isinstance(model, Layer):
            out = convert_layer(ctx, model, values[0] if len(values) == 1 else tuple(values))
        else:
            if len(values) != 1:
                raise ExportError("a Sequential takes one input array; example holds "
                                  f"{len(values)}")
            out = values[0]
            for layer in layers:
                out = convert_layer(ctx, layer, out)
    outs = out if isinstance(out, tuple) else (out,)
    # The graph's outputs are laid out as cpool returns them.
    return ctx, tuple(Value(layout.arrange(ctx, v), v.data) for v in outs)


def _name_output(ctx, current, name):
    """Give the tensor `current` the graph output name `name`."""
    produced = any(current in node.output for node in ctx.nodes)
    if not produced or current in [i.name for i in ctx.inputs]:
        ctx.make_node("Identity", [current], outputs=[name])
        return
    for node in ctx.nodes:
        for seq in (node.input, node.output):
            for i, n in enumerate(seq):
                if n == current:
                    seq[i] = name


def _declare_outputs(proto, outs, names, ctx):
    """Graph outputs with the dims shape inference finds (symbolic where it keeps a
    symbol), checked against what cpool computed for the example."""
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes = {vi.name: vi.type.tensor_type.shape for vi in
              list(inferred.graph.value_info) + list(inferred.graph.output)}
    for value, name in zip(outs, names):
        data = np.asarray(value.data)
        dims = []
        shape = shapes.get(name)
        for axis, size in enumerate(data.shape):
            dim = shape.dim[axis] if shape is not None and len(shape.dim) == data.ndim else None
            if dim is not None and dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            elif dim is not None and dim.HasField("dim_value"):
                if dim.dim_value != size:
                    raise ExportError(f"internal error: output {name} axis {axis} has size "
                                      f"{dim.dim_value} in the graph, {size} in cpool")
                dims.append(size)
            else:
                dims.append(f"{name}_dim{axis}")
        elem = helper.np_dtype_to_tensor_dtype(ctx.dtype_of(value))
        proto.graph.output.append(helper.make_tensor_value_info(name, elem, dims))


# ----------------------------------------------------------------------------- verify
def _load(onnx_model_or_path):
    import onnx
    if isinstance(onnx_model_or_path, (str, os.PathLike)):
        return onnx.load(os.fspath(onnx_model_or_path))
    if isinstance(onnx_model_or_path, onnx.ModelProto):
        return onnx_model_or_path
    raise TypeError(f"onnx_model_or_path must be an onnx.ModelProto or a path, got "
                    f"{type(onnx_model_or_path).__name__}")


def _graph_inputs(proto):
    """[(name, numpy dtype, dims)] of the graph inputs (dims: int or symbol str)."""
    from onnx import helper
    initializers = {t.name for t in proto.graph.initializer}
    result = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in tt.shape.dim]
        result.append((vi.name, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return result


ODD_SIZES = (5, 3, 9)


def sample_input(dims, dtype, rng, batch, negative=False, odd=0):
    """A random array for graph dims: the batch symbol -> `batch`, another symbol -> an odd
    size; standard normal values, or all negative (-(|z| + 0.5)) with `negative`. Integer
    dtypes get values uniform over the dtype's whole range (its minimum and maximum
    included), or over its negative part with `negative` where it has one."""
    shape = []
    for axis, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif axis == 0:
            shape.append(batch)
        else:
            shape.append(ODD_SIZES[odd % len(ODD_SIZES)])
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        high = -1 if negative and info.min < 0 else info.max
        return rng.integers(info.min, high, size=shape, dtype=dtype, endpoint=True)
    x = rng.standard_normal(shape)
    if negative:
        x = -(np.abs(x) + 0.5)
    return x.astype(dtype)


def _generated_cases(model, proto, seed=0):
    """Batch sizes 1, 2 and 7 (odd sizes for other symbolic axes), plus one case whose
    values are all negative (so a pad of 0 where cpool ignores padding would show)."""
    rng = np.random.default_rng(seed)
    inputs = _graph_inputs(proto)
    _, sample_inputs, _ = _entry(model)
    cases = []
    plan = [(1, False, 0), (2, False, 1), (7, False, 2), (2, True, 0)]
    for batch, negative, odd in plan:
        if sample_inputs is not None:
            cases.append(tuple(sample_inputs(model, [d for _, _, d in inputs], rng,
                                             batch=batch, negative=negative, odd=odd)))
            continue
        if len(inputs) != 1:
            raise ExportError(f"the graph has {len(inputs)} inputs; pass `inputs` to verify")
        name, dtype, dims = inputs[0]
        cases.append((sample_input(dims, dtype, rng, batch, negative, odd),))
    return cases


def _cases(inputs):
    """verify's `inputs`: an array or a tuple of arrays (one case), or a list of those."""
    if isinstance(inputs, list):
        return [_as_arrays(case) for case in inputs]
    return [_as_arrays(inputs)]


def _max_abs_diff(actual, expected):
    """Max |actual - expected|, counting equal infinities and NaN in the same places as 0."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max()) if diff.size else 0.0, diff, b


def verify(model, onnx_model_or_path, inputs=None, rtol=1e-4, atol=1e-5):
    """Check an exported model and compare onnxruntime's outputs with cpool's.

    1. ``onnx.checker.check_model(full_check=True)`` and strict shape inference;
    2. onnxruntime (CPU) on `inputs`, or on generated ones: batch sizes 1, 2 and 7, and a
       case whose values are all negative (a pad of 0 where cpool ignores padding would
       show there). Spatial sizes are those of the export (its pads and bins are
       computed for them); the axes the graph keeps symbolic besides the batch (a
       sequence length, a RoI count) get odd sizes 5, 3 and 9 (RoI counts 3, 5, 4), and
       layers with extra inputs generate them (lengths 0 and L included, masks with
       holes and an empty row, boxes partly outside the image, unpool indices from a max
       pool);
    3. compares with ``model(...)`` in eval mode (the mode the export assumed);
    4. returns ``{output name: max abs difference}`` over all cases, and raises
       VerificationError when some element has ``|ort - cpool| > atol + rtol*|cpool|``
       (or a shape differs).

    `inputs`: an array (or, for a multi-input layer, a tuple of arrays) for one case, or
    a list of those. Floating arrays are cast to the graph's float type, and cpool gets
    the same cast arrays.
    """
    import onnx
    import onnxruntime as ort

    proto = _load(onnx_model_or_path)
    layers = _layers(model)
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                      data_prop=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # small checks; no thread pool to spin up
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    graph_inputs = _graph_inputs(proto)
    out_names = [o.name for o in session.get_outputs()]
    with _EvalMode(layers):
        cases = _generated_cases(model, proto) if inputs is None else _cases(inputs)
        report = {name: 0.0 for name in out_names}
        failures = []
        for case in cases:
            if len(case) != len(graph_inputs):
                raise ValueError(f"each case of inputs must hold {len(graph_inputs)} arrays "
                                 f"({', '.join(n for n, _, _ in graph_inputs)}), got {len(case)}")
            case = tuple(np.asarray(a).astype(dt) for a, (_, dt, _) in zip(case, graph_inputs))
            got = session.run(None, {name: a for (name, _, _), a in zip(graph_inputs, case)})
            want = _call(model, case)
            want = want if isinstance(want, tuple) else (want,)
            if len(want) != len(got):
                raise VerificationError(f"the graph has {len(got)} outputs, cpool returns "
                                        f"{len(want)}")
            shapes = ", ".join(str(a.shape) for a in case)
            for name, g, w in zip(out_names, got, want):
                w = np.asarray(w)
                if g.shape != w.shape:
                    raise VerificationError(f"output {name}: onnxruntime shape {g.shape}, cpool "
                                            f"{w.shape} (inputs {shapes})")
                worst, diff, b = _max_abs_diff(g, w)
                report[name] = max(report[name], worst)
                with np.errstate(invalid="ignore"):
                    bad = diff > atol + rtol * np.where(np.isfinite(b), np.abs(b), 0)
                if bad.any():
                    failures.append(f"output {name}: max abs diff {worst:.3g} over tolerance "
                                    f"(atol={atol}, rtol={rtol}) for inputs {shapes}")
    if failures:
        raise VerificationError("; ".join(failures))
    return report
