"""ONNX as a second oracle for max, average and Lp pooling.

1. onnxruntime runs single-node MaxPool / AveragePool / LpPool graphs (opset 19, whose
   ceil_mode drops a last window starting in the right padding, as PyTorch and cpool do)
   on random geometries; inputs are NaN-free (onnxruntime's NaN handling differs, see
   NOTES) and geometries with a window made only of padding are skipped (onnxruntime pads
   max with -FLT_MAX, cpool with -inf).
2. The backend test cases shipped in the onnx package (onnx/backend/test/case/node/
   maxpool.py, averagepool.py, lppool.py) are collected by replacing their `expect` and
   run through cpool.functional, translating each node's attributes.
"""
import importlib

import numpy as np
import pytest

from cpool import functional as F
from tests import reference as R
from tests.pool_cases import has_padding_only_window, random_geometry, random_input, rng_for

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

OPSET = 19
IR_VERSION = 9  # opset 19's IR version; onnx >= 1.20 writes 14 by default, which ort refuses


# --------------------------------------------------------------------------------------
# ONNX attributes <-> cpool arguments.
# --------------------------------------------------------------------------------------

AUTO_PAD = {"VALID": "valid", "SAME_UPPER": "same", "SAME_LOWER": "same_lower"}


def node_attributes(node):
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if isinstance(attrs.get("auto_pad"), bytes):
        attrs["auto_pad"] = attrs["auto_pad"].decode()
    return attrs


def cpool_run(op_type, attrs, x):
    """Run the ONNX pooling node `op_type` with attributes `attrs` through cpool.functional.

    Returns the outputs as ONNX defines them (MaxPool: values and indices flat over the
    whole tensor, in the plane order given by storage_order)."""
    nd = x.ndim - 2
    kernel = tuple(attrs["kernel_shape"])
    stride = tuple(attrs.get("strides", (1,) * nd))  # ONNX's default stride is 1
    dilation = tuple(attrs.get("dilations", (1,) * nd))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = attrs.get("pads", (0,) * (2 * nd))  # [b1, b2, ..., e1, e2, ...]
        padding = tuple((pads[i], pads[i + nd]) for i in range(nd))
    else:
        padding = AUTO_PAD[auto_pad]
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    if op_type == "MaxPool":
        out, idx = getattr(F, f"max_pool{nd}d")(x, kernel, stride, padding, dilation, ceil_mode,
                                                return_indices=True)
        return out, onnx_indices(idx, x.shape, attrs.get("storage_order", 0))
    if op_type == "AveragePool":
        return (getattr(F, f"avg_pool{nd}d")(
            x, kernel, stride, padding, ceil_mode,
            count_include_pad=bool(attrs.get("count_include_pad", 0)), dilation=dilation),)
    if op_type == "LpPool":
        return (getattr(F, f"lp_pool{nd}d")(x, attrs.get("p", 2), kernel, stride, padding,
                                            dilation, ceil_mode),)
    raise AssertionError(op_type)


def onnx_indices(idx, in_shape, storage_order):
    """PyTorch indices (flat within each (n, c) plane, row-major) -> ONNX's (flat over the
    whole tensor; storage_order=1 numbers each plane column-major)."""
    spatial = in_shape[2:]
    if storage_order:
        idx = np.ravel_multi_index(np.unravel_index(idx, spatial), spatial, order="F")
    plane = int(np.prod(spatial))
    n, c = in_shape[:2]
    offset = (np.arange(n)[:, None] * c + np.arange(c)[None, :]) * plane
    return idx + offset.reshape((n, c) + (1,) * len(spatial))


def onnx_attributes(geo, nd, in_size):
    """cpool keyword arguments (as random_geometry makes them) -> ONNX attributes.

    onnxruntime sizes SAME_UPPER/SAME_LOWER from the undilated kernel (its pools disagree
    with the ONNX spec and with its own shape inference once dilation > 1; its Conv
    refuses the combination), so dilated "same" pads are written out explicitly."""
    def per_dim(v):
        return list(v) if isinstance(v, (tuple, list)) else [v] * nd

    kernel = per_dim(geo["kernel_size"])
    attrs = dict(kernel_shape=kernel,
                 strides=kernel if geo["stride"] is None else per_dim(geo["stride"]),
                 dilations=per_dim(geo["dilation"]))
    padding = geo["padding"]
    if isinstance(padding, str) and max(attrs["dilations"]) > 1:
        padding = R.resolve_pads(padding, in_size, kernel, attrs["strides"], attrs["dilations"])
    if isinstance(padding, str):
        attrs["auto_pad"] = {v: k for k, v in AUTO_PAD.items()}[padding]
    else:
        pairs = R.resolve_pads(padding, [1] * nd, kernel, kernel, kernel)
        attrs["pads"] = [b for b, _ in pairs] + [e for _, e in pairs]
        attrs["ceil_mode"] = int(geo["ceil_mode"])  # ONNX forbids ceil_mode with auto_pad
    return attrs


def cpool_geometry(geo):
    return dict(geo, ceil_mode=geo["ceil_mode"] and not isinstance(geo["padding"], str))


def ort_run(op_type, attrs, x, n_outputs=1):
    node = helper.make_node(op_type, ["x"], ["y", "indices"][:n_outputs], **attrs)
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if n_outputs == 2:
        outputs.append(helper.make_tensor_value_info("indices", TensorProto.INT64, None))
    graph = helper.make_graph([node], op_type, [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def random_ort_cases(key, nd, count):
    rng = rng_for("ort", key, nd)
    made = 0
    while made < count:
        geo, in_size = random_geometry(rng, nd)
        geo = cpool_geometry(geo)
        if has_padding_only_window(geo, in_size):
            continue
        made += 1
        x = random_input(rng, (int(rng.integers(1, 3)), int(rng.integers(1, 4))) + in_size,
                         np.float32)
        yield geo, x, onnx_attributes(geo, nd, in_size)


# --------------------------------------------------------------------------------------
# onnxruntime on random geometries.
# --------------------------------------------------------------------------------------

def test_attribute_translation_round_trips():
    geo = dict(kernel_size=(3, 2), stride=None, padding=((1, 0), (0, 1)), dilation=(1, 2),
               ceil_mode=True)
    attrs = onnx_attributes(geo, 2, (5, 6))
    assert attrs == dict(kernel_shape=[3, 2], strides=[3, 2], dilations=[1, 2],
                         pads=[1, 0, 0, 1], ceil_mode=1)
    idx = np.array([[[[0, 5]], [[3, 1]]]])  # (1, 2, 1, 2) within planes of shape (2, 3)
    np.testing.assert_array_equal(onnx_indices(idx, (1, 2, 2, 3), 0), [[[[0, 5]], [[9, 7]]]])
    # column-major plane numbering: (h, w) -> w*H + h; 5 = (1, 2) -> 5, 3 = (1, 0) -> 1
    np.testing.assert_array_equal(onnx_indices(idx, (1, 2, 2, 3), 1), [[[[0, 5]], [[7, 8]]]])


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_maxpool_values_and_indices_match_onnxruntime(nd):
    for geo, x, attrs in random_ort_cases("max", nd, 10):
        for storage_order in (0, 1) if nd == 2 else (0,):
            attrs = dict(attrs, storage_order=storage_order)
            want_y, want_idx = ort_run("MaxPool", attrs, x, n_outputs=2)
            got_y, got_idx = cpool_run("MaxPool", attrs, x)
            np.testing.assert_array_equal(got_y, want_y, err_msg=str(attrs))
            np.testing.assert_array_equal(got_idx, want_idx, err_msg=str(attrs))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_averagepool_matches_onnxruntime(nd):
    for geo, x, attrs in random_ort_cases("avg", nd, 10):
        for count_include_pad in (0, 1):
            attrs = dict(attrs, count_include_pad=count_include_pad)
            (want,) = ort_run("AveragePool", attrs, x)
            (got,) = cpool_run("AveragePool", attrs, x)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(attrs))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lppool_matches_onnxruntime(nd):
    for i, (geo, x, attrs) in enumerate(random_ort_cases("lp", nd, 9)):
        attrs = dict(attrs, p=1 + i % 3)  # ONNX's p is an int
        (want,) = ort_run("LpPool", attrs, x)
        (got,) = cpool_run("LpPool", attrs, x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(attrs))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad_equals_explicit_pads(auto_pad):
    # the same windows through auto_pad and through the pads cpool computes for it
    rng = rng_for("auto_pad", auto_pad)
    x = random_input(rng, (2, 3, 9, 10), np.float32)
    attrs = dict(kernel_shape=[4, 3], strides=[2, 3])  # no dilation: see onnx_attributes
    padding = AUTO_PAD[auto_pad]
    pairs = R.resolve_pads(padding, x.shape[2:], [4, 3], [2, 3], [1, 1])
    explicit = dict(attrs, pads=[b for b, _ in pairs] + [e for _, e in pairs])
    for op in ("MaxPool", "AveragePool", "LpPool"):
        (want,) = ort_run(op, dict(attrs, auto_pad=auto_pad), x)[:1]
        np.testing.assert_allclose(ort_run(op, explicit, x)[0], want, rtol=1e-6)
        np.testing.assert_allclose(cpool_run(op, dict(attrs, auto_pad=auto_pad), x)[0], want,
                                   rtol=1e-5, atol=1e-6)


def test_ceil_mode_last_window_rule_matches_onnxruntime():
    # opset 19: a ceil window that would start in the right padding is dropped; an
    # overhanging window is averaged over its taps inside the padded extent
    x = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 6)
    for attrs in (dict(kernel_shape=[3], strides=[3], pads=[1, 1], ceil_mode=1),
                  dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1),
                  dict(kernel_shape=[2], strides=[2], pads=[0, 0], ceil_mode=1),
                  # effective kernel longer than the input by less than the stride
                  dict(kernel_shape=[7], strides=[2], pads=[0, 0], ceil_mode=1),
                  dict(kernel_shape=[4], strides=[3], dilations=[2], ceil_mode=1)):
        for cip in (0, 1):
            a = dict(attrs, count_include_pad=cip)
            np.testing.assert_allclose(cpool_run("AveragePool", a, x)[0],
                                       ort_run("AveragePool", a, x)[0], rtol=1e-6)
        np.testing.assert_array_equal(cpool_run("MaxPool", attrs, x)[0],
                                      ort_run("MaxPool", attrs, x)[0])
        np.testing.assert_allclose(cpool_run("LpPool", attrs, x)[0],
                                   ort_run("LpPool", attrs, x)[0], rtol=1e-6)


# --------------------------------------------------------------------------------------
# The backend test cases that ship with onnx.
# --------------------------------------------------------------------------------------

BACKEND = {"maxpool": "MaxPool", "averagepool": "AveragePool", "lppool": "LpPool"}

def _backend_exports():
    params = []
    for module_name, class_name in BACKEND.items():
        module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
        for name in sorted(vars(getattr(module, class_name))):
            if not name.startswith("export"):
                continue
            params.append(pytest.param(module_name, class_name, name,
                                       id=f"{class_name}.{name[len('export_'):]}"))
    return params


def collect_backend_cases(monkeypatch, module_name, class_name, export_name):
    module = importlib.import_module(f"onnx.backend.test.case.node.{module_name}")
    cases = []
    monkeypatch.setattr(module, "expect", lambda node, inputs, outputs, name, **kw:
                        cases.append((name, node, inputs, outputs)))
    np.random.seed(0)  # the exporters draw their inputs from the global generator
    getattr(getattr(module, class_name), export_name)()
    assert cases, f"{export_name} produced no test case"
    return cases


def test_every_backend_case_is_collected():
    names = {p.values[2] for p in _backend_exports()}
    assert len(names) >= 40


@pytest.mark.parametrize("module_name, class_name, export_name", _backend_exports())
def test_onnx_backend_case(monkeypatch, module_name, class_name, export_name):
    for name, node, inputs, outputs in collect_backend_cases(monkeypatch, module_name,
                                                             class_name, export_name):
        assert node.op_type == class_name
        attrs = node_attributes(node)
        (x,) = inputs
        got = cpool_run(node.op_type, attrs, x)
        for k, (g, want) in enumerate(zip(got, outputs)):
            assert g.shape == want.shape, name
            if want.dtype.kind in "iu" and k == 0:  # uint8 MaxPool: exact, dtype kept
                assert g.dtype == want.dtype, name
                np.testing.assert_array_equal(g, want, err_msg=name)
            elif want.dtype.kind in "iu":  # indices
                np.testing.assert_array_equal(g, want, err_msg=name)
            else:  # the onnx runner's tolerance: some expected outputs are written to 4 digits
                np.testing.assert_allclose(g, want, rtol=1e-3, atol=1e-7, err_msg=name)
