"""Global, adaptive, binned and spatial pyramid pooling (functional API) against the slow
NumPy reference in tests/reference_binned.py, PyTorch, onnxruntime and ONNX's own
backend test cases; finite differences for every backward; thread invariance; errors."""
import numpy as np
import pytest

import cpool
from cpool import functional as F
from tests import reference_binned as R
from tests.pool_cases import (assert_identical_bits, random_input, rng_for,
                               runs_at_every_simd_level, with_nans)
from tests.test_pool import numeric_grad

# Every test runs through both channels-first kernel families (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_path")

DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): dict(rtol=3e-5, atol=3e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def random_bins(rng, length, kind):
    """Bins along one axis: "adaptive"-like tiling, or "free": random sizes, overlaps,
    gaps and order."""
    n = int(rng.integers(1, 5))
    if kind == "tile":
        return [tuple(b) for b in R.ref_adaptive_bins(length, n)]
    bins = []
    for _ in range(n):
        s = int(rng.integers(0, length))
        e = int(rng.integers(s + 1, length + 1))
        bins.append((s, e))
    return bins


def random_shape(rng, nd, max_side=7):
    return ((int(rng.integers(1, 3)), int(rng.integers(1, 3)))
            + tuple(int(rng.integers(1, max_side + 1)) for _ in range(nd)))


def adaptive(kind, nd, backward=False):
    return getattr(F, f"adaptive_{kind}_pool{nd}d" + ("_backward" if backward else ""))


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


# --------------------------------------------------------------------------------------
# Bins.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, out", [(13, 6), (14, 7), (5, 3), (3, 5), (7, 1), (1, 4)])
def test_adaptive_bins_follow_pytorch_rule(length, out):
    # start = floor(i*L/out), end = ceil((i+1)*L/out)
    assert F.adaptive_bins(length, out).tolist() == [list(b) for b in
                                                      R.ref_adaptive_bins(length, out)]


def test_window_bins_size_as_function_of_position():
    f = lambda pos: 2 if pos < 4 or pos >= 12 else 4  # noqa: E731
    assert F.window_bins(16, f).tolist() == [[0, 2], [2, 4], [4, 8], [8, 12], [12, 14], [14, 16]]
    # overlapping windows: sizes per window, fixed stride, last one cut at the end
    assert F.window_bins(10, [4, 4, 4, 4], strides=3).tolist() == [[0, 4], [3, 7], [6, 10],
                                                                    [9, 10]]
    assert F.window_bins(7, 3, strides=lambda pos: 1 if pos < 2 else 3, start=1).tolist() == \
        [[1, 4], [2, 5], [5, 7]]
    x = random_input(rng_for("wb"), (1, 2, 16, 16), np.float64)
    bins = [F.window_bins(16, f)] * 2
    np.testing.assert_allclose(F.bin_pool(x, bins, "avg"), R.ref_bin_pool(x, bins, "avg")[0],
                               rtol=1e-12)


def test_docstring_examples_hold():
    import doctest

    import cpool._binned
    result = doctest.testmod(cpool._binned, extraglobs={"np": np})
    assert result.attempted >= 4 and result.failed == 0


# --------------------------------------------------------------------------------------
# Forward against the reference.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_matches_reference(nd, dtype):
    rng = rng_for("adaptive", nd, np.dtype(dtype).name)
    for _ in range(6):
        shape = random_shape(rng, nd)
        x = random_input(rng, shape, dtype, kind=["normal", "ties"][int(rng.integers(2))])
        out_size = tuple(None if rng.random() < 0.2 else int(rng.integers(1, 6))
                         for _ in range(nd))
        full = tuple(L if o is None else o for o, L in zip(out_size, shape[2:]))
        ref_max, ref_idx = R.ref_adaptive_pool(x, full, "max")
        got, idx = adaptive("max", nd)(x, out_size, return_indices=True)
        assert got.dtype == dtype and got.shape == shape[:2] + full
        np.testing.assert_array_equal(got, ref_max.astype(dtype))
        np.testing.assert_array_equal(idx, ref_idx)
        assert idx.dtype == np.int64
        np.testing.assert_array_equal(adaptive("max", nd)(x, out_size), got)
        ref_avg, _ = R.ref_adaptive_pool(x, full, "avg")
        np.testing.assert_allclose(adaptive("avg", nd)(x, out_size), ref_avg,
                                   **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_bin_pool_matches_reference(nd, dtype):
    rng = rng_for("bins", nd, np.dtype(dtype).name)
    for trial in range(6):
        shape = random_shape(rng, nd)
        bins = [random_bins(rng, L, "free" if trial % 2 else "tile") for L in shape[2:]]
        x = random_input(rng, shape, dtype)
        for mode, p in (("max", 2.0), ("avg", 2.0), ("lp", 1.0), ("lp", 2.0), ("lp", 3.0),
                        ("lp", 0.7)):
            ref, ref_idx = R.ref_bin_pool(x, bins, mode, p)
            got = F.bin_pool(x, bins, mode, p)
            assert got.dtype == dtype and got.shape == ref.shape
            if mode == "max":
                np.testing.assert_array_equal(got, ref.astype(dtype))
            else:
                np.testing.assert_allclose(got, ref, **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_matches_reference(nd):
    rng = rng_for("global", nd)
    for dtype in DTYPES:
        shape = random_shape(rng, nd)
        x = random_input(rng, shape, dtype)
        bins = R.ref_whole_bins(shape[2:])
        for name, mode, args in (("max", "max", ()), ("avg", "avg", ()), ("lp", "lp", (3,))):
            ref, _ = R.ref_bin_pool(x, bins, mode, *(float(a) for a in args))
            kept = getattr(F, f"global_{name}_pool")(x, *args, keepdims=True)
            flat = getattr(F, f"global_{name}_pool")(x, *args)
            assert kept.shape == shape[:2] + (1,) * nd and flat.shape == shape[:2]
            assert kept.dtype == dtype
            np.testing.assert_allclose(kept, ref, **TOL[np.dtype(dtype)])
            np.testing.assert_array_equal(flat, kept.reshape(shape[:2]))


def test_bins_over_256_elements_keep_int32_taps():
    # The compact argmax is uint8 up to 256 elements per bin, int32 beyond.
    rng = rng_for("big-bins")
    x = with_nans(rng, random_input(rng, (2, 3, 17, 19), np.float32, "ties"), 0.002)
    g = random_input(rng, (2, 3), np.float32)
    bins = R.ref_whole_bins(x.shape[2:])
    np.testing.assert_allclose(F.global_max_pool_backward(g, x),
                               R.ref_bin_pool_backward(g[..., None, None], x, bins), rtol=1e-6)
    out, idx = F.adaptive_max_pool2d(x, (1, 1), return_indices=True)
    np.testing.assert_array_equal(idx, R.ref_adaptive_pool(x, (1, 1), "max")[1])
    from cpool._binned import BinGrid
    assert BinGrid.global_(x.shape[2:]).tap_dtype == np.intc


def test_global_lp_default_p_is_2_and_uses_abs():
    x = np.array([[[-3.0, 4.0]]])
    assert F.global_lp_pool(x)[0, 0] == 5.0
    assert F.global_lp_pool(x, p=1)[0, 0] == 7.0  # |x|, not x (ONNX, not torch)
    np.testing.assert_allclose(F.global_lp_pool(x, p=3)[0, 0], (27 + 64) ** (1 / 3))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spatial_pyramid_matches_reference(mode):
    rng = rng_for("spp", mode)
    for levels in ((1, 2, 4), (3,), (2, 1, 5)):
        shape = (2, 3) + (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        x = random_input(rng, shape, np.float64)
        got = F.spatial_pyramid_pool(x, levels, mode)
        assert got.shape == (2, 3 * sum(l * l for l in levels))
        np.testing.assert_allclose(got, R.ref_spatial_pyramid_pool(x, levels, mode), rtol=1e-12)
        np.testing.assert_array_equal(F.spatial_pyramid_pool(x[0], levels, mode), got[0])


def test_nested_pyramid_levels_pool_the_smallest_finer_level_they_divide():
    from cpool._binned import BinGrid, _nested_levels

    def sources(levels, mode="max"):  # by position in levels
        grids = [BinGrid.adaptive((13, 13), (lv, lv)) for lv in levels]
        return _nested_levels(grids, mode)

    assert sources((1, 2, 4)) == (2, {1: 2, 0: 1})
    assert sources((6, 1, 3, 2, 4)) == (0, {2: 0, 3: 0, 1: 3})
    assert list(sources((6, 1, 3, 2, 4))[1]) == [2, 3, 1]  # finer first: sources come first
    assert sources((4, 3, 8)) == (2, {0: 2})  # 3 does not divide 8: from the input
    assert sources((2, 2, 4, 4)) == (2, {3: 2, 0: 2, 1: 0})  # a level of equal size first
    assert sources((1, 2, 4), "avg") == (2, {})


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_spatial_pyramid_max_pools_nested_levels_from_finer_ones(dtype, channels_last):
    """Max levels whose size divides the finest's are pooled from the output of the
    smallest finer level whose size is a multiple of theirs (adaptive bins nest: 1 from
    2 from 4, 2 from 6, 3 from 6); the rest from the input. Exact, NaN and ties
    included, on planes taken by every kernel family, and on inputs smaller than the
    levels."""
    rng = rng_for("spp nested", np.dtype(dtype).name, channels_last)
    for levels, size in [((1, 2, 4), (13, 13)), ((6, 1, 3, 2, 4), (7, 11)),
                         ((2, 8, 4), (3, 2)), ((4, 2), (40, 33)), ((3, 1), (1, 1))]:
        x = random_input(rng, (2, 5) + size, np.float64, "ties")
        if dtype != np.int16:
            x = with_nans(rng, x, 0.02).astype(dtype)
        else:
            x = (x * 1000).astype(dtype)
        want = R.ref_spatial_pyramid_pool(x.astype(np.float64), levels, "max")
        xin = np.moveaxis(x, 1, -1).copy() if channels_last else x
        runs = runs_at_every_simd_level(  # the narrow kernel, on AVX-512, and the blocks
            lambda: (F.spatial_pyramid_pool(xin, levels, "max", channels_last=channels_last),))
        assert_identical_bits(runs)
        got = runs[0][0]
        if channels_last:  # each level flattened as (l, l, C): back to (C, l, l)
            parts, start = [], 0
            for lv in levels:
                part = got[:, start:start + 5 * lv * lv].reshape(2, lv, lv, 5)
                parts.append(np.moveaxis(part, -1, 1).reshape(2, -1))
                start += 5 * lv * lv
            got = np.concatenate(parts, 1)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.astype(np.float64), want)


def test_unbatched_and_other_dtypes():
    rng = rng_for("unbatched")
    x = random_input(rng, (3, 5, 6), np.float32)
    np.testing.assert_array_equal(F.adaptive_avg_pool2d(x, (2, 4)),
                                  F.adaptive_avg_pool2d(x[None], (2, 4))[0])
    np.testing.assert_array_equal(F.bin_pool(x, [[(0, 2)], [(1, 6)]], "lp"),
                                  F.bin_pool(x[None], [[(0, 2)], [(1, 6)]], "lp")[0])
    half = F.adaptive_max_pool1d(x[0].astype(np.float16), 2)
    assert half.dtype == np.float16
    ints = F.global_avg_pool(np.arange(12).reshape(1, 2, 6))
    assert ints.dtype == np.float64
    np.testing.assert_array_equal(ints, [[2.5, 8.5]])


# --------------------------------------------------------------------------------------
# NaN, ties and infinities: PyTorch's rule.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_nan_max_matches_reference(nd):
    rng = rng_for("nan", nd)
    for dtype in DTYPES:
        shape = random_shape(rng, nd)
        x = with_nans(rng, random_input(rng, shape, dtype, "ties"), 0.2)
        out_size = tuple(int(rng.integers(1, 4)) for _ in range(nd))
        ref, ref_idx = R.ref_adaptive_pool(x, out_size, "max")
        got, idx = adaptive("max", nd)(x, out_size, return_indices=True)
        np.testing.assert_array_equal(got, ref.astype(dtype))  # NaN == NaN here
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(adaptive("max", nd)(x, out_size), got)
        ref_global = R.ref_bin_pool(x, R.ref_whole_bins(shape[2:]))[0]
        np.testing.assert_array_equal(F.global_max_pool(x),
                                      ref_global.reshape(shape[:2]).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_size2_step2_argmax_merge_path(dtype):
    # W bins of size 2 and step 2 have their own vectorized argmax merge; NaN, ties, -inf.
    rng = rng_for("k2s2", np.dtype(dtype).name)
    x = with_nans(rng, random_input(rng, (2, 3, 6, 12), dtype, "ties"), 0.1)
    x[0, 0, :2, :2] = -np.inf
    for out_size in ((3, 6), (2, 6), (6, 6)):
        ref, ref_idx = R.ref_adaptive_pool(x, out_size, "max")
        got, idx = F.adaptive_max_pool2d(x, out_size, return_indices=True)
        np.testing.assert_array_equal(got, ref.astype(dtype))
        np.testing.assert_array_equal(idx, ref_idx)
        g = random_input(rng, got.shape, dtype)
        bins = [R.ref_adaptive_bins(6, out_size[0]), R.ref_adaptive_bins(12, 6)]
        np.testing.assert_allclose(F.bin_pool_backward(g, x, bins),
                                   R.ref_bin_pool_backward(g, x, bins), **TOL[np.dtype(dtype)])


def test_nan_last_in_scan_order_ties_first_and_all_minus_inf():
    nan, inf = np.nan, np.inf
    x = np.array([[[1.0, nan, 3.0, nan, 2.0, 2.0, -inf, -inf]]])
    out, idx = F.adaptive_max_pool1d(x, 4, return_indices=True)
    np.testing.assert_array_equal(out, [[[nan, nan, 2.0, -inf]]])
    np.testing.assert_array_equal(idx, [[[1, 3, 4, 6]]])


# --------------------------------------------------------------------------------------
# Against PyTorch.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_matches_torch(nd):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = rng_for("torch", nd)
    for dtype in DTYPES:
        for _ in range(4):
            shape = random_shape(rng, nd, max_side=9)
            x = random_input(rng, shape, dtype, "ties")
            if rng.random() < 0.5:
                x = with_nans(rng, x, 0.1)
            out_size = tuple(None if nd > 1 and rng.random() < 0.2  # torch 1-D takes no None
                             else int(rng.integers(1, 7)) for _ in range(nd))
            tx = torch.from_numpy(x).requires_grad_()
            t_out, t_idx = getattr(tf, f"adaptive_max_pool{nd}d")(tx, out_size,
                                                                   return_indices=True)
            got, idx = adaptive("max", nd)(x, out_size, return_indices=True)
            np.testing.assert_array_equal(got, t_out.detach().numpy())
            np.testing.assert_array_equal(idx, t_idx.numpy())
            g = random_input(rng, got.shape, dtype)
            t_out.backward(torch.from_numpy(g))
            np.testing.assert_allclose(
                adaptive("max", nd, True)(g, idx, x.shape), tx.grad.numpy(),
                **TOL[np.dtype(dtype)])
            x = np.nan_to_num(x)
            tx = torch.from_numpy(x).requires_grad_()
            t_avg = getattr(tf, f"adaptive_avg_pool{nd}d")(tx, out_size)
            np.testing.assert_allclose(adaptive("avg", nd)(x, out_size), t_avg.detach().numpy(),
                                       **TOL[np.dtype(dtype)])
            g = random_input(rng, t_avg.shape, dtype)
            t_avg.backward(torch.from_numpy(g))
            np.testing.assert_allclose(adaptive("avg", nd, True)(g, x.shape), tx.grad.numpy(),
                                       **TOL[np.dtype(dtype)])


def test_spatial_pyramid_matches_torch_composition():
    torch = pytest.importorskip("torch")
    x = random_input(rng_for("spp-torch"), (2, 4, 13, 11), np.float32)
    tx = torch.from_numpy(x)
    expected = torch.cat([torch.nn.functional.adaptive_max_pool2d(tx, l).flatten(1)
                          for l in (1, 2, 4)], dim=1)
    np.testing.assert_array_equal(F.spatial_pyramid_pool(x), expected.numpy())


# --------------------------------------------------------------------------------------
# Against onnxruntime and ONNX's backend test cases.
# --------------------------------------------------------------------------------------

def _onnx_global(op, x, **attrs):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    elem = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.DOUBLE
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", elem, list(x.shape))],
        [helper.make_tensor_value_info("y", elem, list(x.shape[:2]) + [1] * (x.ndim - 2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              ir_version=10)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_matches_onnxruntime(nd):
    rng = rng_for("ort", nd)
    x = random_input(rng, (2, 3) + tuple(int(v) for v in rng.integers(1, 7, nd)), np.float32)
    np.testing.assert_array_equal(F.global_max_pool(x, keepdims=True),
                                  _onnx_global("GlobalMaxPool", x))
    np.testing.assert_allclose(F.global_avg_pool(x, keepdims=True),
                               _onnx_global("GlobalAveragePool", x), rtol=1e-5, atol=1e-6)
    for p in (1, 2, 3):
        np.testing.assert_allclose(F.global_lp_pool(x, p, keepdims=True),
                                   _onnx_global("GlobalLpPool", x, p=p), rtol=1e-5, atol=1e-6)


def _onnx_backend_cases(module_name):
    """(node, inputs, outputs) of every export* case in onnx.backend.test.case.node.<module>,
    collected by replacing the module's `expect`."""
    pytest.importorskip("onnx")
    import importlib
    module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    cases = []
    original = module.expect
    module.expect = lambda node, inputs, outputs, name, **kw: cases.append((node, inputs,
                                                                            outputs, name))
    try:
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == module.__name__:
                for attr in dir(cls):
                    if attr.startswith("export"):
                        getattr(cls, attr)()
    finally:
        module.expect = original
    assert cases, f"no ONNX backend cases found in {module_name}"
    return cases


@pytest.mark.parametrize("module_name, op, func", [
    ("globalmaxpool", "GlobalMaxPool", F.global_max_pool),
    ("globalaveragepool", "GlobalAveragePool", F.global_avg_pool),
])
def test_onnx_backend_cases(module_name, op, func):
    for node, inputs, outputs, name in _onnx_backend_cases(module_name):
        assert node.op_type == op, name
        got = func(inputs[0], keepdims=True)
        assert got.dtype == outputs[0].dtype and got.shape == outputs[0].shape, name
        np.testing.assert_allclose(got, outputs[0], rtol=1e-6, atol=1e-7, err_msg=name)


# --------------------------------------------------------------------------------------
# Backward: reference and finite differences (float64).
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_bin_pool_backward_matches_reference(nd):
    rng = rng_for("bin-bwd", nd)
    for trial in range(4):
        shape = random_shape(rng, nd, max_side=6)
        bins = [random_bins(rng, L, "free" if trial % 2 else "tile") for L in shape[2:]]
        for dtype in DTYPES:
            x = random_input(rng, shape, dtype, "ties" if trial < 2 else "away0")
            for mode, p in (("max", 2.0), ("avg", 2.0), ("lp", 1.0), ("lp", 2.5)):
                y = F.bin_pool(x, bins, mode, p)
                g = random_input(rng, y.shape, dtype)
                got = F.bin_pool_backward(g, x, bins, mode, p)
                assert got.dtype == dtype and got.shape == x.shape
                np.testing.assert_allclose(got, R.ref_bin_pool_backward(g, x, bins, mode, p),
                                           rtol=1e-4 if dtype == np.float32 else 1e-11,
                                           atol=1e-5 if dtype == np.float32 else 1e-12)


def _fd(f, x, rng):
    y = f(x)
    w = rng.standard_normal(y.shape)
    return w, numeric_grad(f, x.copy(), w)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_backward_finite_differences(nd):
    rng = rng_for("adaptive-fd", nd)
    shape = random_shape(rng, nd, max_side=4)
    x = random_input(rng, shape, np.float64, "distinct")
    out_size = tuple(int(rng.integers(1, 5)) for _ in range(nd))
    w, expected = _fd(lambda v: adaptive("max", nd)(v, out_size), x, rng)
    _, idx = adaptive("max", nd)(x, out_size, return_indices=True)
    np.testing.assert_allclose(adaptive("max", nd, True)(w, idx, x.shape), expected, atol=1e-7)
    w, expected = _fd(lambda v: adaptive("avg", nd)(v, out_size), x, rng)
    np.testing.assert_allclose(adaptive("avg", nd, True)(w, x.shape), expected, atol=1e-7)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_backward_finite_differences(nd):
    rng = rng_for("global-fd", nd)
    shape = random_shape(rng, nd, max_side=3)
    x = random_input(rng, shape, np.float64, "away0")
    w, expected = _fd(F.global_max_pool, x, rng)
    np.testing.assert_allclose(F.global_max_pool_backward(w, x), expected, atol=1e-7)
    w, expected = _fd(lambda v: F.global_avg_pool(v, keepdims=True), x, rng)
    np.testing.assert_allclose(F.global_avg_pool_backward(w, x.shape), expected, atol=1e-7)
    np.testing.assert_array_equal(F.global_avg_pool_backward(w.reshape(shape[:2]), x.shape),
                                  F.global_avg_pool_backward(w, x.shape))
    for p in (1, 2, 3.5):
        w, expected = _fd(lambda v: F.global_lp_pool(v, p), x, rng)
        np.testing.assert_allclose(F.global_lp_pool_backward(w, x, p), expected, atol=1e-6)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_bin_pool_backward_finite_differences(nd):
    rng = rng_for("bin-fd", nd)
    shape = random_shape(rng, nd, max_side=4)
    bins = [random_bins(rng, L, "free") for L in shape[2:]]
    x = random_input(rng, shape, np.float64, "away0")
    for mode, p in (("max", 2.0), ("avg", 2.0), ("lp", 1.0), ("lp", 2.0), ("lp", 3.0),
                    ("lp", 1.5)):
        w, expected = _fd(lambda v: F.bin_pool(v, bins, mode, p), x, rng)
        np.testing.assert_allclose(F.bin_pool_backward(w, x, bins, mode, p), expected,
                                   atol=1e-6, err_msg=f"{mode} p={p}")


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spatial_pyramid_backward(mode):
    rng = rng_for("spp-bwd", mode)
    x = random_input(rng, (1, 2, 5, 6), np.float64, "distinct")
    levels = (1, 2, 3)
    w, expected = _fd(lambda v: F.spatial_pyramid_pool(v, levels, mode), x, rng)
    got = F.spatial_pyramid_pool_backward(w, x, levels, mode)
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(got, R.ref_spatial_pyramid_pool_backward(w, x, levels, mode),
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(F.spatial_pyramid_pool_backward(w[0], x[0], levels, mode),
                                  got[0])


# --------------------------------------------------------------------------------------
# Threads, inputs untouched, errors.
# --------------------------------------------------------------------------------------

def _all_results(x, g_by_shape):
    bins = [[(0, 3), (2, 9), (5, 6)], [(1, 8), (0, 2)]]
    out = []
    out += list(F.adaptive_max_pool2d(x, (3, 4), return_indices=True))
    out.append(F.adaptive_max_pool2d(x, (3, 4)))
    out.append(F.adaptive_avg_pool2d(x, (5, None)))
    out.append(F.global_lp_pool(x, 3))
    for mode in ("max", "avg", "lp"):
        y = F.bin_pool(x, bins, mode, 1.5)
        out += [y, F.bin_pool_backward(g_by_shape(y.shape), x, bins, mode, 1.5)]
    y = F.spatial_pyramid_pool(x)
    out += [y, F.spatial_pyramid_pool_backward(g_by_shape(y.shape), x)]
    return out


def test_thread_count_does_not_change_results():
    rng = rng_for("threads")
    for dtype in DTYPES:
        x = random_input(rng, (3, 5, 9, 10), dtype, "ties")
        grads = {}

        def g_by_shape(shape):
            if shape not in grads:
                grads[shape] = random_input(rng, shape, dtype)
            return grads[shape]

        try:
            cpool.set_num_threads(1)
            one = _all_results(x, g_by_shape)
            cpool.set_num_threads(2)
            two = _all_results(x, g_by_shape)
        finally:
            cpool.set_num_threads(None)
        for a, b in zip(one, two):
            np.testing.assert_array_equal(bits(a), bits(b))


def test_argmax_paths_and_simd_levels_agree_bitwise():
    # bin_max_forward_taps merges rows with vectorized selects (regular W grids) or finds
    # the first maximum after the value pass; both, at every instruction set, must give
    # PyTorch's argmax (the reference) and the same bits.
    from cpool._kernels import binpool, pool
    rng = rng_for("paths")
    x = with_nans(rng, random_input(rng, (2, 3, 9, 12), np.float32, "ties"), 0.05)
    bins = [R.ref_adaptive_bins(9, 4), [(0, 3), (3, 6), (6, 9), (9, 12)]]
    ref, ref_idx = R.ref_bin_pool(x, bins, "max")
    g = random_input(rng, ref.shape, np.float32)

    def run():
        out, idx = F.bin_pool(x, bins), F.adaptive_max_pool2d(x, (4, 4), return_indices=True)[1]
        np.testing.assert_array_equal(out, ref.astype(np.float32))
        np.testing.assert_array_equal(idx, R.ref_adaptive_pool(x, (4, 4), "max")[1])
        return [out, idx, F.bin_pool_backward(g, x, bins), F.global_lp_pool(x, 3),
                F.global_max_pool(x), F.global_avg_pool(x), F.adaptive_avg_pool2d(x, (4, 5))]

    level = pool.get_simd_level()
    limits = binpool.set_merge_limits(1, 10 ** 6)
    results = []
    try:
        for simd in range(pool.detected_simd_level() + 1):
            pool.set_simd_level(simd)
            for merge in ((1, 10 ** 6), (10 ** 6, 0)):
                binpool.set_merge_limits(*merge)
                results.append(run())
    finally:
        binpool.set_merge_limits(*limits)
        pool.set_simd_level(level)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(bits(a), bits(b))


def test_inputs_are_never_modified():
    rng = rng_for("untouched")
    x = random_input(rng, (2, 3, 9, 10), np.float64)
    keep = x.copy()
    results = _all_results(x, lambda shape: np.ones(shape))
    g = np.ones((2, 3, 2, 2))
    keep_g = g.copy()
    F.adaptive_avg_pool2d_backward(g, x.shape)
    F.global_max_pool_backward(np.ones((2, 3)), x)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(g, keep_g)
    for r in results:
        assert not np.shares_memory(r, x)
    bins = [np.array([[0, 2], [1, 5]], dtype=np.intp)]
    F.bin_pool(x[0], bins)
    assert bins[0].flags.writeable


@pytest.mark.parametrize("call, exc, match", [
    (lambda x: F.adaptive_avg_pool2d(x, 0), ValueError, "output_size"),
    (lambda x: F.adaptive_max_pool2d(x, (2, -1)), ValueError, "output_size"),
    (lambda x: F.adaptive_max_pool2d(x, (2, 2, 2)), ValueError, "output_size"),
    (lambda x: F.adaptive_max_pool2d(x, None), TypeError, "output_size"),
    (lambda x: F.adaptive_avg_pool2d(x, 2.5), TypeError, "output_size"),
    (lambda x: F.adaptive_avg_pool2d(np.zeros((1, 1, 0, 3)), 2), ValueError, "spatial"),
    (lambda x: F.spatial_pyramid_pool(x, ()), ValueError, "levels"),
    (lambda x: F.spatial_pyramid_pool(x, (1, 0)), ValueError, "levels"),
    (lambda x: F.spatial_pyramid_pool(x, 4), TypeError, "levels"),
    (lambda x: F.spatial_pyramid_pool(x, mode="lp"), ValueError, "mode"),
    (lambda x: F.bin_pool(x, [[(0, 2)], []]), ValueError, r"bins\[1\]"),
    (lambda x: F.bin_pool(x, [[(0, 2)], [(3, 3)]]), ValueError, r"bins\[1\]\[0\]"),
    (lambda x: F.bin_pool(x, [[(0, 2)], [(2, 1)]]), ValueError, r"bins\[1\]\[0\]"),
    (lambda x: F.bin_pool(x, [[(0, 9)], [(0, 2)]]), ValueError, r"bins\[0\]\[0\]"),
    (lambda x: F.bin_pool(x, [[(-1, 2)], [(0, 2)]]), ValueError, r"bins\[0\]\[0\]"),
    (lambda x: F.bin_pool(x, [[(0, 2.5)], [(0, 2)]]), TypeError, r"bins\[0\]"),
    (lambda x: F.bin_pool(x, [[(0, 1, 2)], [(0, 2)]]), ValueError, r"bins\[0\]"),
    (lambda x: F.bin_pool(x, []), ValueError, "bins"),
    (lambda x: F.bin_pool(x, "bins"), TypeError, "bins"),
    (lambda x: F.bin_pool(x[0, 0], [[(0, 2)]] * 3), ValueError, "x must have"),
    (lambda x: F.bin_pool(x, [[(0, 2)], [(0, 2)]], mode="median"), ValueError, "mode"),
    (lambda x: F.bin_pool(x, [[(0, 2)], [(0, 2)]], mode="lp", p=0), ValueError, "p"),
    (lambda x: F.global_max_pool(x[0, 0]), ValueError, "x must have shape"),
    (lambda x: F.global_avg_pool(x, keepdims=1), TypeError, "keepdims"),
    (lambda x: F.global_lp_pool(x, p=-2), ValueError, "p"),
    (lambda x: F.global_max_pool_backward(np.ones((2, 3)), x), ValueError, "grad_output"),
    (lambda x: F.adaptive_avg_pool2d_backward(np.ones((2, 3, 2)), x.shape), ValueError,
     "grad_output"),
    (lambda x: F.bin_pool_backward(np.ones((1, 2, 2, 2)), x, [[(0, 2)], [(0, 2)]]),
     ValueError, "grad_output"),
    (lambda x: F.spatial_pyramid_pool_backward(np.ones((1, 2)), x), ValueError, "grad_output"),
    (lambda x: F.window_bins(8, 0), ValueError, "sizes"),
    (lambda x: F.window_bins(8, 2, strides=0), ValueError, "strides"),
    (lambda x: F.window_bins(8, [4, 4, 4]), ValueError, "past the end"),
    (lambda x: F.window_bins(8, 2, start=8), ValueError, "start"),
])
def test_bad_arguments_raise_naming_them(call, exc, match):
    x = np.zeros((1, 2, 5, 6), np.float32)
    with pytest.raises(exc, match=match):
        call(x)
