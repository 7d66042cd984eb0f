"""Max, average and Lp pooling layers (1-D, 2-D, 3-D), mirroring torch.nn.

Forward in training mode keeps the compact within-window argmax (uint8 for windows of up
to 256 taps) rather than int64 indices; backward reads it in gather form.
"""
import numpy as np

from .. import functional as F
from .._geometry import PoolGeometry
from .._kernels.pool import PoolOp
from .._layout import join_shape, split_shape
from .._padding import check_padding_mode, fold_gradient, unpad_indices
from .._validation import check_bool, check_positive_float, finish_output
from .base import Layer


class _WindowPool(Layer):
    """Shared plumbing: validate input, build the geometry, remember what backward needs.

    With a padding_mode other than "ignore" the kernels see the explicitly padded input
    (cpool._padding); `_geom` keeps the user's geometry for folding gradients back."""

    nd = None
    _ctx = _taps = _saved = None  # what backward reads, set by forward

    integers = False  # whether integer input keeps its dtype (max pooling: exactly)

    def _prepare(self, x):
        self._taps = self._saved = None  # an earlier forward's state must not reach backward
        x, kgeom, geom, batched, dtype, cl = F._window_input(
            self.nd, x, self.kernel_size, self.stride, self.padding, self.dilation,
            self.ceil_mode, self.padding_mode, self.channels_last, self.integers)
        self._geom = geom
        n, c, _ = split_shape(x.shape, cl)
        self._ctx = (kgeom, (n, c), batched, dtype)
        return x, kgeom

    def _fold(self, grad_in):
        return fold_gradient(grad_in, self._geom, self.padding_mode, self.channels_last)

    def _grad(self, grad_output, state=()):
        if self._ctx is None or any(s is None for s in state):
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward in training "
                               f"mode first")
        geom, lead, batched, dtype = self._ctx
        g = np.asarray(grad_output)
        if not batched:
            g = g[np.newaxis]
        expected = join_shape(*lead, geom.out_size, self.channels_last)
        if g.shape != expected:
            raise ValueError(f"grad_output must have shape {expected[int(not batched):]}, "
                             f"got {np.shape(grad_output)}")
        compute = np.float32 if dtype in (np.float16, np.float32) else np.float64
        grad_dtype = dtype if dtype.kind == "f" else compute  # integer input: float64
        return np.ascontiguousarray(g, dtype=compute), geom, lead, batched, grad_dtype

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.channels_last:
            lead, spatial, tail = input_shape[:-self.nd - 1], input_shape[-self.nd - 1:-1], \
                input_shape[-1:]
        else:
            lead, spatial, tail = input_shape[:-self.nd], input_shape[-self.nd:], ()
        geom = PoolGeometry.create(spatial, self.kernel_size, self.stride, self.padding,
                                   self.dilation, self.ceil_mode)
        return lead + geom.out_size + tail


class _MaxPool(_WindowPool):
    integers = True
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False, padding_mode="ignore", channels_last=False):
        super().__init__()
        self.channels_last = check_bool(channels_last, "channels_last")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode, self.return_indices = dilation, ceil_mode, return_indices
        self.padding_mode = check_padding_mode(padding_mode)

    def forward(self, x):
        x, geom = self._prepare(x)
        _, lead, batched, dtype = self._ctx
        if not self.training and not self.return_indices:
            return finish_output(F.pool_forward(x, geom, PoolOp.OP_MAX,
                                                channels_last=self.channels_last), batched, dtype)
        out, taps = F.max_pool_forward_taps(x, geom, self.channels_last)
        self._taps = taps
        out = finish_output(out, batched, dtype)
        if self.return_indices:
            indices = unpad_indices(F.taps_to_indices(taps, geom, self.channels_last), self._geom,
                                    self.padding_mode)
            return out, finish_output(indices, batched, np.int64)
        return out

    def backward(self, grad_output):
        g, geom, lead, batched, dtype = self._grad(grad_output, (self._taps,))
        grad_in = self._fold(F.max_pool_backward_taps(g, self._taps, geom, lead,
                                                      self.channels_last))
        return finish_output(grad_in, batched, dtype)


class _AvgPool(_WindowPool):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, dilation=1, padding_mode="ignore",
                 channels_last=False):
        super().__init__()
        self.channels_last = check_bool(channels_last, "channels_last")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override, self.dilation = divisor_override, dilation
        self.padding_mode = check_padding_mode(padding_mode)

    def forward(self, x):
        x, geom = self._prepare(x)
        _, _, batched, dtype = self._ctx
        out = F.pool_forward(x, geom, PoolOp.OP_AVG, count_include_pad=bool(self.count_include_pad),
                             divisor_override=F._check_divisor(self.divisor_override),
                             channels_last=self.channels_last)
        return finish_output(out, batched, dtype)

    def backward(self, grad_output):
        g, geom, lead, batched, dtype = self._grad(grad_output)
        grad_in = F.avg_pool_backward_core(g, geom, lead, bool(self.count_include_pad),
                                           F._check_divisor(self.divisor_override),
                                           self.channels_last)
        return finish_output(self._fold(grad_in), batched, dtype)


class _LPPool(_WindowPool):
    def __init__(self, norm_type, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False, padding_mode="ignore", channels_last=False):
        super().__init__()
        self.channels_last = check_bool(channels_last, "channels_last")
        self.norm_type = check_positive_float(norm_type, "norm_type")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode
        self.padding_mode = check_padding_mode(padding_mode)

    def forward(self, x):
        x, geom = self._prepare(x)
        _, _, batched, dtype = self._ctx
        out = F.pool_forward(x, geom, F._lp_op(self.norm_type), p=self.norm_type,
                             channels_last=self.channels_last)
        if self.training:
            self._saved = (x, out)
        return finish_output(out, batched, dtype)

    def backward(self, grad_output):
        g, geom, lead, batched, dtype = self._grad(grad_output, (self._saved,))
        x, y = self._saved
        grad_in = F.lp_pool_backward_core(g.astype(x.dtype, copy=False), x, y, self.norm_type, geom,
                                          self.channels_last)
        return finish_output(self._fold(grad_in), batched, dtype)


def _make(base, nd, torch_name):
    doc = (f"{nd}-D {base.__name__[1:]} layer; arguments and rules as "
           f"cpool.functional.{torch_name} (equivalent: torch.nn.{base.__name__[1:]}{nd}d).")
    return type(f"{base.__name__[1:]}{nd}d", (base,), {"nd": nd, "__doc__": doc,
                                                       "__module__": __name__})


MaxPool1d = _make(_MaxPool, 1, "max_pool1d")
MaxPool2d = _make(_MaxPool, 2, "max_pool2d")
MaxPool3d = _make(_MaxPool, 3, "max_pool3d")
AvgPool1d = _make(_AvgPool, 1, "avg_pool1d")
AvgPool2d = _make(_AvgPool, 2, "avg_pool2d")
AvgPool3d = _make(_AvgPool, 3, "avg_pool3d")
LPPool1d = _make(_LPPool, 1, "lp_pool1d")
LPPool2d = _make(_LPPool, 2, "lp_pool2d")
LPPool3d = _make(_LPPool, 3, "lp_pool3d")
