"""cpool.onnx's API: version table, registry, errors, batch sizes, every opset, files and
the command line."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.onnx.util import TOL, rand, roundtrip

import cpool
from cpool.layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Flatten,
                          Layer, Linear, LPPool2d, MaxPool2d, ReLU, Softmax)
from cpool.onnx import (ExportError, OpsetError, UnsupportedLayerError, VerificationError,
                        default_opset, export, register_converter, supported_opsets,
                        unregister_converter, verify)
from cpool.onnx import _versions
from cpool.onnx.graph import GraphBuilder
from cpool.sequential import Sequential


# ----------------------------------------------------------------------------- versions
def test_opset_ir_table_matches_onnx_release_table():
    """OPSET_IR[o] is the IR version of the first onnx release that defined opset o."""
    first = {}
    for _, ir, opset, *_ in onnx.helper.VERSION_TABLE:
        first.setdefault(opset, ir)
    for opset, ir in _versions.OPSET_IR.items():
        if opset in first:
            assert first[opset] == ir, opset


def test_default_opset_is_the_highest_that_everything_supports():
    ort_ir, ort_opset = _versions.ort_limits()
    expected = max(o for o in _versions.TESTED_OPSETS
                   if o <= min(ort_opset, onnx.defs.onnx_opset_version())
                   and _versions.OPSET_IR[o] <= min(ort_ir, onnx.IR_VERSION))
    assert default_opset() == expected >= 13
    assert supported_opsets()[0] == 13 and supported_opsets()[-1] == expected


def test_ort_limits_rows():
    assert _versions.ort_limits("1.31.0") == (13, 27)  # refuses IR > 13
    assert _versions.ort_limits("1.32.1") == (14, 28)
    assert _versions.ort_limits("1.19.2") == (10, 21)  # between rows: the row below
    assert _versions.ort_limits("1.99.0") == _versions.ORT_LIMITS[max(_versions.ORT_LIMITS)]
    with pytest.raises(RuntimeError, match="older"):
        _versions.ort_limits("1.10.0")


def test_ir_version_is_set_to_what_onnxruntime_accepts():
    proto = export(MaxPool2d(2), rand(1, 1, 4, 4))
    opset = proto.opset_import[0].version
    assert opset == default_opset()
    assert proto.ir_version == _versions.OPSET_IR[opset] <= _versions.ort_limits()[0]
    assert export(MaxPool2d(2), rand(1, 1, 4, 4), opset=13).ir_version == 7


@pytest.mark.parametrize("opset", [12, 99, "13"])
def test_bad_opset(opset):
    with pytest.raises((ValueError, TypeError), match="opset"):
        export(MaxPool2d(2), rand(1, 1, 4, 4), opset=opset)


# ----------------------------------------------------------------------------- every opset
def _mixed_model():
    bn = BatchNorm2d(4)
    bn.buffers["running_var"][:] = [0.5, 1.0, 1.5, 2.0]
    return Sequential(
        Conv2d(3, 4, 3, padding="same", seed=0), bn, ReLU(),
        MaxPool2d(3, 2, 1, ceil_mode=True),                                 # ceil overhang
        AvgPool2d(3, 1, ((1, 0), (0, 1)), count_include_pad=True, dilation=(1, 2)),
        LPPool2d(2, 2, 1, dilation=2, padding=1),                          # LpPool-18 dilations
        AdaptiveAvgPool2d((3, 2)),                                         # non-divisible
        GELU(), Flatten(), Linear(4 * 3 * 2, 5, seed=1), Softmax(1))


@pytest.mark.parametrize("opset", list(range(13, default_opset() + 1)))
def test_every_supported_opset(opset):
    proto = roundtrip(_mixed_model(), rand(2, 3, 9, 11), opset=opset)
    assert proto.opset_import[0].version == opset


# ----------------------------------------------------------------------------- batch sizes
def test_one_graph_serves_batch_sizes_1_2_7():
    model = Sequential(Conv2d(2, 3, 3, seed=0), ReLU(), MaxPool2d(2, ceil_mode=True),
                       Flatten(), Linear(3 * 4 * 5, 4, seed=1))
    proto = export(model, rand(2, 2, 9, 11))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [2, 9, 11]
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    model.eval()
    for batch in (1, 2, 7):
        x = rand(batch, 2, 9, 11, seed=batch)
        got = sess.run(None, {"input": x})[0]
        assert got.shape == (batch, 4)
        assert np.abs(got - model(x)).max() <= TOL


def test_static_batch():
    proto = export(MaxPool2d(2), rand(3, 1, 4, 4), dynamic_batch=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


# ----------------------------------------------------------------------------- registry
class Custom(Layer):
    def forward(self, x):
        return x * 2


def test_unsupported_custom_layer_is_named():
    model = Sequential(ReLU(), Custom())
    with pytest.raises(UnsupportedLayerError, match=r"test_onnx_api\.Custom") as info:
        export(model, rand(1, 2, 3))
    assert "register_converter(Custom)" in str(info.value)
    assert isinstance(info.value, ExportError)


def test_register_custom_converter_and_duplicate_raises():
    @register_converter(Custom)
    def convert_custom(ctx, layer, x):
        return ctx.make_node("Mul", [x.name, ctx.fconst(2.0, "two")])

    try:
        roundtrip(Sequential(ReLU(), Custom()), rand(2, 3, 4))
        with pytest.raises(ValueError, match="already registered"):
            register_converter(Custom)(lambda ctx, layer, x: x.name)
        with pytest.raises(ValueError, match="already registered"):
            register_converter(MaxPool2d)(lambda ctx, layer, x: x.name)
    finally:
        unregister_converter(Custom)


def test_register_checks_its_arguments():
    with pytest.raises(TypeError, match="Layer subclasses"):
        register_converter(int)
    with pytest.raises(TypeError, match=r"\(ctx, layer, x\)"):
        register_converter(Custom)(lambda ctx, layer: None)


def test_subclass_needs_its_own_converter():
    class MyPool(MaxPool2d):
        pass

    with pytest.raises(UnsupportedLayerError, match="MyPool"):
        export(MyPool(2), rand(1, 1, 4, 4))


def test_opset_too_low_names_the_layer_and_the_lowest_opset():
    class NeedsSeventeen(Layer):
        def forward(self, x):
            return x

    @register_converter(NeedsSeventeen)
    def convert(ctx, layer, x):
        ctx.require_opset(17, "its operator")
        return x.name

    try:
        with pytest.raises(OpsetError, match=r"NeedsSeventeen.*opset >= 17.*requested opset 13"):
            export(Sequential(ReLU(), NeedsSeventeen()), rand(1, 2), opset=13)
        roundtrip(NeedsSeventeen(), rand(1, 2), opset=17)
    finally:
        unregister_converter(NeedsSeventeen)


def test_make_node_refuses_what_the_opset_lacks():
    ctx = GraphBuilder(18)
    with pytest.raises(OpsetError, match="dilations"):
        ctx.make_node("AveragePool", ["x"], kernel_shape=[2], dilations=[2])
    with pytest.raises(OpsetError, match="opset >= 20"):
        GraphBuilder(19).make_node("Gelu", ["x"])
    assert ctx.unique("a") == "a" and ctx.unique("a") == "a_1"


# ----------------------------------------------------------------------------- verify
def test_verify_runs_checker_and_rejects_a_wrong_model(tmp_path):
    path = tmp_path / "m.onnx"
    layer = MaxPool2d(3, 2, 1)
    proto = export(layer, rand(2, 3, 10, 10), path=path)
    assert onnx.load(str(path)) == proto
    report = verify(layer, str(path))
    assert set(report) == {"output"} and report["output"] <= TOL
    with pytest.raises(VerificationError, match="shape"):
        verify(MaxPool2d(3, 2, 1, ceil_mode=True), path)  # 6x6 windows vs 5x5
    broken = onnx.ModelProto()
    broken.CopyFrom(proto)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(Exception):
        verify(layer, broken)


def test_verify_given_inputs_and_generated_batches():
    layer = AvgPool2d(3, 2, 1, ceil_mode=True)
    proto = export(layer, rand(2, 3, 9, 9))
    report = verify(layer, proto, inputs=[rand(1, 3, 9, 9), rand(5, 3, 9, 9, seed=1)])
    assert report["output"] <= TOL
    with pytest.raises(ValueError, match="arrays"):
        verify(layer, proto, inputs=[(rand(1, 3, 9, 9), rand(1, 3, 9, 9))])


# ----------------------------------------------------------------------------- models
def test_trained_demo_model_exports_and_verifies():
    from cpool.datasets import load_digits
    from cpool.demo import digits_cnn

    x, y = load_digits()
    x, y = x[:300], y[:300]
    model = digits_cnn(seed=0)
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=False)
    assert history["accuracy"][-1] > 0.2  # above chance (0.1): trained, not the init
    roundtrip(model, x[:1], inputs=[x[:1], x[:2], x[:7]])
    roundtrip(model, x[:1])


def test_command_line_export_and_verify(tmp_path, capsys):
    from cpool.__main__ import main
    from cpool.demo import digits_cnn

    model = digits_cnn(seed=1)
    model.save(tmp_path / "model.npz")
    out = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "model.npz"), "-o", str(out), "--opset", "17"]) == 0
    text = capsys.readouterr().out
    assert "(N, 1, 8, 8)" in text and "opset 17" in text
    assert onnx.load(str(out)).opset_import[0].version == 17
    assert main(["verify", str(tmp_path / "model.npz"), str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    other = digits_cnn(seed=2)
    other.save(tmp_path / "other.npz")
    assert main(["verify", str(tmp_path / "other.npz"), str(out)]) == 1
    assert main(["export", str(tmp_path / "model.npz"), "-o", str(out),
                 "--input-shape", "1,9,9"]) == 0


def test_command_line_needs_a_shape_for_fully_convolutional_models(tmp_path, capsys):
    from cpool.__main__ import main

    Sequential(Conv2d(2, 3, 3, seed=0), ReLU(), MaxPool2d(2)).save(tmp_path / "fc.npz")
    assert main(["export", str(tmp_path / "fc.npz"), "-o", str(tmp_path / "fc.onnx")]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "fc.npz"), "-o", str(tmp_path / "fc.onnx"),
                 "--input-shape", "2,9,11"]) == 0
    assert main(["verify", str(tmp_path / "fc.npz"), str(tmp_path / "fc.onnx")]) == 0


def test_export_takes_a_single_layer_and_refuses_other_things():
    roundtrip(MaxPool2d(2), rand(1, 1, 4, 4))
    with pytest.raises(TypeError, match="model"):
        export([MaxPool2d(2)], rand(1, 1, 4, 4))
    with pytest.raises(ExportError, match="batched"):
        export(MaxPool2d(2), rand(1, 4, 4))
    assert cpool.onnx.export is export


def test_every_public_layer_class_has_a_converter():
    import importlib
    import pkgutil

    import cpool.layers
    from cpool.onnx import registered_classes

    registered = set(registered_classes())
    missing = []
    for info in pkgutil.iter_modules(cpool.layers.__path__):
        module = importlib.import_module(f"cpool.layers.{info.name}")
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, Layer) and obj is not Layer
                    and not name.startswith("_") and obj.__module__ == module.__name__
                    and obj not in registered):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"layer classes without an ONNX converter: {missing}"
