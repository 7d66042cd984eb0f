"""The plane-block kernels (small channels-first planes, pooled a block of channels at a
time in transposed scratch; cpool._layout.runs_plane_blocks) against the NumPy reference
and against the row kernels: the same values, indices and gradients for channel counts
that fill no transpose tile, whole tiles, whole blocks and ragged blocks, at every SIMD
level and thread count."""
import numpy as np
import pytest

from cpool import _layout
from cpool._geometry import PoolGeometry
from cpool import functional as F
from cpool import layers
from tests import reference as R
from tests.conftest import route_kernels
from tests import reference_binned as RB
from tests.pool_cases import (assert_identical_bits, random_geometry, random_input, rng_for,
                              runs_at_every_simd_level, with_nans)

# Channels: fewer than a tile, whole tiles, one block, a block and a ragged rest.
CHANNELS = (1, 5, 8, 32, 33, 70)
TOL = {np.dtype(np.float32): dict(rtol=3e-5, atol=3e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def through(path, run, monkeypatch):
    """run() with channels-first input routed to the plane-block or the row kernels."""
    with monkeypatch.context() as m:
        route_kernels(m, path)
        return run()


def bits_equal(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def test_small_planes_take_the_plane_blocks():
    assert _layout.runs_plane_blocks((13, 13), False)
    assert _layout.runs_plane_blocks((8, 8, 8), False)
    assert not _layout.runs_plane_blocks((13, 13), True)
    assert not _layout.runs_plane_blocks((56, 56), False)
    assert not _layout.runs_plane_blocks((4000,), False)


def test_max_with_argmax_takes_the_plane_blocks_where_the_rows_are_scalar():
    """The row kernels vectorize the argmax's column step for windows 2 or 3 wide with
    stride 1 or 2 along W only; other windows on larger 2-D planes take the plane
    blocks, up to TAPS_PLANE_MAX_PIXELS."""
    for size, k, s, p, want in (((80, 80), 5, 1, 2, True),     # YOLO's SPPF
                                ((80, 80), 4, 1, 0, True),
                                ((81, 81), 3, 3, 0, True),
                                ((80, 80), (3, 5), 1, (1, 2), True),
                                ((256, 256), 5, 1, 2, True),
                                ((257, 256), 5, 1, 2, False),   # over the cap
                                ((80, 80), 3, 1, 1, False),     # the rows vectorize these
                                ((112, 112), 3, 2, 1, False),
                                ((112, 112), 2, 2, 0, False),
                                ((80, 80), (5, 3), 1, (2, 1), False),
                                ((13, 13), 3, 1, 1, True)):     # small: plane blocks anyway
        geom = PoolGeometry.create(size, k, s, p)
        assert _layout.runs_taps_plane_blocks(geom, False) is want, (size, k, s, p)
        assert not _layout.runs_taps_plane_blocks(geom, True)
    assert not _layout.runs_taps_plane_blocks(PoolGeometry.create((40, 40, 40), 5, 1, 2), False)


@pytest.mark.parametrize("k, s, p", [(5, 1, 2), (4, 1, 1), (3, 3, 1)])
def test_max_with_argmax_on_larger_planes_matches_reference_and_row_kernels(k, s, p,
                                                                            monkeypatch):
    """The windows the row kernels run scalar, on planes past the plane blocks' usual
    size: forward (values, indices) against the reference and the row kernels to the bit,
    and the layer's backward (whose sums add in another order) against both."""
    rng = rng_for("taps-plane-blocks", k, s)
    x = with_nans(rng, random_input(rng, (2, 3, 37, 45), np.float32, "ties"), 0.01)
    geom = PoolGeometry.create((37, 45), k, s, p)
    assert _layout.runs_taps_plane_blocks(geom, False)
    assert not _layout.runs_plane_blocks((37, 45), False)

    def run():
        layer = layers.MaxPool2d(k, s, p)
        y = layer(x)
        g = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
        return (*F.max_pool2d(x, k, s, p, return_indices=True), y, layer.backward(g), g)

    with monkeypatch.context() as m:
        m.setattr(_layout, "TAPS_PLANE_MAX_PIXELS", 0)
        rows = run()
    planes = run()
    ref_out, ref_idx = R.max_pool(x, 2, kernel_size=k, stride=s, padding=p)
    np.testing.assert_array_equal(planes[0], ref_out)
    np.testing.assert_array_equal(planes[1], ref_idx)
    np.testing.assert_allclose(planes[3], R.max_pool_backward(planes[4], ref_idx, 2, x.shape),
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(planes[:3], rows[:3]):  # NaN payloads aside (max_impl.h)
        np.testing.assert_array_equal(a, b)
    bits_equal(planes[1], rows[1])
    np.testing.assert_allclose(planes[3], rows[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_sliding_windows_match_reference_and_row_kernels(nd, dtype, monkeypatch):
    rng = rng_for("plane-blocks", nd, dtype)
    for trial, c in enumerate(CHANNELS):
        geo, in_size = random_geometry(rng, nd)
        x = with_nans(rng, random_input(rng, (2, c) + in_size, dtype, "ties"), 0.02)
        clean = np.nan_to_num(x)
        opts = dict(count_include_pad=bool(trial % 2),
                    divisor_override=None if trial % 3 else 3)
        p = (1.0, 2.0, 3.0)[trial % 3]

        def run():
            out, idx = F.__dict__[f"max_pool{nd}d"](x, **geo, return_indices=True)
            return (out, idx, F.__dict__[f"max_pool{nd}d"](x, **geo),
                    F.__dict__[f"avg_pool{nd}d"](clean, **geo, **opts),
                    F.__dict__[f"lp_pool{nd}d"](clean, p, **geo))

        planes, rows = through("planes", run, monkeypatch), through("rows", run, monkeypatch)
        ref_out, ref_idx = R.max_pool(x, nd, **geo)
        np.testing.assert_array_equal(planes[0], ref_out, err_msg=str(geo))
        np.testing.assert_array_equal(planes[1], ref_idx, err_msg=str(geo))
        np.testing.assert_allclose(planes[3], R.avg_pool(clean, nd, **geo, **opts),
                                   **TOL[np.dtype(dtype)])
        np.testing.assert_allclose(planes[4], R.lp_pool(clean, nd, p, **geo),
                                   **TOL[np.dtype(dtype)])
        # The same maxima (NaN payloads aside: max_impl.h), indices, and averages to the
        # bit: they add in the row kernels' order. Lp's powers may round differently
        # (vectorized over channels, not along W).
        for a, b in zip(planes[:3], rows[:3]):
            np.testing.assert_array_equal(a, b)
        bits_equal(planes[1], rows[1])
        bits_equal(planes[3], rows[3])
        np.testing.assert_allclose(planes[4], rows[4], **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_layer_backward_matches_reference_and_row_kernels(nd, monkeypatch):
    rng = rng_for("plane-blocks-backward", nd)
    for trial, c in enumerate(CHANNELS):
        geo, in_size = random_geometry(rng, nd, dilation=False, padding_only_windows=False)
        x = random_input(rng, (2, c) + in_size, np.float64, "ties" if trial % 2 else "normal")
        pool_geo = {k: v for k, v in geo.items() if k != "dilation"}

        def run():
            results = []
            for layer in (getattr(layers, f"MaxPool{nd}d")(**geo, return_indices=True),
                          getattr(layers, f"AvgPool{nd}d")(**pool_geo)):
                y = layer(x)
                y = y[0] if isinstance(y, tuple) else y
                g = np.random.default_rng(trial).standard_normal(y.shape)
                results += [layer.backward(g), g]
            return results

        planes, rows = through("planes", run, monkeypatch), through("rows", run, monkeypatch)
        ref_max = R.max_pool_backward(planes[1], R.max_pool(x, nd, **geo)[1], nd, x.shape)
        np.testing.assert_allclose(planes[0], ref_max, rtol=1e-12, atol=1e-13, err_msg=str(geo))
        np.testing.assert_allclose(planes[2], R.avg_pool_backward(planes[3], nd, x.shape,
                                                                  **pool_geo),
                                   rtol=1e-12, atol=1e-13, err_msg=str(geo))
        for a, b in zip(planes, rows):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_adaptive_and_pyramid_match_reference_and_row_kernels(kind, monkeypatch):
    rng = rng_for("plane-blocks-adaptive", kind)
    for c in CHANNELS:
        x = random_input(rng, (2, c, 13, 11), np.float32, "ties")
        out_size = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))

        def run():
            layer = getattr(layers, f"Adaptive{kind.capitalize()}Pool2d")(out_size)
            y = layer(x)
            g = np.random.default_rng(c).standard_normal(y.shape).astype(np.float32)
            spp = F.spatial_pyramid_pool(x, (1, 2, 4), mode=kind)
            g_spp = np.random.default_rng(c + 1).standard_normal(spp.shape).astype(np.float32)
            return [y, layer.backward(g), g, spp,
                    F.spatial_pyramid_pool_backward(g_spp, x, (1, 2, 4), kind), g_spp]

        planes, rows = through("planes", run, monkeypatch), through("rows", run, monkeypatch)
        ref = RB.ref_adaptive_pool(x.astype(np.float64), out_size, kind)[0]
        np.testing.assert_allclose(planes[0], ref, rtol=3e-6, atol=3e-7)
        bits_equal(planes[0], rows[0])
        np.testing.assert_allclose(planes[1], rows[1], rtol=3e-6, atol=3e-7)
        bits_equal(planes[3], rows[3])
        # the pyramid's gradient: all levels from one pass (planes) or level by level
        ref_spp = RB.ref_spatial_pyramid_pool_backward(planes[5].astype(np.float64),
                                                       x.astype(np.float64), (1, 2, 4), kind)
        np.testing.assert_allclose(planes[4], ref_spp, rtol=3e-6, atol=3e-6)
        np.testing.assert_allclose(planes[4], rows[4], rtol=3e-6, atol=3e-7)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_backward_sends_each_window_to_its_argmax(nd, monkeypatch):
    # The plane-block max backward adds each window's gradient at the input its tap names
    # (cpool._layout.tap_offsets): dilated windows, padding, windows of padding only (their
    # gradient goes nowhere), NaN and ties (the reference's argmax).
    rng = rng_for("plane-blocks-scatter", nd)
    for trial, c in enumerate(CHANNELS):
        geo, in_size = random_geometry(rng, nd)
        x = random_input(rng, (2, c) + in_size, np.float64, "ties")
        if trial % 2:
            x = with_nans(rng, x)

        def run():
            layer = getattr(layers, f"MaxPool{nd}d")(**geo)
            y = layer(x)
            g = np.random.default_rng(trial).standard_normal(y.shape)
            return [layer.backward(g), g]

        planes, rows = through("planes", run, monkeypatch), through("rows", run, monkeypatch)
        ref = R.max_pool_backward(planes[1], R.max_pool(x, nd, **geo)[1], nd, x.shape)
        np.testing.assert_allclose(planes[0], ref, rtol=1e-12, atol=1e-13, err_msg=str(geo))
        np.testing.assert_allclose(planes[0], rows[0], rtol=1e-12, atol=1e-13)


def test_tap_offsets_of_a_window_of_padding_only():
    # Input rows 0..1, kernel 2 dilated by 3, padding 2: window 1's taps are rows -1 and 2.
    geom = PoolGeometry.create((2, 13), (2, 1), 1, (2, 0), (3, 1))
    table = _layout.tap_offsets(geom)
    assert table.dtype == np.int32 and not table.flags.writeable
    assert table.shape == (3 * 13, 2)
    np.testing.assert_array_equal(table[13:26], -1)  # output row 1
    np.testing.assert_array_equal(table[:13, 0], -1)  # output row 0: rows -2 and 1
    np.testing.assert_array_equal(table[:13, 1], 13 + np.arange(13))
    # and the layer's gradient of that window goes nowhere
    x = random_input(rng_for("scatter-padding"), (2, 3, 2, 13), np.float64, "ties")
    layer = layers.MaxPool2d((2, 1), 1, (2, 0), (3, 1))
    g = np.random.default_rng(0).standard_normal(layer(x).shape)
    np.testing.assert_allclose(layer.backward(g), R.max_pool_backward(
        g, R.max_pool(x, 2, (2, 1), 1, (2, 0), (3, 1))[1], 2, x.shape), rtol=1e-12)


def test_max_backward_ignores_taps_outside_the_window():
    # Taps come from the forward; a corrupt one must not write outside the plane.
    from cpool._kernels import channels_last as cl
    geom = PoolGeometry.create((4, 4), 2)
    offsets = _layout.tap_offsets(geom)
    taps = np.full((1, 3 * 4), 255, dtype=np.uint8)
    taps[0, 1 * 4 + 1] = 3  # channel 1, window 1 (channel-first); tap 3: input (1, 3)
    grad_out = np.arange(1, 13, dtype=np.float32).reshape(1, 12)
    grad_in = np.full((1, 3, 1, 4, 4), np.nan, dtype=np.float32)
    cl.max_backward_taps_planes(grad_out, taps, grad_in, [offsets], 2)
    want = np.zeros((3, 4, 4), dtype=np.float32)
    want[1, 1, 3] = grad_out[0, 1 * 4 + 1]
    np.testing.assert_array_equal(grad_in[0, :, 0], want)


def test_adaptive_max_indices_from_compact_taps(monkeypatch):
    # layers keep compact taps; indices are made from them
    x = random_input(rng_for("blocked-taps"), (3, 70, 9, 10), np.float32, "ties")
    layer = layers.AdaptiveMaxPool2d((4, 3), return_indices=True)
    out, idx = layer(x)
    ref_out, ref_idx = F.adaptive_max_pool2d(x, (4, 3), return_indices=True)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(idx, ref_idx)
    rows = through("rows", lambda: F.adaptive_max_pool2d(x, (4, 3), return_indices=True),
                   monkeypatch)
    np.testing.assert_array_equal(idx, rows[1])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64])
def test_integer_max_matches_row_kernels(dtype, monkeypatch):
    info = np.iinfo(dtype)
    x = np.random.default_rng(5).integers(info.min, info.max, (2, 37, 11, 9), dtype=dtype,
                                          endpoint=True)

    def run():
        return (F.max_pool2d(x, 3, 2, 1), F.adaptive_max_pool2d(x, (4, 5)))

    for a, b in zip(through("planes", run, monkeypatch), through("rows", run, monkeypatch)):
        bits_equal(a, b)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_same_bits_at_every_simd_level_and_thread_count(dtype):
    rng = rng_for("plane-blocks-simd", dtype)
    x = with_nans(rng, random_input(rng, (3, 70, 13, 11), dtype, "ties"), 0.02)
    clean = np.nan_to_num(x)
    g = rng.standard_normal((3, 70, 6, 5)).astype(dtype)

    def run():
        out, idx = F.max_pool2d(x, 3, 2, return_indices=True)
        mp = layers.MaxPool2d(3, 2)
        mp(clean)
        ap = layers.AvgPool2d(3, 2)
        ap(clean)
        return (out, idx, F.avg_pool2d(clean, 3, 2), F.lp_pool2d(clean, 2.0, 3, 2),
                F.adaptive_avg_pool2d(clean, (4, 3)), mp.backward(g), ap.backward(g))

    assert _layout.runs_plane_blocks((13, 11), False)
    assert_identical_bits(runs_at_every_simd_level(run))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_kernels_read_images_a_stride_apart_and_refuse_other_layouts(dtype):
    """channels_last.forward_planes and forward read input images that lie apart in a
    larger buffer (a pyramid pools its coarser max levels from its finest, in place);
    any other non-contiguous input is refused, not misread."""
    from cpool._binned import BinGrid, _divisors
    from cpool._kernels import channels_last as _cl
    from cpool._kernels.pool import PoolOp
    rng = rng_for("strided images", np.dtype(dtype).name)
    grid = BinGrid.adaptive((4, 13), (2, 3))
    wins, _ = _layout.window_tables(grid)
    spec = (*wins, int(PoolOp.OP_MAX), 2.0, *_divisors(grid, "max"))
    buf = with_nans(rng, rng.standard_normal((3, 2 * 52 + 7)), 0.05).astype(dtype)
    x = buf[:, 5:5 + 2 * 52].reshape(3, 2, 1, 4, 13)  # (B, C, D, H, W), images 111 apart
    want = RB.ref_adaptive_pool(x.reshape(3, 2, 4, 13).astype(np.float64), (2, 3), "max")[0]
    gap = x[0].nbytes + 6  # the same images 6 bytes further apart: not element-aligned
    raw = np.zeros(1 + 3 * gap, np.uint8)
    for b in range(3):
        raw[1 + b * gap:1 + b * gap + x[0].nbytes] = np.frombuffer(x[b].tobytes(), np.uint8)
    odd = np.ndarray(x.shape, dtype, raw, 1, (gap,) + x.strides[1:])
    for xin in (x, odd):
        for narrow in (False, True):
            out = np.empty((3, 2, 1, 2, 3), dtype)
            _cl.forward_planes(xin, [(out, *wins, *_divisors(grid, "max"))],
                               int(PoolOp.OP_MAX), 2.0, 2, narrow)
            np.testing.assert_array_equal(out.reshape(want.shape), want)
    xl = buf[:, 5:5 + 2 * 52].reshape(3, 1, 4, 13, 2)  # (B, D, H, W, C) channels-last
    want = RB.ref_adaptive_pool(np.moveaxis(xl[:, 0], -1, 1).astype(np.float64), (2, 3),
                                "max")[0]
    out = np.empty((3, 1, 2, 3, 2), dtype)
    _cl.forward(xl, out, *spec, True, 2)
    np.testing.assert_array_equal(np.moveaxis(out[:, 0], -1, 1), want)
    with pytest.raises(ValueError, match="x: each image must be C-contiguous"):
        _cl.forward_planes(x.transpose(0, 1, 2, 4, 3), [(out.reshape(3, 2, 1, 3, 2), *wins,
                           *_divisors(grid, "max"))], int(PoolOp.OP_MAX), 2.0, 1)
    with pytest.raises(ValueError, match="x: each image must be C-contiguous"):
        _cl.forward(xl[:, :, :, ::-1], out, *spec, True, 1)
