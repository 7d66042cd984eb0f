"""Max, average and Lp pooling (functional API) against the NumPy reference in
tests/reference.py: randomized shapes, options and dtypes, forward and backward."""
import numpy as np
import pytest

import cpool
from cpool import functional as F
from cpool import layers
from tests import reference as R
from tests.pool_cases import (assert_identical_bits, random_geometry, random_input, rng_for,
                              runs_at_every_simd_level, with_nans)

# Every test runs through both channels-first kernel families (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("pool_kernel_path")

DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): dict(rtol=3e-5, atol=3e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}
P_VALUES = (1.0, 2.0, 3.0, 1.5, 0.7)


def fn(kind, nd, backward=False):
    return getattr(F, f"{kind}_pool{nd}d" + ("_backward" if backward else ""))


def random_case(rng, nd, dtype, kind="normal", lead=None, **geometry_options):
    geo, in_size = random_geometry(rng, nd, **geometry_options)
    lead = lead or (int(rng.integers(1, 3)), int(rng.integers(1, 4)))
    shape = tuple(lead) + in_size
    return geo, random_input(rng, shape, dtype, kind)


def avg_options(rng):
    return dict(count_include_pad=bool(rng.integers(2)),
                divisor_override=None if rng.random() < 0.7 else int(rng.integers(1, 6)))


def assert_fresh_c_array(out, *inputs):
    assert isinstance(out, np.ndarray)
    assert out.flags.c_contiguous
    for x in inputs:
        assert not np.shares_memory(out, x)


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint8)


# --------------------------------------------------------------------------------------
# Forward against the reference.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_forward_matches_reference(nd, dtype):
    rng = rng_for("max", nd, dtype)
    for trial in range(10):
        geo, x = random_case(rng, nd, dtype, kind=("normal", "ties")[trial % 2])
        if trial % 3 == 2:
            x[rng.random(x.shape) < 0.2] = -np.inf  # all -inf windows keep the first-tap index
        ref_out, ref_idx = R.max_pool(x, nd, **geo)
        out, idx = fn("max", nd)(x, **geo, return_indices=True)
        plain = fn("max", nd)(x, **geo)
        assert out.dtype == dtype and idx.dtype == np.int64 and plain.dtype == dtype
        np.testing.assert_array_equal(out, ref_out, err_msg=str(geo))
        np.testing.assert_array_equal(idx, ref_idx, err_msg=str(geo))
        np.testing.assert_array_equal(plain, ref_out, err_msg=str(geo))
        for a in (out, idx, plain):
            assert_fresh_c_array(a, x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_avg_forward_matches_reference(nd, dtype):
    rng = rng_for("avg", nd, dtype)
    for trial in range(10):
        geo, x = random_case(rng, nd, dtype)
        opts = avg_options(rng)
        out = fn("avg", nd)(x, **geo, **opts)
        assert out.dtype == dtype
        assert_fresh_c_array(out, x)
        np.testing.assert_allclose(out, R.avg_pool(x, nd, **geo, **opts), **TOL[out.dtype],
                                   err_msg=f"{geo} {opts}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lp_forward_matches_reference(nd, dtype):
    rng = rng_for("lp", nd, dtype)
    for trial in range(10):
        geo, x = random_case(rng, nd, dtype)
        p = P_VALUES[trial % len(P_VALUES)]
        out = fn("lp", nd)(x, p, **geo)
        assert out.dtype == dtype
        assert_fresh_c_array(out, x)
        np.testing.assert_allclose(out, R.lp_pool(x, nd, p, **geo), **TOL[out.dtype],
                                   err_msg=f"p={p} {geo}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, s", [(2, 2), (3, 2), (3, 1), (2, 1), (5, 1), (4, 3)])
def test_wide_rows_match_reference(k, s, dtype):
    # rows long enough for the vectorized horizontal passes (specialized for common k/s)
    rng = rng_for("wide-rows", k, s, dtype)
    x = random_input(rng, (1, 1, 4, 71), dtype, "ties")
    x = with_nans(rng, x, 0.01)
    geo = dict(kernel_size=(2, k), stride=(1, s), padding=(1, k // 2), ceil_mode=True)
    out, idx = F.max_pool2d(x, **geo, return_indices=True)
    ref_out, ref_idx = R.max_pool(x, 2, **geo)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(F.max_pool2d(x, **geo), ref_out)
    x = np.nan_to_num(x)
    for cip in (True, False):
        np.testing.assert_allclose(F.avg_pool2d(x, **geo, count_include_pad=cip),
                                   R.avg_pool(x, 2, **geo, count_include_pad=cip), **TOL[x.dtype])
    np.testing.assert_allclose(F.lp_pool2d(x, 2.0, **geo), R.lp_pool(x, 2, 2.0, **geo),
                               **TOL[x.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_of_two_divisors_give_the_quotients_bits(dtype):
    # Averages by a power of two multiply by its reciprocal (cp_exact_reciprocal): the
    # same bits as dividing, subnormal, overflowing, -0 and NaN sums included.
    info = np.finfo(dtype)
    values = np.array([1.0, -3.5, info.tiny / 3, -info.tiny / 7, info.max, info.max, -0.0,
                       -0.0, np.nan, 2.0, 1e-3, info.smallest_subnormal, 7.0, -7.0, 0.1, 0.2],
                      dtype=dtype)
    # random values too: x * (1/3) and x / 3 differ in the last bit for many of them
    rows = np.concatenate([np.stack([values, values[::-1]]),
                           np.random.default_rng(0).standard_normal((2, 48)).astype(dtype)], axis=1)
    x = rows.reshape(1, 1, 2, 64)
    with np.errstate(over="ignore"):
        pair = (x[..., 0, 0::2] + x[..., 1, 0::2]) + (x[..., 0, 1::2] + x[..., 1, 1::2])
    for d in (None, 1, 2, 8, 1024, 3, -4):
        got = F.avg_pool2d(x, 2, 2, divisor_override=d)
        want = (pair / dtype(4 if d is None else d))[..., None, :]
        assert got.tobytes() == want.tobytes(), d


def test_count_include_pad_divisor_at_ceil_overhang():
    # L=5, k=3, s=2, pad 1, ceil: windows start at -1, 1, 3; the last covers 3, 4 and the
    # right pad 5 (inside the padded extent L + pad = 6); nothing overhangs. With L=6 the
    # last window starts at 5 and covers 5, pad 6 and overhang 7: include-pad counts 2.
    x = np.arange(1.0, 7.0)[None, None]
    got = F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True)
    np.testing.assert_allclose(got, R.avg_pool(x, 1, 3, 2, 1, ceil_mode=True))
    np.testing.assert_allclose(got[0, 0, -1], 6.0 / 2)
    got = F.avg_pool1d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_allclose(got[0, 0, -1], 6.0 / 1)


def test_ceil_mode_drops_a_window_that_starts_in_the_right_padding():
    # L=5, k=3, s=3, pad 1: ceil gives windows at -1, 2, 5; the one at 5 starts in the
    # right pad (5 >= L) and is dropped. L=2, k=1, s=2 (ONNX's "reduce by one" case).
    x = np.arange(5.0)[None]
    assert F.max_pool1d(x, 3, 3, 1, ceil_mode=True).shape == (1, 2)
    assert F.avg_pool1d(x, 3, 3, 1, ceil_mode=True).shape == (1, 2)
    assert R.max_pool(x, 1, 3, 3, 1, ceil_mode=True)[0].shape == (1, 2)
    x = np.arange(4.0).reshape(1, 2, 2)
    np.testing.assert_array_equal(F.max_pool2d(x, 1, 2, ceil_mode=True), [[[0.0]]])
    # without the drop rule a ceil window would remain: L=6, k=3, s=3, pad 1 -> 3 windows
    assert F.max_pool1d(np.arange(6.0)[None], 3, 3, 1, ceil_mode=True).shape == (1, 3)


@pytest.mark.parametrize("kind", ["max", "avg", "lp"])
def test_ceil_mode_window_longer_than_padded_input(kind):
    # ceil_mode keeps one window when the effective kernel exceeds the padded input by
    # less than the stride (PyTorch's and ONNX's formula); by the stride or more: error
    rng = rng_for("ceil-long", kind)
    cases = [((4,), (1,), dict(kernel_size=5, stride=2)),
             ((4,), (1,), dict(kernel_size=3, stride=2, dilation=2)),
             ((3, 4), (1, 2), dict(kernel_size=(4, 3), stride=(2, 3), padding=((0, 0), (1, 0)))),
             ((2, 3, 4), (1, 3, 1), dict(kernel_size=(3, 2, 5), stride=(3, 1, 2),
                                         padding=((0, 0), (0, 1), (0, 0))))]
    for in_size, out_size, geo in cases:
        nd = len(in_size)
        x = random_input(rng, (1, 2) + in_size, np.float64)
        got = _forward(kind, nd, x, dict(geo, ceil_mode=True))
        np.testing.assert_allclose(got, _reference(kind, nd, x, dict(geo, ceil_mode=True)),
                                   rtol=1e-12)
        assert got.shape == (1, 2) + out_size
        with pytest.raises(ValueError, match="output size"):
            _forward(kind, nd, x, dict(geo, ceil_mode=False))
    with pytest.raises(ValueError, match="output size"):  # longer by the stride
        _forward(kind, 1, np.zeros((1, 4)), dict(kernel_size=6, stride=2, ceil_mode=True))


def test_same_padding_splits():
    # L=6, k=4, s=1: total pad 3; "same" puts 1 at the start, "same_lower" puts 2.
    x = np.arange(6.0)[None]
    np.testing.assert_array_equal(F.max_pool1d(x, 4, 1, "same"), [[2, 3, 4, 5, 5, 5]])
    np.testing.assert_array_equal(F.max_pool1d(x, 4, 1, "same_lower"), [[1, 2, 3, 4, 5, 5]])
    for padding in ("same", "same_lower"):
        assert F.max_pool1d(x, 3, 4, padding).shape == (1, 2)  # ceil(6 / 4)
        np.testing.assert_array_equal(F.max_pool1d(x, 4, 1, padding),
                                      R.max_pool(x, 1, 4, 1, padding)[0])


# --------------------------------------------------------------------------------------
# NaN and infinities.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_nan_max_matches_reference(nd):
    rng = rng_for("nan-max", nd)
    for trial in range(8):
        dtype = DTYPES[trial % 2]
        geo, x = random_case(rng, nd, dtype, kind="ties")
        x = with_nans(rng, x, fraction=(0.1, 0.4)[trial % 2])
        ref_out, ref_idx = R.max_pool(x, nd, **geo)
        out, idx = fn("max", nd)(x, **geo, return_indices=True)
        np.testing.assert_array_equal(out, ref_out, err_msg=str(geo))
        np.testing.assert_array_equal(idx, ref_idx, err_msg=str(geo))
        np.testing.assert_array_equal(fn("max", nd)(x, **geo), ref_out, err_msg=str(geo))
        # the rule reports the *last* NaN of the window in scan order
        nan_out = np.isnan(ref_out)
        if nan_out.any():
            planes = x.reshape(x.shape[0] * x.shape[1], -1)
            flat_idx = idx.reshape(planes.shape[0], -1)
            rows = np.nonzero(nan_out.reshape(planes.shape[0], -1))
            assert np.isnan(planes[rows[0], flat_idx[rows]]).all()


def test_nan_max_reports_last_nan_in_scan_order():
    x = np.array([[[1.0, np.nan, 5.0],
                   [np.nan, 7.0, 2.0],
                   [0.0, 1.0, 3.0]]])
    out, idx = F.max_pool2d(x, 3, return_indices=True)
    assert np.isnan(out[0, 0, 0]) and idx[0, 0, 0] == 3
    out, idx = F.max_pool1d(np.array([[np.nan, 9.0, np.nan, 1.0]]), 4, return_indices=True)
    assert np.isnan(out[0, 0]) and idx[0, 0] == 2


@pytest.mark.parametrize("kind", ["avg", "lp"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_nan_and_inf_propagate_in_sums(kind, nd):
    rng = rng_for("nan", kind, nd)
    for trial in range(4):
        geo, x = random_case(rng, nd, np.float64)
        x = with_nans(rng, x, 0.1)
        x[rng.random(x.shape) < 0.05] = np.inf
        if kind == "avg":
            got, ref = fn("avg", nd)(x, **geo), R.avg_pool(x, nd, **geo)
        else:
            got, ref = fn("lp", nd)(x, 2.0, **geo), R.lp_pool(x, nd, 2.0, **geo)
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(got, ref, rtol=1e-12, equal_nan=True, err_msg=str(geo))


def test_padding_only_window_indices_are_accepted_by_backward():
    x = np.array([[5.0]])
    out, idx = F.max_pool1d(x, 2, 3, 1, dilation=2, return_indices=True)  # taps -1, 1
    assert np.isneginf(out).all()
    np.testing.assert_array_equal(F.max_pool1d_backward(np.ones_like(out), idx, x.shape),
                                  [[0.0]])


def test_all_padding_window_is_minus_inf_with_index_minus_one():
    # k=2, d=3, pad 2 on L=1: window taps -2 and 1 hold no input; PyTorch reports -inf
    # and the index of its first tap at or after 0, which is outside the input; cpool
    # reports -1, which the backward skips.
    x = np.array([[5.0]])
    out, idx = F.max_pool1d(x, 2, 1, 2, dilation=3, return_indices=True)
    ref_out, ref_idx = R.max_pool(x, 1, 2, 1, 2, dilation=3)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    assert np.isneginf(out).all()


# --------------------------------------------------------------------------------------
# Backward against the reference.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_backward_matches_reference(nd, dtype):
    rng = rng_for("max-bw", nd, dtype)
    for trial in range(6):
        geo, x = random_case(rng, nd, dtype, kind=("normal", "ties")[trial % 2],
                             padding_only_windows=False)  # see test_padding_only_window_*
        out, idx = fn("max", nd)(x, **geo, return_indices=True)
        g = random_input(rng, out.shape, dtype)
        got = fn("max", nd, backward=True)(g, idx, x.shape)
        assert got.dtype == dtype and got.shape == x.shape
        assert_fresh_c_array(got, g, idx)
        np.testing.assert_allclose(got, R.max_pool_backward(g, idx, nd, x.shape), **TOL[got.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_avg_backward_matches_reference(nd, dtype):
    rng = rng_for("avg-bw", nd, dtype)
    for trial in range(6):
        geo, x = random_case(rng, nd, dtype)
        opts = avg_options(rng)
        out = fn("avg", nd)(x, **geo, **opts)
        g = random_input(rng, out.shape, dtype)
        got = fn("avg", nd, backward=True)(g, x.shape, **geo, **opts)
        assert got.dtype == dtype and got.shape == x.shape
        assert_fresh_c_array(got, g)
        np.testing.assert_allclose(got, R.avg_pool_backward(g, nd, x.shape, **geo, **opts),
                                   **TOL[got.dtype], err_msg=f"{geo} {opts}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lp_backward_matches_reference(nd, dtype):
    rng = rng_for("lp-bw", nd, dtype)
    for trial in range(6):
        geo, x = random_case(rng, nd, dtype, kind="away0")
        p = P_VALUES[trial % len(P_VALUES)]
        y = fn("lp", nd)(x, p, **geo)
        g = random_input(rng, y.shape, dtype)
        got = fn("lp", nd, backward=True)(g, x, y, p, **geo)
        assert got.dtype == dtype and got.shape == x.shape
        assert_fresh_c_array(got, g, x, y)
        tol = TOL[got.dtype] if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(got, R.lp_pool_backward(g, x, nd, p, **geo), **tol,
                                   err_msg=f"p={p} {geo}")


def test_lp_backward_is_zero_where_input_or_output_is_zero():
    x = np.array([[0.0, 0.0, 3.0, 0.0, 0.0, 0.0]])
    y = F.lp_pool1d(x, 2.0, 2)
    g = np.ones_like(y)
    got = F.lp_pool1d_backward(g, x, y, 2.0, 2)
    np.testing.assert_array_equal(got, [[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(got, R.lp_pool_backward(g, x, 1, 2.0, 2))


def test_max_backward_accumulates_repeated_indices():
    # stride 1 lets one input win several windows: its gradient is the sum
    x = np.array([[0.0, 9.0, 1.0, 2.0]])
    out, idx = F.max_pool1d(x, 2, 1, return_indices=True)
    np.testing.assert_array_equal(idx, [[1, 1, 3]])
    got = F.max_pool1d_backward(np.array([[1.0, 10.0, 100.0]]), idx, x.shape)
    np.testing.assert_array_equal(got, [[0.0, 11.0, 0.0, 100.0]])


# --------------------------------------------------------------------------------------
# Finite differences (float64) for every backward function.
# --------------------------------------------------------------------------------------

@pytest.fixture
def serial():
    """One thread: finite differences make hundreds of tiny calls, each of which would
    otherwise start a parallel region (slow on a loaded machine)."""
    cpool.set_num_threads(1)
    yield
    cpool.set_num_threads(None)


def numeric_grad(f, x, weights, h=1e-6):
    """d/dx sum(weights * f(x)) by central differences, one element at a time."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = np.sum(weights * f(x))
        flat[i] = old - h
        down = np.sum(weights * f(x))
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return grad


def fd_weights(rng, y):
    """Random output weights, 0 where the output is not finite (all-padding max windows)."""
    w = rng.standard_normal(y.shape)
    return np.where(np.isfinite(y), w, 0.0)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_backward_finite_differences(nd, serial):
    rng = rng_for("max-fd", nd)
    for _ in range(4):
        geo, x = random_case(rng, nd, np.float64, kind="distinct", lead=(1, 2), extra=2,
                             padding_only_windows=False)
        y, idx = fn("max", nd)(x, **geo, return_indices=True)
        w = fd_weights(rng, y)
        got = fn("max", nd, backward=True)(w, idx, x.shape)
        expected = numeric_grad(lambda v: np.where(w != 0, fn("max", nd)(v, **geo), 0), x, w)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=str(geo))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_avg_backward_finite_differences(nd, serial):
    rng = rng_for("avg-fd", nd)
    for _ in range(4):
        geo, x = random_case(rng, nd, np.float64, lead=(1, 2), extra=2)
        opts = avg_options(rng)
        y = fn("avg", nd)(x, **geo, **opts)
        w = fd_weights(rng, y)
        got = fn("avg", nd, backward=True)(w, x.shape, **geo, **opts)
        expected = numeric_grad(lambda v: fn("avg", nd)(v, **geo, **opts), x, w)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=f"{geo} {opts}")


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lp_backward_finite_differences(nd, serial):
    rng = rng_for("lp-fd", nd)
    for trial in range(5):
        geo, x = random_case(rng, nd, np.float64, kind="away0", lead=(1, 2), extra=2)
        p = P_VALUES[trial % len(P_VALUES)]
        y = fn("lp", nd)(x, p, **geo)
        w = fd_weights(rng, y)
        got = fn("lp", nd, backward=True)(w, x, y, p, **geo)
        expected = numeric_grad(lambda v: fn("lp", nd)(v, p, **geo), x, w)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=f"p={p} {geo}")


# --------------------------------------------------------------------------------------
# dtypes, shapes and layouts.
# --------------------------------------------------------------------------------------

def _forward(kind, nd, x, geo):
    if kind == "max":
        return fn("max", nd)(x, **geo)
    if kind == "avg":
        return fn("avg", nd)(x, **geo, count_include_pad=False)
    return fn("lp", nd)(x, 3.0, **geo)


def _reference(kind, nd, x, geo):
    if kind == "max":
        return R.max_pool(x, nd, **geo)[0]
    if kind == "avg":
        return R.avg_pool(x, nd, **geo, count_include_pad=False)
    return R.lp_pool(x, nd, 3.0, **geo)


@pytest.mark.parametrize("kind", ["max", "avg", "lp"])
def test_float16_computes_in_float32_and_returns_float16(kind):
    rng = rng_for("f16", kind)
    geo, x = random_case(rng, 2, np.float16)
    out = _forward(kind, 2, x, geo)
    assert out.dtype == np.float16 and out.flags.c_contiguous
    ref = _reference(kind, 2, x.astype(np.float32), geo).astype(np.float16)
    np.testing.assert_allclose(out.astype(np.float64), ref.astype(np.float64), rtol=1e-3)
    if kind == "max":
        np.testing.assert_array_equal(out, ref)
        _, idx = F.max_pool2d(x, **geo, return_indices=True)
        np.testing.assert_array_equal(idx, R.max_pool(x.astype(np.float32), 2, **geo)[1])


@pytest.mark.parametrize("int_dtype", [np.int8, np.uint8, np.int32, np.int64])
@pytest.mark.parametrize("kind", ["avg", "lp"])
def test_integer_input_computes_and_returns_float64(kind, int_dtype):
    """Averages and norms of integers are not integers (max keeps them: test_integer_pool)."""
    rng = rng_for("int", kind, int_dtype)
    geo, x = random_case(rng, 2, np.float64, kind="ties")
    x = (np.abs(x) * 7).astype(int_dtype)
    out = _forward(kind, 2, x, geo)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _reference(kind, 2, x.astype(np.float64), geo), rtol=1e-12)


def test_backward_dtypes_follow_grad_output():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out, idx = F.max_pool2d(x, 2, return_indices=True)
    assert F.max_pool2d_backward(out.astype(np.float16), idx, x.shape).dtype == np.float16
    assert F.max_pool2d_backward(out, idx, x.shape).dtype == np.float32
    assert F.avg_pool2d_backward(out.astype(np.float64), x.shape, 2).dtype == np.float64
    assert F.avg_pool2d_backward(out, x.shape, 2).dtype == np.float32
    y = F.lp_pool2d(x, 2, 2)
    assert F.lp_pool2d_backward(y, x, y, 2, 2).dtype == np.float32


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unbatched_input_equals_batch_of_one(nd):
    rng = rng_for("unbatched", nd)
    geo, x = random_case(rng, nd, np.float64)
    x = x[:1]
    x0 = x[0]
    out, idx = fn("max", nd)(x, **geo, return_indices=True)
    out0, idx0 = fn("max", nd)(x0, **geo, return_indices=True)
    np.testing.assert_array_equal(out0, out[0])
    np.testing.assert_array_equal(idx0, idx[0])
    np.testing.assert_array_equal(fn("max", nd, True)(out0, idx0, x0.shape),
                                  fn("max", nd, True)(out, idx, x.shape)[0])
    a, a0 = fn("avg", nd)(x, **geo), fn("avg", nd)(x0, **geo)
    np.testing.assert_array_equal(a0, a[0])
    np.testing.assert_array_equal(fn("avg", nd, True)(a0, x0.shape, **geo),
                                  fn("avg", nd, True)(a, x.shape, **geo)[0])
    y, y0 = fn("lp", nd)(x, 2.0, **geo), fn("lp", nd)(x0, 2.0, **geo)
    np.testing.assert_array_equal(y0, y[0])
    np.testing.assert_array_equal(fn("lp", nd, True)(y0, x0, y0, 2.0, **geo),
                                  fn("lp", nd, True)(y, x, y, 2.0, **geo)[0])


@pytest.mark.parametrize("lead", [(0, 3), (2, 0)])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch_returns_empty_result(nd, lead):
    x = np.zeros(lead + (5,) * nd, dtype=np.float32)
    out_sp = (2,) * nd  # k=2, s=2 on 5
    out, idx = fn("max", nd)(x, 2, return_indices=True)
    assert out.shape == lead + out_sp and idx.shape == lead + out_sp and out.dtype == np.float32
    assert fn("max", nd)(x, 2).shape == lead + out_sp
    assert fn("avg", nd)(x, 2).shape == lead + out_sp
    y = fn("lp", nd)(x, 2.0, 2)
    assert y.shape == lead + out_sp
    assert fn("max", nd, True)(out, idx, x.shape).shape == x.shape
    assert fn("avg", nd, True)(out, x.shape, 2).shape == x.shape
    assert fn("lp", nd, True)(y, x, y, 2.0, 2).shape == x.shape


@pytest.mark.parametrize("kind", ["max", "avg", "lp"])
def test_noncontiguous_fortran_readonly_and_list_inputs(kind):
    rng = rng_for("layout", kind)
    geo = dict(kernel_size=(3, 2), stride=(2, 1), padding=((1, 0), (1, 1)), ceil_mode=True)
    base = random_input(rng, (2, 3, 9, 14), np.float64)
    views = {
        "strided": base[:, :, ::2, ::3],
        "transposed": base.transpose(1, 0, 3, 2),
        "fortran": np.asfortranarray(base),
        "negative stride": base[:, ::-1, :, ::-1],
    }
    ro = base.copy()
    ro.flags.writeable = False
    views["read-only"] = ro
    for name, x in views.items():
        before = x.copy()
        got = _forward(kind, 2, x, geo)
        np.testing.assert_array_equal(x, before, err_msg=name)  # input untouched
        np.testing.assert_array_equal(got, _forward(kind, 2, np.ascontiguousarray(x), geo),
                                      err_msg=name)
        np.testing.assert_allclose(got, _reference(kind, 2, x, geo), rtol=1e-12, err_msg=name)
        assert_fresh_c_array(got, x)
    small = base[0, :, :4, :5]
    np.testing.assert_array_equal(_forward(kind, 2, small.tolist(), geo),
                                  _forward(kind, 2, small, geo))


def test_backward_functions_do_not_modify_inputs():
    rng = rng_for("bw-inputs")
    x = random_input(rng, (2, 2, 6, 7), np.float64, "away0")
    geo = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    out, idx = F.max_pool2d(x, **geo, return_indices=True)
    y = F.lp_pool2d(x, 3.0, **geo)
    g = random_input(rng, out.shape, np.float64)
    saved = [a.copy() for a in (x, idx, y, g)]
    for a in (x, idx, y, g):
        a.flags.writeable = False
    F.max_pool2d_backward(g, idx, x.shape)
    F.avg_pool2d_backward(g, x.shape, **geo)
    F.lp_pool2d_backward(g, x, y, 3.0, **geo)
    for a, b in zip((x, idx, y, g), saved):
        np.testing.assert_array_equal(a, b)


def test_large_windows_use_wide_taps():
    # more than 256 taps per window: indices and the layer's backward use int32 taps
    rng = rng_for("wide")
    for kernel in ((16, 16), (16, 17)):
        x = random_input(rng, (1, 2, 18, 19), np.float64, "distinct")
        out, idx = F.max_pool2d(x, kernel, 1, return_indices=True)
        ref_out, ref_idx = R.max_pool(x, 2, kernel, 1)
        np.testing.assert_array_equal(out, ref_out)
        np.testing.assert_array_equal(idx, ref_idx)
        layer = layers.MaxPool2d(kernel, 1)
        g = random_input(rng, out.shape, np.float64)
        np.testing.assert_array_equal(layer(x), out)
        np.testing.assert_allclose(layer.backward(g), R.max_pool_backward(g, idx, 2, x.shape))
    x = random_input(rng, (1, 1, 8, 8, 8), np.float32, "ties")
    out, idx = F.max_pool3d(x, 7, 1, return_indices=True)
    ref_out, ref_idx = R.max_pool(x, 3, 7, 1)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)


# --------------------------------------------------------------------------------------
# Threads.
# --------------------------------------------------------------------------------------

def _everything(nd, x, geo, g_seed):
    rng = np.random.default_rng(g_seed)
    out, idx = fn("max", nd)(x, **geo, return_indices=True)
    g = random_input(rng, out.shape, x.dtype)
    a = fn("avg", nd)(x, **geo, count_include_pad=False)
    y = fn("lp", nd)(x, 3.0, **geo)
    layer = getattr(layers, f"MaxPool{nd}d")(**geo)
    layer(x)
    return [out, idx, fn("max", nd)(x, **geo), a, y, fn("lp", nd)(x, 2.0, **geo),
            fn("max", nd, True)(g, idx, x.shape),
            fn("avg", nd, True)(g, x.shape, **geo, count_include_pad=False),
            fn("lp", nd, True)(g, x, y, 3.0, **geo), layer.backward(g)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_one_and_two_threads_are_bitwise_identical(nd, dtype):
    rng = rng_for("threads", nd, dtype)
    sizes = {1: (40,), 2: (13, 17), 3: (5, 7, 9)}[nd]
    x = random_input(rng, (3, 5) + sizes, dtype, "ties")
    x = with_nans(rng, x, 0.02)
    geo = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    try:
        cpool.set_num_threads(1)
        one = _everything(nd, x, geo, 7)
        cpool.set_num_threads(2)
        two = _everything(nd, x, geo, 7)
    finally:
        cpool.set_num_threads(None)
    for a, b in zip(one, two):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(bits(a), bits(b))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_simd_levels_and_thread_counts_give_identical_bits(nd):
    """Every instruction-set copy of the row code (and every thread count) gives the same
    bits, NaN and ties included, for values, indices and gradients."""
    rng = rng_for("simd-bits", nd)
    cases = [dict(kernel_size=2, stride=2), dict(kernel_size=3, stride=2, padding=1),
             dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)]
    x = with_nans(rng, random_input(rng, (2, 5) + (9, 12, 14)[3 - nd:], np.float32, "ties"))

    def run():
        results = []
        for geo in cases:
            out, idx = fn("max", nd)(x, **geo, return_indices=True)
            layer = getattr(layers, f"MaxPool{nd}d")(**geo)
            results += [out, idx, fn("avg", nd)(x, **geo), fn("lp", nd)(x, 2.0, **geo),
                        layer.backward(np.ones_like(layer(x)))]
        return results

    assert_identical_bits(runs_at_every_simd_level(run))
