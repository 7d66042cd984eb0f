"""Max unpooling (functional) against the NumPy reference, PyTorch, onnxruntime and ONNX's
own backend test cases; gradients by finite differences; threads; errors."""
import importlib
import math

import numpy as np
import pytest

import cpool
from cpool import functional as F
from tests import reference_unpool as RU
from tests.pool_cases import rng_for
from tests.test_pool import bits, numeric_grad

DTYPES = (np.float32, np.float64)
SPATIAL = {1: (7,), 2: (4, 5), 3: (3, 4, 2)}


def unpool(nd, backward=False):
    return getattr(F, f"max_unpool{nd}d" + ("_backward" if backward else ""))


def random_unpool_case(rng, nd, dtype, distinct=False, default_size=False, max_in=4):
    """x, per-plane indices, window, output spatial size, default size.

    Indices are random (with repeats) unless `distinct`; the output size is random within
    PyTorch's allowed range unless `default_size`."""
    while True:
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        stride = tuple(int(v) for v in rng.integers(1, 4, nd))
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        in_size = tuple(int(v) for v in rng.integers(1, max_in + 1, nd))
        default = RU.unpool_default_size(in_size, kernel, stride, padding)
        if min(default) <= 0:
            continue
        out_spatial = default if default_size else tuple(
            int(rng.integers(max(d - s + 1, 1), d + s)) for d, s in zip(default, stride))
        plane, m = math.prod(out_spatial), math.prod(in_size)
        if plane >= m or not distinct:
            break
    lead = (int(rng.integers(1, 3)), int(rng.integers(1, 4)))
    x = rng.standard_normal(lead + in_size).astype(dtype)
    if distinct:
        idx = np.stack([rng.permutation(plane)[:m] for _ in range(lead[0] * lead[1])])
        idx = idx.reshape(lead + in_size)
    else:
        idx = rng.integers(0, plane, lead + in_size)
    window = dict(kernel_size=kernel, stride=stride, padding=padding)
    return x, idx, window, out_spatial, default


# --------------------------------------------------------------------------------------
# Against the reference.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_forward_and_backward_match_reference(nd, dtype):
    rng = rng_for("unpool-ref", nd, dtype)
    for trial in range(8):
        x, idx, window, out_spatial, default = random_unpool_case(rng, nd, dtype)
        size = None if out_spatial == default and trial % 2 else out_spatial
        out = unpool(nd)(x, idx, **window, output_size=size)
        expected = RU.max_unpool(x, idx, out_spatial)
        assert out.dtype == dtype and out.shape == expected.shape
        np.testing.assert_array_equal(out, expected)
        g = rng.standard_normal(out.shape).astype(dtype)
        np.testing.assert_array_equal(unpool(nd, True)(g, idx), RU.max_unpool_backward(g, idx))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_output_size_forms_and_unbatched_input(nd):
    rng = rng_for("unpool-forms", nd)
    x, idx, window, out_spatial, _ = random_unpool_case(rng, nd, np.float64)
    full = x.shape[:2] + out_spatial
    a = unpool(nd)(x, idx, **window, output_size=out_spatial)
    np.testing.assert_array_equal(unpool(nd)(x, idx, **window, output_size=full), a)
    np.testing.assert_array_equal(unpool(nd)(x, idx, **window, output_size=list(out_spatial)), a)
    one = unpool(nd)(x[0], idx[0], **window, output_size=full[1:])
    np.testing.assert_array_equal(one, a[0])
    g = rng.standard_normal(a.shape)
    np.testing.assert_array_equal(unpool(nd, True)(g[0], idx[0]), unpool(nd, True)(g, idx)[0])


def test_default_size_and_later_duplicate_wins():
    x = np.array([[[1.0, 2.0, 3.0]]])
    idx = np.array([[[4, 4, 0]]])
    # default size (3-1)*2 - 2*1 + 3 = 5
    out = F.max_unpool1d(x, idx, 3, stride=2, padding=1)
    np.testing.assert_array_equal(out, [[[3.0, 0.0, 0.0, 0.0, 2.0]]])
    np.testing.assert_array_equal(F.max_unpool1d_backward(out * 10, idx), [[[20.0, 20.0, 30.0]]])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_inverts_max_pool_on_the_maxima(nd):
    rng = rng_for("unpool-roundtrip", nd)
    x = rng.standard_normal((2, 3) + tuple(2 * s + 1 for s in SPATIAL[nd]))
    y, idx = getattr(F, f"max_pool{nd}d")(x, 2, return_indices=True)
    out = unpool(nd)(y, idx, 2, output_size=x.shape)
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept])
    assert kept.sum() == y.size


def test_integer_and_float16_inputs():
    idx = np.array([[[0, 3]]])
    out = F.max_unpool1d(np.array([[[1, 2]]], dtype=np.int32), idx, 2)
    assert out.dtype == np.int32  # kept, as max pooling keeps it
    np.testing.assert_array_equal(out, [[[1, 0, 0, 2]]])
    out16 = F.max_unpool1d(np.array([[[1, 2]]], dtype=np.float16), idx.astype(np.int32), 2)
    assert out16.dtype == np.float16
    g = F.max_unpool1d_backward(np.arange(4, dtype=np.float16).reshape(1, 1, 4), idx)
    assert g.dtype == np.float16
    np.testing.assert_array_equal(g, [[[0, 3]]])


# --------------------------------------------------------------------------------------
# Finite differences (float64).
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_backward_finite_differences(nd):
    rng = rng_for("unpool-fd", nd)
    for _ in range(3):
        x, idx, window, out_spatial, _ = random_unpool_case(rng, nd, np.float64, distinct=True,
                                                            max_in=3)
        w = rng.standard_normal(x.shape[:2] + out_spatial)
        got = unpool(nd, True)(w, idx)
        expected = numeric_grad(lambda v: unpool(nd)(v, idx, **window, output_size=out_spatial),
                                x.copy(), w)
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-8)


# --------------------------------------------------------------------------------------
# Against PyTorch.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_matches_torch_forward_and_backward(nd, dtype):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = rng_for("unpool-torch", nd, dtype)
    for _ in range(4):
        x, idx, window, out_spatial, _ = random_unpool_case(rng, nd, dtype, distinct=True)
        out = unpool(nd)(x, idx, **window, output_size=out_spatial)
        tx = torch.from_numpy(x).requires_grad_()
        tout = getattr(tf, f"max_unpool{nd}d")(tx, torch.from_numpy(idx), **window,
                                               output_size=out_spatial)
        np.testing.assert_array_equal(out, tout.detach().numpy())
        g = rng.standard_normal(out.shape).astype(dtype)
        tout.backward(torch.from_numpy(g))
        np.testing.assert_array_equal(unpool(nd, True)(g, idx), tx.grad.numpy())


# --------------------------------------------------------------------------------------
# Against onnxruntime (MaxUnpool, opset 11) and ONNX's backend test cases.
# --------------------------------------------------------------------------------------

def _run_onnx_maxunpool(x, onnx_idx, window, output_shape=None):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    nd = x.ndim - 2
    pads = list(window["padding"]) * 2
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape)),
              helper.make_tensor_value_info("I", TensorProto.INT64, list(onnx_idx.shape))]
    names = ["X", "I"]
    feeds = {"X": x.astype(np.float32), "I": onnx_idx.astype(np.int64)}
    if output_shape is not None:
        inputs.append(helper.make_tensor_value_info("S", TensorProto.INT64, [nd + 2]))
        names.append("S")
        feeds["S"] = np.asarray(output_shape, dtype=np.int64)
    node = helper.make_node("MaxUnpool", names, ["Y"], kernel_shape=list(window["kernel_size"]),
                            strides=list(window["stride"]), pads=pads)
    graph = helper.make_graph([node], "unpool", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_matches_onnxruntime_default_shape(nd):
    rng = rng_for("unpool-ort", nd)
    for _ in range(4):
        # distinct: ONNX does not specify which of two equal indices wins
        x, idx, window, _, default = random_unpool_case(rng, nd, np.float32, distinct=True,
                                                        default_size=True)
        out = unpool(nd)(x, idx, **window)
        got = _run_onnx_maxunpool(x, RU.onnx_indices(idx, default), window)
        np.testing.assert_array_equal(out, got)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_matches_onnxruntime_with_output_shape(nd):
    """onnxruntime (since microsoft/onnxruntime#2193) scatters into the given output_shape
    with the indices flat over that whole tensor: PyTorch's rule plus plane offsets. (ONNX's
    reference and backend case read them in the default shape instead; see below.)"""
    rng = rng_for("unpool-ort-shape", nd)
    for _ in range(3):
        x, _, window, _, default = random_unpool_case(rng, nd, np.float32, default_size=True)
        size = tuple(d + int(rng.integers(0, s)) for d, s in zip(default, window["stride"]))
        m = math.prod(x.shape[2:])  # onnxruntime refuses an output_shape below the default
        planes = x.shape[0] * x.shape[1]
        idx = np.stack([rng.permutation(math.prod(size))[:m] for _ in range(planes)])
        idx = idx.reshape(x.shape)
        got = _run_onnx_maxunpool(x, RU.onnx_indices(idx, size), window,
                                  output_shape=x.shape[:2] + size)
        np.testing.assert_array_equal(unpool(nd)(x, idx, **window, output_size=size), got)


def _onnx_backend_cases():
    onnx = pytest.importorskip("onnx")
    module = importlib.import_module("onnx.backend.test.case.node.maxunpool")
    cases = []

    def collect(node, inputs, outputs, name, **kwargs):
        cases.append((name, node, inputs, outputs))

    original = module.expect
    module.expect = collect
    try:
        for attr in dir(module.MaxUnpool):
            if attr.startswith("export"):
                getattr(module.MaxUnpool, attr)()
    finally:
        module.expect = original
    return onnx, cases


def test_onnx_backend_cases():
    """ONNX's cases, through cpool's PyTorch-style API: whole-tensor indices become
    per-plane ones, and with an explicit output_shape ONNX reads them in the default
    unpooled shape, so they are moved to the same coordinates of the larger output."""
    onnx, cases = _onnx_backend_cases()
    assert len(cases) >= 2
    for name, node, inputs, outputs in cases:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        x, onnx_idx = inputs[0], inputs[1]
        nd = x.ndim - 2
        kernel = tuple(attrs["kernel_shape"])
        stride = tuple(attrs.get("strides", [1] * nd))
        pads = attrs.get("pads", [0] * 2 * nd)
        assert pads[:nd] == pads[nd:], "cpool's padding is symmetric"
        default = RU.unpool_default_size(x.shape[2:], kernel, stride, pads[:nd])
        plane_offsets = (np.arange(x.shape[0] * x.shape[1]) * math.prod(default)).reshape(
            x.shape[:2] + (1,) * nd)
        idx = onnx_idx - plane_offsets
        output_size = None
        if len(inputs) > 2:
            output_size = tuple(int(v) for v in inputs[2][2:])
            idx = np.ravel_multi_index(np.unravel_index(idx, default), output_size)
        got = unpool(nd)(x, idx, kernel, stride, tuple(pads[:nd]), output_size=output_size)
        np.testing.assert_array_equal(got, outputs[0], err_msg=name)
        assert got.dtype == outputs[0].dtype


# --------------------------------------------------------------------------------------
# Threads, inputs, errors.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_are_bitwise_identical(dtype):
    rng = rng_for("unpool-threads", dtype)
    x = rng.standard_normal((3, 5, 9, 11)).astype(dtype)
    idx = rng.integers(0, 18 * 22, x.shape)  # with repeats: the later write must win
    g = rng.standard_normal((3, 5, 18, 22)).astype(dtype)
    results = []
    try:
        for n in (1, 2):
            cpool.set_num_threads(n)
            results.append([F.max_unpool2d(x, idx, 2), F.max_unpool2d_backward(g, idx)])
    finally:
        cpool.set_num_threads(None)
    for a, b in zip(*results):
        assert np.array_equal(bits(a), bits(b))


def test_inputs_are_not_modified_and_outputs_are_fresh():
    rng = rng_for("unpool-inputs")
    x = rng.standard_normal((2, 3, 4, 4))
    idx = rng.integers(0, 64, x.shape)
    g = rng.standard_normal((2, 3, 8, 8))
    copies = [a.copy() for a in (x, idx, g)]
    out = F.max_unpool2d(x, idx, 2)
    gx = F.max_unpool2d_backward(g, idx)
    for a, c in zip((x, idx, g), copies):
        np.testing.assert_array_equal(a, c)
    for r in (out, gx):
        assert r.flags.c_contiguous and not any(np.shares_memory(r, a) for a in (x, idx, g))


def test_errors_name_the_argument():
    x = np.zeros((1, 2, 3, 3))
    idx = np.zeros((1, 2, 3, 3), dtype=np.int64)
    with pytest.raises(TypeError, match="indices"):
        F.max_unpool2d(x, idx.astype(np.float64), 2)
    with pytest.raises(TypeError, match="indices"):
        F.max_unpool2d(x, idx.astype(bool), 2)
    with pytest.raises(ValueError, match="indices"):
        F.max_unpool2d(x, idx[:, :, :2], 2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 36\)"):
        F.max_unpool2d(x, idx + 36, 2)
    with pytest.raises(ValueError, match="indices must lie"):
        F.max_unpool2d(x, idx - 1, 2)
    with pytest.raises(ValueError, match="output_size"):
        F.max_unpool2d(x, idx, 2, output_size=(8, 6))  # 8 is not < default 6 + stride 2
    with pytest.raises(ValueError, match="output_size"):
        F.max_unpool2d(x, idx, 2, output_size=(4, 6))  # 4 is not > 6 - 2
    with pytest.raises(ValueError, match="output_size"):
        F.max_unpool2d(x, idx, 2, output_size=(6, 6, 6))
    with pytest.raises(ValueError, match="output_size"):
        F.max_unpool1d(np.zeros((1, 1, 1)), np.zeros((1, 1, 1), int), 1, output_size=0)
    with pytest.raises(ValueError, match="kernel_size"):
        F.max_unpool2d(x, idx, 0)
    with pytest.raises(ValueError, match="padding"):
        F.max_unpool2d(x, idx, 2, padding=-1)
    with pytest.raises(ValueError, match="<= 0"):
        F.max_unpool1d(np.zeros((1, 1, 1)), np.zeros((1, 1, 1), int), 1, padding=1)
    with pytest.raises(ValueError, match="x must have"):
        F.max_unpool2d(x[0, 0], idx[0, 0], 2)
    g = np.zeros((1, 2, 6, 6))
    with pytest.raises(ValueError, match="grad_output"):
        F.max_unpool2d_backward(g[:, :1], idx)
    with pytest.raises(ValueError, match="indices must lie"):
        F.max_unpool2d_backward(g, idx + 36)
    with pytest.raises(TypeError, match="indices"):
        F.max_unpool2d_backward(g, idx.astype(np.float32))
    with pytest.raises(ValueError, match="indices"):
        F.max_unpool2d_backward(g, idx[0, 0])


@pytest.mark.parametrize("lead", [(0, 3), (2, 0)])
def test_empty_batch_or_channels(lead):
    x = np.zeros(lead + (2, 3))
    idx = np.zeros(lead + (2, 3), dtype=np.int64)
    out = F.max_unpool2d(x, idx, 2)
    assert out.shape == lead + (4, 6)
    assert F.max_unpool2d_backward(out, idx).shape == x.shape
