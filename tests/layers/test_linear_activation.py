"""Linear, Flatten, Identity, activations, Softmax/LogSoftmax, Dropout."""
import json
import math

import numpy as np
import pytest

import cpool
from cpool.layers import (GELU, Dropout, Flatten, Identity, LeakyReLU, Linear, LogSoftmax, ReLU,
                          Sigmoid, Softmax, Tanh)
from tests.layers.gradcheck import check_layer_gradients, to_float64

RNG = np.random.default_rng(0)


def _away_from_zero(shape, rng=RNG):
    """Normal samples kept at least 0.05 away from ReLU-style kinks at 0."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.05, 0.05 * np.sign(x) + 0.05 * (x == 0), x)


# --- NumPy references, written from the formulas -----------------------------------------

def ref_gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


REFERENCES = [
    (ReLU(), lambda x: np.where(x > 0, x, 0.0)),
    (LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    (Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    (Tanh(), np.tanh),
    (GELU(), lambda x: ref_gelu(x, "none")),
    (GELU("tanh"), lambda x: ref_gelu(x, "tanh")),
    (Softmax(dim=1), lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
    (LogSoftmax(), lambda x: x - np.log(np.exp(x).sum(axis=-1, keepdims=True))),
    (Identity(), lambda x: x),
]


@pytest.mark.parametrize("layer,ref", REFERENCES, ids=[repr(layer) for layer, _ in REFERENCES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_matches_formula(layer, ref, dtype):
    x = (3 * RNG.standard_normal((4, 5, 6))).astype(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == x.shape
    tol = 1e-13 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=tol, atol=tol)
    assert layer.output_shape(x.shape) == x.shape


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.3), Sigmoid(), Tanh(), GELU(),
                                   GELU(approximate="tanh"), Softmax(dim=0), Softmax(dim=-1),
                                   LogSoftmax(dim=1), Identity()], ids=repr)
def test_finite_differences(layer):
    check_layer_gradients(layer, 2 * _away_from_zero((3, 4, 5)))


def test_linear_and_flatten_finite_differences():
    check_layer_gradients(Linear(5, 3, seed=0), RNG.standard_normal((2, 4, 5)))
    check_layer_gradients(Linear(5, 3, bias=False, seed=0), RNG.standard_normal((4, 5)))
    check_layer_gradients(Flatten(1, 2), RNG.standard_normal((2, 3, 4, 2)))


def test_dropout_finite_differences():
    def reseed(layer):
        layer._rng = np.random.default_rng(5)

    check_layer_gradients(Dropout(0.3), RNG.standard_normal((4, 6)), before_forward=reseed)


TORCH_CASES = [
    (lambda: ReLU(), "ReLU", {}),
    (lambda: LeakyReLU(0.1), "LeakyReLU", {"negative_slope": 0.1}),
    (lambda: Sigmoid(), "Sigmoid", {}),
    (lambda: Tanh(), "Tanh", {}),
    (lambda: GELU(), "GELU", {}),
    (lambda: GELU("tanh"), "GELU", {"approximate": "tanh"}),
    (lambda: Softmax(dim=1), "Softmax", {"dim": 1}),
    (lambda: LogSoftmax(dim=-1), "LogSoftmax", {"dim": -1}),
    (lambda: Softmax(dim=0), "Softmax", {"dim": 0}),
]


@pytest.mark.parametrize("make,name,kwargs", TORCH_CASES, ids=[c[1] + str(c[2]) for c in
                                                               TORCH_CASES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_activations_match_torch(make, name, kwargs, dtype):
    torch = pytest.importorskip("torch")
    x = (4 * RNG.standard_normal((3, 7, 5))).astype(dtype)
    x[0, 0, :3] = [0.0, 50.0, -50.0]  # the kink, and saturation
    g = RNG.standard_normal(x.shape).astype(dtype)
    layer = make()
    xt = torch.from_numpy(x).requires_grad_()
    yt = getattr(torch.nn, name)(**kwargs)(xt)
    yt.backward(torch.from_numpy(g))
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), **tol)
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), **tol)


def test_relu_special_values_match_torch():
    torch = pytest.importorskip("torch")
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], np.float32)
    g = np.array([1.0, 2.0, 3.0, np.inf, 5.0, 6.0], np.float32)
    for layer, tmod in [(ReLU(), torch.nn.ReLU()), (LeakyReLU(), torch.nn.LeakyReLU())]:
        xt = torch.from_numpy(x).requires_grad_()
        yt = tmod(xt)
        yt.backward(torch.from_numpy(g))
        np.testing.assert_array_equal(layer(x), yt.detach().numpy())
        np.testing.assert_array_equal(layer.backward(g), xt.grad.numpy())


def test_softmax_is_stable():
    x = np.array([[1000.0, 1000.0, -1000.0], [-1e4, 0.0, 1e4]])
    np.testing.assert_allclose(Softmax()(x), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(LogSoftmax()(x)[0, :2], [-math.log(2)] * 2)
    assert np.isfinite(LogSoftmax()(x)).all()
    assert np.all(Sigmoid()(np.array([-1000.0, 1000.0], np.float32)) == [0.0, 1.0])


def test_linear_matches_reference_and_torch():
    layer = Linear(6, 4, seed=2)
    x = RNG.standard_normal((2, 3, 6)).astype(np.float32)
    w, b = layer.params["weight"], layer.params["bias"]
    ref = np.einsum("abi,oi->abo", x.astype(np.float64), w.astype(np.float64)) + b
    y = layer(x)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    g = RNG.standard_normal(y.shape).astype(np.float32)
    gx = layer.backward(g)
    np.testing.assert_allclose(gx, g.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grads["weight"],
                               np.einsum("abo,abi->oi", g.astype(np.float64), x), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(layer.grads["bias"], g.sum(axis=(0, 1)), rtol=1e-5, atol=1e-5)
    torch = pytest.importorskip("torch")
    tl = torch.nn.Linear(6, 4)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(w))
        tl.bias.copy_(torch.from_numpy(b))
    xt = torch.from_numpy(x).requires_grad_()
    yt = tl(xt)
    yt.backward(torch.from_numpy(g))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.grads["weight"], tl.weight.grad.numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(layer.grads["bias"], tl.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_linear_needs_input_grad_false():
    layer = Linear(4, 3, seed=0)
    x = RNG.standard_normal((5, 4))
    g = RNG.standard_normal((5, 3))
    layer(x)
    layer.backward(g)
    weight_grad = layer.grads["weight"].copy()
    layer.needs_input_grad = False
    assert layer.backward(g) is None
    np.testing.assert_array_equal(layer.grads["weight"], weight_grad)


def test_linear_blocks_bitwise_identical_for_every_thread_count():
    """Big enough to be cut into several GEMM blocks (see cpool._threads.run_blocks)."""
    from cpool._threads import block_bounds

    x = RNG.standard_normal((128, 1024)).astype(np.float32)
    g = RNG.standard_normal((128, 512)).astype(np.float32)
    assert len(block_bounds(128, 2.0 * 128 * 1024 * 512)) - 1 >= 4
    layer = Linear(1024, 512, seed=1)
    results = []
    for n in (1, 2, 3):
        cpool.set_num_threads(n)
        try:
            results.append((layer(x), layer.backward(g), layer.grads["weight"].copy()))
        finally:
            cpool.set_num_threads(None)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    np.testing.assert_allclose(results[0][2], g.T.astype(np.float64) @ x, rtol=1e-4,
                               atol=1e-4)


def test_linear_init_config_and_dtypes():
    layer = Linear(16, 8, seed=4)
    bound = 1 / 4
    assert layer.params["weight"].shape == (8, 16) and layer.params["weight"].dtype == np.float32
    assert 0.9 * bound < np.abs(layer.params["weight"]).max() <= bound
    np.testing.assert_array_equal(Linear(16, 8, seed=4).params["weight"],
                                  layer.params["weight"])
    clone = Linear.from_config(json.loads(json.dumps(layer.get_config())))
    np.testing.assert_array_equal(clone.params["bias"], layer.params["bias"])
    assert repr(Linear(3, 2, bias=False)) == "Linear(in_features=3, out_features=2, bias=False)"
    assert layer(np.ones(16, np.float16)).dtype == np.float16  # unbatched, float16 kept
    assert layer(np.ones((2, 16), np.int32)).dtype == np.float64
    to_float64(layer)
    assert layer(np.ones((2, 16))).dtype == np.float64
    assert layer.output_shape((5, 7, 16)) == (5, 7, 8)


def test_flatten_and_identity():
    x = RNG.standard_normal((2, 3, 4, 5))
    f = Flatten()
    y = f(x)
    assert y.shape == (2, 60) and np.shares_memory(y, x)
    assert f.backward(np.ones((2, 60))).shape == x.shape
    assert Flatten(0, 2)(x).shape == (24, 5)
    assert Flatten(-3, -2)(x).shape == (2, 12, 5)
    assert Flatten().output_shape((7, 2, 3)) == (7, 6)
    assert Flatten(start_dim=2).get_config() == {"start_dim": 2, "end_dim": -1}
    with pytest.raises(ValueError, match="start_dim"):
        Flatten(start_dim=4)(x)
    with pytest.raises(ValueError, match="start_dim must not come after end_dim"):
        Flatten(2, 1)(x)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        f.backward(np.ones((2, 59)))
    i = Identity()
    assert i(x) is x and i.backward(x) is x and i.output_shape((1, 2)) == (1, 2)


def test_dropout():
    x = np.ones((200, 100), np.float32)
    layer = Dropout(0.25, seed=1)
    y = layer(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_array_equal(y[kept], np.float32(1) / np.float32(0.75))
    g = RNG.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(g), g * y)  # same mask, same scale
    np.testing.assert_array_equal(Dropout(0.25, seed=1)(x), y)  # seeded: repeatable
    assert not np.array_equal(layer(x), y)  # a new mask on every call
    layer.eval()
    assert np.array_equal(layer(x), x) and np.array_equal(layer.backward(g), g)
    layer.train()
    assert not Dropout(1.0)(x).any()
    np.testing.assert_array_equal(Dropout(0.0)(x), x)
    assert repr(Dropout(p=0.1, seed=3)) == "Dropout(p=0.1, seed=3)"


def test_threads_bitwise_identical():
    x = (3 * RNG.standard_normal((64, 1000))).astype(np.float32)  # above the serial cutoff
    g = RNG.standard_normal(x.shape).astype(np.float32)
    results = []
    for n in (1, 2):
        cpool.set_num_threads(n)
        try:
            out = []
            for layer in (ReLU(), LeakyReLU(), GELU(), GELU("tanh")):
                out += [layer(x), layer.backward(g)]
            results.append(out)
        finally:
            cpool.set_num_threads(None)
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("make,exc,name", [
    (lambda: Linear(0, 3), ValueError, "in_features"),
    (lambda: Linear(3, "4"), TypeError, "out_features"),
    (lambda: Linear(3, 4, bias=None), TypeError, "bias"),
    (lambda: LeakyReLU("a"), TypeError, "negative_slope"),
    (lambda: LeakyReLU(float("nan")), ValueError, "negative_slope"),
    (lambda: GELU("erf"), ValueError, "approximate"),
    (lambda: Softmax(dim=1.0), TypeError, "dim"),
    (lambda: Dropout(1.5), ValueError, "p must be a probability"),
    (lambda: Dropout(True), TypeError, "p must be a probability"),
    (lambda: Dropout(0.5, seed=-1), ValueError, "seed"),
    (lambda: Flatten(start_dim=None), TypeError, "start_dim"),
])
def test_bad_arguments(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 3\)"):
        Linear(3, 2)(np.ones((2, 4)))
    with pytest.raises(ValueError, match="dim must be in"):
        Softmax(dim=2)(np.ones((2, 3)))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        ReLU()(np.array(["a"]))
    relu = ReLU()
    with pytest.raises(RuntimeError, match="before forward"):
        relu.backward(np.ones(3))
    relu(np.ones((2, 3)))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        relu.backward(np.ones((3, 2)))
