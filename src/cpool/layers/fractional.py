"""Fractional max-pooling layers, mirroring torch.nn.FractionalMaxPool{2,3}d.

Each forward draws fresh samples of shape (N, C, dims) from the layer's own
``numpy.random.Generator`` (seeded by ``seed``), exactly as torch draws
``_random_samples``; rules in cpool._fractional. The last samples stay in
``random_samples`` (shape (N, C, dims), N = 1 for unbatched input), so that an
exporter can fix the windows of the last forward.
"""
import numpy as np

from .._fractional import (check_fraction_args, fraction_output_size, fractional_backward,
                           fractional_forward)
from .._layout import split_shape
from .._validation import check_bool, finish_output, spatial_input
from .base import Layer


class _FractionalMaxPool(Layer):
    nd = None

    def __init__(self, kernel_size, output_size=None, output_ratio=None, return_indices=False,
                 seed=None, channels_last=False):
        super().__init__()
        check_fraction_args(self.nd, kernel_size, output_size, output_ratio)
        self.channels_last = check_bool(channels_last, "channels_last")
        self.kernel_size, self.output_size = kernel_size, output_size
        self.output_ratio = output_ratio
        self.return_indices, self.seed = return_indices, seed
        self._rng = np.random.default_rng(seed)
        self.random_samples = None

    def _sizes(self, in_size):
        kernel, size, ratio = check_fraction_args(self.nd, self.kernel_size, self.output_size,
                                                  self.output_ratio)
        return kernel, fraction_output_size(in_size, kernel, size, ratio)

    def forward(self, x):
        x, batched, dtype = spatial_input(x, self.nd)
        n, c, in_size = split_shape(x.shape, self.channels_last)
        kernel, out_size = self._sizes(in_size)
        samples = self._rng.random((n, c, self.nd), dtype=x.dtype)
        want = self.training or self.return_indices
        out, indices = fractional_forward(x, kernel, out_size, samples, want,
                                          self.channels_last)
        self.random_samples = samples
        self._ctx = (indices, x.shape, batched, dtype)
        out = finish_output(out, batched, dtype)
        if self.return_indices:
            return out, finish_output(indices, batched, np.int64)
        return out

    def backward(self, grad_output):
        indices, in_shape, batched, dtype = self._ctx
        if indices is None:
            raise RuntimeError("backward needs a forward in training mode (or with "
                               "return_indices=True) first")
        g = np.asarray(grad_output)
        if not batched:
            g = g[np.newaxis]
        if g.shape != indices.shape:
            raise ValueError(f"grad_output must have shape {indices.shape[int(not batched):]} "
                             f"(the forward's output), got {np.shape(grad_output)}")
        g = np.ascontiguousarray(g, dtype=np.float32 if dtype in (np.float16, np.float32)
                                 else np.float64)
        return finish_output(fractional_backward(g, indices, in_shape, self.channels_last),
                             batched, dtype)

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.channels_last:
            spatial = input_shape[-self.nd - 1:-1]
            return input_shape[:-self.nd - 1] + self._sizes(spatial)[1] + input_shape[-1:]
        return input_shape[:-self.nd] + self._sizes(input_shape[-self.nd:])[1]


def _make(nd):
    doc = (f"{nd}-D fractional max pooling with the rules of "
           f"cpool.functional.fractional_max_pool{nd}d (equivalent: "
           f"torch.nn.FractionalMaxPool{nd}d); ``seed`` (None, an int or a "
           f"numpy.random.Generator) seeds the layer's own sample generator; "
           f"channels_last=True takes and returns (N, *spatial, C).")
    return type(f"FractionalMaxPool{nd}d", (_FractionalMaxPool,),
                {"nd": nd, "__doc__": doc, "__module__": __name__})


FractionalMaxPool2d = _make(2)
FractionalMaxPool3d = _make(3)
