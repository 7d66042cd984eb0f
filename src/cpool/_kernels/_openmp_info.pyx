"""What the OpenMP runtime says, for cpool._threads and show_config()."""
from ._openmp cimport CPOOL_HAVE_OPENMP, omp_get_max_threads


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CPOOL_HAVE_OPENMP)


def openmp_max_threads():
    """The OpenMP default thread count (honours OMP_NUM_THREADS); 1 without OpenMP."""
    return omp_get_max_threads()
