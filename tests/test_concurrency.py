"""Thread safety: Python threads calling cpool at once, with and without OpenMP teams.

* 8 threads calling the same operator, and 8 threads each cycling through every operator
  of cpool.functional.__all__ in its own order, get results bitwise equal to a serial
  run -- for 1 and 2 kernel threads each (so 8 OpenMP teams run side by side). Kernels
  keep no shared mutable state.
* Nothing deadlocks or hangs: every thread must finish within TIMEOUT_S, and the number
  of OS threads stays within what 8 callers x the kernel thread count need.
* The kernels release the GIL: a pure-Python thread keeps running while another thread
  is inside a long kernel call.

Recommended setting (README, "Errors and guarantees"): cpool.set_num_threads() is
process-wide; with T Python threads calling cpool, use set_num_threads(max(1, cores // T)),
i.e. 1 for a thread pool as large as the machine.
"""
import os
import threading
import time

import numpy as np
import pytest

import cpool
from cpool import functional as F
from tests.operator_calls import operator_calls, results_of

N_THREADS = 8
TIMEOUT_S = 120


@pytest.fixture
def restore_threads():
    before = cpool._threads._num_threads
    yield
    cpool.set_num_threads(before)


def _bits(result):
    return [r.tobytes() + str((r.dtype, r.shape)).encode() for r in results_of(result)]


def _serial(calls):
    """Every operator's result, computed serially with one kernel thread."""
    before = cpool._threads._num_threads
    cpool.set_num_threads(1)
    try:
        return {name: _bits(getattr(F, name)(*a, **k)) for name, (a, k) in calls.items()}
    finally:
        cpool.set_num_threads(before)


@pytest.fixture(scope="module", params=["small", "large"])
def calls_and_serial(request):
    """Small inputs (calls dominated by validation) and large ones (dominated by
    kernels, so that the kernels of different threads overlap)."""
    calls = operator_calls(request.param, np.float32, seed=11)
    return calls, _serial(calls)


@pytest.fixture(scope="module")
def calls():
    return operator_calls("rows", np.float32, seed=11)


@pytest.fixture(scope="module")
def serial(calls):
    return _serial(calls)


def run_threads(work, n=N_THREADS):
    """Run work(i) in n daemon threads started together; re-raise the first error and
    fail if any thread is still running after TIMEOUT_S (a deadlock or a hang)."""
    errors, start = [], threading.Barrier(n)

    def body(i):
        try:
            start.wait(timeout=TIMEOUT_S)
            work(i)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    assert alive == 0, f"{alive} of {n} threads still running after {TIMEOUT_S} s"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_threads_calling_different_operators(calls_and_serial, kernel_threads,
                                             restore_threads):
    calls, serial = calls_and_serial
    cpool.set_num_threads(kernel_threads)
    names = list(calls)
    mismatches = []

    def work(i):
        order = np.random.default_rng(i).permutation(names)  # each thread its own order
        for _ in range(2):
            for name in order:
                args, kwargs = calls[name]
                if _bits(getattr(F, name)(*args, **kwargs)) != serial[name]:
                    mismatches.append((i, name))

    run_threads(work)
    assert not mismatches, f"results differ from the serial run: {mismatches[:10]}"


@pytest.mark.parametrize("kernel_threads", [1, 2])
@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool3d_backward", "lp_pool1d",
                                  "adaptive_max_pool2d", "bin_pool_backward", "roi_align",
                                  "roi_align_backward", "sequence_pool", "max_unpool2d"])
def test_threads_calling_the_same_operator(calls, serial, name, kernel_threads,
                                           restore_threads):
    cpool.set_num_threads(kernel_threads)
    args, kwargs = calls[name]
    f = getattr(F, name)
    mismatches = []

    def work(i):
        for _ in range(20):
            if _bits(f(*args, **kwargs)) != serial[name]:
                mismatches.append(i)

    run_threads(work)
    assert not mismatches, f"{name}: threads {sorted(set(mismatches))} got other results"


def _os_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_os_threads_stay_bounded(restore_threads):
    """8 callers with 2 kernel threads each need at most 8 extra OpenMP workers (each
    caller leads its own team), not a team per call or per core."""
    cpool.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((4, 8, 64, 64)).astype(np.float32)
    before = _os_threads()
    peak = [0]

    def work(i):
        for _ in range(20):
            F.max_pool2d(x, 3, 2, 1)
            F.avg_pool2d_backward(np.ones((4, 8, 32, 32), np.float32), x.shape, 2)
            peak[0] = max(peak[0], _os_threads())

    run_threads(work)
    assert peak[0] - before <= N_THREADS * 2 + 2, (before, peak[0])


def test_kernels_release_the_gil(restore_threads):
    """While one thread is inside a long kernel call (~0.1 s), a pure-Python counting
    thread keeps making progress. Holding the GIL through the call would stop it, except
    for a switch interval (5 ms) at the call's edges."""
    cpool.set_num_threads(1)
    x = np.random.default_rng(1).standard_normal((8, 16, 128, 128)).astype(np.float32)
    y = F.lp_pool2d(x, 3.0, 7, 1, 3)
    stop, count = threading.Event(), [0]

    def counter():
        while not stop.is_set():
            count[0] += 1

    def progress_during(call):
        """Counter increments per second inside `call` / those outside any call."""
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.1)  # the counter alone
        alone = (count[0] - c0) / (time.perf_counter() - t0)
        c0, t0 = count[0], time.perf_counter()
        call()
        return (count[0] - c0) / (time.perf_counter() - t0) / max(alone, 1.0)

    t = threading.Thread(target=counter, daemon=True)
    t.start()
    try:
        kernels = [progress_during(lambda: F.lp_pool2d(x, 3.0, 7, 1, 3)) for _ in range(3)]
        kernels += [progress_during(lambda: F.lp_pool2d_backward(y, x, y, 3.0, 7, 1, 3))
                    for _ in range(3)]
        # the check can fail: C code that keeps the GIL (a builtin summing ints) stops it
        held = [progress_during(lambda: sum(range(10**7))) for _ in range(3)]
    finally:
        stop.set()
        t.join(TIMEOUT_S)
    # released: the counter keeps a good share of its solo rate (less on a busy machine)
    assert max(kernels[:3]) > 0.3 and max(kernels[3:]) > 0.3, kernels
    assert min(held) < 0.15, held
