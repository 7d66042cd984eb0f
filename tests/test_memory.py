"""Memory: no growth over many calls of every operator, and a forward call allocates
nothing beyond what it returns.

* Leaks: every operator in cpool.functional.__all__ is called repeatedly on inputs whose
  rows are 128 to 512 elements wide, so that leaking a kernel's row scratch costs at
  least ~512 bytes a call. The resident set size (/proc/self/statm, Linux; free heap
  memory handed back first) may not grow by more than RSS_BOUND over the calls; no
  input's reference count may change; results must be freed when dropped.
* Allocation: tracemalloc sees NumPy's allocations; the peak of one forward call on a
  large C-contiguous float32 input may exceed the bytes it returns (output, and indices
  when asked for) by at most a few KiB of bookkeeping plus 1% of those bytes.
"""
import ctypes
import ctypes.util
import functools
import gc
import math
import os
import sys
import time
import tracemalloc
import weakref

import numpy as np
import pytest

import cpool
from cpool import functional as F
from tests.operator_calls import arrays_of, operator_calls, results_of

# 10,000 calls of each of the 58 operators would take ~30 s on a busy 2-core machine, so
# each operator gets 10,000 calls or CALL_BUDGET_S seconds' worth, but at least
# MIN_CALLS: with rows >= 128 elements any per-call leak is >= ~512 B, i.e. >= 512 KiB
# over MIN_CALLS calls, above RSS_BOUND. CPOOL_LEAK_CALLS=10000 forces the full count.
MAX_CALLS = 10_000
MIN_CALLS = int(os.environ.get("CPOOL_LEAK_CALLS", 1000))
CALL_BUDGET_S = 0.05
RSS_BOUND = 384 * 1024

FORWARD = [n for n in F.__all__ if not n.endswith("_backward") and n not in
           ("adaptive_bins", "window_bins")]  # those two take no array
WITH_INDICES = ["max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
                "adaptive_max_pool2d", "adaptive_max_pool3d", "fractional_max_pool2d",
                "fractional_max_pool3d", "roi_pool"]


try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _LIBC.malloc_trim
except (OSError, AttributeError):  # not glibc
    _LIBC = None


@functools.lru_cache(maxsize=None)
def calls_of(size):
    """operator_calls(size) on float32, built once (the calls never modify them)."""
    return operator_calls(size, np.float32)


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _threads(n):
    before = cpool._threads._num_threads
    cpool.set_num_threads(n)
    yield
    cpool.set_num_threads(before)


@pytest.fixture
def one_thread():
    """The parallel regions still run (a team of one), without two threads' wake-ups."""
    yield from _threads(1)


@pytest.fixture
def two_threads():
    """Per-thread scratch counts twice: the allocation bound must hold for teams too."""
    yield from _threads(2)


# AddressSanitizer keeps freed memory in quarantine, so RSS grows under tools/sanitize.sh
_RSS_USABLE = os.path.exists("/proc/self/statm") and not os.environ.get("CPOOL_SANITIZED")


@pytest.mark.skipif(not _RSS_USABLE, reason="needs Linux /proc, without AddressSanitizer")
@pytest.mark.parametrize("name", F.__all__)
def test_no_growth_over_many_calls(name, one_thread):
    args, kwargs = calls_of("rows")[name]
    f = getattr(F, name)
    arrays = [a for _, a in arrays_of(args, kwargs)]
    for _ in range(50):  # warm-up: caches (bin grids), NumPy's allocator, lazy imports
        f(*args, **kwargs)
    t0 = time.perf_counter()
    for _ in range(50):
        f(*args, **kwargs)
    per_call = (time.perf_counter() - t0) / 50
    calls = max(MIN_CALLS, min(MAX_CALLS, int(CALL_BUDGET_S / max(per_call, 1e-9))))
    refs = [sys.getrefcount(a) for a in arrays]
    grown = rss_growth(f, args, kwargs, calls)
    assert grown <= RSS_BOUND, f"{name}: RSS grew by {grown} bytes over {calls} calls"
    assert [sys.getrefcount(a) for a in arrays] == refs, f"{name} leaks input references"
    results = [weakref.ref(r) for r in results_of(f(*args, **kwargs))]
    gc.collect()
    assert all(r() is None for r in results), f"{name} keeps its results alive"


def settled_rss():
    """RSS after handing free heap memory back to the system (glibc's malloc_trim), so
    that a leak cannot hide in memory that earlier tests freed but kept resident."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return rss()


def rss_growth(f, args, kwargs, calls):
    before = settled_rss()
    for _ in range(calls):
        f(*args, **kwargs)
    return settled_rss() - before


@pytest.mark.skipif(not _RSS_USABLE or _LIBC is None,
                    reason="needs Linux /proc and glibc, without AddressSanitizer")
def test_rss_check_can_fail():
    """A C-level leak of 1 KiB a call (less than one row of scratch for these inputs) is
    caught after MIN_CALLS calls."""
    leaked = []

    def leak():
        ptr = _LIBC.malloc(1024)
        ctypes.memset(ptr, 1, 1024)  # touched, so resident
        leaked.append(ptr)

    _LIBC.malloc.restype = ctypes.c_void_p
    try:
        grown = rss_growth(leak, (), {}, MIN_CALLS)
    finally:
        _LIBC.free.argtypes = [ctypes.c_void_p]
        for ptr in leaked:
            _LIBC.free(ptr)
    assert grown > RSS_BOUND, grown


def _extra_allocation(f, args, kwargs):
    """(tracemalloc peak of one call - bytes it returns, bytes it returns)."""
    f(*args, **kwargs)  # warm-up
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = f(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    returned = sum(r.nbytes for r in results_of(result))
    return peak - returned, returned


ALLOWED_FIXED = 24 * 1024  # bookkeeping: shape tuples, bin and cover tables, small arrays



def _cases():
    for name in FORWARD:
        for indices in (False, True) if name in WITH_INDICES else (False,):
            yield pytest.param(name, indices, id=name + ("-indices" if indices else ""))


@pytest.mark.parametrize("name, indices", list(_cases()))
def test_forward_allocates_only_its_result(name, indices, two_threads):
    args, kwargs = calls_of("large")[name]
    if indices:
        kwargs = dict(kwargs, return_indices=True)
    extra, returned = _extra_allocation(getattr(F, name), args, kwargs)
    allowed = ALLOWED_FIXED + returned // 100
    assert extra <= allowed, (f"{name}: a call allocated {extra} bytes beyond the {returned} "
                              f"it returned (allowed {allowed})")


def test_allocation_check_can_fail():
    """The measurement sees a temporary as large as the input (here: a copy)."""
    x = calls_of("large")["max_pool2d"][0][0]
    extra, _ = _extra_allocation(lambda v: F.max_pool2d(v.copy(), 2), (x,), {})
    assert extra >= x.nbytes
    assert math.isclose(extra, x.nbytes, rel_tol=0.05)
