"""Convolution layers (1-D, 2-D), mirroring torch.nn.Conv1d / torch.nn.Conv2d.

Each convolution is one matrix product per group: the receptive fields of x are unfolded
by the im2col kernel into col (C*KH*KW, N*OH*OW) and multiplied by NumPy's BLAS with the
weight viewed as (Cout, C/groups*KH*KW). Backward reuses col (kept from a training-mode
forward; rebuilt from the kept input after an eval-mode forward):

    grad_weight = grad_out @ col.T,   grad_bias = grad_out summed over (N, *spatial),
    grad_x = col2im(weight.T @ grad_out).

The batch is cut into blocks of samples (cpool._threads.block_bounds, fixed by the shapes
alone) that run in parallel, each unfolding, multiplying and scattering its own samples
while they are in cache; each block's share of grad_weight is summed in block order, so
the bits do not depend on the thread count. Block i's columns of col are stored as one
C-contiguous matrix after block i-1's.

col and the other multi-megabyte temporaries live in a per-layer workspace reused from
call to call (a fresh array would cost a page fault per 4 KiB every time); outputs and
gradients are always fresh arrays.
"""
import numpy as np

from .._geometry import normalize_padding, output_length, same_padding
from .._kernels import im2col as _k
from .._threads import block_bounds, run_blocks, threads_for
from .._validation import as_int, check_bool, finish_output, int_tuple, spatial_input
from ._params import kaiming_uniform, store_grad
from .base import Layer


def _plain_arg(value, normalized):
    """The argument as the user gave it (an int stays an int), in plain Python types."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(normalized)
    return normalized[0]


def _plain_padding(padding, pads):
    if isinstance(pads, str):
        return pads
    if not isinstance(padding, (list, tuple, np.ndarray)):
        return pads[0][0]
    if all(b == e for b, e in pads):
        return tuple(b for b, _ in pads)
    return tuple(tuple(p) for p in pads)


class _ConvNd(Layer):
    nd = None

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, seed=None):
        super().__init__()
        nd = self.nd
        self.in_channels = as_int(in_channels, "in_channels", 1)
        self.out_channels = as_int(out_channels, "out_channels", 1)
        self.groups = as_int(groups, "groups", 1)
        for name, value in (("in_channels", self.in_channels),
                            ("out_channels", self.out_channels)):
            if value % self.groups:
                raise ValueError(f"{name} must be divisible by groups={self.groups}, "
                                 f"got {value}")
        self._kernel = int_tuple(kernel_size, nd, "kernel_size")
        self._stride = int_tuple(stride, nd, "stride")
        self._dilation = int_tuple(dilation, nd, "dilation")
        self._pads = normalize_padding(padding, nd)
        if seed is not None:
            seed = as_int(seed, "seed", 0)
        self.kernel_size = _plain_arg(kernel_size, self._kernel)
        self.stride = _plain_arg(stride, self._stride)
        self.dilation = _plain_arg(dilation, self._dilation)
        self.padding = _plain_padding(padding, self._pads)
        self.bias = check_bool(bias, "bias")
        self.seed = seed

        rng = np.random.default_rng(seed)
        shape = (self.out_channels, self.in_channels // self.groups) + self._kernel
        fan_in = int(np.prod(shape[1:]))
        self.params["weight"] = kaiming_uniform(rng, shape, fan_in)
        if self.bias:
            self.params["bias"] = kaiming_uniform(rng, (self.out_channels,), fan_in)
        # Set False (e.g. on a model's first layer) to skip grad_input: backward then
        # returns None, as PyTorch skips it for inputs that do not require grad.
        self.needs_input_grad = True
        self._ctx = None
        self._workspace = {}

    # ---- geometry ----------------------------------------------------------------------

    def _geometry(self, in_size):
        """(pad_begin, out_size) for spatial input `in_size`.

        out = floor((L + pb + pe - d*(k-1) - 1) / s) + 1 per dim. padding="same" is
        TF/ONNX SAME_UPPER: out = ceil(L / s) with the odd pad at the end, which for
        stride 1 is PyTorch's padding="same" (PyTorch refuses it for stride > 1);
        "same_lower" puts the odd pad at the start; "valid" is no padding.
        """
        if isinstance(self._pads, str):
            if self._pads == "valid":
                pads = ((0, 0),) * self.nd
            else:
                pads = tuple(same_padding(L, k, s, d, lower=self._pads == "same_lower")
                             for L, k, s, d in zip(in_size, self._kernel, self._stride,
                                                   self._dilation))
        else:
            pads = self._pads
        out = tuple(output_length(L, k, s, d, pb, pe, False) for L, k, s, d, (pb, pe) in
                    zip(in_size, self._kernel, self._stride, self._dilation, pads))
        if min(out, default=1) <= 0:
            raise ValueError(
                f"output size would be {out} (<= 0) for spatial input {tuple(in_size)} with "
                f"kernel_size={self._kernel}, stride={self._stride}, "
                f"dilation={self._dilation}, padding={pads}")
        return tuple(p[0] for p in pads), out

    def _as_2d(self, pad_begin, out_size):
        """The kernels' 2-D view: a 1-D convolution is H = KH = 1."""
        fill = 2 - self.nd

        def lift(t, v):
            return (v,) * fill + tuple(t)

        return (lift(out_size, 1), lift(self._kernel, 1), lift(self._stride, 1),
                lift(self._dilation, 1), lift(pad_begin, 0))

    def output_shape(self, input_shape):
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) not in (self.nd + 1, self.nd + 2):
            raise ValueError(f"input_shape must have {self.nd + 1} or {self.nd + 2} dims, "
                             f"got {input_shape}")
        _, out = self._geometry(input_shape[-self.nd:])
        return input_shape[:-self.nd - 1] + (self.out_channels,) + out

    # ---- forward / backward ------------------------------------------------------------

    def _scratch(self, name, shape, dtype):
        """An internal temporary kept between calls: fresh multi-megabyte arrays cost a page
        fault per 4 KiB on every call, more than the copies they hold."""
        buf = self._workspace.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._workspace[name] = np.empty(shape, dtype=dtype)
        return buf

    def _weight_2d(self, dtype):
        w = self.params["weight"]
        return np.ascontiguousarray(w, dtype=dtype).reshape(self.out_channels, -1)

    def _blocks(self, n, k_rows, plane):
        """Sample boundaries of the blocks (see _threads.block_bounds), and a function that
        gives block i's (rows, samples * plane) matrix in a flat buffer: the matrices are
        stored one after another, each C-contiguous for the kernels and BLAS."""
        flops = 2.0 * self.out_channels * (k_rows // self.groups) * n * plane
        bounds = block_bounds(n, flops, moved=(k_rows + self.out_channels) * n * plane)

        def view(buf, rows, i):
            n0, n1 = bounds[i], bounds[i + 1]
            return buf[rows * n0 * plane:rows * n1 * plane].reshape(rows, (n1 - n0) * plane)

        return bounds, view

    def forward(self, x):
        """Cross-correlation of x (N, C, *spatial) or (C, *spatial) with the weight.

        The input's dtype decides the compute dtype (float32 or float64; float16 computes
        in float32, integers in float64); the parameters are cast to it.
        """
        x, batched, dtype = spatial_input(x, self.nd, "x", "convolution")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (in_channels), got "
                             f"shape {x.shape if batched else x.shape[1:]}")
        pad_begin, out_size = self._geometry(x.shape[2:])
        geo = self._as_2d(pad_begin, out_size)
        n, c = x.shape[:2]
        plane = geo[0][0] * geo[0][1]
        x4 = x.reshape((n, c) + (1,) * (2 - self.nd) + x.shape[2:])
        w2 = self._weight_2d(x.dtype)
        k_rows = w2.shape[1] * self.groups
        col = self._scratch("col", (k_rows * n * plane,), x.dtype)
        y = self._scratch("y", (self.out_channels * n * plane,), x.dtype)
        bias = (np.ascontiguousarray(self.params["bias"], dtype=x.dtype) if self.bias
                else np.empty(0, dtype=x.dtype))
        out = np.empty((n, self.out_channels, plane), dtype=x.dtype)
        groups = self._group_rows(w2.shape[1])
        bounds, view = self._blocks(n, k_rows, plane)

        def block(i, threads):  # unfold, multiply, scatter samples n0:n1 while col is in cache
            n0, n1 = bounds[i], bounds[i + 1]
            col_i, y_i = view(col, k_rows, i), view(y, self.out_channels, i)
            threads = min(threads, threads_for(col_i))  # fewer for a small batch
            _k.im2col(x4[n0:n1], col_i, *geo, threads)
            for rows_o, rows_k in groups:
                np.matmul(w2[rows_o], col_i[rows_k], out=y_i[rows_o])
            _k.cols_to_batch(y_i, bias, out[n0:n1], threads)

        run_blocks(block, len(bounds) - 1)
        # Training keeps col for backward; eval keeps only a reference to the input.
        self._ctx = (col if self.training else None, x, geo, batched, dtype)
        return finish_output(out.reshape((n, self.out_channels) + out_size), batched, dtype)

    def _group_rows(self, k_group):
        """(output-channel rows, col rows) of each group's block product."""
        o_group = self.out_channels // self.groups
        return [(slice(g * o_group, (g + 1) * o_group), slice(g * k_group, (g + 1) * k_group))
                for g in range(self.groups)]

    def backward(self, grad_output):
        """Gradient of the last forward's input; sets grads["weight"] (and ["bias"]).

        grads are overwritten, not accumulated (zero_grad is not needed between steps).
        Returns None when ``needs_input_grad`` is False.
        """
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        col, x, geo, batched, result_dtype = self._ctx
        n, c = x.shape[:2]
        out_size = geo[0]
        expected = (n, self.out_channels) + tuple(out_size[2 - self.nd:])
        g = np.asarray(grad_output)
        if not batched:
            g = g[np.newaxis]
        if g.shape != expected:
            shown = expected if batched else expected[1:]
            raise ValueError(f"grad_output must have shape {shown}, got "
                             f"{np.shape(grad_output)}")
        dtype = x.dtype
        plane = out_size[0] * out_size[1]
        g = np.ascontiguousarray(g, dtype=dtype).reshape(n, self.out_channels, plane)
        x4 = x.reshape((n, c) + (1,) * (2 - self.nd) + x.shape[2:])
        w2 = self._weight_2d(dtype)
        k_rows = w2.shape[1] * self.groups
        rebuild = col is None  # after an eval-mode forward
        if rebuild:
            col = self._scratch("col", (k_rows * n * plane,), dtype)
        g2 = self._scratch("y", (self.out_channels * n * plane,), dtype)
        sums = np.empty((n, self.out_channels) if self.bias else (0, 0), dtype=np.float64)
        grad_x = grad_col = None
        if self.needs_input_grad:
            grad_col = self._scratch("grad_col", col.shape, dtype)
            grad_x = np.empty(x.shape, dtype=dtype)
        groups = self._group_rows(w2.shape[1])
        bounds, view = self._blocks(n, k_rows, plane)
        # Each block's share of grad_weight (transposed: col @ g.T, which OpenBLAS runs
        # faster than g @ col.T), summed in block order after the blocks.
        partial = np.empty((len(bounds) - 1, k_rows, w2.shape[0] // self.groups), dtype)

        def block(i, threads):
            n0, n1 = bounds[i], bounds[i + 1]
            col_i, g2_i = view(col, k_rows, i), view(g2, self.out_channels, i)
            threads = min(threads, threads_for(col_i))
            _k.batch_to_cols(g[n0:n1], g2_i, sums[n0:n1], threads)
            if rebuild:
                _k.im2col(x4[n0:n1], col_i, *geo, threads)
            for rows_o, rows_k in groups:
                np.matmul(col_i[rows_k], g2_i[rows_o].T, out=partial[i, rows_k])
                if grad_x is not None:
                    np.matmul(w2[rows_o].T, g2_i[rows_o], out=view(grad_col, k_rows, i)[rows_k])
            if grad_x is not None:
                _k.col2im(view(grad_col, k_rows, i), grad_x.reshape(x4.shape)[n0:n1], *geo,
                          threads)

        run_blocks(block, len(bounds) - 1)
        grad_w_t = partial.sum(axis=0)
        grad_w = np.empty_like(w2)
        for rows_o, rows_k in groups:
            grad_w[rows_o] = grad_w_t[rows_k].T
        store_grad(self, "weight", grad_w)
        if self.bias:
            store_grad(self, "bias", sums.sum(axis=0))
        if grad_x is None:
            return None
        return finish_output(grad_x, batched, result_dtype)


class Conv1d(_ConvNd):
    """1-D convolution (cross-correlation), like torch.nn.Conv1d.

    x (N, C_in, L) or (C_in, L) -> (N, C_out, L_out); weight (C_out, C_in/groups, K),
    bias (C_out,). padding: int, (int,), ((begin, end),), "valid", "same" or "same_lower"
    (see _ConvNd._geometry). Weights are drawn as PyTorch's defaults from
    np.random.default_rng(seed).

    >>> import numpy as np
    >>> from cpool.layers import Conv1d
    >>> Conv1d(2, 4, 3, padding="same", seed=0)(np.ones((1, 2, 8), np.float32)).shape
    (1, 4, 8)
    """

    nd = 1


class Conv2d(_ConvNd):
    """2-D convolution (cross-correlation), like torch.nn.Conv2d.

    x (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, OH, OW); weight
    (C_out, C_in/groups, KH, KW), bias (C_out,). padding: int, (ph, pw),
    ((top, bottom), (left, right)), "valid", "same" or "same_lower" (see
    _ConvNd._geometry). Weights are drawn as PyTorch's defaults from
    np.random.default_rng(seed).

    >>> import numpy as np
    >>> from cpool.layers import Conv2d
    >>> Conv2d(1, 8, 3, stride=2, seed=0)(np.ones((2, 1, 9, 9), np.float32)).shape
    (2, 8, 4, 4)
    """

    nd = 2
