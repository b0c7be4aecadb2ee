"""A pickle loader that can only rebuild plain NumPy arrays.

``pickle.load`` runs whatever callable a pickle names, so an untrusted pickle can
execute code. :class:`ArrayUnpickler` resolves only the few globals that NumPy's
``ndarray.__reduce__`` emits; any other global (``os.system``, ``builtins.eval``,
...) raises :class:`pickle.UnpicklingError` before anything is called.
"""
import io
import pickle

import numpy as np

try:  # NumPy >= 2 moved the implementation module; import it without the deprecation shim.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct

__all__ = ["ArrayUnpickler", "safe_loads"]


def _latin1_bytes(text, encoding="latin1"):
    # Protocol-2 pickles made by Python 3 spell a bytes object as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


# Pickles written by NumPy 1.x name numpy.core, NumPy 2.x numpy._core; both mean the same function.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits only NumPy's array-reconstruction globals."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only plain NumPy arrays are allowed"
            ) from None


def _check_no_objects(obj, depth=0):
    # Object arrays could smuggle arbitrary (if harmless) Python objects; reject them.
    if depth > 20:
        raise pickle.UnpicklingError("pickle nests too deeply")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError("refusing object-dtype arrays")
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _check_no_objects(item, depth + 1)


def safe_loads(data, encoding="latin1"):
    """Unpickle ``data`` (bytes) allowing only NumPy arrays in tuples/lists.

    ``encoding="latin1"`` is what Python 2 pickles of NumPy arrays need.
    """
    obj = ArrayUnpickler(io.BytesIO(data), encoding=encoding).load()
    _check_no_objects(obj)
    return obj
