"""snnfast: fast, exact and honest spiking neural networks on the CPU."""
__version__ = "0.1.0"

from ._config import effective_n_threads, openmp_enabled, show_config  # noqa: E402

__all__ = ["__version__", "effective_n_threads", "openmp_enabled", "show_config", "ConvSNN"]


def __getattr__(name):
    # Heavy modules are imported on first use so that `import snnfast` stays fast.
    if name == "ConvSNN":
        from .convsnn import ConvSNN
        return ConvSNN
    raise AttributeError(f"module 'snnfast' has no attribute {name!r}")
