"""padding_mode ("zeros", "edge", "reflect") of max/avg/Lp pooling, functional and layers,
against the NumPy reference (pool np.pad(x, pads, mode) with no padding over the same
windows; gradients folded back through the pad's source positions) and PyTorch
(F.pad + pool, autograd); finite differences; threads; errors."""
import numpy as np
import pytest

import cpool
from cpool import functional as F
from cpool import layers
from tests import reference as R
from tests import reference_unpool as RU
from tests.pool_cases import random_geometry, random_input, rng_for
from tests.test_pool import bits, numeric_grad

MODES = ("zeros", "edge", "reflect")
DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): dict(rtol=3e-5, atol=3e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def fn(kind, nd, backward=False):
    return getattr(F, f"{kind}_pool{nd}d" + ("_backward" if backward else ""))


def pads_of(geo, in_size):
    return R.Windows(in_size, geo["kernel_size"], geo.get("stride"), geo["padding"],
                     geo.get("dilation", 1), geo.get("ceil_mode", False)).pads


def padded_case(rng, nd, mode, dtype, kind="normal", extra=4, dilation=True, planes=2):
    """A random geometry with some padding, valid for `mode`, and an input for it."""
    while True:
        geo, in_size = random_geometry(rng, nd, extra=extra, dilation=dilation)
        pads = pads_of(geo, in_size)
        if max(max(p) for p in pads) == 0:
            continue
        if mode == "reflect" and any(max(p) >= L for p, L in zip(pads, in_size)):
            continue
        shape = (int(rng.integers(1, planes + 1)), 1) + in_size
        return geo, random_input(rng, shape, dtype, kind)


def distinct_nonzero(rng, shape):
    """Distinct values, none 0 (no kink against a zero pad), spaced for finite differences."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) + 0.5) / size * 4 - 2).reshape(shape)


# --------------------------------------------------------------------------------------
# Forward against the reference.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_max_forward_and_indices_match_reference(mode, nd, dtype):
    rng = rng_for("pm-max", mode, nd, dtype)
    for trial in range(6):
        geo, x = padded_case(rng, nd, mode, dtype, kind="ties" if trial % 2 else "normal")
        out, idx = fn("max", nd)(x, **geo, return_indices=True, padding_mode=mode)
        ref_out, ref_idx = RU.pool_padded("max", x, nd, mode, geo)
        assert out.dtype == dtype and out.shape == ref_out.shape
        np.testing.assert_array_equal(out, ref_out, err_msg=str(geo))
        np.testing.assert_array_equal(idx, ref_idx, err_msg=str(geo))
        np.testing.assert_array_equal(fn("max", nd)(x, **geo, padding_mode=mode), ref_out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_avg_and_lp_forward_match_reference(mode, nd, dtype):
    rng = rng_for("pm-avg-lp", mode, nd, dtype)
    for trial in range(5):
        geo, x = padded_case(rng, nd, mode, dtype)
        opts = dict(count_include_pad=bool(trial % 2),
                    divisor_override=3 if trial == 4 else None)
        got = fn("avg", nd)(x, **geo, **opts, padding_mode=mode)
        np.testing.assert_allclose(got, RU.pool_padded("avg", x, nd, mode, geo, **opts),
                                   **TOL[np.dtype(dtype)], err_msg=f"{geo} {opts}")
        p = (1.0, 2.0, 3.0, 1.5, 0.7)[trial]
        got = fn("lp", nd)(x, p, **geo, padding_mode=mode)
        np.testing.assert_allclose(got, RU.pool_padded("lp", x, nd, mode, geo, norm_type=p),
                                   **TOL[np.dtype(dtype)], err_msg=f"p={p} {geo}")


def test_output_shape_keeps_the_unpadded_geometry_with_ceil_mode():
    # L=5, k=2, s=2, pads (1, 1), ceil: windows start at -1, 1, 3 (a 4th would start at 5,
    # inside the right padding, and is dropped), so 3 outputs in every mode; the padded
    # array (length 7) pooled with padding 0 and ceil_mode would give 4.
    x = np.arange(5.0)[None, None]
    for mode in ("ignore",) + MODES:
        assert F.max_pool1d(x, 2, 2, 1, ceil_mode=True, padding_mode=mode).shape == (1, 1, 3)
    np.testing.assert_array_equal(F.avg_pool1d(x, 2, 2, 1, ceil_mode=True, padding_mode="edge"),
                                  [[[0.0, 1.5, 3.5]]])  # (0+0)/2, (1+2)/2, (3+4)/2


def test_zeros_mode_identities():
    """Average with real zeros is the include-pad average; an Lp pad adds |0|^p either way;
    a max window touching zeros pools to at least 0."""
    rng = rng_for("pm-identities")
    for nd in (1, 2, 3):
        geo, x = padded_case(rng, nd, "zeros", np.float64, dilation=False)
        np.testing.assert_allclose(
            fn("avg", nd)(x, **geo, count_include_pad=False, padding_mode="zeros"),
            fn("avg", nd)(x, **geo, count_include_pad=True), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(fn("lp", nd)(x, 3.0, **geo, padding_mode="zeros"),
                                   fn("lp", nd)(x, 3.0, **geo), rtol=1e-13, atol=1e-14)
        out, idx = fn("max", nd)(-np.abs(x) - 1, **geo, return_indices=True,
                                 padding_mode="zeros")
        assert np.all((out == 0) == (idx == -1))


def test_indices_point_at_the_copied_input_element():
    x = np.array([[[-1.0, -2.0, -3.0]]])
    # k=3, s=1, pad 1: windows [pad, -1, -2], [-1, -2, -3], [-2, -3, pad]
    out, idx = F.max_pool1d(x, 3, 1, 1, return_indices=True, padding_mode="zeros")
    np.testing.assert_array_equal(out, [[[0.0, -1.0, 0.0]]])
    np.testing.assert_array_equal(idx, [[[-1, 0, -1]]])  # a zero pad has no input element
    out, idx = F.max_pool1d(-x, 3, 1, 1, return_indices=True, padding_mode="edge")
    np.testing.assert_array_equal(out, [[[2.0, 3.0, 3.0]]])  # pads copy x[0] and x[2]
    np.testing.assert_array_equal(idx, [[[1, 2, 2]]])
    out, idx = F.max_pool1d(-x, 3, 1, 1, return_indices=True, padding_mode="reflect")
    np.testing.assert_array_equal(out, [[[2.0, 3.0, 3.0]]])  # left pad copies x[1]=2
    np.testing.assert_array_equal(idx, [[[1, 2, 2]]])
    g = np.array([[[1.0, 10.0, 100.0]]])
    np.testing.assert_array_equal(F.max_pool1d_backward(g, [[[-1, 0, -1]]], (1, 1, 3)),
                                  [[[10.0, 0.0, 0.0]]])


# --------------------------------------------------------------------------------------
# Backward: against the reference, and finite differences (float64).
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_avg_and_lp_backward_match_reference(mode, nd):
    rng = rng_for("pm-bwd", mode, nd)
    for trial in range(3):
        geo, x = padded_case(rng, nd, mode, np.float64, kind="away0", extra=3)
        opts = dict(count_include_pad=bool(trial % 2))
        y = fn("avg", nd)(x, **geo, **opts, padding_mode=mode)
        g = rng.standard_normal(y.shape)
        got = fn("avg", nd, True)(g, x.shape, **geo, **opts, padding_mode=mode)
        np.testing.assert_allclose(
            got, RU.pool_padded_backward("avg", g, x, nd, mode, geo, **opts),
            rtol=1e-12, atol=1e-13, err_msg=str(geo))
        p = (1.0, 2.0, 3.0)[trial]
        y = fn("lp", nd)(x, p, **geo, padding_mode=mode)
        got = fn("lp", nd, True)(g, x, y, p, **geo, padding_mode=mode)
        np.testing.assert_allclose(
            got, RU.pool_padded_backward("lp", g, x, nd, mode, geo, norm_type=p),
            rtol=1e-10, atol=1e-12, err_msg=f"p={p} {geo}")


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_backward_finite_differences(mode, nd):
    rng = rng_for("pm-fd", mode, nd)
    for _ in range(2 if nd < 3 else 1):
        geo, x = padded_case(rng, nd, mode, np.float64, extra=3 - nd // 2, planes=1,
                             dilation=nd < 3)
        x = distinct_nonzero(rng, x.shape)
        y, idx = fn("max", nd)(x, **geo, return_indices=True, padding_mode=mode)
        w = rng.standard_normal(y.shape)
        expected = numeric_grad(lambda v: fn("max", nd)(v, **geo, padding_mode=mode), x, w)
        np.testing.assert_allclose(fn("max", nd, True)(w, idx, x.shape), expected,
                                   rtol=1e-6, atol=1e-7, err_msg=str(geo))
        layer = getattr(layers, f"MaxPool{nd}d")(**geo, padding_mode=mode)
        layer(x)
        np.testing.assert_allclose(layer.backward(w), expected, rtol=1e-6, atol=1e-7)

        opts = dict(count_include_pad=False)
        w = rng.standard_normal(y.shape)
        expected = numeric_grad(lambda v: fn("avg", nd)(v, **geo, **opts, padding_mode=mode),
                                x, w)
        np.testing.assert_allclose(
            fn("avg", nd, True)(w, x.shape, **geo, **opts, padding_mode=mode), expected,
            rtol=1e-6, atol=1e-7, err_msg=str(geo))

        xl = np.where(np.abs(x) < 0.5, x + np.sign(x), x)  # |x| >= 0.5 for Lp
        y = fn("lp", nd)(xl, 3.0, **geo, padding_mode=mode)
        expected = numeric_grad(lambda v: fn("lp", nd)(v, 3.0, **geo, padding_mode=mode),
                                xl.copy(), w)
        np.testing.assert_allclose(
            fn("lp", nd, True)(w, xl, y, 3.0, **geo, padding_mode=mode), expected,
            rtol=1e-5, atol=1e-6, err_msg=str(geo))


# --------------------------------------------------------------------------------------
# Against PyTorch: F.pad(x, mode) then pool with padding 0 (no ceil_mode: torch would
# keep a window over the padded array that the unpadded geometry drops).
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_matches_torch_pad_then_pool(nd, dtype):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    torch_mode = {"zeros": "constant", "edge": "replicate", "reflect": "reflect"}
    rng = rng_for("pm-torch", nd, dtype)
    for mode in MODES:
        for _ in range(2):
            while True:
                geo, x = padded_case(rng, nd, mode, dtype, kind="away0")
                if not geo["ceil_mode"] and geo["padding"] not in ("same", "same_lower"):
                    break
            geo_t = dict(geo, padding=0)
            pads = [p for pair in reversed(pads_of(geo, x.shape[2:])) for p in pair]
            for kind in ("max", "avg", "lp"):
                tx = torch.from_numpy(x).requires_grad_()
                xp = tf.pad(tx, pads, mode=torch_mode[mode])
                if kind == "max":
                    ty = getattr(tf, f"max_pool{nd}d")(xp, **geo_t)
                    y, idx = fn(kind, nd)(x, **geo, return_indices=True, padding_mode=mode)
                elif kind == "avg":
                    geo_a = {k: v for k, v in geo_t.items() if k != "dilation"}
                    if geo.get("dilation", 1) not in (1, (1,) * nd):
                        continue
                    ty = getattr(tf, f"avg_pool{nd}d")(xp, **geo_a)
                    y = fn(kind, nd)(x, **geo, padding_mode=mode)
                else:
                    if nd == 1 or geo.get("dilation", 1) not in (1, (1,) * nd):
                        continue  # torch has lp_pool2d/3d only, without dilation
                    geo_l = {k: v for k, v in geo_t.items() if k not in ("dilation", "padding")}
                    ty = getattr(tf, f"lp_pool{nd}d")(xp, 2.0, **geo_l)
                    y = fn(kind, nd)(x, 2.0, **geo, padding_mode=mode)
                np.testing.assert_allclose(y, ty.detach().numpy(), **TOL[np.dtype(dtype)],
                                           err_msg=f"{kind} {mode} {geo}")
                g = rng.standard_normal(y.shape).astype(dtype)
                ty.backward(torch.from_numpy(g))
                if kind == "max":
                    got = fn(kind, nd, True)(g, idx, x.shape)
                elif kind == "avg":
                    got = fn(kind, nd, True)(g, x.shape, **geo, padding_mode=mode)
                else:
                    got = fn(kind, nd, True)(g, x, y, 2.0, **geo, padding_mode=mode)
                np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-4, atol=1e-5,
                                           err_msg=f"{kind} {mode} {geo}")


# --------------------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_layers_match_functional(mode, nd):
    rng = rng_for("pm-layers", mode, nd)
    geo, x = padded_case(rng, nd, mode, np.float64, kind="away0")
    y, idx = fn("max", nd)(x, **geo, return_indices=True, padding_mode=mode)
    g = rng.standard_normal(y.shape)
    layer = getattr(layers, f"MaxPool{nd}d")(**geo, return_indices=True, padding_mode=mode)
    ly, lidx = layer(x)
    np.testing.assert_array_equal(ly, y)
    np.testing.assert_array_equal(lidx, idx)
    # gather-then-fold (layer) and scatter by index (functional) sum in different orders
    np.testing.assert_allclose(layer.backward(g), fn("max", nd, True)(g, idx, x.shape),
                               rtol=1e-13, atol=1e-14)
    layer.eval()
    np.testing.assert_array_equal(layer(x)[0], y)

    layer = getattr(layers, f"AvgPool{nd}d")(**geo, padding_mode=mode)
    np.testing.assert_array_equal(layer(x), fn("avg", nd)(x, **geo, padding_mode=mode))
    np.testing.assert_array_equal(layer.backward(g),
                                  fn("avg", nd, True)(g, x.shape, **geo, padding_mode=mode))
    assert layer.get_config()["padding_mode"] == mode and f"padding_mode='{mode}'" in repr(layer)
    assert type(layer).from_config(layer.get_config()).padding_mode == mode

    layer = getattr(layers, f"LPPool{nd}d")(1.5, **geo, padding_mode=mode)
    ly = layer(x)
    np.testing.assert_array_equal(ly, fn("lp", nd)(x, 1.5, **geo, padding_mode=mode))
    np.testing.assert_array_equal(
        layer.backward(g), fn("lp", nd, True)(g, x, ly, 1.5, **geo, padding_mode=mode))
    assert layer.output_shape(x.shape) == ly.shape


# --------------------------------------------------------------------------------------
# Threads, inputs, errors.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_are_bitwise_identical(dtype):
    rng = rng_for("pm-threads", dtype)
    x = random_input(rng, (3, 5, 13, 17), dtype, "ties")
    geo = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    results = []
    try:
        for n in (1, 2):
            cpool.set_num_threads(n)
            row = []
            for mode in MODES:
                out, idx = F.max_pool2d(x, **geo, return_indices=True, padding_mode=mode)
                g = np.ones_like(out) / 3
                y = F.lp_pool2d(x, 3.0, **geo, padding_mode=mode)
                layer = layers.MaxPool2d(**geo, padding_mode=mode)
                layer(x)
                row += [out, idx, F.avg_pool2d(x, **geo, padding_mode=mode), y,
                        F.avg_pool2d_backward(g, x.shape, **geo, padding_mode=mode),
                        F.lp_pool2d_backward(g, x, y, 3.0, **geo, padding_mode=mode),
                        layer.backward(g)]
            results.append(row)
    finally:
        cpool.set_num_threads(None)
    for a, b in zip(*results):
        assert np.array_equal(bits(a), bits(b))


def test_inputs_are_not_modified():
    rng = rng_for("pm-inputs")
    x = rng.standard_normal((2, 3, 6, 7))
    keep = x.copy()
    for mode in MODES:
        F.max_pool2d(x, 3, 1, 1, padding_mode=mode, return_indices=True)
        y = F.lp_pool2d(x, 2.0, 3, 1, 1, padding_mode=mode)
        F.lp_pool2d_backward(np.ones_like(y), x, y, 2.0, 3, 1, 1, padding_mode=mode)
        layer = layers.AvgPool2d(3, 1, 1, padding_mode=mode)
        layer.backward(np.ones_like(layer(x)))
    np.testing.assert_array_equal(x, keep)


def test_errors_name_the_argument():
    x = np.zeros((1, 1, 2, 5))
    with pytest.raises(ValueError, match="padding_mode must be one of 'ignore', 'zeros'"):
        F.max_pool2d(x, 3, padding=1, padding_mode="replicate")
    with pytest.raises(ValueError, match="padding_mode"):
        F.avg_pool2d_backward(np.zeros((1, 1, 1, 2)), x.shape, 3, padding=1, padding_mode=0)
    with pytest.raises(ValueError, match="padding_mode"):
        layers.LPPool2d(2, 3, padding_mode="edges")
    with pytest.raises(ValueError, match="reflect"):
        F.avg_pool2d(x[:, :, :1], 3, padding=1, padding_mode="reflect")  # pad 1 >= L = 1
    with pytest.raises(ValueError, match="reflect"):
        F.lp_pool2d(x, 2, (5, 1), stride=1, padding=(2, 0), padding_mode="reflect")  # 2 >= 2
    with pytest.raises(ValueError, match="indices"):
        F.max_pool1d_backward(np.zeros((1, 1, 2)), np.array([[[0, -2]]]), (1, 1, 3))
