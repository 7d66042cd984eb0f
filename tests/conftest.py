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



@pytest.fixture(params=["planes", "rows"])
def kernel_path(request, monkeypatch):
    """Channels-first pooling through the plane-block kernels for every plane size
    ("planes"), or for none ("rows"); see cpool._layout.runs_plane_blocks."""
    from cpool import _layout
    limit = 1 << 40 if request.param == "planes" else 0
    monkeypatch.setattr(_layout, "PLANE_MAX_W", limit)
    monkeypatch.setattr(_layout, "PLANE_MAX_PIXELS", limit)
    return request.param
