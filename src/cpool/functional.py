"""cpool's validated front end: pooling functions on NumPy arrays.

Every function accepts any array-like of real numbers, batched (N, C, *spatial) or
unbatched (C, *spatial) -- with channels_last=True, (N, *spatial, C) or (*spatial, C) --
never modifies its input, and returns fresh C-contiguous arrays.
float32 and float64 are computed natively and kept; float16 is computed in float32 and
returned as float16, in batch chunks without a float32 copy of the whole input
(cpool._float16); integers are computed and returned in float64, except by max pooling,
which keeps them (exactly, see max_pool2d).

Arguments are checked before any kernel runs: a bad one raises ValueError or TypeError
naming it. Window rules (output size, ceil_mode, "same" padding, average divisors) are
stated in cpool._geometry and apply to every sliding-window function here.
"""
import numpy as np

from ._float16 import in_float32_chunks
from ._geometry import PoolGeometry, divisor_grid, unit_divisors
from ._kernels import pool as _pool
from ._kernels.pool import PoolOp
from ._kernels import channels_last as _cl
from ._kernels import unpool as _unpool_kernels
from ._layout import (average_divisor_plane, average_divisors, cover_tables, join_shape,
                      kernel_view, narrow_planes, overlaps_along_w, plane_rows, plane_view,
                      runs_2x2_rows, runs_channels_last, runs_plane_blocks, runs_same_planes,
                      runs_taps_plane_blocks, split_shape, tap_level, tap_offsets,
                      window_tables)
from ._padding import fold_gradient, kernel_geometry, pad_input, unpad_indices
from ._threads import threads_for
from ._validation import (as_float_array, as_int, check_bool, check_positive_float, finish_output,
                          spatial_input)

__all__ = [
    "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "lp_pool1d", "lp_pool2d", "lp_pool3d",
    "max_pool1d_backward", "max_pool2d_backward", "max_pool3d_backward",
    "avg_pool1d_backward", "avg_pool2d_backward", "avg_pool3d_backward",
    "lp_pool1d_backward", "lp_pool2d_backward", "lp_pool3d_backward",
]


# --------------------------------------------------------------------------------------
# Shared machinery of the sliding-window pools (used by the layers as well).
# --------------------------------------------------------------------------------------

def _planes(x, geom):
    """View (N, C, *spatial) as the row kernels' (planes, D, H, W)."""
    return x.reshape((x.shape[0] * x.shape[1],) + geom.as_3d()[0])


def _planes_out(out, geom):
    return out.reshape((out.shape[0] * out.shape[1],) + geom.as_3d()[1])


def _slices(x, geom, output=False):
    """View (N, C, *spatial) as its 2-D (H, W) slices: (N*C*D, H, W) of the input or output."""
    return x.reshape((-1,) + tuple((geom.out_size if output else geom.in_size)[-2:]))


def _same_planes(x):
    """View (N, C, H, W) as pool_forward_same's (planes, H, W)."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _divisor_plane(divisors, geom, dtype):
    """Every window's divisor as a C-contiguous (OH, OW) array of `dtype`, or None (weights
    not to divide); average_divisor_plane caches the forward's."""
    if divisors is None:
        return None
    return np.ascontiguousarray(divisor_grid(divisors, geom.out_size, False, dtype))


def _one_divisor(divisors):
    """The divisor of windows that all lie inside the input (one for all; 1 without)."""
    if divisors is None:
        return 1.0
    div_d, div_h, cols = divisors
    return float(div_d[0] * div_h[0] * cols[3])


def _lp_op(p):
    return {1.0: PoolOp.OP_LP1, 2.0: PoolOp.OP_LP2}.get(p, PoolOp.OP_LP)


# Arithmetic per byte against max pooling's, for threads_for: a root per window (p = 1, 2)
# or a pow per element (any other p).
_OP_COST = {PoolOp.OP_LP1: 3, PoolOp.OP_LP2: 3, PoolOp.OP_LP: 64}


def _check_divisor(divisor_override):
    if divisor_override is None:
        return None
    d = as_int(divisor_override, "divisor_override")
    if d == 0:
        raise ValueError("divisor_override must be a non-zero int or None, got 0")
    return d


def _out_like(x, geom, channels_last, dtype=None):
    n, c, _ = split_shape(x.shape, channels_last)
    return np.empty(join_shape(n, c, geom.out_size, channels_last),
                    dtype=x.dtype if dtype is None else dtype)


def pool_forward(x, geom, op, p=2.0, count_include_pad=True, divisor_override=None,
                 channels_last=False):
    """Run the forward kernel on validated, batched input of either layout.

    op is a PoolOp; only OP_MAX runs on integer input."""
    out = _out_like(x, geom, channels_last)
    if op == PoolOp.OP_AVG:
        divisors = average_divisors(geom, count_include_pad, divisor_override)
    else:  # read by neither max nor Lp
        divisors = unit_divisors(geom.as_3d()[1])
    threads = threads_for(x, out, cost=_OP_COST.get(op, 1))
    if (op <= PoolOp.OP_AVG and x.dtype.kind == "f"
            and runs_same_planes(geom, channels_last, op == PoolOp.OP_MAX, x.dtype)):
        plane = (average_divisor_plane(geom, count_include_pad, divisor_override, x.dtype)
                 if op == PoolOp.OP_AVG else None)
        _pool.pool_forward_same(_same_planes(x), _same_planes(out), geom.kernel, geom.dilation,
                                geom.pad_begin, op, plane, threads)
        return out
    if runs_plane_blocks(geom.in_size, channels_last):
        wins, _ = window_tables(geom)
        _cl.forward_planes(plane_view(x), [(plane_view(out), *wins, *divisors)], int(op), p,
                           threads, narrow_planes(geom.in_size))
        return out
    if runs_channels_last(x.dtype, channels_last):
        wins, _ = window_tables(geom)
        _cl.forward(kernel_view(x, channels_last), kernel_view(out, channels_last), *wins,
                    int(op), p, *divisors, overlaps_along_w(geom), threads)
        return out
    if op <= PoolOp.OP_AVG and runs_2x2_rows(geom, channels_last):
        _pool.pool_forward_2x2(_slices(x, geom), _slices(out, geom, True), op,
                               _one_divisor(divisors), threads)
        return out
    _, in_sz, kernel, stride, dilation, pad_begin = geom.as_3d()
    _pool.pool_forward(_planes(x, geom), _planes_out(out, geom), kernel, stride, dilation,
                       pad_begin, op, p, *divisors, threads)
    return out


def _tap_dtype(volume):
    """The compact argmax: uint8 for windows of up to 256 taps, else int32."""
    return np.uint8 if volume <= 256 else np.intc


def max_pool_forward_taps(x, geom, channels_last=False, tap_dtype=None):
    """Max pooling plus the compact within-window argmax (uint8, or int32 for windows of
    more than 256 taps) that max_pool_backward_taps reads, laid out as the output.
    tap_dtype=np.int64 writes the taps into an array that taps_to_indices can turn into
    indices in place."""
    out = _out_like(x, geom, channels_last)
    taps = np.empty(out.shape, dtype=tap_dtype or _tap_dtype(geom.window_volume))
    threads = threads_for(x, out, taps)
    if runs_taps_plane_blocks(geom, channels_last):
        _cl.max_forward_taps_planes(plane_view(x), plane_rows(taps), [tap_level(geom, out)],
                                    threads, narrow_planes(geom.in_size))
        return out, taps
    if taps.dtype == np.uint8 and runs_2x2_rows(geom, channels_last):
        _pool.pool_forward_2x2(_slices(x, geom), _slices(out, geom, True), PoolOp.OP_MAX, 1.0,
                               threads, _slices(taps, geom, True))
        return out, taps
    if runs_channels_last(x.dtype, channels_last):
        wins, pos = window_tables(geom)
        _cl.max_forward_taps(kernel_view(x, channels_last), kernel_view(out, channels_last),
                             kernel_view(taps, channels_last), *wins, pos[1].shape[1],
                             pos[2].shape[1], threads)
        return out, taps
    _, _, kernel, stride, dilation, pad_begin = geom.as_3d()
    _pool.max_pool_forward_taps(_planes(x, geom), _planes_out(out, geom), _planes_out(taps, geom),
                                kernel, stride, dilation, pad_begin,
                                threads)
    return out, taps


def taps_to_indices(taps, geom, channels_last=False, in_place=False):
    """PyTorch-style int64 indices (flat within each input plane) from window taps;
    in_place: `taps` is int64 and becomes the indices.

    Both kernel families number taps alike, (kd*KH + kh)*KW + kw, so either converts."""
    idx = taps if in_place else np.empty(taps.shape, dtype=np.int64)
    threads = threads_for(taps, idx)
    in_sz, _, kernel, stride, dilation, pad_begin = geom.as_3d()
    if channels_last:
        _, pos = window_tables(geom)
        _cl.taps_to_indices(kernel_view(taps, channels_last), kernel_view(idx, channels_last),
                            *pos, in_sz, threads)
        return idx
    _pool.taps_to_indices(_planes_out(taps, geom), _planes_out(idx, geom), in_sz, kernel,
                          stride, dilation, pad_begin, threads)
    return idx


def max_pool_backward_taps(grad_output, taps, geom, lead, channels_last=False):
    """Gradient of max pooling from the taps of max_pool_forward_taps: gather form, except
    on the plane blocks (each window's gradient added at its argmax, in raster order).
    lead is (N, C)."""
    grad_in = np.empty(join_shape(*lead, geom.in_size, channels_last), dtype=grad_output.dtype)
    threads = threads_for(grad_output, taps, grad_in)
    covers = cover_tables(geom)
    if runs_taps_plane_blocks(geom, channels_last):
        _cl.max_backward_taps_planes(plane_rows(grad_output), plane_rows(taps),
                                     plane_view(grad_in), [tap_offsets(geom)],
                                     threads)
        return grad_in
    if taps.dtype == np.uint8 and runs_2x2_rows(geom, channels_last):
        _pool.backward_2x2(_slices(grad_output, geom, True), _slices(grad_in, geom),
                           _slices(taps, geom, True), 1.0, threads)
        return grad_in
    if channels_last:
        _, pos = window_tables(geom)
        _cl.max_backward_taps(kernel_view(grad_output, True), kernel_view(taps, True),
                              kernel_view(grad_in, True), *covers, pos[1].shape[1],
                              pos[2].shape[1], threads)
        return grad_in
    _, _, kernel, stride, dilation, pad_begin = geom.as_3d()
    _pool.max_pool_backward_taps(_planes_out(grad_output, geom), _planes_out(taps, geom),
                                 _planes(grad_in, geom), covers[0], covers[1], kernel, stride,
                                 dilation, pad_begin, threads)
    return grad_in


def window_sum_backward(weight, geom, lead, channels_last=False, divisors=None):
    """Gather-form gradient of window sums: each input element gets the sum of `weight`
    over the windows covering it. lead is (N, C). divisors: (div_d, div_h, cols) as the
    forward reads them, by which each window's weight is divided first."""
    grad_in = np.empty(join_shape(*lead, geom.in_size, channels_last), dtype=weight.dtype)
    threads = threads_for(weight, grad_in)
    if runs_same_planes(geom, channels_last):  # divides in its planes
        _pool.window_sum_backward_same(_same_planes(weight), _same_planes(grad_in), geom.kernel,
                                       geom.dilation, geom.pad_begin,
                                       _divisor_plane(divisors, geom, weight.dtype),
                                       threads)
        return grad_in
    covers = cover_tables(geom)
    if runs_plane_blocks(geom.in_size, channels_last):  # divides in its blocks
        _cl.sum_backward_planes(plane_view(weight), plane_view(grad_in), *covers, divisors,
                                threads, narrow_planes(geom.in_size))
        return grad_in
    if runs_2x2_rows(geom, channels_last):
        _pool.backward_2x2(_slices(weight, geom, True), _slices(grad_in, geom), None,
                           _one_divisor(divisors), threads)
        return grad_in
    if channels_last:  # divides as it sums
        _cl.sum_backward(kernel_view(weight, True), kernel_view(grad_in, True), *covers,
                         threads, divisors)
        return grad_in
    if divisors is not None:
        weight = weight / divisor_grid(divisors, geom.out_size, channels_last, weight.dtype)
    _, _, kernel, stride, dilation, pad_begin = geom.as_3d()
    _pool.window_sum_backward(_planes_out(weight, geom), _planes(grad_in, geom), covers[0],
                              covers[1], kernel, stride, dilation, pad_begin,
                              threads)
    return grad_in


def avg_pool_backward_core(grad_output, geom, lead, count_include_pad, divisor_override,
                           channels_last=False):
    """Each window's gradient divided by its divisor once, then summed per input element."""
    return window_sum_backward(grad_output, geom, lead, channels_last,
                               average_divisors(geom, count_include_pad, divisor_override))


def lp_pool_backward_core(grad_output, x, y, p, geom, channels_last=False):
    """d/dx (sum |x|^p)^(1/p) = sign(x) |x|^(p-1) / y^(p-1); 0 where y == 0 or x == 0."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        weight = np.where(y > 0, grad_output * np.power(y, 1.0 - p, dtype=y.dtype), 0)
    weight = np.ascontiguousarray(weight, dtype=grad_output.dtype)
    n, c, _ = split_shape(x.shape, channels_last)
    grad_in = window_sum_backward(weight, geom, (n, c), channels_last)
    absx = np.abs(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale = np.sign(x) * (absx ** (p - 1.0) if p != 1.0 else 1.0)
    grad_in *= np.where(absx > 0, scale, 0).astype(x.dtype, copy=False)
    return grad_in


# --------------------------------------------------------------------------------------
# Public forward functions.
# --------------------------------------------------------------------------------------

def _window_input(nd, x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode,
                  channels_last, integers=False):
    """Validate a sliding-window pooling call -> (kernel input, its geometry, the user's
    geometry, batched, result dtype, channels_last)."""
    channels_last = check_bool(channels_last, "channels_last")
    x, batched, dtype = spatial_input(x, nd, integers=integers)
    _, _, spatial = split_shape(x.shape, channels_last)
    geom = PoolGeometry.create(spatial, kernel_size, stride, padding, dilation, ceil_mode)
    xk, kgeom = pad_input(x, geom, padding_mode, channels_last)
    return xk, kgeom, geom, batched, dtype, channels_last


def _max_pool(nd, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
              padding_mode, channels_last):
    return_indices = check_bool(return_indices, "return_indices")
    x, kgeom, geom, batched, dtype, cl = _window_input(
        nd, x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode, channels_last,
        integers=True)
    if not return_indices:
        return finish_output(pool_forward(x, kgeom, PoolOp.OP_MAX, channels_last=cl), batched,
                             dtype)
    out, taps = max_pool_forward_taps(x, kgeom, cl, tap_dtype=np.int64)
    indices = unpad_indices(taps_to_indices(taps, kgeom, cl, in_place=True), geom, padding_mode)
    return finish_output(out, batched, dtype), finish_output(indices, batched, np.int64)


def _avg_pool(nd, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, dilation, padding_mode, channels_last):
    count_include_pad = check_bool(count_include_pad, "count_include_pad")
    x, kgeom, _, batched, dtype, cl = _window_input(
        nd, x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode, channels_last)
    out = pool_forward(x, kgeom, PoolOp.OP_AVG, count_include_pad=bool(count_include_pad),
                       divisor_override=_check_divisor(divisor_override), channels_last=cl)
    return finish_output(out, batched, dtype)


def _lp_pool(nd, x, norm_type, kernel_size, stride, padding, dilation, ceil_mode,
             padding_mode, channels_last):
    p = check_positive_float(norm_type, "norm_type")
    x, kgeom, _, batched, dtype, cl = _window_input(
        nd, x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode, channels_last)
    out = pool_forward(x, kgeom, _lp_op(p), p=p, channels_last=cl)
    return finish_output(out, batched, dtype)


_MAX_DOC = """{nd}-D max pooling, as torch.nn.functional.max_pool{nd}d.

    Parameters
    ----------
    x : array_like, shape (N, C, {dims}) or (C, {dims})
    kernel_size, stride, dilation : int or tuple of {nd} ints
        stride defaults to kernel_size.
    padding : int, {nd} ints, {nd} (begin, end) pairs, "valid", "same" or "same_lower"
        With padding_mode="ignore", padding never wins: padded positions act as -inf.
        Explicit pads may be at most half the effective kernel dilation*(kernel_size-1)+1.
    ceil_mode : bool
        Round the output size up, but drop a last window that would start inside the
        right padding: ``if (out-1)*stride >= L + pad_begin: out -= 1`` (PyTorch, ONNX >= 19).
    return_indices : bool
        Also return int64 indices, flat within each (n, c) input plane (PyTorch's format).
        They refer to the unpadded input: with padding_mode "edge"/"reflect" a chosen pad
        reports the input element it copies; with "zeros" a chosen zero pad reports -1.
    padding_mode : "ignore", "zeros", "edge" or "reflect"
        What the pads hold (rules in cpool._padding): "ignore" (default) nothing, as
        above; "zeros" real zeros; "edge"/"reflect" as ``np.pad(x, pads, mode)``. Any
        mode but "ignore" equals max pooling that padded array with padding 0 over the
        same windows (same output shape).
    channels_last : bool
        False: x is (N, C, {dims}) as in PyTorch and ONNX. True: x is (N, {dims}, C) as in
        Keras/TF, and the output (and indices) use the same layout; the kernels then
        vectorize over C. Results equal those of the transposed channels-first call
        (sums may differ in the last bit: they add in another order).

    Returns
    -------
    out : ndarray, and indices when return_indices is True. Integer input (uint8, int8,
    int16, int32, int64, uint16, uint32) is pooled exactly and keeps its dtype, as ONNX
    MaxPool does for uint8/int8; a window with no input element then holds the dtype's
    minimum. uint64 and the other functions compute integers in float64.

    Notes
    -----
    A window that contains NaN yields NaN and the index of its last NaN in scan order
    (PyTorch's ``(v > m) || isnan(v)`` rule). Ties go to the first maximum in scan order.
    A window with no input element (possible only with dilation) yields -inf and index -1
    (PyTorch reports its first tap at or after 0 there, which lies outside the input);
    max_pool{nd}d_backward skips index -1.
    """

_AVG_DOC = """{nd}-D average pooling, as torch.nn.functional.avg_pool{nd}d.

    Parameters
    ----------
    x : array_like, shape (N, C, {dims}) or (C, {dims})
    kernel_size, stride, dilation : int or tuple of {nd} ints
        stride defaults to kernel_size. Dilation is ONNX's (opset 19); PyTorch has none.
    padding : int, {nd} ints, {nd} (begin, end) pairs, "valid", "same" or "same_lower"
    ceil_mode : bool
        As in max_pool{nd}d.
    count_include_pad : bool
        True (PyTorch's default): the divisor counts the window's taps inside the padded
        extent, x0 + j*d < L + pad_end, per dim, but not the ceil_mode overhang.
        False (ONNX's default): only taps inside the input count.
    divisor_override : int or None
        Divide every window sum by this instead.
    padding_mode : "ignore", "zeros", "edge" or "reflect"
        What the pads hold (rules in cpool._padding). "ignore" (default): as above.
        Otherwise pads are values (zeros, or as ``np.pad(x, pads, mode)``), the divisor
        counts every tap inside the padded extent whatever count_include_pad says, and
        the result equals average pooling that padded array with padding 0 over the
        same windows.
    channels_last : bool
        False: x is (N, C, {dims}) as in PyTorch and ONNX. True: x is (N, {dims}, C) as in
        Keras/TF, and the output (and indices) use the same layout; the kernels then
        vectorize over C. Results equal those of the transposed channels-first call
        (sums may differ in the last bit: they add in another order).
    """

_LP_DOC = """{nd}-D power-average (Lp) pooling: out = (sum over the window of |x|^p)^(1/p).

    This is ONNX LpPool's definition. torch.nn.functional.lp_pool{nd}d computes
    sign(S) * relu(|S|)^(1/p) with S the sum of x^p (no absolute value), so the two
    differ for negative inputs with odd p; for x >= 0 or even p they agree. With
    ceil_mode, PyTorch (avg_pool(x^p) * kernel volume) also scales a last window that
    runs past the input by (kernel volume / taps inside)^(1/p); cpool does not.

    Parameters
    ----------
    x : array_like, shape (N, C, {dims}) or (C, {dims})
    norm_type : float
        p, finite and > 0.
    kernel_size, stride, padding, dilation, ceil_mode
        As in max_pool{nd}d; padded positions contribute 0.
    padding_mode : "ignore", "zeros", "edge" or "reflect"
        What the pads hold (rules in cpool._padding): "ignore" and "zeros" give the same
        result (a pad adds |0|^p = 0); "edge"/"reflect" equal Lp pooling
        ``np.pad(x, pads, mode)`` with padding 0 over the same windows.
    channels_last : bool
        False: x is (N, C, {dims}) as in PyTorch and ONNX. True: x is (N, {dims}, C) as in
        Keras/TF, and the output (and indices) use the same layout; the kernels then
        vectorize over C. Results equal those of the transposed channels-first call
        (sums may differ in the last bit: they add in another order).
    """

_DIMS = {1: "L", 2: "H, W", 3: "D, H, W"}


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, padding_mode="ignore", channels_last=False):
    return _max_pool(1, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     padding_mode, channels_last)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, padding_mode="ignore", channels_last=False):
    return _max_pool(2, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     padding_mode, channels_last)


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, padding_mode="ignore", channels_last=False):
    return _max_pool(3, x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     padding_mode, channels_last)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, dilation=1, padding_mode="ignore", channels_last=False):
    return _avg_pool(1, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, padding_mode, channels_last)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, dilation=1, padding_mode="ignore", channels_last=False):
    return _avg_pool(2, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, padding_mode, channels_last)


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, dilation=1, padding_mode="ignore", channels_last=False):
    return _avg_pool(3, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, padding_mode, channels_last)


def lp_pool1d(x, norm_type, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              padding_mode="ignore", channels_last=False):
    return _lp_pool(1, x, norm_type, kernel_size, stride, padding, dilation, ceil_mode,
                    padding_mode, channels_last)


def lp_pool2d(x, norm_type, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              padding_mode="ignore", channels_last=False):
    return _lp_pool(2, x, norm_type, kernel_size, stride, padding, dilation, ceil_mode,
                    padding_mode, channels_last)


def lp_pool3d(x, norm_type, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
              padding_mode="ignore", channels_last=False):
    return _lp_pool(3, x, norm_type, kernel_size, stride, padding, dilation, ceil_mode,
                    padding_mode, channels_last)


# --------------------------------------------------------------------------------------
# Public backward functions.
# --------------------------------------------------------------------------------------

def _grad_output(grad_output, lead, geom, channels_last=False):
    """Validate grad_output against the forward's output shape."""
    g, _ = as_float_array(grad_output, "grad_output")
    expected = join_shape(*lead, geom.out_size, channels_last)
    if g.shape != expected:
        raise ValueError(f"grad_output must have shape {expected} (the forward's output), "
                         f"got {g.shape}")
    return g


def _input_shape(input_shape, nd, channels_last=False):
    """(N, C, *spatial) or (C, *spatial) (channels-last: (N, *spatial, C) or (*spatial, C))
    -> (lead (N, C), spatial, batched)."""
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) not in (nd + 1, nd + 2):
        raise ValueError(f"input_shape must be a tuple of {nd + 1} or {nd + 2} ints, "
                         f"got {input_shape!r}")
    shape = tuple(as_int(s, "input_shape", 0) for s in input_shape)
    batched = len(shape) == nd + 2
    if not batched:
        shape = (1,) + shape
    n, c, spatial = split_shape(shape, channels_last)
    return (n, c), spatial, batched


def _unbatched_grad(grad_output, batched):
    return grad_output if batched else np.asarray(grad_output)[np.newaxis]


def _max_pool_backward(nd, grad_output, indices, input_shape, channels_last=False):
    channels_last = check_bool(channels_last, "channels_last")
    lead, spatial, batched = _input_shape(input_shape, nd, channels_last)
    g, dtype = as_float_array(_unbatched_grad(grad_output, batched), "grad_output")
    idx = np.asarray(_unbatched_grad(indices, batched))
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be an integer array, got dtype {idx.dtype}")
    n, c, out_size = split_shape(g.shape, channels_last) if g.ndim == nd + 2 else (0, 0, ())
    if g.ndim != nd + 2 or (n, c) != lead or idx.shape != g.shape:
        layout = "(N, *out, C)" if channels_last else "(N, C, *out)"
        raise ValueError(f"grad_output and indices must both have shape {layout} with "
                         f"(N, C) = {lead}; got {np.shape(grad_output)} and "
                         f"{np.shape(indices)}")
    plane = int(np.prod(spatial))
    if idx.size and (idx.min() < -1 or idx.max() >= plane):
        raise ValueError(f"indices must lie in [0, {plane}) (flat within each input plane of "
                         f"spatial shape {spatial}) or be -1 (a zero pad of padding_mode="
                         f"'zeros'); got range [{idx.min()}, {idx.max()}]")
    zero_pad = idx < 0
    if zero_pad.any():  # a zero pad is no input element: its gradient goes nowhere
        g, idx = np.where(zero_pad, 0, g), np.where(zero_pad, 0, idx)
    idx = np.ascontiguousarray(idx, np.int64)
    per_plane = int(np.prod(out_size))  # explicit: reshape(0, -1) is ambiguous for N=0
    if channels_last:  # (N, M, C) -> (N, plane, C): one scatter per (sample, channel)
        grad_in = np.zeros((n, plane, c), dtype=g.dtype)
        _unpool_kernels.scatter_cl(np.ascontiguousarray(g).reshape(n, per_plane, c),
                                   idx.reshape(n, per_plane, c), grad_in, True,
                                   threads_for(g, idx, grad_in))
        return finish_output(grad_in.reshape((n,) + spatial + (c,)), batched, dtype)
    grad_in = np.zeros((n * c, plane), dtype=g.dtype)
    _pool.scatter_planes(np.ascontiguousarray(g).reshape(n * c, per_plane),
                         idx.reshape(n * c, per_plane), grad_in, True,
                         threads_for(g, idx, grad_in))
    return finish_output(grad_in.reshape(lead + spatial), batched, dtype)


def _avg_pool_backward(nd, grad_output, input_shape, kernel_size, stride, padding, ceil_mode,
                       count_include_pad, divisor_override, dilation, padding_mode,
                       channels_last=False):
    count_include_pad = check_bool(count_include_pad, "count_include_pad")
    cl = check_bool(channels_last, "channels_last")
    lead, spatial, batched = _input_shape(input_shape, nd, cl)
    geom = PoolGeometry.create(spatial, kernel_size, stride, padding, dilation, ceil_mode)
    g = _grad_output(_unbatched_grad(grad_output, batched), lead, geom, cl)
    _, dtype = as_float_array(np.empty(0, np.asarray(grad_output).dtype), "grad_output")
    kgeom = kernel_geometry(geom, padding_mode)
    grad_in = avg_pool_backward_core(g, kgeom, lead, bool(count_include_pad),
                                     _check_divisor(divisor_override), cl)
    return finish_output(fold_gradient(grad_in, geom, padding_mode, cl), batched, dtype)


def _lp_pool_backward(nd, grad_output, x, y, norm_type, kernel_size, stride, padding, dilation,
                      ceil_mode, padding_mode, channels_last=False):
    p = check_positive_float(norm_type, "norm_type")
    xk, kgeom, geom, batched, dtype, cl = _window_input(
        nd, x, kernel_size, stride, padding, dilation, ceil_mode, padding_mode, channels_last)
    n, c, _ = split_shape(xk.shape, cl)
    g = _grad_output(_unbatched_grad(grad_output, batched), (n, c), geom, cl)
    g = g.astype(xk.dtype, copy=False)
    y, _ = as_float_array(_unbatched_grad(y, batched), "y")
    if y.shape != g.shape:
        raise ValueError(f"y must have the forward's output shape {g.shape}, got {y.shape}")
    grad_in = lp_pool_backward_core(g, xk, y.astype(xk.dtype, copy=False), p, kgeom, cl)
    return finish_output(fold_gradient(grad_in, geom, padding_mode, cl), batched, dtype)


def max_pool1d_backward(grad_output, indices, input_shape, channels_last=False):
    return _max_pool_backward(1, grad_output, indices, input_shape, channels_last)


def max_pool2d_backward(grad_output, indices, input_shape, channels_last=False):
    return _max_pool_backward(2, grad_output, indices, input_shape, channels_last)


def max_pool3d_backward(grad_output, indices, input_shape, channels_last=False):
    return _max_pool_backward(3, grad_output, indices, input_shape, channels_last)


def avg_pool1d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None,
                        dilation=1, padding_mode="ignore", channels_last=False):
    return _avg_pool_backward(1, grad_output, input_shape, kernel_size, stride, padding,
                              ceil_mode, count_include_pad, divisor_override, dilation,
                              padding_mode, channels_last)


def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None,
                        dilation=1, padding_mode="ignore", channels_last=False):
    return _avg_pool_backward(2, grad_output, input_shape, kernel_size, stride, padding,
                              ceil_mode, count_include_pad, divisor_override, dilation,
                              padding_mode, channels_last)


def avg_pool3d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None,
                        dilation=1, padding_mode="ignore", channels_last=False):
    return _avg_pool_backward(3, grad_output, input_shape, kernel_size, stride, padding,
                              ceil_mode, count_include_pad, divisor_override, dilation,
                              padding_mode, channels_last)


def lp_pool1d_backward(grad_output, x, y, norm_type, kernel_size, stride=None, padding=0,
                       dilation=1, ceil_mode=False, padding_mode="ignore",
                       channels_last=False):
    return _lp_pool_backward(1, grad_output, x, y, norm_type, kernel_size, stride, padding,
                             dilation, ceil_mode, padding_mode, channels_last)


def lp_pool2d_backward(grad_output, x, y, norm_type, kernel_size, stride=None, padding=0,
                       dilation=1, ceil_mode=False, padding_mode="ignore",
                       channels_last=False):
    return _lp_pool_backward(2, grad_output, x, y, norm_type, kernel_size, stride, padding,
                             dilation, ceil_mode, padding_mode, channels_last)


def lp_pool3d_backward(grad_output, x, y, norm_type, kernel_size, stride=None, padding=0,
                       dilation=1, ceil_mode=False, padding_mode="ignore",
                       channels_last=False):
    return _lp_pool_backward(3, grad_output, x, y, norm_type, kernel_size, stride, padding,
                             dilation, ceil_mode, padding_mode, channels_last)


_BACKWARD_DOC = {
    "max": """Gradient of max_pool{nd}d from its PyTorch-style indices (flat within each
    input plane): grad_input[n, c].flat[indices] += grad_output, summed in index order.
    Works for every padding_mode, since indices refer to the unpadded input; an index
    of -1 (a zero pad, padding_mode="zeros") passes no gradient.""",
    "avg": """Gradient of avg_pool{nd}d with the same options: each input element gets the
    sum of grad_output / divisor over the windows covering it. With padding_mode
    "edge"/"reflect" the gradient of each pad is added to the input element it copies.""",
    "lp": """Gradient of lp_pool{nd}d: grad_x = sum over covering windows of
    grad_y * sign(x) |x|^(p-1) / y^(p-1), taken as 0 where y == 0 or x == 0. With
    padding_mode "edge"/"reflect" the gradient of each pad is added to the input element
    it copies.""",
}

# float16 arrays are pooled in float32 batch chunks (cpool._float16), the batch axis
# shared by the arguments named here.
_FLOAT16_ARRAYS = {"": ("x",), "max_backward": ("grad_output", "indices"),
                   "avg_backward": ("grad_output",), "lp_backward": ("x", "grad_output", "y")}

for _nd in (1, 2, 3):
    _fmt = dict(nd=_nd, dims=_DIMS[_nd])
    globals()[f"max_pool{_nd}d"].__doc__ = _MAX_DOC.format(**_fmt)
    globals()[f"avg_pool{_nd}d"].__doc__ = _AVG_DOC.format(**_fmt)
    globals()[f"lp_pool{_nd}d"].__doc__ = _LP_DOC.format(**_fmt)
    for _kind, _doc in _BACKWARD_DOC.items():
        globals()[f"{_kind}_pool{_nd}d_backward"].__doc__ = _doc.format(**_fmt)
    for _kind in ("max", "avg", "lp"):
        for _suffix in ("", "_backward"):
            _name = f"{_kind}_pool{_nd}d{_suffix}"
            _arrays = _FLOAT16_ARRAYS[_suffix and _kind + _suffix]
            globals()[_name] = in_float32_chunks(_arrays, ("input_shape",), _nd + 2)(
                globals()[_name])
del _nd, _fmt, _kind, _doc, _suffix, _name, _arrays

# Max unpooling and fractional max pooling live in their own modules (rules there).
from ._fractional import (fractional_max_pool2d, fractional_max_pool2d_backward,  # noqa: E402
                          fractional_max_pool3d, fractional_max_pool3d_backward)
from ._unpool import (max_unpool1d, max_unpool1d_backward, max_unpool2d,  # noqa: E402
                      max_unpool2d_backward, max_unpool3d, max_unpool3d_backward)

__all__ += [
    "max_unpool1d", "max_unpool2d", "max_unpool3d",
    "max_unpool1d_backward", "max_unpool2d_backward", "max_unpool3d_backward",
    "fractional_max_pool2d", "fractional_max_pool3d",
    "fractional_max_pool2d_backward", "fractional_max_pool3d_backward",
]

# Global, adaptive, binned and spatial pyramid pooling (rules in cpool._binned).
from ._binned import *  # noqa: E402,F401,F403
from ._binned import __all__ as _binned_all  # noqa: E402

__all__ += _binned_all

# RoI pooling / RoI align and masked sequence pooling (rules in cpool._roi, cpool._sequence).
from ._roi import roi_align, roi_align_backward, roi_pool, roi_pool_backward  # noqa: E402
from ._sequence import sequence_pool, sequence_pool_backward  # noqa: E402

__all__ += ["roi_pool", "roi_pool_backward", "roi_align", "roi_align_backward",
            "sequence_pool", "sequence_pool_backward"]
