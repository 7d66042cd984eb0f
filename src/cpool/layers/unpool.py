"""Max-unpooling layers (1-D, 2-D, 3-D), mirroring torch.nn.MaxUnpool{1,2,3}d.

Called as ``layer(x, indices, output_size=None)``; rules in cpool._unpool.
"""
import numpy as np

from .._layout import split_shape
from .._unpool import check_indices, unpool_backward, unpool_forward, unpool_output_size, \
    unpool_window
from .._validation import check_bool, finish_output, spatial_input
from .base import Layer


class _MaxUnpool(Layer):
    nd = None

    def __init__(self, kernel_size, stride=None, padding=0, channels_last=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.channels_last = check_bool(channels_last, "channels_last")
        unpool_window(self.nd, kernel_size, stride, padding)  # fail early on bad arguments

    def forward(self, x, indices, output_size=None):
        x_shape = np.shape(x)
        x, batched, dtype = spatial_input(x, self.nd)
        kernel, stride, padding = unpool_window(self.nd, self.kernel_size, self.stride,
                                                self.padding)
        _, _, in_spatial = split_shape(x.shape, self.channels_last)
        out_spatial = unpool_output_size(in_spatial, kernel, stride, padding, output_size,
                                         batched, self.channels_last)
        idx = check_indices(indices, x_shape, int(np.prod(out_spatial)))
        out = unpool_forward(x, idx, out_spatial, self.channels_last)
        self._ctx = (idx, x.shape, out.shape, batched, dtype)
        return finish_output(out, batched, dtype)

    def backward(self, grad_output):
        idx, in_shape, out_shape, batched, dtype = self._ctx
        g = np.asarray(grad_output)
        if not batched:
            g = g[np.newaxis]
        if g.shape != out_shape:
            raise ValueError(f"grad_output must have shape {out_shape[int(not batched):]} "
                             f"(the forward's output), got {np.shape(grad_output)}")
        g = np.ascontiguousarray(g, dtype=np.float32 if dtype in (np.float16, np.float32)
                                 else np.float64)
        return finish_output(unpool_backward(g, idx, in_shape, self.channels_last), batched,
                             dtype)

    def output_shape(self, input_shape):
        """The default output shape (no output_size) for an input of ``input_shape``."""
        input_shape = tuple(input_shape)
        kernel, stride, padding = unpool_window(self.nd, self.kernel_size, self.stride,
                                                self.padding)
        if self.channels_last:
            spatial = input_shape[-self.nd - 1:-1]
            size = unpool_output_size(spatial, kernel, stride, padding)
            return input_shape[:-self.nd - 1] + size + input_shape[-1:]
        return input_shape[:-self.nd] + unpool_output_size(input_shape[-self.nd:], kernel,
                                                           stride, padding)


def _make(nd):
    doc = (f"{nd}-D max unpooling; ``layer(x, indices, output_size=None)`` with the rules of "
           f"cpool.functional.max_unpool{nd}d (equivalent: torch.nn.MaxUnpool{nd}d); "
           f"channels_last=True takes and returns (N, *spatial, C).")
    return type(f"MaxUnpool{nd}d", (_MaxUnpool,), {"nd": nd, "__doc__": doc,
                                                   "__module__": __name__})


MaxUnpool1d = _make(1)
MaxUnpool2d = _make(2)
MaxUnpool3d = _make(3)
