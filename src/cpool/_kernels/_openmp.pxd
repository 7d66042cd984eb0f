# The one place that touches the OpenMP runtime. Without OpenMP the calls fall back to
# serial answers; `prange` itself compiles either way.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CPOOL_HAVE_OPENMP 1
    #else
    #define CPOOL_HAVE_OPENMP 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    #endif
    """
    const bint CPOOL_HAVE_OPENMP
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
