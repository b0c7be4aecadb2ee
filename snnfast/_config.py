"""Thread count rule, build facts and ``show_config``."""
import os
import platform
import sys
from functools import lru_cache

__all__ = ["effective_n_threads", "max_n_threads", "openmp_enabled", "show_config",
           "config_dict", "check_cpu", "missing_cpu_features"]


def openmp_enabled():
    """Return True if snnfast's kernels were compiled with OpenMP."""
    from . import _openmp_helpers
    return bool(_openmp_helpers.openmp_enabled())


def _build_info():
    """The module setup.py writes at build time, or None (a source tree that was never built)."""
    try:
        from . import _build_info as bi
    except ImportError:
        return None
    return bi


def missing_cpu_features(targeted, supports):
    """The features of ``targeted`` that the CPU lacks, by ``supports(name)`` (1 has, 0 lacks,
    -1 cannot tell: not counted as missing)."""
    return [name for name in targeted if supports(name) == 0]


def check_cpu():
    """Refuse a build this CPU cannot run, then choose the kernels' variant.

    ``setup.py`` records the x86 features the compiler enabled for the baseline modules
    (``_build_info.ISA``: x86-64-v2 in a default build, this machine's in a ``SNNFAST_NATIVE=1``
    build); they are compared here with what the CPU reports, through an extension built for
    any CPU of the architecture. Then :func:`snnfast._dispatch.install` picks the best kernel
    variant the CPU runs (``SNNFAST_ISA`` forces one).

    Raises
    ------
    ImportError
        If the CPU lacks a feature of the baseline (the kernels would stop the process with an
        illegal instruction), or ``SNNFAST_ISA`` asks for a variant that cannot run.
    """
    bi = _build_info()
    if bi is None:
        return                  # a source tree that was never built: no kernels to check
    from ._cpu import cpu_supports
    missing = missing_cpu_features(getattr(bi, "ISA", []), cpu_supports)
    if missing:
        raise ImportError(_missing_message(missing, getattr(bi, "LEVEL", "native")))
    from ._dispatch import install
    install(bi)


def _missing_message(missing, level):
    """The ImportError text for a baseline needing the CPU features ``missing``."""
    head = f"snnfast was compiled for CPU features this CPU lacks ({', '.join(missing)}): "
    if level == "native":
        return (head + "it was built with SNNFAST_NATIVE=1 (-march=native) on another "
                "machine. Reinstall it without SNNFAST_NATIVE (pip install snnfast)")
    return (head + f"its baseline is x86-64-{level}. On an older CPU, build it from source "
            "for this machine: SNNFAST_NATIVE=1 pip install --no-binary snnfast snnfast")


def _cpus_available():
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, n)


# Upper bound on a thread count. libgomp starts every requested thread, each with its own
# stack, and never reports a failure: n_threads=100000 crashed the process (Linux's default
# pid_max is 32768 threads), and values >= 2**31 do not fit the kernels' C int. More threads
# than cores never helps (results are the same for any count), so anything beyond a few per
# core is a typo. 1024 keeps every count a small machine could want (8x oversubscription of
# 128 cores), and 4 per available core keeps the rule meaningful on bigger machines.
MAX_THREADS_FLOOR = 1024
THREADS_PER_CPU_LIMIT = 4


def max_n_threads(cpus=None):
    """The largest thread count :func:`effective_n_threads` accepts.

    ``max(1024, 4 * available cores)``; see ``MAX_THREADS_FLOOR`` for why. ``cpus`` is the
    number of available cores if the caller has it already (default: asked for here).
    """
    cpus = _cpus_available() if cpus is None else cpus
    return max(MAX_THREADS_FLOOR, THREADS_PER_CPU_LIMIT * cpus)


@lru_cache(maxsize=1)
def _omp_thread_limit():
    # OMP_THREAD_LIMIT, read once by the OpenMP runtime when it loads (INT_MAX if unset)
    from . import _openmp_helpers
    return int(_openmp_helpers.omp_thread_limit())


def _check_limit(n, what, cpus):
    limit = max_n_threads(cpus)
    if n > limit:
        raise ValueError(f"{what} exceeds the limit of {limit} threads "
                         f"({THREADS_PER_CPU_LIMIT} per available core, at least "
                         f"{MAX_THREADS_FLOOR}; this process has {cpus} cores)")
    return n


def _env_threads(name, cpus):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        # OMP_NUM_THREADS may be a list ("4,2") for nested regions: the first level counts
        value = int(raw.split(",")[0])
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{name}={raw!r} must be >= 1")
    return _check_limit(value, f"{name}={raw!r}", cpus)


def effective_n_threads(n_threads=None):
    """Number of threads a kernel will use.

    Parameters
    ----------
    n_threads : int or None
        Explicit request. ``None`` means: ``SNNFAST_NUM_THREADS`` if set, else
        ``OMP_NUM_THREADS`` if set, else the cores available to this process.
        Negative values count back from the available cores joblib-style
        (-1 = all, -2 = all but one). 0 is an error.

    Returns
    -------
    int
        At least 1; always 1 when the kernels were built without OpenMP. At most
        ``OMP_THREAD_LIMIT`` if that is set (OpenMP would not start more threads anyway).

    Raises
    ------
    ValueError
        For 0, an invalid environment variable, or a count above :func:`max_n_threads`
        (``max(1024, 4 * available cores)``), explicit or from the environment.
    TypeError
        If ``n_threads`` is not an integer.
    """
    cpus = _cpus_available()
    if n_threads is None:
        n = (_env_threads("SNNFAST_NUM_THREADS", cpus) or _env_threads("OMP_NUM_THREADS", cpus)
             or cpus)
    else:
        if isinstance(n_threads, bool) or not isinstance(n_threads, (int,)) and not hasattr(n_threads, "__index__"):
            raise TypeError(f"n_threads must be an int or None, got {n_threads!r}")
        n_threads = int(n_threads)
        if n_threads == 0:
            raise ValueError("n_threads=0 is not allowed; use None for the default")
        n = n_threads if n_threads > 0 else max(1, cpus + 1 + n_threads)
        _check_limit(n, f"n_threads={n_threads}", cpus)
    if not openmp_enabled():
        return 1
    return min(int(n), _omp_thread_limit())


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - a declared dependency
        return []
    out = []
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            out.append({k: pool.get(k) for k in ("internal_api", "version", "num_threads",
                                                   "architecture", "filepath")})
    return out


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _simd_level():
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((l.split(":", 1)[1].split() for l in fh if l.startswith("flags")), [])
    except OSError:
        return "unknown"
    for name in ("avx512f", "avx2", "avx", "sse4_2"):
        if name in flags:
            return name
    return "baseline"


def _threads_or_error():
    """``(effective_n_threads(), None)``, or ``(None, message)`` for a bad environment variable:
    the diagnostic report must still appear when the setting it should diagnose is wrong."""
    try:
        return effective_n_threads(), None
    except ValueError as exc:
        return None, str(exc)


def config_dict():
    """Facts about this installation as a dict (used by benchmarks and show_config).

    ``effective_n_threads`` is None and ``threads_error`` says why when
    ``SNNFAST_NUM_THREADS`` or ``OMP_NUM_THREADS`` is invalid (else ``threads_error`` is None).
    """
    from . import __version__
    bi = _build_info()
    if bi is not None:
        build = {"openmp": bi.OPENMP, "cflags": bi.CFLAGS, "ldflags": bi.LDFLAGS,
                 "compiler": bi.COMPILER, "isa": getattr(bi, "ISA", None),
                 "mode": getattr(bi, "MODE", None), "level": getattr(bi, "LEVEL", None),
                 "variants": getattr(bi, "VARIANT_CFLAGS", {})}
    else:
        build = {"openmp": None, "cflags": None, "ldflags": None, "compiler": None, "isa": None,
                 "mode": None, "level": None, "variants": {}}
    from . import _dispatch
    import numpy as np
    threads, threads_error = _threads_or_error()
    return {
        "snnfast": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "simd": _simd_level(),
        "cpus_available": _cpus_available(),
        "openmp": openmp_enabled(),
        "effective_n_threads": threads,
        "threads_error": threads_error,
        "omp_wait": " ".join(f"{k}={os.environ.get(k, '(unset)')}"
                             for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")),
        "build": build,
        # the kernel variant chosen at import (snnfast._dispatch) and each module's
        "kernels": {"level": _dispatch.chosen_level(), "request": os.environ.get(_dispatch.ENV),
                    "modules": _dispatch.module_levels() if bi is not None else {}},
        "blas": _blas_info(),
    }


def show_config(file=None):
    """Print the version, OpenMP status, thread count, BLAS and build flags.

    An invalid thread variable is shown on the "effective threads" line, not raised.
    """
    print(format_config(config_dict()), file=file or sys.stdout)


def _kernels_line(build, kernels):
    """The chosen variant and why, for :func:`format_config`."""
    mode, level = build.get("mode"), kernels["level"]
    if mode == "dispatch":
        levels = " ".join([build["level"], *build["variants"]])
        how = (f"forced by SNNFAST_ISA={kernels['request']}"
               if (kernels["request"] or "auto").strip().lower() != "auto"
               else "the best this CPU runs")
        return f"{level} (of {levels}: {how})"
    if mode == "native":
        return "native (one -march=native build: SNNFAST_NATIVE=1)"
    if mode == "baseline":
        return f"{level} (no variants: a debug build or not x86-64)"
    return "unknown (an older build without variants)"


def _modules_line(modules):
    """``level: module module ...; level: ...`` for :func:`format_config`."""
    by_level = {}
    for name, level in modules.items():
        by_level.setdefault(level, []).append(name)
    return "; ".join(f"{level}: {' '.join(names)}" for level, names in by_level.items()) or "-"


def format_config(c):
    """The report of :func:`show_config` for the :func:`config_dict` ``c``."""
    threads = c["effective_n_threads"]
    if c["threads_error"]:
        threads = f"INVALID: {c['threads_error']}"
    lines = [
        f"snnfast {c['snnfast']} (Python {c['python']}, NumPy {c['numpy']})",
        f"platform:            {c['platform']}",
        f"cpu:                 {c['cpu']} [{c['simd']}], {c['cpus_available']} available",
        f"OpenMP:              {'enabled' if c['openmp'] else 'DISABLED (serial build)'}",
        f"effective threads:   {threads}",
        f"OpenMP waiting:      {c['omp_wait']}",
        f"compiler:            {c['build']['compiler']}",
        f"compile flags:       {' '.join(c['build']['cflags'] or [])}",
        f"built for CPU with:  {' '.join(c['build']['isa'] or []) or '(baseline)'}",
        f"kernel variant:      {_kernels_line(c['build'], c['kernels'])}",
        f"modules:             {_modules_line(c['kernels']['modules'])}",
    ]
    for b in c["blas"] or [{"internal_api": "none found"}]:
        lines.append(f"BLAS:                {b.get('internal_api')} {b.get('version') or ''} "
                     f"({b.get('num_threads')} threads, {b.get('architecture')})")
    return "\n".join(lines)
