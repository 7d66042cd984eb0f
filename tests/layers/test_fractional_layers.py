"""FractionalMaxPool2d/3d layers: fresh samples per forward from the layer's own seeded
generator, kept in `random_samples`; forward/backward against the functional API and
the reference; config; errors."""
import numpy as np
import pytest

from cpool import functional as F
from cpool import layers
from tests import reference_unpool as RU
from tests.pool_cases import rng_for

SPATIAL = {2: (9, 8), 3: (6, 7, 5)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [2, 3])
def test_forward_backward_use_the_kept_samples(nd, dtype):
    rng = rng_for("frac-layer", nd, dtype)
    x = rng.standard_normal((2, 3) + SPATIAL[nd]).astype(dtype)
    layer = getattr(layers, f"FractionalMaxPool{nd}d")(2, output_ratio=0.6, seed=3)
    assert layer.random_samples is None
    out = layer(x)
    u = layer.random_samples
    assert u.shape == (2, 3, nd) and u.dtype == dtype and np.all((u >= 0) & (u < 1))
    np.testing.assert_array_equal(u, np.random.default_rng(3).random((2, 3, nd), dtype=dtype))
    fn = getattr(F, f"fractional_max_pool{nd}d")
    expected, idx = fn(x, 2, output_ratio=0.6, random_samples=u, return_indices=True)
    np.testing.assert_array_equal(out, expected)
    out_size = tuple(int(L * 0.6) for L in SPATIAL[nd])
    np.testing.assert_array_equal(out, RU.fractional_max_pool(x, (2,) * nd, out_size, u)[0])
    g = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(layer.backward(g), RU.scatter_add(g, idx, x.shape),
                               rtol=1e-6, atol=1e-7)  # the reference sums in float64

    second = layer(x)  # fresh samples, still reproducible from the seed
    assert not np.array_equal(layer.random_samples, u)
    again = getattr(layers, f"FractionalMaxPool{nd}d")(2, output_ratio=0.6, seed=3)
    again(x)
    np.testing.assert_array_equal(again(x), second)


def test_unbatched_return_indices_eval_and_output_shape():
    rng = rng_for("frac-layer-misc")
    x = rng.standard_normal((3, 10, 9))
    layer = layers.FractionalMaxPool2d((3, 2), output_size=(4, 5), return_indices=True, seed=1)
    assert layer.output_shape(x.shape) == (3, 4, 5)
    assert layer.output_shape((2,) + x.shape) == (2, 3, 4, 5)
    out, idx = layer(x)  # output_shape drew no samples: these are the seed's first
    u = np.random.default_rng(1).random((1, 3, 2))
    np.testing.assert_array_equal(layer.random_samples, u)
    exp, exp_idx = F.fractional_max_pool2d(x, (3, 2), output_size=(4, 5), random_samples=u,
                                           return_indices=True)
    np.testing.assert_array_equal(out, exp)
    np.testing.assert_array_equal(idx, exp_idx)
    g = rng.standard_normal(out.shape)
    np.testing.assert_array_equal(layer.backward(g),
                                  F.fractional_max_pool2d_backward(g, idx, x.shape))
    plain = layers.FractionalMaxPool2d(2, output_size=3).eval()
    plain(x)
    with pytest.raises(RuntimeError, match="training"):
        plain.backward(np.zeros((3, 3, 3)))


def test_config_and_errors():
    layer = layers.FractionalMaxPool3d(2, output_ratio=(0.5, 0.5, 0.7), seed=7)
    config = layer.get_config()
    assert config == {"kernel_size": 2, "output_size": None, "output_ratio": [0.5, 0.5, 0.7],
                      "return_indices": False, "seed": 7, "channels_last": False}
    assert "seed=7" in repr(layer)
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6, 6))
    clone = layers.FractionalMaxPool3d.from_config(config)
    np.testing.assert_array_equal(clone(x), layers.FractionalMaxPool3d.from_config(config)(x))
    with pytest.raises(ValueError, match="output_size and output_ratio"):
        layers.FractionalMaxPool2d(2)
    with pytest.raises(ValueError, match="output_ratio"):
        layers.FractionalMaxPool2d(2, output_ratio=1.5)
    with pytest.raises(ValueError, match="kernel_size"):
        layers.FractionalMaxPool2d(0, output_size=2)
    layer = layers.FractionalMaxPool2d(2, output_size=4)
    with pytest.raises(ValueError, match="output_size"):
        layer(np.zeros((1, 1, 4, 4)))
    layer(np.zeros((1, 1, 6, 6)))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.zeros((1, 1, 3, 3)))
