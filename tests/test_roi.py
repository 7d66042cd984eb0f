"""RoI pooling and RoI align (functional API) against the slow NumPy reference in
tests/reference_roi.py, onnxruntime (MaxRoiPool; RoiAlign at opsets 10 and 16), ONNX's
own RoiAlign backend test cases, and a PyTorch grid_sample expression of aligned RoI
align; finite differences for every backward; thread invariance; untouched inputs;
errors."""
import numpy as np
import pytest

import cpool
from cpool import functional as F
from tests import reference_roi as R
from tests.test_pool import numeric_grad

DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}
IR_VERSION = 10

# Boxes on an 7x8 map: degenerate (a point, a sliver), partly and wholly outside,
# larger than the map, fractional, and one spanning more than the map's width.
ROIS = np.array([[2, 2, 2, 2], [1, 1, 1.3, 1], [0.5, 0.5, 3.5, 4], [-2, -1, 9, 9],
                 [1.2, 0.7, 6.1, 5.3], [3, 3, 30, 9], [10, 10, 12, 14],
                 [0.25, 0.75, 7.6, 6.4], [-3.5, -2.5, -0.2, 1.5], [30, 30, 40, 40]])
BATCH = np.array([0, 1, 1, 0, 1, 0, 1, 0, 1, 0])


@pytest.fixture
def restore_threads():
    yield
    cpool.set_num_threads(None)


@pytest.fixture
def one_thread(restore_threads):
    # finite differences make hundreds of tiny calls; skip the thread hand-off
    cpool.set_num_threads(1)


def case(dtype, seed=0, shape=(2, 3, 7, 8)):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    return x, ROIS.astype(dtype), BATCH.copy()


# --------------------------------------------------------------------------------------
# roi_pool
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5])
@pytest.mark.parametrize("out", [(3, 2), (1, 1), (4, 5)])
def test_roi_pool_matches_reference(dtype, scale, out):
    x, rois, b = case(dtype)
    y, idx = F.roi_pool(x, rois, b, out, spatial_scale=scale, return_indices=True)
    ry, ridx = R.roi_pool(x, rois, b, out, scale)
    assert y.dtype == dtype and idx.dtype == np.int64 and y.shape == (len(rois), 3) + out
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    assert (idx == -1).any() and (idx >= 0).any()  # the cases include empty bins


def test_roi_pool_rounds_halves_away_from_zero():
    # x1 * scale = 2.5 rounds to 3 (C round), not 2 (Python's banker's rounding)
    x = np.arange(2 * 1 * 1 * 8, dtype=np.float64).reshape(2, 1, 1, 8)[:1]
    y, idx = F.roi_pool(x, [[5.0, 0, 5.0, 0]], [0], 1, spatial_scale=0.5, return_indices=True)
    assert R.c_round(2.5) == 3 and idx.item() == 3 and y.item() == 3.0


def test_roi_pool_ties_and_nan_go_to_the_first():
    x = np.zeros((1, 2, 2, 3))
    x[0, 0] = [[1, 5, 5], [5, 0, 2]]
    x[0, 1] = [[1, np.nan, 7], [np.nan, 0, 9]]
    y, idx = F.roi_pool(x, [[0, 0, 2, 1]], [0], 1, return_indices=True)
    assert idx[0, 0, 0, 0] == 1 and y[0, 0, 0, 0] == 5
    assert idx[0, 1, 0, 0] == 1 and np.isnan(y[0, 1, 0, 0])
    ry, ridx = R.roi_pool(x, np.array([[0, 0, 2, 1.0]]), [0], (1, 1))
    np.testing.assert_array_equal(idx, ridx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool_backward_matches_reference_and_finite_differences(dtype, one_thread):
    x, rois, b = case(dtype, seed=1)
    y, idx = F.roi_pool(x, rois, b, (3, 2), spatial_scale=0.5, return_indices=True)
    g = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    grad = F.roi_pool_backward(g, idx, b, x.shape)
    np.testing.assert_allclose(grad, R.roi_pool_grad(g, R.roi_pool(x, rois, b, (3, 2), 0.5)[1],
                                                     b, x.shape), **TOL[np.dtype(dtype)])
    if dtype == np.float64:
        num = numeric_grad(lambda v: F.roi_pool(v, rois, b, (3, 2), spatial_scale=0.5),
                           x.copy(), g)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_roi_pool_vs_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    x, rois, b = case(np.float32, seed=3)
    for opset, scale, out in [(10, 1.0, (3, 2)), (16, 0.5, (2, 4)), (16, 1.5, (1, 1))]:
        # ONNX's boxes are (batch_index, x1, y1, x2, y2); MaxRoiPool is unchanged since opset 1
        got = run_ort(ort, "MaxRoiPool", dict(pooled_shape=list(out), spatial_scale=scale),
                      [x, np.column_stack([b, rois]).astype(np.float32)], opset)
        np.testing.assert_array_equal(F.roi_pool(x, rois, b, out, spatial_scale=scale), got)


# --------------------------------------------------------------------------------------
# roi_align
# --------------------------------------------------------------------------------------

ALIGN_CASES = [dict(aligned=a, sampling_ratio=s, spatial_scale=sc)
               for a in (False, True) for s in (0, 1, 2) for sc in (1.0, 0.5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("opts", ALIGN_CASES)
def test_roi_align_matches_reference(dtype, mode, opts):
    x, rois, b = case(dtype)
    y = F.roi_align(x, rois, b, (3, 2), mode=mode, **opts)
    assert y.dtype == dtype and y.shape == (len(rois), 3, 3, 2)
    np.testing.assert_allclose(y, R.roi_align(x, rois, b, (3, 2), mode=mode, **opts),
                               **TOL[np.dtype(dtype)])


def test_roi_align_max_is_the_max_of_weighted_corner_terms():
    # one sample at (y, x) = (0.25, 0.5) of a 2x2 map: ONNX's max takes the largest of
    # the four terms w * x, not the interpolated value
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    roi = [[0, -0.25, 1, 0.75]]  # output_half_pixel, one 1x1 bin, one sample
    got = F.roi_align(x, roi, [0], 1, sampling_ratio=1, mode="max")
    w = [0.75 * 0.5, 0.75 * 0.5, 0.25 * 0.5, 0.25 * 0.5]
    assert got.item() == pytest.approx(max(wi * v for wi, v in zip(w, [1, 2, 3, 4])))
    assert F.roi_align(x, roi, [0], 1, sampling_ratio=1).item() == pytest.approx(
        sum(wi * v for wi, v in zip(w, [1, 2, 3, 4])))
    # a term of weight 0 counts as 0: negative inputs on a pixel row give 0
    assert F.roi_align(-x, [[0, 0, 1, 0]], [0], 1, sampling_ratio=1, mode="max",
                       aligned=True).item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_vs_onnxruntime_opset16(dtype, mode):
    ort = pytest.importorskip("onnxruntime")
    x, rois, b = case(dtype, seed=4)
    for opts in ALIGN_CASES:
        attrs = dict(output_height=3, output_width=2, mode=mode,
                     sampling_ratio=opts["sampling_ratio"], spatial_scale=opts["spatial_scale"],
                     coordinate_transformation_mode="half_pixel" if opts["aligned"]
                     else "output_half_pixel")
        got = run_ort(ort, "RoiAlign", attrs, [x, rois, b.astype(np.int64)], 16)
        np.testing.assert_allclose(F.roi_align(x, rois, b, (3, 2), mode=mode, **opts), got,
                                   rtol=2e-5, atol=1e-6, err_msg=str(opts))


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_vs_onnxruntime_opset10_is_output_half_pixel(mode):
    ort = pytest.importorskip("onnxruntime")
    x, rois, b = case(np.float32, seed=5)
    for sr in (0, 2):
        got = run_ort(ort, "RoiAlign", dict(output_height=2, output_width=3, mode=mode,
                                            sampling_ratio=sr, spatial_scale=0.5),
                      [x, rois, b.astype(np.int64)], 10)
        np.testing.assert_allclose(F.roi_align(x, rois, b, (2, 3), spatial_scale=0.5,
                                               sampling_ratio=sr, aligned=False, mode=mode),
                                   got, rtol=2e-5, atol=1e-6)


def onnx_backend_roialign_cases():
    """(node, inputs, outputs, name) of every case in onnx's roialign.py."""
    pytest.importorskip("onnx")
    from onnx.backend.test.case.node import roialign

    cases = []
    saved = roialign.expect
    roialign.expect = lambda node, inputs, outputs, name, **kw: cases.append(
        (node, inputs, outputs, name))
    try:
        for attr in dir(roialign.RoiAlign):
            if attr.startswith("export"):
                getattr(roialign.RoiAlign, attr)()
    finally:
        roialign.expect = saved
    return cases


def test_onnx_backend_roialign_cases():
    from onnx import helper

    cases = onnx_backend_roialign_cases()
    assert len(cases) >= 3
    for node, (x, rois, b), (expected,), name in cases:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ctm = attrs.get("coordinate_transformation_mode", b"half_pixel")
        got = F.roi_align(x, rois, b, (attrs.get("output_height", 1), attrs.get("output_width", 1)),
                          spatial_scale=attrs.get("spatial_scale", 1.0),
                          sampling_ratio=attrs.get("sampling_ratio", 0),
                          aligned=(ctm == b"half_pixel"),
                          mode=attrs.get("mode", b"avg").decode())
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4, err_msg=name)


def torch_roi_align(torch, xt, rois, b, out_hw, scale, sr):
    """torchvision's roi_align(aligned=True, sampling_ratio=sr) for boxes whose samples
    lie in [-1, size] per axis, written with grid_sample: torchvision clamps such samples
    to the border, which is grid_sample's padding_mode="border"."""
    OH, OW = out_hw
    N, C, H, W = xt.shape
    r = torch.as_tensor(rois, dtype=xt.dtype) * scale - 0.5
    ys = r[:, 1:2] + (torch.arange(OH * sr, dtype=xt.dtype) + 0.5) / sr * \
        ((r[:, 3] - r[:, 1]) / OH)[:, None]
    xs = r[:, 0:1] + (torch.arange(OW * sr, dtype=xt.dtype) + 0.5) / sr * \
        ((r[:, 2] - r[:, 0]) / OW)[:, None]
    gy = 2 * ys / (H - 1) - 1
    gx = 2 * xs / (W - 1) - 1
    outs = [None] * len(rois)
    for n in range(N):
        ks = [k for k in range(len(rois)) if b[k] == n]
        if not ks:
            continue
        grid = torch.stack([torch.stack(torch.broadcast_tensors(gx[k][None, :], gy[k][:, None]),
                                        -1) for k in ks])  # (Kn, OH*sr, OW*sr, 2)
        s = torch.nn.functional.grid_sample(xt[n:n + 1], grid.reshape(1, -1, OW * sr, 2),
                                            mode="bilinear", padding_mode="border",
                                            align_corners=True)
        s = s.reshape(C, len(ks), OH * sr, OW * sr).transpose(0, 1)
        pooled = torch.nn.functional.avg_pool2d(s, sr)
        for i, k in enumerate(ks):
            outs[k] = pooled[i]
    return torch.stack(outs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_vs_torch_grid_sample(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 9, 11)).astype(dtype)
    scale, sr = 0.5, 2
    lo = rng.uniform(0, 14, size=(12, 2))
    hi = np.minimum(lo + rng.uniform(0, 12, size=(12, 2)), [21, 17])
    rois = np.column_stack([lo, hi])[:, [0, 1, 2, 3]].astype(dtype)
    b = rng.integers(0, 2, 12)
    y = F.roi_align(x, rois, b, (3, 4), spatial_scale=scale, sampling_ratio=sr, aligned=True)
    xt = torch.tensor(x, requires_grad=True)
    ty = torch_roi_align(torch, xt, rois, b, (3, 4), scale, sr)
    np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[np.dtype(dtype)])
    g = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.tensor(g))
    grad = F.roi_align_backward(g, rois, b, x.shape, spatial_scale=scale, sampling_ratio=sr,
                                aligned=True)
    np.testing.assert_allclose(grad, xt.grad.numpy(), **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_backward_finite_differences(mode, aligned, one_thread):
    x, rois, b = case(np.float64, seed=7, shape=(2, 2, 7, 8))
    kw = dict(spatial_scale=0.5, sampling_ratio=0, aligned=aligned, mode=mode)
    y = F.roi_align(x, rois, b, (3, 2), **kw)
    g = np.random.default_rng(8).standard_normal(y.shape)
    grad = F.roi_align_backward(g, rois, b, x.shape, x=x if mode == "max" else None, **kw)
    np.testing.assert_allclose(grad, R.roi_align_grad(g, x, rois, b, **kw), rtol=1e-12,
                               atol=1e-12)
    num = numeric_grad(lambda v: F.roi_align(v, rois, b, (3, 2), **kw), x.copy(), g)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_roi_align_backward_float32_matches_reference():
    x, rois, b = case(np.float32, seed=9)
    for mode in ("avg", "max"):
        y = F.roi_align(x, rois, b, (2, 3), sampling_ratio=2, mode=mode)
        g = np.random.default_rng(10).standard_normal(y.shape).astype(np.float32)
        grad = F.roi_align_backward(g, rois, b, x.shape, sampling_ratio=2, mode=mode, x=x)
        assert grad.dtype == np.float32
        np.testing.assert_allclose(grad, R.roi_align_grad(g, x, rois, b, sampling_ratio=2,
                                                          mode=mode), rtol=2e-5, atol=2e-6)


# --------------------------------------------------------------------------------------
# Channel blocks, threads, dtypes, untouched inputs
# --------------------------------------------------------------------------------------

def big_case(seed=11):
    """More channels than one block (64), a plane big enough to shrink the block (32),
    three images and overlapping boxes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 70, 40, 40)).astype(np.float32)
    lo = rng.uniform(-4, 30, size=(24, 2))
    rois = np.column_stack([lo, lo + rng.uniform(0, 20, size=(24, 2))]).astype(np.float32)
    return x, rois, rng.integers(0, 3, 24)


def test_channel_blocks_match_reference_on_a_subset():
    x, rois, b = big_case()
    x = np.ascontiguousarray(x[:, :, :30, :36])  # a 1080-pixel plane: blocks of 64 and 6
    sel = [0, 5, 11]
    for mode in ("avg", "max"):
        y = F.roi_align(x, rois, b, 2, spatial_scale=0.8, mode=mode)
        ref = R.roi_align(x[:, ::9], rois[sel], b[sel], (2, 2), spatial_scale=0.8, mode=mode)
        np.testing.assert_allclose(y[sel][:, ::9], ref, rtol=2e-5, atol=2e-6)
    y, idx = F.roi_pool(x, rois, b, 3, spatial_scale=0.8, return_indices=True)
    ry, ridx = R.roi_pool(x[:, ::9], rois[sel], b[sel], (3, 3), 0.8)
    np.testing.assert_array_equal(y[sel][:, ::9], ry)
    np.testing.assert_array_equal(idx[sel][:, ::9], ridx)


def test_one_and_two_threads_are_bitwise_identical(restore_threads):
    x, rois, b = big_case()
    results = []
    for threads in (1, 2):
        cpool.set_num_threads(threads)
        r = {}
        r["pool"], idx = F.roi_pool(x, rois, b, 4, spatial_scale=0.5, return_indices=True)
        g = np.random.default_rng(0).standard_normal(r["pool"].shape).astype(np.float32)
        r["pool_bwd"] = F.roi_pool_backward(g, idx, b, x.shape)
        for mode in ("avg", "max"):
            r[mode] = F.roi_align(x, rois, b, 4, spatial_scale=0.5, mode=mode)
            r[mode + "_bwd"] = F.roi_align_backward(g, rois, b, x.shape, spatial_scale=0.5,
                                                    mode=mode, x=x)
        results.append(r)
    for key in results[0]:
        assert np.array_equal(results[0][key], results[1][key], equal_nan=True), key


def test_float16_and_integer_inputs_and_lists():
    x, rois, b = case(np.float32)
    y16 = F.roi_align(x.astype(np.float16), rois, b, 2)
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, F.roi_align(x.astype(np.float16).astype(np.float32), rois,
                                                b, 2), rtol=1e-3, atol=1e-3)
    xi = (x * 10).astype(np.int32)
    yi = F.roi_pool(xi, rois.tolist(), b.tolist(), 2)
    assert yi.dtype == np.float64
    np.testing.assert_array_equal(yi, R.roi_pool(xi.astype(np.float64), rois.astype(np.float64),
                                                 b, (2, 2))[0])


def test_no_rois_and_no_channels():
    x = np.zeros((2, 3, 4, 4), np.float32)
    assert F.roi_align(x, np.zeros((0, 4)), [], 2).shape == (0, 3, 2, 2)
    assert F.roi_pool(x, [], [], 2).shape == (0, 3, 2, 2)
    grad = F.roi_align_backward(np.zeros((0, 3, 2, 2), np.float32), np.zeros((0, 4)), [],
                                x.shape)
    assert grad.shape == x.shape and not grad.any()
    assert F.roi_align(x[:, :0], [[0, 0, 1, 1]], [1], 2).shape == (1, 0, 2, 2)


def test_inputs_are_not_modified():
    x, rois, b = case(np.float64)
    x.flags.writeable = False
    rois.flags.writeable = False
    b.flags.writeable = False
    x0, r0, b0 = x.copy(), rois.copy(), b.copy()
    y, idx = F.roi_pool(x, rois, b, 2, return_indices=True)
    g = np.ones_like(y)
    g.flags.writeable = False
    F.roi_pool_backward(g, idx, b, x.shape)
    for mode in ("avg", "max"):
        F.roi_align(x, rois, b, 2, mode=mode)
        F.roi_align_backward(g, rois, b, x.shape, mode=mode, x=x)
    for a, a0 in [(x, x0), (rois, r0), (b, b0), (g, np.ones_like(y))]:
        np.testing.assert_array_equal(a, a0)


# --------------------------------------------------------------------------------------
# Errors: raised before any kernel runs, naming the argument
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["roi_pool", "roi_align"])
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_indices=[0, 2]), ValueError, "batch_indices"),
    (dict(batch_indices=[0, -1]), ValueError, "batch_indices"),
    (dict(batch_indices=[0]), ValueError, "batch_indices"),
    (dict(batch_indices=[0.0, 1.0]), TypeError, "batch_indices"),
    (dict(rois=[[0, 0, 1, 1], [3, 0, 2, 1]]), ValueError, "x2 >= x1"),
    (dict(rois=[[0, 0, 1, 1], [0, 3, 2, 1]]), ValueError, "y2 >= y1"),
    (dict(rois=[[0, 0, 1], [0, 0, 1]]), ValueError, "rois"),
    (dict(rois=[[0, 0, 1, np.nan], [0, 0, 1, 1]]), ValueError, "rois"),
    (dict(rois=[["a", "b", "c", "d"]] * 2), TypeError, "rois"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=(2, -1)), ValueError, "output_size"),
    (dict(output_size=(2, 2, 2)), ValueError, "output_size"),
    (dict(output_size=2.5), TypeError, "output_size"),
    (dict(spatial_scale=0), ValueError, "spatial_scale"),
    (dict(x=np.zeros((3, 4, 4))), ValueError, "x"),
    (dict(x=np.zeros((2, 3, 0, 4))), ValueError, "x"),
])
def test_bad_arguments(fn, kwargs, error, match):
    args = dict(x=np.zeros((2, 3, 4, 4)), rois=[[0, 0, 1, 1], [1, 1, 2, 3]],
                batch_indices=[0, 1], output_size=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        getattr(F, fn)(**args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sampling_ratio=-1), ValueError, "sampling_ratio"),
    (dict(sampling_ratio=1.5), TypeError, "sampling_ratio"),
    (dict(aligned="yes"), TypeError, "aligned"),
    (dict(mode="sum"), ValueError, "mode"),
])
def test_bad_align_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        F.roi_align(np.zeros((1, 1, 3, 3)), [[0, 0, 1, 1]], [0], 2, **kwargs)


def test_bad_backward_arguments():
    x, rois, b = case(np.float64)
    y, idx = F.roi_pool(x, rois, b, 2, return_indices=True)
    g = np.ones_like(y)
    with pytest.raises(ValueError, match="grad_output"):
        F.roi_pool_backward(g[:, :, :1], idx, b, x.shape)
    with pytest.raises(ValueError, match="indices"):
        F.roi_pool_backward(g, idx + 100, b, x.shape)
    with pytest.raises(TypeError, match="indices"):
        F.roi_pool_backward(g, idx.astype(float), b, x.shape)
    with pytest.raises(ValueError, match="batch_indices"):
        F.roi_pool_backward(g, idx, b + 5, x.shape)
    with pytest.raises(ValueError, match="input_shape"):
        F.roi_pool_backward(g, idx, b, x.shape[1:])
    with pytest.raises(ValueError, match="grad_output"):
        F.roi_align_backward(g[:5], rois, b, x.shape)
    with pytest.raises(ValueError, match="needs x"):
        F.roi_align_backward(g, rois, b, x.shape, mode="max")
    with pytest.raises(ValueError, match="input_shape"):
        F.roi_align_backward(g, rois, b, x.shape, mode="max", x=x[:1])


# --------------------------------------------------------------------------------------
# onnxruntime helper
# --------------------------------------------------------------------------------------

def run_ort(ort, op, attrs, inputs, opset):
    from onnx import TensorProto, helper

    names = ["X", "rois", "batch_indices"][:len(inputs)]
    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
             np.dtype(np.int64): TensorProto.INT64}
    node = helper.make_node(op, names, ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, types[a.dtype], a.shape)
                      for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("Y", types[inputs[0].dtype], None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=IR_VERSION)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # RoiAlign max mode logs a warning on every session
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, inputs)))[0]


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_rows_read_as_needed_give_the_whole_planes_bits(mode, sampling_ratio):
    """Channels-first RoI align transposes whole planes for an image with many RoIs and
    only the rows its RoIs read for one with few: the same bits, RoIs partly outside the
    map (their samples there read pixel 0, NaN included) and beyond the map too."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 70, 24, 20)).astype(np.float32)
    x[0, :, 0, 0] = np.nan
    x[1, 3, 10:12, 4:9] = np.nan
    lo = rng.uniform(-6, 22, size=(20, 2))
    rois = np.column_stack([lo, lo + rng.uniform(0, 12, size=(20, 2))]).astype(np.float32)
    b = np.zeros(20, np.int64)
    b[::5] = 1  # image 0: 16 RoIs (whole planes), image 1: 4 (rows as needed)
    kw = dict(mode=mode, sampling_ratio=sampling_ratio, spatial_scale=0.9)
    clean = np.nan_to_num(x)
    for inp in (x, clean):
        whole = F.roi_align(inp, rois, b, (3, 4), **kw)
        parts = np.concatenate([F.roi_align(inp, rois[i:i + 3], b[i:i + 3], (3, 4), **kw)
                                for i in range(0, 20, 3)])
        assert whole.tobytes() == parts.tobytes()
    ref = R.roi_align(clean[:, ::7], rois, b, (3, 4), **kw)
    np.testing.assert_allclose(whole[:, ::7], ref, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_gives_the_same_bits_at_every_simd_level(dtype):
    # The average's bins sum (and their gradients spread) in registers on AVX-512
    # (select_rows.h cs_taps_sum, cs_taps_spread): the same products and additions in
    # the same order as the baseline's. Channel counts that fill no 128-channel pass
    # (channels-last), one and two, then 64-channel passes with a partial last one, and a
    # sampling ratio of 0 (adaptive) whose bins read many taps; both layouts.
    from tests.pool_cases import assert_identical_bits, runs_at_every_simd_level
    rng = np.random.default_rng(5)
    for channels in (3, 64, 150, 300):
        x = rng.standard_normal((2, channels, 9, 11)).astype(dtype)
        x.reshape(-1)[rng.choice(x.size, 5, replace=False)] = rng.choice([-0.0, 0.0], 5)
        xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        rois = ROIS[:8].astype(dtype)
        b = BATCH[:8].copy()

        g = rng.standard_normal((len(rois), channels, 3, 4)).astype(dtype)
        gl = np.ascontiguousarray(np.moveaxis(g, 1, -1))

        def run():
            out = []
            for ratio in (2, 0):
                kw = dict(spatial_scale=0.9, sampling_ratio=ratio)
                out.append(F.roi_align(x, rois, b, (3, 4), **kw))
                out.append(F.roi_align(xl, rois, b, (3, 4), channels_last=True, **kw))
                out.append(F.roi_align_backward(g, rois, b, x.shape, **kw))
                out.append(F.roi_align_backward(gl, rois, b, xl.shape, channels_last=True,
                                                **kw))
            return out
        runs = runs_at_every_simd_level(run)
        assert_identical_bits(runs)
        ref = R.roi_align(x, rois, b, (3, 4), spatial_scale=0.9, sampling_ratio=2)
        np.testing.assert_allclose(runs[0][0], ref, **TOL[np.dtype(dtype)])
        np.testing.assert_array_equal(runs[0][1], np.moveaxis(runs[0][0], 1, -1))
        ref = R.roi_align_grad(g, x, rois, b, spatial_scale=0.9, sampling_ratio=2)
        np.testing.assert_allclose(runs[0][2], ref, **TOL[np.dtype(dtype)])
        np.testing.assert_array_equal(runs[0][3], np.moveaxis(runs[0][2], 1, -1))
