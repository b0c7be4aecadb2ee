"""Build script for snnfast's Cython/OpenMP extensions.

Every ``ext/<name>.pyx`` is compiled into the module ``snnfast.<name>``; the C kernels live in
``ext/*.h`` and the ``.pyx`` files are only their Python bindings.

OpenMP is detected by compiling and linking (never running) a small program, so that a cross
compiler works: first ``-fopenmp`` (GCC, LLVM clang), then ``-Xpreprocessor -fopenmp -lomp``
(Apple clang with Homebrew's libomp: add its ``-I``/``-L`` paths through CPPFLAGS/LDFLAGS).
Without OpenMP the build continues serially with a loud warning.

The default build is portable and keeps the speed of a ``-march=native`` build: on x86-64,
every module is compiled for the x86-64-v2 baseline under its own name (``snnfast/_engine*.so``)
and every kernel module again for each level of ``X86_LEVELS`` above it
(``snnfast/_isa/v3/_engine*.so``: AVX2 + FMA; ``snnfast/_isa/v4/...``: AVX-512). At run time
``snnfast._dispatch`` loads the best variant the CPU (and its operating system) supports under
the canonical module name. All variants are compiled from the same C file with
``-ffp-contract=off``, so they compute bit-identical results. On other architectures (aarch64)
the build uses the compiler's default target and has no variants.

The instruction-set features each build targets are recorded in ``snnfast/_build_info.py``;
``import snnfast`` refuses (ImportError) a baseline this CPU cannot run instead of crashing with
an illegal instruction.

Environment variables
---------------------
SNNFAST_NATIVE=1     one build for this machine's CPU (``-march=native``), no variants: for
                     local experiments; the package then runs only on CPUs like this one.
SNNFAST_NO_OPENMP=1  build without OpenMP on purpose.
SNNFAST_DEBUG=1      keep Cython bounds checks and build with ``-O0 -g`` (baseline only).
SNNFAST_BUILD_ONLY   comma-separated extension names to build (developer shortcut).
SNNFAST_BUILD_JOBS   parallel compiler jobs (default: the CPU count; ``build_ext -j N`` wins).
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
# by `import snnfast` to check the CPU and choose the kernels' variant before any is loaded.
PORTABLE_EXTENSIONS = {"_cpu"}

# Extensions compiled once, for the baseline only: no hot loops. Every other ext/*.pyx is a
# kernel module and gets one variant per level of X86_LEVELS (a new kernel is dispatched too).
BASELINE_ONLY = ["_cpu", "_openmp_helpers"]

# x86-64 micro-architecture levels: (flags, the same for compilers without -march=x86-64-vN,
# i.e. GCC < 11 and clang < 12). The first is the baseline every module is built for; the
# others are the dispatched variants (snnfast._dispatch picks one at import). v4 is the
# AVX-512 subset of Skylake-SP and later (Intel) and Zen 4 and later (AMD).
X86_LEVELS = {
    "v2": (["-march=x86-64-v2"],
           ["-msse3", "-mssse3", "-msse4.1", "-msse4.2", "-mpopcnt", "-mcx16", "-msahf"]),
    "v3": (["-march=x86-64-v3"],
           ["-msse3", "-mssse3", "-msse4.1", "-msse4.2", "-mpopcnt", "-mcx16", "-msahf",
            "-mavx", "-mavx2", "-mbmi", "-mbmi2", "-mf16c", "-mfma", "-mlzcnt", "-mmovbe",
            "-mxsave"]),
    "v4": (["-march=x86-64-v4"],
           ["-msse3", "-mssse3", "-msse4.1", "-msse4.2", "-mpopcnt", "-mcx16", "-msahf",
            "-mavx", "-mavx2", "-mbmi", "-mbmi2", "-mf16c", "-mfma", "-mlzcnt", "-mmovbe",
            "-mxsave", "-mavx512f", "-mavx512bw", "-mavx512cd", "-mavx512dq", "-mavx512vl"]),
}

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


def _predefined_macros(cflags):
    """The macros the compiler predefines with ``cflags`` (empty if it cannot list them)."""
    try:
        out = subprocess.run(_compiler() + list(cflags) + ["-dM", "-E", "-x", "c", os.devnull],
                             check=True, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(re.findall(r"^#define (\w+)", out, re.M))


def _target_isa(cflags):
    """Sorted x86 feature names the compiler enables with ``cflags`` ([] elsewhere or if the
    compiler cannot list its predefined macros)."""
    macros = _predefined_macros(cflags)
    return sorted({name for macro, name in ISA_MACROS.items() if macro in macros})


def _level_flags():
    """Level -> compile flags of X86_LEVELS for this compiler, or {} if it does not target
    x86-64 (aarch64, ...: the compiler's default target, no variants). Asked of the compiler
    (its predefined macros), not of this machine, so that cross compiling works."""
    if "__x86_64__" not in _predefined_macros([]):
        return {}
    levels = {}
    for level, (march, explicit) in X86_LEVELS.items():
        if _compiles(march, link=False):
            levels[level] = march
        elif _compiles(explicit, link=False):
            levels[level] = explicit
        elif level == next(iter(X86_LEVELS)):
            sys.exit(f"setup.py: the compiler accepts neither {' '.join(march)} nor "
                     f"{' '.join(explicit)} (x86-64-v2, the baseline of the default build)")
        else:
            print(f"setup.py: no x86-64-{level} variant: the compiler accepts neither "
                  f"{' '.join(march)} nor {' '.join(explicit)}", file=sys.stderr)
    return levels


def _warn_no_openmp(reason):
    bar = "*" * 78
    msg = (f"\n{bar}\n*  WARNING: snnfast is being built WITHOUT OpenMP ({reason}).\n"
           "*  Every kernel will run on ONE thread. Install an OpenMP-capable compiler\n"
           "*  (gcc, or clang with libomp) and rebuild for parallel speed.\n"
           f"{bar}\n")
    print(msg, file=sys.stderr)


def _note_old_variables():
    if "SNNFAST_PORTABLE" in os.environ:
        # the variable of earlier versions: what it asked for is now the default
        print("setup.py: SNNFAST_PORTABLE is no longer read: the default build is portable "
              "(SNNFAST_NATIVE=1 builds for this CPU only)", file=sys.stderr)


def _isa_options(debug):
    """(mode, baseline level, its target flags, level -> variant target flags) of this build.

    Mode "dispatch": x86-64, the baseline level (v2) plus the variants; "native":
    SNNFAST_NATIVE=1, one -march=native build; "baseline": a debug build (x86-64-v2 only) or
    another architecture (level "default": the compiler's default target)."""
    _note_old_variables()
    if _env_flag("SNNFAST_NATIVE"):
        if not _compiles(["-march=native"]):
            sys.exit("setup.py: SNNFAST_NATIVE=1 but the compiler does not accept -march=native")
        return "native", "native", ["-march=native"], {}
    levels = _level_flags()
    if not levels:
        return "baseline", "default", [], {}
    (base, base_flags), *variants = levels.items()
    if debug:
        return "baseline", base, base_flags, {}
    return "dispatch", base, base_flags, dict(variants)


def _build_options():
    debug = _env_flag("SNNFAST_DEBUG")
    cflags = ["-O0", "-g"] if debug else ["-O3", "-ffp-contract=off"]
    mode, level, target, variants = _isa_options(debug)
    if target and _compiles(["-Werror", "-Wno-psabi"], link=False):
        # GCC warns that 32-byte vector arguments change the ABI without AVX (the baseline):
        # they only pass between static inline functions of one file, never across the ABI
        cflags.append("-Wno-psabi")
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
    # the target flags last: a variant replaces them (VARIANT_CFLAGS)
    return cflags + target, ldflags, openmp, debug, mode, level, target, variants


def _without(flags, drop):
    """``flags`` without the flags in ``drop``."""
    drop = set(drop)
    return [f for f in flags if f not in drop]


CFLAGS, LDFLAGS, OPENMP, DEBUG, MODE, LEVEL, TARGET, VARIANT_TARGETS = _build_options()
ISA = _target_isa(CFLAGS)
# level -> the compile flags of its variant and the x86 features they let its code use (the
# run-time choice compares them with the CPU's)
VARIANT_CFLAGS = {level: _without(CFLAGS, TARGET) + target
                  for level, target in VARIANT_TARGETS.items()}
VARIANTS = {level: _target_isa(flags) for level, flags in VARIANT_CFLAGS.items()}


def _portable_flags(flags):
    """``flags`` without the target and the OpenMP flags (for PORTABLE_EXTENSIONS)."""
    return _without(flags, TARGET + [f for c, l in OMP_CANDIDATES for f in c + l])


def _build_info_text():
    return ("# Generated by setup.py at build time; not under version control.\n"
            f"OPENMP = {OPENMP!r}\nCFLAGS = {CFLAGS!r}\nLDFLAGS = {LDFLAGS!r}\n"
            f"DEBUG = {DEBUG!r}\nCOMPILER = {' '.join(_compiler())!r}\n"
            "# x86 features the baseline modules were compiled for; import snnfast checks the\n"
            "# CPU has them\n"
            f"ISA = {ISA!r}\n"
            "# dispatch (baseline + variants), native (SNNFAST_NATIVE=1) or baseline (none)\n"
            f"MODE = {MODE!r}\n"
            "# the baseline's level: v2 (x86-64-v2), native or default (the compiler's target)\n"
            f"LEVEL = {LEVEL!r}\n"
            "# level -> compile flags and x86 features of the kernel variants (snnfast/_isa)\n"
            f"VARIANT_CFLAGS = {VARIANT_CFLAGS!r}\nVARIANTS = {VARIANTS!r}\n")


def _write_build_info(package_dir):
    """Write ``_build_info.py`` into ``package_dir`` atomically (temp file + rename)."""
    _write_if_changed(Path(package_dir) / "_build_info.py", _build_info_text())


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
    exts = cythonize(exts, compiler_directives=directives,
                     compile_time_env={"SNNFAST_OPENMP": OPENMP},
                     include_path=["ext"])
    return exts + [v for ext in exts if ext.name.split(".")[-1] not in BASELINE_ONLY
                   for v in _variants(ext)]


# The variants' C sources: one file per (level, module) that includes Cython's C file, so that
# each variant is compiled from the same code into its own object file (build_ext names the
# object after the source file).
VARIANT_SOURCES = HERE / "build" / "isa-src"


def _variants(ext):
    """One Extension per level of VARIANT_CFLAGS for the cythonized kernel module ``ext``:
    ``snnfast._isa.<level>.<name>``, from the same C file with that level's flags. Its
    PyInit function keeps the module's name, so snnfast._dispatch can load it as ``ext.name``."""
    (c_file,) = ext.sources
    name = ext.name.split(".")[-1]
    out = []
    for level, cflags in VARIANT_CFLAGS.items():
        wrapper = VARIANT_SOURCES / level / f"{name}.c"
        rel = os.path.relpath(HERE / c_file, wrapper.parent)
        _write_if_changed(wrapper, f'/* snnfast.{name} for x86-64-{level} (setup.py) */\n'
                                   f'#include "{Path(rel).as_posix()}"\n')
        out.append(Extension(
            f"snnfast._isa.{level}.{name}", sources=[str(wrapper.relative_to(HERE))],
            include_dirs=ext.include_dirs, depends=ext.depends + [c_file],
            define_macros=ext.define_macros, extra_compile_args=cflags,
            extra_link_args=ext.extra_link_args))
    return out


def _write_if_changed(path, text):
    """Write ``text`` to ``path`` atomically unless it holds it already (an unchanged mtime
    keeps build_ext from recompiling an up-to-date variant)."""
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class BuildExt(build_ext):
    """build_ext that also writes ``snnfast/_build_info.py`` next to the extensions it builds:
    into the build directory (which wheels and ``pip install .`` package; build_py has already
    copied the Python files there) and, for in-place and editable builds, into the source tree."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:         # build_ext -j N (or --parallel) wins
            jobs = os.environ.get("SNNFAST_BUILD_JOBS", "").strip()
            if jobs and not (jobs.isdigit() and int(jobs) > 0):
                sys.exit(f"setup.py: SNNFAST_BUILD_JOBS={jobs!r} is not a positive integer")
            # the variants triple the compiler runs: use the cores (wheels, pip install)
            self.parallel = int(jobs) if jobs else (os.cpu_count() or 1)

    def run(self):
        dirs = [Path(self.build_lib) / "snnfast"]
        if self.inplace or self.editable_mode:
            dirs.append(HERE / "snnfast")
        text = _build_info_text()
        for d in dirs:
            info = d / "_build_info.py"
            if info.exists() and info.read_text() != text:
                # other flags (e.g. SNNFAST_NATIVE=1 before): build_ext would keep every module
                # that is newer than its sources, compiled with the old flags
                self.force = True
            _write_build_info(d)
        super().run()

    def copy_extensions_to_source(self):
        # in-place and editable builds: the variants' folders (snnfast/_isa/<level>) are not
        # packages, so nothing else creates them
        for ext in self.extensions:
            (HERE / Path(*ext.name.split(".")[:-1])).mkdir(parents=True, exist_ok=True)
        super().copy_extensions_to_source()


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
