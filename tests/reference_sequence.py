"""Slow, obviously-correct NumPy reference for masked sequence pooling, one row and one
channel at a time, following the rules written in cpool._sequence."""
import numpy as np

from tests.reference_roi import torch_max_rule


def valid_steps(lengths, mask, n_rows, n_steps):
    """(N, L) bool: which steps count."""
    if mask is not None:
        return np.asarray(mask).astype(bool)
    if lengths is not None:
        return np.arange(n_steps)[None, :] < np.asarray(lengths)[:, None]
    return np.ones((n_rows, n_steps), dtype=bool)


def _nlc(x, layout):
    return x if layout == "NLC" else np.swapaxes(x, 1, 2)


def sequence_pool(x, lengths=None, mask=None, mode="mean", layout="NLC"):
    """(out (N, C), chosen step (N, C) for max/first/last, -1 for an empty row)."""
    xs = _nlc(np.asarray(x), layout)
    N, L, C = xs.shape
    valid = valid_steps(lengths, mask, N, L)
    out = np.zeros((N, C), dtype=np.float64)
    chosen = np.full((N, C), -1, dtype=np.int64)
    for n in range(N):
        steps = [l for l in range(L) if valid[n, l]]
        if not steps:
            continue
        for c in range(C):
            values = [float(xs[n, l, c]) for l in steps]
            if mode == "sum":
                out[n, c] = sum(values)
            elif mode == "mean":
                out[n, c] = sum(values) / len(values)
            else:
                i = {"first": 0, "last": len(steps) - 1}.get(mode)
                if i is None:
                    i, _ = torch_max_rule(values)
                out[n, c] = values[i]
                chosen[n, c] = steps[i]
    return out.astype(xs.dtype), chosen


def sequence_pool_grad(grad_output, x, lengths=None, mask=None, mode="mean", layout="NLC"):
    xs = _nlc(np.asarray(x), layout)
    N, L, C = xs.shape
    valid = valid_steps(lengths, mask, N, L)
    grad = np.zeros((N, L, C), dtype=np.float64)
    _, chosen = sequence_pool(x, lengths, mask, mode, layout)
    for n in range(N):
        count = int(valid[n].sum())
        for c in range(C):
            g = float(grad_output[n, c])
            if mode in ("sum", "mean"):
                for l in range(L):
                    if valid[n, l]:
                        grad[n, l, c] = g if mode == "sum" else g / count
            elif chosen[n, c] >= 0:
                grad[n, chosen[n, c], c] = g
    grad = grad if layout == "NLC" else np.swapaxes(grad, 1, 2)
    return np.ascontiguousarray(grad).astype(grad_output.dtype)
