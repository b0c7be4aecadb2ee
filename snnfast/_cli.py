"""argparse value types shared by the command-line tools (clear messages, exit code 2)."""
import argparse
import math
import os
from pathlib import Path

__all__ = ["int_at_least", "positive_int", "nonneg_int", "positive_float",
           "output_file_error", "run_dir_error", "same_file", "openmp_wait_defaults"]


def int_at_least(low):
    """An argparse ``type`` accepting integers >= ``low``."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def positive_float(text):
    """An argparse ``type`` accepting finite numbers > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def same_file(a, b):
    """True if ``a`` and ``b`` name one existing file (other spellings, symlinks, hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:         # either does not exist (yet)
        return False


def output_file_error(path, inputs=()):
    """Why ``path`` cannot be written as an output file, or None if it can.

    Checked before a tool does its work, so that a typo costs nothing: ``path`` must not be a
    directory nor one of the ``inputs`` (a model passed twice would be replaced by the
    output), and its directory must exist or be creatable (it is created here) and writable.
    """
    p = Path(path)
    if p.is_dir():
        return f"{path} is a directory"
    for src in inputs:
        if same_file(p, src):
            return f"{path} is the input file {src}: writing it would destroy the input"
    return run_dir_error(p.parent)


def run_dir_error(path):
    """Create the directory ``path`` (with its parents) if needed; None if it is then a
    writable directory, else the reason it is not."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        return f"{path} exists and is not a directory"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the directory {path}: {exc.strerror or exc}"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"cannot write into the directory {path}"
    return None


def openmp_wait_defaults():
    """Let idle OpenMP workers spin ~3 ms before sleeping, unless the user chose a policy.

    Called by the command-line tools and benchmarks before their first kernel loads the OpenMP
    runtime (which reads these variables once, when it loads); never by ``import snnfast``, so
    a library user's process and its children keep their environment. Asleep (PASSIVE), the
    workers must be woken at every parallel region: 20-200 us on 2-core VMs, several times per
    training step, which cost 13-16 % of training speed. Spinning for ever (ACTIVE) would take
    a core from whatever runs between the kernels (NumPy's BLAS threads, for one). 100 000
    spins (~3 ms) bridge the Python between two kernels of a step, then the workers sleep.
    ``KMP_BLOCKTIME`` is the same for LLVM's OpenMP (clang builds; its default is 200 ms).
    Library users can set the same variables themselves (see the performance documentation).
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "100000")
        os.environ.setdefault("KMP_BLOCKTIME", "3")
