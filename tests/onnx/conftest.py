import pytest

import cpool
from cpool import _threads


@pytest.fixture(autouse=True)
def _one_thread():
    """The exporter tests check values, not speed: one kernel thread keeps the many small
    calls cheap on a busy machine. The previous setting (None: OpenMP's default) is
    restored exactly."""
    before = _threads._num_threads
    cpool.set_num_threads(1)
    yield
    cpool.set_num_threads(before)
