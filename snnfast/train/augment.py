"""Data augmentation of a training batch: random shifts with zero fill and horizontal flips.

One function for every input, the presets' ``28 x 28`` images (:class:`snnfast.ConvSNN`) as
any description's ``C x H x W`` images or ``T x C x H x W`` event frames
(:class:`snnfast.SNN`). The batch is moved by one compiled loop (``shift_flip_into`` of
``ext/_convsnn_conv.pyx``, for uint8 and float32 inputs) or, without the kernels or for other
dtypes, by two NumPy gathers; no Python loop per sample. Both only copy values, so the
output is bit for bit that of the element-by-element definition below.
"""
import numpy as np

__all__ = ["shift_flip"]


def shift_flip(X, dy, dx, flip=None):
    """Shift each sample's last two axes (rows, columns) by ``(dy[i], dx[i])`` with zero fill,
    then mirror the columns of the samples where ``flip[i]``.

    ``out[i, ..., y, x] = X[i, ..., y - dy[i], x - dx[i]]`` where that element exists, else
    0; a flipped sample is that result read with ``x -> W - 1 - x``. A shift of ``H`` rows or
    ``W`` columns or more leaves a sample all zero.

    Parameters
    ----------
    X : ndarray (N, ..., H, W)
        Any dtype (uint8 images, float32 frames); not modified.
    dy, dx : int arrays (N,)
    flip : bool array (N,), optional

    Returns
    -------
    ndarray
        A new C-contiguous array of ``X``'s shape and dtype.
    """
    X = np.asarray(X)
    N = len(X)
    dy, dx = np.ascontiguousarray(dy, np.int64), np.ascontiguousarray(dx, np.int64)
    if X.ndim < 3 or dy.shape != (N,) or dx.shape != (N,) or \
            (flip is not None and np.shape(flip) != (N,)):
        what = "dy, dx, flip" if flip is not None else "dy, dx"
        raise ValueError(f"shift_flip needs X (N, ..., H, W) and {what} of shape (N,), got X "
                         f"{X.shape}, dy {dy.shape}, dx {dx.shape}")
    H, W = X.shape[-2:]
    flip = np.zeros(N, bool) if flip is None else np.ascontiguousarray(flip, bool)
    kernel = _kernel(X.dtype)
    if N == 0:
        return np.array(X, order="C")
    if kernel is not None:
        X = np.ascontiguousarray(X)
        out = np.zeros_like(X, order="C")
        kernel(X.reshape(N, -1, H * W), dy, dx, flip.view(np.uint8), out.reshape(N, -1, H * W),
               H, W)
        return out
    return _shift_flip_numpy(X, dy, dx, flip)


def _kernel(dtype):
    """The compiled loop for ``dtype`` (uint8, float32), or None (other dtypes; kernels not
    built: the NumPy backend still trains)."""
    if dtype not in (np.uint8, np.float32):
        return None
    try:
        from .._convsnn_conv import shift_flip_into
    except ImportError:
        return None
    return shift_flip_into


def _shift_flip_numpy(X, dy, dx, flip):
    """:func:`shift_flip` in NumPy: a gather of rows, then of columns, then the zero fill."""
    H, W = X.shape[-2:]
    N = len(X)
    rows = np.arange(H) - dy[:, None]                       # (N, H): source row of each row
    cols = np.arange(W) - dx[:, None]                       # (N, W): source column
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    keep = (((rows >= 0) & (rows < H))[:, :, None]
            & ((cols >= 0) & (cols < W))[:, None, :])       # (N, H, W): has a source
    flat = X.reshape(N, -1, H, W)
    # the two gathers read clipped indices; the mask then writes the zero fill
    out = np.take_along_axis(flat, np.clip(rows, 0, H - 1)[:, None, :, None], axis=2)
    out = np.take_along_axis(out, np.clip(cols, 0, W - 1)[:, None, None, :], axis=3)
    out = np.where(keep[:, None], out, np.zeros((), X.dtype))
    return np.ascontiguousarray(out.reshape(X.shape))
