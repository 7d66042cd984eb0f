"""Build the Cython kernels, with OpenMP when the compiler has it.

Environment variables:
  CPOOL_DISABLE_OPENMP=1  build serial kernels even if OpenMP is available.
  CPOOL_BOUNDSCHECK=1     turn Cython bounds and wraparound checks back on (debugging).
  CPOOL_EXTRA_CFLAGS      extra compiler flags, e.g. sanitizers (CPOOL_EXTRA_LDFLAGS to link).
  CPOOL_BUILD_ONLY=a,b    during development, build only these kernel modules (by name).
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join("src", "cpool", "_kernels")


def _compiler_is_msvc():
    return sys.platform == "win32" and "GCC" not in sys.version


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or None when the compiler lacks it."""
    if os.environ.get("CPOOL_DISABLE_OPENMP"):
        return None
    if _compiler_is_msvc():
        return ["/openmp"], []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        try:
            subprocess.run(cc + ["-fopenmp", path, "-o", os.path.join(tmp, "t")],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return None
    return ["-fopenmp"], ["-fopenmp"]


def _build_extensions():
    openmp = _openmp_flags()
    if _compiler_is_msvc():
        compile_args = ["/O2"]
        link_args = []
    else:
        # -O3 vectorizes the row loops. The baseline stays the x86-64 one so wheels run
        # anywhere; wider copies of the hot loops are chosen at run time (pool_rows.h).
        # No FMA contraction, so every copy gives the same bits.
        compile_args = ["-O3", "-fno-math-errno", "-ffp-contract=off", "--param=vect-partial-vector-usage=1"]
        link_args = []
    if openmp:
        compile_args += openmp[0]
        link_args += openmp[1]
    elif not _compiler_is_msvc():
        compile_args.append("-fopenmp-simd")  # keeps `#pragma omp simd` without the runtime
    compile_args += os.environ.get("CPOOL_EXTRA_CFLAGS", "").split()
    link_args += os.environ.get("CPOOL_EXTRA_LDFLAGS", "").split()

    checks = bool(os.environ.get("CPOOL_BOUNDSCHECK"))
    directives = {
        "language_level": 3,
        "boundscheck": checks,
        "wraparound": checks,
        "initializedcheck": checks,
        "cdivision": True,
        "embedsignature": True,
    }
    sources = sorted(glob.glob(os.path.join(KERNELS, "*.pyx")))
    only = os.environ.get("CPOOL_BUILD_ONLY")
    if only:
        wanted = set(only.split(","))
        sources = [s for s in sources if os.path.splitext(os.path.basename(s))[0] in wanted]
    headers = sorted(glob.glob(os.path.join(KERNELS, "*.h")) + glob.glob(os.path.join(KERNELS, "*.pxd")))
    extensions = [
        Extension(
            "cpool._kernels." + os.path.splitext(os.path.basename(src))[0],
            [src],
            include_dirs=[np.get_include(), KERNELS],
            depends=headers,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
        for src in sources
    ]
    _write_build_info(openmp is not None, compile_args, link_args)
    return cythonize(extensions, compiler_directives=directives,
                     include_path=[KERNELS], nthreads=int(os.environ.get("CPOOL_CYTHON_JOBS", "0")))


def _write_build_info(openmp, compile_args, link_args):
    path = os.path.join(HERE, "src", "cpool", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"OPENMP = {openmp!r}\n")
        f.write(f"COMPILE_ARGS = {compile_args!r}\n")
        f.write(f"LINK_ARGS = {link_args!r}\n")


setup(ext_modules=_build_extensions())
