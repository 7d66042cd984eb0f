"""Property tests (hypothesis) for every operator in cpool.functional.__all__.

Each draw -- shapes with sizes of 1, primes and sizes smaller than the kernel with
padding, random options and dtypes, and sometimes one bad argument -- has exactly two
allowed outcomes, and which one is decided here from the documented rules *before* the
call:

* the rules accept it: the result equals the slow NumPy reference of tests/reference*.py
  (computed on the input converted to the documented compute dtype: float16 -> float32,
  integers -> float64), with the documented result dtype; every backward also equals
  central finite differences of its forward on small float64 draws;
* the rules reject it: cpool raises the documented ValueError or TypeError, and the
  message names the argument.

Any third outcome fails: another exception, a crash, a wrong value, a bad argument
accepted or a good one refused. Example counts come from the hypothesis profile in
tests/conftest.py ("ci": small and derandomized; HYPOTHESIS_PROFILE=dev for many more).
"""
import math
import re

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import cpool
from cpool import functional as F
from tests import reference as R
from tests import reference_binned as RB
from tests import reference_roi as RR
from tests import reference_sequence as RS
from tests import reference_unpool as RU
from tests.test_pool import numeric_grad

FLOATS = (np.float32, np.float64)
VALID_DTYPES = (np.float32, np.float64, np.float16, np.int32, np.uint8)
BAD_DTYPES = (np.bool_, np.complex64)
SIZES = {1: (1, 2, 3, 4, 5, 7, 11, 13), 2: (1, 2, 3, 5, 7), 3: (1, 2, 3, 5, 6)}
FD_MAX_ELEMENTS = 48  # central differences cost two forward calls per input element

# Bad values and what they must raise (TypeError for a wrong type, ValueError otherwise).
BAD_P = [(0, ValueError), (-1.5, ValueError), (math.inf, ValueError), (math.nan, ValueError),
         ("2", TypeError), (True, TypeError)]

seeds = st.integers(0, 2**32 - 1)


def fault_or_none(faults):
    """No bad argument half of the time, else one of `faults`."""
    return st.none() | st.sampled_from(faults) if faults else st.none()


@pytest.fixture(autouse=True)
def _serial_kernels():
    """One kernel thread: these tests check values on tiny inputs (thread invariance is
    tested in test_concurrency.py); the previous setting is restored exactly."""
    before = cpool._threads._num_threads
    cpool.set_num_threads(1)
    yield
    cpool.set_num_threads(before)


# --------------------------------------------------------------------------------------
# Expected outcome, inputs and comparisons.
# --------------------------------------------------------------------------------------

class Expect:
    """The errors the documented rules predict for a draw: (type, regex on the message).
    Empty: the draw must be accepted. Several: any one of them (the order in which
    cpool checks its arguments is not part of the contract)."""

    def __init__(self):
        self.errors = []

    def reject(self, exc, pattern):
        self.errors.append((exc, pattern))

    def __repr__(self):
        return f"Expect({self.errors})"

    @property
    def accepted(self):
        return not self.errors


def outcome(expect, call):
    """Run `call`: return its result when the draw must be accepted; otherwise check that
    it raises one of the predicted errors and return None. Any other exception escapes
    and fails the test."""
    event("accepted" if expect.accepted else f"rejected: {sorted({p for _, p in expect.errors})}")
    if expect.accepted:
        return call()
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    msg = str(info.value)
    assert any(isinstance(info.value, t) and re.search(p, msg) for t, p in expect.errors), \
        f"raised {type(info.value).__name__}({msg!r}); the rules predict one of {expect.errors}"
    return None


def compute_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return np.dtype(np.float32)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def result_dtype(dtype, keeps_ints=False):
    """Floats keep their dtype; integers give float64, except where a function keeps them
    (max pooling and unpooling: every integer dtype but uint64)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or (keeps_ints and dtype.kind in "iu" and dtype != np.uint64):
        return dtype
    return np.dtype(np.float64)


def make_input(seed, shape, dtype, kind="normal"):
    """kind: "normal", "ties" (few distinct values), "nan" (normal with NaNs),
    "distinct" (no two equal, never 0, spaced >= 4/size: safe for finite differences of
    maxima), "away0" (|x| >= 0.5: safe for Lp gradients)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    if dtype.kind in "iu":
        v = rng.integers(0 if dtype.kind == "u" else -5, 6, n)
    elif dtype.kind == "b":
        v = rng.random(n) < 0.5
    elif kind == "distinct":
        v = (rng.permutation(n) + 0.25) / max(n, 1) * 4 - 2  # (i + 1/4)/n != 1/2: never 0
    elif kind == "away0":
        v = rng.uniform(0.5, 2.0, n) * rng.choice([-1.0, 1.0], n)
    elif kind == "ties":
        v = rng.integers(-2, 3, n).astype(np.float64)
    else:
        v = rng.standard_normal(n)
        if kind == "nan":
            v[rng.random(n) < 0.15] = np.nan
    if dtype.kind == "c":
        v = v + 0.5j
    return np.asarray(v).reshape(shape).astype(dtype)


TOL = {np.dtype(np.float16): 3e-3, np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-11}


def assert_matches(actual, expected, dtype, exact=False, keeps_ints=False):
    """`actual` has the documented result dtype of input `dtype` and equals `expected`
    (exactly for selections -- max, indices -- otherwise within the dtype's tolerance).
    keeps_ints: integer results keep the input dtype, and a window without input
    elements (-inf in the float64 reference) holds the dtype's minimum."""
    rdt = result_dtype(dtype, keeps_ints)
    assert isinstance(actual, np.ndarray) and actual.dtype == rdt, \
        f"result dtype {getattr(actual, 'dtype', type(actual))}, documented {rdt}"
    expected = np.asarray(expected)
    if rdt.kind in "iu":
        expected = np.where(expected == -np.inf, np.iinfo(rdt).min, expected)
    expected = expected.astype(rdt)
    assert actual.shape == expected.shape, f"shape {actual.shape}, reference {expected.shape}"
    if exact:
        np.testing.assert_array_equal(actual, expected)  # NaN == NaN here
    else:
        np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                                   rtol=TOL[rdt], atol=TOL[rdt])


def assert_indices(actual, expected):
    assert isinstance(actual, np.ndarray) and actual.dtype == np.int64
    np.testing.assert_array_equal(actual, expected)


def assert_fd(forward, backward_result, x, weights, tol=1e-6):
    """backward_result == d/dx sum(weights * forward(x)) by central differences."""
    y0 = np.asarray(forward(x))
    w = np.where(np.isfinite(y0), weights, 0.0)

    def finite(v):
        return np.where(np.isfinite(y0), forward(v), 0.0)

    event("finite differences")
    num = numeric_grad(finite, x.copy(), w)
    np.testing.assert_allclose(backward_result, num, rtol=tol, atol=tol)


def fd_sized(x):
    return x.dtype == np.float64 and x.size <= FD_MAX_ELEMENTS


def lead_dims(n, c, batched):
    """(N, C) of a draw; an unbatched input is one plane stack: N = 1."""
    return (n, c) if batched else (1, c)


def scatter_ref(g, idx, nd, shape):
    """R.max_pool_backward, also for no planes (N = 0), which it cannot reshape."""
    if math.prod(shape[:-nd]) == 0:
        return np.zeros(shape)
    return R.max_pool_backward(g, idx, nd, shape)


def batch(x, batched):
    return x if batched else x[np.newaxis]


def unbatch(x, batched):
    return x if batched else x[0]


# --------------------------------------------------------------------------------------
# Sliding-window pooling: max, avg, lp in 1-D, 2-D, 3-D, forward and backward.
# --------------------------------------------------------------------------------------

WINDOW_FAULTS = ["dtype", "ndim", "kernel0", "kernel_float", "kernel_len",
                              "stride0", "dilation0", "pad_neg", "pad_str", "ceil_int",
                              "mode_bad", "op_bad"]


@st.composite
def window_draws(draw, nd, op, faults=WINDOW_FAULTS):
    """One draw of a sliding-window pooling: (case dict, Expect), with one bad argument
    drawn from `faults` (None: none)."""
    kernel = tuple(draw(st.integers(1, 4 if nd < 3 else 3)) for _ in range(nd))
    stride = draw(st.none() | st.tuples(*[st.integers(1, 3)] * nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    # a listed size (1, primes, ...) or one near the effective kernel (smaller than it
    # with padding, or a little larger)
    near = [st.integers(max(1, d * (k - 1) - 1), d * (k - 1) + 3)
            for k, d in zip(kernel, dilation)]
    in_size = tuple(draw(st.sampled_from(SIZES[nd]) | n) for n in near)
    form = draw(st.sampled_from(["int", "per_dim", "pairs", "valid", "same", "same_lower"]))
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]

    def pad(limit):  # mostly allowed pads (0..limit), sometimes one too many
        return st.sampled_from(list(range(limit + 1)) * 3 + [limit + 1])

    padding = {"int": pad(min(eff) // 2), "per_dim": st.tuples(*[pad(e // 2) for e in eff]),
               "pairs": st.tuples(*[st.tuples(pad(e - 1), pad(e - 1)) for e in eff])
               }.get(form, st.just(form))
    padding = draw(padding)
    geo = dict(kernel_size=kernel[0] if len(set(kernel)) == 1 and draw(st.booleans())
               else kernel, stride=stride, padding=padding, dilation=dilation,
               ceil_mode=draw(st.booleans()))
    mode = draw(st.sampled_from(["ignore", "ignore", "zeros", "edge", "reflect"]))
    batched = draw(st.booleans())
    lead = lead_dims(draw(st.integers(0, 2)), draw(st.integers(1, 3)), batched)
    dtype = draw(st.sampled_from(VALID_DTYPES))
    kind = draw(st.sampled_from(["normal", "ties", "nan"] if op == "max" else ["normal"]))
    case = dict(nd=nd, in_size=in_size, lead=lead, batched=batched, geo=geo, mode=mode,
                dtype=dtype, kind=kind, seed=draw(seeds), options={})
    if op == "avg":
        case["options"] = dict(count_include_pad=draw(st.booleans()),
                               divisor_override=draw(st.sampled_from([None, None, 1, 3, -2])))
    elif op == "lp":
        case["options"] = dict(norm_type=draw(st.sampled_from([1, 2, 3, 0.5, 1.5])))
    expect = Expect()
    window_rules(case, expect)
    fault = draw(fault_or_none(faults))
    apply_window_fault(draw, fault, case, op, expect)
    return case, expect


def window_rules(case, expect):
    """The documented geometric rejections (cpool._geometry, cpool._padding)."""
    geo, nd, in_size = case["geo"], case["nd"], case["in_size"]
    kernel = R._per_dim(geo["kernel_size"], nd)
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, geo["dilation"])]
    pads = R.resolve_pads(geo["padding"], in_size, kernel,
                          kernel if geo["stride"] is None else geo["stride"], geo["dilation"])
    if isinstance(geo["padding"], tuple) and isinstance(geo["padding"][0], tuple):
        too_large = any(max(p) >= e for p, e in zip(pads, eff))  # ONNX pairs: < e
    else:
        too_large = any(2 * max(p) > e for p, e in zip(pads, eff))  # PyTorch's ints: <= e/2
    if too_large:
        expect.reject(ValueError, "padding")
        return
    win = R.Windows(in_size, **geo)
    if min(win.out_size) <= 0:
        expect.reject(ValueError, "output size")
    elif case["mode"] == "reflect" and any(max(p) >= L for p, L in zip(pads, in_size)):
        expect.reject(ValueError, "reflect")


def apply_window_fault(draw, fault, case, op, expect):
    geo, nd = case["geo"], case["nd"]
    if fault == "dtype":
        case["dtype"] = draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault == "ndim":
        case["ndim_fault"] = True
        expect.reject(ValueError, r"\bx\b.*dims")
    elif fault == "kernel0":
        geo["kernel_size"] = (0,) + tuple(R._per_dim(geo["kernel_size"], nd))[1:]
        expect.reject(ValueError, "kernel_size")
    elif fault == "kernel_float":
        geo["kernel_size"] = 2.0
        expect.reject(TypeError, "kernel_size")
    elif fault == "kernel_len":
        geo["kernel_size"] = (2,) * (nd + 1)
        expect.reject(ValueError, "kernel_size")
    elif fault == "stride0":
        geo["stride"] = (1,) * (nd - 1) + (0,)
        expect.reject(ValueError, "stride")
    elif fault == "dilation0":
        geo["dilation"] = (0,) + tuple(geo["dilation"])[1:]
        expect.reject(ValueError, "dilation")
    elif fault == "pad_neg":
        geo["padding"] = -1
        expect.reject(ValueError, "padding")
    elif fault == "pad_str":
        geo["padding"] = draw(st.sampled_from(["full", "SAME", ""]))
        expect.reject(ValueError, "padding")
    elif fault == "ceil_int":
        geo["ceil_mode"] = 1
        expect.reject(TypeError, "ceil_mode")
    elif fault == "mode_bad":
        case["mode"] = draw(st.sampled_from(["constant", "wrap", "Zeros"]))
        expect.reject(ValueError, "padding_mode")
    elif fault == "op_bad" and op == "avg":
        bad, exc = draw(st.sampled_from([(0, ValueError), (1.5, TypeError), ("2", TypeError)]))
        case["options"]["divisor_override"] = bad
        expect.reject(exc, "divisor_override")
    elif fault == "op_bad" and op == "lp":
        bad, exc = draw(st.sampled_from(BAD_P))
        case["options"]["norm_type"] = bad
        expect.reject(exc, "norm_type")


def window_input(case, kind=None, dtype=None):
    dtype = case["dtype"] if dtype is None else dtype
    shape = case["lead"] + case["in_size"]
    if not case["batched"]:
        shape = shape[1:]
    if case.get("ndim_fault"):
        shape = shape[1:] if not case["batched"] else (1,) + shape
    return make_input(case["seed"], shape, dtype, kind or case["kind"])


def cpool_window(op, nd, backward=False):
    return getattr(F, f"{op}_pool{nd}d" + ("_backward" if backward else ""))


def reference_window(op, xb, case):
    """Reference forward on batched compute-dtype input: out (and indices for max)."""
    nd, geo, mode, options = case["nd"], case["geo"], case["mode"], case["options"]
    if mode != "ignore":
        return RU.pool_padded(op, xb, nd, mode, geo, **options)
    if op == "max":
        return R.max_pool(xb, nd, **geo)
    if op == "avg":
        return R.avg_pool(xb, nd, **geo, **options)
    return R.lp_pool(xb, nd, options["norm_type"], **geo)


def call_window(op, x, case, **extra):
    f = cpool_window(op, case["nd"])
    options = dict(case["options"])
    if op == "lp":
        return f(x, options.pop("norm_type"), **case["geo"], padding_mode=case["mode"],
                 **options, **extra)
    return f(x, **case["geo"], padding_mode=case["mode"], **options, **extra)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", ["max", "avg", "lp"])
@given(data=st.data())
def test_window_pool_forward(op, nd, data):
    case, expect = data.draw(window_draws(nd, op))
    x = window_input(case)
    want_indices = op == "max" and data.draw(st.booleans())
    extra = dict(return_indices=True) if want_indices else {}
    result = outcome(expect, lambda: call_window(op, x, case, **extra))
    if result is None:
        return
    xc = batch(x.astype(compute_dtype(x.dtype)), case["batched"])
    ref = reference_window(op, xc, case)
    if op == "max":
        out, idx = result if want_indices else (result, None)
        assert_matches(out, unbatch(ref[0], case["batched"]), x.dtype, exact=True,
                       keeps_ints=True)
        if want_indices:
            assert_indices(idx, unbatch(ref[1], case["batched"]))
    else:
        assert_matches(result, unbatch(ref, case["batched"]), x.dtype)


BACKWARD_FAULTS = ["grad_shape", "grad_dtype", "input_shape", "geometry"]


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", ["max", "avg", "lp"])
@given(data=st.data())
def test_window_pool_backward(op, nd, data):
    fault = data.draw(fault_or_none(BACKWARD_FAULTS))
    # "geometry": a bad forward argument, which the backward must refuse as well (max's
    # backward takes indices instead: there it means float indices)
    geometry = [f for f in WINDOW_FAULTS if f not in ("dtype", "ndim")]  # not about x
    case, expect = data.draw(window_draws(
        nd, op, faults=geometry if fault == "geometry" and op != "max" else []))
    if fault != "geometry":
        case["dtype"] = data.draw(st.sampled_from(FLOATS))
    if not expect.accepted:  # a bad geometry: the backward must refuse it as well
        if op == "max":
            return  # max backward takes indices, not the geometry
        x = window_input(case, kind="normal", dtype=np.float64)
        g = np.ones_like(x)  # no output shape exists to match: a grad_output error is fine
        expect.reject(ValueError, "grad_output")
        if op == "avg":
            outcome(expect, lambda: cpool_window(op, nd, True)(
                g, x.shape, **case["geo"], padding_mode=case["mode"], **case["options"]))
        else:
            outcome(expect, lambda: cpool_window(op, nd, True)(
                g, x, g, case["options"]["norm_type"], **case["geo"],
                padding_mode=case["mode"]))
        return
    kind = {"max": "distinct", "avg": "normal", "lp": "away0"}[op]
    x = window_input(case, kind=kind)
    batched = case["batched"]
    xb = batch(x, batched)
    if op == "max":
        y, idx = call_window(op, x, case, return_indices=True)
    else:
        y = call_window(op, x, case)
    g = make_input(case["seed"] + 1, y.shape, x.dtype)
    bexpect = Expect()
    g_in, idx_in, shape_in, y_in = g, idx if op == "max" else None, x.shape, y
    if fault == "grad_shape":
        g_in = np.zeros(g.shape[:-1] + (g.shape[-1] + 1,), g.dtype)
        bexpect.reject(ValueError, "grad_output")
    elif fault == "grad_dtype":
        g_in = g.astype(np.complex64)
        bexpect.reject(TypeError, "grad_output")
    elif fault == "input_shape":
        shape_in = x.shape[1:] if batched else (1, 1) + x.shape
        if op == "lp":  # takes x itself: a wrong y shape is its equivalent
            y_in = y[..., :-1] if y.shape[-1] > 1 else np.concatenate([y, y], axis=-1)
            bexpect.reject(ValueError, r"\by\b")
        else:
            bexpect.reject(ValueError, "input_shape|grad_output")
    if op == "max":
        if idx.size and (idx.max() >= math.prod(case["in_size"])):
            # a padding-only window reports PyTorch's index of its first tap at or after
            # 0, which can lie past the plane; the backward documents [0, plane) or -1
            bexpect.reject(ValueError, "indices")
        if fault == "geometry":
            idx_in = idx.astype(np.float64)
            bexpect.reject(TypeError, "indices")
    f = cpool_window(op, nd, backward=True)
    if op == "max":
        call = lambda: f(g_in, idx_in, shape_in)  # noqa: E731
    elif op == "avg":
        call = lambda: f(g_in, shape_in, **case["geo"], padding_mode=case["mode"],  # noqa: E731
                         **case["options"])
    else:
        call = lambda: f(g_in, x, y_in, case["options"]["norm_type"], **case["geo"],  # noqa: E731
                         padding_mode=case["mode"])
    grad = outcome(bexpect, call)
    if grad is None:
        return
    gb = batch(g.astype(np.float64), batched)
    if xb.size == 0:  # no planes: the references cannot reshape that
        ref = np.zeros(xb.shape)
    elif op == "max":
        ib = batch(idx, batched)
        zero = ib < 0  # a zero pad (padding_mode="zeros") passes no gradient
        ref = scatter_ref(np.where(zero, 0, gb), np.where(zero, 0, ib), nd, xb.shape)
    elif case["mode"] == "ignore" and op == "avg":
        ref = R.avg_pool_backward(gb, nd, xb.shape, **case["geo"], **case["options"])
    elif case["mode"] == "ignore":
        ref = R.lp_pool_backward(gb, xb, nd, case["options"]["norm_type"], **case["geo"])
    else:
        ref = RU.pool_padded_backward(op, gb, xb, nd, case["mode"], case["geo"],
                                      **case["options"])
    assert_matches(grad, unbatch(ref, batched), x.dtype)
    if fd_sized(x):
        assert_fd(lambda v: call_window(op, v, case), grad, x, g)


# --------------------------------------------------------------------------------------
# Max unpooling.
# --------------------------------------------------------------------------------------

@st.composite
def unpool_draws(draw, nd):
    in_size = tuple(draw(st.sampled_from((1, 2, 3, 5))) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = draw(st.none() | st.tuples(*[st.integers(1, 3)] * nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    s = kernel if stride is None else stride
    default = RU.unpool_default_size(in_size, kernel, s, padding)
    delta = tuple(draw(st.integers(-3, 3)) for _ in range(nd))
    output_size = draw(st.sampled_from(["none", "spatial", "whole"]))
    batched = draw(st.booleans())
    lead = lead_dims(draw(st.integers(0, 2)), draw(st.integers(1, 3)), batched)
    expect = Expect()
    if output_size == "none":
        out_spatial, output_arg = default, None
        if min(default) <= 0:
            expect.reject(ValueError, "unpooled size|padding")
    else:
        out_spatial = tuple(d + e for d, e in zip(default, delta))
        output_arg = out_spatial if output_size == "spatial" else \
            (lead if batched else lead[1:]) + out_spatial
        if any(o <= 0 or not d - st_ < o < d + st_
               for o, d, st_ in zip(out_spatial, default, s)):
            expect.reject(ValueError, "output_size")
    case = dict(nd=nd, in_size=in_size, lead=lead, batched=batched,
                window=dict(kernel_size=kernel, stride=stride, padding=padding),
                output_size=output_arg, out_spatial=out_spatial,
                dtype=draw(st.sampled_from(VALID_DTYPES)), seed=draw(seeds),
                unique=draw(st.booleans()))
    case["fault"] = fault = draw(fault_or_none(["dtype", "idx_dtype",
                                                              "idx_range", "idx_shape",
                                                              "kernel0"]))
    if fault == "dtype":
        case["dtype"] = draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault == "kernel0":
        case["window"]["kernel_size"] = 0
        expect.reject(ValueError, "kernel_size")
    return case, expect


def unpool_indices(case):
    """Indices within each output plane: unique per plane (a max pool's), or with repeats."""
    rng = np.random.default_rng(case["seed"] + 7)
    plane_out = max(math.prod(case["out_spatial"]), 1)
    m = math.prod(case["in_size"])
    planes = math.prod(case["lead"])
    rows = []
    for _ in range(planes):
        if case["unique"] and m <= plane_out:
            rows.append(rng.permutation(plane_out)[:m])
        else:
            rows.append(rng.integers(0, plane_out, m))
    idx = np.array(rows, dtype=np.int64).reshape(case["lead"] + case["in_size"])
    return idx if case["batched"] else idx[0]


@pytest.mark.parametrize("nd", [1, 2, 3])
@given(data=st.data())
def test_max_unpool_forward_and_backward(nd, data):
    case, expect = data.draw(unpool_draws(nd))
    shape = case["lead"] + case["in_size"]
    shape = shape if case["batched"] else shape[1:]
    x = make_input(case["seed"], shape, case["dtype"])
    idx = unpool_indices(case)
    fault, idx_in = case["fault"], idx
    if fault == "idx_dtype":
        idx_in = idx.astype(np.float64)
        expect.reject(TypeError, "indices")
    elif fault == "idx_range" and idx.size:
        idx_in = idx.copy()
        idx_in.flat[-1] = math.prod(case["out_spatial"])  # one past the plane
        expect.reject(ValueError, "indices")
    elif fault == "idx_shape":
        idx_in = idx[..., :-1] if idx.shape[-1] > 1 else np.concatenate([idx, idx], -1)
        expect.reject(ValueError, "indices")
    fwd = getattr(F, f"max_unpool{nd}d")
    out = outcome(expect, lambda: fwd(x, idx_in, **case["window"],
                                      output_size=case["output_size"]))
    if out is None:
        return
    xc = batch(x.astype(compute_dtype(x.dtype)), case["batched"])
    ref = RU.max_unpool(xc, batch(idx, case["batched"]), case["out_spatial"])
    assert_matches(out, unbatch(ref, case["batched"]), x.dtype, exact=True, keeps_ints=True)

    # backward: a gather from the output, with the same indices
    bwd = getattr(F, f"max_unpool{nd}d_backward")
    g = make_input(case["seed"] + 1, out.shape, data.draw(st.sampled_from(FLOATS)))
    grad = bwd(g, idx)
    ref = RU.max_unpool_backward(batch(g, case["batched"]), batch(idx, case["batched"]))
    assert_matches(grad, unbatch(ref, case["batched"]), g.dtype, exact=True)
    bad = np.concatenate([g, g], axis=-nd - 1)  # twice the channels of the indices
    outcome(_rejects(ValueError, "grad_output"), lambda: bwd(bad, idx))
    if fd_sized(x.astype(np.float64)) and _unique_per_plane(idx, case):
        # with repeated indices the forward keeps the later value while the backward
        # feeds both (PyTorch's rule, documented): only unique indices are a derivative
        xf = x.astype(np.float64)
        gf = g.astype(np.float64)
        grad = bwd(gf, idx)
        assert_fd(lambda v: fwd(v, idx, **case["window"], output_size=case["output_size"]),
                  grad, xf, gf)


def _unique_per_plane(idx, case):
    planes = batch(idx, case["batched"]).reshape(math.prod(case["lead"]),
                                                 math.prod(case["in_size"]))
    return all(len(set(row.tolist())) == row.size for row in planes)


def _rejects(exc, pattern):
    e = Expect()
    e.reject(exc, pattern)
    return e


# --------------------------------------------------------------------------------------
# Fractional max pooling.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [2, 3])
@given(data=st.data())
def test_fractional_max_pool(nd, data):
    in_size = tuple(data.draw(st.sampled_from((1, 2, 3, 5, 7 if nd == 2 else 4)))
                    for _ in range(nd))
    kernel = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    batched = data.draw(st.booleans())
    lead = lead_dims(data.draw(st.integers(0, 2)), data.draw(st.integers(1, 2)), batched)
    dtype = data.draw(st.sampled_from(VALID_DTYPES))
    seed = data.draw(seeds)
    expect = Expect()
    use_ratio = data.draw(st.booleans())
    if use_ratio:
        ratio = tuple(data.draw(st.sampled_from([0.3, 0.5, 0.75, 0.99])) for _ in range(nd))
        out_size = tuple(int(L * r) for L, r in zip(in_size, ratio))
        sizes = dict(output_ratio=ratio)
        if min(out_size) < 1:
            expect.reject(ValueError, "output_ratio|output size")
    else:
        out_size = tuple(data.draw(st.integers(1, 5)) for _ in range(nd))
        sizes = dict(output_size=out_size)
    if min(out_size) >= 1 and any(o + k - 1 > L for o, k, L in zip(out_size, kernel, in_size)):
        expect.reject(ValueError, "output_size")
    cdt = compute_dtype(dtype)
    samples = np.random.default_rng(seed + 3).random(lead + (nd,)).astype(cdt)
    samples = np.minimum(samples, np.nextafter(cdt.type(1), cdt.type(0)))
    fault = data.draw(fault_or_none(["both", "neither", "ratio", "samples",
                                                    "samples_shape", "dtype"]))
    if fault == "both":
        sizes = dict(output_size=(1,) * nd, output_ratio=0.5)
        expect.reject(ValueError, "exactly one")
    elif fault == "neither":
        sizes = {}
        expect.reject(ValueError, "exactly one")
    elif fault == "ratio":
        sizes = dict(output_ratio=data.draw(st.sampled_from([0, 1, 1.5, -0.5])))
        expect.reject(ValueError, "output_ratio")
    elif fault == "samples" and samples.size:
        samples = samples.copy()
        samples.flat[-1] = data.draw(st.sampled_from([1.0, 1.5, -0.25]))
        expect.reject(ValueError, "random_samples")
    elif fault == "samples_shape":
        samples = samples[..., :-1]
        expect.reject(ValueError, "random_samples")
    elif fault == "dtype":
        dtype = data.draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    x = make_input(seed, (lead if batched else lead[1:]) + in_size, dtype,
                   data.draw(st.sampled_from(["normal", "ties", "nan"])))
    fwd = getattr(F, f"fractional_max_pool{nd}d")
    u = samples if batched else samples[0]
    result = outcome(expect, lambda: fwd(x, kernel, **sizes, return_indices=True,
                                         random_samples=u))
    if result is None:
        return
    out, idx = result
    xc = batch(x.astype(cdt), batched)
    ref_out, ref_idx = RU.fractional_max_pool(xc, kernel, out_size, samples)
    assert_matches(out, unbatch(ref_out, batched), x.dtype, exact=True)
    assert_indices(idx, unbatch(ref_idx, batched))
    # backward from the indices, against the scatter reference and finite differences
    bwd = getattr(F, f"fractional_max_pool{nd}d_backward")
    g = make_input(seed + 1, out.shape, np.float64)
    grad = bwd(g, idx, x.shape)
    ref = scatter_ref(batch(g, batched), batch(idx, batched), nd, xc.shape)
    assert_matches(grad, unbatch(ref, batched), g.dtype)
    xd = make_input(seed, x.shape, np.float64, "distinct")
    if fd_sized(xd):
        _, idx_d = fwd(xd, kernel, **sizes, return_indices=True, random_samples=u)
        assert_fd(lambda v: fwd(v, kernel, **sizes, random_samples=u), bwd(g, idx_d, x.shape),
                  xd, g)
    outcome(_rejects(TypeError, "indices"), lambda: bwd(g, idx.astype(np.float32), x.shape))


# --------------------------------------------------------------------------------------
# Global, adaptive, binned and spatial pyramid pooling.
# --------------------------------------------------------------------------------------

def bin_kind(mode, backward):
    if not backward:
        return ["normal", "ties", "nan"] if mode == "max" else ["normal", "ties"]
    return [{"max": "distinct", "avg": "normal", "lp": "away0"}[mode]]


def check_bin_backward(grad, g, xb, bins, mode, p, batched, dtype, forward):
    """grad == reference gradient of bin pooling over `bins`, and == finite differences
    of `forward` on small float64 draws."""
    ref = RB.ref_bin_pool_backward(g.reshape(xb.shape[:2] + tuple(len(b) for b in bins)),
                                   xb.astype(np.float64), bins, mode, p)
    assert_matches(grad, unbatch(ref, batched), dtype)
    x = unbatch(xb, batched)
    if fd_sized(x):
        assert_fd(forward, grad, x.copy(), g)


@pytest.mark.parametrize("mode", ["max", "avg", "lp"])
@given(data=st.data())
def test_global_pool(mode, data):
    nd = data.draw(st.integers(1, 3))
    backward = data.draw(st.booleans())
    shape = (data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3))) + tuple(
        data.draw(st.sampled_from(SIZES[nd])) for _ in range(nd))
    dtype = data.draw(st.sampled_from(FLOATS if backward else VALID_DTYPES))
    keepdims = data.draw(st.booleans())
    p = data.draw(st.sampled_from([1, 2, 3, 0.5]))
    expect = Expect()
    fault = data.draw(fault_or_none(["dtype", "ndim", "empty", "keepdims", "p"]))
    if fault == "dtype":
        dtype = data.draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault == "ndim":
        # 1 or 6 dims (global pooling takes batched (N, C, *spatial) input only)
        shape = shape[-1:] if data.draw(st.booleans()) else shape + (1,) * (6 - len(shape))
        expect.reject(ValueError, r"\bx\b")
    elif fault == "empty":
        shape = shape[:-1] + (0,)
        expect.reject(ValueError, "non-empty")
    elif fault == "keepdims":
        keepdims = data.draw(st.sampled_from([1, None, "yes"]))
        expect.reject(TypeError, "keepdims")
    elif fault == "p" and mode == "lp":
        p, exc = data.draw(st.sampled_from(BAD_P))
        expect.reject(exc, r"\bp\b")
    x = make_input(data.draw(seeds), shape, dtype,
                   data.draw(st.sampled_from(bin_kind(mode, backward))))
    f = getattr(F, f"global_{mode}_pool")
    extra = dict(p=p) if mode == "lp" else {}
    y = outcome(expect, lambda: f(x, keepdims=keepdims, **extra))
    if y is None:
        return
    xc = x.astype(compute_dtype(x.dtype))
    bins = RB.ref_whole_bins(x.shape[2:])
    ref, _ = RB.ref_bin_pool(xc, bins, mode, p)
    assert_matches(y, ref if keepdims else ref.reshape(x.shape[:2]), x.dtype,
                   exact=mode == "max", keeps_ints=mode == "max")
    if not backward:
        return
    g = make_input(data.draw(seeds), y.shape, x.dtype)
    b = getattr(F, f"global_{mode}_pool_backward")
    grad = {"max": lambda: b(g, x), "avg": lambda: b(g, x.shape),
            "lp": lambda: b(g, x, p=p)}[mode]()
    check_bin_backward(grad, g, x, bins, mode, p, True, x.dtype,
                       lambda v: f(v, keepdims=keepdims, **extra))
    bad = np.zeros(y.shape[:1] + (y.shape[1] + 1,) + y.shape[2:])
    outcome(_rejects(ValueError, "grad_output"),
            {"max": lambda: b(bad, x), "avg": lambda: b(bad, x.shape),
             "lp": lambda: b(bad, x, p=p)}[mode])


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", ["max", "avg"])
@given(data=st.data())
def test_adaptive_pool(mode, nd, data):
    backward = data.draw(st.booleans())
    in_size = tuple(data.draw(st.sampled_from(SIZES[nd])) for _ in range(nd))
    batched = data.draw(st.booleans())
    lead = lead_dims(data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3)), batched)
    out_items = [data.draw(st.none() | st.integers(1, 6)) for _ in range(nd)]
    if data.draw(st.booleans()) and out_items[0] is not None:
        output_size = out_items[0]  # a plain int: every dim
        out_size = (output_size,) * nd
    else:
        output_size = tuple(out_items)
        out_size = tuple(L if o is None else o for o, L in zip(out_items, in_size))
    dtype = data.draw(st.sampled_from(FLOATS if backward else VALID_DTYPES))
    expect = Expect()
    fault = data.draw(fault_or_none(["dtype", "ndim", "empty", "size0",
                                                    "size_len", "size_type"]))
    if fault == "dtype":
        dtype = data.draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault == "ndim":
        batched = None  # nd dims: neither batched nor unbatched
        expect.reject(ValueError, r"\bx\b")
    elif fault == "empty":
        in_size = in_size[:-1] + (0,)
        expect.reject(ValueError, "non-empty")
    elif fault == "size0":
        output_size = (0,) * nd
        expect.reject(ValueError, "output_size")
    elif fault == "size_len":
        output_size = (2,) * (nd + 1)
        expect.reject(ValueError, "output_size")
    elif fault == "size_type":
        output_size, exc = data.draw(st.sampled_from([(None, TypeError), (2.0, TypeError),
                                                      ("2", TypeError)]))
        expect.reject(exc, "output_size")
    shape = {True: lead + in_size, False: lead[1:] + in_size, None: in_size}[batched]
    x = make_input(data.draw(seeds), shape, dtype,
                   data.draw(st.sampled_from(bin_kind(mode, backward))))
    f = getattr(F, f"adaptive_{mode}_pool{nd}d")
    extra = dict(return_indices=True) if mode == "max" else {}
    result = outcome(expect, lambda: f(x, output_size, **extra))
    if result is None:
        return
    y, idx = result if mode == "max" else (result, None)
    xb = batch(x.astype(compute_dtype(x.dtype)), batched)
    bins = [RB.ref_adaptive_bins(L, o) for L, o in zip(in_size, out_size)]
    ref, ref_idx = RB.ref_bin_pool(xb, bins, mode)
    assert_matches(y, unbatch(ref, batched), x.dtype, exact=mode == "max",
                   keeps_ints=mode == "max")
    if mode == "max":
        assert_indices(idx, unbatch(ref_idx, batched))
    if not backward:
        return
    g = make_input(data.draw(seeds), y.shape, x.dtype)
    b = getattr(F, f"adaptive_{mode}_pool{nd}d_backward")
    grad = b(g, idx, x.shape) if mode == "max" else b(g, x.shape)
    check_bin_backward(grad, g, xb, bins, mode, 2.0, batched, x.dtype,
                       lambda v: f(v, output_size))
    if mode == "max":
        outcome(_rejects(TypeError, "indices"), lambda: b(g, idx.astype(float), x.shape))
    short = x.shape[:1]  # too few entries for any input shape
    outcome(_rejects(ValueError, "input_shape"),
            lambda: b(g, idx, short) if mode == "max" else b(g, short))


@st.composite
def bins_for(draw, in_size):
    """One list of (start, end) pairs per axis, each 0 <= start < end <= L: random sizes,
    overlaps, gaps and order."""
    bins = []
    for L in in_size:
        axis = []
        for _ in range(draw(st.integers(1, 4))):
            s = draw(st.integers(0, max(L - 1, 0)))
            axis.append((s, draw(st.integers(s + 1, max(L, s + 1)))))
        bins.append(axis)
    return bins


@pytest.mark.parametrize("mode", ["max", "avg", "lp"])
@given(data=st.data())
def test_bin_pool(mode, data):
    nd = data.draw(st.integers(1, 3))
    backward = data.draw(st.booleans())
    in_size = tuple(data.draw(st.sampled_from(SIZES[nd])) for _ in range(nd))
    bins = data.draw(bins_for(in_size))
    batched = data.draw(st.booleans())
    lead = lead_dims(data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3)), batched)
    dtype = data.draw(st.sampled_from(FLOATS if backward else VALID_DTYPES))
    p = data.draw(st.sampled_from([1, 2, 3, 0.5]))
    expect = Expect()
    bins_arg, mode_arg, p_arg = bins, mode, p
    fault = data.draw(fault_or_none(["dtype", "empty_bin", "past_end", "negative",
                                                    "float_bins", "not_seq", "axes", "mode",
                                                    "p"]))
    if fault == "dtype":
        dtype = data.draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault in ("empty_bin", "past_end", "negative"):
        L = in_size[-1]
        bad = {"empty_bin": (1, 1), "past_end": (0, L + 1), "negative": (-1, 1)}[fault]
        bins_arg = bins[:-1] + [bins[-1] + [bad]]
        expect.reject(ValueError, r"bins\[")
    elif fault == "float_bins":
        bins_arg = bins[:-1] + [np.asarray(bins[-1], dtype=np.float64)]
        expect.reject(TypeError, r"bins\[")
    elif fault == "not_seq":
        bins_arg = data.draw(st.sampled_from([3, "0,1", None]))
        expect.reject(TypeError, "bins")
    elif fault == "axes":
        bins_arg = [[(0, 1)]] * 4
        expect.reject(ValueError, "bins")
    elif fault == "mode":
        mode_arg = data.draw(st.sampled_from(["mean", "MAX", "sum"]))
        expect.reject(ValueError, "mode")
    elif fault == "p":
        p_arg, exc = data.draw(st.sampled_from(BAD_P))
        expect.reject(exc, r"\bp\b")
    shape = (lead if batched else lead[1:]) + in_size
    x = make_input(data.draw(seeds), shape, dtype,
                   data.draw(st.sampled_from(bin_kind(mode, backward))))
    y = outcome(expect, lambda: F.bin_pool(x, bins_arg, mode=mode_arg, p=p_arg))
    if y is None:
        return
    xb = batch(x.astype(compute_dtype(x.dtype)), batched)
    ref, _ = RB.ref_bin_pool(xb, bins, mode, p)
    assert_matches(y, unbatch(ref, batched), x.dtype, exact=mode == "max",
                   keeps_ints=mode == "max")
    if not backward:
        return
    g = make_input(data.draw(seeds), y.shape, x.dtype)
    grad = F.bin_pool_backward(g, x, bins, mode=mode, p=p)
    check_bin_backward(grad, g, xb, bins, mode, p, batched, x.dtype,
                       lambda v: F.bin_pool(v, bins, mode=mode, p=p))


@given(length=st.integers(-1, 40), out=st.integers(-1, 12), as_numpy=st.booleans())
def test_adaptive_bins(length, out, as_numpy):
    expect = Expect()
    if length < 1:
        expect.reject(ValueError, "length")
    if out < 1:
        expect.reject(ValueError, "output_size")
    args = (np.int64(length), np.int32(out)) if as_numpy else (length, out)
    bins = outcome(expect, lambda: F.adaptive_bins(*args))
    if bins is not None:
        assert bins.dtype.kind == "i" and bins.shape == (out, 2)
        assert bins.tolist() == [list(b) for b in RB.ref_adaptive_bins(length, out)]
    outcome(_rejects(TypeError, "length"), lambda: F.adaptive_bins(4.0, 2))


SIZE_FUNCS = {"grow": lambda pos: 1 + pos % 3, "borders": lambda pos: 2 if pos < 3 else 4}


def ref_window_bins(length, sizes, strides, start):
    """window_bins from its docstring: window i covers [pos_i, min(pos_i + size_i, length))
    and pos_{i+1} = pos_i + stride_i; one window per entry of a sequence of sizes, else
    windows while pos < length. Returns (bins, predicted error pattern or None)."""
    if start >= length:
        return None, "start"
    fixed = isinstance(sizes, list)
    pos, i, bins = start, 0, []
    while (i < len(sizes)) if fixed else (pos < length):
        if pos >= length:
            return None, "past the end"
        size = sizes[i] if fixed else sizes(pos) if callable(sizes) else sizes
        if size < 1:
            return None, "sizes"
        bins.append((pos, min(pos + size, length)))
        if strides is None:
            step = size
        elif isinstance(strides, list):
            if i >= len(strides):
                return None, "strides"
            step = strides[i]
        else:
            step = strides(pos) if callable(strides) else strides
        if step < 1:
            return None, "strides"
        pos += step
        i += 1
    return bins, None


@given(length=st.integers(1, 20), start=st.integers(0, 21),
       sizes=st.integers(0, 5) | st.lists(st.integers(0, 5), min_size=1, max_size=6)
       | st.sampled_from(sorted(SIZE_FUNCS)),
       strides=st.none() | st.integers(0, 4) | st.lists(st.integers(1, 4), min_size=1,
                                                         max_size=24))
def test_window_bins(length, start, sizes, strides):
    sizes = SIZE_FUNCS.get(sizes, sizes) if isinstance(sizes, str) else sizes
    ref, error = ref_window_bins(length, sizes, strides, start)
    expect = Expect()
    if error:
        expect.reject(ValueError, error)
    bins = outcome(expect, lambda: F.window_bins(length, sizes, strides=strides, start=start))
    if bins is not None:
        assert bins.dtype.kind == "i" and bins.tolist() == [list(b) for b in ref]


@given(data=st.data())
def test_spatial_pyramid_pool(data):
    mode = data.draw(st.sampled_from(["max", "avg"]))
    backward = data.draw(st.booleans())
    in_size = tuple(data.draw(st.sampled_from(SIZES[2])) for _ in range(2))
    batched = data.draw(st.booleans())
    lead = lead_dims(data.draw(st.integers(0, 2)), data.draw(st.integers(1, 3)), batched)
    levels = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    dtype = data.draw(st.sampled_from(FLOATS if backward else VALID_DTYPES))
    expect = Expect()
    levels_arg, mode_arg = levels, mode
    fault = data.draw(fault_or_none(["dtype", "empty", "levels", "mode"]))
    if fault == "dtype":
        dtype = data.draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault == "empty":
        in_size = (in_size[0], 0)
        expect.reject(ValueError, "non-empty")
    elif fault == "levels":
        levels_arg, exc = data.draw(st.sampled_from([([], ValueError), ([2, 0], ValueError),
                                                     (3, TypeError), ([1.5], TypeError)]))
        expect.reject(exc, "levels")
    elif fault == "mode":
        mode_arg = data.draw(st.sampled_from(["lp", "mean"]))
        expect.reject(ValueError, "mode")
    x = make_input(data.draw(seeds), (lead if batched else lead[1:]) + in_size, dtype,
                   data.draw(st.sampled_from(bin_kind(mode, backward))))
    y = outcome(expect, lambda: F.spatial_pyramid_pool(x, levels_arg, mode_arg))
    if y is None:
        return
    xb = batch(x.astype(compute_dtype(x.dtype)), batched)
    ref = RB.ref_spatial_pyramid_pool(xb, levels, mode) if xb.size else \
        np.zeros((0, xb.shape[1] * sum(v * v for v in levels)))  # (reference: no empty batch)
    assert_matches(y, unbatch(ref, batched), x.dtype, exact=mode == "max",
                   keeps_ints=mode == "max")
    if not backward:
        return
    g = make_input(data.draw(seeds), y.shape, x.dtype)
    grad = F.spatial_pyramid_pool_backward(g, x, levels, mode)
    ref = RB.ref_spatial_pyramid_pool_backward(batch(g, batched), xb, levels, mode) \
        if xb.size else np.zeros(xb.shape)  # the reference cannot reshape an empty batch
    assert_matches(grad, unbatch(ref, batched), x.dtype)
    if fd_sized(x):
        assert_fd(lambda v: F.spatial_pyramid_pool(v, levels, mode), grad, x.copy(), g)
    outcome(_rejects(ValueError, "grad_output"),
            lambda: F.spatial_pyramid_pool_backward(g[..., :-1], x, levels, mode))


# --------------------------------------------------------------------------------------
# RoI pooling and RoI align.
# --------------------------------------------------------------------------------------

@st.composite
def roi_draws(draw, align):
    """x, boxes and options of a RoI pooling draw (case dict, Expect)."""
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.sampled_from(SIZES[2])), draw(st.sampled_from(SIZES[2]))
    K = draw(st.integers(0, 3))
    quarter = st.integers(-8, 4 * 9).map(lambda v: v / 4)  # hits C round()'s halves
    extent = st.integers(0, 4 * 8).map(lambda v: v / 4)
    rois = []
    for _ in range(K):
        x1, y1 = draw(quarter), draw(quarter)
        rois.append([x1, y1, x1 + draw(extent), y1 + draw(extent)])
    rois = np.array(rois, dtype=np.float64).reshape(K, 4)
    out_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    case = dict(shape=(N, C, H, W), rois=rois,
                batch=np.array([draw(st.integers(0, N - 1)) for _ in range(K)], np.int64),
                output_size=out_size if draw(st.booleans()) or out_size[0] != out_size[1]
                else out_size[0], out_size=out_size,
                spatial_scale=draw(st.sampled_from([1.0, 0.5, 2.0, 0.25])),
                dtype=draw(st.sampled_from(VALID_DTYPES)), seed=draw(seeds), options={})
    if align:
        case["options"] = dict(sampling_ratio=draw(st.integers(0, 2)),
                               aligned=draw(st.booleans()),
                               mode=draw(st.sampled_from(["avg", "max"])))
    expect = Expect()
    faults = ["dtype", "ndim", "rois_shape", "rois_order", "rois_nan", "rois_huge",
              "batch_range", "batch_float", "batch_len", "size0", "scale"]
    if align:
        faults += ["ratio", "aligned", "mode"]
    fault = draw(fault_or_none(faults))
    row = [[1.0, 1.0, 2.0, 2.0]]
    if fault == "dtype":
        case["dtype"] = draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault == "ndim":
        case["shape"] = case["shape"][1:]
        expect.reject(ValueError, r"\bx\b")
    elif fault == "rois_shape":
        case["rois"] = np.zeros((K, 5))
        expect.reject(ValueError, "rois")
    elif fault in ("rois_order", "rois_nan", "rois_huge"):
        bad = {"rois_order": [2.0, 1.0, 1.0, 2.0], "rois_nan": [0.0, np.nan, 1.0, 1.0],
               "rois_huge": [0.0, 0.0, 2.0**30, 1.0]}[fault]
        case["rois"] = np.vstack([case["rois"], [bad]])
        case["batch"] = np.append(case["batch"], 0)
        expect.reject(ValueError, "rois")
    elif fault == "batch_range":
        case["rois"] = np.vstack([case["rois"], row])
        case["batch"] = np.append(case["batch"], draw(st.sampled_from([N, -1])))
        expect.reject(ValueError, "batch_indices")
    elif fault == "batch_float":
        case["batch"] = np.append(case["batch"], 0).astype(np.float64)
        case["rois"] = np.vstack([case["rois"], row])
        expect.reject(TypeError, "batch_indices")
    elif fault == "batch_len":
        case["batch"] = np.append(case["batch"], 0)
        expect.reject(ValueError, "batch_indices")
    elif fault == "size0":
        case["output_size"] = (0, 2)
        expect.reject(ValueError, "output_size")
    elif fault == "scale":
        case["spatial_scale"], exc = draw(st.sampled_from([(0.0, ValueError),
                                                           (-1.0, ValueError),
                                                           (math.inf, ValueError),
                                                           ("1", TypeError)]))
        expect.reject(exc, "spatial_scale")
    elif fault == "ratio":
        case["options"]["sampling_ratio"], exc = draw(st.sampled_from([(-1, ValueError),
                                                                      (1.5, TypeError)]))
        expect.reject(exc, "sampling_ratio")
    elif fault == "aligned":
        case["options"]["aligned"] = draw(st.sampled_from([1, "yes", None]))
        expect.reject(TypeError, "aligned")
    elif fault == "mode":
        case["options"]["mode"] = draw(st.sampled_from(["mean", "Max", "bilinear"]))
        expect.reject(ValueError, "mode")
    return case, expect


def roi_call(f, x, case, **extra):
    return f(x, case["rois"], case["batch"], case["output_size"],
             spatial_scale=case["spatial_scale"], **case["options"], **extra)


@given(case_expect=roi_draws(align=False), kind=st.sampled_from(["normal", "ties", "nan"]),
       backward=st.booleans())
def test_roi_pool(case_expect, kind, backward):
    case, expect = case_expect
    x = make_input(case["seed"], case["shape"], case["dtype"], "distinct" if backward else kind)
    result = outcome(expect, lambda: roi_call(F.roi_pool, x, case, return_indices=True))
    if result is None:
        return
    out, idx = result
    xc = x.astype(compute_dtype(x.dtype))
    ref, ref_idx = RR.roi_pool(xc, case["rois"], case["batch"], case["out_size"],
                               case["spatial_scale"])
    assert_matches(out, ref, x.dtype, exact=True)
    assert_indices(idx, ref_idx)
    if not backward:
        return
    g = make_input(case["seed"] + 1, out.shape, np.float64)
    grad = F.roi_pool_backward(g, idx, case["batch"], x.shape)
    assert_matches(grad, RR.roi_pool_grad(g, idx, case["batch"], x.shape), g.dtype)
    if fd_sized(x):
        assert_fd(lambda v: roi_call(F.roi_pool, v, case), grad, x.copy(), g)
    plane = x.shape[2] * x.shape[3]
    for bad, exc in [(idx.astype(np.float32), TypeError),
                     (np.full_like(idx, plane), ValueError)]:
        if idx.size:
            outcome(_rejects(exc, "indices"),
                    lambda: F.roi_pool_backward(g, bad, case["batch"], x.shape))


@given(case_expect=roi_draws(align=True), backward=st.booleans())
def test_roi_align(case_expect, backward):
    case, expect = case_expect
    x = make_input(case["seed"], case["shape"], case["dtype"])
    out = outcome(expect, lambda: roi_call(F.roi_align, x, case))
    if out is None:
        return
    xc = x.astype(compute_dtype(x.dtype))
    ref = RR.roi_align(xc, case["rois"], case["batch"], case["out_size"],
                       case["spatial_scale"], **case["options"])
    assert_matches(out, ref, x.dtype)
    if not backward or x.dtype not in FLOATS:
        return
    g = make_input(case["seed"] + 1, out.shape, x.dtype)
    grad = F.roi_align_backward(g, case["rois"], case["batch"], x.shape,
                                spatial_scale=case["spatial_scale"], **case["options"], x=x)
    ref = RR.roi_align_grad(g, x, case["rois"], case["batch"], case["spatial_scale"],
                            **case["options"])
    assert_matches(grad, ref, x.dtype)
    # "avg" is linear in x; "max" picks among weighted corner terms, many of them ties at
    # exactly 0 (weight-0 corners), where a difference quotient is not the derivative
    if fd_sized(x) and case["options"]["mode"] == "avg":
        assert_fd(lambda v: roi_call(F.roi_align, v, case), grad, x.copy(), g)


# --------------------------------------------------------------------------------------
# Masked sequence pooling.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["mean", "max", "sum", "first", "last"])
@given(data=st.data())
def test_sequence_pool(mode, data):
    backward = data.draw(st.booleans())
    layout = data.draw(st.sampled_from(["NLC", "NCL"]))
    N, L, C = data.draw(st.integers(0, 3)), data.draw(st.sampled_from((0, 1, 2, 3, 5, 7))), \
        data.draw(st.integers(1, 3))
    seed = data.draw(seeds)
    rng = np.random.default_rng(seed + 5)
    valid = data.draw(st.sampled_from(["none", "lengths", "mask", "int_mask"]))
    lengths = mask = None
    if valid == "lengths":
        lengths = rng.integers(0, L + 1, N)
        lengths = lengths.tolist() if data.draw(st.booleans()) else lengths
    elif valid != "none":
        mask = rng.random((N, L)) < 0.6
        mask = mask.astype(np.int64) if valid == "int_mask" else mask
    dtype = data.draw(st.sampled_from(FLOATS if backward else VALID_DTYPES))
    expect = Expect()
    mode_arg, layout_arg = mode, layout
    fault = data.draw(fault_or_none(["dtype", "ndim", "both", "lengths_range",
                                                    "lengths_float", "mask_values",
                                                    "mask_float", "mask_shape", "mode",
                                                    "layout"]))
    if fault == "dtype":
        dtype = data.draw(st.sampled_from(BAD_DTYPES))
        expect.reject(TypeError, r"\bx\b")
    elif fault == "ndim":
        expect.reject(ValueError, r"\bx\b")
    elif fault == "both":
        lengths, mask = np.zeros(N, np.int64), np.ones((N, L), bool)
        expect.reject(ValueError, "lengths or mask")
    elif fault == "lengths_range":
        lengths, mask = np.full(N + 1, L + 1)[:N] if N else [], None
        if N:
            expect.reject(ValueError, "lengths")
    elif fault == "lengths_float":
        lengths, mask = np.zeros(N) + 0.5, None
        if N:  # an empty float list is accepted as empty
            expect.reject(TypeError, "lengths")
    elif fault == "mask_values":
        lengths, mask = None, np.full((N, L), 2, np.int64)
        if N * L:
            expect.reject(ValueError, "mask")
    elif fault == "mask_float":
        lengths, mask = None, np.ones((N, L), np.float32)
        expect.reject(TypeError, "mask")
    elif fault == "mask_shape":
        lengths, mask = None, np.ones((N, L + 1), bool)
        expect.reject(ValueError, "mask")
    elif fault == "mode":
        mode_arg = data.draw(st.sampled_from(["avg", "Mean", "median"]))
        expect.reject(ValueError, "mode")
    elif fault == "layout":
        layout_arg = data.draw(st.sampled_from(["NHC", "nlc", "LNC"]))
        expect.reject(ValueError, "layout")
    shape = (N, L, C) if layout == "NLC" else (N, C, L)
    if fault == "ndim":
        shape = shape[1:]
    kind = {"max": "distinct"}.get(mode, "normal") if backward else \
        data.draw(st.sampled_from(["normal", "ties", "nan"]))
    x = make_input(seed, shape, dtype, kind)
    y = outcome(expect, lambda: F.sequence_pool(x, lengths, mask, mode_arg, layout_arg))
    if y is None:
        return
    xc = x.astype(compute_dtype(x.dtype))
    ref, _ = RS.sequence_pool(xc, lengths, mask, mode, layout)
    assert_matches(y, ref, x.dtype, exact=mode in ("max", "first", "last"))
    if not backward:
        return
    g = make_input(seed + 1, y.shape, x.dtype)
    grad = F.sequence_pool_backward(g, x.shape, lengths, mask, mode, layout,
                                    x=x if mode == "max" else None)
    assert_matches(grad, RS.sequence_pool_grad(g, x, lengths, mask, mode, layout), x.dtype)
    if fd_sized(x):
        assert_fd(lambda v: F.sequence_pool(v, lengths, mask, mode, layout), grad, x.copy(), g)
    outcome(_rejects(ValueError, "grad_output"),
            lambda: F.sequence_pool_backward(g[:, :0], x.shape, lengths, mask, mode, layout,
                                             x=x))
    if mode == "max":
        outcome(_rejects(ValueError, r"\bx\b"),
                lambda: F.sequence_pool_backward(g, x.shape, lengths, mask, mode, layout))


# --------------------------------------------------------------------------------------
# Every public operator is covered above.
# --------------------------------------------------------------------------------------

def _names(pattern, *groups):
    return {pattern.format(*g) for g in groups}


COVERED = {
    "test_window_pool_forward": _names("{}_pool{}d", *[(op, nd) for op in ("max", "avg", "lp")
                                                       for nd in (1, 2, 3)]),
    "test_window_pool_backward": _names("{}_pool{}d_backward",
                                        *[(op, nd) for op in ("max", "avg", "lp")
                                          for nd in (1, 2, 3)]),
    "test_max_unpool_forward_and_backward": _names("max_unpool{}d{}", *[
        (nd, b) for nd in (1, 2, 3) for b in ("", "_backward")]),
    "test_fractional_max_pool": _names("fractional_max_pool{}d{}", *[
        (nd, b) for nd in (2, 3) for b in ("", "_backward")]),
    "test_global_pool": _names("global_{}_pool{}", *[(m, b) for m in ("max", "avg", "lp")
                                                     for b in ("", "_backward")]),
    "test_adaptive_pool": _names("adaptive_{}_pool{}d{}", *[
        (m, nd, b) for m in ("max", "avg") for nd in (1, 2, 3) for b in ("", "_backward")]),
    "test_bin_pool": {"bin_pool", "bin_pool_backward"},
    "test_adaptive_bins": {"adaptive_bins"},
    "test_window_bins": {"window_bins"},
    "test_spatial_pyramid_pool": {"spatial_pyramid_pool", "spatial_pyramid_pool_backward"},
    "test_roi_pool": {"roi_pool", "roi_pool_backward"},
    "test_roi_align": {"roi_align", "roi_align_backward"},
    "test_sequence_pool": {"sequence_pool", "sequence_pool_backward"},
}


def test_every_public_operator_has_a_property_test():
    covered = set().union(*COVERED.values())
    assert not set(F.__all__) - covered, \
        f"operators without a property test: {sorted(set(F.__all__) - covered)}"
    assert covered <= set(F.__all__), f"stale names: {sorted(covered - set(F.__all__))}"
    for test in COVERED:
        assert callable(globals()[test])
