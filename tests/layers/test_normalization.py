"""BatchNorm1d / BatchNorm2d: formula reference, PyTorch, finite differences, buffers."""
import json

import numpy as np
import pytest

from cpool.layers import BatchNorm1d, BatchNorm2d
from tests.layers.gradcheck import check_layer_gradients, to_float64

RNG = np.random.default_rng(0)


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def ref_batchnorm(x, weight, bias, eps, mean=None, var=None):
    """y = (x - mean) / sqrt(var + eps) * weight + bias per channel (dim 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if mean is None:
        mean = x.mean(axis=_axes(x))
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=_axes(x))
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            * weight.reshape(shape) + bias.reshape(shape))


def _affine(layer, rng=RNG):
    layer.params["weight"] = rng.uniform(0.5, 1.5, layer.num_features).astype(np.float32)
    layer.params["bias"] = rng.standard_normal(layer.num_features).astype(np.float32)
    return layer


@pytest.mark.parametrize("cls,shape", [(BatchNorm1d, (6, 3)), (BatchNorm1d, (4, 3, 5)),
                                       (BatchNorm2d, (4, 3, 5, 2))])
def test_training_forward_and_running_stats(cls, shape):
    layer = _affine(cls(3, momentum=0.2))
    x = (2 * RNG.standard_normal(shape) + 1).astype(np.float64)
    y = layer(x)
    w, b = layer.params["weight"].astype(np.float64), layer.params["bias"].astype(np.float64)
    np.testing.assert_allclose(y, ref_batchnorm(x, w, b, 1e-5), rtol=1e-10, atol=1e-10)
    m = x.size // 3
    mean, var = x.mean(axis=_axes(x)), x.var(axis=_axes(x))
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.2 * mean, rtol=1e-6)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.8 + 0.2 * var * m / (m - 1),
                               rtol=1e-6)
    assert layer.buffers["num_batches_tracked"] == 1
    assert layer.buffers["num_batches_tracked"].shape == ()
    assert layer.buffers["running_mean"].dtype == np.float32
    layer.eval()
    rm, rv = layer.buffers["running_mean"].astype(np.float64), layer.buffers["running_var"]
    np.testing.assert_allclose(layer(x), ref_batchnorm(x, w, b, 1e-5, rm, rv.astype(float)),
                               rtol=1e-6, atol=1e-6)
    assert layer.buffers["num_batches_tracked"] == 1  # eval leaves the buffers alone
    assert layer.output_shape(shape) == shape


def test_cumulative_average_and_no_tracking():
    layer = BatchNorm1d(2, momentum=None)
    batches = [RNG.standard_normal((5, 2)) + k for k in range(3)]
    for xb in batches:
        layer(xb)
    np.testing.assert_allclose(layer.running_mean, np.mean([b.mean(0) for b in batches], 0),
                               rtol=1e-6)
    # f = 1/k at the k-th batch: the initial (0, 1) drop out, leaving plain averages.
    np.testing.assert_allclose(layer.running_var,
                               np.mean([b.var(0, ddof=1) for b in batches], 0), rtol=1e-6)
    free = BatchNorm2d(2, affine=False, track_running_stats=False).eval()
    x = RNG.standard_normal((3, 2, 4, 4))
    assert free.buffers == {} and free.params == {}
    np.testing.assert_allclose(free(x), ref_batchnorm(x, np.ones(2), np.zeros(2), 1e-5),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls,shape,kwargs", [
    (BatchNorm1d, (5, 3), {}),
    (BatchNorm1d, (3, 2, 4), {"affine": False}),
    (BatchNorm2d, (2, 3, 3, 2), {}),
    (BatchNorm2d, (2, 2, 3, 3), {"track_running_stats": False}),
])
@pytest.mark.parametrize("training", [True, False])
def test_finite_differences(cls, shape, kwargs, training):
    layer = cls(shape[1], **kwargs)
    if layer.affine:
        _affine(layer)
    if layer.track_running_stats:
        layer.buffers["running_mean"][:] = RNG.standard_normal(shape[1])
        layer.buffers["running_var"][:] = RNG.uniform(0.5, 2, shape[1])
    layer.train(training)
    check_layer_gradients(layer, RNG.standard_normal(shape))


@pytest.mark.parametrize("cls,shape,kwargs", [
    (BatchNorm1d, (8, 4), {}),
    (BatchNorm1d, (4, 4, 6), {"momentum": None}),
    (BatchNorm2d, (4, 4, 5, 3), {}),
    (BatchNorm2d, (3, 4, 2, 2), {"affine": False, "momentum": 0.3, "eps": 1e-3}),
    (BatchNorm2d, (3, 4, 2, 2), {"track_running_stats": False}),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch_train_then_eval(cls, shape, kwargs, dtype):
    torch = pytest.importorskip("torch")
    layer = cls(shape[1], **kwargs)
    tlayer = getattr(torch.nn, cls.__name__)(shape[1], **kwargs)
    if layer.affine:
        _affine(layer)
        with torch.no_grad():
            tlayer.weight.copy_(torch.from_numpy(layer.params["weight"]))
            tlayer.bias.copy_(torch.from_numpy(layer.params["bias"]))
    if dtype == np.float64:
        to_float64(layer)
        tlayer.double()
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    for step, training in enumerate([True, True, False]):
        layer.train(training)
        tlayer.train(training)
        x = (RNG.standard_normal(shape) * 3 + step).astype(dtype)
        g = RNG.standard_normal(shape).astype(dtype)
        xt = torch.from_numpy(x).requires_grad_()
        if tlayer.affine:
            tlayer.zero_grad()
        yt = tlayer(xt)
        yt.backward(torch.from_numpy(g))
        np.testing.assert_allclose(layer(x), yt.detach().numpy(), **tol)
        np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), **tol)
        if layer.affine:
            np.testing.assert_allclose(layer.grads["weight"], tlayer.weight.grad.numpy(), **tol)
            np.testing.assert_allclose(layer.grads["bias"], tlayer.bias.grad.numpy(), **tol)
        state = tlayer.state_dict()
        assert set(layer.buffers) | set(layer.params) == set(state)
        for name, value in layer.buffers.items():
            np.testing.assert_allclose(value, state[name].numpy(), **tol)


def test_config_repr_and_properties():
    layer = BatchNorm2d(8, eps=1e-3, momentum=None, affine=False)
    clone = BatchNorm2d.from_config(json.loads(json.dumps(layer.get_config())))
    assert clone.get_config() == layer.get_config()
    assert repr(layer) == "BatchNorm2d(num_features=8, eps=0.001, momentum=None, affine=False)"
    bn = BatchNorm1d(3)
    assert bn.running_mean is bn.buffers["running_mean"]
    assert bn.num_batches_tracked is bn.buffers["num_batches_tracked"]


def test_loaded_buffers_take_effect_and_input_untouched():
    layer = BatchNorm1d(2).eval()
    layer.buffers["running_mean"] = np.array([1.0, -1.0], np.float32)
    layer.buffers["running_var"] = np.array([4.0, 0.25], np.float32)
    x = np.array([[3.0, 0.0]], np.float32)
    copy = x.copy()
    np.testing.assert_allclose(layer(x), [[2 / np.sqrt(4 + 1e-5), 1 / np.sqrt(0.25 + 1e-5)]],
                               rtol=1e-6)
    np.testing.assert_array_equal(x, copy)
    assert layer(x.astype(np.float16)).dtype == np.float16


@pytest.mark.parametrize("make,exc,name", [
    (lambda: BatchNorm1d(0), ValueError, "num_features"),
    (lambda: BatchNorm1d(2.0), TypeError, "num_features"),
    (lambda: BatchNorm2d(2, eps=0), ValueError, "eps"),
    (lambda: BatchNorm2d(2, momentum="x"), TypeError, "momentum"),
    (lambda: BatchNorm2d(2, affine=1), TypeError, "affine"),
    (lambda: BatchNorm2d(2, track_running_stats=None), TypeError, "track_running_stats"),
])
def test_bad_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match="x must be 4-D with 3 channels"):
        BatchNorm2d(3)(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="x must be 2-D or 3-D with 3 channels"):
        BatchNorm1d(3)(np.ones((2, 4)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm1d(3)(np.ones((1, 3)))
    BatchNorm1d(3).eval()(np.ones((1, 3)))  # fine with running statistics
    layer = BatchNorm1d(3)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.ones((2, 3)))
    layer(RNG.standard_normal((2, 3)))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        layer.backward(np.ones((3, 3)))
