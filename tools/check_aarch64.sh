#!/usr/bin/env bash
# Cross-compile snnfast for aarch64 Linux (GCC, or clang) on an x86-64 Debian 12 machine and
# run its kernel tests under qemu user-mode emulation.
#
# Not run by CI: it installs Debian packages (apt-get, as root) and fetches an arm64 Debian 12
# tree and aarch64 wheels from PyPI. Usage, from anywhere in the checkout:
#
#     sudo tools/check_aarch64.sh                       # the default tests (TESTS below)
#     sudo tools/check_aarch64.sh tests/test_engine.py  # other pytest arguments
#
# On 2 x86-64 cores: 15-20 minutes the first time (the tree, the wheels, a 4-minute build,
# 12 minutes of tests under emulation; the result is docs/performance.rst's "aarch64").
#
# Environment:
#   PYTHON          host Python with the build requirements (Cython, setuptools, numpy);
#                   default: python3
#   ARM_DIR         work folder (the arm64 tree, the wheels, the copy of the source tree);
#                   default: /tmp/snnfast-arm64. Kept between runs: a second run reuses the
#                   tree and the wheels and rebuilds only what changed.
#   SKIP_APT=1      the Debian packages below are installed already
#   CROSS_CC=clang  build with clang (--target=aarch64-linux-gnu, Debian's clang package) in
#                   ARM_DIR/src-clang instead of GCC; without OpenMP (SNNFAST_NO_OPENMP=1):
#                   the cross toolchain has no aarch64 libomp
#
# What it does:
#  1. apt-get installs the cross compiler (crossbuild-essential-arm64), qemu-user and mmdebstrap.
#  2. mmdebstrap unpacks (no maintainer scripts, so no emulation needed) a minimal arm64
#     Debian 12 tree: Python 3.11 with its headers, libgomp, libstdc++.
#  3. pip installs aarch64 wheels of NumPy (the host's version: the same headers as the
#     Cython the host runs) and of the test dependencies into ARM_DIR/site.
#  4. Copies the checkout (tracked and untracked, not ignored, files) to ARM_DIR/src and builds
#     the extensions there in place with the host's setup.py, CC=aarch64-linux-gnu-gcc and the
#     arm64 Python and NumPy headers; checks that every module is an AArch64 ELF file and that
#     no x86 flag reached the compiler.
#  5. Runs pytest under qemu-aarch64 with the arm64 python3.11 and prints its summary.
#     ARM_DIR/bin/python3 is a wrapper script (qemu-aarch64 -L TREE python3.11) that
#     sys.executable names, so tests that start `sys.executable` in a subprocess work without
#     binfmt_misc.
set -euo pipefail

ARM_DIR=${ARM_DIR:-/tmp/snnfast-arm64}
PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$ARM_DIR/root
SITE=$ARM_DIR/site
SRC=$ARM_DIR/src
SUITE=bookworm                          # Debian 12: Python 3.11
PYVER=3.11
TRIPLET=aarch64-linux-gnu
case "${CROSS_CC:-gcc}" in
    gcc) CC="$TRIPLET-gcc"; APT_CC=(); BUILD_ENV=() ;;
    clang) CC="clang --target=$TRIPLET"; APT_CC=(clang); BUILD_ENV=(SNNFAST_NO_OPENMP=1)
           SRC=$ARM_DIR/src-clang ;;
    *) echo "check_aarch64.sh: CROSS_CC is gcc or clang, not ${CROSS_CC}" >&2; exit 1 ;;
esac
# the tests that load the compiled kernels (plus the build's and the configuration's); the
# NumPy-only tests add nothing about the cross build and are slow under emulation
TESTS=(tests/test_engine.py tests/test_convsnn_kernels.py tests/test_build.py
       tests/test_config.py tests/test_packaging.py tests/test_nir_compiled.py)
[ $# -gt 0 ] && TESTS=("$@")

step() { printf '\n== %s\n' "$*"; }
die() { echo "check_aarch64.sh: $*" >&2; exit 1; }

step "1. Debian packages: cross compiler, qemu-user, mmdebstrap"
if [ "${SKIP_APT:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || die "needs root for apt-get (or SKIP_APT=1 with the packages installed)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q crossbuild-essential-arm64 qemu-user \
        mmdebstrap "${APT_CC[@]}"
fi
for tool in $TRIPLET-gcc ${CC%% *} qemu-aarch64 mmdebstrap; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
"$PYTHON" -c "import Cython, setuptools, numpy" || die "$PYTHON lacks Cython, setuptools or numpy"

step "2. arm64 Debian $SUITE tree in $ROOT"
if [ ! -x "$ROOT/usr/bin/python$PYVER" ]; then
    rm -rf "$ROOT"
    mkdir -p "$ARM_DIR"
    # extract: unpack the packages and their dependencies, run nothing (no binfmt needed)
    mmdebstrap --arch=arm64 --variant=extract \
        --include="python$PYVER,libpython$PYVER-dev,libgomp1,libstdc++6" \
        "$SUITE" "$ROOT" http://deb.debian.org/debian
fi
mkdir -p "$ARM_DIR/bin"
# the arm64 interpreter under qemu, with this script as its sys.executable (qemu's -0 sets its
# argv[0]; PYTHONHOME lets it find its standard library from there); the wheels on its path
cat > "$ARM_DIR/bin/python3" <<EOF
#!/bin/sh
export PYTHONHOME="$ROOT/usr" PYTHONPATH="\${PYTHONPATH:+\$PYTHONPATH:}$SITE"
exec qemu-aarch64 -L "$ROOT" -0 "\$0" "$ROOT/usr/bin/python$PYVER" "\$@"
EOF
chmod +x "$ARM_DIR/bin/python3"
"$ARM_DIR/bin/python3" -c "import platform, sys; print(platform.machine(), sys.version.split()[0])"

step "3. aarch64 wheels in $SITE"
NUMPY=$("$PYTHON" -c "import numpy; print(numpy.__version__)")
# the package's dependencies and the tests'; matplotlib: the CLIs' figures
WHEELS=("numpy==$NUMPY" scipy h5py matplotlib threadpoolctl tqdm joblib nir pytest hypothesis)
if [ "$(cat "$SITE/.wheels" 2>/dev/null)" != "${WHEELS[*]}" ]; then
    rm -rf "$SITE"
    # the host's pip, told the target: only binary wheels for CPython 3.11 on aarch64 Linux
    "$PYTHON" -m pip install -q --target "$SITE" --only-binary=:all: \
        --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
        --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" "${WHEELS[@]}"
    echo "${WHEELS[*]}" > "$SITE/.wheels"
fi

step "4. cross-build in $SRC"
mkdir -p "$SRC"
# the checkout as it is (uncommitted edits too), without build outputs or ignored files
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -cf -) | tar -xf - -C "$SRC"
else                                    # an unpacked source distribution
    tar -C "$REPO" --exclude=./build --exclude='*.so' --exclude=./snnfast/_build_info.py \
        -cf - . | tar -xf - -C "$SRC"
fi
LOG=$ARM_DIR/build-${CROSS_CC:-gcc}.log
EXT_SUFFIX=".cpython-${PYVER/./}-$TRIPLET.so"
# -idirafter: Debian's python3.11/pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>;
# the C library's headers still come from the cross compiler's own sysroot
INCLUDES="-I$ROOT/usr/include/python$PYVER -idirafter $ROOT/usr/include"
INCLUDES+=" -I$SITE/numpy/_core/include"
(cd "$SRC" && env "${BUILD_ENV[@]}" CC="$CC" LDSHARED="$CC -shared" CFLAGS="$INCLUDES" \
    SETUPTOOLS_EXT_SUFFIX=$EXT_SUFFIX \
    "$PYTHON" setup.py build_ext --inplace >"$LOG" 2>&1) ||
    { tail -30 "$LOG"; die "the cross build failed (log: $LOG)"; }
mapfile -t MODULES < <(cd "$SRC" && find snnfast -name "*$EXT_SUFFIX" | sort)
[ ${#MODULES[@]} -gt 0 ] || die "no $EXT_SUFFIX module was built"
for m in "${MODULES[@]}"; do
    readelf -h "$SRC/$m" | grep -q 'Machine:.*AArch64' || die "$m is not an AArch64 module"
done
echo "${#MODULES[@]} AArch64 modules: ${MODULES[*]##*/}"
if grep -E "^$CC .*( -march=| -m(sse|avx|fma|bmi|popcnt))" "$LOG"; then
    die "an x86 flag reached the aarch64 compiler (above)"
fi
C_WARNINGS=$(grep -c -E "warning:" "$LOG" || true)
# (of the files compiled in this run: a rerun recompiles only what changed)
echo "compiler warnings: $C_WARNINGS (log: $LOG)"
grep -E "^(OPENMP|CFLAGS|MODE|LEVEL|VARIANTS) =" "$SRC/snnfast/_build_info.py"

step "5. pytest under qemu-aarch64: ${TESTS[*]}"
cd "$SRC"
"$ARM_DIR/bin/python3" -m snnfast --config
"$ARM_DIR/bin/python3" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
