"""Batch normalization layers, mirroring torch.nn.BatchNorm1d / BatchNorm2d.

Per channel c, over the M = N * (spatial size) values of that channel:

    y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]

Training mode uses the batch's mean and biased variance, and (with track_running_stats)
updates the running estimates as PyTorch does, with the *unbiased* batch variance:

    running = (1 - f) * running + f * batch_stat,   var stat = var * M / (M - 1)
    f = momentum, or 1 / num_batches_tracked when momentum is None (cumulative average).

Evaluation mode uses the running estimates; with track_running_stats=False it always
uses the batch statistics. Training on M = 1 value per channel raises ValueError, as
PyTorch does.

The running estimates are *buffers*, not parameters: ``layer.buffers`` holds
``running_mean`` (C,) float32, ``running_var`` (C,) float32 and ``num_batches_tracked``
(a 0-d int64 array), PyTorch's state_dict names; it is empty without
track_running_stats. They are updated in place, and the layer reads them from the dict
on every call, so assigning new arrays there (loading) takes effect.
"""
import numpy as np

from .._validation import as_float_array, as_int, check_bool, grad_array
from ._params import store_grad
from .base import Layer


class _BatchNorm(Layer):
    ndims = ()  # accepted input ranks

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__()
        self.num_features = as_int(num_features, "num_features", 1)
        self.eps = _real(eps, "eps", positive=True)
        self.momentum = None if momentum is None else _real(momentum, "momentum")
        self.affine = check_bool(affine, "affine")
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats")
        c = self.num_features
        if self.affine:
            self.params["weight"] = np.ones(c, dtype=np.float32)
            self.params["bias"] = np.zeros(c, dtype=np.float32)
        self.buffers = {}
        if self.track_running_stats:
            self.buffers["running_mean"] = np.zeros(c, dtype=np.float32)
            self.buffers["running_var"] = np.ones(c, dtype=np.float32)
            self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)
        self._ctx = None

    def _check(self, x):
        if x.ndim not in self.ndims or x.shape[1] != self.num_features:
            dims = " or ".join(f"{d}-D" for d in self.ndims)
            raise ValueError(f"x must be {dims} with {self.num_features} channels "
                             f"(num_features) in dim 1, got shape {x.shape}")

    def output_shape(self, input_shape):
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) not in self.ndims or input_shape[1] != self.num_features:
            raise ValueError(f"input_shape must have {self.num_features} channels in dim 1 "
                             f"and {' or '.join(map(str, self.ndims))} dims, got {input_shape}")
        return input_shape

    def forward(self, x):
        x, dtype = as_float_array(x, "x")
        self._check(x)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        m = x.size // self.num_features
        batch_stats = self.training or not self.track_running_stats
        if batch_stats:
            if self.training and m <= 1:
                raise ValueError(f"x must have more than 1 value per channel when training, "
                                 f"got shape {x.shape}")
            mean = x.mean(axis=axes)
            var = np.square(x - mean.reshape(shape)).mean(axis=axes)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, m)
        else:
            mean = self.buffers["running_mean"].astype(x.dtype)
            var = self.buffers["running_var"].astype(x.dtype)
        inv_std = 1 / np.sqrt(var + x.dtype.type(self.eps))
        xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        if self.affine:
            y = (xhat * self.params["weight"].astype(x.dtype).reshape(shape)
                 + self.params["bias"].astype(x.dtype).reshape(shape))
        else:
            y = xhat
        self._ctx = (xhat, inv_std, batch_stats, dtype)
        return y if y.dtype == dtype else y.astype(dtype)

    def _update_running(self, mean, var, m):
        nbt = self.buffers["num_batches_tracked"]
        nbt += 1
        f = 1.0 / float(nbt) if self.momentum is None else self.momentum
        for name, stat in (("running_mean", mean), ("running_var", var * (m / (m - 1)))):
            buf = self.buffers[name]
            buf[...] = (1 - f) * buf + f * stat

    def backward(self, grad_output):
        """With batch statistics (M values per channel, g_hat = grad_output * weight):
        grad_x = inv_std / M * (M*g_hat - sum(g_hat) - xhat * sum(g_hat * xhat));
        with running statistics grad_x = g_hat * inv_std. grad_weight = sum(g * xhat),
        grad_bias = sum(g). grads are overwritten, not accumulated."""
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        xhat, inv_std, batch_stats, dtype = self._ctx
        g = grad_array(grad_output, xhat.shape, xhat.dtype)
        axes = (0,) + tuple(range(2, xhat.ndim))
        shape = (1, -1) + (1,) * (xhat.ndim - 2)
        if self.affine:
            store_grad(self, "weight", (g * xhat).sum(axis=axes))
            store_grad(self, "bias", g.sum(axis=axes))
            g_hat = g * self.params["weight"].astype(xhat.dtype).reshape(shape)
        else:
            g_hat = g
        scale = inv_std.reshape(shape)
        if batch_stats:
            mean_g = g_hat.mean(axis=axes).reshape(shape)
            mean_gx = (g_hat * xhat).mean(axis=axes).reshape(shape)
            gx = (g_hat - mean_g - xhat * mean_gx) * scale
        else:
            gx = g_hat * scale
        return gx if gx.dtype == dtype else gx.astype(dtype)

    # Read-only conveniences mirroring torch's attribute names.
    @property
    def running_mean(self):
        return self.buffers.get("running_mean")

    @property
    def running_var(self):
        return self.buffers.get("running_var")

    @property
    def num_batches_tracked(self):
        return self.buffers.get("num_batches_tracked")


def _real(value, name, positive=False):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got bool")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not np.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, "
                         f"got {value!r}")
    return v


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) input, like torch.nn.BatchNorm1d.
    Rules in the module docstring; params weight/bias (C,), buffers in ``buffers``."""

    ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) input, like torch.nn.BatchNorm2d.
    Rules in the module docstring; params weight/bias (C,), buffers in ``buffers``."""

    ndims = (4,)
