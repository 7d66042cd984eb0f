"""float16 input: float16 results, computed in float32 and rounded once, in batch chunks
(cpool._float16) without a float32 copy of the whole input."""
import tracemalloc

import numpy as np
import pytest

import cpool._float16
import cpool.functional as F
from tests import reference as R
from tests import reference_binned as RB
from tests.pool_cases import rng_for

CALLS = {
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True), "max"),
    "avg_pool1d": (lambda x: F.avg_pool1d(x[..., 0], 3, 1, 1, count_include_pad=False), "avg"),
    "lp_pool3d": (lambda x: F.lp_pool3d(x[:, :, None], 2.0, (1, 2, 2)), "lp"),
    "max_pool2d_cl": (lambda x: F.max_pool2d(x, 2, channels_last=True), "max"),
    "global_avg_pool": (lambda x: F.global_avg_pool(x), "avg"),
    "global_lp_pool": (lambda x: F.global_lp_pool(x, 3), "lp"),
    "adaptive_max_pool2d": (lambda x: F.adaptive_max_pool2d(x, (3, 4), return_indices=True),
                            "max"),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, 5), "avg"),
    "bin_pool": (lambda x: F.bin_pool(x, [[(0, 3), (2, 9)], [(1, 4), (0, 10)]], "avg"), "avg"),
    "spatial_pyramid_pool": (lambda x: F.spatial_pyramid_pool(x, (1, 2)), "max"),
    "sequence_pool": (lambda x: F.sequence_pool(x[:, :, 0], lengths=np.arange(
        x.shape[0]) % 4 + 1, mode="mean"), "avg"),
}


def _input(key):
    rng = rng_for("f16", key)
    return (rng.standard_normal((23, 4, 9, 10)) * 3).astype(np.float16)


def _results(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", list(CALLS))
def test_float16_in_chunks_equals_float32_rounded_once(name, monkeypatch):
    call, kind = CALLS[name]
    x = _input(name)
    whole = _results(call(x.astype(np.float32)))
    monkeypatch.setattr(cpool._float16, "CHUNK_BYTES", 3 * x[:1].size * 4)  # 8 chunks
    chunked = _results(call(x))
    for got, want in zip(chunked, whole):
        if want.dtype == np.float32:
            assert got.dtype == np.float16
            np.testing.assert_array_equal(got, want.astype(np.float16))
        else:  # indices
            np.testing.assert_array_equal(got, want)


def test_float16_against_the_reference():
    x = _input("reference")
    out = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    ref = R.avg_pool(x.astype(np.float64), 2, 3, 2, 1, count_include_pad=False)
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=2e-3, atol=2e-3)
    out = F.adaptive_max_pool2d(x, 3)
    np.testing.assert_array_equal(out, RB.ref_adaptive_pool(x.astype(np.float64), (3, 3),
                                                            "max")[0])


@pytest.mark.parametrize("kind", ["max", "avg", "lp"])
def test_float16_backward_in_chunks(kind, monkeypatch):
    x = _input(kind)
    x32 = x.astype(np.float32)
    if kind == "max":
        y, idx = F.max_pool2d(x, 2, return_indices=True)
        run = lambda g, xx, yy: F.max_pool2d_backward(g, idx, xx.shape)  # noqa: E731
    elif kind == "avg":
        y = F.avg_pool2d(x, 3, 1, 1)
        run = lambda g, xx, yy: F.avg_pool2d_backward(g, xx.shape, 3, 1, 1)  # noqa: E731
    else:
        y = F.lp_pool2d(x, 2.0, 2)
        run = lambda g, xx, yy: F.lp_pool2d_backward(g, xx, yy, 2.0, 2)  # noqa: E731
    g = np.ones_like(y)
    want = run(g.astype(np.float32), x32, y.astype(np.float32)).astype(np.float16)
    monkeypatch.setattr(cpool._float16, "CHUNK_BYTES", 5 * x[:1].size * 4)
    got = run(g, x, y)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, want)
    got = F.global_avg_pool_backward(np.ones(x.shape[:2], np.float16), x.shape)
    assert got.dtype == np.float16 and got.shape == x.shape


def test_float16_holds_no_float32_copy_of_the_input():
    x = np.ones((64, 64, 32, 32), np.float16)  # 8 MiB; a float32 copy would be 16 MiB
    F.max_pool2d(x[:2], 2)  # warm-up
    tracemalloc.start()
    try:
        out = F.avg_pool2d(x, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float16
    assert peak < out.nbytes + 2 * cpool._float16.CHUNK_BYTES, peak
