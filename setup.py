"""Build script for snnfast's Cython/OpenMP extensions.

Every ``ext/<name>.pyx`` is compiled into the module ``snnfast.<name>``; the C kernels live in
``ext/*.h`` and the ``.pyx`` files are only their Python bindings.

OpenMP is detected by compiling and linking (never running) a small program, so that a cross
compiler works: first ``-fopenmp`` (GCC, LLVM clang), then ``-Xpreprocessor -fopenmp -lomp``
(Apple clang with Homebrew's libomp: add its ``-I``/``-L`` paths through CPPFLAGS/LDFLAGS).
Without OpenMP the build continues serially with a loud warning.

A local build targets this machine's CPU (``-march=native``), the fastest choice. The
instruction-set features that build used are recorded in ``snnfast/_build_info.py``, and
``import snnfast`` refuses (ImportError) to run the kernels on a CPU that lacks any of them
instead of crashing with an illegal instruction. Set ``SNNFAST_PORTABLE=1`` to build a package
that runs on any CPU of the architecture (for wheels and heterogeneous clusters).

Environment variables
---------------------
SNNFAST_PORTABLE=1   do not add ``-march=native`` (for wheels / heterogeneous clusters).
SNNFAST_NO_OPENMP=1  build without OpenMP on purpose.
SNNFAST_DEBUG=1      keep Cython bounds checks and build with ``-O0 -g``.
SNNFAST_BUILD_ONLY   comma-separated extension names to build (developer shortcut).
"""
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent

# Extensions compiled for the baseline CPU of the architecture, without OpenMP: _cpu is imported
# by `import snnfast` to check the CPU before any -march=native kernel is loaded.
PORTABLE_EXTENSIONS = {"_cpu"}

OMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += omp_get_num_threads() > 0;
    return n > 0 ? 0 : 1;
}
"""

# OpenMP flag candidates (compile flags, link flags), tried in order
OMP_CANDIDATES = [
    (["-fopenmp"], ["-fopenmp"]),                       # GCC, LLVM clang
    (["-Xpreprocessor", "-fopenmp"], ["-lomp"]),        # Apple clang + libomp
]

# Predefined macro of an x86 instruction-set feature -> its name for __builtin_cpu_supports
# (ext/snn_cpu.h). The macros the compiler defines for the chosen flags are the features its
# code may use; the run-time check compares them with the CPU's.
ISA_MACROS = {
    "__SSE3__": "sse3", "__SSSE3__": "ssse3", "__SSE4_1__": "sse4.1", "__SSE4_2__": "sse4.2",
    "__POPCNT__": "popcnt", "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma",
    "__BMI__": "bmi", "__BMI2__": "bmi2", "__AES__": "aes", "__PCLMUL__": "pclmul",
    "__F16C__": "f16c", "__MOVBE__": "movbe", "__LZCNT__": "lzcnt", "__ADX__": "adx",
    "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512VL__": "avx512vl",
    "__AVX512DQ__": "avx512dq", "__AVX512CD__": "avx512cd", "__AVX512VNNI__": "avx512vnni",
    "__AVX512IFMA__": "avx512ifma", "__AVX512VBMI__": "avx512vbmi",
    "__AVX512VBMI2__": "avx512vbmi2", "__AVX512BITALG__": "avx512bitalg",
    "__AVX512VPOPCNTDQ__": "avx512vpopcntdq", "__AVX512BF16__": "avx512bf16",
    "__AVX512FP16__": "avx512fp16", "__GFNI__": "gfni", "__VPCLMULQDQ__": "vpclmulqdq",
    "__VAES__": "vaes", "__AVXVNNI__": "avxvnni",
    # AMD-only extensions: a build on an AMD CPU must not run unchecked on an Intel one
    "__SSE4A__": "sse4a", "__FMA4__": "fma4", "__XOP__": "xop",
}


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler():
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def _user_flags(*names):
    """The user's CPPFLAGS/CFLAGS/LDFLAGS (e.g. libomp's -I/-L on macOS), as setuptools uses them."""
    return [f for n in names for f in shlex.split(os.environ.get(n, ""))]


def _compiles(cflags, ldflags=(), source="int main(void){return 0;}\n", link=True):
    """True if ``source`` compiles (and links, if ``link``) with these flags. Nothing is run."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "t.c"
        src.write_text(source)
        cmd = (_compiler() + _user_flags("CPPFLAGS", "CFLAGS") + list(cflags) + [str(src)]
               + (["-o", str(Path(tmp) / "t")] + _user_flags("LDFLAGS") + list(ldflags)
                  if link else ["-c", "-o", str(Path(tmp) / "t.o")]))
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
    return True


def _openmp_flags():
    """(compile flags, link flags) of the first OpenMP candidate that compiles and links."""
    for cflags, ldflags in OMP_CANDIDATES:
        if _compiles(cflags, ldflags, OMP_TEST):
            return cflags, ldflags
    return None


def _target_isa(cflags):
    """Sorted x86 feature names the compiler enables with ``cflags`` ([] elsewhere or if the
    compiler cannot list its predefined macros)."""
    try:
        out = subprocess.run(_compiler() + list(cflags) + ["-dM", "-E", "-x", "c", os.devnull],
                             check=True, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    macros = set(re.findall(r"^#define (\w+)", out, re.M))
    return sorted({name for macro, name in ISA_MACROS.items() if macro in macros})


def _warn_no_openmp(reason):
    bar = "*" * 78
    msg = (f"\n{bar}\n*  WARNING: snnfast is being built WITHOUT OpenMP ({reason}).\n"
           "*  Every kernel will run on ONE thread. Install an OpenMP-capable compiler\n"
           "*  (gcc, or clang with libomp) and rebuild for parallel speed.\n"
           f"{bar}\n")
    print(msg, file=sys.stderr)


def _build_options():
    debug = _env_flag("SNNFAST_DEBUG")
    cflags = ["-O0", "-g"] if debug else ["-O3", "-ffp-contract=off"]
    if not debug and not _env_flag("SNNFAST_PORTABLE") and _compiles(["-march=native"]):
        cflags.append("-march=native")
    ldflags = []
    if _env_flag("SNNFAST_NO_OPENMP"):
        openmp = False
        _warn_no_openmp("SNNFAST_NO_OPENMP is set")
    else:
        found = _openmp_flags()
        openmp = found is not None
        if openmp:
            cflags += found[0]
            ldflags += found[1]
        else:
            _warn_no_openmp("the compiler could not compile and link an OpenMP program with "
                            + " or ".join(" ".join(c + l) for c, l in OMP_CANDIDATES))
    return cflags, ldflags, openmp, debug


CFLAGS, LDFLAGS, OPENMP, DEBUG = _build_options()
ISA = _target_isa(CFLAGS)


def _portable_flags(flags):
    """``flags`` without -march=native and the OpenMP flags (for PORTABLE_EXTENSIONS)."""
    omp = {f for c, l in OMP_CANDIDATES for f in c + l}
    return [f for f in flags if f != "-march=native" and f not in omp]


def _build_info_text():
    return ("# Generated by setup.py at build time; not under version control.\n"
            f"OPENMP = {OPENMP!r}\nCFLAGS = {CFLAGS!r}\nLDFLAGS = {LDFLAGS!r}\n"
            f"DEBUG = {DEBUG!r}\nCOMPILER = {' '.join(_compiler())!r}\n"
            "# x86 features the kernels were compiled for; import snnfast checks the CPU has them\n"
            f"ISA = {ISA!r}\n")


def _write_build_info(package_dir):
    """Write ``_build_info.py`` into ``package_dir`` atomically (temp file + rename)."""
    info = Path(package_dir) / "_build_info.py"
    info.parent.mkdir(parents=True, exist_ok=True)
    tmp = info.with_suffix(".tmp")
    tmp.write_text(_build_info_text())
    os.replace(tmp, info)


def _extensions():
    only = {s.strip() for s in os.environ.get("SNNFAST_BUILD_ONLY", "").split(",") if s.strip()}
    exts = []
    # C headers shared by several kernels: a change to one rebuilds them all
    headers = sorted(str(h.relative_to(HERE)) for h in (HERE / "ext").glob("*.h"))
    sources = sorted((HERE / "ext").glob("*.pyx"))
    if not sources:
        # a package without its kernels would install and then fail at the first model
        sys.exit("setup.py: no Cython sources in ext/ (an incomplete source tree?)")
    for pyx in sources:
        name = pyx.stem
        # _cpu always: import snnfast needs it to check the CPU against the recorded features
        if only and name not in only and name not in PORTABLE_EXTENSIONS:
            continue
        portable = name in PORTABLE_EXTENSIONS
        exts.append(Extension(
            f"snnfast.{name}",
            sources=[str(pyx.relative_to(HERE))],
            include_dirs=[np.get_include(), "ext"],
            depends=headers,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=_portable_flags(CFLAGS) if portable else CFLAGS,
            extra_link_args=_portable_flags(LDFLAGS) if portable else LDFLAGS,
        ))
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": False,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "nonecheck": False,
        "embedsignature": True,
    }
    # SNNFAST_OPENMP stays defined for Cython code that still tests it; C code uses _OPENMP
    return cythonize(exts, compiler_directives=directives,
                     compile_time_env={"SNNFAST_OPENMP": OPENMP},
                     include_path=["ext"])


class BuildExt(build_ext):
    """build_ext that also writes ``snnfast/_build_info.py`` next to the extensions it builds:
    into the build directory (which wheels and ``pip install .`` package; build_py has already
    copied the Python files there) and, for in-place and editable builds, into the source tree."""

    def run(self):
        _write_build_info(Path(self.build_lib) / "snnfast")
        if self.inplace or self.editable_mode:
            _write_build_info(HERE / "snnfast")
        super().run()


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
