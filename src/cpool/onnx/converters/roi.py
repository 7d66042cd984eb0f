"""RoIPool -> MaxRoiPool, RoIAlign -> RoiAlign.

The graph has three inputs, as the layers take them: ``input`` (N, C, H, W), ``rois``
(K, 4) float boxes (x1, y1, x2, y2) and ``batch_indices`` (K,) int64, with N and K
symbolic; export's example is the triple (x, rois, batch_indices). The rules (bins,
rounding, sampling, RoiAlign's max over weighted corner terms) are ONNX's and cpool's
alike (cpool._roi).

* MaxRoiPool takes (K, 5) rows (batch_index, x1, y1, x2, y2): the graph builds them with
  Cast and Concat. pooled_shape = output_size, spatial_scale as given.
* A channels_last layer's x is (N, H, W, C) and its output (K, OH, OW, C): the graph
  transposes x to channels-first and the result back.
* RoiAlign: mode, output_height/width, sampling_ratio, spatial_scale; from opset 16
  ``coordinate_transformation_mode`` is written explicitly, "half_pixel" for
  aligned=True and "output_half_pixel" for aligned=False. Opsets 10-15 know only the
  latter, so aligned=True needs opset >= 16 (OpsetError otherwise).
"""
import numpy as np

from ..._roi import align_options, output_size_2d
from ...layers.roi import RoIAlign, RoIPool
from ..graph import ExportError
from ..layout import to_first
from ..registry import register_converter

ROI_COUNTS = (3, 5, 4)  # K of the generated cases


def _graph_inputs(layer, arrays, dynamic_batch):
    if len(arrays) != 3:
        raise ExportError(f"{layer!r}: the example must be (x, rois, batch_indices), got "
                          f"{len(arrays)} arrays")
    x, rois, batch = arrays
    if x.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 4 or batch.shape != rois.shape[:1]:
        raise ExportError(f"{layer!r}: the example must be x (N, C, H, W), rois (K, 4) and "
                          f"batch_indices (K,); got {x.shape}, {rois.shape}, {batch.shape}")
    n = "N" if dynamic_batch else x.shape[0]
    return [("input", x, [n] + list(x.shape[1:])),
            ("rois", rois.astype(np.float32), ["K", 4]),
            ("batch_indices", batch.astype(np.int64), ["K"])]


def _sample_inputs(layer, dims, rng, batch, negative=False, odd=0):
    """x, and K random boxes inside (and a little beyond) the image, any batch index."""
    if layer.channels_last:
        _, height, width, channels = dims[0]
    else:
        _, channels, height, width = dims[0]
    x = rng.standard_normal((batch, channels, height, width))
    if negative:
        x = -(np.abs(x) + 0.5)
    k = ROI_COUNTS[odd % len(ROI_COUNTS)]
    scale = float(layer.spatial_scale)
    lo = rng.uniform(-1, [width - 1, height - 1], size=(k, 2)) / scale
    size = rng.uniform(0, [width, height], size=(k, 2)) / scale
    rois = np.concatenate([lo, lo + size], axis=1).astype(np.float32)
    if layer.channels_last:
        x = np.moveaxis(x, 1, -1)
    batch_indices = rng.integers(0, batch, size=k).astype(np.int64)
    return np.ascontiguousarray(x, dtype=np.float32), rois, batch_indices


def _unpack(layer, x):
    if not isinstance(x, tuple) or len(x) != 3:
        raise ExportError(f"{layer!r} takes (x, rois, batch_indices); it cannot follow another "
                          f"layer in a Sequential")
    return x


def _first(ctx, layer, values):
    """Name of x held channels-first, as MaxRoiPool and RoiAlign take it."""
    if not layer.channels_last:
        return values.name
    return ctx.make_node("Transpose", [values.name], perm=list(to_first(4)))


def _as_layer(ctx, layer, out):
    """The (K, C, OH, OW) result in the layer's layout."""
    if not layer.channels_last:
        return out
    return ctx.make_node("Transpose", [out], perm=[0, 2, 3, 1])


@register_converter(RoIPool, graph_inputs=_graph_inputs, sample_inputs=_sample_inputs)
def convert_roi_pool(ctx, layer, x):
    values, rois, batch = _unpack(layer, x)
    index = ctx.unsqueeze(ctx.cast(batch.name, ctx.elem_type), [1])
    boxes = ctx.concat([index, rois.name], 1)
    return _as_layer(ctx, layer, ctx.make_node(
        "MaxRoiPool", [_first(ctx, layer, values), boxes],
        pooled_shape=list(output_size_2d(layer.output_size)),
        spatial_scale=float(layer.spatial_scale)))


@register_converter(RoIAlign, graph_inputs=_graph_inputs, sample_inputs=_sample_inputs)
def convert_roi_align(ctx, layer, x):
    values, rois, batch = _unpack(layer, x)
    sampling_ratio, aligned, mode = align_options(layer.sampling_ratio, layer.aligned,
                                                  layer.mode)
    height, width = output_size_2d(layer.output_size)
    attrs = dict(mode=mode, output_height=height, output_width=width,
                 sampling_ratio=sampling_ratio, spatial_scale=float(layer.spatial_scale))
    if aligned:
        ctx.require_opset(16, "aligned=True (RoiAlign's coordinate_transformation_mode "
                              "'half_pixel')")
    if ctx.opset >= 16:
        attrs["coordinate_transformation_mode"] = "half_pixel" if aligned else "output_half_pixel"
    return _as_layer(ctx, layer, ctx.make_node(
        "RoiAlign", [_first(ctx, layer, values), rois.name, batch.name], **attrs))

