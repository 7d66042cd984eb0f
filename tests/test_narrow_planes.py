"""The narrow-plane forward and window-sum backward (float32 channels-first planes of 12
to 16 columns, a whole plane per call from AVX-512 registers: cl_narrow.h,
cpool._layout.narrow_planes) against
the NumPy reference and, to the bit, against the plane blocks it stands in for. On a CPU
without AVX-512 both runs take the plane blocks."""
import numpy as np
import pytest

from cpool import _binned, _layout
from cpool import functional as F
from cpool import layers
from cpool._kernels import pool
from tests import reference as R
from tests import reference_binned as RB
from tests.conftest import route_kernels
from tests.pool_cases import (assert_identical_bits, random_geometry, random_input, rng_for,
                              runs_at_every_simd_level, with_nans)

CHANNELS = (1, 3, 70)


def narrow_and_blocks(run, monkeypatch):
    """run() with small planes through forward_planes, narrow and as plane blocks."""
    results = []
    for narrow in (True, False):
        with monkeypatch.context() as m:
            route_kernels(m, "planes")
            m.setattr(_layout, "NARROW_PLANES", narrow)
            results.append(run())
    return results


def assert_bits_equal(a, b, msg=""):
    assert a.dtype == b.dtype and a.shape == b.shape, msg
    assert a.tobytes() == b.tobytes(), msg


def narrow_geometry(rng):
    """A random 2-D sliding window over an input 12 to 16 columns wide."""
    geo, _ = random_geometry(rng, 2, max_kernel=5, max_stride=3)
    height = int(rng.integers(9, 30))
    return geo, (height, int(rng.integers(12, 17)))


def test_narrow_planes_are_float32_planes_of_12_to_16_columns():
    assert _layout.narrow_planes((13, 13))
    assert _layout.narrow_planes((40, 12)) and _layout.narrow_planes((5, 16))
    assert not _layout.narrow_planes((13, 11))


def test_sliding_windows_match_reference_and_plane_blocks(monkeypatch):
    rng = rng_for("narrow-sliding")
    for trial in range(24):
        geo, in_size = narrow_geometry(rng)
        c = CHANNELS[trial % 3]
        x = with_nans(rng, random_input(rng, (2, c) + in_size, np.float32, "ties"), 0.02)
        clean = np.nan_to_num(x)
        opts = dict(count_include_pad=bool(trial % 2),
                    divisor_override=None if trial % 3 else 3)

        def run():
            return F.max_pool2d(x, **geo), F.avg_pool2d(clean, **geo, **opts)

        (mx, avg), (mx_blocks, avg_blocks) = narrow_and_blocks(run, monkeypatch)
        msg = f"{geo} {in_size} c={c}"
        np.testing.assert_array_equal(mx, R.max_pool(x, 2, **geo)[0], err_msg=msg)
        np.testing.assert_allclose(avg, R.avg_pool(clean, 2, **geo, **opts), rtol=3e-5,
                                   atol=3e-6, err_msg=msg)
        assert_bits_equal(mx, mx_blocks, msg)
        assert_bits_equal(avg, avg_blocks, msg)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_match_reference_and_plane_blocks(kind, monkeypatch):
    rng = rng_for("narrow-adaptive", kind)
    for trial in range(12):
        in_size = (int(rng.integers(1, 25)), int(rng.integers(12, 17)))
        out_size = (int(rng.integers(1, in_size[0] + 1)), int(rng.integers(1, 17)))
        x = random_input(rng, (2, CHANNELS[trial % 3]) + in_size, np.float32, "ties")
        if kind == "max":
            x = with_nans(rng, x, 0.02)
        fn = getattr(F, f"adaptive_{kind}_pool2d")
        got, blocks = narrow_and_blocks(lambda: fn(x, out_size), monkeypatch)
        ref = RB.ref_adaptive_pool(x.astype(np.float64), out_size, kind)[0]
        np.testing.assert_allclose(got, ref, rtol=3e-6, atol=3e-7, err_msg=str(out_size))
        assert_bits_equal(got, blocks, f"{in_size} -> {out_size}")


def test_signed_zeros_infinities_and_nan_payloads_keep_the_plane_blocks_bits(monkeypatch):
    # Ties of -0 and +0 keep the first in scan order; a NaN first in a window keeps its
    # payload, a later one gives the all-ones NaN (max_impl.h), vertically and along W.
    rng = rng_for("narrow-special")
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1.0, -1.0], np.float32)
    payload = np.array([0x7FC01234, 0xFFC00001], np.uint32).view(np.float32)
    x = rng.choice(specials, (3, 5, 14, 13))
    x.reshape(-1)[rng.choice(x.size, 40, replace=False)] = rng.choice(payload, 40)

    def run():
        return (F.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 2, 2, ceil_mode=True),
                F.max_pool2d(x, (3, 2), 1, dilation=(1, 2)), F.adaptive_max_pool2d(x, (5, 6)),
                F.avg_pool2d(np.nan_to_num(x, posinf=3.0, neginf=-3.0), 3, 2, 1))

    narrow, blocks = narrow_and_blocks(run, monkeypatch)
    for a, b in zip(narrow, blocks):
        assert_bits_equal(a, b)


def test_windows_of_padding_only(monkeypatch):
    # Output row 1 of a 2-row input: taps at rows -1 and 2, both padding (-inf; 0 / 2).
    x = random_input(rng_for("narrow-padding"), (2, 3, 2, 13), np.float32, "ties")
    geo = dict(kernel_size=(2, 1), stride=1, dilation=(3, 1), padding=(2, 0))

    def run():
        return F.max_pool2d(x, **geo), F.avg_pool2d(x, (2, 1), 1, (1, 0))

    (mx, avg), blocks = narrow_and_blocks(run, monkeypatch)
    assert np.all(mx[:, :, 1] == -np.inf)
    np.testing.assert_array_equal(mx, R.max_pool(x, 2, **geo)[0])
    np.testing.assert_allclose(avg, R.avg_pool(x, 2, (2, 1), 1, (1, 0)), rtol=3e-6)
    assert_bits_equal(mx, blocks[0])
    assert_bits_equal(avg, blocks[1])


def test_planes_the_kernel_does_not_take_give_the_plane_blocks_bits(monkeypatch):
    # float64, 17 columns, 3-D and Lp go to the plane blocks whatever the flag says
    rng = rng_for("narrow-fallback")
    x64 = random_input(rng, (2, 4, 13, 13), np.float64, "ties")
    x17 = random_input(rng, (2, 4, 13, 17), np.float32, "ties")
    x3d = random_input(rng, (2, 4, 3, 5, 13), np.float32, "ties")

    def run():
        return (F.max_pool2d(x64, 3, 2), F.avg_pool2d(x17, 2), F.max_pool3d(x3d, 2),
                F.lp_pool2d(x17[..., :13], 2.0, 3, 2))

    for a, b in zip(*narrow_and_blocks(run, monkeypatch)):
        assert_bits_equal(a, b)


def test_same_bits_at_every_simd_level_and_thread_count(monkeypatch):
    rng = rng_for("narrow-simd")
    x = with_nans(rng, random_input(rng, (3, 70, 13, 13), np.float32, "ties"), 0.02)
    clean = np.nan_to_num(x)
    route_kernels(monkeypatch, "planes")

    g6 = random_input(rng, (3, 70, 6, 6), np.float32)

    def run():
        return (F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(clean, 2, 2),
                F.adaptive_avg_pool2d(clean, 6), F.adaptive_max_pool2d(x, (4, 5)),
                F.adaptive_avg_pool2d_backward(g6, x.shape),
                F.avg_pool2d_backward(g6, x.shape, 3, 2), *max_layer())

    def max_layer():
        layer = layers.MaxPool2d(3, 2, 1, return_indices=True)
        layer.train()
        y, idx = layer(x)
        return y, idx, layer.backward(np.ones_like(y))

    if pool.detected_simd_level() < 2:
        pytest.skip("no AVX-512 on this CPU: the narrow kernel does not run")
    assert_identical_bits(runs_at_every_simd_level(run))


def test_average_backward_matches_reference_and_plane_blocks(monkeypatch):
    # The narrow spread (cp_narrow_spread_planes_f32): sliding windows with every divisor
    # form, and adaptive bins, whose gradients overlap along both dims.
    rng = rng_for("narrow-backward")
    for trial in range(24):
        c = CHANNELS[trial % 3]
        if trial % 2:
            geo, in_size = narrow_geometry(rng)
            geo = dict(geo, count_include_pad=bool(trial % 4 == 1),
                       divisor_override=None if trial % 3 else 3)
            shape = (2, c) + in_size
            out = F.avg_pool2d(np.zeros(shape, np.float32), **geo).shape
            g = random_input(rng, out, np.float32)

            def run():
                return F.avg_pool2d_backward(g, shape, **geo)
            ref = R.avg_pool_backward(g, 2, shape, **geo)
        else:
            in_size = (int(rng.integers(1, 25)), int(rng.integers(12, 17)))
            out_size = (int(rng.integers(1, in_size[0] + 1)), int(rng.integers(1, 17)))
            shape = (2, c) + in_size
            g = random_input(rng, (2, c) + out_size, np.float32)
            geo = out_size

            def run():
                return F.adaptive_avg_pool2d_backward(g, shape)
            bins = [_binned.adaptive_bins(n, o) for n, o in zip(in_size, out_size)]
            ref = RB.ref_bin_pool_backward(g, np.zeros(shape), bins, "avg")
        got, blocks = narrow_and_blocks(run, monkeypatch)
        np.testing.assert_allclose(got, ref, rtol=3e-5, atol=3e-6, err_msg=f"{geo} {in_size}")
        assert_bits_equal(got, blocks, f"{geo} {in_size} c={c}")


def test_max_with_taps_matches_reference_and_plane_blocks(monkeypatch):
    # The narrow argmax (cp_narrow_argmax_planes_f32): the layers' compact taps (uint8, and
    # int32 for windows of more than 256 taps), the int64 taps behind return_indices, and
    # the gradient sent through them; NaN payloads and ties keep the plane blocks' bits.
    rng = rng_for("narrow-argmax")
    for trial in range(24):
        c = CHANNELS[trial % 3]
        if trial % 3 == 2:  # adaptive, some bins larger than 256 taps
            in_size = (int(rng.integers(1, 40)), int(rng.integers(12, 17)))
            out_size = (int(rng.integers(1, 4)), int(rng.integers(1, 17)))
            layer_fn = lambda: layers.AdaptiveMaxPool2d(out_size, return_indices=True)
            fn = lambda x: F.adaptive_max_pool2d(x, out_size, return_indices=True)
            ref_fn = lambda x: RB.ref_adaptive_pool(x, out_size, "max")
            geo = out_size
        else:
            geo, in_size = narrow_geometry(rng)
            layer_fn = lambda: layers.MaxPool2d(**geo, return_indices=True)
            fn = lambda x: F.max_pool2d(x, **geo, return_indices=True)
            ref_fn = lambda x: R.max_pool(x, 2, **geo)
        x = random_input(rng, (2, c) + in_size, np.float32, "ties")
        if trial % 2:
            x = with_nans(rng, x, 0.05)

        def run():
            layer = layer_fn()
            layer.train()
            y, idx = layer(x)
            g = np.random.default_rng(trial).standard_normal(y.shape).astype(np.float32)
            return (y, idx, layer.backward(g), g) + fn(x)

        got, blocks = narrow_and_blocks(run, monkeypatch)
        msg = f"{geo} {in_size} c={c}"
        ref_y, ref_idx = ref_fn(x.astype(np.float64))
        np.testing.assert_array_equal(got[0], ref_y.astype(np.float32), err_msg=msg)
        np.testing.assert_array_equal(got[1], ref_idx, err_msg=msg)
        np.testing.assert_allclose(got[2], R.max_pool_backward(got[3], ref_idx, 2, x.shape),
                                   rtol=1e-6, atol=1e-6, err_msg=msg)
        for a, b in zip(got, blocks):
            assert_bits_equal(a, b, msg)


def test_one_deep_planes_with_depth_padding(monkeypatch):
    # (N, C, 1, H, W) under a 3-D window padded along depth: the input depth is the
    # window's tap 1, not 0, so the narrow kernels (whose tap numbers assume tap 0) must
    # leave these to the plane blocks; the taps and gradients stay the reference's.
    rng = rng_for("narrow-depth")
    x = random_input(rng, (2, 5, 1, 13, 14), np.float32, "ties")
    geo = dict(kernel_size=(3, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0))

    def run():
        layer = layers.MaxPool3d(**geo, return_indices=True)
        layer.train()
        y, idx = layer(x)
        g = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
        return (y, idx, layer.backward(g), g,
                F.avg_pool3d_backward(g, x.shape, **geo, count_include_pad=False))

    got, blocks = narrow_and_blocks(run, monkeypatch)
    ref_y, ref_idx = R.max_pool(x.astype(np.float64), 3, **geo)
    np.testing.assert_array_equal(got[0], ref_y.astype(np.float32))
    np.testing.assert_array_equal(got[1], ref_idx)
    np.testing.assert_allclose(got[2], R.max_pool_backward(got[3], ref_idx, 3, x.shape),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[4], R.avg_pool_backward(got[3], 3, x.shape, **geo,
                                                           count_include_pad=False),
                               rtol=3e-6, atol=3e-7)
    for a, b in zip(got, blocks):
        assert_bits_equal(a, b)


def nans_in_some_planes(rng, x, fraction=0.2):
    """x with NaNs (and mixed infinities) in about `fraction` of its planes only: the
    other planes take the max kernels' NaN-free path, these their exact NaN rules."""
    x = x.copy()
    planes = x.reshape(-1, x.shape[-2] * x.shape[-1])
    for p in np.flatnonzero(rng.random(planes.shape[0]) < fraction):
        at = rng.choice(planes.shape[1], 3, replace=False)
        planes[p, at] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), 3)
    return x


@pytest.mark.parametrize("levels", [(1, 2, 4), (2, 4), (1, 3), (4, 2, 1), (1, 2, 4, 8), (1, 5)])
def test_pyramid_levels_match_reference_and_plane_blocks(levels, monkeypatch):
    # Max levels that nest in a finer one pool its output (level 1 from 2 from 4); a
    # source level of at most 16 bins is read whole, as many planes per step as fit in
    # two vectors (cp_narrow_flat_max_planes_f32: 2 of 4x4, 3 of 3x3, 8 of 2x2), with
    # plane counts that leave a partial last step, ties of +-0, NaN payloads, infinities.
    rng = rng_for("narrow-pyramid", levels)
    payload = np.array([0x7FC01234, 0xFFC00001], np.uint32).view(np.float32)
    for trial in range(6):
        c = (1, 3, 70)[trial % 3]
        in_size = (int(rng.integers(8, 30)), int(rng.integers(12, 17)))
        x = random_input(rng, (2, c) + in_size, np.float32, "ties")
        x[x == 0] = rng.choice(np.array([0.0, -0.0], np.float32), int(np.sum(x == 0)))
        x = nans_in_some_planes(rng, x)
        x.reshape(-1)[rng.choice(x.size, 4, replace=False)] = rng.choice(payload, 4)
        for mode in ("max", "avg"):
            clean = x if mode == "max" else np.nan_to_num(x, posinf=3.0, neginf=-3.0)
            got, blocks = narrow_and_blocks(
                lambda: F.spatial_pyramid_pool(clean, levels, mode), monkeypatch)
            ref = RB.ref_spatial_pyramid_pool(clean.astype(np.float64), levels, mode)
            msg = f"{levels} {mode} {in_size} c={c}"
            np.testing.assert_allclose(got, ref, rtol=3e-6, atol=3e-7, err_msg=msg)
            assert_bits_equal(got, blocks, msg)


def test_max_of_planes_with_and_without_nans_keeps_the_plane_blocks_bits(monkeypatch):
    # Planes free of NaN run the max without NaN bookkeeping; a plane pair with a NaN, or
    # with both infinities (whose sum the test finds NaN), is redone with it. One-row
    # planes of at most 16 elements pool a whole plane per vector.
    rng = rng_for("narrow-nan-free")
    for in_size in ((13, 13), (30, 16), (1, 13), (1, 16), (2, 12)):
        x = random_input(rng, (3, 7) + in_size, np.float32, "ties")
        x[x == 0] = rng.choice(np.array([0.0, -0.0], np.float32), int(np.sum(x == 0)))
        x = nans_in_some_planes(rng, x, 0.3)

        def run():
            return (F.max_pool2d(x, (1, 3), (1, 2), (0, 1)), F.adaptive_max_pool2d(x, (1, 5)),
                    F.adaptive_max_pool2d(x, (min(in_size[0], 4), 4)),
                    F.max_pool2d(x, 3, 1, 1))

        got, blocks = narrow_and_blocks(run, monkeypatch)
        np.testing.assert_array_equal(got[1], RB.ref_adaptive_pool(x, (1, 5), "max")[0])
        np.testing.assert_array_equal(got[3], R.max_pool(x, 2, 3, 1, 1)[0])
        for a, b in zip(got, blocks):
            assert_bits_equal(a, b, str(in_size))
