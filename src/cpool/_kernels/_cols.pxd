# Per-output-column average divisors (cp_cols_t in cp_common.h), built from the tuple
# (edge, n_left, right_start, mid) of cpool._geometry.column_divisors.
cdef extern from "cp_common.h" nogil:
    ctypedef struct cp_cols_t:
        const double *edge
        Py_ssize_t n_left, right_start
        double mid
    double cp_col_div(const cp_cols_t *c, Py_ssize_t o)


cdef inline cp_cols_t cols_struct(tuple cols) except *:
    """The struct of `cols`; it points into cols[0], which the caller keeps alive."""
    cdef const double[::1] edge = cols[0]
    cdef cp_cols_t c
    c.edge = &edge[0]
    c.n_left = cols[1]
    c.right_start = cols[2]
    c.mid = cols[3]
    return c
