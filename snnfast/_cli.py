"""What the command-line tools share: argparse value types (clear messages, exit code 2),
checks of output locations made before the work, and Ctrl-C/SIGTERM handling."""
import argparse
import contextlib
import functools
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ._utils import special_file_kind

__all__ = ["int_at_least", "positive_int", "nonneg_int", "positive_float",
           "output_file_error", "check_output_arg", "check_out_dir_arg", "run_dir_error",
           "same_file", "make_out_dir",
           "remove_if_empty", "interrupt_exit_code", "ignore_interrupts",
           "exits_cleanly_on_interrupt", "terminate_as_interrupt", "run_program",
           "openmp_wait_defaults", "install_stop_handlers", "restore_handlers"]


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
    directory, a special file or a symbolic link (see :func:`snnfast._utils.check_output_path`)
    nor one of the ``inputs`` (a model passed twice would be replaced by the output), and
    its directory must exist or be creatable (it is created here) and writable.
    """
    p = Path(path)
    for src in inputs:
        if same_file(p, src):
            return f"{path} is the input file {src}: writing it would destroy the input"
    kind = special_file_kind(p)
    if kind is not None:
        return f"{path} exists and is {kind}: give the name of a new or regular file"
    return run_dir_error(p.parent)


def check_output_arg(parser, flag, path, inputs=()):
    """``parser.error`` (exit status 2) naming ``flag`` unless ``path`` can be written as an
    output file (:func:`output_file_error`); nothing for ``path=None`` (option not given)."""
    if path is None:
        return
    err = output_file_error(path, inputs)
    if err:
        parser.error(f"{flag}: {err}")


def check_out_dir_arg(parser, flag, path, names=()):
    """``parser.error`` naming ``flag`` unless ``path`` is (or can be made) a writable
    directory in which the files ``names`` are absent or regular files."""
    err = run_dir_error(path) or next(
        (f"{Path(path) / n} is {k}: outputs are written as regular files"
         for n in names if (k := special_file_kind(Path(path) / n))), None)
    if err:
        parser.error(f"{flag}: {err}")


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
    # a real file creation, not os.access: root passes access() for /proc and read-only mounts
    try:
        with tempfile.TemporaryFile(dir=p, prefix=".snnfast-probe-"):
            pass
    except OSError as exc:
        return f"cannot write into the directory {path}: {exc.strerror or exc}"
    return None


def make_out_dir(out):
    """Create the output directory ``out`` before any work is done.

    Returns the directories created here, deepest first, so that a refused or failed run
    can remove them again (:func:`remove_if_empty`). Raises ValueError naming ``--out``
    when ``out`` is a file, cannot be created or is not writable.
    """
    out = Path(out)
    created = [p for p in (out, *out.parents) if not p.exists()]
    err = run_dir_error(out)
    if err:
        remove_if_empty(created)
        raise ValueError(f"--out: {err}")
    return created


def remove_if_empty(dirs, files=()):
    """Remove ``files`` (if present), then the directories ``dirs`` (deepest first) while
    they are empty: what a refused command created must not stay behind."""
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    for d in dirs:
        try:
            d.rmdir()
        except OSError:     # not empty (the run wrote something) or already gone
            return


# ---------------------------------------------------------------------------- signals
# Exit status of a command stopped by a signal: 128 + the signal number, as a shell reports
# a process killed by it: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
_state = {"program": False, "interrupted": False}


def run_program(main):
    """``main()`` for a command run as a program (its ``__main__`` block): the process ends
    with the command, so once interrupted it keeps ignoring SIGINT/SIGTERM to the end. (A
    further Ctrl-C during the interpreter's shutdown would otherwise kill it with a
    KeyboardInterrupt, exit status -2 instead of 130.)"""
    _state["program"] = True
    return main()


def interrupt_exit_code(signum=signal.SIGINT):
    """The exit status for a command stopped by ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def ignore_interrupts():
    """Ignore further SIGINT/SIGTERM (main thread only): used while an interrupted command
    writes its last state and says so, so that more Ctrl-Cs cannot cut that short."""
    if threading.current_thread() is threading.main_thread():
        _state["interrupted"] = True
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


class _Interrupts:
    """The first SIGINT or SIGTERM (recorded in ``signum``) raises KeyboardInterrupt; later
    ones are ignored, so that the clean-up after the first is not itself interrupted."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt():
    """Handle SIGTERM (what ``timeout`` and batch schedulers send) like Ctrl-C in the block.

    Yields an object whose ``signum`` is the first signal received (None before). Restores
    the previous handlers afterwards. Outside the main thread (no signal handlers there) it
    only yields.
    """
    state = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, state)
        yield state
    finally:
        if not (_state["program"] and _state["interrupted"]):  # else: ignoring to the end
            for s, h in old.items():
                signal.signal(s, h)


def exits_cleanly_on_interrupt(main):
    """Decorate a ``main(argv)``: Ctrl-C or SIGTERM end it with one line on stderr and exit
    status 130 or 143 (:func:`interrupt_exit_code`), not a traceback."""
    @functools.wraps(main)
    def wrapper(argv=None):
        with terminate_as_interrupt() as got:
            try:
                return main(argv)
            except KeyboardInterrupt:
                ignore_interrupts()
                signum = got.signum or signal.SIGINT
                print(f"\ninterrupted ({signal.Signals(signum).name})", file=sys.stderr)
                return interrupt_exit_code(signum)
    return wrapper


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


def install_stop_handlers(owner):
    """Turn Ctrl-C and SIGTERM into a request that a training loop honours between batches
    (its state stays consistent): the first signal sets ``owner._stop`` and
    ``owner.stop_signal_``, a second raises KeyboardInterrupt at once. Returns the previous
    handlers for :func:`restore_handlers` (None outside the main thread, where there are no
    signal handlers)."""
    owner._stop = False
    owner.stop_signal_ = None
    if threading.current_thread() is not threading.main_thread():
        return None
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if owner._stop:            # a second signal: stop at once
            raise KeyboardInterrupt
        owner._stop = True
        owner.stop_signal_ = signum
    for s in old:
        signal.signal(s, handler)
    return old


def restore_handlers(old):
    """Put back the handlers :func:`install_stop_handlers` returned (None: nothing)."""
    if old is not None:
        for sig, h in old.items():
            signal.signal(sig, signal.SIG_DFL if h is None else h)
