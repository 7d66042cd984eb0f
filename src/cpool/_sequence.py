"""Masked sequence pooling for variable-length batches (NLP, speech), forward and backward.

Rules
-----
* ``x`` is (N, L, C) for ``layout="NLC"`` (batch, steps, channels: transformer hidden
  states, Keras) or (N, C, L) for ``layout="NCL"`` (PyTorch Conv1d). The output is (N, C).
* Which steps are valid:

  - ``lengths``: (N,) ints in [0, L]; steps 0 .. lengths[n] - 1 of row n are valid
    (padding at the end).
  - ``mask``: (N, L), True (or 1) for a valid step. It may have holes and padding
    anywhere. Booleans, or integers holding only 0 and 1 (an attention_mask).
  - Give at most one of them. With neither, every step is valid.

* Padded steps never count, whatever they hold (a NaN or inf there does not leak).
* Modes, over the valid steps of each row:

  - "sum": their sum.
  - "mean": their sum divided by their number.
  - "max": their max. Ties go to the first maximum, and the first NaN wins, as in
    ``torch.max(x.masked_fill(~mask, -inf), dim)``.
  - "first" / "last": the value at the first / last valid step.

* A row with no valid step gives 0 in every mode and passes no gradient. (PyTorch's
  ``(x * mask).sum(1) / lengths`` gives NaN there, and a masked max gives -inf.)
* Backward (the gradient with respect to x): "sum" puts grad on every valid step,
  "mean" puts grad / count there, "max" puts grad on each channel's winning step (a
  compact int32 argmax the layer keeps), and "first"/"last" on that step. Every other
  element is 0.
"""
from dataclasses import dataclass

import numpy as np

from ._float16 import in_float32_chunks
from ._kernels import sequence as _seq
from ._threads import threads_for
from ._validation import as_float_array, as_int, check_choice, int_array

__all__ = ["sequence_pool", "sequence_pool_backward"]

MODES = ("mean", "max", "sum", "first", "last")
LAYOUTS = ("NLC", "NCL")


@dataclass
class Steps:
    """Row n's valid steps: l in [start[n], stop[n]) with mask[n, l] != 0 when use_mask.
    count[n] is their number."""
    mask: np.ndarray
    use_mask: bool
    start: np.ndarray
    stop: np.ndarray
    count: np.ndarray

    def one_step(self, mode):
        """The range holding only the first or last valid step (empty for an empty row)."""
        has = self.count > 0
        at = self.start if mode == "first" else self.stop - 1
        start = np.where(has, at, 0).astype(np.intp)
        stop = np.where(has, at + 1, 0).astype(np.intp)
        return Steps(_no_mask(len(start)), False, start, stop, self.count)


def _no_mask(n):
    return np.empty((n, 0), dtype=np.uint8)


def sequence_options(mode, layout):
    return check_choice(mode, "mode", MODES), check_choice(layout, "layout", LAYOUTS)


def sequence_input(x):
    """(x as a C-contiguous float array of 3 dims, dtype to hand back)."""
    arr, dtype = as_float_array(x, "x")
    if arr.ndim != 3:
        raise ValueError(f"x must have 3 dims, (N, L, C) for layout 'NLC' or (N, C, L) for "
                         f"'NCL'; got shape {arr.shape}")
    return arr, dtype


def dims(shape, layout):
    """(N, L, C) of an input shape in `layout`."""
    n, a, b = shape
    return (n, a, b) if layout == "NLC" else (n, b, a)


def steps_of(lengths, mask, n_rows, n_steps):
    """Validate lengths / mask for a batch of n_rows sequences of n_steps."""
    if n_steps >= 2 ** 31:
        raise ValueError(f"sequences must be shorter than 2**31 steps, got {n_steps}")
    if lengths is not None and mask is not None:
        raise ValueError("give lengths or mask, not both")
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            if m.dtype.kind not in "iu":
                raise TypeError(f"mask must be boolean (True = valid step) or integer 0/1, "
                                f"got dtype {m.dtype}")
            if m.size and ((m != 0) & (m != 1)).any():
                raise ValueError("an integer mask must hold only 0 and 1")
        if m.shape != (n_rows, n_steps):
            raise ValueError(f"mask must have shape (N, L) = ({n_rows}, {n_steps}) to fit x, "
                             f"got {m.shape}")
        m = np.ascontiguousarray(m != 0).view(np.uint8)
        if n_steps == 0:  # argmax refuses an empty axis; no step is valid
            m = np.zeros((n_rows, 1), dtype=np.uint8)
        has = m.any(axis=1)
        start = np.where(has, m.argmax(axis=1), 0).astype(np.intp)
        stop = np.where(has, n_steps - m[:, ::-1].argmax(axis=1), 0).astype(np.intp)
        count = m.sum(axis=1, dtype=np.int64)
        # a mask without holes is a plain range of steps: skip the per-step test
        holes = bool((count != stop - start).any())
        return Steps(m if holes else _no_mask(n_rows), holes, start, stop, count)
    if lengths is not None:
        ln = int_array(lengths, "lengths")
        if ln.shape != (n_rows,):
            raise ValueError(f"lengths must have shape (N,) = ({n_rows},), got {ln.shape}")
        if ln.size and (ln.min() < 0 or ln.max() > n_steps):
            bad = ln[(ln < 0) | (ln > n_steps)][0]
            raise ValueError(f"lengths must lie in [0, L] = [0, {n_steps}], got {bad}")
        return Steps(_no_mask(n_rows), False, np.zeros(n_rows, np.intp), ln.astype(np.intp), ln)
    full = np.full(n_rows, n_steps, dtype=np.intp)
    return Steps(_no_mask(n_rows), False, np.zeros(n_rows, np.intp), full,
                 full.astype(np.int64))


def _channel_block(n, c, threads):
    """Channels per NLC work item: whole rows stream best; split them only so that a
    small batch still has about four items per thread (never below 64 channels)."""
    parts = min(-(-4 * threads // max(n, 1)), max(c // 64, 1))
    return max(-(-c // parts), 1)


def sequence_forward_core(x, steps, mode, layout, want_arg=False):
    """(out (N, C), arg (N, C) int32 or None); arg only for mode "max" with want_arg."""
    nlc = layout == "NLC"
    n, _, c = dims(x.shape, layout)
    out = np.empty((n, c), dtype=x.dtype)
    threads = threads_for(x, out)
    block = _channel_block(n, c, threads)
    if mode == "max":
        arg = np.empty((n, c) if want_arg else (n, 0), dtype=np.intc)
        _seq.sequence_max(x, out, arg, steps.mask, steps.start, steps.stop, steps.use_mask,
                          nlc, want_arg, block, threads)
        return out, (arg if want_arg else None)
    if mode in ("first", "last"):
        steps = steps.one_step(mode)
    divisor = (np.maximum(steps.count, 1).astype(np.float64) if mode == "mean"
               else np.ones(n, dtype=np.float64))
    _seq.sequence_sum(x, out, steps.mask, steps.start, steps.stop, divisor, steps.use_mask,
                      nlc, block, threads)
    return out, None


def sequence_backward_core(g, steps, mode, layout, input_shape, arg=None):
    nlc = layout == "NLC"
    grad = np.empty(input_shape, dtype=g.dtype)
    threads = threads_for(g, grad)
    if mode == "max":
        _seq.sequence_max_backward(g, arg, grad, nlc, threads)
        return grad
    if mode == "mean":
        g = np.ascontiguousarray(g / np.maximum(steps.count, 1).astype(g.dtype)[:, None])
    elif mode in ("first", "last"):
        steps = steps.one_step(mode)
    _seq.sequence_spread_backward(g, grad, steps.mask, steps.start, steps.stop,
                                  steps.use_mask, nlc, threads)
    return grad


@in_float32_chunks(("x", "lengths", "mask"))
def sequence_pool(x, lengths=None, mask=None, mode="mean", layout="NLC"):
    """Pool each sequence of a padded batch over its valid steps only.

    Parameters
    ----------
    x : array_like, shape (N, L, C) for layout "NLC" or (N, C, L) for "NCL"
    lengths : array_like of ints, shape (N,), optional
        Valid prefix length of each row, in [0, L].
    mask : array_like, shape (N, L), optional
        True (or 1) for a valid step; may have holes. At most one of lengths and mask;
        with neither, every step is valid.
    mode : "mean", "max", "sum", "first" or "last"
    layout : "NLC" or "NCL"

    Returns
    -------
    out : ndarray, shape (N, C)

    Notes
    -----
    A row with no valid step gives 0. "max" follows torch.max: ties and NaN go to the
    first. The full rules are in cpool._sequence.
    """
    mode, layout = sequence_options(mode, layout)
    x, dtype = sequence_input(x)
    n, L, _ = dims(x.shape, layout)
    steps = steps_of(lengths, mask, n, L)
    out, _ = sequence_forward_core(x, steps, mode, layout)
    return out.astype(dtype, copy=False)


@in_float32_chunks(("grad_output", "lengths", "mask"), ("input_shape",))
def sequence_pool_backward(grad_output, input_shape, lengths=None, mask=None, mode="mean",
                           layout="NLC", x=None):
    """Gradient of sequence_pool with respect to x, for the same lengths/mask/mode/layout.

    input_shape is x's shape. mode="max" also needs the forward's input ``x`` (its
    argmax is recomputed); the other modes read only the shape. See cpool._sequence for
    where each mode puts the gradient.
    """
    mode, layout = sequence_options(mode, layout)
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise ValueError(f"input_shape must be x's shape, 3 ints, got {input_shape!r}")
    shape = tuple(as_int(s, "input_shape", 0) for s in input_shape)
    n, L, c = dims(shape, layout)
    steps = steps_of(lengths, mask, n, L)
    g, dtype = as_float_array(grad_output, "grad_output")
    if g.shape != (n, c):
        raise ValueError(f"grad_output must have shape (N, C) = {(n, c)} (the forward's "
                         f"output), got {g.shape}")
    arg = None
    if mode == "max":
        if x is None:
            raise ValueError("sequence_pool_backward with mode='max' needs x, the forward's input")
        x, _ = sequence_input(x)
        if x.shape != shape:
            raise ValueError(f"x must have input_shape {shape}, got {x.shape}")
        _, arg = sequence_forward_core(x.astype(g.dtype, copy=False), steps, mode, layout,
                                       want_arg=True)
    grad = sequence_backward_core(g, steps, mode, layout, shape, arg)
    return grad.astype(dtype, copy=False)
