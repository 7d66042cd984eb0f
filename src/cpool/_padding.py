"""Padding fill modes of the sliding-window pools (max, average, Lp).

``padding_mode`` says what the pads of a pooling hold:

* "ignore" (default): pads are not values. Max pooling never picks them, average
  pooling counts them only with count_include_pad=True (PyTorch's divisor rule, see
  cpool._geometry), and Lp pooling adds 0 for them.
* "zeros": pads are real zeros. Max pooling sees them (a window of negative values
  pools to 0), average and Lp pooling always count them.
* "edge", "reflect": pads repeat the nearest input value, or mirror the input without
  repeating the border value, exactly as ``np.pad(x, pads, mode=...)``. "reflect"
  needs every pad < the input length along its dim (a single reflection, as torch's
  ReflectionPad and ONNX Pad).

For every mode other than "ignore" the result equals pooling the padded array
``np.pad(x, pads, mode)`` with padding 0 over the same windows: the output shape is
that of "ignore" (a ceil_mode window that runs past the padded extent still ignores the
overhang), and an average's divisor is the number of its taps inside the padded extent,
whatever count_include_pad says. The gradient of a padded position is folded back onto
the input position it copies.

Max-pool indices always refer to the *unpadded* input plane: a pad chosen by "edge" or
"reflect" reports the input element it copies (so max_pool*_backward and max_unpool*
need no padding_mode), and a zero pad chosen by "zeros" reports -1, which backward
skips.
"""
import dataclasses

import numpy as np

from ._layout import spatial_axes
from ._validation import check_choice

PADDING_MODES = ("ignore", "zeros", "edge", "reflect")


def check_padding_mode(mode):
    return check_choice(mode, "padding_mode", PADDING_MODES)


def source_map(length, pad_begin, pad_end, mode):
    """For each position of one padded axis, the input position it copies (-1: a zero)."""
    base = np.arange(length, dtype=np.intp)
    if mode == "zeros":
        return np.pad(base, (pad_begin, pad_end), mode="constant", constant_values=-1)
    return np.pad(base, (pad_begin, pad_end), mode=mode)


def kernel_geometry(geom, mode):
    """The geometry the kernels run: `geom` itself for "ignore", else the same windows
    over the explicitly padded input with no padding left."""
    mode = check_padding_mode(mode)
    if mode == "ignore":
        return geom
    if mode == "reflect":
        for L, (pb, pe) in zip(geom.in_size, geom.pads):
            if max(pb, pe) >= L:
                raise ValueError(
                    f"padding_mode='reflect' needs every pad < the input length along its dim; "
                    f"got pads {geom.pads} for spatial input {geom.in_size}")
    padded = tuple(L + pb + pe for L, (pb, pe) in zip(geom.in_size, geom.pads))
    zeros = (0,) * geom.nd
    return dataclasses.replace(geom, in_size=padded, pad_begin=zeros, pad_end=zeros)


def pad_input(x, geom, mode, channels_last=False):
    """(the batched input the kernels read, its geometry) for `mode`."""
    kgeom = kernel_geometry(geom, mode)
    if mode == "ignore":
        return x, geom
    np_mode = "constant" if mode == "zeros" else mode
    pads = [(0, 0)] * x.ndim
    first = spatial_axes(geom.nd, channels_last)[0]
    pads[first:first + geom.nd] = geom.pads
    return np.pad(x, pads, mode=np_mode), kgeom


def fold_gradient(grad, geom, mode, channels_last=False):
    """Gradient w.r.t. the padded input (batched) -> gradient w.r.t. x.

    Each input element gets its own gradient plus, axis by axis, that of every pad that
    copies it, added in increasing pad position (a fixed order: deterministic)."""
    if mode == "ignore":
        return grad
    first = spatial_axes(geom.nd, channels_last)[0]
    if mode == "zeros":
        inner = tuple(slice(pb, pb + L) for L, pb in zip(geom.in_size, geom.pad_begin))
        return np.ascontiguousarray(grad[(slice(None),) * first + inner])
    for axis, (L, (pb, pe)) in enumerate(zip(geom.in_size, geom.pads)):
        ax = first + axis
        folded = np.take(grad, np.arange(pb, pb + L), axis=ax)
        src = source_map(L, pb, pe, mode)
        for j in list(range(pb)) + list(range(pb + L, pb + L + pe)):
            dst = [slice(None)] * grad.ndim
            dst[ax] = src[j]
            own = [slice(None)] * grad.ndim
            own[ax] = j
            folded[tuple(dst)] += grad[tuple(own)]
        grad = folded
    return np.ascontiguousarray(grad)


def unpad_indices(indices, geom, mode):
    """Flat indices within a padded plane -> flat indices within the input plane
    (the element a pad copies; -1 for a zero pad)."""
    if mode == "ignore":
        return indices
    kgeom = kernel_geometry(geom, mode)
    coords = np.unravel_index(indices, kgeom.in_size)
    flat = np.zeros(indices.shape, dtype=np.int64)
    is_pad = np.zeros(indices.shape, dtype=bool)
    for c, L, (pb, pe) in zip(coords, geom.in_size, geom.pads):
        src = source_map(L, pb, pe, mode)[c]
        is_pad |= src < 0
        flat = flat * L + src
    flat[is_pad] = -1
    return flat
