"""PyTorch (CPU) as an oracle for max, average and Lp pooling: values, indices, NaN rule,
ceil_mode, count_include_pad, divisor_override, dilation (max only) and gradients.

Where PyTorch has a different definition the comparison is restricted, and says why:
* lp_pool: PyTorch computes sign(S)*relu(|S|)^(1/p) with S = sum x^p, so only x >= 0 or
  even p compare; it has no padding; and with ceil_mode it scales a window that overhangs
  the input by kernel_volume / taps_inside (it is avg_pool(x^p) * kernel_volume, and
  avg_pool divides by the truncated count), so such windows are compared separately.
"""
import numpy as np
import pytest

from cpool import functional as F
from cpool import layers
from tests import reference as R
from tests.pool_cases import random_geometry, random_input, rng_for, with_nans

torch = pytest.importorskip("torch")
TF = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def torch_geometry(rng, nd, dilation, **options):
    """Symmetric int padding within torch's limits: half the kernel (max_pool3d checks the
    undilated kernel, cpool and torch's max_pool2d the effective one)."""
    while True:
        geo, in_size = random_geometry(rng, nd, dilation=dilation, forms=("int", "per_dim"),
                                       **options)
        if geo["stride"] is None:
            geo["stride"] = geo["kernel_size"]
        kernel = R.Windows(in_size, geo["kernel_size"]).kernel
        pads = geo["padding"] if isinstance(geo["padding"], tuple) else (geo["padding"],) * nd
        geo["padding"] = tuple(min(p, k // 2) for p, k in zip(pads, kernel))
        win = R.Windows(in_size, **geo)
        # torch's avg_pool3d also refuses an input smaller than the kernel, padding or not
        if min(win.out_size) > 0 and all(L >= k for L, k in zip(in_size, kernel)):
            return geo, in_size


def torch_grad(pool, x, g, **kwargs):
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    out = pool(t, **kwargs)
    if isinstance(out, tuple):
        out = out[0]
    out.backward(torch.from_numpy(g))
    return out.detach().numpy(), t.grad.numpy()


DTYPES = (np.float32, np.float64)


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_matches_torch(nd, dtype):
    rng = rng_for("torch-max", nd, dtype)
    pool = getattr(TF, f"max_pool{nd}d")
    for trial in range(6):
        geo, in_size = torch_geometry(rng, nd, dilation=True, padding_only_windows=False)
        x = random_input(rng, (2, 3) + in_size, dtype, ("normal", "ties")[trial % 2])
        want, want_idx = pool(torch.from_numpy(x), **geo, return_indices=True)
        got, idx = getattr(F, f"max_pool{nd}d")(x, **geo, return_indices=True)
        np.testing.assert_array_equal(got, want.numpy(), err_msg=str(geo))
        np.testing.assert_array_equal(idx, want_idx.numpy(), err_msg=str(geo))
        g = random_input(rng, got.shape, dtype)
        _, want_grad = torch_grad(pool, x, g, **geo)
        np.testing.assert_allclose(getattr(F, f"max_pool{nd}d_backward")(g, idx, x.shape),
                                   want_grad, **tol(dtype), err_msg=str(geo))
        layer = getattr(layers, f"MaxPool{nd}d")(**geo)
        layer(x)
        np.testing.assert_allclose(layer.backward(g), want_grad, **tol(dtype), err_msg=str(geo))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_nan_rule_matches_torch(nd):
    rng = rng_for("torch-nan", nd)
    pool = getattr(TF, f"max_pool{nd}d")
    for trial in range(6):
        geo, in_size = torch_geometry(rng, nd, dilation=True)
        x = with_nans(rng, random_input(rng, (2, 2) + in_size, np.float32, "ties"),
                      (0.1, 0.3)[trial % 2])
        want, want_idx = pool(torch.from_numpy(x), **geo, return_indices=True)
        got, idx = getattr(F, f"max_pool{nd}d")(x, **geo, return_indices=True)
        np.testing.assert_array_equal(got, want.numpy(), err_msg=str(geo))
        np.testing.assert_array_equal(idx, want_idx.numpy(), err_msg=str(geo))
        np.testing.assert_array_equal(getattr(F, f"max_pool{nd}d")(x, **geo),
                                      pool(torch.from_numpy(x), **geo).numpy(), err_msg=str(geo))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_avg_pool_matches_torch(nd, dtype):
    rng = rng_for("torch-avg", nd, dtype)
    pool = getattr(TF, f"avg_pool{nd}d")
    for trial in range(8):
        geo, in_size = torch_geometry(rng, nd, dilation=False)
        del geo["dilation"]
        opts = dict(count_include_pad=bool(trial % 2))
        if nd > 1 and trial % 4 == 3:  # torch's avg_pool1d has no divisor_override
            opts["divisor_override"] = int(rng.integers(1, 6))
        x = random_input(rng, (2, 3) + in_size, dtype)
        want = pool(torch.from_numpy(x), **geo, **opts).numpy()
        got = getattr(F, f"avg_pool{nd}d")(x, **geo, **opts)
        np.testing.assert_allclose(got, want, **tol(dtype), err_msg=f"{geo} {opts}")
        g = random_input(rng, got.shape, dtype)
        _, want_grad = torch_grad(pool, x, g, **geo, **opts)
        np.testing.assert_allclose(getattr(F, f"avg_pool{nd}d_backward")(g, x.shape, **geo, **opts),
                                   want_grad, **tol(dtype), err_msg=f"{geo} {opts}")
        layer = getattr(layers, f"AvgPool{nd}d")(**geo, **opts)
        layer(x)
        np.testing.assert_allclose(layer.backward(g), want_grad, **tol(dtype))


def _overhang_mask(in_size, geo):
    """Output positions whose window runs past the end of the input (ceil_mode)."""
    win = R.Windows(in_size, geo["kernel_size"], geo["stride"], 0, 1, geo["ceil_mode"])
    mask = np.zeros(win.out_size, dtype=bool)
    for pos, taps in win:
        mask[pos] = any(t[-1] >= L for t, L in zip(taps, in_size))
    return mask


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lp_pool_matches_torch_for_nonnegative_input_or_even_p(nd):
    rng = rng_for("torch-lp", nd)
    pool = getattr(TF, f"lp_pool{nd}d")
    for trial in range(8):
        geo, in_size = torch_geometry(rng, nd, dilation=False)
        geo = dict(kernel_size=geo["kernel_size"], stride=geo["stride"],
                   ceil_mode=geo["ceil_mode"])
        if nd == 1:  # torch's lp_pool1d multiplies by kernel_size: it must be an int
            geo.update(kernel_size=R.Windows(in_size, geo["kernel_size"]).kernel[0],
                       stride=R.Windows(in_size, geo["stride"]).kernel[0])
        p = (1.0, 2.0, 3.0, 4.0)[trial % 4]
        x = random_input(rng, (2, 2) + in_size, np.float64, "away0")
        if p % 2:  # odd p: PyTorch has no |x|, so only x >= 0 agrees
            x = np.abs(x)
        want = pool(torch.from_numpy(x), p, **geo).numpy()
        got = getattr(F, f"lp_pool{nd}d")(x, p, **geo)
        full = ~_overhang_mask(in_size, geo)
        np.testing.assert_allclose(got[..., full], want[..., full], rtol=1e-12,
                                   err_msg=f"p={p} {geo}")
        g = np.where(full, random_input(rng, got.shape, np.float64), 0.0)
        _, want_grad = torch_grad(pool, x, g, norm_type=p, **geo)
        got_grad = getattr(F, f"lp_pool{nd}d_backward")(g, x, got, p, **geo)
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-9, atol=1e-12,
                                   err_msg=f"p={p} {geo}")


def test_lp_pool_ceil_overhang_differs_from_torch_by_its_divisor():
    # torch: avg_pool(x^p) * k, and avg_pool divides an overhanging window by its
    # truncated count, so torch's last window is (k / count)^(1/p) times the Lp norm.
    x = np.array([[[0.3, 0.4, 1.0, 2.0]]])
    got = F.lp_pool1d(x, 2.0, 3, 2, ceil_mode=True)
    np.testing.assert_allclose(got[0, 0], [np.sqrt(0.09 + 0.16 + 1.0), np.sqrt(1.0 + 4.0)])
    want = TF.lp_pool1d(torch.from_numpy(x), 2.0, 3, 2, ceil_mode=True).numpy()
    np.testing.assert_allclose(want[0, 0, 0], got[0, 0, 0])
    np.testing.assert_allclose(want[0, 0, 1], got[0, 0, 1] * np.sqrt(3 / 2))


def test_lp_pool_odd_p_negative_input_differs_from_torch():
    # cpool/ONNX: (|-2|^1 + |1|^1) = 3; torch: sign(S) relu(|S|) with S = -2 + 1 -> -1
    x = np.array([[[-2.0, 1.0]]])
    np.testing.assert_allclose(F.lp_pool1d(x, 1, 2), [[[3.0]]])
    np.testing.assert_allclose(TF.lp_pool1d(torch.from_numpy(x), 1, 2).numpy(), [[[-1.0]]])


def test_ceil_mode_window_longer_than_padded_input_matches_torch():
    # torch's output size floor((L + 2p - e + s - 1) / s) + 1 keeps one window here
    x = random_input(rng_for("torch-ceil-long"), (1, 2, 3, 4), np.float64)
    geo = dict(kernel_size=(4, 5), stride=(2, 2), padding=(0, 1), ceil_mode=True)
    want, want_idx = TF.max_pool2d(torch.from_numpy(x), **geo, return_indices=True)
    got, idx = F.max_pool2d(x, **geo, return_indices=True)
    assert got.shape == (1, 2, 1, 2)
    np.testing.assert_array_equal(got, want.numpy())
    np.testing.assert_array_equal(idx, want_idx.numpy())
    for cip in (True, False):
        np.testing.assert_allclose(F.avg_pool2d(x, **geo, count_include_pad=cip),
                                   TF.avg_pool2d(torch.from_numpy(x), **geo,
                                                 count_include_pad=cip).numpy(), rtol=1e-12)
