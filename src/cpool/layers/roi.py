"""RoI pooling layers for detection heads, mirroring torchvision.ops.RoIPool / RoIAlign.

Called as ``layer(x, rois, batch_indices)`` with rois (K, 4) boxes (x1, y1, x2, y2) and
batch_indices (K,) (ONNX's layout); ``backward(grad_output)`` returns the gradient with
respect to x. The rules (bins, sampling, the max of RoIAlign) are in cpool._roi.
channels_last=True takes x as (N, H, W, C) and returns (K, OH, OW, C).
"""
from .._roi import (align_options, output_size_2d, roi_align_backward_core,
                    roi_align_forward_core, roi_input, roi_pool_backward_core,
                    roi_pool_forward_core, roi_set)
from .._layout import join_shape, split_shape
from .._validation import check_bool, check_positive_float, grad_array
from .base import Layer


class _RoILayer(Layer):
    def _grad(self, grad_output):
        if getattr(self, "_ctx", None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward in training "
                               f"mode first")
        ctx = self._ctx
        return ctx, grad_array(grad_output, ctx["out_shape"], ctx["compute"])

    def output_shape(self, input_shape):
        """(None, C, OH, OW) or (None, OH, OW, C): the first dim is the number of RoIs,
        known only at call time."""
        channels = split_shape(tuple(input_shape), self.channels_last)[1]
        return join_shape(None, channels, output_size_2d(self.output_size), self.channels_last)


class RoIPool(_RoILayer):
    """Max RoI pooling; rules as cpool.functional.roi_pool
    (equivalent: torchvision.ops.RoIPool, ONNX MaxRoiPool)."""

    def __init__(self, output_size, spatial_scale=1.0, channels_last=False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.channels_last = check_bool(channels_last, "channels_last")
        output_size_2d(output_size)  # fail early on bad arguments
        check_positive_float(spatial_scale, "spatial_scale")

    def forward(self, x, rois, batch_indices):
        x, dtype = roi_input(x, self.channels_last)
        R = roi_set(x, rois, batch_indices, self.spatial_scale)
        out, argmax = roi_pool_forward_core(x, R, output_size_2d(self.output_size),
                                            self.channels_last)
        self._ctx = (dict(R=R, argmax=argmax, in_shape=x.shape, out_shape=out.shape,
                          compute=x.dtype, dtype=dtype) if self.training else None)
        return out.astype(dtype, copy=False)

    def backward(self, grad_output):
        ctx, g = self._grad(grad_output)
        grad = roi_pool_backward_core(g, ctx["argmax"], ctx["R"], ctx["in_shape"],
                                      self.channels_last)
        return grad.astype(ctx["dtype"], copy=False)


class RoIAlign(_RoILayer):
    """RoI align; rules as cpool.functional.roi_align (equivalent: ONNX RoiAlign opset 16,
    torchvision.ops.RoIAlign for mode "avg"). Mode "max" keeps each output's winning
    (sample, corner) as int32 for backward."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=False,
                 mode="avg", channels_last=False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.channels_last = check_bool(channels_last, "channels_last")
        self.sampling_ratio, self.aligned, self.mode = sampling_ratio, aligned, mode
        output_size_2d(output_size)  # fail early on bad arguments
        check_positive_float(spatial_scale, "spatial_scale")
        align_options(sampling_ratio, aligned, mode)

    def forward(self, x, rois, batch_indices):
        sr, aligned, mode = align_options(self.sampling_ratio, self.aligned, self.mode)
        x, dtype = roi_input(x, self.channels_last)
        R = roi_set(x, rois, batch_indices, self.spatial_scale)
        out, taps = roi_align_forward_core(x, R, output_size_2d(self.output_size), sr,
                                           aligned, mode, self.channels_last)
        self._ctx = (dict(R=R, taps=taps, in_shape=x.shape, out_shape=out.shape,
                          compute=x.dtype, dtype=dtype, options=(sr, aligned, mode))
                     if self.training else None)
        return out.astype(dtype, copy=False)

    def backward(self, grad_output):
        ctx, g = self._grad(grad_output)
        sr, aligned, mode = ctx["options"]
        grad = roi_align_backward_core(g, ctx["R"], ctx["in_shape"], sr, aligned, mode,
                                       ctx["taps"], self.channels_last)
        return grad.astype(ctx["dtype"], copy=False)
