"""snnfast: fast, exact and honest spiking neural networks on the CPU."""
from ._version import __version__
from ._config import check_cpu as _check_cpu, effective_n_threads, openmp_enabled, show_config

# Before any kernel is loaded: a build made for a newer CPU (-march=native elsewhere) must fail
# here with a clear ImportError, not later with an illegal instruction.
_check_cpu()

__all__ = ["__version__", "effective_n_threads", "openmp_enabled", "show_config", "ConvSNN",
           "SNN"]


def __getattr__(name):
    # Heavy modules are imported on first use so that `import snnfast` stays fast.
    if name == "ConvSNN":
        from .convsnn import ConvSNN
        return ConvSNN
    if name == "SNN":
        from .train.trainer import SNN
        return SNN
    raise AttributeError(f"module 'snnfast' has no attribute {name!r}")
