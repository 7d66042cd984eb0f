"""Shared helpers of the ONNX exporter tests."""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from cpool.onnx import export, verify  # noqa: E402

TOL = 1e-5  # the bound on |onnxruntime - cpool| in float32


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def roundtrip(model, example, opset=None, inputs=None, **kwargs):
    """Export, verify (checker, strict shape inference, onnxruntime at batch 1, 2, 7 and
    all-negative values, or `inputs`) and require every max abs diff <= TOL."""
    proto = export(model, example, opset=opset, **kwargs)
    report = verify(model, proto, inputs=inputs)
    assert report, "verify compared no output"
    assert max(report.values()) <= TOL, report
    return proto


def op_types(proto):
    return [node.op_type for node in proto.graph.node]


def attributes(proto, op_type):
    """[{name: value}] of every node of `op_type`."""
    import onnx.helper
    return [{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            for node in proto.graph.node if node.op_type == op_type]
