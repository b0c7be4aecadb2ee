"""HDF5 files of any :class:`~snnfast.network.Network` with its weights (format ``network-1``).

Layout of a file:

* attribute ``snnfast_format = "network-1"`` (files of the ConvSNN class are ``convsnn-2``,
  read by :meth:`snnfast.convsnn.ConvSNN.load`), ``snnfast_version``;
* attribute ``network``: the description as JSON text (:meth:`Network.to_dict`);
* attribute ``metadata``: a JSON object of the caller's (accuracies, provenance, ...);
* group ``weights``: one float32 dataset per array of :meth:`Network.param_shapes`
  (``"conv.weight"``, ...), each with the attribute ``sha256``
  (:func:`snnfast._utils.array_digest` of its dtype, shape and bytes), checked by :func:`load`.

The file is written atomically (:func:`snnfast._utils.atomic_h5`): a reader sees the old
file or the complete new one.
"""
import json
from pathlib import Path

import numpy as np

from .._utils import _json_default, array_digest, atomic_h5, check_named_arrays, h5_format
from .graph import Network
from .layers import ConfigError

__all__ = ["save", "load", "FORMAT", "is_network_file"]

FORMAT = "network-1"
_DIGEST = "sha256"


class _Refused(Exception):
    """A readable file whose content is refused; the message is the whole explanation."""


def _check_weights(network, weights):
    """float32 C-contiguous copies of ``weights``, which must be exactly the network's arrays."""
    if not isinstance(weights, dict):
        raise TypeError(f"weights must be a dict of arrays, got {type(weights).__name__}")
    shapes = network.param_shapes()
    extra = sorted(set(weights) - set(shapes))
    if extra:
        raise ValueError(f"weights has array(s) the network does not: {', '.join(extra)}")
    return check_named_arrays(weights, shapes, "weight")


def save(path, network, weights, metadata=None):
    """Write ``network`` and its ``weights`` to the HDF5 file ``path`` (format ``network-1``).

    Parameters
    ----------
    path : str or Path
    network : Network
    weights : dict
        ``{"<layer>.weight": array, "<layer>.bias": array}`` exactly as
        :meth:`Network.param_shapes` lists them (stored as float32).
    metadata : dict, optional
        Anything JSON can hold (NumPy scalars and arrays allowed), returned by :func:`load`.

    Raises
    ------
    TypeError, ValueError
        For a network that is not a :class:`Network`, weights that do not match it (missing,
        extra, wrong shape, NaN/inf), metadata that JSON cannot hold, or a ``path`` that is a
        directory, a link or a special file. Nothing is written then.
    OSError
        One line naming ``path`` if the write fails; an old file is left untouched.
    """
    if not isinstance(network, Network):
        raise TypeError(f"network must be a snnfast.network.Network, got "
                        f"{type(network).__name__}")
    w = _check_weights(network, weights)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        meta = json.dumps(metadata or {}, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata cannot be written as JSON: {exc}") from None
    if Path(path).is_dir():
        raise ValueError(f"{path} is a directory, not a file name")
    from .. import __version__
    with atomic_h5(path) as f:
        f.attrs["snnfast_format"] = FORMAT
        f.attrs["snnfast_version"] = __version__
        f.attrs["network"] = json.dumps(network.to_dict())
        f.attrs["metadata"] = meta
        g = f.create_group("weights")
        for k, a in w.items():
            g.create_dataset(k, data=a).attrs[_DIGEST] = array_digest(a)


def is_network_file(path):
    """True if ``path`` is a readable HDF5 file of format ``network-1`` (no other check)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return h5_format(f) == FORMAT
    except Exception:              # not HDF5, missing, unreadable: not one
        return False


def load(path):
    """Read a file written by :func:`save`.

    Returns
    -------
    network : Network
    weights : dict of float32 arrays, checked against their digests and the network's shapes
    metadata : dict

    Raises
    ------
    ValueError
        One line starting with ``path`` for a missing file, one that is not HDF5, truncated or
        corrupt, of another format (``convsnn-*`` files name :meth:`ConvSNN.load`), an array
        that does not match its SHA-256 digest (a flipped byte), a missing or extra array, or
        an invalid description.
    """
    import h5py
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such network file")
    try:
        with h5py.File(path, "r") as f:
            net_text, meta_text, arrays = _read(f)
    except _Refused as exc:
        raise ValueError(f"{path}: {exc}") from None
    except Exception as exc:        # h5py raises OSError/KeyError/... for damaged files
        raise ValueError(f"{path}: cannot read a network file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        d = json.loads(net_text)
        network = Network.from_dict(d.get("network", d) if isinstance(d, dict) else d)
        metadata = json.loads(meta_text)
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata is a JSON {type(metadata).__name__}, not an object")
        weights = _check_weights(network, arrays)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid network file content ({exc})") from None
    return network, weights, metadata


def _read(f):
    """(description JSON, metadata JSON, {name: verified array}) of an open file."""
    import h5py
    fmt = h5_format(f)
    if fmt != FORMAT:
        hint = (" (a ConvSNN file: use snnfast.convsnn.ConvSNN.load)"
                if str(fmt).startswith("convsnn-") else "")
        raise _Refused(f"not an snnfast network file (snnfast_format={fmt!r}, expected "
                       f"{FORMAT!r}){hint}")
    for key in ("network", "metadata"):
        if key not in f.attrs:
            raise _Refused(f"the file has no {key!r} attribute")
    if not isinstance(f.get("weights"), h5py.Group):
        raise _Refused("the file has no 'weights' group")
    arrays = {}
    for k, dset in f["weights"].items():
        a = np.array(dset)
        want = dset.attrs.get(_DIGEST)
        want = want.decode() if isinstance(want, bytes) else want
        if want is None:
            raise _Refused(f"array {k!r} has no SHA-256 digest: the file was altered")
        if array_digest(a) != want:
            raise _Refused(f"array {k!r} does not match its SHA-256 digest: the file is "
                           f"damaged (e.g. a flipped byte); it is not used")
        arrays[k] = a
    return _text(f.attrs["network"]), _text(f.attrs["metadata"]), arrays


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)

