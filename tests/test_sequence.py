"""Masked sequence pooling (functional API) against the slow NumPy reference in
tests/reference_sequence.py and PyTorch's masked expressions; finite differences for
every backward; padding that never leaks; thread invariance; untouched inputs; errors."""
import numpy as np
import pytest

import cpool
from cpool import functional as F
from tests import reference_sequence as R
from tests.test_pool import numeric_grad

DTYPES = (np.float32, np.float64)
MODES = ("mean", "max", "sum", "first", "last")
LAYOUTS = ("NLC", "NCL")
TOL = {np.dtype(np.float32): dict(rtol=2e-6, atol=2e-6),
       np.dtype(np.float64): dict(rtol=1e-13, atol=1e-13)}


@pytest.fixture
def restore_threads():
    yield
    cpool.set_num_threads(None)


@pytest.fixture
def one_thread(restore_threads):
    cpool.set_num_threads(1)  # finite differences make hundreds of tiny calls


def make_case(dtype, valid, layout, seed=0, shape=(6, 7, 5), poison=True):
    """x in `layout`, plus kwargs (lengths=, mask= or nothing) with an empty row, a full
    row and (for masks) holes. Padded steps hold NaN and inf: they must never count."""
    rng = np.random.default_rng(seed)
    N, L, C = shape
    x = rng.standard_normal(shape)
    lengths = np.minimum([3, 0, L, 1, 5, 2][:N], L)
    kw = {}
    if valid == "lengths":
        kw["lengths"] = lengths
        keep = np.arange(L)[None, :] < lengths[:, None]
    elif valid == "mask":
        keep = rng.random((N, L)) < 0.6
        keep[1] = False
        keep[2] = True
        keep[3] = np.arange(L) % 3 == 1  # holes
        kw["mask"] = keep
    else:
        keep = np.ones((N, L), bool)
    if poison:
        x[~keep] = np.where(rng.random(((~keep).sum(), C)) < 0.5, np.nan, np.inf)
    if layout == "NCL":
        x = np.swapaxes(x, 1, 2)
    return np.ascontiguousarray(x, dtype=dtype), kw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("valid", ["lengths", "mask", "none"])
@pytest.mark.parametrize("mode", MODES)
def test_forward_and_backward_match_reference(dtype, layout, valid, mode):
    x, kw = make_case(dtype, valid, layout)
    y = F.sequence_pool(x, mode=mode, layout=layout, **kw)
    ref, _ = R.sequence_pool(x, mode=mode, layout=layout, **kw)
    assert y.dtype == dtype and y.shape == (6, 5)
    np.testing.assert_allclose(y, ref, **TOL[np.dtype(dtype)])
    assert np.isfinite(y).all()  # NaN/inf padding never leaks
    if valid != "none":
        assert not y[1].any()  # a row with no valid step gives 0
    g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    grad = F.sequence_pool_backward(g, x.shape, mode=mode, layout=layout, x=x, **kw)
    assert grad.dtype == dtype and grad.shape == x.shape
    np.testing.assert_allclose(grad, R.sequence_pool_grad(g, x, mode=mode, layout=layout, **kw),
                               **TOL[np.dtype(dtype)])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
def test_backward_finite_differences(layout, mode, one_thread):
    x, kw = make_case(np.float64, "mask", layout, seed=2, shape=(4, 5, 3), poison=False)
    g = np.random.default_rng(3).standard_normal((4, 3))
    grad = F.sequence_pool_backward(g, x.shape, mode=mode, layout=layout, x=x, **kw)
    num = numeric_grad(lambda v: F.sequence_pool(v, mode=mode, layout=layout, **kw), x.copy(), g)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_max_ties_and_nan_go_to_the_first_like_torch_max():
    x = np.array([[[1.0], [5.0], [5.0], [np.nan], [7.0], [np.nan]]])  # (1, 6, 1)
    g = np.array([[2.0]])
    for lengths, value, step in [([3], 5.0, 1), ([6], np.nan, 3)]:
        y = F.sequence_pool(x, lengths=lengths, mode="max")
        np.testing.assert_array_equal(y, [[value]])
        grad = F.sequence_pool_backward(g, x.shape, lengths=lengths, mode="max", x=x)
        assert np.flatnonzero(grad[0, :, 0]).tolist() == [step]


def test_vs_torch_masked_expressions():
    torch = pytest.importorskip("torch")
    for layout in LAYOUTS:
        x, kw = make_case(np.float64, "mask", layout, seed=4, poison=False)
        x[0, 0, 0] = np.nan  # a NaN in a valid step: propagates, as torch.max
        mask = kw["mask"]
        xt = torch.tensor(x if layout == "NLC" else np.swapaxes(x, 1, 2).copy(),
                          requires_grad=True)
        m = torch.tensor(mask)[..., None]
        count = m.sum(1)
        has = (count > 0).squeeze(1)
        steps = torch.arange(mask.shape[1])[None, :, None]
        first = torch.where(m, steps, mask.shape[1]).min(1).values.clamp(max=mask.shape[1] - 1)
        last = torch.where(m, steps, -1).max(1).values.clamp(min=0)

        def pick(t, step):  # t[n, step[n], :]
            return t.gather(1, step[:, None].expand(-1, 1, t.shape[2])).squeeze(1)

        expressions = {
            "sum": lambda t: (t * m).sum(1),
            "mean": lambda t: (t * m).sum(1) / count.clamp(min=1),
            "max": lambda t: torch.where(has[:, None], t.masked_fill(~m, -np.inf).max(1).values,
                                         0.0),
            "first": lambda t: torch.where(has[:, None], pick(t, first), 0.0),
            "last": lambda t: torch.where(has[:, None], pick(t, last), 0.0),
        }
        for mode, expr in expressions.items():
            ty = expr(xt)
            y = F.sequence_pool(x, mode=mode, layout=layout, **kw)
            np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-13, atol=1e-13,
                                       err_msg=f"{mode} {layout}")
            g = np.random.default_rng(5).standard_normal(y.shape)
            if mode in ("sum", "mean"):
                g[0, 0] = 0.0  # torch's x*mask passes NaN * 0 = NaN on to grad; cpool 0
            (tg,) = torch.autograd.grad(ty, xt, torch.tensor(g))
            tg = tg.numpy() if layout == "NLC" else np.swapaxes(tg.numpy(), 1, 2)
            grad = F.sequence_pool_backward(g, x.shape, mode=mode, layout=layout, x=x, **kw)
            np.testing.assert_allclose(grad, tg, rtol=1e-13, atol=1e-13,
                                       err_msg=f"{mode} {layout}")


def test_wide_rows_cross_channel_blocks():
    # 300 channels over 6 rows: NLC work items split them in two blocks of 150 at 2 threads
    for layout in LAYOUTS:
        x, kw = make_case(np.float32, "lengths", layout, seed=6, shape=(6, 4, 300))
        for mode in MODES:
            y = F.sequence_pool(x, mode=mode, layout=layout, **kw)
            np.testing.assert_allclose(y, R.sequence_pool(x, mode=mode, layout=layout, **kw)[0],
                                       **TOL[np.dtype(np.float32)])


def test_one_and_two_threads_are_bitwise_identical(restore_threads):
    results = []
    for threads in (1, 2):
        cpool.set_num_threads(threads)
        r = {}
        for layout in LAYOUTS:
            for valid in ("lengths", "mask"):
                x, kw = make_case(np.float32, valid, layout, seed=7, shape=(6, 24, 300))
                g = np.random.default_rng(8).standard_normal((6, 300)).astype(np.float32)
                for mode in MODES:
                    key = (layout, valid, mode)
                    r[key] = F.sequence_pool(x, mode=mode, layout=layout, **kw)
                    r[key + ("bwd",)] = F.sequence_pool_backward(g, x.shape, mode=mode,
                                                                 layout=layout, x=x, **kw)
        results.append(r)
    for key in results[0]:
        assert np.array_equal(results[0][key], results[1][key], equal_nan=True), key


def test_mask_forms_lengths_lists_float16_and_empty():
    x, kw = make_case(np.float32, "mask", "NLC", seed=9)
    mask = kw["mask"]
    y = F.sequence_pool(x, mask=mask)
    np.testing.assert_array_equal(F.sequence_pool(x, mask=mask.astype(np.int64)), y)
    np.testing.assert_array_equal(F.sequence_pool(x, mask=mask.tolist()), y)
    x2, kw2 = make_case(np.float64, "lengths", "NLC", seed=9)
    np.testing.assert_array_equal(F.sequence_pool(x2, lengths=kw2["lengths"].tolist()),
                                  F.sequence_pool(x2, **kw2))
    # a hole-free mask takes the fast path: same result as the equivalent lengths
    prefix = np.arange(7)[None, :] < kw2["lengths"][:, None]
    np.testing.assert_array_equal(F.sequence_pool(x2, mask=prefix, mode="max"),
                                  F.sequence_pool(x2, mode="max", **kw2))
    y16 = F.sequence_pool(x.astype(np.float16), mask=mask, mode="sum")
    assert y16.dtype == np.float16
    assert F.sequence_pool(np.zeros((2, 0, 3)), lengths=[0, 0], mode="max").shape == (2, 3)
    assert F.sequence_pool(np.zeros((2, 4, 0)), mode="mean").shape == (2, 0)


def test_inputs_are_not_modified():
    x, kw = make_case(np.float64, "mask", "NCL", seed=10)
    x0, m0 = x.copy(), kw["mask"].copy()
    x.flags.writeable = False
    kw["mask"].flags.writeable = False
    g = np.ones((6, 5))
    g.flags.writeable = False
    for mode in MODES:
        F.sequence_pool(x, mode=mode, layout="NCL", **kw)
        F.sequence_pool_backward(g, x.shape, mode=mode, layout="NCL", x=x, **kw)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(kw["mask"], m0)
    np.testing.assert_array_equal(g, np.ones((6, 5)))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(lengths=[1, -1]), ValueError, "lengths"),
    (dict(lengths=[1, 5]), ValueError, "lengths"),
    (dict(lengths=[1, 2, 3]), ValueError, "lengths"),
    (dict(lengths=[1.0, 2.0]), TypeError, "lengths"),
    (dict(mask=np.ones((2, 3), bool)), ValueError, "mask"),
    (dict(mask=np.ones((2, 4), np.float32)), TypeError, "mask"),
    (dict(mask=np.full((2, 4), 2)), ValueError, "mask"),
    (dict(lengths=[1, 2], mask=np.ones((2, 4), bool)), ValueError, "lengths or mask"),
    (dict(mode="median"), ValueError, "mode"),
    (dict(layout="LNC"), ValueError, "layout"),
    (dict(x=np.zeros((2, 4))), ValueError, "x"),
    (dict(x=np.zeros((2, 4, 3), dtype=complex)), TypeError, "x"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(x=np.zeros((2, 4, 3)))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        F.sequence_pool(**args)


def test_bad_backward_arguments():
    x = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="grad_output"):
        F.sequence_pool_backward(np.zeros((2, 4)), x.shape, lengths=[1, 2])
    with pytest.raises(ValueError, match="needs x"):
        F.sequence_pool_backward(np.zeros((2, 3)), x.shape, mode="max")
    with pytest.raises(ValueError, match="input_shape"):
        F.sequence_pool_backward(np.zeros((2, 3)), x.shape, mode="max", x=x[:1])
    with pytest.raises(ValueError, match="input_shape"):
        F.sequence_pool_backward(np.zeros((2, 3)), (2, 4))
    with pytest.raises(ValueError, match="lengths"):
        F.sequence_pool_backward(np.zeros((2, 3)), x.shape, lengths=[9, 1])
