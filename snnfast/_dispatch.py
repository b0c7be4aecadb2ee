"""Run-time choice of the kernels' instruction-set variant (private).

The default build compiles every kernel module (``snnfast._engine``, ``snnfast._convsnn_fc``,
...) for the x86-64-v2 baseline under its own name, and again for x86-64-v3 (AVX2, FMA) and
x86-64-v4 (AVX-512) into ``snnfast/_isa/v3/`` and ``snnfast/_isa/v4/`` (see setup.py).
:func:`install`, called by ``import snnfast`` before any kernel is loaded, picks the highest
level whose features the CPU has and whose register states the operating system saves, and
puts a finder first on ``sys.meta_path`` that loads that level's file under the canonical
name. Every ``from snnfast import _engine`` then gets the chosen variant without knowing about
it; modules without a variant (and the baseline level) load the ordinary way.

``SNNFAST_ISA=v2|v3|v4`` forces a level (for tests and benchmarks), ``auto`` or unset picks
the best. A forced level this CPU cannot run, or that the build does not have, is an
ImportError with a one-line reason rather than an illegal instruction later.
"""
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

ENV = "SNNFAST_ISA"
PACKAGE_DIR = Path(__file__).resolve().parent
VARIANT_DIR = PACKAGE_DIR / "_isa"

# XCR0 bits the operating system must set for a level's registers to survive a context switch:
# SSE + AVX (YMM) for v3; also the AVX-512 opmask and ZMM states for v4
XCR0_NEEDED = {"v3": 0x6, "v4": 0xE6}

_state = {}


def usable(features, xcr0_needed, supports, xcr0):
    """True if the CPU has every one of ``features`` (``supports(name)``: 1 has, 0 lacks, -1
    cannot tell) and the OS saves the ``xcr0_needed`` states (``xcr0`` -1: cannot tell)."""
    from ._config import missing_cpu_features
    if missing_cpu_features(features, supports):
        return False
    return xcr0 < 0 or (xcr0 & xcr0_needed) == xcr0_needed


def choose(build_info, request, supports, xcr0):
    """The level to load: ``build_info.LEVEL`` (the baseline) or a key of its ``VARIANTS``.

    Parameters
    ----------
    build_info : module or object
        ``snnfast._build_info`` (``MODE``, ``LEVEL``, ``VARIANTS``: level -> features), or None
        for a source tree that was never built.
    request : str
        The value of ``SNNFAST_ISA``: ``""`` or ``"auto"`` for the best usable level, else a
        level name.
    supports, xcr0
        ``snnfast._cpu.cpu_supports`` and the OS's XCR0 (``snnfast._cpu.os_xsave_state()``).

    Raises
    ------
    ImportError
        For an unknown request, a level the build does not have, or one the CPU cannot run.
    """
    base = getattr(build_info, "LEVEL", "default")
    dispatch = getattr(build_info, "MODE", "") == "dispatch"
    variants = getattr(build_info, "VARIANTS", {}) if dispatch else {}
    req = request.strip().lower() or "auto"
    known = ["auto", "v2", *XCR0_NEEDED]
    if req not in known:
        raise ImportError(f"{ENV}={request!r} is not one of {', '.join(known)}")
    if req == "auto":
        runs = [lvl for lvl, feats in variants.items()
                if usable(feats, XCR0_NEEDED.get(lvl, 0), supports, xcr0)]
        return runs[-1] if runs else base
    if req == base:
        return base
    if req not in variants:
        raise ImportError(f"{ENV}={req}: this build of snnfast has no {req} kernels (its kernels "
                          f"are {base!r} only: built with SNNFAST_NATIVE=1, SNNFAST_DEBUG=1 or "
                          "not for x86-64); unset it or rebuild with the default flags")
    if not usable(variants[req], XCR0_NEEDED.get(req, 0), supports, xcr0):
        raise ImportError(f"{ENV}={req}: this CPU (or its operating system) cannot run the "
                          f"x86-64-{req} kernels; unset {ENV} to let snnfast choose")
    return req


def extension_files(folder):
    """Module name (``"_engine"``) -> the extension file in ``folder`` this interpreter loads
    (its ABI's suffix, e.g. ``.cpython-311-x86_64-linux-gnu.so``, preferred as import does)."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    found = {}
    for f in sorted(Path(folder).glob("*")):
        name, dot, rest = f.name.partition(".")
        if dot and f".{rest}" in suffixes:
            rank = suffixes.index(f".{rest}")
            if name not in found or rank < found[name][0]:
                found[name] = (rank, str(f))
    return {name: file for name, (_, file) in found.items()}


def variant_files(level):
    """Canonical module name -> file of the ``level`` variant."""
    return {f"{__package__}.{name}": file
            for name, file in extension_files(VARIANT_DIR / level).items()}


class _VariantFinder:
    """Meta-path finder that loads the chosen variant's file under the canonical name."""

    def __init__(self, files):
        self.files = files

    def find_spec(self, fullname, path=None, target=None):
        file = self.files.get(fullname)
        if file is None:
            return None               # not a dispatched module: the ordinary import
        loader = importlib.machinery.ExtensionFileLoader(fullname, file)
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def install(build_info):
    """Choose the level (see :func:`choose`) and install the finder of its files.

    Called once by ``import snnfast``, before any kernel module is imported; a module imported
    earlier would keep its variant, so a second call changes nothing once kernels are loaded.
    """
    from ._cpu import cpu_supports, os_xsave_state
    level = choose(build_info, os.environ.get(ENV, ""), cpu_supports, os_xsave_state())
    files = {} if level == getattr(build_info, "LEVEL", "default") else variant_files(level)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _VariantFinder)]
    if files:
        sys.meta_path.insert(0, _VariantFinder(files))
    _state.update(level=level, files=files, request=os.environ.get(ENV, ""))
    return level


def chosen_level():
    """The level :func:`install` chose (None before ``import snnfast`` ran it)."""
    return _state.get("level")


def module_levels():
    """Compiled module name (e.g. ``"_engine"``) -> the level it runs (or will run) at.

    A module already imported reports the file it was loaded from, so a module imported before
    :func:`install` (or bypassing it) cannot hide behind the choice.
    """
    out = extension_files(PACKAGE_DIR)
    out.pop("_cpu", None)       # the checker itself: built for any CPU of the architecture
    from ._config import _build_info
    base = getattr(_build_info(), "LEVEL", "default")
    files = _state.get("files", {})
    for name in out:
        full = f"{__package__}.{name}"
        mod = sys.modules.get(full)
        file = getattr(mod, "__file__", None) if mod is not None else files.get(full)
        in_variant = file is not None and Path(file).resolve().parent.parent == VARIANT_DIR
        out[name] = Path(file).resolve().parent.name if in_variant else base
    return dict(sorted(out.items()))
