"""cpool.datasets: the bundled digits, the IDX reader, and the stratified split."""
import csv
import gzip
import importlib.resources
import io
import struct

import numpy as np
import pytest

from cpool.datasets import load_digits, load_idx, load_mnist, stratified_split


# ----------------------------------------------------------------------------- digits
def test_load_digits_matches_the_bundled_csv():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int64
    source = importlib.resources.files("cpool").joinpath("data").joinpath("digits.csv.gz")
    raw = source.read_bytes()
    rows = list(csv.reader(io.StringIO(gzip.decompress(raw).decode("ascii"))))
    assert len(rows) == 1797 and all(len(r) == 65 for r in rows)
    for i in (0, 1, 900, 1796):
        counts = [int(v) for v in rows[i][:64]]
        np.testing.assert_array_equal(images[i, 0] * 16, np.reshape(counts, (8, 8)))
        assert labels[i] == int(rows[i][64])
    assert images.min() == 0 and images.max() == 1
    assert np.array_equal(np.unique(labels), np.arange(10))
    assert np.bincount(labels).min() >= 170  # about 180 of each digit


# ----------------------------------------------------------------------------- split
def test_stratified_split_keeps_class_shares():
    y = np.repeat(np.arange(3), [50, 30, 21])
    train, test = stratified_split(y, 0.2, seed=0)
    assert len(test) == 21 and len(train) == 80  # ceil(0.2 * 101)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(101))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    # quotas 10.40, 6.24, 4.37 -> floors 10, 6, 4 and the one spare to class 0 (0.40)
    assert np.bincount(y[test]).tolist() == [11, 6, 4]
    again = stratified_split(y, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again))
    assert not np.array_equal(test, stratified_split(y, 0.2, seed=1)[1])


def test_stratified_split_on_digits_and_errors():
    _, labels = load_digits()
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(test) == 360 and len(train) == 1437
    share = np.bincount(labels[test]) / np.bincount(labels)
    assert np.all(np.abs(share - 0.2) < 0.01)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(labels, 1.0)
    with pytest.raises(ValueError, match="1-D"):
        stratified_split(labels.reshape(-1, 1))
    with pytest.raises(ValueError, match="no training samples"):
        stratified_split([0, 1], 0.9)
    with pytest.raises(TypeError, match="test_fraction"):
        stratified_split(labels, True)


# ----------------------------------------------------------------------------- IDX
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
             np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array, code=None):
    """The IDX encoding, written out from the format description."""
    array = np.asarray(array)
    code = IDX_CODES[array.dtype.type] if code is None else code
    head = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d)
                                                      for d in array.shape)
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("gz", [False, True])
def test_load_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    data = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    got = load_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("payload, match", [
    (b"", "not an IDX file"),
    (b"\x01\x00\x08\x01" + bytes(8), "not an IDX file"),
    (b"\x00\x00\x07\x01" + bytes(8), "not an IDX file"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
    (idx_bytes(np.zeros((2, 3), np.uint8))[:-1], "truncated"),
    (idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x00", "trailing"),
    (b"\x00\x00\x0e\x02\xff\xff\xff\xff\xff\xff\xff\xff", "max_bytes"),
])
def test_load_idx_rejects_malformed_files(tmp_path, payload, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match):
        load_idx(path)


def test_load_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(ValueError, match="bad.idx.gz"):
        load_idx(path)
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "none.idx")


def write_mnist(folder, n_train=12, n_test=5, gz=True, dotted=False):
    rng = np.random.default_rng(1)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        data[prefix] = images, labels
        for what, rank, array in (("images", 3, images), ("labels", 1, labels)):
            sep = "." if dotted else "-"
            name = f"{prefix}-{what}{sep}idx{rank}-ubyte" + (".gz" if gz else "")
            raw = idx_bytes(array)
            (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
    return data


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, True)])
def test_load_mnist(tmp_path, gz, dotted):
    data = write_mnist(tmp_path, gz=gz, dotted=dotted)
    (x_train, y_train), (x_test, y_test) = load_mnist(tmp_path)
    assert x_train.shape == (12, 1, 28, 28) and x_train.dtype == np.float32
    assert x_test.shape == (5, 1, 28, 28) and y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train[:, 0] * 255, data["train"][0])
    np.testing.assert_array_equal(y_train, data["train"][1])
    np.testing.assert_array_equal(y_test, data["t10k"][1])


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.int32)))
    with pytest.raises(ValueError, match="uint8 labels"):
        load_mnist(tmp_path)
