"""FractionalMaxPool2d/3d -> an exact decomposition with the sampled intervals fixed.

A fractional max pool draws its window starts from random samples at every forward
(cpool._fractional). The exported graph is for inference and fixes them: it uses the
samples of batch element 0 of the layer's last forward (``layer.random_samples[0]``,
one row per channel; the layer runs once on the example first if it never ran), for
every batch element. cpool computes the same through the converter's ``run`` hook
(``fractional_max_pool*d(..., random_samples=those rows repeated over the batch)``),
which is what verify compares with.

Each channel has its own windows, so no pool operator fits; instead a constant table
``T[c, o, t]`` lists, for channel c and output position o, the flat position in the
(C * plane) row of tap t (taps in scan order). x is viewed as (N, C*plane), a Gather
collects (N, C, O, taps), ReduceMax gives the values and ArgMax (first maximum, float
input) the tap, which a second Gather maps to cpool's index (flat within the plane).
A channels_last layer gets its input channels-first from the exporter
(cpool.onnx.layout), so the same graph serves it.
"""
import numpy as np

from ..._fractional import (check_fraction_args, fraction_output_size, fractional_forward,
                            interval_starts)
from ..._layout import split_shape
from ...layers.fractional import FractionalMaxPool2d, FractionalMaxPool3d
from ..._validation import finish_output, spatial_input
from ..graph import ExportError
from ..registry import register_converter


def _fixed(layer, x):
    """(kernel, out_size, (C, nd) samples) for a batched channels-first input array x."""
    kernel, size, ratio = check_fraction_args(layer.nd, layer.kernel_size, layer.output_size,
                                              layer.output_ratio)
    out_size = fraction_output_size(x.shape[2:], kernel, size, ratio)
    if layer.random_samples is None:  # draw them from the layer's own generator
        layer(np.moveaxis(x, 1, -1) if layer.channels_last else x)
    samples = np.asarray(layer.random_samples)
    if samples.ndim == 2:  # unbatched last forward
        samples = samples[np.newaxis]
    if samples.shape[1] != x.shape[1]:
        raise ExportError(f"{layer!r}: its last forward had {samples.shape[1]} channels, the "
                          f"example has {x.shape[1]}")
    return kernel, out_size, samples[0]


def _run(layer, arrays):
    """cpool's forward with the exported (fixed) intervals."""
    x, batched, dtype = spatial_input(arrays[0], layer.nd)
    cl = layer.channels_last
    kernel, out_size, samples = _fixed(layer, np.moveaxis(x, -1, 1) if cl else x)
    samples = np.broadcast_to(samples.astype(x.dtype), split_shape(x.shape, cl)[:2] +
                              (layer.nd,))
    out, indices = fractional_forward(x, kernel, out_size, np.ascontiguousarray(samples),
                                      layer.return_indices, cl)
    out = finish_output(out, batched, dtype)
    if layer.return_indices:
        return out, finish_output(indices, batched, np.int64)
    return out


@register_converter(FractionalMaxPool2d, FractionalMaxPool3d, run=_run)
def convert_fractional_max_pool(ctx, layer, x):
    if x.ndim != layer.nd + 2:
        raise ExportError(f"{layer!r}: export needs a batched example (N, C, *spatial), got "
                          f"shape {x.shape}")
    kernel, out_size, samples = _fixed(layer, x.data)
    channels, in_size = x.shape[1], x.shape[2:]
    plane = int(np.prod(in_size))
    starts = interval_starts(samples.astype(x.data.dtype), in_size, out_size, kernel)
    taps = np.stack(np.meshgrid(*[np.arange(k) for k in kernel], indexing="ij"), -1)
    taps = taps.reshape(-1, layer.nd)  # scan order
    outs = np.stack(np.meshgrid(*[np.arange(o) for o in out_size], indexing="ij"), -1)
    outs = outs.reshape(-1, layer.nd)
    table = np.empty((channels, len(outs), len(taps)), dtype=np.int64)
    for c in range(channels):
        coords = [starts[axis][c][outs[:, axis]][:, None] + taps[None, :, axis]
                  for axis in range(layer.nd)]
        table[c] = np.ravel_multi_index(coords, in_size)
    rows = table + (np.arange(channels) * plane)[:, None, None]
    flat = ctx.reshape(x.name, [0, channels * plane])
    gathered = ctx.make_node("Gather", [flat, ctx.iconst(rows, "window_elements")], axis=1)
    shape = [0, channels] + list(out_size)
    values = ctx.reshape(ctx.reduce("ReduceMax", gathered, [3], keepdims=False), shape)
    if not layer.return_indices:
        return values
    tap = ctx.make_node("ArgMax", [gathered], axis=3, keepdims=0)
    offsets = (np.arange(channels)[:, None] * len(outs) + np.arange(len(outs))[None, :])
    position = ctx.make_node("Add", [tap, ctx.iconst(offsets * len(taps), "window_offsets")])
    indices = ctx.make_node("Gather", [ctx.iconst(table.ravel(), "window_table"), position],
                            axis=0)
    return values, ctx.reshape(indices, shape)
