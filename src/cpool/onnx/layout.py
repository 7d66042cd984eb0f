"""Memory layouts in the exported graph: channels-first converters, channels-last models.

Every converter writes channels-first nodes ((N, C, *spatial), the only layout ONNX's
pooling operators take). A layer built with ``channels_last=True`` holds its tensors as
(N, *spatial, C) in cpool, so the exporter tracks, for each tensor of the graph, how the
graph holds it relative to cpool: ``Value.perm`` (None: as cpool holds it; else the graph
holds ``data.transpose(perm)``). Walking the layers:

* a channels-last layer gets its input channels-first (``to_first``), through a Transpose
  only if the graph does not hold it so already; its outputs of the input's rank stay
  channels-first in the graph (perm ``to_first``); lower-rank outputs ((N, C) of a global
  pool without keepdims, SpatialPyramidPool's features) are written by the converter in
  cpool's order (perm None);
* an elementwise layer (ReLU, Dropout, ...) runs on whatever the graph holds and passes
  the perm on;
* any other layer (Conv, BatchNorm, Flatten, Linear, Softmax, channels-first pooling)
  gets its input as cpool holds it: a Transpose back first if needed;
* the graph outputs are as cpool returns them (a Transpose back if needed).

So a chain of channels-last pooling layers becomes Transpose -> pool -> ... -> pool ->
Transpose, and Flatten after channels-last pooling flattens (H, W, C) as cpool does. The
graph computes what cpool computes whatever layouts a model mixes: cpool itself runs each
layer on the example first, and a layer that cannot take its input raises there.
"""
import numpy as np

from .graph import ExportError, Value


def to_first(ndim):
    """The perm taking (N, *spatial, C) to (N, C, *spatial)."""
    return (0, ndim - 1) + tuple(range(1, ndim - 1))


def unbatched_error(layer, view, rank=""):
    """ExportError for a layer whose example is not batched, in the layer's own layout
    (`view`: the converter's channels-first input)."""
    last = getattr(layer, "channels_last", False)
    form = "(N, *spatial, C)" if last else "(N, C, *spatial)"
    shape = np.moveaxis(view.data, 1, -1).shape if last and view.ndim > 1 else view.shape
    return ExportError(f"{layer!r}: export needs a batched example {form}{rank}, got shape "
                       f"{shape}")


def graph_data(value):
    """The example's data as the graph holds it."""
    return value.data if value.perm is None else value.data.transpose(value.perm)


def arrange(ctx, value, perm=None):
    """Name of `value`'s tensor held as ``data.transpose(perm)`` (perm None: as cpool
    holds it), with a Transpose node when the graph holds it otherwise."""
    identity = tuple(range(value.ndim))
    have, want = value.perm or identity, perm or identity
    if have == want:
        return value.name
    inverse = np.argsort(have)
    return ctx.make_node("Transpose", [value.name], perm=[int(inverse[w]) for w in want])


def layer_view(ctx, layer, x, elementwise):
    """(input Value(s) for the converter, holding their data as the graph holds it; the
    perm of the layer's outputs of the input's rank) -- see the module docstring."""
    if isinstance(x, tuple):  # multi-input layers have no channels_last
        return tuple(Value(arrange(ctx, v), v.data) for v in x), None
    if elementwise:
        return Value(x.name, graph_data(x)), x.perm
    if getattr(layer, "channels_last", False):
        perm = to_first(x.ndim)
        return Value(arrange(ctx, x, perm), x.data.transpose(perm)), perm
    return Value(arrange(ctx, x), x.data), None


def outputs(names, data, rank, perm):
    """The layer's output Value(s): those of the input's `rank` carry `perm`."""
    if not isinstance(names, tuple):
        return Value(names, data, perm if np.ndim(data) == rank else None)
    return tuple(Value(n, d, perm if np.ndim(d) == rank else None) for n, d in zip(names, data))
