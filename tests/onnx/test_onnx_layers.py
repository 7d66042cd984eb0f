"""Export of the non-pooling layers: Conv, Linear, Flatten, activations, Softmax,
BatchNorm, Dropout, Identity; and of Sequential models built from them."""
import numpy as np
import pytest

from tests.onnx.util import attributes, op_types, rand, roundtrip

from cpool.layers import (GELU, BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, Dropout, Flatten,
                          Identity, LeakyReLU, Linear, LogSoftmax, MaxPool2d, ReLU, Sigmoid,
                          Softmax, Tanh)
from cpool.sequential import Sequential


def _batch_norm(cls, channels, seed=0, **kwargs):
    """A BatchNorm with non-trivial running statistics and affine parameters."""
    layer = cls(channels, **kwargs)
    rng = np.random.default_rng(seed)
    if layer.track_running_stats:
        layer.buffers["running_mean"][:] = rng.standard_normal(channels)
        layer.buffers["running_var"][:] = rng.uniform(0.5, 2.0, channels)
    if layer.affine:
        layer.params["weight"][:] = rng.uniform(-2, 2, channels)
        layer.params["bias"][:] = rng.standard_normal(channels)
    return layer


CASES = [
    (Conv2d(3, 4, 3, seed=0), (2, 3, 9, 11)),
    (Conv2d(4, 6, 3, 2, "same_lower", dilation=2, groups=2, bias=False, seed=1), (2, 4, 9, 10)),
    (Conv2d(3, 5, (2, 3), (1, 2), ((1, 0), (2, 1)), seed=2), (2, 3, 7, 9)),
    (Conv2d(3, 4, 3, 2, "same", seed=3), (2, 3, 9, 10)),
    (Conv1d(4, 3, 4, 2, "same", seed=4), (2, 4, 9)),
    (Conv1d(2, 2, 3, 1, 1, dilation=2, seed=5), (2, 2, 7)),
    (Linear(11, 4, seed=6), (2, 11)),
    (Linear(11, 4, bias=False, seed=7), (2, 3, 11)),
    (Flatten(), (2, 3, 5, 7)),
    (Flatten(2), (2, 3, 5, 7)),
    (Flatten(0, 1), (2, 3, 5)),
    (ReLU(), (2, 3, 5)),
    (LeakyReLU(0.2), (2, 3, 5)),
    (Sigmoid(), (2, 3, 5)),
    (Tanh(), (2, 3, 5)),
    (GELU(), (2, 3, 5)),
    (GELU("tanh"), (2, 3, 5)),
    (Softmax(1), (2, 5, 3)),
    (LogSoftmax(-1), (2, 3, 5)),
    (Dropout(0.5), (2, 3, 5)),
    (Identity(), (2, 3, 5)),
    (_batch_norm(BatchNorm2d, 3), (2, 3, 5, 7)),
    (_batch_norm(BatchNorm1d, 3, seed=1), (2, 3)),
    (_batch_norm(BatchNorm1d, 3, seed=2, affine=False), (2, 3, 7)),
    (_batch_norm(BatchNorm1d, 3, seed=3, track_running_stats=False), (2, 3, 7)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: repr(c[0]))
def test_layer_exports_exactly(case):
    layer, shape = case
    roundtrip(layer, 2 * rand(*shape))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_from_opset_20_and_its_definition_below(approximate):
    layer = GELU(approximate)
    x = 3 * rand(2, 3, 5)
    assert "Gelu" in op_types(roundtrip(layer, x, opset=20))
    below = roundtrip(layer, x, opset=19)
    assert "Gelu" not in op_types(below)
    assert ("Erf" if approximate == "none" else "Tanh") in op_types(below)


def test_softmax_axis_is_explicit_and_non_negative():
    proto = roundtrip(Softmax(-2), rand(2, 5, 3))
    assert attributes(proto, "Softmax")[0]["axis"] == 1


def test_dropout_and_identity_add_no_node_and_training_mode_is_left_alone():
    drop = Dropout(0.5, seed=0)
    assert drop.training
    model = Sequential(Conv2d(3, 4, 3, seed=0), drop, Identity(), ReLU())
    proto = roundtrip(model, rand(2, 3, 7, 7))
    assert op_types(proto) == ["Conv", "Relu"]
    assert drop.training  # export and verify ran it in eval mode, then restored the flag


def test_batch_norm_uses_running_statistics_not_the_batch():
    layer = _batch_norm(BatchNorm2d, 3)
    layer.train()  # export is for inference whatever the mode
    proto = roundtrip(layer, rand(2, 3, 5, 7))
    assert op_types(proto) == ["BatchNormalization"]
    assert layer.training


def test_cnn_with_every_layer_kind():
    model = Sequential(
        Conv2d(3, 8, 3, padding=1, seed=0), _batch_norm(BatchNorm2d, 8), ReLU(),
        MaxPool2d(2, ceil_mode=True), Conv2d(8, 8, 3, padding="same", seed=1), GELU(),
        Dropout(0.2), Flatten(), Linear(8 * 5 * 5, 16, seed=2), LeakyReLU(0.1),
        _batch_norm(BatchNorm1d, 16, seed=1), Tanh(), Linear(16, 10, seed=3), LogSoftmax(1))
    roundtrip(model, rand(2, 3, 9, 9))
