"""Losses, optimizers and Sequential.fit/evaluate: references, torch, reproducibility,
Ctrl-C, and a short training run on the bundled digits."""
import signal

import numpy as np
import pytest

import cpool
from cpool.datasets import load_digits, stratified_split
from cpool.layers import (Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d, ReLU,
                          Softmax)
from cpool.losses import CrossEntropyLoss, MSELoss
from cpool.optimizers import SGD, Adam


# ----------------------------------------------------------------------------- references
def ce_reference(z, t):
    """Cross-entropy in float64, one sample at a time: log(sum(exp(z))) - z[t]."""
    z = np.moveaxis(np.asarray(z, np.float64), 1, -1).reshape(-1, z.shape[1])
    t = np.asarray(t).reshape(-1)
    losses = [np.log(np.sum(np.exp(row))) - row[k] for row, k in zip(z, t)]
    return float(np.mean(losses))


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = f(x)
        x[idx] = old - eps
        down = f(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2, 3)])
def test_cross_entropy_matches_reference_and_finite_differences(shape):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape) * 3
    t = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    loss = CrossEntropyLoss()
    assert loss(z, t) == pytest.approx(ce_reference(z, t), rel=1e-12)
    grad = loss.backward()
    assert grad.shape == z.shape and grad.dtype == z.dtype
    np.testing.assert_allclose(grad, numeric_grad(lambda v: ce_reference(v, t), z.copy()),
                               atol=1e-8)
    summed = CrossEntropyLoss(reduction="sum")
    assert summed(z, t) == pytest.approx(ce_reference(z, t) * t.size, rel=1e-12)
    np.testing.assert_allclose(summed.backward(), grad * t.size, rtol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [5e3, 5e3 + 1, 0.0]], np.float32)
    loss = CrossEntropyLoss()
    value = loss(z, np.array([1, 0]))
    # sample 0: 1e4 - 0 = 1e4; sample 1: log(1 + e) ... = softplus(1) = 1.3132617
    assert value == pytest.approx((1e4 + np.log1p(np.e)) / 2, rel=1e-6)
    assert np.isfinite(loss.backward()).all()


def test_cross_entropy_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.integers(0, 5, 6)
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(zt, torch.tensor(t))
    ref.backward()
    loss = CrossEntropyLoss()
    assert loss(z, t) == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(loss.backward(), zt.grad.numpy(), atol=1e-7)


def test_mse_matches_reference_and_finite_differences():
    rng = np.random.default_rng(2)
    p, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss = MSELoss()

    def reference(v):
        return sum((a - b) ** 2 for a, b in zip(v.ravel(), t.ravel())) / v.size

    assert loss(p, t) == pytest.approx(reference(p), rel=1e-12)
    np.testing.assert_allclose(loss.backward(), numeric_grad(reference, p.copy()), atol=1e-8)


def test_loss_errors():
    z = np.zeros((2, 3))
    with pytest.raises(TypeError, match="integer class labels"):
        CrossEntropyLoss()(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        CrossEntropyLoss()(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="target must have shape"):
        CrossEntropyLoss()(z, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="pred must have shape"):
        CrossEntropyLoss()(np.zeros(3), np.array(0))
    with pytest.raises(ValueError, match="shape of pred"):
        MSELoss()(z, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="reduction"):
        MSELoss(reduction="none")
    with pytest.raises(RuntimeError, match="before the loss"):
        MSELoss().backward()


# ----------------------------------------------------------------------------- optimizers
def sgd_reference(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                  dampening=0.0):
    """torch.optim.SGD's documented algorithm, element by element."""
    p = [float(v) for v in p]
    buf = [None] * len(p)
    for g in grads:
        for i in range(len(p)):
            d = g[i] + weight_decay * p[i]
            if momentum:
                buf[i] = d if buf[i] is None else momentum * buf[i] + (1 - dampening) * d
                d = d + momentum * buf[i] if nesterov else buf[i]
            p[i] -= lr * d
    return np.array(p)


def adam_reference(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam's documented algorithm (amsgrad=False), element by element."""
    p = [float(v) for v in p]
    m, v = [0.0] * len(p), [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        for i in range(len(p)):
            d = g[i] + weight_decay * p[i]
            m[i] = betas[0] * m[i] + (1 - betas[0]) * d
            v[i] = betas[1] * v[i] + (1 - betas[1]) * d * d
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            p[i] -= lr * m_hat / (v_hat ** 0.5 + eps)
    return np.array(p)


OPTIMIZER_CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.05, momentum=0.9)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (SGD, dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.1)),
    (Adam, dict()),
    (Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
]


def run_cpool(cls, kwargs, p0, grads):
    p = p0.copy()
    g = np.zeros_like(p)
    opt = cls([(p, g)], **kwargs)
    for step in grads:
        g[...] = step
        opt.step()
    return p


@pytest.mark.parametrize("cls, kwargs", OPTIMIZER_CASES)
def test_optimizers_match_reference(cls, kwargs):
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(7)
    grads = rng.standard_normal((6, 7))
    reference = (sgd_reference if cls is SGD else adam_reference)(p0, grads, **kwargs)
    np.testing.assert_allclose(run_cpool(cls, kwargs, p0, grads), reference, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls, kwargs", OPTIMIZER_CASES)
def test_optimizers_match_torch(cls, kwargs, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal((3, 4)).astype(dtype)
    grads = rng.standard_normal((6, 3, 4)).astype(dtype)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = getattr(torch.optim, cls.__name__)([tp], **kwargs)
    for step in grads:
        tp.grad = torch.tensor(step)
        topt.step()
    ours = run_cpool(cls, kwargs, p0, grads)
    assert ours.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, tp.detach().numpy(), **tol)


def test_optimizer_arguments_and_zero_grad():
    p, g = np.ones(3), np.full(3, 2.0)
    for bad, match in [(dict(lr=-1), "lr"), (dict(lr=0.1, momentum=-0.5), "momentum"),
                       (dict(lr=0.1, nesterov=True), "nesterov"),
                       (dict(lr=float("nan")), "lr")]:
        with pytest.raises(ValueError, match=match):
            SGD([(p, g)], **bad)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        Adam([(p, g)], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="pair"):
        SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="grad shape"):
        SGD([(p, np.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Adam([])
    with pytest.raises(TypeError, match="writable float"):
        SGD([(np.ones(3, np.int64), np.ones(3, np.int64))], lr=0.1)
    opt = SGD(cpool.Sequential(Linear(3, 2, seed=0)), lr=0.1)  # a model works too
    assert len(opt.pairs) == 2
    SGD([(p, g)], lr=0.1).zero_grad()
    assert not g.any()


def test_optimizer_over_a_layer_reads_its_current_grads():
    layer = Linear(3, 2, seed=0)  # its backward stores new grad arrays every time
    opt = SGD(layer, lr=0.1)
    x = np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32)
    w0 = layer.params["weight"].copy()
    for _ in range(2):
        layer(x)
        layer.backward(np.ones((4, 2), np.float32))
        opt.step()
    # grad_weight = ones.T @ x does not depend on the weight: two equal steps
    step = np.float32(0.1) * (np.ones((2, 4), np.float32) @ x)
    np.testing.assert_allclose(layer.params["weight"], w0 - 2 * step, rtol=1e-6)
    layer.params["extra"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match="parameters changed"):
        opt.step()


# ----------------------------------------------------------------------------- fit
def small_cnn(seed=0, dropout=False):
    layers = [Conv2d(1, 8, 3, padding=1, seed=seed), ReLU(), MaxPool2d(2), Flatten(),
              Linear(8 * 4 * 4, 10, seed=seed + 1), Softmax(dim=1)]
    if dropout:
        layers.insert(3, Dropout(0.2, seed=seed + 2))
    return cpool.Sequential(layers)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    train, test = stratified_split(y, 0.2, seed=0)
    return x[train], y[train], x[test], y[test]


def weights(model):
    return [p.copy() for p, _ in model.parameters()]


def test_short_training_run_reaches_known_accuracy(digits):
    x_train, y_train, x_test, y_test = digits
    model = small_cnn(seed=0)
    history = model.fit(x_train, y_train, epochs=4, batch_size=32, loss=CrossEntropyLoss(),
                        optimizer=Adam(model.parameters(), lr=1e-2),
                        validation_data=(x_test, y_test), seed=0, verbose=False)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy", "interrupted"}
    assert all(len(history[k]) == 4 for k in ("loss", "accuracy", "val_loss"))
    assert not history["interrupted"]
    assert history["loss"][3] < history["loss"][0]
    result = model.evaluate(x_test, y_test)
    assert result["accuracy"] >= 0.9  # 0.933 with these seeds
    # the last validation entry is the same computation as evaluate() on the final weights
    assert history["val_loss"][-1] == result["loss"]
    assert history["val_accuracy"][-1] == result["accuracy"]
    probabilities = model.predict(x_test)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert np.mean(probabilities.argmax(axis=1) == y_test) == result["accuracy"]


def test_training_is_bitwise_reproducible(digits):
    x, y = digits[0][:256], digits[1][:256]

    def train(seed):
        model = small_cnn(seed=5, dropout=True)
        history = model.fit(x, y, epochs=2, batch_size=24, loss=CrossEntropyLoss(),
                            optimizer=SGD(model.parameters(), lr=0.05, momentum=0.9),
                            seed=seed, verbose=False)
        return weights(model), history

    (w1, h1), (w2, h2), (w3, _) = train(7), train(7), train(8)
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))
    assert h1 == h2
    assert not all(np.array_equal(a, b) for a, b in zip(w1, w3))


def test_softmax_is_fused_with_cross_entropy(digits):
    x, y = digits[0][:96], digits[1][:96]
    fused, plain = small_cnn(seed=3), small_cnn(seed=3)[:-1]  # same seeds: same weights
    for model in (fused, plain):
        model.fit(x, y, epochs=1, batch_size=32, loss=CrossEntropyLoss(),
                  optimizer=SGD(model.parameters(), lr=0.1), verbose=False)
    # fused training computes exactly what training on logits computes
    assert all(np.array_equal(a, b) for a, b in zip(weights(fused), weights(plain)))
    assert fused.evaluate(x, y) == plain.evaluate(x, y)
    logits = plain.predict(x)
    np.testing.assert_allclose(fused.predict(x), Softmax(dim=1)(logits), rtol=1e-6)


class InterruptAt(Layer):
    """Identity that sends SIGINT to this process during its n-th training forward."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                signal.raise_signal(signal.SIGINT)
        return x

    def backward(self, g):
        return g


def test_ctrl_c_stops_after_the_current_batch(digits):
    x, y = digits[0][:160], digits[1][:160]
    model = cpool.Sequential([InterruptAt(3)] + list(small_cnn(seed=9)))
    before = signal.getsignal(signal.SIGINT)
    history = model.fit(x, y, epochs=5, batch_size=16, loss=CrossEntropyLoss(),
                        optimizer=SGD(model.parameters(), lr=0.1), shuffle=False,
                        verbose=False)
    assert history["interrupted"] and len(history["loss"]) == 1
    assert signal.getsignal(signal.SIGINT) is before
    # the interrupted batch was completed: same weights as training on 3 batches
    reference = small_cnn(seed=9)
    reference.fit(x[:48], y[:48], epochs=1, batch_size=16, loss=CrossEntropyLoss(),
                  optimizer=SGD(reference.parameters(), lr=0.1), shuffle=False,
                  verbose=False)
    assert all(np.array_equal(a, b) for a, b in zip(weights(model), weights(reference)))


def test_fit_regression_with_mse_and_progress_bar(capsys):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.25).astype(np.float32)
    model = cpool.Sequential(Linear(3, 1, seed=0))
    history = model.fit(x, y, epochs=30, batch_size=16, loss=MSELoss(),
                        optimizer=SGD(model.parameters(), lr=0.1), verbose=True)
    assert set(history) == {"loss", "interrupted"}
    assert history["loss"][-1] < 1e-3 < history["loss"][0]
    np.testing.assert_allclose(model[0].params["weight"], [[1.0, -2.0, 0.5]], atol=0.02)
    assert model.evaluate(x, y)["loss"] < 1e-3  # defaults to the fit's loss (MSE)
    err = capsys.readouterr().err
    assert "epoch 30/30" in err and "loss=" in err


def test_fit_argument_errors():
    model = small_cnn()
    x, y = np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(x, y[:3], verbose=False)
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(x, y, batch_size=0, verbose=False)
    with pytest.raises(ValueError, match="epochs"):
        model.fit(x, y, epochs=-1, verbose=False)
    with pytest.raises(TypeError, match="validation_data"):
        model.fit(x, y, validation_data=x, verbose=False)
    with pytest.raises(ValueError, match="at least one sample"):
        model.evaluate(x[:0], y[:0])
