"""Export of MaxPool/AvgPool/LPPool 1d/2d/3d: every option combination, verified against
onnxruntime (max abs diff <= 1e-5 in float32, batch 1, 2, 7 and all-negative inputs)."""
import numpy as np
import pytest

from tests.onnx.util import TOL, attributes, op_types, rand, roundtrip

from cpool.layers import (AvgPool1d, AvgPool2d, AvgPool3d, LPPool1d, LPPool2d, LPPool3d,
                          MaxPool1d, MaxPool2d, MaxPool3d)
from cpool.onnx import VerificationError, export, verify

# (layer, example shape); spatial sizes odd where the options allow.
CASES = [
    # ceil_mode, with the last window dropped when it would start in the right padding
    (MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 9, 11)),
    (MaxPool2d(2, 2, 1, ceil_mode=True), (2, 2, 5, 7)),
    (MaxPool1d(4, 3, 1, ceil_mode=True), (2, 3, 11)),
    # asymmetric pads, same and same_lower
    (MaxPool2d((3, 2), (2, 1), ((1, 0), (0, 1))), (2, 3, 9, 7)),
    (MaxPool2d(3, 2, "same"), (2, 3, 9, 10)),
    (MaxPool2d(4, 3, "same_lower"), (2, 3, 9, 10)),
    (MaxPool3d(2, 2, ((1, 0), (0, 1), (1, 1)), ceil_mode=True), (2, 2, 5, 4, 5)),
    # dilation, including pads >= kernel (a Pad node) and windows made only of padding
    (MaxPool2d(2, 1, 2, dilation=3), (2, 3, 7, 9)),
    (MaxPool2d(2, 1, ((2, 2), (1, 1)), dilation=(3, 1)), (2, 3, 2, 5)),
    (MaxPool1d(3, 2, 2, dilation=2, ceil_mode=True), (2, 3, 9)),
    # indices
    (MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True), (2, 3, 9, 11)),
    (MaxPool2d(2, 1, 2, dilation=4, return_indices=True), (2, 3, 7, 9)),
    (MaxPool3d(2, 2, 1, return_indices=True), (2, 2, 5, 5, 3)),
    # average: count_include_pad both ways with ceil_mode overhang, same_lower, override
    (AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True), (2, 3, 9, 11)),
    (AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 3, 9, 11)),
    (AvgPool1d(3, 2, ((1, 0),), ceil_mode=True), (2, 3, 10)),
    (AvgPool2d(4, 3, "same_lower", count_include_pad=True), (2, 3, 9, 10)),
    (AvgPool2d(4, 3, "same_lower", count_include_pad=False), (2, 3, 9, 10)),
    (AvgPool2d(2, 3, 1, divisor_override=3), (2, 3, 7, 8)),
    (AvgPool3d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 2, 5, 6, 7)),
    (AvgPool2d(3, 1, 0), (2, 3, 9, 9)),
    # dilated average (AveragePool-19 dilations, or Conv below opset 19)
    (AvgPool2d(3, 2, 2, dilation=2, count_include_pad=True), (2, 3, 9, 11)),
    (AvgPool2d(3, 2, 2, dilation=2, count_include_pad=False, ceil_mode=True), (2, 3, 9, 11)),
    (AvgPool1d(2, 1, 2, dilation=4), (2, 3, 7)),
    # Lp: integer p (LpPool), other p (decomposed), dilation, ceil_mode
    (LPPool2d(2, 3, 2, 1, ceil_mode=True), (2, 3, 9, 11)),
    (LPPool1d(1, 3, 2, ((0, 1),)), (2, 3, 9)),
    (LPPool2d(3, (2, 3), 2, dilation=2), (2, 3, 9, 11)),
    (LPPool2d(1.5, 3, 2, "same_lower"), (2, 3, 9, 10)),
    (LPPool3d(2.5, 2, 2, dilation=(1, 2, 1), ceil_mode=True), (2, 2, 5, 7, 5)),
    # padding_mode: edge / reflect / zeros -> Pad(mode) + pool
    (MaxPool2d(3, 2, 1, padding_mode="edge", return_indices=True), (2, 3, 9, 11)),
    (MaxPool2d(3, 2, 1, ceil_mode=True, padding_mode="zeros", return_indices=True),
     (2, 3, 9, 11)),
    (AvgPool2d(3, 2, 1, ceil_mode=True, padding_mode="reflect"), (2, 3, 9, 11)),
    (AvgPool1d(3, 2, 1, padding_mode="zeros", count_include_pad=False), (2, 3, 9)),
    (LPPool2d(2, 3, 2, 1, padding_mode="edge"), (2, 3, 9, 11)),
]


def _id(case):
    return repr(case[0])


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_pooling_exports_exactly(case):
    layer, shape = case
    proto = roundtrip(layer, rand(*shape))
    # cpool computes every pad: no runtime ceil_mode or auto_pad arithmetic is used.
    for op in ("MaxPool", "AveragePool", "LpPool"):
        for attrs in attributes(proto, op):
            assert attrs.get("ceil_mode", 0) == 0 and "auto_pad" not in attrs, attrs


@pytest.mark.parametrize("case", [c for c in CASES if "dilation" in repr(c[0])][:4], ids=_id)
def test_dilated_pooling_below_opset_19(case):
    layer, shape = case
    proto = roundtrip(layer, rand(*shape, seed=1), opset=18)
    for attrs in attributes(proto, "AveragePool"):
        assert "dilations" not in attrs


def test_dilated_average_uses_averagepool_19():
    proto = roundtrip(AvgPool2d(3, 2, 2, dilation=2), rand(2, 3, 9, 11), opset=19)
    assert attributes(proto, "AveragePool")[0]["dilations"] == [2, 2]
    assert "Conv" not in op_types(proto)
    proto = roundtrip(AvgPool2d(3, 2, 2, dilation=2), rand(2, 3, 9, 11), opset=18)
    assert "Conv" in op_types(proto)


def test_windows_of_padding_only_are_minus_inf():
    layer = MaxPool2d(2, 1, ((2, 2), (1, 1)), dilation=(3, 1))
    x = rand(2, 3, 2, 5)
    assert np.isneginf(layer(x)).any() and np.isfinite(layer(x)).any()
    roundtrip(layer, x)  # verify counts equal infinities as equal, any other gap as a miss


def test_float64_example_gives_a_float32_graph():
    layer = AvgPool2d(3, 2, 1, ceil_mode=True)
    proto = roundtrip(layer, rand(2, 3, 9, 11, dtype=np.float64))
    assert proto.graph.input[0].type.tensor_type.elem_type == 1  # FLOAT


def test_count_include_pad_differs_at_borders_and_verify_catches_it():
    """The graph of count_include_pad=True must not pass for a layer with False: the two
    rules really differ at the borders, and verify raises on the difference."""
    with_pad = AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True)
    without = AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
    x = rand(2, 3, 9, 11)
    assert np.abs(with_pad(x) - without(x)).max() > 1e-2
    proto = export(with_pad, x)
    with pytest.raises(VerificationError, match="over tolerance"):
        verify(without, proto)


def test_indices_are_per_plane_like_cpool():
    layer = MaxPool2d(3, 2, 1, return_indices=True)
    x = rand(3, 4, 7, 9, seed=5)
    proto = export(layer, x)
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values, indices = sess.run(None, {"input": x})
    want_values, want_indices = layer(x)
    np.testing.assert_array_equal(indices, want_indices)
    assert indices.max() < 7 * 9  # flat within each (n, c) plane, not the whole tensor
    assert np.abs(values - want_values).max() <= TOL
