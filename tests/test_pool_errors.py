"""Bad input to max/avg/Lp pooling raises ValueError or TypeError naming the argument,
before any kernel runs (the kernel module is replaced by a trap while these tests run)."""
import numpy as np
import pytest

from cpool import functional as F
from cpool import layers

X2 = np.zeros((1, 2, 6, 6))
OUT2 = np.zeros((1, 2, 3, 3))  # k=2 output of X2
IDX2 = np.zeros((1, 2, 3, 3), dtype=np.int64)
HUGE = 2**70


class _KernelTrap:
    def __getattr__(self, name):
        raise AssertionError(f"kernel {name} ran on bad input")


@pytest.fixture(autouse=True)
def no_kernels(monkeypatch):
    monkeypatch.setattr(F, "_pool", _KernelTrap())
    monkeypatch.setattr(F, "_cl", _KernelTrap())


def max2(*a, **k):
    return F.max_pool2d(X2, *a, **k)


def avg2(*a, **k):
    return F.avg_pool2d(X2, *a, **k)


def lp2(*a, **k):
    return F.lp_pool2d(X2, *a, **k)


CASES = [
    # wrong ndim
    ("x", ValueError, lambda: F.max_pool2d(np.zeros((6, 6)), 2)),
    ("x", ValueError, lambda: F.avg_pool1d(np.zeros((1, 1, 1, 6)), 2)),
    ("x", ValueError, lambda: F.lp_pool3d(np.zeros((1, 6, 6)), 2, 2)),
    ("x", ValueError, lambda: F.max_pool1d(np.float64(3.0), 1)),
    # kernel, stride, dilation <= 0, not ints, or absurdly large
    ("kernel_size", ValueError, lambda: max2(0)),
    ("kernel_size", ValueError, lambda: avg2((2, -1))),
    ("kernel_size", TypeError, lambda: max2(2.0)),
    ("kernel_size", TypeError, lambda: max2(True)),
    ("kernel_size", TypeError, lambda: max2("2")),
    ("kernel_size", TypeError, lambda: max2(None)),
    ("kernel_size", ValueError, lambda: max2(HUGE)),
    ("kernel_size", ValueError, lambda: F.max_pool1d(np.zeros((1, 5)), 2 * 10**18 + 1,
                                                     padding=10**18)),
    ("kernel_size", ValueError, lambda: F.max_pool3d(np.zeros((1, 4, 4, 4)), 2**11)),
    ("stride", ValueError, lambda: lp2(2, 2, stride=0)),
    ("stride", ValueError, lambda: max2(2, stride=(1, -2))),
    ("stride", TypeError, lambda: max2(2, stride=1.5)),
    ("stride", ValueError, lambda: max2(2, stride=HUGE)),
    ("dilation", ValueError, lambda: max2(2, dilation=0)),
    ("dilation", ValueError, lambda: avg2(2, dilation=(1, 0))),
    ("dilation", ValueError, lambda: max2(2, dilation=2**40)),
    # int padding over half the effective kernel (PyTorch), (begin, end) pairs as large as
    # the effective kernel (ONNX), negative, unknown string, wrong type
    ("padding", ValueError, lambda: max2(3, padding=2)),
    ("padding", ValueError, lambda: avg2(3, padding=((0, 3), (0, 0)))),
    ("padding", ValueError, lambda: max2(3, dilation=2, padding=((5, 0), (0, 0)))),
    ("padding", ValueError, lambda: lp2(2, (3, 2), padding=(1, 2))),
    ("padding", ValueError, lambda: max2(2, dilation=2, padding=2)),  # effective 3: pad <= 1
    ("padding", ValueError, lambda: max2(3, padding=-1)),
    ("padding", ValueError, lambda: max2(2, padding="full")),
    ("padding", ValueError, lambda: max2(2, padding="SAME")),
    ("padding", TypeError, lambda: max2(2, padding=0.5)),
    ("padding", TypeError, lambda: max2(2, padding=None)),
    # output size <= 0
    ("output size", ValueError, lambda: max2(7)),
    ("output size", ValueError, lambda: avg2((2, 4), dilation=(1, 2))),
    ("output size", ValueError, lambda: F.max_pool3d(np.zeros((1, 1, 1, 9, 9)), (2, 1, 1))),
    # tuples of the wrong length
    ("kernel_size", ValueError, lambda: max2((2, 2, 2))),
    ("kernel_size", ValueError, lambda: F.max_pool3d(np.zeros((1, 4, 4, 4)), (2, 2))),
    ("stride", ValueError, lambda: max2(2, stride=(1,))),
    ("dilation", ValueError, lambda: max2(2, dilation=(1, 1, 1))),
    ("padding", ValueError, lambda: max2(2, padding=(1, 1, 1))),
    ("padding", ValueError, lambda: max2(2, padding=((1, 1, 1), (0, 0)))),
    ("padding", ValueError, lambda: F.max_pool1d(np.zeros((1, 6)), 3, padding=(1, 1))),
    # norm_type <= 0, NaN, infinite, not a number
    ("norm_type", ValueError, lambda: lp2(0, 2)),
    ("norm_type", ValueError, lambda: lp2(-1.5, 2)),
    ("norm_type", ValueError, lambda: lp2(float("nan"), 2)),
    ("norm_type", ValueError, lambda: lp2(float("inf"), 2)),
    ("norm_type", TypeError, lambda: lp2("2", 2)),
    ("norm_type", TypeError, lambda: lp2(None, 2)),
    ("norm_type", TypeError, lambda: lp2(True, 2)),
    # complex, bool, object, string, ragged input
    ("x", TypeError, lambda: F.max_pool2d(X2.astype(complex), 2)),
    ("x", TypeError, lambda: F.avg_pool2d(X2.astype(bool), 2)),
    ("x", TypeError, lambda: F.lp_pool2d(X2.astype(object), 2, 2)),
    ("x", TypeError, lambda: F.max_pool2d(np.full((1, 2, 6, 6), "a"), 2)),
    ("x", TypeError, lambda: F.max_pool1d([[1.0, 2.0], [3.0]], 1)),
    ("x", TypeError, lambda: F.max_pool1d(np.zeros((1, 4), dtype="datetime64[s]"), 2)),
    # other options
    ("ceil_mode", TypeError, lambda: max2(2, ceil_mode="yes")),
    ("divisor_override", ValueError, lambda: avg2(2, divisor_override=0)),
    ("divisor_override", TypeError, lambda: avg2(2, divisor_override=1.5)),
    # backward: indices / grad_output whose shape, dtype or range does not fit
    ("indices", ValueError, lambda: F.max_pool2d_backward(OUT2, IDX2[..., :2], X2.shape)),
    ("grad_output", ValueError, lambda: F.max_pool2d_backward(OUT2[..., :2], IDX2, X2.shape)),
    ("grad_output", ValueError, lambda: F.max_pool2d_backward(np.zeros((1, 3, 3, 3)),
                                                              np.zeros((1, 3, 3, 3), np.int64),
                                                              X2.shape)),
    ("grad_output", ValueError, lambda: F.max_pool2d_backward(OUT2[0], IDX2, X2.shape)),
    ("indices", ValueError, lambda: F.max_pool2d_backward(OUT2, IDX2 + 36, X2.shape)),
    ("indices", ValueError, lambda: F.max_pool2d_backward(OUT2, IDX2 - 2, X2.shape)),
    ("indices", TypeError, lambda: F.max_pool2d_backward(OUT2, IDX2.astype(float), X2.shape)),
    ("grad_output", TypeError, lambda: F.max_pool2d_backward(OUT2.astype(complex), IDX2,
                                                             X2.shape)),
    ("input_shape", ValueError, lambda: F.max_pool2d_backward(OUT2, IDX2, (6, 6))),
    ("input_shape", ValueError, lambda: F.max_pool2d_backward(OUT2, IDX2, "abcd")),
    ("input_shape", ValueError, lambda: F.max_pool2d_backward(OUT2, IDX2, (1, 2, -6, 6))),
    ("input_shape", TypeError, lambda: F.avg_pool2d_backward(OUT2, (1, 2, 6.0, 6), 2)),
    ("grad_output", ValueError, lambda: F.avg_pool2d_backward(OUT2[..., :2], X2.shape, 2)),
    ("grad_output", ValueError, lambda: F.avg_pool2d_backward(OUT2, X2.shape, 3)),
    ("grad_output", TypeError, lambda: F.avg_pool2d_backward(OUT2.astype(bool), X2.shape, 2)),
    ("kernel_size", ValueError, lambda: F.avg_pool2d_backward(OUT2, X2.shape, 0)),
    ("padding", ValueError, lambda: F.avg_pool2d_backward(OUT2, X2.shape, 2, padding=2)),
    ("grad_output", ValueError, lambda: F.lp_pool2d_backward(OUT2[..., :2], X2, OUT2, 2, 2)),
    ("y", ValueError, lambda: F.lp_pool2d_backward(OUT2, X2, OUT2[..., :2], 2, 2)),
    ("x", ValueError, lambda: F.lp_pool2d_backward(OUT2, X2[0, 0], OUT2, 2, 2)),
    ("norm_type", ValueError, lambda: F.lp_pool2d_backward(OUT2, X2, OUT2, 0, 2)),
    # layers validate the same way
    ("kernel_size", ValueError, lambda: layers.MaxPool2d(0)(X2)),
    ("padding", ValueError, lambda: layers.AvgPool2d(3, padding=2)(X2)),
    ("norm_type", ValueError, lambda: layers.LPPool2d(-2, 2)),
    ("x", ValueError, lambda: layers.AvgPool2d(2)(np.zeros(6))),
    ("x", TypeError, lambda: layers.MaxPool1d(2)(np.zeros((1, 4), complex))),
]


@pytest.mark.parametrize("name, error, call", CASES,
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input_raises_naming_the_argument(name, error, call):
    with pytest.raises(error, match=name) as info:
        call()
    assert not isinstance(info.value, AssertionError)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_errors_state_the_allowed_values(dims):
    x = np.zeros((1, 1) + (6,) * dims)
    pool = getattr(F, f"max_pool{dims}d")
    with pytest.raises(ValueError, match=r">= 1"):
        pool(x, 0)
    with pytest.raises(ValueError, match=r"<= 1"):  # half of the effective kernel 3
        pool(x, 3, padding=2)
    with pytest.raises(ValueError, match="'valid', 'same', 'same_lower'"):
        pool(x, 2, padding="full")
    with pytest.raises(ValueError, match=f"sequence of {dims} ints"):
        pool(x, (2,) * (dims + 1))
    with pytest.raises(ValueError, match=f"{dims + 1} dims .* or {dims + 2} dims"):
        pool(np.zeros((6,) * dims), 2)
    with pytest.raises(ValueError, match=r"\[0, 36\)" if dims == 2 else r"\[0, "):
        getattr(F, f"max_pool{dims}d_backward")(np.zeros((1, 1) + (3,) * dims),
                                                 np.full((1, 1) + (3,) * dims, 10**6),
                                                 x.shape)
    with pytest.raises(ValueError, match="> 0"):
        getattr(F, f"lp_pool{dims}d")(x, 0, 2)


def test_kernel_trap_is_armed():
    # the checks above run with the kernels replaced: good input reaches the trap
    with pytest.raises(AssertionError, match="kernel"):
        F.max_pool2d(X2, 2)
    with pytest.raises(AssertionError, match="kernel"):
        layers.LPPool2d(2, 2)(X2)


def test_cached_geometry_keeps_type_checks_and_errors():
    """PoolGeometry.create caches calls of plain ints, tuples, strings and bools: a cached
    2 or False still refuses 2.0, True and "2", and a bad call raises every time."""
    from cpool._geometry import PoolGeometry
    good = PoolGeometry.create((6, 6), 2, None, 0, 1, False)
    assert PoolGeometry.create((6, 6), 2, None, 0, 1, False) is good  # from the cache
    assert PoolGeometry.create((6, 6), np.int64(2), None, 0, 1, np.bool_(False)) == good
    assert PoolGeometry.create([6, 6], [2, 2], (2, 2), (0, 0), 1, False) == good
    for _ in range(2):
        with pytest.raises(TypeError, match="kernel_size"):
            PoolGeometry.create((6, 6), 2.0)
        with pytest.raises(TypeError, match="kernel_size"):
            PoolGeometry.create((6, 6), True)
        with pytest.raises(TypeError, match="kernel_size"):
            PoolGeometry.create((6, 6), "2")
        with pytest.raises(TypeError, match="ceil_mode"):
            PoolGeometry.create((6, 6), 2, ceil_mode=0)
        with pytest.raises(TypeError, match="padding"):
            PoolGeometry.create((6, 6), 2, padding=(True, 0))
        with pytest.raises(ValueError, match="padding"):
            PoolGeometry.create((6, 6), 2, padding=2)
    assert PoolGeometry.create((6, 6), 2, 1, ((0, 1), (1, 0))).out_size == (6, 6)
