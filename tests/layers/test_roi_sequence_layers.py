"""RoIPool, RoIAlign and SequencePool layers: forward and backward against the slow
references (tests/reference_roi.py, tests/reference_sequence.py), float64 finite
differences through the layer API, training/eval state, configs, output shapes, errors."""
import json

import numpy as np
import pytest

import cpool
from cpool import layers
from cpool.layers.base import Layer
from tests import reference_roi as RR
from tests import reference_sequence as RS
from tests.layers.gradcheck import check_layer_gradients

ROIS = np.array([[0.5, 0.5, 3.5, 4], [-2, -1, 9, 9], [1.2, 0.7, 6.1, 5.3], [2, 2, 2, 2],
                 [3, 1, 7.5, 6.5]])
BATCH = np.array([0, 1, 1, 0, 0])


class Bound(Layer):
    """Binds the extra call arguments, so the one-argument gradient checker applies."""

    def __init__(self, inner, *args, **kwargs):
        super().__init__()
        self.inner, self.args, self.kwargs = inner, args, kwargs

    def forward(self, x):
        return self.inner(x, *self.args, **self.kwargs)

    def backward(self, grad_output):
        return self.inner.backward(grad_output)


@pytest.fixture
def one_thread():
    cpool.set_num_threads(1)  # finite differences make hundreds of tiny calls
    yield
    cpool.set_num_threads(None)


def roi_input(dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((2, 3, 7, 8)).astype(dtype)


ROI_LAYERS = [
    (lambda: layers.RoIPool((3, 2), spatial_scale=0.5), "pool", dict(spatial_scale=0.5)),
    (lambda: layers.RoIAlign(2, spatial_scale=0.5, sampling_ratio=2), "avg",
     dict(spatial_scale=0.5, sampling_ratio=2)),
    (lambda: layers.RoIAlign((2, 3), aligned=True, mode="max"), "max",
     dict(aligned=True, mode="max")),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make, kind, kw", ROI_LAYERS, ids=["pool", "align-avg", "align-max"])
def test_roi_layers_match_reference(make, kind, kw, dtype):
    layer = make()
    x = roi_input(dtype)
    rois = ROIS.astype(dtype)
    y = layer(x, rois, BATCH)
    out = tuple(np.broadcast_to(layer.output_size, 2))
    assert y.dtype == dtype and y.shape == (5, 3) + out
    assert layer.output_shape(x.shape) == (None, 3) + out
    g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    if kind == "pool":
        ref, idx = RR.roi_pool(x, rois, BATCH, out, kw["spatial_scale"])
        np.testing.assert_array_equal(y, ref)
        ref_grad = RR.roi_pool_grad(g, idx, BATCH, x.shape)
    else:
        np.testing.assert_allclose(y, RR.roi_align(x, rois, BATCH, out, **kw), **tol)
        ref_grad = RR.roi_align_grad(g, x, rois, BATCH, **kw)
    np.testing.assert_allclose(layer.backward(g), ref_grad, **tol)


@pytest.mark.parametrize("make, kind, kw", ROI_LAYERS, ids=["pool", "align-avg", "align-max"])
def test_roi_layers_finite_differences(make, kind, kw, one_thread):
    check_layer_gradients(Bound(make(), ROIS, BATCH), roi_input(np.float64, seed=2),
                          max_elements=60)


def test_roi_layer_state_config_and_errors():
    layer = layers.RoIAlign((2, 3), spatial_scale=0.25, sampling_ratio=1, aligned=True,
                            mode="max")
    config = json.loads(json.dumps(layer.get_config()))
    assert config == dict(output_size=[2, 3], spatial_scale=0.25, sampling_ratio=1,
                          aligned=True, mode="max", channels_last=False)
    clone = layers.RoIAlign.from_config(config)
    x = roi_input(np.float32)
    np.testing.assert_array_equal(clone(x, ROIS, BATCH), layer(x, ROIS, BATCH))
    assert "mode='max'" in repr(layer) and repr(layers.RoIPool(7)) == "RoIPool(output_size=7)"
    pool = layers.RoIPool(2).eval()
    pool(x, ROIS, BATCH)
    with pytest.raises(RuntimeError, match="training"):
        pool.backward(np.zeros((5, 3, 2, 2)))
    pool.train()
    y = pool(x, ROIS, BATCH)
    with pytest.raises(ValueError, match="grad_output"):
        pool.backward(np.zeros(y.shape[:-1]))
    y16 = layers.RoIAlign(2)(x.astype(np.float16), ROIS, BATCH)
    assert y16.dtype == np.float16
    for bad, error, match in [(lambda: layers.RoIPool(0), ValueError, "output_size"),
                              (lambda: layers.RoIPool(2, spatial_scale=-1), ValueError,
                               "spatial_scale"),
                              (lambda: layers.RoIAlign(2, mode="sum"), ValueError, "mode"),
                              (lambda: layers.RoIAlign(2, sampling_ratio=-2), ValueError,
                               "sampling_ratio")]:
        with pytest.raises(error, match=match):
            bad()
    with pytest.raises(ValueError, match="batch_indices"):
        layers.RoIPool(2)(x, ROIS, BATCH + 1)


def sequence_input(layout, dtype=np.float64, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 6, 3) if layout == "NLC" else (4, 3, 6)).astype(dtype)
    mask = rng.random((4, 6)) < 0.6
    mask[1] = False
    return x, dict(lengths=[2, 0, 6, 4]), dict(mask=mask)


@pytest.mark.parametrize("layout", ["NLC", "NCL"])
@pytest.mark.parametrize("mode", ["mean", "max", "sum", "first", "last"])
def test_sequence_layer_matches_reference_and_finite_differences(mode, layout, one_thread):
    x, by_lengths, by_mask = sequence_input(layout)
    for kw in (by_lengths, by_mask):
        layer = layers.SequencePool(mode, layout)
        y = layer(x, **kw)
        assert y.shape == (4, 3) == layer.output_shape(x.shape)
        np.testing.assert_allclose(y, RS.sequence_pool(x, mode=mode, layout=layout, **kw)[0],
                                   rtol=1e-13, atol=1e-13)
        g = np.random.default_rng(4).standard_normal(y.shape)
        np.testing.assert_allclose(layer.backward(g),
                                   RS.sequence_pool_grad(g, x, mode=mode, layout=layout, **kw),
                                   rtol=1e-13, atol=1e-13)
        check_layer_gradients(Bound(layers.SequencePool(mode, layout), **kw), x)


def test_sequence_layer_state_config_and_errors():
    layer = layers.SequencePool("max", "NCL")
    assert layer.get_config() == dict(mode="max", layout="NCL")
    assert repr(layer) == "SequencePool(mode='max', layout='NCL')"
    assert repr(layers.SequencePool()) == "SequencePool()"
    x, kw, _ = sequence_input("NCL", np.float32)
    layer.eval()
    y = layer(x, **kw)
    with pytest.raises(RuntimeError, match="training"):
        layer.backward(np.zeros_like(y))
    layer.train()
    layer(x, **kw)
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.zeros((4, 4)))
    assert layer.backward(np.ones_like(y)).dtype == np.float32
    with pytest.raises(ValueError, match="mode"):
        layers.SequencePool("median")
    with pytest.raises(ValueError, match="layout"):
        layers.SequencePool("mean", "NHWC")
    with pytest.raises(ValueError, match="mask"):
        layers.SequencePool("mean", "NCL")(x, mask=np.ones((4, 3), bool))
