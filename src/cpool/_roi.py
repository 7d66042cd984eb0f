"""RoI pooling and RoI align for detection heads, forward and backward.

Shared conventions
------------------
* ``x`` is (N, C, H, W) with H, W >= 1. ``rois`` is (K, 4), one box (x1, y1, x2, y2) per
  row in input-image coordinates, mapped onto x's pixel grid by ``spatial_scale``.
  ``batch_indices`` (K,) holds the image of each box, ints in [0, N). The output is
  (K, C, OH, OW) for ``output_size`` (OH, OW). This is ONNX's layout; torchvision's
  (K, 5) boxes are ``np.column_stack([batch_indices, rois])``.
* Boxes need x2 >= x1 and y2 >= y1 (zero width or height is allowed) and finite
  coordinates with ``|coordinate * spatial_scale| <= 2**24``.
* ``rois`` are converted to x's float type and every coordinate is computed in that
  type, in torchvision's and onnxruntime's order of operations, so rounding, bin edges
  and sample-grid sizes fall where theirs do.
* Backward runs in parallel over channel blocks and images: each thread owns whole
  channels of grad_x and adds the RoIs of an image in RoI order, so overlapping RoIs
  need no atomics and results are bitwise identical for every thread count.
* ``channels_last=True``: x is (N, H, W, C) (Keras/TF) and the output (K, OH, OW, C);
  indices stay flat within each (n, c) plane (h * W + w). The kernels read x and write
  its gradient in place, vectorized over C (channels-first input is first copied
  channels-last block by block); the arithmetic is the same, so both layouts give the
  same bits.

roi_pool (torchvision.ops.roi_pool, ONNX MaxRoiPool)
----------------------------------------------------
Per axis, with c1 <= c2 the box's coordinates, L the input size and P the pooled size::

    start = round(c1 * scale)            # C round(): halves away from zero
    end   = round(c2 * scale)
    bin   = max(end - start + 1, 1) / P  # in x's float type
    bin p covers [floor(p * bin) + start, ceil((p + 1) * bin) + start), clipped to [0, L]

Each output is the max over its bin (ties: the first pixel in row-major order; NaN:
the first NaN wins, as torch.max). An empty bin (entirely outside x) gives 0 and passes
no gradient. torchvision agrees except on NaN and -inf: it starts at -FLT_MAX and
takes only larger values, so it skips NaN, and a bin of -inf gives -FLT_MAX there;
onnxruntime's MaxRoiPool (float32 only) agrees on NaN-free input. Older onnxruntime
sources started the max at FLT_MIN, the smallest *positive* float, which turned a bin of
values <= 0 into 1.18e-38.

roi_align (ONNX RoiAlign, torchvision.ops.roi_align)
----------------------------------------------------
``aligned=True`` is ONNX opset 16's ``coordinate_transformation_mode="half_pixel"``
(torchvision aligned=True); ``aligned=False`` is ``"output_half_pixel"`` (torchvision's
default and the only behaviour of ONNX opset 10). Per axis::

    offset = 0.5 if aligned else 0
    start  = c1 * scale - offset
    extent = (c2 * scale - offset) - start;  if not aligned: extent = max(extent, 1)
    bin    = extent / P
    g      = sampling_ratio if sampling_ratio > 0 else ceil(extent / P)
    sample i of bin p sits at  start + p * bin + (i + 0.5) * bin / g

A sample at (y, x) with y < -1, y > H, x < -1 or x > W is 0. Otherwise y is clamped to
>= 0, y_low = floor(y), and if y_low >= H - 1 then y_low = y_high = H - 1 and y = y_low,
else y_high = y_low + 1; ly = y - y_low (likewise for x). Its four corner terms are
``(1-ly)(1-lx) x[y_low, x_low]``, ``(1-ly) lx x[y_low, x_high]``,
``ly (1-lx) x[y_high, x_low]`` and ``ly lx x[y_high, x_high]``.

* mode="avg": the mean over the bin's g_h * g_w samples of the sum of their corner
  terms (a bin with no samples gives 0). torchvision and ONNX agree on this.
* mode="max": ONNX's definition, taken literally: the max over the bin's samples of
  the max of each sample's four *weighted corner terms* -- not the max of the
  interpolated values. A corner of weight 0 (a sample on a pixel row, or a sample
  outside the map) still counts, as the term 0, so a bin of negative values can give
  0. Ties go to the first term in (sample, corner) order and the first NaN wins. The
  gradient of an output is w * grad, given to the pixel of its winning term.
  torchvision has no max mode.

Caveat: ONNX's spatial_scale is a float32 attribute; a scale that float32 cannot hold
exactly (1/3, say) makes float64 results differ from onnxruntime's in the last bits.
"""
from dataclasses import dataclass

import numpy as np

from ._kernels import roi as _roi
from ._layout import join_shape, split_shape
from ._threads import threads_for
from ._validation import (as_float_array, as_int, check_bool, check_choice,
                          check_positive_float, int_array, int_tuple)

__all__ = ["roi_pool", "roi_pool_backward", "roi_align", "roi_align_backward"]

MODES = ("avg", "max")
_MAX_COORD = 2.0 ** 24  # keeps every scaled coordinate an exact int-castable value
_BLOCK_BYTES = 1 << 20  # channels-last block buffer per thread (fits a 1 MiB L2)
_CL_BLOCK = 256  # channels per work item of channels-last input (no buffer to fit)


@dataclass
class RoISet:
    """Validated boxes: rois (K, 4) in x's dtype, batch (K,) int64, RoIs sorted by image
    (order, stable) and starts (N+1,) with image n's RoIs at order[starts[n]:starts[n+1]]."""
    rois: np.ndarray
    batch: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    scale: float


def _layout_name(channels_last):
    return "(N, H, W, C)" if channels_last else "(N, C, H, W)"


def roi_input(x, channels_last=False):
    """(x as C-contiguous float array (N, C, H, W) or (N, H, W, C), dtype to hand back)."""
    arr, dtype = as_float_array(x, "x")
    if arr.ndim != 4:
        raise ValueError(f"x must have 4 dims {_layout_name(channels_last)} for RoI pooling, "
                         f"got shape {arr.shape}")
    height, width = split_shape(arr.shape, channels_last)[2]
    if height < 1 or width < 1:
        raise ValueError(f"x must have H >= 1 and W >= 1, got shape {arr.shape}")
    if height * width >= 2 ** 31:
        raise ValueError(f"x's planes must hold fewer than 2**31 pixels, got {(height, width)}")
    return arr, dtype


def output_size_2d(output_size):
    return int_tuple(output_size, 2, "output_size", minimum=1)


def batch_order(batch, n_images):
    """(order, starts): RoIs grouped by image, stable within an image."""
    order = np.argsort(batch, kind="stable").astype(np.intp)
    starts = np.zeros(n_images + 1, dtype=np.intp)
    np.cumsum(np.bincount(batch, minlength=n_images), out=starts[1:])
    return order, starts


def check_batch_indices(batch_indices, n_rois, n_images):
    b = int_array(batch_indices, "batch_indices")
    if b.shape != (n_rois,):
        raise ValueError(f"batch_indices must have shape ({n_rois},) (one per RoI), "
                         f"got {b.shape}")
    if b.size and (b.min() < 0 or b.max() >= n_images):
        bad = b[(b < 0) | (b >= n_images)][0]
        raise ValueError(f"batch_indices must lie in [0, {n_images}) (x has N={n_images}), "
                         f"got {bad}")
    return b


def roi_set(x, rois, batch_indices, spatial_scale):
    """Validate the boxes against x (N, C, H, W)."""
    scale = check_positive_float(spatial_scale, "spatial_scale")
    r, _ = as_float_array(rois, "rois")
    if r.size == 0 and r.ndim == 1:  # an empty list: no boxes
        r = r.reshape(0, 4)
    if r.ndim != 2 or r.shape[1] != 4:
        raise ValueError(f"rois must have shape (K, 4), rows (x1, y1, x2, y2); got {r.shape}")
    r = np.ascontiguousarray(r, dtype=x.dtype)
    if not np.isfinite(r).all():
        raise ValueError("rois must be finite")
    if r.size and np.abs(r).max() * scale > _MAX_COORD:
        raise ValueError(f"rois * spatial_scale must lie within +-2**24, got "
                         f"{np.abs(r).max() * scale:g}")
    bad = np.flatnonzero((r[:, 2] < r[:, 0]) | (r[:, 3] < r[:, 1]))
    if bad.size:
        raise ValueError(f"rois must have x2 >= x1 and y2 >= y1; row {bad[0]} is "
                         f"{r[bad[0]].tolist()}")
    b = check_batch_indices(batch_indices, r.shape[0], x.shape[0])
    order, starts = batch_order(b, x.shape[0])
    return RoISet(r, b, order, starts, scale)


def channel_block(shape, itemsize, channels_last=False):
    """Channels per block: channels-first, as many as fit the block buffer, 8 to 64;
    channels-last (read in place), up to _CL_BLOCK."""
    _, C, (H, W) = split_shape(shape, channels_last)
    cb = _CL_BLOCK if channels_last else 64
    while not channels_last and cb > 8 and H * W * cb * itemsize > _BLOCK_BYTES:
        cb //= 2
    return max(1, min(cb, C))


def _no_taps():
    return np.empty((0, 0, 0, 0), dtype=np.intc)


# --------------------------------------------------------------------------------------
# Cores (also used by the layers)
# --------------------------------------------------------------------------------------

def roi_pool_forward_core(x, R, out_size, channels_last=False):
    """(out, argmax) in x's layout: argmax int32, flat within the plane, -1 for an empty
    bin."""
    shape = join_shape(R.rois.shape[0], split_shape(x.shape, channels_last)[1], out_size,
                       channels_last)
    out = np.empty(shape, dtype=x.dtype)
    argmax = np.empty(shape, dtype=np.intc)
    if out.size:
        _roi.roi_pool_forward(x, R.rois, R.batch, R.order, out, argmax, tuple(out_size),
                              R.scale, channel_block(x.shape, x.itemsize, channels_last),
                              channels_last, _threads(out, R, out_size, 0, 1))
    return out, argmax


def roi_pool_backward_core(g, argmax, R, input_shape, channels_last=False):
    grad = np.empty(input_shape, dtype=g.dtype)
    if grad.size:
        _roi.roi_pool_backward(g, argmax, R.order, R.starts, grad,
                               split_shape(g.shape, channels_last)[2],
                               channel_block(input_shape, g.itemsize, channels_last),
                               channels_last, threads_for(g, argmax, grad))
    return grad


def _bin_samples(R, out_size, sampling_ratio):
    """Per RoI, the points each output bin reads: sampling_ratio**2 when it is positive,
    else the bin's extent in input pixels, rounded up, at least 1 x 1 (RoI align's
    adaptive grid, and about RoI pooling's bin)."""
    if sampling_ratio > 0:
        return np.full(len(R.rois), float(sampling_ratio) ** 2)
    extent = np.maximum((R.rois[:, 2:] - R.rois[:, :2]).astype(np.float64) * R.scale, 1)
    grid = np.ceil(extent / np.array(out_size[::-1], dtype=np.float64))
    return grid[:, 0] * grid[:, 1]


def _threads(out, R, out_size, sampling_ratio, per_sample):
    """threads_for of a RoI kernel writing `out`: `per_sample` times the mean points per
    bin, against a max's one compare per element (the bilinear sample: 4 corners and
    their weights)."""
    samples = _bin_samples(R, out_size, sampling_ratio)
    return threads_for(out, cost=1 + per_sample * (samples.mean() if samples.size else 0.0))


def _check_max_samples(R, out_size, sampling_ratio):
    """Max mode numbers a bin's terms (sample*4 + corner) in int32."""
    per_bin = _bin_samples(R, out_size, sampling_ratio).max(initial=0.0)
    if 4 * per_bin >= 2 ** 31:
        raise ValueError(f"mode='max' supports fewer than 2**29 samples per bin, got about "
                         f"{per_bin:g}; lower sampling_ratio or raise output_size")


def roi_align_forward_core(x, R, out_size, sampling_ratio, aligned, mode,
                           channels_last=False):
    """(out, taps) in x's layout; taps (sample*4 + corner of each output's winning term)
    in max mode, else None."""
    if mode == "max":
        _check_max_samples(R, out_size, sampling_ratio)
    shape = join_shape(R.rois.shape[0], split_shape(x.shape, channels_last)[1], out_size,
                       channels_last)
    out = np.empty(shape, dtype=x.dtype)
    taps = np.empty(shape, dtype=np.intc) if mode == "max" else None
    if out.size:
        _roi.roi_align_forward(x, R.rois, R.batch, R.order, out,
                               _no_taps() if taps is None else taps, tuple(out_size), R.scale,
                               aligned, sampling_ratio, mode == "max",
                               channel_block(x.shape, x.itemsize, channels_last),
                               channels_last, _threads(out, R, out_size, sampling_ratio, 8))
    return out, taps


def roi_align_backward_core(g, R, input_shape, sampling_ratio, aligned, mode, taps,
                            channels_last=False):
    grad = np.empty(input_shape, dtype=g.dtype)
    if grad.size:
        _roi.roi_align_backward(g, R.rois, R.order, R.starts,
                                _no_taps() if taps is None else taps, grad,
                                split_shape(g.shape, channels_last)[2], R.scale, aligned,
                                sampling_ratio, mode == "max",
                                channel_block(input_shape, g.itemsize, channels_last),
                                channels_last,
                                max(_threads(g, R, split_shape(g.shape, channels_last)[2],
                                             sampling_ratio, 8), threads_for(grad)))
    return grad


def align_options(sampling_ratio, aligned, mode):
    sr = as_int(sampling_ratio, "sampling_ratio", minimum=0)
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned must be a bool, got {type(aligned).__name__}")
    return sr, bool(aligned), check_choice(mode, "mode", MODES)


def _input_shape(input_shape, channels_last=False):
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 4:
        raise ValueError(f"input_shape must be {_layout_name(channels_last)}, "
                         f"got {input_shape!r}")
    shape = tuple(as_int(s, "input_shape", 0) for s in input_shape)
    if min(split_shape(shape, channels_last)[2]) < 1:
        raise ValueError(f"input_shape must have H >= 1 and W >= 1, got {shape}")
    return shape


def _grad(grad_output, shape):
    """(grad_output as a float array checked to have `shape`, dtype to hand back)."""
    g, dtype = as_float_array(grad_output, "grad_output")
    if g.shape != tuple(shape):
        raise ValueError(f"grad_output must have shape {tuple(shape)} (the forward's output), "
                         f"got {g.shape}")
    return g, dtype


# --------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------

_CHANNELS_LAST_DOC = """channels_last : bool
        False: x is (N, C, H, W) as in PyTorch and ONNX. True: x is (N, H, W, C) as in
        Keras/TF, and the output is (K, OH, OW, C)."""


def roi_pool(x, rois, batch_indices, output_size, spatial_scale=1.0, return_indices=False,
             channels_last=False):
    """Max RoI pooling, as torchvision.ops.roi_pool and ONNX MaxRoiPool.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    rois : array_like, shape (K, 4)
        Boxes (x1, y1, x2, y2) in input-image coordinates, x2 >= x1 and y2 >= y1.
    batch_indices : array_like of ints, shape (K,)
        The image of each box, in [0, N).
    output_size : int or (int, int)
        (OH, OW), each >= 1.
    spatial_scale : float
        Multiplies the box coordinates (1/16 for a stride-16 feature map).
    return_indices : bool
        Also return int64 indices of each output's pixel, flat within its (n, c) plane
        (h * W + w), -1 for an empty bin; laid out as the output.
    {channels_last}

    Returns
    -------
    out : ndarray (K, C, OH, OW), and indices when return_indices is True.

    The bin rule (rounding, clipping, empty bins) and the NaN rule, where torchvision
    differs, are stated in cpool._roi.
    """
    channels_last = check_bool(channels_last, "channels_last")
    x, dtype = roi_input(x, channels_last)
    out_size = output_size_2d(output_size)
    R = roi_set(x, rois, batch_indices, spatial_scale)
    out, argmax = roi_pool_forward_core(x, R, out_size, channels_last)
    out = out.astype(dtype, copy=False)
    if return_indices:
        return out, argmax.astype(np.int64)
    return out


def roi_pool_backward(grad_output, indices, batch_indices, input_shape, channels_last=False):
    """Gradient of roi_pool with respect to x from its indices:
    ``grad_x[batch_indices[k], c].flat[indices[k, c, i, j]] += grad_output[k, c, i, j]``
    for every index >= 0, added in RoI order.

    input_shape is x's shape (N, C, H, W), or (N, H, W, C) with channels_last (then
    grad_output and indices are (K, OH, OW, C)); indices as returned by
    ``roi_pool(..., return_indices=True)``.
    """
    channels_last = check_bool(channels_last, "channels_last")
    shape = _input_shape(input_shape, channels_last)
    n_images, channels, (height, width) = split_shape(shape, channels_last)
    idx = int_array(indices, "indices")
    if idx.ndim != 4 or split_shape(idx.shape, channels_last)[1] != channels:
        layout = "(K, OH, OW, {0})" if channels_last else "(K, {0}, OH, OW)"
        raise ValueError(f"indices must have shape {layout.format(channels)}, got {idx.shape}")
    plane = height * width
    if idx.size and (idx.min() < -1 or idx.max() >= plane):
        raise ValueError(f"indices must lie in [-1, {plane}) (flat within each input plane, "
                         f"-1 for an empty bin); got range [{idx.min()}, {idx.max()}]")
    g, dtype = _grad(grad_output, idx.shape)
    b = check_batch_indices(batch_indices, idx.shape[0], n_images)
    order, starts = batch_order(b, n_images)
    R = RoISet(None, b, order, starts, 1.0)
    grad = roi_pool_backward_core(g, idx.astype(np.intc), R, shape, channels_last)
    return grad.astype(dtype, copy=False)


def roi_align(x, rois, batch_indices, output_size, spatial_scale=1.0, sampling_ratio=0,
              aligned=False, mode="avg", channels_last=False):
    """RoI align, as ONNX RoiAlign (opset 16) and torchvision.ops.roi_align ("avg").

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    rois : array_like, shape (K, 4)
        Boxes (x1, y1, x2, y2) in input-image coordinates, x2 >= x1 and y2 >= y1.
    batch_indices : array_like of ints, shape (K,)
        The image of each box, in [0, N).
    output_size : int or (int, int)
        (OH, OW), each >= 1.
    spatial_scale : float
        Multiplies the box coordinates.
    sampling_ratio : int
        Samples per bin and axis; 0 (default) means ceil(box extent / output size),
        per box and axis.
    aligned : bool
        True: shift the box by -0.5 pixel (ONNX "half_pixel", torchvision aligned=True).
        False: ONNX "output_half_pixel" (opset 10's behaviour); boxes are at least 1x1.
    mode : "avg" or "max"
        "max" is ONNX's definition: the max of the weighted bilinear corner terms.
    {channels_last}

    Returns
    -------
    out : ndarray (K, C, OH, OW)

    The sampling and interpolation rules, and what "max" means exactly, are stated in
    cpool._roi.
    """
    channels_last = check_bool(channels_last, "channels_last")
    sr, aligned, mode = align_options(sampling_ratio, aligned, mode)
    x, dtype = roi_input(x, channels_last)
    out_size = output_size_2d(output_size)
    R = roi_set(x, rois, batch_indices, spatial_scale)
    out, _ = roi_align_forward_core(x, R, out_size, sr, aligned, mode, channels_last)
    return out.astype(dtype, copy=False)


def roi_align_backward(grad_output, rois, batch_indices, input_shape, spatial_scale=1.0,
                       sampling_ratio=0, aligned=False, mode="avg", x=None,
                       channels_last=False):
    """Gradient of roi_align with respect to x, for the same options.

    mode="avg" needs only x's shape (input_shape); mode="max" also needs the forward's
    input ``x`` (its winning corner terms are recomputed from it). Each pixel receives,
    from every RoI of its image in RoI order, the bilinear weight of each of its corner
    terms times grad / count (avg), or w * grad from each output it won (max).
    With channels_last, input_shape and x are (N, H, W, C) and grad_output (K, OH, OW, C).
    """
    channels_last = check_bool(channels_last, "channels_last")
    sr, aligned, mode = align_options(sampling_ratio, aligned, mode)
    shape = _input_shape(input_shape, channels_last)
    if mode == "max":
        if x is None:
            raise ValueError("roi_align_backward with mode='max' needs x, the forward's input")
        x, _ = roi_input(x, channels_last)
        if x.shape != shape:
            raise ValueError(f"x must have input_shape {shape}, got {x.shape}")
    g, dtype = as_float_array(grad_output, "grad_output")
    # roi_set reads only N and the float type from its first argument
    R = roi_set(np.empty((shape[0], 0, 0, 0), dtype=g.dtype), rois, batch_indices,
                spatial_scale)
    K, channels = R.rois.shape[0], split_shape(shape, channels_last)[1]
    if g.ndim != 4 or split_shape(g.shape, channels_last)[:2] != (K, channels) or \
            min(split_shape(g.shape, channels_last)[2]) < 1:
        layout = "(K, OH, OW, C)" if channels_last else "(K, C, OH, OW)"
        raise ValueError(f"grad_output must have shape {layout} with (K, C) = "
                         f"{(K, channels)} and OH, OW >= 1 (the forward's output), "
                         f"got {g.shape}")
    out_size = split_shape(g.shape, channels_last)[2]
    taps = None
    if mode == "max":
        _, taps = roi_align_forward_core(x.astype(g.dtype, copy=False), R, out_size, sr,
                                         aligned, mode, channels_last)
    grad = roi_align_backward_core(g, R, shape, sr, aligned, mode, taps, channels_last)
    return grad.astype(dtype, copy=False)


roi_pool.__doc__ = roi_pool.__doc__.format(channels_last=_CHANNELS_LAST_DOC)
roi_align.__doc__ = roi_align.__doc__.format(channels_last=_CHANNELS_LAST_DOC)
