"""The whole-plane stride-1 kernels (windows whose output has the input's size, pooled a
plane at a time as flat arrays; cpool._layout.runs_same_planes) against the NumPy
reference and against the row kernels, to the bit: border rows and columns, dilation,
asymmetric padding, NaN and -0, at every SIMD level and thread count."""
import itertools

import numpy as np
import pytest

import cpool
from cpool import _layout
from cpool import functional as F
from cpool import layers
from cpool._geometry import PoolGeometry
from cpool._kernels import pool as pool_kernels
from tests import reference as R
from tests.conftest import route_kernels
from tests.pool_cases import assert_identical_bits, rng_for, runs_at_every_simd_level

TOL = {np.dtype(np.float32): dict(rtol=3e-5, atol=3e-6),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13)}


def through(path, run, monkeypatch):
    with monkeypatch.context() as m:
        route_kernels(m, path)
        return run()


def same_geometry(rng, max_kernel=5):
    """Random stride-1 'same' geometry: kernel, dilation, and (begin, end) pads that add
    up to the effective kernel minus one, so the output has the input's size."""
    kernel = tuple(int(k) for k in rng.integers(1, max_kernel + 1, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    pads = []
    for k, d in zip(kernel, dilation):
        total = (k - 1) * d
        begin = int(rng.integers(0, total + 1))
        pads.append((begin, total - begin))
    return dict(kernel_size=kernel, stride=1, padding=tuple(pads), dilation=dilation)


def legal(geo, in_size):
    try:
        PoolGeometry.create(in_size, geo["kernel_size"], 1, geo["padding"], geo["dilation"])
    except ValueError:  # a pad over half the effective kernel
        return False
    return True


def sample(rng, dtype, in_size, lead=(2, 3)):
    x = rng.standard_normal(lead + in_size).astype(dtype)
    x[rng.random(x.shape) < 0.05] = -0.0
    return x


def bits(a):
    return a.dtype, a.shape, a.tobytes()


def test_routing():
    cases = {((28, 28), 3, 1, 1, False): True,      # the Inception 3x3/1 p1
             ((14, 14), 3, 1, "same", False): True,
             ((64, 64), 5, 1, 2, False): True,
             ((28, 28), 3, 2, 1, False): False,     # stride 2
             ((28, 28), 3, 1, 0, False): False,     # output smaller
             ((28, 28), 3, 1, 1, True): False,      # channels-last
             ((5, 5), 3, 1, 1, False): False,       # a plane block does better
             ((300, 300), 3, 1, 1, False): False}   # the row kernels do
    for (size, k, s, p, cl), want in cases.items():
        geom = PoolGeometry.create(size, k, s, p)
        assert _layout.runs_same_planes(geom, cl) is want, (size, k, s, p, cl)
    geom = PoolGeometry.create((8, 8, 8), 3, 1, 1)
    assert not _layout.runs_same_planes(geom, False)  # 3-D


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_forward_matches_reference_and_row_kernels(dtype, monkeypatch):
    rng = rng_for("same-planes-fwd", dtype)
    done = 0
    while done < 40:
        geo = same_geometry(rng)
        in_size = tuple(int(v) for v in rng.integers(1, 24, 2))
        if not legal(geo, in_size):
            continue
        done += 1
        x = sample(rng, dtype, in_size)
        x[0, 0].flat[rng.integers(x[0, 0].size)] = np.nan
        clean = np.nan_to_num(x)
        opts = dict(count_include_pad=bool(done % 2), divisor_override=None if done % 5 else 7)

        def run():
            return (F.max_pool2d(x, **geo), F.avg_pool2d(clean, **geo, **opts),
                    layers.AvgPool2d(**geo, **opts)(clean))

        same, rows = through("same", run, monkeypatch), through("rows", run, monkeypatch)
        ref_out, _ = R.max_pool(x, 2, **geo)
        np.testing.assert_array_equal(same[0], ref_out, err_msg=str(geo))
        np.testing.assert_allclose(same[1], R.avg_pool(clean, 2, **geo, **opts),
                                   **TOL[np.dtype(dtype)], err_msg=f"{geo} {opts}")
        for a, b in zip(same, rows):  # the row kernels' order of taps: the same bits
            assert bits(a) == bits(b), f"{geo} {opts}"


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_backward_matches_reference_and_row_kernels(dtype, monkeypatch):
    rng = rng_for("same-planes-bwd", dtype)
    done = 0
    while done < 40:
        geo = same_geometry(rng)
        in_size = tuple(int(v) for v in rng.integers(1, 24, 2))
        if not legal(geo, in_size):
            continue
        done += 1
        g = sample(rng, dtype, in_size)
        opts = dict(count_include_pad=bool(done % 2), divisor_override=None if done % 5 else 7)

        def run():
            layer = layers.AvgPool2d(**geo, **opts)
            layer(g)
            return (F.avg_pool2d_backward(g, g.shape, **geo, **opts), layer.backward(g))

        same, rows = through("same", run, monkeypatch), through("rows", run, monkeypatch)
        np.testing.assert_allclose(same[0], R.avg_pool_backward(g, 2, g.shape, **geo, **opts),
                                   **TOL[np.dtype(dtype)], err_msg=f"{geo} {opts}")
        for a, b in zip(same, rows):
            assert bits(a) == bits(b), f"{geo} {opts}"


def test_backward_finite_differences(monkeypatch):
    rng = rng_for("same-planes-fd")
    route_kernels(monkeypatch, "same")
    cpool.set_num_threads(1)
    try:
        for geo, size in ((dict(kernel_size=3, stride=1, padding=1), (5, 6)),
                          (dict(kernel_size=(2, 3), stride=1, padding=((1, 0), (0, 4)),
                                dilation=(1, 2)), (4, 7))):
            for opts in (dict(count_include_pad=False), dict(count_include_pad=True)):
                x = rng.standard_normal((1, 2) + size)
                w = rng.standard_normal(x.shape)
                got = F.avg_pool2d_backward(w, x.shape, **geo, **opts)
                expected = np.zeros_like(x)
                h = 1e-6
                for i in range(x.size):
                    up, down = x.copy(), x.copy()
                    up.flat[i] += h
                    down.flat[i] -= h
                    expected.flat[i] = np.sum(w * (F.avg_pool2d(up, **geo, **opts)
                                                   - F.avg_pool2d(down, **geo, **opts))) / (2 * h)
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    finally:
        cpool.set_num_threads(None)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_same_bits_at_every_simd_level_and_thread_count(dtype):
    rng = rng_for("same-planes-simd", dtype)
    x = sample(rng, dtype, (28, 28), lead=(3, 5))
    x[1, 2, 3, 4] = np.nan
    clean = np.nan_to_num(x)

    def run():
        ap = layers.AvgPool2d(3, 1, 1, count_include_pad=False)
        return (F.max_pool2d(x, 3, 1, 1), ap(clean), ap.backward(clean),
                F.avg_pool2d(clean, 5, 1, "same"))

    assert _layout.runs_same_planes(PoolGeometry.create((28, 28), 3, 1, 1), False, True)
    assert_identical_bits(runs_at_every_simd_level(run))


def test_kernels_refuse_other_geometries():
    x = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="stride-1 'same'"):
        pool_kernels.pool_forward_same(x, x.copy(), (3, 3), (1, 1), (3, 1), -1, None, 1)
    with pytest.raises(ValueError, match="stride-1 'same'"):
        pool_kernels.window_sum_backward_same(x, x.copy(), (40, 3), (1, 1), (1, 1), None, 1)
    with pytest.raises(ValueError, match="divisors"):
        pool_kernels.pool_forward_same(x, x.copy(), (3, 3), (1, 1), (1, 1), 0, None, 1)



def test_max_routing_follows_the_register_kernel():
    """The max's register kernel (float32, AVX-512, windows 3 or 5 columns wide around
    their centre) takes planes from 17x17 up; other maxima keep the flat pass's range."""
    level = pool_kernels.get_simd_level()
    try:
        for simd in range(pool_kernels.detected_simd_level() + 1):
            pool_kernels.set_simd_level(simd)
            registers = simd >= 2
            for size, k, p, dtype, want in (((17, 17), 3, 1, np.float32, registers),
                                            ((112, 112), (5, 3), (2, 1), np.float32, registers),
                                            ((17, 17), 3, 1, np.float64, False),
                                            ((20, 20), 5, 2, np.float32, True),  # SPPF
                                            ((17, 17), 7, 3, np.float32, False),
                                            ((28, 28), 7, 3, np.float32, True),
                                            ((16, 16), 3, 1, np.float32, False)):
                geom = PoolGeometry.create(size, k, 1, p)
                assert _layout.runs_same_planes(geom, False, True, dtype) is want, \
                    (simd, size, k, p, dtype)
                assert pool_kernels.same_max_in_registers(
                    np.dtype(dtype), tuple(geom.kernel), tuple(geom.dilation),
                    tuple(geom.pad_begin)) is (registers and dtype == np.float32
                                               and geom.kernel[1] in (3, 5))
    finally:
        pool_kernels.set_simd_level(level)


def test_max_in_registers_same_bits_as_flat_pass(monkeypatch):
    """The max's register kernel (AVX-512 level) against the flat pass (every other
    level), bit for bit, NaN payloads included: windows 3 and 5 columns wide, rows of 1
    to 40 columns (a partial vector, one, two, three), any rows of windows, and the
    NumPy reference."""
    route_kernels(monkeypatch, "same")
    rng = rng_for("same-planes-registers")
    cases = 0
    for (kw, w), (kh, dh, ph) in itertools.product(
            itertools.product((3, 5), (1, 2, 3, 4, 5, 15, 16, 17, 28, 31, 32, 33, 40)),
            ((1, 1, 0), (3, 1, 1), (2, 1, 0), (2, 1, 1), (5, 1, 2), (3, 2, 2), (3, 2, 1),
             (4, 1, 3))):
        h = int(rng.integers(1, 12))
        pw = kw // 2
        geo = dict(kernel_size=(kh, kw), stride=1, dilation=(dh, 1),
                   padding=((ph, (kh - 1) * dh - ph), (pw, pw)))
        if not legal(geo, (h, w)):
            continue
        x = sample(rng, np.float32, (h, w))
        pick = rng.random(x.shape)
        x[pick < 0.03] = np.nan
        x[(pick >= 0.03) & (pick < 0.05)] = np.inf
        x[(pick >= 0.05) & (pick < 0.07)] = -np.inf
        # a NaN of another payload: cp_max keeps a first NaN's, all ones for a later
        x.view(np.uint32)[(pick >= 0.07) & (pick < 0.09)] = 0x7FC00123
        results = runs_at_every_simd_level(lambda: (F.max_pool2d(x, **geo),),
                                           threads=(1, 2))
        assert pool_kernels.same_max_in_registers(np.dtype(np.float32), (kh, kw), (dh, 1),
                                                  (ph, pw)) is (
            pool_kernels.get_simd_level() >= 2)
        assert_identical_bits(results)
        np.testing.assert_array_equal(results[0][0], R.max_pool(x, 2, **geo)[0],
                                      err_msg=f"{geo} {w}")
        cases += 1
    assert cases > 150
