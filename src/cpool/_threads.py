"""The thread count every kernel call uses."""
from ._kernels._openmp_info import openmp_max_threads

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
    """The number of threads the next kernel call will use."""
    return openmp_max_threads() if _num_threads is None else _num_threads
