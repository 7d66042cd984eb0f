"""Global, adaptive, binned and spatial pyramid pooling layers.

Rules (bins, NaN, Lp) are those of cpool._binned, stated once there. In training mode a
max layer keeps the compact within-bin argmax (uint8 for bins of up to 256 elements)
rather than int64 indices, and an Lp layer keeps its input and output; backward reads
them. In eval mode forward keeps nothing.
"""
import numpy as np

from .. import _binned as B
from .._layout import join_shape, split_shape
from .._validation import check_bool, check_choice, check_positive_float, finish_output, \
    spatial_input
from .base import Layer


class _BinLayer(Layer):
    """Shared plumbing. A subclass sets ``mode`` (and ``p``) and provides ``_prepare``
    (validated input and its grids, one per concatenated part), ``_outputs`` and
    ``_split`` (grids' outputs <-> the layer's output) and ``output_shape``."""

    p = 2.0
    return_indices = False
    channels_last = False

    def _prepare(self, x):
        raise NotImplementedError

    def _outputs(self, x, grids):
        """(the layer's output, the array each grid pools into), or (None, [None, ...]):
        each grid's own array, which _assemble then makes the output."""
        return None, [None] * len(grids)

    def _assemble(self, outs):
        return outs[0]

    def _pool(self, x, grids):
        """(the layer's output or None, each grid's pooled values) of a forward that keeps
        no argmax."""
        return None, [B.bin_forward(x, grid, self.mode, self.p, self.channels_last)
                      for grid in grids]

    def _pool_argmax(self, x, grids):
        """_pool's pair for max, plus what _max_backward reads (each grid's taps)."""
        whole, targets = self._outputs(x, grids)
        outs, saved = [], []
        for grid, target in zip(grids, targets):
            out, taps = B.bin_max_forward_taps(x, grid, self.channels_last, out=target)
            outs.append(out)
            saved.append(taps)
        return whole, outs, saved

    def _max_backward(self, g, saved, x, grids, lead):
        grad_in = None
        for part, grid, taps in zip(self._split(g, lead, grids), grids, saved):
            grad_in = B.bin_max_backward(np.ascontiguousarray(part), taps, grid, lead, grad_in,
                                         self.channels_last)
        return grad_in

    def _split(self, g, lead, grids):
        expected = join_shape(*lead, grids[0].out_size, self.channels_last)
        if g.shape != expected:
            raise ValueError(f"grad_output must have shape {expected} (the forward's output, "
                             f"batched), got {g.shape}")
        return [g]

    def forward(self, x):
        x, batched, dtype, grids = self._prepare(x)
        cl = self.channels_last
        if self.mode == "max" and (self.training or self.return_indices):  # keep the argmax
            whole, outs, saved = self._pool_argmax(x, grids)
        else:
            whole, outs = self._pool(x, grids)
            saved = [out if self.mode == "lp" else None for out in outs]
        self._ctx = None
        if self.training:
            self._ctx = (x if self.mode == "lp" else None, grids, split_shape(x.shape, cl)[:2],
                         batched, dtype, saved)
        out = finish_output(self._assemble(outs) if whole is None else whole, batched, dtype)
        if self.return_indices:
            indices = B.bin_taps_to_indices(saved[0], grids[0], cl, x.dtype)
            return out, finish_output(indices, batched, np.int64)
        return out

    def backward(self, grad_output):
        ctx = getattr(self, "_ctx", None)
        if ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward in training "
                               f"mode first")
        x, grids, lead, batched, dtype, saved = ctx
        g = np.asarray(grad_output)
        if not batched:
            g = g[np.newaxis]
        compute = np.float32 if dtype in (np.float16, np.float32) else np.float64
        g = np.ascontiguousarray(g, dtype=compute)
        if self.mode == "max":
            return finish_output(self._max_backward(g, saved, x, grids, lead), batched, dtype)
        grad_in = None
        cl = self.channels_last
        for part, grid, keep in zip(self._split(g, lead, grids), grids, saved):
            part = np.ascontiguousarray(part)
            if self.mode == "avg":
                grad_in = B.bin_avg_backward(part, grid, lead, grad_in, cl)
            else:
                g_lp = B.bin_lp_backward(part, x, keep, self.p, grid, cl)
                grad_in = g_lp if grad_in is None else grad_in + g_lp
        return finish_output(grad_in, batched, dtype)


# --------------------------------------------------------------------------------------
# Global pooling.
# --------------------------------------------------------------------------------------

class _GlobalPool(_BinLayer):
    def __init__(self, keepdims=False, channels_last=False):
        super().__init__()
        self.keepdims = B.check_keepdims(keepdims)
        self.channels_last = check_bool(channels_last, "channels_last")

    def _prepare(self, x):
        x, dtype, grid, _ = B.global_input(x, self.channels_last)
        return x, True, dtype, [grid]

    def _assemble(self, outs):
        n, c, _ = split_shape(outs[0].shape, self.channels_last)
        return outs[0] if self.keepdims else outs[0].reshape(n, c)

    def _split(self, g, lead, grids):
        keep = join_shape(*lead, grids[0].out_size, self.channels_last)
        if g.shape not in (tuple(lead), keep):
            raise ValueError(f"grad_output must have shape {tuple(lead)} or {keep} (the "
                             f"forward's output), got {g.shape}")
        return [g.reshape(keep)]

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) not in (3, 4, 5):
            raise ValueError(f"input_shape must be (N, C, *spatial) with 1 to 3 spatial dims, "
                             f"got {input_shape}")
        n, c, spatial = split_shape(input_shape, self.channels_last)
        return join_shape(n, c, (1,) * len(spatial), self.channels_last) if self.keepdims \
            else (n, c)


class GlobalMaxPool(_GlobalPool):
    """Max over every spatial dim of (N, C, *spatial) input -> (N, C), or (N, C, 1, ...)
    with keepdims; cpool.functional.global_max_pool (ONNX GlobalMaxPool)."""

    mode = "max"


class GlobalAvgPool(_GlobalPool):
    """Mean over every spatial dim; cpool.functional.global_avg_pool (ONNX
    GlobalAveragePool, Keras GlobalAveragePooling*D)."""

    mode = "avg"


class GlobalLPPool(_GlobalPool):
    """(sum over every spatial dim of |x|**p) ** (1/p); cpool.functional.global_lp_pool
    (ONNX GlobalLpPool)."""

    mode = "lp"

    def __init__(self, p=2, keepdims=False, channels_last=False):
        super().__init__(keepdims, channels_last)
        self.p = check_positive_float(p, "p")


# --------------------------------------------------------------------------------------
# Adaptive pooling.
# --------------------------------------------------------------------------------------

class _AdaptivePool(_BinLayer):
    nd = None

    def _prepare(self, x):
        x, batched, dtype, grid, _ = B.adaptive_input(x, self.nd, self.output_size,
                                                      self.channels_last)
        return x, batched, dtype, [grid]

    def output_shape(self, input_shape):
        return _binned_shape(tuple(input_shape), self.nd, self.channels_last,
                             lambda spatial: B.adaptive_output_size(self.output_size, spatial))


class _AdaptiveMaxPool(_AdaptivePool):
    mode = "max"

    def __init__(self, output_size, return_indices=False, channels_last=False):
        super().__init__()
        self.output_size, self.return_indices = output_size, bool(return_indices)
        self.channels_last = check_bool(channels_last, "channels_last")
        B.adaptive_output_size(output_size, (1,) * self.nd)  # reject bad sizes now


class _AdaptiveAvgPool(_AdaptivePool):
    mode = "avg"

    def __init__(self, output_size, channels_last=False):
        super().__init__()
        self.output_size = output_size
        self.channels_last = check_bool(channels_last, "channels_last")
        B.adaptive_output_size(output_size, (1,) * self.nd)


def _make(base, nd, func):
    name = base.__name__[1:] + f"{nd}d"
    doc = (f"{nd}-D {base.__name__[1:]} layer; arguments and bin rule as "
           f"cpool.functional.{func}{nd}d (equivalent: torch.nn.{name}).")
    return type(name, (base,), {"nd": nd, "__doc__": doc, "__module__": __name__})


AdaptiveMaxPool1d = _make(_AdaptiveMaxPool, 1, "adaptive_max_pool")
AdaptiveMaxPool2d = _make(_AdaptiveMaxPool, 2, "adaptive_max_pool")
AdaptiveMaxPool3d = _make(_AdaptiveMaxPool, 3, "adaptive_max_pool")
AdaptiveAvgPool1d = _make(_AdaptiveAvgPool, 1, "adaptive_avg_pool")
AdaptiveAvgPool2d = _make(_AdaptiveAvgPool, 2, "adaptive_avg_pool")
AdaptiveAvgPool3d = _make(_AdaptiveAvgPool, 3, "adaptive_avg_pool")


# --------------------------------------------------------------------------------------
# Binned and pyramid pooling.
# --------------------------------------------------------------------------------------

class BinPool(_BinLayer):
    """Pooling over explicit bins, one sequence of (start, end) pairs per spatial axis;
    arguments and rules as cpool.functional.bin_pool."""

    def __init__(self, bins, mode="max", p=2, channels_last=False):
        super().__init__()
        self.bins = tuple(tuple((int(s), int(e)) for s, e in axis) for axis in B.check_bins(bins))
        self.mode = check_choice(mode, "mode", B.MODES)
        self.p = check_positive_float(p, "p")
        self.channels_last = check_bool(channels_last, "channels_last")

    def _prepare(self, x):
        x, batched, dtype = spatial_input(x, len(self.bins))
        spatial = split_shape(x.shape, self.channels_last)[2]
        grid = B.BinGrid(spatial, B.check_bins(self.bins, spatial))
        return x, batched, dtype, [grid]

    def output_shape(self, input_shape):
        def out_size(spatial):
            B.check_bins(self.bins, spatial)
            return tuple(len(axis) for axis in self.bins)
        return _binned_shape(tuple(input_shape), len(self.bins), self.channels_last, out_size)


class SpatialPyramidPool(_BinLayer):
    """Spatial pyramid pooling (He et al., 2014) of (N, C, H, W) -> (N, C * sum(l*l));
    arguments and rules as cpool.functional.spatial_pyramid_pool."""

    def __init__(self, levels=(1, 2, 4), mode="max", channels_last=False):
        super().__init__()
        self.levels = B.check_levels(levels)
        self.mode = check_choice(mode, "mode", B.PYRAMID_MODES)
        self.channels_last = check_bool(channels_last, "channels_last")

    def _prepare(self, x):
        x, batched, dtype, grids, _, _ = B.pyramid_input(x, self.levels, self.mode,
                                                         self.channels_last)
        return x, batched, dtype, grids

    def _outputs(self, x, grids):
        return B.pyramid_outputs(x, grids, self.channels_last)

    def _pool(self, x, grids):
        return B.pyramid_forward(x, grids, self.mode, self.channels_last)

    def _pool_argmax(self, x, grids):
        out, levels, taps = B.pyramid_max_forward_taps(x, grids, self.channels_last)
        return out, levels, taps

    def _max_backward(self, g, saved, x, grids, lead):
        self._split(g, lead, grids)  # checks the shape
        return B.pyramid_max_backward(g, saved, lead, grids, self.channels_last)

    def _split(self, g, lead, grids):
        widths = [lead[1] * grid.out_size[0] * grid.out_size[1] for grid in grids]
        expected = (lead[0], sum(widths))
        if g.shape != expected:
            raise ValueError(f"grad_output must have shape {expected} (the forward's output, "
                             f"batched), got {g.shape}")
        bounds = np.cumsum([0] + widths)
        return [g[:, a:b].reshape(join_shape(*lead, grid.out_size, self.channels_last))
                for a, b, grid in zip(bounds[:-1], bounds[1:], grids)]

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) not in (3, 4):
            raise ValueError(f"input_shape must be (N, C, H, W) or (C, H, W), got {input_shape}")
        channels = input_shape[-1] if self.channels_last else input_shape[-3]
        return input_shape[:-3] + (channels * sum(l * l for l in self.levels),)


def _binned_shape(input_shape, nd, channels_last, out_size):
    """A bin layer's output shape from input_shape and out_size(spatial)."""
    if channels_last:
        spatial = input_shape[-nd - 1:-1]
        return input_shape[:-nd - 1] + out_size(spatial) + input_shape[-1:]
    return input_shape[:-nd] + out_size(input_shape[-nd:])
