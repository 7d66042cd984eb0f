#!/usr/bin/env bash
# Build cpool's extensions with AddressSanitizer + UndefinedBehaviorSanitizer (gcc) in a
# throwaway copy of the source tree, run the whole test suite against that build, and
# exit non-zero on any sanitizer report (or test failure). The normal build is untouched.
#
#   tools/sanitize.sh                 # the whole suite
#   tools/sanitize.sh tests/test_pool.py -k max   # extra arguments go to pytest
#
# Environment: PYTHON (default: python3), CC (default: gcc), KEEP=1 keeps the copy.
# CPython is not built with ASan, so the runtimes are preloaded (LD_PRELOAD) and leak
# detection is off (CPython leaks by design); every other report aborts the process
# (exit 86 for ASan, 87 for UBSan), and any ASan log file or report in the output fails
# the run (subprocesses included).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export CC="${CC:-gcc}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cpool-sanitize.XXXXXX")"
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
START=$(date +%s)

# 1. A copy of the sources: tracked and untracked-but-not-ignored files (no build outputs).
cd "$ROOT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
        xargs -0 cp --parents -t "$WORK/"
else
    tar -C "$ROOT" --exclude=.git --exclude='.venv*' --exclude=build --exclude='*.so' \
        --exclude=__pycache__ --exclude='./src/cpool/_kernels/*.c' -cf - . | tar -C "$WORK" -xf -
fi
mkdir -p "$WORK/logs"

# 2. Cython is a build requirement that an installed environment may lack (pip builds in
#    isolation): if so, fetch it into the throwaway directory, for the build only.
BUILD_PATH=""
if ! "$PYTHON" -c "import Cython, setuptools" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --target "$WORK/buildtools" "Cython>=3" "setuptools>=77"
    BUILD_PATH="$WORK/buildtools"
fi

# 3. The sanitized build, in place in the copy (same -O3 as shipped, plus debug info).
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
cd "$WORK"
PYTHONPATH="$BUILD_PATH" CPOOL_EXTRA_CFLAGS="$SAN" \
    CPOOL_EXTRA_LDFLAGS="-fsanitize=address,undefined" CPOOL_CYTHON_JOBS=2 \
    "$PYTHON" setup.py --quiet build_ext --inplace --parallel 2 \
    > "$WORK/logs/build.txt" 2>&1 || { cat "$WORK/logs/build.txt"; exit 1; }
BUILT=$(date +%s)

LIBASAN="$("$CC" -print-file-name=libasan.so)"
LIBUBSAN="$("$CC" -print-file-name=libubsan.so)"
for lib in "$LIBASAN" "$LIBUBSAN"; do
    [ -e "$lib" ] || { echo "sanitize.sh: $lib not found (gcc's libasan, libubsan)"; exit 1; }
done
# allocator_may_return_null: a huge request gives NumPy's MemoryError, as without ASan
ASAN="detect_leaks=0:halt_on_error=1:exitcode=86:allocator_may_return_null=1"
UBSAN="halt_on_error=1:print_stacktrace=1:exitcode=87"
run_sanitized() {
    env LD_PRELOAD="$LIBASAN:$LIBUBSAN" \
        ASAN_OPTIONS="$ASAN:log_path=$WORK/logs/asan:log_exe_name=1" \
        UBSAN_OPTIONS="$UBSAN:log_path=$WORK/logs/ubsan:log_exe_name=1" \
        PYTHONMALLOC=malloc PYTHONPATH="$WORK/src" PYTHONDONTWRITEBYTECODE=1 \
        CPOOL_SANITIZED=1 "$@"
}
report() {
    local found=0
    for f in "$WORK"/logs/asan.* "$WORK"/logs/ubsan.*; do
        [ -e "$f" ] || continue
        found=1
        echo "=== sanitizer report: $(basename "$f")"
        head -n 60 "$f"
    done
    return $found
}

# 4. The pipeline catches reports: a canary heap overflow and a canary signed overflow
#    must each be reported.
cat > "$WORK/logs/canary.c" <<'EOF'
#include <stdlib.h>
int overflow(int i) { int *a = malloc(4 * sizeof(int)); a[i] = 1; int v = a[0]; free(a); return v; }
int undefined(int i) { return i + 2147483647; }
EOF
"$CC" -shared -fPIC $SAN "$WORK/logs/canary.c" -o "$WORK/logs/canary.so"
# ASan reports land in logs/asan.*; UBSan's print to stderr (it ignores log_path beside
# ASan), hence the exit codes and the scan of the test output below.
canary() { run_sanitized "$PYTHON" -c "import ctypes; ctypes.CDLL('$WORK/logs/canary.so').$1"; }
code=0; canary "overflow(4)" >/dev/null 2>&1 || code=$?
if [ "$code" != 86 ] || ! ls "$WORK"/logs/asan.* >/dev/null 2>&1; then
    echo "sanitize.sh: the canary heap overflow was not reported; the setup is broken"; exit 1
fi
code=0; canary "undefined(1)" >/dev/null 2>&1 || code=$?
if [ "$code" != 87 ]; then
    echo "sanitize.sh: the canary signed overflow was not reported; the setup is broken"; exit 1
fi
rm -f "$WORK"/logs/asan.*

# 5. The sanitized modules are the ones imported, then the whole suite.
run_sanitized "$PYTHON" -c "
import cpool, cpool._build_info as b
assert cpool.__file__.startswith('$WORK'), cpool.__file__
assert '-fsanitize=address,undefined' in ' '.join(b.COMPILE_ARGS), b.COMPILE_ARGS
cpool.show_config()"
set +e
run_sanitized "$PYTHON" -m pytest -q -p no:cacheprovider "${@:-tests}" 2>&1 |
    tee "$WORK/logs/pytest.txt"
status=${PIPESTATUS[0]}
set -e
END=$(date +%s)
report || status=${status/#0/1}
if grep -q -E "runtime error:|ERROR: AddressSanitizer" "$WORK/logs/pytest.txt"; then
    echo "sanitize.sh: a sanitizer report appears in the test output"
    status=${status/#0/1}
fi
echo "sanitize.sh: build $((BUILT - START)) s, tests $((END - BUILT)) s, exit status $status"
exit "$status"
