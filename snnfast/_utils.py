"""Small shared helpers: atomic file writes, a lock file, input validation."""
import contextlib
import errno
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_h5", "write_json", "file_lock",
           "check_output_path", "special_file_kind", "array_digest", "check_array",
           "check_disjoint", "check_named_arrays", "check_positive_int", "is_real_number",
           "h5_format"]

_SPECIAL_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def special_file_kind(path):
    """What ``path`` is if it exists and is not a regular file ("a FIFO", ...), else None.

    The last component is not followed (``lstat``): a symbolic link is reported as one,
    whatever it points to.
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):    # absent (or a parent is a file)
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)),
                None if stat.S_ISREG(mode) else "not a regular file")


def check_output_path(path):
    """ValueError unless ``path`` is absent or a regular file (not a link to one).

    Every output is written to a temporary file that is then renamed onto ``path``; the
    rename would replace a FIFO, a device (``/dev/null`` turned into a regular file) or a
    symbolic link by a plain file. Such outputs are refused instead of written through:
    refusing never has a side effect on what the special file stands for.
    """
    kind = special_file_kind(path)
    if kind is not None:
        raise ValueError(f"{path} exists and is {kind}; outputs are written as new regular "
                         "files, so give a plain file name (the existing one is left alone)")


def _write_error(exc, path):
    """``exc`` (a failed write of an output) as a one-line OSError naming ``path``."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The rename is atomic on POSIX, so readers see either the old file or the
    complete new one, never a partial write. On error the temporary file is removed
    (and the old file is untouched). ``path`` must not be a special file or a link
    (:func:`check_output_path`).
    """
    path = Path(path)
    check_output_path(path)
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
        try:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            check_output_path(path)     # made special meanwhile: still not replaced
            os.replace(tmp, path)
        except OSError as exc:
            raise _write_error(exc, path) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path, data, suffix=None):
    """Write ``data`` to ``path`` atomically.

    Raises
    ------
    OSError
        One line naming ``path`` when the write fails (a full disk: ``[Errno 28] No space
        left on device: 'path'``); the temporary file is removed, an old ``path`` untouched.
    ValueError
        If ``path`` exists and is not a regular file (:func:`check_output_path`).
    """
    with atomic_path(path, suffix=suffix) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise _write_error(exc, path) from None


@contextlib.contextmanager
def atomic_h5(path, **kwargs):
    """Yield a new ``h5py.File`` that is written to ``path`` atomically when the block ends.

    The HDF5 file is built in memory and its bytes are then written by
    :func:`atomic_write_bytes`: a full disk is then one plain ``OSError`` from a Python
    write, with the temporary file removed. (Writing with HDF5's own file driver, a failed
    write leaves the library's objects open: tracebacks from ``ObjectID.__dealloc__`` and
    a segmentation fault at exit.) ``kwargs`` go to ``h5py.File``. Nothing is written if
    the block raises.
    """
    import io

    import h5py
    check_output_path(path)         # before the caller's work, not after it
    buf = io.BytesIO()
    with h5py.File(buf, "w", **kwargs) as f:
        yield f
    atomic_write_bytes(path, buf.getbuffer(), suffix=".h5.tmp")


def array_digest(a):
    """SHA-256 (hex) of an array's dtype, shape and C-order bytes.

    Stored beside each array of a model file and checked when it is read: a flipped bit
    anywhere changes it. The dtype and shape are included so that the same bytes read as
    another array do not match.
    """
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


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
    """Exclusive inter-process lock held while the block runs (``fcntl.flock``).

    ``timeout=0`` tries once. Raises ``TimeoutError`` if another process still holds the
    lock after ``timeout`` seconds. The kernel releases a ``flock`` when its process ends,
    however it ends (even SIGKILL), so the lock file of a dead process never blocks; the
    file itself is left in place.
    """
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
                if time.monotonic() >= deadline:
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


def check_named_arrays(arrays, shapes, what, max_abs=None):
    """Validate named arrays (a model's weights): float32 C-contiguous copies of each.

    ``shapes`` maps each expected name to its shape; raises ``ValueError`` naming the array
    (``f"{what} {name}"``) for a missing one, a wrong shape, NaN/inf or (unless ``max_abs``
    is None) a magnitude above ``max_abs``.
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
        if max_abs is not None and a.size and np.abs(a).max() > max_abs:
            raise ValueError(f"{what} {k} has a value of magnitude {np.abs(a).max():.3g}, "
                             f"beyond the sane range +-{max_abs:g} of a model weight")
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


def check_labels(y, n, n_classes, name="y"):
    """``y`` as int64 class labels: an ndarray of shape (n,) holding integers 0..n_classes-1
    (one-line TypeError/ValueError otherwise)."""
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(y).__name__}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} must hold labels 0..{n_classes - 1} (the network has "
                         f"{n_classes} outputs), got {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _aligned_empty(shape, dtype=np.float32, align=64):
    """Uninitialised C-contiguous array whose data pointer is ``align``-byte aligned."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n].view(dtype).reshape(shape)


def aligned_copy(a):
    """A page-aligned C-contiguous copy of the array ``a``, for the arrays that the kernels
    stream through with vector loads: W1's blocked copies beside the model's own
    (:func:`snnfast._convsnn_kernels.to_blocked`), i.e. the weight average and Adam's moments (:func:`aligned_zeros`),
    and the operands the W1 step lays out (:func:`snnfast._convsnn_kernels.w1_adam_step`).

    ``a.copy()`` or ``np.zeros_like`` would start the data where malloc puts it: 16-byte
    aligned, sometimes more, depending on the process's allocation history (even on the
    length of the path the package was imported from). Off a cache line, vector loads
    straddle two lines: FC1 over the weight average ran ~30 % slower (single-thread CPU time
    of evaluate, default preset: ~9 400 img/s at 16 or 32 bytes past a line, ~13 000
    aligned), the back product of the W1 step ~10 % slower with its rows of d 16 bytes past
    a line, which made the same code fast or slow from one process to the next.
    """
    out = _aligned_empty(a.shape, a.dtype, align=4096)
    out[...] = a
    return out


def aligned_zeros(shape, dtype=np.float32):
    """Page-aligned zeros of ``shape`` (see :func:`aligned_copy` for why)."""
    out = _aligned_empty(shape, dtype, align=4096)
    out.fill(0)
    return out
