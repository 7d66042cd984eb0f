"""Export of channels_last models and of integer max pooling (issue #6).

Layouts: the graph's input and output are laid out as the model's ((N, *spatial, C)),
and Transpose nodes sit only where the layout changes (cpool.onnx.layout): a chain of
channels-last pooling layers is Transpose -> pool -> ... -> pool -> Transpose.
Dtypes: max pooling keeps integer dtypes exactly, as cpool does (compared with
atol = rtol = 0 on values spanning the dtype's whole range).
"""
import numpy as np
import onnx
import pytest

from tests.onnx.util import op_types, rand, roundtrip

import cpool
from cpool import Sequential
from cpool.layers import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d,
                          AdaptiveMaxPool2d, AvgPool1d, AvgPool2d, AvgPool3d, BatchNorm2d,
                          BinPool, Conv2d, Flatten, GlobalAvgPool, GlobalLPPool,
                          GlobalMaxPool, LPPool1d, LPPool2d, LPPool3d, Linear, MaxPool1d,
                          MaxPool2d, MaxPool3d, ReLU, Softmax, SpatialPyramidPool)
from cpool.onnx import DtypeError, ExportError, export, verify
from cpool.onnx._versions import OPSET_IR, ort_limits


def graph_dims(proto):
    """{name: dims} of the graph's inputs and outputs (a symbol as its name)."""
    return {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(proto.graph.input) + list(proto.graph.output)}


def elem_types(proto):
    return {vi.name: vi.type.tensor_type.elem_type
            for vi in list(proto.graph.input) + list(proto.graph.output)}


def exact(model, proto, dtype, shape, seed=0):
    """verify with atol = rtol = 0 on values over the dtype's whole range, plus an input
    of the dtype's minimum everywhere (every window ties, padding included)."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    full = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    lowest = np.full(shape, info.min, dtype=dtype)
    report = verify(model, proto, inputs=[full, lowest], atol=0, rtol=0)
    assert max(report.values()) == 0, report
    assert max(verify(model, proto, atol=0, rtol=0).values()) == 0  # generated cases


# ----------------------------------------------------------------------------- layouts
# (channels-last layer, example shape (N, *spatial, C), graph outputs of the input's rank)
LAYERS = [
    (MaxPool1d(3, 2, 1, ceil_mode=True, channels_last=True), (2, 11, 3), 1),
    (MaxPool2d(3, 2, 1, return_indices=True, channels_last=True), (2, 9, 11, 3), 2),
    (MaxPool2d(2, 1, 2, dilation=3, padding_mode="edge", channels_last=True), (2, 7, 9, 3), 1),
    (MaxPool3d(2, 2, ((1, 0), (0, 1), (1, 1)), channels_last=True), (2, 5, 4, 5, 2), 1),
    (AvgPool1d(3, 2, 1, count_include_pad=False, channels_last=True), (2, 10, 3), 1),
    (AvgPool2d(3, 2, 1, ceil_mode=True, channels_last=True), (2, 9, 11, 3), 1),
    (AvgPool3d(3, 2, 1, ceil_mode=True, count_include_pad=False, channels_last=True),
     (2, 5, 6, 7, 2), 1),
    (LPPool1d(1.5, 3, 2, channels_last=True), (2, 9, 3), 1),
    (LPPool2d(2, 3, 2, 1, ceil_mode=True, channels_last=True), (2, 9, 11, 3), 1),
    (LPPool3d(2, 2, 2, channels_last=True), (2, 4, 6, 5, 2), 1),
    (AdaptiveMaxPool2d((4, 3), return_indices=True, channels_last=True), (2, 9, 11, 3), 2),
    (AdaptiveAvgPool1d(4, channels_last=True), (2, 11, 3), 1),
    (AdaptiveAvgPool2d((3, 3), channels_last=True), (2, 9, 9, 3), 1),
    (AdaptiveAvgPool3d(2, channels_last=True), (2, 5, 4, 5, 2), 1),
    (GlobalMaxPool(keepdims=True, channels_last=True), (2, 9, 11, 3), 1),
    (GlobalAvgPool(channels_last=True), (2, 9, 11, 3), 0),
    (GlobalLPPool(p=3, keepdims=True, channels_last=True), (2, 5, 4, 5, 2), 1),
    (GlobalLPPool(p=1.5, channels_last=True), (2, 7, 3), 0),
    (BinPool((((0, 3), (2, 6), (5, 9)), ((1, 4), (0, 11))), mode="avg", channels_last=True),
     (2, 9, 11, 3), 1),
]


def _id(case):
    return repr(case[0])


@pytest.mark.parametrize("case", LAYERS, ids=_id)
def test_channels_last_layer_exports_exactly(case):
    layer, shape, spatial_outputs = case
    proto = roundtrip(layer, rand(*shape))
    dims = graph_dims(proto)
    assert dims["input"] == ["N", *shape[1:]]
    expected = layer(rand(*shape))
    expected = expected if isinstance(expected, tuple) else (expected,)
    for name, out in zip(["output", "output_1"], expected):
        assert dims[name] == ["N", *out.shape[1:]]
    # one Transpose into channels-first, and one back per output that has the input's rank
    assert op_types(proto)[0] == "Transpose"
    assert op_types(proto).count("Transpose") == 1 + spatial_outputs


def test_chain_of_channels_last_layers_transposes_at_the_boundaries_only():
    model = Sequential(MaxPool2d(3, 2, 1, channels_last=True), ReLU(),
                       AvgPool2d(2, 1, channels_last=True), LPPool2d(2, 2, channels_last=True),
                       AdaptiveMaxPool2d(2, channels_last=True))
    x = rand(2, 17, 15, 4)
    proto = roundtrip(model, x)
    ops = op_types(proto)
    assert ops.count("Transpose") == 2 and ops[0] == ops[-1] == "Transpose", ops
    assert graph_dims(proto)["output"] == ["N", 2, 2, 4]
    transposes = [n for n in proto.graph.node if n.op_type == "Transpose"]
    perms = [list(onnx.helper.get_attribute_value(n.attribute[0])) for n in transposes]
    assert perms == [[0, 3, 1, 2], [0, 2, 3, 1]]


def test_flatten_and_linear_after_channels_last_pooling_flatten_h_w_c():
    # cpool flattens the channels-last tensor as (H, W, C): the graph must transpose back
    # before Flatten, and only there.
    model = Sequential(MaxPool2d(2, channels_last=True), ReLU(), Flatten(),
                       Linear(4 * 5 * 3, 6, seed=0), Softmax(dim=1))
    proto = roundtrip(model, rand(2, 8, 10, 3))
    ops = op_types(proto)
    assert ops.count("Transpose") == 2
    assert ops.index("Flatten") == ops.index("Transpose", 1) + 1, ops


def test_global_pool_without_keepdims_needs_no_transpose_back():
    model = Sequential(MaxPool2d(2, channels_last=True), GlobalAvgPool(channels_last=True),
                       Linear(3, 2, seed=0))
    proto = roundtrip(model, rand(2, 8, 10, 3))
    assert op_types(proto).count("Transpose") == 1


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spatial_pyramid_pool_channels_last_flattens_each_level_l_l_c(mode):
    layer = SpatialPyramidPool((1, 2, 3), mode=mode, channels_last=True)
    proto = roundtrip(layer, rand(2, 9, 11, 3))
    assert graph_dims(proto)["output"] == ["N", 3 * (1 + 4 + 9)]
    # the input's Transpose, and one per level (cpool's (l, l, C) order) before Flatten
    assert op_types(proto).count("Transpose") == 1 + 3
    model = Sequential(MaxPool2d(2, channels_last=True), layer, Linear(3 * 14, 4, seed=0))
    roundtrip(model, rand(2, 12, 14, 3))


def test_channels_last_export_equals_the_channels_first_model():
    x = rand(2, 3, 9, 11)
    first = MaxPool2d(3, 2, 1, ceil_mode=True)
    last = MaxPool2d(3, 2, 1, ceil_mode=True, channels_last=True)
    import onnxruntime as ort
    proto = export(last, x.transpose(0, 2, 3, 1))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0]
    np.testing.assert_array_equal(got, first(x).transpose(0, 2, 3, 1))


def test_layout_sensitive_layers_between_channels_last_layers():
    # BatchNorm2d normalizes axis 1 of what it gets (here H, as in cpool); the graph
    # transposes back to cpool's layout around it, and to channels-first after it.
    bn = BatchNorm2d(4)
    bn.buffers["running_mean"][:] = np.arange(4)
    model = Sequential(MaxPool2d(2, channels_last=True), bn,
                       AvgPool2d(2, channels_last=True))
    proto = roundtrip(model, rand(2, 8, 10, 3))
    assert op_types(proto).count("Transpose") == 4


def test_mixed_layouts_export_what_cpool_computes():
    # Conv2d is channels-first; a channels_last pool after it pools over (C, H) with W as
    # its channels, as cpool does: the graph reproduces it exactly.
    model = Sequential(Conv2d(3, 4, 3, padding=1, seed=0),
                       MaxPool2d(2, channels_last=True), ReLU())
    proto = roundtrip(model, rand(2, 3, 8, 10))
    assert op_types(proto).count("Transpose") == 2


def test_mixed_layouts_that_cpool_cannot_run_raise_naming_the_layer():
    model = Sequential(MaxPool2d(2, channels_last=True), Conv2d(3, 4, 3, seed=0))
    with pytest.raises(ExportError, match=r"Conv2d.*cannot run on its input of shape "
                                          r"\(1, 4, 5, 3\)"):
        export(model, rand(1, 8, 10, 3))
    with pytest.raises(ExportError, match=r"Linear"):
        export(Sequential(MaxPool2d(2, channels_last=True), Flatten(), Linear(7, 2, seed=0)),
               rand(1, 8, 10, 3))


# ----------------------------------------------------------------------------- dtypes
INTEGER_CASES = [
    (MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 9, 11)),
    (MaxPool2d(2, 1, ((2, 2), (1, 1)), dilation=(3, 1)), (2, 3, 2, 5)),  # all-padding windows
    (MaxPool2d(2, 1, 2, dilation=4, return_indices=True), (2, 3, 7, 9)),  # Pad node, indices
    (MaxPool2d(3, 2, 1, padding_mode="edge", return_indices=True), (2, 3, 9, 11)),
    (MaxPool1d(4, 3, 1, ceil_mode=True), (2, 3, 11)),
    (MaxPool3d(2, 2, 1, return_indices=True), (2, 2, 5, 5, 3)),
    (MaxPool2d(3, 2, "same", channels_last=True), (2, 9, 10, 3)),
    (MaxPool2d(2, 1, 2, dilation=3, return_indices=True, channels_last=True), (2, 7, 9, 3)),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("case", INTEGER_CASES, ids=_id)
def test_integer_max_pool_exports_exactly(case, dtype):
    layer, shape = case
    x = np.zeros(shape, dtype=dtype)
    proto = export(layer, x)
    exact(layer, proto, dtype, shape)
    types = elem_types(proto)
    tensor_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    assert types["input"] == types["output"] == tensor_type
    if not layer.return_indices:
        # onnxruntime's own int8/uint8 MaxPool, no Cast
        assert "Cast" not in op_types(proto) and "MaxPool" in op_types(proto)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint32])
@pytest.mark.parametrize("case", INTEGER_CASES[:4], ids=_id)
def test_wider_integer_max_pool_is_cast_around_exactly(case, dtype):
    layer, shape = case
    proto = export(layer, np.zeros(shape, dtype=dtype))
    exact(layer, proto, dtype, shape)
    float_type = np.float32 if np.dtype(dtype).itemsize == 2 else np.float64
    casts = [onnx.helper.get_attribute_value(n.attribute[0])
             for n in proto.graph.node if n.op_type == "Cast"]
    assert casts == [onnx.helper.np_dtype_to_tensor_dtype(np.dtype(float_type)),
                     onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))]


def test_int64_max_pool_raises_naming_the_dtype():
    with pytest.raises(DtypeError, match="int64") as info:
        export(MaxPool2d(2), np.zeros((1, 2, 4, 4), dtype=np.int64))
    assert isinstance(info.value, TypeError) and cpool.onnx.DtypeError is DtypeError


def test_integer_input_is_cast_to_float_where_cpool_computes_in_float():
    # Values span the dtype's range (to 32767 for int16), so float32 rounding shows in
    # absolute terms: verify's relative tolerance applies, not the suite's absolute TOL.
    model = Sequential(MaxPool2d(2, channels_last=True), Flatten(), Linear(4 * 5 * 3, 6, seed=0))
    x = np.zeros((1, 8, 10, 3), dtype=np.uint8)
    proto = export(model, x)
    verify(model, proto)
    ops = op_types(proto)
    # uint8 through the pool and the Flatten; float32 from the Linear on
    assert ops.index("Cast") == ops.index("Flatten") + 1, ops
    types = elem_types(proto)
    assert types["input"] == onnx.TensorProto.UINT8
    assert types["output"] == onnx.TensorProto.FLOAT
    model = Sequential(AvgPool2d(2), ReLU())
    proto = export(model, np.zeros((1, 2, 6, 6), dtype=np.int16))
    assert op_types(proto)[0] == "Cast"
    verify(model, proto)


@pytest.mark.parametrize("opset", [13, None])
def test_ir_version_is_the_opsets_and_onnxruntime_loads_it(opset):
    layer = MaxPool2d(2, channels_last=True)
    proto = export(layer, np.zeros((1, 4, 4, 3), dtype=np.uint8), opset=opset)
    version = proto.opset_import[0].version
    assert proto.ir_version == OPSET_IR[version] <= ort_limits()[0]
    exact(layer, proto, np.uint8, (2, 4, 4, 3))


def test_command_line_exports_a_channels_last_uint8_model(tmp_path, capsys):
    from cpool.__main__ import main

    model = Sequential(MaxPool2d(2, channels_last=True), Flatten(), Linear(4 * 4 * 1, 3, seed=0))
    model.save(tmp_path / "cl.npz")
    out = tmp_path / "cl.onnx"
    assert main(["export", str(tmp_path / "cl.npz"), "-o", str(out),
                 "--input-dtype", "uint8"]) == 0
    assert "(N, 8, 8, 1)" in capsys.readouterr().out
    assert elem_types(onnx.load(str(out)))["input"] == onnx.TensorProto.UINT8
    assert main(["verify", str(tmp_path / "cl.npz"), str(out)]) == 0
    with pytest.raises(SystemExit, match="--input-dtype"):
        main(["export", str(tmp_path / "cl.npz"), "-o", str(out), "--input-dtype", "bool"])


# ------------------------------------------- channels-last unpooling, fractional and RoI
@pytest.mark.parametrize("make, example", [
    (lambda: cpool.layers.MaxUnpool2d(2, channels_last=True), None),
    (lambda: cpool.layers.MaxUnpool1d(3, 2, 1, channels_last=True), None),
    (lambda: cpool.layers.FractionalMaxPool2d(2, output_ratio=0.6, seed=0,
                                              channels_last=True), (2, 9, 11, 3)),
    (lambda: cpool.layers.FractionalMaxPool3d(2, (2, 3, 2), return_indices=True, seed=1,
                                              channels_last=True), (2, 5, 6, 4, 3)),
    (lambda: cpool.layers.RoIPool((3, 2), spatial_scale=0.5, channels_last=True), None),
    (lambda: cpool.layers.RoIAlign(2, sampling_ratio=2, aligned=True, mode="max",
                                   channels_last=True), None),
], ids=["unpool2d", "unpool1d", "fractional2d", "fractional3d", "roi-pool", "roi-align"])
def test_channels_last_multi_input_layers_export(make, example):
    """The graph's inputs and output are laid out as the layer's ((N, *spatial, C))."""
    layer = make()
    rng = np.random.default_rng(0)
    if example is not None:
        x = rng.standard_normal(example).astype(np.float32)
    elif isinstance(layer, (cpool.layers.RoIPool, cpool.layers.RoIAlign)):
        x = (rng.standard_normal((2, 7, 8, 3)).astype(np.float32),
             np.array([[0.5, 0.5, 3.5, 4], [1.2, 0.7, 6.1, 5.3]], dtype=np.float32),
             np.array([1, 0]))
    else:
        nd = layer.nd
        size = 8 if nd == 2 else 7  # unpools back to the same size
        big = rng.standard_normal((2, 3) + (size,) * nd).astype(np.float32)
        pool = getattr(cpool.functional, f"max_pool{nd}d")
        y, idx = pool(big, layer.kernel_size, layer.stride, layer.padding, return_indices=True)
        x = (np.moveaxis(y, 1, -1).copy(), np.moveaxis(idx, 1, -1).copy())
    proto = roundtrip(layer, x)
    first = x[0] if isinstance(x, tuple) else x
    dims = graph_dims(proto)
    assert dims["input"][1:] == list(first.shape[1:])
