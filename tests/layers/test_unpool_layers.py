"""MaxUnpool1d/2d/3d layers: forward/backward against the functional API and PyTorch's
layers, config round trip, output_shape, threads, errors."""
import numpy as np
import pytest

import cpool
from cpool import functional as F
from cpool import layers
from tests import reference_unpool as RU
from tests.pool_cases import rng_for
from tests.test_pool import bits

SPATIAL = {1: (8,), 2: (6, 8), 3: (4, 6, 2)}  # even: the default unpooled size is x's


def pooled(rng, nd, dtype=np.float64):
    """x, max_pool output and indices (kernel 2, stride 2, padding 1)."""
    x = rng.standard_normal((2, 3) + SPATIAL[nd]).astype(dtype)
    y, idx = getattr(F, f"max_pool{nd}d")(x, 2, 2, 1, return_indices=True)
    return x, y, idx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_layer_matches_functional_and_reference(nd, dtype):
    rng = rng_for("unpool-layer", nd, dtype)
    x, y, idx = pooled(rng, nd, dtype)
    layer = getattr(layers, f"MaxUnpool{nd}d")(2, 2, 1)
    out = layer(y, idx, output_size=x.shape)
    np.testing.assert_array_equal(out, F.__dict__[f"max_unpool{nd}d"](y, idx, 2, 2, 1,
                                                                       output_size=x.shape))
    np.testing.assert_array_equal(out, RU.max_unpool(y, idx, x.shape[2:]))
    g = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_array_equal(layer.backward(g), RU.max_unpool_backward(g, idx))
    assert layer.backward(g).dtype == dtype
    default = layer(y, idx)
    np.testing.assert_array_equal(default, out)
    assert default.shape == layer.output_shape(y.shape)
    assert default.shape[2:] == RU.unpool_default_size(y.shape[2:], (2,) * nd, (2,) * nd, (1,) * nd)
    one = layer(y[0], idx[0], output_size=x.shape[2:])
    np.testing.assert_array_equal(one, out[0])
    np.testing.assert_array_equal(layer.backward(g[0]), RU.max_unpool_backward(g, idx)[0])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_layer_matches_torch_layer(nd):
    torch = pytest.importorskip("torch")
    rng = rng_for("unpool-layer-torch", nd)
    x, y, idx = pooled(rng, nd)
    tlayer = getattr(torch.nn, f"MaxUnpool{nd}d")(2, 2, 1)
    ty = torch.from_numpy(y).requires_grad_()
    tout = tlayer(ty, torch.from_numpy(idx), output_size=list(x.shape))
    layer = getattr(layers, f"MaxUnpool{nd}d")(2, 2, 1)
    out = layer(y, idx, output_size=x.shape)
    np.testing.assert_array_equal(out, tout.detach().numpy())
    g = rng.standard_normal(out.shape)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(layer.backward(g), ty.grad.numpy())


def test_config_repr_and_errors():
    layer = layers.MaxUnpool2d(3, stride=2, padding=1)
    assert layer.get_config() == {"kernel_size": 3, "stride": 2, "padding": 1,
                                  "channels_last": False}
    assert repr(layer) == "MaxUnpool2d(kernel_size=3, stride=2, padding=1)"
    clone = layers.MaxUnpool2d.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert layer.params == {}
    with pytest.raises(ValueError, match="kernel_size"):
        layers.MaxUnpool2d(0)
    with pytest.raises(ValueError, match="padding"):
        layers.MaxUnpool1d(2, padding=-1)
    x = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="indices"):
        layer(x, np.full((1, 1, 2, 2), 100))
    with pytest.raises(TypeError, match="indices"):
        layer(x, np.zeros((1, 1, 2, 2)))
    layer(x, np.zeros((1, 1, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.zeros((1, 1, 2, 2)))


def test_threads_and_inputs():
    rng = rng_for("unpool-layer-threads")
    y = rng.standard_normal((3, 4, 8, 9)).astype(np.float32)
    idx = rng.integers(0, 16 * 18, y.shape)
    g = rng.standard_normal((3, 4, 16, 18)).astype(np.float32)
    keep = [a.copy() for a in (y, idx, g)]
    results = []
    try:
        for n in (1, 2):
            cpool.set_num_threads(n)
            layer = layers.MaxUnpool2d(2)
            results.append([layer(y, idx), layer.backward(g)])
    finally:
        cpool.set_num_threads(None)
    for a, b in zip(*results):
        assert np.array_equal(bits(a), bits(b))
    for a, k in zip((y, idx, g), keep):
        np.testing.assert_array_equal(a, k)
