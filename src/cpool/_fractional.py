"""Fractional max pooling (Graham, 2014), exactly as PyTorch's fractional_max_pool{2,3}d.

Each (n, c) plane pools kernel-sized windows whose starts advance by a pseudo-random
mix of floor(alpha) and ceil(alpha) steps. Per plane and dim, with input length L,
output length O, kernel k and a sample u in [0, 1) (ATen's generate_intervals):

    alpha    = T(L - k) / T(O - 1)                               (only when O > 1)
    start[i] = int(T(i + u) * alpha) - int(T(u * alpha))         for i < O - 1
    start[O-1] = L - k

computed in T, the dtype the pooling computes in (float32 for float32 and float16
input, float64 otherwise), with int() truncating. The samples are ``random_samples``
of shape (N, C, dims): for 2-D, ``[..., 0]`` drives W and ``[..., 1]`` drives H
(PyTorch's order); for 3-D, ``[..., 0]``, ``[..., 1]``, ``[..., 2]`` drive D, H, W.

Output size: ``output_size`` directly, or ``int(L * output_ratio)`` per dim with the
ratio in (0, 1); every size must be >= 1 and satisfy ``size + k - 1 <= L`` (every window
fits; PyTorch's 2-D check, while its 3-D check refuses the equality too).
Within a window the max follows PyTorch's rule (first maximum; NaN wins), and indices
are flat within each (n, c) input plane, as max_pool's.

``channels_last=True``: x, the output and the indices are (N, *spatial, C); the samples
stay (N, C, dims), so the same samples give the transposed channels-first result. The
kernel scans the union of the channels' windows of each output position, vectorized
over C (cpool._kernels.fractional); the backward scatters one sample at a time with C
contiguous (cpool._kernels.unpool.scatter_cl).
"""
import math

import numpy as np

from ._kernels import fractional as _fractional
from ._kernels import pool as _pool
from ._kernels import unpool as _unpool
from ._layout import join_shape, split_shape
from ._threads import threads_for
from ._validation import as_float_array, check_bool, finish_output, int_tuple, spatial_input

__all__ = [
    "fractional_max_pool2d", "fractional_max_pool3d",
    "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
]


def check_fraction_args(nd, kernel_size, output_size, output_ratio):
    """Validate the size arguments (no input needed) -> (kernel, output_size, output_ratio)
    as nd-tuples, exactly one of the last two not None."""
    kernel = int_tuple(kernel_size, nd, "kernel_size")
    if (output_size is None) == (output_ratio is None):
        raise ValueError("give exactly one of output_size and output_ratio, got "
                         f"output_size={output_size!r}, output_ratio={output_ratio!r}")
    if output_size is not None:
        return kernel, int_tuple(output_size, nd, "output_size"), None
    ratios = output_ratio if isinstance(output_ratio, (tuple, list, np.ndarray)) else \
        [output_ratio] * nd
    if len(ratios) != nd:
        raise ValueError(f"output_ratio must be a number or {nd} numbers in (0, 1), "
                         f"got {output_ratio!r}")
    checked = []
    for r in ratios:
        if isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, float, np.number)):
            raise TypeError(f"output_ratio must hold numbers in (0, 1), got {output_ratio!r}")
        if not 0 < float(r) < 1:
            raise ValueError(f"output_ratio must lie in (0, 1) in every dim, got {output_ratio!r}")
        checked.append(float(r))
    return kernel, None, tuple(checked)


def fraction_output_size(in_size, kernel, output_size, output_ratio):
    """The output's spatial size for input `in_size` (see the module docstring)."""
    if output_size is None:
        output_size = tuple(int(L * r) for L, r in zip(in_size, output_ratio))
        if min(output_size) < 1:
            raise ValueError(f"output_ratio={output_ratio} gives output size {output_size} "
                             f"for spatial input {tuple(in_size)}; sizes must be >= 1")
    for L, k, o in zip(in_size, kernel, output_size):
        if o + k - 1 > L:
            raise ValueError(f"output_size + kernel_size - 1 must be <= the input size in every "
                             f"dim; got output size {tuple(output_size)}, kernel_size "
                             f"{tuple(kernel)}, spatial input {tuple(in_size)}")
    return tuple(output_size)


def sample_columns(nd):
    """For each spatial axis, the column of random_samples that drives it."""
    return (1, 0) if nd == 2 else (0, 1, 2)


def random_samples_for(x, nd, random_samples, seed, batched, channels_last=False):
    """The (N, C, nd) samples in x's dtype: validated, or drawn from `seed`."""
    shape = split_shape(x.shape, channels_last)[:2] + (nd,)
    if random_samples is None:
        rng = np.random.default_rng(seed)
        return rng.random(shape, dtype=x.dtype)
    if seed is not None:
        raise ValueError("give random_samples or seed, not both")
    u, _ = as_float_array(random_samples, "random_samples")
    if not batched and u.shape == shape[1:]:
        u = u[np.newaxis]
    if u.shape != shape:
        allowed = f"{shape}" if batched else f"{shape} or {shape[1:]}"
        raise ValueError(f"random_samples must have shape (N, C, {nd}) = {allowed}, "
                         f"got {np.shape(random_samples)}")
    if not np.all((u >= 0) & (u < 1)):
        raise ValueError("random_samples must lie in [0, 1)")
    # Rounded to x's dtype, as PyTorch requires the samples in the input's dtype.
    u = u.astype(x.dtype)
    if not np.all(u < 1):
        raise ValueError(f"random_samples must lie in [0, 1) after rounding to {x.dtype}")
    return u


def interval_starts(samples, in_size, out_size, kernel):
    """Per spatial axis, the (planes, O) window starts from (planes, nd) samples."""
    nd = len(in_size)
    t = samples.dtype.type
    starts = []
    for L, o, k, col in zip(in_size, out_size, kernel, sample_columns(nd)):
        u = samples[:, col]
        seq = np.empty((samples.shape[0], o), dtype=np.intp)
        if o > 1:
            alpha = t(L - k) / t(o - 1)
            i = np.arange(o - 1).astype(samples.dtype)
            seq[:, :-1] = (((i[None, :] + u[:, None]) * alpha).astype(np.intp)
                           - (u * alpha).astype(np.intp)[:, None])
        seq[:, -1] = L - k
        starts.append(seq)
    return starts


def union_windows(starts, n, c, in_len, k):
    """Channels-last window starts of one axis: (planes, O) starts -> (base (N, O),
    off (N, O, C) int32, span) with start = base + off, 0 <= off <= span and
    base + span + k <= in_len, so the union window of span + k taps fits the input."""
    s = starts.reshape(n, c, -1)
    base = s.min(axis=1)
    span = int((s.max(axis=1) - base).max())
    base = np.minimum(base, in_len - k - span)
    off = np.ascontiguousarray((s - base[:, None, :]).transpose(0, 2, 1), dtype=np.intc)
    return np.ascontiguousarray(base), off, span


def fractional_forward(x, kernel, out_size, samples, want_indices, channels_last=False):
    """Validated batched x and (N, C, nd) samples -> (out, indices or None), both in x's
    layout."""
    nd = len(kernel)
    n, c, in_size = split_shape(x.shape, channels_last)
    out_shape = join_shape(n, c, out_size, channels_last)
    if 0 in out_shape:
        out = np.empty(out_shape, x.dtype)
        return out, (np.empty(out_shape, np.int64) if want_indices else None)
    # the window tables first, so that their temporaries are gone before the result exists
    starts = interval_starts(samples.reshape(n * c, nd), in_size, out_size, kernel)
    lift = 3 - nd
    if channels_last:
        unions = [(np.zeros((n, 1), np.intp), np.zeros((n, 1, c), np.intc), 0)] * lift
        unions += [union_windows(s, n, c, L, k) for s, L, k in zip(starts, in_size, kernel)]
        bases, offsets, spans = zip(*unions)
    out = np.empty(out_shape, dtype=x.dtype)
    indices = np.empty(out_shape, dtype=np.int64) if want_indices else None
    threads = threads_for(x, out, *([] if indices is None else [indices]))
    in3 = (1,) * lift + tuple(in_size)
    out3 = (1,) * lift + tuple(out_size)
    kernel3 = (1,) * lift + tuple(kernel)
    if channels_last:
        _fractional.fractional_max_forward_cl(
            x.reshape((n,) + in3 + (c,)), *bases, *offsets, out.reshape((n,) + out3 + (c,)),
            None if indices is None else indices.reshape((n,) + out3 + (c,)), kernel3, spans,
            threads)
        return out, indices
    starts = [np.zeros((n * c, 1), dtype=np.intp)] * lift + starts
    _fractional.fractional_max_forward(
        x.reshape((n * c,) + in3), starts[0], starts[1], starts[2],
        out.reshape((n * c,) + out3),
        None if indices is None else indices.reshape((n * c,) + out3),
        kernel3, threads)
    return out, indices


def fractional_backward(grad_out, indices, in_shape, channels_last=False):
    """grad_x[n, c].flat[indices] += grad_out, per (n, c) plane in index order
    (deterministic); batched arrays in either layout."""
    n, c, in_size = split_shape(in_shape, channels_last)
    per_plane = math.prod(split_shape(grad_out.shape, channels_last)[2])
    grad_x = np.zeros(in_shape, dtype=grad_out.dtype)
    threads = threads_for(grad_out, indices, grad_x)
    if channels_last:
        _unpool.scatter_cl(grad_out.reshape(n, per_plane, c), indices.reshape(n, per_plane, c),
                           grad_x.reshape(n, math.prod(in_size), c), True, threads)
    else:
        _pool.scatter_planes(grad_out.reshape(n * c, per_plane),
                             indices.reshape(n * c, per_plane),
                             grad_x.reshape(n * c, math.prod(in_size)), True, threads)
    return grad_x


def _fractional_max_pool(nd, x, kernel_size, output_size, output_ratio, return_indices,
                         random_samples, seed, channels_last):
    channels_last = check_bool(channels_last, "channels_last")
    kernel, output_size, output_ratio = check_fraction_args(nd, kernel_size, output_size,
                                                            output_ratio)
    x, batched, dtype = spatial_input(x, nd)
    out_size = fraction_output_size(split_shape(x.shape, channels_last)[2], kernel,
                                    output_size, output_ratio)
    samples = random_samples_for(x, nd, random_samples, seed, batched, channels_last)
    out, indices = fractional_forward(x, kernel, out_size, samples, bool(return_indices),
                                      channels_last)
    out = finish_output(out, batched, dtype)
    if return_indices:
        return out, finish_output(indices, batched, np.int64)
    return out


def _fractional_max_pool_backward(nd, grad_output, indices, input_shape, channels_last):
    # Indices are max_pool's (flat within each input plane): one backward serves both.
    from .functional import _max_pool_backward
    return _max_pool_backward(nd, grad_output, indices, input_shape, channels_last)


def fractional_max_pool2d(x, kernel_size, output_size=None, output_ratio=None,
                          return_indices=False, random_samples=None, seed=None,
                          channels_last=False):
    return _fractional_max_pool(2, x, kernel_size, output_size, output_ratio, return_indices,
                                random_samples, seed, channels_last)


def fractional_max_pool3d(x, kernel_size, output_size=None, output_ratio=None,
                          return_indices=False, random_samples=None, seed=None,
                          channels_last=False):
    return _fractional_max_pool(3, x, kernel_size, output_size, output_ratio, return_indices,
                                random_samples, seed, channels_last)


def fractional_max_pool2d_backward(grad_output, indices, input_shape, channels_last=False):
    return _fractional_max_pool_backward(2, grad_output, indices, input_shape,
                                         channels_last)


def fractional_max_pool3d_backward(grad_output, indices, input_shape, channels_last=False):
    return _fractional_max_pool_backward(3, grad_output, indices, input_shape,
                                         channels_last)


_DOC = """{nd}-D fractional max pooling, as torch.nn.functional.fractional_max_pool{nd}d.

    Parameters
    ----------
    x : array_like, shape (N, C, {dims}) or (C, {dims})
    kernel_size : int or tuple of {nd} ints
    output_size : int or tuple of {nd} ints, or None
    output_ratio : float or tuple of {nd} floats in (0, 1), or None
        Exactly one of output_size and output_ratio; the ratio gives int(L * ratio).
    return_indices : bool
        Also return int64 indices, flat within each (n, c) input plane.
    random_samples : array_like, shape (N, C, {nd}), values in [0, 1), or None
        PyTorch's ``_random_samples``: with the same samples the windows are exactly
        PyTorch's. {order}
    seed : None, int or numpy.random.Generator
        Where to draw the samples from when random_samples is None
        (``np.random.default_rng(seed).random((N, C, {nd}))`` in x's compute dtype), so
        a fixed seed is reproducible.
    channels_last : bool
        False: x is (N, C, {dims}) as in PyTorch. True: x is (N, {dims}, C) as in Keras/TF,
        and the output and indices use the same layout (indices still flat within each
        (n, c) plane); random_samples stays (N, C, {nd}), so the same samples give the
        transposed channels-first result.

    Returns
    -------
    out : ndarray, and indices when return_indices is True.

    Notes
    -----
    Window starts per plane and dim (ATen's generate_intervals, in the compute dtype T):
    alpha = T(L-k)/T(O-1); start[i] = int(T(i+u)*alpha) - int(u*alpha) for i < O-1;
    start[O-1] = L-k. The gradient is fractional_max_pool{nd}d_backward (from indices).
    """

_BACKWARD_DOC = """Gradient of fractional_max_pool{nd}d from its indices (flat within each
    input plane): grad_input[n, c].flat[indices] += grad_output, summed in index order.
    Same as max_pool{nd}d_backward, channels_last included (grad_output, indices and
    input_shape in the forward's layout)."""

_ORDER = {2: "random_samples[..., 0] drives W and [..., 1] drives H (PyTorch's order).",
          3: "random_samples[..., 0], [..., 1], [..., 2] drive D, H, W."}
_DIMS = {2: "H, W", 3: "D, H, W"}

for _nd in (2, 3):
    globals()[f"fractional_max_pool{_nd}d"].__doc__ = _DOC.format(
        nd=_nd, dims=_DIMS[_nd], order=_ORDER[_nd])
    globals()[f"fractional_max_pool{_nd}d_backward"].__doc__ = _BACKWARD_DOC.format(nd=_nd)
del _nd
