"""A small ONNX graph builder: unique names, initializers and opset-aware nodes.

Every node is made with the target opset known: ``make_node`` refuses an operator or
attribute that the opset does not define, and the helpers (``reduce``, ``pad``,
``slice``, ``squeeze``, ``unsqueeze``, ``split``) write whichever form the opset wants
(attributes before the opset that turned them into inputs, inputs after).
"""
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.defs
from onnx import helper, numpy_helper


class ExportError(ValueError):
    """A model that cpool.onnx cannot export as asked."""


class OpsetError(ExportError):
    """The requested opset cannot express a layer; the message names the lowest that can."""


class DtypeError(ExportError, TypeError):
    """No exact graph that onnxruntime runs computes a layer in the example's dtype."""


@dataclass(frozen=True)
class Value:
    """A tensor of the graph being built: its name and the example data it carries.

    ``data`` is what cpool computes for the export's example at this point, so converters
    read concrete shapes from it. Axes marked symbolic stay symbolic in the graph: a
    converter never bakes ``data.shape[0]`` (the batch) into a node. ``perm``: None when
    the graph holds the tensor as ``data``, else it holds ``data.transpose(perm)`` (a
    channels-last model's tensors held channels-first, see cpool.onnx.layout); a
    converter always gets Values with perm None.
    """

    name: str
    data: np.ndarray
    perm: tuple = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim


class GraphBuilder:
    def __init__(self, opset, dtype=np.float32):
        self.opset = int(opset)
        self.dtype = np.dtype(dtype)
        self.nodes = []
        self.initializers = []
        self.inputs = []
        self.outputs = []
        self._used = set()
        self.layer = None  # the layer being converted, named in errors
        self.op_layers = {}  # op_type -> the first layer whose converter used it

    # ---------------------------------------------------------------- names, tensors
    def unique(self, hint):
        """A tensor/node name not used before, derived from `hint`."""
        base = "".join(c if c.isalnum() or c in "_." else "_" for c in str(hint)) or "t"
        name, i = base, 1
        while name in self._used:
            name = f"{base}_{i}"
            i += 1
        self._used.add(name)
        return name

    def const(self, value, hint="const", dtype=None):
        """An initializer holding `value` (dtype kept, or `dtype`); returns its name."""
        arr = np.asarray(value, dtype=dtype)
        name = self.unique(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def fconst(self, value, hint="const"):
        """A floating initializer in the graph's dtype."""
        return self.const(np.asarray(value, dtype=np.float64).astype(self.dtype), hint)

    def iconst(self, value, hint="const"):
        """An int64 initializer (shapes, axes, pads, indices)."""
        return self.const(np.asarray(value, dtype=np.int64), hint)

    @property
    def elem_type(self):
        return helper.np_dtype_to_tensor_dtype(self.dtype)

    def dtype_of(self, value):
        """The graph's dtype of a Value: cpool's floating results are held in the graph's
        float type, integer ones in their own dtype."""
        kind = np.asarray(value.data).dtype.kind
        return self.dtype if kind == "f" else np.asarray(value.data).dtype

    def add_input(self, name, elem_type, dims):
        name = self.unique(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(dims)))
        return name

    def add_output(self, name, elem_type, dims):
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(dims)))

    # ---------------------------------------------------------------- nodes
    def require_opset(self, minimum, what):
        """Raise OpsetError unless the target opset is >= minimum."""
        if self.opset < minimum:
            layer = repr(self.layer) if self.layer is not None else "this model"
            raise OpsetError(f"{layer}: {what} needs opset >= {minimum}; requested opset "
                             f"{self.opset}. Export with opset={minimum} or higher.")

    def make_node(self, op_type, inputs, outputs=1, name=None, **attrs):
        """Append a node; `outputs` is a count or a list of names. Returns the output
        name, or a tuple of names when there are several.

        Refuses an operator or attribute the target opset does not define, naming the
        opset that introduced it.
        """
        try:
            schema = onnx.defs.get_schema(op_type, self.opset)
        except onnx.defs.SchemaError:
            first = onnx.defs.get_schema(op_type).since_version
            self.require_opset(first, f"ONNX operator {op_type}")
            raise
        attrs = {k: v for k, v in attrs.items() if v is not None}
        unknown = sorted(set(attrs) - set(schema.attributes))
        if unknown:
            raise OpsetError(f"{op_type}-{schema.since_version} (opset {self.opset}) has no "
                             f"attribute(s) {unknown}")
        self.op_layers.setdefault(op_type, self.layer)
        if isinstance(outputs, int):
            outputs = [self.unique(f"{op_type}_out") for _ in range(outputs)]
        else:
            taken = [o for o in outputs if o in self._used]
            if taken:
                raise ValueError(f"tensor name(s) {taken} already used in this graph")
            outputs = [self.unique(o) for o in outputs]
        node = helper.make_node(op_type, list(inputs), outputs, name=self.unique(name or op_type),
                                **attrs)
        self.nodes.append(node)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # ---------------------------------------------------------------- opset-dependent forms
    def reduce(self, op_type, x, axes, keepdims=True):
        """ReduceMax/ReduceMean/ReduceSum/... over `axes`: axes is an input from ReduceSum-13
        and the others' opset-18 versions, an attribute before."""
        axes = [int(a) for a in axes]
        as_input = self.opset >= 18 or op_type == "ReduceSum"
        if as_input:
            return self.make_node(op_type, [x, self.iconst(axes, "axes")],
                                  keepdims=int(keepdims))
        return self.make_node(op_type, [x], axes=axes, keepdims=int(keepdims))

    def pad(self, x, pad_begin, pad_end, mode="constant", value=None, dtype=None):
        """Pad every axis by (pad_begin[i], pad_end[i]); negative pads crop. A constant
        `value` is written in `dtype`, x's dtype (default: the graph's float type)."""
        pads = [int(p) for p in pad_begin] + [int(p) for p in pad_end]
        inputs = [x, self.iconst(pads, "pads")]
        if value is not None:
            inputs.append(self.const(value, "pad_value", dtype or self.dtype))
        return self.make_node("Pad", inputs, mode=mode)

    def slice(self, x, starts, ends, axes, steps=None):
        inputs = [x, self.iconst(starts, "starts"), self.iconst(ends, "ends"),
                  self.iconst(axes, "axes")]
        if steps is not None:
            inputs.append(self.iconst(steps, "steps"))
        return self.make_node("Slice", inputs)

    def unsqueeze(self, x, axes):
        return self.make_node("Unsqueeze", [x, self.iconst(list(axes), "axes")])

    def squeeze(self, x, axes):
        return self.make_node("Squeeze", [x, self.iconst(list(axes), "axes")])

    def reshape(self, x, shape):
        """Reshape; 0 copies the input's dim (keeps the symbolic batch), -1 infers."""
        return self.make_node("Reshape", [x, self.iconst(list(shape), "shape")])

    def concat(self, xs, axis):
        xs = list(xs)
        return xs[0] if len(xs) == 1 else self.make_node("Concat", xs, axis=int(axis))

    def cast(self, x, to):
        return self.make_node("Cast", [x], to=int(to))

    # ---------------------------------------------------------------- model
    def model(self, ir_version, doc=""):
        graph = helper.make_graph(self.nodes, "cpool", self.inputs, self.outputs,
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=ir_version, producer_name="cpool",
                                  doc_string=doc)
        from .. import __version__
        model.producer_version = __version__
        return model
