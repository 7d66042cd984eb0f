"""Fractional max pooling (functional) against the NumPy reference and PyTorch (same
_random_samples); gradients by finite differences; seeds; threads; errors."""
import numpy as np
import pytest

import cpool
from cpool import _fractional
from cpool import functional as F
from tests import reference_unpool as RU
from tests.pool_cases import rng_for, with_nans
from tests.test_pool import bits, numeric_grad

DTYPES = (np.float32, np.float64)


def frac(nd, backward=False):
    return getattr(F, f"fractional_max_pool{nd}d" + ("_backward" if backward else ""))


def random_case(rng, nd, dtype, max_in=9):
    """x, kernel, output size and samples for one random fractional pooling."""
    kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
    in_size = tuple(int(rng.integers(k, max_in + 1)) for k in kernel)
    out_size = tuple(int(rng.integers(1, L - k + 2)) for L, k in zip(in_size, kernel))
    lead = (int(rng.integers(1, 3)), int(rng.integers(1, 4)))
    x = rng.standard_normal(lead + in_size).astype(dtype)
    u = rng.random(lead + (nd,)).astype(dtype)
    return x, kernel, out_size, u


# --------------------------------------------------------------------------------------
# Intervals and forward against the reference.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_interval_starts_match_the_scalar_formula(dtype):
    rng = rng_for("frac-intervals", dtype)
    for _ in range(200):
        k = int(rng.integers(1, 6))
        L = int(rng.integers(k, 200))
        O = int(rng.integers(1, L - k + 2))
        u = rng.random(5).astype(dtype)
        u[0] = dtype(0.0)
        u[1] = np.nextafter(dtype(1.0), dtype(0.0))  # the largest sample below 1
        samples = np.stack([u, u], axis=1)  # 2-D: column 1 drives axis 0
        got = _fractional.interval_starts(samples, (L, 3), (O, 1), (k, 1))[0]
        for p in range(5):
            expected = RU.fractional_starts(u[p], L, O, k)
            np.testing.assert_array_equal(got[p], expected, err_msg=f"{L} {O} {k} {u[p]!r}")
            assert got[p][0] >= 0 and got[p][-1] == L - k and np.all(np.diff(got[p]) >= 0)


def discriminating_cases(count=2):
    """(L, O, k, u) whose window starts differ when the formula runs in float64 instead of
    float32 (rare: found by a vectorized search, then confirmed with the reference)."""
    rng = rng_for("frac-discriminating")
    cases = []
    for L in range(20, 200, 7):
        for O in (3, 5, 7, 11, 13, L // 2):
            u = rng.random(2000, dtype=np.float32)
            t32, t64 = np.float32, np.float64
            i = np.arange(O - 1)
            a32, a64 = t32(L - 2) / t32(O - 1), t64(L - 2) / t64(O - 1)
            s32 = ((i.astype(t32) + u[:, None]) * a32).astype(int) - (u * a32).astype(int)[:, None]
            s64 = ((i + u[:, None].astype(t64)) * a64).astype(int) - (u * a64).astype(int)[:, None]
            for j in np.nonzero((s32 != s64).any(axis=1))[0][:1]:
                if RU.fractional_starts(u[j], L, O, 2) != RU.fractional_starts(t64(u[j]), L, O, 2):
                    cases.append((L, O, 2, u[j]))
            if len(cases) == count:
                return cases
    return cases


def test_float32_windows_use_float32_arithmetic():
    """On inputs where float32 and float64 arithmetic pick different windows, cpool's
    float32 pooling picks the float32 ones (ATen computes in the input's dtype)."""
    try:
        import torch
    except ImportError:
        torch = None
    cases = discriminating_cases()
    assert len(cases) == 2
    for L, O, k, u in cases:
        x = np.repeat(np.arange(L, dtype=np.float32)[:, None], 2, axis=1)[None, None]
        samples = np.array([[[0.5, u]]], dtype=np.float32)  # column 1 drives H
        _, idx = F.fractional_max_pool2d(x, (k, 1), output_size=(O, 2), return_indices=True,
                                         random_samples=samples)
        rows = idx[0, 0, :, 0] // 2  # x grows along H: the max is a window's last row
        np.testing.assert_array_equal(rows - (k - 1), RU.fractional_starts(u, L, O, k))
        assert list(rows - (k - 1)) != RU.fractional_starts(np.float64(u), L, O, k)
        if torch is not None:
            _, tidx = torch.nn.functional.fractional_max_pool2d(
                torch.from_numpy(x), (k, 1), output_size=(O, 2), return_indices=True,
                _random_samples=torch.from_numpy(samples))
            np.testing.assert_array_equal(idx, tidx.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [2, 3])
def test_forward_matches_reference(nd, dtype):
    rng = rng_for("frac-ref", nd, dtype)
    for trial in range(6):
        x, kernel, out_size, u = random_case(rng, nd, dtype, max_in=9 if nd == 2 else 6)
        if trial % 3 == 0:
            x = with_nans(rng, x, 0.1)
        out, idx = frac(nd)(x, kernel, output_size=out_size, return_indices=True,
                            random_samples=u)
        ref_out, ref_idx = RU.fractional_max_pool(x, kernel, out_size, u)
        assert out.dtype == dtype and idx.dtype == np.int64
        np.testing.assert_array_equal(out, ref_out)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(
            frac(nd)(x, kernel, output_size=out_size, random_samples=u), ref_out)


def test_output_ratio_unbatched_and_unbatched_samples():
    rng = rng_for("frac-ratio")
    x = rng.standard_normal((3, 11, 10))
    u = rng.random((1, 3, 2))
    out = F.fractional_max_pool2d(x, 2, output_ratio=(0.5, 0.75), random_samples=u)
    assert out.shape == (3, 5, 7)  # int(11 * 0.5), int(10 * 0.75)
    expected, _ = RU.fractional_max_pool(x[np.newaxis], (2, 2), (5, 7), u)
    np.testing.assert_array_equal(out, expected[0])
    np.testing.assert_array_equal(
        F.fractional_max_pool2d(x, 2, output_ratio=(0.5, 0.75), random_samples=u[0]), out)
    np.testing.assert_array_equal(
        F.fractional_max_pool2d(x, 2, output_ratio=0.5, random_samples=u),
        F.fractional_max_pool2d(x, 2, output_size=(5, 5), random_samples=u))


def test_seed_draws_the_samples_reproducibly():
    rng = rng_for("frac-seed")
    for dtype in DTYPES:
        x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
        a, ia = F.fractional_max_pool2d(x, 2, output_size=4, seed=5, return_indices=True)
        u = np.random.default_rng(5).random((2, 3, 2), dtype=dtype)
        b, ib = F.fractional_max_pool2d(x, 2, output_size=4, random_samples=u,
                                        return_indices=True)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ia, ib)
        gen_a = np.random.default_rng(11)
        gen_b = np.random.default_rng(11)
        np.testing.assert_array_equal(
            F.fractional_max_pool3d(x[..., None], (2, 2, 1), output_size=(4, 3, 1), seed=gen_a),
            F.fractional_max_pool3d(x[..., None], (2, 2, 1), output_size=(4, 3, 1),
                                    seed=gen_b))


# --------------------------------------------------------------------------------------
# Against PyTorch with identical _random_samples.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [2, 3])
def test_matches_torch(nd, dtype):
    torch = pytest.importorskip("torch")
    tfn = getattr(torch.nn.functional, f"fractional_max_pool{nd}d")
    rng = rng_for("frac-torch", nd, dtype)
    compared = 0
    for trial in range(8):
        x, kernel, out_size, u = random_case(rng, nd, dtype, max_in=40 if nd == 2 else 12)
        if nd == 3:  # PyTorch's 3-D check is strict: out + k - 1 < L
            out_size = tuple(min(o, L - k) or 1 for o, L, k in zip(out_size, x.shape[2:], kernel))
            if any(o + k - 1 >= L for o, L, k in zip(out_size, x.shape[2:], kernel)):
                continue
        if trial == 0:
            x = with_nans(rng, x, 0.1)
        out, idx = frac(nd)(x, kernel, output_size=out_size, return_indices=True,
                            random_samples=u)
        tx = torch.from_numpy(x).requires_grad_()
        tout, tidx = tfn(tx, kernel, output_size=out_size, return_indices=True,
                         _random_samples=torch.from_numpy(u))
        np.testing.assert_array_equal(out, tout.detach().numpy())
        np.testing.assert_array_equal(idx, tidx.numpy())
        compared += 1
        if trial == 0:
            continue  # NaN gradients are not compared
        g = rng.standard_normal(out.shape).astype(dtype)
        tout.backward(torch.from_numpy(g))
        got = frac(nd, True)(g, idx, x.shape)
        np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-6, atol=1e-6)
    assert compared >= 5


# --------------------------------------------------------------------------------------
# Backward.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [2, 3])
def test_backward_matches_reference_and_finite_differences(nd):
    rng = rng_for("frac-fd", nd)
    for _ in range(3):
        x, kernel, out_size, u = random_case(rng, nd, np.float64, max_in=6 if nd == 2 else 4)
        x = rng.permutation(x.size).reshape(x.shape) / x.size * 4 - 2  # distinct: one max
        y, idx = frac(nd)(x, kernel, output_size=out_size, return_indices=True,
                          random_samples=u)
        w = rng.standard_normal(y.shape)
        got = frac(nd, True)(w, idx, x.shape)
        np.testing.assert_array_equal(got, RU.scatter_add(w, idx, x.shape))
        expected = numeric_grad(
            lambda v: frac(nd)(v, kernel, output_size=out_size, random_samples=u), x, w)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# Threads, inputs, errors.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_one_and_two_threads_are_bitwise_identical(dtype):
    rng = rng_for("frac-threads", dtype)
    x = with_nans(rng, rng.integers(-2, 3, (3, 5, 17, 15)).astype(dtype), 0.02)  # ties, NaN
    u = rng.random((3, 5, 2)).astype(dtype)
    g = rng.standard_normal((3, 5, 7, 6)).astype(dtype)
    results = []
    try:
        for n in (1, 2):
            cpool.set_num_threads(n)
            out, idx = F.fractional_max_pool2d(x, 3, output_size=(7, 6), random_samples=u,
                                               return_indices=True)
            results.append([out, idx, F.fractional_max_pool2d_backward(g, idx, x.shape),
                            F.fractional_max_pool3d(x[None], (1, 3, 2), output_size=(3, 7, 6),
                                                    random_samples=rng_for("u").random((1, 3, 3)))])
    finally:
        cpool.set_num_threads(None)
    for a, b in zip(*results):
        assert np.array_equal(bits(a), bits(b))


def test_inputs_are_not_modified():
    rng = rng_for("frac-inputs")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    u = rng.random((2, 3, 2))  # float64 samples are rounded to float32, not modified
    copies = x.copy(), u.copy()
    out, idx = F.fractional_max_pool2d(x, 2, output_size=5, random_samples=u,
                                       return_indices=True)
    g = np.ones_like(out)
    F.fractional_max_pool2d_backward(g, idx, x.shape)
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(u, copies[1])
    np.testing.assert_array_equal(g, np.ones_like(out))
    assert not np.shares_memory(out, x)


def test_errors_name_the_argument():
    x = np.zeros((1, 2, 6, 6))
    u = np.full((1, 2, 2), 0.5)
    with pytest.raises(ValueError, match="output_size and output_ratio"):
        F.fractional_max_pool2d(x, 2)
    with pytest.raises(ValueError, match="output_size and output_ratio"):
        F.fractional_max_pool2d(x, 2, output_size=3, output_ratio=0.5)
    with pytest.raises(ValueError, match="output_ratio"):
        F.fractional_max_pool2d(x, 2, output_ratio=1.0)
    with pytest.raises(ValueError, match="output_ratio"):
        F.fractional_max_pool2d(x, 2, output_ratio=(0.5, 0.5, 0.5))
    with pytest.raises(TypeError, match="output_ratio"):
        F.fractional_max_pool2d(x, 2, output_ratio="half")
    with pytest.raises(ValueError, match="output_ratio"):
        F.fractional_max_pool2d(x, 2, output_ratio=0.1)  # int(6 * 0.1) = 0
    with pytest.raises(ValueError, match="output_size"):
        F.fractional_max_pool2d(x, 2, output_size=0)
    with pytest.raises(ValueError, match="output_size"):
        F.fractional_max_pool2d(x, 3, output_size=5)  # 5 + 3 - 1 > 6
    with pytest.raises(ValueError, match="kernel_size"):
        F.fractional_max_pool2d(x, 0, output_size=2)
    with pytest.raises(ValueError, match="random_samples"):
        F.fractional_max_pool2d(x, 2, output_size=3, random_samples=u[:, :1])
    with pytest.raises(ValueError, match="random_samples"):
        F.fractional_max_pool2d(x, 2, output_size=3, random_samples=u + 0.5)
    with pytest.raises(ValueError, match="random_samples"):
        F.fractional_max_pool2d(x, 2, output_size=3, random_samples=-u)
    with pytest.raises(ValueError, match="random_samples"):
        F.fractional_max_pool2d(x.astype(np.float32), 2, output_size=3,
                                random_samples=np.full((1, 2, 2), 1 - 1e-12))  # rounds to 1
    with pytest.raises(ValueError, match="seed"):
        F.fractional_max_pool2d(x, 2, output_size=3, random_samples=u, seed=1)
    with pytest.raises(TypeError, match="random_samples"):
        F.fractional_max_pool2d(x, 2, output_size=3, random_samples=u.astype(complex))
    with pytest.raises(ValueError, match="x must have"):
        F.fractional_max_pool3d(x[0, 0], 2, output_size=3)
    with pytest.raises(ValueError, match="indices"):
        F.fractional_max_pool2d_backward(np.zeros((1, 2, 3, 3)), np.full((1, 2, 3, 3), 36),
                                         x.shape)


@pytest.mark.parametrize("lead", [(0, 3), (2, 0)])
def test_empty_batch_or_channels(lead):
    x = np.zeros(lead + (6, 5))
    out, idx = F.fractional_max_pool2d(x, 2, output_size=3, return_indices=True, seed=0)
    assert out.shape == idx.shape == lead + (3, 3)
    assert F.fractional_max_pool2d_backward(out, idx, x.shape).shape == x.shape
