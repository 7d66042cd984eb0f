"""Export of the pooling family: global, adaptive (divisible and not), BinPool, spatial
pyramid, max unpooling and fractional max pooling."""
import numpy as np
import pytest

from tests.onnx.util import TOL, op_types, rand, roundtrip

from cpool import functional as F
from cpool.layers import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveAvgPool3d,
                          AdaptiveMaxPool1d, AdaptiveMaxPool2d, AdaptiveMaxPool3d, BinPool,
                          FractionalMaxPool2d, FractionalMaxPool3d, GlobalAvgPool, GlobalLPPool,
                          GlobalMaxPool, MaxUnpool1d, MaxUnpool2d, MaxUnpool3d,
                          SpatialPyramidPool)
from cpool.layers.roi import RoIAlign, RoIPool
from cpool.layers.sequence import SequencePool
from cpool.onnx import OpsetError, default_opset, export, verify

CASES = [
    (GlobalMaxPool(), (2, 3, 9, 11)),
    (GlobalAvgPool(keepdims=True), (2, 3, 9, 11)),
    (GlobalMaxPool(keepdims=True), (2, 3, 7)),
    (GlobalAvgPool(), (2, 2, 3, 5, 7)),
    (GlobalLPPool(3), (2, 3, 7)),
    (GlobalLPPool(1.5, keepdims=True), (2, 2, 3, 5, 7)),
    # adaptive: divisible (one pool op) and non-divisible (exact decomposition)
    (AdaptiveAvgPool2d((3, 5)), (2, 3, 9, 10)),
    (AdaptiveMaxPool2d(3), (2, 3, 9, 9)),
    (AdaptiveAvgPool2d((4, 4)), (2, 3, 9, 10)),
    (AdaptiveMaxPool2d((4, 3)), (2, 3, 9, 11)),
    (AdaptiveAvgPool2d(13), (2, 3, 9, 11)),
    (AdaptiveMaxPool1d(5), (2, 3, 7)),
    (AdaptiveAvgPool1d(3), (2, 3, 7)),
    (AdaptiveAvgPool3d((2, None, 3)), (2, 2, 5, 6, 7)),
    (AdaptiveMaxPool3d((2, 3, 4)), (2, 2, 5, 7, 9)),
    (AdaptiveMaxPool2d((4, 3), return_indices=True), (2, 3, 9, 11)),
    (AdaptiveMaxPool1d(3, return_indices=True), (2, 3, 7)),
    (AdaptiveMaxPool3d(3, return_indices=True), (2, 2, 5, 6, 7)),
    # variable-scale bins: gaps, overlaps, different sizes
    (BinPool([[(0, 3), (2, 9), (5, 6)], [(1, 4), (4, 11)]], "max"), (2, 3, 9, 11)),
    (BinPool([[(0, 3), (2, 9), (5, 6)], [(1, 4), (4, 11)]], "avg"), (2, 3, 9, 11)),
    (BinPool([[(0, 3), (2, 9)], [(1, 4), (4, 11)]], "lp", p=2.5), (2, 3, 9, 11)),
    (BinPool([[(0, 2), (2, 4), (4, 6)]], "lp", p=2), (2, 3, 7)),
    (BinPool([[(0, 2), (2, 4)], [(0, 5)], [(1, 3), (3, 6)]], "avg"), (2, 2, 5, 5, 7)),
    # spatial pyramids
    (SpatialPyramidPool(), (2, 3, 9, 11)),
    (SpatialPyramidPool((1, 3), "avg"), (2, 3, 13, 13)),
    (SpatialPyramidPool((2, 5), "max"), (2, 3, 7, 9)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: repr(c[0]))
def test_family_layer_exports_exactly(case):
    layer, shape = case
    roundtrip(layer, rand(*shape))


def test_divisible_adaptive_is_one_pool_op_and_non_divisible_is_decomposed():
    assert op_types(roundtrip(AdaptiveAvgPool2d((3, 5)), rand(2, 3, 9, 10))) == ["AveragePool"]
    ops = op_types(roundtrip(AdaptiveAvgPool2d((4, 4)), rand(2, 3, 9, 10)))
    assert "AveragePool" not in ops and "Slice" in ops and "ReduceSum" in ops


def test_adaptive_bins_overlap_where_sizes_do_not_divide():
    """The case torch.onnx refuses: 9 -> 4 has overlapping bins of two sizes."""
    bins = [(i * 9 // 4, -(-(i + 1) * 9 // 4)) for i in range(4)]
    assert bins == [(0, 3), (2, 5), (4, 7), (6, 9)]
    layer = AdaptiveMaxPool2d((4, 4), return_indices=True)
    x = rand(2, 3, 9, 9, seed=3)
    roundtrip(layer, x)


def test_spatial_pyramid_layout():
    layer = SpatialPyramidPool((1, 2), "max")
    x = rand(2, 3, 9, 11)
    roundtrip(layer, x)
    out = layer(x)
    assert out.shape == (2, 3 * (1 + 4))
    np.testing.assert_array_equal(out[:, :3], x.max(axis=(2, 3)))


def _unpool_example(layer_cls, pool, shape, kernel, stride, padding, seed=0):
    big = rand(*shape, seed=seed)
    values, indices = pool(big, kernel, stride, padding, return_indices=True)
    return layer_cls(kernel, stride, padding), (values, indices)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_unpool(nd):
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    cls = {1: MaxUnpool1d, 2: MaxUnpool2d, 3: MaxUnpool3d}[nd]
    shape = {1: (2, 3, 9), 2: (2, 3, 7, 9), 3: (2, 2, 5, 5, 7)}[nd]
    layer, example = _unpool_example(cls, pool, shape, 3, 2, 1)
    proto = roundtrip(layer, example)
    assert "MaxUnpool" in op_types(proto)
    assert [i.name for i in proto.graph.input] == ["input", "indices"]


def test_max_unpool_duplicate_indices_later_wins():
    layer = MaxUnpool1d(2, 1)
    values = rand(2, 3, 6, seed=1)
    indices = np.tile(np.array([0, 1, 1, 2, 2, 6]), (2, 3, 1))
    roundtrip(layer, (values, indices), inputs=[(values, indices)])


@pytest.mark.parametrize("layer,shape", [
    (FractionalMaxPool2d(2, output_size=(5, 4), seed=0), (2, 3, 9, 10)),
    (FractionalMaxPool2d((3, 2), output_ratio=0.6, return_indices=True, seed=1), (2, 3, 9, 11)),
    (FractionalMaxPool3d(2, output_size=(3, 4, 5), return_indices=True, seed=2), (2, 2, 7, 6, 8)),
], ids=repr)
def test_fractional_max_pool_with_fixed_intervals(layer, shape):
    x = rand(*shape)
    layer(x)  # a training forward: the exported intervals are this forward's
    samples = layer.random_samples.copy()
    proto = export(layer, x)
    # The graph's intervals are those of batch element 0, for every batch element, so it
    # equals cpool's functional form given those samples, whatever the batch size.
    import onnxruntime as ort
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x7 = rand(7, *shape[1:], seed=9)
    fixed = np.broadcast_to(samples[0], (7,) + samples.shape[1:])
    fn = F.fractional_max_pool2d if layer.nd == 2 else F.fractional_max_pool3d
    want = fn(x7, layer.kernel_size, layer.output_size, layer.output_ratio,
              return_indices=True, random_samples=fixed)
    got = sess.run(None, {"input": x7})
    np.testing.assert_array_equal(got[0], want[0])
    if layer.return_indices:
        np.testing.assert_array_equal(got[1], want[1])
    assert len(set(map(tuple, samples[0]))) > 1  # channels do have different windows
    roundtrip(layer, x)


# ----------------------------------------------------------------------------- RoI
ROIS = np.array([[0, 0, 4, 5], [1.5, 2.2, 8.1, 7.7], [3, 3, 3, 3], [-2, 1, 12, 12.6]],
                np.float32)
BATCH = np.array([0, 1, 1, 0])


@pytest.mark.parametrize("layer", [
    RoIPool((2, 3)), RoIPool(3, spatial_scale=0.5),
    RoIAlign((2, 2)), RoIAlign(3, 0.5, sampling_ratio=2, aligned=True),
    RoIAlign((2, 3), mode="max"), RoIAlign((3, 2), 1.0, 2, aligned=True, mode="max"),
], ids=repr)
def test_roi_layers(layer):
    x = rand(2, 3, 9, 11)
    proto = roundtrip(layer, (x, ROIS, BATCH))
    assert [i.name for i in proto.graph.input] == ["input", "rois", "batch_indices"]
    assert proto.graph.input[1].type.tensor_type.shape.dim[0].dim_param == "K"
    # onnxruntime has no kernel for MaxRoiPool-22 / RoiAlign-22: the default opset drops
    # to the highest that runs, 21.
    assert proto.opset_import[0].version == min(21, default_opset())
    roundtrip(layer, (x, ROIS, BATCH), opset=16)


def test_roi_align_aligned_needs_opset_16():
    x = rand(2, 3, 9, 11)
    with pytest.raises(OpsetError, match=r"RoIAlign\(.*aligned=True.*opset >= 16"):
        export(RoIAlign(3, aligned=True), (x, ROIS, BATCH), opset=15)
    roundtrip(RoIAlign(3, aligned=False), (x, ROIS, BATCH), opset=13)


@pytest.mark.skipif(default_opset() < 22, reason="needs an onnx/onnxruntime with opset 22")
def test_roi_at_an_opset_onnxruntime_cannot_run_names_the_layer():
    with pytest.raises(OpsetError, match=r"RoiAlign \(for RoIAlign.*opset <= 21"):
        export(RoIAlign(3), (rand(2, 3, 9, 11), ROIS, BATCH), opset=22)


# ----------------------------------------------------------------------------- sequences
LENGTH_VECTORS = [np.array([6, 0, 3, 1]), np.array([1, 6, 6, 2]), np.array([4, 5, 0, 0])]


@pytest.mark.parametrize("layout", ["NLC", "NCL"])
@pytest.mark.parametrize("mode", ["mean", "max", "sum", "first", "last"])
def test_sequence_pool_with_lengths(mode, layout):
    layer = SequencePool(mode, layout)
    shape = (4, 6, 5) if layout == "NLC" else (4, 5, 6)
    x = rand(*shape)
    proto = roundtrip(layer, (x, LENGTH_VECTORS[0]))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == (["N", "L", 5] if layout == "NLC" else ["N", 5, "L"])
    assert "ArgMax" not in op_types(proto) and "ArgMin" not in op_types(proto)
    # three different length vectors, another batch size and another (odd) length
    cases = [(x, lengths) for lengths in LENGTH_VECTORS]
    longer = rand(2, 9, 5, seed=1) if layout == "NLC" else rand(2, 5, 9, seed=1)
    cases.append((longer, np.array([9, 7])))
    assert max(verify(layer, proto, inputs=cases).values()) <= TOL


@pytest.mark.parametrize("mode", ["mean", "max", "sum", "first", "last"])
def test_sequence_pool_with_mask(mode):
    layer = SequencePool(mode)
    x = rand(4, 7, 3)
    mask = np.array([[1, 0, 1, 1, 0, 0, 1], [0] * 7, [1] * 7, [0, 0, 0, 1, 1, 0, 0]])
    proto = roundtrip(layer, (x, mask))
    assert [i.name for i in proto.graph.input] == ["input", "mask"]
    roundtrip(layer, (x, mask.astype(bool)), inputs=[(x, mask.astype(bool))])


def test_sequence_pool_padded_steps_never_leak():
    layer = SequencePool("mean")
    x = rand(2, 5, 3)
    x[0, 3:] = np.nan
    x[1, 1:] = np.inf
    lengths = np.array([3, 1])
    assert np.isfinite(layer(x, lengths=lengths)).all()
    roundtrip(layer, (x, lengths), inputs=[(x, lengths)])


def test_sequence_pool_without_lengths():
    roundtrip(SequencePool("last", "NCL"), rand(2, 3, 7))
