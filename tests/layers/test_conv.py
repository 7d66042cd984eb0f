"""Conv1d / Conv2d: a direct-loop NumPy reference, PyTorch, finite differences, threads."""
import json

import numpy as np
import pytest

import cpool
from cpool.layers import Conv1d, Conv2d
from tests.layers.gradcheck import check_layer_gradients, to_float64


# --- the slow, obviously-correct reference ---------------------------------------------

def _pairs(padding, in_size, kernel, stride, dilation):
    """Explicit (begin, end) pads: SAME_UPPER / SAME_LOWER per TF/ONNX, computed here."""
    nd = len(in_size)
    if padding == "valid":
        return [(0, 0)] * nd
    if padding in ("same", "same_lower"):
        pads = []
        for L, k, s, d in zip(in_size, kernel, stride, dilation):
            out = -(-L // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - L, 0)
            small, large = total // 2, total - total // 2
            pads.append((large, small) if padding == "same_lower" else (small, large))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in padding]


def ref_conv(x, w, b, stride, pads, dilation, groups):
    """Forward of an nd cross-correlation by direct loops over every output element."""
    n, c = x.shape[:2]
    cout = w.shape[0]
    kernel = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    out_size = [(L - d * (k - 1) - 1) // s + 1
                for L, k, s, d in zip(xp.shape[2:], kernel, stride, dilation)]
    out = np.zeros((n, cout) + tuple(out_size))
    cg, og = c // groups, cout // groups
    for i in range(n):
        for co in range(cout):
            chans = slice((co // og) * cg, (co // og + 1) * cg)
            for pos in np.ndindex(*out_size):
                window = tuple(slice(p * s, p * s + d * (k - 1) + 1, d)
                               for p, s, d, k in zip(pos, stride, dilation, kernel))
                out[(i, co) + pos] = np.sum(xp[(i, chans) + window] * w[co])
            if b is not None:
                out[i, co] += b[co]
    return out


def ref_conv_backward(x, w, r, stride, pads, dilation, groups):
    """Gradients of sum(r * conv(x)) by direct loops: (grad_x, grad_w, grad_b)."""
    n, c = x.shape[:2]
    cout = w.shape[0]
    kernel = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    cg, og = c // groups, cout // groups
    for i in range(n):
        for co in range(cout):
            chans = slice((co // og) * cg, (co // og + 1) * cg)
            for pos in np.ndindex(*r.shape[2:]):
                window = tuple(slice(p * s, p * s + d * (k - 1) + 1, d)
                               for p, s, d, k in zip(pos, stride, dilation, kernel))
                gxp[(i, chans) + window] += r[(i, co) + pos] * w[co]
                gw[co] += r[(i, co) + pos] * xp[(i, chans) + window]
    crop = tuple(slice(pb, pb + L) for (pb, _), L in zip(pads, x.shape[2:]))
    return gxp[(slice(None), slice(None)) + crop], gw, r.sum(axis=tuple(
        a for a in range(r.ndim) if a != 1))


CASES_2D = [
    dict(kernel_size=3),
    dict(kernel_size=(3, 2), stride=2),
    dict(kernel_size=3, stride=(2, 1), padding=1),
    dict(kernel_size=3, padding=(2, 0), dilation=(2, 1)),
    dict(kernel_size=2, padding=((1, 0), (0, 2))),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=(3, 4), stride=2, dilation=(1, 2), padding="same"),
    dict(kernel_size=2, stride=3, padding="same_lower"),
    dict(kernel_size=3, padding="valid", groups=2, bias=False),
    dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), groups=2),
    dict(kernel_size=5, padding=4),  # padding wider than half the kernel
]
CASES_1D = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=2, dilation=2),
    dict(kernel_size=4, padding="same", bias=False),
    dict(kernel_size=2, stride=2, padding="same", groups=2),
    dict(kernel_size=3, padding=((2, 1),)),
]


def _layer_and_data(cls, kwargs, dtype, seed=0):
    nd = 1 if cls is Conv1d else 2
    rng = np.random.default_rng(seed)
    cin, cout = 4, 6
    layer = cls(cin, cout, seed=seed, **kwargs)
    size = (3, 11) if nd == 1 else (2, 9, 8)
    x = rng.standard_normal((size[0], cin) + size[1:]).astype(dtype)
    return layer, x, rng


def _reference(layer, x, r):
    nd = layer.nd
    pads = _pairs(layer.padding, x.shape[2:], layer._kernel, layer._stride, layer._dilation)
    w = layer.params["weight"].astype(np.float64)
    b = layer.params["bias"].astype(np.float64) if layer.bias else None
    args = (layer._stride, pads, layer._dilation, layer.groups)
    y = ref_conv(x.astype(np.float64), w, b, *args)
    grads = ref_conv_backward(x.astype(np.float64), w, r, *args) if r is not None else None
    assert len(pads) == nd
    return y, grads


@pytest.mark.parametrize("cls,kwargs", [(Conv2d, k) for k in CASES_2D]
                         + [(Conv1d, k) for k in CASES_1D])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_direct_loop_reference(cls, kwargs, dtype):
    layer, x, rng = _layer_and_data(cls, kwargs, dtype)
    y = layer(x)
    assert y.dtype == dtype
    r = rng.standard_normal(y.shape)
    ref_y, (ref_gx, ref_gw, ref_gb) = _reference(layer, x, r)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ref_y, **tol)
    assert layer.output_shape(x.shape) == y.shape
    gx = layer.backward(r.astype(dtype))
    assert gx.dtype == dtype and gx.shape == x.shape
    np.testing.assert_allclose(gx, ref_gx, **tol)
    np.testing.assert_allclose(layer.grads["weight"], ref_gw, rtol=1e-5, atol=1e-5)
    if layer.bias:
        np.testing.assert_allclose(layer.grads["bias"], ref_gb, rtol=1e-5, atol=1e-5)
    else:
        assert "bias" not in layer.params and "bias" not in layer.grads


@pytest.mark.parametrize("cls,kwargs", [
    (Conv2d, dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2), groups=2)),
    (Conv2d, dict(kernel_size=(2, 3), padding="same", bias=False)),
    (Conv1d, dict(kernel_size=3, stride=2, padding=1, dilation=2, groups=2)),
])
def test_finite_differences(cls, kwargs):
    layer, x, _ = _layer_and_data(cls, kwargs, np.float64)
    x = x[:1, :, :5] if cls is Conv2d else x[:2]
    check_layer_gradients(layer, x)


@pytest.mark.parametrize("cls,kwargs", [
    (Conv2d, dict(kernel_size=3)),
    (Conv2d, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    (Conv2d, dict(kernel_size=3, padding="same", dilation=2, groups=2)),
    (Conv2d, dict(kernel_size=4, padding="same", bias=False)),
    (Conv1d, dict(kernel_size=5, stride=3, padding=2, dilation=1, groups=2)),
    (Conv1d, dict(kernel_size=3, padding="same", dilation=3)),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_matches_torch(cls, kwargs, dtype):
    torch = pytest.importorskip("torch")
    layer, x, rng = _layer_and_data(cls, kwargs, dtype)
    if dtype == np.float64:
        to_float64(layer)
    tcls = torch.nn.Conv1d if cls is Conv1d else torch.nn.Conv2d
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    tconv = tcls(layer.in_channels, layer.out_channels, **kwargs).to(tdtype)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(layer.params["weight"]))
        if layer.bias:
            tconv.bias.copy_(torch.from_numpy(layer.params["bias"]))
    xt = torch.from_numpy(x).requires_grad_()
    yt = tconv(xt)
    y = layer(x)
    r = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(r))
    gx = layer.backward(r)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(gx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(layer.grads["weight"], tconv.weight.grad.numpy(), **tol)
    if layer.bias:
        np.testing.assert_allclose(layer.grads["bias"], tconv.bias.grad.numpy(), **tol)


def test_mnist_cnn_shapes_match_torch():
    """The seed CNN's three convolutions at batch 8, float32, forward and backward."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for cin, cout, hw in [(1, 32, 28), (32, 64, 13), (64, 64, 5)]:
        layer = Conv2d(cin, cout, 3, seed=cin)
        tconv = torch.nn.Conv2d(cin, cout, 3)
        with torch.no_grad():
            tconv.weight.copy_(torch.from_numpy(layer.params["weight"]))
            tconv.bias.copy_(torch.from_numpy(layer.params["bias"]))
        x = rng.standard_normal((8, cin, hw, hw)).astype(np.float32)
        xt = torch.from_numpy(x).requires_grad_()
        yt = tconv(xt)
        r = rng.standard_normal(yt.shape).astype(np.float32)
        yt.backward(torch.from_numpy(r))
        np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.backward(r), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.grads["weight"], tconv.weight.grad.numpy(),
                                   rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(layer.grads["bias"], tconv.bias.grad.numpy(),
                                   rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cls,kwargs,shape", [
    (Conv2d, dict(kernel_size=3, stride=2, padding=1, dilation=(2, 1), groups=2), (16, 4, 40, 40)),
    (Conv1d, dict(kernel_size=4, padding="same"), (8, 4, 300)),
])
def test_threads_bitwise_identical(cls, kwargs, shape):
    """Big enough that every kernel runs its parallel path (>= 32768 elements)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    results = []
    for n in (1, 2):
        cpool.set_num_threads(n)
        try:
            layer = cls(4, 6, seed=3, **kwargs)
            y = layer(x)
            gx = layer.backward(np.random.default_rng(4).standard_normal(y.shape)
                                .astype(np.float32))
            results.append((y, gx, layer.grads["weight"], layer.grads["bias"]))
        finally:
            cpool.set_num_threads(None)
    assert x.size * np.prod(layer._kernel) >= 32768
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("training", [True, False])
def test_blocks_bitwise_identical_for_every_thread_count(training):
    """A convolution big enough to be cut into several GEMM blocks (run_blocks) gives the
    same bits with 1, 2 and 3 threads (3 does not divide the block count), in training
    mode and after an eval-mode forward (backward rebuilds col block by block)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 32, 13, 13)).astype(np.float32)
    g = rng.standard_normal((24, 64, 13, 13)).astype(np.float32)
    layer = Conv2d(32, 64, 3, padding=1, groups=2, seed=5)
    assert len(layer._blocks(24, 32 * 9, 13 * 13)[0]) - 1 >= 4
    layer.train(training)
    results = []
    for n in (1, 2, 3):
        cpool.set_num_threads(n)
        try:
            y = layer(x)
            results.append((y, layer.backward(g), layer.grads["weight"].copy(),
                            layer.grads["bias"].copy()))
        finally:
            cpool.set_num_threads(None)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    ref = Conv2d(32, 64, 3, padding=1, groups=2, seed=5)
    ref(x.astype(np.float64))
    ref.backward(g.astype(np.float64))
    np.testing.assert_allclose(results[0][2], ref.grads["weight"], rtol=1e-4, atol=1e-4)


def test_run_blocks_holds_blas_at_one_thread_and_raises():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cpool._threads import run_blocks

    def blas_threads():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas"]

    before = blas_threads()
    seen = [None] * 4

    def record(i, threads):
        seen[i] = (threads, blas_threads())

    def fail(i, threads):
        if i == 3:
            raise ZeroDivisionError(i)

    cpool.set_num_threads(2)
    try:
        run_blocks(record, 4)
        assert seen == [(1, [1] * len(before))] * 4
        with pytest.raises(ZeroDivisionError):
            run_blocks(fail, 4)
    finally:
        cpool.set_num_threads(None)
    assert blas_threads() == before


def test_unbatched_input_and_eval_backward():
    layer, x, rng = _layer_and_data(Conv2d, dict(kernel_size=3, padding=1, stride=2),
                                    np.float64)
    batched = layer(x[:1])
    single = layer(x[0])
    np.testing.assert_array_equal(single, batched[0])
    r = rng.standard_normal(single.shape)
    g_train = layer.backward(r)
    w_train = layer.grads["weight"].copy()
    layer.eval()
    layer(x[0])
    assert layer._ctx[0] is None  # eval keeps no unfolded copy
    np.testing.assert_array_equal(layer.backward(r), g_train)
    np.testing.assert_array_equal(layer.grads["weight"], w_train)
    assert layer.output_shape(x[0].shape) == single.shape


def test_needs_input_grad_false_skips_grad_input():
    layer, x, rng = _layer_and_data(Conv2d, dict(kernel_size=3, groups=2), np.float64)
    y = layer(x)
    r = rng.standard_normal(y.shape)
    layer.backward(r)
    held = dict(layer.grads)  # what an optimizer would hold
    full = {k: v.copy() for k, v in layer.grads.items()}
    layer.needs_input_grad = False
    layer.grads["weight"][...] = 0
    assert layer.backward(r) is None
    for name, value in full.items():
        assert layer.grads[name] is held[name]  # overwritten in place, not re-bound
        np.testing.assert_array_equal(layer.grads[name], value)


def test_dtypes_and_input_untouched():
    layer = Conv2d(2, 3, 3, padding=1, seed=0)
    x = np.arange(2 * 5 * 5, dtype=np.int64).reshape(1, 2, 5, 5)
    y = layer(x)
    assert y.dtype == np.float64
    x16 = np.ones((1, 2, 5, 5), np.float16)
    copy = x16.copy()
    assert layer(x16).dtype == np.float16
    assert layer.backward(np.ones((1, 3, 5, 5), np.float16)).dtype == np.float16
    np.testing.assert_array_equal(x16, copy)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        layer(np.ones((1, 2, 5, 5), dtype=complex))


def test_init_like_torch_and_seeded():
    layer = Conv2d(8, 16, (3, 5), groups=2, seed=7)
    w, b = layer.params["weight"], layer.params["bias"]
    assert w.shape == (16, 4, 3, 5) and b.shape == (16,)
    assert w.dtype == np.float32 and b.dtype == np.float32
    bound = 1 / np.sqrt(4 * 3 * 5)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert np.abs(b).max() <= bound
    assert abs(np.std(w) - bound / np.sqrt(3)) < 0.1 * bound  # uniform(-b, b) spread
    again = Conv2d(8, 16, (3, 5), groups=2, seed=7)
    np.testing.assert_array_equal(again.params["weight"], w)
    other = Conv2d(8, 16, (3, 5), groups=2, seed=8)
    assert not np.array_equal(other.params["weight"], w)


def test_config_round_trip_and_repr():
    layer = Conv2d(4, 6, (3, 2), stride=2, padding=((1, 0), (0, 2)), dilation=(1, 2),
                   groups=2, bias=False, seed=3)
    config = json.loads(json.dumps(layer.get_config()))
    clone = Conv2d.from_config(config)
    np.testing.assert_array_equal(clone.params["weight"], layer.params["weight"])
    x = np.random.default_rng(0).standard_normal((1, 4, 7, 7))
    np.testing.assert_array_equal(clone(x), layer(x))
    assert repr(Conv2d(1, 32, 3)) == "Conv2d(in_channels=1, out_channels=32, kernel_size=3)"
    assert "padding='same'" in repr(Conv1d(2, 2, 3, padding="same"))
    assert Conv1d.from_config(Conv1d(2, 4, 3, padding=(1,)).get_config()).padding == (1,)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(out_channels=2.5), TypeError, "out_channels"),
    (dict(kernel_size=(3,)), ValueError, "kernel_size"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(stride=0), ValueError, "stride"),
    (dict(dilation="2"), TypeError, "dilation"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(groups=3), ValueError, "groups"),
    (dict(bias=1), TypeError, "bias"),
    (dict(seed=1.5), TypeError, "seed"),
])
def test_bad_arguments(kwargs, exc, name):
    args = dict(in_channels=4, out_channels=6, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        Conv2d(**args)


def test_bad_inputs():
    layer = Conv2d(4, 6, 3)
    with pytest.raises(ValueError, match="x must have 4 channels"):
        layer(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="x must have 3 dims"):
        layer(np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="output size"):
        layer(np.zeros((1, 4, 2, 5), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 6, 3, 3), np.float32))
    layer(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="grad_output must have shape"):
        layer.backward(np.zeros((1, 6, 3, 4), np.float32))
