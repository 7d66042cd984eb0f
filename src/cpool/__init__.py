"""cpool: fast, exact neural-network pooling on NumPy arrays.

Typed Cython kernels, parallel with OpenMP, compute max, average, Lp, global, adaptive,
binned and other poolings forward and backward; a small layer API composes them into
trainable models, and cpool.onnx exports those models to ONNX.
"""
__version__ = "0.1.0"

# First: _threads sets OMP_WAIT_POLICY=PASSIVE (unless set) before any kernel loads OpenMP.
from . import _threads  # noqa: F401  (isort: skip)
from . import functional
from ._threads import get_num_threads, set_num_threads
from . import losses, optimizers
from .sequential import Sequential
from .serialization import ModelFileError, load


def __getattr__(name):
    # cpool.onnx imports onnx, which is slow; load it on first use.
    if name == "onnx":
        import importlib

        return importlib.import_module(".onnx", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def show_config(file=None):
    """Print the version, OpenMP status, thread count and build flags."""
    import platform
    import sys

    import numpy as np

    from . import _build_info
    from ._kernels._openmp_info import openmp_enabled, openmp_max_threads
    from ._kernels.pool import SIMD_LEVELS, detected_simd_level, get_simd_level

    lines = [
        f"cpool {__version__}",
        f"python {platform.python_version()} on {platform.machine()} ({sys.platform})",
        f"numpy {np.__version__}",
        f"openmp: {'enabled' if openmp_enabled() else 'disabled (serial build)'}",
        f"threads: {get_num_threads()} (OpenMP default {openmp_max_threads()})",
        f"simd: {SIMD_LEVELS[get_simd_level()]} (CPU supports {SIMD_LEVELS[detected_simd_level()]}; "
        f"CPOOL_SIMD=baseline|avx2|avx512 caps it)",
        f"compile args: {' '.join(_build_info.COMPILE_ARGS)}",
        f"link args: {' '.join(_build_info.LINK_ARGS)}",
    ]
    print("\n".join(lines), file=file)
