"""channels_last=True for max unpooling, fractional max pooling and RoI pool/align.

Every function and layer in channels-last must equal the channels-first call on the
transposed input, transposed back, bitwise (same kernels' arithmetic), and the NumPy
references where they apply; backward too, by finite differences in float64 for the
layers; results are bitwise identical for every thread count.
"""
import numpy as np
import pytest

import cpool
import cpool.functional as F
from cpool import layers
from cpool.layers.base import Layer
from tests import reference_roi as RR
from tests import reference_unpool as RU
from tests.layers.gradcheck import check_layer_gradients


def to_last(a):
    """(N, C, *spatial) -> (N, *spatial, C), C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def to_first(a):
    return np.moveaxis(a, -1, 1)


@pytest.fixture
def one_thread():
    cpool.set_num_threads(1)  # finite differences make hundreds of tiny calls
    yield
    cpool.set_num_threads(None)


class Bound(Layer):
    """Binds the extra call arguments, so the one-argument gradient checker applies."""

    def __init__(self, inner, *args):
        super().__init__()
        self.inner, self.args = inner, args

    def forward(self, x):
        return self.inner(x, *self.args)

    def backward(self, grad_output):
        return self.inner.backward(grad_output)


def each_thread_count(run):
    """run() at 1, 2 and 3 threads: every result bitwise equal; returns the first."""
    results = []
    try:
        for threads in (1, 2, 3):
            cpool.set_num_threads(threads)
            results.append(run())
    finally:
        cpool.set_num_threads(None)
    for other in results[1:]:
        for a, b in zip(_tuple(results[0]), _tuple(other)):
            np.testing.assert_array_equal(a, b)
    return results[0]


def _tuple(r):
    return r if isinstance(r, tuple) else (r,)


# ---------------------------------------------------------------------------- unpooling

UNPOOL_CASES = [  # (nd, x shape channels-first, kernel, stride, padding)
    (1, (2, 5, 9), 3, 2, 1),
    (2, (2, 3, 5, 6), 2, 2, 0),
    (2, (1, 19, 4, 5), 3, 2, 1),   # overlapping windows: duplicate indices
    (3, (2, 3, 3, 4, 3), 2, 2, 0),
]


def unpool_case(nd, shape, k, s, p, dtype, seed=0):
    """(x, indices) as max pooling with the same window makes them, channels-first."""
    rng = np.random.default_rng(seed)
    big_size = RU.unpool_default_size(shape[2:], (k,) * nd, (s,) * nd, (p,) * nd)
    big = rng.standard_normal(shape[:2] + big_size)
    _, idx = getattr(F, f"max_pool{nd}d")(big, k, s, p, return_indices=True)
    x = rng.integers(0, 256, idx.shape).astype(dtype) if np.dtype(dtype).kind == "u" else \
        rng.standard_normal(idx.shape).astype(dtype)
    return x, idx, big_size


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16])
@pytest.mark.parametrize("nd, shape, k, s, p", UNPOOL_CASES)
def test_max_unpool_forward_and_backward(nd, shape, k, s, p, dtype):
    x, idx, big_size = unpool_case(nd, shape, k, s, p, dtype)
    unpool = getattr(F, f"max_unpool{nd}d")
    out = each_thread_count(lambda: unpool(to_last(x), to_last(idx), k, s, p,
                                           channels_last=True))
    assert out.dtype == dtype and out.flags.c_contiguous
    ref = RU.max_unpool(x, idx, big_size)
    np.testing.assert_array_equal(to_first(out), ref)
    np.testing.assert_array_equal(out, to_last(unpool(x, idx, k, s, p)))
    if np.dtype(dtype).kind == "f":
        g = np.random.default_rng(1).standard_normal(ref.shape).astype(dtype)
        backward = getattr(F, f"max_unpool{nd}d_backward")
        got = each_thread_count(lambda: backward(to_last(g), to_last(idx), channels_last=True))
        np.testing.assert_array_equal(to_first(got), RU.max_unpool_backward(g, idx))
        assert got.dtype == dtype


def test_max_unpool_later_duplicate_wins_and_output_size():
    x = to_last(np.arange(1, 13, dtype=np.float64).reshape(1, 3, 2, 2))
    idx = np.zeros_like(x, dtype=np.int64)  # all four values of a plane go to position 0
    out = F.max_unpool2d(x, idx, 2, channels_last=True)
    np.testing.assert_array_equal(out[0, 0, 0], x[0, 1, 1])  # the last one, per channel
    assert not out[0].reshape(-1, 3)[1:].any()
    # output_size: spatial sizes or a whole channels-last shape (batched or not)
    for size in [(5, 4), (1, 5, 4, 3)]:
        assert F.max_unpool2d(x, idx, 2, output_size=size, channels_last=True).shape == \
            (1, 5, 4, 3)
    assert F.max_unpool2d(x[0], idx[0], 2, output_size=(5, 4, 3),
                          channels_last=True).shape == (5, 4, 3)


# windows that do not overlap: no duplicate indices, whose gradient (PyTorch's: both get
# it) is not the derivative of the forward (the later one wins)
@pytest.mark.parametrize("nd, shape, k, s, p", [UNPOOL_CASES[1], UNPOOL_CASES[3]])
def test_max_unpool_layer(nd, shape, k, s, p, one_thread):
    x, idx, big_size = unpool_case(nd, shape, k, s, p, np.float64)
    layer = getattr(layers, f"MaxUnpool{nd}d")(k, s, p, channels_last=True)
    first = getattr(layers, f"MaxUnpool{nd}d")(k, s, p)
    out = layer(to_last(x), to_last(idx))
    np.testing.assert_array_equal(out, to_last(first(x, idx)))
    assert layer.output_shape(to_last(x).shape) == out.shape
    g = np.random.default_rng(2).standard_normal(out.shape)
    np.testing.assert_array_equal(to_first(layer.backward(g)), first.backward(to_first(g)))
    # unbatched
    np.testing.assert_array_equal(layer(to_last(x)[0], to_last(idx)[0]), out[0])
    check_layer_gradients(Bound(layer, to_last(idx)), to_last(x))


# ------------------------------------------------------------------- fractional pooling

FRACTIONAL_CASES = [  # (nd, x shape channels-first, kernel, output_size)
    (2, (2, 5, 11, 13), 2, (5, 6)),
    (2, (1, 19, 17, 9), 3, (8, 4)),
    (2, (3, 2, 7, 7), (2, 3), (6, 5)),   # every window fits exactly at the end
    (3, (2, 4, 7, 6, 8), 2, (3, 4, 5)),
]


def fractional_case(nd, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape), 1).astype(dtype)  # ties
    x.reshape(-1)[::37] = np.nan
    return x, rng.random(shape[:2] + (nd,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd, shape, k, size", FRACTIONAL_CASES)
def test_fractional_forward_and_backward(nd, shape, k, size, dtype):
    x, u = fractional_case(nd, shape, dtype)
    pool = getattr(F, f"fractional_max_pool{nd}d")
    out, idx = each_thread_count(lambda: pool(to_last(x), k, size, return_indices=True,
                                              random_samples=u, channels_last=True))
    ref, ref_idx = pool(x, k, size, return_indices=True, random_samples=u)
    np.testing.assert_array_equal(to_first(out), ref)
    np.testing.assert_array_equal(to_first(idx), ref_idx)
    kernel = (k,) * nd if np.isscalar(k) else k
    want, want_idx = RU.fractional_max_pool(x, kernel, size, u.astype(dtype))
    np.testing.assert_array_equal(to_first(out), want)
    np.testing.assert_array_equal(to_first(idx), want_idx)
    np.testing.assert_array_equal(
        pool(to_last(x), k, size, random_samples=u, channels_last=True), out)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    backward = getattr(F, f"fractional_max_pool{nd}d_backward")
    got = each_thread_count(lambda: backward(g, idx, to_last(x).shape, channels_last=True))
    np.testing.assert_allclose(to_first(got), RU.scatter_add(to_first(g), ref_idx, x.shape),
                               rtol=1e-6, atol=1e-6)


def test_fractional_seed_draws_the_channels_first_samples():
    x, _ = fractional_case(2, (2, 3, 9, 10), np.float64)
    out = F.fractional_max_pool2d(to_last(x), 2, output_ratio=0.5, seed=4, channels_last=True)
    np.testing.assert_array_equal(out, to_last(F.fractional_max_pool2d(x, 2, output_ratio=0.5,
                                                                       seed=4)))


@pytest.mark.parametrize("nd, shape, k, size", [FRACTIONAL_CASES[0], FRACTIONAL_CASES[3]])
def test_fractional_layer(nd, shape, k, size, one_thread):
    make = getattr(layers, f"FractionalMaxPool{nd}d")
    x = np.random.default_rng(3).standard_normal(shape)
    layer, first = make(k, size, seed=7, channels_last=True), make(k, size, seed=7)
    out = each_thread_count(lambda: make(k, size, seed=7, channels_last=True)(to_last(x)))
    np.testing.assert_array_equal(layer(to_last(x)), out)
    np.testing.assert_array_equal(out, to_last(first(x)))
    np.testing.assert_array_equal(layer.random_samples, first.random_samples)
    assert layer.output_shape(to_last(x).shape) == out.shape
    g = np.random.default_rng(4).standard_normal(out.shape)
    np.testing.assert_array_equal(to_first(layer.backward(g)), first.backward(to_first(g)))

    class Reseeded(Bound):  # the same windows at every evaluation
        def forward(self, xv):
            self.inner._rng = np.random.default_rng(7)
            return self.inner(xv)

    check_layer_gradients(Reseeded(make(k, size, channels_last=True)), to_last(x),
                          max_elements=80)


# ------------------------------------------------------------------------------- RoI

ROIS = np.array([[0.5, 0.5, 3.5, 4], [-2, -1, 9, 9], [1.2, 0.7, 6.1, 5.3], [2, 2, 2, 2],
                 [3, 1, 7.5, 6.5], [20, 20, 30, 30]])
BATCH = np.array([0, 1, 1, 0, 0, 1])
ALIGN_OPTIONS = [dict(spatial_scale=0.5, sampling_ratio=2), dict(aligned=True),
                 dict(mode="max", sampling_ratio=0), dict(mode="max", aligned=True,
                                                          sampling_ratio=3)]


def roi_x(dtype, channels=37, seed=0):
    """x (2, channels, 7, 8); 70 and 300 channels span several channel blocks."""
    return np.random.default_rng(seed).standard_normal((2, channels, 7, 8)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [3, 70, 300])
def test_roi_pool(dtype, channels):
    x, rois = roi_x(dtype, channels), ROIS.astype(dtype)
    out, idx = each_thread_count(lambda: F.roi_pool(to_last(x), rois, BATCH, (3, 2), 0.5,
                                                    return_indices=True, channels_last=True))
    ref, ref_idx = F.roi_pool(x, rois, BATCH, (3, 2), 0.5, return_indices=True)
    np.testing.assert_array_equal(to_first(out), ref)
    np.testing.assert_array_equal(to_first(idx), ref_idx)
    want, want_idx = RR.roi_pool(x, rois, BATCH, (3, 2), 0.5)
    np.testing.assert_array_equal(to_first(out), want)
    np.testing.assert_array_equal(to_first(idx), want_idx)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    got = each_thread_count(lambda: F.roi_pool_backward(g, idx, BATCH, to_last(x).shape,
                                                        channels_last=True))
    np.testing.assert_array_equal(got, to_last(F.roi_pool_backward(to_first(g), ref_idx,
                                                                   BATCH, x.shape)))
    np.testing.assert_allclose(to_first(got), RR.roi_pool_grad(to_first(g), ref_idx, BATCH,
                                                               x.shape), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [3, 300])
@pytest.mark.parametrize("options", ALIGN_OPTIONS, ids=["avg", "aligned", "max", "max-al"])
def test_roi_align(dtype, channels, options):
    x, rois = roi_x(dtype, channels), ROIS.astype(dtype)
    out = each_thread_count(lambda: F.roi_align(to_last(x), rois, BATCH, (2, 3), **options,
                                                channels_last=True))
    np.testing.assert_array_equal(out, to_last(F.roi_align(x, rois, BATCH, (2, 3), **options)))
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    if channels == 3:
        np.testing.assert_allclose(to_first(out), RR.roi_align(x, rois, BATCH, (2, 3),
                                                               **options), **tol)
    g = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
    got = each_thread_count(lambda: F.roi_align_backward(
        g, rois, BATCH, to_last(x).shape, **options, x=to_last(x), channels_last=True))
    np.testing.assert_array_equal(got, to_last(F.roi_align_backward(
        to_first(g), rois, BATCH, x.shape, **options, x=x)))
    if channels == 3:
        np.testing.assert_allclose(to_first(got), RR.roi_align_grad(to_first(g), x, rois,
                                                                    BATCH, **options), **tol)


ROI_LAYERS = [
    lambda cl: layers.RoIPool((3, 2), spatial_scale=0.5, channels_last=cl),
    lambda cl: layers.RoIAlign(2, spatial_scale=0.5, sampling_ratio=2, channels_last=cl),
    lambda cl: layers.RoIAlign((2, 3), aligned=True, mode="max", channels_last=cl),
]


@pytest.mark.parametrize("make", ROI_LAYERS, ids=["pool", "align-avg", "align-max"])
def test_roi_layers(make, one_thread):
    x = roi_x(np.float64, 3, seed=2)
    layer, first = make(True), make(False)
    out = layer(to_last(x), ROIS, BATCH)
    np.testing.assert_array_equal(out, to_last(first(x, ROIS, BATCH)))
    assert layer.output_shape(to_last(x).shape) == (None,) + out.shape[1:]
    g = np.random.default_rng(4).standard_normal(out.shape)
    np.testing.assert_array_equal(layer.backward(g), to_last(first.backward(to_first(g))))
    assert layer.get_config()["channels_last"] is True
    check_layer_gradients(Bound(make(True), ROIS, BATCH), to_last(x), max_elements=60)


# ------------------------------------------------------------------------------ errors

def test_channels_last_must_be_a_bool():
    x = np.zeros((1, 4, 4, 2))
    idx = np.zeros((1, 2, 2, 2), dtype=np.int64)
    calls = [
        lambda v: F.max_unpool2d(x[:, :2, :2], idx, 2, channels_last=v),
        lambda v: F.max_unpool2d_backward(x, idx, channels_last=v),
        lambda v: F.fractional_max_pool2d(x, 2, 2, seed=0, channels_last=v),
        lambda v: F.fractional_max_pool2d_backward(x[:, :2, :2], idx, x.shape,
                                                   channels_last=v),
        lambda v: F.roi_pool(x, ROIS[:1], [0], 2, channels_last=v),
        lambda v: F.roi_pool_backward(x[:, :2, :2], idx, [0], x.shape, channels_last=v),
        lambda v: F.roi_align(x, ROIS[:1], [0], 2, channels_last=v),
        lambda v: F.roi_align_backward(x[:, :2, :2], ROIS[:1], [0], x.shape, channels_last=v),
        lambda v: layers.MaxUnpool2d(2, channels_last=v),
        lambda v: layers.FractionalMaxPool3d(2, 2, channels_last=v),
        lambda v: layers.RoIPool(2, channels_last=v),
        lambda v: layers.RoIAlign(2, channels_last=v),
    ]
    for call in calls:
        for bad in ("yes", 1, None):
            with pytest.raises(TypeError, match="channels_last"):
                call(bad)


def test_channels_last_shape_errors_name_the_argument():
    x = np.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="indices must have shape"):
        F.max_unpool2d(x, np.zeros((1, 2, 4, 4), dtype=np.int64), 2, channels_last=True)
    with pytest.raises(ValueError, match=r"grad_output must have .*\(N, \*out, C\)"):
        F.max_unpool2d_backward(np.zeros((1, 8, 8, 3)), np.zeros((1, 4, 4, 2), np.int64),
                                channels_last=True)
    with pytest.raises(ValueError, match=r"output_size"):
        F.max_unpool2d(x, np.zeros((1, 4, 4, 2), np.int64), 2, output_size=(1, 8, 20, 2),
                       channels_last=True)
    with pytest.raises(ValueError, match=r"x must have 4 dims \(N, H, W, C\)"):
        F.roi_align(np.zeros((4, 4, 2)), ROIS[:1], [0], 2, channels_last=True)
    with pytest.raises(ValueError, match="H >= 1"):
        F.roi_pool(np.zeros((1, 4, 0, 2)), ROIS[:1], [0], 2, channels_last=True)
    with pytest.raises(ValueError, match=r"indices must have shape \(K, OH, OW, 2\)"):
        F.roi_pool_backward(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3), np.int64), [0],
                            x.shape, channels_last=True)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(K, OH, OW, C\)"):
        F.roi_align_backward(np.zeros((1, 2, 2, 3)), ROIS[:1], [0], x.shape,
                             channels_last=True)
    with pytest.raises(ValueError, match="input_shape must be \\(N, H, W, C\\)"):
        F.roi_align_backward(np.zeros((1, 2, 2, 2)), ROIS[:1], [0], (4, 4, 2),
                             channels_last=True)
    with pytest.raises(ValueError, match="random_samples"):
        F.fractional_max_pool2d(x, 2, 2, random_samples=np.zeros((1, 4, 2)),
                                channels_last=True)
