"""Huge tensors: max and average pooling over an input of more than 2**31 elements, with
indices above 2**31 returned as correct int64.

Runs only with CPOOL_BIG_TESTS=1 and enough free memory (/proc/meminfo MemAvailable):
the input is one float32 plane of (2**25 + 1) x 64 = 2**31 + 64 elements (8 GiB), and
nothing else is large. Rows are short (64) so kernels' per-row scratch stays small;
window starts are placed so that windows straddle flat position 2**31 and lie past it.
Selected windows are checked against NumPy on the same slices.
"""
import os

import numpy as np
import pytest

import cpool
from cpool import functional as F

H, W = 2**25 + 1, 64  # one (1, 1, H, W) plane of 2**31 + 64 float32 elements
ELEMENTS = H * W
NEEDED = ELEMENTS * 4 + (2 << 30)  # the input plus 2 GiB of headroom
KERNEL = (3, 2)
# 2**24 - 1 puts the third window's rows at 2**25 - 2 .. 2**25: flat positions from
# below 2**31 - 64 to above 2**31; columns in steps of 2 cover every row element.
STRIDE = (2**24 - 1, 2)


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


pytestmark = [
    pytest.mark.skipif(os.environ.get("CPOOL_BIG_TESTS") != "1",
                       reason="huge-tensor tests run only with CPOOL_BIG_TESTS=1"),
    pytest.mark.skipif(os.environ.get("CPOOL_BIG_TESTS") == "1"
                       and _mem_available() < NEEDED,
                       reason=f"needs {NEEDED >> 30} GiB of available memory"),
]


@pytest.fixture(scope="module")
def huge():
    """(1, 1, H, W) float32 with a cheap pseudo-random fill (a multiplicative hash of the
    flat position, in chunks), and a few planted maxima past flat position 2**31."""
    x = np.empty((1, 1, H, W), dtype=np.float32)
    flat = x.reshape(-1)
    chunk = 1 << 24
    for start in range(0, ELEMENTS, chunk):
        i = np.arange(start, min(start + chunk, ELEMENTS), dtype=np.uint64)
        flat[start:start + i.size] = ((i * np.uint64(2654435761)) % np.uint64(1000003)
                                      ).astype(np.float32) / np.float32(1000003)
    # In the straddling windows, a maximum on the row past 2**31 (and one NaN window).
    last = H - 1  # = 2**25: flat positions 2**31 .. 2**31 + 63
    flat[last * W + 10] = 5.0
    flat[last * W + 33] = 6.0
    flat[last * W + 40] = np.nan
    yield x
    del x


def _windows(x):
    """(oh, ow, window slice) of the windows checked: every window of the last window
    row (it straddles 2**31) and a few others."""
    out_h = (H - KERNEL[0]) // STRIDE[0] + 1
    out_w = (W - KERNEL[1]) // STRIDE[1] + 1
    picks = [(out_h - 1, ow) for ow in range(out_w)] + [(0, 0), (1, out_w - 1), (0, 7)]
    for oh, ow in picks:
        h0, w0 = oh * STRIDE[0], ow * STRIDE[1]
        yield oh, ow, x[0, 0, h0:h0 + KERNEL[0], w0:w0 + KERNEL[1]], h0, w0


def test_huge_max_pool_with_int64_indices(huge):
    cpool.set_num_threads(None)
    out, idx = F.max_pool2d(huge, KERNEL, STRIDE, return_indices=True)
    assert idx.dtype == np.int64
    assert out.shape == (1, 1, (H - 3) // STRIDE[0] + 1, (W - 2) // 2 + 1)
    above = 0
    for oh, ow, win, h0, w0 in _windows(huge):
        nan = np.isnan(win)
        if nan.any():  # PyTorch's rule: the window's last NaN in scan order
            r, c = np.argwhere(nan)[-1]
            assert np.isnan(out[0, 0, oh, ow])
        else:
            r, c = np.unravel_index(np.argmax(win), win.shape)  # first maximum
            assert out[0, 0, oh, ow] == win.max()
        want = (h0 + r) * W + (w0 + c)
        assert idx[0, 0, oh, ow] == want, (oh, ow, idx[0, 0, oh, ow], want)
        above += want >= 2**31
    assert above >= 3  # the planted maxima past 2**31 were found at their positions
    assert idx.max() >= 2**31 + 33


@pytest.mark.skipif(_mem_available() < NEEDED + ELEMENTS * 4,
                    reason="the gradient is a second 8 GiB array")
def test_huge_max_pool_backward(huge):
    """The gradient lands at the int64 positions past 2**31."""
    out, idx = F.max_pool2d(huge, KERNEL, STRIDE, return_indices=True)
    grad = F.max_pool2d_backward(np.ones(out.shape, np.float32), idx, huge.shape)
    flat = grad.reshape(-1)
    for i in idx.reshape(-1):
        assert flat[i] >= 1.0
    assert flat[(H - 1) * W + 33] == 1.0 and flat[(H - 1) * W + 10] == 1.0
    assert np.count_nonzero(flat) == len(set(idx.reshape(-1).tolist()))
    assert flat.sum(dtype=np.float64) == out.size


def test_huge_avg_pool(huge):
    out = F.avg_pool2d(huge, KERNEL, STRIDE)
    for oh, ow, win, _, _ in _windows(huge):
        want = np.float64(win.astype(np.float64).mean())
        got = out[0, 0, oh, ow]
        if np.isnan(want):
            assert np.isnan(got)
        else:
            assert abs(got - want) <= 1e-6 * max(1.0, abs(want)), (oh, ow, got, want)
