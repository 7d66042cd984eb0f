"""Data sets: the bundled UCI handwritten digits, an IDX (MNIST format) reader, and a
stratified train/test split."""
import gzip
import importlib.resources
import math
import os
import struct
import zlib

import numpy as np

from ._validation import as_int

__all__ = ["load_digits", "load_idx", "load_mnist", "stratified_split"]

DIGITS_SAMPLES = 1797


def load_digits():
    """The UCI optical handwritten digits bundled with cpool (no download).

    1,797 images of 8x8 pixels, each pixel the count (0..16) of ink pixels in a 4x4 block
    of a 32x32 bitmap, and their digit labels 0..9. License CC BY 4.0 (UCI Machine Learning
    Repository, E. Alpaydin and C. Kaynak); see cpool/data/README.md.

    Returns ``(images, labels)``: images float32 of shape (1797, 1, 8, 8) holding the counts
    divided by 16 (so in [0, 1], ready for Conv2d), labels int64 of shape (1797,).
    """
    source = importlib.resources.files("cpool").joinpath("data").joinpath("digits.csv.gz")
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (DIGITS_SAMPLES, 65) or table.min() < 0 or table[:, :64].max() > 16 \
            or table[:, 64].max() > 9:
        raise RuntimeError(f"cpool's bundled digits file is damaged (table {table.shape}); "
                           f"reinstall cpool")
    images = (table[:, :64].astype(np.float32) / np.float32(16)).reshape(-1, 1, 8, 8)
    return images, table[:, 64].copy()


# IDX type codes (http://yann.lecun.com/exdb/mnist/): data are big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path, max_bytes=1 << 31):
    """Read one IDX file (the MNIST format), plain or gzip-compressed (name ends in .gz).

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, each dimension as a big-endian
    uint32, then the data, big-endian, in C order. The file must end exactly after the
    data. Returns the array in native byte order.

    Raises ValueError naming the file when it is not a well-formed IDX file, or when its
    data would exceed ``max_bytes``.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
                raise ValueError(f"{path}: not an IDX file (magic {head.hex() or 'empty'}; "
                                 f"expected 00 00, a type code in "
                                 f"{sorted(hex(c) for c in _IDX_TYPES)}, ndim)")
            dtype, ndim = np.dtype(_IDX_TYPES[head[2]]), head[3]
            if ndim == 0:
                raise ValueError(f"{path}: IDX file declares 0 dimensions")
            raw_dims = fh.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            nbytes = math.prod(dims) * dtype.itemsize
            if nbytes > max_bytes:
                raise ValueError(f"{path}: IDX dimensions {dims} declare {nbytes} bytes, "
                                 f"more than max_bytes={max_bytes}")
            data = _read_at_most(fh, nbytes + 1)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise ValueError(f"{path}: unreadable IDX file: {exc}") from None
    if len(data) != nbytes:
        problem = "truncated" if len(data) < nbytes else "has trailing bytes after the data"
        raise ValueError(f"{path}: IDX data {problem} (dimensions {dims} need {nbytes} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_at_most(fh, limit, chunk=1 << 20):
    parts, total = [], 0
    while total < limit:
        part = fh.read(min(chunk, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


_MNIST_NAMES = {"train": "train", "test": "t10k"}


def _find_idx(directory, prefix, what, rank):
    candidates = [f"{prefix}-{what}-idx{rank}-ubyte", f"{prefix}-{what}.idx{rank}-ubyte"]
    for name in candidates:
        for suffix in ("", ".gz"):
            path = os.path.join(directory, name + suffix)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"no {candidates[0]}[.gz] (or {candidates[1]}[.gz]) in "
                            f"{directory!r}")


def load_mnist(directory):
    """Load MNIST (or any data set in its IDX layout, such as Fashion-MNIST) from
    ``directory``, which holds the four standard files, plain or .gz:
    train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
    t10k-labels-idx1-ubyte (the "images.idx3-ubyte" spelling is accepted too).

    Returns ``(x_train, y_train), (x_test, y_test)``: images float32 of shape
    (N, 1, rows, cols) divided by 255, labels int64. Raises FileNotFoundError for a
    missing file and ValueError for malformed or inconsistent ones.
    """
    directory = os.fspath(directory)
    result = []
    for part, prefix in _MNIST_NAMES.items():
        image_path = _find_idx(directory, prefix, "images", 3)
        label_path = _find_idx(directory, prefix, "labels", 1)
        images, labels = load_idx(image_path), load_idx(label_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"{image_path}: expected uint8 images of shape (N, rows, cols), "
                             f"got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(f"{label_path}: expected uint8 labels of shape (N,), got "
                             f"{labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{part}: {len(images)} images but {len(labels)} labels")
        x = (images.astype(np.float32) / np.float32(255))[:, np.newaxis]
        result.append((x, labels.astype(np.int64)))
    return tuple(result)


def stratified_split(y, test_fraction=0.2, seed=0):
    """Indices ``(train, test)`` of a split that keeps each class's share.

    The test set has ceil(test_fraction * n) samples, allotted to the classes in proportion
    to their sizes: each class gets the floor of its quota and the remaining places go to
    the largest fractional parts (ties to the smaller label). Which samples of a class go
    to the test set is drawn with ``np.random.default_rng(seed)``, class by class in label
    order. Both index arrays are sorted.
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) < 2:
        raise ValueError(f"y must be 1-D with at least 2 labels, got shape {y.shape}")
    if isinstance(test_fraction, (bool, np.bool_)):
        raise TypeError("test_fraction must be a number in (0, 1), got bool")
    fraction = float(test_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    seed = as_int(seed, "seed", 0)
    n = len(y)
    n_test = math.ceil(fraction * n)
    if n_test >= n:
        raise ValueError(f"test_fraction={test_fraction} leaves no training samples of {n}")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = n_test * counts / n
    take = np.floor(quota).astype(np.int64)
    spare = n_test - int(take.sum())
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:spare]] += 1
    rng = np.random.default_rng(seed)
    test = []
    for k in range(len(classes)):
        members = np.flatnonzero(inverse == k)
        test.append(rng.permutation(members)[:take[k]])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(n), test, assume_unique=True)
    return train, test
