"""Element-wise activation kernels, forward and backward, on flat contiguous arrays.

Each element is computed on its own from the same inputs, so the thread count never
changes a bit. Conditions are written as PyTorch's CPU kernels write them, so NaN and
+-inf take the same branch:
  relu(x)          = 0 if x <= 0 else x (NaN stays NaN)
  relu' (from y)   = 0 if y <= 0 else g
  leaky_relu(x)    = x if x > 0 else x*slope;  leaky_relu' = g if x > 0 else g*slope
  gelu(x)          = 0.5*x*(1 + erf(x/sqrt(2)))                           (exact)
                   = 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))     ("tanh")
GELU is evaluated in double precision (libm erf/exp/tanh) and rounded once for float32.
Inputs are validated and outputs allocated by cpool.layers.activation.
"""
from cython.parallel cimport prange
from libc.math cimport erf, exp, tanh, M_SQRT1_2, M_2_SQRTPI, M_SQRT2

from ._fused cimport floating_t

# Below this many elements a parallel region costs more than it saves.
cdef Py_ssize_t _SERIAL_BELOW = 32768


cdef inline int _threads(Py_ssize_t n, int num_threads) noexcept nogil:
    return 1 if n < _SERIAL_BELOW else num_threads


def relu_forward(const floating_t[::1] x,   # IN
                 floating_t[::1] out,       # OUT
                 int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating_t v
    for i in prange(n, nogil=True, schedule='static', num_threads=_threads(n, num_threads)):
        v = x[i]
        out[i] = 0 if v <= 0 else v


def relu_backward(const floating_t[::1] y,  # IN  the forward's output
                  const floating_t[::1] g,  # IN
                  floating_t[::1] out,      # OUT
                  int num_threads):
    cdef Py_ssize_t i, n = y.shape[0]
    cdef floating_t gi
    for i in prange(n, nogil=True, schedule='static', num_threads=_threads(n, num_threads)):
        gi = g[i]  # loaded unconditionally so the select compiles branch-free
        out[i] = 0 if y[i] <= 0 else gi


def leaky_relu_forward(const floating_t[::1] x,  # IN
                       floating_t[::1] out,      # OUT
                       double slope, int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating_t v, s = <floating_t>slope
    for i in prange(n, nogil=True, schedule='static', num_threads=_threads(n, num_threads)):
        v = x[i]
        out[i] = v if v > 0 else v * s


def leaky_relu_backward(const floating_t[::1] x,  # IN  the forward's input
                        const floating_t[::1] g,  # IN
                        floating_t[::1] out,      # OUT
                        double slope, int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating_t gi, s = <floating_t>slope
    for i in prange(n, nogil=True, schedule='static', num_threads=_threads(n, num_threads)):
        gi = g[i]
        out[i] = gi if x[i] > 0 else gi * s


cdef double _KAPPA = 0.044715


def gelu_forward(const floating_t[::1] x,  # IN
                 floating_t[::1] out,      # OUT
                 bint tanh_approx, int num_threads):
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double v, beta = M_SQRT2 * M_2_SQRTPI * 0.5   # sqrt(2/pi)
    for i in prange(n, nogil=True, schedule='static', num_threads=_threads(n, num_threads)):
        v = x[i]
        if tanh_approx:
            out[i] = <floating_t>(0.5 * v * (1.0 + tanh(beta * (v + _KAPPA * v * v * v))))
        else:
            out[i] = <floating_t>(0.5 * v * (1.0 + erf(v * M_SQRT1_2)))


def gelu_backward(const floating_t[::1] x,  # IN  the forward's input
                  const floating_t[::1] g,  # IN
                  floating_t[::1] out,      # OUT
                  bint tanh_approx, int num_threads):
    """d/dx: exact  Phi(x) + x*phi(x), phi(x) = exp(-x**2/2)/sqrt(2*pi);
    tanh   0.5*(1 + t) + 0.5*x*(1 - t**2)*beta*(1 + 3*kappa*x**2), t = tanh(inner)."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double v, t, d
    cdef double beta = M_SQRT2 * M_2_SQRTPI * 0.5
    cdef double inv_sqrt_2pi = M_2_SQRTPI * M_SQRT1_2 * 0.5
    for i in prange(n, nogil=True, schedule='static', num_threads=_threads(n, num_threads)):
        v = x[i]
        if tanh_approx:
            t = tanh(beta * (v + _KAPPA * v * v * v))
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * beta * (1.0 + 3.0 * _KAPPA * v * v)
        else:
            d = 0.5 * (1.0 + erf(v * M_SQRT1_2)) + v * exp(-0.5 * v * v) * inv_sqrt_2pi
        out[i] = <floating_t>(g[i] * d)
