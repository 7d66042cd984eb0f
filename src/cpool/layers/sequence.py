"""Masked sequence pooling layer: ``SequencePool(mode, layout)``, called as
``layer(x, lengths=...)`` or ``layer(x, mask=...)``; rules in cpool._sequence.
"""
from .._sequence import (dims, sequence_backward_core, sequence_forward_core, sequence_input,
                         sequence_options, steps_of)
from .._validation import grad_array
from .base import Layer


class SequencePool(Layer):
    """Pool each sequence of a padded batch over its valid steps: (N, L, C) or (N, C, L)
    -> (N, C). mode "mean", "max", "sum", "first" or "last"; layout "NLC" or "NCL".
    With neither lengths nor mask every step is valid. A row with no valid step gives 0.
    Mode "max" keeps a compact int32 argmax (N, C) for backward.

    Equivalent (mean, NLC): ``(x * mask[..., None]).sum(1) / lengths[:, None]`` in PyTorch.
    """

    def __init__(self, mode="mean", layout="NLC"):
        super().__init__()
        self.mode, self.layout = mode, layout
        sequence_options(mode, layout)  # fail early on bad arguments

    def forward(self, x, lengths=None, mask=None):
        mode, layout = sequence_options(self.mode, self.layout)
        x, dtype = sequence_input(x)
        n, L, _ = dims(x.shape, layout)
        steps = steps_of(lengths, mask, n, L)
        out, arg = sequence_forward_core(x, steps, mode, layout,
                                         want_arg=self.training and mode == "max")
        self._ctx = (dict(steps=steps, arg=arg, in_shape=x.shape, out_shape=out.shape,
                          compute=x.dtype, dtype=dtype, options=(mode, layout))
                     if self.training else None)
        return out.astype(dtype, copy=False)

    def backward(self, grad_output):
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            raise RuntimeError("SequencePool.backward needs a forward in training mode first")
        g = grad_array(grad_output, ctx["out_shape"], ctx["compute"])
        mode, layout = ctx["options"]
        grad = sequence_backward_core(g, ctx["steps"], mode, layout, ctx["in_shape"],
                                      ctx["arg"])
        return grad.astype(ctx["dtype"], copy=False)

    def output_shape(self, input_shape):
        n, _, c = dims(tuple(input_shape), self.layout)
        return (n, c)
