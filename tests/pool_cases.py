"""Random window geometries and inputs shared by the pooling tests."""
import zlib

import numpy as np


def rng_for(*key):
    """A generator seeded by the test's own key (crc32: stable across runs, unlike hash)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))

PADDING_FORMS = ("int", "per_dim", "pairs", "valid", "same", "same_lower")


def has_padding_only_window(geo, in_size):
    """True when some window has no tap inside the input (possible with dilation: the
    taps straddle a short input). Max pooling gives -inf there, with PyTorch's index of
    the first tap at or after 0, which need not be an input element."""
    from tests.reference import Windows

    win = Windows(in_size, geo["kernel_size"], geo["stride"], geo["padding"], geo["dilation"],
                  geo["ceil_mode"])
    return any(not any(0 <= i < L for i in taps)
               for L, dim_taps in zip(in_size, win.taps) for taps in dim_taps)


def random_geometry(rng, nd, *, padding_only_windows=True, **options):
    """(kwargs for kernel_size/stride/padding/dilation/ceil_mode, spatial input size).

    Explicit pads stay within half the effective kernel (cpool's and PyTorch's limit) and
    the input is long enough for at least one window. padding_only_windows=False draws
    again until every window holds an input element.
    """
    while True:
        geo, in_size = _random_geometry(rng, nd, **options)
        if padding_only_windows or not has_padding_only_window(geo, in_size):
            return geo, in_size


def _random_geometry(rng, nd, *, dilation=True, ceil=True, forms=PADDING_FORMS, max_kernel=3,
                     max_stride=3, extra=5):
    kernel = [int(v) for v in rng.integers(1, max_kernel + 1, nd)]
    stride = [int(v) for v in rng.integers(1, max_stride + 1, nd)]
    dil = [int(v) for v in rng.integers(1, 3, nd)] if dilation else [1] * nd
    eff = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
    form = forms[rng.integers(len(forms))]
    if form == "int":
        p = int(rng.integers(0, min(eff) // 2 + 1))
        padding, pairs = p, [(p, p)] * nd
    elif form == "per_dim":
        padding = tuple(int(rng.integers(0, e // 2 + 1)) for e in eff)
        pairs = [(p, p) for p in padding]
    elif form == "pairs":
        pairs = [(int(rng.integers(0, e // 2 + 1)), int(rng.integers(0, e // 2 + 1)))
                 for e in eff]
        padding = tuple(pairs)
    else:
        padding, pairs = form, [(0, 0)] * nd
    in_size = tuple(int(rng.integers(max(1, e - pb - pe), e + extra + 1))
                    for e, (pb, pe) in zip(eff, pairs))
    kwargs = dict(
        kernel_size=kernel[0] if len(set(kernel)) == 1 and rng.random() < 0.5 else tuple(kernel),
        stride=None if rng.random() < 0.2 else tuple(stride),
        padding=padding,
        dilation=tuple(dil) if dilation else 1,
        ceil_mode=bool(ceil and rng.random() < 0.5),
    )
    return kwargs, in_size


def random_input(rng, shape, dtype, kind="normal"):
    """kind: "normal"; "ties" (few distinct values, many ties); "distinct" (no two equal,
    spaced for finite differences); "away0" (|x| >= 0.5, for Lp gradients)."""
    size = int(np.prod(shape))
    if kind == "ties":
        x = rng.integers(-2, 3, size).astype(np.float64)
    elif kind == "distinct":
        x = rng.permutation(size).astype(np.float64) / max(size, 1) * 4 - 2
    elif kind == "away0":
        x = rng.uniform(0.5, 2.0, size) * rng.choice([-1.0, 1.0], size)
    else:
        x = rng.standard_normal(size)
    return x.reshape(shape).astype(dtype)


def with_nans(rng, x, fraction=0.15):
    x = x.copy()
    mask = rng.random(x.shape) < fraction
    x[mask] = np.nan
    return x


def runs_at_every_simd_level(run, threads=(1, 2, 3)):
    """[run() at every instruction set this CPU runs x every thread count]; the SIMD
    level and thread count are restored afterwards."""
    import cpool
    from cpool._kernels import pool
    level, before = pool.get_simd_level(), cpool._threads._num_threads
    results = []
    try:
        for simd in range(pool.detected_simd_level() + 1):
            pool.set_simd_level(simd)
            for n in threads:
                cpool.set_num_threads(n)
                results.append(run())
    finally:
        pool.set_simd_level(level)
        cpool.set_num_threads(before)
    return results


def assert_identical_bits(results):
    """Every run's arrays equal the first run's, bit for bit (NaN payloads included)."""
    for result in results[1:]:
        for a, b in zip(results[0], result):
            assert a.tobytes() == b.tobytes()
