#!/usr/bin/env python
"""Time cpool against onnxruntime and PyTorch, side by side in one process.

Every row is timed for every library at each thread count in the same run, so the
ratios printed at the end compare like with like. See tools/README.md for what each
column means; in short:

  forward      cpool's functional call vs onnxruntime (graph optimization ALL and BASIC)
               and torch (NCHW, channels_last, mkldnn) under torch.no_grad().
  fwd+bwd      cpool's layer in training mode, forward then layer.backward(g), vs torch
               forward then torch.autograd.grad with the same fixed g, per layout.
  floor        the read-once memory floor: cpool._kernels.membench.stream_fold reads the
               row's input once and writes an output-sized array once, with the same
               thread count (fwd+bwd floor: that, plus reading g and writing grad_input).

Usage:
  python tools/bench.py                     # every row, 1 thread and all threads
  python tools/bench.py --quick             # small shapes, few repeats (smoke test)
  python tools/bench.py --rows max2d_k3s2p1,masked_mean --threads 1,2
  python tools/bench.py --scaling           # cpool time per thread count 1,2,4,...
  python tools/bench.py --json out.json --plot out.png
Run it from the repository root after building (pip install . or build_ext --inplace);
with an in-place build, PYTHONPATH=src is added automatically.
"""
import argparse
import gc
import glob
import inspect
import json
import os
import platform
import sys
import textwrap
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np

# Prefer this checkout's in-place build (src/cpool with compiled kernels) over an install.
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
_BUILT = [p for ext in ("so", "pyd")
          for p in glob.glob(os.path.join(_SRC, "cpool", "_kernels", f"pool.*.{ext}"))]
if _BUILT and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

# The peers first: importing cpool sets OMP_WAIT_POLICY=PASSIVE unless it is set, and
# PyTorch's libgomp.so.1 loaded after that would read it too. Loaded first, it keeps its
# default (workers spin a while before sleeping) and cpool's kernels share that runtime.
try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = TF = None

import cpool  # noqa: E402
import cpool.layers  # noqa: E402,F401  (not necessarily imported by cpool/__init__)
from cpool import functional as CF  # noqa: E402

try:
    from cpool._kernels.membench import stream_fold
except ImportError:  # built before membench.pyx existed
    stream_fold = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

try:
    import torchvision.ops as tv_ops
except ImportError:
    tv_ops = None

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
except ImportError:
    onnx = ort = None

OPSET = 21
IR_VERSION = 10  # onnx >= 1.20 writes IR 14 by default, which onnxruntime < 1.32 refuses
SETTLE_S = 0.02  # pause between libraries so their idle OpenMP/ORT workers stop spinning

PEERS = ("ort all", "ort basic", "torch nchw", "torch cl", "torch mkldnn", "torchvision")
LIBS = ("cpool",) + PEERS


class Skip(Exception):
    """A row or an implementation that cannot run here (the message says why)."""


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------

@dataclass
class Timing:
    median: float  # seconds per call
    min: float
    samples: list

    def value(self, stat):
        return self.median if stat == "median" else self.min


@dataclass
class Plan:
    """How to time: see measure_rounds."""
    repeats: int = 7
    warmup: int = 2
    rounds: int = 3
    stat: str = "min"
    budget_s: float = 0.25
    max_total_s: float = 5.0
    min_sample_s: float = 2e-4


def measure_rounds(fns, plan):
    """Time every callable of the dict `fns`, interleaved: each of plan.rounds rounds takes
    its share of every callable's samples in turn, so a burst of load from outside the
    process hits all libraries alike. Returns {key: Timing}.

    Per callable: plan.warmup calls, then at least plan.repeats samples (more for fast calls,
    up to budget_s of samples and 200 samples; fewer for slow ones, to fit in max_total_s).
    A sample loops the call until it lasts min_sample_s, which only batches calls far below
    a millisecond. Before each block of samples, a pause lets the previous library's idle
    workers stop spinning."""
    rounds = plan.rounds
    sched, samples = {}, {k: [] for k in fns}
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            for key, fn in fns.items():
                time.sleep(SETTLE_S)
                gc.disable()
                if r == 0:
                    for _ in range(plan.warmup):
                        fn()
                    t0 = time.perf_counter()
                    fn()
                    first = max(time.perf_counter() - t0, 1e-7)
                    number = 1 if first >= plan.min_sample_s else \
                        int(plan.min_sample_s / first) + 1
                    per_sample = first * number
                    n = max(plan.repeats, min(200, int(plan.budget_s / per_sample)))
                    n = max(3, min(n, int(plan.max_total_s / per_sample)))
                    sched[key] = (number, -(-n // rounds))
                number, n = sched[key]
                for _ in range(n):
                    t0 = time.perf_counter()
                    for _ in range(number):
                        fn()
                    samples[key].append((time.perf_counter() - t0) / number)
                if gc_was_enabled:
                    gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {k: Timing(float(np.median(v)), float(np.min(v)), v) for k, v in samples.items()}


def set_threads(n):
    """One thread count for every library: cpool, torch, and NumPy's BLAS (the matmuls of
    cpool's Conv2d/Linear in the training row). onnxruntime gets it per session."""
    cpool.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    if threadpool_limits is not None:
        threadpool_limits(limits=n, user_api="blas")


# --------------------------------------------------------------------------------------
# Implementations: one callable per library and direction
# --------------------------------------------------------------------------------------

@dataclass
class Impl:
    """One library's way of running a row. fwd/fb are zero-argument callables (None when
    the library cannot); fwd_result/fb_result give NumPy results in cpool's layout."""
    name: str
    fwd: object = None
    fb: object = None
    fwd_result: object = None
    fb_result: object = None
    note: str = ""


@dataclass
class Row:
    key: str
    title: str
    issue: int
    x: np.ndarray                 # the input the floor streams (and GB/s counts)
    out_shape: tuple
    cpool: Impl = None
    peers_fn: object = None       # threads -> [Impl] (ORT sessions depend on threads)
    mem_fn: object = None         # the forward call whose peak memory is traced
    notes: list = field(default_factory=list)


def _short(err):
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return msg[:90]


def try_impl(name, build):
    """build() -> Impl; any failure becomes an Impl that records why it cannot run."""
    try:
        impl = build()
        if impl.fwd is not None:
            impl.fwd()
        return impl
    except Skip as e:
        return Impl(name, note=f"n/a: {e}")
    except Exception as e:  # a peer that rejects this op or layout
        return Impl(name, note=f"n/a: {type(e).__name__}: {_short(e)}")


def checked_fb(impl):
    """Run fb once; on failure drop it with a note (forward may still run)."""
    if impl.fb is None:
        return impl
    try:
        impl.fb()
    except Exception as e:
        impl.fb = impl.fb_result = None
        impl.note = (impl.note + "; " if impl.note else "") + f"no fwd+bwd: {_short(e)}"
    return impl


# ---- torch ---------------------------------------------------------------------------

def _to_numpy(t):
    if t.is_mkldnn:
        t = t.to_dense()
    if t.is_quantized:
        t = t.int_repr()
    return t.contiguous().numpy()


def _quint8(t):
    """The same uint8 values as a quint8 tensor (scale 1, zero point 0) in t's memory
    format: torch's channels_last uint8 max_pool2d raises on real sizes (torch 2.13:
    'Expected input_depth * input_height * input_width <= ...<integer_t>::max()'), while
    its quantized max_pool2d has an NHWC uint8 kernel. Quantized tensors are deprecated,
    hence the warnings filter."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(t.float(), 1.0, 0, torch.quint8)


def torch_impls(fn, xs, gy, layouts=None, spatial=2, name_prefix="torch", nhwc=False):
    """Impls for torch function fn(*tensors) in each layout. xs: NumPy inputs, the first of
    which is the differentiated one (others are held constant); gy: the fixed grad_output
    (None: forward only, as for integer inputs). nhwc: xs[0] and gy are channels-last
    (N, H, W, C) arrays; torch gets NCHW-logical views of the same buffers (channels_last
    strides, so layout "cl" copies nothing), and 4-D results come back as NHWC. layouts
    default: nchw, cl and mkldnn; with nhwc only cl and mkldnn (nchw would time a copy)."""
    if torch is None:
        return []
    if layouts is None:
        layouts = ("cl", "mkldnn") if nhwc else ("nchw", "cl", "mkldnn")

    def tensor(a, first):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.movedim(-1, 1) if nhwc and first else t
    impls = []
    for layout in layouts:
        name = f"{name_prefix} {layout}"

        def build(layout=layout, name=name):
            if layout == "cl" and spatial != 2:
                raise Skip("channels_last is 4-D only")
            conv = {"nchw": lambda t: t.contiguous(),
                    "cl": lambda t: t.contiguous(memory_format=torch.channels_last)
                    if t.dim() == 4 else t.contiguous(),
                    "mkldnn": lambda t: t.to_mkldnn() if t.dim() >= 4 and t.dtype ==
                    torch.float32 else t.contiguous()}[layout]
            ts = [conv(tensor(a, i == 0)) for i, a in enumerate(xs)]
            if layout == "mkldnn" and not ts[0].is_mkldnn:
                raise Skip("mkldnn needs a 4-D or 5-D float32 input")
            note = ""
            if layout == "cl" and ts[0].dtype == torch.uint8:
                try:
                    fn(*ts)
                except RuntimeError as e:
                    ts[0] = _quint8(ts[0])
                    note = f"quint8 (uint8 raised: {_short(e)[:60]}...)"
            rest = ts[1:]

            def fwd():
                with torch.no_grad():
                    return fn(ts[0], *rest)
            if gy is not None:
                g = conv(tensor(gy, True))
                x_req = ts[0].detach().requires_grad_()

                def fb():
                    return torch.autograd.grad(fn(x_req, *rest), x_req, g)[0]
            else:
                fb = None

            def post(t):
                a = _to_numpy(t)
                return np.ascontiguousarray(np.moveaxis(a, 1, -1)) if nhwc else a
            return Impl(name, fwd, fb, lambda: post(fwd()), fb and (lambda: post(fb())),
                        note)
        impls.append(checked_fb(try_impl(name, build)))
    return impls


# ---- onnxruntime ---------------------------------------------------------------------

def onnx_model(nodes, inputs, outputs, name="bench", elem_type=None):
    """A single-graph model; inputs/outputs are (name, shape) of elem_type (default float32)
    except int64 names that end in '_i64'."""
    def vi(n, shape):
        dt = TensorProto.INT64 if n.endswith("_i64") else (elem_type or TensorProto.FLOAT)
        return helper.make_tensor_value_info(n, dt, list(shape) if shape is not None else None)
    graph = helper.make_graph(nodes, name, [vi(n, s) for n, s in inputs],
                              [vi(n, s) for n, s in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_impls(model_bytes, feeds, threads):
    if ort is None:
        return []
    impls = []
    for level, name in ((ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "ort all"),
                        (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "ort basic")):
        def build(level=level, name=name):
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.log_severity_level = 3
            sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
            out_name = sess.get_outputs()[0].name

            def fwd():
                return sess.run([out_name], feeds)[0]
            return Impl(name, fwd, None, fwd)
        impls.append(try_impl(name, build))
    return impls


def _ort_cache(make):
    """peers_fn helper: build the ORT impls once per thread count."""
    cache = {}

    def get(threads):
        if threads not in cache:
            cache[threads] = make(threads)
        return cache[threads]
    return get


def pool_attrs(k, s, p, nd):
    return dict(kernel_shape=[k] * nd, strides=[s] * nd, pads=[p] * (2 * nd))


# ---- cpool ---------------------------------------------------------------------------

def cpool_impl(fwd, layer_name, ctor_args, layer_args, gy, layer_kwargs=None):
    """cpool's forward callable, plus fwd+bwd through the layer cpool.layers.<layer_name> in
    training mode: layer(*layer_args, **layer_kwargs), then layer.backward(gy). ctor_args
    is the constructor's positional arguments followed by a dict of keyword arguments."""
    impl = Impl("cpool", fwd, None, fwd)
    if not hasattr(cpool.layers, layer_name):
        impl.note = f"no fwd+bwd: cpool.layers.{layer_name} missing"
        return impl
    try:
        layer = getattr(cpool.layers, layer_name)(*ctor_args[:-1], **ctor_args[-1])
        layer.train()
    except Exception as e:
        impl.note = f"no fwd+bwd: {layer_name}(...) raised {type(e).__name__}: {_short(e)}"
        return impl

    def fb():
        layer(*layer_args, **(layer_kwargs or {}))
        return layer.backward(gy)
    impl.fb = impl.fb_result = fb
    return checked_fb(impl)


def accepts(fn, arg):
    try:
        return arg in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------

def _randn(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _row_input(x_nchw, nhwc, cf):
    """(the row's input, cpool's extra keywords): x_nchw as is, or with nhwc the same data
    channels-last, (N, *spatial, C), and channels_last=True, once cf takes it (issue 6)."""
    if not nhwc:
        return x_nchw, {}
    if not accepts(cf, "channels_last"):
        raise Skip("cpool has no channels_last yet (issue 6)")
    return np.ascontiguousarray(np.moveaxis(x_nchw, 1, -1)), {"channels_last": True}


def _nhwc_perm(nd, to_nhwc):
    return [0, *range(2, nd + 2), 1] if to_nhwc else [0, nd + 1, *range(1, nd + 1)]


def _pool_graph(pools, nhwc, nd=2):
    """ONNX nodes from the graph input "x" to the output "y" (None when a pool returns
    None). Each pool(in_name, out_name) makes one pooling node; several pools are each
    flattened from axis 1 and concatenated (a spatial pyramid). nhwc: x and y are
    channels-last; one Transpose to NCHW feeds the pools and one Transpose back follows
    each, what an NHWC model exported to ONNX runs (so a pyramid level flattens as
    (l, l, C))."""
    T = lambda a, b, to_nhwc: helper.make_node(  # noqa: E731
        "Transpose", [a], [b], perm=_nhwc_perm(nd, to_nhwc))
    single = len(pools) == 1
    src, nodes, outs = "x", [], []
    if nhwc:
        nodes.append(T("x", "xt", False))
        src = "xt"
    for i, pool in enumerate(pools):
        out = "y" if single and not nhwc else f"p{i}"
        node = pool(src, out)
        if node is None:
            return None
        nodes.append(node)
        if nhwc:
            back = "y" if single else f"q{i}"
            nodes.append(T(out, back, True))
            out = back
        outs.append(out)
    if not single:
        nodes += [helper.make_node("Flatten", [o], [f"f{i}"], axis=1) for i, o in enumerate(outs)]
        nodes.append(helper.make_node("Concat", [f"f{i}" for i in range(len(outs))], ["y"],
                                      axis=1))
    return nodes


def _set_pool_peers(row, y_shape, pools, nhwc, t_impls, nd=2):
    """row.peers_fn: onnxruntime on _pool_graph(pools, nhwc) (per thread count), then the
    torch impls t_impls. nhwc: note each peer's NHWC path."""
    nodes = _pool_graph(pools, nhwc, nd) if ort is not None else None
    if nodes is not None:
        x = row.x
        model = onnx_model(nodes, [("x", x.shape)], [("y", y_shape)],
                           elem_type=helper.np_dtype_to_tensor_dtype(x.dtype))
        row.peers_fn = _ort_cache(lambda th: ort_impls(model, {"x": x}, th) + t_impls)
    else:
        if ort is not None:
            row.notes.append("onnxruntime: bins not uniform, no single ONNX pool expresses it")
        row.peers_fn = lambda th: t_impls
    if nhwc:  # each peer's own NHWC path, no copy of x inside the timing
        row.notes.append("NHWC input: torch cl = channels_last view of the same buffer, "
                         "mkldnn converted outside the timing; onnxruntime runs "
                         "Transpose -> pool -> Transpose on it")


def row_pool(key, title, shape, op, k, s, p, count_include_pad=True, nhwc=False,
             dtype=np.float32, rng=None):
    """Sliding-window max/avg pooling rows (issue 2). shape is NCHW-logical; nhwc: cpool
    gets the same data channels-last with channels_last=True (issue 6), and the peers their
    own NHWC paths on that buffer. An integer dtype is timed forward only."""
    nd = len(shape) - 2
    floating = np.issubdtype(dtype, np.floating)
    x_nchw = _randn(rng, shape).astype(dtype, copy=False) if floating else \
        rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    if op == "max":
        cf = getattr(CF, f"max_pool{nd}d")
        kw = dict(kernel_size=k, stride=s, padding=p)
        layer_name = f"MaxPool{nd}d"
        tf = getattr(TF, f"max_pool{nd}d") if TF else None
        tkw = dict(kernel_size=k, stride=s, padding=p)
        onnx_op, onnx_kw = "MaxPool", pool_attrs(k, s, p, nd)
    else:
        cf = getattr(CF, f"avg_pool{nd}d")
        kw = dict(kernel_size=k, stride=s, padding=p, count_include_pad=count_include_pad)
        layer_name = f"AvgPool{nd}d"
        tf = getattr(TF, f"avg_pool{nd}d") if TF else None
        tkw = dict(kernel_size=k, stride=s, padding=p, count_include_pad=count_include_pad)
        onnx_op = "AveragePool"
        onnx_kw = dict(pool_attrs(k, s, p, nd), count_include_pad=int(count_include_pad))
    x, cl_kw = _row_input(x_nchw, nhwc, cf)
    kw.update(cl_kw)
    del x_nchw
    y = cf(x, **kw)
    gy = _randn(np.random.default_rng(1), y.shape) if floating else None
    if floating:
        impl = cpool_impl(lambda: cf(x, **kw), layer_name, (kw,), (x,), gy)
    else:
        impl = Impl("cpool", lambda: cf(x, **kw), None, lambda: cf(x, **kw),
                    note=f"forward only ({np.dtype(dtype).name} has no gradient)")
    row = Row(key, title, 2 if not nhwc else 6, x, y.shape, impl)
    row.mem_fn = lambda: cf(x, **kw)

    t_impls = torch_impls(lambda t: tf(t, **tkw), [x], gy, spatial=nd, nhwc=nhwc) \
        if tf else []
    _set_pool_peers(row, y.shape, [lambda a, b: helper.make_node(onnx_op, [a], [b], **onnx_kw)],
                    nhwc, t_impls, nd)
    return row


def _uniform_bins(L, out):
    """(kernel, stride) when PyTorch's adaptive bins on L -> out are one sliding window."""
    starts = [(i * L) // out for i in range(out)]
    ends = [-((-(i + 1) * L) // out) for i in range(out)]
    k = ends[0] - starts[0]
    s = starts[1] - starts[0] if out > 1 else 1
    ok = all(e - b == k for b, e in zip(starts, ends)) and \
        all(b == i * s for i, b in enumerate(starts))
    return (k, s) if ok else None


def _adaptive_onnx(op, in_hw, out_hw):
    """pool(x_name, y_name) for _pool_graph: an ONNX node for adaptive pooling when its bins
    are uniform (else None)."""
    bins = [_uniform_bins(L, o) for L, o in zip(in_hw, out_hw)]

    def pool(x_name, y_name):
        if any(b is None for b in bins):
            return None
        return helper.make_node(op, [x_name], [y_name], kernel_shape=[b[0] for b in bins],
                                strides=[b[1] for b in bins], pads=[0] * (2 * len(bins)))
    return pool


def row_adaptive(key, title, shape, out_hw, op, nhwc=False, rng=None):
    """Adaptive pooling rows (issue 3); nhwc as in row_pool (issue 6)."""
    fname = f"adaptive_{op}_pool2d"
    lname = f"Adaptive{op.capitalize()}Pool2d"
    if not hasattr(CF, fname):
        raise Skip(f"cpool.functional.{fname} not there yet (issue 3)")
    cf = getattr(CF, fname)
    x, kw = _row_input(_randn(rng, shape), nhwc, cf)
    y = cf(x, out_hw, **kw)
    gy = _randn(np.random.default_rng(1), y.shape)
    impl = cpool_impl(lambda: cf(x, out_hw, **kw), lname, (out_hw, kw), (x,), gy)
    row = Row(key, title, 6 if nhwc else 3, x, y.shape, impl)
    row.mem_fn = lambda: cf(x, out_hw, **kw)
    t_impls = []
    if TF is not None:
        tf = getattr(TF, fname)
        t_impls = torch_impls(lambda t: tf(t, out_hw), [x], gy, nhwc=nhwc)
    _set_pool_peers(row, y.shape, [_adaptive_onnx("MaxPool" if op == "max" else "AveragePool",
                                                  shape[2:], out_hw)], nhwc, t_impls)
    return row


def row_spp(key, title, shape, levels, nhwc=False, rng=None):
    """Spatial pyramid max pooling (issue 3); nhwc as in row_pool (issue 6): cpool then
    flattens each level as (l, l, C), and so does every peer."""
    if not hasattr(CF, "spatial_pyramid_pool"):
        raise Skip("cpool.functional.spatial_pyramid_pool not there yet (issue 3)")
    x, kw = _row_input(_randn(rng, shape), nhwc, CF.spatial_pyramid_pool)
    y = CF.spatial_pyramid_pool(x, levels, "max", **kw)
    gy = _randn(np.random.default_rng(1), y.shape)
    impl = cpool_impl(lambda: CF.spatial_pyramid_pool(x, levels, "max", **kw),
                      "SpatialPyramidPool", (levels, "max", kw), (x,), gy)
    row = Row(key, title, 6 if nhwc else 3, x, y.shape, impl)
    row.mem_fn = lambda: CF.spatial_pyramid_pool(x, levels, "max", **kw)
    t_impls = []
    if TF is not None:
        def level(t, lv):  # (N, C, l, l), or (N, l, l, C) for cpool's channels-last order
            p = TF.adaptive_max_pool2d(t, lv)
            return p.permute(0, 2, 3, 1) if nhwc else p

        def tspp(t):
            return torch.cat([level(t, lv).flatten(1) for lv in levels], 1)
        t_impls = torch_impls(tspp, [x], gy, nhwc=nhwc)
    pools = [(lambda a, b: helper.make_node("GlobalMaxPool", [a], [b])) if lv == 1 else
             _adaptive_onnx("MaxPool", shape[2:], (lv, lv)) for lv in levels]
    _set_pool_peers(row, y.shape, pools, nhwc, t_impls)
    perm, back = (".permute(0, 2, 3, 1)", " + Transpose") if nhwc else ("", "")
    row.notes.append(f"torch: cat of adaptive_max_pool2d(l){perm}.flatten(1); onnxruntime: "
                     f"GlobalMaxPool/MaxPool{back} + Flatten + Concat")
    return row


def row_roi_align(key, title, shape, n_rois, out_hw, rng):
    if not hasattr(CF, "roi_align"):
        raise Skip("cpool.functional.roi_align not there yet (issue 3)")
    x = _randn(rng, shape)
    scale, ratio = 1.0 / 16, 2
    img = shape[2] / scale
    xy = rng.uniform(0, img * 0.85, size=(n_rois, 2))
    wh = rng.uniform(16, img * 0.5, size=(n_rois, 2))
    rois = np.concatenate([xy, np.minimum(xy + wh, img - 1)], 1).astype(np.float32)
    bidx = rng.integers(0, shape[0], n_rois).astype(np.int64)
    kw = dict(output_size=out_hw, spatial_scale=scale, sampling_ratio=ratio, aligned=True)
    y = CF.roi_align(x, rois, bidx, **kw)
    gy = _randn(np.random.default_rng(1), y.shape)
    impl = cpool_impl(lambda: CF.roi_align(x, rois, bidx, **kw), "RoIAlign", (kw,),
                      (x, rois, bidx), gy)
    row = Row(key, title, 3, x, y.shape, impl)
    row.mem_fn = lambda: CF.roi_align(x, rois, bidx, **kw)
    t_impls = []
    if tv_ops is not None:
        boxes = np.concatenate([bidx[:, None].astype(np.float32), rois], 1)

        def troi(t, b):
            return tv_ops.roi_align(t, b, out_hw, spatial_scale=scale, sampling_ratio=ratio,
                                    aligned=True)
        t_impls = torch_impls(troi, [x, boxes], gy, layouts=("nchw", "cl"),
                              name_prefix="torchvision")
        for ti in t_impls:
            ti.name = "torchvision" if ti.name.endswith("nchw") else "torch cl"
    else:
        row.notes.append("torchvision not installed: onnxruntime RoiAlign is the only peer")
    o_impls = lambda th: []  # noqa: E731
    if ort is not None:
        node = helper.make_node("RoiAlign", ["x", "rois", "bidx_i64"], ["y"], mode="avg",
                                output_height=out_hw[0], output_width=out_hw[1],
                                sampling_ratio=ratio, spatial_scale=scale,
                                coordinate_transformation_mode="half_pixel")
        model = onnx_model([node], [("x", shape), ("rois", rois.shape),
                                    ("bidx_i64", bidx.shape)], [("y", y.shape)])
        feeds = {"x": x, "rois": rois, "bidx_i64": bidx}
        o_impls = lambda th: ort_impls(model, feeds, th)  # noqa: E731
    row.peers_fn = _ort_cache(lambda th: o_impls(th) + t_impls)
    row.notes.append(f"{n_rois} RoIs, spatial_scale 1/16, sampling_ratio {ratio}, aligned "
                     "(half_pixel); floor streams the feature map and the output once")
    return row


def row_masked_mean(key, title, shape, rng):
    if not hasattr(CF, "sequence_pool"):
        raise Skip("cpool.functional.sequence_pool not there yet (issue 3)")
    n, L, c = shape
    x = _randn(rng, shape)
    lengths = rng.integers(1, L + 1, n).astype(np.int64)
    mask = (np.arange(L)[None, :] < lengths[:, None]).astype(np.float32)
    y = CF.sequence_pool(x, lengths=lengths, mode="mean", layout="NLC")
    gy = _randn(np.random.default_rng(1), y.shape)
    impl = cpool_impl(lambda: CF.sequence_pool(x, lengths=lengths, mode="mean", layout="NLC"),
                      "SequencePool", ("mean", "NLC", {}), (x,), gy, dict(lengths=lengths))
    row = Row(key, title, 3, x, y.shape, impl)
    row.mem_fn = lambda: CF.sequence_pool(x, lengths=lengths, mode="mean", layout="NLC")
    t_impls = []
    if torch is not None:
        lens_f = lengths.astype(np.float32)

        def tmean(t, m, ln):
            return (t * m[..., None]).sum(1) / ln[:, None]
        t_impls = torch_impls(tmean, [x, mask, lens_f], gy, layouts=("nchw",))
    o_impls = lambda th: []  # noqa: E731
    if ort is not None:
        axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
        nodes = [helper.make_node("Mul", ["x", "mask"], ["xm"]),
                 helper.make_node("ReduceSum", ["xm", "axes_i64"], ["s"], keepdims=0),
                 helper.make_node("Mul", ["s", "inv_len"], ["y"])]
        graph_inputs = [("x", shape), ("mask", (n, L, 1)), ("inv_len", (n, 1))]
        feeds = {"x": x, "mask": mask[:, :, None].copy(),
                 "inv_len": (1.0 / lengths.astype(np.float32))[:, None].copy()}
        nodes.insert(0, helper.make_node("Constant", [], ["axes_i64"], value=axes))
        model = onnx_model(nodes, graph_inputs, [("y", y.shape)])
        o_impls = lambda th: ort_impls(model, feeds, th)  # noqa: E731
    row.peers_fn = _ort_cache(lambda th: o_impls(th) + t_impls)
    row.notes.append("NLC, random lengths in [1, L]; torch: (x*mask[...,None]).sum(1)/lengths; "
                     "onnxruntime: Mul + ReduceSum + Mul")
    return row


# ---- the table of rows ---------------------------------------------------------------

def _rows_spec(quick):
    """key -> (builder, title, full-size args, quick args)."""
    def q(full, small):
        return small if quick else full
    spec = {}
    for suffix, nhwc in (("", False), ("_nhwc", True)):
        lay = " NHWC" if nhwc else ""
        spec["max2d_k3s2p1" + suffix] = (
            row_pool, f"max2d k3s2p1{lay}", q((32, 64, 112, 112), (4, 64, 112, 112)),
            dict(op="max", k=3, s=2, p=1, nhwc=nhwc))
        spec["max2d_k2s2" + suffix] = (
            row_pool, f"max2d k2s2{lay}", q((32, 128, 56, 56), (4, 128, 56, 56)),
            dict(op="max", k=2, s=2, p=0, nhwc=nhwc))
        spec["avg2d_k2s2" + suffix] = (
            row_pool, f"avg2d k2s2{lay}", q((32, 128, 56, 56), (4, 128, 56, 56)),
            dict(op="avg", k=2, s=2, p=0, nhwc=nhwc))
        spec["avg2d_k3s1p1_excl" + suffix] = (
            row_pool, f"avg2d k3s1p1 excl-pad{lay}", q((32, 192, 28, 28), (4, 192, 28, 28)),
            dict(op="avg", k=3, s=1, p=1, count_include_pad=False, nhwc=nhwc))
        if not nhwc:
            spec["max1d_k3s2p1"] = (row_pool, "max1d k3s2p1", q((64, 256, 4000),
                                                                   (8, 64, 4000)),
                                    dict(op="max", k=3, s=2, p=1))
        spec["adaptive_avg" + suffix] = (
            row_adaptive, f"adaptive avg ->6x6{lay}", q((32, 256, 13, 13), (4, 256, 13, 13)),
            dict(out_hw=(6, 6), op="avg", nhwc=nhwc))
        spec["adaptive_max" + suffix] = (
            row_adaptive, f"adaptive max ->7x7{lay}", q((32, 512, 14, 14), (4, 512, 14, 14)),
            dict(out_hw=(7, 7), op="max", nhwc=nhwc))
        spec["spp" + suffix] = (
            row_spp, f"SPP max (1,2,4){lay}", q((32, 256, 13, 13), (4, 256, 13, 13)),
            dict(levels=(1, 2, 4), nhwc=nhwc))
    spec["max2d_k3s2p1_u8_nhwc"] = (
        row_pool, "max2d k3s2p1 NHWC uint8", q((32, 64, 112, 112), (4, 64, 112, 112)),
        dict(op="max", k=3, s=2, p=1, nhwc=True, dtype=np.uint8))
    spec["roi_align"] = (row_roi_align, "roi_align 7x7",
                         q((2, 256, 50, 50), (1, 256, 50, 50)),
                         dict(n_rois=q(512, 64), out_hw=(7, 7)))
    spec["masked_mean"] = (row_masked_mean, "masked mean NLC",
                           q((64, 512, 768), (8, 512, 768)), {})
    return spec


ORDER = ["max2d_k3s2p1", "max2d_k2s2", "avg2d_k2s2", "avg2d_k3s1p1_excl", "max1d_k3s2p1",
         "max2d_k3s2p1_nhwc", "max2d_k2s2_nhwc", "avg2d_k2s2_nhwc", "avg2d_k3s1p1_excl_nhwc",
         "max2d_k3s2p1_u8_nhwc",
         "adaptive_avg", "adaptive_avg_nhwc", "adaptive_max", "adaptive_max_nhwc",
         "spp", "spp_nhwc", "roi_align", "masked_mean", "mnist_train"]


# --------------------------------------------------------------------------------------
# The training row (issue 4)
# --------------------------------------------------------------------------------------

def _cpool_mnist_model():
    L = cpool.layers
    return cpool.Sequential(
        L.Conv2d(1, 32, 3), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(32, 64, 3), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(64, 64, 3), L.ReLU(), L.Flatten(), L.Linear(64 * 3 * 3, 10))


def train_bench(batch, plan, threads_list, rng):
    """images/s of one Adam step of the seed's 28x28 CNN, cpool vs torch."""
    x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    results, notes = [], []

    step_cp = None
    missing = [n for n in ("Sequential",) if not hasattr(cpool, n)]
    missing += [f"layers.{n}" for n in ("Conv2d", "ReLU", "Flatten", "Linear")
                if not hasattr(cpool.layers, n)]
    missing += [f"{m}" for m in ("losses", "optimizers") if not hasattr(cpool, m)]
    if missing:
        notes.append("cpool skipped: missing " + ", ".join(missing) + " (issue 4)")
    else:
        try:
            model = _cpool_mnist_model()
            model.train()
            loss_fn = cpool.losses.CrossEntropyLoss()
            opt = cpool.optimizers.Adam(model.parameters(), lr=1e-3)

            def cp_step():  # what Sequential.fit does per batch
                opt.zero_grad()
                logits = model(x)
                loss_fn(logits, y)
                model.backward(loss_fn.backward())
                opt.step()
            cp_step()
            step_cp = cp_step
        except Exception as e:
            notes.append(f"cpool skipped: {type(e).__name__}: {_short(e)}")
            step_cp = None

    step_t = None
    if torch is not None:
        nn = torch.nn
        tmodel = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
                               nn.Linear(64 * 3 * 3, 10))
        topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
        tloss = nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def t_step():
            topt.zero_grad(set_to_none=True)
            tloss(tmodel(xt), yt).backward()
            topt.step()
        step_t = t_step
    steps = {name: step for name, step in (("cpool", step_cp), ("torch nchw", step_t))
             if step is not None}
    for th in threads_list:
        set_threads(th)
        for name, t in measure_rounds(steps, plan).items():
            results.append(dict(row="mnist_train", threads=th, lib=name, dir="train",
                                s=t.value(plan.stat), median_s=t.median, min_s=t.min,
                                images_per_s=batch / t.value(plan.stat)))
    return results, notes


# --------------------------------------------------------------------------------------
# Running a row
# --------------------------------------------------------------------------------------

def floor_fns(row, threads):
    """{"fwd": ..., "bwd": ...} callables of the read-once floor ({} without membench).

    fwd streams row.x once into a freshly allocated output-sized array; bwd streams an
    output-sized g once into a fresh input-sized array (the fwd+bwd floor is their sum;
    only for rows where cpool has a fwd+bwd). Integer rows stream as many bytes of float32.
    Fresh, because every library returns a new array per call: above glibc's mmap threshold
    (32 MiB at most) that costs page faults, which belong to the floor of such a call.
    """
    if stream_fold is None:
        return {}
    x = row.x.reshape(-1)
    n_out = int(np.prod(row.out_shape))
    if x.dtype.kind != "f":  # the floor counts bytes: as many float32 (ones: no denormals)
        n_out = -(-n_out * x.itemsize // 4)
        x = np.ones(-(-x.nbytes // 4), np.float32)
    fns = {"fwd": lambda: stream_fold(x, np.empty(n_out, x.dtype), threads)}
    if row.cpool.fb is not None:
        g = np.ones(n_out, dtype=x.dtype)
        fns["bwd"] = lambda: stream_fold(g, np.empty(x.size, x.dtype), threads)
    return fns


def peak_memory_ratio(fn, out_bytes):
    """Peak bytes NumPy allocates during fn() (tracemalloc) over the output's bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak / out_bytes if out_bytes else float("nan")


def compare(ref, other):
    """'ok' or a short mismatch description (max |diff|) between cpool and a peer."""
    try:
        other = np.asarray(other)
        if other.shape != ref.shape:
            return f"MISMATCH shape {other.shape} vs {ref.shape}"
        if np.allclose(other, ref, rtol=1e-4, atol=1e-4, equal_nan=True):
            return "ok"
        return f"MISMATCH max|diff| {np.nanmax(np.abs(other - ref)):.2e}"
    except Exception as e:
        return f"check failed: {_short(e)}"


def run_row(row, threads_list, plan, check):
    results = []
    out_bytes = int(np.prod(row.out_shape)) * row.x.dtype.itemsize
    mem = peak_memory_ratio(row.mem_fn, out_bytes) if row.mem_fn else float("nan")
    for th in threads_list:
        set_threads(th)
        impls = [row.cpool] + row.peers_fn(th)
        notes = {im.name: im.note for im in impls}
        if check:  # same answer as cpool? (forward, and gradient where both have one)
            ref_f = row.cpool.fwd_result()
            ref_b = row.cpool.fb_result() if row.cpool.fb_result else None
            for im in impls[1:]:
                if im.fwd_result is not None:
                    notes[im.name] = _join(notes[im.name], "fwd " + compare(ref_f, im.fwd_result()))
                if ref_b is not None and im.fb_result is not None:
                    notes[im.name] = _join(notes[im.name], "grad " + compare(ref_b, im.fb_result()))
            del ref_f, ref_b
        fns = {("floor", d): fn for d, fn in floor_fns(row, th).items()}
        fns.update({(im.name, d): fn for im in impls
                    for d, fn in (("fwd", im.fwd), ("fb", im.fb)) if fn is not None})
        times = measure_rounds(fns, plan)
        stat = plan.stat
        base = dict(row=row.key, title=row.title, issue=row.issue, threads=th,
                    shape=list(row.x.shape), out_shape=list(row.out_shape),
                    in_bytes=int(row.x.nbytes), out_bytes=out_bytes)
        if ("floor", "fwd") in times:
            f = times[("floor", "fwd")]
            results.append(dict(base, lib="floor", dir="fwd", s=f.value(stat),
                                median_s=f.median, min_s=f.min))
        if ("floor", "bwd") in times:
            b = times[("floor", "bwd")]
            results.append(dict(base, lib="floor", dir="fb", s=f.value(stat) + b.value(stat),
                                median_s=f.median + b.median, min_s=f.min + b.min))
        for (lib, d), t in times.items():
            if lib == "floor":
                continue
            rec = dict(base, lib=lib, dir=d, s=t.value(stat), median_s=t.median, min_s=t.min)
            if lib == "cpool" and d == "fwd":
                rec["peak_mem_vs_out"] = mem
            results.append(rec)
        results.append(dict(base, lib="_notes", dir="",
                            notes={k: v for k, v in notes.items() if v}
                            | ({"row": "; ".join(row.notes)} if row.notes else {})))
        gc.collect()
    return results


def _join(a, b):
    return f"{a}; {b}" if a else b


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------

def _index(results):
    idx = {}
    for r in results:
        if r.get("dir") in ("fwd", "fb", "train"):
            idx[(r["row"], r["threads"], r["dir"], r["lib"])] = r
    return idx


def _fmt_ms(s):
    return "-" if s is None else (f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.2f}")


def _fmt_ratio(v, target=None):
    if v is None or not np.isfinite(v):
        return "-"
    mark = "" if target is None else (" ok" if v <= target else " !!")
    return f"{v:.2f}{mark}"


def _best(idx, key_prefix, libs):
    best = None
    for lib in libs:
        r = idx.get(key_prefix + (lib,))
        if r is not None and (best is None or r["s"] < best[1]):
            best = (lib, r["s"])
    return best


TORCH_LIBS = ("torch nchw", "torch cl", "torch mkldnn", "torchvision")


def report(results, train_notes, stat, file=sys.stdout):
    """Print the time tables, the targets table, the training table and the notes."""
    idx = _index(results)
    keys = []
    for r in results:
        k = (r["row"], r["threads"])
        if r["row"] != "mnist_train" and k not in keys:
            keys.append(k)
    titles = {r["row"]: r.get("title", r["row"]) for r in results}
    p = lambda *a: print(*a, file=file)  # noqa: E731
    if keys:
        for d, label in (("fwd", "FORWARD"), ("fb", "FORWARD + BACKWARD")):
            _time_table(p, idx, keys, titles, results, d, label, stat)
        _targets_table(p, idx, keys, titles)
    _train_table(p, idx, results, train_notes)
    _notes(p, results)


def _time_table(p, idx, keys, titles, results, d, label, stat):
    peers = [lib for lib in PEERS if any(r["lib"] == lib for r in results)]
    p(f"\n{label} ({stat} ms; '-' = not run or not available)")
    head = f"{'row':27s}{'thr':>4s}{'floor':>9s}{'cpool':>9s}" + \
        "".join(f"{lib:>13s}" for lib in peers)
    head += f"{'GB/s':>7s}" if d == "fwd" else ""
    p(head + f"{'/floor':>8s}  /fastest peer")
    for row, th in keys:
        g = lambda lib: idx.get((row, th, d, lib))  # noqa: E731
        cp, fl = g("cpool"), g("floor")
        if not any(g(lib) for lib in LIBS):  # e.g. no fwd+bwd for an integer row
            continue
        line = f"{titles[row][:26]:27s}{th:4d}{_fmt_ms(fl and fl['s']):>9s}" \
               f"{_fmt_ms(cp and cp['s']):>9s}"
        line += "".join(f"{_fmt_ms(g(lib) and g(lib)['s']):>13s}" for lib in peers)
        best = _best(idx, (row, th, d), PEERS)
        if d == "fwd":
            gbs = (cp["in_bytes"] + cp["out_bytes"]) / cp["s"] / 1e9 if cp else None
            line += f"{(f'{gbs:.1f}' if gbs else '-'):>7s}"
        line += f"{_fmt_ratio(cp and fl and cp['s'] / fl['s']):>8s}"
        line += "  " + (f"{cp['s'] / best[1]:.2f} ({best[0]})" if cp and best else "-")
        p(line)


def _targets_table(p, idx, keys, titles):
    p("\nTARGETS (cpool time / peer time; ok = target met, !! = missed)")
    p(f"{'row':27s}{'thr':>4s}{'fwd/ort best':>14s}{'fwd/torch nchw':>16s}"
      f"{'fb/torch best':>15s}{'fwd/fastest':>13s}{'fb/fastest':>12s}{'fwd/floor':>11s}"
      f"{'peak mem/out':>14s}")
    p(f"{'(target)':27s}{'':4s}{'<=1':>14s}{'<=0.5':>16s}{'<=1':>15s}{'<=1':>13s}{'<=1':>12s}"
      f"{'<=1.25':>11s}{'<=1.05':>14s}")

    def ratio(cp, best):
        return cp["s"] / best[1] if cp and best else None
    for row, th in keys:
        cp_f, cp_b = idx.get((row, th, "fwd", "cpool")), idx.get((row, th, "fb", "cpool"))
        fl = idx.get((row, th, "fwd", "floor"))
        nchw = idx.get((row, th, "fwd", "torch nchw"))
        cols = [
            _fmt_ratio(ratio(cp_f, _best(idx, (row, th, "fwd"), ("ort all", "ort basic"))), 1),
            _fmt_ratio(cp_f["s"] / nchw["s"] if cp_f and nchw else None, 0.5),
            _fmt_ratio(ratio(cp_b, _best(idx, (row, th, "fb"), TORCH_LIBS)), 1),
            _fmt_ratio(ratio(cp_f, _best(idx, (row, th, "fwd"), PEERS)), 1),
            _fmt_ratio(ratio(cp_b, _best(idx, (row, th, "fb"), PEERS)), 1),
            _fmt_ratio(cp_f["s"] / fl["s"] if cp_f and fl else None, 1.25),
            _fmt_ratio(cp_f.get("peak_mem_vs_out") if cp_f else None, 1.05),
        ]
        widths = (14, 16, 15, 13, 12, 11, 14)
        p(f"{titles[row][:26]:27s}{th:4d}" + "".join(f"{c:>{w}s}" for c, w in zip(cols, widths)))


def _train_table(p, idx, results, train_notes):
    train = [r for r in results if r["row"] == "mnist_train"]
    if not (train or train_notes):
        return
    p("\nTRAINING: seed's 28x28 MNIST CNN, batch 64, Adam, random data (images/s)")
    ips = lambda r: f"{r['images_per_s']:9.0f}" if r else f"{'-':>9s}"  # noqa: E731
    for th in sorted({r["threads"] for r in train}):
        c = idx.get(("mnist_train", th, "train", "cpool"))
        t = idx.get(("mnist_train", th, "train", "torch nchw"))
        ratio = c["images_per_s"] / t["images_per_s"] if c and t else None
        verdict = "-" if ratio is None else f"{ratio:.2f}" + (" ok" if ratio >= 0.7 else " !!")
        p(f"  threads {th:2d}: cpool {ips(c)}   torch {ips(t)}   cpool/torch {verdict} "
          "(target >= 0.7)")
    for n in train_notes:
        p(f"  note: {n}")


def _notes(p, results):
    notes = [r for r in results if r["lib"] == "_notes" and r["notes"]]
    if not notes:
        return
    p("\nNOTES (availability, and each peer's result checked against cpool's)")
    seen = set()
    for r in notes:
        for lib, n in r["notes"].items():
            if (r["row"], lib, n) not in seen:
                seen.add((r["row"], lib, n))
                p(f"  {r['row']} [{lib}] {n}")


# --------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------

COLORS = {"cpool": "#d62728", "ort all": "#1f77b4", "ort basic": "#aec7e8",
          "torch nchw": "#ff7f0e", "torch cl": "#ffbb78", "torch mkldnn": "#2ca02c",
          "torchvision": "#9467bd"}


def plot(results, path, stat):
    """Grouped bars: one panel per (direction, thread count), one group per row, one bar per
    library, heights = time / read-once floor on a log axis (the floor is the line at 1).
    Above each group: cpool's time over the fastest peer's (green when cpool wins)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    idx = _index(results)
    threads = sorted({r["threads"] for r in results if r["row"] != "mnist_train"})
    rows = []
    for r in results:
        if r["row"] != "mnist_train" and r["row"] not in rows and r["lib"] != "_notes":
            rows.append(r["row"])
    titles = {r["row"]: r.get("title", r["row"]) for r in results}
    train = [r for r in results if r["row"] == "mnist_train"]
    libs = [lib for lib in LIBS if any(r["lib"] == lib for r in results)]
    panels = [(d, th) for d in ("fwd", "fb") for th in threads] if rows else []
    n_panels = len(panels) + (1 if train else 0)
    if n_panels == 0:
        return
    heights = [3.4] * len(panels) + ([2.4] if train else [])
    fig, axes = plt.subplots(n_panels, 1, squeeze=False,
                             figsize=(max(10, 0.95 * len(rows) + 3), sum(heights) + 0.9),
                             gridspec_kw=dict(height_ratios=heights))
    axes = axes[:, 0]
    width = 0.8 / max(1, len(libs))
    all_rows = rows
    for ax, (d, th) in zip(axes, panels):
        top = 1.0
        rows = [row for row in all_rows if (row, th, d, "cpool") in idx]  # e.g. no uint8 fb
        for i, row in enumerate(rows):  # channels-last input: shaded
            if row.endswith("_nhwc"):
                ax.axvspan(i - 0.5, i + 0.5, color="#eeeeee", zorder=0, linewidth=0)
        for j, lib in enumerate(libs):
            xs, ys = [], []
            for i, row in enumerate(rows):
                r, fl = idx.get((row, th, d, lib)), idx.get((row, th, d, "floor"))
                if r is not None and fl is not None:
                    xs.append(i + (j - (len(libs) - 1) / 2) * width)
                    ys.append(r["s"] / fl["s"])
            if xs:
                ax.bar(xs, ys, width, color=COLORS.get(lib, "grey"),
                       edgecolor="black" if lib == "cpool" else "none", linewidth=0.7)
                top = max(top, max(ys))
        for i, row in enumerate(rows):  # cpool / fastest peer, above the group
            cp, best = idx.get((row, th, d, "cpool")), _best(idx, (row, th, d), PEERS)
            if cp and best:
                ratio = cp["s"] / best[1]
                ax.text(i, top * 1.6, f"{ratio:.2f}x", ha="center", va="bottom", fontsize=8,
                        color="#2ca02c" if ratio <= 1 else "#d62728", fontweight="bold")
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1.2)
        if d == "fwd":
            ax.axhline(1.25, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_ylim(top=top * 4)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([textwrap.fill(titles[r], 14) for r in rows], fontsize=8)
        ax.set_ylabel("time / floor")
        what = "forward" if d == "fwd" else "forward + backward"
        ax.set_title(f"{what}, {th} thread{'s' if th > 1 else ''}: {stat} time / read-once "
                     "floor (lower is better); label = cpool / fastest peer", fontsize=10)
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.set_xlim(-0.6, len(rows) - 0.4)
    if train:
        ax = axes[-1]
        tthreads = sorted({r["threads"] for r in train})
        for j, lib in enumerate(("cpool", "torch nchw")):
            for i, th in enumerate(tthreads):
                r = idx.get(("mnist_train", th, "train", lib))
                x0 = i + (j - 0.5) * 0.3
                if r is None:
                    ax.text(x0, 0, f"{lib}: n/a", ha="center", va="bottom", fontsize=8)
                    continue
                ax.bar(x0, r["images_per_s"], 0.3, color=COLORS[lib],
                       edgecolor="black" if lib == "cpool" else "none", linewidth=0.7)
                ax.text(x0, r["images_per_s"], f"{r['images_per_s']:.0f}", ha="center",
                        va="bottom", fontsize=8)
        ax.set_ylim(top=1.2 * max(r["images_per_s"] for r in train))
        ax.set_xticks(range(len(tthreads)))
        ax.set_xticklabels([f"{th} thread{'s' if th > 1 else ''}" for th in tthreads])
        ax.set_xlim(-0.8, len(tthreads) - 0.2)
        ax.set_ylabel("images / s")
        ax.set_title("training step, seed's 28x28 MNIST CNN, batch 64, Adam "
                     "(higher is better; target cpool >= 0.7x torch)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=COLORS.get(lib, "grey"),
                     edgecolor="black" if lib == "cpool" else "none", label=lib) for lib in libs]
    handles += [Line2D([], [], color="black", linestyle="--",
                       label="read-once floor (fwd+bwd: x, y, g, grad_x once)"),
                Line2D([], [], color="grey", linestyle=":", label="1.25x floor (forward target)")]
    if any(r.endswith("_nhwc") for r in all_rows):
        handles.append(Patch(facecolor="#eeeeee", label="NHWC input: cpool channels_last=True, "
                             "peers' NHWC paths"))
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / (sum(heights) + 0.9)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Scaling mode
# --------------------------------------------------------------------------------------

def scaling_counts(max_threads):
    """1, 2, 4, 8, 16, ... up to max_threads, and max_threads itself."""
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= max_threads]
    return counts if max_threads in counts else counts + [max_threads]


def scaling_header(counts, plan):
    print(f"\nSCALING: cpool {plan.stat} ms per thread count (speedup over 1 thread), and the "
          "read-once floor's")
    print(f"{'row':27s}{'dir':>5s}" + "".join(f"{n:>16d}" for n in counts))


def scaling_row(row, counts, plan):
    """Print and return cpool's and the floor's time per thread count for one row."""
    out = []
    for d in ("fwd", "fb"):
        fn = row.cpool.fwd if d == "fwd" else row.cpool.fb
        if fn is None:
            continue
        cells, fcells, t1, f1 = [], [], None, None
        for n in counts:
            set_threads(n)
            fns = {("floor", k): f for k, f in floor_fns(row, n).items()}
            fns["cpool"] = fn
            times = {k: v.value(plan.stat) for k, v in measure_rounds(fns, plan).items()}
            t = times["cpool"]
            fl = None if ("floor", "fwd") not in times else times[("floor", "fwd")] + \
                (times[("floor", "bwd")] if d == "fb" else 0.0)
            t1 = t1 or t
            f1 = f1 or fl
            cells.append(f"{t * 1e3:.2f} ({t1 / t:.1f}x)")
            fcells.append(f"{fl * 1e3:.2f} ({f1 / fl:.1f}x)" if fl else "-")
            out.append(dict(row=row.key, title=row.title, dir=d, threads=n, lib="cpool", s=t,
                            floor_s=fl))
        print(f"{row.title[:26]:27s}{d:>5s}" + "".join(f"{c:>16s}" for c in cells))
        print(f"{'  floor':27s}{'':5s}" + "".join(f"{c:>16s}" for c in fcells), flush=True)
    return out


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

def environment():
    env = dict(python=platform.python_version(), machine=platform.machine(),
               processor=platform.processor(), cpu_count=os.cpu_count(),
               cpool=cpool.__version__, numpy=np.__version__,
               torch=torch.__version__ if torch else None,
               torchvision=getattr(sys.modules.get("torchvision"), "__version__", None),
               onnxruntime=ort.__version__ if ort else None,
               onnx=onnx.__version__ if onnx else None,
               floor="membench.stream_fold" if stream_fold else None,
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"),
               openmp_workers_sleep=cpool._threads.WORKERS_SLEEP)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    env["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return env


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="small shapes and 3 repeats: a smoke test, not a measurement")
    ap.add_argument("--rows", default=None,
                    help="comma-separated row keys (default: all); --list shows them")
    ap.add_argument("--list", action="store_true", help="list the row keys and exit")
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default: 1 and os.cpu_count())")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed samples (default 7, quick 3; fewer for calls over 0.7 s)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 2, quick 1)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds over the libraries (default 3, quick 2)")
    ap.add_argument("--stat", choices=("min", "median"), default="min",
                    help="statistic over the samples (default min: robust to preemption on a "
                         "shared machine; median on a quiet one); the JSON keeps both")
    ap.add_argument("--no-check", action="store_true",
                    help="skip comparing every peer's result with cpool's")
    ap.add_argument("--scaling", action="store_true",
                    help="only cpool (and the floor), at 1, 2, 4, 8, 16, ... threads up to "
                         "os.cpu_count() unless --threads is given")
    ap.add_argument("--json", metavar="FILE", help="write every measurement to FILE")
    ap.add_argument("--plot", metavar="FILE.png", help="draw grouped bars per row")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    rounds = args.rounds or (2 if args.quick else 3)
    plan = Plan(repeats, warmup, rounds, args.stat, budget_s=0.05 if args.quick else 0.25,
                max_total_s=1.0 if args.quick else 5.0)
    ncpu = os.cpu_count() or 1
    spec = _rows_spec(args.quick)
    all_keys = ORDER
    if args.list:
        print("\n".join(all_keys))
        return 0
    keys = all_keys if not args.rows else [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in all_keys]
    if unknown:
        print(f"unknown rows: {', '.join(unknown)}; choose from: {', '.join(all_keys)}",
              file=sys.stderr)
        return 2
    if args.threads:
        threads_list = [int(t) for t in args.threads.split(",")]
        if any(t < 1 for t in threads_list):
            print("--threads must be positive ints", file=sys.stderr)
            return 2
    elif args.scaling:
        threads_list = scaling_counts(ncpu)
    else:
        threads_list = sorted({1, ncpu})

    env = environment()
    print("cpool benchmark" + (" (QUICK: small shapes, not a measurement)" if args.quick else ""))
    print("  " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None))
    print(f"  threads {threads_list}, >= {repeats} samples in {rounds} interleaved rounds, "
          f"{warmup} warm-up, {args.stat} time")
    if stream_fold is None:
        print("  WARNING: cpool._kernels.membench is not built: no floor column")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5 * ncpu:
        print(f"  WARNING: load average {load:.1f} on {ncpu} cores: other processes are "
              "running; multi-thread times will measure the machine (see tools/README.md)")
    if env["OMP_NUM_THREADS"]:
        print("  note: OMP_NUM_THREADS is set; every library gets its thread count explicitly")

    rng = np.random.default_rng(0)
    results, skipped, train_notes = [], [], []
    if args.scaling:
        scaling_header(threads_list, plan)
    for key in keys:
        if key == "mnist_train":
            continue
        builder, title, shape, kw = spec[key]
        t0 = time.perf_counter()
        try:
            row = builder(key, title, shape, rng=rng, **kw)
        except Skip as e:
            skipped.append(f"{key}: {e}")
            print(f"  skip {key}: {e}")
            continue
        except Exception as e:  # cpool's own call failed: report it, run the other rows
            skipped.append(f"{key}: ERROR {type(e).__name__}: {_short(e)}")
            print(f"  ERROR in {key}: {type(e).__name__}: {e}")
            continue
        if args.scaling:
            results += scaling_row(row, threads_list, plan)
        else:
            results += run_row(row, threads_list, plan, not args.no_check)
            print(f"  done {key} {tuple(shape)} in {time.perf_counter() - t0:.1f} s", flush=True)
        del row
        gc.collect()

    if not args.scaling:
        if "mnist_train" in keys:
            t0 = time.perf_counter()
            r, train_notes = train_bench(64, plan, threads_list, rng)
            results += r
            print(f"  done mnist_train in {time.perf_counter() - t0:.1f} s", flush=True)
        report(results, train_notes, args.stat)
    if skipped:
        print("\nSKIPPED ROWS")
        for s in skipped:
            print(f"  {s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(environment=env, args=vars(args), threads=threads_list,
                           skipped=skipped, train_notes=train_notes, results=results),
                      f, indent=1, default=float)
        print(f"\nwrote {args.json}")
    if args.plot and not args.scaling:
        plot(results, args.plot, args.stat)
        print(f"wrote {args.plot}")
    cpool.set_num_threads(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
