"""Loss functions: ``loss(pred, target)`` returns a Python float, ``loss.backward()`` the
gradient with respect to ``pred`` (same shape and dtype) of that last call.

Rules follow torch.nn with the default ``reduction="mean"``; ``reduction="sum"`` drops the
division.
"""
import numpy as np

from ._validation import as_float_array, check_choice

__all__ = ["CrossEntropyLoss", "MSELoss"]


class _Loss:
    def __init__(self, reduction="mean"):
        self.reduction = check_choice(reduction, "reduction", ("mean", "sum"))
        self._saved = None

    def backward(self):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before the loss")
        return self._backward()

    def __repr__(self):
        shown = "" if self.reduction == "mean" else f"reduction={self.reduction!r}"
        return f"{type(self).__name__}({shown})"


class CrossEntropyLoss(_Loss):
    """Cross-entropy of integer class labels given *logits* (torch.nn.CrossEntropyLoss).

    ``pred`` is (N, C) or (N, C, d1, ...) with the classes on axis 1; ``target`` holds
    integer labels in [0, C), shaped (N,) or (N, d1, ...). With z the logits of one
    sample, log p = z - max(z) - log(sum(exp(z - max(z)))) (the stable log-softmax) and

        loss = mean over samples (and positions) of -log p[target]

    whose gradient is (softmax(z) - onehot(target)) / count.

    Fused with a final Softmax: when a model's last layer is ``Softmax`` over the class
    axis, ``Sequential.fit`` and ``Sequential.evaluate`` feed this loss that Softmax's
    *input* (the logits) and skip the Softmax's backward. That is the same loss, with a
    stable gradient, as cross-entropy on the probabilities. Calling the loss yourself on
    probabilities would treat them as logits: pass logits.
    """

    def __call__(self, pred, target):
        z, _ = as_float_array(pred, "pred")
        if z.ndim < 2:
            raise ValueError(f"pred must have shape (N, C) or (N, C, d1, ...), got {z.shape}")
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class labels, got dtype {t.dtype}")
        expected = (z.shape[0],) + z.shape[2:]
        if t.shape != expected:
            raise ValueError(f"target must have shape {expected} for pred of shape {z.shape}, "
                             f"got {t.shape}")
        n_classes = z.shape[1]
        if t.size and (t.min() < 0 or t.max() >= n_classes):
            raise ValueError(f"target labels must lie in [0, {n_classes}), got values in "
                             f"[{t.min()}, {t.max()}]")
        shifted = z - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        picked = np.take_along_axis(log_p, t[:, np.newaxis].astype(np.intp), axis=1)
        count = max(t.size, 1) if self.reduction == "mean" else 1
        self._saved = (log_p, t, count)
        return float(-picked.sum(dtype=np.float64) / count)

    def _backward(self):
        log_p, t, count = self._saved
        grad = np.exp(log_p)
        idx = t[:, np.newaxis].astype(np.intp)
        np.put_along_axis(grad, idx, np.take_along_axis(grad, idx, axis=1) - 1, axis=1)
        grad /= count
        return grad


class MSELoss(_Loss):
    """Mean squared error (torch.nn.MSELoss): mean((pred - target)**2) over every element.

    ``pred`` and ``target`` must have the same shape (no broadcasting). The gradient is
    2 * (pred - target) / pred.size.
    """

    def __call__(self, pred, target):
        p, _ = as_float_array(pred, "pred")
        t, _ = as_float_array(target, "target")
        if t.shape != p.shape:
            raise ValueError(f"target must have the shape of pred {p.shape}, got {t.shape}")
        diff = p - t.astype(p.dtype, copy=False)
        count = max(p.size, 1) if self.reduction == "mean" else 1
        self._saved = (diff, count)
        return float(np.square(diff).sum(dtype=np.float64) / count)

    def _backward(self):
        diff, count = self._saved
        return diff * diff.dtype.type(2.0 / count)
