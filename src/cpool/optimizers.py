"""Optimizers: SGD and Adam with PyTorch's update rules, stepping (param, grad) pairs in place.

``params`` is a list of (param, grad) ndarray pairs, as ``Sequential.parameters()`` returns,
or a model or layer (anything with a ``parameters()`` method). Given a model, the optimizer
asks it for the pairs at every step, so it always reads the layers' current grad arrays;
given a list, it reads the arrays in the list (``Sequential.backward`` keeps those filled).
``step()`` updates each param in place; ``zero_grad()`` zeroes the grads in place.
Arithmetic is in each param's own dtype.
"""
import math

import numpy as np

__all__ = ["SGD", "Adam"]


def _check_hyper(value, name, low=0.0, high=None, open_low=False):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got bool")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    too_low = v <= low if open_low else v < low
    if not math.isfinite(v) or too_low or (high is not None and v >= high):
        bounds = f"{'>' if open_low else '>='} {low}" + (f" and < {high}" if high else "")
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")
    return v


def _pairs(params):
    if hasattr(params, "parameters"):
        params = params.parameters()
    pairs = []
    for i, pair in enumerate(params):
        if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
            raise TypeError(f"params[{i}] must be a (param, grad) pair of arrays")
        p, g = pair[-2:]  # Layer.parameters() gives (name, param, grad)
        if not (isinstance(p, np.ndarray) and isinstance(g, np.ndarray)):
            raise TypeError(f"params[{i}] must be a (param, grad) pair of ndarrays")
        if p.dtype.kind != "f" or not p.flags.writeable:
            raise TypeError(f"params[{i}]: param must be a writable float array, "
                            f"got dtype {p.dtype} (writable={p.flags.writeable})")
        if g.shape != p.shape:
            raise ValueError(f"params[{i}]: grad shape {g.shape} differs from param shape "
                             f"{p.shape}")
        pairs.append((p, g))
    if not pairs:
        raise ValueError("params is empty: the model has no trainable parameters")
    return pairs


class _Optimizer:
    def __init__(self, params):
        self._source = params if hasattr(params, "parameters") else None
        self.pairs = _pairs(params)

    def _refresh(self):
        if self._source is not None:
            pairs = _pairs(self._source)
            if [p.shape for p, _ in pairs] != [p.shape for p, _ in self.pairs]:
                raise ValueError("the model's parameters changed since the optimizer was "
                                 "built; build a new optimizer")
            self.pairs = pairs

    def zero_grad(self):
        self._refresh()
        for _, g in self.pairs:
            g.fill(0)

    def step(self):
        self._refresh()
        for i, (p, g) in enumerate(self.pairs):
            grad = g.astype(p.dtype, copy=False)
            if self.weight_decay:
                grad = grad + p.dtype.type(self.weight_decay) * p
            self._update(i, p, grad)


class SGD(_Optimizer):
    """Stochastic gradient descent, exactly torch.optim.SGD's rule.

    With g = grad + weight_decay * p and, when momentum > 0, the buffer
    b = g on the first step and b = momentum * b + (1 - dampening) * g afterwards,
    the step is p -= lr * d where d = g + momentum * b (nesterov), b (momentum) or g.
    """

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                 dampening=0.0):
        super().__init__(params)
        self.lr = _check_hyper(lr, "lr")
        self.momentum = _check_hyper(momentum, "momentum")
        self.weight_decay = _check_hyper(weight_decay, "weight_decay")
        self.dampening = _check_hyper(dampening, "dampening")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening == 0")
        self._buffers = [None] * len(self.pairs)

    def _update(self, i, p, grad):
        t = p.dtype.type
        if self.momentum:
            buf = self._buffers[i]
            if buf is None:
                buf = self._buffers[i] = grad.copy()
            else:
                buf *= t(self.momentum)
                buf += t(1.0 - self.dampening) * grad
            grad = grad + t(self.momentum) * buf if self.nesterov else buf
        p -= t(self.lr) * grad


class Adam(_Optimizer):
    """Adam, exactly torch.optim.Adam's rule (amsgrad=False).

    With g = grad + weight_decay * p (L2 penalty, not AdamW's decoupled decay) and step t:
    m = m + (1 - beta1) * (g - m); v = beta2 * v + (1 - beta2) * g * g;
    p -= (lr / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr = _check_hyper(lr, "lr")
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
        self.betas = (_check_hyper(beta1, "betas[0]", high=1.0),
                      _check_hyper(beta2, "betas[1]", high=1.0))
        self.eps = _check_hyper(eps, "eps")
        self.weight_decay = _check_hyper(weight_decay, "weight_decay")
        self.t = 0
        self._m = [np.zeros_like(p) for p, _ in self.pairs]
        self._v = [np.zeros_like(p) for p, _ in self.pairs]

    def step(self):
        self.t += 1
        super().step()

    def _update(self, i, p, grad):
        t = p.dtype.type
        beta1, beta2 = self.betas
        m, v = self._m[i], self._v[i]
        m += t(1.0 - beta1) * (grad - m)
        v *= t(beta2)
        v += t(1.0 - beta2) * grad * grad
        step_size = self.lr / (1.0 - beta1 ** self.t)
        denom = np.sqrt(v) / t(math.sqrt(1.0 - beta2 ** self.t))
        denom += t(self.eps)
        p -= t(step_size) * (m / denom)
