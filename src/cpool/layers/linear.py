"""Linear, Flatten and Identity layers, mirroring torch.nn."""
import numpy as np

from .._threads import block_bounds, run_blocks
from .._validation import as_float_array, as_int, check_bool, grad_array
from ._params import kaiming_uniform, store_grad
from .base import Layer


def _matmul(a, b):
    """a @ b in blocks of a's rows, fixed by the shapes (see _threads.run_blocks)."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    bounds = block_bounds(a.shape[0], 2.0 * a.shape[0] * a.shape[1] * b.shape[1])

    def block(i, threads):
        rows = slice(bounds[i], bounds[i + 1])
        np.matmul(a[rows], b, out=out[rows])

    run_blocks(block, len(bounds) - 1)
    return out


class Linear(Layer):
    """y = x @ weight.T + bias, like torch.nn.Linear.

    x (*, in_features) -> (*, out_features); weight (out_features, in_features), bias
    (out_features,), drawn as PyTorch's defaults (uniform(-1/sqrt(in_features),
    1/sqrt(in_features))) from np.random.default_rng(seed). The input's dtype decides
    the compute dtype; parameters are cast to it.

    >>> import numpy as np
    >>> from cpool.layers import Linear
    >>> Linear(3, 2, seed=0)(np.ones((4, 3), np.float32)).shape
    (4, 2)
    """

    def __init__(self, in_features, out_features, bias=True, seed=None):
        super().__init__()
        self.in_features = as_int(in_features, "in_features", 1)
        self.out_features = as_int(out_features, "out_features", 1)
        self.bias = check_bool(bias, "bias")
        self.seed = None if seed is None else as_int(seed, "seed", 0)
        rng = np.random.default_rng(self.seed)
        self.params["weight"] = kaiming_uniform(rng, (self.out_features, self.in_features),
                                                self.in_features)
        if self.bias:
            self.params["bias"] = kaiming_uniform(rng, (self.out_features,), self.in_features)
        self.needs_input_grad = True  # False: backward skips grad_x and returns None
        self._ctx = None

    def forward(self, x):
        x, dtype = as_float_array(x, "x")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (*, {self.in_features}) (in_features), "
                             f"got {x.shape}")
        x2 = x.reshape(-1, self.in_features)
        w = self.params["weight"].astype(x.dtype, copy=False)
        y = _matmul(x2, w.T)
        if self.bias:
            y += self.params["bias"].astype(x.dtype, copy=False)
        self._ctx = (x2, x.shape, dtype)
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        return y if y.dtype == dtype else y.astype(dtype)

    def backward(self, grad_output):
        """grad_x = g @ weight, grad_weight = g.T @ x, grad_bias = g summed over rows.
        grads are overwritten, not accumulated. Returns None when ``needs_input_grad``
        is False."""
        if self._ctx is None:
            raise RuntimeError("Linear.backward called before forward")
        x2, shape, dtype = self._ctx
        g = grad_array(grad_output, shape[:-1] + (self.out_features,), x2.dtype)
        g2 = g.reshape(-1, self.out_features)
        store_grad(self, "weight", _matmul(g2.T, x2))
        if self.bias:
            store_grad(self, "bias", g2.sum(axis=0))
        if not self.needs_input_grad:
            return None
        gx = _matmul(g2, self.params["weight"].astype(x2.dtype, copy=False)).reshape(shape)
        return gx if gx.dtype == dtype else gx.astype(dtype)

    def output_shape(self, input_shape):
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or input_shape[-1] != self.in_features:
            raise ValueError(f"input_shape must be (*, {self.in_features}), got {input_shape}")
        return input_shape[:-1] + (self.out_features,)


class Flatten(Layer):
    """Merge dims start_dim..end_dim (inclusive; negative counts from the end) into one,
    like torch.nn.Flatten. The default keeps the batch dim: (N, C, H, W) -> (N, C*H*W).
    Any dtype passes through; the result is a view when the input is contiguous."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim = as_int(start_dim, "start_dim")
        self.end_dim = as_int(end_dim, "end_dim")
        self._shape = None

    def _dims(self, ndim):
        dims = []
        for name, d in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -max(ndim, 1) <= d < max(ndim, 1):
                raise ValueError(f"{name} must be in [{-max(ndim, 1)}, {max(ndim, 1) - 1}] "
                                 f"for an input of {ndim} dims, got {d}")
            dims.append(d % max(ndim, 1))
        if dims[0] > dims[1]:
            raise ValueError(f"start_dim must not come after end_dim, got start_dim="
                             f"{self.start_dim}, end_dim={self.end_dim} for {ndim} dims")
        return dims

    def output_shape(self, input_shape):
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape:
            return (1,)
        start, end = self._dims(len(input_shape))
        merged = int(np.prod(input_shape[start:end + 1]))
        return input_shape[:start] + (merged,) + input_shape[end + 1:]

    def forward(self, x):
        x = np.asarray(x)
        y = x.reshape(self.output_shape(x.shape))
        self._shape = x.shape
        return y

    def backward(self, grad_output):
        if self._shape is None:
            raise RuntimeError("Flatten.backward called before forward")
        g = np.asarray(grad_output)
        expected = self.output_shape(self._shape)
        if g.shape != expected:
            raise ValueError(f"grad_output must have shape {expected}, got {g.shape}")
        return g.reshape(self._shape)


class Identity(Layer):
    """Returns its input unchanged (the same array), like torch.nn.Identity."""

    def __init__(self):
        super().__init__()

    def forward(self, x):
        return x

    def backward(self, grad_output):
        return grad_output

    def output_shape(self, input_shape):
        return tuple(input_shape)
