"""Window arithmetic of sliding-window pooling: output sizes, padding, divisors and the
tables the backward kernels read. Written once; functional, layers and the ONNX exporter
all use it.

The rules, per spatial dim with input length L, kernel k, stride s, dilation d, pads
(pb, pe) and effective kernel e = d*(k-1) + 1:

* out = floor((L + pb + pe - e) / s) + 1, or with ceil_mode the ceiling, after which a
  last window that would start inside the right padding is dropped:
  ``if ceil_mode and (out - 1)*s >= L + pb: out -= 1`` (PyTorch; ONNX opset >= 19).
* explicit padding: an int or one int per dim (PyTorch's form) may be at most half the
  effective kernel, e // 2, as in PyTorch; (begin, end) pairs (ONNX's `pads`) may be up to
  e - 1, so that every window still holds an input element.
* padding "same" (TF/Keras, ONNX SAME_UPPER): out = ceil(L / s), total pad
  t = max((out - 1)*s + e - L, 0), pb = t // 2, pe = t - pb (the odd pad goes at the end).
  "same_lower" (ONNX SAME_LOWER) puts the odd pad at the start: pb = t - t // 2.
* average divisor of the window starting at x0 = o*s - pb:
  count_include_pad=True  -> number of taps x0 + j*d < L + pe (PyTorch: taps inside the
                             padded extent, not the ceil_mode overhang);
  count_include_pad=False -> number of taps with 0 <= x0 + j*d < L.
  The divisor of a window is the product over dims. A window with no tap inside the
  input sums to 0 and is divided by max(count, 1), so it averages to 0.
"""
import functools
from dataclasses import dataclass

import numpy as np

from ._validation import as_int, check_bool, check_choice, int_tuple

PADDING_STRINGS = ("valid", "same", "same_lower")

# Bound on kernel_size, stride, dilation, the effective kernel and the window volume: the
# kernels number a window's taps in int32, and anything larger is a mistake.
MAX_WINDOW = 2**31 - 1


def normalize_padding(padding, nd):
    """Padding as given by the user -> a padding string or a tuple of nd (begin, end) pairs.

    Accepted: an int; nd ints; nd (begin, end) pairs; "valid"; "same"; "same_lower".
    """
    if isinstance(padding, str):
        return check_choice(padding, "padding", PADDING_STRINGS)
    if isinstance(padding, (list, tuple, np.ndarray)):
        items = list(padding)
        if len(items) != nd:
            raise ValueError(
                f"padding must be an int, {nd} ints, {nd} (begin, end) pairs, or one of "
                f"{PADDING_STRINGS}; got {padding!r}"
            )
        pairs = []
        for item in items:
            if isinstance(item, (list, tuple, np.ndarray)):
                if len(item) != 2:
                    raise ValueError(f"each padding pair must be (begin, end), got {item!r}")
                pairs.append((as_int(item[0], "padding", 0), as_int(item[1], "padding", 0)))
            else:
                p = as_int(item, "padding", 0)
                pairs.append((p, p))
        return tuple(pairs)
    p = as_int(padding, "padding", 0)
    return ((p, p),) * nd


def _has_pairs(padding):
    """True when padding was given as (begin, end) pairs (ONNX's form)."""
    return isinstance(padding, (list, tuple, np.ndarray)) and any(
        isinstance(item, (list, tuple, np.ndarray)) for item in padding)


def output_length(length, kernel, stride, dilation, pad_begin, pad_end, ceil_mode):
    """Output length of one dim (see the module docstring); may be <= 0."""
    span = length + pad_begin + pad_end - (dilation * (kernel - 1) + 1)
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1  # floor division, as ATen
    if ceil_mode and (out - 1) * stride >= length + pad_begin:
        out -= 1
    return out


def same_padding(length, kernel, stride, dilation, lower=False):
    """(begin, end) pads of SAME_UPPER (lower=False) or SAME_LOWER."""
    out = -(-length // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - length, 0)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def _plain(value):
    """None, a str, an int (not a bool or a NumPy int) or a tuple of such: a cache key
    that stands for its value alone (True == 1 and 2.0 == 2 would not)."""
    return (value is None or type(value) in (int, str)
            or type(value) is tuple and all(map(_plain, value)))


@functools.lru_cache(maxsize=1024)
def _cached_geometry(cls, *args):
    return cls._create(*args)


@dataclass(frozen=True)
class PoolGeometry:
    """The windows of one sliding-window pooling over `nd` spatial dims."""

    in_size: tuple
    kernel: tuple
    stride: tuple
    dilation: tuple
    pad_begin: tuple
    pad_end: tuple
    ceil_mode: bool
    out_size: tuple

    @classmethod
    def create(cls, in_size, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        """The validated geometry; arguments of plain ints, tuples, strings and bools (the
        common call) are looked up in a cache first (about 10 us a call otherwise)."""
        args = (tuple(in_size), kernel_size, stride, padding, dilation, ceil_mode)
        if type(ceil_mode) is bool and all(map(_plain, args[:5])):
            return _cached_geometry(cls, *args)
        return cls._create(*args)

    @classmethod
    def _create(cls, in_size, kernel_size, stride, padding, dilation, ceil_mode):
        nd = len(in_size)
        kernel = int_tuple(kernel_size, nd, "kernel_size")
        stride = kernel if stride is None else int_tuple(stride, nd, "stride")
        dilation = int_tuple(dilation, nd, "dilation")
        ceil_mode = check_bool(ceil_mode, "ceil_mode")
        for name, values in (("kernel_size", kernel), ("stride", stride),
                             ("dilation", dilation)):
            if max(values) > MAX_WINDOW:
                raise ValueError(f"{name} must be in [1, {MAX_WINDOW}], got {values}")
        pads = normalize_padding(padding, nd)
        effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        if max(effective) > MAX_WINDOW or int(np.prod(kernel, dtype=object)) > MAX_WINDOW:
            raise ValueError(
                f"kernel_size and dilation give effective kernel dilation*(kernel_size-1)+1 = "
                f"{effective} and {int(np.prod(kernel, dtype=object))} taps per window; "
                f"both must be <= {MAX_WINDOW}"
            )
        if isinstance(pads, str):
            if pads == "valid":
                pads = ((0, 0),) * nd
            else:
                pads = tuple(same_padding(L, k, s, d, lower=pads == "same_lower")
                             for L, k, s, d in zip(in_size, kernel, stride, dilation))
        elif _has_pairs(padding):
            # ONNX `pads`: any size that leaves every window an input element.
            for (pb, pe), e in zip(pads, effective):
                if max(pb, pe) >= e:
                    raise ValueError(
                        f"(begin, end) padding must be smaller than the effective kernel "
                        f"dilation*(kernel_size-1)+1 = {e}, i.e. <= {e - 1}; got {pads}"
                    )
        else:
            # PyTorch's limit for its int padding.
            for (pb, pe), e in zip(pads, effective):
                if 2 * max(pb, pe) > e:
                    raise ValueError(
                        f"padding must be at most half the effective kernel size "
                        f"dilation*(kernel_size-1)+1 = {e}, i.e. <= {e // 2}; got {pads} "
                        f"(ONNX-style (begin, end) pairs may go up to {e - 1})"
                    )
        pad_begin = tuple(p[0] for p in pads)
        pad_end = tuple(p[1] for p in pads)
        out_size = tuple(
            output_length(L, k, s, d, pb, pe, bool(ceil_mode))
            for L, k, s, d, pb, pe in zip(in_size, kernel, stride, dilation, pad_begin, pad_end)
        )
        if min(out_size) <= 0:
            raise ValueError(
                f"output size would be {out_size} (<= 0) for spatial input {tuple(in_size)} with "
                f"kernel_size={kernel}, stride={stride}, dilation={dilation}, padding={pads}"
            )
        return cls(tuple(in_size), kernel, stride, dilation, pad_begin, pad_end,
                   bool(ceil_mode), out_size)

    @property
    def nd(self):
        return len(self.in_size)

    @property
    def pads(self):
        """((begin, end), ...) per dim."""
        return tuple(zip(self.pad_begin, self.pad_end))

    @property
    def window_volume(self):
        return int(np.prod(self.kernel))

    def as_3d(self):
        """(in, out, kernel, stride, dilation, pad_begin) as 3-tuples for the kernels."""
        fill = 3 - self.nd

        def lift(t, v):
            return (v,) * fill + tuple(t)

        return (lift(self.in_size, 1), lift(self.out_size, 1), lift(self.kernel, 1),
                lift(self.stride, 1), lift(self.dilation, 1), lift(self.pad_begin, 0))

    def divisors_3d(self, count_include_pad, divisor_override=None):
        """(div_d, div_h, cols): the average's divisor of window (od, oh, ow) is
        div_d[od] * div_h[oh] * (column ow's divisor in cols, see column_divisors)."""
        lifted = (1,) * (3 - self.nd)
        out = lifted + self.out_size
        if divisor_override is not None:
            return (np.ones(out[0]), np.ones(out[1]),
                    uniform_columns(float(divisor_override), out[2]))
        dims = [dict(length=L, k=k, s=s, d=d, pb=pb, pe=pe) for L, k, s, d, pb, pe in zip(
            lifted + self.in_size, lifted + self.kernel, lifted + self.stride,
            lifted + self.dilation, (0,) * len(lifted) + self.pad_begin,
            (0,) * len(lifted) + self.pad_end)]
        div_d, div_h = (np.maximum(_tap_counts(np.arange(o), include_pad=count_include_pad,
                                               **dim), 1).astype(float)
                        for o, dim in zip(out[:2], dims[:2]))
        return div_d, div_h, _column_divisors(out[2], count_include_pad, **dims[2])

    def tap_positions_3d(self):
        """Per-dim (out, kernel) input coordinates of every tap (see tap_positions)."""
        pos = [tap_positions(o, k, s, d, pb) for o, k, s, d, pb in zip(
            self.out_size, self.kernel, self.stride, self.dilation, self.pad_begin)]
        return [np.zeros((1, 1), dtype=np.intp)] * (3 - self.nd) + pos

    def cover_tables_3d(self):
        """Per-dim tables for the gather-form backward (see cover_table)."""
        return [cover_table(pos, L) for pos, L in
                zip(self.tap_positions_3d(), (1,) * (3 - self.nd) + self.in_size)]

    def window_tables_3d(self):
        """Per-dim tables of the channels-last kernels (see window_table)."""
        return [window_table(pos, L) for pos, L in
                zip(self.tap_positions_3d(), (1,) * (3 - self.nd) + self.in_size)]


def _tap_counts(o, length, k, s, d, pb, pe, include_pad):
    """The average's divisor count of windows `o` along one dim (module docstring)."""
    taps = o[:, None] * s - pb + np.arange(k) * d
    if include_pad:
        inside = taps < length + pe
    else:
        inside = (taps >= 0) & (taps < length)
    return inside.sum(axis=1)


def _column_divisors(out, include_pad, length, k, s, d, pb, pe):
    """Column divisors (see column_divisors) of the windows along W, computed for the
    border columns only: a window whose every tap counts has divisor k."""
    lo = 0 if include_pad else min(out, -(-pb // s))  # first window starting at >= 0
    limit = length + pe if include_pad else length
    hi = max(lo, min(out, (limit - 1 - (k - 1) * d + pb) // s + 1))  # last inside, + 1
    border = np.concatenate([np.arange(lo), np.arange(hi, out)])
    counts = np.maximum(_tap_counts(border, length, k, s, d, pb, pe, include_pad), 1)
    return _columns(counts.astype(float), lo, hi, float(k))


def column_divisors(vector):
    """Per-output-column divisors in the kernels' form (the C struct cp_cols_t):
    (edge, n_left, right_start, mid): columns below n_left and from right_start on read
    edge (left ones first), the others `mid`. From a full vector: all edge."""
    v = np.asarray(vector, dtype=float)
    return _columns(v, len(v), len(v), 1.0)


def uniform_columns(value, n):
    """Column divisors that are `value` for all n columns."""
    return _columns(np.empty(0), 0, n, float(value))


def _columns(edge, n_left, right_start, mid):
    # never empty: the kernels take the address of its first element
    edge = np.ascontiguousarray(edge if edge.size else np.ones(1), dtype=np.float64)
    return edge, int(n_left), int(right_start), mid


def divisor_grid(divisors, out_size, channels_last, dtype):
    """Every window's divisor from (div_d, div_h, cols), shaped to broadcast against a
    batched output of spatial size `out_size` in either layout."""
    div_d, div_h, (edge, n_left, right_start, mid) = divisors
    div_w = np.full(out_size[-1], mid)
    div_w[:n_left] = edge[:n_left]
    div_w[right_start:] = edge[n_left:n_left + len(div_w[right_start:])]
    grid = (div_d[:, None, None] * div_h[None, :, None] * div_w[None, None, :]).astype(dtype)
    grid = grid.reshape(tuple(out_size))
    return grid[..., None] if channels_last else grid


@functools.lru_cache(maxsize=256)
def unit_divisors(out_3d):
    """Divisors of 1 everywhere (window sums: Lp, or weights already divided); read-only
    and cached, as max and Lp calls pass them without reading them."""
    div_d, div_h, cols = np.ones(out_3d[0]), np.ones(out_3d[1]), uniform_columns(1.0, out_3d[2])
    for a in (div_d, div_h, cols[0]):
        a.flags.writeable = False
    return div_d, div_h, cols


def tap_positions(out, k, s, d, pb):
    """(out, k) input coordinate of tap t of window o along one dim: o*s - pb + t*d."""
    return np.arange(out, dtype=np.intp)[:, None] * s - pb + np.arange(k, dtype=np.intp) * d


def window_table(pos, length):
    """For each window o, its taps inside [0, length), from tap positions `pos` (out, k).

    Row o is [n, i_0, t_0, ..., i_{n-1}, t_{n-1}]: tap t reads input coordinate i, in
    increasing t. Rows are padded with zeros to equal length.
    """
    inside = (pos >= 0) & (pos < length)
    o, t = np.nonzero(inside)  # row-major: increasing o, then t
    return _pair_table(pos.shape[0], o, pos[o, t], t)


def cover_table(pos, length):
    """For each input coordinate i, the windows covering it, from tap positions `pos`.

    Row i is [n, o_0, t_0, ..., o_{n-1}, t_{n-1}]: window o covers i with its tap t
    (pos[o, t] == i), in increasing o. Rows are padded with zeros to equal length.
    """
    o, t = np.meshgrid(np.arange(pos.shape[0]), np.arange(pos.shape[1]), indexing="ij")
    i, o, t = pos.ravel(), o.ravel(), t.ravel()
    keep = (i >= 0) & (i < length)
    i, o, t = i[keep], o[keep], t[keep]
    order = np.lexsort((o, i))
    return _pair_table(length, i[order], o[order], t[order])


def _pair_table(rows, row, first, second):
    """Rows of [n, first_0, second_0, ...] from entries sorted by row."""
    counts = np.bincount(row, minlength=rows)
    width = int(counts.max()) if counts.size else 0
    table = np.zeros((rows, 1 + 2 * width), dtype=np.intp)
    table[:, 0] = counts
    slot = np.arange(row.size) - np.repeat(np.cumsum(counts) - counts, counts)
    table[row, 1 + 2 * slot] = first
    table[row, 2 + 2 * slot] = second
    return table
