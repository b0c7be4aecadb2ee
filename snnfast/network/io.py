"""HDF5 files of any :class:`~snnfast.network.Network` with its weights (format ``network-1``;
``network-2`` when a training state is stored too).

Layout of a file:

* attribute ``snnfast_format = "network-1"`` (files of the ConvSNN class are ``convsnn-2``,
  read by :meth:`snnfast.convsnn.ConvSNN.load`), ``snnfast_version``;
* attribute ``network``: the description as JSON text (:meth:`Network.to_dict`);
* attribute ``metadata``: a JSON object of the caller's (accuracies, provenance, ...);
* group ``weights``: one float32 dataset per array of :meth:`Network.param_shapes`
  (``"conv.weight"``, ...), each with the attribute ``sha256``
  (:func:`snnfast._utils.array_digest` of its dtype, shape and bytes), checked by :func:`load`.

A ``network-2`` file (a training checkpoint, :class:`snnfast.train.SNN`) is a ``network-1``
file plus the attribute ``training`` (JSON: options, counters, history) and the group
``training`` of arrays (optimiser moments, raw weights, best-validation weights), each with its
digest; :func:`load` reads both formats (ignoring the state), :func:`load_checkpoint` also
returns the state.

The file is written atomically (:func:`snnfast._utils.atomic_h5`): a reader sees the old
file or the complete new one.
"""
import json
from pathlib import Path

import numpy as np

from .._utils import _json_default, array_digest, atomic_h5, check_named_arrays, h5_format
from .graph import Network
from .layers import ConfigError

__all__ = ["save", "load", "load_checkpoint", "noise_seed", "FORMAT", "FORMAT_STATE",
           "is_network_file"]

FORMAT = "network-1"
FORMAT_STATE = "network-2"
_FORMATS = (FORMAT, FORMAT_STATE)
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


def save(path, network, weights, metadata=None, state=None):
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
    state : dict, optional
        A training state ``{"attrs": JSON-able dict, "arrays": {name: array}}`` (names of
        letters, digits, ``_``, ``.`` and ``:``); the file is then of format ``network-2``.

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
    if state is not None:
        state_attrs = json.dumps(state["attrs"], default=_json_default)
    from .. import __version__
    with atomic_h5(path) as f:
        f.attrs["snnfast_format"] = FORMAT if state is None else FORMAT_STATE
        f.attrs["snnfast_version"] = __version__
        f.attrs["network"] = json.dumps(network.to_dict())
        f.attrs["metadata"] = meta
        g = f.create_group("weights")
        for k, a in w.items():
            g.create_dataset(k, data=a).attrs[_DIGEST] = array_digest(a)
        if state is not None:
            f.attrs["training"] = state_attrs
            g = f.create_group("training")
            for k, a in state["arrays"].items():
                a = np.ascontiguousarray(a)
                g.create_dataset(k, data=a).attrs[_DIGEST] = array_digest(a)


def is_network_file(path):
    """True if ``path`` is a readable HDF5 file of format ``network-1`` or ``network-2`` (no
    other check)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return h5_format(f) in _FORMATS
    except Exception:              # not HDF5, missing, unreadable: not one
        return False


def load(path):
    """Read a file written by :func:`save` (``network-1`` or ``network-2``; a training state
    is checked but not returned: see :func:`load_checkpoint`).

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
    return load_checkpoint(path)[:3]


def noise_seed(metadata):
    """The input-noise seed of a saved model: the ``seed`` of its training options
    (``metadata["training"]``, written by :meth:`snnfast.SNN.save`), as a ConvSNN file's
    config records its own; 0 for a file without one (:func:`save` called directly).

    The Hybrid encoder's Bernoulli steps are keyed by it: the commands that run a file
    (``evaluate``, ``energy``) use it so that they see the inputs the model saw.

    Raises
    ------
    ValueError
        For a recorded seed that is not an integer in [0, 2**64).
    """
    training = metadata.get("training") if isinstance(metadata, dict) else None
    seed = training.get("seed", 0) if isinstance(training, dict) else 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
        raise ValueError(f"the file's training seed must be an integer in [0, 2**64), "
                         f"got {seed!r}")
    return seed


def load_checkpoint(path):
    """As :func:`load`, plus the training state: ``(network, weights, metadata, state)``
    with ``state`` ``{"attrs": dict, "arrays": {name: array}}`` (arrays checked against their
    digests) or None for a file without one."""
    import h5py
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such network file")
    try:
        with h5py.File(path, "r") as f:
            net_text, meta_text, arrays = _read(f)
            state = _read_state(f)
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
        if state is not None:
            state["attrs"] = json.loads(state["attrs"])
            if not isinstance(state["attrs"], dict):
                raise ValueError("the training state is not a JSON object")
    except (ConfigError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid network file content ({exc})") from None
    return network, weights, metadata, state


def _read(f):
    """(description JSON, metadata JSON, {name: verified array}) of an open file."""
    import h5py
    fmt = h5_format(f)
    if fmt not in _FORMATS:
        hint = (" (a ConvSNN file: use snnfast.convsnn.ConvSNN.load)"
                if str(fmt).startswith("convsnn-") else "")
        raise _Refused(f"not an snnfast network file (snnfast_format={fmt!r}, expected "
                       f"{FORMAT!r}){hint}")
    for key in ("network", "metadata"):
        if key not in f.attrs:
            raise _Refused(f"the file has no {key!r} attribute")
    if not isinstance(f.get("weights"), h5py.Group):
        raise _Refused("the file has no 'weights' group")
    return _text(f.attrs["network"]), _text(f.attrs["metadata"]), _arrays(f["weights"])


def _arrays(group):
    """{name: array} of a group's datasets, each checked against its digest."""
    arrays = {}
    for k, dset in group.items():
        a = np.array(dset)
        want = dset.attrs.get(_DIGEST)
        want = want.decode() if isinstance(want, bytes) else want
        if want is None:
            raise _Refused(f"array {k!r} has no SHA-256 digest: the file was altered")
        if array_digest(a) != want:
            raise _Refused(f"array {k!r} does not match its SHA-256 digest: the file is "
                           f"damaged (e.g. a flipped byte); it is not used")
        arrays[k] = a
    return arrays


def _read_state(f):
    """The training state of a ``network-2`` file (None for ``network-1``)."""
    if h5_format(f) != FORMAT_STATE:
        return None
    import h5py
    if "training" not in f.attrs or not isinstance(f.get("training"), h5py.Group):
        raise _Refused("a network-2 file without its training state")
    return {"attrs": _text(f.attrs["training"]), "arrays": _arrays(f["training"])}


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)

