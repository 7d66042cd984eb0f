"""model.save / cpool.load: round trip, and malformed or malicious files -> ModelFileError."""
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import cpool
from cpool import ModelFileError
from cpool.layers import (BatchNorm2d, Conv2d, Dropout, Flatten, Layer, Linear, MaxPool2d,
                          ReLU, Softmax)
from cpool.losses import CrossEntropyLoss
from cpool.optimizers import SGD

ARCH = "__architecture__.npy"


def make_model():
    return cpool.Sequential(
        Conv2d(1, 4, 3, padding=1, seed=0), BatchNorm2d(4), ReLU(), MaxPool2d(2),
        Dropout(0.1, seed=1), Flatten(), Linear(4 * 4 * 4, 10, seed=2), Softmax(dim=1))


@pytest.fixture(scope="module")
def trained():
    """A model trained for a few steps, so weights and BatchNorm statistics are not the
    initial ones, and the bytes of its saved file."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    model = make_model()
    model.fit(x, y, epochs=1, batch_size=10, loss=CrossEntropyLoss(),
              optimizer=SGD(model.parameters(), lr=0.1), verbose=False)
    buf = io.BytesIO()
    model.save(buf)
    return model, x, buf.getvalue()


def members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def pack(entries, path):
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
    return path


def npy(array, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=allow_pickle)
    return buf.getvalue()


def architecture(entries):
    return json.loads(np.load(io.BytesIO(entries[ARCH])).tobytes())


def with_architecture(entries, arch=None, text=None):
    text = json.dumps(arch) if text is None else text
    out = dict(entries)
    out[ARCH] = npy(np.frombuffer(text.encode("utf-8"), np.uint8))
    return out


def load_entries(entries, tmp_path):
    return cpool.load(pack(entries.items(), tmp_path / "model.npz"))


# ----------------------------------------------------------------------------- round trip
def test_round_trip(trained, tmp_path):
    model, x, _ = trained
    path = tmp_path / "digits.model"  # no .npz suffix: kept as given
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["digits.model"]  # no temporary left behind
    loaded = cpool.load(str(path))
    assert isinstance(loaded, cpool.Sequential) and not loaded.training
    assert repr(loaded) == repr(model)
    for a, b in zip(model, loaded):
        assert type(a) is type(b) and a.get_config() == b.get_config()
        for name in a.params:
            assert np.array_equal(a.params[name], b.params[name])
            assert b.params[name].dtype == a.params[name].dtype
        for name, value in getattr(a, "buffers", {}).items():
            assert np.array_equal(value, b.buffers[name])
    assert model[1].buffers["num_batches_tracked"] == 4  # the statistics did travel
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    from_bytes = cpool.load(io.BytesIO(trained[2]))  # file objects work too
    np.testing.assert_array_equal(from_bytes.predict(x), model.predict(x))
    # the loaded model trains like any other
    loaded.train()
    loaded.fit(x, np.zeros(len(x), np.int64), epochs=1, batch_size=20, verbose=False)


def test_save_refuses_what_load_would_refuse(tmp_path):
    class Custom(Layer):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="Custom"):
        cpool.Sequential(Custom()).save(tmp_path / "m.npz")
    with pytest.raises(TypeError, match="Sequential"):
        cpool.serialization.save(Linear(2, 2), tmp_path / "m.npz")
    with pytest.raises(FileNotFoundError):
        cpool.load(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- hostile files
def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)


@pytest.mark.parametrize("cut", [0, 1, 30, 0.5, -22, -1])
def test_truncated_files(trained, tmp_path, cut):
    data = trained[2]
    cut = int(len(data) * cut) if isinstance(cut, float) else cut
    path = tmp_path / "cut.npz"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError):
        cpool.load(path)


def test_not_a_model_file(tmp_path):
    for payload in [b"hello world", os.urandom(300), npy(np.zeros(3))]:
        path = tmp_path / "x.npz"
        path.write_bytes(payload)
        with pytest.raises(ModelFileError):
            cpool.load(path)


class Trap:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickles_are_never_executed(trained, tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(ModelFileError):
        cpool.load(raw)
    entries = members(trained[2])
    trap = np.empty(1, dtype=object)
    trap[0] = Trap(marker)
    for name in ["6.params.weight.npy", ARCH]:  # an object array in place of an entry
        hostile = dict(entries)
        hostile[name] = npy(trap, allow_pickle=True)
        with pytest.raises(ModelFileError, match="dtype"):
            load_entries(hostile, tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("name, array, match", [
    ("6.params.weight.npy", np.zeros((10, 63), np.float32), "shape"),
    ("6.params.weight.npy", np.zeros((10, 64), np.float64), "dtype"),
    ("6.params.weight.npy", np.zeros((10, 64), ">f4"), "dtype"),
    ("1.buffers.num_batches_tracked.npy", np.zeros((), np.float32), "dtype"),
    ("0.params.bias.npy", np.full(4, np.nan, np.float32), "NaN"),
    ("0.params.weight.npy", np.full((4, 1, 3, 3), np.inf, np.float32), "NaN"),
])
def test_wrong_arrays(trained, tmp_path, name, array, match):
    entries = members(trained[2])
    entries[name] = npy(array)
    with pytest.raises(ModelFileError, match=match):
        load_entries(entries, tmp_path)


@pytest.mark.parametrize("name", ["6.params.extra.npy", "../../evil.npy", "/etc/evil.npy",
                                  "0.params.weight/../x.npy", "notes.txt"])
def test_unexpected_and_path_like_names(trained, tmp_path, name):
    entries = members(trained[2])
    entries[name] = npy(np.zeros(3, np.float32))
    with pytest.raises(ModelFileError):
        load_entries(entries, tmp_path)
    assert not (tmp_path.parent / "evil.npy").exists()


def test_missing_and_duplicate_arrays(trained, tmp_path):
    entries = members(trained[2])
    missing = {k: v for k, v in entries.items() if k != "1.params.bias.npy"}
    with pytest.raises(ModelFileError, match="missing"):
        load_entries(missing, tmp_path)
    duplicated = list(entries.items()) + [("0.params.bias.npy", entries["0.params.bias.npy"])]
    with pytest.warns(UserWarning):  # zipfile warns about the duplicate name it writes
        path = pack(duplicated, tmp_path / "dup.npz")
    with pytest.raises(ModelFileError, match="duplicate"):
        cpool.load(path)
    no_arch = {k: v for k, v in entries.items() if k != ARCH}
    with pytest.raises(ModelFileError, match="__architecture__"):
        load_entries(no_arch, tmp_path)


def header(shape, descr="<f4"):
    """A hand-written .npy header declaring `shape`, followed by 8 bytes of data."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (-(len(text) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + bytes(8)


def test_giant_or_inconsistent_declared_sizes(trained, tmp_path):
    entries = members(trained[2])
    for name, payload, match in [
        ("6.params.weight.npy", header((10 ** 12,)), "shape"),
        (ARCH, header((10 ** 12,), "|u1"), "at most"),
        ("6.params.bias.npy", header((10,)), "bytes"),  # 8 bytes of data, 40 declared
        ("6.params.bias.npy", npy(np.zeros(10, np.float32)) + b"extra", "bytes"),
    ]:
        hostile = dict(entries)
        hostile[name] = payload
        with pytest.raises(ModelFileError, match=match):
            load_entries(hostile, tmp_path)


def edit_layer(arch, index, **changes):
    arch["layers"][index].update(changes)
    return arch


def edit_config(arch, index, **changes):
    arch["layers"][index]["config"].update(changes)
    return arch


@pytest.mark.parametrize("change, match", [
    (lambda a: edit_layer(a, 2, **{"class": "Evil"}), "unknown layer class"),
    (lambda a: edit_layer(a, 2, **{"class": "os.system"}), "unknown layer class"),
    (lambda a: edit_layer(a, 2, **{"class": "Layer"}), "unknown layer class"),
    (lambda a: edit_layer(a, 2, **{"class": "_MaxPool"}), "unknown layer class"),
    (lambda a: edit_layer(a, 2, **{"class": ["ReLU"]}), "unknown layer class"),
    (lambda a: edit_layer(a, 2, extra=1), "'class' and 'config'"),
    (lambda a: edit_layer(a, 2, config={"__class__": "x"}), "unknown config keys"),
    (lambda a: edit_layer(a, 4, config={"p": {"a": 1}}), "unsupported config value"),
    (lambda a: edit_layer(a, 4, config={"p": "x" * 1000}), "longer than"),
    (lambda a: edit_layer(a, 4, config={"p": 7}), "invalid config"),
    (lambda a: edit_config(a, 0, kernel_size=-3), "invalid config"),
    (lambda a: edit_config(a, 0, in_channels="1"), "invalid config"),
    (lambda a: edit_layer(a, 6, config={}), "invalid config"),
    (lambda a: edit_layer(a, 3, config={"kernel_size": 10 ** 30}), "out of range"),
    (lambda a: edit_layer(a, 3, config={"kernel_size": [[[2]]]}), "unsupported"),
    (lambda a: edit_layer(a, 6, config={"in_features": 10 ** 6, "out_features": 10 ** 6}),
     "too large"),
    (lambda a: edit_layer(a, 6, config={"in_features": 60, "out_features": 10}), "shape"),
    (lambda a: {**a, "layers": a["layers"][:6]}, "unexpected"),
    (lambda a: {**a, "layers": {"0": 1}}, "list"),
    (lambda a: {**a, "format_version": 2}, "unsupported model format"),
    (lambda a: {**a, "format_version": True}, "unsupported model format"),
    (lambda a: {**a, "format": "keras"}, "unsupported model format"),
    (lambda a: {**a, "code": "import os"}, "keys"),
    (lambda a: [a], "object"),
])
def test_hostile_architectures(trained, tmp_path, change, match):
    entries = members(trained[2])
    hostile = with_architecture(entries, change(architecture(entries)))
    with pytest.raises(ModelFileError, match=match):
        load_entries(hostile, tmp_path)


@pytest.mark.parametrize("text, match", [
    ("{not json", "JSON"),
    ('{"format": NaN}', "NaN"),
    ("[" * 100000 + "]" * 100000, "JSON"),
    ("\udcff", "UTF-8"),
])
def test_malformed_architecture_text(trained, tmp_path, text, match):
    entries = members(trained[2])
    if text == "\udcff":
        hostile = dict(entries)
        hostile[ARCH] = npy(np.frombuffer(b"\xff\xfe{}", np.uint8))
    else:
        hostile = with_architecture(entries, text=text)
    with pytest.raises(ModelFileError, match=match):
        load_entries(hostile, tmp_path)


def test_infinite_float_in_config(trained, tmp_path):
    entries = members(trained[2])
    text = json.dumps(edit_layer(architecture(entries), 4, config={"p": 0.5}))
    hostile = with_architecture(entries, text=text.replace('"p": 0.5', '"p": 1e999'))
    with pytest.raises(ModelFileError, match="non-finite"):
        load_entries(hostile, tmp_path)


def test_random_byte_flips_never_escape_as_other_errors(trained, tmp_path):
    data = trained[2]
    rng = np.random.default_rng(0)
    path = tmp_path / "flip.npz"
    for position in rng.integers(0, len(data), 60):
        mutated = bytearray(data)
        mutated[position] ^= 0xFF
        path.write_bytes(bytes(mutated))
        try:
            cpool.load(path)
        except ModelFileError:
            pass
