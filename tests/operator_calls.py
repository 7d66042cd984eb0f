"""A valid call of every operator in cpool.functional.__all__, for the tests that treat all
operators alike (inputs never modified, memory, concurrency). Values are checked against
references elsewhere (test_properties.py and each family's tests); here only the calls."""
import numpy as np

from cpool import functional as F

SHAPES = {
    # (N, C) and the spatial sizes of 1-D, 2-D and 3-D inputs
    "small": ((2, 3), (13,), (9, 11), (5, 6, 7)),
    "large": ((2, 8), (16384,), (128, 128), (24, 32, 32)),
    # rows of 128 to 512 elements: a kernel's per-call row scratch is that wide
    "rows": ((1, 2), (512,), (2, 256), (2, 2, 128)),
}


def operator_calls(size="small", dtype=np.float64, seed=0):
    """{name: (args, kwargs)} with one valid call of each public operator. Every array is
    freshly made, C-contiguous, of `dtype` (integer arrays: int64)."""
    rng = np.random.default_rng(seed)
    lead, *spatial = SHAPES[size]

    def rand(shape):
        return rng.standard_normal(shape).astype(dtype)

    x = {nd: rand(lead + s) for nd, s in zip((1, 2, 3), spatial)}
    calls = {}
    for nd in (1, 2, 3):
        xs = x[nd]
        window = (3, 2, 1)  # kernel_size, stride, padding
        y, idx = F.__dict__[f"max_pool{nd}d"](xs, *window, return_indices=True)
        calls[f"max_pool{nd}d"] = ((xs, *window), {})
        calls[f"max_pool{nd}d_backward"] = ((rand(y.shape), idx, xs.shape), {})
        calls[f"avg_pool{nd}d"] = ((xs, *window), dict(count_include_pad=False))
        calls[f"avg_pool{nd}d_backward"] = ((rand(y.shape), xs.shape, *window),
                                            dict(count_include_pad=False))
        lp = F.__dict__[f"lp_pool{nd}d"](xs, 2.0, *window)
        calls[f"lp_pool{nd}d"] = ((xs, 2.0, *window), {})
        calls[f"lp_pool{nd}d_backward"] = ((rand(lp.shape), xs, lp, 2.0, *window), {})
        # unpooling the output of a kernel-2 max pool
        yk, ik = F.__dict__[f"max_pool{nd}d"](xs, 2, return_indices=True)
        out = F.__dict__[f"max_unpool{nd}d"](yk, ik, 2, output_size=xs.shape[2:])
        calls[f"max_unpool{nd}d"] = ((yk, ik, 2), dict(output_size=xs.shape[2:]))
        calls[f"max_unpool{nd}d_backward"] = ((rand(out.shape), ik), {})
        ya, ia = F.__dict__[f"adaptive_max_pool{nd}d"](xs, 4, return_indices=True)
        calls[f"adaptive_max_pool{nd}d"] = ((xs, 4), {})
        calls[f"adaptive_max_pool{nd}d_backward"] = ((rand(ya.shape), ia, xs.shape), {})
        calls[f"adaptive_avg_pool{nd}d"] = ((xs, 4), {})
        calls[f"adaptive_avg_pool{nd}d_backward"] = ((rand(ya.shape), xs.shape), {})
    for nd in (2, 3):
        xs = x[nd]
        out_size = tuple(s // 2 for s in xs.shape[2:])
        yf, idf = F.__dict__[f"fractional_max_pool{nd}d"](xs, 2, output_size=out_size, seed=1,
                                                          return_indices=True)
        calls[f"fractional_max_pool{nd}d"] = ((xs, 2), dict(output_size=out_size, seed=1))
        calls[f"fractional_max_pool{nd}d_backward"] = ((rand(yf.shape), idf, xs.shape), {})
    x2 = x[2]
    g_global = rand(lead)
    calls["global_max_pool"] = ((x2,), {})
    calls["global_avg_pool"] = ((x2,), {})
    calls["global_lp_pool"] = ((x2,), dict(p=3))
    calls["global_max_pool_backward"] = ((g_global, x2), {})
    calls["global_avg_pool_backward"] = ((g_global, x2.shape), {})
    calls["global_lp_pool_backward"] = ((g_global, x2), dict(p=3))
    H, W = x2.shape[2:]
    bins = [F.window_bins(H, 3, strides=2), F.window_bins(W, [2, 4, 3], strides=2)]
    yb = F.bin_pool(x2, bins, mode="avg")
    calls["bin_pool"] = ((x2, bins), dict(mode="avg"))
    calls["bin_pool_backward"] = ((rand(yb.shape), x2, bins), dict(mode="avg"))
    calls["adaptive_bins"] = ((W, 4), {})
    calls["window_bins"] = ((W, 3), dict(strides=2))
    ys = F.spatial_pyramid_pool(x2, (1, 2, 4))
    calls["spatial_pyramid_pool"] = ((x2, (1, 2, 4)), {})
    calls["spatial_pyramid_pool_backward"] = ((rand(ys.shape), x2, (1, 2, 4)), {})
    K = 4 * lead[0]
    corner = rng.uniform(0, min(H, W) / 2, (K, 2))
    rois = np.hstack([corner, corner + rng.uniform(1, min(H, W) / 2, (K, 2))]).astype(dtype)
    batch_indices = rng.integers(0, lead[0], K)
    yr, ir = F.roi_pool(x2, rois, batch_indices, 3, return_indices=True)
    calls["roi_pool"] = ((x2, rois, batch_indices, 3), {})
    calls["roi_pool_backward"] = ((rand(yr.shape), ir, batch_indices, x2.shape), {})
    calls["roi_align"] = ((x2, rois, batch_indices, 3), dict(sampling_ratio=2, aligned=True))
    calls["roi_align_backward"] = ((rand(yr.shape), rois, batch_indices, x2.shape),
                                   dict(sampling_ratio=2, aligned=True))
    x1 = x[1]  # (N, C, L) is an "NCL" batch of sequences
    lengths = rng.integers(0, x1.shape[2] + 1, x1.shape[0])
    calls["sequence_pool"] = ((x1, lengths), dict(mode="max", layout="NCL"))
    calls["sequence_pool_backward"] = ((rand(x1.shape[:2]), x1.shape, lengths),
                                       dict(mode="max", layout="NCL", x=x1))
    missing = set(F.__all__) - set(calls)
    assert not missing, f"tests/operator_calls.py lacks a call of {sorted(missing)}"
    return {name: calls[name] for name in F.__all__}


def arrays_of(args, kwargs):
    """[(where, array)] for every ndarray among the arguments (in lists too)."""
    found = []
    for where, value in list(enumerate(args)) + list(kwargs.items()):
        items = value if isinstance(value, list) else [value]
        found += [(where, v) for v in items if isinstance(v, np.ndarray)]
    return found


def results_of(result):
    """The arrays an operator returned (one, or a tuple of them)."""
    return list(result) if isinstance(result, tuple) else [result]
