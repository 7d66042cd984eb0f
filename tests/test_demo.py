"""`cpool demo` end to end in its quick mode, as a newcomer would run it."""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cpool
from cpool.__main__ import main
from tests.test_datasets import write_mnist

ACCURACY_LINE = re.compile(r"^test accuracy: (\d\.\d{3})$")


def has_onnx_exporter():
    try:
        from cpool.onnx import export, verify  # noqa: F401
    except ImportError:
        return False
    return True


def run_demo(*args):
    env = dict(os.environ)
    # Test machines are shared: spinning OpenMP/OpenBLAS workers on busy cores make small
    # steps ~10x slower. Threads are tested elsewhere; here, don't spin (unless set).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "cpool", "demo", *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.skipif(os.environ.get("CPOOL_SLOW_TESTS") != "1",
                    reason="the full demo (~5 s of CPU, minutes on a busy machine) runs "
                           "with CPOOL_SLOW_TESTS=1")
def test_full_demo_reaches_97_percent(tmp_path):
    proc = run_demo("--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = ACCURACY_LINE.match(proc.stdout.strip().splitlines()[-1])
    assert match and float(match.group(1)) >= 0.97, proc.stdout[-500:]


def test_demo_quick_subprocess(tmp_path):
    out = tmp_path / "out"
    proc = run_demo("--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    match = ACCURACY_LINE.match(lines[-1])
    assert match, lines[-1]
    assert "epoch 3/3" in proc.stderr  # the progress bar
    model = cpool.load(out / "digits_cnn.npz")
    assert model.predict(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)
    assert "identical predictions" in proc.stdout
    if importlib.util.find_spec("matplotlib"):
        assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if has_onnx_exporter():
        assert (out / "digits_cnn.onnx").stat().st_size > 0
        diff = re.search(r"max abs difference (\S+)", proc.stdout)
        assert diff and float(diff.group(1)) <= 1e-5


def test_demo_mnist_from_idx_files(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    write_mnist(data, n_train=16, n_test=8)
    status = main(["demo", "--data", "mnist", str(data), "--quick", "--epochs", "1",
                   "--seed", "3", "--out", str(tmp_path / "out")])
    assert status == 0
    captured = capsys.readouterr()
    assert "16 training and 8 test images, 1 epochs" in captured.out
    assert ACCURACY_LINE.match(captured.out.strip().splitlines()[-1])
    model = cpool.load(tmp_path / "out" / "mnist_cnn.npz")
    assert model.output_shape((1, 1, 28, 28)) == (1, 10)
    conv = [(1, 32), (32, 64), (64, 64)]  # the seed's network: 3x3 convs, then Linear(576, 10)
    expected = sum(o * i * 9 + o for i, o in conv) + 576 * 10 + 10
    assert sum(p.size for p, _ in model.parameters()) == expected


@pytest.mark.parametrize("argv, message", [
    (["demo", "--data", "cifar"], "expected 'digits' or 'mnist DIR'"),
    (["demo", "--data", "mnist"], "expected 'digits' or 'mnist DIR'"),
    (["demo", "--epochs", "zero"], "invalid int"),
    ([], "required"),
])
def test_demo_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_missing_mnist_folder(tmp_path):
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte"):
        main(["demo", "--data", "mnist", str(tmp_path), "--out", str(tmp_path / "o")])
