"""The layer base class.

A layer holds its trainable arrays in ``params`` (name -> ndarray, PyTorch's layout and
names) and, after ``backward``, their gradients in ``grads`` (same names). Constructor
arguments are stored as attributes of the same names, which is what ``get_config`` reads,
so ``type(layer).from_config(layer.get_config())`` rebuilds the layer (weights aside).
"""
import inspect

import numpy as np


class Layer:
    """Base of every cpool layer: ``forward``/``__call__``, ``backward``, ``train``/``eval``."""

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.training = True

    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, grad_output):
        """Return the gradient with respect to the last forward's input; fill ``grads``."""
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def output_shape(self, input_shape):
        """The output shape for an input of ``input_shape`` (computed without data)."""
        return self.forward(np.zeros(input_shape, dtype=np.float32)).shape

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for name, value in self.params.items():
            self.grads[name] = np.zeros_like(value)

    def parameters(self):
        """[(name, param, grad)] for this layer; grads default to zeros before backward."""
        return [(name, value, self.grads.setdefault(name, np.zeros_like(value)))
                for name, value in self.params.items()]

    @classmethod
    def _config_names(cls):
        sig = inspect.signature(cls.__init__)
        return [name for name, p in sig.parameters.items()
                if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def get_config(self):
        """Constructor arguments as a plain, JSON-able dict."""
        return {name: _plain(getattr(self, name)) for name in self._config_names()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        sig = inspect.signature(type(self).__init__)
        shown = []
        for name, value in self.get_config().items():
            default = sig.parameters[name].default
            if default is inspect.Parameter.empty or _plain(default) != value:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _plain(value):
    """Tuples -> lists and NumPy scalars -> Python scalars, recursively (JSON-able)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
