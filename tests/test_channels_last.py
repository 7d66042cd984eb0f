"""channels_last=True: every pooling function and layer against the NumPy references.

The references compute channels-first; a channels-last call must equal the reference run
on the transposed input, transposed back. Backward is checked against the references and
by finite differences in float64 (the layers).
"""
import numpy as np
import pytest

import cpool
import cpool.functional as F
from cpool import layers as L
from tests import reference as R
from tests import reference_binned as RB
from tests.layers.gradcheck import check_layer_gradients
from tests.pool_cases import (assert_identical_bits, random_geometry, random_input, rng_for,
                              runs_at_every_simd_level, with_nans)


def to_last(a):
    """(N, C, *spatial) -> (N, *spatial, C), C-contiguous."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def to_first(a):
    return np.moveaxis(a, -1, 1)


def fn(kind, nd):
    return getattr(F, f"{kind}_pool{nd}d")


def case(key, nd, dtype=np.float64, kind="normal"):
    rng = rng_for("cl", key, nd, np.dtype(dtype).name, kind)
    geo, in_size = random_geometry(rng, nd)
    lead = (int(rng.integers(1, 3)), int(rng.integers(1, 12)))
    return rng, geo, random_input(rng, lead + in_size, dtype, kind)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
def test_max_pool_values_and_indices(nd, dtype, seed):
    rng, geo, x = case(("max", seed), nd, dtype, kind="ties")
    if seed % 2:
        x = with_nans(rng, x)
    out, idx = fn("max", nd)(to_last(x), **geo, return_indices=True, channels_last=True)
    ref, ref_idx = R.max_pool(x, nd, **geo)
    np.testing.assert_array_equal(to_first(out), ref)
    valid = np.isfinite(ref) | np.isnan(ref)  # PyTorch's index of a padding-only window differs
    np.testing.assert_array_equal(to_first(idx)[valid], ref_idx[valid])
    assert out.flags.c_contiguous and out.dtype == dtype
    np.testing.assert_array_equal(
        fn("max", nd)(to_last(x), **geo, channels_last=True), out)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_avg_and_lp_pool(nd, seed):
    rng, geo, x = case(("avg", seed), nd)
    cip, div = bool(seed % 2), (None if seed < 4 else 3)
    out = fn("avg", nd)(to_last(x), **geo, count_include_pad=cip, divisor_override=div,
                        channels_last=True)
    ref = R.avg_pool(x, nd, **geo, count_include_pad=cip, divisor_override=div)
    np.testing.assert_allclose(to_first(out), ref, rtol=1e-12, atol=1e-12)
    p = (1.0, 2.0, 3.0)[seed % 3]
    out = fn("lp", nd)(to_last(x), p, **geo, channels_last=True)
    np.testing.assert_allclose(to_first(out), R.lp_pool(x, nd, p, **geo), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_functional_backward(nd, seed):
    rng, geo, x = case(("bwd", seed), nd, kind="away0")
    xl = to_last(x)
    out, idx = fn("max", nd)(xl, **geo, return_indices=True, channels_last=True)
    g = rng.standard_normal(out.shape)
    got = getattr(F, f"max_pool{nd}d_backward")(g, idx, xl.shape, channels_last=True)
    want = R.max_pool_backward(to_first(g), to_first(idx), nd, x.shape)
    np.testing.assert_allclose(to_first(got), want, rtol=1e-12, atol=1e-12)
    got = getattr(F, f"avg_pool{nd}d_backward")(g, xl.shape, **geo, channels_last=True)
    want = R.avg_pool_backward(to_first(g), nd, x.shape, **geo)
    np.testing.assert_allclose(to_first(got), want, rtol=1e-12, atol=1e-12)
    y = fn("lp", nd)(xl, 3.0, **geo, channels_last=True)
    got = getattr(F, f"lp_pool{nd}d_backward")(g, xl, y, 3.0, **geo, channels_last=True)
    want = R.lp_pool_backward(to_first(g), x, nd, 3.0, **geo)
    np.testing.assert_allclose(to_first(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["zeros", "edge", "reflect"])
def test_padding_modes_equal_channels_first(mode):
    rng = rng_for("cl-pad", mode)
    x = rng.standard_normal((2, 3, 7, 6))
    for kind in ("max", "avg", "lp"):
        args = (2.0,) if kind == "lp" else ()
        first = fn(kind, 2)(x, *args, 3, 2, 1, padding_mode=mode)
        last = fn(kind, 2)(to_last(x), *args, 3, 2, 1, padding_mode=mode, channels_last=True)
        np.testing.assert_allclose(to_first(last), first, rtol=1e-12, atol=1e-12)
    g = rng.standard_normal(first.shape)
    want = F.avg_pool2d_backward(g, x.shape, 3, 2, 1, padding_mode=mode)
    got = F.avg_pool2d_backward(to_last(g), to_last(x).shape, 3, 2, 1, padding_mode=mode,
                                channels_last=True)
    np.testing.assert_allclose(to_first(got), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["max", "avg", "lp"])
def test_bin_family(mode):
    rng = rng_for("cl-bins", mode)
    x = random_input(rng, (2, 5, 9, 7), np.float64, "ties" if mode == "max" else "away0")
    bins = [F.window_bins(9, [2, 3, 4]), F.window_bins(7, 3, 2)]
    out = F.bin_pool(to_last(x), bins, mode, 3.0, channels_last=True)
    np.testing.assert_allclose(to_first(out), RB.ref_bin_pool(x, bins, mode, 3.0)[0],
                               rtol=1e-12)
    g = rng.standard_normal(out.shape)
    got = F.bin_pool_backward(g, to_last(x), bins, mode, 3.0, channels_last=True)
    want = RB.ref_bin_pool_backward(to_first(g), x, bins, mode, 3.0)
    np.testing.assert_allclose(to_first(got), want, rtol=1e-10, atol=1e-12)
    if mode == "lp":
        return
    for size in [(4, 3), (5, 5), (2, 7)]:
        out = getattr(F, f"adaptive_{mode}_pool2d")(to_last(x), size, channels_last=True)
        np.testing.assert_allclose(to_first(out), RB.ref_adaptive_pool(x, size, mode)[0],
                                   rtol=1e-12)
    levels = (1, 2, 3)
    out = F.spatial_pyramid_pool(to_last(x), levels, mode, channels_last=True)
    per_level = [to_last(RB.ref_adaptive_pool(x, (lv, lv), mode)[0]) for lv in levels]
    np.testing.assert_allclose(out, np.concatenate([p.reshape(2, -1) for p in per_level], 1),
                               rtol=1e-12)
    g = rng.standard_normal(out.shape)
    got = F.spatial_pyramid_pool_backward(g, to_last(x), levels, mode, channels_last=True)
    parts, start = [], 0
    for lv in levels:  # channels-last level order (l, l, C) -> channels-first (C, l, l)
        part = g[:, start:start + 5 * lv * lv].reshape(2, lv, lv, 5)
        parts.append(to_first(part).reshape(2, -1))
        start += 5 * lv * lv
    want = RB.ref_spatial_pyramid_pool_backward(np.concatenate(parts, 1), x, levels, mode)
    np.testing.assert_allclose(to_first(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_and_adaptive_indices(nd):
    rng = rng_for("cl-global", nd)
    x = random_input(rng, (2, 4) + (5, 4, 3)[:nd], np.float64, "ties")
    xl = to_last(x)
    for kind in ("max", "avg"):
        out = getattr(F, f"global_{kind}_pool")(xl, keepdims=True, channels_last=True)
        np.testing.assert_allclose(to_first(out), RB.ref_adaptive_pool(x, (1,) * nd, kind)[0],
                                   rtol=1e-12)
        assert getattr(F, f"global_{kind}_pool")(xl, channels_last=True).shape == (2, 4)
    out, idx = getattr(F, f"adaptive_max_pool{nd}d")(xl, 2, return_indices=True,
                                                      channels_last=True)
    ref, ref_idx = getattr(F, f"adaptive_max_pool{nd}d")(x, 2, return_indices=True)
    np.testing.assert_array_equal(to_first(out), ref)
    np.testing.assert_array_equal(to_first(idx), ref_idx)
    g = rng.standard_normal(out.shape)
    got = getattr(F, f"adaptive_max_pool{nd}d_backward")(g, idx, xl.shape, channels_last=True)
    want = getattr(F, f"adaptive_max_pool{nd}d_backward")(to_first(g), ref_idx, x.shape)
    np.testing.assert_array_equal(to_first(got), want)
    got = getattr(F, f"adaptive_avg_pool{nd}d_backward")(g, xl.shape, channels_last=True)
    want = getattr(F, f"adaptive_avg_pool{nd}d_backward")(to_first(g), x.shape)
    np.testing.assert_allclose(to_first(got), want, rtol=1e-12)


LAYERS = [
    lambda cl: L.MaxPool2d(3, 2, 1, channels_last=cl),
    lambda cl: L.MaxPool1d(2, channels_last=cl),
    lambda cl: L.MaxPool3d(2, 1, channels_last=cl),
    lambda cl: L.AvgPool2d(3, 1, 1, count_include_pad=False, channels_last=cl),
    lambda cl: L.AvgPool3d(2, channels_last=cl),
    lambda cl: L.LPPool2d(3, 2, channels_last=cl),
    lambda cl: L.AdaptiveMaxPool2d((3, 2), channels_last=cl),
    lambda cl: L.AdaptiveAvgPool1d(3, channels_last=cl),
    lambda cl: L.GlobalMaxPool(channels_last=cl),
    lambda cl: L.GlobalLPPool(3, keepdims=True, channels_last=cl),
    lambda cl: L.BinPool([[(0, 2), (1, 5)], [(0, 3), (2, 4)]], "avg", channels_last=cl),
    lambda cl: L.SpatialPyramidPool((1, 2), "avg", channels_last=cl),
]
SPATIAL = {"1d": (7,), "2d": (6, 5), "3d": (4, 5, 3)}


def _layer_input(layer, rng):
    name = type(layer).__name__
    nd = 3 if "3d" in name else 1 if "1d" in name else 2
    return random_input(rng, (2, 3) + SPATIAL[f"{nd}d"], np.float64, "distinct")


@pytest.mark.parametrize("make", LAYERS)
def test_layers_match_channels_first_and_gradcheck(make):
    first, last = make(False), make(True)
    rng = rng_for("cl-layer", repr(first))
    x = _layer_input(first, rng)
    out_first = first(x)
    out_last = last(to_last(x))
    spp = isinstance(first, L.SpatialPyramidPool)
    flat = out_first.ndim == 2  # (N, C) or a pyramid vector
    assert last.output_shape(to_last(x).shape) == out_last.shape
    if not flat:
        np.testing.assert_allclose(to_first(out_last), out_first, rtol=1e-12)
        g = rng.standard_normal(out_first.shape)
        np.testing.assert_allclose(to_first(last.backward(to_last(g))), first.backward(g),
                                   rtol=1e-10, atol=1e-12)
    elif not spp:
        np.testing.assert_allclose(out_last, out_first, rtol=1e-12)
    assert type(last).from_config(last.get_config()).channels_last is True
    check_layer_gradients(last, to_last(x))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_thread_counts_and_simd_levels_give_identical_bits(nd):
    rng, geo, x = case(("bits", nd), nd, np.float32, kind="ties")
    x = to_last(with_nans(rng, np.repeat(x, 9, axis=1)))  # C = 9..99: channel blocks
    layer = getattr(L, f"MaxPool{nd}d")

    def run():
        m = layer(geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"],
                  geo["ceil_mode"], channels_last=True)
        y = m(x)
        return (y, m.backward(np.ones_like(y)),
                fn("avg", nd)(x, geo["kernel_size"], channels_last=True),
                fn("lp", nd)(x, 2.0, geo["kernel_size"], channels_last=True))

    assert_identical_bits(runs_at_every_simd_level(run))


def test_channel_blocks_split_small_batches():
    """Few rows and many channels: the work is split over channel blocks."""
    rng = rng_for("cl-blocks")
    x = rng.standard_normal((1, 2, 2, 1000)).astype(np.float32)
    cpool.set_num_threads(2)
    try:
        out = F.max_pool2d(x, 2, channels_last=True)
        g = F.avg_pool2d_backward(np.ones_like(out), x.shape, 2, channels_last=True)
    finally:
        cpool.set_num_threads(None)
    np.testing.assert_array_equal(out[0, 0, 0], x[0].reshape(4, 1000).max(0))
    np.testing.assert_array_equal(g, np.full_like(x, 0.25))


def test_bad_layout_arguments():
    x = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(TypeError, match="channels_last"):
        F.max_pool2d(x, 2, channels_last="yes")
    with pytest.raises(TypeError, match="channels_last"):
        L.AvgPool2d(2, channels_last=1)
    with pytest.raises(ValueError, match="grad_output"):
        F.avg_pool2d_backward(np.zeros((1, 3, 2, 2)), x.shape, 2, channels_last=True)
    with pytest.raises(ValueError, match="x must have"):
        F.global_avg_pool(np.zeros((2, 3)), channels_last=True)
