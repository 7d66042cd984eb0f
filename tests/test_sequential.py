"""cpool.Sequential: list behaviour, chaining, parameters/grad binding, modes, summary,
predict. Trainable stand-in layers are defined here so the container is tested on its own."""
import numpy as np
import pytest

import cpool
from cpool.layers import AvgPool2d, Layer, MaxPool2d
from cpool.optimizers import SGD


class Affine(Layer):
    """y = x * weight + bias, elementwise over the last axis. ``rebind`` chooses how
    backward stores grads: new arrays each time (True) or written into the old ones."""

    def __init__(self, features, rebind=True, seed=0):
        super().__init__()
        self.features, self.rebind, self.seed = features, rebind, seed
        rng = np.random.default_rng(seed)
        self.params["weight"] = rng.standard_normal(features)
        self.params["bias"] = rng.standard_normal(features)

    def forward(self, x):
        self._x = np.asarray(x, dtype=np.float64)
        return self._x * self.params["weight"] + self.params["bias"]

    def backward(self, g):
        axes = tuple(range(g.ndim - 1))
        gw, gb = (g * self._x).sum(axis=axes), g.sum(axis=axes)
        if self.rebind:
            self.grads["weight"], self.grads["bias"] = gw, gb
        else:
            self.grads.setdefault("weight", np.zeros(self.features))[...] = gw
            self.grads.setdefault("bias", np.zeros(self.features))[...] = gb
        return g * self.params["weight"]


class ModeProbe(Layer):
    """Identity that records the training flag it ran with."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x

    def backward(self, g):
        return g


def pool_ref(x):
    """Reference of MaxPool2d(2) then AvgPool2d(2) on even sizes."""
    n, c, h, w = x.shape
    m = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    return m.reshape(n, c, h // 4, 2, w // 4, 2).mean(axis=(3, 5))


def test_construction_and_list_behaviour():
    a, b, c = MaxPool2d(2), AvgPool2d(2), ModeProbe()
    m = cpool.Sequential(a, b)
    assert list(cpool.Sequential([a, b])) == [a, b]
    assert len(m) == 2 and m[0] is a and m[-1] is b
    assert m.append(c) is m and len(m) == 3 and m[2] is c
    part = m[1:]
    assert isinstance(part, cpool.Sequential) and list(part) == [b, c]
    assert m.layers == [a, b, c] and m.layers is not m.layers
    assert "(1): AvgPool2d(kernel_size=2)" in repr(m)
    assert repr(cpool.Sequential()) == "Sequential()"
    with pytest.raises(TypeError, match="cpool layers"):
        cpool.Sequential(a, lambda x: x)
    with pytest.raises(TypeError, match="cpool layers"):
        m.append("relu")


def test_forward_and_backward_chain_layers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    m = cpool.Sequential(MaxPool2d(2), AvgPool2d(2), Affine(2, seed=1))
    affine = m[2]
    expected = pool_ref(x) * affine.params["weight"] + affine.params["bias"]
    np.testing.assert_allclose(m(x), expected, rtol=1e-12)
    assert m.output_shape((2, 3, 8, 8)) == (2, 3, 2, 2)

    # backward: finite differences of sum(model(x) * r) w.r.t. x and the weights
    r = rng.standard_normal(expected.shape)
    m(x)
    grad_x = m.backward(r)
    f = lambda: float((m(x) * r).sum())  # noqa: E731
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 5, 7), (0, 1, 3, 2)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num = (float((m(xp) * r).sum()) - float((m(xm) * r).sum())) / (2 * eps)
        assert num == pytest.approx(grad_x[idx], abs=1e-6)
    m(x)
    m.backward(r)
    w = affine.params["weight"]
    analytic = affine.grads["weight"].copy()
    for i in range(2):
        old = w[i]
        w[i] = old + eps
        up = f()
        w[i] = old - eps
        down = f()
        w[i] = old
        assert (up - down) / (2 * eps) == pytest.approx(analytic[i], abs=1e-6)


@pytest.mark.parametrize("rebind", [True, False])
def test_parameters_are_stable_pairs_that_backward_fills(rebind):
    m = cpool.Sequential(Affine(3, rebind, seed=1), MaxPool2d(1), Affine(3, rebind, seed=2))
    pairs = m.parameters()
    expected = [m[0].params["weight"], m[0].params["bias"], m[2].params["weight"],
                m[2].params["bias"]]
    assert len(pairs) == 4 and all(p is q for (p, _), q in zip(pairs, expected))
    assert all(g.shape == p.shape and not g.any() for p, g in pairs)
    x = np.random.default_rng(3).standard_normal((2, 1, 4, 3))
    out = m(x)
    m.backward(np.ones_like(out))
    again = m.parameters()
    assert all(g1 is g2 and p1 is p2 for (p1, g1), (p2, g2) in zip(pairs, again))
    # the bound grad arrays hold what each layer computed
    np.testing.assert_array_equal(pairs[3][1], np.ones_like(out).sum(axis=(0, 1, 2)))
    assert pairs[0][1].any()
    # a layer's own zero_grad rebinds its dict; the pairs stay the ones optimizers hold
    m[0].zero_grad()
    m.zero_grad()
    assert all(not g.any() for _, g in pairs)
    assert m[0].grads["weight"] is pairs[0][1]


def test_optimizer_built_before_training_sees_every_backward():
    x = np.random.default_rng(4).standard_normal((5, 3))
    m = cpool.Sequential(Affine(3, rebind=True, seed=5))
    opt = SGD(m.parameters(), lr=0.1)
    w0 = m[0].params["weight"].copy()
    for _ in range(2):
        m.zero_grad()
        m(x)
        m.backward(np.ones((5, 3)))
        opt.step()
    # with upstream grad 1: grad_w = sum(x, 0), fixed, so two steps move by 0.2 * it
    np.testing.assert_allclose(m[0].params["weight"], w0 - 0.2 * x.sum(axis=0), rtol=1e-12)


def test_train_eval_predict_modes():
    probe = ModeProbe()
    m = cpool.Sequential(probe, Affine(2, seed=0))
    assert m.eval() is m and not m.training and not probe.training
    m.train()
    assert m.training and probe.training
    x = np.random.default_rng(0).standard_normal((7, 2))
    full = m(x)
    probe.seen.clear()
    out = m.predict(x, batch_size=3)
    assert probe.seen == [False, False, False]  # 3 batches, all in eval mode
    assert probe.training and m.training       # mode restored
    np.testing.assert_array_equal(out, full)
    with pytest.raises(ValueError, match="batch_size"):
        m.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="at least one sample"):
        m.predict(np.zeros((0, 2)))


def test_summary_table(capsys):
    m = cpool.Sequential(Affine(8, seed=0), MaxPool2d(2), ModeProbe(), AvgPool2d(2))
    probe = m[2]
    m.summary((3, 8, 8))
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "Output", "shape", "Params"]
    row = {line.split(")")[0]: line for line in lines if line.startswith("(")}
    assert "(N, 3, 8, 8)" in row["(0"] and row["(0"].rstrip().endswith("16")
    assert "(N, 3, 4, 4)" in row["(1"] and "(N, 3, 2, 2)" in row["(3"]
    assert "Total params: 16" in text and "Input shape: (N, 3, 8, 8)" in text
    assert probe.seen == [False] and probe.training  # ran in eval mode, flag restored
