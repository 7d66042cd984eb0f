"""Activation layers, Softmax/LogSoftmax and Dropout, mirroring torch.nn.

All accept arrays of any shape. float32 and float64 are computed natively; float16 is
computed in float32 and returned as float16; integers compute and return float64. Each
forward keeps what its backward reads (a reference to its input or output, or Dropout's
mask); backward(grad_output) returns the gradient of that forward's input.
"""
import numpy as np

from .._kernels import activation as _k
from .._threads import threads_for
from .._validation import as_float_array, as_int, check_choice, grad_array
from .base import Layer


# threads_for's cost: erf or tanh per element, against a max's compare.
GELU_COST = 16


def _flat(a):
    return a.reshape(-1)


class _Elementwise(Layer):
    """Plumbing: validate x, run `_forward` on the compute-dtype array, keep the context."""

    def forward(self, x):
        x, dtype = as_float_array(x, "x")
        y = self._forward(x)
        self._ctx = (x, y, dtype)
        return y if y.dtype == dtype else y.astype(dtype)

    def backward(self, grad_output):
        if getattr(self, "_ctx", None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        x, y, dtype = self._ctx
        g = grad_array(grad_output, x.shape, x.dtype)
        gx = self._backward(x, y, g)
        return gx if gx.dtype == dtype else gx.astype(dtype)

    def output_shape(self, input_shape):
        return tuple(input_shape)


class ReLU(_Elementwise):
    """max(x, 0), like torch.nn.ReLU: relu(x) = 0 if x <= 0 else x (NaN propagates);
    the gradient is 0 where the output is <= 0 (so 0 at x = 0) and grad_output elsewhere."""

    def __init__(self):
        super().__init__()

    def _forward(self, x):
        y = np.empty_like(x)
        _k.relu_forward(_flat(x), _flat(y), threads_for(x, y))
        return y

    def _backward(self, x, y, g):
        gx = np.empty_like(g)
        _k.relu_backward(_flat(y), _flat(g), _flat(gx), threads_for(y, g, gx))
        return gx


class LeakyReLU(_Elementwise):
    """x if x > 0 else negative_slope*x, like torch.nn.LeakyReLU; the gradient is
    grad_output if x > 0 else negative_slope*grad_output (so negative_slope at x = 0)."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        if isinstance(negative_slope, (bool, np.bool_)):
            raise TypeError("negative_slope must be a real number, got bool")
        try:
            self.negative_slope = float(negative_slope)
        except (TypeError, ValueError):
            raise TypeError(f"negative_slope must be a real number, got "
                            f"{type(negative_slope).__name__}") from None
        if not np.isfinite(self.negative_slope):
            raise ValueError(f"negative_slope must be finite, got {negative_slope!r}")

    def _forward(self, x):
        y = np.empty_like(x)
        _k.leaky_relu_forward(_flat(x), _flat(y), self.negative_slope, threads_for(x, y))
        return y

    def _backward(self, x, y, g):
        gx = np.empty_like(g)
        _k.leaky_relu_backward(_flat(x), _flat(g), _flat(gx), self.negative_slope,
                               threads_for(x, g, gx))
        return gx


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)), like torch.nn.Sigmoid, evaluated as exp(x) / (1 + exp(x)) for
    x < 0 so that no exp overflows; the gradient is grad_output * y * (1 - y)."""

    def __init__(self):
        super().__init__()

    def _forward(self, x):
        z = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + z), z / (1 + z)).astype(x.dtype, copy=False)

    def _backward(self, x, y, g):
        return g * y * (1 - y)


class Tanh(_Elementwise):
    """tanh(x), like torch.nn.Tanh; the gradient is grad_output * (1 - y**2)."""

    def __init__(self):
        super().__init__()

    def _forward(self, x):
        return np.tanh(x)

    def _backward(self, x, y, g):
        return g * (1 - y * y)


class GELU(_Elementwise):
    """Gaussian error linear unit, like torch.nn.GELU.

    approximate="none": 0.5*x*(1 + erf(x/sqrt(2)));
    approximate="tanh": 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3))).
    Evaluated in double precision with libm's erf/tanh and rounded once.
    """

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = check_choice(approximate, "approximate", ("none", "tanh"))

    def _forward(self, x):
        y = np.empty_like(x)
        _k.gelu_forward(_flat(x), _flat(y), self.approximate == "tanh",
                        threads_for(x, y, cost=GELU_COST))
        return y

    def _backward(self, x, y, g):
        gx = np.empty_like(g)
        _k.gelu_backward(_flat(x), _flat(g), _flat(gx), self.approximate == "tanh",
                         threads_for(x, g, gx, cost=GELU_COST))
        return gx


class _AlongDim(_Elementwise):
    """Softmax-like layers normalizing along `dim` (negative counts from the end)."""

    def __init__(self, dim=-1):
        super().__init__()
        self.dim = as_int(dim, "dim")

    def _axis(self, x):
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"dim must be in [{-x.ndim}, {x.ndim - 1}] for x of shape "
                             f"{x.shape}, got {self.dim}")
        return self.dim % x.ndim


class Softmax(_AlongDim):
    """exp(x - max) / sum(exp(x - max)) along `dim`, like torch.nn.Softmax(dim).

    Subtracting the maximum keeps exp from overflowing. The gradient is
    y * (grad_output - sum(grad_output * y, dim)).
    """

    def _forward(self, x):
        axis = self._axis(x)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        return e

    def _backward(self, x, y, g):
        axis = self._axis(x)
        return y * (g - (g * y).sum(axis=axis, keepdims=True))


class LogSoftmax(_AlongDim):
    """x - max - log(sum(exp(x - max))) along `dim`, like torch.nn.LogSoftmax(dim).

    The gradient is grad_output - exp(y) * sum(grad_output, dim).
    """

    def _forward(self, x):
        axis = self._axis(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        shifted -= np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        return shifted

    def _backward(self, x, y, g):
        axis = self._axis(x)
        return g - np.exp(y) * g.sum(axis=axis, keepdims=True)


class Dropout(Layer):
    """Inverted dropout, like torch.nn.Dropout(p).

    Training: each element is kept with probability 1 - p and scaled by 1/(1 - p)
    (y = x * mask / (1 - p)); p = 1 gives zeros. Evaluation: the identity. The mask comes
    from the layer's own np.random.default_rng(seed), so a seed makes runs repeatable
    (the stream differs from torch's).
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if isinstance(p, (bool, np.bool_)):
            raise TypeError("p must be a probability in [0, 1], got bool")
        try:
            self.p = float(p)
        except (TypeError, ValueError):
            raise TypeError(f"p must be a probability in [0, 1], got {type(p).__name__}") from None
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.seed = None if seed is None else as_int(seed, "seed", 0)
        self._rng = np.random.default_rng(self.seed)
        self._ctx = None

    def forward(self, x):
        x, dtype = as_float_array(x, "x")
        if not self.training or self.p == 0.0:
            self._ctx = (x.shape, x.dtype, None, dtype)
            return x if x.dtype == dtype else x.astype(dtype)
        if self.p == 1.0:
            noise = np.zeros_like(x)
        else:
            keep = self._rng.random(x.shape, dtype=x.dtype) >= x.dtype.type(self.p)
            noise = keep.astype(x.dtype)
            noise *= x.dtype.type(1) / x.dtype.type(1 - self.p)
        self._ctx = (x.shape, x.dtype, noise, dtype)
        y = x * noise
        return y if y.dtype == dtype else y.astype(dtype)

    def backward(self, grad_output):
        if self._ctx is None:
            raise RuntimeError("Dropout.backward called before forward")
        shape, compute, noise, dtype = self._ctx
        g = grad_array(grad_output, shape, compute)
        gx = g if noise is None else g * noise
        return gx if gx.dtype == dtype else gx.astype(dtype)

    def output_shape(self, input_shape):
        return tuple(input_shape)
