"""Small shared helpers: atomic file writes, a lock file, input validation."""
import contextlib
import errno
import os
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "atomic_write_bytes", "write_json", "file_lock", "check_array",
           "check_disjoint", "check_named_arrays", "check_positive_int", "is_real_number",
           "h5_format"]


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The rename is atomic on POSIX, so readers see either the old file or the
    complete new one, never a partial write. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path, obj, indent=2):
    """Write ``obj`` as JSON to ``path`` atomically (NumPy scalars and arrays allowed)."""
    import json
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode())


def h5_format(f):
    """The ``snnfast_format`` attribute of an open HDF5 file as ``str`` (None if absent)."""
    fmt = f.attrs.get("snnfast_format")
    return fmt.decode() if isinstance(fmt, bytes) else fmt


@contextlib.contextmanager
def file_lock(path, timeout=600.0, poll=0.1):
    """Exclusive inter-process lock held while the block runs (``fcntl.flock``)."""
    import fcntl
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not acquire lock {path} within {timeout} s") from None
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def adam_step_size(lr, bc1):
    """Adam's float32 step size ``lr / bc1`` (``bc1 = 1 - beta1**t``, computed in float64).

    Raises ``ValueError`` if it overflows float32, which would step the weights by infinity.
    """
    step_size = float(lr) / bc1
    if not step_size <= float(np.finfo(np.float32).max):
        raise ValueError(f"lr={lr!r} gives a step size lr / (1 - beta1**step) = "
                         f"{step_size:.3g} that is not a finite float32")
    return np.float32(step_size)


def is_real_number(v):
    """True for a Python or NumPy int or float; False for bools (which are ints) and the rest."""
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))


def check_positive_int(value, name):
    """``value`` as an int if it is an integer >= 1, else ValueError naming ``name``.

    Floats (even integral ones) and bools are refused rather than truncated: ``2.7``
    images per batch is a caller's mistake, not a request for 2.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_array(a, name, dtype, ndim=None, shape=None, finite=False, contiguous=True):
    """Validate an array argument once, at the Python boundary of a kernel.

    Raises ``ValueError`` (or ``TypeError`` for non-arrays) with a message naming
    ``name`` instead of letting a kernel crash or read garbage. ``shape`` may
    contain ``None`` for free dimensions. Returns ``a`` unchanged.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    # a.shape == shape first: the whole test in one tuple comparison in the common case
    if shape is not None and a.shape != tuple(shape):
        if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def check_named_arrays(arrays, shapes, what):
    """Validate named arrays (a model's weights): float32 C-contiguous copies of each.

    ``shapes`` maps each expected name to its shape; raises ``ValueError`` naming the array
    (``f"{what} {name}"``) for a missing one, a wrong shape or NaN/inf.
    """
    out = {}
    for k, shape in shapes.items():
        if k not in arrays:
            raise ValueError(f"missing {what} {k!r}")
        a = np.asarray(arrays[k])
        if a.shape != tuple(shape):
            raise ValueError(f"{what} {k} must have shape {tuple(shape)}, got {a.shape}")
        if a.dtype.kind not in "iuf":
            raise ValueError(f"{what} {k} must hold real numbers, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ValueError(f"{what} {k} contains NaN or infinite values")
        out[k] = np.array(a, dtype=np.float32, order="C")
    return out


def check_disjoint(written, read=None):
    """ValueError unless no array in ``written`` shares memory with any other operand.

    An in-place kernel reads one array while writing another; if they overlap (the same
    array, or two views of one buffer), the result depends on the order of the updates.

    Parameters
    ----------
    written, read : dict of name -> numpy.ndarray
        Validated operands that the kernel writes, and that it only reads (which may
        share memory with each other). Each must be C-contiguous (``check_array``'s default):
        its memory is then exactly the byte range ``[start, start + nbytes)``, so
        ``np.may_share_memory``'s bounds test is exact, in O(1) per pair (unlike
        ``np.shares_memory``'s general search). Empty arrays use no memory.
    """
    names = list(written)
    arrays = list(written.values())
    others = list(read.items()) if read else []
    for i, (name, a) in enumerate(zip(names, arrays)):
        for other, b in list(zip(names[i + 1:], arrays[i + 1:])) + others:
            if np.may_share_memory(a, b):
                raise ValueError(f"{name} and {other} share memory: {name} is updated in "
                                 "place, so it must be distinct from (and not overlap) "
                                 f"{other}")
