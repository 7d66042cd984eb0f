"""Shared fixtures, and Hypothesis profiles. "ci" (the default) keeps the property and fuzz tests small and
reproducible: a fixed example sequence, no example database, no deadline (a loaded
machine must not turn slowness into failures) and no shrinking (a failing draw is
reported as found; HYPOTHESIS_PROFILE=dev shrinks, and runs many more random draws).
"""
import os

import pytest

try:
    from hypothesis import HealthCheck, Phase, settings
except ImportError:  # only the property and fuzz tests need it (the [test] extra has it)
    settings = None

if settings is not None:
    _QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True,
                              database=None, suppress_health_check=_QUIET, print_blob=True,
                              phases=(Phase.explicit, Phase.reuse, Phase.generate))
    settings.register_profile("dev", max_examples=300, deadline=None, database=None,
                              suppress_health_check=_QUIET, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def every_thread_runs():
    """set_num_threads(n) runs n threads however small a test's arrays are (see
    cpool._threads.threads_for), so the thread-invariance tests compare real teams."""
    from cpool import _threads
    sleep = _threads.WORKERS_SLEEP
    _threads.WORKERS_SLEEP = False
    yield
    _threads.WORKERS_SLEEP = sleep


def route_kernels(monkeypatch, path):
    """Send channels-first pooling through one kernel family: the plane blocks for every
    plane size ("planes"), the whole-plane stride-1 kernels for every plane they take
    ("same"; the rest to the rows), or the row kernels ("rows"). See cpool._layout."""
    from cpool import _layout
    limit = 1 << 40 if path == "planes" else 0
    monkeypatch.setattr(_layout, "PLANE_MAX_W", limit)
    monkeypatch.setattr(_layout, "PLANE_MAX_PIXELS", limit)
    monkeypatch.setattr(_layout, "TAPS_PLANE_MAX_PIXELS", limit)
    same = (0, 1 << 40) if path == "same" else (1, 0)
    monkeypatch.setattr(_layout, "SAME_PIXELS",
                        {"sum": same, "max": same, "max_registers": same})


@pytest.fixture(params=["planes", "rows"])
def kernel_path(request, monkeypatch):
    """Channels-first pooling through the plane-block kernels or the row kernels."""
    route_kernels(monkeypatch, request.param)
    return request.param


@pytest.fixture(params=["same", "planes", "rows"])
def pool_kernel_path(request, monkeypatch):
    """kernel_path, and the whole-plane stride-1 kernels of sliding windows."""
    route_kernels(monkeypatch, request.param)
    return request.param
