"""Thread control and build configuration: set_num_threads/get_num_threads, the
OMP_NUM_THREADS default, show_config, and OpenMP actually being compiled in."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import cpool
from cpool import _build_info
from cpool._kernels._openmp_info import openmp_enabled, openmp_max_threads


@pytest.fixture
def restore_threads():
    yield
    cpool.set_num_threads(None)


def test_set_num_threads_sets_and_none_restores_default(restore_threads):
    default = cpool.get_num_threads()
    assert default == openmp_max_threads() >= 1
    cpool.set_num_threads(3)
    assert cpool.get_num_threads() == 3
    cpool.set_num_threads(np.int64(2))
    assert cpool.get_num_threads() == 2 and type(cpool.get_num_threads()) is int
    cpool.set_num_threads(None)
    assert cpool.get_num_threads() == default


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                        (True, TypeError), ("2", TypeError), (2.0, TypeError)])
def test_set_num_threads_rejects_bad_values(bad, error, restore_threads):
    cpool.set_num_threads(2)
    with pytest.raises(error, match="positive int or None"):
        cpool.set_num_threads(bad)
    assert cpool.get_num_threads() == 2  # unchanged by the failed call


def _python(code, **env):
    # The child imports the same cpool as this process: the installed one, or src/ when
    # PYTHONPATH says so (it is inherited).
    full_env = dict(os.environ, **env)
    done = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_default_follows_omp_num_threads_and_openmp_is_enabled():
    code = ("import cpool\n"
            "from cpool._kernels._openmp_info import openmp_enabled, openmp_max_threads\n"
            "first = cpool.get_num_threads()\n"
            "cpool.set_num_threads(5)\n"
            "cpool.set_num_threads(None)\n"
            "print(first, cpool.get_num_threads(), openmp_max_threads(), openmp_enabled())")
    # a serial build would answer 1 whatever OMP_NUM_THREADS says
    assert _python(code, OMP_NUM_THREADS="3").split() == ["3", "3", "3", "True"]
    assert _python(code, OMP_NUM_THREADS="1").split() == ["1", "1", "1", "True"]
    assert _build_info.OPENMP is True
    assert openmp_enabled() is True


def test_small_calls_run_on_fewer_threads_only_while_workers_sleep(monkeypatch,
                                                                   restore_threads):
    from cpool import _threads
    grain = _threads.THREAD_GRAIN_BYTES
    small = np.empty(grain // 16, np.float32)  # a quarter grain of bytes
    large = np.empty(10 * grain // 4, np.float32)  # 10 grains
    cpool.set_num_threads(4)
    monkeypatch.setattr(_threads, "WORKERS_SLEEP", True)
    assert _threads.threads_for(small) == 1
    assert _threads.threads_for(small, small) == 1
    assert _threads.threads_for(small, cost=8) == 2  # 2 grains of work
    assert _threads.threads_for(large) == 4  # 10 grains, capped at 4 threads
    assert _threads.threads_for(large[:3 * grain // 4]) == 3
    cpool.set_num_threads(1)
    assert _threads.threads_for(large) == 1
    cpool.set_num_threads(4)
    monkeypatch.setattr(_threads, "WORKERS_SLEEP", False)
    assert _threads.threads_for(small) == 4


_POLICY = ("import os, sys\n"
           "{first}\n"
           "import cpool\n"
           "from cpool import _threads\n"
           "print(_threads.WORKERS_SLEEP, os.environ.get('OMP_WAIT_POLICY'))")


@pytest.mark.parametrize("env, first, sleep, policy", [
    ({}, "", "True", "PASSIVE"),                         # cpool's default
    ({"OMP_WAIT_POLICY": "passive"}, "", "True", "passive"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "", "False", "ACTIVE"),
    ({"GOMP_SPINCOUNT": "10000"}, "", "False", "PASSIVE"),
])
def test_import_sets_passive_wait_policy_unless_chosen(env, first, sleep, policy):
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = _POLICY.format(first=first)
    done = subprocess.run([sys.executable, "-c", code], env=dict(base, **env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [sleep, policy]


@pytest.mark.parametrize("policy, sleep", [(None, "False"), ("PASSIVE", "True")])
def test_an_openmp_runtime_loaded_before_cpool_keeps_its_policy(policy, sleep):
    """It read the environment before cpool could set it (PyTorch's libgomp spins by
    default): its workers sleep only when the user asked for that."""
    pytest.importorskip("torch")
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy:
        base["OMP_WAIT_POLICY"] = policy
    done = subprocess.run([sys.executable, "-c", _POLICY.format(first="import torch")],
                          env=base, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == sleep


def test_show_config_reports_version_openmp_threads_and_flags(restore_threads):
    cpool.set_num_threads(2)
    buf = io.StringIO()
    cpool.show_config(file=buf)
    text = buf.getvalue()
    assert cpool.__version__ in text
    assert "openmp: enabled" in text
    assert "threads: 2" in text
    for flag in _build_info.COMPILE_ARGS + _build_info.LINK_ARGS:
        assert flag in text
    assert "-fopenmp" in text and "-O3" in text


def test_build_flags_are_portable():
    flags = " ".join(_build_info.COMPILE_ARGS + _build_info.LINK_ARGS)
    for forbidden in ("-march=native", "-mtune=native", "-ffast-math", "-Ofast",
                      "-funsafe-math-optimizations", "-ffinite-math-only"):
        assert forbidden not in flags
