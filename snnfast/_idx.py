"""Reader and writer for the IDX format of MNIST-style data sets.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, ``ndim`` big-endian
uint32 dimensions, then the row-major payload. Only the unsigned-byte type
(``0x08``) is used by MNIST and Fashion-MNIST, so it is the only one accepted.
Files may be gzip-compressed (detected from the gzip magic, not the file name).
"""
import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DatasetError", "read_idx", "write_idx", "read_idx_pair"]

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A data file is missing, corrupt or does not hold the expected data."""


def _read_bytes(path):
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        # EOFError: stream ends early; BadGzipFile (an OSError) / zlib.error: bad data or CRC.
        raise DatasetError(
            f"{path}: truncated or corrupt gzip file ({exc}). Delete it and fetch it again "
            f"(for example with `python -m snnfast.datasets fetch NAME`)."
        ) from None


def read_idx(path, ndim=None):
    """Read one IDX file (raw or gzip) into a new uint8 array.

    Parameters
    ----------
    path : str or Path
        The file; gzip compression is detected from its content.
    ndim : int, optional
        Required number of dimensions (3 for images, 1 for labels).

    Returns
    -------
    numpy.ndarray
        uint8, C-contiguous, writable, shaped as the header says.

    Raises
    ------
    DatasetError
        Wrong magic number, unsupported element type, unexpected ``ndim``, or a
        payload whose size does not match the header (truncated or padded file).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty file'}); "
            f"expected the MNIST/Fashion-MNIST IDX format"
        )
    dtype_code, nd = data[2], data[3]
    if dtype_code != _UBYTE:
        raise DatasetError(f"{path}: IDX element type 0x{dtype_code:02x} is not unsigned byte (0x08)")
    if ndim is not None and nd != ndim:
        raise DatasetError(f"{path}: IDX file has {nd} dimension(s), expected {ndim} "
                           f"(images files have 3, labels files 1; were two files swapped?)")
    header = 4 + 4 * nd
    if len(data) < header:
        raise DatasetError(f"{path}: IDX header is truncated ({len(data)} bytes)")
    shape = struct.unpack(f">{nd}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(data) - header
    if got != expected:
        kind = "truncated" if got < expected else "has trailing bytes"
        raise DatasetError(f"{path}: IDX payload {kind}: header {shape} needs {expected} bytes, "
                           f"file has {got}. Delete it and fetch it again.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def write_idx(path, array, compress=None):
    """Write a uint8 array as an IDX file (gzip if ``compress`` or the name ends in ``.gz``)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx needs a uint8 array, got {array.dtype}")
    path = Path(path)
    blob = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        blob = gzip.compress(blob, compresslevel=6, mtime=0)
    path.write_bytes(blob)
    return path


def read_idx_pair(images_path, labels_path, image_shape=(28, 28), n_classes=10):
    """Read and cross-check an images file and its labels file.

    Returns ``(images, labels)``: uint8 ``(N, *image_shape)`` and uint8 ``(N,)``.
    Raises :class:`DatasetError` naming the offending file on any inconsistency.
    """
    images = read_idx(images_path, ndim=1 + len(image_shape))
    if images.shape[1:] != tuple(image_shape):
        raise DatasetError(f"{images_path}: images are {images.shape[1:]}, expected {tuple(image_shape)}")
    labels = read_idx(labels_path, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"count mismatch: {images_path} has {images.shape[0]} images but "
                           f"{labels_path} has {labels.shape[0]} labels (files from different splits?)")
    if labels.size and labels.max() >= n_classes:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} is outside 0..{n_classes - 1}")
    return images, labels
