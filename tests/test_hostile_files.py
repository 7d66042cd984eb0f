"""Fuzzing cpool.load with hypothesis: mutated .npz archives and architecture JSON.

Starting from a real saved model, each draw truncates the file, flips bytes, replaces or
adds archive members (wrong shapes and dtypes, object arrays, pickles, hand-written
.npy headers declaring giant sizes, path-like names) or rewrites the architecture JSON
(unknown and path-like layer names, random JSON in configs, giant numbers, deep nesting).
Every draw must either load as a cpool.Sequential or raise cpool.ModelFileError (a
ValueError): any other exception fails, no pickle is ever executed (each pickle here
would create a marker file when unpickled), nothing is written to disk, and the process
does not crash. test_serialization.py holds the hand-picked cases; this file the fuzzing.
"""
import ast
import copy
import inspect
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

import cpool
from cpool import ModelFileError, serialization
from tests.test_serialization import ARCH, header, make_model, members, npy, pack


class Trap:
    """Unpickling this creates the marker file (a stand-in for running any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def marker(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "pwned"
    yield path
    assert not path.exists(), "a pickle from a model file was executed"


def _saved():
    buf = io.BytesIO()
    make_model().save(buf)
    return buf.getvalue()


BASE = _saved()
ENTRIES = members(BASE)
ARCHITECTURE = json.loads(np.load(io.BytesIO(ENTRIES[ARCH])).tobytes())
ARRAY_NAMES = sorted(n for n in ENTRIES if n != ARCH)


def zipped(entries, compression=zipfile.ZIP_STORED):
    """An archive of (name, bytes); duplicate names are written as given."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression=compression) as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicates we want
        for name, payload in entries:
            zf.writestr(name, payload)
    return buf.getvalue()


def load_outcome(data, marker, where):
    """Load `data`; return "loaded" or "refused". Anything else fails the test."""
    before = sorted(os.listdir(where))
    try:
        model = cpool.load(io.BytesIO(data))
        outcome = "loaded"
        assert isinstance(model, cpool.Sequential)
    except ModelFileError as exc:
        assert isinstance(exc, ValueError)
        outcome = "refused"
    assert not marker.exists(), "a pickle from the model file was executed"
    assert sorted(os.listdir(where)) == before, "loading wrote files"
    try:
        event(outcome)
    except InvalidArgument:  # called outside a hypothesis test
        pass
    return outcome


# ----------------------------------------------------------------------- whole files
@given(data=st.data())
def test_truncated_and_bit_flipped_files(data, marker):
    raw = bytearray(BASE)
    kind = data.draw(st.sampled_from(["truncate", "flip", "both"]))
    if kind in ("flip", "both"):
        for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[pos] ^= data.draw(st.integers(1, 255))
    if kind in ("truncate", "both"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    outcome = load_outcome(bytes(raw), marker, marker.parent)
    if kind != "flip":
        assert outcome == "refused"  # a cut archive lacks its central directory


NOT_ARCHIVES = [b"", b"PK", b"PK\x03\x04" + bytes(60), b"\x93NUMPY", b"{}", b"\x80\x04N."]


@given(payload=st.sampled_from(NOT_ARCHIVES) | st.binary(max_size=300))
def test_not_an_archive(payload, marker):
    assert load_outcome(payload, marker, marker.parent) == "refused"


@pytest.mark.parametrize("what", ["pickle", "npy_object", "npy"])
def test_whole_file_pickles_and_single_arrays(what, marker):
    trap = np.empty(2, dtype=object)
    trap[:] = [Trap(marker), Trap(marker)]
    data = {"pickle": pickle.dumps(Trap(marker)), "npy_object": npy(trap, allow_pickle=True),
            "npy": npy(np.zeros(3, np.float32))}[what]
    assert load_outcome(data, marker, marker.parent) == "refused"


# ----------------------------------------------------------------------- members
PATH_NAMES = ["../evil.npy", "../../evil.npy", "/tmp/evil.npy", "a/../../evil.npy",
              "C:\\evil.npy", "0.params.weight/../x.npy", "./0.params.weight.npy",
              "0.params.weight.npy/", "evil\x00.npy", "0.params.__class__.npy",
              "__architecture__.npy.npy", "0.params.weight.NPY", "0.params.weight"]
DTYPES = ["<f8", "<i8", ">f4", "<c8", "|b1", "<U5", "|V8", "|O", "<f2", "<u4"]


@st.composite
def shapes(draw):
    return tuple(draw(st.lists(st.integers(0, 12), max_size=4)))


@st.composite
def hostile_payloads(draw, marker, like):
    """A member's bytes: an array of another shape or dtype, a pickle, an object array,
    a hand-written header (giant or inconsistent sizes), cut or random bytes."""
    kind = draw(st.sampled_from(["shape", "dtype", "pickle", "object", "header", "cut",
                                 "random", "version", "empty_same"]))
    event(f"member: {kind}")
    if kind == "shape":
        return npy(np.zeros(draw(shapes()), np.float32))
    if kind == "dtype":
        descr = draw(st.sampled_from([d for d in DTYPES if d != "|O"]))
        return npy(np.zeros(like.shape, np.dtype(descr)))
    if kind == "pickle":
        return pickle.dumps(Trap(marker))
    if kind == "object":
        trap = np.empty(like.shape or (1,), dtype=object)
        trap.reshape(-1)[:] = [Trap(marker)] * trap.size
        return npy(trap, allow_pickle=True)
    if kind == "header":
        shape = draw(st.sampled_from([(10**12,), (2**62, 2**62), (2**31, 2**31, 4),
                                      like.shape, (-1,), ()]) | shapes())
        descr = draw(st.sampled_from(DTYPES + ["<f4", "<f4", "|u1", "<U999999999"]))
        return header(shape, descr)
    if kind == "cut":
        full = npy(like)
        return full[:draw(st.integers(0, len(full) - 1))]
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "version":
        full = bytearray(npy(like))
        full[6:8] = bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))])
        return bytes(full)
    return npy(np.zeros_like(like))  # well-formed: loads (zero weights are finite)


@given(data=st.data())
def test_mutated_members(data, marker):
    entries = dict(ENTRIES)
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["replace", "replace_arch", "add", "delete",
                                            "rename", "duplicate"]))
        event(action)
        if action in ("replace", "replace_arch"):
            name = ARCH if action == "replace_arch" else data.draw(st.sampled_from(ARRAY_NAMES))
            like = np.load(io.BytesIO(ENTRIES[name]))
            entries[name] = data.draw(hostile_payloads(marker, like))
        elif action == "add":
            name = data.draw(st.sampled_from(PATH_NAMES) | st.text(min_size=1, max_size=20)
                             .filter(lambda n: not n.startswith("\x00")))  # zipfile: no ""
            entries[name] = npy(np.zeros(3, np.float32))
        elif action == "delete" and entries:
            entries.pop(data.draw(st.sampled_from(sorted(entries))))
        elif action == "rename" and entries:
            old = data.draw(st.sampled_from(sorted(entries)))
            entries[data.draw(st.sampled_from(PATH_NAMES))] = entries.pop(old)
    items = list(entries.items())
    if data.draw(st.booleans()) and items:  # duplicate one name
        items.append(items[data.draw(st.integers(0, len(items) - 1))])
    compression = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                             zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    load_outcome(zipped(items, compression), marker, marker.parent)


# ----------------------------------------------------------------------- architecture
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12)

LAYER_NAMES = sorted(serialization.layer_classes())
HOSTILE_NAMES = ["Layer", "Sequential", "os.system", "builtins.eval", "__import__",
                 "../Linear", "cpool.layers.Linear", "Linear\x00", "linear", "", "object",
                 "ModelFileError", "numpy.load", "subprocess.Popen", "__class__", "type"]
CONFIG_KEYS = ["kernel_size", "stride", "padding", "in_features", "out_features",
               "in_channels", "out_channels", "num_features", "p", "dim", "seed",
               "__class__", "__reduce__", "__init__", "self", "kwargs"]
GIANT = [10**9, 10**12, 2**63 - 1, 2**63, -2**63, 10**30, 1e308, -1]


@st.composite
def hostile_architectures(draw):
    arch = copy.deepcopy(ARCHITECTURE)
    layers = arch["layers"]
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["class", "config_value", "config_giant", "config_drop",
                                       "config", "layers", "top", "whole"]))
        event(f"arch: {action}")
        i = draw(st.integers(0, len(layers) - 1)) if layers else None
        if action == "class" and layers:
            layers[i]["class"] = draw(st.sampled_from(HOSTILE_NAMES + LAYER_NAMES)
                                      | json_values)
        elif action == "config_value" and layers and isinstance(layers[i], dict):
            config = layers[i].setdefault("config", {})
            if isinstance(config, dict):
                config[draw(st.sampled_from(CONFIG_KEYS))] = draw(json_values)
        elif action == "config_giant" and layers and isinstance(layers[i], dict):
            config = layers[i].setdefault("config", {})
            if isinstance(config, dict):
                config[draw(st.sampled_from(CONFIG_KEYS))] = draw(st.sampled_from(GIANT))
        elif action == "config_drop" and layers and isinstance(layers[i], dict) \
                and isinstance(layers[i].get("config"), dict) and layers[i]["config"]:
            layers[i]["config"].pop(draw(st.sampled_from(sorted(layers[i]["config"]))))
        elif action == "config" and layers and isinstance(layers[i], dict):
            layers[i]["config"] = draw(json_values)
        elif action == "layers":
            how = draw(st.sampled_from(["drop", "dup", "insert", "swap"]))
            if how == "drop" and layers:
                layers.pop(i)
            elif how == "dup" and layers:
                layers.insert(i, copy.deepcopy(layers[i]))
            elif how == "insert":
                layers.insert(i or 0, {"class": draw(st.sampled_from(LAYER_NAMES)),
                                       "config": draw(json_values)})
            elif layers:
                j = draw(st.integers(0, len(layers) - 1))
                layers[i], layers[j] = layers[j], layers[i]
        elif action == "top":
            arch[draw(st.sampled_from(["format", "format_version", "layers", "cpool_version",
                                       "extra"]))] = draw(json_values)
        elif action == "whole":
            arch = draw(json_values)
            break
    return arch


@st.composite
def hostile_texts(draw):
    """Architecture bytes: JSON of a mutated architecture, or broken JSON text."""
    arch = draw(hostile_architectures())
    text = json.dumps(arch)
    kind = draw(st.sampled_from(["json", "json", "cut", "constant", "nesting", "bytes"]))
    if kind == "cut":
        return text[:draw(st.integers(0, max(len(text) - 1, 0)))].encode()
    if kind == "constant":
        return text.replace("1", draw(st.sampled_from(["NaN", "Infinity", "-Infinity",
                                                       "1e999"])), 1).encode()
    if kind == "nesting":
        depth = draw(st.sampled_from([100, 10_000, 200_000]))
        return ("[" * depth + "]" * depth).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    return text.encode()


@given(text=hostile_texts())
def test_hostile_architectures(text, marker):
    entries = dict(ENTRIES)
    entries[ARCH] = npy(np.frombuffer(text, np.uint8))
    load_outcome(zipped(entries.items()), marker, marker.parent)


@given(arch=hostile_architectures())
def test_unknown_or_path_like_layer_names_are_refused(arch, marker):
    """A class name outside the allow-list (public cpool.layers classes) is refused."""
    names = [layer.get("class") for layer in arch.get("layers", [])
             if isinstance(layer, dict)] if isinstance(arch, dict) and isinstance(
        arch.get("layers"), list) else []
    entries = dict(ENTRIES)
    entries[ARCH] = npy(np.frombuffer(json.dumps(arch).encode(), np.uint8))
    outcome = load_outcome(zipped(entries.items()), marker, marker.parent)
    if any(not isinstance(n, str) or n not in LAYER_NAMES for n in names):
        assert outcome == "refused", names


# ----------------------------------------------------------------------- the source
def test_np_load_never_allows_pickles():
    """Every np.load call in cpool.serialization passes allow_pickle=False, and the
    module imports nothing that runs code from data."""
    source = inspect.getsource(serialization)
    tree = ast.parse(source)
    loads = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "np"]
    assert loads, "no np.load call found"
    for call in loads:
        flags = {k.arg: k.value for k in call.keywords}
        assert isinstance(flags.get("allow_pickle"), ast.Constant) and \
            flags["allow_pickle"].value is False, ast.unparse(call)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"pickle", "marshal", "shelve", "dill", "importlib", "builtins"}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name)]
    assert not {c.func.id for c in calls} & {"eval", "exec", "compile", "__import__"}
    for c in calls:  # attributes are looked up by fixed names only, never from the file
        if c.func.id in ("getattr", "setattr", "hasattr"):
            assert isinstance(c.args[1], ast.Constant), ast.unparse(c)


def test_loading_from_a_path(tmp_path, marker):
    """The same checks through a real file: a hostile archive is refused and nothing
    is extracted beside it."""
    entries = dict(ENTRIES)
    entries["../evil.npy"] = npy(np.zeros(3, np.float32))
    path = pack(entries.items(), tmp_path / "model.npz")
    with pytest.raises(ModelFileError):
        cpool.load(path)
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]
    assert not (tmp_path.parent / "evil.npy").exists() and not marker.exists()
    pack(ENTRIES.items(), path)
    assert isinstance(cpool.load(path), cpool.Sequential)  # the unmutated file loads
