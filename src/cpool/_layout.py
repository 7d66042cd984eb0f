"""Memory layouts of pooling inputs: channels-first (N, C, *spatial), as PyTorch and ONNX
hold them, and channels-last (N, *spatial, C), as Keras and TensorFlow do.

Channels-first float input runs the separable row kernels (cpool._kernels.pool,
vectorized along W); channels-last input, and integer input in either layout, runs the
channels-last kernels (cpool._kernels.channels_last, vectorized over C). These see every
array as (B, D, H, W, C); a channels-first array is a batch of N*C one-channel images.
Small channels-first planes, whose rows are too short for the row kernels' vector loops,
are pooled by the channels-last kernels a block of planes at a time, transposed in
thread-private scratch (channels_last.forward_planes).
"""
import functools
import math

import numpy as np

from ._geometry import divisor_grid


def split_shape(shape, channels_last):
    """(N, C, spatial) of a batched shape in either layout."""
    if channels_last:
        return shape[0], shape[-1], tuple(shape[1:-1])
    return shape[0], shape[1], tuple(shape[2:])


def join_shape(n, c, spatial, channels_last):
    """The batched shape of (N, C, spatial) in either layout."""
    return (n,) + tuple(spatial) + (c,) if channels_last else (n, c) + tuple(spatial)


def spatial_axes(nd, channels_last):
    """Axis numbers of the spatial dims of a batched array."""
    first = 1 if channels_last else 2
    return tuple(range(first, first + nd))


def kernel_view(arr, channels_last):
    """`arr` (batched, C-contiguous) as the channels-last kernels' (B, D, H, W, C)."""
    n, c, spatial = split_shape(arr.shape, channels_last)
    lifted = (1,) * (3 - len(spatial)) + tuple(spatial)
    if channels_last:
        return arr.reshape((n,) + lifted + (c,))
    return arr.reshape((n * c,) + lifted + (1,))


# Channels-first planes with rows at most this long and at most this many pixels go
# through channels_last.forward_planes: measured 2.5-7x faster than the row kernels for
# 7x7 to 14x14 planes, 1.2-2x for 20x20 and 24x24, even at 28x28, slower from 32x32.
PLANE_MAX_W = 28
PLANE_MAX_PIXELS = 1024


def runs_plane_blocks(spatial, channels_last):
    """True when channels-first input of these spatial dims pools in transposed blocks."""
    return (not channels_last and spatial[-1] <= PLANE_MAX_W
            and math.prod(spatial) <= PLANE_MAX_PIXELS)


# Max pooling with its argmax (training, return_indices) on larger channels-first 2-D
# planes: the row kernels vectorize its column step only for windows 2 or 3 wide with
# stride 1 or 2 along W. Other windows (5x5/1 as in YOLO's SPPF, 4x4/1, 3x3/3, 7x7/1) run
# the plane blocks up to this many pixels: measured 2.7-5x faster forward on 80x80 to
# 320x320 planes. The cap bounds each thread's transposed block of planes.
TAPS_PLANE_MAX_PIXELS = 65536


def runs_taps_plane_blocks(geom, channels_last):
    """True when channels-first max pooling with argmax of PoolGeometry `geom` runs the
    plane blocks (channels_last.max_forward_taps_planes and its backward)."""
    if runs_plane_blocks(geom.in_size, channels_last):
        return True
    if channels_last or len(geom.in_size) != 2 or math.prod(geom.in_size) > TAPS_PLANE_MAX_PIXELS:
        return False
    return not (geom.dilation[-1] == 1 and geom.stride[-1] in (1, 2) and geom.kernel[-1] in (2, 3))


# Channels-first 2-D planes pool stride-1 windows whose output has the input's size (3x3/1
# p1 and the like) a whole plane per call, as flat arrays (pool.pool_forward_same), when
# they have this many pixels: measured faster than the plane blocks from 12x12 (sums) and
# 20x20 (max) planes, and than the row kernels up to 112x112 (sums) and 64x64 (max). The
# max in registers (pool.same_max_in_registers) beats both from 17x17 to 512x512 (0.47x
# the plane blocks on 28x28, 0.85x the rows on 512x512); the cap keeps enough planes per
# call to share among threads, as the kernel runs a plane per thread.
SAME_PIXELS = {"sum": (144, 16384), "max": (400, 4096), "max_registers": (289, 50176)}


def runs_same_planes(geom, channels_last, is_max=False, dtype=None):
    """True when channels-first pooling of PoolGeometry `geom` runs pool.pool_forward_same
    (max or average) and pool.window_sum_backward_same (window sums). dtype: the input's,
    for the max's register kernel."""
    from ._kernels.pool import SAME_MAX_TAPS, same_max_in_registers
    if not (not channels_last and len(geom.in_size) == 2 and geom.stride == (1, 1)
            and tuple(geom.out_size) == tuple(geom.in_size) and max(geom.kernel) <= SAME_MAX_TAPS):
        return False
    kind = "sum"
    if is_max:
        kind = ("max_registers" if dtype is not None and same_max_in_registers(
            np.dtype(dtype), tuple(geom.kernel), tuple(geom.dilation), tuple(geom.pad_begin))
            else "max")
    low, high = SAME_PIXELS[kind]
    return low <= math.prod(geom.in_size) <= high


def runs_2x2_rows(geom, channels_last):
    """True when channels-first pooling of PoolGeometry `geom` runs pool.pool_forward_2x2:
    2x2/2 windows, all inside the input, over each depth slice (kernel depth 1), on planes
    too large for the plane blocks. Measured 1.55x faster than the row kernels on 56x56
    planes, where a row of 28 outputs costs less than the row kernels' per-row work."""
    if channels_last or geom.nd < 2 or runs_plane_blocks(geom.in_size, False):
        return False
    head = geom.nd - 2
    return (geom.kernel[head:] == (2, 2) and geom.stride[head:] == (2, 2)
            and geom.dilation[head:] == (1, 1) and geom.pad_begin[head:] == (0, 0)
            and all(2 * o <= i for o, i in zip(geom.out_size[head:], geom.in_size[head:]))
            and all(k == 1 and s == 1 and p == 0 for k, s, p in
                    zip(geom.kernel[:head], geom.stride[:head], geom.pad_begin[:head])))


# Float32 planes of 12 to 16 columns (one AVX-512 register per row) pool a whole plane
# per call from registers, with no transpose (channels_last.forward_planes, narrow=True),
# where the CPU runs AVX-512. Measured against the plane blocks (time ratio, 1 thread,
# max 2x2/2, max 3x3/2 p1, avg 2x2/2, adaptive max and average to about half, max 3x3/1
# p1): 0.46-0.70 at 16 columns, 0.53-0.76 at 14, 0.55-0.82 at 13, 0.53-0.81 at 12,
# 0.79-1.16 at 10, 0.76-1.49 at 8, 1.1-2.0 at 6. Pyramids keep the plane blocks: their
# levels share one transpose per block, and the narrow kernel's chain of maxima over a
# whole plane (the 1x1 level) is slower. The same planes take the narrow max with taps
# (layers' forward: 0.51-0.87 of the plane blocks' time, 2x2 windows to 3x3/1) and the
# narrow window-sum backward (first version, one plane at a time: 0.69 for avg 2x2/2 on
# 14 columns, 0.96 for adaptive 13 -> 6; two planes at a time and whole scratch rows took
# the latter a further 0.88 x 0.94).
NARROW_PLANES = True
NARROW_MIN_W = 12


def narrow_planes(spatial):
    """The `narrow` argument of channels_last.forward_planes, max_forward_taps_planes and
    sum_backward_planes for one grid over planes of these spatial dims (the kernels take
    at most 16 columns of float32 and check the rest)."""
    return NARROW_PLANES and spatial[-1] >= NARROW_MIN_W


def plane_view(arr):
    """Channels-first `arr` (batched, C-contiguous) as forward_planes' (N, C, D, H, W)."""
    return arr.reshape(arr.shape[:2] + (1,) * (5 - arr.ndim) + arr.shape[2:])


def plane_rows(arr):
    """Channels-first `arr` (N, C, *spatial) as rows (N, C * pixels): a view when
    C-contiguous, as the plane-block max kernels take taps and gradients."""
    return arr.reshape(arr.shape[0], math.prod(arr.shape[1:]))


def tap_level(geom, out):
    """The entry of one grid (a PoolGeometry or BinGrid) in the levels of
    channels_last.max_forward_taps_planes: its output, size, window tables and tap
    strides."""
    wins, pos = window_tables(geom)
    out_3d = (1,) * (3 - len(geom.out_size)) + tuple(geom.out_size)
    return plane_view(out), out_3d, *wins, pos[1].shape[1], pos[2].shape[1]


@functools.lru_cache(maxsize=256)
def tap_offsets(geom):
    """(output pixels, taps per window) int32, read-only and cached: the flat input element
    (in its plane) under each window tap, taps numbered as max_forward_taps_planes numbers
    them ((t_d * KH + t_h) * KW + t_w), -1 where the tap lies outside the input: the
    levels of channels_last.max_backward_taps_planes."""
    pos = window_tables(geom)[1]
    in_3d = (1,) * (3 - len(geom.in_size)) + tuple(geom.in_size)
    flat, inside = np.zeros((1,) * 6, dtype=np.int64), np.ones((1,) * 6, dtype=bool)
    for dim, (p, length) in enumerate(zip(pos, in_3d)):
        shape = [1] * 6
        shape[dim], shape[3 + dim] = p.shape
        p = p.reshape(shape)
        flat = flat * length + p
        inside = inside & (p >= 0) & (p < length)
    n_out, n_taps = math.prod(p.shape[0] for p in pos), math.prod(p.shape[1] for p in pos)
    table = np.where(inside, flat, -1).astype(np.int32).reshape(n_out, n_taps)
    table.flags.writeable = False
    return table


def runs_channels_last(dtype, channels_last):
    """True when the channels-last kernels compute this call (see the module docstring)."""
    return channels_last or np.dtype(dtype).kind in "iu"


@functools.lru_cache(maxsize=256)
def average_divisors(geom, count_include_pad, divisor_override):
    """geom.divisors_3d(count_include_pad, divisor_override) of a PoolGeometry, read-only
    and cached (20 us a call otherwise)."""
    div_d, div_h, cols = geom.divisors_3d(count_include_pad, divisor_override)
    _frozen((div_d, div_h, cols[0]))
    return div_d, div_h, cols


@functools.lru_cache(maxsize=256)
def average_divisor_plane(geom, count_include_pad, divisor_override, dtype):
    """Every window's divisor as the whole-plane kernels read it: a C-contiguous (OH, OW)
    array of `dtype`, read-only and cached."""
    divisors = average_divisors(geom, count_include_pad, divisor_override)
    plane = np.ascontiguousarray(divisor_grid(divisors, geom.out_size, False, dtype))
    plane.flags.writeable = False
    return plane


@functools.lru_cache(maxsize=256)
def window_tables(geom):
    """(window tables, tap positions) of a PoolGeometry or BinGrid, read-only and cached."""
    return _frozen(geom.window_tables_3d()), _frozen(geom.tap_positions_3d())


@functools.lru_cache(maxsize=256)
def cover_tables(geom):
    """The cover tables of a PoolGeometry or BinGrid, read-only and cached."""
    return _frozen(geom.cover_tables_3d())


@functools.lru_cache(maxsize=256)
def overlaps_along_w(geom):
    """True when some input column lies under more than one window along W (cached)."""
    return bool(cover_tables(geom)[2][:, 0].max(initial=0) > 1)


def _frozen(tables):
    for t in tables:
        t.flags.writeable = False
    return tuple(tables)
