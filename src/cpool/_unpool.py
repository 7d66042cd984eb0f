"""Max unpooling (PyTorch's max_unpool{1,2,3}d): the partial inverse of max pooling.

The rules, for input x of spatial size L per dim (and the same rules for the layers):

* ``indices`` has the shape of x, holds integers, and each is a flat position within
  the (n, c) plane of the *output* (PyTorch's format; max_pool*(return_indices=True)
  produces it).
* The default output size per dim is ``(L - 1)*stride - 2*padding + kernel_size``.
  ``output_size`` (the nd spatial sizes, or the whole output shape) may replace it
  when ``default - stride < size < default + stride`` per dim (PyTorch's check).
* ``out[n, c].flat[indices[n, c]] = x[n, c]`` over zeros, in index order, so of two
  equal indices the later one wins (deterministic, as PyTorch's CPU kernel).
* Backward is the matching gather: ``grad_x[n, c] = grad_out[n, c].flat[indices[n, c]]``.
* ``channels_last=True``: x, indices and the output are (N, *spatial, C) (Keras/TF), the
  indices still flat within each (n, c) plane, as max_pool*(..., channels_last=True,
  return_indices=True) returns them. The kernels scatter (gather) one sample at a time
  with C contiguous (cpool._kernels.unpool); results equal the channels-first call's,
  transposed.

ONNX MaxUnpool's indices are flat over the whole tensor (subtract
``plane * prod(output spatial)``). With an explicit ``output_shape`` the runtimes
disagree: ONNX's reference implementation and backend test read the indices in the
*default* unpooled shape and place each element at the same coordinates of the larger
output, while onnxruntime reads them flat over the given output shape (PyTorch's rule).
"""
import math

import numpy as np

from ._kernels import pool as _pool
from ._kernels import unpool as _unpool
from ._layout import join_shape, split_shape
from ._threads import threads_for
from ._validation import (as_float_array, as_int, check_bool, finish_output, int_tuple,
                          spatial_input)

__all__ = [
    "max_unpool1d", "max_unpool2d", "max_unpool3d",
    "max_unpool1d_backward", "max_unpool2d_backward", "max_unpool3d_backward",
]


def unpool_window(nd, kernel_size, stride, padding):
    """(kernel, stride, padding) as nd-tuples; stride defaults to kernel_size."""
    kernel = int_tuple(kernel_size, nd, "kernel_size")
    stride = kernel if stride is None else int_tuple(stride, nd, "stride")
    padding = int_tuple(padding, nd, "padding", minimum=0)
    return kernel, stride, padding


def unpool_output_size(in_size, kernel, stride, padding, output_size=None, batched=True,
                       channels_last=False):
    """The output's spatial size (see the module docstring). A whole output shape has
    nd + 2 entries, or nd + 1 for unbatched input, in the layout of channels_last."""
    nd = len(in_size)
    default = tuple((L - 1) * s - 2 * p + k
                    for L, k, s, p in zip(in_size, kernel, stride, padding))
    if output_size is None:
        if min(default) <= 0:
            raise ValueError(f"the unpooled size (L-1)*stride - 2*padding + kernel_size would be "
                             f"{default} (<= 0) for spatial input {tuple(in_size)}; check "
                             f"padding or give output_size")
        return default
    if not isinstance(output_size, (tuple, list, np.ndarray)):
        output_size = (output_size,) if nd == 1 else None
    lengths = (nd, nd + 2) if batched else (nd, nd + 1, nd + 2)
    if output_size is None or len(output_size) not in lengths:
        raise ValueError(f"output_size must be {nd} spatial sizes or the whole output shape "
                         f"({' or '.join(map(str, lengths[1:]))} ints), got {output_size!r}")
    spatial = list(output_size)
    if len(spatial) > nd and channels_last:  # a whole (N, *out, C) or (*out, C) shape
        spatial = spatial[:-1]
    size = tuple(as_int(v, "output_size") for v in spatial[-nd:])
    for d, (o, dflt, s) in enumerate(zip(size, default, stride)):
        if o <= 0 or not dflt - s < o < dflt + s:
            raise ValueError(
                f"output_size must lie strictly between default - stride and default + stride "
                f"(and be > 0) in every dim; dim {d}: got {o}, default {dflt}, stride {s}, "
                f"allowed ({max(dflt - s, 0)}, {dflt + s})")
    return size


def check_indices(indices, shape, plane_size, name="indices"):
    """Integer indices of `shape` in [0, plane_size) -> C-contiguous int64 of `shape`."""
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int64 like max_pool's), "
                        f"got dtype {idx.dtype}")
    if idx.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (that of x), got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= plane_size):
        raise ValueError(f"{name} must lie in [0, {plane_size}) (flat within each output "
                         f"plane); got range [{idx.min()}, {idx.max()}]")
    return np.ascontiguousarray(idx, dtype=np.int64)


def unpool_forward(x, idx, out_spatial, channels_last=False):
    """Validated batched x and int64 indices of as many elements -> the unpooled array,
    (N, C, *out_spatial) or (N, *out_spatial, C)."""
    n, c, in_spatial = split_shape(x.shape, channels_last)
    out = np.zeros(join_shape(n, c, out_spatial, channels_last), dtype=x.dtype)
    m, size = math.prod(in_spatial), math.prod(out_spatial)
    threads = threads_for(x, idx, out)
    if channels_last:
        _unpool.scatter_cl(x.reshape(n, m, c), idx.reshape(n, m, c), out.reshape(n, size, c),
                           False, threads)
    else:
        _pool.scatter_planes(x.reshape(n * c, m), idx.reshape(n * c, m),
                             out.reshape(n * c, size), False, threads)
    return out


def unpool_backward(grad_out, idx, in_shape, channels_last=False):
    """Validated batched grad_out (the forward's output) and int64 indices -> the
    gradient, of batched shape `in_shape`."""
    n, c, in_spatial = split_shape(in_shape, channels_last)
    m, size = math.prod(in_spatial), math.prod(split_shape(grad_out.shape, channels_last)[2])
    grad_x = np.empty(in_shape, dtype=grad_out.dtype)
    threads = threads_for(grad_out, idx, grad_x)
    if channels_last:
        _unpool.gather_cl(grad_out.reshape(n, size, c), idx.reshape(n, m, c),
                          grad_x.reshape(n, m, c), threads)
    else:
        _unpool.gather_planes(grad_out.reshape(n * c, size), idx.reshape(n * c, m),
                              grad_x.reshape(n * c, m), threads)
    return grad_x


def _max_unpool(nd, x, indices, kernel_size, stride, padding, output_size, channels_last):
    channels_last = check_bool(channels_last, "channels_last")
    x_shape = np.shape(x)
    x, batched, dtype = spatial_input(x, nd, integers=True)
    kernel, stride, padding = unpool_window(nd, kernel_size, stride, padding)
    _, _, in_spatial = split_shape(x.shape, channels_last)
    out_spatial = unpool_output_size(in_spatial, kernel, stride, padding, output_size, batched,
                                     channels_last)
    idx = check_indices(indices, x_shape, math.prod(out_spatial))
    return finish_output(unpool_forward(x, idx, out_spatial, channels_last), batched, dtype)


def _max_unpool_backward(nd, grad_output, indices, channels_last):
    channels_last = check_bool(channels_last, "channels_last")
    idx_shape = np.shape(indices)
    if len(idx_shape) not in (nd + 1, nd + 2):
        raise ValueError(f"indices must have {nd + 1} or {nd + 2} dims (those of the forward's "
                         f"x), got shape {idx_shape}")
    batched = len(idx_shape) == nd + 2
    in_shape = idx_shape if batched else (1,) + idx_shape
    g, dtype = as_float_array(grad_output, "grad_output")
    g = g if batched else g[np.newaxis]
    n, c, _ = split_shape(in_shape, channels_last)
    if g.ndim != nd + 2 or split_shape(g.shape, channels_last)[:2] != (n, c):
        layout = "(N, *out, C)" if channels_last else "(N, C, *out)"
        raise ValueError(f"grad_output must have the forward's output shape {layout} with "
                         f"(N, C) = {(n, c)} as indices (N = 1 when unbatched), got "
                         f"{np.shape(grad_output)}")
    out_spatial = split_shape(g.shape, channels_last)[2]
    idx = check_indices(indices, idx_shape, math.prod(out_spatial))
    grad_x = unpool_backward(g, idx, in_shape, channels_last)
    return finish_output(grad_x, batched, dtype)


def max_unpool1d(x, indices, kernel_size, stride=None, padding=0, output_size=None,
                 channels_last=False):
    return _max_unpool(1, x, indices, kernel_size, stride, padding, output_size,
                       channels_last)


def max_unpool2d(x, indices, kernel_size, stride=None, padding=0, output_size=None,
                 channels_last=False):
    return _max_unpool(2, x, indices, kernel_size, stride, padding, output_size,
                       channels_last)


def max_unpool3d(x, indices, kernel_size, stride=None, padding=0, output_size=None,
                 channels_last=False):
    return _max_unpool(3, x, indices, kernel_size, stride, padding, output_size,
                       channels_last)


def max_unpool1d_backward(grad_output, indices, channels_last=False):
    return _max_unpool_backward(1, grad_output, indices, channels_last)


def max_unpool2d_backward(grad_output, indices, channels_last=False):
    return _max_unpool_backward(2, grad_output, indices, channels_last)


def max_unpool3d_backward(grad_output, indices, channels_last=False):
    return _max_unpool_backward(3, grad_output, indices, channels_last)


_FORWARD_DOC = """{nd}-D max unpooling, as torch.nn.functional.max_unpool{nd}d.

    Parameters
    ----------
    x : array_like, shape (N, C, {dims}) or (C, {dims})
    indices : integer array_like, shape of x
        Flat positions within each (n, c) output plane, as max_pool{nd}d(...,
        return_indices=True) returns them.
    kernel_size, stride, padding : int or tuple of {nd} ints
        Those of the max pooling being inverted; stride defaults to kernel_size.
    output_size : None, {nd} ints, or the whole output shape
        Default per dim: (L - 1)*stride - 2*padding + kernel_size. A given size must lie
        strictly between default - stride and default + stride.
    channels_last : bool
        False: x and indices are (N, C, {dims}) as in PyTorch and ONNX. True: they are
        (N, {dims}, C) as in Keras/TF (indices still flat within each (n, c) plane, as
        max_pool{nd}d(..., channels_last=True, return_indices=True) returns them), and
        the output is (N, *output_size, C).

    Returns
    -------
    out : ndarray, shape (N, C, *output_size): zeros, with
        out[n, c].flat[indices[n, c]] = x[n, c] (of equal indices the later one wins).
        Integer input (uint8 ... int64, uint16, uint32) keeps its dtype, as in max_pool{nd}d.

    Notes
    -----
    ONNX MaxUnpool's indices are flat over the whole tensor, and with an explicit
    output_shape ONNX's reference reads them in the default unpooled shape while
    onnxruntime reads them in the given shape (see cpool._unpool).
    """

_BACKWARD_DOC = """Gradient of max_unpool{nd}d (PyTorch's, a gather):
    grad_x[n, c] = grad_output[n, c].flat[indices[n, c]].

    grad_output has the forward's output shape and indices the forward's input shape,
    both in the layout of channels_last (as in max_unpool{nd}d).
    Of two equal indices only the later one's value survives the forward, yet both get
    the gradient at that position, as in PyTorch.
    """

_DIMS = {1: "L", 2: "H, W", 3: "D, H, W"}

for _nd in (1, 2, 3):
    globals()[f"max_unpool{_nd}d"].__doc__ = _FORWARD_DOC.format(nd=_nd, dims=_DIMS[_nd])
    globals()[f"max_unpool{_nd}d_backward"].__doc__ = _BACKWARD_DOC.format(nd=_nd)
del _nd
