"""The converter registry: one converter per layer class, keyed by the class itself.

A converter is a function ``convert(ctx, layer, x)``: ``ctx`` is the GraphBuilder,
``layer`` the layer instance, ``x`` the input Value (or a tuple of Values for a layer that
takes several). It appends nodes and returns the name of its output (a tuple of names
for several outputs). Register it with the decorator::

    @register_converter(MyLayer)
    def convert_my_layer(ctx, layer, x):
        return ctx.make_node("Relu", [x.name])

Lookup is by the exact class: a subclass may compute something else, so it needs its own
converter. Registering a class twice raises; an unregistered layer raises
UnsupportedLayerError naming its class.

Converters write channels-first nodes and see their input as the graph holds it; the
exporter adds the Transposes a channels-last layer needs (cpool.onnx.layout). An
``elementwise=True`` converter runs on either layout, so none is added around it.

Dtypes: cpool computes most layers in float on integer input; there the converter gets
its input cast to the graph's float type. A layer that keeps integer dtypes in cpool
(max pooling) needs a converter registered with ``integers=True``, which gets the
integer input as it is; without it, such a layer raises DtypeError.

cpool's own converters live in cpool.onnx.converters, one module per layer family; the
registry imports them itself on first use, so lookups never depend on what the caller
happened to import.
"""
import importlib
import inspect
from dataclasses import dataclass

import numpy as np

from ..layers.base import Layer
from . import layout
from .graph import DtypeError, ExportError, Value

_BUILTIN_MODULES = ("pooling", "conv", "linear", "activation", "normalization", "binned",
                    "unpool", "fractional", "roi", "sequence")


class UnsupportedLayerError(ExportError, TypeError):
    """No converter is registered for a layer's class."""


@dataclass(frozen=True)
class Converter:
    layer_class: type
    function: object
    # Only for layers that take several input arrays (None: one array, the default):
    # graph_inputs(layer, arrays, dynamic_batch) -> [(name, array, dims)] for export,
    # sample_inputs(layer, dims, rng, negative) -> tuple of arrays for verify (dims: the
    # graph input's dims with symbolic ones resolved for the first input only),
    # run(layer, arrays) -> what cpool computes for a tuple of input arrays (also for a
    # one-input layer whose graph fixes something its forward redraws: FractionalMaxPool).
    graph_inputs: object = None
    sample_inputs: object = None
    run: object = None
    elementwise: bool = False  # layout-agnostic: no Transpose around it
    integers: bool = False  # writes integer input in its own dtype


_CONVERTERS = {}
_loaded = False


def register_converter(*layer_classes, graph_inputs=None, sample_inputs=None, run=None,
                       elementwise=False, integers=False):
    """Decorator registering ``function(ctx, layer, x)`` as the converter of each class.

    graph_inputs, sample_inputs and run (see Converter) are needed only by layers that
    take more than one input array (lengths, masks, RoIs, unpool indices); see
    cpool.onnx.converters.sequence for an example. elementwise and integers: see the
    module docstring.
    """
    if not layer_classes:
        raise TypeError("register_converter needs at least one layer class")
    for cls in layer_classes:
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(f"register_converter takes cpool Layer subclasses, got {cls!r}")

    def decorate(function):
        params = list(inspect.signature(function).parameters)
        if len(params) != 3:
            raise TypeError(f"converter {function.__qualname__} must take (ctx, layer, x), "
                            f"got ({', '.join(params)})")
        for cls in layer_classes:
            if cls in _CONVERTERS:
                old = _CONVERTERS[cls].function
                raise ValueError(f"a converter for {_class_name(cls)} is already registered "
                                 f"({old.__module__}.{old.__qualname__})")
        for cls in layer_classes:
            _CONVERTERS[cls] = Converter(cls, function, graph_inputs, sample_inputs, run,
                                         bool(elementwise), bool(integers))
        return function

    return decorate


def unregister_converter(layer_class):
    """Remove a class's converter (for tests and for replacing a converter on purpose)."""
    _CONVERTERS.pop(layer_class, None)


def _class_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def load_builtin_converters():
    """Import cpool's converter modules (once); each registers its family's converters."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.converters.{name}")


def get_converter(layer):
    load_builtin_converters()
    cls = type(layer)
    entry = _CONVERTERS.get(cls)
    if entry is None:
        what = _class_name(cls) if isinstance(layer, Layer) else f"{cls.__name__} (not a Layer)"
        raise UnsupportedLayerError(
            f"no ONNX converter is registered for layer class {what} ({layer!r}); "
            f"register one with @cpool.onnx.register_converter({cls.__name__})")
    return entry


def registered_classes():
    load_builtin_converters()
    return tuple(_CONVERTERS)


def run_layer(layer, arrays):
    """What cpool computes for `layer` on a tuple of input arrays, as the exported graph
    computes it: the converter's `run` hook (e.g. FractionalMaxPool with its intervals
    fixed), else ``layer(*arrays)``."""
    entry = get_converter(layer)
    return entry.run(layer, arrays) if entry.run is not None else layer(*arrays)


def convert_layer(ctx, layer, x):
    """Convert one layer on input Value(s) `x`; returns its output Value(s), whose data is
    what cpool computes (eval mode) for the example."""
    entry = get_converter(layer)
    arrays = tuple(v.data for v in x) if isinstance(x, tuple) else (x.data,)
    try:
        data = run_layer(layer, arrays)
    except (ValueError, TypeError) as exc:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ExportError(f"{layer!r} cannot run on its input of shape {shapes} (as cpool "
                          f"holds it at this layer): {exc}") from exc
    view, perm = layout.layer_view(ctx, layer, x, entry.elementwise)
    view = _computed_input(ctx, layer, entry, view, data)
    previous, ctx.layer = ctx.layer, layer
    try:
        names = entry.function(ctx, layer, view)
    finally:
        ctx.layer = previous
    count = len(data) if isinstance(data, tuple) else 1
    if (len(names) if isinstance(names, tuple) else 1) != count:
        raise ExportError(f"the converter of {type(layer).__name__} returned {names!r}, but "
                          f"the layer returns {count} output(s)")
    rank = (x[0] if isinstance(x, tuple) else x).ndim
    return layout.outputs(names, data, rank, perm)


def _computed_input(ctx, layer, entry, view, data):
    """The converter's input in the dtype cpool computes the layer in: an integer input
    is cast to the graph's float type where cpool's (first) output is floating."""
    first = view[0] if isinstance(view, tuple) else view
    if first.data.dtype.kind not in "iu":
        return view
    if np.asarray(data[0] if isinstance(data, tuple) else data).dtype.kind in "iu":
        if not entry.integers:
            raise DtypeError(f"{layer!r} keeps the integer dtype {first.data.dtype} in cpool, "
                             f"but its converter computes in float; export it with a "
                             f"floating example")
        return view
    cast = Value(ctx.cast(first.name, ctx.elem_type), first.data.astype(ctx.dtype))
    return (cast,) + view[1:] if isinstance(view, tuple) else cast
