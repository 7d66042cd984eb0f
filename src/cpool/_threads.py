"""The thread count every kernel call uses, and the block-parallel runner of the layers'
matrix products."""
import os
import threading

from threadpoolctl import ThreadpoolController


def _openmp_runtime_loaded():
    """Whether this process mapped an OpenMP runtime before cpool's kernels (Linux only)."""
    try:
        with open("/proc/self/maps") as maps:
            return any(name in line for line in maps
                       for name in ("libgomp", "libomp", "libiomp"))
    except OSError:
        return False


# Threads that wait for work sleep instead of spinning (unless the user chose otherwise).
# Spinning OpenMP threads fight NumPy's BLAS threads and any other busy process for the
# cores: training at 2 threads on 2 cores ran 14x slower than at 1 thread, and a pooling
# call between matrix products 12x slower. The runtime reads the policy when it loads
# (one per process, shared with PyTorch's), so this must come before the kernels.
# A runtime already loaded read the environment as it was then: it sleeps only if the
# user asked for that.
_users_policy = "OMP_WAIT_POLICY" in os.environ
_runtime_was_loaded = _openmp_runtime_loaded()
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
WORKERS_SLEEP = (os.environ["OMP_WAIT_POLICY"].strip().upper() == "PASSIVE"
                 and "GOMP_SPINCOUNT" not in os.environ
                 and (_users_policy or not _runtime_was_loaded))

from ._kernels._openmp_info import openmp_max_threads  # noqa: E402
from ._kernels.im2col import run_blocks as _run_blocks_omp

_num_threads = None  # None: follow OpenMP's default (OMP_NUM_THREADS or all cores)


def set_num_threads(n=None):
    """Set the number of threads the kernels use; ``None`` restores OpenMP's default.

    Results are bitwise identical for every thread count.
    """
    global _num_threads
    if n is None:
        _num_threads = None
        return
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"n must be a positive int or None, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be a positive int or None, got {n}")
    _num_threads = n


def get_num_threads():
    """The number of threads a kernel call with enough work uses."""
    return openmp_max_threads() if _num_threads is None else _num_threads


# Waking a sleeping worker (and being woken at the join) cost 80-200 us per parallel
# region on the 2-core VM measured, as long as a 1-thread max_pool2d on 4 MB. So while
# workers sleep, each thread gets at least this much memory traffic, and smaller calls
# run on the calling thread alone (max_pool2d k2s2 on 2 MB: 114 us, 159 us on 2 threads).
THREAD_GRAIN_BYTES = 5 << 19


def threads_for(*arrays, cost=1):
    """The thread count of a kernel call that reads and writes `arrays` (their bytes
    times `cost`, for kernels with more arithmetic per byte than a max): get_num_threads(),
    fewer while OpenMP workers sleep and the work is small. Results do not depend on it."""
    threads = get_num_threads()
    if threads == 1 or not WORKERS_SLEEP:
        return threads
    work = cost * sum(a.nbytes for a in arrays)
    return int(max(1, min(threads, work // THREAD_GRAIN_BYTES)))


# ---- block-parallel matrix products ----------------------------------------------------
#
# Conv2d and Linear multiply with NumPy's BLAS, which only Python can call. They split the
# product into blocks fixed by the shapes alone (so the bits never depend on the thread
# count) and run_blocks spreads the blocks over cpool's OpenMP threads, each calling BLAS
# with one thread: BLAS's own worker threads would spin and compete with cpool's OpenMP
# threads for the same cores (the seed CNN trained 1.8-3.5x slower at 2 threads than at
# 1 on 2 cores).

# A block of less work than this (in flops) does not pay for its Python calls and the
# thread hand-off; an element copied (im2col, layout moves) counts as MOVE_FLOPS flops.
BLOCK_FLOPS = 16e6
MOVE_FLOPS = 48


def block_bounds(n, flops, moved=0):
    """[0, b1, ..., n]: n rows (samples) cut into near-equal blocks of at least BLOCK_FLOPS
    work each, for a total of `flops` plus `moved` copied elements.

    The number of blocks is a power of two, so that 2, 4, 8, ... threads share them evenly.
    """
    work = flops + MOVE_FLOPS * moved
    count = 1
    while 2 * count <= min(n, work / BLOCK_FLOPS):
        count *= 2
    return [i * n // count for i in range(count + 1)]


_blas = None            # threadpoolctl's controller of the loaded BLAS libraries
_blas_limiter = None    # set while any run_blocks call is active
_blas_users = 0
_blas_lock = threading.Lock()


def _limit_blas(enter):
    """Hold BLAS at one thread while any run_blocks call is active (calls from several
    Python threads share one limit, restored when the last one leaves)."""
    global _blas, _blas_limiter, _blas_users
    with _blas_lock:
        if enter:
            if _blas is None:
                _blas = ThreadpoolController().select(user_api="blas")
            if _blas_users == 0:
                _blas_limiter = _blas.limit(limits=1)
            _blas_users += 1
        else:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def run_blocks(task, n_blocks):
    """Call task(i, threads) for every i in range(n_blocks); each block must write only
    its own part of the outputs, and its kernels may use `threads` threads.

    Several blocks run on up to get_num_threads() threads, one each, with BLAS held at
    one thread. A single block (little work, or one large sample) gets every thread for
    its kernels, and BLAS keeps the thread count the user gave it.
    """
    threads = get_num_threads()
    if n_blocks == 1:
        task(0, threads)
        return
    _limit_blas(True)
    try:
        _run_blocks_omp(task, n_blocks, min(threads, n_blocks))
    finally:
        _limit_blas(False)
