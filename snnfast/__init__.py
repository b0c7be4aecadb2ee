"""snnfast: fast, exact and honest spiking neural networks on the CPU."""
import os as _os

# Between OpenMP regions, GNU OpenMP's workers spin for a while by default. In snnfast a
# kernel is followed by BLAS calls on their own threads, and spinning workers would steal
# the cores they need (measured: 2-thread training 2 100 -> 3 000 img/s with passive waiting).
# Must be set before the first kernel loads libgomp; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from ._config import effective_n_threads, openmp_enabled, show_config  # noqa: E402

__all__ = ["__version__", "effective_n_threads", "openmp_enabled", "show_config", "ConvSNN"]


def __getattr__(name):
    # Heavy modules are imported on first use so that `import snnfast` stays fast.
    if name == "ConvSNN":
        from .convsnn import ConvSNN
        return ConvSNN
    raise AttributeError(f"module 'snnfast' has no attribute {name!r}")
