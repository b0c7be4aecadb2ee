"""snnfast: fast, exact and honest spiking neural networks on the CPU."""
import os as _os

# How GNU OpenMP's idle workers wait for the next parallel region. Asleep (PASSIVE), each
# region must wake them first: 20-200 us on the project's 2-core VMs, several times per
# training step, which cost 13-16 % of training speed. Spinning for ever (ACTIVE) would take a
# core from whatever runs after the kernels (the NumPy baseline's BLAS threads, for one).
# 100 000 spins (~3 ms here) bridge the Python between two kernels of a step; then the workers
# sleep. KMP_BLOCKTIME is the same for LLVM's OpenMP (clang builds; its default is 200 ms).
# Must be set before the first kernel loads the OpenMP runtime; a user setting wins.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "100000")
    _os.environ.setdefault("KMP_BLOCKTIME", "3")

__version__ = "0.1.0"

from ._config import effective_n_threads, openmp_enabled, show_config  # noqa: E402

__all__ = ["__version__", "effective_n_threads", "openmp_enabled", "show_config", "ConvSNN"]


def __getattr__(name):
    # Heavy modules are imported on first use so that `import snnfast` stays fast.
    if name == "ConvSNN":
        from .convsnn import ConvSNN
        return ConvSNN
    raise AttributeError(f"module 'snnfast' has no attribute {name!r}")
