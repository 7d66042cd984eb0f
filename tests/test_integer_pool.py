"""Integer max pooling and unpooling: exact, dtype kept, in both layouts.

The reference pools in float64 (exact for these values) and puts the dtype's minimum where
a window holds no input element; int64 values beyond 2**53 check that nothing goes through
float64 on the way.
"""
import numpy as np
import pytest

import cpool
import cpool.functional as F
from cpool import layers as L
from tests import reference as R
from tests import reference_binned as RB
from tests.pool_cases import random_geometry, rng_for

INTS = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32]


def random_ints(rng, shape, dtype):
    """The dtype's whole range, but within +-2**52 so that the float64 reference is exact
    (test_int64_beyond_float64_precision covers larger values)."""
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), -2**52), min(int(info.max), 2**52)
    return rng.integers(lo, hi, shape, dtype=dtype, endpoint=True)


def expected_max(x, nd, geo):
    ref, idx = R.max_pool(x.astype(np.float64), nd, **geo)
    return np.where(np.isneginf(ref), np.iinfo(x.dtype).min, ref).astype(x.dtype), idx


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pool_keeps_dtype_and_is_exact(dtype, nd, channels_last):
    rng = rng_for("int-max", np.dtype(dtype).name, nd, channels_last)
    for _ in range(3):
        geo, in_size = random_geometry(rng, nd)
        x = random_ints(rng, (2, 3) + in_size, dtype)
        want, want_idx = expected_max(x, nd, geo)
        xin = np.moveaxis(x, 1, -1) if channels_last else x  # non-contiguous on purpose
        out, idx = getattr(F, f"max_pool{nd}d")(xin, **geo, return_indices=True,
                                                channels_last=channels_last)
        if channels_last:
            out, idx = np.moveaxis(out, -1, 1), np.moveaxis(idx, -1, 1)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, want)
        inside = want != np.iinfo(dtype).min  # PyTorch's index of an empty window differs
        np.testing.assert_array_equal(idx[inside], want_idx[inside])


def test_int64_beyond_float64_precision():
    big = 2**62
    x = np.array([[[big, big + 1, big + 3, big + 2]]], dtype=np.int64)
    out, idx = F.max_pool1d(x, 2, return_indices=True)
    assert out.tolist() == [[[big + 1, big + 3]]] and idx.tolist() == [[[1, 2]]]
    assert F.global_max_pool(x).tolist() == [[big + 3]]
    assert F.adaptive_max_pool1d(x, 3).tolist() == [[[big + 1, big + 3, big + 3]]]


@pytest.mark.parametrize("dtype", INTS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_bin_family_max(dtype, channels_last):
    rng = rng_for("int-bins", np.dtype(dtype).name, channels_last)
    x = random_ints(rng, (2, 4, 9, 7), dtype)

    def run(f, *args, **kw):
        out = f(np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x, *args,
                channels_last=channels_last, **kw)
        return np.moveaxis(out, -1, 1) if channels_last and np.ndim(out) == 4 else out

    bins = [F.window_bins(9, [2, 3, 4]), F.window_bins(7, 3, 2)]
    want, _ = RB.ref_bin_pool(x.astype(np.float64), bins, "max")
    got = run(F.bin_pool, bins, "max")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want.astype(dtype))
    want, want_idx = RB.ref_adaptive_pool(x.astype(np.float64), (4, 3), "max")
    got, idx = run(F.adaptive_max_pool2d, (4, 3), return_indices=True)
    if channels_last:
        got, idx = np.moveaxis(got, -1, 1), np.moveaxis(idx, -1, 1)
    np.testing.assert_array_equal(got, want.astype(dtype))
    np.testing.assert_array_equal(idx, want_idx)
    got = run(F.global_max_pool)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, x.max(axis=(2, 3)))
    got = run(F.spatial_pyramid_pool, (1, 2), "max")
    assert got.dtype == dtype
    if not channels_last:
        np.testing.assert_array_equal(
            got, RB.ref_spatial_pyramid_pool(x.astype(np.float64), (1, 2), "max"))


@pytest.mark.parametrize("dtype", INTS)
def test_max_unpool_keeps_dtype(dtype):
    rng = rng_for("int-unpool", np.dtype(dtype).name)
    x = random_ints(rng, (2, 3, 6, 8), dtype)
    out, idx = F.max_pool2d(x, 2, return_indices=True)
    up = F.max_unpool2d(out, idx, 2)
    assert up.dtype == dtype
    want = np.zeros_like(x)
    np.put_along_axis(want.reshape(6, 48), idx.reshape(6, -1), out.reshape(6, -1), axis=1)
    np.testing.assert_array_equal(up, want)


def test_uint8_image_channels_last_thread_invariant():
    rng = rng_for("int-image")
    img = rng.integers(0, 256, (4, 33, 47, 3), dtype=np.uint8)
    runs = []
    try:
        for threads in (1, 2, 3):
            cpool.set_num_threads(threads)
            runs.append(F.max_pool2d(img, 3, 2, 1, channels_last=True))
    finally:
        cpool.set_num_threads(None)
    want, _ = expected_max(np.ascontiguousarray(np.moveaxis(img, -1, 1)), 2,
                           dict(kernel_size=3, stride=2, padding=1))
    np.testing.assert_array_equal(np.moveaxis(runs[0], -1, 1), want)
    assert all(r.tobytes() == runs[0].tobytes() for r in runs)


def test_layer_keeps_dtype_forward_and_backward_is_float():
    x = np.arange(32, dtype=np.int16).reshape(1, 2, 4, 4)
    layer = L.MaxPool2d(2)
    y = layer(x)
    assert y.dtype == np.int16
    np.testing.assert_array_equal(y, F.max_pool2d(x, 2))
    g = layer.backward(np.ones(y.shape))
    assert g.dtype == np.float64 and g.sum() == y.size


def test_other_operators_still_compute_integers_in_float64():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    assert F.avg_pool2d(x, 2).dtype == np.float64
    assert F.max_pool2d(x.astype(np.uint64), 2).dtype == np.float64
    assert F.adaptive_avg_pool2d(x, 2).dtype == np.float64
