"""MaxPool/AvgPool/LPPool 1d/2d/3d layers: forward and backward against the functional API
and the NumPy reference, finite differences, state handling and configuration."""
import json

import numpy as np
import pytest

import cpool
from cpool import functional as F
from cpool import layers
from tests import reference as R
from tests.pool_cases import random_geometry, random_input, rng_for


def layer_cls(kind, nd):
    return getattr(layers, {"max": "MaxPool", "avg": "AvgPool", "lp": "LPPool"}[kind] + f"{nd}d")


def make_case(kind, nd, rng, dtype=np.float64, data="normal", extra=4, lead=None):
    """(layer, input, functional forward, functional backward(g, x, y), reference forward)."""
    # max: the functional backward reads indices, which a window without input elements
    # does not have (see test_pool.test_padding_only_window_*)
    geo, in_size = random_geometry(rng, nd, extra=extra, padding_only_windows=kind != "max")
    lead = lead or (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    x = random_input(rng, tuple(lead) + in_size, dtype, data)
    if kind == "max":
        layer = layer_cls(kind, nd)(**geo)
        fwd = lambda v: getattr(F, f"max_pool{nd}d")(v, **geo)  # noqa: E731

        def bwd(g, v, y):
            _, idx = getattr(F, f"max_pool{nd}d")(v, **geo, return_indices=True)
            return getattr(F, f"max_pool{nd}d_backward")(g, idx, v.shape)

        ref = lambda v: R.max_pool(v, nd, **geo)[0]  # noqa: E731
    elif kind == "avg":
        opts = dict(count_include_pad=bool(rng.integers(2)),
                    divisor_override=None if rng.random() < 0.7 else int(rng.integers(1, 5)))
        layer = layer_cls(kind, nd)(**geo, **opts)
        fwd = lambda v: getattr(F, f"avg_pool{nd}d")(v, **geo, **opts)  # noqa: E731
        bwd = lambda g, v, y: getattr(F, f"avg_pool{nd}d_backward")(  # noqa: E731
            g, v.shape, **geo, **opts)
        ref = lambda v: R.avg_pool(v, nd, **geo, **opts)  # noqa: E731
    else:
        p = float(rng.choice([1.0, 2.0, 3.0, 1.5]))
        layer = layer_cls(kind, nd)(p, **geo)
        fwd = lambda v: getattr(F, f"lp_pool{nd}d")(v, p, **geo)  # noqa: E731
        bwd = lambda g, v, y: getattr(F, f"lp_pool{nd}d_backward")(  # noqa: E731
            g, v, y, p, **geo)
        ref = lambda v: R.lp_pool(v, nd, p, **geo)  # noqa: E731
    return layer, x, fwd, bwd, ref


KINDS = ["max", "avg", "lp"]


@pytest.fixture
def serial():
    """One thread for the many tiny calls of finite differences."""
    cpool.set_num_threads(1)
    yield
    cpool.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_matches_functional_and_reference(kind, nd, dtype):
    rng = rng_for("layer", kind, nd, dtype)
    for trial in range(4):
        data = "ties" if kind == "max" and trial % 2 else ("away0" if kind == "lp" else "normal")
        layer, x, fwd, bwd, ref = make_case(kind, nd, rng, dtype, data)
        y = layer(x)
        assert y.dtype == dtype and y.flags.c_contiguous
        np.testing.assert_array_equal(y, fwd(x))
        tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(y, ref(x), **tol)
        g = random_input(rng, y.shape, dtype)
        grad = layer.backward(g)
        assert grad.dtype == dtype and grad.shape == x.shape and grad.flags.c_contiguous
        np.testing.assert_allclose(grad, bwd(g, x, y), **tol)
        layer.eval()
        np.testing.assert_array_equal(layer(x), y)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_backward_finite_differences(kind, nd, serial):
    rng = rng_for("layer-fd", kind, nd)
    data = {"max": "distinct", "avg": "normal", "lp": "away0"}[kind]
    for _ in range(2):
        layer, x, fwd, _, _ = make_case(kind, nd, rng, np.float64, data, extra=2, lead=(1, 2))
        y = layer(x)
        w = np.where(np.isfinite(y), rng.standard_normal(y.shape), 0.0)
        grad = layer.backward(w)
        h = 1e-6
        expected = np.zeros_like(x)
        for i in range(x.size):
            xp, xm = x.copy(), x.copy()
            xp.flat[i] += h
            xm.flat[i] -= h
            up = np.where(w != 0, fwd(xp), 0)
            down = np.where(w != 0, fwd(xm), 0)
            expected.flat[i] = np.sum(w * (up - down)) / (2 * h)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_max_layer_return_indices_matches_functional():
    rng = rng_for("layer-indices")
    x = random_input(rng, (2, 3, 7, 9), np.float32, "ties")
    geo = dict(kernel_size=(3, 2), stride=2, padding=((1, 0), (1, 1)), dilation=(1, 2),
               ceil_mode=True)
    layer = layers.MaxPool2d(**geo, return_indices=True)
    out, idx = layer(x)
    ref_out, ref_idx = F.max_pool2d(x, **geo, return_indices=True)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    g = random_input(rng, out.shape, np.float32)
    np.testing.assert_allclose(layer.backward(g), F.max_pool2d_backward(g, idx, x.shape),
                               rtol=1e-6)
    layer.eval()  # indices still come back in eval mode, and so does backward
    out2, idx2 = layer(x)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_allclose(layer.backward(g), F.max_pool2d_backward(g, idx, x.shape),
                               rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_unbatched_and_float16(kind):
    rng = rng_for("layer-unbatched", kind)
    layer, x, fwd, _, _ = make_case(kind, 2, rng, np.float64, "away0")
    x0 = x[0]
    y = layer(x0)
    np.testing.assert_array_equal(y, fwd(x0))
    assert y.shape == fwd(x[:1]).shape[1:]
    g = random_input(rng, y.shape, np.float64)
    grad0 = layer.backward(g)
    layer(x[:1])
    np.testing.assert_array_equal(grad0, layer.backward(g[np.newaxis])[0])
    y16 = layer(x.astype(np.float16))
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16, fwd(x.astype(np.float16)))
    assert layer.backward(np.ones(y16.shape, np.float16)).dtype == np.float16


@pytest.mark.parametrize("kind", KINDS)
def test_layer_backward_without_training_forward_raises(kind):
    rng = rng_for("layer-state", kind)
    layer, x, _, _, _ = make_case(kind, 2, rng)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.ones((1, 1, 1, 1)))
    y = layer(x)
    layer.backward(np.ones_like(y))
    layer.eval()
    y = layer(x)
    if kind == "avg":  # needs no saved state
        layer.backward(np.ones_like(y))
    else:  # an eval forward keeps nothing: the earlier training forward must not be reused
        with pytest.raises(RuntimeError, match="training"):
            layer.backward(np.ones_like(y))


@pytest.mark.parametrize("kind", KINDS)
def test_layer_backward_rejects_wrong_grad_shape(kind):
    rng = rng_for("layer-grad-shape", kind)
    layer, x, _, _, _ = make_case(kind, 2, rng)
    y = layer(x)
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones(y.shape[:-1] + (y.shape[-1] + 1,)))
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones(y.shape[1:]))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_layer_config_roundtrip_repr_and_output_shape(kind, nd):
    rng = rng_for("layer-config", kind, nd)
    layer, x, _, _, _ = make_case(kind, nd, rng)
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config  # plain, JSON-able
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert repr(clone) == repr(layer)
    np.testing.assert_array_equal(clone(x), layer(x))
    assert layer.output_shape(x.shape) == layer(x).shape
    assert layer.output_shape(x.shape[1:]) == layer(x[0]).shape
    assert repr(layer).startswith(type(layer).__name__ + "(")


def test_layer_repr_shows_non_default_arguments():
    assert repr(layers.MaxPool2d(2)) == "MaxPool2d(kernel_size=2)"
    assert (repr(layers.AvgPool1d(3, stride=2, count_include_pad=False))
            == "AvgPool1d(kernel_size=3, stride=2, count_include_pad=False)")
    assert (repr(layers.LPPool3d(2, (1, 2, 3), ceil_mode=True))
            == "LPPool3d(norm_type=2.0, kernel_size=[1, 2, 3], ceil_mode=True)")
    config = layers.MaxPool2d(3, 2, ((1, 0), (0, 1)), dilation=2, return_indices=True).get_config()
    assert config["padding"] == [[1, 0], [0, 1]] and config["return_indices"] is True
    assert config["kernel_size"] == 3 and config["stride"] == 2 and config["dilation"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_layer_empty_batch(kind):
    layer = layer_cls(kind, 2)(*((2.0,) if kind == "lp" else ()), 2)
    x = np.zeros((0, 3, 5, 4), dtype=np.float32)
    y = layer(x)
    assert y.shape == (0, 3, 2, 2) and y.dtype == np.float32
    grad = layer.backward(np.zeros(y.shape, np.float32))
    assert grad.shape == x.shape and grad.dtype == np.float32
