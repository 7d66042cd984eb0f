"""The 2x2/2 kernels (windows that all lie inside the input, channels-first planes too
large for the plane blocks; cpool._layout.runs_2x2_rows) against the NumPy reference and
against the row kernels, to the bit: forward max and average, max with taps and indices,
both gradients, odd sizes (an uncovered last row or column), several bands per plane,
NaN, -0 and infinities, at every SIMD level and thread count."""
import numpy as np
import pytest

from cpool import _layout
from cpool import functional as F
from cpool import layers
from cpool._geometry import PoolGeometry
from cpool._kernels import pool as pool_kernels
from tests import reference as R
from tests.conftest import route_kernels
from tests.pool_cases import assert_identical_bits, rng_for, runs_at_every_simd_level
from tests.test_pool import numeric_grad

TOL = {np.dtype(np.float32): dict(rtol=3e-5, atol=3e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}

# (lead, spatial, kernel): even and odd sizes, planes of one band and of several bands
# (at 32 KiB of input per band: 64 float32 rows of 64 columns), and 3-D depth slices.
SHAPES = [((2, 3), (12, 16), 2), ((1, 2), (33, 35), 2), ((2, 1), (263, 64), 2),
          ((1, 1), (131, 130), 2), ((2, 2), (3, 10, 9), (1, 2, 2))]


def sample(rng, shape, dtype):
    """Normal values with ties, -0, +-inf and NaN."""
    x = rng.integers(-3, 4, shape).astype(dtype) * 0.5
    x += rng.standard_normal(shape).astype(dtype) * (rng.random(shape) < 0.5)
    u = rng.random(shape)
    x[u < 0.05] = -0.0
    x[(u >= 0.05) & (u < 0.07)] = np.inf
    x[(u >= 0.07) & (u < 0.09)] = -np.inf
    x[(u >= 0.09) & (u < 0.12)] = np.nan
    return x


def through(use_2x2, run, monkeypatch):
    """run() with every channels-first plane on the 2x2 kernels or on the row kernels."""
    with monkeypatch.context() as m:
        route_kernels(m, "rows")
        if not use_2x2:
            m.setattr(F, "runs_2x2_rows", lambda geom, channels_last: False)
        return run()


def test_routing():
    def runs(size, k, s, p=0, ceil=False, dilation=1, cl=False):
        return _layout.runs_2x2_rows(PoolGeometry.create(size, k, s, p, dilation, ceil), cl)

    assert runs((56, 56), 2, 2) and runs((57, 59), 2, 2) and runs((112, 112), 2, 2)
    assert runs((5, 56, 56), (1, 2, 2), (1, 2, 2))
    assert runs((57, 57), 2, 2, ceil=True) is False      # a window over the last row
    assert runs((56, 56), 2, 2, p=1) is False
    assert runs((56, 56), 2, 2, dilation=2) is False
    assert runs((56, 56), 2, 1) is False and runs((56, 56), 3, 2) is False
    assert runs((56, 56), 2, 2, cl=True) is False
    assert runs((28, 28), 2, 2) is False                 # the plane blocks take it
    assert runs((5, 56, 56), 2, 2) is False              # windows 2 deep
    assert runs((4000,), 2, 2) is False


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_forward_matches_reference_and_row_kernels(case, dtype, monkeypatch):
    lead, spatial, kernel = SHAPES[case]
    nd = len(spatial)
    rng = rng_for("2x2-forward", case, dtype)
    x = sample(rng, lead + spatial, dtype)
    clean = np.where(np.isnan(x), x.dtype.type(0.25), x)  # infinities stay
    mp = getattr(F, f"max_pool{nd}d")
    ap = getattr(F, f"avg_pool{nd}d")

    def run():
        # the layer keeps uint8 taps (the 2x2 argmax); F's indices come from int64 taps
        y, idx = getattr(layers, f"MaxPool{nd}d")(kernel, return_indices=True)(x)
        return [y, idx, mp(x, kernel), ap(clean, kernel), ap(clean, kernel, divisor_override=3),
                ap(clean, kernel, count_include_pad=False), mp(x, kernel, return_indices=True)[1]]

    fast = through(True, run, monkeypatch)
    assert_identical_bits([fast, through(False, run, monkeypatch)])
    ref_y, ref_idx = R.max_pool(x, nd, kernel)
    np.testing.assert_array_equal(fast[0], ref_y)
    np.testing.assert_array_equal(fast[1], ref_idx)
    np.testing.assert_array_equal(fast[2], ref_y)
    np.testing.assert_array_equal(fast[6], ref_idx)
    with np.errstate(invalid="ignore"):  # inf - inf
        ref_avg = [R.avg_pool(clean, nd, kernel), R.avg_pool(clean, nd, kernel,
                                                             divisor_override=3)]
    np.testing.assert_allclose(fast[3], ref_avg[0], **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(fast[4], ref_avg[1], **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_gradients_match_reference_and_row_kernels(case, dtype, monkeypatch):
    lead, spatial, kernel = SHAPES[case]
    nd = len(spatial)
    rng = rng_for("2x2-backward", case, dtype)
    x = np.nan_to_num(sample(rng, lead + spatial, dtype), posinf=3.0, neginf=-3.0)

    def run():
        results = []
        for layer in (getattr(layers, f"MaxPool{nd}d")(kernel),
                      getattr(layers, f"AvgPool{nd}d")(kernel),
                      getattr(layers, f"AvgPool{nd}d")(kernel, divisor_override=3)):
            y = layer(x)
            g = rng_for("2x2-g", case).standard_normal(y.shape).astype(dtype)
            g[::2, ..., ::3] = -0.0
            results += [y, layer.backward(g), g]
        return results

    fast = through(True, run, monkeypatch)
    assert_identical_bits([fast, through(False, run, monkeypatch)])
    tol = TOL[np.dtype(dtype)]
    _, idx = R.max_pool(x, nd, kernel)
    np.testing.assert_allclose(fast[1], R.max_pool_backward(fast[2], idx, nd, x.shape), **tol)
    np.testing.assert_allclose(fast[4], R.avg_pool_backward(fast[5], nd, x.shape, kernel),
                               **tol)
    np.testing.assert_allclose(fast[7], R.avg_pool_backward(fast[8], nd, x.shape, kernel,
                                                            divisor_override=3), **tol)
    assert not np.signbit(fast[4][fast[4] == 0]).any()  # added to zero, as the gather form


@pytest.mark.parametrize("mode", ("max", "avg"))
def test_gradients_by_finite_differences(mode, monkeypatch):
    rng = rng_for("2x2-fd", mode)
    x = rng.permutation(2 * 9 * 11).reshape(1, 2, 9, 11) / 50.0  # distinct: no ties
    w = rng.standard_normal((1, 2, 4, 5))
    with monkeypatch.context() as m:
        route_kernels(m, "rows")
        layer = layers.MaxPool2d(2) if mode == "max" else layers.AvgPool2d(2)
        layer(x)
        got = layer.backward(w)
        expected = numeric_grad(lambda v: layer(v), x.copy(), w)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    assert np.all(got[..., 8:, :] == 0) and np.all(got[..., :, 10:] == 0)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_same_bits_at_every_simd_level_and_thread_count(dtype, monkeypatch):
    rng = rng_for("2x2-simd", dtype)
    x = sample(rng, (2, 3, 131, 66), dtype)
    clean = np.nan_to_num(x, nan=0.0, posinf=2.0, neginf=-2.0)
    g = rng.standard_normal((2, 3, 65, 33)).astype(dtype)

    def run():
        mp, ap = layers.MaxPool2d(2), layers.AvgPool2d(2)
        return [F.max_pool2d(x, 2, return_indices=True)[1], F.max_pool2d(x, 2),
                mp(clean), mp.backward(g), ap(clean), ap.backward(g)]

    with monkeypatch.context() as m:
        route_kernels(m, "rows")
        assert_identical_bits(runs_at_every_simd_level(run))


def test_kernels_refuse_windows_outside_the_input():
    x = np.zeros((2, 5, 6), np.float32)
    with pytest.raises(ValueError, match="inside"):
        pool_kernels.pool_forward_2x2(x, np.zeros((2, 3, 3), np.float32), -1, 1.0, 1)
    with pytest.raises(ValueError, match="op"):
        pool_kernels.pool_forward_2x2(x, np.zeros((2, 2, 3), np.float32), 2, 1.0, 1)
    with pytest.raises(ValueError, match="inside"):
        pool_kernels.backward_2x2(np.zeros((1, 2, 3), np.float32), x, None, 1.0, 1)
    with pytest.raises(ValueError, match="taps"):
        pool_kernels.pool_forward_2x2(x, np.zeros((2, 2, 3), np.float32), -1, 1.0, 1,
                                      np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="without taps"):
        pool_kernels.pool_forward_2x2(x, np.zeros((2, 2, 3), np.float32), 0, 1.0, 1,
                                      np.zeros((2, 2, 3), np.uint8))
