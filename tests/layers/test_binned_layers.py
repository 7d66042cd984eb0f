"""Global, adaptive, binned and pyramid pooling layers: forward and backward agree with
the functional API (itself tested against the references), training/eval state,
configs, output shapes and errors."""
import json

import numpy as np
import pytest

from cpool import functional as F
from cpool import layers
from tests.pool_cases import random_input, rng_for
from tests.test_pool import numeric_grad

BINS = [[(0, 3), (2, 7), (6, 7)], [(1, 5), (0, 2)]]

# (layer, functional forward, functional backward(g, x)); x has shape (2, 3, 7, 6)
# or, for 1-D/3-D layers, the shapes below.
CASES = [
    (lambda: layers.GlobalMaxPool(), F.global_max_pool,
     lambda g, x: F.global_max_pool_backward(g, x), (2, 3, 7, 6)),
    (lambda: layers.GlobalAvgPool(keepdims=True), lambda x: F.global_avg_pool(x, True),
     lambda g, x: F.global_avg_pool_backward(g, x.shape), (2, 3, 4, 3, 5)),
    (lambda: layers.GlobalLPPool(p=3), lambda x: F.global_lp_pool(x, 3),
     lambda g, x: F.global_lp_pool_backward(g, x, 3), (2, 3, 9)),
    (lambda: layers.AdaptiveMaxPool1d(4), lambda x: F.adaptive_max_pool1d(x, 4),
     lambda g, x: F.adaptive_max_pool1d_backward(g, F.adaptive_max_pool1d(x, 4, True)[1],
                                                 x.shape), (2, 3, 9)),
    (lambda: layers.AdaptiveMaxPool2d((3, None)), lambda x: F.adaptive_max_pool2d(x, (3, None)),
     lambda g, x: F.adaptive_max_pool2d_backward(
         g, F.adaptive_max_pool2d(x, (3, None), True)[1], x.shape), (2, 3, 7, 6)),
    (lambda: layers.AdaptiveMaxPool3d(2), lambda x: F.adaptive_max_pool3d(x, 2),
     lambda g, x: F.adaptive_max_pool3d_backward(g, F.adaptive_max_pool3d(x, 2, True)[1],
                                                 x.shape), (3, 5, 4, 3)),
    (lambda: layers.AdaptiveAvgPool1d(5), lambda x: F.adaptive_avg_pool1d(x, 5),
     lambda g, x: F.adaptive_avg_pool1d_backward(g, x.shape), (2, 3, 7)),
    (lambda: layers.AdaptiveAvgPool2d((4, 3)), lambda x: F.adaptive_avg_pool2d(x, (4, 3)),
     lambda g, x: F.adaptive_avg_pool2d_backward(g, x.shape), (2, 3, 7, 6)),
    (lambda: layers.AdaptiveAvgPool3d((None, 2, 3)),
     lambda x: F.adaptive_avg_pool3d(x, (None, 2, 3)),
     lambda g, x: F.adaptive_avg_pool3d_backward(g, x.shape), (1, 2, 3, 5, 4)),
    (lambda: layers.BinPool(BINS), lambda x: F.bin_pool(x, BINS),
     lambda g, x: F.bin_pool_backward(g, x, BINS), (2, 3, 7, 6)),
    (lambda: layers.BinPool(BINS, "avg"), lambda x: F.bin_pool(x, BINS, "avg"),
     lambda g, x: F.bin_pool_backward(g, x, BINS, "avg"), (3, 7, 6)),
    (lambda: layers.BinPool(BINS, "lp", 1.5), lambda x: F.bin_pool(x, BINS, "lp", 1.5),
     lambda g, x: F.bin_pool_backward(g, x, BINS, "lp", 1.5), (2, 3, 7, 6)),
    (lambda: layers.SpatialPyramidPool(), F.spatial_pyramid_pool,
     lambda g, x: F.spatial_pyramid_pool_backward(g, x), (2, 3, 7, 6)),
    (lambda: layers.SpatialPyramidPool((3, 1), "avg"),
     lambda x: F.spatial_pyramid_pool(x, (3, 1), "avg"),
     lambda g, x: F.spatial_pyramid_pool_backward(g, x, (3, 1), "avg"), (3, 5, 8)),
]
IDS = [f"case{i}" for i in range(len(CASES))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make, forward, backward, shape", CASES, ids=IDS)
def test_layer_matches_functional(make, forward, backward, shape, dtype):
    rng = rng_for("layer", shape, np.dtype(dtype).name)
    x = random_input(rng, shape, dtype, "distinct")
    keep = x.copy()
    layer = make()
    y = layer(x)
    np.testing.assert_array_equal(y, forward(x))
    assert y.dtype == dtype
    assert layer.output_shape(x.shape) == y.shape
    g = random_input(rng, y.shape, dtype)
    np.testing.assert_array_equal(layer.backward(g), backward(g, x))
    layer.eval()
    np.testing.assert_array_equal(layer(x), y)
    with pytest.raises(RuntimeError, match="training"):
        layer.backward(g)
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("make, forward, backward, shape", CASES, ids=IDS)
def test_layer_backward_finite_differences(make, forward, backward, shape):
    rng = rng_for("layer-fd", shape)
    shape = shape[:-1] + (min(shape[-1], 5),)  # BINS reach column 5
    if len(shape) == 5:
        shape = (1,) + shape[1:]
    x = random_input(rng, shape, np.float64, "distinct")
    layer = make()
    y = layer(x)
    w = rng.standard_normal(y.shape)
    grad = layer.backward(w)
    expected = numeric_grad(lambda v: make().eval()(v), x.copy(), w)
    np.testing.assert_allclose(grad, expected, atol=1e-7)


@pytest.mark.parametrize("make, forward, backward, shape", CASES, ids=IDS)
def test_config_round_trip(make, forward, backward, shape):
    layer = make()
    config = layer.get_config()
    json.dumps(config)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert repr(clone) == repr(layer)
    x = random_input(rng_for("config", shape), shape, np.float64)
    np.testing.assert_array_equal(clone(x), layer(x))


def test_adaptive_max_return_indices_matches_functional():
    x = random_input(rng_for("indices"), (2, 3, 9, 7), np.float32, "ties")
    layer = layers.AdaptiveMaxPool2d((4, 5), return_indices=True)
    out, idx = layer(x)
    ref_out, ref_idx = F.adaptive_max_pool2d(x, (4, 5), return_indices=True)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    g = np.ones(out.shape, np.float32)
    np.testing.assert_array_equal(layer.backward(g),
                                  F.adaptive_max_pool2d_backward(g, idx, x.shape))


def test_backward_checks_grad_output_shape():
    layer = layers.SpatialPyramidPool()
    y = layer(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.zeros((2, y.shape[1] + 1), np.float32))
    layer = layers.AdaptiveAvgPool2d(2)
    layer(np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.zeros((2, 3, 3, 2)))


@pytest.mark.parametrize("make, exc, match", [
    (lambda: layers.AdaptiveAvgPool2d(0), ValueError, "output_size"),
    (lambda: layers.AdaptiveMaxPool3d((1, 2)), ValueError, "output_size"),
    (lambda: layers.SpatialPyramidPool(()), ValueError, "levels"),
    (lambda: layers.SpatialPyramidPool((2, -1)), ValueError, "levels"),
    (lambda: layers.SpatialPyramidPool(mode="sum"), ValueError, "mode"),
    (lambda: layers.BinPool([[(0, 0)]]), ValueError, "bins"),
    (lambda: layers.BinPool([[(0, 2)]], mode="min"), ValueError, "mode"),
    (lambda: layers.GlobalLPPool(p=0), ValueError, "p"),
    (lambda: layers.GlobalMaxPool(keepdims="yes"), TypeError, "keepdims"),
])
def test_bad_constructor_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bin_pool_layer_rejects_bins_outside_input():
    layer = layers.BinPool([[(0, 9)], [(0, 2)]])
    with pytest.raises(ValueError, match=r"bins\[0\]\[0\]"):
        layer(np.zeros((1, 1, 5, 5)))
