"""Saving and loading models: one .npz file, no pickle, no code from the file.

File layout (``save``): an uncompressed NumPy .npz archive holding

- ``__architecture__``: a uint8 array of UTF-8 JSON,
  ``{"format": "cpool.Sequential", "format_version": 1, "cpool_version": "...",
  "layers": [{"class": "Conv2d", "config": {...}}, ...]}``, where ``config`` is the
  layer's ``get_config()``;
- ``<i>.params.<name>``: ``params[name]`` of layer ``i`` (PyTorch layout);
- ``<i>.buffers.<name>``: ``buffers[name]`` of layer ``i`` (BatchNorm running statistics).

``load`` trusts nothing in the file. It opens it with ``np.load(allow_pickle=False)``,
parses the JSON with NaN/Infinity refused, looks each class name up in the allow-list of
public ``cpool.layers`` classes (a dict lookup; nothing is ever imported by name), accepts
only config keys that are constructor parameters with plain JSON values of bounded size,
rebuilds the layers, and then requires the archive's array names to be exactly the
rebuilt layers' names. Each array's header (dtype, shape, byte count) is checked against
the rebuilt layer *before* its data is read, so object arrays, pickles and giant declared
sizes are never loaded; weights must be finite. Any problem raises ModelFileError.
"""
import json
import math
import os
import tempfile

import numpy as np

from .layers.base import Layer

__all__ = ["ModelFileError", "save", "load"]

FORMAT = "cpool.Sequential"
FORMAT_VERSION = 1
ARCHITECTURE_KEY = "__architecture__"
MAX_ARCHITECTURE_BYTES = 1 << 20
MAX_LAYERS = 4096
# A bound on the weights one layer may allocate when rebuilt: the product of the integers
# in its config (seed excluded, zeros counted as 1) bounds Conv/Linear/BatchNorm sizes.
MAX_LAYER_SIZE = 1 << 27
MAX_LIST_LENGTH = 16
MAX_STRING_LENGTH = 64
MAX_INT = 1 << 63


class ModelFileError(ValueError):
    """A model file is malformed, truncated, inconsistent or not a cpool model."""


def layer_classes():
    """The allow-list: public Layer subclasses exported by cpool.layers, by class name."""
    from . import layers

    allowed = {}
    for name, obj in vars(layers).items():
        if (isinstance(obj, type) and issubclass(obj, Layer) and obj is not Layer
                and not name.startswith("_") and obj.__name__ == name
                and obj.__module__.startswith("cpool.layers.")):
            allowed[name] = obj
    return allowed


def _buffers(layer):
    return getattr(layer, "buffers", None) or {}


def _layer_arrays(index, layer):
    """{archive name: array} of one layer's params and buffers."""
    named = {f"{index}.params.{n}": v for n, v in layer.params.items()}
    named.update({f"{index}.buffers.{n}": v for n, v in _buffers(layer).items()})
    return named


# ------------------------------------------------------------------------ save
def save(model, path):
    """Write ``model`` (a cpool.Sequential) to ``path`` as one .npz file.

    The path is used as given (no ".npz" is appended). The file is written to a temporary
    name beside it and renamed, so an interrupted save never leaves a half-written model.
    Only layers of cpool.layers classes can be saved (they are the ones ``load`` accepts).
    """
    from .sequential import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a cpool.Sequential, got {type(model).__name__}")
    allowed = layer_classes()
    entries, arrays = [], {}
    for i, layer in enumerate(model):
        cls = type(layer)
        if allowed.get(cls.__name__) is not cls:
            raise TypeError(f"layer {i} ({cls.__name__}) cannot be saved: only cpool.layers "
                            f"classes can be saved and loaded")
        entries.append({"class": cls.__name__, "config": layer.get_config()})
        arrays.update({k: np.asarray(v) for k, v in _layer_arrays(i, layer).items()})
    from . import __version__

    try:
        text = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                           "cpool_version": __version__, "layers": entries},
                          allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a layer config is not plain JSON: {exc}") from None
    arrays[ARCHITECTURE_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".cpool-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------ load
def load(path):
    """Rebuild the cpool.Sequential saved in ``path`` (a path or a binary file object).

    Returns the model in eval mode (call ``.train()`` to continue training). A missing
    file raises the usual OSError; anything wrong with the file's content raises
    ModelFileError.
    """
    if hasattr(path, "read"):
        return _load_from(path)
    with open(os.fspath(path), "rb") as fh:
        return _load_from(fh)


def _load_from(fh):
    try:
        archive = np.load(fh, allow_pickle=False)
    except ModelFileError:
        raise
    except Exception as exc:  # not a zip/npy, pickled data, truncated, ...
        raise ModelFileError(f"not a cpool model file (.npz): {exc}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFileError("not a cpool model file: expected an .npz archive, found a "
                             "single .npy array")
    with archive:
        try:
            return _rebuild(archive)
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"malformed model file: {type(exc).__name__}: {exc}") from None


def _members(archive):
    """{array name: ZipInfo}; every member must be a uniquely named .npy."""
    members = {}
    for info in archive.zip.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise ModelFileError(f"unexpected member {name[:80]!r} in the archive")
        key = name[:-4]
        if key in members:
            raise ModelFileError(f"duplicate array {key[:80]!r} in the archive")
        members[key] = info
    return members


def _rebuild(archive):
    from .sequential import Sequential

    members = _members(archive)
    if ARCHITECTURE_KEY not in members:
        raise ModelFileError(f"not a cpool model file: no {ARCHITECTURE_KEY!r} entry")
    arch = _read_array(archive, members[ARCHITECTURE_KEY], ARCHITECTURE_KEY,
                       np.dtype(np.uint8), None, MAX_ARCHITECTURE_BYTES)
    entries = _parse_architecture(arch.tobytes())

    allowed = layer_classes()
    layers, expected = [], {}
    for i, entry in enumerate(entries):
        layer = _build_layer(i, entry, allowed)
        layers.append(layer)
        expected.update(_layer_arrays(i, layer))
    found = set(members) - {ARCHITECTURE_KEY}
    if found != set(expected):
        extra = sorted(found - set(expected))[:5]
        missing = sorted(set(expected) - found)[:5]
        raise ModelFileError(f"the arrays do not match the architecture: unexpected "
                             f"{[e[:80] for e in extra]}, missing {missing}")
    for i, layer in enumerate(layers):
        for key in _layer_arrays(i, layer):
            kind, name = key.split(".", 2)[1:]
            store = layer.params if kind == "params" else _buffers(layer)
            target = store[name]
            value = _read_array(archive, members[key], key, np.asarray(target).dtype,
                                np.shape(target), None)
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ModelFileError(f"array {key!r} holds NaN or infinity")
            if isinstance(target, np.ndarray):
                target[...] = value
            else:  # a scalar buffer (a count): keep its Python/NumPy type
                store[name] = type(target)(value.item())
    return Sequential(layers).eval()


def _read_array(archive, info, key, dtype, shape, max_size):
    """Check the .npy header of member ``info`` (dtype, shape, byte count), then read it."""
    with archive.zip.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            hshape, fortran, hdtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ModelFileError(f"array {key!r}: unsupported .npy version {version}")
        header_bytes = fp.tell()
    if hdtype != dtype:
        raise ModelFileError(f"array {key!r} has dtype {hdtype}, expected {dtype}")
    if shape is None:  # a 1-D byte string of bounded length
        if len(hshape) != 1 or hshape[0] > max_size:
            raise ModelFileError(f"array {key!r} must be 1-D with at most {max_size} "
                                 f"elements, got shape {hshape}")
    elif tuple(hshape) != tuple(shape):
        raise ModelFileError(f"array {key!r} has shape {tuple(hshape)}, expected "
                             f"{tuple(shape)}")
    nbytes = math.prod(hshape) * hdtype.itemsize
    if info.file_size != header_bytes + nbytes:
        raise ModelFileError(f"array {key!r}: the member holds {info.file_size} bytes, its "
                             f"header declares {header_bytes + nbytes}")
    value = archive[key]
    if value.shape != tuple(hshape) or value.dtype != dtype:  # header read twice: must agree
        raise ModelFileError(f"array {key!r} changed between reads")
    return value


def _reject_constant(name):
    raise ModelFileError(f"architecture JSON holds {name}, which is not allowed")


def _parse_architecture(raw):
    try:
        arch = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except ModelFileError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"architecture is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(arch, dict):
        raise ModelFileError("architecture JSON must be an object")
    keys = set(arch)
    if not {"format", "format_version", "layers"} <= keys <= {"format", "format_version",
                                                              "cpool_version", "layers"}:
        raise ModelFileError(f"architecture JSON has keys {sorted(keys)[:8]}, expected "
                             f"format, format_version, layers (and cpool_version)")
    version = arch["format_version"]
    if arch["format"] != FORMAT or type(version) is not int or version != FORMAT_VERSION:
        raise ModelFileError(f"unsupported model format {arch['format']!r:.40} version "
                             f"{arch['format_version']!r:.20}; this cpool reads {FORMAT!r} "
                             f"version {FORMAT_VERSION}")
    entries = arch["layers"]
    if not isinstance(entries, list) or len(entries) > MAX_LAYERS:
        raise ModelFileError(f"architecture 'layers' must be a list of at most {MAX_LAYERS} "
                             f"layers")
    return entries


def _build_layer(index, entry, allowed):
    if not isinstance(entry, dict) or set(entry) != {"class", "config"}:
        raise ModelFileError(f"layer {index}: expected an object with 'class' and 'config'")
    name, config = entry["class"], entry["config"]
    cls = allowed.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ModelFileError(f"layer {index}: unknown layer class {str(name)[:80]!r}; allowed: "
                             f"{', '.join(sorted(allowed))}")
    if not isinstance(config, dict):
        raise ModelFileError(f"layer {index} ({name}): config must be an object")
    accepted = set(cls._config_names())
    unknown = [k for k in config if k not in accepted]
    if unknown:
        raise ModelFileError(f"layer {index} ({name}): unknown config keys "
                             f"{[str(k)[:40] for k in unknown[:5]]}")
    size = 1
    for key, value in config.items():
        for item in _config_leaves(value, f"layer {index} ({name}) {key}"):
            if isinstance(item, int) and not isinstance(item, bool) and key != "seed":
                size *= max(abs(item), 1)
    if size > MAX_LAYER_SIZE:
        raise ModelFileError(f"layer {index} ({name}): config values too large "
                             f"(size bound {size} > {MAX_LAYER_SIZE})")
    try:
        return cls.from_config(config)
    except Exception as exc:
        raise ModelFileError(f"layer {index} ({name}): invalid config: {exc}") from None


def _config_leaves(value, where, depth=0):
    """The scalars of one config value; only None, bool, bounded int, finite float, short
    str, and short lists of those (nested at most twice) are allowed."""
    if value is None or isinstance(value, bool):
        return [value]
    if isinstance(value, int):
        if abs(value) >= MAX_INT:
            raise ModelFileError(f"{where}: integer out of range")
        return [value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelFileError(f"{where}: non-finite number")
        return [value]
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise ModelFileError(f"{where}: string longer than {MAX_STRING_LENGTH}")
        return [value]
    if isinstance(value, list) and depth < 2 and len(value) <= MAX_LIST_LENGTH:
        return [leaf for v in value for leaf in _config_leaves(v, where, depth + 1)]
    raise ModelFileError(f"{where}: unsupported config value of type {type(value).__name__}")

